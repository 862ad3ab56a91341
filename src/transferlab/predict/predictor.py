"""One predictor for both model forms: a run directory (PyTorch) or an exported ONNX directory (onnxruntime).

Both share the decoding and preprocessing code of feature extraction, so a prediction sees the image exactly as
training did, and both apply the run's tuned multi-label thresholds.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader

from transferlab import devices
from transferlab.data.dataset import Problem, printable
from transferlab.errors import TransferlabError
from transferlab.export.onnx import INPUT_NAME, MODEL_FILE, OUTPUT_NAME, PREPROCESSING_FILE, onnx_session
from transferlab.features.extract import ImageFiles, collate_images
from transferlab.fileio import read_json, write_csv
from transferlab.model import load_run_model
from transferlab.model.load import make_transform
from transferlab.record import layout
from transferlab.record.predictions import PROBABILITY_PREFIX, decide


@dataclass
class Predictor:
    """``scores`` maps a normalized image batch (N, 3, H, W) to probabilities (N, classes)."""

    classes: list[str]
    multilabel: bool
    thresholds: np.ndarray | None
    preprocessing: dict[str, Any]
    scores: Callable[[torch.Tensor], np.ndarray]
    source: str
    device: torch.device = devices.CPU

    def _cutoffs(self) -> np.ndarray:
        return self.thresholds if self.thresholds is not None else np.full(len(self.classes), 0.5)

    def over_threshold(self, scores: np.ndarray) -> np.ndarray:
        """Multi-label decisions: each label's score against its tuned threshold (0.5 where none was tuned)."""
        return scores >= self._cutoffs()

    def decide(self, scores: np.ndarray) -> tuple[list[str], np.ndarray]:
        """Labels and confidences by the rule of the run's own ``predictions.csv`` (0.5 where none was tuned)."""
        return decide(scores, self.classes, self._cutoffs() if self.multilabel else None)


def _thresholds(values: Sequence[float] | None) -> np.ndarray | None:
    return None if values is None else np.asarray(values, dtype=np.float32)


def _torch_predictor(run: Path, device: torch.device) -> Predictor:
    model = load_run_model(run, device)

    def scores(images: torch.Tensor) -> np.ndarray:
        with torch.inference_mode():
            return model.module(images.to(device, non_blocking=True)).float().cpu().numpy()

    thresholds = _thresholds(model.thresholds) if model.multilabel else None
    return Predictor(model.classes, model.multilabel, thresholds, model.preprocessing, scores, f"run {run}", device)


def _onnx_predictor(folder: Path, device: torch.device) -> Predictor:
    meta = read_json(folder / PREPROCESSING_FILE)
    session = onnx_session(folder / meta.get("model_file", MODEL_FILE), device)

    def scores(images: torch.Tensor) -> np.ndarray:
        return session.run([OUTPUT_NAME], {INPUT_NAME: images.numpy()})[0]

    thresholds = _thresholds(meta.get("thresholds")) if meta["multilabel"] else None
    source = f"onnx {folder}"
    return Predictor(meta["classes"], meta["multilabel"], thresholds, meta["preprocessing"], scores, source, device)


def load_predictor(model: str | Path, *, device: str | torch.device | None = devices.AUTO) -> Predictor:
    """An export directory (has ``preprocessing.json``) or a run directory (``finetuned.*`` or ``probe.*``), set to
    run on ``device`` (``transferlab.devices``; ONNX uses onnxruntime's CUDA provider where it has one)."""
    path = Path(model)
    where = devices.resolve_device(device)
    if (path / PREPROCESSING_FILE).is_file():
        return _onnx_predictor(path, where)
    if (path / layout.FINETUNED_META).is_file() or (path / layout.PROBE_META).is_file():
        return _torch_predictor(path, where)
    raise TransferlabError(f"{path}: neither a run with a model (probe.json) nor an ONNX export (preprocessing.json)")


@dataclass
class Predictions:
    """Scored images (in input order, skipping failures), their decisions, and the inputs that were skipped."""

    paths: list[Path]
    scores: np.ndarray
    labels: list[str]
    confidence: np.ndarray
    skipped: list[Problem] = field(default_factory=list)


def predict_paths(
    predictor: Predictor, paths: Sequence[str | Path], *, batch_size: int | None = None, workers: int = 0
) -> Predictions:
    """Score every decodable image; undecodable ones are skipped with the loader's reason (``batch_size`` None:
    the predictor's device default)."""
    files = [Path(p) for p in paths]
    loader = DataLoader(
        ImageFiles(files, make_transform(predictor.preprocessing)),
        batch_size=batch_size or devices.default_batch_size(predictor.device),
        num_workers=workers,
        collate_fn=collate_images,
        **devices.loader_options(predictor.device),
    )
    kept: list[int] = []
    parts: list[np.ndarray] = []
    skipped: list[Problem] = []
    for indices, images, failed in loader:
        skipped += [Problem(str(files[i]), reason) for i, reason in failed]
        if images is not None:
            kept += indices
            parts.append(predictor.scores(images))
    scores = np.concatenate(parts) if parts else np.zeros((0, len(predictor.classes)), dtype=np.float32)
    labels, confidence = predictor.decide(scores)
    return Predictions([files[i] for i in kept], scores, labels, confidence, skipped)


def write_predictions_csv(path: str | Path, predictions: Predictions, classes: list[str]) -> Path:
    """``path,predicted,confidence,p:<class>...``; multi-label ``predicted`` joins labels with ';'."""
    rows = zip(predictions.paths, predictions.labels, predictions.confidence, predictions.scores, strict=True)
    out = Path(path)
    write_csv(
        out,
        ["path", "predicted", "confidence", *(PROBABILITY_PREFIX + name for name in classes)],
        (
            [printable(str(file)), label, f"{confidence:.4f}", *(f"{value:.6f}" for value in row)]
            for file, label, confidence, row in rows
        ),
    )
    return out
