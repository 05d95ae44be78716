"""A state-changing command that refuses (exit 5, 2 or 1) writes exactly one `failure` audit
event naming its command, target and error, and changes nothing else; a dry run writes none
(PRODUCT.md: state-changing commands write an audit event with their result)."""

from __future__ import annotations

import io
import json
import sys
from pathlib import Path

import pytest

from voketag_ops.audit import AuditLog
from voketag_ops.core import merkle


def _refused(home: Path, event_type: str, target: str, exit_code: int) -> dict:
    (event,) = [e for e in AuditLog(home).entries()]  # exactly one: the refusal
    assert (event.event_type, event.target, event.result) == (event_type, target, "failure")
    assert event.details["error"]["type"] and event.details["error"]["message"]
    assert exit_code in (1, 2, 5)
    return event.details


def _interrupted_failover(home: Path) -> None:
    """A local environment on record with an interrupted failover: DR commands refuse (exit 5)."""
    home.mkdir(parents=True, exist_ok=True)
    (home / "state.json").write_text("{}")
    (home / "dr").mkdir(mode=0o700)
    (home / "dr" / "operation.json").write_text(
        json.dumps({"operation": "failover", "resume": "voke dr failover --yes", "done": []})
    )


def test_a_refused_dr_backup_is_one_failure_event(voke, make_environ, tmp_path):
    home = tmp_path / "home"
    _interrupted_failover(home)
    environ = make_environ(home)
    dry = voke("dr", "backup", "--dry-run", environ=environ)  # refused as the run is ...
    assert dry.exit_code == 5 and "voke dr failover --yes" in dry.stderr
    assert list(AuditLog(home).entries()) == []  # ... and, a dry run, writes no event, as documented
    refused = voke("dr", "backup", "--yes", "--json", environ=environ)
    assert refused.exit_code == 5, refused.stdout
    details = _refused(home, "dr.backup", "leader", refused.exit_code)
    assert "voke dr failover --yes" in details["error"]["message"]
    assert sorted(p.name for p in home.iterdir()) == ["audit", "dr", "state.json"]  # nothing else
    assert "taking a base backup" not in dry.stderr + refused.stderr  # no work announced, none done


def test_a_refused_dr_prune_is_one_failure_event_and_no_environment_none(voke, make_environ, tmp_path):
    missing = voke("dr", "prune", "--yes", "--json", environ=make_environ(tmp_path / "none"))
    assert missing.exit_code == 5 and "voke env up" in missing.json["error"]["message"]
    assert not (tmp_path / "none").exists()  # nothing to prune: no home made for an event
    home = tmp_path / "home"
    _interrupted_failover(home)
    environ = make_environ(home)
    dry = voke("dr", "prune", "--dry-run", environ=environ)
    assert dry.exit_code == 5 and "voke dr failover --yes" in dry.stderr
    assert list(AuditLog(home).entries()) == []
    refused = voke("dr", "prune", "--yes", "--json", environ=environ)
    assert refused.exit_code == 5, refused.stdout
    details = _refused(home, "dr.prune", "archive", refused.exit_code)
    assert "voke dr failover --yes" in details["error"]["message"]
    assert sorted(p.name for p in home.iterdir()) == ["audit", "dr", "state.json"]
    assert "pruning" not in dry.stderr + refused.stderr


def test_a_dry_run_or_a_refused_verification_announces_no_work(voke, make_environ, tmp_path):
    # The progress line comes once the work starts: never for a plan, nor before a refusal.
    plan = voke("dr", "backup", "--dry-run", environ=make_environ(tmp_path / "none"))
    assert plan.exit_code == 0 and "dry run" in plan.stdout and plan.stderr == ""
    home = tmp_path / "home"
    home.mkdir()
    state = {
        "version": 1, "created_at": "x", "server_user": "", "pg_bin": "/nonexistent", "pg_version": "16",
        "socket_dir": "/nonexistent", "ports": {"primary": 59991, "replica": 59992}, "leader": "primary",
    }  # fmt: skip
    (home / "state.json").write_text(json.dumps(state))
    environ = make_environ(home)
    refused = voke("dr", "verify-backup", "--label", "nope", environ=environ)
    assert refused.exit_code == 5
    assert refused.stderr == "error: there is no base backup; take one with `voke dr backup`\n"
    pruned = voke("dr", "prune", "--dry-run", environ=environ)
    assert pruned.exit_code == 0 and "would remove 0 backups" in pruned.stdout and pruned.stderr == ""


def test_dry_runs_of_restore_failover_failback_and_drills_announce_no_work(voke, platform_environ, local_env):
    # A plan is no point-in-time restore, failover, failback or drill under way: stderr stays empty.
    stderr = {}
    for args in (
        ["dr", "restore", "--to", "-1s"],
        ["dr", "failover"],
        ["dr", "failback"],
        ["drill", "run", "pitr"],
        ["drill", "run", "all"],
    ):
        plan = voke(*args, "--dry-run", environ=platform_environ)
        assert plan.exit_code == 0 and "dry run" in plan.stdout, (args, plan.stderr)
        stderr[" ".join(args)] = plan.stderr
    assert stderr == dict.fromkeys(stderr, "")
    assert local_env.require_state().leader == "primary" and local_env.node("replica").running
    # The run's line comes with its first step, which its checks may take a while to reach:
    # the seal and pg_verifybackup, once the request passed what refuses it.
    from voketag_ops.adapters.local import dr

    said: list[str] = []
    now = dr.utcnow()
    dr.plan_restore(local_env, now, "announced", seal=True, now=now, progress=said.append)
    assert said[-1].startswith("checking base backup base-") and said[-1].endswith("(pg_verifybackup)")


