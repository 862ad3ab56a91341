"""An evaluation written down next to the model: ``evaluations/<name>/`` with the HTML page, the JSON record and
one prediction row per scored image, each written atomically (a reader never sees half a file).

Pictures come from the run report's :mod:`transferlab.report.plots` and the page is rendered by the report's
Jinja2 environment, so an evaluation looks and escapes like the report it sits beside.
"""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from transferlab.data.dataset import printable
from transferlab.evaluate.scoring import Evaluation
from transferlab.evaluate.text import metric_keys
from transferlab.fileio import atomic_write_text, write_csv, write_json
from transferlab.record import layout
from transferlab.record.predictions import header, prediction_rows
from transferlab.report import plots
from transferlab.report.html import data_uri, render_evaluation


def evaluation_folder(evaluation: Evaluation) -> Path:
    """Where an evaluation is written by default: ``<run or export>/evaluations/<data name>/``."""
    return evaluation.model / layout.EVALUATIONS / evaluation.name


def evaluation_context(evaluation: Evaluation, worst: int = 10) -> dict[str, Any]:
    """Everything the page shows; empty values make their section disappear."""
    metrics = evaluation.metrics
    ap = evaluation.label_ap()
    per_class = [{**row, "ap": ap.get(row["class"])} for row in metrics["per_class"]]
    errors = []
    for error in evaluation.worst(worst):
        png = plots.thumbnail_png(error["path"])
        errors.append({**error, "path": printable(error["path"]), "picture": data_uri(png) if png else None})
    matrix = metrics.get("confusion_matrix")
    return {
        "name": evaluation.name,
        "source": evaluation.source,
        "data": evaluation.data,
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "task": "multi-label" if evaluation.multilabel else "single-label",
        "classes": evaluation.classes,
        "n": len(evaluation.paths),
        "metrics": [(key, metrics.get(key)) for key in metric_keys(evaluation.multilabel)],
        "missing_classes": evaluation.missing_classes,
        "confusion": data_uri(plots.confusion_matrix_png(matrix, evaluation.classes)) if matrix else None,
        "per_class": per_class,
        "multilabel": evaluation.multilabel,
        "per_class_picture": data_uri(plots.per_class_png(per_class)) if per_class else None,
        "roc_pr": data_uri(plots.roc_pr_png(evaluation.y_true, evaluation.scores, evaluation.classes))
        if evaluation.multilabel
        else None,
        "worst": errors,
        "problems": [str(problem) for problem in evaluation.problems],
    }


def _prediction_rows(evaluation: Evaluation) -> list[list[str]]:
    thresholds = evaluation.cutoffs() if evaluation.multilabel else None
    paths = [str(path) for path in evaluation.paths]
    return prediction_rows(evaluation.name, paths, evaluation.y_true, evaluation.scores, evaluation.classes, thresholds)


def write_evaluation(evaluation: Evaluation, folder: str | Path | None = None, *, worst: int = 10) -> Path:
    """Write ``evaluation.html``, ``evaluation.json`` and ``predictions.csv`` into ``folder`` (default
    :func:`evaluation_folder`); returns the page's path. The page is written last, so its presence means done."""
    out = Path(folder) if folder is not None else evaluation_folder(evaluation)
    out.mkdir(parents=True, exist_ok=True)
    write_csv(out / layout.EVALUATION_PREDICTIONS, header(evaluation.classes), _prediction_rows(evaluation))
    write_json(out / layout.EVALUATION_METRICS, evaluation.to_dict(worst))
    page = out / layout.EVALUATION_PAGE
    atomic_write_text(page, render_evaluation(evaluation_context(evaluation, worst)))
    return page
