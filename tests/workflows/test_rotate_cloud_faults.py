"""`voke --env NAME rotate db-password` when a backend fails part-way, against the Google
Cloud fakes alone: a login is accepted when Cloud SQL holds its password (users.update) and
its host is the instance's, so no PostgreSQL is needed. A record the store refuses after a
step took effect, a Cloud SQL instance that stays busy."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("google.cloud.sqladmin_v1beta4")

from voketag_ops.core.rotation import ANNOTATION, RotationRecord, parse_iso
from voketag_ops.testing.gcp_fakes import FakeGcp, environment_toml, template_secret_refs

SECRET = "db-app"
SERVICES = ("admin-service", "factory-service")
IP = "10.20.0.3"
SAVES = r"/secrets/db-app$"  # PATCHes of the secret: lock, pending, one per step, commit, end


class Cloud:
    """The fakes seeded like a deployed platform, and how to run voke against them."""

    def __init__(self, fake: FakeGcp, home: Path, voke: Any, make_environ: Any) -> None:
        self.fake, self.home, self._voke = fake, home, voke
        self.environ = make_environ(home / "state", VOKE_CONFIG=str(home / "voke.toml"), VOKE_ENV="prod")
        self.configure()

    def configure(self, **extra: Any) -> None:
        env = self.fake.environment(services=list(SERVICES), **extra)
        lines = [environment_toml("prod", env), "[rotation]", "health_timeout = 1", "test_interval = 0.02"]
        lines += ["[rotation.db_users.app]", f'secret = "{SECRET}"', 'roles = ["app_a", "app_b"]']
        lines += [f"services = {json.dumps(list(SERVICES))}"]
        (self.home / "voke.toml").write_text("\n".join(lines) + "\n")

    def voke(self, *args: str, home: str = "state") -> Any:
        """voke ARGS with this VOKE_HOME, or HOME's: another machine (or the scheduled Cloud Run
        job, whose VOKE_HOME ends with the run) with the same configuration."""
        return self._voke(*args, environ={**self.environ, "VOKE_HOME": str(self.home / home)})

    @property
    def secret(self) -> Any:
        return self.fake.secretmanager.secrets[SECRET]

    def record(self) -> RotationRecord | None:
        raw = self.secret.annotations.get(ANNOTATION)
        return RotationRecord.from_json(raw) if raw else None

    def audit(self, home: str = "state") -> list[dict[str, Any]]:
        """HOME's audit log as `voke audit show` lists it: one log for every environment."""
        shown = self.voke("audit", "show", "--limit", "1000", "--json", home=home)
        assert shown.exit_code == 0, shown.stdout + shown.stderr
        entries: list[dict[str, Any]] = shown.json["result"]["entries"]
        assert all(e["env"] == "prod" for e in entries)
        return entries

    def login(self, cred: dict[str, Any]) -> bool:
        return cred.get("host") == IP and self.fake.sql.users.get(
            ("voke-db", cred.get("username"))
        ) == cred.get("password")

    def assert_consistent(self) -> None:
        """No rotation left, current and previous log in, every service serves current, and
        its template (what the next deploy builds on) reads it too."""
        assert ANNOTATION not in self.secret.annotations
        assert "pending" not in self.secret.aliases
        for alias in ("current", "previous"):
            assert self.login(json.loads(self.fake.secretmanager.payload(SECRET, self.secret.aliases[alias])))
        current = [(SECRET, str(self.secret.aliases["current"]))]
        for service in SERVICES:
            assert self.fake.run.pinned(service) == current
            assert template_secret_refs(self.fake.run.services[service].template) == current, service


