"""Rank (backbone, cut point) pairs by scores that need no fine-tuning, and choose one with a stated reason.

Every candidate is scored on the same images, seed, split and folds; only the backbone differs. The forward pass is
paid once per backbone (all cut points come out of one pass and are cached), so ranking 8 cut points costs about
the same extraction time as ranking one.

Choice rule (one-standard-error rule, Breiman et al. 1984): the cross-validated probe score decides, because it is
the closest to what the user will train next. Candidates whose score is within one standard error of the best are
treated as tied, and among those the cheapest wins: fewest GFLOPs of the network up to the cut (an earlier cut runs
fewer blocks), then the fewest features (a smaller head,
less to overfit), then the higher LogME, then the higher probe score. LogME and k-NN do not decide; the reason says
whether they agree.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
from threadpoolctl import threadpool_limits

from transferlab.backbones.cut import HEAD
from transferlab.backbones.registry import check_model_name, resolve_weights
from transferlab.config import RunConfig
from transferlab.data.split import cv_folds
from transferlab.errors import TransferlabError
from transferlab.metrics import headline_name
from transferlab.prepare import PreparedData, prepare
from transferlab.rank.cost import backbone_cost
from transferlab.rank.logme import logme_score
from transferlab.rank.scores import knn_cv, probe_cv
from transferlab.record import RunDir, layout

log = logging.getLogger(__name__)

RANKING_FILE = layout.RANKING


@dataclass
class RankRow:
    """Scores and cost of one (backbone, cut point); an unavailable backbone has one row with ``note`` saying why."""

    backbone: str
    cut_point: str | None
    available: bool
    logme: float | None = None
    knn_accuracy: float | None = None
    """k-NN cross-validated accuracy (mAP for multi-label data)."""
    probe_cv_accuracy: float | None = None
    """Quick-probe cross-validated accuracy (mAP for multi-label data)."""
    probe_cv_std_error: float | None = None
    probe_c: float | None = None
    dim: int | None = None
    extract_seconds: float | None = None
    """Seconds to extract this dataset's features (all cut points) at the measured speed; None if never measured."""
    images_per_second: float | None = None
    params: int | None = None
    """Parameters of the network up to the cut point (what a model cut there runs and ships)."""
    megabytes: float | None = None
    """Those parameters as float32, in MB."""
    gflops: float | None = None
    """GFLOPs per image of the network up to the cut point (``transferlab.backbones.costs``)."""
    note: str = ""

    @property
    def label(self) -> str:
        return f"{self.backbone}/{self.cut_point}"


@dataclass
class Choice:
    backbone: str
    cut_point: str
    reason: str


@dataclass
class Ranking:
    """The ranked rows (best first, unavailable last), the choice and how the scores were measured."""

    rows: list[RankRow]
    chosen: Choice
    metric: str
    folds: int
    n_images: int
    seed: int

    def to_json(self) -> dict[str, Any]:
        """The ``ranking.json`` payload (run-directory contract: rows + chosen, plus how they were measured)."""
        return {
            "metric": self.metric,
            "folds": self.folds,
            "n_images": self.n_images,
            "seed": self.seed,
            "rows": [asdict(row) for row in self.rows],
            "chosen": asdict(self.chosen),
        }

    def table(self) -> str:
        """The ranked table and the choice, for the terminal."""
        metric = "acc" if self.metric == "accuracy" else "mAP"
        lines = [
            f"{'#':>2}  {'backbone':<26} {'cut':<9} {'dim':>5}  {'probe ' + metric:>14} {'kNN ' + metric:>8} "
            f"{'LogME':>7} {'GFLOPs':>7} {'params':>7} {'MB':>6} {'extract':>8}"
        ]
        for place, row in enumerate(self.rows, 1):
            if not row.available:
                lines.append(f"{'-':>2}  {row.backbone:<26} unavailable: {row.note.split(':')[0]}")  # details in JSON
                continue
            probe = f"{row.probe_cv_accuracy:.3f}±{row.probe_cv_std_error:.3f}"
            extract = "-" if row.extract_seconds is None else f"{row.extract_seconds:.1f}s"
            lines.append(
                f"{place:>2}  {row.backbone:<26} {row.cut_point:<9} {row.dim:>5}  {probe:>14} {row.knn_accuracy:>8.3f} "
                f"{row.logme:>7.3f} {row.gflops:>7.3f} {row.params / 1e6:>6.2f}M {row.megabytes:>6.1f} {extract:>8}"
            )
        lines.append("GFLOPs, params and MB: the network up to the cut point, per image at the input size")
        lines.append(
            f"scores: {self.folds}-fold cross-validation on the {self.n_images} train+val images (seed {self.seed})"
        )
        lines.append(f"chosen: {self.chosen.backbone} at {self.chosen.cut_point} — {self.chosen.reason}")
        return "\n".join(lines)


def choose(rows: list[RankRow], metric: str = "accuracy") -> Choice:
    """Apply the module's choice rule to the available rows and explain it with their numbers."""
    candidates = [row for row in rows if row.available]
    if not candidates:
        raise TransferlabError("no backbone could be ranked: none has local weights")
    best = max(candidates, key=lambda r: r.probe_cv_accuracy)
    tied = [r for r in candidates if r.probe_cv_accuracy >= best.probe_cv_accuracy - best.probe_cv_std_error]
    chosen = min(tied, key=lambda r: (*_preference(r), -r.probe_cv_accuracy))
    name = f"CV probe {metric}"
    if chosen is best:
        reason = f"highest {name} {_pm(best)}"
    else:
        if chosen.gflops < best.gflops:
            preferred = f"it is cheaper: {chosen.gflops:.3g} vs {best.gflops:.3g} GFLOPs per image"
        elif chosen.dim < best.dim:
            preferred = f"it is cheaper: {chosen.dim} vs {best.dim} features"
        else:
            preferred = f"at equal cost its LogME is higher: {chosen.logme:.3f} vs {best.logme:.3f}"
        reason = (
            f"{name} {_pm(chosen)} is within one standard error of the best ({best.label}, {_pm(best)}) and {preferred}"
        )
    return Choice(chosen.backbone, chosen.cut_point, f"{reason}; {_agreement(candidates, chosen, metric)}")


