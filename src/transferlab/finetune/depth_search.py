"""How deep to unfreeze, and at which LR: a small Optuna study of short fine-tunes on a subset of the training data.

Depth and LR interact (deeper unfreezing wants a smaller LR) and their best values depend on how far the new data is
from ImageNet, so they are searched rather than guessed. Each trial is a real :func:`finetune` (same engine, BN
policy, early stopping) on a stratified fraction of the training split, scored by the best validation metric of
its last stage; the test split is never looked at.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import optuna

from transferlab.backbones.cut import cut_network
from transferlab.data import stratified_subset
from transferlab.data.split import Split
from transferlab.fileio import write_json
from transferlab.finetune.blocks import freeze_units
from transferlab.finetune.options import FinetuneOptions
from transferlab.finetune.run import finetune
from transferlab.record import layout

if TYPE_CHECKING:
    from transferlab.prepare import PreparedData

log = logging.getLogger(__name__)

LR_RANGE = (1e-4, 3e-3)


def _training_subset(prepared: PreparedData, fraction: float, seed: int) -> PreparedData:
    """``prepared`` with only a stratified ``fraction`` of the train rows and no test rows (marked 'unused')."""
    train = prepared.split.indices("train")
    keep = train[stratified_subset(prepared.dataset.y[train], fraction, seed)] if fraction < 1 else train
    assignment = np.where(prepared.split.assignment == "val", "val", "unused").astype(object)
    assignment[keep] = "train"
    return dataclasses.replace(prepared, split=Split(assignment.astype(str)))


@contextmanager
def _quiet(name: str) -> Iterator[None]:
    """Hide a trial's own epoch lines (one line per depth trial is shown instead)."""
    logger = logging.getLogger(name)
    level = logger.level
    logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        logger.setLevel(level)


def search_unfreeze(
    prepared: PreparedData,
    run_dir: Path,
    options: FinetuneOptions,
    *,
    trials: int = 6,
    fraction: float = 0.5,
    max_depth: int | None = None,
) -> tuple[FinetuneOptions, dict[str, Any]]:
    """Search ``top:K`` (K = 0 … ``max_depth`` units) and the head LR; returns ``options`` with the best of both and
    the study record, also written to ``run_dir/finetune_search.json``."""
    body, _ = cut_network(copy.deepcopy(prepared.backbone.model), prepared.config.cut_point)
    n_units = len(freeze_units(body))
    depth_limit = min(max_depth or n_units, n_units)
    subset = _training_subset(prepared, fraction, options.seed)
    rows: list[dict[str, Any]] = []

    def objective(trial: optuna.Trial) -> float:
        depth = trial.suggest_int("depth", 0, depth_limit)
        lr = trial.suggest_float("lr", *LR_RANGE, log=True)
        trial_options = dataclasses.replace(options, unfreeze=f"top:{depth}" if depth else "none", lr=lr, resume=False)
        started = time.perf_counter()
        with tempfile.TemporaryDirectory() as scratch, _quiet("transferlab.finetune"):
            outcome = finetune(subset, Path(scratch), trial_options)
        value = float(outcome.stages[-1]["best_val_metric"])
        rows.append({"number": trial.number, "depth": depth, "lr": lr, "value": value,
                     "seconds": time.perf_counter() - started})  # fmt: skip
        log.info(f"depth trial {trial.number}: top:{depth}, lr {lr:.2g} → val {outcome.metric} {value:.4f}")
        return value

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.TPESampler(seed=options.seed))
    study.optimize(objective, n_trials=trials)
    depth, lr = study.best_params["depth"], study.best_params["lr"]
    record = {
        "fraction": fraction,
        "n_train": len(subset.split.indices("train")),
        "best": {"unfreeze": f"top:{depth}" if depth else "none", "lr": lr, "value": study.best_value},
        "trials": rows,
    }
    write_json(Path(run_dir) / layout.FINETUNE_SEARCH, record)
    return dataclasses.replace(options, unfreeze=record["best"]["unfreeze"], lr=lr), record
