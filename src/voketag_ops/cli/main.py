"""Entry point. `voke --version` answers before Typer, rich or pydantic are imported."""

from __future__ import annotations

import contextlib
import gc
import sys


def main(argv: list[str] | None = None) -> int:
    """Run voke with ARGV (default: sys.argv[1:]) and return the exit code."""
    args = sys.argv[1:] if argv is None else list(argv)
    if args in (["--version"], ["-V"]):
        from voketag_ops import __version__

        try:
            sys.stdout.write(f"voke {__version__}\n")
            sys.stdout.flush()
        except (BrokenPipeError, AttributeError):  # no reader, or stdout closed (`>&-`)
            import os

            with contextlib.suppress(OSError):
                os.dup2(os.open(os.devnull, os.O_WRONLY), 1)  # the exit's flush stays quiet
        return 0
    from voketag_ops.cli.app import run

    return run(args)


def entry() -> None:
    """The `voke` console script and ``python -m voketag_ops``: run, then exit.

    The interpreter's last garbage collection at exit scans every object the imports made
    (~40 ms of each run); frozen, they are left to the process's end. Everything else about
    exiting stays: atexit handlers, logging's flush, closing files as modules are torn down.
    Only here, not in ``main``, which tests call in-process."""
    from voketag_ops import interrupts

    interrupts.install()  # Ctrl-C and SIGTERM (see there)
    code = main()
    interrupts.settle()
    gc.freeze()
    sys.exit(code)
