"""The frame every command shares: exit codes, the JSON envelope, usage errors,
internal errors, start-up imports, colour."""

from __future__ import annotations

import io
import json
import re
import subprocess
import sys
from typing import Any

import pytest

from voketag_ops.errors import (
    BackendError,
    ConfigError,
    ExitCode,
    InputError,
    Interrupted,
    NeedsOperatorError,
    PreconditionError,
    RolledBackError,
    UsageError,
    VokeError,
)
from voketag_ops.testing.imports import loaded_of


def test_exit_code_table_matches_product():
    assert {c.name: int(c) for c in ExitCode} == {
        "OK": 0,
        "NO": 1,
        "USAGE": 2,
        "CONFIG": 3,
        "BACKEND": 4,
        "PRECONDITION": 5,
        "ROLLED_BACK": 6,
        "NEEDS_OPERATOR": 7,
        "INTERNAL": 70,
        "INTERRUPTED": 130,
    }


@pytest.mark.parametrize(
    ("error", "code"),
    [
        (UsageError, 2),
        (InputError, 1),
        (ConfigError, 3),
        (BackendError, 4),
        (PreconditionError, 5),
        (RolledBackError, 6),
        (NeedsOperatorError, 7),
        (Interrupted, 130),
        (VokeError, 70),
    ],
)
def test_each_error_maps_to_its_exit_code_and_envelope(voke, monkeypatch, error, code):
    from voketag_ops.adapters.local import environment

    def boom(self):
        raise error("it went wrong")

    monkeypatch.setattr(environment.LocalEnvironment, "status", boom)
    result = voke("env", "status", "--json")
    assert result.exit_code == code
    doc = result.json
    assert doc == {
        "ok": False,
        "command": "env status",
        "error": {"type": error.__name__, "message": "it went wrong", "exit_code": code},
    }
    human = voke("env", "status")
    assert human.exit_code == code
    assert human.stdout == ""
    assert human.stderr.strip() == "error: it went wrong"


def test_version_and_help_list_groups(voke):
    assert voke("--version").stdout == "voke 0.1.0\n"
    out = voke("--help").stdout
    for group in ("env", "config", "doctor"):
        assert group in out


def test_every_group_help_names_all_its_commands():
    # `voke --help` (and a group's) lists each group by its help: one listing some of the verbs
    # (`audit`: "show, export, verify") read as if the others did not exist.
    import typer

    from voketag_ops.cli.app import app

    root = typer.main.get_command(app)
    ctx = root.make_context("voke", ["--help"], resilient_parsing=True)
    groups = [(name, root.get_command(ctx, name)) for name in root.list_commands(ctx)]
    checked = 0
    for path, group in groups:
        if not hasattr(group, "list_commands"):
            continue
        checked += 1
        names = group.list_commands(ctx)
        groups += [(f"{path} {name}", group.get_command(ctx, name)) for name in names]
        shown = group.get_short_help_str(1000)
        missing = [n for n in names if not re.search(rf"(?<![\w-]){re.escape(n)}(?![\w-])", shown, re.I)]
        assert not missing, f"voke {path}: {shown!r} does not name {', '.join(missing)}"
    assert checked >= 12


def test_short_version_and_a_global_flag_without_its_value(voke):
    assert voke("-V").stdout == "voke 0.1.0\n"
    dangling = voke("config", "show", "--json", "--env")  # not "no such command 'show'"
    assert dangling.exit_code == 2 and dangling.json["error"]["message"] == "option --env requires a value"
    assert dangling.json["command"] == "config show"
    for flag in ("--config", "--env"):  # followed by another global flag: not its value either
        swallowed = voke("env", "status", flag, "--json")
        assert (
            swallowed.exit_code == 2
            and swallowed.json["error"]["message"] == f"option {flag} requires a value"
        )


def test_a_command_option_without_its_value_does_not_take_the_next_flag(voke, make_environ, tmp_path):
    # `--label --dry-run` taken as a label named "--dry-run" would make the dry run a real change.
    environ = make_environ(tmp_path / "home", VOKE_CHAIN__STORE="file")
    root = "ab" * 32
    for args in (
        ("--label", "--json", "--dry-run"),
        ("--label", "--dry-run", "--json"),
        ("--json", "--label"),
    ):
        refused = voke("chain", "anchor", "request", root, *args, environ=environ)
        assert refused.exit_code == 2, args
        assert refused.json["error"]["message"] == "option --label requires a value"
        assert refused.json["error"]["hint"] == "see 'voke chain anchor request --help'"
    human = voke("chain", "anchor", "request", root, "--label", "--dry-run", environ=environ)
    assert human.exit_code == 2 and human.stderr.startswith("error: option --label requires a value\n")
    named = voke("chain", "anchor", "request", root, "--kind", "--label=x", "--json", environ=environ)
    assert named.json["error"]["message"] == "option --kind requires a value"
    assert voke("chain", "anchors", "--json", environ=environ).json["result"]["anchors"] == []
    # a value that only looks like a flag is one: stdout "-", `--name=VALUE` spelled out
    assert voke("ingest", "sample", "--rows", "1", "--out", "-", environ=environ).exit_code == 0
    spelled = voke(
        "chain", "anchor", "request", root, "--label=--dry-run", "--dry-run", "--json", environ=environ
    )
    assert spelled.exit_code == 0 and spelled.json["result"]["label"] == "--dry-run"


