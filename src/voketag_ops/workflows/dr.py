"""`voke dr` use cases on the local environment: status, checks, backups, restore, failover,
failback, fencing. Each returns a plain report; the CLI renders it.

State-changing use cases take `dry_run` (return the plan, change nothing) and write an
audit event (`dr.backup`, `dr.restore`, `dr.failover`, ...) through `voketag_ops.audit`.
"""

from __future__ import annotations

import itertools
import json
import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from voketag_ops.clock import measuring
from voketag_ops.core.dr_checks import Thresholds, judge, parse_duration, parse_point_in_time
from voketag_ops.core.times import iso
from voketag_ops.errors import (
    BackendError,
    ConfigError,
    Interrupted,
    NeedsOperatorError,
    PreconditionError,
    RolledBackError,
    RotationFailure,
    UsageError,
    VokeError,
    refused_file,
)
from voketag_ops.locks import PRUNE
from voketag_ops.logs import get_logger

if TYPE_CHECKING:
    from voketag_ops.adapters.local.environment import LocalEnvironment
    from voketag_ops.adapters.local.postgres import PgNode
    from voketag_ops.config import Settings
    from voketag_ops.core.audit import AuditEntry

log = get_logger(__name__)
Progress = Callable[[str], None]


def _quiet(_msg: str) -> None:
    return None


def require_local(settings: Settings, *, hint: str | None = None) -> None:
    """Refuse (exit 3) a cloud environment: the one check of every local-only command."""
    if settings.env != "local":
        settings.environment(settings.env)  # an unknown or invalid environment is named as such
        raise ConfigError(
            f"this command drives the local environment only; {settings.env!r} is a cloud environment, "
            "where `voke dr status|check|restore|failover|failback` work (README: Google Cloud environments)",
            hint=hint,
        )


def _now() -> datetime:
    from voketag_ops.adapters.local.dr import utcnow

    return utcnow()


# -- audit ------------------------------------------------------------------------------------------
@contextmanager
def recorded(env: LocalEnvironment, action: str, target: str) -> Iterator[dict[str, Any]]:
    """Write an audit event (who, what, target, result, duration) around a DR operation."""
    from voketag_ops.audit import audited

    with audited(env.home, event_type=action, env="local", target=target) as event:
        yield event.details


def recorded_unless(dry_run: bool, env: LocalEnvironment, action: str, target: str) -> Any:
    """`recorded`, or nothing for a dry run (which writes no event)."""
    return nullcontext({}) if dry_run else recorded(env, action, target)


# -- status and checks ----------------------------------------------------------------------------------
def status(settings: Settings, env: LocalEnvironment) -> dict[str, Any]:
    from voketag_ops.adapters.local import dr

    require_local(settings)
    report = dr.snapshot(env, lag_wait=settings.dr.lag_probe_seconds, replica_expected=settings.local.replica)
    report["targets"] = {
        "rto_seconds": settings.dr.rto_seconds,
        "rpo_seconds": settings.dr.rpo_seconds,
        "pitr_retention_days": settings.dr.pitr_retention_days,
    }
    report["fenced"] = dr.fenced_nodes(env) if report["initialized"] else []
    from voketag_ops.workflows.drill import last_result

    report["last_drill"] = last_result(env)
    return report


def thresholds(
    settings: Settings,
    *,
    max_backup_age: str | None = None,
    max_lag: str | None = None,
    min_pitr_window: str | None = None,
) -> Thresholds:
    def seconds(flag: str, value: str | None, default: float) -> float:
        if value is None:
            return default
        try:
            return parse_duration(value)
        except ValueError as exc:
            raise UsageError(f"{flag}: {exc}") from None

    if settings.env == "local":
        stale = settings.local.archive_timeout + settings.dr.archive_grace_seconds
        replica = settings.local.replica
    else:  # Cloud SQL archives by itself (failures come from its metric); a replica if configured
        stale, replica = float("inf"), settings.environment(settings.env).replica is not None
    return Thresholds(
        max_backup_age_seconds=seconds(
            "--max-backup-age", max_backup_age, settings.dr.max_backup_age_hours * 3600
        ),
        max_lag_seconds=seconds("--max-lag", max_lag, settings.dr.max_lag_seconds),
        min_pitr_window_seconds=seconds(
            "--min-pitr-window", min_pitr_window, settings.dr.min_pitr_window_hours * 3600
        ),
        archive_stale_seconds=stale,
        pitr_retention_days=settings.dr.pitr_retention_days,
        replica_expected=replica,
    )


def check(settings: Settings, env: LocalEnvironment, limits: Thresholds) -> dict[str, Any]:
    """`dr status` judged against LIMITS; `ok` is False when any check fails."""
    snap = status(settings, env)
    if not snap["initialized"]:
        checks = [
            {
                "name": "environment",
                "ok": False,
                "message": "the local environment does not exist (voke env up)",
            }
        ]
    else:
        checks = [
            {"name": c.name, "ok": c.ok, "message": c.message, "value": c.value, "threshold": c.threshold}
            for c in judge(snap, limits, now=_now())
        ]
    failed = [c for c in checks if not c["ok"]]
    return {
        "ok": not failed,
        "checked_at": snap["checked_at"],
        "thresholds": {
            "max_backup_age_seconds": limits.max_backup_age_seconds,
            "max_lag_seconds": limits.max_lag_seconds,
            "min_pitr_window_seconds": limits.min_pitr_window_seconds,
            "archive_stale_seconds": limits.archive_stale_seconds,
        },
        "checks": checks,
        "failed": [c["name"] for c in failed],
        "status": snap,
    }


