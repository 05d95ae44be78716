"""Wording shared by every layer's messages."""

from __future__ import annotations


def counted(n: int, singular: str, plural: str | None = None) -> str:
    """N and its noun, singular or plural: "1 row", "2 rows", "1,000 branch exits"."""
    return f"{n:,} {singular if n == 1 else plural or singular + 's'}"
