"""``transferlab search`` (Optuna head search on cached features) and ``transferlab worker`` (join a study)."""

from __future__ import annotations

import argparse
from pathlib import Path

from transferlab.commands.options import add_run_options, add_search_options, run_config


def register(commands: argparse._SubParsersAction) -> None:
    search = commands.add_parser(
        "search",
        help="search head architectures and training settings on cached features (Optuna)",
        description="Run an Optuna study over head specs (pooling, dense widths, dropout, BatchNorm), learning rate, "
        "weight decay, batch size and epochs, with early stopping and a median pruner. Every trial trains on cached "
        "features, so the backbone runs once. Rerunning the same command resumes the study. Writes search.json "
        "(and fractions.json with --fractions) to the run directory.",
    )
    add_run_options(search)
    add_search_options(search, trials_default=30, trials_help="total trials in the study (default 30)")
    search.add_argument("--storage", help="Optuna storage URL (default sqlite:///<run dir>/study.db)")
    search.add_argument("--study", help="study name (default heads-<backbone>-<cut point>-seed<seed>)")
    search.add_argument("--maps", action="store_true", help="also search heads on spatial maps (max, conv1x1 ...)")
    search.add_argument("--fractions", help="learning curve of the best head, e.g. 0.125,0.25,0.5,1")
    search.set_defaults(handler=handle_search)
    worker = commands.add_parser(
        "worker",
        help="join an existing search study and run its queued trials",
        description="Connect to a study created by 'transferlab search' (e.g. on PostgreSQL), rebuild its data from "
        "the feature cache recorded in the study and run queued trials until none are left.",
    )
    worker.add_argument("--study", required=True, help="study name")
    worker.add_argument("--storage", required=True, help="Optuna storage URL, e.g. postgresql://user@host/db")
    worker.add_argument("--device", help="this worker's device (default: the study creator's --device, resolved here)")
    worker.set_defaults(handler=handle_worker)


def handle_search(args: argparse.Namespace) -> None:
    from transferlab.prepare import prepare
    from transferlab.record import RunDir
    from transferlab.search import parse_fractions
    from transferlab.search.stage import search_stage

    config = run_config(
        args,
        trials=args.trials,
        search_timeout=args.timeout,
        search_jobs=args.jobs,
        search_ensemble=args.ensemble,
        fractions=parse_fractions(args.fractions) if args.fractions else None,
    )
    prepared = prepare(config, cache_dir=args.cache_dir, progress=not args.no_progress)
    # A stable default name: rerunning the same command finds the same study.db and resumes it.
    name = args.name or f"{Path(args.data).stem or 'data'}-search-{config.backbone}-{config.cut_point}"
    run_dir = RunDir(Path(args.runs_dir), name)
    prepared.write_record(run_dir)
    run_dir = run_dir.path
    _, curve = search_stage(
        prepared, run_dir, config, None, storage=args.storage, study_name=args.study, maps=args.maps
    )
    for row in curve["rows"] if curve else []:
        print(
            f"fraction {row['fraction']:<6g} n_train {row['n_train']:>5}  "
            f"train {row['train_metric']:.4f}  val {row['val_metric']:.4f}"
        )
    print(f"run directory: {run_dir}")


def handle_worker(args: argparse.Namespace) -> None:
    from transferlab.search import run_worker

    ran = run_worker(args.study, args.storage, args.device)
    print(f"worker finished: ran {ran} trial(s) of study '{args.study}'")
