"""The run directory: everything needed to understand and reproduce a run, written atomically as it happens."""

from __future__ import annotations

import platform
import sys
import time
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

from transferlab.fileio import atomic_write_text, write_csv, write_json

_PACKAGES = ("transferlab", "torch", "torchvision", "timm", "numpy", "scikit-learn", "pillow", "optuna")


def environment() -> dict[str, Any]:
    """Python, platform and package versions, so a result can be traced to the software that produced it."""
    versions = {}
    for package in _PACKAGES:
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = None
    import torch

    return {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "packages": versions,
        "torch_threads": torch.get_num_threads(),
        "command": sys.argv,
    }


def process_facts() -> dict[str, Any]:
    """Facts about this process for ``process.json``: the exact command line and the peak resident memory so far.

    Call it last (after training), since the peak only grows; ``ru_maxrss`` is KiB on Linux and bytes on macOS.
    """
    import resource

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    peak_bytes = peak if sys.platform == "darwin" else peak * 1024
    return {
        "command": list(sys.argv),
        "cwd": str(Path.cwd()),
        "peak_memory_mb": round(peak_bytes / 1e6, 1),
        "finished": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


def default_run_name(data: Path) -> str:
    return f"{data.stem or 'data'}-{datetime.now(timezone.utc).strftime('%Y%m%d-%H%M%S')}"


class RunDir:
    """``runs/<name>/`` with helpers that write JSON, CSV and text files atomically."""

    def __init__(self, runs_root: Path, name: str) -> None:
        self.path = Path(runs_root) / name
        self.path.mkdir(parents=True, exist_ok=True)
        self.started = time.time()

    def write_json(self, filename: str, payload: Any) -> Path:
        write_json(self.path / filename, payload)
        return self.path / filename

    def write_csv(self, filename: str, header: list[str], rows: list[list[Any]]) -> Path:
        write_csv(self.path / filename, header, rows)
        return self.path / filename

    def write_text(self, filename: str, text: str) -> Path:
        atomic_write_text(self.path / filename, text)
        return self.path / filename
