"""`voke env`: start, inspect and stop the local environment."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Annotated, Any

import typer

from voketag_ops.cli.common import DryRun, Unasked, Yes, render_plan, use_local
from voketag_ops.output import print_table

if TYPE_CHECKING:
    from rich.console import Console

app = typer.Typer(
    help="Start (up), inspect (status), stop (down), move-port and destroy the local environment "
    "(PostgreSQL primary, replica, archive).",
    no_args_is_help=True,
)


@app.command("up")
def up(ctx: typer.Context, dry_run: DryRun = False, yes: Unasked = False) -> None:
    """Start the local environment, creating what is missing. Safe to re-run."""
    env = use_local(ctx)
    platform = env.platform()
    if dry_run:
        env.out.result(_up_plan(platform.env), render=render_plan)
        return
    with env.out.steps("starting the local environment") as update:
        report = platform.up(update)
    env.out.result(report, render=_render_up)


@app.command("status")
def status(ctx: typer.Context) -> None:
    """Show roles, ports, replication lag, WAL archiving and base backups."""
    env = use_local(ctx)
    env.out.result(env.platform().status(), render=_render_status)


@app.command("down")
def down(ctx: typer.Context, dry_run: DryRun = False, yes: Unasked = False) -> None:
    """Stop the servers and keep all data (`voke env up` starts them again)."""
    env = use_local(ctx)
    local = env.local_environment()
    if dry_run:
        env.platform().refuse_while_rotating("stopping")  # as the run would
        env.out.result(
            {
                "plan": [
                    "stop the local services",
                    "stop any restored instance",
                    "stop the replica",
                    "stop the primary",
                ],
                "home": str(local.home),
            },
            render=render_plan,
        )
        return
    with env.out.progress("stopping the local environment") as update:
        report = env.platform().down(update)
    env.out.result(
        report,
        render=lambda c, r: c.print(
            f"stopped: {', '.join(r['stopped']) or 'nothing was running'} (data kept in {r['home']})"
        ),
    )


@app.command("move-port")
def move_port(
    ctx: typer.Context,
    node: Annotated[
        str,
        typer.Argument(help="primary, replica or a restored instance's name (stopped)", show_default=False),
    ],
    port: Annotated[
        int | None,
        typer.Option("--port", min=1024, max=65535, help="The new port (default: a free one voke picks)."),
    ] = None,
    dry_run: DryRun = False,
    yes: Yes = False,
) -> None:
    """Move a stopped node or restored instance to another port, when another process holds its
    own: the standby follows a moved leader, and the services' connection secret names its new
    port (the services are stopped, and start on it with the leader at `voke env up`). Data kept."""
    env = use_local(ctx)
    platform = env.platform()
    if dry_run:
        from voketag_ops.adapters.local.dr import refuse_if_running

        refuse_if_running(platform.env)  # (an unfinished DR operation is no reason: it resumes after)
        plan = platform.plan_move(node, port, dry_run=True)
        new = "the new port" if plan["port_chosen_at_run"] else f"port {plan['port']}"
        steps = [
            f"record {node} on a free port picked when the move runs (now {plan['old_port']}; "
            f"`--port N` names the port instead)"
            if plan["port_chosen_at_run"]
            else f"record {node} on port {plan['port']} (moving from {plan['old_port']})"
        ]
        if plan["standby"]:
            steps.append(f"point {plan['standby']}'s primary_conninfo at {new} and reload it")
        if plan["leader"]:
            steps.append(
                "give the services' connection secret versions naming the new port and stop the running "
                "services (`voke env up` starts them on it with the leader)"
            )
        env.out.result({**plan, "plan": steps, "home": str(platform.env.home)}, render=render_plan)
        return
    env.out.confirm(f"Move {node} of {platform.env.home} to another port?", yes=yes)
    report = platform.move_port(node, port)
    env.out.result(report, render=_render_move)


def _render_move(console: Console, report: dict[str, Any]) -> None:
    if not report["changed"]:
        console.print(f"{report['node']} is on port {report['port']} already; nothing changed")
        return
    if report["port"] != report["old_port"]:
        console.print(f"{report['node']} moved from port {report['old_port']} to port {report['port']}")
    for note in report["warnings"]:
        console.print(f"warning: {note}", markup=False)
    if report["standby_repointed"]:
        console.print(f"{report['standby_repointed']} now streams from port {report['port']}")
    services = report.get("services") or {}
    if services.get("repointed"):
        names = ", ".join(r["secret"] for r in services["repointed"])
        console.print(f"repointed: {names}; stopped: {', '.join(services['stopped']) or 'none running'}")
    console.print(f"next: {report['next']}", markup=False)


@app.command("destroy")
def destroy(
    ctx: typer.Context,
    discard_chain: Annotated[
        bool,
        typer.Option(
            "--discard-chain", help="Do not export the chain first: it is deleted with the databases."
        ),
    ] = False,
    dry_run: DryRun = False,
    yes: Yes = False,
) -> None:
    """Stop the servers and delete the environment's data, archive and backups (the chain is
    exported to VOKE_HOME/chain/chain.json first; the audit log stays)."""
    env = use_local(ctx)
    local = env.local_environment()
    if dry_run:
        env.platform().refuse_while_rotating("destroying")  # as the run would
        env.out.result(
            {
                "plan": [
                    "delete the chain with the databases (--discard-chain)"
                    if discard_chain
                    else "export the chain to VOKE_HOME/chain/chain.json (it outlives the environment)",
                    "stop the local services and the servers (and any restored instance)",
                    f"delete {local.state_file}, {local.pg_dir} (databases, WAL archive, base backups) "
                    f"and {local.home / 'dr'} (fence markers, unfinished DR operations)",
                    f"delete the secret store ({local.home / 'secrets'}, {local.home / 'secrets.key'}: "
                    f"every secret, adopted API keys included) and {local.home / 'services'}",
                    "keep the audit log and drill journals",
                ],
                "home": str(local.home),
            },
            render=render_plan,
        )
        return
    env.out.confirm(f"Delete the local environment in {local.home}?", yes=yes)
    with env.out.progress("destroying the local environment") as update:
        report = env.platform().destroy(update, discard_chain=discard_chain)
    env.out.result(
        report,
        render=lambda c, r: c.print(
            (
                f"removed {len(r['removed'])} path(s) under {r['home']}"
                if r["removed"]
                else "nothing to remove"
            )
            + (f"; chain {r['chain']}" if r.get("chain") not in (None, "empty", "kept (file store)") else "")
        ),
    )


def _up_plan(local: Any) -> dict[str, Any]:
    state = local.state()
    if state is None:
        plan = [
            *(
                [
                    f"as root: add o+x (search, not read) to {local.home} and each parent lacking it, so the "
                    "server user reaches its files"
                ]
                if os.geteuid() == 0
                else []
            ),
            "create the primary (initdb, data checksums, wal_level=replica, WAL archiving)",
            "clone a streaming replica on replication slot voke_replica",
            "take a first base backup with manifest",
            "create application logins and their secret; start the local services",
        ]
    else:
        plan = [
            "start whichever of primary and replica is stopped",
            "take a base backup if none exists",
            "start any local service that is not running",
        ]
    return {"home": str(local.home), "exists": state is not None, "plan": plan}


def _render_up(console: Console, report: Any) -> None:
    for note in report.not_started:
        console.print(f"not started: {note}", markup=False)
    for note in report.warnings:
        console.print(f"warning: {note}", markup=False)
    if report.already_running:
        console.print(f"the local environment is already running ({report.home}); nothing changed")
        return
    for name in ("primary", "replica"):
        if name in report.ports:
            verb = "started" if name in report.started else "running"
            verb = "running, not answering" if name in report.not_answering else verb
            console.print(f"{name:8} {verb:8} 127.0.0.1:{report.ports[name]}")
    for name in report.started:
        if name.startswith("restore "):  # a restored instance `env down` had stopped
            console.print(f"{name} started", markup=False)
    if report.backup:
        console.print(f"backup   {report.backup}")
    if report.services_started:
        console.print(f"services started: {', '.join(report.services_started)}")
    if report.services_restarted:
        console.print(
            f"services restarted (running, not answering /health): {', '.join(report.services_restarted)}"
        )
    console.print(f"PostgreSQL {report.pg_version}, state in {report.home} ({report.duration_seconds:.1f} s)")
    for directory in report.search_granted:
        console.print(
            f"note: added o+x (search, not read) on {directory} so the server user reaches VOKE_HOME"
        )


def _render_status(console: Console, report: dict[str, Any]) -> None:
    from rich.table import Table

    if not report["initialized"] and report.get("orphaned"):
        console.print(f"{report['orphaned']['problem']}: {report['orphaned']['hint']}", markup=False)
        return
    if not report["initialized"]:
        console.print(f"the local environment does not exist ({report['home']}); `voke env up` creates it")
        return
    table = Table(title=f"local environment ({report['home']})", title_justify="left")
    for col in ("node", "role", "port", "running", "timeline", "lag"):
        table.add_column(col)
    for slot in ("primary", "replica"):  # the roles; each row is named after its node
        node = report[slot]
        lag = ""
        if node.get("lag_bytes") is not None:
            seconds = node.get("lag_seconds")  # None: behind, and how long is not known
            lag = f"{node['lag_bytes']} B / " + ("? s" if seconds is None else f"{seconds:.1f} s")
        table.add_row(
            node.get("name") or slot,
            node["role"],
            str(node["port"]),
            "yes" if node["running"] else ("[red]not answering[/]" if node.get("pid") else "[red]no[/]"),
            str(node["timeline"] or ""),
            lag,
        )
    print_table(console, table)
    for slot in ("primary", "replica"):  # a postmaster that is there but does not answer: why (SIGSTOP...)
        node = report[slot]
        if not node["running"] and node.get("pid") and node.get("error"):
            console.print(f"  {node.get('name') or slot} (pid {node['pid']}): {node['error']}", markup=False)
        if node.get("lag_error"):
            console.print(f"  {node.get('name') or slot} lag: {node['lag_error']}", markup=False)
    archive = report.get("archive") or {}
    if archive.get("dir"):
        console.print(
            f"archive: last {archive.get('last_archived_wal') or '-'} at {archive.get('last_archived_at') or '-'}, "
            f"failed {'?' if archive.get('failed_count') is None else archive['failed_count']}"
        )
        if archive.get("note"):
            console.print(f"  ({archive['note']})")
    if report["backups"]:
        newest = report["backups"][-1]
        console.print(
            f"backups: {len(report['backups'])}, newest {newest['label']} ({newest['finished_at']})"
        )
    else:
        console.print("backups: none")
    for svc in report.get("services", []):
        mark = "healthy" if svc["healthy"] else "[red]unhealthy[/]"
        console.print(
            f"service {svc['name']}: {mark}, {svc['secret']} v{svc['secret_version']}, {svc['url'] or '-'}"
        )
    if report.get("split_brain"):
        console.print("[red bold]split brain: two writable primaries[/]")
    console.print("healthy" if report["healthy"] else "[yellow]not healthy[/]")
