"""A pretrained timm network with its top removed that returns pooled features at every cut point at once.

One ``forward_intermediates`` pass yields all of them (``transferlab.model.cut``), so choosing where to cut the
network later costs no extra forward pass.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from timm.data import create_transform, resolve_model_data_config
from torch import nn

from transferlab.backbones import efficientnet_pytorch
from transferlab.backbones.registry import WeightsSource, resolve_weights
from transferlab.errors import TransferlabError
from transferlab.model.cut import HEAD, pool, stage_names
from transferlab.model.network import create_network, read_weights


def _apply_weights(model: nn.Module, name: str, source: WeightsSource, keep_classifier: bool) -> None:
    state = read_weights(source.path)
    if efficientnet_pytorch.is_efficientnet_pytorch(state):
        state = efficientnet_pytorch.to_timm(state, model)
    if not keep_classifier:
        classifier = model.pretrained_cfg.get("classifier", "classifier")
        state = {k: v for k, v in state.items() if not k.startswith(classifier + ".")}
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as error:
        detail = " ".join(str(error).split())[:400]
        raise TransferlabError(f"weights {source.path} do not fit {name}: {detail}") from None


@dataclass
class Backbone:
    """The network, its preprocessing (the timm pretrained config) and where its weights came from."""

    name: str
    model: nn.Module
    weights: WeightsSource
    data_config: dict[str, Any]
    cut_points: list[str] = field(default_factory=list)
    cut_dims: dict[str, int] = field(default_factory=dict)

    def transform(self) -> Any:
        """The evaluation preprocessing: resize, centre crop (timm crop_pct), normalize with the model's mean/std."""
        return create_transform(**self.data_config, is_training=False)

    def identity(self) -> dict[str, Any]:
        """Everything that changes extracted features; hashed into feature-cache keys."""
        return {
            "backbone": self.name,
            "weights_sha256": self.weights.sha256,
            "preprocessing": {k: list(v) if isinstance(v, tuple) else v for k, v in sorted(self.data_config.items())},
            "cut_points": self.cut_points,
        }

    def features(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """Pooled features (``transferlab.model.cut.pool``) at every cut point, from one forward pass."""
        final, intermediates = self.model.forward_intermediates(images)
        pairs = enumerate(zip(self.cut_points, intermediates, strict=True))
        return {name: pool(self.model, maps, i) for i, (name, maps) in pairs} | {HEAD: pool(self.model, final, None)}

    def count_parameters(self) -> int:
        return sum(p.numel() for p in self.model.parameters())


def load_backbone(
    name: str,
    weights: str | Path | None = None,
    *,
    allow_download: bool = False,
    keep_classifier: bool = False,
    image_size: int | None = None,
) -> Backbone:
    """Build ``name`` from timm, load its weights offline and put it in eval mode.

    ``image_size`` overrides the pretrained input resolution (e.g. small images, quick trials); the crop ratio,
    interpolation and normalization stay the model's own.
    """
    source = resolve_weights(name, weights, allow_download=allow_download)
    model = create_network(name, keep_classifier=keep_classifier)
    _apply_weights(model, name, source, keep_classifier)
    model.eval()
    cut_points = stage_names(model)
    cut_dims = {info["module"]: int(info["num_chs"]) for info in model.feature_info}
    cut_dims[HEAD] = int(model.num_features if not hasattr(model, "head_hidden_size") else model.head_hidden_size)
    data_config = resolve_model_data_config(model)
    if image_size:
        data_config["input_size"] = (3, image_size, image_size)
    return Backbone(name, model, source, data_config, cut_points, cut_dims)
