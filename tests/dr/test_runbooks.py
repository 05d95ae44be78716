"""The runbooks cannot drift from the tool: every `voke` command in their bash blocks and
their prose parses against the real CLI (Click context parsing, and voke's own parsers for
durations and times; nothing is executed)."""

from __future__ import annotations

import io
import re
from pathlib import Path

import pytest

from voketag_ops.cli._click import ClickUsageError
from voketag_ops.testing import cli as testing_cli

RUNBOOKS = Path(__file__).resolve().parents[2] / "runbooks"


def voke_commands() -> list[tuple[str, list[str]]]:
    """The commands of the bash blocks, and those quoted inline in the prose."""
    found = []
    for path in sorted(RUNBOOKS.glob("*.md")):
        found += testing_cli.voke_commands(path.read_text(), label=f"{path.name}: ")
        found += testing_cli.inline_voke_commands(path.read_text(), label=f"{path.name}: ")
    return found


parse = testing_cli.parse


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
    testing_cli.check_values(ctx)  # durations and times the command parses itself


def test_a_drifted_value_or_inline_command_would_be_caught():
    with pytest.raises(ValueError, match="--max-lag: not a duration"):
        testing_cli.check_values(parse(["dr", "check", "--max-lag", "sixty"]))
    with pytest.raises(ValueError, match=r"--to: .* has no UTC offset"):
        testing_cli.check_values(parse(["dr", "restore", "--to", "2026-11-26T03:56:39", "--yes"]))
    prose = "Then run `voke dr failback --no-switchback --yes`; see `voke drill` and `voke ...`.\n"
    [(_where, args)] = testing_cli.inline_voke_commands(prose)
    assert args == ["dr", "failback", "--no-switchback", "--yes"]
    with pytest.raises(ClickUsageError):
        parse(args)


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


def test_runbook_show_into_a_pipe_is_the_markdown_even_with_force_color(
    voke, make_environ, tmp_path, monkeypatch
):
    # `voke dr runbook show X > runbook.md` in a CI job that sets FORCE_COLOR wrote rich's rendering.
    monkeypatch.setenv("FORCE_COLOR", "1")
    shown = voke("dr", "runbook", "show", "regional-failure", environ=make_environ(tmp_path / "home"))
    assert shown.exit_code == 0 and shown.stdout.startswith("# Regional failure"), shown.stdout[:200]


def _code_lines(text: str) -> list[str]:
    """Every line of every fenced code block."""
    return [
        line
        for block in re.findall(r"^```[^\n]*\n(.*?)^```", text, re.M | re.S)
        for line in block.splitlines()
    ]


@pytest.mark.parametrize("name", sorted(p.stem for p in RUNBOOKS.glob("*.md") if p.stem != "README"))
def test_runbook_show_on_a_narrow_terminal_prints_each_code_line_whole_and_names_linked_runbooks(
    name, make_environ, tmp_path, monkeypatch
):
    # rich wrapped `voke dr verify ... --table ingest.tags` onto two lines (pasted, the second
    # failed) and padded the lines, so a `\` continuation had spaces after it.
    from voketag_ops.cli.app import run

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    monkeypatch.setenv("COLUMNS", "60")
    out = Terminal()
    environ = make_environ(tmp_path / "home")
    assert (
        run(["dr", "runbook", "show", name], stdout=out, stderr=Terminal(), environ=environ, cwd=tmp_path)
        == 0
    )
    shown = re.sub(r"\x1b\[[0-9;]*m", "", out.getvalue()).splitlines()
    text = (RUNBOOKS / f"{name}.md").read_text()
    code = _code_lines(text)
    assert code
    for line in code:
        assert line in shown, line
    prose = " ".join(" ".join(shown).split())  # a paragraph wraps where the width says
    for linked in re.findall(r"\]\(([\w-]+)\.md\)", text):  # what to run to read it
        assert f"(voke dr runbook show {linked})" in prose, linked
    piped = io.StringIO()
    assert (
        run(
            ["dr", "runbook", "show", name], stdout=piped, stderr=io.StringIO(), environ=environ, cwd=tmp_path
        )
        == 0
    )
    assert piped.getvalue() == text  # into a file or a pipe: the Markdown itself, byte for byte


