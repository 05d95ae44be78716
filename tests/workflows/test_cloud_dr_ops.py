"""`voke --env NAME dr restore|failover|failback` on Cloud SQL, against the Google Cloud
fakes: a clone into a new instance (refused outside the recoverable window, an
operation DONE with an error raised), replica failover with the services repointed
through their connection secret and redeployed on Cloud Run, the split-brain risk of a
plain promotion, a planned switchover back, reruns, dry runs, audit events, exit codes.

The fake Cloud Run services are healthy only while the host in the credential they are
pinned to is a RUNNABLE Cloud SQL primary, so "healthy" means "repointed correctly"."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("google.cloud.sqladmin_v1beta4")

from voketag_ops.testing.gcp_fakes import FakeGcp, environment_toml

SECRET = "db-app"
SERVICES = ("admin-service", "factory-service")
PRIMARY_IP, REPLICA_IP = "10.20.0.3", "10.30.0.3"


def _toml(env: dict[str, Any], **extra: Any) -> str:
    lines = [environment_toml("prod", {**env, **extra})]
    lines += ["[rotation]", "health_timeout = 1", "[rotation.db_users.app]", f'secret = "{SECRET}"']
    lines += [f"services = {json.dumps(list(SERVICES))}"]
    return "\n".join(lines) + "\n"


class Cloud:
    """The fakes seeded like a deployed platform, and how to run voke against them."""

    def __init__(self, fake: FakeGcp, home: Path, voke: Any, make_environ: Any) -> None:
        self.fake, self.home, self._voke = fake, home, voke
        self.environ = make_environ(home / "state", VOKE_CONFIG=str(home / "voke.toml"), VOKE_ENV="prod")

    def configure(self, **extra: Any) -> None:
        env = self.fake.environment(services=list(SERVICES), replica="voke-db-dr")
        (self.home / "voke.toml").write_text(_toml(env, **extra))

    def voke(self, *args: str) -> Any:
        return self._voke(*args, environ=self.environ)

    def store(self) -> Any:
        from voketag_ops.adapters.gcp.secrets import GcpSecretStore

        return GcpSecretStore(self.fake.context())

    def host_of(self, alias: str = "current") -> str:
        return str(json.loads(self.store().access(SECRET, alias))["host"])

    def role(self, name: str) -> str | None:
        return self.fake.sql.instances[name]["master"]

    def audit(self) -> list[dict[str, Any]]:
        path = self.home / "state" / "audit" / "audit.jsonl"
        return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []

    def posts(self, suffix: str) -> list[str]:
        return [p for m, p in self.fake.rest.calls if m == "POST" and p.endswith(suffix)]


def _seed(fake: FakeGcp, *, dr_replica: bool) -> None:
    fake.sql.add_instance("voke-db", ip=PRIMARY_IP, dr_replica="voke-db-dr" if dr_replica else None)
    fake.sql.add_instance("voke-db-dr", region="us-east1", replica_of="voke-db", ip=REPLICA_IP)
    from voketag_ops.adapters.gcp.secrets import GcpSecretStore

    store = GcpSecretStore(fake.context())
    store.create(SECRET)
    versions = [
        store.add_version(
            SECRET,
            json.dumps(
                {
                    "username": role,
                    "password": "pw-" + role,
                    "host": PRIMARY_IP,
                    "port": 5432,
                    "dbname": "voketag",
                }
            ).encode(),
        ).version
        for role in ("app_b", "app_a")
    ]
    store.update(
        SECRET, etag=store.get(SECRET).etag, aliases={"previous": versions[0], "current": versions[1]}
    )
    for service in SERVICES:
        fake.run.add_service(service, SECRET, versions[1])

    def reaches_a_primary(payload: bytes) -> bool:
        host = json.loads(payload).get("host")
        return any(
            i["ip"] == host and i["master"] is None and i["state"] == "RUNNABLE"
            for i in fake.sql.instances.values()
        )

    fake.run.probe = reaches_a_primary


def _cloud(tmp_path: Path, voke: Any, make_environ: Any, *, dr_replica: bool) -> Iterator[Cloud]:
    with FakeGcp() as fake:
        _seed(fake, dr_replica=dr_replica)
        cloud = Cloud(fake, tmp_path, voke, make_environ)
        cloud.configure()
        yield cloud


@pytest.fixture
def cloud(tmp_path: Path, voke: Any, make_environ: Any) -> Iterator[Cloud]:
    """Enterprise Plus with voke-db-dr as the designated DR replica."""
    yield from _cloud(tmp_path, voke, make_environ, dr_replica=True)


@pytest.fixture
def plain(tmp_path: Path, voke: Any, make_environ: Any) -> Iterator[Cloud]:
    """A cross-region read replica that is not a designated DR replica."""
    yield from _cloud(tmp_path, voke, make_environ, dr_replica=False)


# -- restore ------------------------------------------------------------------------------------------
def test_restore_clones_into_a_new_instance_and_audits(cloud):
    result = cloud.voke("dr", "restore", "--to", "-1h", "--name", "voke-db-restore", "--yes", "--json")
    assert result.exit_code == 0, result.stdout + result.stderr
    doc = result.json
    assert doc["command"] == "dr restore" and doc["ok"] is True
    report = doc["result"]
    assert report["instance"]["name"] == "voke-db-restore" and report["instance"]["state"] == "RUNNABLE"
    assert report["operation"]["kind"] == "CLONE" and report["operation"]["status"] == "DONE"
    assert report["source"] == "voke-db" and report["target"].endswith("Z")
    assert cloud.posts("/instances/voke-db/clone") and "voke-db-restore" in cloud.fake.sql.instances
    assert cloud.role("voke-db") is None  # the primary is untouched
    event = cloud.audit()[-1]
    assert event["event_type"] == "dr.restore" and event["result"] == "success"
    assert event["target"] == "voke-db-restore" and event["env"] == "prod"
    human = cloud.voke("dr", "restore", "--to", "-2h", "--yes")
    assert human.exit_code == 0, human.stderr
    assert "voke-db-pitr-" in human.stdout and "gcloud sql instances delete" in human.stdout


PRIMARY_LABELS = {"voke-env": "prod", "voke-role": "primary", "voke-since": "20261101t000000z", "voke-op": "failback"}  # fmt: skip


def test_a_restored_clone_is_labelled_a_restore_not_the_primary_it_copies(cloud):
    # Found by review: the clone kept voke-db's labels (voke-role=primary, voke-since, voke-op),
    # so anything selecting instances by label took the restored copy for production's primary.
    cloud.fake.sql.instances["voke-db"]["labels"] = PRIMARY_LABELS | {"team": "core"}
    plan = cloud.voke("dr", "restore", "--to", "-1h", "--name", "voke-db-restore", "--dry-run", "--json")
    assert any("voke-role=restored" in step for step in plan.json["result"]["plan"]), plan.stdout
    result = cloud.voke("dr", "restore", "--to", "-1h", "--name", "voke-db-restore", "--yes", "--json")
    assert result.exit_code == 0, result.stdout + result.stderr
    report = result.json["result"]
    from datetime import datetime

    stamp = datetime.fromisoformat(report["target"]).strftime("%Y%m%dt%H%M%Sz")  # a label value
    restored = {
        "voke-env": "prod",
        "voke-role": "restored",
        "voke-restore-of": "voke-db",
        "voke-restore-to": stamp,
    }
    assert report["labels"] == restored, report
    labels = {k: v for k, v in _labels(cloud, "voke-db-restore").items() if v}  # "" = cleared
    assert labels == restored | {"team": "core"}, labels  # (labels of the user's own are kept)
    assert _labels(cloud, "voke-db") == PRIMARY_LABELS | {"team": "core"}  # production's record untouched
    status = cloud.voke("dr", "status", "--json").json["result"]
    assert status["topology"]["primary"] == "voke-db" and status["topology"]["disagreement"] is None


def test_a_restored_clone_that_cannot_be_labelled_stops_for_a_person_naming_the_patch(cloud):
    cloud.fake.sql.instances["voke-db"]["labels"] = dict(PRIMARY_LABELS)
    cloud.fake.sql.fail_next("UPDATE", "simulated: the label patch failed")
    result = cloud.voke("dr", "restore", "--to", "-1h", "--name", "voke-db-restore", "--yes", "--json")
    assert result.exit_code == 7, result.stdout + result.stderr
    error = result.json["error"]
    assert "made voke-db-restore, but could not label it as a restore" in error["message"], error
    assert (
        "gcloud sql instances patch voke-db-restore --project voke-test --update-labels=voke-env=prod,"
        in error["hint"]
    )
    assert "--remove-labels=voke-since,voke-op" in error["hint"], error
    assert _labels(cloud, "voke-db-restore")["voke-role"] == "primary"  # as the message warns
    assert _event(cloud, "dr.restore")["result"] == "failure"


def test_an_instance_busy_with_an_operation_of_its_own_is_asked_again_not_failed(cloud):
    # Cloud SQL refuses (409 operationInProgress) a call made while another operation runs on
    # the instance: its own backup after a create, maintenance. Nothing was started; voke asks again.
    cloud.fake.sql.busy["voke-db"] = 2
    result = cloud.voke("dr", "restore", "--to", "-1h", "--name", "voke-db-busy", "--yes", "--json")
    assert result.exit_code == 0, result.stdout + result.stderr
    assert len(cloud.posts("/instances/voke-db/clone")) == 3 and cloud.fake.sql.busy["voke-db"] == 0
    assert "voke-db-busy" in cloud.fake.sql.instances


@pytest.mark.parametrize("to", ["-8d", "-5s"], ids=["before-earliest", "after-latest"])
def test_restore_refuses_a_target_outside_the_window_before_starting(cloud, to):
    result = cloud.voke("dr", "restore", "--to", to, "--yes", "--json")
    assert result.exit_code == 5, result.stdout
    assert "recoverable window" in result.json["error"]["message"]
    assert not cloud.posts("/clone")


def test_restore_operation_done_with_an_error_exits_4_and_leaves_no_instance(cloud):
    cloud.fake.sql.fail_next("CLONE", "simulated: insufficient quota in us-central1")
    result = cloud.voke("dr", "restore", "--to", "-10m", "--name", "broken", "--yes", "--json")
    assert result.exit_code == 4, result.stdout
    assert "insufficient quota" in result.json["error"]["message"]
    assert "broken" not in cloud.fake.sql.instances
    event = cloud.audit()[-1]
    assert event["event_type"] == "dr.restore" and event["result"] == "failure"


def test_a_clone_still_running_at_the_deadline_stops_for_a_person(cloud):
    cloud.configure(operation_timeout=0.05)
    cloud.fake.sql.polls_per_step = 10**6  # the operation never leaves PENDING
    result = cloud.voke("dr", "restore", "--to", "-10m", "--name", "slow", "--yes", "--json")
    assert result.exit_code == 7, result.stdout
    assert "continues in Cloud SQL" in result.json["error"]["message"]
    assert "gcloud sql instances" in result.json["error"]["hint"]


def test_restore_refusals_dry_run_and_confirmation(cloud):
    over = cloud.voke("dr", "restore", "--to", "-1h", "--name", "voke-db", "--yes", "--json")
    assert over.exit_code == 2 and "new one" in over.json["error"]["message"]
    # the drills' sweep owns <instance>-drill-*: a restore may not take such a name
    drill = cloud.voke("dr", "restore", "--to", "-1h", "--name", "voke-db-drill-mine", "--yes", "--json")
    assert drill.exit_code == 2 and "scratch" in drill.json["error"]["message"]
    long = cloud.voke("dr", "restore", "--to", "-1h", "--name", "r" * 80, "--dry-run", "--json")
    assert long.exit_code == 0, long.stdout  # Cloud SQL allows 98 characters
    cloud.voke("dr", "restore", "--to", "-1h", "--name", "taken", "--yes")
    again = cloud.voke("dr", "restore", "--to", "-1h", "--name", "taken", "--yes", "--json")
    assert again.exit_code == 5 and "exists" in again.json["error"]["message"]
    bad = cloud.voke("dr", "restore", "--to", "2026-01-01T00:00:00", "--yes", "--json")
    assert bad.exit_code == 2 and "offset" in bad.json["error"]["message"]
    unasked = cloud.voke("dr", "restore", "--to", "garbage")  # before the question and the progress line
    assert unasked.exit_code == 2 and unasked.stderr.startswith("error: --to: not a point in time"), (
        unasked.stderr
    )
    clones = len(cloud.posts("/clone"))
    plan = cloud.voke("dr", "restore", "--to", "-1h", "--dry-run", "--json")
    assert plan.exit_code == 0 and plan.json["result"]["dry_run"] is True and plan.json["result"]["plan"]
    unconfirmed = cloud.voke("dr", "restore", "--to", "-1h", "--json")
    assert unconfirmed.exit_code == 2 and "--yes" in unconfirmed.json["error"]["message"]
    assert len(cloud.posts("/clone")) == clones


# -- failover and failback ----------------------------------------------------------------------------
def _serving_version(cloud: Cloud, service: str) -> str:
    [(secret, version)] = cloud.fake.run.pinned(service)
    assert secret == SECRET
    return version


def test_dr_replica_failover_repoints_services_then_switchover_fails_back(cloud):
    store = cloud.store()
    before = len(store.get(SECRET).versions)
    result = cloud.voke("dr", "failover", "--yes", "--json")
    assert result.exit_code == 0, result.stdout + result.stderr
    report = result.json["result"]
    assert report["mode"] == "replica-failover" and report["split_brain_risk"] is False
    assert report["new_leader"] == "voke-db-dr" and report["operation"]["kind"] == "PROMOTE_REPLICA"
    # failover=true: the old primary follows the promoted DR replica (a plain promote leaves it alone)
    assert cloud.role("voke-db-dr") is None and cloud.role("voke-db") == "voke-db-dr"
    # the services' connection secret names the new primary, and they serve it
    assert cloud.host_of("current") == REPLICA_IP and cloud.host_of("previous") == REPLICA_IP
    current = store.get(SECRET).aliases["current"]
    assert len(store.get(SECRET).versions) == before + 2
    assert sorted(report["services"]["redeployed"]) == list(SERVICES)
    assert all(_serving_version(cloud, s) == str(current) for s in SERVICES)
    assert all(s["healthy"] for s in report["health"]) and len(report["health"]) == 2
    assert [s["ok"] for s in report["steps"]] == [True] * 5
    event = cloud.audit()[-1]
    assert (event["event_type"], event["result"], event["target"]) == ("dr.failover", "success", "voke-db-dr")
    assert "pw-" not in json.dumps(cloud.audit()) + result.stdout  # no secret anywhere

    rerun = cloud.voke("dr", "failover", "--yes", "--json")  # safe to re-run: nothing more to do
    assert rerun.exit_code == 0, rerun.stdout
    assert rerun.json["result"]["mode"] == "resume" and rerun.json["result"]["services"]["repointed"] == []
    assert len(store.get(SECRET).versions) == before + 2

    status = cloud.voke("dr", "status", "--json")
    assert status.json["result"]["writable_nodes"] == ["voke-db-dr"]

    back = cloud.voke("dr", "failback", "--yes", "--json")
    assert back.exit_code == 0, back.stdout + back.stderr
    assert (
        back.json["result"]["switched"] is True and back.json["result"]["operation"]["kind"] == "SWITCHOVER"
    )
    assert cloud.role("voke-db") is None and cloud.role("voke-db-dr") == "voke-db"
    assert cloud.host_of() == PRIMARY_IP
    current = store.get(SECRET).aliases["current"]
    assert all(_serving_version(cloud, s) == str(current) for s in SERVICES)
    assert cloud.audit()[-1]["event_type"] == "dr.failback"
    again = cloud.voke("dr", "failback", "--yes", "--json")
    assert again.exit_code == 0 and again.json["result"]["switched"] is False
    assert cloud.posts("/switchover") == ["/sql/v1beta4/projects/voke-test/instances/voke-db/switchover"]


def test_plain_promotion_reports_split_brain_and_failback_refuses(plain):
    result = plain.voke("dr", "failover", "--yes", "--json")
    assert result.exit_code == 0, result.stdout + result.stderr
    report = result.json["result"]
    assert report["mode"] == "promote" and report["split_brain_risk"] is True
    assert sorted(report["writable_nodes"]) == ["voke-db", "voke-db-dr"]
    assert "activation-policy=NEVER" in report["warnings"][0]
    assert plain.role("voke-db") is None and plain.role("voke-db-dr") is None  # both independent
    assert plain.host_of() == REPLICA_IP
    check = plain.voke("dr", "check", "--json")
    assert check.exit_code == 1 and "split_brain" in check.json["result"]["failed"]
    human = plain.voke("dr", "failover", "--yes")  # a rerun: nothing more, the warning again
    assert human.exit_code == 0 and "split-brain risk" in human.stdout
    back = plain.voke("dr", "failback", "--yes", "--json")
    assert back.exit_code == 5 and "both primaries" in back.json["error"]["message"]
    assert not plain.posts("/switchover")


def test_a_promotion_done_with_an_error_changes_nothing(cloud):
    cloud.fake.sql.fail_next("PROMOTE_REPLICA", "simulated: the replica is lagging too far")
    result = cloud.voke("dr", "failover", "--yes", "--json")
    assert result.exit_code == 4, result.stdout
    assert "lagging" in result.json["error"]["message"]
    assert cloud.role("voke-db-dr") == "voke-db" and cloud.host_of() == PRIMARY_IP
    assert cloud.audit()[-1]["result"] == "failure"


def test_a_promotion_or_switchover_still_running_at_the_deadline_stops_for_a_person(cloud):
    cloud.configure(operation_timeout=0.05)
    cloud.fake.sql.polls_per_step = 10**6  # the operation never leaves PENDING
    over = cloud.voke("dr", "failover", "--yes", "--json")
    assert over.exit_code == 7, over.stdout  # not 4: the promotion is under way
    assert "continues in Cloud SQL" in over.json["error"]["message"]
    assert "dr failover --yes" in over.json["error"]["hint"]
    cloud.fake.sql.polls_per_step = 1
    cloud.configure(operation_timeout=30)
    asked = len(cloud.posts("promoteReplica"))
    busy = cloud.voke("dr", "failover", "--yes", "--json")  # while it runs, Cloud SQL refuses another
    assert busy.exit_code == 5 and "already in progress" in busy.json["error"]["message"], busy.stdout
    # the running operation is this very promotion: not asked again (once DONE, it would promote twice)
    assert len(cloud.posts("promoteReplica")) == asked + 1
    cloud.fake.sql.finish_pending()  # Cloud SQL finishes it on its own
    assert cloud.voke("dr", "failover", "--yes", "--json").exit_code == 0  # the rerun finishes voke's part
    cloud.configure(operation_timeout=0.05)
    cloud.fake.sql.polls_per_step = 10**6
    back = cloud.voke("dr", "failback", "--yes", "--json")
    assert back.exit_code == 7, back.stdout
    assert "continues in Cloud SQL" in back.json["error"]["message"]
    assert "dr failback --yes" in back.json["error"]["hint"]


def test_services_that_do_not_come_up_stop_for_a_person_and_a_rerun_finishes(cloud):
    versions = len(cloud.store().get(SECRET).versions)
    cloud.fake.run.unhealthy = {(SECRET, str(versions + 2))}  # the new `current`
    result = cloud.voke("dr", "failover", "--yes", "--json")
    assert result.exit_code == 7, result.stdout
    assert "not repointed" in result.json["error"]["message"]
    assert "dr failover --yes" in result.json["error"]["hint"]
    assert cloud.role("voke-db-dr") is None  # the database did move
    cloud.fake.run.unhealthy = set()
    rerun = cloud.voke("dr", "failover", "--yes", "--json")
    assert rerun.exit_code == 0, rerun.stdout
    assert rerun.json["result"]["mode"] == "resume" and rerun.json["result"]["services"]["repointed"] == []
    assert all(_serving_version(cloud, s) == str(versions + 2) for s in SERVICES)


@pytest.mark.parametrize(("alias", "state"), [("current", "DESTROYED"), ("previous", "DISABLED")])
def test_a_connection_version_the_repoint_cannot_read_refuses_the_failover_before_the_promotion(
    cloud, alias, state
):
    secret = cloud.fake.secretmanager.secrets[SECRET]
    number = secret.aliases[alias]
    next(v for v in secret.versions if v.number == number).state = state
    result = cloud.voke("dr", "failover", "--yes", "--json")
    assert result.exit_code == 5, result.stdout  # not exit 7 with the services left on a read-only replica
    error = result.json["error"]
    assert error["message"].startswith(f"secret {SECRET}: {alias} version {number} is {state}")
    remedy = (
        "gcloud secrets versions enable 1" if state == "DISABLED" else "--update-version-aliases=current="
    )
    assert remedy in error["hint"]
    assert not cloud.posts("/promoteReplica") and cloud.role("voke-db-dr") == "voke-db"


def test_a_version_disabled_during_the_failover_names_it_in_the_hint_to_rerun(cloud):
    secret = cloud.fake.secretmanager.secrets[SECRET]
    promote = next(
        i for i, r in enumerate(cloud.fake.rest.routes) if r[1].pattern.endswith("/promoteReplica")
    )
    method, rx, handler = cloud.fake.rest.routes[promote]

    def promote_and_disable(request: Any) -> Any:  # someone disables `previous` while Cloud SQL promotes
        next(v for v in secret.versions if v.number == secret.aliases["previous"]).state = "DISABLED"
        return handler(request)

    cloud.fake.rest.routes[promote] = (method, rx, promote_and_disable)
    result = cloud.voke("dr", "failover", "--yes", "--json")
    assert result.exit_code == 7, result.stdout
    error = result.json["error"]
    assert "not repointed" in error["message"] and "previous version 1 is DISABLED" in error["message"]
    assert error["hint"].startswith("enable it: gcloud secrets versions enable 1 --secret db-app")
    assert error["hint"].endswith(
        "then `voke --env prod dr failover --yes` (it does not repeat what is done)"
    )


def test_failover_refusals_and_dry_run(cloud):
    plan = cloud.voke("dr", "failover", "--dry-run", "--json")
    assert plan.exit_code == 0 and plan.json["result"]["mode"] == "replica-failover"
    assert "failover=true" in plan.json["result"]["plan"][0]
    back_plan = cloud.voke("dr", "failback", "--dry-run", "--json")
    assert back_plan.exit_code == 0 and back_plan.json["result"]["switch"] is False
    assert cloud.voke("dr", "failover", "--json").exit_code == 2  # no --yes, no terminal
    assert cloud.voke("dr", "failback", "--clone", "--yes", "--json").exit_code == 2
    store = cloud.store()
    meta = store.get(SECRET)
    store.update(SECRET, etag=meta.etag, annotations={"voke-rotation": json.dumps({"id": "r1"})})
    busy = cloud.voke("dr", "failover", "--yes", "--json")
    assert busy.exit_code == 5 and "rotation" in busy.json["error"]["message"]
    assert not cloud.posts("/promoteReplica") and cloud.role("voke-db-dr") == "voke-db"
    cloud.configure(replica=None)
    assert cloud.voke("dr", "failover", "--yes", "--json").exit_code == 3


# -- the recorded topology (labels on the instances) --------------------------------------------------
def _labels(cloud: Cloud, name: str) -> dict[str, str]:
    return dict(cloud.fake.sql.instances[name]["labels"])


def _db_target(cloud: Cloud, **extra: Any) -> Any:
    from voketag_ops.config import Settings
    from voketag_ops.workflows.cloud import CloudPlatform

    env = cloud.fake.environment(replica="voke-db-dr", **extra)
    return CloudPlatform(Settings.model_validate({"env": "prod", "environments": {"prod": env}})).db_target()


def test_after_failover_every_run_knows_the_new_primary_without_editing_voke_toml(cloud):
    # db_host is the home primary's address: a rotation's login test uses it only while
    # the home instance is the primary
    assert _db_target(cloud, db_host="10.99.0.1").endpoint() == ("10.99.0.1", 5432)
    toml = (cloud.home / "voke.toml").read_text()
    assert cloud.voke("dr", "failover", "--yes", "--json").exit_code == 0
    assert (cloud.home / "voke.toml").read_text() == toml  # nothing edited: the record is in Cloud SQL
    assert _labels(cloud, "voke-db-dr")["voke-role"] == "primary"
    assert _labels(cloud, "voke-db-dr")["voke-op"] == "failover"
    assert _labels(cloud, "voke-db") == {"voke-env": "prod", "voke-role": "replica"}
    status = cloud.voke("dr", "status", "--json")  # a new run: it reads the labels back
    assert status.exit_code == 0, status.stdout
    snap = status.json["result"]
    assert snap["leader"]["name"] == "voke-db-dr" and snap["standby"]["name"] == "voke-db"
    assert snap["standby"]["streaming"] is True
    topo = snap["topology"]
    assert topo["primary"] == "voke-db-dr" and topo["home"] == "voke-db" and topo["moved"] is True
    assert topo["since"].endswith("Z") and topo["operation"] == "failover"
    human = cloud.voke("dr", "status")
    assert (
        f"primary: voke-db-dr (since failover at {topo['since']}, configured home: voke-db)" in human.stdout
    )
    check = cloud.voke("dr", "check", "--json")  # judged on the new primary, which has no backup yet
    assert check.exit_code == 1 and check.json["result"]["failed"] == ["backup_age"], check.stdout
    from datetime import timedelta

    from voketag_ops.testing.gcp_fakes import now

    cloud.fake.sql.add_backup("voke-db-dr", "SUCCESSFUL", now() - timedelta(hours=1))
    assert cloud.voke("dr", "check", "--json").exit_code == 0
    # restore clones the primary of now; rotation's users.update goes to it too
    restore = cloud.voke("dr", "restore", "--to", "-1h", "--name", "after-failover", "--yes", "--json")
    assert restore.exit_code == 0, restore.stdout
    assert restore.json["result"]["source"] == "voke-db-dr"
    assert cloud.posts("/instances/voke-db-dr/clone") and not cloud.posts("/instances/voke-db/clone")
    target = _db_target(cloud)
    cloud.fake.sql.users[("voke-db-dr", "app_a")] = None
    target.set_password("app_a", "s3cret-pw-123")
    assert cloud.fake.sql.users[("voke-db-dr", "app_a")] == "s3cret-pw-123"
    # ... and its login test goes to the new primary, not to db_host (the old primary's address)
    assert _db_target(cloud, db_host="10.99.0.1").endpoint() == (REPLICA_IP, 5432)
    # ... or to replica_db_host (a Cloud SQL Auth Proxy / tunnel to the replica) when set
    proxied = _db_target(cloud, db_host="10.99.0.1", replica_db_host="127.0.0.2", replica_db_port=6543)
    assert proxied.endpoint() == ("127.0.0.2", 6543)
    from voketag_ops.errors import UsageError

    cloud.fake.sql.instances["voke-db-dr"]["ip"] = ""
    with pytest.raises(UsageError) as no_ip:
        _db_target(cloud, db_host="10.99.0.1").endpoint()
    assert "environments.NAME.replica_db_host" in (no_ip.value.hint or "")
    cloud.fake.sql.instances["voke-db-dr"]["ip"] = REPLICA_IP

    back = cloud.voke("dr", "failback", "--yes", "--json")
    assert back.exit_code == 0, back.stdout
    assert (
        _labels(cloud, "voke-db")["voke-role"] == "primary"
        and _labels(cloud, "voke-db")["voke-op"] == "failback"
    )
    assert _labels(cloud, "voke-db-dr")["voke-role"] == "replica"
    again = cloud.voke("dr", "status", "--json").json["result"]
    assert again["leader"]["name"] == "voke-db" and again["topology"]["moved"] is False
    # back home: db_host again, replica_db_host no longer
    home = _db_target(cloud, db_host="10.99.0.1", replica_db_host="127.0.0.2", replica_db_port=6543)
    assert home.endpoint() == ("10.99.0.1", 5432)


def test_a_record_that_disagrees_with_cloud_sql_is_shown_by_status_and_check_and_stops_changes(cloud):
    from voketag_ops.errors import PreconditionError

    # recorded: voke-db-dr is the primary; Cloud SQL: it is still a replica
    cloud.fake.sql.instances["voke-db-dr"]["labels"] = {"voke-env": "prod", "voke-role": "primary"}
    # status and check are what an operator runs now: they answer, showing the disagreement
    status = cloud.voke("dr", "status", "--json")
    assert status.exit_code == 0, status.stdout
    problem = status.json["result"]["topology"]["disagreement"]
    assert "disagree" in problem["message"] and "dr failover --yes" in problem["hint"]
    # the leader shown is the instance Cloud SQL calls the primary, and its PITR window and
    # backups are read there (Cloud SQL refuses getLatestRecoveryTime on a replica)
    snap = status.json["result"]
    assert snap["leader"]["name"] == "voke-db" and snap["standby"]["name"] == "voke-db-dr"
    assert snap["topology"]["primary"] == "voke-db-dr" and snap["topology"]["shown_primary"] == "voke-db"
    assert snap["recoverable_window"]["latest"] is not None and snap["notes"] == []
    assert not [p for m, p in cloud.fake.rest.calls if "voke-db-dr/getLatestRecoveryTime" in p]
    human = cloud.voke("dr", "status")
    assert human.exit_code == 0 and "record disagrees with Cloud SQL" in human.stdout
    check = cloud.voke("dr", "check", "--json")
    assert check.exit_code == 1 and check.json["result"]["failed"][0] == "topology", check.stdout
    # what changes things stays strict
    restore = cloud.voke("dr", "restore", "--to", "-1h", "--yes", "--json")
    assert restore.exit_code == 5 and "disagree" in restore.json["error"]["message"], restore.stdout
    with pytest.raises(PreconditionError, match="disagree"):
        _ = _db_target(cloud).instance
    # two instances claiming the role
    cloud.fake.sql.instances["voke-db"]["labels"] = {"voke-env": "prod", "voke-role": "primary"}
    both = cloud.voke("dr", "status", "--json")
    assert both.exit_code == 0, both.stdout
    assert "both labelled the primary" in both.json["result"]["topology"]["disagreement"]["message"]
    assert both.json["result"]["leader"]["name"] == "voke-db"  # the one Cloud SQL calls the primary
    assert cloud.voke("dr", "check", "--json").exit_code == 1
    assert cloud.voke("dr", "restore", "--to", "-1h", "--yes", "--json").exit_code == 5
    # labels of another environment are not this one's record
    for name in ("voke-db", "voke-db-dr"):
        cloud.fake.sql.instances[name]["labels"] = {"voke-env": "staging", "voke-role": "primary"}
    assert cloud.voke("dr", "status", "--json").json["result"]["topology"]["recorded"] is False
    assert not cloud.posts("/clone")


def test_a_failover_whose_record_fails_stops_for_a_person_and_a_rerun_records_it(cloud):
    cloud.fake.rest.fail("PATCH", r"/instances/voke-db-dr$", status="PERMISSION_DENIED")
    result = cloud.voke("dr", "failover", "--yes", "--json")
    assert result.exit_code == 7, result.stdout
    assert "not recorded" in result.json["error"]["message"]
    assert cloud.role("voke-db-dr") is None  # promoted, not recorded
    status = cloud.voke("dr", "status", "--json")  # home recorded/assumed, but it is a replica now
    assert status.exit_code == 0, status.stdout
    assert "dr failover --yes" in status.json["result"]["topology"]["disagreement"]["hint"]
    rerun = cloud.voke("dr", "failover", "--yes", "--json")
    assert rerun.exit_code == 0, rerun.stdout
    assert _labels(cloud, "voke-db-dr")["voke-role"] == "primary"
    assert cloud.voke("dr", "status", "--json").json["result"]["leader"]["name"] == "voke-db-dr"


def test_a_plain_promotion_records_the_old_primary_as_fenced(plain):
    assert plain.voke("dr", "failover", "--yes", "--json").exit_code == 0
    assert _labels(plain, "voke-db")["voke-role"] == "fenced"
    snap = plain.voke("dr", "status", "--json").json["result"]
    assert snap["leader"]["name"] == "voke-db-dr" and snap["split_brain"] is True


def test_status_shows_calls_cloud_sql_refuses_as_unknown_and_check_fails_them(cloud):
    cloud.fake.rest.fail("GET", r"/instances/voke-db/backupRuns$", status="PERMISSION_DENIED", times=99)
    cloud.fake.rest.fail(
        "GET", r"/instances/voke-db/getLatestRecoveryTime$", status="PERMISSION_DENIED", times=99
    )
    status = cloud.voke("dr", "status", "--json")
    assert status.exit_code == 0, status.stdout + status.stderr
    snap = status.json["result"]
    assert snap["newest_backup"] is None and snap["backups"] == []
    assert snap["recoverable_window"] == {"earliest": None, "latest": None, "seconds": None}
    assert set(snap["errors"]) == {"backups", "recoverable_window"} and len(snap["notes"]) == 2
    human = cloud.voke("dr", "status")
    assert human.exit_code == 0 and "note: could not read the recoverable window of voke-db" in human.stdout
    check = cloud.voke("dr", "check", "--json")
    assert check.exit_code == 1, check.stdout
    failed = {c["name"]: c["message"] for c in check.json["result"]["checks"] if not c["ok"]}
    assert set(failed) == {"backup_age", "pitr_window"}
    assert failed["backup_age"].startswith("could not read the backups of voke-db")


def test_failback_refuses_a_record_where_both_instances_claim_the_primary(cloud):
    assert cloud.voke("dr", "failover", "--yes", "--json").exit_code == 0
    assert cloud.voke("dr", "failback", "--yes", "--json").exit_code == 0  # back home, voke-db primary
    cloud.fake.sql.instances["voke-db-dr"]["labels"] = {"voke-env": "prod", "voke-role": "primary"}
    patches = len([c for c in cloud.fake.rest.calls if c[0] in ("PATCH", "POST")])
    back = cloud.voke("dr", "failback", "--yes", "--json")
    assert back.exit_code == 5, back.stdout
    err = back.json["error"]
    assert "both labelled the primary" in err["message"] and "dr status" in err["hint"]
    assert len([c for c in cloud.fake.rest.calls if c[0] in ("PATCH", "POST")]) == patches
    assert cloud.voke("dr", "failback", "--dry-run", "--json").exit_code == 5


# -- lost answers and lost operations --------------------------------------------------------------------
SQL_OPERATION = r"/sql/v1beta4/projects/[^/]+/operations/[^/]+$"


def test_a_clone_whose_answer_is_lost_is_found_running_and_the_restore_finishes(cloud):
    cloud.fake.rest.fail("POST", r"/instances/voke-db/clone$", answer="drop-after")
    result = cloud.voke("dr", "restore", "--to", "-1h", "--name", "voke-db-lost", "--yes", "--json")
    assert result.exit_code == 0, result.stdout + result.stderr
    assert result.json["result"]["instance"]["state"] == "RUNNABLE"
    assert len(cloud.posts("/instances/voke-db/clone")) == 1  # found, not sent again


def test_a_clone_whose_answer_is_lost_and_not_found_stops_for_a_person(cloud):
    cloud.fake.rest.fail("POST", r"/instances/voke-db/clone$", answer="drop")
    result = cloud.voke("dr", "restore", "--to", "-1h", "--name", "voke-db-lost", "--yes", "--json")
    assert result.exit_code == 7, result.stdout
    err = result.json["error"]
    assert "may have been made" in err["message"] and "nothing was changed" not in err["hint"]
    assert "gcloud sql operations list --instance voke-db --project voke-test" in err["hint"]
    assert "gcloud sql instances delete voke-db-lost" in err["hint"]
    assert cloud.audit()[-1]["result"] == "failure"


def test_a_promotion_whose_answer_is_cut_off_is_found_running_and_the_failover_finishes(cloud):
    cloud.fake.rest.fail("POST", r"/instances/voke-db-dr/promoteReplica$", answer="cut")
    result = cloud.voke("dr", "failover", "--yes", "--json")
    assert result.exit_code == 0, result.stdout + result.stderr
    assert result.json["result"]["new_leader"] == "voke-db-dr" and len(cloud.posts("promoteReplica")) == 1


def test_polling_that_fails_after_the_promotion_began_stops_for_a_person_naming_it(cloud):
    cloud.fake.rest.fail(
        "GET", SQL_OPERATION, "PERMISSION_DENIED", times=99
    )  # (not retried: UNAVAILABLE costs 7 s of backoff)
    result = cloud.voke("dr", "failover", "--yes", "--json")
    assert result.exit_code == 7, result.stdout  # not 4: the promotion runs
    err = result.json["error"]
    (op,) = [
        name
        for name, o in cloud.fake.sql.operations.items()
        if o["doc"]["operationType"] == "PROMOTE_REPLICA"
    ]
    assert f"operation {op} was started" in err["message"]
    assert f"gcloud sql operations describe {op} --project voke-test" in err["hint"]
    assert "dr failover --yes" in err["hint"] and "nothing was changed" not in err["hint"]
    cloud.fake.rest.faults.clear()
    busy = cloud.voke("dr", "failover", "--yes", "--json")  # it still runs: refused, naming it
    assert busy.exit_code == 5, busy.stdout
    assert op in busy.json["error"]["message"] and "DONE" in busy.json["error"]["hint"]
    cloud.fake.sql.finish_pending()
    assert cloud.voke("dr", "failover", "--yes", "--json").exit_code == 0


def test_polling_that_fails_after_the_clone_began_names_the_clone_to_inspect_or_delete(cloud):
    cloud.fake.rest.fail("GET", SQL_OPERATION, "PERMISSION_DENIED", times=99)
    result = cloud.voke("dr", "restore", "--to", "-1h", "--name", "voke-db-unwatched", "--yes", "--json")
    assert result.exit_code == 7, result.stdout
    err = result.json["error"]
    assert "was started" in err["message"] and "gcloud sql operations describe" in err["hint"]
    assert "gcloud sql instances delete voke-db-unwatched" in err["hint"]


def test_check_fails_only_the_check_whose_answer_is_malformed(cloud):
    cloud.fake.rest.fail("GET", r"/instances/voke-db/backupRuns$", times=99, answer="cut")
    check = cloud.voke("dr", "check", "--json")
    assert check.exit_code == 1, check.stdout + check.stderr
    failed = {c["name"]: c["message"] for c in check.json["result"]["checks"] if not c["ok"]}
    assert set(failed) == {"backup_age"}
    assert "malformed response from the API" in failed["backup_age"]


# -- refusals on record, requests Cloud SQL refuses -------------------------------------------------------
def test_a_refused_restore_failover_or_failback_writes_a_failure_event_a_dry_run_none(cloud):
    def last(result: Any, code: int) -> tuple[str, str, str]:
        assert result.exit_code == code, result.stdout
        event = cloud.audit()[-1]
        return event["event_type"], event["target"], event["result"]

    outside = cloud.voke("dr", "restore", "--to", "-30d", "--yes", "--json")
    kind, target, result = last(outside, 5)
    assert (kind, result) == ("dr.restore", "failure") and target.startswith("voke-db-pitr-")  # the default
    assert "recoverable window" in cloud.audit()[-1]["details"]["error"]["message"]
    named = cloud.voke("dr", "restore", "--to", "-30d", "--name", "voke-db-x", "--yes", "--json")
    assert last(named, 5) == ("dr.restore", "voke-db-x", "failure")
    cloud.fake.sql.instances["voke-db-dr"]["state"] = "MAINTENANCE"
    events = len(cloud.audit())
    assert cloud.voke("dr", "failover", "--dry-run", "--json").exit_code == 5
    assert len(cloud.audit()) == events  # a dry run writes none
    assert last(cloud.voke("dr", "failover", "--yes", "--json"), 5) == (
        "dr.failover",
        "voke-db-dr",
        "failure",
    )
    cloud.fake.sql.instances["voke-db-dr"]["state"] = "RUNNABLE"
    cloud.fake.rest.fail("GET", r"/instances/voke-db-dr$", status="PERMISSION_DENIED", times=99)
    assert last(cloud.voke("dr", "failover", "--yes", "--json"), 4) == (
        "dr.failover",
        "voke-db-dr",
        "failure",
    )
    assert last(cloud.voke("dr", "failback", "--yes", "--json"), 4) == ("dr.failback", "voke-db", "failure")
    assert not cloud.posts("/promoteReplica") and not cloud.posts("/clone")


def test_a_request_cloud_sql_answers_400_is_refused_by_the_backend_not_a_usage_error(cloud):
    cloud.fake.rest.fail("POST", r"/promoteReplica$", status="INVALID_ARGUMENT")
    result = cloud.voke("dr", "failover", "--yes", "--json")
    assert result.exit_code == 4, result.stdout
    error = result.json["error"]
    assert (
        error["type"] == "BackendError"
        and error["message"] == "promote voke-db-dr: injected INVALID_ARGUMENT"
    )
    assert cloud.role("voke-db-dr") == "voke-db" and cloud.host_of() == PRIMARY_IP
    cloud.fake.rest.fail("GET", r"/getLatestRecoveryTime$", status="INVALID_ARGUMENT")
    window = cloud.voke("dr", "restore", "--to", "-1h", "--yes", "--json")
    assert window.exit_code == 4 and "http" not in window.json["error"]["message"], window.stdout
    cloud.fake.rest.fail("POST", r"/clone$", status="INVALID_ARGUMENT")
    clone = cloud.voke("dr", "restore", "--to", "-1h", "--name", "voke-db-r", "--yes", "--json")
    assert clone.exit_code == 4, clone.stdout
    assert "voke-db-r" not in cloud.fake.sql.instances


def test_services_still_sick_after_the_repoint_name_the_command_that_finishes_it(cloud):
    # Found by review: the hint said `voke --env NAME dr status` (a literal NAME) and named no resume.
    # The revisions pass their health check on their tag; the services' own URLs then do not.
    cloud.fake.rest.fail("GET", r"/run/[^/]+/health$", status="UNAVAILABLE", times=len(SERVICES))
    stuck = cloud.voke("dr", "failover", "--yes", "--json")
    assert stuck.exit_code == 7, stuck.stdout
    assert "not healthy after being repointed" in stuck.json["error"]["message"], stuck.stdout
    hint = stuck.json["error"]["hint"]
    assert "NAME" not in hint and "`voke --env prod dr status`" in hint, hint
    assert hint.endswith("once they serve: voke --env prod dr failover --yes"), hint
    cloud.fake.rest.faults.clear()  # they serve
    assert cloud.voke("dr", "failover", "--yes").exit_code == 0  # as the hint says


# -- what a failover or failback reports and audits of its repoint ------------------------------------------
SECRET_VALUES = ("pw-app_a", "pw-app_b")  # the passwords _seed stores


def _event(cloud: Cloud, event_type: str) -> dict[str, Any]:
    event = cloud.audit()[-1]
    assert event["event_type"] == event_type, event
    assert "***" not in json.dumps(event["details"]), event  # a secret's name is not a secret's value
    return event


def _no_secret_value(cloud: Cloud, *outputs: str) -> None:
    seen = json.dumps(cloud.audit()) + "".join(outputs)
    assert not [v for v in SECRET_VALUES if v in seen]


def test_failover_and_failback_report_and_audit_the_repoint_as_the_local_commands_do(cloud):
    # Found by review: the events named the repointed secrets without the versions made, and
    # `services` in --json was the health list where the local commands give the repoint.
    result = cloud.voke("dr", "failover", "--yes", "--json")
    assert result.exit_code == 0, result.stdout + result.stderr
    report = result.json["result"]
    aliases = cloud.store().get(SECRET).aliases
    made = {"current": aliases["current"], "previous": aliases["previous"]}
    assert report["services"] == {  # the local keys, empty or null where they do not apply
        "repointed": [{"secret": SECRET, "versions": made, "host": REPLICA_IP, "port": None}],
        "made": [
            {"secret": SECRET, "alias": "previous", "version": made["previous"]},
            {"secret": SECRET, "alias": "current", "version": made["current"]},
        ],
        "found": [],
        "redeployed": list(SERVICES),
        "repinned": [],
        "stopped": [],
        "stale": [],
        "skipped": [],
        "host": REPLICA_IP,
        "port": None,
        "note": None,
    }
    assert report["health"] == [{"name": s, "healthy": True} for s in SERVICES]
    assert "repointed" not in report and "redeployed" not in report  # one place: `services`
    event = _event(cloud, "dr.failover")
    assert event["result"] == "success"
    assert event["details"]["services"]["repointed"] == [
        {"secret_name": SECRET, "versions": made, "host": REPLICA_IP, "port": None}
    ]
    assert event["details"]["services"]["made"] == [
        {"secret_name": SECRET, "alias": alias, "version": made[alias]} for alias in ("previous", "current")
    ]
    # what the replica had replayed, under the local failover's keys: the Admin API does not say
    unknown = {"replayed_lsn": None, "last_replayed_commit": None}
    assert {k: report[k] for k in unknown} == unknown == {k: event["details"][k] for k in unknown}
    assert event["details"]["services"]["redeployed"] == list(SERVICES)
    back = cloud.voke("dr", "failback", "--yes", "--json")
    assert back.exit_code == 0, back.stdout + back.stderr
    aliases = cloud.store().get(SECRET).aliases
    made_back = {"current": aliases["current"], "previous": aliases["previous"]}
    assert made_back != made and back.json["result"]["services"]["repointed"] == [
        {"secret": SECRET, "versions": made_back, "host": PRIMARY_IP, "port": None}
    ]
    assert back.json["result"]["health"] == [{"name": s, "healthy": True} for s in SERVICES]
    event = _event(cloud, "dr.failback")
    assert event["details"]["services"]["repointed"] == [
        {"secret_name": SECRET, "versions": made_back, "host": PRIMARY_IP, "port": None}
    ]
    human = cloud.voke("dr", "failover", "--yes")  # a resume: nothing more to repoint
    assert human.exit_code == 0, human.stderr
    assert f"redeployed {', '.join(SERVICES)}" in human.stdout
    assert "what it had replayed is not known (Cloud SQL does not report it)" in human.stdout
    _no_secret_value(cloud, result.stdout, back.stdout, human.stdout, human.stderr)


def test_a_failover_whose_redeploy_fails_audits_the_versions_it_made(cloud):
    # Found by review: a run failing after its repoint audited none of it.
    versions = len(cloud.store().get(SECRET).versions)
    cloud.fake.run.unhealthy = {(SECRET, str(versions + 2))}  # the new `current`: its revisions fail
    result = cloud.voke("dr", "failover", "--yes", "--json")
    assert result.exit_code == 7 and "not repointed" in result.json["error"]["message"], result.stdout
    event = _event(cloud, "dr.failover")
    assert event["result"] == "failure"
    services = event["details"]["services"]
    made = {"previous": versions + 1, "current": versions + 2}
    assert services["repointed"] == [
        {"secret_name": SECRET, "versions": made, "host": REPLICA_IP, "port": None}
    ]
    assert services["redeployed"] == []  # the deploy failed
    _no_secret_value(cloud, result.stdout, result.stderr)


def test_a_failover_whose_alias_move_fails_audits_the_versions_it_added(cloud):
    # Found by review: a secret entered the report only once its aliases moved, so a repoint
    # stopped by the alias update (exit 7) audited `repointed: []` over two new enabled versions.
    versions = len(cloud.store().get(SECRET).versions)
    cloud.fake.rest.fail("PATCH", r"/secrets/db-app$", status="UNAVAILABLE", times=99)
    result = cloud.voke("dr", "failover", "--yes", "--json")
    assert result.exit_code == 7 and "not repointed" in result.json["error"]["message"], result.stdout
    assert "dr failover --yes" in result.json["error"]["hint"]
    meta = cloud.store().get(SECRET)
    assert [v.version for v in meta.versions if v.state == "enabled"][-2:] == [versions + 1, versions + 2]
    assert meta.aliases["current"] == versions  # unaliased
    services = _event(cloud, "dr.failover")["details"]["services"]
    assert services["repointed"] == [] and services["redeployed"] == []
    assert services["made"] == [
        {"secret_name": SECRET, "alias": "previous", "version": versions + 1},
        {"secret_name": SECRET, "alias": "current", "version": versions + 2},
    ]
    _no_secret_value(cloud, result.stdout, result.stderr)


def test_a_deploy_refused_for_one_service_audits_the_other_as_redeployed(cloud):
    # Found by review: `redeployed` stayed [] though admin-service served the new version, as
    # locally it names those a failed deploy_many left serving it.
    cloud.fake.rest.fail("PATCH", r"/services/factory-service$", status="PERMISSION_DENIED", times=99)
    result = cloud.voke("dr", "failover", "--yes", "--json")
    assert result.exit_code == 7 and "not repointed" in result.json["error"]["message"], result.stdout
    current = cloud.store().get(SECRET).aliases["current"]
    assert _serving_version(cloud, "admin-service") == str(current)
    assert _serving_version(cloud, "factory-service") != str(current)
    services = _event(cloud, "dr.failover")["details"]["services"]
    assert services["redeployed"] == ["admin-service"], services
    _no_secret_value(cloud, result.stdout, result.stderr)


def test_a_failback_whose_services_stay_sick_audits_the_versions_it_made(cloud):
    # Found by review: a run failing after its repoint audited none of it.
    assert cloud.voke("dr", "failover", "--yes", "--json").exit_code == 0
    versions = len(cloud.store().get(SECRET).versions)
    # the revisions pass their health check on their tag; the services' own URLs then do not
    cloud.fake.rest.fail("GET", r"/run/[^/]+/health$", status="UNAVAILABLE", times=len(SERVICES))
    result = cloud.voke("dr", "failback", "--yes", "--json")
    assert result.exit_code == 7, result.stdout
    assert "not healthy after being repointed" in result.json["error"]["message"]
    event = _event(cloud, "dr.failback")
    assert event["result"] == "failure"
    services = event["details"]["services"]
    made = {"previous": versions + 1, "current": versions + 2}
    assert services["repointed"] == [
        {"secret_name": SECRET, "versions": made, "host": PRIMARY_IP, "port": None}
    ]
    assert services["redeployed"] == list(SERVICES)
    _no_secret_value(cloud, result.stdout, result.stderr)


def _connections(cloud: Cloud, *args: str) -> tuple[Any, dict[str, Any], Any]:
    """`dr status --json`'s `connections`, and `dr check --json` (ARGS: its flags) with its
    `connections` check; neither prints a secret's value."""
    status = cloud.voke("dr", "status", "--json")
    assert status.exit_code == 0, status.stdout + status.stderr
    check = cloud.voke("dr", "check", *args, "--json")
    assert check.exit_code in (0, 1), check.stdout + check.stderr
    judged = {c["name"]: c for c in check.json["result"]["checks"]}["connections"]
    _no_secret_value(cloud, status.stdout, status.stderr, check.stdout, check.stderr)
    return status.json["result"]["connections"], judged, check


