"""The shared front half of every command: index the data, load the backbone, extract (or reuse) features, split.

:func:`prepare` turns a :class:`~transferlab.config.RunConfig` into :class:`PreparedData`, the one input every
stage (probe, ranking, head search, fine-tuning) starts from; it sits below all of them, so data flows one way.
"""

from __future__ import annotations

import logging
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
from transferlab.errors import TransferlabError
from transferlab.features import FeatureCache, decide_precision, default_cache_dir, extract_features, feature_cache
from transferlab.features.cache import content_hash
from transferlab.features.extract import FP32, ExtractionReport, HeldOut, extract_held_out, load_features
from transferlab.features.maps import MAP, MAP_SIZE, MapView, map_cache
from transferlab.record import RunDir, environment, layout

log = logging.getLogger(__name__)


def hash_files(dataset: ImageDataset) -> tuple[list[str | None], list[Problem]]:
    """Content hash per file; unreadable files (permissions, symlink loops, vanished) become problems."""
    digests: list[str | None] = []
    problems: list[Problem] = []
    for index, relative in enumerate(dataset.paths):
        try:
            digests.append(content_hash(dataset.absolute(index)))
        except OSError as error:
            digests.append(None)
            problems.append(Problem(relative, f"unreadable ({error.strerror or error})"))
    return digests, problems


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
        name = cut_point or self.config.cut_point
        parts = [load_features(self.cache, self.held_out, self.hashes, part) for part in cut_parts(name)]
        matrix = parts[0] if len(parts) == 1 else np.concatenate(parts, axis=1)  # a joined cut point
        return {s: matrix[self.split.indices(s)] for s in SPLITS}

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
        options = self.extraction_options(progress)
        cache = map_cache(self.backbone, root, name, precision, size)
        extract_features(view, paths, self.hashes, cache, precision=precision, **options)
        held_out = extract_held_out(
            view,
            paths,
            self.hashes,
            self.split.held_out_rows(),
            lambda chosen: map_cache(self.backbone, root, name, chosen, size),
            precision,
            **options,
        )
        matrix = load_features(cache, held_out, self.hashes, MAP)
        return {s: matrix[self.split.indices(s)] for s in SPLITS}


def _extraction_options(
    config: RunConfig, device: torch.device, progress: bool, deadline: float | None = None
) -> dict[str, Any]:
    options = {"device": device, "batch_size": config.batch_size, "workers": config.workers, "progress": progress}
    return options | ({} if deadline is None else {"deadline": deadline})


def prepare(
    config: RunConfig,
    *,
    cache_dir: str | Path | None = None,
    progress: bool = True,
    deadline: float | None = None,
) -> PreparedData:
    """Index the data, load the backbone, extract (or reuse) features and split; skipped inputs are logged.

    ``deadline`` (``time.monotonic``): a planned run's time box; extraction past it raises ``OutOfTime``."""
    device = devices.resolve_device(config.device)  # an absent device fails here, before any work
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
    digests, unreadable = hash_files(dataset)
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
    precision = decide_precision(backbone, paths, hashes, root, device)
    cache = feature_cache(backbone, root, precision)
    split_options = {
        "seed": config.seed,
        "val_fraction": config.val_fraction,
        "test_fraction": config.test_fraction,
    }
    options = _extraction_options(config, device, progress, deadline)
    open_cache = lambda chosen: feature_cache(backbone, root, chosen)  # noqa: E731
    # One pass per image at the precision it is used at: the split is planned on the readable images first, so
    # validation and test images (scored in fp32, as deployment runs) are not also extracted in bf16.
    planned = make_split(dataset.y, hashes, **split_options, groups=dataset.groups, test_rows=is_test)
    held = planned.held_out_rows() if precision.name != FP32.name else np.zeros(0, dtype=np.int64)
    rest = np.setdiff1d(np.arange(len(dataset)), held)
    extraction = extract_features(
        backbone, [paths[i] for i in rest], [hashes[i] for i in rest], cache, precision=precision, **options
    )
    first_held_out = extract_held_out(backbone, paths, hashes, held, open_cache, precision, **options)
    failed = {**extraction.failed, **(first_held_out.report.failed if first_held_out else {})}
    problems += [Problem(str(Path(path).relative_to(dataset.root)), reason) for path, reason in failed.items()]
    for problem in problems:
        log.warning(str(problem))
    if problems:
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
