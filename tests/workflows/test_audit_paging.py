"""`voke audit show` and `export` stream the log: the same pages, totals and exports as reading
it all into memory, and memory that does not grow with the log."""

from __future__ import annotations

import hashlib
import io
import json
import tracemalloc
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from voketag_ops.cli.app import run
from voketag_ops.core import audit as core
from voketag_ops.workflows.audit import export_chunks, show

T0 = datetime(2026, 5, 1, tzinfo=UTC)
EVENTS = ("rotate.db-password", "ingest.load", "dr.failover")
RESULTS = ("success", "failure")
ENVS = ("local", "prod")


def _write_log(home: Path, n: int, *, garbage: frozenset[int] = frozenset(), seed: int = 0) -> None:
    """N entries (and an unreadable line before each index in GARBAGE), an hour apart, except
    that every seventh steps back in time (a clock set back: the log is not sorted by time)."""
    directory = home / "audit"
    directory.mkdir(parents=True, exist_ok=True)
    prev = core.ZERO
    with open(directory / "audit.jsonl", "wb") as fh:
        for i in range(n):
            if i in garbage:
                fh.write(b'{"not": "an entry"}\n')
            entry = core.make_entry(
                seq=i,
                prev_hash=prev,
                now=T0 + timedelta(hours=i - 5 * (i % 7 == 6)),
                event_type=EVENTS[(i + seed) % 3],
                actor="sre",
                env=ENVS[(i * 5 + seed) % 2],
                target=f"svc-{i % 4}",
                result=RESULTS[(i + seed) % 5 == 0],
                duration_seconds=1.0,
                details={"i": i, "pad": "x" * 200},
            )
            fh.write(entry.line())
            prev = entry.hash


def _reference(home: Path, flt: core.Filter) -> tuple[list[dict[str, Any]], list[int]]:
    """Every matching entry and the unreadable lines, the log read whole: with --since, from
    the line after the last entry stamped before it (the log is in the order it was written)."""
    lines = []
    for number, line in enumerate((home / "audit" / "audit.jsonl").read_bytes().splitlines(), start=1):
        try:
            lines.append((number, core.parse_entry(line)))
        except core.EntryFormatError:
            lines.append((number, None))
    if flt.since is not None:
        older = [i for i, (_n, e) in enumerate(lines) if e is not None and e.time < flt.since]
        lines = lines[older[-1] + 1 :] if older else lines
    matching = [e.to_json() for _n, e in lines if e is not None and flt.matches(e)]
    return matching, [n for n, e in lines if e is None]


def _read_back(home: Path, flt: core.Filter, stop: int) -> list[int]:
    """The unreadable lines a newest-first read passes over until the STOP-th match (from the
    newest), or to its start (or --since)."""
    matching, skipped = _reference(home, flt)
    if stop > len(matching):
        return skipped
    lines = (home / "audit" / "audit.jsonl").read_bytes().splitlines()
    at = next(n for n, line in enumerate(lines, 1) if json.loads(line).get("seq") == matching[-stop]["seq"])
    return [n for n in skipped if n > at]


filters = st.builds(
    core.Filter,
    since=st.none() | st.integers(-2, 40).map(lambda h: T0 + timedelta(hours=h)),
    until=st.none() | st.integers(-2, 40).map(lambda h: T0 + timedelta(hours=h)),
    event_type=st.none() | st.sampled_from(["rotate.*", "ingest.load", "*.*", "nothing"]),
    target=st.none() | st.sampled_from(["svc-1", "svc-[23]"]),
    result=st.none() | st.sampled_from(RESULTS),
    env=st.none() | st.sampled_from(ENVS),
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    n=st.integers(0, 30),
    garbage=st.frozensets(st.integers(0, 30), max_size=3),
    seed=st.integers(0, 4),
    flt=filters,
    limit=st.none() | st.integers(1, 12),
    offset=st.integers(0, 15),
    newest_first=st.booleans(),
)
def test_show_pages_as_reading_the_whole_log_did(
    tmp_path_factory: Any,
    n: int,
    garbage: frozenset[int],
    seed: int,
    flt: core.Filter,
    limit: int | None,
    offset: int,
    newest_first: bool,
) -> None:
    home = tmp_path_factory.mktemp("home")
    _write_log(home, n, garbage=garbage, seed=seed)
    matching, skipped = _reference(home, flt)
    ordered = matching[::-1] if newest_first else matching
    report = show(home, flt, limit=limit, offset=offset, newest_first=newest_first)
    assert report["entries"] == ordered[offset : None if limit is None else offset + limit]
    if newest_first and limit is not None and offset + limit < len(matching):
        # read back no further than the first match after the page
        stop = offset + limit + 1
        assert (report["total"], report["total_exact"]) == (stop, False)
        assert report["skipped_lines"] == _read_back(home, flt, stop)
    else:
        assert report["total"] == len(matching) and report["total_exact"]
        assert report["skipped_lines"] == skipped


