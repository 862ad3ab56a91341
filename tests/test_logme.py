"""Tests for the LogME transferability score."""

import numpy as np
import pytest

from transferlab.rank.logme import logme_score, target_evidence


def _informative_and_random(
    rng: np.random.Generator, n: int, d: int, n_classes: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Labels, features linearly encoding them (one-hot + noise, padded with random dims), random features."""
    labels = rng.integers(0, n_classes, size=n)
    one_hot = np.eye(n_classes)[labels]
    informative = np.hstack(
        [one_hot + 0.1 * rng.standard_normal(one_hot.shape), rng.standard_normal((n, d - n_classes))]
    )
    return labels, informative, rng.standard_normal((n, d))


def _naive_log_evidence(features: np.ndarray, target: np.ndarray, alpha: float, beta: float) -> float:
    """Log evidence per sample of y = F w + noise at fixed (alpha, beta), with an explicit D x D inverse and log det.

    Model: w ~ N(0, I / alpha), noise ~ N(0, 1 / beta); A = alpha I + beta F^T F and m = beta A^-1 F^T y.
    """
    n, d = features.shape
    a = alpha * np.eye(d) + beta * features.T @ features
    m = beta * np.linalg.inv(a) @ features.T @ target
    sign, log_det_a = np.linalg.slogdet(a)
    assert sign > 0
    residual = target - features @ m
    evidence = (
        d / 2 * np.log(alpha)
        + n / 2 * np.log(beta)
        - n / 2 * np.log(2 * np.pi)
        - beta / 2 * residual @ residual
        - alpha / 2 * m @ m
        - log_det_a / 2
    )
    return float(evidence / n)


def test_informative_features_score_higher_than_random() -> None:
    labels, informative, random = _informative_and_random(np.random.default_rng(0), n=300, d=32, n_classes=5)
    assert logme_score(informative, labels) > logme_score(random, labels) + 0.5


def test_invariant_to_row_permutation() -> None:
    rng = np.random.default_rng(1)
    labels, features, _ = _informative_and_random(rng, n=200, d=16, n_classes=4)
    order = rng.permutation(len(labels))
    assert logme_score(features[order], labels[order]) == pytest.approx(logme_score(features, labels), rel=1e-9)


def test_multi_label_ranks_informative_above_random() -> None:
    rng = np.random.default_rng(2)
    n, d, n_labels = 300, 24, 6
    labels = (rng.random((n, n_labels)) < 0.3).astype(int)
    informative = np.hstack([labels + 0.1 * rng.standard_normal(labels.shape), rng.standard_normal((n, d - n_labels))])
    random = rng.standard_normal((n, d))
    assert logme_score(informative, labels) > logme_score(random, labels) + 0.5


def test_one_hot_multi_label_equals_single_label() -> None:
    labels, features, _ = _informative_and_random(np.random.default_rng(3), n=120, d=10, n_classes=3)
    assert logme_score(features, np.eye(3, dtype=int)[labels]) == pytest.approx(
        logme_score(features, labels), rel=1e-12
    )


@pytest.mark.parametrize(("n", "d"), [(400, 20), (40, 100)], ids=["N>D", "N<D"])
def test_both_svd_branches_rank_informative_above_random(n: int, d: int) -> None:
    labels, informative, random = _informative_and_random(np.random.default_rng(4), n=n, d=d, n_classes=4)
    assert logme_score(informative, labels) > logme_score(random, labels)


def _linear_target(rng: np.random.Generator, features: np.ndarray) -> np.ndarray:
    return features[:, :3] @ np.array([1.0, -0.5, 0.25]) + 0.3 * rng.standard_normal(len(features))


@pytest.mark.parametrize(("n", "d"), [(30, 6), (6, 30), (12, 12), (30, 40)], ids=["N>D", "N<D", "N=D", "N<D-large"])
def test_matches_naive_evidence_at_returned_precisions(n: int, d: int) -> None:
    rng = np.random.default_rng(5)
    features = rng.standard_normal((n, d))
    target = _linear_target(rng, features)
    result = target_evidence(features, target)
    naive = _naive_log_evidence(features, target, result.alpha, result.beta)
    assert result.log_evidence == pytest.approx(naive, rel=1e-6)


def test_converged_precisions_maximise_evidence() -> None:
    # With N > D the fixed point converges within the iteration cap, so it must be a local maximum.
    rng = np.random.default_rng(5)
    features = rng.standard_normal((60, 8))
    target = _linear_target(rng, features)
    result = target_evidence(features, target)
    for alpha_step, beta_step in [(1.1, 1.0), (1 / 1.1, 1.0), (1.0, 1.1), (1.0, 1 / 1.1)]:
        moved = _naive_log_evidence(features, target, result.alpha * alpha_step, result.beta * beta_step)
        assert moved < result.log_evidence


def test_rank_deficient_features_match_naive_evidence() -> None:
    rng = np.random.default_rng(6)
    basis = rng.standard_normal((40, 5))
    features = basis @ rng.standard_normal((5, 12))  # N > D but rank 5 < D
    target = basis[:, 0] + 0.2 * rng.standard_normal(40)
    result = target_evidence(features, target)
    assert result.log_evidence == pytest.approx(
        _naive_log_evidence(features, target, result.alpha, result.beta), rel=1e-6
    )


def test_single_label_score_is_mean_of_per_class_evidence() -> None:
    labels, features, _ = _informative_and_random(np.random.default_rng(7), n=90, d=8, n_classes=3)
    per_class = [target_evidence(features, (labels == c).astype(float)).log_evidence for c in range(3)]
    assert logme_score(features, labels) == pytest.approx(np.mean(per_class), rel=1e-12)


def test_rejects_bad_input() -> None:
    features = np.ones((4, 2))
    with pytest.raises(ValueError, match="integer class ids"):
        logme_score(features, np.array([0.0, 1.0, 0.0, 1.0]))
    with pytest.raises(ValueError, match="rows"):
        logme_score(features, np.array([0, 1, 0]))
    with pytest.raises(ValueError, match="all zero"):
        logme_score(np.zeros((4, 2)), np.array([0, 1, 0, 1]))
