"""Record stage: the run directory (config, environment, split, metrics, timings) and the HTML report.

The report (``transferlab.record.report``) is imported from its module: it renders advice, and advice reads run
files through this package, so exporting it here would make the two packages import each other.
"""

from transferlab.record.rundir import RunDir, environment

__all__ = ["RunDir", "environment"]
