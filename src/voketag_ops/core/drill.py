"""Drill evaluation: targets per scenario, RTO and RPO from timestamps and the canary log,
verdicts, and the journal's schema. Pure: no I/O, no clocks (callers pass times in).

A journal is one JSON document per drill run (Chaos Toolkit's journal is the model). RTO
is fault injection to the first acknowledged write after the platform is back (the database
recovered and, where the drill repoints them, the services healthy on it); RPO is the span of
commits that recovery lost (for a failover: from the last commit the new leader replayed to the
newest one the old leader's WAL holds past the switch point; for PITR: how far short of the
requested point the restored data ends).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

SCENARIOS = ("pitr", "failover", "failback", "network")
# `running`: a cloud drill's checkpoint, saved before each scratch instance is made (so a run that
# dies leaves a journal its successor can clean up after); `drill history` shows a dead one as interrupted.
STATUSES = ("completed", "failed", "aborted", "interrupted", "running")
TIMELINE_KEYS = (
    "fault_injected_at",
    "detected_at",
    "recovery_started_at",
    "recovered_at",
    "services_back_at",  # failover and failback: services repointed to the new leader and healthy
    "first_write_ok_at",
    "verified_at",
)
# Which of the platform's disruption types each drill rehearses (PRODUCT.md's RTO table). The
# local failover loses a node (research dr.md (e)8: RTO <= 300 s); a cloud one promotes the
# replica in the DR region, a regional failure.
DISRUPTION = {
    "pitr": "database corruption",
    "failover": "node failure",
    "failback": "planned failback",
    "network": "network outage",
}


# Drills whose disruption promotes no standby that may lag (a planned switchover that waits for
# the standby to replay everything, a network outage waited out): nothing acknowledged may be
# lost, whatever the RPO allows. A failover (or a PITR) may lose what the RPO allows: its lost
# commits are judged by the RPO alone.
NOTHING_LOST = ("failback", "network")


@dataclass(frozen=True)
class Targets:
    rto_target_seconds: float
    rpo_target_seconds: float
    disruption: str
    source: str
    lost_commits_target: int | None = None  # None: lost commits judged by the RPO only


def targets_for(
    scenario: str,
    *,
    rto: float,
    rto_regional: float,
    rto_network: float,
    rpo: float,
    cloud: bool,
    source: str = "dr settings",
) -> Targets:
    """RTO per disruption: a CLOUD failover is a regional failure, network an outage, the rest
    (the local failover, a node failure, among them) the default."""
    if scenario not in SCENARIOS:
        raise ValueError(f"unknown scenario {scenario!r}")
    if cloud and scenario == "failover":
        return Targets(float(rto_regional), float(rpo), "regional failure", source)
    rto_for = {"network": rto_network}.get(scenario, rto)
    lost = 0 if scenario in NOTHING_LOST else None
    return Targets(float(rto_for), float(rpo), DISRUPTION[scenario], source, lost)


@dataclass(frozen=True)
class Write:
    """One canary write as the client saw it."""

    seq: int
    sent_at: datetime
    done_at: datetime
    ok: bool


def seconds_between(start: datetime | None, end: datetime | None) -> float | None:
    if start is None or end is None:
        return None
    return round((end - start).total_seconds(), 3)


def rto_seconds(timeline: Mapping[str, datetime | None]) -> float | None:
    """Fault injection to the first acknowledged write after it (the drills take the first one
    sent once the platform is back: after recovered_at and services_back_at)."""
    return seconds_between(timeline.get("fault_injected_at"), timeline.get("first_write_ok_at"))


def phases(timeline: Mapping[str, datetime | None]) -> dict[str, float | None]:
    """Durations of the phases between consecutive timeline marks."""
    return {
        "detection": seconds_between(timeline.get("fault_injected_at"), timeline.get("detected_at")),
        "decision": seconds_between(timeline.get("detected_at"), timeline.get("recovery_started_at")),
        "recovery": seconds_between(timeline.get("recovery_started_at"), timeline.get("recovered_at")),
        "services": seconds_between(timeline.get("recovered_at"), timeline.get("services_back_at")),
        "first_write": seconds_between(
            timeline.get("services_back_at") or timeline.get("recovered_at"),
            timeline.get("first_write_ok_at"),
        ),
        "verification": seconds_between(timeline.get("first_write_ok_at"), timeline.get("verified_at")),
    }


def first_write_after(writes: Iterable[Write], when: datetime) -> Write | None:
    """The first acknowledged write sent at or after WHEN."""
    return next((w for w in sorted(writes, key=lambda w: w.seq) if w.ok and w.sent_at >= when), None)


def rpo_from_canary(writes: Sequence[Write], recovered: Iterable[int]) -> dict[str, Any]:
    """Acknowledged commits missing after recovery, and the span of time they cover.

    RPO is from the newest acknowledged commit that survived to the newest one lost
    (0 when nothing acknowledged was lost).
    """
    have = set(recovered)
    acked = sorted((w for w in writes if w.ok), key=lambda w: w.seq)
    lost = [w for w in acked if w.seq not in have]
    survivors = [w for w in acked if w.seq in have]
    rpo = 0.0
    if lost:
        newest_lost = max(w.done_at for w in lost)
        anchor = max((w.done_at for w in survivors if w.done_at <= newest_lost), default=None)
        if anchor is None:
            anchor = min(w.sent_at for w in lost)
        rpo = round(max(0.0, (newest_lost - anchor).total_seconds()), 3)
    return {
        "acked_commits": len(acked),
        "failed_writes": sum(1 for w in writes if not w.ok),
        "lost_commits": len(lost),
        "lost_seqs": [w.seq for w in lost][:50],
        "rpo_seconds": rpo,
        "last_acked_seq": acked[-1].seq if acked else None,
        "last_recovered_seq": max(have) if have else None,
    }


def rpo_from_wal(
    newest_lost: datetime | None, last_kept: datetime | None, first_lost: datetime | None = None
) -> float:
    """A failover's RPO from the old leader's WAL: from LAST_KEPT, the last commit the new leader
    replayed before its promotion, to NEWEST_LOST, the newest commit past the switch point (0
    when nothing is past it). Without LAST_KEPT (the new leader replayed no commit since it
    started) from FIRST_LOST, the oldest lost commit: the span the lost ones cover."""
    if newest_lost is None:
        return 0.0
    anchor = last_kept or first_lost or newest_lost
    return round(max(0.0, (newest_lost - anchor).total_seconds()), 3)


def pitr_canary_check(
    commit_times: Mapping[int, datetime],
    restored: Iterable[int],
    target: datetime,
    *,
    last_restored_commit: datetime | None = None,
) -> dict[str, Any]:
    """Every canary row committed at or before TARGET must be restored and none after, and
    there must be rows on both sides: with none before (or none after) the target, nothing
    shows that the restore stopped where it should (`evidence` says what is missing).

    RPO here is how far short of TARGET the restored data ends: the gap between the target
    and the last commit restored, LAST_RESTORED_COMMIT (the recovery log's last completed
    transaction) when known, else the newest restored canary row (the canary's interval
    bounds that from below).
    """
    have = set(restored)
    before = {s for s, ts in commit_times.items() if ts <= target}
    after = {s for s in commit_times if s not in before}
    missing = sorted(before - have)
    extra = sorted(after & have)
    newest = max((ts for s, ts in commit_times.items() if s in have and ts <= target), default=None)
    lost_span = 0.0
    if missing:
        lost_span = round((max(commit_times[s] for s in missing) - (newest or target)).total_seconds(), 3)
    last = last_restored_commit if last_restored_commit is not None else newest
    short = max(0.0, (target - last).total_seconds()) if last else 0.0
    return {
        "committed_before_target": len(before),
        "committed_after_target": len(after),
        "restored": len(have & set(commit_times)),
        "missing_before_target": missing[:50],
        "present_after_target": extra[:50],
        "lost_commits": len(missing),
        "newest_restored_commit_at": newest,
        "last_restored_commit_at": last,
        "rpo_from": "recovery log" if last_restored_commit is not None else "canary rows",
        "rpo_seconds": round(max(lost_span, short), 3),
        "evidence": None if before and after else _no_evidence(before, after),
        "ok": bool(before and after) and not missing and not extra,
    }


def pitr_check_detail(check: Mapping[str, Any]) -> str:
    """What a failed `pitr_canary_check` found, every part of it: rows missing before the
    target, rows present after it, no rows on a side of it."""
    parts = [check["evidence"]] if check.get("evidence") else []
    if check["missing_before_target"]:
        parts.append(f"missing before the target {check['missing_before_target']}")
    if check["present_after_target"]:
        parts.append(f"present after the target {check['present_after_target']}")
    return "; ".join(parts)


def _no_evidence(before: set[int], after: set[int]) -> str:
    sides = [side for side, rows in (("before", before), ("after", after)) if not rows]
    return f"no canary row was committed {' or '.join(sides)} the target: nothing verified"


def verdict(
    *,
    rto: float | None,
    rpo: float | None,
    targets: Targets,
    integrity: Sequence[Mapping[str, Any]],
    steady_after_ok: bool | None,
    error: str | None,
    cut_short: bool = False,
    lost: int | None = None,
) -> dict[str, Any]:
    """rto_met, rpo_met, lost_met, integrity_ok and the overall status (completed or failed).
    LOST, the commits the run lost, is judged against targets.lost_commits_target where the
    scenario has one (lost_met None where it has none: the RPO judges them).

    CUT_SHORT (an aborted or interrupted run): what was not measured is None, "not
    measured", and no breach; only what was measured is judged."""
    rto_met: bool | None = rto is not None and rto <= targets.rto_target_seconds
    rpo_met: bool | None = rpo is not None and rpo <= targets.rpo_target_seconds
    lost_met: bool | None = None
    if targets.lost_commits_target is not None and (lost is not None or not cut_short):
        lost_met = lost is not None and lost <= targets.lost_commits_target
    integrity_ok: bool | None = bool(integrity) and all(bool(item.get("match")) for item in integrity)
    if cut_short:
        rto_met = None if rto is None else rto_met
        rpo_met = None if rpo is None else rpo_met
        integrity_ok = None if not integrity else integrity_ok
    breaches = []
    if rto_met is False:
        breaches.append(
            "RTO unknown: no write once the platform was back"
            if rto is None
            else f"RTO {rto:g} s > {targets.rto_target_seconds:g} s"
        )
    if rpo_met is False:
        breaches.append("RPO unknown" if rpo is None else f"RPO {rpo:g} s > {targets.rpo_target_seconds:g} s")
    if lost_met is False:
        breaches.append(
            "lost commits unknown"
            if lost is None
            else f"{lost} acknowledged commit(s) lost > {targets.lost_commits_target}"
        )
    if integrity_ok is False:
        bad = [str(item.get("table")) for item in integrity if not item.get("match")]
        breaches.append("integrity: " + (", ".join(bad) if bad else "nothing verified"))
    if steady_after_ok is False:
        breaches.append("steady state not restored after the drill")
    if error:
        breaches.append(error)
    return {
        "rto_met": rto_met,
        "rpo_met": rpo_met,
        "lost_met": lost_met,
        "integrity_ok": integrity_ok,
        "status": "failed" if breaches else "completed",
        "breaches": breaches,
    }


