"""`voke dr failover`, split brain, `voke dr fence` and `voke dr failback` against real
PostgreSQL, then the drills (which fail over and back themselves). The module runs its
own environment and walks it through the scenarios in file order; every test leaves one
writable leader with a streaming standby for the next."""

from __future__ import annotations

import contextlib
import json

import pytest

from voketag_ops.adapters.local import dr
from voketag_ops.adapters.local.environment import LocalEnvironment
from voketag_ops.config import LocalSettings
from voketag_ops.testing.local import frozen, killed_with_its_pid_reused


@pytest.fixture(scope="module")
def topology(tmp_path_factory, make_environ_module):
    """The whole local platform (PostgreSQL, secrets, services), so failovers repoint real services."""
    from voketag_ops.config import load_config
    from voketag_ops.workflows.env import LocalPlatform

    path = tmp_path_factory.mktemp("dr-topology") / "home"
    platform = LocalPlatform(load_config(environ=make_environ_module(path), cwd=path).settings)
    try:
        platform.up()
        yield platform
    finally:
        _tear_down(platform)


def _tear_down(platform):
    for restored in dr.list_restores(platform.env):
        dr.discard_restore(platform.env, restored["name"])
    (platform.env.home / "dr" / "operation.json").unlink(missing_ok=True)  # (a failed test's)
    platform.destroy(discard_chain=True)


@pytest.fixture(scope="module")
def home(topology):
    return topology.env.home


@pytest.fixture(autouse=True)
def a_failed_test_leaves_a_new_environment(request, topology):
    """Each test hands the next one leader and a streaming standby; one that fails may not (an
    unfinished failback, a stopped node), and every later test would fail on what it left. A
    failure rebuilds the environment, so the report names the test that failed, not 28 more."""
    yield
    report = getattr(request.node, "rep_call", None)
    if report is not None and report.failed:
        _tear_down(topology)
        topology.up()


@pytest.fixture(scope="module")
def make_environ_module(make_environ):
    def make(home, **extra):
        env = make_environ(
            home,
            VOKE_LOCAL__ARCHIVE_TIMEOUT="5",
            VOKE_ROTATION__TEST_INTERVAL="0.2",
            VOKE_ROTATION__HEALTH_TIMEOUT="20",
            VOKE_LOCAL__SERVICE_DRAIN_SECONDS="0.5",  # as the shared platform's (conftest FAST_ROTATION)
            # a standby that cannot replay (split brain, a paused or fenced one) is waited out for
            # this long by every status, check and steady-state probe; the module's lag limits are
            # the product's (60 s), far above it, so a heartbeat replayed late on a loaded machine
            # still passes them
            VOKE_DR__LAG_PROBE_SECONDS="1",
            # the canary's lead-in before each fault (1 s by default): 4 writes before it are
            # enough for every measure, and ~40 drills run here
            VOKE_DR__CANARY_SECONDS="0.4",
        )
        env.update(extra)
        return env

    return make


@pytest.fixture
def env(home):
    return LocalEnvironment(LocalSettings(home=home, archive_timeout=5))


@pytest.fixture
def environ(home, make_environ_module):
    return make_environ_module(home)


def services(environ):
    """name -> (healthy, secret version) of the local services, as `voke env status` sees them."""
    from voketag_ops.config import load_config
    from voketag_ops.workflows.env import LocalPlatform

    status = LocalPlatform(load_config(environ=environ).settings).status()
    return {s["name"]: (s["healthy"], s["secret_version"]) for s in status["services"]}


def rows(node, table="orders"):
    with node.connect() as conn:
        return [r[0] for r in conn.execute(f"select id from {table} order by id")]


def add_rows(node, first, count, table="orders"):
    with node.connect() as conn:
        conn.execute(f"create table if not exists {table} (id int primary key, note text)")
        for i in range(first, first + count):
            conn.execute(f"insert into {table} values (%s, 'acked')", (i,))


def test_failover_needs_yes_and_dry_run_changes_nothing(voke, environ, env):
    refused = voke("dr", "failover", environ=environ)
    assert refused.exit_code == 2 and "--yes" in refused.stderr
    plan = voke("dr", "failover", "--dry-run", "--json", environ=environ)
    assert plan.exit_code == 0
    assert plan.json["result"]["old_leader"] == "primary" and plan.json["result"]["new_leader"] == "replica"
    assert env.require_state().leader == "primary" and env.node("primary").running


def test_dry_runs_are_refused_as_their_runs_are_never_waiting_for_the_lock(
    voke, environ, env, held_by_another_voke
):
    # A dry run's plan says the run would go ahead: while the run would be refused (exit 5), so is it.
    commands = [["backup"], ["failover"], ["failback"], ["fence", "replica"], ["restore", "--to", "-1m"]]
    with held_by_another_voke(dr.dr_dir(env) / "dr.lock", "drill failover pid 1"):
        for args in commands:
            refused = voke("dr", *args, "--dry-run", "--json", environ=environ)
            assert refused.exit_code == 5, (args, refused.stdout)
            assert refused.json["error"]["message"].startswith("another DR operation is running (drill")
    record = dr.dr_dir(env) / "operation.json"
    record.write_text(json.dumps({"operation": "failback", "resume": "voke dr failback --yes", "done": []}))
    try:  # an interrupted failback, which only failback resumes
        for args in [a for a in commands if a != ["failback"]]:
            refused = voke("dr", *args, "--dry-run", "--json", environ=environ)
            assert refused.exit_code == 5, (args, refused.stdout)
            message = refused.json["error"]["message"]
            assert "an interrupted `voke dr failback` must be finished first" in message
    finally:
        record.unlink()
    assert voke("dr", "backup", "--dry-run", environ=environ).exit_code == 0


def test_a_failover_waits_for_an_unfinished_rotation(voke, environ, env, held_by_another_voke):
    # Repointing the secret under a rotation would race it, and its rollback would put back
    # versions naming the fenced leader (found by a review: a secret left naming a dead port).
    import subprocess
    import sys

    from voketag_ops.workflows.rotate import FAULT_EXIT_CODE

    crashed = subprocess.run(
        [sys.executable, "-m", "voketag_ops", "rotate", "db-password", "--yes"],
        env={**environ, "VOKE_FAULT_CRASH_AFTER": "set_target"},
        capture_output=True,
        text=True,
        check=False,
    )
    assert crashed.returncode == FAULT_EXIT_CODE, crashed.stderr
    refused = voke("dr", "failover", "--yes", "--json", environ=environ)
    assert refused.exit_code == 5 and "a rotation of db-app is unfinished" in refused.json["error"]["message"]
    drill = voke("drill", "run", "failover", "--yes", "--json", environ=environ)  # before its fault
    assert drill.exit_code == 5 and "a rotation of db-app is unfinished" in drill.json["error"]["message"]
    for scenario in ("failover", "failback", "all"):  # their dry runs as well, as `dr failover`'s
        dry = voke("drill", "run", scenario, "--dry-run", "--json", environ=environ)
        assert dry.exit_code == 5 and "a rotation of db-app is unfinished" in dry.json["error"]["message"]
    assert voke("drill", "run", "pitr", "--dry-run", environ=environ).exit_code == 0  # moves no leader
    # nor does a move of the leader's port go under it: its pending version names the old port
    own = str(env.node("primary").port)
    moved = voke("env", "move-port", "primary", "--port", own, "--yes", "--json", environ=environ)
    assert moved.exit_code == 5 and "a rotation of db-app is unfinished" in moved.json["error"]["message"]
    assert env.require_state().leader == "primary" and env.node("primary").running  # nothing changed
    assert voke("rotate", "resume", "--yes", environ=environ).exit_code == 0
    # and the other way round: no rotation while a drill (another process) holds the DR lock
    with held_by_another_voke(dr.dr_dir(env) / "dr.lock", "drill failover pid 1"):
        during = voke("rotate", "db-password", "--yes", "--json", environ=environ)
    assert during.exit_code == 5 and "another DR operation is running (drill failover" in during.stdout


def test_failover_fences_promotes_and_loses_no_acknowledged_write(voke, environ, env):
    import os
    import signal
    import time

    add_rows(env.primary(), 1, 20)
    registry = json.loads((env.home / "services" / "registry.json").read_text())
    os.kill(registry["services"]["blockchain-service"]["active"]["pid"], signal.SIGTERM)  # a service down
    deadline = time.monotonic() + 10
    while services(environ)["blockchain-service"][0]:
        assert time.monotonic() < deadline
        time.sleep(0.1)
    result = voke("dr", "failover", "--yes", "--json", environ=environ)
    assert result.exit_code == 0, result.stderr
    r = result.json["result"]
    assert (r["old_leader"], r["new_leader"]) == ("primary", "replica")
    assert [s["ok"] for s in r["steps"]] == [True] * len(r["steps"])
    assert env.require_state().leader == "replica"
    assert not env.node("primary").running
    repoint = next(step for step in r["steps"] if step["name"] == "repoint services")["detail"]
    new_port = env.node("replica").port
    assert [x["port"] for x in repoint["repointed"]] == [new_port]
    assert repoint["redeployed"] == ["admin-service", "factory-service"]
    assert repoint["repinned"] == ["blockchain-service"]  # started there by the next `env up`
    version = repoint["repointed"][0]["versions"]["current"]
    assert voke("env", "up", environ=environ).exit_code == 0  # not back at a version naming the old leader
    assert services(environ) == {
        name: (True, version) for name in ("admin-service", "blockchain-service", "factory-service")
    }
    new = env.node("replica")
    assert dr.in_recovery(new) is False
    assert rows(new) == list(range(1, 21))
    add_rows(new, 21, 5)  # the new leader takes writes
    status = voke("dr", "status", "--json", environ=environ).json["result"]
    assert status["leader"]["name"] == "replica" and status["leader"]["timeline"] >= 2
    assert status["fenced"] == ["primary"] and status["split_brain"] is False
    events = voke("dr", "history", "--json", environ=environ).json["result"]["events"]
    assert events[-1]["action"] == "dr.failover" and events[-1]["result"] == "success"


def test_env_up_leaves_the_fenced_primary_down(voke, environ, env):
    # The rest of the platform keeps working during the incident (rotations, ingestion); the
    # fenced former primary stays down until `dr failback` rebuilds it as a standby.
    result = voke("env", "up", environ=environ)
    assert result.exit_code == 0 and "fenced" in result.stdout and "failback" in result.stdout
    assert not env.node("primary").running
    assert voke("rotate", "status", "--json", environ=environ).exit_code == 0
    status = voke("env", "status", "--json", environ=environ).json["result"]  # the leader is node replica
    assert status["primary"]["name"] == "replica" and status["replica"]["name"] == "primary"
    assert status["primary"]["timeline"] == dr.current_timeline(env.node("replica"))  # not the checkpoint's
    assert status["primary"]["conninfo"].endswith("dbname=voketag")  # the runbook's copy-back uses it
    # regional-failure.md's copy-aside picks the node by name: the `primary` key is the new leader
    fenced = next(n for n in (status["primary"], status["replica"]) if n["name"] == "primary")
    assert fenced["data_dir"] == str(env.node("primary").data_dir) != status["primary"]["data_dir"]
    rows = [
        line.split("│")[1].strip()
        for line in voke("env", "status", environ=environ).stdout.splitlines()
        if line.count("│") > 3
    ]
    assert [r for r in rows if r != "node"] == ["replica", "primary"], rows  # named as `dr fence` takes them
    # nothing to compare with the fenced standby: said at once, not after a 60 s wait to catch up
    fenced = voke("dr", "verify", "--source", "standby", "--target", "leader", environ=environ)
    assert fenced.exit_code == 5 and "is not running as a standby" in fenced.stderr
    # and no standby to fail over to: the dry run says so, as the run does
    for args in (("--dry-run",), ("--yes",)):
        refused = voke("dr", "failover", *args, environ=environ)
        assert refused.exit_code == 5 and "not running as a standby; nothing to promote" in refused.stderr


