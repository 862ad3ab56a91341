"""Logistic-regression probe on standardized features; the inverse regularization C is chosen by stratified CV.

This is the cheapest honest answer to "how good are these features for my labels?" and the baseline every head
search and fine-tune must beat. Multi-label problems get one binary probe per label (one-vs-rest) and per-label
thresholds tuned on the validation split.
"""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GridSearchCV, StratifiedKFold
from sklearn.multiclass import OneVsRestClassifier
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import StandardScaler

from transferlab.metrics import classification_metrics, tune_thresholds

C_GRID = np.logspace(-3, 1, 5)


@dataclass
class ProbeResult:
    """The fitted probe, its chosen C, thresholds (multi-label) and the metrics of every split it was scored on."""

    model: Pipeline
    C: float | list[float]
    thresholds: np.ndarray | None
    metrics: dict[str, dict[str, Any]]
    fit_seconds: float
    n_classes: int
    multilabel: bool

    def predict_scores(self, features: np.ndarray) -> np.ndarray:
        """Class probabilities (every class, absent-from-train ones at 0), or per-label sigmoid scores."""
        if self.multilabel:
            return _label_scores(self.model, features, self.n_classes)
        return _class_scores(self.model, features, self.n_classes)


def _cv_logistic(smallest: int, seed: int) -> Any:
    """Logistic regression whose C maximizes cross-validated log-likelihood (a fixed C if a class is too rare).

    ``smallest`` is the size of the rarest class (per label: the rarer of positives and negatives).
    """
    base = LogisticRegression(C=0.1, max_iter=3000)
    if smallest < 2:
        return base
    folds = StratifiedKFold(n_splits=min(3, smallest), shuffle=True, random_state=seed)
    return GridSearchCV(base, {"C": C_GRID}, cv=folds, scoring="neg_log_loss")


def fit_probe(
    features: dict[str, np.ndarray], y: dict[str, np.ndarray], classes: list[str], *, seed: int = 0
) -> ProbeResult:
    """Fit on ``features['train']``; tune thresholds on 'val' (multi-label); score every split given."""
    start = time.perf_counter()
    y_train = y["train"]
    if y_train.ndim == 1:
        counts = np.bincount(y_train)
        estimator = _cv_logistic(int(counts[counts > 0].min()), seed)
    else:
        positives = y_train.sum(axis=0)
        estimator = OneVsRestClassifier(_cv_logistic(int(np.minimum(positives, len(y_train) - positives).min()), seed))
    model = make_pipeline(StandardScaler(), estimator)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        model.fit(features["train"], y_train)
    fit_seconds = time.perf_counter() - start
    thresholds = None
    if y_train.ndim == 2 and "val" in features and len(y["val"]):
        thresholds = tune_thresholds(y["val"], _label_scores(model, features["val"], y_train.shape[1]))
    probe = ProbeResult(model, _chosen_c(model), thresholds, {}, fit_seconds, len(classes), y_train.ndim == 2)
    for split_name, split_features in features.items():
        if len(split_features):
            scores = probe.predict_scores(split_features)
            probe.metrics[split_name] = classification_metrics(y[split_name], scores, classes, thresholds)
    return probe


def _class_scores(model: Pipeline, features: np.ndarray, n_classes: int) -> np.ndarray:
    """Probabilities over all classes, including classes absent from training (probability 0)."""
    probabilities = model.predict_proba(features)
    full = np.zeros((len(features), n_classes))
    full[:, model.classes_] = probabilities
    return full


def _label_scores(model: Pipeline, features: np.ndarray, n_labels: int) -> np.ndarray:
    return model.predict_proba(features)[:, :n_labels]


def _chosen_c(model: Pipeline) -> float | list[float]:
    def chosen(estimator: Any) -> float:
        return float(estimator.best_params_["C"] if hasattr(estimator, "best_params_") else estimator.C)

    estimator = model[-1]
    if isinstance(estimator, OneVsRestClassifier):
        return [chosen(e) for e in estimator.estimators_]
    return chosen(estimator)
