"""Index a labelled image collection: a folder per class, or a CSV of paths with one or many labels.

Indexing only looks at names and CSV cells; pixels are decoded later, once, during feature extraction. Problems
that make a row or file unusable are collected as :class:`Problem` (reported, then skipped); problems that make the
whole dataset unusable raise :class:`TransferlabError` before any expensive work starts.
"""

from __future__ import annotations

import csv
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from transferlab.data.images import is_image_name
from transferlab.errors import TransferlabError


@dataclass(frozen=True)
class Problem:
    """One skipped input and why; ``where`` is a path or a CSV row reference."""

    where: str
    reason: str

    def __str__(self) -> str:
        return f"skipped {printable(self.where)}: {self.reason}"


def printable(text: str) -> str:
    """Render file names with undecodable bytes (surrogate-escaped) safely for terminals, JSON and HTML."""
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


@dataclass
class ImageDataset:
    """Paths (relative to ``root``) with targets: ``y`` is (N,) class ids, or an (N, C) 0/1 matrix if multi-label.

    ``groups`` (from a CSV group column: patient, session, source object) keeps related images on one side of every
    split and fold; None when the data has no such column.
    """

    root: Path
    paths: list[str]
    y: np.ndarray
    classes: list[str]
    problems: list[Problem] = field(default_factory=list)
    groups: np.ndarray | None = None

    @property
    def multilabel(self) -> bool:
        return self.y.ndim == 2

    def __len__(self) -> int:
        return len(self.paths)

    def absolute(self, index: int) -> Path:
        return self.root / self.paths[index]

    def subset(self, indices: Sequence[int] | np.ndarray) -> ImageDataset:
        """A view on some rows, keeping the class list (so label ids stay comparable across subsets)."""
        indices = np.asarray(indices, dtype=np.int64)
        groups = None if self.groups is None else self.groups[indices]
        paths = [self.paths[i] for i in indices]
        return ImageDataset(self.root, paths, self.y[indices], self.classes, self.problems, groups)

    def unknown_classes(self, classes: list[str]) -> dict[str, int]:
        """Classes (with their image counts) that have images here but are not in ``classes``."""
        return {name: count for name, count in self.class_counts().items() if count and name not in classes}

    def labels_in(self, classes: list[str]) -> np.ndarray:
        """``y`` over another class list, matched by name: class ids (-1 where a class is not in ``classes``), or
        for multi-label the 0/1 columns of ``classes`` (labels not in it dropped, labels absent here all 0)."""
        index = np.asarray([classes.index(name) if name in classes else -1 for name in self.classes], dtype=np.int64)
        if not self.multilabel:
            return index[self.y]
        mapped = np.zeros((len(self), len(classes)), dtype=self.y.dtype)
        present = index >= 0
        mapped[:, index[present]] = self.y[:, present]
        return mapped

    def joined(self, other: ImageDataset) -> ImageDataset:
        """These rows, then ``other``'s (a separate test set), on a common root with ``other``'s labels mapped onto
        these classes by name; a class this data lacks is an error (a model cannot be scored on it)."""
        if other.multilabel != self.multilabel:
            train_kind, test_kind = ("multi-label" if d.multilabel else "single-label" for d in (self, other))
            raise TransferlabError(f"the training data is {train_kind} but the test set is {test_kind}")
        unknown = other.unknown_classes(self.classes)
        if unknown:
            raise TransferlabError(f"the test set has classes the training data lacks: {', '.join(unknown)}")
        mapped = other.labels_in(self.classes)
        root = Path(os.path.commonpath([self.root.resolve(), other.root.resolve()]))
        paths = [(self.root.resolve() / p).relative_to(root).as_posix() for p in self.paths]
        paths += [(other.root.resolve() / p).relative_to(root).as_posix() for p in other.paths]
        groups = None
        if self.groups is not None:
            groups = np.concatenate([self.groups, np.asarray([f"test:{p}" for p in other.paths], dtype=object)])
        y = np.concatenate([self.y, mapped])
        return ImageDataset(root, paths, y, self.classes, self.problems + other.problems, groups)

    def class_counts(self) -> dict[str, int]:
        counts = self.y.sum(axis=0) if self.multilabel else np.bincount(self.y, minlength=len(self.classes))
        return {name: int(count) for name, count in zip(self.classes, counts, strict=True)}


