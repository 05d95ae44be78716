"""`voke dr` against each PostgreSQL it supports that is installed here: the embedded wheel's
(18) and a system PostgreSQL 15 (`local.pg_bin`), skipped where /usr/lib/postgresql/15/bin is
absent. Each runs its own small environment (no replica)."""

from __future__ import annotations

from pathlib import Path

import pytest

from voketag_ops.adapters.local import dr
from voketag_ops.adapters.local.environment import LocalEnvironment
from voketag_ops.config import LocalSettings
from voketag_ops.core import wal
from voketag_ops.core.dr_checks import parse_iso

SYSTEM_PG15 = Path("/usr/lib/postgresql/15/bin")


@pytest.fixture(
    scope="module",
    params=[
        pytest.param(None, id="embedded"),
        pytest.param(
            SYSTEM_PG15,
            id="pg15",
            marks=pytest.mark.skipif(not (SYSTEM_PG15 / "postgres").exists(), reason="no PostgreSQL 15 here"),
        ),
    ],
)
def env(request, tmp_path_factory):
    home = tmp_path_factory.mktemp("dr-pg") / "home"
    environment = LocalEnvironment(
        LocalSettings(home=home, pg_bin=request.param, replica=False, archive_timeout=5)
    )
    try:
        environment.up()
        yield environment
    finally:
        environment.destroy()


def test_a_restore_just_before_now_seals_the_archive_and_counts_the_heartbeat(env):
    # After the seal's WAL switch the leader writes at a segment boundary, where PostgreSQL up to
    # 16 names the segment before in pg_walfile_name(): the heartbeat's segment counted as not
    # yet written, so on a fresh environment a restore to a moment ago was "nothing is recoverable".
    backup = env.backups()[-1]
    now = dr.utcnow()
    finished = parse_iso(backup.finished_at)
    assert finished is not None
    target = finished + (now - finished) / 2
    plan = dr.plan_restore(env, target, "x", seal=True, now=now)
    assert plan.backup.label == backup.label and plan.sealed_at is not None
    assert plan.window.latest_archived is not None and plan.window.latest_archived >= plan.sealed_at
    lw = dr.leader_wal(env, env.primary())
    assert lw.current_lsn is not None
    assert lw.current_segno == wal.segno_of(wal.parse_lsn(lw.current_lsn), lw.segment_size)
