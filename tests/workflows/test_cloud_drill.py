"""`voke --env NAME drill run pitr|failover|all` on scratch Cloud SQL instances, against the
Google Cloud fakes whose instances are real databases on the session's PostgreSQL (one
database per fake instance, each at its own loopback address; a clone is CREATE DATABASE
... TEMPLATE). The canary really writes on the primary and is really read back from the
scratch instance; the production instances are never changed; scratch instances are
deleted at the end, also on failure and Ctrl-C, and a leftover is deleted by the next run."""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("google.cloud.sqladmin_v1beta4")

from voketag_ops.adapters.gcp import catalog
from voketag_ops.errors import Interrupted
from voketag_ops.errors import NeedsOperatorError as VokeErrorType
from voketag_ops.testing.gcp_fakes import FakeGcp, environment_toml

pytestmark = pytest.mark.pg
ROLE, PASSWORD, SECRET = "cdrill_canary", "Canary-pw-7Hq2xZ9kL1mN4pR8sT0v", "db-canary"


def _toml(env: dict[str, Any]) -> str:
    return environment_toml("prod", env)


class Drills:
    def __init__(self, fake: FakeGcp, data: Any, home: Path, voke: Any, make_environ: Any) -> None:
        self.fake, self.data, self.home, self._voke = fake, data, home, voke
        self.environ = make_environ(home / "state", VOKE_CONFIG=str(home / "voke.toml"), VOKE_ENV="prod")

    def voke(self, *args: str) -> Any:
        return self._voke(*args, environ=self.environ)

    def configure(self, **extra: Any) -> None:
        env = self.fake.environment(
            replica="voke-db-dr", db_port=self.data.port, canary_secret=SECRET, operation_timeout=30
        )
        env = {k: v for k, v in (env | extra).items() if v is not None}
        (self.home / "voke.toml").write_text(_toml(env))

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
            drills = Drills(fake, data, tmp_path, voke, make_environ)
            drills.configure()
            yield drills


def test_cloud_pitr_and_failover_drills_measure_on_scratch_instances_and_delete_them(drills, local_env):
    result = drills.drill("all")
    assert result.exit_code == 0, result.stdout + result.stderr
    runs = {j["scenario"]: j for j in result.json["result"]["runs"]}
    assert set(runs) == {"pitr", "failover"}
    assert runs["failover"]["targets"]["rto_target_seconds"] == 600  # regional (the local one: 300)
    for scenario, j in runs.items():
        assert j["status"] == "completed" and j["mode"] == "cloud" and j["environment"] == "prod", j
        assert j["versions"]["postgres"] == "POSTGRES_16"  # the instance's databaseVersion
        assert j["rto_seconds"] is not None and 0 < j["rto_seconds"] < 60
        assert j["rpo_seconds"] is not None and 0 <= j["rpo_seconds"] < 2, j["canary"]
        assert j["lost_commits"] == 0 and j["integrity_ok"] is True
        assert all(i["lsn"] and "/" in i["lsn"] for i in j["integrity"]), j["integrity"]  # read at
        ops = [c for s in j["steps"] for c in s["commands"]]  # the Cloud SQL operations waited for
        assert ops and all(c["status"] == "DONE" and c["operation"] for c in ops)
        assert [s["exit_code"] for s in j["steps"]] == [0] * len(j["steps"])
        assert j["canary"]["acked_commits"] >= 2
        assert j["canary"]["rpo"]["recovered"] == j["canary"]["acked_commits"]
        assert j["canary"]["rpo"]["cut_clock"].startswith("server")
        assert j["canary"]["rpo"]["newest_recovered_at"] <= j["details"]["cut_at"]
        assert all(s["deleted"] for s in j["details"]["scratch"]), j["details"]["scratch"]
        assert all(s["name"].startswith("voke-db-drill-" + scenario) for s in j["details"]["scratch"])
        # the scratch instance is labelled the drill's after the RTO window (its answer), not in it
        steps = [s["name"] for s in j["steps"]]
        answered = next(i for i, n in enumerate(steps) if n.startswith("connect to"))
        labelled = [i for i, n in enumerate(steps) if n.startswith("label ")]
        assert labelled and (scenario == "failover" or min(labelled) > answered), steps
    # pitr: rows written after the (server-clock) cut exist on the primary but not in the
    # clone at the cut; every row before it is there
    pitr = runs["pitr"]["canary"]
    assert pitr["written_after_cut"] == 2 and pitr["rpo"]["written_after_cut"] == 2
    assert pitr["rpo"]["present_after_cut"] == [] and pitr["rpo"]["missing_before_cut"] == []
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


def test_the_commands_a_drill_result_names_carry_the_environment(drills):
    # as its errors do (Output.with_env): pasted in another shell, they act on the same env
    empty = drills.voke("drill", "history")
    assert "`voke --env prod drill run all --yes`" in " ".join(empty.stdout.split()), empty.stdout
    result = drills.voke("drill", "run", "pitr", "--canary-seconds", "0.3", "--yes")
    assert result.exit_code == 0, result.stdout + result.stderr
    run_id = drills.voke("drill", "history", "--json").json["result"]["runs"][-1]["run_id"]
    # a command that runs as pasted: the run's own id, one format (not a template: `md|html` is a pipe)
    said = " ".join(result.stdout.split())
    assert f"report: voke --env prod drill report {run_id} --format md (or --format html -o FILE)" in said, (
        said
    )


