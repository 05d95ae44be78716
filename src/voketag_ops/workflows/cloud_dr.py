"""`voke dr` on a Google Cloud environment: status and checks over the DatabaseRecovery
port (Cloud SQL Admin + Monitoring); point-in-time restore into a new instance,
failover and failback over the same port plus the SecretStore and ServiceRuntime ports
(the services are repointed through their connection secret and redeployed).

The snapshot has the shape of the local one (`leader`, `standby`, `archive`,
`newest_backup`, `recoverable_window`, `writable_nodes`, `split_brain`), so the same
pure judge (core/dr_checks.py) decides the checks and the same renderers print them.
Every state-changing use case takes `dry_run`, checks what it can before changing
anything (exit 5 for an illegal state, nothing changed), and writes one audit event.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

from voketag_ops.core.addresses import plain_host, plain_port
from voketag_ops.core.dr_checks import Thresholds, judge, parse_iso
from voketag_ops.core.times import iso
from voketag_ops.errors import (
    BackendError,
    ConfigError,
    Interrupted,
    NeedsOperatorError,
    NotFoundError,
    OutcomeUnknownError,
    PreconditionError,
    StepTimeoutError,
    UsageError,
    VokeError,
    exit_code_of,
)
from voketag_ops.workflows.cloud_drill import one_at_a_time
from voketag_ops.workflows.dr import REPOINT_ORDER, as_audited, deploy_recorded, point_in_time, repoint_report
from voketag_ops.workflows.rotate import refuse_if_rotating
from voketag_ops.workflows.secrets import READABLE, unreadable_alias

if TYPE_CHECKING:
    from voketag_ops.audit import AuditedEvent
    from voketag_ops.config import GcpEnvironment, Settings
    from voketag_ops.ports import (
        DatabaseRecovery,
        DbInstanceInfo,
        DbOperationInfo,
        SecretStore,
        ServiceRuntime,
    )
    from voketag_ops.workflows.cloud_topology import Topology

Progress = Callable[[str], None]


def _quiet(_msg: str) -> None:
    return None


def recovery_for(settings: Settings) -> DatabaseRecovery:
    """The DatabaseRecovery of the cloud environment `settings.env`."""
    from voketag_ops.workflows.cloud import CloudPlatform

    return CloudPlatform(settings).recovery()


# Cloud SQL operations that move or stop an instance of the topology, or clone one (a `dr restore`
# or a drill under way, or one whose voke died: it makes a new, billed instance, as an unfinished
# local restore does): while one runs, `dr check` fails unfinished_operation. Others (a routine
# backup, a user or label update) are listed only.
UNFINISHED_OPERATIONS = frozenset(
    {
        "FAILOVER", "SWITCHOVER", "PROMOTE_REPLICA", "DEMOTE_MASTER", "DEMOTE", "CREATE_REPLICA",
        "RECREATE_REPLICA", "STOP_REPLICA", "START_REPLICA", "RESTORE_VOLUME", "RESTART",
        "AUTO_RESTART", "MAINTENANCE", "DELETE", "CLONE",
    }
)  # fmt: skip


def status(
    settings: Settings,
    recovery: DatabaseRecovery,
    *,
    store: SecretStore | None = None,
    runtime: ServiceRuntime | None = None,
    now: datetime | None = None,
) -> dict[str, Any]:
    """Roles, replication lag (Monitoring), newest SUCCESSFUL backup, PITR window, archiving,
    all about the primary voke recorded, and which address each connection secret gives the
    services (STORE, by default the environment's Secret Manager) and which each service
    serves (RUNTIME, by default its Cloud Run). When the record and Cloud
    SQL disagree, which is when an operator needs this most, the report says how
    (`topology.disagreement`) and shows the instances as Cloud SQL sees them instead of
    stopping (exit 5 is for the commands that change things)."""
    from voketag_ops.workflows import cloud_topology

    now = now or datetime.now(timezone.utc)
    topo = cloud_topology.read(settings, recovery, strict=False)
    if topo.primary not in topo.instances:  # recorded or configured, but gone: show the other one
        other = next((n for n in topo.instances if n != topo.primary), None)
        if other is None:
            raise PreconditionError(
                f"none of the Cloud SQL instances of {settings.env} exists "
                f"({', '.join(n for n in (topo.primary, topo.standby) if n)})"
            )
        topo = replace(topo, primary=other, standby=None)
    record = topo
    if topo.instances[topo.primary].role != "primary":
        # the record (or, with none, the configured home) names a replica: show the instance
        # Cloud SQL calls the primary, as a double claim does; `topology` keeps the record and
        # its disagreement (a replica has no backups or PITR window of its own to judge)
        actual = next((n for n, i in topo.instances.items() if i.role == "primary"), None)
        if actual is not None:
            standby_name = topo.primary if actual == topo.standby else topo.standby
            topo = replace(topo, primary=actual, standby=standby_name)
    primary = topo.instances[topo.primary]
    leader = {
        "name": primary.name,
        "role": primary.role,
        "running": primary.state == "RUNNABLE",
        "state": primary.state,
        "region": primary.region,
        "availability": primary.availability,
        "edition": primary.edition,
        "pitr_enabled": primary.pitr_enabled,
        "retention_days": primary.retention_days,
    }
    writable = [primary.name] if primary.role == "primary" and primary.state == "RUNNABLE" else []
    errors: dict[str, str] = {}
    standby = None
    archive_failures = None
    # Cloud Monitoring refusing or unreachable leaves lag and archiving unknown (their checks
    # fail, saying why), as a Cloud SQL refusal below does, rather than failing the whole report
    replica = topo.instances.get(topo.standby) if topo.standby else None
    if replica is None:  # (with one, replication() reads them too) the primary's archiving, always
        reader = getattr(recovery, "archive_failures", None)
        try:
            archive_failures = reader(topo.primary) if reader is not None else None
        except VokeError as exc:
            errors["monitoring"] = f"could not read the archiving of {topo.primary}: {exc.message}"
    if replica is not None:
        from voketag_ops.ports import ReplicationInfo

        cloudsql: Any = recovery  # CloudSqlRecovery: the byte lag is read on the primary of now
        try:
            repl = cloudsql.replication(replica.name, primary=topo.primary)
        except VokeError as exc:
            errors["monitoring"] = f"could not read the replication of {replica.name}: {exc.message}"
            repl = ReplicationInfo(replica.name, None, None, None)
        archive_failures = repl.archive_failures
        standby = {
            "name": replica.name,
            "role": replica.role,
            "running": replica.state == "RUNNABLE",
            "state": replica.state,
            "region": replica.region,
            "replicates_from": replica.primary,
            "streaming": replica.role == "replica"
            and replica.primary == primary.name
            and replica.state == "RUNNABLE"
            and not repl.inactive,
            "lag_seconds": repl.lag_seconds,
            "lag_bytes": repl.lag_bytes,
            # No lag sample: replication may be broken; a check must not call that healthy.
            "lag_unknown": repl.lag_seconds is None and not repl.inactive,
        }
        if repl.inactive:
            errors["replication"] = (
                f"Cloud SQL reports replication to {replica.name} inactive (negative replica_lag)"
            )
        if replica.role == "primary" and replica.state == "RUNNABLE":
            writable.append(replica.name)
    elif topo.standby:
        # deleted (or misnamed): a DR state the scheduled check must report, not an exit 4;
        # replica_streaming fails saying so, the lag is unknown and the rest is still judged
        key = "replica" if topo.standby == settings.environment(settings.env).replica else "instance"
        errors["replica"] = (
            f"the replica {topo.standby} does not exist in Cloud SQL (deleted, or "
            f"environments.{settings.env}.{key} misspelt): there is nothing to fail over to"
        )
        standby = {
            "name": topo.standby,
            "role": "absent",  # (as the local snapshot calls a node that does not exist)
            "running": False,
            "state": None,
            "region": None,
            "replicates_from": None,
            "streaming": False,
            "lag_seconds": None,
            "lag_bytes": None,
            "lag_unknown": False,
        }
    unfinished: dict[str, Any] | None = None
    pending: list[Any] = []
    lister = getattr(recovery, "pending_operations", None)  # Cloud SQL's own, whoever started them
    if lister is not None:
        try:
            pending = [
                op for name in (topo.primary, topo.standby) if name in topo.instances for op in lister(name)
            ]
        except VokeError as exc:
            errors["operations"] = f"could not list the Cloud SQL operations: {exc.message}"
            unfinished = {
                "unknown": errors["operations"]
            }  # not "none": the check fails (the note says how to look)
        moving = [op for op in pending if op.kind in UNFINISHED_OPERATIONS]
        if moving:
            op = moving[0]
            what = (
                " (a `voke dr restore` or a drill's copy: it makes a new instance)"
                if op.kind == "CLONE"
                else ""
            )
            project = settings.environment(settings.env).project
            unfinished = {
                "running": f"Cloud SQL {op.kind} on {op.target}{what}, {op.status.lower()} since "
                f"{op.started_at} (operation {op.name})",
                "operation": op.kind,
                "inspect": f"gcloud sql operations describe {op.name} --project {project}",
            }
    operations = [
        {"name": o.name, "kind": o.kind, "target": o.target, "status": o.status, "started_at": o.started_at}
        for o in pending
    ]
    # what Cloud SQL refuses here (the window of a replica, a denied backupRuns) is shown as
    # unknown with a note, and fails its check, rather than failing the whole report
    newest, backups = None, []
    try:
        newest = recovery.newest_backup(topo.primary)
        backups = recovery.backups(topo.primary)
    except VokeError as exc:
        errors["backups"] = f"could not read the backups of {topo.primary}: {exc.message}"
    window_earliest = window_latest = None
    try:
        window = recovery.recovery_window(topo.primary)
        window_earliest, window_latest = window.earliest, window.latest
    except VokeError as exc:
        errors["recoverable_window"] = (
            f"could not read the recoverable window of {topo.primary}: {exc.message}"
        )
    earliest, latest = parse_iso(window_earliest), parse_iso(window_latest)
    if store is None or runtime is None:
        from voketag_ops.workflows.cloud import CloudPlatform

        platform = CloudPlatform(settings)
        store, runtime = store or platform.store(), runtime or platform.runtime()
    connections = _connections(settings, store, runtime, record, errors)
    return {
        "initialized": True,
        "env": settings.env,
        "kind": "cloudsql",
        "checked_at": iso(now),
        "topology": record.as_dict() | {"summary": record.describe(), "shown_primary": topo.primary},
        "leader": leader,
        "standby": standby,
        "writable_nodes": writable,
        "split_brain": len(writable) > 1,
        "archive": {
            "failing": None if archive_failures is None else archive_failures > 0,
            "unknown_reason": (
                errors.get("monitoring")
                or "no archived or failed WAL segment in Cloud Monitoring for the last hour"
            )
            if archive_failures is None
            else None,
            "failed_count": archive_failures,
            "source": "cloudsql.googleapis.com/database/replication/log_archive_failure_count (1 h)",
        },
        "newest_backup": {"label": newest.id, "finished_at": newest.finished_at, "status": newest.status}
        if newest
        else None,
        "backups": [
            {"id": b.id, "status": b.status, "kind": b.kind, "finished_at": b.finished_at}
            for b in backups[:10]
        ],
        "recoverable_window": {
            "earliest": window_earliest,
            "latest": window_latest,
            "seconds": (latest - earliest).total_seconds() if earliest and latest else None,
        },
        "targets": {
            "rto_seconds": settings.dr.rto_seconds,
            "rpo_seconds": settings.dr.rpo_seconds,
            "pitr_retention_days": settings.dr.pitr_retention_days,
        },
        "last_drill": _last_drill(settings),
        # What `dr check` tells to run: `voke dr fence` and `voke dr backup` are local-only.
        "remedies": {
            "fence": "`gcloud sql instances patch {node} --activation-policy=NEVER`",
            "backup": f"`gcloud sql backups create --instance={topo.primary}`",
            "start": "start it with `gcloud sql instances patch {node} --activation-policy=ALWAYS`",
            "rebuild": None,
            "unanswering": None,
        },
        "unfinished_operation": unfinished,
        "connections": connections,
        "cloud_sql_operations": operations,  # all of them, a routine backup's too
        "operations_note": (
            "Cloud SQL's operations could not be listed: "
            f"`gcloud sql operations list --instance={topo.primary} --filter='NOT status:DONE'`"
            if "operations" in errors
            else None
        ),
        "notes": list(errors.values()),
        "errors": errors,
    }


NOT_PLAIN_HOST = "its host is not a plain host name or IP address (value not shown)"


def _connections(
    settings: Settings, store: SecretStore, runtime: ServiceRuntime, topo: Topology, errors: dict[str, str]
) -> dict[str, Any]:
    """Whether each connection secret's `current` version names the address of the primary
    TOPO records, read and compared as the repoint writes it (its `host`), and whether the
    version each service reading it serves (its revisions with traffic) does: a failover or
    failback stopped between its record and its repoint, or between the repoint's new
    versions and its redeploy, leaves the services on the old primary. Host and port only,
    never the value; a read Secret Manager or Cloud Run refuses goes to ERRORS
    (`connections`) and leaves that secret or service unknown."""
    env = settings.environment(settings.env)
    primary = topo.instances[topo.primary]
    refused: list[str] = []
    secrets: list[dict[str, Any]] = []
    services: list[dict[str, Any]] = []
    credentials: dict[tuple[str, int], dict[str, Any] | None] = {}

    def judge_version(entry: dict[str, Any], secret: str, version: int) -> bool:
        """ENTRY's host, port, matches, note for VERSION of SECRET (False: no database
        credential with a host, so no address to judge)."""
        if (secret, version) not in credentials:
            credentials[secret, version] = _credential(store, secret, version)
        credential = credentials[secret, version]
        if credential is None:
            entry["note"] = "not a database credential with a host (a repoint skips it)"
            return False
        entry["host"], entry["port"] = plain_host(credential["host"]), plain_port(credential.get("port"))
        if entry["host"] is None:  # a URI or DSN can carry a password: never shown, no primary's address
            entry.update(matches=False, note=NOT_PLAIN_HOST)
        elif primary.ip_address:
            entry["matches"] = entry["host"] == primary.ip_address
        else:
            entry["note"] = f"{primary.name} has no IP address to compare with (a repoint stops on it)"
        return True

    for secret, readers in connection_secrets(settings, env).items():
        entry: dict[str, Any] = {
            "secret": secret, "alias": "current", "version": None, "host": None, "port": None,
            "matches": None, "note": None,
        }  # fmt: skip
        secrets.append(entry)
        try:
            meta = store.get(secret)
        except NotFoundError:
            entry["note"] = "no such secret (a repoint skips it)"
            continue
        except VokeError as exc:
            refused.append(f"could not read {secret}: {exc.message}")
            continue
        entry["version"] = meta.aliases.get("current")
        if entry["version"] is None:
            entry["note"] = "no `current` version (a repoint skips it)"
            continue
        try:
            if (unreadable := unreadable_alias(store, meta)) is not None:
                raise unreadable
            if not judge_version(entry, secret, entry["version"]):
                continue
        except VokeError as exc:
            refused.append(f"could not read {secret} version {entry['version']}: {exc.message}")
            continue
        for service in readers:  # what each one serves: a repoint stopped before its redeploy
            unknown: dict[str, Any] = {
                "service": service, "revision": None, "secret": secret, "version": None, "host": None,
                "port": None, "matches": None, "note": None,
            }  # fmt: skip
            try:
                pins = runtime.live_pins(service, secret)
            except VokeError as exc:
                refused.append(f"could not read which version of {secret} {service} serves: {exc.message}")
                services.append(unknown)
                continue
            if not pins:
                services.append(unknown | {"note": "no revision takes traffic"})
            for revision, version in pins.items():
                served = unknown | {"revision": revision, "version": version}
                services.append(served)
                if not isinstance(version, int):
                    served["version"] = None
                    served["note"] = (
                        f"revision {revision} reads it as `latest`: which version its instances hold is unknown"
                        if version == "latest"
                        else f"revision {revision} reads no one version of it"
                    )
                    continue
                try:
                    judge_version(served, secret, version)
                except VokeError as exc:
                    refused.append(
                        f"could not read {secret} version {version} ({service} serves it): {exc.message}"
                    )
    if refused:
        errors["connections"] = "; ".join(refused)
    return {
        "primary": primary.name,
        "primary_address": primary.ip_address,
        # what finishes the repoint: the rerun of the operation that made PRIMARY the primary (it
        # repoints only, the database having moved); none while the record disagrees with Cloud SQL
        "resume": None
        if topo.problem
        else resume_command(settings, "failback" if topo.primary == env.instance else "failover"),
        "secrets": secrets,
        "services": services,
    }


def _connections_check(snap: dict[str, Any]) -> dict[str, Any]:
    """The `connections` check of a status SNAP: fails when a connection secret, or the version
    a service reading it serves, names another address than the recorded primary's, or cannot
    be read or compared (unknown)."""
    conn = snap["connections"]
    primary, address = conn["primary"], conn["primary_address"]

    def where(entry: dict[str, Any]) -> str:
        return f"{entry['host']}:{entry['port']}" if entry["port"] is not None else str(entry["host"])

    fix = (
        f"fix: `{conn['resume']}` (it repoints the services)"
        if conn["resume"]
        else "fix the topology first (the topology check)"
    )
    served = conn.get("services") or []
    problems = [
        f"{e['secret']} version {e['version']} (current) names {where(e)}, not the primary {primary} at "
        f"{address}: the services reading it connect there"
        if e["host"] is not None
        else f"{e['secret']} version {e['version']} (current): {e['note']}, not the primary {primary} at {address}"
        for e in conn["secrets"]
        if e["matches"] is False
    ]
    problems += [f"{e['secret']}: {e['note']}" for e in conn["secrets"] if e["host"] and e["matches"] is None]
    problems += [
        f"{e['service']} serves {e['secret']} version {e['version']} (revision {e['revision']}), which names "
        f"{where(e)}, not the primary {primary} at {address}: it connects there"
        if e["host"] is not None
        else f"{e['service']} serves {e['secret']} version {e['version']} (revision {e['revision']}): "
        f"{e['note']}, not the primary {primary} at {address}"
        for e in served
        if e["matches"] is False
    ]
    # (one that names the primary's address when the primary has none is the secret's problem above)
    problems += [
        f"{e['service']} ({e['secret']}): {e['note']}"
        for e in served
        if e["matches"] is None and e["host"] is None and e["note"]
    ]
    refused = (snap.get("errors") or {}).get("connections")
    if problems:
        message = "; ".join(problems) + f"; {fix}" + (f" ({refused})" if refused else "")
    elif refused:
        message = f"unknown: {refused}"
    else:
        named = [e["secret"] for e in conn["secrets"] if e["matches"]]
        serving = sorted({e["service"] for e in served if e["matches"]})
        message = (
            f"{', '.join(named)} name{'s' if len(named) == 1 else ''} the primary {primary} at {address}"
            + (
                f", and {', '.join(serving)} serve{'s' if len(serving) == 1 else ''} a version naming it"
                if serving
                else ""
            )
            if named
            else "no connection secret names a database host"
        )
    return {
        "name": "connections",
        "ok": not problems and not refused,
        "message": message,
        "value": [e["secret"] for e in conn["secrets"] if e["matches"] is False]
        + [e["service"] for e in served if e["matches"] is False]
        or None,
        "threshold": None,
    }


def _last_drill(settings: Settings) -> dict[str, Any] | None:
    """The newest cloud drill of this environment run from this machine (its journal)."""
    from types import SimpleNamespace

    from voketag_ops.workflows import drill
    from voketag_ops.workflows.cloud_drill import drills_home

    return drill.last_result(SimpleNamespace(home=drills_home(settings)))  # type: ignore[arg-type]


def check(
    settings: Settings, recovery: DatabaseRecovery, limits: Thresholds, *, now: datetime | None = None
) -> dict[str, Any]:
    """`status` judged against LIMITS; `ok` is False when any check fails (exit 1)."""
    now = now or datetime.now(timezone.utc)
    snap = status(settings, recovery, now=now)
    checks = [
        {"name": c.name, "ok": c.ok, "message": c.message, "value": c.value, "threshold": c.threshold}
        for c in judge(snap, limits, now=now)
    ]
    checks.insert(1, _connections_check(snap))  # (after unfinished_operation: what to finish first)
    for c in checks:  # a call Cloud SQL refused: say so, not "no backup" / "no window"
        refused = (snap.get("errors") or {}).get(
            {
                "backup_age": "backups",
                "pitr_window": "recoverable_window",
                "replication_lag": "monitoring",  # (archiving's message names it: unknown_reason)
                "replica_streaming": "replica",
            }.get(c["name"], "")
        )
        if refused:
            c["ok"], c["message"] = False, refused
    problem = (snap.get("topology") or {}).get("disagreement")
    if problem:  # the record voke acts on is wrong: failover, failback, restore would refuse (exit 5)
        checks.insert(
            0,
            {
                "name": "topology",
                "ok": False,
                "message": f"{problem['message']}; fix: {problem['hint']}"
                if problem.get("hint")
                else problem["message"],
                "value": None,
                "threshold": None,
            },
        )
    failed = [c for c in checks if not c["ok"]]
    _report_backup_age(recovery, snap, now)
    return {
        "ok": not failed,
        "checked_at": snap["checked_at"],
        "thresholds": {
            "max_backup_age_seconds": limits.max_backup_age_seconds,
            "max_lag_seconds": limits.max_lag_seconds,
            "min_pitr_window_seconds": limits.min_pitr_window_seconds,
        },
        "checks": checks,
        "failed": [c["name"] for c in failed],
        "status": snap,
    }


def _report_backup_age(recovery: Any, snap: dict[str, Any], now: datetime) -> None:
    """The newest backup's age as voke's metric, for the alert policy in terraform/ (best effort)."""
    monitoring = getattr(recovery, "monitoring", None)
    newest = snap.get("newest_backup") or {}
    finished = parse_iso(newest.get("finished_at"))
    if monitoring is None or finished is None:
        return
    from voketag_ops.adapters.gcp import catalog

    monitoring.write_quietly(
        catalog.BACKUP_AGE, (now - finished).total_seconds(), {"instance": snap["leader"]["name"]}
    )


# -- restore, failover, failback ---------------------------------------------------------------------
# Cloud SQL instance ids: lowercase letters, digits and hyphens, starting with a letter, at
# most 98 characters without the project (sqladmin v1beta4 reference, `instance` fields).
MAX_INSTANCE_ID = 98
INSTANCE_NAME = re.compile(rf"[a-z](?:[a-z0-9-]{{0,{MAX_INSTANCE_ID - 2}}}[a-z0-9])?")


def _refuse_drill_name(name: str, env: GcpEnvironment, *sources: str) -> None:
    """A restore may not take a name the drills' clean-up owns (`<instance>-drill-...`)."""
    from voketag_ops.workflows.cloud_drill import scratch_prefix

    for instance in (env.instance, *sources):
        if name.startswith(scratch_prefix(instance)):
            raise UsageError(
                f"--name {name!r}: names starting with {scratch_prefix(instance)!r} belong to the "
                "cloud drills' scratch instances; choose another name"
            )


