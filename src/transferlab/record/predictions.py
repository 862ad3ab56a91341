"""``predictions.csv``: the final model's validation and test predictions, one row per image.

Written by whichever stage produced the run's final model (probe, searched head, fine-tuned network), so the report
can show the worst errors and ROC/PR curves without re-running anything.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from transferlab.data.dataset import printable
from transferlab.record.rundir import RunDir

HEADER = ["split", "path", "true", "predicted", "confidence"]
LABEL_JOIN = ";"


def _names(classes: list[str], row: np.ndarray) -> str:
    return LABEL_JOIN.join(classes[i] for i in np.flatnonzero(row))


def prediction_rows(
    split_name: str,
    paths: list[str],
    y_true: np.ndarray,
    scores: np.ndarray,
    classes: list[str],
    thresholds: np.ndarray | None = None,
) -> list[list[str]]:
    """Rows for one split. Single-label: argmax and its probability. Multi-label: labels over their threshold and
    the mean distance of the scores from their thresholds' side (how sure the whole label set is)."""
    rows = []
    for path, truth, score in zip(paths, y_true, scores, strict=True):
        if thresholds is None:
            predicted = int(np.argmax(score))
            true_name, predicted_name, confidence = classes[int(truth)], classes[predicted], score[predicted]
        else:
            chosen = score >= thresholds
            true_name, predicted_name = _names(classes, truth), _names(classes, chosen)
            confidence = float(np.mean(np.where(chosen, score, 1 - score)))
        rows.append([split_name, printable(path), true_name, predicted_name, f"{confidence:.4f}"])
    return rows


def write_predictions(run_dir: RunDir, rows: list[list[str]]) -> Path:
    return run_dir.write_csv("predictions.csv", HEADER, rows)
