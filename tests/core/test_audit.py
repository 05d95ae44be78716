"""The audit log's chain, checkpoints and verification, on lines built in memory."""

from __future__ import annotations

import csv
import io
import json
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from voketag_ops import redact
from voketag_ops.core import audit as au
from voketag_ops.core import merkle

T0 = datetime(2026, 4, 1, 2, 0, tzinfo=UTC)


def build(n: int, *, start: int = 0, prev: str = au.ZERO, tag: str = "") -> list[au.AuditEntry]:
    entries = []
    for i in range(start, start + n):
        entry = au.make_entry(
            seq=i,
            prev_hash=prev,
            now=T0 + timedelta(seconds=i),
            event_type="rotate.db-password" if i % 2 else "dr.failover",
            actor="sre@host",
            env="local",
            target=f"target-{i % 7}{tag}",
            result="success" if i % 5 else "failure",
            duration_seconds=i / 10,
            details={"i": i},
        )
        entries.append(entry)
        prev = entry.hash
    return entries


def lines(entries: list[au.AuditEntry]) -> list[bytes]:
    return [e.line() for e in entries]


def claims_every(entries: list[au.AuditEntry], step: int) -> list[au.Claim]:
    out = []
    for size in range(step, len(entries) + 1, step):
        root = merkle.root(bytes.fromhex(e.hash) for e in entries[:size]).hex()
        out.append(au.Claim(size, root, "checkpoint", entries[size - 1].hash))
    return out


@pytest.fixture(scope="module")
def log1000() -> list[au.AuditEntry]:
    return build(1000)


@pytest.fixture(scope="module")
def claims1000(log1000: list[au.AuditEntry]) -> list[au.Claim]:
    return claims_every(log1000, 100)


def verdict(raw: list[bytes], claims: list[au.Claim] = ()) -> tuple[int | None, au.Problem | None]:  # type: ignore[assignment]
    report = au.verify_lines(raw, claims)
    assert not report.ok and report.message
    return report.first_bad_entry, report.problem


def test_a_thousand_entries_verify(log1000: list[au.AuditEntry], claims1000: list[au.Claim]) -> None:
    report = au.verify_lines(lines(log1000), claims1000)
    assert report.ok and report.entries == 1000
    assert report.checkpoints_checked == 10 and report.last_checkpoint_size == 1000
    assert report.head_hash == log1000[-1].hash


def test_edited_entry_is_named(log1000: list[au.AuditEntry], claims1000: list[au.Claim]) -> None:
    raw = lines(log1000)
    raw[500] = raw[500].replace(b'"target":"target-', b'"target":"TARGET-')
    assert verdict(raw, claims1000) == (500, au.Problem.EDITED)


def test_edited_and_rehashed_entry_is_named(log1000: list[au.AuditEntry]) -> None:
    raw = lines(log1000)
    forged = replace(log1000[500], target="somewhere-else")
    raw[500] = replace(forged, hash=forged.computed_hash()).line()
    assert verdict(raw) == (500, au.Problem.BROKEN_LINK)


def test_deleted_entry_is_named(log1000: list[au.AuditEntry]) -> None:
    raw = lines(log1000)
    del raw[500]
    assert verdict(raw) == (500, au.Problem.SEQUENCE)


def test_reordered_entries_are_named(log1000: list[au.AuditEntry]) -> None:
    raw = lines(log1000)
    raw[500], raw[501] = raw[501], raw[500]
    assert verdict(raw) == (500, au.Problem.SEQUENCE)


def test_inserted_entry_is_named(log1000: list[au.AuditEntry]) -> None:
    raw = lines(log1000)
    forged = build(1, start=500, prev=log1000[499].hash, tag="-forged")[0]
    raw.insert(500, forged.line())
    assert verdict(raw) == (500, au.Problem.SEQUENCE)


def test_consistent_rewrite_is_caught_by_the_next_checkpoint(
    log1000: list[au.AuditEntry], claims1000: list[au.Claim]
) -> None:
    rewritten = log1000[:500] + build(500, start=500, prev=log1000[499].hash, tag="-rewritten")
    assert au.verify_lines(lines(rewritten)).ok  # the chain alone cannot see it
    bad, problem = verdict(lines(rewritten), claims1000)
    assert (bad, problem) == (500, au.Problem.CHECKPOINT_MISMATCH)


