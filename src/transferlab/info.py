"""``transferlab info``: what is in a dataset and what is wrong with it, before any model runs."""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

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


def dataset_info(source: str | Path, label_sep: str | None = None) -> DatasetInfo:
    """Decode every image once (header and pixels) and hash it, collecting problems instead of stopping."""
    dataset = load_dataset(source, label_sep=label_sep)
    info = DatasetInfo(
        str(source),
        "multi-label" if dataset.multilabel else "single-label",
        dataset.class_counts(),
        problems=list(dataset.problems),
    )
    by_hash: dict[str, list[str]] = defaultdict(list)
    for index, relative in enumerate(dataset.paths):
        path = dataset.absolute(index)
        try:
            with_original_mode = _original_mode(path)
            image = load_image(path)
            by_hash[content_hash(path)].append(printable(relative))
        except (ImageLoadError, OSError) as error:
            info.problems.append(Problem(relative, getattr(error, "reason", str(error))))
            continue
        info.sizes[image.size] += 1
        info.modes[with_original_mode] += 1
    info.duplicates = [paths for paths in by_hash.values() if len(paths) > 1]
    return info


def _original_mode(path: Path) -> str:
    from PIL import Image

    try:
        with Image.open(path) as image:
            return image.mode
    except Exception:
        return "?"
