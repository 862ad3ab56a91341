"""``transferlab report RUN``: (re)build report.html and advice.json from a run directory and print the advice.

Stages that run as separate commands (search, fine-tune, rank) add files to the run directory; this folds them in.
"""

from __future__ import annotations

import argparse


def register(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "report",
        help="rebuild a run's report.html and advice.json from its files, and print the advice",
        description="Render runs/<name>/report.html from whatever the run directory holds (probe, ranking, head "
        "search, data fractions, fine-tuning, predictions) and print the advice computed from it.",
    )
    parser.add_argument("run", help="run directory, or run name inside --runs-dir")
    parser.add_argument("--runs-dir", default="runs", help="where run names are looked up (default ./runs)")
    parser.set_defaults(handler=handle)


def handle(args: argparse.Namespace) -> None:
    from transferlab.advice import advise, format_advice
    from transferlab.record.runfiles import resolve_run
    from transferlab.report import write_report

    run_path = resolve_run(args.run, args.runs_dir)
    advice = advise(run_path)
    report = write_report(run_path, advice)
    print(format_advice(advice))
    print(f"report: {report}")
