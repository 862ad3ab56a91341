"""``transferlab evaluate RUN DATA`` and :func:`transferlab.evaluate.evaluate`: a model scored on labelled data."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import TINY_BACKBONE, TINY_SIZE, make_class_folder, run_with
from PIL import Image

from transferlab.cli import main
from transferlab.errors import TransferlabError
from transferlab.evaluate import evaluate
from transferlab.metrics import classification_metrics
from transferlab.predict import load_predictor, predict_paths
from transferlab.record import layout

COLOURS = ("red", "green", "blue")


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("evaluate")


def _options(workdir: Path, tiny_weights: Path) -> dict:
    return {
        "backbone": TINY_BACKBONE,
        "weights": str(tiny_weights),
        "image_size": TINY_SIZE,
        "workers": 0,
        "runs_dir": workdir / "runs",
        "cache_dir": workdir / "cache",
        "progress": False,
    }


@pytest.fixture(scope="module")
def run_dir(workdir: Path, tiny_weights: Path) -> Path:
    """One probe-only run on the colour folder, shared by the tests that only read it."""
    return run_with(make_class_folder(workdir / "train"), name="colours", **_options(workdir, tiny_weights)).run_dir


@pytest.fixture
def holdout(tmp_path: Path) -> Path:
    """New images of two of the run's three classes, plus two green images filed as red (sure mistakes)."""
    folder = make_class_folder(tmp_path / "holdout", per_class=4, classes=("red", "green"), seed=5)
    for index, source in enumerate(sorted((folder / "green").glob("*.png"))[:2]):
        shutil.copy(source, folder / "red" / f"mislabelled_{index}.png")
    return folder


def _truth(folder: Path, paths: list[Path], classes: list[str]) -> np.ndarray:
    return np.asarray([classes.index(path.relative_to(folder).parts[0]) for path in paths])


def test_metrics_are_classification_metrics_of_the_predictor_scores(run_dir: Path, holdout: Path) -> None:
    evaluation = evaluate(run_dir, holdout)
    predictor = load_predictor(run_dir)
    files = sorted(holdout.rglob("*.png"))
    own = predict_paths(predictor, files)
    expected = classification_metrics(_truth(holdout, own.paths, predictor.classes), own.scores, predictor.classes)
    assert evaluation.metrics == expected
    assert sorted(evaluation.paths) == sorted(own.paths) and len(evaluation.paths) == 10
    assert np.asarray(evaluation.metrics["confusion_matrix"]).sum() == len(files)
    assert evaluation.classes == ["blue", "green", "red"] and evaluation.missing_classes == ["blue"]
    assert evaluation.headline == ("accuracy", evaluation.metrics["accuracy"])

    worst = evaluation.worst(5)
    assert {Path(error["path"]).name for error in worst} >= {"mislabelled_0.png", "mislabelled_1.png"}
    assert all(error["true"] != error["predicted"] for error in worst)
    confidences = [error["confidence"] for error in worst]
    assert confidences == sorted(confidences, reverse=True)
    assert worst[0].keys() == {"path", "true", "predicted", "confidence"}


