"""``RunConfig``: every option that changes a run's result, validated once when it is made.

It sits below every stage (stages read it, none defines it), is saved as ``config.json`` and reloads losslessly
with :meth:`RunConfig.from_dict`, so a run directory is enough to repeat the run.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from transferlab import budget, devices
from transferlab.backbones.cut import HEAD
from transferlab.backbones.registry import DEFAULT_BACKBONE, WeightsOption, weights_files
from transferlab.errors import require, unknown_fields

WHOLE_IMAGE = 1.0
"""The default ``crop_pct``: resize the whole image, no centre crop. Chosen by 3-fold CV on the training folders of
the quality suite (``bench/probe_choices.py``): mean CV accuracy/mAP 0.9135 vs 0.9066 with timm's 0.875 crop,
higher on 5 of 7 datasets. ``None`` is the backbone's own crop."""


@dataclass
class RunConfig:
    """Every option that changes a run's result; saved as ``config.json`` and enough to repeat the run.

    ``trials`` 0 turns the head search off, ``finetune`` None turns fine-tuning off (else FinetuneOptions fields),
    ``backbones`` (several names) ranks them first. ``test``: a separate labelled folder or CSV scored as the test
    split (then none is carved out of ``data``); ``groups``: the CSV column whose images stay on one side of every
    split and fold. ``crop_pct``: the centre-crop ratio (None: the backbone's own). ``multi_depth``: with the
    ``head`` cut point the probe also tries the pre-logits joined with the last two stages' pooled features and
    keeps whichever cross-validates better. ``signed_sqrt``: the probe reads sign(x)·sqrt(|x|) of the pooled
    features (``transferlab.model.probe_head.signed_sqrt``; False: the raw features). ``device``: where networks
    run (``transferlab.devices``; ``auto`` is resolved when the run starts, so a saved config reruns on whatever the
    next machine has); ``batch_size`` None: the device's default. ``time_limit`` (seconds, or ``"10m"``) /
    ``preset``: plan the run to a budget (``transferlab.plan``): the planner chooses backbones, search and
    fine-tuning that fit, explicit stage options win. ``weights``: one file for ``backbone`` (or the only name in
    ``backbones``), or a file per backbone as ``"NAME=FILE,NAME=FILE"`` or a dict (:meth:`weights_for`). Bad values
    raise a one-line :class:`TransferlabError`.
    """

    data: str
    backbone: str = DEFAULT_BACKBONE
    weights: WeightsOption = None
    cut_point: str = HEAD
    multi_depth: bool = True
    signed_sqrt: bool = True
    image_size: int | None = None
    crop_pct: float | None = WHOLE_IMAGE
    seed: int = 0
    subset: float | None = None
    val_fraction: float = 0.15
    test_fraction: float = 0.15
    label_sep: str | None = None
    test: str | None = None
    groups: str | None = None
    batch_size: int | None = None
    workers: int | None = None
    device: str = devices.AUTO
    allow_download: bool = False
    backbones: list[str] | None = None
    trials: int = 0
    search_timeout: float | None = None
    search_jobs: int = 1
    search_ensemble: int = 5
    fractions: list[float] | None = None
    finetune: dict[str, Any] | None = None
    time_limit: float | None = None
    preset: str | None = None

    def __post_init__(self) -> None:
        self.data = str(self.data)
        self.test = None if self.test is None else str(self.test)
        require(self.image_size is None or self.image_size >= 8, f"--image-size must be >= 8, got {self.image_size}")
        require(self.crop_pct is None or 0 < self.crop_pct <= 1, f"--crop-pct must be in (0, 1], got {self.crop_pct}")
        require(self.subset is None or 0 < self.subset <= 1, f"--subset must be in (0, 1], got {self.subset}")
        for name in ("val_fraction", "test_fraction"):
            value = getattr(self, name)
            require(0 <= value < 1, f"--{name.replace('_', '-')} must be in [0, 1), got {value}")
        require(
            self.val_fraction + self.test_fraction < 1,
            f"--val-fraction + --test-fraction must be below 1, got {self.val_fraction + self.test_fraction:g}",
        )
        require(self.batch_size is None or self.batch_size >= 1, f"--batch-size must be >= 1, got {self.batch_size}")
        self.device = devices.check_device_name(self.device)
        require(self.workers is None or self.workers >= 0, f"--workers must be >= 0, got {self.workers}")
        require(self.trials >= 0, f"--trials must be >= 0, got {self.trials}")
        require(self.search_timeout is None or self.search_timeout > 0, "--timeout must be positive")
        require(self.search_jobs >= 1, f"--jobs must be >= 1, got {self.search_jobs}")
        require(self.search_ensemble >= 1, f"--ensemble must be >= 1, got {self.search_ensemble}")
        if self.time_limit is not None:
            self.time_limit = budget.parse_duration(self.time_limit)
        if self.preset is not None:
            budget.preset_named(self.preset)
        for fraction in self.fractions or []:
            require(0 < fraction <= 1, f"--fractions must be in (0, 1], got {fraction}")
        weights_files(self.weights, self.backbone, self.backbones)  # malformed --weights fails here, before any work

    def weights_for(self, name: str) -> str | None:
        """The weights file ``--weights`` gives backbone ``name`` (None: found as usual, packaged or HF cache)."""
        return weights_files(self.weights, self.backbone, self.backbones).get(name)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> RunConfig:
        """The config saved by :meth:`to_dict`; unknown keys are an error (a config from another version)."""
        unknown = unknown_fields(cls, values)
        require(not unknown, f"config has unknown options: {', '.join(unknown)}")
        return cls(**values)
