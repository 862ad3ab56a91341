"""transferlab: transfer learning on images, measured, fast and written down.

``transferlab.run(DATA)`` extracts multi-depth features of a pretrained backbone once (cached by content), fits a
cross-validated linear probe and writes a reproducible run directory with a report.
"""

from transferlab.api import ImageClassifier
from transferlab.errors import TransferlabError
from transferlab.pipeline import RunConfig, RunResult, run

__version__ = "0.1.0"
__all__ = ["ImageClassifier", "RunConfig", "RunResult", "TransferlabError", "__version__", "run"]