def test_a_failed_drill_still_deletes_its_scratch_instances(drills):
    drills.fake.sql.fail_next("PROMOTE_REPLICA", "simulated: the replica could not be promoted")
    result = drills.drill("failover")
    assert result.exit_code == 1, result.stdout + result.stderr
    j = result.json["result"]
    assert j["status"] == "failed" and "could not be promoted" in j["error"]
    assert drills.scratch() == [] and drills.production_changes() == []
    assert [c["ok"] for c in j["cleanup"]] == [True, True]


def test_ctrl_c_cleans_up_saves_the_journal_and_reports_it_with_the_error(drills, monkeypatch):
    # exit 130 naming the journal, which is the `result` of the error envelope, as `all`'s are
    from voketag_ops.workflows import cloud_drill, drill

    real = cloud_drill.run_drill

    def ctrl_c_at_the_promotion(*args: Any, progress: Any, **kw: Any) -> Any:
        def interrupting(message: str) -> None:
            progress(message)
            if message.startswith("promote"):
                raise KeyboardInterrupt

        return real(*args, progress=interrupting, **kw)

    monkeypatch.setattr(cloud_drill, "run_drill", ctrl_c_at_the_promotion)
    result = drills.drill("failover")
    assert result.exit_code == 130, result.stdout + result.stderr
    assert drills.scratch() == []
    from types import SimpleNamespace

    settings = drills.settings()
    journal = drill.load_journal(SimpleNamespace(home=cloud_drill.drills_home(settings)), "last")
    assert journal["status"] == "interrupted" and all(s["deleted"] for s in journal["details"]["scratch"])
    assert result.json["result"] == journal
    path = cloud_drill.drills_home(settings) / "drills" / f"{journal['run_id']}.json"
    error = result.json["error"]
    assert error["type"] == "Interrupted" and str(path) in error["message"]  # named, as a local drill's
    assert error["hint"] == f"its journal: voke --env prod drill report {journal['run_id']}"


def test_ctrl_c_in_a_later_drill_of_all_reports_every_journal_saved(drills):
    # As locally: the finished drill's journal and the interrupted one's, with the error naming
    # the interrupted journal and its path; nothing left to run.
    from voketag_ops.workflows import cloud_drill

    def progress(message: str) -> None:
        if message.startswith("promote"):  # the failover drill, after pitr finished
            raise KeyboardInterrupt

    settings = drills.settings()
    outcome = cloud_drill.run(
        settings, "all", home=drills.home / "state", progress=progress, options={"canary_seconds": 0.1}
    )
    runs = outcome.report["runs"]
    assert [(j["scenario"], j["status"]) for j in runs] == [
        ("pitr", "completed"),
        ("failover", "interrupted"),
    ]
    assert outcome.report["not_run"] == [] and outcome.report["status"] == "failed"
    assert isinstance(outcome.error, Interrupted) and outcome.error.exit_code == 130
    path = cloud_drill.drills_home(settings) / "drills" / f"{runs[1]['run_id']}.json"
    assert path.is_file() and str(path) in outcome.error.message
    assert runs[1]["run_id"] in (outcome.error.hint or "") and drills.scratch() == []


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
    for local_only in ("network", "failback"):  # README: local only, exit 3 on a cloud environment
        assert drills.voke("drill", "run", local_only, "--yes", "--json").exit_code == 3
    assert drills.voke("drill", "run", "pitr", "--json").exit_code == 2  # no --yes, no terminal
    assert drills.voke("drill", "run", "pitr", "--outage", "5s", "--yes", "--json").exit_code == 2
    no_canary = drills.voke("drill", "run", "pitr", "--canary-seconds", "0s", "--yes", "--json")
    assert no_canary.exit_code == 2
    assert no_canary.json["error"]["message"] == "--canary-seconds: must be more than 0 (e.g. 5s)"
    # a recorded primary Cloud SQL contradicts: the drill does not start (aborted, exit 5)
    drills.fake.sql.instances["voke-db-dr"]["labels"] = {"voke-env": "prod", "voke-role": "primary"}
    aborted = drills.drill("pitr")
    assert aborted.exit_code == 5 and aborted.json["result"]["status"] == "aborted"
    assert aborted.json["error"]["type"] == "PreconditionError"
    assert not [p for m, p in drills.fake.rest.calls if m == "POST" and "/clone" in p]


def test_a_cloud_dry_run_is_refused_where_its_run_would_be_and_changes_nothing(drills, monkeypatch, tmp_path):
    # README: a state-changing cloud DR command's --dry-run is "the plan, after the same checks"
    calls = len(drills.fake.rest.calls)
    plan = drills.drill("all", "--dry-run")
    assert plan.exit_code == 0, plan.stdout + plan.stderr
    steady = plan.json["result"]["steady_state"]
    assert set(steady) == {"pitr", "failover"} and all(
        s["ok"] and s["leader"] == "voke-db" for s in steady.values()
    )
    assert [c["name"] for c in steady["pitr"]["checks"]] == ["topology", "leader_running", "pitr_enabled"]
    # point-in-time recovery off: the pitr drill (and so `all`) would be aborted; failover needs none
    drills.fake.sql.instances["voke-db"]["pitr"] = False
    for scenario in ("pitr", "all"):
        refused = drills.drill(scenario, "--dry-run")
        assert refused.exit_code == 5, refused.stdout + refused.stderr
        assert refused.json["error"] == {
            "type": "PreconditionError",
            "message": "drill pitr would be aborted: steady state before the drill: point-in-time "
            "recovery off on voke-db; nothing was changed",
            "exit_code": 5,
        }
    assert drills.drill("failover", "--dry-run").exit_code == 0
    drills.fake.sql.instances["voke-db"]["pitr"] = True
    # a recorded primary Cloud SQL contradicts
    drills.fake.sql.instances["voke-db-dr"]["labels"] = {"voke-env": "prod", "voke-role": "primary"}
    contradicted = drills.drill("failover", "--dry-run")
    assert contradicted.exit_code == 5 and "disagree" in contradicted.json["error"]["message"]
    drills.fake.sql.instances["voke-db-dr"]["labels"] = {}
    # the canary's login: a secret that does not exist (exit 4), one that is no JSON login (exit 3)
    drills.configure(canary_secret="no-such-secret")
    assert drills.drill("pitr", "--dry-run").exit_code == 4
    # no Google credentials (google.auth reads the process environment: ADC at a missing file)
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(tmp_path / "none.json"))
    drills.configure(credentials="adc")
    no_credentials = drills.drill("failover", "--dry-run")
    assert no_credentials.exit_code == 3, no_credentials.stdout
    assert no_credentials.json["error"]["message"].startswith("no Google credentials")
    # read-only: no change requested, no journal, no audit event, no lock taken
    assert [c for c in drills.fake.rest.calls[calls:] if c[0] != "GET"] == []
    state = drills.home / "state"
    assert not list(state.rglob("*.json")) and not (state / "audit" / "audit.jsonl").exists()
    assert not list(state.rglob("dr.lock"))


