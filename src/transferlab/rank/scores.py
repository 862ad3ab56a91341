"""Cross-validated scores of one feature set that need no fine-tuning: k-NN and a quick logistic-regression probe.

Both are computed on train+val with the *same* seeded folds for every (backbone, cut point), so differences between
candidates are not differences between fold draws; the test split stays untouched for the final, honest number.
The metric is accuracy for single-label data and mAP (mean average precision over labels) for multi-label data,
matching :func:`transferlab.metrics.headline`.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import average_precision_score
from sklearn.preprocessing import StandardScaler
from threadpoolctl import threadpool_limits

from transferlab.data.split import Folds
from transferlab.errors import TransferlabError

MAX_K = 20
"""Beyond ~20 neighbours k-NN mostly smooths towards the class prior; sqrt(n) below that is the textbook choice."""

PROBE_C_GRID = (0.01, 0.1, 1.0)
"""Inverse L2 strengths for the quick probe; the best mean over folds counts (the same small bias for everyone)."""

Scorer = Callable[[np.ndarray, np.ndarray, np.ndarray], list[np.ndarray]]
"""(train features, train targets, held-out features) -> one score matrix per setting."""


@dataclass(frozen=True)
class CVScore:
    """Mean metric over folds and its standard error (fold spread / sqrt(folds)), which sizes the tie band."""

    mean: float
    std_error: float
    folds: int


def neighbour_count(y_train: np.ndarray) -> int:
    """k = sqrt(n) capped at 20, and (single-label) at the rarest class size so a small class can still win a vote."""
    k = min(MAX_K, round(np.sqrt(len(y_train))))
    if y_train.ndim == 1:
        counts = np.bincount(y_train)
        k = min(k, int(counts[counts > 0].min()))
    return max(1, k)


def knn_scores(train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, n_outputs: int) -> np.ndarray:
    """Per-class (or per-label) scores of a cosine k-NN: the similarity-weighted share of neighbours with that label.

    Features are centred on the training mean before the cosine (as in SimpleShot, Wang et al. 2019): pooled
    post-activation features are all positive, so raw cosines crowd near 1 and the centring spreads them out.
    Weights (1 + cos) / 2 favour closer neighbours and break vote ties without a bias towards low class ids.
    """
    mean = train_x.mean(axis=0)
    train_n, test_n = _unit_rows(train_x - mean), _unit_rows(test_x - mean)
    similarity = test_n @ train_n.T
    k = neighbour_count(train_y)
    nearest = np.argpartition(-similarity, k - 1, axis=1)[:, :k]
    weights = (1 + np.take_along_axis(similarity, nearest, axis=1)) / 2
    targets = np.eye(n_outputs)[train_y] if train_y.ndim == 1 else train_y.astype(np.float64)
    return (weights[:, :, None] * targets[nearest]).sum(axis=1) / np.maximum(weights.sum(axis=1), 1e-12)[:, None]


def _unit_rows(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def probe_scorer(seed: int) -> Scorer:
    """Scores of logistic regressions on standardized features, one score matrix per C in :data:`PROBE_C_GRID`.

    Multi-label data gets one binary regression per label (one-vs-rest); a label constant in the training fold
    predicts that constant.
    """

    def score(train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray) -> list[np.ndarray]:
        scaler = StandardScaler().fit(train_x)
        train_x, test_x = scaler.transform(train_x), scaler.transform(test_x)
        if train_y.ndim == 1:
            return _logistic_path(train_x, train_y, test_x, seed)
        columns = []
        for label in train_y.T:
            if label.min() == label.max():
                columns.append([np.full(len(test_x), float(label[0]))] * len(PROBE_C_GRID))
            else:
                columns.append([p[:, 1] for p in _logistic_path(train_x, label, test_x, seed)])
        return [np.stack(per_c, axis=1) for per_c in zip(*columns, strict=True)]

    return score


def _logistic_path(train_x: np.ndarray, y: np.ndarray, test_x: np.ndarray, seed: int) -> list[np.ndarray]:
    """Class probabilities (columns 0..max class) of logistic regressions along the C grid.

    The path is warm-started from the strongest regularization up, with a loose tolerance: ranking needs held-out
    accuracy, not converged weights, and this is ~3x cheaper than independent tight fits with the same accuracies.
    """
    model = LogisticRegression(max_iter=100, tol=1e-3, warm_start=True, random_state=seed)
    outputs = []
    for c in PROBE_C_GRID:
        model.set_params(C=c)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            model.fit(train_x, y)
        full = np.zeros((len(test_x), int(y.max()) + 1))
        full[:, model.classes_] = model.predict_proba(test_x)
        outputs.append(full)
    return outputs


def cross_validate(x: np.ndarray, y: np.ndarray, folds: Folds, scorer: Scorer) -> list[CVScore]:
    """Mean held-out metric over ``folds`` for each score matrix ``scorer`` returns (e.g. one per setting).

    A multi-label fold where no label has both positives and negatives in the held-out part is skipped.
    Runs with one BLAS thread: these matrices are small, and on a busy machine a multi-threaded BLAS spins instead
    of working (the 1280-d probe took 35 s wall with 2 OpenBLAS threads under load, 0.8 s with one).
    """
    n_outputs = int(y.max()) + 1 if y.ndim == 1 else y.shape[1]
    values: list[list[float]] = []
    for train, held_out in folds:
        with threadpool_limits(limits=1):
            outputs = scorer(x[train], y[train], x[held_out])
        values = values or [[] for _ in outputs]
        for setting, scores in enumerate(outputs):
            scores = np.pad(scores, ((0, 0), (0, n_outputs - scores.shape[1])))  # classes absent from this fold
            value = fold_metric(y[held_out], scores)
            if value is not None:
                values[setting].append(value)
    if not values or not values[0]:
        raise TransferlabError("no cross-validation fold has a label with both positive and negative examples")
    return [_summary(setting) for setting in values]


def _summary(values: list[float]) -> CVScore:
    spread = float(np.std(values, ddof=1)) if len(values) > 1 else 0.0
    return CVScore(float(np.mean(values)), float(spread / np.sqrt(len(values))), len(values))


def fold_metric(y_true: np.ndarray, scores: np.ndarray) -> float | None:
    """Accuracy, or mAP over the labels with both positives and negatives (None if none has both).

    The same definitions as :func:`transferlab.metrics.classification_metrics`, without its per-class tables
    and input validation, which cost more than the fits here (this runs folds x settings x cut points times).
    """
    if y_true.ndim == 1:
        return float((scores.argmax(axis=1) == y_true).mean())
    positives = y_true.sum(axis=0)
    scored = (positives > 0) & (positives < len(y_true))
    if not scored.any():
        return None
    return float(average_precision_score(y_true[:, scored], scores[:, scored], average="macro"))


def knn_cv(x: np.ndarray, y: np.ndarray, folds: Folds) -> CVScore:
    """Cross-validated cosine k-NN metric (see :func:`knn_scores`)."""
    n_outputs = int(y.max()) + 1 if y.ndim == 1 else y.shape[1]
    return cross_validate(x, y, folds, lambda tx, ty, hx: [knn_scores(tx, ty, hx, n_outputs)])[0]


def probe_cv(x: np.ndarray, y: np.ndarray, folds: Folds, seed: int) -> tuple[CVScore, float]:
    """The best cross-validated quick-probe metric over :data:`PROBE_C_GRID`, and the C that reached it."""
    results = zip(cross_validate(x, y, folds, probe_scorer(seed)), PROBE_C_GRID, strict=True)
    return max(results, key=lambda pair: pair[0].mean)
