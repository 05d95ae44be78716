"""The runbooks cannot drift from the tool: every `voke` command in their bash blocks
parses against the real CLI (Click context parsing, nothing is executed)."""

from __future__ import annotations

import re
import shlex
from pathlib import Path
from typing import Any

import pytest
import typer

from voketag_ops.cli._click import ClickUsageError
from voketag_ops.cli.app import app, hoist_global_flags

RUNBOOKS = Path(__file__).resolve().parents[2] / "runbooks"
FENCE = re.compile(r"^```bash\n(.*?)^```", re.M | re.S)


def voke_commands() -> list[tuple[str, list[str]]]:
    found = []
    for path in sorted(RUNBOOKS.glob("*.md")):
        for block in FENCE.findall(path.read_text()):
            for line in block.replace("\\\n", " ").splitlines():
                for part in re.split(r"\s*(?:&&|\|\||;|\|)\s*", line.strip()):
                    words = shlex.split(part, comments=True)
                    if words and words[0] == "voke":
                        found.append((f"{path.name}: {part}", words[1:]))
    return found


def parse(args: list[str]) -> Any:
    """Resolve sub-commands and parse every option and argument, as Click would before invoking."""
    command = typer.main.get_command(app)
    ctx = command.make_context("voke", hoist_global_flags(args), resilient_parsing=False)
    while hasattr(ctx.command, "resolve_command"):  # a group (Click's or Typer's)
        rest = [*ctx._protected_args, *ctx.args]
        assert rest, f"{ctx.command_path} needs a sub-command"
        name, sub, remaining = ctx.command.resolve_command(ctx, rest)
        assert sub is not None, f"unknown command {rest[0]!r} under {ctx.command_path}"
        ctx = sub.make_context(name, remaining, parent=ctx, resilient_parsing=False)
    return ctx


COMMANDS = voke_commands()


def test_the_four_runbooks_exist_and_hold_commands():
    names = {p.stem for p in RUNBOOKS.glob("*.md")} - {"README"}
    assert names == {"database-corruption", "regional-failure", "network-outage", "partial-degradation"}
    assert len(COMMANDS) >= 20
    for name in names:
        text = (RUNBOOKS / f"{name}.md").read_text()
        for section in ("## Detect", "## Decide", "## Steps", "## Verify", "## Roll back"):
            assert section in text, (name, section)


@pytest.mark.parametrize(("where", "args"), COMMANDS, ids=[w for w, _ in COMMANDS])
def test_every_runbook_command_parses_against_the_cli(where, args):
    ctx = parse(args)
    assert ctx.command.callback is not None, where


def test_a_drifted_command_would_be_caught():
    with pytest.raises(ClickUsageError):
        parse(["dr", "restore", "--to", "-5m", "--no-such-flag"])
    with pytest.raises((ClickUsageError, AssertionError)):
        parse(["dr", "teleport"])
    with pytest.raises(ClickUsageError):
        parse(["dr", "restore", "--name", "x"])  # --to is required


def test_runbook_list_and_show(voke, make_environ, tmp_path):
    environ = make_environ(tmp_path / "home")
    listed = voke("dr", "runbook", "list", "--json", environ=environ)
    assert listed.exit_code == 0
    assert [r["name"] for r in listed.json["result"]["runbooks"]] == [
        "database-corruption",
        "network-outage",
        "partial-degradation",
        "regional-failure",
    ]
    shown = voke("dr", "runbook", "show", "regional-failure", environ=environ)
    assert shown.exit_code == 0 and shown.stdout.startswith("# Regional failure")
    assert voke("dr", "runbook", "show", "meteor", environ=environ).exit_code == 2