def test_leftovers_are_labelled_scratch_names_of_finished_or_old_runs_only():
    from datetime import datetime, timezone

    from voketag_ops.workflows.cloud_drill import is_leftover

    now = datetime(2026, 11, 26, 6, 0, tzinfo=timezone.utc)
    ours = {"voke-drill": "x", "voke-env": "prod"}

    def leftover(name: str, labels: dict[str, str] = ours, **kw: Any) -> bool:
        return is_leftover(name, "voke-db", labels=labels, env="prod", now=now, **({"min_age": 3600} | kw))

    old = "voke-db-drill-pitr-20261126t040000-ab12"
    live = "voke-db-drill-failover-20261126t055900-cd34-r"
    assert leftover(old) and leftover(old + "-r")
    assert not leftover(live)  # maybe another machine's live run
    assert leftover(live, finished=frozenset({"failover-20261126t055900-cd34"}))
    short = "voke-db-drill-f-tp3cg0-ab12-r"  # the short form: started 04:00 (epoch seconds, base 36)
    assert leftover(short) and not leftover(short, min_age=3 * 3600)
    # an unlabelled one this machine's journals list as not deleted: by name, never another name
    assert leftover(old, labels={}, journaled=frozenset({old}))
    assert leftover(old, labels={"voke-role": "primary"}, journaled=frozenset({old}))
    assert not leftover(live, labels={}, journaled=frozenset({live}))  # its run may still be live
    assert not leftover(
        "voke-db-drill-important", labels={}, journaled=frozenset({"voke-db-drill-important"})
    )
    # never: unlabelled, another environment's, or a name voke does not generate
    assert not leftover(old, labels={}) and not leftover(
        old, labels={"voke-drill": "x", "voke-env": "staging"}
    )
    for name in (
        "voke-db",
        "voke-db-dr",
        "other-drill-pitr-20200101t000000-0000",
        "voke-db-drill-important",
        "voke-db-drill-pitr-important",
        "voke-db-drill-pitr-20261326t040000-ab12",  # month 13
        "voke-db-drill-pitr-20261126t040000-ab12-copy",
        "voke-db-drill-network-20261126t040000-ab12",
    ):
        assert not leftover(name, min_age=0), name


def test_the_sweep_deletes_only_labelled_scratch_instances_of_voke(drills):
    ours = {"voke-drill": "pitr-20200101t000000-ab12", "voke-env": "prod"}
    drills.fake.sql.add_instance("voke-db-drill-keep-me")  # a name under the prefix, no run stamp
    drills.fake.sql.add_instance("voke-db-drill-pitr-20200101t000000-ab12")  # no labels
    drills.fake.sql.add_instance("voke-db-drill-pitr-20200101t000000-cd34", labels=ours)
    result = drills.drill("pitr")
    assert result.exit_code == 0, result.stdout + result.stderr
    leftovers = result.json["result"]["details"]["leftovers"]
    assert leftovers["deleted"] == ["voke-db-drill-pitr-20200101t000000-cd34"]
    assert sorted(leftovers["not_touched"]) == [
        "voke-db-drill-keep-me",
        "voke-db-drill-pitr-20200101t000000-ab12",
    ]
    assert drills.scratch() == leftovers["not_touched"]


def test_scratch_names_fit_cloud_sql_or_the_drill_refuses_before_writing(drills, local_env):
    from datetime import datetime, timezone

    from voketag_ops.errors import ConfigError
    from voketag_ops.workflows.cloud_drill import scratch_id, scratch_pattern

    t = datetime(2026, 11, 26, 6, 0, tzinfo=timezone.utc)
    assert scratch_id("a" * 60, "failover", t, "abcd") == "failover-20261126t060000-abcd"
    short = scratch_id("a" * 70, "failover", t, "abcd")  # 98 characters at most, with -r
    assert short == "f-tp3i00-abcd" and len("a" * 70 + "-drill-" + short + "-r") <= 98
    assert scratch_pattern("a" * 70).fullmatch("a" * 70 + "-drill-" + short + "-r")
    with pytest.raises(ConfigError):
        scratch_id("a" * 77, "pitr", t, "abcd")
    drills.configure(instance="v" * 77)
    calls = len(drills.fake.rest.calls)
    result = drills.drill("pitr")
    assert result.exit_code == 3, result.stdout + result.stderr
    assert "at most 76 characters" in result.json["error"]["hint"]
    assert drills.fake.rest.calls[calls:] == []
    assert drills.production_canary_rows(local_env) == 0


