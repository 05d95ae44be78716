"""`voke dr`: DR status and checks, backups, point-in-time restore, failover, failback,
fencing, table verification and runbooks."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any

import typer

from voketag_ops.cli.common import DryRun, Yes, render_plan, use, use_local

if TYPE_CHECKING:
    from rich.console import Console

app = typer.Typer(
    help="Disaster recovery: status, check, backup (verify-backup, prune), point-in-time restore (restores, "
    "discard), failover, fence, failback, verify, history, runbook.",
    no_args_is_help=True,
)
runbook_app = typer.Typer(
    help="The DR runbooks (list, show): detection, decision, steps, verification, roll-back.",
    no_args_is_help=True,
)
app.add_typer(runbook_app, name="runbook")


def _local(ctx: typer.Context) -> tuple[Any, Any]:
    env = use_local(ctx)
    return env, env.local_environment()


@app.command("status")
def status(ctx: typer.Context) -> None:
    """Roles, replication lag (heartbeat), WAL archiving, newest backup, recoverable window, last drill."""
    from voketag_ops.workflows import dr

    env = use(ctx)
    if env.settings.env != "local":  # Cloud SQL through the DatabaseRecovery port, same report shape
        from voketag_ops.workflows import cloud_dr

        env.out.result(
            cloud_dr.status(env.settings, cloud_dr.recovery_for(env.settings)), render=_render_status
        )
        return
    env, local = _local(ctx)
    env.out.result(dr.status(env.settings, local), render=_render_status)


@app.command("check")
def check(
    ctx: typer.Context,
    max_backup_age: Annotated[
        str | None, typer.Option("--max-backup-age", help="Fail when the newest backup is older (e.g. 24h).")
    ] = None,
    max_lag: Annotated[
        str | None, typer.Option("--max-lag", help="Fail when replication lags more (e.g. 60s).")
    ] = None,
    min_pitr_window: Annotated[
        str | None,
        typer.Option("--min-pitr-window", help="Fail when the recoverable window is shorter (e.g. 7d)."),
    ] = None,
) -> None:
    """Judge `dr status` against thresholds; exit 1 with one line per failed check (for cron)."""
    from voketag_ops.workflows import dr

    env = use(ctx)
    limits = dr.thresholds(
        env.settings, max_backup_age=max_backup_age, max_lag=max_lag, min_pitr_window=min_pitr_window
    )
    if env.settings.env != "local":
        from voketag_ops.workflows import cloud_dr

        report = cloud_dr.check(env.settings, cloud_dr.recovery_for(env.settings), limits)
    else:
        env, local = _local(ctx)
        report = dr.check(env.settings, local, limits)
    failed = [c for c in report["checks"] if not c["ok"]]
    env.out.result(
        report,
        ok=report["ok"],
        render=_render_check,
        failure="; ".join(f"{c['name']}: {c['message']}" for c in failed) if failed else None,
    )


@app.command("backup")
def backup(ctx: typer.Context, dry_run: DryRun = False, yes: Yes = False) -> None:
    """Take a base backup of the leader now (pg_basebackup with a manifest)."""
    from voketag_ops.workflows import dr

    env, local = _local(ctx)
    if not dry_run:
        env.out.confirm("Take a base backup of the leader now?", yes=yes)
    with env.out.progress("taking a base backup", when_started=True) as update:
        report = dr.backup(env.settings, local, dry_run=dry_run, progress=update)
    env.out.result(report, render=_render_backup)


@app.command("prune")
def prune(ctx: typer.Context, dry_run: DryRun = False, yes: Yes = False) -> None:
    """Remove the base backups and archived WAL older than the PITR retention needs (dr.pitr_retention_days)."""
    from voketag_ops.workflows import dr

    env, local = _local(ctx)
    if not dry_run:
        days = env.settings.dr.pitr_retention_days
        env.out.confirm(
            f"Remove the backups and archived WAL a {days:g}-day restore window no longer needs?", yes=yes
        )
    with env.out.progress("pruning backups and WAL", when_started=True) as update:
        report = dr.prune(env.settings, local, dry_run=dry_run, progress=update)
    env.out.result(report, render=_render_prune)


@app.command("verify-backup")
def verify_backup(
    ctx: typer.Context,
    label: Annotated[
        str | None, typer.Option("--label", help="Backup to verify (default: the newest).")
    ] = None,
) -> None:
    """pg_verifybackup on a base backup, and the WAL archive from it to now: gaps, and every record read."""
    from voketag_ops.workflows import dr

    env, local = _local(ctx)
    with env.out.progress("verifying the backup", when_started=True) as update:
        report = dr.verify_backup(env.settings, local, label=label, progress=update)
    failure = None
    if not report["ok"]:
        if not report["pg_verifybackup"]["ok"]:
            failure = "pg_verifybackup: " + "; ".join(report["pg_verifybackup"]["problems"][:3])
        else:
            archive = report["archive"]
            missing = archive.get("missing") or []
            bad = archive.get("unreadable")
            failure = (
                f"WAL archive gap: {missing[0]} is missing"
                if missing
                else f"WAL archive: {bad['segment']} is unreadable: {bad['error']}"
                if bad
                else archive.get("message", "")
            )
    env.out.result(report, ok=report["ok"], render=_render_verify_backup, failure=failure)


@app.command("restore")
def restore(
    ctx: typer.Context,
    to: Annotated[
        str,
        typer.Option("--to", help="Point in time: ISO 8601 with an offset (…Z, …+02:00), or relative (-5m)."),
    ],
    name: Annotated[
        str | None, typer.Option("--name", help="Name of the new instance (default: restore-<target>).")
    ] = None,
    dry_run: DryRun = False,
    yes: Yes = False,
) -> None:
    """Point-in-time restore into a NEW instance (never over the primary), promoted and writable."""
    from voketag_ops.workflows import dr

    env = use(ctx)
    if env.settings.env != "local":  # Cloud SQL: instances.clone with pointInTime
        from voketag_ops.workflows import cloud_dr

        dr.point_in_time(to)  # a bad --to before the question and the progress line
        recovery = cloud_dr.recovery_for(env.settings)
        if not dry_run:
            env.out.confirm(f"Restore {env.settings.env} to {to} into a new Cloud SQL instance?", yes=yes)
        with env.out.progress("point-in-time restore (Cloud SQL clone)") as update:
            report = cloud_dr.restore(
                env.settings, recovery, home=env.home, to=to, name=name, dry_run=dry_run, progress=update
            )
        env.out.result(report, render=_render_restore)
        return
    env, local = _local(ctx)
    dr.restore_request(to, name)  # bad arguments before the question and the progress line
    if not dry_run:
        env.out.confirm(f"Restore to {to} into a new instance?", yes=yes)
    with env.out.progress("point-in-time restore", when_started=True) as update:
        report = dr.restore(env.settings, local, to=to, name=name, dry_run=dry_run, progress=update)
    env.out.result(report, render=_render_restore)


@app.command("restores")
def restores(ctx: typer.Context) -> None:
    """List the restored instances (running or stopped)."""
    from voketag_ops.workflows import dr

    env, local = _local(ctx)
    env.out.result(dr.restores(env.settings, local), render=_render_restores)


@app.command("discard")
def discard(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="Restored instance to stop and delete.")],
    dry_run: DryRun = False,
    yes: Yes = False,
) -> None:
    """Stop a restored instance and delete its data directory."""
    from voketag_ops.workflows import dr

    env, local = _local(ctx)
    if not dry_run:
        env.out.confirm(f"Stop and delete the restored instance {name}?", yes=yes)
    report = dr.discard(env.settings, local, name=name, dry_run=dry_run)
    env.out.result(report, render=_render_plan_or(_render_discard))


@app.command("failover")
def failover(ctx: typer.Context, dry_run: DryRun = False, yes: Yes = False) -> None:
    """Fence the leader, promote the standby, repoint the services, verify a write. Re-run to resume."""
    from voketag_ops.workflows import dr

    env = use(ctx)
    if env.settings.env != "local":  # Cloud SQL: promoteReplica, then services repointed
        from voketag_ops.workflows import cloud_dr

        ports = cloud_dr.ports_for(env.settings)
        if not dry_run:
            env.out.confirm(f"Fail over {env.settings.env}: promote its cross-region replica?", yes=yes)
        with env.out.progress("failing over (Cloud SQL)") as update:
            report = cloud_dr.failover(env.settings, ports, home=env.home, dry_run=dry_run, progress=update)
        env.out.result(report, render=_render_plan_or(_render_failover))
        return
    env, local = _local(ctx)
    if not dry_run:
        env.out.confirm("Fail over: fence the leader and promote the standby?", yes=yes)
    with env.out.progress("failing over", when_started=True) as update:
        report = dr.failover(env.settings, local, dry_run=dry_run, progress=update)
    env.out.result(report, render=_render_plan_or(_render_failover))


@app.command("failback")
def failback(
    ctx: typer.Context,
    clone: Annotated[
        bool, typer.Option("--clone", help="Re-clone instead of trying pg_rewind first.")
    ] = False,
    no_switch_back: Annotated[
        bool, typer.Option("--no-switch-back", help="Rebuild the standby but keep the current leader.")
    ] = False,
    dry_run: DryRun = False,
    yes: Yes = False,
) -> None:
    """Rebuild the old primary as a standby (pg_rewind or clone), wait for zero lag, switch back."""
    from voketag_ops.workflows import dr

    env = use(ctx)
    if env.settings.env != "local":  # Cloud SQL: a planned switchover back to `instance`
        from voketag_ops.errors import UsageError
        from voketag_ops.workflows import cloud_dr

        if clone or no_switch_back:
            raise UsageError("--clone and --no-switch-back apply to the local environment only")
        ports = cloud_dr.ports_for(env.settings)
        if not dry_run:
            env.out.confirm(f"Fail back {env.settings.env}: switch over to its configured primary?", yes=yes)
        with env.out.progress("failing back (Cloud SQL switchover)") as update:
            report = cloud_dr.failback(env.settings, ports, home=env.home, dry_run=dry_run, progress=update)
        env.out.result(report, render=_render_plan_or(_render_failback))
        return
    env, local = _local(ctx)
    if not dry_run:
        env.out.confirm("Fail back: rebuild the old primary and switch back to it?", yes=yes)
    with env.out.progress("failing back", when_started=True) as update:
        report = dr.failback(
            env.settings, local, dry_run=dry_run, clone=clone, switch_back=not no_switch_back, progress=update
        )
    env.out.result(report, render=_render_plan_or(_render_failback))


@app.command("fence")
def fence(
    ctx: typer.Context,
    node: Annotated[str, typer.Argument(help="Node to fence: primary or replica (never the leader).")],
    dry_run: DryRun = False,
    yes: Yes = False,
) -> None:
    """Stop a writable node that is not the leader (split brain) and keep it down until failback."""
    from voketag_ops.workflows import dr

    env, local = _local(ctx)
    if not dry_run:
        env.out.confirm(f"Fence {node} (stop it and keep it down)?", yes=yes)
    report = dr.fence(env.settings, local, node=node, dry_run=dry_run)
    env.out.result(report, render=_render_plan_or(_render_fence))


def _render_fence(console: Console, r: dict[str, Any]) -> None:
    console.print(f"fenced {r['node']}: {r['how']}; {r['next']}")
    for warning in r.get("warnings") or []:
        console.print(f"warning: {warning}", markup=False)


@app.command("verify")
def verify(
    ctx: typer.Context,
    source: Annotated[
        str, typer.Option("--source", help="leader, standby, primary, replica or a restore name.")
    ],
    target: Annotated[str, typer.Option("--target", help="The instance compared with the source.")],
    table: Annotated[
        list[str] | None, typer.Option("--table", help="schema.table to compare (repeatable; default: all).")
    ] = None,
    database: Annotated[str, typer.Option("--database", help="Database on both instances.")] = "voketag",
    max_keys: Annotated[int, typer.Option("--max-keys", help="Differing keys listed per kind.", min=1)] = 100,
    only_source_keys: Annotated[
        bool,
        typer.Option(
            "--only-source-keys",
            help="Rows and tables the target has beyond the source are counted, not differences "
            "(a leader repaired from a restore keeps the writes made since its point).",
        ),
    ] = False,
) -> None:
    """Compare table contents of two instances by checksums over primary-key ranges; exit 1 on a difference."""
    from voketag_ops.workflows import dr

    env, local = _local(ctx)
    dr.check_instances(local, source, target)  # bad names before the progress line
    with env.out.progress("comparing tables") as update:
        report = dr.verify(
            env.settings,
            local,
            source=source,
            target=target,
            tables=list(table or []),
            database=database,
            max_keys=max_keys,
            only_source_keys=only_source_keys,
            progress=update,
        )
    differing = [t for t in report["tables"] if not t["equal"]]
    env.out.result(
        report,
        ok=report["equal"],
        render=_render_verify,
        failure="; ".join(
            (
                [report["unreadable"]["message"] + " (its tables could not be listed)"]
                if report["unreadable"]
                else []
            )
            + [f"{t['table']}: {_table_difference(t)}" for t in differing]
        )
        or None,
    )


@app.command("history")
def history(
    ctx: typer.Context,
    limit: Annotated[int, typer.Option("--limit", help="Newest N events.", min=1)] = 50,
) -> None:
    """DR operations run here: who, what, target, result, duration."""
    from voketag_ops.workflows import dr

    env, local = _local(ctx)
    events = dr.history(local, limit=limit)

    def render(console: Console, report: dict[str, Any]) -> None:
        if not report["events"]:
            console.print("no DR operations recorded")
        for e in report["events"]:
            console.print(
                f"{e['at']}  {e['action']:<14} {e['target']:<24} {e['result']:<11} {e['duration_seconds'] or 0:>7.1f} s"
                f"  {e['actor']}"
            )

    env.out.result({"events": events}, render=render)


@runbook_app.command("list")
def runbook_list(ctx: typer.Context) -> None:
    """The runbooks, one per disruption."""
    from voketag_ops.workflows import dr

    env = use(ctx)
    found = dr.runbooks(env.settings)

    def render(console: Console, r: dict[str, Any]) -> None:
        for entry in r["runbooks"]:
            console.print(f"{entry['name']:<22} {entry['title']}", markup=False)

    env.out.result({"runbooks": found}, render=render)


@runbook_app.command("show")
def runbook_show(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="Runbook name from `voke dr runbook list`.")],
) -> None:
    """Print a runbook (Markdown; rendered on a terminal)."""
    from voketag_ops.workflows import dr

    env = use(ctx)
    found = dr.runbook(env.settings, name)

    def render(console: Console, r: dict[str, Any]) -> None:
        from voketag_ops.output import _isatty

        if _isatty(console.file):  # (not console.is_terminal: FORCE_COLOR makes a pipe one)
            from voketag_ops.cli._runbook_markdown import RunbookMarkdown

            console.print(
                RunbookMarkdown(r["text"]), crop=False
            )  # a code line wider than the terminal stays whole
        else:
            console.file.write(r["text"])

    env.out.result(found, render=render)


# -- renderers -------------------------------------------------------------------------------------------
def _render_plan_or(render: Any) -> Any:
    def inner(console: Console, report: dict[str, Any]) -> None:
        if report.get("dry_run"):
            render_plan(console, report)
            return
        render(console, report)

    return inner


def _render_discard(console: Console, r: dict[str, Any]) -> None:
    if r["changed"]:
        console.print(f"discarded {r['name']} ({r['removed']})", markup=False)
    else:
        console.print(f"{r['name']} is gone already (discarded before): nothing to do", markup=False)


def _render_status(console: Console, r: dict[str, Any]) -> None:
    from rich.markup import escape

    if not r["initialized"]:
        console.print(f"the local environment does not exist ({r['home']}); `voke env up` creates it")
        return
    leader, standby = r["leader"], r["standby"]

    def where(node: dict[str, Any]) -> str:  # local nodes have a port and timeline, Cloud SQL a region
        if "port" in node:
            timeline = node.get("timeline") if node.get("timeline") is not None else "-"
            said = (
                f"  pid {node['pid']} does not answer: {escape(node['error'])}" if node.get("error") else ""
            )
            return f"port {node['port']}  timeline {timeline}{said}"
        return f"{node.get('region') or '-'} ({node.get('state') or '?'})"  # (none: an absent replica)

    if r.get("topology"):  # a cloud env: which instance voke recorded as the primary
        console.print(f"primary: {r['topology']['summary']}", markup=False)
        problem = r["topology"].get("disagreement")
        if problem:
            console.print(
                f"[red bold]record disagrees with Cloud SQL[/]: {escape(problem['message'])}"
                + (f"\n  fix: {escape(problem['hint'])}" if problem.get("hint") else "")
            )
        for note in r.get("notes") or []:  # a call Cloud SQL refused (fields shown as unknown)
            console.print(f"note: {note}", markup=False)
    console.print(f"leader   {leader['name']:<8} {leader['role']:<8} {where(leader)}")
    if leader.get("write_error"):  # it refused the heartbeat write (a full disk)
        console.print(f"[red bold]         not writable[/]: {escape(leader['write_error'])}")
    if standby:
        lag = (
            f"lag {standby['lag_seconds']:.2f} s"
            + (f" / {standby['lag_bytes']} B" if standby.get("lag_bytes") is not None else "")
            if standby.get("lag_seconds") is not None
            else "lag unknown"
        )
        console.print(
            f"standby  {standby['name']:<8} {standby['role']:<8} {where(standby)}  "
            f"{'streaming' if standby.get('streaming') else 'NOT streaming'}, {lag}"
        )
    else:
        console.print("standby  none")
    if r["split_brain"]:
        console.print(f"[red bold]split brain[/]: writable nodes {', '.join(r['writable_nodes'])}")
    archive = r["archive"] or {}
    state = "failing" if archive.get("failing") else ("ok" if archive.get("failing") is False else "unknown")
    if not archive.get("source"):  # the local archiver's own view
        console.print(
            f"archive  {state}: last {archive.get('last_archived_wal') or '-'} at {archive.get('last_archived_at') or '-'}, "
            f"{len(archive.get('pending') or [])} waiting"
        )
        if archive.get("note"):
            console.print(f"         ({archive['note']})")
    else:  # Cloud SQL: a failure count from Monitoring, no segment names
        failed = archive.get("failed_count")
        console.print(
            f"archive  {state}: {'-' if failed is None else failed} segment(s) failed in the last hour"
        )
    newest = r["newest_backup"]
    if newest:
        count = len(r["backups"]) if isinstance(r["backups"], list) else r["backups"]
        age = newest.get("age_seconds")
        if age is None and newest.get("finished_at"):
            from datetime import datetime, timezone

            finished = datetime.fromisoformat(newest["finished_at"].replace("Z", "+00:00"))
            age = (datetime.now(timezone.utc) - finished).total_seconds()
        console.print(f"backup   {newest['label']} ({(age or 0) / 3600:.1f} h old), {count} in total")
    else:
        console.print("backup   none")
    window = r["recoverable_window"] or {}
    if window.get("seconds") is not None:
        console.print(
            f"window   {window['earliest']} .. {window['latest']} ({window['seconds'] / 3600:.2f} h)"
        )
    else:
        console.print("window   nothing recoverable yet")
    earlier_ranges = r.get("recoverable_ranges") or []  # (local only) oldest first, the window last
    if window.get("seconds") is not None:
        earlier_ranges = earlier_ranges[:-1]
    for earlier in earlier_ranges:
        console.print(
            f"earlier  {earlier['earliest']} .. {earlier['latest']} from {earlier['backup']}"
            f" ({earlier['missing']} lost after it)",
            markup=False,
        )
    gaps = r.get("archive_gaps") or {}
    if gaps.get("missing"):
        console.print(f"[red]archive gap[/]: {', '.join(gaps['missing'][:5])}")
    if r.get("restores"):
        console.print(f"restores {', '.join(r['restores'])}")
    if r.get("fenced"):
        console.print(f"fenced   {', '.join(r['fenced'])}")
    if r.get("unfinished_operation"):
        first = r["unfinished_operation"]
        for op in (first, *(first.get("also") or ())):
            command = op.get("command") or f"voke dr {op['operation']}"
            note = f" ({escape(op['note'])})" if op.get("note") else ""
            if op.get("running"):
                inspect = f": inspect with `{escape(op['inspect'])}`" if op.get("inspect") else ""
                console.print(f"[yellow]running[/] {escape(command)} ({escape(op['running'])}){inspect}")
            else:
                console.print(
                    f"[yellow]unfinished[/] {escape(command)}: resume with `{escape(op['resume'])}`{note}"
                )
    conn = r.get("connections") or {}  # (a cloud env) the address each connection secret gives the services
    for secret in conn.get("secrets") or []:
        _print_address(console, conn, "secret", secret["secret"], secret)
    for served in conn.get("services") or []:  # the version each service's revisions serve
        _print_address(console, conn, "service", f"{served['service']}: {served['secret']}", served)
    last = r.get("last_drill")
    if last:
        rto = "no RTO measured" if last.get("rto_seconds") is None else f"RTO {last['rto_seconds']} s"
        console.print(
            f"drill    {last['scenario']} {last['status']} at {last['finished_at']} ({rto}, run {last['run_id']})"
        )


def _print_address(
    console: Console, conn: dict[str, Any], kind: str, name: str, entry: dict[str, Any]
) -> None:
    """The `dr status` line of ENTRY of `connections` (KIND secret or service, NAME): the address
    its secret version names against the recorded primary's, or its note; never the value."""
    from rich.markup import escape

    at = f"{entry['host']}" + (f":{entry['port']}" if entry["port"] is not None else "")
    said = f"{kind:<8} {name} v{entry['version']} " + (
        f"names {at}" if entry["host"] is not None else f"({entry['note']})"
    )
    if entry["matches"]:
        console.print(f"{said} (the primary {conn['primary']})", markup=False)
    elif entry["matches"] is False:
        resume = f": resume with `{escape(conn['resume'])}`" if conn["resume"] else ""
        console.print(
            f"[red bold]{escape(said)}, not the primary {conn['primary']} at {conn['primary_address']}[/]{resume}"
        )
    elif entry["note"]:  # (one that could not be read is a `note:` line above)
        console.print(f"{kind:<8} {name}: {entry['note']}", markup=False)


