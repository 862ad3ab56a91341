"""Backbone stage: timm models with their top removed, weights resolved offline, multi-depth feature outputs."""

from transferlab.backbones.model import Backbone, load_backbone
from transferlab.backbones.registry import DEFAULT_BACKBONE, available_backbones

__all__ = ["DEFAULT_BACKBONE", "Backbone", "available_backbones", "load_backbone"]