@dataclass(frozen=True)
class CloudDrPorts:
    """What restore, failover and failback of one cloud environment work through."""

    recovery: DatabaseRecovery
    store: SecretStore
    runtime: ServiceRuntime


def ports_for(settings: Settings) -> CloudDrPorts:
    """The Cloud SQL, Secret Manager and Cloud Run adapters of the environment `settings.env`."""
    from voketag_ops.workflows.cloud import CloudPlatform

    platform = CloudPlatform(settings)
    return CloudDrPorts(platform.recovery(), platform.store(), platform.runtime())


def resume_command(settings: Settings, operation: str) -> str:
    """The rerun that finishes an interrupted `dr OPERATION` (failover, failback) of `settings.env`."""
    return f"voke --env {settings.env} dr {operation} --yes"


def _still_running(exc: StepTimeoutError, what: str, instance: str, resume: str) -> NeedsOperatorError:
    """An operation past voke's deadline still runs in Cloud SQL: not "nothing changed" (exit 4)
    but exit 7, naming the rerun that finishes it once it is DONE."""
    return NeedsOperatorError(
        f"{exc.message}; {what} continues in Cloud SQL",
        hint=f"wait until `gcloud sql operations list --instance {instance}` shows it DONE, then `{resume}`",
    )


def _in_doubt(exc: OutcomeUnknownError, resume: str) -> OutcomeUnknownError:
    """A promotion or switchover whose answer or operation voke lost: the rerun that finishes
    it (or makes it, if it never began) once Cloud SQL runs none of it any more."""
    return OutcomeUnknownError(exc.message, hint=f"{exc.hint}; once none is running, `{resume}`")


