"""Inference of a run's final model: onnxruntime on the exported graph vs the same model in PyTorch (fp32).

A Lite0 probe run on a subset of the demo photos is exported to ONNX; both sides then score the same preprocessed
batches (decoding excluded, so the model is what is compared). Rounds alternate so background load hits both
alike. Also prints export time, file size, and how closely the two agree (max |Δp|, same predicted class).

    python bench/export.py [--subset 0.25] [--images 96] [--rounds 2]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

import transferlab
from transferlab.data.images import load_image
from transferlab.export import export_onnx
from transferlab.export.onnx import INPUT_NAME, onnx_session
from transferlab.model import load_run_model

DEMO = Path(__file__).resolve().parents[1] / "examples" / "fashion"


def images_per_second(score, batches: list[torch.Tensor]) -> tuple[float, np.ndarray]:
    start = time.perf_counter()
    scores = np.concatenate([score(batch) for batch in batches])
    return sum(len(b) for b in batches) / (time.perf_counter() - start), scores


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--subset", type=float, default=0.25)
    parser.add_argument("--images", type=int, default=96)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(2)
    with tempfile.TemporaryDirectory() as scratch:
        run = transferlab.run(
            transferlab.RunConfig(str(DEMO), subset=args.subset),
            runs_dir=Path(scratch) / "runs",
            cache_dir=Path(scratch) / "cache",
            progress=False,
            name="bench",
        )
        started = time.perf_counter()
        exported = export_onnx(run.run_dir)
        export_seconds = time.perf_counter() - started
        model = load_run_model(run.run_dir)
        transform = model.transform()
        paths = sorted(DEMO.rglob("*.png"))[:: max(1, 800 // args.images)][: args.images]
        images = torch.stack([transform(load_image(path)) for path in paths])
        batches = list(images.split(args.batch_size))
        session = onnx_session(exported.model_path)

        def torch_scores(batch: torch.Tensor) -> np.ndarray:
            with torch.inference_mode():
                return model.module(batch).numpy()

        def onnx_scores(batch: torch.Tensor) -> np.ndarray:
            return session.run(None, {INPUT_NAME: batch.numpy()})[0]

        speeds: dict[str, list[float]] = {"pytorch": [], "onnxruntime": []}
        for _ in range(args.rounds):
            speed, reference = images_per_second(torch_scores, batches)
            speeds["pytorch"].append(speed)
            speed, onnx = images_per_second(onnx_scores, batches)
            speeds["onnxruntime"].append(speed)
        best = {name: max(values) for name, values in speeds.items()}
        print(
            f"model: {model.backbone} cut {model.cut_point} + probe, {len(model.classes)} classes, "
            f"{args.images} images at {model.preprocessing['input_size'][1]} px, batch {args.batch_size}"
        )
        print(f"export: {export_seconds:.1f} s, model.onnx {exported.model_path.stat().st_size / 1e6:.1f} MB")
        for name, value in best.items():
            print(f"{name:<12} {value:7.1f} img/s (best of {args.rounds})")
        print(f"ratio onnxruntime / pytorch: {best['onnxruntime'] / best['pytorch']:.2f}x")
        agree = float((reference.argmax(1) == onnx.argmax(1)).mean())
        print(f"agreement: max |dp| {np.abs(reference - onnx).max():.1e}, same class {agree:.1%}")


if __name__ == "__main__":
    main()
