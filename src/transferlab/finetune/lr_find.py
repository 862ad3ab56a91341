"""LR range test: raise the learning rate exponentially over a few hundred steps and watch the loss.

The loss first barely moves (LR too small), then falls fastest, then explodes. We suggest the LR where the
*smoothed* loss falls fastest against log(LR) ("steepest descent", searched only before the loss minimum so the
blow-up cannot win); the "minimum-loss / 10" value is reported next to it as a more conservative cross-check.
The sweep trains the real model, so its weights, buffers (BN statistics), optimizer state and torch RNG are restored
afterwards: finding an LR must not change the run that follows.
"""

from __future__ import annotations

import copy
import io
import itertools
import math
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from transferlab.errors import TransferlabError
from transferlab.fileio import atomic_write_bytes, write_json
from transferlab.finetune.batchnorm import set_trainable
from transferlab.finetune.blocks import parse_unfreeze
from transferlab.finetune.setup import build_setup
from transferlab.record import layout

if TYPE_CHECKING:
    from transferlab.finetune.options import FinetuneOptions
    from transferlab.prepare import PreparedData

SUGGESTION_RULE = "steepest descent of the smoothed loss vs log10(LR), before the loss minimum"


@dataclass
class LRFindResult:
    """The sweep: LR and loss per step, the suggestion and why the sweep ended."""

    lrs: list[float]
    losses: list[float]
    smoothed: list[float]
    suggestion: float
    min_loss_lr: float
    stop_reason: str
    rule: str = SUGGESTION_RULE

    @property
    def min_loss_over_10(self) -> float:
        return self.min_loss_lr / 10

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "min_loss_over_10": self.min_loss_over_10}


def smooth(losses: list[float], beta: float) -> list[float]:
    """Bias-corrected exponential moving average (as in Adam), so the first points are not pulled towards 0."""
    average, smoothed = 0.0, []
    for step, loss in enumerate(losses, start=1):
        average = beta * average + (1 - beta) * loss
        smoothed.append(average / (1 - beta**step))
    return smoothed


def suggest(lrs: list[float], smoothed: list[float], skip: int = 3) -> tuple[float, float]:
    """(steepest-descent LR, LR at the minimum smoothed loss). ``skip`` ignores the noisiest first points."""
    best = int(np.argmin(smoothed))
    window = np.asarray(smoothed[: best + 1])
    if best - skip < 2:
        return lrs[best] / 10, lrs[best]
    slopes = np.gradient(window, np.log10(lrs[: best + 1]))
    steepest = skip + int(np.argmin(slopes[skip:]))
    return lrs[steepest], lrs[best]


def _repeat(batches: Iterable[Any]) -> Iterator[Any]:
    """Pass over ``batches`` again and again (fresh augmentation each pass; ``itertools.cycle`` would keep copies)."""
    while True:
        empty = True
        for batch in batches:
            empty = False
            yield batch
        if empty:
            return


def lr_find(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    *,
    start_lr: float = 1e-7,
    end_lr: float = 10.0,
    steps: int = 200,
    beta: float = 0.9,
    divergence: float = 4.0,
) -> LRFindResult:
    """Sweep the LR of ``optimizer`` from ``start_lr`` to ``end_lr`` in ``steps`` geometric steps, then restore.

    The optimizer's parameter groups keep their LR ratios (e.g. backbone 10× below head): the group with the largest
    LR follows the sweep and the suggestion is that group's LR. ``batches`` is cycled if it is shorter than
    ``steps``. The model's train/eval mode is the caller's (frozen BN stays frozen). The sweep stops early once the
    smoothed loss exceeds ``divergence`` × its best value or becomes NaN/inf.
    """
    if not 0 < start_lr < end_lr:
        raise TransferlabError(f"lr-find needs 0 < start LR < end LR, got {start_lr} and {end_lr}")
    if steps < 10:
        raise TransferlabError(f"lr-find needs at least 10 steps, got {steps}")
    saved_model = copy.deepcopy(model.state_dict())
    saved_optimizer = copy.deepcopy(optimizer.state_dict())
    saved_rng = torch.get_rng_state()
    top = max(group["lr"] for group in optimizer.param_groups)
    ratios = [group["lr"] / top if top > 0 else 1.0 for group in optimizer.param_groups]
    factor = (end_lr / start_lr) ** (1 / (steps - 1))
    lrs: list[float] = []
    losses: list[float] = []
    stop_reason = "completed"
    device = next(model.parameters()).device
    try:
        for step, (images, targets) in enumerate(itertools.islice(_repeat(batches), steps)):
            lr = start_lr * factor**step
            for group, ratio in zip(optimizer.param_groups, ratios, strict=True):
                group["lr"] = lr * ratio
            optimizer.zero_grad(set_to_none=True)
            loss = loss_fn(model(images.to(device)), targets.to(device))
            value = float(loss.detach())
            lrs.append(lr)
            losses.append(value)
            smoothed = smooth(losses, beta)
            if not math.isfinite(value) or smoothed[-1] > divergence * min(smoothed):
                stop_reason = "diverged"
                break
            loss.backward()
            optimizer.step()
    finally:
        model.load_state_dict(saved_model)
        optimizer.load_state_dict(saved_optimizer)
        torch.set_rng_state(saved_rng)
    if len(lrs) < 5:
        raise TransferlabError(f"lr-find: the loss diverged after {len(lrs)} steps; lower the start LR")
    finite = [i for i, value in enumerate(losses) if math.isfinite(value)]
    lrs, losses = [lrs[i] for i in finite], [losses[i] for i in finite]
    smoothed = smooth(losses, beta)
    steepest, at_min = suggest(lrs, smoothed)
    return LRFindResult(lrs, losses, smoothed, steepest, at_min, stop_reason)


