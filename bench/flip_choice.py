"""Do mirrored views pay for the probe? Evidence for (or against) flip augmentation and test-time flips.

For each quality-suite dataset, the default probe input (``blocks.4+blocks.6+head``, Lite0, whole image) of every
image and of its left-right mirror (a mirrored copy of the suite, extracted like the original), then three probes
compared by 3-fold CV on the *training* images (a mirror always on the side of its original) and, for judgement
only, on the test folder:

  plain      the probe as a run fits it today;
  tta        the same probe, its probabilities averaged over the image and its mirror;
  aug+tta    fit on every training image and its mirror, scored as ``tta``.

A mirror costs a second forward pass per image, so a default would double extraction: worth it only if CV says so.

    python bench/flip_choice.py [--only NAME,...] [--cache bench/data/cache]
"""

from __future__ import annotations

import argparse
import logging
import shutil
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps
from probe_choices import _all_rows, datasets
from sklearn.model_selection import KFold, StratifiedKFold

from transferlab.config import RunConfig
from transferlab.metrics import classification_metrics, headline
from transferlab.prepare import prepare
from transferlab.probe import fit_probe

ROOT = Path(__file__).resolve().parents[1]
CUT = "blocks.4+blocks.6+head"
MODES = ("plain", "tta", "aug+tta")


def mirrored_suite(suite: Path, out: Path) -> Path:
    """A copy of ``suite`` with every image mirrored left-right (same paths, CSVs and suite.json copied)."""
    for source in suite.rglob("*"):
        target = out / source.relative_to(suite)
        if source.is_dir() or target.exists():
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        if source.suffix.lower() in {".png", ".jpg", ".jpeg"}:
            with Image.open(source) as image:
                ImageOps.mirror(image).save(target)
        else:
            shutil.copyfile(source, target)
    return out


def _fit(x: np.ndarray, y: np.ndarray, classes: list[str], seed: int):
    empty = x[:0]
    return fit_probe({"train": x, "val": empty, "test": empty}, {"train": y, "val": y[:0], "test": y[:0]}, classes,
                     seed=seed)  # fmt: skip


def scores(mode: str, x, xf, y, fit, held, classes, seed) -> np.ndarray:
    """Held-out probabilities of one mode, trained on rows ``fit``."""
    if mode == "aug+tta":
        probe = _fit(np.concatenate([x[fit], xf[fit]]), np.concatenate([y[fit], y[fit]]), classes, seed)
    else:
        probe = _fit(x[fit], y[fit], classes, seed)
    plain = probe.predict_scores(x[held])
    return plain if mode == "plain" else (plain + probe.predict_scores(xf[held])) / 2


def metric(y: np.ndarray, s: np.ndarray, classes: list[str]) -> float:
    return headline(classification_metrics(y, s, classes))[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--suite", type=Path, default=ROOT / "bench" / "data" / "quality")
    parser.add_argument("--mirror", type=Path, default=ROOT / "bench" / "data" / "quality-mirrored")
    parser.add_argument("--only", help="comma-separated dataset names")
    parser.add_argument("--cache", type=Path, default=ROOT / "bench" / "data" / "cache")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    only = set(args.only.split(",")) if args.only else None
    mirror = mirrored_suite(args.suite, args.mirror)
    print(f"{'dataset':<16} " + "  ".join(f"{m:>17}" for m in MODES) + "   (CV on train | test)")
    means: dict[str, list[tuple[float, float]]] = {m: [] for m in MODES}
    for (name, train, test), (_, mtrain, mtest) in zip(datasets(args.suite, only), datasets(mirror, only), strict=True):
        started = time.perf_counter()
        prepared = prepare(RunConfig(str(train), test=str(test)), cache_dir=args.cache, progress=False)
        flipped = prepare(RunConfig(str(mtrain), test=str(mtest)), cache_dir=args.cache, progress=False)
        assert prepared.dataset.paths == flipped.dataset.paths
        x, xf, y = _all_rows(prepared, CUT), _all_rows(flipped, CUT), prepared.dataset.y
        split, classes = prepared.split, prepared.dataset.classes
        fit_rows = np.concatenate([split.indices("train"), split.indices("val")])
        test_rows = split.indices("test")
        splitter = (
            KFold(3, shuffle=True, random_state=args.seed)
            if y.ndim == 2
            else StratifiedKFold(3, shuffle=True, random_state=args.seed)
        )
        cells = []
        for mode in MODES:
            cv = []
            for a, b in splitter.split(fit_rows, y[fit_rows] if y.ndim == 1 else None):
                fold_fit, held = fit_rows[a], fit_rows[b]
                cv.append(metric(y[held], scores(mode, x, xf, y, fold_fit, held, classes, args.seed), classes))
            judged = metric(y[test_rows], scores(mode, x, xf, y, fit_rows, test_rows, classes, args.seed), classes)
            means[mode].append((float(np.mean(cv)), judged))
            cells.append(f"{np.mean(cv):.4f} | {judged:.4f}")
        print(f"{name:<16} " + "  ".join(f"{c:>17}" for c in cells) + f"   {time.perf_counter() - started:.0f}s",
              flush=True)  # fmt: skip
    print(
        f"{'MEAN':<16} "
        + "  ".join(f"{np.mean([v[0] for v in means[m]]):.4f} | {np.mean([v[1] for v in means[m]]):.4f}" for m in MODES)
    )


if __name__ == "__main__":
    main()