# -- the journal's schema ------------------------------------------------------------------------------
_TS = {"type": ["string", "null"], "format": "date-time"}
_NUM = {"type": ["number", "null"]}
JOURNAL_SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "title": "voke drill journal",
    "type": "object",
    "required": [
        "run_id",
        "scenario",
        "environment",
        "mode",
        "versions",
        "started_at",
        "finished_at",
        "targets",
        "timeline",
        "phases",
        "rto_seconds",
        "rpo_seconds",
        "lost_commits",
        "integrity",
        "steps",
        "steady_state",
        "rto_met",
        "rpo_met",
        "integrity_ok",
        "status",
    ],
    "properties": {
        "run_id": {"type": "string"},
        "scenario": {"type": "string", "enum": list(SCENARIOS)},
        "environment": {"type": "string"},
        "mode": {"type": "string", "enum": ["local", "cloud", "dry-run"]},
        "versions": {
            "type": "object",
            "required": ["voke", "postgres", "python"],
            "properties": {"voke": {"type": "string"}, "postgres": {"type": ["string", "null"]}},
        },
        "started_at": {"type": "string", "format": "date-time"},
        "finished_at": _TS,
        "duration_seconds": _NUM,
        "targets": {
            "type": "object",
            "required": ["rto_target_seconds", "rpo_target_seconds", "disruption"],
            "properties": {
                "rto_target_seconds": {"type": "number", "minimum": 0},
                "rpo_target_seconds": {"type": "number", "minimum": 0},
                "lost_commits_target": {"type": ["integer", "null"], "minimum": 0},
                "disruption": {"type": "string"},
            },
        },
        "timeline": {
            "type": "object",
            "required": list(TIMELINE_KEYS),
            "properties": {key: _TS for key in TIMELINE_KEYS},
        },
        "phases": {"type": "object"},
        "rto_seconds": _NUM,
        "rpo_seconds": _NUM,
        "lost_commits": {"type": ["integer", "null"], "minimum": 0},
        # where rpo_seconds and lost_commits come from: `wal` (a failover: the old leader's
        # commits past the switch point), `canary`, `recovery log` or `canary rows` (pitr)
        "rpo_source": {"type": ["string", "null"]},
        "canary": {"type": "object"},
        "integrity": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["table", "rows", "checksum", "match"],
                "properties": {
                    "table": {"type": "string"},
                    "rows": {"type": ["integer", "null"]},
                    "checksum": {"type": ["string", "null"]},
                    "match": {"type": "boolean"},
                    "lsn": {"type": ["string", "null"]},
                },
            },
        },
        "steps": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["name", "ok", "duration_seconds"],
                "properties": {
                    "name": {"type": "string"},
                    "ok": {"type": "boolean"},
                    "duration_seconds": {"type": "number"},
                    "exit_code": {"type": "integer"},
                    "commands": {"type": "array"},
                },
            },
        },
        "steady_state": {
            "type": "object",
            "required": ["before", "after"],
            "properties": {"before": {"type": ["object", "null"]}, "after": {"type": ["object", "null"]}},
        },
        "rto_met": {"type": ["boolean", "null"]},  # null: not measured (an aborted or interrupted run)
        "rpo_met": {"type": ["boolean", "null"]},
        "lost_met": {"type": ["boolean", "null"]},  # null: no target of its own (the RPO judges)
        "integrity_ok": {"type": ["boolean", "null"]},
        "status": {"type": "string", "enum": list(STATUSES)},
        "breaches": {"type": "array", "items": {"type": "string"}},
        "error": {"type": ["string", "null"]},
        "cleanup": {"type": "array"},
        "details": {"type": "object"},
    },
}