def load_dataset(
    source: str | Path,
    *,
    root: str | Path | None = None,
    label_sep: str | None = None,
    group_column: str | None = None,
) -> ImageDataset:
    """Index a folder-per-class tree or a CSV (``path,label``, ``path,labels`` or path + a 0/1 column per label).

    ``group_column``: a CSV column naming each image's group (patient, session, source object).
    """
    source = Path(source)
    if not source.exists():
        raise TransferlabError(f"data not found: {source}")
    if source.is_dir():
        if group_column:
            raise TransferlabError(f"--groups needs a CSV with a '{group_column}' column; {source} is a folder")
        dataset = _from_folders(source)
    elif source.suffix.lower() in {".csv", ".tsv"}:
        dataset = _from_csv(source, Path(root) if root else source.parent, label_sep, group_column)
    else:
        raise TransferlabError(f"{source}: expected a folder with one sub-folder per class, or a .csv file")
    _check_usable(dataset, source)
    return dataset


def _check_usable(dataset: ImageDataset, source: Path) -> None:
    if len(dataset) == 0:
        raise TransferlabError(f"{source}: no images found")
    present = [name for name, count in dataset.class_counts().items() if count > 0]
    if not dataset.multilabel and len(present) < 2:
        found = present[0] if present else "none"
        raise TransferlabError(f"{source}: need at least 2 classes with images to train a classifier (found: {found})")
    if dataset.multilabel and not present:
        raise TransferlabError(f"{source}: no image carries any label")


def walk_files(folder: Path) -> list[Path]:
    """All non-hidden files below ``folder`` in a stable order; directory symlinks are not followed (no loops)."""
    found: list[Path] = []
    for directory, subdirs, files in os.walk(folder, followlinks=False):
        subdirs[:] = sorted(d for d in subdirs if not d.startswith("."))
        found.extend(Path(directory) / name for name in sorted(files) if not name.startswith("."))
    return found


def _from_folders(root: Path) -> ImageDataset:
    problems: list[Problem] = []
    class_dirs = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    for stray in sorted(p for p in root.iterdir() if p.is_file() and is_image_name(p.name)):
        problems.append(Problem(stray.name, "image at the top level, not inside a class folder"))
    classes: list[str] = []
    paths: list[str] = []
    labels: list[int] = []
    for class_dir in class_dirs:
        files = walk_files(class_dir)
        images = [f for f in files if is_image_name(f.name)]
        ignored = len(files) - len(images)
        if ignored:
            problems.append(Problem(class_dir.name + "/", f"{ignored} file(s) without an image extension ignored"))
        if not images:
            problems.append(Problem(class_dir.name + "/", "class folder has no images; class dropped"))
            continue
        classes.append(printable(class_dir.name))  # a label, shown in JSON, HTML and plots: must be valid text
        paths.extend(f.relative_to(root).as_posix() for f in images)
        labels.extend([len(classes) - 1] * len(images))
    return ImageDataset(root, paths, np.asarray(labels, dtype=np.int64), classes, problems)


def _split_labels(cell: str, label_sep: str | None) -> list[str]:
    if label_sep:
        parts = cell.split(label_sep)
    elif re.search(r"[;|]", cell):
        parts = re.split(r"[;|]", cell)
    else:
        parts = cell.split()
    return [part.strip() for part in parts if part.strip()]


def _resolve_in_root(resolved_root: str, cell: str) -> str | None:
    """The path relative to the root (given resolved, once per CSV: resolving it per row made a 100k-row CSV 3x
    slower), or None if it escapes the root (absolute, ``..``, or via a symlink)."""
    candidate = Path(cell)
    if candidate.is_absolute():
        return None
    resolved = os.path.realpath(os.path.join(resolved_root, cell))
    if resolved != resolved_root and not resolved.startswith(resolved_root.rstrip(os.sep) + os.sep):
        return None
    return candidate.as_posix()


