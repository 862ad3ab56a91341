"""``transferlab.run``: [rank] → prepare → probe → [head search] → [fine-tune] → record, advice, report.

The top of the house: it imports the stages, none of them imports it. Each stage reads the shared
:class:`~transferlab.prepare.PreparedData` and writes its own files into the run directory.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from transferlab.advice import Advice, advise
from transferlab.backbones.cut import HEAD, deep_join
from transferlab.backbones.registry import weights_files
from transferlab.config import RunConfig
from transferlab.data import Problem
from transferlab.errors import OutOfTime
from transferlab.finetune.stage import finetune_options, finetune_stage
from transferlab.metrics import headline, shown
from transferlab.model.ensemble import same_geometry
from transferlab.plan.keeper import Unplanned, timekeeper
from transferlab.plan.planner import ENSEMBLE_STAGE
from transferlab.prepare import PreparedData, prepare
from transferlab.probe import finish_probe, search_probe
from transferlab.probe.ensemble import EnsembleChoice, Member, choose_ensemble
from transferlab.probe.linear import ProbeResult
from transferlab.probe.saved import save_probe
from transferlab.record import RunDir, layout
from transferlab.record.predictions import prediction_rows, write_predictions
from transferlab.record.rundir import default_run_name, process_facts
from transferlab.report import write_report
from transferlab.search.stage import search_stage

if TYPE_CHECKING:
    from transferlab.rank.ranking import Ranking

log = logging.getLogger(__name__)


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
    deployed: dict[str, Any] = field(default_factory=dict)

    @property
    def report_path(self) -> Path:
        return self.run_dir / layout.REPORT

    def summary(self) -> str:
        """A short table for the terminal."""
        lines = [f"{'split':<6} {'images':>6}  {'metric':<18} value"]
        for split_name, values in self.metrics.items():
            key, value = headline(values)
            extra = f"  balanced_accuracy {values['balanced_accuracy']:.4f}" if "balanced_accuracy" in values else ""
            lines.append(f"{split_name:<6} {values['n']:>6}  {key:<18} {shown(value)}{extra}")
        if len(self.stage_test_metrics) > 1:
            lines.append("test split by stage:")
            for stage, values in self.stage_test_metrics.items():
                key, value = headline(values)
                lines.append(f"  {stage:<12} {key} {shown(value)}")
        if self.deployed:
            lines.append(f"deployed: {self.deployed['stage']} ({self.deployed['reason']})")
        return "\n".join(lines)


def run(
    config: RunConfig | str | Path,
    *,
    runs_dir: str | Path = "runs",
    name: str | None = None,
    cache_dir: str | Path | None = None,
    progress: bool = True,
) -> RunResult:
    """[rank] → prepare → probe → [head search] → [fine-tune] → record, advice and report in ``runs_dir/<name>/``.

    ``config`` says what to compute (a data path alone means every default); the keywords only say where files
    go and what is shown, and never change a result. With ``config.time_limit`` or ``config.preset`` the stages
    are planned to the budget first (:mod:`transferlab.plan`) and each is granted the time left.
    """
    config = config if isinstance(config, RunConfig) else RunConfig(str(config))
    started = time.perf_counter()
    keeper = timekeeper(config, cache_dir, progress)
    config = keeper.configure(config)
    config, ranking = (config, None) if keeper.planned else _rank(config, cache_dir, progress)
    run_dir = RunDir(Path(runs_dir), name or default_run_name(Path(config.data)))
    probed = _probe_backbones(config, keeper, run_dir, cache_dir, progress)
    prepared, probe, rows, candidates = probed.best
    config = prepared.config
    choice = _ensemble(probed, keeper, run_dir)
    ensemble = choice if choice is not None and choice.kept else None
    parts = {"probe": _probe_facts(probe, candidates)} | ({"ensemble": choice.facts()} if choice else {})
    facts = prepared.write_record(run_dir, **parts)
    if ranking is not None:
        from transferlab.rank.ranking import write_ranking

        write_ranking(run_dir, ranking)
    stage_metrics = {"probe": probe.metrics.get("test", {})}
    if ensemble is not None:
        stage_metrics["ensemble"] = ensemble.metrics.get("test", {})
        rows = _write_ensemble(probed, ensemble, run_dir)
    searched = None
    if config.trials and keeper.begin("head search", run_dir, probe):
        timeout = keeper.grant(config.search_timeout)
        searched, _ = search_stage(prepared, run_dir.path, replace(config, search_timeout=timeout), probe)
        stage_metrics["head search"] = searched.test_metrics
        keeper.end("head search", run_dir, f"{searched.record.get('n_trials', '?')} trials")
    tuned_val = None
    if config.finetune is not None and keeper.begin("fine-tune", run_dir, probe):
        options = finetune_options(config, searched, probe)
        options.time_limit = keeper.grant(None)
        stage_metrics["fine-tune"], tuned_rows, tuned_val = finetune_stage(
            prepared, run_dir.path, options, probe, searched
        )
        keeper.end("fine-tune", run_dir)
    deployed = _deploy(probe, tuned_val, searched is not None, ensemble)
    run_dir.write_json(layout.DEPLOYED, deployed)
    if deployed["stage"] == "fine-tuning":
        rows = tuned_rows
    write_predictions(run_dir, rows, prepared.dataset.classes)
    timings = {
        "extraction_seconds": prepared.extraction_seconds(),
        "probe_fit_seconds": probe.fit_seconds,
        "total_seconds": time.perf_counter() - started,
    }
    extraction = prepared.extraction_record()
    run_dir.write_json(layout.TIMINGS, {**timings, "extraction": extraction})
    run_dir.write_json(layout.PROCESS, process_facts())
    result = RunResult(
        run_dir.path, probe.metrics, prepared.dataset.classes, prepared.problems, extraction, timings, config, facts
    )
    result.stage_test_metrics = {stage: values for stage, values in stage_metrics.items() if values}
    result.deployed = deployed
    keeper.close(run_dir)
    result.advice = advise(run_dir.path)
    write_report(run_dir.path, result.advice)
    return result


@dataclass
class Probed:
    """Every backbone a run probed, in order, and the one kept: (prepared data, probe, prediction rows, CV score
    of each probe input)."""

    members: list[tuple[PreparedData, ProbeResult]]
    best: tuple[PreparedData, ProbeResult, list[list[str]], dict[str, float | None]]


def _probe_backbones(
    config: RunConfig, keeper: Unplanned, run_dir: RunDir, cache_dir: str | Path | None, progress: bool
) -> Probed:
    """Prepare and probe ``config.backbone`` or, in a planned run, each planned backbone that still fits; keep the
    one whose probe cross-validates best (the first on a tie). Every new best is written at once, so an
    interrupted run already holds a usable model."""
    best: tuple[PreparedData, ProbeResult, list[list[str]], dict[str, float | None]] | None = None
    members: list[tuple[PreparedData, ProbeResult]] = []
    named = weights_files(config.weights, config.backbone, config.backbones)
    for backbone, weights in keeper.backbones(config):
        stage = f"probe {backbone}"
        if not keeper.begin(stage, run_dir, best and best[1]):
            continue
        files = (named | ({backbone: weights} if weights else {})) or None  # a file per name: config.json names all
        try:
            prepared = prepare(
                replace(config, backbone=backbone, weights=config.weights if backbone == config.backbone else files),
                cache_dir=cache_dir,
                progress=progress,
                deadline=keeper.deadline(),
            )
        except OutOfTime as stopped:
            keeper.end(stage, run_dir, f"{stopped}; its cached features are kept for a rerun", status="stopped")
            continue
        probe, candidates = _fit_probes(prepared)
        probe.backbone = backbone
        members.append((prepared, probe))
        kept = best is None or _cv(probe.cv_score) > _cv(best[1].cv_score)
        if kept:
            best = (prepared, probe, _write_probe(prepared, probe, run_dir), candidates)
        keeper.end(stage, run_dir, f"CV log-likelihood {shown(probe.cv_score)}" + ("; kept" if kept else ""))
    assert best is not None  # (the first backbone is always probed)
    return Probed(members, best)


def _ensemble(probed: Probed, keeper: Unplanned, run_dir: RunDir) -> EnsembleChoice | None:
    """With probes of several backbones that see the image alike, whether their average cross-validates better
    than the best alone (out-of-fold, same folds), and if so its metrics."""
    if len(probed.members) < 2 or not keeper.begin(ENSEMBLE_STAGE, run_dir, probed.best[1]):
        return None
    prepared = probed.best[0]
    if not same_geometry([p.backbone.identity()["preprocessing"] for p, _ in probed.members]):
        keeper.end(ENSEMBLE_STAGE, run_dir, "the backbones resize or crop images differently", status="skipped")
        return None
    members = [Member(probe, p.features(probe.cut_point)) for p, probe in probed.members]
    dataset = prepared.dataset
    choice = choose_ensemble(
        members, prepared.targets(), dataset.classes, seed=prepared.config.seed, groups=prepared.fit_groups()
    )
    if choice is None:
        keeper.end(ENSEMBLE_STAGE, run_dir, "too few images to cross-validate", status="skipped")
        return None
    singles = ", ".join(f"{m.probe.backbone} {v:.4f}" for m, v in zip(members, choice.single_cv_scores, strict=True))
    verdict = "kept" if choice.kept else "not kept"
    note = f"out-of-fold log-likelihood {choice.cv_score:.4f} vs {singles}: {verdict}"
    log.info(f"average of {len(members)} backbones' probes: {note}")
    keeper.end(ENSEMBLE_STAGE, run_dir, note)
    return choice


def _write_ensemble(probed: Probed, choice: EnsembleChoice, run_dir: RunDir) -> list[list[str]]:
    """ensemble.json and each member's probe under ensemble/<backbone>/; return the average's prediction rows."""
    prepared = probed.best[0]
    dataset, multilabel = prepared.dataset, prepared.dataset.multilabel
    folders = []
    for member_data, probe in probed.members:
        folder = f"{layout.ENSEMBLE_MEMBERS}/{probe.backbone}"
        identity = member_data.backbone.identity()
        save_probe(run_dir.path / folder, probe, dataset.classes, str(probe.cut_point), identity, multilabel)
        folders.append(folder)
    thresholds = None if choice.thresholds is None else choice.thresholds.tolist()
    run_dir.write_json(
        layout.ENSEMBLE,
        {"members": folders, "classes": dataset.classes, "multilabel": multilabel, "thresholds": thresholds}
        | {"metrics": choice.metrics, "evidence": choice.facts()},
    )
    return _prediction_rows(prepared, choice.scores, choice.thresholds)


def _cv(score: float | None) -> float:
    return -np.inf if score is None else score


def _rank(config: RunConfig, cache_dir: str | Path | None, progress: bool) -> tuple[RunConfig, Ranking | None]:
    """With several ``backbones``, rank them and continue with the chosen backbone and cut point."""
    if not config.backbones:
        return config, None
    from transferlab.rank.ranking import rank

    ranking = rank(config, config.backbones, cache_dir=cache_dir, progress=progress)
    log.info(ranking.table())
    chosen = ranking.chosen
    weights = config.weights_for(chosen.backbone)
    return replace(config, backbone=chosen.backbone, cut_point=chosen.cut_point, weights=weights), ranking


def _deploy(
    probe: ProbeResult, tuned_val: dict[str, Any] | None, searched: bool, ensemble: EnsembleChoice | None
) -> dict[str, Any]:
    """Which model ``predict``, ``export`` and ``evaluate`` use. The starting model is the probe, or the average of
    several backbones' probes where that cross-validated better; the fine-tuned network replaces it only when it
    beat it on validation (each trained on the train split only), so fine-tuning never ends below where it started."""
    start = "ensemble" if ensemble is not None else "probe"
    start_metrics = ensemble.metrics if ensemble is not None else probe.metrics
    metric, probe_val = headline(start_metrics.get("val") or {"accuracy": None})
    evidence: dict[str, Any] = {"metric": metric, "probe_val": probe_val}
    probe_saw = {"trained_on": f"train + val ({probe.fit_images} images)", "cut_point": probe.cut_point}
    if ensemble is not None:
        names = ", ".join(str(m.probe.backbone) for m in ensemble.members)
        probe_saw["members"] = [m.probe.backbone for m in ensemble.members]
        start_reason = (
            f"the average of the probes of {names} cross-validated better than the best alone (out-of-fold "
            f"log-likelihood {ensemble.cv_score:.4f} vs {max(ensemble.single_cv_scores):.4f})"
        )
    else:
        start_reason = "the only trained model"
    if tuned_val is None:
        if searched and ensemble is None:
            start_reason = "searched heads are reported, not deployed; --finetune trains a deployable one"
        return {"stage": start, "reason": start_reason, **probe_saw, **evidence}
    tuned = headline(tuned_val)[1]
    evidence["finetune_val"] = tuned
    if tuned is not None and (probe_val is None or tuned > probe_val):
        reason = f"it beat the {start} on validation ({metric} {tuned:.4f} vs {shown(probe_val)})"
        return {"stage": "fine-tuning", "reason": reason, "trained_on": "train (val chose its epochs)", **evidence}
    return {
        "stage": start,
        "reason": f"fine-tuning did not beat the {start} on validation ({metric} {shown(tuned)} vs "
        f"{shown(probe_val)}); the {start}, refit on train + val, is kept",
        **probe_saw,
        **evidence,
    }


def _probe_facts(probe: ProbeResult, candidates: dict[str, float | None]) -> dict[str, Any]:
    """The probe's part of record.json."""
    thresholds = None if probe.thresholds is None else probe.thresholds.tolist()
    return {
        "kind": "logistic_regression",
        "C": probe.C,
        "cut_point": probe.cut_point,
        "features": probe.features_read,  # what the probe read of the pooled features
        "candidates": candidates,  # cut point -> cross-validated log-likelihood per image; the best is kept
        "thresholds": thresholds,
        # which images each model saw: C by k-fold CV on train+val, deployed refit on both, val scored by a twin
        "fit_on": "train+val",
        "fit_images": probe.fit_images,
        "cv_images": probe.cv_images,  # fewer than fit_images when C was chosen on a sample (large data)
    }


