"""The head-search stage: run the study, refit the winner, compare it with the plain probe, write search.json."""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import optuna

from transferlab.data import stratified_subset
from transferlab.errors import TransferlabError
from transferlab.fileio import write_json
from transferlab.heads import Head, HeadSpec, cost_warning, head_cost
from transferlab.metrics import headline
from transferlab.prepare import PreparedData, prepare
from transferlab.probe import fit_probe
from transferlab.record import layout
from transferlab.search.data import HeadData
from transferlab.search.ensemble import ENSEMBLE_SIZE, HeadEnsemble, head_scores, split_metrics, top_trials
from transferlab.search.parallel import local_workers
from transferlab.search.placement import place_trials
from transferlab.search.space import decode
from transferlab.search.study import (
    DIRECTION,
    FINISHED,
    STALE_AFTER_SECONDS,
    create_search_study,
    default_storage,
    default_study_name,
    load_search_study,
    run_queued_trials,
    worker_config,
)
from transferlab.search.train import predict_logits, score, train_head

log = logging.getLogger(__name__)


@dataclass
class SearchOutcome:
    """The study's winner (``best_value``: its validation loss, the objective) and the search's test metrics.

    ``test_metrics``: the final predictor's, the average of the top heads (see ``search.ensemble``), next to the
    single winner's (``best_test_metrics``) and the probe's. ``head``: the refitted winner rewritten to take raw
    (unstandardized) pooled features, for fine-tuning to start from; None when the winner pools spatial maps.
    """

    study_name: str
    storage: str
    best_spec: HeadSpec
    best_params: dict[str, Any]
    best_value: float
    test_metrics: dict[str, Any]
    best_test_metrics: dict[str, Any]
    probe_test_metrics: dict[str, Any]
    record: dict[str, Any]
    path: Path
    head: Head | None = None

    def summary(self) -> str:
        metric = headline(self.test_metrics)[0]
        size = len(self.record["ensemble"]["trials"])
        final = f"top-{size} heads averaged {self.test_metrics[metric]:.4f}  " if size > 1 else ""
        return (
            f"best head: {self.best_spec.describe()}  val loss {self.best_value:.4f}\n"
            f"test {metric}: {final}best head {self.best_test_metrics[metric]:.4f}  "
            f"vs plain probe {self.probe_test_metrics[metric]:.4f}"
        )


def load_head_data(prepared: PreparedData, maps: bool = False) -> HeadData:
    """Cached features of the configured cut point (and its spatial maps when ``maps``)."""
    if not maps:
        return HeadData.from_prepared(prepared)
    return HeadData.from_arrays(prepared.features(), prepared.targets(), prepared.dataset.classes, maps=prepared.maps())


def _trial_rows(study: optuna.Study) -> list[dict[str, Any]]:
    return [
        {
            "number": t.number,
            "state": t.state.name,
            "params": t.params,
            "value": t.value,
            "val_metric": t.user_attrs.get("val_metric"),
            "seconds": t.user_attrs.get("seconds"),
            "curve": t.user_attrs.get("curve", []),
            **({"error": t.user_attrs["error"]} if "error" in t.user_attrs else {}),
        }
        for t in sorted(study.get_trials(deepcopy=False, states=FINISHED), key=lambda t: t.number)
    ]


def _importance(study: optuna.Study) -> dict[str, float]:
    """fANOVA importance of each parameter for the val metric; empty when too few trials completed to tell."""
    complete = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    if len(complete) < 3:
        return {}
    try:
        importance = optuna.importance.get_param_importances(
            study, evaluator=optuna.importance.FanovaImportanceEvaluator(seed=0)
        )
    except (ValueError, RuntimeError):
        return {}
    return {name: float(value) for name, value in importance.items()}


def _explain(record: dict[str, Any]) -> str:
    """One paragraph for the report: why this head won and whether it is worth more than the plain probe."""
    metric, best = record["metric"], record["best"]
    states = [t["state"] for t in record["trials"]]
    text = (
        f"Trial {best['number']} won with the lowest validation loss ({best['value']:.4f}; validation {metric} "
        f"{best['val_metric']:.4f}) among {len(states)} trials "
        f"({states.count('COMPLETE')} complete, {states.count('PRUNED')} pruned early, {states.count('FAIL')} failed): "
        f"{best['description']}, {best['head_params']:,} parameters ({best['head_mb']:.2f} MB)."
    )
    if record["importance"]:
        top = sorted(record["importance"].items(), key=lambda item: -item[1])[:3]
        text += " Most influential settings: " + ", ".join(f"{name} ({value:.2f})" for name, value in top) + "."
    members = record["ensemble"]["trials"]
    if len(members) > 1:
        text += (
            f" The search predicts with the average of the top {len(members)} heads (trials "
            f"{', '.join(map(str, members))}): one winner picked on {record['n_val']} validation images is partly "
            f"luck, an average of the best few is steadier."
        )
    head, probe = record["test_metrics"].get(metric), record["probe_test_metrics"].get(metric)
    if head is not None and probe is not None:
        verdict = "beats" if head > probe else "matches" if head == probe else "does not beat"
        name = f"the top-{len(members)} average" if len(members) > 1 else "the head"
        text += f" On the test split {name} {verdict} the plain probe ({metric} {head:.4f} vs {probe:.4f})"
        single = record["best"]["test_metrics"].get(metric)
        text += f"; the single best head scores {single:.4f}." if len(members) > 1 else "."
    return text


