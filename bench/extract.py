"""Feature-extraction throughput on one device: a naive fp32 PyTorch loop, the network alone on pre-decoded
tensors (the limit), and transferlab's extractor from files; same images, model and device.

The naive loop and ours decode the same image files with the same transform and DataLoader workers; the naive loop
runs the model in float32 with the default memory format (what a tutorial does), ours uses channels_last + the
device's reduced precision (when accurate) and also writes the feature cache. The limit row runs our forward pass
on tensors decoded beforehand, so it shows how close decoding lets us get. Rounds alternate so background load hits
every row alike.

    python bench/extract.py [--images 320] [--backbone tf_efficientnet_lite0] [--rounds 2] [--device auto]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from transferlab import devices
from transferlab.backbones import load_backbone
from transferlab.data import load_dataset
from transferlab.features import decide_precision, extract_features, feature_cache
from transferlab.features.cache import content_hash
from transferlab.features.extract import ImageFiles, collate_images

DEMO = Path(__file__).resolve().parents[1] / "examples" / "fashion"


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def naive_fp32(backbone, paths: list[Path], batch_size: int, workers: int, device: torch.device) -> float:
    """Images per second of a plain fp32 loop: decode, copy to the device, forward, pooled features to numpy."""
    loader = DataLoader(
        ImageFiles(paths, backbone.transform()), batch_size=batch_size, num_workers=workers, collate_fn=collate_images
    )
    model = backbone.model.to(device, memory_format=torch.contiguous_format)
    start = time.perf_counter()
    with torch.no_grad():
        for _, images, _ in loader:
            model(images.to(device)).cpu().numpy()
    return len(paths) / (time.perf_counter() - start)


def limit(backbone, batches: list[torch.Tensor], precision: str, device: torch.device) -> float:
    """Images per second of our forward pass alone (channels_last, ``precision``) on already-decoded batches."""
    backbone.model.to(device, memory_format=torch.channels_last)
    _synchronize(device)
    start = time.perf_counter()
    with torch.inference_mode(), devices.autocast(device, precision):
        for images in batches:
            on_device = images.to(device, non_blocking=True).contiguous(memory_format=torch.channels_last)
            for value in backbone.features(on_device).values():
                value.float().cpu().numpy()
    _synchronize(device)
    return sum(len(b) for b in batches) / (time.perf_counter() - start)


def ours(backbone, paths: list[Path], batch_size: int, workers: int, device: torch.device) -> tuple[float, str]:
    digests = [content_hash(path) for path in paths]
    with tempfile.TemporaryDirectory() as cache_dir:
        precision = decide_precision(backbone, paths, digests, Path(cache_dir), device)
        cache = feature_cache(backbone, Path(cache_dir), precision)
        report = extract_features(
            backbone,
            paths,
            digests,
            cache,
            precision=precision,
            device=device,
            batch_size=batch_size,
            workers=workers,
            progress=False,
        )
    return len(paths) / report.seconds, report.precision


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=320)
    parser.add_argument("--backbone", default="tf_efficientnet_lite0")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--device", default="auto", help=devices.DEVICE_HELP)
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads (default 2: this machine)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = devices.resolve_device(args.device)
    dataset = load_dataset(DEMO)
    paths = [dataset.absolute(i) for i in range(min(args.images, len(dataset)))]
    backbone = load_backbone(args.backbone)
    # Each side's model is built once; the naive side gets the same weights without our memory-format change.
    naive_backbone = load_backbone(args.backbone)
    naive_fp32(naive_backbone, paths[: args.batch_size], args.batch_size, 0, device)  # warm-up (allocators, kernels)
    decoded = torch.stack([image for _, image, reason in ImageFiles(paths, backbone.transform()) if not reason])
    batches = list(decoded.split(args.batch_size))
    naive_rates, limit_rates, our_rates, precision = [], [], [], ""
    for _ in range(args.rounds):
        naive_rates.append(naive_fp32(naive_backbone, paths, args.batch_size, args.workers, device))
        rate, precision = ours(backbone, paths, args.batch_size, args.workers, device)
        our_rates.append(rate)
        limit_rates.append(limit(backbone, batches, precision, device))
    naive, network, fast = max(naive_rates), max(limit_rates), max(our_rates)
    size = backbone.data_config["input_size"][-1]
    print(
        f"{args.backbone} at {size} px on {device} ({devices.describe(device)['name']}), {len(paths)} images, "
        f"batch {args.batch_size}, {torch.get_num_threads()} threads, {args.workers} decode worker(s), "
        f"best of {args.rounds} rounds"
    )
    print(f"naive fp32 loop from files:          {naive:8.1f} img/s")
    print(f"network alone, decoded tensors ({precision}): {network:8.1f} img/s (the limit)")
    print(f"transferlab from files ({precision}):   {fast:8.1f} img/s (includes writing the feature cache)")
    print(f"ratio vs naive: {fast / naive:.2f}x; share of the limit: {fast / network:.0%}")


if __name__ == "__main__":
    main()
