"""One contract for the ServiceRuntime port, run against LocalServiceRuntime (real local
service processes) and CloudRunRuntime talking, through the real google-cloud-run client,
to the in-process Cloud Run fake. Health is real in both: a fresh PostgreSQL login with
the credential the instance / revision is pinned to."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import signal
import stat
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest

from voketag_ops.errors import HealthCheckError, RestartError
from voketag_ops.ports import ServiceRuntime

pytestmark = pytest.mark.pg
SECRET = "db-contract"


@dataclass
class Setup:
    runtime: Any
    store: Any
    fake: Any = None


def _versions(store: Any, good: dict[str, Any]) -> None:
    store.create(SECRET)
    store.add_version(SECRET, json.dumps(good).encode())  # 1: works
    store.add_version(
        SECRET, json.dumps({**good, "password": "wrong-" + good["password"]}).encode()
    )  # 2: rejected
    store.add_version(SECRET, json.dumps(good).encode())  # 3: works
    store.add_version(SECRET, json.dumps(good).encode())  # 4: disabled below
    store.set_state(SECRET, 4, "disabled")


@pytest.fixture(params=["local", "gcp"])
def setup(request: pytest.FixtureRequest, platform: Any, tmp_path: Path) -> Iterator[Setup]:
    good = json.loads(platform.store().access("db-app", "current"))
    if request.param == "local":
        from voketag_ops.adapters.local.secrets import LocalSecretStore
        from voketag_ops.adapters.local.services import LocalServiceRuntime

        home = tmp_path / "home"
        store = LocalSecretStore(home)
        _versions(store, good)
        runtime = LocalServiceRuntime(home, {"svc-a": SECRET, "svc-b": SECRET}, start_timeout=5)
        runtime.deploy_many({"svc-a": (SECRET, 1), "svc-b": (SECRET, 1)})
        try:
            yield Setup(runtime, store)
        finally:
            runtime.stop_all()
        return
    pytest.importorskip("google.cloud.run_v2")
    from voketag_ops.adapters.gcp.run import CloudRunRuntime
    from voketag_ops.adapters.gcp.secrets import GcpSecretStore
    from voketag_ops.testing.gcp_fakes import FakeGcp

    with FakeGcp() as fake:
        ctx = fake.context()
        store = GcpSecretStore(ctx)
        _versions(store, good)
        for name in ("svc-a", "svc-b"):
            fake.run.add_service(name, SECRET, 1)
        runtime = CloudRunRuntime(
            ctx, {"svc-a": SECRET, "svc-b": SECRET}, health_timeout=1.0, sleep=lambda s: None
        )
        yield Setup(runtime, store, fake)


def _state(runtime: Any) -> dict[str, tuple[int | None, bool | None]]:
    return {s.name: (s.secret_version, s.healthy) for s in runtime.services()}


def test_implements_the_port(setup):
    assert isinstance(setup.runtime, ServiceRuntime)


def test_services_report_their_pinned_version_and_health(setup):
    assert _state(setup.runtime) == {"svc-a": (1, True), "svc-b": (1, True)}
    assert setup.runtime.health("svc-a") is True
    assert setup.runtime.pinned_versions(SECRET) >= {1}
    assert all(s.url and s.instance for s in setup.runtime.services())


def test_deploy_pins_a_new_version_and_moves_traffic(setup):
    info = setup.runtime.deploy("svc-a", SECRET, 3)
    assert info.secret_version == 3 and info.healthy is True and info.name == "svc-a"
    assert _state(setup.runtime) == {"svc-a": (3, True), "svc-b": (1, True)}
    assert 3 in setup.runtime.pinned_versions(SECRET)
    assert 3 in setup.runtime.live_versions(SECRET) <= setup.runtime.pinned_versions(SECRET)
    assert setup.runtime.serving_version("svc-a", SECRET) == 3
    assert setup.runtime.serving_version("svc-b", SECRET) == 1
    assert setup.runtime.serving_version("svc-a", "some-other-secret") is None
    assert set(setup.runtime.live_pins("svc-b", SECRET).values()) == {1}  # (`dr check`'s connections)
    assert 3 in setup.runtime.live_pins("svc-a", SECRET).values()
    assert set(setup.runtime.live_pins("svc-a", "some-other-secret").values()) == {None}


def test_deploying_the_serving_version_again_changes_nothing(setup):
    before = {s.name: s.instance for s in setup.runtime.services(check=False)}
    setup.runtime.deploy("svc-a", SECRET, 1)
    after = {s.name: s.instance for s in setup.runtime.services(check=False)}
    assert after == before


def test_an_unhealthy_version_raises_and_the_old_one_keeps_serving(setup):
    if setup.fake is None:  # the unhealthy instance is waited out: 2 s, not the 5 a start may take here
        setup.runtime.start_timeout = 2.0  # (the Cloud Run twin waits its health_timeout, 1 s)
    with pytest.raises(HealthCheckError):
        setup.runtime.deploy("svc-a", SECRET, 2)
    assert _state(setup.runtime)["svc-a"] == (1, True)


def test_a_version_that_cannot_be_read_fails_the_start_and_the_old_one_keeps_serving(setup):
    with pytest.raises(RestartError):
        setup.runtime.deploy("svc-a", SECRET, 4)
    assert _state(setup.runtime)["svc-a"] == (1, True)
    if setup.fake is not None:  # Cloud Run keeps the failed revision's template: put back on the serving one
        from voketag_ops.testing.gcp_fakes import template_secret_refs

        assert template_secret_refs(setup.fake.run.services["svc-a"].template) == [(SECRET, "1")]


def test_deploy_many_and_back(setup):
    setup.runtime.deploy_many({"svc-a": (SECRET, 3), "svc-b": (SECRET, 3)})
    assert _state(setup.runtime) == {"svc-a": (3, True), "svc-b": (3, True)}
    setup.runtime.deploy_many({"svc-a": (SECRET, 1), "svc-b": (SECRET, 1)})
    assert _state(setup.runtime) == {"svc-a": (1, True), "svc-b": (1, True)}


def test_a_deploy_keeps_what_the_serving_revision_reads_of_other_secrets(platform):
    """A rolled-back deploy of one secret leaves the service's template pinned to a version
    since disabled; the next deploy (another secret) builds on the serving revision instead."""
    pytest.importorskip("google.cloud.run_v2")
    from voketag_ops.adapters.gcp.run import CloudRunRuntime
    from voketag_ops.adapters.gcp.secrets import GcpSecretStore
    from voketag_ops.testing.gcp_fakes import FakeGcp

    good = json.loads(platform.store().access("db-app", "current"))
    with FakeGcp() as fake:
        ctx = fake.context()
        store = GcpSecretStore(ctx)
        _versions(store, good)
        store.create("api-key")
        for _ in range(2):
            store.add_version("api-key", json.dumps(good).encode())
        fake.run.add_service("svc-a", SECRET, 1, others={"api-key": 1})
        runtime = CloudRunRuntime(
            ctx, {"svc-a": SECRET}, readers={"api-key": ["svc-a"]}, health_timeout=1.0, sleep=lambda s: None
        )
        with pytest.raises(HealthCheckError):  # version 2 does not log in: traffic stays on 1
            runtime.deploy("svc-a", SECRET, 2)
        store.set_state(SECRET, 2, "disabled")  # what the rotation's rollback does next
        # and the service's template is the serving revision's again, for anyone's next deploy
        from voketag_ops.testing.gcp_fakes import template_secret_refs

        assert sorted(template_secret_refs(fake.run.services["svc-a"].template)) == [
            ("api-key", "1"),
            (SECRET, "1"),
        ]
        info = runtime.deploy("svc-a", "api-key", 2)
        assert info.healthy and info.secret_version == 2
        assert sorted(fake.run.pinned("svc-a")) == [("api-key", "2"), (SECRET, "1")]


def test_a_local_deploy_of_another_secret_at_the_serving_version_number_starts_an_instance(
    platform, tmp_path
):
    """A local instance reads one secret: version 1 of another one is not what it serves."""
    from voketag_ops.adapters.local.secrets import LocalSecretStore
    from voketag_ops.adapters.local.services import LocalServiceRuntime

    good = json.loads(platform.store().access("db-app", "current"))
    store = LocalSecretStore(tmp_path / "home")
    _versions(store, good)
    store.create("db-other")
    store.add_version("db-other", json.dumps(good).encode())
    runtime = LocalServiceRuntime(tmp_path / "home", {"svc-a": SECRET}, start_timeout=5)
    try:
        first = runtime.deploy("svc-a", SECRET, 1)
        moved = runtime.deploy("svc-a", "db-other", 1)
        assert moved.instance != first.instance and moved.healthy
        assert runtime.serving_version("svc-a", "db-other") == 1
        assert runtime.serving_version("svc-a", SECRET) is None
    finally:
        runtime.stop_all()


def test_a_service_process_no_registry_lists_is_stopped_by_the_next_runtime_call(tmp_path):
    """A voke killed between starting an instance and writing the registry left it running
    where `env down` and `destroy` never looked."""
    import subprocess
    import sys

    from voketag_ops.adapters.local.services import LocalServiceRuntime

    home = tmp_path / "home"
    orphan = subprocess.Popen(  # what its command line says is all that counts
        [sys.executable, "-c", "import time; time.sleep(60)", "voketag_ops.adapters.local.service_app",
         "--home", str(home)],
    )  # fmt: skip
    other = subprocess.Popen(  # another home's: not this runtime's to stop
        [sys.executable, "-c", "import time; time.sleep(60)", "voketag_ops.adapters.local.service_app",
         "--home", str(tmp_path / "elsewhere")],
    )  # fmt: skip
    try:
        for proc in (orphan, other):  # exec'd: until then /proc shows pytest's command line, not theirs
            while b"service_app" not in Path(f"/proc/{proc.pid}/cmdline").read_bytes():
                time.sleep(0.01)
        LocalServiceRuntime(home, {"svc-a": SECRET}).stop_all()
        assert orphan.wait(timeout=10) is not None
        assert other.poll() is None
    finally:
        for proc in (orphan, other):
            proc.kill()
            proc.wait()


def _fake_service(home: Path, instance: str, **popen: Any) -> Any:
    """A process whose command line is that of INSTANCE of HOME (what counts), once exec'd."""
    import subprocess
    import sys

    proc = subprocess.Popen(
        [sys.executable, "-c", "import time; time.sleep(60)", "voketag_ops.adapters.local.service_app",
         "--instance", instance, "--home", str(home)],
        **popen,
    )  # fmt: skip
    while b"service_app" not in Path(f"/proc/{proc.pid}/cmdline").read_bytes():
        time.sleep(0.01)  # until exec'd /proc shows pytest's command line
    return proc