def test_nested_groups_table_is_the_apps():
    # guess_command runs before Typer is imported, so it holds its own table of the groups
    # inside groups: it must name the same as the app.
    import typer

    from voketag_ops.cli.app import app
    from voketag_ops.cli.argv import NESTED_GROUPS

    root = typer.main.get_command(app)
    nested = {
        name: frozenset(sub for sub, command in group.commands.items() if hasattr(command, "commands"))
        for name, group in root.commands.items()
        if hasattr(group, "commands")
    }
    assert {name: subs for name, subs in nested.items() if subs} == NESTED_GROUPS
    for name, subs in nested.items():  # no deeper: guess_command stops at three words
        for sub in subs:
            assert not any(
                hasattr(c, "commands") for c in root.commands[name].commands[sub].commands.values()
            )


@pytest.mark.parametrize(
    "args",
    [
        ("chain", "anchor", "run", "--json", "--env"),
        ("dr", "runbook", "show", "regional-failure", "--json", "--config"),
        ("coverage", "history", "show", "--file", "h.jsonl", "--json", "--log-format"),
    ],
)
def test_a_dangling_global_flag_names_a_three_word_command_whole(voke, args):
    result = voke(*args)
    assert result.exit_code == 2 and result.json["command"] == " ".join(args[:3])
    assert result.json["error"]["message"] == f"option {args[-1]} requires a value"


def test_json_with_a_value_is_refused_in_the_envelope(voke, tmp_path):
    (tmp_path / "f.csv").write_text("a\n1\n")
    result = voke("ingest", "load", "f.csv", "--json=true")
    assert result.exit_code == 2 and result.stderr == ""
    assert result.json["error"] == {
        "type": "UsageError",
        "message": "Option '--json' does not take a value.",
        "exit_code": 2,
    }


def test_voke_with_global_flags_alone_is_a_missing_command_named_null(voke):
    bare = voke("--json")
    assert bare.exit_code == 2
    assert bare.json == {
        "ok": False,
        "command": None,
        "error": {
            "type": "UsageError",
            "message": "missing command",
            "exit_code": 2,
            "hint": "see 'voke --help'",
        },
    }
    assert voke("--frobnicate", "--json").json["command"] is None
    human = voke("--debug")  # as `voke` alone and a bare group: the error, then the help, on stderr
    assert human.exit_code == 2 and human.stdout == ""
    assert human.stderr.startswith("error: missing command\nhint: see 'voke --help'\n")
    assert "Usage: voke" in human.stderr


def test_a_missing_choice_argument_is_one_line(voke):
    missing = voke("drill", "run", "--json")
    message = missing.json["error"]["message"]
    assert missing.exit_code == 2 and "\n" not in message and "pitr, failover" in message
    assert len(voke("drill", "run").stderr.splitlines()) == 2  # the error, its hint


def test_unknown_command_is_usage_error_with_suggestion(voke):
    result = voke("env", "statsu")
    assert result.exit_code == 2
    assert "Did you mean" in result.stderr and "status" in result.stderr
    assert "Traceback" not in result.stderr


def test_unknown_flag_is_usage_error_in_json_too(voke):
    result = voke("env", "status", "--frobnicate", "--json")
    assert result.exit_code == 2
    doc = result.json
    assert doc["ok"] is False and doc["error"]["type"] == "UsageError" and doc["error"]["exit_code"] == 2
    assert "--frobnicate" in doc["error"]["message"]


def test_json_flag_anywhere_and_from_environment(voke, make_environ, tmp_path):
    first = voke("--json", "env", "status")
    last = voke("env", "status", "--json")
    assert first.json["result"] == last.json["result"]
    env = make_environ(tmp_path / "home", VOKE_OUTPUT="json")
    assert voke("env", "status", environ=env).json["command"] == "env status"


def test_internal_error_is_one_line_without_traceback_and_redacted(voke, monkeypatch):
    from voketag_ops import redact
    from voketag_ops.adapters.local import environment

    secret = "s3cr3t-Value-XYZ"
    redact.register(secret)

    def boom(self):
        raise RuntimeError(f"password={secret} failed")

    monkeypatch.setattr(environment.LocalEnvironment, "status", boom)
    result = voke("env", "status")
    assert result.exit_code == 70
    assert "Traceback" not in result.stderr and secret not in result.stderr
    assert "internal error (RuntimeError)" in result.stderr
    debug = voke("env", "status", "--debug")
    assert debug.exit_code == 70
    assert "Traceback" in debug.stderr and secret not in debug.stderr