# -- backups ----------------------------------------------------------------------------------------
def backup(
    settings: Settings, env: LocalEnvironment, *, dry_run: bool, progress: Progress = _quiet
) -> dict[str, Any]:
    from dataclasses import asdict

    from voketag_ops.adapters.local import dr

    require_local(settings)
    if dry_run:
        dr.refuse_if_busy(env)  # refused as the run is (lock held, an operation to resume)
        plan = [f"pg_basebackup (fast checkpoint, manifest) of the leader into {env.backups_dir}"]
        if settings.dr.prune_after_backup:
            plan.append(f"then `voke dr prune`: keep {settings.dr.pitr_retention_days:g} days restorable")
        return {"dry_run": True, "plan": plan}
    from voketag_ops.workflows.env import ensure_local

    with recorded(env, "dr.backup", "leader") as details:  # a refusal is on record too
        if env.exists:
            dr.refuse_if_unfinished(env)  # exit 5 naming the resume, before anything starts
        ensure_local(settings, progress)
        # Under the DR lock: a drill may have frozen the leader, a failover may be moving it. Held
        # shared: a rotation (which moves neither) starts beside it, as it does beside a rotation.
        with dr.backup_lock(env):
            dr.refuse_if_unfinished(env)
            progress("taking a base backup (pg_basebackup)")
            t0 = time.monotonic()
            info = env.take_base_backup()
            details.update(label=info.label, size_bytes=info.size_bytes)
            took = round(time.monotonic() - t0, 3)
    # A prune of its own (its own lock and `dr.prune` event): whatever becomes of it, the backup is
    # taken and on record as such.
    pruned = (
        _prune_after_backup(settings, env, info.label, progress) if settings.dr.prune_after_backup else None
    )
    return {"dry_run": False, "backup": asdict(info), "duration_seconds": took, "pruned": pruned}


def _prune_after_backup(
    settings: Settings, env: LocalEnvironment, label: str, progress: Progress
) -> dict[str, Any]:
    """The prune a backup ends with: a failure is reported (`error`), never the backup's. The
    report has the same keys either way."""
    from voketag_ops import interrupts
    from voketag_ops.adapters.local import dr

    done = dr.Pruned()
    try:
        return {**prune(settings, env, dry_run=False, progress=progress, done=done), "error": None}
    except (Interrupted, KeyboardInterrupt):
        raise Interrupted(
            f"{interrupts.stopped_by()} while pruning after backup {label} was taken",
            hint="`voke dr prune --yes` finishes the prune",
        ) from None
    except (VokeError, OSError, ValueError) as exc:
        log.warning("backup taken; pruning failed: %s", exc)
        hint = getattr(exc, "hint", None)
        return {
            "dry_run": False,
            "retention_days": settings.dr.pitr_retention_days,
            **dict.fromkeys(dr.plan_keys()),
            **done.as_dict(),
            "duration_seconds": None,
            "error": f"{exc} ({hint})" if hint else str(exc),
        }


def prune(
    settings: Settings,
    env: LocalEnvironment,
    *,
    dry_run: bool,
    progress: Progress = _quiet,
    done: Any = None,
) -> dict[str, Any]:
    """Remove the base backups and archived WAL that `dr.pitr_retention_days` no longer needs;
    DONE (a `Pruned`), if given, records what went as it goes, also when the prune fails."""
    from voketag_ops.adapters.local import dr

    require_local(settings)
    if not env.exists:
        env.require_state()  # exit 5, and no home made for an event: there is nothing to prune
    days = settings.dr.pitr_retention_days
    if dry_run:
        dr.refuse_if_busy(env)
        return {"dry_run": True, "retention_days": days, **dr.plan_prune(env, days, now=_now()).as_dict()}
    done = done if done is not None else dr.Pruned()
    with recorded(env, "dr.prune", "archive") as details:  # a refusal is on record too
        try:
            # Beside no backup, prune or DR operation reading the archive (a restore, a drill,
            # a failover), and beside rotations, which read none of it: held as a backup holds it.
            with dr.backup_lock(env, PRUNE):
                dr.refuse_if_unfinished(env)
                t0 = time.monotonic()
                plan = dr.plan_prune(env, days, now=_now())
                details.update(planned=[b.label for b in plan.remove], leftovers=len(plan.leftovers))
                dr.prune(env, plan, done, progress)
        finally:  # what went, also when cut short
            details.update(
                removed_backups=[b.label for b in done.backups],
                removed_segments=len(done.segments),
                freed_bytes=done.freed_bytes,
            )
        report = {
            "dry_run": False,
            "retention_days": days,
            **plan.as_dict(),
            **done.as_dict(),
            "duration_seconds": round(time.monotonic() - t0, 3),
        }
        if done.failures:
            raise NeedsOperatorError(
                f"pruning stopped after removing {len(done.backups)} of {len(plan.remove)} backups: "
                f"{len(done.failures)} could not be removed (first: {done.failures[0]}); every listed "
                "backup still has its WAL",
                hint="fix that and re-run `voke dr prune --yes`",
            )
    return report


def verify_backup(
    settings: Settings, env: LocalEnvironment, *, label: str | None, progress: Progress = _quiet
) -> dict[str, Any]:
    from voketag_ops.adapters.local import dr

    require_local(settings)
    env.require_state()
    backup = dr.find_backup(env, label)
    progress(f"verifying backup {backup.label} and the WAL archive since")
    # Unlocked (a verification may take minutes): a prune may remove the backup meanwhile, which
    # is not a damaged backup.
    try:
        report = dr.verify_backup(env, backup)
    except VokeError:
        _refuse_if_pruned(env, backup)
        raise
    if not report["ok"]:
        _refuse_if_pruned(env, backup)
    return report