def _render_check(console: Console, r: dict[str, Any]) -> None:
    for c in r["checks"]:
        mark = "ok  " if c["ok"] else "FAIL"
        console.print(f"{mark} {c['name']}: {c['message']}", markup=False, highlight=False)


def _render_backup(console: Console, r: dict[str, Any]) -> None:
    if r.get("dry_run"):
        _render_plan_or(None)(console, r)
        return
    b = r["backup"]
    console.print(
        f"backup {b['label']}: {b['size_bytes'] / 1e6:.1f} MB, WAL {b['start_lsn']}..{b['end_lsn']} "
        f"timeline {b['timeline']} ({r['duration_seconds']:.1f} s)"
    )
    pruned = r.get("pruned")
    for warning in (pruned or {}).get("warnings") or []:
        console.print(f"warning: {warning}", markup=False)
    if pruned and pruned.get("error"):
        console.print(f"pruning failed (the backup is taken): {pruned['error']}", markup=False)
    elif pruned and pruned["freed_bytes"]:
        console.print(
            f"pruned {len(pruned['removed_backups'])} backups and {pruned['removed_segments']} archived WAL "
            f"files older than the {pruned['retention_days']:g}-day retention needs ({pruned['freed_bytes'] / 1e6:.1f} MB)",
            markup=False,
        )


