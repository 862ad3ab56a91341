"""Logistic-regression probe on standardized features; C is chosen by k-fold CV and the deployed probe sees all of
train + val.

This is the cheapest honest answer to "how good are these features for my labels?" and the baseline every head
search and fine-tune must beat. Two fits, because one model cannot both be scored on validation and have trained on
it: ``train_model`` sees the training split only and is what the validation metrics, the multi-label thresholds and
the stage comparisons use; ``model`` is refit on train + val at the same C and is what the run deploys and scores
on test (a small-data user cannot spare 15% of their images; cf. scikit-learn's ``refit=True``).
"""

from __future__ import annotations

import logging
import os
import time
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
from joblib import Parallel, delayed
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression, LogisticRegressionCV
from sklearn.model_selection import GroupKFold, StratifiedKFold
from sklearn.multiclass import OneVsRestClassifier
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler

from transferlab.data.split import MAX_FOLDS, cv_folds
from transferlab.features.scaling import IGNORED_SCALE, channel_scale
from transferlab.metrics import classification_metrics, tune_thresholds
from transferlab.model.probe_head import SIGNED_SQRT, signed_sqrt, uses_signed_sqrt

logger = logging.getLogger(__name__)

C_GRID = np.logspace(-3, 1, 5)
FALLBACK_C = 0.1  # when a class is too rare to cross-validate
CV_ROWS = 20_000
"""C is chosen by k-fold CV on at most this many train + val rows (a seeded sample stratified by class, or whole
groups); above it only the final fits see every row. 25 CV fits on 100k rows would cost more than extracting them;
at 30k rows the sample chose the same C as CV on every row (docs/benchmarks.md, "A probe that scales")."""


class ChannelScaler(StandardScaler):
    """``StandardScaler`` whose channels constant on the training data are switched off, not blown up."""

    def fit(self, X: Any, y: Any = None, sample_weight: Any = None) -> ChannelScaler:
        super().fit(X, y, sample_weight)
        self.scale_ = channel_scale(np.sqrt(self.var_))
        return self


class SignedSqrt(TransformerMixin, BaseEstimator):
    """:func:`signed_sqrt` of every channel, except that channels constant on the training data become 0.

    The root lifts tiny activations (1e-5 becomes 3e-3), so a channel that is dark on every training image would no
    longer look constant to :class:`ChannelScaler` after it, and a held-out image that lights it up would get a huge
    z-score again. Constancy is judged on the raw features, by the same rule as the scaler's; a zeroed channel then
    gets the scaler's ignored scale, so the exported graph, which roots every channel, adds ~0 for it as well.
    """

    def fit(self, X: Any, y: Any = None) -> SignedSqrt:
        self.constant_ = channel_scale(np.asarray(X).std(axis=0)) == IGNORED_SCALE
        return self

    def transform(self, X: Any) -> np.ndarray:
        rooted = signed_sqrt(np.asarray(X))
        rooted[:, self.constant_] = 0.0
        return rooted


def probe_pipeline(estimator: Any, use_signed_sqrt: bool) -> Pipeline:
    """[:class:`SignedSqrt`], :class:`ChannelScaler`, then ``estimator``: the one shape of every probe model."""
    steps = [(SIGNED_SQRT, SignedSqrt())] if use_signed_sqrt else []
    return Pipeline([*steps, ("scale", ChannelScaler()), ("logistic", estimator)])


@dataclass
class ProbeResult:
    """The deployed probe (train + val), the train-only probe, C, thresholds and the metrics of every split.

    ``metrics['train']`` and ``['val']`` are the train-only probe's, ``['test']`` the deployed one's;
    ``val_scores`` are the train-only probe's validation scores (what ``predictions.csv`` shows for val).
    """

    model: Pipeline
    train_model: Pipeline
    C: float | list[float]
    thresholds: np.ndarray | None
    metrics: dict[str, dict[str, Any]]
    fit_seconds: float
    n_classes: int
    multilabel: bool
    fit_images: int
    val_scores: np.ndarray | None = None
    cv_score: float | None = None  # mean cross-validated log-likelihood per image at the chosen C (None: no CV)
    cv_images: int = 0  # how many train + val images the C search cross-validated on (all, up to CV_ROWS)
    cut_point: str | None = None  # set by the caller that chose the features
    backbone: str | None = None  # set by the caller that compared backbones

    @property
    def signed_sqrt(self) -> bool:
        """Whether the probe reads :func:`signed_sqrt` of the features (else the raw pooled features)."""
        return uses_signed_sqrt(self.model)

    @property
    def features_read(self) -> str:
        """What ``probe.json`` and ``record.json`` say the probe read: ``"signed_sqrt"`` or ``"raw"``."""
        return SIGNED_SQRT if self.signed_sqrt else "raw"

    def predict_scores(self, features: np.ndarray) -> np.ndarray:
        """The deployed probe's class probabilities (absent-from-train classes at 0), or per-label sigmoid scores."""
        return class_scores(self.model, features, self.n_classes, self.multilabel)