def _refuse_if_pruned(env: LocalEnvironment, backup: Any) -> None:
    if backup not in env.backups():
        raise PreconditionError(
            f"backup {backup.label} was pruned while it was verified (dr.pitr_retention_days)",
            hint="verify a kept one: voke dr verify-backup",
        ) from None


# -- restore ----------------------------------------------------------------------------------------
def point_in_time(to: str, *, now: datetime | None = None) -> datetime:
    """`--to TO` as an instant (relative to NOW, default now): UsageError (exit 2) naming --to."""
    try:
        return parse_point_in_time(to, now=now or _now())
    except ValueError as exc:
        raise UsageError(f"--to: {exc}") from None


def restore_request(to: str, name: str | None, *, now: datetime | None = None) -> tuple[datetime, str]:
    """A local restore's target (`--to TO`) and the new instance's name (NAME, else
    restore-<target>): a UsageError (exit 2) for either is judged from the arguments alone, so
    it comes before the environment is looked at (no environment is exit 5) or progress shown."""
    from voketag_ops.adapters.local import dr

    target = point_in_time(to, now=now)
    if name is None:
        return target, "restore-" + target.strftime("%Y%m%dt%H%M%S")
    dr.check_restore_name(name, hint="pick another --name")
    return target, name


def restore(
    settings: Settings,
    env: LocalEnvironment,
    *,
    to: str,
    name: str | None,
    dry_run: bool,
    progress: Progress = _quiet,
    now: datetime | None = None,
) -> dict[str, Any]:
    from voketag_ops.adapters.local import dr

    require_local(settings)
    now = now or _now()
    target, name = restore_request(to, name, now=now)
    env.require_state()
    # A real run is on record from here (a refusal too); a dry run writes no event.
    with (
        recorded_unless(dry_run, env, "dr.restore", name) as details,
        dr.dr_lock(env, "dr restore"),
        measuring(),  # the instants it reports, on one steady clock (as within a drill)
    ):
        dr.refuse_if_unfinished(env)  # a dry run too: its plan says the restore would run
        plan = dr.plan_restore(
            env, target, name, seal=not dry_run, now=now, progress=_quiet if dry_run else progress
        )
        if dry_run:
            return {
                "dry_run": True,
                "name": name,
                "target": iso(target),
                "backup": plan.backup.label,
                "skipped_backups": plan.skipped,
                "window": plan.window.as_dict(),
                "plan": [
                    "commit a heartbeat and switch WAL so the archive covers the target",
                    f"copy base backup {plan.backup.label} into {dr.restores_dir(env) / name}",
                    f"replay archived WAL to {iso(target)} (recovery_target_action=promote) on a free port",
                    "check it left recovery and takes writes; report the stop point",
                ],
            }
        details.update(target=iso(target), backup=plan.backup.label)
        report = dr.restore(env, plan, progress=progress)
        details.update(stop_point=report["stop_point"]["stopped"], port=report["port"])
    report["dry_run"] = False
    return report


def restores(settings: Settings, env: LocalEnvironment) -> dict[str, Any]:
    from voketag_ops.adapters.local import dr

    require_local(settings)
    return {"restores": dr.list_restores(env) if env.exists else []}


def discard(
    settings: Settings, env: LocalEnvironment, *, name: str, dry_run: bool, by: str | None = None
) -> dict[str, Any]:
    """Stop the restored instance NAME and delete it, audited as `dr.discard` (BY: the drill that
    discards its own, or one a killed drill left; null for `voke dr discard`)."""
    from voketag_ops.adapters.local import dr

    require_local(settings)
    found = dr.find_restore(env, name)
    if found is None:
        return _discarded_already(env, name, dry_run=dry_run)
    doc, node = found
    if dry_run:
        dr.refuse_if_busy(env)
        return {
            "dry_run": True,
            "plan": [f"stop the restored instance {name} (port {doc['port']})", f"delete {node.data_dir}"],
        }
    # (under the DR lock: not under a drill's feet)
    with recorded(env, "dr.discard", name) as details, dr.dr_lock(env, "dr discard"):
        if by is not None:
            details["by"] = by
        dr.refuse_if_unfinished(env)
        report = dr.discard_restore(env, name)
    report["dry_run"] = False
    return report


def _discarded_already(env: LocalEnvironment, name: str, *, dry_run: bool) -> dict[str, Any]:
    """A discard of NAME, which no restored instance has: a rerun (a cron job, a runbook step)
    after NAME was discarded or its restore removed it is a no-op success, audited as unchanged;
    a name the audit log never saw restored or discarded stays a usage error (exit 2)."""
    from voketag_ops.adapters.local import dr
    from voketag_ops.audit import AuditLog, audited

    # (a restore's event holds `backup` once it began copying: it made the instance; a cloud
    # environment's restore, in the same log, made a Cloud SQL instance). Read from the end, up to
    # the first match: a rerun finds its name among the newest events of a log of any length. One
    # whose chain to the log's end does not verify (a line added by hand) is not trusted.
    def made_or_discarded(e: AuditEntry) -> str | None:  # the local instance it made or discarded
        made = (e.event_type == "dr.discard" and e.result in ("success", "unchanged")) or (
            e.event_type == "dr.restore" and "backup" in e.details
        )
        return e.target if made and e.env == "local" else None

    if name not in AuditLog(env.home).find_newest({name}, made_or_discarded):
        raise dr.no_such_restore(env, name)
    if dry_run:
        return {"dry_run": True, "plan": [f"nothing: the restored instance {name} is gone already"]}
    with audited(env.home, event_type="dr.discard", env="local", target=name) as event:
        event.result = "unchanged"
    return {"name": name, "stopped": False, "removed": None, "changed": False, "dry_run": False}