def test_split_brain_is_detected_reported_and_fenced(voke, environ, env):
    old = env.node("primary")
    old.start()  # an operator starts the old primary by hand: it comes up writable
    add_rows(old, 1000, 1)  # and takes a write the leader will never see
    status = voke("dr", "status", "--json", environ=environ).json["result"]
    assert status["split_brain"] is True
    assert sorted(status["writable_nodes"]) == ["primary", "replica"]
    detail = status["split_brain_detail"]
    assert detail["primary"]["timeline"] != detail["replica"]["timeline"]
    check = voke("dr", "check", environ=environ)
    assert check.exit_code == 1
    assert (
        "FAIL split_brain: split brain: primary writable beside the leader replica; fence with `voke dr fence primary --yes`"
        in check.stdout
    )
    for args in (("--yes",), ("--dry-run",)):  # the dry run refuses as the run does
        failback = voke("dr", "failback", *args, environ=environ)
        assert failback.exit_code == 5 and "voke dr fence primary" in failback.stderr
    leader_refused = voke("dr", "fence", "replica", "--yes", environ=environ)
    assert leader_refused.exit_code == 5 and "is the leader" in leader_refused.stderr
    fenced = voke("dr", "fence", "primary", "--yes", "--json", environ=environ)
    assert fenced.exit_code == 0, fenced.stderr
    assert not old.running
    assert voke("dr", "status", "--json", environ=environ).json["result"]["split_brain"] is False


def test_failback_rewinds_the_diverged_primary_and_switches_back(voke, environ, env, monkeypatch):
    from voketag_ops import clock
    from voketag_ops.testing import SteppedClock

    leader_rows = rows(env.node("replica"))
    # NTP sets the clock back an hour during the promotion: the write pause is still what the
    # monotonic clock measured (it was -3600 s: two wall-clock readings outside a drill).
    wall, promote = SteppedClock(), dr.promote

    def stepped(node, **kw):
        wall.step(-3600)
        return promote(node, **kw)

    monkeypatch.setattr(dr, "promote", stepped)
    with clock.using(wall):
        result = voke("dr", "failback", "--yes", "--json", environ=environ)
    monkeypatch.undo()
    assert result.exit_code == 0, result.stderr
    r = result.json["result"]
    assert r["rebuilt"]["method"] == "pg_rewind"
    assert r["switched_back"] is True and (r["leader"], r["standby"]) == ("primary", "replica")
    assert wall.offset and 0 <= r["switchover"]["write_pause_seconds"] < 600, r["switchover"]
    primary, replica = env.node("primary"), env.node("replica")
    assert dr.in_recovery(primary) is False and dr.in_recovery(replica) is True
    assert rows(primary) == leader_rows  # the split-brain write (id 1000) was rewound away
    dr.wait_caught_up(primary, replica, timeout=30)
    assert rows(replica) == leader_rows
    status = voke("dr", "status", "--json", environ=environ).json["result"]
    assert status["leader"]["name"] == "primary" and status["standby"]["streaming"] is True
    assert status["leader"]["timeline"] >= 3 and status["fenced"] == []
    check = voke("dr", "check", "--json", environ=environ)
    assert check.exit_code == 0, check.stdout
    assert all(healthy for healthy, _ in services(environ).values())


def test_failback_with_the_home_node_leading_never_moves_the_leader(voke, environ, env):
    timeline = voke("dr", "status", "--json", environ=environ).json["result"]["leader"]["timeline"]
    dry = voke("dr", "failback", "--dry-run", "--json", environ=environ).json["result"]["plan"]
    assert dry[0] == "rebuild replica as a standby of primary (none: it streams from the leader already)"
    again = voke("dr", "failback", "--yes", "--json", environ=environ)  # a rerun: nothing to fail back
    assert again.exit_code == 0, again.stderr
    assert again.json["result"]["switched_back"] is False and again.json["result"]["leader"] == "primary"
    streaming = voke("dr", "fence", "replica", "--yes", environ=environ)  # read-only: no split brain
    assert streaming.exit_code == 5 and "running as a standby" in streaming.stderr
    assert dr.in_recovery(env.node("replica")) is True  # nothing was changed
    env.node("replica").stop()  # a standby that went down: fenced (kept down) beside the home leader
    fenced = voke("dr", "fence", "replica", "--yes", environ=environ)
    assert fenced.exit_code == 0, fenced.stderr
    plan = voke("dr", "failback", "--dry-run", "--json", environ=environ).json["result"]["plan"]
    assert "no switchover: primary is the home leader already" in plan
    back = voke("dr", "failback", "--yes", "--json", environ=environ)  # the runbook: back as a standby
    assert back.exit_code == 0, back.stderr
    assert back.json["result"]["switched_back"] is False
    status = voke("dr", "status", "--json", environ=environ).json["result"]
    assert status["leader"]["name"] == "primary" and status["leader"]["timeline"] == timeline
    assert status["standby"]["streaming"] is True and status["fenced"] == []