def test_a_canary_login_that_cannot_be_resolved_is_exit_3_before_the_sweep(drills):
    old = "voke-db-drill-pitr-20200101t000000-cd34"
    drills.fake.sql.add_instance(old, labels={"voke-drill": "pitr-20200101t000000-cd34", "voke-env": "prod"})
    calls = len(drills.fake.rest.calls)
    drills.configure(canary_secret=None)  # the first DB-password secret then, which does not exist
    missing = drills.drill("pitr")
    assert missing.exit_code == 4 and "db-app" in missing.json["error"]["message"], missing.stdout
    from voketag_ops.adapters.gcp.secrets import GcpSecretStore

    store = GcpSecretStore(drills.fake.context())
    store.create("not-json")
    version = store.add_version("not-json", b"just a password").version
    store.update("not-json", etag=store.get("not-json").etag, aliases={"current": version})
    drills.configure(canary_secret="not-json")
    calls = len(drills.fake.rest.calls)
    bad = drills.drill("pitr")
    assert bad.exit_code == 3 and "JSON" in bad.json["error"]["message"], bad.stdout
    assert drills.scratch() == [old]  # nothing swept, nothing written
    assert [c for c in drills.fake.rest.calls[calls:] if c[0] != "GET"] == []


def test_a_canary_write_retried_after_its_commit_counts_once(drills):
    from voketag_ops.adapters.gcp.canary import CanaryDb

    db = CanaryDb({"username": ROLE, "password": PASSWORD, "dbname": "voketag"}, port=drills.data.port)
    host = drills.fake.sql.instances["voke-db"]["ip"]
    with db.connect(host) as conn:  # the row a promotion-time write committed before its answer was lost
        conn.execute(
            "create table if not exists voke_drill_canary (run_id text not null, seq integer not null, "
            "written_at timestamptz not null default clock_timestamp(), primary key (run_id, seq))"
        )
        conn.execute("insert into voke_drill_canary (run_id, seq) values ('retry-test', 7)")
    _, rows = db.wait_answer(host, "retry-test", timeout=2, poll=0.01, write_seq=7)  # the retry succeeds
    assert sorted(rows) == [7]
    writes, cut = db.write(host, "retry-test", seconds=0, interval=0.01, after=1)
    assert [w.ok for w in writes] == [True, True]
    assert writes[0].written_at <= cut < writes[1].written_at  # the server's clock on both sides
    assert db.delete(host, "retry-test") == 3


def test_a_fake_instance_gets_its_empty_database_at_its_first_connection(drills, local_env):
    """The fakes make an instance's empty database when it is first used (a CREATE DATABASE
    costs PostgreSQL a sync): reached at its address, it is there, empty and the canary's."""
    import psycopg

    data, name = drills.data, "voke-db-dr"
    db = data.databases[name]  # not database(), which makes it

    def made() -> bool:
        with local_env.primary().connect() as conn:
            return conn.execute("select 1 from pg_database where datname = %s", (db,)).fetchone() is not None

    assert not made()
    host = drills.fake.sql.instances[name]["ip"]
    cred = {"user": ROLE, "password": PASSWORD, "dbname": "voketag", "port": data.port}
    with psycopg.connect(host=host, connect_timeout=5, **cred) as conn:
        assert conn.execute("select current_database(), current_user").fetchone() == (db, ROLE)
        assert conn.execute("select to_regclass('voke_drill_canary')").fetchone() == (None,)
    assert made()
    drills.fake.sql.add_instance("voke-copy")
    data.create("voke-copy", name)  # a copy of it is made at once, from it
    assert data.database("voke-copy") and "voke-copy" not in data.empty


def test_fake_instances_share_a_port_the_kernel_chose_and_skip_taken_addresses(drills):
    """Two test sessions at once: each relay port comes from a bind to port 0 (not a probe of
    127.0.0.1), and an address whose port another process holds is skipped."""
    import socket

    data = drills.data
    taken = socket.create_server((f"127.0.0.{data._next}", data.port))
    try:
        drills.fake.sql.add_instance("voke-other")
        data.create("voke-other", None)
        ip = drills.fake.sql.instances["voke-other"]["ip"]
        assert ip != taken.getsockname()[0]
        with socket.create_connection((ip, data.port), timeout=5):
            pass
    finally:
        taken.close()


def test_a_deleted_fake_instance_leaves_no_relay_thread_behind(drills):
    """Its relay's threads have ended when delete() returns. A thread left blocked in accept()
    on the closed socket (close() does not wake it) had the kernel restart that accept() on
    the same fd number after the process was stopped and resumed (py-spy's samples): a later
    test's relay by then, whose first session it served with this test's dead instance."""
    import threading

    import psycopg

    data = drills.data
    relay = data.relays["voke-db"]
    host = drills.fake.sql.instances["voke-db"]["ip"]
    cred = {"user": ROLE, "password": PASSWORD, "dbname": "voketag", "port": data.port}
    before = set(threading.enumerate())
    with psycopg.connect(host=host, connect_timeout=5, autocommit=True, **cred) as conn:  # held open
        conn.execute("select 1")
        sessions = set(threading.enumerate()) - before
        data.delete("voke-db")
    assert sessions and relay.thread not in sessions
    assert [t for t in (relay.thread, *sessions) if t.is_alive()] == []


PRODUCTION_LABELS = {"voke-env": "prod", "voke-role": "primary", "voke-since": "20261101t000000z"}


