"""What `voke doctor` says of a leader or standby that does not run (frozen, fenced), and what
`dr failover`, `dr failback` and `env move-port` record of the connection secret versions they
make. The module runs its own environment (a failover must not move the shared one) and walks it through
the scenarios in file order; every test leaves one writable leader with a streaming standby for
the next."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest

from voketag_ops.adapters.local.environment import LocalEnvironment
from voketag_ops.config import LocalSettings
from voketag_ops.core.dr_checks import REBUILD_STANDBY
from voketag_ops.testing.local import frozen

SECRET = "db-app"  # rotation.db_users' default connection secret


@pytest.fixture(scope="module")
def home(tmp_path_factory):
    path = tmp_path_factory.mktemp("dr-doctor") / "home"
    yield path
    from voketag_ops.config import Settings
    from voketag_ops.workflows.env import LocalPlatform

    LocalPlatform(Settings(local=LocalSettings(home=path))).destroy(discard_chain=True)


@pytest.fixture
def environ(home, make_environ):
    return make_environ(home, VOKE_LOCAL__ARCHIVE_TIMEOUT="5", VOKE_DR__LAG_PROBE_SECONDS="1")


def local_check(voke, environ):
    doctor = voke("doctor", "--json", environ=environ)
    [check] = [c for c in doctor.json["result"]["checks"] if c["name"] == "local environment"]
    return doctor.exit_code, check


def test_doctor_tells_to_resume_a_frozen_leader_by_its_pids_as_env_up_does(voke, home, environ):
    # Found by review: doctor listed the pids but hinted `voke env up`, which refuses (exit 5).
    assert voke("env", "up", environ=environ).exit_code == 0
    env = LocalEnvironment(LocalSettings(home=home))
    with frozen(env.primary()) as pids:
        status = voke("env", "status", "--json", environ=environ).json["result"]
        assert status["primary"]["stopped_pids"] == pids and status["replica"]["stopped_pids"] == []
        code, check = local_check(voke, environ)
        assert code == 1 and f"leader primary (pid {pids[0]}) does not answer" in check["detail"], check
        assert f"`kill -CONT {' '.join(map(str, pids))}`" in check["hint"], check
        assert "env up" not in check["hint"], check
        refused = voke("env", "up", "--json", environ=environ)  # the remedy env up names, the same
        assert refused.exit_code == 5 and check["hint"] in refused.json["error"]["hint"]
    assert voke("env", "up", environ=environ).exit_code == 0


def test_doctor_tells_to_resume_or_rebuild_a_frozen_standby_as_dr_check_does(voke, home, environ):
    # Found by review: doctor hinted `voke env up`, which leaves a frozen standby as it is.
    env = LocalEnvironment(LocalSettings(home=home))
    with frozen(env.standby()) as pids:
        code, check = local_check(voke, environ)
        assert code == 1 and f"standby replica (pid {pids[0]}) does not answer" in check["detail"], check
        assert f"`kill -CONT {' '.join(map(str, pids))}`" in check["hint"], check
        assert REBUILD_STANDBY in check["hint"] and "env up" not in check["hint"], check
        # the drills that promote it refuse with the same hint (found by review: they said
        # `voke env up`, which leaves a frozen standby as it is)
        dry = voke("drill", "run", "failover", "--dry-run", "--json", environ=environ)
        assert dry.exit_code == 5 and "needs a standby to promote" in dry.json["error"]["message"], dry.stdout
        assert dry.json["error"]["hint"] == check["hint"], dry.json["error"]
    assert voke("env", "up", environ=environ).exit_code == 0
    assert voke("dr", "check", environ=environ).exit_code == 0


def test_the_drills_refuse_a_stopped_standby_that_env_up_would_not_start(voke, home, environ):
    # Found by review: a stopped follower without standby.signal passed the dry runs (exit 0)
    # and the run failed later in `env up` (exit 7), while `dr failover` refused it (exit 5).
    env = LocalEnvironment(LocalSettings(home=home))
    standby = env.standby()
    signal_file, aside = standby.data_dir / "standby.signal", home / "standby.signal.aside"
    assert standby.stop()
    signal_file.rename(aside)
    try:
        code, check = local_check(voke, environ)
        assert code == 1 and check["detail"] == "standby replica not running: not a standby", check
        for scenario in ("failover", "all"):
            dry = voke("drill", "run", scenario, "--dry-run", "--json", environ=environ)
            assert dry.exit_code == 5, dry.stdout + dry.stderr
            assert (
                "a standby to promote: the standby replica is not running as a standby"
                in (dry.json["error"]["message"])
            ), dry.json["error"]
            assert dry.json["error"]["hint"].startswith(check["hint"]), dry.json["error"]
        run = voke("drill", "run", "failover", "--yes", "--json", environ=environ)
        assert run.exit_code == 5 and "needs a standby to promote" in run.json["error"]["message"], run.stdout
        assert not standby.running  # nothing was started
    finally:
        aside.rename(signal_file)
    assert voke("env", "up", environ=environ).exit_code == 0
    assert voke("dr", "check", environ=environ).exit_code == 0


def test_doctor_names_the_fenced_former_leader_after_a_failover(voke, home, environ):
    # Found by review: doctor said "replica not running" (the running leader) with the hint
    # `voke env up`, which leaves the fenced former leader down.
    failover = voke("dr", "failover", "--yes", "--json", environ=environ)
    assert failover.exit_code == 0, failover.stdout + failover.stderr
    code, check = local_check(voke, environ)
    assert code == 1 and check["detail"] == "standby primary not running: fenced former leader", check
    assert "`voke dr failback --yes`" in check["hint"] and "env up" not in check["hint"], check
    # Found by review: a failover cut short after it recorded the new leader left doctor hinting
    # `voke dr failback --yes`, which refuses until the failover is finished.
    operation = {
        "operation": "failover",
        "resume": "voke dr failover --yes",
        "done": ["planned", "fenced", "promoted", "leader"],
        "old_leader": "primary",
        "new_leader": "replica",
    }
    (home / "dr" / "operation.json").write_text(json.dumps(operation))
    code, check = local_check(voke, environ)
    assert code == 1 and check["detail"].startswith("an interrupted `voke dr failover` must be finished"), (
        check
    )
    assert check["hint"] == "voke dr failover --yes", check  # the failback only once it is finished
    resumed = voke("dr", "failover", "--yes", environ=environ)
    assert resumed.exit_code == 0, resumed.stdout + resumed.stderr
    assert local_check(voke, environ)[1]["detail"] == "standby primary not running: fenced former leader"
    failback = voke("dr", "failback", "--yes", environ=environ)
    assert failback.exit_code == 0, failback.stdout + failback.stderr
    assert local_check(voke, environ)[1]["ok"] is True


def repointed_to(result, port):
    """The services part of a failover or failback's JSON: the secret's versions naming PORT."""
    services = result["services"]
    [repointed] = services["repointed"]
    assert repointed["secret"] == SECRET and repointed["port"] == port, services
    assert repointed["versions"]["current"] is not None, services
    assert services["redeployed"], services
    return services


def audited_services(voke, environ, event_type):
    """The `services` of the last EVENT_TYPE audit event, which masks no name."""
    entries = voke("audit", "show", "-e", event_type, "--json", environ=environ).json["result"]["entries"]
    details = entries[-1]["details"]
    assert "***" not in json.dumps(details), details  # a secret's name is not a secret's value
    return details["services"]


def as_audited(services):
    return [
        {"secret_name": r["secret"], "versions": r["versions"], "host": None, "port": r["port"]}
        for r in services["repointed"]
    ]


def test_failover_and_failback_record_the_secret_versions_they_make(voke, home, environ):
    # Found by review: the dr.failover and dr.failback events had no secret versions.
    env = LocalEnvironment(LocalSettings(home=home))
    failover = voke("dr", "failover", "--yes", "--json", environ=environ)
    assert failover.exit_code == 0, failover.stdout + failover.stderr
    services = repointed_to(failover.json["result"], env.node("replica").port)
    audited = audited_services(voke, environ, "dr.failover")
    assert audited["repointed"] == as_audited(services) and audited["redeployed"] == services["redeployed"]
    # Found by review: what the promoted standby had replayed (the data-loss boundary) was only
    # in that run's --json; the event is what stays.
    [promote] = [s for s in failover.json["result"]["steps"] if s["name"] == "promote replica"]
    replayed = {k: promote["detail"][k] for k in ("replayed_lsn", "last_replayed_commit")}
    assert replayed["replayed_lsn"] and replayed["last_replayed_commit"], promote
    assert {k: failover.json["result"][k] for k in replayed} == replayed
    events = voke("dr", "history", "--json", environ=environ).json["result"]["events"]
    assert {k: events[-1]["details"][k] for k in replayed} == replayed, events[-1]
    failback = voke("dr", "failback", "--yes", "--json", environ=environ)
    assert failback.exit_code == 0, failback.stdout + failback.stderr
    services = repointed_to(failback.json["result"], env.node("primary").port)
    audited = audited_services(voke, environ, "dr.failback")
    assert audited["repointed"] == as_audited(services) and audited["redeployed"] == services["redeployed"]
    again = voke("dr", "failback", "--yes", "--json", environ=environ)  # nothing to switch back
    assert again.exit_code == 0 and again.json["result"]["services"] is None, again.stdout


@contextlib.contextmanager
def exiting_at_start(tmp_path, monkeypatch, service):
    """New instances of SERVICE exit as they start (a broken build, say): a sitecustomize on the
    PYTHONPATH the instances inherit ends their interpreter before the service runs."""
    site = tmp_path / "exiting-at-start"
    site.mkdir()
    (site / "sitecustomize.py").write_text(
        "import os, sys\n"
        f"if {service!r} in sys.argv and sys.argv[sys.argv.index({service!r}) - 1] == '--name':\n"
        "    os._exit(3)\n"
    )
    with monkeypatch.context() as patched:
        patched.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(site), os.environ.get("PYTHONPATH")])))
        yield


def set_login(node, roles, login):
    """ROLES may log in, or not (NOLOGIN), on NODE (a writable one) and the standbys replaying it."""
    with node.connect() as conn:
        for role in roles:
            conn.execute(f'alter role "{role}" {"login" if login else "nologin"}')


def connection_secret(home):
    """The roles and passwords the services' connection secret holds, in any version."""
    from voketag_ops.adapters.local.secrets import LocalSecretStore

    store = LocalSecretStore(home)
    creds = [json.loads(store.access(SECRET, v.version)) for v in store.get(SECRET).versions]
    return {c["username"] for c in creds}, {c["password"] for c in creds}


