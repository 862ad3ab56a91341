"""Metrics for single-label (accuracy, balanced accuracy, macro-F1, confusion) and multi-label (AUC, mAP, F1) tasks."""

from __future__ import annotations

from typing import Any

import numpy as np
from sklearn.metrics import (
    accuracy_score,
    average_precision_score,
    balanced_accuracy_score,
    confusion_matrix,
    f1_score,
    precision_recall_fscore_support,
    roc_auc_score,
)


def tune_thresholds(y_true: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """Per-label decision threshold maximizing F1 on (validation) data; 0.5 where a label has no positives."""
    thresholds = np.full(y_true.shape[1], 0.5)
    candidates = np.linspace(0.05, 0.95, 19)
    for label in range(y_true.shape[1]):
        if y_true[:, label].sum() == 0:
            continue
        f1s = [f1_score(y_true[:, label], scores[:, label] >= t, zero_division=0) for t in candidates]
        thresholds[label] = candidates[int(np.argmax(f1s))]
    return thresholds


def _per_class(y_true: np.ndarray, y_pred: np.ndarray, classes: list[str], labels: Any = None) -> list[dict[str, Any]]:
    precision, recall, f1, support = precision_recall_fscore_support(y_true, y_pred, labels=labels, zero_division=0)
    return [
        {"class": name, "precision": float(p), "recall": float(r), "f1": float(f), "support": int(s)}
        for name, p, r, f, s in zip(classes, precision, recall, f1, support, strict=True)
    ]


def classification_metrics(
    y_true: np.ndarray, scores: np.ndarray, classes: list[str], thresholds: np.ndarray | None = None
) -> dict[str, Any]:
    """All metrics for one split; ``scores`` are class probabilities (softmax or per-label sigmoid)."""
    if y_true.ndim == 1:
        y_pred = scores.argmax(axis=1)
        labels = np.arange(len(classes))
        return {
            "n": len(y_true),
            "accuracy": float(accuracy_score(y_true, y_pred)),
            "balanced_accuracy": float(balanced_accuracy_score(y_true, y_pred)),
            "macro_f1": float(f1_score(y_true, y_pred, labels=labels, average="macro", zero_division=0)),
            "confusion_matrix": confusion_matrix(y_true, y_pred, labels=labels).tolist(),
            "per_class": _per_class(y_true, y_pred, classes, labels),
        }
    thresholds = np.full(len(classes), 0.5) if thresholds is None else thresholds
    y_pred = (scores >= thresholds).astype(np.uint8)
    scored = [c for c in range(len(classes)) if 0 < y_true[:, c].sum() < len(y_true)]
    label_ap = average_precision_score(y_true[:, scored], scores[:, scored], average=None) if scored else []
    per_class = _per_class(y_true, y_pred, classes)
    for row in per_class:
        row["ap"] = None  # a label all 0 or all 1 here has no AP and is left out of mAP
    for column, value in zip(scored, np.atleast_1d(label_ap), strict=True):
        per_class[column]["ap"] = float(value)
    return {
        "n": len(y_true),
        "macro_auc": float(roc_auc_score(y_true[:, scored], scores[:, scored], average="macro")) if scored else None,
        "mAP": float(np.average(label_ap)) if scored else None,  # what average="macro" computes
        "macro_f1": float(f1_score(y_true, y_pred, average="macro", zero_division=0)),
        "micro_f1": float(f1_score(y_true, y_pred, average="micro", zero_division=0)),
        "exact_match": float((y_pred == y_true).all(axis=1).mean()),
        "thresholds": [float(t) for t in thresholds],
        "per_class": per_class,
    }


HEADLINE_KEYS = ("accuracy", "mAP")  # the headline metric of a single-label and of a multi-label task


def shown(value: float | None, digits: int = 4) -> str:
    """A metric for the terminal; undefined ones (e.g. AUC of a label absent from a split) print as '–'."""
    return "–" if value is None else f"{value:.{digits}f}"


def headline_name(multilabel: bool) -> str:
    """The one number runs are compared by: accuracy (single-label) or mAP (multi-label)."""
    return HEADLINE_KEYS[multilabel]


def headline(metrics: dict[str, Any]) -> tuple[str, float]:
    """(name, value) of the headline metric in a metrics dict of :func:`classification_metrics`."""
    key = headline_name("accuracy" not in metrics)
    return key, metrics[key]


def probabilities(logits: Any, multilabel: bool) -> Any:
    """Logits → probabilities, written once: one sigmoid per label (multi-label), else a softmax over classes."""
    import torch

    return torch.sigmoid(logits) if multilabel else torch.softmax(logits, dim=1)
