"""The cleanup plan (core/rotation.py `plan_cleanup`): the last 3 usable versions stay enabled."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from voketag_ops.core.rotation import plan_cleanup
from voketag_ops.core.times import iso

T0 = datetime(2027, 3, 1, 2, 0, tzinfo=UTC)


def test_versions_a_rollback_disabled_do_not_count_among_the_three_kept():
    # 1-3 rotated in a day apart (3 current, 2 previous); 4 and 5 were rolled back (disabled).
    versions = [(n, "enabled", iso(T0 + timedelta(days=n)), None) for n in (1, 2, 3)]
    versions += [(n, "disabled", iso(T0 + timedelta(days=3, hours=n)), iso(T0 + timedelta(days=3, hours=n)))
                 for n in (4, 5)]  # fmt: skip
    later = T0 + timedelta(days=5)
    assert plan_cleanup("db-app", versions, {2, 3}, later, current=3) == []  # 1, 2, 3: the last 3 usable ones
    month = [
        (a.version, a.action)
        for a in plan_cleanup("db-app", versions, {2, 3}, later + timedelta(days=30), current=3)
    ]
    assert month == [(4, "destroy")]  # a rolled-back version is none to keep (5: nothing newer yet)
    versions.append((6, "enabled", iso(T0 + timedelta(days=4)), None))  # a 4th usable one: 1 goes
    assert [(a.version, a.action) for a in plan_cleanup("db-app", versions, {3, 6}, later, current=6)] == [
        (1, "disable")
    ]


def test_a_rolled_back_version_supersedes_nothing():
    # 2 current since day 1; 3 made on day 10 and rolled back (2 current again); 4, 5 and 6 made
    # on day 11 from 23:00 on, 6 current and 5 previous. 2 was superseded when 4 became current
    # and stayed, not when 3 was made: a day after 3 it has been superseded for an hour only.
    day10 = T0 + timedelta(days=10)
    versions = [
        (1, "enabled", iso(T0), None),
        (2, "enabled", iso(T0 + timedelta(days=1)), None),
        (3, "disabled", iso(day10), iso(day10 + timedelta(minutes=5))),
        (4, "enabled", iso(day10 + timedelta(hours=23)), None),
        (5, "enabled", iso(day10 + timedelta(hours=23, minutes=30)), None),
        (6, "enabled", iso(day10 + timedelta(hours=23, minutes=45)), None),
    ]

    def plan(now: datetime) -> list[tuple[int, str]]:
        return [(a.version, a.action) for a in plan_cleanup("db-app", versions, {5, 6}, now, current=6)]

    assert plan(day10 + timedelta(hours=24, minutes=1)) == [(1, "disable")]  # 2 not yet
    two_days = plan_cleanup("db-app", versions, {5, 6}, day10 + timedelta(hours=47), current=6)
    assert [(a.version, a.reason) for a in two_days][1] == (
        2,
        f"superseded since {iso(day10 + timedelta(hours=23))}",
    )
    assert plan(day10 + timedelta(days=31)) == [(1, "disable"), (2, "disable"), (3, "destroy")]


def test_only_current_and_the_enabled_versions_before_it_supersede():
    # 3 and 4 were stored after current 2 and never became current (orphans): 3 is superseded by
    # nothing, 1 by 2; with no current at all nothing is superseded.
    versions = [(n, "enabled", iso(T0 + timedelta(days=n)), None) for n in (1, 2, 3, 4)]
    later = T0 + timedelta(days=30)
    planned = plan_cleanup("db-app", versions, {2}, later, current=2, keep=0)
    assert [(a.version, a.reason) for a in planned] == [
        (1, f"superseded since {iso(T0 + timedelta(days=2))}")
    ]
    assert plan_cleanup("db-app", versions, set(), later, current=None, keep=0) == []
