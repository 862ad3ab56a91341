"""``FinetuneOptions``: every knob of a fine-tuning run, read by the set-up, the stage plan and the Trainer alike."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from transferlab.heads import HeadSpec


@dataclass
class FinetuneOptions:
    """Everything that changes a fine-tuning result (``resume`` and ``workers`` only change how it is computed;
    ``time_limit``, seconds of training the run's planner grants, stops it early and is recorded per stage)."""

    unfreeze: str = "top:3"
    stages: int = 1
    epochs: int = 5
    head_epochs: int | None = None  # None: HEAD_EPOCHS for a new head, 0 for a warm-started (already trained) one
    lr: float = 1e-3
    backbone_lr_ratio: float = 0.1
    layer_decay: float | None = None
    weight_decay: float = 0.01
    warmup: float = 0.1
    patience: int = 3
    batch_size: int = 32
    image_size: int | None = None
    augment: str = "basic"
    balance: str = "weights"
    lp_init: bool = True
    head_spec: HeadSpec | None = None
    max_restarts: int = 3
    bn_stats: str = "frozen"
    cache_views: int = 0
    seed: int = 0
    workers: int = 0
    resume: bool = False
    time_limit: float | None = None

    def result_affecting(self) -> dict[str, Any]:
        values = asdict(self)
        values["head_spec"] = None if self.head_spec is None else self.head_spec.to_dict()
        return {k: v for k, v in values.items() if k not in ("resume", "workers", "time_limit")}
