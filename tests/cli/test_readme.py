"""The README's commands: the test command is exactly what CI runs, and every `voke`
command in it parses against the real CLI (commands and flags exist)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from voketag_ops.testing.cli import check_values, parse, voke_commands

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text()


def test_ci_runs_exactly_the_readme_test_command():
    test_command = re.findall(r"```bash\n(.*?)```", README, re.S)[1].strip()
    ci_lines = [ln for ln in (ROOT / ".ci" / "run").read_text().splitlines() if ln and not ln.startswith("#")]
    assert test_command in ci_lines


def test_main_command_ends_in_the_drills():
    main = re.findall(r"```bash\n(.*?)```", README, re.S)[0].strip()
    assert main.endswith("voke drill run all --yes")


@pytest.mark.parametrize(
    ("where", "args"), voke_commands(README), ids=lambda v: v if isinstance(v, str) else ""
)
def test_every_readme_command_parses(where, args, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the example's input files exist, as they would for its reader
    for arg in args:
        if not arg.startswith("-") and re.fullmatch(r"[\w.-]+\.(csv|json|xml|txt|md)", arg):
            (tmp_path / arg).write_text("")
    check_values(parse(args))  # and the durations and times the command parses itself


def test_every_environment_variable_voke_reads_is_in_the_readme():
    from voketag_ops.config import ENV_VARS, OTHER_ENV_VARS

    for name in (*ENV_VARS, *OTHER_ENV_VARS):
        assert f"`{name}" in README, name
