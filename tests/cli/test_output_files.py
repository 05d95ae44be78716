"""Files the user names (`--out`, `--output`, `--rejects`): written beside, renamed into place,
never half-written, and the scratch files a killed voke leaves are swept by the next writer."""

from __future__ import annotations

import errno
import fcntl
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from voketag_ops.errors import UsageError
from voketag_ops.files import write_output

OLD = time.time() - 3600


def scratch(directory: Path, target: str, random: str, suffix: str = ".partial", *, age: float = OLD) -> Path:
    path = directory / f".{target}.{random}{suffix}"
    path.write_text("rows of a run that never finished\n")
    os.utime(path, (age, age))
    return path


def test_the_next_writer_sweeps_only_scratch_files_nobody_holds(tmp_path):
    stale = scratch(tmp_path, "out.csv", "aaaaaaaa")
    held = scratch(tmp_path, "out.csv", "bbbbbbbb")
    kept = scratch(tmp_path, "out.csv", "cccccccc", ".kept")  # an error message named it
    young = scratch(tmp_path, "out.csv", "dddddddd", age=time.time())  # a voke killed a moment ago
    other = scratch(tmp_path, "out.csv.gz", "eeeeeeee")  # another target's
    with open(held, "rb") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)  # a writer still alive
        write_output(tmp_path / "out.csv", "--out", lambda out: out.write(b"new\n"))
    assert (tmp_path / "out.csv").read_text() == "new\n"
    assert not stale.exists() and not young.exists()
    assert held.exists() and kept.exists() and other.exists()


def test_a_scratch_file_swept_before_its_writer_locked_it_is_made_again(tmp_path, monkeypatch):
    # Between mkstemp and flock a new scratch file is unlocked, as a killed voke's is: another
    # writer's sweep may remove it then. Its writer notices once it holds the lock.
    import tempfile

    from voketag_ops import files

    real_mkstemp = tempfile.mkstemp
    swept: list[str] = []

    def swept_at_once(*args, **kwargs):
        fd, path = real_mkstemp(*args, **kwargs)
        if not swept:
            files._sweep(tmp_path, ".out.csv.")  # another writer of out.csv, in between
            swept.append(path)
        return fd, path

    def write(out):
        (scratch,) = [p for p in tmp_path.iterdir() if p.name.endswith(".partial")]
        with pytest.raises(BlockingIOError):  # the file being written is the one its writer locks
            files._remove_if_unheld(scratch)
        out.write(b"new\n")

    monkeypatch.setattr(files.tempfile, "mkstemp", swept_at_once)
    write_output(tmp_path / "out.csv", "--out", write)
    assert not os.path.exists(swept[0])
    assert (tmp_path / "out.csv").read_text() == "new\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.csv"]


@pytest.mark.parametrize(("code", "raised"), [(errno.EIO, UsageError), (errno.ENOSPC, OSError)])
def test_a_failed_write_leaves_the_old_file_whole_and_no_scratch(tmp_path, code, raised):
    target = tmp_path / "report.html"
    target.write_text("the old report\n")

    def half_then_fail(out):
        out.write(b"<html>half")
        raise OSError(code, os.strerror(code))

    with pytest.raises(raised) as info:
        write_output(target, "--output", half_then_fail)
    assert str(target) in str(info.value)  # a full disk is exit 4 naming the file, not a bare errno
    assert target.read_text() == "the old report\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.html"]


def test_scratch_of_a_killed_sample_is_swept_by_the_next_run(tmp_path):
    out = tmp_path / "batch.csv"
    cmd = [sys.executable, "-m", "voketag_ops", "ingest", "sample", "--rows", "3000000", "--out", str(out)]
    env = {**os.environ, "VOKE_HOME": str(tmp_path / "home")}
    child = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while not [p for p in tmp_path.iterdir() if p.name.endswith(".partial")]:
            assert child.poll() is None and time.monotonic() < deadline
            time.sleep(0.02)
    finally:
        child.kill()
        child.wait()
    (left,) = [p for p in tmp_path.iterdir() if p.name.endswith(".partial")]
    assert not out.exists() and left.exists()
    again = subprocess.run(
        [*cmd[:6], "10", "--out", str(out), "--json"], env=env, capture_output=True, text=True, check=False
    )
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout)["result"]["rows"] == 10
    assert sorted(p.name for p in tmp_path.iterdir() if p.name != "home") == ["batch.csv"]