def test_a_refused_drill_is_one_failure_event(voke, make_environ, tmp_path):
    home = tmp_path / "home"
    _interrupted_failover(home)
    dry = voke("drill", "run", "pitr", "--dry-run", environ=make_environ(home))  # as the run is
    assert dry.exit_code == 5 and "voke dr failover --yes" in dry.stderr
    refused = voke("drill", "run", "pitr", "--yes", "--json", environ=make_environ(home))
    assert refused.exit_code == 5, refused.stdout
    _refused(home, "drill.pitr", "pitr", refused.exit_code)  # (the dry run wrote none)


@pytest.mark.parametrize("scenario", ["pitr", "all"])
def test_a_drill_refused_while_a_dr_operation_runs_is_one_failure_event(
    voke, make_environ, tmp_path, held_by_another_voke, scenario
):
    home = tmp_path / "home"
    with held_by_another_voke(home / "dr" / "dr.lock", "dr failover pid 1"):
        refused = voke("drill", "run", scenario, "--yes", "--json", environ=make_environ(home))
    assert refused.exit_code == 5, refused.stdout
    assert "another DR operation is running" in refused.json["error"]["message"]
    _refused(home, f"drill.{scenario}", scenario, refused.exit_code)


@pytest.mark.parametrize("scenario", ["failover", "failback", "all"])
def test_a_drill_that_promotes_the_standby_is_refused_at_once_without_a_replica(
    voke, make_environ, tmp_path, scenario
):
    # (it waited 30 s for a standby to catch up, then aborted; its dry run printed a plan, exit 0)
    home = tmp_path / "home"
    environ = make_environ(home, VOKE_LOCAL__REPLICA="false")
    for other in ("pitr", "network"):  # these need no standby
        assert voke("drill", "run", other, "--dry-run", environ=environ).exit_code == 0
    dry = voke("drill", "run", scenario, "--dry-run", "--json", environ=environ)
    assert dry.exit_code == 5, dry.stdout
    error = dry.json["error"]
    assert "no replica is configured (local.replica is false); nothing to promote" in error["message"]
    assert ("voke drill run pitr" in error["hint"]) == (scenario == "all")
    assert not home.exists()  # a dry run writes no event
    refused = voke("drill", "run", scenario, "--yes", "--json", environ=environ)
    assert refused.exit_code == 5, refused.stdout
    assert refused.json["error"] == error
    _refused(home, f"drill.{scenario}", scenario, refused.exit_code)
    assert not (home / "state.json").exists()  # nothing was started


def test_a_rotation_refused_while_a_dr_operation_runs_is_one_failure_event(
    voke, make_environ, tmp_path, held_by_another_voke
):
    home = tmp_path / "home"
    with held_by_another_voke(home / "dr" / "dr.lock", "dr failover pid 1"):
        refused = voke("rotate", "jwt", "--yes", "--json", environ=make_environ(home))
    assert refused.exit_code == 5, refused.stdout
    assert "another DR operation is running" in refused.json["error"]["message"]
    _refused(home, "rotation.start", "jwt-signing", refused.exit_code)
    assert not (home / "state.json").exists()  # the environment was not started


def test_adding_a_rotated_secret_is_one_failure_event(voke, make_environ, tmp_path, monkeypatch):
    home = tmp_path / "home"
    monkeypatch.setattr(sys, "stdin", io.StringIO("a-value"))
    refused = voke("secrets", "add", "db-app", "--yes", environ=make_environ(home))
    assert refused.exit_code == 2 and "that voke rotates" in refused.stderr
    details = _refused(home, "secret.add", "db-app", refused.exit_code)
    assert "a-value" not in json.dumps(details)
    # without --yes the real reason still comes first, not the missing confirmation
    asked = voke("secrets", "add", "db-app", environ=make_environ(home))
    assert asked.exit_code == 2 and "that voke rotates" in asked.stderr and "--yes" not in asked.stderr


@pytest.fixture
def file_chain(make_environ, tmp_path):
    home = tmp_path / "home"
    return home, make_environ(home, VOKE_CHAIN__STORE="file", VOKE_CHAIN__MIN_DIFFICULTY="4")  # quick blocks


def test_cancelling_an_anchored_root_is_one_failure_event(voke, file_chain):
    home, environ = file_chain
    root = merkle.root([b"anchored"]).hex()
    assert voke("chain", "anchor", "request", root, environ=environ).exit_code == 0
    assert voke("chain", "anchor", "run", "--difficulty", "4", environ=environ).exit_code == 0
    before = len(list(AuditLog(home).entries()))
    assert voke("chain", "anchor", "cancel", root, "--dry-run", environ=environ).exit_code == 5
    refused = voke("chain", "anchor", "cancel", root, "--yes", "--json", environ=environ)
    assert refused.exit_code == 5, refused.stdout
    *_, event = AuditLog(home).entries()
    assert len(list(AuditLog(home).entries())) == before + 1
    assert (event.event_type, event.target, event.result) == ("chain.anchor.cancel", root, "failure")
    assert event.details["error"]["type"] == refused.json["error"]["type"]


def test_a_rejected_chain_import_is_one_failure_event(voke, file_chain, tmp_path):
    home, environ = file_chain
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    assert voke("chain", "import", str(bad), "--dry-run", environ=environ).exit_code == 1
    assert list(AuditLog(home).entries()) == []  # a dry run writes none
    refused = voke("chain", "import", str(bad), environ=environ)
    assert refused.exit_code == 1, refused.stderr
    _refused(home, "chain.import", str(bad), refused.exit_code)
