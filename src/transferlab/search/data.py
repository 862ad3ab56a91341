"""The inputs every head-search trial trains on: standardized cached features per split, already in memory.

Loading once and keeping tensors in memory is what makes a trial cost milliseconds per epoch: no image decoding,
no backbone forward, no DataLoader.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import nn

from transferlab.features.scaling import channel_scale
from transferlab.heads import Head, HeadSpec
from transferlab.metrics import headline_name
from transferlab.model.probe_head import fold_standardization

if TYPE_CHECKING:
    from transferlab.prepare import PreparedData


def _standardize(train: np.ndarray, *others: np.ndarray) -> tuple[list[torch.Tensor], tuple[np.ndarray, np.ndarray]]:
    """Per-channel z-scoring with train statistics (as the probe does): heads train faster and more reliably.

    Channels constant on the training split are switched off (:func:`~transferlab.features.scaling.channel_scale`).

    Also returns the per-channel (mean, std), so a trained head can be rewritten to take raw features.
    """
    axes = (0, 2, 3) if train.ndim == 4 else (0,)
    mean = train.mean(axis=axes, keepdims=True, dtype=np.float64)
    std = train.std(axis=axes, dtype=np.float64)
    std = channel_scale(std).reshape(mean.shape)
    scaled = [torch.from_numpy(((x - mean) / std).astype(np.float32)) for x in (train, *others)]
    return scaled, (mean.reshape(-1), std.reshape(-1))


@dataclass
class HeadData:
    """Pooled vectors (and, when a head needs them, spatial maps) per split, with targets and task facts."""

    pooled: dict[str, torch.Tensor]
    y: dict[str, np.ndarray]
    classes: list[str]
    multilabel: bool
    maps: dict[str, torch.Tensor] | None = None
    pooled_stats: tuple[np.ndarray, np.ndarray] | None = None

    @classmethod
    def from_arrays(
        cls,
        pooled: dict[str, np.ndarray],
        y: dict[str, np.ndarray],
        classes: list[str],
        maps: dict[str, np.ndarray] | None = None,
    ) -> HeadData:
        names = list(pooled)
        scaled, stats = _standardize(*(pooled[s] for s in names))
        scaled_maps = None
        if maps is not None:
            scaled_maps = dict(zip(names, _standardize(*(maps[s].astype(np.float32) for s in names))[0], strict=True))
        return cls(dict(zip(names, scaled, strict=True)), y, classes, y[names[0]].ndim == 2, scaled_maps, stats)

    @classmethod
    def from_prepared(cls, prepared: PreparedData, cut_point: str | None = None) -> HeadData:
        return cls.from_arrays(prepared.features(cut_point), prepared.targets(), prepared.dataset.classes)

    @property
    def device(self) -> torch.device:
        return self.pooled["train"].device

    def to(self, device: torch.device) -> HeadData:
        """The same data with its tensors on ``device``, copied once (trials then index them there, no per-batch
        host copies)."""
        pooled = {split: x.to(device) for split, x in self.pooled.items()}
        maps = None if self.maps is None else {split: x.to(device) for split, x in self.maps.items()}
        return HeadData(pooled, self.y, self.classes, self.multilabel, maps, self.pooled_stats)

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
        return headline_name(self.multilabel)

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
        y = {**self.y, "train": self.y["train"][rows]}
        return HeadData(pooled, y, self.classes, self.multilabel, maps, self.pooled_stats)

    def on_raw_features(self, head: Head) -> Head | None:
        """A copy of ``head`` (trained on these standardized pooled vectors) that gives the same logits from raw ones.

        The z-scoring is folded into the first linear layer (W/σ, b − W·μ/σ), so fine-tuning can start from the
        trained head on the backbone's own feature maps. None for heads on spatial maps or without a linear layer.
        """
        if head.spec.needs_maps or self.pooled_stats is None:
            return None
        raw = copy.deepcopy(head)
        first = next((m for m in raw.dense if isinstance(m, nn.Linear)), None)
        if first is None:
            return None
        mean, std = (torch.as_tensor(v, dtype=torch.float32) for v in self.pooled_stats)
        with torch.no_grad():
            first.weight[:], first.bias[:] = fold_standardization(first.weight, first.bias, mean, std)
        return raw
