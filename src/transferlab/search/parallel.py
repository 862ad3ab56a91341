"""Local worker processes that drain a study's queue next to the calling process.

Each trial trains a small head on one core (see ``train.single_thread``), so N processes finish a search about N×
sooner on N cores. Workers are forked: they inherit the in-memory features and start at once. Spawned workers
re-import torch, sklearn, optuna and the caller's main module first (5.5 s of a 14 s 50-trial search on 2 cores,
against 0.1 s forked). Forking is safe here because a worker opens its own storage connection and trains on one
intra-op thread, so it never enters the OpenMP pool it could not inherit. Trial lines come back through a queue and
the parent logs them, so output stays in one place.
"""

from __future__ import annotations

import logging
import multiprocessing
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch

from transferlab.search.data import HeadData
from transferlab.search.study import load_search_study, run_queued_trials

log = logging.getLogger(__name__)

INTERRUPTED = 130  # the shell's exit status for SIGINT


def _drain(
    number: int, study_name: str, storage: str, data: HeadData, seed: int, maps: bool, timeout: float | None, lines: Any
) -> None:
    torch.set_num_threads(1)
    study, backend = load_search_study(study_name, storage)
    logger = logging.getLogger("transferlab")  # this forked worker's lines go to the parent, prefixed with its number
    logger.handlers = [_ToParent(number, lines)]
    logger.propagate = False
    try:
        run_queued_trials(study, backend, data, seed=seed, maps=maps, timeout=timeout)
    except KeyboardInterrupt:  # Ctrl-C reaches the whole process group; the parent reports it once
        sys.exit(INTERRUPTED)


class _ToParent(logging.Handler):
    """A forked worker's log lines, sent to the parent through the queue so all output comes from one process."""

    def __init__(self, number: int, lines: Any) -> None:
        super().__init__()
        self.number, self.lines = number, lines

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.put(f"[{self.number}] {record.getMessage()}")


def _forward(lines: Any) -> None:
    for text in iter(lines.get, None):
        log.info(text)


@contextmanager
def local_workers(
    count: int,
    study_name: str,
    storage: str,
    data: HeadData,
    *,
    seed: int,
    maps: bool,
    timeout: float | None,
) -> Iterator[None]:
    """Run ``count`` extra workers on the study while the body runs; wait for them (their current trial) on exit."""
    if count <= 0:
        yield
        return
    context = multiprocessing.get_context("fork")
    lines = context.SimpleQueue()
    forwarder = threading.Thread(target=_forward, args=(lines,), daemon=True)
    forwarder.start()
    workers = [
        context.Process(target=_drain, args=(n + 1, study_name, storage, data, seed, maps, timeout, lines))
        for n in range(count)
    ]
    for worker in workers:
        worker.start()
    try:
        yield
    finally:
        for worker in workers:
            worker.join()
        lines.put(None)
        forwarder.join()
        for number, worker in enumerate(workers, start=1):
            if worker.exitcode and worker.exitcode != INTERRUPTED:
                log.warning(
                    f"local worker {number} exited with code {worker.exitcode}; its trial is re-queued once its "
                    "heartbeat is stale"
                )
