"""From a thousand images towards a million: ``transferlab run`` at growing image counts, each in its own process
with a fresh feature cache; wall seconds per stage, images per second of extraction, the probe's share of the
extraction time, and the process's peak RSS.

The images are real: Fashion-MNIST (the Debian package the quality suite uses, 70,000 images, 28 px, upscaled by
the run to ``--image-size``). Beyond 70,000 each further image is a mirrored and shifted copy of one of them, so
its content (and its cache key) is new. A lower resolution keeps the 100k row affordable on 2 cores; the table
says which ran.

    python bench/scale.py [--sizes 1000,10000] [--image-size 224] [--work /tmp/transferlab-scale]
    python bench/scale.py --sizes 100000 --image-size 96
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
import make_quality_suite as suite  # noqa: E402

NAMES = ["tshirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "boot"]
PEAK = "import resource, subprocess, sys; subprocess.run(sys.argv[1:], check=True); " \
       "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)"  # fmt: skip


def image_folder(n: int, work: Path) -> Path:
    """A class-per-folder tree of ``n`` distinct Fashion-MNIST images (built once per size)."""
    folder = work / f"fashion-{n}"
    if (folder / ".complete").exists():
        return folder
    shutil.rmtree(folder, ignore_errors=True)
    arrays = suite.fashion_mnist_arrays(suite.DEFAULT_CACHE)
    images = np.concatenate([arrays["train_images"], arrays["test_images"]])
    labels = np.concatenate([arrays["train_labels"], arrays["test_labels"]])
    for name in NAMES:
        (folder / name).mkdir(parents=True)
    for i in range(n):
        source, variant = i % len(images), i // len(images)
        pixels = images[source]
        if variant:
            pixels = np.roll(pixels[:, ::-1] if variant % 2 else pixels, variant, axis=1)
        Image.fromarray(np.ascontiguousarray(pixels)).save(folder / NAMES[labels[source]] / f"{i:06d}.png")
    (folder / ".complete").touch()
    return folder


def measured_run(data: Path, work: Path, image_size: int) -> dict:
    cache, runs = work / "cache", work / "runs"
    shutil.rmtree(cache, ignore_errors=True)
    shutil.rmtree(runs, ignore_errors=True)
    command = ["transferlab", "run", str(data), "--image-size", str(image_size), "--cache-dir", str(cache),
               "--runs-dir", str(runs), "--no-progress"]  # fmt: skip
    start = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", PEAK, *command], capture_output=True, text=True, check=True)
    wall = time.perf_counter() - start
    run_dir = next(p for p in runs.iterdir() if p.is_dir())
    timings = json.loads((run_dir / "timings.json").read_text())
    return {"wall": wall, "peak_mb": int(out.stdout.strip().splitlines()[-1]) / 1024, "timings": timings}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="1000,10000")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--work", type=Path, default=Path("/tmp/transferlab-scale"))
    args = parser.parse_args()
    print("| images | px | wall s | extract s | img/s | probe fit s | probe ÷ extract | rest s | ms/img | peak MB |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for n in (int(size) for size in args.sizes.split(",")):
        result = measured_run(image_folder(n, args.work), args.work, args.image_size)
        t = result["timings"]
        extract, probe = t["extraction_seconds"], t["probe_fit_seconds"]
        rest = t["total_seconds"] - extract - probe  # indexing, hashing, the other probe candidate, records, report
        print(f"| {n:,} | {args.image_size} | {result['wall']:.0f} | {extract:.0f} | {n / extract:.0f} | "
              f"{probe:.0f} | {probe / extract:.2f} | {rest:.0f} | {1000 * result['wall'] / n:.1f} | "
              f"{result['peak_mb']:.0f} |", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
