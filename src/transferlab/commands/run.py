"""``transferlab run`` (rank → probe → head search → fine-tune → report) and ``transferlab probe`` (probe only)."""

from __future__ import annotations

import argparse
from typing import Any

from transferlab.budget import PRESETS
from transferlab.commands.finetune import add_finetune_options, finetune_options
from transferlab.commands.options import add_run_options, add_search_options, output_kwargs, run_config
from transferlab.errors import TransferlabError


def register(commands: argparse._SubParsersAction) -> None:
    run = commands.add_parser(
        "run",
        help="the whole pipeline on DATA: [rank] → probe → [head search] → [fine-tune] → record and report",
        description="Extract (or reuse cached) features of a pretrained backbone, fit a cross-validated linear probe "
        "and score it on a held-out test split. Optionally rank several backbones first (--backbones), search heads "
        "on the cached features (--trials) and fine-tune (--finetune). Writes runs/<name>/ with config, split, "
        "metrics, timings, every stage's record, advice and report.html.",
    )
    add_run_options(run)
    planning = run.add_argument_group("time budget (the planner chooses the stages that fit; explicit flags win)")
    planning.add_argument(
        "--time-limit",
        help="plan the run to this budget (90s, 10m, 2h): measures this machine, prints the plan with per-stage "
        "estimates, keeps to it and records plan vs actual",
    )
    planning.add_argument(
        "--preset",
        choices=list(PRESETS),
        help="; ".join(f"{p.name}: {p.description}" for p in PRESETS.values()),
    )
    stages = run.add_argument_group("optional stages")
    stages.add_argument(
        "--backbones",
        help="rank these comma-separated backbones (LogME, k-NN, CV probe at every cut point) first and continue "
        "with the chosen backbone and cut point",
    )
    add_search_options(stages, trials_default=0, trials_help="head-search trials on cached features (default 0: off)")
    stages.add_argument("--fractions", help="learning curve of the best head over data fractions, e.g. 0.25,0.5,1")
    stages.add_argument("--finetune", action="store_true", help="fine-tune as the last stage (options below)")
    add_finetune_options(run)
    run.set_defaults(handler=handle)
    probe = commands.add_parser(
        "probe",
        help="linear probe only (logistic regression on cached features)",
        description="Fit and score a logistic-regression probe (C chosen by cross-validation) on cached features.",
    )
    add_run_options(probe)
    probe.set_defaults(handler=handle)


def stage_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    """The optional-stage options of ``run`` as :func:`transferlab.run` keywords (nothing for ``probe``)."""
    if not hasattr(args, "trials"):
        return {}
    from transferlab.search import parse_fractions

    if args.finetune and (args.resume or args.search_depth):
        raise TransferlabError("--resume and --search-depth belong to 'transferlab finetune', not 'run --finetune'")
    return {
        "backbones": args.backbones.split(",") if args.backbones else None,
        "trials": args.trials,
        "search_timeout": args.timeout,
        "search_jobs": args.jobs,
        "search_ensemble": args.ensemble,
        "fractions": parse_fractions(args.fractions) if args.fractions else None,
        "finetune": finetune_options(args).result_affecting() if args.finetune else None,
        "time_limit": args.time_limit,
        "preset": args.preset,
    }


def handle(args: argparse.Namespace) -> None:
    from transferlab.advice import format_advice
    from transferlab.pipeline import run
    from transferlab.prepare import images_computed

    result = run(run_config(args, **stage_kwargs(args)), **output_kwargs(args))
    extraction = result.extraction
    computed, cached = images_computed(extraction)
    speed = f", {extraction['images_per_second']:.1f} img/s" if extraction["images_per_second"] else ""
    print(f"features: {computed} computed, {cached} from cache{speed}")
    print(result.summary())
    print(format_advice(result.advice))
    print(f"run directory: {result.run_dir}")
    print(f"report: {result.report_path}")
