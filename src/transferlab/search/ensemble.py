"""The search's final predictor: the probabilities of its k best heads (by validation loss), averaged.

Why not the single winner: with ~100 validation images the lowest validation loss among 30 trials is partly luck,
so the single winner's test score is a coin flip around the plain probe's. Averaging the top few heads (what
auto-sklearn and AutoGluon ship as their final model) keeps what the trials agree on and cancels what each got
lucky with. On the demo photos (bench/search_quality.py, docs/benchmarks.md) the average beat the single winner on
average over every set of runs measured, by 0.1 to 0.9 points.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import optuna

from transferlab.heads import Head
from transferlab.metrics import classification_metrics, probabilities, tune_thresholds
from transferlab.search.data import HeadData
from transferlab.search.space import decode
from transferlab.search.train import predict_logits, train_head

ENSEMBLE_SIZE = 5


def top_trials(study: optuna.Study, size: int) -> list[optuna.trial.FrozenTrial]:
    """The ``size`` completed trials with the lowest validation loss, best first (fewer if fewer completed)."""
    complete = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    return sorted(complete, key=lambda t: (t.value, t.number))[:size]


def head_scores(head: Head, data: HeadData) -> dict[str, np.ndarray]:
    """Class probabilities (softmax) or per-label scores (sigmoid) of one head on every non-empty split."""
    inputs = data.inputs(head.spec).items()
    return {s: probabilities(predict_logits(head, x), data.multilabel).numpy() for s, x in inputs if len(x)}


def split_metrics(scores: dict[str, np.ndarray], data: HeadData) -> dict[str, dict[str, Any]]:
    """Full metrics per split, like the probe's metrics.json (multi-label thresholds tuned on validation)."""
    thresholds = tune_thresholds(data.y["val"], scores["val"]) if data.multilabel and "val" in scores else None
    return {s: classification_metrics(data.y[s], p, data.classes, thresholds) for s, p in scores.items()}


@dataclass
class HeadEnsemble:
    """The top trials' heads, each refitted exactly as its trial trained it (same params, same seed)."""

    trial_numbers: list[int]
    heads: list[Head]

    @classmethod
    def refit(cls, trials: list[optuna.trial.FrozenTrial], data: HeadData, seed: int) -> HeadEnsemble:
        heads = []
        for trial in trials:
            spec, params = decode(trial.params, multilabel=data.multilabel)
            heads.append(train_head(spec, params, data, seed=seed + trial.number).head)
        return cls([t.number for t in trials], heads)

    def scores(self, data: HeadData) -> dict[str, np.ndarray]:
        """Each split's member scores, averaged (probabilities, not logits: members need not agree in scale)."""
        per_head = [head_scores(head, data) for head in self.heads]
        return {s: np.mean([scores[s] for scores in per_head], axis=0) for s in per_head[0]}
