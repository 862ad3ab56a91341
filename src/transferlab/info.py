"""``transferlab info``: what is in a dataset and what is wrong with it, before any model runs."""

from __future__ import annotations

import os
from collections import Counter, defaultdict
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from tqdm import tqdm

from transferlab.data import ImageLoadError, Problem, load_dataset, load_image
from transferlab.data.dataset import printable
from transferlab.features.cache import content_hash


@dataclass
class DatasetInfo:
    """Class counts, image sizes and modes, problems and duplicate groups of one dataset."""

    source: str
    task: str
    class_counts: dict[str, int]
    sizes: Counter = field(default_factory=Counter)
    modes: Counter = field(default_factory=Counter)
    problems: list[Problem] = field(default_factory=list)
    duplicates: list[list[str]] = field(default_factory=list)

    def render(self) -> str:
        total = sum(self.sizes.values())
        lines = [f"{self.source}: {total} readable images, {len(self.class_counts)} classes ({self.task})", ""]
        width = max(len(name) for name in self.class_counts)
        lines += [f"  {name:<{width}}  {count:>6}" for name, count in self.class_counts.items()]
        if self.sizes:
            common = ", ".join(f"{w}×{h} ({n})" for (w, h), n in self.sizes.most_common(5))
            lines += ["", f"image sizes (most common): {common}", f"modes: {dict(self.modes)}"]
        if self.duplicates:
            lines += [
                "",
                f"{len(self.duplicates)} group(s) of identical files, e.g. {', '.join(self.duplicates[0][:3])}",
            ]
        lines += ["", f"{len(self.problems)} problem(s)"] + [f"  {p}" for p in self.problems]
        return "\n".join(lines)


def dataset_info(source: str | Path, label_sep: str | None = None, progress: bool = False) -> DatasetInfo:
    """Decode every image once (header and pixels) and hash it, collecting problems instead of stopping.

    Images are inspected in worker processes, one per core, in chunks (decoding is CPU-bound and the GIL would keep
    threads on one core); results come back in dataset order, so the report does not depend on scheduling.
    """
    dataset = load_dataset(source, label_sep=label_sep)
    info = DatasetInfo(
        str(source),
        "multi-label" if dataset.multilabel else "single-label",
        dataset.class_counts(),
        problems=list(dataset.problems),
    )
    paths = [dataset.absolute(index) for index in range(len(dataset.paths))]
    by_hash: dict[str, list[str]] = defaultdict(list)
    with tqdm(total=len(paths), desc="info", unit="img", disable=not progress, leave=False) as bar:
        for relative, found in zip(dataset.paths, _inspect_all(paths, bar), strict=True):
            if isinstance(found, str):
                info.problems.append(Problem(relative, found))
                continue
            mode, size, digest = found
            by_hash[digest].append(printable(relative))
            info.sizes[size] += 1
            info.modes[mode] += 1
    info.duplicates = [group for group in by_hash.values() if len(group) > 1]
    return info


CHUNK = 256
"""Images per task sent to a worker: large enough that pickling is noise, small enough for a smooth progress bar."""


def _inspect_all(paths: list[Path], bar: tqdm) -> Iterator[tuple[str, tuple[int, int], str] | str]:
    chunks = [paths[start : start + CHUNK] for start in range(0, len(paths), CHUNK)]
    workers = min(os.cpu_count() or 1, len(chunks))
    if workers <= 1:
        results: Iterator[list] = map(_inspect_chunk, chunks)
        executor = None
    else:
        executor = ProcessPoolExecutor(workers)
        results = executor.map(_inspect_chunk, chunks)
    try:
        for chunk in results:
            bar.update(len(chunk))
            yield from chunk
    finally:
        if executor is not None:
            executor.shutdown(cancel_futures=True)


def _inspect_chunk(paths: list[Path]) -> list[tuple[str, tuple[int, int], str] | str]:
    return [_inspect(path) for path in paths]


def _inspect(path: Path) -> tuple[str, tuple[int, int], str] | str:
    """(original mode, size after EXIF rotation, content hash) of one image, or the reason it cannot be used."""
    try:
        mode = _original_mode(path)
        image = load_image(path)
        return mode, image.size, content_hash(path)
    except (ImageLoadError, OSError) as error:
        return getattr(error, "reason", str(error))


def _original_mode(path: Path) -> str:
    from PIL import Image

    try:
        with Image.open(path) as image:
            return image.mode
    except Exception:
        return "?"
