"""Runs side by side: list them, show what differs between two, and repeat one from its ``config.json``."""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from transferlab.record.runfiles import RunFiles, load_run

MISSING = "–"


def table(header: list[str], rows: list[list[str]]) -> str:
    """A plain left-aligned text table for the terminal."""
    widths = [max(len(str(cell)) for cell in column) for column in zip(header, *rows, strict=True)]
    lines = [header, ["-" * width for width in widths], *rows]
    return "\n".join(
        "  ".join(str(cell).ljust(width) for cell, width in zip(line, widths, strict=True)).rstrip() for line in lines
    )


def runs_table(runs: list[RunFiles]) -> str:
    """name, date, data, backbone, cut point, headline test metric of the final model, seconds."""
    rows = []
    for run in runs:
        headline = run.headline()
        seconds = run.timings.get("total_seconds")
        rows.append(
            [
                run.name,
                run.finished.strftime("%Y-%m-%d %H:%M"),
                str(run.config.get("data", MISSING)),
                str(run.config.get("backbone", MISSING)),
                str(run.config.get("cut_point", MISSING)),
                f"{headline[0]} {headline[1]:.4f} ({run.final_metrics()[0]})" if headline else MISSING,
                f"{seconds:.1f}" if isinstance(seconds, (int, float)) else MISSING,
            ]
        )
    return table(["name", "date (UTC)", "data", "backbone", "cut", "test metric", "seconds"], rows)


def _flatten(payload: Any, prefix: str = "") -> dict[str, Any]:
    """Nested dicts to ``a.b.c`` keys with scalar leaves; lists (confusion matrices, per-class rows) are skipped."""
    if isinstance(payload, dict):
        flat: dict[str, Any] = {}
        for key, value in payload.items():
            flat.update(_flatten(value, f"{prefix}{key}."))
        return flat
    if isinstance(payload, list):
        return {}
    return {prefix.rstrip("."): payload}


def result_values(run: RunFiles) -> dict[str, Any]:
    """Every scalar result of a run (probe metrics per split, later stages' test metrics, chosen backbone)."""
    values = _flatten({"probe": run.metrics})
    for stage, payload in (("search", run.search), ("finetune", run.finetune)):
        if payload:
            values.update(_flatten({stage: {"test": payload.get("test_metrics") or {}}}))
    if run.ranking:
        values.update(_flatten({"ranking": {"chosen": run.ranking.get("chosen") or {}}}))
    values["split_digest"] = run.record.get("split_digest")
    return values


def _same(a: Any, b: Any, tolerance: float) -> bool:
    if isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool):
        return math.isclose(a, b, rel_tol=0, abs_tol=tolerance)
    return a == b


def differences(a: dict[str, Any], b: dict[str, Any], tolerance: float = 0.0) -> list[tuple[str, Any, Any]]:
    """(key, value in a, value in b) for every key whose values differ; missing keys show as ``–``."""
    return [
        (key, a.get(key, MISSING), b.get(key, MISSING))
        for key in sorted(set(a) | set(b))
        if not _same(a.get(key, MISSING), b.get(key, MISSING), tolerance)
    ]


def _cell(value: Any) -> str:
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def comparison(a: RunFiles, b: RunFiles) -> str:
    """What differs between two runs: configuration, then results (with b − a for numbers)."""
    sections = []
    config = differences(_flatten(a.config), _flatten(b.config))
    rows = [[key, _cell(x), _cell(y)] for key, x, y in config]
    sections.append(
        "configuration: identical" if not rows else "configuration\n" + table(["key", a.name, b.name], rows)
    )
    results = differences(result_values(a), result_values(b))
    rows = []
    for key, x, y in results:
        numeric = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (x, y))
        rows.append([key, _cell(x), _cell(y), f"{y - x:+.4f}" if numeric else ""])
    header = ["result", a.name, b.name, "b - a"]
    sections.append("results: identical" if not rows else "results\n" + table(header, rows))
    return "\n\n".join(sections)


@dataclass
class Rerun:
    """A repeated run and how its results compare with the original's."""

    original: RunFiles
    repeat: RunFiles
    mismatches: list[tuple[str, Any, Any]]
    ignored_options: list[str]

    @property
    def matches(self) -> bool:
        return not self.mismatches

    def summary(self, tolerance: float) -> str:
        if self.matches:
            return f"metrics match the original run {self.original.name} (tolerance {tolerance:g})"
        rows = [[key, _cell(x), _cell(y)] for key, x, y in self.mismatches]
        return f"metrics DIFFER from the original run {self.original.name} (tolerance {tolerance:g}):\n" + table(
            ["result", "original", "rerun"], rows
        )


def rerun(
    run_path: str | Path,
    *,
    runs_dir: str | Path | None = None,
    name: str | None = None,
    cache_dir: str | Path | None = None,
    tolerance: float = 1e-6,
    progress: bool = True,
) -> Rerun:
    """Repeat a run from its ``config.json`` (same data, options and seed) under a new name and compare results."""
    from transferlab.config import RunConfig
    from transferlab.pipeline import run

    original = load_run(run_path)
    known = {field.name for field in fields(RunConfig)}
    options = {key: value for key, value in original.config.items() if key in known and key != "data"}
    ignored = sorted(set(original.config) - known)
    stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
    data = original.config["data"]
    result = run(
        RunConfig(data=str(data if Path(data).exists() else original.data_path), **options),
        runs_dir=runs_dir or original.path.parent,
        name=name or f"{original.name}-rerun-{stamp}",
        cache_dir=cache_dir,
        progress=progress,
    )
    repeat = load_run(result.run_dir)
    mismatches = differences(result_values(original), result_values(repeat), tolerance)
    return Rerun(original, repeat, mismatches, ignored)