def _render_prune(console: Console, r: dict[str, Any]) -> None:
    verb = "would remove" if r["dry_run"] else "removed"
    console.print(
        f"retention {r['retention_days']:g} days (restorable from {r['cutoff']}): {verb} "
        f"{len(r['removed_backups'])} backups and {r['removed_segments']} archived WAL files, "
        f"{r['freed_bytes'] / 1e6:.1f} MB",
        markup=False,
    )
    for b in r["removed_backups"]:
        console.print(
            f"  {b['label']}  finished {b['finished_at']}  {b['size_bytes'] / 1e6:.1f} MB", markup=False
        )
    if r["removed_segments"]:
        console.print(f"  WAL {r['oldest_removed_segment']} .. {r['newest_removed_segment']}", markup=False)
    kept = r["kept_backups"]
    console.print(f"oldest backup kept: {kept[0] if kept else 'none'}", markup=False)
    if r["wal_floor"]:
        console.print(f"archived WAL kept from {r['wal_floor']} (backup {r['floor_backup']})", markup=False)
    for item in r["leftovers"]:
        console.print(
            f"  {'to delete' if r['dry_run'] else 'deleted'}: {item['path']}, {item['size_bytes'] / 1e6:.1f} MB"
            " (left by an interrupted prune)",
            markup=False,
        )
    for warning in r["warnings"]:
        console.print(f"warning: {warning}", markup=False)


