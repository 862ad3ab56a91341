"""Argument groups shared by several commands (data selection, backbone and run-directory options)."""

from __future__ import annotations

import argparse
from typing import Any

from transferlab import devices
from transferlab.backbones import DEFAULT_BACKBONE
from transferlab.backbones.cut import HEAD
from transferlab.config import WHOLE_IMAGE, RunConfig


def add_search_options(parser: Any, *, trials_default: int, trials_help: str) -> None:
    """The head-search budget shared by ``search`` and ``run``: trials, time limit, parallel processes."""
    parser.add_argument("--trials", type=int, default=trials_default, help=trials_help)
    parser.add_argument("--timeout", type=float, help="stop starting new search trials after this many seconds")
    parser.add_argument(
        "--jobs",
        type=int,
        default=1,
        help="processes running trials side by side, one core each (default 1: the trial sequence replays exactly "
        "from --seed; N > 1 finishes about N times sooner, in a timing-dependent order)",
    )
    parser.add_argument(
        "--ensemble",
        type=int,
        default=5,
        help="the search predicts with the average of its K best heads by validation loss (default 5; 1: the "
        "single best head). Fine-tuning starts from the single best head either way",
    )


def _crop_pct(text: str) -> float | None:
    return None if text.strip().lower() == "model" else float(text)


def add_data_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "data",
        help="folder with one sub-folder per class, or a CSV (path,label | path,labels | path + one 0/1 column "
        "per label); CSV paths are relative to the CSV's folder",
    )
    parser.add_argument("--label-sep", help="separator inside a 'labels' cell (default: ';' or '|', else spaces)")


def add_run_options(parser: argparse.ArgumentParser, *, run_directory: bool = True) -> None:
    """What a run computes on; ``run_directory=False`` for commands that only fill the cache (no --runs-dir/--name)."""
    add_data_options(parser)
    parser.add_argument("--backbone", default=DEFAULT_BACKBONE, help=f"timm model name (default: {DEFAULT_BACKBONE})")
    parser.add_argument(
        "--weights",
        help="local weights: FILE for the one backbone (.safetensors, or .pth loaded with weights_only=True), or "
        "NAME=FILE,NAME=FILE to give several backbones their own (the others use packaged or Hugging Face cache "
        "weights)",
    )
    parser.add_argument("--allow-download", action="store_true", help="fetch weights from the Hugging Face hub")
    parser.add_argument("--image-size", type=int, help="override the backbone's input resolution (pixels)")
    parser.add_argument(
        "--crop-pct",
        type=_crop_pct,
        default=WHOLE_IMAGE,
        help="centre-crop ratio before resizing: 1.0 (default) keeps the whole image; 'model' uses the backbone's "
        "own (e.g. 0.875 for the EfficientNet-Lites), which cuts the border of small centred objects",
    )
    parser.add_argument("--cut-point", default=HEAD, help="where to take features: a stage (e.g. blocks.4) or 'head'")
    parser.add_argument(
        "--single-depth",
        dest="multi_depth",
        action="store_false",
        help="the probe uses only --cut-point's features (by default, at 'head', it also tries the pre-logits joined "
        "with the last two stages' pooled features and keeps what cross-validates better on train + val)",
    )
    parser.add_argument(
        "--raw-features",
        dest="signed_sqrt",
        action="store_false",
        help="the probe reads the pooled features as they are (by default it reads sign(x)*sqrt(|x|) of them, "
        "which cross-validated better on the quality benchmark)",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed for split, subset and models (default 0)")
    parser.add_argument("--subset", type=float, help="use a stratified fraction of the data, e.g. 0.25")
    parser.add_argument(
        "--test",
        metavar="DIR",
        help="a separate labelled test folder or CSV (same classes); it is the test split, so none is carved out "
        "of DATA and every DATA image is used for training and model selection",
    )
    parser.add_argument(
        "--groups",
        metavar="COLUMN",
        help="CSV column naming each image's group (patient, session, source object): a group stays on one side "
        "of every split and cross-validation fold, so internal estimates are honest on repeated subjects",
    )
    parser.add_argument("--val-fraction", type=float, default=0.15)
    parser.add_argument("--test-fraction", type=float, default=0.15, help="unused with --test (default 0.15)")
    add_device_options(parser)
    if run_directory:
        parser.add_argument("--runs-dir", default="runs", help="where run directories go (default ./runs)")
        parser.add_argument("--name", help="run name (default: <data>-<UTC time>)")
    parser.add_argument("--cache-dir", help="feature cache (default $TRANSFERLAB_CACHE or ~/.cache/transferlab)")
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")


def add_device_argument(parser: argparse.ArgumentParser) -> None:
    """``--device``, on every command that runs a network."""
    parser.add_argument("--device", default=devices.AUTO, help=devices.DEVICE_HELP)


def add_device_options(parser: argparse.ArgumentParser) -> None:
    """Where networks run and how images reach them (the run-like commands)."""
    add_device_argument(parser)
    parser.add_argument(
        "--batch-size", type=int, help="images per batch (default: 32 on the CPU, 128 on a GPU; fine-tuning 32)"
    )
    parser.add_argument(
        "--workers", type=int, help="image decoding processes (default: cores - 1, at most 2 on the CPU, 8 on a GPU)"
    )


RUN_OPTION_NAMES = (
    "test",
    "groups",
    "backbone",
    "weights",
    "allow_download",
    "image_size",
    "crop_pct",
    "cut_point",
    "multi_depth",
    "signed_sqrt",
    "seed",
    "subset",
    "val_fraction",
    "test_fraction",
    "label_sep",
    "batch_size",
    "workers",
    "device",
)


def run_config(args: argparse.Namespace, **stages: Any) -> RunConfig:
    """The one place a command line becomes a :class:`RunConfig` (``stages``: the optional-stage fields)."""
    return RunConfig(data=str(args.data), **{name: getattr(args, name) for name in RUN_OPTION_NAMES}, **stages)


def output_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    """Where :func:`transferlab.run` writes and whether it shows progress (nothing here changes a result)."""
    return {"runs_dir": args.runs_dir, "name": args.name, "cache_dir": args.cache_dir, "progress": not args.no_progress}
