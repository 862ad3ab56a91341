"""Rebuild a run's final model from its directory: ``finetuned.*`` when fine-tuning ran, else ``probe.*``.

Only plain tensors (safetensors) and JSON are read, so loading a run someone sent you cannot execute code. The
probe needs the backbone's pretrained weights (found the way ``transferlab run`` found them, then checked against
the SHA-256 the run recorded); a fine-tuned model carries all its weights itself.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from timm.data import create_transform

from transferlab.backbones import load_backbone
from transferlab.backbones.cut import JOIN, cut_indices, cut_network
from transferlab.backbones.model import create_network, read_weights
from transferlab.backbones.registry import weights_files
from transferlab.errors import TransferlabError
from transferlab.fileio import read_json
from transferlab.heads import HeadSpec
from transferlab.model.ensemble import AveragedModel
from transferlab.model.network import CPU, CutModel, build_model, load_saved_state
from transferlab.model.probe_head import SIGNED_SQRT, ProbeHead
from transferlab.record import layout

PREPROCESSING_KEYS = ("input_size", "interpolation", "mean", "std", "crop_pct", "crop_mode")


@dataclass
class LoadedModel:
    """The network plus what is needed to use it: preprocessing, class names and multi-label thresholds."""

    module: CutModel | AveragedModel
    classes: list[str]
    multilabel: bool
    thresholds: list[float] | None
    preprocessing: dict[str, Any]
    backbone: str
    cut_point: str
    kind: str

    def transform(self) -> Any:
        """PIL image → normalized tensor, exactly the evaluation preprocessing the run's features used."""
        return make_transform(self.preprocessing)


def make_transform(preprocessing: dict[str, Any]) -> Any:
    config = {key: tuple(value) if isinstance(value, list) else value for key, value in preprocessing.items()}
    return create_transform(**{key: config[key] for key in PREPROCESSING_KEYS if key in config}, is_training=False)


def _read(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise TransferlabError(f"{path.parent}: not a run directory with a model ({path.name} missing)")
    return read_json(path)


def _preprocessing(data_config: dict[str, Any]) -> dict[str, Any]:
    missing = [key for key in PREPROCESSING_KEYS[:4] if key not in data_config]
    if missing:
        raise TransferlabError(f"run records no preprocessing ({', '.join(missing)} missing)")
    return {key: data_config[key] for key in PREPROCESSING_KEYS if key in data_config}


def _load_probe(run: Path, folder: Path | None = None) -> tuple[CutModel, dict[str, Any], dict[str, Any]]:
    """Backbone + the probe saved in ``folder`` (default: the run directory itself; an ensemble member's folder)."""
    saved = _read((folder or run) / layout.PROBE_META)
    config = _read(run / layout.CONFIG)
    files = weights_files(config.get("weights"), config.get("backbone", saved["backbone"]), config.get("backbones"))
    backbone = load_backbone(
        saved["backbone"],
        files.get(saved["backbone"]),
        image_size=config.get("image_size"),
        crop_pct=config.get("crop_pct"),
    )
    if backbone.weights.sha256 != saved["weights_sha256"]:
        raise TransferlabError(
            f"{run}: the weights found for {saved['backbone']} ({backbone.weights.path}) are not the ones this run "
            f"used (sha256 {backbone.weights.sha256[:12]} != {saved['weights_sha256'][:12]})"
        )
    tensors = {name: tensor.numpy() for name, tensor in read_weights((folder or run) / layout.PROBE_WEIGHTS).items()}
    signed = saved.get("features") == SIGNED_SQRT  # (runs before it probed raw features and say nothing)
    head = ProbeHead(tensors, len(saved["classes"]), saved["multilabel"], signed_sqrt=signed)
    # (runs before ensembles recorded the preprocessing in record.json only)
    preprocessing = saved.get("preprocessing") or _read(run / layout.RECORD).get("backbone", {}).get("preprocessing")
    preprocessing = preprocessing or backbone.data_config
    if JOIN in saved["cut_point"]:  # several depths side by side: the network stays whole
        joined = cut_indices(backbone.model, saved["cut_point"])
        return CutModel(backbone.model, head, None, pooled=True, joined=joined), saved, preprocessing
    body, index = cut_network(backbone.model, saved["cut_point"])
    return CutModel(body, head, index, pooled=True), saved, preprocessing


def _load_ensemble(run: Path) -> tuple[AveragedModel, dict[str, Any], dict[str, Any]]:
    """Every member's backbone + probe behind one input normalized as the first member's (ensemble.json)."""
    saved = _read(run / layout.ENSEMBLE)
    loaded = [_load_probe(run, run / folder) for folder in saved["members"]]
    module = AveragedModel([m for m, _, _ in loaded], [_preprocessing(p) for _, _, p in loaded])
    names = "+".join(meta["backbone"] for _, meta, _ in loaded)
    cut_points = "+".join(meta["cut_point"] for _, meta, _ in loaded)
    return module, {**saved, "backbone": names, "cut_point": cut_points}, loaded[0][2]


def _load_finetuned(run: Path) -> tuple[CutModel, dict[str, Any], dict[str, Any]]:
    saved = _read(run / layout.FINETUNED_META)
    preprocessing = _preprocessing(saved["preprocessing"])
    spec = HeadSpec.from_dict(saved["head_spec"])
    args = (saved["cut_point"], spec, len(saved["classes"]), preprocessing["input_size"])
    module = build_model(create_network(saved["backbone"]), *args)
    module.output = spec.output
    path = run / layout.FINETUNED_WEIGHTS
    load_saved_state(module, read_weights(path), str(path))
    return module, saved, preprocessing


def load_run_model(run_dir: str | Path, device: torch.device = CPU) -> LoadedModel:
    """The run's deployed model in eval mode on ``device``: the fine-tuned network if it has one and ``deployed.json``
    does not name the probe (fine-tuning that lost to it on validation), the averaged probes of several backbones
    where ``deployed.json`` names the ensemble, else backbone + probe."""
    run = Path(run_dir)
    if not run.is_dir():
        raise TransferlabError(f"run directory not found: {run}")
    deployed = read_json(run / layout.DEPLOYED) if (run / layout.DEPLOYED).is_file() else {}
    fine_tuned = (run / layout.FINETUNED_META).is_file() and deployed.get("stage", "fine-tuning") == "fine-tuning"
    kind = "finetuned" if fine_tuned else "ensemble" if deployed.get("stage") == "ensemble" else "probe"
    loader = {"finetuned": _load_finetuned, "ensemble": _load_ensemble, "probe": _load_probe}[kind]
    module, saved, preprocessing = loader(run)
    module.device = device
    return LoadedModel(
        module.to(device).eval(),
        list(saved["classes"]),
        bool(saved["multilabel"]),
        saved.get("thresholds"),
        _preprocessing(preprocessing),
        saved["backbone"],
        saved["cut_point"],
        kind,
    )
