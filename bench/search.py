"""Head search on cached features vs the Keras-style procedure that runs the frozen backbone on every epoch.

Measured side by side in one run, on the same data and backbone:
1. one feature-extraction pass over every image (fresh cache): the unit of cost;
2. an N-trial head search (default 50) on those cached features, exactly as ``transferlab search`` runs it, once
   per ``--jobs`` value (1: one process, the reproducible default; 2: one process per core of this machine);
3. Keras-style: a few epochs measured for real (backbone forward over train+val images, then one head epoch on
   the result), extrapolated to the total number of epochs the search's trials actually ran. Running all of them
   would take hours on a shared 2-core CPU; the extrapolation is per-epoch time × epochs, stated as such.

    python bench/search.py [--data examples/fashion] [--trials 50] [--jobs 1,2] [--keras-epochs 3]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

from transferlab.config import RunConfig
from transferlab.features import extract_features, feature_cache
from transferlab.prepare import prepare
from transferlab.search import search_heads
from transferlab.search.data import HeadData
from transferlab.search.space import decode
from transferlab.search.train import TrainParams, train_head


def keras_style_epoch(prepared, scratch: Path, spec, params: TrainParams) -> float:
    """Seconds of one epoch when nothing is cached: backbone forward over train+val, then one head epoch."""
    start = time.perf_counter()
    precision = prepared.extraction.precision_used
    cache = feature_cache(prepared.backbone, scratch / f"epoch-{time.monotonic_ns()}", precision)
    rows = np.concatenate([prepared.split.indices("train"), prepared.split.indices("val")])
    paths = [prepared.dataset.absolute(int(i)) for i in rows]
    digests = [prepared.hashes[int(i)] for i in rows]
    extract_features(prepared.backbone, paths, digests, cache, precision=precision, progress=False)
    features = cache.load(digests, [prepared.config.cut_point])[prepared.config.cut_point]
    n_train = len(prepared.split.indices("train"))
    y = prepared.dataset.y[rows]
    pooled = {"train": features[:n_train], "val": features[n_train:]}
    data = HeadData.from_arrays(pooled, {"train": y[:n_train], "val": y[n_train:]}, prepared.dataset.classes)
    train_head(spec, TrainParams(params.lr, params.weight_decay, params.batch_size, epochs=1), data)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default="examples/fashion")
    parser.add_argument("--trials", type=int, default=50)
    parser.add_argument("--jobs", default="1,2", help="comma-separated process counts to measure the search with")
    parser.add_argument("--keras-epochs", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-search-") as scratch:
        scratch = Path(scratch)
        prepared = prepare(RunConfig(data=args.data), cache_dir=scratch / "cache", progress=False)
        extraction = prepared.extraction.seconds
        print(f"extraction pass: {prepared.extraction.computed} images in {extraction:.1f}s")

        seconds, epochs_of = {}, {}
        for jobs in (int(part) for part in args.jobs.split(",")):
            outcome = search_heads(prepared, scratch / f"run-{jobs}", trials=args.trials, seed=0, jobs=jobs)
            seconds[jobs] = outcome.record["search_seconds"]
            epochs_of[jobs] = sum(len(t["curve"]) for t in outcome.record["trials"])
            print(
                f"cached search, {jobs} process(es): {args.trials} trials ({epochs_of[jobs]} epochs) "
                f"in {seconds[jobs]:.1f}s"
            )
            print(f"  then refit of the top heads + probe baseline: {outcome.record['refit_seconds']:.1f}s")
            print(f"  ratio to one extraction pass: {seconds[jobs] / extraction:.2f}")
            print("  " + outcome.summary().replace("\n", "\n  "))
        fastest = min(seconds, key=seconds.get)
        trials_only, epochs = seconds[fastest], epochs_of[fastest]

        spec, params = decode(outcome.best_params, multilabel=prepared.dataset.multilabel)
        per_epoch = [keras_style_epoch(prepared, scratch, spec, params) for _ in range(args.keras_epochs)]
        keras = float(np.mean(per_epoch)) * epochs
        print(f"keras-style epoch (measured {args.keras_epochs}x): {np.mean(per_epoch):.1f}s")
        print(f"keras-style search (extrapolated to the same {epochs} epochs): {keras:.0f}s")
        print(f"ratio keras-style / fastest cached search: {keras / trials_only:.0f}x")


if __name__ == "__main__":
    main()
