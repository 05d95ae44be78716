"""The clock drills measure with: wall time for the timestamps people read, advanced by the
monotonic clock so that a step of the wall clock mid-drill (NTP, a manual `date -s`) changes
no measured duration.

A drill opens `measuring()` for its run, and so does a standalone `dr failover` / `failback` /
`restore`: from then on `instant()` (the drill's timeline marks, the canary's writes, the
instants those DR commands report) is the wall time read once when the run began plus the
monotonic time since, so the difference of two instants is a monotonic duration. Outside a
run `instant()` is the wall clock. Instants that
are compared with a server's clock (a PITR target, a backup's age) stay on the wall clock.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # (the ports module costs ~6 ms of every DR command's start)
    from voketag_ops.ports import Clock


class SystemClock:
    """The machine's clocks."""

    def now(self) -> datetime:
        return datetime.now(UTC)

    def monotonic(self) -> float:
        return time.monotonic()


class SteadyClock:
    """BASE's wall time read once, then advanced by BASE's monotonic clock."""

    def __init__(self, base: Clock) -> None:
        self.base = base
        self._wall = base.now()
        self._mono = base.monotonic()

    def now(self) -> datetime:
        return self._wall + timedelta(seconds=self.base.monotonic() - self._mono)

    def monotonic(self) -> float:
        return self.base.monotonic()


_base: Clock = SystemClock()
# One run at a time per process (the DR lock), read from the canary's thread too: a plain
# module global, not a ContextVar (a new thread starts with an empty context).
_steady: SteadyClock | None = None


def instant() -> datetime:
    """Now: on the run's steady clock inside `measuring()`, else the wall clock."""
    return (_steady or _base).now()


@contextmanager
def measuring() -> Iterator[SteadyClock]:
    """A steady clock for one run (re-entrant: a nested run measures on the outer one's)."""
    global _steady
    outer = _steady
    if outer is not None:
        yield outer
        return
    _steady = SteadyClock(_base)
    try:
        yield _steady
    finally:
        _steady = outer


@contextmanager
def using(base: Clock) -> Iterator[Clock]:
    """Measure on BASE instead of the machine's clocks (tests: a wall clock that jumps)."""
    global _base
    outer = _base
    _base = base
    try:
        yield base
    finally:
        _base = outer
