"""Tables on a narrow terminal: every value whole (`output.print_table`), as a table when its
words fit side by side, else one value a line; never a port cut to `63…` or a blank cell."""

from __future__ import annotations

import io
import re

import pytest
from rich.console import Console
from rich.table import Table


def _status_report() -> dict:
    node = {"role": "primary", "running": True, "timeline": 3, "lag_bytes": None}
    return {
        "initialized": True,
        "home": "/var/lib/voke-home-of-the-operations-team",
        "primary": {**node, "name": "primary", "port": 63333},
        "replica": {
            **node,
            "name": "replica",
            "role": "replica",
            "port": 64444,
            "lag_bytes": 1024,
            "lag_seconds": 0.25,
        },
        "archive": {},
        "backups": [],
        "services": [],
        "healthy": True,
    }


def print_table(console: Console, *tables: Table) -> None:
    from voketag_ops.output import print_table

    print_table(console, *tables)


def _lines(render, report, width: int) -> list[str]:
    out = io.StringIO()
    render(Console(file=out, width=width, color_system=None), report)
    return out.getvalue().splitlines()


@pytest.mark.parametrize("width", [80, 50, 40, 30, 20])
def test_env_status_shows_every_port_and_node_name_whole_at_any_width(width):
    from voketag_ops.cli.env_cmd import _render_status

    lines = _lines(_render_status, _status_report(), width)
    text = "\n".join(lines)
    assert max(len(line) for line in lines) <= width, text
    for value in ("63333", "64444", "primary", "replica", "yes", "1024"):
        assert re.search(rf"(^|[\s│:]){value}([\s│]|$)", text, re.M), (value, text)


def test_a_table_that_fits_only_narrowed_keeps_every_word_whole():
    """rich narrows the widest columns first, cutting a short id while a column of prose had
    room to wrap; pinned widths cut no word."""
    table = Table("id", "detail", "port")
    table.add_row("rot-20260101T020000Z-ab12", "the password was stored as a new version and tested", "54321")
    lines = _lines(lambda console, t: print_table(console, t), table, 60)
    text = "\n".join(lines)
    assert max(len(line) for line in lines) <= 60 and "…" not in text, text
    assert "rot-20260101T020000Z-ab12" in text and "54321" in text and "tested" in text


def test_a_table_too_wide_for_any_narrowing_is_printed_one_value_a_line():
    table = Table("node", "role", "port", "", title="nodes")
    table.add_row("primary", "[red]replica[/]", "63333", "pass")
    table.add_row("replica", "primary", "", "FAIL")
    lines = _lines(lambda console, t: print_table(console, t), table, 20)
    assert lines == [
        "nodes",
        "primary",
        "  role: replica",
        "  port: 63333",
        "  pass",
        "replica",
        "  role: primary",
        "  FAIL",
    ]


def test_a_narrower_variant_is_printed_before_falling_back_to_lines():
    whole, narrow = Table("name", "baseline"), Table("name")
    whole.add_row("factory-service", "65")
    narrow.add_row("factory-service")
    assert _lines(lambda console, t: print_table(console, *t), (whole, narrow), 22)[-2:] == [
        "│ factory-service │",
        "└─────────────────┘",
    ]


@pytest.mark.parametrize("encoding", ["ascii", "iso-8859-1"])
def test_columns_stay_in_line_on_a_stdout_that_is_not_utf8(encoding):
    """A name the stream's encoding lacks is written as an escape (\\u5de5) wider than the
    character: it is escaped before rich measures the cell, so the columns after it line up."""
    from datetime import UTC, datetime

    from voketag_ops.cli.audit_cmd import _render_show
    from voketag_ops.cli.ingest_cmd import _render_batches
    from voketag_ops.output import Output

    entry = {"seq": 0, "timestamp": "2026-05-01T00:00:00Z", "event_type": "ingest.load", "actor": "ci",
             "env": "local", "result": "failure", "duration_seconds": 1.0}  # fmt: skip
    names = ["工厂-é😀.csv", "plain.csv", "café.csv"]
    show = {"entries": [{**entry, "target": name} for name in names],
            "env": None, "total": 3, "total_exact": True, "offset": 0, "skipped_lines": []}  # fmt: skip
    batch = {"loaded_at": datetime(2026, 5, 1, tzinfo=UTC), "rows_loaded": 1, "rows_rejected": 0,
             "merkle_root": "ab" * 32, "anchor": "anchored"}  # fmt: skip
    batches = {"batches": [{**batch, "batch_id": i, "file_name": name} for i, name in enumerate(names)]}
    for render, report, after in ((_render_show, show, "failure"), (_render_batches, batches, "anchored")):
        raw = io.BytesIO()
        stdout = io.TextIOWrapper(raw, encoding=encoding)
        Output(stdout=stdout, no_color=True).result(report, render=render)
        stdout.flush()
        rows = [line for line in raw.getvalue().decode(encoding).splitlines() if after in line]
        assert len(rows) == 3 and len({row.index(after) for row in rows}) == 1, "\n".join(rows)
        assert "\\u5de5\\u5382-" in rows[0]
