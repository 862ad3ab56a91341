"""What a backbone costs: parameters, GFLOPs per image at its input resolution, and measured extraction speed.

FLOPs are counted by ``torch.utils.flop_counter.FlopCounterMode`` on one forward pass of a blank image. It counts a
multiply-add as 2 FLOPs, so its numbers are about twice the "FLOPs" quoted in many papers (which are MACs). The count
and the last measured images/second are stored next to the backbone's cached features (same identity key: weights
and preprocessing, hence resolution), so a re-run on cached features still knows both without recounting.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.utils.flop_counter import FlopCounterMode

from transferlab.backbones.model import Backbone
from transferlab.features.cache import FeatureCache
from transferlab.features.extract import ExtractionReport
from transferlab.fileio import read_json, write_json

COST_FILE = "cost.json"


@dataclass(frozen=True)
class BackboneCost:
    params: int
    gflops: float
    images_per_second: float | None
    """Feature-extraction throughput on this machine (all cut points in one pass); None if never measured."""


def count_gflops(backbone: Backbone) -> float:
    """GFLOPs of one forward pass of a single image at the backbone's configured input size."""
    image = torch.zeros(1, *backbone.data_config["input_size"])
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        backbone.model(image)
    return counter.get_total_flops() / 1e9


def backbone_cost(backbone: Backbone, cache: FeatureCache, extraction: ExtractionReport) -> BackboneCost:
    """Cost of ``backbone``: FLOPs counted once per cache identity, speed updated whenever extraction just ran."""
    path = cache.directory / COST_FILE
    stored = read_json(path) if path.exists() else {}
    updated = dict(stored)
    if "gflops" not in updated:
        updated["gflops"] = count_gflops(backbone)
    if extraction.images_per_second:
        updated["images_per_second"] = extraction.images_per_second
    if updated != stored:
        write_json(path, updated)
    return BackboneCost(backbone.count_parameters(), float(updated["gflops"]), updated.get("images_per_second"))
