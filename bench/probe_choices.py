"""Which probe inputs to use, decided by cross-validation on the training folders only (the test folders judge).

For each dataset of the quality suite (``scripts/make_quality_suite.py``) one extraction gives pooled features at
every cut point; candidate inputs for the logistic-regression probe are then compared by 3-fold CV of
``transferlab.probe.fit_probe`` on the *training* images (train + val of a ``--test`` run), and, for judgement only,
by the refit probe's score on the test folder. Candidates: the pooled pre-logits (``head``, today's default), and
concatenations of several depths (Head2Toe-style; every cut point comes from the same forward pass, so they cost
no extraction), each read raw or as ``sqrt(...)``: the signed square root of every feature first (power
normalisation, ``transferlab.model.probe_head.signed_sqrt``; the default since it cross-validated better).

    python bench/probe_choices.py [--suite bench/data/quality] [--only NAME,...] [--cache DIR]
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

import numpy as np
from sklearn.model_selection import KFold, StratifiedKFold

from transferlab.config import RunConfig
from transferlab.metrics import headline
from transferlab.prepare import prepare
from transferlab.probe import fit_probe

ROOT = Path(__file__).resolve().parents[1]
CANDIDATES = {
    "head": ("head",),
    "6+head": ("blocks.6", "head"),
    "4+6+head": ("blocks.4", "blocks.6", "head"),
    "2+4+6+head": ("blocks.2", "blocks.4", "blocks.6", "head"),
}
DEFAULT_CANDIDATES = "head,4+6+head,sqrt(head),sqrt(4+6+head)"


def parse_candidate(label: str) -> tuple[tuple[str, ...], bool]:
    """``"4+6+head"`` -> its cut points, raw; ``"sqrt(4+6+head)"`` -> the same, signed square roots."""
    rooted = label.startswith("sqrt(") and label.endswith(")")
    return CANDIDATES[label[5:-1] if rooted else label], rooted


def datasets(suite: Path, only: set[str] | None) -> list[tuple[str, Path, Path]]:
    found = []
    for folder in sorted(p for p in suite.iterdir() if p.is_dir() and not p.name.endswith(".tmp")):
        if only and folder.name not in only:
            continue
        if (folder / "train.csv").is_file():
            found.append((folder.name, folder / "train.csv", folder / "test.csv"))
        elif (folder / "train").is_dir():
            found.append((folder.name, folder / "train", folder / "test"))
    return found


def cv_score(x: np.ndarray, y: np.ndarray, classes: list[str], seed: int, rooted: bool) -> float:
    """Mean headline metric of the probe over 3 outer folds of the training images."""
    splitter = (
        KFold(3, shuffle=True, random_state=seed)
        if y.ndim == 2
        else StratifiedKFold(3, shuffle=True, random_state=seed)
    )
    values = []
    for train, held in splitter.split(x, y if y.ndim == 1 else np.zeros(len(y))):
        empty = x[:0]
        probe = fit_probe(
            {"train": x[train], "val": empty, "test": x[held]},
            {"train": y[train], "val": y[:0], "test": y[held]},
            classes,
            seed=seed,
            use_signed_sqrt=rooted,
        )
        values.append(headline(probe.metrics["test"])[1])
    return float(np.mean(values))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--suite", type=Path, default=ROOT / "bench" / "data" / "quality")
    parser.add_argument("--only", help="comma-separated dataset names")
    parser.add_argument("--cache", type=Path, default=ROOT / "bench" / "data" / "cache")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--crop-pct", type=float, help="centre-crop ratio (default: the backbone's; 1.0: whole image)")
    parser.add_argument(
        "--candidates", default=DEFAULT_CANDIDATES, help="comma-separated names of CANDIDATES, each raw or sqrt(NAME)"
    )
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    only = set(args.only.split(",")) if args.only else None
    names = args.candidates.split(",")
    print(f"{'dataset':<16} " + "  ".join(f"{n:>19}" for n in names) + "   (CV on train | test)")
    means = {n: [] for n in names}
    for name, train, test in datasets(args.suite, only):
        started = time.perf_counter()
        prepared = prepare(
            RunConfig(str(train), test=str(test), crop_pct=args.crop_pct), cache_dir=args.cache, progress=False
        )
        y_all, split = prepared.dataset.y, prepared.split
        fit_rows = np.concatenate([split.indices("train"), split.indices("val")])
        test_rows = split.indices("test")
        classes = prepared.dataset.classes
        cells = []
        for label in names:
            cuts, rooted = parse_candidate(label)
            matrix = np.concatenate([_all_rows(prepared, cut) for cut in cuts], axis=1)
            cv = cv_score(matrix[fit_rows], y_all[fit_rows], classes, args.seed, rooted)
            probe = fit_probe(
                {"train": matrix[fit_rows], "val": matrix[:0], "test": matrix[test_rows]},
                {"train": y_all[fit_rows], "val": y_all[:0], "test": y_all[test_rows]},
                classes,
                seed=args.seed,
                use_signed_sqrt=rooted,
            )
            judged = headline(probe.metrics["test"])[1]
            means[label].append((cv, judged))
            cells.append(f"{cv:.4f} | {judged:.4f}")
        print(
            f"{name:<16} " + "  ".join(f"{c:>19}" for c in cells) + f"   {time.perf_counter() - started:.0f}s",
            flush=True,
        )
    print(
        f"{'MEAN':<16} "
        + "  ".join(f"{np.mean([v[0] for v in means[n]]):.4f} | {np.mean([v[1] for v in means[n]]):.4f}" for n in names)
    )


def _all_rows(prepared, cut: str) -> np.ndarray:
    """Features of every dataset row at ``cut``, in dataset row order."""
    features = prepared.features(cut)
    matrix = np.zeros((len(prepared.dataset), features["train"].shape[1]), dtype=np.float32)
    for split_name, values in features.items():
        matrix[prepared.split.indices(split_name)] = values
    return matrix


if __name__ == "__main__":
    main()
