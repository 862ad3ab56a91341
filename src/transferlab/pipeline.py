"""``transferlab.run``: data → backbone → cached features → probe → run record, in one call.

Stages only pass plain values forward (dataset, content hashes, features, probe), so later stages (head search,
fine-tuning) attach here without reaching back into earlier ones.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from transferlab.advice import Advice, advise
from transferlab.backbones import DEFAULT_BACKBONE, load_backbone
from transferlab.backbones.model import HEAD, Backbone
from transferlab.data import ImageDataset, Problem, load_dataset, make_split, stratified_subset
from transferlab.data.dataset import printable
from transferlab.data.split import SPLITS, Split, split_digest
from transferlab.errors import TransferlabError
from transferlab.features import FeatureCache, decide_precision, default_cache_dir, extract_features, feature_cache
from transferlab.features.cache import content_hash
from transferlab.features.extract import ExtractionReport, HeldOut, extract_held_out, load_features
from transferlab.probe import fit_probe
from transferlab.probe.metrics import headline
from transferlab.record import RunDir, environment
from transferlab.record.predictions import prediction_rows, write_predictions
from transferlab.record.report import write_report
from transferlab.record.rundir import default_run_name, process_facts
from transferlab.record.saved_probe import save_probe
from transferlab.stages import finetune_options, finetune_stage, search_stage


@dataclass
class RunConfig:
    """Every option that changes a run's result; saved as ``config.json`` and enough to repeat the run."""

    data: str
    backbone: str = DEFAULT_BACKBONE
    weights: str | None = None
    cut_point: str = HEAD
    image_size: int | None = None
    seed: int = 0
    subset: float | None = None
    val_fraction: float = 0.15
    test_fraction: float = 0.15
    label_sep: str | None = None
    batch_size: int = 32
    workers: int | None = None
    allow_download: bool = False
    backbones: list[str] | None = None
    trials: int = 0
    search_timeout: float | None = None
    search_jobs: int = 1
    search_ensemble: int = 5
    fractions: list[float] | None = None
    finetune: dict[str, Any] | None = None


def _number(value: float | None) -> str:
    """A metric for the terminal; undefined ones (e.g. AUC of a label absent from a split) print as '–'."""
    return "–" if value is None else f"{value:.4f}"


@dataclass
class RunResult:
    """What a run produced: its directory, metrics per split, skipped inputs and timings."""

    run_dir: Path
    metrics: dict[str, dict[str, Any]]
    classes: list[str]
    problems: list[Problem]
    extraction: dict[str, Any]
    timings: dict[str, float]
    config: RunConfig
    record: dict[str, Any] = field(default_factory=dict)
    stage_test_metrics: dict[str, dict[str, Any]] = field(default_factory=dict)
    advice: list[Advice] = field(default_factory=list)

    @property
    def report_path(self) -> Path:
        return self.run_dir / "report.html"

    def summary(self) -> str:
        """A short table for the terminal."""
        lines = [f"{'split':<6} {'images':>6}  {'metric':<18} value"]
        for split_name, values in self.metrics.items():
            key, value = headline(values)
            extra = f"  balanced_accuracy {values['balanced_accuracy']:.4f}" if "balanced_accuracy" in values else ""
            lines.append(f"{split_name:<6} {values['n']:>6}  {key:<18} {_number(value)}{extra}")
        if len(self.stage_test_metrics) > 1:
            lines.append("test split by stage:")
            for stage, values in self.stage_test_metrics.items():
                key, value = headline(values)
                lines.append(f"  {stage:<12} {key} {_number(value)}")
        return "\n".join(lines)


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

    def features(self, cut_point: str | None = None) -> dict[str, np.ndarray]:
        """Cached features at ``cut_point`` (default: the configured one), per split name; validation and test
        features are fp32 (what deployment runs) even when training features are bf16."""
        name = cut_point or self.config.cut_point
        matrix = load_features(self.cache, self.held_out, self.hashes, name)
        return {s: matrix[self.split.indices(s)] for s in SPLITS}

    def targets(self) -> dict[str, np.ndarray]:
        """Class ids (or 0/1 label rows for multi-label), per split name."""
        return {s: self.dataset.y[self.split.indices(s)] for s in SPLITS}

    def split_paths(self, split_name: str) -> list[Path]:
        """Absolute image paths of one split, in the order of :meth:`features` and :meth:`targets`."""
        return [self.dataset.absolute(int(i)) for i in self.split.indices(split_name)]


