"""Pure DR logic: WAL names and gaps across timelines, durations and restore targets,
threshold judgement, RTO/RPO from the canary log, verdicts and the journal schema."""

from __future__ import annotations

import dataclasses
import itertools
import re
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from voketag_ops.core import dr_checks, drill, wal
from voketag_ops.core.drill_report import html_page, markdown
from voketag_ops.testing.imports import loaded_of

T0 = datetime(2024, 6, 1, 12, 0, 0, tzinfo=UTC)
MB16 = 16 * 1024 * 1024  # initdb's default segment size: an environment made before local.wal_segment_mb
MB1 = 1024 * 1024  # local.wal_segment_mb's default


# -- wal ----------------------------------------------------------------------------------------------
@given(st.integers(1, 0xFFFF), st.integers(0, 2**40 - 1))
def test_segment_names_round_trip(tli, segno):
    assert wal.parse_segment_name(wal.segment_name(tli, segno, MB16), MB16) == (tli, segno)


@given(st.integers(0, 2**64 - 1))
def test_lsn_round_trip(value):
    assert wal.parse_lsn(wal.format_lsn(value)) == value


def test_segment_name_layout_matches_postgresql():
    assert wal.segment_name(1, 5, MB16) == "000000010000000000000005"
    assert wal.segment_name(2, 256, MB16) == "000000020000000100000000"
    assert wal.segno_of(wal.parse_lsn("0/50000A0"), MB16) == 5
    # 1 MB segments: 4096 to a log id; the LSN 0/50000A0 is in segment 0x50
    assert wal.segment_name(2, 4096, MB1) == "000000020000000100000000"
    assert wal.segment_name(1, 0x50, MB1) == "000000010000000000000050"
    assert wal.segno_of(wal.parse_lsn("0/50000A0"), MB1) == 0x50
    assert wal.parse_segment_name("0000000200000001000000FF", MB1) == (2, 4096 + 255)


HISTORY_3 = "1\t0/50000A0\tno recovery target specified\n\n2\t0/7000000\tno recovery target specified\n"


def test_expected_segments_follow_the_timeline_history():
    path = wal.timeline_path(3, wal.parse_history(HISTORY_3))
    assert [(s.timeline, s.end) for s in path] == [(1, 0x50000A0), (2, 0x7000000), (3, None)]
    names = wal.expected_segments(path, 3, 8, MB16)
    # the switch segment is read from the new timeline (the old copy lacks the promotion)
    assert names == [
        "000000010000000000000003",
        "000000010000000000000004",
        "000000020000000000000005",
        "000000020000000000000006",
        "000000030000000000000007",
        "000000030000000000000008",
    ]


def test_find_gaps_names_the_hole_and_ignores_pending_segments():
    path = wal.timeline_path(3, wal.parse_history(HISTORY_3))
    archived = {
        "000000010000000000000003",
        "000000010000000000000004",
        "000000010000000000000005.partial",
        "000000020000000000000006",
        "00000002.history",
        "000000030000000000000007",
    }
    gaps = wal.find_gaps(
        path=path,
        start_segno=3,
        archived=archived,
        current_segno=9,
        pending=["000000030000000000000008"],
        segment_size=MB16,
    )
    assert gaps.missing == ["000000020000000000000005"]
    assert gaps.pending == ["000000030000000000000008"]
    assert gaps.last_contiguous == "000000010000000000000004"
    assert gaps.contiguous_tail == ("000000010000000000000003", "000000010000000000000004")
    assert not gaps.ok and gaps.start == "000000010000000000000003"


def test_waldump_runs_split_at_timeline_changes_and_errors_name_their_segment():
    names = [wal.segment_name(1, 3, MB16), wal.segment_name(1, 4, MB16), wal.segment_name(2, 5, MB16)]
    names.append(wal.segment_name(2, 6, MB16))
    assert wal.timeline_runs(names) == [names[:2], names[2:]]
    run = names[2:]
    error = (
        "error in WAL record at 0/5FFFFA0: incorrect resource manager data checksum in record at 0/6000028"
    )
    assert (
        wal.segment_of_error(error, run, MB16) == names[3]
    )  # the record it could not read, not the one before
    assert wal.segment_of_error("could not read file: Permission denied", run, MB16) == names[2]


def test_find_gaps_without_a_leader_ends_at_the_newest_archived_segment():
    path = wal.timeline_path(1, [])
    archived = {wal.segment_name(1, n, MB16) for n in (2, 3, 4)}
    gaps = wal.find_gaps(path=path, start_segno=2, archived=archived, segment_size=MB16)
    assert gaps.ok and gaps.end == "000000010000000000000004" and gaps.expected == 3