_JSON_TYPES: dict[str, tuple[type, ...]] = {
    "object": (dict,),
    "array": (list,),
    "string": (str,),
    "number": (int, float),
    "integer": (int,),
    "boolean": (bool,),
    "null": (type(None),),
}


def validate(doc: Any, schema: Mapping[str, Any] = JOURNAL_SCHEMA, path: str = "$") -> list[str]:
    """Errors of DOC against the subset of JSON Schema used here (type, required, properties,
    items, enum, minimum, date-time format). An empty list means valid."""
    errors: list[str] = []
    types = schema.get("type")
    if types is not None:
        names = [types] if isinstance(types, str) else list(types)
        ok = False
        for name in names:
            kinds = _JSON_TYPES[name]
            if isinstance(doc, bool) and name in ("number", "integer"):
                continue
            if isinstance(doc, kinds):
                ok = True
                break
        if not ok:
            return [f"{path}: expected {' or '.join(names)}, got {type(doc).__name__}"]
    if "enum" in schema and doc not in schema["enum"]:
        errors.append(f"{path}: {doc!r} is not one of {schema['enum']}")
    number = isinstance(doc, int | float) and not isinstance(doc, bool)
    if "minimum" in schema and number and doc < schema["minimum"]:
        errors.append(f"{path}: {doc} is below {schema['minimum']}")
    if schema.get("format") == "date-time" and isinstance(doc, str):
        try:
            datetime.fromisoformat(doc.replace("Z", "+00:00"))
        except ValueError:
            errors.append(f"{path}: {doc!r} is not an ISO 8601 date-time")
    if isinstance(doc, dict):
        for key in schema.get("required", []):
            if key not in doc:
                errors.append(f"{path}: missing {key!r}")
        for key, sub in schema.get("properties", {}).items():
            if key in doc:
                errors.extend(validate(doc[key], sub, f"{path}.{key}"))
    if isinstance(doc, list) and "items" in schema:
        for i, item in enumerate(doc):
            errors.extend(validate(item, schema["items"], f"{path}[{i}]"))
    return errors