def _registry_listing(home: Path, instances: dict[str, tuple[int, str]]) -> None:
    """Write HOME's registry with service -> (pid, instance) serving, as a killed service left it."""
    services = {
        name: {
            "secret": SECRET,
            "version": 1,
            "active": {"instance": instance, "pid": pid, "port": 1, "version": 1, "secret": SECRET,
                       "role": "serving"},
            "others": [],
        }
        for name, (pid, instance) in instances.items()
    }  # fmt: skip
    (home / "services").mkdir(parents=True, exist_ok=True)
    (home / "services" / "registry.json").write_text(json.dumps({"services": services}))


def test_a_registered_pid_now_another_homes_or_instances_process_is_left_alone(tmp_path):
    """A service was killed and its pid, still in the registry, is now another environment's
    service, or this home's under another instance name: `env down` stops neither."""
    from voketag_ops.adapters.local.services import LocalServiceRuntime

    home = tmp_path / "home"
    elsewhere = _fake_service(tmp_path / "elsewhere", "svc-a-v1-aaaaaa")
    renamed = _fake_service(home, "svc-b-v1-bbbbbb")
    try:
        _registry_listing(
            home, {"svc-a": (elsewhere.pid, "svc-a-v1-aaaaaa"), "svc-b": (renamed.pid, "svc-b-v1-cccccc")}
        )
        runtime = LocalServiceRuntime(home, {"svc-a": SECRET, "svc-b": SECRET})
        assert [s.instance for s in runtime.services(check=False)] == [None, None]
        assert runtime.stop_all(timeout=0.5) == []
        assert elsewhere.poll() is None and renamed.poll() is None
    finally:
        for proc in (elsewhere, renamed):
            proc.kill()
            proc.wait()