def _gaps_by_name(*, path, start_segno, archived, current_segno=None, pending=(), segment_size):
    """find_gaps as it was before the archive index: every name parsed, for every backup."""
    have, waiting = set(archived), set(pending)
    timelines = {s.timeline for s in path}
    on_path = [
        wal.parse_segment_name(n, segment_size)[1]
        for n in have
        if wal.SEGMENT_NAME.match(n) and wal.parse_segment_name(n, segment_size)[0] in timelines
    ]
    end = current_segno - 1 if current_segno is not None else max(on_path, default=start_segno - 1)

    def names_from(first, last):
        names = []
        for segno in range(first, last + 1):
            tli = path[0].timeline
            for span in path:
                if wal.segno_of(span.begin, segment_size) <= segno:
                    tli = span.timeline
            names.append(wal.segment_name(tli, segno, segment_size))
        return names

    names = names_from(start_segno, end) if end >= start_segno else []
    reachable = 0
    for name in names:
        if name not in have:
            break
        reachable += 1
    return {
        "start": names_from(start_segno, start_segno)[0],
        "end": names[-1] if names else None,
        "expected": len(names),
        "missing": [n for n in names if n not in have and n not in waiting],
        "pending": [n for n in names if n not in have and n in waiting],
        "last_contiguous": names[reachable - 1] if reachable else None,
        "contiguous_tail": tuple(names[max(0, reachable - 8) : reachable]),
        "reachable": tuple(names[:reachable]),
    }


_SIZES = st.sampled_from([MB1, MB16, 1 << 30])  # 4096, 256 and 4 segments per id


@st.composite
def _archives(draw):
    size = draw(_SIZES)
    per = wal.segments_per_id(size)
    timelines = sorted(draw(st.sets(st.integers(1, 5), min_size=1, max_size=4)))
    switches = sorted(
        draw(st.lists(st.integers(1, 30 * size), min_size=len(timelines) - 1, max_size=len(timelines) - 1))
    )
    history = list(zip(timelines[:-1], switches, strict=True))
    # raw names: some spelled as PostgreSQL never does (low part past the last segment of an id)
    raw = st.tuples(st.integers(1, 6), st.integers(0, 40 // per + 1), st.integers(0, per + 2))
    segments = [f"{t:08X}{hi:08X}{lo:08X}" for t, hi, lo in draw(st.lists(raw, max_size=60))]
    extras = draw(st.lists(st.sampled_from(["00000002.history", "000000010000000000000003.partial", "junk"])))
    archived = set(segments + extras)
    pending = draw(st.lists(st.sampled_from(sorted(archived | {wal.segment_name(1, 7, size)}))))
    pending += [
        wal.segment_name(t, n, size)
        for t, n in draw(st.lists(st.tuples(st.integers(1, 6), st.integers(0, 40))))
    ]
    return size, wal.timeline_path(timelines[-1], history), archived, pending


@given(
    _archives(),
    st.lists(st.integers(0, 40), min_size=1, max_size=6),
    st.one_of(st.none(), st.integers(0, 45)),
)
def test_gaps_from_the_archive_index_equal_those_read_name_by_name(archive, starts, current):
    size, path, archived, pending = archive
    index = wal.ArchiveIndex.of(archived, size)
    each = wal.find_gaps_each(
        path=path,
        start_segnos=starts,
        archived=index,
        current_segno=current,
        pending=pending,
        segment_size=size,
    )
    for start, gaps in zip(starts, each, strict=True):
        want = _gaps_by_name(
            path=path,
            start_segno=start,
            archived=archived,
            current_segno=current,
            pending=pending,
            segment_size=size,
        )
        alone = wal.find_gaps(
            path=path,
            start_segno=start,
            archived=archived,
            current_segno=current,
            pending=pending,
            segment_size=size,
        )
        for g in (gaps, alone):
            got = {k: getattr(g, k) for k in want}
            got["reachable"] = tuple(g.reachable)
            assert got == want
            run = g.reachable
            assert len(run) == len(want["reachable"])
            assert run[-3:] == want["reachable"][-3:] and run[1:5] == want["reachable"][1:5]
            assert [run.index(n) for n in run] == list(range(len(run)))
            assert wal.segment_name(1, 99, size) not in run and "junk" not in run
            if run:
                assert run[-1] == want["last_contiguous"] and run[0] == want["start"]


def test_gaps_of_many_backups_parse_the_archive_once(monkeypatch):
    """30,000 archived segments across a switch to timeline 2, 400 backups: every name is parsed
    once, and the names made grow with the segments plus the backups, not their product."""
    path = wal.timeline_path(2, [(1, 12_000 * MB16 + 40)])
    archived = [wal.segment_name(1, n, MB16) for n in range(10, 12_000)]
    archived += [wal.segment_name(2, n, MB16) for n in range(12_000, 30_010) if n != 25_000]  # one hole
    starts = [10 + 60 * i for i in range(400)]  # all before the hole
    parsed, made = [0], [0]
    real_parse, real_name = wal.parse_segment_name, wal.segment_name

    def parse(*args):
        parsed[0] += 1
        return real_parse(*args)

    def name(*args):
        made[0] += 1
        return real_name(*args)

    monkeypatch.setattr(wal, "parse_segment_name", parse)
    monkeypatch.setattr(wal, "segment_name", name)
    each = wal.find_gaps_each(
        path=path, start_segnos=starts, archived=archived, current_segno=30_010, segment_size=MB16
    )
    assert parsed[0] == len(archived)
    assert made[0] <= 30_000 + 20 * len(starts)
    assert all(g.missing == [real_name(2, 25_000, MB16)] for g in each)
    assert each[0].last_contiguous == real_name(2, 24_999, MB16) and len(each[0].reachable) == 24_990
    assert each[0].reachable[11_989:11_991] == (real_name(1, 11_999, MB16), real_name(2, 12_000, MB16))


# -- inputs ------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("90", 90),
        ("90s", 90),
        ("5m", 300),
        ("1h30m", 5400),
        ("1.5h", 5400),
        ("2d", 172800),
        ("250ms", 0.25),
        ("24h", 86400),
        ("1w", 604800),
    ],
)
def test_parse_duration(text, seconds):
    assert dr_checks.parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "soon", "5x", "m5", "-5m", "3 5m", "99999999999999d", "3651d"])
