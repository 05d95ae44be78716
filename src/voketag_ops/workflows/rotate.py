"""`voke rotate`: the crash-safe rotation engine.

Every step is recorded in the secret's `voke-rotation` annotation (compare-and-swap on
the etag) before the next one starts, and every step is safe to run twice, so a run
killed at any moment is finished by `voke rotate resume` or undone by `voke rotate
rollback`. The new value is stored *before* the target changes; `current` moves in a
single compare-and-swap; services are restarted pinned to explicit version numbers.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

from voketag_ops import interrupts
from voketag_ops.config import RotationSettings
from voketag_ops.core.rotation import (
    ACTIVE,
    ANNOTATION,
    CURRENT_ANNOTATION,
    EMERGENCY,
    LAST_ANNOTATION,
    CleanupAction,
    RotationRecord,
    StepRecord,
    new_rotation_id,
    next_due,
    parse_iso,
    plan_cleanup,
    rollback_scope,
)
from voketag_ops.core.times import iso
from voketag_ops.errors import (
    DISK_REFUSED,
    AuthenticationError,
    ConfigError,
    ConnectivityError,
    EtagMismatchError,
    ExitCode,
    HealthCheckError,
    Interrupted,
    NeedsOperatorError,
    NotFoundError,
    PreconditionError,
    RequestRefusedError,
    RestartError,
    RolledBackError,
    RotationFailure,
    SecretError,
    StatementRefusedError,
    StepTimeoutError,
    TargetBusyError,
    UsageError,
    ValidationError,
    VokeError,
)
from voketag_ops.logs import get_logger
from voketag_ops.workflows.credentials import Credential, DbPassword
from voketag_ops.workflows.secrets import KEPT, READABLE, unreadable_alias

log = get_logger(__name__)

# How long a rollback waits for instances moved off the new version to drain before it gives
# their login its old password back (local instances drain for 3 s; Cloud Run moves traffic at once).
DRAIN_WAIT_SECONDS = 30.0

# What an unclassified error (a backend's refusal) in each step counts as: every one is rolled
# back (or left for a person), never passed up as "nothing was changed" (exit 4).
_STEP_FAILURES: dict[str, type[RotationFailure]] = {
    "create_pending": SecretError,
    "set_target": AuthenticationError,
    "test": AuthenticationError,
    "commit": SecretError,
    "deploy": RestartError,
    "health": HealthCheckError,
    "finish": SecretError,
}

# Steps that write nothing to the secret while they run, which can outlast the lease (a login
# waiting on a lock, a Cloud SQL operation, a deploy): the lease is renewed while they run (`_lease_kept`).
_KEPT_STEPS = frozenset({"set_target", "test", "deploy", "health"})

FAULT_ENV = "VOKE_FAULT_CRASH_AFTER"
RETIRED_ANNOTATION = "voke-retired-keys"  # versions whose provider key cleanup deleted
_CLEANED_STATE = {"disable": "disabled", "destroy": "destroyed", "retire": "disabled"}  # what each leaves
FAULT_EXIT_CODE = 86
Progress = Callable[[str], None]
T = TypeVar("T")


def _step_failure(step: str, exc: VokeError) -> tuple[RotationFailure, bool]:
    """What EXC, raised by STEP, counts as among PRODUCT.md's rotation failures (`_fail` applies
    its recovery), and whether the step began. (A NeedsOperatorError is no step's failure: the
    lease went to another run.)"""
    if step == "create_pending" and isinstance(exc, RequestRefusedError):  # made nothing, stored nothing
        return exc, False
    if isinstance(exc, StatementRefusedError):  # the statement was refused whole: nothing to undo
        return exc, False
    if isinstance(exc, RotationFailure):
        return exc, True
    if isinstance(exc, (NotFoundError, EtagMismatchError)):
        return SecretError(exc.message), True
    if isinstance(exc, TargetBusyError):  # refused before it began: nothing of this step to undo
        return StepTimeoutError(exc.message), False
    # a backend refused (a denied permission) or failed mid-step
    return _STEP_FAILURES.get(step, SecretError)(f"{exc.type_name}: {exc.message}"), True


def refuse_if_rotating(store: Any, secrets: Iterable[str], *, resume: str) -> None:
    """PreconditionError (exit 5) while a rotation of one of SECRETS is running or unfinished:
    moving the database (failover, failback) and repointing the services now would race it,
    and its rollback would put back versions naming the old leader. One that is running is
    named with its owner and lease, to be waited for (resuming it would be refused)."""
    why = "repointing its services now would race it"
    for secret in secrets:
        try:
            meta = store.get(secret)
        except NotFoundError:
            continue
        raw = meta.annotations.get(ANNOTATION)
        if raw is None:
            continue
        try:
            record: RotationRecord | None = RotationRecord.from_json(raw)
        except (ValueError, TypeError):  # a record this voke cannot read still refuses, as unfinished
            record = None
        if record is not None and record.status in ACTIVE and owner_alive(record, _utcnow()):
            raise _running_refusal(record, secret, why)
        raise PreconditionError(
            f"a rotation of {secret} is unfinished; {why}; nothing was changed",
            hint=f"{resume} --yes (or rollback), then run this again",
        )


def refuse_while_rotating(store: Any, secrets: Iterable[str], *, why: str) -> None:
    """PreconditionError (exit 5) naming a rotation of one of SECRETS that a voke is running
    now (its owner alive and its lease not expired), WHY saying what doing it now would break.
    Only a live one refuses: one that stopped for a person, or whose voke is gone (resumed or
    rolled back later), does not, nor a secret that is missing or cannot be read."""
    for secret in secrets:
        try:
            raw = store.get(secret).annotations.get(ANNOTATION)
            record = RotationRecord.from_json(raw) if raw else None
        except (VokeError, ValueError, TypeError):
            continue
        if record is not None and record.status in ACTIVE and owner_alive(record, _utcnow()):
            raise _running_refusal(record, secret, why)


def _running_refusal(record: RotationRecord, secret: str, why: str) -> PreconditionError:
    return PreconditionError(
        f"rotation {record.id} of {secret} is running (owner {record.owner}, lease until "
        f"{record.lease_until}); {why}; nothing was changed",
        hint="wait for it to finish (`voke rotate status` shows it), then run this again",
    )


@dataclass
class RotationReport:
    """What `voke rotate ...` prints (`result` of --json)."""

    rotation_id: str
    status: str  # succeeded | rolled_back | needs_attention | in_progress
    secret: str
    kind: str
    strategy: str
    previous_version: int | None
    new_version: int | None
    steps: list[StepRecord]
    duration_seconds: float
    started_at: str
    finished_at: str | None = None
    resumed: bool = False
    dry_run: bool = False
    plan: list[str] = field(default_factory=list)
    error: dict[str, str] | None = None
    # Keys left alive that this rotation may have made (`RotationRecord.unclaimed_keys`).
    unclaimed_keys: list[dict[str, str]] = field(default_factory=list)

    @classmethod
    def of(cls, record: RotationRecord, *, t0: float, resumed: bool = False) -> RotationReport:
        return cls(
            rotation_id=record.id,
            status=record.status,
            secret=record.secret,
            kind=record.kind,
            strategy=record.strategy,
            previous_version=record.old_current,
            new_version=record.pending_version,
            steps=list(record.steps),
            # one run's whole rotation: as measured when it ended (an ended one's report repeats it)
            duration_seconds=round(time.monotonic() - t0, 3)
            if record.duration_seconds is None
            else record.duration_seconds,
            started_at=record.started_at,
            finished_at=record.finished_at,
            resumed=resumed,
            error=record.error,
            unclaimed_keys=list(record.unclaimed_keys),
        )

    @classmethod
    def of_ended(cls, record: RotationRecord, *, resumed: bool = False) -> RotationReport:
        """The report of a rotation that had already ended (a resume that only clears its record,
        or one of a rotation found in the history): timed as its run was, from its recorded start
        to its recorded finish, not by this call (which changed nothing of it)."""
        report = cls.of(record, t0=time.monotonic(), resumed=resumed)
        report.duration_seconds = round(record.recorded_seconds(), 3)
        return report


@dataclass
class Outcome:
    """A report plus the error that decides the exit code (None: success)."""

    report: Any
    error: VokeError | None = None


def _utcnow() -> datetime:
    return datetime.now(timezone.utc)


class RotationEngine:
    """Rotates the credentials described by RotationSettings through the given ports."""

    def __init__(
        self,
        *,
        store: Any,
        runtime: Any,
        target: Any,
        settings: RotationSettings,
        credentials: list[Credential] | None = None,
        home: Path,
        audit_home: Path | None = None,
        env_name: str = "local",
        now: Callable[[], datetime] = _utcnow,
        environ: Mapping[str, str] | None = None,
        progress: Progress = lambda _m: None,
        sleep: Callable[[float], None] = time.sleep,
        starting: Callable[[str], AbstractContextManager[None]] = lambda _secret: nullcontext(),
    ) -> None:
        self.store = store
        self.runtime = runtime
        self.target = target
        self.settings = settings
        self.home = home  # the environment's rotation history
        self.audit_home = home if audit_home is None else audit_home  # VOKE_HOME: one audit log, every env
        self.env_name = env_name
        self.now = now
        self.environ = os.environ if environ is None else environ
        self.progress = progress
        self.sleep = sleep
        self.starting = starting  # held while a rotation of the secret it is given starts (`rotate`)
        self.owner = f"{process_host()}:{os.getpid()}"
        self.events_written = 0  # audit events of rotations (`rotation.start` on)
        self._begun: dict[str, float] = {}  # rotation id -> monotonic start of the run that began it
        creds = list(credentials or [])
        for name, user in settings.db_users.items():
            creds.append(DbPassword(name, user, target, length=settings.password_length))
        from voketag_ops.workflows.api_keys import api_key_credentials

        creds += api_key_credentials(settings, store, local=env_name == "local", sleep=sleep)
        from voketag_ops.workflows.jwt import JwtKeyring

        if env_name == "local" and settings.jwt.services:
            from voketag_ops.errors import ConfigError

            raise ConfigError("rotation.jwt.services: the local services read only their database secret")
        creds.append(
            JwtKeyring(settings.jwt, store, now=lambda: self.now(), became_current=self.became_current)
        )
        self.credentials: dict[str, Credential] = {c.name: c for c in creds}

    # -- lookups ------------------------------------------------------------------------------
    def credential(self, name: str, kind: str | None = None) -> Credential:
        """The managed credential NAME (of KIND, when given: the error lists only those)."""
        cred = self.credentials.get(name)
        if cred is None or (kind is not None and cred.kind != kind):
            known = (
                ", ".join(sorted(n for n, c in self.credentials.items() if kind in (None, c.kind))) or "none"
            )
            what = "database login" if kind == "db-password" else "credential"
            raise ValidationError(f"unknown {what} {name!r} (managed: {known})")
        return cred

    def services_of(self, cred: Credential) -> tuple[str, ...]:
        """The services this engine restarts with CRED's secret: all it names (a cloud engine:
        only those its environment runs)."""
        return tuple(cred.services)

    def not_set_up(self, cred: Credential) -> PreconditionError:
        """The refusal to rotate CRED while its secret does not exist: not a usage error (the
        command is right, the state is not there yet), with what creates it."""
        return PreconditionError(
            f"secret {cred.secret!r} does not exist; nothing was changed",
            hint=self.setup_command(cred.secret),
        )

    def require_current(self, secret: str, missing: str) -> None:
        """PreconditionError (exit 5) naming the command that stores SECRET's first version
        when SECRET does not exist or has no `current` version: "secret S holds MISSING"."""
        try:
            exists = "current" in self.store.get(secret).aliases
        except NotFoundError:
            exists = False
        if not exists:
            raise PreconditionError(f"secret {secret} holds {missing}", hint=self.setup_command(secret))

    def setup_command(self, secret: str) -> str:
        """What stores the first version of SECRET, a managed secret that does not exist yet."""
        cred = self._credential_of_secret(secret)
        return setup_command(cred.kind, cred.name, local=self.env_name == "local")

    def _credential_of_secret(self, secret: str) -> Credential:
        for cred in self.credentials.values():
            if cred.secret == secret:
                return cred
        raise ValidationError(f"secret {secret!r} is not a managed credential")

    def _cred(self, secret: str, version: int | None) -> dict[str, Any] | None:
        if version is None:
            return None
        try:
            return json.loads(self.store.access(secret, version))
        except NotFoundError:
            return None

    def _record(self, secret: str) -> tuple[Any, RotationRecord | None]:
        meta = self.store.get(secret)
        raw = meta.annotations.get(ANNOTATION)
        return meta, (RotationRecord.from_json(raw) if raw else None)

    def _owner_alive(self, record: RotationRecord) -> bool:
        return owner_alive(record, self.now())

    # -- rotate ---------------------------------------------------------------------------------
    def rotate_db_password(
        self, user_name: str = "app", *, strategy: str | None = None, dry_run: bool = False
    ) -> Outcome:
        """Rotate the password of a managed database login."""
        self.check_db_password(user_name, strategy=strategy)
        return self.rotate(user_name, dry_run=dry_run)

    def check_db_password(self, user_name: str, *, strategy: str | None = None) -> None:
        """USER_NAME is a managed database login, configured for STRATEGY when one is given
        (ValidationError, exit 2): the configuration alone says, so it is asked before anything starts."""
        cred = self.credential(user_name, "db-password")
        if strategy not in (None, cred.strategy):
            raise ValidationError(
                f"{user_name} is configured for the {cred.strategy} strategy; change rotation.db_users.{user_name}.strategy "
                "(and its roles) instead of overriding it for one run"
            )

    def rotate(self, name: str, *, dry_run: bool = False) -> Outcome:
        """Rotate one managed credential (the whole protocol)."""
        t0 = time.monotonic()
        user = self.credential(name)
        # From the first look at the record until this rotation's own is written, nothing that
        # moves the database may start (locally: the DR lock, held shared): a failover looks
        # for the record once, and found none while this rotation planned and logged in.
        # Once its record is written, an interrupt (even while the claim is let go) names it.
        with self._before_steps("rotation.start", t0) as written, self.starting(user.secret):
            then = self._begin(user, name, t0, dry_run=dry_run, written=written)
        return then()

    def _begin(
        self,
        user: Credential,
        name: str,
        t0: float,
        *,
        dry_run: bool,
        written: list[RotationRecord],
        looks: int = 3,
    ) -> Callable[[], Outcome]:
        """Everything up to and including writing the rotation's record (added to WRITTEN), or
        refusing; what runs after it, the claim let go: the rotation, a resume, or a dry run's report.
        The record's write fails when the secret changed since it was read: everything is looked at
        again (up to LOOKS times in all), so the rotation that wrote its record meanwhile is named,
        and a writer that leaves none (`rotate cleanup`, `secrets add`, a repoint) is no refusal."""
        try:
            meta, existing = self._record(user.secret)
        except NotFoundError:
            raise self.not_set_up(user) from None
        if existing and existing.status == "needs_attention":
            raise PreconditionError(
                f"rotation {existing.id} of {user.secret} stopped and needs a person; nothing was changed",
                hint=unfinished_commands(existing),
            )
        if existing and existing.status == "succeeded":  # finished; the store refused to clear its record
            if dry_run:
                plan = self.plan_unfinished(existing.id, action="resume")["plan"]
                return lambda: Outcome(self._planned(user, t0, plan))
            return lambda: self._resume(existing, t0)  # as a run over an unfinished one: it does only that
        if existing and existing.status in ACTIVE:
            if self._owner_alive(existing):
                raise PreconditionError(
                    f"rotation {existing.id} of {user.secret} is running (owner {existing.owner}, "
                    f"lease until {existing.lease_until}); nothing was changed"
                )
            requested = getattr(user, "strategy", existing.strategy)
            if requested == EMERGENCY and existing.strategy != EMERGENCY:
                # Resuming a normal rotation would leave the compromised key signing. (A normal run
                # over an unfinished emergency resumes it as the emergency it is.)
                raise PreconditionError(
                    f"rotation {existing.id} of {user.secret} ({existing.strategy}) is unfinished; an "
                    "emergency rotation cannot resume it: nothing was changed",
                    hint=f"{rollback_command(existing.id)}, then run this again",
                )
            if dry_run:  # what the real run would do, which is finishing that one: nothing changes
                steps = self.plan_unfinished(existing.id, action="resume")["plan"]
                first = f"finish the unfinished rotation {existing.id} first (a run does only that):"
                return lambda: Outcome(self._planned(user, t0, [first, *steps]))
            self.progress(f"finishing the unfinished rotation {existing.id} first")
            return lambda: self._resume(existing, t0)
        if "current" not in meta.aliases:
            raise ValidationError(f"secret {user.secret!r} has no `current` version to rotate from")
        usable = {"current": READABLE, "previous": KEPT}
        if (unreadable := unreadable_alias(self.store, meta, usable)) is not None:
            raise PreconditionError(f"{unreadable.message}; nothing was changed", hint=unreadable.hint)
        # Kind-specific conditions (configuration, a pasted key, a JWT key still waiting), before the lock.
        precheck = getattr(user, "precheck", None)
        if precheck is not None:
            precheck(meta, dry_run=dry_run)
        # The plan a dry run shows is made for a real run too: what stops it (a current login
        # that is not one of the configured roles) stops the run before the lock, not after.
        planned = self._plan(user, meta, t0)
        if dry_run:
            return lambda: Outcome(planned)
        # A key the operator pasted is verified before it is stored; it needs no working old one.
        if not getattr(user, "operator_supplies_value", False):
            self._drift_check(user, meta)
        now = self.now()
        record = RotationRecord(
            id=new_rotation_id(now),
            secret=user.secret,
            kind=user.kind,
            strategy=user.strategy,
            target=name,
            owner=self.owner,
            lease_until=iso(now + timedelta(seconds=self.settings.lease_seconds)),
            started_at=iso(now),
            step="lock",
            old_current=meta.aliases.get("current"),
            old_previous=meta.aliases.get("previous"),
            steps=[StepRecord("lock", "done", 0.0)],
        )
        try:
            self.store.update(user.secret, etag=meta.etag, annotations={ANNOTATION: record.to_json()})
        except EtagMismatchError:
            # Nothing of this rotation was written. Another rotation's record is named by the next
            # look (running: exit 5; its voke gone: finished first, as any run over it does).
            if looks > 1:
                log.info("%s changed while a rotation of it started; looking again", user.secret)
                return self._begin(user, name, t0, dry_run=dry_run, written=written, looks=looks - 1)
            raise PreconditionError(
                f"{user.secret} kept changing while this rotation started (another writer: a rotation, "
                "`rotate cleanup`, `secrets add`); nothing was changed",
                hint="run this again",
            ) from None
        except KeyboardInterrupt:
            # Cut while the store wrote the record: what the interrupt says depends on whether
            # it landed, so the store is asked (settled, not guessed).
            if self._landed(record):
                written.append(record)  # `_before_steps` names it, to resume or roll back
            raise
        written.append(record)
        return lambda: self._started(record, t0)

    def _landed(self, record: RotationRecord) -> bool:
        """Whether RECORD, whose write was interrupted, is the one stored: False if the store
        holds none of it; Interrupted naming the rotation if the store cannot say."""
        try:
            stored = self._record(record.secret)[1]
        except (VokeError, KeyboardInterrupt):
            raise Interrupted(
                f"{interrupts.stopped_by()} while rotation {record.id} of {record.secret} was being "
                "recorded; whether it was is unknown (nothing else was changed)",
                hint=f"voke rotate status  (if it lists {record.id}: {unfinished_commands(record)})",
            ) from None
        return stored is not None and stored.id == record.id

    def _started(self, record: RotationRecord, t0: float) -> Outcome:
        """Run the rotation whose record was just written."""
        with self._before_steps("rotation.start", t0, record):
            self._begun[record.id] = t0
            self._audit("rotation.start", record, "started", duration=time.monotonic() - t0)
            self._fault("lock")
        with self._on_interrupt("rotation.start", record, t0):
            return self._run(record, t0)

    def _planned(
        self, cred: Credential, t0: float, plan: list[str], previous_version: int | None = None
    ) -> RotationReport:
        """A dry run's report: PLAN, nothing done."""
        return RotationReport(
            rotation_id="(dry run)",
            status="planned",
            secret=cred.secret,
            kind=cred.kind,
            strategy=cred.strategy,
            previous_version=previous_version,
            new_version=None,
            steps=[],
            duration_seconds=round(time.monotonic() - t0, 3),
            started_at=iso(self.now()),
            dry_run=True,
            plan=plan,
        )

    def _plan(self, cred: Credential, meta: Any, t0: float) -> RotationReport:
        current = self._cred(cred.secret, meta.aliases.get("current"))
        if current is None:  # disabled since `_begin` looked: the plan is never made from nothing
            raise PreconditionError(
                f"secret {cred.secret}: current version {meta.aliases.get('current')} cannot be read; "
                "nothing was changed",
                hint=f"`voke secrets versions {cred.secret}` shows its state",
            )
        plan = [
            f"lock {cred.secret} (lease {self.settings.lease_seconds} s)",
            *cred.plan(current),
            f"test it ({self.settings.test_attempts} tries, {self.settings.test_interval:g} s apart)",
            f"move current -> new version, previous -> {meta.aliases.get('current')}",
            f"restart {', '.join(self.services_of(cred)) or 'no services'} pinned to the new version (blue-green)",
            "wait until every service is healthy on its new instance",
            "record the audit event and the next due date",
        ]
        return self._planned(cred, t0, plan, meta.aliases.get("current"))

    def _drift_check(self, credential: Credential, meta: Any) -> None:
        """At least one stored credential must log in, or a person has to look (exit 7, no change).
        Asked as often as the test step asks (`test_attempts`, `test_interval` apart): a value
        just set back by a rollback may not be accepted yet (Auth0 takes up to 30 s)."""
        tried: list[str] = []
        secret = credential.secret
        for attempt in range(max(1, self.settings.test_attempts)):
            if attempt:
                self.sleep(self.settings.test_interval)
            tried = []
            for alias in ("current", "pending", "previous"):
                cred = self._cred(secret, meta.aliases.get(alias))
                if cred is None:
                    continue
                tried.append(alias)
                try:
                    works = self._tried(partial(credential.authenticates, cred), (ConnectivityError,))[0]
                except VokeError as exc:
                    if exc.exit_code != ExitCode.BACKEND:
                        raise
                    raise type(exc)(
                        f"drift check (before the lock): {exc.message}; nothing was changed", hint=exc.hint
                    ) from None
                if works:
                    if alias != "current":
                        log.warning("the current credential of %s does not log in; %s does", secret, alias)
                    return
            if not tried:
                break
        raise NeedsOperatorError(
            f"no stored credential of {secret} ({', '.join(tried) or 'none'}) works against its "
            f"target ({credential.kind}); nothing was changed",
            hint=getattr(credential, "drift_hint", None)
            or f"find out who changed it there, set it back to the value `voke secrets access {secret}` "
            "shows, then rotate again",
        )

    # -- running steps ----------------------------------------------------------------------------------
    def _run(self, record: RotationRecord, t0: float, *, resumed: bool = False) -> Outcome:
        unwritten: NeedsOperatorError | None = None
        step = record.step  # the last one recorded, until the next begins
        # A Ctrl-C anywhere in the steps, their progress lines and the saves of their records
        # included, and between them, gives the lease up and names the rotation to resume (a bare
        # exit 130 kept the lease). So does one while the finish is recorded, told and its record
        # cleared (`_end`): resume finishes it (or writes what is missing, or only clears the
        # record); a rollback would undo a rotation that worked. One after it ended (the second,
        # `interrupts.decided`) goes on as it came: its answer (`interrupts.message`) says how it ended.
        try:
            user = self._credential_of_secret(record.secret)
            for step in record.next_steps():
                stopped = self._run_step(record, step, user, t0, resumed)
                if stopped is not None:
                    return stopped
                if step == "finish":
                    unwritten = self._end(record, t0)
                self._fault(step)
        except KeyboardInterrupt:
            if interrupts.outcome():  # it had ended (`_end`, `_needs_attention`): its answer says how
                raise
            if step == "finish":  # the record as stored, not this one (already `succeeded`)
                if not self._release_stored(record):  # cleared: it succeeded, nothing to resume
                    raise Interrupted(
                        f"rotation {record.id} succeeded; {interrupts.stopped_by()} once its history "
                        "and audit event were written",
                        hint=self._voke("voke rotate status") + " shows the current version",
                    ) from None
                raise Interrupted(
                    f"rotation {record.id} {interrupts.stopped_by()} {_where(record, step)}; "
                    "its state is recorded",
                    hint=resume_command(record.id),
                ) from None
            raise self._cut(record, step) from None
        return Outcome(RotationReport.of(record, t0=t0, resumed=resumed), unwritten)

    def _run_step(
        self, record: RotationRecord, step: str, user: Credential, t0: float, resumed: bool
    ) -> Outcome | None:
        """Run STEP and save its record: None to go on, or the Outcome the recovery of its
        failure (or of its unsaved record) ends the rotation with."""
        actions: dict[str, Callable[[RotationRecord, Credential], str]] = {
            "create_pending": self._create_pending,
            "set_target": self._set_target,
            "test": self._test,
            "commit": self._commit,
            "deploy": self._deploy,
            "health": self._health,
            "finish": self._finish,
        }
        self.progress(f"rotate {record.secret}: {step}")
        started = time.monotonic()
        try:
            with self._lease_kept(record) if step in _KEPT_STEPS else nullcontext():
                detail = actions[step](record, user)
        except NeedsOperatorError:
            raise  # the lease went to another run: its record is not this run's to change
        except VokeError as exc:
            failure, began = _step_failure(step, exc)
            return self._fail(record, step, failure, time.monotonic() - started, t0, resumed, began=began)
        record.steps.append(
            StepRecord(
                step,
                "skipped" if detail.startswith("skipped") else "done",
                round(time.monotonic() - started, 3),
                detail,
            )
        )
        record.step = step
        if step == "finish":  # its record is cleared (`_end`), not saved
            return None
        try:
            self._save(record)
        except NeedsOperatorError:
            raise  # the lease went to another run
        except VokeError as exc:
            return self._unsaved(record, step, exc, t0, resumed)
        return None

    def _save(
        self,
        record: RotationRecord,
        *,
        aliases: dict[str, int | None] | None = None,
        annotations: dict[str, str | None] | None = None,
    ) -> None:
        """Record progress with a compare-and-swap; renews the lease."""
        meta = self.store.get(record.secret)
        raw = meta.annotations.get(ANNOTATION)
        if raw:
            stored = RotationRecord.from_json(raw)
            if stored.id != record.id or stored.owner != record.owner:
                raise NeedsOperatorError(
                    f"rotation {record.id} lost its lease on {record.secret} to {stored.id} ({stored.owner})",
                    hint=f"that voke runs it now; {self._voke('voke rotate status')} shows whether it still does",
                )
        elif record.status in ACTIVE:
            raise NeedsOperatorError(f"rotation {record.id}: its record vanished from {record.secret}")
        record.lease_until = iso(self.now() + timedelta(seconds=self.settings.lease_seconds))
        changes: dict[str, str | None] = {ANNOTATION: record.to_json()}
        changes.update(annotations or {})
        self.store.update(record.secret, etag=meta.etag, aliases=aliases, annotations=changes)

    @contextmanager
    def _lease_kept(self, record: RotationRecord) -> Iterator[None]:
        """Renew RECORD's lease every third of it while the block runs (a step that writes nothing
        to the secret), so a live voke's rotation is never taken for one whose voke is gone, nor
        taken over, however long the step waits. Stopped before the block's end goes on: the
        step's record is then saved by a compare-and-swap this renewal cannot race."""
        stop = threading.Event()

        def beat() -> None:
            while not stop.wait(self.settings.lease_seconds / 3):
                try:
                    if not self._renew(record):
                        return
                except Exception as exc:  # a store hiccup: the next beat, or the step's save, tells
                    log.warning("could not renew the lease of %s: %s", record.id, exc)

        thread = threading.Thread(target=beat, name=f"lease {record.id}", daemon=True)
        thread.start()
        try:
            yield
        finally:
            stop.set()
            thread.join()

    def _renew(self, record: RotationRecord) -> bool:
        """Move the stored lease of RECORD on (its record as stored, nothing else); False when the
        stored record is no longer this run's."""
        meta = self.store.get(record.secret)
        raw = meta.annotations.get(ANNOTATION)
        stored = RotationRecord.from_json(raw) if raw else None
        if (
            stored is None
            or stored.id != record.id
            or stored.owner != record.owner
            or stored.status not in ACTIVE
        ):
            return False
        stored.lease_until = iso(self.now() + timedelta(seconds=self.settings.lease_seconds))
        try:
            self.store.update(record.secret, etag=meta.etag, annotations={ANNOTATION: stored.to_json()})
        except EtagMismatchError:
            pass  # written meanwhile (by hand?): the next beat reads it again
        return True

    def _unsaved(
        self, record: RotationRecord, step: str, exc: VokeError, t0: float, resumed: bool
    ) -> Outcome:
        """STEP took effect but the store refused its record: a person decides (every step is
        safe to run again, so resume finishes it; rollback undoes it). Never "nothing was
        changed", and no rollback through the store that just failed."""
        why = f"{step} took effect, but its record could not be saved ({exc.type_name}: {exc.message})"
        record.error = {"step": step, "kind": SecretError.kind, "message": why}
        log.warning("rotation %s: %s", record.id, why)
        return self._needs_attention(record, t0, resumed, why)

    def _cut(self, record: RotationRecord, step: str) -> Interrupted:
        """A Ctrl-C or SIGTERM during STEP (or after it: the last one recorded) of RECORD, not
        its finish: the lease given up, the answer names the rotation to resume or roll back."""
        self._release(record)
        if record.status == "rolling_back":  # taken over to finish its rollback, not begun yet
            return Interrupted(
                f"the rollback of rotation {record.id} was {interrupts.stopped_by()}; its state is recorded",
                hint=f"{rollback_command(record.id)}   (finishes it)",
            )
        return Interrupted(
            f"rotation {record.id} {interrupts.stopped_by()} {_where(record, step)}; its state is recorded",
            hint=unfinished_commands(record),
        )

    @contextmanager
    def _before_steps(
        self, event_type: str, t0: float, *records: RotationRecord
    ) -> Iterator[list[RotationRecord]]:
        """From writing (or taking over) the record of a rotation until its steps (or its
        rollback) go on: a Ctrl-C or SIGTERM there stops it as one between steps does (`_cut`),
        with its `interrupted` event. The record is RECORDS, or what the block adds to the list
        it gets (none yet: the interruption propagates as it came)."""
        written = list(records)
        try:
            yield written
        except KeyboardInterrupt:
            if not written:
                raise
            record = written[0]
            with self._on_interrupt(event_type, record, t0):
                raise self._cut(record, record.step) from None

    def _fault(self, step: str) -> None:
        """The documented fault switch: die abruptly (no cleanup, no finally) after STEP."""
        if self.environ.get(FAULT_ENV) == step:
            os._exit(FAULT_EXIT_CODE)

    def _release(self, record: RotationRecord) -> None:
        """Give up the lease at once (Ctrl-C) so `resume` can continue without waiting. A lost
        compare-and-swap is read again and retried: a renewal (`_lease_kept`) still in flight when
        a second Ctrl-C cut its join short lands once, and would otherwise keep the lease out."""
        record.lease_until = iso(self.now())
        for attempt in range(3):
            try:
                meta = self.store.get(record.secret)
                raw = meta.annotations.get(ANNOTATION)
                if not raw or RotationRecord.from_json(raw).owner != record.owner:
                    return  # ended, or taken over: not this run's record to write back
                self.store.update(record.secret, etag=meta.etag, annotations={ANNOTATION: record.to_json()})
                return
            except EtagMismatchError as exc:
                if attempt == 2:
                    log.warning("could not release the lease of %s: %s", record.id, exc.message)
            except VokeError as exc:
                log.warning("could not release the lease of %s: %s", record.id, exc.message)
                return

    # -- the steps ------------------------------------------------------------------------------------------
    def _create_pending(self, record: RotationRecord, cred: Credential) -> str:
        meta = self.store.get(record.secret)
        found = self._find_pending(record, meta)
        if found is not None:
            record.pending_version = found
            self._save(record, aliases={"pending": found})
            return f"skipped: reusing version {found}"
        current = self._cred(record.secret, record.old_current)
        if current is None:
            raise SecretError(f"{record.secret}: the current version {record.old_current} cannot be read")
        try:
            value = cred.existing(record.id) or cred.create(record.id, current)
        finally:  # a rerun's create looks for what an earlier one left first, even if it then fails
            self._take_unclaimed(record, cred)
        value["rotation_id"] = record.id
        version = self.store.add_version(record.secret, json.dumps(value).encode()).version
        record.pending_version = version
        self._save(record, aliases={"pending": version})
        who = value.get("username") or value.get("key_id") or value.get("label") or cred.name
        return f"version {version} for {who}"

    @staticmethod
    def _take_unclaimed(record: RotationRecord, cred: Credential) -> None:
        """What CRED's create or discard of RECORD left alive, unable to tell it from another
        consumer's key (a service-account key whose create answer was lost), into RECORD: its
        report and `rotation.finish` event name it, not only a warning on stderr."""
        found = getattr(cred, "unclaimed", {}).get(record.id)
        if found is not None:
            record.unclaimed_keys = list(found)

    def _find_pending(self, record: RotationRecord, meta: Any) -> int | None:
        """A version this rotation already stored (it may have died before recording it)."""
        if record.pending_version and (v := meta.version(record.pending_version)) and v.state == "enabled":
            return record.pending_version
        for v in sorted(meta.versions, key=lambda v: v.version, reverse=True):
            if record.old_current is not None and v.version <= record.old_current:
                break
            if v.state != "enabled":
                continue
            cred = self._cred(record.secret, v.version)
            if cred and cred.get("rotation_id") == record.id:
                return v.version
        return None

    def _stored_pending(self, record: RotationRecord) -> int | None:
        """The recorded pending version, or one a run stored and died before recording (an
        orphan a rollback must disable too), found as `resume` finds it."""
        if record.pending_version is not None:
            return record.pending_version
        return self._find_pending(record, self.store.get(record.secret))

    def _pending(self, record: RotationRecord) -> dict[str, Any]:
        cred = self._cred(record.secret, record.pending_version)
        if cred is None:
            raise SecretError(f"{record.secret}: pending version {record.pending_version} cannot be read")
        return cred

    def _set_target(self, record: RotationRecord, cred: Credential) -> str:
        pending = self._pending(record)
        if self._tried(lambda: cred.authenticates(pending), (ConnectivityError,))[0]:
            return "skipped: the target already accepts the pending value"
        return cred.apply(pending, self._cred(record.secret, record.old_current))

    def _test(self, record: RotationRecord, cred: Credential) -> str:
        pending = self._pending(record)

        def attempt() -> None:
            if not cred.authenticates(pending):
                raise AuthenticationError(f"{cred.name}: the pending value is rejected by its target")

        tries = self._tried(attempt, (AuthenticationError, ConnectivityError))[1]
        return f"fresh login with the pending value ok (try {tries} of {self.settings.test_attempts})"

    def _tried(self, fn: Callable[[], T], retried: tuple[type[RotationFailure], ...]) -> tuple[T, int]:
        """FN's answer and the tries it took: a failure of a RETRIED kind (a provider's 429 or 5xx,
        an unreachable target: ConnectivityError) is tried again as the test step tries,
        `test_attempts` times `test_interval` apart; the last is raised, "(after N tries)"."""
        from tenacity import RetryError, Retrying, retry_if_exception_type, stop_after_attempt, wait_fixed

        attempts, tries = self.settings.test_attempts, 0

        def once() -> T:
            nonlocal tries
            tries += 1
            return fn()

        retrying = Retrying(
            stop=stop_after_attempt(attempts),
            wait=wait_fixed(self.settings.test_interval),
            retry=retry_if_exception_type(retried),
            sleep=self.sleep,
        )
        try:
            return retrying(once), tries
        except RetryError as exc:
            last = exc.last_attempt.exception()
            assert isinstance(last, RotationFailure)
            raise type(last)(f"{last.message} (after {attempts} tries)", hint=last.hint) from None

    def _commit(self, record: RotationRecord, user: Credential) -> str:
        meta = self.store.get(record.secret)
        if meta.aliases.get("current") == record.pending_version:
            return "skipped: current already points at the new version"
        last = record.step
        record.step = "commit"  # the alias move and its record are one compare-and-swap
        record.committed_at = iso(self.now())
        try:
            self._save(
                record,
                aliases={"current": record.pending_version, "previous": record.old_current, "pending": None},
            )
        except KeyboardInterrupt:
            # The swap may not have landed: the record Ctrl-C leaves must not say it did (a resume
            # would go on to deploy a version that is not current and roll back). Run again, the
            # commit is skipped if it had landed.
            record.step, record.committed_at = last, None
            raise
        return f"current -> {record.pending_version}, previous -> {record.old_current}"

    def _deploy(self, record: RotationRecord, user: Credential) -> str:
        assert record.pending_version is not None
        current = self.store.get(record.secret).aliases.get("current")
        if current != record.pending_version:  # the commit was undone (a rollback begun by hand)
            raise SecretError(
                f"{record.secret}: current is version {current}, not the new {record.pending_version}; "
                "services are not moved to a version that is not current"
            )
        services = self.services_of(user)
        if services:
            self.runtime.deploy_many({svc: (record.secret, record.pending_version) for svc in services})
        return f"{len(services)} service(s) on version {record.pending_version}"

    def _health(self, record: RotationRecord, user: Credential) -> str:
        deadline = time.monotonic() + self.settings.health_timeout
        services = self.services_of(user)
        pending = set(services)
        while pending and time.monotonic() < deadline:
            pending = {
                svc for svc in pending if not self._healthy_on(svc, record.secret, record.pending_version)
            }
            if pending:
                self.sleep(0.2)
        if pending:
            raise HealthCheckError(
                f"not healthy on version {record.pending_version}: {', '.join(sorted(pending))}"
            )
        return f"{len(services)} service(s) healthy"

    def _wait_unpinned(self, secret: str, version: int) -> None:
        """Wait until no live instance reads VERSION any more: the ones moved off it answer the
        requests they were sent while they drain, and would fail them once its login is
        changed back (a rollback's 503s)."""
        deadline = time.monotonic() + DRAIN_WAIT_SECONDS
        while version in self.runtime.live_versions(secret):
            if time.monotonic() >= deadline:
                log.warning(
                    "%s: instances on version %d still draining; rolling its login back anyway",
                    secret,
                    version,
                )
                return
            self.sleep(0.2)

    def _healthy_on(self, service: str, secret: str, version: int | None) -> bool:
        """SERVICE serves VERSION of SECRET, healthily. Asked of SECRET itself: a service may read
        several managed secrets, and another one's version says nothing about this one."""
        return self.runtime.serving_version(service, secret) == version and self.runtime.health(service)

    def _finish(self, record: RotationRecord, user: Credential) -> str:
        now = self.now()
        record.status = "succeeded"
        record.finished_at = iso(now)
        due = next_due(getattr(self.settings.schedule, user.schedule), now)
        early = getattr(user, "due_at", None)  # a JWT key just published is due for promotion soon
        if early is not None and (at := early(self.store.get(record.secret))) is not None:
            due = min(due, at)
        return f"next due {iso(due)}"

    def _end(self, record: RotationRecord, t0: float) -> NeedsOperatorError | None:
        """Clear the in-progress record, keep a summary, write history and the audit event.
        A rotation that succeeded is first recorded as finished in its record (step finish,
        status succeeded, `untold`), where every later run sees it, on any machine: a resume
        that finds it so writes only what this machine's history and audit log lack, and one
        that finds it told (its clear refused) only clears it (see `_resume`). The store
        refusing that record means nothing was written yet: a warning, and the resume it names
        runs finish again. Its history line and `rotation.finish` event are written while that
        record stands, and it is cleared only once both are: one that cannot be written (a
        full or read-only disk) leaves it `untold`, its lease given up, and is the error
        returned (exit 7, naming the resume that writes it; see `_tell`). The store refusing
        the clear is a warning naming the resume that clears it, not a failure (current moved,
        services healthy): history, audit and webhook still tell of the success. A rollback's
        record is cleared first (left standing, a resume would roll it back again), then its
        history line and event are tried the same way: one that cannot be written is the error
        returned too (exit 7, the rollback standing, nothing to resume)."""
        # Ended: a signal from here to the printed report waits (`_notify_ended`), from before the
        # finish is recorded: a resume that finds it recorded writes no history nor finish event.
        interrupts.decided()
        # This run's duration as it measured it (T0: its monotonic start). When this run also
        # started the rotation that is the rotation's own, kept in its record for a resume that
        # only clears it and for the history; one a later run resumed or rolled back keeps none
        # (no monotonic reading spans processes): `recorded_seconds` falls back.
        took = round(time.monotonic() - t0, 3)
        record.duration_seconds = took if self._begun.get(record.id) == t0 else None
        stands = False  # the record of one that succeeded, left for a resume (its clear refused)
        with interrupts.Held(give_way_after=1) as held:
            if record.status != "succeeded":
                self._clear(record)
                unwritten = self._tell(record, took)  # lost for good if unwritten: the record is gone
            elif not self._record_finished(record):
                self._decided(record, None, stands=True)
                return None
            elif (unwritten := self._tell(record, took)) is None:
                stands = not self._clear(record)
            else:
                self._release_stored(record)  # still `untold`: the resume writes what is missing
            self._decided(record, unwritten, stands=stands)
            self._notify_ended(record, held)
            return unwritten

    def _decided(self, record: RotationRecord, unwritten: NeedsOperatorError | None, *, stands: bool) -> None:
        """What the answer of a second signal from here to the printed report says (until here
        `_run` and `_rollback` answer it): how RECORD ended and what is left, as its answer
        would have said: what could not be written (`_tell`), the resume that finishes its
        record left standing (STANDS: the store refused to record its finish or to clear it),
        the retry of one rolled back, or nothing."""
        ended = f"rotation {record.id} of {record.secret}"
        if unwritten is not None:
            interrupts.decided(unwritten.message, unwritten.hint or "")
        elif record.status != "succeeded":
            how, again = _rolled_back(record)
            interrupts.decided(f"{ended} {how}", again)
        elif stands:
            interrupts.decided(f"{ended} succeeded", f"`{resume_command(record.id)}` finishes it")
        else:
            interrupts.decided(f"{ended} succeeded", "`voke rotate history` shows it")

    def _tell(
        self, record: RotationRecord, took: float, *, history: bool = True, event: bool = True
    ) -> NeedsOperatorError | None:
        """Write RECORD's history line (HISTORY) and `rotation.finish` event (EVENT; TOOK, its
        duration), each tried: None, or what could not be written (a full or read-only disk) as
        `audited` says it of a command's event: the rotation succeeded, or was rolled back (exit
        7, never exit 4's "nothing was changed", which has a cron wrapper rotate again, nor a
        rollback's exit 6 that says nothing was lost). A success's resume writes it; a rollback
        has ended, its record cleared: nothing to resume, and a new rotation is safe."""
        from voketag_ops.audit import FREE_SPACE, AuditWriteError

        writes: list[tuple[str, Callable[[], None]]] = []
        if history:
            writes.append(("history line", lambda: self._history(record)))
        if event:
            writes.append(
                (
                    "rotation.finish audit event",
                    lambda: self._audit("rotation.finish", record, record.status, duration=took),
                )
            )
        unwritten, why, fix = [], [], "fix what the message names"
        for what, write in writes:
            try:
                write()
            except OSError as exc:  # (the history's, naming its file)
                unwritten.append(what)
                why.append(f"{exc.filename}: {exc.strerror}")
                fix = FREE_SPACE if exc.errno in DISK_REFUSED else fix
            except VokeError as exc:
                unwritten.append(what)
                why.append(exc.message)
                fix = FREE_SPACE if isinstance(exc, AuditWriteError) and exc.disk_refused else fix
        if not unwritten:
            return None
        if record.status == "succeeded":
            ended = "succeeded"
            hint = f"{fix}, then: {resume_command(record.id)}   (it writes what is missing; the rotation is not run again)"
        else:
            ended, again = _rolled_back(record)
            hint = f"{fix}; the rollback stands (nothing to resume); {again}"
        return NeedsOperatorError(
            f"rotation {record.id} of {record.secret} {ended}, but its {' and '.join(unwritten)} "
            f"could not be written: {'; '.join(why)}",
            hint=hint,
        )

    def _record_finished(self, record: RotationRecord) -> bool:
        """Save RECORD, which succeeded, as finished before its finish is written anywhere else,
        and as `untold` until history and audit are. False (a warning, the stored record at
        health given up) when the store refuses it."""
        record.untold = True
        try:
            self._save(record)
        except NeedsOperatorError:
            raise  # the lease went to another run: its record is not this run's to change
        except VokeError as exc:
            log.warning(
                "rotation %s succeeded, but the store refused to record its finish on %s (%s); `%s` finishes it",
                record.id,
                record.secret,
                exc.message,
                self._voke(resume_command(record.id)),
            )
            self._release_stored(record)
            return False
        finally:
            record.untold = None  # the stored record's alone: its history line, event and report say none
        return True

    def _clear(self, record: RotationRecord) -> bool:
        """Clear RECORD's in-progress record from its secret, keeping its summary. For a
        rotation that succeeded a refusal is a warning naming the resume that clears it (False)."""
        try:
            meta = self.store.get(record.secret)
            annotations = {ANNOTATION: None, LAST_ANNOTATION: json.dumps(record.summary())}
            became = record.became_current()
            if became is not None:  # kept as it is by a rotation that does not succeed
                annotations[CURRENT_ANNOTATION] = json.dumps(became)
            self.store.update(record.secret, etag=meta.etag, annotations=annotations)
        except VokeError as exc:
            if record.status != "succeeded":
                raise
            log.warning(
                "rotation %s succeeded, but its record on %s could not be cleared (%s); `%s` clears it",
                record.id,
                record.secret,
                exc.message,
                self._voke(resume_command(record.id)),
            )
            self._release_stored(record, told=True)  # its history and audit event are written
            return False
        return True

    def _release_stored(self, record: RotationRecord, *, told: bool = False) -> bool:
        """Give up the lease of RECORD's stored record (what resume continues from), as stored;
        TOLD: no longer `untold`, as its history and audit event are written in this run. False
        when there is none left (cleared: the rotation has ended), True when there is one or it
        cannot be read (then a resume is what to suggest)."""
        try:
            stored = self._record(record.secret)[1]
        except VokeError:
            return True  # (unknown: say what a resume would do)
        if stored is None or stored.id != record.id:
            return False
        if told:
            stored.untold = None
        self._release(stored)
        return True

    def _voke(self, command: str) -> str:
        """COMMAND (`voke ...`) to paste, naming this engine's environment when it is a cloud
        one (as the CLI's errors do): pasted elsewhere, it acts on the same environment."""
        from voketag_ops.output import name_env

        return name_env(command, self.env_name)

    def _notify_ended(self, record: RotationRecord, held: interrupts.Held) -> None:
        """The webhook, once the rotation has ended, within HELD: a Ctrl-C or SIGTERM by then (a
        slow endpoint, up to its timeout) skips the notification; it never turns the ended
        rotation into exit 130 with nothing to resume (an operator would run it again), nor
        does one after it, until the report is printed (`interrupts.decided`, in the script)."""
        told = False
        try:
            if not held.fired:
                self._notify(record)
                told = True
        except KeyboardInterrupt:  # the second signal, while the webhook was waited for
            pass
        if not told and self.settings.notify_webhook:
            log.warning(
                "interrupted: rotation %s has ended (%s); its webhook was not told", record.id, record.status
            )

    # -- failure and rollback ---------------------------------------------------------------------------
    def _fail(
        self,
        record: RotationRecord,
        step: str,
        exc: RotationFailure,
        took: float,
        t0: float,
        resumed: bool,
        *,
        began: bool = True,
    ) -> Outcome:
        """Apply EXC's recovery. A step that never BEGAN is rolled back as far as the steps
        before it went (a set_target Cloud SQL never started: the pending version is discarded)."""
        record.steps.append(StepRecord(step, "failed", round(took, 3), f"{exc.kind}: {exc.message}"))
        record.error = {"step": step, "kind": exc.kind, "message": exc.message}
        log.warning("rotation %s failed at %s: %s: %s", record.id, step, exc.kind, exc.message)
        if exc.recovery == "operator" and began:  # (one that never began left nothing to look at)
            return self._needs_attention(record, t0, resumed, f"{exc.kind} at {step}: {exc.message}")
        try:
            unwritten = self._rollback(record, t0, failed_step=step if began else record.step)
        except Interrupted:
            raise
        except VokeError as rb_exc:
            return self._needs_attention(
                record,
                t0,
                resumed,
                f"{exc.kind} at {step}: {exc.message}; the rollback failed too: {rb_exc.message}",
            )
        error = unwritten or RolledBackError(
            f"rotation {record.id} of {record.secret} failed at {step} ({exc.kind}: {exc.message}); rolled back",
            hint=f"safe to retry: {retry_command(record)}"
            if exc.recovery != "operator"
            else f"nothing was changed; fix the cause, then: {retry_command(record)}",
        )
        return Outcome(RotationReport.of(record, t0=t0, resumed=resumed), error)

    def _needs_attention(self, record: RotationRecord, t0: float, resumed: bool, why: str) -> Outcome:
        """Stop RECORD for a person (exit 7): its record saved as `needs_attention`, its lease
        given up, its `rotation.finish` event written, the hint and webhook naming what to paste
        (`unfinished_commands`: its resume or its rollback, the resume alone once a rollback was
        refused). The audit log is local: a store that
        refuses the record or cannot be reached keeps the record its last save left (what a
        resume or rollback takes over), and the event and error say the stored record is not
        updated. No history line: it has not ended (its resume or rollback writes one)."""
        record.status = "needs_attention"
        record.lease_until = iso(self.now())
        noted: dict[str, str] | None = None  # the event's error, when it must say more than the record's
        try:
            meta = self.store.get(record.secret)
            self.store.update(record.secret, etag=meta.etag, annotations={ANNOTATION: record.to_json()})
        except VokeError as exc:
            unsaved = f"the stored record is not updated ({exc.type_name}: {exc.message})"
            failed = record.error or {"message": why}
            noted = {**failed, "message": f"{failed['message']}; {unsaved}"}
            why = f"{why}; {unsaved}"
        try:
            self._audit(
                "rotation.finish", record, "needs_attention", duration=time.monotonic() - t0, error=noted
            )
        except VokeError as exc:  # (a full disk): said as `_tell` says it, the stop stands
            why = f"{why}; its rotation.finish audit event could not be written: {exc.message}"
        error = NeedsOperatorError(
            f"rotation {record.id} of {record.secret} stopped: {why}",
            hint=f"fix the cause, then: {unfinished_commands(record)}",
        )
        interrupts.decided(error.message, error.hint or "")  # stopped for a person: exit 7, not a bare 130
        with interrupts.Held(give_way_after=1) as held:
            self._notify_ended(record, held)
        return Outcome(RotationReport.of(record, t0=t0, resumed=resumed), error)

    def _scope(self, record: RotationRecord, failed_step: str | None = None) -> str:
        """The rollback scope: that of the step in flight (FAILED_STEP, or the step after the last
        one recorded), widened to restore_aliases when the store shows the commit happened."""
        scope = record.rolling_back or rollback_scope(
            failed_step or next(iter(record.next_steps()), record.step)
        )
        meta = self.store.get(record.secret)
        if record.pending_version is not None and meta.aliases.get("current") == record.pending_version:
            scope = "restore_aliases"
        return scope

    def _rollback(
        self, record: RotationRecord, t0: float, *, failed_step: str | None = None
    ) -> NeedsOperatorError | None:
        """Undo whatever the rotation may have done (the issue's recovery rules); what of its
        history line and `rotation.finish` event could not be written is returned (`_end`).

        The scope is that of the step in flight (FAILED_STEP, or the step after the last one
        recorded): a step that failed or was killed may still have taken effect, and every
        restore is idempotent. The store widens it: if `current` already points at the new
        version, the commit happened even if it was never recorded.
        """
        scope = self._scope(record, failed_step)
        # Recorded before the first change: resumed, a rollback is finished, never redone forward.
        if record.rolling_back is None:
            self._refuse_rollback_to_nothing(record, scope)
            record.status, record.rolling_back = "rolling_back", scope
            record.rollback_refused = None  # the old value works again: the rollback runs
            self._save(record)
        try:
            return self._undo(record, scope, t0)
        except KeyboardInterrupt:
            self._release(record)
            raise Interrupted(
                f"the rollback of rotation {record.id} was {interrupts.stopped_by()}; its state is recorded",
                hint=f"{rollback_command(record.id)}   (finishes it)",
            ) from None

    def _refuse_rollback_to_nothing(self, record: RotationRecord, scope: str) -> None:
        """Before a rollback changes anything: NeedsOperatorError (exit 7, the rotation left as it
        is, to resume) when the value it goes back to no longer authenticates and the new one does
        (the target took the new value after all; an old key expired or deleted at the provider,
        as a Stripe Dashboard roll with "expire now" does): disabling the new version would leave
        nothing that works. Not asked where the rollback itself sets the old value back (one
        credential, its target changed), nor answered when the provider cannot be reached (the
        rollback goes on, as before)."""
        user = self._credential_of_secret(record.secret)
        if scope != "discard_pending" and getattr(user, "one_credential", False):
            return
        pending_version = self._stored_pending(record)
        pending = self._cred(record.secret, pending_version)
        current = self._cred(record.secret, record.old_current)
        if pending is None or current is None:
            return
        try:
            if self._tried(partial(user.authenticates, current), (ConnectivityError,))[0]:
                return
            if not self._tried(partial(user.authenticates, pending), (ConnectivityError,))[0]:
                return
        except ConnectivityError as exc:
            log.warning(
                "rollback of %s: whether the old value still works is unknown: %s", record.id, exc.message
            )
            return
        record.rollback_refused = True  # saved by the stop for a person this ends in
        raise NeedsOperatorError(
            f"not rolled back: the current version {record.old_current} of {record.secret} no longer "
            f"authenticates (expired or deleted at the provider, or changed at the target) and the new "
            f"version {pending_version} does; the new version was kept: "
            f"{self._voke(resume_command(record.id))} finishes the rotation on it",
            hint=unfinished_commands(record),
        )

    def _undo(self, record: RotationRecord, scope: str, t0: float) -> NeedsOperatorError | None:
        t = time.monotonic()
        user = self._credential_of_secret(record.secret)
        record.pending_version = self._stored_pending(record)
        pending = self._cred(record.secret, record.pending_version)
        current = self._cred(record.secret, record.old_current)
        previous = self._cred(record.secret, record.old_previous)
        # A deploy killed mid-way left instances starting on the new version that took no traffic:
        # moving services back does not see them, and waiting until nothing reads it would.
        for instance in self.runtime.stop_orphans():
            log.info("stopped %s, which a killed deploy had started", instance)
        # With one credential (single user, Auth0) the old value works only once the target has it
        # back, so restore first; with two, move the services back first so none loses access.
        restore_first = getattr(user, "one_credential", False)
        if restore_first:
            user.restore(scope, pending, current, previous)
        aliases: dict[str, int | None] = {"pending": None}
        if scope == "restore_aliases":
            aliases.update({"current": record.old_current, "previous": record.old_previous})
        self.store.update(record.secret, etag=self.store.get(record.secret).etag, aliases=aliases)
        if scope == "restore_aliases" and record.old_current is not None:
            # Every consumer ends healthy on the old version: one that is not (a failed deploy
            # killed, or left, its old instance dead) is redeployed there too; one that still
            # cannot be fails the rollback (exit 7), never "rolled back" with a service down.
            back = {
                svc: (record.secret, record.old_current)
                for svc in self.services_of(user)
                if not self._healthy_on(svc, record.secret, record.old_current)
            }
            if back:
                self.runtime.deploy_many(back)
        if not restore_first:
            if record.pending_version is not None:
                self._wait_unpinned(record.secret, record.pending_version)
            user.restore(scope, pending, current, previous)
        # Provider-minted keys go last, once no service uses them any more.
        discard = getattr(user, "discard", None)
        if discard is not None:
            discard(pending, record.id)
            self._take_unclaimed(record, user)
        if record.pending_version is not None:
            v = self.store.get(record.secret).version(record.pending_version)
            if v is not None and v.state == "enabled":
                self.store.set_state(record.secret, record.pending_version, "disabled")
        record.steps.append(StepRecord("rollback", "rolled_back", round(time.monotonic() - t, 3), scope))
        record.status = "rolled_back"
        record.finished_at = iso(self.now())
        return self._end(record, t0)

    # -- resume / rollback commands -----------------------------------------------------------------------
    def unfinished(self) -> list[RotationRecord]:
        out = []
        for meta in self.store.list():
            raw = meta.annotations.get(ANNOTATION)
            if raw:
                out.append(RotationRecord.from_json(raw))
        return out

    def _find(self, rotation_id: str | None) -> RotationRecord | None:
        """The unfinished rotation ROTATION_ID; without one, the first that no live voke runs
        (the one `resume` or `rollback` can act on), else the first (which they refuse)."""
        records = self.unfinished()
        if rotation_id is None:
            idle = [r for r in records if not self._running(r)]
            return next(iter(idle or records), None)
        for record in records:
            if record.id == rotation_id:
                return record
        return None

    def resume(self, rotation_id: str | None = None) -> Outcome:
        t0 = time.monotonic()
        record = self._find(rotation_id)
        if record is None:
            if rotation_id:
                finished = self._from_history(rotation_id)
                if finished is None:
                    raise UsageError(
                        f"no rotation {rotation_id}",
                        hint="`voke rotate history` and `voke rotate status` list them",
                    )
                if finished.status != "succeeded":  # a script must not take it for a finished one
                    raise PreconditionError(
                        f"rotation {rotation_id} already ended ({finished.status}); nothing to resume",
                        hint="start a new rotation to rotate the credential",
                    )
                return Outcome(RotationReport.of_ended(finished))  # done: resuming it again is a no-op
            return Outcome(None)
        if self._running(record):
            raise PreconditionError(
                f"rotation {record.id} is running (owner {record.owner}); nothing was changed"
            )
        return self._resume(record, t0)

    def _resume(self, record: RotationRecord, t0: float) -> Outcome:
        # Recorded as finished (its history, rotation.finish event and webhook written after),
        # but the store refused to clear its record: clearing it is all that is left, never a
        # second finish. (The local history finds one an older voke left at health: it wrote
        # the finish without recording it first.) Still `untold`, the run was cut before its
        # history and audit were written (a second Ctrl-C, a kill): those are written first.
        ended = record if record.status == "succeeded" else self._from_history(record.id)
        if ended is not None and ended.status == "succeeded":
            self._audit("rotation.resume", record, "started", duration=time.monotonic() - t0)
            if ended.untold:
                self.progress(f"rotation {record.id} had finished: writing what it left unwritten")
                if (unwritten := self._write_untold(ended)) is not None:  # still: left for the next resume
                    return Outcome(RotationReport.of_ended(ended, resumed=True), unwritten)
            self.progress(f"rotation {record.id} had finished: clearing its record")
            self._clear(ended)
            return Outcome(RotationReport.of_ended(ended, resumed=True))
        self._take_over(record)
        with self._before_steps("rotation.resume", t0, record):
            self._audit("rotation.resume", record, "started", duration=time.monotonic() - t0)
        with self._on_interrupt("rotation.resume", record, t0):
            if record.status == "rolling_back":  # its rollback was interrupted: finish that
                self.progress(f"rotation {record.id} was being rolled back: finishing the rollback")
                error = RolledBackError(
                    f"rotation {record.id} of {record.secret} had been rolled back part-way; the rollback is finished",
                    hint=f"safe to retry: {retry_command(record)}",
                )
                return self._roll_back(record, t0, resumed=True, error=error)
            return self._run(record, t0, resumed=True)

    def _write_untold(self, record: RotationRecord) -> NeedsOperatorError | None:
        """The history line and `rotation.finish` event of RECORD, recorded as finished but
        `untold`, each unless this machine's history or VOKE_HOME's audit log has it already (a
        resume cut between the two, run again): neither is ever written twice in one place (but an
        event the log does not verify from to its end: see `AuditLog.find_newest`). What still
        cannot be written is returned, as `_tell` says."""
        from voketag_ops.audit import AuditLog

        record.untold = None  # what the stored record said, not the history line
        logged = record.id in AuditLog(self.audit_home).find_newest(
            {record.id},
            lambda e: (
                e.details.get("rotation_id")
                if e.event_type == "rotation.finish" and e.result == record.status
                else None
            ),
        )
        # timed as its run would have: from its start to its recorded finish
        return self._tell(
            record,
            record.recorded_seconds(),
            history=self._from_history(record.id) is None,
            event=not logged,
        )

    def _roll_back(
        self, record: RotationRecord, t0: float, *, resumed: bool, error: VokeError | None = None
    ) -> Outcome:
        """A rollback taken over by `rollback` or `resume`: its report, or needs_attention. ERROR:
        the one it ends with (None: exit 0), unless its history line or event was not written."""
        try:
            unwritten = self._rollback(record, t0)
        except Interrupted:
            raise
        except VokeError as exc:
            return self._needs_attention(record, t0, resumed, f"rollback failed: {exc.message}")
        return Outcome(RotationReport.of(record, t0=t0, resumed=resumed), unwritten or error)

    def _running(self, record: RotationRecord) -> bool:
        """Under way, forward or back, in a voke that is still there."""
        return record.status in ACTIVE and self._owner_alive(record)

    def _take_over(self, record: RotationRecord) -> None:
        meta = self.store.get(record.secret)
        old_owner = record.owner
        record.owner = self.owner
        record.status = "rolling_back" if record.rolling_back else "in_progress"
        record.error = None
        record.lease_until = iso(self.now() + timedelta(seconds=self.settings.lease_seconds))
        stored = meta.annotations.get(ANNOTATION)
        if not stored or RotationRecord.from_json(stored).owner != old_owner:
            raise PreconditionError(f"rotation {record.id} changed hands while taking it over")
        try:
            self.store.update(record.secret, etag=meta.etag, annotations={ANNOTATION: record.to_json()})
        except EtagMismatchError:
            raise PreconditionError(f"another voke took over rotation {record.id} first") from None

    def plan_resume(self, rotation_id: str) -> Outcome:
        """What `resume` of ROTATION_ID (whose voke is gone) would do, as a dry run's report."""
        t0 = time.monotonic()
        plan = self.plan_unfinished(rotation_id, action="resume")
        cred = self._credential_of_secret(plan["secret"])
        first = (
            f"finish the unfinished rotation {rotation_id} (step {plan['last_step']} was the last recorded):"
        )
        return Outcome(self._planned(cred, t0, [first, *plan["plan"]]))

    def plan_unfinished(self, rotation_id: str | None, *, action: str) -> dict[str, Any]:
        """What `resume` or `rollback` (ACTION) would do, changing nothing (their --dry-run)."""
        record = self._find(rotation_id)
        if record is None:
            finished = self._from_history(rotation_id) if rotation_id else None
            if rotation_id and finished is None:
                raise UsageError(
                    f"no rotation {rotation_id}",
                    hint="`voke rotate history` and `voke rotate status` list them",
                )
            # Refused as `rollback` and `resume` refuse it: only resuming a succeeded one is a no-op.
            if finished is not None and action == "rollback":
                raise PreconditionError(
                    f"rotation {rotation_id} already ended ({finished.status}); nothing to roll back"
                )
            if finished is not None and finished.status != "succeeded":
                raise PreconditionError(
                    f"rotation {rotation_id} already ended ({finished.status}); nothing to resume",
                    hint="start a new rotation to rotate the credential",
                )
            return {
                "dry_run": True,
                "rotation_id": rotation_id,
                "plan": ["nothing unfinished: nothing to do"],
            }
        if record.status == "succeeded":
            if action == "rollback":
                raise self._succeeded_error(record)
            steps = [f"clear the record of {record.id}, which succeeded (its finish is not written again)"]
            if record.untold:  # cut before its history and audit were written
                steps = [
                    f"write the history line and rotation.finish event of {record.id}, which succeeded, "
                    "where missing (never twice)",
                    f"clear the record of {record.id}",
                ]
            return {
                "dry_run": True,
                "rotation_id": record.id,
                "secret": record.secret,
                "last_step": record.step,
                "in_flight": None,
                "scope": None,
                "running": False,
                "plan": steps,
            }
        in_flight = next(iter(record.next_steps()), record.step)
        scope = self._scope(record)
        pending = self._stored_pending(record)
        if action == "resume" and not record.rolling_back:
            plan = [
                f"take over {record.id} (owner {record.owner})",
                *[f"run {s}" for s in record.next_steps()],
            ]
        else:
            begun = [f"finish the rollback begun on {record.id}"] if record.rolling_back else []
            # `_undo` deletes what a provider minted (`discard`) before it disables the version.
            minted = (
                ["delete the provider key this rotation minted, once no service uses it"]
                if getattr(self._credential_of_secret(record.secret), "discard", None) is not None
                else []
            )
            plan = (
                begun
                + {
                    "discard_pending": [*minted, f"disable version {pending} and remove the pending alias"],
                    "restore_target": [
                        "give the changed credential its last stored value back",
                        *minted,
                        f"disable version {pending} and remove the pending alias",
                    ],
                    "restore_aliases": [
                        f"move current back to {record.old_current} and previous to {record.old_previous}",
                        f"redeploy the services pinned to {record.old_current}",
                        "give the changed credential its last stored value back",
                        *minted,
                        f"disable version {pending}",
                    ],
                }[scope]
            )
        return {
            "dry_run": True,
            "rotation_id": record.id,
            "secret": record.secret,
            "last_step": record.step,
            "in_flight": in_flight,
            "scope": scope if action == "rollback" else None,
            "running": self._running(record),
            "plan": plan,
        }

    def rollback(self, rotation_id: str) -> Outcome:
        t0 = time.monotonic()
        record = self._find(rotation_id)
        if record is None:
            done = self._from_history(rotation_id)
            if done is None:
                raise UsageError(
                    f"no rotation {rotation_id}",
                    hint="`voke rotate history` and `voke rotate status` list them",
                )
            raise PreconditionError(
                f"rotation {rotation_id} already ended ({done.status}); nothing to roll back"
            )
        if record.status == "succeeded":
            raise self._succeeded_error(record)
        if self._running(record):
            raise PreconditionError(
                f"rotation {record.id} is running (owner {record.owner}); nothing was changed"
            )
        self._take_over(record)
        with self._on_interrupt("rotation.rollback", record, t0):
            return self._roll_back(record, t0, resumed=False)

    @staticmethod
    def _succeeded_error(record: RotationRecord) -> PreconditionError:
        """Why a rotation recorded as finished (its record not cleared yet) is not rolled back."""
        return PreconditionError(
            f"rotation {record.id} of {record.secret} succeeded (finished {record.finished_at}); "
            "it is not rolled back: a new rotation replaces it. Nothing was changed",
            hint=f"{resume_command(record.id)} clears its record; {retry_command(record)} rotates again",
        )

    # -- status, due, cleanup, history -------------------------------------------------------------------
    def managed(self) -> dict[str, str]:
        """secret -> schedule key, for every credential voke rotates."""
        return {c.secret: c.schedule for c in self.credentials.values()}

    def status(self) -> dict[str, Any]:
        now = self.now()
        secrets_out, missing = [], []
        for secret, kind in self.managed().items():
            try:
                meta = self.store.get(secret)
            except NotFoundError:
                missing.append(secret)  # configured, never stored (an API key not adopted yet)
                continue
            secrets_out.append(self._secret_status(meta, kind, now))
        in_progress = []
        for r in self.unfinished():
            running = self._owner_alive(r)
            in_progress.append(
                {
                    "rotation_id": r.id,
                    "secret": r.secret,
                    "step": r.step,
                    "status": r.status,
                    "owner": r.owner,
                    "lease_until": r.lease_until,
                    "running": running,
                    # What to paste once its voke is gone (None while it runs), as its stop said it.
                    "next": None if running else self._voke(unfinished_commands(r)),
                }
            )
        return {"secrets": secrets_out, "in_progress": in_progress, "missing": missing}

    def _secret_status(self, meta: Any, kind: str, now: datetime) -> dict[str, Any]:
        current = meta.aliases.get("current")
        cur_v = meta.version(current) if current else None
        age = (now - parse_iso(cur_v.created_at)).total_seconds() / 86400 if cur_v else None
        base = self._last_rotation_time(meta) or (parse_iso(cur_v.created_at) if cur_v else now)
        due_at = next_due(getattr(self.settings.schedule, kind), base)
        early = getattr(self._credential_of_secret(meta.name), "due_at", None)
        if early is not None and (at := early(meta)) is not None:
            due_at = at  # a published JWT key is due for promotion
        return {
            "name": meta.name,
            "current_version": current,
            "previous_version": meta.aliases.get("previous"),
            "age_days": round(age, 3) if age is not None else None,
            "next_due": iso(due_at),
            "due": due_at <= now,
            "versions": [
                {
                    "version": v.version,
                    "state": v.state,
                    "aliases": list(v.aliases),
                    "created_at": v.created_at,
                }
                for v in meta.versions
            ],
        }

    @staticmethod
    def _last_rotation_time(meta: Any) -> datetime | None:
        raw = meta.annotations.get(LAST_ANNOTATION)
        if not raw:
            return None
        try:
            summary = json.loads(raw)
            if summary.get("status") in ("succeeded", "created") and summary.get("finished_at"):
                return parse_iso(summary["finished_at"])
        except (ValueError, TypeError):
            pass
        return None

    def due(self) -> list[dict[str, Any]]:
        return [s for s in self.status()["secrets"] if s["due"]]

    def name_of(self, secret: str) -> str:
        return self._credential_of_secret(secret).name

    def cleanup(self, *, dry_run: bool) -> dict[str, Any]:
        """Disable, destroy and retire what is due, planned and done under the cleanup lock: a
        second cleanup at once (or its dry run) is exit 5 naming the first, rather than act on,
        report and audit the same versions (the refusal is its `failure` event). A dry run only
        looks at the lock."""
        from contextlib import ExitStack

        from voketag_ops.audit import audited
        from voketag_ops.locks import cleanup_lock, refuse_if_cleaning

        if dry_run:
            refuse_if_cleaning(self.history_file.parent)
            return self._cleanup(dry_run=True)
        with ExitStack() as held:
            target = ",".join(sorted(self.managed()))
            with audited(
                self.audit_home, event_type="rotation.cleanup", env=self.env_name, target=target
            ) as event:
                held.enter_context(cleanup_lock(self.history_file.parent))
                event.skip = True  # taken: what the cleanup does is its own event
            return self._cleanup(dry_run=False)

    def _cleanup(self, *, dry_run: bool) -> dict[str, Any]:
        now = self.now()
        actions: list[CleanupAction] = []
        for secret in self.managed():
            try:
                meta = self.store.get(secret)
            except NotFoundError:
                continue
            if meta.annotations.get(ANNOTATION):
                continue  # never clean a secret with a rotation in progress
            protected = set(meta.aliases.values()) | set(self.runtime.pinned_versions(secret))
            retired = self._plan_retire(meta, now)
            actions += retired
            protected |= {a.version for a in retired}  # disabled by their retirement
            actions += plan_cleanup(
                secret,
                [(v.version, v.state, v.created_at, v.state_changed_at) for v in meta.versions],
                protected,
                now,
                current=meta.aliases.get("current"),
                became_current=self._current_times(meta),
                keep=self.settings.keep_versions,
                disable_after=timedelta(hours=self.settings.disable_after_hours),
                destroy_after=timedelta(days=self.settings.destroy_after_days),
            )
        if not dry_run:
            actions = [a for a in actions if a.action == "retire" or self._still_unprotected(a)]
            if actions:
                self._clean(actions)
        return {"dry_run": dry_run, "actions": actions}

    def _clean(self, actions: list[CleanupAction]) -> None:
        """Carry out ACTIONS under one audit event (timed; a failure names what was done)."""
        from voketag_ops.audit import audited

        with audited(
            self.audit_home,
            event_type="rotation.cleanup",
            env=self.env_name,
            target=",".join(sorted({a.secret for a in actions})),
            details={"actions": [f"{a.action} {a.secret} v{a.version}" for a in actions]},
        ) as event:
            event.details["done"] = 0
            for done, action in enumerate(actions, start=1):
                try:
                    if action.action == "retire":
                        self._retire(action)
                    else:
                        self.store.set_state(action.secret, action.version, _CLEANED_STATE[action.action])
                except KeyboardInterrupt:
                    # Cut while the store wrote it: whether it landed is the store's to say.
                    if self._cleaned(action):
                        event.details["done"] = done
                    raise
                event.details["done"] = done

    def _cleaned(self, action: CleanupAction) -> bool:
        """Whether ACTION, whose write was interrupted, took effect (its version now in the state
        it leaves: a retirement disables it last); False when the store cannot say."""
        try:
            version = self.store.get(action.secret).version(action.version)
        except (VokeError, KeyboardInterrupt):
            return False
        return version is not None and version.state == _CLEANED_STATE[action.action]

    def _still_unprotected(self, action: CleanupAction) -> bool:
        """Re-read just before disabling or destroying: a rotation that started, an alias
        that moved or a service pinned since the plan was made keeps the version."""
        meta = self.store.get(action.secret)
        if meta.annotations.get(ANNOTATION) or action.version in meta.aliases.values():
            log.info("cleanup %s v%s skipped: it changed since the plan", action.secret, action.version)
            return False
        if action.version in self.runtime.pinned_versions(action.secret):
            log.info("cleanup %s v%s skipped: a service is pinned to it now", action.secret, action.version)
            return False
        return True

    def _plan_retire(self, meta: Any, now: datetime) -> list[CleanupAction]:
        """Superseded provider keys to delete: enabled versions older than `current` that no
        service is pinned to, once `current` has been current for disable_after_hours (not
        since it was made: a resumed rotation commits long after it made its key)."""
        cred = self._credential_of_secret(meta.name)
        retire = getattr(cred, "retire", None)
        current = meta.aliases.get("current")
        since = self.became_current(meta, current)
        if retire is None or current is None or since is None:
            return []
        if now - since < timedelta(hours=self.settings.disable_after_hours):
            return []
        done = set(json.loads(meta.annotations.get(RETIRED_ANNOTATION, "[]")))
        pinned = set(self.runtime.pinned_versions(meta.name))
        actions = []
        for v in meta.versions:
            if v.version >= current or v.state != "enabled" or v.version in pinned:
                continue
            if v.version in done:  # its key deleted by a cleanup stopped before the version was disabled
                actions.append(CleanupAction(meta.name, v.version, "retire", "its key was deleted already"))
                continue
            value = self._cred(meta.name, v.version)
            if value is not None:
                actions.append(CleanupAction(meta.name, v.version, "retire", retire(value, dry_run=True)))
        return actions

    def _retire(self, action: CleanupAction) -> None:
        """Delete the provider key of one superseded version, remember that it is gone, and
        disable the version (dropping `previous` if it names it): a store that offers a dead
        key as the one to fall back to would fail whoever falls back."""
        cred = self._credential_of_secret(action.secret)
        meta = self.store.get(action.secret)
        done = set(json.loads(meta.annotations.get(RETIRED_ANNOTATION, "[]")))
        if action.version not in done:
            value = self._cred(action.secret, action.version)
            if value is not None:
                done_what = cred.retire(value)  # type: ignore[attr-defined]
                log.info("cleanup %s v%s: %s", action.secret, action.version, done_what)
            meta = self.store.get(action.secret)
            done = set(json.loads(meta.annotations.get(RETIRED_ANNOTATION, "[]"))) | {action.version}
        live = {v.version for v in meta.versions if v.state != "destroyed"}
        kept = json.dumps(sorted(done & live))
        dropped = {"previous": None} if meta.aliases.get("previous") == action.version else None
        self.store.update(
            action.secret, etag=meta.etag, aliases=dropped, annotations={RETIRED_ANNOTATION: kept}
        )
        self.store.set_state(action.secret, action.version, "disabled")

    def became_current(self, meta: Any, version: int | None) -> datetime | None:
        """When VERSION of META's secret became current everywhere (`_current_since`), else its
        creation: a version no rotation made (`secrets add`, a DR repoint, `env up`) is current
        from the moment it is stored."""
        if version is None:
            return None
        found = self._current_since(meta, version)
        if found is not None:
            return found
        v = meta.version(version)
        return parse_iso(v.created_at) if v is not None else None

    def _current_since(self, meta: Any, version: int) -> datetime | None:
        """When VERSION became current everywhere, as the rotation that made it recorded: its
        finish (this machine's history, else the secret's `voke-became-current`, kept by the
        last rotation that succeeded, else `voke-last-rotation`, which an older voke wrote and
        a later rotation that did not succeed replaces) or, while it is unfinished, its commit;
        None when no rotation says (never the version's creation: a resumed rotation commits
        long after it made the version)."""
        raw = meta.annotations.get(ANNOTATION)
        if raw and meta.aliases.get("current") == version:
            record = RotationRecord.from_json(raw)
            if record.pending_version == version:  # committed, not finished: it took over at the commit
                return parse_iso(record.committed_at) if record.committed_at else self.now()
        found = self.published_at(meta.name, version)
        if found is not None:
            return found
        for annotation, at in ((CURRENT_ANNOTATION, "at"), (LAST_ANNOTATION, "finished_at")):
            raw = meta.annotations.get(annotation)
            if raw:
                try:
                    said = json.loads(raw)
                    if said.get("version") == version and said.get(at):
                        return parse_iso(said[at])
                except (ValueError, TypeError, AttributeError):
                    pass
        return None

    def _current_times(self, meta: Any) -> dict[int, datetime]:
        """When `current` and each enabled version before it (the ones `plan_cleanup` counts as
        having been current) became current: as recorded, else when `current` did, which is
        late, never early (they became current before it)."""
        current = meta.aliases.get("current")
        latest = self.became_current(meta, current)
        if current is None or latest is None:
            return {}
        times = {
            v.version: self._current_since(meta, v.version) or latest
            for v in meta.versions
            if v.state == "enabled" and v.version < current
        }
        return {**times, current: latest}

    def published_at(self, secret: str, version: int) -> datetime | None:
        """When VERSION of SECRET became current everywhere: the finish of the rotation that made it."""
        for record in self._finished():
            if (
                record.secret == secret
                and record.pending_version == version
                and record.status == "succeeded"
                and record.finished_at
            ):
                return parse_iso(record.finished_at)
        return None

    def _notify(self, record: RotationRecord) -> None:
        """Tell the configured webhook how the rotation ended (never a value; failures only logged)."""
        url = self.settings.notify_webhook
        if not url:
            return
        from voketag_ops.adapters.webhook import post_webhook

        post_webhook(url, notification_text(record, self.env_name))

    # -- history and audit --------------------------------------------------------------------------------
    @property
    def history_file(self) -> Path:
        return self.home / "rotations" / "history.jsonl"

    def _history(self, record: RotationRecord) -> None:
        """RECORD's line appended to the history, whole or not at all (under its lock): a full
        disk leaves no torn line for the next append to be glued onto, and is exit 4 naming the
        file. A last line saved without its line break (an older voke's) stays whole."""
        import fcntl

        from voketag_ops.files import append_line, named

        path = self.history_file
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            append_line(fd, (record.to_json() + "\n").encode())
        except OSError as exc:  # a write() names no file
            raise named(exc, path) from None
        finally:
            os.close(fd)

    def history(self, *, limit: int = 50, secret: str | None = None) -> list[RotationRecord]:
        """The newest LIMIT finished rotations (of SECRET), newest first (see _finished)."""
        found = (r for r in self._finished() if secret is None or r.secret == secret)
        return [record for _, record in zip(range(limit), found, strict=False)]

    def _finished(self) -> Iterator[RotationRecord]:
        """The finished rotations, newest first, read from the history's end only as far as the
        caller goes (an append-only log of any size). A line that holds no record is skipped:
        silently the last (torn by a crash mid-write), with a warning naming it anywhere else (a
        hand edit, a disk fault). ConfigError if the file cannot be read, or a line read is not
        UTF-8."""
        from voketag_ops.files import DamagedRecord, LineNumbers, lines_backwards, open_log

        path = self.history_file
        try:
            with open_log(path) as fd:
                numbers = LineNumbers(fd)
                last = True  # the last line: a torn write is skipped quietly
                for index, (offset, line) in enumerate(lines_backwards(fd)):
                    if index == 0 and not line:  # the file ends with a line break (or is empty)
                        continue
                    try:
                        text = line.decode("utf-8")
                    except UnicodeDecodeError as exc:
                        why = f"not UTF-8 (byte {offset + exc.start})"
                        raise ConfigError(f"{path}: rotation history cannot be read: {why}") from None
                    try:
                        record = RotationRecord.from_json(text, known_only=True)  # a newer voke's too
                    except ValueError as exc:
                        if not last:
                            number = numbers.at(offset)
                            log.warning(
                                "%s:%d: skipping a line that holds no rotation record: %s", path, number, exc
                            )
                    else:
                        yield record
                    last = False
        except FileNotFoundError:
            return
        except (NotADirectoryError, DamagedRecord) as exc:
            reason = exc if isinstance(exc, DamagedRecord) else f"{path.parent} is not a directory"
            raise ConfigError(f"{path}: rotation history cannot be read: {reason}") from None

    def _from_history(self, rotation_id: str) -> RotationRecord | None:
        return next((r for r in self._finished() if r.id == rotation_id), None)

    @contextmanager
    def _on_interrupt(self, event_type: str, record: RotationRecord, t0: float) -> Iterator[None]:
        """A run, resume or rollback (EVENT_TYPE, as its other events are named) of RECORD that
        Ctrl-C or SIGTERM stops is on record: one `interrupted` event, as `audited` writes for a
        command, with the step and versions, the error (which names where it stopped) and how
        long this run had been going (since T0). The interruption itself propagates."""
        try:
            yield
        except KeyboardInterrupt:  # (one no step turned into Interrupted: between steps)
            self._interrupted(event_type, record, t0, Interrupted(interrupts.message()))
            raise
        except Interrupted as exc:
            self._interrupted(event_type, record, t0, exc)
            raise

    def _interrupted(self, event_type: str, record: RotationRecord, t0: float, exc: Interrupted) -> None:
        with interrupts.Held(give_way_after=1):  # one more Ctrl-C must not cut the event short
            try:
                self._audit(
                    event_type,
                    record,
                    "interrupted",
                    error={"type": exc.type_name, "message": exc.message},
                    duration=time.monotonic() - t0,
                )
            except VokeError as audit_exc:
                log.error("could not write the audit event for %s: %s", event_type, audit_exc.message)

    def _audit(
        self,
        event_type: str,
        record: RotationRecord,
        result: str,
        *,
        duration: float,
        error: Mapping[str, Any] | None = None,
    ) -> None:
        """Write EVENT_TYPE for RECORD: ids, versions and steps, never a value. DURATION: this
        run's so far, on the monotonic clock (a wall-clock step made it negative). ERROR: else
        the record's."""
        from voketag_ops.audit import record_event

        details: dict[str, Any] = {
            "rotation_id": record.id,
            "kind": record.kind,
            "strategy": record.strategy,
            "previous_version": record.old_current,
            "new_version": record.pending_version,
            "step": record.step,
            "steps": [f"{s.name}:{s.status}" for s in record.steps],
        }
        if error or record.error:
            details["error"] = dict(error or record.error or {})
        if record.unclaimed_keys:
            details["unclaimed_keys"] = record.unclaimed_keys
        self.events_written += 1
        record_event(
            self.audit_home,
            event_type=event_type,
            env=self.env_name,
            target=record.secret,
            result=result,
            duration_seconds=round(duration, 3),
            details=details,
        )