@pytest.mark.skipif(os.geteuid() != 0, reason="starts a process as another user")
def test_a_service_of_this_home_another_user_runs_is_named_not_left_running(tmp_path):
    """A service process of this very home and instance that another user runs (root started
    it on this user's VOKE_HOME) cannot be stopped by the owner: one line naming the pid and
    its owner (exit 3), not a traceback (EPERM, exit 70), nor a service silently left up."""
    import subprocess
    import sys
    import tempfile

    home = Path(tempfile.mkdtemp(prefix="voke-other-user-"))  # pytest's tmp_path: root's only
    home.chmod(0o777)
    root_s = _fake_service(home, "svc-a-v1-aaaaaa")
    try:
        _registry_listing(home, {"svc-a": (root_s.pid, "svc-a-v1-aaaaaa")})
        (home / "services").chmod(0o777)
        (home / "services" / "registry.json").chmod(0o666)
        code = (  # imported first: this Python's own files may be root's only
            "import os, sys; from pathlib import Path\n"
            "from voketag_ops.adapters.local.services import LocalServiceRuntime\n"
            "from voketag_ops.errors import ConfigError\n"
            "os.setuid(65534)\n"
            "try:\n"
            f"    LocalServiceRuntime(Path(sys.argv[1]), {{'svc-a': {SECRET!r}}}).stop_all(timeout=0.5)\n"
            "except ConfigError as exc:\n"
            "    print(exc.message, '|', exc.hint)\n"
        )
        done = subprocess.run(
            [sys.executable, "-c", code, str(home)], capture_output=True, text=True, timeout=60
        )
        assert done.returncode == 0, done.stderr
        said = done.stdout.strip()
        assert f"cannot signal service process {root_s.pid}: it runs as uid 0 (root), not as you" in said
        assert f"stop it as root: kill {root_s.pid}" in said
        assert root_s.poll() is None
    finally:
        root_s.kill()
        root_s.wait()
        shutil.rmtree(home)


