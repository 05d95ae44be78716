"""Cloud DR over the DatabaseRecovery port against the Cloud SQL and Monitoring fakes:
status in the local snapshot's shape, checks judged by the same core, only SUCCESSFUL
backups counting, operations polled to DONE with their errors raised, and the lag read
from Cloud Monitoring."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest

pytest.importorskip("google.cloud.monitoring_v3")

from voketag_ops.adapters.gcp import catalog
from voketag_ops.errors import BackendError, PreconditionError
from voketag_ops.ports import DatabaseRecovery
from voketag_ops.testing.gcp_fakes import FakeGcp, environment_toml, now
from voketag_ops.workflows import dr as dr_flows


@pytest.fixture
def cloud() -> Iterator[tuple[FakeGcp, Any, Any]]:
    from voketag_ops.config import Settings
    from voketag_ops.workflows.cloud import CloudPlatform

    with FakeGcp() as fake:
        fake.sql.add_instance("voke-db", users=("app_a",), dr_replica="voke-db-dr")
        fake.sql.add_instance("voke-db-dr", region="us-east1", replica_of="voke-db", ip="10.30.0.3")
        fake.sql.add_backup("voke-db", "SUCCESSFUL", now() - timedelta(hours=30))
        fake.sql.add_backup("voke-db", "SUCCESSFUL", now() - timedelta(hours=3))
        fake.sql.add_backup(
            "voke-db", "FAILED", now() - timedelta(minutes=20)
        )  # newest run, but not a backup
        p = fake.project
        fake.monitoring.add_point(catalog.REPLICA_LAG, 2.5, resource={"database_id": f"{p}:voke-db-dr"})
        fake.monitoring.add_point(
            catalog.REPLICA_BYTE_LAG,
            4096,
            integer=True,
            resource={"database_id": f"{p}:voke-db"},
            labels={"replica_name": "voke-db-dr", "replica_lag_type": "replay_location"},
        )
        settings = Settings.model_validate(
            {"env": "prod", "environments": {"prod": fake.environment(replica="voke-db-dr")}}
        )
        platform = CloudPlatform(settings, poll_interval=0.01, backoff=0.01)
        yield fake, settings, platform.recovery()


def test_status_has_the_local_shape_and_reads_lag_from_monitoring(cloud):
    from voketag_ops.workflows import cloud_dr

    _fake, settings, recovery = cloud
    assert isinstance(recovery, DatabaseRecovery)
    snap = cloud_dr.status(settings, recovery)
    assert (
        snap["leader"]["name"] == "voke-db"
        and snap["leader"]["role"] == "primary"
        and snap["leader"]["running"]
    )
    assert snap["standby"]["streaming"] is True
    assert snap["standby"]["lag_seconds"] == 2.5 and snap["standby"]["lag_bytes"] == 4096
    assert snap["split_brain"] is False
    assert snap["newest_backup"]["status"] == "SUCCESSFUL"  # the FAILED run 20 min ago does not count
    assert snap["recoverable_window"]["seconds"] > 6 * 86400


def test_status_shows_a_lag_in_bytes_only_when_monitoring_has_one(cloud):
    from io import StringIO

    from rich.console import Console

    from voketag_ops.cli.dr_cmd import _render_status
    from voketag_ops.workflows import cloud_dr

    _fake, settings, recovery = cloud
    snap = cloud_dr.status(settings, recovery)
    snap["standby"]["lag_bytes"] = None  # the byte lag is a metric of its own, and may be missing
    out = StringIO()
    _render_status(Console(file=out, width=200), snap)
    assert "streaming, lag 2.50 s\n" in out.getvalue() and "None" not in out.getvalue(), out.getvalue()
    assert "archive  ok: 0 segment(s) failed in the last hour" in out.getvalue()
    # what `dr check` tells to run is what works on Cloud SQL (voke dr fence/backup are local-only)
    assert snap["remedies"]["backup"] == "`gcloud sql backups create --instance=voke-db`"
    assert snap["unfinished_operation"] is None and snap["operations_note"] is None  # listed: none


def test_an_operation_cloud_sql_has_not_finished_fails_the_check_whoever_started_it(cloud):
    from voketag_ops.workflows import cloud_dr

    fake, settings, recovery = cloud
    backup = fake.sql._operation("BACKUP_VOLUME", "voke-db", lambda: None)  # routine: listed only
    listed = cloud_dr.status(settings, recovery)
    assert listed["unfinished_operation"] is None  # a backup moves nothing
    assert [(o["name"], o["status"]) for o in listed["cloud_sql_operations"]] == [(backup["name"], "PENDING")]
    fake.sql.finish_pending()
    op = fake.sql._operation("FAILOVER", "voke-db", lambda: None)  # a gcloud failover, say: PENDING
    snap = cloud_dr.status(settings, recovery)
    running = snap["unfinished_operation"]
    assert running["operation"] == "FAILOVER" and op["name"] in running["running"]
    report = cloud_dr.check(settings, recovery, dr_flows.thresholds(settings))
    message = {c["name"]: c["message"] for c in report["checks"]}["unfinished_operation"]
    assert "unfinished_operation" in report["failed"] and "Cloud SQL FAILOVER on voke-db" in message
    fake.sql.finish_pending()
    after = cloud_dr.check(settings, recovery, dr_flows.thresholds(settings))
    assert "unfinished_operation" not in after["failed"]

    # operations that cannot be listed are no "none": the check fails, naming why
    fake.rest.fail("GET", r"/operations$", status="PERMISSION_DENIED", times=100)
    denied = cloud_dr.check(settings, recovery, dr_flows.thresholds(settings))
    fake.rest.faults.clear()
    message = {c["name"]: c["message"] for c in denied["checks"]}["unfinished_operation"]
    assert "unfinished_operation" in denied["failed"], denied["failed"]
    assert (
        message.startswith("unknown: could not list the Cloud SQL operations")
        and "PERMISSION_DENIED" in message
    )


def test_check_fails_on_an_old_backup_and_on_lag(cloud):
    from voketag_ops.workflows import cloud_dr

    fake, settings, recovery = cloud
    report = cloud_dr.check(settings, recovery, dr_flows.thresholds(settings))
    assert report["ok"] is True, report["failed"]
    age = fake.monitoring.written(catalog.BACKUP_AGE)[-1]  # for the backup-age alert policy
    assert 3 * 3600 - 60 < age.points[0].value.double_value < 3 * 3600 + 60
    # the bare name of the primary judged: the policy in terraform/ keeps to its environment by it
    assert dict(age.metric.labels) == {"instance": settings.environment("prod").instance}
    strict = dr_flows.thresholds(settings, max_backup_age="1h", max_lag="1s")
    report = cloud_dr.check(settings, recovery, strict)
    assert report["ok"] is False and set(report["failed"]) == {"backup_age", "replication_lag"}


def test_the_newest_backup_is_found_on_any_page(cloud):
    fake, _settings, recovery = cloud
    for minutes in (15, 10, 5):
        fake.sql.add_backup("voke-db", "FAILED", now() - timedelta(minutes=minutes))
    fake.sql.backup_page_size = 2  # the first page holds FAILED runs only
    assert len(recovery.backups()) == 6
    newest = recovery.newest_backup()
    assert newest is not None and newest.status == "SUCCESSFUL"


@pytest.mark.parametrize(
    "status", ["INVALID_ARGUMENT", "NOT_FOUND", "FAILED_PRECONDITION", "PERMISSION_DENIED"]
)
def test_a_metric_monitoring_refuses_never_changes_the_check(cloud, status):
    from voketag_ops.workflows import cloud_dr

    fake, settings, recovery = cloud
    fake.monitoring.refuse = status  # (INVALID_ARGUMENT: a point sooner than the sampling period)
    report = cloud_dr.check(settings, recovery, dr_flows.thresholds(settings))
    assert report["ok"] is True, report["failed"]


@pytest.mark.parametrize("status", ["UNAVAILABLE", "PERMISSION_DENIED"])
def test_monitoring_refused_leaves_lag_and_archiving_unknown_and_reports_the_rest(cloud, status):
    from voketag_ops.workflows import cloud_dr

    fake, settings, recovery = cloud
    fake.monitoring.refuse_reads = status
    snap = cloud_dr.status(settings, recovery)
    assert snap["standby"]["lag_unknown"] and snap["archive"]["failing"] is None
    assert "could not read the replication of voke-db-dr" in snap["errors"]["monitoring"]
    assert snap["archive"]["unknown_reason"] == snap["errors"]["monitoring"]
    assert snap["newest_backup"]["status"] == "SUCCESSFUL" and snap["recoverable_window"]["seconds"]
    report = cloud_dr.check(settings, recovery, dr_flows.thresholds(settings))
    assert set(report["failed"]) == {"replication_lag", "archiving"}, report["failed"]
    message = {c["name"]: c["message"] for c in report["checks"]}["replication_lag"]
    assert message == snap["errors"]["monitoring"] and f"injected {status}" in message


def test_monitoring_refused_without_a_replica_leaves_archiving_unknown():
    from voketag_ops.config import Settings
    from voketag_ops.workflows import cloud_dr
    from voketag_ops.workflows.cloud import CloudPlatform

    with FakeGcp() as fake:
        fake.sql.add_instance("voke-db", users=("app_a",))
        fake.sql.add_backup("voke-db", "SUCCESSFUL", now() - timedelta(hours=3))
        fake.monitoring.refuse_reads = "PERMISSION_DENIED"
        settings = Settings.model_validate({"env": "prod", "environments": {"prod": fake.environment()}})
        report = cloud_dr.check(settings, CloudPlatform(settings).recovery(), dr_flows.thresholds(settings))
    assert report["failed"] == ["archiving"], report["failed"]
    assert "could not read the archiving of voke-db" in report["status"]["errors"]["monitoring"]


def test_no_monitoring_data_or_inactive_replication_fails_the_check(cloud):
    from voketag_ops.workflows import cloud_dr

    fake, settings, recovery = cloud
    fake.monitoring.series.clear()
    fake.monitoring.system_metrics = False  # Monitoring has nothing for these instances
    unknown = cloud_dr.check(settings, recovery, dr_flows.thresholds(settings))
    assert set(unknown["failed"]) == {"replication_lag", "archiving"}, unknown["failed"]
    fake.monitoring.system_metrics = True
    fake.monitoring.add_point(catalog.REPLICA_LAG, -1, resource={"database_id": f"{fake.project}:voke-db-dr"})
    inactive = cloud_dr.check(settings, recovery, dr_flows.thresholds(settings))
    assert inactive["failed"] == ["replica_streaming", "replication_lag"], inactive["failed"]


def test_an_environment_without_a_replica_still_judges_archiving():
    from voketag_ops.config import Settings
    from voketag_ops.workflows import cloud_dr
    from voketag_ops.workflows.cloud import CloudPlatform

    with FakeGcp() as fake:
        fake.sql.add_instance("voke-db", users=("app_a",))
        fake.sql.add_backup("voke-db", "SUCCESSFUL", now() - timedelta(hours=3))
        settings = Settings.model_validate({"env": "prod", "environments": {"prod": fake.environment()}})
        recovery = CloudPlatform(settings).recovery()
        report = cloud_dr.check(settings, recovery, dr_flows.thresholds(settings))
        assert report["ok"] is True, report["failed"]  # archiving read from the primary's own metrics


def test_archive_failures_fail_the_check(cloud):
    from voketag_ops.workflows import cloud_dr

    fake, settings, recovery = cloud
    fake.monitoring.add_point(
        catalog.LOG_ARCHIVE_FAILURES, 3, integer=True, resource={"database_id": f"{fake.project}:voke-db"}
    )
    report = cloud_dr.check(settings, recovery, dr_flows.thresholds(settings))
    assert report["failed"] == ["archiving"]


def test_operations_are_polled_to_done_and_take_effect(cloud):
    _fake, _settings, recovery = cloud
    op = recovery.clone_to_point_in_time("2026-11-26T01:00:00Z", "voke-db-restore")
    assert op.kind == "CLONE" and op.status == "DONE" and op.finished_at
    assert recovery.instance("voke-db-restore").state == "RUNNABLE"
    op = recovery.promote_replica(failover=True)
    assert op.kind == "PROMOTE_REPLICA"
    assert recovery.instance("voke-db-dr").role == "primary"
    assert recovery.instance("voke-db").primary == "voke-db-dr"
    recovery.switchover("voke-db")  # planned failback
    assert recovery.instance("voke-db").role == "primary"


def test_every_recovery_port_method_is_called_by_a_workflow():
    """The port holds what commands use, no stubs: each method is called on a recovery
    object (`recovery`, `run.recovery`, or a name bound to one) somewhere in workflows/."""
    import ast
    import inspect
    import re
    from pathlib import Path

    import voketag_ops.workflows as workflows

    methods = {
        node.name
        for node in ast.parse(inspect.getsource(DatabaseRecovery)).body[0].body
        if isinstance(node, ast.FunctionDef)
    }
    a_recovery = re.compile(r"(^|\.)recovery$")
    called: set[str] = set()
    for path in Path(workflows.__file__).parent.glob("*.py"):
        tree = ast.parse(path.read_text())
        aliases = {"recovery"}
        for node in ast.walk(tree):  # `cloudsql: Any = recovery` and the like
            bound = isinstance(node, ast.Assign | ast.AnnAssign) and node.value is not None
            if bound and a_recovery.search(ast.unparse(node.value)):
                targets = node.targets if isinstance(node, ast.Assign) else [node.target]
                aliases |= {t.id for t in targets if isinstance(t, ast.Name)}
        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
                receiver = ast.unparse(node.func.value)
                if receiver in aliases or a_recovery.search(receiver):
                    called.add(node.func.attr)
    assert methods - called == set()


def test_a_done_operation_with_an_error_raises(cloud):
    fake, _settings, recovery = cloud
    fake.sql.fail_next("CLONE", "simulated: the point in time is outside the retention window")
    with pytest.raises(BackendError, match="outside the retention window"):
        recovery.clone_to_point_in_time("2020-01-01T00:00:00Z", "too-old")
    assert "too-old" not in fake.sql.instances


def test_the_job_accounts_permissions_run_dr_check_and_not_the_drills_sweep(cloud):
    """The job's account holds catalog.PROJECT_PERMISSIONS (terraform's voke_scheduled): `dr
    check` runs on them; listing the project's instances (the cloud drill's sweep for leftover
    scratch instances, run by a person) needs the operators' too."""
    from voketag_ops.workflows import cloud_dr

    fake, settings, recovery = cloud
    fake.sql.granted = frozenset(catalog.PROJECT_PERMISSIONS)
    report = cloud_dr.check(settings, recovery, dr_flows.thresholds(settings))
    assert report["ok"] is True, report["failed"]
    with pytest.raises(BackendError, match="instances"):
        recovery.list_instances()
    fake.sql.granted = frozenset(catalog.PROJECT_PERMISSIONS + catalog.OPERATOR_PERMISSIONS)
    assert {i.name for i, _labels in recovery.list_instances()} == {"voke-db", "voke-db-dr"}