def prepare(
    config: RunConfig,
    *,
    cache_dir: str | Path | None = None,
    progress: bool = True,
    echo: Callable[[str], None] = print,
) -> PreparedData:
    """Index the data, load the backbone, extract (or reuse) features and split; skipped inputs are echoed."""
    dataset = load_dataset(config.data, label_sep=config.label_sep)
    backbone = load_backbone(
        config.backbone, config.weights, allow_download=config.allow_download, image_size=config.image_size
    )
    if config.cut_point not in backbone.cut_dims:
        raise TransferlabError(
            f"unknown cut point '{config.cut_point}' for {backbone.name}: {', '.join(backbone.cut_dims)}"
        )
    if config.subset:
        dataset = dataset.subset(stratified_subset(dataset.y, config.subset, config.seed))
    problems = list(dataset.problems)
    digests, unreadable = hash_files(dataset)
    problems += unreadable
    readable = [i for i, digest in enumerate(digests) if digest is not None]
    dataset, hashes = dataset.subset(readable), [digests[i] for i in readable]

    root = Path(cache_dir) if cache_dir else default_cache_dir()
    paths = [dataset.absolute(i) for i in range(len(dataset))]
    precision = decide_precision(backbone, paths, hashes, root)
    cache = feature_cache(backbone, root, precision)
    extraction = extract_features(
        backbone,
        paths,
        hashes,
        cache,
        precision=precision,
        batch_size=config.batch_size,
        workers=config.workers,
        progress=progress,
    )
    problems += [
        Problem(str(Path(path).relative_to(dataset.root)), reason) for path, reason in extraction.failed.items()
    ]
    for problem in problems:
        echo(str(problem))
    if problems:
        echo(f"{len(problems)} input(s) skipped")

    usable = [i for i, digest in enumerate(hashes) if digest in cache]
    dataset, hashes = dataset.subset(usable), [hashes[i] for i in usable]
    _ensure_trainable(dataset)
    split = make_split(
        dataset.y, hashes, seed=config.seed, val_fraction=config.val_fraction, test_fraction=config.test_fraction
    )
    held_out = extract_held_out(
        backbone,
        [dataset.absolute(i) for i in range(len(dataset))],
        hashes,
        split.held_out_rows(),
        lambda chosen: feature_cache(backbone, root, chosen),
        precision,
        batch_size=config.batch_size,
        workers=config.workers,
        progress=progress,
    )
    return PreparedData(config, dataset, hashes, split, backbone, cache, extraction, problems, held_out)


