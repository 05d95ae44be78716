"""API keys and the JWT keyring on a cloud environment: `voke --env NAME rotate api-key
--adopt` and `rotate jwt --init` bootstrap them in Secret Manager (the real client against
the in-process fake), and the rotations that follow pin the Cloud Run services to the new
version numbers. No key value reaches any output."""

from __future__ import annotations

import io
import json
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