def test_truncation_below_the_last_checkpoint(
    log1000: list[au.AuditEntry], claims1000: list[au.Claim]
) -> None:
    assert au.verify_lines(lines(log1000[:900])).ok  # the chain alone cannot see it
    assert verdict(lines(log1000[:900]), claims1000) == (900, au.Problem.TRUNCATED)
    # An anchor alone (no last_hash) is enough.
    anchor = au.Claim(1000, claims1000[-1].root, "anchor abc")
    report = au.verify_lines(lines(log1000[:950]), [anchor])
    assert report.problem is au.Problem.TRUNCATED and "anchor abc" in (report.message or "")
    assert au.verify_lines(lines(log1000), [anchor]).anchors_checked == 1


def test_torn_last_line(log1000: list[au.AuditEntry]) -> None:
    raw = lines(log1000[:10])
    raw[-1] = raw[-1][:37]
    report = au.verify_lines(raw)
    assert (report.first_bad_entry, report.problem, report.line) == (9, au.Problem.TORN_TAIL, 10)
    assert "incomplete write" in (report.message or "")


def test_complete_last_line_without_newline_is_a_torn_tail(log1000: list[au.AuditEntry]) -> None:
    raw = lines(log1000[:10])
    raw[-1] = raw[-1].rstrip(b"\n")
    report = au.verify_lines(raw)
    assert (report.ok, report.first_bad_entry, report.problem, report.line) == (
        False,
        9,
        au.Problem.TORN_TAIL,
        10,
    )
    assert "entry 9 whole but lost its newline" in (report.message or "")
    assert "the next append or `voke audit checkpoint` adds it" in (report.message or "")
    assert report.entries == 9  # the entries before it verify


def test_corrupt_middle_line_and_bad_first_link(log1000: list[au.AuditEntry]) -> None:
    raw = lines(log1000[:10])
    raw[3] = b"{not json\n"
    assert verdict(raw) == (3, au.Problem.CORRUPT_LINE)
    forged = build(3, prev="1" * 64)
    assert verdict(lines(forged)) == (0, au.Problem.BROKEN_LINK)


@settings(max_examples=60, deadline=None)
@given(
    n=st.integers(2, 60),
    data=st.data(),
    field=st.sampled_from(
        ["timestamp", "event_type", "actor", "env", "target", "result", "duration", "details"]
    ),
)
def test_any_single_field_edit_is_detected_at_its_entry(n: int, data: st.DataObject, field: str) -> None:
    entries = build(n)
    i = data.draw(st.integers(0, n - 1))
    doc = entries[i].to_json()
    if field == "duration":
        doc["duration_seconds"] = (doc["duration_seconds"] or 0) + 1
    elif field == "details":
        doc["details"] = {"i": -1}
    elif field == "timestamp":
        doc["timestamp"] = au.iso_now(T0 - timedelta(days=1))
    else:
        doc[field] = doc[field] + "x"
    raw = lines(entries)
    raw[i] = au.canonical(doc) + b"\n"
    assert verdict(raw) == (i, au.Problem.EDITED)


# -- what goes in ------------------------------------------------------------------------------


def test_details_never_hold_secret_values() -> None:
    redact.register("s3cr3t-value-123")
    try:
        entry = au.make_entry(
            seq=0,
            prev_hash=au.ZERO,
            now=T0,
            event_type="rotate.api-key",
            actor="sre",
            env="local",
            target="stripe",
            result="success",
            duration_seconds=1,
            details={
                "password": "hunter2",
                "nested": {"api_key": "k", "note": "was s3cr3t-value-123"},
                "list": ["s3cr3t-value-123", 1, None],
                "version": 4,
                "when": T0,
                "nan": float("nan"),
            },
        )
    finally:
        redact.clear()
    text = entry.line().decode()
    assert "hunter2" not in text and "s3cr3t-value-123" not in text
    assert entry.details["password"] == "***" and entry.details["nested"]["api_key"] == "***"
    assert entry.details["version"] == 4 and entry.details["when"] == "2026-04-01T02:00:00.000000Z"
    assert entry.details["nan"] == "nan"
    assert au.parse_entry(entry.line().rstrip()) == entry


