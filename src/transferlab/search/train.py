"""Train one head on in-memory features with early stopping; report each epoch so a pruner can stop it early."""

from __future__ import annotations

import copy
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from sklearn.metrics import average_precision_score
from torch import nn

from transferlab.heads import Head, HeadSpec, build_head
from transferlab.search.data import HeadData

EVAL_BATCH = 1024


@dataclass(frozen=True)
class TrainParams:
    """Optimization settings of one trial (the head's shape lives in its HeadSpec)."""

    lr: float = 1e-3
    weight_decay: float = 1e-4
    batch_size: int = 64
    epochs: int = 40
    patience: int = 6


@dataclass
class TrainedHead:
    """The head restored to its best validation epoch, its curve and why training stopped."""

    head: Head
    curve: list[dict[str, float]] = field(default_factory=list)
    best_epoch: int = 0
    best_loss: float = float("inf")
    best_metric: float = float("nan")
    stop_reason: str = "max_epochs"
    seconds: float = 0.0


def score(y: np.ndarray, logits: torch.Tensor, multilabel: bool) -> float:
    """The search metric: accuracy (single-label) or macro average precision over labels present (multi-label)."""
    logits = logits.float().cpu()
    if not multilabel:
        return float((logits.argmax(1).numpy() == y).mean())
    present = (y.sum(axis=0) > 0) & (y.sum(axis=0) < len(y))
    if not present.any():
        return 0.0
    return float(average_precision_score(y[:, present], torch.sigmoid(logits).numpy()[:, present], average="macro"))


def _loss_fn(multilabel: bool) -> nn.Module:
    return nn.BCEWithLogitsLoss() if multilabel else nn.CrossEntropyLoss()


def _target(y: np.ndarray, multilabel: bool) -> torch.Tensor:
    return torch.from_numpy(y.astype(np.float32)) if multilabel else torch.from_numpy(y.astype(np.int64))


@torch.no_grad()
def predict_logits(head: Head, x: torch.Tensor) -> torch.Tensor:
    head.eval()
    return torch.cat([head(x[i : i + EVAL_BATCH]) for i in range(0, len(x), EVAL_BATCH)]) if len(x) else x


@contextmanager
def single_thread() -> Iterator[None]:
    """Run small-head training on one intra-op thread.

    Heads on cached features are tiny matrix products: on a shared CPU, several torch threads spin-waiting for each
    other made each step ~100x slower than one thread; parallelism belongs to trials/workers, not to one step.
    """
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def train_head(
    spec: HeadSpec,
    params: TrainParams,
    data: HeadData,
    *,
    seed: int = 0,
    on_epoch: Callable[[dict[str, float]], None] | None = None,
) -> TrainedHead:
    """Adam(W) on the training split, selected and early-stopped on validation, on the device ``data`` is on.

    ``on_epoch`` receives each curve row; it may raise (e.g. ``optuna.TrialPruned``) to abandon the trial.
    """
    with single_thread():
        return _train(spec, params, data, seed, on_epoch)


def _train(
    spec: HeadSpec,
    params: TrainParams,
    data: HeadData,
    seed: int,
    on_epoch: Callable[[dict[str, float]], None] | None,
) -> TrainedHead:
    start = time.perf_counter()
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    inputs, device = data.inputs(spec), data.device
    head = build_head(spec, data.in_channels, data.spatial, len(data.classes)).to(device)
    fused = device.type in ("cpu", "cuda")  # (fused AdamW kernels exist there)
    optimizer = torch.optim.AdamW(head.parameters(), lr=params.lr, weight_decay=params.weight_decay, fused=fused)
    loss_fn = _loss_fn(data.multilabel)
    x_train, y_train = inputs["train"], _target(data.y["train"], data.multilabel).to(device)
    x_val, y_val = inputs["val"], _target(data.y["val"], data.multilabel).to(device)
    batch = min(params.batch_size, len(x_train))
    result = TrainedHead(head)
    best_state: dict[str, Any] = copy.deepcopy(head.state_dict())
    stale = 0
    for epoch in range(1, params.epochs + 1):
        head.train()
        order = torch.randperm(len(x_train), generator=generator)
        total, outputs = 0.0, []
        # drop a trailing batch of one sample: BatchNorm cannot normalize it
        for begin in range(0, len(order) - (1 if len(order) % batch == 1 else 0), batch):
            rows = order[begin : begin + batch]
            picked = rows.to(device, non_blocking=True)
            logits = head(x_train[picked])
            loss = loss_fn(logits, y_train[picked])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total += float(loss.detach()) * len(rows)
            outputs.append((rows, logits.detach()))
        seen = torch.cat([rows for rows, _ in outputs])
        train_metric = score(data.y["train"][seen.numpy()], torch.cat([o for _, o in outputs]), data.multilabel)
        val_logits = predict_logits(head, x_val)
        val_loss = float(loss_fn(val_logits, y_val)) if len(x_val) else float("nan")
        row = {
            "epoch": epoch,
            "train_loss": total / max(1, len(seen)),
            "val_loss": val_loss,
            "train_metric": train_metric,
            "val_metric": score(data.y["val"], val_logits, data.multilabel) if len(x_val) else float("nan"),
        }
        result.curve.append(row)
        # Selection by validation loss, not accuracy: on ~100 validation images accuracy moves in coarse steps and
        # picking its maximum mostly picks noise (on the demo data its correlation with test accuracy across trials
        # was -0.14, against +0.46 for the loss).
        if val_loss < result.best_loss:
            result.best_loss, result.best_metric, result.best_epoch = val_loss, row["val_metric"], epoch
            best_state = copy.deepcopy(head.state_dict())
            stale = 0
        else:
            stale += 1
        if on_epoch is not None:
            on_epoch(row)
        if stale >= params.patience:
            result.stop_reason = f"early_stopping (val loss not improved for {params.patience} epochs)"
            break
    head.load_state_dict(best_state)
    head.eval()
    result.seconds = time.perf_counter() - start
    return result
