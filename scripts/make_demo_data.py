"""Build the small demo datasets shipped in ``examples/`` from Fashion-MNIST.

Why this script exists
----------------------
transferlab's examples and tests need small image datasets that anyone can use
and pass on: real photos, a clear license, and small enough to keep in git.
Fashion-MNIST (Zalando Research, MIT license) fits. Its 28x28 greyscale product
photos are tiny, and Debian packages the raw IDX files as
``dataset-fashion-mnist``, so we do not need a network dataset loader.

The script writes two datasets:

* ``examples/fashion/<class>/train<index>.png``: a single-label,
  folder-per-class set. 80 images per class, stratified, sampled with a fixed
  seed from the Fashion-MNIST *train* split.
* ``examples/fashion_multilabel/``: a real multi-label set. 400 mosaics of
  56x56 pixels, each a 2x2 grid of garments from the *t10k* split, so it shares
  no image with the single-label set. ``labels.csv`` lists which classes each
  mosaic contains.

The output is deterministic: every random choice uses ``numpy.random.default_rng``
with a fixed seed, and the PNGs hold no timestamps. Running the script twice
gives byte-identical files. Only the standard library, numpy and Pillow are used.

Usage::

    python scripts/make_demo_data.py [--source DIR] [--out DIR]
"""

from __future__ import annotations

import argparse
import csv
import gzip
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
from PIL import Image

CLASS_NAMES: tuple[str, ...] = (
    "T-shirt_top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle_boot",
)
SYSTEM_DIR = Path("/usr/share/datasets/fashion-mnist")
DEB_PACKAGE = "dataset-fashion-mnist"
IDX_FILES = (
    "train-images-idx3-ubyte.gz",
    "train-labels-idx1-ubyte.gz",
    "t10k-images-idx3-ubyte.gz",
    "t10k-labels-idx1-ubyte.gz",
)

SEED = 0
PER_CLASS = 80
N_MOSAICS = 400
MIN_POSITIVES = 30
CELL = 28

# Copied from /usr/share/doc/dataset-fashion-mnist/copyright (License: Expat,
# i.e. MIT), with the copyright line of the upstream repository.
LICENSE_TEXT = """\
The MIT License (MIT)

Copyright (c) 2017 Zalando SE, https://tech.zalando.com

Permission is hereby granted, free of charge, to any person obtaining a
copy of this software and associated documentation files (the "Software"),
to deal in the Software without restriction, including without limitation
the rights to use, copy, modify, merge, publish, distribute, sublicense,
and/or sell copies of the Software, and to permit persons to whom the
Software is furnished to do so, subject to the following conditions:

The above copyright notice and this permission notice shall be included
in all copies or substantial portions of the Software.

THE SOFTWARE IS PROVIDED "AS IS", WITHOUT WARRANTY OF ANY KIND, EXPRESS
OR IMPLIED, INCLUDING BUT NOT LIMITED TO THE WARRANTIES OF
MERCHANTABILITY, FITNESS FOR A PARTICULAR PURPOSE AND NONINFRINGEMENT.
IN NO EVENT SHALL THE AUTHORS OR COPYRIGHT HOLDERS BE LIABLE FOR ANY
CLAIM, DAMAGES OR OTHER LIABILITY, WHETHER IN AN ACTION OF CONTRACT,
TORT OR OTHERWISE, ARISING FROM, OUT OF OR IN CONNECTION WITH THE
SOFTWARE OR THE USE OR OTHER DEALINGS IN THE SOFTWARE.
"""


def has_idx_files(directory: Path) -> bool:
    """Return True if ``directory`` holds all four Fashion-MNIST IDX files."""
    return all((directory / name).is_file() for name in IDX_FILES)


def _run(cmd: list[str], cwd: Path) -> None:
    """Run ``cmd`` in ``cwd``. Raise SystemExit with a readable message on failure."""
    try:
        subprocess.run(cmd, cwd=cwd, check=True, capture_output=True, text=True)
    except FileNotFoundError as exc:
        raise SystemExit(f"error: `{cmd[0]}` not found ({exc}).") from exc
    except subprocess.CalledProcessError as exc:
        detail = (exc.stderr or exc.stdout or "").strip()
        raise SystemExit(f"error: `{' '.join(cmd)}` failed:\n{detail}") from exc