def test_a_refused_call_is_a_precondition(cloud):
    _fake, _settings, recovery = cloud
    with pytest.raises(PreconditionError):
        recovery.promote_replica("voke-db")  # not a replica


def test_split_brain_after_promotion_without_failover(cloud):
    from voketag_ops.workflows import cloud_dr

    _fake, settings, recovery = cloud
    recovery.promote_replica(failover=False)  # the old primary stays writable on its own
    snap = cloud_dr.status(settings, recovery)
    assert snap["split_brain"] is True and sorted(snap["writable_nodes"]) == ["voke-db", "voke-db-dr"]


def test_voke_metrics_only_under_the_prefix(cloud):
    from voketag_ops.errors import UsageError

    fake, _settings, recovery = cloud
    monitoring = recovery.monitoring
    monitoring.write(catalog.DRILL_RTO, 42.0, {"scenario": "failover", "env": "prod"})
    assert fake.monitoring.written(catalog.DRILL_RTO)[0].points[0].value.double_value == 42.0
    with pytest.raises(UsageError):
        monitoring.write("custom.googleapis.com/other/thing", 1, {})
    with pytest.raises(UsageError, match="its descriptor's are"):  # terraform/ declares the labels
        monitoring.write(catalog.DRILL_RTO, 42.0, {"scenario": "failover"})


