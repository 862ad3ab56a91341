"""Using all labelled data honestly: a separate --test set, refit on train + val, grouped splits, constant channels."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import TINY_BACKBONE, TINY_SIZE, make_class_folder, run_with

from transferlab.cli import main
from transferlab.data import load_dataset, make_split
from transferlab.errors import TransferlabError
from transferlab.features.scaling import IGNORED_SCALE, channel_scale
from transferlab.model.probe_head import ProbeHead, probe_tensors
from transferlab.probe import fit_probe
from transferlab.search.data import HeadData
from transferlab.search.runner import _shortfall


def test_constant_training_channels_are_switched_off_not_blown_up() -> None:
    rng = np.random.default_rng(0)
    train = rng.normal(1.0, 0.3, size=(60, 8)).astype(np.float32)
    train[:, 3] = 0.0  # black-background channel: never active in training ...
    train[:5, 3] = 1e-5
    held_out = rng.normal(1.0, 0.3, size=(10, 8)).astype(np.float32)
    held_out[:, 3] = 59.0  # ... strongly active on held-out images
    scale = channel_scale(train.std(axis=0))
    assert scale[3] == IGNORED_SCALE and np.all(scale[[0, 1, 2, 4]] < 1)
    y = np.arange(60) % 2
    data = HeadData.from_arrays({"train": train, "val": held_out}, {"train": y, "val": y[:10]}, ["a", "b"])
    assert float(data.pooled["val"].abs().max()) < 10  # was (59 - 0) / (std + 1e-6) ≈ 1.6e7
    probe = fit_probe({"train": train, "val": held_out}, {"train": y, "val": y[:10]}, ["a", "b"])
    twin = probe.train_model  # (the deployed probe also saw val, where the channel varies)
    assert twin.named_steps["scale"].scale_[3] == IGNORED_SCALE
    assert probe.signed_sqrt  # the root lifts 1e-5 to 3e-3: constancy is judged on the raw features, so still off
    dark = held_out.copy()
    dark[:, 3] = 0.0
    np.testing.assert_allclose(twin.predict_proba(held_out), twin.predict_proba(dark), atol=1e-9)
    graph = ProbeHead(probe_tensors(twin), 2, False, signed_sqrt=True)  # roots every channel, zeroes none
    np.testing.assert_allclose(graph(torch.from_numpy(held_out)).numpy(), twin.predict_proba(dark), atol=1e-6)


def test_probe_is_deployed_refit_on_train_and_val_and_scored_on_val_by_its_train_only_twin() -> None:
    rng = np.random.default_rng(1)
    sizes = {"train": 45, "val": 15, "test": 15}
    x = {s: rng.normal(size=(n, 6)) + (np.arange(n) % 3)[:, None] for s, n in sizes.items()}
    y = {s: np.arange(len(v)) % 3 for s, v in x.items()}
    probe = fit_probe(x, y, ["a", "b", "c"], seed=0)
    assert probe.fit_images == 60 and probe.model.named_steps["scale"].n_samples_seen_ == 60
    assert probe.train_model.named_steps["scale"].n_samples_seen_ == 45
    np.testing.assert_allclose(probe.val_scores, probe.train_model.predict_proba(x["val"]))
    assert probe.train_model[-1].C == probe.C  # the twin uses the C the cross-validation chose


def test_grouped_split_keeps_each_group_on_one_side() -> None:
    y = np.repeat(np.arange(3), 40)
    groups = np.asarray([f"patient{i // 4}" for i in range(len(y))], dtype=object)  # 4 images per patient
    split = make_split(y, [str(i) for i in range(len(y))], seed=0, groups=groups)
    for group in set(groups):
        assert len(set(split.assignment[groups == group])) == 1
    counts = split.counts()
    assert counts["test"] > 0 and counts["val"] > 0 and counts["train"] > 60


def test_grouped_cross_validation_of_the_probe_runs_on_groups() -> None:
    rng = np.random.default_rng(2)
    x = {"train": rng.normal(size=(40, 4)) + (np.arange(40) % 2)[:, None], "val": np.zeros((0, 4))}
    y = {"train": np.arange(40) % 2, "val": np.zeros(0, dtype=int)}
    probe = fit_probe(x, y, ["a", "b"], groups=np.asarray([str(i // 2) for i in range(40)], dtype=object))
    assert probe.fit_images == 40 and "val" not in probe.metrics


def test_groups_column_read_from_csv_and_refused_for_folders(tmp_path: Path, class_folder: Path) -> None:
    rows = [["path", "label", "patient"]]
    rows += [[str(p.relative_to(class_folder)), p.parent.name, p.stem[-1]] for p in sorted(class_folder.rglob("*.png"))]
    rows[3][2] = ""
    with open(class_folder / "labels.csv", "w", newline="") as handle:
        csv.writer(handle).writerows(rows)
    dataset = load_dataset(class_folder / "labels.csv", group_column="Patient")
    assert len(dataset) == 35 and set(dataset.groups) <= set("0123456789")
    assert any("empty 'Patient' (group) cell" in str(p) for p in dataset.problems)
    with pytest.raises(TransferlabError, match="no group column 'site'"):
        load_dataset(class_folder / "labels.csv", group_column="site")
    with pytest.raises(TransferlabError, match="--groups needs a CSV"):
        load_dataset(class_folder, group_column="patient")


def test_run_with_a_separate_test_set(tmp_path: Path, tiny_run_options: dict) -> None:
    train = make_class_folder(tmp_path / "train", per_class=10)
    test = make_class_folder(tmp_path / "test", per_class=4, classes=("red", "blue"), seed=9)
    shutil.copy(test / "red" / "red_000.png", train / "green" / "leaked.png")  # a test image inside DATA
    (test / "blue" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")  # bad input in the test set
    result = run_with(train, test=str(test), name="given", **tiny_run_options)
    record = json.loads((result.run_dir / "record.json").read_text())
    assert record["split_counts"]["test"] == 8  # exactly the given test images, none carved out of DATA
    assert record["split_counts"]["train"] + record["split_counts"]["val"] == 30
    assert record["probe"]["fit_on"] == "train+val" and record["probe"]["fit_images"] == 30
    assert result.metrics["test"]["n"] == 8
    assert any("leaked.png" in str(p) and "same content as test image" in str(p) for p in result.problems)
    assert any("test/blue/broken.png" in str(p) for p in result.problems)  # named and skipped, like DATA's
    with open(result.run_dir / "split.csv") as handle:
        split_rows = list(csv.DictReader(handle))
    assert {r["path"].split("/")[0] for r in split_rows if r["split"] == "test"} == {"test"}


def test_test_set_with_an_unknown_class_is_a_one_line_error(
    tmp_path: Path, tiny_run_options: dict, capsys: pytest.CaptureFixture[str]
) -> None:
    train = make_class_folder(tmp_path / "train", per_class=6)
    test = make_class_folder(tmp_path / "test", per_class=2, classes=("red", "purple"))
    options = ["--backbone", tiny_run_options["backbone"], "--weights", tiny_run_options["weights"]]
    code = main(["run", str(train), "--test", str(test), "--image-size", "32", "--no-progress", *options])
    assert code != 0
    assert "test set has classes the training data lacks: purple" in capsys.readouterr().err


def test_search_that_falls_far_below_the_probe_says_so() -> None:
    assert _shortfall({"accuracy": 0.27}, {"accuracy": 0.80}, "accuracy").startswith("the searched heads score far")
    assert _shortfall({"accuracy": 0.78}, {"accuracy": 0.80}, "accuracy") is None


def test_crop_pct_changes_the_preprocessing_the_cache_key_and_the_deployed_transform(
    tiny_weights: Path, class_folder: Path, tiny_run_options: dict
) -> None:
    from transferlab.backbones import load_backbone
    from transferlab.model import load_run_model

    whole = load_backbone(TINY_BACKBONE, tiny_weights, image_size=TINY_SIZE, crop_pct=1.0)
    own = load_backbone(TINY_BACKBONE, tiny_weights, image_size=TINY_SIZE)
    assert whole.data_config["crop_pct"] == 1.0 and own.data_config["crop_pct"] < 1.0
    assert whole.identity() != own.identity()  # features of another preprocessing never mix in one cache
    result = run_with(class_folder, name="whole", **tiny_run_options)  # the whole image is the default
    assert load_run_model(result.run_dir).preprocessing["crop_pct"] == 1.0
    cropped = run_with(class_folder, name="own", crop_pct=None, **tiny_run_options)
    assert load_run_model(cropped.run_dir).preprocessing["crop_pct"] == own.data_config["crop_pct"]
    with pytest.raises(TransferlabError, match="--crop-pct must be in"):
        run_with(class_folder, crop_pct=1.5, **tiny_run_options)


@pytest.mark.parametrize("multilabel", [False, True])
def test_ranking_folds_keep_each_group_in_one_fold(multilabel: bool) -> None:
    from transferlab.data.split import cv_folds

    rng = np.random.default_rng(0)
    y = (rng.random((60, 3)) < 0.5).astype(np.uint8) if multilabel else np.repeat(np.arange(3), 20)
    groups = np.asarray([f"subject{i // 4}" for i in range(60)], dtype=object)
    folds = cv_folds(y, 0, groups)
    assert len(folds) == 5
    for train, held in folds:
        assert not set(groups[train]) & set(groups[held])


def test_multilabel_twin_uses_each_labels_chosen_c() -> None:
    rng = np.random.default_rng(3)
    x = {s: rng.normal(size=(n, 5)) for s, n in (("train", 80), ("val", 30), ("test", 20))}
    y = {s: (x[s][:, :3] * [3, 1, 0.2] + rng.normal(size=(len(x[s]), 3)) > 0).astype(np.uint8) for s in x}
    probe = fit_probe(x, y, ["a", "b", "c"])
    assert [e.C for e in probe.train_model[-1].estimators_] == probe.C
    assert probe.train_model.named_steps["scale"].n_samples_seen_ == 80
    assert probe.model.named_steps["scale"].n_samples_seen_ == 110


def test_multilabel_probe_cross_validates_on_group_folds_when_every_label_allows() -> None:
    rng = np.random.default_rng(4)
    x = rng.normal(size=(90, 5))
    y = (x[:, :3] + rng.normal(size=(90, 3)) > 0).astype(np.uint8)
    groups = np.asarray([f"g{i // 3}" for i in range(90)], dtype=object)
    empty = {"val": x[:0], "test": x[:0]}
    probe = fit_probe({"train": x, **empty}, {"train": y, "val": y[:0], "test": y[:0]}, list("abc"), groups=groups)
    for search in probe.model[-1].estimators_:
        assert isinstance(search.cv, list) and len(search.cv) == 5
        assert all(not set(groups[train]) & set(groups[held]) for train, held in search.cv)
    rare = y.copy()
    rare[:, 2] = 0
    rare[:4, 2] = 1  # too few positives for every fold: per-label stratified folds instead
    probe = fit_probe({"train": x, **empty}, {"train": rare, "val": y[:0], "test": y[:0]}, list("abc"), groups=groups)
    assert not isinstance(probe.model[-1].estimators_[0].cv, list)
