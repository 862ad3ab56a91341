"""Where head-search trials train: the run's device, or the CPU when a measurement says tiny heads run faster there.

A linear head on a few thousand 1,280-wide vectors is a handful of small matrix products per epoch; on a GPU each
costs a kernel launch and a synchronisation, so for small data the CPU can win. That is decided by timing the same
short trial on both at the start of the search, not guessed, and the timings are recorded in ``search.json``.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import torch

from transferlab import devices
from transferlab.heads import HeadSpec
from transferlab.search.data import HeadData
from transferlab.search.train import TrainParams, train_head

log = logging.getLogger(__name__)

PROBE_TRIAL = TrainParams(epochs=3, patience=3)


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


def _seconds(data: HeadData) -> float:
    """Wall time of one short default-head trial on ``data``'s device, after a warm-up run (kernels, allocator)."""
    spec = HeadSpec(output="sigmoid" if data.multilabel else "softmax")
    train_head(spec, PROBE_TRIAL, data)
    _synchronize(data.device)
    start = time.perf_counter()
    train_head(spec, PROBE_TRIAL, data)
    _synchronize(data.device)
    return time.perf_counter() - start


def place_trials(data: HeadData, device: torch.device) -> tuple[HeadData, dict[str, Any]]:
    """``data`` on the device its trials should train on, and the record of why.

    On the CPU nothing is measured. Otherwise a short trial is timed on the CPU and on ``device`` and the faster
    wins; the features are then copied there once.
    """
    if device.type == "cpu":
        return data, {"device": "cpu", "reason": "the run's device"}
    moved = data.to(device)
    timings = {"cpu": _seconds(data), str(device): _seconds(moved)}
    chosen = device if timings[str(device)] < timings["cpu"] else devices.CPU
    reason = f"a 3-epoch trial took {timings[str(device)]:.3f} s on {device}, {timings['cpu']:.3f} s on the CPU"
    log.info(f"head-search trials run on {chosen}: {reason}")
    return (moved if chosen == device else data), {"device": str(chosen), "reason": reason, "seconds": timings}
