"""Entry point. `voke --version` answers before Typer, rich or pydantic are imported."""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    """Run voke with ARGV (default: sys.argv[1:]) and return the exit code."""
    args = sys.argv[1:] if argv is None else list(argv)
    if args in (["--version"], ["-V"]):
        from voketag_ops import __version__

        sys.stdout.write(f"voke {__version__}\n")
        return 0
    from voketag_ops.cli.app import run

    return run(args)
