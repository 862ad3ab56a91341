"""Keeping a run to its plan: each stage asks to begin, is granted the time left, and reports how long it took.

:func:`timekeeper` returns a :class:`Budget` for a planned run (``--time-limit`` / ``--preset``) and an
:class:`Unplanned` one otherwise, which grants everything and records nothing, so the pipeline reads the same
straight line either way.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from transferlab.budget import Clock, format_duration
from transferlab.config import RunConfig
from transferlab.metrics import headline, shown
from transferlab.plan.planner import FINISH_SECONDS, Plan, budget_of, make_plan, planned_config
from transferlab.record import RunDir, layout

if TYPE_CHECKING:
    from transferlab.probe.linear import ProbeResult

log = logging.getLogger(__name__)


class Unplanned:
    """No budget: every stage runs as configured, with no grant and no deadline."""

    granted: float | None = None
    planned = False  # a plan chooses among several backbones itself (no ranking first)

    def configure(self, config: RunConfig) -> RunConfig:
        return config

    def backbones(self, config: RunConfig) -> list[tuple[str, str | None]]:
        return [(config.backbone, config.weights_for(config.backbone))]

    def begin(self, stage: str, run_dir: RunDir, best: ProbeResult | None) -> bool:
        return True

    def grant(self, default: float | None) -> float | None:
        """The stage's grant in seconds, or ``default`` (its own configured limit) when the run is not planned."""
        return default

    def deadline(self) -> float | None:
        return None

    def end(self, stage: str, run_dir: RunDir, note: str = "", status: str = "done") -> None:
        return None

    def close(self, run_dir: RunDir) -> None:
        return None


class Budget(Unplanned):
    """A planned run's plan and clock. ``begin`` grants a stage the time left (the first probe always runs, with
    no deadline: every run ends with a usable model), ``end`` records its actual time; ``plan.json`` is rewritten
    at each step, so an interrupted run still shows how far it got."""

    planned = True

    def __init__(self, plan: Plan, clock: Clock, progress: bool) -> None:
        self.plan, self.clock, self.progress = plan, clock, progress
        self.granted: float | None = None
        self.begun = 0.0

    def configure(self, config: RunConfig) -> RunConfig:
        return planned_config(config, self.plan)

    def backbones(self, config: RunConfig) -> list[tuple[str, str | None]]:
        return [(name, self.plan.costs[name].weights) for name in self.plan.backbones]

    def begin(self, stage: str, run_dir: RunDir, best: ProbeResult | None) -> bool:
        first = stage == self.plan.steps[0].stage and best is None
        if first:
            self.granted = None
        elif any(s.stage == stage for s in self.plan.steps):
            self.granted = self.plan.allow(stage, self.clock)
        else:
            left = self.clock.remaining() - FINISH_SECONDS
            self.granted = left if left > 0 else None
        run_dir.write_json(layout.PLAN, self.record())
        if self.granted is None and not first:
            return False
        self._say(stage, best)
        self.begun = time.perf_counter()
        return True

    def grant(self, default: float | None) -> float | None:
        return self.granted

    def deadline(self) -> float | None:
        return None if self.granted is None else time.monotonic() + self.granted

    def end(self, stage: str, run_dir: RunDir, note: str = "", status: str = "done") -> None:
        if any(s.stage == stage for s in self.plan.steps):
            self.plan.finished(stage, time.perf_counter() - self.begun, note, status)
        run_dir.write_json(layout.PLAN, self.record())

    def record(self) -> dict[str, Any]:
        return {**self.plan.to_json(), "elapsed_seconds": self.clock.elapsed()}

    def close(self, run_dir: RunDir) -> None:
        for step in self.plan.steps:
            if step.status == "planned":  # (an optional probe, or the ensemble of probes that did not happen)
                step.status, step.note = "skipped", step.note or "not reached"
        run_dir.write_json(layout.PLAN, self.record())
        elapsed, limit = self.clock.elapsed(), self.clock.limit
        verdict = f"{format_duration(elapsed - limit)} over" if elapsed > limit else "within it"
        log.info(f"plan: finished in {format_duration(elapsed)} of {format_duration(limit)} ({verdict})")

    def _say(self, stage: str, best: ProbeResult | None) -> None:
        """The whole run's progress line: stage, elapsed of the limit, time left, best validation score so far."""
        if not self.progress:
            return
        score = ""
        if best is not None:
            metric, value = headline(best.metrics.get("val") or {"accuracy": None})
            score = f"; best so far: val {metric} {shown(value)} (probe of {best.backbone})"
        elapsed, limit = format_duration(self.clock.elapsed()), format_duration(self.clock.limit)
        log.info(f"[{elapsed} of {limit}] {stage}, {format_duration(self.clock.remaining())} left{score}")


def timekeeper(config: RunConfig, cache_dir: str | Path | None, progress: bool) -> Unplanned:
    """A :class:`Budget` (measured and planned now, the plan logged) when ``config`` has a time limit or preset."""
    if config.time_limit is None and config.preset is None:
        return Unplanned()
    clock = Clock(budget_of(config)[0])
    plan = make_plan(config, clock, cache_dir)
    log.info(plan.table())
    return Budget(plan, clock, progress)
