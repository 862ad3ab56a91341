"""Probe stage: linear classifiers on cached features, regularization chosen by cross-validation."""

from transferlab.probe.linear import ProbeResult, fit_probe

__all__ = ["ProbeResult", "fit_probe"]