# -- failover, failback, fence -------------------------------------------------------------------------
# The order a repoint adds its copies in: `previous` first, so the new `current` is the newest
# version, as after a rotation. `rotate cleanup` counts every enabled version older than `current`
# as having been current (core/rotation.py `plan_cleanup`); a `previous` copy numbered after the
# `current` one would later count as superseding the version that was current until the next
# repoint or rotation, which `rotate cleanup` would then disable within minutes of it.
REPOINT_ORDER = ("previous", "current")


def repoint_report(*, host: str | None = None, port: int | None = None) -> dict[str, Any]:
    """The report of a repoint before it begins, local or cloud: one key set on both (empty or
    null where it does not apply). `made`: each version added ({secret, alias, version}),
    recorded as soon as it exists, so a repoint failing before its aliases move still names
    it; `repointed`: each secret whose aliases moved ({secret, versions, host, port});
    `found`: each secret whose aliases named the leader already ({secret, versions, host,
    port}), as a rerun finds a run cut short after it moved them (killed: no event of its own);
    `redeployed`: the services serving the new `current`; locally `repinned`, `stopped` and
    `stale` (see `repoint_services`); on a cloud environment `skipped` (what was not repointed,
    and why); `host` (cloud) or `port` (local), what the new versions name; `note`."""
    return {
        "repointed": [],
        "made": [],
        "found": [],
        "redeployed": [],
        "repinned": [],
        "stopped": [],
        "stale": [],
        "skipped": [],
        "host": host,
        "port": port,
        "note": None,
    }


