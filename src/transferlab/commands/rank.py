"""``transferlab rank``: score backbones and cut points without fine-tuning, print the table and the choice."""

from __future__ import annotations

import argparse
from pathlib import Path

from transferlab.commands.options import add_run_options, run_config
from transferlab.record import layout


def register(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "rank",
        help="rank backbones and cut points by LogME, k-NN and CV probe scores",
        description="Extract (or reuse cached) features of every backbone at every cut point, score each with LogME, "
        "cross-validated k-NN and a cross-validated quick probe on train+val, and choose one (backbone, cut point) "
        "with the reason. Backbones without local weights are listed as unavailable. Writes ranking.json into "
        "runs/<name>/. --weights FILE is for one backbone; --weights NAME=FILE,NAME=FILE gives several their own.",
    )
    add_run_options(parser)
    parser.add_argument(
        "--backbones",
        required=True,
        help="comma-separated timm model names, e.g. tf_efficientnet_lite0,tf_efficientnet_lite1",
    )
    parser.set_defaults(handler=handle)


def handle(args: argparse.Namespace) -> None:
    from transferlab.rank.ranking import rank, write_ranking
    from transferlab.record import RunDir, environment
    from transferlab.record.rundir import default_run_name

    backbones = args.backbones.split(",")
    config = run_config(args, backbones=backbones)
    ranking = rank(config, backbones, cache_dir=args.cache_dir, progress=not args.no_progress)
    run_dir = RunDir(Path(args.runs_dir), args.name or default_run_name(Path(config.data)))
    run_dir.write_json(layout.CONFIG, config.to_dict())
    run_dir.write_json(layout.ENVIRONMENT, environment())
    path = write_ranking(run_dir, ranking)
    print(ranking.table())
    print(f"ranking: {path}")