def test_export_to_a_directory_is_a_usage_error_naming_the_flag(voke, tmp_path):
    done = voke("audit", "export", "-o", str(tmp_path), "--json")
    assert done.exit_code == 2
    assert json.loads(done.stdout)["error"]["message"].startswith(f"--output {tmp_path}: is a directory")


def test_a_link_is_written_through_not_replaced(tmp_path):
    real = tmp_path / "reports" / "drill.html"
    real.parent.mkdir()
    real.write_text("old\n")
    link = tmp_path / "latest.html"
    link.symlink_to(real)
    write_output(link, "--output", lambda out: out.write(b"new\n"))
    assert link.is_symlink() and real.read_text() == "new\n"


def test_a_read_only_or_full_disk_is_exit_4_wherever_it_shows(tmp_path, monkeypatch):
    import tempfile

    def refused(*args, **kwargs):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS))

    monkeypatch.setattr(tempfile, "mkstemp", refused)  # the scratch file cannot even be made
    with pytest.raises(OSError) as info:  # the top level makes it exit 4 with the path
        write_output(tmp_path / "badge.svg", "--out", lambda out: out.write(b"x"))
    assert info.value.errno == errno.EROFS and info.value.filename == str(tmp_path / "badge.svg")


def test_a_writer_never_sweeps_a_scratch_file_of_its_own(tmp_path, monkeypatch):
    # On NFS flock is per process: this process could lock, and so sweep, its own scratch file.
    from voketag_ops import files

    own = files.Scratch(tmp_path / "rejects.csv", "--rejects")
    monkeypatch.setattr(files.fcntl, "flock", lambda *a: None)  # as if every lock were granted
    with files.Scratch(tmp_path / "rejects.csv", "--rejects") as other:
        assert Path(own.path).exists()
        other.discard()
    own.discard()


def test_dash_is_no_file_name(voke, tmp_path):
    with pytest.raises(UsageError, match="'-' is not stdout here"):
        write_output(Path("-"), "--out", lambda out: out.write(b"x"))
    done = voke("audit", "export", "-o", "-", "--json", cwd=tmp_path)
    assert done.exit_code == 2 and not (tmp_path / "-").exists()


def _sample_answering_into(tmp_path: Path, out: str, answer: Path) -> subprocess.CompletedProcess[bytes]:
    """`voke ingest sample --rows 3 --out OUT --force --json`, its stdout sent to the file ANSWER."""
    env = dict(os.environ, VOKE_HOME=str(tmp_path / "home"))
    command = ["ingest", "sample", "--rows", "3", "--out", out, "--force", "--json"]
    with answer.open("ab") as stdout:
        return subprocess.run(
            [sys.executable, "-m", "voketag_ops", *command],
            stdout=stdout,
            stderr=subprocess.PIPE,
            env=env,
            timeout=120,
        )


@pytest.mark.parametrize("target", ["/dev/stdout", "/proc/self/fd/1", "/dev/stderr"])
def test_an_output_that_is_vokes_own_stdout_or_stderr_sent_to_a_file_is_refused(tmp_path, target):
    # `--out /dev/stdout > result.json`: the path is that regular file; renamed over, it took the
    # place of the answer voke then wrote to the unlinked one (a cron job's JSON was lost).
    answer = tmp_path / "answer.json"
    if target == "/dev/stderr":  # stderr sent to a file of its own here
        errors = tmp_path / "errors.txt"
        env = dict(os.environ, VOKE_HOME=str(tmp_path / "home"))
        with answer.open("wb") as out, errors.open("wb") as err:
            command = ["ingest", "sample", "--rows", "3", "--out", target, "--json"]
            done = subprocess.run(
                [sys.executable, "-m", "voketag_ops", *command], stdout=out, stderr=err, env=env, timeout=120
            )
    else:
        done = _sample_answering_into(tmp_path, target, answer)
    assert done.returncode == 2, done.stderr
    own = "stderr" if target.endswith("stderr") else "stdout"
    document = json.loads(answer.read_text())  # the one answer, intact
    assert (
        document["ok"] is False and f"is voke's own {own}; name another file" in document["error"]["message"]
    )


def test_another_name_of_the_file_stdout_goes_to_is_written_as_any_file(tmp_path):
    # A hard link of stdout's file is another name: renamed over, it leaves the answer's file alone.
    answer, other = tmp_path / "a.json", tmp_path / "b.csv"
    answer.write_text("")
    os.link(answer, other)
    done = _sample_answering_into(tmp_path, str(other), answer)
    assert done.returncode == 0, done.stderr
    assert json.loads(answer.read_text())["ok"] is True and other.read_text().startswith("tag_id,")
