"""Errors that are the user's to fix, reported by the CLI as one clear line instead of a traceback."""

import errno

# Out of space, over quota, or over the file-size limit (RLIMIT_FSIZE): the user's to fix wherever a file is written.
DISK_FULL = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG})


class TransferlabError(Exception):
    """A problem with the user's input or options (bad data folder, unknown backbone, missing weights...)."""
