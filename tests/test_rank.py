"""Tests for ranking backbones and cut points: scores, the choice rule, the rank stage, ranking.json and the CLI."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import DEMO, TINY_BACKBONE, TINY_SIZE

from transferlab.backbones import load_backbone
from transferlab.cli import main
from transferlab.config import RunConfig
from transferlab.data.split import cv_folds
from transferlab.errors import TransferlabError
from transferlab.features import FeatureCache
from transferlab.features.extract import ExtractionReport
from transferlab.fileio import write_json
from transferlab.metrics import classification_metrics, headline
from transferlab.rank.cost import COST_FILE, backbone_cost
from transferlab.rank.logme import logme_score
from transferlab.rank.ranking import RankRow, choose, rank, write_ranking
from transferlab.rank.scores import fold_metric, knn_cv, neighbour_count, probe_cv
from transferlab.record import RunDir

UNAVAILABLE = "resnet18"
"""A real timm model with no packaged weights (and no Hugging Face cache in tests, which run offline)."""

CONTRACT_ROW_KEYS = {
    "backbone",
    "cut_point",
    "available",
    "logme",
    "knn_accuracy",
    "probe_cv_accuracy",
    "extract_seconds",
    "params",
    "gflops",
}


def _feature_sets(y: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Features that encode the targets (plus noise dimensions) and pure-noise features of the same shape."""
    encoded = np.eye(int(y.max()) + 1)[y] if y.ndim == 1 else y.astype(float)
    noise = rng.standard_normal((len(y), 12))
    informative = np.hstack([2 * encoded + 0.5 * rng.standard_normal(encoded.shape), noise])
    return informative, rng.standard_normal(informative.shape)


@pytest.mark.parametrize("multilabel", [False, True])
def test_every_score_ranks_informative_features_above_noise(multilabel: bool) -> None:
    rng = np.random.default_rng(0)
    y = (rng.random((150, 4)) < 0.4).astype(np.uint8) if multilabel else rng.integers(0, 4, size=150)
    informative, noise = _feature_sets(y, rng)
    folds = cv_folds(y, seed=0)

    good_knn, bad_knn = knn_cv(informative, y, folds), knn_cv(noise, y, folds)
    (good_probe, _), (bad_probe, _) = probe_cv(informative, y, folds, 0), probe_cv(noise, y, folds, 0)

    assert good_knn.mean > bad_knn.mean + 0.25
    assert good_probe.mean > bad_probe.mean + 0.25
    assert logme_score(informative, y) > logme_score(noise, y)
    assert good_probe.folds == len(folds) == 5
    assert 0 <= good_probe.std_error < 0.1


def test_folds_are_seeded_stratified_and_fewer_for_rare_classes() -> None:
    y = np.repeat([0, 1, 2], [10, 10, 3])
    folds = cv_folds(y, seed=1)
    assert len(folds) == 3  # the rarest class has 3 members: every held-out fold sees it once
    assert all(set(y[held]) == {0, 1, 2} for _, held in folds)
    assert [h.tolist() for _, h in folds] == [h.tolist() for _, h in cv_folds(y, seed=1)]
    assert [h.tolist() for _, h in folds] != [h.tolist() for _, h in cv_folds(y, seed=2)]
    with pytest.raises(TransferlabError, match="at least 4 images"):
        cv_folds(np.array([0, 1, 1]), seed=0)


def test_k_is_sqrt_n_capped_at_20_and_at_the_rarest_class() -> None:
    assert neighbour_count(np.repeat([0, 1], 50)) == 10
    assert neighbour_count(np.repeat([0, 1], 500)) == 20
    assert neighbour_count(np.repeat([0, 1], [97, 3])) == 3
    assert neighbour_count(np.ones((100, 3))) == 10


def _row(backbone: str, cut: str, probe: float, se: float, gflops: float, dim: int, logme: float, knn: float):
    return RankRow(
        backbone, cut, True, logme=logme, knn_accuracy=knn, probe_cv_accuracy=probe, probe_cv_std_error=se,
        dim=dim, params=1, gflops=gflops,
    )  # fmt: skip


def test_choice_rule_prefers_the_cheapest_candidate_within_one_standard_error() -> None:
    best = _row("big", "head", 0.82, 0.02, gflops=2.0, dim=1280, logme=0.9, knn=0.8)
    close_cheap = _row("small", "head", 0.81, 0.01, gflops=0.8, dim=1280, logme=0.5, knn=0.85)
    far_cheapest = _row("tiny", "head", 0.70, 0.01, gflops=0.1, dim=1280, logme=0.1, knn=0.6)
    unavailable = RankRow("gone", None, False, note="no local weights")

    chosen = choose([best, close_cheap, far_cheapest, unavailable])

    assert (chosen.backbone, chosen.cut_point) == ("small", "head")
    assert "within one standard error of the best (big/head, 0.820 ± 0.020)" in chosen.reason
    assert "0.8 vs 2 GFLOPs" in chosen.reason
    assert "LogME prefers big/head (0.900 vs 0.500)" in chosen.reason
    assert "k-NN agrees (0.850 accuracy)" in chosen.reason


