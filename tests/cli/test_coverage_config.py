"""The `coverage` section of the configuration: defaults from PRODUCT.md, voke.toml,
[tool.voke.coverage] in pyproject.toml, VOKE_COVERAGE__* variables, validation."""

from __future__ import annotations

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
