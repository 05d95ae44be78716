"""`voke drill`: run DR drills (the local environment, or scratch Cloud SQL instances of a
cloud environment), their history, and reports."""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from voketag_ops.cli.common import DryRun, Yes, use

if TYPE_CHECKING:
    from collections.abc import Callable

    from rich.console import Console

app = typer.Typer(
    help="Rehearse DR (pitr, failover, failback, network): run, report the RTO and RPO achieved, history.",
    no_args_is_help=True,
)


class Scenario(StrEnum):
    pitr = "pitr"
    failover = "failover"
    failback = "failback"
    network = "network"
    all = "all"


MAX_OUTAGE = 3600.0  # seconds a network drill may freeze the leader (dr.network_outage_seconds too)
MAX_CANARY = 600.0  # seconds a drill's canary may write before the fault (dr.canary_seconds too)
MIN_CANARY = 0.1  # shorter, a pitr drill's canary may commit nothing on one side of its target (too)
CANARY_WHY = "the canary writes that long before the fault, a few rows on each side of it"


def _seconds(
    flag: str, value: str, *, at_most: float | None = None, why: str = "", at_least: float = 0
) -> float:
    """VALUE, a duration for FLAG, in seconds: more than 0 (0 is no outage, no canary), at least
    AT_LEAST and at most AT_MOST when given (WHY says why); else UsageError (exit 2) naming FLAG."""
    from voketag_ops.core.dr_checks import parse_duration
    from voketag_ops.errors import UsageError

    try:
        seconds = parse_duration(value)
    except ValueError as exc:
        raise UsageError(f"{flag}: {exc}") from None
    if seconds <= 0:
        raise UsageError(f"{flag}: must be more than 0 (e.g. 5s)")
    if seconds < at_least:
        raise UsageError(f"{flag}: at least {at_least * 1000:g} ms: {why}")
    if at_most is not None and seconds > at_most:
        span = f"{at_most / 3600:g} h" if at_most % 3600 == 0 else f"{at_most / 60:g} min"
        raise UsageError(f"{flag}: at most {span}: {why}")
    return seconds


class Format(StrEnum):
    md = "md"
    html = "html"
    json = "json"


@app.command("run")
def run(
    ctx: typer.Context,
    scenario: Annotated[
        Scenario, typer.Argument(help="Drill to run: pitr, failover, failback, network or all.")
    ],
    outage: Annotated[
        str | None, typer.Option("--outage", help="Network drill: how long the leader is frozen (e.g. 5s).")
    ] = None,
    keep_restore: Annotated[
        bool, typer.Option("--keep-restore", help="PITR drill: keep the restored instance for inspection.")
    ] = False,
    canary_seconds: Annotated[
        str | None,
        typer.Option(
            "--canary-seconds",
            help="How long the canary writes before the fault (default dr.canary_seconds, else 1s local, 5s cloud).",
        ),
    ] = None,
    dry_run: DryRun = False,
    yes: Yes = False,
) -> None:
    """Run a drill end to end; exit 1 if a target is breached or integrity fails. On a cloud
    env (`--env NAME`): pitr, failover or all, on scratch Cloud SQL instances deleted at the end."""
    from voketag_ops.workflows import drill

    env = use(ctx)
    if env.settings.env != "local":
        _run_cloud(env, scenario.value, outage, keep_restore, canary_seconds, dry_run, yes)
        return
    options: dict[str, Any] = {"keep_restore": keep_restore}
    if canary_seconds is not None:
        options["canary_seconds"] = _seconds(
            "--canary-seconds", canary_seconds, at_most=MAX_CANARY, why=CANARY_WHY, at_least=MIN_CANARY
        )
    if outage is not None:
        options["outage_seconds"] = _seconds(
            "--outage", outage, at_most=MAX_OUTAGE, why="the leader is frozen that long"
        )
    if not dry_run:
        from voketag_ops.core.drill import SCENARIOS

        env.out.confirm(
            f"Run {_drills(scenario.value, SCENARIOS)} on the local environment (a drill kills and "
            "restores servers)?",
            yes=yes,
        )
    with env.out.progress(f"drill {scenario.value}", when_started=True) as update:
        outcome = drill.run(
            env.settings,
            env.local_environment(),
            scenario.value,
            dry_run=dry_run,
            progress=update,
            options=options,
        )
    _render_result(env, outcome.report, error=outcome.error)


