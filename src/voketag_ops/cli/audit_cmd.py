"""`voke audit`: show, export and verify the tamper-evident audit log.

Exit codes: 0 success; 1 `verify` found a problem (it names the first bad entry, or the first
bad block of a chain that does not validate);
2 bad flags; 4 the log could not be read.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from voketag_ops.cli.common import DryRun, MinDifficulty, Unasked, render_plan, use
from voketag_ops.output import print_table, shown

if TYPE_CHECKING:
    from rich.console import Console

    from voketag_ops.cli.common import AppContext
    from voketag_ops.core.audit import Filter

app = typer.Typer(
    help="The tamper-evident audit log: show, export, verify, checkpoint.", no_args_is_help=True
)

Since = Annotated[
    str | None,
    typer.Option(
        "--since", help="From this time: ISO 8601 (zoneless = UTC) or an age like 24h, 1h30m, -15m."
    ),
]
Until = Annotated[str | None, typer.Option("--until", help="Before this time (same forms as --since).")]
EventType = Annotated[
    str | None, typer.Option("--event-type", "-e", help="Event type, shell glob allowed (rotation.*).")
]
Target = Annotated[str | None, typer.Option("--target", "-t", help="Target, shell glob allowed.")]
Result = Annotated[
    str | None,
    typer.Option(
        "--result",
        "-r",
        help="success, failure, dry-run, interrupted, cancelled; some events record more "
        "(unchanged, loaded, duplicate, rejected, needs_attention...).",
    ),
]


def _home(env: AppContext) -> Path:
    from voketag_ops.adapters.local.environment import resolve_home

    return resolve_home(env.settings.local.home)


def _filter(
    env: AppContext,
    since: str | None,
    until: str | None,
    event_type: str | None,
    target: str | None,
    result: str | None,
) -> Filter:
    """The entries asked for: of the environment given (--env, VOKE_ENV or `env` in the
    configuration file) only, of every environment when none was (local is then a default,
    not a choice)."""
    from voketag_ops.core.audit import RESULTS, Filter
    from voketag_ops.errors import UsageError
    from voketag_ops.workflows.audit import parse_when

    now = datetime.now(UTC)
    if result is not None and result not in RESULTS:
        raise UsageError(f"--result must be one of {', '.join(RESULTS)}, not {result!r}")
    return Filter(
        since=None if since is None else parse_when(since, "--since", now=now),
        until=None if until is None else parse_when(until, "--until", now=now),
        event_type=event_type,
        target=target,
        result=result,
        env=env.settings.env if env.loaded.source_of("env") != "default" else None,
    )


@app.command("show")
def show(
    ctx: typer.Context,
    since: Since = None,
    until: Until = None,
    event_type: EventType = None,
    target: Target = None,
    result: Result = None,
    limit: Annotated[int, typer.Option("--limit", "-n", min=1, help="At most this many entries.")] = 50,
    offset: Annotated[
        int, typer.Option("--offset", min=0, help="Skip this many matching entries first.")
    ] = 0,
    newest_first: Annotated[bool, typer.Option("--newest-first", help="Latest entries first.")] = False,
) -> None:
    """Show audit events, filtered by time range, event type, target and result, a page at a time;
    with --env (or VOKE_ENV) given, that environment's only."""
    from voketag_ops.workflows.audit import show as run_show

    env = use(ctx)
    flt = _filter(env, since, until, event_type, target, result)
    report = run_show(_home(env), flt, limit=limit, offset=offset, newest_first=newest_first)
    env.out.result(report, render=_render_show)


@app.command("export")
def export(
    ctx: typer.Context,
    fmt: Annotated[str, typer.Option("--format", "-f", help="json or csv.")] = "json",
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="Write here instead of stdout.")
    ] = None,
    since: Since = None,
    until: Until = None,
    event_type: EventType = None,
    target: Target = None,
    result: Result = None,
) -> None:
    """Export audit events as JSON or CSV (CSV cells starting with = + - @ are escaped); with
    --env (or VOKE_ENV) given, that environment's only."""
    from voketag_ops.errors import UsageError
    from voketag_ops.files import write_output
    from voketag_ops.workflows.audit import export_chunks

    env = use(ctx)
    if fmt not in ("json", "csv"):
        raise UsageError(f"--format must be json or csv, not {fmt!r}")
    flt = _filter(env, since, until, event_type, target, result)
    skipped: list[int] = []
    inline = output is None and env.out.json_mode  # into the --json envelope, never held whole
    chunks = export_chunks(_home(env), flt, fmt, skipped=skipped, inline=inline)
    if output is None:
        if inline:
            env.out.stream_result(
                {"format": fmt, "path": None}, "data", chunks, lambda: {"skipped_lines": skipped}
            )
        else:
            for chunk in chunks:
                env.out.stdout.write(env.out.json_text(chunk) if fmt == "json" else chunk)
            env.out.stdout.flush()
        _warn_skipped(env, skipped)
        return
    write_output(output, "--output", lambda fh: fh.writelines(c.encode() for c in chunks), private=True)
    _warn_skipped(env, skipped)
    summary: dict[str, Any] = {"format": fmt, "path": str(output), "skipped_lines": skipped}
    env.out.result(
        summary, render=lambda c, r: c.print(f"exported the audit log as {r['format']} to {r['path']}")
    )


