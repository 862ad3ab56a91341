"""The inputs every head-search trial trains on: standardized cached features per split, already in memory.

Loading once and keeping tensors in memory is what makes a trial cost milliseconds per epoch: no image decoding,
no backbone forward, no DataLoader.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch

from transferlab.heads import HeadSpec

if TYPE_CHECKING:
    from transferlab.pipeline import PreparedData


def _standardize(train: np.ndarray, *others: np.ndarray) -> list[torch.Tensor]:
    """Per-channel z-scoring with train statistics (as the probe does): heads train faster and more reliably."""
    axes = (0, 2, 3) if train.ndim == 4 else (0,)
    mean = train.mean(axis=axes, keepdims=True, dtype=np.float64)
    std = train.std(axis=axes, keepdims=True, dtype=np.float64) + 1e-6
    return [torch.from_numpy(((x - mean) / std).astype(np.float32)) for x in (train, *others)]


@dataclass
class HeadData:
    """Pooled vectors (and, when a head needs them, spatial maps) per split, with targets and task facts."""

    pooled: dict[str, torch.Tensor]
    y: dict[str, np.ndarray]
    classes: list[str]
    multilabel: bool
    maps: dict[str, torch.Tensor] | None = None

    @classmethod
    def from_arrays(
        cls,
        pooled: dict[str, np.ndarray],
        y: dict[str, np.ndarray],
        classes: list[str],
        maps: dict[str, np.ndarray] | None = None,
    ) -> HeadData:
        names = list(pooled)
        scaled = dict(zip(names, _standardize(*(pooled[s] for s in names)), strict=True))
        scaled_maps = None
        if maps is not None:
            scaled_maps = dict(zip(names, _standardize(*(maps[s].astype(np.float32) for s in names)), strict=True))
        return cls(scaled, y, classes, y[names[0]].ndim == 2, scaled_maps)

    @classmethod
    def from_prepared(cls, prepared: PreparedData, cut_point: str | None = None) -> HeadData:
        return cls.from_arrays(prepared.features(cut_point), prepared.targets(), prepared.dataset.classes)

    @property
    def in_channels(self) -> int:
        return int(self.pooled["train"].shape[1])

    @property
    def spatial(self) -> tuple[int, int]:
        if self.maps is None:
            return (1, 1)
        return int(self.maps["train"].shape[2]), int(self.maps["train"].shape[3])

    @property
    def metric(self) -> str:
        return "mAP" if self.multilabel else "accuracy"

    def inputs(self, spec: HeadSpec) -> dict[str, torch.Tensor]:
        """What ``spec``'s head consumes: pooled vectors when they suffice, otherwise the cached maps."""
        if not spec.needs_maps:
            return self.pooled
        if self.maps is None:
            raise ValueError(f"head {spec.describe()} needs spatial maps but only pooled features are loaded")
        return self.maps

    def subset_train(self, rows: np.ndarray) -> HeadData:
        """The same data with only ``rows`` of the training split (for learning curves over data size)."""
        pick = torch.from_numpy(rows)
        pooled = {**self.pooled, "train": self.pooled["train"][pick]}
        maps = None if self.maps is None else {**self.maps, "train": self.maps["train"][pick]}
        return HeadData(pooled, {**self.y, "train": self.y["train"][rows]}, self.classes, self.multilabel, maps)
