"""`voke env` against real PostgreSQL: up, idempotence, status, crash recovery, down,
destroy, and the faults a fresh machine can throw at it. This module runs its own
environment (the shared one must not be killed under other tests)."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path

import psycopg
import pytest

from voketag_ops.adapters.local.environment import EnvState, LocalEnvironment
from voketag_ops.adapters.local.postgres import is_stopped
from voketag_ops.config import LocalSettings
from voketag_ops.errors import BackendError, ConfigError
from voketag_ops.testing.local import frozen, killed_with_its_pid_reused


@pytest.fixture(scope="module")
def home(tmp_path_factory):
    path = tmp_path_factory.mktemp("env-lifecycle") / "home"
    yield path
    from voketag_ops.config import Settings
    from voketag_ops.workflows.env import LocalPlatform

    LocalPlatform(Settings(local=LocalSettings(home=path))).destroy(discard_chain=True)


@pytest.fixture(scope="module")
def started_on_demand(tmp_path_factory):
    """A home the on-demand start makes whole; the broken-secret-store test right after it starts from that
    healthy environment instead of making another (its own `env up` adopts it, or makes one when
    it runs alone). Destroyed at the end of the module whatever was left."""
    path = tmp_path_factory.mktemp("on-demand") / "h"
    yield path
    from voketag_ops.config import Settings
    from voketag_ops.workflows.env import LocalPlatform

    LocalPlatform(Settings(local=LocalSettings(home=path))).destroy(discard_chain=True)


@pytest.fixture
def env_of(make_environ):
    return lambda home, **extra: make_environ(home, VOKE_LOCAL__ARCHIVE_TIMEOUT="5", **extra)


def wait_for(predicate, what, timeout=30.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def local(home):
    return LocalEnvironment(LocalSettings(home=home))


def test_up_starts_primary_replica_archive_and_backup(voke, home, env_of):
    result = voke("env", "up", "--json", environ=env_of(home))
    assert result.exit_code == 0, result.stderr
    up = result.json["result"]
    assert up["started"] == ["primary", "replica"]
    assert up["services_started"] == ["admin-service", "factory-service", "blockchain-service"]
    assert up["backup"].startswith("base-")
    status = voke("env", "status", "--json", environ=env_of(home)).json["result"]
    assert status["primary"]["role"] == "primary" and status["primary"]["running"] is True
    assert status["replica"]["role"] == "replica" and status["replica"]["running"] is True
    assert status["primary"]["port"] != status["replica"]["port"]
    assert {"lag_bytes", "lag_seconds"} <= status["replica"].keys()
    assert {"last_archived_wal", "last_archived_at", "failed_count"} <= status["archive"].keys()
    assert status["archive"]["failed_count"] == 0
    assert [b["label"] for b in status["backups"]] == [up["backup"]]
    assert status["backups"][0]["finished_at"].endswith("Z")
    assert status["healthy"] is True
    assert status["wal_segment_mb"] == 1
    assert [s["name"] for s in status["services"]] == [
        "admin-service",
        "factory-service",
        "blockchain-service",
    ]
    for service in status["services"]:
        assert service["healthy"] is True and service["secret"] == "db-app" and service["secret_version"] == 2
        assert service["url"].startswith("http://127.0.0.1:") and service["url"].endswith("/health")
    backup_dir = home / "pg" / "backups" / up["backup"]
    assert (backup_dir / "backup_manifest").is_file()


def test_server_settings_and_replication_slot(home):
    env = local(home)
    with env.primary().connect() as conn:
        settings = dict(
            conn.execute(
                "select name, setting from pg_settings where name in ('data_checksums', 'wal_level', "
                "'archive_mode', 'listen_addresses', 'wal_retrieve_retry_interval', 'wal_segment_size', "
                "'min_wal_size', 'max_wal_size')"
            ).fetchall()
        )
        slot = conn.execute(
            "select active from pg_replication_slots where slot_name = 'voke_replica'"
        ).fetchone()
    assert settings == {
        "data_checksums": "on",
        "wal_level": "replica",
        "archive_mode": "on",
        "listen_addresses": "127.0.0.1",
        "wal_retrieve_retry_interval": "1000",  # ms: a standby reconnects within 1 s, not 5
        # local.wal_segment_mb: an idle server's archive_timeout archives 1 MB a minute, not 16
        "wal_segment_size": str(1024 * 1024),
        "min_wal_size": "80",  # MB, PostgreSQL's defaults, not initdb's 5 and 64 segments
        "max_wal_size": "1024",
    }
    assert slot == (True,)


def test_state_is_private(home):
    assert stat.S_IMODE(home.stat().st_mode) & 0o077 in (0, 0o011)  # 0711 when servers run as another user
    assert stat.S_IMODE((home / "state.json").stat().st_mode) == 0o600
    for sub in ("pg", "pg/primary", "pg/archive", "pg/backups"):
        assert stat.S_IMODE((home / sub).stat().st_mode) == 0o700


def test_second_up_changes_nothing(voke, home, env_of):
    before = voke("env", "status", "--json", environ=env_of(home)).json["result"]
    # the segment size is fixed at initdb: another setting is for the next new environment
    again = voke("env", "up", environ=env_of(home, VOKE_LOCAL__WAL_SEGMENT_MB="4"))
    assert again.exit_code == 0
    assert "already running" in again.stdout
    after = voke("env", "status", "--json", environ=env_of(home)).json["result"]
    assert after["wal_segment_mb"] == before["wal_segment_mb"] == 1
    assert after["primary"]["pid"] == before["primary"]["pid"]
    assert after["replica"]["pid"] == before["replica"]["pid"]
    assert after["backups"] == before["backups"]


def ephemeral_range() -> range:
    low, high = (int(x) for x in Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split())
    return range(low, high + 1)


def test_ports_voke_picks_are_outside_the_ephemeral_range(home):
    """A port from the range outgoing connections draw from could be taken by any of them while
    the environment is down, and `env up` could not start."""
    from voketag_ops.adapters.local.postgres import pick_free_port

    ephemeral = ephemeral_range()
    nodes = list(local(home).require_state().ports.values())
    picked = [pick_free_port(avoid=nodes) for _ in range(200)]
    assert not [p for p in [*nodes, *picked] if p in ephemeral], (ephemeral, nodes)
    assert len(set(picked)) > 20 and not set(picked) & set(nodes)  # random, not a fixed sequence


def test_a_range_that_leaves_few_ports_above_20000_is_avoided_from_1024_and_a_full_one_falls_back(
    tmp_path, monkeypatch
):
    from voketag_ops.adapters.local import postgres

    monkeypatch.delenv("VOKE_PORT_SHARE", raising=False)  # all of voke's ports, not this worker's
    ranges = tmp_path / "ip_local_port_range"
    monkeypatch.setattr(postgres, "EPHEMERAL_RANGE_FILE", ranges)
    ranges.write_text("15000\t65000\n")
    assert postgres.listen_ports() == [range(1024, 15000), range(65001, 65536)]
    assert all(not 15000 <= postgres.pick_free_port() <= 65000 for _ in range(50))
    ranges.write_text("1024\t65535\n")
    assert postgres.listen_ports() == []
    assert 1024 <= postgres.pick_free_port() <= 65535  # the kernel's pick: a port all the same


def test_a_port_share_keeps_every_nth_port_from_the_ith(tmp_path, monkeypatch):
    from voketag_ops.adapters.local import postgres

    ranges = tmp_path / "ip_local_port_range"
    monkeypatch.setattr(postgres, "EPHEMERAL_RANGE_FILE", ranges)
    ranges.write_text("15000\t65000\n")
    monkeypatch.setenv("VOKE_PORT_SHARE", "1/3")
    assert postgres.listen_ports() == [range(1025, 15000, 3), range(65002, 65536, 3)]
    share, picked = postgres.listen_ports(), [postgres.pick_free_port() for _ in range(50)]
    assert [p for p in picked if not any(p in span for span in share)] == [], share
    monkeypatch.setenv("VOKE_PORT_SHARE", "535/536")  # the span above 65000 has no 536th port
    assert postgres.listen_ports() == [range(1559, 15000, 536)]


def test_a_port_share_too_small_is_refused_and_a_full_one_never_listens_outside_it(tmp_path, monkeypatch):
    # Found by review: 59999/60000 kept no port and pick_free_port fell back to bind(0), a port
    # outside the share (another environment's, possibly), breaking the share's promise silently.
    from voketag_ops.adapters.local import postgres
    from voketag_ops.errors import ConfigError

    ranges = tmp_path / "ip_local_port_range"
    monkeypatch.setattr(postgres, "EPHEMERAL_RANGE_FILE", ranges)
    ranges.write_text("1024\t65000\n")  # voke's ports: 65001-65535, 535 of them
    for share, left in (("59999/60000", 0), ("0/30", 18), ("26/27", 19)):
        monkeypatch.setenv("VOKE_PORT_SHARE", share)
        with pytest.raises(ConfigError) as refused:
            postgres.listen_ports()
        said = refused.value.message
        assert said.startswith(f"VOKE_PORT_SHARE={share} leaves {left} of the 535 ports"), said
        assert f"fewer than the {postgres.MIN_SHARE_PORTS}" in said and "\n" not in said
        with pytest.raises(ConfigError):
            postgres.pick_free_port()
    monkeypatch.setenv("VOKE_PORT_SHARE", "0/27")  # 20 ports: the least a share may keep
    [share] = postgres.listen_ports()
    assert len(share) == postgres.MIN_SHARE_PORTS
    with contextlib.ExitStack() as held:
        for port in share:  # every port of the share taken (a port another process holds is too)
            with contextlib.suppress(OSError):
                sock = held.enter_context(socket.socket())
                # as port_is_free binds: without it a port whose last connection lingers in
                # TIME_WAIT (another worker's server just stopped) was left to be picked
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                sock.bind(("127.0.0.1", port))
                sock.listen()
        with pytest.raises(BackendError) as full:
            postgres.pick_free_port()
        said = full.value.message
        assert said.startswith("no free TCP port on 127.0.0.1 in VOKE_PORT_SHARE=0/27's 20 ports"), said
        held.close()  # (one port of it free again: picked, not one outside)
        assert postgres.pick_free_port(avoid=list(share)[1:]) == share[0]


def test_a_voke_subprocess_picks_from_this_workers_share_of_the_ports(tmp_path, monkeypatch, make_environ):
    """Under xdist each worker's servers listen on its own share of voke's ports; a voke a test
    starts as a subprocess (with make_environ's environment) picks from that share too, not
    from all of them, where it could take a port the other worker's environment holds."""
    from voketag_ops.adapters.local import postgres

    monkeypatch.delenv("VOKE_PORT_SHARE", raising=False)
    spans = postgres.listen_ports()  # all of voke's ports
    monkeypatch.setenv("VOKE_PORT_SHARE", "2/5")  # as `_ports_of_this_worker` does for worker gw2 of 5
    code = "from voketag_ops.adapters.local.postgres import pick_free_port as p; print(*(p() for _ in range(50)))"
    done = subprocess.run(
        [sys.executable, "-c", code],
        env=make_environ(tmp_path / "h"),
        capture_output=True,
        text=True,
        check=True,
    )
    picked = [int(port) for port in done.stdout.split()]
    outside = [p for p in picked if not any(p in span and (p - span.start) % 5 == 2 for span in spans)]
    assert len(picked) == 50 and outside == [], spans


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to listen as another user")
def test_a_port_another_user_holds_is_named_with_that_user():
    """`ss -ltnp` shows another user's process to root only: the error says whose it is."""
    from voketag_ops.adapters.local.postgres import pick_free_port, port_taken

    port = pick_free_port()
    os.seteuid(65534)  # a socket belongs to the user that made it
    try:
        squatter = socket.socket()
    finally:
        os.seteuid(0)
    with squatter:
        # (a port just picked may have a connection in TIME_WAIT, as servers do: they bind with it)
        squatter.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        squatter.bind(("127.0.0.1", port))
        squatter.listen()
        message = port_taken(port, "primary").message
    assert f"port {port} (primary) is in use by another process of user nobody;" in message


def test_writes_stream_to_the_replica(home):
    env = local(home)
    with env.primary().connect() as conn:
        conn.execute("create table if not exists t_stream (id int primary key)")
        conn.execute("insert into t_stream values (1) on conflict do nothing")
    replica = env.node("replica")

    def seen():
        with replica.connect() as conn:
            return conn.execute("select to_regclass('t_stream') is not null").fetchone()[0]

    wait_for(seen, "the table on the replica")


def test_a_connection_lost_mid_query_is_a_backend_error_naming_the_node(home):
    # (a node stopped or restarted under a query: `dr failback` once ended as an internal error)
    node = local(home).primary()
    lost = r"^the primary on port \d+ closed the connection: terminating"
    with pytest.raises(BackendError, match=lost), node.connect() as conn:
        conn.execute("select pg_terminate_backend(pg_backend_pid())")
    with (
        pytest.raises(psycopg.errors.DivisionByZero),
        node.connect() as conn,
    ):  # other errors pass as they are
        conn.execute("select 1/0")


def test_the_archive_stays_known_when_the_archivers_statistics_are_reset(voke, home, env_of):
    # A crash recovery discards pg_stat_archiver (the kill -9 below); pg_stat_reset_shared does so on cue.
    from voketag_ops.core.wal import SEGMENT_NAME

    def segments() -> list[Path]:
        return [p for p in (home / "pg" / "archive").iterdir() if SEGMENT_NAME.match(p.name)]

    newest = max(segments(), key=lambda p: (p.stat().st_mtime, p.name)).name
    with local(home).primary().connect() as conn:
        conn.execute("select pg_stat_reset_shared('archiver')")
    archive = voke("env", "status", "--json", environ=env_of(home)).json["result"]["archive"]
    assert archive["stats_reset"].endswith("Z")
    assert archive["last_archived_wal"] >= newest and archive["last_archived_at"].endswith("Z")
    if archive["archived_count"] == 0:  # nothing archived since the reset: the directory says what was
        # (the archiver may copy another segment in between: any segment the directory holds since)
        assert archive["last_archived_wal"] in {p.name for p in segments()}
        assert archive["note"].startswith("archiver statistics reset at ")
    human = voke("env", "status", environ=env_of(home)).stdout
    assert "archive: last -" not in human
    dr_archive = voke("dr", "status", "--json", environ=env_of(home)).json["result"]["archive"]
    assert dr_archive["last_archived_wal"] >= newest and dr_archive["stats_reset"]


@pytest.mark.parametrize("node_name", ["primary", "replica"])
def test_kill_9_is_reported_and_up_recovers_without_data_loss(voke, home, env_of, node_name):
    env = local(home)
    with env.primary().connect() as conn:
        conn.execute("create table if not exists t_crash (id int primary key)")
        conn.execute("insert into t_crash select coalesce(max(id), 0) + 1 from t_crash")
        committed = conn.execute("select count(*) from t_crash").fetchone()[0]
    pid = env.node(node_name).pid()
    os.kill(pid, signal.SIGKILL)
    wait_for(lambda: not env.node(node_name).running, "the postmaster to die")
    status = voke("env", "status", "--json", environ=env_of(home)).json["result"]
    assert status[node_name]["running"] is False
    assert status["healthy"] is False
    # The same keys as when all is well: a script reading them must not fail just then.
    assert {"conninfo", "error", "pid", "timeline"} <= set(status[node_name])
    assert {"failing", "failed_count", "last_archived_wal"} <= set(status["archive"])
    assert status["archive"]["failing"] is (None if node_name == "primary" else False)
    # `dr check` (what cron watches) says what to run, as `doctor` does: the regional-failure
    # runbook quotes its line for a lost primary
    check = voke("dr", "check", environ=env_of(home))
    name = "leader_writable" if node_name == "primary" else "replica_streaming"
    [line] = [x for x in check.stdout.splitlines() if x.startswith(f"FAIL {name}: ")]
    assert check.exit_code == 1 and "`voke env up`" in line, line
    if node_name == "primary":
        runbook = (Path(__file__).resolve().parents[2] / "runbooks" / "regional-failure.md").read_text()
        assert f"Expected on a lost primary: ``{line}``" in " ".join(runbook.split()), line
    result = voke("env", "up", "--json", environ=env_of(home))
    assert result.exit_code == 0, result.stderr
    assert node_name in result.json["result"]["started"]
    with env.primary().connect() as conn:
        assert conn.execute("select count(*) from t_crash").fetchone()[0] == committed
    # `up` returns once the replica streams again: `voke env up && voke dr check` passes at once.
    check = voke("dr", "check", "--json", environ=env_of(home))
    checks = {c["name"]: c for c in check.json["result"]["checks"]}
    assert checks["replica_streaming"]["ok"] is True, checks["replica_streaming"]
    assert checks["replication_lag"]["ok"] is True, checks["replication_lag"]
    assert not result.json["result"]["warnings"]
    after = voke("env", "status", "--json", environ=env_of(home)).json["result"]
    assert after["replica"]["streaming"] is True
    assert (
        after["archive"]["last_archived_wal"] and after["archive"]["last_archived_at"]
    )  # only the statistics were reset


def test_a_stale_pid_file_whose_pid_went_to_another_process_of_the_server_user_does_not_block_up(
    voke, home, env_of
):
    """After a reboot the pid a killed postmaster left in postmaster.pid may be any process's, most
    likely another of the server user's: PostgreSQL refuses to start while it lives; `up` starts."""
    env = local(home)
    leader = env.primary()
    lock = leader.data_dir / "postmaster.pid"
    with killed_with_its_pid_reused(leader) as squatter:
        assert not leader.running  # (the sleep serves nothing)
        result = voke("env", "up", "--json", environ=env_of(home))
        assert result.exit_code == 0, result.stderr
        assert leader.name in result.json["result"]["started"]
        assert leader.pid() not in (None, squatter.pid) and squatter.poll() is None
        live = lock.read_bytes()
        assert leader.clear_stale_lock() is False and lock.read_bytes() == live  # a server's stays


def test_a_lock_is_left_to_a_server_started_by_hand_with_a_relative_d_and_to_one_still_starting(tmp_path):
    """`serves` reads a relative `-D` from the process's working directory (a postmaster's is its
    data directory), so the lock of a server someone started as `pg_ctl -D data start` stays."""
    from voketag_ops.adapters.local.postgres import PgNode

    data = tmp_path / "data"
    data.mkdir()
    node = PgNode("primary", data, 0, tmp_path, tmp_path / "log", runner=None)  # type: ignore[arg-type]
    lock = data / "postmaster.pid"
    code = "import time; time.sleep(900)"
    with (  # argv[0] "postgres", `-D data`, run in data: as the postmaster's /proc/PID/cmdline and cwd
        subprocess.Popen(
            ["postgres", "-c", code, "-D", "data"], executable=sys.executable, cwd=data
        ) as server,
        subprocess.Popen(["sleep", "900"]) as other,
    ):
        try:
            lock.write_text(f"{server.pid}\n{data}\n")
            assert node.clear_stale_lock() is False and lock.exists()
            lock.write_text("")  # created, not yet filled
            assert node.clear_stale_lock() is False and lock.exists()
            lock.write_text(f"{other.pid}\n{data}\n")
            assert node.clear_stale_lock() is True and not lock.exists()
        finally:
            server.kill()
            other.kill()


@pytest.mark.parametrize(
    ("row", "lag_seconds"),
    [
        ((0, None, "streaming"), 0.0),  # caught up on an idle primary: replay_lag is NULL
        ((None, None, "streaming"), 0.0),
        ((19_000_000, None, "streaming"), None),  # megabytes behind and no reply: not known, never 0
        ((4096, 0.25, "streaming"), 0.25),
    ],
)
def test_a_null_replay_lag_is_0_s_only_when_nothing_is_behind(row, lag_seconds):
    from voketag_ops.adapters.local.environment import _lag_from_row

    lag = _lag_from_row(*row)
    assert lag["lag_seconds"] == lag_seconds and lag["lag_bytes"] == (row[0] or 0)


def test_a_frozen_replica_is_named_by_env_up_and_left_alone_and_status_and_check_say_what_to_run(
    voke, home, env_of
):
    # Found by a review following the partial-degradation runbook: with the replica's processes
    # stopped (SIGSTOP, a debugger) and megabytes written on the primary, `env up` said "already
    # running; nothing changed", `env status` showed a lag of 0 s, and `dr check` failed.

    assert voke("env", "up", environ=env_of(home)).exit_code == 0
    env = local(home)
    rebuild = "voke dr failback --no-switch-back --clone --yes"
    with frozen(env.node("replica")) as pids:
        pid = pids[0]  # the postmaster
        with env.primary().connect() as conn:
            conn.execute("create table if not exists t_frozen (id int, pad text)")
            conn.execute("insert into t_frozen select g, repeat('x', 200) from generate_series(1, 20000) g")
        up = voke("env", "up", "--json", environ=env_of(home))
        assert up.exit_code == 0, up.stdout + up.stderr
        result = up.json["result"]
        assert result["already_running"] is False and result["not_answering"] == ["replica"]
        [warning] = [w for w in result["warnings"] if "does not answer" in w]
        assert f"pid {pid}" in warning and "stopped (SIGSTOP" in warning and rebuild in warning
        resume = f"resume them if nothing holds them on purpose: `kill -CONT {' '.join(map(str, pids))}`"
        assert f"leaves it as it is; {resume}, or rebuild" in warning, warning  # as doctor says it
        assert all(is_stopped(p) for p in pids)  # left as it is: an operator may have paused it
        human = voke("env", "up", environ=env_of(home))
        assert "already running" not in human.stdout and "does not answer" in human.stdout
        assert "replica  running, not answering" in human.stdout, human.stdout
        status = voke("env", "status", "--json", environ=env_of(home)).json["result"]
        assert status["healthy"] is False and status["replica"]["lag_bytes"] > 1_000_000
        assert status["replica"]["lag_seconds"] is None, status["replica"]  # not 0 (nor a stale replay_lag)
        shown = voke("env", "status", environ=env_of(home))
        assert shown.exit_code == 0 and " B / ? s" in shown.stdout, shown.stdout + shown.stderr
        check = voke("dr", "check", "--json", environ=env_of(home))
        streaming = next(c for c in check.json["result"]["checks"] if c["name"] == "replica_streaming")
        assert check.exit_code == 1 and not streaming["ok"]
        assert "does not answer" in streaming["message"] and rebuild in streaming["message"]
        assert "env up" not in streaming["message"], streaming["message"]
    again = voke("env", "up", "--json", environ=env_of(home))
    assert again.exit_code == 0 and not again.json["result"]["warnings"], again.stdout
    with env.primary().connect() as conn:
        conn.execute("drop table t_frozen")


def test_a_frozen_leader_is_named_with_its_pids_at_once_by_up_down_status_doctor_and_dr_check(
    voke, home, env_of
):
    # Found by an upgrade review: a primary an older voke's killed network drill left stopped
    # (no record of it) made `env up` time out connecting (exit 4, no hint), `env down` stop
    # the replica and then wait two minutes for the primary, and `doctor` say "not running".
    # And by a later one: `dr check` (what cron watches) said only "not writable (role unknown)".
    assert voke("env", "up", environ=env_of(home)).exit_code == 0
    env = local(home)
    with frozen(env.primary()) as pids:
        pid = pids[0]  # the postmaster
        for command in ("up", "down"):
            refused = voke("env", command, "--json", environ=env_of(home))
            assert refused.exit_code == 5, refused.stdout + refused.stderr
            error = refused.json["error"]
            assert f"primary (pid {pid}) does not answer" in error["message"], error
            assert (
                "stopped (SIGSTOP" in error["message"]
                and f"kill -CONT {' '.join(map(str, pids))}" in error["hint"]
            )
        assert env.node("replica").running  # `down` stopped nothing, the services neither
        status = voke("env", "status", "--json", environ=env_of(home)).json["result"]
        assert "stopped (SIGSTOP" in status["primary"]["error"], status["primary"]
        assert all(s["instance"] for s in status["services"]), status["services"]  # (unhealthy: no database)
        shown = voke("env", "status", environ=env_of(home)).stdout
        assert "not answering" in shown and f"primary (pid {pid}): its process(es)" in shown, shown
        doctor = voke("doctor", "--json", environ=env_of(home))
        [failed] = [c for c in doctor.json["result"]["checks"] if c["name"] == "local environment"]
        assert doctor.exit_code == 1 and f"primary (pid {pid}) does not answer" in failed["detail"], failed
        check = voke("dr", "check", "--max-lag", "60s", environ=env_of(home))
        [line] = [x for x in check.stdout.splitlines() if x.startswith("FAIL leader_writable: ")]
        assert check.exit_code == 1 and f"{failed['detail']}; {failed['hint']}" in line, (
            line
        )  # as doctor says it
        assert "stopped (SIGSTOP" in line and f"`kill -CONT {' '.join(map(str, pids))}`" in line, line
    assert voke("env", "up", environ=env_of(home)).exit_code == 0


def test_down_refuses_at_once_when_a_restored_instance_is_frozen_and_stops_nothing(voke, home, env_of):
    # Found by review: `env down` stopped the services, then waited two minutes on the frozen
    # restored instance's shutdown and ended exit 4 with the servers still running.
    assert voke("env", "up", environ=env_of(home)).exit_code == 0
    restored = voke(
        "dr", "restore", "--to", "-1s", "--name", "r-frozen", "--yes", "--json", environ=env_of(home)
    )
    assert restored.exit_code == 0, restored.stdout + restored.stderr
    from voketag_ops.adapters.local import dr

    env = local(home)
    node = dr.restore_node(env, "r-frozen", restored.json["result"]["port"])
    with frozen(node) as pids:
        pid = pids[0]  # the postmaster
        refused = voke("env", "down", "--json", environ=env_of(home))
        assert refused.exit_code == 5, refused.stdout + refused.stderr
        assert f"the restore r-frozen (pid {pid}) does not answer" in refused.json["error"]["message"]
        status = voke("env", "status", "--json", environ=env_of(home)).json["result"]
        assert status["primary"]["running"] and status["replica"]["running"]
        assert [s["healthy"] for s in status["services"]] == [True] * 3, status["services"]
    assert voke("dr", "discard", "r-frozen", "--yes", environ=env_of(home)).exit_code == 0


def test_doctor_fails_where_env_status_is_unhealthy(voke, home, env_of):
    from voketag_ops.adapters.local.services import _instances_of

    assert voke("env", "up", environ=env_of(home)).exit_code == 0
    well = voke("doctor", "--json", environ=env_of(home))
    assert well.exit_code == 0, well.stdout
    checks = {c["name"]: c["ok"] for c in well.json["result"]["checks"]}
    assert checks["services"] and checks["archiving"] and checks["replication"]
    os.kill(_instances_of(home)[0], signal.SIGKILL)  # a service dies: env status says unhealthy
    wait_for(
        lambda: not voke("env", "status", "--json", environ=env_of(home)).json["result"]["healthy"], "it"
    )
    sick = voke("doctor", "--json", environ=env_of(home))
    failed = {c["name"]: c for c in sick.json["result"]["checks"] if not c["ok"]}
    assert sick.exit_code == 1 and list(failed) == ["services"], sick.stdout
    assert "not healthy" in failed["services"]["detail"] and failed["services"]["hint"] == "voke env up"
    assert voke("env", "up", environ=env_of(home)).exit_code == 0


def test_down_keeps_data_and_up_restarts(voke, home, env_of):
    result = voke("env", "down", "--json", environ=env_of(home))
    assert result.exit_code == 0
    assert result.json["result"]["stopped"] == [
        "admin-service",
        "factory-service",
        "blockchain-service",
        "replica",
        "primary",
    ]
    status = voke("env", "status", "--json", environ=env_of(home)).json["result"]
    assert not status["primary"]["running"] and not status["replica"]["running"]
    for read in (["rotate", "status"], ["rotate", "history"]):  # reads start nothing
        assert voke(*read, "--json", environ=env_of(home)).exit_code == 0
    assert not local(home).node("primary").running
    assert voke("env", "up", environ=env_of(home)).exit_code == 0
    with local(home).primary().connect() as conn:
        assert conn.execute("select count(*) from t_stream").fetchone()[0] == 1


def test_a_down_interrupted_once_the_services_stopped_says_how_to_go_on(voke, home, env_of, monkeypatch):
    # Found by an interrupt sweep: it was a bare "error: interrupted", the servers still running.
    from voketag_ops.adapters.local.environment import LocalEnvironment

    def ctrl_c(self, progress=None):
        raise KeyboardInterrupt

    monkeypatch.setattr(LocalEnvironment, "down", ctrl_c)
    cut = voke("env", "down", "--json", environ=env_of(home))
    monkeypatch.undo()
    assert cut.exit_code == 130, cut.stdout + cut.stderr
    assert cut.json["error"]["message"] == (
        "interrupted: `voke env down` stopped part-way, the local services are stopped, the servers may still run"
    )
    assert (
        cut.json["error"]["hint"]
        == "`voke env down` stops what still runs; `voke env up` starts everything again"
    )
    assert local(home).node("primary").running
    done = voke("env", "down", "--json", environ=env_of(home))
    assert done.exit_code == 0 and done.json["result"]["stopped"] == ["replica", "primary"], done.stdout
    assert voke("env", "up", environ=env_of(home)).exit_code == 0


@pytest.mark.parametrize(
    ("cut_in", "left"),
    [
        ("servers", "while the servers were being started: some may run"),
        ("services", "the servers run, the local services may not all be started"),
    ],
)
def test_an_up_interrupted_part_way_says_what_runs_and_how_to_go_on(
    voke, home, env_of, monkeypatch, cut_in, left
):
    # Found by an interrupt sweep: a bare "error: interrupted" (its event no more), the
    # environment perhaps half up, where an interrupted `env down` says what it left.
    from voketag_ops.adapters.local.services import LocalServiceRuntime

    def ctrl_c(self, *args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(
        *((LocalEnvironment, "up") if cut_in == "servers" else (LocalServiceRuntime, "ensure_started")),
        ctrl_c,
    )
    cut = voke("env", "up", "--json", environ=env_of(home))
    monkeypatch.undo()
    assert cut.exit_code == 130, cut.stdout + cut.stderr
    message = f"interrupted: `voke env up` stopped part-way, {left}"
    assert cut.json["error"]["message"] == message
    assert cut.json["error"]["hint"] == "`voke env up` finishes it; `voke env down` stops what runs"
    ups = voke("audit", "show", "-e", "env.up", "--json", environ=env_of(home)).json["result"]["entries"]
    assert ups[-1]["result"] == "interrupted" and ups[-1]["details"]["error"]["message"] == message
    assert voke("env", "up", environ=env_of(home)).exit_code == 0


def test_a_server_log_over_its_limit_starts_afresh_at_the_next_start_and_keeps_one_before(voke, home, env_of):
    from voketag_ops.adapters.local.postgres import LOG_ROTATE_BYTES

    log = local(home).node("primary").log_file
    assert voke("env", "down", environ=env_of(home)).exit_code == 0
    with log.open("ab") as fh:  # months of a running server's lines
        fh.write(b"x" * LOG_ROTATE_BYTES)
    big = log.stat().st_size
    assert voke("env", "up", environ=env_of(home)).exit_code == 0
    before = log.with_name("primary.log.1")
    assert before.stat().st_size == big
    assert 0 < log.stat().st_size < 1024 * 1024  # this start's lines
    assert voke("env", "down", environ=env_of(home)).exit_code == 0
    assert voke("env", "up", environ=env_of(home)).exit_code == 0  # a small log goes on as it is
    assert before.stat().st_size == big
    assert b"database system is ready" in log.read_bytes().split(b"database system is ready", 1)[1]


def test_port_taken_by_another_process_is_exit_4(voke, home, env_of):
    env = local(home)
    port = env.node("primary").port
    assert voke("env", "down", environ=env_of(home)).exit_code == 0
    with socket.socket() as squatter:
        squatter.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # TIME_WAIT from service health checks
        squatter.bind(("127.0.0.1", port))
        squatter.listen()
        result = voke("env", "up", environ=env_of(home))
        assert result.exit_code == 4
        assert f"port {port}" in result.stderr and "Traceback" not in result.stderr
        assert len(result.stderr.strip().splitlines()) <= 2  # progress line + the error
        # The way out it names works, the squatter still there (a plain destroy would start
        # the primary on that port to export the chain first, and refuse the same way).
        assert "`voke env move-port primary --yes`" in result.stderr
        assert voke("env", "move-port", "primary", "--yes", environ=env_of(home)).exit_code == 0
        assert voke("env", "up", environ=env_of(home)).exit_code == 0
    assert env.node("primary").port != port and env.node("primary").running


def test_a_taken_port_starts_nothing(voke, home, env_of):
    env = local(home)
    port = env.node("replica").port
    assert voke("env", "down", environ=env_of(home)).exit_code == 0
    with socket.socket() as squatter:
        squatter.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        squatter.bind(("127.0.0.1", port))
        squatter.listen()
        result = voke("env", "up", environ=env_of(home))
        assert result.exit_code == 4 and f"port {port} (replica)" in result.stderr
        assert not env.node("primary").running  # exit 4: nothing was started
    assert voke("env", "up", environ=env_of(home)).exit_code == 0


def test_interrupted_backup_leaves_nothing_half_written(home, monkeypatch):
    from voketag_ops.adapters.local import postgres

    env = local(home)
    real_run = postgres.PgRunner.run

    def interrupted(self, name, args, **kwargs):
        if name == "pg_basebackup":
            real_run(self, name, args, **kwargs)
            raise KeyboardInterrupt
        return real_run(self, name, args, **kwargs)

    before = [b.label for b in env.backups()]
    monkeypatch.setattr(postgres.PgRunner, "run", interrupted)
    with pytest.raises(KeyboardInterrupt):
        env.take_base_backup()
    monkeypatch.undo()
    assert [b.label for b in env.backups()] == before
    assert not list((home / "pg" / "backups").glob(".*partial"))
    # What a voke killed mid-backup (kill -9) leaves: swept by the next backup, once no
    # pg_basebackup is streaming any more.
    orphan = home / "pg" / "backups" / ".base-20260101T000000000000Z.partial"
    (orphan / "base").mkdir(parents=True)
    new = env.take_base_backup()
    assert not orphan.exists() and new.label not in before


def test_a_killed_backups_streaming_child_is_ended_and_its_partial_swept(home):
    # kill -9 of voke reaches pg_basebackup (parent-death signal), not the child it forks to
    # stream WAL, which went on writing into its .partial: here, one whose voke is gone.
    import subprocess
    import time

    env = local(home)
    primary = env.primary()
    gone = subprocess.Popen(["true"])
    gone.wait()  # a pid no process has any more: the killed voke's
    orphan = env.backups_dir / ".base-20260102T000000000000Z.partial"
    user = primary.runner.user
    streaming = subprocess.Popen(
        [str(primary.runner.bins.path("pg_basebackup")), "-h", str(primary.socket_dir), "-p", str(primary.port),
         "-U", "postgres", "-D", str(orphan), "-X", "stream", "--max-rate=32k",
         "-d", f"application_name=voke-backup-{gone.pid}"],
        env=primary.runner.env(),
        **({} if user.is_me else {"user": user.uid, "group": user.gid, "extra_groups": []}),
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 30
        while not orphan.exists():
            assert streaming.poll() is None and time.monotonic() < deadline
            time.sleep(0.05)
        new = env.take_base_backup()
        assert streaming.wait(timeout=30) != 0  # its walsender was terminated: it ended
        assert not orphan.exists() and (env.backups_dir / new.label).is_dir()
    finally:
        streaming.kill()
        streaming.wait()


def test_a_clone_interrupted_earlier_does_not_hold_the_replicas_slot_against_the_next(voke, home, env_of):
    # The WAL-streaming child of an interrupted clone outlives voke and keeps the slot active;
    # pg_receivewal on the slot stands in for it.
    import os
    import shutil
    import subprocess

    env = local(home)
    primary, replica = env.primary(), env.node("replica")
    replica.stop()
    shutil.rmtree(replica.data_dir)
    user = primary.runner.user
    spool = home / "orphan-wal"
    spool.mkdir()
    if not user.is_me:
        os.chown(spool, user.uid, user.gid)
    holder = subprocess.Popen(
        [str(primary.runner.bins.path("pg_receivewal")), "-h", str(primary.socket_dir), "-p", str(primary.port),
         "-U", "postgres", "-D", str(spool), "-S", "voke_replica", "--no-loop"],
        env=primary.runner.env(), stderr=subprocess.DEVNULL,
        **({} if user.is_me else {"user": user.uid, "group": user.gid, "extra_groups": []}),
    )  # fmt: skip
    try:
        wait_for(
            lambda: dr_query(
                primary, "select active from pg_replication_slots where slot_name = 'voke_replica'"
            ),
            "the slot to be held",
        )
        up = voke("env", "up", environ=env_of(home))
        assert up.exit_code == 0, up.stderr
        assert holder.wait(timeout=30) is not None
        assert wait_for(lambda: env.status()["replica"].get("streaming"), "the new replica to stream")
    finally:
        holder.kill()
        holder.wait()
        shutil.rmtree(spool, ignore_errors=True)


def dr_query(node, sql):
    with node.connect() as conn:
        row = conn.execute(sql).fetchone()
    return row[0] if row else None


def test_down_and_destroy_refuse_while_a_dr_operation_runs(voke, home, env_of):
    # A drill stopped under its feet could not put back the rows it took as its fault. (On the
    # module's running environment: the refusals leave it as it was, and the next test destroys it.)
    import fcntl

    environ = env_of(home)
    lock = home / "dr" / "dr.lock"
    lock.parent.mkdir(exist_ok=True)
    with open(lock, "w") as held:  # another voke's drill
        held.write("drill pitr pid 4242")
        held.flush()
        fcntl.flock(held, fcntl.LOCK_EX)
        for command in (["env", "down"], ["env", "destroy", "--yes"]):
            refused = voke(*command, "--json", environ=environ)
            assert refused.exit_code == 5, refused.stdout
            assert "another DR operation is running (drill pitr pid 4242)" in refused.json["error"]["message"]
        status = voke("env", "status", "--json", environ=environ).json["result"]
        assert status["primary"]["running"] is True and status["replica"]["running"] is True


def test_destroy_dry_run_changes_nothing_then_destroy(voke, home, env_of):
    plan = voke("env", "destroy", "--dry-run", "--json", environ=env_of(home))
    assert plan.exit_code == 0 and plan.json["result"]["plan"]
    assert local(home).node("primary").running
    result = voke("env", "destroy", "--yes", "--json", environ=env_of(home))
    assert result.exit_code == 0
    assert not (home / "pg").exists() and not (home / "state.json").exists()
    status = voke("env", "status", "--json", environ=env_of(home)).json["result"]
    assert status["initialized"] is False
    events = voke("audit", "show", "--json", "--limit", "1000", environ=env_of(home)).json["result"][
        "entries"
    ]
    kinds = {(e["event_type"], e["result"]) for e in events}
    assert {
        ("env.up", "success"),
        ("env.up", "unchanged"),
        ("env.down", "success"),
        ("env.destroy", "success"),
        ("env.up", "failure"),
    } <= kinds


def test_destroy_of_a_home_never_made_removes_nothing_it_made_itself(voke, tmp_path, env_of):
    done = voke("env", "destroy", "--yes", "--json", environ=env_of(tmp_path / "never"))
    assert done.exit_code == 0 and done.json["result"]["removed"] == [], done.stdout
    assert not (tmp_path / "never" / "services").exists()


def test_missing_binaries_is_exit_3(voke, tmp_path, env_of):
    empty = tmp_path / "bin"
    empty.mkdir()
    result = voke("env", "up", environ=env_of(tmp_path / "h", VOKE_PG_BIN=str(empty)))
    assert result.exit_code == 3
    assert "PostgreSQL binaries missing" in result.stderr and "initdb" in result.stderr


def test_not_enough_disk_is_exit_4(voke, tmp_path, env_of):
    result = voke("env", "up", environ=env_of(tmp_path / "h", VOKE_LOCAL__MIN_FREE_DISK_MB="999999999"))
    assert result.exit_code == 4
    assert "not enough disk space" in result.stderr
    assert not (tmp_path / "h" / "pg").exists() and not (tmp_path / "h" / "state.json").exists()  # nothing


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to hand a directory to another user")
def test_data_directory_owned_by_someone_else_is_exit_3(voke, tmp_path, env_of):
    home = tmp_path / "h"
    (home / "pg").mkdir(parents=True)
    os.chown(home / "pg", 65534, 65534)  # nobody
    result = voke("env", "up", environ=env_of(home))
    assert result.exit_code == 3
    assert "owned by uid 65534" in result.stderr


def test_an_on_demand_start_is_a_whole_env_up(tmp_path, env_of, voke, started_on_demand):
    environ = env_of(started_on_demand)
    assert not started_on_demand.exists()  # never made
    (tmp_path / "b.csv").write_text(
        "tag_id,sku,product_name,factory_id,manufactured_at\nT1,S1,Shoe,F1,2024-01-01T00:00:00Z\n"
    )
    loaded = voke("ingest", "load", str(tmp_path / "b.csv"), "--json", environ=environ)
    assert loaded.exit_code == 0, loaded.stdout
    # off a terminal: the one summary line, which says the environment was started first
    (line,) = loaded.stderr.splitlines()
    assert line.startswith("ingest: loaded b.csv") and line.endswith(
        "the local environment was started first"
    )
    status = voke("env", "status", "--json", environ=environ).json["result"]
    assert status["healthy"] is True  # services and credentials too, not only the servers
    ups = voke("audit", "show", "--event-type", "env.up", "--json", environ=environ)
    assert [e["result"] for e in ups.json["result"]["entries"]] == ["success"]


def test_a_broken_secret_store_blocks_neither_a_load_nor_destroy(tmp_path, env_of, voke, started_on_demand):
    from voketag_ops.adapters.local.postgres import serves

    environ, home = env_of(started_on_demand), started_on_demand
    assert voke("env", "up", environ=environ).exit_code == 0  # (already whole after the on-demand test)
    env = LocalEnvironment(LocalSettings(home=home))
    primary, replica = env.node("primary"), env.node("replica")
    assert serves(primary.pid(), primary.data_dir) and not serves(primary.pid(), replica.data_dir)
    assert voke("env", "down", environ=environ).exit_code == 0
    (home / "secrets.key").rename(tmp_path / "secrets.key")  # the services cannot read their secret
    (tmp_path / "b.csv").write_text(  # (a tag the on-demand test did not load)
        "tag_id,sku,product_name,factory_id,manufactured_at\nT2,S1,Shoe,F1,2024-01-01T00:00:00Z\n"
    )
    loaded = voke("ingest", "load", str(tmp_path / "b.csv"), "--json", environ=environ)
    assert loaded.exit_code == 0 and loaded.json["result"]["status"] == "loaded"  # it needs the database
    assert "warning:" in loaded.stderr
    gone = voke(
        "env", "destroy", "--yes", "--json", environ=environ
    )  # the chain export needs the servers only
    assert gone.exit_code == 0, gone.stdout


def test_without_a_replica_up_names_only_the_primary_and_status_is_healthy(tmp_path, env_of, voke):
    environ = env_of(tmp_path / "h", VOKE_LOCAL__REPLICA="false")
    try:
        up = voke("env", "up", environ=environ)
        assert up.exit_code == 0, up.stderr
        lines = up.stdout.splitlines()
        assert "primary  started" in lines[0] and not any(ln.startswith("replica") for ln in lines)
        assert list(voke("env", "up", "--json", environ=environ).json["result"]["ports"]) == ["primary"]
        status = voke("env", "status", "--json", environ=environ).json["result"]
        assert status["healthy"] is True and status["replica"]["running"] is False
    finally:
        assert voke("env", "destroy", "--yes", "--discard-chain", environ=environ).exit_code == 0


def test_a_home_with_a_space_quote_backslash_percent_and_comma_runs_the_whole_dr_cycle(
    tmp_path, env_of, voke
):
    # Such a home reaches libpq conninfo strings, postgresql.conf values and the archive and
    # restore shell commands: each quoted its own way (a space broke the first, a quote the others).
    import psycopg.conninfo
    from psycopg.conninfo import make_conninfo  # (what PgNode.conninfo builds with)

    for host in ("/a b", "/it's", "/back\\slash", "/a=b", "/plain"):
        assert psycopg.conninfo.conninfo_to_dict(make_conninfo(host=host, port="1"))["host"] == host
    private = tmp_path / "private"
    private.mkdir(mode=0o700)
    environ = env_of(private / "h ö's \\ 100%f, home")  # (macOS: "Application Support")
    try:
        up = voke("env", "up", environ=environ)
        assert up.exit_code == 0, up.stderr
        if os.geteuid() == 0:  # the server user must reach the home: a change outside it is said
            assert f"note: added o+x (search, not read) on {private} so the server user" in up.stdout
            ups = voke("audit", "show", "-e", "env.up", "--json", environ=environ).json["result"]["entries"]
            assert str(private) in ups[-1]["details"]["search_granted"]
        chain = voke("chain", "validate", environ=environ)  # the chain store connects by conninfo
        assert chain.exit_code == 0, chain.stderr
        (tmp_path / "b.csv").write_text(
            "tag_id,sku,product_name,factory_id,manufactured_at\nT1,S1,P,F1,2026-01-01T00:00:00Z\n"
        )
        load = voke("ingest", "load", str(tmp_path / "b.csv"), environ=environ)
        assert load.exit_code == 0, load.stderr
        for step in (["dr", "backup", "--yes"], ["dr", "failover", "--yes"], ["dr", "failback", "--yes"]):
            done = voke(*step, environ=environ)  # archiving, a standby's config, pg_rewind's restore
            assert done.exit_code == 0, (step, done.stdout, done.stderr)
        status = voke("env", "status", "--json", environ=environ).json["result"]
        assert status["archive"]["failing"] is False and status["archive"]["archived_count"] > 0
        assert status["replica"]["streaming"] is True
    finally:
        assert voke("env", "destroy", "--yes", "--discard-chain", environ=environ).exit_code == 0


def test_home_path_too_long_for_a_socket_still_works(tmp_path, voke, make_environ):
    deep = tmp_path / ("d" * 60) / ("e" * 60)
    env = LocalEnvironment(LocalSettings(home=deep, replica=False))
    try:
        env.up()
        socket_dir = Path(env.require_state().socket_dir)
        assert not socket_dir.is_relative_to(deep)
        with env.primary().connect() as conn:
            assert conn.execute("select 1").fetchone() == (1,)
        # Seen from a process with another /tmp (a systemd unit's PrivateTmp): said in one line,
        # by a connection and by doctor, not as a generic connection error.
        away = socket_dir.with_name(socket_dir.name + ".away")
        socket_dir.rename(away)
        try:
            with pytest.raises(BackendError) as refused:
                env.primary().connect()
            assert refused.value.message.endswith(
                f"socket directory {socket_dir} is gone: a different /tmp (systemd PrivateTmp?) or cleaned"
            )
            doctor = voke("doctor", "--json", environ=make_environ(deep, VOKE_LOCAL__REPLICA="false"))
            [check] = [c for c in doctor.json["result"]["checks"] if c["name"] == "local environment"]
            assert check["ok"] is False and check["detail"].startswith(
                f"socket directory {socket_dir} is gone"
            )
            assert "VOKE_HOME of at most 77 bytes" in check["hint"]
        finally:
            away.rename(socket_dir)
    finally:
        env.destroy()


def test_an_interrupted_first_up_is_finished_by_the_next_and_destroy_leaves_no_server(tmp_path, monkeypatch):
    from voketag_ops.adapters.local import postgres

    env = LocalEnvironment(LocalSettings(home=tmp_path / "h"))
    real_run = postgres.PgRunner.run

    def interrupted(self, name, args, **kwargs):
        if name == "pg_basebackup":
            raise KeyboardInterrupt
        return real_run(self, name, args, **kwargs)

    monkeypatch.setattr(postgres.PgRunner, "run", interrupted)
    with pytest.raises(KeyboardInterrupt):
        env.up()
    monkeypatch.undo()
    pid = env.node("primary").pid()
    assert pid is not None  # the primary was started before the interruption
    try:
        report = env.up()  # same state, same ports: it adopts the running primary
        assert "replica" in report.created and env.node("primary").pid() == pid
    finally:
        (tmp_path / "h" / "state.json").unlink()  # even without its state, destroy stops the servers
        env.destroy()
    wait_for(lambda: not Path(f"/proc/{pid}").exists(), "the stray postmaster to stop")


def test_a_fenced_follower_is_left_down_and_a_fenced_leader_blocks_up(tmp_path):
    from voketag_ops.errors import PreconditionError

    env = LocalEnvironment(LocalSettings(home=tmp_path / "h"))
    try:
        env.up()
        env.node("replica").stop()
        (tmp_path / "h" / "dr").mkdir(exist_ok=True)
        (tmp_path / "h" / "dr" / "fenced-replica.json").write_text("{}")
        assert env.is_running()  # a fenced follower is down on purpose
        env.up()
        assert not env.node("replica").running
        (tmp_path / "h" / "dr" / "fenced-replica.json").rename(tmp_path / "h" / "dr" / "fenced-primary.json")
        env.node("primary").stop()
        with pytest.raises(PreconditionError, match="fenced"):  # exit 5: resume first
            env.up()
        assert not env.node("primary").running
    finally:
        env.destroy()
    assert not (tmp_path / "h" / "dr").exists()


def test_two_ups_at_once_make_one_environment(tmp_path, env_of, voke):
    environ = env_of(tmp_path / "h")
    cmd = [sys.executable, "-m", "voketag_ops", "env", "up", "--json"]
    runs = [subprocess.Popen(cmd, env=environ, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
            for _ in range(2)]  # fmt: skip
    try:
        for run in runs:
            _out, err = run.communicate(timeout=300)
            assert run.returncode == 0, err.decode()
        versions = voke("secrets", "versions", "db-app", "--json", environ=environ).json["result"]["versions"]
        assert [v["version"] for v in versions] == [1, 2]  # one set of credentials, not two
    finally:
        assert voke("env", "destroy", "--yes", "--discard-chain", environ=environ).exit_code == 0


def test_a_destroy_cut_short_is_named_and_its_leftovers_never_break_up(tmp_path, env_of, voke):
    environ, home = env_of(tmp_path / "h"), tmp_path / "h"
    assert voke("env", "up", environ=environ).exit_code == 0
    assert voke("env", "down", environ=environ).exit_code == 0
    (home / "state.json").unlink()  # a destroy killed after its first deletion
    shutil.rmtree(home / "pg" / "primary" / "base")
    cut = voke("env", "up", "--json", environ=environ)
    assert cut.exit_code == 7 and "a `voke env destroy` cut short?" in cut.json["error"]["message"]
    status = voke("env", "status", environ=environ)  # says what `env up` will refuse, not "up creates it"
    assert status.exit_code == 0 and "cut short?): finish it with `voke env destroy --yes`" in status.stdout
    doctor = voke("doctor", "--json", environ=environ)
    assert doctor.exit_code == 1
    local = next(c for c in doctor.json["result"]["checks"] if c["name"] == "local environment")
    assert local["ok"] is False and "cut short" in local["detail"], local
    shutil.rmtree(home / "pg")  # killed later: only the secrets and services of a gone cluster are left
    again = voke("env", "up", "--json", environ=environ)
    assert again.exit_code == 0, again.stdout
    assert voke("env", "status", "--json", environ=environ).json["result"]["healthy"] is True
    assert voke("env", "destroy", "--yes", "--discard-chain", environ=environ).exit_code == 0


def test_a_tool_voke_runs_dies_with_voke(tmp_path):
    # kill -9 of voke mid-clone left pg_basebackup writing into the scratch directory.
    script = tmp_path / "parent.py"
    script.write_text(
        "import subprocess, sys\n"
        "from voketag_ops.adapters.local.postgres import parent_death_kills\n"
        "child = subprocess.Popen(['sleep', '60'], preexec_fn=parent_death_kills())\n"
        "print(child.pid, flush=True)\n"
        "child.wait()\n"
    )
    parent = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True)
    assert parent.stdout is not None
    child = int(parent.stdout.readline())
    parent.kill()
    parent.wait()

    def gone() -> bool:
        try:
            return Path(f"/proc/{child}/stat").read_bytes().split()[2] == b"Z"  # dead, not yet reaped
        except OSError:
            return True

    wait_for(gone, "the child to die with its parent")


def shared_memory_of(node) -> tuple[set[str], set[int]]:
    """The /dev/shm files a running postmaster has mapped, and its SysV segment's id."""
    pid = node.pid()
    maps = Path(f"/proc/{pid}/maps").read_text()
    files = {line.split()[-1] for line in maps.splitlines() if "/dev/shm/PostgreSQL." in line}
    shmid = int((node.data_dir / "postmaster.pid").read_text().splitlines()[6].split()[1])
    return files, {shmid}


def shared_memory_now() -> tuple[set[str], set[int]]:
    files = {str(p) for p in Path("/dev/shm").glob("PostgreSQL.*")}
    rows = Path("/proc/sysvipc/shm").read_text().splitlines()[1:]
    return files, {int(row.split()[1]) for row in rows}


def test_a_crashed_environment_destroyed_without_its_chain_leaves_no_shared_memory(tmp_path, env_of, voke):
    """Servers killed outright (kill -9) leave their segments, which only a start on the same
    data directory removes: `--discard-chain` starts nothing, and the directories go."""
    home = tmp_path / "h"
    env = local(home)
    env.up()
    ours_files: set[str] = set()
    ours_ids: set[int] = set()
    for name in ("primary", "replica"):
        files, ids = shared_memory_of(env.node(name))
        ours_files |= files
        ours_ids |= ids
    before_files, before_ids = shared_memory_now()
    assert ours_files and ours_files <= before_files and ours_ids <= before_ids
    for name in ("primary", "replica"):
        os.kill(env.node(name).pid(), signal.SIGKILL)  # only the postmasters, as a crash would
    wait_for(lambda: not any(env.node(n).running for n in ("primary", "replica")), "the postmasters to die")
    result = voke("env", "destroy", "--yes", "--discard-chain", environ=env_of(home))
    assert result.exit_code == 0, result.stderr
    after_files, after_ids = shared_memory_now()
    assert not ours_files & after_files and not ours_ids & after_ids


def test_the_restore_command_fetches_whole_segments_and_says_nothing_of_missing_ones(tmp_path):
    """A standby asks the archive for every segment past its end; each missing one wrote two shell
    errors (`cannot open`, `Illegal number`) into the server log, its most common lines."""
    import subprocess

    env = local(tmp_path / "home")
    env.archive_dir.mkdir(parents=True)
    EnvState(ports={"primary": 30001, "replica": 30002}, wal_segment_mb=1).save(env.state_file)
    whole, short = "000000010000000000000004", "000000010000000000000005"
    (env.archive_dir / whole).write_bytes(b"\0" * 1024 * 1024)  # the environment's segment size
    (env.archive_dir / short).write_bytes(b"\0" * 1000)  # cut short: recovery must not be handed it
    other = "000000010000000000000007"
    (env.archive_dir / other).write_bytes(b"\0" * 16 * 1024 * 1024)  # another cluster's size: not ours

    def fetch(name):
        out = tmp_path / "pg_wal" / name
        out.parent.mkdir(exist_ok=True)
        command = env.restore_command().replace("%f", name).replace("%p", str(out))
        done = subprocess.run(["sh", "-c", command], capture_output=True, text=True, check=False)
        return done.returncode, done.stderr, out.exists()

    assert fetch(whole) == (0, "", True)
    assert fetch(short) == (1, "", False)
    assert fetch("000000010000000000000006") == (1, "", False)  # not archived (yet)
    assert fetch(other) == (1, "", False)
    assert fetch("00000002.history")[1:] == ("", False)


def test_an_environment_made_before_the_segment_size_was_recorded_keeps_initdbs_16_mb(tmp_path):
    """Its state.json has no wal_segment_mb: its clusters have initdb's default, whatever the setting."""
    env = LocalEnvironment(LocalSettings(home=tmp_path / "home", wal_segment_mb=2))
    env.home.mkdir()
    EnvState(ports={"primary": 30001, "replica": 30002}).save(env.state_file)
    raw = json.loads(env.state_file.read_text())
    del raw["wal_segment_mb"]
    env.state_file.write_text(json.dumps(raw))
    state = env.require_state()
    assert state.wal_segment_mb == 16 and state.wal_segment_size == 16 * 1024 * 1024
    assert f"-eq {16 * 1024 * 1024} ||" in env.restore_command()
    raw["wal_segment_mb"] = 3  # no size initdb takes: a hand edit
    env.state_file.write_text(json.dumps(raw))
    with pytest.raises(ConfigError, match="wal_segment_mb is not a power of two"):
        env.require_state()
