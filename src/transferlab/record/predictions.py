"""``predictions.csv``: the final model's validation and test predictions, one row per image.

Written by whichever stage produced the run's final model (probe, searched head, fine-tuned network), so the report
can show the worst errors and ROC/PR curves without re-running anything. ``transferlab predict`` shares the
decision rule (:func:`decide`), so a run's own predictions and later ones agree.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from transferlab.data.dataset import printable
from transferlab.record import layout
from transferlab.record.rundir import RunDir

LABEL_JOIN = ";"
PROBABILITY_PREFIX = "p:"  # one "p:<class>" column per class with its probability (ROC/PR curves, calibration)


def decide(scores: np.ndarray, classes: list[str], thresholds: np.ndarray | None) -> tuple[list[str], np.ndarray]:
    """Predicted label (or ';'-joined labels over their thresholds) and a confidence in [0, 1] per row.

    Single-label confidence is the top probability; multi-label confidence is the mean distance of each label's
    score from the wrong side of its threshold (1 = every label sure).
    """
    if thresholds is None:
        top = scores.argmax(axis=1)
        return [classes[i] for i in top], scores[np.arange(len(scores)), top]
    chosen = scores >= thresholds
    labels = [LABEL_JOIN.join(classes[i] for i in np.flatnonzero(row)) for row in chosen]
    return labels, np.where(chosen, scores, 1 - scores).mean(axis=1)


def header(classes: list[str]) -> list[str]:
    return ["split", "path", "true", "predicted", "confidence", *(PROBABILITY_PREFIX + name for name in classes)]


def prediction_rows(
    split_name: str,
    paths: list[str],
    y_true: np.ndarray,
    scores: np.ndarray,
    classes: list[str],
    thresholds: np.ndarray | None = None,
) -> list[list[str]]:
    """Rows for one split: true and predicted labels, confidence and every class's probability."""
    labels, confidence = decide(scores, classes, thresholds)
    if thresholds is None:
        truths = [classes[int(t)] for t in y_true]
    else:
        truths = [LABEL_JOIN.join(classes[i] for i in np.flatnonzero(row)) for row in y_true]
    return [
        [split_name, printable(path), truth, label, f"{sure:.4f}", *(f"{value:.6f}" for value in row)]
        for path, truth, label, sure, row in zip(paths, truths, labels, confidence, scores, strict=True)
    ]


def write_predictions(run_dir: RunDir, rows: list[list[str]], classes: list[str]) -> Path:
    return run_dir.write_csv(layout.PREDICTIONS, header(classes), rows)