def test_check_fails_connections_while_a_failover_or_failback_stopped_before_its_repoint(cloud):
    # Found by review: a failover killed after its record and before the secrets' new versions
    # left the services on the old primary while `dr check` (Cloud SQL and Monitoring only) said ok.
    from datetime import timedelta

    from voketag_ops.testing.gcp_fakes import now

    for instance in ("voke-db", "voke-db-dr"):  # every other check passes
        cloud.fake.sql.add_backup(instance, "SUCCESSFUL", now() - timedelta(hours=1))
    conn, judged, check = _connections(cloud)
    assert check.exit_code == 0 and judged["ok"], check.stdout
    assert conn["primary"] == "voke-db" and conn["primary_address"] == PRIMARY_IP
    assert conn["secrets"][0] | {"version": None} == {
        "secret": SECRET, "alias": "current", "version": None, "host": PRIMARY_IP, "port": 5432,
        "matches": True, "note": None,
    }  # fmt: skip
    # the record is written, the secret's new version refused: the services still name voke-db
    cloud.fake.rest.fail("POST", r"/secrets/db-app:addVersion$", status="PERMISSION_DENIED", times=99)
    stopped = cloud.voke("dr", "failover", "--yes", "--json")
    assert stopped.exit_code == 7 and "not repointed" in stopped.json["error"]["message"], stopped.stdout
    assert _labels(cloud, "voke-db-dr")["voke-role"] == "primary" and cloud.host_of() == PRIMARY_IP
    cloud.fake.rest.faults.clear()
    conn, judged, check = _connections(cloud)
    assert conn["primary"] == "voke-db-dr" and conn["secrets"][0]["matches"] is False
    assert check.exit_code == 1 and check.json["result"]["failed"] == ["connections"], check.stdout
    version = cloud.store().get(SECRET).aliases["current"]
    assert judged["message"] == (
        f"{SECRET} version {version} (current) names {PRIMARY_IP}:5432, not the primary voke-db-dr at "
        f"{REPLICA_IP}: the services reading it connect there; "
        + "".join(
            f"{service} serves {SECRET} version {version} (revision {service}-00001-abc), which names "
            f"{PRIMARY_IP}:5432, not the primary voke-db-dr at {REPLICA_IP}: it connects there; "
            for service in SERVICES
        )
        + "fix: `voke --env prod dr failover --yes` (it repoints the services)"
    )
    human = cloud.voke("dr", "check")
    assert human.exit_code == 1 and "connections: db-app version" in human.stdout + human.stderr
    assert "not the primary voke-db-dr" in cloud.voke("dr", "status").stdout
    assert cloud.voke("dr", "failover", "--yes", "--json").exit_code == 0  # the resume it names
    conn, judged, check = _connections(cloud)
    assert check.exit_code == 0 and conn["secrets"][0]["host"] == REPLICA_IP, check.stdout
    # a failback stopped alike names its own resume
    cloud.fake.rest.fail("POST", r"/secrets/db-app:addVersion$", status="PERMISSION_DENIED", times=99)
    assert cloud.voke("dr", "failback", "--yes", "--json").exit_code == 7
    cloud.fake.rest.faults.clear()
    _conn, judged, check = _connections(cloud)
    assert check.exit_code == 1 and not judged["ok"], check.stdout
    assert f"names {REPLICA_IP}:5432, not the primary voke-db at {PRIMARY_IP}" in judged["message"]
    assert judged["message"].endswith("fix: `voke --env prod dr failback --yes` (it repoints the services)")


