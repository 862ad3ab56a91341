"""Rank stage: score (backbone, cut point) pairs without fine-tuning (LogME, k-NN, CV probe) and choose one.

The entry points live in :mod:`transferlab.rank.ranking` (``rank``, ``write_ranking``); they are not re-exported
here so that ``transferlab.pipeline`` can import this stage without an import cycle.
"""
