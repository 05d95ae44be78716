"""Files voke writes for the user (`--out`, `--rejects`): checked before any work is done."""

from __future__ import annotations

import stat
from pathlib import Path

from voketag_ops.errors import UsageError


def check_replaceable(path: Path, flag: str) -> None:
    """UsageError (exit 2) unless PATH is new or a regular file. voke writes such outputs
    beside them and renames them into place, which would put a regular file in place of a
    device (`/dev/null`, as root) or a pipe, and cannot replace a directory."""
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        return
    except OSError as exc:
        raise UsageError(f"{flag} {path}: {exc.strerror}") from None
    if stat.S_ISDIR(mode):
        raise UsageError(f"{flag} {path}: is a directory; name a file")
    if not stat.S_ISREG(mode):
        raise UsageError(
            f"{flag} {path}: not a regular file (a device or a pipe would be replaced); name a file"
        )