@contextmanager
def locate_source(source: Path | None) -> Iterator[Path]:
    """Yield a directory with the IDX files: ``source``, the system copy, or the .deb."""
    if source is not None:
        if not has_idx_files(source):
            raise SystemExit(f"error: --source {source} does not contain {', '.join(IDX_FILES)}")
        yield source
        return
    if has_idx_files(SYSTEM_DIR):
        yield SYSTEM_DIR
        return
    hint = (
        f"Could not find Fashion-MNIST in {SYSTEM_DIR} and fetching the Debian "
        f"package `{DEB_PACKAGE}` failed. Install it (apt-get install {DEB_PACKAGE}) "
        "or pass --source DIR pointing at the *-ubyte.gz files."
    )
    with tempfile.TemporaryDirectory(prefix="fashion-mnist-") as tmp:
        tmp_dir = Path(tmp)
        print(f"{SYSTEM_DIR} not found; downloading {DEB_PACKAGE} with apt-get ...")
        try:
            _run(["apt-get", "download", DEB_PACKAGE], cwd=tmp_dir)
            debs = sorted(tmp_dir.glob(f"{DEB_PACKAGE}_*.deb"))
            if not debs:
                raise SystemExit("error: apt-get download produced no .deb file.")
            _run(["dpkg", "-x", str(debs[0]), str(tmp_dir / "root")], cwd=tmp_dir)
        except SystemExit as exc:
            raise SystemExit(f"{exc}\n{hint}") from exc
        extracted = tmp_dir / "root" / SYSTEM_DIR.relative_to("/")
        if not has_idx_files(extracted):
            raise SystemExit(f"error: the .deb has no IDX files in {SYSTEM_DIR}.\n{hint}")
        yield extracted


def read_idx(path: Path) -> np.ndarray:
    """Read a gzipped IDX file (unsigned byte data) into a numpy array."""
    with gzip.open(path, "rb") as fh:
        data = fh.read()
    zero, dtype_code, ndim = data[0:2], data[2], data[3]
    if zero != b"\x00\x00" or dtype_code != 0x08:
        raise ValueError(f"{path}: not an unsigned-byte IDX file")
    shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    offset = 4 + 4 * ndim
    array = np.frombuffer(data, dtype=np.uint8, offset=offset)
    if array.size != int(np.prod(shape)):
        raise ValueError(f"{path}: expected shape {shape}, got {array.size} values")
    return array.reshape(shape)


def load_split(source: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    """Load images (N, 28, 28) and labels (N,) for ``split`` ("train" or "t10k")."""
    images = read_idx(source / f"{split}-images-idx3-ubyte.gz")
    labels = read_idx(source / f"{split}-labels-idx1-ubyte.gz")
    if images.shape[0] != labels.shape[0] or images.shape[1:] != (CELL, CELL):
        raise ValueError(f"{split}: unexpected shapes {images.shape} / {labels.shape}")
    return images, labels


def save_png(array: np.ndarray, path: Path) -> None:
    """Save a uint8 2-D array as an optimized greyscale PNG (no metadata)."""
    if array.dtype != np.uint8 or array.ndim != 2:
        raise ValueError(f"expected a 2-D uint8 array, got {array.dtype} {array.shape}")
    image = Image.fromarray(np.ascontiguousarray(array))  # 2-D uint8 -> mode "L"
    image.save(path, format="PNG", optimize=True)


def reset_dir(path: Path) -> None:
    """Delete ``path`` if it exists and create it again, empty."""
    if path.exists():
        shutil.rmtree(path)
    path.mkdir(parents=True)


def make_single_label(images: np.ndarray, labels: np.ndarray, out: Path) -> int:
    """Write ``PER_CLASS`` stratified train images per class. Return the file count."""
    rng = np.random.default_rng(SEED)
    reset_dir(out)
    count = 0
    for cls, name in enumerate(CLASS_NAMES):
        class_dir = out / name
        class_dir.mkdir()
        candidates = np.flatnonzero(labels == cls)
        chosen = np.sort(rng.choice(candidates, size=PER_CLASS, replace=False))
        for index in chosen:
            save_png(images[index], class_dir / f"train{index:05d}.png")
            count += 1
    return count


def make_multilabel(images: np.ndarray, labels: np.ndarray, out: Path) -> list[int]:
    """Write ``N_MOSAICS`` 2x2 mosaics and ``labels.csv``. Return positives per class."""
    rng = np.random.default_rng(SEED)
    reset_dir(out)
    image_dir = out / "images"
    image_dir.mkdir()
    n_classes = len(CLASS_NAMES)
    # A shuffled pool per class; popping from it means no t10k image is used twice.
    pools = [list(rng.permutation(np.flatnonzero(labels == c))) for c in range(n_classes)]
    positives = [0] * n_classes
    rows: list[tuple[str, str]] = []
    for m in range(N_MOSAICS):
        k = int(rng.integers(1, 4))  # 1, 2 or 3 distinct classes
        chosen = [int(c) for c in rng.choice(n_classes, size=k, replace=False)]
        extra = [int(c) for c in rng.choice(chosen, size=4 - k, replace=True)]
        cells = chosen + extra
        rng.shuffle(cells)
        mosaic = np.zeros((2 * CELL, 2 * CELL), dtype=np.uint8)
        for pos, cls in enumerate(cells):
            row, col = divmod(pos, 2)
            mosaic[row * CELL : (row + 1) * CELL, col * CELL : (col + 1) * CELL] = images[pools[cls].pop()]
        rel = f"images/mosaic_{m:04d}.png"
        save_png(mosaic, out / rel)
        present = sorted({CLASS_NAMES[c] for c in cells})
        for c in set(cells):
            positives[c] += 1
        rows.append((rel, ";".join(present)))
    with (out / "labels.csv").open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh, lineterminator="\n")
        writer.writerow(("path", "labels"))
        writer.writerows(rows)
    return positives


