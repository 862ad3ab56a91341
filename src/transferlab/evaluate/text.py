"""An evaluation as plain text for the terminal: headline metrics, confusion matrix, per-class scores, worst errors."""

from __future__ import annotations

from transferlab.data.dataset import printable
from transferlab.evaluate.scoring import Evaluation
from transferlab.history import table
from transferlab.metrics import shown

SINGLE_LABEL_KEYS = ("accuracy", "balanced_accuracy", "macro_f1")
MULTI_LABEL_KEYS = ("mAP", "macro_auc", "macro_f1", "micro_f1", "exact_match")
MATRIX_MAX_CLASSES = 15  # wider matrices do not fit a terminal; the HTML page has the picture
NAME_WIDTH = 12


def metric_keys(multilabel: bool) -> tuple[str, ...]:
    """The summary metrics shown for a task, headline first."""
    return MULTI_LABEL_KEYS if multilabel else SINGLE_LABEL_KEYS


def _short(name: str) -> str:
    return name if len(name) <= NAME_WIDTH else name[: NAME_WIDTH - 1] + "…"


def _matrix(evaluation: Evaluation) -> str:
    classes = evaluation.classes
    if len(classes) > MATRIX_MAX_CLASSES:
        return f"confusion matrix: {len(classes)} classes, too wide for a terminal (see the HTML page)"
    matrix = evaluation.metrics["confusion_matrix"]
    header = ["true \\ predicted", *map(_short, classes)]
    rows = [[name, *map(str, counts)] for name, counts in zip(classes, matrix, strict=True)]
    return "confusion matrix (rows: true class, columns: predicted class)\n" + table(header, rows)


def _per_class(evaluation: Evaluation) -> str:
    ap = evaluation.label_ap()
    header = ["class", "precision", "recall", "f1", "support", *(["AP"] if evaluation.multilabel else [])]
    rows = []
    for row in evaluation.metrics["per_class"]:
        cells = [row["class"], *(shown(row[key], 3) for key in ("precision", "recall", "f1")), str(row["support"])]
        rows.append([*cells, shown(ap.get(row["class"]), 3)] if evaluation.multilabel else cells)
    return "per class\n" + table(header, rows)


def _worst(evaluation: Evaluation, count: int) -> str:
    errors = evaluation.worst(count)
    if not errors:
        return "worst errors: none, every scored image is predicted correctly"
    rows = [
        [
            f"{error['confidence']:.3f}",
            error["true"] or "(none)",
            error["predicted"] or "(none)",
            printable(error["path"]),
        ]
        for error in errors
    ]
    title = f"worst errors (the {len(errors)} most confident wrong predictions)"
    return title + "\n" + table(["confidence", "true", "predicted", "path"], rows)


def format_evaluation(evaluation: Evaluation, worst: int = 10) -> str:
    """The readable summary ``transferlab evaluate`` prints."""
    metrics = evaluation.metrics
    summary = "   ".join(f"{key} {shown(metrics.get(key))}" for key in metric_keys(evaluation.multilabel))
    lines = [
        f"{evaluation.source} on {evaluation.data}: {len(evaluation.paths)} image(s) scored, "
        f"{len(evaluation.problems)} skipped",
        summary,
    ]
    if evaluation.missing_classes:
        lines.append(f"not in the data: {', '.join(evaluation.missing_classes)} (support 0; counted as 0 in macro_f1)")
    sections = ["\n".join(lines)]
    if not evaluation.multilabel:
        sections.append(_matrix(evaluation))
    sections += [_per_class(evaluation), _worst(evaluation, worst)]
    return "\n\n".join(sections)
