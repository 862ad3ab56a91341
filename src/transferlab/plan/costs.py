"""What each stage will cost here, measured before anything is spent: a backbone's decode and forward time per
image at its own resolution on this device (from a few of the user's images), and how many of the images already
have cached features (those cost nothing).

The per-stage formulas are deliberately simple and conservative (decoding and the forward pass are added, not
overlapped); the planner corrects them by the ratio of actual to estimated time as stages finish.
"""

from __future__ import annotations

import logging
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from transferlab import devices
from transferlab.backbones.cut import HEAD
from transferlab.backbones.model import Backbone, load_backbone
from transferlab.config import RunConfig
from transferlab.features.extract import FP32, ImageFiles, Precision, feature_cache

log = logging.getLogger(__name__)

SAMPLE_IMAGES = 8
WARMUP_BATCHES = 1
TIMED_BATCHES = 1
TRAIN_FACTOR = 3.0  # a training step (forward + backward + update) vs an inference forward pass
PROBE_SECONDS_PER_UNIT = 1e-6  # × train+val images × feature dims × classes; one 400 × 1280 10-class probe ≈ 5 s
PROBE_INPUTS = 2.4  # the probe fits the pre-logits and the joined depths (≈ 1.4 × the pre-logits' width)
FINETUNE_SETUP_SECONDS = 5.0


@dataclass
class BackboneCost:
    """Measured costs of one backbone on this device and data."""

    name: str
    weights: str | None
    image_size: int
    decode: float  # seconds per image: read, resize, normalise
    forward: float  # seconds per image: one inference pass at ``image_size`` in the extraction precision
    fp32_forward: float  # the same in fp32 (validation and test images are extracted in fp32)
    train_forward: float  # the same in the training precision (fp32 on the CPU, AMP on CUDA)
    images: int
    cached: int  # images whose features are already in the cache
    dims: int  # pre-logit feature width

    def extraction(self, held_out: float) -> float:
        """Features of the uncached images, the ``held_out`` fraction of them (validation + test) in fp32."""
        per_image = self.decode + (1 - held_out) * self.forward + held_out * self.fp32_forward
        return (self.images - self.cached) * per_image

    def probe(self, fit_images: int, outputs: int) -> float:
        return 1.0 + PROBE_SECONDS_PER_UNIT * fit_images * self.dims * PROBE_INPUTS * max(2, outputs)

    def first_model(self, fit_images: int, outputs: int, held_out: float) -> float:
        """Extraction, then the probe: what every run spends before it has a usable model."""
        return self.extraction(held_out) + self.probe(fit_images, outputs)

    def epoch(self, train_images: int, val_images: int) -> float:
        """One fine-tuning epoch: a training pass over ``train_images``, a validation pass over ``val_images``."""
        step = self.decode + TRAIN_FACTOR * self.train_forward
        return train_images * step + val_images * (self.decode + self.train_forward)

    def finetune_overhead(self, scored_images: int) -> float:
        """Set-up, the start's validation and the final scoring of ``scored_images`` (val + test)."""
        return FINETUNE_SETUP_SECONDS + scored_images * (self.decode + self.train_forward)


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


def _sample(paths: list[Path], n: int) -> list[Path]:
    """``n`` paths spread over the list (images of every class, not only the first folder's)."""
    step = max(1, len(paths) // n)
    return paths[::step][:n]


def measure_backbone(
    config: RunConfig,
    name: str,
    weights: str | None,
    paths: list[Path],
    digests: list[str],
    root: Path,
    device: torch.device,
) -> BackboneCost:
    """Time decoding and one forward pass of a few of the user's images on ``device``; count cached features."""
    backbone = load_backbone(
        name, weights, allow_download=config.allow_download, image_size=config.image_size, crop_pct=config.crop_pct
    )
    backbone.model.to(device).eval()
    files = ImageFiles(_sample(paths, SAMPLE_IMAGES + 1), backbone.transform())
    files[0]  # warm-up: the first decode pays for imports and codec set-up
    images, seconds = [], []
    for index in range(1, len(files)):
        started = time.perf_counter()
        _, image, reason = files[index]
        seconds.append(time.perf_counter() - started)
        if not reason:
            images.append(image)
    decode = statistics.median(seconds) if seconds else 0.0  # (a cold read or a busy moment is not the rule)
    size = int(backbone.data_config["input_size"][-1])
    batch = torch.stack(images) if images else torch.zeros(SAMPLE_IMAGES, 3, size, size)
    # timed at the extraction's forward pass size: small batches on a busy machine measured up to 25x slow (threads
    # waiting on each other), while the real batches ran at 3x
    whole = devices.default_batch_size(device)
    batch_size = config.batch_size or min(whole, devices.forward_batch_size(device, size) or whole)
    batch = batch.repeat((batch_size + len(batch) - 1) // len(batch), 1, 1, 1)[:batch_size]
    batch = batch.to(device).contiguous(memory_format=devices.memory_format(device))
    reduced = devices.reduced_precision(device)
    fp32 = _forward_seconds(backbone, batch, device, devices.FP32)
    forward = fp32 if reduced is None else _forward_seconds(backbone, batch, device, reduced)
    train_forward = forward if devices.training_precision(device) == reduced else fp32
    caches = [feature_cache(backbone, root, Precision(FP32.name, device=device.type))]
    if reduced is not None:
        caches.append(feature_cache(backbone, root, Precision(reduced, device=device.type)))
    cached = sum(1 for digest in digests if any(digest in cache for cache in caches))
    dims = backbone.cut_dims.get(HEAD) or int(getattr(backbone.model, "num_features", 1280))
    log.debug(f"{name}: decode {decode * 1e3:.1f} ms, forward {forward * 1e3:.1f} ms per image, {cached} cached")
    return BackboneCost(name, weights, size, decode, forward, fp32, train_forward, len(digests), cached, dims)


def _forward_seconds(backbone: Backbone, batch: torch.Tensor, device: torch.device, precision: str) -> float:
    """Seconds per image of one inference pass at ``precision``, timed after a warm-up batch of the same shape
    (first-call allocations and kernel selection); the fastest when several are timed."""
    timings = []
    with torch.no_grad(), devices.autocast(device, precision):
        for _ in range(WARMUP_BATCHES):
            backbone.features(batch)
        for _ in range(TIMED_BATCHES):
            _synchronize(device)
            started = time.perf_counter()
            backbone.features(batch)
            _synchronize(device)
            timings.append(time.perf_counter() - started)
    return min(timings) / len(batch)
