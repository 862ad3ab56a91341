"""The define-by-run search space: one function both samples a trial and decodes stored parameters.

Decoding goes through ``optuna.trial.FixedTrial`` and the same function, so the best trial's parameters always
rebuild exactly the head that was scored.
"""

from __future__ import annotations

from typing import Any

import optuna

from transferlab.heads import HeadSpec
from transferlab.search.train import TrainParams

MAP_POOLINGS = ("max", "avgmax", "conv1x1")
WIDTHS = (64, 128, 256, 512)


def suggest(trial: optuna.Trial, *, maps: bool, multilabel: bool) -> tuple[HeadSpec, TrainParams]:
    """Sample (or, for a FixedTrial, decode) one head and its optimizer settings.

    Flatten heads are expressible but not searched: on a 7×7 map they multiply the first dense layer by 49 and
    overfit small data (see ``head_cost``). Map-based poolings are offered only when maps are cached.
    """
    pooling = trial.suggest_categorical("pooling", ("avg", *MAP_POOLINGS) if maps else ("avg",))
    conv_channels = trial.suggest_categorical("conv_channels", (64, 128, 256)) if pooling == "conv1x1" else None
    extra_maxpool = trial.suggest_categorical("extra_maxpool", (False, True)) if pooling == "conv1x1" else False
    n_layers = trial.suggest_int("n_layers", 0, 2)
    widths = tuple(trial.suggest_categorical(f"width_{i}", WIDTHS) for i in range(n_layers))
    batchnorm = trial.suggest_categorical("batchnorm", (False, True)) if n_layers or conv_channels else False
    spec = HeadSpec(
        pooling=pooling,
        conv_channels=conv_channels,
        extra_maxpool=extra_maxpool,
        widths=widths,
        dropout=trial.suggest_float("dropout", 0.0, 0.5),
        batchnorm=batchnorm,
        activation=trial.suggest_categorical("activation", ("relu", "gelu")) if n_layers or conv_channels else "relu",
        output="sigmoid" if multilabel else "softmax",
    )
    params = TrainParams(
        lr=trial.suggest_float("lr", 1e-4, 3e-2, log=True),
        weight_decay=trial.suggest_float("weight_decay", 1e-6, 1e-1, log=True),
        batch_size=trial.suggest_categorical("batch_size", (32, 64, 128)),
        epochs=trial.suggest_int("epochs", 10, 60, step=10),
    )
    return spec, params


def decode(params: dict[str, Any], *, multilabel: bool) -> tuple[HeadSpec, TrainParams]:
    """The HeadSpec and TrainParams that a stored trial's ``params`` stand for."""
    maps = params.get("pooling", "avg") != "avg"
    return suggest(optuna.trial.FixedTrial(params), maps=maps, multilabel=multilabel)