def test_make_entry_rejects_bad_input() -> None:
    with pytest.raises(ValueError):
        au.make_entry(
            seq=0,
            prev_hash=au.ZERO,
            now=datetime(2026, 1, 1),
            event_type="x",
            actor="a",
            env="e",
            target="t",
            result="success",
            duration_seconds=None,
            details=None,
        )
    with pytest.raises(TypeError):
        au.make_entry(
            seq=0,
            prev_hash=au.ZERO,
            now=T0,
            event_type="x",
            actor="a",
            env="e",
            target=3,  # type: ignore[arg-type]
            result="success",
            duration_seconds=None,
            details=None,
        )


@pytest.mark.parametrize(
    ("mutate", "fragment"),
    [
        (lambda d: d.pop("hash"), "missing: hash"),
        (lambda d: d.update(extra=1), "unexpected: extra"),
        (lambda d: d.update(seq=-1), "seq"),
        (lambda d: d.update(prev_hash="XY"), "prev_hash"),
        (lambda d: d.update(duration_seconds="1"), "duration_seconds"),
        (lambda d: d.update(details=[]), "details"),
        (lambda d: d.update(actor=None), "actor"),
    ],
)
def test_parse_entry_says_what_is_wrong(mutate, fragment: str) -> None:
    doc = build(1)[0].to_json()
    mutate(doc)
    with pytest.raises(au.EntryFormatError, match=fragment):
        au.parse_entry(json.dumps(doc).encode())


@pytest.mark.parametrize(
    ("edit", "fragment"),
    [
        (lambda line: line.replace(b'"details":{', b'"details":{"x":' + b"9" * 5000 + b","), "not JSON"),
        (lambda line: line.replace(b'"target":"', b'"target":"\\ud800'), "not canonical JSON"),
        (lambda line: line.replace(b'"details":{', b'"details":{"x":' + b"[" * 100_000 + b"]" * 100_000 + b","),
         "not JSON"),
    ],
)  # fmt: skip
def test_a_line_json_can_read_but_not_hash_is_a_corrupt_line(edit, fragment: str) -> None:
    raw = lines(build(5))
    raw[2] = edit(raw[2])
    with pytest.raises(au.EntryFormatError, match=fragment):
        au.parse_entry(raw[2][:-1])
    assert verdict(raw) == (2, au.Problem.CORRUPT_LINE)


_REWRITES = [
    lambda line: line.replace(b'","', b'", "', 1),  # a space: the same entry, other bytes
    lambda line: line[:-1] + b"\r\n",  # a CRLF ending
    lambda line: line.replace(b'"actor":"sre@host"', b'"actor":"\\u0073re@host"'),  # an escape
    lambda line: b'{"result":"failure",' + line[1:],  # a key twice: grep sees one, a reader the other
    lambda line: line.replace(b'"details":{', b'"details":{"i":-1,'),  # twice, nested
]


@pytest.mark.parametrize("rewrite", _REWRITES)
def test_a_line_stored_otherwise_than_voke_writes_it_is_an_edit_at_its_line(
    log1000: list[au.AuditEntry], rewrite
) -> None:
    raw = lines(log1000[:300])
    cp = au.next_checkpoint(None, [e.hash for e in log1000[:200]], offset=sum(map(len, raw[:200])), now=T0)
    checkpoint = au.Claim(cp.size, cp.root, "checkpoint", cp.last_hash, cp.stack, cp.offset)
    raw[150] = rewrite(raw[150])
    assert json.loads(raw[150])["hash"] == log1000[150].hash  # reads as its entry
    for claims in ([], [checkpoint]):  # the chain alone, and inside a checkpointed range
        report = au.verify_lines(raw, claims)
        assert (report.problem, report.first_bad_entry, report.line) == (au.Problem.EDITED, 150, 151), report
        assert report.message and report.message.startswith(
            "entry 150 was edited: line 151: not stored as voke"
        )


