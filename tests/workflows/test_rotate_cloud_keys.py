"""API keys and the JWT keyring on a cloud environment: `voke --env NAME rotate api-key
--adopt` and `rotate jwt --init` bootstrap them in Secret Manager (the real client against
the in-process fake), and the rotations that follow pin the Cloud Run services to the new
version numbers. No key value reaches any output."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("google.cloud.secretmanager_v1")

from voketag_ops.testing.gcp_fakes import FakeGcp, environment_toml
from voketag_ops.testing.providers import FakeProviders


@pytest.fixture
def cloud(tmp_path: Path, make_environ: Any) -> Iterator[tuple[FakeGcp, FakeProviders, dict[str, str]]]:
    with FakeGcp() as fake, FakeProviders() as providers:
        env = fake.environment(services=["admin-service", "factory-service"])
        lines = [
            environment_toml("t", env),
            "[rotation]",
            "db_users = {}",
            "test_interval = 0.05",
            "health_timeout = 2",
            "[rotation.api_keys.sendgrid]",
            'provider = "sendgrid"',
            'secret = "sendgrid-key"',
            f'endpoint = "{providers.url}"',
            'services = ["factory-service"]',
            "[rotation.jwt]",
            'secret = "jwt-signing"',
            'services = ["admin-service"]',
            "verifier_refresh_seconds = 0",
        ]
        (tmp_path / "voke.toml").write_text("\n".join(lines) + "\n")
        environ = make_environ(tmp_path / "home", VOKE_CONFIG=str(tmp_path / "voke.toml"), VOKE_ENV="t")
        yield fake, providers, environ


def test_api_key_adopt_and_jwt_init_then_rotate_on_cloud(cloud, voke, monkeypatch):
    fake, providers, environ = cloud
    key, key_id = providers.add_sendgrid_key()

    def run(*args: str, stdin: str = "") -> Any:
        monkeypatch.setattr(sys, "stdin", io.StringIO(stdin))
        return voke(*args, environ=environ)

    planned = run("rotate", "api-key", "sendgrid", "--adopt", "--dry-run", "--json")
    assert planned.exit_code == 0 and planned.json["result"]["status"] == "planned", planned.stderr
    adopted = run("rotate", "api-key", "sendgrid", "--adopt", "--yes", "--json", stdin=key)
    assert adopted.exit_code == 0, adopted.stdout + adopted.stderr
    assert adopted.json["result"]["version"] == 1
    assert json.loads(fake.secretmanager.payload("sendgrid-key", 1))["api_key"] == key

    no_ring = run("rotate", "jwt", "--yes", "--json")
    assert no_ring.exit_code == 5 and "--init" in no_ring.stdout, no_ring.stdout
    assert run("rotate", "jwt", "--init", "--dry-run", "--json").json["result"]["status"] == "planned"
    init = run("rotate", "jwt", "--init", "--yes", "--json")
    assert init.exit_code == 0 and init.json["result"]["status"] == "created", init.stdout + init.stderr
    again = run("rotate", "jwt", "--init", "--yes", "--json")
    assert again.exit_code == 0 and again.json["result"]["status"] == "exists"
    assert run("rotate", "jwt", "--init", "--emergency", "--yes").exit_code == 2

    fake.run.add_service("factory-service", "sendgrid-key", 1, env_var="SENDGRID_API_KEY")
    fake.run.add_service("admin-service", "jwt-signing", 1, env_var="JWT_KEYRING")
    rotated = run("rotate", "api-key", "sendgrid", "--yes", "--json")

    assert rotated.exit_code == 0, rotated.stdout + rotated.stderr
    assert rotated.json["result"]["status"] == "succeeded"
    assert fake.run.pinned("factory-service") == [("sendgrid-key", "2")]
    new = json.loads(fake.secretmanager.payload("sendgrid-key", 2))
    assert set(providers.live_sendgrid_keys()) == {key_id, new["key_id"]}  # the old key still works

    published = run("rotate", "jwt", "--yes", "--json")
    assert published.exit_code == 0, published.stdout + published.stderr
    assert fake.run.pinned("admin-service") == [("jwt-signing", "2")]
    jwks = run("rotate", "jwks", "--json")
    assert jwks.exit_code == 0 and len(jwks.json["result"]["keys"]) == 2  # current + the published next

    ring = json.loads(fake.secretmanager.payload("jwt-signing", 2))
    private = [json.dumps(k, sort_keys=True) for k in ring.values() if isinstance(k, dict)]
    everything = (
        adopted.stdout + adopted.stderr + rotated.stdout + rotated.stderr + published.stdout + jwks.stdout
    )
    for value in [
        key,
        new["api_key"],
        *[k.get("d", "") for k in ring.values() if isinstance(k, dict) and k.get("d")],
    ]:
        assert value not in everything
    assert private  # the keyring really holds keys


def test_status_names_the_adoption_of_an_api_key_not_adopted_yet(cloud, voke):
    _fake, _providers, environ = cloud
    status = voke("rotate", "status", environ=environ)
    assert status.exit_code == 0, status.stdout + status.stderr
    adopt = "(voke --env t rotate api-key sendgrid --adopt --yes < current-key.txt)"
    assert f"not set up sendgrid-key: the secret does not exist {adopt}" in status.stdout, status.stdout


def test_cleanup_on_cloud_takes_a_rolled_back_version_for_no_successor(tmp_path, make_environ, monkeypatch):
    # As on the local store (test_jwt): 3 made current and rolled back, 4-6 made 23 h later;
    # Secret Manager's versions carry the times the fake is told.
    from datetime import datetime, timedelta, timezone

    from voketag_ops.config import load_config
    from voketag_ops.core.rotation import ANNOTATION, RotationRecord
    from voketag_ops.testing.gcp_fakes import ts
    from voketag_ops.workflows import rotate as rotate_wf
    from voketag_ops.workflows.cloud import cloud_engine
    from voketag_ops.workflows.jwt import init_keyring, rotate_jwt

    class Crash(BaseException):
        """The voke killed where VOKE_FAULT_CRASH_AFTER says (in place of os._exit)."""

    def crash(_code: int) -> None:
        raise Crash

    with FakeGcp() as fake:
        lines = [
            environment_toml("t", fake.environment(services=[])),
            "[rotation]",
            "db_users = {}",
            "test_interval = 0.05",
            "[rotation.jwt]",
            'secret = "jwt-signing"',
            "verifier_refresh_seconds = 0",
        ]
        (tmp_path / "voke.toml").write_text("\n".join(lines) + "\n")
        environ = make_environ(tmp_path / "home", VOKE_CONFIG=str(tmp_path / "voke.toml"), VOKE_ENV="t")
        engine = cloud_engine(load_config(environ=environ, cwd=tmp_path).settings)
        made = datetime.now(timezone.utc)  # (the adapter dates the rollback's disable by the real clock)
        versions = fake.secretmanager.secrets

        def rotate(at: datetime) -> Any:
            engine.now = lambda: at
            outcome = rotate_jwt(engine, emergency=True)
            versions["jwt-signing"].versions[-1].create_time = ts(at)
            return outcome

        assert init_keyring(engine)["status"] == "created"
        versions["jwt-signing"].versions[0].create_time = ts(made - timedelta(days=2))
        assert rotate(made - timedelta(days=1)).error is None  # 2
        monkeypatch.setattr(rotate_wf.os, "_exit", crash)
        engine.environ = {rotate_wf.FAULT_ENV: "commit"}
        with pytest.raises(Crash):
            rotate(made)  # 3 is current when its voke dies
        versions["jwt-signing"].versions[-1].create_time = ts(made)
        engine.environ = {}
        engine.now = lambda: made + timedelta(hours=1)
        stored = RotationRecord.from_json(engine.store.get("jwt-signing").annotations[ANNOTATION])
        assert engine.rollback(stored.id).report.status == "rolled_back"
        for minutes in (0, 10, 20):  # 4, 5, 6
            assert rotate(made + timedelta(hours=23, minutes=minutes)).error is None
        meta = engine.store.get("jwt-signing")
        assert meta.aliases == {"current": 6, "previous": 5} and meta.version(3).state == "disabled"

        def plan(at: datetime) -> list[tuple[int, str]]:
            engine.now = lambda: at
            return [(a.version, a.action) for a in engine.cleanup(dry_run=True)["actions"]]

        assert plan(made + timedelta(hours=24, minutes=1)) == [(1, "disable")]
        assert plan(made + timedelta(hours=47, minutes=1)) == [(1, "disable"), (2, "disable")]
        engine.cleanup(dry_run=False)
        states = {v.version: v.state for v in engine.store.get("jwt-signing").versions}
        assert states == {n: "disabled" if n <= 3 else "enabled" for n in range(1, 7)}


ACCOUNT = "voke-ci@voke-test.iam.gserviceaccount.com"


@pytest.fixture
def two_secrets(
    tmp_path: Path, make_environ: Any, voke: Any, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Any]:
    """admin-service reading auth0-client v1 and sa-ci v1: two managed secrets at equal
    version numbers, one of them (sa-ci) the service's "consumer" secret that status shows."""
    from voketag_ops.adapters.gcp.secrets import GcpSecretStore

    with FakeGcp() as fake, FakeProviders() as providers:
        fake.iam.add_account(ACCOUNT)
        client_id, client_secret = providers.add_auth0_client()
        store = GcpSecretStore(fake.context())
        store.create("auth0-admin")
        admin = {"client_id": providers.auth0_admin_id, "client_secret": providers.auth0_admin_secret}
        version = store.add_version("auth0-admin", json.dumps(admin).encode()).version
        store.update("auth0-admin", etag=store.get("auth0-admin").etag, aliases={"current": version})
        lines = [
            environment_toml("t", fake.environment(services=["admin-service"])),
            "[rotation]",
            "db_users = {}",
            "test_interval = 0.05",
            "health_timeout = 2",
            "[rotation.api_keys.auth0]",
            'provider = "auth0"',
            'secret = "auth0-client"',
            f'endpoint = "{providers.url}"',
            'admin_secret = "auth0-admin"',
            'services = ["admin-service"]',
            f'options = {{ client_id = "{client_id}", audience = "https://api.voketag.test/" }}',
            "[rotation.sa_keys.ci]",
            f'service_account = "{ACCOUNT}"',
            'secret = "sa-ci"',
            'services = ["admin-service"]',
        ]
        (tmp_path / "voke.toml").write_text("\n".join(lines) + "\n")
        environ = make_environ(tmp_path / "home", VOKE_CONFIG=str(tmp_path / "voke.toml"), VOKE_ENV="t")
        monkeypatch.setattr(sys, "stdin", io.StringIO(client_secret))
        assert voke("rotate", "api-key", "auth0", "--adopt", "--yes", environ=environ).exit_code == 0
        assert voke("rotate", "sa-key", "ci", "--init", "--yes", environ=environ).exit_code == 0
        fake.run.add_service("admin-service", "auth0-client", 1, env_var="AUTH0", others={"sa-ci": 1})
        yield fake, store, environ