def _pitr(drills: Drills, progress: Any) -> Any:
    """The outcome of a cloud PITR drill whose progress lines go to PROGRESS."""
    from voketag_ops.workflows import cloud_drill

    return cloud_drill.run(
        drills.settings(),
        "pitr",
        home=drills.home / "state",
        progress=progress,
        options={"canary_seconds": 0.1},
    )


def _interrupt_at_the_answer(message: str) -> None:
    if message.startswith("connect to voke-db-drill-"):
        raise KeyboardInterrupt


def test_a_clone_whose_delete_fails_after_ctrl_c_is_labelled_and_the_next_run_deletes_it(drills):

    drills.fake.sql.instances["voke-db"]["labels"] = dict(PRODUCTION_LABELS)  # a clone copies them
    drills.fake.rest.fail("DELETE", r"/instances/voke-db-drill-", status="PERMISSION_DENIED", times=1)
    outcome = _pitr(drills, _interrupt_at_the_answer)
    # exit 7: the interrupted drill left a billed instance
    assert isinstance(outcome.error, VokeErrorType) and outcome.report["status"] == "interrupted"
    [left] = drills.scratch()
    labels = drills.fake.sql.instances[left]["labels"]
    assert labels["voke-env"] == "prod" and labels["voke-drill"].startswith("pitr-")
    assert not labels.get("voke-role") and not labels.get("voke-since")  # production's record is cleared
    again = drills.drill("pitr")
    assert again.exit_code == 0, again.stdout + again.stderr
    assert again.json["result"]["details"]["leftovers"]["deleted"] == [left]
    assert drills.scratch() == []


def _ctrl_c_at_the_answer_with_the_delete_refused(drills: Drills, monkeypatch: Any) -> None:
    """The next `voke drill run`: Ctrl-C at the canary read of the first scratch instance,
    whose delete in the clean-up is then refused once (it stays, billed)."""
    from voketag_ops.workflows import cloud_drill

    real = cloud_drill.run_drill

    def ctrl_c_at_the_answer(*args: Any, progress: Any, **kw: Any) -> Any:
        def interrupting(message: str) -> None:
            progress(message)
            _interrupt_at_the_answer(message)

        return real(*args, progress=interrupting, **kw)

    monkeypatch.setattr(cloud_drill, "run_drill", ctrl_c_at_the_answer)
    drills.fake.rest.fail("DELETE", r"/instances/voke-db-drill-", status="PERMISSION_DENIED", times=1)


def _names_the_leftover_and_the_interruption(drills: Drills, error: dict[str, Any], journal: dict[str, Any]):
    [left] = drills.scratch()
    assert left.startswith("voke-db-drill-pitr-") and journal["left_behind"] == [left]
    assert journal["status"] == "interrupted"
    path = drills.home / "state" / "cloud" / "prod" / "drills" / f"{journal['run_id']}.json"
    message, hint = error["message"], error["hint"]
    assert message.startswith("interrupted: drill pitr") and str(path) in message, message
    assert f"could not delete the scratch instance(s) {left} (they are billed)" in message
    assert f"gcloud sql instances delete {left} --project {drills.fake.project}" in hint, hint
    assert f"voke --env prod drill report {journal['run_id']}" in hint, hint


def test_ctrl_c_that_leaves_a_billed_scratch_instance_is_exit_7_naming_it(drills, monkeypatch):
    # exit 7 as when no Ctrl-C came (a person must delete it), the interruption said as well
    _ctrl_c_at_the_answer_with_the_delete_refused(drills, monkeypatch)
    result = drills.drill("pitr")
    assert result.exit_code == 7, result.stdout + result.stderr
    from types import SimpleNamespace

    from voketag_ops.workflows import drill

    journal = drill.load_journal(SimpleNamespace(home=drills.home / "state" / "cloud" / "prod"), "last")
    assert result.json["result"] == journal  # its journal, as `all` shows those saved
    _names_the_leftover_and_the_interruption(drills, result.json["error"], journal)


def test_ctrl_c_in_all_that_leaves_a_billed_scratch_instance_keeps_the_journals(drills, monkeypatch):
    # as for one drill (exit 7, the leftover and the interruption named), and as for a Ctrl-C of
    # `all`: the journals saved are the result, the drills not started listed
    _ctrl_c_at_the_answer_with_the_delete_refused(drills, monkeypatch)
    result = drills.drill("all")
    assert result.exit_code == 7, result.stdout + result.stderr
    report = result.json["result"]
    assert [j["scenario"] for j in report["runs"]] == ["pitr"], report
    assert report["not_run"] == ["failover"] and report["status"] == "failed"
    _names_the_leftover_and_the_interruption(drills, result.json["error"], report["runs"][0])


def test_an_unlabelled_clone_the_journal_lists_is_deleted_by_the_next_run_here(drills):
    drills.fake.sql.instances["voke-db"]["labels"] = dict(PRODUCTION_LABELS)
    drills.fake.sql.instances["voke-db-dr"]["labels"] = {"voke-env": "prod", "voke-role": "replica"}
    drills.fake.rest.fail("DELETE", r"/instances/voke-db-drill-", status="PERMISSION_DENIED", times=1)
    # the label step after the answer and the label before giving up on the delete both fail
    drills.fake.rest.fail("PATCH", r"/instances/voke-db-drill-", status="PERMISSION_DENIED", times=2)
    result = drills.drill("pitr")
    assert result.exit_code == 7, result.stdout + result.stderr
    [left] = drills.scratch()
    assert drills.fake.sql.instances[left]["labels"] == PRODUCTION_LABELS  # still production's
    hint = result.json["error"]["hint"]
    assert "the next drill run on this machine also retries" in hint and left in hint.split("; ")[-1]
    # the topology is read from the two configured instances only: never from the clone
    status = drills.voke("dr", "status", "--json")
    assert status.exit_code == 0, status.stdout
    topo = status.json["result"]["topology"]
    assert topo["primary"] == "voke-db" and topo["disagreement"] is None
    assert status.json["result"]["leader"]["name"] == "voke-db"
    again = drills.drill("pitr")
    assert again.exit_code == 0, again.stdout + again.stderr
    assert again.json["result"]["details"]["leftovers"]["deleted"] == [left]
    assert drills.scratch() == []


