"""`voke doctor --env NAME` on a Google Cloud environment (the fakes): one line per check
with its fix, exit 1 when any fails; and ADC missing on a real (non-anonymous) env."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("google.cloud.resourcemanager_v3")

from voketag_ops.adapters.gcp import catalog
from voketag_ops.testing.gcp_fakes import FakeGcp, environment_toml


@pytest.fixture
def listening() -> Iterator[int]:
    """A loopback port that accepts TCP connections (where a login test would connect)."""
    with socket.create_server(("127.0.0.1", 0)) as server:
        yield server.getsockname()[1]


def _closed_port() -> int:
    with socket.create_server(("127.0.0.1", 0)) as server:
        return int(server.getsockname()[1])


def _config(tmp_path: Path, env: dict[str, Any]) -> Path:
    path = tmp_path / "voke.toml"
    path.write_text(environment_toml("staging", env))
    return path


def _doctor(voke: Any, make_environ: Any, tmp_path: Path, env: dict[str, Any], *flags: str) -> Any:
    """`voke doctor --env staging FLAGS` with ENV as the staging environment's configuration."""
    config = _config(tmp_path, env)
    return voke(
        "doctor", "--env", "staging", *flags, environ=make_environ(tmp_path / "h", VOKE_CONFIG=str(config))
    )


def test_all_checks_pass_when_apis_and_permissions_are_there(voke, make_environ, tmp_path, listening):
    with FakeGcp() as fake:
        fake.projects.grant_all()
        fake.sql.add_instance("voke-db")
        env = fake.environment(db_host="127.0.0.1", db_port=listening)
        result = _doctor(voke, make_environ, tmp_path, env, "--json")
    assert result.exit_code == 0, result.stdout
    names = [c["name"] for c in result.json["result"]["checks"]]
    assert names[:4] == ["config", "environment", "credentials", "project"]
    assert [n for n in names if n.startswith("api ")] == [f"api {a}" for a in catalog.REQUIRED_APIS]
    assert "permissions" in names and "cloud sql" in names
    endpoint = next(c for c in result.json["result"]["checks"] if c["name"] == "db endpoint")
    assert endpoint["ok"] and endpoint["detail"].startswith(f"127.0.0.1:{listening} (voke-db,")


def test_a_login_test_address_that_cannot_be_reached_fails_with_the_way_in(voke, make_environ, tmp_path):
    # db_host unset: the login test goes to the instance's private IP, which a Cloud Run job
    # without Direct VPC egress (or a laptop) cannot reach; doctor says so before a rotation does
    port = _closed_port()
    with FakeGcp() as fake:
        fake.projects.grant_all()
        fake.sql.add_instance("voke-db", ip="127.0.0.1")  # its private IP, nothing listening
        result = _doctor(voke, make_environ, tmp_path, fake.environment(db_port=port), "--json")
    assert result.exit_code == 1
    checks = {c["name"]: c for c in result.json["result"]["checks"]}
    assert checks["cloud sql"]["ok"] and not checks["db endpoint"]["ok"]
    assert checks["db endpoint"]["detail"].startswith(f"127.0.0.1:{port} (voke-db,")
    assert "no TCP connection" in checks["db endpoint"]["detail"]
    assert "environments.staging.db_host" in checks["db endpoint"]["hint"]
    assert "Direct VPC egress" in checks["db endpoint"]["hint"]


def test_a_disabled_api_and_missing_permissions_fail_with_the_fix(voke, make_environ, tmp_path):
    with FakeGcp() as fake:
        fake.projects.grant_all()
        fake.projects.enabled.discard("run.googleapis.com")
        fake.projects.granted -= {"cloudsql.users.update", "secretmanager.versions.list"}
        fake.sql.add_instance("voke-db")
        result = _doctor(voke, make_environ, tmp_path, fake.environment())
    assert result.exit_code == 1
    assert "fail api run.googleapis.com: disabled" in result.stdout
    assert "gcloud services enable run.googleapis.com --project voke-test" in result.stdout
    assert "missing 2: cloudsql.users.update, secretmanager.versions.list" in result.stdout
    assert "voke_scheduled" in result.stdout  # the role terraform/ grants the job's account


def test_the_jobs_account_passes_without_the_operators_permissions(voke, make_environ, tmp_path, listening):
    # doctor is the job's default run, and its account holds no DR or drill permission
    # (terraform/'s voke_operator role is the operators'), nor the secrets' (granted on each secret)
    with FakeGcp() as fake:
        fake.projects.grant_all()
        fake.projects.granted -= {
            "cloudsql.instances.delete",
            "cloudsql.instances.promoteReplica",
            "secretmanager.versions.access",
        }
        fake.sql.add_instance("voke-db")
        env = fake.environment(db_host="127.0.0.1", db_port=listening)
        result = _doctor(voke, make_environ, tmp_path, env, "--json")
    assert result.exit_code == 0, result.stdout
    checks = {c["name"]: c for c in result.json["result"]["checks"]}
    assert checks["permissions"]["ok"]
    assert (
        checks["permissions"]["detail"] == f"all {len(catalog.PROJECT_PERMISSIONS)} project permissions held"
    )