@pytest.fixture
def cloud(tmp_path: Path, voke: Any, make_environ: Any, monkeypatch: pytest.MonkeyPatch) -> Iterator[Cloud]:
    import voketag_ops.adapters.gcp.sql as sql

    with FakeGcp() as fake:
        fake.sql.add_instance("voke-db", ip=IP, users=("app_a", "app_b"))
        from voketag_ops.adapters.gcp.secrets import GcpSecretStore

        store = GcpSecretStore(fake.context())
        store.create(SECRET)
        versions = []
        for role in ("app_b", "app_a"):
            password = f"pw-{role}-0123456789abcdefghijkl"
            fake.sql.users[("voke-db", role)] = password
            cred = {"username": role, "password": password, "host": IP, "port": 5432, "dbname": "voketag"}
            versions.append(store.add_version(SECRET, json.dumps(cred).encode()).version)
        store.update(
            SECRET, etag=store.get(SECRET).etag, aliases={"previous": versions[0], "current": versions[1]}
        )
        for service in SERVICES:
            fake.run.add_service(service, SECRET, versions[1])
        cloud = Cloud(fake, tmp_path, voke, make_environ)
        fake.run.probe = lambda payload: cloud.login(json.loads(payload))
        monkeypatch.setattr(sql, "pg_login", lambda cred, timeout=5, statement_timeout=30: cloud.login(cred))
        yield cloud


def test_a_login_whose_secret_does_not_exist_is_a_precondition_saying_what_creates_it(cloud):
    del cloud.fake.secretmanager.secrets[SECRET]
    result = cloud.voke("rotate", "db-password", "--yes", "--json")
    assert result.exit_code == 5, result.stdout + result.stderr  # not a backend refusal (exit 4)
    error = result.json["error"]
    assert "http" not in error["message"] and SECRET in error["message"]
    assert "voke env up" not in error["hint"]  # voke makes a login's secret on the local environment only


def test_a_denied_call_names_the_doctor_of_this_environment(cloud):
    cloud.fake.rest.fail("GET", r"/secrets/[^/]+$", "PERMISSION_DENIED")
    result = cloud.voke("rotate", "db-password", "--yes", "--json")
    assert result.exit_code == 4, result.stdout + result.stderr
    assert result.json["error"]["hint"].endswith("voke --env prod doctor"), result.json[
        "error"
    ]  # pastes as is


@pytest.mark.parametrize(("after", "step"), [(3, "set_target"), (6, "commit")])
def test_a_step_whose_record_is_refused_stops_for_a_person_and_resume_finishes_it(cloud, after, step):
    cloud.fake.rest.fail("PATCH", SAVES, "PERMISSION_DENIED", after=after)
    result = cloud.voke("rotate", "db-password", "--yes", "--json")
    assert result.exit_code == 7, result.stdout + result.stderr
    error = result.json["error"]
    rotation = result.json["result"]["rotation_id"]
    assert f"{step} took effect" in error["message"] and "nothing was changed" not in json.dumps(error)
    assert (  # the environment named: pasted in another shell (or cron: --yes), they act on the same one
        f"voke --env prod rotate resume {rotation} --yes" in error["hint"]
        and f"voke --env prod rotate rollback {rotation} --yes" in error["hint"]
    )
    record = cloud.record()  # what it did is recorded, and the lease given up
    assert record is not None and record.status == "needs_attention" and record.step == step
    assert parse_iso(record.lease_until) <= datetime.now(timezone.utc)
    # the result tables name the environment in the commands to paste, as the errors do
    both = (
        f"voke --env prod rotate resume {rotation} --yes or: voke --env prod rotate rollback {rotation} --yes"
    )
    status = " ".join(cloud.voke("rotate", "status").stdout.split())
    assert f"not running: {both}" in status, status
    due = " ".join(cloud.voke("rotate", "due").stdout.split())
    assert f"stopped for a person ({both})" in due, due
    resumed = cloud.voke("rotate", "resume", rotation, "--yes", "--json")
    assert resumed.exit_code == 0 and resumed.json["result"]["status"] == "succeeded", resumed.stdout
    cloud.assert_consistent()