def test_a_clone_left_by_a_killed_run_is_deleted_once_its_process_is_gone(drills):
    """SIGKILL between the clone and its label: only the checkpoint journal (status running,
    written before the clone request) is on disk, and the clone carries production's labels."""
    import shutil
    import subprocess
    import sys

    from voketag_ops.workflows import cloud_drill

    drills.fake.sql.instances["voke-db"]["labels"] = dict(PRODUCTION_LABELS)
    journals = cloud_drill.drills_home(drills.settings()) / "drills"
    saved = drills.home / "checkpoint"

    def kill_point(message: str) -> None:
        if message.startswith("connect to voke-db-drill-"):
            shutil.copytree(journals, saved)  # what a SIGKILL here leaves on disk
            drills.fake.rest.fail("DELETE", r"/instances/voke-db-drill-", status="PERMISSION_DENIED", times=1)
            drills.fake.rest.fail("PATCH", r"/instances/voke-db-drill-", status="PERMISSION_DENIED", times=2)

    outcome = _pitr(drills, kill_point)
    assert isinstance(outcome.error, VokeErrorType)
    shutil.rmtree(journals)
    shutil.copytree(saved, journals)
    [path] = journals.glob("*.json")
    checkpoint = json.loads(path.read_text())
    [left] = drills.scratch()
    assert checkpoint["status"] == "running" and checkpoint["details"]["scratch"][0]["name"] == left
    # killed before anything was measured: nothing reads breached
    assert (checkpoint["rto_met"], checkpoint["rpo_met"], checkpoint["integrity_ok"]) == (None, None, None)
    assert checkpoint["breaches"] == []
    assert drills.fake.sql.instances[left]["labels"] == PRODUCTION_LABELS
    # its process still alive (here: this one): maybe a live run, left alone
    live = drills.drill("pitr")
    assert live.exit_code == 0 and live.json["result"]["details"]["leftovers"]["not_touched"] == [left]
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True)
    checkpoint["details"]["owner"]["pid"] = int(dead.stdout)
    path.write_text(json.dumps(checkpoint))
    again = drills.drill("pitr")
    assert again.exit_code == 0, again.stdout + again.stderr
    assert again.json["result"]["details"]["leftovers"]["deleted"] == [left]
    assert drills.scratch() == []


def test_a_failing_canary_insert_says_why_and_shows_the_table_it_needs(drills, local_env):
    # a canary table made by hand without the primary key ON CONFLICT needs
    with local_env.primary().connect(drills.data.database("voke-db")) as conn:
        conn.execute(
            "create table voke_drill_canary (run_id text not null, seq integer not null, "
            "written_at timestamptz not null default clock_timestamp())"
        )
        conn.execute(f"alter table voke_drill_canary owner to {ROLE}")
    result = drills.drill("pitr")
    assert result.exit_code == 5, result.stdout + result.stderr  # aborted: nothing was drilled yet
    j = result.json["result"]
    assert j["status"] == "aborted"
    assert "no canary write was acknowledged" in j["error"] and "ON CONFLICT" in j["error"], j["error"]
    [step] = [s for s in j["steps"] if s["name"].startswith("write canary rows")]
    assert "ON CONFLICT" in step["detail"]["first_error"]
    assert "primary key (run_id, seq)" in step["detail"]["hint"] == j["canary"]["hint"]
    assert PASSWORD not in result.stdout + result.stderr
    assert drills.scratch() == []


def test_a_clone_cut_short_mid_poll_is_deleted_by_the_next_run_once_it_appears(drills, monkeypatch):
    from types import SimpleNamespace

    from voketag_ops.adapters.gcp import sql
    from voketag_ops.workflows import cloud_drill, drill

    drills.fake.sql.instances["voke-db"]["labels"] = dict(PRODUCTION_LABELS)
    real_wait = sql.CloudSqlAdmin.wait

    def ctrl_c_while_cloning(self, op, what, **kw):
        if what.startswith("clone voke-db at"):
            raise KeyboardInterrupt  # the create was accepted; Cloud SQL goes on without us
        return real_wait(self, op, what, **kw)

    monkeypatch.setattr(sql.CloudSqlAdmin, "wait", ctrl_c_while_cloning)
    settings = drills.settings()
    outcome = cloud_drill.run(settings, "pitr", home=drills.home / "state", progress=lambda m: None,
                              options={"canary_seconds": 0.1})  # fmt: skip
    monkeypatch.undo()
    journal = drill.load_journal(SimpleNamespace(home=cloud_drill.drills_home(settings)), "last")
    assert [s["deleted"] for s in journal["details"]["scratch"]] == [False]  # not found is not deleted
    # Its create was accepted and not seen to end: named for a person (exit 7), not taken for gone.
    (clone,) = journal["left_behind"]
    assert isinstance(outcome.error, VokeErrorType) and not isinstance(outcome.error, Interrupted)
    assert outcome.error.message.startswith("interrupted: ") and clone in outcome.error.message
    # Found by review: its clean-up entry read ok, exit 0, while the run exited 7 because of it.
    assert _delete_entry(journal, clone)["exit_code"] == outcome.error.exit_code == 7
    for op in drills.fake.sql.operations.values():  # Cloud SQL finishes the clone later
        if op["doc"]["status"] != "DONE":
            op["effect"]()
            op["doc"]["status"] = "DONE"
    assert drills.scratch()  # there it is, with production's labels
    drills.drill("pitr")
    assert drills.scratch() == []  # the next run found it through the journal and deleted it


