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
