"""Loading a run's final model, ONNX export, and ``transferlab predict``."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
from conftest import DEMO, TINY_BACKBONE, TINY_SIZE, make_class_folder, run_with
from safetensors.torch import save_file

import transferlab
from transferlab.cli import main
from transferlab.data.images import load_image
from transferlab.errors import TransferlabError
from transferlab.export import export_onnx
from transferlab.export.onnx import INPUT_NAME, onnx_session, preprocessing_description
from transferlab.finetune.network import build_network
from transferlab.heads import HeadSpec
from transferlab.model import load_run_model
from transferlab.model.network import saved_state
from transferlab.model.probe_head import ProbeHead, probe_tensors
from transferlab.predict import collect_inputs, load_predictor, predict_paths
from transferlab.probe import fit_probe


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory: pytest.TempPathFactory, tiny_weights: Path) -> transferlab.RunResult:
    """One float32 run on the colour folder (cut at blocks.3), shared by the tests that only read it."""
    root = tmp_path_factory.mktemp("export-run")
    options = {"backbone": TINY_BACKBONE, "weights": str(tiny_weights), "image_size": TINY_SIZE, "workers": 0}
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("TRANSFERLAB_FP32", "1")
        return run_with(
            make_class_folder(root / "data"),
            runs_dir=root / "runs",
            name="tiny",
            cache_dir=root / "cache",
            cut_point="blocks.3",
            progress=False,
            **options,
        )


def _read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def _batch(model, paths: list[Path]) -> torch.Tensor:
    transform = model.transform()
    return torch.stack([transform(load_image(path)) for path in paths])


@pytest.mark.parametrize(
    ("n_classes", "train_classes", "multilabel"),
    [(4, 3, False), (2, 2, False), (3, 3, True)],
    ids=["multiclass-with-unseen-class", "binary", "multilabel"],
)
def test_probe_head_reproduces_the_fitted_probe(n_classes: int, train_classes: int, multilabel: bool) -> None:
    rng = np.random.default_rng(0)
    features, targets = {}, {}
    for split_name, n in (("train", 60), ("val", 30)):
        if multilabel:
            targets[split_name] = (rng.random((n, n_classes)) < 0.5).astype(np.uint8)
            centers = targets[split_name] @ rng.normal(size=(n_classes, 6))
        else:
            targets[split_name] = np.arange(n) % train_classes
            centers = np.eye(train_classes, 6)[targets[split_name]] * 2
        features[split_name] = (centers + rng.normal(size=(n, 6))).astype(np.float32)
    classes = [f"c{i}" for i in range(n_classes)]
    probe = fit_probe(features, targets, classes)
    assert probe.signed_sqrt  # the default, on features of both signs
    head = ProbeHead(probe_tensors(probe.model), n_classes, multilabel, signed_sqrt=True)
    expected = probe.predict_scores(features["val"])
    actual = head(torch.from_numpy(features["val"])).numpy()
    assert actual.shape == (30, n_classes)
    np.testing.assert_allclose(actual, expected, atol=1e-5)


def test_loaded_run_model_reproduces_the_runs_own_predictions(tiny_run: transferlab.RunResult) -> None:
    model = load_run_model(tiny_run.run_dir)
    assert (model.kind, model.cut_point, model.classes) == ("probe", "blocks.3", ["blue", "green", "red"])
    # test rows are the deployed model's; val rows come from the probe's train-only twin (val is in the deployed fit)
    rows = [row for row in _read_csv(tiny_run.run_dir / "predictions.csv") if row["split"] == "test"]
    data = Path(tiny_run.config.data)
    with torch.inference_mode():
        scores = model.module(_batch(model, [data / row["path"] for row in rows])).numpy()
    assert rows and [model.classes[i] for i in scores.argmax(axis=1)] == [row["predicted"] for row in rows]
    np.testing.assert_allclose(scores.max(axis=1), [float(row["confidence"]) for row in rows], atol=2e-4)


def test_loading_refuses_other_weights_and_non_runs(tiny_run: transferlab.RunResult, tmp_path: Path) -> None:
    run_dir = shutil.copytree(tiny_run.run_dir, tmp_path / "run")
    config = json.loads((run_dir / "config.json").read_text())
    torch.manual_seed(1)
    other = tmp_path / "other.safetensors"
    save_file({k: v.contiguous() for k, v in timm.create_model(TINY_BACKBONE).state_dict().items()}, str(other))
    (run_dir / "config.json").write_text(json.dumps({**config, "weights": str(other)}))
    with pytest.raises(TransferlabError, match="not the ones this run used"):
        load_run_model(run_dir)
    with pytest.raises(TransferlabError, match="not a run directory"):
        load_run_model(tmp_path)


def test_onnx_export_matches_pytorch_with_any_batch_size(
    tiny_run: transferlab.RunResult, tmp_path: Path, capsys
) -> None:
    runs_dir = str(tiny_run.run_dir.parent)
    assert main(["export", "tiny", "--runs-dir", runs_dir, "--format", "onnx", "--out", str(tmp_path / "onnx")]) == 0
    out = tmp_path / "onnx"
    assert "onnxruntime matches PyTorch" in capsys.readouterr().out
    meta = json.loads((out / "preprocessing.json").read_text())
    assert meta["classes"] == ["blue", "green", "red"] and meta["multilabel"] is False
    assert meta["input_size"] == [3, TINY_SIZE, TINY_SIZE] and meta["resize"]["interpolation"] == "bicubic"
    assert meta["resize"]["shorter_side"] >= TINY_SIZE and len(meta["mean"]) == len(meta["std"]) == 3
    model = load_run_model(tiny_run.run_dir)
    images = _batch(model, sorted((Path(tiny_run.config.data) / "red").glob("*.png"))[:5])
    with torch.inference_mode():
        expected = model.module(images).numpy()
    actual = onnx_session(out / "model.onnx").run(None, {INPUT_NAME: images.numpy()})[0]
    assert actual.shape == (5, 3)
    np.testing.assert_allclose(actual, expected, atol=1e-5)


def test_finetuned_model_is_loaded_as_the_runs_final_model(tmp_path: Path) -> None:
    """``finetuned.safetensors`` + ``finetuned.json`` as the fine-tuning stage writes them reload the same network."""
    torch.manual_seed(0)
    network = timm.create_model(TINY_BACKBONE, num_classes=0).eval()
    spec = HeadSpec(pooling="avgmax", widths=(8,))
    trained = build_network(network, "blocks.3", spec, 2, 48).eval()
    save_file(saved_state(trained, network), str(tmp_path / "finetuned.safetensors"))
    preprocessing = {"input_size": [3, 48, 48], "interpolation": "bilinear", "mean": [0.5] * 3, "std": [0.5] * 3}
    saved = {
        "backbone": TINY_BACKBONE,
        "head_spec": spec.to_dict(),
        "cut_point": "blocks.3",
        "classes": ["a", "b"],
        "multilabel": False,
        "thresholds": None,
        "preprocessing": {**preprocessing, "crop_pct": 1.0},
    }
    (tmp_path / "finetuned.json").write_text(json.dumps(saved))
    loaded = load_run_model(tmp_path)
    assert (loaded.kind, loaded.classes, loaded.preprocessing["input_size"]) == ("finetuned", ["a", "b"], [3, 48, 48])
    images = torch.randn(4, 3, 48, 48)
    with torch.inference_mode():
        np.testing.assert_allclose(loaded.module(images), torch.softmax(trained(images), dim=1), atol=1e-6)


def test_predict_cli_on_a_folder_skips_a_corrupt_image_by_name(
    tiny_run: transferlab.RunResult, tmp_path: Path, capsys
) -> None:
    folder = shutil.copytree(tiny_run.config.data, tmp_path / "new")
    (folder / "green" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    out = tmp_path / "preds.csv"
    assert main(["predict", str(tiny_run.run_dir), str(folder), "--out", str(out)]) == 0
    captured = capsys.readouterr()
    assert "broken.png" in captured.err and "Traceback" not in captured.err
    rows = _read_csv(out)
    assert len(rows) == 36 and not any("broken" in row["path"] for row in rows)
    assert list(rows[0]) == ["path", "predicted", "confidence", "p:blue", "p:green", "p:red"]
    for row in rows:
        probabilities = [float(row[f"p:{name}"]) for name in tiny_run.classes]
        assert sum(probabilities) == pytest.approx(1, abs=1e-4)
        assert float(row["confidence"]) == pytest.approx(max(probabilities), abs=1e-4)
    accuracy = np.mean([row["predicted"] == Path(row["path"]).parent.name for row in rows])
    assert accuracy > 0.9


def test_predict_takes_csvs_and_reports_missing_inputs(class_folder: Path, tmp_path: Path) -> None:
    table = class_folder / "list.csv"
    table.write_text("id,path\n1,red/red_000.png\n2,blue/blue_001.png\n")
    paths, missing = collect_inputs([table, class_folder / "green" / "green_002.png", tmp_path / "nope.png"])
    assert paths == [
        class_folder / "red/red_000.png",
        class_folder / "blue/blue_001.png",
        class_folder / "green/green_002.png",
    ]
    assert [(p.where, p.reason) for p in missing] == [(str(tmp_path / "nope.png"), "file not found")]
    with pytest.raises(TransferlabError, match="no images"):
        collect_inputs([tmp_path / "nope.png"])


def test_predict_user_mistakes_are_one_line_errors(tmp_path: Path, capsys) -> None:
    assert main(["predict", str(tmp_path), str(tmp_path), "--out", str(tmp_path / "p.csv")]) == 2
    assert capsys.readouterr().err.startswith("error: ")
    assert main(["export", "missing-run", "--runs-dir", str(tmp_path)]) == 2
    assert "error: no run 'missing-run'" in capsys.readouterr().err


def test_multilabel_predictions_apply_the_tuned_thresholds(class_folder: Path, tiny_run_options: dict) -> None:
    images = sorted(class_folder.rglob("*.png"))
    table = class_folder / "labels.csv"
    table.write_text(
        "path,labels\n"
        + "".join(
            f"{p.relative_to(class_folder)},{p.parent.name}{';even' if i % 2 == 0 else ''}\n"
            for i, p in enumerate(images)
        )
    )
    run = run_with(table, name="ml", **tiny_run_options)
    thresholds = json.loads((run.run_dir / "probe.json").read_text())["thresholds"]
    assert preprocessing_description(load_run_model(run.run_dir))["thresholds"] == thresholds
    predictor = load_predictor(run.run_dir)
    np.testing.assert_allclose(predictor.thresholds, thresholds)
    predictor.thresholds = np.asarray([0.05, 0.5, 0.95, 0.3])
    predictions = predict_paths(predictor, images)
    assert any(";" in labels for labels in predictions.labels)
    for labels, scores in zip(predictions.labels, predictions.scores, strict=True):
        expected = [name for name, s, t in zip(run.classes, scores, predictor.thresholds, strict=True) if s >= t]
        assert labels == ";".join(expected)
    clf = transferlab.ImageClassifier.load(run.run_dir)
    chosen = clf.predict_proba(images[:6]) >= np.asarray(thresholds)
    assert clf.predict(images[:6]) == [[run.classes[i] for i in np.flatnonzero(row)] for row in chosen]


@pytest.mark.slow
def test_lite0_demo_run_onnx_predicts_the_same_test_classes_as_pytorch(tmp_path: Path) -> None:
    run = run_with(
        DEMO, runs_dir=tmp_path / "runs", name="demo", cache_dir=tmp_path / "cache", subset=0.25, progress=False
    )
    test_paths = [DEMO / row["path"] for row in _read_csv(run.run_dir / "split.csv") if row["split"] == "test"]
    onnx = predict_paths(load_predictor(export_onnx(run.run_dir).out_dir), test_paths)
    torch_predictions = predict_paths(load_predictor(run.run_dir), test_paths)
    assert len(onnx.labels) == len(test_paths) >= 25
    assert onnx.labels == torch_predictions.labels
    np.testing.assert_allclose(onnx.scores, torch_predictions.scores, atol=1e-4)
    # the run's reported test metric is the deployed model's, image by image (features are bf16 for training, but
    # validation and test features are fp32, as in predict and ONNX)
    assert run.extraction["precision"] == "bf16" and run.extraction["held_out_fp32"]["images"] >= 2 * 25
    reported = {row["path"]: row["predicted"] for row in _read_csv(run.run_dir / "predictions.csv")}
    assert onnx.labels == [reported[str(path.relative_to(DEMO))] for path in test_paths]
    accuracy = np.mean([label == path.parent.name for label, path in zip(onnx.labels, test_paths, strict=True)])
    assert accuracy == pytest.approx(run.metrics["test"]["accuracy"], abs=1e-9)


def test_probe_on_joined_depths_is_deployed_exported_and_refused_for_fine_tuning(
    tmp_path: Path, tiny_weights: Path
) -> None:
    """A joined cut point (pooled features of several depths side by side) reloads and exports as one graph that
    reproduces the run's own test predictions; fine-tuning, which needs one cut point, refuses it in one line."""
    options = {"backbone": TINY_BACKBONE, "weights": str(tiny_weights), "image_size": TINY_SIZE, "workers": 0}
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("TRANSFERLAB_FP32", "1")
        run = run_with(
            make_class_folder(tmp_path / "data"),
            runs_dir=tmp_path / "runs",
            name="joined",
            cache_dir=tmp_path / "cache",
            cut_point="blocks.1+blocks.3+head",
            progress=False,
            **options,
        )
    model = load_run_model(run.run_dir)
    assert model.cut_point == "blocks.1+blocks.3+head" and model.module.joined == [1, 3, None]
    rows = [row for row in _read_csv(run.run_dir / "predictions.csv") if row["split"] == "test"]
    images = _batch(model, [Path(run.config.data) / row["path"] for row in rows])
    with torch.inference_mode():
        expected = model.module(images).numpy()
    np.testing.assert_allclose(expected.max(axis=1), [float(row["confidence"]) for row in rows], atol=2e-4)
    out = export_onnx(run.run_dir, tmp_path / "onnx").out_dir
    actual = onnx_session(out / "model.onnx").run(None, {INPUT_NAME: images.numpy()})[0]
    np.testing.assert_allclose(actual, expected, atol=1e-5)
    with pytest.raises(TransferlabError, match="joins several cut points"):
        run_with(tmp_path / "data", cut_point="blocks.1+head", finetune={"epochs": 1}, progress=False, **options)


def test_probe_keeps_the_input_that_cross_validates_best(tiny_run_options: dict, class_folder: Path) -> None:
    result = run_with(class_folder, name="depths", **tiny_run_options)
    probe = result.record["probe"]
    assert set(probe["candidates"]) == {"head", "blocks.3+blocks.4+head"}
    assert probe["candidates"][probe["cut_point"]] == max(probe["candidates"].values())
    single = run_with(class_folder, name="single", multi_depth=False, **tiny_run_options)
    assert list(single.record["probe"]["candidates"]) == ["head"]
