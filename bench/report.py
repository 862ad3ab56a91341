"""How long report.html takes and how big it gets: probe-only files vs every stage's files, same run, one process.

Usage: python bench/report.py RUN_DIR [--repeats 3]

The run directory is copied twice into a temporary folder: once as is, once without the later stages' files
(ranking, search, fractions, fine-tuning, augmentation preview), and ``write_report`` is timed on both.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import time
from pathlib import Path

from transferlab.report import write_report

STAGE_FILES = ("ranking.json", "search.json", "fractions.json", "finetune.json", "augmentation_preview.png")


def _time(run_path: Path, repeats: int) -> tuple[float, int, int]:
    seconds = []
    for _ in range(repeats):
        started = time.perf_counter()
        report = write_report(run_path)
        seconds.append(time.perf_counter() - started)
    html = report.read_text()
    return statistics.median(seconds), len(html.encode()), html.count("<img ")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    write_report(args.run)  # warm-up: imports matplotlib and jinja2 once
    with tempfile.TemporaryDirectory() as scratch:
        full = Path(shutil.copytree(args.run, Path(scratch) / "full"))
        probe = Path(shutil.copytree(args.run, Path(scratch) / "probe"))
        for name in STAGE_FILES:
            (probe / name).unlink(missing_ok=True)
        results = {label: _time(path, args.repeats) for label, path in (("probe only", probe), ("all stages", full))}
    print(f"{'files':<12} {'seconds':>8} {'KB':>8} {'pictures':>8}")
    for label, (seconds, size, pictures) in results.items():
        print(f"{label:<12} {seconds:>8.2f} {size / 1000:>8.0f} {pictures:>8}")
    ratio = results["all stages"][0] / results["probe only"][0]
    print(f"all stages / probe only: {ratio:.1f}x time")


if __name__ == "__main__":
    main()
