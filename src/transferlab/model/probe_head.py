"""The saved logistic-regression probe as torch layers, so backbone + probe export and run as one graph."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn


class ProbeHead(nn.Module):
    """``((x - mean) / scale) @ coef.T + intercept`` then softmax, sigmoid, or per-label sigmoid.

    Mirrors scikit-learn's ``predict_proba``: a two-class logistic regression stores one row of weights (sigmoid of
    the positive class), a multi-class one a row per class (softmax), one-vs-rest multi-label a row per label
    (independent sigmoids). Columns are placed at ``classes_index`` so classes unseen in training score 0, exactly
    as the probe scored them when the run's metrics were computed.
    """

    def __init__(self, tensors: dict[str, np.ndarray], n_classes: int, multilabel: bool) -> None:
        super().__init__()
        coef = np.atleast_2d(tensors["coef"])
        index = np.asarray(tensors["classes_index"], dtype=np.int64)
        placement = np.zeros((len(index), n_classes), dtype=np.float32)
        placement[np.arange(len(index)), index] = 1.0
        self.multilabel = multilabel
        self.binary = not multilabel and coef.shape[0] == 1
        self.register_buffer("mean", torch.as_tensor(tensors["mean"], dtype=torch.float32))
        self.register_buffer("scale", torch.as_tensor(tensors["scale"], dtype=torch.float32))
        self.register_buffer("coef", torch.as_tensor(coef, dtype=torch.float32))
        self.register_buffer("intercept", torch.as_tensor(np.atleast_1d(tensors["intercept"]), dtype=torch.float32))
        self.register_buffer("placement", torch.from_numpy(placement))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        logits = ((features - self.mean) / self.scale) @ self.coef.T + self.intercept
        if self.multilabel:
            probabilities = torch.sigmoid(logits)
        elif self.binary:
            positive = torch.sigmoid(logits)
            probabilities = torch.cat([1 - positive, positive], dim=1)
        else:
            probabilities = torch.softmax(logits, dim=1)
        return probabilities @ self.placement