class _Steps:
    """Named, timed steps of one operation, for the report (the local DR step shape)."""

    def __init__(self, progress: Progress) -> None:
        self.progress = progress
        self.items: list[dict[str, Any]] = []
        self.reached: str | None = None  # the step begun last

    @contextmanager
    def run(self, name: str) -> Iterator[dict[str, Any]]:
        self.reached = name
        self.progress(name)
        started, t0 = iso(datetime.now(timezone.utc)), time.monotonic()
        info: dict[str, Any] = {}
        exit_code = 0
        try:
            yield info
        except BaseException as exc:
            info.setdefault("error", getattr(exc, "message", None) or type(exc).__name__)
            exit_code = exit_code_of(exc)
            raise
        finally:
            self.items.append(
                {
                    "name": name,
                    "ok": exit_code == 0,
                    "duration_seconds": round(time.monotonic() - t0, 3),
                    "detail": info,
                    "started_at": started,
                    "exit_code": exit_code,
                    # the Cloud SQL operation the step waited for until DONE (a call that failed
                    # names none: its error is the step's), as the research's "Operation name/status"
                    "commands": [{"operation": info["operation"], "status": "DONE"}]
                    if info.get("operation")
                    else [],
                }
            )


@contextmanager
def _resumable(
    settings: Settings, steps: _Steps, event: AuditedEvent, command: str, resume: str, instance: str
) -> Iterator[None]:
    """A Ctrl-C or SIGTERM (KeyboardInterrupt) in a started COMMAND of `settings.env`:
    Interrupted (exit 130) naming the step it stopped in, the steps done, and RESUME, which
    finishes it, as the local commands' `_resumable` does; EVENT records the step
    (`interrupted_at`) beside what the run did (`services`), and the message as the answer says
    it (`--env NAME` in the command named). The promotion or switchover goes on in Cloud SQL
    without voke: the hint then says to wait for its operation on INSTANCE first (a rerun
    meanwhile is refused)."""
    try:
        yield
    except KeyboardInterrupt:
        from voketag_ops import interrupts
        from voketag_ops.output import name_env

        reached = steps.reached or "its start"
        done = [item["name"] for item in steps.items if item["ok"]]
        event.details["interrupted_at"] = reached
        hint = f"`{resume}` finishes it (it does not repeat what is done)"
        if reached.startswith(("promote ", "switchover ")):
            hint = (
                f"Cloud SQL goes on with the operation: once `gcloud sql operations list --instance {instance}` "
                f"shows it DONE, {hint}"
            )
        raise Interrupted(
            f"{interrupts.stopped_by()}: `{name_env(f'voke dr {command}', settings.env)}` "
            f"stopped at '{reached}' "
            f"(done: {', '.join(done) or 'nothing yet'})",
            hint=hint,
        ) from None


