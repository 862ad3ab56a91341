"""The linear probe: CV-chosen regularization, honest metrics, tuned multi-label thresholds."""

from __future__ import annotations

import numpy as np

from transferlab.metrics import classification_metrics, tune_thresholds
from transferlab.model.probe_head import signed_sqrt
from transferlab.probe import fit_probe


def _blobs(n: int, classes: int, dim: int, separation: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(classes, dim)) * separation
    y = np.repeat(np.arange(classes), n // classes)
    return centers[y] + rng.normal(size=(len(y), dim)), y


def _splits(x: np.ndarray, y: np.ndarray) -> tuple[dict, dict]:
    order = np.random.default_rng(0).permutation(len(y))
    half, three_quarters = len(y) // 2, 3 * len(y) // 4
    parts = {"train": order[:half], "val": order[half:three_quarters], "test": order[three_quarters:]}
    return {k: x[v] for k, v in parts.items()}, {k: y[v] for k, v in parts.items()}


def test_separable_classes_score_high_and_noise_scores_near_chance() -> None:
    x, y = _blobs(240, 4, 16, 3.0, 0)
    features, targets = _splits(x, y)
    good = fit_probe(features, targets, list("abcd"))
    assert good.metrics["test"]["accuracy"] > 0.9
    noise = {k: np.random.default_rng(1).normal(size=v.shape) for k, v in features.items()}
    bad = fit_probe(noise, targets, list("abcd"))
    assert bad.metrics["test"]["accuracy"] < 0.5
    assert np.asarray(good.metrics["test"]["confusion_matrix"]).sum() == len(targets["test"])


def test_multilabel_probe_reports_map_auc_and_uses_val_thresholds() -> None:
    rng = np.random.default_rng(2)
    y = (rng.random((300, 3)) < 0.4).astype(np.uint8)
    y[y.sum(1) == 0, 0] = 1
    x = y * 2.0 + rng.normal(size=y.shape) * 0.7
    x = np.hstack([x, rng.normal(size=(300, 5))])
    features, targets = _splits(x, y)
    probe = fit_probe(features, targets, ["a", "b", "c"])
    assert probe.thresholds is not None and probe.thresholds.shape == (3,)
    test = probe.metrics["test"]
    assert test["mAP"] > 0.85 and test["macro_auc"] > 0.9


def test_thresholds_maximize_f1_per_label() -> None:
    y = np.array([[1], [1], [0], [0]])
    scores = np.array([[0.3], [0.25], [0.2], [0.1]])
    threshold = tune_thresholds(y, scores)[0]
    assert 0.2 < threshold <= 0.25


def test_single_label_metrics_from_probabilities() -> None:
    scores = np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4], [0.3, 0.7]])
    metrics = classification_metrics(np.array([0, 1, 1, 1]), scores, ["x", "y"])
    assert metrics["accuracy"] == 0.75
    assert metrics["confusion_matrix"] == [[1, 0], [1, 2]]
    assert metrics["balanced_accuracy"] == (1 + 2 / 3) / 2


def test_large_data_chooses_c_on_a_stratified_sample_and_fits_on_every_row(monkeypatch) -> None:
    from transferlab.probe import linear

    x, y = _blobs(600, 4, 16, 1.0, 3)
    features, targets = _splits(x, y)
    full = fit_probe(features, targets, list("abcd"))
    assert full.cv_images == full.fit_images == 450
    monkeypatch.setattr(linear, "CV_ROWS", 200)
    sampled = fit_probe(features, targets, list("abcd"))
    assert sampled.fit_images == 450 and 196 <= sampled.cv_images <= 204
    assert sampled.model[-1].coef_.shape == (4, 16) and not hasattr(sampled.model[-1], "Cs_")  # refit at one C
    assert sampled.C in linear.C_GRID and sampled.cv_score is not None
    assert abs(sampled.metrics["test"]["accuracy"] - full.metrics["test"]["accuracy"]) <= 0.03
    rows = linear.cv_rows(np.concatenate([targets["train"], targets["val"]]), None, 0)
    assert np.bincount(np.concatenate([targets["train"], targets["val"]])[rows]).min() >= 45  # every class's share


