"""Cloud SQL Admin (module `sqladmin_v1beta4`, REST): the database target of password
rotation and the DatabaseRecovery port.

Mutating calls return a Cloud SQL Operation, not a google.longrunning one: voke polls
`operations.get` itself until the status is DONE and then checks `error`, because a
DONE operation can still have failed. Only backup runs with status SUCCESSFUL count as
backups (a FAILED or SKIPPED run is not one, whatever its end time).
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from voketag_ops.adapters.gcp._common import (
    CONFLICT,
    DENIED,
    FAILED,
    INVALID,
    NOT_FOUND,
    PRECONDITION,
    UNAVAILABLE,
    GcpContext,
    ResponseLost,
    iso_of,
    translating,
)
from voketag_ops.adapters.pg_login import pg_login
from voketag_ops.errors import (
    BackendError,
    DatabaseError,
    NotFoundError,
    OutcomeUnknownError,
    PreconditionError,
    StepTimeoutError,
    TargetBusyError,
    UsageError,
    VokeError,
)
from voketag_ops.logs import get_logger
from voketag_ops.ports import BackupInfo, DbInstanceInfo, DbOperationInfo, RecoveryWindow, ReplicationInfo

log = get_logger(__name__)
DONE = 3  # Operation.SqlOperationStatus.DONE
SUCCESSFUL = 5  # SqlBackupRunStatus.SUCCESSFUL


def _enum(value: Any) -> str:
    return str(getattr(value, "name", value))


def _in_doubt(failure: type) -> type:
    """The error of a change that may have been made (its answer lost, its operation no longer
    watched): exit 7, except for a rotation's target (FAILURE is DatabaseError), which keeps its
    kind so the rotation applies its recovery (setting the old password again undoes it)."""
    return OutcomeUnknownError if failure is BackendError else failure


class CloudSqlAdmin:
    """The Cloud SQL Admin clients of one project, and operation polling."""

    def __init__(self, ctx: GcpContext) -> None:
        self.ctx = ctx
        self._clients: dict[str, Any] = {}

    def client(self, kind: str) -> Any:
        if kind not in self._clients:
            from google.cloud import sqladmin_v1beta4 as sql

            cls = {
                "instances": sql.SqlInstancesServiceClient,
                "users": sql.SqlUsersServiceClient,
                "backups": sql.SqlBackupRunsServiceClient,
                "operations": sql.SqlOperationsServiceClient,
            }[kind]
            self._clients[kind] = self.ctx.rest_client(cls, "sqladmin")
        return self._clients[kind]

    @contextmanager
    def translate(self, what: str, *, failure: type = BackendError) -> Iterator[None]:
        """The one place Cloud SQL Admin errors become voke errors."""
        errors = {
            NOT_FOUND: NotFoundError,
            CONFLICT: PreconditionError,  # another operation is running on the instance
            PRECONDITION: PreconditionError,
            # a 400 refuses a request voke built (user values are checked before they get here)
            INVALID: failure,
            DENIED: BackendError,
            UNAVAILABLE: failure,
            FAILED: failure,
        }
        with translating(what, errors):
            yield

    def start(
        self, fn: Any, request: dict[str, Any], what: str, *, kind: str, failure: type = BackendError
    ) -> Any:
        """FN(request=REQUEST), a call that starts an operation of type KIND. Refused because
        another operation runs on the instance (409 operationInProgress: Cloud SQL's own backup
        after a create, maintenance, the step just before), it is asked again until the
        operation timeout: nothing was started. Not when the running one is of the same KIND:
        that is this very change under way (a rerun beside an interrupted voke's), and asking
        again once it is done would do it twice; that stays exit 5, naming it, rerun when it is DONE.
        Still refused at the timeout: TargetBusyError, the change never began. An answer lost on
        the way back: see `_started_anyway`."""
        from google.api_core import exceptions as gexc

        deadline = self.ctx.deadline()
        pause = self.ctx.poll_interval
        instance = request.get("instance")
        target = instance or (request.get("body") or {}).get("name")  # instances.insert: the new one
        with self.translate(what, failure=failure):
            while True:
                try:
                    return self.ctx.call(fn, request=request, idempotent=False)
                except ResponseLost as exc:
                    return self._started_anyway(exc, what, target, kind, failure)
                except gexc.Conflict as exc:
                    if not _in_progress(exc):
                        raise
                    running = self._running(instance) if instance else []
                    same = next((op for op in running if _enum(op.operation_type) == kind), None)
                    if same is not None:
                        raise PreconditionError(
                            f"{what}: operation {same.name} ({kind}, {_enum(same.status)}) is already in "
                            f"progress on {instance}; nothing was started",
                            hint=f"gcloud sql operations describe {same.name} --project {self.ctx.project}; "
                            "rerun once it is DONE",
                        ) from None
                    if time.monotonic() + pause >= deadline:
                        busy = f" ({', '.join(f'{_enum(op.operation_type)} {op.name}' for op in running)})"
                        raise TargetBusyError(
                            f"{what}: {instance or 'the instance'} is busy: another Cloud SQL operation"
                            f"{busy if running else ''} was still in progress after "
                            f"{self.ctx.operation_timeout:g} s; nothing was started",
                            hint=f"gcloud sql operations list --instance {instance} shows it; retry once it is done"
                            if instance
                            else None,
                        ) from None
                    log.info(
                        "%s: another Cloud SQL operation is in progress; asking again in %g s", what, pause
                    )
                    self.ctx.sleep(pause)
                    pause = min(pause * 2, 30.0)

    def _running(self, instance: str) -> list[Any]:
        """INSTANCE's operations not DONE (the newest page: one runs at a time)."""
        pager = self.ctx.call(
            self.client("operations").list,
            request={"project": self.ctx.project, "instance": instance, "max_results": 20},
        )
        first = next(iter(pager.pages), None)
        ops = first.items if first is not None else []
        return [op for op in ops if int(op.status) != DONE]

    def _started_anyway(
        self, lost: ResponseLost, what: str, target: str | None, kind: str, failure: type
    ) -> Any:
        """The answer to a call starting a KIND operation on TARGET was lost. An operation of that
        KIND under way on TARGET is this call's (Cloud SQL runs one at a time per instance, and
        refuses a second of the same kind): it is returned, to be waited for. Otherwise whether
        the call took effect is unknown (it may even be DONE already): a person looks."""
        if target:
            try:
                with self.translate(f"operations of {target}"):
                    same = [op for op in self._running(target) if _enum(op.operation_type) == kind]
            except VokeError as exc:
                log.warning("%s: could not look up its operation: %s", what, exc.message)
                same = []
            if same:
                log.warning(
                    "%s: its answer was lost, but Cloud SQL runs it as %s; waiting for it", what, same[0].name
                )
                return same[0]
        where = f" --instance {target}" if target else ""
        raise _in_doubt(failure)(
            f"{what}: {lost}",
            hint=f"`gcloud sql operations list{where} --project {self.ctx.project}` shows whether it ran",
        ) from None

    def wait(self, operation: Any, what: str, *, failure: type = BackendError) -> DbOperationInfo:
        """Poll OPERATION until DONE; raise FAILURE when DONE carries an error."""
        deadline = self.ctx.deadline()
        ops = self.client("operations")
        op = operation
        while int(op.status) != DONE:
            describe = f"gcloud sql operations describe {op.name} --project {self.ctx.project}"
            if time.monotonic() >= deadline:
                raise StepTimeoutError(
                    f"{what}: operation {op.name} still {_enum(op.status)} after {self.ctx.operation_timeout:g} s",
                    hint=describe,
                )
            self.ctx.sleep(self.ctx.poll_interval)
            try:
                with self.translate(what):
                    op = self.ctx.call(ops.get, request={"project": self.ctx.project, "operation": op.name})
            except VokeError as exc:  # the operation was accepted: it runs whether voke watches or not
                raise _in_doubt(failure)(
                    f"{what}: operation {op.name} was started, but polling it failed ({exc.message}); "
                    "it may still be running",
                    hint=f"`{describe}` shows whether it finished",
                ) from None
        errors = list(op.error.errors) if op.error else []
        if errors:
            detail = "; ".join(f"{e.code}: {e.message}" for e in errors)
            raise failure(f"{what}: operation {op.name} failed: {detail}")
        return DbOperationInfo(
            name=op.name,
            kind=_enum(op.operation_type),
            target=op.target_id,
            status="DONE",
            started_at=iso_of(op.start_time),
            finished_at=iso_of(op.end_time),
        )


class CloudSqlDbTarget:
    """The rotation target for database passwords on Cloud SQL: users.update sets the
    password (the Admin API hashes it; it never appears in SQL logs), a fresh login tests it.

    HOST (`db_host`) is the address of HOME (the configured `instance`): it is used only
    while HOME is the instance rotated; REPLICA_HOST (`replica_db_host`, e.g. a Cloud SQL
    Auth Proxy or tunnel to it) is the address of REPLICA (the configured `replica`), used
    only while it is the recorded primary (after a failover); otherwise the login test goes
    to the instance's own private IP."""

    def __init__(
        self,
        admin: CloudSqlAdmin,
        instance: str | Callable[[], str],
        *,
        host: str | None = None,
        port: int = 5432,
        home: str | None = None,
        replica: str | None = None,
        replica_host: str | None = None,
        replica_port: int = 5432,
        timeout: float = 30.0,
    ) -> None:
        self.admin = admin
        self._instance = instance
        self.timeout = timeout  # `rotation.db_timeout`: the login probe's statement_timeout
        self.host = host
        self.port = port
        self.home = home
        self.replica = replica
        self.replica_host = replica_host
        self.replica_port = replica_port

    @property
    def instance(self) -> str:
        """The instance whose users are rotated: a callable (the recorded primary) is asked once."""
        if callable(self._instance):
            self._instance = self._instance()
        return self._instance

    def endpoint(self) -> tuple[str, int]:
        if self.host and (self.home is None or self.instance == self.home):
            return self.host, self.port
        if self.replica_host and self.replica is not None and self.instance == self.replica:
            return self.replica_host, self.replica_port
        info = CloudSqlRecovery(self.admin, self.instance).instance()
        if not info.ip_address:
            key = (
                "replica_db_host" if self.replica is not None and self.instance == self.replica else "db_host"
            )
            raise UsageError(
                f"instance {self.instance} has no IP address",
                hint=f"set environments.NAME.{key} to the address voke reaches {self.instance} at "
                "(e.g. a Cloud SQL Auth Proxy)",
            )
        return info.ip_address, self.port

    def reach(self, *, timeout: float = 3) -> tuple[str, int, str | None]:
        """The login test's address (`endpoint`) and, when no TCP connection opens there within
        TIMEOUT, why: no login is tried (no password needed, nothing changed)."""
        host, port = self.endpoint()
        try:
            socket.create_connection((host, port), timeout=timeout).close()
        except OSError as exc:
            return host, port, exc.strerror or str(exc) or type(exc).__name__
        return host, port, None

    def ensure_roles(self, *, owner: str, roles: tuple[str, ...], database: str) -> None:
        """Cloud SQL users come from Terraform; check that the login roles exist."""
        with self.admin.translate(f"users of {self.instance}", failure=DatabaseError):
            users = self.admin.ctx.call(
                self.admin.client("users").list,
                request={"project": self.admin.ctx.project, "instance": self.instance},
            )
        missing = set(roles) - {u.name for u in users.items}
        if missing:
            raise DatabaseError(f"instance {self.instance} has no user(s) {', '.join(sorted(missing))}")

    def set_password_plan(self, role: str) -> str:
        """What set_password(ROLE, ...) does, for a dry run's plan."""
        return (
            f"set the password of {role} on Cloud SQL instance {self.instance} with users.update "
            "(the Admin API hashes it) and wait for its operation"
        )

    def set_password(self, role: str, password: str) -> None:
        admin = self.admin
        op = admin.start(
            admin.client("users").update,
            {
                "project": admin.ctx.project,
                "instance": self.instance,
                "name": role,
                "body": {"name": role, "password": password},
            },
            f"user {role} on {self.instance}",
            kind="UPDATE_USER",
            failure=DatabaseError,
        )
        admin.wait(op, f"set the password of {role}", failure=DatabaseError)

    def can_login(self, cred: dict[str, Any], *, timeout: float = 5) -> bool:
        """CRED's login and password, tried at voke's way in to the recorded primary
        (`endpoint`: db_host, replica_db_host or the instance's IP), not at the address the
        services use, which voke may not reach."""
        host, port = self.endpoint()
        return pg_login({**cred, "host": host, "port": port}, timeout=timeout, statement_timeout=self.timeout)


# The Cloud SQL operation type each instances method starts.
_OPERATION_OF = {
    "clone": "CLONE",
    "promote_replica": "PROMOTE_REPLICA",
    "switchover": "SWITCHOVER",
    "patch": "UPDATE",
    "delete": "DELETE",
}


def _in_progress(exc: Any) -> bool:
    """Whether a 409 says another operation runs on the instance (not: the name is taken)."""
    reasons = {
        str((e or {}).get("reason", "")) for e in (getattr(exc, "errors", None) or []) if isinstance(e, dict)
    }
    return "operationInProgress" in reasons or "already in progress" in str(getattr(exc, "message", exc))


class CloudSqlRecovery:
    """DatabaseRecovery over the Cloud SQL Admin API (plus Monitoring for replication)."""

    def __init__(
        self, admin: CloudSqlAdmin, instance: str, replica: str | None = None, monitoring: Any = None
    ) -> None:
        self.admin = admin
        self.primary = instance
        self.replica = replica
        self.monitoring = monitoring

    @property
    def ctx(self) -> GcpContext:
        return self.admin.ctx

    def _call(self, kind: str, method: str, what: str, **kwargs: Any) -> Any:
        client = self.admin.client(kind)
        with self.admin.translate(what):
            return self.ctx.call(getattr(client, method), request={"project": self.ctx.project, **kwargs})

    def instance(self, name: str | None = None) -> DbInstanceInfo:
        return self.instance_with_labels(name)[0]

    def instance_with_labels(self, name: str | None = None) -> tuple[DbInstanceInfo, dict[str, str]]:
        """The instance and its `settings.userLabels` (where voke records the topology), one GET."""
        name = name or self.primary
        inst = self._call("instances", "get", f"instance {name}", instance=name)
        return self._info(inst), self._labels(inst)

    @staticmethod
    def _labels(inst: Any) -> dict[str, str]:
        settings = inst.settings
        return dict(settings.user_labels) if settings and settings.user_labels else {}

    def list_instances(self) -> list[tuple[DbInstanceInfo, dict[str, str]]]:
        """Every instance of the project with its labels (instances.list, all pages)."""
        pager = self._call("instances", "list", "instances", max_results=500)
        # The generated pager iterates `warnings`, not `items`: walk the pages' items instead.
        with self.admin.translate("instances"):
            return [(self._info(inst), self._labels(inst)) for page in pager.pages for inst in page.items]

    def _info(self, inst: Any) -> DbInstanceInfo:
        settings = inst.settings
        backup = settings.backup_configuration if settings else None
        ip = next((a.ip_address for a in inst.ip_addresses if _enum(a.type_) == "PRIVATE"), None)
        ip = ip or next((a.ip_address for a in inst.ip_addresses), None)
        cluster = inst.replication_cluster if "replication_cluster" in inst else None
        return DbInstanceInfo(
            name=inst.name,
            state=_enum(inst.state),
            role="replica" if inst.master_instance_name else "primary",
            region=inst.region or None,
            primary=inst.master_instance_name.rsplit(":", 1)[-1] if inst.master_instance_name else None,
            replicas=tuple(r.rsplit(":", 1)[-1] for r in inst.replica_names),
            pitr_enabled=bool(backup and backup.point_in_time_recovery_enabled),
            retention_days=int(backup.transaction_log_retention_days)
            if backup and backup.transaction_log_retention_days
            else None,
            ip_address=ip,
            dr_replica=(cluster.failover_dr_replica_name.rsplit(":", 1)[-1] or None) if cluster else None,
            edition=_enum(settings.edition) if settings else None,
            availability=_enum(settings.availability_type) if settings else None,
        )

    def database_version(self, name: str | None = None) -> str | None:
        """NAME's databaseVersion as Cloud SQL reports it (POSTGRES_16)."""
        name = name or self.primary
        inst = self._call("instances", "get", f"instance {name}", instance=name)
        version = _enum(inst.database_version)
        return version if version and version != "SQL_DATABASE_VERSION_UNSPECIFIED" else None

    def pending_operations(self, instance: str | None = None) -> list[DbOperationInfo]:
        """NAME's operations Cloud SQL has not finished (PENDING, RUNNING), whoever started them:
        `operations.list` answers newest first, and one page of 20 reaches back past any that
        can still be under way (Cloud SQL runs one at a time per instance)."""
        name = instance or self.primary
        pager = self._call("operations", "list", f"operations of {name}", instance=name, max_results=20)
        with self.admin.translate(f"operations of {name}"):
            first = next(iter(pager.pages), None)
            ops = list(first.items) if first is not None else []
        return [
            DbOperationInfo(
                name=op.name,
                kind=_enum(op.operation_type),
                target=op.target_id,
                status=_enum(op.status),
                started_at=iso_of(op.start_time) or iso_of(op.insert_time),
                finished_at=None,
            )
            for op in ops
            if int(op.status) != DONE
        ]

    def backups(self, instance: str | None = None) -> list[BackupInfo]:
        name = instance or self.primary
        pager = self._call("backups", "list", f"backups of {name}", instance=name, max_results=100)
        # Every page: `pager.items` would be the first page's alone (a page of FAILED runs
        # would hide the newest SUCCESSFUL one).
        with self.admin.translate(f"backups of {name}"):
            runs = [run for page in pager.pages for run in page.items]
        return [
            BackupInfo(
                id=str(run.id),
                status=_enum(run.status),
                kind=_enum(run.type_),
                started_at=iso_of(run.start_time),
                finished_at=iso_of(run.end_time),
            )
            for run in runs
        ]

    def newest_backup(self, instance: str | None = None) -> BackupInfo | None:
        done = [b for b in self.backups(instance) if b.status == "SUCCESSFUL" and b.finished_at]
        return max(done, key=lambda b: b.finished_at or "", default=None)

    def recovery_window(self, instance: str | None = None) -> RecoveryWindow:
        name = instance or self.primary
        resp = self._call(
            "instances", "get_latest_recovery_time", f"recovery window of {name}", instance=name
        )
        return RecoveryWindow(
            earliest=iso_of(resp.earliest_recovery_time), latest=iso_of(resp.latest_recovery_time)
        )

    def replication(self, replica: str | None = None, *, primary: str | None = None) -> ReplicationInfo:
        replica = replica or self.replica
        if not replica:
            raise UsageError("no replica configured (environments.NAME.replica)")
        if self.monitoring is None:
            return ReplicationInfo(replica, None, None, None)
        return self.monitoring.replication(primary or self.primary, replica)

    def archive_failures(self, primary: str | None = None) -> int | None:
        """See CloudMonitoring.archive_failures (None without a monitoring client)."""
        if self.monitoring is None:
            return None
        return self.monitoring.archive_failures(primary or self.primary)

    def _mutate(self, method: str, what: str, **kwargs: Any) -> DbOperationInfo:
        client = self.admin.client("instances")
        request = {"project": self.ctx.project, **kwargs}
        op = self.admin.start(getattr(client, method), request, what, kind=_OPERATION_OF[method])
        return self.admin.wait(op, what)

    def clone_to_point_in_time(
        self, point_in_time: str, destination: str, instance: str | None = None
    ) -> DbOperationInfo:
        name = instance or self.primary
        body = {"clone_context": {"destination_instance_name": destination, "point_in_time": point_in_time}}
        return self._mutate(
            "clone", f"clone {name} at {point_in_time} into {destination}", instance=name, body=body
        )

    def clone_instance(self, destination: str, instance: str | None = None) -> DbOperationInfo:
        """A new instance DESTINATION with INSTANCE's data as of now (instances.clone)."""
        name = instance or self.primary
        body = {"clone_context": {"destination_instance_name": destination}}
        return self._mutate("clone", f"clone {name} into {destination}", instance=name, body=body)

    def promote_replica(self, replica: str | None = None, *, failover: bool = False) -> DbOperationInfo:
        name = replica or self.replica
        if not name:
            raise UsageError("no replica configured (environments.NAME.replica)")
        return self._mutate("promote_replica", f"promote {name}", instance=name, failover=failover)

    def switchover(self, replica: str | None = None) -> DbOperationInfo:
        name = replica or self.replica
        if not name:
            raise UsageError("no replica configured (environments.NAME.replica)")
        return self._mutate("switchover", f"switchover to {name}", instance=name)

    def set_labels(self, name: str, changes: dict[str, str | None]) -> DbOperationInfo | None:
        """Merge CHANGES into NAME's userLabels with instances.patch; None when nothing would
        change (no call made). Cloud SQL merges a patch's userLabels into the ones it has, so a
        key left out stays: None clears a present key to "" (read back as absent)."""
        _info, labels = self.instance_with_labels(name)
        merged = {
            **labels,
            **{k: "" if v is None else v for k, v in changes.items() if v is not None or k in labels},
        }
        if merged == labels:
            return None
        body = {"settings": {"user_labels": merged}}
        return self._mutate("patch", f"labels of {name}", instance=name, body=body)

    def create_replica(
        self, name: str, master: str, *, region: str | None = None, labels: dict[str, str] | None = None
    ) -> DbOperationInfo:
        """A new read replica NAME of MASTER (instances.insert with masterInstanceName), in
        MASTER's region unless REGION, with MASTER's tier, edition and database version."""
        source = self._call("instances", "get", f"instance {master}", instance=master)
        settings: dict[str, Any] = {"tier": source.settings.tier, "user_labels": dict(labels or {})}
        if source.settings.edition:
            settings["edition"] = source.settings.edition
        body = {
            "name": name,
            "region": region or source.region,
            "database_version": source.database_version,
            "master_instance_name": master,
            "settings": settings,
        }
        client = self.admin.client("instances")
        what = f"create the replica {name} of {master}"
        request = {"project": self.ctx.project, "body": body}
        op = self.admin.start(client.insert, request, what, kind="CREATE_REPLICA")
        return self.admin.wait(op, what)

    def delete_instance(self, name: str) -> DbOperationInfo:
        """Delete NAME (instances.delete); NotFoundError when it is already gone."""
        return self._mutate("delete", f"delete {name}", instance=name)
