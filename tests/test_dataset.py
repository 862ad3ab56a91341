"""Indexing folder trees and CSVs; seeded, stratified, nested, leak-free splits."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from conftest import DEMO, DEMO_MULTILABEL, make_class_folder

from transferlab.data import load_dataset, make_split, stratified_subset
from transferlab.errors import TransferlabError


def test_folder_tree_classes_and_problems(tmp_path: Path) -> None:
    root = make_class_folder(tmp_path / "d", per_class=3)
    (root / "empty").mkdir()
    (root / "red" / "notes.txt").write_text("x")
    dataset = load_dataset(root)
    assert dataset.classes == ["blue", "green", "red"]
    assert dataset.class_counts() == {"blue": 3, "green": 3, "red": 3}
    reasons = {p.where: p.reason for p in dataset.problems}
    assert "class dropped" in reasons["empty/"]
    assert "without an image extension" in reasons["red/"]


def test_single_class_is_a_clear_error(tmp_path: Path) -> None:
    root = make_class_folder(tmp_path / "d", per_class=3, classes=("only",))
    with pytest.raises(TransferlabError, match="2 classes"):
        load_dataset(root)


def _csv(tmp_path: Path, text: str) -> Path:
    make_class_folder(tmp_path, per_class=2)
    path = tmp_path / "labels.csv"
    path.write_text(text)
    return path


def test_csv_single_label_refuses_escaping_paths_and_reports_bad_rows(tmp_path: Path) -> None:
    (tmp_path.parent / "outside.png").write_bytes(b"")
    csv_path = _csv(
        tmp_path,
        "path,label\nred/red_000.png,warm\ngreen/green_000.png,cold\nred/red_001.png,warm\nblue/blue_000.png,cold\n"
        "../outside.png,warm\n/etc/passwd,cold\nmissing.png,warm\nred/red_000.png,cold\ngreen/green_001.png\n",
    )
    dataset = load_dataset(csv_path)
    assert dataset.classes == ["cold", "warm"]
    assert len(dataset) == 4
    reasons = " | ".join(str(p) for p in dataset.problems)
    assert reasons.count("escapes the data root") == 2
    assert "file not found" in reasons and "duplicate row" in reasons and "expected 2 columns" in reasons


def test_csv_multilabel_separator_and_onehot_agree(tmp_path: Path) -> None:
    rows = "red/red_000.png,{}\nred/red_001.png,{}\ngreen/green_000.png,{}\n"
    listed = load_dataset(_csv(tmp_path, "path,labels\n" + rows.format("a;b", "b", "a")))
    (tmp_path / "onehot.csv").write_text("path,a,b\n" + rows.format("1,1", "0,1", "1,0"))
    onehot = load_dataset(tmp_path / "onehot.csv")
    assert listed.multilabel and onehot.multilabel
    assert listed.classes == onehot.classes == ["a", "b"]
    np.testing.assert_array_equal(listed.y, onehot.y)
    np.testing.assert_array_equal(listed.y, [[1, 1], [0, 1], [1, 0]])


def test_onehot_column_with_other_values_is_a_named_row_problem(tmp_path: Path) -> None:
    csv_path = _csv(tmp_path, "path,a,b\nred/red_000.png,1,0\nred/red_001.png,0,1\ngreen/green_000.png,yes,0\n")
    problems = [str(p) for p in load_dataset(csv_path).problems]
    assert problems == ["skipped labels.csv row 4 (green/green_000.png): column 'a' must be 0 or 1, found 'yes'"]


def test_demo_sets_load() -> None:
    single, multi = load_dataset(DEMO), load_dataset(DEMO_MULTILABEL)
    assert len(single) == 800 and len(single.classes) == 10 and not single.problems
    assert len(multi) == 400 and multi.multilabel and multi.y.sum(axis=1).min() >= 1


def test_split_is_seeded_stratified_and_keeps_duplicates_together() -> None:
    y = np.repeat(np.arange(4), 50)
    hashes = [f"h{i}" for i in range(200)]
    hashes[5] = hashes[150]  # same content in two rows
    a = make_split(y, hashes, seed=3)
    assert np.array_equal(a.assignment, make_split(y, hashes, seed=3).assignment)
    assert not np.array_equal(a.assignment, make_split(y, hashes, seed=4).assignment)
    assert a.assignment[5] == a.assignment[150]
    for label in range(4):
        counts = {s: int(((a.assignment == s) & (y == label)).sum()) for s in ("train", "val", "test")}
        assert 6 <= counts["test"] <= 9 and 6 <= counts["val"] <= 9


def test_subsets_are_stratified_and_nested() -> None:
    y = np.repeat(np.arange(5), 40)
    quarter, half = set(stratified_subset(y, 0.25, 0)), set(stratified_subset(y, 0.5, 0))
    assert quarter < half
    assert np.bincount(y[list(quarter)]).tolist() == [10] * 5
    with pytest.raises(TransferlabError, match="subset"):
        stratified_subset(y, 1.5, 0)
