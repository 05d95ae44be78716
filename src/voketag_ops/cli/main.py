"""Entry point. `voke --version` answers before Typer, rich or pydantic are imported."""

from __future__ import annotations

import gc
import sys

# (imported here, not in `entry`: its handlers are in place from `entry`'s first line; light, as
# `voke --version` imports it either way)
from voketag_ops import interrupts


def main(argv: list[str] | None = None) -> int:
    """Run voke with ARGV (default: sys.argv[1:]) and return the exit code."""
    args = sys.argv[1:] if argv is None else list(argv)
    if args in (["--version"], ["-V"]):
        from voketag_ops import __version__

        try:
            sys.stdout.write(f"voke {__version__}\n")
            sys.stdout.flush()
        except AttributeError:  # stdout closed (`>&-`)
            pass
        except OSError as exc:  # no reader, or a full disk: as for any other answer
            from voketag_ops.errors import VokeError
            from voketag_ops.output import Output

            output = Output()
            try:
                output.stdout.refused(exc)  # type: ignore[attr-defined]
            except VokeError as error:
                return output.error(error)
        return 0
    from voketag_ops.cli.app import run

    return run(args)


def entry() -> None:
    """The `voke` console script and ``python -m voketag_ops``: run, then exit.

    The interpreter's last garbage collection at exit scans every object the imports made
    (~40 ms of each run); frozen, they are left to the process's end. Everything else about
    exiting stays: atexit handlers, logging's flush, closing files as modules are torn down.
    Only here, not in ``main``, which tests call in-process."""
    # Ctrl-C and SIGTERM (see there), first: a signal during the imports below ends voke with
    # its one-line error too, not Python's traceback.
    interrupts.install()
    from voketag_ops.cli.argv import guess_command

    # Before Typer has resolved the command, that error names what the command line does, as
    # any other error would: words shaped like voke's command names only, as an argument out
    # of place (a URL with a password) would be shown unmasked.
    command = guess_command(sys.argv[1:])
    named = all(word.replace("-", "").isalpha() and word.islower() for word in command.split())
    interrupts.name(command if command and named else None)
    from voketag_ops.logs import route_strays

    route_strays()
    code = main()
    interrupts.settle()
    gc.freeze()
    sys.exit(code)
