"""The training loop of one fine-tuning stage (AdamW, warm-up + cosine LR, LR sanity restart) and its callbacks.

Each stage trains a fixed set of units (plus the head) with their BatchNorm policy applied, then restores its best
epoch by validation metric (:class:`EarlyStopping`; epoch 0 = its starting weights, so a stage never makes the model
worse on validation). Every epoch ends with an atomic checkpoint (``checkpoint.Checkpointer``) to resume from.
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

from transferlab import devices
from transferlab.distributed import Distributed
from transferlab.errors import TransferlabError
from transferlab.finetune.batchnorm import BN_POLICY, hold_statistics, recalibrate, set_trainable
from transferlab.finetune.blocks import Unit
from transferlab.finetune.checkpoint import Checkpointer, rng_state, set_rng_state, unprefixed
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
    """A stage in progress, as the callbacks see it; ``records`` (all stages') ends with this stage's own record."""

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
    """Trainer hooks, called in list order (a later callback sees what an earlier one decided). ``on_stage_start``:
    the optimizer is made and the start validated (or the stage resumed); ``on_epoch_end``: an epoch is validated,
    ``entry`` already in ``run.record["history"]``; ``on_stage_end``: ``run.record["stop_reason"]`` is set."""

    def on_stage_start(self, run: StageRun) -> None: ...

    def on_epoch_end(self, run: StageRun, entry: dict[str, Any]) -> None: ...

    def on_stage_end(self, run: StageRun) -> None: ...


class Progress(Callback):
    """Rank 0 only: a log line per epoch (the Trainer's own through :meth:`say`), then ``on_epoch(stage_record,
    history_entry)`` once the epoch's checkpoint is on disk (a stage's last: at its end); after the Checkpointer."""

    def __init__(self, main: bool, on_epoch: Callable[[dict[str, Any], dict[str, Any]], None] | None) -> None:
        self.main, self.on_epoch = main, on_epoch if main else None

    def say(self, message: str) -> None:
        if self.main:
            log.info(message)

    def on_epoch_end(self, run: StageRun, entry: dict[str, Any]) -> None:
        self.say(
            f"{run.plan.name} epoch {run.epoch}: train loss {entry['train_loss']:.4f}, "
            f"val loss {entry['val_loss']:.4f}, val metric {entry['val_metric']:.4f}"
        )
        if self.on_epoch is not None and not run.ending:
            self.on_epoch(run.record, entry)

    def on_stage_end(self, run: StageRun) -> None:
        history = run.record["history"]
        if self.on_epoch is not None and history and history[-1]["epoch"] == run.epoch:  # not ended by diverging
            self.on_epoch(run.record, history[-1])


class EarlyStopping(Callback):
    """Keeps the best weights by validation metric (epoch 0: the stage's start), stops a stage after ``patience``
    epochs without improvement and restores the best weights when it ends."""

    def __init__(self, patience: int) -> None:
        self.patience = patience
        self.reset()

    def reset(self, best_metric: float = -math.inf, best_epoch: int = 0, bad_epochs: int = 0) -> None:
        self.best_metric, self.best_epoch, self.bad_epochs = best_metric, best_epoch, bad_epochs
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

    def on_stage_start(self, run: StageRun) -> None:
        if run.resume is None:  # (a resumed stage's state comes from the checkpoint)
            self.reset()
            self.update(run.record["start_val_metric"], 0, run.net)

    def on_epoch_end(self, run: StageRun, entry: dict[str, Any]) -> None:
        if self.update(entry["val_metric"], run.epoch, run.net):
            run.stop = f"early stopping (patience {self.patience})"

    def on_stage_end(self, run: StageRun) -> None:
        self.restore(run.net)
        run.record["best_epoch"], run.record["best_val_metric"] = self.best_epoch, self.best_metric


class Deadline(Callback):
    """Ends training before an epoch that would not finish within ``seconds`` (the planner's grant): the stage stops
    with reason "time limit" (its best epoch kept by :class:`EarlyStopping`) and later stages do not start.

    The next epoch is assumed to take as long as the last one; every rank decides on rank-summed flags, so DDP
    processes stop together.
    """

    def __init__(self, seconds: float | None, distributed: Distributed) -> None:
        self.end = None if seconds is None else time.monotonic() + seconds
        self.distributed = distributed
        self.last_epoch = 0.0

    def out_of_time(self) -> bool:
        if self.end is None:
            return False
        late = time.monotonic() + self.last_epoch > self.end
        return self.distributed.sum(float(late))[0] > 0

    def on_epoch_end(self, run: StageRun, entry: dict[str, Any]) -> None:
        self.last_epoch = entry["seconds"]
        if run.stop is None and run.epoch < run.plan.epochs and self.out_of_time():
            run.stop = "time limit"


def sanity_limit(n_outputs: int, multilabel: bool) -> float:
    """Largest acceptable first-epoch loss: 1.5 × the loss of a uniform guess (log C, or log 2 per label)."""
    return SANITY_FACTOR * math.log(2 if multilabel else max(2, n_outputs))


def split_metric(targets: np.ndarray, scores: np.ndarray, classes: list[str]) -> float:
    """The headline metric (accuracy or mAP); 0 when undefined (e.g. no label has both positives and negatives)."""
    value = headline(classification_metrics(targets, scores, classes))[1]
    return 0.0 if value is None else float(value)


class Trainer:
    """Runs stage plans on one network: optimizer, LR schedule and LR-sanity restarts here, the rest callbacks
    (progress log, early stopping, checkpoints, ``on_epoch``).

    It trains where the network's parameters are, with batches copied there asynchronously, in the device's
    training precision (``devices.training_precision``: AMP on CUDA; fp16 with a gradient scaler).
    """

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
        self.classes, self.multilabel, self.options = classes, multilabel, options
        self.head_trained = head_trained  # the head starts trained (searched head or probe warm start)
        self.device = next(net.parameters()).device
        self.precision = devices.training_precision(self.device)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.precision == "fp16")
        tracker = EarlyStopping(options.patience)
        self.checkpointer = Checkpointer(checkpoint, fingerprint, tracker, self.distributed.is_main)
        self.progress = Progress(self.distributed.is_main, on_epoch)
        self.deadline = Deadline(options.time_limit, self.distributed)
        self.callbacks = [tracker, self.deadline, self.checkpointer, self.progress]

    def scores(self, loader: DataLoader) -> tuple[float, np.ndarray, np.ndarray]:
        """(mean loss, probabilities, targets) of the network in inference mode over ``loader``."""
        self.net.eval()
        total, probabilities, targets = 0.0, [], []
        with torch.no_grad():
            for images, target in loader:
                logits = self._forward(self.net, images)
                total += float(self.loss(logits, target.to(self.device))) * len(images)
                probabilities.append(self._probabilities(logits))
                targets.append(target.numpy())
        return total / max(1, len(loader.dataset)), np.concatenate(probabilities), np.concatenate(targets)

    def _forward(self, net: nn.Module, images: torch.Tensor) -> torch.Tensor:
        """Float32 logits of ``images`` copied to the device, the network run in the training precision."""
        images = images.to(self.device, non_blocking=True)
        if images.ndim == 4:
            images = images.contiguous(memory_format=devices.memory_format(self.device))
        with devices.autocast(self.device, self.precision):
            return net(images).float()

    def _probabilities(self, logits: torch.Tensor) -> np.ndarray:
        return probabilities(logits, self.multilabel).detach().double().cpu().numpy()

    def _param_groups(self, record: dict[str, Any], trainable: list[Unit]) -> list[dict[str, Any]]:
        """Head at ``lr_head``; backbone units at ``lr_backbone``, or decayed by ``layer_decay`` per unit downwards."""
        groups = [{"params": list(self.net.head.parameters()), "lr": record["lr_head"]}]
        body = self.net.body
        units = [
            [p for m in unit.modules for p in body.get_submodule(m).parameters()]
            + [body.get_parameter(name) for name in unit.parameters]
            for unit in trainable
        ]
        decay = self.options.layer_decay
        if decay is None and trainable:
            groups.append({"params": [p for params in units for p in params], "lr": record["lr_backbone"]})
        elif trainable:
            groups += [{"params": params, "lr": record["lr_backbone"] * decay**d} for d, params in enumerate(units)]
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
            logits = self._forward(net, images)
            loss = self.loss(logits, target.to(self.device, non_blocking=True))
            if not self.distributed.all_finite(loss):
                return math.nan, 0.0
            optimizer.zero_grad(set_to_none=True)
            self.scaler.scale(loss).backward()  # (the scaler is a pass-through unless training in fp16)
            self.scaler.step(optimizer)
            self.scaler.update()
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
        records, first, epoch = [], 0, 1
        if resume is not None:
            tensors, meta = resume
            if meta["fingerprint"] != self.checkpointer.fingerprint:
                raise TransferlabError("cannot resume: the checkpoint was made with other data, model or options")
            records, first, epoch = meta["records"], meta["stage"], meta["epoch"] + 1  # (the stage's record last)
            if meta["done"]:
                set_trainable(self.net.body, self.units, plans[meta["stage"]].trainable)
                self.net.load_state_dict(unprefixed("model", tensors))
                set_rng_state(tensors, meta["rng"])
                first, epoch, resume = first + 1, 1, None
        for index in range(first, len(plans)):
            if index > first and self.deadline.out_of_time():
                self.progress.say(f"time limit: {plans[index].name} and later stages are not started")
                break
            self._stage(StageRun(index, plans[index], self.net, records, resume, epoch=epoch))
            epoch, resume = 1, None
        return records

    def _stage(self, run: StageRun) -> None:
        set_trainable(self.net.body, self.units, run.plan.trainable)
        if run.resume is None:  # (a resumed stage's record is already the last of ``run.records``)
            run.records.append(self._new_record(run.plan, head_trained=self.head_trained or bool(run.records)))
            run.record["start_val_metric"] = self._validate()[1]
        run.optimizer, run.scheduler = self._optimizer(run)
        self._callback("on_stage_start", run)
        if run.resume is None and self.options.bn_stats == "batch":
            recalibrate(self.net, self.net.body, run.plan.trainable, self.loaders["train"])
        # what an LR-sanity restart goes back to (a resumed stage is past its first epoch)
        start_state = None if run.resume else ({k: v.clone() for k, v in self.net.state_dict().items()}, *rng_state())
        record, limit = run.record, sanity_limit(len(self.classes), self.multilabel)
        while run.epoch <= run.plan.epochs:
            started = time.perf_counter()
            lr = run.optimizer.param_groups[0]["lr"]
            train_loss, train_metric = self._train_epoch(run.optimizer, run.scheduler)
            if run.epoch == 1 and not train_loss <= limit and start_state is not None:
                if len(record["restarts"]) < self.options.max_restarts:
                    self._restart(run, train_loss, limit, start_state)
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

    def _restart(self, run: StageRun, loss: float, limit: float, start_state: tuple) -> None:
        """Back to the stage's starting weights and RNG, every learning rate divided by 10 (a new optimizer), and
        say so."""
        record, (weights, tensors, meta) = run.record, start_state
        self.net.load_state_dict(weights)
        set_rng_state(tensors, meta)
        old = record["lr_head"]
        record["lr_head"] *= RESTART_LR_FACTOR
        if record["lr_backbone"] is not None:
            record["lr_backbone"] *= RESTART_LR_FACTOR
        finite = math.isfinite(loss)
        reason = f"first-epoch loss {loss:.3g} > 1.5·log(C) = {limit:.3g}" if finite else "non-finite loss"
        record["restarts"].append(
            {"epoch": 1, "loss": loss if finite else None, "old_lr": old, "new_lr": record["lr_head"], "reason": reason}
        )
        self.progress.say(f"{record['name']}: {reason}; restarting the stage at lr {record['lr_head']:.3g}")
        run.optimizer, run.scheduler = self._optimizer(run)
