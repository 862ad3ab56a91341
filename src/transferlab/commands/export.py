"""``transferlab export RUN --format onnx``: the run's final model as ONNX plus its preprocessing."""

from __future__ import annotations

import argparse


def register(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "export",
        help="export a run's final model (ONNX + preprocessing.json)",
        description="Write the run's final model (fine-tuned network, else backbone + probe) as an ONNX graph from "
        "normalized images to probabilities (dynamic batch), with preprocessing.json beside it: input size, "
        "resize/crop, interpolation, mean/std, class names, multi-label thresholds. The export is checked against "
        "PyTorch with onnxruntime before anything is written.",
    )
    parser.add_argument("run", help="run directory, or a run name inside --runs-dir")
    parser.add_argument("--format", choices=["onnx"], default="onnx", help="export format (default onnx)")
    parser.add_argument("--out", help="output directory (default RUN/export)")
    parser.add_argument("--runs-dir", default="runs", help="where run names are looked up (default ./runs)")
    parser.set_defaults(handler=handle)


def handle(args: argparse.Namespace) -> None:
    from transferlab.export import export_onnx
    from transferlab.record.runfiles import resolve_model

    result = export_onnx(resolve_model(args.run, args.runs_dir), args.out)
    print(f"onnx model: {result.model_path}")
    print(f"preprocessing: {result.preprocessing_path}")
    print(f"check: onnxruntime matches PyTorch within {result.max_abs_diff:.1e}")
