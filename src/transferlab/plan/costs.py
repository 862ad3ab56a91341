"""What each stage will cost here, measured before anything is spent: a backbone's decode and forward time per
image at its own resolution on this device (from a few of the user's images), and how many of the images already
have cached features (those cost nothing).

The per-stage formulas are deliberately simple and conservative (decoding and the forward pass are added, not
overlapped); the planner corrects them by the ratio of actual to estimated time as stages finish.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from transferlab import devices
from transferlab.backbones.cut import HEAD
from transferlab.backbones.model import load_backbone
from transferlab.config import RunConfig
from transferlab.features.extract import FP32, ImageFiles, Precision, feature_cache

log = logging.getLogger(__name__)

SAMPLE_IMAGES = 8
TIMED_BATCHES = 3
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
    forward: float  # seconds per image: one inference pass at ``image_size``
    images: int
    cached: int  # images whose features are already in the cache
    dims: int  # pre-logit feature width

    def extraction(self) -> float:
        return (self.images - self.cached) * (self.decode + self.forward)

    def probe(self, fit_images: int, outputs: int) -> float:
        return 1.0 + PROBE_SECONDS_PER_UNIT * fit_images * self.dims * PROBE_INPUTS * max(2, outputs)

    def first_model(self, fit_images: int, outputs: int) -> float:
        """Extraction, then the probe: what every run spends before it has a usable model."""
        return self.extraction() + self.probe(fit_images, outputs)

    def epoch(self, train_images: int, val_images: int) -> float:
        """One fine-tuning epoch: a training pass over ``train_images``, a validation pass over ``val_images``."""
        step = self.decode + TRAIN_FACTOR * self.forward
        return train_images * step + val_images * (self.decode + self.forward)

    def finetune_overhead(self, scored_images: int) -> float:
        """Set-up, the start's validation and the final scoring of ``scored_images`` (val + test)."""
        return FINETUNE_SETUP_SECONDS + scored_images * (self.decode + self.forward)


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
    started = time.perf_counter()
    images = [image for _, image, reason in (files[i] for i in range(1, len(files))) if not reason]
    decode = (time.perf_counter() - started) / max(1, len(files) - 1)
    size = int(backbone.data_config["input_size"][-1])
    batch = torch.stack(images) if images else torch.zeros(SAMPLE_IMAGES, 3, size, size)
    batch = batch.to(device).contiguous(memory_format=devices.memory_format(device))
    timings = []
    with torch.no_grad():
        backbone.features(batch)  # warm-up: first-call allocations and kernel selection for this batch shape
        for _ in range(TIMED_BATCHES):  # the fastest of a few: one sample is at the mercy of a busy machine
            _synchronize(device)
            started = time.perf_counter()
            backbone.features(batch)
            _synchronize(device)
            timings.append(time.perf_counter() - started)
    forward = min(timings) / len(batch)
    reduced = devices.reduced_precision(device)
    caches = [feature_cache(backbone, root, Precision(FP32.name, device=device.type))]
    if reduced is not None:
        caches.append(feature_cache(backbone, root, Precision(reduced, device=device.type)))
    cached = sum(1 for digest in digests if any(digest in cache for cache in caches))
    dims = backbone.cut_dims.get(HEAD) or int(getattr(backbone.model, "num_features", 1280))
    log.debug(f"{name}: decode {decode * 1e3:.1f} ms, forward {forward * 1e3:.1f} ms per image, {cached} cached")
    return BackboneCost(name, weights, size, decode, forward, len(digests), cached, dims)
