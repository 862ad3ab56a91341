"""Feature stage: one batched forward pass per image, multi-depth pooled features, cached on disk by content."""

from transferlab.features.cache import FeatureCache, default_cache_dir
from transferlab.features.extract import (
    ExtractionReport,
    Precision,
    decide_precision,
    extract_features,
    feature_cache,
)

__all__ = [
    "ExtractionReport",
    "FeatureCache",
    "Precision",
    "decide_precision",
    "default_cache_dir",
    "extract_features",
    "feature_cache",
]
