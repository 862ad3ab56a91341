"""Quality over a suite of real labelled datasets: a tuned linear probe vs `transferlab run`, same test images.

For each dataset of ``scripts/make_quality_suite.py`` (built on demand), on its own test folder:

  (a) baseline: fp32 pooled features of every training image (the packaged default backbone, the whole image
      squashed to its input size with its interpolation and normalisation, a plain torch loop, no transferlab
      cache), ``StandardScaler`` + ``LogisticRegressionCV`` (multinomial; one logistic regression per label for
      multi-label), timed end to end;
  (b) ``transferlab.pipeline.run`` with every default (``test=`` the test folder / CSV), fresh cache each time;
  (c) the same with ``trials=20`` and ``finetune={"unfreeze": "top:3", "epochs": 4}`` (slow; ``--modes a,b,c``);
  (e) a planned run probing all three packaged EfficientNet-Lites at Lite0's input size, their probes averaged
      where that cross-validates better out-of-fold than the best alone (``--modes a,b,e``).

The metric is accuracy (single-label) or macro mAP (multi-label), each mode's wall seconds beside it; then each
mode's difference from (a) with a paired bootstrap 95% interval over test images, a MEAN row and a sign count.

    python bench/quality.py [--suite bench/data/quality] [--only textures,sklearn_digits] [--modes a,b]
                            [--image-size N] [--seed 0] [--bootstrap 2000] [--markdown docs/benchmarks.md]
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import importlib.util
import inspect
import shlex
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from sklearn.linear_model import LogisticRegressionCV
from sklearn.metrics import average_precision_score
from sklearn.model_selection import StratifiedKFold
from sklearn.multiclass import OneVsRestClassifier
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from torch.utils.data import DataLoader, Dataset

from transferlab.backbones import DEFAULT_BACKBONE, load_backbone
from transferlab.config import RunConfig
from transferlab.metrics import classification_metrics, headline
from transferlab.pipeline import run

ROOT = Path(__file__).resolve().parents[1]
MODES = {
    "a": "probe (a)",
    "b": "run (b)",
    "c": "search+ft (c)",
    "e": "3 probes (e)",
}
ENSEMBLE = {"backbones": ["tf_efficientnet_lite0", "tf_efficientnet_lite1", "tf_efficientnet_lite2"]}
ENSEMBLE |= {"preset": "fast", "time_limit": 3600}  # probes only, every one of the three, no time pressure
FINETUNE = {"unfreeze": "top:3", "epochs": 4}
TRIALS = 20


def suite_module():
    """``scripts/make_quality_suite.py`` as a module (scripts/ is not a package)."""
    spec = importlib.util.spec_from_file_location("make_quality_suite", ROOT / "scripts" / "make_quality_suite.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


# ---------------------------------------------------------------------------------------------------- data


@dataclass
class Split:
    """Absolute image paths and targets: class indices (single-label) or an (n, classes) 0/1 matrix."""

    paths: list[Path]
    y: np.ndarray
    classes: list[str]

    @property
    def multilabel(self) -> bool:
        return self.y.ndim == 2


def read_split(source: Path, classes: list[str] | None = None) -> Split:
    """A folder per class, or a ``path,labels`` CSV (labels ';'-joined, paths relative to the CSV's folder)."""
    if source.is_dir():
        names = classes or sorted(p.name for p in source.iterdir() if p.is_dir())
        paths, y = [], []
        for index, name in enumerate(names):
            files = sorted(p for p in (source / name).iterdir() if p.suffix.lower() == ".png")
            paths += files
            y += [index] * len(files)
        return Split(paths, np.asarray(y, dtype=np.int64), names)
    with open(source, newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    labels = [row["labels"].split(";") for row in rows]
    names = classes or sorted({name for row in labels for name in row})
    y = np.zeros((len(rows), len(names)), dtype=np.uint8)
    for i, row in enumerate(labels):
        y[i, [names.index(name) for name in row]] = 1
    return Split([(source.parent / row["path"]).resolve() for row in rows], y, names)


class Files(Dataset):
    def __init__(self, paths: list[Path], transform) -> None:
        self.paths, self.transform = paths, transform

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> torch.Tensor:
        with Image.open(self.paths[index]) as image:
            return self.transform(image.convert("RGB"))


# ---------------------------------------------------------------------------------------------------- modes


@dataclass
class Outcome:
    metric: float
    seconds: float
    scores: np.ndarray  # (n_test, classes) probabilities, rows in the order of the test Split
    note: str = ""
    pixels: int | None = None  # the input resolution used (baseline only)


def score(split: Split, scores: np.ndarray) -> float:
    return headline(classification_metrics(split.y, scores, split.classes))[1]


def squashed(backbone):
    """The whole image resized to the backbone's input size (no centre crop), its interpolation and normalisation:
    the '224 px squashed' preprocessing of the issue's baseline."""
    from torchvision.transforms import InterpolationMode, v2

    config = backbone.data_config
    size = config["input_size"][-2:]
    interpolation = InterpolationMode(config.get("interpolation", "bicubic"))
    return v2.Compose(
        [
            v2.PILToTensor(),
            v2.Resize(size, interpolation=interpolation, antialias=True),
            v2.ToDtype(torch.float32, scale=True),
            v2.Normalize(config["mean"], config["std"]),
        ]
    )


def extract(backbone, paths: list[Path], batch_size: int = 32) -> np.ndarray:
    """Pooled fp32 features: the whole image squashed to the input size, default memory format, no cache."""
    loader = DataLoader(Files(paths, squashed(backbone)), batch_size=batch_size, num_workers=1)
    parts = []
    with torch.inference_mode():
        for images in loader:
            parts.append(backbone.model(images).float().numpy())
    return np.concatenate(parts)


def logistic_cv(multilabel: bool, seed: int) -> LogisticRegressionCV:
    """L2 ``LogisticRegressionCV`` over C = 1e-4 … 1e2 (13 values), 5 folds, log-loss (average precision per label).

    Folds run in 2 processes: on 2 cores this fits ~10× faster than one process's BLAS threads did (7 s vs 75 s,
    400 × 1280 features, 10 classes). New-scikit-learn keywords are passed only where they exist.
    """
    accepted = inspect.signature(LogisticRegressionCV).parameters
    extra = {"l1_ratios": (0.0,), "use_legacy_attributes": False}
    kwargs = {k: v for k, v in extra.items() if k in accepted}
    folds = 5 if multilabel else StratifiedKFold(5, shuffle=True, random_state=seed)
    scoring = "average_precision" if multilabel else "neg_log_loss"
    return LogisticRegressionCV(Cs=np.logspace(-4, 2, 13), cv=folds, scoring=scoring, max_iter=2000, n_jobs=2, **kwargs)


def baseline(train: Split, test: Split, image_size: int | None, seed: int) -> Outcome:
    """(a): fp32 features of all training images + StandardScaler + LogisticRegressionCV."""
    started = time.perf_counter()
    backbone = load_backbone(DEFAULT_BACKBONE, image_size=image_size)
    backbone.model.float().eval()
    x_train, x_test = extract(backbone, train.paths), extract(backbone, test.paths)
    model = logistic_cv(train.multilabel, seed)
    classifier = make_pipeline(StandardScaler(), OneVsRestClassifier(model) if train.multilabel else model)
    classifier.fit(x_train, train.y)
    scores = classifier.predict_proba(x_test)
    seconds = time.perf_counter() - started
    return Outcome(score(test, scores), seconds, scores, pixels=backbone.data_config["input_size"][-1])


def predictions_scores(run_dir: Path, test: Split) -> np.ndarray | None:
    """The run's own test rows of ``predictions.csv`` in ``test`` order, or None when they are not all there."""
    table = run_dir / "predictions.csv"
    if not table.is_file():
        return None
    with open(table, newline="", encoding="utf-8") as handle:
        rows = [row for row in csv.DictReader(handle) if row["split"] == "test"]
    if len(rows) != len(test.paths) or not all(f"p:{name}" in rows[0] for name in test.classes):
        return None
    by_name = {Path(row["path"]).parts[-2:]: row for row in rows}  # <class>/<file> or images/test/<file>
    keys = [path.parts[-2:] for path in test.paths]
    if len(by_name) != len(rows) or any(key not in by_name for key in keys):
        return None
    return np.asarray([[float(by_name[key][f"p:{name}"]) for name in test.classes] for key in keys])


def predictor_scores(run_dir: Path, test: Split) -> np.ndarray:
    """Score the run's saved final model on the test images (fallback when the run has no test rows for them)."""
    from transferlab.predict import load_predictor, predict_paths

    predictor = load_predictor(run_dir)
    predictions = predict_paths(predictor, test.paths)
    if len(predictions.paths) != len(test.paths):
        raise RuntimeError(f"{run_dir}: {len(test.paths) - len(predictions.paths)} test images could not be scored")
    order = [predictor.classes.index(name) for name in test.classes]
    return predictions.scores[:, order]


def reported_test_metric(result) -> float | None:
    """The run's own headline test metric of the model it deployed (``deployed.json``: the fine-tuned network only
    when it beat the probe on validation); older runs without that record: the last stage's."""
    stage = (getattr(result, "deployed", None) or {}).get("stage")
    if stage == "fine-tuning":
        values = result.stage_test_metrics.get("fine-tune") or {}
    elif stage == "probe":
        values = result.metrics.get("test") or {}
    elif stage == "ensemble":
        values = result.stage_test_metrics.get("ensemble") or {}
    else:
        stages = list(result.stage_test_metrics.values())
        values = stages[-1] if stages else result.metrics.get("test") or {}
    return headline(values)[1] if values.get("n") else None


def has_test_field() -> bool:
    """Whether ``RunConfig`` takes a separate labelled ``test`` folder / CSV (older versions carve one out)."""
    return "test" in {field.name for field in dataclasses.fields(RunConfig)}


def transferlab_run(train_path: Path, test_path: Path, test: Split, mode: str, image_size: int | None, seed: int):
    """(b) / (c) through the Python API; test metrics from the run, per-image scores from its predictions."""
    with_test = has_test_field()
    options = {"data": str(train_path), "seed": seed, "image_size": image_size}
    if mode == "c":
        options |= {"trials": TRIALS, "finetune": dict(FINETUNE)}
    if mode == "e":
        options |= ENSEMBLE
    if with_test:
        options["test"] = str(test_path)
        note = ""
    else:  # before RunConfig.test exists: nothing carved out for test, the saved model scored on the test set here
        options["test_fraction"] = 0.0
        note = "no RunConfig.test: saved model scored on test here"
    with (
        tempfile.TemporaryDirectory(prefix="quality-runs-") as runs,
        tempfile.TemporaryDirectory(prefix="quality-cache-") as cache,
    ):
        started = time.perf_counter()
        result = run(RunConfig(**options), runs_dir=runs, cache_dir=cache, progress=False)
        seconds = time.perf_counter() - started
        reported = reported_test_metric(result) if with_test else None
        scores = predictions_scores(result.run_dir, test)
        if scores is None:
            scores = predictor_scores(result.run_dir, test)
            note = note or "scores from the saved model"
    metric = score(test, scores)
    if reported is not None and abs(reported - metric) > 1e-3:
        note += f"; run reported {reported:.4f}"
    return Outcome(metric if reported is None else reported, seconds, scores, note.strip("; "))


# ---------------------------------------------------------------------------------------------------- statistics


def macro_ap(y: np.ndarray, scores: np.ndarray) -> float:
    scored = [c for c in range(y.shape[1]) if 0 < y[:, c].sum() < len(y)]
    return float(average_precision_score(y[:, scored], scores[:, scored], average="macro"))


def paired_bootstrap(
    test: Split, base: np.ndarray, other: np.ndarray, rounds: int, seed: int
) -> tuple[float, float, float]:
    """Mean of (other − base) over the test images and its 95% percentile interval, images resampled in pairs."""
    rng = np.random.default_rng(seed)
    n = len(test.y)
    if not test.multilabel:
        delta = (other.argmax(1) == test.y).astype(float) - (base.argmax(1) == test.y).astype(float)
        samples = delta[rng.integers(0, n, (rounds, n))].mean(axis=1)
        point = float(delta.mean())
    else:
        point = macro_ap(test.y, other) - macro_ap(test.y, base)
        samples = []
        for _ in range(rounds):
            index = rng.integers(0, n, n)
            samples.append(macro_ap(test.y[index], other[index]) - macro_ap(test.y[index], base[index]))
    low, high = np.percentile(samples, [2.5, 97.5])
    return point, float(low), float(high)


# ---------------------------------------------------------------------------------------------------- table


def render(header: list[str], rows: list[list[str]], markdown: bool) -> str:
    if markdown:
        lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows])
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    line = "  ".join
    return "\n".join(
        line(str(c).rjust(w) if i > 1 else str(c).ljust(w) for i, (c, w) in enumerate(zip(r, widths, strict=True)))
        for r in [header, *rows]
    )


