"""The deployable network: backbone cut at the run's cut point, then the run's head, then probabilities."""

from __future__ import annotations

import torch
from torch import nn

from transferlab.backbones.model import HEAD
from transferlab.errors import TransferlabError


class CutBackbone(nn.Module):
    """A timm network that stops at ``cut_point`` and returns its feature maps (N, C, H, W).

    Blocks after the cut are not run (``stop_early``), so an exported graph holds only what the features need.
    """

    def __init__(self, network: nn.Module, cut_point: str) -> None:
        super().__init__()
        stages = [info["module"] for info in network.feature_info]
        if cut_point != HEAD and cut_point not in stages:
            raise TransferlabError(f"unknown cut point '{cut_point}': {', '.join([*stages, HEAD])}")
        self.network = network
        self.cut_point = cut_point
        self.stage = None if cut_point == HEAD else stages.index(cut_point)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if self.stage is None:
            return self.network.forward_features(images)
        return self.network.forward_intermediates(
            images, indices=[self.stage], intermediates_only=True, stop_early=True
        )[0]

    def pool(self, maps: torch.Tensor) -> torch.Tensor:
        """The vector the feature cache stores for this cut point (see ``Backbone.features``)."""
        if self.stage is None:
            return self.network.forward_head(maps, pre_logits=True).float()
        return maps.float().mean(dim=(2, 3))


class RunModel(nn.Module):
    """Normalized images (N, 3, H, W) → class probabilities (N, classes).

    ``pooled`` heads (the linear probe) see the global-average-pooled vector the features cache holds; other heads
    (fine-tuned ones) see the maps. ``output`` turns logits into probabilities; ``None`` when the head already
    returns probabilities.
    """

    def __init__(self, backbone: CutBackbone, head: nn.Module, *, pooled: bool, output: str | None) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = head
        self.pooled = pooled
        self.output = output

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        features = self.backbone(images)
        if self.pooled:
            features = self.backbone.pool(features)
        scores = self.head(features)
        if self.output == "softmax":
            return torch.softmax(scores, dim=1)
        if self.output == "sigmoid":
            return torch.sigmoid(scores)
        return scores
