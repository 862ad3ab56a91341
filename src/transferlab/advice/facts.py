"""The numbers advice is based on, computed from a run's own files.

Each fact is a plain number, string or boolean; a fact whose evidence is missing (no fine-tuning, no fraction curve,
...) is absent, and rules needing it stay silent instead of guessing.
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from typing import Any

from transferlab.metrics import HEADLINE_KEYS
from transferlab.record.runfiles import RunFiles

Facts = dict[str, Any]


def training_curve(run: RunFiles) -> tuple[str, list[dict[str, Any]], str] | None:
    """(source, per-epoch history, metric name) of the final trained head: the last fine-tuning stage whose weights
    were kept, else the best search trial.

    A stage that never beat its starting point on validation (best epoch 0) handed on its start unchanged, so its
    curve describes weights the model does not have.
    """
    stages = [s for s in (run.finetune or {}).get("stages") or [] if s.get("history") and s.get("best_epoch", 1) > 0]
    if stages:
        name = stages[-1].get("name", len(stages))
        return f"fine-tuning stage '{name}'", stages[-1]["history"], run.finetune.get("metric") or "metric"
    search = run.search or {}
    best = (search.get("best") or {}).get("number")
    for trial in search.get("trials") or []:
        if trial.get("number") == best and trial.get("curve"):
            return f"search trial {best}", trial["curve"], search.get("metric") or "metric"
    return None


def _curve_facts(run: RunFiles) -> Facts:
    found = training_curve(run)
    if found is None:
        return _probe_gap(run)
    source, history, metric = found
    facts: Facts = {"curve_source": source, "metric_name": metric, "epochs": len(history)}
    metric_rows = [row for row in history if row.get("val_metric") is not None]
    if metric_rows:
        best = max(metric_rows, key=lambda row: row["val_metric"])
        facts.update(best_epoch=best["epoch"], val_metric=best["val_metric"])
        if best.get("train_metric") is not None:
            facts.update(train_metric=best["train_metric"], gap=best["train_metric"] - best["val_metric"])
        after = [row for row in history if row["epoch"] > best["epoch"] and row.get("val_loss") is not None]
        if after and best.get("val_loss"):
            facts.update(
                epochs_after_best=len(after),
                val_loss_at_best=best["val_loss"],
                val_loss_last=after[-1]["val_loss"],
                val_loss_rise=after[-1]["val_loss"] / best["val_loss"] - 1,
            )
    if history[0].get("train_loss") is not None:
        facts["first_epoch_loss"] = history[0]["train_loss"]
    return facts


def _probe_gap(run: RunFiles) -> Facts:
    """Without a trained head, the probe's own train-vs-val scores show over- or under-fitting."""
    train, val = run.metrics.get("train") or {}, run.metrics.get("val") or {}
    for key in HEADLINE_KEYS:
        if train.get(key) is not None and val.get(key) is not None:
            return {
                "curve_source": "linear probe",
                "metric_name": key,
                "train_metric": train[key],
                "val_metric": val[key],
                "gap": train[key] - val[key],
            }
    return {}


def _fraction_facts(run: RunFiles) -> Facts:
    rows = sorted((run.fractions or {}).get("rows") or [], key=lambda row: row["n_train"])
    rows = [row for row in rows if row.get("val_metric") is not None and row.get("n_train")]
    if len(rows) < 2 or rows[-1]["n_train"] <= rows[-2]["n_train"]:
        return {}
    previous, last = rows[-2], rows[-1]
    doublings = math.log2(last["n_train"] / previous["n_train"])
    return {
        "fraction_metric": (run.fractions or {}).get("metric", "val metric"),
        "fraction_n_prev": previous["n_train"],
        "fraction_n_last": last["n_train"],
        "fraction_val_prev": previous["val_metric"],
        "fraction_val_last": last["val_metric"],
        "fraction_slope": (last["val_metric"] - previous["val_metric"]) / doublings,
    }


