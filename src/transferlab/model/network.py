"""The network fine-tuning trains and runs deploy: a timm backbone cut at a cut point, then a head.

One builder (:func:`build_model`) for both, and one saved form (keys ``backbone.<timm key>``, ``head.<key>``).
"""

from __future__ import annotations

import timm
import torch
from torch import nn

from transferlab.errors import TransferlabError
from transferlab.heads import HeadSpec, build_head
from transferlab.model.cut import cut_maps, cut_network, pool

CPU = torch.device("cpu")


def create_network(name: str, *, keep_classifier: bool = False) -> nn.Module:
    """The timm architecture ``name`` without weights and, unless ``keep_classifier``, without its classifier."""
    network = timm.create_model(name, pretrained=False)
    if not hasattr(network, "forward_intermediates"):
        raise TransferlabError(f"{name}: this timm model does not support forward_intermediates (multi-depth features)")
    if not keep_classifier:
        network.reset_classifier(0)
    return network


class CutModel(nn.Module):
    """Images (N, 3, H, W) → ``body`` (timm, cut at stage ``stage_index``; None: head) → maps → ``head`` → scores.

    ``pooled`` heads (the probe) see the cached feature vector (``cut.pool``), others the maps. ``output`` turns
    logits into probabilities (None: as they are). ``device`` is where this model's inputs are created.
    """

    def __init__(
        self,
        body: nn.Module,
        head: nn.Module,
        stage_index: int | None,
        *,
        pooled: bool = False,
        output: str | None = None,
        device: torch.device = CPU,
    ) -> None:
        super().__init__()
        self.body = body
        self.head = head
        self.stage_index = stage_index
        self.pooled = pooled
        self.output = output
        self.device = device

    def maps(self, images: torch.Tensor) -> torch.Tensor:
        return cut_maps(self.body, images, self.stage_index)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        features = self.maps(images)
        if self.pooled:
            features = pool(self.body, features, self.stage_index)
        scores = self.head(features)
        if self.output == "softmax":
            return torch.softmax(scores, dim=1)
        if self.output == "sigmoid":
            return torch.sigmoid(scores)
        return scores


def build_model(
    network: nn.Module,
    cut_point: str,
    spec: HeadSpec,
    n_outputs: int,
    input_size: tuple[int, int, int],
    *,
    output: str | None = None,
    device: torch.device = CPU,
) -> CutModel:
    """``network`` (cut in place at ``cut_point``, eval mode) with a new ``spec`` head sized by one probe pass."""
    body, index = cut_network(network.to(device), cut_point)
    body.eval()
    net = CutModel(body, nn.Identity(), index, output=output, device=device)
    with torch.no_grad():
        channels, height, width = net.maps(torch.zeros(1, *input_size, device=device)).shape[1:]
    net.head = build_head(spec, int(channels), (int(height), int(width)), n_outputs).to(device)
    return net


def saved_state(net: CutModel, network: nn.Module) -> dict[str, torch.Tensor]:
    """State to save: ``backbone.*`` keys of the *whole* timm ``network`` ``net`` was cut from (blocks pruned above
    the cut keep their pretrained values) and ``head.*`` keys."""
    full = dict(network.state_dict()) | dict(net.body.state_dict())
    state = {f"backbone.{name}": tensor for name, tensor in full.items()}
    state |= {f"head.{name}": tensor for name, tensor in net.head.state_dict().items()}
    return {name: tensor.contiguous() for name, tensor in state.items()}


def load_saved_state(net: CutModel, state: dict[str, torch.Tensor], source: str) -> None:
    """Load a :func:`saved_state` into ``net`` (built by :func:`build_model`); keys above the cut are not needed."""
    head = {name.removeprefix("head."): value for name, value in state.items() if name.startswith("head.")}
    body = {name.removeprefix("backbone."): value for name, value in state.items() if name.startswith("backbone.")}
    try:
        net.head.load_state_dict(head, strict=True)
        missing = net.body.load_state_dict(body, strict=False).missing_keys
    except RuntimeError as error:
        raise TransferlabError(f"{source} does not fit its finetuned.json: {error}") from None
    missing = [key for key in missing if not key.endswith("num_batches_tracked")]  # frozen BN has no counter
    if missing:
        raise TransferlabError(f"{source} lacks backbone weights: {', '.join(missing[:5])}")