def _audited(
    settings: Settings, home: Path, action: str, target: str, *, dry_run: bool, **details: Any
) -> Any:
    """The audit event of a real run, opened before its checks and its lock so that a refusal is
    a `failure` event too (as locally); a dry run writes none."""
    from voketag_ops.audit import audited_unless

    return audited_unless(dry_run, home, event_type=action, env=settings.env, target=target, details=details)


@contextmanager
def _details(event: AuditedEvent, **details: Any) -> Iterator[AuditedEvent]:
    """EVENT, opened before the checks, with the DETAILS they worked out, around the change."""
    event.details.update(details)
    yield event


def _find(recovery: DatabaseRecovery, name: str) -> DbInstanceInfo | None:
    try:
        return recovery.instance(name)
    except NotFoundError:
        return None


def _replica_name(env: GcpEnvironment, name: str) -> str:
    if not env.replica:
        raise ConfigError(f"environment {name!r} names no replica (environments.{name}.replica)")
    return env.replica


def _op(op: Any) -> dict[str, Any]:
    return asdict(op)


# -- restore ----------------------------------------------------------------------------------------
def restore(
    settings: Settings,
    recovery: DatabaseRecovery,
    *,
    home: Path,
    to: str,
    name: str | None = None,
    dry_run: bool = False,
    progress: Progress = _quiet,
    now: datetime | None = None,
) -> dict[str, Any]:
    """Point-in-time restore of the (recorded) primary into a NEW Cloud SQL instance
    (`instances.clone` with `pointInTime`). A target outside `getLatestRecoveryTime`'s
    window, an existing instance of that name, or the primary's or replica's own name is
    refused first (a real run's refusal is on record: its event opens before the checks)."""
    env = settings.environment(settings.env)
    now = now or datetime.now(timezone.utc)
    target = point_in_time(to, now=now)
    # (until the default name is known, the event names the instance restored)
    with _audited(settings, home, "dr.restore", name or env.instance, dry_run=dry_run) as event:
        return _restore(
            settings, recovery, event, target=target, name=name, now=now, dry_run=dry_run, progress=progress
        )