def search_heads(
    prepared: PreparedData,
    run_dir: str | Path,
    *,
    trials: int,
    timeout: float | None = None,
    storage: str | None = None,
    study_name: str | None = None,
    seed: int = 0,
    maps: bool = False,
    jobs: int = 1,
    ensemble: int = ENSEMBLE_SIZE,
    probe_metrics: dict[str, dict[str, Any]] | None = None,
) -> SearchOutcome:
    """Search heads on ``prepared``'s cached features, refit the best, score it and the probe on test.

    ``probe_metrics``: the plain probe's metrics per split when the caller has fitted it already (``run`` has),
    so it is not fitted twice. A search whose heads score far below the probe on validation says so.

    ``jobs``: processes working on the study here (this one plus ``jobs - 1`` local workers); each trial uses one
    core. With ``jobs > 1`` the trial sequence depends on timing, so only ``jobs=1`` replays exactly from the seed.

    ``ensemble``: how many of the best heads the final predictor averages (1: the single winner).

    ``maps`` also offers heads that need spatial maps (max / avg+max / conv1x1 pooling); their maps are cached once.
    Writes ``<run_dir>/search.json``; the study itself lives in ``storage`` (default SQLite in the run directory).
    """
    if jobs < 1:
        raise TransferlabError(f"--jobs must be >= 1, got {jobs}")
    if ensemble < 1:
        raise TransferlabError(f"--ensemble must be >= 1 (1: the single best head), got {ensemble}")
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    storage = storage or default_storage(run_dir)
    study_name = study_name or default_study_name(prepared.config)
    data = load_head_data(prepared, maps)
    study, backend = create_search_study(
        prepared, trials=trials, storage=storage, study_name=study_name, seed=seed, maps=maps
    )
    started = time.perf_counter()
    trial_data, placement = place_trials(data, prepared.device)
    # forked local workers train on the CPU (a forked process must not touch the parent's CUDA context)
    with local_workers(jobs - 1, study_name, storage, data, seed=seed, maps=maps, timeout=timeout):
        run_queued_trials(study, backend, trial_data, seed=seed, maps=maps, timeout=timeout)
    search_seconds = time.perf_counter() - started
    running = len(study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)))
    if running:
        log.info(
            f"{running} trial(s) still RUNNING: on another worker, or left by a stopped one (re-queued "
            f"{STALE_AFTER_SECONDS} s after its last heartbeat); rerun the same command later to include them"
        )
    top = top_trials(study, ensemble)
    if not top:
        raise TransferlabError(f"no trial of study '{study_name}' completed; see {run_dir / 'search.json'}")
    best = top[0]
    spec, _ = decode(best.params, multilabel=data.multilabel)
    members = HeadEnsemble.refit(top, data, seed)
    best_metrics = split_metrics(head_scores(members.heads[0], data), data)
    ensemble_metrics = split_metrics(members.scores(data), data)
    test_metrics = ensemble_metrics.get("test", {})
    if probe_metrics is None:
        probe_metrics = fit_probe(
            prepared.features(),
            prepared.targets(),
            prepared.dataset.classes,
            seed=seed,
            groups=prepared.fit_groups(),
            use_signed_sqrt=prepared.config.signed_sqrt,
        ).metrics
    probe_test_metrics = probe_metrics.get("test", {})
    shortfall = _shortfall(ensemble_metrics.get("val", {}), probe_metrics.get("val", {}), data.metric)
    head_params, head_mb = head_cost(spec, data.in_channels, data.spatial, len(data.classes))
    record = {
        "study_name": study_name,
        "storage": storage,
        "direction": DIRECTION,
        "objective": "val_loss",
        "metric": data.metric,
        "n_trials": len(study.get_trials(deepcopy=False, states=FINISHED)),
        "jobs": jobs,
        "trial_device": placement,
        "search_seconds": search_seconds,
        "refit_seconds": time.perf_counter() - started - search_seconds,
        "best": {
            "number": best.number,
            "value": best.value,
            "val_metric": best.user_attrs.get("val_metric"),
            "params": best.params,
            "spec": spec.to_dict(),
            "description": spec.describe(),
            "head_params": head_params,
            "head_mb": head_mb,
            "warning": cost_warning(head_params, len(data.y["train"])),
            "val_metrics": best_metrics.get("val", {}),
            "test_metrics": best_metrics.get("test", {}),
        },
        "ensemble": {"trials": members.trial_numbers, "combine": "mean of member probabilities"},
        "n_val": len(data.y["val"]),
        "trials": _trial_rows(study),
        "importance": _importance(study),
        "val_metrics": ensemble_metrics.get("val", {}),
        "test_metrics": test_metrics,
        "probe_test_metrics": probe_test_metrics,
        "probe_val_metrics": probe_metrics.get("val", {}),
        "shortfall": shortfall,
    }
    if shortfall:
        log.warning(shortfall)
    record["explanation"] = _explain(record)
    path = run_dir / layout.SEARCH
    write_json(path, record)
    return SearchOutcome(
        study_name,
        storage,
        spec,
        best.params,
        float(best.value),
        test_metrics,
        record["best"]["test_metrics"],
        record["probe_test_metrics"],
        record,
        path,
        data.on_raw_features(members.heads[0]),
    )


