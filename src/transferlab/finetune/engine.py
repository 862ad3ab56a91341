"""The training loop of one fine-tuning stage: AdamW, warm-up + cosine LR, LR sanity restart, early stopping.

Each stage trains a fixed set of units (plus the head) with their BatchNorm policy applied, then restores its best
epoch by validation metric (epoch 0 = the weights it started from, so a stage can never make the model worse on
validation). Every epoch ends with an atomic checkpoint from which :meth:`Trainer.run` resumes bit-for-bit.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.optim.lr_scheduler import LambdaLR
from torch.utils.data import DataLoader

from transferlab.errors import TransferlabError
from transferlab.finetune.batchnorm import BN_POLICY, hold_statistics, recalibrate, set_trainable
from transferlab.finetune.blocks import Unit
from transferlab.finetune.checkpoint import (
    load_optimizer,
    optimizer_tensors,
    prefixed,
    rng_state,
    save_checkpoint,
    set_rng_state,
    unprefixed,
)
from transferlab.finetune.distributed import Distributed
from transferlab.finetune.network import FinetuneNet
from transferlab.finetune.options import FinetuneOptions
from transferlab.metrics import classification_metrics, headline, probabilities

log = logging.getLogger(__name__)

SANITY_FACTOR = 1.5
RESTART_LR_FACTOR = 0.1


@dataclass
class StagePlan:
    """One stage: a name, the units it trains (top first) and its maximum number of epochs."""

    name: str
    trainable: list[Unit]
    epochs: int


class WarmupCosine:
    """LR factor per step: linear warm-up over ``warmup`` steps, then cosine decay to 0 at ``total`` steps.

    A plain object (not a lambda) so ``LambdaLR.state_dict()`` stores its fields and a checkpoint can restore it.
    """

    def __init__(self, warmup: int, total: int) -> None:
        self.warmup = warmup
        self.total = total

    def __call__(self, step: int) -> float:
        if step < self.warmup:
            return (step + 1) / (self.warmup + 1)
        progress = (step - self.warmup) / max(1, self.total - self.warmup)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


@dataclass
class StageRun:
    """A stage in progress, as the callbacks see it; ``records`` ends with this stage's own record."""

    index: int
    plan: StagePlan
    net: FinetuneNet
    records: list[dict[str, Any]]
    resume: tuple[dict[str, torch.Tensor], dict[str, Any]] | None  # a loaded checkpoint taken mid-stage
    optimizer: Any = None
    scheduler: LambdaLR | None = None
    epoch: int = 1
    stop: str | None = None  # why the stage ends before its last epoch

    @property
    def record(self) -> dict[str, Any]:
        return self.records[-1]

    @property
    def ending(self) -> bool:
        """Whether the epoch just finished is the stage's last."""
        return self.stop is not None or self.epoch == self.plan.epochs


class Callback:
    """What the Trainer calls, in list order (a later callback sees what an earlier one decided); no-ops here."""

    def on_stage_start(self, run: StageRun) -> None:
        """After the optimizer is made (and the start validated, unless resumed), before the first step."""

    def on_epoch_end(self, run: StageRun, entry: dict[str, Any]) -> None:
        """After an epoch's validation; ``entry`` is already in ``run.record["history"]``."""

    def on_stage_end(self, run: StageRun) -> None:
        """After the last epoch, ``run.record["stop_reason"]`` set."""


class ProgressLog(Callback):
    """One line per epoch (and whatever the Trainer says), from rank 0 only under torchrun."""

    def __init__(self, main: bool) -> None:
        self.main = main

    def say(self, message: str) -> None:
        if self.main:
            log.info(message)

    def on_epoch_end(self, run: StageRun, entry: dict[str, Any]) -> None:
        self.say(
            f"{run.plan.name} epoch {run.epoch}: train loss {entry['train_loss']:.4f}, "
            f"val loss {entry['val_loss']:.4f}, val metric {entry['val_metric']:.4f}"
        )