def test_a_stop_for_a_person_the_store_cannot_record_is_still_audited_once(cloud):
    # set_target's record refused, then the needs_attention one (as by a store gone meanwhile)
    cloud.fake.rest.fail("PATCH", SAVES, "PERMISSION_DENIED", times=2, after=3)
    result = cloud.voke("rotate", "db-password", "--yes", "--json")
    assert result.exit_code == 7, result.stdout + result.stderr
    rotation = result.json["result"]["rotation_id"]
    assert "the stored record is not updated" in result.json["error"]["message"]
    assert f"voke --env prod rotate resume {rotation} --yes" in result.json["error"]["hint"]
    record = cloud.record()  # as the last save left it
    assert record is not None and (record.status, record.step) == ("in_progress", "create_pending")
    # the audit log is local: a person auditing the exit 7 finds it, saying the record is not updated
    [finish] = [e for e in cloud.audit() if e["event_type"] == "rotation.finish"]
    assert (finish["result"], finish["details"]["rotation_id"]) == ("needs_attention", rotation)
    assert "set_target took effect" in finish["details"]["error"]["message"]
    assert "the stored record is not updated" in finish["details"]["error"]["message"]
    # its voke gone, its lease runs out (it could not give it up); the resume finishes it
    record.lease_until = "2000-01-01T00:00:00Z"
    cloud.secret.annotations[ANNOTATION] = record.to_json()
    resumed = cloud.voke("rotate", "resume", rotation, "--yes", "--json")
    assert resumed.exit_code == 0 and resumed.json["result"]["status"] == "succeeded", resumed.stdout
    cloud.assert_consistent()
    finish = [e for e in cloud.audit() if e["event_type"] == "rotation.finish"]
    assert [(e["result"], e["details"]["rotation_id"]) for e in finish] == [
        ("needs_attention", rotation),
        ("succeeded", rotation),
    ]
    history = cloud.voke("rotate", "history", "--json").json["result"]
    assert [(r["id"], r["status"]) for r in history["rotations"]] == [(rotation, "succeeded")]


def test_a_stop_for_a_person_whose_event_the_disk_refuses_says_so(cloud, monkeypatch):
    import errno
    import os

    from voketag_ops import files

    cloud.fake.rest.fail("PATCH", SAVES, "PERMISSION_DENIED", after=3)  # set_target's record only
    [fault] = cloud.fake.rest.faults
    write_all = files.write_all

    def full_once_refused(fd, data):  # VOKE_HOME fills up as the store refuses the record
        if fault.times == 0 and os.readlink(f"/proc/self/fd/{fd}").endswith("audit.jsonl"):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        write_all(fd, data)

    with monkeypatch.context() as full:
        full.setattr(files, "write_all", full_once_refused)
        result = cloud.voke("rotate", "db-password", "--yes", "--json")
    assert result.exit_code == 7, result.stdout + result.stderr
    message = result.json["error"]["message"]
    assert "set_target took effect" in message and "the stored record is not updated" not in message
    assert "; its rotation.finish audit event could not be written: " in message
    assert "No space left on device" in message
    record = cloud.record()  # the stop itself is recorded
    assert record is not None and record.status == "needs_attention"
    assert [e["event_type"] for e in cloud.audit()] == ["rotation.start"]


