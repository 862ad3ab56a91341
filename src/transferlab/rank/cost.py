"""What a backbone costs: per cut point the parameters, MB and GFLOPs of the network up to the cut
(:mod:`transferlab.backbones.costs`), and the measured extraction speed.

The counts and the last measured images/second are stored next to the backbone's cached features (same identity
key: weights, preprocessing, hence resolution, and cut points), so a re-run on cached features still knows them
without recounting.
"""

from __future__ import annotations

from dataclasses import dataclass

from transferlab.backbones.costs import CutCost, cut_costs
from transferlab.backbones.model import Backbone
from transferlab.features.cache import FeatureCache
from transferlab.features.extract import ExtractionReport
from transferlab.fileio import read_json, write_json

COST_FILE = "cost.json"


@dataclass(frozen=True)
class BackboneCost:
    params: int
    gflops: float
    """The whole network's (the ``head`` cut point's)."""
    images_per_second: float | None
    """Feature-extraction throughput on this machine (all cut points in one pass); None if never measured."""
    cuts: dict[str, CutCost]
    """The network up to each cut point."""


def backbone_cost(backbone: Backbone, cache: FeatureCache, extraction: ExtractionReport) -> BackboneCost:
    """Cost of ``backbone``: counted once per cache identity, speed updated whenever extraction just ran."""
    path = cache.directory / COST_FILE
    stored = read_json(path) if path.exists() else {}
    updated = dict(stored)
    if "cuts" not in updated:
        costs = cut_costs(backbone.name, backbone.data_config["input_size"])
        updated["cuts"] = [cost.to_json() for cost in costs]
        updated.setdefault("gflops", costs[-1].gflops)
    if extraction.images_per_second:
        updated["images_per_second"] = extraction.images_per_second
    if updated != stored:
        write_json(path, updated)
    cuts = {cost.cut_point: cost for cost in map(CutCost.from_json, updated["cuts"])}
    return BackboneCost(backbone.count_parameters(), float(updated["gflops"]), updated.get("images_per_second"), cuts)
