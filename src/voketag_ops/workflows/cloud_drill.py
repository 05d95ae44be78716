"""`voke --env NAME drill run pitr|failover|all` on Cloud SQL: drills on scratch instances.

The production instances are never recovered, promoted, relabelled or deleted by a drill:
- pitr: canary rows are written on the (recorded) primary; the cut is the primary's own
  clock (clock_timestamp() after the last row before it, on the same connection); a few
  rows are written after it; once Cloud SQL's recoverable window has passed the cut, the
  primary is cloned at the cut into the scratch instance `<instance>-drill-<id>`, which
  must hold every row before the cut and none after it.
- failover: the primary is cloned now into a scratch primary, a scratch read replica of it
  is created, canary rows are written on the scratch primary, and at the cut the scratch
  replica is promoted.
RTO is from the start of the recovery action (the clone or promote request) to the scratch
database answering the canary query (failover: and taking a canary write); labelling the
scratch instance comes after that. RPO is the cut minus the newest canary row recovered
(its written_at: the server's clock on both sides, so no clock skew). The scratch
instances are always deleted at the end (also on failure and Ctrl-C); one left by an
earlier run is deleted by the next run only when its name is exactly a name voke
generates (`<instance>-drill-<scenario>-<UTC stamp>-<hex>[-r]`, or the short form
`<instance>-drill-<p|f>-<base-36 epoch>-<hex>[-r]` for long instance names) AND it carries
the drill's labels (voke-drill, voke-env=<env>) or this machine's journals list it as created
and not deleted (the journal is checkpointed before each scratch request, so a clone whose
labelling never happened, still carrying production's labels, is found after a crash too);
one that cannot be deleted is labelled as the drill's (best effort) and reported (exit 7, after
Ctrl-C too). Journals go to VOKE_HOME/cloud/NAME/drills, so `voke --env
NAME drill history|report` read them; RTO and RPO per scenario are written to Cloud
Monitoring (best effort).
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import platform as _platform
import re
import socket
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar

from voketag_ops import interrupts
from voketag_ops.clock import instant, measuring
from voketag_ops.core import drill as core
from voketag_ops.core.times import iso
from voketag_ops.errors import (
    ConfigError,
    Interrupted,
    NeedsOperatorError,
    NotFoundError,
    OutcomeUnknownError,
    PreconditionError,
    StepTimeoutError,
    UsageError,
    VokeError,
)
from voketag_ops.logs import get_logger
from voketag_ops.workflows import drill as local_drill_frame

if TYPE_CHECKING:
    from voketag_ops.config import Settings

log = get_logger(__name__)
Progress = Callable[[str], None]
P = ParamSpec("P")
R = TypeVar("R")
SCENARIOS = ("pitr", "failover")  # the drills that apply to a cloud environment
DRILL_LABEL = "voke-drill"
ENV_LABEL = "voke-env"
REPLICA_SUFFIX = "-r"
CLOUD_CANARY_SECONDS = 5.0  # how long the canary writes before the cut, unless set
AFTER_CUT = 2  # pitr: canary rows written after the cut, which the clone must not hold
PLANS = {
    "pitr": [
        "check the recorded topology (the primary is a RUNNABLE primary with PITR on)",
        "delete scratch instances earlier drill runs left behind",
        "write canary rows on the primary; the cut is the primary's clock_timestamp() after the "
        "last of them; write a few more after the cut",
        "wait until Cloud SQL's recoverable window reaches the cut",
        "clone the primary at the cut into <instance>-drill-<id> (instances.clone, pointInTime)",
        "connect to the scratch instance; read back the canary: every row before the cut, none "
        "after it (RTO: clone request -> answer; RPO: cut - newest canary row recovered)",
        "label the scratch instance as the drill's (voke-drill, voke-env)",
        "delete the scratch instance and the canary rows; write RTO/RPO to Cloud Monitoring",
    ],
    "failover": [
        "check the recorded topology",
        "delete scratch instances earlier drill runs left behind",
        "clone the primary into the scratch primary <instance>-drill-<run id>",
        "create the scratch read replica <instance>-drill-<run id>-r (instances.insert)",
        "write canary rows on the scratch primary; the cut is when the canary stops",
        "promote the scratch replica (promoteReplica)",
        "connect to it; read back the canary and write one row (RTO: promote request -> answer; "
        "RPO: cut - newest canary row recovered)",
        "delete both scratch instances; write RTO/RPO to Cloud Monitoring",
    ],
}


def _utcnow() -> datetime:
    return datetime.now(timezone.utc)


def drills_home(settings: Settings) -> Path:
    """VOKE_HOME/cloud/NAME: where the cloud env's drill journals live on this machine."""
    from voketag_ops.workflows.cloud import env_home

    path = env_home(settings)
    home = path.parent.parent
    try:
        home.parent.mkdir(parents=True, exist_ok=True)  # ~/.local/share on a fresh machine
        for directory in (home, home / "cloud", path):  # private, like every directory of the home
            directory.mkdir(mode=0o700, exist_ok=True)
    except OSError as exc:  # a home not writable, or in a place nothing can be made
        raise ConfigError(f"VOKE_HOME {home}: cannot make cloud/{settings.env}/: {exc.strerror}") from None
    return path


