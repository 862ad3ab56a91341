"""Averaging several backbones' probes: the out-of-fold evidence that decides it, the one-input model that deploys
it (normalisations converted in the graph), and a planned run that writes, records and serves it."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
from conftest import TINY_BACKBONE, TINY_SIZE, run_with
from safetensors.torch import save_file

from transferlab.export.onnx import export_onnx
from transferlab.model.ensemble import AveragedModel, same_geometry
from transferlab.predict.predictor import load_predictor, predict_paths
from transferlab.probe import fit_probe
from transferlab.probe.ensemble import EnsembleChoice, Member, choose_ensemble, log_likelihood
from transferlab.record import layout
from transferlab.record.runfiles import load_run


def _views(seed: int, noise_seed: int, n: int = 160) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """A 3-class signal seen through independent noise: each view alone is a weak feature set."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, n)
    centres = rng.normal(size=(3, 16))
    noise = np.random.default_rng(noise_seed).normal(scale=2.5, size=(n, 16))
    x = centres[y] + noise
    cut = {"train": slice(0, 100), "val": slice(100, 130), "test": slice(130, n)}
    return {k: x[s] for k, s in cut.items()}, {k: y[s] for k, s in cut.items()}


def _member(features: dict[str, np.ndarray], y: dict[str, np.ndarray], name: str) -> Member:
    probe = fit_probe(features, y, ["a", "b", "c"], use_signed_sqrt=False)  # Gaussian views, not pooled activations
    probe.backbone, probe.cut_point = name, "head"
    return Member(probe, features)


def test_independent_views_average_better_and_identical_ones_do_not() -> None:
    first, y = _views(0, 1)
    second, _ = _views(0, 2)
    members = [_member(first, y, "one"), _member(second, y, "two")]
    choice = choose_ensemble(members, y, ["a", "b", "c"], seed=0, groups=None)
    assert choice is not None and choice.kept and choice.cv_score > max(choice.single_cv_scores)
    assert set(choice.metrics) == {"val", "test"} and choice.val_scores is not None
    twins = choose_ensemble([members[0], _member(first, y, "copy")], y, ["a", "b", "c"], seed=0, groups=None)
    assert twins is not None and not twins.kept  # the average of a model with itself is no better
    assert twins.cv_score == pytest.approx(max(twins.single_cv_scores))


def test_log_likelihood_single_and_multi_label() -> None:
    scores = np.array([[0.5, 0.5], [0.9, 0.1]])
    assert log_likelihood(np.array([0, 0]), scores) == pytest.approx(np.mean(np.log([0.5, 0.9])))
    assert log_likelihood(np.array([[1, 0], [0, 0]]), scores) == pytest.approx(np.mean(np.log([0.5, 0.5, 0.1, 0.9])))


class _Mean(torch.nn.Module):
    """A stand-in member: the mean input value per image as a 1-'class' score (what normalisation it saw)."""

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return images.mean(dim=(1, 2, 3)).unsqueeze(1)


def test_each_member_sees_its_own_normalisation() -> None:
    geometry = {"input_size": [3, 8, 8], "interpolation": "bicubic", "crop_pct": 1.0, "crop_mode": "center"}
    tf = {**geometry, "mean": [0.5] * 3, "std": [0.5] * 3}
    imagenet = {**geometry, "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}
    pixels = torch.rand(2, 3, 8, 8)
    as_tf = (pixels - 0.5) / 0.5
    as_imagenet = (pixels - torch.tensor(imagenet["mean"]).view(1, 3, 1, 1)) / torch.tensor(imagenet["std"]).view(
        1, 3, 1, 1
    )
    model = AveragedModel([_Mean(), _Mean()], [tf, imagenet])
    expected = (as_tf.mean(dim=(1, 2, 3)) + as_imagenet.mean(dim=(1, 2, 3))) / 2
    assert torch.allclose(model(as_tf).squeeze(1), expected, atol=1e-6)
    assert not same_geometry([tf, {**imagenet, "input_size": [3, 9, 9]}])


@pytest.fixture
def two_tiny_backbones(tiny_weights: Path, tmp_path: Path) -> dict:
    """Options for a planned run over two tiny timm networks (random weights, batch vs group norm)."""
    torch.manual_seed(1)
    other = timm.create_model("test_efficientnet_gn", pretrained=False)
    path = tmp_path / "gn.safetensors"
    save_file({k: v.contiguous() for k, v in other.state_dict().items()}, str(path))
    return {
        "backbones": [TINY_BACKBONE, "test_efficientnet_gn"],
        "weights": f"{TINY_BACKBONE}={tiny_weights},test_efficientnet_gn={path}",
        "image_size": TINY_SIZE,
        "cache_dir": str(tmp_path / "cache"),
        "runs_dir": str(tmp_path / "runs"),
        "progress": False,
        "workers": 0,
        "time_limit": 300,
    }


def test_a_planned_run_over_two_backbones_records_the_evidence(class_folder: Path, two_tiny_backbones: dict) -> None:
    result = run_with(class_folder, **two_tiny_backbones)
    record = json.loads((result.run_dir / layout.RECORD).read_text())
    evidence = record["ensemble"]
    assert evidence["members"] == [TINY_BACKBONE, "test_efficientnet_gn"] and evidence["cv_images"] > 0
    assert evidence["kept"] == (evidence["cv_log_likelihood"] > max(evidence["single_cv_log_likelihood"].values()))
    plan = json.loads((result.run_dir / layout.PLAN).read_text())
    assert any(s["stage"] == "ensemble of probes" and s["status"] == "done" for s in plan["steps"])


def test_a_deployed_ensemble_predicts_what_the_run_scored(
    class_folder: Path, two_tiny_backbones: dict, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(EnsembleChoice, "kept", property(lambda self: True))  # deploy it whatever CV says
    result = run_with(class_folder, **two_tiny_backbones)
    deployed = json.loads((result.run_dir / layout.DEPLOYED).read_text())
    assert deployed["stage"] == "ensemble" and deployed["members"] == [TINY_BACKBONE, "test_efficientnet_gn"]
    for backbone in deployed["members"]:
        assert (result.run_dir / layout.ENSEMBLE_MEMBERS / backbone / layout.PROBE_WEIGHTS).is_file()
    run = load_run(result.run_dir)
    stage, metrics = run.final_metrics()
    assert stage == "ensemble" and metrics["test"] == result.stage_test_metrics["ensemble"]
    rows = [r for r in run.predictions if r["split"] == "test"]
    columns = [f"p:{name}" for name in result.classes]
    recorded = np.array([[float(r[c]) for c in columns] for r in rows])
    predictor = load_predictor(result.run_dir, device="cpu")
    served = predict_paths(predictor, [class_folder / r["path"] for r in rows])
    assert served.scores.shape == recorded.shape
    # the run scored cached fp32 features; the predictor runs both networks on the images: the same numbers
    assert np.abs(served.scores - recorded).max() < 1e-3
    assert "averaged" in (result.run_dir / layout.REPORT).read_text()
    exported = export_onnx(result.run_dir)  # one graph, both networks; checked against PyTorch on the spot
    assert exported.max_abs_diff <= 1e-4
    assert json.loads(exported.preprocessing_path.read_text())["model_kind"] == "ensemble"