def interval(point: float, low: float, high: float) -> str:
    return f"{point:+.4f} [{low:+.4f}, {high:+.4f}]"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--suite", type=Path, default=ROOT / "bench" / "data" / "quality")
    parser.add_argument("--only", help="comma-separated dataset names (default: the whole suite)")
    modes_help = "a (probe baseline), b (run defaults), c (search+fine-tune), e (3 probes)"
    parser.add_argument("--modes", default="a,b", help=modes_help)
    parser.add_argument("--image-size", type=int, help="default: the backbone's own")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--bootstrap", type=int, default=2000, help="paired bootstrap resamples")
    parser.add_argument("--markdown", type=Path, help="append the table to this markdown file")
    args = parser.parse_args()
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    unknown = [m for m in modes if m not in MODES]
    if unknown or not modes:
        parser.error(f"--modes takes a comma-separated subset of {', '.join(MODES)}; got {args.modes!r}")
    torch.set_num_threads(2)
    import logging

    logging.getLogger("transferlab").setLevel(logging.WARNING)
    try:
        import optuna

        optuna.logging.set_verbosity(optuna.logging.WARNING)
    except ImportError:
        pass

    suite = suite_module()
    infos = suite.build_suite(args.suite, suite.parse_only(args.only), args.seed)
    header = ["dataset", "task", "n_train", "n_test", "metric"]
    for mode in modes:
        header += [MODES[mode], "s"]
    compared = [m for m in modes if m != "a"] if "a" in modes else []
    header += [f"{m}−a [95% CI]" for m in compared]
    rows, values, deltas, notes, pixels = [], {m: [] for m in modes}, {m: [] for m in compared}, [], []
    for info in infos:
        train_path, test_path = suite.train_test(args.suite / info.name, info.task)
        train = read_split(train_path)
        test = read_split(test_path, train.classes)
        outcomes = {}
        for mode in modes:
            if mode == "a":
                outcomes[mode] = baseline(train, test, args.image_size, args.seed)
            else:
                outcomes[mode] = transferlab_run(train_path, test_path, test, mode, args.image_size, args.seed)
            pixels.append(outcomes[mode].pixels)
            if outcomes[mode].note:
                notes.append(f"{info.name} ({mode}): {outcomes[mode].note}")
            print(f"  {info.name} ({mode}): {outcomes[mode].metric:.4f} in {outcomes[mode].seconds:.1f} s", flush=True)
        row = [info.name, info.task, str(len(train.paths)), str(len(test.paths)), "mAP" if test.multilabel else "acc"]
        for mode in modes:
            row += [f"{outcomes[mode].metric:.4f}", f"{outcomes[mode].seconds:.0f}"]
            values[mode].append((outcomes[mode].metric, outcomes[mode].seconds))
        for mode in compared:
            point, low, high = paired_bootstrap(
                test, outcomes["a"].scores, outcomes[mode].scores, args.bootstrap, args.seed
            )
            deltas[mode].append((point, low, high))
            row.append(interval(point, low, high))
        rows.append(row)
    mean = ["MEAN", "", "", "", ""]
    for mode in modes:
        mean += [f"{np.mean([v[0] for v in values[mode]]):.4f}", f"{np.mean([v[1] for v in values[mode]]):.0f}"]
    for mode in compared:
        points = [d[0] for d in deltas[mode]]
        mean.append(f"{np.mean(points):+.4f}")
    rows.append(mean)
    signs = [
        f"{m}−a: higher on {sum(d[0] > 0 for d in deltas[m])}, equal on {sum(d[0] == 0 for d in deltas[m])}, "
        f"lower on {sum(d[0] < 0 for d in deltas[m])} of {len(deltas[m])} datasets; interval above 0 on "
        f"{sum(d[1] > 0 for d in deltas[m])}, below 0 on {sum(d[2] < 0 for d in deltas[m])}"
        for m in compared
    ]
    size = args.image_size or next((o for o in pixels if o), "default")
    context = (
        f"{DEFAULT_BACKBONE} at {size} px, seed {args.seed}, {args.bootstrap} paired bootstrap resamples, "
        f"{torch.get_num_threads()} torch threads"
    )
    print()
    print(context)
    print(render(header, rows, markdown=False))
    for line in signs + notes:
        print(line)
    if args.markdown:
        command = "python bench/quality.py " + " ".join(shlex.quote(a) for a in sys.argv[1:])
        stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
        text = [f"\n`{command}` ({stamp}; {context}):\n", render(header, rows, markdown=True), ""]
        text += [f"- {line}" for line in signs + notes]
        with open(args.markdown, "a", encoding="utf-8") as handle:
            handle.write("\n".join(text) + "\n")


if __name__ == "__main__":
    main()
