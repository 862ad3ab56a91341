"""LogME: log of maximum evidence as a transferability score.

Reference: K. You, Y. Liu, J. Wang, M. Long, "LogME: Practical Assessment of Pre-trained Models for
Transfer Learning", ICML 2021 (reference code: https://github.com/thuml/LogME).

Why this works: a pre-trained model transfers well to a target task when its frozen features already
explain the target labels. LogME measures that without fine-tuning by fitting a Bayesian linear model
``y = F w + noise`` on the features ``F`` with prior ``w ~ N(0, I / alpha)`` and noise precision ``beta``,
and scoring the *marginal likelihood* (evidence) ``p(y | F, alpha, beta)`` maximised over ``alpha`` and
``beta``. Unlike training accuracy, evidence integrates over all weights, so it penalises feature sets that
only fit the labels by over-fitting (it is an Occam's-razor score), and it has no hyper-parameters to tune.

Model, for one target vector ``y`` (N,) and features ``F`` (N, D)::

    A = alpha I_D + beta F^T F,    m = beta A^-1 F^T y
    log p(y) = D/2 log alpha + N/2 log beta - N/2 log 2 pi
               - beta/2 |y - F m|^2 - alpha/2 |m|^2 - 1/2 log det A

All of it only depends on the spectrum of ``F^T F``: with the thin SVD ``F = U diag(s) V^T`` (rank k),
``sigma = s^2`` and ``x = U^T y``, writing ``t = alpha / beta``::

    |m|^2         = sum sigma x^2 / (sigma + t)^2
    |y - F m|^2   = sum t^2 x^2 / (sigma + t)^2 + (|y|^2 - |x|^2)
    log det A     = sum log(alpha + beta sigma) + (D - k) log alpha
    gamma         = sum sigma / (sigma + t)          (effective number of parameters)

so after one eigen-decomposition every target costs O(k) per iteration. Maximising the evidence gives the
fixed-point updates ``alpha = gamma / |m|^2`` and ``beta = (N - gamma) / |y - F m|^2`` (MacKay, 1992).
With N > D these converge in two or three steps. With N < D they can move slowly and stop at the paper's cap
of 11 iterations before converging; the score is then the evidence at the last (alpha, beta), a lower bound
on the maximum evidence.

Deviation from the reference code: its fixed-point variant omits the ``(D - k) log alpha`` term of
``log det A`` when ``N < D`` (thuml/LogME issue #23); here the determinant is always the full D x D one.
"""

from typing import NamedTuple

import numpy as np

MAX_ITERATIONS = 11
"""Fixed-point iterations per target; the paper reports convergence within a few steps."""

TOLERANCE = 1e-3
"""Stop when ``alpha / beta`` changes by less than this, relatively."""

_EPSILON = 1e-5
"""Guards the fixed-point denominators against a zero |m| or a zero residual (as in the reference code)."""


class Evidence(NamedTuple):
    """Maximum evidence of the linear model for one target, and the prior/noise precisions reaching it."""

    log_evidence: float
    """Log evidence divided by the number of samples N."""
    alpha: float
    """Precision of the Gaussian prior on the weights."""
    beta: float
    """Precision of the Gaussian observation noise."""


def logme_score(features: np.ndarray, labels: np.ndarray) -> float:
    """LogME transferability score of ``features`` for ``labels``; higher means more transferable.

    Args:
        features: (N, D) features of the target data extracted by a frozen pre-trained model.
        labels: either (N,) integer class ids (single-label classification: each class present in
            ``labels`` becomes a one-hot regression target) or an (N, L) 0/1 matrix (multi-label: each
            column is a regression target).

    Returns:
        The maximum log evidence per sample, averaged over the targets (classes or label columns).
        Scores are comparable between feature extractors on the same labelled data, not across datasets.
    """
    features = _as_features(features)
    labels = np.asarray(labels)
    if labels.shape[:1] != features.shape[:1]:
        raise ValueError(f"labels have {labels.shape[:1]} rows, features have {features.shape[0]}")
    if labels.ndim == 1:
        if not np.issubdtype(labels.dtype, np.integer):
            raise ValueError(f"single-label input must be integer class ids, got dtype {labels.dtype}")
        targets = (labels[:, None] == np.unique(labels)[None, :]).astype(np.float64)
    elif labels.ndim == 2:
        targets = labels.astype(np.float64)
    else:
        raise ValueError(f"labels must be (N,) or (N, L), got shape {labels.shape}")
    evidences = _evidences(features, targets)
    return float(np.mean([e.log_evidence for e in evidences]))


