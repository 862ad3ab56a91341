"""A pretrained timm network with its top removed that returns pooled features at every cut point at once.

One ``forward_intermediates`` pass yields all of them (``transferlab.backbones.cut``), so choosing where to cut the
network later costs no extra forward pass.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import timm
import torch
from safetensors.torch import load_file
from timm.data import create_transform, resolve_model_data_config
from torch import nn

from transferlab.backbones import efficientnet_pytorch
from transferlab.backbones.cut import HEAD, pool, stage_names
from transferlab.backbones.input_size import check_input_size
from transferlab.backbones.registry import WeightsSource, resolve_weights
from transferlab.errors import TransferlabError


def read_weights(path: Path) -> dict[str, torch.Tensor]:
    """The tensors of ``path``: a safetensors file, or a plain (possibly wrapped) torch state dict."""
    if not path.is_file():
        raise TransferlabError(f"{path}: weights file not found")
    if path.suffix == ".safetensors":
        try:
            return load_file(str(path))
        except Exception as error:  # safetensors raises its own error type for a bad header or truncated data
            raise TransferlabError(f"{path}: not a valid safetensors file ({str(error)[:200]})") from None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        raise TransferlabError(
            f"{path}: refused to load: not a plain tensor checkpoint ({type(error).__name__}: {str(error)[:200]})"
        ) from None
    for wrapper in ("state_dict", "model", "model_state_dict"):
        if isinstance(state, dict) and isinstance(state.get(wrapper), dict):
            state = state[wrapper]
    if not isinstance(state, dict):
        raise TransferlabError(f"{path}: expected a state dict of tensors, found {type(state).__name__}")
    return {key.removeprefix("module."): value for key, value in state.items()}


def create_network(name: str, *, keep_classifier: bool = False) -> nn.Module:
    """The timm architecture ``name`` without weights and, unless ``keep_classifier``, without its classifier.

    Patch-token models (ViT, DeiT, Swin, ...) are built with ``dynamic_img_size=True``: their position embeddings are
    interpolated to whatever grid the input makes, so ``--image-size 96`` works with 224-px weights (the parameters
    are unchanged, so the same state dict loads either way). Models whose constructor has no such option (the CNNs)
    are built as they are.
    """
    try:
        network = timm.create_model(name, pretrained=False, dynamic_img_size=True)
    except TypeError:  # the model's constructor has no dynamic_img_size: a convolutional network takes any size
        network = timm.create_model(name, pretrained=False)
    if not hasattr(network, "forward_intermediates"):
        raise TransferlabError(f"{name}: this timm model does not support forward_intermediates (multi-depth features)")
    if not keep_classifier:
        network.reset_classifier(0)
    return network


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
        """Pooled features (``transferlab.backbones.cut.pool``) at every cut point, from one forward pass."""
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
    crop_pct: float | None = None,
) -> Backbone:
    """Build ``name`` from timm, load its weights offline and put it in eval mode.

    ``image_size`` overrides the pretrained input resolution (e.g. small images, quick trials); ``crop_pct`` the
    centre-crop ratio (1.0: the whole image, resized); interpolation and normalization stay the model's own.
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
        if image_size != data_config["input_size"][-1]:
            check_input_size(model, name, image_size)
        data_config["input_size"] = (3, image_size, image_size)
    if crop_pct:
        data_config["crop_pct"] = float(crop_pct)
    return Backbone(name, model, source, data_config, cut_points, cut_dims)
