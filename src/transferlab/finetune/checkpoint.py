"""Training checkpoints as one safetensors file: tensors for weights and optimizer moments, JSON for the rest.

No pickle anywhere (a checkpoint from someone else cannot run code when loaded): the optimizer's per-parameter
state becomes tensors named ``optimizer.<param index>.<key>``, its hyper-parameters, the LR scheduler's state and
the progress record go into the safetensors metadata as JSON, and the RNG states are tensors + JSON. Restoring all
of them is what makes ``--resume`` reproduce an uninterrupted seeded run exactly.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save

from transferlab.errors import TransferlabError
from transferlab.fileio import atomic_write_bytes

if TYPE_CHECKING:
    from transferlab.finetune.engine import EarlyStopping, StageRun


def optimizer_tensors(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """(per-parameter state tensors, JSON-able param groups + scalar state) of ``optimizer``."""
    state = optimizer.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for index, values in state["state"].items():
        for key, value in values.items():
            if isinstance(value, torch.Tensor):
                tensors[f"optimizer.{index}.{key}"] = value
            else:
                scalars.setdefault(str(index), {})[key] = value
    return tensors, {"param_groups": state["param_groups"], "scalars": scalars}


def load_optimizer(optimizer: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
    state: dict[int, dict[str, Any]] = {}
    for name, value in tensors.items():
        if name.startswith("optimizer."):
            _, index, key = name.split(".", 2)
            state.setdefault(int(index), {})[key] = value
    for index, values in meta["scalars"].items():
        state.setdefault(int(index), {}).update(values)
    optimizer.load_state_dict({"state": state, "param_groups": meta["param_groups"]})


def rng_state() -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """torch, numpy and Python RNG states (augmentation, shuffling and dropout draw from them)."""
    kind, keys, position, has_gauss, cached = np.random.get_state()
    version, python_state, gauss = random.getstate()
    tensors = {"rng.torch": torch.get_rng_state(), "rng.numpy": torch.from_numpy(np.asarray(keys, dtype=np.int64))}
    if torch.cuda.is_initialized():  # dropout on a GPU draws from its own generator
        tensors["rng.cuda"] = torch.cuda.get_rng_state()
    meta = {
        "numpy": [kind, int(position), int(has_gauss), float(cached)],
        "python": [version, list(python_state), gauss],
    }
    return tensors, meta


def set_rng_state(tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
    """Restore :func:`rng_state`'s states; a GPU's generator only where there is one (a checkpoint made on a GPU
    resumes on the CPU)."""
    torch.set_rng_state(tensors["rng.torch"])
    if "rng.cuda" in tensors and torch.cuda.is_available():
        torch.cuda.set_rng_state(tensors["rng.cuda"])
    kind, position, has_gauss, cached = meta["numpy"]
    np.random.set_state((kind, tensors["rng.numpy"].numpy().astype(np.uint32), position, has_gauss, cached))
    version, python_state, gauss = meta["python"]
    random.setstate((version, tuple(python_state), gauss))


def save_checkpoint(path: Path, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
    """Write tensors + JSON metadata atomically (a kill mid-write leaves the previous checkpoint intact).

    Tensors are stored from host memory, so the file does not depend on the device it was trained on; loading
    always gives CPU tensors, which ``load_state_dict`` copies onto wherever the resumed network lives."""
    contiguous = {name: tensor.detach().to("cpu").contiguous().clone() for name, tensor in tensors.items()}
    atomic_write_bytes(path, save(contiguous, metadata={"transferlab": json.dumps(meta)}))


def load_checkpoint(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    if not path.is_file():
        raise TransferlabError(f"nothing to resume: no checkpoint at {path}")
    with safe_open(str(path), framework="pt") as handle:
        metadata = handle.metadata() or {}
        tensors = {name: handle.get_tensor(name) for name in handle.keys()}  # noqa: SIM118 (safe_open has no iter)
    if "transferlab" not in metadata:
        raise TransferlabError(f"{path} is not a transferlab fine-tuning checkpoint")
    return tensors, json.loads(metadata["transferlab"])


def prefixed(prefix: str, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {f"{prefix}.{name}": tensor for name, tensor in tensors.items()}


def unprefixed(prefix: str, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    start = len(prefix) + 1
    return {name[start:]: tensor for name, tensor in tensors.items() if name.startswith(prefix + ".")}


class Checkpointer:
    """A :class:`~transferlab.finetune.engine.Callback`: an atomic checkpoint after every epoch that does not end its
    stage (with optimizer, scheduler, RNG and early-stopping state: a stage resumes from it bit-for-bit) and at each
    stage's end; rank 0 writes."""

    def __init__(self, path: Path, fingerprint: str, tracker: EarlyStopping, writer: bool) -> None:
        self.path, self.fingerprint, self.tracker, self.writer = path, fingerprint, tracker, writer

    def on_stage_start(self, run: StageRun) -> None:
        if run.resume is not None:
            tensors, meta = run.resume
            run.net.load_state_dict(unprefixed("model", tensors))
            self.tracker.reset(**meta["tracker"])
            self.tracker.best_state = unprefixed("best", tensors)
            load_optimizer(run.optimizer, tensors, meta["optimizer"])
            run.scheduler.load_state_dict(meta["scheduler"])
            set_rng_state(tensors, meta["rng"])

    def on_epoch_end(self, run: StageRun, entry: dict[str, Any]) -> None:
        if not run.ending:
            self._save(run, done=False)

    def on_stage_end(self, run: StageRun) -> None:
        self._save(run, done=True)

    def _save(self, run: StageRun, done: bool) -> None:
        if not self.writer:
            return
        tensors, rng_meta = rng_state()
        tensors |= prefixed("model", run.net.state_dict())
        meta: dict[str, Any] = {
            "fingerprint": self.fingerprint,
            "stage": run.index,
            "epoch": run.epoch,
            "done": done,
            "records": run.records,
            "rng": rng_meta,
        }
        if not done:
            optimizer_state, meta["optimizer"] = optimizer_tensors(run.optimizer)
            tensors |= optimizer_state | prefixed("best", self.tracker.best_state)
            meta["tracker"] = {key: getattr(self.tracker, key) for key in ("best_metric", "best_epoch", "bad_epochs")}
            meta["scheduler"] = run.scheduler.state_dict()
        save_checkpoint(self.path, tensors, meta)