def _old_export(matching: list[dict[str, Any]], fmt: str) -> str:
    """The export as it was built whole before it was streamed."""
    if fmt == "csv":
        return "".join(core.to_csv(core.parse_entry(core.canonical(e)) for e in matching))
    rows = ("\n" + json.dumps(e, ensure_ascii=False, sort_keys=True) for e in matching)
    return "[" + ",".join(rows) + "\n]\n"


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    n=st.integers(0, 12),
    garbage=st.frozensets(st.integers(0, 12), max_size=2),
    flt=filters,
    fmt=st.sampled_from(["json", "csv"]),
)
def test_export_writes_what_it_wrote_when_built_whole(
    tmp_path_factory: Any, n: int, garbage: frozenset[int], flt: core.Filter, fmt: str
) -> None:
    home = tmp_path_factory.mktemp("home")
    _write_log(home, n, garbage=garbage)
    matching, skipped = _reference(home, flt)
    text = _old_export(matching, fmt)
    streamed: list[int] = []
    assert "".join(export_chunks(home, flt, fmt, skipped=streamed)) == text and streamed == skipped
    inline = "".join(export_chunks(home, flt, fmt, skipped=[], inline=True))
    assert "\n" not in inline and json.loads(inline) == (json.loads(text) if fmt == "json" else text)


def test_export_json_envelope_and_output_file(tmp_path: Path, make_environ: Any) -> None:
    home = tmp_path / "home"
    _write_log(home, 9, garbage=frozenset({4}))
    environ = make_environ(home)
    matching, _ = _reference(home, core.Filter(event_type="rotate.*"))
    for fmt in ("json", "csv"):
        out, err = io.StringIO(), io.StringIO()
        args = ["audit", "export", "-f", fmt, "-e", "rotate.*", "--json"]
        assert run(args, stdout=out, stderr=err, environ=environ, cwd=tmp_path) == 0
        assert out.getvalue().count("\n") == 1 and "skipped unreadable line(s): [5]" in err.getvalue()
        data = json.loads(_old_export(matching, fmt)) if fmt == "json" else _old_export(matching, fmt)
        assert json.loads(out.getvalue()) == {
            "ok": True,
            "command": "audit export",
            "result": {"format": fmt, "path": None, "data": data, "skipped_lines": [5]},
        }
        target = tmp_path / f"out.{fmt}"
        args = ["audit", "export", "-f", fmt, "-e", "rotate.*", "-o", str(target), "--json"]
        assert run(args, stdout=io.StringIO(), stderr=io.StringIO(), environ=environ, cwd=tmp_path) == 0
        assert target.read_text() == _old_export(matching, fmt)


class _Digest(io.StringIO):
    """stdout that keeps only a hash of what is written (so that it holds no memory itself)."""

    def __init__(self) -> None:
        super().__init__()
        self.sha = hashlib.sha256()

    def write(self, text: str) -> int:
        self.sha.update(text.encode())
        return len(text)


def _peak(call: Callable[[], object]) -> int:
    tracemalloc.start()
    try:
        call()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def _peaks(tmp_path: Path, call: Callable[[Path], object]) -> tuple[int, int]:
    """Peak memory of CALL on a log of 200 entries, then of 2000 (about 0.9 MB more log)."""
    peaks = []
    for n in (200, 2000):
        home = tmp_path / f"home{n}"
        _write_log(home, n)
        call(home)  # imports and caches out of the way
        peaks.append(_peak(lambda home=home: call(home)))
    return peaks[0], peaks[1]