def _from_csv(csv_path: Path, root: Path, label_sep: str | None, group_column: str | None) -> ImageDataset:
    with open(csv_path, newline="", encoding="utf-8-sig", errors="surrogateescape") as handle:
        delimiter = "\t" if csv_path.suffix.lower() == ".tsv" else ","
        rows = list(csv.reader(handle, delimiter=delimiter))
    if not rows:
        raise TransferlabError(f"{csv_path}: empty CSV")
    header = [cell.strip().lower() for cell in rows[0]]
    if "path" not in header:
        raise TransferlabError(f"{csv_path}: the header must have a 'path' column (found: {', '.join(rows[0])})")
    path_col = header.index("path")
    group_col = None
    if group_column:
        if group_column.strip().lower() not in header:
            raise TransferlabError(f"{csv_path}: no group column '{group_column}' (found: {', '.join(rows[0])})")
        group_col = header.index(group_column.strip().lower())
    if "label" in header:
        mode, label_cols = "single", [header.index("label")]
    elif "labels" in header:
        mode, label_cols = "multi", [header.index("labels")]
    else:
        mode, label_cols = "onehot", [i for i in range(len(header)) if i not in (path_col, group_col)]
        if not label_cols:
            raise TransferlabError(f"{csv_path}: need a 'label' column, a 'labels' column or one 0/1 column per label")

    problems: list[Problem] = []
    resolved_root = os.path.realpath(root)
    seen: set[str] = set()
    entries: list[tuple[str, list[str]]] = []
    groups: list[str] = []
    for number, row in enumerate(rows[1:], start=2):
        where = f"{csv_path.name} row {number}"
        if not any(cell.strip() for cell in row):
            continue
        if len(row) != len(header):
            problems.append(Problem(where, f"expected {len(header)} columns, found {len(row)}"))
            continue
        cell = row[path_col].strip()
        if not cell:
            problems.append(Problem(where, "empty path"))
            continue
        relative = _resolve_in_root(resolved_root, cell)
        if relative is None:
            problems.append(Problem(f"{where} ({cell})", f"refused: path escapes the data root {root}"))
            continue
        if relative in seen:
            problems.append(Problem(f"{where} ({cell})", "duplicate row for the same path; first one kept"))
            continue
        if not (root / relative).is_file():
            problems.append(Problem(f"{where} ({cell})", "file not found"))
            continue
        names = _row_labels(row, mode, label_cols, [cell.strip() for cell in rows[0]], label_sep)
        if isinstance(names, str):
            problems.append(Problem(f"{where} ({cell})", names))
            continue
        if group_col is not None:
            if not row[group_col].strip():
                problems.append(Problem(f"{where} ({cell})", f"empty '{group_column}' (group) cell"))
                continue
            groups.append(row[group_col].strip())
        seen.add(relative)
        entries.append((relative, [printable(name) for name in names]))

    if mode == "onehot":
        classes = [printable(rows[0][i].strip()) for i in label_cols]
    else:
        classes = sorted({name for _, names in entries for name in names})
    index = {name: i for i, name in enumerate(classes)}
    paths = [path for path, _ in entries]
    if mode == "single":
        y = np.asarray([index[names[0]] for _, names in entries], dtype=np.int64)
    else:
        y = np.zeros((len(entries), len(classes)), dtype=np.uint8)
        for row_index, (_, names) in enumerate(entries):
            y[row_index, [index[name] for name in names]] = 1
    group_array = np.asarray(groups, dtype=object) if group_col is not None else None
    return ImageDataset(root, paths, y, classes, problems, group_array)


def _row_labels(
    row: list[str], mode: str, label_cols: list[int], header: list[str], sep: str | None
) -> list[str] | str:
    """The label names of one row, or a string saying why the row is unusable."""
    if mode == "single":
        label = row[label_cols[0]].strip()
        return [label] if label else "empty label"
    if mode == "multi":
        return sorted(set(_split_labels(row[label_cols[0]], sep)))
    names = []
    for column in label_cols:
        value = row[column].strip()
        if value not in {"0", "1", "0.0", "1.0"}:
            return f"column '{header[column]}' must be 0 or 1, found {value!r}"
        if float(value) == 1.0:
            names.append(header[column])
    return names
