"""`voke --env <cloud env> rotate db-password` against the Google Cloud fakes: Secret
Manager, Cloud SQL Admin (users.update applied to the real local PostgreSQL when its
operation is DONE) and Cloud Run (revisions whose /health logs in with the pinned
version). The whole protocol, a kill after every step followed by resume, the refusal
of services reading `latest`, and rollbacks on a failed Cloud SQL operation and on an
unhealthy revision."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("google.cloud.sqladmin_v1beta4")

from voketag_ops.core.rotation import ANNOTATION, STEPS
from voketag_ops.testing.gcp_fakes import FakeGcp, environment_toml, template_secret_refs
from voketag_ops.workflows.rotate import FAULT_ENV, FAULT_EXIT_CODE

pytestmark = pytest.mark.pg
SECRET = "db-cloud"
ROLES = ("capp_a", "capp_b")
SERVICES = ("admin-service", "factory-service")


@pytest.fixture(scope="module")
def cloud(platform: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[FakeGcp, Path]]:
    """The fakes, seeded like a deployed platform, and a voke.toml pointing at them."""
    from voketag_ops.core.rotation import generate_password

    target = platform.db_target()
    target.ensure_roles(owner="capp_owner", roles=ROLES, database="voketag")
    host, port = target.endpoint()
    with FakeGcp() as fake:
        fake.sql.add_instance("voke-db", users=ROLES)
        fake.sql.on_password = target.set_password
        from voketag_ops.adapters.gcp.secrets import GcpSecretStore

        store = GcpSecretStore(fake.context())
        store.create(SECRET)
        versions = []
        for role in reversed(ROLES):
            password = generate_password(32)
            target.set_password(role, password)
            cred = {"username": role, "password": password, "host": host, "port": port, "dbname": "voketag"}
            versions.append(store.add_version(SECRET, json.dumps(cred).encode()).version)
        meta = store.get(SECRET)
        store.update(SECRET, etag=meta.etag, aliases={"current": versions[1], "previous": versions[0]})
        for service in SERVICES:
            fake.run.add_service(service, SECRET, versions[1])
        home = tmp_path_factory.mktemp("cloud-voke")
        env = fake.environment(db_host=host, db_port=port, services=list(SERVICES))
        (home / "voke.toml").write_text(_toml(env))
        yield fake, home


def _toml(env: dict[str, Any], *, own_services: bool = True) -> str:
    """OWN_SERVICES False: the login names none, so it has the platform's (all three)."""
    lines = [
        environment_toml("cloudtest", env),
        "[rotation]",
        "test_interval = 0.1",
        "health_timeout = 5",
        "[rotation.db_users.app]",
        f'secret = "{SECRET}"',
        f"roles = {json.dumps(list(ROLES))}",
        'owner = "capp_owner"',
        'database = "voketag"',
    ]
    if own_services:
        lines.append(f"services = {json.dumps(list(SERVICES))}")
    return "\n".join(lines) + "\n"


def _environ(home: Path, make_environ: Any, **extra: str) -> dict[str, str]:
    return make_environ(home / "state", VOKE_CONFIG=str(home / "voke.toml"), VOKE_ENV="cloudtest", **extra)


def _voke(home: Path, make_environ: Any, *args: str, **extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "voketag_ops", *args],
        capture_output=True,
        text=True,
        env=_environ(home, make_environ, **extra),
        timeout=120,
    )