def _class_facts(run: RunFiles) -> Facts:
    counts = {name: count for name, count in (run.record.get("class_counts") or {}).items() if count > 0}
    if not counts:
        return {}
    ordered = sorted(counts.values())
    largest, smallest = max(counts, key=counts.get), min(counts, key=counts.get)
    facts: Facts = {
        "n_classes": len(counts),
        "images_per_class_median": ordered[len(ordered) // 2],
        "largest_class": largest,
        "largest_count": counts[largest],
        "smallest_class": smallest,
        "smallest_count": counts[smallest],
        "imbalance_ratio": counts[largest] / counts[smallest],
    }
    test = run.metrics.get("test") or {}
    if test.get("accuracy") is not None and test.get("balanced_accuracy") is not None:
        facts.update(test_accuracy=test["accuracy"], test_balanced_accuracy=test["balanced_accuracy"])
    return facts


def _learning_rate_facts(run: RunFiles) -> Facts:
    facts: Facts = {}
    n_classes = len(run.classes)
    if n_classes >= 2:
        # Untrained softmax loss is log C; per-label sigmoid BCE starts at log 2.
        facts["chance_loss"] = math.log(2) if run.multilabel else math.log(n_classes)
    restarts = [r for stage in (run.finetune or {}).get("stages") or [] for r in stage.get("restarts") or []]
    if run.finetune:
        facts["restarts"] = len(restarts)
        if restarts:
            facts.update(restart_epoch=restarts[0].get("epoch"), restart_old_lr=restarts[0].get("old_lr"))
    return facts


def _head_facts(run: RunFiles) -> Facts:
    best = (run.search or {}).get("best") or {}
    n_train = (run.record.get("split_counts") or {}).get("train")
    facts: Facts = {}
    if best.get("spec") is not None:
        facts["flatten_head"] = "flatten" in str(best["spec"]).lower()
    head_test, probe_test = (run.search or {}).get("test_metrics") or {}, (run.search or {}).get("probe_test_metrics")
    for key in HEADLINE_KEYS:
        if head_test.get(key) is not None and (probe_test or {}).get(key) is not None:
            facts.update(test_metric_name=key, head_test_metric=head_test[key], probe_test_metric=probe_test[key])
            break
    if best.get("head_params") and n_train:
        facts.update(
            head_params=best["head_params"], n_train=n_train, head_params_per_image=best["head_params"] / n_train
        )
    return facts


def _deployed_facts(run: RunFiles) -> Facts:
    """Fine-tuning vs the probe on validation, as the run decided what to deploy (``deployed.json``)."""
    deployed = run.deployed or {}
    if deployed.get("finetune_val") is None or deployed.get("probe_val") is None:
        return {}
    return {
        "deployed_stage": deployed["stage"],
        "val_metric_name": deployed.get("metric", "metric"),
        "finetune_val_metric": deployed["finetune_val"],
        "probe_val_metric": deployed["probe_val"],
    }


def _duplicate_facts(run: RunFiles) -> Facts:
    if not run.split_rows:
        return {}
    splits_by_hash: dict[str, set[str]] = defaultdict(set)
    for row in run.split_rows:
        splits_by_hash[row["sha256"]].add(row["split"])
    copies = Counter(row["sha256"] for row in run.split_rows)
    reported = sum("duplicate" in line.lower() for line in run.problems)
    return {
        "duplicate_files": sum(count for count in copies.values() if count > 1) + reported,
        "cross_split_duplicates": sum(len(splits) > 1 for splits in splits_by_hash.values()),
    }


def gather_facts(run: RunFiles) -> Facts:
    """All facts about one run, from whatever evidence it has."""
    facts: Facts = {}
    parts = (
        _curve_facts,
        _fraction_facts,
        _class_facts,
        _learning_rate_facts,
        _head_facts,
        _deployed_facts,
        _duplicate_facts,
    )
    for part in parts:
        facts.update(part(run))
    return {key: value for key, value in facts.items() if value is not None}