def test_stopping_orphans_leaves_what_serves_alone(setup):
    """Only what a killed deploy left starting is stopped (rotate's workflow tests kill one)."""
    assert setup.runtime.stop_orphans() == []
    assert _state(setup.runtime) == {"svc-a": (1, True), "svc-b": (1, True)}


# A deploy whose voke is killed (SIGKILL, made deterministic here) once the registry moved traffic
# to the new instance and before the old one got its SIGTERM: the old one is left listed draining.
KILLED_AT_DRAIN = """
import os, signal, sys
from pathlib import Path
from voketag_ops.adapters.local import services
real = services._signal
services._signal = lambda pid, sig: os._exit(9) if sig == signal.SIGTERM else real(pid, sig)
runtime = services.LocalServiceRuntime(Path(sys.argv[1]), {"svc-a": sys.argv[2]}, start_timeout=5, drain_seconds=0)
runtime.deploy("svc-a", sys.argv[2], 3)
"""


def _killed_at_drain(platform: Any, tmp_path: Path) -> tuple[Any, dict[str, Any]]:
    """A home whose svc-a serves version 3 and whose version-1 instance a killed voke moved
    traffic off without telling it to drain; its runtime and that instance's record."""
    import subprocess
    import sys

    from voketag_ops.adapters.local.secrets import LocalSecretStore
    from voketag_ops.adapters.local.services import LocalServiceRuntime, _alive

    home = tmp_path / "home"
    _versions(LocalSecretStore(home), json.loads(platform.store().access("db-app", "current")))
    runtime = LocalServiceRuntime(home, {"svc-a": SECRET}, start_timeout=5, drain_seconds=0)
    runtime.deploy("svc-a", SECRET, 1)
    killed = subprocess.run(
        [sys.executable, "-c", KILLED_AT_DRAIN, str(home), SECRET], capture_output=True, text=True, timeout=60
    )
    assert killed.returncode == 9, killed.stderr
    entry = json.loads((home / "services" / "registry.json").read_text())["services"]["svc-a"]
    [old] = entry["others"]
    assert entry["active"]["version"] == 3 and old["role"] == "draining" and old["version"] == 1
    assert _alive(old["pid"], home, old["instance"])
    return runtime, old