def test_a_connection_secret_secret_manager_refuses_is_unknown_not_a_crash(cloud):
    cloud.fake.rest.fail(
        "GET", r"/secrets/db-app/versions/[^/]+:access$", status="PERMISSION_DENIED", times=99
    )
    conn, judged, check = _connections(cloud)
    assert conn["secrets"][0]["matches"] is None and conn["secrets"][0]["host"] is None
    assert check.exit_code == 1 and not judged["ok"], check.stdout
    assert judged["message"].startswith(f"unknown: could not read {SECRET} version ")
    assert judged["message"].endswith("injected PERMISSION_DENIED"), judged["message"]
    status = cloud.voke("dr", "status", "--json").json["result"]
    assert status["errors"]["connections"] == judged["message"].removeprefix("unknown: ")


@pytest.mark.parametrize(
    "host",
    [
        "postgresql://app:Uri-pw-4k9Q@10.9.9.9/voketag",
        "host=10.9.9.9 password=Uri-pw-4k9Q",
        None,
        ["10.9.9.9"],
    ],
    ids=["uri", "dsn", "null", "list"],
)
def test_a_connection_secret_whose_host_is_no_plain_address_is_reported_without_its_value(cloud, host):
    # Found by review: `connections` copied `host` and `port` as they were: a URI in `host`
    # printed its password (hidden in the suite only because an earlier case had registered it
    # for redaction: cleared before each command here).
    from voketag_ops import redact

    store = cloud.store()
    payload = {"username": "app_a", "password": "pw-app_a", "host": host, "port": "5432; Uri-pw-4k9Q"}
    version = store.add_version(SECRET, json.dumps(payload).encode()).version
    store.update(SECRET, etag=store.get(SECRET).etag, aliases={"current": version})
    outputs = []
    for args in (("dr", "status", "--json"), ("dr", "check", "--json"), ("dr", "status"), ("dr", "check")):
        redact.clear()
        result = cloud.voke(*args)
        assert result.exit_code in (0, 1), result.stdout + result.stderr
        outputs += [result.stdout, result.stderr]
    assert not [text for text in outputs if "Uri-pw-4k9Q" in text or "10.9.9.9" in text]
    (entry,) = json.loads(outputs[0])["result"]["connections"]["secrets"]
    assert entry == {
        "secret": SECRET, "alias": "current", "version": version, "host": None, "port": None, "matches": False,
        "note": "its host is not a plain host name or IP address (value not shown)",
    }  # fmt: skip
    judged = {c["name"]: c for c in json.loads(outputs[2])["result"]["checks"]}["connections"]
    assert not judged["ok"] and judged["message"].startswith(
        f"{SECRET} version {version} (current): its host is not a plain host name or IP address "
        f"(value not shown), not the primary voke-db at {PRIMARY_IP}; fix: "
    ), judged["message"]
    assert f"secret   {SECRET} v{version} (its host is not a plain" in outputs[4]


