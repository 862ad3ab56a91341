"""A self-contained ``report.html`` built only from the files in the run directory.

Every section reads the run-directory files it needs and is left out when they are missing, so the report works for
a probe-only run and grows as ranking, head search, data fractions and fine-tuning add their files. Pictures are
inlined as data URIs (the file opens from disk with no network); Jinja2 autoescaping keeps class and file names from
the user's data from injecting HTML.
"""

from __future__ import annotations

import base64
import functools
from dataclasses import asdict
from pathlib import Path
from statistics import mean
from typing import Any

import numpy as np
from jinja2 import Environment, PackageLoader, select_autoescape

from transferlab.advice import Advice, advise
from transferlab.fileio import atomic_write_text
from transferlab.record import layout
from transferlab.record.predictions import PROBABILITY_PREFIX
from transferlab.record.runfiles import LABEL_SEP, RunFiles, load_run
from transferlab.report import plots

WORST_ERRORS = 12


def data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def _metric_keys(run: RunFiles) -> list[str]:
    if run.multilabel:
        return ["mAP", "macro_auc", "macro_f1", "micro_f1"]
    return ["accuracy", "balanced_accuracy", "macro_f1"]


def _results(run: RunFiles) -> list[dict[str, Any]]:
    """One table row per (model, split): the probe on every split, later stages on test."""
    rows = [{"model": "linear probe", "split": split, **values} for split, values in run.metrics.items()]
    if run.ensemble:
        members = " + ".join(run.ensemble.get("evidence", {}).get("members", []))
        model = f"probes of {members} averaged"
        rows += [{"model": model, "split": split, **values} for split, values in run.ensemble["metrics"].items()]
    search = run.search or {}
    members = (search.get("ensemble") or {}).get("trials") or []
    searched = [("best searched head", search)]
    if len(members) > 1:  # the search's prediction averages its top heads; the single winner is shown beside it
        searched = [(f"top-{len(members)} searched heads averaged", search), ("best searched head", search.get("best"))]
    for model, payload in [*searched, ("fine-tuned", run.finetune)]:
        for split in ("val", "test"):
            if (payload or {}).get(f"{split}_metrics"):
                rows.append({"model": model, "split": split, **payload[f"{split}_metrics"]})
    return rows


def _curves(run: RunFiles) -> list[dict[str, Any]]:
    curves = []
    search = run.search or {}
    best = search.get("best") or {}
    for trial in search.get("trials") or []:
        if trial.get("number") == best.get("number") and trial.get("curve"):
            png = plots.learning_curves_png(trial["curve"])
            curves.append({"title": f"Best search trial #{trial['number']}", "picture": data_uri(png), "notes": []})
    finetune = run.finetune or {}
    for index, stage in enumerate(finetune.get("stages") or []):
        if not stage.get("history"):
            continue
        png = plots.learning_curves_png(stage["history"], stage.get("best_epoch"), stage.get("restarts") or ())
        notes = [f"head started from: {finetune['head_init']}"] if index == 0 and finetune.get("head_init") else []
        notes += [
            f"trainable: {', '.join(stage.get('trainable_blocks') or []) or 'head only'}",
            f"BN: {stage.get('bn_policy')}",
            f"lr head {stage.get('lr_head')}, backbone {stage.get('lr_backbone')}",
            f"best epoch {stage.get('best_epoch')}, stopped: {stage.get('stop_reason')}",
        ]
        notes += [
            f"restart at epoch {r.get('epoch')}: lr {r.get('old_lr')} → {r.get('new_lr')} ({r.get('reason')})"
            for r in stage.get("restarts") or []
        ]
        curves.append({"title": f"Fine-tuning stage '{stage.get('name')}'", "picture": data_uri(png), "notes": notes})
    return curves


def _labels(cell: str) -> frozenset[str]:
    return frozenset(label for label in cell.split(LABEL_SEP) if label)


def _worst_errors(run: RunFiles) -> list[dict[str, Any]]:
    """Validation images the final model got wrong, most confident mistakes first, with thumbnails."""
    wrong = [
        row
        for row in run.predictions
        if row.get("split") == "val" and _labels(row.get("true", "")) != _labels(row.get("predicted", ""))
    ]
    wrong.sort(key=lambda row: float(row.get("confidence") or 0), reverse=True)
    errors = []
    for row in wrong[:WORST_ERRORS]:
        path = run.image_path(row["path"])
        png = plots.thumbnail_png(path) if path else None
        errors.append({**row, "picture": data_uri(png) if png else None})
    return errors


