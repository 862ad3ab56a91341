"""Report pictures as PNG bytes (matplotlib, Agg backend), one function per picture; inputs are plain run-file data."""

from __future__ import annotations

import io
import math
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np


@contextmanager
def _figure(*args: Any, **kwargs: Any) -> Iterator[tuple[Any, Any]]:
    """A figure that is always closed (pyplot keeps every open figure alive otherwise)."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    figure, axes = plt.subplots(*args, layout="constrained", **kwargs)
    try:
        yield figure, axes
    finally:
        plt.close(figure)


def _png(figure: Any) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=90)
    return buffer.getvalue()


def confusion_matrix_png(matrix: list[list[int]], classes: list[str]) -> bytes:
    """Row-normalized confusion matrix with counts, readable for up to a few dozen classes."""
    counts = np.asarray(matrix)
    rates = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
    size = max(4.0, 0.45 * len(classes) + 2)
    with _figure(figsize=(size + 1, size)) as (figure, axes):
        image = axes.imshow(rates, cmap="Blues", vmin=0, vmax=1)
        axes.set_xticks(range(len(classes)), classes, rotation=60, ha="right")
        axes.set_yticks(range(len(classes)), classes)
        axes.set_xlabel("predicted")
        axes.set_ylabel("true")
        if len(classes) <= 30:
            for (row, col), count in np.ndenumerate(counts):
                if count:
                    colour = "white" if rates[row, col] > 0.5 else "black"
                    axes.text(col, row, str(count), ha="center", va="center", fontsize=7, color=colour)
        figure.colorbar(image, ax=axes, fraction=0.046, label="fraction of true class")
        return _png(figure)


def learning_curves_png(history: list[dict[str, Any]], best_epoch: int | None = None, restarts: Any = ()) -> bytes:
    """Train vs validation loss (left) and metric (right) per epoch; best epoch and LR restarts marked."""
    from matplotlib.ticker import MaxNLocator

    epochs = [row["epoch"] for row in history]
    with _figure(1, 2, figsize=(9, 3.2)) as (figure, (loss_axes, metric_axes)):
        for axes, key in ((loss_axes, "loss"), (metric_axes, "metric")):
            for split, style in (("train", "-o"), ("val", "-s")):
                values = [row.get(f"{split}_{key}") for row in history]
                if any(value is not None for value in values):
                    axes.plot(epochs, [np.nan if v is None else v for v in values], style, ms=3, label=split)
            if best_epoch is not None:
                axes.axvline(best_epoch, color="green", ls=":", label="best epoch")
            for restart in restarts:
                axes.axvline(restart["epoch"], color="red", ls="--", alpha=0.6, label="LR restart")
            if len(epochs) <= 15:
                axes.set_xticks(epochs)  # one tick per epoch, also when there is only one
            else:
                axes.xaxis.set_major_locator(MaxNLocator(integer=True))
            axes.set_xlim(min(epochs) - 0.5, max(epochs) + 0.5)
            axes.set_xlabel("epoch")
            axes.set_ylabel(key)
            axes.grid(alpha=0.3)
            axes.legend(fontsize=8)
        return _png(figure)


def per_class_png(per_class: list[dict[str, Any]]) -> bytes:
    """Grouped bars of precision, recall and F1 per class, so the weak classes stand out."""
    names = [row["class"] for row in per_class]
    positions = np.arange(len(names))
    with _figure(figsize=(max(5.0, 0.6 * len(names) + 2), 3.2)) as (figure, axes):
        for offset, key in zip((-0.27, 0.0, 0.27), ("precision", "recall", "f1"), strict=True):
            axes.bar(positions + offset, [row[key] for row in per_class], width=0.27, label=key)
        axes.set_xticks(positions, names, rotation=45, ha="right")
        axes.set_ylim(0, 1.05)
        axes.legend(fontsize=8, ncol=3, loc="lower right")
        axes.grid(axis="y", alpha=0.3)
        return _png(figure)


def roc_pr_png(y_true: np.ndarray, scores: np.ndarray, classes: list[str]) -> bytes:
    """Per-label ROC (left) and precision-recall (right) curves for multi-label predictions."""
    from sklearn.metrics import auc, precision_recall_curve, roc_curve

    with _figure(1, 2, figsize=(9, 3.8)) as (figure, (roc_axes, pr_axes)):
        for label, name in enumerate(classes):
            truth = y_true[:, label]
            if truth.min() == truth.max():
                continue
            fpr, tpr, _ = roc_curve(truth, scores[:, label])
            precision, recall, _ = precision_recall_curve(truth, scores[:, label])
            roc_axes.plot(fpr, tpr, lw=1, label=f"{name} ({auc(fpr, tpr):.2f})")
            pr_axes.plot(recall, precision, lw=1, label=name)
        roc_axes.plot([0, 1], [0, 1], color="grey", ls=":")
        roc_axes.set(xlabel="false positive rate", ylabel="true positive rate", title="ROC (AUC)")
        pr_axes.set(xlabel="recall", ylabel="precision", title="precision-recall")
        roc_axes.legend(fontsize=7)
        return _png(figure)


def importance_png(importance: dict[str, float]) -> bytes:
    """Horizontal bars of hyperparameter importance, most important on top."""
    ordered = sorted(importance.items(), key=lambda item: item[1])
    with _figure(figsize=(5.5, 0.35 * len(ordered) + 1)) as (figure, axes):
        axes.barh([name for name, _ in ordered], [value for _, value in ordered], color="#4c78a8")
        axes.set_xlabel("relative importance (share of objective variance)")
        return _png(figure)


def fraction_curve_png(rows: list[dict[str, Any]], metric: str) -> bytes:
    """Train and validation metric against training-set size (log scale): is the curve still rising?"""
    rows = sorted(rows, key=lambda row: row["n_train"])
    sizes = [row["n_train"] for row in rows]
    with _figure(figsize=(5.5, 3.2)) as (figure, axes):
        for key, style in (("train_metric", "-o"), ("val_metric", "-s")):
            values = [row.get(key) for row in rows]
            if any(value is not None for value in values):
                axes.plot(sizes, [np.nan if v is None else v for v in values], style, label=key.split("_")[0])
        axes.set_xscale("log", base=2)
        axes.set_xticks(sizes, [str(size) for size in sizes])
        axes.minorticks_off()
        axes.set_xlabel("training images (log scale)")
        axes.set_ylabel(metric)
        axes.grid(alpha=0.3, which="both")
        axes.legend(fontsize=8)
        return _png(figure)


def thumbnail_png(path: Any, size: int = 112) -> bytes | None:
    """A small PNG of an image file, or ``None`` if it cannot be decoded (the report then shows no picture)."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            image = image.convert("RGB")
            scale = size / max(image.size)
            if scale > 1:
                image = image.resize((math.ceil(image.width * scale), math.ceil(image.height * scale)), Image.NEAREST)
            image.thumbnail((size, size))
            buffer = io.BytesIO()
            image.save(buffer, format="PNG")
            return buffer.getvalue()
    except (OSError, UnidentifiedImageError, ValueError):
        return None
