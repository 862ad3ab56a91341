"""The planner behind ``--time-limit`` / ``--preset``: measure, estimate every stage, choose, and keep to it.

The first backbone's probe is always planned first (a usable model before anything optional); the time left is
then offered, in order, to probes of further candidate backbones (the best cross-validated one is kept), to
fine-tuning (only when at least :data:`MIN_EPOCHS` epochs fit) and, under the ``best`` preset, to a head search
that starts it. Explicit stage flags win: ``--backbone`` (not the default), ``--backbones``, ``--trials`` and
``--finetune`` are kept and only time-boxed. As stages finish, :meth:`Plan.scale` (actual ÷ estimated time so far)
corrects the estimates of the stages still to come, so a slow or busy machine re-plans instead of overrunning.
"""

from __future__ import annotations

import logging
import math
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from transferlab import devices
from transferlab.backbones.registry import DEFAULT_BACKBONE, resolve_weights
from transferlab.budget import DEFAULT_PRESET, Clock, Preset, format_duration, parse_duration, preset_named
from transferlab.config import RunConfig
from transferlab.data import load_dataset
from transferlab.errors import TransferlabError
from transferlab.features.cache import content_hash, default_cache_dir
from transferlab.plan.costs import BackboneCost, measure_backbone

log = logging.getLogger(__name__)

MARGIN = 0.1  # the promise: the run ends within the limit plus 10% (or 30 s)
FINISH_SECONDS = 5.0  # predictions, advice and the report after the last stage
MIN_EPOCHS = 3  # fewer fine-tuning epochs than this rarely beat the probe they start from
MAX_EPOCHS = 10
SEARCH_SHARE = 0.2  # of fine-tuning's time, for the head search that starts it
SEARCH_TRIALS = 200  # the search is bounded by its time, not its trial count
SCALE_BOUNDS = (0.5, 4.0)
MIN_SEARCH_SECONDS = 10.0
SEARCH_REFIT_SHARE = 0.2
OPTIONAL_REACH = 2.0
"""A further backbone whose probe is estimated at up to this many times the time left is still planned, as an
optional step that runs only if the time left when its turn comes holds it (a 4-minute run on a busy machine
otherwise stopped after Lite0 in 125 s: the estimates were made while other jobs ran)."""
ENSEMBLE_STAGE = "ensemble of probes"
ENSEMBLE_SHARE = 0.3  # out-of-fold scoring of every member at its chosen C, vs the members' probe fits


@dataclass
class Step:
    """One row of the plan: a stage, its estimate, and (once run) its actual time and what happened."""

    stage: str
    estimate: float
    actual: float | None = None
    status: str = "planned"  # planned | done | skipped | stopped
    note: str = ""