def _auth0_rotation_killed_after(step: str, store: Any, environ: dict[str, str]) -> str:
    """The id of an auth0-client rotation whose voke died after STEP (a real process's
    os._exit; what follows runs in-process)."""
    from voketag_ops.core.rotation import ANNOTATION, RotationRecord
    from voketag_ops.workflows.rotate import FAULT_ENV, FAULT_EXIT_CODE

    crashed = subprocess.run(
        [sys.executable, "-m", "voketag_ops", "rotate", "api-key", "auth0", "--yes"],
        capture_output=True,
        text=True,
        env={**environ, FAULT_ENV: step},
        timeout=120,
    )
    assert crashed.returncode == FAULT_EXIT_CODE, crashed.stderr
    return RotationRecord.from_json(store.get("auth0-client").annotations[ANNOTATION]).id


@pytest.mark.parametrize("step", ["deploy", "health"])
def test_a_rollback_moves_back_a_service_that_reads_another_managed_secret_at_the_same_version(
    two_secrets, voke, step
):
    # The rollback must ask which version of auth0-client admin-service serves, not of sa-ci
    # (its one status secret, also at 1): else it stays on the version the rollback disables
    # (503, and every later deploy of it refused).
    fake, store, environ = two_secrets
    rotation = _auth0_rotation_killed_after(step, store, environ)
    assert sorted(fake.run.pinned("admin-service")) == [("auth0-client", "2"), ("sa-ci", "1")]

    rolled = voke("rotate", "rollback", rotation, "--yes", "--json", environ=environ)
    assert rolled.exit_code == 0, rolled.stdout + rolled.stderr
    assert rolled.json["result"]["status"] == "rolled_back"
    assert store.get("auth0-client").version(2).state == "disabled"
    assert sorted(fake.run.pinned("admin-service")) == [("auth0-client", "1"), ("sa-ci", "1")]

    rotated = voke("rotate", "sa-key", "ci", "--yes", "--json", environ=environ)
    assert rotated.exit_code == 0, rotated.stdout + rotated.stderr
    assert sorted(fake.run.pinned("admin-service")) == [("auth0-client", "1"), ("sa-ci", "2")]


def test_a_rollback_keeps_the_version_of_another_secret_rotated_since(two_secrets, voke):
    # The revision from before the rotation reads auth0-client v1 but sa-ci v1, rotated away
    # since: reusing it would take sa-ci back too. A new revision keeps sa-ci at 2.
    fake, store, environ = two_secrets
    rotation = _auth0_rotation_killed_after("deploy", store, environ)
    rotated = voke("rotate", "sa-key", "ci", "--yes", "--json", environ=environ)
    assert rotated.exit_code == 0, rotated.stdout + rotated.stderr
    assert sorted(fake.run.pinned("admin-service")) == [("auth0-client", "2"), ("sa-ci", "2")]

    rolled = voke("rotate", "rollback", rotation, "--yes", "--json", environ=environ)
    assert rolled.exit_code == 0, rolled.stdout + rolled.stderr
    assert sorted(fake.run.pinned("admin-service")) == [("auth0-client", "1"), ("sa-ci", "2")]
    assert store.get("sa-ci").aliases["current"] == 2
