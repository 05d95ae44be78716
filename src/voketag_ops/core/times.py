"""Times as voke writes them: ISO 8601 in UTC with a ``Z`` suffix."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import overload

# The offset's minutes after a time of day: datetime.fromisoformat reads +05:75 as +06:15.
_OFFSET_MINUTES = re.compile(r"[T ][^+-]*[+-][0-9]{2}:?([0-9]{2})")


@overload
def iso(value: datetime) -> str: ...
@overload
def iso(value: None) -> None: ...
def iso(value: datetime | None) -> str | None:
    """VALUE in UTC with a ``Z`` suffix (a naive datetime is taken as UTC); None stays None."""
    if value is None:
        return None
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z")


def offset_is_valid(text: str) -> bool:
    """False if TEXT, an ISO 8601 time that fromisoformat took, has offset minutes past 59."""
    offset = _OFFSET_MINUTES.search(text)
    return offset is None or int(offset.group(1)) <= 59
