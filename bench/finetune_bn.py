"""BatchNorm policy in trainable blocks: stored statistics (``--bn-stats frozen``, default) vs batch statistics
re-estimated on the training images (``--bn-stats batch``). Same data, split, probe warm start, head stage, LRs,
augmentation and seed for both; the head stage is identical, so the head-only row is the common baseline.

Prints per policy: the unfreeze stage's first-epoch training loss (after LR-sanity restarts, counted) next to the
head stage's last one (a jump means the head suddenly sees different features), best validation accuracy, and test
accuracy of the final model vs the head-only model.

    OMP_NUM_THREADS=1 python bench/finetune_bn.py [--fraction 0.3] [--image-size 112] [--unfreeze top:3]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from transferlab.config import RunConfig
from transferlab.finetune import FinetuneOptions, finetune
from transferlab.prepare import prepare

DEMO = Path(__file__).resolve().parents[1] / "examples" / "fashion"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", default="tf_efficientnet_lite0")
    parser.add_argument("--fraction", type=float, default=0.3, help="stratified fraction of examples/fashion")
    parser.add_argument("--image-size", type=int, default=112)
    parser.add_argument("--unfreeze", default="top:3")
    parser.add_argument("--head-epochs", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=3)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as scratch:
        config = RunConfig(
            data=str(DEMO), backbone=args.backbone, image_size=args.image_size, subset=args.fraction, workers=0
        )
        prepared = prepare(config, cache_dir=Path(scratch) / "cache", progress=False)
        print(f"{args.backbone} {args.image_size}px, split {prepared.split.counts()}, unfreeze {args.unfreeze}")
        head_only = {"head_epochs": args.head_epochs, "unfreeze": "none"}
        rows = [("head only (baseline)", FinetuneOptions(**head_only))]
        for policy in ("frozen", "batch"):
            options = FinetuneOptions(
                unfreeze=args.unfreeze, head_epochs=args.head_epochs, epochs=args.epochs, bn_stats=policy
            )
            rows.append((f"bn-stats {policy}", options))
        print(
            f"{'policy':<22} {'head last loss':>14} {'stage 1st loss':>14} {'restarts':>8} {'best val':>8} "
            f"{'test':>6} {'s':>6}"
        )
        for label, options in rows:
            started = time.perf_counter()
            outcome = finetune(prepared, Path(scratch) / label.split()[-1], options)
            head, *rest = outcome.stages
            first = f"{rest[0]['history'][0]['train_loss']:.3f}" if rest else "-"
            restarts = len(rest[0]["restarts"]) if rest else 0
            print(
                f"{label:<22} {head['history'][-1]['train_loss']:>14.3f} {first:>14} {restarts:>8} "
                f"{outcome.stages[-1]['best_val_metric']:>8.3f} {outcome.test_metrics['accuracy']:>6.3f} "
                f"{time.perf_counter() - started:>6.0f}"
            )


if __name__ == "__main__":
    main()
