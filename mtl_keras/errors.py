"""One base error for everything a user can cause: a bad flag, a missing file, a dataset, a checkpoint.

Every user-facing error derives from `MtlError` and carries one line that names the flag or file and what
to do; every CLI prints it as `PROG: error: LINE` (exit status 1) through `report`, never as a traceback.
A bad flag value never gets this far: `flags.parser_exiting_in_one_line` prints the same kind of line
with exit status 2 (a usage error), before anything runs.
"""

from __future__ import annotations

import sys


class MtlError(Exception):
    """A user-facing problem; str(error) is one line naming the flag or file and what to do."""


class ConfigError(MtlError, ValueError):
    """A flag value or a combination of flags cannot run."""


class DatasetError(MtlError):
    """A dataset is missing, corrupt or misconfigured."""


class RunError(MtlError):
    """A training run cannot go on (workdir, replicas, NaN loss, failed export check)."""


class CheckpointError(MtlError):
    """A checkpoint cannot be used."""


class ExportError(MtlError):
    """An export or its verification cannot be done, or its parity check failed."""


class ExperimentError(MtlError):
    """An experiment grid cannot run."""


def report(prog: str, error: BaseException) -> int:
    """Prints `error` as `PROG: error: LINE` on stderr and returns the exit status 1."""
    line = str(error) if isinstance(error, MtlError) else f"{type(error).__name__}: {error}"
    print(f"{prog}: error: {line.splitlines()[0] if line else type(error).__name__}", file=sys.stderr)
    return 1


def interrupted(prog: str, what_next: str = "nothing half-written is kept") -> int:
    """Prints Ctrl-C as `PROG: error: interrupted (Ctrl-C); WHAT_NEXT` and returns 130, the shell's status for
    SIGINT, instead of a KeyboardInterrupt traceback."""
    print(f"\n{prog}: error: interrupted (Ctrl-C); {what_next}", file=sys.stderr)
    return 130
