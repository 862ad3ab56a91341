"""Turn a HeadSpec into a torch module, and price it analytically before building it.

The cost is computed from the spec alone because the point is to warn *before* allocating: a Flatten head on an
8×8×1792 map followed by 2500 units is ~287M parameters (1.1 GB of fp32), which would be slow to build and
hopelessly over-parameterized for a few thousand images.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from transferlab.heads.spec import HeadSpec

PARAMS_PER_IMAGE_WARNING = 1000
_ACTIVATIONS = {"relu": nn.ReLU, "gelu": nn.GELU, "silu": nn.SiLU, "tanh": nn.Tanh}


def _hw(spatial: int | tuple[int, int]) -> tuple[int, int]:
    return (spatial, spatial) if isinstance(spatial, int) else (int(spatial[0]), int(spatial[1]))


def _after_maxpool(size: int) -> int:
    return math.ceil(size / 2)


def pooled_dim(spec: HeadSpec, in_channels: int, spatial: int | tuple[int, int]) -> int:
    """Length of the vector that enters the dense layers."""
    height, width = _hw(spatial)
    if spec.extra_maxpool:
        height, width = _after_maxpool(height), _after_maxpool(width)
    channels = spec.conv_channels if spec.pooling == "conv1x1" else in_channels
    pooling = spec.final_pooling
    if pooling == "flatten":
        return channels * height * width
    return channels * (2 if pooling == "avgmax" else 1)


def head_cost(spec: HeadSpec, in_channels: int, spatial: int | tuple[int, int], n_outputs: int) -> tuple[int, float]:
    """(trainable parameters, megabytes as fp32) of ``build_head(spec, ...)``, without building it."""
    params = 0
    if spec.pooling == "conv1x1":
        params += in_channels * spec.conv_channels + spec.conv_channels
        params += 2 * spec.conv_channels if spec.batchnorm else 0
    width = pooled_dim(spec, in_channels, spatial)
    for hidden in spec.widths:
        params += width * hidden + hidden + (2 * hidden if spec.batchnorm else 0)
        width = hidden
    params += width * n_outputs + n_outputs
    return params, params * 4 / 1e6


def cost_warning(params: int, n_train: int) -> str | None:
    """A warning when the head has so many parameters per training image that it can only memorize."""
    per_image = params / max(1, n_train)
    if per_image < PARAMS_PER_IMAGE_WARNING:
        return None
    return (
        f"head has {params / 1e6:.1f}M parameters for {n_train} training images ({per_image:,.0f} per image): "
        "expect heavy overfitting and slow training; prefer global pooling or a conv1x1 reduction"
    )


class Dropout(nn.Dropout):
    """Inverted dropout with the mask drawn as ``uniform >= p``: the same distribution as ``nn.Dropout``, 3-4x faster.

    On CPU torch draws dropout's Bernoulli mask per element through a slow path (2.0 ms for a 128×1280 batch, vs
    0.56 ms for ``torch.rand``); in head search on cached features dropout was the largest single cost (6 of 27 s).
    Identity in eval mode, so exported models are unchanged.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0:
            return x
        return x * torch.rand_like(x).ge_(self.p).div_(1 - self.p)


class Head(nn.Module):
    """Map (N, C, H, W) → logits; also accepts a pooled (N, C) vector when the spec's pooling is global average."""

    def __init__(self, spec: HeadSpec, in_channels: int, spatial: int | tuple[int, int], n_outputs: int) -> None:
        super().__init__()
        self.spec = spec
        activation = _ACTIVATIONS[spec.activation]
        reduce: list[nn.Module] = []
        if spec.pooling == "conv1x1":
            reduce.append(nn.Conv2d(in_channels, spec.conv_channels, kernel_size=1))
            reduce += [nn.BatchNorm2d(spec.conv_channels)] if spec.batchnorm else []
            reduce.append(activation())
        if spec.extra_maxpool:
            reduce.append(nn.MaxPool2d(2, ceil_mode=True))
        self.reduce = nn.Sequential(*reduce)
        layers: list[nn.Module] = [Dropout(spec.dropout)] if spec.dropout else []
        width = pooled_dim(spec, in_channels, spatial)
        for hidden in spec.widths:
            layers.append(nn.Linear(width, hidden))
            layers += [nn.BatchNorm1d(hidden)] if spec.batchnorm else []
            layers.append(activation())
            layers += [Dropout(spec.dropout)] if spec.dropout else []
            width = hidden
        layers.append(nn.Linear(width, n_outputs))
        self.dense = nn.Sequential(*layers)

    def pool(self, maps: torch.Tensor) -> torch.Tensor:
        if maps.dim() == 2:
            if self.spec.needs_maps:
                raise ValueError(f"head {self.spec.describe()} needs (N, C, H, W) maps, got pooled vectors")
            return maps
        maps = self.reduce(maps)
        pooling = self.spec.final_pooling
        if pooling == "flatten":
            return maps.flatten(1)
        if pooling == "avg":
            return maps.mean(dim=(2, 3))
        if pooling == "max":
            return maps.amax(dim=(2, 3))
        return torch.cat([maps.mean(dim=(2, 3)), maps.amax(dim=(2, 3))], dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dense(self.pool(x))


def build_head(spec: HeadSpec, in_channels: int, spatial: int | tuple[int, int], n_outputs: int) -> Head:
    """The torch module for ``spec`` on a ``in_channels``×``spatial`` map with ``n_outputs`` logits."""
    return Head(spec, in_channels, spatial, n_outputs)