def _preference(row: RankRow) -> tuple[float, int, float]:
    """Among equally good candidates: fewer GFLOPs, then fewer features, then higher LogME."""
    return (row.gflops, row.dim, -row.logme)


def _pm(row: RankRow) -> str:
    return f"{row.probe_cv_accuracy:.3f} ± {row.probe_cv_std_error:.3f}"


def _agreement(candidates: list[RankRow], chosen: RankRow, metric: str) -> str:
    """Whether LogME and k-NN put the chosen candidate first, and if not which one they prefer."""
    phrases = []
    for title, key, unit in (("LogME", "logme", ""), ("k-NN", "knn_accuracy", f" {metric}")):
        top = max(candidates, key=lambda r: getattr(r, key))
        if top is chosen:
            phrases.append(f"{title} agrees ({getattr(chosen, key):.3f}{unit})")
        else:
            phrases.append(f"{title} prefers {top.label} ({getattr(top, key):.3f} vs {getattr(chosen, key):.3f}{unit})")
    return "; ".join(phrases)


def train_val_targets(prepared: PreparedData) -> np.ndarray:
    """Targets of train then val: what ranking may look at (the test split is held back for the final number)."""
    targets = prepared.targets()
    return np.concatenate([targets["train"], targets["val"]])


def score_backbone(prepared: PreparedData) -> list[RankRow]:
    """One row per cached cut point of ``prepared``'s backbone, scored on train+val."""
    seed = prepared.config.seed
    y = train_val_targets(prepared)
    folds = cv_folds(y, seed, prepared.fit_groups())
    cost = backbone_cost(prepared.backbone, prepared.cache, prepared.extraction)
    n_images = len(prepared.hashes)
    extract_seconds = n_images / cost.images_per_second if cost.images_per_second else None
    rows = []
    for cut_point, dim in prepared.backbone.cut_dims.items():
        part = cost.cuts[cut_point]
        features = prepared.features(cut_point)
        x = np.concatenate([features["train"], features["val"]]).astype(np.float64)
        probe, c = probe_cv(x, y, folds, seed)
        knn = knn_cv(x, y, folds)
        with threadpool_limits(limits=1):  # see transferlab.rank.scores.cross_validate
            logme = logme_score(x, y)
        rows.append(
            RankRow(
                backbone=prepared.backbone.name,
                cut_point=cut_point,
                available=True,
                logme=logme,
                knn_accuracy=knn.mean,
                probe_cv_accuracy=probe.mean,
                probe_cv_std_error=probe.std_error,
                probe_c=c,
                dim=dim,
                extract_seconds=extract_seconds,
                images_per_second=cost.images_per_second,
                params=part.params,
                megabytes=part.megabytes,
                gflops=part.gflops,
            )
        )
    return rows


def rank(
    config: RunConfig,
    backbones: list[str],
    *,
    cache_dir: str | Path | None = None,
    progress: bool = True,
) -> Ranking:
    """Score every cut point of every backbone on ``config``'s data, seed and split; rank them and choose one.

    ``config.weights`` gives a file per backbone (``config.weights_for``); backbones it does not name use packaged
    or locally cached weights.
    A backbone without local weights is listed as unavailable (never run with random weights); an unknown model
    name is an error before any work starts.
    """
    names = list(dict.fromkeys(name.strip() for name in backbones if name.strip()))
    if not names:
        raise TransferlabError("no backbones to rank: pass --backbones a,b,c")
    for name in names:
        check_model_name(name)
    rows: list[RankRow] = []
    first: PreparedData | None = None
    for name in names:
        weights = config.weights_for(name)
        try:
            resolve_weights(name, weights, allow_download=config.allow_download)
        except TransferlabError as error:
            log.warning(f"{name}: unavailable ({error})")
            rows.append(RankRow(name, None, False, note=str(error)))
            continue
        log.info(f"ranking {name}")
        prepared = prepare(
            replace(config, backbone=name, weights=weights, cut_point=HEAD),
            cache_dir=cache_dir,
            progress=progress,
        )
        if first is not None and prepared.hashes != first.hashes:
            log.warning(
                f"warning: {name} could read a different set of images than {first.backbone.name}; scores differ"
            )
        first = first or prepared
        rows += score_backbone(prepared)
    if first is None:
        raise TransferlabError(f"no backbone could be ranked: none of {', '.join(names)} has local weights")
    metric = headline_name(first.dataset.multilabel)
    available = sorted((r for r in rows if r.available), key=lambda r: (-r.probe_cv_accuracy, *_preference(r)))
    ranked = available + [r for r in rows if not r.available]
    n_train_val = len(first.split.indices("train")) + len(first.split.indices("val"))
    folds = len(cv_folds(train_val_targets(first), config.seed, first.fit_groups()))
    return Ranking(ranked, choose(ranked, metric), metric, folds, n_train_val, config.seed)


def write_ranking(run_dir: RunDir, ranking: Ranking) -> Path:
    """Write ``ranking.json`` into the run directory (the HTML report reads it when present)."""
    return run_dir.write_json(RANKING_FILE, ranking.to_json())
