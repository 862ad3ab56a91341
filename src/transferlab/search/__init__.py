"""Head search: Optuna over head specs and optimizer settings on cached features, shared by any number of workers.

Names load on first use, so a worker process importing ``transferlab.search.parallel`` does not import the whole
pipeline (timm, torchvision) before it can start trials.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from transferlab.search.runner import SearchOutcome, fraction_curve, parse_fractions, run_worker, search_heads

__all__ = ["SearchOutcome", "fraction_curve", "parse_fractions", "run_worker", "search_heads"]


def __getattr__(name: str) -> Any:
    if name not in __all__:
        raise AttributeError(f"module 'transferlab.search' has no attribute '{name}'")
    return getattr(importlib.import_module("transferlab.search.runner"), name)
