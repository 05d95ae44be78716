"""Use cases behind `voke audit`: show (filter and page), export (JSON or CSV), verify,
checkpoint. Commands record events through `voketag_ops.audit` (record_event, audited)."""

from __future__ import annotations

import itertools
import json
import re
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from voketag_ops.audit import CHECKPOINT_EVENT, AuditLog, LogCutError
from voketag_ops.core import audit as core
from voketag_ops.core.dr_checks import NotADurationError, parse_duration
from voketag_ops.core.times import offset_is_valid
from voketag_ops.errors import UsageError

_ISO_ONLY = re.compile(r"[-:t]", re.I)  # what no age holds (ages: digits, '.', spaces, units)
_BARE_NUMBER = re.compile(r"-?(\d+\.?\d*|\.\d+)")  # a year (2026) or seconds (90)? refused, not guessed
_ISO, _AGE = "ISO 8601 (2026-05-01T02:00Z)", "an age (24h, -15m, 1h30m, 7d)"


def parse_when(value: str, option: str, *, now: datetime) -> datetime:
    """An ISO 8601 date or time (zoneless: UTC; `Z` or `z`), or an age before NOW as every
    duration option takes it (`dr_checks.parse_duration`: 30m, 1h30m, 7d), with an
    optional leading '-' as `dr restore --to` writes it (-15m). A bare number that is not an
    ISO date (20260501 is) has no unit here: 2026 could be the year or 2026 seconds."""
    text = value.strip()
    if not text:
        raise UsageError(f"{option}: empty; give {_ISO} or {_AGE}")
    if not text.startswith("-"):
        try:  # first: 20260501 is a date, not 234 days
            when = datetime.fromisoformat(text.replace("z", "Z").replace("Z", "+00:00"))
        except ValueError:
            pass
        else:
            if not offset_is_valid(text):
                raise UsageError(f"{option}: {value!r}: the offset's minutes run 00-59")
            return when if when.tzinfo else when.replace(tzinfo=UTC)
        if _ISO_ONLY.search(text):
            raise UsageError(f"{option}: {value!r} is neither {_ISO} nor {_AGE}")
    if _BARE_NUMBER.fullmatch(text):
        raise UsageError(f"{option}: {value!r}: a date (2026-01-01) or an age with its unit ({text}s)")
    try:
        return now - timedelta(seconds=parse_duration(text.removeprefix("-")))
    except NotADurationError:  # its message offers ages alone
        raise UsageError(f"{option}: {value!r} is neither {_ISO} nor {_AGE}") from None
    except ValueError as exc:
        raise UsageError(f"{option}: {exc}") from None


def show(
    home: Path, flt: core.Filter, *, limit: int | None, offset: int = 0, newest_first: bool = False
) -> dict[str, Any]:
    """A page of matching entries, plus how many matched, of which environment (None: every
    one) and any unreadable lines among those read. Oldest first, the log is read from --since
    to its end and `total` counts every match; NEWEST_FIRST, it is read back from its end only
    until the page is full and one more entry matches (`total_exact` false: `total` is how many
    matched so far, at least one more than the page ends at)."""
    skipped: list[int] = []
    entries = AuditLog(home).entries(skipped, newest_first=newest_first, since=flt.since)
    page, total, exact = core.select(entries, flt, limit=limit, offset=offset, count=not newest_first)
    return {
        "entries": [e.to_json() for e in page],
        "total": total,
        "total_exact": exact,
        "offset": offset,
        "limit": limit,
        "env": flt.env,
        "skipped_lines": sorted(skipped),
    }


def export_chunks(
    home: Path, flt: core.Filter, fmt: str, *, skipped: list[int], inline: bool = False
) -> Iterator[str]:
    """The matching entries as a JSON array or CSV, in chunks (the log may be large), each
    whole entries or rows; the numbers of unreadable lines go to SKIPPED as they are passed
    over. INLINE: as one JSON value on one line, to go in the --json envelope (the array as
    `json.dumps` writes it, the CSV as a JSON string)."""
    matching = (e for e in AuditLog(home).entries(skipped, since=flt.since) if flt.matches(e))
    first = next(matching, None)  # a log that cannot be read fails before anything is written
    entries = itertools.chain([] if first is None else [first], matching)
    if fmt == "csv":
        if not inline:
            yield from core.to_csv(entries)
            return
        yield '"'
        for chunk in core.to_csv(entries):
            yield json.dumps(chunk, ensure_ascii=False)[1:-1]
        yield '"'
        return
    if fmt != "json":
        raise UsageError(f"--format must be json or csv, not {fmt!r}")
    sep, end = (", ", "]") if inline else (",\n", "\n]\n")
    yield "["
    for i, entry in enumerate(entries):
        yield (sep if i else "" if inline else "\n") + json.dumps(
            entry.to_json(), ensure_ascii=False, sort_keys=True
        )
    yield end


