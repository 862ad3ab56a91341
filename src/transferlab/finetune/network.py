"""The fine-tuned network: the backbone cut at the chosen depth plus a head built from a HeadSpec.

Cutting uses timm's ``prune_intermediate_layers`` so blocks above the cut point do not exist (no wasted compute, no
unused parameters in the optimizer). The saved model is plain tensors + JSON (see
:func:`saved_state`), rebuilt by ``transferlab.model.load_run_model``.
"""

from __future__ import annotations

import copy
from typing import Any

import numpy as np
import torch
from torch import nn

from transferlab.backbones.model import HEAD
from transferlab.errors import TransferlabError
from transferlab.heads import HeadSpec, build_head
from transferlab.record.saved_probe import probe_tensors

ABSENT_CLASS_BIAS = -10.0


class FinetuneNet(nn.Module):
    """``body`` (a timm model, maybe truncated) → feature map at the cut point → ``head`` → logits."""

    def __init__(self, body: nn.Module, head: nn.Module, stage_index: int | None) -> None:
        super().__init__()
        self.body = body
        self.head = head
        self.stage_index = stage_index

    def maps(self, images: torch.Tensor) -> torch.Tensor:
        if self.stage_index is None:
            return self.body.forward_features(images)
        return self.body.forward_intermediates(images, indices=[self.stage_index], intermediates_only=True)[0]

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.maps(images))


def cut_body(model: nn.Module, cut_point: str) -> tuple[nn.Module, int | None]:
    """``model`` (modified in place) without the blocks above ``cut_point``, and the cut's stage index (None: head)."""
    if cut_point == HEAD:
        return model, None
    modules = [info["module"] for info in model.feature_info]
    if cut_point not in modules:
        raise TransferlabError(f"unknown cut point '{cut_point}': {', '.join([*modules, HEAD])}")
    index = modules.index(cut_point)
    model.prune_intermediate_layers(indices=[index], prune_head=True, prune_norm=True)
    return model, index


def build_network(
    backbone_model: nn.Module, cut_point: str, spec: HeadSpec, n_outputs: int, image_size: int
) -> FinetuneNet:
    """A trainable copy of ``backbone_model`` (left untouched) cut at ``cut_point`` with a new head on top."""
    body, index = cut_body(copy.deepcopy(backbone_model), cut_point)
    body.eval()
    probe = FinetuneNet(body, nn.Identity(), index)
    with torch.no_grad():
        channels, height, width = probe.maps(torch.zeros(1, 3, image_size, image_size)).shape[1:]
    return FinetuneNet(body, build_head(spec, int(channels), (int(height), int(width)), n_outputs), index)


def is_linear_head(spec: HeadSpec) -> bool:
    """Whether the head is global average pooling + one linear layer, i.e. exactly a linear probe's model."""
    return not spec.widths and not spec.needs_maps


def init_from_probe(net: FinetuneNet, probe_model: Any, n_outputs: int) -> None:
    """LP-FT warm start: copy a logistic-regression probe into the head's linear layer.

    The probe scores ``((x - mean) / scale) @ coef.T + intercept``; folding the standardization into the weights
    gives the same logits from raw pooled features. Classes the probe never saw get a strongly negative bias.
    """
    tensors = probe_tensors(probe_model)
    coef = tensors["coef"] / tensors["scale"]
    intercept = tensors["intercept"] - coef @ tensors["mean"]
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


def saved_state(net: FinetuneNet, backbone_model: nn.Module) -> dict[str, torch.Tensor]:
    """State to save: ``backbone.*`` keys of the *whole* timm model (blocks pruned above the cut keep their
    pretrained values, so any loader can build the full network first) and ``head.*`` keys."""
    full = dict(backbone_model.state_dict()) | dict(net.body.state_dict())
    state = {f"backbone.{name}": tensor for name, tensor in full.items()}
    state |= {f"head.{name}": tensor for name, tensor in net.head.state_dict().items()}
    return {name: tensor.contiguous() for name, tensor in state.items()}