@one_at_a_time("dr restore")
def _restore(
    settings: Settings,
    recovery: DatabaseRecovery,
    event: AuditedEvent,
    *,
    target: datetime,
    name: str | None,
    now: datetime,
    dry_run: bool,
    progress: Progress,
) -> dict[str, Any]:
    from voketag_ops.workflows import cloud_topology

    env = settings.environment(settings.env)
    if name is not None:
        _refuse_drill_name(name, env)
    source = cloud_topology.read(settings, recovery).primary
    name = name or f"{source}-pitr-{target:%Y%m%d-%H%M%S}"
    event.target = name
    if not INSTANCE_NAME.fullmatch(name):
        raise UsageError(
            f"--name {name!r}: a Cloud SQL instance id is lowercase letters, digits and hyphens, "
            f"starts with a letter, at most {MAX_INSTANCE_ID} characters"
        )
    _refuse_drill_name(name, env, source)
    if name in (env.instance, env.replica):
        raise UsageError(
            f"--name {name!r} is an existing instance of {settings.env}; a restore makes a new one"
        )
    if target > now:
        raise PreconditionError(f"target {iso(target)} is in the future (now {iso(now)})")
    window = recovery.recovery_window(source)
    earliest, latest = parse_iso(window.earliest), parse_iso(window.latest)
    if earliest is None or latest is None:
        raise PreconditionError(
            f"Cloud SQL reports no recoverable window for {source}; is point-in-time recovery on?"
        )
    span = f"the recoverable window {window.earliest} .. {window.latest} of {source}"
    if not earliest <= target <= latest:
        side = "before" if target < earliest else "after"
        raise PreconditionError(f"target {iso(target)} is {side} {span}; nothing was changed")
    if _find(recovery, name) is not None:
        raise PreconditionError(
            f"an instance named {name!r} exists; pick another --name (a restore never overwrites)"
        )
    labels = cloud_topology.restored_labels(settings.env, source=source, target=target)
    plan = [
        f"clone {source} at {iso(target)} into the new instance {name} (instances.clone, pointInTime)",
        "poll the clone operation until DONE and check its error",
        f"label {name} as a restore, not the primary ({cloud_topology.ROLE_LABEL}={cloud_topology.RESTORED}; "
        f"the clone copies {source}'s labels)",
        f"check {name} is RUNNABLE and report its address",
    ]
    base: dict[str, Any] = {"kind": "cloudsql", "env": settings.env, "source": source, "name": name}
    base |= {"target": iso(target), "window": {"earliest": window.earliest, "latest": window.latest}}
    if dry_run:
        return base | {"dry_run": True, "plan": plan}
    t0 = time.monotonic()
    with _details(event, source=source, point_in_time=iso(target)):
        progress(f"cloning {source} at {iso(target)} into {name}")
        try:
            op = recovery.clone_to_point_in_time(iso(target), name, source)
        except StepTimeoutError as exc:
            raise NeedsOperatorError(
                f"{exc.message}; the clone continues in Cloud SQL",
                hint=f"wait for it, then `gcloud sql instances describe {name}`; "
                f"or delete it: gcloud sql instances delete {name}",
            ) from None
        except OutcomeUnknownError as exc:
            raise OutcomeUnknownError(
                exc.message,
                hint=f"{exc.hint}; if it made {name}, inspect it (`gcloud sql instances describe {name}`) "
                f"or delete it: gcloud sql instances delete {name}",
            ) from None
        except BackendError as exc:
            left = _leftover(recovery, name)
            if left is not None:
                raise NeedsOperatorError(
                    f"{exc.message}; it left the instance {name} ({left.state})",
                    hint=f"inspect it, then delete it: gcloud sql instances delete {name}",
                ) from None
            raise
        except KeyboardInterrupt:
            left_by = _clone_interrupted(settings, recovery, event, source=source, name=name, labels=labels)
            if left_by is None:
                raise
            raise left_by from None
        _label_restored(settings, recovery, name, labels, source=source)
        info = recovery.instance(name)
        event.details.update(operation=op.name, state=info.state)
        if info.state != "RUNNABLE":
            raise NeedsOperatorError(
                f"the clone finished but {name} is {info.state}, not RUNNABLE",
                hint=f"gcloud sql instances describe {name}",
            )
    return base | {
        "dry_run": False,
        "operation": _op(op),
        "instance": {
            "name": info.name,
            "state": info.state,
            "region": info.region,
            "ip_address": info.ip_address,
            "role": info.role,
        },
        "labels": {k: v for k, v in labels.items() if v is not None},
        "stop_point": None,  # Cloud SQL does not report it; a target it cannot reach fails the operation
        "duration_seconds": round(time.monotonic() - t0, 3),
        "next": f"inspect it at {info.ip_address or 'its private IP'}; delete it when done: "
        f"gcloud sql instances delete {name}",
    }


def _label_restored(
    settings: Settings,
    recovery: DatabaseRecovery,
    name: str,
    labels: dict[str, str | None],
    *,
    source: str,
) -> None:
    """Give the clone NAME the LABELS of a restored instance: until then it carries SOURCE's,
    voke-role=primary included, and whatever selects instances by label takes it for the
    primary. A refusal or an interrupt leaves it so: exit 7 naming the gcloud command."""
    from voketag_ops import interrupts
    from voketag_ops.workflows import cloud_topology

    cloudsql: Any = recovery  # CloudSqlRecovery
    why: str | None = None
    try:
        cloudsql.set_labels(name, labels)
    except VokeError as exc:
        why = exc.message
    except KeyboardInterrupt:
        why = interrupts.stopped_by()
    if why is None:
        return
    project = settings.environment(settings.env).project
    raise NeedsOperatorError(
        f"the restore made {name}, but could not label it as a restore ({why}): it may still carry "
        f"{source}'s labels ({cloud_topology.ROLE_LABEL}=primary among them), so a selection by label "
        "takes it for the primary",
        hint=f"label it: {cloud_topology.patch_command(name, project, labels)}; "
        f"or delete it: gcloud sql instances delete {name} --project {project}",
    ) from None


