"""Realistic run directories written directly (no model), following the run-directory contract, for report/advice/runs
tests. Every stage file is present unless switched off; values are plausible numbers from a small 3-class run.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

EVIL = "<script>alert(1)</script>"
CLASSES = ["cat", "dog", EVIL]
LABELS = ["red", "green", "blue"]


def _write_json(path: Path, payload: Any) -> None:
    path.write_text(json.dumps(payload, indent=2))


def _write_csv(path: Path, header: list[str], rows: list[list[Any]]) -> None:
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)


def _images(data: Path, n: int) -> list[str]:
    rng = np.random.default_rng(0)
    data.mkdir(parents=True, exist_ok=True)
    names = []
    for index in range(n):
        name = f"img_{index:03d}.png"
        Image.fromarray(rng.integers(0, 255, (20, 20, 3), dtype=np.uint8)).save(data / name)
        names.append(name)
    return names


def _history(epochs: int, overfit: bool, first_loss: float = 1.2) -> list[dict[str, Any]]:
    rows = []
    for epoch in range(1, epochs + 1):
        val_loss = 0.9 - 0.1 * epoch + (0.12 * (epoch - 3) ** 2 if overfit and epoch > 3 else 0)
        rows.append(
            {
                "epoch": epoch,
                "train_loss": first_loss / epoch,
                "val_loss": val_loss,
                "train_metric": min(0.99, 0.6 + 0.1 * epoch),
                "val_metric": 0.55 + 0.05 * min(epoch, 3),
                "lr": 1e-3,
                "seconds": 2.5,
            }
        )
    return rows


def single_label_metrics(accuracy: float, classes: list[str], n: int = 30) -> dict[str, Any]:
    return {
        "n": n,
        "accuracy": accuracy,
        "balanced_accuracy": accuracy - 0.02,
        "macro_f1": accuracy - 0.03,
        "confusion_matrix": [[8, 1, 1], [2, 7, 1], [0, 1, 9]],
        "per_class": [{"class": name, "precision": 0.8, "recall": 0.7, "f1": 0.75, "support": 10} for name in classes],
    }


def make_run(
    runs_dir: Path,
    name: str = "demo",
    *,
    stages: bool = True,
    multilabel: bool = False,
    test_accuracy: float = 0.8,
    class_counts: dict[str, int] | None = None,
    overfit: bool = True,
) -> Path:
    """A complete run directory in ``runs_dir/name`` with images under ``runs_dir/name-data``."""
    run = runs_dir / name
    run.mkdir(parents=True)
    data = runs_dir / f"{name}-data"
    files = _images(data, 12)
    classes = LABELS if multilabel else CLASSES
    counts = class_counts or {name: 40 for name in classes}
    _write_json(
        run / "config.json",
        {
            "data": str(data),
            "backbone": "test_efficientnet",
            "weights": None,
            "cut_point": "head",
            "image_size": 64,
            "seed": 0,
            "subset": None,
            "val_fraction": 0.15,
            "test_fraction": 0.15,
            "label_sep": None,
            "batch_size": 32,
            "workers": 0,
            "allow_download": False,
        },
    )
    _write_json(run / "environment.json", {"python": "3.11", "packages": {"torch": "2"}, "command": ["transferlab"]})
    _write_json(run / "process.json", {"command": ["transferlab", "run", str(data)], "peak_memory_mb": 812.5})
    _write_json(
        run / "record.json",
        {
            "task": "multi-label" if multilabel else "single-label",
            "classes": classes,
            "class_counts": counts,
            "split_counts": {"train": 84, "val": 18, "test": 18},
            "split_digest": "abc123",
            "backbone": {"name": "test_efficientnet", "params": 364000, "weights_origin": "local file"},
            "probe": {"kind": "logistic_regression", "C": [0.1, 1.0, 10.0] if multilabel else 1.0, "cut_point": "head"},
        },
    )
    if multilabel:
        split_metrics = {
            "n": 18,
            "mAP": 0.7,
            "macro_auc": 0.8,
            "macro_f1": 0.6,
            "micro_f1": 0.65,
            "per_class": [{"class": c, "precision": 0.7, "recall": 0.6, "f1": 0.65, "support": 6} for c in classes],
        }
        metrics = {split: dict(split_metrics) for split in ("train", "val", "test")}
    else:
        metrics = {
            "train": single_label_metrics(0.97, classes, 84),
            "val": single_label_metrics(0.78, classes, 18),
            "test": single_label_metrics(test_accuracy, classes, 18),
        }
    _write_json(run / "metrics.json", metrics)
    _write_json(
        run / "timings.json",
        {
            "extraction_seconds": 3.0,
            "probe_fit_seconds": 0.4,
            "total_seconds": 5.5,
            "extraction": {"computed": 12, "cached": 0, "images_per_second": 40.0, "precision": "bf16"},
        },
    )
    _write_csv(
        run / "split.csv",
        ["path", "sha256", "split"],
        [[f, f"hash{i}", ("train", "val", "test")[i % 3]] for i, f in enumerate(files)],
    )
    (run / "problems.txt").write_text(f"skipped broken_{EVIL}.png: cannot decode image\n")
    (run / "probe.safetensors").write_bytes(bytes(4096))
    if multilabel:
        rng = np.random.default_rng(1)
        rows = []
        for i, f in enumerate(files):
            truth = [c for j, c in enumerate(classes) if (i + j) % 2 == 0]
            probs = rng.random(len(classes))
            predicted = [c for c, p in zip(classes, probs, strict=True) if p >= 0.5]
            rows.append(
                [
                    "val" if i < 6 else "test",
                    f,
                    ";".join(truth),
                    ";".join(predicted),
                    f"{probs.max():.3f}",
                    *[f"{p:.3f}" for p in probs],
                ]
            )
        _write_csv(
            run / "predictions.csv",
            ["split", "path", "true", "predicted", "confidence", *[f"p:{c}" for c in classes]],
            rows,
        )
    else:
        rows = [
            ["val" if i < 6 else "test", f, classes[i % 3], classes[(i + i // 2) % 3], f"{0.5 + i / 40:.3f}"]
            for i, f in enumerate(files)
        ]
        _write_csv(run / "predictions.csv", ["split", "path", "true", "predicted", "confidence"], rows)
    if stages:
        _add_stages(run, classes)
    return run


def _add_stages(run: Path, classes: list[str]) -> None:
    _write_json(
        run / "ranking.json",
        {
            "rows": [
                {
                    "backbone": "test_efficientnet",
                    "cut_point": "head",
                    "available": True,
                    "logme": -0.5,
                    "knn_accuracy": 0.7,
                    "probe_cv_accuracy": 0.75,
                    "extract_seconds": 3.0,
                    "params": 364000,
                    "gflops": 0.012,
                },
                {
                    "backbone": f"net_{EVIL}",
                    "cut_point": "blocks.4",
                    "available": False,
                    "logme": None,
                    "knn_accuracy": None,
                    "probe_cv_accuracy": None,
                    "extract_seconds": None,
                    "params": None,
                    "gflops": None,
                },
            ],
            "chosen": {"backbone": "test_efficientnet", "cut_point": "head", "reason": "highest LogME"},
        },
    )
    trials = [
        {
            "number": n,
            "state": state,
            "params": {"lr": 10 ** -(n + 2), "dropout": 0.1 * n, "head": "mlp"},
            "value": value,
            "seconds": 12.0 + n,
            "curve": _history(6, overfit=True) if state == "COMPLETE" else [],
        }
        for n, state, value in ((0, "COMPLETE", 0.81), (1, "PRUNED", 0.62), (2, "COMPLETE", 0.77), (3, "FAIL", None))
    ]
    _write_json(
        run / "search.json",
        {
            "study_name": "demo-study",
            "storage": "sqlite:///search.db",
            "direction": "minimize",
            "n_trials": 4,
            "best": {
                "number": 0,
                "value": 0.81,
                "params": trials[0]["params"],
                "spec": {"kind": "mlp", "layers": [{"type": "Flatten"}, {"type": "Linear", "out": 64}]},
                "head_params": 52000,
                "head_mb": 0.21,
                "test_metrics": single_label_metrics(0.8167, classes),
            },
            "ensemble": {"trials": [0, 2], "combine": "mean of member probabilities"},
            "objective": "val_loss",
            "explanation": "Trial 0 won with the lowest validation loss.",
            "trials": trials,
            "importance": {"lr": 0.7, "dropout": 0.2, "head": 0.1},
            "test_metrics": single_label_metrics(0.83, classes),
            "probe_test_metrics": single_label_metrics(0.8, classes),
        },
    )
    _write_json(
        run / "fractions.json",
        {
            "metric": "accuracy",
            "rows": [
                {"fraction": f, "n_train": int(84 * f), "train_metric": 0.99, "val_metric": 0.5 + 0.25 * f}
                for f in (0.25, 0.5, 1.0)
            ],
        },
    )
    _write_json(
        run / "finetune.json",
        {
            "metric": "accuracy",
            "stages": [
                {
                    "name": "head",
                    "frozen_blocks": ["blocks.0"],
                    "trainable_blocks": [],
                    "bn_policy": "frozen",
                    "lr_head": 1e-3,
                    "lr_backbone": None,
                    "best_epoch": 4,
                    "stop_reason": "early stopping",
                    "restarts": [],
                    "history": _history(5, overfit=False),
                },
                {
                    "name": "top blocks",
                    "frozen_blocks": [],
                    "trainable_blocks": ["blocks.5", "blocks.6"],
                    "bn_policy": "train",
                    "lr_head": 1e-4,
                    "lr_backbone": 1e-5,
                    "best_epoch": 3,
                    "stop_reason": "patience",
                    "restarts": [{"epoch": 2, "loss": 9.1, "old_lr": 1e-3, "new_lr": 1e-4, "reason": "loss diverged"}],
                    "history": _history(7, overfit=True, first_loss=2.0),
                },
            ],
            "test_metrics": single_label_metrics(0.86, classes),
            "lp_init": True,
            "head_init": "probe",
        },
    )
    Image.new("RGB", (64, 32), (200, 100, 50)).save(run / "augmentation_preview.png")


# Every report section id, in page order; a fully populated run shows all of them.
ALL_SECTIONS = (
    "advice",
    "metrics",
    "curves",
    "confusion",
    "per-class",
    "worst",
    "augmentation",
    "ranking",
    "trials",
    "fractions",
    "cost",
    "problems",
)
