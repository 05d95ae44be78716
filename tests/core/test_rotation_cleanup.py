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
    assert plan_cleanup("db-app", versions, {2, 3}, later) == []  # 1, 2, 3: the last 3 usable ones
    month = [
        (a.version, a.action) for a in plan_cleanup("db-app", versions, {2, 3}, later + timedelta(days=30))
    ]
    assert month == [(4, "destroy")]  # a rolled-back version is none to keep (5: nothing newer yet)
    versions.append((6, "enabled", iso(T0 + timedelta(days=4)), None))  # a 4th usable one: 1 goes
    assert [(a.version, a.action) for a in plan_cleanup("db-app", versions, {3, 6}, later)] == [
        (1, "disable")
    ]