def _clone_interrupted(
    settings: Settings,
    recovery: DatabaseRecovery,
    event: AuditedEvent,
    *,
    source: str,
    name: str,
    labels: dict[str, str | None],
) -> NeedsOperatorError | None:
    """A Ctrl-C or SIGTERM while the clone of SOURCE into NAME was asked for or polled: Cloud
    SQL goes on with a clone it accepted, and makes a billed instance. Looked up (one more
    signal meanwhile is held; the one after it stops the look-up): the CLONE operation under
    way on SOURCE, or NAME made already, is exit 7 naming them and how to inspect, label (LABELS)
    or delete NAME, as the drills' Ctrl-C mid-clone; so is a look-up that fails (it may run). None when
    neither is there: nothing was started, the interrupt stays an interrupt (exit 130). EVENT
    records the operation (`operation`) and where the run stopped (`interrupted_at`)."""
    from voketag_ops import interrupts
    from voketag_ops.output import name_env

    op: DbOperationInfo | None = None
    left: DbInstanceInfo | None = None
    unknown: str | None = None
    with interrupts.Held(give_way_after=1):
        try:
            lister = getattr(recovery, "pending_operations", None)
            ops = lister(source) if lister is not None else []
            op = next((o for o in ops if o.kind == "CLONE"), None)
            left = _find(recovery, name)
        except VokeError as exc:
            unknown = exc.message
        except KeyboardInterrupt:
            unknown = "the look-up was interrupted too"
    if op is None and left is None and unknown is None:
        return None
    event.details.update(interrupted_at=f"clone {source} into {name}", operation=op.name if op else None)
    project = settings.environment(settings.env).project
    from voketag_ops.workflows import cloud_topology

    # (a clone finished without voke carries SOURCE's labels, voke-role=primary among them)
    inspect = f"inspect it (`gcloud sql instances describe {name} --project {project}`) and label it as a "
    inspect += f"restore (`{cloud_topology.patch_command(name, project, labels)}`), or delete it: "
    inspect += f"gcloud sql instances delete {name} --project {project}"
    restore = name_env("voke dr restore", settings.env)
    stopped = f"{interrupts.stopped_by()}: `{restore}` stopped while cloning {source} into {name}"
    if op is not None:
        return NeedsOperatorError(
            f"{stopped}; the clone continues in Cloud SQL (operation {op.name}) and makes the instance "
            f"{name}, which is billed",
            hint=f"`gcloud sql operations describe {op.name} --project {project}` shows when it is DONE; "
            f"then {inspect}",
        )
    if left is not None:
        return NeedsOperatorError(
            f"{stopped}; the clone made the instance {name} ({left.state}), which is billed",
            hint=inspect,
        )
    return NeedsOperatorError(
        f"{stopped}; whether Cloud SQL started the clone is unknown ({unknown})",
        hint=f"`gcloud sql operations list --instance {source} --project {project}` shows whether it "
        f"runs; if it made {name}, {inspect}",
    )


def _leftover(recovery: DatabaseRecovery, name: str) -> DbInstanceInfo | None:
    """The instance a failed clone may have left behind (None if none, or unknown)."""
    try:
        return _find(recovery, name)
    except VokeError:
        return None


# -- repointing the services ----------------------------------------------------------------------------
def connection_secrets(settings: Settings, env: GcpEnvironment) -> dict[str, tuple[str, ...]]:
    """Each database connection secret -> the environment's services that read it."""
    out: dict[str, tuple[str, ...]] = {}
    for user in settings.rotation.db_users.values():
        services = env.serving(user.services)
        out[user.secret] = tuple(dict.fromkeys((*out.get(user.secret, ()), *services)))
    return out


# What a repoint reads: both versions it rewrites must be enabled.
_REPOINTED = {"current": READABLE, "previous": READABLE}


def refuse_unrepointable(store: Any, secrets: Iterable[str]) -> None:
    """PreconditionError (exit 5) naming the version to make readable when a connection
    secret's `current` or `previous` is disabled or destroyed: asked before the database
    moves, since the repoint after it could not read them."""
    for secret in secrets:
        try:
            meta = store.get(secret)
        except NotFoundError:
            continue
        if (unreadable := unreadable_alias(store, meta, _REPOINTED)) is not None:
            raise PreconditionError(
                f"{unreadable.message}: the services could not be repointed after the promotion; nothing was changed",
                hint=f"{unreadable.hint}, then run this again",
            )


def _credential(store: Any, secret: str, version: int) -> dict[str, Any] | None:
    """VERSION of SECRET as a database credential whose `host` the repoint rewrites, or None
    when it is no such credential (the repoint leaves it alone)."""
    try:
        payload = json.loads(store.access(secret, version))
    except ValueError:
        return None
    return payload if isinstance(payload, dict) and "host" in payload else None