def test_a_password_in_any_argument_is_masked_whatever_its_shape(voke, tmp_path):
    # libpq ends the password at its first raw '@' and names the short rest as the host: such
    # a URL is refused before libpq reads it.
    csv = tmp_path / "b.csv"
    csv.write_text("a,b\n1,2\n")
    url = "postgresql://app:LongFirstPart@x9!@127.0.0.1:5432/db"
    loaded = voke("ingest", "load", str(csv), "--db", url, "--yes")
    assert loaded.exit_code == 2 and "percent-encode" in loaded.stderr
    audited = (tmp_path / "home" / "audit" / "audit.jsonl").read_text()
    assert "x9!" not in loaded.stderr and "x9!" not in audited
    for conninfo, password in [
        ("host=db user=app password = Sup3rSecretPW9", "Sup3rSecretPW9"),  # spaces around '='
        ("host=db user=app password='Sup3r Secret PW9'", "Secret PW9"),  # quoted, with spaces
        (r"host=db password='it\'s Sup3r' user=app", "s Sup3r"),  # an escaped quote
        ("postgresql://db/x?password=Sup3rSecretPW9&sslmode=require", "Sup3rSecretPW9"),
    ]:
        result = voke("coverage", "report", conninfo)
        assert result.exit_code == 2 and "no such file" in result.stderr, result.stderr
        assert password not in result.stderr, conninfo
    # A short piece is masked with the '@' beside it, never alone: a bare "2" would break --json.
    url = "postgresql://app:LongFirstPart@2@127.0.0.1:1/db"
    short = voke("ingest", "load", str(csv), "--db", url, "--json")
    assert short.json["error"]["exit_code"] == 2 and "2@" not in short.stdout
    # nor with a space, '=' or a quote beside it: "4 " would mask `"exit_code": 4}` and '"ok'
    # the document's first key
    for conninfo in ("host=127.0.0.1 port=1 password = 4 dbname=x", 'host=127.0.0.1 port=1 password="ok"'):
        listed = voke("ingest", "batches", "--db", conninfo, "--json")
        assert listed.json["ok"] is False and listed.json["error"]["exit_code"] == 4, listed.stdout
    # a backslash escape, as a quoting (Click's repr of a missing file, a JSON string) doubles it
    for args in (("ingest", "load"), ("ingest", "load", "--json")):
        quoted = voke(*args, r"host=x password='Sup3r\'Secret'")
        assert quoted.exit_code == 2 and "Secret" not in quoted.stdout + quoted.stderr, quoted.stderr
    # a short one is masked with its keyword, as an argument shows it (a --db split by the shell)
    split = voke("ingest", "batches", "--db", "host=127.0.0.1", "password=pw1")
    assert split.exit_code == 2 and "pw1" not in split.stderr, split.stderr


def test_no_ansi_escapes_when_not_a_terminal(voke):
    result = voke("env", "status")
    assert "\x1b[" not in result.stdout + result.stderr


def test_destroy_without_yes_and_without_tty_is_usage_error(voke):
    result = voke("env", "destroy")
    assert result.exit_code == 2
    assert "--yes" in result.stderr