def one_at_a_time(
    operation: str, *, check: Callable[..., object] | None = None
) -> Callable[[Callable[P, R]], Callable[P, R]]:
    """Run the decorated DR operation (settings first, ``dry_run`` keyword) under this machine's
    DR lock of the cloud environment, VOKE_HOME/cloud/NAME/dr.lock (exit 5 naming the holder);
    dry runs change nothing and take no lock. CHECK, called with the same arguments first,
    refuses bad ones with their own exit code whether or not the lock is free."""

    def wrap(fn: Callable[P, R]) -> Callable[P, R]:
        @functools.wraps(fn)
        def locked(*args: P.args, **kwargs: P.kwargs) -> R:
            if check is not None:
                check(*args, **kwargs)
            if kwargs.get("dry_run"):
                return fn(*args, **kwargs)
            from voketag_ops.locks import dr_lock

            settings: Any = args[0]
            with dr_lock(drills_home(settings), f"{operation} on {settings.env}"):
                return fn(*args, **kwargs)

        return locked

    return wrap


def scratch_prefix(instance: str) -> str:
    return f"{instance}-drill-"


_LONG_STAMP = "%Y%m%dt%H%M%S"


def _base36(n: int) -> str:
    digits = "0123456789abcdefghijklmnopqrstuvwxyz"
    out = ""
    while True:
        n, r = divmod(n, 36)
        out = digits[r] + out
        if not n:
            return out


def scratch_id(instance: str, scenario: str, started: datetime, tag: str) -> str:
    """What follows `<instance>-drill-` in a drill's scratch names: `<scenario>-<UTC stamp>-<tag>`;
    when that would make the longest of them (the failover replica, `...-r`) longer than
    Cloud SQL allows, the short form `<p|f>-<start in epoch seconds, base 36>-<tag>` (same
    start time, deterministic). ConfigError (exit 3) when even that is too long: nothing
    has been written then."""
    from voketag_ops.workflows.cloud_dr import MAX_INSTANCE_ID

    prefix = scratch_prefix(instance)
    started = started.astimezone(timezone.utc)
    forms = (
        f"{scenario}-{started.strftime(_LONG_STAMP)}-{tag}",
        f"{scenario[0]}-{_base36(int(started.timestamp()))}-{tag}",
    )
    for ident in forms:
        if len(prefix) + len(ident) + len(REPLICA_SUFFIX) <= MAX_INSTANCE_ID:
            return ident
    room = MAX_INSTANCE_ID - len(prefix + forms[1] + REPLICA_SUFFIX) + len(instance)
    raise ConfigError(
        f"the instance name {instance!r} ({len(instance)} characters) leaves no room for the "
        f"drill's scratch instance names ({prefix}{forms[1]}{REPLICA_SUFFIX} is longer than "
        f"Cloud SQL's {MAX_INSTANCE_ID} characters); nothing was changed",
        hint=f"the cloud drills need an instance name of at most {room} characters",
    )


def scratch_pattern(instance: str) -> re.Pattern[str]:
    """Exactly the scratch names `scratch_id` generates for INSTANCE (group `id`: the part
    after the prefix without `-r`; `stamp` or `epoch`: when its run started)."""
    return re.compile(
        re.escape(scratch_prefix(instance))
        + r"(?P<id>(?:(?:pitr|failover)-(?P<stamp>\d{8}t\d{6})|[pf]-(?P<epoch>[0-9a-z]{6,8}))"
        + r"-[0-9a-f]{4})(?:"
        + re.escape(REPLICA_SUFFIX)
        + ")?"
    )


def is_leftover(
    name: str,
    instance: str,
    *,
    labels: Mapping[str, str],
    env: str,
    now: datetime,
    min_age: float,
    finished: frozenset[str] = frozenset(),
    journaled: frozenset[str] = frozenset(),
) -> bool:
    """NAME is a scratch instance of INSTANCE's drills whose run is over: its name is exactly
    one voke generates, it carries the drill's labels for ENV or it is one of JOURNALED (a
    scratch instance this machine's journals of ENV list as created and not deleted: a clone
    whose labelling never happened still carries its source's labels), and its id is one of
    FINISHED (journals saved here) or it started over MIN_AGE s ago (a live run on another
    machine is younger than that). Anything else, an unparseable name above all, is never a
    leftover."""
    m = scratch_pattern(instance).fullmatch(name)
    if m is None:
        return False
    if name not in journaled and (not labels.get(DRILL_LABEL) or labels.get(ENV_LABEL) != env):
        return False
    try:
        if m["stamp"]:
            started = datetime.strptime(m["stamp"], _LONG_STAMP).replace(tzinfo=timezone.utc)
        else:
            started = datetime.fromtimestamp(int(m["epoch"], 36), tz=timezone.utc)
    except (ValueError, OverflowError, OSError):
        return False
    if m["id"] in finished:
        return True
    return (now - started).total_seconds() > min_age


def canary_rpo(writes: Sequence[Any], recovered: Mapping[int, datetime], cut: datetime) -> dict[str, Any]:
    """RPO = CUT - the newest canary row recovered, both on the server's clock (CUT is the
    clock_timestamp() read after the last write before it, on the same connection;
    RECOVERED maps seq -> written_at). Every write acknowledged before the cut must be
    recovered and no row written after it."""
    ours = {w.seq for w in writes}
    got = {seq: at for seq, at in recovered.items() if seq in ours}
    before = [w for w in writes if w.ok and w.written_at is not None and w.written_at <= cut]
    missing = [w.seq for w in before if w.seq not in got]
    after = sorted(seq for seq, at in got.items() if at > cut)
    newest = max((at for at in got.values() if at <= cut), default=None)
    return {
        "cut_at": iso(cut),
        "cut_clock": "server (clock_timestamp() after the last canary write before the cut)",
        "acked_before_cut": len(before),
        "written_after_cut": len([w for w in writes if w.ok and w.written_at and w.written_at > cut]),
        "recovered": len(got),
        "missing_before_cut": missing[:50],
        "present_after_cut": after[:50],
        "lost_commits": len(missing),
        "newest_recovered_at": iso(newest),
        "rpo_seconds": round(max(0.0, (cut - newest).total_seconds()), 3) if newest else None,
        "ok": bool(before) and not missing and not after,
    }


