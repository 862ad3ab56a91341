"""The ``transferlab`` command. User mistakes end with one ``error:`` line and exit code 2, never a traceback."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from transferlab.errors import TransferlabError


def _add_data_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "data",
        help="folder with one sub-folder per class, or a CSV (path,label | path,labels | "
        "path + one 0/1 column per label); CSV paths are relative to the CSV's folder",
    )
    parser.add_argument("--label-sep", help="separator inside a 'labels' cell (default: ';' or '|', else spaces)")


def _add_run_options(parser: argparse.ArgumentParser) -> None:
    _add_data_options(parser)
    parser.add_argument("--backbone", default=None, help="timm model name (default: tf_efficientnet_lite0, packaged)")
    parser.add_argument("--weights", help="local weights file (.safetensors, or .pth loaded with weights_only=True)")
    parser.add_argument("--allow-download", action="store_true", help="fetch weights from the Hugging Face hub")
    parser.add_argument("--cut-point", default=None, help="where to take features: a stage (e.g. blocks.4) or 'head'")
    parser.add_argument("--seed", type=int, default=0, help="seed for split, subset and models (default 0)")
    parser.add_argument("--subset", type=float, help="use a stratified fraction of the data, e.g. 0.25")
    parser.add_argument("--val-fraction", type=float, default=0.15)
    parser.add_argument("--test-fraction", type=float, default=0.15)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--workers", type=int, help="image decoding processes (default: cores - 1, at most 2)")
    parser.add_argument("--runs-dir", default="runs", help="where run directories go (default ./runs)")
    parser.add_argument("--name", help="run name (default: <data>-<UTC time>)")
    parser.add_argument("--cache-dir", help="feature cache (default $TRANSFERLAB_CACHE or ~/.cache/transferlab)")
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="transferlab", description=__doc__.splitlines()[0] if __doc__ else None)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    run = commands.add_parser(
        "run",
        help="the whole pipeline on DATA: features → probe → record and report",
        description="Extract (or reuse cached) features of a pretrained backbone, fit a "
        "cross-validated linear probe, score it on a held-out test split and write "
        "runs/<name>/ with config, split, metrics, timings and report.html.",
    )
    _add_run_options(run)
    probe = commands.add_parser(
        "probe",
        help="linear probe only (logistic regression on cached features)",
        description="Fit and score a logistic-regression probe on cached backbone features.",
    )
    _add_run_options(probe)
    commands.add_parser(
        "backbones",
        help="list backbones with local weights",
        description="Packaged backbones and timm models found in the local Hugging Face cache. Any "
        "other timm model works with --weights FILE or --allow-download.",
    )
    info = commands.add_parser(
        "info",
        help="class counts, image sizes, problems and duplicates in DATA",
        description="Decode every image once and report what a run would skip, and why.",
    )
    _add_data_options(info)
    return parser


def _run(args: argparse.Namespace) -> None:
    from transferlab.backbones import DEFAULT_BACKBONE
    from transferlab.backbones.model import HEAD
    from transferlab.pipeline import run

    result = run(
        args.data,
        runs_dir=args.runs_dir,
        name=args.name,
        cache_dir=args.cache_dir,
        progress=not args.no_progress,
        backbone=args.backbone or DEFAULT_BACKBONE,
        weights=args.weights,
        allow_download=args.allow_download,
        cut_point=args.cut_point or HEAD,
        seed=args.seed,
        subset=args.subset,
        val_fraction=args.val_fraction,
        test_fraction=args.test_fraction,
        label_sep=args.label_sep,
        batch_size=args.batch_size,
        workers=args.workers,
    )
    extraction = result.extraction
    speed = f", {extraction['images_per_second']:.1f} img/s" if extraction["images_per_second"] else ""
    print(f"features: {extraction['computed']} computed, {extraction['cached']} from cache{speed}")
    print(result.summary())
    print(f"run directory: {result.run_dir}")
    print(f"report: {result.report_path}")


def _backbones(_: argparse.Namespace) -> None:
    from transferlab.backbones import available_backbones

    for entry in available_backbones():
        print(f"{entry.name:<32} {'local weights: ' + entry.weights if entry.weights else 'no local weights'}")


def _info(args: argparse.Namespace) -> None:
    from transferlab.info import dataset_info

    print(dataset_info(args.data, label_sep=args.label_sep).render())


COMMANDS = {"run": _run, "probe": _run, "backbones": _backbones, "info": _info}


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        COMMANDS[args.command](args)
    except TransferlabError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; finished work (cached features, written files) is kept", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
