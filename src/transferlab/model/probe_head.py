"""The fitted logistic-regression probe as plain tensors, and as torch layers so backbone + probe run as one graph."""

from __future__ import annotations

from typing import Any, TypeVar

import numpy as np
import torch
from sklearn.multiclass import OneVsRestClassifier
from torch import nn

Array = TypeVar("Array", np.ndarray, torch.Tensor)


def fold_standardization(weight: Array, bias: Array, mean: Array, scale: Array) -> tuple[Array, Array]:
    """A z-scoring folded into the linear layer after it: ``x @ W'.T + b' == ((x - mean) / scale) @ W.T + b``."""
    folded = weight / scale
    return folded, bias - folded @ mean


def probe_tensors(model: Any) -> dict[str, np.ndarray]:
    """Standardization and linear weights: score = softmax/sigmoid(((x - mean) / scale) @ coef.T + intercept)."""
    scaler, estimator = model[0], model[-1]
    if isinstance(estimator, OneVsRestClassifier):
        fitted = estimator.estimators_
        coef = np.concatenate([e.coef_ for e in fitted])
        intercept = np.concatenate([e.intercept_ for e in fitted])
    else:
        coef, intercept = estimator.coef_, estimator.intercept_
    return {
        "mean": scaler.mean_,
        "scale": scaler.scale_,
        "coef": coef,
        "intercept": intercept,
        "classes_index": np.asarray(getattr(estimator, "classes_", np.arange(len(coef))), dtype=np.int64),
    }


class ProbeHead(nn.Module):
    """``((x - mean) / scale) @ coef.T + intercept`` then softmax, sigmoid, or per-label sigmoid.

    Mirrors scikit-learn's ``predict_proba``: a two-class logistic regression stores one row of weights (sigmoid of
    the positive class), a multi-class one a row per class (softmax), one-vs-rest multi-label a row per label
    (independent sigmoids). Columns are placed at ``classes_index`` so classes unseen in training score 0, exactly
    as the probe scored them when the run's metrics were computed.
    """

    def __init__(self, tensors: dict[str, np.ndarray], n_classes: int, multilabel: bool) -> None:
        super().__init__()
        coef, intercept = np.atleast_2d(tensors["coef"]), np.atleast_1d(tensors["intercept"])
        weight, bias = fold_standardization(coef, intercept, tensors["mean"], tensors["scale"])
        index = np.asarray(tensors["classes_index"], dtype=np.int64)
        placement = np.zeros((len(index), n_classes), dtype=np.float32)
        placement[np.arange(len(index)), index] = 1.0
        self.multilabel = multilabel
        self.binary = not multilabel and coef.shape[0] == 1
        self.register_buffer("weight", torch.as_tensor(weight, dtype=torch.float32))
        self.register_buffer("bias", torch.as_tensor(bias, dtype=torch.float32))
        self.register_buffer("placement", torch.from_numpy(placement))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        logits = features @ self.weight.T + self.bias
        if self.multilabel:
            probabilities = torch.sigmoid(logits)
        elif self.binary:
            positive = torch.sigmoid(logits)
            probabilities = torch.cat([1 - positive, positive], dim=1)
        else:
            probabilities = torch.softmax(logits, dim=1)
        return probabilities @ self.placement
