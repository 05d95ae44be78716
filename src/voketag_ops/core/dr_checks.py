"""Judging DR health against thresholds, and the inputs DR commands accept.

Pure: the adapter gathers a snapshot (`dr status`), this module says which checks
pass. Every check is one line an operator or a monitoring job can act on.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from voketag_ops.core.times import offset_is_valid

_DURATION = re.compile(r"(\d+(?:\.\d+)?)\s*(ms|s|m|h|d|w)?", re.I)
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 604800.0, None: 1.0}
_NEXT_UNIT = {"w": "d", "d": "h", "h": "m", "m": "s", "s": "ms"}  # what '1h30' most likely meant
DURATION_EXAMPLES = "e.g. 90s, 5m, 1h30m, 24h, 2d"


MAX_DURATION = 3650 * 86400.0  # ten years: beyond any retention or outage, and within datetime's range


class NotADurationError(ValueError):
    """TEXT is no duration at all (not one with a part wrong): an option that takes other forms
    too (`audit show --since`: ISO 8601) names them instead."""


def parse_duration(text: str) -> float:
    """'90', '90s', '5m', '1h30m', '1.5h', '2d' -> seconds. Raises ValueError.

    A bare number is seconds only as the whole value: in '1h30' each part needs its unit,
    since reading the 30 as seconds puts a restore target an hour off what was meant."""
    raw = text.strip().lower()
    if not raw:
        raise ValueError(f"empty duration (use {DURATION_EXAMPLES})")
    pos = 0
    total = 0.0
    unit: str | None = None
    while pos < len(raw):
        match = _DURATION.match(raw, pos)
        if not match or match.end() == pos:
            raise NotADurationError(f"not a duration: {text!r} (use {DURATION_EXAMPLES})")
        if match.group(2) is None and (pos or match.end() != len(raw)):
            meant = raw[: match.start()] + match.group(1) + _NEXT_UNIT.get(unit or "", "s")
            raise ValueError(f"{text!r}: each part of a duration needs its unit (e.g. {meant})")
        unit = match.group(2)
        total += float(match.group(1)) * _UNIT_SECONDS[unit]
        pos = match.end()
        while pos < len(raw) and raw[pos] == " ":
            pos += 1
    if total > MAX_DURATION:
        raise ValueError(f"{text!r} is longer than {MAX_DURATION // 86400:.0f} days")
    return total


def parse_point_in_time(text: str, *, now: datetime) -> datetime:
    """A restore target: ISO 8601 with an offset ('…Z', '…+02:00'), 'now', or relative ('-5m').

    A timestamp without an offset is refused: guessing its zone is how restores land an
    hour off (pgbackrest#2531).
    """
    raw = text.strip()
    if raw.lower() == "now":
        return now
    if raw.startswith("-"):
        return now - timedelta(seconds=parse_duration(raw[1:]))
    try:
        value = datetime.fromisoformat(raw.replace("z", "Z").replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(
            f"not a point in time: {text!r} (use ISO 8601 with an offset, e.g. 2024-06-01T12:00:00Z, or -5m)"
        ) from None
    if value.tzinfo is None:
        raise ValueError(f"{text!r} has no UTC offset; add Z or +HH:MM so the instant is unambiguous")
    if not offset_is_valid(raw):
        raise ValueError(f"{text!r}: the offset's minutes run 00-59")
    try:
        return value.astimezone(UTC)
    except OverflowError:  # 0001-01-01T00:00:00+14:00 lies before year 1 in UTC
        raise ValueError(f"{text!r} is out of range") from None


def parse_iso(text: str | None) -> datetime | None:
    if not text:
        return None
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00")).astimezone(UTC)
    except OverflowError:  # 0001-01-01T00:00:00+14:00 lies before year 1 in UTC
        raise ValueError(f"{text!r} is out of range") from None


@dataclass(frozen=True)
class Thresholds:
    """What `dr check` holds the environment to."""

    max_backup_age_seconds: float
    max_lag_seconds: float
    min_pitr_window_seconds: float
    archive_stale_seconds: float
    replica_expected: bool = True
    pitr_retention_days: float | None = (
        None  # what a Cloud SQL primary must keep (locally `dr prune` keeps it)
    )


@dataclass(frozen=True)
class Check:
    """One judged check; MESSAGE is the line printed for it."""

    name: str
    ok: bool
    message: str
    value: Any = None
    threshold: Any = None


def _fmt_age(seconds: float) -> str:
    if seconds >= 3600:
        return f"{seconds / 3600:.1f} h"
    if seconds >= 60:
        return f"{seconds / 60:.1f} min"
    return f"{seconds:.1f} s"


# Throws a standby away and clones it anew from the leader, killing it first if it does not stop.
REBUILD_STANDBY = "voke dr failback --no-switch-back --clone --yes"


def resume_hint(pids: Sequence[int]) -> str:
    """What to run about stopped processes PIDS (`env up`, `env down`, `doctor`)."""
    return f"resume them if nothing holds them on purpose: `kill -CONT {' '.join(map(str, pids))}`"


def frozen_standby_remedy(pids: Sequence[int] = ()) -> str:
    """What to do about a standby whose postmaster is there but does not answer, which `voke env
    up` leaves as it is (it may be paused on purpose): resume its stopped PIDS (when known), or
    rebuild it. The one wording of `env up`'s warning, `doctor`, `dr check` and the drills."""
    resume = resume_hint(pids) if pids else "resume it if it was paused on purpose (SIGSTOP, a debugger)"
    return f"{resume}, or rebuild it from the leader with `{REBUILD_STANDBY}`, which kills it first"


# What to run about a failed check, locally; a cloud snapshot brings its own (`remedies`).
LOCAL_REMEDIES = {
    "fence": "`voke dr fence {node} --yes`",
    "backup": "`voke dr backup`",
    "start": "start it as a standby with `voke env up`",
    "rebuild": "it is fenced or not a standby: `voke dr failback --yes` rebuilds it as a standby",
    "unanswering": frozen_standby_remedy(),  # (a status names no stopped pids)
}


def unfinished_message(op: Mapping[str, Any]) -> str:
    """What `dr check` and `doctor` say of the unfinished DR operation OP (a status's
    `unfinished_operation`): the command to finish it, or why it cannot be told; then the same
    of each other one in its `also`."""
    if op.get("unknown"):  # the operations could not be read: not "none"
        return f"unknown: {op['unknown']}"
    return "; ".join(_unfinished_one(each) for each in (op, *(op.get("also") or ())))


def _unfinished_one(op: Mapping[str, Any]) -> str:
    if op.get("operation") == "unreadable":  # its record says what it is and what to do
        return str(op.get("resume"))
    if op.get("running"):
        inspect = f" (inspect it: `{op['inspect']}`)" if op.get("inspect") else ""
        return (
            f"a DR operation is running ({op['running']}): the topology is changing; check again once it "
            f"ends{inspect}"
        )
    return (
        f"an interrupted `{op.get('command') or 'voke dr ' + str(op.get('operation'))}` must be finished: "
        f"{op.get('resume')}" + (f" ({op['note']})" if op.get("note") else "")
    )


def judge(status: Mapping[str, Any], thresholds: Thresholds, *, now: datetime) -> list[Check]:
    """Every check, passed or failed, in a fixed order."""
    checks: list[Check] = []
    remedies = {**LOCAL_REMEDIES, **(status.get("remedies") or {})}
    leader = status.get("leader") or {}
    standby = status.get("standby") or {}
    archive = status.get("archive") or {}

    op = status.get("unfinished_operation") or {}
    message = unfinished_message(op) if op else "no unfinished DR operation"
    checks.append(Check("unfinished_operation", not op, message, value=op.get("operation")))

    writable = list(status.get("writable_nodes") or [])
    if status.get("split_brain"):
        others = [n for n in writable if n != leader.get("name")]
        loser = op.get("old_leader") if op.get("operation") == "failover" else None
        if loser in writable:  # an interrupted failover moves away from it: it is the one to stop
            message = (
                f"split brain: {' and '.join(writable)} writable during an interrupted failover from {loser}; "
                f"fence {loser} with {remedies['fence'].format(node=loser)}, then finish the failover"
            )
        else:
            message = (
                f"split brain: {' and '.join(others)} writable beside the leader {leader.get('name')}; "
                f"fence with {remedies['fence'].format(node=others[0] if others else '<node>')}"
            )
        checks.append(Check("split_brain", False, message, value=writable))
    elif not writable:  # (nothing answers: leader_writable says why)
        checks.append(Check("split_brain", True, "no split brain: no writable node answers", value=writable))
    else:
        checks.append(Check("split_brain", True, "one writable primary", value=writable))

    refused = leader.get("write_error")  # a primary that refused the heartbeat write (its disk full)
    leader_ok = bool(leader.get("running")) and leader.get("role") == "primary" and not refused
    if leader_ok:
        message = f"leader {leader.get('name')} is writable"
    elif refused and leader.get("role") == "primary":
        message = f"leader {leader.get('name')} is not writable: {refused}"
    elif leader.get("trouble"):  # a local leader that does not run: why, and what to run (its pids)
        message = f"{leader['trouble']}; {leader['remedy']}"
    else:
        message = f"leader {leader.get('name')} is not writable (role {leader.get('role')})"
    checks.append(Check("leader_writable", leader_ok, message, value=leader.get("role")))

    if thresholds.replica_expected:
        listed = bool(standby.get("streaming"))  # by the leader, which notices a frozen replica late
        streaming = listed and standby.get("answering") is not False
        if streaming:
            said = f"replica {standby.get('name')} is streaming"
        elif listed:
            said = f"replica {standby.get('name')} does not answer (the leader still lists it as streaming)"
            said += f"; {remedies['unanswering']}" if remedies.get("unanswering") else ""
        elif standby.get("pid") is not None and standby.get("running") is False:
            # (its postmaster lives: the leader stopped listing it after wal_sender_timeout)
            said = f"replica {standby.get('name')} (pid {standby.get('pid')}) does not answer"
            said += f"; {remedies['unanswering']}" if remedies.get("unanswering") else ""
        else:
            said = (
                f"replica {standby.get('name')} is not streaming from the leader "
                f"(role {standby.get('role')}, running {standby.get('running')})"
            )
            if standby.get("running") is False:  # what to run about it
                # A fenced node, or a stopped one that is a primary (an old leader a plain cloud
                # promotion left beside the new one) or would start as one (no standby.signal:
                # `voke env up` refuses it), must never just be started: two primaries.
                fenced = (
                    standby.get("name") in (status.get("fenced") or [])
                    or standby.get("role") == "primary"
                    or standby.get("standby_signal") is False
                )
                # (a local snapshot's own remedy first: a failover cut short past its fence)
                remedy = (
                    standby.get("remedy")
                    or remedies.get("rebuild" if fenced else "start")
                    or (
                        "it is not a replica of the leader: starting it would make a second primary; "
                        "rebuild it as a replica first"
                        if fenced
                        else None
                    )
                )
                said += f"; {remedy.format(node=standby.get('name'))}" if remedy else ""
        checks.append(Check("replica_streaming", streaming, said, value=streaming))
        lag = standby.get("lag_seconds")
        if lag is None:  # listed whenever a replica is expected: an alert keyed on its name must see it fail
            if standby.get("lag_unknown"):
                why = "no recent sample (replication stopped, or the monitoring backend has no data)"
            elif refused:
                why = "the leader refused the heartbeat write that measures it"
            elif listed:
                why = "it did not answer the heartbeat probe"
            else:
                why = "it is not streaming from the leader"
            checks.append(
                Check("replication_lag", False, f"replication lag of {standby.get('name')} unknown: {why}")
            )
        else:
            ok = float(lag) <= thresholds.max_lag_seconds
            checks.append(
                Check(
                    "replication_lag",
                    ok,
                    f"replication lag {float(lag):.1f} s"
                    + (f", {standby['lag_bytes']} bytes" if standby.get("lag_bytes") is not None else "")
                    + f" ({'within' if ok else 'over'} {thresholds.max_lag_seconds:g} s)",
                    value=float(lag),
                    threshold=thresholds.max_lag_seconds,
                )
            )

    newest = status.get("newest_backup")
    if not newest:
        checks.append(
            Check("backup_age", False, f"no successful base backup; take one with {remedies['backup']}")
        )
    else:
        finished = parse_iso(newest.get("finished_at"))
        age = (now - finished).total_seconds() if finished else float("inf")
        ok = age <= thresholds.max_backup_age_seconds
        checks.append(
            Check(
                "backup_age",
                ok,
                f"newest backup {newest.get('label')} is {_fmt_age(age)} old "
                f"({'within' if ok else 'over'} {_fmt_age(thresholds.max_backup_age_seconds)})",
                value=round(age, 3),
                threshold=thresholds.max_backup_age_seconds,
            )
        )

    if archive.get("failing") is None:
        reason = archive.get("unknown_reason") or "leader unreachable"
        checks.append(Check("archiving", False, f"WAL archiver state unknown ({reason})"))
    elif archive.get("failing"):
        checks.append(
            Check(
                "archiving",
                False,
                f"WAL archiving is failing: {archive.get('last_failed_wal')} at {archive.get('last_failed_at')}"
                if archive.get("last_failed_wal")
                else f"WAL archiving is failing: {archive.get('failed_count')} segment(s) failed"
                + (f" ({archive['source']})" if archive.get("source") else ""),
                value=archive.get("failed_count"),
            )
        )
    else:
        checks.append(Check("archiving", True, "WAL archiving succeeds", value=archive.get("failed_count")))
    pending_age = archive.get("oldest_pending_seconds")
    if pending_age is not None:
        ok = float(pending_age) <= thresholds.archive_stale_seconds
        checks.append(
            Check(
                "archive_fresh",
                ok,
                f"oldest WAL segment waiting to be archived: {float(pending_age):.1f} s "
                f"({'within' if ok else 'over'} {thresholds.archive_stale_seconds:g} s)",
                value=float(pending_age),
                threshold=thresholds.archive_stale_seconds,
            )
        )
    else:
        checks.append(Check("archive_fresh", True, "no WAL segment waiting to be archived", value=0.0))

    gaps = status.get("archive_gaps") or {}
    if gaps.get("missing"):
        first = gaps["missing"][0]
        sizes = {d["segment"]: d["bytes"] for d in gaps.get("damaged") or ()}
        what = (
            f"{first} is damaged ({sizes[first]} bytes, not a whole segment)"
            if first in sizes
            else f"{first} is missing"
        )
        checks.append(
            Check(
                "archive_continuity",
                False,
                f"WAL archive gap: {what}"
                + (f" (+{len(gaps['missing']) - 1} more)" if len(gaps["missing"]) > 1 else "")
                + f"; take a new base backup with {remedies['backup']}",
                value=gaps["missing"],
            )
        )
    elif gaps:
        since = (status.get("recoverable_window") or {}).get("earliest_backup")
        checks.append(
            Check(
                "archive_continuity",
                True,
                # the oldest backup the window starts from: an older one cut off by a gap is not it
                f"WAL archive has no gap since backup {since}" if since else "WAL archive has no gap",
            )
        )

    window = status.get("recoverable_window") or {}
    seconds = window.get("seconds")
    if seconds is None:
        checks.append(
            Check(
                "pitr_window",
                False,
                "no recoverable window (no backup, or no archived WAL after it)",
                threshold=thresholds.min_pitr_window_seconds,
            )
        )
    else:
        ok = float(seconds) >= thresholds.min_pitr_window_seconds
        checks.append(
            Check(
                "pitr_window",
                ok,
                f"recoverable window {_fmt_age(float(seconds))} ({window.get('earliest')} .. {window.get('latest')})"
                + ("" if ok else f", shorter than {_fmt_age(thresholds.min_pitr_window_seconds)}"),
                value=float(seconds),
                threshold=thresholds.min_pitr_window_seconds,
            )
        )
    if "pitr_enabled" in leader and thresholds.pitr_retention_days is not None:  # a Cloud SQL primary
        checks.append(_retention_check(leader, thresholds.pitr_retention_days))
    return checks


def _retention_check(leader: Mapping[str, Any], target: float) -> Check:
    """Whether the Cloud SQL primary keeps TARGET days of transaction logs (its own settings)."""
    name, days = leader.get("name"), leader.get("retention_days")
    fix = (  # (gcloud takes whole days)
        f"`gcloud sql instances patch {name} --enable-point-in-time-recovery "
        f"--retained-transaction-log-days={math.ceil(target)}`"
    )
    if not leader.get("pitr_enabled"):
        message, ok = f"point-in-time recovery is off on {name}: {fix}", False
    elif days is None:
        message, ok = f"unknown: Cloud SQL did not say how many days of logs {name} keeps", False
    else:
        ok = float(days) >= target
        message = f"{name} keeps {days} days of transaction logs" + (
            f" (target {target:g})" if ok else f", fewer than the {target:g} the platform keeps: {fix}"
        )
    return Check("pitr_retention", ok, message, value=days, threshold=target)
