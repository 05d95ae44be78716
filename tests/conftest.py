"""Shared fixtures. One real local environment (primary + replica + archive) per test
session; tests that need PostgreSQL isolate themselves with a database of their own."""

from __future__ import annotations

import io
import json
import os
import signal
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from hypothesis import settings

from voketag_ops.cli.app import run
from voketag_ops.config import PORT_SHARE_ENV

# No wall-clock limit in a test: hypothesis' per-example deadline (200 ms) is one, and a busy
# CI host can pass it with a correct example. Every property test runs without it.
settings.register_profile("voke", deadline=None)
settings.load_profile("voke")

# Tests send themselves Ctrl-C and expect what a terminal gets. A shell's background job (`cmd &`
# in a script) starts with SIGINT ignored, and Python then installs no handler of its own.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)


@dataclass
class Result:
    """What one in-process `voke` invocation produced."""

    exit_code: int
    stdout: str
    stderr: str

    @property
    def json(self) -> Any:
        return json.loads(self.stdout)


def base_environ(home: Path, **extra: str) -> dict[str, str]:
    """A clean environment: no VOKE_* or config leaking in from the developer's shell, but for
    this xdist worker's share of the ports (`_ports_of_this_worker`), which a voke the test
    starts as a subprocess must pick from too: build a voke subprocess's environment here."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("VOKE_") or k == PORT_SHARE_ENV}
    env.update({"VOKE_HOME": str(home), "CI": "true"})
    env.update(extra)
    return env


@pytest.fixture(autouse=True, scope="session")
def _no_real_user_home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """No test may read or write the real user's voke home (~/.local/share/voke), where
    settings built without a VOKE_HOME lead. Its stand-in does not exist, as on a fresh
    machine, so code that needs it must make it."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("XDG_DATA_HOME", str(tmp_path_factory.mktemp("xdg") / "data"))
        yield


@pytest.fixture(autouse=True, scope="session")
def _package_compiled() -> None:
    """voke's modules byte-compiled once, as an installed (non-editable) voke's are: the `voke`
    processes tests start (~130 a run) each compiled every module they import again when the
    environment says PYTHONDONTWRITEBYTECODE (some CI runners do), 0.2-0.3 s of CPU apiece.
    (compileall writes atomically: the other worker compiling at once is harmless.)"""
    import compileall

    import voketag_ops

    compileall.compile_dir(Path(voketag_ops.__file__).parent, quiet=2)


@pytest.fixture(autouse=True, scope="session")
def _ports_of_this_worker(worker_id: str) -> Iterator[None]:
    """Each xdist worker's servers listen on its own share of voke's ports (VOKE_PORT_SHARE,
    in this process's environment for in-process runs, and passed on by base_environ to the
    voke subprocesses tests start). voke keeps a service off its own environment's stopped
    nodes' ports, not off another environment's: a service one worker starts could take the
    port of a node the other worker has stopped mid-failover, and that node then could not
    start again (a real "port in use", a failed test). Without xdist: all of them, whatever
    the developer's shell says."""
    with pytest.MonkeyPatch.context() as mp:
        if worker_id.startswith("gw"):
            count = os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1")
            mp.setenv(PORT_SHARE_ENV, f"{int(worker_id[2:])}/{count}")
        else:
            mp.delenv(PORT_SHARE_ENV, raising=False)
        yield


@pytest.fixture(autouse=True, scope="session")
def _internal_errors_traced() -> Iterator[None]:
    """An internal error (exit 70) in an in-process run prints one line, as it must; its
    traceback goes to the test's real stderr too, which pytest shows beside a failure: a
    flaky exit 70 is then diagnosable from the CI log alone."""
    import sys
    import traceback

    from voketag_ops.cli import app
    from voketag_ops.redact import redact

    original = app._internal_error

    def traced(output: Any, exc: BaseException, debug: bool) -> int:
        text = "".join(traceback.format_exception(exc))
        sys.__stderr__.write("voke internal error (test harness):\n" + redact(text))
        return original(output, exc, debug)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(app, "_internal_error", traced)
        yield


@pytest.fixture(scope="session")
def make_environ():
    """base_environ as a fixture (test modules cannot import conftest); for the environment of
    every voke subprocess a test starts."""
    return base_environ


@pytest.fixture
def voke(tmp_path: Path):
    """Call voke in-process: voke("env", "status", "--json", environ=..., cwd=...)."""

    def invoke(*args: str, environ: dict[str, str] | None = None, cwd: Path | None = None) -> Result:
        out, err = io.StringIO(), io.StringIO()
        environ = environ if environ is not None else base_environ(tmp_path / "home")
        code = run(list(args), stdout=out, stderr=err, environ=environ, cwd=cwd or tmp_path)
        return Result(code, out.getvalue(), err.getvalue())

    return invoke


