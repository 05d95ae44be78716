"""The error tree: every voke error carries the exit code PRODUCT.md assigns to it.

One root (`VokeError`) is caught once, at the top of the CLI, and mapped to an exit
code and a one-line message. Messages must never contain secret values.
"""

from __future__ import annotations

from enum import IntEnum


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


class RolledBackError(VokeError):
    """The operation failed and was rolled back cleanly; safe to retry."""

    exit_code = ExitCode.ROLLED_BACK


class NeedsOperatorError(VokeError):
    """The operation stopped in a state that needs a person; the message says what to do."""

    exit_code = ExitCode.NEEDS_OPERATOR


class Interrupted(VokeError):
    """The user interrupted the run (Ctrl-C); what was done is recorded or rolled back."""

    exit_code = ExitCode.INTERRUPTED
