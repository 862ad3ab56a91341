"""Per-channel standardisation statistics shared by the probe and the head search.

Pooled channels that are (almost) constant on the training images carry no information the training set can
teach, yet ``(x - mean) / (std + eps)`` turns them into the largest inputs the model sees: on 400 black-background
digits 116 of Lite0's 1,280 channels had a training std below 1e-4, and held-out images that did activate them
reached z-scores of 5.9e5, which wrecked every searched head. Such channels are switched off instead (a scale so
large that their z-score is 0 for any input), which keeps the standardisation a per-channel affine map that folds
into the first linear layer.
"""

from __future__ import annotations

import numpy as np

DEAD_RELATIVE_STD = 1e-3  # a channel below this fraction of the median channel std counts as constant
IGNORED_SCALE = 1e12  # the scale given to a constant channel: its z-score is 0 for any realistic activation


def channel_scale(std: np.ndarray) -> np.ndarray:
    """The divisor per channel: its std, or :data:`IGNORED_SCALE` where the channel is constant on training data."""
    std = np.asarray(std, dtype=np.float64)
    floor = max(DEAD_RELATIVE_STD * float(np.median(std)), 1e-12)
    return np.where(std <= floor, IGNORED_SCALE, std)
