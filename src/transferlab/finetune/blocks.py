"""Freeze units: the whole pieces of a timm network that may be frozen or trained, taken from the model itself.

Units come from the model's own ``group_matcher`` (the same grouping timm uses for layer-wise LR decay): the stem
(``conv_stem+bn1``), every block (``blocks.S.I`` for EfficientNet, ``layerS.I`` for ResNet) and the final 1×1
conv (``conv_head+bn2``). Freezing by unit means a block is never left half-trainable, a known trap when models are
cut by parameter names. A stage name such as ``blocks.5`` selects all of its blocks.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from torch import nn

from transferlab.errors import TransferlabError


@dataclass(frozen=True)
class Unit:
    """One freezable piece: its name and the module paths (relative to the model) it consists of.

    ``parameters``: parameters the model itself owns outside any module (ViT's ``cls_token`` and ``pos_embed``,
    which timm groups with the stem), frozen and trained with the unit."""

    name: str
    modules: tuple[str, ...]
    parameters: tuple[str, ...] = ()


def _matchers(model: nn.Module) -> list[re.Pattern[str]]:
    """The model's grouping regexes, in network order (stem first).

    Some models (InceptionV3) group by a function instead of regexes; they get a unit per top-level child, which
    for them is one per block (``Conv2d_4a_3x3``, ``Mixed_5b``, ...)."""
    matcher = model.group_matcher(coarse=False) if hasattr(model, "group_matcher") else {}
    if not isinstance(matcher, dict):
        return []
    patterns: list[str] = []
    for value in matcher.values():
        entries = value if isinstance(value, list | tuple) else [value]
        patterns += [entry[0] if isinstance(entry, tuple) else entry for entry in entries]
    return [re.compile(pattern) for pattern in patterns]


def freeze_units(model: nn.Module) -> list[Unit]:
    """The model's units from bottom (input side) to top; modules without parameters are skipped."""
    matchers = _matchers(model)
    order: list[str] = []
    members: dict[str, list[str]] = {}
    for path, module in model.named_modules():
        if not path or not any(True for _ in module.parameters(recurse=False)):
            continue
        name, member = _unit_of(path, matchers)
        if name not in members:
            order.append(name)
            members[name] = []
        if member not in members[name]:
            members[name].append(member)
    owned: dict[str, list[str]] = {}
    for path, _ in model.named_parameters(recurse=False):
        name = _unit_of(path, matchers)[0]
        if name not in members:  # a unit of bare parameters: they sit at the input side (embeddings)
            order.insert(0, name)
            members[name] = []
        owned.setdefault(name, []).append(path)
    names = {name: "+".join(members[name] or owned[name]) if name.startswith("(") else name for name in order}
    return [Unit(names[name], tuple(members[name]), tuple(owned.get(name, []))) for name in order]


def _unit_of(path: str, matchers: list[re.Pattern[str]]) -> tuple[str, str]:
    """(unit key, module path to freeze) for a module that owns parameters.

    A regex with a numbered group (``^blocks\\.(\\d+)\\.(\\d+)``) names a block by its matched prefix; a plain
    alternative (``^conv_stem|bn1``) groups its matches under one unit keyed by the regex. Unmatched modules are a
    unit per top-level child.
    """
    for matcher in matchers:
        found = matcher.match(path)
        if found and (found.end() == len(path) or path[found.end()] == "."):
            if matcher.groups:
                return found.group(0), found.group(0)
            return f"({matcher.pattern})", path
    top = path.split(".")[0]
    return top, top


def parse_unfreeze(spec: str, units: list[Unit]) -> list[Unit]:
    """Units to train for ``--unfreeze``: ``none``, ``all``, ``top:K`` or comma-separated unit / stage names.

    The result is ordered from the top of the network down, the order in which stages unfreeze them.
    """
    spec = spec.strip()
    top_down = list(reversed(units))
    if spec == "none":
        return []
    if spec == "all":
        return top_down
    if spec.startswith("top:"):
        count = spec.removeprefix("top:")
        if not count.isdigit() or not 0 < int(count) <= len(units):
            raise TransferlabError(f"--unfreeze {spec}: K must be an integer from 1 to {len(units)} (the unit count)")
        return top_down[: int(count)]
    chosen: set[str] = set()
    for name in (part.strip() for part in spec.split(",")):
        matches = [u.name for u in units if u.name == name or u.name.startswith(name + ".")]
        if not matches:
            raise TransferlabError(_unknown_unit_message(name, units))
        chosen.update(matches)
    return [unit for unit in top_down if unit.name in chosen]


def _unknown_unit_message(name: str, units: list[Unit]) -> str:
    owner = next(
        (u.name for u in units for m in u.modules if name.startswith(m + ".") or m.startswith(name + ".")), None
    )
    owner = owner or next((u.name for u in units if name in u.modules), None)
    if owner:
        return f"--unfreeze: '{name}' is only part of unit '{owner}'; whole units only (never half a block)"
    listing = ", ".join(u.name for u in units)
    return f"--unfreeze: unknown unit '{name}'; use none, all, top:K or names from: {listing}"