def _exits(runtime: Any, inst: dict[str, Any]) -> bool:
    """Whether INST's process exits (drained: 0 s here) within a generous bound."""
    from voketag_ops.adapters.local.services import _alive

    deadline = time.monotonic() + 15
    while _alive(inst["pid"], runtime.home, inst["instance"]) and time.monotonic() < deadline:
        time.sleep(0.05)
    return not _alive(inst["pid"], runtime.home, inst["instance"])


@pytest.mark.parametrize("then", ["deploy", "env up", "stop_orphans"])
def test_an_instance_a_killed_deploy_never_told_to_drain_is_ended_by_the_next_reap(platform, tmp_path, then):
    """Left draining for good, it kept reading version 1 (an old DB credential) and pinned it
    against `rotate cleanup`: the next deploy (even a no-op), `env up` or rollback tells it."""
    runtime, old = _killed_at_drain(platform, tmp_path)
    try:
        if then == "deploy":
            assert runtime.deploy("svc-a", SECRET, 3).secret_version == 3
        elif then == "env up":
            assert runtime.ensure_started({SECRET: 3}) == []
        else:
            assert runtime.stop_orphans() == []  # told to drain, not stopped: it may still answer
        assert _exits(runtime, old)
        assert runtime.pinned_versions(SECRET) == {3}
        assert _state(runtime) == {"svc-a": (3, True)}
    finally:
        runtime.stop_all()


def test_an_instance_draining_for_longer_than_a_drain_pins_nothing_and_is_stopped(platform, tmp_path):
    """Still running long after its drain should have ended (never told, or hung): it serves
    nothing, so it keeps no version from cleanup, and the next reap stops it at once."""
    from voketag_ops.adapters.local.services import _alive

    runtime, old = _killed_at_drain(platform, tmp_path)
    try:
        registry = runtime.home / "services" / "registry.json"
        doc = json.loads(registry.read_text())
        since = datetime.now(timezone.utc) - timedelta(hours=1)
        doc["services"]["svc-a"]["others"][0]["draining_since"] = since.isoformat().replace("+00:00", "Z")
        registry.write_text(json.dumps(doc))  # as if the voke had been killed an hour ago
        assert runtime.pinned_versions(SECRET) == {3} and runtime.live_versions(SECRET) == {3}
        assert runtime.stop_orphans() == [old["instance"]]
        assert not _alive(old["pid"], runtime.home, old["instance"])
        assert _state(runtime) == {"svc-a": (3, True)}
        assert old["draining_since"]  # dated by the deploy that moved traffic off it
    finally:
        runtime.stop_all()


def test_a_new_instance_never_takes_a_port_the_environment_reserves(platform, tmp_path, monkeypatch):
    """A failback repoints the services while the old leader is stopped: its port is free then,
    and an instance that took it kept that node from starting again (exit 7, "port in use")."""
    from voketag_ops.adapters.local import postgres
    from voketag_ops.adapters.local.secrets import LocalSecretStore
    from voketag_ops.adapters.local.services import LocalServiceRuntime

    home = tmp_path / "home"
    _versions(LocalSecretStore(home), json.loads(platform.store().access("db-app", "current")))
    stopped_node = postgres.pick_free_port()
    monkeypatch.setattr(postgres, "listen_ports", lambda: [range(stopped_node, stopped_node + 1)])
    # (with a share, its only port reserved is exit 4: no fallback outside it)
    monkeypatch.delenv("VOKE_PORT_SHARE", raising=False)
    runtime = LocalServiceRuntime(
        home, {"svc-a": SECRET}, start_timeout=5, reserved_ports=lambda: [stopped_node]
    )
    try:
        assert runtime.deploy("svc-a", SECRET, 1).healthy
        active = json.loads((home / "services" / "registry.json").read_text())["services"]["svc-a"]["active"]
        assert active["port"] != stopped_node
    finally:
        runtime.stop_all()


