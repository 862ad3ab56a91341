"""The fitted logistic-regression probe as plain tensors, and as torch layers so backbone + probe run as one graph."""

from __future__ import annotations

from typing import Any, TypeVar

import numpy as np
import torch
from sklearn.multiclass import OneVsRestClassifier
from torch import nn

Array = TypeVar("Array", np.ndarray, torch.Tensor)

SIGNED_SQRT = "signed_sqrt"
"""The probe pipeline's step name for :func:`signed_sqrt` (absent: the probe reads the raw pooled features)."""


def signed_sqrt(x: Array) -> Array:
    """``sign(x) * sqrt(|x|)``, applied to pooled features before the probe's standardisation.

    Power normalisation (Perronnin et al., 2010): a few channels that fire strongly on an image otherwise dominate
    its feature vector, and average pooling makes such bursts common. Chosen by 3-fold CV on the quality suite's
    training folders (``bench/probe_choices.py``): mean 0.9207 vs 0.9135 without it, higher on 4 of 7 datasets.
    """
    if isinstance(x, torch.Tensor):
        return torch.sign(x) * torch.sqrt(torch.abs(x))
    return np.sign(x) * np.sqrt(np.abs(x))


def uses_signed_sqrt(model: Any) -> bool:
    """Whether a fitted probe pipeline takes the signed square root of its features first."""
    return SIGNED_SQRT in model.named_steps


def fold_standardization(weight: Array, bias: Array, mean: Array, scale: Array) -> tuple[Array, Array]:
    """A z-scoring folded into the linear layer after it: ``x @ W'.T + b' == ((x - mean) / scale) @ W.T + b``."""
    folded = weight / scale
    return folded, bias - folded @ mean


def probe_tensors(model: Any) -> dict[str, np.ndarray]:
    """Standardization and linear weights: score = softmax/sigmoid(((x' - mean) / scale) @ coef.T + intercept), where
    x' is x or, when :func:`uses_signed_sqrt`, ``signed_sqrt(x)``."""
    scaler, estimator = model[-2], model[-1]
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
    """``((x - mean) / scale) @ coef.T + intercept`` then softmax, sigmoid, or per-label sigmoid; with
    ``signed_sqrt`` the features go through :func:`signed_sqrt` first, as the probe's did.

    Mirrors scikit-learn's ``predict_proba``: a two-class logistic regression stores one row of weights (sigmoid of
    the positive class), a multi-class one a row per class (softmax), one-vs-rest multi-label a row per label
    (independent sigmoids). Columns are placed at ``classes_index`` so classes unseen in training score 0, exactly
    as the probe scored them when the run's metrics were computed.
    """

    def __init__(
        self, tensors: dict[str, np.ndarray], n_classes: int, multilabel: bool, *, signed_sqrt: bool = False
    ) -> None:
        super().__init__()
        self.signed_sqrt = signed_sqrt
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
        if self.signed_sqrt:
            features = signed_sqrt(features)
        logits = features @ self.weight.T + self.bias
        if self.multilabel:
            probabilities = torch.sigmoid(logits)
        elif self.binary:
            positive = torch.sigmoid(logits)
            probabilities = torch.cat([1 - positive, positive], dim=1)
        else:
            probabilities = torch.softmax(logits, dim=1)
        return probabilities @ self.placement