def test_a_record_that_cannot_be_cleared_after_success_is_a_warning(cloud):
    cloud.fake.rest.fail("PATCH", SAVES, "PERMISSION_DENIED", after=10)  # the clear, after the finish's
    result = cloud.voke("rotate", "db-password", "--yes", "--json")
    assert result.exit_code == 0, result.stdout + result.stderr
    rotation = result.json["result"]["rotation_id"]
    finished_at = result.json["result"]["finished_at"]
    assert result.json["result"]["status"] == "succeeded"
    # the command names the environment: pasted in another shell, it clears this one's record
    assert f"`voke --env prod rotate resume {rotation} --yes` clears it" in result.stderr
    finish = [e for e in cloud.audit() if e["event_type"] == "rotation.finish"]
    assert [e["result"] for e in finish] == ["succeeded"]
    # recorded as finished where every run sees it, its lease given up: resume need not wait
    record = cloud.record()
    assert record is not None and (record.status, record.step) == ("succeeded", "finish")
    assert parse_iso(record.lease_until) <= datetime.now(timezone.utc)
    # a succeeded rotation is never rolled back, even with its record still there
    refused = cloud.voke("rotate", "rollback", rotation, "--yes", "--json")
    assert refused.exit_code == 5, refused.stdout + refused.stderr
    assert "succeeded" in refused.json["error"]["message"]
    assert "a new rotation replaces it" in refused.json["error"]["message"]
    assert cloud.record() == record
    # the next scheduled run (Cloud Run: a fresh VOKE_HOME, no local history) only clears it
    resumed = cloud.voke("rotate", "due", "--run", "--yes", "--json", home="other")
    assert resumed.exit_code == 0, resumed.stdout + resumed.stderr
    [report] = resumed.json["result"]["rotations"]
    assert (report["rotation_id"], report["status"]) == (rotation, "succeeded")
    assert report["finished_at"] == finished_at
    # timed as its run measured it (monotonic), not by the clear
    assert report["duration_seconds"] == result.json["result"]["duration_seconds"]
    cloud.assert_consistent()
    # the finish is written once across both homes: the resume only cleared the record
    finish += [e for e in cloud.audit("other") if e["event_type"] == "rotation.finish"]
    assert [(e["result"], e["details"]["rotation_id"]) for e in finish] == [("succeeded", rotation)]
    history = cloud.voke("rotate", "history", "--json").json["result"]
    assert [r["id"] for r in history["rotations"]] == [rotation]
    last = json.loads(cloud.secret.annotations["voke-last-rotation"])
    assert (last["id"], last["finished_at"]) == (rotation, finished_at)


def test_a_finish_the_store_refuses_to_record_is_written_once_by_the_resume(cloud):
    cloud.fake.rest.fail("PATCH", SAVES, "PERMISSION_DENIED", after=9)  # the finish's record
    result = cloud.voke("rotate", "db-password", "--yes", "--json")
    assert result.exit_code == 0, result.stdout + result.stderr
    rotation = result.json["result"]["rotation_id"]
    assert f"`voke --env prod rotate resume {rotation} --yes` finishes it" in result.stderr
    # nothing told of a finish that no record holds: the resume tells it, once
    assert [e for e in cloud.audit() if e["event_type"] == "rotation.finish"] == []
    record = cloud.record()
    assert record is not None and (record.status, record.step) == ("in_progress", "health")
    assert parse_iso(record.lease_until) <= datetime.now(timezone.utc)
    resumed = cloud.voke("rotate", "resume", rotation, "--yes", "--json", home="other")
    assert resumed.exit_code == 0 and resumed.json["result"]["status"] == "succeeded", resumed.stdout
    cloud.assert_consistent()
    finish = [e for e in cloud.audit("other") if e["event_type"] == "rotation.finish"]
    assert [(e["result"], e["details"]["rotation_id"]) for e in finish] == [("succeeded", rotation)]


def test_an_instance_that_stays_busy_discards_the_pending_version(cloud):
    cloud.configure(operation_timeout=0.3)
    cloud.fake.sql.busy["voke-db"] = 10**6  # every users.update refused: 409 operationInProgress
    before = dict(cloud.secret.aliases)
    result = cloud.voke("rotate", "db-password", "--yes", "--json")
    assert result.exit_code == 6, result.stdout + result.stderr  # the login never changed: safe to retry
    message = result.json["error"]["message"]
    assert "busy" in message and "AuthenticationError" not in message and "rollback failed" not in message
    steps = result.json["result"]["steps"]
    assert steps[-1]["name"] == "rollback" and steps[-1]["detail"] == "discard_pending"
    new = result.json["result"]["new_version"]
    assert (
        cloud.secret.aliases == before
        and cloud.fake.secretmanager.secrets[SECRET].versions[new - 1].state == "DISABLED"
    )
    cloud.fake.sql.busy.clear()
    assert cloud.voke("rotate", "db-password", "--yes").exit_code == 0
    cloud.assert_consistent()


