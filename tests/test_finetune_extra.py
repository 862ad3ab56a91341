"""LR finder, cached boundary activations, k-fold, from-scratch and torchrun/DDP on the tiny backbone."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import timm
import torch
from conftest import TINY_BACKBONE, TINY_SIZE
from timm.data import create_transform
from torch import nn

from transferlab.config import RunConfig
from transferlab.errors import TransferlabError
from transferlab.finetune import (
    FinetuneNet,
    FinetuneOptions,
    StagePlan,
    build_network,
    finetune,
    freeze_units,
    parse_unfreeze,
)
from transferlab.finetune.boundary import ActivationStore, cached_boundary, feature_chain, run_chain, split_chain
from transferlab.finetune.data import LabelledImages, evaluation_loader, training_loader
from transferlab.finetune.lr_find import lr_find, plot_lr_find, smooth, suggest
from transferlab.heads import HeadSpec
from transferlab.prepare import prepare

QUICK = {"epochs": 1, "head_epochs": 1, "batch_size": 8, "augment": "basic", "lp_init": False}


@pytest.fixture
def prepared(class_folder: Path, tiny_weights: Path, tmp_path: Path):
    config = RunConfig(
        data=str(class_folder), backbone=TINY_BACKBONE, weights=str(tiny_weights), image_size=TINY_SIZE, workers=0
    )
    return prepare(config, cache_dir=tmp_path / "cache", progress=False)


def _tiny_net(n_outputs: int = 3):
    torch.manual_seed(0)
    return build_network(timm.create_model(TINY_BACKBONE, num_classes=0), "head", HeadSpec(), n_outputs, TINY_SIZE)


def _loaders(prepared, augment: bool = True) -> dict:
    from transferlab.finetune.augment import training_transform

    evaluation = create_transform(**prepared.backbone.data_config, is_training=False)
    train = training_transform(evaluation, "basic") if augment else evaluation
    targets = prepared.targets()
    images = {
        split: LabelledImages(prepared.split_paths(split), targets[split], train if split == "train" else evaluation)
        for split in ("train", "val", "test")
    }
    return {
        "train": training_loader(images["train"], 8, "none", 0),
        "val": evaluation_loader(images["val"], 8, 0),
        "test": evaluation_loader(images["test"], 8, 0),
    }


# --- LR finder ---------------------------------------------------------------------------------------------------


def test_suggestion_is_the_steepest_descent_before_the_minimum() -> None:
    lrs = list(np.logspace(-6, 0, 61))
    # flat, then a steep drop centred at 1e-3, a minimum at 1e-1, then divergence
    losses = [2.0 - 1.5 / (1 + np.exp(-(np.log10(lr) + 3) * 4)) + (5 * (lr - 0.1) if lr > 0.1 else 0) for lr in lrs]
    steepest, at_min = suggest(lrs, losses)
    assert 10**-3.2 <= steepest <= 10**-2.8
    assert at_min == pytest.approx(0.1)
    assert smooth([1.0, 1.0, 1.0], 0.9) == pytest.approx([1.0, 1.0, 1.0])  # bias-corrected: no pull towards 0


def test_lr_find_sweeps_plots_and_restores_the_model(tmp_path: Path) -> None:
    net = _tiny_net()
    generator = torch.Generator().manual_seed(0)
    targets = torch.randint(0, 3, (24,), generator=generator)
    images = torch.randn(24, 3, 32, 32, generator=generator) + targets.view(-1, 1, 1, 1)
    batches = [(images[i : i + 8], targets[i : i + 8]) for i in range(0, 24, 8)]
    optimizer = torch.optim.AdamW(
        [{"params": net.head.parameters(), "lr": 1e-3}, {"params": net.body.parameters(), "lr": 1e-4}]
    )
    before = {name: tensor.clone() for name, tensor in net.state_dict().items()}
    rng_before = torch.get_rng_state()
    net.train()
    result = lr_find(net, optimizer, batches, nn.functional.cross_entropy, start_lr=1e-6, end_lr=10, steps=40)

    assert all(torch.equal(before[name], tensor) for name, tensor in net.state_dict().items())  # BN stats too
    assert torch.equal(torch.get_rng_state(), rng_before)
    assert not optimizer.state  # no Adam moments left over from the sweep
    assert [group["lr"] for group in optimizer.param_groups] == [1e-3, 1e-4]
    assert result.lrs[0] == pytest.approx(1e-6) and bool(np.all(np.diff(result.lrs) > 0))
    assert result.stop_reason == "diverged"  # LR 10 with AdamW blows up
    assert result.lrs[0] < result.suggestion < result.lrs[-1]
    assert result.smoothed[result.lrs.index(result.suggestion)] < result.smoothed[0]
    plot_lr_find(result, tmp_path / "lr_find.png")
    assert (tmp_path / "lr_find.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_lr_find_rejects_bad_ranges() -> None:
    net = _tiny_net()
    optimizer = torch.optim.AdamW(net.parameters())
    with pytest.raises(TransferlabError, match="start LR"):
        lr_find(net, optimizer, [], nn.functional.cross_entropy, start_lr=1.0, end_lr=1e-3)


# --- cached boundary activations ---------------------------------------------------------------------------------


def test_feature_chain_splits_exactly_and_refuses_non_chains() -> None:
    net = _tiny_net().eval()
    chain = feature_chain(net, TINY_SIZE)
    assert chain[0] == "conv_stem" and chain[-1] == "bn2" and "blocks.3.0" in chain
    lower, upper = split_chain(chain, "blocks.3")
    assert lower[-1] == "blocks.2.0" and upper[0] == "blocks.3.0"
    x = torch.randn(2, 3, TINY_SIZE, TINY_SIZE)
    with torch.no_grad():
        assert torch.allclose(net.head(run_chain(net.body, upper, run_chain(net.body, lower, x))), net(x), atol=1e-5)
    with pytest.raises(TransferlabError, match="nothing is frozen below"):
        split_chain(chain, "conv_stem")
    with pytest.raises(TransferlabError, match="unknown boundary"):
        split_chain(chain, "blocks.99")
    vit = timm.create_model("test_vit", num_classes=0)
    with pytest.raises(TransferlabError, match="not a plain chain"):
        feature_chain(FinetuneNet(vit, nn.Identity(), None), vit.pretrained_cfg["input_size"][-1])


def test_activation_store_spills_to_disk_beyond_budget(tmp_path: Path) -> None:
    in_ram = ActivationStore(4, 2, (3, 2, 2), directory=tmp_path, memory_budget=1 << 20)
    assert in_ram.path is None and in_ram.nbytes == 2 * 4 * 2 * 12
    on_disk = ActivationStore(4, 2, (3, 2, 2), directory=tmp_path, memory_budget=10)
    on_disk.put(1, 2, torch.ones(2, 3, 2, 2))
    assert on_disk.path is not None and on_disk.path.exists()
    assert on_disk.data.dtype == np.float16 and on_disk.data[1, 2:].sum() == 24
    on_disk.release()
    assert not on_disk.path.exists()
    with pytest.raises(TransferlabError, match="memory budget"):
        ActivationStore(4, 2, (3, 2, 2), memory_budget=10)


def test_cached_boundary_views_and_upper_training(prepared, tmp_path: Path) -> None:
    from transferlab.finetune import FinetuneOptions, Trainer

    net = _tiny_net()
    units = freeze_units(net.body)
    plans = [StagePlan("top:2", parse_unfreeze("top:2", units), 2)]
    loaders = _loaders(prepared)
    views = FinetuneOptions(cache_views=2, balance="none", seed=0)
    upper_net, cached, stores = cached_boundary(
        net, units, plans, loaders, views, image_size=TINY_SIZE, memory_budget=1 << 30
    )
    train_store = stores[0]
    assert train_store.views == 2 and train_store.n == len(loaders["train"].dataset)
    assert not np.array_equal(train_store.data[0], train_store.data[1])  # two different augmented views
    assert upper_net.upper[0] == plans[0].trainable[-1].modules[0]  # boundary = lowest trainable unit

    # the cached val view through the upper part scores like the whole network on the images (fp16 inputs)
    images, _ = next(iter(loaders["val"]))
    activations, _ = next(iter(cached["val"]))
    net.eval()
    with torch.no_grad():
        assert torch.allclose(upper_net(activations), net(images), atol=2e-2)

    frozen = {k: v.clone() for k, v in net.body.state_dict().items() if k.startswith(("conv_stem", "blocks.0"))}
    top = {k: v.clone() for k, v in net.body.state_dict().items() if k.startswith("conv_head")}
    settings = FinetuneOptions(lr=1e-2, backbone_lr_ratio=0.1, weight_decay=0.0, warmup=0.0, patience=5, max_restarts=0)
    trainer = Trainer(
        upper_net,
        units,
        cached,
        nn.CrossEntropyLoss(),
        ["a", "b", "c"],
        settings,
        tmp_path / "ck.safetensors",
        fingerprint="x",
        multilabel=False,
        on_epoch=lambda *_: after_epoch.append({k: v.clone() for k, v in net.body.state_dict().items()}),
    )
    after_epoch: list[dict[str, torch.Tensor]] = []  # weights after each epoch, before restore-best
    (record,) = trainer.run(plans, None)
    assert len(record["history"]) == 2 and np.isfinite(record["history"][-1]["train_loss"])
    state = after_epoch[0]
    assert all(torch.equal(state[k], v) for k, v in frozen.items() if "num_batches" not in k)
    assert any(not torch.equal(state[k], v) for k, v in top.items() if k in state)


def test_finetune_with_cache_views_writes_the_usual_record(prepared, tmp_path: Path) -> None:
    outcome = finetune(prepared, tmp_path / "run", FinetuneOptions(unfreeze="top:1", cache_views=2, **QUICK))
    assert [stage["name"] for stage in outcome.stages] == ["head", "top:1"]
    assert set(outcome.metrics) == {"val", "test"}
    assert (tmp_path / "run" / "finetuned.safetensors").exists()
    assert not list((tmp_path / "run").glob("boundary-*"))  # no spilled activations left behind


# --- k-fold and from-scratch -------------------------------------------------------------------------------------


def test_fold_splits_partition_the_data_stratified_and_keep_duplicates_together(
    class_folder: Path, tiny_weights: Path, tmp_path: Path
) -> None:
    from transferlab.finetune.variants import fold_splits

    duplicate = class_folder / "red" / "red_copy.png"
    duplicate.write_bytes((class_folder / "red" / "red_000.png").read_bytes())
    config = RunConfig(data=str(class_folder), backbone=TINY_BACKBONE, weights=str(tiny_weights), image_size=TINY_SIZE)
    prepared = prepare(config, cache_dir=tmp_path / "cache", progress=False)
    splits = fold_splits(prepared, 3, seed=0)
    tests = np.stack([split.assignment == "test" for split in splits])
    assert (tests.sum(axis=0) == 1).all()  # every image is tested exactly once
    for split in splits:
        assert split.counts()["val"] > 0 and split.counts()["train"] > split.counts()["test"]
        test_classes = prepared.dataset.y[split.indices("test")]
        assert abs(np.bincount(test_classes, minlength=3) - len(test_classes) / 3).max() <= 1  # stratified
        copies = [prepared.dataset.paths.index(p) for p in ("red/red_000.png", "red/red_copy.png")]
        assert len({split.assignment[i] for i in copies}) == 1
    assert [s.assignment.tolist() for s in fold_splits(prepared, 3, seed=0)] == [s.assignment.tolist() for s in splits]
    assert [s.assignment.tolist() for s in fold_splits(prepared, 3, seed=1)] != [s.assignment.tolist() for s in splits]
    with pytest.raises(TransferlabError, match="rarest class"):
        fold_splits(prepared, 20, seed=0)


def test_finetune_folds_reports_mean_and_std(prepared, tmp_path: Path) -> None:
    from transferlab.fileio import read_json
    from transferlab.finetune.variants import finetune_folds

    options = FinetuneOptions(unfreeze="none", **QUICK)
    summary = finetune_folds(prepared, tmp_path / "run", options, 3)
    saved = read_json(tmp_path / "run" / "folds.json")
    values = [row["test_metric"] for row in saved["folds"]]
    assert saved["k"] == 3 and len(values) == 3 and saved["metric"] == "accuracy"
    assert saved["mean"] == pytest.approx(np.mean(values)) and saved["std"] == pytest.approx(np.std(values, ddof=1))
    assert summary == saved
    assert all((tmp_path / "run" / f"fold-{i}" / "finetune.json").exists() for i in range(3))


def test_from_scratch_trains_every_unit_from_random_weights(prepared, tmp_path: Path) -> None:
    from transferlab.fileio import read_json
    from transferlab.finetune.variants import finetune_from_scratch

    pretrained = prepared.backbone.model.conv_stem.weight.detach().clone()
    options = FinetuneOptions(unfreeze="top:1", seed=1, **QUICK)
    outcome = finetune_from_scratch(prepared, tmp_path / "scratch", options)
    record = read_json(tmp_path / "scratch" / "finetune.json")
    assert record["from_scratch"] is True and record["lp_init"] is False
    (stage,) = record["stages"]
    assert stage["frozen_blocks"] == [] and len(stage["trainable_blocks"]) == len(freeze_units(outcome.model.body))
    assert stage["lr_backbone"] == stage["lr_head"]
    assert torch.equal(prepared.backbone.model.conv_stem.weight, pretrained)  # the pretrained model is untouched
    trained = outcome.model.body.conv_stem.weight.detach()
    assert (trained - pretrained).abs().mean() > 10 * 1e-3  # far from the pretrained start: a random init


# --- CLI: lr-find and torchrun -----------------------------------------------------------------------------------


def _cli_data_options(class_folder: Path, tiny_weights: Path, tmp_path: Path, name: str) -> list[str]:
    return [
        str(class_folder), "--backbone", TINY_BACKBONE, "--weights", str(tiny_weights), "--image-size",
        str(TINY_SIZE), "--workers", "0", "--batch-size", "4", "--runs-dir", str(tmp_path / "runs"),
        "--cache-dir", str(tmp_path / "cache"), "--name", name, "--no-progress",
    ]  # fmt: skip


def test_lr_find_command_writes_plot_and_suggestion(
    class_folder: Path, tiny_weights: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    from transferlab.cli import main
    from transferlab.fileio import read_json

    options = _cli_data_options(class_folder, tiny_weights, tmp_path, "lrf")
    assert main(["lr-find", *options, "--steps", "20", "--start-lr", "1e-4", "--unfreeze", "top:1"]) == 0
    out = capsys.readouterr().out
    saved = read_json(tmp_path / "runs" / "lrf" / "lr_find.json")
    assert f"suggested --lr {saved['suggestion']:.2g}" in out
    assert saved["unfreeze"] == "top:1" and 1e-4 <= saved["suggestion"] <= 10
    assert (tmp_path / "runs" / "lrf" / "lr_find.png").stat().st_size > 1000
    assert main(["lr-find", *options, "--steps", "3"]) == 2  # a user mistake: one error line, no traceback
    assert "at least 10 steps" in capsys.readouterr().err


def test_torchrun_two_cpu_processes_one_writer(class_folder: Path, tiny_weights: Path, tmp_path: Path) -> None:
    import os
    import subprocess
    import sys

    from transferlab.fileio import read_json

    scripts = Path(sys.executable).parent  # the venv's console scripts, whether or not it is on PATH
    command = [
        str(scripts / "torchrun"), "--standalone", "--nproc_per_node", "2", "--no-python", str(scripts / "transferlab"),
        "finetune",
        *_cli_data_options(class_folder, tiny_weights, tmp_path, "ddp"),
        "--epochs", "1", "--head-epochs", "1", "--unfreeze", "top:1", "--no-lp-init",
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("run directory:") == 1  # only rank 0 talks
    runs = list((tmp_path / "runs").iterdir())
    assert [run.name for run in runs] == ["ddp"]
    files = sorted(path.name for path in runs[0].iterdir())
    assert files == [
        "augmentation_preview.png",
        "config.json",
        "environment.json",
        "finetune.json",
        "finetuned.json",
        "finetuned.safetensors",
        "problems.txt",
        "record.json",
        "split.csv",
    ]  # one writer: every file once, from rank 0
    record = read_json(runs[0] / "finetune.json")
    assert [stage["world_size"] for stage in record["stages"]] == [2, 2]  # both ranks joined every stage
    for stage in record["stages"]:
        assert all(np.isfinite(entry["train_loss"]) and 0 <= entry["val_metric"] <= 1 for entry in stage["history"])
    assert record["test_metrics"]["n"] > 0 and 0 <= record["test_metrics"]["accuracy"] <= 1
