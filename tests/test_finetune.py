"""Fine-tuning engine: whole-unit freezing, frozen BatchNorm, LR sanity restarts, early stopping, exact resume."""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
from conftest import DEMO, TINY_BACKBONE, TINY_SIZE, make_class_folder
from PIL import Image
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from timm.data import create_transform, resolve_model_data_config

from transferlab.cli import main
from transferlab.config import RunConfig
from transferlab.data.images import load_image
from transferlab.errors import TransferlabError
from transferlab.finetune import (
    FinetuneOptions,
    build_network,
    finetune,
    freeze_units,
    parse_unfreeze,
    set_trainable,
)
from transferlab.finetune.batchnorm import hold_statistics, recalibrate
from transferlab.finetune.checkpoint import load_checkpoint
from transferlab.finetune.depth_search import search_unfreeze
from transferlab.finetune.engine import EarlyStopping
from transferlab.heads import HeadSpec
from transferlab.model import load_run_model
from transferlab.prepare import prepare
from transferlab.search import search_heads

QUICK = {"augment": "none", "batch_size": 8, "head_epochs": 1, "epochs": 1, "unfreeze": "top:1", "lp_init": False}


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """The tiny network's kernels are too small to split: a second OpenMP thread only adds barrier waits (50×
    slower on a loaded 2-core machine, measured)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_class_folder(tmp_path_factory.mktemp("ft") / "data", per_class=14)


@pytest.fixture(scope="module")
def calibrated_weights(tmp_path_factory: pytest.TempPathFactory, data: Path) -> Path:
    """Tiny random weights whose BatchNorm statistics were measured on the data, as a pretrained net's would be.

    With the stock random init (running mean 0, var 1) train-mode and inference-mode BN disagree wildly, which
    no real pretrained backbone does.
    """
    torch.manual_seed(0)
    model = timm.create_model(TINY_BACKBONE, pretrained=False)
    for module in model.modules():
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            module.reset_running_stats()
            module.momentum = None
    config = resolve_model_data_config(model) | {"input_size": (3, TINY_SIZE, TINY_SIZE)}
    transform = create_transform(**config)
    model.train()
    with torch.no_grad():
        model(torch.stack([transform(load_image(p)) for p in sorted(data.rglob("*.png"))]))
    path = tmp_path_factory.mktemp("weights") / "calibrated.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return path


def _prepare(source: Path, weights: Path, cache: Path):
    config = RunConfig(data=str(source), backbone=TINY_BACKBONE, weights=str(weights), image_size=TINY_SIZE, workers=0)
    return prepare(config, cache_dir=cache, progress=False)


@pytest.fixture(scope="module")
def prepared(tmp_path_factory: pytest.TempPathFactory, data: Path, calibrated_weights: Path):
    return _prepare(data, calibrated_weights, tmp_path_factory.mktemp("cache"))


def _run(prepared, run_dir: Path, **options):
    return finetune(prepared, run_dir, FinetuneOptions(**(QUICK | options)))


def test_units_follow_timm_blocks_and_unfreeze_parsing() -> None:
    model = timm.create_model("tf_efficientnet_lite0", pretrained=False, num_classes=0)
    units = freeze_units(model)
    names = [u.name for u in units]
    assert names[0] == "conv_stem+bn1" and names[-1] == "conv_head+bn2" and len(names) == 18
    assert [u.name for u in parse_unfreeze("top:2", units)] == ["conv_head+bn2", "blocks.6.0"]
    assert parse_unfreeze("none", units) == [] and len(parse_unfreeze("all", units)) == 18
    assert [u.name for u in parse_unfreeze("blocks.6.0, blocks.5", units)] == [
        "blocks.6.0",
        "blocks.5.3",
        "blocks.5.2",
        "blocks.5.1",
        "blocks.5.0",
    ]
    with pytest.raises(TransferlabError, match=r"only part of unit 'blocks\.5\.0'"):
        parse_unfreeze("blocks.5.0.conv_dw", units)
    with pytest.raises(TransferlabError, match=r"only part of unit 'conv_head\+bn2'"):
        parse_unfreeze("conv_head", units)
    with pytest.raises(TransferlabError, match=r"unknown unit 'blocks\.9'"):
        parse_unfreeze("blocks.9", units)
    with pytest.raises(TransferlabError, match="K must be an integer from 1 to 18"):
        parse_unfreeze("top:0", units)


@pytest.mark.parametrize("bn_stats", ["frozen", "batch"])
def test_frozen_batchnorm_is_bit_identical_while_trainable_bn_learns(tiny_weights: Path, bn_stats: str) -> None:
    torch.manual_seed(0)
    backbone = timm.create_model(TINY_BACKBONE, pretrained=False, num_classes=0)
    backbone.load_state_dict(load_file(str(tiny_weights)), strict=False)
    net = build_network(backbone, "head", HeadSpec(), 3, TINY_SIZE)
    units = freeze_units(net.body)
    set_trainable(net.body, units, parse_unfreeze("top:2", units))
    before = {k: v.clone() for k, v in net.body.state_dict().items()}
    optimizer = torch.optim.AdamW([p for p in net.parameters() if p.requires_grad], lr=1e-2)
    for _ in range(3):
        net.train()
        if bn_stats == "frozen":
            hold_statistics(net.body)
        loss = torch.nn.functional.cross_entropy(net(torch.randn(8, 3, TINY_SIZE, TINY_SIZE)), torch.arange(8) % 3)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    after = net.body.state_dict()
    frozen = [
        k for k in before if k.startswith(("conv_stem", "bn1", "blocks.0.", "blocks.1.", "blocks.2.", "blocks.3."))
    ]
    trainable_bn = [k for k in before if k.startswith(("bn2.", "blocks.4.0.bn"))]
    statistics = [k for k in trainable_bn if "running" in k]
    affine = [k for k in trainable_bn if k.endswith((".weight", ".bias"))]
    assert any("running_mean" in k for k in frozen) and statistics and affine
    assert all(torch.equal(before[k], after[k]) for k in frozen)
    assert all(not torch.equal(before[k], after[k]) for k in affine)
    assert all(torch.equal(before[k], after[k]) == (bn_stats == "frozen") for k in statistics)
    assert type(net.body.bn1).__name__.startswith("Frozen") and not type(net.body.bn2).__name__.startswith("Frozen")


def test_recalibrate_sets_running_statistics_to_the_data_average(tiny_weights: Path) -> None:
    backbone = timm.create_model(TINY_BACKBONE, pretrained=False, num_classes=0)
    net = build_network(backbone, "head", HeadSpec(), 3, TINY_SIZE)
    units = freeze_units(net.body)
    top = parse_unfreeze("top:1", units)
    set_trainable(net.body, units, top)
    batches = [(torch.randn(4, 3, TINY_SIZE, TINY_SIZE) + shift, None) for shift in (0.0, 2.0)]
    stem_before = net.body.bn1.running_mean.clone()
    recalibrate(net, net.body, top, batches)
    inputs = []
    hook = net.body.bn2.register_forward_pre_hook(lambda _, args: inputs.append(args[0]))
    with torch.no_grad():
        net.eval()(torch.cat([b for b, _ in batches]))
    hook.remove()
    torch.testing.assert_close(net.body.bn2.running_mean, inputs[0].mean(dim=(0, 2, 3)), rtol=1e-4, atol=1e-5)
    assert torch.equal(net.body.bn1.running_mean, stem_before) and not net.body.bn2.training


def test_early_stopping_keeps_and_restores_the_best_epoch() -> None:
    net = torch.nn.Linear(2, 1)
    tracker = EarlyStopping(patience=2)
    stops = []
    for epoch, metric in enumerate([0.5, 0.7, 0.6, 0.65]):
        with torch.no_grad():
            net.weight.fill_(epoch)
        stops.append(tracker.update(metric, epoch, net))
    assert stops == [False, False, False, True] and tracker.best_epoch == 1
    tracker.restore(net)
    assert torch.all(net.weight == 1)


def test_finetune_writes_record_model_and_preview(prepared, tmp_path: Path) -> None:
    outcome = _run(prepared, tmp_path / "run", epochs=3, patience=1, augment="basic", lp_init=True)
    run = tmp_path / "run"
    record = json.loads((run / "finetune.json").read_text())
    assert record["lp_init"] and outcome.lp_init
    assert [s["name"] for s in record["stages"]] == ["head", "top:1"] and record["metric"] == "accuracy"
    head, top = record["stages"]
    assert head["trainable_blocks"] == [] and top["trainable_blocks"] == ["conv_head+bn2"]
    assert "conv_head+bn2" in head["frozen_blocks"] and "FrozenBatchNorm2d" in top["bn_policy"]
    # once the head stage has trained the head, it moves at the backbone's LR (10x below the head stage's)
    assert top["lr_head"] == top["lr_backbone"] == pytest.approx(head["lr_head"] / 10)
    for stage in record["stages"]:  # restore-best: the kept weights are the best epoch's (0 = stage start)
        curve = [stage["start_val_metric"], *(h["val_metric"] for h in stage["history"])]
        assert stage["best_val_metric"] == max(curve) == curve[stage["best_epoch"]]
        assert stage["stop_reason"] in ("max epochs", "early stopping (patience 1)")
    assert outcome.metrics["val"]["accuracy"] == pytest.approx(record["stages"][-1]["best_val_metric"])
    assert record["test_metrics"]["n"] == len(prepared.split_paths("test"))
    assert not (run / "finetune_checkpoint.safetensors").exists()
    preview = Image.open(run / "augmentation_preview.png")
    assert preview.size == (6 * (TINY_SIZE + 2) + 2, 4 * (TINY_SIZE + 2) + 2)
    loaded = load_run_model(run)  # plain safetensors + JSON, rebuilt by the export/predict loader
    assert loaded.kind == "finetuned" and loaded.classes == prepared.dataset.classes
    images = torch.stack([loaded.transform()(load_image(p)) for p in prepared.split_paths("val")])
    with torch.no_grad():
        np.testing.assert_allclose(loaded.module(images).numpy(), outcome.scores["val"], atol=1e-5)


def test_a_time_limit_ends_training_before_an_epoch_that_would_not_fit(prepared, tmp_path: Path) -> None:
    outcome = _run(prepared, tmp_path / "run", head_epochs=3, epochs=3, patience=10, time_limit=1e-3)
    stages = json.loads((tmp_path / "run" / "finetune.json").read_text())["stages"]
    assert [s["name"] for s in stages] == ["head"]  # the unfreezing stage is not started
    assert stages[0]["stop_reason"] == "time limit" and len(stages[0]["history"]) == 1
    assert outcome.metrics["val"]["accuracy"] == pytest.approx(stages[0]["best_val_metric"])


def test_lr_sanity_check_restarts_the_stage_at_a_lower_lr(prepared, tmp_path: Path) -> None:
    outcome = _run(prepared, tmp_path / "run", lr=1e3, lp_init=False, head_epochs=1, unfreeze="none", max_restarts=2)
    restarts = json.loads((tmp_path / "run" / "finetune.json").read_text())["stages"][0]["restarts"]
    assert restarts and restarts == outcome.stages[0]["restarts"]
    assert restarts[0]["old_lr"] == 1e3 and restarts[0]["new_lr"] == pytest.approx(1e2) and restarts[0]["epoch"] == 1
    assert "1.5·log(C)" in restarts[0]["reason"] or "non-finite" in restarts[0]["reason"]
    limit = 1.5 * math.log(3)
    assert restarts[0]["loss"] is None or restarts[0]["loss"] > limit


class Interrupted(Exception):
    pass


@pytest.mark.parametrize(("stop_at", "bn_stats"), [(("head", 1), "frozen"), (("top:1", 1), "batch")])
def test_resume_after_interruption_matches_an_uninterrupted_run(prepared, tmp_path: Path, stop_at, bn_stats) -> None:
    options = {"augment": "basic", "head_epochs": 2, "epochs": 2, "patience": 5, "balance": "sampler"}
    options["bn_stats"] = bn_stats
    reference = _run(prepared, tmp_path / "straight", **options)

    def interrupt(stage: dict, entry: dict) -> None:
        if (stage["name"], entry["epoch"]) == stop_at:
            raise Interrupted

    with pytest.raises(Interrupted):
        finetune(prepared, tmp_path / "resumed", FinetuneOptions(**(QUICK | options)), on_epoch=interrupt)
    checkpoint = tmp_path / "resumed" / "finetune_checkpoint.safetensors"
    with safe_open(str(checkpoint), framework="pt") as handle:  # tensors + JSON metadata only: no pickle
        assert json.loads(handle.metadata()["transferlab"])["epoch"] == 1
    resumed = _run(prepared, tmp_path / "resumed", resume=True, **options)

    straight = load_file(str(tmp_path / "straight" / "finetuned.safetensors"))
    again = load_file(str(tmp_path / "resumed" / "finetuned.safetensors"))
    assert straight.keys() == again.keys() and all(torch.equal(straight[k], again[k]) for k in straight)
    assert resumed.metrics == reference.metrics

    def curves(stages: list) -> list:
        return [[{k: v for k, v in h.items() if k != "seconds"} for h in s["history"]] for s in stages]

    assert curves(resumed.stages) == curves(reference.stages)


def test_resume_refuses_a_checkpoint_from_other_options(prepared, tmp_path: Path) -> None:
    def interrupt(stage: dict, entry: dict) -> None:
        raise Interrupted

    with pytest.raises(Interrupted):
        finetune(prepared, tmp_path / "run", FinetuneOptions(**(QUICK | {"head_epochs": 2})), on_epoch=interrupt)
    load_checkpoint(tmp_path / "run" / "finetune_checkpoint.safetensors")
    with pytest.raises(TransferlabError, match="other data, model or options"):
        _run(prepared, tmp_path / "run", head_epochs=2, lr=0.5, resume=True)
    with pytest.raises(TransferlabError, match="nothing to resume"):
        _run(prepared, tmp_path / "elsewhere", resume=True)


def _mosaics(root: Path, count: int = 40, size: int = 24) -> Path:
    """Images made of two coloured halves; the labels are the colours present (multi-label)."""
    rng = np.random.default_rng(0)
    root.mkdir(parents=True)
    colours = {"red": 0, "green": 1, "blue": 2}
    rows = ["path,labels"]
    for index in range(count):
        chosen = sorted(rng.choice(list(colours), size=int(rng.integers(1, 3)), replace=False))
        pixels = rng.integers(0, 60, size=(size, size, 3))
        for half, name in enumerate((chosen * 2)[:2]):
            pixels[:, half * size // 2 : (half + 1) * size // 2, colours[name]] += 180
        Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(root / f"m{index:03d}.png")
        rows.append(f"m{index:03d}.png,{';'.join(chosen)}")
    (root / "labels.csv").write_text("\n".join(rows) + "\n")
    return root / "labels.csv"


def test_multilabel_finetune_tunes_thresholds_on_val(tmp_path: Path, calibrated_weights: Path) -> None:
    prepared = _prepare(_mosaics(tmp_path / "mosaics"), calibrated_weights, tmp_path / "cache")
    outcome = _run(prepared, tmp_path / "run")
    assert outcome.metric == "mAP" and len(outcome.thresholds) == 3
    assert {"mAP", "macro_auc"} <= outcome.test_metrics.keys()
    saved = json.loads((tmp_path / "run" / "finetuned.json").read_text())
    assert saved["multilabel"] and saved["thresholds"] == outcome.thresholds
    assert saved["head_spec"]["output"] == "sigmoid"
    assert outcome.scores["val"].shape == (len(prepared.split_paths("val")), 3)


def test_cli_finetune_and_its_errors(data: Path, calibrated_weights: Path, tmp_path: Path, capsys) -> None:
    common = [
        "finetune", str(data), "--backbone", TINY_BACKBONE, "--weights", str(calibrated_weights),
        "--image-size", str(TINY_SIZE), "--cache-dir", str(tmp_path / "cache"), "--runs-dir", str(tmp_path / "runs"),
        "--workers", "0", "--no-progress", "--batch-size", "8", "--augment", "none",
    ]  # fmt: skip
    assert main([*common, "--unfreeze", "blocks.4.0.conv_pw"]) == 2
    assert "only part of unit 'blocks.4.0'" in capsys.readouterr().err
    assert main([*common, "--bn-stats", "sometimes"]) == 2
    assert "unknown --bn-stats 'sometimes'" in capsys.readouterr().err
    assert main([*common, "--resume"]) == 2
    assert "--resume needs --name" in capsys.readouterr().err
    spec = json.dumps({"pooling": "avgmax", "widths": [8]})
    assert main([*common, "--name", "cli", "--head", spec, "--epochs", "1", "--head-epochs", "1"]) == 0
    assert "val   accuracy" in capsys.readouterr().out
    saved = json.loads((tmp_path / "runs" / "cli" / "finetuned.json").read_text())
    assert saved["head_spec"]["pooling"] == "avgmax"
    assert not json.loads((tmp_path / "runs" / "cli" / "finetune.json").read_text())["lp_init"]


@pytest.mark.slow
def test_lite0_finetune_on_demo_photos_matches_or_beats_its_head_stage(tmp_path: Path) -> None:
    config = RunConfig(data=str(DEMO), image_size=96, subset=0.2, workers=0)
    prepared = prepare(config, cache_dir=tmp_path / "cache", progress=False)
    options = FinetuneOptions(unfreeze="top:2", head_epochs=1, epochs=2, batch_size=32, augment="basic")
    outcome = finetune(prepared, tmp_path / "run", options)
    head, top = outcome.stages
    assert top["best_val_metric"] >= head["best_val_metric"]
    assert not top["restarts"] and top["history"][0]["train_loss"] < 1.5 * math.log(10)
    assert outcome.test_metrics["accuracy"] > 0.5


def test_depth_search_tries_depths_and_lrs_on_a_training_subset(prepared, tmp_path: Path) -> None:
    best, record = search_unfreeze(prepared, tmp_path, FinetuneOptions(**QUICK), trials=3, fraction=0.5, max_depth=2)
    assert len(record["trials"]) == 3 and record["n_train"] < len(prepared.split_paths("train"))
    assert all(0 <= t["depth"] <= 2 and 1e-4 <= t["lr"] <= 3e-3 for t in record["trials"])
    top = max(t["value"] for t in record["trials"])
    winners = [
        (t["lr"], "none" if t["depth"] == 0 else f"top:{t['depth']}") for t in record["trials"] if t["value"] == top
    ]
    assert (best.lr, best.unfreeze) in winners
    assert json.loads((tmp_path / "finetune_search.json").read_text())["best"]["unfreeze"] == best.unfreeze


def test_cut_at_a_stage_trains_units_below_it_and_reloads(data: Path, calibrated_weights: Path, tmp_path: Path) -> None:
    config = RunConfig(
        data=str(data), backbone=TINY_BACKBONE, weights=str(calibrated_weights), image_size=TINY_SIZE, workers=0,
        cut_point="blocks.3",
    )  # fmt: skip
    prepared = prepare(config, cache_dir=tmp_path / "cache", progress=False)
    outcome = _run(prepared, tmp_path / "run", unfreeze="top:2")
    assert outcome.stages[-1]["trainable_blocks"] == ["blocks.3.0", "blocks.2.0"]
    assert outcome.stages[-1]["frozen_blocks"] == ["conv_stem+bn1", "blocks.0.0", "blocks.1.0"]
    loaded = load_run_model(tmp_path / "run")
    images = torch.stack([loaded.transform()(load_image(p)) for p in prepared.split_paths("val")])
    with torch.no_grad():
        np.testing.assert_allclose(loaded.module(images).numpy(), outcome.scores["val"], atol=1e-5)


def test_probe_warm_start_is_skipped_when_fine_tuning_at_another_resolution(
    prepared, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="transferlab")
    options = FinetuneOptions(**(QUICK | {"lp_init": True, "image_size": TINY_SIZE // 2, "unfreeze": "none"}))
    outcome = finetune(prepared, tmp_path / "run", options)
    said = [record.getMessage() for record in caplog.records]
    assert not outcome.lp_init
    assert any("probe warm start skipped" in line and f"{TINY_SIZE // 2} px" in line for line in said)


def test_fine_tuning_starts_from_the_searched_head_weights(prepared, tmp_path: Path) -> None:
    searched = search_heads(prepared, tmp_path / "search", trials=2, seed=0)
    options = FinetuneOptions(**(QUICK | {"head_spec": searched.best_spec}))
    outcome = finetune(prepared, tmp_path / "run", options, head_init=searched.head)
    record = json.loads((tmp_path / "run" / "finetune.json").read_text())
    assert record["head_init"] == "searched head" and not record["lp_init"]
    # epoch 0 of the first stage is the searched head itself (up to bf16 vs fp32 features: one image at most)
    searched_val = searched.record["best"]["val_metric"]
    assert abs(outcome.stages[0]["start_val_metric"] - searched_val) <= 1 / len(prepared.split_paths("val")) + 1e-9
    other = HeadSpec(widths=(7,))
    with pytest.raises(TransferlabError, match="head_init is a"):
        finetune(prepared, tmp_path / "bad", FinetuneOptions(**(QUICK | {"head_spec": other})), head_init=searched.head)
