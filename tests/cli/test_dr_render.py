"""How `voke dr` results read at a terminal."""

from __future__ import annotations

from io import StringIO

from rich.console import Console

from voketag_ops.cli.dr_cmd import _render_restore


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
