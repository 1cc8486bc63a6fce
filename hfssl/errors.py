"""Every error a user can fix, under one base class, and the one guard every entry point uses.

An `HfsslError` means "the input or the run cannot go on, and the message says what to do"; the
entry scripts print it on one line and exit with status 2 instead of a traceback. Anything else is
a bug in hfssl and keeps its traceback.
"""

from __future__ import annotations

import functools
import sys
from typing import Callable


class HfsslError(Exception):
    """Base of hfssl's user-facing errors; the message names the key, file or checkpoint and the fix."""


class ConfigError(HfsslError, ValueError):
    """A recipe or command-line value is wrong; the message says which key and what to do."""


class DataError(HfsslError, ValueError):
    """The data cannot be used; the message names the file or column and says what to do."""


class CheckpointError(HfsslError, RuntimeError):
    """A checkpoint is incomplete or damaged; the message names the file."""


class OutputDirError(HfsslError, FileExistsError):
    """output_dir holds something this run must not overwrite (an earlier run, a file, another run's lock)."""


class TrainingStopped(HfsslError, RuntimeError):
    """Training cannot go on (repeated non-finite losses, collapse, ...); the message says why."""


class RollbackRequested(Exception):
    """Raised by an objective's `check_health`: reload `checkpoint` and go on with fresh randomness.

    Not an error for the user: the loop catches it (and turns it into `TrainingStopped` once
    `max_rollbacks` is spent)."""

    def __init__(self, checkpoint: str, reason: str):
        super().__init__(reason)
        self.checkpoint = checkpoint


def guarded(main: Callable[..., int]) -> Callable[..., int]:
    """Wrap an entry point: an `HfsslError` becomes `error: <message>` on stderr and exit status 2."""

    @functools.wraps(main)
    def run(*args, **kwargs) -> int:
        try:
            return main(*args, **kwargs)
        except HfsslError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2

    return run