def repoint_services(
    settings: Settings,
    env: LocalEnvironment,
    leader: PgNode,
    *,
    redeploy: bool = True,
    done: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """New secret versions naming the leader's port, then a blue-green redeploy of the running
    services. Not REDEPLOY (the leader is stopped: `env move-port`): the running services are
    stopped instead, and every service starts on the new versions with the leader (`env up`).
    DONE, if given, is the report (`repoint_report`) filled in as it goes (`made`, each version
    as soon as it is added; a secret once its aliases moved; the services once redeployed,
    stopped or repinned), so a repoint that fails part-way still says which versions it made
    and which services serve them."""
    from voketag_ops.workflows.env import LocalPlatform

    report = done if done is not None else {}
    report.update(repoint_report(port=leader.port))
    platform = LocalPlatform(settings)
    store = platform.store()
    repointed: list[dict[str, Any]] = report["repointed"]
    made: list[dict[str, Any]] = report["made"]
    deploy: dict[str, tuple[str, int]] = {}
    for user in settings.rotation.db_users.values():
        if not store.exists(user.secret):
            continue
        meta = store.get(user.secret)
        aliases: dict[str, int | None] = {}
        already: dict[str, int | None] = {}
        for alias in REPOINT_ORDER:
            number = meta.aliases.get(alias)
            if number is None:
                continue
            payload = json.loads(store.access(user.secret, number))
            if int(payload.get("port", 0)) == leader.port:
                already[alias] = number
                continue
            payload["port"] = leader.port
            aliases[alias] = store.add_version(user.secret, json.dumps(payload).encode()).version
            made.append({"secret": user.secret, "alias": alias, "version": aliases[alias]})
        if aliases:
            latest = store.get(user.secret)
            if any(latest.aliases.get(a) != meta.aliases.get(a) for a in ("current", "previous")):
                # A rotation moved the aliases meanwhile: never overwrite its commit.
                raise PreconditionError(
                    f"{user.secret} changed while it was being repointed (a rotation?); run the command again"
                )
            store.update(user.secret, etag=latest.etag, aliases=aliases)
            repointed.append({"secret": user.secret, "versions": aliases, "host": None, "port": leader.port})
        if already:
            report["found"].append(
                {"secret": user.secret, "versions": already, "host": None, "port": leader.port}
            )
        current = aliases.get("current") or meta.aliases.get("current")
        if current is not None:
            for service in user.services:
                deploy[service] = (user.secret, int(current))
    runtime = platform.runtime()
    running = {s.name for s in runtime.services(check=False) if s.instance is not None}
    stale = [n for n in running if n in deploy and runtime.serving_version(n, deploy[n][0]) != deploy[n][1]]
    report["stale"] = sorted(stale)  # running services that were pinned to other versions
    # (not REDEPLOY) running services stopped, then repinned
    report["stopped"] = stopped = runtime.stop_all() if not redeploy and stale else []
    if stopped:
        running = set()
    targets = {name: target for name, target in deploy.items() if name in running}
    # A stopped service would come back at `env up` pinned to a version naming the old leader;
    # repinned: stopped services, started there by the next `env up`.
    report["repinned"] = runtime.repin_stopped({name: t for name, t in deploy.items() if name not in running})
    if targets:
        deploy_recorded(runtime, targets, report)
    report["note"] = None if repointed or targets else "no service connection secret to repoint"
    return report


def deploy_recorded(runtime: Any, targets: dict[str, tuple[str, int]], report: dict[str, Any]) -> None:
    """Deploy TARGETS (service -> (secret, version)) and set REPORT's `redeployed`, also when a
    deploy fails: the others ran to their end, so it names those serving their new version (one
    whose version cannot be read is not named)."""
    try:
        runtime.deploy_many(targets)
    except BaseException:
        serving = []
        for name, (secret, version) in sorted(targets.items()):
            try:
                if runtime.serving_version(name, secret) == version:
                    serving.append(name)
            except VokeError:
                continue
        report["redeployed"] = serving
        raise
    report["redeployed"] = sorted(targets)


class AuditedRepoint:
    """`repoint_services` for a DR operation or `env move-port` whose audit DETAILS record what it
    did, `services`, however it ends (a run failing in its redeploy, or later, still says which
    versions it made and which services serve them); DONE is its result (None: this run
    repointed nothing, as a resumed one past that step)."""

    def __init__(self, details: dict[str, Any], settings: Settings, env: LocalEnvironment) -> None:
        self.details, self.settings, self.env = details, settings, env
        self.done: dict[str, Any] | None = None

    def __call__(self, leader: PgNode, *, redeploy: bool = True) -> dict[str, Any]:
        moved: dict[str, Any] = {}
        try:
            repoint_services(self.settings, self.env, leader, redeploy=redeploy, done=moved)
        finally:
            if moved:  # (empty: it failed before it began)
                self.details["services"] = as_audited(moved)
        self.done = moved
        return moved


def as_audited(services: dict[str, Any]) -> dict[str, Any]:
    """A repoint's report (`repoint_report`, local or cloud) as an audit event stores it: each
    secret's name under `secret_name`, as `secret` is a key whose value the audit log masks (a
    secret's value)."""
    named = {
        key: [{"secret_name": r["secret"], **{k: v for k, v in r.items() if k != "secret"}} for r in items]
        for key in ("repointed", "made", "found")
        if isinstance(items := services.get(key), list)
    }
    return {**services, **named}


@contextmanager
def _resumable(env: LocalEnvironment, operation: str) -> Iterator[None]:
    """A backend failure once OPERATION is recorded as unfinished is exit 7 naming its resume,
    not exit 4 "nothing was changed": the leader may be fenced already, and other DR commands
    refuse until it is resumed. So is a redeploy failing in the repoint (a service instance
    exiting at start or never healthy: the runtime's RotationFailure kinds)."""
    from voketag_ops.adapters.local import dr

    try:
        yield
    # (KeyboardInterrupt: Ctrl-C, SIGTERM, exit 130; OSError: a file the machine refused, such as
    # the secret store's on a full disk, which alone would read as exit 4 or 3)
    except (BackendError, RotationFailure, RolledBackError, KeyboardInterrupt, OSError) as exc:
        from voketag_ops import interrupts

        pending = dr.unfinished_operation(env)
        refused = refused_file(exc)
        if not pending or pending.get("operation") != operation or (isinstance(exc, OSError) and not refused):
            raise
        stopped = f"`voke dr {operation}` stopped part-way (done: {', '.join(pending.get('done') or []) or 'nothing yet'})"
        resume = f"`{pending.get('resume')}` resumes it; other DR commands refuse until then"
        if isinstance(exc, KeyboardInterrupt):
            signal = interrupts.stopped_by()
            raise Interrupted(f"{signal}: {stopped}", hint=resume) from None
        said = refused or getattr(exc, "message", str(exc))
        raise NeedsOperatorError(f"{stopped}: {said}", hint=f"once that is fixed, {resume}") from None


def refuse_if_rotating_locally(settings: Settings) -> None:
    """Exit 5 before moving the leader while a rotation of a local connection secret is
    unfinished (a rotation refuses to start during an interrupted DR operation, so one being
    resumed goes on without this check)."""
    from voketag_ops.workflows.env import LocalPlatform
    from voketag_ops.workflows.rotate import refuse_if_rotating

    secrets = [u.secret for u in settings.rotation.db_users.values()]
    refuse_if_rotating(LocalPlatform(settings).store(), secrets, resume="voke rotate resume")


def failover(
    settings: Settings, env: LocalEnvironment, *, dry_run: bool, progress: Progress = _quiet
) -> dict[str, Any]:
    from voketag_ops.adapters.local import dr

    require_local(settings)
    state = env.require_state()
    pending = dr.unfinished_operation(env)
    if dry_run:
        dr.refuse_if_busy(env, allow="failover")
        if not pending:
            refuse_if_rotating_locally(settings)
        dr.refuse_failover_without_standby(env, state, pending)
        old, new = state.leader, state.follower
        if pending and pending.get("operation") == "failover":
            old, new = pending.get("old_leader", old), pending.get("new_leader", new)
        return {
            "dry_run": True,
            "old_leader": old,
            "new_leader": new,
            "resumes": pending,
            "plan": [
                f"fence {old}: stop it (clean if it answers, SIGKILL if not); it will not start writable again",
                f"promote {new} (pg_promote) and record it as the leader",
                "give the services' connection secret a new version with the new port; redeploy them",
                f"verify a write on {new}",
            ],
        }
    with (
        recorded(env, "dr.failover", state.follower) as details,
        dr.dr_lock(env, "dr failover"),
        measuring(),  # its instants and their differences: a wall-clock step skews none
    ):
        if not pending:
            refuse_if_rotating_locally(settings)
        repoint = AuditedRepoint(details, settings, env)
        with _resumable(env, "failover"):
            report = dr.failover(env, progress=progress, repoint=repoint, promoted=details.update)
        details.update(old_leader=report["old_leader"], new_leader=report["new_leader"])
    report["services"] = repoint.done
    report["dry_run"] = False
    return report


def failback(
    settings: Settings,
    env: LocalEnvironment,
    *,
    dry_run: bool,
    clone: bool = False,
    switch_back: bool = True,
    progress: Progress = _quiet,
) -> dict[str, Any]:
    from voketag_ops.adapters.local import dr

    require_local(settings)
    state = env.require_state()
    if dry_run:
        pending = dr.refuse_if_busy(env, allow="failback")
        if not pending:
            refuse_if_rotating_locally(settings)
        old, leader = env.node(state.follower, state), env.node(state.leader, state)
        if "switchover_started" in (pending or {}).get("done", []):  # the run resumes it, whatever the leader
            from voketag_ops.adapters.local.environment import NODE_NAMES

            to = ((pending or {}).get("detail") or {}).get("switchover_started", {}).get("to", "primary")
            other = next(n for n in NODE_NAMES if n != to)
            plan = [
                f"finish the interrupted switchover to {to}: promote it unless it was already, "
                f"repoint services, restart {other} as its standby"
            ]
            return {"dry_run": True, "leader": to, "rebuild": other, "plan": plan}
        dr.refuse_failback_without_leader(leader, old)  # as the run refuses
        streaming = dr.in_recovery(old) is True and dr.streams_from(leader, old)
        plan = [
            f"rebuild {state.follower} as a standby of {state.leader} "
            + (
                "(fresh clone)"
                if clone
                else "(none: it streams from the leader already)"
                if streaming
                else "(pg_rewind; a fresh clone if rewind fails)"
            ),
            f"wait until {state.follower} has replayed everything {state.leader} wrote",
        ]
        from voketag_ops.adapters.local.environment import HOME_NODE

        if switch_back and state.follower == HOME_NODE:
            plan += [
                f"planned switchover: stop {state.leader} cleanly, let {state.follower} replay its last WAL",
                f"promote {state.follower}, repoint services, restart {state.leader} as its standby",
            ]
        elif switch_back:
            plan.append(f"no switchover: {state.leader} is the home leader already")
        return {"dry_run": True, "leader": state.leader, "rebuild": state.follower, "plan": plan}
    with (
        recorded(env, "dr.failback", state.follower) as details,
        dr.dr_lock(env, "dr failback"),
        measuring(),  # its write pause is a monotonic duration, not two wall-clock readings
    ):
        if not dr.unfinished_operation(env):
            refuse_if_rotating_locally(settings)
        repoint = AuditedRepoint(details, settings, env)
        with _resumable(env, "failback"):
            report = dr.failback(
                env, progress=progress, force_clone=clone, switch_back=switch_back, repoint=repoint
            )
        details.update(leader=report["leader"], method=report["rebuilt"].get("method"))
    report["services"] = repoint.done
    report["dry_run"] = False
    return report


def fence(settings: Settings, env: LocalEnvironment, *, node: str, dry_run: bool) -> dict[str, Any]:
    from voketag_ops.adapters.local.environment import NODE_NAMES

    require_local(settings)
    if node not in NODE_NAMES:  # before the state: a bad argument is exit 2 with no environment too
        raise UsageError(f"unknown node {node!r} (primary or replica)")
    state = env.require_state()
    with recorded_unless(dry_run, env, "dr.fence", node):  # a refusal of a real run is on record
        return _fence(env, state, node, dry_run=dry_run)


def _fence(env: LocalEnvironment, state: Any, node: str, *, dry_run: bool) -> dict[str, Any]:
    from voketag_ops import interrupts
    from voketag_ops.adapters.local import dr

    # The node an interrupted failover moves away from may always be fenced (started again, it
    # is a second primary); anything else waits until the operation is finished.
    pending = _pending_failover(env)
    loser = pending.get("old_leader")
    leader = pending.get("new_leader", state.leader) if loser == node else state.leader
    if dry_run:  # (the node of an interrupted failover: refused only while the lock is held)
        dr.refuse_if_busy(env, allow="failover" if loser == node else None)
    elif loser != node:
        dr.refuse_if_unfinished(env)  # mid-failover the leader on record is about to change
    if node == leader:
        raise PreconditionError(  # a state, not a bad argument: legal again after a failover
            f"{node} is the leader; `voke dr failover --yes` fences it and promotes the standby instead; "
            "nothing was changed"
        )
    target = env.node(node, state)
    if dr.in_recovery(target) is True:  # read-only: no split brain to stop, and it was no primary
        raise PreconditionError(
            f"{node} is running as a standby (read-only): there is no split brain to stop; nothing was changed",
            hint="a standby that cannot catch up is rebuilt by `voke dr failback --no-switch-back --clone --yes`",
        )
    if dry_run:
        return {
            "dry_run": True,
            "plan": [
                f"stop {node} (clean if it answers, SIGKILL if not) and mark it fenced",
                "move archived WAL and history of timelines off the leader's lineage (a promoted "
                "node's own) to pg/archive-quarantine/",
            ],
        }
    with dr.dr_lock(env, "dr fence"):
        if _pending_failover(env).get("old_leader") != node:
            dr.refuse_if_unfinished(env)  # (again, under the lock)
        # A first Ctrl-C or SIGTERM waits for the stop, the marker and the quarantine; a second
        # one (a stop that hangs) leaves the node marked fenced, and running the fence again
        # finishes it.
        try:
            with interrupts.Held(give_way_after=1) as held:
                report = dr.fence_node(env, target, reason="voke dr fence")
                # a standby promoted beside the leader archived a timeline of its own: it must go
                report["quarantined"] = dr.quarantine_foreign_timelines(env, env.node(leader, state))
        except KeyboardInterrupt:
            signal = interrupts.stopped_by()
            raise Interrupted(
                f"{signal} while fencing {node}: it is marked fenced (`voke env up` leaves it down), "
                "but may still be running, and its timeline may still be in the archive",
                hint=f"voke dr fence {node} --yes",
            ) from None
    report["dry_run"] = False
    if held.fired:
        report["warnings"] = ["interrupted while fencing: the fence was finished all the same"]
    report["next"] = (
        f"`voke dr failover --yes` finishes the interrupted failover to {leader}; then "
        if loser == node
        else ""
    ) + f"`voke dr failback --yes` rebuilds {node} as a standby of {leader}"
    return report


def _pending_failover(env: LocalEnvironment) -> dict[str, Any]:
    """The record of an interrupted `voke dr failover` (old_leader, new_leader), or {}."""
    from voketag_ops.adapters.local import dr

    op = dr.unfinished_operation(env) or {}
    return op if op.get("operation") == "failover" else {}


def history(env: LocalEnvironment, *, limit: int = 50) -> list[dict[str, Any]]:
    """The newest LIMIT DR events from the audit log (event types dr.* and drill.*), oldest
    first: the log is read back from its end only until it has found them."""
    from voketag_ops.audit import AuditLog

    newest = (
        e for e in AuditLog(env.home).entries(newest_first=True) if e.event_type.startswith(("dr.", "drill."))
    )
    events = [
        {
            "at": e.timestamp,
            "action": e.event_type,
            "target": e.target,
            "result": e.result,
            "duration_seconds": e.duration_seconds,
            "actor": e.actor,
            "details": e.details,
        }
        for e in itertools.islice(newest, limit)
    ]
    return events[::-1]


# -- table verification ----------------------------------------------------------------------------------
def resolve_instance(env: LocalEnvironment, name: str) -> PgNode:
    """leader, standby, primary, replica, or a restored instance (NAME or restore:NAME)."""
    from voketag_ops.adapters.local import dr
    from voketag_ops.adapters.local.environment import NODE_NAMES

    if name == "leader":
        return env.primary()
    if name == "standby":
        return env.standby()
    if name in NODE_NAMES:
        return env.node(name)
    _, node = dr.get_restore(env, name.removeprefix("restore:"))
    return node


def check_instances(env: LocalEnvironment, source: str, target: str) -> None:
    """`--source` and `--target` name two instances `resolve_instance` knows: UsageError (exit 2)
    otherwise. Judged before the environment's state is needed (a restored instance's record is
    all it reads), so a bad name is exit 2 with no environment too, and comes before progress."""
    from voketag_ops.adapters.local import dr
    from voketag_ops.adapters.local.environment import NODE_NAMES

    if source == target:
        raise UsageError("--source and --target name the same instance")
    for name in (source, target):
        if name not in ("leader", "standby", *NODE_NAMES):
            dr.get_restore(env, name.removeprefix("restore:"))


def verify(
    settings: Settings,
    env: LocalEnvironment,
    *,
    source: str,
    target: str,
    tables: list[str],
    database: str,
    max_keys: int = 100,
    only_source_keys: bool = False,
    progress: Progress = _quiet,
) -> dict[str, Any]:
    """Compare tables of two instances by hierarchical checksums over primary-key ranges. With
    ONLY_SOURCE_KEYS, what the target has beyond the source (rows, tables) is counted, not a
    difference: a live leader repaired from a restore has kept the writes made since its point."""
    from concurrent.futures import ThreadPoolExecutor

    from voketag_ops.adapters.local import dr
    from voketag_ops.adapters.local.tablediff import (
        PgSide,
        Unreadable,
        list_tables,
        qualified_name,
        reading,
        resolve_tables,
        snapshot,
    )
    from voketag_ops.core.tablediff import diff_table

    require_local(settings)
    check_instances(env, source, target)
    env.require_state()
    src, dst = resolve_instance(env, source), resolve_instance(env, target)
    if src.data_dir == dst.data_dir:  # `leader` and `primary` are one node until a failover
        raise UsageError(f"--source {source} and --target {target} are the same instance ({src.name})")
    t0 = time.monotonic()
    # A standby compared with its leader: let it replay what the leader has written first.
    leader, standby = env.primary(), env.standby()
    if {src.name, dst.name} == {leader.name, standby.name}:
        from voketag_ops.adapters.local.environment import node_status, node_trouble, starts_as_standby

        fenced = env.fenced()
        for role, node in (("primary", leader), ("replica", standby)):
            status = node_status(node)
            if status["running"] and (role == "primary" or status["role"] == "replica"):
                continue
            # as `env up`, `doctor` and `dr check` say
            said, fix = node_trouble(role, status, fenced=fenced, pending=dr.operation_to_report(env))
            # frozen (its processes stopped), or stopped where `env up` starts it: nothing to rebuild
            unreachable = not status["running"] and (
                status["pid"] is not None
                or (
                    node.name not in fenced
                    and (role == "primary" or starts_as_standby(status, fenced=fenced))
                )
            )
            if unreachable:
                raise BackendError(f"{said}; it cannot be compared", hint=fix)
            if role == "primary":
                raise PreconditionError(f"{said}; it cannot be compared", hint=fix)
            raise PreconditionError(
                f"{standby.name} is not running as a standby of {leader.name} ({said}): "
                "it cannot catch up to be compared",
                hint=fix,
            )
        progress(f"waiting for {standby.name} to replay up to the leader's position")
        dr.wait_caught_up(leader, standby, timeout=60)
    results: list[dict[str, Any]] = []
    sides = {"source": (source, src), "target": (target, dst)}
    labels = {side: _instance_label(side, name, node) for side, (name, node) in sides.items()}

    def unreadable(exc: Unreadable) -> dict[str, Any]:
        name, node = sides[exc.side]
        return {
            "side": exc.side,
            "name": name,
            "node": node.name,
            "port": node.port,
            "sqlstate": exc.sqlstate,
            "error": exc.detail,
            "message": str(exc),
        }

    unlisted: dict[str, Any] | None = None
    with snapshot(src, database) as (src_conn, src_lsn), snapshot(dst, database) as (dst_conn, dst_lsn):
        try:  # a corrupt catalog: no table can be listed, let alone compared
            with reading(src_conn, "source", labels["source"]):
                available, without_key = list_tables(src_conn)
            with reading(dst_conn, "target", labels["target"]):
                target_keyed, target_without_key = list_tables(dst_conn)
        except Unreadable as exc:
            unlisted = unreadable(exc)
            available, without_key, target_keyed, target_without_key = [], [], [], []
            tables = []
        target_tables = {t.qualified for t in target_keyed}
        # A table dropped on the source after the restore point is on the target only: a difference.
        only_on_target = sorted(
            (target_tables | set(target_without_key)) - {t.qualified for t in available} - set(without_key)
        )
        if tables:  # a table not asked for is neither "skipped" nor "extra"
            wanted = {qualified_name(t) for t in tables}
            only_on_target = [t for t in only_on_target if t in wanted]
            without_key = [t for t in without_key if t in wanted]
            chosen = resolve_tables(available, [t for t in tables if qualified_name(t) not in only_on_target])
        else:
            chosen = available
        with ThreadPoolExecutor(max_workers=2, thread_name_prefix="voke-verify") as pool:
            for info in chosen:
                progress(f"comparing {info.qualified}")
                started = time.monotonic()
                if info.qualified not in target_tables:
                    results.append(
                        {"table": info.qualified, "equal": False, "missing_on_target": True, "seconds": 0.0}
                    )
                    continue
                a = PgSide(src_conn, info, side="source", label=labels["source"])
                b = PgSide(dst_conn, info, side="target", label=labels["target"])
                # A corrupt page ends this table's comparison, not the run: each side goes back to
                # where the table began (its snapshot kept) and the next table is compared.
                for conn, side in ((src_conn, "source"), (dst_conn, "target")):
                    with reading(conn, side, labels[side]):
                        conn.execute("savepoint voke_table")
                try:
                    found = diff_table(
                        info.qualified, a, b, cap=max_keys, source_keys_only=only_source_keys, pool=pool
                    )
                except Unreadable as exc:
                    for conn, side in ((src_conn, "source"), (dst_conn, "target")):
                        with reading(conn, side, labels[side]):
                            conn.execute("rollback to savepoint voke_table")
                    results.append(
                        {
                            "table": info.qualified,
                            "equal": False,
                            "unreadable": unreadable(exc),
                            "seconds": round(time.monotonic() - started, 3),
                        }
                    )
                    continue
                results.append(
                    {
                        "table": info.qualified,
                        "key": list(info.key_columns),
                        "equal": found.equal,
                        "source_rows": found.source_rows,
                        "target_rows": found.target_rows,
                        "differences": found.differences,
                        "missing_in_target": [list(k) for k in found.missing_in_target],
                        "extra_in_target": [list(k) for k in found.extra_in_target],
                        "extra_in_target_ignored": found.extra_ignored,
                        "changed": [list(k) for k in found.changed],
                        "capped": found.capped,
                        "ranges_compared": found.ranges_compared,
                        "ranges_differing": found.ranges_differing,
                        "rows_fetched": found.rows_fetched,
                        "depth": found.depth,
                        "queries": a.queries + b.queries,
                        "seconds": round(time.monotonic() - started, 3),
                    }
                )
        results += [
            {"table": t, "equal": only_source_keys, "extra_on_target": True, "seconds": 0.0}
            for t in only_on_target
        ]
    return {
        "source": {"name": source, "node": src.name, "lsn": src_lsn},
        "target": {"name": target, "node": dst.name, "lsn": dst_lsn},
        "database": database,
        "only_source_keys": only_source_keys,
        "method": "md5 row hashes XOR-combined per primary-key range, descending into differing ranges",
        "tables": results,
        "skipped_without_primary_key": without_key,
        # the tables could not be listed: set only when a side's catalog is corrupt
        "unreadable": unlisted,
        "equal": unlisted is None and all(r["equal"] for r in results),
        "duration_seconds": round(time.monotonic() - t0, 3),
    }


def _instance_label(side: str, name: str, node: PgNode) -> str:
    """'target leader (primary on port 5433)': the side, as asked for, and the node it is."""
    where = f"port {node.port}" if name == node.name else f"{node.name} on port {node.port}"
    return f"{side} {name} ({where})"


# -- runbooks ----------------------------------------------------------------------------------------------
def runbooks_dir(settings: Settings) -> Path:
    """dr.runbooks_dir, else the runbooks voke ships with (package data; runbooks/ of the
    checkout links to them)."""
    import voketag_ops

    if settings.dr.runbooks_dir is not None:
        return Path(os.path.expanduser(str(settings.dr.runbooks_dir)))
    return Path(voketag_ops.__file__).resolve().parent / "runbooks"


def runbooks(settings: Settings) -> list[dict[str, Any]]:
    """Every runbook: name, title, first paragraph."""
    directory = runbooks_dir(settings)
    if not directory.is_dir():
        raise ConfigError(f"no runbooks directory at {directory}; set dr.runbooks_dir")
    found = []
    for path in sorted(directory.glob("*.md")):
        if path.name.lower() == "readme.md":
            continue
        text = path.read_text()
        title = next((line[2:].strip() for line in text.splitlines() if line.startswith("# ")), path.stem)
        found.append({"name": path.stem, "title": title, "path": str(path)})
    return found


def runbook(settings: Settings, name: str) -> dict[str, Any]:
    known = runbooks(settings)
    for entry in known:
        if entry["name"] == name:
            return entry | {"text": Path(entry["path"]).read_text()}
    raise UsageError(f"no runbook {name!r} (have: {', '.join(e['name'] for e in known)})")