def assert_consistent(fake: FakeGcp) -> None:
    """No lockout: no rotation in progress, current and previous log in, every service
    serves a revision pinned to `current` and is healthy."""
    from voketag_ops.adapters.gcp.secrets import GcpSecretStore
    from voketag_ops.adapters.gcp.sql import pg_login

    store = GcpSecretStore(fake.context())
    meta = store.get(SECRET)
    assert ANNOTATION not in meta.annotations, meta.annotations.get(ANNOTATION)
    assert "pending" not in meta.aliases
    current = meta.aliases["current"]
    for alias in ("current", "previous"):
        assert pg_login(json.loads(store.access(SECRET, alias))), alias
    for service in SERVICES:
        assert fake.run.pinned(service) == [(SECRET, str(current))], service
        svc = fake.run.services[service]
        assert template_secret_refs(svc.template) == [(SECRET, str(current))], (
            service
        )  # the next deploy's base
        assert len([t for t in svc.traffic if t["percent"]]) == 1
    import urllib.request

    for service in SERVICES:
        with urllib.request.urlopen(f"{fake.rest.endpoint}/run/{service}/health", timeout=10) as resp:
            assert resp.status == 200


def test_rotation_moves_secret_database_and_services_together(cloud, voke, make_environ):
    fake, home = cloud
    environ = _environ(home, make_environ)
    result = voke("rotate", "db-password", "--yes", "--json", environ=environ)
    assert result.exit_code == 0, result.stdout + result.stderr
    report = result.json["result"]
    assert report["status"] == "succeeded", report
    assert [s["name"] for s in report["steps"]] == list(STEPS)
    new = report["new_version"]
    for service in SERVICES:
        assert fake.run.pinned(service) == [(SECRET, str(new))]
        assert fake.run.serving(service).startswith(f"{service}-v{new}-")
    users = {u: p for (i, u), p in fake.sql.users.items() if i == "voke-db"}
    assert sum(1 for p in users.values() if p) >= 1  # the password went through users.update
    assert_consistent(fake)
    from voketag_ops.adapters.gcp import catalog

    results = fake.monitoring.written(catalog.ROTATION_RESULT)
    assert (
        results
        and results[-1].metric.labels["secret"] == SECRET
        and results[-1].points[0].value.int64_value == 1
    )
    status = voke("rotate", "status", "--json", environ=environ)
    assert status.exit_code == 0
    assert [s["current_version"] for s in status.json["result"]["secrets"] if s["name"] == SECRET] == [new]


def test_the_new_version_keeps_the_services_address_when_voke_logs_in_elsewhere(
    cloud, voke, make_environ, tmp_path
):
    # voke reaches the database through its own way in (db_host: a proxy, a tunnel); the
    # services use the address the secret names, which a rotation must not replace with voke's
    from voketag_ops.adapters.gcp.secrets import GcpSecretStore

    fake, _home = cloud
    store = GcpSecretStore(fake.context())
    before = json.loads(store.access(SECRET, "current"))
    assert before["host"] == "127.0.0.1"
    elsewhere = tmp_path / "voke.toml"
    env = fake.environment(db_host="localhost", db_port=before["port"], services=list(SERVICES))
    elsewhere.write_text(_toml(env))
    environ = make_environ(tmp_path / "state", VOKE_CONFIG=str(elsewhere), VOKE_ENV="cloudtest")
    result = voke("rotate", "db-password", "--yes", "--json", environ=environ)
    assert result.exit_code == 0, result.stdout + result.stderr
    after = json.loads(store.access(SECRET, "current"))
    assert after["password"] != before["password"]
    assert (after["host"], after["port"]) == (before["host"], before["port"])
    assert_consistent(fake)


