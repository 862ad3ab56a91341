"""Spatial feature maps of one cut point, cached as float16 for heads that pool themselves (max, conv1x1, ...).

Pooled vectors serve most heads; maps are needed only by heads that pool differently from a global average. They
are computed by one more backbone pass over the images, only for the chosen cut point, and stored in the same
content-addressed shard format as the pooled features (atomic shards, bounded memory while extracting). Maps are
capped at ``MAP_SIZE``×``MAP_SIZE`` by adaptive average pooling (EfficientNet-Lite0's last map at 224 px is
already 7×7; earlier stages at 14–112 px are averaged down), which bounds the cache at C×49 half-floats per image.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import nn

from transferlab.backbones.model import HEAD, Backbone
from transferlab.data.split import SPLITS
from transferlab.features.cache import FeatureCache
from transferlab.features.extract import Precision, extract_features, extract_held_out, load_features

if TYPE_CHECKING:
    from transferlab.pipeline import PreparedData

MAP_SIZE = 7
MAP = "map"


@dataclass
class _MapView:
    """A Backbone stand-in whose ``features`` are one cut point's (pooled-down) maps, so extraction is reused."""

    backbone: Backbone
    cut_point: str
    size: int

    @property
    def model(self) -> nn.Module:
        return self.backbone.model

    def transform(self) -> object:
        return self.backbone.transform()

    def features(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        final, intermediates = self.backbone.model.forward_intermediates(images)
        maps = final if self.cut_point == HEAD else intermediates[self.backbone.cut_points.index(self.cut_point)]
        height, width = maps.shape[2:]
        maps = nn.functional.adaptive_avg_pool2d(maps.float(), (min(height, self.size), min(width, self.size)))
        return {MAP: maps}


def map_cache(
    backbone: Backbone, root: str, cut_point: str, precision: Precision, size: int = MAP_SIZE
) -> FeatureCache:
    """The float16 cache of ``cut_point`` maps, keyed by the backbone identity, precision, cut point and map size."""
    identity = {**backbone.identity(), "precision": precision.name, "maps": cut_point, "map_size": size}
    return FeatureCache(root, identity, dtype=np.float16)


def cached_maps(
    prepared: PreparedData, cut_point: str | None = None, size: int = MAP_SIZE, progress: bool = False
) -> dict[str, np.ndarray]:
    """Float16 (N, C, h, w) maps per split for a ``PreparedData``; computed once, then read from the cache.

    Like pooled features, validation and test maps are fp32 computations even when training maps are bf16.
    """
    name = cut_point or prepared.config.cut_point
    root = prepared.cache.directory.parent.parent
    precision = prepared.extraction.precision_used
    paths = [prepared.dataset.absolute(i) for i in range(len(prepared.dataset))]
    view = _MapView(prepared.backbone, name, size)
    config = prepared.config
    options = {"batch_size": config.batch_size, "workers": config.workers, "progress": progress}
    cache = map_cache(prepared.backbone, root, name, precision, size)
    extract_features(view, paths, prepared.hashes, cache, precision=precision, **options)
    held_out = extract_held_out(
        view,
        paths,
        prepared.hashes,
        prepared.split.held_out_rows(),
        lambda chosen: map_cache(prepared.backbone, root, name, chosen, size),
        precision,
        **options,
    )
    matrix = load_features(cache, held_out, prepared.hashes, MAP)
    return {s: matrix[prepared.split.indices(s)] for s in SPLITS}
