"""A self-contained ``report.html``: metrics table, confusion matrix and per-class scores, pictures inlined.

Jinja2 autoescaping is on, so class and file names from the user's data cannot inject HTML.
"""

from __future__ import annotations

import base64
import io
from pathlib import Path
from typing import Any

import numpy as np
from jinja2 import Environment, PackageLoader, select_autoescape

from transferlab.fileio import atomic_write_bytes, atomic_write_text


def _png(figure: Any) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    return buffer.getvalue()


def confusion_matrix_png(matrix: list[list[int]], classes: list[str]) -> bytes:
    """Row-normalized confusion matrix with counts, readable for up to a few dozen classes."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    counts = np.asarray(matrix)
    rates = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
    size = max(4.0, 0.45 * len(classes) + 2)
    figure, axes = plt.subplots(figsize=(size + 1, size))
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
    png = _png(figure)
    plt.close(figure)
    return png


def write_report(run_path: Path, context: dict[str, Any]) -> Path:
    """Render ``report.html`` (and save the pictures beside it) from the run's record."""
    pictures = {}
    test = context["metrics"].get("test", {})
    if "confusion_matrix" in test:
        png = confusion_matrix_png(test["confusion_matrix"], context["classes"])
        atomic_write_bytes(run_path / "confusion_matrix.png", png)
        pictures["confusion_matrix"] = base64.b64encode(png).decode("ascii")
    environment = Environment(loader=PackageLoader("transferlab", "record/templates"), autoescape=select_autoescape())
    html = environment.get_template("report.html").render(pictures=pictures, **context)
    atomic_write_text(run_path / "report.html", html)
    return run_path / "report.html"