def test_cli_dr_check_of_a_cloud_env_without_a_replica_expects_none(cloud, voke, make_environ, tmp_path):
    # The CLI judged a cloud environment by the local environment's thresholds: a replica expected
    # (local.replica), so an environment without one failed replica_streaming and replication_lag.
    fake, _settings, _recovery = cloud
    (tmp_path / "voke.toml").write_text(environment_toml("prod", fake.environment()))
    environ = make_environ(tmp_path / "state", VOKE_CONFIG=str(tmp_path / "voke.toml"))
    check = voke("--env", "prod", "dr", "check", "--json", environ=environ)
    names = [c["name"] for c in check.json["result"]["checks"]]
    assert "replica_streaming" not in names and "replication_lag" not in names, check.stdout
    assert check.exit_code == 0, check.stdout


def test_cli_dr_status_and_check_on_a_cloud_env(cloud, voke, make_environ, tmp_path):
    fake, _settings, _recovery = cloud
    env = fake.environment(replica="voke-db-dr")
    (tmp_path / "voke.toml").write_text(environment_toml("prod", env))
    environ = make_environ(tmp_path / "state", VOKE_CONFIG=str(tmp_path / "voke.toml"))
    status = voke("--env", "prod", "dr", "status", "--json", environ=environ)
    assert status.exit_code == 0, status.stdout + status.stderr
    assert status.json["result"]["leader"]["name"] == "voke-db"
    human = voke("--env", "prod", "dr", "status", environ=environ)
    assert human.exit_code == 0, human.stderr
    assert "voke-db" in human.stdout
    ok = voke("--env", "prod", "dr", "check", "--json", environ=environ)
    assert ok.exit_code == 0, ok.stdout
    (retention,) = [c for c in ok.json["result"]["checks"] if c["name"] == "pitr_retention"]
    assert retention["message"] == "voke-db keeps 7 days of transaction logs (target 7)"
    short = voke(
        "--env", "prod", "dr", "check", "--json", environ={**environ, "VOKE_DR__PITR_RETENTION_DAYS": "14"}
    )
    assert short.exit_code == 1 and short.json["result"]["failed"] == ["pitr_retention"], short.stdout
    breach = voke("--env", "prod", "dr", "check", "--max-backup-age", "1h", environ=environ)
    assert breach.exit_code == 1 and "backup_age" in breach.stdout + breach.stderr


