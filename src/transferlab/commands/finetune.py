"""``transferlab finetune DATA``: staged fine-tuning of the backbone with the chosen head on top.

``add_finetune_options`` / ``finetune_options`` are shared with ``transferlab run`` (fine-tuning as its last stage).
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import TYPE_CHECKING

from transferlab.commands.options import add_run_options, run_config
from transferlab.errors import TransferlabError
from transferlab.fileio import read_json

if TYPE_CHECKING:  # torch-heavy modules load only when the command runs, keeping CLI start-up fast
    from transferlab.finetune import FinetuneOptions
    from transferlab.heads import HeadSpec


def add_finetune_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("fine-tuning")
    group.add_argument(
        "--unfreeze",
        default="top:3",
        help="units to train in the end: none, all, top:K or names (e.g. blocks.6.0,conv_head+bn2; a stage name "
        "such as blocks.5 means all its blocks). Default top:3",
    )
    group.add_argument("--stages", type=int, default=1, help="unfreezing steps after the head-only stage (default 1)")
    group.add_argument("--epochs", type=int, default=5, help="maximum epochs per unfreezing stage (default 5)")
    group.add_argument(
        "--head-epochs",
        type=int,
        help="epochs of the head-only stage (0 skips it; default 3 for a new head, 0 for a head warm-started from "
        "the probe or the head search, which trained it already)",
    )
    group.add_argument(
        "--lr",
        type=float,
        default=1e-3,
        help="head learning rate (AdamW; default 1e-3); once the head is trained (warm start or head stage) it "
        "moves at the backbone LR in unfreezing stages",
    )
    group.add_argument("--backbone-lr-ratio", type=float, default=0.1, help="backbone LR / head LR (default 0.1)")
    group.add_argument("--layer-decay", type=float, help="multiply the backbone LR by this per unit going down")
    group.add_argument("--weight-decay", type=float, default=0.01)
    group.add_argument("--patience", type=int, default=3, help="early-stopping patience in epochs (default 3)")
    group.add_argument("--finetune-image-size", type=int, help="training resolution (default: the backbone's)")
    group.add_argument(
        "--augment",
        default="basic",
        help="basic (flip, rotation, translation, contrast), randaugment, trivialaugment or none",
    )
    group.add_argument(
        "--bn-stats",
        default="frozen",
        help="BatchNorm statistics in trainable blocks: frozen (stored ones, default) or batch (re-estimated, then "
        "per batch); frozen blocks always keep theirs",
    )
    group.add_argument("--balance", default="weights", help="imbalance handling: weights (default), sampler, none")
    group.add_argument("--no-lp-init", action="store_true", help="do not warm-start a linear head from the probe")
    group.add_argument("--head", help="head spec as JSON, or a JSON file (a spec, or search.json: its best spec)")
    group.add_argument("--resume", action="store_true", help="continue an interrupted fine-tune (needs --name)")
    group.add_argument(
        "--search-depth",
        type=int,
        default=0,
        metavar="TRIALS",
        help="first choose --unfreeze top:K and --lr by an Optuna study of TRIALS short fine-tunes on half the "
        "training images (written to finetune_search.json)",
    )
    group.add_argument(
        "--cache-views",
        type=int,
        default=0,
        help="cache the frozen lower part's activations for K augmented views per image and train only the upper "
        "part on them (much faster per epoch; K=0, the default, runs the whole network every step)",
    )


def head_spec(value: str | None) -> HeadSpec | None:
    """A HeadSpec from ``--head``: inline JSON, a spec file, or a head-search ``search.json``."""
    from transferlab.heads import HeadSpec

    if value is None:
        return None
    if value.lstrip().startswith("{"):
        return HeadSpec.from_json(value)
    path = Path(value)
    if not path.is_file():
        raise TransferlabError(f"--head: neither JSON nor an existing file: {value}")
    data = read_json(path)
    return HeadSpec.from_dict(data["best"]["spec"] if "best" in data else data)


def finetune_options(args: argparse.Namespace) -> FinetuneOptions:
    """``FinetuneOptions`` from parsed ``add_finetune_options`` (+ run options for seed, batch size, workers)."""
    from transferlab.finetune import FinetuneOptions

    return FinetuneOptions(
        unfreeze=args.unfreeze,
        stages=args.stages,
        epochs=args.epochs,
        head_epochs=args.head_epochs,
        lr=args.lr,
        backbone_lr_ratio=args.backbone_lr_ratio,
        layer_decay=args.layer_decay,
        weight_decay=args.weight_decay,
        patience=args.patience,
        batch_size=args.batch_size or FinetuneOptions.batch_size,
        image_size=args.finetune_image_size,
        augment=args.augment,
        balance=args.balance,
        bn_stats=args.bn_stats,
        lp_init=not args.no_lp_init,
        head_spec=head_spec(args.head),
        seed=args.seed,
        workers=args.workers or 0,
        resume=args.resume,
        cache_views=args.cache_views,
    )


def register(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "finetune",
        help="fine-tune the backbone: head first, then whole blocks unfrozen from the top",
        description="Train the head, then unfreeze whole blocks from the top (frozen blocks keep BatchNorm in "
        "inference mode), with AdamW, warm-up + cosine LR, an LR sanity check, early stopping and per-epoch "
        "checkpoints. Writes finetune.json, augmentation_preview.png and finetuned.safetensors/.json.",
    )
    add_run_options(parser)
    add_finetune_options(parser)
    parser.add_argument("--folds", type=int, help="k-fold cross-validation: K fine-tunes, test metric mean ± std")
    parser.add_argument(
        "--from-scratch", action="store_true", help="baseline: same architecture, random init, all units trained"
    )
    parser.set_defaults(handler=handle)


def handle(args: argparse.Namespace) -> None:
    from transferlab.devices import resolve_device
    from transferlab.distributed import from_environment
    from transferlab.finetune import finetune
    from transferlab.finetune.depth_search import search_unfreeze
    from transferlab.finetune.variants import finetune_folds, finetune_from_scratch
    from transferlab.prepare import prepare
    from transferlab.record import RunDir
    from transferlab.record.rundir import default_run_name

    if args.resume and not args.name:
        raise TransferlabError("--resume needs --name (the run directory to continue)")
    if args.folds and args.resume:
        raise TransferlabError("--resume is not supported with --folds")
    options = finetune_options(args)
    # data-parallel under torchrun (one process per GPU with --device cuda); a no-op otherwise
    distributed = from_environment(resolve_device(args.device).type)
    say = print if distributed.is_main else (lambda _: None)
    if not distributed.is_main:  # one voice under torchrun: rank 0's
        logging.getLogger("transferlab").setLevel(logging.WARNING)
    config = run_config(args, finetune=options.result_affecting())
    progress = not args.no_progress and distributed.is_main
    prepared = prepare(config, cache_dir=args.cache_dir, progress=progress, distributed=distributed)  # ranks share it
    name = distributed.broadcast(args.name or default_run_name(Path(config.data)))  # one directory for all ranks
    run_dir = RunDir(Path(args.runs_dir), name)
    if distributed.is_main:
        prepared.write_record(run_dir)
    run_dir = run_dir.path
    try:
        if args.folds:
            finetune_folds(prepared, run_dir, options, args.folds, distributed=distributed)
            say(f"run directory: {run_dir}")
            return
        if args.search_depth:
            options, _ = search_unfreeze(prepared, run_dir, options, trials=args.search_depth)
        train = finetune_from_scratch if args.from_scratch else finetune
        outcome = train(prepared, run_dir, options, distributed=distributed)
    finally:
        distributed.close()
    for stage in outcome.stages:
        say(
            f"{stage['name']:<10} best epoch {stage['best_epoch']} ({stage['stop_reason']}), "
            f"val {outcome.metric} {stage['best_val_metric']:.4f}, restarts {len(stage['restarts'])}"
        )
    for split, values in outcome.metrics.items():
        say(f"{split:<5} {outcome.metric} {values[outcome.metric]:.4f}")
    say(f"run directory: {run_dir}")
