"""The run directory: its file names, and typed writers and readers for them (config, split, metrics, timings...).

Everything that writes or reads a run directory goes through this package; it imports no pipeline stage, so every
stage, the advice and the report can use it.
"""

from transferlab.record.rundir import RunDir, environment

__all__ = ["RunDir", "environment"]