def test_the_platform_reserves_its_nodes_and_restored_instances_ports(platform):
    from voketag_ops.adapters.local import dr

    nodes = {int(p) for p in platform.env.require_state().ports.values()}
    restores = dr.restores_dir(platform.env)
    created = not restores.exists()
    restores.mkdir(exist_ok=True)
    meta = restores / "reserved-port-test.json"
    meta.write_text(json.dumps({"name": "reserved-port-test", "port": 1, "state": "stopped"}))
    try:
        assert set(platform.runtime().reserved_ports()) == nodes | {1}
    finally:
        meta.unlink()
        if created:
            restores.rmdir()


def test_env_up_replaces_a_service_that_runs_but_does_not_answer(platform, monkeypatch):
    """A SIGSTOPped (hung) instance is alive, so `env up` left it serving nothing; it now gets a
    new instance on the same version, and the hung process is killed once that one serves."""
    import signal

    from voketag_ops.adapters.local import services

    monkeypatch.setattr(services, "ANSWER_SECONDS", 1.0)  # (the healthy ones answer in milliseconds)
    runtime = platform.runtime()
    name = next(iter(runtime.consumers))
    registry = runtime.home / "services" / "registry.json"
    hung = json.loads(registry.read_text())["services"][name]["active"]
    os.kill(hung["pid"], signal.SIGSTOP)
    try:
        assert runtime.not_answering() == {name: hung["instance"]}
        report = platform.up()
        assert report.services_restarted == [name] and report.services_started == []
        assert not report.already_running
        assert _exits(runtime, hung)
        now = json.loads(registry.read_text())["services"][name]["active"]
        assert now["instance"] != hung["instance"] and now["version"] == hung["version"]
        assert runtime.health(name) and runtime.not_answering() == {}
        assert platform.up().already_running  # answering again: nothing to do
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(hung["pid"], signal.SIGKILL)


