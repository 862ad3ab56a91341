"""Extraction speed at several CPU batch sizes ("default": loader batches of 32 run in passes of
``devices.forward_batch_size``), alternated in one process on the same images (each pass into a fresh
cache), so that a busy machine slows both alike; the median img/s of each, and whether the features are identical.

    python bench/batch_ab.py DATA [--sizes 32,default,8] [--images 256] [--rounds 3] [--image-size 224]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

import numpy as np

from transferlab.backbones import DEFAULT_BACKBONE, load_backbone
from transferlab.data import load_dataset
from transferlab.features import extract_features
from transferlab.features.cache import content_hash
from transferlab.features.extract import Precision, feature_cache


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("data")
    parser.add_argument("--sizes", default="32,default,8")
    parser.add_argument("--images", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--precision", default="bf16")
    args = parser.parse_args()
    dataset = load_dataset(args.data)
    step = max(1, len(dataset) // args.images)
    paths = [dataset.absolute(i) for i in range(0, len(dataset), step)][: args.images]
    digests = [content_hash(path) for path in paths]
    backbone = load_backbone(DEFAULT_BACKBONE, image_size=args.image_size)
    precision = Precision(args.precision)
    sizes = args.sizes.split(",")
    speeds: dict[str, list[float]] = {size: [] for size in sizes}
    features: dict[str, dict[str, np.ndarray]] = {}
    with tempfile.TemporaryDirectory() as work:
        for round_ in range(args.rounds):
            for size in sizes if round_ % 2 == 0 else sizes[::-1]:
                cache = feature_cache(backbone, Path(work) / f"{size}-{round_}", precision)
                report = extract_features(
                    backbone,
                    paths,
                    digests,
                    cache,
                    precision=precision,
                    batch_size=None if size == "default" else int(size),
                    progress=False,
                )
                speeds[size].append(report.images_per_second or 0.0)
                features[size] = cache.load(digests, list(backbone.cut_dims))
    first = features[sizes[0]]
    for size in sizes:
        same = all(np.array_equal(first[name], features[size][name]) for name in first)
        runs = ", ".join(f"{speed:.1f}" for speed in speeds[size])
        print(f"batch {size}: median {statistics.median(speeds[size]):.1f} img/s ({runs}); "
              f"features identical to batch {sizes[0]}: {same}")  # fmt: skip


if __name__ == "__main__":
    main()