@contextmanager
def on_record(
    settings: Any, home: Path, owner: str, *, dry_run: bool
) -> Iterator[Callable[[RotationEngine], RotationEngine]]:
    """A rotation is on record from its own `rotation.start` event on; one refused before it
    (a DR operation running, an unfinished rotation, a JWT key not due yet: exit 5) is a
    `rotation.start` event with result `failure` and the error, in HOME's audit log (VOKE_HOME,
    whichever environment). The block passes its engine through the function it is given; a
    dry run writes no event. OWNER: the settings' key of the credential (`rotation.jwt`)."""
    from voketag_ops.audit import audited_unless
    from voketag_ops.workflows.secrets import rotated_secrets

    target = next((s for s, o in rotated_secrets(settings).items() if o == owner), owner)
    engines: list[RotationEngine] = []

    def engine_of(engine: RotationEngine) -> RotationEngine:
        engines.append(engine)
        return engine

    with audited_unless(dry_run, home, event_type="rotation.start", env=settings.env, target=target) as event:
        try:
            yield engine_of
        finally:
            event.skip = any(engine.events_written for engine in engines)  # its own events say the rest


def retry_command(record: RotationRecord) -> str:
    """The command that starts RECORD's kind of rotation again (never `resume`: a rotation
    that was rolled back has ended, and resuming it is refused)."""
    if record.kind == "db-password":
        return f"voke rotate db-password --user {record.target} --yes"
    if record.kind.startswith("api-key:"):
        from voketag_ops.workflows.api_keys import KINDS

        kind = KINDS.get(record.kind.removeprefix("api-key:"))
        pasted = " < new-key.txt" if getattr(kind, "operator_supplies_value", False) else ""
        return f"voke rotate api-key {record.target} --yes{pasted}"  # the new key read from stdin
    if record.kind == "jwt":
        return f"voke rotate jwt{' --emergency' if record.strategy == EMERGENCY else ''} --yes"
    if record.kind == "sa-key":
        return f"voke rotate sa-key {record.target} --yes"
    return f"start a new {record.kind} rotation of {record.secret} (`voke rotate --help` lists them)"


