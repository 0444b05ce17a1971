"""Errors a user can cause, and the exit codes scripts can rely on.

| code | meaning |
| ---: | --- |
| 0 | success |
| 1 | internal error (a bug: please report it with the log) |
| 2 | command-line usage error (unknown option, missing argument, an option value that is not valid) |
| 3 | bad input: a file, folder, rule, row or setting the user supplied is wrong or unusable; the message names it |
| 4 | a check failed: data was processed but an invariant or threshold does not hold |
| 5 | an external service (Stripe) failed or could not be reached |
| 6 | the warehouse is locked by another writer |
| 130 | interrupted (Ctrl-C) |
"""

from __future__ import annotations

import errno

EXIT_OK = 0
EXIT_INTERNAL = 1
EXIT_USAGE = 2
EXIT_BAD_INPUT = 3
EXIT_CHECK_FAILED = 4
EXIT_EXTERNAL = 5
EXIT_LOCKED = 6
EXIT_INTERRUPTED = 130   # as a shell reports a command that SIGINT ended


class MeteringError(Exception):
    """Base for errors the CLI turns into a one-line message and an exit code (no traceback)."""

    exit_code = EXIT_INTERNAL


class BadInputError(MeteringError):
    """A user-supplied file, row, rule or option is wrong. The message names where and what."""

    exit_code = EXIT_BAD_INPUT


class FileChangedError(BadInputError):
    """A raw file changed while it was read: nothing of it was stored, and reading it again once it is
    still will do (a transient state, unlike a file that cannot be read at all)."""


class CheckFailedError(MeteringError):
    """An invariant or a configured threshold does not hold."""

    exit_code = EXIT_CHECK_FAILED


class ExternalServiceError(MeteringError):
    """Stripe (or another service) failed in a way retries did not fix."""

    exit_code = EXIT_EXTERNAL


class WarehouseLockedError(MeteringError):
    """Another process holds the DuckDB warehouse for writing."""

    exit_code = EXIT_LOCKED


FULL_DISK = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)


def user_path_error(exc: OSError) -> BadInputError | None:
    """An OSError about a path the user chose (cannot create, not a folder, permission, read-only, full
    disk) as bad input naming that path; a full disk even when the error names no path (a write or close
    fails without one); None for anything else that names no path (a socket, say)."""
    why = exc.strerror or str(exc)
    if exc.filename is None:
        if exc.errno in FULL_DISK:
            return BadInputError(f"a file could not be written: {why} (free space on its disk and run the command "
                                 "again: what was being written was not put in place)")
        return None
    if exc.filename2 is not None:   # a copy or a move (shutil, os.replace): the second path is the target
        return BadInputError(f"{exc.filename2}: cannot write {exc.filename} there: {why}")
    return BadInputError(f"{exc.filename}: {why}")