def owner_gone(journal: Mapping[str, Any]) -> bool:
    """A `running` checkpoint whose process, on this machine, no longer exists (killed)."""
    owner = (journal.get("details") or {}).get("owner") or {}
    if owner.get("node") != socket.gethostname() or not isinstance(owner.get("pid"), int):
        return False
    try:
        os.kill(owner["pid"], 0)
    except ProcessLookupError:
        return True
    except OSError:
        return False
    return False


class CloudDrill(local_drill_frame.RunFrame):
    """One cloud drill run: steps, clean-ups, timeline, and its journal."""

    def __init__(
        self, settings: Any, platform: Any, scenario: str, progress: Progress, options: dict[str, Any]
    ):
        from voketag_ops.workflows.cloud_dr import _Steps

        super().__init__()
        self.preparing = (
            True  # until the scenario's first request on a scratch instance: before it, nothing was drilled
        )
        self.settings, self.platform, self.scenario, self.progress = settings, platform, scenario, progress
        self.env = settings.environment(settings.env)
        self.recovery = platform.recovery()
        self.options = options
        started = instant()
        tag = uuid.uuid4().hex[:4]
        self.run_id = f"{scenario}-{started.strftime(_LONG_STAMP)}-{tag}"
        self.scratch_id = scratch_id(self.env.instance, scenario, started, tag)  # exit 3 before anything
        self.db: Any = None
        self.postgres_version: str | None = None
        self.started_at, self.t0 = started, time.monotonic()
        self.steps, self.cleanup_steps = _Steps(progress), _Steps(progress)
        self.integrity: list[dict[str, Any]] = []
        self.read_lsn: str | None = None  # where the canary was last read
        self.details: dict[str, Any] = {"scratch": [], "production": {}, "scratch_id": self.scratch_id}
        self.canary: dict[str, Any] = {}
        self.rpo: float | None = None
        self.lost: int | None = None
        self.steady_before: dict[str, Any] | None = None
        self.steady_after: dict[str, Any] | None = None
        self.status: str | None = None
        self.left_behind: list[str] = []
        self.primary: str = self.env.instance
        self.targets = core.targets_for(
            scenario,
            rto=settings.dr.rto_seconds,
            rto_regional=settings.dr.rto_regional_seconds,
            rto_network=settings.dr.rto_network_seconds,
            rpo=settings.dr.rpo_seconds,
            cloud=True,
            source="dr settings (voke config show)",
        )

    # -- helpers ------------------------------------------------------------------------------------
    def scratch(self, suffix: str = "") -> str:
        return f"{scratch_prefix(self.env.instance)}{self.scratch_id}{suffix}"

    def guard(self, name: str) -> str:
        """NAME, after checking it is a scratch instance (never a production one)."""
        production = {self.env.instance, self.env.replica}
        if name in production or not scratch_pattern(self.env.instance).fullmatch(name):
            raise VokeError(f"refusing to change {name}: not a scratch instance of this drill")  # a bug
        return name

    def cleanup_step(self, name: str) -> AbstractContextManager[Any]:
        return self.cleanup_steps.run(name)

    def _entry(self, name: str) -> dict[str, Any] | None:
        return next((s for s in self.details["scratch"] if s["name"] == name), None)

    def delete_scratch(self, name: str) -> None:
        """Delete a scratch instance; remember it when that fails (exit 7 at the end). One of
        this run's that is not labelled yet (a clone still carries production's labels) is
        labelled as the drill's first, best effort, so any later run's sweep finds it; the
        journal lists it as not deleted either way (this machine's sweep finds it by that).
        A delete that leaves it billed raises NeedsOperatorError, so that its clean-up step
        records the exit code the run ends with for it (7)."""
        self.guard(name)
        entry = self._entry(name)
        try:
            self.recovery.delete_instance(name)
        except NotFoundError:
            # Never created, already gone, or (a create cut short mid-poll) not there *yet*: the
            # journal keeps it as not deleted, so a later run's sweep deletes it if it appears.
            if entry is not None:
                entry["not_found_at_cleanup"] = True
                if entry.get("outcome_unknown") or (entry.get("created") and self._still_there(name)):
                    # Its create was accepted and not seen to end (it may appear and be billed), or
                    # it answered this run and is still listed: a person is told (exit 7), as a
                    # later drill only on this machine would delete it.
                    self.left_behind.append(name)
                    log.warning("scratch instance %s was not found to delete, but it may exist", name)
                    raise NeedsOperatorError(
                        f"the scratch instance {name} was not found to delete, but it may exist (billed)"
                    ) from None
                log.warning(
                    "scratch instance %s was not found to delete; a later drill deletes it if it appears",
                    name,
                )
            return
        except Exception as exc:
            self.left_behind.append(name)
            if entry is not None and not entry.get("labelled"):
                self._label_quietly(name)
            if isinstance(exc, VokeError):  # (a refused or failed delete; a bug stays one)
                raise NeedsOperatorError(
                    f"could not delete the scratch instance {name} (it is billed): {exc.message}"
                ) from exc
            raise
        except BaseException:
            self.left_behind.append(name)
            raise
        if entry is not None:
            entry["deleted"] = True

    def _still_there(self, name: str) -> bool:
        """Whether NAME is still listed (a delete answered 404 for it): unknown counts as there."""
        try:
            self.recovery.instance(name)
        except NotFoundError:
            return False
        except Exception:
            return True
        return True

    @contextmanager
    def creating(self, name: str) -> Iterator[None]:
        """Around the request that creates scratch instance NAME: `created` once it returned
        (its operation DONE), `outcome_unknown` when the request may have been accepted but was
        not seen to end (a timeout or a lost poll, an interrupt): such an instance may appear
        later, so a delete that finds nothing does not count it gone."""
        entry = self._entry(name)
        try:
            yield
        except BaseException as exc:
            unknown = isinstance(exc, StepTimeoutError | OutcomeUnknownError | Interrupted) or not isinstance(
                exc, VokeError
            )
            if entry is not None and unknown:
                entry["outcome_unknown"] = True
            raise
        if entry is not None:
            entry["created"] = True

    def _label_quietly(self, name: str) -> None:
        try:
            self.recovery.set_labels(name, self.labels())
        except Exception as exc:
            log.warning("could not label the leftover %s: %s", name, getattr(exc, "message", exc))
            return
        entry = self._entry(name)
        if entry is not None:
            entry["labelled"] = True

    def register_scratch(self, name: str, role: str, *, labelled: bool = False) -> None:
        """NAME is about to be created: the journal says so on disk first (a checkpoint with
        status `running`), so a later run on this machine deletes it even when this process
        dies before it is labelled or deleted."""
        self.details["scratch"].append({"name": name, "role": role, "deleted": False, "labelled": labelled})
        self.checkpoint()
        self.on_cleanup(f"delete the scratch instance {name}", lambda: self.delete_scratch(name))

    def checkpoint(self) -> None:
        """Save the journal as it stands (status `running`, this process as its owner); the
        journal saved at the end replaces it."""
        from types import SimpleNamespace

        from voketag_ops.workflows import drill as local_drill

        journal = self.journal(under_way=True) | {"status": "running", "finished_at": None}
        journal["details"] = dict(
            journal["details"], owner={"node": socket.gethostname(), "pid": os.getpid()}
        )
        local_drill.save_journal(SimpleNamespace(home=drills_home(self.settings)), journal)  # type: ignore[arg-type]

    def labels(self) -> dict[str, str | None]:
        """The drill's labels; a clone copies its source's labels, so the topology record
        (voke-role, voke-since, voke-op) is dropped from a scratch instance."""
        from voketag_ops.workflows import cloud_topology as topo

        return {DRILL_LABEL: self.run_id, ENV_LABEL: self.settings.env} | dict.fromkeys(
            (topo.ROLE_LABEL, topo.SINCE_LABEL, topo.OP_LABEL)
        )

    def label(self, name: str) -> None:
        """Mark a scratch instance as the drill's: a later run's sweep deletes only labelled
        scratch instances. Best effort here (this run deletes it anyway); a step of its own,
        after the RTO measurement."""
        with self.steps.run(f"label {name} as the drill's") as info:
            try:
                self.recovery.set_labels(self.guard(name), self.labels())
                info["labels"] = {DRILL_LABEL: self.run_id, ENV_LABEL: self.settings.env}
                entry = self._entry(name)
                if entry is not None:
                    entry["labelled"] = True
            except VokeError as exc:
                info["warning"] = exc.message
                log.warning("could not label %s: %s", name, exc.message)

    def _labelled(self, name: str) -> bool:
        entry = self._entry(name)
        if entry is not None:
            return bool(entry.get("labelled"))
        return name in (self.details.get("leftovers") or {}).get("labelled", [])

    def read_version(self, name: str) -> None:
        """The instance's databaseVersion for the journal (best effort)."""
        try:
            self.postgres_version = self.recovery.database_version(name)
        except VokeError as exc:
            log.warning("could not read the database version of %s: %s", name, exc.message)

    def login(self) -> Any:
        from voketag_ops.adapters.gcp.canary import CanaryDb

        secret = self.env.canary_secret or next(
            (u.secret for u in self.settings.rotation.db_users.values()), None
        )
        if not secret:
            raise ConfigError(
                f"no login for the drill canary: set environments.{self.settings.env}.canary_secret "
                "(a secret holding JSON username, password, dbname)"
            )
        try:
            cred = json.loads(self.platform.store().access(secret, "current"))
        except ValueError:
            raise ConfigError(f"the secret {secret} does not hold a JSON database credential") from None
        if not isinstance(cred, dict):
            raise ConfigError(f"the secret {secret} does not hold a JSON database credential")
        self.details["canary_login"] = {"secret": secret, "username": cred.get("username")}
        return CanaryDb(cred, port=self.env.db_port, timeout=min(10.0, self.env.timeout))

    def host_of(self, name: str) -> str:
        info = self.recovery.instance(name)
        if not info.ip_address:
            raise NeedsOperatorError(f"{name} has no IP address to connect the canary to")
        return str(info.ip_address)

    def sweep(self) -> None:
        """Delete scratch instances earlier runs left behind."""
        min_age = max(6 * self.env.operation_timeout, 60.0)
        with self.steps.run("delete scratch instances left by earlier runs") as info:
            from types import SimpleNamespace

            from voketag_ops.workflows import drill as local_drill

            journals = [
                j
                for j in local_drill.load_journals(SimpleNamespace(home=drills_home(self.settings)))  # type: ignore[arg-type]
                if j.get("run_id") != self.run_id
            ]
            over = [j for j in journals if j.get("status") != "running" or owner_gone(j)]
            finished = frozenset(str(j.get("run_id")) for j in over) | frozenset(
                str((j.get("details") or {}).get("scratch_id")) for j in over
            )
            # scratch instances these journals list as created and not deleted: found by name
            # even without the drill's labels (still only names voke generates)
            journaled = frozenset(
                str(s.get("name"))
                for j in journals
                for s in (j.get("details") or {}).get("scratch") or []
                if isinstance(s, dict) and not s.get("deleted")
            )
            now = _utcnow()
            found, ignored, swept_labelled = [], [], []
            for i, labels in self.recovery.list_instances():
                if is_leftover(
                    i.name,
                    self.env.instance,
                    labels=labels,
                    env=self.settings.env,
                    now=now,
                    min_age=min_age,
                    finished=finished,
                    journaled=journaled,
                ):
                    found.append(i.name)
                    if labels.get(DRILL_LABEL) and labels.get(ENV_LABEL) == self.settings.env:
                        swept_labelled.append(i.name)
                elif i.name.startswith(scratch_prefix(self.env.instance)):
                    ignored.append(i.name)  # not provably a finished drill's: reported, never deleted
            # replicas first: Cloud SQL refuses to delete an instance that still has replicas
            found.sort(key=lambda n: (not n.endswith(REPLICA_SUFFIX), n))
            info["found"], info["deleted"], info["not_touched"] = found, [], ignored
            for name in found:
                try:
                    self.delete_scratch(name)
                    info["deleted"].append(name)
                except VokeError as exc:
                    log.warning("could not delete the leftover %s: %s", name, exc.message)
            self.details["leftovers"] = {
                "found": found,
                "deleted": info["deleted"],
                "not_touched": ignored,
                "labelled": swept_labelled,
            }

    def steady_state(self) -> dict[str, Any]:
        """The steady state this drill needs, before it starts and after it ended."""
        return self.steady(pitr=self.scenario == "pitr")

    def steady(self, *, pitr: bool) -> dict[str, Any]:
        from voketag_ops.workflows import cloud_topology

        checks: list[dict[str, Any]] = []
        try:
            topo = cloud_topology.read(self.settings, self.recovery)
        except VokeError as exc:
            return {
                "ok": False,
                "checked_at": iso(_utcnow()),
                "checks": [{"name": "topology", "ok": False, "message": exc.message}],
            }
        info = topo.instances[topo.primary]
        self.primary = topo.primary
        checks.append({"name": "topology", "ok": True, "message": topo.describe()})
        running = info.state == "RUNNABLE"
        checks.append({"name": "leader_running", "ok": running, "message": f"{info.name} is {info.state}"})
        if pitr:
            checks.append(
                {
                    "name": "pitr_enabled",
                    "ok": info.pitr_enabled,
                    "message": f"point-in-time recovery {'on' if info.pitr_enabled else 'off'} on {info.name}",
                }
            )
        return {
            "ok": all(c["ok"] for c in checks),
            "checked_at": iso(_utcnow()),
            "leader": topo.primary,
            "checks": checks,
        }

    def canary_write(self, db: Any, host: str, where: str, *, after: int = 0) -> tuple[list[Any], datetime]:
        """Canary rows on WHERE, then the cut (WHERE's own clock), then AFTER more rows. None
        acknowledged: NeedsOperatorError with the first write's error (the server's message)
        and the table's DDL as the hint (in the step's detail and the canary's journal entry)."""
        from voketag_ops.adapters.gcp.canary import DDL_HINT

        seconds = local_drill_frame.canary_seconds(self.settings, self.options, CLOUD_CANARY_SECONDS)
        interval = min(0.5, max(0.01, seconds / 10))
        with self.steps.run(f"write canary rows on {where} for {seconds:g} s") as info:
            writes, cut = db.write(host, self.run_id, seconds=seconds, interval=interval, after=after)
            acked = [w for w in writes if w.ok and w.written_at is not None and w.written_at <= cut]
            later = [w for w in writes if w.ok and w.written_at is not None and w.written_at > cut]
            info.update(writes=len(writes), acked=len(acked), after_cut=len(later), cut_at=iso(cut))
            first_error = next((w.error for w in writes if not w.ok and w.error), None)
            if first_error:
                info["first_error"] = first_error
            self.canary.update(
                table="voke_drill_canary",
                written_on=where,
                interval_seconds=interval,
                writes=len(writes),
                acked_commits=len(acked),
                written_after_cut=len(later),
                failed_writes=len([w for w in writes if not w.ok]),
                first_seq=writes[0].seq if writes else None,
                last_seq=writes[-1].seq if writes else None,
            )
            if first_error:
                self.canary["first_error"] = first_error
            self.details["cut_at"] = iso(cut)
            if not acked:
                hint = (
                    "the canary needs this table, with its primary key (ON CONFLICT uses it), "
                    f"writable by the canary's login: {DDL_HINT}"
                )
                info["hint"] = self.canary["hint"] = hint
                raise NeedsOperatorError(
                    f"no canary write was acknowledged on {where}"
                    + (f" (first error: {first_error})" if first_error else ""),
                    hint=hint,
                )
        return writes, cut

    def answer(self, db: Any, name: str, *, write: bool) -> dict[int, datetime]:
        ctx = self.platform.ctx
        with self.steps.run(f"connect to {name} and read the canary") as info:
            host = self.host_of(name)
            answered, rows = db.wait_answer(
                host,
                self.run_id,
                timeout=self.env.operation_timeout,
                poll=ctx.poll_interval,
                write_seq=10**6 if write else None,
            )
            self.mark("first_write_ok_at", answered)
            self.read_lsn = db.wal_position(host)  # where the rows were read: the integrity record's
            info.update(host=host, rows=len(rows), wrote=write, lsn=self.read_lsn)
        return rows

    def evaluate(self, writes: list[Any], rows: dict[int, datetime], cut: datetime, where: str) -> None:
        result = canary_rpo(writes, rows, cut)
        self.rpo, self.lost = result["rpo_seconds"], result["lost_commits"]
        self.canary["rpo"] = result
        seqs = ",".join(str(s) for s in sorted(s for s in rows if s < 10**6))
        self.integrity.append(
            {
                "table": "voke_drill_canary",
                "rows": len([s for s in rows if s < 10**6]),
                "checksum": hashlib.sha256(seqs.encode()).hexdigest()[:16],
                "match": result["ok"],
                "where": where,
                "lsn": self.read_lsn,
            }
        )
        self.mark("verified_at")

    # -- the journal ------------------------------------------------------------------------------------
    def journal(self, *, under_way: bool = False) -> dict[str, Any]:
        """The journal; UNDER_WAY (a checkpoint of a run still going): nothing not yet measured
        is judged, so a run killed after it reads "not measured", not breached."""
        from voketag_ops import __version__

        rto = core.rto_seconds(self.timeline)
        v = core.verdict(
            rto=rto,
            rpo=self.rpo,
            targets=self.targets,
            integrity=self.integrity,
            steady_after_ok=None
            if self.status in ("aborted", "interrupted")
            else (self.steady_after or {}).get("ok"),
            error=self.error,
            cut_short=under_way or self.status in ("aborted", "interrupted"),
        )
        status = self.status if self.status in ("aborted", "interrupted") else v["status"]
        if self.left_behind and status == "completed":
            status = "failed"
            v["breaches"].append(f"scratch instance(s) not deleted: {', '.join(self.left_behind)}")
        failed_cleanups = [c["name"] for c in self.cleanup_steps.items if not c["ok"]]
        if failed_cleanups and status == "completed":  # e.g. canary rows left on production
            status = "failed"
            v["breaches"].append(f"clean-up step(s) failed: {'; '.join(failed_cleanups)}")
        return {
            "run_id": self.run_id,
            "scenario": self.scenario,
            "environment": self.settings.env,
            "mode": "cloud",
            "versions": {
                "voke": __version__,
                "postgres": self.postgres_version,
                "python": _platform.python_version(),
            },
            "platform": _platform.platform(),
            "node": socket.gethostname(),
            "started_at": iso(self.started_at),
            "finished_at": iso(instant()),
            "duration_seconds": round(time.monotonic() - self.t0, 3),
            "targets": {
                "rto_target_seconds": self.targets.rto_target_seconds,
                "rpo_target_seconds": self.targets.rpo_target_seconds,
                "disruption": self.targets.disruption,
                "source": self.targets.source,
            },
            "timeline": {k: iso(v) for k, v in self.timeline.items()},
            "phases": core.phases(self.timeline),
            "rto_seconds": rto,
            "rpo_seconds": self.rpo,
            "lost_commits": self.lost,
            "canary": self.canary,
            "integrity": self.integrity,
            "steps": self.steps.items,
            "cleanup": self.cleanup_steps.items,
            "steady_state": {"before": self.steady_before, "after": self.steady_after},
            "rto_met": v["rto_met"],
            "rpo_met": v["rpo_met"],
            "integrity_ok": v["integrity_ok"],
            "status": status,
            "breaches": v["breaches"],
            "error": self.error,
            "left_behind": list(self.left_behind),
            "left_behind_unlabelled": [n for n in self.left_behind if not self._labelled(n)],
            "details": self.details,
        }