def test_an_interrupted_failover_is_recorded_and_resumed(voke, environ, env, monkeypatch):
    from voketag_ops.errors import BackendError

    real_promote, real_fence = dr.promote, dr.fence_node

    def cut(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(dr, "fence_node", cut)  # stopped before it changed anything
    early = voke("dr", "failover", "--yes", "--json", environ=environ)
    assert early.exit_code == 130, early.stdout
    monkeypatch.setattr(dr, "fence_node", real_fence)
    up = voke("env", "up", environ=environ)  # starts what it can, and says what is left to do
    assert up.exit_code == 0, up.stderr
    assert "warning: an interrupted `voke dr failover` is recorded; finish it with " in up.stdout
    assert voke("env", "up", "--json", environ=environ).json["result"]["warnings"] == [
        "an interrupted `voke dr failover` is recorded; finish it with `voke dr failover --yes`"
    ]

    def unreachable(node, **kwargs):
        raise BackendError(f"cannot connect to {node.name}")

    monkeypatch.setattr(dr, "promote", unreachable)  # the leader is fenced already: not "nothing changed"
    failed = voke("dr", "failover", "--yes", "--json", environ=environ)
    assert failed.exit_code == 7, failed.stdout
    error = failed.json["error"]
    assert "stopped part-way (done: planned, fenced)" in error["message"]
    assert error["hint"].startswith("once that is fixed, `voke dr failover --yes` resumes it")

    def interrupted(node, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(dr, "promote", interrupted)  # and its resume interrupted in turn
    result = voke("dr", "failover", "--yes", "--json", environ=environ)
    assert result.exit_code == 130
    assert result.json["error"]["hint"].startswith("`voke dr failover --yes` resumes it")
    monkeypatch.setattr(dr, "promote", real_promote)
    pending = json.loads((env.home / "dr" / "operation.json").read_text())
    assert pending["operation"] == "failover" and pending["done"] == ["planned", "fenced"]
    status = voke("dr", "status", "--json", environ=environ).json["result"]
    assert status["unfinished_operation"]["resume"] == "voke dr failover --yes"
    check = voke("dr", "check", environ=environ)
    assert check.exit_code == 1 and "FAIL unfinished_operation" in check.stdout
    blocked = voke("dr", "failback", "--yes", environ=environ)
    assert blocked.exit_code == 5 and "voke dr failover --yes" in blocked.stderr
    events = voke("dr", "history", "--json", environ=environ).json["result"]["events"]
    assert [e["result"] for e in events if e["action"] == "dr.failover"][-1] == "interrupted"
    assert events[-1]["action"] == "dr.failback" and events[-1]["result"] == "failure"
    backups = sorted(p.name for p in env.backups_dir.iterdir())
    for other in (
        ["dr", "backup"],
        ["dr", "restore", "--to", "-1s", "--name", "mid"],
        ["dr", "fence", "replica"],
        ["drill", "run", "pitr"],
    ):
        refused = voke(*other, "--yes", environ=environ)  # the topology is half changed under them
        assert refused.exit_code == 5 and "voke dr failover --yes" in refused.stderr, (other, refused.stderr)
    assert sorted(p.name for p in env.backups_dir.iterdir()) == backups
    assert voke("dr", "restores", "--json", environ=environ).json["result"]["restores"] == []
    # Someone starts the fenced old leader meanwhile: it is the one to stop, and fencing it is
    # never refused (the runbook's first step); the resume fences it again rather than finish
    # with two primaries.
    old = env.node("primary")
    old.start()
    fenced = voke("dr", "fence", "primary", "--yes", "--json", environ=environ)
    assert fenced.exit_code == 0, fenced.stderr
    assert fenced.json["result"]["next"].startswith(
        "`voke dr failover --yes` finishes the interrupted failover"
    )
    assert not old.running
    old.start()
    resumed = voke("dr", "failover", "--yes", "--json", environ=environ)
    assert resumed.exit_code == 0, resumed.stderr
    assert resumed.json["result"]["resumed"] is True
    first_step = resumed.json["result"]["steps"][0]["name"]
    assert first_step == "fence primary again (it was started after the fence)"
    assert not old.running
    assert env.require_state().leader == "replica" and not (env.home / "dr" / "operation.json").exists()
    assert voke("dr", "status", "--json", environ=environ).json["result"]["split_brain"] is False


def test_failback_by_fresh_clone_interrupted_mid_switchover_resumes(voke, environ, env, monkeypatch):
    real_promote = dr.promote

    def interrupted(node, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(dr, "promote", interrupted)  # Ctrl-C after the leader stopped, before promotion
    result = voke("dr", "failback", "--clone", "--yes", "--json", environ=environ)
    assert result.exit_code == 130
    monkeypatch.setattr(dr, "promote", real_promote)
    pending = json.loads((env.home / "dr" / "operation.json").read_text())
    assert pending["operation"] == "failback" and "switchover_started" in pending["done"]
    assert pending["detail"]["rebuilt"]["method"] == "clone"
    shown = voke("dr", "status", environ=environ)  # the step records are not words to print
    assert shown.exit_code == 0, shown.stderr
    assert "unfinished voke dr failback: resume with `voke dr failback --clone --yes`\n" in shown.stdout
    assert not env.node("replica").running  # the leader was stopped for the switchover
    up = voke("env", "up", "--json", environ=environ)  # a reboot: the leader runs again, the standby
    assert up.exit_code == 0, up.stdout  # reconnects to it only after its retry interval
    assert "voke dr failback --clone --yes" in up.json["result"]["warnings"][0]
    assert env.node("replica").running
    resumed = voke("dr", "failback", "--yes", "--json", environ=environ)
    assert resumed.exit_code == 0, resumed.stderr
    r = resumed.json["result"]
    assert r["resumed"] is True and r["rebuilt"]["method"] == "clone" and r["leader"] == "primary"
    assert env.require_state().leader == "primary" and dr.in_recovery(env.node("replica")) is True
    assert voke("dr", "check", environ=environ).exit_code == 0


# Where a failover can be cut short once it fenced the leader: in each later step.
FAILOVER_CRASH_POINTS = {
    "promoting": ("planned", "fenced"),
    "recording the leader": ("planned", "fenced", "promoted"),
    "repointing the services": ("planned", "fenced", "promoted", "leader"),
    "verifying a write": ("planned", "fenced", "promoted", "leader", "services"),
}


@pytest.mark.parametrize("point", list(FAILOVER_CRASH_POINTS))
def test_a_failover_cut_short_by_a_host_crash_past_its_fence_is_finished_by_its_resume(
    voke, environ, env, monkeypatch, point
):
    # Found by review: after a crash of the whole host the resume waited on the stopped standby
    # (exit 7) while `env up` refused to start anything until the failover was finished.
    from voketag_ops.config import load_config
    from voketag_ops.workflows import dr as dr_flow
    from voketag_ops.workflows.env import LocalPlatform

    steps = {
        "promoting": (dr, "promote", lambda node: True),
        "recording the leader": (LocalEnvironment, "set_leader", lambda _env, name: name == "replica"),
        "repointing the services": (dr_flow, "repoint_services", lambda _s, _e, node: True),
        "verifying a write": (dr, "probe_write", lambda node: True),
    }
    interrupt_when(monkeypatch, *steps[point])
    cut = voke("dr", "failover", "--yes", "--json", environ=environ)
    monkeypatch.undo()
    assert cut.exit_code == 130, cut.stdout
    assert (
        tuple(json.loads((env.home / "dr" / "operation.json").read_text())["done"])
        == FAILOVER_CRASH_POINTS[point]
    )
    LocalPlatform(load_config(environ=environ).settings).runtime().stop_all()  # the host goes down
    for name in ("primary", "replica"):
        env.node(name).stop(mode="immediate")
    # doctor hints the resume alone: `env up` refuses, and `dr failback` waits for the failover
    doctor = voke("doctor", "--json", environ=environ)
    local = next(c for c in doctor.json["result"]["checks"] if c["name"] == "local environment")
    assert local["hint"] == "voke dr failover --yes", local
    # and so does `dr check` (what cron watches), of the standby too: not `env up`, nor a failback
    check = voke("dr", "check", environ=environ)
    [line] = [x for x in check.stdout.splitlines() if x.startswith("FAIL replica_streaming: ")]
    assert check.exit_code == 1 and line.endswith("; finish the failover with `voke dr failover --yes`"), line
    assert "voke env up" not in line and "failback" not in line, line
    up = voke("env", "up", "--json", environ=environ)  # never services pinned to the fenced old leader
    assert up.exit_code == 5, up.stdout
    assert "finish it with `voke dr failover --yes` before anything starts" in up.json["error"]["message"]
    assert not env.node("replica").running
    resumed = voke("dr", "failover", "--yes", "--json", environ=environ)  # starts what it needs
    assert resumed.exit_code == 0, resumed.stdout + resumed.stderr
    started = resumed.json["result"]["steps"][0]["name"]
    assert started == (
        "start replica as a standby"
        if point == "promoting"
        else "start replica (promoted by the interrupted run)"
    )
    assert env.require_state().leader == "replica" and not (env.home / "dr" / "operation.json").exists()
    assert voke("env", "up", environ=environ).exit_code == 0  # the services, repinned to the new leader
    assert all(healthy for healthy, _version in services(environ).values())
    assert voke("dr", "failback", "--yes", environ=environ).exit_code == 0
    assert voke("dr", "check", environ=environ).exit_code == 0


def interrupt_when(monkeypatch, owner, name, when):
    """Ctrl-C in OWNER.NAME (a step of ours) on the first call WHEN(*args) picks; every other
    call runs as usual (a drill's clean-up resumes in the same process)."""
    real, fired = getattr(owner, name), []

    def fault(*args, **kwargs):
        if not fired and when(*args):
            fired.append(name)
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(owner, name, fault)


# Where a failback's switchover (promoting primary) can be cut short after its promotion:
# before the leader is recorded, after it (before `switched`), and once switched.
SWITCHOVER_CRASH_POINTS = {
    "recording the leader": (LocalEnvironment, "set_leader", lambda _env, name: name == "primary"),
    "creating the slot": (dr, "ensure_slot", lambda node: node.name == "primary"),
    "reading the timeline": (dr, "current_timeline", lambda node: node.name == "primary"),
    "repointing the services": ("repoint", "repoint_services", lambda _s, _e, node: node.name == "primary"),
    "restarting the old leader": (dr, "write_standby_config", lambda _e, node, _up: node.name == "replica"),
}


@pytest.mark.parametrize("point", list(SWITCHOVER_CRASH_POINTS))
def test_a_failback_cut_short_after_its_promotion_is_finished_by_its_resume(
    voke, environ, env, monkeypatch, point
):
    from voketag_ops.workflows import dr as dr_flow

    assert voke("dr", "failover", "--yes", environ=environ).exit_code == 0  # replica leads, primary fenced
    owner, name, when = SWITCHOVER_CRASH_POINTS[point]
    interrupt_when(monkeypatch, dr_flow if owner == "repoint" else owner, name, when)
    cut = voke("dr", "failback", "--yes", "--json", environ=environ)
    monkeypatch.undo()
    assert cut.exit_code == 130, cut.stdout
    assert cut.json["error"]["hint"].startswith("`voke dr failback --yes` resumes it")
    pending = json.loads((env.home / "dr" / "operation.json").read_text())
    assert "switchover_started" in pending["done"] and dr.in_recovery(env.node("primary")) is False
    # (the leader recorded already or not: the resume takes its roles from the record, and
    # never waits on the stopped old leader to catch up); its dry run says so
    plan = voke("dr", "failback", "--dry-run", "--json", environ=environ)
    assert plan.exit_code == 0, plan.stdout + plan.stderr
    assert (plan.json["result"]["leader"], plan.json["result"]["rebuild"]) == ("primary", "replica")
    assert plan.json["result"]["plan"][0].startswith("finish the interrupted switchover to primary")
    resumed = voke("dr", "failback", "--yes", "--json", environ=environ)
    assert resumed.exit_code == 0, resumed.stdout + resumed.stderr
    r = resumed.json["result"]
    assert r["resumed"] is True and (r["leader"], r["standby"]) == ("primary", "replica")
    assert env.require_state().leader == "primary" and not (env.home / "dr" / "operation.json").exists()
    assert dr.in_recovery(env.node("primary")) is False and dr.in_recovery(env.node("replica")) is True
    assert voke("dr", "check", environ=environ).exit_code == 0
    assert all(healthy for healthy, _ in services(environ).values())


def test_a_switchover_whose_old_leader_cannot_start_as_a_standby_rebuilds_it(voke, environ, env, monkeypatch):
    from voketag_ops.adapters.local.postgres import PgNode
    from voketag_ops.errors import BackendError

    assert voke("dr", "failover", "--yes", environ=environ).exit_code == 0  # replica leads, primary fenced
    real_config, real_start = dr.write_standby_config, PgNode.start
    armed, refused = [], []

    def config(env_, node, upstream):
        if node.name == "replica":  # the switchover makes the old leader a standby of primary
            armed.append(node.name)
        real_config(env_, node, upstream)

    def start(self, **kwargs):
        if armed and not refused and self.name == "replica":  # it ran on as a primary meanwhile, say
            refused.append(self.name)
            raise BackendError("replica: could not start as a standby")
        real_start(self, **kwargs)

    monkeypatch.setattr(dr, "write_standby_config", config)
    monkeypatch.setattr(PgNode, "start", start)
    result = voke("dr", "failback", "--yes", "--json", environ=environ)
    monkeypatch.undo()
    assert refused == ["replica"] and result.exit_code == 0, result.stdout + result.stderr
    r = result.json["result"]
    assert r["switched_back"] is True and (r["leader"], r["standby"]) == ("primary", "replica")
    restarted = next(s for s in r["steps"] if s["name"].startswith("start replica as a standby"))
    assert restarted["detail"]["method"] in ("pg_rewind", "clone"), restarted  # rebuilt, not followed
    assert dr.in_recovery(env.node("replica")) is True
    assert voke("dr", "check", environ=environ).exit_code == 0


def test_a_standby_promoted_beside_the_leader_is_fenced_and_its_timeline_kept_out_of_the_archive(
    voke, environ, env
):
    import time

    from voketag_ops.core import wal

    leader_tli = dr.current_timeline(env.node("primary"))
    with env.node("replica").connect() as conn:  # someone promotes the standby by hand
        conn.execute("select pg_promote()")
    rogue = f"{leader_tli + 1:08X}.history"
    deadline = time.monotonic() + 60
    while rogue not in dr.archived_names(env) and time.monotonic() < deadline:
        time.sleep(0.2)  # its new timeline's history is archived at once
    assert rogue in dr.archived_names(env)
    brain = voke("dr", "check", "--json", environ=environ)
    assert brain.exit_code == 1 and "split_brain" in brain.json["result"]["failed"]
    assert "replication_lag" in brain.json["result"]["failed"]  # a writable node has no lag to be within
    fenced = voke("dr", "fence", "replica", "--yes", "--json", environ=environ)
    assert fenced.exit_code == 0, fenced.stdout
    assert rogue in fenced.json["result"]["quarantined"]
    left = dr.archived_names(env)
    assert not any(
        int(n[:8], 16) == leader_tli + 1
        for n in left
        if wal.HISTORY_NAME.match(n) or wal.SEGMENT_NAME.match(n[:24])
    )
    back = voke("dr", "failback", "--yes", "--json", environ=environ)  # exit 7 before: the rogue's timeline
    assert back.exit_code == 0, back.stdout + back.stderr
    assert dr.in_recovery(env.node("replica")) is True
    assert voke("dr", "check", environ=environ).exit_code == 0


def test_a_fence_cut_short_mid_stop_stays_fenced_and_is_finished_by_running_it_again(
    voke, environ, env, monkeypatch
):
    # Found by a review: a Ctrl-C while the node stopped left it down, unmarked and its timeline in
    # the archive, with no hint; `dr check` then advised `env up`, which refused it (exit 7).
    import os
    import signal
    import time

    from voketag_ops.adapters.local.postgres import PgNode
    from voketag_ops.audit import AuditLog

    leader_tli = dr.current_timeline(env.node("primary"))
    with env.node("replica").connect() as conn:  # split brain: someone promotes the standby by hand
        conn.execute("select pg_promote()")
    rogue = f"{leader_tli + 1:08X}.history"
    deadline = time.monotonic() + 60
    while rogue not in dr.archived_names(env) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert rogue in dr.archived_names(env)
    real_stop, real_quarantine, fired = PgNode.stop, dr.quarantine_foreign_timelines, []

    def stop(self, **kwargs):
        real_stop(self, **kwargs)
        if not fired and self.name == "replica":  # Ctrl-C twice while it stops: the second gives way
            fired.append("stop")
            os.kill(os.getpid(), signal.SIGINT)
            os.kill(os.getpid(), signal.SIGINT)

    monkeypatch.setattr(PgNode, "stop", stop)
    cut = voke("dr", "fence", "replica", "--yes", "--json", environ=environ)
    monkeypatch.undo()
    assert fired and cut.exit_code == 130, cut.stdout + cut.stderr
    assert cut.json["error"]["hint"] == "voke dr fence replica --yes"
    assert "while fencing replica" in cut.json["error"]["message"]
    assert dr.fenced_nodes(env) == ["replica"] and not env.node("replica").running
    assert rogue in dr.archived_names(env)  # not quarantined yet: the rerun does it
    event = list(AuditLog(env.home).entries())[-1]
    assert (event.event_type, event.result, event.details["error"]["type"]) == (
        "dr.fence",
        "interrupted",
        "Interrupted",
    )
    check = voke("dr", "check", "--json", environ=environ)
    streaming = next(c for c in check.json["result"]["checks"] if c["name"] == "replica_streaming")
    assert "voke dr failback --yes" in streaming["message"] and "env up" not in streaming["message"]

    def quarantine(*args):  # one Ctrl-C meanwhile is held: the fence is finished all the same
        os.kill(os.getpid(), signal.SIGINT)
        return real_quarantine(*args)

    monkeypatch.setattr(dr, "quarantine_foreign_timelines", quarantine)
    rerun = voke("dr", "fence", "replica", "--yes", "--json", environ=environ)
    monkeypatch.undo()
    assert rerun.exit_code == 0, rerun.stdout + rerun.stderr
    assert rogue in rerun.json["result"]["quarantined"] and rerun.json["result"]["warnings"]
    back = voke("dr", "failback", "--yes", "--json", environ=environ)
    assert back.exit_code == 0, back.stdout + back.stderr
    assert dr.in_recovery(env.node("replica")) is True and dr.fenced_nodes(env) == []
    assert voke("dr", "check", environ=environ).exit_code == 0


def test_the_archive_is_left_alone_when_the_leaders_lineage_cannot_be_read(env, monkeypatch):
    from voketag_ops.errors import BackendError

    def not_archived(*_args, **_kwargs):
        raise BackendError("timeline 9 has no history file in the archive")

    monkeypatch.setattr(dr, "history_of", not_archived)  # just promoted, or the archiver failing
    before = dr.archived_names(env)
    assert dr.quarantine_foreign_timelines(env, env.node(env.require_state().leader)) == []
    assert dr.archived_names(env) >= before


# -- drills ---------------------------------------------------------------------------------------------
def test_drill_dry_run_lists_the_plan_and_changes_nothing(voke, environ, env):
    refused = voke("drill", "run", "failover", environ=environ)
    assert refused.exit_code == 2 and "--yes" in refused.stderr
    result = voke("drill", "run", "all", "--dry-run", "--json", environ=environ)
    assert result.exit_code == 0
    assert list(result.json["result"]["plan"]) == ["pitr", "failover", "failback", "network"]
    assert not (env.home / "drills").exists() or not list((env.home / "drills").glob("*.json"))


def test_a_failover_drill_whose_standby_cannot_catch_up_is_aborted_and_touches_nothing(voke, environ, env):
    replica = env.node("replica")
    with replica.connect() as conn:
        conn.execute("select pg_wal_replay_pause()")
    try:
        result = voke("drill", "run", "failover", "--yes", "--json", environ=environ)
    finally:
        with replica.connect() as conn:
            conn.execute("select pg_wal_replay_resume()")
    assert result.exit_code == 5, result.stdout + result.stderr
    journal = result.json["result"]
    assert journal["status"] == "aborted" and "WAL replay on replica is paused" in journal["error"]
    assert (
        journal["rto_met"] is None
        and journal["rpo_met"] is None
        and journal["breaches"] == [journal["error"]]
    )
    assert journal["timeline"]["fault_injected_at"] is None
    assert not any(step["name"].startswith("restore the topology") for step in journal["cleanup"])
    assert dr.unfinished_operation(env) is None and env.require_state().leader == "primary"
    assert voke("dr", "check", environ=environ).exit_code == 0


def test_the_drills_that_promote_refuse_at_once_while_the_standby_is_fenced(voke, environ, env):
    # After a finished failover the old leader stays fenced until a failback rebuilds it: no
    # standby to promote (the failover drill aborted after a 30 s steady-state wait, its dry run said 0).
    assert voke("dr", "failover", "--yes", environ=environ).exit_code == 0
    journals = sorted((env.home / "drills").glob("*.json"))
    try:
        for scenario in ("failover", "failback", "all"):
            dry = voke("drill", "run", scenario, "--dry-run", "--json", environ=environ)
            assert dry.exit_code == 5, dry.stdout
            message = dry.json["error"]["message"]
            assert "the standby primary is not running as a standby; nothing to promote" in message
        refused = voke("drill", "run", "failback", "--yes", "--json", environ=environ)
        assert refused.exit_code == 5, refused.stdout
        assert "the standby primary is not running as a standby" in refused.json["error"]["message"]
        assert sorted((env.home / "drills").glob("*.json")) == journals  # nothing was drilled
        assert env.require_state().leader == "replica"
    finally:
        assert voke("dr", "failback", "--yes", environ=environ).exit_code == 0
    assert env.require_state().leader == "primary"


def test_drill_run_all_measures_every_scenario_and_restores_the_topology(voke, environ, env):
    from voketag_ops.core.dr_checks import parse_iso
    from voketag_ops.core.drill import validate

    result = voke("drill", "run", "all", "--yes", "--json", environ=environ)
    assert result.exit_code == 0, result.stdout + result.stderr
    runs = result.json["result"]["runs"]
    assert [j["scenario"] for j in runs] == ["pitr", "failover", "failback", "network"]
    for journal in runs:
        assert validate(journal) == [], journal["run_id"]
        assert journal["status"] == "completed", (journal["run_id"], journal["breaches"], journal["error"])
        assert journal["rto_met"] and journal["rpo_met"] and journal["integrity_ok"]
        assert journal["steady_state"]["before"]["ok"] and journal["steady_state"]["after"]["ok"]
        before = journal["steady_state"]["before"]  # the pre-fault state, as the research lists it
        assert before["lag_bytes"] is not None and before["backup_age_seconds"] >= 0 and before["timeline"]
        assert before["last_archived_at"]
        repoints = journal["scenario"] in ("failover", "failback")  # services back: only where repointed
        assert all(
            journal["timeline"][k] or (k == "services_back_at" and not repoints) for k in journal["timeline"]
        )
        assert 0 < journal["rto_seconds"] < journal["targets"]["rto_target_seconds"]
        # the timeline runs forward: a first write before the recovery was the old leader's
        assert all(v is None or v >= 0 for v in journal["phases"].values()), (
            journal["run_id"],
            journal["phases"],
        )
        saved = json.loads((env.home / "drills" / f"{journal['run_id']}.json").read_text())
        assert saved == journal
        # per step: its exit code, the commands it ran (research (b) 6); per check: the LSN (7)
        assert [s["exit_code"] for s in journal["steps"]] == [0] * len(journal["steps"])
        assert all(i["lsn"] and "/" in i["lsn"] for i in journal["integrity"]), journal["integrity"]
    pitr, failover, failback, network = runs
    ran = [c for s in pitr["steps"] for c in s["commands"]]
    assert {c["command"].split(" ", 1)[0] for c in ran} >= {"cp", "pg_ctl"}
    assert all(c["exit_code"] == 0 and len(c["output_sha256"]) == 64 for c in ran)
    rewound = [c for s in failback["steps"] for c in s["commands"] if c["command"].startswith("pg_rewind ")]
    assert len(rewound) == 1 and "--target-pgdata" in rewound[0]["command"]
    assert [j["targets"]["rto_target_seconds"] for j in runs] == [300, 300, 300, 420]  # research (e)8
    assert {i["table"].split(" ")[0] for i in pitr["integrity"]} == {
        "voke_dr.canary",
        "ingest.tags",
        "voke_dr.drill_data",
    }
    assert pitr["canary"]["committed_before_target"] > 0 and pitr["canary"]["committed_after_target"] > 0
    assert {j["canary"]["lead_seconds"] for j in runs} == {0.4}  # dr.canary_seconds (the module's environ)
    last = pitr["details"]["restore"]["stop_point"]["last_transaction_at"]  # RPO: target - last restored
    assert pitr["canary"]["rpo_from"] == "recovery log" and pitr["canary"]["last_restored_commit_at"] == last
    gap = (parse_iso(pitr["details"]["target"]) - parse_iso(last)).total_seconds()
    assert pitr["rpo_seconds"] == pytest.approx(max(gap, 0.0), abs=0.002)
    assert pitr["details"]["repair"]["root_matches"] is True
    assert failover["details"]["failover"]["new_leader"] == "replica"
    for journal in (failover, failback):  # the RTO runs until the services are back on the new leader
        timeline = journal["timeline"]
        assert timeline["recovered_at"] <= timeline["services_back_at"] < timeline["first_write_ok_at"]
        assert journal["phases"]["services"] > 0
    assert failover["canary"]["acked_commits"] > 0 and failover["lost_commits"] is not None
    assert (
        failback["lost_commits"] == 0 and failback["details"]["failback"]["rebuilt"]["method"] == "pg_rewind"
    )
    assert network["details"]["service_errors"]["failed_writes"] >= 1
    assert network["phases"]["detection"] is not None
    state = env.require_state()
    assert state.leader == "primary" and dr.in_recovery(env.node("replica")) is True
    assert dr.list_restores(env) == []
    status = voke("dr", "status", "--json", environ=environ).json["result"]
    assert status["last_drill"]["run_id"] == network["run_id"]


def test_drill_reports_and_history(voke, environ, env, tmp_path):
    history = voke("drill", "history", "--json", environ=environ)
    assert history.exit_code == 0
    assert {r["scenario"] for r in history.json["result"]["runs"]} >= {
        "pitr",
        "failover",
        "failback",
        "network",
    }
    assert history.json["result"]["trend"]["failover"]["runs"] >= 1
    run_id = history.json["result"]["runs"][0]["run_id"]
    md = voke("drill", "report", run_id, "--format", "md", environ=environ)
    assert md.exit_code == 0 and md.stdout.startswith(f"# DR drill {run_id}") and "| RTO |" in md.stdout
    out = tmp_path / "report.html"
    html = voke("drill", "report", run_id, "--format", "html", "--output", str(out), environ=environ)
    assert html.exit_code == 0
    assert f"({out.stat().st_size} bytes)" in html.stdout  # bytes written, not characters (the page has '–')
    page = out.read_text()
    assert page.startswith("<!DOCTYPE html>") and "<svg" in page and run_id in page
    assert "<script" not in page and "<link" not in page and "src=" not in page and "url(" not in page
    as_json = voke("drill", "report", "last", "--format", "json", "--json", environ=environ)
    assert as_json.exit_code == 0 and as_json.json["result"]["scenario"] == "network"
    missing = voke("drill", "report", "no-such-run", environ=environ)
    assert missing.exit_code == 2
    for where in (tmp_path / "no" / "dir.html", tmp_path):  # a missing directory, a directory
        bad = voke("drill", "report", run_id, "--format", "html", "--output", str(where), environ=environ)
        assert bad.exit_code == 2 and "--output" in bad.stderr, bad.stderr


def test_a_breached_target_fails_the_drill_with_exit_1(voke, make_environ_module, home, env):
    environ = make_environ_module(home, VOKE_DR__RTO_NETWORK_SECONDS="0.5")
    result = voke(
        "drill", "run", "network", "--outage", "1s", "--canary-seconds", "300ms", "--yes", "--json", environ=environ
    )  # fmt: skip
    assert result.exit_code == 1
    journal = result.json["result"]
    assert journal["canary"]["lead_seconds"] == 0.3  # the flag wins over dr.canary_seconds (0.4)
    assert journal["status"] == "failed" and journal["rto_met"] is False
    assert journal["targets"]["rto_target_seconds"] == 0.5
    assert "RTO" in journal["breaches"][0] and result.json["error"]["type"] == "CheckFailed"
    assert journal["steady_state"]["after"]["ok"] is True


def test_a_wall_clock_step_mid_drill_leaves_the_rto_and_phases_true(voke, environ, env, monkeypatch):
    # NTP sets the clock back an hour while the leader is frozen: the RTO is still the ~1 s
    # outage (monotonic), and the timeline's UTC stamps still differ by the measured durations.
    from voketag_ops import clock
    from voketag_ops.core.dr_checks import parse_iso
    from voketag_ops.testing import SteppedClock

    wall, thaw = SteppedClock(), dr.thaw

    def stepped(env, node):
        if not wall.offset:
            wall.step(-3600)
        return thaw(env, node)

    monkeypatch.setattr(dr, "thaw", stepped)
    with clock.using(wall):
        result = voke("drill", "run", "network", "--outage", "1s", "--yes", "--json", environ=environ)
    monkeypatch.undo()
    assert result.exit_code == 0, result.stdout + result.stderr
    journal = result.json["result"]
    assert wall.offset and 0.9 <= journal["rto_seconds"] < 60, journal["timeline"]
    assert all(v is None or 0 <= v < 60 for v in journal["phases"].values()), journal["phases"]
    timeline = {k: parse_iso(v) for k, v in journal["timeline"].items()}
    span = (timeline["first_write_ok_at"] - timeline["fault_injected_at"]).total_seconds()
    assert span == pytest.approx(journal["rto_seconds"], abs=0.002)


def test_a_failover_drill_counts_every_commit_the_old_leaders_wal_holds_past_the_switch_point(
    voke, environ, env, monkeypatch
):
    # Loss the canary (a row every 100 ms) cannot see: once the standby has caught up it is cut
    # off the leader (no streaming, no archive), and another client commits 5 rows there before
    # the fault. Each of them, and the canary's own rows written meanwhile, lies past the switch
    # point in the old leader's WAL, which the drill reads before its clean-up rewinds it.
    import time

    caught_up, cut = dr.wait_caught_up, []

    def then_cut_the_standby_off(leader, standby, *, timeout):
        result = caught_up(leader, standby, timeout=timeout)
        if not cut:
            cut.append(standby.name)
            with standby.connect() as conn:
                conn.execute("alter system set primary_conninfo = ''")
                conn.execute("alter system set restore_command = ''")
                conn.execute("select pg_reload_conf()")
                deadline = time.monotonic() + 60
                while conn.execute("select count(*) from pg_stat_wal_receiver").fetchone()[0]:
                    assert time.monotonic() < deadline
                    time.sleep(0.05)
            add_rows(leader, 1, 5, table="lost_orders")  # 6 commits: the table, then 5 rows
        return result

    monkeypatch.setattr(dr, "wait_caught_up", then_cut_the_standby_off)
    result = voke("drill", "run", "failover", "--yes", "--json", environ=environ)
    monkeypatch.undo()
    assert result.exit_code == 0, result.stdout + result.stderr
    journal = result.json["result"]
    lost = journal["details"]["lost_transactions"]
    assert cut == ["replica"] and journal["rpo_source"] == "wal", lost
    assert journal["lost_commits"] == lost["commits"] >= journal["canary"]["lost_commits"] + 6
    assert lost["lost_canary_rows"] == journal["canary"]["lost_commits"]
    assert (lost["old_leader"], lost["new_timeline"]) == ("primary", lost["old_timeline"] + 1)
    assert lost["last_replayed_commit_at"] < lost["newest_lost_commit_at"]
    assert journal["rpo_seconds"] > 0 and journal["rpo_met"] is True and journal["lost_met"] is None
    waldump = [c for s in journal["steps"] for c in s["commands"] if c["command"].startswith("pg_waldump ")]
    assert len(waldump) == 1 and f"-s {lost['switch_lsn']}" in waldump[0]["command"]
    md = voke("drill", "report", journal["run_id"], environ=environ).stdout
    assert f"| lost commits | {journal['lost_commits']} (the old leader's WAL past the switch point) |" in md
    assert f"past the switch point {lost['switch_lsn']}" in md
    runs = voke("drill", "history", "--json", environ=environ).json["result"]["runs"]
    assert (runs[-1]["lost_commits"], runs[-1]["rpo_source"]) == (journal["lost_commits"], "wal")
    assert "lost_orders" not in rows_of_tables(env.primary())  # the clean-up rewound them away
    assert env.require_state().leader == "primary" and dr.in_recovery(env.node("replica")) is True


def rows_of_tables(node):
    with node.connect() as conn:
        return [r[0] for r in conn.execute("select tablename from pg_tables where schemaname = 'public'")]


def test_a_network_drill_whose_service_is_down_at_the_end_fails(voke, make_environ_module, home, env):
    # An instance of admin-service dies while the leader is frozen: the drill waits for the
    # services to answer /health again (at most rotation.health_timeout), fails, and its final
    # steady state says which service is down.
    import os
    import signal

    thaw = dr.thaw

    def kill_a_service_then_thaw(env_, node):
        registry = json.loads((env.home / "services" / "registry.json").read_text())
        os.kill(registry["services"]["admin-service"]["active"]["pid"], signal.SIGKILL)
        return thaw(env_, node)

    environ = make_environ_module(home, VOKE_ROTATION__HEALTH_TIMEOUT="2")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(dr, "thaw", kill_a_service_then_thaw)
        result = voke("drill", "run", "network", "--outage", "1s", "--yes", "--json", environ=environ)
    assert result.exit_code == 1, result.stdout + result.stderr
    journal = result.json["result"]
    assert journal["status"] == "failed" and "admin-service" in journal["error"], journal["error"]
    # What the canary saw is still measured and verified; only the RTO is missing (not back).
    assert journal["rpo_seconds"] is not None and journal["lost_commits"] == 0 and journal["lost_met"]
    assert journal["integrity_ok"] is True and journal["rto_seconds"] is None
    assert journal["breaches"][0] == "RTO unknown: no write once the platform was back"
    after = {c["name"]: c for c in journal["steady_state"]["after"]["checks"]}
    assert (
        after["services_healthy"]["ok"] is False and "admin-service" in after["services_healthy"]["message"]
    )
    assert journal["steady_state"]["before"]["ok"] is True
    assert voke("env", "up", environ=environ).exit_code == 0  # starts it again
    assert all(healthy for healthy, _ in services(environ).values())


def test_a_network_drill_waits_for_the_services_and_counts_them_in_its_rto(voke, environ, env):
    result = voke("drill", "run", "network", "--outage", "1s", "--yes", "--json", environ=environ)
    assert result.exit_code == 0, result.stdout + result.stderr
    journal = result.json["result"]
    timeline = journal["timeline"]
    assert timeline["recovered_at"] <= timeline["services_back_at"] < timeline["first_write_ok_at"]
    assert [
        c["ok"] for c in journal["steady_state"]["after"]["checks"] if c["name"] == "services_healthy"
    ] == [True]


def test_a_network_drill_interrupted_as_its_freeze_returns_thaws_the_leader(voke, environ, env):
    # A SIGTERM (or a closed terminal's SIGHUP) landing once the freeze was recorded and done, but
    # before its thaw was registered as a clean-up, left the leader stopped and its record behind.
    import subprocess
    import sys

    script = (
        "import os, signal, sys\n"
        "from voketag_ops.adapters.local import dr\n"
        "real = dr.freeze_node\n"
        "def freeze(*args, **kwargs):\n"
        "    pids = real(*args, **kwargs)\n"
        "    os.kill(os.getpid(), signal.SIGTERM)\n"
        "    return pids\n"
        "dr.freeze_node = freeze\n"
        "from voketag_ops.cli.main import entry\n"
        "sys.argv = ['voke', 'drill', 'run', 'network', '--outage', '2m', '--yes', '--json']\n"
        "entry()\n"
    )
    try:
        done = subprocess.run(
            [sys.executable, "-c", script], env=environ, capture_output=True, text=True, timeout=600
        )
        assert done.returncode == 130, done.stdout + done.stderr
        assert not list((env.home / "dr").glob(dr.FROZEN)), done.stderr
        assert not dr.frozen_pids(env.primary()), "the leader was left stopped"
    finally:
        assert voke("env", "up", environ=environ).exit_code == 0  # thaws a node left frozen, if any


def test_a_network_drill_whose_terminal_closes_cleans_up_and_records_it(voke, environ, env):
    # The terminal (or ssh session) running the drill closes while the leader is frozen: SIGHUP,
    # whose default left the leader stopped with no journal and no audit event. Handled as
    # SIGTERM, and with nothing left to write to (EIO), the clean-up, journal and event still come.
    import fcntl
    import os
    import pty
    import subprocess
    import sys
    import termios
    import time

    from voketag_ops.audit import AuditLog

    master, terminal = pty.openpty()
    drill = subprocess.Popen(
        [sys.executable, "-m", "voketag_ops", "drill", "run", "network", "--outage", "2m", "--yes"],
        env=environ,
        stdin=terminal,
        stdout=terminal,
        stderr=terminal,
        start_new_session=True,  # the pty is its controlling terminal: closing it hangs it up
        preexec_fn=lambda: fcntl.ioctl(0, termios.TIOCSCTTY, 0),
    )
    os.close(terminal)
    os.set_blocking(master, False)
    try:
        while not list((env.home / "dr").glob(dr.FROZEN)):  # the leader is frozen
            assert drill.poll() is None
            with contextlib.suppress(BlockingIOError):
                os.read(master, 65536)  # (a full pty would block the spinner)
            time.sleep(0.05)
    finally:
        os.close(master)  # the hangup: SIGHUP, and every write to the terminal fails from now on
    assert drill.wait(timeout=600) == 130
    assert not list((env.home / "dr").glob(dr.FROZEN))
    assert not dr.frozen_pids(env.primary())
    report = voke("drill", "report", "last", "--format", "json", "--json", environ=environ)
    journal = report.json["result"]
    assert journal["scenario"] == "network" and journal["status"] == "interrupted"
    assert journal["error"] == "terminated (SIGHUP); clean-up ran"
    assert all(step["ok"] for step in journal["cleanup"]), journal["cleanup"]
    event = [e for e in AuditLog(env.home).entries() if e.event_type == "drill.network"][-1]
    assert event.result == "interrupted" and event.details["run_id"] == journal["run_id"]
    assert voke("dr", "check", environ=environ).exit_code == 0


def _rows_per_batch(env) -> tuple[dict[int, int], dict[int, int]]:
    with env.primary().connect("voketag") as conn:
        rows = dict(
            conn.execute(
                "select b.batch_id, (select count(*) from ingest.tags t where t.batch_id = b.batch_id)"
                " from ingest.batches b"
            ).fetchall()
        )
        loaded = dict(conn.execute("select batch_id, rows_loaded from ingest.batches").fetchall())
    return rows, loaded


def test_ctrl_c_before_the_pitr_repair_puts_the_batch_rows_back(voke, environ, env, monkeypatch):
    from voketag_ops.workflows import dr as dr_flow

    def interrupt(*args, **kwargs):
        raise KeyboardInterrupt  # a Ctrl-C (or SIGTERM) while restoring: no repair registered yet

    monkeypatch.setattr(dr_flow, "restore", interrupt)
    result = voke("drill", "run", "pitr", "--yes", "--json", environ=environ)
    assert result.exit_code == 130
    monkeypatch.undo()
    journal = json.loads(
        sorted((env.home / "drills").glob("pitr-*.json"), key=lambda p: p.stat().st_mtime)[-1].read_text()
    )
    assert journal["status"] == "interrupted" and journal["timeline"]["fault_injected_at"]
    rows, loaded = _rows_per_batch(env)
    assert rows == loaded and rows, rows  # every batch, the drill's included, has all its rows


def test_a_pitr_drill_killed_after_its_fault_is_reported_and_repaired_by_the_next(voke, environ, env):
    import signal
    import subprocess
    import sys
    import time

    drill = subprocess.Popen(
        [sys.executable, "-m", "voketag_ops", "drill", "run", "pitr", "--yes"],
        env=environ,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 60
        while True:  # kill -9 once the fault has deleted the batch's rows and its restore began
            assert drill.poll() is None and time.monotonic() < deadline
            if list(dr.restores_dir(env).glob("drill-*.json")):
                rows, loaded = _rows_per_batch(env)
                assert rows != loaded  # the repair comes after the restore
                break
            time.sleep(0.05)
    finally:
        drill.send_signal(signal.SIGKILL)
        drill.wait()
    check = voke("dr", "check", "--json", environ=environ)
    assert check.exit_code == 1 and "unfinished_operation" in check.json["result"]["failed"]
    op = check.json["result"]["status"]["unfinished_operation"]
    assert op["resume"] == "voke drill run pitr --yes" and "puts back the rows of batch" in op["note"]
    # and its restored instance, `interrupted` in `dr restores`: each named, in one message
    (cut,) = [r["name"] for r in dr.list_restores(env) if r["state"] == "interrupted"]
    assert [(o["operation"], o["resume"]) for o in op["also"]] == [
        ("restore", f"voke dr discard {cut} --yes")
    ]
    (said,) = [c["message"] for c in check.json["result"]["checks"] if c["name"] == "unfinished_operation"]
    assert said.startswith("an interrupted `voke drill run pitr` must be finished: voke drill run pitr --yes")
    assert f"; an interrupted `voke dr restore` must be finished: voke dr discard {cut} --yes" in said, said
    shown = voke("dr", "status", environ=environ).stdout
    assert "unfinished voke drill run pitr: resume with `voke drill run pitr --yes`" in shown
    assert f"unfinished voke dr restore: resume with `voke dr discard {cut} --yes`" in shown
    # meanwhile a load takes one of the deleted tag_ids: that row cannot come back
    (copy,) = (env.home / "dr").glob("drill-rows-*.copy")
    taken = copy.read_text().split("\t", 1)[0]
    batch = env.home.parent / "taken.csv"
    batch.write_text(
        f"tag_id,sku,product_name,factory_id,manufactured_at\n{taken},TAKEN-1,Boot,F9,2024-01-01T00:00:00Z\n"
    )
    assert voke("ingest", "load", str(batch), environ=environ).exit_code == 0
    again = voke("drill", "run", "pitr", "--yes", "--json", environ=environ)
    assert again.exit_code == 0, again.stdout
    (left,) = again.json["result"]["details"]["rows_left_by_killed_drills"]
    assert left["rows_put_back"] == left["rows"] - 1  # all but the one taken meanwhile
    rows, loaded = _rows_per_batch(env)
    assert rows[left["batch_id"]] == loaded[left["batch_id"]] - 1
    assert {k: v for k, v in rows.items() if k != left["batch_id"]} == {
        k: v for k, v in loaded.items() if k != left["batch_id"]
    }  # every other batch has all its rows
    assert not list((env.home / "dr").glob("drill-rows-*"))
    assert dr.list_restores(env) == []  # the killed drill's restored instance was discarded too
    # `dr restores` told the operator to discard it: that discard run after the drill's clean-up
    # was exit 2 (neither the killed restore nor the clean-up had written an event naming it)
    name = left["restore"]
    assert name and name.startswith("drill-")
    rerun = voke("dr", "discard", name, "--yes", "--json", environ=environ)
    assert rerun.exit_code == 0 and rerun.json["result"]["changed"] is False, rerun.stdout + rerun.stderr
    shown = voke("audit", "show", "--event-type", "dr.discard", "--json", environ=environ)
    mine = [
        (e["result"], e["details"].get("by")) for e in shown.json["result"]["entries"] if e["target"] == name
    ]
    by = f"drill pitr, cleaning up after the killed drill {left['run_id']}"
    assert mine == [("success", by), ("unchanged", None)]


def test_ctrl_c_mid_drill_cleans_up_and_records_interrupted(voke, environ, env, monkeypatch):
    def interrupt(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(dr, "detect_down", interrupt)  # Ctrl-C right after the primary was stopped
    result = voke("drill", "run", "failover", "--yes", "--json", environ=environ)
    assert result.exit_code == 130
    monkeypatch.undo()
    journal = json.loads(
        sorted((env.home / "drills").glob("failover-*.json"), key=lambda p: p.stat().st_mtime)[-1].read_text()
    )
    error = result.json["error"]  # names the journal saved as interrupted, which is the result
    assert (
        journal["run_id"] in error["message"]
        and error["hint"] == f"its journal: voke drill report {journal['run_id']}"
    )
    assert result.json["result"]["run_id"] == journal["run_id"]
    assert result.json["result"]["status"] == "interrupted"
    assert journal["status"] == "interrupted" and "interrupted" in journal["error"]
    assert journal["timeline"]["fault_injected_at"] and journal["timeline"]["first_write_ok_at"] is None
    assert any(step["name"].startswith("restore the topology") and step["ok"] for step in journal["cleanup"])
    assert env.require_state().leader == "primary" and dr.in_recovery(env.node("primary")) is False
    assert dr.in_recovery(env.node("replica")) is True
    assert voke("dr", "check", environ=environ).exit_code == 0


def test_ctrl_c_in_a_later_drill_of_all_names_its_journal_with_the_finished_ones(
    voke, environ, env, monkeypatch
):
    def interrupt(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(dr, "detect_down", interrupt)  # the 2nd drill (failover), after its fault
    result = voke("drill", "run", "all", "--yes", "--json", environ=environ)
    monkeypatch.undo()
    assert result.exit_code == 130, result.stdout + result.stderr
    report, error = result.json["result"], result.json["error"]
    runs = [(j["scenario"], j["status"]) for j in report["runs"]]
    assert runs == [("pitr", "completed"), ("failover", "interrupted")], runs
    assert report["not_run"] == ["failback", "network"]  # the interrupted drill ran
    interrupted = report["runs"][1]["run_id"]
    path = env.home / "drills" / f"{interrupted}.json"
    assert path.is_file() and str(path) in error["message"] and error["type"] == "Interrupted"
    assert error["hint"] == f"its journal: voke drill report {interrupted}"
    assert env.require_state().leader == "primary" and voke("dr", "check", environ=environ).exit_code == 0


def test_ctrl_c_inside_the_drills_failover_is_exit_130_and_names_the_resume(voke, environ, env, monkeypatch):
    # the drill needs its steady state: primary leading, replica streaming (whatever ran before)
    if env.require_state().leader != "primary" or dr.in_recovery(env.node("replica")) is not True:
        assert voke("dr", "failback", "--yes", environ=environ).exit_code == 0
    assert voke("dr", "check", environ=environ).exit_code == 0

    def interrupt(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(dr, "promote", interrupt)  # Ctrl-C once `dr failover` has fenced the leader
    result = voke("drill", "run", "failover", "--yes", "--json", environ=environ)
    monkeypatch.undo()
    assert result.exit_code == 130, result.stdout  # (it was a "failed" drill, exit 1, after a 60 s wait)
    assert "voke dr failover --yes" in result.json["error"]["hint"]  # what to finish first
    journal = json.loads(
        sorted((env.home / "drills").glob("failover-*.json"), key=lambda p: p.stat().st_mtime)[-1].read_text()
    )
    assert journal["status"] == "interrupted" and "stopped part-way" in journal["error"]
    # its clean-up could not finish it (promote still interrupts): the journal names the resume
    assert "finish it with `voke dr failover --yes`" in journal["error"], journal["error"]
    # finished as the hint says, and the topology put back for the tests after this one
    assert voke("dr", "failover", "--yes", environ=environ).exit_code == 0
    assert voke("dr", "failback", "--yes", environ=environ).exit_code == 0
    assert env.require_state().leader == "primary"


def test_ctrl_c_inside_the_drills_failover_its_clean_up_finishes_names_no_resume(
    voke, environ, env, monkeypatch
):
    assert env.require_state().leader == "primary" and voke("dr", "check", environ=environ).exit_code == 0
    real_promote, calls = dr.promote, []

    def promote(*args, **kwargs):
        calls.append(1)
        if len(calls) == 1:
            raise KeyboardInterrupt  # Ctrl-C once `dr failover` has fenced the leader
        return real_promote(*args, **kwargs)  # the clean-up's resume promotes

    monkeypatch.setattr(dr, "promote", promote)
    result = voke("drill", "run", "failover", "--yes", "--json", environ=environ)
    monkeypatch.undo()
    assert result.exit_code == 130, result.stdout
    journal = latest_journal(env, "failover")
    restore = next(s for s in journal["cleanup"] if s["name"].startswith("restore the topology"))
    assert restore["ok"] and journal["steady_state"]["after"]["ok"], journal["cleanup"]
    # said as the clean-up left it: `voke dr failover --yes` would now fence the healthy primary
    assert "stopped part-way" in journal["error"] and "the clean-up finished it" in journal["error"]
    assert "--yes" not in journal["error"] and "--yes" not in result.json["error"]["message"], journal[
        "error"
    ]
    assert result.json["error"]["hint"] == f"its journal: voke drill report {journal['run_id']}"
    assert env.require_state().leader == "primary" and voke("dr", "check", environ=environ).exit_code == 0


def latest_journal(env, scenario):
    paths = sorted((env.home / "drills").glob(f"{scenario}-*.json"), key=lambda p: p.stat().st_mtime)
    return json.loads(paths[-1].read_text())


def test_a_drill_whose_clean_up_needs_a_person_exits_7_naming_what_to_run(voke, environ, env, monkeypatch):
    from voketag_ops.errors import BackendError

    real_set_leader, calls = LocalEnvironment.set_leader, []

    def set_leader(self, name):
        if name == "primary":  # the failback drill's switchover promotes primary
            calls.append(name)
            if len(calls) == 1:
                raise KeyboardInterrupt  # Ctrl-C after the promotion, before it is recorded
            raise BackendError("state.json: no space left on device")  # and the clean-up's resume fails
        real_set_leader(self, name)

    monkeypatch.setattr(LocalEnvironment, "set_leader", set_leader)
    result = voke("drill", "run", "failback", "--yes", "--json", environ=environ)
    monkeypatch.undo()
    assert result.exit_code == 7, result.stdout  # (it was 130, which says nothing needs doing)
    journal = latest_journal(env, "failback")
    error = result.json["error"]
    assert result.json["result"]["run_id"] == journal["run_id"]  # its journal, with the error
    assert error["message"].startswith(f"interrupted: drill failback {journal['run_id']} could not clean up")
    assert "restore the topology" in error["message"] and "no space left" in error["message"]
    assert "finish it with `voke dr failback --yes`" in error["hint"]
    assert error["hint"].endswith(f"its journal: voke drill report {journal['run_id']}")
    assert journal["status"] == "interrupted"
    restore = next(s for s in journal["cleanup"] if s["name"].startswith("restore the topology"))
    assert restore["ok"] is False and restore["exit_code"] == 7
    assert voke("dr", "failback", "--yes", environ=environ).exit_code == 0  # as the hint says
    assert env.require_state().leader == "primary" and voke("dr", "check", environ=environ).exit_code == 0
    with env.primary().connect(dr.DR_DB) as conn:  # its clean-up could not delete its rows
        left = conn.execute("select count(*) from voke_dr.drill_data where run_id = %s", (journal["run_id"],))
        assert left.fetchone()[0] > 0


def test_a_drill_first_removes_the_rows_earlier_runs_left(voke, environ, env):
    tables = ("voke_dr.drill_data", "voke_dr.canary")
    with env.primary().connect(dr.DR_DB) as conn:  # rows of runs whose clean-up failed (no drill runs now)
        dr.ensure_schema(conn)
        conn.execute(
            "create table if not exists voke_dr.drill_data ("
            " run_id text not null, id int not null, payload text not null, primary key (run_id, id))"
        )
        conn.execute("insert into voke_dr.canary (run_id, seq) values ('failback-left-behind', 1)")
        conn.execute("insert into voke_dr.drill_data values ('failback-left-behind', 1, 'x')")
        earlier = {t: conn.execute(f"select count(*) from {t}").fetchone()[0] for t in tables}
    assert earlier["voke_dr.drill_data"] > 0 and earlier["voke_dr.canary"] > 0
    result = voke("drill", "run", "failback", "--yes", "--json", environ=environ)
    assert result.exit_code == 0, result.stdout
    assert result.json["result"]["details"]["rows_left_by_earlier_runs"] == earlier
    with env.primary().connect(dr.DR_DB) as conn:  # and its own clean-up removed its own
        assert [conn.execute(f"select count(*) from {t}").fetchone()[0] for t in tables] == [0, 0]


def test_a_failback_drill_cut_short_after_its_promotion_is_finished_by_its_clean_up(
    voke, environ, env, monkeypatch
):
    interrupt_when(monkeypatch, LocalEnvironment, "set_leader", lambda _env, name: name == "primary")
    result = voke("drill", "run", "failback", "--yes", "--json", environ=environ)
    monkeypatch.undo()
    assert result.exit_code == 130, result.stdout  # interrupted, and nothing left to do
    journal = latest_journal(env, "failback")
    restore = next(s for s in journal["cleanup"] if s["name"].startswith("restore the topology"))
    assert restore["ok"] is True, restore  # the failback resumed (env up refused, exit 7)
    assert "voke dr failback" not in result.json["error"]["hint"]
    assert env.require_state().leader == "primary" and dr.in_recovery(env.node("replica")) is True
    assert voke("dr", "check", environ=environ).exit_code == 0
    assert all(healthy for healthy, _ in services(environ).values())


def test_a_rewind_cut_short_before_makes_the_rebuild_clone(voke, environ, env):
    # pg_rewind interrupted (a second Ctrl-C) leaves a data directory that cannot start.
    assert voke("dr", "check", environ=environ).exit_code == 0
    replica = env.node("replica")
    marker = replica.data_dir.with_name(replica.data_dir.name + ".rewinding")
    marker.touch()
    info = dr.rebuild_standby(env, replica, env.node("primary"))
    assert info["method"] == "clone" and info["earlier_rewind_unfinished"] is True
    assert not marker.exists() and dr.in_recovery(env.node("replica")) is True


def test_a_clone_killed_after_moving_the_old_data_aside_leaves_nothing_after_the_resume(voke, environ, env):
    # kill -9 between moving the data directory aside and the clone: the resume finds no data
    # directory, clones, and must not leave the aside copy (a whole cluster) for good.
    replica = env.node("replica")
    replica.stop()
    aside = replica.data_dir.with_name(replica.data_dir.name + ".old")
    replica.data_dir.rename(aside)
    info = dr.rebuild_standby(env, replica, env.node("primary"))
    assert info["method"] == "clone" and dr.in_recovery(env.node("replica")) is True
    assert not aside.exists()
    assert voke("dr", "check", environ=environ).exit_code == 0


def test_a_failback_rewinds_an_old_primary_whose_lock_names_a_pid_reused_since(voke, environ, env):
    # After a reboot the pid the killed primary left in postmaster.pid may be any live process's:
    # pg_rewind's single-user recovery refused that lock ("already exists") and the failback fell
    # back to a whole clone. The stale lock is cleared before pg_rewind, as before every start.
    assert voke("dr", "check", environ=environ).exit_code == 0
    with killed_with_its_pid_reused(env.node("primary")) as squatter:
        failover = voke("dr", "failover", "--yes", "--json", environ=environ)
        assert failover.exit_code == 0, failover.stdout + failover.stderr
        back = voke("dr", "failback", "--yes", "--json", environ=environ)
        assert back.exit_code == 0, back.stdout + back.stderr
        rebuilt = back.json["result"]["rebuilt"]
        assert rebuilt["method"] == "pg_rewind" and "rewind_error" not in rebuilt, rebuilt
        assert squatter.poll() is None  # (the process whose pid it was is left alone)
    assert env.require_state().leader == "primary" and dr.in_recovery(env.node("replica")) is True
    assert voke("dr", "check", environ=environ).exit_code == 0


def test_a_frozen_standby_is_killed_and_rebuilt_and_a_failback_stuck_on_it_resumes(
    voke, environ, env, monkeypatch
):
    # Found by a review following the partial-degradation runbook: with the replica's processes
    # stopped (SIGSTOP, a debugger), `dr failback --no-switch-back --clone` waited 2 min on
    # pg_ctl's fast then immediate stop, stopped part-way (exit 7), and no voke command could
    # stop the node. A standby being rebuilt is thrown away: frozen, it is killed as a fence does.
    assert voke("dr", "check", environ=environ).exit_code == 0
    rebuild = ["dr", "failback", "--no-switch-back", "--clone", "--yes", "--json"]
    with frozen(env.node("replica")) as pids:
        pid = pids[0]  # the postmaster
        assert dr.frozen_pids(env.node("replica")) == pids
        # the failback the review left stuck: stopped part-way before it had rebuilt anything
        interrupt_when(monkeypatch, dr, "stop_or_kill", lambda node: node.name == "replica")
        cut = voke(*rebuild, environ=environ)
        monkeypatch.undo()
        assert cut.exit_code == 130, cut.stdout + cut.stderr
        assert "voke dr failback" in cut.json["error"]["hint"]
        assert voke("dr", "fence", "replica", "--yes", environ=environ).exit_code == 5  # resume first
        back = voke(*rebuild, environ=environ)
        assert back.exit_code == 0, back.stdout + back.stderr
        result = back.json["result"]
        assert result["resumed"] is True and result["switched_back"] is False
        assert result["rebuilt"]["stopped"] == "killed (frozen)" and result["rebuilt"]["method"] == "clone"
    assert env.require_state().leader == "primary" and dr.in_recovery(env.node("replica")) is True
    assert env.node("replica").pid() != pid
    assert voke("dr", "check", environ=environ).exit_code == 0


def test_the_notice_of_an_unfinished_operation_says_what_to_run(tmp_path, held_by_another_voke):
    home = tmp_path / "home"
    env = LocalEnvironment(LocalSettings(home=home))
    assert dr.operation_notice(env) is None
    record = {"operation": "failback", "resume": "voke dr failback --yes", "done": ["planned", "rebuilt"]}
    record["detail"] = {"rebuilt": {"method": "rewind", "seconds": 1.2}}  # a step record, not words
    (home / "dr").mkdir(parents=True)
    (home / "dr" / "operation.json").write_text(json.dumps(record))
    assert dr.operation_notice(env) == (
        "an interrupted `voke dr failback` is recorded; finish it with `voke dr failback --yes`"
    )
    with held_by_another_voke(home / "dr" / "dr.lock", "dr failback pid 7"):  # not interrupted: running
        assert dr.operation_notice(env) == (
            "a DR operation is running (dr failback pid 7); `voke dr status` shows where it is"
        )
        running = dr.operation_to_report(env)
        assert running is not None and running["running"] == "dr failback pid 7"
        from voketag_ops.core import dr_checks

        (check,) = [
            c
            for c in dr_checks.judge(
                {"unfinished_operation": running}, dr_checks.Thresholds(1, 1, 0, 1), now=dr.utcnow()
            )
            if c.name == "unfinished_operation"
        ]
        assert not check.ok and check.message.startswith("a DR operation is running (dr failback pid 7)")
    (home / "dr" / "operation.json").unlink()
    with held_by_another_voke(home / "dr" / "dr.lock", "drill failover pid 8"):  # no operation log of its own
        assert dr.operation_to_report(env) == {
            "operation": "drill failover",
            "command": "voke drill run failover",
            "resume": None,
            "running": "drill failover pid 8",
        }
    for lifecycle in ("env up", "env up (servers only)", "env down", "env destroy"):  # no DR operations
        with held_by_another_voke(home / "dr" / "dr.lock", f"{lifecycle} pid 9"):
            assert dr.operation_to_report(env) is None, lifecycle
    # A move-port is one, running even before its journal is written.
    with held_by_another_voke(home / "dr" / "dr.lock", "env move-port pid 10"):
        assert dr.operation_to_report(env) == {
            "operation": "env move-port",
            "command": "voke env move-port",
            "resume": None,
            "running": "env move-port pid 10",
        }
    # A backup holds the DR lock shared (rotations go on beside it): its own lock names it.
    with held_by_another_voke(home / "dr" / "backup.lock", "dr backup pid 11"):
        assert dr.operation_to_report(env) == {
            "operation": "dr backup",
            "command": "voke dr backup",
            "resume": None,
            "running": "dr backup pid 11",
        }
    (home / "dr" / "operation.json").write_text("{torn")
    assert "cannot be read" in (dr.operation_notice(env) or "")


@pytest.mark.parametrize("operation", ["dr failover", "env move-port"])
def test_env_up_refuses_while_a_dr_operation_runs(
    voke, tmp_path, make_environ_module, held_by_another_voke, operation
):
    # It would start a node a failover just fenced, or a leader a failback's switchover stopped.
    # A move-port is one (it moves a node, repoints the standby and the services): commands
    # starting the environment waited for it as for another voke's `env up`, then exit 5 said
    # "another voke is starting, stopping or destroying the environment".
    home = tmp_path / "home"
    (home / "dr").mkdir(parents=True)
    batch = tmp_path / "a.csv"
    batch.write_text("tag_id,sku,product_name,factory_id,manufactured_at\nT1,S,N,F,2024-01-01T00:00:00Z\n")
    said = f"another DR operation is running ({operation} pid 7)"
    with held_by_another_voke(home / "dr" / "dr.lock", f"{operation} pid 7"):
        for args in (
            ["env", "up"],
            ["chain", "anchors"],  # this one and the next start the servers only
            ["ingest", "load", str(batch), "--dry-run"],
            ["rotate", "db-password", "--yes"],
        ):
            refused = voke(*args, environ=make_environ_module(home))
            assert refused.exit_code == 5, (args, refused.stderr)
            assert said in refused.stderr, (args, refused.stderr)
        read = voke("ingest", "batches", "--json", environ=make_environ_module(home))  # it says why it cannot
        assert read.exit_code == 4 and "primary is down" in read.json["error"]["message"], read.stdout
        assert read.json["error"]["hint"] == f"{said}: rerun the same command once it ends"
    assert not (home / "state.json").exists()


def test_a_command_that_needs_the_database_warns_instead_of_failing_when_services_cannot_start(
    voke, environ, env, held_by_another_voke
):
    from voketag_ops.config import load_config
    from voketag_ops.workflows.env import LocalPlatform

    platform = LocalPlatform(load_config(environ=environ).settings)
    platform.runtime().stop_all()  # the servers run, the services do not
    said: list[str] = []
    with held_by_another_voke(env.home / "dr" / "dr.lock", "drill pitr pid 7"):  # `env up` would refuse
        platform.ensure_up(said.append, strict=False)
    assert said == [
        "warning: the local services were not started: another DR operation is running (drill pitr pid 7)"
    ]
    assert voke("env", "up", environ=environ).exit_code == 0  # and once it ends, they start
    assert all(healthy for healthy, _version in services(environ).values())


def test_a_load_that_loses_the_primary_during_a_dr_operation_names_it(
    voke, environ, env, held_by_another_voke, tmp_path, monkeypatch
):
    from contextlib import contextmanager

    from voketag_ops.cli import ingest_cmd

    path = tmp_path / "batch.csv"
    assert voke("ingest", "sample", "--rows", "20000", "--out", str(path), environ=environ).exit_code == 0

    @contextmanager
    def cut_off(out, total):  # what a failover's fence does to the load's session
        def progress(p):
            if p.phase == "validating":
                with env.node(env.require_state().leader).connect() as admin:
                    admin.execute(
                        "select pg_terminate_backend(pid) from pg_stat_activity"
                        " where application_name = 'voke ingest'"
                    )

        yield progress

    monkeypatch.setattr(ingest_cmd, "_progress_bar", cut_off)
    with held_by_another_voke(env.home / "dr" / "dr.lock", "drill failover pid 7"):
        lost = voke("ingest", "load", str(path), "--json", environ=environ)
    assert lost.exit_code == 4, lost.stdout
    assert lost.json["error"]["hint"] == (
        "another DR operation is running (drill failover pid 7): rerun the same command once it ends"
    )
    monkeypatch.undo()
    assert voke("ingest", "load", str(path), "--json", environ=environ).exit_code == 0  # and it does


@pytest.mark.parametrize(
    ("args", "after_open"),
    [
        (["ingest", "load", "{batch}"], False),
        (["ingest", "migrate", "--yes"], False),
        (["ingest", "batches"], False),
        (["ingest", "proof", "T1"], False),
        (["chain", "anchors"], False),
        (["chain", "anchors"], True),
        (["chain", "anchor", "cancel", "0123456789abcdef", "--dry-run"], True),
    ],
    ids=lambda v: " ".join(v[:2]) if isinstance(v, list) else ("after the open" if v else "before"),
)
def test_a_command_whose_first_connection_finds_the_primary_stopped_by_a_dr_operation_names_it(
    voke, environ, env, held_by_another_voke, tmp_path, monkeypatch, args, after_open
):
    # The review's race, made certain: a failover stopped the leader after the command saw the
    # environment running and before it connected (`ensure_local`, then `platform_database`).
    # The load named the DR operation only from `load_batch` on; this connection failed bare.
    # AFTER_OPEN: the chain store's open found the database, then its own connection failed
    # bare (only the open named the operation).
    from voketag_ops.adapters.local.environment import LocalEnvironment

    batch = tmp_path / "a.csv"
    batch.write_text("tag_id,sku,product_name,factory_id,manufactured_at\nT1,S,N,F,2024-01-01T00:00:00Z\n")
    looked_up = LocalEnvironment.database

    def stopped_first(self, name, *, create):
        if after_open:  # (the chain database made first, so a read-only open finds it)
            found = looked_up(self, name, create=True)
            self.primary().stop()
            return found
        self.primary().stop()  # as the failover's fence does, between the look and the connection
        return looked_up(self, name, create=create)

    monkeypatch.setattr(LocalEnvironment, "database", stopped_first)
    with held_by_another_voke(env.home / "dr" / "dr.lock", "dr failover pid 7"):
        lost = voke(*(a.format(batch=batch) for a in args), "--json", environ=environ)
    monkeypatch.undo()
    try:
        assert lost.exit_code == 4, lost.stdout
        assert lost.json["error"]["type"] == "ChainStoreError" or not after_open
        assert lost.json["error"]["hint"] == (
            "another DR operation is running (dr failover pid 7): rerun the same command once it ends"
        )
    finally:
        assert voke("env", "up", environ=environ).exit_code == 0  # the leader back for the next test


@contextlib.contextmanager
def another_voke_starting(env, seconds=1.5):
    """Another voke holding the DR lock as an on-demand start does (`env up pid 7`) for SECONDS."""
    import subprocess
    import sys

    code = (
        "import fcntl, os, sys, time; fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT, 0o600);"
        " fcntl.flock(fd, fcntl.LOCK_EX); os.ftruncate(fd, 0); os.pwrite(fd, b'env up pid 7', 0);"
        f" print('held', flush=True); time.sleep({seconds})"
    )
    starter = subprocess.Popen(
        [sys.executable, "-c", code, str(env.home / "dr" / "dr.lock")], stdout=subprocess.PIPE, text=True
    )
    try:
        assert starter.stdout is not None and starter.stdout.readline().strip() == "held"
        yield
    finally:
        starter.wait()


def test_a_load_waits_for_another_voke_starting_the_environment(voke, environ, env, tmp_path):

    path = tmp_path / "batch.csv"
    assert (
        voke(
            "ingest", "sample", "--rows", "100", "--seed", "11", "--out", str(path), environ=environ
        ).exit_code
        == 0
    )
    with another_voke_starting(env):  # another load starting the environment on demand
        loaded = voke("ingest", "load", str(path), "--json", environ=environ)
    assert loaded.exit_code == 0, loaded.stdout  # exit 5 before: "another DR operation is running"


def test_the_holder_of_a_lock_reads_back_as_written():
    from voketag_ops.locks import holder_parts

    assert holder_parts("drill failover pid 8") == ("drill failover", 8)
    assert holder_parts("another voke process") == ("another voke process", None)


@contextlib.contextmanager
def squatting(port):
    """Another process's listener on PORT (a socket of this one: the node cannot bind it)."""
    import socket

    squatter = socket.socket()
    squatter.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    squatter.bind(("127.0.0.1", port))
    squatter.listen()
    try:
        yield
    finally:
        squatter.close()


def test_a_leader_whose_port_another_process_took_moves_to_a_free_one_and_everything_follows(
    voke, environ, env
):
    # The only way out was `env destroy --discard-chain` (the chain lost) or finding and stopping
    # the squatter. The standby must stream from the new port, the services must log in to it.
    import time

    leader, follower = env.require_state().leader, env.require_state().follower
    old = env.node(leader).port
    assert voke("env", "move-port", leader, "--yes", environ=environ).exit_code == 5  # it runs: its own
    with env.node(leader).connect() as conn:
        conn.execute("create table if not exists t_moved (id int primary key)")
    env.node(leader).stop()
    with squatting(old):
        up = voke("env", "up", "--json", environ=environ)
        assert up.exit_code == 4 and f"voke env move-port {leader} --yes" in up.json["error"]["message"]
        taken = env.node(follower).port
        assert voke("env", "move-port", leader, "--port", str(taken), "--yes", environ=environ).exit_code == 2
        assert voke("env", "move-port", leader, environ=environ).exit_code == 2  # --yes, no terminal
        plan = voke("env", "move-port", leader, "--dry-run", "--json", environ=environ)
        assert plan.exit_code == 0 and env.node(leader).port == old
        moved = voke("env", "move-port", leader, "--yes", "--json", environ=environ)
        assert moved.exit_code == 0, moved.stdout + moved.stderr
        result = moved.json["result"]
        new = result["port"]
        assert new != old and env.node(leader).port == new and result["standby_repointed"] == follower
        assert {r["secret"] for r in result["services"]["repointed"]} and result["services"]["stopped"]
        assert all(healthy is None or not healthy for healthy, _v in services(environ).values())
        human = voke("env", "move-port", leader, "--port", str(new), "--yes", environ=environ)
        assert human.exit_code == 0 and "nothing changed" in human.stdout
        assert voke("env", "up", environ=environ).exit_code == 0
    assert all(healthy for healthy, _version in services(environ).values())
    with env.node(leader).connect() as conn:
        conn.execute("insert into t_moved values (1)")
    check = voke("dr", "check", environ=environ)
    assert check.exit_code == 0, check.stdout  # the standby streams from the new port
    deadline = time.monotonic() + 30
    while rows(env.node(follower), "t_moved") != [1] and time.monotonic() < deadline:
        time.sleep(0.1)
    assert rows(env.node(follower), "t_moved") == [1]
    events = voke("audit", "show", "--event-type", "env.move_port", "--json", environ=environ)
    entries = events.json["result"]["entries"][-4:]  # (an earlier test's refused move before them)
    assert [e["result"] for e in entries] == ["failure", "failure", "success", "success"]  # refused: audited
    assert [(e["details"]["old_port"], e["details"]["port"]) for e in entries[2:]] == [(old, new), (new, new)]


def test_a_stopped_standby_moves_alone(voke, environ, env):
    follower = env.require_state().follower
    old = env.node(follower).port
    env.node(follower).stop()
    with squatting(old):
        moved = voke("env", "move-port", follower, "--yes", "--json", environ=environ)
        assert moved.exit_code == 0, moved.stdout + moved.stderr
        assert moved.json["result"]["services"] is None and moved.json["result"]["standby_repointed"] is None
        assert voke("env", "up", environ=environ).exit_code == 0
    assert voke("dr", "check", environ=environ).exit_code == 0


def test_a_failback_stopped_by_a_taken_port_is_resumed_once_the_node_moved(voke, environ, env, monkeypatch):
    # The last CI run: a failback's old leader could not start again, a process holding its
    # port; the message named `env destroy --discard-chain`, which an unfinished failback refuses.
    assert voke("dr", "failover", "--yes", environ=environ).exit_code == 0  # replica leads
    real, held = dr.write_standby_config, contextlib.ExitStack()

    def then_taken(env_, node, upstream):
        real(env_, node, upstream)
        if node.name == "replica" and not held._exit_callbacks:
            held.enter_context(squatting(node.port))

    monkeypatch.setattr(dr, "write_standby_config", then_taken)
    with held:
        stuck = voke("dr", "failback", "--yes", "--json", environ=environ)
        monkeypatch.undo()
        assert stuck.exit_code == 7, stuck.stdout
        assert "`voke env move-port replica --yes`" in stuck.json["error"]["message"]
        moved = voke("env", "move-port", "replica", "--yes", "--json", environ=environ)
        assert moved.exit_code == 0, moved.stdout + moved.stderr
        assert "voke dr failback --yes" in moved.json["result"]["next"]
        resumed = voke("dr", "failback", "--yes", environ=environ)
        assert resumed.exit_code == 0, resumed.stdout + resumed.stderr
    assert env.require_state().leader == "primary"
    assert voke("dr", "check", environ=environ).exit_code == 0


def test_a_move_cut_short_is_finished_by_running_it_again_with_the_new_port(voke, environ, env, monkeypatch):
    # Found by review: a move that failed after recording the port said "nothing was changed",
    # and running it again with the new port said "nothing changed" with the services' secret
    # and the standby still naming the old port.
    from voketag_ops.errors import BackendError
    from voketag_ops.workflows import dr as dr_flow

    leader = env.require_state().leader
    env.node(leader).stop()
    with squatting(taken := pick_port()):
        busy = voke("env", "move-port", leader, "--port", str(taken), "--yes", "--json", environ=environ)
    assert busy.exit_code == 4 and busy.json["error"]["message"].startswith(f"port {taken} is in use")
    assert "name another --port" in busy.json["error"]["message"]

    def unreachable(*_args, **_kwargs):
        raise BackendError("the secret store cannot be written")

    monkeypatch.setattr(dr_flow, "repoint_services", unreachable)
    first = env.node(leader).port
    cut = voke("env", "move-port", leader, "--yes", "--json", environ=environ)
    monkeypatch.undo()
    assert cut.exit_code == 7  # the port is recorded: not "nothing was changed"
    new = env.node(leader).port
    assert cut.json["error"]["hint"] == f"`voke env move-port {leader} --yes` finishes the move"
    up = voke("env", "up", "--json", environ=environ)  # it would start the leader where no service looks
    assert up.exit_code == 5 and f"voke env move-port {leader} --yes" in up.json["error"]["message"]
    check = voke("dr", "check", environ=environ)  # cron sees it
    assert check.exit_code == 1 and f"must be finished: voke env move-port {leader} --yes" in check.stdout
    other = env.require_state().follower  # another node's move would drop the record of this one
    refused = voke("env", "move-port", other, "--yes", "--json", environ=environ)
    assert refused.exit_code == 5 and f"voke env move-port {leader}` must be finished" in refused.stdout
    with squatting(new):  # and the port it recorded taken meanwhile: said, not a loop
        busy = voke("env", "move-port", leader, "--yes", "--json", environ=environ)
    assert busy.exit_code == 4 and "which the interrupted move recorded" in busy.json["error"]["message"]
    done = voke("env", "move-port", leader, "--yes", "--json", environ=environ)  # the recorded port
    assert done.exit_code == 0, done.stdout + done.stderr
    result = done.json["result"]
    assert result["changed"] and (result["old_port"], result["port"]) == (first, new)
    assert result["services"]["repointed"] and result["services"]["stopped"]
    again = voke("env", "move-port", leader, "--port", str(new), "--yes", environ=environ)
    assert again.exit_code == 0 and "nothing changed" in again.stdout
    assert voke("env", "up", environ=environ).exit_code == 0
    assert all(healthy for healthy, _version in services(environ).values())
    assert voke("dr", "check", environ=environ).exit_code == 0


def test_moving_the_fenced_leader_of_a_failover_cut_short_leaves_the_services_alone(
    voke, environ, env, monkeypatch
):
    # Found by review: the fenced old leader is still the recorded leader until the resume
    # promotes the standby; moving it stopped every service and pointed the secret at it.
    interrupt_when(monkeypatch, dr, "promote", lambda node: True)
    cut = voke("dr", "failover", "--yes", "--json", environ=environ)
    monkeypatch.undo()
    assert cut.exit_code == 130, cut.stdout
    before = services(environ)
    moved = voke("env", "move-port", "primary", "--yes", "--json", environ=environ)
    assert moved.exit_code == 0, moved.stdout + moved.stderr
    result = moved.json["result"]
    assert (result["leader"], result["standby_repointed"], result["services"]) == (False, None, None)
    assert "voke dr failover --yes" in result["next"]
    assert services(environ) == before
    assert voke("dr", "failover", "--yes", environ=environ).exit_code == 0
    assert all(healthy for healthy, _version in services(environ).values())
    again = voke(
        "env", "move-port", "primary", "--port", str(result["port"]), "--yes", "--json", environ=environ
    )
    assert again.json["result"]["next"] == "`voke dr failback --yes` brings it back"  # env up leaves it down
    assert voke("dr", "failback", "--yes", environ=environ).exit_code == 0  # the fenced node, on its new port
    assert env.node("primary").port == result["port"] and env.require_state().leader == "primary"
    assert voke("dr", "check", environ=environ).exit_code == 0


def test_a_move_journal_that_cannot_be_read_stops_env_up_and_one_of_a_discarded_instance_goes(
    voke, environ, env
):
    journal = env.home / "dr" / "move-port.json"
    journal.write_text('{"node": "primary", "old_po')
    try:
        up = voke("env", "up", "--json", environ=environ)
        assert up.exit_code == 5 and "move-port.json records an interrupted" in up.json["error"]["message"]
        check = voke("dr", "check", environ=environ)
        assert check.exit_code == 1 and "move-port.json records an interrupted" in check.stdout
    finally:
        journal.unlink()
    journal.write_text(json.dumps({"node": "discarded-since", "old_port": 30001, "port": 30002}))
    assert voke("env", "up", environ=environ).exit_code == 0  # nothing left to finish
    assert not journal.exists()


def pick_port():
    from voketag_ops.adapters.local.postgres import pick_free_port

    return pick_free_port()


def test_two_commands_starting_a_stopped_environment_together_both_run(voke, environ, env, tmp_path):
    # Found by review: both saw no other start, both tried `env up`; the one the lock refused
    # exited 5 ("another DR operation is running (env up pid N)") instead of waiting for it.
    import subprocess
    import sys

    files = []
    for seed in (21, 22):
        path = tmp_path / f"b{seed}.csv"
        made = voke(
            "ingest", "sample", "--rows", "200", "--seed", str(seed), "--out", str(path), environ=environ
        )
        assert made.exit_code == 0
        files.append(path)
    assert voke("env", "down", environ=environ).exit_code == 0
    runs = [
        subprocess.Popen(
            [sys.executable, "-m", "voketag_ops", "ingest", "load", str(path), "--json"],
            env=environ,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for path in files
    ]
    for run in runs:
        out, err = run.communicate(timeout=600)
        assert run.returncode == 0, out + err
    assert voke("dr", "check", environ=environ).exit_code == 0


def test_a_rotation_waits_for_another_voke_starting_the_environment(voke, environ, env):
    # Found by review: its early look at the DR lock refused any holder, so a rotation beside a
    # load starting the environment on demand was exit 5 while the load waited and went on.

    assert voke("env", "down", environ=environ).exit_code == 0
    with another_voke_starting(env):
        rotated = voke("rotate", "db-password", "--yes", "--json", environ=environ)
    assert rotated.exit_code == 0, rotated.stdout + rotated.stderr
    assert voke("dr", "check", environ=environ).exit_code == 0
