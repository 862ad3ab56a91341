"""Batched multi-depth feature extraction with the fast CPU path (channels_last + bf16 autocast) when it is accurate.

bf16 roughly doubles CPU throughput but is not safe for every model, so a calibration batch is run both ways and
bf16 is kept only if every cut point's features stay within cosine similarity 0.99 of float32. The calibration
images are the dataset's first by content hash, not whichever images happen to be uncached, and the decision is
part of the cache key: the same images and backbone always get the same precision, and features of two precisions
never mix in one cache. Images that cannot be decoded are reported by name and reason and left out; nothing else
stops.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from transferlab.backbones.model import Backbone
from transferlab.data.images import ImageLoadError, load_image
from transferlab.features.cache import FeatureCache
from transferlab.fileio import read_json, write_json

BF16_MIN_COSINE = 0.99
CALIBRATION_IMAGES = 8
SHARD_SIZE = 512


def shard_size() -> int:
    """Images per cache shard: ``$TRANSFERLAB_SHARD_SIZE`` or 512. Smaller shards lose less work to a kill."""
    value = os.environ.get("TRANSFERLAB_SHARD_SIZE", "")
    return int(value) if value.isdigit() and int(value) > 0 else SHARD_SIZE


class ImageFiles(Dataset):
    """Decoded, preprocessed images; a failure yields an empty tensor and the reason instead of raising."""

    def __init__(self, paths: list[Path], transform: Callable) -> None:
        self.paths = paths
        self.transform = transform

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[int, torch.Tensor, str]:
        try:
            return index, self.transform(load_image(self.paths[index])), ""
        except ImageLoadError as error:
            return index, torch.empty(0), error.reason


def collate_images(
    batch: list[tuple[int, torch.Tensor, str]],
) -> tuple[list[int], torch.Tensor | None, list[tuple[int, str]]]:
    """Stack the decodable images of an :class:`ImageFiles` batch; return their indices and the failures apart."""
    good = [(i, t) for i, t, reason in batch if not reason]
    failed = [(i, reason) for i, _, reason in batch if reason]
    images = torch.stack([t for _, t in good]) if good else None
    return [i for i, _ in good], images, failed


@dataclass
class ExtractionReport:
    """What extraction did: how many images were computed vs cached, which failed and how fast it ran."""

    computed: int = 0
    cached: int = 0
    failed: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0
    precision: str = "fp32"
    bf16_min_cosine: float | None = None

    @property
    def precision_used(self) -> Precision:
        return Precision(self.precision, self.bf16_min_cosine)

    @property
    def images_per_second(self) -> float | None:
        return self.computed / self.seconds if self.computed and self.seconds > 0 else None

    def followed_by(self, later: ExtractionReport) -> ExtractionReport:
        """This pass and a later one over the same cache as one report: images computed and seconds add up."""
        return replace(self, computed=self.computed + later.computed, seconds=self.seconds + later.seconds)


def _min_cosine(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    """The worst cut point's mean cosine similarity over the batch.

    A mean, not a per-image minimum: the 16-channel first stage of an EfficientNet pooled over a near-uniform image
    (a black product-photo background) can dip to 0.985 on one image while every cut point averages > 0.995.
    """
    return min(float(torch.nn.functional.cosine_similarity(a[k], b[k], dim=1).mean()) for k in a)


def _fp32_forced() -> bool:
    """No oneDNN bf16 kernels, or the user set ``TRANSFERLAB_FP32=1``."""
    return not torch.backends.mkldnn.is_available() or os.environ.get("TRANSFERLAB_FP32") == "1"


def choose_precision(backbone: Backbone, images: torch.Tensor) -> tuple[str, float | None]:
    """'bf16' if autocast keeps every cut point's features within the cosine bound of float32 (on average over the
    first batch), else 'fp32'."""
    if _fp32_forced():
        return "fp32", None
    with torch.inference_mode():
        reference = backbone.features(images)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            fast = backbone.features(images)
    cosine = _min_cosine(reference, fast)
    return ("bf16" if cosine > BF16_MIN_COSINE else "fp32"), cosine


@dataclass(frozen=True)
class Precision:
    """How features are computed: 'bf16' (autocast) or 'fp32', and the calibration cosine that decided it."""

    name: str
    bf16_min_cosine: float | None = None


FP32 = Precision("fp32")


def feature_cache(backbone: Backbone, root: Path, precision: Precision) -> FeatureCache:
    """The cache of ``backbone``'s pooled features computed at ``precision`` (each precision has its own)."""
    return FeatureCache(root, {**backbone.identity(), "precision": precision.name})


def decide_precision(backbone: Backbone, paths: list[Path], digests: list[str], root: Path) -> Precision:
    """The precision for these images: :func:`choose_precision` on the first decodable images by content hash.

    Remembered under ``<root>/precision/`` by backbone identity and calibration hashes, so a fully cached run does
    not run the backbone at all. ``TRANSFERLAB_FP32=1`` forces fp32 (and is not remembered).
    """
    if _fp32_forced():
        return FP32
    files = ImageFiles([paths[i] for i in sorted(range(len(digests)), key=digests.__getitem__)], backbone.transform())
    rows, images = [], []
    for index in range(len(files)):
        _, image, reason = files[index]
        if not reason:
            rows.append(index)
            images.append(image)
        if len(images) == CALIBRATION_IMAGES:
            break
    if not images:
        return FP32
    calibration = sorted(digests)
    key = json.dumps([backbone.identity(), [calibration[i] for i in rows]], sort_keys=True)
    memo = Path(root) / "precision" / f"{hashlib.sha256(key.encode()).hexdigest()[:20]}.json"
    if memo.is_file():
        return Precision(**read_json(memo))
    batch = torch.stack(images).contiguous(memory_format=torch.channels_last)
    precision = Precision(*choose_precision(backbone, batch))
    memo.parent.mkdir(parents=True, exist_ok=True)
    write_json(memo, {"name": precision.name, "bf16_min_cosine": precision.bf16_min_cosine})
    return precision


