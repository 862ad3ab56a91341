"""Images re-decoded from disk for training, with the loss that fits the task and the imbalance policy.

Fine-tuning needs pixels (augmented each epoch), not the cached features, so images are decoded again from the
split's paths. Imbalance is handled by class weights in the loss (default) or a balanced sampler.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, WeightedRandomSampler

from transferlab.data.images import ImageLoadError, load_image
from transferlab.errors import TransferlabError

BALANCE = ("none", "weights", "sampler")


class LabelledImages(Dataset):
    """(preprocessed image, target) pairs; targets are class ids, or float 0/1 rows for multi-label."""

    def __init__(self, paths: list[Path], targets: np.ndarray, transform: Callable) -> None:
        self.paths = paths
        self.targets = torch.as_tensor(targets, dtype=torch.float32 if targets.ndim == 2 else torch.int64)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        try:
            image = load_image(self.paths[index])
        except ImageLoadError as error:
            raise TransferlabError(f"cannot re-read a training image: {error}") from None
        return self.transform(image), self.targets[index]


def class_weights(targets: np.ndarray) -> np.ndarray:
    """'Balanced' weights n / (k · count) per class (single-label) or negatives/positives per label (multi-label)."""
    if targets.ndim == 2:
        positives = targets.sum(axis=0)
        return np.clip((len(targets) - positives) / np.maximum(positives, 1), 0.1, 100.0)
    counts = np.bincount(targets).astype(float)
    present = counts > 0
    weights = np.ones_like(counts)
    weights[present] = len(targets) / (present.sum() * counts[present])
    return weights


def loss_function(targets: np.ndarray, n_outputs: int, balance: str) -> nn.Module:
    """Cross-entropy (single-label) or BCE with logits (multi-label), weighted when ``balance == 'weights'``."""
    if balance not in BALANCE:
        raise TransferlabError(f"unknown --balance '{balance}'; choose from {', '.join(BALANCE)}")
    weights = None
    if balance == "weights":
        weights = np.ones(n_outputs)
        computed = class_weights(targets)
        weights[: len(computed)] = computed
    tensor = None if weights is None else torch.as_tensor(weights, dtype=torch.float32)
    if targets.ndim == 2:
        return nn.BCEWithLogitsLoss(pos_weight=tensor)
    return nn.CrossEntropyLoss(weight=tensor)


def training_loader(
    dataset: LabelledImages, batch_size: int, balance: str, workers: int, pin_memory: bool = False
) -> DataLoader:
    """Shuffled batches (or class-balanced draws); the last partial batch is dropped so BatchNorm never sees 1 image.
    ``pin_memory`` for batches bound for a CUDA device (asynchronous copies)."""
    sampler = None
    targets = dataset.targets.numpy()
    if balance == "sampler" and targets.ndim == 1:
        per_class = class_weights(targets)
        sampler = WeightedRandomSampler(per_class[targets].tolist(), num_samples=len(targets), replacement=True)
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=sampler is None,
        sampler=sampler,
        num_workers=workers,
        drop_last=len(dataset) > batch_size,
        pin_memory=pin_memory,
    )


def evaluation_loader(dataset: LabelledImages, batch_size: int, workers: int, pin_memory: bool = False) -> DataLoader:
    return DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=workers, pin_memory=pin_memory)