def target_evidence(features: np.ndarray, target: np.ndarray) -> Evidence:
    """Maximum evidence of a Bayesian linear regression of one real-valued (N,) ``target`` on ``features``."""
    features = _as_features(features)
    target = np.asarray(target, dtype=np.float64)
    if target.shape != features.shape[:1]:
        raise ValueError(f"target must have shape ({features.shape[0]},), got {target.shape}")
    return _evidences(features, target[:, None])[0]


def _as_features(features: np.ndarray) -> np.ndarray:
    features = np.asarray(features, dtype=np.float64)
    if features.ndim != 2 or features.size == 0:
        raise ValueError(f"features must be a non-empty (N, D) array, got shape {features.shape}")
    if not np.isfinite(features).all():
        raise ValueError("features contain NaN or infinite values")
    return features


def _evidences(features: np.ndarray, targets: np.ndarray) -> list[Evidence]:
    """Maximum evidence for every column of ``targets`` (N, C), sharing one spectral decomposition."""
    n, d = features.shape
    sigma, u = _spectrum(features)
    projections = u.T @ targets  # x = U^T y for every target, shape (k, C)
    # |y|^2 - |x|^2 is the part of y orthogonal to the column space of F, which the model cannot fit.
    outside = np.maximum((targets**2).sum(axis=0) - (projections**2).sum(axis=0), 0.0)
    return [_maximise(sigma, projections[:, c], outside[c], n, d) for c in range(targets.shape[1])]


def _spectrum(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Non-zero eigenvalues ``sigma`` (k,) of F^T F and the matching left singular vectors ``U`` (N, k) of F.

    Eigen-decomposes the smaller Gram matrix: F^T F (D x D) when N > D, else F F^T (N x N); both share the
    non-zero eigenvalues. Directions with numerically zero eigenvalues are dropped (rank truncation).
    """
    n, d = features.shape
    if n > d:
        sigma, v = np.linalg.eigh(features.T @ features)
    else:
        sigma, u = np.linalg.eigh(features @ features.T)
    keep = sigma > max(sigma.max(), 0.0) * max(n, d) * np.finfo(np.float64).eps
    if not keep.any():
        raise ValueError("features are all zero; the evidence is undefined")
    sigma = sigma[keep]
    u = features @ v[:, keep] / np.sqrt(sigma) if n > d else u[:, keep]  # for N > D: U = F V diag(s)^-1
    return sigma, u


def _maximise(sigma: np.ndarray, x: np.ndarray, outside: float, n: int, d: int) -> Evidence:
    """Fixed-point maximisation of the evidence over (alpha, beta) in the eigenbasis of F^T F."""
    x2 = x**2
    alpha, beta = 1.0, 1.0
    for _ in range(MAX_ITERATIONS):
        t = alpha / beta
        gamma = (sigma / (sigma + t)).sum()
        m2, res2 = _fit_norms(sigma, x2, outside, t)
        alpha = gamma / (m2 + _EPSILON)
        beta = (n - gamma) / (res2 + _EPSILON)
        if abs(alpha / beta - t) / t <= TOLERANCE:
            break
    # Evaluate at the final (alpha, beta) with the posterior mean that belongs to them.
    m2, res2 = _fit_norms(sigma, x2, outside, alpha / beta)
    log_det_a = np.log(alpha + beta * sigma).sum() + (d - sigma.size) * np.log(alpha)
    evidence = (
        d / 2 * np.log(alpha)
        + n / 2 * np.log(beta)
        - n / 2 * np.log(2 * np.pi)
        - beta / 2 * res2
        - alpha / 2 * m2
        - log_det_a / 2
    )
    return Evidence(float(evidence / n), float(alpha), float(beta))


def _fit_norms(sigma: np.ndarray, x2: np.ndarray, outside: float, t: float) -> tuple[float, float]:
    """|m|^2 and the residual |y - F m|^2 of the posterior mean for the ratio ``t = alpha / beta``."""
    shrink = x2 / (sigma + t) ** 2
    return float((sigma * shrink).sum()), float(t**2 * shrink.sum() + outside)