def test_a_failed_clean_up_on_production_fails_the_drill(drills, monkeypatch, local_env):
    from voketag_ops.adapters.gcp import canary
    from voketag_ops.errors import ConnectivityError

    def unreachable(self, host, run_id):
        raise ConnectivityError(f"cannot log in to the database at {host}: timeout")

    monkeypatch.setattr(canary.CanaryDb, "delete", unreachable)
    result = drills.drill("pitr")
    assert result.exit_code == 1, result.stdout
    journal = result.json["result"]
    assert journal["status"] == "failed"
    assert any("clean-up step(s) failed: delete the canary rows" in b for b in journal["breaches"])


def test_pitr_after_a_failover_reaches_the_new_primary_through_replica_db_host(drills):
    sql = drills.fake.sql.instances
    relay = sql["voke-db-dr"]["ip"]  # where the test database answers
    # the state `dr failover` leaves: voke-db-dr the primary (recorded), voke-db its replica
    sql["voke-db-dr"]["master"], sql["voke-db-dr"]["replicas"] = None, ["voke-db"]
    sql["voke-db"]["master"], sql["voke-db"]["replicas"] = "voke-db-dr", []
    sql["voke-db-dr"]["labels"] = {"voke-env": "prod", "voke-role": "primary", "voke-since": "20261101t000000z", "voke-op": "failover"}  # fmt: skip
    sql["voke-db"]["labels"] = {"voke-env": "prod", "voke-role": "replica"}
    sql["voke-db-dr"]["ip"] = "192.0.2.1"  # its private IP: not reachable from here
    drills.configure(replica_db_host=relay, replica_db_port=drills.data.port, timeout=3)
    result = drills.drill("pitr")
    assert result.exit_code == 0, result.stdout


@pytest.mark.parametrize("scenario", ["pitr", "failover"])
@pytest.mark.parametrize("ended_before_seen", [0.03, 3600.0], ids=["in-the-window", "clock-skew"])
def test_recovery_ends_when_cloud_sql_says_not_when_the_poll_saw_it(drills, scenario, ended_before_seen):
    # The operation's endTime, not the poll up to poll_interval later; never before the request
    # (the clocks differ: an hour-old end is the request itself).
    from voketag_ops.core.dr_checks import parse_iso

    drills.fake.sql.polls_per_step = 4  # the operation runs a while: its end is after the request
    drills.fake.sql.ended_before_seen = timedelta(seconds=ended_before_seen)
    result = drills.drill(scenario)
    assert result.exit_code == 0, result.stdout + result.stderr
    journal = result.json["result"]
    timeline = journal["timeline"]
    if ended_before_seen > 60:
        assert timeline["recovered_at"] == timeline["recovery_started_at"]
    else:
        step = next(s for s in journal["steps"] if s["name"].startswith(("clone voke-db at", "promote")))
        ended = drills.fake.sql.operations[step["detail"]["operation"]]["doc"]["endTime"]
        assert (
            parse_iso(timeline["recovered_at"])
            == parse_iso(ended)
            > parse_iso(timeline["recovery_started_at"])
        )
    assert timeline["first_write_ok_at"] >= timeline["recovered_at"]


@pytest.mark.parametrize("step", [-3600.0, 3600.0], ids=["back-1h", "ahead-1h"])
def test_a_wall_clock_step_mid_drill_leaves_the_rto_and_phases_true(drills, step):
    # NTP steps the clock while Cloud SQL promotes: the RTO and phases are monotonic durations,
    # and the timeline's UTC stamps still differ by exactly them.
    from voketag_ops import clock
    from voketag_ops.core.dr_checks import parse_iso
    from voketag_ops.testing import SteppedClock

    wall, promote = SteppedClock(), drills.fake.sql.on_promote

    def stepped(replica: str, primary: str) -> None:
        wall.step(step)
        promote(replica, primary)

    drills.fake.sql.on_promote = stepped
    with clock.using(wall):
        result = drills.drill("failover")
    assert result.exit_code == 0, result.stdout + result.stderr
    journal = result.json["result"]
    assert wall.offset and 0 < journal["rto_seconds"] < 60, journal["timeline"]
    assert all(v is None or 0 <= v < 60 for v in journal["phases"].values()), journal["phases"]
    timeline = {k: parse_iso(v) for k, v in journal["timeline"].items() if v}
    span = (timeline["first_write_ok_at"] - timeline["fault_injected_at"]).total_seconds()
    assert span == pytest.approx(journal["rto_seconds"], abs=0.002)


