"""The error tree: every voke error carries the exit code PRODUCT.md assigns to it.

One root (`VokeError`) is caught once, at the top of the CLI, and mapped to an exit
code and a one-line message. Messages must never contain secret values.
"""

from __future__ import annotations

import errno
from enum import IntEnum

# A full or read-only file system is the machine's state, not a bug nor a usage error: exit 4.
DISK_REFUSED = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS})


class ExitCode(IntEnum):
    """Exit codes shared by every command (see README, "Exit codes")."""

    OK = 0
    NO = 1  # ran, and the answer is no (gate failed, check breached, input rejected)
    USAGE = 2
    CONFIG = 3
    BACKEND = 4  # a backend could not be reached or refused; nothing was changed
    PRECONDITION = 5  # lock held, unfinished operation, illegal state
    ROLLED_BACK = 6  # failed and rolled back cleanly; safe to retry
    NEEDS_OPERATOR = 7  # stopped in a state that needs a person
    INTERNAL = 70
    INTERRUPTED = 130


# PostgreSQL's disk_full: the database server's disk (`could not extend file ...`), which a
# psycopg.errors.DiskFull reports as an OperationalError like a lost connection; it is not one.
SERVER_DISK_FULL_SQLSTATE = "53100"


def server_disk_full(exc: BaseException) -> str | None:
    """'the database server is out of disk space (ITS MESSAGE)' when EXC is a PostgreSQL error of
    SQLSTATE 53100 (psycopg.errors.DiskFull), else None: how voke names a full server disk,
    told apart without importing psycopg."""
    if getattr(exc, "sqlstate", None) != SERVER_DISK_FULL_SQLSTATE:
        return None
    diag = getattr(exc, "diag", None)
    said = getattr(diag, "message_primary", None) or str(exc).strip().split("\n", 1)[0]
    return f"the database server is out of disk space ({said})"


def exit_code_of(exc: BaseException) -> int:
    """The exit code EXC ends a command with (the top level's mapping, for step records):
    a voke error its own, an interrupt 130, a full or read-only disk 4, a file this user may not
    use (EACCES, EPERM) 3, anything else 70."""
    if isinstance(exc, VokeError):
        return int(exc.exit_code)
    if isinstance(exc, PermissionError) and exc.filename:
        return int(ExitCode.CONFIG)
    if isinstance(exc, KeyboardInterrupt):
        return int(ExitCode.INTERRUPTED)
    if isinstance(exc, OSError) and exc.errno in DISK_REFUSED:
        return int(ExitCode.BACKEND)
    return int(ExitCode.INTERNAL)


def refused_file(exc: BaseException) -> str | None:
    """EXC as one line when it is a file the machine refused (full or read-only file system,
    EACCES, EPERM), "No space left on device: PATH", else None: for a step whose failure after a
    change must not read as exit 4 "nothing was changed" or exit 3."""
    if not isinstance(exc, OSError) or not (exc.errno in DISK_REFUSED or isinstance(exc, PermissionError)):
        return None
    from voketag_ops.redact import redact

    return f"{exc.strerror}: {redact(str(exc.filename))}" if exc.filename else str(exc.strerror)


class VokeError(Exception):
    """Root of every error voke raises on purpose."""

    exit_code: ExitCode = ExitCode.INTERNAL
    type_name: str = "VokeError"

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __init_subclass__(cls, **kwargs: object) -> None:
        super().__init_subclass__(**kwargs)
        cls.type_name = cls.__name__


class UsageError(VokeError):
    """Bad flags or arguments."""

    exit_code = ExitCode.USAGE


class InputError(VokeError):
    """An input file was rejected (malformed, wrong format); the answer is no."""

    exit_code = ExitCode.NO


class ConfigError(VokeError):
    """The configuration is invalid, or the environment it describes is unusable."""

    exit_code = ExitCode.CONFIG


class BackendError(VokeError):
    """A backend could not be reached or refused the call; nothing was changed."""

    exit_code = ExitCode.BACKEND


class PreconditionError(VokeError):
    """A precondition is not met: a lock is held, an operation must be resumed first."""

    exit_code = ExitCode.PRECONDITION


class TargetBusyError(PreconditionError):
    """The target refused to start a change while another operation ran on it, and still did
    at the operation timeout (Cloud SQL's 409 operationInProgress): nothing was started."""


class RolledBackError(VokeError):
    """The operation failed and was rolled back cleanly; safe to retry."""

    exit_code = ExitCode.ROLLED_BACK


class NeedsOperatorError(VokeError):
    """The operation stopped in a state that needs a person; the message says what to do."""

    exit_code = ExitCode.NEEDS_OPERATOR


class OutcomeUnknownError(NeedsOperatorError):
    """A change was sent and may have been made: its answer was lost, or voke lost track of
    the operation it started. Never "nothing was changed"; the hint says how to find out."""


class Interrupted(VokeError):
    """The user interrupted the run (Ctrl-C); what was done is recorded or rolled back."""

    exit_code = ExitCode.INTERRUPTED


class NotFoundError(VokeError):
    """A named resource (secret, version, service, rotation) does not exist."""

    exit_code = ExitCode.BACKEND


class EtagMismatchError(PreconditionError):
    """A compare-and-swap lost: another writer changed the resource first."""


class RotationFailure(VokeError):
    """A classified failure inside a rotation step (PRODUCT.md's eight kinds).

    The rotation engine catches these and applies the kind's recovery (retry, roll
    back -> exit 6, or stop for a person -> exit 7); `kind` is the PRODUCT.md name.
    """

    exit_code = ExitCode.BACKEND
    kind = "RotationFailure"
    recovery = "rollback"  # rollback | retry | operator


class ValidationError(RotationFailure):
    """The request or the stored state is invalid (nothing was changed)."""

    exit_code = ExitCode.USAGE
    kind = "ValidationError"
    recovery = "operator"


class ProviderRefusedError(ValidationError):
    """A provider's API refused the request (an HTTP 4xx other than 401/403/408/429) or
    answered something unusable. Within a rotation step it is a ValidationError (a person
    looks: exit 7); before any change (the drift check, adopting a key) it is the backend
    refusing the call: exit 4, as PRODUCT.md has it, not a usage error."""

    exit_code = ExitCode.BACKEND


class RequestRefusedError(ProviderRefusedError):
    """The provider refused the request outright (an HTTP 4xx, gRPC INVALID_ARGUMENT), so it
    made nothing: unlike an answer voke could not read, after which a key may exist. Refusing
    the creation at create_pending, the step never began: rolled back (exit 6), no person needed."""


class AuthenticationError(RotationFailure):
    """A credential was rejected by its target."""

    kind = "AuthenticationError"


class DatabaseError(RotationFailure):
    """The database refused a statement (ALTER ROLE, grants)."""

    kind = "DatabaseError"


class StatementRefusedError(DatabaseError):
    """The database answered a statement with an error (a role that does not exist, a denied
    privilege): in its own transaction, it changed nothing, so a step it ended never began."""


class ConnectivityError(RotationFailure):
    """The target could not be reached."""

    kind = "ConnectivityError"
    recovery = "retry"


class SecretError(RotationFailure):
    """The secret store refused or failed a call."""

    kind = "SecretError"


class RestartError(RotationFailure):
    """A service instance could not be started on the new version."""

    kind = "RestartError"


class HealthCheckError(RotationFailure):
    """A service did not become healthy on the new version."""

    kind = "HealthCheckError"


class StepTimeoutError(RotationFailure):
    """A step did not finish within its time limit."""

    kind = "TimeoutError"
