"""``transferlab predict MODEL PATH... --out preds.csv``: labels and probabilities for new images."""

from __future__ import annotations

import argparse
import sys

from transferlab.commands.options import add_device_argument
from transferlab.record import layout


def register(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "predict",
        help="predict labels for images with a run or an ONNX export",
        description="Score images with a run's final model (PyTorch) or an exported ONNX model and write one row "
        "per image: path, predicted label (multi-label: the labels over their tuned thresholds, ';'-joined), "
        "confidence and one probability column per class. Unreadable images are skipped with the reason.",
    )
    parser.add_argument("model", help="run directory, run name inside --runs-dir, or ONNX export directory")
    parser.add_argument("paths", nargs="+", metavar="PATH", help="image files, folders (recursive) or CSVs of paths")
    parser.add_argument("--out", default=layout.PREDICTIONS, help="CSV to write (default predictions.csv)")
    add_device_argument(parser)
    parser.add_argument("--batch-size", type=int, help="images per batch (default: 32 on the CPU, 128 on a GPU)")
    parser.add_argument("--workers", type=int, default=0, help="image decoding processes (default 0)")
    parser.add_argument("--runs-dir", default="runs", help="where run names are looked up (default ./runs)")
    parser.set_defaults(handler=handle)


def handle(args: argparse.Namespace) -> None:
    from transferlab.predict import collect_inputs, load_predictor, predict_paths, write_predictions_csv
    from transferlab.record.runfiles import resolve_model

    predictor = load_predictor(resolve_model(args.model, args.runs_dir), device=args.device)
    paths, missing = collect_inputs(args.paths)
    predictions = predict_paths(predictor, paths, batch_size=args.batch_size, workers=args.workers)
    for problem in [*missing, *predictions.skipped]:
        print(problem, file=sys.stderr)
    out = write_predictions_csv(args.out, predictions, predictor.classes)
    skipped = len(missing) + len(predictions.skipped)
    print(f"{len(predictions.paths)} image(s) predicted with {predictor.source}, {skipped} skipped: {out}")