def test_newest_first_holds_a_page_not_the_log(tmp_path: Path) -> None:
    def newest(home: Path) -> None:
        report = show(home, core.Filter(), limit=5, offset=3, newest_first=True)
        seqs = [e["seq"] for e in report["entries"]]
        assert seqs == list(range(seqs[0], seqs[0] - 5, -1)) and (report["total"], report["total_exact"]) == (
            9,
            False,
        )

    small, large = _peaks(tmp_path, newest)
    assert large < small + 256 * 1024, (small, large)


def test_export_holds_no_whole_export(tmp_path: Path, make_environ: Any) -> None:
    for args in (
        ["--json"],
        ["-f", "csv", "--json"],
        ["-o", str(tmp_path / "out.json")],
        ["-o", str(tmp_path / "out.csv"), "-f", "csv"],
    ):

        def export(home: Path, args: list[str] = args) -> None:
            environ = make_environ(home)
            code = run(
                ["audit", "export", *args], stdout=_Digest(), stderr=io.StringIO(), environ=environ, cwd=home
            )
            assert code == 0

        small, large = _peaks(tmp_path, export)
        assert large < small + 256 * 1024, (args, small, large)


def _bury(home: Path, lines: int) -> None:
    """The first LINES lines of the log made garbage of the same length: a read that parses one
    of them lists it in `skipped_lines` (or, for dr history, never finds their events)."""
    path = home / "audit" / "audit.jsonl"
    data = path.read_bytes().splitlines(keepends=True)
    path.write_bytes(
        b"".join(b"#" * (len(line) - 1) + b"\n" for line in data[:lines]) + b"".join(data[lines:])
    )


def test_the_newest_page_reads_back_only_as_far_as_it_goes(tmp_path: Path) -> None:
    home = tmp_path / "home"
    _write_log(home, 300)
    _bury(home, 250)  # "the last command's event" must never read the old history
    report = show(home, core.Filter(), limit=1, newest_first=True)
    assert [e["seq"] for e in report["entries"]] == [299]
    assert (report["total"], report["total_exact"], report["skipped_lines"]) == (2, False, [])
    # --since stops the read back at the newest entry stamped before it, and starts the forward one there
    since = core.Filter(since=T0 + timedelta(hours=280), event_type="rotate.*")
    newest = show(home, since, limit=None, newest_first=True)
    oldest = show(home, since, limit=None)
    assert newest["skipped_lines"] == oldest["skipped_lines"] == []
    assert newest["entries"] == oldest["entries"][::-1] and newest["entries"]
    assert newest["total"] == oldest["total"] == len(oldest["entries"]) and newest["total_exact"]
    assert all(e["seq"] >= 279 and e["event_type"] == "rotate.db-password" for e in oldest["entries"])
    assert [e["seq"] for e in oldest["entries"]] == [e["seq"] for e in _reference(home, since)[0]]
    # an unreadable line it does read is named by its line number, as the forward read names it
    path = home / "audit" / "audit.jsonl"
    data = path.read_bytes().splitlines(keepends=True)
    path.write_bytes(b"".join([*data[:-3], b"garbage\n", *data[-3:]]))
    report = show(home, core.Filter(), limit=5, newest_first=True)
    assert report["skipped_lines"] == [298] and [e["seq"] for e in report["entries"]] == [
        299,
        298,
        297,
        296,
        295,
    ]


def test_dr_history_reads_back_only_until_it_has_its_events(tmp_path: Path, monkeypatch: Any) -> None:
    from voketag_ops.adapters.local.environment import LocalEnvironment
    from voketag_ops.config import LocalSettings
    from voketag_ops.workflows.dr import history

    home = tmp_path / "home"
    _write_log(home, 300)  # every third event is dr.failover
    env = LocalEnvironment(LocalSettings(home=home))
    everything = history(env, limit=1000)
    assert len(everything) == 100
    parsed = []
    parse = core.parse_entry
    monkeypatch.setattr(core, "parse_entry", lambda line, **kw: parsed.append(line) or parse(line, **kw))
    newest = history(env, limit=5)
    assert newest == everything[-5:]  # oldest first, as before
    assert [e["details"]["i"] for e in newest] == [287, 290, 293, 296, 299]
    assert len(parsed) == 13  # the newest 13 lines (seq 287-299), not the log
