"""Errors that are the user's to fix, reported by the CLI as one clear line instead of a traceback."""


class TransferlabError(Exception):
    """A problem with the user's input or options (bad data folder, unknown backbone, missing weights...)."""
