"""The bad-input corpus driven through the real ``transferlab`` command: every case is used or skipped by name.

One child-process run on a folder holding every image-level case (so tracebacks and exit codes are real), then one
assertion per case. Dataset-level mistakes (single class, CSV problems) go through ``transferlab.cli.main`` and
must end with one ``error:`` line and exit code 2 before any feature is extracted.
"""

from __future__ import annotations

import csv
import os
from pathlib import Path

import numpy as np
import pytest
from conftest import make_class_folder
from corpus import (
    CMYK_RED,
    EMPTY_CLASS,
    GRAY16_EXPECTED,
    IMAGE_CASES,
    build_bad_folder,
    good_png,
    tiny_backbone_args,
    transferlab_cli,
    unreadable_png,
)

from transferlab.cli import main
from transferlab.data import load_image
from transferlab.data.dataset import printable

CASES = {case.name: case for case in IMAGE_CASES}


@pytest.fixture(scope="module")
def bad_run(tmp_path_factory: pytest.TempPathFactory, tiny_weights: Path) -> dict:
    base = tmp_path_factory.mktemp("corpus")
    data = build_bad_folder(base / "data")
    result = transferlab_cli("run", data, *tiny_backbone_args(tiny_weights, base / "cache", base / "runs"))
    run_dir = base / "runs" / "run"
    with open(run_dir / "split.csv", encoding="utf-8") as handle:
        used = {row["path"] for row in csv.DictReader(handle)}
    return {"data": data, "result": result, "run_dir": run_dir, "used": used}


def test_corpus_run_finishes_without_traceback(bad_run: dict) -> None:
    result = bad_run["result"]
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stdout + result.stderr
    skipped = sum(case.reason is not None for case in IMAGE_CASES)
    assert f"{skipped + 3} input(s) skipped" in result.stdout  # + empty class, its notes.txt, the loop's partner


@pytest.mark.parametrize("name", sorted(CASES))
def test_each_case_is_used_or_skipped_with_its_reason(bad_run: dict, name: str) -> None:
    case = CASES[name]
    shown = printable(case.relative)
    skip_lines = [line for line in bad_run["result"].stdout.splitlines() if line.startswith(f"skipped {shown}:")]
    if case.reason is None:
        assert not skip_lines
        if not case.relative.endswith("again"):  # the directory loop is simply not followed
            assert shown in bad_run["used"]
    else:
        assert len(skip_lines) == 1 and case.reason in skip_lines[0], skip_lines
        assert shown not in bad_run["used"]
        assert skip_lines[0] in (bad_run["run_dir"] / "problems.txt").read_text(encoding="utf-8")


def test_class_folder_without_images_is_dropped_by_name(bad_run: dict) -> None:
    assert f"skipped {EMPTY_CLASS}/: class folder has no images; class dropped" in bad_run["result"].stdout
    record = (bad_run["run_dir"] / "record.json").read_text(encoding="utf-8")
    assert EMPTY_CLASS not in record


def test_directory_symlink_loop_is_not_followed(bad_run: dict) -> None:
    assert not any("/again/" in path for path in bad_run["used"])
    assert sum(path.startswith("green/") for path in bad_run["used"]) == 10 + 2  # good + palette + non-UTF-8 name


def test_unusual_modes_decode_to_the_right_pixels(bad_run: dict) -> None:
    data = bad_run["data"]
    gray = np.asarray(load_image(data / CASES["gray16_png"].relative))[0, ::6, 0]
    assert tuple(gray) == GRAY16_EXPECTED  # scaled by 1/257, not clipped to white
    rotated = load_image(data / CASES["exif_rotated_jpeg"].relative)
    assert rotated.size == (16, 32)  # stored 32×16, EXIF orientation 6 applied
    assert np.asarray(rotated)[:, 12:].mean() > 200 and np.asarray(rotated)[:, :4].mean() < 50
    cmyk = np.asarray(load_image(data / CASES["cmyk_jpeg"].relative)).reshape(-1, 3).mean(axis=0)
    assert CMYK_RED == (0, 255, 255, 0) and cmyk[0] > 240 and cmyk[1:].max() < 15
    rgba = np.asarray(load_image(data / CASES["rgba_png"].relative))
    assert tuple(rgba[0, 0]) == (0, 0, 255) and tuple(rgba[0, -1]) == (255, 255, 255)
    palette = np.asarray(load_image(data / CASES["palette_png"].relative))
    assert tuple(palette[0, 0]) == (255, 255, 255) and tuple(palette[0, -1]) == (0, 255, 0)
    assert load_image(data / CASES["one_pixel"].relative).size == (1, 1)