def test_a_key_given_twice_is_refused_by_every_reader(log1000: list[au.AuditEntry]) -> None:
    line = b'{"result":"failure",' + log1000[5].line()[1:-1]
    with pytest.raises(au.NotCanonicalError, match='key "result" appears twice'):
        au.parse_entry(line)
    report = au.verify_lines([*lines(log1000[:5]), line + b"\n"])
    assert report.problem is au.Problem.EDITED and 'key "result" appears twice' in (report.message or "")


@settings(max_examples=200, deadline=None)
@given(
    details=st.dictionaries(
        st.sampled_from(["hash", "prev_hash", "x", ',"prev_hash":"', "é"]) | st.text(max_size=8),
        st.recursive(
            st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False)
            | st.text(max_size=12) | st.just(',"prev_hash":"' + "0" * 64),
            lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.sampled_from(["prev_hash", "hash", "a"]), inner, max_size=3),
            max_leaves=8,
        ),
        max_size=4,
    ),
    target=st.text(max_size=12),
)  # fmt: skip
def test_the_line_and_hash_from_one_serialisation_are_the_written_ones(details: dict, target: str) -> None:
    entry = au.make_entry(
        seq=3, prev_hash="ab" * 32, now=T0, event_type="x", actor="a", env="e", target=target,
        result="success", duration_seconds=None, details=details,
    )  # fmt: skip
    assert entry.line_and_hash() == (entry.line()[:-1], entry.computed_hash())
    assert au.verify_lines([entry.line()]).problem is au.Problem.SEQUENCE  # read back as written


@pytest.mark.parametrize("number", [b"NaN", b"-Infinity", b"1e400"])
def test_a_number_with_no_canonical_json_is_a_corrupt_line_not_a_crash(
    log1000: list[au.AuditEntry], number: bytes
) -> None:
    raw = lines(log1000[:5])
    raw[2] = raw[2].replace(b'"details":{"i":2}', b'"details":{"i":' + number + b"}")
    assert verdict(raw) == (2, au.Problem.CORRUPT_LINE)


def test_a_checkpoint_whose_saved_state_is_not_the_logs_is_caught() -> None:
    entries = build(8)
    cp = au.next_checkpoint(None, [e.hash for e in entries[:6]], offset=0, now=T0)
    good = au.Claim(cp.size, cp.root, "checkpoint", cp.last_hash, cp.stack)
    assert au.verify_lines(lines(entries), [good]).ok
    bad = replace(good, stack=("ab" * 32,) * len(cp.stack))
    assert verdict(lines(entries), [bad]) == (6, au.Problem.CHECKPOINT_MISMATCH)
    with pytest.raises(au.EntryFormatError, match="stack"):
        au.Checkpoint.from_json({**cp.to_json(), "stack": ["zz" * 32] * len(cp.stack)})


@pytest.mark.parametrize(
    ("changes", "fragment"),
    [
        ({"stack": None}, "stack must be 2 hashes"),  # none: the next checkpoint could not start from it
        ({"stack": []}, "stack must be 2 hashes"),
        ({"size": 7}, "stack must be 3 hashes"),
        ({"size": True}, "size must be a positive integer"),
        ({"size": 6.0}, "size must be a positive integer"),
        ({"size": float("inf")}, "size must be a positive integer"),
        ({"size": "6"}, "size must be a positive integer"),
        ({"offset": None}, "offset must be a non-negative integer"),
        ({"offset": False}, "offset must be a non-negative integer"),
        ({"offset": 1e400}, "offset must be a non-negative integer"),
        ({"offset": -1}, "offset must be a non-negative integer"),
        ({"root": 5}, "root must be 64 lowercase hex digits"),
        ({"timestamp": 0}, "timestamp must be a string"),
    ],
)
def test_a_checkpoint_line_must_say_everything_the_next_checkpoint_needs(
    changes: dict[str, object], fragment: str
) -> None:
    cp = au.next_checkpoint(None, [e.hash for e in build(6)], offset=10, now=T0)
    assert au.Checkpoint.from_json(cp.to_json()) == cp
    doc = {k: v for k, v in {**cp.to_json(), **changes}.items() if v is not None}
    with pytest.raises(au.EntryFormatError, match=fragment):
        au.Checkpoint.from_json(doc)


