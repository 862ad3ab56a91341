"""The one fine-tuning set-up: head spec, resolution, transforms, the cut network, its units, loaders and loss.

``finetune`` (and through it the fold, from-scratch and depth-search variants) and ``lr_range_test`` all start from
:func:`build_setup`, so an LR found by the range test was measured on exactly what fine-tuning trains.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from timm.data import create_transform
from torch import nn
from torch.utils.data import DataLoader

from transferlab import devices
from transferlab.data.split import SPLITS
from transferlab.errors import TransferlabError
from transferlab.finetune.augment import training_transform
from transferlab.finetune.blocks import Unit, freeze_units
from transferlab.finetune.data import LabelledImages, evaluation_loader, loss_function, training_loader
from transferlab.finetune.network import FinetuneNet, build_network
from transferlab.finetune.options import FinetuneOptions
from transferlab.heads import HeadSpec

if TYPE_CHECKING:
    from transferlab.prepare import PreparedData


@dataclass
class FinetuneSetup:
    """What a fine-tuning run trains on: everything before the first optimizer step."""

    spec: HeadSpec
    data_config: dict[str, Any]
    train_transform: Any
    net: FinetuneNet
    units: list[Unit]
    paths: dict[str, list[Path]]
    loss: nn.Module
    loaders: dict[str, DataLoader]


def build_setup(prepared: PreparedData, options: FinetuneOptions, device: torch.device | None = None) -> FinetuneSetup:
    """The seeded network (a copy of the backbone, cut, with a fresh ``options.head_spec`` head) and the loss on
    ``device`` (default: the run's), its units, the train loader (augmented, balanced as asked), val/test
    loaders."""
    device = device or prepared.device
    dataset, classes = prepared.dataset, prepared.dataset.classes
    spec = options.head_spec or HeadSpec(output="sigmoid" if dataset.multilabel else "softmax")
    if spec.multilabel != dataset.multilabel:
        raise TransferlabError(
            f"head output '{spec.output}' does not fit a {'multi' if dataset.multilabel else 'single'}-label task"
        )
    data_config = dict(prepared.backbone.data_config)
    if options.image_size:
        data_config["input_size"] = (3, options.image_size, options.image_size)
    eval_transform = create_transform(**data_config, is_training=False)
    train_transform = training_transform(eval_transform, options.augment)
    torch.manual_seed(options.seed)
    np.random.seed(options.seed)
    size = data_config["input_size"][-1]
    net = build_network(prepared.backbone.model, prepared.config.cut_point, spec, len(classes), size)
    net.to(device, memory_format=devices.memory_format(device))
    net.device = device
    targets = prepared.targets()
    paths = {split: prepared.split_paths(split) for split in SPLITS}
    train = LabelledImages(paths["train"], targets["train"], train_transform)
    pin = devices.loader_options(device)["pin_memory"]
    loaders = {"train": training_loader(train, options.batch_size, options.balance, options.workers, pin)}
    for split in ("val", "test"):
        images = LabelledImages(paths[split], targets[split], eval_transform)
        loaders[split] = evaluation_loader(images, options.batch_size, options.workers, pin)
    loss = loss_function(targets["train"], len(classes), options.balance).to(device)
    return FinetuneSetup(spec, data_config, train_transform, net, freeze_units(net.body), paths, loss, loaders)