class EarlyStopping(Callback):
    """Keeps the best weights by validation metric (epoch 0: the stage's start), stops a stage after ``patience``
    epochs without improvement and restores the best weights when it ends."""

    def __init__(self, patience: int) -> None:
        self.patience = patience
        self.reset()

    def reset(self, best_metric: float = -math.inf, best_epoch: int = 0, bad_epochs: int = 0, best_state=None) -> None:
        self.best_metric, self.best_epoch, self.bad_epochs = best_metric, best_epoch, bad_epochs
        self.best_state: dict[str, torch.Tensor] = best_state or {}

    def update(self, metric: float, epoch: int, net: nn.Module) -> bool:
        """Record one epoch's validation metric; True when training should stop."""
        if metric > self.best_metric:
            self.best_metric, self.best_epoch, self.bad_epochs = metric, epoch, 0
            self.best_state = {name: tensor.detach().clone() for name, tensor in net.state_dict().items()}
        else:
            self.bad_epochs += 1
        return self.bad_epochs >= self.patience

    def restore(self, net: nn.Module) -> None:
        net.load_state_dict(self.best_state)

    def state(self) -> dict[str, Any]:
        return {"best_metric": self.best_metric, "best_epoch": self.best_epoch, "bad_epochs": self.bad_epochs}

    def on_stage_start(self, run: StageRun) -> None:
        if run.resume is not None:
            tensors, meta = run.resume
            self.reset(**meta["tracker"], best_state=unprefixed("best", tensors))
        else:
            self.reset()
            self.update(run.record["start_val_metric"], 0, run.net)

    def on_epoch_end(self, run: StageRun, entry: dict[str, Any]) -> None:
        if self.update(entry["val_metric"], run.epoch, run.net):
            run.stop = f"early stopping (patience {self.patience})"

    def on_stage_end(self, run: StageRun) -> None:
        self.restore(run.net)
        run.record["best_epoch"], run.record["best_val_metric"] = self.best_epoch, self.best_metric


class Checkpointer(Callback):
    """An atomic checkpoint after every epoch that does not end its stage (with optimizer, scheduler, RNG and
    early-stopping state, so a stage resumes from it bit-for-bit) and at each stage's end; rank 0 writes."""

    def __init__(self, path: Path, fingerprint: str, tracker: EarlyStopping, writer: bool) -> None:
        self.path, self.fingerprint, self.tracker, self.writer = path, fingerprint, tracker, writer

    def on_stage_start(self, run: StageRun) -> None:
        if run.resume is not None:
            tensors, meta = run.resume
            run.net.load_state_dict(unprefixed("model", tensors))
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
            meta["tracker"] = self.tracker.state()
            meta["scheduler"] = run.scheduler.state_dict()
        save_checkpoint(self.path, tensors, meta)


class EpochHook(Callback):
    """``on_epoch(stage_record, history_entry)`` once the epoch's checkpoint is on disk (for a stage's last epoch:
    after the stage's end)."""

    def __init__(self, on_epoch: Callable[[dict[str, Any], dict[str, Any]], None]) -> None:
        self.on_epoch = on_epoch
        self.last: dict[str, Any] | None = None

    def on_epoch_end(self, run: StageRun, entry: dict[str, Any]) -> None:
        if run.ending:
            self.last = entry
        else:
            self.on_epoch(run.record, entry)

    def on_stage_end(self, run: StageRun) -> None:
        if self.last is not None:
            self.on_epoch(run.record, self.last)
            self.last = None


def sanity_limit(n_outputs: int, multilabel: bool) -> float:
    """Largest acceptable first-epoch loss: 1.5 × the loss of a uniform guess (log C, or log 2 per label)."""
    return SANITY_FACTOR * math.log(2 if multilabel else max(2, n_outputs))


def split_metric(targets: np.ndarray, scores: np.ndarray, classes: list[str]) -> float:
    """The headline metric (accuracy or mAP); 0 when undefined (e.g. no label has both positives and negatives)."""
    value = headline(classification_metrics(targets, scores, classes))[1]
    return 0.0 if value is None else float(value)