def test_a_name_that_is_not_utf8_is_stored_legibly() -> None:
    name = b"\xff.csv".decode("utf-8", "surrogateescape")  # as Python hands it in from argv
    entry = au.make_entry(seq=0, prev_hash=au.ZERO, now=T0, event_type="ingest.load", actor="a", env="e",
                          target=name, result="success", duration_seconds=None, details={"file": name})  # fmt: skip
    assert entry.target == "\\xff.csv" and entry.details["file"] == "\\xff.csv"
    assert au.parse_entry(entry.line()[:-1]) == entry


# -- reading -------------------------------------------------------------------------------------


def test_filters_and_pages(log1000: list[au.AuditEntry]) -> None:
    flt = au.Filter(event_type="rotate.*", result="failure")
    page, total, exact = au.select(log1000, flt, limit=3, offset=2)
    assert total == 100 and exact  # odd i (rotate) and i % 5 == 0 (failure): i = 5, 15, 25, ...
    assert [e.seq for e in page] == [25, 35, 45]
    window = au.Filter(since=T0 + timedelta(seconds=10), until=T0 + timedelta(seconds=20), target="target-3")
    page, total, exact = au.select(log1000, window, limit=None)
    assert [e.seq for e in page] == [10, 17] and total == 2 and exact
    # Not counting: no further than the first match after the page
    page, total, exact = au.select(log1000, flt, limit=3, offset=2, count=False)
    assert [e.seq for e in page] == [25, 35, 45] and (total, exact) == (6, False)


def test_csv_export_escapes_formula_cells() -> None:
    entry = au.make_entry(
        seq=0,
        prev_hash=au.ZERO,
        now=T0,
        event_type="ingest.load",
        actor="=cmd|' /C calc'!A0",
        env="local",
        target="+SUM(A1)",
        result="success",
        duration_seconds=0.5,
        details={"note": "@x"},
    )
    text = "".join(au.to_csv([entry]))
    rows = list(csv.reader(io.StringIO(text)))
    assert rows[0] == list(au.FIELDS)
    row = dict(zip(rows[0], rows[1], strict=True))
    assert row["actor"] == "'=cmd|' /C calc'!A0"
    assert row["target"] == "'+SUM(A1)"
    assert row["details"] == '{"note": "@x"}'
    for cell in ("-1", "@a", "\tx"):
        assert au.csv_cell(cell).startswith("'")
    assert au.csv_cell(-1) == "'-1" and au.csv_cell(0.5) == "0.5" and au.csv_cell(None) == ""


def test_every_result_voke_writes_can_be_filtered_for():
    from typing import get_args

    from voketag_ops.audit import AuditedEvent
    from voketag_ops.core import audit, drill, rotation
    from voketag_ops.workflows.drill import journal_event

    # (a rotation under way, forward or back, is recorded as `started`, never as its status)
    ended = set(get_args(rotation.Status)) - set(rotation.ACTIVE)
    # A drill's event is written once its journal has ended (never `running`), as journal_event says.
    drills = set()
    for status in set(drill.STATUSES) - {"running"}:
        event = AuditedEvent()
        journal_event(event, {"status": status, "rto_seconds": None, "rpo_seconds": None})
        drills.add(event.result)
    assert drills == {"success", "failed", "aborted", "interrupted"}
    written = {*drills, *ended, "loaded", "duplicate", "rejected", "unchanged"}
    assert written <= set(audit.RESULTS), written - set(audit.RESULTS)
    assert not set(rotation.ACTIVE) & set(audit.RESULTS)  # listed as written, they never were
    # `completed` and `running` are a drill journal's statuses no audit event ever carried
    assert not {"completed", "running"} & set(audit.RESULTS)
