"""``transferlab.ImageClassifier``: the whole toolkit behind the three calls people expect (fit, predict, score).

It is a thin shell over :func:`transferlab.run` and the run directory it writes, so a model fitted here is an
ordinary run: it has a report, can be compared, exported and reloaded with :meth:`ImageClassifier.load`.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Sequence
from dataclasses import fields
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.base import BaseEstimator

from transferlab.backbones import DEFAULT_BACKBONE
from transferlab.backbones.cut import HEAD
from transferlab.config import WHOLE_IMAGE, RunConfig
from transferlab.data import load_dataset
from transferlab.errors import TransferlabError
from transferlab.predict import Predictions, Predictor, collect_inputs, load_predictor, predict_paths
from transferlab.record import layout

Paths = str | Path | Sequence[str | Path]
log = logging.getLogger("transferlab")


class ImageClassifier(BaseEstimator):
    """Pretrained backbone + the run's final head, fitted on a folder-per-class tree or a CSV.

    >>> clf = ImageClassifier(backbone="tf_efficientnet_lite0", trials=20).fit("photos/")   # doctest: +SKIP
    >>> clf.predict(["new/cat.jpg"]), clf.score("holdout/")                               # doctest: +SKIP

    Every :class:`transferlab.RunConfig` field except ``data`` is an explicit keyword parameter, so scikit-learn's
    ``get_params`` / ``set_params`` / ``clone`` see them and :meth:`load` restores them from the run's config;
    ``runs_dir``, ``name``, ``cache_dir`` and ``progress`` only say where files go and what is shown. Progress and
    skipped-input messages go to the ``transferlab`` logger (silent unless the application configures logging).
    """

    def __init__(
        self,
        backbone: str = DEFAULT_BACKBONE,
        cut_point: str = HEAD,
        seed: int = 0,
        *,
        multi_depth: bool = True,
        signed_sqrt: bool = True,
        test: str | None = None,
        groups: str | None = None,
        weights: str | dict[str, str] | None = None,
        image_size: int | None = None,
        crop_pct: float | None = WHOLE_IMAGE,
        subset: float | None = None,
        val_fraction: float = 0.15,
        test_fraction: float = 0.15,
        label_sep: str | None = None,
        batch_size: int | None = None,
        workers: int | None = None,
        device: str = "auto",
        allow_download: bool = False,
        backbones: list[str] | None = None,
        trials: int = 0,
        search_timeout: float | None = None,
        search_jobs: int = 1,
        search_ensemble: int = 5,
        fractions: list[float] | None = None,
        finetune: dict[str, Any] | None = None,
        time_limit: float | str | None = None,
        preset: str | None = None,
        runs_dir: str | Path = "runs",
        name: str | None = None,
        cache_dir: str | Path | None = None,
        progress: bool = False,
    ) -> None:
        # scikit-learn's contract: every parameter stored unchanged under its own name (validated in run_config)
        for name, value in locals().items():
            if name != "self":
                setattr(self, name, value)

    def __repr__(self, N_CHAR_MAX: int = 700) -> str:
        state = f"run_dir={str(self.run_dir_)!r}" if getattr(self, "run_dir_", None) else "not fitted"
        return f"{super().__repr__(N_CHAR_MAX)[:-1]}, {state})".replace("(, ", "(")

    def run_config(self, data: str | Path) -> RunConfig:
        """The :class:`RunConfig` that :meth:`fit` runs on ``data`` (validated here, before any work)."""
        values = {f.name: getattr(self, f.name) for f in fields(RunConfig) if f.name != "data"}
        return RunConfig(data=str(data), **values)

    def fit(self, data: str | Path) -> ImageClassifier:
        """Run the pipeline on ``data`` (writes ``runs_dir/<name>/``) and keep its final model."""
        from transferlab.pipeline import run

        result = run(
            self.run_config(data),
            runs_dir=self.runs_dir,
            name=self.name,
            cache_dir=self.cache_dir,
            progress=self.progress,
        )
        self.run_dir_ = result.run_dir
        self._predictor = load_predictor(result.run_dir, device=self.device)
        return self

    @classmethod
    def load(cls, run_dir: str | Path) -> ImageClassifier:
        """The classifier of an existing run directory (from ``fit`` or ``transferlab run``), every parameter
        restored from its ``config.json``."""
        from transferlab.fileio import read_json

        path = Path(run_dir)
        if not (path / layout.CONFIG).is_file():
            raise TransferlabError(f"{path}: not a run directory (no config.json)")
        config = RunConfig.from_dict(read_json(path / layout.CONFIG)).to_dict()
        del config["data"]
        clf = cls(**config, runs_dir=path.parent, name=path.name)
        clf.run_dir_ = path
        clf._predictor = load_predictor(path, device=clf.device)
        return clf

    @property
    def classes_(self) -> list[str]:
        return self._fitted().classes

    @property
    def multilabel_(self) -> bool:
        return self._fitted().multilabel

    def _fitted(self) -> Predictor:
        if getattr(self, "_predictor", None) is None:
            raise TransferlabError(
                "this ImageClassifier is not fitted yet: call fit(data) or ImageClassifier.load(run)"
            )
        return self._predictor

    def _predict(self, paths: Paths) -> Predictions:
        """Scores in input order; folders expand to their images in sorted order, CSVs to their path column."""
        predictor = self._fitted()
        items = [paths] if isinstance(paths, str | Path) else list(paths)
        files, missing = collect_inputs(items)
        predictions = predict_paths(predictor, files)
        bad = [*missing, *predictions.skipped]
        if bad:
            listed = "; ".join(f"{p.where}: {p.reason}" for p in bad[:5])
            raise TransferlabError(f"{len(bad)} image(s) cannot be used: {listed}")
        return predictions

    def predict_proba(self, paths: Paths) -> np.ndarray:
        """(images, classes) probabilities: softmax over classes, or one sigmoid per label (multi-label)."""
        return self._predict(paths).scores

    def predict(self, paths: Paths) -> list[str] | list[list[str]]:
        """The predicted class per image, or for multi-label the labels over their tuned thresholds."""
        predictor = self._fitted()
        predictions = self._predict(paths)
        if not predictor.multilabel:
            return predictions.labels
        chosen = predictor.over_threshold(predictions.scores)
        return [[predictor.classes[i] for i in np.flatnonzero(row)] for row in chosen]

    def score(self, data: str | Path, *, label_sep: str | None = None) -> float:
        """Accuracy (single-label) or mAP (multi-label) on labelled data laid out like the training data.

        Unreadable images are left out (with a warning), as ``fit`` leaves them out.
        """
        from transferlab.evaluate.scoring import evaluate_dataset

        dataset = load_dataset(data, label_sep=label_sep)
        evaluation = evaluate_dataset(self._fitted(), dataset, data=str(data), model=Path(self.run_dir_))
        for problem in evaluation.problems:
            warnings.warn(str(problem), stacklevel=2)
        return float(evaluation.headline[1])
