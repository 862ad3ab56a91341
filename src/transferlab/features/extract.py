"""Batched multi-depth feature extraction on the run's device, in its reduced precision (channels_last + bf16 or
fp16 autocast, ``transferlab.devices``) when that is accurate.

Reduced precision roughly doubles throughput (CPU bf16; more on GPUs) but is not safe for every model, so a
calibration batch is run both ways and it is kept only if every cut point's features stay within cosine similarity
0.99 of float32. The calibration images are the dataset's first by content hash, not whichever images happen to be
uncached, and the decision is part of the cache key: the same images, backbone and device always get the same
precision, and features of two precisions never mix in one cache. Images that cannot be decoded are reported by
name and reason and left out; a batch that runs out of device memory is split in halves (said once), so finished
shards are never lost; nothing else stops.

Under ``torchrun`` the ranks share the work by cache shard (:func:`rank_share`): each computes a disjoint part of the
uncached images into the shared cache and all meet at a barrier, so every image is computed once across ranks.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from transferlab import devices
from transferlab.backbones.model import Backbone
from transferlab.data.images import ImageLoadError, load_image
from transferlab.distributed import Distributed, same_on_every_rank
from transferlab.errors import OutOfTime, TransferlabError
from transferlab.features.cache import FeatureCache
from transferlab.fileio import read_json, write_json

log = logging.getLogger(__name__)

MIN_COSINE = 0.99
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
    min_cosine: float | None = None
    device: str = "cpu"
    batch_size: int | None = None  # the batch that fitted (smaller than asked after an out-of-memory split)

    @property
    def precision_used(self) -> Precision:
        return Precision(self.precision, self.min_cosine, self.device)

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


@dataclass(frozen=True)
class Precision:
    """How features are computed: 'bf16' / 'fp16' (autocast) or 'fp32', the calibration cosine that decided it and
    the device type it was decided on (features of one precision still differ slightly between devices)."""

    name: str
    min_cosine: float | None = None
    device: str = "cpu"


FP32 = Precision(devices.FP32)


def choose_precision(backbone: Backbone, images: torch.Tensor, device: torch.device = devices.CPU) -> Precision:
    """The device's reduced precision if autocast keeps every cut point's features within the cosine bound of
    float32 (on average over the first batch), else fp32."""
    candidate = devices.reduced_precision(device)
    if candidate is None:
        return replace(FP32, device=device.type)
    images = images.to(device)
    with torch.inference_mode():
        reference = backbone.features(images)
        with devices.autocast(device, candidate):
            fast = backbone.features(images)
    cosine = _min_cosine(reference, fast)
    return Precision(candidate if cosine > MIN_COSINE else devices.FP32, cosine, device.type)


def precision_identity(precision: Precision) -> dict[str, str]:
    """What a precision adds to a cache key: its name and, off the CPU, the device type (so caches made on the CPU
    before devices existed stay valid, and GPU features never stand in for CPU ones)."""
    return {"precision": precision.name} | ({} if precision.device == "cpu" else {"device": precision.device})


def feature_cache(backbone: Backbone, root: Path, precision: Precision) -> FeatureCache:
    """The cache of ``backbone``'s pooled features computed at ``precision`` (each precision has its own)."""
    return FeatureCache(root, {**backbone.identity(), **precision_identity(precision)})