def test_choice_rule_outside_the_tie_band_takes_the_best_and_ties_break_on_feature_count() -> None:
    best = _row("a", "head", 0.90, 0.01, gflops=1.0, dim=1280, logme=0.9, knn=0.9)
    cheaper_but_worse = _row("b", "head", 0.85, 0.01, gflops=0.5, dim=1280, logme=0.2, knn=0.8)
    chosen = choose([cheaper_but_worse, best], metric="mAP")
    assert chosen.backbone == "a"
    assert chosen.reason.startswith("highest CV probe mAP 0.900 ± 0.010; LogME agrees (0.900)")

    same_backbone_earlier_cut = _row("a", "blocks.5", 0.895, 0.01, gflops=1.0, dim=192, logme=0.7, knn=0.9)
    chosen = choose([best, same_backbone_earlier_cut])
    assert chosen.cut_point == "blocks.5"
    assert "192 vs 1280 features" in chosen.reason


def test_choice_at_equal_cost_within_the_band_goes_to_the_higher_logme() -> None:
    best = _row("a", "head", 0.90, 0.02, gflops=1.0, dim=1280, logme=0.1, knn=0.9)
    twin = _row("b", "head", 0.89, 0.01, gflops=1.0, dim=1280, logme=0.4, knn=0.9)
    chosen = choose([best, twin])
    assert chosen.backbone == "b"
    assert "at equal cost its LogME is higher: 0.400 vs 0.100" in chosen.reason


def test_flops_are_counted_at_the_configured_resolution_once_per_cache_identity(
    tiny_weights: Path, tmp_path: Path
) -> None:
    small = load_backbone(TINY_BACKBONE, tiny_weights, image_size=32)
    large = load_backbone(TINY_BACKBONE, tiny_weights, image_size=64)
    small_cache = FeatureCache(tmp_path, small.identity())
    measured = ExtractionReport(computed=10, seconds=2.0)

    cost = backbone_cost(small, small_cache, measured)
    assert cost.params == small.count_parameters()
    assert cost.images_per_second == pytest.approx(5.0)
    large_cost = backbone_cost(large, FeatureCache(tmp_path, large.identity()), measured)
    assert large_cost.gflops == pytest.approx(4 * cost.gflops, rel=0.15)  # twice the side, ~4x the work

    stored = json.loads((small_cache.directory / COST_FILE).read_text())
    write_json(small_cache.directory / COST_FILE, {**stored, "gflops": 123.0})
    again = backbone_cost(small, small_cache, ExtractionReport())  # all features cached: nothing new measured
    assert (again.gflops, again.images_per_second) == (123.0, pytest.approx(5.0))


def test_choice_needs_an_available_backbone() -> None:
    with pytest.raises(TransferlabError, match="none has local weights"):
        choose([RankRow("gone", None, False, note="no local weights")])


def _tiny_config(data: Path, weights: Path) -> RunConfig:
    return RunConfig(data=str(data), backbone=TINY_BACKBONE, weights=str(weights), image_size=TINY_SIZE, workers=0)


def test_rank_scores_every_cut_point_and_lists_unavailable_backbones(
    class_folder: Path, tiny_weights: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="transferlab")
    config = _tiny_config(class_folder, tiny_weights)
    ranking = rank(config, [TINY_BACKBONE, UNAVAILABLE], cache_dir=tmp_path / "cache", progress=False)
    messages = [record.getMessage() for record in caplog.records]

    available = [row for row in ranking.rows if row.available]
    assert {row.cut_point for row in available} == {"blocks.0", "blocks.1", "blocks.2", "blocks.3", "blocks.4", "head"}
    assert [r.probe_cv_accuracy for r in available] == sorted((r.probe_cv_accuracy for r in available), reverse=True)
    assert all(0 <= row.probe_cv_accuracy <= 1 and 0 <= row.knn_accuracy <= 1 for row in available)
    assert all(row.gflops > 0 and row.params > 0 and row.extract_seconds > 0 for row in available)
    last = ranking.rows[-1]
    assert (last.backbone, last.available, last.logme) == (UNAVAILABLE, False, None)
    assert "no local weights" in last.note
    assert any(m.startswith(f"{UNAVAILABLE}: unavailable") for m in messages)
    assert ranking.chosen.backbone == TINY_BACKBONE
    assert ranking.metric == "accuracy"
    assert 0 < ranking.n_images < len(list(class_folder.rglob("*.png")))  # train+val only: test is held back

    cost_files = list((tmp_path / "cache").rglob(COST_FILE))
    assert len(cost_files) == 1
    saved = json.loads(cost_files[0].read_text())
    head = next(row for row in available if row.cut_point == "head")
    assert saved["gflops"] == pytest.approx(head.gflops)  # the whole network; earlier cuts cost less
    assert all(row.gflops <= head.gflops and row.params <= head.params for row in available)

    path = write_ranking(RunDir(tmp_path / "runs", "r"), ranking)
    payload = json.loads(path.read_text())
    assert all(set(row) >= CONTRACT_ROW_KEYS for row in payload["rows"])
    assert payload["chosen"]["backbone"] == TINY_BACKBONE
    assert payload["chosen"]["cut_point"] in {row.cut_point for row in available}
    assert payload["chosen"]["reason"]