def test_parse_duration_rejects(text):
    with pytest.raises(ValueError):
        dr_checks.parse_duration(text)


@pytest.mark.parametrize(
    ("text", "meant"),
    [("1h30", "1h30m"), ("2d12", "2d12h"), ("5m30", "5m30s"), ("1w 2", "1w 2d"), ("3 5m", "3s")],
)
def test_a_bare_number_is_seconds_only_as_the_whole_duration(text, meant):
    # '1h30' was 3630 s: `dr restore --to -1h30` landed an hour ago, not an hour and a half.
    with pytest.raises(ValueError, match=re.escape(f"each part of a duration needs its unit (e.g. {meant})")):
        dr_checks.parse_duration(text)
    with pytest.raises(ValueError, match="needs its unit"):
        dr_checks.parse_point_in_time(f"-{text}", now=T0)


@pytest.mark.parametrize("text", ["", " ", "-"])
def test_an_empty_duration_says_what_one_looks_like(text):
    with pytest.raises(ValueError, match=re.escape("empty duration (use e.g. 90s, 5m, 1h30m")):
        dr_checks.parse_point_in_time(text, now=T0) if text == "-" else dr_checks.parse_duration(text)


def test_points_in_time_with_offsets_relative_and_naive():
    now = T0
    parse = dr_checks.parse_point_in_time
    assert parse("2024-06-01T14:00:00+02:00", now=now) == parse("2024-06-01T12:00:00Z", now=now) == T0
    assert parse("-5m", now=now) == T0 - timedelta(minutes=5)
    assert parse("now", now=now) == T0
    with pytest.raises(ValueError, match="no UTC offset"):
        parse("2024-06-01T12:00:00", now=now)
    with pytest.raises(ValueError, match="not a point in time"):
        parse("yesterday", now=now)
    with pytest.raises(ValueError, match="minutes run 00-59"):  # not read as +06:15
        parse("2024-06-01T14:00:00+05:75", now=now)
    assert parse("2024-06-01 17:30:00.5+0530", now=now) == T0 + timedelta(seconds=0.5)
    for far in ("-100000000d", "0001-01-01T00:00:00+14:00", "9999-12-31T23:59:59-14:00"):
        with pytest.raises(ValueError):  # (OverflowError before: exit 70)
            parse(far, now=now)


# -- judgement ----------------------------------------------------------------------------------------
LIMITS = dr_checks.Thresholds(
    max_backup_age_seconds=86400, max_lag_seconds=60, min_pitr_window_seconds=0, archive_stale_seconds=120
)


def healthy(**changes):
    status = {
        "leader": {"name": "primary", "role": "primary", "running": True},
        "standby": {
            "name": "replica",
            "role": "replica",
            "running": True,
            "streaming": True,
            "lag_seconds": 0.02,
            "lag_bytes": 0,
        },
        "writable_nodes": ["primary"],
        "split_brain": False,
        "archive": {"failing": False, "failed_count": 0, "oldest_pending_seconds": None},
        "newest_backup": {"label": "base-1", "finished_at": "2024-06-01T11:00:00Z"},
        "archive_gaps": {"missing": []},
        "recoverable_window": {
            "earliest": "2024-06-01T11:00:00Z",
            "latest": "2024-06-01T12:00:00Z",
            "seconds": 3600.0,
        },
        "unfinished_operation": None,
    }
    status.update(changes)
    return status


def test_a_cloud_sql_primary_must_keep_the_platforms_days_of_transaction_logs():
    limits = dataclasses.replace(LIMITS, pitr_retention_days=7)
    primary = {"name": "voke-db", "role": "primary", "running": True}
    judged = {
        c.name: c
        for c in dr_checks.judge(
            healthy(leader={**primary, "pitr_enabled": True, "retention_days": 7}), limits, now=T0
        )
    }
    assert (
        judged["pitr_retention"].ok
        and judged["pitr_retention"].message == "voke-db keeps 7 days of transaction logs (target 7)"
    )
    fix = "`gcloud sql instances patch voke-db --enable-point-in-time-recovery --retained-transaction-log-days=7`"
    short = failed(healthy(leader={**primary, "pitr_enabled": True, "retention_days": 3}), limits)
    assert (
        short["pitr_retention"]
        == f"voke-db keeps 3 days of transaction logs, fewer than the 7 the platform keeps: {fix}"
    )
    off = failed(healthy(leader={**primary, "pitr_enabled": False, "retention_days": None}), limits)
    assert off["pitr_retention"] == f"point-in-time recovery is off on voke-db: {fix}"
    unknown = failed(healthy(leader={**primary, "pitr_enabled": True, "retention_days": None}), limits)
    assert unknown["pitr_retention"] == "unknown: Cloud SQL did not say how many days of logs voke-db keeps"
    half = dataclasses.replace(LIMITS, pitr_retention_days=7.5)  # gcloud takes whole days
    assert failed(healthy(leader={**primary, "pitr_enabled": True, "retention_days": 7}), half)[
        "pitr_retention"
    ].endswith("--retained-transaction-log-days=8`")
    # the local environment keeps it by `voke dr prune`: no such check there
    assert "pitr_retention" not in {c.name for c in dr_checks.judge(healthy(), limits, now=T0)}