@dataclass
class Plan:
    """The chosen stages and their estimates for one run; saved as ``plan.json`` with actual times filled in."""

    limit: float
    preset: str
    device: str
    fit_images: int  # train + val: what the probe is fitted on
    train_images: int
    val_images: int
    test_images: int
    outputs: int
    costs: dict[str, BackboneCost]
    backbones: list[str]
    finetune: dict[str, Any] | None
    trials: int
    steps: list[Step] = field(default_factory=list)

    # -- estimates -------------------------------------------------------------------------------------------------
    def probe_estimate(self, name: str) -> float:
        held_out = (self.val_images + self.test_images) / max(1, self.train_images + self.val_images + self.test_images)
        return self.costs[name].first_model(self.fit_images, self.outputs, held_out)

    def epoch_estimate(self, name: str) -> float:
        return self.costs[name].epoch(self.train_images, self.val_images)

    def finetune_overhead(self, name: str) -> float:
        return self.costs[name].finetune_overhead(self.val_images + self.test_images)

    def scale(self) -> float:
        """Actual ÷ estimated seconds over the finished stages (1 before any), clamped: the machine's mood now."""
        done = [s for s in self.steps if s.status == "done" and s.actual is not None and s.estimate > 0]
        if not done:
            return 1.0
        ratio = sum(s.actual for s in done) / sum(s.estimate for s in done)  # type: ignore[misc]
        return min(max(ratio, SCALE_BOUNDS[0]), SCALE_BOUNDS[1])

    def step(self, stage: str) -> Step:
        return next(s for s in self.steps if s.stage == stage)

    # -- decisions while running -----------------------------------------------------------------------------------
    def reserve_after(self, stage: str) -> float:
        """Seconds the planned stages after ``stage`` need at least (fine-tuning: its minimum epochs), plus the
        finish; what a stage may not eat into."""
        later = self.steps[self.steps.index(self.step(stage)) + 1 :]
        reserve = FINISH_SECONDS
        if any(s.stage == "fine-tune" and s.status == "planned" for s in later):
            reserve += self.scale() * self.finetune_minimum()
        return reserve

    def finetune_minimum(self) -> float:
        return self.finetune_minimum_for(self.backbones[-1])

    def finetune_minimum_for(self, name: str) -> float:
        """Fine-tuning ``name`` for :data:`MIN_EPOCHS` epochs, with its set-up and final scoring."""
        return self.finetune_overhead(name) + MIN_EPOCHS * self.epoch_estimate(name)

    def allow(self, stage: str, clock: Clock) -> float | None:
        """Seconds ``stage`` may take now (None: skip it, with the reason noted in the plan). Fine-tuning's grant is
        for training alone (its set-up and final scoring are kept back); a search's leaves a fifth for refitting
        the ensemble of its best heads after the last trial."""
        step = self.step(stage)
        scale = self.scale()
        left = clock.remaining() - self.reserve_after(stage)
        needed = step.estimate * scale
        if stage == "fine-tune":
            needed = self.finetune_minimum() * scale
        elif stage == "head search":
            left, needed = min(left, step.estimate * scale), MIN_SEARCH_SECONDS
        if needed > left:
            step.status, step.note = "skipped", f"needs about {format_duration(needed)}, {format_duration(left)} left"
            log.info(f"plan: skipping {stage} ({step.note})")
            return None
        if stage == "fine-tune":
            return left - self.finetune_overhead(self.backbones[-1]) * scale
        if stage == "head search":
            return left * (1 - SEARCH_REFIT_SHARE)
        return left

    def finished(self, stage: str, seconds: float, note: str = "", status: str = "done") -> None:
        """Record a stage's actual time; ``status`` "stopped": it ran out of its time before finishing."""
        step = self.step(stage)
        step.actual, step.status, step.note = seconds, status, note or step.note

    # -- display and record ----------------------------------------------------------------------------------------
    def table(self) -> str:
        total = sum(s.estimate for s in self.steps) + FINISH_SECONDS
        lines = [
            f"plan for {format_duration(self.limit)} on {self.device} (preset {self.preset}): "
            f"{self.fit_images + self.test_images} images, about {format_duration(total)} in all",
        ]
        for number, s in enumerate(self.steps, 1):
            detail = f"  ({s.note})" if s.note else ""
            lines.append(f"  {number}. {s.stage:<34} ~{format_duration(s.estimate):>12}{detail}")
        return "\n".join(lines)

    def to_json(self) -> dict[str, Any]:
        return {
            "limit_seconds": self.limit,
            "preset": self.preset,
            "device": self.device,
            "images": {
                "fit": self.fit_images,
                "train": self.train_images,
                "val": self.val_images,
                "test": self.test_images,
            },
            "backbones": self.backbones,
            "finetune": self.finetune,
            "trials": self.trials,
            "costs": {name: asdict(cost) for name, cost in self.costs.items()},
            "steps": [asdict(s) for s in self.steps],
        }


def budget_of(config: RunConfig) -> tuple[float, Preset]:
    """The run's limit in seconds and its preset (``--time-limit`` wins over the preset's own budget)."""
    preset = preset_named(config.preset or DEFAULT_PRESET)
    return (parse_duration(config.time_limit) if config.time_limit is not None else preset.seconds), preset


def _candidates(config: RunConfig, preset: Preset) -> list[tuple[str, str | None]]:
    """(backbone, weights) the planner may probe, first the one every run probes; explicit choices win."""
    if config.backbones:
        names = list(dict.fromkeys(config.backbones))
    elif config.backbone != DEFAULT_BACKBONE or config.weights:
        names = [config.backbone]
    else:
        names = [config.backbone, *(b for b in preset.backbones if b != config.backbone)]
    chosen = []
    for name in names:
        weights = config.weights_for(name)
        try:
            resolve_weights(name, weights, allow_download=config.allow_download)
        except TransferlabError as error:
            if not chosen and name == names[0]:
                raise
            log.info(f"plan: {name} left out ({error})")
            continue
        chosen.append((name, weights))
    return chosen


def _split_sizes(config: RunConfig, n_given: int, n_test: int) -> tuple[int, int, int]:
    """(train, val, test) image counts the split will make (close enough to plan with)."""
    test = n_test if config.test else round(n_given * config.test_fraction)
    val = round(n_given * config.val_fraction)
    return n_given - val - (0 if config.test else test), val, test