def test_sampled_fits_start_from_the_last_fits_weights_and_reach_the_same_optimum(monkeypatch) -> None:
    from sklearn.linear_model import LogisticRegression

    from transferlab.probe import linear

    x, y = _blobs(600, 4, 16, 1.0, 5)
    features, targets = _splits(x, y)
    monkeypatch.setattr(linear, "CV_ROWS", 200)
    probe = fit_probe(features, targets, list("abcd"), use_signed_sqrt=False)
    assert probe.train_model[-1].warm_start and probe.model[-1].warm_start  # twin from the sample, then deployed
    fit_x = np.concatenate([features["train"], features["val"]])
    cold = linear.probe_pipeline(LogisticRegression(C=probe.C, max_iter=3000), False)
    cold.fit(fit_x, np.concatenate([targets["train"], targets["val"]]))
    warm, reference = probe.model.predict_proba(features["test"]), cold.predict_proba(features["test"])
    np.testing.assert_allclose(warm, reference, atol=1e-2)  # both within L-BFGS's tolerance of one optimum
    assert (warm.argmax(axis=1) == reference.argmax(axis=1)).mean() >= 0.99
    monkeypatch.setattr(linear, "CV_ROWS", 20_000)
    small = fit_probe(features, targets, list("abcd"), use_signed_sqrt=False)
    assert not small.train_model[-1].warm_start  # below CV_ROWS nothing changed: cold fits as before


def test_a_run_finishes_only_the_probe_input_that_cross_validates_best(
    class_folder, tiny_run_options, monkeypatch
) -> None:
    from conftest import run_with

    from transferlab import pipeline

    finished = []
    real = pipeline.finish_probe

    def counting(chosen, *args):
        finished.append(chosen)
        return real(chosen, *args)

    monkeypatch.setattr(pipeline, "finish_probe", counting)
    result = run_with(class_folder, **tiny_run_options)
    candidates = result.record["probe"]["candidates"]
    assert len(candidates) == 2 and len(finished) == 1  # head and the joined depths searched, one finished
    kept = max(candidates, key=lambda c: candidates[c])
    assert result.record["probe"]["cut_point"] == kept and finished[0].cv_score == candidates[kept]


def test_sampled_cv_keeps_whole_groups(monkeypatch) -> None:
    from transferlab.probe import linear

    monkeypatch.setattr(linear, "CV_ROWS", 100)
    groups = np.repeat(np.arange(60), 5)  # 300 rows, 60 groups of 5
    rows = linear.cv_rows(np.zeros(300, dtype=int), groups, 0)
    taken = set(groups[rows].tolist())
    assert len(rows) == 5 * len(taken) and 100 <= len(rows) <= 105


def test_signed_sqrt_probe_reads_the_roots_of_the_features_and_raw_reads_them_as_they_are() -> None:
    x, y = _blobs(180, 3, 8, 2.0, 3)
    x = x * np.abs(x)  # bursty features, both signs: their signed roots are the separable blobs again
    features, targets = _splits(x, y)
    rooted = fit_probe(features, targets, list("abc"))
    by_hand = fit_probe({k: signed_sqrt(v) for k, v in features.items()}, targets, list("abc"), use_signed_sqrt=False)
    assert rooted.signed_sqrt and rooted.features_read == "signed_sqrt" and not by_hand.signed_sqrt
    np.testing.assert_allclose(
        rooted.predict_scores(features["test"]), by_hand.predict_scores(signed_sqrt(features["test"])), atol=1e-6
    )
    raw = fit_probe(features, targets, list("abc"), use_signed_sqrt=False)
    assert raw.features_read == "raw"
    assert not np.allclose(raw.predict_scores(features["test"]), rooted.predict_scores(features["test"]), atol=1e-3)