def verify(home: Path, *, min_difficulty: int) -> core.VerifyReport:
    """Verify the whole log against its checkpoints and the chain's anchors of them (a chain
    whose blocks show less than MIN_DIFFICULTY bits of work is not trusted)."""
    return AuditLog(home).verify(min_difficulty=min_difficulty)


def refuse_foreign_chain(home: Path, state: Any, source: str) -> None:
    """A chain whose audit checkpoints contradict HOME's audit log is another home's: once
    imported, `voke audit verify` would fail for good, so it is refused (exit 5)."""
    from voketag_ops.errors import PreconditionError

    problem = AuditLog(home).contradiction(state)
    if problem is not None:
        raise PreconditionError(
            f"{source}: its audit checkpoints contradict this home's audit log ({problem}); "
            "nothing was imported",
            hint="it is another VOKE_HOME's chain: move it together with that home's audit/ directory",
        )


@contextmanager
def _checkpointable() -> Iterator[None]:
    """A damaged line in the log (after the last checkpoint) or in its checkpoints file, or a log
    cut below its last checkpoint, stops a checkpoint: exit 5, naming it; `voke audit verify`
    says which entry and what to do."""
    from voketag_ops.errors import PreconditionError

    try:
        yield
    except core.EntryFormatError as exc:
        see = (
            "`voke audit verify` to see"
            if isinstance(exc, LogCutError)
            else "`voke audit verify` names the damaged line"
        )
        raise PreconditionError(f"cannot checkpoint the audit log: {exc}", hint=see) from None


def checkpoint_plan(home: Path) -> dict[str, Any]:
    """What `checkpoint` would do, changing nothing."""
    log = AuditLog(home)
    with _checkpointable():  # read as the checkpoint reads it: a damaged line is refused alike
        last, since, torn = log.since_checkpoint()
    plan = []
    if torn is not None and torn.whole:
        plan.append(f"add the newline the last entry lost ({torn.length} bytes, a write cut short)")
    elif torn is not None:  # as an append does: moved aside, and the loss recorded (one entry more)
        plan.append(
            f"move the torn last line ({torn.length} bytes) to {log.torn_dir} and record an audit.torn_write entry"
        )
    covered = last.size if last is not None else 0
    added = len(since) + (1 if torn is not None and not torn.whole else 0)
    new = added > len([e for e in since if e.event_type == CHECKPOINT_EVENT])
    if not covered + added:
        plan.append("nothing to checkpoint: the audit log is empty")
    elif new or last is None:
        plan.append(f"checkpoint the log at {covered + added} entries ({added} since the last checkpoint)")
    else:
        plan.append(f"no new entries since the checkpoint at {covered}: keep it")
    plan.append("request an anchor for every checkpoint the chain has not seen")
    return {
        "plan": plan,
        "entries": covered + added,
        "last_checkpoint_size": last.size if last is not None else None,
        "torn_last_line": None if torn is None else {"bytes": torn.length, "whole_entry": torn.whole},
    }


def checkpoint(home: Path, *, env: str, now: datetime | None = None) -> dict[str, Any]:
    """Checkpoint the log now and request anchors for it and any checkpoint still queued;
    the event recording it comes after the checkpoint (the next one covers it)."""
    from voketag_ops.audit import audited

    with _checkpointable():
        before = AuditLog(home).last_checkpoint()
    with audited(home, event_type=CHECKPOINT_EVENT, env=env, target="audit log") as event, _checkpointable():
        report = _checkpoint(home, now=now)
        event.details.update(
            {k: report[k] for k in ("checkpoint", "anchors_requested", "anchoring_queued") if k in report}
        )
        kept = report["checkpoint"] is None or (
            before is not None and report["checkpoint"]["size"] == before.size
        )
        event.skip = kept and not report.get("anchors_requested")  # nothing happened: nothing to record
    return report


def _checkpoint(home: Path, *, now: datetime | None) -> dict[str, Any]:
    cp, anchoring = AuditLog(home).checkpoint(now=now)
    if cp is None:
        return {"checkpoint": None, "message": "the audit log is empty; nothing to checkpoint"}
    if anchoring.queued:
        outcome = f"anchoring queued until the chain is reachable ({anchoring.reason})"
    else:
        outcome = f"{anchoring.requested} anchor(s) requested" if anchoring.requested else "already requested"
    return {
        "checkpoint": {"size": cp.size, "root": cp.root, "timestamp": cp.timestamp},
        "anchors_requested": anchoring.requested,
        "anchoring_queued": anchoring.queued,
        "message": f"checkpoint at {cp.size} entries, root {cp.root[:16]}…; {outcome}",
    }
