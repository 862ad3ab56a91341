"""The network fine-tuning trains and runs deploy: a timm backbone cut at a cut point, then a head.

One builder (:func:`build_model`) for both, and one saved form (keys ``backbone.<timm key>``, ``head.<key>``).
"""

from __future__ import annotations

import torch
from torch import nn

from transferlab.backbones.cut import cut_maps, cut_network, cut_output, joined_features, pool
from transferlab.errors import TransferlabError
from transferlab.heads import HeadSpec, build_head
from transferlab.metrics import probabilities

CPU = torch.device("cpu")


class CutModel(nn.Module):
    """Images (N, 3, H, W) → ``body`` (timm, cut at stage ``stage_index``; None: head) → maps → ``head`` → scores.

    ``pooled`` heads (the probe) see the cached feature vector (``cut.pool``), others the maps. ``output`` turns
    logits into probabilities (None: as they are). ``device`` is where this model's inputs are created.
    """

    device: torch.device = CPU

    def __init__(
        self,
        body: nn.Module,
        head: nn.Module,
        stage_index: int | None,
        pooled: bool = False,
        joined: list[int | None] | None = None,
    ) -> None:
        super().__init__()
        self.body, self.head, self.stage_index, self.pooled = body, head, stage_index, pooled
        self.joined = joined  # a probe on a joined cut point: pooled features of these stages side by side
        self.output: str | None = None

    def maps(self, images: torch.Tensor) -> torch.Tensor:
        return cut_maps(self.body, images, self.stage_index)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if self.joined is not None:
            features = joined_features(self.body, images, self.joined)
        else:
            if self.pooled:
                features = pool(self.body, cut_output(self.body, images, self.stage_index), self.stage_index)
            else:
                features = self.maps(images)
        scores = self.head(features)
        return scores if self.output is None else probabilities(scores, multilabel=self.output == "sigmoid")


def build_model(network: nn.Module, cut_point: str, spec: HeadSpec, n_outputs: int, shape: tuple[int, ...]) -> CutModel:
    """``network`` (cut in place at ``cut_point``, eval, on its own device) + a ``spec`` head for ``shape`` images."""
    body, index = cut_network(network, cut_point)
    net = CutModel(body.eval(), nn.Identity(), index)
    net.device = next(body.parameters()).device
    with torch.no_grad():
        channels, height, width = net.maps(torch.zeros(1, *shape, device=net.device)).shape[1:]
    net.head = build_head(spec, int(channels), (int(height), int(width)), n_outputs).to(net.device)
    return net


def saved_state(net: CutModel, network: nn.Module) -> dict[str, torch.Tensor]:
    """``backbone.*`` keys of the whole ``network`` ``net`` was cut from (pruned blocks unchanged), ``head.*`` keys."""
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