def test_cli_prints_the_tables_and_writes_page_json_and_predictions(
    run_dir: Path, holdout: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (holdout / "red" / "broken.png").write_bytes(b"not an image")  # decodes to nothing
    (holdout / "green" / "truncated.jpg").write_bytes(b"\xff\xd8\xff\xe0" + bytes(20))
    (holdout / "green" / "notes.txt").write_text("no image extension")
    assert main(["evaluate", str(run_dir), str(holdout), "--worst", "3"]) == 0
    captured = capsys.readouterr()
    assert "broken.png" in captured.err and "truncated.jpg" in captured.err
    assert "without an image extension ignored" in captured.err
    assert "Traceback" not in captured.err
    out = captured.out
    for piece in ("accuracy", "balanced_accuracy", "macro_f1", "confusion matrix", "per class", "worst errors"):
        assert piece in out
    assert "mislabelled_" in out and "not in the data: blue" in out

    folder = run_dir / layout.EVALUATIONS / "holdout"
    page = (folder / layout.EVALUATION_PAGE).read_text(encoding="utf-8")
    for section in ('id="metrics"', 'id="confusion"', 'id="per-class"', 'id="worst"', 'id="problems"'):
        assert section in page
    assert "broken.png" in page and "data:image/png;base64," in page
    record = json.loads((folder / layout.EVALUATION_METRICS).read_text(encoding="utf-8"))
    assert record["n_scored"] == 10 and record["task"] == "single-label"
    assert np.asarray(record["metrics"]["confusion_matrix"]).sum() == 10
    assert len(record["worst"]) == 2 and any("broken.png" in line for line in record["skipped"])
    with open(folder / layout.EVALUATION_PREDICTIONS, newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 10 and {"path", "true", "predicted", "confidence", "p:red"} <= rows[0].keys()
    assert np.mean([row["true"] == row["predicted"] for row in rows]) == pytest.approx(record["metrics"]["accuracy"])
    assert not list(folder.glob(".*.tmp"))  # atomic writes leave no temporaries behind


def test_a_class_unknown_to_the_model_stops_unless_skipped(
    run_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = make_class_folder(tmp_path / "unknown", per_class=2, classes=("red", "purple", "green"), seed=3)
    with pytest.raises(TransferlabError, match=r"classes the model does not know: purple \(2 images\)"):
        evaluate(run_dir, data)
    assert main(["evaluate", str(run_dir), str(data)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "purple" in err and "--skip-unknown" in err and len(err.splitlines()) == 1

    evaluation = evaluate(run_dir, data, skip_unknown=True)
    assert len(evaluation.paths) == 4 and all("purple" not in path.name for path in evaluation.paths)
    assert [str(problem) for problem in evaluation.problems] == [
        "skipped 2 images of class 'purple': the model does not know this class"
    ]
    assert np.asarray(evaluation.metrics["confusion_matrix"]).sum() == 4


def test_user_mistakes_are_one_line_errors(
    run_dir: Path, holdout: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    table = tmp_path / "multi.csv"
    table.write_text(
        "path,labels\n" + "".join(f"{p.relative_to(tmp_path)},red;green\n" for p in holdout.rglob("*.png"))
    )
    cases = [
        ([str(tmp_path / "no-such-run"), str(holdout)], "no run"),
        (["no-such-run", str(holdout), "--runs-dir", str(tmp_path)], "no run 'no-such-run'"),
        ([str(run_dir), str(tmp_path / "no-such-data")], "data not found"),
        ([str(holdout), str(holdout)], "neither a run with a model"),
        ([str(run_dir), str(table)], "the model is single-label but the data is multi-label"),
    ]
    for args, message in cases:
        assert main(["evaluate", *args]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("error:") and message in err and len(err.splitlines()) == 1, (args, err)
    assert not (run_dir / layout.EVALUATIONS / "no-such-data").exists()


def _mosaics(folder: Path, count: int, seed: int) -> list[tuple[str, list[str]]]:
    """Images made of up to three colour stripes; the labels are the colours present."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for index in range(count):
        present = [c for c in range(3) if rng.random() < 0.5] or [int(rng.integers(3))]
        pixels = rng.integers(0, 60, size=(24, 24, 3))
        for stripe, colour in enumerate(present):
            pixels[:, stripe * 8 : stripe * 8 + 8, colour] += 180
        name = f"m_{index:03d}.png"
        Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(folder / name)
        rows.append((name, [COLOURS[c] for c in present]))
    return rows


def _labels_csv(path: Path, rows: list[tuple[str, list[str]]]) -> Path:
    path.write_text("path,labels\n" + "".join(f"images/{name},{';'.join(labels)}\n" for name, labels in rows))
    return path


def test_multilabel_csv_scores_map_and_per_label_ap(workdir: Path, tiny_weights: Path, tmp_path: Path) -> None:
    train = _labels_csv(workdir / "ml-train.csv", _mosaics(workdir / "images", 60, seed=1))
    run = run_with(train, name="stripes", **_options(workdir, tiny_weights)).run_dir
    rows = _mosaics(tmp_path / "images", 16, seed=2)
    rows[0] = (rows[0][0], [*rows[0][1], "zebra"])  # a label the model never saw
    data = _labels_csv(tmp_path / "stripes-holdout.csv", rows)
    with pytest.raises(TransferlabError, match="classes the model does not know: zebra"):
        evaluate(run, data)

    evaluation = evaluate(run, data, skip_unknown=True)
    assert evaluation.multilabel and len(evaluation.paths) == 16
    assert [str(problem) for problem in evaluation.problems] == [
        "skipped label 'zebra' on 1 image: the model does not know this label; ignored"
    ]
    predictor = load_predictor(run)
    expected = classification_metrics(evaluation.y_true, evaluation.scores, predictor.classes, predictor.thresholds)
    assert evaluation.metrics == expected and evaluation.headline[0] == "mAP"
    truth = {name: labels for name, labels in rows}
    for path, row in zip(evaluation.paths, evaluation.y_true, strict=True):
        assert {predictor.classes[i] for i in np.flatnonzero(row)} == set(truth[path.name]) - {"zebra"}
    ap = [value for value in evaluation.label_ap().values() if value is not None]
    assert np.mean(ap) == pytest.approx(evaluation.metrics["mAP"])

    page = evaluation.write(worst=4)
    assert page == run / layout.EVALUATIONS / "stripes-holdout" / layout.EVALUATION_PAGE
    html = page.read_text(encoding="utf-8")
    assert 'id="roc-pr"' in html and 'id="confusion"' not in html and "<th>AP</th>" in html
    record = json.loads((page.parent / layout.EVALUATION_METRICS).read_text(encoding="utf-8"))
    assert record["task"] == "multi-label" and record["headline"] == {"mAP": evaluation.metrics["mAP"]}
