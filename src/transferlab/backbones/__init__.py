"""Backbone stage: timm models with their top removed, weights resolved offline, multi-depth feature outputs.

``Backbone`` and ``load_backbone`` are imported on first use (PEP 562), so that reading a name or a constant from
this package (the CLI's option parsers do) does not import timm and torchvision.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from transferlab.backbones.registry import DEFAULT_BACKBONE, available_backbones

if TYPE_CHECKING:
    from transferlab.backbones.model import Backbone, load_backbone

__all__ = ["DEFAULT_BACKBONE", "Backbone", "available_backbones", "load_backbone"]


def __getattr__(name: str) -> Any:
    if name in ("Backbone", "load_backbone"):
        from transferlab.backbones import model

        return getattr(model, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
