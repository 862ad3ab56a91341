"""Errors that are the user's to fix, reported by the CLI as one clear line instead of a traceback."""

import dataclasses
import errno
from typing import Any

# Out of space, over quota, or over the file-size limit (RLIMIT_FSIZE): the user's to fix wherever a file is written.
DISK_FULL = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG})


class TransferlabError(Exception):
    """A problem with the user's input or options (bad data folder, unknown backbone, missing weights...)."""


class OutOfTime(TransferlabError):
    """A time-boxed step passed its deadline; what it finished (cached features, written files) is kept."""


def require(condition: bool, message: str) -> None:
    """Raise :class:`TransferlabError` with ``message`` unless ``condition`` holds: one line per bad value."""
    if not condition:
        raise TransferlabError(message)


def unknown_fields(cls: type, values: dict[str, Any]) -> list[str]:
    """Keys of ``values`` that are no field of the dataclass ``cls``, sorted (a saved config from another version)."""
    return sorted(set(values) - {field.name for field in dataclasses.fields(cls)})