def test_rank_multilabel_data_scores_map(class_folder: Path, tiny_weights: Path, tmp_path: Path) -> None:
    rows = ["path,labels"]
    for index, image in enumerate(sorted(class_folder.rglob("*.png"))):
        rows.append(f"{image.relative_to(class_folder)},{image.parent.name}{';odd' if index % 2 else ''}")
    csv = class_folder / "labels.csv"
    csv.write_text("\n".join(rows) + "\n")

    ranking = rank(_tiny_config(csv, tiny_weights), [TINY_BACKBONE], cache_dir=tmp_path, progress=False)

    assert ranking.metric == "mAP"
    assert all(0 < row.probe_cv_accuracy <= 1 and 0 < row.knn_accuracy <= 1 for row in ranking.rows)
    assert "CV probe mAP" in ranking.chosen.reason


def test_rank_rejects_unknown_names_and_all_unavailable(class_folder: Path, tiny_weights: Path) -> None:
    config = _tiny_config(class_folder, tiny_weights)
    with pytest.raises(TransferlabError, match="unknown backbone 'resnet_nope'"):
        rank(config, [TINY_BACKBONE, "resnet_nope"], progress=False)
    with pytest.raises(TransferlabError, match="none of resnet18 has local weights"):
        rank(config, [UNAVAILABLE], progress=False)


def test_rank_cli_prints_table_and_choice_and_writes_ranking(
    class_folder: Path, tiny_run_options: dict, capsys: pytest.CaptureFixture
) -> None:
    options = tiny_run_options
    argv = [
        "rank", str(class_folder), "--backbones", f"{TINY_BACKBONE},{UNAVAILABLE}", "--backbone", TINY_BACKBONE,
        "--weights", options["weights"], "--image-size", str(TINY_SIZE), "--cache-dir", options["cache_dir"],
        "--runs-dir", options["runs_dir"], "--name", "ranked", "--workers", "0", "--no-progress",
    ]  # fmt: skip
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert f"chosen: {TINY_BACKBONE} at " in out
    assert f"{UNAVAILABLE}" in out and "unavailable: no local weights" in out
    run_dir = Path(options["runs_dir"]) / "ranked"
    payload = json.loads((run_dir / "ranking.json").read_text())
    assert len(payload["rows"]) == 7
    assert json.loads((run_dir / "config.json").read_text())["backbones"] == [TINY_BACKBONE, UNAVAILABLE]

    assert main(["rank", str(class_folder), "--backbones", UNAVAILABLE, "--no-progress"]) == 2
    assert "error: no backbone could be ranked" in capsys.readouterr().err


@pytest.mark.slow
def test_rank_real_backbones_on_demo_photos(tmp_path: Path) -> None:
    """EfficientNet-Lite0 vs Lite1 on a tenth of the Fashion-MNIST demo: real features must beat chance by far."""
    started = time.perf_counter()
    config = RunConfig(data=str(DEMO), subset=0.1)
    ranking = rank(config, ["tf_efficientnet_lite0", "tf_efficientnet_lite1"], cache_dir=tmp_path, progress=False)
    heads = {row.backbone: row for row in ranking.rows if row.cut_point == "head"}
    assert set(heads) == {"tf_efficientnet_lite0", "tf_efficientnet_lite1"}
    assert all(row.probe_cv_accuracy > 0.4 and row.knn_accuracy > 0.3 for row in heads.values())  # chance: 0.1
    assert heads["tf_efficientnet_lite1"].gflops > heads["tf_efficientnet_lite0"].gflops
    assert heads["tf_efficientnet_lite1"].params > heads["tf_efficientnet_lite0"].params
    print(ranking.table(), f"\n{time.perf_counter() - started:.1f}s")


@pytest.mark.parametrize("multilabel", [False, True])
def test_fold_metric_matches_the_run_metrics(multilabel: bool) -> None:
    """Ranking scores are the run's headline metric (accuracy or mAP), computed without the per-class tables."""
    rng = np.random.default_rng(3)
    y = (rng.random((40, 3)) < 0.5).astype(np.uint8) if multilabel else rng.integers(0, 3, size=40)
    scores = rng.random((40, 3))
    expected = headline(classification_metrics(y, scores, ["a", "b", "c"]))[1]
    assert fold_metric(y, scores) == pytest.approx(expected)