def test_a_revision_that_never_starts_rolls_back_with_the_template_on_the_serving_version(cloud):
    before = cloud.secret.aliases["current"]
    cloud.fake.run.unstartable.add((SECRET, str(len(cloud.secret.versions) + 1)))
    result = cloud.voke("rotate", "db-password", "--yes", "--json")
    assert result.exit_code == 6, result.stdout + result.stderr
    assert "RestartError" in result.json["error"]["message"]
    assert cloud.secret.aliases["current"] == before
    cloud.assert_consistent()  # Cloud Run kept the failed revision's template; voke put it back


def test_the_dry_run_plan_names_the_cloud_sql_call(cloud):
    result = cloud.voke("rotate", "db-password", "--dry-run", "--json")
    assert result.exit_code == 0, result.stdout + result.stderr
    plan = "\n".join(result.json["result"]["plan"])
    assert "app_b on Cloud SQL instance voke-db with users.update" in plan and "ALTER ROLE" not in plan


def test_a_refused_deploy_moves_every_service_and_its_template_back(cloud):
    before = cloud.secret.aliases["current"]
    cloud.fake.rest.fail("PATCH", r"/services/admin-service$", "PERMISSION_DENIED")  # factory-service moves
    result = cloud.voke("rotate", "db-password", "--yes", "--json")
    assert result.exit_code == 6, result.stdout + result.stderr
    assert cloud.secret.aliases["current"] == before
    cloud.assert_consistent()  # factory-service's template too, not only its traffic


def test_a_keyring_created_on_the_cloud_is_in_the_one_audit_log(cloud):
    result = cloud.voke("rotate", "jwt", "--init", "--yes", "--json")
    assert result.exit_code == 0, result.stdout + result.stderr
    assert [e["event_type"] for e in cloud.audit()] == ["rotation.init"]  # as `voke audit show` lists it


@pytest.mark.parametrize(
    ("alias", "state", "remedy"),
    [
        ("current", "DISABLED", "gcloud secrets versions enable 2 --secret db-app"),
        ("current", "DESTROYED", "--update-version-aliases=current=N"),
        ("previous", "DESTROYED", "--remove-version-aliases=previous"),  # every update would be refused
    ],
)
def test_a_version_the_rotation_needs_that_is_not_enabled_is_a_precondition_naming_it(
    cloud, alias, state, remedy
):
    number = cloud.secret.aliases[alias]
    version = next(v for v in cloud.secret.versions if v.number == number)
    version.state = state
    before = {k: v for k, v in cloud.fake.sql.users.items()}
    result = cloud.voke("rotate", "db-password", "--yes", "--json")
    assert result.exit_code == 5, result.stdout + result.stderr  # not "the current login None ..." (exit 2)
    error = result.json["error"]
    assert error["message"] == f"secret db-app: {alias} version {number} is {state}; nothing was changed"
    assert remedy in error["hint"]
    assert cloud.fake.sql.users == before and cloud.record() is None and len(cloud.secret.versions) == 2


def test_a_disabled_previous_version_does_not_stop_a_rotation(cloud):
    number = cloud.secret.aliases["previous"]
    next(v for v in cloud.secret.versions if v.number == number).state = "DISABLED"
    result = cloud.voke("rotate", "db-password", "--yes", "--json")
    assert result.exit_code == 0, result.stdout + result.stderr
    assert cloud.secret.aliases["previous"] == 2


@pytest.mark.parametrize("after", [0, 4, 5])  # the lock, the test step's record, the commit
def test_a_record_write_whose_answer_is_lost_counts_once_its_own_write_is_read_back(cloud, after):
    # The write lands, its answer is lost, and the client's retry meets its own write ("etag
    # does not match"): the secret read back holds exactly what was written, so it was done.
    cloud.fake.rest.fail("PATCH", SAVES, "UNAVAILABLE", after=after, answer="drop-after")
    result = cloud.voke("rotate", "db-password", "--yes", "--json")
    assert result.exit_code == 0, result.stdout + result.stderr
    assert result.json["result"]["status"] == "succeeded"
    assert cloud.fake.rest.faults[-1].times == 0  # the lost answer did happen
    cloud.assert_consistent()