def test_missing_application_default_credentials_is_one_failed_check(
    voke, make_environ, tmp_path, monkeypatch
):
    # google.auth reads the process environment: point ADC at a file that does not exist
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(tmp_path / "none.json"))
    config = _config(tmp_path, {"project": "p", "instance": "db"})
    environ = make_environ(tmp_path / "h", VOKE_CONFIG=str(config))
    result = voke("doctor", "--env", "staging", "--json", environ=environ)
    assert result.exit_code == 1
    creds = next(c for c in result.json["result"]["checks"] if c["name"] == "credentials")
    assert creds["ok"] is False and "application-default login" in creds["hint"]


def test_after_a_recorded_failover_the_recorded_primary_is_checked(voke, make_environ, tmp_path, listening):
    # `dr status` and every later run follow the labels voke wrote: doctor checks that primary,
    # not the configured home (now its replica), and fails only when record and Cloud SQL disagree
    moved = {"voke-env": "staging", "voke-role": "primary", "voke-op": "failover"}
    with FakeGcp() as fake:
        fake.projects.grant_all()
        fake.sql.add_instance("voke-db-dr", labels=moved)
        fake.sql.add_instance(
            "voke-db", replica_of="voke-db-dr", labels={"voke-env": "staging", "voke-role": "replica"}
        )
        config = _config(
            tmp_path,
            fake.environment(replica="voke-db-dr", replica_db_host="127.0.0.1", replica_db_port=listening),
        )
        environ = make_environ(tmp_path / "h", VOKE_CONFIG=str(config))
        after = voke("doctor", "--env", "staging", "--json", environ=environ)
        fake.sql.add_instance("voke-db-dr", replica_of="voke-db", labels=moved)  # record and reality part
        fake.sql.add_instance("voke-db", labels={"voke-env": "staging", "voke-role": "replica"})
        parted = voke("doctor", "--env", "staging", "--json", environ=environ)
    assert after.exit_code == 0, after.stdout
    sql = next(c for c in after.json["result"]["checks"] if c["name"] == "cloud sql")
    assert sql["ok"] and sql["detail"].startswith("voke-db-dr: RUNNABLE, primary")
    assert "configured home voke-db" in sql["detail"]
    endpoint = next(c for c in after.json["result"]["checks"] if c["name"] == "db endpoint")
    assert endpoint["ok"] and endpoint["detail"].startswith(f"127.0.0.1:{listening} (voke-db-dr,")
    assert parted.exit_code == 1
    sql = next(c for c in parted.json["result"]["checks"] if c["name"] == "cloud sql")
    assert not sql["ok"] and "disagree" in sql["detail"] and "voke-role=primary" in sql["hint"]


def test_the_replica_is_checked_to_exist_and_replicate_from_the_primary(
    voke, make_environ, tmp_path, listening
):
    # `dr check` fails replica_streaming on these (a missing one exited 4): doctor passed them
    with FakeGcp() as fake:
        fake.projects.grant_all()
        fake.sql.add_instance("voke-db")
        fake.sql.add_instance("voke-db-dr", region="us-east1", replica_of="voke-db")
        fake.sql.add_instance("voke-db-other")
        env = fake.environment(db_host="127.0.0.1", db_port=listening)
        runs = {
            replica: _doctor(voke, make_environ, tmp_path, {**env, "replica": replica}, "--json")
            for replica in ("voke-db-dr", "no-such-replica", "voke-db-other")
        }
    checks = {r: {c["name"]: c for c in run.json["result"]["checks"]} for r, run in runs.items()}
    assert runs["voke-db-dr"].exit_code == 0, runs["voke-db-dr"].stdout
    assert checks["voke-db-dr"]["cloud sql replica"] == {
        "name": "cloud sql replica",
        "ok": True,
        "detail": "voke-db-dr: RUNNABLE, replica of voke-db",
        "hint": None,
    }
    missing = checks["no-such-replica"]["cloud sql replica"]
    assert runs["no-such-replica"].exit_code == 1 and not missing["ok"]
    assert (
        missing["detail"] == "no-such-replica does not exist in Cloud SQL: there is nothing to fail over to"
    )
    assert missing["hint"].startswith("fix environments.staging.replica, or create the replica")
    alone = checks["voke-db-other"]["cloud sql replica"]
    assert runs["voke-db-other"].exit_code == 1 and not alone["ok"]
    assert alone["detail"] == "voke-db-other: RUNNABLE, primary, not a running replica of the primary voke-db"
    for run in checks.values():  # the primary's own checks still run
        assert run["cloud sql"]["ok"] and run["db endpoint"]["ok"]


def test_an_unavailable_api_is_asked_again_and_if_it_stays_down_says_retry(
    voke, make_environ, tmp_path, listening
):
    with FakeGcp() as fake:
        fake.projects.grant_all()
        fake.sql.add_instance("voke-db")
        env = fake.environment(db_host="127.0.0.1", db_port=listening)
        fake.rest.fail("GET", r"/v3/projects/[^/:]+$", "UNAVAILABLE", times=1)  # a passing blip
        blip = _doctor(voke, make_environ, tmp_path, env, "--json")
        fake.rest.fail("POST", r":testIamPermissions$", "UNAVAILABLE", times=99)
        down = _doctor(voke, make_environ, tmp_path, env, "--json")
    assert blip.exit_code == 0, blip.stdout
    assert down.exit_code == 1
    permissions = next(c for c in down.json["result"]["checks"] if c["name"] == "permissions")
    assert not permissions["ok"] and permissions["hint"] == "API unavailable (HTTP 503), retry"
