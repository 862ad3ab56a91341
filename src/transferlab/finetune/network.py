"""The fine-tuned network (``transferlab.model.network``: cut backbone + HeadSpec head) and what only training adds."""

from __future__ import annotations

import copy
from typing import Any

import numpy as np
import torch
from torch import nn

from transferlab.heads import HeadSpec
from transferlab.model.network import CutModel, build_model
from transferlab.model.probe_head import fold_standardization, probe_tensors

ABSENT_CLASS_BIAS = -10.0

FinetuneNet = CutModel


def build_network(
    backbone_model: nn.Module, cut_point: str, spec: HeadSpec, n_outputs: int, image_size: int
) -> FinetuneNet:
    """A trainable copy of ``backbone_model`` (left untouched) cut at ``cut_point`` with a new head on top."""
    return build_model(copy.deepcopy(backbone_model), cut_point, spec, n_outputs, (3, image_size, image_size))


def is_linear_head(spec: HeadSpec) -> bool:
    """Whether the head is global average pooling + one linear layer, i.e. exactly a linear probe's model."""
    return not spec.widths and not spec.needs_maps


def init_from_probe(net: FinetuneNet, probe_model: Any, n_outputs: int) -> None:
    """LP-FT warm start: the probe, standardization folded in, as the head's linear layer (same logits from raw
    pooled features). Classes the probe never saw get a strongly negative bias."""
    tensors = probe_tensors(probe_model)
    coef, intercept = fold_standardization(tensors["coef"], tensors["intercept"], tensors["mean"], tensors["scale"])
    index = tensors["classes_index"]
    if len(coef) == 1 and len(index) == 2:
        coef, intercept = np.stack([np.zeros_like(coef[0]), coef[0]]), np.array([0.0, intercept[0]])
    weight = np.zeros((n_outputs, coef.shape[1]))
    bias = np.full(n_outputs, ABSENT_CLASS_BIAS)
    weight[index], bias[index] = coef, intercept
    linear = net.head.dense[-1]
    with torch.no_grad():
        linear.weight.copy_(torch.as_tensor(weight, dtype=linear.weight.dtype))
        linear.bias.copy_(torch.as_tensor(bias, dtype=linear.bias.dtype))
