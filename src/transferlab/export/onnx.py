"""``transferlab export RUN --format onnx``: one ONNX graph from normalized images to probabilities.

The graph has a dynamic batch axis and opset 18 (run by every onnxruntime since 1.14). Resizing, cropping and
normalizing stay outside the graph, written to ``preprocessing.json`` with numbers any runtime can follow, because
image decoding differs per platform anyway. Every export is checked on the spot: onnxruntime must reproduce the
PyTorch probabilities on a random batch, otherwise nothing is written.
"""

from __future__ import annotations

import io
import math
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from transferlab.devices import CPU
from transferlab.errors import TransferlabError
from transferlab.fileio import atomic_write_bytes, write_json
from transferlab.model import LoadedModel, load_run_model

OPSET = 18
MODEL_FILE = "model.onnx"
PREPROCESSING_FILE = "preprocessing.json"
INPUT_NAME = "images"
OUTPUT_NAME = "probabilities"
CHECK_TOLERANCE = 1e-4


@dataclass
class ExportResult:
    """Where the export went and how closely onnxruntime matched PyTorch on the check batch."""

    out_dir: Path
    model_path: Path
    preprocessing_path: Path
    max_abs_diff: float


def preprocessing_description(model: LoadedModel) -> dict[str, Any]:
    """Everything a consumer needs besides the graph: the exact eval preprocessing, classes and thresholds."""
    prep = model.preprocessing
    channels, height, width = prep["input_size"]
    crop_pct = float(prep.get("crop_pct") or 1.0)
    return {
        "model_file": MODEL_FILE,
        "input_name": INPUT_NAME,
        "output_name": OUTPUT_NAME,
        "input_size": [channels, height, width],
        "layout": "NCHW float32, RGB",
        "resize": {
            "shorter_side": math.floor(min(height, width) / crop_pct),
            "interpolation": prep["interpolation"],
        },
        "crop": {"mode": prep.get("crop_mode", "center"), "crop_pct": crop_pct, "size": [height, width]},
        "scale": "pixel / 255",
        "mean": list(prep["mean"]),
        "std": list(prep["std"]),
        "preprocessing": prep,
        "output": "per-label sigmoid probabilities" if model.multilabel else "softmax probabilities over classes",
        "classes": model.classes,
        "multilabel": model.multilabel,
        "thresholds": model.thresholds,
        "backbone": model.backbone,
        "cut_point": model.cut_point,
        "model_kind": model.kind,
        "opset": OPSET,
    }


def _to_onnx_bytes(module: torch.nn.Module, example: torch.Tensor) -> bytes:
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(
            module,
            (example,),
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
            opset_version=OPSET,
            dynamo=True,
            verbose=False,
        )
    program.save(buffer)
    return buffer.getvalue()


def execution_providers(device: torch.device, available: list[str]) -> list[Any]:
    """onnxruntime providers for ``device``: CUDA first where the installed onnxruntime has it and the device is a
    GPU (the CPU stays as the fallback for operators CUDA lacks), else the CPU alone."""
    cuda = "CUDAExecutionProvider"
    if device.type == "cuda" and cuda in available:
        return [(cuda, {"device_id": device.index or 0}), "CPUExecutionProvider"]
    return ["CPUExecutionProvider"]


def onnx_session(model_bytes: bytes | Path, device: torch.device = CPU) -> Any:
    """An onnxruntime session on ``device`` where it can run there (import deferred: onnxruntime is the optional
    ``export`` extra)."""
    try:
        import onnxruntime
    except ImportError:
        raise TransferlabError("ONNX needs onnxruntime: pip install 'transferlab[export]'") from None
    source = str(model_bytes) if isinstance(model_bytes, Path) else model_bytes
    providers = execution_providers(device, onnxruntime.get_available_providers())
    return onnxruntime.InferenceSession(source, providers=providers)


def export_onnx(run_dir: str | Path, out_dir: str | Path | None = None, *, check_batch: int = 3) -> ExportResult:
    """Export the run's final model to ``out_dir`` (default ``<run>/export``) as ONNX + ``preprocessing.json``."""
    model = load_run_model(run_dir)
    out = Path(out_dir) if out_dir is not None else Path(run_dir) / "export"
    generator = torch.Generator().manual_seed(0)
    example = torch.randn(check_batch, *model.preprocessing["input_size"], generator=generator).to(model.module.device)
    try:
        model_bytes = _to_onnx_bytes(model.module, example[:2])
    except ImportError as error:
        raise TransferlabError(
            f"ONNX export needs onnx and onnxscript (pip install 'transferlab[export]'): {error}"
        ) from None
    with torch.inference_mode():
        expected = model.module(example).cpu().numpy()
    actual = onnx_session(model_bytes).run([OUTPUT_NAME], {INPUT_NAME: example.cpu().numpy()})[0]
    difference = float(np.abs(actual - expected).max())
    if not difference <= CHECK_TOLERANCE:
        raise TransferlabError(f"ONNX export check failed: onnxruntime differs from PyTorch by {difference:.2e}")
    model_path, preprocessing_path = out / MODEL_FILE, out / PREPROCESSING_FILE
    atomic_write_bytes(model_path, model_bytes)
    write_json(preprocessing_path, {**preprocessing_description(model), "check_max_abs_diff": difference})
    return ExportResult(out, model_path, preprocessing_path, difference)