def _drills(scenario: str, every: tuple[str, ...]) -> str:
    """SCENARIO as a confirmation names it: `all` as the drills it runs (EVERY)."""
    return f"all drills ({', '.join(every)})" if scenario == "all" else f"the {scenario} drill"


def _run_cloud(
    env: Any,
    scenario: str,
    outage: str | None,
    keep_restore: bool,
    canary_seconds: str | None,
    dry_run: bool,
    yes: bool,
) -> None:
    from voketag_ops.errors import UsageError
    from voketag_ops.workflows import cloud_drill

    if outage is not None or keep_restore:
        raise UsageError("--outage and --keep-restore apply to the local environment only")
    options: dict[str, Any] = {}
    if canary_seconds is not None:
        options["canary_seconds"] = _seconds(
            "--canary-seconds", canary_seconds, at_most=MAX_CANARY, why=CANARY_WHY, at_least=MIN_CANARY
        )
    if not dry_run:
        env.out.confirm(
            f"Run {_drills(scenario, cloud_drill.SCENARIOS)} on {env.settings.env} (a drill creates "
            "scratch Cloud SQL instances, billed until it deletes them)?",
            yes=yes,
        )
    with env.out.progress(f"drill {scenario} ({env.settings.env})") as update:
        outcome = cloud_drill.run(
            env.settings, scenario, home=env.home, dry_run=dry_run, progress=update, options=options
        )
    _render_result(env, outcome.report, error=outcome.error)


def _home(env: Any) -> Any:
    """Where the journals of this invocation's environment live (an object with `.home`)."""
    if env.settings.env == "local":
        return env.local_environment()
    from types import SimpleNamespace

    from voketag_ops.workflows.cloud_drill import drills_home

    env.settings.environment(env.settings.env)  # an unknown env is a configuration error
    return SimpleNamespace(home=drills_home(env.settings))


def _render_result(env: Any, report: dict[str, Any], *, error: Any = None) -> None:
    """Exit 1 when a drill failed, 5 when one was aborted (its steady state, or what it checks
    before its fault, did not hold: nothing was drilled); ERROR (a scenario of `all` that raised
    after others finished, or scratch instances `all` left: exit 7) decides the exit code, shown
    after their journals."""
    from voketag_ops.errors import PreconditionError

    if report.get("dry_run"):
        env.out.result(report, render=_render_plan)
        return
    runs = report.get("runs", [report])
    failed = [j for j in runs if j["status"] != "completed"]
    failure = "; ".join(
        f"{j['scenario']} {j['status']}: {'; '.join(j.get('breaches') or [])}" for j in failed
    )
    if error is None and any(j["status"] == "aborted" for j in runs):
        error = PreconditionError(failure)
    env.out.result(
        report,
        ok=not failed,
        render=lambda c, r: _render_runs(c, r, env.out.with_env),
        failure=failure or None,
        error=error,
    )


@app.command("history")
def history(
    ctx: typer.Context,
    scenario: Annotated[
        Scenario | None,
        typer.Option("--scenario", help="Only this drill: pitr, failover, failback or network."),
    ] = None,
    limit: Annotated[int, typer.Option("--limit", help="Newest N runs.", min=1)] = 50,
) -> None:
    """Past drill runs with RTO/RPO per scenario, and the trend."""
    from voketag_ops.workflows import drill

    env = use(ctx)
    wanted = None if scenario is None or scenario is Scenario.all else scenario.value
    env.out.result(
        drill.history(_home(env), scenario=wanted, limit=limit),
        render=lambda c, r: _render_history(c, r, env.out.with_env),
    )


