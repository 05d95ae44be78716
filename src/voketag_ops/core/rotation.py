"""Rotation protocol: steps, the record kept in the secret's annotations, passwords,
schedules and the cleanup plan. Pure: no I/O, time is passed in.

The record holds version numbers and step results, never values. It is written with
a compare-and-swap after every step, so a rerun knows exactly where to continue and
what a rollback has to undo.
"""

from __future__ import annotations

import json
import secrets
import string
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any, Literal, get_args

from voketag_ops.core.times import iso
from voketag_ops.errors import ConfigError
from voketag_ops.redact import redact

STEPS = ("lock", "create_pending", "set_target", "test", "commit", "deploy", "health", "finish")
Step = Literal["lock", "create_pending", "set_target", "test", "commit", "deploy", "health", "finish"]
Status = Literal["in_progress", "rolling_back", "succeeded", "rolled_back", "needs_attention"]
# A rotation under way, forward or (rolling_back) backward: its owner may be running it.
ACTIVE: tuple[Status, ...] = ("in_progress", "rolling_back")
ANNOTATION = "voke-rotation"
LAST_ANNOTATION = "voke-last-rotation"
# The version the last SUCCEEDED rotation made current, and when: `voke-last-rotation` is
# replaced by whatever rotation ends next, rolled back or not.
CURRENT_ANNOTATION = "voke-became-current"
EMERGENCY = "emergency"  # the strategy of a JWT rotation that replaces every key at once

# Characters that survive shells, URLs and conninfo strings without quoting surprises.
SYMBOLS = "!#%*+-=?@^_~"
ALPHABET = string.ascii_letters + string.digits + SYMBOLS


def generate_password(length: int = 32) -> str:
    """LENGTH characters from `secrets`, with at least one lower, upper, digit and symbol."""
    if length < 8:
        raise ValueError("password length must be at least 8")
    while True:
        value = "".join(secrets.choice(ALPHABET) for _ in range(length))
        if (
            any(c.islower() for c in value)
            and any(c.isupper() for c in value)
            and any(c.isdigit() for c in value)
            and any(c in SYMBOLS for c in value)
        ):
            return value


def new_rotation_id(now: datetime) -> str:
    return "rot-" + now.strftime("%Y%m%dT%H%M%SZ") + "-" + secrets.token_hex(3)


