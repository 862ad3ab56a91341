"""Plan a run to a time budget (``--time-limit`` / ``--preset``): measure each stage's cost here, choose the stages
that fit, re-plan as they finish, and record plan vs actual (``plan.json``)."""

from transferlab.plan.costs import BackboneCost, measure_backbone
from transferlab.plan.planner import Plan, Step, make_plan, planned_config

__all__ = ["BackboneCost", "Plan", "Step", "make_plan", "measure_backbone", "planned_config"]
