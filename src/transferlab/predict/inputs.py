"""Turn what a user typed (files, folders, CSVs of paths) into the list of images to predict on.

Missing inputs become named problems rather than errors, so one typo does not throw away a long prediction job;
only "nothing at all to predict" is an error.
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path

from transferlab.data.dataset import Problem, walk_files
from transferlab.data.images import is_image_name
from transferlab.errors import TransferlabError

PATH_COLUMNS = ("path", "file", "filename", "image")


def _csv_paths(table: Path) -> list[Path]:
    """Paths from the ``path`` (or file/filename/image) column, else the first column; relative to the CSV."""
    with open(table, newline="", encoding="utf-8-sig", errors="surrogateescape") as handle:
        rows = list(csv.reader(handle))
    if not rows:
        return []
    header = [cell.strip().lower() for cell in rows[0]]
    column = next((header.index(name) for name in PATH_COLUMNS if name in header), None)
    body = rows[1:] if column is not None else rows
    column = column or 0
    return [table.parent / row[column].strip() for row in body if len(row) > column and row[column].strip()]


def collect_inputs(items: Sequence[str | Path]) -> tuple[list[Path], list[Problem]]:
    """Images named directly, found below folders (recursively, image extensions only) or listed in CSV files."""
    paths: list[Path] = []
    problems: list[Problem] = []
    for item in map(Path, items):
        if item.is_dir():
            paths += [path for path in walk_files(item) if is_image_name(path.name)]
        elif item.suffix.lower() == ".csv" and item.is_file():
            paths += _csv_paths(item)
        elif item.exists():
            paths.append(item)
        else:
            problems.append(Problem(str(item), "file not found"))
    if not paths:
        raise TransferlabError(f"no images to predict on in {', '.join(map(str, items))}")
    return paths, problems