def test_the_regional_runbook_names_the_rto_its_local_and_cloud_drills_are_judged_against():
    # The runbook promised "RTO 10 min, rehearsed by `voke drill run failover`" while the local
    # drill, a node failure, is judged against the 5-minute RTO (docs/decisions.md).
    from voketag_ops.config import Settings
    from voketag_ops.core.drill import targets_for

    dr = Settings().dr
    rtos = {
        "rto": dr.rto_seconds,
        "rto_regional": dr.rto_regional_seconds,
        "rto_network": dr.rto_network_seconds,
    }
    local, cloud = (targets_for("failover", **rtos, rpo=dr.rpo_seconds, cloud=c) for c in (False, True))
    rehearse = (RUNBOOKS / "regional-failure.md").read_text().split("## Rehearse", 1)[1].split("\n## ", 1)[0]
    prose = " ".join(rehearse.split())
    assert f"a {local.disruption}, judged against the {local.rto_target_seconds / 60:g}-minute RTO" in prose
    assert (
        f"The regional {cloud.rto_target_seconds / 60:g}-minute RTO" in prose
        and "cloud failover drill" in prose
    )
    (row,) = [
        line for line in (RUNBOOKS / "README.md").read_text().splitlines() if "[regional-failure]" in line
    ]
    assert f"judged against {local.rto_target_seconds / 60:g} min" in row
    assert f"judged against {cloud.rto_target_seconds / 60:g} min" in row


def test_the_runbooks_ship_with_the_package():
    # `voke dr runbook` reads them from the installed package (a wheel has no checkout around it).
    import voketag_ops
    from voketag_ops.config import Settings
    from voketag_ops.workflows.dr import runbooks_dir

    shipped = runbooks_dir(Settings())
    assert shipped == Path(voketag_ops.__file__).resolve().parent / "runbooks"
    assert sorted(p.name for p in shipped.glob("*.md")) == sorted(p.name for p in RUNBOOKS.glob("*.md"))
    assert RUNBOOKS.resolve() == shipped  # the checkout's runbooks/ is a link to them


def _leader_writable(leader: dict) -> str:
    from datetime import UTC, datetime

    from voketag_ops.core.dr_checks import Thresholds, judge

    limits = Thresholds(
        max_backup_age_seconds=1, max_lag_seconds=1, min_pitr_window_seconds=0, archive_stale_seconds=1
    )
    checks = judge({"leader": leader}, limits, now=datetime.now(UTC))
    return next(c.message for c in checks if c.name == "leader_writable")


def test_the_regional_runbook_quotes_what_dr_check_says_of_a_lost_primary_and_which_runbook_it_offers():
    # Found by review: `dr check`, which cron watches, named no fix for a lost or frozen leader
    # (`doctor` and `env up` did); it now says what `doctor` says and what to run.
    from voketag_ops.adapters.local.dr import leader_trouble

    lost = {
        "name": "primary",
        "role": "stopped",
        "running": False,
        "pid": None,
        "error": None,
        "stopped_pids": [],
    }

    def said(node: dict, **kw) -> str:
        trouble, remedy = leader_trouble(node, **{"fenced": set(), "pending": None, "standby": True, **kw})
        return _leader_writable(dict(node, trouble=trouble, remedy=remedy))

    text = " ".join((RUNBOOKS / "regional-failure.md").read_text().split())
    assert f"Expected on a lost primary: ``FAIL leader_writable: {said(lost)}``" in text
    # (a lost primary without a standby has nothing to fail over to)
    assert said(lost, standby=False) == "leader primary not running; bring it back with `voke env up`"
    past = {"operation": "failover", "done": ["planned", "fenced"]}  # `env up` refuses it: the resume
    assert said(lost, fenced={"primary"}, pending=past) == (
        "leader primary not running: fenced (a failover was interrupted); "
        "finish the failover with `voke dr failover --yes`"
    )
    # A frozen one is resumed, not failed over from: the network-outage runbook waits for it.
    frozen = dict(
        lost, role="unknown", pid=42, error="its process(es) 42 43 are stopped", stopped_pids=[42, 43]
    )
    assert said(frozen) == (
        "leader primary (pid 42) does not answer: its process(es) 42 43 are stopped; "
        "resume them if nothing holds them on purpose: `kill -CONT 42 43`"
    )
    cloud = {"name": "voketag-db", "role": "primary", "running": False, "state": "SUSPENDED"}  # unchanged
    assert _leader_writable(cloud) == "leader voketag-db is not writable (role primary)"