def test_a_login_with_the_platform_services_restarts_only_those_the_environment_runs(
    cloud, voke, make_environ, tmp_path
):
    # the login names no services, so it has the platform's three; this environment runs two
    # and Cloud Run has no blockchain-service: the rotation checks, restarts and waits for those two
    from voketag_ops.adapters.gcp.secrets import GcpSecretStore

    fake, _home = cloud
    assert "blockchain-service" not in fake.run.services
    login = json.loads(GcpSecretStore(fake.context()).access(SECRET, "current"))
    env = fake.environment(db_host=login["host"], db_port=login["port"], services=list(SERVICES))
    config = tmp_path / "voke.toml"
    config.write_text(_toml(env, own_services=False))
    environ = make_environ(tmp_path / "state", VOKE_CONFIG=str(config), VOKE_ENV="cloudtest")
    planned = voke("rotate", "db-password", "--dry-run", "--json", environ=environ)
    assert planned.exit_code == 0, planned.stdout + planned.stderr
    assert f"restart {', '.join(SERVICES)} pinned" in " ".join(planned.json["result"]["plan"])
    result = voke("rotate", "db-password", "--yes", "--json", environ=environ)
    assert result.exit_code == 0, result.stdout + result.stderr
    report = result.json["result"]
    assert report["status"] == "succeeded", report
    for service in SERVICES:
        assert fake.run.pinned(service) == [(SECRET, str(report["new_version"]))]
    assert_consistent(fake)
    # and a rollback moves back only those two
    sm = fake.secretmanager.secrets[SECRET]
    before = sm.aliases["current"]
    fake.run.unhealthy.add((SECRET, str(len(sm.versions) + 1)))
    try:
        environ["VOKE_ROTATION__HEALTH_TIMEOUT"] = "1"
        failed = voke("rotate", "db-password", "--yes", "--json", environ=environ)
    finally:
        fake.run.unhealthy.clear()
    assert failed.exit_code == 6, failed.stdout + failed.stderr
    assert failed.json["result"]["status"] == "rolled_back", failed.json
    assert sm.aliases["current"] == before
    assert "blockchain-service" not in fake.run.services
    assert_consistent(fake)


@pytest.mark.parametrize("step", STEPS)
def test_kill_after_each_step_then_resume(cloud, voke, make_environ, step):
    fake, home = cloud
    # the kill is the real process's (os._exit mid-step); the resume runs in-process, as any later voke
    crashed = _voke(home, make_environ, "rotate", "db-password", "--yes", **{FAULT_ENV: step})
    assert crashed.returncode == FAULT_EXIT_CODE, crashed.stdout + crashed.stderr
    resumed = voke("rotate", "resume", "--yes", "--json", environ=_environ(home, make_environ))
    assert resumed.exit_code == 0, resumed.stdout + resumed.stderr
    doc = resumed.json["result"]
    if step == "finish":
        assert doc == {"status": "nothing to do"}
    else:
        assert doc["status"] == "succeeded" and doc["resumed"] is True
    assert_consistent(fake)


def test_a_service_reading_latest_is_refused_and_nothing_changes(cloud, voke, make_environ):
    fake, home = cloud
    template = fake.run.services["factory-service"].template
    ref = template["containers"][0]["env"][0]["valueSource"]["secretKeyRef"]
    pinned, ref["version"] = ref["version"], "latest"
    versions = len(fake.secretmanager.secrets[SECRET].versions)
    try:
        result = voke("rotate", "db-password", "--yes", "--json", environ=_environ(home, make_environ))
        assert result.exit_code == 5, result.stdout
        assert (
            "latest" in result.json["error"]["message"]
            and "factory-service" in result.json["error"]["message"]
        )
        assert len(fake.secretmanager.secrets[SECRET].versions) == versions
    finally:
        ref["version"] = pinned
    assert_consistent(fake)


def test_a_failed_cloud_sql_operation_rolls_back(cloud, voke, make_environ):
    fake, home = cloud
    before = fake.secretmanager.secrets[SECRET].aliases["current"]
    fake.sql.fail_next("UPDATE_USER", "simulated: the instance is under maintenance")
    result = voke("rotate", "db-password", "--yes", "--json", environ=_environ(home, make_environ))
    assert result.exit_code == 6, result.stdout + result.stderr
    assert "DatabaseError" in result.json["error"]["message"]
    assert fake.secretmanager.secrets[SECRET].aliases["current"] == before
    assert_consistent(fake)


