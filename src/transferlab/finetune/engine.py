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


class EarlyStopping:
    """Keeps the best weights by validation metric; says stop after ``patience`` epochs without improvement."""

    def __init__(self, patience: int) -> None:
        self.patience = patience
        self.best_metric = -math.inf
        self.best_epoch = 0
        self.bad_epochs = 0
        self.best_state: dict[str, torch.Tensor] = {}

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

    def load(self, state: dict[str, Any], best_state: dict[str, torch.Tensor]) -> None:
        self.best_metric, self.best_epoch, self.bad_epochs = (
            state["best_metric"],
            state["best_epoch"],
            state["bad_epochs"],
        )
        self.best_state = best_state


def sanity_limit(n_outputs: int, multilabel: bool) -> float:
    """Largest acceptable first-epoch loss: 1.5 × the loss of a uniform guess (log C, or log 2 per label)."""
    return SANITY_FACTOR * math.log(2 if multilabel else max(2, n_outputs))


def split_metric(targets: np.ndarray, scores: np.ndarray, classes: list[str]) -> float:
    """The headline metric (accuracy or mAP); 0 when undefined (e.g. no label has both positives and negatives)."""
    value = headline(classification_metrics(targets, scores, classes))[1]
    return 0.0 if value is None else float(value)


class Trainer:
    """Runs stage plans on one network; owns the optimizer, scheduler, early stopping and checkpoints."""

    def __init__(
        self,
        net: FinetuneNet,
        units: list[Unit],
        loaders: dict[str, DataLoader],
        loss: nn.Module,
        classes: list[str],
        settings: FinetuneOptions,
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
        self.settings = settings
        self.head_trained = head_trained  # the head starts trained (searched head or probe warm start)
        self.checkpoint = checkpoint
        self.fingerprint = fingerprint
        self.on_epoch = on_epoch

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
        decay = self.settings.layer_decay
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

    def _optimizer(self, record: dict[str, Any], trainable: list[Unit], epochs: int) -> tuple[Any, LambdaLR]:
        optimizer = torch.optim.AdamW(self._param_groups(record, trainable), weight_decay=self.settings.weight_decay)
        total = epochs * len(self.loaders["train"])
        schedule = WarmupCosine(math.ceil(self.settings.warmup * total), total)
        return optimizer, LambdaLR(optimizer, schedule)

    def _train_epoch(self, optimizer: Any, scheduler: LambdaLR) -> tuple[float, float]:
        """(mean training loss, training metric); the loss is NaN as soon as a batch's loss is not finite."""
        self.net.train()
        if self.settings.bn_stats == "frozen":
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
        lr_backbone = self.settings.lr * self.settings.backbone_lr_ratio if plan.trainable else None
        return {
            "name": plan.name,
            "frozen_blocks": [u.name for u in self.units if u.name not in trainable],
            "trainable_blocks": [u.name for u in reversed(self.units) if u.name in trainable],
            "bn_policy": BN_POLICY[self.settings.bn_stats],
            "world_size": self.distributed.world_size,  # data-parallel processes; effective batch = N × batch size
            "lr_head": lr_backbone if lr_backbone is not None and head_trained else self.settings.lr,
            "lr_backbone": lr_backbone,
            "layer_decay": self.settings.layer_decay,
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
            if meta["fingerprint"] != self.fingerprint:
                raise TransferlabError("cannot resume: the checkpoint was made with other data, model or options")
            records = meta["records"][:-1] if not meta["done"] else meta["records"]
            first = meta["stage"] + (1 if meta["done"] else 0)
            if meta["done"]:
                set_trainable(self.net.body, self.units, plans[meta["stage"]].trainable)
                self.net.load_state_dict(unprefixed("model", tensors))
                set_rng_state(tensors, meta["rng"])
                resume = None
        for index in range(first, len(plans)):
            records.append(self._stage(index, plans[index], records, resume))
            resume = None
        return records

    def _stage(self, index: int, plan: StagePlan, done: list, resume: tuple | None) -> dict[str, Any]:
        set_trainable(self.net.body, self.units, plan.trainable)
        tracker = EarlyStopping(self.settings.patience)
        if resume is None:
            record = self._new_record(plan, head_trained=self.head_trained or bool(done))
            record["start_val_metric"] = self._validate()[1]
            tracker.update(record["start_val_metric"], 0, self.net)
            if self.settings.bn_stats == "batch":
                recalibrate(self.net, self.net.body, plan.trainable, self.loaders["train"])
            optimizer, scheduler = self._optimizer(record, plan.trainable, plan.epochs)
            start_weights = {name: tensor.clone() for name, tensor in self.net.state_dict().items()}
            start_state: tuple | None = (start_weights, *rng_state())
            epoch = 1
        else:
            tensors, meta = resume
            self.net.load_state_dict(unprefixed("model", tensors))
            record = meta["records"][-1]
            optimizer, scheduler = self._optimizer(record, plan.trainable, plan.epochs)
            load_optimizer(optimizer, tensors, meta["optimizer"])
            scheduler.load_state_dict(meta["scheduler"])
            tracker.load(meta["tracker"], unprefixed("best", tensors))
            set_rng_state(tensors, meta["rng"])
            start_state, epoch = None, meta["epoch"] + 1
        limit = sanity_limit(len(self.classes), self.multilabel)
        last_entry = None
        while epoch <= plan.epochs:
            started = time.perf_counter()
            lr = optimizer.param_groups[0]["lr"]
            train_loss, train_metric = self._train_epoch(optimizer, scheduler)
            if epoch == 1 and not train_loss <= limit and start_state is not None:
                if len(record["restarts"]) < self.settings.max_restarts:
                    self._restart(record, train_loss, limit, start_state)
                    optimizer, scheduler = self._optimizer(record, plan.trainable, plan.epochs)
                    continue
                self._say(
                    f"{plan.name}: first-epoch loss still {train_loss:.3g} > {limit:.3g} after "
                    f"{len(record['restarts'])} restarts; continuing (the best epoch by validation is kept)"
                )
            if not math.isfinite(train_loss):
                record["stop_reason"] = "diverged (non-finite training loss)"
                break
            val_loss, val_metric = self._validate()
            entry = {
                "epoch": epoch,
                "train_loss": train_loss,
                "val_loss": val_loss,
                "train_metric": train_metric,
                "val_metric": val_metric,
                "lr": lr,
                "seconds": time.perf_counter() - started,
            }
            record["history"].append(entry)
            self._say(
                f"{plan.name} epoch {epoch}: train loss {train_loss:.4f}, val loss {val_loss:.4f}, "
                f"val metric {val_metric:.4f}"
            )
            stop = tracker.update(val_metric, epoch, self.net)
            if stop or epoch == plan.epochs:
                last_entry = entry
                record["stop_reason"] = f"early stopping (patience {self.settings.patience})" if stop else "max epochs"
                break
            self._save(index, epoch, [*done, record], tracker, optimizer, scheduler)
            self._notify(record, entry)
            epoch += 1
        record["stop_reason"] = record["stop_reason"] or "max epochs"
        tracker.restore(self.net)
        record["best_epoch"] = tracker.best_epoch
        record["best_val_metric"] = tracker.best_metric
        self._save(index, epoch, [*done, record], None, None, None)
        if last_entry is not None:
            self._notify(record, last_entry)
        return record

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
        self._say(f"{record['name']}: {reason}; restarting the stage at lr {record['lr_head']:.3g}")

    def _say(self, message: str) -> None:
        if self.distributed.is_main:  # one voice under torchrun
            log.info(message)

    def _notify(self, record: dict[str, Any], entry: dict[str, Any]) -> None:
        if self.on_epoch is not None:
            self.on_epoch(record, entry)

    def _save(
        self,
        stage: int,
        epoch: int,
        records: list[dict[str, Any]],
        tracker: EarlyStopping | None,
        optimizer: Any,
        scheduler: LambdaLR | None,
    ) -> None:
        """Checkpoint after an epoch (``tracker`` given: stage continues) or at the end of a stage (``None``)."""
        if not self.distributed.is_main:  # one writer under torchrun
            return
        tensors, rng_meta = rng_state()
        tensors |= prefixed("model", self.net.state_dict())
        meta: dict[str, Any] = {
            "fingerprint": self.fingerprint,
            "stage": stage,
            "epoch": epoch,
            "done": tracker is None,
            "records": records,
            "rng": rng_meta,
        }
        if tracker is not None:
            optimizer_state, meta["optimizer"] = optimizer_tensors(optimizer)
            tensors |= optimizer_state | prefixed("best", tracker.best_state)
            meta["tracker"] = tracker.state()
            meta["scheduler"] = scheduler.state_dict()
        save_checkpoint(self.checkpoint, tensors, meta)
