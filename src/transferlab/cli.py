"""The ``transferlab`` command. User mistakes end with one ``error:`` line and exit code 2, never a traceback."""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

from transferlab.commands import COMMAND_MODULES
from transferlab.errors import DISK_FULL, TransferlabError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="transferlab", description="Transfer learning on images: measured, fast, written down."
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(f"transferlab.commands.{name}").register(commands)
    return parser


class _Terminal(logging.Handler):
    """Progress lines as plain text on the current ``sys.stdout`` (looked up per line, so redirection works)."""

    def emit(self, record: logging.LogRecord) -> None:
        print(self.format(record), file=sys.stdout, flush=True)


@contextmanager
def terminal_output() -> Iterator[None]:
    """The library logs (``transferlab.*`` loggers) and stays quiet; the command line shows its INFO lines."""
    logger = logging.getLogger("transferlab")
    handler, level = _Terminal(), logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        with terminal_output():
            args.handler(args)
    except TransferlabError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except OSError as error:
        if error.errno not in DISK_FULL:
            raise
        where = f" writing {error.filename}" if error.filename else ""
        print(f"error: {error.strerror}{where}: free space and run again (finished files are kept)", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; finished work (cached features, written files) is kept", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
