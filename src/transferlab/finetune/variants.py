"""Thin layers over :func:`finetune`: k-fold cross-validation and the from-scratch baseline.

k-fold: one test split of a few hundred images gives a test accuracy with a spread of several points; K folds give
K test estimates on disjoint test sets, reported as mean ± standard deviation. Folds are stratified (the same
strata as the train/val/test split, so multi-label sets work too), seeded, and keep identical files (same content
hash) in one fold so duplicates cannot leak from train into test. Inside each fold's non-test part a validation
split is drawn as usual (early stopping needs it).

From scratch: the same architecture, head, data and schedule with random initial weights, every unit trained at one
LR. The gap to the pretrained run is what transfer bought.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import timm
import torch
from sklearn.model_selection import StratifiedGroupKFold

from transferlab.data.split import Split, make_split, strata
from transferlab.distributed import Distributed, from_environment
from transferlab.errors import TransferlabError
from transferlab.fileio import read_json, write_json
from transferlab.finetune.options import FinetuneOptions
from transferlab.finetune.run import FinetuneOutcome, finetune
from transferlab.metrics import headline
from transferlab.record import layout

if TYPE_CHECKING:
    from transferlab.prepare import PreparedData

log = logging.getLogger(__name__)


def fold_splits(prepared: PreparedData, folds: int, seed: int) -> list[Split]:
    """``folds`` train/val/test splits whose test parts partition the data (stratified, seeded, duplicate-safe)."""
    y, hashes = prepared.dataset.y, prepared.hashes
    if not 2 <= folds <= len(y):
        raise TransferlabError(f"--folds must be between 2 and the number of images ({len(y)}), got {folds}")
    keys = strata(y)
    smallest = min(np.unique(keys, return_counts=True)[1])
    if smallest < folds:
        raise TransferlabError(f"--folds {folds}: the rarest class (or label set) has only {smallest} images")
    # the val share of all data stays as configured, so it is a larger share of each fold's non-test part
    val_fraction = min(0.5, prepared.config.val_fraction * folds / (folds - 1))
    splitter = StratifiedGroupKFold(n_splits=folds, shuffle=True, random_state=seed)
    splits = []
    for fold, (rest, _test) in enumerate(splitter.split(np.zeros(len(y)), keys, hashes)):
        inner = make_split(
            y[rest], [hashes[i] for i in rest], seed=seed + fold, val_fraction=val_fraction, test_fraction=0.0
        )
        assignment = np.full(len(y), "test", dtype=object)
        assignment[rest] = inner.assignment
        splits.append(Split(assignment.astype(str)))
    return splits


def finetune_folds(
    prepared: PreparedData,
    run_dir: Path,
    options: FinetuneOptions,
    folds: int,
    *,
    distributed: Distributed | None = None,
) -> dict[str, Any]:
    """Fine-tune once per fold into ``run_dir/fold-<i>/`` and write ``run_dir/folds.json`` with mean ± std.

    The standard deviation is the sample one (ddof=1) over folds: the spread a new split would show.
    """
    distributed = distributed or from_environment(prepared.device.type)
    rows: list[dict[str, Any]] = []
    metric = ""
    for fold, split in enumerate(fold_splits(prepared, folds, options.seed)):
        log.info(f"fold {fold + 1}/{folds}: {split.counts()}")
        fold_dir = Path(run_dir) / f"fold-{fold}"
        outcome = finetune(replace(prepared, split=split), fold_dir, options, distributed=distributed)
        metric = outcome.metric
        rows.append(
            {
                "fold": fold,
                "split_counts": split.counts(),
                "val_metric": headline(outcome.metrics["val"])[1],
                "test_metric": headline(outcome.metrics["test"])[1],
                "run_dir": str(fold_dir),
            }
        )
    values = np.asarray([row["test_metric"] for row in rows], dtype=float)
    summary = {
        "k": folds,
        "seed": options.seed,
        "metric": metric,
        "mean": float(values.mean()),
        "std": float(values.std(ddof=1)),
        "folds": rows,
    }
    if distributed.is_main:
        write_json(Path(run_dir) / layout.FOLDS, summary)
    log.info(f"{folds}-fold test {metric}: {summary['mean']:.4f} ± {summary['std']:.4f} (sample std over folds)")
    return summary


def finetune_from_scratch(
    prepared: PreparedData,
    run_dir: Path,
    options: FinetuneOptions,
    *,
    distributed: Distributed | None = None,
) -> FinetuneOutcome:
    """The baseline: same architecture and data, random init, all units trained at the head LR, no probe warm start.

    ``finetune.json`` gets ``"from_scratch": true`` so a report never mistakes it for a transfer result.
    """
    distributed = distributed or from_environment(prepared.device.type)
    torch.manual_seed(options.seed)
    model = timm.create_model(prepared.backbone.name, pretrained=False, num_classes=0)
    scratch = replace(prepared, backbone=replace(prepared.backbone, model=model))
    options = replace(options, unfreeze="all", stages=1, head_epochs=0, lp_init=False, backbone_lr_ratio=1.0)
    log.info("from scratch: random initial weights; training all units at one LR (--unfreeze is ignored)")
    outcome = finetune(scratch, run_dir, options, distributed=distributed)
    if distributed.is_main:
        record = read_json(Path(run_dir) / layout.FINETUNE)
        write_json(Path(run_dir) / layout.FINETUNE, {**record, "from_scratch": True})
    return outcome
