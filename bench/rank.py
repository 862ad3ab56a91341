"""Ranking cost: scoring every cut point on cached features vs the one feature-extraction pass that fed them.

Extracts features once into a fresh cache (all cut points in one forward pass), then times each score on every cut
point separately (LogME, cross-validated k-NN, cross-validated quick probe) and prints both and their ratio. CPU
time is printed next to wall time because the reference machine is shared: wall time moves with load.

    python bench/rank.py [--backbone tf_efficientnet_lite0] [--subset 0.25]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
from threadpoolctl import threadpool_limits

from transferlab.config import RunConfig
from transferlab.data.split import cv_folds
from transferlab.prepare import prepare
from transferlab.rank.logme import logme_score
from transferlab.rank.ranking import train_val_targets
from transferlab.rank.scores import knn_cv, probe_cv

DEMO = Path(__file__).resolve().parents[1] / "examples" / "fashion"


def timed(function, *args):
    wall, cpu = time.perf_counter(), time.process_time()
    function(*args)
    return time.perf_counter() - wall, time.process_time() - cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", default="tf_efficientnet_lite0")
    parser.add_argument("--subset", type=float, default=0.25)
    args = parser.parse_args()
    config = RunConfig(data=str(DEMO), backbone=args.backbone, subset=args.subset)
    with tempfile.TemporaryDirectory() as cache_dir:
        cpu = time.process_time()
        prepared = prepare(config, cache_dir=cache_dir, progress=False)
        extraction_cpu = time.process_time() - cpu
        extraction = prepared.extraction.seconds
        y = train_val_targets(prepared)
        folds = cv_folds(y, config.seed)
        totals = {"logme": [0.0, 0.0], "knn": [0.0, 0.0], "probe": [0.0, 0.0]}
        print(f"{prepared.backbone.name}: {len(prepared.hashes)} images, {len(y)} train+val, {len(folds)} folds")
        print(f"{'cut':<9} {'dim':>5} {'LogME s':>8} {'k-NN s':>8} {'probe s':>8}")
        for cut, dim in prepared.backbone.cut_dims.items():
            features = prepared.features(cut)
            x = np.concatenate([features["train"], features["val"]]).astype(np.float64)
            with threadpool_limits(limits=1):  # as transferlab.rank.ranking.score_backbone does
                logme = timed(logme_score, x, y)
            knn, probe = timed(knn_cv, x, y, folds), timed(probe_cv, x, y, folds, config.seed)
            row = {"logme": logme, "knn": knn, "probe": probe}
            for key, (wall, cpu_seconds) in row.items():
                totals[key][0] += wall
                totals[key][1] += cpu_seconds
            print(f"{cut:<9} {dim:>5} {row['logme'][0]:>8.2f} {row['knn'][0]:>8.2f} {row['probe'][0]:>8.2f}")
    scoring_wall = sum(wall for wall, _ in totals.values())
    scoring_cpu = sum(cpu_seconds for _, cpu_seconds in totals.values())
    cuts = len(prepared.backbone.cut_dims)
    print(f"extraction pass (all {cuts} cut points): {extraction:.1f}s wall, {extraction_cpu:.1f}s CPU (incl. load)")
    print(
        "scoring all cut points: "
        + ", ".join(f"{key} {wall:.1f}s" for key, (wall, _) in totals.items())
        + f" = {scoring_wall:.1f}s wall, {scoring_cpu:.1f}s CPU"
    )
    print(f"ratio scoring / extraction (wall): {scoring_wall / extraction:.2f}")


if __name__ == "__main__":
    main()
