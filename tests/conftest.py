"""Shared fixtures: tiny generated images and a tiny timm backbone with fixed random weights.

Unit tests run on these (milliseconds per image); only tests marked ``slow`` use the real packaged
EfficientNet-Lite0 and the real demo photos.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import timm
import torch
from PIL import Image
from safetensors.torch import save_file

REPO = Path(__file__).resolve().parents[1]
DEMO = REPO / "examples" / "fashion"
DEMO_MULTILABEL = REPO / "examples" / "fashion_multilabel" / "labels.csv"
TINY_BACKBONE = "test_efficientnet"
TINY_SIZE = 64


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """Never write to the user's ~/.cache; every test session gets its own feature cache by default."""
    monkeypatch.setenv("TRANSFERLAB_CACHE", str(tmp_path_factory.getbasetemp() / "default-cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="session")
def tiny_weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Seeded random weights for timm's ``test_efficientnet`` (a ~0.36M-parameter network), as safetensors."""
    torch.manual_seed(0)
    model = timm.create_model(TINY_BACKBONE, pretrained=False)
    path = tmp_path_factory.mktemp("weights") / "tiny.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return path


@pytest.fixture
def tiny_run_options(tiny_weights: Path, tmp_path: Path) -> dict:
    """Keyword arguments for ``transferlab.run`` with the tiny backbone, private cache and runs dir."""
    return {
        "backbone": TINY_BACKBONE,
        "weights": str(tiny_weights),
        "image_size": TINY_SIZE,
        "cache_dir": str(tmp_path / "cache"),
        "runs_dir": str(tmp_path / "runs"),
        "progress": False,
        "workers": 0,
    }


def make_class_folder(
    root: Path, per_class: int = 12, classes: tuple[str, ...] = ("red", "green", "blue"), size: int = 24, seed: int = 0
) -> Path:
    """A folder-per-class tree of small noisy images whose dominant colour is the class: easy but not trivial."""
    rng = np.random.default_rng(seed)
    for index, name in enumerate(classes):
        (root / name).mkdir(parents=True, exist_ok=True)
        for item in range(per_class):
            pixels = rng.integers(0, 90, size=(size, size, 3))
            pixels[..., index % 3] += 120 + 40 * (index // 3)
            Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(root / name / f"{name}_{item:03d}.png")
    return root


@pytest.fixture
def class_folder(tmp_path: Path) -> Path:
    return make_class_folder(tmp_path / "data")


RUN_OUTPUT = ("runs_dir", "name", "cache_dir", "progress")


def run_with(data: str | Path, **options: Any) -> Any:
    """``transferlab.run`` called with RunConfig fields and output keywords in one dict, as most tests hold them."""
    import transferlab

    where = {key: options.pop(key) for key in RUN_OUTPUT if key in options}
    return transferlab.run(transferlab.RunConfig(data=str(data), **options), **where)
