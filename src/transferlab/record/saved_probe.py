"""Save a fitted probe as plain tensors (safetensors + JSON), never as a pickle, so loading it cannot run code."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from safetensors.numpy import save as save_tensors
from sklearn.multiclass import OneVsRestClassifier

from transferlab.fileio import atomic_write_bytes, write_json


def _fitted(estimator: Any) -> Any:
    """The refitted model inside a grid search, or the estimator itself."""
    return getattr(estimator, "best_estimator_", estimator)


def probe_tensors(model: Any) -> dict[str, np.ndarray]:
    """Standardization and linear weights: score = softmax/sigmoid(((x - mean) / scale) @ coef.T + intercept)."""
    scaler, estimator = model[0], _fitted(model[-1])
    if isinstance(estimator, OneVsRestClassifier):
        fitted = [_fitted(e) for e in estimator.estimators_]
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


def save_probe(
    run_path: Path, probe: Any, classes: list[str], cut_point: str, backbone: dict[str, Any], multilabel: bool
) -> None:
    tensors = {k: np.ascontiguousarray(v) for k, v in probe_tensors(probe.model).items()}
    atomic_write_bytes(run_path / "probe.safetensors", save_tensors(tensors))
    write_json(
        run_path / "probe.json",
        {
            "classes": classes,
            "cut_point": cut_point,
            "backbone": backbone["backbone"],
            "weights_sha256": backbone["weights_sha256"],
            "multilabel": multilabel,
            "thresholds": None if probe.thresholds is None else probe.thresholds.tolist(),
        },
    )
