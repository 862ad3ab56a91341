"""Averaging the probes of several backbones, kept only where cross-validation says the average is better.

A planned run with time for more than one backbone probes each of them. Their probabilities averaged were +1.0
point of test accuracy/mAP over the best single backbone on the quality suite (docs/benchmarks.md, "Which
backbone a bigger budget's probe should keep"), but not on every dataset, so the run decides from its own training
data: every member's out-of-fold probabilities on the same folds (train + val, each member at the C its own search
chose), then the mean log-likelihood per image of the average against that of the best single member, computed the
same way. The deployed ensemble is the members' deployed probes (fit on train + val), averaged.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from joblib import Parallel, delayed
from sklearn.exceptions import ConvergenceWarning

from transferlab.data.split import cv_folds
from transferlab.errors import TransferlabError
from transferlab.metrics import classification_metrics, tune_thresholds
from transferlab.probe.linear import ProbeResult, class_scores, cv_rows, fixed_model, probe_pipeline, train_and_val

EPSILON = 1e-12


@dataclass
class Member:
    """One backbone's probe and its features per split (at the probe's cut point)."""

    probe: ProbeResult
    features: dict[str, np.ndarray]


@dataclass
class EnsembleChoice:
    """The out-of-fold evidence for averaging ``members`` and, when kept, the average's metrics and val scores.

    ``cv_score`` / ``single_cv_scores``: mean out-of-fold log-likelihood per image (per label for multi-label) of
    the average and of each member alone, on the same rows and folds.
    """

    members: list[Member]
    cv_score: float
    single_cv_scores: list[float]
    cv_images: int
    metrics: dict[str, dict[str, Any]] = field(default_factory=dict)
    val_scores: np.ndarray | None = None
    thresholds: np.ndarray | None = None

    @property
    def kept(self) -> bool:
        return self.cv_score > max(self.single_cv_scores)

    def scores(self, split_name: str) -> np.ndarray:
        """The average's scores on a split: train-only probes on val (as the probe's own val scores), else the
        deployed probes."""
        if split_name == "val":
            assert self.val_scores is not None
            return self.val_scores
        return np.mean([m.probe.predict_scores(m.features[split_name]) for m in self.members], axis=0)

    def facts(self) -> dict[str, Any]:
        """The ensemble's part of ``record.json``: members and the evidence."""
        return {
            "members": [m.probe.backbone for m in self.members],
            "cut_points": [m.probe.cut_point for m in self.members],
            "cv_log_likelihood": self.cv_score,
            "single_cv_log_likelihood": dict(
                zip([m.probe.backbone for m in self.members], self.single_cv_scores, strict=True)
            ),
            "cv_images": self.cv_images,
            "kept": self.kept,
        }


def log_likelihood(y: np.ndarray, scores: np.ndarray) -> float:
    """Mean log-probability of the true class per image, or of each label's truth per image and label."""
    clipped = np.clip(scores, EPSILON, 1 - EPSILON)
    if y.ndim == 2:
        return float(np.mean(y * np.log(clipped) + (1 - y) * np.log(1 - clipped)))
    return float(np.mean(np.log(clipped[np.arange(len(y)), y])))


def out_of_fold_scores(
    x: np.ndarray, y: np.ndarray, probe: ProbeResult, folds: list[tuple[np.ndarray, np.ndarray]]
) -> np.ndarray:
    """Each row scored by the probe's model at its chosen C, fit on the other folds (folds in parallel)."""

    def fold(train: np.ndarray, held: np.ndarray) -> np.ndarray:
        model = probe_pipeline(fixed_model(probe.C, probe.multilabel), probe.signed_sqrt)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            model.fit(x[train], y[train])
        return class_scores(model, x[held], probe.n_classes, probe.multilabel)

    parts = Parallel(n_jobs=min(len(folds), os.cpu_count() or 1))(delayed(fold)(t, h) for t, h in folds)
    scores = np.zeros((len(y), probe.n_classes))
    for (_, held), part in zip(folds, parts, strict=True):
        scores[held] = part
    return scores


def choose_ensemble(
    members: list[Member], y: dict[str, np.ndarray], classes: list[str], *, seed: int, groups: np.ndarray | None
) -> EnsembleChoice | None:
    """The evidence for averaging ``members`` (and, when it wins, its metrics); None when the data are too few to
    cross-validate (then a single probe is kept, as without an ensemble)."""
    has_val = len(y.get("val", ())) > 0
    fit_y = train_and_val(y, has_val)
    rows = cv_rows(fit_y, groups, seed)
    try:
        folds = cv_folds(fit_y[rows], seed, None if groups is None else groups[rows])
    except TransferlabError:
        return None
    oof = []
    for member in members:
        fit_x = train_and_val(member.features, has_val)
        oof.append(out_of_fold_scores(fit_x[rows], fit_y[rows], member.probe, folds))
    single = [log_likelihood(fit_y[rows], scores) for scores in oof]
    choice = EnsembleChoice(members, log_likelihood(fit_y[rows], np.mean(oof, axis=0)), single, len(rows))
    if choice.kept:
        _score(choice, y, classes, has_val)
    return choice


def _score(choice: EnsembleChoice, y: dict[str, np.ndarray], classes: list[str], has_val: bool) -> None:
    """The average's val scores (train-only probes), multi-label thresholds tuned on them, metrics per split."""
    members = choice.members
    multilabel = y["train"].ndim == 2
    if has_val:
        choice.val_scores = np.mean([m.probe.val_scores for m in members], axis=0)
        if multilabel:
            choice.thresholds = tune_thresholds(y["val"], choice.val_scores)
    for split_name in ("val", "test"):
        if len(members[0].features.get(split_name, ())):
            scores = choice.scores(split_name)
            choice.metrics[split_name] = classification_metrics(y[split_name], scores, classes, choice.thresholds)