@app.command("report")
def report(
    ctx: typer.Context,
    run_id: Annotated[str, typer.Argument(help="Run id from `voke drill history` (or `last`).")],
    format_: Annotated[
        Format, typer.Option("--format", help="md, html (self-contained) or json.")
    ] = Format.md,
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="Write the report to this file instead of stdout.")
    ] = None,
) -> None:
    """The evidence of one drill run: Markdown, a self-contained HTML page, or the JSON journal."""
    import json

    from voketag_ops.core import drill_report
    from voketag_ops.workflows import drill

    env = use(ctx)
    journal = drill.load_journal(_home(env), run_id)
    if format_ is not Format.json and (problem := drill.report_problem(journal)):
        from voketag_ops.errors import InputError

        raise InputError(f"drill run {journal['run_id']}: its journal cannot be reported ({problem})")
    if format_ is Format.json and output is None:
        env.out.result(journal)
        return
    text = {
        Format.md: drill_report.markdown,
        Format.html: drill_report.html_page,
        Format.json: lambda j: json.dumps(j, indent=2) + "\n",
    }[format_](journal)
    if output is not None:
        from voketag_ops.files import write_output

        data = text.encode()
        write_output(output, "--output", lambda fh: fh.write(data))
        env.out.result(
            {"run_id": journal["run_id"], "format": format_.value, "output": str(output), "bytes": len(data)},
            render=lambda c, r: c.print(f"wrote {r['output']} ({r['bytes']} bytes)"),
        )
        return
    if env.out.json_mode:
        env.out.result({"run_id": journal["run_id"], "format": format_.value, "report": text})
        return
    env.out.stdout.write(text)
    env.out.settled()


def _render_plan(console: Console, report: dict[str, Any]) -> None:
    console.print("[bold]dry run[/]: nothing will change")
    for name, steps in report["plan"].items():
        console.print(f"[bold]{name}[/]")
        for step in steps:
            console.print(f"  • {step}")


def _or_dash(value: Any) -> str:
    return "–" if value is None else str(value)


def _same(text: str) -> str:
    return text


def _render_runs(console: Console, report: dict[str, Any], with_env: Callable[[str], str] = _same) -> None:
    """The runs' verdicts; WITH_ENV adds `--env NAME` to the voke commands named."""
    from voketag_ops.core.drill_report import integrity_word

    runs = report.get("runs", [report])
    for j in runs:
        t = j["targets"]
        mark = "ok  " if j["status"] == "completed" else "FAIL"
        rto = "–" if j["rto_seconds"] is None else f"{j['rto_seconds']:.2f} s"
        rpo = "–" if j["rpo_seconds"] is None else f"{j['rpo_seconds']:.2f} s"
        console.print(
            f"{mark} {j['scenario']:<9} RTO {rto} (target {t['rto_target_seconds']:g} s)  "
            f"RPO {rpo} (target {t['rpo_target_seconds']:g} s)  lost {_lost(j)}  "
            f"integrity {integrity_word(j['integrity_ok'])}  {j['status']}  run {j['run_id']}",
            markup=False,
        )
        for breach in j.get("breaches") or []:
            console.print(f"     {breach}", markup=False)
    if report.get("not_run"):
        console.print(f"not run: {', '.join(report['not_run'])}", markup=False)
    if runs:  # a command that runs as pasted: the last run's id (each run's is on its line above)
        console.print(
            with_env(
                f"report: voke drill report {runs[-1]['run_id']} --format md (or --format html -o FILE)"
            ),
            markup=False,
        )


def _lost(j: dict[str, Any]) -> str:
    """Lost commits and where they were read from (`wal`, `canary`, ...) when the journal says."""
    source = j.get("rpo_source")
    return _or_dash(j.get("lost_commits")) + (f" ({source})" if source else "")


def _render_history(console: Console, report: dict[str, Any], with_env: Callable[[str], str] = _same) -> None:
    if not report["runs"]:
        console.print(with_env("no drill has run yet; `voke drill run all --yes` runs them"))
        return
    for r in report["runs"]:
        rto = "–" if r["rto_seconds"] is None else f"{r['rto_seconds']:.2f}"
        rpo = "–" if r["rpo_seconds"] is None else f"{r['rpo_seconds']:.2f}"
        console.print(
            f"{r['started_at']}  {r['scenario']:<9} {r['status']:<11} RTO {rto:>7} s  RPO {rpo:>6} s  "
            f"lost {_lost(r)}  {r['run_id']}",
            markup=False,
        )
    for scenario, t in report["trend"].items():
        change = t["rto_change_seconds"]
        arrow = "" if change is None else (f" ({'+' if change >= 0 else ''}{change:.2f} s vs previous)")
        measured = (
            "no RTO measured"
            if t["last_rto_seconds"] is None
            else f"last measured RTO {t['last_rto_seconds']:.2f} s{arrow}, "
            f"best {t['best_rto_seconds']:.2f} s, worst {t['worst_rto_seconds']:.2f} s"
        )
        console.print(
            f"trend {scenario:<9} {t['runs']} run(s) ({t['measured']} measured), {t['passed']} passed, "
            f"newest {t['last_status']}; {measured}",
            markup=False,
        )
