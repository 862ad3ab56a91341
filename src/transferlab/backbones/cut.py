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


def cut_output(network: nn.Module, images: torch.Tensor, index: int | None) -> torch.Tensor:
    """What :func:`pool` takes: stage maps (N, C, H, W) at ``index``, or at ``head`` (None) the network's own
    ``forward_features`` output (maps for CNNs, tokens (N, T, C) for ViT/DeiT, NHWC maps for Swin). Blocks above
    the cut are not run."""
    if index is None:
        return network.forward_features(images)
    return network.forward_intermediates(images, indices=[index], intermediates_only=True, stop_early=True)[0]


def cut_maps(network: nn.Module, images: torch.Tensor, index: int | None) -> torch.Tensor:
    """Feature maps (N, C, H, W) at stage ``index`` (None: the final maps), what spatial heads take.

    A patch-token model's final tokens become maps on their patch grid, the prefix tokens (CLS, registers) left
    out, the same layout timm gives its intermediate stages."""
    return as_maps(network, cut_output(network, images, index), (images.shape[-2], images.shape[-1]))


def as_maps(network: nn.Module, output: torch.Tensor, image_size: tuple[int, int]) -> torch.Tensor:
    """``output`` of :func:`cut_output` as (N, C, H, W) maps."""
    if output.ndim == 3:  # tokens (N, prefix + H·W, C)
        patches = output[:, int(getattr(network, "num_prefix_tokens", 0)) :]
        height, width = network.patch_embed.dynamic_feat_size(image_size)
        return patches.transpose(1, 2).reshape(len(output), output.shape[-1], height, width)
    if getattr(network, "output_fmt", "NCHW") == "NHWC":
        return output.permute(0, 3, 1, 2)
    return output


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


def head_is_map_average(network: nn.Module, image_size: int) -> bool:
    """Whether ``network``'s pooled ``head`` vector is the plain average of its final maps, i.e. what a head that
    averages :func:`cut_maps` sees. True for ResNet and EfficientNet; not for VGG (pre-logits are its fc layers),
    ConvNeXt (a norm after pooling) or ViT (the CLS token). Checked numerically on one random image."""
    image = torch.rand(1, 3, image_size, image_size, generator=torch.Generator().manual_seed(0))
    image = image.to(next(network.parameters()).device)
    was_training = network.training
    network.eval()
    try:
        with torch.no_grad():
            pooled = pool(network, cut_output(network, image, None), None)
            averaged = cut_maps(network, image, None).float().mean(dim=(2, 3))
    finally:
        network.train(was_training)
    return pooled.shape == averaged.shape and torch.allclose(pooled, averaged, rtol=1e-4, atol=1e-5)


def pool(network: nn.Module, output: torch.Tensor, index: int | None) -> torch.Tensor:
    """The float32 vector the feature cache stores, from :func:`cut_output`: the model's own pre-logits for
    ``head``, else the global average of the stage's maps.

    Token models (ViT, DeiT): a stage's vector is the mean of its patch tokens (timm's intermediate maps leave the
    CLS token out), while ``head`` is what the model's classifier was trained on: the final-normed CLS token for
    ``global_pool='token'`` models such as ``vit_tiny_patch16_224``, the token mean for ``'avg'`` ones."""
    if index is None:
        return network.forward_head(output, pre_logits=True).float()
    return output.float().mean(dim=(2, 3))
