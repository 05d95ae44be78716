"""How `voke dr` results read at a terminal."""

from __future__ import annotations

from io import StringIO

from rich.console import Console

from voketag_ops.cli.dr_cmd import _render_failover, _render_restore


def test_a_restore_with_no_transaction_since_the_backup_says_so_not_none():
    result = {
        "name": "before-upgrade", "target": "2026-11-27T15:48:24Z", "port": 24000, "duration_seconds": 2.5,
        "stop_point": {"stopped": "recovery target reached", "stop_time": None, "last_transaction_at": None,
                       "new_timeline": 2, "wal_first": "000000010000000000000003", "wal_last": "000000010000000000000004"},
        "backup": {"label": "base-1"}, "conninfo": "host=/x port=24000 dbname=postgres",
    }  # fmt: skip
    out = StringIO()
    _render_restore(Console(file=out, width=300), result)
    assert "last replayed transaction none since the backup;" in out.getvalue(), out.getvalue()
    assert "None" not in out.getvalue()


def _failover(steps, **extra):
    report = {"steps": steps, "new_leader": "replica", "duration_seconds": 3.2, "next": "failback", **extra}
    out = StringIO()
    _render_failover(Console(file=out, width=300), report)
    return out.getvalue()


def test_a_failover_says_what_the_promoted_standby_had_replayed_on_its_promote_line():
    # Found by review: the runbook says the report tells what the standby had replayed (what
    # past it is lost); only --json did.
    replayed = {"replayed_lsn": "0/3000148", "last_replayed_commit": "2026-11-27T15:48:24.5Z"}
    step = {"ok": True, "duration_seconds": 0.4}
    steps = [{**step, "name": "fence primary"}, {**step, "name": "promote replica", "detail": replayed}]
    lines = _failover(steps, **replayed).splitlines()
    assert lines[1] == (
        "ok   promote replica (0.40 s): it had replayed to LSN 0/3000148, last commit 2026-11-27T15:48:24.5Z"
    )
    assert lines[0] == "ok   fence primary (0.40 s)"
    resumed = _failover([{**step, "name": "repoint services"}], **replayed)  # promoted by the run cut short
    assert resumed.startswith("replica was promoted before this run: it had replayed to LSN 0/3000148,")
    cloud = _failover(steps, kind="cloudsql", replayed_lsn=None, last_replayed_commit=None)
    assert (
        "promote replica (0.40 s): what it had replayed is not known (Cloud SQL does not report it)" in cloud
    )