def failed(status, limits=LIMITS):
    return {c.name: c.message for c in dr_checks.judge(status, limits, now=T0) if not c.ok}


def test_a_healthy_environment_passes_every_check():
    assert failed(healthy()) == {}
    window = dict(healthy()["recoverable_window"], earliest_backup="base-2")  # base-1 cut off by a gap
    checks = {c.name: c.message for c in dr_checks.judge(healthy(recoverable_window=window), LIMITS, now=T0)}
    assert checks["archive_continuity"] == "WAL archive has no gap since backup base-2"


def test_each_breach_is_named():
    assert list(failed(healthy(newest_backup={"label": "b", "finished_at": "2024-05-30T12:00:00Z"}))) == [
        "backup_age"
    ]
    lagging = healthy()
    lagging["standby"] = dict(lagging["standby"], lag_seconds=75.0)
    assert "over 60 s" in failed(lagging)["replication_lag"]
    brain = failed(healthy(split_brain=True, writable_nodes=["primary", "replica"]))
    assert brain["split_brain"].startswith("split brain: replica writable beside the leader primary")
    assert "voke dr fence replica --yes" in brain["split_brain"]
    assert (
        "missing"
        in failed(healthy(archive_gaps={"missing": ["000000010000000000000007"]}))["archive_continuity"]
    )
    assert "failing" in failed(healthy(archive={"failing": True, "last_failed_wal": "x"}))["archiving"]
    stale = healthy(archive={"failing": False, "oldest_pending_seconds": 500.0})
    assert "over 120 s" in failed(stale)["archive_fresh"]
    assert "no successful base backup" in failed(healthy(newest_backup=None))["backup_age"]
    week = dr_checks.Thresholds(86400, 60, 7 * 86400, 120)
    assert "shorter than 168.0 h" in failed(healthy(), week)["pitr_window"]
    op = {"operation": "failover", "resume": "voke dr failover --yes"}
    assert "voke dr failover --yes" in failed(healthy(unfinished_operation=op))["unfinished_operation"]
    # promoted, then interrupted before the leader on record changed; the old leader started again:
    # the node to stop is the one the failover moves away from, not the one it promotes
    down = {"name": "replica", "role": "stopped", "running": False, "streaming": False}
    assert failed(healthy(standby=down))["replica_streaming"].endswith(
        "start it as a standby with `voke env up`"
    )
    assert (
        "`voke dr failback --yes` rebuilds it"
        in failed(healthy(standby=down, fenced=["replica"]))["replica_streaming"]
    )
    # stopped without standby.signal (a promoted standby stopped unmarked): `voke env up` refuses
    # to start it, so the advice is the rebuild, not `env up` (found by a review)
    promoted = failed(healthy(standby=dict(down, standby_signal=False)))["replica_streaming"]
    assert "`voke dr failback --yes` rebuilds it" in promoted and "env up" not in promoted
    assert "`voke env up`" in failed(healthy(standby=dict(down, standby_signal=True)))["replica_streaming"]
    # on Cloud SQL: a stopped replica is started; a stopped old primary (a plain promotion) never is
    cloud = {
        "start": "start it with `gcloud sql instances patch {node} --activation-policy=ALWAYS`",
        "rebuild": None,
    }
    assert (
        "--activation-policy=ALWAYS"
        in failed(healthy(standby=dict(down, role="replica"), remedies=cloud))["replica_streaming"]
    )
    old_primary = failed(healthy(standby=dict(down, role="primary"), remedies=cloud))["replica_streaming"]
    assert "ALWAYS" not in old_primary and "starting it would make a second primary" in old_primary
    mid = dict(op, old_leader="primary", new_leader="replica")
    both = failed(healthy(split_brain=True, writable_nodes=["primary", "replica"], unfinished_operation=mid))
    assert (
        "interrupted failover from primary; fence primary with `voke dr fence primary --yes`"
        in both["split_brain"]
    )


def test_a_cloud_snapshot_names_its_own_remedies_and_prints_no_none():
    cloud = {
        "remedies": {
            "fence": "`gcloud sql instances patch {node} --activation-policy=NEVER`",
            "backup": "`gcloud sql backups create --instance=db`",
        },
        "archive": {
            "failing": True,
            "failed_count": 3,
            "oldest_pending_seconds": None,
            "source": "metric (1 h)",
        },
        "split_brain": True,
        "writable_nodes": ["primary", "replica"],
        "newest_backup": None,
    }
    status = healthy(**cloud)
    status["standby"] = dict(status["standby"], lag_bytes=None)  # no byte-lag sample
    found = failed(status)
    assert "gcloud sql instances patch replica --activation-policy=NEVER" in found["split_brain"]
    assert found["backup_age"].endswith("take one with `gcloud sql backups create --instance=db`")
    assert found["archiving"] == "WAL archiving is failing: 3 segment(s) failed (metric (1 h))"
    lag = next(c for c in dr_checks.judge(status, LIMITS, now=T0) if c.name == "replication_lag")
    assert lag.ok and lag.message == "replication lag 0.0 s (within 60 s)"
    assert "None" not in " ".join(c.message for c in dr_checks.judge(status, LIMITS, now=T0))


