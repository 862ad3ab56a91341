"""Head search: Optuna over head specs and optimizer settings on cached features, shared by any number of workers."""

from transferlab.search.runner import SearchOutcome, fraction_curve, parse_fractions, run_worker, search_heads

__all__ = ["SearchOutcome", "fraction_curve", "parse_fractions", "run_worker", "search_heads"]