def last_event(voke, environ, event_type):
    return voke("audit", "show", "-e", event_type, "--json", environ=environ).json["result"]["entries"][-1]


def test_a_failover_or_failback_whose_redeploy_fails_records_the_versions_it_made(
    voke, home, environ, tmp_path, monkeypatch
):
    # Found by review: the local commands audited `services` only when the repoint returned; a
    # redeploy failing inside it (an instance exiting at start, a health that never comes) left
    # the failure event without the secret versions it had made.
    from voketag_ops.adapters.local.secrets import LocalSecretStore

    env = LocalEnvironment(LocalSettings(home=home))
    store = LocalSecretStore(home)
    outputs = []
    before = max(v.version for v in store.get(SECRET).versions)
    with exiting_at_start(tmp_path, monkeypatch, "admin-service"):
        failover = voke("dr", "failover", "--yes", "--json", environ=environ)
    outputs += [failover.stdout, failover.stderr]
    assert failover.exit_code == 7 and "admin-service" in failover.json["error"]["message"], failover.stdout
    # (exit 4, "nothing was changed", named no resume: the leader had moved)
    assert failover.json["error"]["hint"].startswith(
        "once that is fixed, `voke dr failover --yes` resumes it"
    )
    assert last_event(voke, environ, "dr.failover")["result"] == "failure"
    services = audited_services(voke, environ, "dr.failover")
    made = {"previous": before + 1, "current": before + 2}
    port = env.node("replica").port
    assert services["repointed"] == [{"secret_name": SECRET, "versions": made, "host": None, "port": port}], (
        services
    )
    assert services["made"] == [
        {"secret_name": SECRET, "alias": alias, "version": made[alias]} for alias in ("previous", "current")
    ], services
    assert services["redeployed"] == ["blockchain-service", "factory-service"], services  # not admin's
    resumed = voke("dr", "failover", "--yes", "--json", environ=environ)
    assert resumed.exit_code == 0, resumed.stdout + resumed.stderr
    assert resumed.json["result"]["services"]["repointed"] == []  # the versions are made already

    # The failback's new instances never become healthy: the login is refused on the new leader.
    roles, _ = connection_secret(home)
    set_login(env.node("replica"), roles, False)  # (primary, rebuilt from it, replays it)
    try:
        failback = voke(
            "dr", "failback", "--yes", "--json", environ={**environ, "VOKE_ROTATION__HEALTH_TIMEOUT": "5"}
        )
    finally:
        set_login(env.node("primary"), roles, True)  # (promoted: the leader now)
    outputs += [failback.stdout, failback.stderr]
    assert failback.exit_code == 7 and "not healthy" in failback.json["error"]["message"], failback.stdout
    assert failback.json["error"]["hint"].startswith(
        "once that is fixed, `voke dr failback --yes` resumes it"
    )
    assert last_event(voke, environ, "dr.failback")["result"] == "failure"
    services = audited_services(voke, environ, "dr.failback")
    made = {"previous": before + 3, "current": before + 4}
    port = env.node("primary").port
    assert services["repointed"] == [{"secret_name": SECRET, "versions": made, "host": None, "port": port}], (
        services
    )
    assert services["made"] == [
        {"secret_name": SECRET, "alias": alias, "version": made[alias]} for alias in ("previous", "current")
    ], services
    assert services["redeployed"] == [], services
    resumed = voke("dr", "failback", "--yes", "--json", environ=environ)
    assert resumed.exit_code == 0, resumed.stdout + resumed.stderr
    assert env.require_state().leader == "primary"
    assert voke("dr", "check", environ=environ).exit_code == 0
    _, passwords = connection_secret(home)
    seen = (home / "audit" / "audit.jsonl").read_text() + "".join(outputs)
    assert passwords and not [p for p in passwords if p in seen]