def test_cli_import_does_not_load_cloud_or_database_clients():
    code = (
        "import sys, io\n"
        "from voketag_ops.cli.main import main\n"
        "import contextlib\n"
        "with contextlib.redirect_stdout(io.StringIO()):\n"
        "    try:\n"
        "        main(['--help'])\n"
        "    except SystemExit:\n"
        "        pass\n"
        "heavy = ('grpc', 'psycopg', 'pydantic')  # (pydantic: the configuration, read by commands that run)\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in heavy or m.startswith('google'))\n"
        "print(','.join(bad))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == ""


def test_a_local_service_starts_without_the_configuration_or_pydantic():
    """A local service reads its credential from the store at start: every `env up` and every
    rotation's deploy starts a few, and the configuration's pydantic models cost ~0.45 s of CPU
    each time (three quarters of a service's start)."""
    imports = "import voketag_ops.adapters.local.service_app, voketag_ops.adapters.local.secrets"
    assert loaded_of(imports, "pydantic", "voketag_ops.config", "psycopg", "typer") == []


def test_version_fast_path_imports_nothing_heavy():
    code = (
        "import sys\n"
        "from voketag_ops.cli.main import main\n"
        "main(['--version'])\n"
        "print(','.join(m for m in ('typer', 'rich', 'pydantic', 'psycopg') if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.splitlines() == ["voke 0.1.0", ""] or out.splitlines()[-1] == ""


def test_console_script_runs(tmp_path, make_environ):
    proc = subprocess.run(
        [sys.executable, "-m", "voketag_ops", "env", "status", "--json"],
        capture_output=True,
        text=True,
        env=make_environ(tmp_path / "home"),
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert doc["ok"] is True and doc["result"]["initialized"] is False


def test_a_bare_group_is_one_usage_error_with_help_on_stderr(voke):
    result = voke("rotate", "--json")
    assert result.exit_code == 2
    assert result.json == {
        "ok": False,
        "command": "rotate",
        "error": {
            "type": "UsageError",
            "message": "missing command",
            "exit_code": 2,
            "hint": "see 'voke rotate --help'",
        },
    }
    human = voke("env")
    assert human.exit_code == 2 and human.stdout == ""
    assert "Usage: voke env" in human.stderr and "error: missing command" in human.stderr
    assert voke("env", "--help").stdout.count("Usage: voke env") == 1  # asked-for help stays on stdout


def test_a_dry_run_never_creates_the_environment(voke, tmp_path):
    result = voke("rotate", "db-password", "--dry-run")
    assert result.exit_code == 5 and "voke env up" in result.stderr
    assert not (tmp_path / "home" / "pg").exists() and not (tmp_path / "home" / "state.json").exists()


def test_every_command_with_a_dry_run_takes_yes_too():
    import typer

    from voketag_ops.cli.app import app

    def leaves(command, path):
        for name, sub in getattr(command, "commands", {}).items():
            yield from leaves(sub, [*path, name])
        if not getattr(command, "commands", None):
            yield " ".join(path), {o for p in command.params for o in getattr(p, "opts", [])}

    commands = dict(leaves(typer.main.get_command(app), []))
    changing = [name for name, opts in commands.items() if "--dry-run" in opts]
    assert "audit checkpoint" in changing and "ingest load" in changing
    assert [name for name in changing if "--yes" not in commands[name]] == []


def test_yes_on_a_command_that_never_asks_is_accepted(voke, tmp_path):
    assert voke("env", "up", "--dry-run", "--yes", "--json").exit_code == 0
    assert voke("audit", "checkpoint", "--yes", "--dry-run").exit_code == 0


def test_a_refused_confirmation_never_creates_the_environment(voke, tmp_path):
    result = voke("rotate", "cleanup")  # no terminal to ask, no --yes
    assert result.exit_code == 2 and "refusing without --yes" in result.stderr
    assert not (tmp_path / "home" / "pg").exists() and not (tmp_path / "home" / "state.json").exists()


@pytest.mark.parametrize(
    ("args", "code"),
    [
        (("rotate", "db-password", "--strategy", "single"), 2),  # app is alternating
        (("rotate", "db-password", "--user", "nosuch"), 2),
        (("rotate", "api-key", "nosuch"), 3),
        (("rotate", "rollback", "nosuch"), 2),
        (("rotate", "resume", "nosuch"), 2),
    ],
)
def test_rotate_arguments_are_refused_before_the_environment_starts(voke, tmp_path, args, code):
    result = voke(*args, "--yes")
    assert result.exit_code == code, result.stderr
    assert not (tmp_path / "home" / "pg").exists() and not (tmp_path / "home" / "state.json").exists()
    assert "starting the local environment" not in result.stderr


def test_drill_inputs_are_refused_before_anything_runs(voke, tmp_path):
    history = voke("drill", "history", "--scenario", "bogus")
    assert history.exit_code == 2 and "'bogus' is not one of" in history.stderr
    long = voke("drill", "run", "network", "--outage", "2h", "--yes")
    assert long.exit_code == 2 and "--outage: at most 1 h" in long.stderr
    assert not (tmp_path / "home" / "pg").exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("dr", "restore", "--to", "garbage", "--yes"), "--to: not a point in time: 'garbage'"),
        (("dr", "restore", "--to", "garbage"), "--to: not a point in time"),  # before the question
        (("dr", "restore", "--to", "now", "--name", "replica", "--yes"), "names a node of the environment"),
        (("dr", "restore", "--to", "now", "--name", "../x", "--yes"), "restore name '../x' must match"),
        (("dr", "fence", "bogusnode", "--yes"), "unknown node 'bogusnode' (primary or replica)"),
        (("dr", "verify", "--source", "bogus", "--target", "standby"), "no restored instance named 'bogus'"),
        (("dr", "verify", "--source", "leader", "--target", "Bad!"), "restore name 'Bad!' must match"),
        (("dr", "verify", "--source", "leader", "--target", "leader"), "name the same instance"),
        (("env", "move-port", "bogus", "--yes"), "no node or restored instance 'bogus'"),
        (("env", "move-port", "bogus", "--dry-run"), "no node or restored instance 'bogus'"),
    ],
)
def test_node_time_and_restore_arguments_are_exit_2_with_no_environment(voke, tmp_path, args, message):
    # Found by review: with no environment these were exit 5 ("does not exist; run `voke env
    # up`"), after a progress line (`point-in-time restore`, `comparing tables`).
    result = voke(*args)
    assert result.exit_code == 2 and message in result.stderr, result.stderr
    assert result.stderr.count("\n") == 1 + ("hint:" in result.stderr), result.stderr  # the error alone
    assert not (tmp_path / "home" / "pg").exists() and not (tmp_path / "home" / "state.json").exists()