# -- the scenarios ------------------------------------------------------------------------------------
def _ended(op: Any, started: datetime) -> datetime:
    """When Cloud SQL says OP ended (its endTime), not when voke's poll, up to poll_interval
    later, saw it DONE; kept between the request and now, since the two clocks differ."""
    from voketag_ops.core.dr_checks import parse_iso

    now = instant()
    ended = parse_iso(op.finished_at)
    return now if ended is None else min(max(ended, started), now)


def _wait_window(run: CloudDrill, cut: datetime) -> None:
    """Until getLatestRecoveryTime reaches CUT (Cloud SQL uploads its WAL every few minutes)."""
    from voketag_ops.core.dr_checks import parse_iso

    ctx = run.platform.ctx
    with run.steps.run("wait until the recoverable window reaches the cut") as info:
        deadline = time.monotonic() + run.env.operation_timeout
        while True:
            latest = parse_iso(run.recovery.recovery_window(run.primary).latest)
            if latest is not None and latest >= cut:
                info["latest"] = iso(latest)
                return
            if time.monotonic() >= deadline:
                raise StepTimeoutError(
                    f"the recoverable window of {run.primary} did not reach {iso(cut)} "
                    f"within {run.env.operation_timeout:g} s (latest {iso(latest)})"
                )
            ctx.sleep(ctx.poll_interval)


