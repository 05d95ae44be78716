"""How voke is stopped: Ctrl-C, and SIGTERM handled the same way (the `voke` script).

SIGTERM (a cancelled CI job, `timeout`, systemd or Cloud Run stopping the job) raises
``Terminated``, a KeyboardInterrupt, wherever Ctrl-C would raise: the operation rolls back
or records where to resume, and the exit is 130. Before the command has started (the
imports) there is nothing to clean up: a signal then ends voke at once with its one-line
error. Once the result is out (``settle``) signals are ignored: they would only garble it.
Only the `voke` script (``install``) does any of this; tests that call voke in-process keep
Python's own handling.
"""

from __future__ import annotations

import json
import os
import signal
import sys
from types import FrameType


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised where Ctrl-C would be: every clean-up Ctrl-C gets runs, and messages
    and audit events can tell the two apart."""

    received = False  # set by the handler: a clean-up may turn it into another exception


_installed = False
_started = False  # the command is running: a signal is raised, not an immediate exit


def install() -> None:
    """The `voke` script's handlers. A signal the caller ignores stays ignored."""
    global _installed
    _installed = True
    if signal.getsignal(signal.SIGINT) != signal.SIG_IGN:
        signal.signal(signal.SIGINT, _on_signal)
    if signal.getsignal(signal.SIGTERM) == signal.SIG_DFL:
        signal.signal(signal.SIGTERM, _on_signal)


def started() -> None:
    """The command runs now: from here on a signal is raised for its clean-ups."""
    global _started
    _started = True


def settle() -> None:
    """The result is out and the exit code decided: ignore signals from now on (in the
    `voke` script only)."""
    if _installed:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)


def settles() -> bool:
    """True when ``settle`` ignores signals (the `voke` script)."""
    return _installed


def _on_signal(signum: int, frame: FrameType | None) -> None:
    terminated = signum == signal.SIGTERM
    if terminated:
        Terminated.received = True
    if not _started:  # still importing: nothing to undo, and no traceback to show
        message = "terminated (SIGTERM)" if terminated else "interrupted"
        if "--json" in sys.argv or os.environ.get("VOKE_OUTPUT", "").lower() == "json":
            doc = {
                "ok": False,
                "command": None,
                "error": {"type": "Interrupted", "message": message, "exit_code": 130},
            }
            os.write(1, (json.dumps(doc) + "\n").encode())
        else:
            os.write(2, f"error: {message}\n".encode())
        os._exit(130)
    raise Terminated if terminated else KeyboardInterrupt
