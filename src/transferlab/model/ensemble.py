"""Several backbone + probe models behind one input: what a run deploys when averaging backbones cross-validated
better than the best of them alone (``transferlab.probe.ensemble``).

One input keeps ``predict``, ``evaluate`` and the ONNX graph as they are for a single model. That is exact only
when every member sees the image resized and cropped the same way, which the run ensures (its members share one
input size); the members' own mean/std normalisations differ freely, because converting one into another is an
affine map per channel, done in the graph.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from transferlab.errors import TransferlabError
from transferlab.model.network import CPU

GEOMETRY = ("input_size", "interpolation", "crop_pct", "crop_mode")
"""What every member's preprocessing must share for one resized image to serve them all."""


def same_geometry(preprocessings: list[dict[str, Any]]) -> bool:
    """Whether one resized, cropped image serves every member (only mean/std may differ)."""
    first = preprocessings[0]
    return all(_geometry(p) == _geometry(first) for p in preprocessings[1:])


def _geometry(preprocessing: dict[str, Any]) -> list[Any]:
    return [list(v) if isinstance(v, list | tuple) else v for v in (preprocessing.get(k) for k in GEOMETRY)]


class AveragedModel(nn.Module):
    """Images normalized as the first member's → each member (its own normalization restored) → mean probability."""

    device: torch.device = CPU

    def __init__(self, members: list[nn.Module], preprocessings: list[dict[str, Any]]) -> None:
        super().__init__()
        if not same_geometry(preprocessings):
            raise TransferlabError("ensemble members differ in input size or crop; they cannot share one image")
        self.members = nn.ModuleList(members)
        mean0, std0 = _channels(preprocessings[0], "mean"), _channels(preprocessings[0], "std")
        # member input = (pixel - mean_m) / std_m with pixel = x * std0 + mean0
        for i, preprocessing in enumerate(preprocessings):
            mean, std = _channels(preprocessing, "mean"), _channels(preprocessing, "std")
            self.register_buffer(f"scale{i}", std0 / std)
            self.register_buffer(f"shift{i}", (mean0 - mean) / std)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        scores = [
            member(images * getattr(self, f"scale{i}") + getattr(self, f"shift{i}"))
            for i, member in enumerate(self.members)
        ]
        return torch.stack(scores).mean(dim=0)


def _channels(preprocessing: dict[str, Any], key: str) -> torch.Tensor:
    return torch.tensor(preprocessing[key], dtype=torch.float32).view(1, -1, 1, 1)