def class_scores(model: Pipeline, features: np.ndarray, n_classes: int, multilabel: bool) -> np.ndarray:
    if multilabel:
        return model.predict_proba(features)[:, :n_classes]
    probabilities = model.predict_proba(features)
    full = np.zeros((len(features), n_classes))
    full[:, model.classes_] = probabilities
    return full


def _folds(y: np.ndarray, groups: np.ndarray | None, seed: int) -> Any:
    """The ranking's stratified (grouped) k-fold, or None when a class or the groups are too few for two folds."""
    counts = np.bincount(y)
    if int(counts[counts > 0].min()) < 2 or (groups is not None and len(set(groups.tolist())) < 2):
        return None
    return cv_folds(y, seed, groups)


def _selecting(y: np.ndarray, groups: np.ndarray | None, seed: int) -> Any:
    """A logistic regression that picks C by cross-validated log-likelihood and refits on everything it is given.

    Multi-label: one per label (one-vs-rest), each with its own C; with groups, shared group folds when every label
    has positives and negatives on both sides of every fold, else folds stratified by each label (then only the
    train/val/test split keeps groups together).
    """
    if y.ndim == 2:
        return OneVsRestClassifier(_selecting_binary(y, seed, _group_folds(y, groups, seed)))
    folds = _folds(y, groups, seed)
    if folds is None:
        return LogisticRegression(C=FALLBACK_C, max_iter=3000)
    return _cv_logistic(folds)


def _cv_logistic(folds: Any) -> LogisticRegressionCV:
    """L2 logistic regression over :data:`C_GRID`, warm-started along the path, refit at the best C."""
    n_folds = folds.get_n_splits() if hasattr(folds, "get_n_splits") else len(folds)
    return LogisticRegressionCV(
        Cs=C_GRID,
        cv=folds,
        scoring="neg_log_loss",
        max_iter=3000,
        l1_ratios=(0.0,),
        use_legacy_attributes=False,
        n_jobs=min(n_folds, os.cpu_count() or 1),  # folds in parallel: 2.7x on 2 cores (400 x 1280, 10 classes)
    )


def _group_folds(y: np.ndarray, groups: np.ndarray | None, seed: int) -> list[Any] | None:
    """Group folds shared by every label of a multi-label problem, if each label can be fit and scored in each."""
    n_groups = 0 if groups is None else len(set(groups.tolist()))
    if n_groups < 2:
        return None
    folds = list(GroupKFold(n_splits=min(MAX_FOLDS, n_groups), shuffle=True, random_state=seed).split(y, y, groups))
    for part in (rows for fold in folds for rows in fold):
        positives = y[part].sum(axis=0)
        if (positives == 0).any() or (positives == len(part)).any():
            return None
    return folds


def _selecting_binary(y: np.ndarray, seed: int, group_folds: list[Any] | None) -> Any:
    smallest = int(np.minimum(y.sum(axis=0), len(y) - y.sum(axis=0)).min())
    if smallest < 2:
        return LogisticRegression(C=FALLBACK_C, max_iter=3000)
    if group_folds is not None:
        return _cv_logistic(group_folds)
    return _cv_logistic(StratifiedKFold(n_splits=min(MAX_FOLDS, smallest), shuffle=True, random_state=seed))


def fixed_model(C: float | list[float], multilabel: bool, start_from: Pipeline | None = None) -> Any:
    """The same model at the C already chosen (per label for multi-label); single-label, it starts from the
    weights of ``start_from`` (a fitted probe of the same classes) when there is one: the same optimum, reached
    in fewer steps. (The standardisation differs a little between row sets, so the start is close, not exact.)"""
    if multilabel:
        return _PerLabel([float(c) for c in C])  # type: ignore[union-attr]
    model = LogisticRegression(C=float(C), max_iter=3000)  # type: ignore[arg-type]
    if start_from is not None:
        model.set_params(warm_start=True)
        model.coef_, model.intercept_ = start_from[-1].coef_.copy(), start_from[-1].intercept_.copy()
    return model


