"""Training-time augmentation (torchvision transforms v2) spliced into the backbone's own preprocessing.

Augmentations run after the backbone's resize + centre crop (cheap: on the small crop, not the original photo) and
before tensor conversion + normalization, so evaluation and training see exactly the same geometry and scaling
except for the random changes. A preview grid lets a person check that the augmented images still look like their
class (e.g. that a flip does not turn a '6' into a '9').
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from torchvision.transforms import Compose, v2
from torchvision.utils import make_grid

from transferlab.data.images import load_image
from transferlab.errors import TransferlabError
from transferlab.fileio import atomic_write_bytes

PRESETS = ("basic", "randaugment", "trivialaugment", "none")


def augmentations(preset: str) -> list[Any]:
    """The random transforms of a preset; ``basic`` = flip, small rotation and translation, contrast jitter."""
    if preset == "basic":
        return [
            v2.RandomHorizontalFlip(),
            v2.RandomAffine(degrees=10, translate=(0.1, 0.1)),
            v2.ColorJitter(contrast=0.3),
        ]
    if preset == "randaugment":
        return [v2.RandAugment()]
    if preset == "trivialaugment":
        return [v2.TrivialAugmentWide()]
    if preset == "none":
        return []
    raise TransferlabError(f"unknown augmentation preset '{preset}'; choose from {', '.join(PRESETS)}")


def training_transform(eval_transform: Compose, preset: str) -> Compose:
    """``eval_transform`` (timm: resize, crop, to-tensor, normalize) with the preset inserted after the crop."""
    steps = list(eval_transform.transforms)
    first_tensor_step = next(i for i, step in enumerate(steps) if "Tensor" in type(step).__name__)
    return Compose([*steps[:first_tensor_step], *augmentations(preset), *steps[first_tensor_step:]])


def save_preview(
    path: Path, images: list[Path], transform: Compose, mean: tuple[float, ...], std: tuple[float, ...], views: int = 6
) -> None:
    """A PNG grid: one row per image, ``views`` augmented versions each (un-normalized for display)."""
    tiles = [transform(load_image(image)) for image in images for _ in range(views)]
    grid = make_grid(torch.stack(tiles), nrow=views, padding=2)
    grid = grid * torch.tensor(std).view(3, 1, 1) + torch.tensor(mean).view(3, 1, 1)
    array = (grid.clamp(0, 1) * 255).round().byte().permute(1, 2, 0).numpy()
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    atomic_write_bytes(path, buffer.getvalue())
