"""Head stage: declarative head specs, their torch modules, and their cost before training."""

from transferlab.heads.build import Head, build_head, cost_warning, head_cost, pooled_dim
from transferlab.heads.spec import HeadSpec

__all__ = ["Head", "HeadSpec", "build_head", "cost_warning", "head_cost", "pooled_dim"]