@pytest.fixture(autouse=True)
def _script_signals_forgotten() -> Iterator[None]:
    """A test that plays the `voke` script's signal handling (or sends itself SIGTERM) must
    not leave it to later in-process tests."""
    from voketag_ops import interrupts

    yield
    interrupts.Terminated.received = ""
    interrupts._installed = False
    interrupts._started = False
    interrupts._settled = False
    interrupts._decided = None
    interrupts._outcome = ""
    interrupts._command = None


@pytest.fixture(autouse=True)
def _secrets_registered_by_the_test_forgotten() -> Iterator[None]:
    """Secret values one test's in-process runs registered (a short URL password's piece such
    as "@2") are masked in that test's output only, as they are in one `voke` process: left
    registered, "@2" turned a later test's "audit@20" into "audit***0"."""
    from voketag_ops import redact

    before = set(redact._values)
    yield
    with redact._lock:
        redact._values.intersection_update(before)


@pytest.fixture
def script_signals(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Signals handled as the `voke` script handles them (SIGTERM, SIGHUP like Ctrl-C), for one test."""
    import signal

    from voketag_ops import interrupts

    before = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    monkeypatch.setattr(interrupts, "_installed", False)
    monkeypatch.setattr(interrupts, "_started", False)
    monkeypatch.setattr(interrupts, "_settled", False)
    interrupts.install()
    interrupts.started()
    try:
        yield
    finally:
        for signum, handler in before.items():
            signal.signal(signum, handler)


FAST_ROTATION = {
    "VOKE_ROTATION__TEST_INTERVAL": "0.2",
    "VOKE_ROTATION__HEALTH_TIMEOUT": "20",
    "VOKE_LOCAL__SERVICE_DRAIN_SECONDS": "0.5",  # replaced instances still drain, for less long
}


@pytest.fixture
def held_by_another_voke() -> Any:
    """held_by_another_voke(lock_path, "drill pitr pid 1"): a context in which another process
    holds that flock lock and says so, as a running voke does (a lock this process took
    itself would be re-entered, not contended)."""
    import subprocess
    import sys

    @contextmanager
    def hold(path: Path, says: str) -> Iterator[None]:
        code = (
            "import fcntl, os, sys, time; fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT, 0o600);"
            " fcntl.flock(fd, fcntl.LOCK_EX); os.ftruncate(fd, 0); os.pwrite(fd, sys.argv[2].encode(), 0);"
            " print('held', flush=True); time.sleep(60)"
        )
        path.parent.mkdir(parents=True, exist_ok=True)  # as voke's own lock does
        holder = subprocess.Popen(
            [sys.executable, "-c", code, str(path), says], stdout=subprocess.PIPE, text=True
        )
        try:
            assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
            yield
        finally:
            holder.kill()
            holder.wait()

    return hold


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: Any) -> Iterator[None]:
    """Each phase's report on the test item (item.rep_setup, rep_call), for fixtures that
    repair a module's shared environment after a test that failed."""
    outcome = yield
    report = outcome.get_result()
    setattr(item, f"rep_{report.when}", report)


@pytest.fixture(scope="session")
def platform_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("voke-home")


@pytest.fixture(scope="session")
def platform(platform_home: Path) -> Iterator[Any]:
    """The session's shared local platform (PostgreSQL primary + replica + archive,
    application logins, local services), started once and destroyed at the end."""
    from voketag_ops.config import load_config
    from voketag_ops.workflows.env import LocalPlatform

    environ = base_environ(platform_home, VOKE_LOCAL__ARCHIVE_TIMEOUT="5", **FAST_ROTATION)
    plat = LocalPlatform(load_config(environ=environ, cwd=platform_home).settings)
    plat.up()
    try:
        yield plat
    finally:
        plat.destroy(discard_chain=True)


@pytest.fixture(scope="session")
def platform_environ(platform: Any, platform_home: Path) -> dict[str, str]:
    """Environment variables that point voke at the shared platform."""
    return base_environ(platform_home, VOKE_LOCAL__ARCHIVE_TIMEOUT="5", **FAST_ROTATION)


@pytest.fixture(scope="session")
def local_env(platform: Any) -> Any:
    """The shared platform's PostgreSQL environment (LocalEnvironment)."""
    return platform.env


@contextmanager
def fresh_database(local_env: Any, options: str = "") -> Iterator[str]:
    """A new database on the shared primary (created WITH OPTIONS), dropped afterwards."""
    name = f"t_{uuid.uuid4().hex[:12]}"
    primary = local_env.primary()
    with primary.connect() as conn:
        conn.execute(f'create database "{name}" {options}')
    try:
        yield name
    finally:
        with primary.connect() as conn:
            conn.execute(f'drop database if exists "{name}" with (force)')


@pytest.fixture
def database_with(local_env: Any) -> Any:
    """fresh_database for a test module: `with database_with("locale 'C.utf8'") as name:`."""
    return lambda options="": fresh_database(local_env, options)


@pytest.fixture
def pg_database(local_env: Any) -> Iterator[str]:
    """A fresh database on the shared primary, dropped after the test."""
    with fresh_database(local_env) as name:
        yield name
