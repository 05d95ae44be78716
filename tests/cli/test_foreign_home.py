"""A VOKE_HOME another user owns (root with a user's home) is refused by every command that
opens it, before anything in it is read or written; voke's own files or service processes
left there by another user are one-line errors naming them and their owner (exit 3), never
"damaged" nor an internal error."""

from __future__ import annotations

import ctypes
import json
import os
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root to hand files to another user")

OTHER = 65534  # nobody


def _one_line_error(result, *names: str) -> str:
    assert result.exit_code == 3, result.stderr
    assert "Traceback" not in result.stderr and "internal error" not in result.stderr
    (error,) = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert all(name in error for name in names), error
    return result.stderr


@pytest.fixture
def foreign_home(tmp_path: Path) -> Path:
    home = tmp_path / "home"
    home.mkdir(mode=0o700)
    os.chown(home, OTHER, OTHER)
    return home


@pytest.mark.parametrize(
    "args",
    [
        ("env", "status"),
        ("env", "down", "--yes"),
        ("audit", "checkpoint", "--yes"),
        ("audit", "verify"),
        ("drill", "history"),
        ("rotate", "history"),
        ("secrets", "list"),
        ("dr", "status"),
    ],
    ids=" ".join,
)
def test_a_home_owned_by_another_user_is_refused_and_left_untouched(voke, foreign_home, args):
    stderr = _one_line_error(voke(*args), f"VOKE_HOME {foreign_home} is owned by uid {OTHER}", "not by you")
    assert "hint: run voke as " in stderr and f"or chown -R root {foreign_home}" in stderr
    assert list(foreign_home.iterdir()) == []  # nothing made there, nothing audited


def test_config_show_and_doctor_look_at_a_foreign_home_without_refusing(voke, foreign_home):
    assert voke("config", "show").exit_code == 0
    doctor = voke("doctor", "--json")
    assert doctor.exit_code == 1
    (check,) = [c for c in doctor.json["result"]["checks"] if c["name"] == "local environment"]
    assert not check["ok"] and f"owned by uid {OTHER}" in check["detail"]
    assert list(foreign_home.iterdir()) == []


def test_a_home_behind_another_users_directory_names_that_directory(voke, tmp_path, make_environ):
    closed = tmp_path / "closed"
    (closed / "inner").mkdir(parents=True)
    closed.chmod(0o700)
    os.chown(closed, OTHER, OTHER)
    with _as_an_ordinary_user():
        result = voke("env", "status", environ=make_environ(closed / "inner" / "voke"))
    stderr = _one_line_error(
        result, f"{closed / 'inner' / 'voke'} cannot be reached", f"{closed} is owned by uid {OTHER}"
    )
    assert "hint: run voke as " in stderr


# -- root without its file-permission override: an ordinary user's view ------------------------
class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [
        ("effective", ctypes.c_uint32),
        ("permitted", ctypes.c_uint32),
        ("inheritable", ctypes.c_uint32),
    ]


_DAC_AND_KILL = (1, 2, 3, 5)  # CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH, CAP_FOWNER, CAP_KILL


@contextmanager
def _as_an_ordinary_user() -> Iterator[None]:
    """This thread (and the threads it starts) without the capabilities that let root read
    any file and signal any process: root is then refused another user's 0600 file or process,
    as any user is, while the interpreter under /root stays importable (a process under
    another uid could not start it)."""
    libc = ctypes.CDLL(None, use_errno=True)
    header, data = _CapHeader(0x20080522, 0), (_CapData * 2)()  # _LINUX_CAPABILITY_VERSION_3
    if libc.capget(ctypes.byref(header), data) != 0:
        pytest.skip("capget is not available")
    saved = data[0].effective
    data[0].effective &= ~sum(1 << cap for cap in _DAC_AND_KILL)
    if libc.capset(ctypes.byref(header), data) != 0:
        pytest.skip("capset is not permitted")
    try:
        yield
    finally:
        data[0].effective = saved
        assert libc.capset(ctypes.byref(header), data) == 0


# -- another user's files and processes in one's own home -------------------------------------
def _others(path: Path, text: str = "{}") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    path.chmod(0o600)
    os.chown(path, OTHER, OTHER)
    return path


@pytest.mark.parametrize(
    "file, args",
    [
        ("state.json", ("env", "status")),
        ("secrets/db-app.json", ("rotate", "status")),
        ("services/registry.json", ("env", "down", "--yes")),
        ("drills/r1.json", ("drill", "history")),
    ],
    ids=["state", "secret", "registry", "drill-journal"],
)
def test_another_users_file_in_the_home_is_named_with_its_owner(voke, tmp_path, file, args):
    home = tmp_path / "home"
    path = _others(home / file)
    if file.startswith("services/"):  # `down` reads the registry only for an environment
        (home / "state.json").write_text("{}")
    with _as_an_ordinary_user():
        result = voke(*args)
    stderr = _one_line_error(result, f"permission denied on {path}", f"owned by uid {OTHER}")
    assert "damaged" not in stderr and "unreadable" not in stderr
    assert "destroy" not in stderr  # not a reason to reset the environment
    assert f"chown -R root {path}" in stderr


def test_a_service_process_of_another_user_is_named_with_its_owner(voke, tmp_path):
    import time

    home = tmp_path / "home"
    (home / "services").mkdir(parents=True)
    # a stand-in for a service another user started: its command line is that of instance
    # "a" of this home (what makes a registered pid a service of this home)
    other = subprocess.Popen(
        ["/bin/sh", "-c", "sleep 60; :", "voketag_ops.adapters.local.service_app",
         "--instance", "a", "--home", str(home)],
        user=OTHER, group=OTHER,
    )  # fmt: skip
    try:
        while b"service_app" not in Path(f"/proc/{other.pid}/cmdline").read_bytes():
            time.sleep(0.01)  # until exec'd
        registry = {
            "services": {"admin-service": {"active": {"pid": other.pid, "instance": "a"}, "others": []}}
        }
        (home / "services" / "registry.json").write_text(json.dumps(registry))
        with _as_an_ordinary_user():
            result = voke("env", "destroy", "--yes", "--discard-chain")
        stderr = _one_line_error(result, f"service process {other.pid}", f"runs as uid {OTHER}")
        assert f"kill {other.pid}" in stderr
    finally:
        other.kill()
        other.wait()