def _render_verify_backup(console: Console, r: dict[str, Any]) -> None:
    pv = r["pg_verifybackup"]
    console.print(
        f"{'ok  ' if pv['ok'] else 'FAIL'} pg_verifybackup {r['backup']}"
        + ("" if pv["ok"] else ": " + "; ".join(pv["problems"][:5])),
        markup=False,
    )
    a = r["archive"]
    if a.get("unreadable"):
        console.print(
            f"FAIL WAL archive: {a['unreadable']['segment']} is unreadable: {a['unreadable']['error']} "
            f"(latest commit before it {a.get('latest_reachable') or 'unknown'})",
            markup=False,
        )
    if a.get("missing"):
        console.print(
            f"FAIL WAL archive: missing {', '.join(a['missing'][:5])}; reachable up to {a.get('last_contiguous')} "
            f"(latest commit {a.get('latest_reachable') or 'unknown'})",
            markup=False,
        )
    elif a.get("ok"):
        console.print(
            f"ok   WAL archive: {a['expected_segments']} segment(s) {a['from']}..{a['to']} without a gap, "
            "every record readable",
            markup=False,
        )
    elif not a.get("unreadable"):
        console.print(f"FAIL WAL archive: {a.get('message')}", markup=False)


def _render_restore(console: Console, r: dict[str, Any]) -> None:
    if r.get("kind") == "cloudsql":
        _render_cloud_restore(console, r)
        return
    for bad in r.get("skipped_backups") or []:  # a newer backup failed pg_verifybackup: an older one is used
        console.print(
            f"warning: skipped backup {bad['label']}: pg_verifybackup: {'; '.join(bad['problems'])}",
            style="yellow",
            markup=False,
        )
    if r.get("dry_run"):
        console.print(f"[bold]dry run[/]: would restore {r['target']} from {r['backup']} as {r['name']}")
        for step in r["plan"]:
            console.print(f"  • {step}")
        return
    sp = r["stop_point"]
    console.print(
        f"restored {r['name']} to {r['target']} on port {r['port']} ({r['duration_seconds']:.1f} s)"
    )
    console.print(
        f"stop point: {sp['stopped'] or 'end of WAL'}"
        + (f" at {sp['stop_time']}" if sp.get("stop_time") else "")
        + f"; last replayed transaction {sp['last_transaction_at'] or 'none since the backup'}"
        + f"; new timeline {sp['new_timeline']}"
    )
    console.print(f"base backup {r['backup']['label']}, WAL {sp['wal_first']}..{sp['wal_last']}")
    console.print(f"connect: psql '{r['conninfo']}'   discard: voke dr discard {r['name']} --yes")