def parse_iso(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


@dataclass
class StepRecord:
    """What happened in one step."""

    name: str
    status: Literal["done", "skipped", "failed", "rolled_back"]
    duration_seconds: float
    detail: str = ""


@dataclass
class RotationRecord:
    """The state of one rotation, stored as JSON in the secret's `voke-rotation` annotation."""

    id: str
    secret: str
    kind: str  # db-password, api-key:stripe, jwt, ...
    strategy: str  # alternating | single
    target: str  # logical name (db user, provider)
    owner: str  # host[/boot/pid-namespace]:pid of the process holding the lease
    lease_until: str
    started_at: str
    status: Status = "in_progress"
    step: str = ""  # the last step completed
    old_current: int | None = None
    old_previous: int | None = None
    pending_version: int | None = None
    finished_at: str | None = None
    steps: list[StepRecord] = field(default_factory=list)
    error: dict[str, str] | None = None
    # The scope of a rollback once begun (status rolling_back): an interrupted rollback is
    # finished, never resumed forward over the aliases it already moved back.
    rolling_back: str | None = None
    # When `current` moved to the new version (the commit): a JWT keyring's signing switched then.
    committed_at: str | None = None
    # True in a succeeded rotation's record from when its finish is recorded until its history
    # line and `rotation.finish` event are being written: a run cut in between wrote neither, so
    # a resume of a record saying so writes each that is missing (else it only clears it).
    untold: bool | None = None
    # How long it ran, from its start to its end, on the monotonic clock of the one run that did
    # both (None: not ended, ended by a later run such as a resume, or by an older voke).
    duration_seconds: float | None = None
    # Provider keys a create whose answer was lost may have made, which a rerun or rollback
    # could not tell from another consumer's and left alive: each {key_id, account, command}
    # (the command that deletes it), never key material. Empty for every other rotation.
    unclaimed_keys: list[dict[str, str]] = field(default_factory=list)
    # True once a rollback was refused because the old value no longer authenticates (and the
    # new one does): until a rollback runs, only the resume is offered (`unfinished_commands`).
    rollback_refused: bool | None = None

    def to_json(self) -> str:
        """The record as stored (the annotation, the history file), its error and step texts
        redacted: they quote backends' messages, and the annotation is readable with secrets.get."""
        doc = asdict(self)
        for step in doc["steps"]:
            step["detail"] = redact(step["detail"])
        if doc["error"]:
            doc["error"] = {k: redact(v) if isinstance(v, str) else v for k, v in doc["error"].items()}
        for late in (
            "rolling_back",
            "committed_at",
            "untold",
            "duration_seconds",
            "unclaimed_keys",
            "rollback_refused",
        ):
            if doc[late] in (None, []):  # absent, so that an older voke can still read the record
                del doc[late]
        return json.dumps(doc, separators=(",", ":"), sort_keys=True)

    @classmethod
    def from_json(cls, text: str, *, known_only: bool = False) -> RotationRecord:
        """The record TEXT holds; UnreadableRecord (a ValueError, exit 3) saying why if it holds
        none (not JSON, nested too deep, a field missing, unknown or of the wrong type: a hand
        edit, a torn line, a newer voke's record). KNOWN_ONLY (a finished record, only shown):
        the fields a newer voke added are left out instead."""
        try:
            raw = json.loads(text)
        except RecursionError:
            raise UnreadableRecord("nested too deeply to read") from None
        except ValueError as exc:
            raise UnreadableRecord(f"not JSON: {exc}") from None
        if known_only and isinstance(raw, dict):
            raw = {k: v for k, v in raw.items() if k in _FIELD_TYPES}
            if isinstance(raw.get("steps"), list):
                raw["steps"] = [
                    {k: v for k, v in s.items() if k in _STEP_TYPES} if isinstance(s, dict) else s
                    for s in raw["steps"]
                ]
        if (problem := _record_problem(raw)) is not None:
            secret = raw.get("secret") if isinstance(raw, dict) else None
            raise UnreadableRecord(problem, secret=secret if isinstance(secret, str) else None)
        raw["steps"] = [StepRecord(**s) for s in raw.get("steps", [])]
        return cls(**raw)

    def done(self, step: str) -> bool:
        """True when STEP was completed in an earlier run (resume skips it)."""
        return bool(self.step) and STEPS.index(self.step) >= STEPS.index(step)

    def next_steps(self) -> tuple[str, ...]:
        start = STEPS.index(self.step) + 1 if self.step else 0
        return STEPS[start:]

    def recorded_seconds(self) -> float:
        """How long it ran from its start to its finish: as measured when one run did both,
        else (a resumed rotation, an older voke's record) the difference of its recorded
        wall-clock start and finish, never below 0 (the clock stepped back between them); 0
        without a finish."""
        if self.duration_seconds is not None:
            return self.duration_seconds
        finished = parse_iso(self.finished_at or self.started_at)
        return max(0.0, (finished - parse_iso(self.started_at)).total_seconds())

    def lease_expired(self, now: datetime) -> bool:
        return parse_iso(self.lease_until) <= now

    def summary(self) -> dict[str, Any]:
        """The short record kept after the rotation ends (`voke-last-rotation`)."""
        return {
            "id": self.id,
            "status": self.status,
            "finished_at": self.finished_at,
            "version": self.pending_version,
            "kind": self.kind,
        }

    def became_current(self) -> dict[str, Any] | None:
        """What `voke-became-current` keeps of RECORD once it ended: the version it made current
        and when (its finish), for a rotation that succeeded; None for one that did not (the
        annotation then keeps the last one that did)."""
        if self.status != "succeeded" or self.pending_version is None or not self.finished_at:
            return None
        return {"version": self.pending_version, "at": self.finished_at}


_NONE = type(None)
_REQUIRED = ("id", "secret", "kind", "strategy", "target", "owner", "lease_until", "started_at")
# What each field of a stored record may hold (bool only where named: True is an int too).
_FIELD_TYPES: dict[str, tuple[type, ...]] = {
    **dict.fromkeys((*_REQUIRED, "status", "step"), (str,)),
    **dict.fromkeys(("old_current", "old_previous", "pending_version"), (int, _NONE)),
    **dict.fromkeys(("finished_at", "rolling_back", "committed_at"), (str, _NONE)),
    "steps": (list,),
    "error": (dict, _NONE),
    **dict.fromkeys(("untold", "rollback_refused"), (bool, _NONE)),
    "duration_seconds": (int, float, _NONE),
    "unclaimed_keys": (list,),
}
_STEP_TYPES: dict[str, tuple[type, ...]] = {
    "name": (str,),
    "status": (str,),
    "duration_seconds": (int, float),
    "detail": (str,),
}


def _type_problem(where: str, doc: dict[str, Any], types: dict[str, tuple[type, ...]]) -> str | None:
    for key, value in doc.items():
        if key not in types:
            return f"{where}unknown field {key[:40]!r}"
        if not isinstance(value, types[key]) or (isinstance(value, bool) and bool not in types[key]):
            return f"{where}{key} is {type(value).__name__}"
    return None


class UnreadableRecord(ConfigError, ValueError):
    """A stored rotation record this voke cannot read (exit 3, one line): edited by hand, cut
    short, or written by a newer voke (a field it does not know). Nothing is done with it."""

    def __init__(self, problem: str, *, secret: str | None = None) -> None:
        self.problem = problem
        super().__init__(
            f"the rotation record{f' of {secret}' if secret else ''} cannot be read: {problem}",
            hint="a newer voke's record: finish it with that voke (`voke rotate resume --yes`); "
            f"one edited by hand: repair the `{ANNOTATION}` annotation of the secret",
        )

    def __str__(self) -> str:
        return self.problem


def _record_problem(raw: Any) -> str | None:
    """What makes RAW no rotation record, or None."""
    if not isinstance(raw, dict):
        return f"not an object ({type(raw).__name__})"
    if missing := [k for k in _REQUIRED if k not in raw]:
        return f"no {missing[0]}"
    if problem := _type_problem("", raw, _FIELD_TYPES):
        return problem
    if raw.get("status", "in_progress") not in get_args(Status):
        return "unknown status"
    if raw.get("step", "") not in ("", *STEPS):
        return "unknown step"
    for i, step in enumerate(raw.get("steps", [])):
        if not isinstance(step, dict) or not {"name", "status", "duration_seconds"} <= step.keys():
            return f"steps[{i}] is not a step"
        if problem := _type_problem(f"steps[{i}].", step, _STEP_TYPES):
            return problem
    if raw.get("error") and not all(isinstance(v, str) for v in raw["error"].values()):
        return "error holds a value that is not text"
    for i, key in enumerate(raw.get("unclaimed_keys", [])):
        if not isinstance(key, dict) or not all(isinstance(v, str) for v in key.values()):
            return f"unclaimed_keys[{i}] is not a key"
    return None


def rollback_scope(last_step: str) -> Literal["discard_pending", "restore_target", "restore_aliases"]:
    """What a rollback must undo, given the last completed step (the issue's recovery rules)."""
    if not last_step or STEPS.index(last_step) < STEPS.index("set_target"):
        return "discard_pending"
    if STEPS.index(last_step) < STEPS.index("commit"):
        return "restore_target"
    return "restore_aliases"


# -- schedule -------------------------------------------------------------------------------
def next_due(cron: str, after: datetime) -> datetime:
    """The first time CRON fires strictly after AFTER (UTC)."""
    from cronsim import CronSim, CronSimError

    try:
        return next(CronSim(cron, after.astimezone(timezone.utc)))
    except CronSimError as exc:
        raise ValueError(f"invalid cron expression {cron!r}: {exc}") from None


def validate_cron(cron: str) -> None:
    next_due(cron, datetime(2026, 1, 1, tzinfo=timezone.utc))


# -- cleanup ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class CleanupAction:
    """Disable or destroy one version, and why."""

    secret: str
    version: int
    action: Literal["disable", "destroy", "retire"]  # retire: delete a superseded provider key
    reason: str


def plan_cleanup(
    secret: str,
    versions: list[tuple[int, str, str, str | None]],
    protected: set[int],
    now: datetime,
    *,
    current: int | None,
    became_current: Mapping[int, datetime] | None = None,
    keep: int = 3,
    disable_after: timedelta = timedelta(hours=24),
    destroy_after: timedelta = timedelta(days=30),
) -> list[CleanupAction]:
    """Versions to disable or destroy.

    VERSIONS: (number, state, created_at, state_changed_at). PROTECTED: aliased or pinned
    versions, never touched. The newest KEEP enabled versions are never touched either (a
    version a rollback disabled is no usable one to keep). CURRENT: the `current` version.

    A version is superseded once a later one became current and stayed: CURRENT, or an enabled
    version older than it. It is disabled DISABLE_AFTER that later one became current
    (BECAME_CURRENT; a version not in it: its creation), and
    destroyed DESTROY_AFTER it was disabled. A version a rollback disabled never stayed (the
    one before it was made current again), so it supersedes nothing: counted, its creation
    started the 24 h of the version before it early. The store cannot tell it from a version
    disabled after it stayed, nor is the rotation history on every machine, so no disabled or
    destroyed version counts: a version may be disabled late (at most DISABLE_AFTER after
    CURRENT became current), never early. Without CURRENT nothing is superseded.
    """
    ordered = sorted(versions)
    enabled = [n for n, state, *_ in ordered if state == "enabled"]
    newest = set(enabled[-keep:]) if keep else set()
    created = {n: parse_iso(c) for n, _s, c, _ch in ordered}
    stayed = [] if current is None else [n for n in enabled if n < current] + [current]
    actions: list[CleanupAction] = []
    for number, state, _created, changed in ordered:
        if number in protected or number in newest:
            continue
        if state == "enabled":
            since = became_current or {}
            superseded_at = min(
                (since.get(n, created[n]) for n in stayed if n > number and n in created), default=None
            )
            if superseded_at is not None and now - superseded_at >= disable_after:
                reason = f"superseded since {iso(superseded_at)}"
                actions.append(CleanupAction(secret, number, "disable", reason))
        elif (
            state == "disabled"
            and changed
            and number < max(created)  # (a newer version exists)
            and now - parse_iso(changed) >= destroy_after
        ):
            actions.append(CleanupAction(secret, number, "destroy", f"disabled since {changed}"))
    return actions
