"""Feature-extraction throughput: transferlab's extractor vs a naive fp32 PyTorch loop, same images and model.

Both sides decode the same image files with the same transform and DataLoader workers; the naive loop runs the
model in float32 with the default memory format (what a tutorial does), ours uses channels_last + bf16 autocast
(when accurate) and also writes the feature cache. Rounds alternate naive/ours so background load hits both alike.

    python bench/extract.py [--images 320] [--backbone tf_efficientnet_lite0] [--rounds 2]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from transferlab.backbones import load_backbone
from transferlab.data import load_dataset
from transferlab.features import decide_precision, extract_features, feature_cache
from transferlab.features.cache import content_hash
from transferlab.features.extract import ImageFiles, collate_images

DEMO = Path(__file__).resolve().parents[1] / "examples" / "fashion"


def naive_fp32(backbone, paths: list[Path], batch_size: int, workers: int) -> float:
    """Images per second of a plain fp32 loop: decode, forward, pooled features to numpy."""
    loader = DataLoader(
        ImageFiles(paths, backbone.transform()), batch_size=batch_size, num_workers=workers, collate_fn=collate_images
    )
    model = backbone.model.to(memory_format=torch.contiguous_format)
    start = time.perf_counter()
    with torch.no_grad():
        for _, images, _ in loader:
            model(images).numpy()
    return len(paths) / (time.perf_counter() - start)


def ours(backbone, paths: list[Path], batch_size: int, workers: int) -> tuple[float, str]:
    digests = [content_hash(path) for path in paths]
    with tempfile.TemporaryDirectory() as cache_dir:
        precision = decide_precision(backbone, paths, digests, Path(cache_dir))
        cache = feature_cache(backbone, Path(cache_dir), precision)
        report = extract_features(
            backbone, paths, digests, cache, precision=precision, batch_size=batch_size, workers=workers, progress=False
        )
    return len(paths) / report.seconds, report.precision


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=320)
    parser.add_argument("--backbone", default="tf_efficientnet_lite0")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(2)
    dataset = load_dataset(DEMO)
    paths = [dataset.absolute(i) for i in range(min(args.images, len(dataset)))]
    backbone = load_backbone(args.backbone)
    # Each side's model is built once; the naive side gets the same weights without our memory-format change.
    naive_backbone = load_backbone(args.backbone)
    naive_fp32(naive_backbone, paths[: args.batch_size], args.batch_size, 0)  # warm-up (allocators, kernels)
    naive_rates, our_rates, precision = [], [], ""
    for _ in range(args.rounds):
        naive_rates.append(naive_fp32(naive_backbone, paths, args.batch_size, args.workers))
        rate, precision = ours(backbone, paths, args.batch_size, args.workers)
        our_rates.append(rate)
    naive, fast = max(naive_rates), max(our_rates)
    size = backbone.data_config["input_size"][-1]
    print(
        f"{args.backbone} at {size} px, {len(paths)} images, batch {args.batch_size}, "
        f"{torch.get_num_threads()} threads, {args.workers} decode worker(s), best of {args.rounds} rounds"
    )
    print(f"naive fp32 loop:      {naive:7.1f} img/s")
    print(f"transferlab ({precision}): {fast:7.1f} img/s (includes writing the feature cache)")
    print(f"ratio: {fast / naive:.2f}x")


if __name__ == "__main__":
    main()