def test_drill_run_all_asks_for_all_the_drills(voke):
    result = voke("drill", "run", "all")
    assert result.exit_code == 2, result.stderr
    assert "Run all drills (pitr, failover, failback, network) on the local environment" in result.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ("dr", "check", "--max-lag", "1m30"),
            "--max-lag: '1m30': each part of a duration needs its unit (e.g. 1m30s)",
        ),
        (("dr", "check", "--min-pitr-window", "2d12"), "--min-pitr-window: '2d12': each part"),
        (("dr", "check", "--max-backup-age", ""), "--max-backup-age: empty duration (use e.g. 90s"),
        (
            ("drill", "run", "network", "--outage", "1m30"),
            "--outage: '1m30': each part",
        ),  # no --yes: nothing runs
        (("drill", "run", "network", "--outage", "0"), "--outage: must be more than 0 (e.g. 5s)"),  # not 5 s
        (("drill", "run", "pitr", "--canary-seconds", "0s"), "--canary-seconds: must be more than 0"),
        (
            ("drill", "run", "pitr", "--canary-seconds", "50ms"),
            "--canary-seconds: at least 100 ms: the canary writes that long before the fault, a few rows",
        ),
        (
            ("drill", "run", "pitr", "--canary-seconds", "11m"),
            "--canary-seconds: at most 10 min: the canary writes that long before the fault, a few rows",
        ),
    ],
)
def test_durations_are_refused_before_anything_runs(voke, tmp_path, args, message):
    result = voke(*args)
    assert result.exit_code == 2 and message in result.stderr, result.stderr
    assert not (tmp_path / "home" / "pg").exists()


def test_sigterm_stops_voke_like_ctrl_c_unless_the_caller_ignores_it(monkeypatch):
    import signal

    from voketag_ops import interrupts

    before = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    monkeypatch.setattr(interrupts, "_started", True)
    try:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # e.g. started by `nohup`-like wrappers
        interrupts.install()
        assert signal.getsignal(signal.SIGTERM) is signal.SIG_IGN
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        interrupts.install()
        with pytest.raises(interrupts.Terminated):
            signal.raise_signal(signal.SIGTERM)
        with pytest.raises(KeyboardInterrupt):
            signal.raise_signal(signal.SIGINT)
    finally:
        for signum, handler in before.items():
            signal.signal(signum, handler)


def test_sighup_stops_voke_as_sigterm_does_unless_nohup_ignores_it(monkeypatch):
    # A closed terminal or ssh session: its default ended voke mid-step, with no clean-up.
    import signal

    from voketag_ops import interrupts

    before = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    monkeypatch.setattr(interrupts, "_started", True)
    try:
        signal.signal(signal.SIGHUP, signal.SIG_IGN)  # `nohup voke ...`
        interrupts.install()
        assert signal.getsignal(signal.SIGHUP) is signal.SIG_IGN
        signal.signal(signal.SIGHUP, signal.SIG_DFL)
        interrupts.install()
        assert callable(signal.getsignal(signal.SIGHUP))  # (else the next line ends pytest)
        with pytest.raises(interrupts.Terminated):
            signal.raise_signal(signal.SIGHUP)
        assert interrupts.stopped_by() == "terminated (SIGHUP)"
        with interrupts.Held() as held:  # held like SIGTERM where a step must not be cut in two
            signal.raise_signal(signal.SIGHUP)
        assert held.fired
        interrupts.settle()
        assert signal.getsignal(signal.SIGHUP) is signal.SIG_IGN
    finally:
        for signum, handler in before.items():
            signal.signal(signum, handler)