def resume_command(rotation_id: str) -> str:
    """The command that finishes the unfinished rotation ROTATION_ID. With --yes: pasted into
    cron or CI (no terminal) it must run, not refuse (exit 2). The output adds --env NAME."""
    return f"voke rotate resume {rotation_id} --yes"


def rollback_command(rotation_id: str) -> str:
    """The command that undoes the unfinished rotation ROTATION_ID (with --yes, as `resume_command`)."""
    return f"voke rotate rollback {rotation_id} --yes"


def _rolled_back(record: RotationRecord) -> tuple[str, str]:
    """How RECORD, rolled back, ended, as its exit 6 said it (the failure it undid, if this run
    met it), and the retry to paste."""
    failed = record.error
    if not failed:
        return "was rolled back", f"to rotate again: {retry_command(record)}"
    return (
        f"failed at {failed['step']} ({failed['kind']}: {failed['message']}); rolled back",
        f"once what made it fail is fixed, retry: {retry_command(record)}",
    )


def _where(record: RotationRecord, step: str) -> str:
    """Where a rotation stopped in STEP, as its interrupted answer says."""
    return f"after {step}" if record.step == step else f"during {step} (it may have taken effect)"


def unfinished_commands(record: RotationRecord) -> str:
    """What to paste for the unfinished rotation RECORD: finish it, or undo it; the resume alone
    once a rollback was refused (`rollback_refused`: a rollback would only stop there again).
    Every hint, webhook and listing (`status`, `due`) that offers them says it through here."""
    if record.status == "succeeded":  # its record not cleared yet: a rollback is refused (exit 5)
        return f"{resume_command(record.id)}   (it succeeded: this clears its record)"
    if record.rollback_refused:
        return f"{resume_command(record.id)}   (it cannot be undone: the old value no longer authenticates)"
    return f"{resume_command(record.id)}   or: {rollback_command(record.id)}"


