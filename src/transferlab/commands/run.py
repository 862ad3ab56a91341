"""``transferlab run`` and ``transferlab probe``: features → probe → run record and report."""

from __future__ import annotations

import argparse

from transferlab.commands.options import add_run_options, run_kwargs


def register(commands: argparse._SubParsersAction) -> None:
    run = commands.add_parser(
        "run",
        help="the whole pipeline on DATA: features → probe → record and report",
        description="Extract (or reuse cached) features of a pretrained backbone, fit a cross-validated linear probe, "
        "score it on a held-out test split and write runs/<name>/ with config, split, metrics, timings and "
        "report.html.",
    )
    add_run_options(run)
    run.set_defaults(handler=handle)
    probe = commands.add_parser(
        "probe",
        help="linear probe only (logistic regression on cached features)",
        description="Fit and score a logistic-regression probe (C chosen by cross-validation) on cached features.",
    )
    add_run_options(probe)
    probe.set_defaults(handler=handle)


def handle(args: argparse.Namespace) -> None:
    from transferlab.pipeline import run

    result = run(args.data, **run_kwargs(args))
    extraction = result.extraction
    speed = f", {extraction['images_per_second']:.1f} img/s" if extraction["images_per_second"] else ""
    print(f"features: {extraction['computed']} computed, {extraction['cached']} from cache{speed}")
    print(result.summary())
    print(f"run directory: {result.run_dir}")
    print(f"report: {result.report_path}")
