"""`voke config`: the effective configuration and where each value came from."""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, Any

import typer

from voketag_ops.cli.common import use
from voketag_ops.output import print_table

if TYPE_CHECKING:
    from rich.console import Console

app = typer.Typer(help="Show the effective configuration.", no_args_is_help=True)


@app.command("show")
def show(ctx: typer.Context) -> None:
    """Print every effective setting (secrets redacted) and its source."""
    from voketag_ops.config import effective_items

    env = use(ctx)
    loaded = env.loaded
    items = effective_items(loaded)
    if loaded.settings.local.home is None:  # the directory in use, not "unset"
        from voketag_ops.adapters.local.environment import resolve_home
        from voketag_ops.errors import ConfigError

        with contextlib.suppress(ConfigError):  # none can be named (no HOME): shown unset
            home = str(resolve_home(None))
            items = [(k, home if k == "local.home" else v, src) for k, v, src in items]
    env.out.result(
        {
            "file": str(loaded.file) if loaded.file else None,
            "settings": {key: {"value": value, "source": source} for key, value, source in items},
        },
        render=_render,
    )


def _render(console: Console, report: dict[str, Any]) -> None:
    from rich.markup import escape
    from rich.table import Table

    table = Table(title=f"configuration ({report['file'] or 'no file: defaults'})", title_justify="left")
    table.add_column("key")
    table.add_column("value")
    table.add_column("source")
    for key, item in report["settings"].items():
        value = repr(item["value"]) if not isinstance(item["value"], str) else item["value"]
        table.add_row(key, escape(value), escape(item["source"]))
    print_table(console, table)
