"""Advice rules as data: when a rule's facts are present and its condition holds, its message (citing the facts)
is shown. Thresholds live here, in one list, so they can be read, tested and tuned one rule at a time.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from transferlab.advice.facts import Facts


@dataclass(frozen=True)
class Rule:
    """One piece of advice: ``message`` is a ``str.format`` template over the facts named in ``needs``."""

    id: str
    needs: tuple[str, ...]
    when: Callable[[Facts], bool]
    message: str
    severity: str = "warning"

    def applies(self, facts: Facts) -> bool:
        return all(key in facts for key in self.needs) and self.when(facts)


RULES: tuple[Rule, ...] = (
    Rule(
        "overfitting",
        ("gap", "train_metric", "val_metric", "curve_source", "metric_name"),
        lambda f: f["gap"] >= 0.10,
        "Overfitting ({curve_source}): train {metric_name} {train_metric:.3f} vs validation {val_metric:.3f} "
        "(gap {gap:.3f}). Regularize more (a smaller C for the probe; dropout, weight decay or augmentation for a "
        "trained head), use a smaller head or freeze more blocks.",
    ),
    Rule(
        "overfitting_trend",
        ("val_loss_rise", "epochs_after_best", "best_epoch", "val_loss_at_best", "val_loss_last"),
        lambda f: f["val_loss_rise"] >= 0.10 and f["epochs_after_best"] >= 2,
        "Validation loss rose from {val_loss_at_best:.3f} at the best epoch {best_epoch} to {val_loss_last:.3f} "
        "{epochs_after_best} epochs later (+{val_loss_rise:.0%}): training past the best epoch only memorizes; "
        "keep early stopping on.",
    ),
    Rule(
        "underfitting",
        ("gap", "train_metric", "val_metric", "curve_source", "metric_name"),
        # |gap|, not gap: a train metric far *below* validation was measured under augmentation and dropout
        # (train mode), which says nothing about capacity
        lambda f: abs(f["gap"]) < 0.03 and f["train_metric"] < 0.90,
        "Underfitting ({curve_source}): train {metric_name} {train_metric:.3f} is barely above validation "
        "{val_metric:.3f} (gap {gap:.3f}) and both are low. Give the model more capacity: a larger head, a deeper "
        "cut point, unfreeze more blocks or train longer.",
    ),
    Rule(
        "more_data_helps",
        ("fraction_slope", "fraction_n_prev", "fraction_n_last", "fraction_val_prev", "fraction_val_last"),
        lambda f: f["fraction_slope"] >= 0.02,
        "More data should help: validation {fraction_metric} went from {fraction_val_prev:.3f} with "
        "{fraction_n_prev} to {fraction_val_last:.3f} with {fraction_n_last} training images "
        "(+{fraction_slope:.3f} per doubling) and is still rising.",
        severity="info",
    ),
    Rule(
        "data_saturated",
        ("fraction_slope", "fraction_n_prev", "fraction_n_last", "fraction_val_prev", "fraction_val_last"),
        lambda f: f["fraction_slope"] < 0.005,
        "The learning curve is flat: validation {fraction_metric} {fraction_val_prev:.3f} with {fraction_n_prev} "
        "vs {fraction_val_last:.3f} with {fraction_n_last} training images ({fraction_slope:+.3f} per doubling). "
        "More of the same data will not help much; try a stronger backbone, a different cut point or fine-tuning.",
        severity="info",
    ),
    Rule(
        "small_data_regime",
        ("images_per_class_median", "n_classes"),
        # only without the run's own fine-tuning evidence: a measurement beats a rule of thumb
        lambda f: f["images_per_class_median"] < 1000 and "finetune_val_metric" not in f,
        "Small data: {images_per_class_median} images per class (median over {n_classes} classes), under 1,000. "
        "A linear probe or SVM on bottleneck features is the reliable choice; fine-tuning the backbone tends to "
        "overfit here.",
        severity="info",
    ),
    Rule(
        "fine_tuning_paid",
        ("deployed_stage", "finetune_val_metric", "probe_val_metric", "val_metric_name"),
        lambda f: f["deployed_stage"] == "fine-tuning",
        "Fine-tuning paid off here: validation {val_metric_name} {finetune_val_metric:.3f} vs the probe's "
        "{probe_val_metric:.3f}, so the fine-tuned model is the one deployed.",
        severity="info",
    ),
    Rule(
        "fine_tuning_did_not_pay",
        ("deployed_stage", "finetune_val_metric", "probe_val_metric", "val_metric_name"),
        lambda f: f["deployed_stage"] == "probe",
        "Fine-tuning did not beat the linear probe on validation ({val_metric_name} {finetune_val_metric:.3f} vs "
        "{probe_val_metric:.3f}), so the probe is deployed. More images per class, more epochs or a shallower "
        "unfreeze may change that; the features alone are doing the work.",
    ),
    Rule(
        "fine_tune_regime",
        ("images_per_class_median", "n_classes"),
        lambda f: 1000 <= f["images_per_class_median"] <= 10000,
        "Enough data to fine-tune: {images_per_class_median} images per class (median over {n_classes} classes). "
        "Unfreeze the top blocks with augmentation and a lower backbone learning rate.",
        severity="info",
    ),
    Rule(
        "lr_too_high_loss",
        ("first_epoch_loss", "chance_loss"),
        lambda f: f["first_epoch_loss"] > 1.5 * f["chance_loss"],
        "Learning rate probably too high: first-epoch training loss {first_epoch_loss:.3f} is above 1.5× the loss "
        "of an untrained classifier (log C = {chance_loss:.3f}). Lower the learning rate 3-10×.",
    ),
    Rule(
        "lr_too_high_restarts",
        ("restarts", "restart_epoch", "restart_old_lr"),
        lambda f: f["restarts"] >= 1,
        "Learning rate was too high: training diverged and restarted {restarts} time(s), first at epoch "
        "{restart_epoch} with lr {restart_old_lr:.2g}. Start the next run at a lower learning rate.",
    ),
    Rule(
        "head_too_large",
        ("head_params", "n_train", "head_params_per_image"),
        lambda f: f["head_params_per_image"] > 100,
        "The head is large for the data: {head_params:,} trainable parameters for {n_train} training images "
        "({head_params_per_image:.0f} per image). Prefer a smaller head or a linear probe.",
    ),
    Rule(
        "probe_beats_head",
        ("head_test_metric", "probe_test_metric", "test_metric_name"),
        lambda f: f["probe_test_metric"] - f["head_test_metric"] >= 0.02,
        "The plain linear probe beats the searched head on the test split: {test_metric_name} "
        "{probe_test_metric:.3f} vs {head_test_metric:.3f}. The extra head capacity does not pay off at this data "
        "size; keep the probe, or search with more trials and stronger regularization.",
    ),
    Rule(
        "flatten_head",
        ("flatten_head",),
        lambda f: f["flatten_head"],
        "The best head flattens the feature map, so its size grows with the spatial resolution and it overfits "
        "easily; global average pooling is usually as accurate with far fewer parameters.",
    ),
    Rule(
        "class_imbalance",
        ("imbalance_ratio", "largest_class", "largest_count", "smallest_class", "smallest_count"),
        lambda f: f["imbalance_ratio"] >= 3,
        "Classes are imbalanced: '{largest_class}' has {largest_count} images, '{smallest_class}' only "
        "{smallest_count} ({imbalance_ratio:.1f}×). Judge by balanced accuracy or macro-F1, and use class weights "
        "or balanced sampling.",
    ),
    Rule(
        "leakage",
        ("cross_split_duplicates",),
        lambda f: f["cross_split_duplicates"] > 0,
        "Leakage: {cross_split_duplicates} identical file(s) appear in more than one split, so test scores are "
        "optimistic. Remove the duplicates.",
    ),
    Rule(
        "duplicates",
        ("duplicate_files", "cross_split_duplicates"),
        lambda f: f["duplicate_files"] > 0 and f["cross_split_duplicates"] == 0,
        "{duplicate_files} files are byte-identical copies of others; they were kept in one split each (no "
        "leakage), but they over-weight those images in training.",
        severity="info",
    ),
)