def plot_lr_find(result: LRFindResult, path: Path) -> None:
    """Loss vs LR (log axis), raw and smoothed, with both suggestions marked; written atomically as PNG."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    figure, axes = plt.subplots(figsize=(7, 4.2), dpi=110)
    try:
        axes.plot(result.lrs, result.losses, color="#bbbbbb", linewidth=1, label="loss")
        axes.plot(result.lrs, result.smoothed, color="#1f4e79", linewidth=2, label="smoothed loss")
        axes.axvline(result.suggestion, color="#c0392b", linestyle="--", label=f"suggested {result.suggestion:.2g}")
        axes.axvline(
            result.min_loss_over_10, color="#27ae60", linestyle=":", label=f"min-loss/10 {result.min_loss_over_10:.2g}"
        )
        axes.set_xscale("log")
        low, high = min(result.smoothed), max(result.smoothed[: len(result.smoothed) * 9 // 10 or None])
        axes.set_ylim(low - 0.1 * (high - low + 1e-9), high + 0.2 * (high - low + 1e-9))
        axes.set_xlabel("learning rate (largest parameter group)")
        axes.set_ylabel("training loss")
        axes.set_title("LR range test")
        axes.legend(loc="upper left", fontsize=8)
        figure.tight_layout()
        buffer = io.BytesIO()
        figure.savefig(buffer, format="png")
    finally:
        plt.close(figure)
    atomic_write_bytes(path, buffer.getvalue())


def lr_range_test(
    prepared: PreparedData,
    run_dir: Path,
    options: FinetuneOptions,
    *,
    start_lr: float = 1e-7,
    end_lr: float = 10.0,
    steps: int = 100,
) -> LRFindResult:
    """The sweep for the fine-tuning set-up ``options`` describes; writes ``lr_find.png`` and ``lr_find.json``.

    Same network, trainable units (``--unfreeze``), frozen BN, augmentation, loss and head/backbone LR ratio as
    ``finetune``; the head starts from its seeded random init (no probe warm start), the "fixed init" the sweep is
    defined from. The suggestion is for the head LR (``--lr``).
    """
    setup = build_setup(prepared, options)
    net, units = setup.net, setup.units
    set_trainable(net.body, units, parse_unfreeze(options.unfreeze, units))
    backbone = [p for p in net.body.parameters() if p.requires_grad]
    groups = [{"params": list(net.head.parameters()), "lr": 1.0}]
    groups += [{"params": backbone, "lr": options.backbone_lr_ratio}] if backbone else []
    optimizer = torch.optim.AdamW(groups, weight_decay=options.weight_decay)
    net.train()
    result = lr_find(net, optimizer, setup.loaders["train"], setup.loss, start_lr=start_lr, end_lr=end_lr, steps=steps)
    plot_lr_find(result, Path(run_dir) / layout.LR_FIND_PLOT)
    write_json(Path(run_dir) / layout.LR_FIND, {**result.to_dict(), "unfreeze": options.unfreeze})
    return result
