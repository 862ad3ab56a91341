"""``finetune()``: from prepared data to a fine-tuned model, its record and its saved weights.

Stage plan: the head alone first (optionally warm-started from a linear probe: LP-FT), then the target units are
unfrozen from the top in ``stages`` equal steps, each step a new stage with its own LR schedule and early stopping.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from safetensors.torch import save

from transferlab.backbones.cut import HEAD, head_is_map_average
from transferlab.data.split import split_digest
from transferlab.distributed import Distributed, from_environment
from transferlab.errors import TransferlabError
from transferlab.fileio import atomic_write_bytes, write_json
from transferlab.finetune.augment import save_preview
from transferlab.finetune.batchnorm import BN_STATS, set_trainable
from transferlab.finetune.blocks import Unit, parse_unfreeze
from transferlab.finetune.boundary import cached_boundary
from transferlab.finetune.checkpoint import load_checkpoint
from transferlab.finetune.engine import StagePlan, Trainer
from transferlab.finetune.network import FinetuneNet, init_from_probe, is_linear_head
from transferlab.finetune.options import FinetuneOptions
from transferlab.finetune.setup import FinetuneSetup, build_setup
from transferlab.heads import Head
from transferlab.metrics import classification_metrics, headline, tune_thresholds
from transferlab.model.network import saved_state
from transferlab.probe import fit_probe
from transferlab.probe.linear import ProbeResult
from transferlab.record import layout

if TYPE_CHECKING:
    from transferlab.prepare import PreparedData

log = logging.getLogger(__name__)

HEAD_EPOCHS = 3
PREVIEW_IMAGES = 4


@dataclass
class FinetuneOutcome:
    """Stage records, val/test metrics and scores of the final model, and the model itself."""

    run_dir: Path
    stages: list[dict[str, Any]]
    metric: str
    metrics: dict[str, dict[str, Any]]
    scores: dict[str, np.ndarray]
    thresholds: list[float] | None
    model: FinetuneNet
    lp_init: bool
    seconds: float
    paths: dict[str, list[Path]] = field(default_factory=dict)

    @property
    def test_metrics(self) -> dict[str, Any]:
        return self.metrics.get("test", {})


def plan_stages(
    units: list[Unit], target: list[Unit], options: FinetuneOptions, head_trained: bool = False
) -> list[StagePlan]:
    """Head-only stage, then ``options.stages`` stages each adding the next whole units from the top.

    Without an explicit ``head_epochs`` a warm-started head (``head_trained``) gets no head-only stage: the probe or
    the head search already trained it on cached features, far more cheaply than epochs over images would.
    """
    if options.bn_stats not in BN_STATS:
        raise TransferlabError(f"unknown --bn-stats '{options.bn_stats}'; choose from {', '.join(BN_STATS)}")
    head_epochs = options.head_epochs
    if head_epochs is None:
        head_epochs = 0 if head_trained else HEAD_EPOCHS
    if options.stages < 1 or options.epochs < 1 or head_epochs < 0:
        raise TransferlabError("--stages and --epochs must be at least 1, --head-epochs at least 0")
    plans = [StagePlan("head", [], head_epochs)] if head_epochs else []
    steps = min(options.stages, len(target))
    top_down = list(reversed(units))
    for step in range(1, steps + 1):
        trainable = target[: math.ceil(len(target) * step / steps)]
        contiguous = trainable == top_down[: len(trainable)]
        name = f"top:{len(trainable)}" if contiguous else "units:" + ",".join(u.name for u in trainable)
        plans.append(StagePlan(name, trainable, options.epochs))
    if not plans:
        raise TransferlabError("nothing to train: --head-epochs 0 and --unfreeze none")
    return plans


def _fingerprint(prepared: PreparedData, options: FinetuneOptions) -> str:
    identity = {
        "options": options.result_affecting(),
        "backbone": prepared.backbone.identity(),
        "cut_point": prepared.config.cut_point,
        "split": split_digest(prepared.dataset.paths, prepared.hashes, prepared.split),
    }
    return hashlib.sha256(json.dumps(identity, sort_keys=True, default=str).encode()).hexdigest()


def finetune(
    prepared: PreparedData,
    run_dir: Path,
    options: FinetuneOptions,
    *,
    on_epoch: Callable[[dict[str, Any], dict[str, Any]], None] | None = None,
    probe: ProbeResult | None = None,
    head_init: Head | None = None,
    distributed: Distributed | None = None,
) -> FinetuneOutcome:
    """Fine-tune on ``prepared`` and write finetune.json, augmentation_preview.png, finetuned.safetensors/.json.

    ``probe`` (fitted on ``prepared.features()``) is reused for the LP-FT warm start instead of fitting a new one.
    ``head_init``: a head already trained on these features (the head search's winner, taking raw pooled
    features); training starts from its weights, so every stage's epoch 0 is the head-only model and restore-best
    can only keep or improve on it (on validation).
    ``on_epoch(stage_record, history_entry)`` is called after each epoch's checkpoint is on disk.
    Under ``torchrun`` (or with ``distributed`` given) training is data-parallel and only rank 0 logs and writes.
    """
    started = time.perf_counter()
    distributed = distributed or from_environment(prepared.device.type)
    run_dir = Path(run_dir)
    # under torchrun on GPUs each process trains on its own GPU (cuda:LOCAL_RANK), not the run's first one
    setup = build_setup(prepared, options, distributed.device if distributed.enabled else None)
    net, units, loaders, paths = setup.net, setup.units, setup.loaders, setup.paths
    head_source = _warm_start(setup, prepared, options, probe, head_init, distributed.is_main)
    plans = plan_stages(units, parse_unfreeze(options.unfreeze, units), options, head_source != "random")
    if not len(paths["train"]) or not len(paths["val"]):
        raise TransferlabError("fine-tuning needs training and validation images (check --val-fraction)")
    if distributed.is_main:
        mean, std = setup.data_config["mean"], setup.data_config["std"]
        preview = run_dir / layout.AUGMENTATION_PREVIEW
        save_preview(preview, paths["train"][:PREVIEW_IMAGES], setup.train_transform, mean, std)

    checkpoint = run_dir / layout.FINETUNE_CHECKPOINT
    train_net, train_loaders, stores = net, loaders, []
    if options.cache_views:  # train the upper part on cached boundary activations (finetune/boundary.py)
        train_net, train_loaders, stores = cached_boundary(
            net, units, plans, loaders, options, image_size=setup.data_config["input_size"][-1], directory=run_dir
        )
    trainer = Trainer(
        train_net,
        units,
        {**train_loaders, "train": distributed.shard(train_loaders["train"])},
        setup.loss,
        prepared.dataset.classes,
        options,
        checkpoint,
        fingerprint=_fingerprint(prepared, options),
        multilabel=prepared.dataset.multilabel,
        head_trained=head_source != "random",
        on_epoch=on_epoch,
        distributed=distributed,
    )
    stages = trainer.run(plans, load_checkpoint(checkpoint) if options.resume else None)
    for store in stores:
        store.release()
    trainer.net = net  # final scores: the whole network on images, also after training on cached activations

    set_trainable(net.body, units, units)
    scores, metrics, thresholds = _evaluate(trainer, loaders, prepared.dataset.classes)
    metric, lp_init = headline(metrics["val"])[0], head_source == "probe"
    outcome = FinetuneOutcome(run_dir, stages, metric, metrics, scores, thresholds, net.eval(), lp_init, 0.0, paths)
    if distributed.is_main:
        _write_outputs(outcome, prepared, options, setup, head_source)
        checkpoint.unlink(missing_ok=True)
    outcome.seconds = time.perf_counter() - started
    return outcome


def _warm_start(
    setup: FinetuneSetup,
    prepared: PreparedData,
    options: FinetuneOptions,
    probe: ProbeResult | None,
    head_init: Head | None,
    main: bool,
) -> str:
    """Initialise the head from the searched head, or the linear probe (LP-FT); returns which ("random": neither)."""
    net, spec, size = setup.net, setup.spec, setup.data_config["input_size"][-1]
    if head_init is None and not (options.lp_init and is_linear_head(spec)):
        return "random"
    source = "searched head" if head_init is not None else "probe"
    feature_size = prepared.backbone.data_config["input_size"][-1]
    if size != feature_size:
        # The head learnt features of feature_size-pixel inputs; at another resolution the same weights start it
        # off target (first-epoch loss above the sanity limit), which no LR restart can repair.
        if main:
            log.info(f"{source} warm start skipped: it saw {feature_size} px features, fine-tuning runs at {size} px")
        return "random"
    pooled_input = head_init is None or not head_init.spec.needs_maps
    if pooled_input and prepared.config.cut_point == HEAD and not head_is_map_average(prepared.backbone.model, size):
        # VGG's pre-logits are its fc layers, ConvNeXt's are normed, ViT's are the CLS token: a head trained on
        # them would start fine-tuning (which averages the final maps) off target, or not even fit
        if main:
            log.info(f"{source} warm start skipped: {prepared.backbone.name}'s pre-logits are not its averaged maps")
        return "random"
    if head_init is not None:
        if head_init.spec != spec:
            raise TransferlabError(f"head_init is a {head_init.spec.describe()} head, not {spec.describe()}")
        net.head.load_state_dict(head_init.state_dict())
        return source
    if probe is None or probe.signed_sqrt or probe.cut_point not in (None, prepared.config.cut_point):
        # the head reads raw pooled features of the cut point: a probe of joined depths or of their signed square
        # roots cannot be folded into it, so a raw one is fit
        probe = fit_probe(
            prepared.features(), prepared.targets(), prepared.dataset.classes, seed=options.seed, use_signed_sqrt=False
        )
    init_from_probe(net, probe.train_model, len(prepared.dataset.classes))  # it has not seen val
    return source


def _evaluate(
    trainer: Trainer, loaders: dict[str, Any], classes: list[str]
) -> tuple[dict[str, np.ndarray], dict[str, dict[str, Any]], list[float] | None]:
    """Scores and metrics on val and test; multi-label thresholds are tuned on val only, then applied to test."""
    scores, truths = {}, {}
    for split in ("val", "test"):
        if len(loaders[split].dataset):
            _, scores[split], truths[split] = trainer.scores(loaders[split])
    thresholds = tune_thresholds(truths["val"], scores["val"]) if trainer.multilabel else None
    metrics = {split: classification_metrics(truths[split], scores[split], classes, thresholds) for split in scores}
    return scores, metrics, None if thresholds is None else thresholds.tolist()


def _write_outputs(
    outcome: FinetuneOutcome, prepared: PreparedData, options: FinetuneOptions, setup: FinetuneSetup, head_source: str
) -> None:
    write_json(
        outcome.run_dir / layout.FINETUNE,
        {
            "stages": outcome.stages,
            "test_metrics": outcome.test_metrics,
            "val_metrics": outcome.metrics["val"],
            "metric": outcome.metric,
            "lp_init": outcome.lp_init,
            "head_init": head_source,
            "options": options.result_affecting(),
        },
    )
    weights = save(saved_state(outcome.model, prepared.backbone.model))
    atomic_write_bytes(outcome.run_dir / layout.FINETUNED_WEIGHTS, weights)
    write_json(
        outcome.run_dir / layout.FINETUNED_META,
        {
            "backbone": prepared.backbone.name,
            "weights_sha256": prepared.backbone.weights.sha256,
            "head_spec": setup.spec.to_dict(),
            "cut_point": prepared.config.cut_point,
            "classes": prepared.dataset.classes,
            "multilabel": prepared.dataset.multilabel,
            "thresholds": outcome.thresholds,
            "preprocessing": {k: list(v) if isinstance(v, tuple) else v for k, v in setup.data_config.items()},
        },
    )