def decide_precision(
    backbone: Backbone, paths: list[Path], digests: list[str], root: Path, device: torch.device = devices.CPU
) -> Precision:
    """The precision for these images on ``device``: :func:`choose_precision` on the first decodable images by
    content hash.

    Remembered under ``<root>/precision/`` by backbone identity, device and calibration hashes, so a fully cached
    run does not run the backbone at all. ``TRANSFERLAB_FP32=1`` forces fp32 (and is not remembered).
    """
    candidate = devices.reduced_precision(device)
    if candidate is None:
        return replace(FP32, device=device.type)
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
        return replace(FP32, device=device.type)
    calibration = sorted(digests)
    identity = [backbone.identity(), [calibration[i] for i in rows]]
    if device.type != "cpu":  # (CPU memos made before devices existed keep their names)
        identity.append([device.type, candidate])
    key = json.dumps(identity, sort_keys=True)
    memo = Path(root) / "precision" / f"{hashlib.sha256(key.encode()).hexdigest()[:20]}.json"
    if memo.is_file():
        saved = read_json(memo)
        return Precision(saved["name"], saved.get("min_cosine", saved.get("bf16_min_cosine")), device.type)
    batch = torch.stack(images).contiguous(memory_format=torch.channels_last)
    precision = choose_precision(backbone, batch, device)
    devices.trim_host_memory()
    memo.parent.mkdir(parents=True, exist_ok=True)
    write_json(memo, {"name": precision.name, "min_cosine": precision.min_cosine})
    return precision