def _ok(capsys: pytest.CaptureFixture, argv: list[str]) -> str:
    """Run the CLI in-process; it must succeed; its stdout is returned."""
    code = main(argv)
    captured = capsys.readouterr()
    assert code == 0, captured.err
    return captured.out


def _error(capsys: pytest.CaptureFixture, argv: list[str]) -> tuple[str, str]:
    """Run the CLI in-process; it must fail with exit code 2 and exactly one ``error:`` line (returned, with stdout)."""
    code = main(argv)
    captured = capsys.readouterr()
    assert code == 2
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), captured.err
    return lines[0], captured.out


def test_single_class_dataset_is_refused_before_extraction(tmp_path: Path, tiny_weights, capsys) -> None:
    data = make_class_folder(tmp_path / "data", per_class=4, classes=("only",))
    message, _ = _error(capsys, ["run", str(data), *tiny_backbone_args(tiny_weights, tmp_path / "cache", tmp_path)])
    assert "at least 2 classes" in message and "only" in message
    assert not (tmp_path / "cache").exists()


def test_folder_without_images_is_refused(tmp_path: Path, tiny_weights, capsys) -> None:
    (tmp_path / "data" / "a").mkdir(parents=True)
    (tmp_path / "data" / "a" / "readme.txt").write_text("x")
    argv = ["run", str(tmp_path / "data"), *tiny_backbone_args(tiny_weights, tmp_path / "cache", tmp_path)]
    message, _ = _error(capsys, argv)
    assert "no images found" in message


def test_every_image_of_a_class_broken_leaves_a_clear_error(tmp_path: Path, tiny_weights, capsys) -> None:
    data = make_class_folder(tmp_path / "data", per_class=3, classes=("good", "bad"))
    for path in (data / "bad").iterdir():
        path.write_bytes(b"not a png")
    message, out = _error(capsys, ["run", str(data), *tiny_backbone_args(tiny_weights, tmp_path / "cache", tmp_path)])
    assert "fewer than 2 classes remain" in message
    assert "skipped bad/bad_000.png: not an image (format not recognised)" in out


def test_class_with_one_image_trains_and_is_never_tested(tmp_path: Path, tiny_weights, capsys) -> None:
    data = make_class_folder(tmp_path / "data", per_class=8)
    (data / "lonely").mkdir()
    good_png(data / "lonely" / "only.png", (200, 200, 0))
    _ok(capsys, ["run", str(data), *tiny_backbone_args(tiny_weights, tmp_path / "cache", tmp_path / "runs")])
    with open(tmp_path / "runs" / "run" / "split.csv", encoding="utf-8") as handle:
        splits = {row["path"]: row["split"] for row in csv.DictReader(handle)}
    assert splits["lonely/only.png"] == "train"


def _write_csv(path: Path, rows: list[list[str]]) -> Path:
    with open(path, "w", newline="", encoding="utf-8") as handle:
        csv.writer(handle).writerows(rows)
    return path


def test_csv_row_problems_are_skipped_by_name(tmp_path: Path, tiny_weights: Path, capsys) -> None:
    data = make_class_folder(tmp_path / "data", per_class=6, classes=("cat", "dog"))
    good_png(data / "dog" / "extra.png")
    (tmp_path / "secret.png").write_bytes((data / "cat" / "cat_000.png").read_bytes())
    os.symlink(tmp_path / "secret.png", data / "link.png")
    rows = [["path", "label"]]
    rows += [[f"{label}/{label}_{i:03d}.png", label] for label in ("cat", "dog") for i in range(6)]
    bad_rows = {
        "missing/nowhere.png": ("cat", "file not found"),
        "../secret.png": ("cat", "path escapes the data root"),
        str(tmp_path / "secret.png"): ("cat", "path escapes the data root"),
        "link.png": ("dog", "path escapes the data root"),
        "cat/cat_001.png": ("dog", "duplicate row for the same path; first one kept"),
        "dog/extra.png": ("", "empty label"),
    }
    rows += [[path, label] for path, (label, _) in bad_rows.items()] + [["", "cat"]]
    labels = _write_csv(data / "labels.csv", rows)
    out = _ok(capsys, ["run", str(labels), *tiny_backbone_args(tiny_weights, tmp_path / "cache", tmp_path / "runs")])
    lines = out.splitlines()
    for number, (path, (_, reason)) in enumerate(bad_rows.items(), start=14):
        prefix = f"skipped labels.csv row {number} ({path}): "
        assert any(line.startswith(prefix) and reason in line for line in lines), prefix
    used = (tmp_path / "runs" / "run" / "split.csv").read_text()
    assert "secret" not in used and "link.png" not in used and "nowhere" not in used
    assert used.count("cat/cat_001.png") == 1