def _render_cloud_restore(console: Console, r: dict[str, Any]) -> None:
    if r.get("dry_run"):
        console.print(f"[bold]dry run[/]: would clone {r['source']} at {r['target']} into {r['name']}")
        for step in r["plan"]:
            console.print(f"  • {step}")
        return
    inst, op = r["instance"], r["operation"]
    console.print(
        f"restored {r['source']} at {r['target']} into {inst['name']} ({inst['state']}, {inst['region']}, "
        f"address {inst['ip_address'] or '-'}) in {r['duration_seconds']:.1f} s",
        markup=False,
    )
    console.print(
        f"operation {op['name']} {op['kind']} {op['started_at']} .. {op['finished_at']}", markup=False
    )
    console.print(f"next: {r['next']}", markup=False)


def _render_restores(console: Console, r: dict[str, Any]) -> None:
    if not r["restores"]:
        console.print("no restored instances")
    for doc in r["restores"]:
        console.print(
            f"{doc['name']:<28} port {doc['port']:<6} {'running' if doc['running'] else 'stopped':<8} "
            f"target {doc.get('target')} from {doc.get('backup')}",
            markup=False,
        )
        if doc.get("state") in ("copying", "recovering"):
            console.print(f"  {doc['state']}: its restore is under way", markup=False)
        elif doc.get("state") not in (None, "running"):
            console.print(f"  {doc['state']}: {doc.get('note') or 'discard it to start over'}", markup=False)


