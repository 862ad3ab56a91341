"""Resource limits, for real: memory stays flat as the image count grows (features stream to disk in shards), and a
cache write that hits a full disk ends with a clear error and leaves the cache as it was.

Disk-full is produced by the kernel, not a mock: the child process runs under ``RLIMIT_FSIZE``, so any write past the
limit fails with EFBIG, exactly like a full disk fails with ENOSPC.
"""

from __future__ import annotations

import json
import os
import re
import resource
import signal
import struct
import subprocess
import sys
import textwrap
import zlib
from pathlib import Path

import numpy as np
from conftest import make_class_folder
from corpus import tiny_backbone_args, transferlab_cli

from transferlab.cli import main
from transferlab.features.cache import HASHES

MANY = 20_000
FEATURE_BYTES_PER_IMAGE = (16 + 24 + 32 + 48 + 64 + 256) * 4  # test_efficientnet: 5 stage ends + pooled head

# Extract a small folder first (every one-off allocation: model, oneDNN kernels, bf16 check), then MANY images;
# the growth of the peak RSS between the two is what the MANY images cost.
_MEASURE = textwrap.dedent(
    """
    import json, resource, sys
    from pathlib import Path
    from transferlab.backbones import load_backbone
    from transferlab.features import Precision, extract_features, feature_cache
    from transferlab.features.cache import content_hash

    weights, small, large, cache = sys.argv[1:5]
    backbone = load_backbone("test_efficientnet", weights, image_size=8)
    FP32 = Precision("fp32")

    def extract(folder, name):
        paths = sorted(Path(folder).rglob("*.png"))
        digests = [content_hash(p) for p in paths]
        store = feature_cache(backbone, Path(cache) / name, FP32)
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        report = extract_features(
            backbone, paths, digests, store, precision=FP32, batch_size=128, workers=0, progress=False
        )
        return before, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, report.computed

    _, warm, small_n = extract(small, "small")
    before, after, large_n = extract(large, "large")
    print(json.dumps({"warm_kb": warm, "before_kb": before, "after_kb": after, "n": [small_n, large_n]}))
    """
)


def _tiny_pngs(root: Path, count: int) -> Path:
    """``count`` distinct 8×8 RGB PNGs in two class folders, encoded by hand (PIL's per-file overhead dominates).

    Each image's first pixel row carries its index, so no two files share content (none is deduplicated).
    """

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    header = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 8, 8, 8, 2, 0, 0, 0))
    end = chunk(b"IEND", b"")
    pixels = np.random.default_rng(count).integers(0, 255, (8, 8, 3), dtype=np.uint8)
    for folder in ("a", "b"):
        (root / folder).mkdir(parents=True, exist_ok=True)
    for index in range(count):
        pixels[0, :3] = np.frombuffer(struct.pack(">I", index)[1:] * 3, dtype=np.uint8).reshape(3, 3)
        rows = b"".join(b"\x00" + row.tobytes() for row in pixels)
        png = header + chunk(b"IDAT", zlib.compress(rows, 1)) + end
        (root / ("a" if index % 2 else "b") / f"{index:05d}.png").write_bytes(png)
    return root


def test_peak_memory_does_not_grow_with_20k_images(tmp_path: Path, tiny_weights: Path) -> None:
    small, large = _tiny_pngs(tmp_path / "small", 500), _tiny_pngs(tmp_path / "large", MANY)
    child = subprocess.run(
        [sys.executable, "-c", _MEASURE, str(tiny_weights), str(small), str(large), str(tmp_path / "cache")],
        env={**os.environ, "OMP_NUM_THREADS": "1"},  # tiny kernels: a second thread only adds barrier waits
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert child.returncode == 0, child.stderr
    measured = json.loads(child.stdout.strip().splitlines()[-1])
    assert measured["n"] == [500, MANY]
    growth_mb = (measured["after_kb"] - measured["before_kb"]) / 1024
    held_whole_mb = MANY * FEATURE_BYTES_PER_IMAGE / 2**20  # what keeping every feature in memory would cost
    print(f"peak RSS growth for {MANY} images: {growth_mb:.1f} MB (features held whole: {held_whole_mb:.1f} MB)")
    assert growth_mb < held_whole_mb / 2


def _limit_file_size(limit: int):
    def apply() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # fail the write with EFBIG instead of killing the process
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return apply


def _shard_contents(cache: Path) -> dict[str, bytes]:
    return {path.name: path.read_bytes() for path in sorted(cache.glob("features/*/*")) if path.is_file()}


def test_disk_full_during_cache_write_keeps_the_previous_cache(tmp_path: Path, tiny_weights: Path, capsys) -> None:
    cache, runs = tmp_path / "cache", tmp_path / "runs"
    data = make_class_folder(tmp_path / "data", per_class=8)
    assert main(["run", str(data), *tiny_backbone_args(tiny_weights, cache, runs, "first")]) == 0
    capsys.readouterr()
    previous = _shard_contents(cache)
    make_class_folder(tmp_path / "more", per_class=8, seed=1)
    for folder in (tmp_path / "more").iterdir():
        for image in folder.iterdir():
            image.rename(data / folder.name / f"more_{image.name}")

    full = transferlab_cli(
        "run", data, *tiny_backbone_args(tiny_weights, cache, runs, "full"), preexec_fn=_limit_file_size(16_384)
    )
    assert full.returncode == 2, full.stderr
    assert full.stderr.startswith("error: cannot write the feature cache") and "File too large" in full.stderr
    assert "Traceback" not in full.stderr
    assert _shard_contents(cache) == previous  # nothing half-written, nothing lost

    again = main(["run", str(data), *tiny_backbone_args(tiny_weights, cache, runs, "again")])
    assert again == 0
    # the first run's 24 images come from the cache (those that changed split get computed at their new precision)
    computed, cached = map(
        int, re.search(r"features: (\d+) computed, (\d+) from cache", capsys.readouterr().out).groups()
    )
    assert computed + cached == 48 and cached >= 12, (computed, cached)
    with np.load(next(cache.glob("features/*/shard-*.npz"))) as shard:
        assert HASHES in shard.files


def test_disk_full_while_writing_run_files_is_a_clear_error(tmp_path: Path, tiny_weights: Path) -> None:
    data = make_class_folder(tmp_path / "data", per_class=6)
    cache, runs = tmp_path / "cache", tmp_path / "runs"
    assert main(["run", str(data), *tiny_backbone_args(tiny_weights, cache, runs, "warm")]) == 0
    full = transferlab_cli(
        "run", data, *tiny_backbone_args(tiny_weights, cache, runs, "full"), preexec_fn=_limit_file_size(1024)
    )
    assert full.returncode == 2, full.stderr
    assert full.stderr.splitlines()[-1].startswith("error: File too large") and "Traceback" not in full.stderr