def test_onehot_csv_with_unknown_label_values_skips_the_row(tmp_path: Path, tiny_weights: Path, capsys) -> None:
    data = make_class_folder(tmp_path / "data", per_class=10, classes=("cat", "dog"))
    rows = [["path", "cat", "dog"]]
    rows += [
        [f"{label}/{label}_{i:03d}.png", str(int(label == "cat")), str(int(label == "dog"))]
        for label in ("cat", "dog")
        for i in range(10)
    ]
    rows[3][2] = "maybe"
    labels = _write_csv(data / "labels.csv", rows)
    out = _ok(capsys, ["run", str(labels), *tiny_backbone_args(tiny_weights, tmp_path / "cache", tmp_path / "runs")])
    assert "skipped labels.csv row 4 (cat/cat_002.png): column 'dog' must be 0 or 1, found 'maybe'" in out


def test_same_content_in_several_files_lands_in_one_split(tmp_path: Path, tiny_weights: Path, capsys) -> None:
    data = make_class_folder(tmp_path / "data", per_class=10)
    original = (data / "red" / "red_000.png").read_bytes()
    for copy in range(8):
        (data / "red" / f"copy_{copy}.png").write_bytes(original)
    _ok(capsys, ["run", str(data), *tiny_backbone_args(tiny_weights, tmp_path / "cache", tmp_path / "runs")])
    with open(tmp_path / "runs" / "run" / "split.csv", encoding="utf-8") as handle:
        rows = [row for row in csv.DictReader(handle) if "red_000" in row["path"] or "copy_" in row["path"]]
    assert len(rows) == 9 and len({row["split"] for row in rows}) == 1
    assert main(["info", str(data)]) == 0
    assert "1 group(s) of identical files" in capsys.readouterr().out


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores file permissions: chmod 000 cannot make a file unreadable")
def test_unreadable_file_is_skipped_with_permission_denied(tmp_path: Path, tiny_weights: Path) -> None:
    data = make_class_folder(tmp_path / "data", per_class=6)
    unreadable_png(data / "red" / "locked.png")
    result = transferlab_cli("run", data, *tiny_backbone_args(tiny_weights, tmp_path / "cache", tmp_path / "runs"))
    assert result.returncode == 0, result.stderr
    assert "skipped red/locked.png: unreadable (Permission denied)" in result.stdout


def test_info_lists_every_bad_file_without_a_traceback(bad_run: dict, capsys) -> None:
    assert main(["info", str(bad_run["data"])]) == 0
    out = capsys.readouterr().out
    for case in IMAGE_CASES:
        if case.reason is not None:
            assert f"skipped {printable(case.relative)}: {case.reason}" in out, case.name


def test_tiny_dataset_with_an_empty_val_split_still_finishes(tmp_path: Path, tiny_weights: Path, capsys) -> None:
    data = make_class_folder(tmp_path / "data", per_class=5)  # positions 0.1, 0.3, ...: no image lands in val
    _ok(capsys, ["run", str(data), *tiny_backbone_args(tiny_weights, tmp_path / "cache", tmp_path / "runs")])


def test_multilabel_split_with_undefined_metric_still_prints_a_summary(tmp_path: Path, tiny_weights: Path, capsys):
    data = make_class_folder(tmp_path / "data", per_class=6, classes=("cat", "dog"))
    rows = [["path", "cat", "dog"]]
    rows += [[f"{label}/{label}_{i:03d}.png", str(int(label == "cat")), str(int(label == "dog"))]
             for label in ("cat", "dog") for i in range(6)]  # fmt: skip
    rows[3][2] = "maybe"  # one row skipped: the val split is left without a positive of one label
    labels = _write_csv(data / "labels.csv", rows)
    _ok(capsys, ["run", str(labels), *tiny_backbone_args(tiny_weights, tmp_path / "cache", tmp_path / "runs")])


def test_finetune_and_search_skip_the_same_bad_files(bad_run: dict, tiny_weights: Path, tmp_path: Path, capsys) -> None:
    quick = {
        "finetune": ["--head-epochs", "1", "--epochs", "1", "--augment", "none"],
        "search": ["--trials", "1"],
    }
    for command, extra in quick.items():
        argv = [command, str(bad_run["data"]), *extra, *tiny_backbone_args(tiny_weights, tmp_path, tmp_path, command)]
        assert main(argv) == 0, capsys.readouterr().err
        out = capsys.readouterr().out
        for case in IMAGE_CASES:
            if case.reason is not None:
                assert f"skipped {printable(case.relative)}: {case.reason}" in out, (command, case.name)
