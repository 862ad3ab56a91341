"""Stratified, seeded, nested splits and subsets.

Every stratum is shuffled once with the seed and each item gets a position in [0, 1); an item goes to *test* below
``test_fraction``, to *val* below ``test + val``, else to *train*. The same rule draws subsets, so with one seed the
0.25 subset is contained in the 0.5 subset: a learning curve grows data without reshuffling. Identical files
(same content hash) are forced into one split, so duplicates cannot leak from train into test.
"""

from __future__ import annotations

import hashlib
import warnings
from collections import Counter
from dataclasses import dataclass

import numpy as np
from sklearn.model_selection import GroupKFold, KFold, StratifiedGroupKFold, StratifiedKFold

from transferlab.errors import TransferlabError

SPLITS = ("train", "val", "test")
MAX_FOLDS = 5
Folds = list[tuple[np.ndarray, np.ndarray]]


def strata(y: np.ndarray) -> np.ndarray:
    """One stratum per sample: its class, or for multi-label its label set (rare sets fall back to the rarest label)."""
    if y.ndim == 1:
        return y.astype(str)
    combos = np.asarray(["".join(map(str, row)) for row in y.astype(np.uint8)])
    combo_counts = Counter(combos)
    label_counts = y.sum(axis=0)
    keys = []
    for row, combo in zip(y, combos, strict=True):
        if combo_counts[combo] >= 3 or not row.any():
            keys.append("set:" + combo)
        else:
            present = np.flatnonzero(row)
            keys.append("label:" + str(present[np.argmin(label_counts[present])]))
    return np.asarray(keys)


def _positions(y: np.ndarray, seed: int, groups: np.ndarray | None = None) -> np.ndarray:
    """Each sample's evenly spaced position within its shuffled stratum; a group's members share its first
    member's position (and stratum), so a group never straddles two splits."""
    if groups is not None:
        _, first, member_of = np.unique(groups.astype(str), return_index=True, return_inverse=True)
        return _positions(y[first], seed)[member_of]
    rng = np.random.default_rng(seed)
    positions = np.zeros(len(y), dtype=np.float64)
    keys = strata(y)
    for key in sorted(set(keys.tolist())):
        members = np.flatnonzero(keys == key)
        order = rng.permutation(len(members))
        positions[members[order]] = (np.arange(len(members)) + 0.5) / len(members)
    return positions


def stratified_subset(y: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """Indices of a stratified ``fraction`` of the samples; nested for growing fractions with the same seed."""
    if not 0 < fraction <= 1:
        raise TransferlabError(f"--subset must be a fraction in (0, 1], got {fraction}")
    return np.flatnonzero(_positions(y, seed + 7919) < fraction)


@dataclass(frozen=True)
class Split:
    """Which split each sample belongs to ('train', 'val' or 'test'), aligned with the dataset rows."""

    assignment: np.ndarray

    def indices(self, name: str) -> np.ndarray:
        return np.flatnonzero(self.assignment == name)

    def held_out_rows(self) -> np.ndarray:
        """Rows of validation and test: what metrics are reported on."""
        return np.flatnonzero(self.assignment != "train")

    def counts(self) -> dict[str, int]:
        return {name: int((self.assignment == name).sum()) for name in SPLITS}


def make_split(
    y: np.ndarray,
    content_hashes: list[str],
    *,
    seed: int,
    val_fraction: float = 0.15,
    test_fraction: float = 0.15,
    groups: np.ndarray | None = None,
    test_rows: np.ndarray | None = None,
) -> Split:
    """Stratified train/val/test assignment; identical contents share the split of their first occurrence.

    ``groups`` keeps each group on one side (GroupKFold semantics). ``test_rows`` (a boolean mask): a separate,
    given test set; then no test split is carved out of the other rows and ``test_fraction`` is unused.
    """
    if test_rows is None:
        positions = _positions(y, seed, groups)
    else:
        given = np.flatnonzero(~test_rows)
        positions = np.full(len(y), -1.0)  # the given test rows
        positions[given] = _positions(y[given], seed, None if groups is None else groups[given])
        test_fraction = 0.0
    assignment = np.where(
        (positions < test_fraction) | (positions < 0),
        "test",
        np.where(positions < test_fraction + val_fraction, "val", "train"),
    ).astype(object)
    first_split: dict[str, str] = {}
    for i, digest in enumerate(content_hashes):
        assignment[i] = first_split.setdefault(digest, assignment[i])
    return Split(assignment.astype(str))


def split_digest(paths: list[str], content_hashes: list[str], split: Split) -> str:
    """Hash of the (path, content, split) rows: equal digests mean equal train/val/test data."""
    lines = sorted(f"{p}\t{h}\t{s}" for p, h, s in zip(paths, content_hashes, split.assignment, strict=True))
    return hashlib.sha256("\n".join(lines).encode("utf-8", "surrogateescape")).hexdigest()[:16]


def cv_folds(y: np.ndarray, seed: int, groups: np.ndarray | None = None) -> Folds:
    """Seeded (train, held-out) index pairs: stratified by class for single-label data, plain K-fold for multi-label;
    with ``groups`` (one per row) each group stays in one fold (GroupKFold semantics).

    Up to 5 folds, fewer when the rarest class (or the number of groups) is smaller.
    """
    if len(y) < 4:
        raise TransferlabError(f"cross-validation needs at least 4 images in train+val, got {len(y)}")
    n_groups = len(set(groups.tolist())) if groups is not None else len(y)
    splitter: KFold | StratifiedKFold | GroupKFold | StratifiedGroupKFold
    if y.ndim == 2:
        n_splits = max(2, min(MAX_FOLDS, len(y), n_groups))
        splitter = KFold(n_splits, shuffle=True, random_state=seed) if groups is None else GroupKFold(n_splits)
    else:
        counts = np.bincount(y)
        n_splits = max(2, min(MAX_FOLDS, int(counts[counts > 0].min()), n_groups))
        stratified = StratifiedKFold if groups is None else StratifiedGroupKFold
        splitter = stratified(n_splits=n_splits, shuffle=True, random_state=seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "least populated class has only 1 member"
        return list(splitter.split(np.zeros(len(y)), y if y.ndim == 1 else None, groups))
