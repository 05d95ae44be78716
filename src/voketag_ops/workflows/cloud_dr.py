"""`voke dr status` / `voke dr check` on a Google Cloud environment, over the
DatabaseRecovery port (Cloud SQL Admin + Monitoring).

The snapshot has the shape of the local one (`leader`, `standby`, `archive`,
`newest_backup`, `recoverable_window`, `writable_nodes`, `split_brain`), so the same
pure judge (core/dr_checks.py) decides the checks and the same renderers print them.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

from voketag_ops.core.dr_checks import Thresholds, judge, parse_iso

if TYPE_CHECKING:
    from voketag_ops.config import Settings
    from voketag_ops.ports import DatabaseRecovery


def _iso(value: datetime) -> str:
    return value.astimezone(timezone.utc).isoformat().replace("+00:00", "Z")


def recovery_for(settings: Settings) -> DatabaseRecovery:
    """The DatabaseRecovery of the cloud environment `settings.env`."""
    from voketag_ops.workflows.cloud import CloudPlatform

    return CloudPlatform(settings).recovery()


def status(settings: Settings, recovery: DatabaseRecovery, *, now: datetime | None = None) -> dict[str, Any]:
    """Roles, replication lag (Monitoring), newest SUCCESSFUL backup, PITR window, archiving."""
    env = settings.environment(settings.env)
    now = now or datetime.now(timezone.utc)
    primary = recovery.instance()
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
    standby = None
    archive_failures = None
    if env.replica:
        replica = recovery.instance(env.replica)
        repl = recovery.replication(env.replica)
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
            and replica.state == "RUNNABLE",
            "lag_seconds": repl.lag_seconds,
            "lag_bytes": repl.lag_bytes,
        }
        if replica.role == "primary" and replica.state == "RUNNABLE":
            writable.append(replica.name)
    newest = recovery.newest_backup()
    backups = recovery.backups()
    window = recovery.recovery_window()
    earliest, latest = parse_iso(window.earliest), parse_iso(window.latest)
    return {
        "initialized": True,
        "env": settings.env,
        "kind": "cloudsql",
        "checked_at": _iso(now),
        "leader": leader,
        "standby": standby,
        "writable_nodes": writable,
        "split_brain": len(writable) > 1,
        "archive": {
            "failing": bool(archive_failures),
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
            "earliest": window.earliest,
            "latest": window.latest,
            "seconds": (latest - earliest).total_seconds() if earliest and latest else None,
        },
        "targets": {
            "rto_seconds": settings.dr.rto_seconds,
            "rpo_seconds": settings.dr.rpo_seconds,
            "pitr_retention_days": settings.dr.pitr_retention_days,
        },
    }


def thresholds(
    settings: Settings,
    *,
    max_backup_age: float | None = None,
    max_lag: float | None = None,
    min_pitr_window: float | None = None,
) -> Thresholds:
    env = settings.environment(settings.env)
    return Thresholds(
        max_backup_age_seconds=max_backup_age
        if max_backup_age is not None
        else settings.dr.max_backup_age_hours * 3600,
        max_lag_seconds=max_lag if max_lag is not None else settings.dr.max_lag_seconds,
        min_pitr_window_seconds=min_pitr_window
        if min_pitr_window is not None
        else settings.dr.min_pitr_window_hours * 3600,
        archive_stale_seconds=float("inf"),  # Cloud SQL archives by itself; failures come from the metric
        replica_expected=env.replica is not None,
    )


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