def _replayed(r: dict[str, Any]) -> str:
    """What a failover's promoted standby had replayed (past it, the old leader's writes are lost)."""
    if r.get("replayed_lsn") is None:
        return "what it had replayed is not known" + (
            " (Cloud SQL does not report it)" if r.get("kind") == "cloudsql" else ""
        )
    return f"it had replayed to LSN {r['replayed_lsn']}, last commit {r['last_replayed_commit'] or 'none'}"


def _render_failover(console: Console, r: dict[str, Any]) -> None:
    promote = next((s for s in r["steps"] if s["name"].startswith("promote ")), None)
    if promote is None and "replayed_lsn" in r:  # a resume past the promotion
        console.print(f"{r['new_leader']} was promoted before this run: {_replayed(r)}", markup=False)
    for step in r["steps"]:
        line = f"{'ok  ' if step['ok'] else 'FAIL'} {step['name']} ({step['duration_seconds']:.2f} s)"
        console.print(line + (f": {_replayed(r)}" if step is promote else ""), markup=False)
    redeployed = (r.get("services") or {}).get("redeployed")  # (None: a resume past the repoint)
    if redeployed:
        console.print(f"redeployed {', '.join(redeployed)}", markup=False)
    for warning in r.get("warnings") or []:
        console.print(f"warning: {warning}", style="yellow", markup=False)
    console.print(f"{r['new_leader']} is the leader ({r['duration_seconds']:.1f} s). Next: {r['next']}")