def test_one_cloud_dr_operation_at_a_time_from_this_machine(drills):
    import fcntl

    from voketag_ops.workflows.cloud_drill import drills_home

    lock = drills_home(drills.settings()) / "dr.lock"
    with open(lock, "w") as held:  # another voke's `dr failover` (its own open file: not re-entered)
        held.write("dr failover on prod pid 4242")
        held.flush()
        fcntl.flock(held, fcntl.LOCK_EX)
        busy = drills.drill("pitr")
        failover = drills.voke("dr", "failover", "--yes", "--json")
        dry = drills.drill("pitr", "--dry-run")
        local_only = drills.drill("network")  # its own answer (exit 3), not the lock's
    for done in (busy, failover):
        assert done.exit_code == 5, done.stdout
        assert "another DR operation is running (dr failover on prod" in done.json["error"]["message"]
    assert dry.exit_code == 0 and dry.json["result"]["dry_run"] is True
    assert local_only.exit_code == 3
    for directory in (lock.parent, lock.parent.parent):  # VOKE_HOME/cloud/NAME and cloud: private
        assert directory.stat().st_mode & 0o777 == 0o700
    assert drills.scratch() == [] and drills.production_changes() == []  # nothing was requested


def test_ctrl_c_between_two_cloud_drills_of_all_still_reports_the_one_that_ran(drills, monkeypatch):
    from voketag_ops.workflows import cloud_drill

    def one(settings: Any, name: str, *, saved: list[dict[str, Any]], **_kw: Any) -> dict[str, Any]:
        if name == "failover":  # Ctrl-C before it started: outside a drill's own frame
            raise KeyboardInterrupt
        journal = {"run_id": f"{name}-1", "scenario": name, "status": "completed", "left_behind": []}
        saved.append(journal)
        return journal

    monkeypatch.setattr(cloud_drill, "run_drill", one)
    result = drills.drill("all")
    assert result.exit_code == 130, result.stdout + result.stderr
    report = result.json["result"]
    assert [j["run_id"] for j in report["runs"]] == ["pitr-1"] and report["not_run"] == ["failover"]
    assert result.json["error"]["message"] == "interrupted before drill failover"


def _keep_running(drills: Drills, kind: str) -> Callable[[], None]:
    """Cloud SQL keeps operations of KIND running past voke's operation_timeout (until the
    returned function is called)."""
    real = drills.fake.sql.get_operation
    before = list(drills.fake.rest.routes)

    def get(request: Any) -> Any:
        op = drills.fake.sql.operations.get(request["o"])
        if op is not None and op["doc"]["operationType"] == kind:
            return dict(op["doc"])
        return real(request)

    for i, (method, pattern, handler) in enumerate(drills.fake.rest.routes):
        if getattr(handler, "__name__", "") == "get_operation":
            drills.fake.rest.routes[i] = (method, pattern, get)
    return lambda: drills.fake.rest.routes.__setitem__(slice(None), before)


def test_a_clone_not_seen_to_finish_is_named_for_a_person_not_taken_for_gone(drills):
    # The clone's operation outlived operation_timeout: the clean-up's delete found nothing yet
    # (404) and the run exited 1 naming nothing, and Cloud SQL then finished a billed instance
    # only a later drill on this machine would delete.
    stop = _keep_running(drills, "CLONE")
    drills.configure(operation_timeout=3)
    result = drills.drill("pitr")
    journal = result.json["result"]
    clone = journal["details"]["scratch"][0]["name"]
    assert result.exit_code == 7, result.stdout
    assert journal["left_behind"] == [clone] and clone in result.json["error"]["hint"]
    stop()
    drills.fake.sql.finish_pending()  # Cloud SQL finishes it on its own
    assert clone in drills.scratch()
    assert drills.drill("pitr").exit_code == 0 and drills.scratch() == []  # the next run sweeps it


def _delete_entry(journal: dict[str, Any], name: str) -> dict[str, Any]:
    """The journal's clean-up entry deleting NAME, after checking it failed and says why."""
    [entry] = [c for c in journal["cleanup"] if c["name"] == f"delete the scratch instance {name}"]
    assert entry["ok"] is False and name in entry["detail"]["error"], entry
    return entry


@pytest.mark.parametrize("status", ["NOT_FOUND", "PERMISSION_DENIED"])
def test_a_scratch_instance_left_billed_is_a_clean_up_entry_with_the_runs_exit_code(drills, status):
    # Found by review: a delete refused (exit 4) or answered 404 while the instance is still
    # listed (exit 0) was recorded so, while the run exits 7 because the instance stays billed.
    drills.fake.rest.fail("DELETE", r"/instances/voke-db-drill-", status=status, times=1)
    result = drills.drill("pitr")
    assert result.exit_code == 7, result.stdout + result.stderr
    [left] = drills.scratch()
    assert _delete_entry(result.json["result"], left)["exit_code"] == 7


def test_a_delete_answered_404_for_an_instance_still_listed_is_not_a_clean_clean_up(drills):
    drills.fake.rest.fail("DELETE", r"/instances/voke-db-drill-", status="NOT_FOUND", times=1)
    result = drills.drill("pitr")
    left = drills.scratch()
    assert left and result.exit_code == 7, (result.exit_code, left)
    assert result.json["result"]["left_behind"] == left
    assert drills.drill("pitr").exit_code == 0 and drills.scratch() == []


def test_a_refusal_before_the_drills_recovery_aborts_it_rather_than_breach_it(drills):
    # A 403 on the recoverable window (before any scratch instance is asked for) read as a failed
    # drill with RTO, RPO and integrity "breached" and counted in the history as one.
    drills.fake.rest.fail("GET", r"/getLatestRecoveryTime$", status="PERMISSION_DENIED", times=1)
    result = drills.drill("pitr")
    journal = result.json["result"]
    assert journal["status"] == "aborted" and result.exit_code == 5, (result.exit_code, journal["breaches"])
    assert journal["breaches"] == [journal["error"]] and "PERMISSION_DENIED" in journal["error"]
    assert journal["rto_met"] is None and journal["integrity_ok"] is None and drills.scratch() == []
