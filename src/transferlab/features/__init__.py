"""Feature stage: one batched forward pass per image, multi-depth pooled features, cached on disk by content."""

from transferlab.features.cache import FeatureCache, default_cache_dir
from transferlab.features.extract import ExtractionReport, extract_features

__all__ = ["ExtractionReport", "FeatureCache", "default_cache_dir", "extract_features"]
