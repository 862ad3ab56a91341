"""The shared front half of every command: index the data, load the backbone, extract (or reuse) features, split.

:func:`prepare` turns a :class:`~transferlab.config.RunConfig` into :class:`PreparedData`, the one input every
stage (probe, ranking, head search, fine-tuning) starts from; it sits below all of them, so data flows one way.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from transferlab import devices
from transferlab.backbones import load_backbone
from transferlab.backbones.cut import cut_indices, cut_parts
from transferlab.backbones.model import Backbone
from transferlab.config import RunConfig
from transferlab.data import ImageDataset, Problem, load_dataset, make_split, stratified_subset
from transferlab.data.dataset import printable
from transferlab.data.split import SPLITS, Split, split_digest
from transferlab.distributed import Distributed, same_on_every_rank
from transferlab.errors import TransferlabError
from transferlab.features import FeatureCache, decide_precision, default_cache_dir, extract_features, feature_cache
from transferlab.features.cache import content_hash
from transferlab.features.extract import ExtractionReport, HeldOut, extract_held_out, extract_split, load_features
from transferlab.features.maps import MAP, MAP_SIZE, MapView, map_cache
from transferlab.record import RunDir, environment, layout

log = logging.getLogger(__name__)


def hash_files(dataset: ImageDataset, distributed: Distributed | None = None) -> tuple[list[str | None], list[Problem]]:
    """Content hash per file; unreadable files (permissions, symlink loops, vanished) become problems.

    Under torchrun each rank hashes every ``world_size``-th file and the ranks exchange the results, so a job reads
    each file once to hash it, not once per rank (with 8 ranks, hashing a million files would otherwise cost more
    than extracting them). Ranks that list DATA differently stop with one line, all of them."""
    distributed = distributed or Distributed()
    same_on_every_rank(distributed, list(dataset.paths), "files")
    mine: dict[int, str | Problem] = {}
    for index in range(distributed.rank, len(dataset), distributed.world_size):
        try:
            mine[index] = content_hash(dataset.absolute(index))
        except OSError as error:
            mine[index] = Problem(dataset.paths[index], f"unreadable ({error.strerror or error})")
    found = {index: result for part in distributed.gather(mine) for index, result in part.items()}
    results = [found[index] for index in range(len(dataset))]
    digests = [None if isinstance(result, Problem) else result for result in results]
    return digests, [result for result in results if isinstance(result, Problem)]


def _ensure_trainable(dataset: ImageDataset) -> None:
    counts = dataset.class_counts()
    present = [name for name, count in counts.items() if count]
    if not dataset.multilabel and len(present) < 2:
        raise TransferlabError(f"after skipping unusable images fewer than 2 classes remain ({present or 'none'})")


@dataclass
class PreparedData:
    """The shared front half of every command: usable images, their content hashes, the split and cached features.

    Later stages (probe, head search, fine-tuning, ranking) start from this and never re-index or re-extract.
    """

    config: RunConfig
    dataset: ImageDataset
    hashes: list[str]
    split: Split
    backbone: Backbone
    cache: FeatureCache
    extraction: ExtractionReport
    problems: list[Problem]
    held_out: HeldOut | None = None
    device: torch.device = devices.CPU

    def features(self, cut_point: str | None = None) -> dict[str, np.ndarray]:
        """Cached features at ``cut_point`` (default: the configured one), per split name; validation and test
        features are fp32 (what deployment runs) even when training features are bf16."""
        parts = cut_parts(cut_point or self.config.cut_point)

        def load(rows: np.ndarray) -> np.ndarray:
            blocks = [load_features(self.cache, self.held_out, self.hashes, part, rows) for part in parts]
            return blocks[0] if len(blocks) == 1 else np.concatenate(blocks, axis=1)  # a joined cut point

        return self._by_split(load)

    def _by_split(self, load: Callable[[np.ndarray], np.ndarray]) -> dict[str, np.ndarray]:
        """``load(rows)`` of each split, read split by split (never every row's matrix and its split copies at once);
        an empty split is an empty matrix of the same width and dtype."""
        out = {s: load(self.split.indices(s)) for s in SPLITS if len(self.split.indices(s))}
        some = next(iter(out.values()))
        return {s: out[s] if s in out else np.empty((0, *some.shape[1:]), dtype=some.dtype) for s in SPLITS}

    def fit_groups(self) -> np.ndarray | None:
        """The group of each train + val row (the rows the deployed probe is fit and cross-validated on)."""
        if self.dataset.groups is None:
            return None
        return self.dataset.groups[np.concatenate([self.split.indices("train"), self.split.indices("val")])]

    def targets(self) -> dict[str, np.ndarray]:
        """Class ids (or 0/1 label rows for multi-label), per split name."""
        return {s: self.dataset.y[self.split.indices(s)] for s in SPLITS}

    def split_paths(self, split_name: str) -> list[Path]:
        """Absolute image paths of one split, in the order of :meth:`features` and :meth:`targets`."""
        return [self.dataset.absolute(int(i)) for i in self.split.indices(split_name)]

    def facts(self) -> dict[str, Any]:
        """What ``record.json`` says about the data and the backbone (stages add their own parts)."""
        dataset, backbone = self.dataset, self.backbone
        return {
            "task": "multi-label" if dataset.multilabel else "single-label",
            "classes": dataset.classes,
            "class_counts": dataset.class_counts(),
            "split_counts": self.split.counts(),
            "split_digest": split_digest(dataset.paths, self.hashes, self.split),
            "device": {**devices.describe(self.device), "precision": self.extraction.precision},
            "backbone": {
                **backbone.identity(),
                "weights_path": str(backbone.weights.path),
                "weights_origin": backbone.weights.origin,
                "params": backbone.count_parameters(),
            },
        }

    def write_record(self, run_dir: RunDir, **parts: Any) -> dict[str, Any]:
        """Write what every command's run directory holds (config, environment, record, split, problems) and
        return record.json's content (the data facts plus the stage ``parts`` given, e.g. ``probe``), so
        ``report``, ``runs``, ``compare`` and ``rerun`` work on any command's output."""
        facts = {**self.facts(), **parts}
        run_dir.write_json(layout.CONFIG, self.config.to_dict())
        run_dir.write_json(layout.ENVIRONMENT, environment())
        run_dir.write_json(layout.RECORD, facts)
        rows = zip(self.dataset.paths, self.hashes, self.split.assignment, strict=True)
        run_dir.write_csv(layout.SPLIT, ["path", "sha256", "split"], [[printable(p), h, s] for p, h, s in rows])
        run_dir.write_text(layout.PROBLEMS, "".join(f"{problem}\n" for problem in self.problems))
        return facts

    def extraction_seconds(self) -> float:
        """Seconds spent extracting features, the fp32 held-out pass included."""
        return self.extraction.seconds + (self.held_out.report.seconds if self.held_out else 0.0)

    def extraction_record(self) -> dict[str, Any]:
        """The extraction's facts for ``timings.json``."""
        extraction, held_out = self.extraction, self.held_out
        return {
            **asdict(extraction),
            "images_per_second": extraction.images_per_second,
            "failed": len(extraction.failed),
            "cache_key": self.cache.key,
            # validation + test again in fp32 when training features are bf16 (reported metrics = deployed model's)
            "held_out_fp32": None
            if held_out is None
            else {
                "images": len(held_out.rows),
                "computed": held_out.report.computed,
                "seconds": held_out.report.seconds,
            },
        }

    def extraction_options(self, progress: bool) -> dict[str, Any]:
        """How this run extracts: device, batch size, decoding workers and progress display."""
        return _extraction_options(self.config, self.device, progress)

    def maps(self, cut_point: str | None = None, size: int = MAP_SIZE, progress: bool = False) -> dict[str, np.ndarray]:
        """Float16 (N, C, h, w) maps per split, for heads that pool themselves; computed once, then cached.

        Like pooled features, validation and test maps are fp32 computations even when training maps are bf16.
        """
        name = cut_point or self.config.cut_point
        root = self.cache.directory.parent.parent
        precision = self.extraction.precision_used
        paths = [self.dataset.absolute(i) for i in range(len(self.dataset))]
        view = MapView(self.backbone, name, size)
        open_cache = lambda chosen: map_cache(self.backbone, root, name, chosen, size)  # noqa: E731
        held = self.split.held_out_rows()
        options = self.extraction_options(progress)
        cache, _, held_out = extract_split(view, paths, self.hashes, held, open_cache, precision, **options)
        return self._by_split(lambda rows: load_features(cache, held_out, self.hashes, MAP, rows))


def images_computed(extraction: dict[str, Any]) -> tuple[int, int]:
    """(computed, from cache) over both precisions in :meth:`PreparedData.extraction_record` (a run's
    ``extraction``): each image counts once, at the precision it is used at."""
    held_out = extraction["held_out_fp32"] or {"images": 0, "computed": 0}  # validation + test, in fp32
    computed = extraction["computed"] + held_out["computed"]
    return computed, extraction["cached"] + held_out["images"] - held_out["computed"]


def _extraction_options(
    config: RunConfig,
    device: torch.device,
    progress: bool,
    deadline: float | None = None,
    distributed: Distributed | None = None,
) -> dict[str, Any]:
    options = {"device": device, "batch_size": config.batch_size, "workers": config.workers, "progress": progress}
    return options | ({} if deadline is None else {"deadline": deadline}) | {"distributed": distributed}


def prepare(
    config: RunConfig,
    *,
    cache_dir: str | Path | None = None,
    progress: bool = True,
    deadline: float | None = None,
    distributed: Distributed | None = None,
) -> PreparedData:
    """Index the data, load the backbone, extract (or reuse) features and split; skipped inputs are logged.

    ``deadline`` (``time.monotonic``): a planned run's time box; extraction past it raises ``OutOfTime``.
    ``distributed`` (a torchrun job; every rank calls this): each rank extracts its share of the uncached images
    (on its own GPU under CUDA), rank 0 chooses the precision for all, and every rank returns the same data. Index
    problems are logged by rank 0 and each undecodable image by the rank that met it; all ranks' are in
    ``problems``."""
    distributed = distributed or Distributed()
    device = devices.resolve_device(config.device)  # an absent device fails here, before any work
    if distributed.enabled and device.type == "cuda":
        device = distributed.device  # one GPU per local rank
    dataset = load_dataset(config.data, label_sep=config.label_sep, group_column=config.groups)
    backbone = load_backbone(
        config.backbone,
        config.weights_for(config.backbone),
        allow_download=config.allow_download,
        image_size=config.image_size,
        crop_pct=config.crop_pct,
    )
    cut_indices(backbone.model, config.cut_point)  # an unknown cut point fails here, before any extraction
    if config.subset:
        dataset = dataset.subset(stratified_subset(dataset.y, config.subset, config.seed))
    n_given = len(dataset)
    if config.test:
        dataset = dataset.joined(load_dataset(config.test, label_sep=config.label_sep))
    problems = list(dataset.problems)
    digests, unreadable = hash_files(dataset, distributed)
    problems += unreadable
    test_hashes = {digest: dataset.paths[i] for i, digest in enumerate(digests) if i >= n_given and digest}
    readable = []
    for i, digest in enumerate(digests):
        if i < n_given and digest in test_hashes:
            reason = f"same content as test image {test_hashes[digest]}; left out of training"
            problems.append(Problem(dataset.paths[i], reason))
        elif digest is not None:
            readable.append(i)
    is_test = np.asarray([i >= n_given for i in readable]) if config.test else None
    dataset, hashes = dataset.subset(readable), [digests[i] for i in readable]

    root = Path(cache_dir) if cache_dir else default_cache_dir()
    paths = [dataset.absolute(i) for i in range(len(dataset))]
    backbone.model.to(device)
    precision = distributed.broadcast(  # one precision, so one cache, for all ranks
        decide_precision(backbone, paths, hashes, root, device) if distributed.is_main else None
    )
    split_options = {
        "seed": config.seed,
        "val_fraction": config.val_fraction,
        "test_fraction": config.test_fraction,
    }
    options = _extraction_options(config, device, progress, deadline, distributed)
    open_cache = lambda chosen: feature_cache(backbone, root, chosen)  # noqa: E731
    # One pass per image at the precision it is used at: the split is planned on the readable images first, so
    # validation and test images (scored in fp32, as deployment runs) are not also extracted in bf16.
    planned = make_split(dataset.y, hashes, **split_options, groups=dataset.groups, test_rows=is_test)
    cache, extraction, first_held_out = extract_split(
        backbone, paths, hashes, planned.held_out_rows(), open_cache, precision, **options
    )
    met = {**extraction.failed, **(first_held_out.report.failed if first_held_out else {})}  # by this rank
    failed = {path: reason for part in distributed.gather(met) for path, reason in part.items()}
    undecodable = {path: Problem(str(Path(path).relative_to(dataset.root)), reason) for path, reason in failed.items()}
    for problem in (problems if distributed.is_main else []) + [undecodable[path] for path in met]:
        log.warning(str(problem))  # each named once: index problems by rank 0, a bad image by the rank that met it
    problems += undecodable.values()
    if problems and distributed.is_main:
        log.warning(f"{len(problems)} input(s) skipped")

    fp32_cache = first_held_out.cache if first_held_out else None
    usable = [i for i, digest in enumerate(hashes) if digest in cache or (fp32_cache and digest in fp32_cache)]
    dataset, hashes = dataset.subset(usable), [hashes[i] for i in usable]
    test_rows = None if is_test is None else is_test[usable]
    _ensure_trainable(dataset if test_rows is None else dataset.subset(np.flatnonzero(~test_rows)))
    split = make_split(dataset.y, hashes, **split_options, groups=dataset.groups, test_rows=test_rows)
    paths = [dataset.absolute(i) for i in range(len(dataset))]
    held_out = extract_held_out(backbone, paths, hashes, split.held_out_rows(), open_cache, precision, **options)
    if held_out is not None:  # rows a skipped image moved between splits are topped up at their precision
        train = split.indices("train")
        topped = extract_features(
            backbone, [paths[i] for i in train], [hashes[i] for i in train], cache, precision=precision, **options
        )
        extraction = extraction.followed_by(topped)
        if first_held_out is not None:  # one report for both fp32 passes
            held_out = replace(held_out, report=first_held_out.report.followed_by(held_out.report))
    return PreparedData(config, dataset, hashes, split, backbone, cache, extraction, problems, held_out, device)