SHORTFALL = 0.05
"""A searched predictor this far below the plain probe on validation (accuracy or mAP) signals a broken search."""


def _shortfall(heads: dict[str, Any], probe: dict[str, Any], metric: str) -> str | None:
    """A warning when the searched heads score far below the probe they started beside, else None."""
    head_value, probe_value = heads.get(metric), probe.get(metric)
    if head_value is None or probe_value is None or head_value >= probe_value - SHORTFALL:
        return None
    return (
        f"the searched heads score far below the plain probe on validation ({metric} {head_value:.4f} vs "
        f"{probe_value:.4f}); the probe stays the better model: check the trials' validation losses in search.json"
    )


def parse_fractions(text: str) -> list[float]:
    """'0.125,0.25,0.5,1' → sorted fractions in (0, 1]."""
    try:
        values = sorted({float(part) for part in text.split(",") if part.strip()})
    except ValueError:
        raise TransferlabError(f"--fractions must be comma-separated numbers, got '{text}'") from None
    if not values or not all(0 < v <= 1 for v in values):
        raise TransferlabError(f"--fractions must lie in (0, 1], got '{text}'")
    return values


def fraction_curve(
    prepared: PreparedData,
    spec_params: dict[str, Any],
    fractions: Sequence[float],
    seed: int = 0,
    *,
    data: HeadData | None = None,
) -> dict[str, Any]:
    """Refit the head of ``spec_params`` (a trial's params) on growing nested stratified subsets of train.

    If validation keeps improving with more data, more data is the cheapest fix (double it before reaching for
    regularization); if train and val metrics stay far apart at the full size, regularize.
    """
    spec, params = decode(spec_params, multilabel=prepared.dataset.multilabel)
    data = data or load_head_data(prepared, spec.needs_maps)
    rows = []
    for fraction in sorted(fractions):
        chosen = stratified_subset(data.y["train"], fraction, seed)
        subset = data.subset_train(chosen)
        trained = train_head(spec, params, subset, seed=seed)
        train_logits = predict_logits(trained.head, subset.inputs(spec)["train"])
        rows.append(
            {
                "fraction": fraction,
                "n_train": len(chosen),
                "train_metric": score(subset.y["train"], train_logits, data.multilabel),
                "val_metric": trained.best_metric,
            }
        )
    return {"metric": data.metric, "rows": rows}


def run_worker(study_name: str, storage: str, device: str | None = None) -> int:
    """Join an existing study: rebuild the data from the feature cache and drain its queue; returns trials run.

    ``device``: this worker's device (default: the one the study's creator asked for, resolved on this machine).
    """
    study, backend = load_search_study(study_name, storage)
    config, cache_dir = worker_config(study)
    if device is not None:
        config = replace(config, device=device)
    prepared = prepare(config, cache_dir=cache_dir, progress=False)
    maps = bool(study.user_attrs.get("maps"))
    data, _ = place_trials(load_head_data(prepared, maps), prepared.device)
    seed = int(study.user_attrs["seed"])
    return run_queued_trials(study, backend, data, seed=seed, maps=maps)
