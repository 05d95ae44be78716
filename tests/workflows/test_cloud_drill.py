"""`voke --env NAME drill run pitr|failover|all` on scratch Cloud SQL instances, against the
Google Cloud fakes whose instances are real databases on the session's PostgreSQL (one
database per fake instance, each at its own loopback address; a clone is CREATE DATABASE
... TEMPLATE). The canary really writes on the primary and is really read back from the
scratch instance; the production instances are never changed; scratch instances are
deleted at the end, also on failure and Ctrl-C, and a leftover is deleted by the next run."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("google.cloud.sqladmin_v1beta4")

from voketag_ops.adapters.gcp import catalog
from voketag_ops.testing.gcp_fakes import FakeGcp

pytestmark = pytest.mark.pg
ROLE, PASSWORD, SECRET = "cdrill_canary", "Canary-pw-7Hq2xZ9kL1mN4pR8sT0v", "db-canary"


def _toml(env: dict[str, Any]) -> str:
    lines = ["[environments.prod]"]
    lines += [f"{k} = {json.dumps(v)}" for k, v in env.items() if not isinstance(v, dict)]
    lines += ["[environments.prod.endpoints]"]
    lines += [f"{k} = {json.dumps(v)}" for k, v in env["endpoints"].items()]
    return "\n".join(lines) + "\n"


class Drills:
    def __init__(self, fake: FakeGcp, data: Any, home: Path, voke: Any, make_environ: Any) -> None:
        self.fake, self.data, self.home, self._voke = fake, data, home, voke
        self.environ = make_environ(home / "state", VOKE_CONFIG=str(home / "voke.toml"), VOKE_ENV="prod")

    def voke(self, *args: str) -> Any:
        return self._voke(*args, environ=self.environ)

    def drill(self, scenario: str, *extra: str) -> Any:
        return self.voke("drill", "run", scenario, "--canary-seconds", "0.3", "--yes", "--json", *extra)

    def settings(self) -> Any:
        from voketag_ops.config import load_config

        return load_config(environ=self.environ, cwd=self.home).settings

    def scratch(self) -> list[str]:
        return sorted(n for n in self.fake.sql.instances if "-drill-" in n)

    def production_changes(self) -> list[tuple[str, str]]:
        """Calls that would change voke-db or voke-db-dr (only clones *from* voke-db are reads of it)."""
        production = re.compile(r".*/instances/voke-db(-dr)?(/.*)?")
        return [
            (m, p)
            for m, p in self.fake.rest.calls
            if m in ("POST", "PATCH", "DELETE", "PUT")
            and production.fullmatch(p)
            and not p.endswith("/instances/voke-db/clone")
        ]

    def production_canary_rows(self, local_env: Any) -> int:
        with local_env.primary().connect(self.data.database("voke-db")) as conn:
            exists = conn.execute("select to_regclass('voke_drill_canary')").fetchone()[0]
            return conn.execute("select count(*) from voke_drill_canary").fetchone()[0] if exists else 0


@pytest.fixture(scope="module")
def canary_role(platform: Any) -> tuple[str, int]:
    """A login on the session's PostgreSQL for the canary, and the primary's TCP address."""
    with platform.env.primary().connect() as conn:
        conn.execute(
            f"do $$ begin if not exists (select from pg_roles where rolname = '{ROLE}') then "
            f"create role {ROLE} login password '{PASSWORD}'; end if; end $$"
        )
    host, port = platform.db_target().endpoint()
    return host, port


@pytest.fixture
def drills(canary_role, local_env, tmp_path: Path, voke: Any, make_environ: Any) -> Iterator[Drills]:
    from voketag_ops.adapters.gcp.secrets import GcpSecretStore
    from voketag_ops.testing.cloudsql_data import PostgresInstances

    with FakeGcp() as fake:
        fake.sql.recovery_lag = fake.sql.recovery_lag * 0  # the window reaches the cut at once
        fake.sql.add_instance("voke-db", dr_replica="voke-db-dr")
        fake.sql.add_instance("voke-db-dr", region="us-east1", replica_of="voke-db")
        with PostgresInstances(fake.sql, local_env.primary().connect, canary_role, owner=ROLE) as data:
            store = GcpSecretStore(fake.context())
            store.create(SECRET)
            cred = {"username": ROLE, "password": PASSWORD, "dbname": "voketag", "port": data.port}
            version = store.add_version(SECRET, json.dumps(cred | {"host": "unused"}).encode()).version
            store.update(SECRET, etag=store.get(SECRET).etag, aliases={"current": version})
            env = fake.environment(
                replica="voke-db-dr", db_port=data.port, canary_secret=SECRET, operation_timeout=30
            )
            (tmp_path / "voke.toml").write_text(_toml(env))
            yield Drills(fake, data, tmp_path, voke, make_environ)


def test_cloud_pitr_and_failover_drills_measure_on_scratch_instances_and_delete_them(drills, local_env):
    result = drills.drill("all")
    assert result.exit_code == 0, result.stdout + result.stderr
    runs = {j["scenario"]: j for j in result.json["result"]["runs"]}
    assert set(runs) == {"pitr", "failover"}
    for scenario, j in runs.items():
        assert j["status"] == "completed" and j["mode"] == "cloud" and j["environment"] == "prod", j
        assert j["rto_seconds"] is not None and 0 < j["rto_seconds"] < 60
        assert j["rpo_seconds"] is not None and 0 <= j["rpo_seconds"] < 2, j["canary"]
        assert j["lost_commits"] == 0 and j["integrity_ok"] is True
        assert j["canary"]["acked_commits"] >= 2
        assert j["canary"]["rpo"]["recovered"] == j["canary"]["acked_commits"]
        assert all(s["deleted"] for s in j["details"]["scratch"]), j["details"]["scratch"]
        assert all(s["name"].startswith("voke-db-drill-" + scenario) for s in j["details"]["scratch"])
    failover = runs["failover"]
    assert [s["role"] for s in failover["details"]["scratch"]] == ["scratch primary", "scratch replica"]
    assert any(p.endswith("-r/promoteReplica") for _m, p in drills.fake.rest.calls)
    assert any(m == "POST" and p.endswith("/instances") for m, p in drills.fake.rest.calls)  # insert
    # nothing of production changed, nothing left behind, the canary rows on the primary removed
    assert drills.production_changes() == [] and drills.scratch() == []
    assert drills.fake.sql.instances["voke-db"]["master"] is None
    assert drills.fake.sql.instances["voke-db-dr"]["master"] == "voke-db"
    assert drills.production_canary_rows(local_env) == 0
    # RTO and RPO per scenario under voke's metric prefix
    for metric in (catalog.DRILL_RTO, catalog.DRILL_RPO):
        written = {s.metric.labels["scenario"]: s for s in drills.fake.monitoring.written(metric)}
        assert set(written) == {"pitr", "failover"} and written["pitr"].metric.labels["env"] == "prod"
    assert drills.fake.monitoring.written(catalog.DRILL_RTO)[0].points[0].value.double_value > 0
    # history and reports like the local drills
    history = drills.voke("drill", "history", "--json")
    assert history.exit_code == 0 and len(history.json["result"]["runs"]) == 2
    report = drills.voke("drill", "report", runs["failover"]["run_id"], "--format", "md")
    assert report.exit_code == 0 and "failover" in report.stdout
    status = drills.voke("dr", "status", "--json")
    assert status.json["result"]["last_drill"]["run_id"] == runs["failover"]["run_id"]
    audit = (drills.home / "state" / "audit" / "audit.jsonl").read_text()
    assert '"drill.pitr"' in audit and '"drill.failover"' in audit
    for text in (result.stdout, result.stderr, audit, history.stdout, report.stdout):
        assert PASSWORD not in text


def test_a_failed_drill_still_deletes_its_scratch_instances(drills):
    drills.fake.sql.fail_next("PROMOTE_REPLICA", "simulated: the replica could not be promoted")
    result = drills.drill("failover")
    assert result.exit_code == 1, result.stdout + result.stderr
    j = result.json["result"]
    assert j["status"] == "failed" and "could not be promoted" in j["error"]
    assert drills.scratch() == [] and drills.production_changes() == []
    assert [c["ok"] for c in j["cleanup"]] == [True, True]


def test_ctrl_c_cleans_up_saves_the_journal_and_re_raises(drills):
    from voketag_ops.workflows import cloud_drill, drill

    def progress(message: str) -> None:
        if message.startswith("promote"):
            raise KeyboardInterrupt

    settings = drills.settings()
    with pytest.raises(KeyboardInterrupt):
        cloud_drill.run(
            settings,
            "failover",
            home=drills.home / "state",
            progress=progress,
            options={"canary_seconds": 0.1},
        )
    assert drills.scratch() == []
    from types import SimpleNamespace

    journal = drill.load_journal(SimpleNamespace(home=cloud_drill.drills_home(settings)), "last")
    assert journal["status"] == "interrupted" and all(s["deleted"] for s in journal["details"]["scratch"])


def test_a_scratch_instance_that_cannot_be_deleted_is_exit_7_and_the_next_run_deletes_it(drills):
    drills.fake.rest.fail("DELETE", r"/instances/voke-db-drill-", status="PERMISSION_DENIED", times=1)
    result = drills.drill("pitr")
    assert result.exit_code == 7, result.stdout + result.stderr
    err = result.json["error"]
    assert (
        "could not delete" in err["message"]
        and "gcloud sql instances delete voke-db-drill-pitr-" in err["hint"]
    )
    [left] = drills.scratch()
    again = drills.drill("pitr")
    assert again.exit_code == 0, again.stdout + again.stderr
    assert again.json["result"]["details"]["leftovers"]["deleted"] == [left], json.dumps(
        again.json["result"]["steps"][:2]
    )
    assert drills.scratch() == []


def test_cloud_drill_refusals_and_dry_run(drills):
    plan = drills.voke("drill", "run", "all", "--dry-run", "--json")
    assert plan.exit_code == 0 and set(plan.json["result"]["plan"]) == {"pitr", "failover"}
    assert drills.voke("drill", "run", "network", "--yes", "--json").exit_code == 2
    assert drills.voke("drill", "run", "pitr", "--json").exit_code == 2  # no --yes, no terminal
    assert drills.voke("drill", "run", "pitr", "--outage", "5s", "--yes", "--json").exit_code == 2
    # a recorded primary Cloud SQL contradicts: the drill does not start (aborted, exit 1)
    drills.fake.sql.instances["voke-db-dr"]["labels"] = {"voke-env": "prod", "voke-role": "primary"}
    aborted = drills.drill("pitr")
    assert aborted.exit_code == 1 and aborted.json["result"]["status"] == "aborted"
    assert not [p for m, p in drills.fake.rest.calls if m == "POST" and "/clone" in p]


def test_leftovers_are_scratch_names_of_finished_or_old_runs_only():
    from datetime import datetime, timezone

    from voketag_ops.workflows.cloud_drill import is_leftover

    now = datetime(2026, 11, 26, 6, 0, tzinfo=timezone.utc)
    old = "voke-db-drill-pitr-20261126t040000-ab12"
    live = "voke-db-drill-failover-20261126t055900-cd34-r"
    assert is_leftover(old, "voke-db", now=now, min_age=3600)
    assert not is_leftover(live, "voke-db", now=now, min_age=3600)  # maybe another machine's live run
    assert is_leftover(
        live, "voke-db", now=now, min_age=3600, finished=frozenset({"failover-20261126t055900-cd34"})
    )
    for production in ("voke-db", "voke-db-dr", "other-drill-pitr-20200101t000000-0000"):
        assert not is_leftover(production, "voke-db", now=now, min_age=0)