def repoint_services(
    ports: CloudDrPorts,
    secrets: dict[str, tuple[str, ...]],
    host: str,
    progress: Progress = _quiet,
    *,
    done: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Give each connection secret's `current` and `previous` a new version whose `host` is
    HOST (only where it differs, so a rerun adds nothing), move the aliases in one
    etag-guarded update, then redeploy the services pinned to the new `current`. DONE, if
    given, is the report (`repoint_report`) filled in as it goes (`made`, each version as soon
    as it is added; a secret once its aliases moved; `redeployed` once the deploy ended, a
    failed one naming the services that serve the new `current` all the same),
    so a repoint that fails part-way still says which versions it made."""
    store = ports.store
    report = done if done is not None else {}
    report.update(repoint_report(host=host))
    repointed: list[dict[str, Any]] = report["repointed"]
    made: list[dict[str, Any]] = report["made"]
    skipped: list[str] = report["skipped"]
    deploy: dict[str, tuple[str, int]] = {}
    for secret, services in secrets.items():
        try:
            meta = store.get(secret)
        except NotFoundError:
            skipped.append(f"{secret}: no such secret")
            continue
        if (unreadable := unreadable_alias(store, meta, _REPOINTED)) is not None:
            raise unreadable  # (disabled meanwhile: the failover's pre-check asked)
        renumbered: dict[int, int] = {}
        aliases: dict[str, int | None] = {}
        already: dict[str, int | None] = {}
        for alias in REPOINT_ORDER:
            number = meta.aliases.get(alias)
            if number is None:
                continue
            if number not in renumbered:
                payload = _credential(store, secret, number)
                if payload is None:
                    skipped.append(f"{secret} {alias}: not a database credential with a host")
                    continue
                if payload["host"] == host:
                    already[alias] = number
                    continue
                payload["host"] = host
                progress(f"new version of {secret} ({alias}) naming {host}")
                renumbered[number] = store.add_version(secret, json.dumps(payload).encode()).version
                made.append({"secret": secret, "alias": alias, "version": renumbered[number]})
            aliases[alias] = renumbered[number]
        if aliases:
            store.update(secret, etag=store.get(secret).etag, aliases=aliases)
            repointed.append({"secret": secret, "versions": aliases, "host": host, "port": None})
        if already:
            report["found"].append({"secret": secret, "versions": already, "host": host, "port": None})
        current = aliases.get("current") or meta.aliases.get("current")
        if current is not None:
            for service in services:
                deploy[service] = (secret, int(current))
    if deploy:
        progress(f"redeploying {', '.join(sorted(deploy))}")
        deploy_recorded(ports.runtime, deploy, report)
    return report


def _check_services(
    ports: CloudDrPorts, services: list[str], steps: _Steps, *, resume: str
) -> list[dict[str, Any]]:
    """The repointed SERVICES' health; exit 7 naming RESUME (which finishes the operation) if one is sick."""
    with steps.run("check the services are healthy") as info:
        health: list[dict[str, Any]] = [{"name": s, "healthy": ports.runtime.health(s)} for s in services]
        info["health"] = health
        sick = [str(h["name"]) for h in health if not h["healthy"]]
        if sick:
            raise NeedsOperatorError(  # (the CLI puts `--env NAME` into each `voke ...` it names)
                f"{', '.join(sick)} not healthy after being repointed",
                hint=f"check their logs (`voke dr status` shows the database side); once they serve: {resume}",
            )
    return health


def _repoint_or_stop(
    ports: CloudDrPorts,
    secrets: dict[str, tuple[str, ...]],
    primary: DbInstanceInfo,
    steps: _Steps,
    resume: str,
    event: AuditedEvent,
) -> dict[str, Any]:
    """Repoint the services at PRIMARY; any failure here needs a person (the database already
    moved). EVENT records what the repoint did (`services`, as the local commands do) however
    it ends, so a run failing from here on still says which secret versions it made."""
    with steps.run(f"repoint services to {primary.name}") as info:
        if not primary.ip_address:
            raise NeedsOperatorError(
                f"{primary.name} has no IP address to repoint the services to",
                hint=f"give it one, then `{resume}`",
            )
        moved: dict[str, Any] = {}
        try:
            repoint_services(ports, secrets, primary.ip_address, progress=steps.progress, done=moved)
        except VokeError as exc:
            raise NeedsOperatorError(
                f"{primary.name} is the primary but the services were not repointed: {exc.message}",
                hint=f"{exc.hint or 'fix the cause'}, then `{resume}` (it does not repeat what is done)",
            ) from None
        finally:
            event.details["services"] = as_audited(moved)
        info.update(moved)
    return moved


def _record_or_stop(
    settings: Settings,
    recovery: DatabaseRecovery,
    primary: str,
    operation: str,
    other_role: str,
    steps: _Steps,
    resume: str,
) -> None:
    """Record PRIMARY as the environment's primary (labels); the database already moved,
    so a failure here needs a person (and a rerun finishes it)."""
    from voketag_ops.workflows import cloud_topology

    with steps.run(f"record {primary} as the primary") as info:
        try:
            info.update(
                cloud_topology.record(settings, recovery, primary, operation=operation, other_role=other_role)
            )
        except VokeError as exc:
            raise NeedsOperatorError(
                f"{primary} is the primary but it was not recorded: {exc.message}",
                hint=f"fix the cause, then `{resume}` (it does not repeat what is done)",
            ) from None


def _require_primary(recovery: DatabaseRecovery, name: str, steps: _Steps) -> DbInstanceInfo:
    with steps.run(f"check {name} is a RUNNABLE primary") as info:
        inst = recovery.instance(name)
        info.update(role=inst.role, state=inst.state)
        if inst.role != "primary" or inst.state != "RUNNABLE":
            raise NeedsOperatorError(
                f"{name} is a {inst.state} {inst.role} after the operation, not a RUNNABLE primary",
                hint=f"gcloud sql instances describe {name}",
            )
    return inst


def failover(
    settings: Settings,
    ports: CloudDrPorts,
    *,
    home: Path,
    dry_run: bool = False,
    progress: Progress = _quiet,
) -> dict[str, Any]:
    """Promote the cross-region replica: `promoteReplica?failover=true` when it is the
    primary's designated DR replica (the old primary comes back as its replica), else a
    plain promotion that leaves the old primary an independent primary (split-brain risk,
    reported). Then repoint and redeploy the services and check them. A rerun after the
    promotion skips it and finishes the rest. A real run's refusal is on record too."""
    env = settings.environment(settings.env)
    replica = _replica_name(env, settings.env)
    with _audited(settings, home, "dr.failover", replica, dry_run=dry_run, old_primary=env.instance) as event:
        return _failover(settings, ports, event, dry_run=dry_run, progress=progress)


@one_at_a_time("dr failover")
def _failover(
    settings: Settings, ports: CloudDrPorts, event: AuditedEvent, *, dry_run: bool, progress: Progress
) -> dict[str, Any]:
    env = settings.environment(settings.env)
    recovery = ports.recovery
    replica_name = _replica_name(env, settings.env)
    replica = recovery.instance(replica_name)
    old = _find(recovery, env.instance)
    resumed = replica.role == "primary"
    if not resumed:
        if replica.primary != env.instance:
            raise PreconditionError(
                f"{replica_name} replicates from {replica.primary}, not from {env.instance}; nothing was changed"
            )
        if replica.state != "RUNNABLE":
            raise PreconditionError(
                f"{replica_name} is {replica.state}, not RUNNABLE, and cannot be promoted; nothing was changed"
            )
    dr_failover = (
        not resumed
        and old is not None
        and old.dr_replica == replica_name
        and old.edition == "ENTERPRISE_PLUS"
    )
    secrets = connection_secrets(settings, env)
    refuse_if_rotating(ports.store, secrets, resume=f"voke --env {settings.env} rotate resume")
    refuse_unrepointable(ports.store, secrets)
    mode = "resume" if resumed else ("replica-failover" if dr_failover else "promote")
    resume = resume_command(settings, "failover")
    if dry_run:
        plan = [
            f"{replica_name} is already the primary: skip the promotion"
            if resumed
            else f"promoteReplica {replica_name} with failover=true ({env.instance} comes back as its replica)"
            if dr_failover
            else f"promoteReplica {replica_name} (plain: {env.instance} stays an independent primary, "
            "split-brain risk)",
            f"check {replica_name} is a RUNNABLE primary",
            f"record it as the primary of {settings.env} (labels voke-role=primary on {replica_name}, "
            f"replica or fenced on {env.instance})",
            "give each connection secret a new version naming the new primary's address; redeploy "
            + (", ".join(sorted({s for v in secrets.values() for s in v})) or "no service"),
            "check the services are healthy",
        ]
        return {
            "dry_run": True,
            "kind": "cloudsql",
            "mode": mode,
            "old_leader": env.instance,
            "new_leader": replica_name,
            "plan": plan,
        }
    t0 = time.monotonic()
    steps = _Steps(progress)
    operation = None
    # What the replica had replayed when promoted, as the local failover names it: the Admin API
    # does not say (no LSN, no last replayed commit), so not known rather than made up.
    replayed: dict[str, Any] = {"replayed_lsn": None, "last_replayed_commit": None}
    with (
        _details(event, mode=mode, **replayed),
        _resumable(settings, steps, event, "failover", resume, replica_name),
    ):
        if not resumed:
            with steps.run(f"promote {replica_name}" + (" (failover=true)" if dr_failover else "")) as info:
                try:
                    op = recovery.promote_replica(replica_name, failover=dr_failover)
                except StepTimeoutError as exc:
                    raise _still_running(exc, "the promotion", replica_name, resume) from None
                except OutcomeUnknownError as exc:
                    raise _in_doubt(exc, resume) from None
                except BackendError as exc:
                    after = _leftover(recovery, replica_name)
                    if after is not None and after.role == "primary":
                        raise NeedsOperatorError(
                            f"{exc.message}; yet {replica_name} is now a primary", hint=f"then `{resume}`"
                        ) from None
                    raise
                operation = _op(op)
                info["operation"] = op.name
        new = _require_primary(recovery, replica_name, steps)
        old = _leftover(recovery, env.instance)  # the promotion is done: unknown is not a failure
        follows = old is not None and old.primary == new.name
        _record_or_stop(
            settings, recovery, new.name, "failover", "replica" if follows else "fenced", steps, resume
        )
        event.details["operation"] = operation and operation["name"]
        moved = _repoint_or_stop(ports, secrets, new, steps, resume, event)
        health = _check_services(ports, moved["redeployed"], steps, resume=resume)
    writable = [new.name] + ([old.name] if old is not None and old.role == "primary" else [])
    split = len(writable) > 1
    warnings = []
    if split:
        assert old is not None
        warnings.append(
            f"split-brain risk: {old.name} ({old.state}) is an independent primary and takes writes "
            f"if anything still reaches it; stop it: gcloud sql instances patch {old.name} "
            "--activation-policy=NEVER. Failing back needs it rebuilt as a replica of "
            f"{new.name} (its writes since the promotion are not on {new.name})"
        )
    return {
        "dry_run": False,
        "kind": "cloudsql",
        "env": settings.env,
        "mode": mode,
        "resumed": resumed,
        "old_leader": env.instance,
        "new_leader": new.name,
        "operation": operation,
        "promoted_at": operation["finished_at"] if operation else None,
        **replayed,
        "new_primary": {
            "name": new.name,
            "state": new.state,
            "region": new.region,
            "ip_address": new.ip_address,
        },
        "old_primary": {
            "name": old.name,
            "role": old.role,
            "state": old.state,
            "replicates_from": old.primary,
        }
        if old is not None
        else None,
        "split_brain_risk": split,
        "writable_nodes": writable,
        "services": moved,  # the repoint, as the local commands report it
        "health": health,
        "steps": steps.items,
        "warnings": warnings,
        "duration_seconds": round(time.monotonic() - t0, 3),
        "next": f"`voke --env {settings.env} dr failback --yes` switches back to {env.instance}"
        if follows
        else f"rebuild {env.instance} as a replica of {new.name} before failing back",
    }


def failback(
    settings: Settings,
    ports: CloudDrPorts,
    *,
    home: Path,
    dry_run: bool = False,
    progress: Progress = _quiet,
) -> dict[str, Any]:
    """Back to the configured topology (`instance` primary, `replica` its replica) by a
    planned `switchover` to `instance`, which must be the current primary's DR replica
    (Enterprise Plus); then repoint the services and check them. When both are primaries
    (after a plain promotion) nothing is switched: that needs a rebuilt replica (exit 5).
    A real run's refusal is on record too."""
    env = settings.environment(settings.env)
    replica = _replica_name(env, settings.env)
    with _audited(
        settings, home, "dr.failback", env.instance, dry_run=dry_run, from_primary=replica
    ) as event:
        return _failback(settings, ports, event, dry_run=dry_run, progress=progress)


@one_at_a_time("dr failback")
def _failback(
    settings: Settings, ports: CloudDrPorts, event: AuditedEvent, *, dry_run: bool, progress: Progress
) -> dict[str, Any]:
    env = settings.environment(settings.env)
    recovery = ports.recovery
    replica_name = _replica_name(env, settings.env)
    home_inst = recovery.instance(env.instance)
    other = recovery.instance(replica_name)
    if home_inst.role == "primary" and other.role == "primary":
        raise PreconditionError(
            f"{env.instance} and {replica_name} are both primaries (a plain promotion left {env.instance} "
            f"independent, and their data differ since); a switchover needs {env.instance} to be a "
            f"replica of {replica_name}; nothing was changed",
            hint=f"create a new replica of {replica_name} in {env.region}, designate it as the DR replica, "
            "name it as `instance` in voke.toml, then run failback",
        )
    if home_inst.role == "primary":
        switch = False
    elif home_inst.primary == replica_name and other.role == "primary":
        if other.edition != "ENTERPRISE_PLUS" or other.dr_replica != env.instance:
            raise PreconditionError(
                f"a switchover to {env.instance} needs an Enterprise Plus {replica_name} whose DR replica "
                f"is {env.instance} (it is {other.edition}, DR replica {other.dr_replica}); nothing was changed",
                hint=f"gcloud sql instances patch {replica_name} "
                f"--failover-dr-replica-name={env.project}:{env.instance}",
            )
        if home_inst.state != "RUNNABLE":
            raise PreconditionError(f"{env.instance} is {home_inst.state}, not RUNNABLE; nothing was changed")
        switch = True
    else:
        raise PreconditionError(
            f"unexpected topology: {env.instance} is a {home_inst.role} of {home_inst.primary}, "
            f"{replica_name} a {other.role}; nothing was changed (`voke dr status` shows it)"
        )
    secrets = connection_secrets(settings, env)
    refuse_if_rotating(ports.store, secrets, resume=f"voke --env {settings.env} rotate resume")
    from voketag_ops.workflows import cloud_topology

    topo = cloud_topology.read(settings, recovery, strict=False)
    if sum(1 for role in topo.roles.values() if role == "primary") > 1 and topo.problem:
        # both instances labelled the primary: which one the services follow is unknown, so a
        # failback does not pick one (a strict read refuses the same record)
        raise PreconditionError(topo.problem["message"], hint=topo.problem["hint"] or None)
    recorded = topo.recorded and (topo.moved or topo.roles.get(replica_name) != "replica")
    resume = resume_command(settings, "failback")
    if dry_run:
        plan = [
            f"switchover to {env.instance} ({replica_name} becomes its replica; Cloud SQL lets it catch up first)"
            if switch
            else f"{env.instance} is already the primary: nothing to switch",
            f"check {env.instance} is a RUNNABLE primary",
            f"record {env.instance} as the primary of {settings.env} again (labels)",
            "repoint the services' connection secret at its address; redeploy them",
            "check the services are healthy",
        ]
        return {"dry_run": True, "kind": "cloudsql", "leader": env.instance, "switch": switch, "plan": plan}
    t0 = time.monotonic()
    steps = _Steps(progress)
    operation = None
    with _details(event, switch=switch), _resumable(settings, steps, event, "failback", resume, env.instance):
        if switch:
            with steps.run(f"switchover to {env.instance}") as info:
                try:
                    op = recovery.switchover(env.instance)
                except StepTimeoutError as exc:
                    raise _still_running(exc, "the switchover", env.instance, resume) from None
                except OutcomeUnknownError as exc:
                    raise _in_doubt(exc, resume) from None
                operation = _op(op)
                info["operation"] = op.name
        leader = _require_primary(recovery, env.instance, steps)
        if switch or recorded:
            _record_or_stop(settings, recovery, env.instance, "failback", "replica", steps, resume)
        event.details["operation"] = operation and operation["name"]
        moved = _repoint_or_stop(ports, secrets, leader, steps, resume, event)
        health = _check_services(ports, moved["redeployed"], steps, resume=resume)
    standby = _leftover(recovery, replica_name)
    return {
        "dry_run": False,
        "kind": "cloudsql",
        "env": settings.env,
        "switched": switch,
        "leader": leader.name,
        "standby": replica_name,
        "standby_replicates_from": standby.primary if standby else None,
        "rebuilt": {"method": "switchover" if switch else None},
        "operation": operation,
        "services": moved,  # the repoint, as the local commands report it
        "health": health,
        "steps": steps.items,
        "duration_seconds": round(time.monotonic() - t0, 3),
    }