def killed_once_repointed(home, environ, command, port):
    """Run `voke dr COMMAND --yes` and kill -9 it once its repoint moved the connection secret's
    aliases to versions naming PORT (its redeploy under way): those versions."""
    from voketag_ops.adapters.local.secrets import LocalSecretStore

    store = LocalSecretStore(home)
    run = subprocess.Popen(
        [sys.executable, "-m", "voketag_ops", "dr", command, "--yes"],
        env=environ,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        while True:
            assert run.poll() is None, f"`dr {command}` ended before its repoint moved the aliases"
            aliases = store.get(SECRET).aliases
            if json.loads(store.access(SECRET, aliases["current"]))["port"] == port:
                return {alias: aliases[alias] for alias in ("previous", "current")}
            time.sleep(0.02)
    finally:
        run.send_signal(signal.SIGKILL)
        run.wait()


def audited_versions(home):
    """Every secret version the audit log's events name in their `services`."""
    named = set()
    for line in (home / "audit" / "audit.jsonl").read_text().splitlines():
        services = (json.loads(line).get("details") or {}).get("services")
        if not isinstance(services, dict):  # (a rotation's are service names)
            continue
        for item in [*services.get("repointed", []), *services.get("found", [])]:
            named.update(item["versions"].values())
        named.update(item["version"] for item in services.get("made", []))
    return named


def test_a_failover_or_failback_killed_after_its_repoint_is_resumed_naming_its_versions(voke, home, environ):
    # Found by review: kill -9 once the aliases moved left versions no event ever named: the
    # killed run wrote no event with them, and its resume, finding the aliases on the new leader,
    # made nothing and audited `repointed: []`.
    env = LocalEnvironment(LocalSettings(home=home))
    outputs = []
    for command, leader in (("failover", "replica"), ("failback", "primary")):
        port = env.node(leader).port
        made = killed_once_repointed(home, environ, command, port)
        assert made["current"] not in audited_versions(home)  # the killed run's, if any, has none
        resumed = voke("dr", command, "--yes", "--json", environ=environ)
        outputs += [resumed.stdout, resumed.stderr]
        assert resumed.exit_code == 0, resumed.stdout + resumed.stderr
        found = {"versions": made, "host": None, "port": port}
        services = resumed.json["result"]["services"]
        assert services["repointed"] == [] and services["found"] == [{"secret": SECRET, **found}], services
        assert last_event(voke, environ, f"dr.{command}")["result"] == "success"
        audited = audited_services(voke, environ, f"dr.{command}")
        assert audited["repointed"] == [] and audited["found"] == [{"secret_name": SECRET, **found}], audited
        assert env.require_state().leader == leader
    assert voke("dr", "check", environ=environ).exit_code == 0
    _, passwords = connection_secret(home)
    seen = (home / "audit" / "audit.jsonl").read_text() + "".join(outputs)
    assert passwords and not [p for p in passwords if p in seen]


def test_a_full_disk_refusing_the_secret_store_mid_repoint_is_exit_7_naming_the_resume(
    voke, home, environ, monkeypatch
):
    # Found by review: the local store lets the file system's OSError through, so a full disk
    # once the leader was fenced read as exit 4 "nothing was changed" (EPERM: exit 3), with no
    # resume named; the same in `env move-port` once the node's new port is recorded.
    import errno

    from voketag_ops.adapters.local.secrets import LocalSecretStore

    real = LocalSecretStore.add_version
    calls = []

    def full_on_the_second(self, name, payload):
        calls.append(name)
        if len(calls) == 2:
            raise OSError(errno.ENOSPC, "No space left on device", str(home / "secrets" / f"{name}.json"))
        return real(self, name, payload)

    env = LocalEnvironment(LocalSettings(home=home))
    with monkeypatch.context() as patched:
        patched.setattr(LocalSecretStore, "add_version", full_on_the_second)
        failover = voke("dr", "failover", "--yes", "--json", environ=environ)
    assert failover.exit_code == 7, failover.stdout + failover.stderr
    error = failover.json["error"]
    assert (
        "No space left on device: " in error["message"]
        and "`voke dr failover --yes` resumes it" in error["hint"]
    )
    assert voke("dr", "failover", "--yes", environ=environ).exit_code == 0
    assert voke("dr", "failback", "--yes", environ=environ).exit_code == 0
    assert voke("env", "down", "--yes", environ=environ).exit_code == 0
    calls.clear()
    leader = env.require_state().leader
    with monkeypatch.context() as patched:
        patched.setattr(LocalSecretStore, "add_version", full_on_the_second)
        moved = voke("env", "move-port", leader, "--yes", "--json", environ=environ)
    assert moved.exit_code == 7, moved.stdout + moved.stderr
    assert "No space left on device: " in moved.json["error"]["message"]
    assert moved.json["error"]["hint"] == f"`voke env move-port {leader} --yes` finishes the move"
    assert voke("env", "move-port", leader, "--yes", environ=environ).exit_code == 0
    assert voke("env", "up", environ=environ).exit_code == 0
    assert voke("dr", "check", environ=environ).exit_code == 0


def test_move_port_records_the_secret_by_name(voke, home, environ):
    # Found by review: the env.move_port event showed the secret's name as ***.
    assert voke("env", "down", environ=environ).exit_code == 0
    # Found by review: the dry run named a free port, the run then picked another one.
    plan = voke("env", "move-port", "primary", "--dry-run", "--json", environ=environ)
    assert plan.exit_code == 0, plan.stdout + plan.stderr
    assert plan.json["result"]["port"] is None and plan.json["result"]["port_chosen_at_run"] is True
    human = voke("env", "move-port", "primary", "--dry-run", environ=environ)
    assert "record primary on a free port picked when the move runs" in human.stdout, human.stdout
    assert "`--port N` names the port instead" in human.stdout
    with socket.socket() as probe:  # a free port, named: the dry run says it
        probe.bind(("127.0.0.1", 0))
        free = probe.getsockname()[1]
    named = voke("env", "move-port", "primary", "--port", str(free), "--dry-run", "--json", environ=environ)
    assert (named.json["result"]["port"], named.json["result"]["port_chosen_at_run"]) == (free, False)
    moved = voke("env", "move-port", "primary", "--yes", "--json", environ=environ)
    assert moved.exit_code == 0, moved.stdout + moved.stderr
    services = moved.json["result"]["services"]
    [repointed] = services["repointed"]
    assert repointed["secret"] == SECRET and repointed["port"] == moved.json["result"]["port"]
    assert audited_services(voke, environ, "env.move_port")["repointed"] == as_audited(services)
    assert voke("env", "up", environ=environ).exit_code == 0
    assert voke("dr", "check", environ=environ).exit_code == 0


def test_a_move_port_whose_redeploy_fails_records_the_versions_it_made_and_is_exit_7(
    voke, home, environ, tmp_path, monkeypatch
):
    # Found by review: `env move-port` audited `services` only when the repoint returned (a
    # redeploy failing inside it left the failure event without the versions it had made), and
    # such a failure was exit 4, "nothing was changed", with the port and secret moved already.
    from voketag_ops.adapters.local.secrets import LocalSecretStore
    from voketag_ops.errors import BackendError
    from voketag_ops.workflows import dr as dr_flow

    env = LocalEnvironment(LocalSettings(home=home))
    leader = env.require_state().leader
    assert voke("env", "up", environ=environ).exit_code == 0
    env.node(leader).stop()  # the leader alone is down (its port wanted elsewhere); the services run on

    def unreachable(*_args, **_kwargs):
        raise BackendError("the secret store cannot be written")

    monkeypatch.setattr(dr_flow, "repoint_services", unreachable)
    cut = voke("env", "move-port", leader, "--yes", "--json", environ=environ)
    monkeypatch.undo()
    finish = f"`voke env move-port {leader} --yes` finishes the move"
    assert cut.exit_code == 7 and cut.json["error"]["hint"] == finish, cut.stdout
    port = env.node(leader).port
    said = cut.json["error"]["message"]
    assert said.startswith(
        f"`voke env move-port {leader}` stopped part-way, {leader} recorded on port {port}"
    )
    assert "the secret store cannot be written" in said
    env.up()  # the servers alone, on the recorded port, as a load's dry run starts them
    outputs = [cut.stdout, cut.stderr]

    # Finishing the move redeploys the services against the running leader: one exits at start.
    before = max(v.version for v in LocalSecretStore(home).get(SECRET).versions)
    with exiting_at_start(tmp_path, monkeypatch, "admin-service"):
        failed = voke("env", "move-port", leader, "--yes", "--json", environ=environ)
    outputs += [failed.stdout, failed.stderr]
    assert failed.exit_code == 7, failed.stdout + failed.stderr
    assert failed.json["error"]["hint"] == finish and "admin-service" in failed.json["error"]["message"]
    assert last_event(voke, environ, "env.move_port")["result"] == "failure"
    services = audited_services(voke, environ, "env.move_port")
    made = {"previous": before + 1, "current": before + 2}  # (the previous copy first: cleanup's order)
    assert services["repointed"] == [{"secret_name": SECRET, "versions": made, "host": None, "port": port}], (
        services
    )
    assert services["redeployed"] == ["blockchain-service", "factory-service"], services  # not admin's
    done = voke("env", "move-port", leader, "--yes", "--json", environ=environ)
    outputs += [done.stdout, done.stderr]
    assert done.exit_code == 0, done.stdout + done.stderr
    result = done.json["result"]
    assert result["services"]["repointed"] == [] and result["services"]["stale"] == ["admin-service"]
    assert voke("env", "up", environ=environ).exit_code == 0  # the move is finished
    assert voke("dr", "check", environ=environ).exit_code == 0
    _, passwords = connection_secret(home)
    seen = (home / "audit" / "audit.jsonl").read_text() + "".join(outputs)
    assert passwords and not [p for p in passwords if p in seen]


def test_a_move_port_interrupted_after_its_journal_names_how_to_finish_it(voke, home, environ, monkeypatch):
    # Found by an interrupt sweep: a Ctrl-C once the journal was written (state.json naming the
    # new port) was a bare "error: interrupted", exit 130, with no hint.
    env = LocalEnvironment(LocalSettings(home=home))
    leader = env.require_state().leader
    old = env.node(leader).port
    assert voke("env", "down", environ=environ).exit_code == 0
    real = LocalEnvironment.apply_move

    def recorded_then_ctrl_c(self, plan):
        real(self, plan)
        raise KeyboardInterrupt

    monkeypatch.setattr(LocalEnvironment, "apply_move", recorded_then_ctrl_c)
    cut = voke("env", "move-port", leader, "--yes", "--json", environ=environ)
    monkeypatch.undo()
    port = env.node(leader).port
    assert cut.exit_code == 130, cut.stdout + cut.stderr
    assert cut.json["error"]["message"] == (
        f"interrupted: `voke env move-port {leader}` stopped part-way, {leader} recorded on port {port}"
    )
    assert cut.json["error"]["hint"] == f"`voke env move-port {leader} --yes` finishes the move"
    assert last_event(voke, environ, "env.move_port")["result"] == "interrupted"
    # Found by the same sweep: finishing it took the port it moves from from state.json, which the
    # cut run had changed: "from port P to P" in its report, journal and event (and doctor's note).
    plan = voke("env", "move-port", leader, "--dry-run", "--json", environ=environ)
    assert (plan.json["result"]["old_port"], plan.json["result"]["port"]) == (old, port)
    monkeypatch.setattr(LocalEnvironment, "apply_move", recorded_then_ctrl_c)
    assert voke("env", "move-port", leader, "--yes", environ=environ).exit_code == 130  # cut again
    monkeypatch.undo()
    journal = json.loads((home / "dr" / "move-port.json").read_text())
    assert journal == {"node": leader, "old_port": old, "port": port}
    done = voke("env", "move-port", leader, "--yes", "--json", environ=environ)
    assert done.exit_code == 0, done.stdout + done.stderr
    assert (done.json["result"]["old_port"], done.json["result"]["port"]) == (old, port)
    assert done.json["result"]["changed"]
    details = last_event(voke, environ, "env.move_port")["details"]
    assert (details["old_port"], details["port"]) == (old, port)
    assert voke("env", "up", environ=environ).exit_code == 0
    assert voke("dr", "check", environ=environ).exit_code == 0


def test_a_writable_standby_is_named_split_brain_with_the_fence_to_run():
    # Found by review: the drills' "no standby" hint said `voke env up` for a follower that runs
    # writable beside the leader; they and doctor share node_trouble, which names the fence.
    from voketag_ops.adapters.local.environment import node_trouble

    writable = {"name": "replica", "running": True, "role": "primary", "pid": 42, "error": None}
    said, hint = node_trouble("replica", writable, fenced=set(), pending=None)
    assert said == "standby replica is writable beside the leader (split brain)"
    assert hint.startswith("fence it with `voke dr fence replica --yes`") and "env up" not in hint


def test_past_a_failovers_fence_a_node_that_does_not_run_is_given_the_failovers_resume():
    # Found by review: doctor hinted `voke env up` (and the failback) beside `voke dr failover
    # --yes` once a failover cut short had recorded the new leader, but `env up` refuses there
    # until the failover's resume, which starts the node it promotes, has finished it.
    from voketag_ops.adapters.local.environment import node_trouble

    stopped = {"name": "replica", "running": False, "role": "stopped", "pid": None, "error": None}
    fenced_old = dict(stopped, name="primary")
    past = {"operation": "failover", "done": ["planned", "fenced", "promoted", "leader"]}
    assert node_trouble("primary", stopped, fenced={"primary"}, pending=past) == (
        "leader replica not running",
        "voke dr failover --yes",
    )
    assert node_trouble("replica", fenced_old, fenced={"primary"}, pending=past) == (
        "standby primary not running: fenced former leader",
        "voke dr failover --yes",
    )
    before = {"operation": "failover", "done": ["planned"]}  # `env up` starts it then, and warns
    assert node_trouble("primary", stopped, fenced=set(), pending=before)[1] == "voke env up"


def test_a_frozen_standby_is_given_one_remedy_wherever_it_is_named():
    # Found by review: `env up`'s warning, doctor (and the drills) and `dr check` each spelled it
    # their own way: one named no pids, one no resume without them, two not that the rebuild
    # kills a stopped standby first.
    from voketag_ops.adapters.local.environment import node_trouble
    from voketag_ops.core.dr_checks import LOCAL_REMEDIES

    rebuild = "or rebuild it from the leader with `voke dr failback --no-switch-back --clone --yes`, which kills it first"
    stopped = {
        "name": "replica",
        "running": False,
        "role": "unknown",
        "pid": 42,
        "error": "its process(es) 42 43 are stopped",
    }
    said, hint = node_trouble("replica", dict(stopped, stopped_pids=[42, 43]), fenced=set(), pending=None)
    assert said == "standby replica (pid 42) does not answer: its process(es) 42 43 are stopped"
    assert hint == f"resume them if nothing holds them on purpose: `kill -CONT 42 43`, {rebuild}"
    timing_out = dict(stopped, error="connection timeout expired", stopped_pids=[])  # a debugger, say
    paused = f"resume it if it was paused on purpose (SIGSTOP, a debugger), {rebuild}"
    assert node_trouble("replica", timing_out, fenced=set(), pending=None)[1] == paused
    assert LOCAL_REMEDIES["unanswering"] == paused  # what `dr check` says, from a status naming no pids


def test_a_move_port_under_way_is_running_not_interrupted_and_an_unreadable_record_is_said_once(
    voke, home, environ, held_by_another_voke
):
    # Found by review: doctor (and `dr check`) took a move-port holding the DR lock, its journal
    # written first, for one cut short (exit 1, hinting a command the lock refuses); an unreadable
    # operation record was "an interrupted `voke dr unreadable`", its text repeated as the hint.
    journal = home / "dr" / "move-port.json"
    journal.write_text(json.dumps({"node": "replica", "old_port": 1, "port": 2}))
    try:
        with held_by_another_voke(home / "dr" / "dr.lock", "env move-port pid 1"):
            code, check = local_check(voke, environ)
            assert code == 0 and check["ok"], check
    finally:
        journal.unlink()
    record = home / "dr" / "operation.json"
    record.write_text("{broken")
    try:
        code, check = local_check(voke, environ)
    finally:
        record.unlink()
    assert code == 1 and not check["ok"]
    assert "voke dr unreadable" not in check["detail"] and "cannot be read" in check["detail"], check
    assert check["hint"] == "voke dr status", check
