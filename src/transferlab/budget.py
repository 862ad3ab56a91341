"""Time budgets: ``--time-limit 90s|10m|2h``, the presets that stand for a budget and a set of stages, the clock.

A budget is a promise to the user (the run ends within the limit plus a small margin, with a usable model), so
the clock is a monotonic one started before any work, and every stage reads the time left from it.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass

from transferlab.backbones.registry import PACKAGED_WEIGHTS
from transferlab.errors import TransferlabError

_DURATION = re.compile(r"(\d+(?:\.\d*)?)\s*(h|m|s)?", re.IGNORECASE)
_UNIT_SECONDS = {"h": 3600.0, "m": 60.0, "s": 1.0}


def parse_duration(text: str | float) -> float:
    """Seconds in ``90``, ``90s``, ``10m``, ``2h`` or ``1h30m``; a one-line error for anything else."""
    if isinstance(text, int | float):
        seconds = float(text)
    else:
        spec = str(text).strip().replace(" ", "")
        parts = list(_DURATION.finditer(spec))
        if not parts or "".join(p.group(0) for p in parts) != spec or any(not p.group(2) for p in parts[:-1]):
            raise TransferlabError(f"--time-limit: cannot read {text!r}; write e.g. 90s, 10m, 2h or 1h30m")
        seconds = sum(float(p.group(1)) * _UNIT_SECONDS[(p.group(2) or "s").lower()] for p in parts)
    if not seconds > 0:
        raise TransferlabError(f"--time-limit must be positive, got {text!r}")
    return seconds


def format_duration(seconds: float) -> str:
    """``42 s``, ``3 min 05 s`` or ``1 h 02 min``: what a person reads in a plan."""
    seconds = max(0.0, seconds)
    if seconds < 60:
        return f"{seconds:.0f} s"
    minutes, rest = divmod(round(seconds), 60)
    if minutes < 60:
        return f"{minutes} min {rest:02d} s"
    return f"{minutes // 60} h {minutes % 60:02d} min"


@dataclass(frozen=True)
class Preset:
    """A budget and the stages the planner may spend it on (explicit stage flags still win)."""

    name: str
    seconds: float
    backbones: tuple[str, ...]  # candidates in order of cost; the first is always probed
    search: bool  # head search (only worth its time as the start of fine-tuning)
    finetune: bool
    description: str


PACKAGED = tuple(PACKAGED_WEIGHTS)
PRESETS = {
    preset.name: preset
    for preset in (
        Preset("fast", 120, PACKAGED[:1], False, False, "2 min: the packaged default backbone and its probe"),
        Preset("balanced", 600, PACKAGED, False, True, "10 min: probes of every packaged backbone, then fine-tuning"),
        Preset("best", 3600, PACKAGED, True, True, "1 h: every packaged backbone, head search, then fine-tuning"),
    )
}
DEFAULT_PRESET = "balanced"
"""The stages a bare ``--time-limit`` may use."""


def preset_named(name: str) -> Preset:
    if name not in PRESETS:
        raise TransferlabError(f"--preset must be one of {', '.join(PRESETS)}, got {name!r}")
    return PRESETS[name]


class Clock:
    """Seconds since the run started and seconds left of its limit (monotonic: a clock change moves nothing)."""

    def __init__(self, limit: float) -> None:
        self.limit = limit
        self.started = time.monotonic()

    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def remaining(self) -> float:
        return self.limit - self.elapsed()
