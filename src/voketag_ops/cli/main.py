"""Entry point. `voke --version` answers before Typer, rich or pydantic are imported."""

from __future__ import annotations

import gc
import signal
import sys
from types import FrameType


def main(argv: list[str] | None = None) -> int:
    """Run voke with ARGV (default: sys.argv[1:]) and return the exit code."""
    args = sys.argv[1:] if argv is None else list(argv)
    if args in (["--version"], ["-V"]):
        from voketag_ops import __version__

        sys.stdout.write(f"voke {__version__}\n")
        return 0
    from voketag_ops.cli.app import run

    return run(args)


def _terminated(signum: int, frame: FrameType | None) -> None:
    from voketag_ops.errors import Terminated

    Terminated.received = True
    raise Terminated


def stop_on_sigterm() -> None:
    """SIGTERM (a CI job cancelled, `timeout`, systemd or Cloud Run stopping the job) stops
    voke the way Ctrl-C does: the operation rolls back or records where to resume, and the
    exit is 130, instead of dying mid-step. A SIGTERM the caller ignores stays ignored."""
    if signal.getsignal(signal.SIGTERM) == signal.SIG_DFL:
        signal.signal(signal.SIGTERM, _terminated)


def entry() -> None:
    """The `voke` console script and ``python -m voketag_ops``: run, then exit.

    The interpreter's last garbage collection at exit scans every object the imports made
    (~40 ms of each run); frozen, they are left to the process's end. Everything else about
    exiting stays: atexit handlers, logging's flush, closing files as modules are torn down.
    Only here, not in ``main``, which tests call in-process."""
    stop_on_sigterm()
    code = main()
    # The result is out and the exit code decided: a signal now would only garble both.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    gc.freeze()
    sys.exit(code)
