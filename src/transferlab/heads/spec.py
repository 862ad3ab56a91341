"""Declarative head specifications: what sits on top of a frozen (or fine-tuned) backbone feature map.

A spec is plain data (JSON round-trip) so that a search trial, a saved model and a report all describe a head the
same way, and so a head can be priced (parameters, MB) before anything is allocated.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any

from transferlab.errors import TransferlabError, require, unknown_fields

POOLINGS = ("avg", "max", "avgmax", "flatten", "conv1x1")
FINAL_POOLINGS = ("avg", "max", "avgmax", "flatten")
ACTIVATIONS = ("relu", "gelu", "silu", "tanh")
OUTPUTS = ("softmax", "sigmoid")


@dataclass(frozen=True)
class HeadSpec:
    """One head, from feature map to logits.

    ``pooling`` reduces the (C, H, W) map to a vector: global average, global max, both concatenated, flatten, or
    ``conv1x1``: a 1×1 convolution to ``conv_channels`` channels (+ activation) followed by ``conv_pooling``.
    ``extra_maxpool`` inserts a 2×2 max-pool (stride 2) on the map before the final pooling. Each entry of
    ``widths`` is a hidden dense layer (Linear → [BatchNorm] → activation → [Dropout]); dropout also precedes the
    first dense layer. The module always returns logits; ``output`` says which activation/loss applies
    (softmax + cross-entropy for single-label, sigmoid + binary cross-entropy for multi-label).
    """

    pooling: str = "avg"
    conv_channels: int | None = None
    conv_pooling: str = "avg"
    extra_maxpool: bool = False
    widths: tuple[int, ...] = field(default_factory=tuple)
    dropout: float = 0.0
    batchnorm: bool = False
    activation: str = "relu"
    output: str = "softmax"

    def __post_init__(self) -> None:
        object.__setattr__(self, "widths", tuple(int(w) for w in self.widths))
        _check(self.pooling in POOLINGS, f"pooling must be one of {POOLINGS}, got {self.pooling!r}")
        _check(self.conv_pooling in FINAL_POOLINGS, f"conv_pooling must be one of {FINAL_POOLINGS}")
        _check(self.activation in ACTIVATIONS, f"activation must be one of {ACTIVATIONS}, got {self.activation!r}")
        _check(self.output in OUTPUTS, f"output must be one of {OUTPUTS}, got {self.output!r}")
        _check(0.0 <= self.dropout < 1.0, f"dropout must be in [0, 1), got {self.dropout}")
        _check(all(w > 0 for w in self.widths), f"dense widths must be positive, got {list(self.widths)}")
        if self.pooling == "conv1x1":
            _check(bool(self.conv_channels and self.conv_channels > 0), "pooling 'conv1x1' needs conv_channels > 0")
        else:
            _check(self.conv_channels is None, "conv_channels is only meaningful with pooling 'conv1x1'")

    @property
    def final_pooling(self) -> str:
        """The pooling that turns the (possibly reduced) map into a vector."""
        return self.conv_pooling if self.pooling == "conv1x1" else self.pooling

    @property
    def needs_maps(self) -> bool:
        """False when the cached global-average-pooled vectors are exactly this head's input (cheap to train)."""
        return not (self.pooling == "avg" and not self.extra_maxpool)

    @property
    def multilabel(self) -> bool:
        return self.output == "sigmoid"

    def describe(self) -> str:
        """Short human form, e.g. ``conv1x1(448) → maxpool → avg → 112 → out(sigmoid)``."""
        parts = [f"conv1x1({self.conv_channels})"] if self.pooling == "conv1x1" else []
        parts += ["maxpool"] if self.extra_maxpool else []
        parts.append(self.final_pooling)
        parts += [str(w) for w in self.widths]
        extras = [f"dropout {self.dropout:g}"] if self.dropout else []
        extras += ["BN"] if self.batchnorm else []
        suffix = f" [{', '.join([*extras, self.activation])}]" if self.widths or extras else ""
        return " → ".join([*parts, f"out({self.output})"]) + suffix

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["widths"] = list(self.widths)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> HeadSpec:
        unknown = unknown_fields(cls, data)
        _check(not unknown, f"unknown head spec keys: {unknown}")
        return cls(**data)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> HeadSpec:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as error:
            raise TransferlabError(f"head spec is not valid JSON: {error}") from None
        _check(isinstance(data, dict), "head spec JSON must be an object")
        return cls.from_dict(data)


def _check(condition: bool, message: str) -> None:
    require(condition, f"invalid head spec: {message}")