def test_a_replica_the_leader_lists_but_that_does_not_answer_is_not_streaming():
    frozen = healthy()
    frozen["standby"] = dict(frozen["standby"], answering=False, lag_seconds=None)
    said = failed(frozen)["replica_streaming"]
    assert said.startswith("replica replica does not answer (the leader still lists it as streaming); ")
    # `voke env up` leaves a frozen process alone (found by a review): the advice is the rebuild
    assert "`voke dr failback --no-switch-back --clone --yes`" in said and "env up" not in said
    assert "did not answer the heartbeat probe" in failed(frozen)["replication_lag"]
    # once the leader dropped it (wal_sender_timeout) its postmaster is still there: not "start it"
    dropped = healthy(standby={"name": "replica", "role": "unknown", "running": False, "streaming": False})
    dropped["standby"].update(pid=4242, answering=False, standby_signal=True)
    said = failed(dropped)["replica_streaming"]
    assert said.startswith("replica replica (pid 4242) does not answer; ") and "env up" not in said
    assert "--clone" in said
    cloud = dict(frozen, remedies={"unanswering": None})
    assert failed(cloud)["replica_streaming"].endswith("(the leader still lists it as streaming)")


def test_every_check_is_listed_also_when_the_replica_does_not_answer():
    stopped = healthy(standby={"name": "replica", "role": None, "running": False, "streaming": False})
    names = [c.name for c in dr_checks.judge(stopped, LIMITS, now=T0)]
    assert names == [c.name for c in dr_checks.judge(healthy(), LIMITS, now=T0)]
    assert failed(stopped)["replication_lag"] == (
        "replication lag of replica unknown: it is not streaming from the leader"
    )
    assert "replica_streaming" in failed(stopped)


# -- drills ---------------------------------------------------------------------------------------------
def writes(*specs):
    """(seq, seconds after T0, ok) -> Write."""
    return [
        drill.Write(seq, T0 + timedelta(seconds=s), T0 + timedelta(seconds=s + 0.01), ok)
        for seq, s, ok in specs
    ]


def test_rpo_is_zero_when_every_acknowledged_commit_survives():
    log = writes((1, 0, True), (2, 0.1, True), (3, 0.2, False), (4, 1.0, True))
    result = drill.rpo_from_canary(log, {1, 2, 4})
    assert result["lost_commits"] == 0 and result["rpo_seconds"] == 0 and result["failed_writes"] == 1


def test_rpo_spans_from_the_last_survivor_to_the_last_lost_commit():
    log = writes((1, 0, True), (2, 0.1, True), (3, 0.2, True), (4, 0.3, True))
    result = drill.rpo_from_canary(log, {1, 2})
    assert result["lost_commits"] == 2 and result["lost_seqs"] == [3, 4]
    assert result["rpo_seconds"] == pytest.approx(0.2)


def test_pitr_check_wants_everything_before_the_target_and_nothing_after():
    commits = {i: T0 + timedelta(seconds=i / 10) for i in range(1, 11)}
    target = T0 + timedelta(seconds=0.55)
    good = drill.pitr_canary_check(commits, {1, 2, 3, 4, 5}, target)
    assert good["ok"] and good["lost_commits"] == 0 and good["rpo_seconds"] == pytest.approx(0.05)
    bad = drill.pitr_canary_check(commits, {1, 2, 3, 4, 6}, target)
    assert not bad["ok"] and bad["missing_before_target"] == [5] and bad["present_after_target"] == [6]
    # the recovery log's last restored commit (a heartbeat after canary row 5) is the RPO's end
    logged = drill.pitr_canary_check(
        commits, {1, 2, 3, 4, 5}, target, last_restored_commit=T0 + timedelta(seconds=0.53)
    )
    assert logged["rpo_seconds"] == pytest.approx(0.02) and logged["rpo_from"] == "recovery log"
    # no canary row on one side of the target (a canary that could not write): nothing is shown
    for rows in (
        {},
        {i: t for i, t in commits.items() if t <= target},
        {i: t for i, t in commits.items() if t > target},
    ):
        blind = drill.pitr_canary_check(rows, set(rows), target)
        assert not blind["ok"] and "nothing verified" in blind["evidence"], rows
    # a failed check's detail names every part of what it found
    past = drill.pitr_canary_check({2: target + timedelta(seconds=1)}, {2}, target)
    assert drill.pitr_check_detail(past) == (
        "no canary row was committed before the target: nothing verified; present after the target [2]"
    )


def test_rto_and_phases_from_the_timeline():
    timeline = {k: T0 + timedelta(seconds=i) for i, k in enumerate(drill.TIMELINE_KEYS)}
    assert drill.rto_seconds(timeline) == 5.0  # the first write once the services are back too
    assert drill.phases(timeline) == {
        "detection": 1.0,
        "decision": 1.0,
        "recovery": 1.0,
        "services": 1.0,
        "first_write": 1.0,
        "verification": 1.0,
    }
    no_services = drill.phases(timeline | {"services_back_at": None})  # pitr, network
    assert no_services["services"] is None and no_services["first_write"] == 2.0