def _roc_pr(run: RunFiles) -> str | None:
    """ROC/PR curves for multi-label runs whose predictions.csv carries per-label probabilities (``p:<label>``)."""
    classes = run.classes
    rows = [row for row in run.predictions if row.get("split") == "test"]
    if not run.multilabel or not rows or any(PROBABILITY_PREFIX + name not in rows[0] for name in classes):
        return None
    y_true = np.array([[name in _labels(row["true"]) for name in classes] for row in rows], dtype=np.uint8)
    scores = np.array([[float(row[PROBABILITY_PREFIX + name]) for name in classes] for row in rows])
    return data_uri(plots.roc_pr_png(y_true, scores, classes))


def _trials(run: RunFiles) -> dict[str, Any] | None:
    search = run.search
    if not search or not search.get("trials"):
        return None
    names = sorted({name for trial in search["trials"] for name in (trial.get("params") or {})})
    importance = search.get("importance") or {}
    return {
        "study": search.get("study_name"),
        "direction": search.get("direction"),
        "objective": search.get("objective") or search.get("metric"),
        "best": search.get("best") or {},
        "members": (search.get("ensemble") or {}).get("trials") or [],
        "explanation": search.get("explanation"),
        "param_names": names,
        "rows": search["trials"],
        "importance": data_uri(plots.importance_png(importance)) if importance else None,
    }


def _file_mb(path: Path | str | None) -> float | None:
    return Path(path).stat().st_size / 1e6 if path and Path(path).is_file() else None


def _seconds_per_epoch(run: RunFiles) -> float | None:
    epochs = [row["seconds"] for s in (run.finetune or {}).get("stages") or [] for row in s.get("history") or []]
    epochs = [seconds for seconds in epochs if seconds is not None]
    if epochs:
        return mean(epochs)
    trials = [t for t in (run.search or {}).get("trials") or [] if t.get("curve") and t.get("seconds")]
    return mean(t["seconds"] / len(t["curve"]) for t in trials) if trials else None


def _ranking_row(run: RunFiles) -> dict[str, Any]:
    """The ranking row of the backbone and cut point this run used (for its GFLOPs), if ranking ran."""
    backbone = run.record.get("backbone", {}).get("name") or run.config.get("backbone")
    cut = run.config.get("cut_point")
    for row in (run.ranking or {}).get("rows") or []:
        if row.get("backbone") == backbone and row.get("cut_point") == cut:
            return row
    return {}


def _device(facts: dict[str, Any] | None) -> str | None:
    """'cuda:0 (NVIDIA H200, 139.8 GB, bf16)' or 'cpu (x86_64, 2 cores, bf16)' from record.json's device facts."""
    if not facts:
        return None
    details = [facts.get("name"), facts.get("memory_gb") and f"{facts['memory_gb']} GB"]
    details += [facts.get("cores") and f"{facts['cores']} cores", facts.get("precision")]
    return f"{facts.get('device', '?')} ({', '.join(str(d) for d in details if d)})"


def _cost(run: RunFiles) -> list[tuple[str, str]]:
    """(label, value) rows; rows whose number is unknown are left out."""
    backbone = run.record.get("backbone") or {}
    best = (run.search or {}).get("best") or {}
    extraction = run.timings.get("extraction") or {}
    candidates: list[tuple[str, Any, str]] = [
        ("backbone parameters", backbone.get("params"), "{:,}"),
        ("best head parameters", best.get("head_params"), "{:,}"),
        ("backbone weights on disk", _file_mb(backbone.get("weights_path")), "{:.1f} MB"),
        ("probe on disk", _file_mb(run.path / layout.PROBE_WEIGHTS), "{:.2f} MB"),
        ("best head on disk", best.get("head_mb"), "{:.2f} MB"),
        ("fine-tuned model on disk", _file_mb(run.path / layout.FINETUNED_WEIGHTS), "{:.1f} MB"),
        ("GFLOPs per image (up to the cut point)", _ranking_row(run).get("gflops"), "{:.3f}"),
        ("device (feature precision)", _device(run.record.get("device")), "{}"),
        ("feature extraction", extraction.get("images_per_second"), "{:.1f} images/s"),
        ("features computed in", extraction.get("precision"), "{}"),
        ("seconds per epoch", _seconds_per_epoch(run), "{:.2f} s"),
        ("probe fit", run.timings.get("probe_fit_seconds"), "{:.1f} s"),
        ("total run time", run.timings.get("total_seconds"), "{:.1f} s"),
        ("peak memory (RSS)", run.process.get("peak_memory_mb"), "{:.0f} MB"),
    ]
    return [(label, template.format(value)) for label, value, template in candidates if value is not None]


