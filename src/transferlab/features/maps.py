"""Spatial feature maps of one cut point, cached as float16 for heads that pool themselves (max, conv1x1, ...).

Pooled vectors serve most heads; maps are needed only by heads that pool differently from a global average. They
are computed by one more backbone pass over the images, only for the chosen cut point, and stored in the same
content-addressed shard format as the pooled features (atomic shards, bounded memory while extracting). Maps are
capped at ``MAP_SIZE``×``MAP_SIZE`` by adaptive average pooling (EfficientNet-Lite0's last map at 224 px is
already 7×7; earlier stages at 14–112 px are averaged down), which bounds the cache at C×49 half-floats per image.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from transferlab.backbones.cut import cut_maps, stage_index
from transferlab.backbones.model import Backbone
from transferlab.features.cache import FeatureCache
from transferlab.features.extract import Precision

MAP_SIZE = 7
MAP = "map"


@dataclass
class MapView:
    """A Backbone stand-in whose ``features`` are one cut point's (pooled-down) maps, so extraction is reused."""

    backbone: Backbone
    cut_point: str
    size: int

    @property
    def model(self) -> nn.Module:
        return self.backbone.model

    @property
    def data_config(self) -> dict[str, Any]:
        return self.backbone.data_config

    def transform(self) -> object:
        return self.backbone.transform()

    def features(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        maps = cut_maps(self.model, images, stage_index(self.model, self.cut_point))
        height, width = maps.shape[2:]
        maps = nn.functional.adaptive_avg_pool2d(maps.float(), (min(height, self.size), min(width, self.size)))
        return {MAP: maps}


def map_cache(
    backbone: Backbone, root: str, cut_point: str, precision: Precision, size: int = MAP_SIZE
) -> FeatureCache:
    """The float16 cache of ``cut_point`` maps, keyed by the backbone identity, precision, cut point and map size."""
    identity = {**backbone.identity(), "precision": precision.name, "maps": cut_point, "map_size": size}
    return FeatureCache(root, identity, dtype=np.float16)