def test_targets_per_scenario():
    kw = {"rto": 300, "rto_regional": 600, "rto_network": 420, "rpo": 60}
    local = [drill.targets_for(s, **kw, cloud=False) for s in drill.SCENARIOS]
    assert [t.rto_target_seconds for t in local] == [300, 300, 300, 420]  # failover: a node lost
    assert local[1].disruption == "node failure"
    cloud = drill.targets_for("failover", **kw, cloud=True)  # the DR region's replica promoted
    assert (cloud.rto_target_seconds, cloud.disruption) == (600, "regional failure")
    with pytest.raises(ValueError):
        drill.targets_for("meteor", **kw, cloud=False)


def test_verdicts():
    targets = drill.Targets(300, 60, "regional failure", "test")
    ok = [{"table": "t", "match": True}]
    assert (
        drill.verdict(rto=2, rpo=0, targets=targets, integrity=ok, steady_after_ok=True, error=None)["status"]
        == "completed"
    )
    slow = drill.verdict(rto=301, rpo=0, targets=targets, integrity=ok, steady_after_ok=True, error=None)
    assert slow["status"] == "failed" and not slow["rto_met"] and slow["breaches"] == ["RTO 301 s > 300 s"]
    nothing = drill.verdict(
        rto=None, rpo=None, targets=targets, integrity=[], steady_after_ok=False, error="x"
    )
    assert not nothing["integrity_ok"] and len(nothing["breaches"]) == 5
    # an aborted or interrupted run: what was never measured is not measured, not breached
    cut = drill.verdict(
        rto=None,
        rpo=None,
        targets=targets,
        integrity=[],
        steady_after_ok=None,
        error="aborted: x",
        cut_short=True,
    )
    assert (cut["rto_met"], cut["rpo_met"], cut["integrity_ok"]) == (None, None, None)
    assert cut["breaches"] == ["aborted: x"]
    late = drill.verdict(
        rto=400, rpo=None, targets=targets, integrity=ok, steady_after_ok=None, error="i", cut_short=True
    )
    assert (late["rto_met"], late["rpo_met"], late["integrity_ok"]) == (False, None, True)  # measured: judged


def journal(**changes):
    doc = {
        "run_id": "failover-1",
        "scenario": "failover",
        "environment": "local",
        "mode": "local",
        "versions": {"voke": "0.1.0", "postgres": "18.6", "python": "3.11"},
        "node": "vm",
        "started_at": "2024-06-01T12:00:00Z",
        "finished_at": "2024-06-01T12:00:10Z",
        "duration_seconds": 10.0,
        "targets": {"rto_target_seconds": 600, "rpo_target_seconds": 60, "disruption": "regional failure"},
        "timeline": {k: f"2024-06-01T12:00:0{i}Z" for i, k in enumerate(drill.TIMELINE_KEYS)},
        "phases": {"detection": 1.0},
        "rto_seconds": 4.0,
        "rpo_seconds": 0.0,
        "lost_commits": 0,
        "integrity": [{"table": "voke_dr.canary", "rows": 10, "checksum": "ab", "match": True}],
        "steps": [{"name": "fault", "ok": True, "duration_seconds": 0.1}],
        "cleanup": [],
        "steady_state": {"before": {"ok": True, "checks": []}, "after": {"ok": True, "checks": []}},
        "rto_met": True,
        "rpo_met": True,
        "integrity_ok": True,
        "status": "completed",
        "breaches": [],
        "error": None,
        "canary": {"writes": 10, "acked_commits": 10, "failed_writes": 0, "interval_seconds": 0.1},
    }
    doc.update(changes)
    return doc


def test_the_schema_accepts_a_journal_and_names_what_is_wrong():
    assert drill.validate(journal()) == []
    errors = drill.validate(journal(status="great", rto_seconds="fast", timeline={}))
    assert (
        "$.status: 'great' is not one of ['completed', 'failed', 'aborted', 'interrupted', 'running']"
        in errors
    )
    assert "$.rto_seconds: expected number or null, got str" in errors
    assert "$.timeline: missing 'fault_injected_at'" in errors
    assert drill.validate(journal(rto_met=1)) == ["$.rto_met: expected boolean or null, got int"]
    assert drill.validate(journal(rto_met=None, integrity_ok=None, status="aborted")) == []


def test_reports_render_from_a_journal():
    md = markdown(journal())
    assert md.startswith("# DR drill failover-1: failover (regional failure)")
    assert "| RTO | 4 s | 600 s | met |" in md
    page = html_page(journal(status="failed", breaches=["RTO 700 s > 600 s"]))
    assert "<svg" in page and "RTO 700 s &gt; 600 s" in page and "<script" not in page
    assert "## Recovery" not in md  # only a point-in-time restore has recovery evidence
    restore = {
        "name": "drill-1", "port": 5433, "target": "2026-11-26T20:40:00Z",
        "backup": {"label": "base-1", "finished_at": "2026-11-26T20:00:00Z"},
        "stop_point": {"stopped": "before commit of transaction 870", "stop_time": "2026-11-26T20:40:00.1Z",
                       "new_timeline": 3, "wal_first": "000000020000000000000005",
                       "wal_last": "000000020000000000000007", "wal_files": 3},
    }  # fmt: skip
    pitr = markdown(journal(details={"restore": restore}))
    page = html_page(journal(details={"restore": restore}))  # the same evidence as the Markdown
    for text in ("Steady state", "Canary writer", "10 acknowledged", "Phases: detection 1 s",
                 "before commit of transaction 870", "000000020000000000000005"):  # fmt: skip
        assert text in page, text
    for row in (
        "| requested target | 2026-11-26T20:40:00Z |",
        "| stop point | before commit of transaction 870 |",
        "| new timeline | 3 |",
        "| base backup | base-1 |",
        "| WAL replayed | 000000020000000000000005 .. 000000020000000000000007 (3 file(s)) |",
    ):
        assert row in pitr, pitr


