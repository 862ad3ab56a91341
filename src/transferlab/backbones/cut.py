"""A timm network run up to a cut point: the one place cut points are resolved, cut, run and pooled.

Cut points are the model's own stage ends (timm ``feature_info`` modules, e.g. ``blocks.4``) plus ``head``, the
pooled pre-logits vector. Feature extraction, fine-tuning and the deployed model all go through these functions.
"""

from __future__ import annotations

import torch
from torch import nn

from transferlab.errors import TransferlabError

HEAD = "head"


def stage_names(network: nn.Module) -> list[str]:
    return [info["module"] for info in network.feature_info]


def stage_index(network: nn.Module, cut_point: str) -> int | None:
    """The ``feature_info`` index of ``cut_point`` (None: ``head``); an unknown cut point is a user error."""
    stages = stage_names(network)
    if cut_point != HEAD and cut_point not in stages:
        raise TransferlabError(f"unknown cut point '{cut_point}': {', '.join([*stages, HEAD])}")
    return None if cut_point == HEAD else stages.index(cut_point)


def cut_network(network: nn.Module, cut_point: str) -> tuple[nn.Module, int | None]:
    """``network`` (pruned in place: blocks above ``cut_point`` are removed) and the cut's stage index."""
    index = stage_index(network, cut_point)
    if index is not None:
        network.prune_intermediate_layers(indices=[index], prune_head=True, prune_norm=True)
    return network, index


def cut_maps(network: nn.Module, images: torch.Tensor, index: int | None) -> torch.Tensor:
    """Feature maps (N, C, H, W) at stage ``index`` (None: the final maps); blocks above it are not run."""
    if index is None:
        return network.forward_features(images)
    return network.forward_intermediates(images, indices=[index], intermediates_only=True, stop_early=True)[0]


def pool(network: nn.Module, maps: torch.Tensor, index: int | None) -> torch.Tensor:
    """The float32 vector the feature cache stores: the pre-logits for ``head``, else the global average."""
    if index is None:
        return network.forward_head(maps, pre_logits=True).float()
    return maps.float().mean(dim=(2, 3))
