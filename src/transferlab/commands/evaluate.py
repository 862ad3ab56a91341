"""``transferlab evaluate RUN DATA``: score a finished model on any labelled folder tree or CSV."""

from __future__ import annotations

import argparse
import sys

from transferlab.commands.options import add_device_argument
from transferlab.record import layout


def register(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "evaluate",
        help="score a run (or an ONNX export) on labelled data: metrics, confusion matrix, worst errors",
        description="Score a run's final model (PyTorch) or an exported ONNX model on a labelled folder-per-class "
        "tree or CSV (the formats 'transferlab run' reads) and print the metrics, the confusion matrix, per-class "
        f"scores and the most confident mistakes. Writes RUN/{layout.EVALUATIONS}/<name>/ with "
        f"{layout.EVALUATION_PAGE}, {layout.EVALUATION_METRICS} and {layout.EVALUATION_PREDICTIONS}. Labels are "
        "matched to the model's classes by name; model classes missing from DATA are fine. A class in DATA the "
        "model does not know is an error listing those classes, unless --skip-unknown. Unreadable images and bad "
        "CSV rows are skipped with the reason.",
    )
    parser.add_argument("model", help="run directory, run name inside --runs-dir, or ONNX export directory")
    parser.add_argument("data", help="labelled data: a folder with one sub-folder per class, or a CSV")
    parser.add_argument(
        "--skip-unknown",
        action="store_true",
        help="leave out images of classes the model does not know (multi-label: ignore those labels) and list them "
        "as skipped, instead of stopping with an error",
    )
    parser.add_argument("--name", help="evaluation name, the folder under evaluations/ (default: DATA's name)")
    parser.add_argument("--out", help="folder to write into instead of RUN/evaluations/<name>/")
    parser.add_argument("--worst", type=int, default=10, help="how many worst errors to show (default 10)")
    parser.add_argument("--label-sep", help="separator of a CSV 'labels' column (default: the run's, else ; or |)")
    add_device_argument(parser)
    parser.add_argument("--batch-size", type=int, help="images per batch (default: 32 on the CPU, 128 on a GPU)")
    parser.add_argument("--workers", type=int, default=0, help="image decoding processes (default 0)")
    parser.add_argument("--runs-dir", default="runs", help="where run names are looked up (default ./runs)")
    parser.set_defaults(handler=handle)


def handle(args: argparse.Namespace) -> None:
    from transferlab.errors import require
    from transferlab.evaluate import evaluate, format_evaluation, write_evaluation

    require(args.worst >= 0, f"--worst must be 0 or more, got {args.worst}")
    evaluation = evaluate(
        args.model,
        args.data,
        runs_dir=args.runs_dir,
        name=args.name,
        label_sep=args.label_sep,
        skip_unknown=args.skip_unknown,
        batch_size=args.batch_size,
        workers=args.workers,
        device=args.device,
    )
    for problem in evaluation.problems:
        print(problem, file=sys.stderr)
    print(format_evaluation(evaluation, worst=args.worst))
    page = write_evaluation(evaluation, args.out, worst=args.worst)
    print(f"\nevaluation: {page}")