def test_a_refused_call_mid_rotation_rolls_back_rather_than_claiming_nothing_changed(
    cloud, voke, make_environ
):
    fake, home = cloud
    before = fake.secretmanager.secrets[SECRET].aliases["current"]
    fake.rest.fail("PATCH", r"/services/", status="PERMISSION_DENIED")  # the deploy step is refused
    result = voke("rotate", "db-password", "--yes", "--json", environ=_environ(home, make_environ))
    assert result.exit_code == 6, result.stdout + result.stderr  # not 4: the target had changed
    assert "RestartError" in result.json["error"]["message"]
    assert fake.secretmanager.secrets[SECRET].aliases["current"] == before
    assert_consistent(fake)


def test_an_unhealthy_revision_never_gets_traffic_and_the_rotation_rolls_back(cloud, voke, make_environ):
    fake, home = cloud
    sm = fake.secretmanager.secrets[SECRET]
    before, upcoming = sm.aliases["current"], len(sm.versions) + 1
    serving = {s: fake.run.serving(s) for s in SERVICES}
    fake.run.unhealthy.add((SECRET, str(upcoming)))
    try:
        # the unhealthy revision is waited out for health_timeout: 1 s as in test_rotate_cloud_faults,
        # not the module's 5 (the fakes answer a healthy probe at once)
        environ = _environ(home, make_environ, VOKE_ROTATION__HEALTH_TIMEOUT="1")
        result = voke("rotate", "db-password", "--yes", "--json", environ=environ)
    finally:
        fake.run.unhealthy.clear()
    assert result.exit_code == 6, result.stdout + result.stderr
    assert sm.aliases["current"] == before
    assert {s: fake.run.serving(s) for s in SERVICES} == serving
    # the failed revision keeps its tag but never had traffic: nothing to wait for before the login goes back
    assert "still draining" not in result.stderr
    assert_consistent(fake)


def test_a_cloud_rotation_keeps_out_of_the_environments_dr_operations(
    cloud, voke, make_environ, monkeypatch, held_by_another_voke
):
    # A cloud rotation skipped the environment's DR lock: it ran beside a `dr failover` (whose
    # look for a rotation is made once, at its start) and copied the host it was replacing.
    from voketag_ops.errors import PreconditionError
    from voketag_ops.locks import dr_lock
    from voketag_ops.workflows.rotate import RotationEngine

    fake, home = cloud
    environ = _environ(home, make_environ)
    lock_dir = home / "state" / "cloud" / "cloudtest"  # VOKE_HOME/cloud/NAME, as `dr failover` locks it
    versions = len(fake.secretmanager.secrets[SECRET].versions)
    with held_by_another_voke(lock_dir / "dr.lock", "dr failover on cloudtest pid 4242"):
        refused = voke("rotate", "db-password", "--yes", "--json", environ=environ)
        reads = voke("rotate", "status", "--json", environ=environ)  # what the on-call needs meanwhile
    assert refused.exit_code == 5, refused.stdout + refused.stderr
    assert refused.json["error"]["message"] == (
        "another DR operation is running (dr failover on cloudtest pid 4242); rotate once it has finished"
    )
    assert len(fake.secretmanager.secrets[SECRET].versions) == versions
    assert reads.exit_code == 0, reads.stdout + reads.stderr

    during, real = {}, RotationEngine._drift_check

    def drift_check(self, credential, meta):  # between the rotation's look and its record
        try:
            with dr_lock(lock_dir, "dr failover on cloudtest"):  # its own open file: contended
                during["failover"] = "held"
        except PreconditionError as exc:
            during["failover"] = exc.message
        return real(self, credential, meta)

    monkeypatch.setattr(RotationEngine, "_drift_check", drift_check)
    result = voke("rotate", "db-password", "--yes", "--json", environ=environ)
    assert result.exit_code == 0, result.stdout + result.stderr
    assert during["failover"].startswith(f"a rotation is starting (rotate {SECRET} pid "), during
    assert_consistent(fake)
