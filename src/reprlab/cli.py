"""How the command-line tools end on an error.

A user's mistake (a bad value, a missing or unreadable file) ends the job with one message that
names it, and the job's folder, without a traceback; ``HYDRA_FULL_ERROR=1`` shows the traceback
too. Anything else is a bug and keeps its traceback. In a multirun Hydra finishes the other jobs
first, then reports the failed one.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from hydra.errors import CompactHydraException, InstantiationException

log = logging.getLogger(__name__)

# What the code raises for a value or a file the user gave: ValueError for values (and files
# that are not what they claim to be), the OSError kinds for paths.
USER_ERRORS = (ValueError, FileNotFoundError, NotADirectoryError, IsADirectoryError)


class UserError(CompactHydraException):
    """A mistake in the command line or in the files it names; Hydra prints just the message."""


def user_error(error: BaseException) -> BaseException | None:
    """The user's mistake behind ``error`` (itself, or what Hydra's instantiate wrapped); None
    when ``error`` is something else."""
    if isinstance(error, InstantiationException) and isinstance(error.__cause__, USER_ERRORS):
        return error.__cause__
    if isinstance(error, USER_ERRORS):
        return error
    return None


@contextmanager
def reported_errors(command: str, run_dir: Path) -> Iterator[None]:
    """Run the body of ``command``'s job; on an error, say it in the job's log and end the job
    as described above."""
    try:
        yield
    except Exception as error:
        cause = user_error(error)
        if cause is None:
            log.exception("%s failed; the job's folder (config, log) is %s", command, run_dir)
            raise
        # The error's own line in the log is what reprlab-report shows as the job's problem.
        log.error(
            "%s failed; the job's folder (config, log) is %s\n%s: %s",
            command,
            run_dir,
            type(cause).__name__,
            cause,
        )
        if os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise
        raise UserError(
            f"{command}: {type(cause).__name__}: {cause}\n  job folder: {run_dir}"
        ) from None
