"""The optional stages after the probe in ``transferlab run``: head search (+ data-fraction curve), fine-tuning.

Each stage reads the shared :class:`~transferlab.pipeline.PreparedData`, writes its own files into the run
directory (``search.json``, ``fractions.json``, ``finetune.json`` ...) and returns its test metrics, so ``run``
stays a straight line: prepare → probe → [search] → [fine-tune] → report.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from transferlab.fileio import write_json
from transferlab.probe.linear import ProbeResult
from transferlab.probe.metrics import headline
from transferlab.record.predictions import prediction_rows

if TYPE_CHECKING:
    from transferlab.finetune import FinetuneOptions
    from transferlab.pipeline import PreparedData, RunConfig
    from transferlab.search import SearchOutcome


def search_stage(
    prepared: PreparedData,
    run_path: Path,
    config: RunConfig,
    probe: ProbeResult | None,
    echo: Callable[[str], None],
    **study: Any,
) -> tuple[SearchOutcome, dict[str, Any] | None]:
    """Optuna head search on cached features; with ``config.fractions`` also the learning curve of the winner.

    ``probe``: the already fitted probe, compared against instead of fitting it again (None: fit one).
    ``study``: storage / study_name / maps for :func:`transferlab.search.search_heads`.
    """
    from transferlab.search import fraction_curve, search_heads

    outcome = search_heads(
        prepared,
        run_path,
        trials=config.trials,
        timeout=config.search_timeout,
        jobs=config.search_jobs,
        ensemble=config.search_ensemble,
        seed=config.seed,
        probe_test_metrics=None if probe is None else probe.metrics.get("test", {}),
        echo=echo,
        **study,
    )
    echo(outcome.summary())
    curve = None
    if config.fractions:
        curve = fraction_curve(prepared, outcome.best_params, config.fractions, config.seed)
        write_json(run_path / "fractions.json", curve)
    return outcome, curve


def _shown(value: float | None) -> str:
    return "–" if value is None else f"{value:.4f}"


def finetune_options(
    config: RunConfig, searched: SearchOutcome | None, probe: ProbeResult, echo: Callable[[str], None]
) -> FinetuneOptions:
    """``config.finetune`` as options; the searched head replaces the linear (probe-initialised) head only when it
    beat the probe on validation — a bigger head that scores worse is not worth fine-tuning under."""
    from transferlab.finetune import FinetuneOptions
    from transferlab.heads import HeadSpec

    values = dict(config.finetune or {})
    spec = values.pop("head_spec", None)
    options = FinetuneOptions(**values, head_spec=HeadSpec.from_dict(spec) if spec else None)
    options.seed, options.workers = config.seed, config.workers or 0
    if options.head_spec is None and searched is not None:
        metric, probe_val = headline(probe.metrics.get("val", {"accuracy": None}))
        head_val = searched.record["best"].get("val_metric")
        if head_val is not None and (probe_val is None or head_val > probe_val):
            options.head_spec = searched.best_spec
            echo(
                f"fine-tuning the searched head from its trained weights (val {metric} {_shown(head_val)} beats the "
                f"probe's {_shown(probe_val)})"
            )
        else:
            echo(
                f"fine-tuning a linear head warm-started from the probe (val {metric} {_shown(probe_val)} vs "
                f"searched head {_shown(head_val)})"
            )
    return options


def finetune_stage(
    prepared: PreparedData,
    run_path: Path,
    options: FinetuneOptions,
    probe: ProbeResult,
    searched: SearchOutcome | None,
    echo: Callable[[str], None],
) -> tuple[dict[str, Any], list[list[str]]]:
    """Fine-tune; returns the test metrics and the final model's ``predictions.csv`` rows.

    When the searched head is the one being fine-tuned, training starts from its trained weights.
    """
    from transferlab.finetune import finetune

    head_init = searched.head if searched is not None and options.head_spec == searched.best_spec else None
    outcome = finetune(prepared, run_path, options, echo=echo, probe=probe, head_init=head_init)
    thresholds = None if outcome.thresholds is None else np.asarray(outcome.thresholds)
    targets = prepared.targets()
    rows: list[list[str]] = []
    for split_name in ("val", "test"):  # outcome.scores follow prepared.split_paths(), i.e. split index order
        paths = [prepared.dataset.paths[i] for i in prepared.split.indices(split_name)]
        rows += prediction_rows(
            split_name, paths, targets[split_name], outcome.scores[split_name], prepared.dataset.classes, thresholds
        )
    return outcome.test_metrics, rows
