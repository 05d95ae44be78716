"""How voke waits for the server commands it runs (pg_ctl, pg_basebackup, ...)."""

from __future__ import annotations

import errno
import os
import stat
import subprocess

import pytest

from voketag_ops.adapters.local import postgres
from voketag_ops.adapters.local.postgres import wait_exactly


def test_a_command_is_reaped_when_it_ends_not_at_the_next_poll(monkeypatch):
    # Popen.wait(timeout) sleeps between looks (up to 50 ms each): every command ended late.
    slept = []
    monkeypatch.setattr(subprocess.time, "sleep", slept.append)
    with subprocess.Popen(["sh", "-c", "sleep 0.2; exit 3"]) as proc:
        assert wait_exactly(proc, 30) == 3
    assert slept == []


def test_a_command_over_its_time_raises_timeout_and_the_caller_kills_it():
    with subprocess.Popen(["sleep", "30"]) as proc:
        with pytest.raises(subprocess.TimeoutExpired):
            wait_exactly(proc, 0.05)
        assert proc.poll() is None  # still running: the caller decides (PgRunner.run kills it)
        proc.kill()


def test_without_pidfds_it_falls_back_to_popen_wait(monkeypatch):
    monkeypatch.delattr(os, "pidfd_open")
    with subprocess.Popen(["sh", "-c", "exit 4"]) as proc:
        assert wait_exactly(proc, 30) == 4
    with subprocess.Popen(["sleep", "30"]) as proc:
        with pytest.raises(subprocess.TimeoutExpired):
            wait_exactly(proc, 0.05)
        proc.kill()


def test_pg_runner_kills_a_command_over_its_timeout(tmp_path, monkeypatch):
    # PgRunner.run as subprocess.run did: the command is killed and reaped, the error names it.
    from voketag_ops.errors import BackendError

    runner = postgres.PgRunner.__new__(postgres.PgRunner)
    monkeypatch.setattr(runner, "env", lambda: dict(os.environ), raising=False)
    started = []
    real = subprocess.Popen

    def popen(cmd, **kw):
        proc = real(["sleep", "30"], **{k: v for k, v in kw.items() if k in ("stdin", "stdout", "stderr")})
        started.append(proc)
        return proc

    monkeypatch.setattr(postgres.subprocess, "Popen", popen)

    class Bins:
        def path(self, name):
            return tmp_path / name

    class Me:
        is_me = True

    runner.bins, runner.user = Bins(), Me()
    with pytest.raises(BackendError, match="pg_ctl did not finish within 0 s"):
        runner.run("pg_ctl", ["status"], timeout=0.05)
    (proc,) = started
    assert proc.returncode is not None  # killed and reaped, not left running


def _disk_full(fd: int, data: bytes) -> None:
    """files.write_all on a full disk: part of the data written, then ENOSPC."""
    os.write(fd, data[:5])
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def test_a_server_config_written_on_a_full_disk_names_it_and_leaves_no_temporary_file(tmp_path, monkeypatch):
    # `env up` at 0 free said only "No space left on device" and left pg/primary/voke.conf.tmp,
    # root's, in the server user's data directory.
    from voketag_ops import files

    other = os.geteuid() == 0  # root writes a server user's configuration: it is given to that user
    user = postgres.OsUser("nobody", 65534, 65534, "/") if other else postgres.OsUser.current()
    data = tmp_path / "data"
    data.mkdir()
    (data / "postgresql.conf").write_text("port = 5432\n")
    node = postgres.PgNode(
        "primary", data, 5432, tmp_path, tmp_path / "log", runner=postgres.PgRunner(None, user)
    )  # type: ignore[arg-type]
    node.write_config({"wal_level": "replica"})
    written = (data / "voke.conf").stat()
    assert stat.S_IMODE(written.st_mode) == 0o600 and (written.st_uid, written.st_gid) == (user.uid, user.gid)
    before = {p.name: p.read_bytes() for p in data.iterdir()}
    monkeypatch.setattr(files, "write_all", _disk_full)
    with pytest.raises(OSError) as failed:
        node.write_config({"wal_level": "logical"})
    assert (failed.value.errno, failed.value.filename) == (errno.ENOSPC, str(data / "voke.conf"))
    assert {p.name: p.read_bytes() for p in data.iterdir()} == before  # the old file, nothing beside it
