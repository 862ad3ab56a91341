"""``transferlab lr-find DATA``: LR range test for the fine-tuning set-up, with a plot and a suggested LR."""

from __future__ import annotations

import argparse
from pathlib import Path

from transferlab.commands.finetune import add_finetune_options, finetune_options
from transferlab.commands.options import add_run_options, run_config


def register(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "lr-find",
        help="LR range test: loss vs exponentially growing LR, plot and suggested --lr",
        description="Train the fine-tuning network (same --unfreeze, head, augmentation and head/backbone LR ratio "
        "as 'finetune') for a few hundred steps while the LR grows exponentially, then restore the weights. "
        "Writes lr_find.png and lr_find.json to the run directory and prints the suggested head LR: where the "
        "smoothed loss falls fastest (steepest descent), with the minimum-loss/10 rule as a cross-check.",
    )
    add_run_options(parser)
    add_finetune_options(parser)
    parser.add_argument("--start-lr", type=float, default=1e-7, help="first LR of the sweep (default 1e-7)")
    parser.add_argument("--end-lr", type=float, default=10.0, help="last LR of the sweep (default 10)")
    parser.add_argument("--steps", type=int, default=100, help="training steps in the sweep (default 100)")
    parser.set_defaults(handler=handle)


def handle(args: argparse.Namespace) -> None:
    from transferlab.finetune.lr_find import lr_range_test
    from transferlab.prepare import prepare
    from transferlab.record import RunDir
    from transferlab.record.rundir import default_run_name

    config = run_config(args)
    prepared = prepare(config, cache_dir=args.cache_dir, progress=not args.no_progress)
    run_dir = RunDir(Path(args.runs_dir), args.name or default_run_name(Path(config.data)))
    prepared.write_record(run_dir)
    run_dir = run_dir.path
    result = lr_range_test(
        prepared, run_dir, finetune_options(args), start_lr=args.start_lr, end_lr=args.end_lr, steps=args.steps
    )
    print(f"swept {len(result.lrs)} steps from {result.lrs[0]:.2g} to {result.lrs[-1]:.2g} ({result.stop_reason})")
    print(f"suggested --lr {result.suggestion:.2g} (steepest descent of the smoothed loss)")
    print(f"min-loss/10 rule: {result.min_loss_over_10:.2g} (loss minimum at {result.min_loss_lr:.2g})")
    print(f"plot: {run_dir / 'lr_find.png'}")
