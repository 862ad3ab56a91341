"""What the network costs up to each cut point: parameters, megabytes and GFLOPs of the part that runs.

A model cut at ``layer2`` runs (and ships) only the blocks below the cut, so ranking compares cut points by what
they cost, not by the whole network. The part is the same one fine-tuning and deployment use
(:func:`transferlab.backbones.cut.cut_network`), built on PyTorch's ``meta`` device: shapes only, no weights and no
arithmetic, so pricing a 130M-parameter VGG takes a fraction of a second. FLOPs are counted by
``torch.utils.flop_counter.FlopCounterMode``, which counts a multiply-add as 2 FLOPs (about twice the "FLOPs",
really MACs, quoted in many papers).
"""

from __future__ import annotations

import copy
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode

from transferlab.backbones.cut import HEAD, cut_network, cut_output, pool, stage_names
from transferlab.backbones.input_size import check_input_size
from transferlab.backbones.model import create_network

BYTES_PER_PARAMETER = 4
"""Megabytes are of float32 weights, the precision the weights are stored and fine-tuned in."""


@dataclass(frozen=True)
class CutCost:
    """The network up to ``cut_point``: its output shape for one image ((C, H, W) maps, or (D,) at ``head``)."""

    cut_point: str
    shape: tuple[int, ...]
    params: int
    gflops: float

    @property
    def megabytes(self) -> float:
        return self.params * BYTES_PER_PARAMETER / 1e6

    def to_json(self) -> dict[str, Any]:
        return asdict(self) | {"shape": list(self.shape)}

    @classmethod
    def from_json(cls, values: dict[str, Any]) -> CutCost:
        return cls(values["cut_point"], tuple(values["shape"]), int(values["params"]), float(values["gflops"]))


def cut_costs(name: str, input_size: tuple[int, ...]) -> list[CutCost]:
    """The cost of ``name`` (a timm model, classifier removed) up to each of its cut points, bottom first, at
    ``input_size`` (C, H, W) per image."""
    with torch.device("meta"):
        network = create_network(name).eval()
    check_input_size(network, name, int(input_size[-1]))
    image = torch.zeros(1, *input_size, device="meta")
    costs = []
    for index, cut_point in enumerate([*stage_names(network), HEAD]):
        stage = None if cut_point == HEAD else index
        part = network if stage is None else cut_network(copy.deepcopy(network), cut_point)[0]
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            output = cut_output(part, image, stage)
            if stage is None:
                output = pool(part, output, stage)
        params = sum(parameter.numel() for parameter in part.parameters())
        costs.append(
            CutCost(cut_point, tuple(int(n) for n in output.shape[1:]), params, counter.get_total_flops() / 1e9)
        )
    return costs