def _pitr(run: CloudDrill) -> None:
    db = run.db
    primary = run.primary
    run.read_version(primary)
    # The configured addresses, as rotation's login test uses them: the home primary's db_host, or
    # after a failover the DR replica's replica_db_host/port (a relay), else the instance's own IP.
    if run.env.db_host and primary == run.env.instance:
        host = run.env.db_host
    elif run.env.replica_db_host and primary == run.env.replica:
        host = run.env.replica_db_host
        db.ports[host] = run.env.replica_db_port
    else:
        host = run.host_of(primary)
    run.details["production"] = {"primary": primary, "changed": "canary rows only (deleted at the end)"}
    run.on_cleanup(f"delete the canary rows on {primary}", lambda: db.delete(host, run.run_id))
    writes, cut = run.canary_write(db, host, primary, after=AFTER_CUT)
    _wait_window(run, cut)
    scratch = run.scratch()
    run.register_scratch(scratch, "pitr clone")
    run.preparing = False  # the clone is the drill's recovery
    started = run.mark("recovery_started_at")
    run.mark("fault_injected_at", started)  # no outage on a scratch instance: RTO runs from the request
    run.mark("detected_at", started)
    with run.steps.run(f"clone {primary} at the cut into {scratch}") as info, run.creating(scratch):
        op = run.recovery.clone_to_point_in_time(iso(cut), run.guard(scratch), primary)
        info["operation"] = op.name
    run.mark("recovered_at", _ended(op, started))
    rows = run.answer(db, scratch, write=False)  # the end of the RTO window
    run.label(scratch)
    run.evaluate(writes, rows, cut, scratch)


