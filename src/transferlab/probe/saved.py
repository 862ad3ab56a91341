"""Save a fitted probe as plain tensors (safetensors + JSON), never as a pickle, so loading it cannot run code."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from safetensors.numpy import save as save_tensors

from transferlab.fileio import atomic_write_bytes, write_json
from transferlab.model.probe_head import probe_tensors
from transferlab.record import layout


def save_probe(
    folder: Path, probe: Any, classes: list[str], cut_point: str, backbone: dict[str, Any], multilabel: bool
) -> None:
    """``probe.safetensors`` + ``probe.json`` in ``folder`` (the run directory, or an ensemble member's folder);
    ``backbone`` is the backbone's identity (name, weights digest, the preprocessing its features saw)."""
    tensors = {k: np.ascontiguousarray(v) for k, v in probe_tensors(probe.model).items()}
    atomic_write_bytes(folder / layout.PROBE_WEIGHTS, save_tensors(tensors))
    write_json(
        folder / layout.PROBE_META,
        {
            "classes": classes,
            "cut_point": cut_point,
            "backbone": backbone["backbone"],
            "weights_sha256": backbone["weights_sha256"],
            "preprocessing": backbone["preprocessing"],
            "multilabel": multilabel,
            "features": probe.features_read,
            "thresholds": None if probe.thresholds is None else probe.thresholds.tolist(),
        },
    )
