"""`voke doctor`: configuration, PostgreSQL binaries, local environment, cloud credentials."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import typer

from voketag_ops.cli.common import use

if TYPE_CHECKING:
    from rich.console import Console


def doctor(ctx: typer.Context) -> None:
    """Check what can be checked without changing anything (exit 1 if any check fails)."""
    from voketag_ops.workflows.doctor import run_doctor

    env = use(ctx)
    report = run_doctor(lambda: env.loaded)
    failed = report.failures()
    env.out.result(
        {"ok": report.ok, "env": report.env, "checks": report.checks},
        ok=report.ok,
        render=_render,
        failure=f"{len(failed)} check(s) failed: {', '.join(c.name for c in failed)}" if failed else None,
    )


def _render(console: Console, report: dict[str, Any]) -> None:
    for check in report["checks"]:
        from rich.markup import escape

        mark = "[green]ok[/]  " if check.ok else "[red]fail[/]"
        # Details and hints are plain text: "[environments.prod]" is a TOML table, not markup.
        console.print(f"{mark} {escape(check.name)}: {escape(check.detail)}", highlight=False)
        if check.hint and not check.ok:
            console.print(f"       hint: {check.hint}", highlight=False, markup=False)
