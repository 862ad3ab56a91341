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
    run_path: Path, probe: Any, classes: list[str], cut_point: str, backbone: dict[str, Any], multilabel: bool
) -> None:
    tensors = {k: np.ascontiguousarray(v) for k, v in probe_tensors(probe.model).items()}
    atomic_write_bytes(run_path / layout.PROBE_WEIGHTS, save_tensors(tensors))
    write_json(
        run_path / layout.PROBE_META,
        {
            "classes": classes,
            "cut_point": cut_point,
            "backbone": backbone["backbone"],
            "weights_sha256": backbone["weights_sha256"],
            "multilabel": multilabel,
            "thresholds": None if probe.thresholds is None else probe.thresholds.tolist(),
        },
    )
