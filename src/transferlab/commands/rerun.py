"""``transferlab rerun RUN``: repeat a run from its config.json and say whether the metrics match."""

from __future__ import annotations

import argparse


def register(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "rerun",
        help="reproduce a run from its config.json (new name, same seed) and check the metrics match",
        description="Run again with the recorded data, options and seed, into a new run directory beside the "
        "original, then compare every metric with the original's. Exit code 1 if they differ.",
    )
    parser.add_argument("run", help="run directory, or run name inside --runs-dir")
    parser.add_argument("--runs-dir", default="runs", help="where run names are looked up (default ./runs)")
    parser.add_argument("--name", help="name of the new run (default: <run>-rerun-<UTC time>)")
    parser.add_argument("--cache-dir", help="feature cache (default $TRANSFERLAB_CACHE or ~/.cache/transferlab)")
    parser.add_argument("--tolerance", type=float, default=1e-6, help="largest metric difference that still matches")
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")
    parser.set_defaults(handler=handle)


def handle(args: argparse.Namespace) -> None:
    from transferlab.history import rerun
    from transferlab.record.runfiles import resolve_run

    result = rerun(
        resolve_run(args.run, args.runs_dir),
        name=args.name,
        cache_dir=args.cache_dir,
        tolerance=args.tolerance,
        progress=not args.no_progress,
    )
    if result.ignored_options:
        print(f"note: options this version does not know were ignored: {', '.join(result.ignored_options)}")
    print(f"rerun directory: {result.repeat.path}")
    print(result.summary(args.tolerance))
    if not result.matches:
        raise SystemExit(1)