# -- history ------------------------------------------------------------------------------------------
def trend(journals: Sequence[Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per scenario that ran: runs (all of them, and those that measured an RTO), passed, the
    newest run's status and id, the newest *measured* RTO/RPO (null when no run measured one),
    the change from the measured run before, the best and worst RTO. A scenario whose runs
    all failed before measuring is listed too: a trend that left it out would hide it."""
    out: dict[str, dict[str, Any]] = {}
    for scenario in SCENARIOS:
        every = [j for j in journals if j.get("scenario") == scenario]
        if not every:
            continue
        runs = [j for j in every if j.get("rto_seconds") is not None]
        rtos = [float(j["rto_seconds"]) for j in runs]
        last = runs[-1] if runs else {}
        out[scenario] = {
            "runs": len(every),
            "measured": len(runs),  # an interrupted or failed-early run measures no RTO
            "passed": sum(1 for j in every if j.get("status") == "completed"),
            "last_status": every[-1].get("status"),
            "last_run_id": every[-1].get("run_id"),
            "last_rto_seconds": last.get("rto_seconds"),  # of the newest run that measured one
            "last_rpo_seconds": last.get("rpo_seconds"),
            "rto_change_seconds": round(rtos[-1] - rtos[-2], 3) if len(rtos) > 1 else None,
            "best_rto_seconds": min(rtos, default=None),
            "worst_rto_seconds": max(rtos, default=None),
        }
    return out
