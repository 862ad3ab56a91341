"""Generate the bad-input corpus: every kind of broken or unusual file a real image folder holds.

Nothing binary is committed; each maker writes one case from scratch, so the corpus is reviewable as code and the
exact pixel values tests compare against are known. ``build_bad_folder`` lays the image-level cases into one
folder-per-class tree next to good images, and returns what a run must do with each of them.
"""

from __future__ import annotations

import os
import struct
import subprocess
import sys
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path
from typing import Any

import numpy as np
from conftest import make_class_folder
from PIL import Image

# A pure red in CMYK (no cyan, full magenta and yellow) decodes to RGB (255, 0, 0).
CMYK_RED = (0, 255, 255, 0)
# 16-bit greyscale levels and the 8-bit values they must scale to (x / 257), not clip to white.
GRAY16_LEVELS = (0, 257 * 64, 257 * 200, 65535)
GRAY16_EXPECTED = (0, 64, 200, 255)


def truncated_jpeg(path: Path) -> None:
    """A real JPEG cut in half, as a interrupted copy leaves it."""
    buffer = BytesIO()
    Image.fromarray(np.random.default_rng(1).integers(0, 255, (48, 48, 3), dtype=np.uint8)).save(buffer, "JPEG")
    path.write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])


def empty_file(path: Path) -> None:
    path.write_bytes(b"")


def text_named_png(path: Path) -> None:
    path.write_text("this is a text file with an image extension\n")


def cmyk_jpeg(path: Path) -> None:
    Image.new("CMYK", (24, 24), CMYK_RED).save(path, "JPEG", quality=95)


def rgba_png(path: Path) -> None:
    """Left half opaque blue, right half fully transparent (which must become white, not black)."""
    pixels = np.zeros((24, 24, 4), dtype=np.uint8)
    pixels[:, :12] = (0, 0, 255, 255)
    pixels[:, 12:] = (0, 0, 0, 0)
    Image.fromarray(pixels, "RGBA").save(path)


def palette_png(path: Path) -> None:
    """A palette image whose index 0 is transparent and index 1 is green."""
    image = Image.new("P", (24, 24), 1)
    image.putpalette([0, 0, 0, 0, 255, 0] + [0] * (256 - 2) * 3)
    image.paste(0, (0, 0, 12, 24))
    image.save(path, transparency=0)


def gray16_png(path: Path) -> None:
    """A 16-bit greyscale PNG with four vertical bands at ``GRAY16_LEVELS``."""
    pixels = np.repeat(np.asarray(GRAY16_LEVELS, dtype=np.uint16), 6)[None, :].repeat(8, axis=0)
    Image.fromarray(pixels).save(path)


def exif_rotated_jpeg(path: Path) -> None:
    """Stored 32 wide × 16 high, top half white; EXIF orientation 6 says "rotate 90° clockwise to display"."""
    pixels = np.zeros((16, 32, 3), dtype=np.uint8)
    pixels[:8] = 255
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(pixels).save(path, "JPEG", exif=exif, quality=95)


def one_pixel_png(path: Path) -> None:
    Image.new("RGB", (1, 1), (200, 30, 30)).save(path)


def pixel_bomb_png(path: Path, side: int = 20000) -> None:
    """A valid PNG header claiming ``side``² pixels (far above Pillow's limit) in a few dozen bytes."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)
    body = chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + body)


def symlink_loop(path: Path) -> None:
    """``path`` → ``path.loop`` → ``path``: opening either fails with ELOOP."""
    partner = path.with_name(path.name + ".loop")
    os.symlink(partner.name, path)
    os.symlink(path.name, partner)


def directory_loop(path: Path) -> None:
    """A directory symlink pointing at its own parent: walking it naively never ends."""
    os.symlink("..", path)


def unreadable_png(path: Path) -> None:
    one_pixel_png(path)
    path.chmod(0)


def good_png(path: Path, colour: tuple[int, int, int] = (30, 200, 30)) -> None:
    rng = np.random.default_rng(len(str(path)))
    pixels = np.clip(rng.integers(0, 60, (24, 24, 3)) + np.asarray(colour), 0, 255).astype(np.uint8)
    Image.fromarray(pixels).save(path)


def non_utf8_name(folder: Path, stem: bytes) -> Path:
    """The path of a file whose name is not valid UTF-8 (as Python sees it: surrogate-escaped)."""
    return folder / os.fsdecode(stem + b".png")


@dataclass(frozen=True)
class Case:
    """One corpus entry: where it lives (relative to the data root), how to make it, what a run must do with it.

    ``reason`` is the text the run's skip line must contain, or None when the image must be used.
    """

    name: str
    relative: str
    maker: Callable[[Path], None]
    reason: str | None


IMAGE_CASES = [
    Case("truncated_jpeg", "red/truncated.jpg", truncated_jpeg, "corrupt or truncated"),
    Case("empty_file", "red/empty.png", empty_file, "empty file (0 bytes)"),
    Case("text_named_png", "red/text.png", text_named_png, "not an image"),
    Case("pixel_bomb", "red/bomb.png", pixel_bomb_png, "too large, refused as a possible decompression bomb"),
    Case("symlink_loop", "green/loop.png", symlink_loop, "unreadable (Too many levels of symbolic links)"),
    Case("directory_symlink_loop", "green/again", directory_loop, None),
    Case("cmyk_jpeg", "red/cmyk.jpg", cmyk_jpeg, None),
    Case("rgba_png", "blue/rgba.png", rgba_png, None),
    Case("palette_png", "green/palette.png", palette_png, None),
    Case("gray16_png", "blue/gray16.png", gray16_png, None),
    Case("exif_rotated_jpeg", "blue/rotated.jpg", exif_rotated_jpeg, None),
    Case("one_pixel", "red/tiny.png", one_pixel_png, None),
    Case("non_utf8_name", "green/" + os.fsdecode(b"caf\xe9.png"), good_png, None),
    Case("non_utf8_name_broken", "red/" + os.fsdecode(b"bad\xff.png"), truncated_jpeg, "corrupt or truncated"),
]
EMPTY_CLASS = "empty_class"


def build_bad_folder(root: Path) -> Path:
    """Three good classes (10 images each) with every image-level case mixed in, plus a class without images."""
    make_class_folder(root, per_class=10)
    for case in IMAGE_CASES:
        case.maker(root / case.relative)
    (root / EMPTY_CLASS).mkdir()
    (root / EMPTY_CLASS / "notes.txt").write_text("no images here\n")
    return root


def transferlab_cli(*args: str | Path, timeout: float = 300, **popen: Any) -> subprocess.CompletedProcess:
    """Run the real ``transferlab`` command in a child process (so tracebacks, exit codes and signals are real)."""
    command = [sys.executable, "-m", "transferlab.cli", *map(str, args)]
    return subprocess.run(command, capture_output=True, text=True, errors="replace", timeout=timeout, **popen)


def tiny_backbone_args(weights: Path, cache: Path, runs: Path, name: str = "run", image_size: int = 64) -> list[str]:
    """CLI options for the tiny seeded backbone with a private cache and runs directory."""
    fixed = ["--backbone", "test_efficientnet", "--image-size", str(image_size), "--workers", "0", "--no-progress"]
    return [*fixed, "--weights", str(weights), "--cache-dir", str(cache), "--runs-dir", str(runs), "--name", name]
