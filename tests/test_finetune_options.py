"""Fine-tuning options that change how the data or the learning rates reach the network: layer-wise LR decay,
augmentation presets, the balanced sampler."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import TINY_BACKBONE, TINY_SIZE
from timm.data import create_transform

from transferlab.config import RunConfig
from transferlab.data.images import load_image
from transferlab.finetune import FinetuneOptions, finetune, freeze_units
from transferlab.finetune.augment import PRESETS, training_transform
from transferlab.finetune.checkpoint import load_checkpoint, unprefixed
from transferlab.finetune.data import LabelledImages, training_loader
from transferlab.prepare import prepare
from transferlab.record import layout


@pytest.fixture
def prepared(class_folder: Path, tiny_weights: Path, tmp_path: Path):
    config = RunConfig(
        data=str(class_folder), backbone=TINY_BACKBONE, weights=str(tiny_weights), image_size=TINY_SIZE, workers=0
    )
    return prepare(config, cache_dir=tmp_path / "cache", progress=False)


def _mean_step(before: dict[str, torch.Tensor], after: dict[str, torch.Tensor], modules: tuple[str, ...]) -> float:
    """Mean absolute change of the unit's trainable weights (conv kernels: BN is frozen by default)."""
    names = [n for n in before if n.startswith(modules) and n.endswith("weight") and before[n].dim() == 4]
    return float(np.mean([(after[n] - before[n]).abs().mean().item() for n in names]))


def test_layer_decay_shrinks_each_lower_units_step(prepared, tmp_path: Path) -> None:
    torch.set_num_threads(1)
    before = {name: tensor.clone() for name, tensor in prepared.backbone.model.state_dict().items()}
    options = FinetuneOptions(
        unfreeze="top:2", head_epochs=0, epochs=2, patience=5, lr=1e-2, backbone_lr_ratio=1.0, layer_decay=0.1,
        weight_decay=0.0, augment="none", batch_size=8, lp_init=False, max_restarts=0,
    )  # fmt: skip
    trained: dict[str, torch.Tensor] = {}

    def after_epoch(stage: dict, entry: dict) -> None:  # the epoch-1 weights, before restore-best may undo them
        if entry["epoch"] == 1:
            checkpoint = load_checkpoint(tmp_path / "run" / layout.FINETUNE_CHECKPOINT)[0]
            trained.update(unprefixed("body", unprefixed("model", checkpoint)))

    outcome = finetune(prepared, tmp_path / "run", options, on_epoch=after_epoch)
    top, second = reversed(freeze_units(outcome.model.body)[-2:])
    # Adam moves each weight by about its LR per step, so the steps' ratio is the decay
    ratio = _mean_step(before, trained, second.modules) / _mean_step(before, trained, top.modules)
    assert 0.03 < ratio < 0.3, ratio
    assert outcome.stages[-1]["layer_decay"] == 0.1


@pytest.mark.parametrize("preset", PRESETS)
def test_augmentation_presets_keep_the_input_shape_and_change_pixels(prepared, preset: str) -> None:
    evaluation = create_transform(**prepared.backbone.data_config, is_training=False)
    transform = training_transform(evaluation, preset)
    image = load_image(prepared.split_paths("train")[0])
    plain = evaluation(image)
    torch.manual_seed(0)
    views = [transform(image) for _ in range(8)]
    assert all(view.shape == plain.shape and view.dtype == plain.dtype for view in views)
    changed = any(not torch.allclose(view, plain) for view in views)
    assert changed == (preset != "none")


def test_balanced_sampler_draws_each_class_equally_often() -> None:
    targets = np.array([0] * 900 + [1] * 100)
    images = LabelledImages([Path(f"{i}.png") for i in range(len(targets))], targets, transform=lambda x: x)
    torch.manual_seed(0)
    drawn = targets[list(training_loader(images, 32, "sampler", 0).sampler)]
    assert len(drawn) == len(targets)
    assert abs((drawn == 1).mean() - 0.5) < 0.06
    unbalanced = training_loader(images, 32, "weights", 0)
    assert not isinstance(unbalanced.sampler, torch.utils.data.WeightedRandomSampler)
