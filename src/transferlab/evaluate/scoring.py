"""Score a finished model on any labelled data set: the data's labels mapped onto the model's classes by name.

The metrics are :func:`transferlab.metrics.classification_metrics` on the predictor's own scores, so a number here
means what the same number means in a run's report. Labels are matched by name, never by position: a data set with
fewer classes (or in another order) is fine; a class the model has never heard of stops the evaluation unless the
caller asks to leave it out, because silently dropping images would change what the numbers mean.
"""

from __future__ import annotations

import logging
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from transferlab.data import ImageDataset, Problem, load_dataset
from transferlab.data.dataset import printable
from transferlab.errors import TransferlabError
from transferlab.fileio import read_json
from transferlab.metrics import classification_metrics, headline
from transferlab.predict import Predictor, load_predictor, predict_paths
from transferlab.record import layout
from transferlab.record.predictions import LABEL_JOIN
from transferlab.record.runfiles import resolve_model

log = logging.getLogger(__name__)

SKIP_HINT = "--skip-unknown (Python: skip_unknown=True) leaves them out"


@dataclass
class Evaluation:
    """One model scored on one data set: per-image scores with truths (model class ids), the metrics, what was
    skipped and why. ``y_true`` is (N,) class ids or an (N, C) 0/1 matrix over the model's classes."""

    model: Path
    source: str
    data: str
    name: str
    classes: list[str]
    multilabel: bool
    thresholds: np.ndarray | None
    paths: list[Path]
    y_true: np.ndarray
    scores: np.ndarray
    predicted: list[str]
    confidence: np.ndarray
    metrics: dict[str, Any]
    problems: list[Problem] = field(default_factory=list)
    missing_classes: list[str] = field(default_factory=list)

    @property
    def headline(self) -> tuple[str, float]:
        """(name, value): accuracy, or mAP for multi-label, as runs are compared by."""
        return headline(self.metrics)

    @property
    def truths(self) -> list[str]:
        """True label per scored image, written as predictions are (multi-label: ';'-joined)."""
        if not self.multilabel:
            return [self.classes[int(i)] for i in self.y_true]
        return [LABEL_JOIN.join(self.classes[i] for i in np.flatnonzero(row)) for row in self.y_true]

    def cutoffs(self) -> np.ndarray:
        """Multi-label decision thresholds: the run's tuned ones, else 0.5 (the rule of ``classification_metrics``)."""
        return self.thresholds if self.thresholds is not None else np.full(len(self.classes), 0.5)

    def wrong(self) -> np.ndarray:
        """Per image: is the decision wrong (another class; multi-label: any label on the wrong side)?"""
        if not self.multilabel:
            return self.scores.argmax(axis=1) != self.y_true
        return ((self.scores >= self.cutoffs()) != self.y_true.astype(bool)).any(axis=1)

    def worst(self, count: int = 10) -> list[dict[str, Any]]:
        """The ``count`` most confident wrong predictions: path, true, predicted, confidence."""
        wrong = np.flatnonzero(self.wrong())
        order = wrong[np.argsort(-self.confidence[wrong], kind="stable")][:count]
        truths = self.truths
        return [
            {
                "path": str(self.paths[i]),
                "true": truths[i],
                "predicted": self.predicted[i],
                "confidence": float(self.confidence[i]),
            }
            for i in order
        ]

    def label_ap(self) -> dict[str, float | None]:
        """Multi-label: average precision per label, from the metrics (``None`` where a label is all 0 or all 1
        here, as mAP leaves those out; the mean of the others is that mAP)."""
        if not self.multilabel:
            return {}
        return {row["class"]: row["ap"] for row in self.metrics["per_class"]}

    def to_dict(self, worst: int = 10) -> dict[str, Any]:
        """The JSON record of the evaluation (``evaluation.json``)."""
        return {
            "model": str(self.model),
            "source": self.source,
            "data": self.data,
            "name": self.name,
            "task": "multi-label" if self.multilabel else "single-label",
            "classes": self.classes,
            "missing_classes": self.missing_classes,
            "n_scored": len(self.paths),
            "headline": dict([self.headline]),
            "metrics": self.metrics,
            "label_ap": self.label_ap() if self.multilabel else None,
            "worst": [{**error, "path": printable(error["path"])} for error in self.worst(worst)],
            "skipped": [str(problem) for problem in self.problems],
        }

    def write(self, folder: str | Path | None = None, *, worst: int = 10) -> Path:
        """Write page, JSON and predictions CSV (default ``<model>/evaluations/<name>/``); returns the HTML path."""
        from transferlab.evaluate.page import write_evaluation

        return write_evaluation(self, folder, worst=worst)


def data_name(data: str | Path) -> str:
    """A folder name for an evaluation: the data folder's name or the CSV's stem, safe on every file system."""
    path = Path(data)
    return safe_name(path.resolve().name if path.is_dir() else path.stem)