def test_reports_say_not_measured_and_escape_what_they_quote():
    cut = journal(status="aborted", rto_met=None, rpo_met=None, integrity_ok=None, integrity=[],
                  rto_seconds=None, lost_commits=None, breaches=["steady state"])  # fmt: skip
    md = markdown(cut)
    assert (
        "| RTO | – | 600 s | not measured |" in md
        and "| integrity | 0 check(s) | all match | not measured |" in md
    )
    assert "acknowledged but lost: not determined" in md and "BREACHED" not in md
    assert "not measured" in html_page(cut) and "BREACHED" not in html_page(cut)
    nasty = '<script>alert("x")</script> & a | b\nsecond line'
    md = markdown(journal(error=nasty, steps=[{"name": nasty, "ok": False, "duration_seconds": 1.0}],
                          integrity=[{"table": nasty, "rows": 1, "checksum": "ab", "match": False, "detail": nasty}]))  # fmt: skip
    assert "<script>" not in md and "\nsecond" not in md
    assert '&lt;script&gt;alert("x")&lt;/script&gt; &amp; a \\| b second line' in md
    import re

    row = next(line for line in md.splitlines() if line.startswith("| &lt;script") and "NO" in line)
    assert len(re.split(r"(?<!\\)\|", row)) == 8  # the integrity row keeps its six cells


def test_trend_compares_with_the_previous_run():
    interrupted = journal(rto_seconds=None, rpo_seconds=None, status="interrupted")
    runs = [journal(rto_seconds=5.0), interrupted, journal(rto_seconds=3.5, status="failed")]
    t = drill.trend(runs)["failover"]
    assert (
        t["runs"] == 3
        and t["measured"] == 2
        and t["rto_change_seconds"] == -1.5
        and t["best_rto_seconds"] == 3.5
        and t["passed"] == 1
    )
    assert t["last_status"] == "failed" and t["last_rto_seconds"] == 3.5  # the newest measured
    # a scenario whose runs never measured an RTO is listed, not left out
    never = drill.trend([interrupted, journal(rto_seconds=None, rpo_seconds=None, status="aborted")])
    assert never["failover"]["runs"] == 2 and never["failover"]["measured"] == 0
    assert never["failover"]["last_status"] == "aborted" and never["failover"]["last_rto_seconds"] is None


def test_core_imports_no_cli_database_or_cloud_library():
    imports = (
        "import voketag_ops.core.wal, voketag_ops.core.dr_checks, voketag_ops.core.drill, "
        "voketag_ops.core.drill_report"
    )
    assert loaded_of(imports, "typer", "rich", "psycopg", "google") == []