@pytest.mark.parametrize("signum", ["TERM", "HUP", "INT"])
@pytest.mark.parametrize("json_mode", [False, True])
def test_a_signal_during_start_up_is_one_line_and_exit_130(signum, json_mode, tmp_path):
    # Before the command runs (the imports), nothing needs undoing: no traceback, one line.
    flags = ["--json"] if json_mode else []
    code = (
        f"import os, signal, sys; sys.argv = ['voke', 'env', 'status', *{flags!r}];"
        "from voketag_ops import interrupts; interrupts.install();"
        f"os.kill(os.getpid(), signal.SIG{signum}); import time; time.sleep(5)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 130 and "Traceback" not in done.stderr
    message = "interrupted" if signum == "INT" else f"terminated (SIG{signum})"
    if json_mode:
        assert json.loads(done.stdout)["error"]["message"] == message
    else:
        assert done.stderr == f"error: {message}\n"


@pytest.mark.parametrize(
    ("argv", "command"),
    [
        (["ingest", "load", "batch.csv", "--json"], "ingest load"),
        (["--env", "prod", "--json", "dr", "failover", "--yes"], "dr failover"),
        (["--json", "--env=prod", "--log-level", "debug", "doctor"], "doctor"),
        (["--json"], None),  # no command typed: none named
        (["--db", "postgres://ops:s3cret-pw@db/voke", "ingest", "load", "--json"], None),  # not unmasked
    ],
)
def test_a_signal_during_start_up_names_the_command_typed(argv, command):
    # The `voke` script stopped before Typer has resolved the command: its envelope still
    # names the command, read from the command line as for every other error.
    code = (
        f"import os, signal, sys, time; sys.argv = ['voke', *{argv!r}];"
        "from voketag_ops.cli import main;"
        "main.main = lambda: (os.kill(os.getpid(), signal.SIGTERM), time.sleep(5));"  # still importing
        "main.entry()"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 130, done.stderr
    assert json.loads(done.stdout) == {
        "ok": False,
        "command": command,
        "error": {"type": "Interrupted", "message": "terminated (SIGTERM)", "exit_code": 130},
    }


@pytest.mark.parametrize("json_mode", [False, True])
def test_a_ctrl_c_in_the_scripts_first_moments_is_one_line_and_exit_130(json_mode):
    # A Ctrl-C in voke's first 0.1 s (the script's own imports and hooks, before its handlers
    # were set) printed Python's traceback ending in a bare KeyboardInterrupt.
    flags = ["--json"] if json_mode else []
    code = (
        f"import os, signal, sys, time; sys.argv = ['voke', 'env', 'status', *{flags!r}];"
        "signal.signal(signal.SIGINT, signal.default_int_handler);"  # as at a terminal
        "from voketag_ops import logs;"
        "logs.route_strays = lambda: (os.kill(os.getpid(), signal.SIGINT), time.sleep(5));"
        "from voketag_ops.cli import main;"
        "main.entry()"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 130 and "Traceback" not in done.stderr, done.stderr
    if json_mode:
        assert json.loads(done.stdout) == {
            "ok": False,
            "command": "env status",
            "error": {"type": "Interrupted", "message": "interrupted", "exit_code": 130},
        }
    else:
        assert (done.stdout, done.stderr) == ("", "error: interrupted\n")


def test_a_signal_once_the_answer_is_printed_changes_nothing(tmp_path, make_environ):
    # In the `voke` script, the first answer stands: no second document, exit as answered.
    code = (
        "import os, signal, sys\n"
        "from voketag_ops import interrupts\n"
        "from voketag_ops.output import Output\n"
        "real = Output.result\n"
        "def result_then_signal(self, *a, **kw):\n"
        "    code = real(self, *a, **kw)\n"
        "    os.kill(os.getpid(), signal.SIGTERM)\n"
        "    os.kill(os.getpid(), signal.SIGINT)\n"
        "    return code\n"
        "Output.result = result_then_signal\n"
        "interrupts.install()\n"
        "from voketag_ops.cli.main import main\n"
        "sys.exit(main(['config', 'show', '--json']))\n"
    )
    env = make_environ(tmp_path / "home")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    assert len(done.stdout.strip().splitlines()) == 1 and json.loads(done.stdout)["ok"] is True


@pytest.mark.parametrize(
    "args",
    [
        ["config", "show"],
        ["config", "show", "--json"],
        ["--help"],
        ["--version"],
        ["env", "--help"],
        ["bogus"],
    ],
)
def test_a_reader_that_goes_away_is_no_error(tmp_path, args, make_environ):
    # `voke ... | head -1`: the rest of the answer goes nowhere, without an error or traceback.
    env = make_environ(tmp_path / "home")
    proc = subprocess.Popen(
        [sys.executable, "-m", "voketag_ops", *args],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, cwd=tmp_path,
    )  # fmt: skip
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.close()  # gone before the answer is written
    stderr = proc.stderr.read().decode()
    expected = 2 if args == ["bogus"] else 0
    assert proc.wait(timeout=60) == expected and "Traceback" not in stderr, stderr
    assert expected or "error" not in stderr


@pytest.mark.parametrize("args", [["env", "status"], ["--json", "env", "status"], ["--version"], ["bogus"]])
def test_a_closed_stdout_or_stderr_is_no_error(tmp_path, args, make_environ):
    env = make_environ(tmp_path / "home")
    command = " ".join([sys.executable, "-m", "voketag_ops", *args])
    for redirect in (">&-", "2>&-", "2>&1 | true"):
        done = subprocess.run(
            ["bash", "-c", f"{command} {redirect}; echo rc=${{PIPESTATUS[0]}}"],
            capture_output=True,
            text=True,
            env=env,
            cwd=tmp_path,
        )
        expected = 2 if args == ["bogus"] else 0
        assert done.stdout.strip().splitlines()[-1] == f"rc={expected}", (redirect, done.stdout, done.stderr)
        assert "Traceback" not in done.stderr, (redirect, done.stderr)


@pytest.mark.parametrize(
    "args",
    [
        ["secrets", "add", "foo", "--yes"],
        ["chain", "root", "-"],
        ["chain", "verify", "-"],
        ["chain", "import", "-", "--yes"],
    ],
)
def test_a_closed_stdin_reads_as_empty(tmp_path, args, make_environ):
    # `voke ... <&-`: sys.stdin is None; the command answers as it does for `< /dev/null`.
    env = make_environ(tmp_path / "home")
    command = " ".join([sys.executable, "-m", "voketag_ops", *args])
    closed, empty = (
        subprocess.run(
            ["bash", "-c", f"{command} {redirect}"], capture_output=True, text=True, env=env, cwd=tmp_path
        )
        for redirect in ("<&-", "< /dev/null")
    )
    assert (closed.returncode, closed.stdout, closed.stderr) == (empty.returncode, empty.stdout, empty.stderr)
    assert closed.returncode in (0, 1, 2) and "internal error" not in closed.stderr, closed.stderr


@pytest.mark.parametrize(
    ("args", "output"),
    [
        (["env", "status"], ""),
        (["env", "status", "--json"], ""),
        (["audit", "show", "--json"], ""),
        (["audit", "export", "--json"], ""),
        (["config", "show", "--bogus"], "json"),  # the usage error's envelope is refused too
        (["--version"], ""),
        (["--help"], "json"),
    ],
)
def test_a_full_stdout_is_one_line_on_stderr_and_exit_4(tmp_path, make_environ, args, output):
    # `voke ... > /dev/full`: the answer did not get out, and its error cannot go there either.
    env = make_environ(tmp_path / "home", VOKE_OUTPUT=output)
    with open("/dev/full", "w") as full:
        done = subprocess.run(
            [sys.executable, "-m", "voketag_ops", *args],
            stdout=full, stderr=subprocess.PIPE, text=True, env=env, cwd=tmp_path,
        )  # fmt: skip
    assert (done.returncode, done.stderr) == (4, "error: cannot write to stdout: No space left on device\n")


def test_a_full_stderr_leaves_the_exit_code_alone(tmp_path, make_environ):
    env = make_environ(tmp_path / "home")
    with open("/dev/full", "w") as full:
        done = subprocess.run(
            [sys.executable, "-m", "voketag_ops", "bogus"],
            stdout=subprocess.PIPE, stderr=full, text=True, env=env, cwd=tmp_path,
        )  # fmt: skip
    assert (done.returncode, done.stdout) == (2, "")


def _ascii_voke(cwd: Any, environ: dict[str, str]) -> Any:
    """A `voke` run in a subprocess with ENVIRON (make_environ's) whose stdout and stderr are
    ASCII (PYTHONIOENCODING)."""
    env = {**environ, "PYTHONIOENCODING": "ascii"}

    def voke(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "voketag_ops", *args],
            capture_output=True, text=True, encoding="ascii", env=env, cwd=cwd,
        )  # fmt: skip

    return voke


def test_a_stdout_that_is_not_utf8_gets_escapes_and_json_stays_valid(tmp_path, make_environ):
    # A Latin-1 or ASCII locale: a name it cannot encode is no UnicodeEncodeError (exit 70).
    voke = _ascii_voke(tmp_path, make_environ(tmp_path / "home"))
    name = "工厂-é😀"

    assert voke("secrets", "add", name, "--yes").returncode == 2  # refused, and audited by its name
    show, show_json, export, export_csv = (
        voke("audit", *args) for args in (["show"], ["show", "--json"], ["export"], ["export", "-f", "csv"])
    )
    for done in (show, show_json, export, export_csv):
        assert done.returncode == 0, done.stderr
    assert "\\u5de5\\u5382-\\xe9\\U0001f600" in show.stdout and "\\u5de5\\u5382-\\xe9" in export_csv.stdout
    assert json.loads(show_json.stdout)["result"]["entries"][0]["target"] == name
    assert json.loads(export.stdout)[0]["target"] == name


def test_json_escaped_for_an_ascii_stdout_still_masks_secrets():
    from voketag_ops.output import Output
    from voketag_ops.redact import register

    raw = io.BytesIO()
    stdout = io.TextIOWrapper(raw, encoding="ascii")
    register("pässwörd-1")
    Output(json_mode=True, command="x", stdout=stdout).result({"dsn": "u:pässwörd-1@h", "name": "é"})
    stdout.flush()
    assert json.loads(raw.getvalue())["result"] == {"dsn": "u:***@h", "name": "é"}


@pytest.mark.parametrize("columns", ["0", "5"])
def test_a_terminal_too_narrow_to_print_on_is_taken_as_80_columns(
    monkeypatch, make_environ, tmp_path, columns
):
    from voketag_ops.cli.app import run

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    monkeypatch.setenv("COLUMNS", columns)  # rich's width, read from the environment
    out, err = Terminal(), Terminal()
    code = run(["config", "show", "--bogus"], stdout=out, stderr=err, environ=make_environ(tmp_path / "home"))
    assert code == 2 and "error: No such option: --bogus" in err.getvalue()


def test_the_stream_wrapper_writes_bytes_past_a_gone_reader_and_copies():
    import copy
    import os

    from voketag_ops.output import _ReaderMayGo

    read_end, write_end = os.pipe()
    os.close(read_end)
    with os.fdopen(write_end, "w") as raw:
        stream = _ReaderMayGo(raw)
        stream.write_bytes(b"secret value")  # EPIPE: quietly to /dev/null
        stream.write("more")
        stream.flush()
        assert stream.wrapped is None
    assert copy.copy(_ReaderMayGo(io.StringIO())) is not None  # no recursion without __init__


def test_a_global_flag_after_double_dash_is_an_argument(voke, tmp_path):
    # `voke chain root -- --json`: a file named --json, read as such; the output stays human.
    result = voke("chain", "root", "--", "--json", cwd=tmp_path)
    assert result.exit_code == 2 and result.stdout == ""
    assert result.stderr.startswith("error: --json: cannot read") and "Traceback" not in result.stderr


@pytest.mark.parametrize(("value", "no_color"), [("", False), ("1", True), (None, False)])
def test_no_color_counts_only_when_set_and_not_empty(monkeypatch, value, no_color):
    from voketag_ops.output import Output

    if value is None:
        monkeypatch.delenv("NO_COLOR", raising=False)
    else:
        monkeypatch.setenv("NO_COLOR", value)
    assert Output(json_mode=False, command="x").no_color is no_color  # no-color.org


def test_every_json_document_stays_valid_on_a_stdout_that_is_not_utf8(tmp_path, make_environ):
    # PYTHONIOENCODING=ascii: the chain's export, a drill's JSON journal and JSON log lines are
    # escaped as JSON escapes (\u00e9), not as Python's (\xe9), which no JSON reader takes.
    # (the file chain store: no environment to start)
    voke = _ascii_voke(tmp_path, make_environ(tmp_path / "home", VOKE_CHAIN__STORE="file"))
    label = "café-工厂-😀"

    requested = voke("--log-format", "json", "--log-level", "info", "chain", "anchor", "request", "ab" * 32,
                     "--label", label, "--tree-size", "1")  # fmt: skip
    assert requested.returncode == 0, requested.stderr
    logged = [json.loads(line) for line in requested.stderr.splitlines() if line.startswith("{")]
    assert [e["audit"]["details"]["label"] for e in logged if "audit" in e] == [label]
    export = voke("chain", "export")
    assert export.returncode == 0, export.stderr
    assert json.loads(export.stdout)["anchors"][0]["label"] == label
    (tmp_path / "exp.json").write_text(export.stdout)
    assert voke("chain", "import", "exp.json", "--dry-run").returncode == 0
    (tmp_path / "home" / "drills").mkdir()
    journal = {"run_id": "x-1", "scenario": label, "status": "completed", "started_at": "2026-05-01T00:00:00Z",
               "targets": []}  # fmt: skip
    (tmp_path / "home" / "drills" / "x-1.json").write_text(json.dumps(journal))
    report = voke("drill", "report", "x-1", "--format", "json")
    assert report.returncode == 0, report.stderr
    assert json.loads(report.stdout)["scenario"] == label


def test_a_json_export_cut_mid_stream_adds_no_second_document_to_stdout():
    # Interrupted once the envelope has begun, an error envelope after the cut one made two
    # documents on stdout (neither whole); the error goes to stderr alone then, as without --json.
    from voketag_ops.errors import Interrupted
    from voketag_ops.output import Output

    stdout, stderr = io.StringIO(), io.StringIO()
    out = Output(json_mode=True, command="audit export", stdout=stdout, stderr=stderr)

    def chunks():
        yield '[{"seq": 1}'
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        out.stream_result({}, "data", chunks(), dict)
    assert out.error(Interrupted("interrupted")) == 130
    assert stdout.getvalue().count('"ok"') == 1 and '"ok": false' not in stdout.getvalue()
    assert "error: interrupted" in stderr.getvalue()


def test_force_color_keeps_a_pipes_full_width(monkeypatch, make_environ, tmp_path):
    """FORCE_COLOR (set by CI systems) makes rich take a pipe for a terminal: it then fitted
    tables to COLUMNS (or 80) and cut the ids and paths a reader copies."""
    from voketag_ops.cli.app import run

    monkeypatch.setenv("FORCE_COLOR", "1")
    monkeypatch.setenv("COLUMNS", "40")
    out = io.StringIO()
    run(["rotate", "status"], stdout=out, stderr=io.StringIO(), environ=make_environ(tmp_path / "home"))
    text = re.sub(r"\x1b\[[0-9;]*m", "", out.getvalue())
    assert "\u2503 secret \u2503 current \u2503 previous \u2503 age (days) \u2503" in text, text
