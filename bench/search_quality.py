"""Does the head search beat the plain probe on test, and does averaging its top heads help? Many splits, side by side.

One test split of ~120 images moves in steps of 0.8 points, so a single split cannot tell a better predictor from
a lucky one. This runs the search (as ``transferlab search`` does, ``--trials`` each) on several stratified splits
(``--splits``: split seeds) with several search seeds, and prints per run the test metric of the plain probe,
the single best head and the average of the top ``--ensemble`` heads, then wins / ties / losses against the probe
and the mean difference. Features come from the shared cache, so only the first run extracts.

    python bench/search_quality.py [--data examples/fashion] [--splits 1,2,...,8] [--search-seeds 0,1]
                                   [--trials 30] [--ensemble 5] [--image-size N] [--cut-point head]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
import optuna

from transferlab.config import RunConfig
from transferlab.prepare import prepare
from transferlab.search import search_heads


def _numbers(text: str) -> list[int]:
    return [int(part) for part in text.split(",") if part.strip()]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default="examples/fashion")
    parser.add_argument("--splits", default="1,2,3,4,5,6,7,8", help="split seeds (0 is the default split)")
    parser.add_argument("--search-seeds", default="0,1")
    parser.add_argument("--trials", type=int, default=30)
    parser.add_argument("--ensemble", type=int, default=5)
    parser.add_argument("--image-size", type=int)
    parser.add_argument("--cut-point", default="head")
    args = parser.parse_args()
    optuna.logging.set_verbosity(optuna.logging.WARNING)

    differences: dict[str, list[float]] = {"best head": [], f"top-{args.ensemble} average": []}
    print(f"{'split':>5} {'search':>6} {'probe':>7} {'best':>7} {'top-' + str(args.ensemble):>7}")
    for split_seed in _numbers(args.splits):
        config = RunConfig(args.data, seed=split_seed, image_size=args.image_size, cut_point=args.cut_point)
        prepared = prepare(config, progress=False)
        for search_seed in _numbers(args.search_seeds):
            with tempfile.TemporaryDirectory(prefix="bench-quality-") as scratch:
                outcome = search_heads(
                    prepared,
                    Path(scratch),
                    trials=args.trials,
                    seed=search_seed,
                    ensemble=args.ensemble,
                )
            metric = "mAP" if "mAP" in outcome.test_metrics else "accuracy"
            probe, best, top = (
                m[metric] for m in (outcome.probe_test_metrics, outcome.best_test_metrics, outcome.test_metrics)
            )
            differences["best head"].append(best - probe)
            differences[f"top-{args.ensemble} average"].append(top - probe)
            print(f"{split_seed:>5} {search_seed:>6} {probe:>7.4f} {best:>7.4f} {top:>7.4f}", flush=True)
    for name, values in differences.items():
        diff = np.asarray(values)
        print(
            f"{name} vs probe: {int((diff > 1e-9).sum())} wins / {int((abs(diff) <= 1e-9).sum())} ties / "
            f"{int((diff < -1e-9).sum())} losses, mean {100 * diff.mean():+.2f} points over {len(diff)} runs"
        )


if __name__ == "__main__":
    main()