# -- table diff -------------------------------------------------------------------------------------------
class DictSide:
    """core.tablediff.Side over a dict of key -> row hash."""

    def __init__(self, rows):
        self.data = dict(rows)
        self.keys = sorted(self.data)

    def _in(self, lo, hi):
        return [k for k in self.keys if (lo is None or k >= lo) and (hi is None or k < hi)]

    def count(self):
        return len(self.data)

    def split(self, lo, hi, rows, parts):
        keys = self._in(lo, hi)
        step = max(2, -(-rows // parts))
        return keys[step::step]

    def sums(self, lo, hi, bounds):
        edges = [lo, *bounds, hi]
        out = []
        for a, b in itertools.pairwise(edges):
            keys = self._in(a, b)
            digest = 0
            for k in keys:
                digest ^= self.data[k]
            out.append((len(keys), digest))
        return out

    def rows(self, lo, hi):
        return {k: self.data[k] for k in self._in(lo, hi)}


@given(
    st.dictionaries(st.integers(0, 5000), st.integers(1, 2**63), max_size=1500),
    st.sets(st.integers(0, 5000), max_size=12),
    st.sets(st.integers(0, 5000), max_size=12),
)
def test_table_diff_finds_exactly_the_differing_keys(base, touched, removed):
    from voketag_ops.core.tablediff import Side, diff_table

    target = dict(base)
    for key in touched:
        target[key] = target.get(key, 7) + 1  # a change, or an insert
    for key in removed:
        target.pop(key, None)
    source_side, target_side = (
        DictSide({(k,): v for k, v in base.items()}),
        DictSide({(k,): v for k, v in target.items()}),
    )
    assert isinstance(source_side, Side)
    found = diff_table("t", source_side, target_side, factor=4, leaf_rows=40, cap=10_000)
    missing = sorted((k,) for k in base.keys() - target.keys())
    extra = sorted((k,) for k in target.keys() - base.keys())
    changed = sorted((k,) for k in base.keys() & target.keys() if base[k] != target[k])
    assert found.missing_in_target == missing
    assert found.extra_in_target == extra
    assert found.changed == changed
    assert found.equal == (not missing and not extra and not changed)
    assert found.differences == len(missing) + len(extra) + len(changed)
    # `dr verify --only-source-keys`: rows only on the target (written after a restore's point) are counted
    only = diff_table(
        "t", source_side, target_side, factor=4, leaf_rows=40, cap=10_000, source_keys_only=True
    )
    assert (only.missing_in_target, only.extra_in_target, only.changed) == (missing, [], changed)
    assert only.extra_ignored == len(extra) and found.extra_ignored == 0
    assert only.equal == (not missing and not changed)


def test_table_diff_caps_the_listed_keys_but_counts_them_all():
    from voketag_ops.core.tablediff import diff_table

    source = DictSide({(k,): k + 1 for k in range(500)})
    target = DictSide({(k,): k + 2 for k in range(500)})
    found = diff_table("t", source, target, factor=4, leaf_rows=20, cap=5)
    assert found.differences == 500 and len(found.changed) == 5 and found.capped


def test_table_diff_raises_a_sides_error_only_once_the_other_side_has_answered():
    # `dr verify` rolls both sessions back after a side's corrupt page, and compares the next
    # table on them: no query of the other side may still be running then.
    import threading

    from voketag_ops.core.tablediff import diff_table

    class Broken(DictSide):
        def count(self):
            raise RuntimeError("unreadable")

    class Slow(DictSide):
        finished = False

        def count(self):
            threading.Event().wait(0.2)
            Slow.finished = True
            return super().count()

    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=2) as pool:  # the caller's pool, as `dr verify` passes
        with pytest.raises(RuntimeError, match="unreadable"):
            diff_table("t", Broken({(1,): 1}), Slow({(1,): 1}), pool=pool)
        assert Slow.finished


def test_a_failback_or_network_drill_that_lost_acknowledged_commits_fails_and_a_failover_is_judged_by_its_rpo():
    kw = {"rto": 300, "rto_regional": 600, "rto_network": 420, "rpo": 60, "cloud": False}
    ok = [{"table": "t", "match": True}]
    for scenario in ("failback", "network"):  # nothing may be lost, whatever the RPO allows
        targets = drill.targets_for(scenario, **kw)
        assert targets.lost_commits_target == 0
        lost = drill.verdict(
            rto=1, rpo=0.2, targets=targets, integrity=ok, steady_after_ok=True, error=None, lost=2
        )
        assert lost["status"] == "failed" and lost["lost_met"] is False and lost["rpo_met"] is True
        assert lost["breaches"] == ["2 acknowledged commit(s) lost > 0"]
        clean = drill.verdict(
            rto=1, rpo=0, targets=targets, integrity=ok, steady_after_ok=True, error=None, lost=0
        )
        assert clean["status"] == "completed" and clean["lost_met"] is True
    failover = drill.targets_for("failover", **kw)
    assert failover.lost_commits_target is None
    within = drill.verdict(
        rto=1, rpo=0.5, targets=failover, integrity=ok, steady_after_ok=True, error=None, lost=7
    )
    assert within["status"] == "completed" and within["lost_met"] is None
    md = markdown(journal(lost_commits=7, rpo_source="wal", rpo_seconds=0.5))
    assert "| lost commits | 7 (the old leader's WAL past the switch point) | – | judged by the RPO |" in md
    failback = journal(
        scenario="failback", lost_commits=2, rpo_source="canary", lost_met=False,
        targets={"rto_target_seconds": 300, "rpo_target_seconds": 60, "lost_commits_target": 0,
                 "disruption": "planned failback"},
    )  # fmt: skip
    assert drill.validate(failback) == []
    assert "| lost commits | 2 (the canary writer) | 0 | BREACHED |" in markdown(failback)
    assert "BREACHED" in html_page(failback) and "judged by the RPO" in html_page(journal())


def test_a_failover_rpo_runs_from_the_last_replayed_commit_to_the_newest_one_past_the_switch_point():
    from datetime import UTC, datetime, timedelta

    kept = datetime(2026, 11, 27, 20, 8, 58, 588036, tzinfo=UTC)
    newest = datetime(2026, 11, 27, 20, 8, 58, 610800, tzinfo=UTC)
    assert drill.rpo_from_wal(newest, kept, newest - timedelta(seconds=0.012)) == 0.023
    assert drill.rpo_from_wal(None, kept) == 0.0  # nothing past the switch point
    assert drill.rpo_from_wal(newest, None, newest - timedelta(seconds=0.012)) == 0.012  # no anchor


def test_pg_waldump_commit_lines_are_read_and_other_records_are_not():
    from datetime import UTC, datetime

    from voketag_ops.core import wal

    line = (
        "rmgr: Transaction len (rec/tot):     34/    34, tx:        812, lsn: 0/030001A0, "
        "prev 0/03000168, desc: COMMIT 2026-11-27 20:08:58.598712 UTC"
    )
    assert wal.commit_at(line) == datetime(2026, 11, 27, 20, 8, 58, 598712, tzinfo=UTC)
    assert wal.commit_at(line.replace("COMMIT", "COMMIT_PREPARED 745:")) is not None
    assert wal.commit_at(line.replace("COMMIT", "ABORT")) is None
    assert wal.commit_at(line.replace(" UTC", " +02")) == datetime(
        2026, 11, 27, 18, 8, 58, 598712, tzinfo=UTC
    )
