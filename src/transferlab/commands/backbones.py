"""``transferlab backbones``: which backbones have weights on this machine."""

from __future__ import annotations

import argparse


def register(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "backbones",
        help="list backbones with local weights",
        description="Packaged backbones and timm models found in the local Hugging Face cache. Any other timm model "
        "works with --weights FILE, or with --allow-download where there is a network.",
    )
    parser.set_defaults(handler=handle)


def handle(_: argparse.Namespace) -> None:
    from transferlab.backbones import available_backbones

    for entry in available_backbones():
        print(f"{entry.name:<32} {'local weights: ' + entry.weights if entry.weights else 'no local weights'}")