class Trainer:
    """Runs stage plans on one network: optimizer, LR schedule and LR-sanity restarts here, the rest callbacks
    (progress log, early stopping, checkpoints, ``on_epoch``)."""

    def __init__(
        self,
        net: FinetuneNet,
        units: list[Unit],
        loaders: dict[str, DataLoader],
        loss: nn.Module,
        classes: list[str],
        options: FinetuneOptions,
        checkpoint: Path,
        *,
        fingerprint: str,
        multilabel: bool,
        head_trained: bool = False,
        on_epoch: Callable[[dict[str, Any], dict[str, Any]], None] | None = None,
        distributed: Distributed | None = None,
    ) -> None:
        self.net, self.units, self.loaders, self.loss = net, units, loaders, loss
        self.distributed = distributed or Distributed()
        self.classes = classes
        self.multilabel = multilabel
        self.options = options
        self.head_trained = head_trained  # the head starts trained (searched head or probe warm start)
        self.progress = ProgressLog(self.distributed.is_main)
        tracker = EarlyStopping(options.patience)
        self.checkpointer = Checkpointer(checkpoint, fingerprint, tracker, self.distributed.is_main)
        self.callbacks = [self.progress, tracker, self.checkpointer, *([EpochHook(on_epoch)] if on_epoch else [])]

    def scores(self, loader: DataLoader) -> tuple[float, np.ndarray, np.ndarray]:
        """(mean loss, probabilities, targets) of the network in inference mode over ``loader``."""
        self.net.eval()
        total, probabilities, targets = 0.0, [], []
        with torch.no_grad():
            for images, target in loader:
                logits = self.net(images)
                total += float(self.loss(logits, target)) * len(images)
                probabilities.append(self._probabilities(logits))
                targets.append(target.numpy())
        return total / max(1, len(loader.dataset)), np.concatenate(probabilities), np.concatenate(targets)

    def _probabilities(self, logits: torch.Tensor) -> np.ndarray:
        return probabilities(logits, self.multilabel).detach().double().numpy()

    def _param_groups(self, record: dict[str, Any], trainable: list[Unit]) -> list[dict[str, Any]]:
        """Head at ``lr_head``; backbone units at ``lr_backbone``, or decayed by ``layer_decay`` per unit downwards."""
        groups = [{"params": list(self.net.head.parameters()), "lr": record["lr_head"]}]
        decay = self.options.layer_decay
        if decay is None and trainable:
            params = [
                p for unit in trainable for m in unit.modules for p in self.net.body.get_submodule(m).parameters()
            ]
            groups.append({"params": params, "lr": record["lr_backbone"]})
        elif trainable:
            for depth, unit in enumerate(trainable):
                params = [p for m in unit.modules for p in self.net.body.get_submodule(m).parameters()]
                groups.append({"params": params, "lr": record["lr_backbone"] * decay**depth})
        return groups

    def _optimizer(self, run: StageRun) -> tuple[Any, LambdaLR]:
        groups = self._param_groups(run.record, run.plan.trainable)
        optimizer = torch.optim.AdamW(groups, weight_decay=self.options.weight_decay)
        total = run.plan.epochs * len(self.loaders["train"])
        schedule = WarmupCosine(math.ceil(self.options.warmup * total), total)
        return optimizer, LambdaLR(optimizer, schedule)

    def _train_epoch(self, optimizer: Any, scheduler: LambdaLR) -> tuple[float, float]:
        """(mean training loss, training metric); the loss is NaN as soon as a batch's loss is not finite."""
        self.net.train()
        if self.options.bn_stats == "frozen":
            hold_statistics(self.net.body)
        net = self.distributed.training_module(self.net, self.loaders["train"])  # DDP under torchrun
        total, count, probabilities, targets = 0.0, 0, [], []
        for images, target in self.loaders["train"]:
            logits = net(images)
            loss = self.loss(logits, target)
            if not self.distributed.all_finite(loss):
                return math.nan, 0.0
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            total += float(loss.detach()) * len(images)
            count += len(images)
            probabilities.append(self._probabilities(logits))
            targets.append(target.numpy())
        total, count = self.distributed.sum(total, count)
        self.distributed.sync_buffers(self.net)
        targets, probabilities = (self.distributed.concat(np.concatenate(rows)) for rows in (targets, probabilities))
        return total / max(1, count), split_metric(targets, probabilities, self.classes)

    def _new_record(self, plan: StagePlan, head_trained: bool) -> dict[str, Any]:
        """A stage's record, with its learning rates.

        Once the head is trained (warm-started, or by an earlier stage), unfreezing stages move it at the backbone's
        LR, as Keras' recipe and LP-FT do: a head still moving at the head-only LR drags the unfrozen blocks after
        its own changes. On the demo photos (searched head, top:3) that turned no gain in 10 epochs (head 1e-3,
        backbone 1e-4) into +1 validation and +4 test images (both 1e-4).
        """
        trainable = {unit.name for unit in plan.trainable}
        lr_backbone = self.options.lr * self.options.backbone_lr_ratio if plan.trainable else None
        return {
            "name": plan.name,
            "frozen_blocks": [u.name for u in self.units if u.name not in trainable],
            "trainable_blocks": [u.name for u in reversed(self.units) if u.name in trainable],
            "bn_policy": BN_POLICY[self.options.bn_stats],
            "world_size": self.distributed.world_size,  # data-parallel processes; effective batch = N × batch size
            "lr_head": lr_backbone if lr_backbone is not None and head_trained else self.options.lr,
            "lr_backbone": lr_backbone,
            "layer_decay": self.options.layer_decay,
            "start_val_metric": None,
            "best_epoch": 0,
            "stop_reason": None,
            "restarts": [],
            "history": [],
        }

    def run(self, plans: list[StagePlan], resume: tuple[dict[str, torch.Tensor], dict[str, Any]] | None) -> list:
        """Train every stage in order (continuing from ``resume``, a loaded checkpoint) and return their records."""
        records: list[dict[str, Any]] = []
        first = 0
        if resume is not None:
            tensors, meta = resume
            if meta["fingerprint"] != self.checkpointer.fingerprint:
                raise TransferlabError("cannot resume: the checkpoint was made with other data, model or options")
            records = meta["records"][:-1] if not meta["done"] else meta["records"]
            first = meta["stage"] + (1 if meta["done"] else 0)
            if meta["done"]:
                set_trainable(self.net.body, self.units, plans[meta["stage"]].trainable)
                self.net.load_state_dict(unprefixed("model", tensors))
                set_rng_state(tensors, meta["rng"])
                resume = None
        for index in range(first, len(plans)):
            self._stage(StageRun(index, plans[index], self.net, records, resume))  # appends the stage's record
            resume = None
        return records

    def _stage(self, run: StageRun) -> None:
        set_trainable(self.net.body, self.units, run.plan.trainable)
        start_state: tuple | None = None
        if run.resume is None:
            run.records.append(self._new_record(run.plan, head_trained=self.head_trained or bool(run.records)))
            run.record["start_val_metric"] = self._validate()[1]
        else:
            run.records.append(run.resume[1]["records"][-1])
            run.epoch = run.resume[1]["epoch"] + 1
        run.optimizer, run.scheduler = self._optimizer(run)
        self._callback("on_stage_start", run)
        if run.resume is None:
            if self.options.bn_stats == "batch":
                recalibrate(self.net, self.net.body, run.plan.trainable, self.loaders["train"])
            start_weights = {name: tensor.clone() for name, tensor in self.net.state_dict().items()}
            start_state = (start_weights, *rng_state())
        record, limit = run.record, sanity_limit(len(self.classes), self.multilabel)
        while run.epoch <= run.plan.epochs:
            started = time.perf_counter()
            lr = run.optimizer.param_groups[0]["lr"]
            train_loss, train_metric = self._train_epoch(run.optimizer, run.scheduler)
            if run.epoch == 1 and not train_loss <= limit and start_state is not None:
                if len(record["restarts"]) < self.options.max_restarts:
                    self._restart(record, train_loss, limit, start_state)
                    run.optimizer, run.scheduler = self._optimizer(run)
                    continue
                self.progress.say(
                    f"{run.plan.name}: first-epoch loss still {train_loss:.3g} > {limit:.3g} after "
                    f"{len(record['restarts'])} restarts; continuing (the best epoch by validation is kept)"
                )
            if not math.isfinite(train_loss):
                run.stop = "diverged (non-finite training loss)"
                break
            val_loss, val_metric = self._validate()
            entry = {
                "epoch": run.epoch,
                "train_loss": train_loss,
                "val_loss": val_loss,
                "train_metric": train_metric,
                "val_metric": val_metric,
                "lr": lr,
                "seconds": time.perf_counter() - started,
            }
            record["history"].append(entry)
            self._callback("on_epoch_end", run, entry)
            if run.ending:
                break
            run.epoch += 1
        record["stop_reason"] = run.stop or "max epochs"
        self._callback("on_stage_end", run)

    def _callback(self, hook: str, *args: Any) -> None:
        for callback in self.callbacks:
            getattr(callback, hook)(*args)

    def _validate(self) -> tuple[float, float]:
        loss, probabilities, targets = self.scores(self.loaders["val"])
        return loss, split_metric(targets, probabilities, self.classes)

    def _restart(self, record: dict[str, Any], loss: float, limit: float, start_state: tuple) -> None:
        """Back to the stage's starting weights and RNG, every learning rate divided by 10, and say so."""
        weights, tensors, meta = start_state
        self.net.load_state_dict(weights)
        set_rng_state(tensors, meta)
        old = record["lr_head"]
        record["lr_head"] *= RESTART_LR_FACTOR
        if record["lr_backbone"] is not None:
            record["lr_backbone"] *= RESTART_LR_FACTOR
        reason = (
            "non-finite loss" if not math.isfinite(loss) else f"first-epoch loss {loss:.3g} > 1.5·log(C) = {limit:.3g}"
        )
        finite = loss if math.isfinite(loss) else None
        record["restarts"].append(
            {"epoch": 1, "loss": finite, "old_lr": old, "new_lr": record["lr_head"], "reason": reason}
        )
        self.progress.say(f"{record['name']}: {reason}; restarting the stage at lr {record['lr_head']:.3g}")
