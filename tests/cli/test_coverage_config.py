"""The `coverage` section of the configuration: defaults from PRODUCT.md, voke.toml,
[tool.voke.coverage] in pyproject.toml, VOKE_COVERAGE__* variables, validation."""

from __future__ import annotations

import re

import pytest

from voketag_ops.config import load_config
from voketag_ops.errors import ConfigError


def test_defaults_match_the_platform_plan(tmp_path):
    cov = load_config(environ={}, cwd=tmp_path).settings.coverage
    assert cov.target == 80.0 and cov.baseline == 68.0
    assert {name: (s.target, s.baseline) for name, s in cov.services.items()} == {
        "admin-service": (None, 70.0),
        "factory-service": (None, 65.0),
        "blockchain-service": (None, 60.0),
    }
    assert cov.precision is None and cov.rule == "auto" and cov.remap == {}


def test_voke_toml_section(tmp_path):
    (tmp_path / "voke.toml").write_text(
        "[coverage]\ntarget = 85\nprecision = 2\n"
        '[coverage.remap]\n"/app/src/" = ""\n'
        '[coverage.services.api]\npaths = ["api/"]\ntarget = 90\nbaseline = 75.5\n'
    )
    cov = load_config(environ={}, cwd=tmp_path).settings.coverage
    assert cov.target == 85 and cov.precision == 2
    assert cov.remap == {"/app/src/": ""}
    assert list(cov.services) == ["api"]  # a services table replaces the default three
    assert cov.services["api"].paths == ("api/",) and cov.services["api"].target == 90


def test_pyproject_tool_voke_coverage_and_env(tmp_path):
    (tmp_path / "pyproject.toml").write_text('[project]\nname = "x"\n[tool.voke.coverage]\ntarget = 75\n')
    loaded = load_config(environ={"VOKE_COVERAGE__PRECISION": "1"}, cwd=tmp_path)
    assert loaded.settings.coverage.target == 75
    assert loaded.settings.coverage.precision == 1
    assert loaded.source_of("coverage.precision") == "env VOKE_COVERAGE__PRECISION"


@pytest.mark.parametrize(
    ("toml", "key"),
    [
        ("[coverage]\ntarget = 120\n", "coverage.target"),
        ("[coverage]\nfail_under = 80\n", "coverage.fail_under"),
        ('[coverage]\nrule = "sometimes"\n', "coverage.rule"),
        ("[coverage.services.api]\ntarget = -1\n", "coverage.services.api.target"),
    ],
)
def test_invalid_values_name_the_key(tmp_path, toml, key):
    (tmp_path / "voke.toml").write_text(toml)
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load_config(environ={}, cwd=tmp_path)


def test_two_services_giving_one_prefix_are_refused_naming_both_and_where(tmp_path):
    # The longest matching prefix picks a file's service: two as long as each other left it to
    # the order of the tables, and the second service "matched no file" (exit 3, review).
    (tmp_path / "voke.toml").write_text(
        "[coverage.services.b]\n"
        'paths = ["admin_service", "factory_service/", "blockchain_service/"]\n'
        "[coverage.services.a]\n"
        'paths = ["admin_service/"]\n'
    )
    loaded = load_config(environ={}, cwd=tmp_path)  # every other command still runs
    with pytest.raises(ConfigError) as caught:
        loaded.settings.coverage.check()
    assert str(caught.value) == (
        f"{tmp_path / 'voke.toml'}: coverage.services.a.paths: prefix 'admin_service/' is also service "
        "b's ('admin_service'): a file under it would belong to both services b and a (at line 4, column 9)"
    )
    assert caught.value.exit_code == 3


def test_a_default_prefix_shared_by_two_service_names_is_refused(tmp_path):
    # admin-service and admin_service both live in admin_service/ by default
    (tmp_path / "voke.toml").write_text(
        "[coverage.services.admin-service]\n[coverage.services.admin_service]\ntarget = 50\n"
    )
    with pytest.raises(ConfigError, match=re.escape(
        "coverage.services.admin_service: its default prefix 'admin_service/' is also service "
        "admin-service's: a file under it would belong to both services admin-service and admin_service "
        "(at line 2, column 1)"
    )):  # fmt: skip
        load_config(environ={}, cwd=tmp_path).settings.coverage.check()


def test_a_shared_prefix_from_the_environment_names_the_variable(tmp_path):
    environ = {"VOKE_COVERAGE__SERVICES": '{"x": {"paths": ["./a/"]}, "y": {"paths": ["a"]}}'}
    with pytest.raises(ConfigError, match=r"^env VOKE_COVERAGE__SERVICES: coverage\.services\.y\.paths: "):
        load_config(environ=environ, cwd=tmp_path).settings.coverage.check()
    # one service may repeat itself, and a longer prefix of another service is no clash
    (tmp_path / "voke.toml").write_text(
        '[coverage.services.x]\npaths = ["a/", "a"]\n[coverage.services.y]\npaths = ["a/b/"]\n'
    )
    assert load_config(environ={}, cwd=tmp_path).settings.coverage.shared_prefix() is None


def test_a_shared_prefix_refuses_the_coverage_commands_only(voke, tmp_path):
    # A setting only `voke coverage` reads must not stop the scheduled rotations and DR checks
    # after an upgrade (diff review: `rotate status` was exit 3 for it).
    (tmp_path / "voke.toml").write_text(
        '[coverage.services.api]\npaths = ["src/"]\n[coverage.services.web]\npaths = ["src"]\n'
    )
    assert voke("config", "show", "--json").exit_code == 0
    refused = voke("coverage", "report", "coverage.json", "--json")
    assert refused.exit_code == 3, refused.stdout
    assert (
        "coverage.services.web.paths: prefix 'src' is also service api's ('src/')"
        in refused.json["error"]["message"]
    )
