"""Rebuild a run's final model from its directory: ``finetuned.*`` when fine-tuning ran, else ``probe.*``.

Only plain tensors (safetensors) and JSON are read, so loading a run someone sent you cannot execute code. The
probe needs the backbone's pretrained weights (found the way ``transferlab run`` found them, then checked against
the SHA-256 the run recorded); a fine-tuned model carries all its weights itself.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import timm
import torch
from safetensors import SafetensorError
from safetensors.numpy import load_file as load_numpy
from safetensors.torch import load_file as load_torch
from timm.data import create_transform

from transferlab.backbones import load_backbone
from transferlab.errors import TransferlabError
from transferlab.fileio import read_json
from transferlab.model.network import CutBackbone, RunModel
from transferlab.model.probe_head import ProbeHead

PREPROCESSING_KEYS = ("input_size", "interpolation", "mean", "std", "crop_pct", "crop_mode")


@dataclass
class LoadedModel:
    """The network plus what is needed to use it: preprocessing, class names and multi-label thresholds."""

    module: RunModel
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


def _tensors(path: Path, loader: Any) -> dict[str, Any]:
    try:
        return loader(str(path))
    except (OSError, SafetensorError) as error:
        raise TransferlabError(f"{path}: cannot read model weights ({error})") from None


def _preprocessing(data_config: dict[str, Any]) -> dict[str, Any]:
    missing = [key for key in PREPROCESSING_KEYS[:4] if key not in data_config]
    if missing:
        raise TransferlabError(f"run records no preprocessing ({', '.join(missing)} missing)")
    return {key: data_config[key] for key in PREPROCESSING_KEYS if key in data_config}


def _load_probe(run: Path) -> LoadedModel:
    saved = _read(run / "probe.json")
    config = _read(run / "config.json")
    record = _read(run / "record.json")
    backbone = load_backbone(saved["backbone"], config.get("weights"), image_size=config.get("image_size"))
    if backbone.weights.sha256 != saved["weights_sha256"]:
        raise TransferlabError(
            f"{run}: the weights found for {saved['backbone']} ({backbone.weights.path}) are not the ones this run "
            f"used (sha256 {backbone.weights.sha256[:12]} != {saved['weights_sha256'][:12]})"
        )
    head = ProbeHead(_tensors(run / "probe.safetensors", load_numpy), len(saved["classes"]), saved["multilabel"])
    module = RunModel(CutBackbone(backbone.model, saved["cut_point"]), head, pooled=True, output=None)
    return LoadedModel(
        module.eval(),
        list(saved["classes"]),
        bool(saved["multilabel"]),
        saved.get("thresholds"),
        _preprocessing(record.get("backbone", {}).get("preprocessing") or backbone.data_config),
        saved["backbone"],
        saved["cut_point"],
        "probe",
    )


def _load_finetuned(run: Path) -> LoadedModel:
    from transferlab.heads import HeadSpec, build_head

    saved = _read(run / "finetuned.json")
    preprocessing = _preprocessing(saved["preprocessing"])
    spec = HeadSpec.from_dict(saved["head_spec"])
    network = timm.create_model(saved["backbone"], pretrained=False, num_classes=0)
    backbone = CutBackbone(network, saved["cut_point"])
    with torch.no_grad():
        maps = backbone.eval()(torch.zeros(1, *preprocessing["input_size"]))
    head = build_head(spec, maps.shape[1], tuple(maps.shape[2:]), len(saved["classes"]))
    state = _tensors(run / "finetuned.safetensors", load_torch)
    head_state = {k.removeprefix("head."): v for k, v in state.items() if k.startswith("head.")}
    network_state = {
        k.removeprefix("backbone.").removeprefix("network."): v for k, v in state.items() if not k.startswith("head.")
    }
    try:
        head.load_state_dict(head_state, strict=True)
        missing = network.load_state_dict(network_state, strict=False).missing_keys
        missing = [key for key in missing if not key.endswith("num_batches_tracked")]  # frozen BN has no counter
    except RuntimeError as error:
        raise TransferlabError(f"{run}/finetuned.safetensors does not fit its finetuned.json: {error}") from None
    if missing:
        raise TransferlabError(f"{run}/finetuned.safetensors lacks backbone weights: {', '.join(missing[:5])}")
    module = RunModel(backbone, head, pooled=False, output=spec.output)
    return LoadedModel(
        module.eval(),
        list(saved["classes"]),
        bool(saved["multilabel"]),
        saved.get("thresholds"),
        preprocessing,
        saved["backbone"],
        saved["cut_point"],
        "finetuned",
    )


def load_run_model(run_dir: str | Path) -> LoadedModel:
    """The run's final model in eval mode: the fine-tuned network if the run has one, else backbone + probe."""
    run = Path(run_dir)
    if not run.is_dir():
        raise TransferlabError(f"run directory not found: {run}")
    if (run / "finetuned.json").is_file():
        return _load_finetuned(run)
    return _load_probe(run)