def test_a_503_is_an_answer_and_a_listener_that_never_replies_is_not():
    """`env up` replaces only instances that give no answer: one whose database login fails says
    503 and is left for `env status` and the rotation commands."""
    import socket
    import threading
    from http.server import BaseHTTPRequestHandler, HTTPServer

    from voketag_ops.adapters.local.services import http_answers

    class Unhealthy(BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(503)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = HTTPServer(("127.0.0.1", 0), Unhealthy)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen()  # the kernel accepts; nobody reads
    try:
        assert http_answers(f"http://127.0.0.1:{server.server_port}/health", 5)
        assert not http_answers(f"http://127.0.0.1:{silent.getsockname()[1]}/health", 0.5)
    finally:
        server.shutdown()
        server.server_close()
        silent.close()


def test_an_instance_that_answers_again_before_its_replacement_is_kept(platform, monkeypatch):
    """Found by review: woken (SIGCONT) after `env up` took it for hung, it passed the deploy's
    health check, stayed the serving instance, and was then SIGKILLed: no service at all."""
    import signal

    from voketag_ops.adapters.local import services

    monkeypatch.setattr(services, "ANSWER_SECONDS", 1.0)
    runtime = platform.runtime()
    name, secret = next(iter(runtime.consumers.items()))
    registry = runtime.home / "services" / "registry.json"
    woken = json.loads(registry.read_text())["services"][name]["active"]
    os.kill(woken["pid"], signal.SIGSTOP)
    try:
        hung = runtime.not_answering()
    finally:
        os.kill(woken["pid"], signal.SIGCONT)
    assert hung == {name: woken["instance"]}
    version = platform.store().get(secret).aliases["current"]
    assert runtime.ensure_started({secret: version}, replace=hung) == []
    active = json.loads(registry.read_text())["services"][name]["active"]
    assert active["instance"] == woken["instance"] and runtime.health(name)
    # and a stale id (another voke replaced that instance meanwhile) replaces nothing
    assert runtime.ensure_started({secret: version}, replace={name: "gone-instance"}) == []
    assert json.loads(registry.read_text())["services"][name]["active"]["instance"] == woken["instance"]


def test_logs_of_instances_gone_are_removed_when_empty_and_kept_a_while_when_not(tmp_path, monkeypatch):
    """Every instance opens a log; a soak of rotations and failovers left ~19 empty ones a round,
    978 after 52 rounds, none ever removed."""
    from voketag_ops.adapters.local import services

    runtime = services.LocalServiceRuntime(tmp_path / "home", {})
    logs = runtime.dir / "logs"
    logs.mkdir(parents=True)
    (logs / "svc-a-v1-aaaaaa.log").write_text("")
    for age, name in enumerate(["svc-a-v2-bbbbbb", "svc-a-v3-cccccc", "svc-a-v4-dddddd"]):
        (logs / f"{name}.log").write_text("Traceback: what the instance said\n")
        os.utime(logs / f"{name}.log", (1_000_000 + age, 1_000_000 + age))
    monkeypatch.setattr(services, "KEPT_LOGS", 2)
    assert runtime.stop_orphans() == []  # any registry update prunes
    assert sorted(p.name for p in logs.iterdir()) == ["svc-a-v3-cccccc.log", "svc-a-v4-dddddd.log"]


def test_an_instances_log_is_private_whatever_the_umask(platform, tmp_path):
    """Found by a review under `umask 000`: every other file voke keeps was 0600, the service
    instances' logs 0666."""
    from voketag_ops.adapters.local.secrets import LocalSecretStore
    from voketag_ops.adapters.local.services import LocalServiceRuntime

    home = tmp_path / "home"
    _versions(LocalSecretStore(home), json.loads(platform.store().access("db-app", "current")))
    runtime = LocalServiceRuntime(home, {"svc-a": SECRET}, start_timeout=5)
    before = os.umask(0)
    try:
        runtime.deploy("svc-a", SECRET, 1)
        [log] = (runtime.dir / "logs").iterdir()  # (an empty one goes with its instance)
        assert stat.S_IMODE(log.stat().st_mode) == 0o600
    finally:
        os.umask(before)
        runtime.stop_all()


def test_a_registry_write_on_a_full_disk_names_the_registry_and_leaves_no_temporary_file(
    tmp_path, monkeypatch, caplog
):
    # `env down` at 0 free warned "could not update the service registry: [Errno 28] ..." and
    # left services/.registry.json.tmp.
    from voketag_ops import files
    from voketag_ops.adapters.local import services

    runtime = services.LocalServiceRuntime(tmp_path / "home", {})
    assert runtime.stop_all() == []  # writes the registry
    before = {p.name: p.read_bytes() for p in runtime.dir.iterdir()}

    def disk_full(fd: int, data: bytes) -> None:
        os.write(fd, data[:5])
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(files, "write_all", disk_full)
    with pytest.raises(OSError) as failed, runtime._registry() as doc:
        doc["services"]["svc-a"] = {"active": None, "others": []}
    assert (failed.value.errno, failed.value.filename) == (errno.ENOSPC, str(runtime.registry_file))
    assert {p.name: p.read_bytes() for p in runtime.dir.iterdir()} == before
    # env down: the instances are stopped whatever the registry says, so a warning naming it
    assert runtime.stop_all() == []
    assert (
        f"could not update the service registry {runtime.registry_file}: No space left on device"
        in caplog.text
    )
    assert {p.name: p.read_bytes() for p in runtime.dir.iterdir()} == before


def test_an_instance_keeps_nothing_of_the_callers_environment(platform, tmp_path, monkeypatch):
    """Found by a review: every variable of the shell that ran voke (a webhook URL, PGPASSWORD,
    a CI job's tokens) stayed in each service instance's /proc/PID/environ while it ran."""
    from voketag_ops.adapters.local.secrets import LocalSecretStore
    from voketag_ops.adapters.local.services import LocalServiceRuntime

    monkeypatch.setenv("PGPASSWORD", "pg-pass-of-the-caller-4242")
    monkeypatch.setenv("VOKE_ROTATION__NOTIFY_WEBHOOK", "http://127.0.0.1:1/hook/token-of-the-caller-4242")
    home = tmp_path / "home"
    _versions(LocalSecretStore(home), json.loads(platform.store().access("db-app", "current")))
    runtime = LocalServiceRuntime(home, {"svc-a": SECRET}, start_timeout=5)
    try:
        info = runtime.deploy("svc-a", SECRET, 1)
        assert info.healthy  # it still starts, imports voke and reads its credential
        pid = json.loads(runtime.registry_file.read_text())["services"]["svc-a"]["active"]["pid"]
        environ = Path(f"/proc/{pid}/environ").read_bytes()
    finally:
        runtime.stop_all()
    assert b"-of-the-caller-4242" not in environ
    assert b"TZ=UTC" in environ


@contextlib.contextmanager
def _interrupted_deploys(runtime: Any, *, second: bool) -> Iterator[tuple[threading.Event, list[str]]]:
    """Ctrl-C in the main thread as svc-a's deploy starts (a Ctrl-C does not stop a worker
    thread); SECOND: two more once the wait for the deploys holds signals, svc-a's deploy going
    on only once the event yielded is set. Yields it and the services whose deploy ended."""
    from voketag_ops import interrupts

    real, go = runtime.deploy, threading.Event()
    ended: list[str] = []
    workers: list[threading.Thread] = []

    def wait_held() -> Any:  # the hold that gives way: the wait's, not the submits'; None if none came
        while not go.is_set():
            held = getattr(signal.getsignal(signal.SIGINT), "__self__", None)
            if isinstance(held, interrupts.Held) and held._give_way_after == 1:
                return held
            time.sleep(0.01)
        return None

    def deploy(name: str, secret: str, version: int) -> Any:
        if name == "svc-a":
            workers.append(threading.current_thread())
            os.kill(os.getpid(), signal.SIGINT)
            if second:
                held = wait_held()
                if held is not None:
                    os.kill(os.getpid(), signal.SIGINT)  # held
                    while not held.fired:  # (two signals at once would be taken as one)
                        time.sleep(0.01)
                    os.kill(os.getpid(), signal.SIGINT)  # gives way
                go.wait()
        info = real(name, secret, version)
        ended.append(name)
        return info

    runtime.deploy = deploy
    try:
        yield go, ended
    finally:
        go.set()
        for worker in workers:
            worker.join()
        del runtime.deploy


def test_an_interrupted_deploy_many_waits_for_the_deploys_under_way(setup):
    # What the caller reports after the interrupt (dr failover's `redeployed`) is asked of the
    # runtime at once: a deploy still running in its thread would land after the report.
    with _interrupted_deploys(setup.runtime, second=False) as (_, ended):
        with pytest.raises(KeyboardInterrupt):
            setup.runtime.deploy_many({"svc-a": (SECRET, 3), "svc-b": (SECRET, 3)})
        assert "svc-a" in ended
        assert _state(setup.runtime)["svc-a"] == (3, True)


def test_a_third_signal_gives_way_while_deploys_are_waited_for(setup):
    with _interrupted_deploys(setup.runtime, second=True) as (go, ended):
        with pytest.raises(KeyboardInterrupt):
            setup.runtime.deploy_many({"svc-a": (SECRET, 3), "svc-b": (SECRET, 3)})
        assert "svc-a" not in ended  # a deploy that hangs no longer holds the operator
        go.set()
    assert _state(setup.runtime)["svc-a"] == (3, True)