def _probe_candidates(prepared: PreparedData) -> list[str]:
    """The configured cut point, and at ``head`` (unless ``multi_depth`` is off) also the deep joined one."""
    config = prepared.config
    if not config.multi_depth or config.cut_point != HEAD:
        return [config.cut_point]
    return [HEAD, deep_join(prepared.backbone.model)]


def _fit_probes(prepared: PreparedData) -> tuple[ProbeResult, dict[str, float | None]]:
    """Choose C by CV on each candidate input, finish the probe of the one that cross-validates best (the first on
    a tie or without CV) and return it with the CV score of every candidate. Only the winner gets the full fits."""
    targets, dataset, config = prepared.targets(), prepared.dataset, prepared.config
    searches = {
        cut_point: search_probe(
            prepared.features(cut_point),
            targets,
            seed=config.seed,
            groups=prepared.fit_groups(),
            use_signed_sqrt=config.signed_sqrt,
        )
        for cut_point in _probe_candidates(prepared)
    }
    candidates = {cut_point: search.cv_score for cut_point, search in searches.items()}
    kept = max(searches, key=lambda cut_point: _cv(candidates[cut_point]))
    probe = finish_probe(searches[kept], prepared.features(kept), targets, dataset.classes)
    probe.cut_point = kept
    if len(searches) > 1:
        scores = ", ".join(f"{c} {shown(v)}" for c, v in candidates.items())
        log.info(f"probe inputs by cross-validated log-likelihood: {scores}; kept {kept}")
    return probe, candidates


def _write_probe(prepared: PreparedData, probe: ProbeResult, run_dir: RunDir) -> list[list[str]]:
    """Write metrics.json and probe.*; return the probe's prediction rows."""
    features = prepared.features(probe.cut_point)
    run_dir.write_json(layout.METRICS, probe.metrics)
    dataset = prepared.dataset
    save_probe(run_dir.path, probe, dataset.classes, probe.cut_point, prepared.backbone.identity(), dataset.multilabel)

    def scores(split_name: str) -> np.ndarray:
        return probe.val_scores if split_name == "val" else probe.predict_scores(features[split_name])

    return _prediction_rows(prepared, scores, probe.thresholds)


def _prediction_rows(
    prepared: PreparedData, scores: Callable[[str], np.ndarray], thresholds: np.ndarray | None
) -> list[list[str]]:
    """predictions.csv rows of the val and test splits, ``scores(split_name)`` in split order."""
    targets, dataset = prepared.targets(), prepared.dataset
    rows = []
    for split_name in ("val", "test"):
        if len(targets[split_name]):
            paths = [dataset.paths[i] for i in prepared.split.indices(split_name)]
            rows += prediction_rows(
                split_name, paths, targets[split_name], scores(split_name), dataset.classes, thresholds
            )
    return rows
