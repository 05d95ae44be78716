"""Test doubles shipped with voke: in-process fakes of the Google Cloud APIs that the real
client libraries talk to (`voketag_ops.testing.gcp_fakes`)."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta


class SteppedClock:
    """The machine's clocks, with a wall clock a test can step (as NTP or `date -s` would)
    while the monotonic clock runs on; a Clock (voketag_ops.ports) for `clock.using`."""

    def __init__(self) -> None:
        self.offset = timedelta(0)

    def now(self) -> datetime:
        return datetime.now(UTC) + self.offset

    def monotonic(self) -> float:
        return time.monotonic()

    def step(self, seconds: float) -> None:
        self.offset += timedelta(seconds=seconds)