def _failover(run: CloudDrill) -> None:
    db = run.db
    primary = run.primary
    run.read_version(primary)
    scratch, replica = run.scratch(), run.scratch(REPLICA_SUFFIX)
    run.details["production"] = {"primary": primary, "changed": "nothing (cloned from)"}
    run.register_scratch(scratch, "scratch primary")
    run.preparing = False  # the scratch pair is the drill's own (its failures are the drill's)
    with run.steps.run(f"clone {primary} into the scratch primary {scratch}") as info, run.creating(scratch):
        info["operation"] = run.recovery.clone_instance(run.guard(scratch), primary).name
    run.label(scratch)
    run.register_scratch(
        replica, "scratch replica", labelled=True
    )  # deleted first (LIFO): replicas go before primaries
    with run.steps.run(f"create the scratch replica {replica}") as info, run.creating(replica):
        labels = {k: v for k, v in run.labels().items() if v is not None}
        info["operation"] = run.recovery.create_replica(run.guard(replica), scratch, labels=labels).name
    writes, cut = run.canary_write(db, run.host_of(scratch), scratch)
    started = run.mark("recovery_started_at")
    run.mark("fault_injected_at", started)
    run.mark("detected_at", started)
    with run.steps.run(f"promote the scratch replica {replica}") as info:
        op = run.recovery.promote_replica(run.guard(replica), failover=False)
        info["operation"] = op.name
    run.mark("recovered_at", _ended(op, started))
    rows = run.answer(db, replica, write=True)
    run.evaluate(writes, rows, cut, replica)


