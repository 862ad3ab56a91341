"""scripts/make_quality_suite.py: layout, counts and train/test disjointness of the cheap datasets (no network)."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

pytest.importorskip("sklearn", reason="scikit-learn (load_digits) is not installed")
pytest.importorskip("skimage", reason="scikit-image (texture images) is not installed")


def _suite():
    spec = importlib.util.spec_from_file_location("make_quality_suite", ROOT / "scripts" / "make_quality_suite.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def _digests(folder: Path) -> dict[str, list[str]]:
    """Content hash → files, over every PNG below ``folder``."""
    found: dict[str, list[str]] = {}
    for path in sorted(folder.rglob("*.png")):
        found.setdefault(hashlib.sha256(path.read_bytes()).hexdigest(), []).append(str(path))
    return found


def test_cheap_datasets_layout_counts_and_no_leak(tmp_path, capsys):
    suite = _suite()
    infos = suite.main(["--only", "sklearn_digits,textures", "--out", str(tmp_path), "--cache", str(tmp_path / "c")])
    printed = capsys.readouterr().out
    assert [info.name for info in infos] == ["sklearn_digits", "textures"]
    assert "sklearn_digits" in printed and "textures" in printed
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sklearn_digits", "textures"]  # no NAME.tmp left, no cache

    expected = {"sklearn_digits": (10, 40, 30, (32, 32)), "textures": (3, 128, 100, (16, 16))}
    for info in infos:
        classes, per_train, per_test, size = expected[info.name]
        root = tmp_path / info.name
        assert json.loads((root / "suite.json").read_text())["n_test"] == info.n_test
        for split, per_class in (("train", per_train), ("test", per_test)):
            folders = sorted(p for p in (root / split).iterdir() if p.is_dir())
            assert [p.name for p in folders] == sorted(info.classes)
            assert len(folders) == classes
            for folder in folders:  # class-balanced, PNG only
                files = list(folder.iterdir())
                assert len(files) == per_class and all(f.suffix == ".png" for f in files)
        assert (info.n_train, info.n_test) == (classes * per_train, classes * per_test)
        assert info.n_test >= 300
        from PIL import Image

        with Image.open(next((root / "test").rglob("*.png"))) as image:
            assert image.size == size

        train, test = _digests(root / "train"), _digests(root / "test")
        assert not set(train) & set(test), f"{info.name}: identical images in train and test"
        assert all(len(paths) == 1 for paths in train.values()), f"{info.name}: duplicate training images"

    # Idempotent: a complete folder is skipped; one without its marker (an interrupted build) is rebuilt, and the
    # seeded rebuild writes the same files.
    before = _digests(tmp_path / "textures")
    again = suite.main(["--only", "textures", "--out", str(tmp_path), "--cache", str(tmp_path / "c")])
    assert "already built" in capsys.readouterr().out
    assert _digests(tmp_path / "textures") == before and again[0].seconds == infos[1].seconds
    digits = _digests(tmp_path / "sklearn_digits")
    (tmp_path / "sklearn_digits" / "suite.json").unlink()
    suite.main(["--only", "sklearn_digits", "--out", str(tmp_path), "--cache", str(tmp_path / "c")])
    assert "already built" not in capsys.readouterr().out
    assert _digests(tmp_path / "sklearn_digits") == digits


def test_multilabel_csv_layout(tmp_path, monkeypatch):
    """The mosaic writer's CSV: path,labels with ';'-joined labels and paths relative to the CSV's folder."""
    import numpy as np

    suite = _suite()
    rng = np.random.default_rng(0)
    images = rng.integers(0, 255, (40, 28, 28), dtype=np.uint8)
    labels = np.arange(40) % 10
    items = suite.mosaics(images, labels, 6, rng)
    suite.write_csv(tmp_path, "test", items)
    lines = (tmp_path / "test.csv").read_text().splitlines()
    assert lines[0] == "path,labels" and len(lines) == 7
    for line, (names, canvas) in zip(lines[1:], items, strict=True):
        path, cell = line.split(",")
        assert (tmp_path / path).is_file() and canvas.shape == (56, 56)
        assert cell.split(";") == sorted(names) and 1 <= len(names) <= 3 and len(set(names)) == len(names)