def run(
    data: str | Path,
    *,
    runs_dir: str | Path = "runs",
    name: str | None = None,
    cache_dir: str | Path | None = None,
    progress: bool = True,
    echo: Callable[[str], None] = print,
    **options: Any,
) -> RunResult:
    """Extract (or reuse) features, fit the probe, then optionally search heads (``trials``) and fine-tune
    (``finetune``: FinetuneOptions fields as a dict); write ``runs/<name>/`` and return the result."""
    config = RunConfig(data=str(data), **options)
    started = time.perf_counter()
    ranking = None
    if config.backbones:
        from transferlab.rank.ranking import rank

        ranking = rank(config, config.backbones, cache_dir=cache_dir, progress=progress, echo=echo)
        echo(ranking.table())
        chosen = ranking.chosen
        weights = config.weights if chosen.backbone == config.backbone else None
        config = replace(config, backbone=chosen.backbone, cut_point=chosen.cut_point, weights=weights)
    prepared = prepare(config, cache_dir=cache_dir, progress=progress, echo=echo)
    dataset, hashes, split, backbone = prepared.dataset, prepared.hashes, prepared.split, prepared.backbone
    extraction, cache, problems = prepared.extraction, prepared.cache, prepared.problems
    features, targets = prepared.features(), prepared.targets()
    probe = fit_probe(features, targets, dataset.classes, seed=config.seed)

    run_dir = RunDir(Path(runs_dir), name or default_run_name(Path(config.data)))
    timings = {
        "extraction_seconds": extraction.seconds + (prepared.held_out.report.seconds if prepared.held_out else 0.0),
        "probe_fit_seconds": probe.fit_seconds,
        "total_seconds": time.perf_counter() - started,
    }
    extraction_record = {
        **asdict(extraction),
        "images_per_second": extraction.images_per_second,
        "failed": len(extraction.failed),
        "cache_key": cache.key,
        # validation + test again in fp32 when training features are bf16 (reported metrics = deployed model's)
        "held_out_fp32": None
        if prepared.held_out is None
        else {
            "images": len(prepared.held_out.rows),
            "computed": prepared.held_out.report.computed,
            "seconds": prepared.held_out.report.seconds,
        },
    }
    record = {
        "task": "multi-label" if dataset.multilabel else "single-label",
        "classes": dataset.classes,
        "class_counts": dataset.class_counts(),
        "split_counts": split.counts(),
        "split_digest": split_digest(dataset.paths, hashes, split),
        "backbone": {
            **backbone.identity(),
            "weights_path": str(backbone.weights.path),
            "weights_origin": backbone.weights.origin,
            "params": backbone.count_parameters(),
        },
        "probe": {
            "kind": "logistic_regression",
            "C": probe.C,
            "cut_point": config.cut_point,
            "thresholds": None if probe.thresholds is None else probe.thresholds.tolist(),
        },
    }
    run_dir.write_json("config.json", asdict(config))
    if ranking is not None:
        from transferlab.rank.ranking import write_ranking

        write_ranking(run_dir, ranking)
    run_dir.write_json("environment.json", environment())
    run_dir.write_json("record.json", record)
    run_dir.write_json("metrics.json", probe.metrics)
    run_dir.write_csv(
        "split.csv",
        ["path", "sha256", "split"],
        [[printable(p), h, s] for p, h, s in zip(dataset.paths, hashes, split.assignment, strict=True)],
    )
    run_dir.write_text("problems.txt", "".join(f"{problem}\n" for problem in problems))
    save_probe(run_dir.path, probe, dataset.classes, config.cut_point, record["backbone"], dataset.multilabel)
    rows = []
    for split_name in ("val", "test"):
        if not len(features[split_name]):
            continue
        paths = [dataset.paths[i] for i in split.indices(split_name)]
        scores = probe.predict_scores(features[split_name])
        rows += prediction_rows(split_name, paths, targets[split_name], scores, dataset.classes, probe.thresholds)
    stage_metrics = {"probe": probe.metrics.get("test", {})}
    searched = None
    if config.trials:
        searched, _ = search_stage(prepared, run_dir.path, config, probe, echo)
        stage_metrics["head search"] = searched.test_metrics
    if config.finetune is not None:
        options = finetune_options(config, searched, probe, echo)
        stage_metrics["fine-tune"], rows = finetune_stage(prepared, run_dir.path, options, probe, searched, echo)
    write_predictions(run_dir, rows, dataset.classes)
    timings["total_seconds"] = time.perf_counter() - started
    run_dir.write_json("timings.json", {**timings, "extraction": extraction_record})
    result = RunResult(
        run_dir.path, probe.metrics, dataset.classes, problems, extraction_record, timings, config, record
    )
    result.stage_test_metrics = {stage: values for stage, values in stage_metrics.items() if values}
    run_dir.write_json("process.json", process_facts())
    result.advice = advise(run_dir.path)
    write_report(run_dir.path, result.advice)
    return result