def test_a_replica_that_does_not_exist_fails_replica_streaming_and_the_rest_is_reported(
    cloud, voke, make_environ, tmp_path
):
    # a deleted DR replica is a DR state: `dr status` and `dr check` exited 4 (NotFoundError) with
    # no report; the scheduled check must fail replica_streaming (exit 1) and judge the rest
    fake, _settings, _recovery = cloud
    (tmp_path / "voke.toml").write_text(environment_toml("prod", fake.environment(replica="no-such-replica")))
    environ = make_environ(tmp_path / "state", VOKE_CONFIG=str(tmp_path / "voke.toml"))
    status = voke("--env", "prod", "dr", "status", "--json", environ=environ)
    human = voke("--env", "prod", "dr", "status", environ=environ)
    check = voke("--env", "prod", "dr", "check", "--json", environ=environ)
    assert status.exit_code == 0, status.stdout
    snap = status.json["result"]
    assert snap["standby"]["name"] == "no-such-replica" and snap["standby"]["role"] == "absent"
    assert snap["standby"]["streaming"] is False
    said = snap["errors"]["replica"]
    assert said.startswith("the replica no-such-replica does not exist in Cloud SQL"), said
    assert "environments.prod.replica" in said and said in snap["notes"]
    assert snap["leader"]["name"] == "voke-db" and snap["newest_backup"]["status"] == "SUCCESSFUL"
    assert snap["archive"]["failing"] is False  # read from the primary, as without a replica
    assert human.exit_code == 0, human.stderr
    assert "standby  no-such-replica absent   - (?)  NOT streaming, lag unknown" in human.stdout, human.stdout
    assert check.exit_code == 1, check.stdout
    assert check.json["result"]["failed"] == ["replica_streaming", "replication_lag"], check.stdout
    checks = {c["name"]: c for c in check.json["result"]["checks"]}
    assert checks["replica_streaming"]["message"] == said
    assert checks["backup_age"]["ok"] and checks["pitr_window"]["ok"] and checks["unfinished_operation"]["ok"]