def _probe_c(run: RunFiles) -> str | None:
    c = (run.record.get("probe") or {}).get("C")
    if isinstance(c, list):
        return f"{np.median(c):.3g} (median over labels)"
    return None if c is None else f"{c:.3g}"


def _probe_inputs(run: RunFiles) -> str | None:
    """Which features the probe kept and the cross-validated log-likelihood of each candidate it tried."""
    probe = run.record.get("probe") or {}
    candidates = probe.get("candidates") or {}
    if len(candidates) < 2:
        return None
    scores = ", ".join(f"{name} {'–' if value is None else f'{value:.4f}'}" for name, value in candidates.items())
    return f"{probe.get('cut_point')} (cross-validated log-likelihood per image: {scores})"


def _plan(run: RunFiles) -> dict[str, Any] | None:
    """The planned run's stages, estimate vs actual seconds (``plan.json``), and how the limit was kept."""
    plan = run.plan
    if not plan or not plan.get("steps"):
        return None
    limit, elapsed = plan["limit_seconds"], plan.get("elapsed_seconds")
    kept = None if elapsed is None else f"{elapsed:.0f} s of {limit:.0f} s"
    return {
        "limit": limit,
        "preset": plan.get("preset"),
        "device": plan.get("device"),
        "kept": kept,
        "steps": plan["steps"],
    }


def report_context(run: RunFiles, advice: list[Advice]) -> dict[str, Any]:
    """Everything the template shows; ``None`` or empty values make their section disappear."""
    stage, final = run.final_metrics()
    test = final.get("test") or {}
    augmentation = run.path / layout.AUGMENTATION_PREVIEW
    backbone = run.record.get("backbone") or {}
    return {
        "name": run.name,
        "config": run.config,
        "date": run.finished.strftime("%Y-%m-%d %H:%M UTC"),
        "command": " ".join(run.process.get("command") or run.environment.get("command") or []),
        "backbone": backbone.get("name") or run.config.get("backbone"),
        "weights_origin": backbone.get("weights_origin"),
        "task": run.record.get("task"),
        "classes": run.classes,
        "split_counts": run.record.get("split_counts") or {},
        "split_digest": run.record.get("split_digest"),
        "advice": [asdict(item) for item in advice],
        "metric_keys": _metric_keys(run),
        "results": _results(run),
        "probe_c": _probe_c(run),
        "probe_inputs": _probe_inputs(run),
        "final_stage": stage,
        "deployed_reason": (run.deployed or {}).get("reason"),
        "confusion": data_uri(plots.confusion_matrix_png(test["confusion_matrix"], run.classes))
        if test.get("confusion_matrix")
        else None,
        "per_class": test.get("per_class") or [],
        "per_class_picture": data_uri(plots.per_class_png(test["per_class"])) if test.get("per_class") else None,
        "roc_pr": _roc_pr(run),
        "curves": _curves(run),
        "worst": _worst_errors(run),
        "augmentation": data_uri(augmentation.read_bytes()) if augmentation.is_file() else None,
        "plan": _plan(run),
        "ranking": run.ranking if run.ranking and run.ranking.get("rows") else None,
        "trials": _trials(run),
        "fractions": run.fractions if run.fractions and run.fractions.get("rows") else None,
        "fraction_curve": data_uri(plots.fraction_curve_png(run.fractions["rows"], run.fractions.get("metric", "")))
        if run.fractions and run.fractions.get("rows")
        else None,
        "cost": _cost(run),
        "problems": run.problems,
    }


@functools.cache
def _templates() -> Environment:
    """The package's page templates, autoescaped, so names from the user's data cannot inject HTML."""
    return Environment(loader=PackageLoader("transferlab", "report/templates"), autoescape=select_autoescape())


def render_report(context: dict[str, Any]) -> str:
    return _templates().get_template(layout.REPORT).render(**context)


def write_report(run_path: Path, advice: list[Advice] | None = None) -> Path:
    """Render ``report.html`` from the files in ``run_path``, with ``advice`` (computed and written to
    ``advice.json`` here when not given; callers that also print the advice pass it, so it is computed once).

    Every stage writes its own files; the report reads whatever is there, so re-rendering after a later stage
    (search, fine-tuning, ranking) needs nothing but the directory.
    """
    run_path = Path(run_path)
    advice = advise(run_path) if advice is None else advice
    atomic_write_text(run_path / layout.REPORT, render_report(report_context(load_run(run_path), advice)))
    return run_path / layout.REPORT


def render_evaluation(context: dict[str, Any]) -> str:
    """The page of ``transferlab evaluate`` (context built by :mod:`transferlab.evaluate.page`)."""
    return _templates().get_template(layout.EVALUATION_PAGE).render(**context)