def _render_failback(console: Console, r: dict[str, Any]) -> None:
    for step in r["steps"]:
        console.print(f"{'ok  ' if step['ok'] else 'FAIL'} {step['name']} ({step['duration_seconds']:.2f} s)")
    method = r["rebuilt"].get("method")
    how = (
        f"rebuilt by {method}"
        if method in ("pg_rewind", "clone")
        else "switched over"
        if method == "switchover"
        else "no rebuild: it streamed already"
    )
    console.print(f"leader {r['leader']}, standby {r['standby']} ({how}, {r['duration_seconds']:.1f} s)")


def _table_difference(t: dict[str, Any]) -> str:
    if t.get("unreadable"):
        return str(t["unreadable"]["message"])
    if t.get("missing_on_target"):
        return "missing on the target"
    if t.get("extra_on_target"):
        return "extra on the target (not on the source)"
    return f"{t['differences']} difference(s)"


def _render_verify(console: Console, r: dict[str, Any]) -> None:
    console.print(
        f"{r['source']['name']} (at {r['source']['lsn']}) vs {r['target']['name']} (at {r['target']['lsn']}), "
        f"database {r['database']}",
        markup=False,
    )
    if r.get("unreadable"):
        console.print(f"FAIL {r['unreadable']['message']} (its tables could not be listed)", markup=False)
    for t in r["tables"]:
        if "differences" not in t:
            if t["equal"]:  # a table on the target only, with --only-source-keys
                console.print(f"ok   {t['table']}: on the target only (--only-source-keys)", markup=False)
            else:
                console.print(f"DIFF {t['table']}: {_table_difference(t)}", markup=False)
            continue
        mark = "ok  " if t["equal"] else "DIFF"
        console.print(
            f"{mark} {t['table']}: {t['source_rows']} / {t['target_rows']} rows, {t['ranges_compared']} range(s), "
            f"{t['seconds']:.2f} s",
            markup=False,
        )
        for kind in ("missing_in_target", "extra_in_target", "changed"):
            if t[kind]:
                keys = ", ".join("(" + ", ".join(map(str, k)) + ")" for k in t[kind][:10])
                more = f" (+{len(t[kind]) - 10} more listed)" if len(t[kind]) > 10 else ""
                console.print(f"     {kind.replace('_', ' ')}: {keys}{more}", markup=False)
        if t["extra_in_target_ignored"]:
            console.print(
                f"     {t['extra_in_target_ignored']} row(s) on the target only, not differences "
                "(--only-source-keys)",
                markup=False,
            )
        if t.get("capped"):  # the listed keys stop at --max-keys; the count does not
            console.print(
                f"     {t['differences']} difference(s) in all; only the first are listed", markup=False
            )
    if r["skipped_without_primary_key"]:
        console.print(
            f"skipped (no primary key): {', '.join(r['skipped_without_primary_key'])}", markup=False
        )
    console.print(f"{'equal' if r['equal'] else 'DIFFERENT'} ({r['duration_seconds']:.2f} s)", markup=False)
