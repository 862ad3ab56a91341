"""The fine-tuning stage of ``transferlab run``: which head to fine-tune under, then training and predictions.

Reads :class:`~transferlab.prepare.PreparedData` and the earlier stages' results (probe, head search), writes
``finetune.json`` and the model files through :func:`transferlab.finetune.finetune`, and returns the test metrics
and the final model's ``predictions.csv`` rows.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from transferlab.finetune.options import FinetuneOptions
from transferlab.finetune.run import finetune
from transferlab.heads import HeadSpec
from transferlab.metrics import headline, shown
from transferlab.probe.linear import ProbeResult
from transferlab.record.predictions import prediction_rows

if TYPE_CHECKING:
    from transferlab.config import RunConfig
    from transferlab.prepare import PreparedData
    from transferlab.search import SearchOutcome

log = logging.getLogger(__name__)


def finetune_options(config: RunConfig, searched: SearchOutcome | None, probe: ProbeResult) -> FinetuneOptions:
    """``config.finetune`` as options; the searched head replaces the linear (probe-initialised) head only when it
    beat the probe on validation — a bigger head that scores worse is not worth fine-tuning under."""
    values = dict(config.finetune or {})
    spec = values.pop("head_spec", None)
    options = FinetuneOptions(**values, head_spec=HeadSpec.from_dict(spec) if spec else None)
    options.seed, options.workers = config.seed, config.workers or 0
    if options.head_spec is None and searched is not None:
        metric, probe_val = headline(probe.metrics.get("val", {"accuracy": None}))
        head_val = searched.record["best"].get("val_metric")
        if head_val is not None and (probe_val is None or head_val > probe_val):
            options.head_spec = searched.best_spec
            log.info(
                f"fine-tuning the searched head from its trained weights (val {metric} {shown(head_val)} beats the "
                f"probe's {shown(probe_val)})"
            )
        else:
            log.info(
                f"fine-tuning a linear head warm-started from the probe (val {metric} {shown(probe_val)} vs "
                f"searched head {shown(head_val)})"
            )
    return options


def finetune_stage(
    prepared: PreparedData,
    run_path: Path,
    options: FinetuneOptions,
    probe: ProbeResult,
    searched: SearchOutcome | None,
) -> tuple[dict[str, Any], list[list[str]], dict[str, Any]]:
    """Fine-tune; returns the test metrics, the fine-tuned model's ``predictions.csv`` rows and its val metrics.

    When the searched head is the one being fine-tuned, training starts from its trained weights.
    """
    head_init = searched.head if searched is not None and options.head_spec == searched.best_spec else None
    outcome = finetune(prepared, run_path, options, probe=probe, head_init=head_init)
    thresholds = None if outcome.thresholds is None else np.asarray(outcome.thresholds)
    targets = prepared.targets()
    rows: list[list[str]] = []
    for split_name in ("val", "test"):  # outcome.scores follow prepared.split_paths(), i.e. split index order
        paths = [prepared.dataset.paths[i] for i in prepared.split.indices(split_name)]
        rows += prediction_rows(
            split_name, paths, targets[split_name], outcome.scores[split_name], prepared.dataset.classes, thresholds
        )
    return outcome.test_metrics, rows, outcome.metrics.get("val", {})
