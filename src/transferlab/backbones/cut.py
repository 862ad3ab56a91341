"""A timm network run up to a cut point: the one place cut points are resolved, cut, run and pooled.

Cut points are the model's own stage ends (timm ``feature_info`` modules, e.g. ``blocks.4``) plus ``head``, the
pooled pre-logits vector. Feature extraction, fine-tuning and the deployed model all go through these functions.
"""

from __future__ import annotations

import torch
from torch import nn

from transferlab.errors import TransferlabError

HEAD = "head"
JOIN = "+"  # "blocks.4+blocks.6+head": pooled features of several depths side by side (Head2Toe-style), probe only


def cut_parts(cut_point: str) -> list[str]:
    """The cut points a (possibly joined) cut point is made of."""
    return cut_point.split(JOIN)


def deep_join(network: nn.Module) -> str:
    """The joined cut point the probe also tries: the last two stage ends and the pre-logits."""
    return JOIN.join([*stage_names(network)[-2:], HEAD])


def stage_names(network: nn.Module) -> list[str]:
    return [info["module"] for info in network.feature_info]


def stage_index(network: nn.Module, cut_point: str) -> int | None:
    """The ``feature_info`` index of ``cut_point`` (None: ``head``); an unknown cut point is a user error."""
    if JOIN in cut_point:
        raise TransferlabError(
            f"'{cut_point}' joins several cut points: only a probe or a pooled head can use joined features; "
            "fine-tuning and spatial heads need one cut point"
        )
    stages = stage_names(network)
    if cut_point != HEAD and cut_point not in stages:
        raise TransferlabError(f"unknown cut point '{cut_point}': {', '.join([*stages, HEAD])}")
    return None if cut_point == HEAD else stages.index(cut_point)


def cut_indices(network: nn.Module, cut_point: str) -> list[int | None]:
    """The stage index of every part of a (possibly joined) cut point; unknown parts are a user error."""
    return [stage_index(network, part) for part in cut_parts(cut_point)]


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


def joined_features(network: nn.Module, images: torch.Tensor, indices: list[int | None]) -> torch.Tensor:
    """Pooled features at several stage indices (None: head) side by side, from one forward pass: the cached
    features of a joined cut point, in the order of its parts."""
    stages = sorted({i for i in indices if i is not None})
    if None in indices:
        final, maps = network.forward_intermediates(images, indices=stages)
    else:
        final, maps = (
            None,
            network.forward_intermediates(images, indices=stages, intermediates_only=True, stop_early=True),
        )
    by_index = dict(zip(stages, maps, strict=True))
    return torch.cat([pool(network, final if i is None else by_index[i], i) for i in indices], dim=1)


def pool(network: nn.Module, maps: torch.Tensor, index: int | None) -> torch.Tensor:
    """The float32 vector the feature cache stores: the pre-logits for ``head``, else the global average."""
    if index is None:
        return network.forward_head(maps, pre_logits=True).float()
    return maps.float().mean(dim=(2, 3))
