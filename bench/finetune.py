"""Fine-tuning cost per epoch: (a) full, (b) top half unfrozen with the frozen half run forward every step,
(c) top half unfrozen on cached boundary activations (K augmented views per image). Same data, split, head,
LRs, augmentation and seed for all three; each runs the real ``finetune()`` with no head-only stage.

"Seconds per epoch" is the engine's own per-epoch time (training pass + validation pass). For (c) the one-off
cost of caching the K views is inside "other s" (with model set-up and the final val/test scoring, which every
mode pays); other(c) - other(b) estimates it, amortized over the epochs in the last line. All modes start from a
random head (no probe warm start) so their val accuracy reflects their own training. Rounds run the modes in
order a,b,c then c,b,a, so load that drifts during the run hits all modes alike. On a GPU (``--device cuda``)
a fourth mode, (a) in plain fp32, gives the AMP speed-up of the device's training precision.

    OMP_NUM_THREADS=1 python bench/finetune.py [--fraction 0.4] [--image-size 112] [--epochs 3] [--views 3] [--rounds 2]
        [--device auto]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path
from unittest.mock import patch

import numpy as np

from transferlab import devices
from transferlab.config import RunConfig
from transferlab.finetune import FinetuneOptions, finetune, freeze_units
from transferlab.prepare import prepare

DEMO = Path(__file__).resolve().parents[1] / "examples" / "fashion"


FP32_MODE = "(a) full fine-tuning, fp32 (no AMP)"


def measure(prepared, options: FinetuneOptions, run_dir: Path, fp32: bool = False) -> dict:
    """One real ``finetune()``: mean seconds per epoch, the rest of its wall time, best and last val accuracy."""
    started = time.perf_counter()
    with patch.dict(os.environ, {"TRANSFERLAB_FP32": "1"} if fp32 else {}):  # 1: the engine trains without autocast
        outcome = finetune(prepared, run_dir, options)
    wall = time.perf_counter() - started
    stage = outcome.stages[-1]
    epochs = [entry["seconds"] for entry in stage["history"]]
    return {
        "per_epoch": float(np.mean(epochs)),
        "other": wall - sum(epochs),
        "best": f"{stage['best_val_metric']:.4f} (ep {stage['best_epoch']})",
        "last": stage["history"][-1]["val_metric"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", default="tf_efficientnet_lite0")
    parser.add_argument("--fraction", type=float, default=0.4, help="stratified fraction of examples/fashion")
    parser.add_argument("--image-size", type=int, default=112)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--views", type=int, default=3, help="augmented views cached per training image in (c)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=2, help="rounds, alternately in order a,b,c and c,b,a")
    parser.add_argument("--device", default="auto", help=devices.DEVICE_HELP)
    args = parser.parse_args()
    device = devices.resolve_device(args.device)

    with tempfile.TemporaryDirectory() as scratch:
        config = RunConfig(
            data=str(DEMO),
            backbone=args.backbone,
            image_size=args.image_size,
            subset=args.fraction,
            workers=0,
            device=str(device),
        )
        prepared = prepare(config, cache_dir=Path(scratch) / "cache", progress=False)
        n_units = len(freeze_units(prepared.backbone.model))
        half = f"top:{n_units // 2}"
        common = {
            "epochs": args.epochs,
            "head_epochs": 0,
            "batch_size": args.batch_size,
            "patience": args.epochs,
            "lp_init": False,  # a random head, so each mode's val accuracy reflects its own training
        }
        modes = {
            "(a) full fine-tuning": FinetuneOptions(unfreeze="all", **common),
            f"(b) {half}, frozen part run forward": FinetuneOptions(unfreeze=half, **common),
            f"(c) {half}, cached boundary x{args.views}": FinetuneOptions(
                unfreeze=half, cache_views=args.views, **common
            ),
        }
        if devices.training_precision(device) != "fp32":
            modes[FP32_MODE] = modes["(a) full fine-tuning"]
        results: dict[str, list[dict]] = {label: [] for label in modes}
        for round_index in range(args.rounds):
            order = list(modes) if round_index % 2 == 0 else list(reversed(modes))  # cancels drifting load
            for label in order:
                run_dir = Path(scratch) / f"{label[:3]}-{round_index}"
                results[label].append(measure(prepared, modes[label], run_dir, fp32=label == FP32_MODE))

    counts = prepared.split.counts()
    print(
        f"{args.backbone} at {args.image_size} px on {device} ({devices.describe(device)['name']}, trains in "
        f"{devices.training_precision(device)}), {counts['train']} train / {counts['val']} val images "
        f"({args.fraction:.0%} of examples/fashion), {args.epochs} epochs, batch {args.batch_size}, {n_units} units, "
        f"{args.rounds} rounds"
    )
    print(f"{'mode':<40} {'s/epoch per round':>18} {'mean':>6} {'ratio':>6} {'other s':>8} {'best val acc':>15}")
    mean = {label: float(np.mean([r["per_epoch"] for r in rows])) for label, rows in results.items()}
    other = {label: float(np.mean([r["other"] for r in rows])) for label, rows in results.items()}
    base = mean["(a) full fine-tuning"]
    for label, rows in results.items():
        per_round = " ".join(f"{r['per_epoch']:.1f}" for r in rows)
        print(
            f"{label:<40} {per_round:>18} {mean[label]:6.1f} {mean[label] / base:6.2f} {other[label]:8.1f} "
            f"{rows[0]['best']:>15}"
        )
    if FP32_MODE in mean:
        print(f"AMP ({devices.training_precision(device)}) vs fp32 epoch: {mean[FP32_MODE] / base:.2f}x faster")
    labels = list(modes)
    caching = other[labels[2]] - other[labels[1]]
    amortized = mean[labels[2]] + caching / args.epochs
    print(
        f"caching ≈ other(c) - other(b) = {caching:.1f} s; (c) with caching amortized over {args.epochs} epochs: "
        f"{amortized:.1f} s/epoch = {amortized / base:.2f} × (a)"
    )


if __name__ == "__main__":
    main()
