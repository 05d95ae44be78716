"""`voke dr` status, check, backup, verify-backup and point-in-time restore against real
PostgreSQL. The module runs its own environment: it pauses replay, corrupts a backup and
deletes an archived WAL segment, none of which the shared environment may see. Tests run
in file order; the archive gap comes last because it cuts the recoverable window."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import shutil
import subprocess
import time
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest

from voketag_ops.adapters.local import dr, postgres
from voketag_ops.adapters.local.environment import LocalEnvironment
from voketag_ops.config import LocalSettings
from voketag_ops.errors import BackendError, RolledBackError
from voketag_ops.testing.local import frozen


@pytest.fixture(scope="module")
def home(tmp_path_factory):
    path = tmp_path_factory.mktemp("dr-pitr") / "home"
    env = LocalEnvironment(LocalSettings(home=path, archive_timeout=5))
    try:
        env.up()
        yield path
    finally:
        for restored in dr.list_restores(env):
            dr.discard_restore(env, restored["name"])
        # The platform's destroy: `dr backup` starts the local services with the environment.
        from voketag_ops.config import Settings
        from voketag_ops.workflows.env import LocalPlatform

        settings = Settings(local=LocalSettings(home=path, archive_timeout=5))
        LocalPlatform(settings).destroy(discard_chain=True)


@pytest.fixture
def env(home):
    return LocalEnvironment(LocalSettings(home=home, archive_timeout=5))


@pytest.fixture
def environ(home, make_environ):
    return make_environ(home, VOKE_LOCAL__ARCHIVE_TIMEOUT="5")


def utc(ts: datetime) -> str:
    return ts.astimezone(UTC).isoformat().replace("+00:00", "Z")


def test_status_reports_roles_lag_archive_backup_and_window(voke, environ):
    result = voke("dr", "status", "--json", environ=environ)
    assert result.exit_code == 0, result.stderr
    r = result.json["result"]
    assert r["leader"]["name"] == "primary" and r["leader"]["role"] == "primary"
    assert r["standby"]["role"] == "replica" and r["standby"]["streaming"] is True
    assert r["standby"]["heartbeat_replayed"] is True
    assert 0 <= r["standby"]["lag_seconds"] < 5 and r["standby"]["lag_bytes"] >= 0
    assert r["split_brain"] is False and r["writable_nodes"] == ["primary"]
    assert r["archive"]["failing"] is False
    assert r["newest_backup"]["label"].startswith("base-") and r["newest_backup"]["age_seconds"] >= 0
    window = r["recoverable_window"]
    assert window["earliest"] < window["latest"] and window["seconds"] > 0
    assert r["archive_gaps"]["missing"] == []
    assert r["targets"] == {"rto_seconds": 300.0, "rpo_seconds": 60.0, "pitr_retention_days": 7.0}
    human = voke("dr", "status", environ=environ)
    assert human.exit_code == 0 and "leader" in human.stdout and "window" in human.stdout


def test_a_leader_that_does_not_answer_is_shown_with_its_pid_and_why(voke, environ, env):
    with frozen(env.primary()) as pids:  # the network-outage runbook's frozen primary
        shown = voke("dr", "status", environ=environ)
    pid = pids[0]
    assert shown.exit_code == 0, shown.stderr
    leader = next(line for line in shown.stdout.splitlines() if line.startswith("leader"))
    assert f"pid {pid} does not answer: " in leader, leader


def test_a_leader_left_frozen_by_a_killed_network_drill_is_named_and_resumed_by_env_up(voke, environ, env):
    import signal
    import subprocess
    import sys

    # the network drill's fault, in a voke then killed outright (kill -9) before it resumes the leader
    freeze = (
        "import os, signal\n"
        "from voketag_ops.adapters.local import dr\n"
        "from voketag_ops.adapters.local.environment import LocalEnvironment\n"
        "from voketag_ops.config import LocalSettings\n"
        f"env = LocalEnvironment(LocalSettings(home={str(env.home)!r}, archive_timeout=5))\n"
        "dr.freeze_node(env, env.primary(), by='network-test')\n"
        "os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    killed = subprocess.run([sys.executable, "-c", freeze], env=environ, check=False)
    assert killed.returncode == -signal.SIGKILL
    pid = env.primary().pid()
    assert pid is not None and postgres.is_stopped(pid)
    try:
        check = voke("dr", "check", "--json", environ=environ)
        assert check.exit_code == 1 and "unfinished_operation" in check.json["result"]["failed"]
        op = check.json["result"]["status"]["unfinished_operation"]
        assert op["operation"] == "drill network" and op["resume"] == "voke env up"
        assert "primary is still frozen" in op["note"]
        up = voke("env", "up", "--json", environ=environ)
        assert up.exit_code == 0, up.stdout + up.stderr
        assert any(  # a warning, not only a progress line: that drill left no journal to say it
            "primary had been left frozen (SIGSTOP)" in w and "(network-test)" in w
            for w in up.json["result"]["warnings"]
        ), up.json
    finally:  # whatever happened, the next tests get a live leader
        postgres.signal_each(postgres.node_pids(env.primary()), signal.SIGCONT)
    assert not postgres.frozen_pids(env.primary())
    assert not list((env.home / "dr").glob(dr.FROZEN))
    assert (
        voke("dr", "check", "--json", environ=environ).json["result"]["status"]["unfinished_operation"]
        is None
    )


# What a primary whose disk is full answers a write with (SQLSTATE 53100), raised by a trigger:
# the server's own error path, with no file system to fill.
_DISK_FULL = 'could not extend file "base/5/16443": No space left on device'


@contextlib.contextmanager
def _disk_full_heartbeat(node):
    """The leader refusing the heartbeat write as a full disk does (the probe's first write)."""
    with node.connect(dr.DR_DB) as conn:
        dr.ensure_schema(conn)
        conn.execute(
            "create or replace function voke_dr.t_disk_full() returns trigger language plpgsql as $$ begin "
            f"raise exception using errcode = 'disk_full', message = '{_DISK_FULL}', "
            "hint = 'Check free disk space.'; end $$"
        )
        conn.execute(
            "create trigger t_disk_full before insert or update on voke_dr.heartbeat "
            "for each row execute function voke_dr.t_disk_full()"
        )
    try:
        yield
    finally:
        with node.connect(dr.DR_DB) as conn:
            conn.execute("drop function voke_dr.t_disk_full() cascade")


def test_a_leader_whose_disk_is_full_fails_the_check_as_not_writable(voke, environ, env):
    # It was exit 70, "internal error (DiskFull): could not extend file ...", just when the cron
    # DR check must alert.
    said = f"the database server is out of disk space ({_DISK_FULL})"
    with _disk_full_heartbeat(env.primary()):
        check = voke("dr", "check", "--json", environ=environ)
        status = voke("dr", "status", "--json", environ=environ)
        human = voke("dr", "status", environ=environ)
        env_status = voke("env", "status", "--json", environ=environ)
        env_human = voke("env", "status", environ=environ)
        with pytest.raises(BackendError, match="refused the heartbeat that seals the WAL archive"):
            dr.seal_archive(env, env.primary())
    assert check.exit_code == 1, check.stdout + check.stderr
    result = check.json["result"]
    assert result["failed"] == ["leader_writable", "replication_lag"]
    messages = {c["name"]: c["message"] for c in result["checks"]}
    assert messages["leader_writable"] == f"leader primary is not writable: {said}"
    assert "unknown: the leader refused the heartbeat write" in messages["replication_lag"]
    assert status.exit_code == 0, status.stderr
    assert status.json["result"]["leader"]["write_error"] == said
    assert status.json["result"]["standby"]["lag_seconds"] is None
    assert human.exit_code == 0 and f"not writable: {said}" in human.stdout
    # `env status` keeps the replica's own last report and says why it has no fresher one
    assert env_status.exit_code == 0 and env_human.exit_code == 0, env_status.stderr
    replica = env_status.json["result"]["replica"]
    assert replica["lag_error"] == f"the leader refused the lag heartbeat: {said}"
    assert replica["lag_seconds"] is not None
    assert f"lag: the leader refused the lag heartbeat: {said}" in " ".join(env_human.stdout.split())
    after = voke("dr", "check", "--json", environ=environ)
    assert after.exit_code == 0 and after.json["result"]["status"]["leader"]["write_error"] is None


def test_a_query_a_server_out_of_disk_space_refuses_says_so_not_that_it_closed_the_connection(env):
    # DiskFull is an OperationalError: `query_one` said "the primary on port N closed the
    # connection: could not extend file ...", as if the server had gone away.
    node = env.primary()
    with _disk_full_heartbeat(node), pytest.raises(BackendError) as refused:
        dr.query_one(  # (an insert: its trigger fires whether a heartbeat row was written yet or not)
            node,
            "insert into voke_dr.heartbeat (id, seq, written_at) values (1, 1, now()) "
            "on conflict (id) do update set seq = voke_dr.heartbeat.seq + 1 returning seq",
        )
    assert refused.value.message == (
        f"the primary on port {node.port} refused the query: "
        f"the database server is out of disk space ({_DISK_FULL})"
    )
    assert dr.query_one(node, "select 1") == (1,)  # the connection was never lost


def test_a_damaged_record_of_a_pitr_drills_rows_is_named_and_left_not_taken_for_one(tmp_path, caplog):
    env = LocalEnvironment(LocalSettings(home=tmp_path / "home"))
    directory = dr.dr_dir(env)
    good = {"run_id": "r1", "batch_id": 7, "dbname": "voke", "rows": 3, "file": "drill-rows-r1.copy"}
    (directory / "drill-rows-r1.json").write_text(json.dumps(good))
    (directory / "drill-rows-r2.json").write_text(json.dumps({"file": 5, "rows": "3"}))
    (directory / "drill-rows-r3.json").write_text(json.dumps(dict(good, file="../../elsewhere")))
    (directory / "drill-rows-r4.json").write_text("[]")
    with caplog.at_level("WARNING"):
        left = dr.drill_rows_left(env)
    assert [d["run_id"] for d in left] == ["r1"]  # the others would have been put back as rows of nothing
    for name in ("r2", "r3", "r4"):
        assert f"drill-rows-{name}.json is left as it is, unreadable" in caplog.text


def test_a_resume_leaves_alone_a_pid_reused_by_another_process(tmp_path):
    import signal
    import subprocess

    env = LocalEnvironment(LocalSettings(home=tmp_path / "home"))
    other = subprocess.Popen(["sleep", "60"])
    try:
        os.kill(other.pid, signal.SIGSTOP)
        for _ in range(200):  # the stop lands asynchronously: on a busy host, after kill() returns
            if postgres.is_stopped(other.pid):
                break
            time.sleep(0.05)
        start = dr._start_time(other.pid)
        assert start is not None
        record = dr.dr_dir(env) / "frozen-reused.json"
        record.write_text(json.dumps({"node": "reused", "pids": [{"pid": other.pid, "start": start + 1}]}))
        assert dr.thaw(env, "reused") == []  # recorded with another start time: not the frozen process
        assert postgres.is_stopped(other.pid) and not record.exists()
    finally:
        other.kill()
        other.wait()


def test_check_passes_and_each_breach_is_one_line(voke, environ):
    ok = voke("dr", "check", "--json", environ=environ)
    assert ok.exit_code == 0, ok.stdout
    assert ok.json["result"]["failed"] == []
    breach = voke("dr", "check", "--max-backup-age", "0s", "--min-pitr-window", "7d", environ=environ)
    assert breach.exit_code == 1
    failed = [line for line in breach.stdout.splitlines() if line.startswith("FAIL")]
    assert [line.split(":")[0] for line in failed] == ["FAIL backup_age", "FAIL pitr_window"]
    assert "over 0.0 s" in failed[0] and "shorter than 168.0 h" in failed[1]
    as_json = voke("dr", "check", "--max-backup-age", "0s", "--json", environ=environ)
    assert as_json.exit_code == 1
    assert as_json.json["ok"] is False and as_json.json["result"]["failed"] == ["backup_age"]
    assert as_json.json["error"]["message"].startswith("backup_age: newest backup")
    bad = voke("dr", "check", "--max-lag", "soon", environ=environ)
    assert bad.exit_code == 2 and "--max-lag" in bad.stderr


def test_paused_replay_raises_the_lag_alert_and_an_idle_primary_does_not(voke, environ, env):
    standby = env.standby()
    with standby.connect() as conn:
        conn.execute("select pg_wal_replay_pause()")
    try:
        with env.primary().connect() as conn:
            conn.execute("create table if not exists lagged (id int)")
            conn.execute("insert into lagged select generate_series(1, 1000)")
        time.sleep(1.5)
        result = voke("dr", "check", "--max-lag", "1s", "--json", environ=environ)
        assert result.exit_code == 1
        lag = next(c for c in result.json["result"]["checks"] if c["name"] == "replication_lag")
        assert lag["ok"] is False and lag["value"] >= 1.5
        assert result.json["result"]["status"]["standby"]["lag_bytes"] > 0
    finally:
        with standby.connect() as conn:
            conn.execute("select pg_wal_replay_resume()")
    # idle: nothing written for longer than --max-lag (the newest replayed commit alone would breach
    # it), yet the fresh heartbeat shows the replica is current
    time.sleep(1.5)
    for _ in range(10):  # a loaded CI machine may need a probe or two for replay to catch up
        idle = voke("dr", "check", "--max-lag", "1s", "--json", environ=environ)
        if idle.exit_code == 0:
            break
        time.sleep(0.5)
    assert idle.exit_code == 0, idle.stdout
    lag = next(c for c in idle.json["result"]["checks"] if c["name"] == "replication_lag")
    assert lag["value"] < 1


def test_env_status_shows_a_paused_standby_lagging_at_least_since_the_pause_as_dr_status_and_check_do(
    voke, environ, env
):
    # Found by review: with replay paused `env status` showed pg_stat_replication's replay_lag,
    # the standby's last report (31.1 s where the lag was 41 s), and the runbook sends an
    # operator with `FAIL replication_lag` to it. All three read the heartbeat probe now: the
    # standby has replayed nothing committed after the pause, so each lag, read at its own
    # moment, is at least the time since the pause up to the moment the command started.
    standby = env.standby()
    with standby.connect() as conn:
        conn.execute("select pg_wal_replay_pause()")
        while conn.execute("select pg_get_wal_replay_pause_state()").fetchone()[0] != "paused":  # type: ignore[index]
            time.sleep(0.05)
    paused_at = time.time()  # (wall clock: the lag is measured from commit times)
    try:
        with env.primary().connect() as conn:
            conn.execute("create table if not exists lagged_env (id int)")
            conn.execute("insert into lagged_env select generate_series(1, 1000)")
        time.sleep(2)  # a lag well past replay_lag's last report
        lags = {}
        for command in (("env", "status"), ("dr", "status"), ("dr", "check")):
            since_pause = time.time() - paused_at
            result = voke(*command, "--json", environ=environ).json["result"]
            node = result["replica"] if command[0] == "env" else result.get("status", result)["standby"]
            lags[command] = (node["lag_seconds"], since_pause)
        assert all(lag is not None and lag >= since for lag, since in lags.values()), lags
    finally:
        with standby.connect() as conn:
            conn.execute("select pg_wal_replay_resume()")


def test_backup_needs_yes_without_a_terminal_and_verifies(voke, environ, env):
    import subprocess

    import psycopg

    before = [b.label for b in env.backups()]
    refused = voke("dr", "backup", environ=environ)
    assert refused.exit_code == 2 and "--yes" in refused.stderr
    plan = voke("dr", "backup", "--dry-run", "--json", environ=environ)
    assert plan.exit_code == 0 and plan.json["result"]["dry_run"] is True
    assert [b.label for b in env.backups()] == before
    # What a `dr backup` killed with -9 leaves: pg_basebackup's WAL stream (a walsender named for
    # the dead voke) still filling its .partial. Status and check name it and what ends it.
    dead = subprocess.Popen(["true"])
    dead.wait()
    partial = env.backups_dir / ".base-20000101T000000000000Z.partial"
    (partial / "pg_wal").mkdir(parents=True)
    (partial / "pg_wal" / "segment").write_bytes(b"\0" * 4096)
    primary = env.primary()
    stream = psycopg.connect(host=str(primary.socket_dir), port=primary.port, user="postgres", dbname="postgres",
                             replication="database", application_name=f"voke-backup-{dead.pid}")  # fmt: skip
    with stream:
        walsender = stream.info.backend_pid
        status = voke("dr", "status", "--json", environ=environ).json["result"]["unfinished_operation"]
        assert (status["operation"], status["resume"]) == ("backup", "voke dr backup --yes")
        assert status["orphan_backup"] == {
            "partial": [str(partial)],
            "size_bytes": 4096,
            "walsender_pids": [walsender],
        }
        check = voke("dr", "check", environ=environ)
        assert (
            check.exit_code == 1
            and "FAIL unfinished_operation: an interrupted `voke dr backup`" in check.stdout
        )
        assert f"walsender pid {walsender}" in check.stdout
        assert "ok   replica_streaming" in check.stdout  # the backup's stream is not taken for the replica's
        result = voke("dr", "backup", "--yes", "--json", environ=environ)  # which sweeps it
        assert result.exit_code == 0, result.stderr
        with pytest.raises(psycopg.OperationalError):
            stream.execute("select 1")
    assert not partial.exists() and env.orphan_backup() is None
    label = result.json["result"]["backup"]["label"]
    assert label not in before and [b.label for b in env.backups()][-1] == label
    verified = voke("dr", "verify-backup", "--json", environ=environ)
    assert verified.exit_code == 0, verified.stdout
    r = verified.json["result"]
    assert r["backup"] == label and r["pg_verifybackup"]["ok"] and r["archive"]["missing"] == []
    history = voke("dr", "history", "--json", environ=environ).json["result"]["events"]
    assert history[-2]["action"] == "dr.backup" and history[-2]["result"] == "success"
    assert history[-2]["details"]["label"] == label
    assert history[-1]["action"] == "dr.prune" and history[-1]["result"] == "success"  # its own event


def test_a_corrupt_archived_segment_fails_verify_backup_naming_it(voke, environ, env):
    # The names are all there; only pg_waldump reading the records finds what a restore stops at.
    with env.primary().connect() as conn:
        conn.execute("create table if not exists wal_filler (id int)")
        conn.execute("insert into wal_filler select generate_series(1, 1000)")
        name = conn.execute("select pg_walfile_name(pg_current_wal_lsn()), pg_switch_wal()").fetchone()[0]
    segment = env.archive_dir / name
    dr.wait_until(segment.exists, "archiving", timeout=30)
    original = segment.read_bytes()
    flipped = bytearray(original)
    flipped[200] ^= 0xFF
    segment.write_bytes(bytes(flipped))
    try:
        result = voke("dr", "verify-backup", "--json", environ=environ)
    finally:
        segment.write_bytes(original)
    assert result.exit_code == 1, result.stdout
    archive = result.json["result"]["archive"]
    assert archive["missing"] == [] and archive["unreadable"]["segment"] == name
    # (what pg_waldump says depends on the field the flipped byte lands in: the record's CRC or,
    # when it is a record header's back link, the link)
    error = archive["unreadable"]["error"]
    assert "checksum" in error or "incorrect prev-link" in error, error
    assert result.json["error"]["message"].startswith(f"WAL archive: {name} is unreadable: ")
    assert voke("dr", "verify-backup", environ=environ).exit_code == 0


def _write_rows(env, count: int, pause: float) -> dict[int, datetime]:
    """Insert rows one transaction each; id -> commit time as PostgreSQL recorded it."""
    with env.primary().connect() as conn:
        conn.execute("create table if not exists orders (id int primary key, note text)")
        start = conn.execute("select coalesce(max(id), 0) from orders").fetchone()[0]
        for i in range(start + 1, start + count + 1):
            conn.execute("insert into orders values (%s, 'order')", (i,))
            time.sleep(pause)
        rows = conn.execute("select id, pg_xact_commit_timestamp(xmin) from orders").fetchall()
    return dict(rows)


def test_pitr_restores_exactly_the_commits_before_the_target(voke, environ, env):
    commits = _write_rows(env, 30, 0.05)
    ids = sorted(commits)
    target = commits[ids[15]] + (commits[ids[16]] - commits[ids[15]]) / 2
    with env.primary().connect() as conn:
        conn.execute("delete from orders")  # the corruption
    killed = dr.restores_dir(env) / ".drill-dead-000000.partial"  # a copy a kill -9 cut short
    (killed / "base").mkdir(parents=True)
    result = voke(
        "dr", "restore", "--to", utc(target), "--name", "pitr-a", "--yes", "--json", environ=environ
    )
    assert result.exit_code == 0, result.stderr
    assert not killed.exists()  # swept: restores run under the DR lock, any scratch copy is dead
    r = result.json["result"]
    assert r["name"] == "pitr-a" and r["writable"] is True
    assert r["conninfo"].endswith("dbname=voketag")  # the runbook's copy-back reads the platform's data
    stop = r["stop_point"]
    assert stop["stopped"].startswith("before commit")
    assert (
        0 <= (datetime.fromisoformat(stop["stop_time"].replace("Z", "+00:00")) - target).total_seconds() < 1
    )
    assert stop["new_timeline"] >= 2 and stop["wal_files"] >= 1
    _, node = dr.get_restore(env, "pitr-a")
    with node.connect() as conn:
        restored = {row[0] for row in conn.execute("select id from orders")}
        assert conn.execute("select pg_is_in_recovery()").fetchone() == (False,)
    assert restored == {i for i, ts in commits.items() if ts <= target}
    assert ids[15] in restored and ids[16] not in restored
    listed = voke("dr", "restores", "--json", environ=environ).json["result"]["restores"]
    assert [(x["name"], x["running"]) for x in listed] == [("pitr-a", True)]


def test_the_same_instant_with_two_offsets_restores_the_same_rows(voke, environ, env):
    commits = _write_rows(env, 10, 0.05)
    newest = sorted(commits.values())[-5]
    plus2 = newest.astimezone(timezone(timedelta(hours=2)))
    assert plus2.isoformat().endswith("+02:00")
    a = voke(
        "dr", "restore", "--to", plus2.isoformat(), "--name", "tz-plus2", "--yes", "--json", environ=environ
    )
    b = voke("dr", "restore", "--to", utc(newest), "--name", "tz-utc", "--yes", "--json", environ=environ)
    assert a.exit_code == 0 and b.exit_code == 0, a.stderr + b.stderr
    assert a.json["result"]["target"] == b.json["result"]["target"]
    rows = []
    for name in ("tz-plus2", "tz-utc"):
        _, node = dr.get_restore(env, name)
        with node.connect() as conn:
            rows.append(conn.execute("select id from orders order by id").fetchall())
    assert rows[0] == rows[1] and rows[0]
    for name in ("tz-plus2", "tz-utc", "pitr-a"):
        assert voke("dr", "discard", name, "--yes", environ=environ).exit_code == 0
    assert voke("dr", "restores", "--json", environ=environ).json["result"]["restores"] == []


def test_targets_outside_the_window_are_refused_before_anything_is_copied(
    voke, environ, env, home, make_environ
):
    full = make_environ(home, VOKE_LOCAL__ARCHIVE_TIMEOUT="5", VOKE_LOCAL__MIN_FREE_DISK_MB="999999999")
    no_room = voke("dr", "restore", "--to", "now", "--name", "refused", "--yes", environ=full)
    assert no_room.exit_code == 4, no_room.stderr  # as `env up` and `dr backup` on a full disk
    assert "not enough disk space" in no_room.stderr and "a copy of base backup base-" in no_room.stderr
    # A copy that fails anyway (a disk filled since): a clean error, nothing left behind.
    window = dr.recoverable_window(env, dr.leader_wal(env, env.primary()))
    gone = dataclasses.replace(env.backups()[-1], path=str(env.home / "no-such-backup"))
    plan = dr.RestorePlan(
        target=datetime.now(UTC), name="refused", backup=gone, window=window, sealed_at=None
    )
    with pytest.raises(
        BackendError, match=r"copying base backup .* failed: .*; the partial copy was removed"
    ):
        dr.restore(env, plan)
    assert not [p for p in dr.restores_dir(env).iterdir() if "refused" in p.name]
    cases = [
        (utc(datetime.now(UTC) + timedelta(hours=1)), 5, "in the future"),
        ("2001-01-01T00:00:00Z", 5, "before the recoverable window"),
        ("2024-06-01T12:00:00", 2, "no UTC offset"),
        ("yesterday-ish", 2, "not a point in time"),
    ]
    for to, code, message in cases:
        result = voke("dr", "restore", "--to", to, "--name", "refused", "--yes", environ=environ)
        assert result.exit_code == code, (to, result.stderr)
        assert message in result.stderr
    assert not (env.pg_dir / "restores" / "refused").exists()


def test_dry_run_restore_names_the_backup_and_changes_nothing(voke, environ, env):
    target = utc(datetime.now(UTC) - timedelta(seconds=2))
    result = voke("dr", "restore", "--to", target, "--dry-run", "--json", environ=environ)
    assert result.exit_code == 0, result.stderr
    assert result.json["result"]["backup"].startswith("base-") and result.json["result"]["plan"]
    assert dr.list_restores(env) == []


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root: the servers run as another user only then")
def test_a_link_the_server_user_planted_in_the_newest_backup_is_not_followed_by_a_restore(
    voke, environ, env, tmp_path
):
    # The server user owns pg/backups; `cp -a` copied its recovery.signal link into the restore,
    # and root opened it (O_TRUNC, fchmod 0600) and chowned it: the root file it named became
    # that user's, empty. The link is replaced by the signal file, the root file left alone.
    victim = tmp_path / "victim"
    victim.write_text("root-owned victim\n")
    victim.chmod(0o644)
    server = env._runner(env.require_state()).user
    planted = Path(env.backups()[-1].path) / "recovery.signal"
    planted.symlink_to(victim)
    os.chown(planted, server.uid, server.gid, follow_symlinks=False)
    try:
        result = voke("dr", "restore", "--to", "now", "--name", "planted", "--yes", "--json", environ=environ)
        assert result.exit_code == 0, result.stderr
        found = victim.stat()
        assert (victim.read_text(), found.st_mode & 0o777, found.st_uid) == ("root-owned victim\n", 0o644, 0)
        signal = dr.get_restore(env, "planted")[1].data_dir / "recovery.signal"
        assert not signal.is_symlink()
        assert voke("dr", "discard", "planted", "--yes", environ=environ).exit_code == 0
    finally:
        planted.unlink()


def test_verify_compares_instances_and_names_exactly_the_differing_keys(voke, environ, env):
    with env.primary().connect() as conn:
        conn.execute("create table inventory (id bigint primary key, sku text, qty int)")
        conn.execute(
            "insert into inventory select g, 'SKU-' || (g % 97), g % 13 from generate_series(1, 20000) g"
        )
        conn.execute("create table lots (factory text, lot int, note text, primary key (factory, lot))")
        conn.execute(
            "insert into lots select 'FAC-' || lpad((g % 20)::text, 2, '0'), g / 20, md5(g::text) "
            "from generate_series(0, 4999) g"
        )
        # keys psycopg reads as UUID, Decimal and bytes
        conn.execute("create table odd_keys (u uuid, n numeric, b bytea, v int, primary key (u, n, b))")
        conn.execute(
            "insert into odd_keys select md5(g::text)::uuid, g / 10.0, decode(md5(g::text), 'hex'), g "
            "from generate_series(1, 3000) g"
        )
        # a column named like the row alias a hash query could use, and inet/time/interval keys
        conn.execute("create table t_keys (t time, ip inet, span interval, v int, primary key (t, ip, span))")
        conn.execute(
            "insert into t_keys select make_time(g / 3600, g / 60 % 60, g % 60), ('10.0.' || g / 250 || '.'"
            " || g % 250)::inet, make_interval(days => g), g from generate_series(1, 2000) g"
        )
        conn.execute("create table dropped_later (id int primary key)")
    restored = voke("dr", "restore", "--to", "now", "--name", "verify-copy", "--yes", environ=environ)
    assert restored.exit_code == 0, restored.stderr
    args = ["dr", "verify", "--source", "primary", "--target", "verify-copy", "--database", "postgres"]
    tables = ["--table", "inventory", "--table", "lots"]
    same = voke(*args, *tables, "--json", environ=environ)
    assert same.exit_code == 0, same.stdout
    assert [(t["table"], t["equal"], t["source_rows"]) for t in same.json["result"]["tables"]] == [
        ("public.inventory", True, 20000),
        ("public.lots", True, 5000),
    ]
    with env.primary().connect() as conn:  # dropped on the primary after the restore point
        conn.execute("drop table dropped_later")
    extra = voke(*args, "--table", "dropped_later", "--json", environ=environ)
    assert extra.exit_code == 1, extra.stdout
    assert extra.json["result"]["tables"] == [
        {"table": "public.dropped_later", "equal": False, "extra_on_target": True, "seconds": 0.0}
    ]
    assert extra.json["error"]["message"] == "public.dropped_later: extra on the target (not on the source)"
    kept = voke(*args, "--table", "dropped_later", "--only-source-keys", environ=environ)
    assert kept.exit_code == 0 and "ok   public.dropped_later: on the target only" in kept.stdout, kept.stdout
    every = voke(*args, "--json", environ=environ)  # no --table: both sides' tables are listed
    assert every.exit_code == 1 and {"table": "public.dropped_later", "equal": False, "extra_on_target": True,
                                     "seconds": 0.0} in every.json["result"]["tables"]  # fmt: skip
    _, copy = dr.get_restore(env, "verify-copy")
    with copy.connect() as conn:
        conn.execute("update inventory set qty = qty + 1 where id = 12345")
        conn.execute("delete from inventory where id = 777")
        conn.execute("insert into inventory values (99999, 'SKU-X', 1)")
        conn.execute("update lots set note = 'tampered' where factory = 'FAC-02' and lot = 17")
        conn.execute("update odd_keys set v = -1 where v = 42")
        conn.execute("update t_keys set v = -1 where v = 42")
    different = voke(*args, *tables, "--json", environ=environ)
    assert different.exit_code == 1
    inventory, lots = different.json["result"]["tables"]
    assert (inventory["missing_in_target"], inventory["extra_in_target"], inventory["changed"]) == (
        [[777]],
        [[99999]],
        [[12345]],
    )
    assert inventory["ranges_differing"] >= 1 and inventory["depth"] >= 1
    assert lots["changed"] == [["FAC-02", 17]] and lots["differences"] == 1
    assert "public.inventory: 3 difference(s)" in different.json["error"]["message"]
    human = voke(*args, "--table", "lots", environ=environ)
    assert human.exit_code == 1 and "changed: (FAC-02, 17)" in human.stdout
    streamed = voke(
        "dr",
        "verify",
        "--source",
        "leader",
        "--target",
        "standby",
        "--database",
        "postgres",
        *tables,
        environ=environ,
    )
    assert streamed.exit_code == 0, streamed.stdout
    unknown = voke("dr", "verify", "--source", "primary", "--target", "nope", environ=environ)
    assert unknown.exit_code == 2
    odd = voke(*args, "--table", "odd_keys", "--json", environ=environ)
    assert odd.exit_code == 1, odd.stdout
    key = "a1d0c6e8-3f02-7327-d846-1063f4ac58a6"  # md5('42') as a uuid
    assert odd.json["result"]["tables"][0]["changed"] == [
        [key, "4.2000000000000000", "\\xa1d0c6e83f027327d8461063f4ac58a6"]
    ]
    shadowed = voke(*args, "--table", "t_keys", "--json", environ=environ)
    assert shadowed.exit_code == 1, shadowed.stdout  # every column hashed, not the one named t
    assert shadowed.json["result"]["tables"][0]["changed"] == [["00:00:42", "10.0.0.42", "42 days, 0:00:00"]]
    one_node = voke("dr", "verify", "--source", "leader", "--target", "primary", environ=environ)
    assert one_node.exit_code == 2 and "the same instance (primary)" in one_node.stderr
    # the target's session cut mid-compare (a restart, a crash): a backend error naming it, not exit 70
    from voketag_ops.adapters.local import tablediff

    opened = tablediff.snapshot

    @contextlib.contextmanager
    def cut(node, dbname):
        with opened(node, dbname) as (conn, lsn):
            if node.name.endswith("verify-copy"):
                with node.connect() as other:
                    other.execute("select pg_terminate_backend(%s)", (conn.info.backend_pid,))
            yield conn, lsn

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(tablediff, "snapshot", cut)
        lost = voke(*args, "--json", environ=environ)
    assert lost.exit_code == 4, lost.stdout
    assert (
        lost.json["error"]["message"].startswith("the target verify-copy (restore verify-copy on port ")
        and "closed the connection" in lost.stdout
    )
    reserved = voke("dr", "restore", "--to", "now", "--name", "standby", "--yes", environ=environ)
    assert reserved.exit_code == 2 and "names a node" in reserved.stderr
    assert voke("dr", "discard", "verify-copy", "--yes", environ=environ).exit_code == 0


def test_verify_of_a_stopped_standby_is_a_backend_error_naming_it_not_a_rebuild(voke, environ, env):
    standby = env.standby()
    standby.stop(mode="fast")  # as `env down` leaves it: nothing to rebuild, only to start
    try:
        shown = voke("dr", "verify", "--source", "primary", "--target", "replica", "--json", environ=environ)
    finally:
        env.up()
    assert shown.exit_code == 4, shown.stdout
    error = shown.json["error"]
    assert error["message"] == f"standby {standby.name} not running; it cannot be compared"
    assert "voke env up" in error["hint"] and "failback" not in error["hint"]
    with frozen(standby) as pids:  # `env up` leaves it as it is, so the hint is what resumes it
        stuck = voke("dr", "verify", "--source", "standby", "--target", "leader", "--json", environ=environ)
    assert stuck.exit_code == 4, stuck.stdout
    assert f"(pid {pids[0]}) does not answer" in stuck.json["error"]["message"]
    assert f"kill -CONT {' '.join(map(str, pids))}`" in stuck.json["error"]["hint"]


def _runbook_block(runbook: str, marker: str) -> str:
    """The fenced bash block of RUNBOOK holding MARKER, as an operator copies it."""
    text = (Path(__file__).resolve().parents[2] / "runbooks" / f"{runbook}.md").read_text()
    (block,) = [b.split("\n", 1)[1] for b in text.split("```bash")[1:] if marker in b.split("```", 1)[0]]
    return block.split("```", 1)[0]


def test_the_corruption_runbooks_repair_of_a_live_leader_verifies_equal(voke, environ, env, tmp_path):
    # The runbook end to end on a leader that keeps taking writes: rows deleted by mistake at T,
    # a batch loaded after T, a restore to T, step 4's copy-back as written, then its Verify step.
    def batch(name: str, count: int) -> Path:
        path = tmp_path / f"{name}.csv"
        lines = [f"{name.upper()}-{i:04d},SKU-{name}-{i},Boot,F1,2024-01-01T00:00:00Z" for i in range(count)]
        path.write_text("tag_id,sku,product_name,factory_id,manufactured_at\n" + "\n".join(lines) + "\n")
        return path

    assert voke("ingest", "load", str(batch("rb1", 60)), environ=environ).exit_code == 0
    with env.primary().connect("voketag") as conn:
        (t,) = conn.execute("select clock_timestamp()").fetchone()
        time.sleep(0.05)
        conn.execute("delete from ingest.tags where tag_id in (select tag_id from ingest.tags "
                     "where tag_id like 'RB1-%' order by tag_id limit 10)")  # fmt: skip
    assert voke("ingest", "load", str(batch("rb2", 25)), environ=environ).exit_code == 0  # writes after T
    restored = voke(
        "dr", "restore", "--to", utc(t), "--name", "before-delete", "--yes", "--json", environ=environ
    )
    assert restored.exit_code == 0, restored.stderr
    step3 = ["dr", "verify", "--source", "before-delete", "--target", "leader", "--database", "voketag",
             "--table", "ingest.tags"]  # fmt: skip
    lost = voke(*step3, "--only-source-keys", "--json", environ=environ)
    assert lost.exit_code == 1, lost.stdout
    (tags,) = lost.json["result"]["tables"]
    assert [k for (k,) in tags["missing_in_target"]] == [f"RB1-{i:04d}" for i in range(10)]
    assert (tags["extra_in_target"], tags["changed"], tags["extra_in_target_ignored"]) == ([], [], 25)
    assert lost.json["result"]["only_source_keys"] is True
    # step 4, copied from the runbook as written, with the two conninfos filled in
    leader = voke("env", "status", "--json", environ=environ).json["result"]["primary"]["conninfo"]
    repair = _runbook_block("database-corruption", "RESTORED_CONNINFO")
    repair = repair.replace("RESTORED_CONNINFO", restored.json["result"]["conninfo"])
    repair = repair.replace("LEADER_CONNINFO", leader)
    psql = postgres.PgBinaries.resolve(None).path("psql")
    done = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", repair],
        cwd=tmp_path,
        env={**os.environ, "PATH": f"{psql.parent}:{os.environ['PATH']}"},
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    # the Verify step as written: equal, the writes since T counted, not differences
    (verify_line,) = [
        line
        for line in _runbook_block("database-corruption", "voke dr check").splitlines()
        if "dr verify" in line
    ]
    verify_args = verify_line.split()[1:]
    assert "--only-source-keys" in verify_args
    repaired = voke(*verify_args, "--json", environ=environ)
    assert repaired.exit_code == 0, repaired.stdout
    (tags,) = repaired.json["result"]["tables"]
    assert tags["equal"] and tags["differences"] == 0 and tags["extra_in_target_ignored"] == 25
    human = voke(*verify_args, environ=environ)
    assert human.exit_code == 0 and "25 row(s) on the target only, not differences" in human.stdout
    assert human.stdout.rstrip().splitlines()[-1].startswith("equal")
    # without the option the same repaired leader is a difference: what the runbook warns of
    every = voke(*step3, "--json", environ=environ)
    assert every.exit_code == 1 and len(every.json["result"]["tables"][0]["extra_in_target"]) == 25
    assert voke("dr", "discard", "before-delete", "--yes", environ=environ).exit_code == 0


def test_verify_answers_no_naming_the_side_whose_page_is_corrupt_and_compares_the_other_tables(
    voke, environ, env
):
    # The page is broken in a restored copy only (this module's own environment; the copy is
    # stopped while its file is written, so no cached page hides the damage, and discarded after).
    with env.primary().connect() as conn:
        conn.execute("create table corrupt_me (id int primary key, note text)")
        conn.execute("insert into corrupt_me select g, repeat('x', 200) from generate_series(1, 2000) g")
        conn.execute("create table still_readable (id int primary key)")
        conn.execute("insert into still_readable select generate_series(1, 100)")
    try:
        restored = voke("dr", "restore", "--to", "now", "--name", "corrupt-copy", "--yes", environ=environ)
        assert restored.exit_code == 0, restored.stderr
        _, copy = dr.get_restore(env, "corrupt-copy")
        with copy.connect() as conn:
            row = conn.execute("select pg_relation_filepath('corrupt_me')").fetchone()
        copy.stop(mode="fast")
        with open(copy.data_dir / row[0], "r+b") as relation:
            relation.seek(3 * 8192)
            relation.write(b"\xff" * 256)
        copy.start()
        args = [
            "dr",
            "verify",
            "--database",
            "postgres",
            "--table",
            "corrupt_me",
            "--table",
            "still_readable",
        ]
        for source, target, side in (
            ("primary", "corrupt-copy", "target"),
            ("corrupt-copy", "primary", "source"),
        ):
            result = voke(*args, "--source", source, "--target", target, "--json", environ=environ)
            assert result.exit_code == 1, result.stdout
            broken, readable = result.json["result"]["tables"]
            assert broken["equal"] is False and readable["equal"] is True, result.stdout
            found = broken["unreadable"]
            assert (found["side"], found["name"], found["node"], found["sqlstate"]) == (
                side,
                "corrupt-copy",
                "restore corrupt-copy",
                "XX001",
            )
            assert "invalid page in block 3 of relation" in found["error"]
            message = result.json["error"]["message"]
            assert message.startswith(
                f"public.corrupt_me: the {side} corrupt-copy (restore corrupt-copy on port {copy.port}) "
                "could not be read: invalid page in block 3 of relation"
            ), message
            assert result.json["error"]["exit_code"] == 1 and "\n" not in message
        human = voke(*args, "--source", "primary", "--target", "corrupt-copy", environ=environ)
        assert human.exit_code == 1 and "Traceback" not in human.stderr
        assert "DIFF public.corrupt_me: the target corrupt-copy" in human.stdout
        assert "ok   public.still_readable" in human.stdout
    finally:
        voke("dr", "discard", "corrupt-copy", "--yes", environ=environ)
        with env.primary().connect() as conn:
            conn.execute("drop table if exists corrupt_me, still_readable")


def test_reading_a_side_translates_corruption_and_other_server_errors_naming_the_side(env):
    from voketag_ops.adapters.local.tablediff import Unreadable, reading

    label = "target leader (primary on port 1)"
    with env.primary().connect() as conn:
        conn.execute("create or replace function pg_temp.broken(code text) returns int language plpgsql as "
                     "$$ begin raise exception 'invalid page in block 3' using errcode = code; end $$")  # fmt: skip
        for code in ("XX001", "XX002"):
            with pytest.raises(Unreadable) as raised, reading(conn, "target", label):
                conn.execute("select pg_temp.broken(%s)", (code,))
            assert (raised.value.side, raised.value.sqlstate) == ("target", code)
            assert str(raised.value) == f"the {label} could not be read: invalid page in block 3"
        with pytest.raises(BackendError) as other, reading(conn, "target", label):
            conn.execute("select 1 / 0")
        assert (
            other.value.exit_code == 4
            and other.value.message == f"could not read the {label}: division by zero"
        )


def test_recovery_that_ends_before_its_target_fails_loudly_and_removes_the_instance(env):
    # voke's window check refuses this target; skip it to see what PostgreSQL does.
    lw = dr.leader_wal(env, env.primary())
    window = dr.recoverable_window(env, lw)
    target = window.latest + timedelta(hours=1)
    plan = dr.RestorePlan(
        target=target, name="beyond", backup=env.backups()[-1], window=window, sealed_at=None
    )
    with pytest.raises(RolledBackError, match="ended recovery before the target"):
        dr.restore(env, plan, timeout=120)
    assert not (env.pg_dir / "restores" / "beyond").exists()
    assert dr.list_restores(env) == []


@pytest.mark.parametrize("name", ["../../secrets/db-app", "../../../victim", "ok\n", "/etc"])
def test_a_restore_name_that_is_a_path_is_refused_before_anything_is_read_or_removed(
    voke, environ, env, name
):
    victim = env.home.parent / "victim"
    victim.mkdir(exist_ok=True)
    (victim / "data.txt").write_text("important")
    (env.home.parent / "victim.json").write_text("{}")
    files = {p for p in env.home.rglob("*") if p.is_file() and "pg" not in p.parts}
    for args in (("dr", "discard", name, "--yes"), ("dr", "verify", "--source", "primary", "--target", name)):
        refused = voke(*args, environ=environ)
        assert refused.exit_code == 2 and "must match [a-z0-9]" in refused.stderr, (args, refused.stderr)
    assert (victim / "data.txt").read_text() == "important" and (env.home.parent / "victim.json").exists()
    assert files <= {p for p in env.home.rglob("*") if p.is_file()}  # the secret store, state.json...


def test_env_can_stop_restored_instances_and_discard_removes_stopped_ones(voke, environ, env, monkeypatch):
    assert voke("dr", "restore", "--to", "now", "--name", "leftover", "--yes", environ=environ).exit_code == 0
    # recovery asked for the segments past the archive's end: no shell noise for each in its log
    recovered = (env.logs_dir / "restore-leftover.log").read_text(errors="replace")
    assert "restored log file" in recovered
    assert "Illegal number" not in recovered and "cannot open" not in recovered, recovered[-2000:]
    assert env.stop_restores() == ["restore leftover"]  # as `env down` does
    listed = voke("dr", "restores", "--json", environ=environ).json["result"]["restores"]
    assert [(r["name"], r["running"], r["state"]) for r in listed] == [("leftover", False, "stopped")]
    import socket

    port = next(r["port"] for r in listed)
    with socket.socket() as blocker:  # its port taken meanwhile: said, with what to do; up goes on
        blocker.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # (its connections may be in TIME_WAIT)
        blocker.bind(("127.0.0.1", int(port)))
        blocker.listen()
        blocked = voke("env", "up", "--json", environ=environ)
        assert blocked.exit_code == 0, blocked.stdout
        assert blocked.json["result"]["not_started"] == [
            f"restore leftover: port {port} is in use by another process; `voke env up` tries again, "
            "`voke env move-port leftover --yes` moves it to a free port, `voke dr discard leftover --yes` removes it"
        ]
        moved = voke("env", "move-port", "leftover", "--yes", "--json", environ=environ)  # its data kept
        assert moved.exit_code == 0, moved.stdout + moved.stderr
        assert moved.json["result"]["restored_instance"] and moved.json["result"]["port"] != int(port)
        assert moved.json["result"]["services"] is None
        up = voke("env", "up", "--json", environ=environ)  # and `env up` starts it again, to be read
    assert up.exit_code == 0 and "restore leftover" in up.json["result"]["started"], up.stdout
    listed = voke("dr", "restores", "--json", environ=environ).json["result"]["restores"]
    assert [(r["name"], r["running"], r["state"]) for r in listed] == [("leftover", True, "running")]
    _, node = dr.get_restore(env, "leftover")
    assert dr.query_one(node, "select 1") == (1,)  # it answers: `dr verify` can read it again

    def cut_short(path, **_kwargs):  # a kill -9 mid-delete: part of the data directory is gone
        real_rmtree(path / "global")
        raise RuntimeError("killed")

    real_rmtree = shutil.rmtree
    monkeypatch.setattr(dr.shutil, "rmtree", cut_short)
    with pytest.raises(RuntimeError):
        dr.discard_restore(env, "leftover")
    monkeypatch.undo()
    listed = voke("dr", "restores", environ=environ)
    assert "discarding: its discard was cut short; `voke dr discard leftover --yes` removes" in listed.stdout
    up = voke("env", "up", "--json", environ=environ)  # does not try to start what is half gone
    assert up.exit_code == 0 and up.json["result"]["not_started"] == [], up.stdout
    assert voke("dr", "discard", "leftover", "--yes", environ=environ).exit_code == 0
    assert not (env.pg_dir / "restores" / "leftover").exists()
    assert not (env.logs_dir / "restore-leftover.log").exists()  # (one per pitr drill, kept for ever)


def test_a_restore_whose_voke_died_mid_recovery_is_listed_as_interrupted(voke, environ, env):
    assert voke("dr", "restore", "--to", "now", "--name", "cut", "--yes", environ=environ).exit_code == 0
    record = env.pg_dir / "restores" / "cut.json"
    doc = json.loads(record.read_text())
    record.write_text(json.dumps(dict(doc, state="recovering")))  # as a kill -9 mid-recovery leaves it
    with dr.dr_lock(env, "dr restore"):  # a restore under way
        assert [r["state"] for r in dr.list_restores(env)] == ["recovering"]
    record.write_text(json.dumps(dict(doc, state="recovering", pid=1)))  # another voke's, killed
    with dr.dr_lock(env, "dr restore"):  # while some other restore runs
        assert [r["state"] for r in dr.list_restores(env)] == ["interrupted"]
    listed = voke("dr", "restores", environ=environ)
    assert listed.exit_code == 0
    assert "interrupted: the voke restoring it stopped before it was verified; " in listed.stdout
    assert "`voke dr discard cut --yes` removes it" in listed.stdout
    check = voke("dr", "check", environ=environ)  # cron sees it: a scratch instance left running
    assert (
        check.exit_code == 1
        and "FAIL unfinished_operation: an interrupted `voke dr restore` must be " in check.stdout
    )
    assert "voke dr discard cut --yes" in check.stdout
    assert voke("dr", "discard", "cut", "--yes", environ=environ).exit_code == 0
    assert dr.list_restores(env) == []

    # killed mid-copy: only its record and the scratch copy exist
    (env.pg_dir / "restores" / ".copied.partial" / "base").mkdir(parents=True)
    (env.pg_dir / "restores" / "copied.json").write_text(
        json.dumps(dict(doc, name="copied", state="copying", pid=1))
    )
    assert [(r["name"], r["state"]) for r in dr.list_restores(env)] == [("copied", "interrupted")]
    assert voke("dr", "discard", "copied", "--yes", environ=environ).exit_code == 0
    assert not list((env.pg_dir / "restores").iterdir())


def test_a_discard_run_again_is_a_no_op_and_a_name_never_restored_stays_a_usage_error(voke, environ, env):
    # A cron job or runbook step run again after its discard went through was exit 2.
    assert voke("dr", "restore", "--to", "now", "--name", "twice", "--yes", environ=environ).exit_code == 0
    first = voke("dr", "discard", "twice", "--yes", "--json", environ=environ)
    assert first.exit_code == 0 and first.json["result"]["changed"] is True, first.stdout
    again = voke("dr", "discard", "twice", "--yes", "--json", environ=environ)
    assert again.exit_code == 0, again.stdout + again.stderr
    assert again.json["result"] == {
        "name": "twice", "stopped": False, "removed": None, "changed": False, "dry_run": False,
    }  # fmt: skip
    human = voke("dr", "discard", "twice", "--yes", environ=environ)
    assert human.exit_code == 0 and "twice is gone already (discarded before): nothing to do" in human.stdout
    plan = voke("dr", "discard", "twice", "--dry-run", "--json", environ=environ)
    assert plan.json["result"]["plan"] == ["nothing: the restored instance twice is gone already"]
    events = voke("audit", "show", "--event-type", "dr.discard", "--json", environ=environ)
    mine = [e["result"] for e in events.json["result"]["entries"] if e["target"] == "twice"]
    assert mine == ["success", "unchanged", "unchanged"]
    # a restore refused before it made anything names no instance: still no such name
    future = voke(
        "dr", "restore", "--to", "2999-01-01T00:00:00Z", "--name", "never-made", "--yes", environ=environ
    )
    assert future.exit_code == 5, future.stderr
    for name, message in (
        ("never-made", "no restored instance named 'never-made'"),
        ("primary", "names a node"),
    ):
        refused = voke("dr", "discard", name, "--yes", environ=environ)
        assert refused.exit_code == 2 and message in refused.stderr, (name, refused.stderr)


def _processes_naming(text: str) -> list[int]:
    """Pids whose command line mentions TEXT."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/cmdline", "rb") as fh:
                    if text.encode() in fh.read():
                        found.append(int(entry))
            except OSError:
                continue
    return found


@pytest.mark.parametrize("stage", ["copying", "recovering"])
def test_a_restore_killed_for_real_is_listed_as_interrupted_and_discarded(voke, environ, env, stage):
    import signal
    import subprocess
    import sys

    name = f"killed-{stage}"
    record = dr.restores_dir(env) / f"{name}.json"
    proc = subprocess.Popen(
        [sys.executable, "-m", "voketag_ops", "dr", "restore", "--to", "now", "--name", name, "--yes"],
        env=environ, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    seen = None
    try:
        while proc.poll() is None and seen != stage:
            try:
                seen = json.loads(record.read_text()).get("state")
            except (FileNotFoundError, ValueError):
                pass
            time.sleep(0.001)  # (leaves the CPU to the restore being watched)
        os.kill(proc.pid, signal.SIGKILL)  # kill -9 the moment it is there
    finally:
        proc.wait()
    assert seen == stage, f"the restore ended ({proc.returncode}) before it was seen {stage}"
    from voketag_ops.locks import held_by

    deadline = time.monotonic() + 10  # a child caught between fork and exec shares the lock until
    while held_by(env.home / "dr" / "dr.lock") is not None and time.monotonic() < deadline:  # it dies too
        time.sleep(0.01)
    # The `cp` filling the scratch copy dies with voke, a moment later (parent-death signal):
    # until then it may write again into what a discard removes.
    while _processes_naming(f".{name}.partial") and time.monotonic() < deadline:
        time.sleep(0.01)
    assert [(r["name"], r["state"]) for r in dr.list_restores(env)] == [(name, "interrupted")]
    assert voke("dr", "discard", name, "--yes", environ=environ).exit_code == 0
    assert dr.list_restores(env) == [] and not list(dr.restores_dir(env).iterdir())


@pytest.mark.parametrize("again", [1, 2])
def test_ctrl_c_again_while_an_interrupted_restore_is_removed_is_held_then_names_the_discard(
    voke, environ, env, monkeypatch, again
):
    import signal

    name = f"cut-twice-{again}"
    real_kill = dr.kill_node

    def ctrl_c(*_args, **_kwargs):  # the first Ctrl-C, while it recovers
        raise KeyboardInterrupt

    def kill_after_ctrl_c(node, *args, **kwargs):  # AGAIN more while the clean-up stops the server
        for _ in range(again):
            os.kill(os.getpid(), signal.SIGINT)
        return real_kill(node, *args, **kwargs)

    monkeypatch.setattr(dr, "_wait_promoted", ctrl_c)
    monkeypatch.setattr(dr, "kill_node", kill_after_ctrl_c)
    result = voke("dr", "restore", "--to", "now", "--name", name, "--yes", "--json", environ=environ)
    monkeypatch.undo()
    assert result.exit_code == 130, result.stdout + result.stderr
    error = result.json["error"]
    if again == 1:  # held: the clean-up ran to its end, and nothing is left
        assert error["message"] == "interrupted"
        assert dr.list_restores(env) == [] and not list(dr.restores_dir(env).iterdir())
        return
    assert "interrupted while restore cut-twice-2 was being removed" in error["message"]
    assert error["hint"] == f"voke dr discard {name} --yes"
    assert [(r["name"], r["state"]) for r in dr.list_restores(env)] == [(name, "interrupted")]
    assert voke(*error["hint"].split()[1:], environ=environ).exit_code == 0  # pasted as it is
    assert dr.list_restores(env) == [] and not list(dr.restores_dir(env).iterdir())


def test_a_truncated_backup_file_is_caught_by_verify_backup(voke, environ, env):
    info = env.take_base_backup()
    victim = next(
        p
        for p in sorted((env.pg_dir / "backups" / info.label / "base").rglob("*"))
        if p.is_file() and p.stat().st_size > 8192
    )
    with victim.open("r+b") as fh:
        fh.truncate(victim.stat().st_size // 2)
    try:
        result = voke("dr", "verify-backup", "--label", info.label, "--json", environ=environ)
        assert result.exit_code == 1
        rel = str(victim.relative_to(env.pg_dir / "backups" / info.label))
        assert any(rel in p for p in result.json["result"]["pg_verifybackup"]["problems"])
        assert rel in result.json["error"]["message"]
    finally:
        shutil.rmtree(env.pg_dir / "backups" / info.label)


def test_a_corrupt_backup_is_passed_over_by_restore_and_a_bad_page_found_late_rolls_back(voke, environ, env):
    older = env.backups()[-1].label
    info = env.take_base_backup()
    page = env.pg_dir / "backups" / info.label / "base" / "5" / "1247"  # pg_type of `postgres`, block 0
    flipped = bytearray(page.read_bytes())
    flipped[3000] ^= 0xFF
    page.write_bytes(bytes(flipped))
    target = datetime.now(UTC)
    time.sleep(0.2)
    dr.seal_archive(env, env.primary())
    try:
        plan = voke("dr", "restore", "--to", utc(target), "--dry-run", "--json", environ=environ)
        assert plan.exit_code == 0, plan.stderr
        assert plan.json["result"]["backup"] == older  # checked before copying: the older one is used
        assert plan.json["result"]["skipped_backups"] == [
            {"label": info.label, "problems": ['checksum mismatch for file "base/5/1247"']}
        ]
        # A page the manifest cannot vouch for is read by the restored server: rolled back, not exit 70.
        window = dr.recoverable_window(env, dr.leader_wal(env, env.primary()))
        late = dr.RestorePlan(target=target, name="bad-page", backup=info, window=window, sealed_at=None)
        with pytest.raises(RolledBackError, match=r'invalid page in block 0 of relation "base/5/1247"'):
            dr.restore(env, late, timeout=120)
        assert not [p for p in dr.restores_dir(env).iterdir() if "bad-page" in p.name]
    finally:
        shutil.rmtree(env.pg_dir / "backups" / info.label)


def test_backup_is_refused_while_another_dr_operation_holds_the_lock(
    voke, environ, env, held_by_another_voke
):
    record = dr.dr_dir(env) / "operation.json"
    try:
        with held_by_another_voke(dr.dr_dir(env) / "dr.lock", "drill network pid 1"):
            busy = voke("dr", "backup", "--yes", "--json", environ=environ)
            # A drill's failback under way records itself: running, not "interrupted, resume it".
            record.write_text('{"operation": "failback", "resume": "voke dr failback --yes", "done": []}')
            during = voke("dr", "backup", "--yes", "--json", environ=environ)
    finally:
        record.unlink(missing_ok=True)
    assert busy.exit_code == 5 and "drill network" in busy.json["error"]["message"]
    assert during.exit_code == 5, during.stdout
    assert during.json["error"]["message"].startswith("another DR operation is running (drill network")


def test_a_leader_lost_just_after_a_backup_still_leaves_the_older_window(voke, environ, env):
    primary = env.primary()
    with primary.connect() as conn:
        conn.execute("create table if not exists lost_after_backup (id int)")
    target = datetime.now(UTC)
    time.sleep(0.2)
    with primary.connect() as conn:
        conn.execute("insert into lost_after_backup values (1)")
    dr.seal_archive(env, primary)  # that commit is archived; the backup's own WAL holds none
    assert voke("dr", "backup", "--yes", environ=environ).exit_code == 0
    primary.stop(mode="immediate")  # the leader is lost before it commits anything more
    try:
        status = voke("dr", "status", "--json", environ=environ).json["result"]
        window = status["recoverable_window"]
        assert window["latest"] is not None and window["latest"] > utc(target), window
        restored = voke("dr", "restore", "--to", utc(target), "--name", "after-loss", "--yes", "--json",
                        environ=environ)  # fmt: skip
        assert restored.exit_code == 0, restored.stderr
        assert voke("dr", "discard", "after-loss", "--yes", environ=environ).exit_code == 0
    finally:
        env.up()


@pytest.mark.parametrize("damage", ["deleted", "truncated"])
def test_an_archive_gap_is_named_and_restores_past_it_are_refused(voke, environ, env, damage):
    before_gap = datetime.now(UTC)
    time.sleep(0.2)
    names = _archived_segments(env)
    victim = env.archive_dir / names[1]
    if damage == "deleted":
        os.unlink(victim)
    else:  # cut short by something other than the archive command: recovery would stop there
        os.truncate(victim, 8192)
    verify = voke("dr", "verify-backup", "--json", environ=environ)
    assert verify.exit_code == 1
    assert verify.json["result"]["archive"]["missing"] == [names[1]]
    assert verify.json["result"]["archive"]["last_contiguous"] == names[0]
    assert names[1] in verify.json["error"]["message"]
    check = voke("dr", "check", environ=environ)
    assert (
        check.exit_code == 1
        and f"FAIL archive_continuity: WAL archive gap: {names[1]} is "
        + ("missing" if damage == "deleted" else "damaged (8192 bytes, not a whole segment)")
        in check.stdout
    ), check.stdout
    past = voke("dr", "restore", "--to", "now", "--name", "past-gap", "--yes", environ=environ)
    assert past.exit_code == 5 and names[1] in past.stderr
    ok = voke(
        "dr", "restore", "--to", utc(before_gap), "--name", "before-gap", "--yes", "--json", environ=environ
    )
    assert ok.exit_code == 0, ok.stderr
    assert voke("dr", "discard", "before-gap", "--yes", environ=environ).exit_code == 0
    # A new base backup starts a new gap-free chain: the newest backup checks clean again.
    assert voke("dr", "backup", "--yes", environ=environ).exit_code == 0
    dr.seal_archive(env, env.primary())  # until WAL after the new backup is archived, nothing is recoverable
    healed = voke("dr", "check", "--json", environ=environ)
    assert healed.exit_code == 0, healed.stdout


def _archived_segments(env) -> list[str]:
    """Three segments with a commit each, switched and archived: their names."""
    primary = env.primary()
    names = []
    for _ in range(3):
        with primary.connect() as conn:
            conn.execute("create table if not exists gap_filler (id int)")
            conn.execute("insert into gap_filler values (1)")
            names.append(
                conn.execute("select pg_walfile_name(pg_current_wal_lsn()), pg_switch_wal()").fetchone()[0]
            )
    dr.wait_until(lambda: all((env.archive_dir / n).exists() for n in names), "archiving", timeout=30)
    return names


def _gap_after(env) -> tuple[list[str], datetime]:
    """Three archived segments with a commit each, the middle one deleted; the segment names,
    and an instant after the last commit (in the stretch the gap cut off)."""
    names = _archived_segments(env)
    os.unlink(env.archive_dir / names[1])
    return names, datetime.now(UTC)


def test_after_a_gap_and_the_runbooks_new_backup_targets_before_the_gap_still_restore(voke, environ, env):
    commits = _write_rows(env, 6, 0.05)
    ids = sorted(commits)
    target = commits[ids[-3]] + (commits[ids[-2]] - commits[ids[-3]]) / 2
    before = env.backups()[-1]  # the backup the range before the gap restores from
    names, lost = _gap_after(env)
    time.sleep(0.2)
    # The partial-degradation runbook: a new base backup, verified; the window starts at it.
    assert voke("dr", "backup", "--yes", environ=environ).exit_code == 0
    assert voke("dr", "verify-backup", environ=environ).exit_code == 0
    dr.seal_archive(env, env.primary())
    newest = env.backups()[-1]
    # (voke took only the window for recoverable: this target, before the gap, was refused)
    restored = voke(
        "dr", "restore", "--to", utc(target), "--name", "older-range", "--yes", "--json", environ=environ
    )
    assert restored.exit_code == 0, restored.stderr
    assert restored.json["result"]["backup"]["label"] == before.label
    with dr.get_restore(env, "older-range")[1].connect() as conn:
        rows = {row[0] for row in conn.execute("select id from orders")}
    assert (
        rows == {i for i, ts in commits.items() if ts <= target} and ids[-3] in rows and ids[-2] not in rows
    )
    assert voke("dr", "discard", "older-range", "--yes", environ=environ).exit_code == 0
    status = voke("dr", "status", "--json", environ=environ).json["result"]
    window = status["recoverable_window"]
    assert window["earliest_backup"] == newest.label and window["live"], window
    *earlier, current = status["recoverable_ranges"]
    assert (current["earliest"], current["backup"], current["missing"]) == (
        window["earliest"],
        newest.label,
        None,
    )
    cut = earlier[-1]  # the range the new gap ends (the gap test's gaps left older ones)
    assert cut["newest_backup"] == before.label and cut["missing"] == names[1], earlier
    at = datetime.fromisoformat
    assert at(cut["earliest"]) <= target < at(cut["latest"]) <= lost < at(current["earliest"]), cut
    shown = voke("dr", "status", environ=environ).stdout
    assert (
        f"earlier  {cut['earliest']} .. {cut['latest']} from {cut['backup']} ({names[1]} lost after it)"
        in shown
    )
    refused = voke(
        "dr", "restore", "--to", utc(lost), "--name", "lost", "--dry-run", "--json", environ=environ
    )
    assert refused.exit_code == 5, refused.stdout
    message = refused.json["error"]["message"]
    assert f"lies after the archive lost {names[1]} and before the next usable backup" in message, message
    assert f"{cut['earliest']} .. {cut['latest']} (from {cut['backup']}; {names[1]} lost after it)" in message
    assert f"{current['earliest']} .. " in message and f"(from {newest.label})" in message
    # A prune whose retention reaches into that range keeps its backup and its WAL.
    now = datetime.now(UTC)
    plan = dr.plan_prune(env, (now - target).total_seconds() / 86400, now=now)
    assert before in plan.keep and plan.wal_floor is not None and plan.wal_floor[8:] <= before.start_wal[8:]
    assert not [n for n in plan.segments if before.start_wal[8:] <= n[8:24] <= names[0][8:]]


def _finished(backup) -> datetime:
    return datetime.fromisoformat(backup.finished_at.replace("Z", "+00:00"))


def test_a_prune_plan_keeps_the_newest_backup_before_the_cutoff_and_all_after(env, monkeypatch):
    backups = env.backups()
    assert len(backups) >= 4, [b.label for b in backups]
    now = _finished(backups[-1]) + timedelta(days=7)
    cutoff_between = _finished(backups[2]) + (_finished(backups[3]) - _finished(backups[2])) / 2
    plan = dr.plan_prune(env, (now - cutoff_between).total_seconds() / 86400, now=now)
    assert plan.remove == backups[:2] and plan.keep == backups[2:]
    assert plan.wal_floor == backups[2].start_wal
    assert plan.segments and all(n[8:24] < plan.wal_floor[8:] for n in plan.segments)
    assert not any(n.endswith(".history") for n in plan.segments)
    archive = sorted(p.name for p in env.archive_dir.iterdir())
    assert plan.wal_floor in archive  # (the first segment the oldest kept backup needs stays)
    assert dr.plan_prune(env, 30, now=now).remove == []  # every backup within the window: none goes
    # A base that pg_verifybackup fails is passed over by a restore for the one before it: both stay.
    damaged = Path(backups[2].path) / "PG_VERSION"
    original = damaged.read_bytes()
    damaged.write_bytes(original + b"x")
    try:
        plan = dr.plan_prune(env, (now - cutoff_between).total_seconds() / 86400, now=now)
    finally:
        damaged.write_bytes(original)
    assert plan.remove == backups[:1] and plan.wal_floor == backups[1].start_wal
    (warning,) = plan.warnings
    assert (
        warning.startswith(f"backup {backups[2].label} fails pg_verifybackup (") and "PG_VERSION" in warning
    )
    assert warning.endswith("): kept, with the older ones a restore falls back on")
    # The newest before the cutoff must be on the current timeline's history to reach back to it:
    # one of another branch is kept (it is newer) but does not count; the one before it does.
    stray = dataclasses.replace(backups[2], label="base-stray", timeline=9)
    monkeypatch.setattr(env, "backups", lambda: [*backups[:2], stray, *backups[3:]])
    plan = dr.plan_prune(env, (now - cutoff_between).total_seconds() / 86400, now=now)
    assert plan.remove == backups[:1] and stray in plan.keep
    # A kept backup that does not record its first segment: the archive is left whole.
    blank = dataclasses.replace(backups[-1], start_wal="")
    monkeypatch.setattr(env, "backups", lambda: [*backups[:-1], blank])
    plan = dr.plan_prune(env, (now - cutoff_between).total_seconds() / 86400, now=now)
    assert plan.remove == backups[:2] and plan.wal_floor is None and plan.segments == {}
    assert plan.warnings == [
        f"archive kept whole: backup {blank.label} does not record its first WAL segment"
    ]
    # A backup that finished "after now" (a clock step): kept, and named.
    future = dataclasses.replace(backups[2], finished_at="2999-01-01T00:00:00Z")
    monkeypatch.setattr(env, "backups", lambda: [backups[0], future, backups[-1]])
    plan = dr.plan_prune(env, 1, now=now)
    assert plan.remove == [backups[0]] and plan.keep == [future, backups[-1]]
    assert plan.warnings == [
        f"backup {backups[2].label} finished after now (2999-01-01T00:00:00Z: a clock step?); kept"
    ]
    assert (plan.floor_backup, plan.wal_floor) == (backups[2].label, backups[2].start_wal)


def _fake_backups(env, labels: list[str]) -> list[str]:
    """Backups that finished in 2000 (hard-linked copies of the oldest one under each label; the same
    start, so the archive's floor stays) and an archived segment older than any real one."""
    oldest = Path(env.backups()[0].path)
    record = json.loads((oldest / "voke-backup.json").read_text())
    for day, label in enumerate(labels, start=1):
        copy = env.backups_dir / label
        shutil.copytree(oldest, copy, copy_function=os.link)  # (whole: it verifies)
        owner = oldest.stat()
        for directory in [copy, *(p for p in copy.rglob("*") if p.is_dir())]:
            os.chown(directory, owner.st_uid, owner.st_gid)  # (pg_verifybackup runs as the server user)
        path = copy / "voke-backup.json"
        path.unlink()  # (a link to the original's)
        path.write_text(json.dumps({**record, "label": label, "path": str(path.parent),
                                    "finished_at": f"2000-01-0{day}T00:00:00Z"}))  # fmt: skip
    (env.archive_dir / "000000010000000000000000").write_bytes(b"")
    return labels


@pytest.mark.parametrize("fault", ["rename", "unlink", "interrupt"])
def test_a_prune_that_cannot_finish_names_what_went_and_leaves_no_backup_without_its_wal(
    voke, environ, env, monkeypatch, fault
):
    from voketag_ops.errors import Interrupted

    first, second = _fake_backups(env, ["base-20000101T000000000000Z", "base-20000102T000000000000Z"])
    segment = env.archive_dir / "000000010000000000000000"
    rename, unlink, rmtree = Path.rename, Path.unlink, shutil.rmtree

    def refused_rename(self, target):
        if self.name == first:
            raise PermissionError(13, "Permission denied")
        return rename(self, target)

    def refused_unlink(self, *args, **kwargs):
        if self == segment:
            raise PermissionError(13, "Permission denied")
        return unlink(self, *args, **kwargs)

    def ctrl_c(path, *args, **kwargs):
        if Path(path).name == f".pruned-{first}":
            raise Interrupted("interrupted")
        return rmtree(path, *args, **kwargs)

    if fault == "rename":
        monkeypatch.setattr(Path, "rename", refused_rename)
    elif fault == "unlink":
        monkeypatch.setattr(Path, "unlink", refused_unlink)
    else:
        monkeypatch.setattr(shutil, "rmtree", ctrl_c)
    try:
        result = voke("dr", "prune", "--yes", "--json", environ=environ)
        monkeypatch.undo()
        event = voke("dr", "history", "--json", environ=environ).json["result"]["events"][-1]
        assert (event["action"], event["result"]) == (
            "dr.prune",
            "interrupted" if fault == "interrupt" else "failure",
        )
        listed = [b.label for b in env.backups()]
        if fault == "rename":  # still listed: so is its WAL
            assert result.exit_code == 7, result.stdout
            assert first in listed and segment.exists() and event["details"]["removed_backups"] == []
            assert f"{env.backups_dir / first}: Permission denied" in result.json["error"]["message"]
        else:
            assert result.exit_code == (7 if fault == "unlink" else 130), result.stdout
            assert first not in listed and second in listed and event["details"]["removed_backups"] == [first]
        if fault == "unlink":
            message = result.json["error"]["message"]
            assert message.startswith("pruning stopped after removing 1 of 1 backups: 1 could not be removed")
            assert f"{segment}: Permission denied" in message
            assert "re-run `voke dr prune --yes`" in result.json["error"]["hint"]
            assert event["details"]["removed_segments"] == 0  # what went, not what was planned
        if fault == "interrupt":  # renamed aside, not deleted: the next prune deletes it
            plan = voke("dr", "prune", "--dry-run", "--json", environ=environ).json["result"]
            (leftover,) = plan["leftovers"]
            assert (
                leftover["path"] == str(env.backups_dir / f".pruned-{first}") and leftover["size_bytes"] > 0
            )
            assert plan["freed_bytes"] >= leftover["size_bytes"]
        again = voke("dr", "prune", "--yes", "--json", environ=environ)
        assert again.exit_code == 0, again.stdout
        assert not segment.exists() and not list(env.backups_dir.glob(".pruned-*"))
        assert env.backups()[0].label == second  # the newest before the cutoff stays
    finally:
        monkeypatch.undo()
        for label in (first, second):
            shutil.rmtree(env.backups_dir / label, ignore_errors=True)
        segment.unlink(missing_ok=True)
    assert voke("dr", "check", environ=environ).exit_code == 0


def test_a_backup_record_without_a_finish_time_or_start_is_not_a_backup(voke, environ, env):
    # `dr status`, `dr check` and `dr prune` were exit 70 on such a record (a hand edit, a bug).
    labels = _fake_backups(env, [f"base-2000010{day}T000000000000Z" for day in range(1, 6)])
    (env.archive_dir / "000000010000000000000000").unlink()
    damage = [
        ("finished_at", "unknown"),
        ("start_lsn", "garbage"),
        ("start_wal", None),
        ("finished_at", "0001-01-01T00:00:00+14:00"),  # before year 1 in UTC
        ("label", labels[0]),  # a copy of another backup's directory
    ]
    for label, (field_, value) in zip(labels, damage, strict=True):
        path = env.backups_dir / label / "voke-backup.json"
        path.write_text(json.dumps({**json.loads(path.read_text()), field_: value}))
    try:
        assert not {b.label for b in env.backups()} & set(labels)
        for args in (["dr", "status"], ["dr", "check"], ["dr", "prune", "--dry-run"], ["env", "status"]):
            result = voke(*args, "--json", environ=environ)
            assert result.exit_code == 0, (args, result.stdout)
    finally:
        for label in labels:
            shutil.rmtree(env.backups_dir / label)


def test_a_backup_pruned_while_it_is_verified_is_named_as_pruned_not_damaged(voke, environ, env, monkeypatch):
    (label,) = _fake_backups(env, ["base-20000101T000000000000Z"])
    (env.archive_dir / "000000010000000000000000").unlink()

    def pruned_meanwhile(env_, backup):
        shutil.rmtree(env.backups_dir / backup.label)
        return {"ok": False, "pg_verifybackup": {"ok": False, "problems": ["gone"]}, "archive": {}}

    monkeypatch.setattr(dr, "verify_backup", pruned_meanwhile)
    result = voke("dr", "verify-backup", "--label", label, "--json", environ=environ)
    assert result.exit_code == 5, result.stdout
    assert (
        result.json["error"]["message"]
        == f"backup {label} was pruned while it was verified (dr.pitr_retention_days)"
    )


def test_prune_removes_what_the_retention_no_longer_needs_and_the_window_stays_whole(
    voke, environ, env, home, make_environ, monkeypatch
):
    backups = env.backups()
    # the gap test's new backup is newest; the archive gap lies between it and the one before
    base, newest = backups[-2], backups[-1]
    midpoint = _finished(base) + (_finished(newest) - _finished(base)) / 2
    keep_base = make_environ(home, VOKE_LOCAL__ARCHIVE_TIMEOUT="5", VOKE_DR__PITR_RETENTION_DAYS="1")
    monkeypatch.setattr(dr, "utcnow", lambda: midpoint + timedelta(days=1))  # the cutoff: between the two
    assert voke("dr", "prune", environ=keep_base).exit_code == 2  # no terminal, no --yes
    archive = sorted(p.name for p in env.archive_dir.iterdir())
    dry = voke("dr", "prune", "--dry-run", "--json", environ=keep_base)
    assert dry.exit_code == 0, dry.stderr
    plan = dry.json["result"]
    assert plan["dry_run"] and plan["kept_backups"] == [base.label, newest.label]
    assert [b["label"] for b in plan["removed_backups"]] == [b.label for b in backups[:-2]]
    shown = voke("dr", "prune", "--dry-run", environ=keep_base).stdout
    assert (
        f"would remove {len(backups) - 2} backups and {plan['removed_segments']} archived WAL files" in shown
    )
    assert f"oldest backup kept: {base.label}" in shown
    assert f"archived WAL kept from {base.start_wal} (backup {base.label})" in shown
    assert env.backups() == backups and set(archive) <= {
        p.name for p in env.archive_dir.iterdir()
    }  # (new ones may come)
    done = voke("dr", "prune", "--yes", "--json", environ=keep_base)
    assert done.exit_code == 0, done.stderr
    result = done.json["result"]
    assert result["removed_backups"] == plan["removed_backups"] and result["failures"] == []
    assert env.backups() == [base, newest] and sorted(p.name for p in env.backups_dir.iterdir()) == [
        base.label,
        newest.label,
    ]
    left = sorted(p.name for p in env.archive_dir.iterdir())
    assert min(n[8:24] for n in left if dr.wal.SEGMENT_NAME.match(n)) == base.start_wal[8:]
    # (by name: with a 5 s archive_timeout a new segment may be archived meanwhile)
    assert result["removed_segments"] == len(set(archive) - set(left)) > 0
    assert (
        result["freed_bytes"]
        == sum(b["size_bytes"] for b in plan["removed_backups"]) + result["removed_segment_bytes"]
    )
    event = voke("dr", "history", "--json", environ=environ).json["result"]["events"][-1]
    assert event["action"] == "dr.prune" and event["result"] == "success"
    assert event["details"]["removed_backups"] == [b.label for b in backups[:-2]]
    # A prune cut short after renaming a backup aside: it no longer counts, the next prune deletes it.
    aside = env.backups_dir / ".pruned-base-20000101T000000000000Z"
    (aside / "base").mkdir(parents=True)
    assert env.backups() == [base, newest]
    # Keeping only the newest backup also removes the archive gap before it: the window is whole.
    monkeypatch.setattr(dr, "utcnow", lambda: _finished(newest) + timedelta(days=1, seconds=1))
    again = voke("dr", "prune", "--yes", "--json", environ=keep_base)
    assert again.exit_code == 0, again.stderr
    monkeypatch.undo()
    assert [b["label"] for b in again.json["result"]["removed_backups"]] == [base.label]
    assert not aside.exists() and env.backups() == [newest]
    check = voke("dr", "check", "--json", environ=environ)
    assert check.exit_code == 0, check.stdout
    window = check.json["result"]["status"]["recoverable_window"]
    assert window["earliest_backup"] == newest.label
    too_old = voke("dr", "restore", "--to", utc(midpoint), "--name", "pruned", "--yes", environ=environ)
    assert too_old.exit_code == 5 and "before the recoverable window" in too_old.stderr
    assert voke("dr", "verify-backup", environ=environ).exit_code == 0


def test_a_backup_prunes_by_the_retention_and_a_failed_prune_does_not_fail_it(env, home, monkeypatch):
    from voketag_ops.config import Settings
    from voketag_ops.workflows import dr as flows

    settings = Settings(local=LocalSettings(home=home, archive_timeout=5))
    pruned = flows.backup(settings, env, dry_run=False)
    assert pruned["pruned"]["removed_backups"] == [] and pruned["pruned"]["error"] is None
    assert pruned["pruned"]["kept_backups"][-1] == pruned["backup"]["label"]

    def broken(*_args, **_kwargs):
        raise BackendError("archive unreadable: disk on fire", hint="free space")

    monkeypatch.setattr(dr, "plan_prune", broken)
    taken = flows.backup(settings, env, dry_run=False)
    assert taken["pruned"]["error"] == "archive unreadable: disk on fire (free space)"
    assert set(taken["pruned"]) == set(pruned["pruned"])  # one shape, failed or not
    assert env.backups()[-1].label == taken["backup"]["label"]
    from voketag_ops.audit import AuditLog
    from voketag_ops.errors import Interrupted

    backup_event, prune_event = list(AuditLog(home).entries())[-2:]
    assert (backup_event.event_type, backup_event.result) == ("dr.backup", "success")
    assert (prune_event.event_type, prune_event.result) == ("dr.prune", "failure")
    assert prune_event.details["error"]["message"] == "archive unreadable: disk on fire"

    def ctrl_c(*_args, **_kwargs):
        raise KeyboardInterrupt  # (what a SIGINT raises)

    monkeypatch.setattr(dr, "plan_prune", ctrl_c)  # Ctrl-C while it prunes: the backup stands
    with pytest.raises(Interrupted, match=r"^interrupted while pruning after backup base-\S+ was taken$"):
        flows.backup(settings, env, dry_run=False)
    backup_event, prune_event = list(AuditLog(home).entries())[-2:]
    assert (backup_event.event_type, backup_event.result) == ("dr.backup", "success")
    assert backup_event.details["label"] == env.backups()[-1].label
    assert (prune_event.event_type, prune_event.result) == ("dr.prune", "interrupted")
    unpruned = Settings(local=LocalSettings(home=home, archive_timeout=5), dr={"prune_after_backup": False})
    assert flows.backup(unpruned, env, dry_run=False)["pruned"] is None


def test_with_the_archiver_failing_older_backups_still_restore_what_is_archived(voke, environ, env):
    # Last in this module: the archiver, once failing, retries only after a pause.
    primary = env.primary()
    with primary.connect() as conn:
        conn.execute("create table if not exists archiver_down (id int)")
        conn.execute("insert into archiver_down values (1)")
    target = datetime.now(UTC)
    time.sleep(0.2)
    with primary.connect() as conn:
        conn.execute("insert into archiver_down values (2)")
    dr.seal_archive(env, primary)  # a commit after the target is archived
    assert voke("dr", "backup", "--yes", environ=environ).exit_code == 0
    mode = env.archive_dir.stat().st_mode & 0o7777
    os.chmod(env.archive_dir, 0o500)  # the archive disk refuses writes from here on
    # ... and refused the newest backup's WAL already: none of it is in the archive
    first = env.backups()[-1].start_wal
    for segment in env.archive_dir.iterdir():
        if segment.name[:24] >= first and segment.name[:8] == first[:8]:
            segment.unlink()
    try:
        # The leader is up: the archive already holds a commit after the target, so no seal is
        # waited for (it would time out after 60 s with exit 4).
        alive = voke("dr", "restore", "--to", utc(target), "--name", "archiver-down", "--yes", "--json",
                     environ=environ)  # fmt: skip
        assert alive.exit_code == 0, alive.stderr
        assert alive.json["result"]["sealed_at"] is None
        assert voke("dr", "discard", "archiver-down", "--yes", environ=environ).exit_code == 0
        primary.stop(mode="immediate")  # and then the leader is lost
        status = voke("dr", "status", "--json", environ=environ).json["result"]
        window = status["recoverable_window"]
        assert window["latest"] is not None and window["latest"] > utc(target), window
        # the gaps shown are those of the backup that bounds the window, named as such
        assert status["archive_gaps"]["from_backup"] == env.backups()[-2].label != window["newest_backup"]
        lost = voke("dr", "restore", "--to", utc(target), "--name", "leader-lost", "--yes", "--json",
                    environ=environ)  # fmt: skip
        assert lost.exit_code == 0, lost.stderr
        with dr.get_restore(env, "leader-lost")[1].connect("postgres") as conn:
            assert conn.execute("select array_agg(id) from archiver_down").fetchone() == ([1],)
        assert voke("dr", "discard", "leader-lost", "--yes", environ=environ).exit_code == 0
    finally:
        os.chmod(env.archive_dir, mode)
        env.up()


def test_settling_a_segment_the_archiver_marked_done_meanwhile_is_no_error(tmp_path, monkeypatch):
    # After a promote the archiver may rename a `.ready` to `.done` between voke's listing of
    # archive_status and voke's own rename of it: that segment is settled, not an internal error.
    from pathlib import Path

    from voketag_ops.adapters.local.postgres import PgNode

    env = LocalEnvironment(LocalSettings(home=tmp_path / "home"))
    node = PgNode("replica", tmp_path / "data", 0, tmp_path, tmp_path / "log", runner=None)  # type: ignore[arg-type]
    status = node.data_dir / "pg_wal" / "archive_status"
    status.mkdir(parents=True)
    env.archive_dir.mkdir(parents=True)
    names = ["000000010000000000000003", "000000010000000000000004"]
    for name in names:
        (node.data_dir / "pg_wal" / name).write_bytes(b"")
        (status / f"{name}.ready").write_text("")
        (env.archive_dir / name).write_bytes(b"")
    rename = Path.rename

    def archiver_first(self, target):
        if self.name == f"{names[0]}.ready":
            rename(self, target)  # the archiver's own rename, just before voke's
        return rename(self, target)

    monkeypatch.setattr(Path, "rename", archiver_first)
    assert dr.settle_archive_status(env, node) == [names[1]]
    assert sorted(p.name for p in status.iterdir()) == [f"{n}.done" for n in names]


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to give a file to the server user")
def test_giving_a_directory_to_the_server_user_never_gives_a_links_target(env, tmp_path):
    # `dr restore` makes pg/restores and chowns it; the server user owns pg/ and can put a link
    # to a root file in its place in between.
    victim = tmp_path / "victim"
    victim.write_text("root's\n")
    link = tmp_path / "restores"
    link.symlink_to(victim)
    dr._chown_to_server(env, link)
    server = env._runner(env.require_state()).user
    assert victim.stat().st_uid == 0 and link.lstat().st_uid == server.uid