def setup_command(kind: str, name: str, *, local: bool) -> str:
    """What stores the first version of the secret of the credential NAME (of KIND) where it
    does not exist yet: the command to paste, to which the output adds --env NAME."""
    if kind.startswith("api-key:"):
        return f"voke rotate api-key {name} --adopt --yes < current-key.txt"
    if kind == "jwt":
        return "voke rotate jwt --init --yes"
    if kind == "sa-key":
        return f"voke rotate sa-key {name} --init --yes"
    if local:
        return "voke env up"
    return (
        f"store the login {name}'s current credential as the first version of its secret (alias "
        "`current`); only the local environment's `env up` creates one"  # (no "voke" + word: --env is put after it)
    )


def notification_text(record: RotationRecord, env_name: str) -> str:
    """The webhook message for how RECORD ended: ids, versions, steps, never values; the
    commands it names carry `--env ENV_NAME` (pasted from chat, they act on that environment),
    a stop for a person's those `unfinished_commands` offers."""
    from voketag_ops.output import name_env

    head = f"voke rotate [{env_name}] {record.secret} ({record.kind}, {record.strategy}) rotation {record.id}"
    versions = f"version {record.old_current} -> {record.pending_version}"
    if record.status == "succeeded":
        return f":white_check_mark: {head} succeeded: {versions}"
    err = record.error or {}
    why = f"{err.get('kind', 'error')} at {err.get('step', '?')}: {err.get('message', '')}".strip()
    if record.status == "rolled_back":
        retry = name_env(retry_command(record), env_name)
        return f":warning: {head} failed and was rolled back ({why}); safe to retry: {retry}"
    then = name_env(unfinished_commands(record), env_name)
    return f":rotating_light: {head} needs a person ({why}); then: {then}"