RUNNERS: dict[str, Callable[[CloudDrill], None]] = {"pitr": _pitr, "failover": _failover}


# -- running ------------------------------------------------------------------------------------------
def _publish(run: CloudDrill, journal: dict[str, Any]) -> None:
    from voketag_ops.adapters.gcp import catalog

    labels = {"scenario": run.scenario, "env": run.settings.env}
    points = [
        (metric, float(journal[key]), labels)
        for metric, key in ((catalog.DRILL_RTO, "rto_seconds"), (catalog.DRILL_RPO, "rpo_seconds"))
        if journal.get(key) is not None
    ]
    if not points:
        return
    try:
        run.platform.monitoring.write_many(points)
        journal["details"]["metrics_written"] = len(points)
    except Exception as exc:  # best effort: the drill's answer does not depend on Monitoring
        log.warning(
            "drill RTO/RPO not written to Cloud Monitoring: %s",
            getattr(exc, "message", None) or type(exc).__name__,
        )


def run_drill(
    settings: Any,
    scenario: str,
    *,
    home: Path,
    progress: Progress,
    options: dict[str, Any],
    platform: Any = None,
    saved: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """One cloud drill end to end; its journal (saved even on failure or Ctrl-C, and appended to
    SAVED). Ctrl-C cleans up, saves the journal as `interrupted` and raises Interrupted naming it."""
    from types import SimpleNamespace

    from voketag_ops.audit import audited
    from voketag_ops.workflows import drill as local_drill
    from voketag_ops.workflows.cloud import CloudPlatform

    platform = platform or CloudPlatform(settings)
    interrupted = False
    with (
        audited(home, event_type=f"drill.{scenario}", env=settings.env, target=scenario) as event,
        measuring(),  # the run's timeline and canary on one steady clock
    ):
        run = CloudDrill(settings, platform, scenario, progress, options)
        event.details["run_id"] = run.run_id
        # a configuration error (no canary login, a secret that is not a JSON credential) is
        # exit 3 before anything ran or was swept, not a failed drill
        run.db = run.login()
        try:

            def scenario_run() -> None:
                run.sweep()
                RUNNERS[scenario](run)

            interrupted = local_drill.drive(
                run,
                f"cloud drill {scenario}",
                progress=progress,
                before=run.steady_state,
                scenario=scenario_run,
                after=run.steady_state,
                after_interrupt=False,
            )
        finally:
            journal = run.journal()
            if not interrupted:
                _publish(run, journal)
            path = local_drill.save_journal(SimpleNamespace(home=drills_home(settings)), journal)  # type: ignore[arg-type]
            if saved is not None:
                saved.append(journal)
        local_drill.journal_event(
            event,
            journal,
            scratch=[s["name"] for s in run.details["scratch"]],
            left_behind=journal["left_behind"],
        )
    if interrupted:  # exit 130, naming the journal saved as `interrupted` (as a local drill does)
        raise Interrupted(
            f"{interrupts.stopped_by()}: "
            f"drill {scenario} {journal['run_id']} stopped after its clean-up (journal {path})",
            hint=f"its journal: voke drill report {journal['run_id']}",
        )
    return journal


def check_before(settings: Any, scenario: str, *, platform: Any, options: dict[str, Any]) -> dict[str, Any]:
    """A dry run's checks: what `run_drill` refuses on before it changes anything, read-only (no
    lock, journal, audit event or sweep): the canary's login (credentials, the secret: exit 3 or
    4 as the run), then the steady state, whose failure aborts the run (exit 5 here too). Returns
    the steady state."""
    run = CloudDrill(settings, platform, scenario, lambda _m: None, options)
    run.login()
    steady = run.steady_state()
    why = local_drill_frame.unsteady(steady)
    if why is not None:
        raise PreconditionError(f"drill {scenario} would be aborted: {why}; nothing was changed")
    return steady


def _retry_note(settings: Any, unlabelled: list[str]) -> str:
    """What the next run does about the leftovers: every run deletes a labelled one; one
    without the drill's labels only a run on this machine, whose journals list it."""
    if not unlabelled:
        return "; the next drill run also retries"
    return (
        f"; the next drill run on this machine also retries (its journals under "
        f"{drills_home(settings) / 'drills'} list them); {', '.join(unlabelled)} could not be labelled "
        "as the drill's, so runs on other machines leave them alone"
    )


def _known_scenarios(settings: Any, scenario: str, **_: Any) -> list[str]:
    """The drills SCENARIO names, and a scratch-instance name Cloud SQL takes for each (exit 2
    for an unknown drill, 3 for a local-only one or an instance name too long)."""
    if scenario == "all":
        scenarios = list(SCENARIOS)
    elif scenario in SCENARIOS:
        scenarios = [scenario]
    elif scenario in core.SCENARIOS:  # a local drill: the environment chosen is the problem (exit 3)
        raise ConfigError(
            f"the {scenario} drill runs on the local environment only; on a cloud environment: "
            f"{', '.join(SCENARIOS)} or all"
        )
    else:
        raise UsageError(f"unknown drill {scenario!r} ({', '.join(SCENARIOS)} or all)")
    env = settings.environment(settings.env)
    for name in scenarios:  # a name Cloud SQL would refuse: exit 3 before anything is written
        scratch_id(env.instance, name, _utcnow(), "0000")
    return scenarios


@one_at_a_time("drill run", check=_known_scenarios)
def run(
    settings: Any,
    scenario: str,
    *,
    home: Path,
    dry_run: bool = False,
    progress: Progress = lambda _m: None,
    options: dict[str, Any] | None = None,
) -> local_drill_frame.RunOutcome:
    """`voke --env NAME drill run pitr|failover|all`: one journal, or {"runs": [...]} for all;
    as locally, a drill that raises once its journal was saved (Ctrl-C) ends the run: the
    journal saved (for `all`: the journals saved), with its error. Scratch instances that could
    not be deleted (after Ctrl-C too: they are billed until a person deletes them) are
    NeedsOperatorError (exit 7) naming them and the delete command, and the interruption if
    there was one, with the journals saved. A dry run is the plan after `check_before`."""
    scenarios = _known_scenarios(settings, scenario)
    env = settings.environment(settings.env)
    if dry_run:  # the plan, after the checks the run makes before it changes anything
        from voketag_ops.workflows.cloud import CloudPlatform

        platform = CloudPlatform(settings)
        steady = {n: check_before(settings, n, platform=platform, options=options or {}) for n in scenarios}
        plan = {n: PLANS[n] for n in scenarios}
        return local_drill_frame.RunOutcome(
            {
                "dry_run": True,
                "env": settings.env,
                "instance": env.instance,
                "plan": plan,
                "steady_state": steady,
            }
        )
    journals: list[dict[str, Any]] = []
    error: VokeError | None = None
    for name in scenarios:
        saved: list[dict[str, Any]] = []
        try:
            journals.append(
                run_drill(settings, name, home=home, progress=progress, options=options or {}, saved=saved)
            )
        except (VokeError, KeyboardInterrupt) as exc:  # (Ctrl-C between two drills: not turned yet)
            journals.extend(saved)  # an interrupted drill's, saved before it raised
            if not journals:
                raise
            # the drills that ran are reported with it; the rest did not run
            error = exc if isinstance(exc, VokeError) else local_drill_frame.between_drills(name, saved)
            break
    left = sorted({name for j in journals for name in j.get("left_behind") or []})
    if left:  # also after Ctrl-C: the interruption is said, the billed instances need a person
        unlabelled = sorted({name for j in journals for name in j.get("left_behind_unlabelled") or []})
        error = NeedsOperatorError(
            (f"{error.message}; " if error is not None else "")
            + f"the drill could not delete the scratch instance(s) {', '.join(left)} (they are billed)",
            hint="delete them: "
            + "; ".join(f"gcloud sql instances delete {n} --project {env.project}" for n in left)
            + _retry_note(settings, unlabelled)
            + (f"; {error.hint}" if error is not None and error.hint else ""),
        )
    if scenario != "all":  # its journal, with the error that ended it (exit 130, or 7)
        return local_drill_frame.RunOutcome(journals[0], error)
    report = {
        "runs": journals,
        "status": "completed"
        if error is None and all(j["status"] == "completed" for j in journals)
        else "failed",
        "not_run": scenarios[len(journals) :],
    }
    return local_drill_frame.RunOutcome(report, error)
