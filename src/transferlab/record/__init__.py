"""Record stage: the run directory (config, environment, split, metrics, timings) and the HTML report."""

from transferlab.record.report import write_report
from transferlab.record.rundir import RunDir, environment

__all__ = ["RunDir", "environment", "write_report"]
