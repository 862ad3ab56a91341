"""``transferlab runs``: the runs in a runs directory, one line each."""

from __future__ import annotations

import argparse


def register(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "runs",
        help="list runs: name, date, data, backbone, cut point, test metric, seconds",
        description="List the runs in a runs directory, oldest first, with the final model's headline test metric.",
    )
    parser.add_argument("--runs-dir", default="runs", help="where run directories are (default ./runs)")
    parser.set_defaults(handler=handle)


def handle(args: argparse.Namespace) -> None:
    from transferlab.history import runs_table
    from transferlab.record.runfiles import find_runs

    runs, unreadable = find_runs(args.runs_dir)
    print(runs_table(runs) if runs else f"no runs in {args.runs_dir}")
    for message in unreadable:
        print(f"skipped {message}")
