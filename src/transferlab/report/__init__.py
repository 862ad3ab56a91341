"""Report stage: a self-contained ``report.html`` (and its pictures) rendered from a run directory's files.

It sits above :mod:`transferlab.advice`, whose findings it shows; both read the run directory through
:mod:`transferlab.record`, which knows nothing of either.
"""

from transferlab.report.html import render_report, report_context, write_report

__all__ = ["render_report", "report_context", "write_report"]
