"""Freeze whole units with their BatchNorm layers in inference mode (fixed statistics and affine parameters).

Setting ``requires_grad = False`` is not enough: a BatchNorm layer in train mode still updates its running
statistics from every batch (the Keras/Lightning ``train_bn`` traps in the anchors), silently shifting the frozen
features. Frozen units therefore get timm's ``FrozenBatchNorm2d``/``FrozenBatchNormAct2d``, which hold everything
as buffers and always normalize with the stored statistics, whatever ``model.train()`` says.

Trainable units have a second trap: in train mode BatchNorm normalizes with the batch's statistics, which on a new
domain (grey 28-px clothes vs ImageNet photos) differ from the stored ImageNet ones the head was trained behind, so
the loss jumps when a stage starts (measured on the demo: 0.27 → 3.44; re-estimating the statistics first (AdaBN)
still dropped validation accuracy from 0.63 to 0.33). The default policy (``bn_stats="frozen"``, as the Keras
fine-tuning guide advises) therefore keeps *stored statistics* in trainable units too and trains only their affine
parameters; ``bn_stats="batch"`` uses batch statistics with the running statistics re-estimated when a stage starts.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from timm.utils.model import freeze, unfreeze
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from transferlab.finetune.blocks import Unit

BN_STATS = ("frozen", "batch")
_FROZEN_UNITS = "frozen units: BatchNorm replaced by FrozenBatchNorm2d (stored statistics, fixed affine parameters); "
BN_POLICY = {
    "frozen": _FROZEN_UNITS + "trainable units: stored statistics kept (inference mode), affine parameters trained",
    "batch": _FROZEN_UNITS + "trainable units: batch statistics (train mode), running statistics re-estimated on the "
    "training images when the stage starts, affine parameters trained",
}


def set_trainable(model: nn.Module, units: list[Unit], trainable: list[Unit]) -> None:
    """Make exactly the ``trainable`` units trainable and freeze all others, BatchNorm included (in place)."""
    unfreeze(model, [])
    keep = {unit.name for unit in trainable}
    frozen = [module for unit in units if unit.name not in keep for module in unit.modules]
    if frozen:
        freeze(model, frozen)
    for unit in units:
        for name in unit.parameters if unit.name not in keep else ():
            model.get_parameter(name).requires_grad_(False)


def recalibrate(net: nn.Module, body: nn.Module, trainable: list[Unit], batches: Iterable) -> None:
    """Replace the running statistics of the ``trainable`` units' BatchNorm layers by their exact average over
    ``batches`` (inputs, targets) of ``net``'s inputs; nothing else changes (no gradients, other layers in eval)."""
    layers = [
        layer
        for unit in trainable
        for name in unit.modules
        for layer in body.get_submodule(name).modules()
        if isinstance(layer, _BatchNorm)
    ]
    if not layers:
        return
    momenta = [layer.momentum for layer in layers]
    net.eval()
    for layer in layers:
        layer.reset_running_stats()
        layer.momentum = None  # cumulative average over all batches
        layer.train()
    device = next(net.parameters()).device
    with torch.no_grad():
        for inputs, _ in batches:
            net(inputs.to(device, non_blocking=True))
    for layer, momentum in zip(layers, momenta, strict=True):
        layer.momentum = momentum
        layer.eval()


def hold_statistics(body: nn.Module) -> None:
    """Put every (trainable) BatchNorm layer of ``body`` in inference mode after ``model.train()``."""
    for layer in body.modules():
        if isinstance(layer, _BatchNorm):
            layer.eval()