class _Forward:
    """``backbone.features`` on ``device`` at ``precision``, batch by batch, as float32 numpy arrays on the host.

    A batch that runs out of device memory is split in halves until it fits (said once), and later batches are
    split the same way, so extraction goes on instead of crashing and losing finished shards.
    """

    def __init__(self, backbone: Backbone, device: torch.device, precision: str, batch_size: int) -> None:
        self.backbone, self.device, self.precision, self.limit = backbone, device, precision, batch_size
        self.halved = False

    def __call__(self, images: torch.Tensor) -> dict[str, np.ndarray]:
        parts: list[dict[str, np.ndarray]] = []
        start = 0
        while start < len(images):
            # passes of equal size (25 images by 8: 7, 6, 6, 6), never a lone image after full passes: a pass of one
            # image computes fp32 features ~1e-6 apart from a batched one, passes of 2 to 32 bit for bit alike
            left = len(images) - start
            chunk = images[start : start + math.ceil(left / math.ceil(left / self.limit))]
            try:
                parts.append(self._run(chunk))
            except Exception as error:
                if not devices.is_out_of_memory(error):
                    raise
                self._halve(error)
                continue
            start += len(chunk)
        return parts[0] if len(parts) == 1 else {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}

    def _run(self, chunk: torch.Tensor) -> dict[str, np.ndarray]:
        chunk = chunk.to(self.device, non_blocking=True).contiguous(memory_format=torch.channels_last)
        with torch.inference_mode(), devices.autocast(self.device, self.precision):
            features = self.backbone.features(chunk)
        return {name: value.float().cpu().numpy() for name, value in features.items()}

    def _halve(self, error: BaseException) -> None:
        devices.release_memory(self.device)
        if self.limit == 1:
            raise TransferlabError(
                f"out of memory on {self.device} even for one image at this resolution: use a smaller --image-size, "
                "another --device or a smaller backbone"
            ) from error
        if not self.halved:
            log.warning(f"out of memory on {self.device} with batches of {self.limit}: halving them until they fit")
            self.halved = True
        self.limit = max(1, self.limit // 2)


def input_size(backbone: Backbone) -> int | None:
    """The side (px) of the images ``backbone`` is fed (None: a stand-in that does not say)."""
    config = getattr(backbone, "data_config", None)
    return int(config["input_size"][-1]) if config else None


def extract_features(
    backbone: Backbone,
    paths: list[Path],
    digests: list[str],
    cache: FeatureCache,
    *,
    precision: Precision,
    device: torch.device = devices.CPU,
    batch_size: int | None = None,
    workers: int | None = None,
    progress: bool = True,
    deadline: float | None = None,
    distributed: Distributed | None = None,
) -> ExtractionReport:
    """Compute and cache features for every image whose content hash is not cached yet.

    ``precision`` (from :func:`decide_precision`) must be the one ``cache`` is keyed by; ``batch_size`` and
    ``workers`` default to what suits ``device`` (``transferlab.devices``). Past ``deadline`` (``time.monotonic``)
    it stops with :class:`OutOfTime` after caching what it computed, so a rerun continues from there (a planned
    run's time box: not for ranks, which would wait for the one that stopped).

    With ``distributed`` (a torchrun job) every rank must call this with the same images: it computes only its
    share (:func:`rank_share`), waits for the other ranks and re-reads the cache, so on return ``cache`` holds
    every image that could be decoded, on every rank. The report counts this rank's images and failures only.
    """
    # a given batch is run whole; the default one in passes of what the CPU's pixel budget holds
    forward_size = batch_size or devices.forward_batch_size(device, input_size(backbone))
    batch_size = batch_size or devices.default_batch_size(device)
    report = ExtractionReport(
        precision=precision.name, min_cosine=precision.min_cosine, device=device.type, batch_size=batch_size
    )
    todo = [i for i, digest in enumerate(digests) if digest not in cache]
    seen: dict[str, int] = {}
    todo = [i for i in todo if seen.setdefault(digests[i], i) == i]
    report.cached = sum(digest in cache for digest in digests)
    shared = distributed is not None and distributed.enabled
    if shared:
        todo = rank_share(digests, todo, distributed)
    if todo:
        options = {"workers": workers, "progress": progress, "deadline": deadline}
        options |= {"batch_size": batch_size, "forward_size": min(batch_size, forward_size or batch_size)}
        _compute(backbone, paths, digests, todo, cache, report, device=device, **options)
    if shared:
        distributed.barrier()  # every rank's shards are on disk (renamed into place) past this line
        cache.refresh()
    return report


def rank_share(digests: list[str], todo: list[int], distributed: Distributed) -> list[int]:
    """The positions in ``digests`` this rank computes: rank 0's uncached images in content-hash order, cut into
    shards (:func:`plan_shards`), shard ``i`` to rank ``i % world_size``.

    Rank 0's plan, broadcast, not each rank's own look at the cache: ranks that opened it a moment apart still agree,
    so no image is computed twice or by nobody. Shards are the unit, as on disk, so a rank that dies loses only the
    shard it was computing, and a rerun (or torchrun's restart) plans just the missing images again. Ranks that see
    different images (a folder not shared between machines) stop with one line, all of them, instead of hanging.
    """
    same_on_every_rank(distributed, sorted(set(digests)), "images")
    plan: list[str] = distributed.broadcast(sorted(digests[i] for i in todo) if distributed.is_main else None)
    shards = plan_shards(plan, distributed.world_size)
    mine = shards[distributed.rank :: distributed.world_size]
    position: dict[str, int] = {}
    for index, digest in enumerate(digests):
        position.setdefault(digest, index)
    log.info(
        f"rank {distributed.rank} of {distributed.world_size}: {sum(map(len, mine))} of {len(plan)} uncached "
        f"images ({len(mine)} of {len(shards)} shards)"
    )
    return [position[digest] for shard in mine for digest in shard]


def plan_shards(plan: list[str], ranks: int) -> list[list[str]]:
    """``plan`` cut into a multiple of ``ranks`` shards of at most :func:`shard_size` images, equal to within one:
    every rank gets the same share (800 images on 2 ranks: 400 each, not 512 and 288), and no rank loses more than
    :func:`shard_size` images to a kill."""
    count = ranks * math.ceil(len(plan) / (ranks * shard_size()))
    return [plan[i * len(plan) // count : (i + 1) * len(plan) // count] for i in range(count)]


def _compute(
    backbone: Backbone,
    paths: list[Path],
    digests: list[str],
    todo: list[int],
    cache: FeatureCache,
    report: ExtractionReport,
    *,
    device: torch.device,
    batch_size: int,
    forward_size: int,
    workers: int | None,
    progress: bool,
    deadline: float | None,
) -> None:
    """Run the network over ``todo`` (positions in ``paths``) in loader batches of ``batch_size``, each in forward
    passes of at most ``forward_size`` images; write a shard every :func:`shard_size` images, and fill in
    ``report``: images computed and failed, seconds and the forward pass size that fitted."""
    workers = devices.decode_workers(device) if workers is None else workers
    loader = DataLoader(
        ImageFiles([paths[i] for i in todo], backbone.transform()),
        batch_size=batch_size,
        num_workers=workers,
        collate_fn=collate_images,
        **devices.loader_options(device),
    )
    model = backbone.model.to(device, memory_format=torch.channels_last)
    forward = _Forward(backbone, device, report.precision, forward_size)
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
                batch = forward(images)
                pending_digests.extend(digests[todo[i]] for i in local_indices)
                for name, value in batch.items():
                    pending.setdefault(name, []).append(value)
                report.computed += len(local_indices)
            if len(pending_digests) >= per_shard:
                _flush(cache, pending_digests, pending)
            bar.update(len(local_indices) + len(failed))
            if deadline is not None and time.monotonic() > deadline:
                _flush(cache, pending_digests, pending)
                raise OutOfTime(f"{backbone.name}: out of time after {report.computed} of {len(todo)} images")
    _flush(cache, pending_digests, pending)
    model.to(memory_format=torch.contiguous_format)
    devices.trim_host_memory()  # the activations' freed pages, before the next pass or the probe
    report.batch_size = forward.limit
    # Every copy of an undecodable file is reported, not only the one that was decoded.
    report.failed = {str(p): failed_digests[d] for p, d in zip(paths, digests, strict=True) if d in failed_digests}
    report.seconds = time.perf_counter() - start


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


def extract_split(
    backbone: Backbone,
    paths: list[Path],
    digests: list[str],
    held_rows: np.ndarray,
    open_cache: Callable[[Precision], FeatureCache],
    precision: Precision,
    **options: object,
) -> tuple[FeatureCache, ExtractionReport, HeldOut | None]:
    """One forward pass per image at the precision it is scored with: ``held_rows`` (validation + test) only in
    fp32 (:func:`extract_held_out`), every other image only at ``precision``; returns ``precision``'s cache, its
    report and the held-out part for :func:`load_features`."""
    cache = open_cache(precision)
    held = held_rows if precision.name != FP32.name else np.zeros(0, dtype=np.int64)
    rest = np.setdiff1d(np.arange(len(digests)), held)
    report = extract_features(
        backbone, [paths[i] for i in rest], [digests[i] for i in rest], cache, precision=precision, **options
    )
    return cache, report, extract_held_out(backbone, paths, digests, held, open_cache, precision, **options)


def load_features(
    cache: FeatureCache, held_out: HeldOut | None, digests: list[str], name: str, rows: np.ndarray | None = None
) -> np.ndarray:
    """``name`` features of every digest, or of ``rows`` (positions in ``digests``) in that order: held-out rows
    from their fp32 cache, the others from ``cache`` (held-out rows need not be in ``cache`` at all: each image is
    computed at the precision it is used at).

    ``rows`` reads one split at a time straight from the shards, so a caller never holds every image's matrix and
    its split copies at once (at 100k images the joined cut point's matrix alone is ~700 MB)."""
    rows = np.arange(len(digests)) if rows is None else np.asarray(rows, dtype=np.int64)
    if held_out is None:
        return cache.load([digests[int(i)] for i in rows], [name])[name]
    is_held = np.isin(rows, held_out.rows)
    held = held_out.cache.load([digests[int(i)] for i in rows[is_held]], [name]).get(name)
    others = cache.load([digests[int(i)] for i in rows[~is_held]], [name]).get(name)
    if held is None or others is None:
        return others if held is None else held
    matrix = np.empty((len(rows), *held.shape[1:]), dtype=held.dtype)
    matrix[~is_held] = others
    del others
    matrix[is_held] = held
    return matrix


def _flush(cache: FeatureCache, digests: list[str], pending: dict[str, list[np.ndarray]]) -> None:
    if digests:
        cache.write_shard(list(digests), {name: np.concatenate(parts) for name, parts in pending.items()})
    digests.clear()
    pending.clear()