def write_readme(out: Path, positives: list[int]) -> None:
    """Write ``examples/README.md`` describing the data, how it was made, and its license."""
    counts = "\n".join(f"| {name} | {n} |" for name, n in zip(CLASS_NAMES, positives, strict=True))
    text = f"""\
# Demo datasets

Small image datasets for transferlab's examples and tests. All images come from
[Fashion-MNIST](https://github.com/zalandoresearch/fashion-mnist): 28x28
greyscale photos of Zalando products.

## `fashion/`: single-label, one folder per class

`fashion/<class>/train<index>.png`: {PER_CLASS} images per class for
{len(CLASS_NAMES)} classes ({PER_CLASS * len(CLASS_NAMES)} images). They are a
stratified random sample (seed {SEED}) of the Fashion-MNIST **train** split.
`<index>` is the image's position in that split. The classes are:
{", ".join(f"`{c}`" for c in CLASS_NAMES)}.

## `fashion_multilabel/`: multi-label

`fashion_multilabel/images/mosaic_XXXX.png`: {N_MOSAICS} greyscale mosaics of
56x56 pixels. Each one is a 2x2 grid of garments from the Fashion-MNIST
**t10k** (test) split, so no image also appears in `fashion/`. For each mosaic
we picked 1, 2 or 3 distinct classes at random, filled the four cells with
images of those classes (each chosen class at least once), and shuffled the
cells. No t10k image is used twice.

`fashion_multilabel/labels.csv` has the columns `path,labels`. `path` is
relative to the CSV's folder. `labels` lists the classes in the mosaic in sorted
order, separated by `;`.

Number of mosaics each class appears in:

| class | mosaics |
|---|---|
{counts}

## How they were made

```
python scripts/make_demo_data.py
```

The script reads the raw IDX files from the Debian package
`{DEB_PACKAGE}` (`{SYSTEM_DIR}`). If that directory is missing, the script
downloads the package with `apt-get download`. You can also pass `--source DIR`.
The script is deterministic: every run gives byte-identical files.

## Attribution and license

Fashion-MNIST was made by Zalando Research: Han Xiao, Kashif Rasul and Roland
Vollgraf, *Fashion-MNIST: a Novel Image Dataset for Benchmarking Machine
Learning Algorithms*, 2017, <https://github.com/zalandoresearch/fashion-mnist>.
Copyright (c) 2017 Zalando SE. It is released under the MIT license; see
[`LICENSE-fashion-mnist.txt`](LICENSE-fashion-mnist.txt). The images here are
unmodified Fashion-MNIST images, or 2x2 mosaics of them.
"""
    (out / "README.md").write_text(text, encoding="utf-8")
    (out / "LICENSE-fashion-mnist.txt").write_text(LICENSE_TEXT, encoding="utf-8")


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point."""
    repo_root = Path(__file__).resolve().parent.parent
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", type=Path, help="directory with the Fashion-MNIST *-ubyte.gz files")
    parser.add_argument("--out", type=Path, default=repo_root / "examples", help="output directory")
    args = parser.parse_args(argv)

    with locate_source(args.source) as source:
        print(f"reading IDX files from {source}")
        train_images, train_labels = load_split(source, "train")
        test_images, test_labels = load_split(source, "t10k")

    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    n_single = make_single_label(train_images, train_labels, out / "fashion")
    print(f"wrote {n_single} images to {out / 'fashion'}")
    positives = make_multilabel(test_images, test_labels, out / "fashion_multilabel")
    print(f"wrote {N_MOSAICS} mosaics to {out / 'fashion_multilabel'}")
    print("positives per label:")
    for name, n in zip(CLASS_NAMES, positives, strict=True):
        print(f"  {name:<12} {n}")
    too_few = [name for name, n in zip(CLASS_NAMES, positives, strict=True) if n < MIN_POSITIVES]
    if too_few:
        print(f"error: fewer than {MIN_POSITIVES} positives for {too_few}", file=sys.stderr)
        return 1
    write_readme(out, positives)
    print(f"wrote {out / 'README.md'} and {out / 'LICENSE-fashion-mnist.txt'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