def make_plan(config: RunConfig, clock: Clock, cache_dir: str | Path | None = None) -> Plan:
    """Measure each candidate backbone on a few images, estimate every stage and choose what fits ``clock``.

    Raises a one-line error when not even the first probe fits, saying how much time it needs.
    """
    limit, preset = clock.limit, budget_of(config)[1]
    device = devices.resolve_device(config.device)
    dataset = load_dataset(config.data, label_sep=config.label_sep, group_column=config.groups)
    n_given = len(dataset)
    if config.subset:
        n_given = max(1, round(n_given * config.subset))
    test_set = load_dataset(config.test, label_sep=config.label_sep) if config.test else None
    paths = [dataset.absolute(i) for i in range(len(dataset))]
    if test_set is not None:
        paths += [test_set.absolute(i) for i in range(len(test_set))]
    digests = []
    for path in paths:
        try:
            digests.append(content_hash(path))
        except OSError:
            continue  # (prepare names the file; here it only costs nothing)
    root = Path(cache_dir) if cache_dir else default_cache_dir()
    candidates = _candidates(config, preset)
    measure = lambda name, weights: measure_backbone(config, name, weights, paths, digests, root, device)  # noqa: E731
    costs = {candidates[0][0]: measure(*candidates[0])}
    # Further backbones see the image at the first one's size, so that their probes can be averaged with one
    # input (transferlab.model.ensemble); measured on the suite, that also lost nothing for each alone.
    config = replace(config, image_size=config.image_size or costs[candidates[0][0]].image_size)
    train, val, test = _split_sizes(config, n_given, len(test_set) if test_set is not None else 0)
    outputs = len(dataset.classes)
    plan = Plan(limit, preset.name, str(device), train + val, train, val, test, outputs, costs, [], None, config.trials)
    first = candidates[0][0]
    needed = plan.probe_estimate(first) + FINISH_SECONDS + clock.elapsed()
    if needed > limit * (1 + MARGIN):  # (estimates are rough: refuse only what even the margin cannot hold)
        raise TransferlabError(
            f"--time-limit {format_duration(limit)} is too small here: the first model (features of "
            f"{costs[first].images - costs[first].cached} images with {first} on {plan.device}, then its probe) "
            f"needs about {format_duration(needed)}; give at least --time-limit {math.ceil(needed * 1.2)}s"
        )
    left = limit - needed
    plan.backbones = [first]
    plan.steps.append(Step(f"probe {first}", plan.probe_estimate(first)))
    # Further backbones come before fine-tuning: a probe per backbone is cheap, and cross-validation picks among
    # them reliably, while fine-tuning at a small budget rarely beats the probe it starts from (docs/benchmarks.md).
    # Each is measured only once the ones before it fit (the preset lists them cheapest first), so measuring costs
    # a small budget no more than the backbone it can afford.
    for name, weights in candidates[1:]:
        measuring = clock.elapsed()
        costs[name] = measure(name, weights)
        left -= clock.elapsed() - measuring
        share = left - (plan.finetune_minimum_for(name) if config.finetune is not None else 0.0)
        cost = plan.probe_estimate(name)
        if cost > share and not config.backbones:
            if cost <= OPTIONAL_REACH * share:  # estimates made under load run long: it may fit once stages finish
                plan.backbones.append(name)
                plan.steps.append(Step(f"probe {name}", cost, note="if the stages before it finish early"))
            log.info(
                f"plan: not counting on {name} or larger (about {format_duration(cost)}, {format_duration(share)} "
                "to spend)"
            )
            break
        plan.backbones.append(name)
        plan.steps.append(Step(f"probe {name}", cost))
        left -= cost
    if len(plan.backbones) > 1:
        ensemble = ENSEMBLE_SHARE * sum(costs[n].probe(plan.fit_images, plan.outputs) for n in plan.backbones)
        plan.steps.append(Step(ENSEMBLE_STAGE, ensemble, note="kept only if it cross-validates better"))
        left -= ensemble
    last = plan.backbones[-1]
    epochs_fit = (left - plan.finetune_overhead(last)) / max(plan.epoch_estimate(last), 1e-9)
    if config.finetune is not None:
        plan.finetune = dict(config.finetune)
    elif preset.finetune and epochs_fit >= MIN_EPOCHS + (SEARCH_SHARE * epochs_fit if preset.search else 0):
        plan.finetune = {"epochs": int(min(MAX_EPOCHS, epochs_fit))}
    if plan.finetune is not None:
        finetune_time = min(left, plan.finetune_overhead(last) + plan.finetune["epochs"] * plan.epoch_estimate(last))
        if config.trials or preset.search:
            search_time = SEARCH_SHARE * left
            plan.trials = config.trials or SEARCH_TRIALS
            plan.steps.append(Step("head search", search_time))
            finetune_time = min(finetune_time, left - search_time)
        plan.steps.append(Step("fine-tune", finetune_time, note=f"up to {plan.finetune.get('epochs', 5)} epochs"))
    elif config.trials:
        plan.steps.append(Step("head search", left, note=f"up to {config.trials} trials"))
    return plan


def planned_config(config: RunConfig, plan: Plan) -> RunConfig:
    """``config`` with the plan's stage choices (what the stages read); the candidates are probed by the pipeline,
    several at the first one's input size."""
    size = config.image_size or (plan.costs[plan.backbones[0]].image_size if len(plan.backbones) > 1 else None)
    # (the backbones stay in the config, so that it names every network the run may deploy and their weights)
    names = config.backbones or (list(plan.backbones) if len(plan.backbones) > 1 else None)
    return replace(
        config,
        image_size=size,
        backbones=names,
        trials=plan.trials if any(s.stage == "head search" for s in plan.steps) else 0,
        finetune=plan.finetune,
    )
