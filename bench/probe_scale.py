"""Does the linear probe scale? ``fit_probe`` at growing image counts, C chosen by CV on every row (what the probe
did before) vs on a stratified sample of ``CV_ROWS`` rows with the final fits on every row (what it does now):
wall seconds and test accuracy side by side, in one run.

The features are synthetic but shaped like a CNN's pooled ones (1,280 non-negative channels, a 64-dimensional
class signal spread over all of them, per-image noise), so the fit costs what real features cost; accuracy is
kept near 80-90% so that a worse C would show. Extraction is not part of this bench: at 100 img/s (Lite0, bf16,
2 cores) 100k images take about 1,000 s, which is what the probe's seconds should be compared with.

    python bench/probe_scale.py [--sizes 10000,30000,100000] [--full-up-to 30000]
"""

from __future__ import annotations

import argparse
import time
from unittest import mock

import numpy as np

from transferlab.probe import fit_probe, linear

DIM, CLASSES, SIGNAL = 1280, 10, 64


def synthetic(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    means = np.random.default_rng(0).normal(size=(CLASSES, SIGNAL))
    spread = np.random.default_rng(1).normal(size=(SIGNAL, DIM)) / 8
    y = rng.integers(0, CLASSES, n)
    z = means[y] + rng.normal(scale=3.0, size=(n, SIGNAL))
    return np.maximum(z @ spread + rng.normal(size=(n, DIM)), 0).astype(np.float32), y


def splits(n: int) -> tuple[dict, dict]:
    """85% train, 15% val (the probe fits on both), and a fixed 5,000-image test set."""
    x, y = synthetic(n, seed=n)
    cut = int(0.85 * n)
    test_x, test_y = synthetic(5000, seed=7)
    return {"train": x[:cut], "val": x[cut:], "test": test_x}, {"train": y[:cut], "val": y[cut:], "test": test_y}


def timed(features: dict, targets: dict, cv_rows: int) -> tuple[float, float, float, int]:
    with mock.patch.object(linear, "CV_ROWS", cv_rows):
        start = time.perf_counter()
        probe = fit_probe(features, targets, [str(c) for c in range(CLASSES)])
        seconds = time.perf_counter() - start
    return seconds, probe.metrics["test"]["accuracy"], float(probe.C), probe.cv_images


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="10000,30000,100000")
    parser.add_argument("--full-up-to", type=int, default=30000, help="largest size to also fit with CV on all rows")
    args = parser.parse_args()
    print("| images | CV on all rows: s | acc | C | CV on a sample: s | acc | C | CV rows |")
    print("|---|---|---|---|---|---|---|---|")
    for n in (int(size) for size in args.sizes.split(",")):
        features, targets = splits(n)
        if n <= args.full_up_to:
            full_s, full_acc, full_c, _ = timed(features, targets, cv_rows=10**9)
            full = f"{full_s:.0f} | {full_acc:.4f} | {full_c:g}"
        else:
            full = "(not run) | | "
        sampled_s, sampled_acc, sampled_c, rows = timed(features, targets, cv_rows=linear.CV_ROWS)
        print(f"| {n:,} | {full} | {sampled_s:.0f} | {sampled_acc:.4f} | {sampled_c:g} | {rows:,} |", flush=True)


if __name__ == "__main__":
    main()
