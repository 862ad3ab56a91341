"""Read a run directory back: every file of the run-directory contract, each optional except ``config.json``.

The report, the advice and the ``runs``/``compare``/``rerun`` commands all read runs through :func:`load_run`, so a
stage that is missing (never ran, or an older run) is simply ``None`` here and nobody else has to check for files.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from transferlab.errors import TransferlabError
from transferlab.metrics import HEADLINE_KEYS
from transferlab.record import layout
from transferlab.record.predictions import LABEL_JOIN

LABEL_SEP = LABEL_JOIN


def _json(path: Path) -> Any:
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise TransferlabError(f"{path}: not valid JSON ({error})") from error


def _csv(path: Path) -> list[dict[str, str]]:
    if not path.is_file():
        return []
    with open(path, newline="", encoding="utf-8", errors="replace") as handle:
        return list(csv.DictReader(handle))


@dataclass
class RunFiles:
    """The contents of ``runs/<name>/``; optional stages are ``None`` (JSON) or empty (CSV/text) when absent."""

    path: Path
    config: dict[str, Any]
    environment: dict[str, Any] = field(default_factory=dict)
    process: dict[str, Any] = field(default_factory=dict)
    record: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    timings: dict[str, Any] = field(default_factory=dict)
    plan: dict[str, Any] | None = None
    ranking: dict[str, Any] | None = None
    search: dict[str, Any] | None = None
    fractions: dict[str, Any] | None = None
    finetune: dict[str, Any] | None = None
    deployed: dict[str, Any] | None = None
    ensemble: dict[str, Any] | None = None
    split_rows: list[dict[str, str]] = field(default_factory=list)
    predictions: list[dict[str, str]] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def classes(self) -> list[str]:
        return list(self.record.get("classes", []))

    @property
    def multilabel(self) -> bool:
        return self.record.get("task") == "multi-label"

    @property
    def finished(self) -> datetime:
        """When the run wrote its results (metrics.json, else config.json): the date shown by ``transferlab runs``."""
        marker = self.path / layout.METRICS
        stamp = (marker if marker.exists() else self.path / layout.CONFIG).stat().st_mtime
        return datetime.fromtimestamp(stamp, tz=timezone.utc)

    def final_metrics(self) -> tuple[str, dict[str, dict[str, Any]]]:
        """The deployed model's metrics per split and which stage produced it: what ``deployed.json`` says (``run``
        writes it: the probe, the ensemble of probes or fine-tuning), else fine-tuning > head search > probe.

        Later stages store only test metrics; the probe's ``metrics.json`` has all three splits.
        """
        stage = (self.deployed or {}).get("stage")
        if stage == "probe":
            return stage, self.metrics
        if stage == "ensemble" and self.ensemble:
            return stage, self.ensemble.get("metrics", {})
        for stage, payload in (("fine-tuning", self.finetune), ("head search", self.search)):
            if payload and payload.get("test_metrics"):
                return stage, {"test": payload["test_metrics"]}
        return "probe", self.metrics

    def headline(self) -> tuple[str, float] | None:
        """(metric name, value) of the final model on the test split: accuracy, or mAP for multi-label."""
        test = self.final_metrics()[1].get("test") or {}
        for key in HEADLINE_KEYS:
            if test.get(key) is not None:
                return key, float(test[key])
        return None

    @property
    def data_path(self) -> Path:
        """The run's data; a relative path is taken from the run's working directory (process.json) if recorded."""
        return Path(self.process.get("cwd", ".")) / self.config.get("data", ".")

    def data_root(self) -> Path:
        """The folder that split.csv and predictions.csv paths are relative to (the data folder or the CSV's)."""
        return self.data_path if self.data_path.is_dir() else self.data_path.parent

    def image_path(self, relative: str) -> Path | None:
        path = Path(relative)
        path = path if path.is_absolute() else self.data_root() / path
        return path if path.is_file() else None


def load_run(run_path: str | Path) -> RunFiles:
    """Read every file a run directory may hold; a folder without ``config.json`` is not a run."""
    path = Path(run_path)
    config = _json(path / layout.CONFIG)
    if config is None:
        raise TransferlabError(f"{path}: not a run directory (no config.json)")
    problems_file = path / layout.PROBLEMS
    problems = (
        problems_file.read_text(encoding="utf-8", errors="replace").splitlines() if problems_file.is_file() else []
    )
    return RunFiles(
        path=path,
        config=config,
        environment=_json(path / layout.ENVIRONMENT) or {},
        process=_json(path / layout.PROCESS) or {},
        record=_json(path / layout.RECORD) or {},
        metrics=_json(path / layout.METRICS) or {},
        timings=_json(path / layout.TIMINGS) or {},
        plan=_json(path / layout.PLAN),
        ranking=_json(path / layout.RANKING),
        search=_json(path / layout.SEARCH),
        fractions=_json(path / layout.FRACTIONS),
        finetune=_json(path / layout.FINETUNE),
        deployed=_json(path / layout.DEPLOYED),
        ensemble=_json(path / layout.ENSEMBLE),
        split_rows=_csv(path / layout.SPLIT),
        predictions=_csv(path / layout.PREDICTIONS),
        problems=[line for line in problems if line.strip()],
    )


def find_runs(runs_dir: str | Path) -> tuple[list[RunFiles], list[str]]:
    """Every run under ``runs_dir``, oldest first, and one message per run directory that could not be read."""
    root = Path(runs_dir)
    if not root.is_dir():
        raise TransferlabError(f"runs directory {root} does not exist")
    runs, unreadable = [], []
    for child in sorted(root.iterdir()):
        if (child / layout.CONFIG).is_file():
            try:
                runs.append(load_run(child))
            except TransferlabError as error:
                unreadable.append(str(error))
    return sorted(runs, key=lambda run: (run.finished, run.name)), unreadable


def resolve_run(run: str | Path, runs_dir: str | Path = "runs") -> Path:
    """A run given as a path or as a name inside ``runs_dir``."""
    for candidate in (Path(run), Path(runs_dir) / str(run)):
        if (candidate / layout.CONFIG).is_file():
            return candidate
    raise TransferlabError(f"no run '{run}' (looked for {run}/config.json and {Path(runs_dir) / str(run)}/config.json)")


def resolve_model(model: str | Path, runs_dir: str | Path = "runs") -> Path:
    """A model directory as given (a run, or an ONNX export, which has no config.json), else a run name."""
    path = Path(model)
    return path if path.is_dir() else resolve_run(model, runs_dir)
