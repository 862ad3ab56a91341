"""Where a run's peak RSS comes from: ``transferlab run`` in this process, with its resident set sampled every 10 ms
and the peak of each stage printed (tracemalloc does not see torch's allocations; the kernel's count does).

    python bench/memory.py DATA [--image-size 224] [--work /tmp/transferlab-memory] [--batch-size N] [--cache DIR]

Prints one row per stage in the order they ran: RSS on entry, the highest sample while it ran, RSS on exit (MB),
then the process's VmHWM (the kernel's own peak) and the peak of its child processes.
"""

from __future__ import annotations

import argparse
import functools
import importlib
import resource
import shutil
import sys
import threading
import time
from pathlib import Path

PAGE = 4096


def rss_mb() -> float:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * PAGE / 2**20


def hwm_mb() -> float:
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return 0.0


class Sampler:
    def __init__(self) -> None:
        self.peak = 0.0
        self.stop = False
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self.stop:
            self.peak = max(self.peak, rss_mb())
            time.sleep(0.01)


ROWS: list[tuple[str, float, float, float]] = []
SAMPLER: Sampler


def watched(label: str, function):
    @functools.wraps(function)
    def wrapper(*args, **kwargs):
        before = rss_mb()
        outer, SAMPLER.peak = SAMPLER.peak, before
        try:
            return function(*args, **kwargs)
        finally:
            time.sleep(0.02)
            peak = SAMPLER.peak
            ROWS.append((label, before, peak, rss_mb()))
            SAMPLER.peak = max(outer, peak)

    return wrapper


STAGES = {
    "transferlab.prepare": [
        *("load_dataset", "load_backbone", "hash_files", "decide_precision"),
        *("extract_split", "extract_held_out", "extract_features", "make_split"),
    ],
    "transferlab.pipeline": ["prepare", "fit_probe", "_write_probe", "write_report", "advise", "write_predictions"],
    "transferlab.prepare.PreparedData": ["features"],
}


def main() -> None:
    global SAMPLER
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("data")
    parser.add_argument("--image-size", default="224")
    parser.add_argument("--work", type=Path, default=Path("/tmp/transferlab-memory"))
    parser.add_argument("--batch-size", type=int, help="extraction batch (default: the device's)")
    parser.add_argument("--cache", type=Path, help="an existing feature cache to reuse (default: a fresh one)")
    args = parser.parse_args()
    SAMPLER = Sampler()
    start = rss_mb()
    import timm  # noqa: F401
    import torch  # noqa: F401
    import torchvision  # noqa: F401

    imported = rss_mb()
    from transferlab import pipeline
    from transferlab.config import RunConfig

    for module_name, names in STAGES.items():
        if module_name.endswith("PreparedData"):
            owner = importlib.import_module("transferlab.prepare").PreparedData
        else:
            owner = importlib.import_module(module_name)
        for name in names:
            setattr(owner, name, watched(name, getattr(owner, name)))
    shutil.rmtree(args.work, ignore_errors=True)
    config = RunConfig(args.data, image_size=int(args.image_size), batch_size=args.batch_size)
    began = time.perf_counter()
    cache = args.cache or args.work / "cache"
    result = pipeline.run(config, runs_dir=args.work / "runs", cache_dir=cache, progress=False)
    wall = time.perf_counter() - began
    print(f"python start {start:.0f} MB; after import torch+torchvision+timm {imported:.0f} MB")
    print("| stage | RSS in | peak during | RSS out |")
    print("|---|---|---|---|")
    for label, before, peak, after in ROWS:
        print(f"| {label} | {before:.0f} | {peak:.0f} | {after:.0f} |")
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    extraction = result.extraction
    speed = extraction["images_per_second"] or 0.0
    print(f"VmHWM {hwm_mb():.0f} MB; child processes' peak {children:.0f} MB (a fork starts at its parent's)")
    print(f"wall {wall:.0f} s; extraction {result.timings['extraction_seconds']:.0f} s; first pass {speed:.1f} img/s "
          f"at batch {extraction['batch_size']} ({extraction['precision']})")  # fmt: skip


if __name__ == "__main__":
    sys.exit(main())