def safe_name(name: str) -> str:
    """One path component (no separators, no ``..``), so ``--name`` cannot write outside ``evaluations/``."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._") or "data"


def _run_label_sep(model: Path) -> str | None:
    """The label separator the run was trained with, so its CSVs read the same way here."""
    config = model / layout.CONFIG
    return read_json(config).get("label_sep") if config.is_file() else None


def _names(names: list[str], limit: int = 20) -> str:
    more = f" (+{len(names) - limit} more)" if len(names) > limit else ""
    return ", ".join(names[:limit]) + more


def _plural(count: int, word: str) -> str:
    return f"{count} {word}{'' if count == 1 else 's'}"


def align_labels(
    dataset: ImageDataset, predictor: Predictor, data: str, *, skip_unknown: bool = False
) -> tuple[list[int], np.ndarray, list[Problem]]:
    """(rows of ``dataset`` to score, their truths in the model's class ids, what was left out).

    A class with images in ``data`` that the model does not know is an error naming every such class, unless
    ``skip_unknown``: then its images are left out (single-label) or the unknown labels ignored (multi-label,
    whose other labels are still valid truths). Model classes absent from ``data`` are fine.
    """
    if dataset.multilabel != predictor.multilabel:
        task = "multi-label" if predictor.multilabel else "single-label"
        other = "multi-label (a 'labels' or 0/1 columns CSV)" if dataset.multilabel else "single-label"
        raise TransferlabError(f"{data}: the model is {task} but the data is {other}")
    unknown = dataset.unknown_classes(predictor.classes)
    if unknown and not skip_unknown:
        listed = ", ".join(f"{name} ({_plural(count, 'image')})" for name, count in unknown.items())
        raise TransferlabError(
            f"{data}: classes the model does not know: {listed}; the model knows {_names(predictor.classes)}; "
            f"{SKIP_HINT}"
        )
    mapped = dataset.labels_in(predictor.classes)
    if dataset.multilabel:
        problems = [
            Problem(f"label '{name}' on {_plural(count, 'image')}", "the model does not know this label; ignored")
            for name, count in unknown.items()
        ]
        return list(range(len(dataset))), mapped, problems
    rows = [int(row) for row in np.flatnonzero(mapped >= 0)]
    problems = [
        Problem(f"{_plural(count, 'image')} of class '{name}'", "the model does not know this class")
        for name, count in unknown.items()
    ]
    return rows, mapped[rows], problems


def evaluate_dataset(
    predictor: Predictor,
    dataset: ImageDataset,
    *,
    data: str,
    model: Path,
    name: str | None = None,
    skip_unknown: bool = False,
    batch_size: int | None = None,
    workers: int = 0,
) -> Evaluation:
    """Score an indexed data set with a loaded predictor (what :func:`evaluate` and ``ImageClassifier.score`` share)."""
    rows, y_true, left_out = align_labels(dataset, predictor, data, skip_unknown=skip_unknown)
    files = [dataset.absolute(row) for row in rows]
    log.info("evaluating %s on %s image(s) of %s", predictor.source, len(files), data)
    predictions = predict_paths(predictor, files, batch_size=batch_size, workers=workers)
    problems = [*dataset.problems, *left_out, *predictions.skipped]
    if not predictions.paths:
        reasons = "; ".join(str(problem) for problem in problems[:3]) or "no image of a class the model knows"
        raise TransferlabError(f"{data}: no image could be scored ({reasons})")
    position = {path: index for index, path in enumerate(files)}
    y_true = y_true[[position[path] for path in predictions.paths]]
    with warnings.catch_warnings():  # data with fewer classes than the model is expected here, not a problem
        for message in ("y_pred contains classes not in y_true", "A single label was found"):
            warnings.filterwarnings("ignore", message=message, category=UserWarning)
        metrics = classification_metrics(y_true, predictions.scores, predictor.classes, predictor.thresholds)
    present = set(dataset.classes)
    return Evaluation(
        model=model,
        source=predictor.source,
        data=data,
        name=safe_name(name) if name else data_name(data),
        classes=predictor.classes,
        multilabel=predictor.multilabel,
        thresholds=predictor.thresholds,
        paths=predictions.paths,
        y_true=y_true,
        scores=predictions.scores,
        predicted=predictions.labels,
        confidence=predictions.confidence,
        metrics=metrics,
        problems=problems,
        missing_classes=[name for name in predictor.classes if name not in present],
    )


def evaluate(
    run: str | Path,
    data: str | Path,
    *,
    runs_dir: str | Path = "runs",
    name: str | None = None,
    label_sep: str | None = None,
    skip_unknown: bool = False,
    batch_size: int | None = None,
    workers: int = 0,
    device: str = "auto",
) -> Evaluation:
    """Score a run's final model (or an ONNX export directory) on a labelled folder tree or CSV.

    Nothing is written; ``Evaluation.write()`` writes the page, JSON and predictions. Unreadable images and bad
    CSV rows are skipped and listed in ``Evaluation.problems``; ``label_sep`` defaults to the run's own.
    """
    model = resolve_model(run, runs_dir)
    separator = label_sep if label_sep is not None else _run_label_sep(model)
    dataset = load_dataset(data, label_sep=separator)
    predictor = load_predictor(model, device=device)
    return evaluate_dataset(
        predictor,
        dataset,
        data=str(data),
        model=model,
        name=name,
        skip_unknown=skip_unknown,
        batch_size=batch_size,
        workers=workers,
    )
