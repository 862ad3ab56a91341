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
FLATTEN_CHANNELS = (16, 32, 64)


def suggest(trial: optuna.Trial, *, maps: bool, multilabel: bool) -> tuple[HeadSpec, TrainParams]:
    """Sample (or, for a FixedTrial, decode) one head and its optimizer settings.

    Flatten is searched only after a conv1x1 reduction to a few channels: on the raw 7×7 map it multiplies the
    first dense layer by 49 × all channels and overfits small data (see ``head_cost``); the seeds' raw-map Flatten
    heads stay expressible as specs. Map-based poolings are offered only when maps are cached.
    """
    pooling = trial.suggest_categorical("pooling", ("avg", *MAP_POOLINGS) if maps else ("avg",))
    conv_pooling, conv_channels = "avg", None
    if pooling == "conv1x1":
        conv_pooling = trial.suggest_categorical("conv_pooling", ("avg", "max", "flatten"))
        if conv_pooling == "flatten":  # keeps position; few channels keep the first dense layer small
            conv_channels = trial.suggest_categorical("flatten_channels", FLATTEN_CHANNELS)
        else:
            conv_channels = trial.suggest_categorical("conv_channels", (64, 128, 256))
    extra_maxpool = trial.suggest_categorical("extra_maxpool", (False, True)) if pooling == "conv1x1" else False
    n_layers = trial.suggest_int("n_layers", 0, 2)
    widths = tuple(trial.suggest_categorical(f"width_{i}", WIDTHS) for i in range(n_layers))
    batchnorm = trial.suggest_categorical("batchnorm", (False, True)) if n_layers or conv_channels else False
    spec = HeadSpec(
        pooling=pooling,
        conv_channels=conv_channels,
        conv_pooling=conv_pooling,
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
    if params.get("pooling") == "conv1x1":  # studies from before conv_pooling was searched always averaged
        params = {"conv_pooling": "avg", **params}
    return suggest(optuna.trial.FixedTrial(params), maps=maps, multilabel=multilabel)
