"""``transferlab compare A B``: what differs between two runs, in configuration and in results."""

from __future__ import annotations

import argparse


def register(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "compare",
        help="show what differs between two runs (configuration and results)",
        description="Compare two runs: options that differ in config.json, then every metric that differs, with b - a.",
    )
    parser.add_argument("a", help="run directory, or run name inside --runs-dir")
    parser.add_argument("b", help="run directory, or run name inside --runs-dir")
    parser.add_argument("--runs-dir", default="runs", help="where run names are looked up (default ./runs)")
    parser.set_defaults(handler=handle)


def handle(args: argparse.Namespace) -> None:
    from transferlab.history import comparison
    from transferlab.record.runfiles import load_run, resolve_run

    a, b = (load_run(resolve_run(run, args.runs_dir)) for run in (args.a, args.b))
    print(comparison(a, b))
