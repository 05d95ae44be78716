"""What voke says when a PostgreSQL server of the local environment fails."""

from __future__ import annotations

from voketag_ops.adapters.local.postgres import _fatal_line

# A server that could not start on a full disk (pg_ctl's polling refused meanwhile).
FULL_DISK_LOG = """\
2026-11-27 15:00:00.000 UTC [1234] LOG:  starting PostgreSQL 16.4 on x86_64-pc-linux-gnu
2026-11-27 15:00:00.001 UTC [1234] LOG:  listening on Unix socket "/home/voke/pg/run/.s.PGSQL.5433"
2026-11-27 15:00:00.002 UTC [1236] FATAL:  the database system is starting up
2026-11-27 15:00:00.003 UTC [1234] FATAL:  could not write lock file "postmaster.pid": No space left on device
2026-11-27 15:00:00.004 UTC [1237] FATAL:  the database system is starting up
2026-11-27 15:00:00.005 UTC [1234] LOG:  database system is shut down
"""


def test_a_failed_start_names_the_fatal_line_not_the_shutdown_after_it():
    # It always said "database system is shut down", whatever had stopped the server.
    assert _fatal_line(FULL_DISK_LOG).endswith(
        'FATAL:  could not write lock file "postmaster.pid": No space left on device'
    )
    panic = FULL_DISK_LOG.replace(
        "[1234] FATAL:  could not write lock file", "[1234] PANIC:  could not write"
    )
    assert "PANIC:  could not write" in _fatal_line(panic)


def test_a_log_without_a_fatal_line_gives_its_last_line():
    assert _fatal_line("LOG:  one\nLOG:  two\n\n") == "LOG:  two"
    assert _fatal_line("") == ""


def test_a_client_tools_error_lines_read_alike_on_every_version():
    # PostgreSQL 13 and 14 print pg_waldump's and pg_verifybackup's errors as `fatal:`, 15 on as
    # `error:`: split on `error:` alone, a failover drill on 13/14 never found the end of the WAL.
    from voketag_ops.adapters.local.postgres import tool_errors, tool_message
    from voketag_ops.core.wal import WALDUMP_END

    for prefix in ("error", "fatal"):
        stderr = f"pg_waldump: {prefix}: could not find a valid record after 0/13065CB8\n"
        assert tool_errors(stderr) == ["could not find a valid record after 0/13065CB8"]
        assert tool_errors(stderr)[0].startswith(WALDUMP_END)
        assert tool_message(f'pg_verifybackup: {prefix}: "base/1" has size 0 on disk') == (
            '"base/1" has size 0 on disk'
        )
    assert tool_errors("rmgr: Transaction len (rec/tot): 34/34\n") == []
    assert tool_message("  backup successfully verified  ") == "backup successfully verified"
