"""Probe stage: linear classifiers on cached features, regularization chosen by cross-validation."""

from transferlab.probe.linear import ProbeResult, fit_probe
from transferlab.probe.metrics import classification_metrics, tune_thresholds

__all__ = ["ProbeResult", "classification_metrics", "fit_probe", "tune_thresholds"]
