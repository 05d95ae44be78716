"""Configuration: precedence, provenance, errors naming key and file, named environments."""

from __future__ import annotations

import pytest

from voketag_ops.config import load_config
from voketag_ops.errors import ConfigError


def settings_of(result):
    assert result.exit_code == 0, result.stderr
    return result.json["result"]["settings"]


def test_precedence_defaults_file_env_flag(voke, make_environ, tmp_path):
    home = tmp_path / "home"
    (tmp_path / "voke.toml").write_text(
        'log_level = "info"\n[local]\narchive_timeout = 30\nsystem_user = "pgfile"\n'
    )
    env = make_environ(home, VOKE_LOCAL__ARCHIVE_TIMEOUT="20", VOKE_LOG_LEVEL="error")
    shown = settings_of(voke("config", "show", "--json", "--log-level", "debug", environ=env))
    assert shown["local.archive_timeout"] == {"value": 20, "source": "env VOKE_LOCAL__ARCHIVE_TIMEOUT"}
    assert shown["local.system_user"] == {"value": "pgfile", "source": str(tmp_path / "voke.toml")}
    assert shown["log_level"] == {"value": "debug", "source": "flag"}
    assert shown["local.start_timeout"]["source"] == "default"
    assert shown["local.home"] == {"value": str(home), "source": "env VOKE_HOME"}


def test_pyproject_tool_voke_table_is_read(voke, make_environ, tmp_path):
    (tmp_path / "pyproject.toml").write_text(
        '[project]\nname = "x"\n[tool.voke.local]\narchive_timeout = 42\n'
    )
    shown = settings_of(voke("config", "show", "--json", environ=make_environ(tmp_path / "h")))
    assert shown["local.archive_timeout"]["value"] == 42
    assert shown["local.archive_timeout"]["source"].endswith("pyproject.toml")


def test_config_found_in_parent_directory(voke, make_environ, tmp_path):
    (tmp_path / "voke.toml").write_text("[local]\narchive_timeout = 9\n")
    sub = tmp_path / "a" / "b"
    sub.mkdir(parents=True)
    shown = settings_of(voke("config", "show", "--json", environ=make_environ(tmp_path / "h"), cwd=sub))
    assert shown["local.archive_timeout"]["value"] == 9


@pytest.mark.parametrize(
    ("content", "needle"),
    [
        ("[local]\narchive_timout = 5\n", "local.archive_timout: unknown key"),
        ("[local]\narchive_timeout = 'soon'\n", "local.archive_timeout"),
        ("[local]\narchive_timeout = 0\n", "local.archive_timeout"),
        ("log_format = 'xml'\n", "log_format"),
        ("[local\n", "line 1, column"),
        # environment names are written as Google Cloud label values (voke-env=NAME)
        ("[environments.Prod]\nkind = 'gcp'\n", "[environments.Prod]: an environment name"),
        ("[environments.'eu.west']\nkind = 'gcp'\n", "[environments.eu.west]"),
        (f"[environments.{'e' * 64}]\nkind = 'gcp'\n", "at most 63 characters"),
    ],
)
def test_bad_config_is_exit_3_naming_key_and_file(voke, make_environ, tmp_path, content, needle):
    path = tmp_path / "voke.toml"
    path.write_text(content)
    result = voke("env", "status", environ=make_environ(tmp_path / "h"))
    assert result.exit_code == 3
    line = result.stderr.strip()
    assert "\n" not in line and needle in line and str(path) in line
    assert "Traceback" not in result.stderr


def test_bad_env_var_names_the_variable(voke, make_environ, tmp_path):
    result = voke(
        "env", "status", "--json", environ=make_environ(tmp_path / "h", VOKE_LOCAL__START_TIMEOUT="x")
    )
    assert result.exit_code == 3
    assert "env VOKE_LOCAL__START_TIMEOUT: local.start_timeout" in result.json["error"]["message"]


def test_missing_explicit_config_file(voke, make_environ, tmp_path):
    result = voke(
        "config", "show", "--config", str(tmp_path / "nope.toml"), environ=make_environ(tmp_path / "h")
    )
    assert result.exit_code == 3 and "nope.toml" in result.stderr


def test_named_environment_validated_when_used(tmp_path):
    (tmp_path / "voke.toml").write_text(
        '[environments.prod]\nkind = "gcp"\nproject = "voketag-prod"\ninstance = "db"\n'
        '[environments.broken]\nkind = "gcp"\nproject = "p"\n'
    )
    loaded = load_config(environ={}, cwd=tmp_path)  # loading does not validate named environments
    assert loaded.settings.environment("prod").project == "voketag-prod"
    with pytest.raises(ConfigError, match=r"environments\.broken\.instance"):
        loaded.settings.environment("broken")
    with pytest.raises(ConfigError, match="unknown environment 'staging'"):
        loaded.settings.environment("staging")


def test_config_show_redacts_secret_looking_keys(voke, make_environ, tmp_path):
    (tmp_path / "voke.toml").write_text(
        '[environments.prod]\nproject = "p"\ninstance = "i"\napi_token = "tok-123456"\n'
    )
    result = voke("config", "show", "--json", environ=make_environ(tmp_path / "h"))
    assert "tok-123456" not in result.stdout
    assert result.json["result"]["settings"]["environments.prod.api_token"]["value"] == "***"


def test_doctor_reports_unknown_environment(voke, make_environ, tmp_path):
    result = voke("doctor", "--env", "staging", "--json", environ=make_environ(tmp_path / "h"))
    assert result.exit_code == 1
    checks = {c["name"]: c for c in result.json["result"]["checks"]}
    assert checks["environment"]["ok"] is False and "unknown environment" in checks["environment"]["detail"]


def test_doctor_reports_broken_config(voke, make_environ, tmp_path):
    (tmp_path / "voke.toml").write_text("[local]\nbogus = 1\n")
    result = voke("doctor", "--json", environ=make_environ(tmp_path / "h"))
    assert result.exit_code == 1
    assert result.json["result"]["checks"][0]["name"] == "config"
    assert "local.bogus: unknown key" in result.json["result"]["checks"][0]["detail"]


def test_doctor_fails_on_missing_binaries(voke, make_environ, tmp_path):
    empty = tmp_path / "bin"
    empty.mkdir()
    result = voke("doctor", "--json", environ=make_environ(tmp_path / "h", VOKE_PG_BIN=str(empty)))
    assert result.exit_code == 1
    checks = {c["name"]: c for c in result.json["result"]["checks"]}
    assert checks["postgresql"]["ok"] is False and "initdb" in checks["postgresql"]["detail"]


def test_doctor_ok_on_a_fresh_machine(voke, make_environ, tmp_path):
    result = voke("doctor", "--json", environ=make_environ(tmp_path / "h"))
    assert result.exit_code == 0, result.stdout
    names = [c["name"] for c in result.json["result"]["checks"]]
    assert names[:2] == ["config", "postgresql"] and "local environment" in names


def test_a_bad_environment_name_is_blamed_on_the_source_that_has_it(voke, make_environ, tmp_path):
    (tmp_path / "voke.toml").write_text("[environments.prod]\nkind = 'gcp'\n")
    result = voke("env", "status", environ=make_environ(tmp_path / "h", VOKE_ENVIRONMENTS__1PROD__KIND="gcp"))
    line = result.stderr.strip()
    assert result.exit_code == 3 and "VOKE_ENVIRONMENTS__1PROD__KIND" in line, line
    assert "voke.toml" not in line
