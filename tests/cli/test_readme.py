"""The README's commands: the test command is exactly what CI runs, and every `voke`
command in it parses against the real CLI (commands and flags exist); its configuration
reference states the limits the settings enforce."""

from __future__ import annotations

import re
import typing
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydantic import BaseModel
from pydantic.fields import FieldInfo

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


def test_every_environment_variable_the_code_reads_by_name_is_in_the_readme():
    """`CI` turned prompts off unsaid: a variable read anywhere in the source is in the README."""
    read = re.compile(r"""(?:environ|env_map|getenv)(?:\.get)?[\[(]\s*["']([A-Z][A-Z0-9_]*)["']""")
    names = {n for f in (ROOT / "src").rglob("*.py") for n in read.findall(f.read_text())}
    assert {"CI", "VOKE_CONFIG", "NO_COLOR"} <= names, names
    for name in sorted(names):
        assert re.search(rf"[`$]{name}\b", README), name


def test_the_readme_names_every_api_an_endpoint_can_be_set_for():
    from voketag_ops.adapters.gcp.catalog import ENDPOINT_APIS

    keys = re.search(r"^#   keys: (.*);$", README, re.M)
    assert keys is not None, "the README's endpoints line lists no keys"
    assert keys.group(1).split(", ") == list(ENDPOINT_APIS)


def readme_config_lines(readme: str) -> dict[str, list[str]]:
    """Each configuration key the README sets -> the lines that set it: `key = value  # ...` in a
    ```toml block (under its [table]) or a `| `section.key` | default | meaning |` row."""
    found: dict[str, list[str]] = {}
    for block in re.findall(r"```toml\n(.*?)```", readme, re.S):
        table = ""
        for line in block.splitlines():
            if header := re.match(r"\[([\w.-]+)\]", line):
                table = header.group(1)
            elif key := re.match(r"(\w+)\s*=", line):
                found.setdefault(f"{table}.{key.group(1)}".lstrip("."), []).append(line)
    for row in re.finditer(r"^\| `([\w.]+)` \|.*$", readme, re.M):
        found.setdefault(row.group(1), []).append(row.group(0))
    return found


def stated_bound(field: FieldInfo) -> str | None:
    """How the README states FIELD's limit (`5..3600`, `more than 0, at most 60`, `at least 10`,
    `1..63 characters`), or None when it has none worth stating (only not negative)."""
    names = ("ge", "gt", "le", "min_length", "max_length")
    limits = {name: getattr(m, name) for m in field.metadata for name in names if hasattr(m, name)}
    if field.annotation is str:
        return (
            f"{limits.get('min_length', 0)}..{limits['max_length']} characters"
            if "max_length" in limits
            else None
        )
    if "max_length" in limits or limits in ({}, {"ge": 0}):  # (a list's length: said in words)
        return None
    if "ge" in limits and "le" in limits:
        return f"{limits['ge']}..{limits['le']}"
    low = f"at least {limits['ge']}" if "ge" in limits else f"more than {limits['gt']}"
    return f"{low}, at most {limits['le']}" if "le" in limits else low


def bounded_keys(model: type[BaseModel], prefix: str = "") -> Iterator[tuple[str, str]]:
    """(key, stated bound) of every limited setting of MODEL; NAME stands for a table's name."""
    for name, field in model.model_fields.items():
        if (bound := stated_bound(field)) is not None:
            yield prefix + name, bound
        kind, table = field.annotation, name
        if typing.get_origin(kind) is dict:
            kind, table = typing.get_args(kind)[1], f"{name}.NAME"
        if isinstance(kind, type) and issubclass(kind, BaseModel):
            yield from bounded_keys(kind, f"{prefix}{table}.")


def test_the_readme_states_every_configuration_limit():
    from voketag_ops.config import GcpEnvironment, Settings

    lines = readme_config_lines(README)
    keys = [*bounded_keys(Settings), *bounded_keys(GcpEnvironment, "environments.NAME.")]
    assert len(keys) > 30, keys
    for key, bound in keys:
        pattern = re.compile(re.escape(key).replace("NAME", r"[\w-]+"))
        setting = [line for k, found in lines.items() if pattern.fullmatch(k) for line in found]
        assert setting, f"{key} ({bound}) is not in the README's configuration reference"
        for line in setting:
            assert re.search(rf"(?<![\d.]){re.escape(bound)}(?![\d.])", line), f"{key}: {bound}: {line}"