def _served(conn: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """`connections.services` by service (one revision each here)."""
    return {e["service"]: e for e in conn["services"]}


def test_check_fails_connections_while_services_still_serve_the_version_naming_the_old_primary(cloud):
    # Found by review: a failover killed after it moved `current` and before the Cloud Run
    # redeploy left the services' revisions pinned to the version naming the old primary, and
    # `connections` (the secret's `current` only) passed.
    from datetime import timedelta

    from voketag_ops.testing.gcp_fakes import now

    for instance in ("voke-db", "voke-db-dr"):  # every other check passes
        cloud.fake.sql.add_backup(instance, "SUCCESSFUL", now() - timedelta(hours=1))
    old = cloud.store().get(SECRET).aliases["current"]
    cloud.fake.rest.fail("PATCH", r"/services/[^/]+$", status="PERMISSION_DENIED", times=99)
    stopped = cloud.voke("dr", "failover", "--yes", "--json")
    assert stopped.exit_code == 7 and "not repointed" in stopped.json["error"]["message"], stopped.stdout
    assert cloud.host_of() == REPLICA_IP  # the alias moved; the revisions did not
    cloud.fake.rest.faults.clear()
    conn, judged, check = _connections(cloud)
    assert conn["secrets"][0]["matches"] is True
    assert _served(conn)["admin-service"] == {
        "service": "admin-service", "revision": "admin-service-00001-abc", "secret": SECRET, "version": old,
        "host": PRIMARY_IP, "port": 5432, "matches": False, "note": None,
    }  # fmt: skip
    assert check.exit_code == 1 and check.json["result"]["failed"] == ["connections"], check.stdout
    assert judged["value"] == list(SERVICES)
    assert judged["message"] == (
        "".join(
            f"{service} serves {SECRET} version {old} (revision {service}-00001-abc), which names "
            f"{PRIMARY_IP}:5432, not the primary voke-db-dr at {REPLICA_IP}: it connects there; "
            for service in SERVICES
        )
        + "fix: `voke --env prod dr failover --yes` (it repoints the services)"
    )
    human = cloud.voke("dr", "status").stdout
    assert (
        f"service  admin-service: {SECRET} v{old} names {PRIMARY_IP}:5432, not the primary voke-db-dr"
        in human
    )
    # the resume it names redeploys them; then everything names the new primary
    assert cloud.voke("dr", "failover", "--yes", "--json").exit_code == 0
    conn, judged, check = _connections(cloud)
    assert check.exit_code == 0 and judged["ok"], check.stdout
    current = cloud.store().get(SECRET).aliases["current"]
    assert {(e["version"], e["host"], e["matches"]) for e in conn["services"]} == {
        (current, REPLICA_IP, True)
    }
    assert judged["message"] == (
        f"{SECRET} names the primary voke-db-dr at {REPLICA_IP}, "
        f"and {', '.join(SERVICES)} serve a version naming it"
    )


def test_a_service_whose_revision_cloud_run_refuses_is_unknown_not_a_crash(cloud):
    cloud.fake.rest.fail(
        "GET", r"/services/admin-service/revisions/[^/]+$", status="PERMISSION_DENIED", times=99
    )
    conn, judged, check = _connections(cloud)
    assert _served(conn)["admin-service"] | {"matches": None} == {
        "service": "admin-service", "revision": None, "secret": SECRET, "version": None, "host": None,
        "port": None, "matches": None, "note": None,
    }  # fmt: skip
    assert _served(conn)["factory-service"]["matches"] is True
    assert check.exit_code == 1 and not judged["ok"], check.stdout
    assert judged["message"].startswith(
        f"unknown: could not read which version of {SECRET} admin-service serves: "
    )
    assert judged["message"].endswith("injected PERMISSION_DENIED"), judged["message"]
    status = cloud.voke("dr", "status", "--json").json["result"]
    assert status["errors"]["connections"] == judged["message"].removeprefix("unknown: ")


def test_a_service_reading_its_connection_secret_as_latest_fails_connections(cloud):
    cloud.fake.run.add_service("factory-service", SECRET, "latest")
    conn, judged, _check = _connections(cloud)
    note = (
        "revision factory-service-00001-abc reads it as `latest`: which version its instances hold is unknown"
    )
    assert _served(conn)["factory-service"]["note"] == note and not judged["ok"]
    assert judged["message"].startswith(f"factory-service ({SECRET}): {note}; fix: "), judged["message"]


# -- Ctrl-C once the database moved ---------------------------------------------------------------------------
def _ctrl_c_at(monkeypatch: pytest.MonkeyPatch, command: str, message: str) -> None:
    """A Ctrl-C (KeyboardInterrupt) as COMMAND's progress says MESSAGE: no fake server fault
    can make one, so it comes through the progress callback, as in the cloud drills' tests."""
    from voketag_ops.workflows import cloud_dr

    real = getattr(cloud_dr, command)

    def interrupted(*args: Any, progress: Any, **kw: Any) -> Any:
        def interrupting(said: str) -> None:
            progress(said)
            if said.startswith(message):
                raise KeyboardInterrupt

        return real(*args, progress=interrupting, **kw)

    monkeypatch.setattr(cloud_dr, command, interrupted)


@pytest.mark.parametrize(
    ("message", "step", "made"),
    [
        ("new version of db-app (current)", "repoint services to voke-db-dr", ["previous"]),
        ("check the services are healthy", "check the services are healthy", ["previous", "current"]),
    ],
    ids=["mid-repoint", "health-check"],
)
def test_ctrl_c_after_the_promotion_names_the_step_and_the_rerun_that_finishes_it(
    cloud, monkeypatch, message, step, made
):
    # Found by review: exit 130 "interrupted" and nothing more, with the standby promoted and
    # recorded and the connection secret's `current` naming the old primary.
    versions = len(cloud.store().get(SECRET).versions)
    _ctrl_c_at(monkeypatch, "failover", message)
    result = cloud.voke("dr", "failover", "--yes", "--json")
    assert result.exit_code == 130, result.stdout + result.stderr
    error = result.json["error"]
    assert error["type"] == "Interrupted" and f"stopped at '{step}'" in error["message"], error
    assert "record voke-db-dr as the primary" in error["message"]  # among the steps done
    assert (
        error["hint"] == "`voke --env prod dr failover --yes` finishes it (it does not repeat what is done)"
    )
    event = _event(cloud, "dr.failover")
    assert event["result"] == "interrupted" and event["details"]["interrupted_at"] == step
    assert event["details"]["services"]["made"] == [
        {"secret_name": SECRET, "alias": alias, "version": versions + n} for n, alias in enumerate(made, 1)
    ]
    human = cloud.voke("dr", "failover", "--yes")  # (a rerun stopped at the same place)
    assert human.exit_code == 130 and "voke --env prod dr failover --yes" in human.stderr, human.stderr
    _no_secret_value(cloud, result.stdout, result.stderr, human.stdout, human.stderr)
    monkeypatch.undo()
    finished = cloud.voke("dr", "failover", "--yes", "--json")  # as the hint says
    assert finished.exit_code == 0, finished.stdout + finished.stderr
    assert cloud.host_of("current") == REPLICA_IP and cloud.host_of("previous") == REPLICA_IP
    current = str(cloud.store().get(SECRET).aliases["current"])
    assert all(_serving_version(cloud, s) == current for s in SERVICES)
    # Found by review: a rerun finding the aliases on the new primary made nothing and its event
    # named no version, so one cut short once the aliases moved (killed: no event) named them nowhere.
    versions = {alias: cloud.store().get(SECRET).aliases[alias] for alias in ("previous", "current")}
    services = finished.json["result"]["services"]
    if "current" in made:  # (its aliases moved before the Ctrl-C)
        assert services["repointed"] == [], services
        found = [{"secret_name": SECRET, "versions": versions, "host": REPLICA_IP, "port": None}]
        assert _event(cloud, "dr.failover")["details"]["services"]["found"] == found
    else:  # `previous` was copied, `current` not yet
        assert services["found"] == [], services


def test_ctrl_c_in_a_failback_switchover_says_to_wait_for_the_operation_then_rerun(cloud, monkeypatch):
    assert cloud.voke("dr", "failover", "--yes").exit_code == 0
    _ctrl_c_at(monkeypatch, "failback", "switchover to voke-db")
    result = cloud.voke("dr", "failback", "--yes", "--json")
    assert result.exit_code == 130, result.stdout + result.stderr
    error = result.json["error"]
    assert "stopped at 'switchover to voke-db'" in error["message"], error
    assert "`gcloud sql operations list --instance voke-db` shows it DONE" in error["hint"]
    assert error["hint"].endswith(
        "`voke --env prod dr failback --yes` finishes it (it does not repeat what is done)"
    )
    monkeypatch.undo()
    assert cloud.voke("dr", "failback", "--yes").exit_code == 0
    assert cloud.host_of() == PRIMARY_IP


def test_the_event_of_an_interrupted_failover_names_the_command_with_its_env(cloud, monkeypatch):
    # Found by review: stderr named `voke --env prod dr failover`, the event `voke dr failover`.
    _ctrl_c_at(monkeypatch, "failover", "check the services are healthy")
    result = cloud.voke("dr", "failover", "--yes", "--json")
    assert result.exit_code == 130, result.stdout + result.stderr
    message = _event(cloud, "dr.failover")["details"]["error"]["message"]
    assert "`voke --env prod dr failover` stopped at 'check the services are healthy'" in message, message
    assert message == result.json["error"]["message"]


# -- Ctrl-C mid-clone ---------------------------------------------------------------------------------------
def _ctrl_c_while_the_clone_is_polled(monkeypatch: pytest.MonkeyPatch, *, then: Any = None) -> None:
    """A Ctrl-C once Cloud SQL accepted the clone, while voke polls it (as the drills' tests);
    THEN, what Cloud SQL does meanwhile."""
    from voketag_ops.adapters.gcp import sql

    real_wait = sql.CloudSqlAdmin.wait

    def ctrl_c_while_cloning(self: Any, op: Any, what: str, **kw: Any) -> Any:
        if what.startswith("clone voke-db at"):
            if then is not None:
                then()
            raise KeyboardInterrupt  # the clone was accepted; Cloud SQL goes on without us
        return real_wait(self, op, what, **kw)

    monkeypatch.setattr(sql.CloudSqlAdmin, "wait", ctrl_c_while_cloning)


def test_ctrl_c_mid_clone_names_the_operation_and_the_instance_it_makes(cloud, monkeypatch):
    # Found by review: exit 130 "interrupted" and nothing more, and later a billed voke-db-r1
    # with production's labels that nothing named; a rerun then refused the name (exit 5).
    _ctrl_c_while_the_clone_is_polled(monkeypatch)
    result = cloud.voke("dr", "restore", "--to", "-10m", "--name", "voke-db-r1", "--yes", "--json")
    assert result.exit_code == 7, result.stdout + result.stderr  # as the drills' Ctrl-C mid-clone
    (op,) = [n for n, o in cloud.fake.sql.operations.items() if o["doc"]["operationType"] == "CLONE"]
    error = result.json["error"]
    assert error["message"].startswith("interrupted: `voke --env prod dr restore` stopped"), error
    assert f"operation {op}" in error["message"] and "voke-db-r1" in error["message"], error
    assert f"gcloud sql operations describe {op} --project voke-test" in error["hint"], error
    assert "gcloud sql instances delete voke-db-r1 --project voke-test" in error["hint"], error
    # the clone Cloud SQL finishes without voke carries voke-db's labels: the hint relabels it
    relabel = "gcloud sql instances patch voke-db-r1 --project voke-test --update-labels=voke-env=prod,voke-role=restored,"
    assert relabel in error["hint"], error
    event = _event(cloud, "dr.restore")
    assert event["target"] == "voke-db-r1" and event["details"]["operation"] == op, event
    assert event["details"]["error"]["message"] == error["message"]
    cloud.fake.sql.finish_pending()  # Cloud SQL finishes the clone without voke: as the hint said
    assert "voke-db-r1" in cloud.fake.sql.instances


def test_status_and_check_name_a_clone_still_running_after_its_restore_stopped(cloud, monkeypatch):
    # Found by review: a CLONE under way (a restore in progress, or one whose voke stopped) was
    # listed in cloud_sql_operations only, and `dr check` passed unfinished_operation meanwhile.
    _ctrl_c_while_the_clone_is_polled(monkeypatch)
    assert cloud.voke("dr", "restore", "--to", "-10m", "--name", "voke-db-r1", "--yes").exit_code == 7
    (op,) = [n for n, o in cloud.fake.sql.operations.items() if o["doc"]["operationType"] == "CLONE"]
    inspect = f"gcloud sql operations describe {op} --project voke-test"
    status = cloud.voke("dr", "status", "--json").json["result"]
    unfinished = status["unfinished_operation"]
    assert unfinished["operation"] == "CLONE" and f"(operation {op})" in unfinished["running"], unfinished
    assert unfinished["inspect"] == inspect, unfinished
    human = cloud.voke("dr", "status")
    assert f"inspect with `{inspect}`" in " ".join(human.stdout.split()), human.stdout
    check = cloud.voke("dr", "check", "--json")
    assert check.exit_code == 1 and "unfinished_operation" in check.json["result"]["failed"], check.stdout
    message = {c["name"]: c["message"] for c in check.json["result"]["checks"]}["unfinished_operation"]
    assert "Cloud SQL CLONE on voke-db" in message and f"inspect it: `{inspect}`" in message, message
    cloud.fake.sql.finish_pending()
    after = cloud.voke("dr", "status", "--json").json["result"]
    assert after["unfinished_operation"] is None, after["unfinished_operation"]


def test_ctrl_c_mid_clone_once_the_instance_is_made_names_it(cloud, monkeypatch):
    _ctrl_c_while_the_clone_is_polled(monkeypatch, then=cloud.fake.sql.finish_pending)  # it ended by then
    result = cloud.voke("dr", "restore", "--to", "-10m", "--name", "voke-db-r1", "--yes", "--json")
    assert result.exit_code == 7, result.stdout + result.stderr
    error = result.json["error"]
    assert "made the instance voke-db-r1 (RUNNABLE), which is billed" in error["message"], error
    assert "gcloud sql instances delete voke-db-r1 --project voke-test" in error["hint"], error


def test_ctrl_c_mid_clone_whose_look_up_fails_says_the_clone_may_run(cloud, monkeypatch):
    _ctrl_c_while_the_clone_is_polled(monkeypatch)
    cloud.fake.rest.fail("GET", r"/operations$", status="PERMISSION_DENIED", times=1)
    result = cloud.voke("dr", "restore", "--to", "-10m", "--name", "voke-db-r1", "--yes", "--json")
    assert result.exit_code == 7, result.stdout + result.stderr
    error = result.json["error"]
    assert "whether Cloud SQL started the clone is unknown" in error["message"], error
    assert "gcloud sql operations list --instance voke-db --project voke-test" in error["hint"], error
    assert "gcloud sql instances delete voke-db-r1 --project voke-test" in error["hint"], error


def test_ctrl_c_before_the_clone_is_asked_for_is_an_interrupt_that_changed_nothing(cloud, monkeypatch):
    _ctrl_c_at(monkeypatch, "restore", "cloning voke-db")
    result = cloud.voke("dr", "restore", "--to", "-10m", "--name", "voke-db-r1", "--yes", "--json")
    assert result.exit_code == 130, result.stdout + result.stderr
    assert not cloud.posts("/clone") and "voke-db-r1" not in cloud.fake.sql.instances
    assert _event(cloud, "dr.restore")["result"] == "interrupted"


# -- what `rotate cleanup` makes of the versions a repoint adds -----------------------------------------------
def _age(cloud: Cloud, days: float) -> None:
    """Every version of the connection secret made DAYS ago."""
    from datetime import timedelta

    from voketag_ops.testing.gcp_fakes import now, ts

    for version in cloud.fake.secretmanager.secrets[SECRET].versions:
        version.create_time = ts(now() - timedelta(days=days))


def _disabled_early(cloud: Cloud, *versions: int) -> list[dict[str, Any]]:
    """The cleanup actions `rotate cleanup --dry-run` plans for VERSIONS (current until lately)."""
    plan = cloud.voke("rotate", "cleanup", "--dry-run", "--json")
    assert plan.exit_code == 0, plan.stdout + plan.stderr
    return [a for a in plan.json["result"]["actions"] if a["version"] in versions]


def test_cleanup_leaves_the_version_current_until_a_failback_its_24_hours(cloud):
    # Found by review: the repoint copied `current` before `previous`, so the previous-copy was
    # the newer version, and cleanup (every enabled version older than `current` counts as having
    # been current) took its creation, days ago, as the moment the old `current` was superseded:
    # disabled right after the failback that stopped using it.
    cloud.environ["VOKE_ROTATION__KEEP_VERSIONS"] = "1"  # (the 3 newest would hide it)
    assert cloud.voke("dr", "failover", "--yes", "--json").exit_code == 0
    current = cloud.store().get(SECRET).aliases["current"]
    _age(cloud, 2)
    back = cloud.voke("dr", "failback", "--yes", "--json")
    assert back.exit_code == 0, back.stdout + back.stderr
    assert _disabled_early(cloud, current) == []
    made = back.json["result"]["services"]["repointed"][0]["versions"]
    assert made["previous"] < made["current"]  # numbered in the order they became current
    _age(cloud, 2)  # a day after the failback it goes, as a rotated-out version does
    assert [a["action"] for a in _disabled_early(cloud, current)] == ["disable"]


def test_cleanup_leaves_the_version_current_until_a_rotation_after_a_failover_its_24_hours(
    cloud, monkeypatch
):
    import voketag_ops.adapters.gcp.sql as sql

    def login(cred: dict[str, Any], **_kw: Any) -> bool:  # the new primary holds the passwords
        return cred.get("host") == REPLICA_IP and cloud.fake.sql.users.get(
            ("voke-db-dr", cred.get("username"))
        ) == cred.get("password")

    monkeypatch.setattr(sql, "pg_login", login)
    cloud.environ["VOKE_ROTATION__KEEP_VERSIONS"] = "1"
    assert cloud.voke("dr", "failover", "--yes", "--json").exit_code == 0
    for role in ("app_a", "app_b"):
        cloud.fake.sql.users[("voke-db-dr", role)] = "pw-" + role
    current = cloud.store().get(SECRET).aliases["current"]
    _age(cloud, 2)
    for _ in range(2):  # two rotations a few hours apart
        rotated = cloud.voke("rotate", "db-password", "--yes", "--json")
        assert rotated.exit_code == 0, rotated.stdout + rotated.stderr
    assert _disabled_early(cloud, current) == []


def test_drill_run_all_asks_for_the_cloud_drills_it_runs(cloud):
    result = cloud.voke("drill", "run", "all")  # no terminal to ask, no --yes
    assert result.exit_code == 2 and "Run all drills (pitr, failover) on " in result.stderr, result.stderr
