"""``transferlab info``: class counts, image sizes, problems and duplicates, before any model runs."""

from __future__ import annotations

import argparse

from transferlab.commands.options import add_data_options


def register(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "info",
        help="class counts, image sizes, problems and duplicates in DATA",
        description="Decode every image once and report what a run would skip, and why.",
    )
    add_data_options(parser)
    parser.set_defaults(handler=handle)


def handle(args: argparse.Namespace) -> None:
    from transferlab.info import dataset_info

    print(dataset_info(args.data, label_sep=args.label_sep, progress=True).render())
