"""transferlab: transfer learning on images, measured, fast and written down.

``transferlab.run(DATA)`` extracts multi-depth features of a pretrained backbone once (cached by content), fits a
cross-validated linear probe and writes a reproducible run directory with a report.

The public names load on first use (PEP 562): importing a light submodule, e.g. in a search worker process, must not
pay for timm and torchvision.
"""

from __future__ import annotations

import importlib
import logging
from typing import TYPE_CHECKING, Any

from transferlab.errors import TransferlabError

if TYPE_CHECKING:
    from transferlab.api import ImageClassifier
    from transferlab.config import RunConfig
    from transferlab.pipeline import RunResult, run

# A library logs and stays quiet: the CLI (or the application) decides whether messages are shown.
logging.getLogger("transferlab").addHandler(logging.NullHandler())

__version__ = "0.1.0"
__all__ = ["ImageClassifier", "RunConfig", "RunResult", "TransferlabError", "__version__", "run"]
_LAZY = {
    "ImageClassifier": "transferlab.api",
    "RunConfig": "transferlab.config",
    "RunResult": "transferlab.pipeline",
    "run": "transferlab.pipeline",
}


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module 'transferlab' has no attribute '{name}'")
    return getattr(importlib.import_module(_LAZY[name]), name)
