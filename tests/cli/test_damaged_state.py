"""voke's own state files damaged by a hand edit or a disk fault (or another tool's file in
their place): each command that reads one says which file and what is wrong with it, with
its documented exit code, never an internal error (exit 70) nor a traceback."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from voketag_ops.core.rotation import RotationRecord

DEEP = "[" * 100_000  # json.loads raises RecursionError on it


def _one_line_error(result, exit_code: int, *names: str) -> None:
    assert result.exit_code == exit_code, result.stderr
    assert "Traceback" not in result.stderr and "internal error" not in result.stderr
    (error,) = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert all(name in error for name in names), error


# -- rotation history ---------------------------------------------------------------------------
def _record(**fields: object) -> str:
    record = RotationRecord(
        id="rot-1", secret="db-app", kind="db-password", strategy="alternating", target="app",
        owner="host:1", lease_until="2030-01-01T00:00:00Z", started_at="2030-01-01T00:00:00Z",
        status="succeeded", step="finish", old_current=1, pending_version=2,
        finished_at="2030-01-01T00:01:00Z",
    )  # fmt: skip
    doc = json.loads(record.to_json()) | fields
    return json.dumps(doc)


def _history(home: Path) -> Path:
    path = home / "rotations" / "history.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


@pytest.mark.parametrize(
    "damage, problem",
    [
        (lambda p: p.write_bytes(b"\xff\xfe\n"), "not UTF-8"),
        (lambda p: p.mkdir(), "a directory"),
        (lambda p: p.symlink_to("/dev/zero"), "not a regular file"),
    ],
    ids=["not-utf8", "a-directory", "dev-zero"],
)
def test_an_unreadable_rotation_history_is_a_config_error_naming_it(voke, tmp_path, damage, problem):
    path = _history(tmp_path / "home")
    damage(path)
    _one_line_error(voke("rotate", "history"), 3, str(path), problem)


@pytest.mark.parametrize(
    "line",
    [DEEP, _record(id=5), _record(error="boom"), _record(error={"message": 5}), _record(step="nope"), "[]"],
    ids=["deep", "id-int", "error-text", "message-int", "unknown-step", "not-an-object"],
)
def test_a_bad_history_line_is_skipped_with_a_warning_naming_file_and_line(voke, tmp_path, line):
    path = _history(tmp_path / "home")
    path.write_text(_record(id="rot-0") + "\n" + line + "\n" + _record(id="rot-2") + "\n")
    result = voke("rotate", "history", "--json")
    assert result.exit_code == 0, result.stderr
    assert [r["id"] for r in result.json["result"]["rotations"]] == ["rot-2", "rot-0"]
    (warning,) = [w for w in result.stderr.splitlines() if "skipping" in w]
    assert f"{path}:2:" in warning and len(warning) < 500


def test_a_torn_last_history_line_is_skipped_quietly(voke, tmp_path):
    path = _history(tmp_path / "home")
    path.write_text(_record(id="rot-0") + "\n" + _record(id="rot-1")[:40])
    result = voke("rotate", "history", "--json")
    assert result.exit_code == 0 and "skipping" not in result.stderr
    assert [r["id"] for r in result.json["result"]["rotations"]] == ["rot-0"]


def test_a_newer_vokes_history_line_is_shown_without_the_fields_this_voke_does_not_know(voke, tmp_path):
    # A field a later voke adds (committed_at, duration_seconds once were) hid its newest lines.
    path = _history(tmp_path / "home")
    newer = json.loads(_record(id="rot-2", future_field=1))
    newer["steps"] = [{"name": "lock", "status": "done", "duration_seconds": 0.1, "future_step_field": "x"}]
    path.write_text(_record(id="rot-1") + "\n" + json.dumps(newer) + "\n")
    result = voke("rotate", "history", "--json")
    assert result.exit_code == 0 and "skipping" not in result.stderr, result.stderr
    assert [r["id"] for r in result.json["result"]["rotations"]] == ["rot-2", "rot-1"]


def test_an_unreadable_stored_rotation_record_is_one_line_exit_3_naming_the_secret(voke, tmp_path):
    # Written by a newer voke (a field unknown here) or edited by hand: it was exit 70.
    from voketag_ops.adapters.local.secrets import LocalSecretStore
    from voketag_ops.core.rotation import ANNOTATION

    store = LocalSecretStore(tmp_path / "home")
    store.create("db-app")
    store.add_version("db-app", b"{}")
    running = json.loads(_record(status="in_progress", step="lock", future_field=1))
    store.update("db-app", etag=store.get("db-app").etag, annotations={ANNOTATION: json.dumps(running)})
    for args in (("rotate", "status"), ("rotate", "resume", "--yes")):
        result = voke(*args)
        _one_line_error(result, 3, "rotation record of db-app cannot be read", "unknown field 'future_field'")
        assert "finish it with that voke" in result.stderr


def test_history_shows_escape_sequences_and_markup_as_text(voke, tmp_path):
    path = _history(tmp_path / "home")
    path.write_text(_record(id="rot-\x1b[2J", secret="[red]db", error={"message": "x\x1b]0;t\x07"}) + "\n")
    result = voke("rotate", "history")
    assert result.exit_code == 0, result.stderr
    assert "\x1b" not in result.stdout and "\\x1b[2J" in result.stdout and "[red]db" in result.stdout


# -- the local secret store ---------------------------------------------------------------------
def _secret(**fields: object) -> str:
    doc = {"name": "a", "etag": "1", "created_at": "x", "aliases": {}, "annotations": {}, "versions": []}
    return json.dumps(doc | fields)


@pytest.mark.parametrize(
    "text, problem",
    [
        ("[]", "not an object"),
        (_secret(aliases=[1]), "no aliases"),
        (_secret(aliases={"current": "x"}), "alias"),
        (_secret(versions={}), "no versions"),
        (_secret(versions=[{"version": 1}]), "versions[0]"),
        (_secret(etag="x"), "etag"),
        (DEEP, "nested too deeply"),
    ],
    ids=["list", "aliases-list", "alias-text", "versions-object", "version-fields", "etag", "deep"],
)
def test_a_damaged_secret_file_is_a_config_error_naming_it(voke, tmp_path, text, problem):
    path = tmp_path / "home" / "secrets" / "a.json"
    path.parent.mkdir(parents=True, mode=0o700)
    path.write_text(text)
    for args in (
        ["secrets", "list"],
        ["secrets", "versions", "a"],
        ["secrets", "access", "a", "--version", "1"],
    ):
        _one_line_error(voke(*args), 3, f"{path} is damaged", problem)


# -- the local environment's state.json ---------------------------------------------------------
def _state(**fields: object) -> str:
    doc = {
        "version": 1, "created_at": "x", "server_user": "", "pg_bin": "/nonexistent", "pg_version": "16",
        "socket_dir": "/nonexistent", "ports": {"primary": 59991, "replica": 59992}, "leader": "primary",
    }  # fmt: skip
    return json.dumps(doc | fields)


@pytest.mark.parametrize(
    "text, problem",
    [
        (_state(ports=[1]), "ports"),
        (_state(ports={"primary": "x", "replica": 2}), "ports"),
        (_state(leader="zzz"), "leader is not one of"),
        (_state(pg_bin=5), "pg_bin"),
        (DEEP, "nested too deeply"),
    ],
    ids=["ports-list", "port-text", "leader", "pg-bin-int", "deep"],
)
def test_a_damaged_environment_state_is_a_config_error_naming_it(voke, tmp_path, text, problem):
    path = tmp_path / "home" / "state.json"
    path.parent.mkdir(parents=True)
    path.write_text(text)
    _one_line_error(voke("env", "status"), 3, str(path), problem)


# -- DR operation log and drill journals ---------------------------------------------------------
def test_a_deeply_nested_dr_operation_log_holds_the_resume_first_guard(voke, tmp_path):
    home = tmp_path / "home"
    (home / "dr").mkdir(parents=True)
    (home / "state.json").write_text(_state())
    (home / "dr" / "operation.json").write_text(DEEP)
    _one_line_error(
        voke("dr", "failover", "--dry-run"), 5, str(home / "dr" / "operation.json"), "cannot be read"
    )


@pytest.mark.parametrize(
    "text, problem",
    [
        (DEEP, "nested too deeply"),
        ('{"run_id":"r9","scenario":"pitr","status":"completed","started_at":"x","rto_seconds":' + "9" * 4000 + "}",
         "rto_seconds"),
        ('{"run_id":"r9","scenario":"pitr","status":"completed","started_at":"x","rpo_seconds":"1"}', "rpo_seconds"),
    ],
    ids=["deep", "rto-overflows-float", "rpo-text"],
)  # fmt: skip
def test_a_damaged_drill_journal_is_skipped_with_a_warning(voke, tmp_path, text, problem):
    journal = tmp_path / "home" / "drills" / "r9.json"
    journal.parent.mkdir(parents=True)
    journal.write_text(text)
    result = voke("drill", "history")
    assert result.exit_code == 0, result.stderr
    assert "no drill has run yet" in result.stdout
    (warning,) = [w for w in result.stderr.splitlines() if "skipping" in w]
    assert str(journal) in warning and problem in warning