def extract_features(
    backbone: Backbone,
    paths: list[Path],
    digests: list[str],
    cache: FeatureCache,
    *,
    precision: Precision,
    batch_size: int = 32,
    workers: int | None = None,
    progress: bool = True,
) -> ExtractionReport:
    """Compute and cache features for every image whose content hash is not cached yet.

    ``precision`` (from :func:`decide_precision`) must be the one ``cache`` is keyed by.
    """
    report = ExtractionReport(precision=precision.name, bf16_min_cosine=precision.bf16_min_cosine)
    todo = [i for i, digest in enumerate(digests) if digest not in cache]
    seen: dict[str, int] = {}
    todo = [i for i in todo if seen.setdefault(digests[i], i) == i]
    report.cached = sum(digest in cache for digest in digests)
    if not todo:
        return report
    workers = min(2, max(0, (os.cpu_count() or 1) - 1)) if workers is None else workers
    loader = DataLoader(
        ImageFiles([paths[i] for i in todo], backbone.transform()),
        batch_size=batch_size,
        num_workers=workers,
        collate_fn=collate_images,
    )
    model = backbone.model.to(memory_format=torch.channels_last)
    pending_digests: list[str] = []
    pending: dict[str, list[np.ndarray]] = {}
    failed_digests: dict[str, str] = {}
    per_shard = shard_size()
    start = time.perf_counter()
    with tqdm(total=len(todo), desc="features", unit="img", disable=not progress, leave=False) as bar:
        for local_indices, images, failed in loader:
            for local, reason in failed:
                failed_digests[digests[todo[local]]] = reason
            if images is not None:
                images = images.contiguous(memory_format=torch.channels_last)
                with torch.inference_mode(), torch.autocast("cpu", torch.bfloat16, enabled=report.precision == "bf16"):
                    batch = backbone.features(images)
                pending_digests.extend(digests[todo[i]] for i in local_indices)
                for name, value in batch.items():
                    pending.setdefault(name, []).append(value.float().numpy())
                report.computed += len(local_indices)
            if len(pending_digests) >= per_shard:
                _flush(cache, pending_digests, pending)
            bar.update(len(local_indices) + len(failed))
    _flush(cache, pending_digests, pending)
    model.to(memory_format=torch.contiguous_format)
    # Every copy of an undecodable file is reported, not only the one that was decoded.
    report.failed = {str(p): failed_digests[d] for p, d in zip(paths, digests, strict=True) if d in failed_digests}
    report.seconds = time.perf_counter() - start
    return report


@dataclass
class HeldOut:
    """Validation and test images' features computed again in fp32, because fp32 is what deployment runs.

    Features of the training rows may be bf16 (fast, and the noise does no harm to a fit), but the metrics a run
    reports must be those of the model ``predict`` and ONNX will run: on the demo, a probe fitted on bf16 features
    scored 0.817 on bf16 validation features and 0.783 on the fp32 features of the same images.
    """

    cache: FeatureCache
    rows: np.ndarray
    report: ExtractionReport


def extract_held_out(
    backbone: Backbone,
    paths: list[Path],
    digests: list[str],
    rows: np.ndarray,
    open_cache: Callable[[Precision], FeatureCache],
    precision: Precision,
    **options: object,
) -> HeldOut | None:
    """Compute ``rows`` (validation + test) in fp32 too when ``precision`` is not fp32; None when nothing to do."""
    if precision.name == FP32.name or not len(rows):
        return None
    cache = open_cache(FP32)
    picked = [int(i) for i in rows]
    report = extract_features(
        backbone, [paths[i] for i in picked], [digests[i] for i in picked], cache, precision=FP32, **options
    )
    return HeldOut(cache, rows, report)


def load_features(cache: FeatureCache, held_out: HeldOut | None, digests: list[str], name: str) -> np.ndarray:
    """``name`` features of every digest: held-out rows from their fp32 cache, the others from ``cache`` (held-out
    rows need not be in ``cache`` at all: each image is computed at the precision it is used at)."""
    if held_out is None:
        return cache.load(digests, [name])[name]
    held = held_out.cache.load([digests[int(i)] for i in held_out.rows], [name])[name]
    others = np.setdiff1d(np.arange(len(digests)), held_out.rows)
    matrix = np.empty((len(digests), *held.shape[1:]), dtype=held.dtype)
    if len(others):
        matrix[others] = cache.load([digests[int(i)] for i in others], [name])[name]
    matrix[held_out.rows] = held
    return matrix


def _flush(cache: FeatureCache, digests: list[str], pending: dict[str, list[np.ndarray]]) -> None:
    if digests:
        cache.write_shard(list(digests), {name: np.concatenate(parts) for name, parts in pending.items()})
    digests.clear()
    pending.clear()