def _same_classes(fitted: Pipeline, y: np.ndarray) -> Pipeline | None:
    """``fitted`` if it is a single-label probe of exactly the classes in ``y`` (a start its weights fit), else None."""
    classes = getattr(fitted[-1], "classes_", None)
    if y.ndim == 2 or classes is None or not np.array_equal(classes, np.unique(y)):
        return None
    return fitted


def _fit(model: Pipeline, x: np.ndarray, y: np.ndarray) -> Pipeline:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        return model.fit(x, y)


@dataclass
class ProbeSearch:
    """C chosen by k-fold CV on one feature set's train + val rows (all, or a sample of :data:`CV_ROWS`).

    Kept apart from the fits that follow so a caller comparing several feature sets finishes only the one that
    cross-validates best: on 100k rows the two full fits per feature set cost more than the sampled search.
    """

    search: Pipeline  # refit at the chosen C on the rows it searched: the deployed probe unless they were a sample
    C: float | list[float]
    rows: np.ndarray  # which train + val rows the search cross-validated on
    n_rows: int  # train + val rows in all
    use_signed_sqrt: bool
    seconds: float

    @property
    def sampled(self) -> bool:
        return len(self.rows) < self.n_rows

    @property
    def cv_score(self) -> float | None:
        """Mean cross-validated log-likelihood per image at the chosen C (None: a class too rare to CV)."""
        return _cv_score(self.search[-1])


def search_probe(
    features: dict[str, np.ndarray],
    y: dict[str, np.ndarray],
    *,
    seed: int = 0,
    groups: np.ndarray | None = None,
    use_signed_sqrt: bool = True,
) -> ProbeSearch:
    """Choose C by k-fold CV on train + val (a seeded sample of :data:`CV_ROWS` above it); see :func:`fit_probe`."""
    start = time.perf_counter()
    has_val = "val" in features and len(y["val"]) > 0
    fit_x, fit_y = train_and_val(features, has_val), train_and_val(y, has_val)
    rows = cv_rows(fit_y, groups, seed)
    if len(rows) < len(fit_y):  # (indexing copies the matrix: only when a sample is really taken)
        search_x, search_y, search_groups = fit_x[rows], fit_y[rows], None if groups is None else groups[rows]
    else:
        search_x, search_y, search_groups = fit_x, fit_y, groups
    search = _fit(probe_pipeline(_selecting(search_y, search_groups, seed), use_signed_sqrt), search_x, search_y)
    seconds = time.perf_counter() - start
    return ProbeSearch(search, _chosen_c(search), rows, len(fit_y), use_signed_sqrt, seconds)


def finish_probe(
    chosen: ProbeSearch, features: dict[str, np.ndarray], y: dict[str, np.ndarray], classes: list[str]
) -> ProbeResult:
    """The train-only twin at the chosen C, the deployed probe on train + val (the search's own refit unless it
    searched a sample), the multi-label thresholds and every split's metrics."""
    start = time.perf_counter()
    multilabel = y["train"].ndim == 2
    has_val = "val" in features and len(y["val"]) > 0
    C, rooted = chosen.C, chosen.use_signed_sqrt
    # Large data: each fit starts from the last one's weights (the sample's, then the twin's): fewer L-BFGS steps
    start_from = _same_classes(chosen.search, y["train"]) if chosen.sampled else None
    train_model = _fit(probe_pipeline(fixed_model(C, multilabel, start_from), rooted), features["train"], y["train"])
    model = chosen.search
    if chosen.sampled:
        logger.info(
            "probe: C chosen by CV on %d of %d images, then fit on all of them", len(chosen.rows), chosen.n_rows
        )
        fit_x, fit_y = train_and_val(features, has_val), train_and_val(y, has_val)
        start_from = _same_classes(train_model, fit_y)
        model = _fit(probe_pipeline(fixed_model(C, multilabel, start_from), rooted), fit_x, fit_y)
    fit_seconds = chosen.seconds + time.perf_counter() - start
    val_scores = class_scores(train_model, features["val"], len(classes), multilabel) if has_val else None
    thresholds = tune_thresholds(y["val"], val_scores) if multilabel and val_scores is not None else None
    probe = ProbeResult(
        model, train_model, C, thresholds, {}, fit_seconds, len(classes), multilabel, chosen.n_rows, val_scores
    )
    probe.cv_score = chosen.cv_score
    probe.cv_images = len(chosen.rows)
    for split_name, split_features in features.items():
        if len(split_features):
            scorer = model if split_name == "test" else train_model
            scores = class_scores(scorer, split_features, len(classes), multilabel)
            probe.metrics[split_name] = classification_metrics(y[split_name], scores, classes, thresholds)
    return probe