def owner_alive(record: RotationRecord, now: datetime) -> bool:
    """Whether the voke that owns RECORD still runs it (at NOW): a rotation under way, not one
    to resume or roll back."""
    host, _, pid = record.owner.rpartition(":")
    if host not in (process_host(), socket.gethostname()):  # a bare host name: an older voke
        return not record.lease_expired(now)  # another machine or container: trust the lease
    from voketag_ops.adapters.local.postgres import process_exists

    # Gone: taken over at once. There (another user's too, after a pid was reused): the lease decides.
    return process_exists(pid) and not record.lease_expired(now)


def process_host() -> str:
    """Where a process id means something: the host name plus the boot and the PID namespace,
    so two containers sharing a host name never judge each other's pids (the lease decides)."""
    ident = socket.gethostname()
    try:
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()[:8]
        ident += f"/{boot}/{os.stat('/proc/self/ns/pid').st_ino}"
    except OSError:
        pass  # no /proc (macOS): the host name alone
    return ident


def local_engine(
    settings: Any,
    progress: Progress = lambda _m: None,
    *,
    start: bool = True,
    reads: bool = False,
    check: Callable[[RotationEngine], object] | None = None,
) -> RotationEngine:
    """The engine wired to the environment the settings name: the local platform, started
    on demand (unless START is False: dry runs change nothing), or a Google Cloud environment
    through its adapters (workflows/cloud.py). READS (status, history, jwks): never started,
    and usable during an unfinished DR operation, when the on-call needs them most. CHECK
    (the command's arguments against the configuration and the records) runs before the
    environment is started: a command refused for them starts nothing. Either environment's
    DR lock keeps a rotation and a DR operation from starting together."""
    from voketag_ops.adapters.local import dr
    from voketag_ops.locks import busy_with, dr_lock, is_env_holder, running_elsewhere
    from voketag_ops.workflows.env import LocalPlatform

    # The lock's directory: to look at (a dry run makes nothing), and made, private, to hold it.
    platform: LocalPlatform | None = None  # None: a cloud environment, nothing to start here
    lock_dir: Callable[[], Path]
    if settings.env != "local":
        from voketag_ops.workflows.cloud import env_home
        from voketag_ops.workflows.cloud_drill import drills_home

        probe, lock_dir = env_home(settings), lambda: drills_home(settings)  # as cloud DR operations
    else:
        platform = local = LocalPlatform(settings)
        probe, lock_dir = local.env.home / "dr", lambda: dr.dr_dir(local.env)
        # A failover rewrites the services' connection secret: never rotate during one.
        pending = None if reads else dr.unfinished_operation(local.env)
        if pending is not None:
            dr.refuse_unfinished(local.env, pending)
    # Nor while a drill or DR operation runs: its failover would race this rotation (a backup, which
    # holds the lock shared and moves nothing, is not seen). Another voke starting the environment
    # this rotation will start too is waited for (`after_another_start`).
    holder = None if reads else running_elsewhere(probe)
    if holder is not None and not (platform is not None and start and is_env_holder(holder)):
        raise PreconditionError(f"{busy_with(holder)} ({holder}); rotate once it has finished")

    # That look holds nothing: a failover started after it is kept out by the DR lock, held
    # shared (rotations of other secrets go on beside it) until the rotation's record is written.
    def starting(secret: str) -> AbstractContextManager[None]:
        return dr_lock(lock_dir(), f"rotate {secret}", shared=True)

    if platform is None:
        from voketag_ops.workflows.cloud import cloud_engine

        engine: RotationEngine = cloud_engine(settings, progress, starting=starting)
    else:
        engine = RotationEngine(
            store=platform.store(),
            runtime=platform.runtime(),
            target=platform.db_target(),
            settings=settings.rotation,
            home=platform.env.home,
            env_name="local",
            progress=progress,
            starting=starting,
        )
    if check is not None:
        check(engine)
    if platform is not None and start and not reads:
        from voketag_ops.workflows.env import after_another_start

        after_another_start(platform.env, lambda: platform.ensure_up(progress))
    return engine