@app.command("verify")
def verify(ctx: typer.Context, min_difficulty: MinDifficulty = None) -> None:
    """Check every entry's hash and link, and the log against its checkpoints and their
    chain anchors; exit 1 naming the first bad entry (edited, deleted, inserted,
    reordered, torn by a crash, or cut off below a checkpoint), or a chain that does not
    validate (its anchors are not trusted). Never starts the local environment: with the
    chain unreachable, anchors are reported as not checked."""
    from voketag_ops.workflows.audit import verify as run_verify

    env = use(ctx)
    if min_difficulty is None:
        min_difficulty = env.settings.chain.min_difficulty
    report = run_verify(_home(env), min_difficulty=min_difficulty)
    env.out.result(report, ok=report.ok, failure=report.message, render=_render_verify)


@app.command("checkpoint")
def checkpoint(ctx: typer.Context, dry_run: DryRun = False, yes: Unasked = False) -> None:
    """Checkpoint the log now (size + Merkle root) and request anchors on the chain for it and
    for any checkpoint queued while the chain was unreachable (never starts the environment)."""
    from voketag_ops.workflows.audit import checkpoint as run_checkpoint
    from voketag_ops.workflows.audit import checkpoint_plan

    env = use(ctx)
    if dry_run:
        env.out.result(checkpoint_plan(_home(env)), render=render_plan)
        return
    report = run_checkpoint(_home(env), env=env.settings.env)
    env.out.result(report, render=lambda c, r: c.print(r["message"]))


def _warn_skipped(env: AppContext, skipped: list[int]) -> None:
    if skipped:
        env.out.note(f"warning: skipped unreadable line(s): {skipped} (see `voke audit verify`)")


def _render_show(console: Console, report: dict[str, Any]) -> None:
    from rich.table import Table

    entries = report["entries"]
    where = "" if report["env"] is None else f" in env {report['env']}"
    if not entries:
        console.print(f"no matching audit events{where} ({report['total']} matched in all)")
        return
    table = Table("seq", "time (UTC)", "event", "actor", "env", "target", "result", "seconds", box=None)
    for e in entries:
        seconds = "" if e["duration_seconds"] is None else f"{e['duration_seconds']:.3f}"
        style = "red" if e["result"] in ("failure", "interrupted") else None
        table.add_row(
            str(e["seq"]),
            e["timestamp"][:19].replace("T", " "),
            shown(e["event_type"]),
            shown(e["actor"]),  # VOKE_ACTOR, a CI job's: its text, never ESC sequences or markup
            shown(e["env"] or ""),
            shown(e["target"]),  # file names, URLs: their text, never ESC sequences or markup
            e["result"],
            seconds,
            style=style,
        )
    print_table(console, table)
    shown_to = report["offset"] + len(entries)
    total = report["total"] if report["total_exact"] else f"at least {report['total']}"
    console.print(f"{report['offset'] + 1}-{shown_to} of {total} matching{where}")
    if report["skipped_lines"]:
        console.print(
            f"[yellow]skipped unreadable line(s): {report['skipped_lines']} (see `voke audit verify`)[/]"
        )


def _render_verify(console: Console, report: Any) -> None:
    from voketag_ops.core.audit import Problem

    if report.ok:
        console.print(
            f"audit log ok: {report.entries} entries, {report.checkpoints_checked} checkpoint(s) and "
            f"{report.anchors_checked} anchor(s) agree"
        )
        if report.torn_writes_recorded:
            console.print(f"{report.torn_writes_recorded} interrupted write(s) on record (audit.torn_write)")
        if report.anchors_unchecked:
            console.print(f"anchors not checked: {report.anchors_unchecked}")
        elif report.checkpoints_without_anchor:
            console.print(
                f"{report.checkpoints_without_anchor} checkpoint(s) not anchored yet "
                "(requested by the next `voke audit checkpoint` or `voke chain anchor run`)"
            )
    elif report.problem is Problem.UNTRUSTED_CHAIN:
        console.print(
            f"audit log NOT VERIFIED: {report.entries} entries agree with {report.checkpoints_checked} "
            "local checkpoint(s), but the chain does not validate, so none of its anchors count"
        )
    else:
        where = "" if report.first_bad_entry is None else f": first bad entry {report.first_bad_entry}"
        console.print(f"audit log INVALID{where} ({report.problem.value})")