def fit_probe(
    features: dict[str, np.ndarray],
    y: dict[str, np.ndarray],
    classes: list[str],
    *,
    seed: int = 0,
    groups: np.ndarray | None = None,
    use_signed_sqrt: bool = True,
) -> ProbeResult:
    """C by k-fold CV on train + val, the deployed probe refit there; thresholds (multi-label) and the val metrics
    from the same C fit on train only. ``groups`` (per train + val row): folds keep each group on one side.
    ``use_signed_sqrt``: the probe reads :func:`signed_sqrt` of the features (the default; False: raw features)."""
    chosen = search_probe(features, y, seed=seed, groups=groups, use_signed_sqrt=use_signed_sqrt)
    return finish_probe(chosen, features, y, classes)


def train_and_val(parts: dict[str, np.ndarray], has_val: bool) -> np.ndarray:
    """The rows the deployed probe is fit and cross-validated on: train, then val when there is one."""
    return np.concatenate([parts["train"], parts["val"]]) if has_val else parts["train"]


def cv_rows(y: np.ndarray, groups: np.ndarray | None, seed: int) -> np.ndarray:
    """Every row, or a seeded sample of :data:`CV_ROWS`: the same share of each class (single-label), whole
    groups (so folds stay grouped), or uniform rows (multi-label); sorted, so the sample keeps the data's order."""
    n = len(y)
    if n <= CV_ROWS:
        return np.arange(n)
    rng = np.random.default_rng(seed)
    if groups is not None:
        names, of_row = np.unique(groups, return_inverse=True)
        taken = np.zeros(len(names), dtype=bool)
        order = rng.permutation(len(names))
        sizes = np.bincount(of_row)[order]
        taken[order[: int(np.searchsorted(np.cumsum(sizes), CV_ROWS)) + 1]] = True
        return np.flatnonzero(taken[of_row])
    if y.ndim == 2:
        return np.sort(rng.choice(n, CV_ROWS, replace=False))
    share = CV_ROWS / n
    picked = [rng.permutation(np.flatnonzero(y == label))[: max(1, round(share * count))]
              for label, count in enumerate(np.bincount(y)) if count]  # fmt: skip
    return np.sort(np.concatenate(picked))


class _PerLabel(OneVsRestClassifier):
    """One-vs-rest with a given C per label (the train-only twin of the selecting multi-label probe).

    scikit-learn's one-vs-rest clones one estimator for every label, so the per-label C is set afterwards: the
    one-vs-rest pass is a single L-BFGS step (it only lays out the labels), then each label is fit at its own C,
    the labels in parallel.
    """

    def __init__(self, Cs: list[float]) -> None:
        super().__init__(LogisticRegression(C=FALLBACK_C, max_iter=1))
        self.Cs = Cs

    def fit(self, X: Any, y: Any, **params: Any) -> _PerLabel:
        super().fit(X, y, **params)
        labels = [i for i, e in enumerate(self.estimators_) if isinstance(e, LogisticRegression)]  # not constant
        fitted = Parallel(n_jobs=min(len(labels), os.cpu_count() or 1) or 1)(
            delayed(_fit_label)(X, y[:, i], self.Cs[i]) for i in labels
        )
        for i, estimator in zip(labels, fitted, strict=True):
            self.estimators_[i] = estimator
        return self


def _fit_label(x: np.ndarray, y: np.ndarray, c: float) -> LogisticRegression:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        return LogisticRegression(C=c, max_iter=3000).fit(x, y)


def _cv_score(estimator: Any) -> float | None:
    """The best mean-over-folds score of the C search (per label, averaged), comparable between feature sets that
    were cross-validated on the same folds; None when a class was too rare to cross-validate."""
    searches = estimator.estimators_ if isinstance(estimator, OneVsRestClassifier) else [estimator]
    if not all(isinstance(search, LogisticRegressionCV) for search in searches):
        return None
    return float(
        np.mean([np.asarray(search.scores_).reshape(-1, len(C_GRID)).mean(axis=0).max() for search in searches])
    )


def _chosen_c(model: Pipeline) -> float | list[float]:
    def chosen(estimator: Any) -> float:
        value = getattr(estimator, "C_", getattr(estimator, "C", FALLBACK_C))  # a constant label has no C
        return float(np.ravel(value)[0])

    estimator = model[-1]
    if isinstance(estimator, OneVsRestClassifier):
        return [chosen(e) for e in estimator.estimators_]
    return chosen(estimator)
