"""The head-search stage of ``transferlab run`` and ``transferlab search``: the study, then the learning curve.

Reads :class:`~transferlab.prepare.PreparedData`, writes ``search.json`` (and ``fractions.json``) into the run
directory and returns the outcome, so the pipeline stays a straight line.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

from transferlab.fileio import write_json
from transferlab.probe.linear import ProbeResult
from transferlab.record import layout
from transferlab.search.runner import SearchOutcome, fraction_curve, search_heads

if TYPE_CHECKING:
    from transferlab.config import RunConfig
    from transferlab.prepare import PreparedData

log = logging.getLogger(__name__)


def search_stage(
    prepared: PreparedData,
    run_path: Path,
    config: RunConfig,
    probe: ProbeResult | None,
    **study: Any,
) -> tuple[SearchOutcome, dict[str, Any] | None]:
    """Optuna head search on cached features; with ``config.fractions`` also the learning curve of the winner.

    ``probe``: the already fitted probe, compared against instead of fitting it again (None: fit one).
    ``study``: storage / study_name / maps for :func:`transferlab.search.search_heads`.
    """
    outcome = search_heads(
        prepared,
        run_path,
        trials=config.trials,
        timeout=config.search_timeout,
        jobs=config.search_jobs,
        ensemble=config.search_ensemble,
        seed=config.seed,
        probe_metrics=None if probe is None else probe.metrics,
        **study,
    )
    log.info(outcome.summary())
    curve = None
    if config.fractions:
        curve = fraction_curve(prepared, outcome.best_params, config.fractions, config.seed)
        write_json(run_path / layout.FRACTIONS, curve)
    return outcome, curve
