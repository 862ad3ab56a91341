"""Advice: facts computed from run files, and every rule tested on its own (fires on evidence, silent without)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from runfactory import make_run

from transferlab.advice import RULES, advice_for, advise
from transferlab.advice.facts import gather_facts
from transferlab.record.runfiles import load_run

# rule id → (facts that must trigger it, facts that must not)
CASES = {
    "overfitting": (
        {"gap": 0.25, "train_metric": 0.99, "val_metric": 0.74, "curve_source": "probe", "metric_name": "accuracy"},
        {"gap": 0.05, "train_metric": 0.95, "val_metric": 0.90, "curve_source": "probe", "metric_name": "accuracy"},
    ),
    "overfitting_trend": (
        {"val_loss_rise": 0.4, "epochs_after_best": 3, "best_epoch": 2, "val_loss_at_best": 0.5, "val_loss_last": 0.7},
        {"val_loss_rise": 0.4, "epochs_after_best": 1, "best_epoch": 2, "val_loss_at_best": 0.5, "val_loss_last": 0.7},
    ),
    "underfitting": (
        {"gap": 0.01, "train_metric": 0.61, "val_metric": 0.60, "curve_source": "probe", "metric_name": "accuracy"},
        {"gap": 0.01, "train_metric": 0.96, "val_metric": 0.95, "curve_source": "probe", "metric_name": "accuracy"},
    ),
    "more_data_helps": (
        {
            "fraction_slope": 0.06,
            "fraction_n_prev": 200,
            "fraction_n_last": 400,
            "fraction_val_prev": 0.7,
            "fraction_val_last": 0.76,
            "fraction_metric": "accuracy",
        },
        {
            "fraction_slope": 0.001,
            "fraction_n_prev": 200,
            "fraction_n_last": 400,
            "fraction_val_prev": 0.7,
            "fraction_val_last": 0.701,
            "fraction_metric": "accuracy",
        },
    ),
    "data_saturated": (
        {
            "fraction_slope": 0.001,
            "fraction_n_prev": 200,
            "fraction_n_last": 400,
            "fraction_val_prev": 0.7,
            "fraction_val_last": 0.701,
            "fraction_metric": "accuracy",
        },
        {
            "fraction_slope": 0.06,
            "fraction_n_prev": 200,
            "fraction_n_last": 400,
            "fraction_val_prev": 0.7,
            "fraction_val_last": 0.76,
            "fraction_metric": "accuracy",
        },
    ),
    "small_data_regime": (
        {"images_per_class_median": 80, "n_classes": 10},
        # the run's own fine-tuning evidence replaces the rule of thumb
        {"images_per_class_median": 80, "n_classes": 10, "finetune_val_metric": 0.83},
    ),
    "fine_tuning_paid": (
        {
            "deployed_stage": "fine-tuning",
            "finetune_val_metric": 0.83,
            "probe_val_metric": 0.78,
            "val_metric_name": "a",
        },
        {"deployed_stage": "probe", "finetune_val_metric": 0.75, "probe_val_metric": 0.78, "val_metric_name": "a"},
    ),
    "fine_tuning_did_not_pay": (
        {"deployed_stage": "probe", "finetune_val_metric": 0.75, "probe_val_metric": 0.78, "val_metric_name": "a"},
        {
            "deployed_stage": "fine-tuning",
            "finetune_val_metric": 0.83,
            "probe_val_metric": 0.78,
            "val_metric_name": "a",
        },
    ),
    "fine_tune_regime": (
        {"images_per_class_median": 3000, "n_classes": 10},
        {"images_per_class_median": 80, "n_classes": 10},
    ),
    "lr_too_high_loss": (
        {"first_epoch_loss": 5.0, "chance_loss": math.log(10)},
        {"first_epoch_loss": 2.0, "chance_loss": math.log(10)},
    ),
    "lr_too_high_restarts": (
        {"restarts": 2, "restart_epoch": 3, "restart_old_lr": 0.01},
        {"restarts": 0, "restart_epoch": 3, "restart_old_lr": 0.01},
    ),
    "head_too_large": (
        {"head_params": 500_000, "n_train": 1000, "head_params_per_image": 500.0},
        {"head_params": 12_000, "n_train": 1000, "head_params_per_image": 12.0},
    ),
    "probe_beats_head": (
        {"head_test_metric": 0.74, "probe_test_metric": 0.79, "test_metric_name": "accuracy"},
        {"head_test_metric": 0.83, "probe_test_metric": 0.80, "test_metric_name": "accuracy"},
    ),
    "flatten_head": ({"flatten_head": True}, {"flatten_head": False}),
    "class_imbalance": (
        {
            "imbalance_ratio": 10.0,
            "largest_class": "a",
            "largest_count": 500,
            "smallest_class": "b",
            "smallest_count": 50,
        },
        {
            "imbalance_ratio": 1.2,
            "largest_class": "a",
            "largest_count": 60,
            "smallest_class": "b",
            "smallest_count": 50,
        },
    ),
    "leakage": ({"cross_split_duplicates": 3}, {"cross_split_duplicates": 0}),
    "duplicates": (
        {"duplicate_files": 4, "cross_split_duplicates": 0},
        {"duplicate_files": 0, "cross_split_duplicates": 0},
    ),
}


def test_every_rule_has_a_case() -> None:
    assert {rule.id for rule in RULES} == set(CASES)
    assert len({rule.id for rule in RULES}) == len(RULES)


@pytest.mark.parametrize("rule", RULES, ids=lambda rule: rule.id)
def test_rule_fires_on_its_evidence_and_cites_it(rule) -> None:
    fires, silent = CASES[rule.id]
    assert rule.applies(fires)
    assert not rule.applies(silent)
    message = rule.message.format(**fires)
    cited = [value for key, value in fires.items() if isinstance(value, (int, float)) and not isinstance(value, bool)]
    assert not cited or any(f"{value:g}"[:4] in message.replace(",", "") for value in cited), message


def test_underfitting_is_silent_when_train_was_measured_under_augmentation() -> None:
    rule = next(rule for rule in RULES if rule.id == "underfitting")
    facts = {"train_metric": 0.70, "val_metric": 0.825, "curve_source": "fine-tuning", "metric_name": "accuracy"}
    assert not rule.applies({**facts, "gap": -0.125})


@pytest.mark.parametrize("rule", RULES, ids=lambda rule: rule.id)
def test_rule_is_silent_without_its_evidence(rule) -> None:
    assert not rule.applies({})


def test_facts_from_a_complete_run(tmp_path: Path) -> None:
    run = load_run(make_run(tmp_path, class_counts={"cat": 300, "dog": 60, "<script>alert(1)</script>": 40}))
    facts = gather_facts(run)
    # The last fine-tuning stage is the final model's curve: best val metric 0.70 first reached at epoch 3.
    assert facts["curve_source"] == "fine-tuning stage 'top blocks'"
    assert facts["best_epoch"] == 3 and facts["gap"] == pytest.approx(0.9 - 0.7)
    assert facts["epochs_after_best"] == 4 and facts["val_loss_rise"] > 1
    assert facts["fraction_slope"] == pytest.approx(0.125)  # 0.625 → 0.75 from 42 to 84 images
    assert facts["imbalance_ratio"] == pytest.approx(7.5) and facts["smallest_count"] == 40
    assert facts["restarts"] == 1 and facts["restart_epoch"] == 2
    assert facts["head_params_per_image"] == pytest.approx(52000 / 84)
    assert facts["flatten_head"] is True
    assert (facts["head_test_metric"], facts["probe_test_metric"]) == (0.83, 0.8)  # search.json test vs probe
    assert facts["first_epoch_loss"] == 2.0 and facts["chance_loss"] == pytest.approx(math.log(3))
    assert facts["cross_split_duplicates"] == 0 and facts["duplicate_files"] == 0


def test_probe_only_run_uses_probe_gap(tmp_path: Path) -> None:
    facts = gather_facts(load_run(make_run(tmp_path, stages=False)))
    assert facts["curve_source"] == "linear probe"
    assert facts["gap"] == pytest.approx(0.97 - 0.78)
    assert "restarts" not in facts and "fraction_slope" not in facts and "flatten_head" not in facts


def test_duplicates_across_splits_are_leakage(tmp_path: Path) -> None:
    run_path = make_run(tmp_path, stages=False)
    split_csv = run_path / "split.csv"
    lines = split_csv.read_text().splitlines()
    lines.append(lines[1].rsplit(",", 1)[0].replace("img_000", "copy_of_000") + ",test")  # hash0 now in train+test
    split_csv.write_text("\n".join(lines) + "\n")
    advice = {item.id: item for item in advice_for(load_run(run_path))}
    assert "leakage" in advice and "duplicates" not in advice
    assert advice["leakage"].facts == {"cross_split_duplicates": 1}


def test_advise_writes_advice_json(tmp_path: Path) -> None:
    run_path = make_run(tmp_path)
    advice = advise(run_path)
    saved = json.loads((run_path / "advice.json").read_text())
    assert [item["id"] for item in saved] == [item.id for item in advice]
    assert {"overfitting", "small_data_regime", "lr_too_high_restarts", "flatten_head"} <= {a.id for a in advice}
    overfitting = next(item for item in saved if item["id"] == "overfitting")
    assert "0.900" in overfitting["message"] and overfitting["facts"]["gap"] == pytest.approx(0.2)
