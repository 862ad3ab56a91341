"""Probe stage: linear classifiers on cached features, regularization chosen by cross-validation."""

from transferlab.probe.linear import ProbeResult, ProbeSearch, finish_probe, fit_probe, search_probe

__all__ = ["ProbeResult", "ProbeSearch", "finish_probe", "fit_probe", "search_probe"]
