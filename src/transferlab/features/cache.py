"""On-disk feature cache keyed by (backbone identity, image content hash).

Layout: ``<cache>/features/<key>/shard-<uuid>.npz``, where ``key`` hashes the backbone name, weights hash,
preprocessing and cut points. Each shard holds the content hashes of a few hundred images and one float32 array
per cut point. Shards are written to a temporary name, fsynced and renamed, so a killed or concurrent writer never
leaves a partial shard under a real name; a shard that still fails to read (zip CRC) is ignored and its images are
simply extracted again. Features are streamed to shards as they are computed, so memory stays bounded.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import time
import uuid
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from transferlab.errors import DISK_FULL, TransferlabError
from transferlab.fileio import atomic_write_text, sha256_file

HASHES = "__hashes__"
STALE_TEMPORARY_SECONDS = 24 * 3600


def default_cache_dir() -> Path:
    """``$TRANSFERLAB_CACHE`` or ``~/.cache/transferlab``."""
    return Path(os.environ.get("TRANSFERLAB_CACHE", Path.home() / ".cache" / "transferlab"))


def content_hash(path: Path) -> str:
    """SHA-256 of a file's bytes: the same picture under another name or folder reuses its features."""
    return sha256_file(path)


class FeatureCache:
    """Feature shards of one backbone identity; lookups by content hash."""

    def __init__(self, root: Path, identity: dict[str, Any], dtype: type = np.float32) -> None:
        """``dtype`` of stored arrays: float32 for pooled vectors, float16 for spatial maps (half the disk)."""
        self.dtype = dtype
        self.key = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:20]
        self.directory = Path(root) / "features" / self.key
        self.directory.mkdir(parents=True, exist_ok=True)
        meta = self.directory / "identity.json"
        if not meta.exists():
            atomic_write_text(meta, json.dumps(identity, indent=2, sort_keys=True))
        self.unreadable: list[Path] = []
        self._index: dict[str, tuple[Path, int]] = {}
        self._seen: set[Path] = set()
        self._remove_stale_temporaries()
        self.refresh()

    def _remove_stale_temporaries(self) -> None:
        """Delete temporary shards a killed writer left behind, once a day old (a live writer finishes in minutes;
        its PID cannot be checked when several machines share the cache)."""
        cutoff = time.time() - STALE_TEMPORARY_SECONDS
        for temporary in self.directory.glob(".shard-*.tmp"):
            with contextlib.suppress(OSError):  # another process may be removing it at the same moment
                if temporary.stat().st_mtime < cutoff:
                    temporary.unlink()

    def refresh(self) -> None:
        """Re-read shard contents (another process may have added shards)."""
        for shard in sorted(self.directory.glob("shard-*.npz")):
            if shard in self._seen:  # a set, not a scan of the index: refresh stays linear with millions of images
                continue
            self._seen.add(shard)
            try:
                with np.load(shard, allow_pickle=False) as data:
                    hashes = data[HASHES]
            except (OSError, ValueError, KeyError, zipfile.BadZipFile, EOFError):
                self.unreadable.append(shard)
                continue
            for row, digest in enumerate(hashes.astype(str)):
                self._index.setdefault(digest, (shard, row))

    def __contains__(self, digest: str) -> bool:
        return digest in self._index

    def missing(self, digests: list[str]) -> list[str]:
        return [d for d in dict.fromkeys(digests) if d not in self._index]

    def write_shard(self, digests: list[str], features: dict[str, np.ndarray]) -> Path:
        """Atomically add one shard; visible to readers only once complete."""
        final = self.directory / f"shard-{uuid.uuid4().hex}.npz"
        temporary = final.with_name(f".{final.name}.{os.getpid()}.tmp")
        arrays = {HASHES: np.asarray(digests, dtype="S64")}
        arrays.update({name: np.ascontiguousarray(value, dtype=self.dtype) for name, value in features.items()})
        try:
            with open(temporary, "wb") as handle:
                np.savez(handle, **arrays)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(temporary, final)
        except OSError as error:
            if error.errno not in DISK_FULL:
                raise
            raise TransferlabError(
                f"cannot write the feature cache in {self.directory} ({error.strerror}); free disk space or pass "
                "--cache-dir elsewhere. Shards already written are kept and reused by the next run."
            ) from None
        finally:
            temporary.unlink(missing_ok=True)
        for row, digest in enumerate(digests):
            self._index.setdefault(digest, (final, row))
        return final

    def load(self, digests: list[str], names: list[str]) -> dict[str, np.ndarray]:
        """Features for ``digests`` (all must be cached), in that order, for the requested cut points."""
        by_shard: dict[Path, list[tuple[int, int]]] = {}
        for position, digest in enumerate(digests):
            shard, row = self._index[digest]
            by_shard.setdefault(shard, []).append((position, row))
        out: dict[str, np.ndarray] = {}
        for shard, pairs in by_shard.items():
            positions = np.asarray([p for p, _ in pairs])
            rows = np.asarray([r for _, r in pairs])
            with np.load(shard, allow_pickle=False) as data:
                for name in names:
                    block = data[name][rows]
                    if name not in out:
                        out[name] = np.empty((len(digests), *block.shape[1:]), dtype=block.dtype)
                    out[name][positions] = block
        return out
