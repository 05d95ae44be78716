"""The frame every drill runs in (workflows/drill.py `drive`): whatever the scenario or the
final steady-state check raises, clean-up runs, the outcome lands in the run for its
journal, and Ctrl-C is reported as interrupted (the caller re-raises it: exit 130)."""

from __future__ import annotations

import os
from typing import Any

import pytest

from voketag_ops.errors import BackendError
from voketag_ops.workflows.drill import drive

STEADY = {"ok": True, "checks": []}


class Run:
    def __init__(self) -> None:
        self.status, self.error, self.preparing = "completed", None, False
        self.steady_before: Any = None
        self.steady_after: Any = None
        self.cleaned = 0
        self.cleanup_interrupted = False

    def run_cleanups(self) -> None:
        self.cleaned += 1


def _raise(exc: BaseException) -> Any:
    def go() -> Any:
        raise exc

    return go


@pytest.mark.parametrize("after_exc", [BackendError("node gone"), ConnectionResetError("reset by peer")])
def test_ctrl_c_then_a_final_check_that_cannot_run(after_exc: Exception) -> None:
    run = Run()
    interrupted = drive(
        run, "drill x", progress=lambda _m: None, before=lambda: STEADY,
        scenario=_raise(KeyboardInterrupt()), after=_raise(after_exc), after_interrupt=True,
    )  # fmt: skip
    assert interrupted and run.status == "interrupted" and run.cleaned == 1
    assert run.steady_after["ok"] is False and str(after_exc) in run.steady_after["checks"][0]["message"]


def test_an_unsteady_system_is_not_drilled_and_a_bug_is_recorded() -> None:
    run, ran = Run(), []
    unsteady = {"ok": False, "checks": [{"ok": False, "message": "lag 90 s"}]}
    assert not drive(
        run, "drill x", progress=lambda _m: None, before=lambda: unsteady,
        scenario=lambda: ran.append(1), after=lambda: STEADY, after_interrupt=True,
    )  # fmt: skip
    assert run.status == "aborted" and "lag 90 s" in run.error and ran == [] and run.steady_after is None
    run = Run()
    drive(
        run, "drill x", progress=lambda _m: None, before=lambda: STEADY,
        scenario=_raise(ZeroDivisionError("boom")), after=lambda: STEADY, after_interrupt=False,
    )  # fmt: skip
    assert run.error.startswith("internal error (ZeroDivisionError)") and run.steady_after == STEADY
    run = Run()  # a drill that fails before its fault drilled nothing either: aborted, no final check
    run.preparing = True
    drive(
        run, "drill x", progress=lambda _m: None, before=lambda: STEADY,
        scenario=_raise(BackendError("replay paused")), after=lambda: STEADY, after_interrupt=True,
    )  # fmt: skip
    assert run.status == "aborted" and "before the fault" in run.error and run.steady_after is None


def test_ctrl_c_during_a_clean_up_finishes_the_others_and_reads_as_interrupted() -> None:
    import contextlib

    from voketag_ops.workflows.drill import RunFrame

    class Frame(RunFrame):
        status, steady_before, steady_after = "completed", None, None

        def cleanup_step(self, name: str) -> Any:
            return contextlib.nullcontext()

    run, done = Frame(), []
    run.on_cleanup("first registered, run last", lambda: done.append("first"))
    run.on_cleanup("interrupted", _raise(KeyboardInterrupt()))
    interrupted = drive(
        run, "drill x", progress=lambda _m: None, before=lambda: STEADY,
        scenario=lambda: None, after=lambda: STEADY, after_interrupt=True,
    )  # fmt: skip
    assert interrupted and run.status == "interrupted" and "clean-up" in (run.error or "")
    assert done == ["first"] and run.steady_after == STEADY


def test_one_signal_during_the_clean_ups_is_held_and_the_final_check_can_be_interrupted() -> None:
    import contextlib
    import os
    import signal

    from voketag_ops.workflows.drill import RunFrame

    class Frame(RunFrame):
        status, steady_before, steady_after = "completed", None, None

        def cleanup_step(self, name: str) -> Any:
            return contextlib.nullcontext()

    def signalled_step() -> None:
        os.kill(os.getpid(), signal.SIGINT)  # held: this step still runs to its end
        done.append("whole step")

    run, done = Frame(), []
    run.on_cleanup("a step a signal lands in", signalled_step)
    interrupted = drive(
        run, "drill x", progress=lambda _m: None, before=lambda: STEADY,
        scenario=lambda: None, after=_raise(KeyboardInterrupt()), after_interrupt=True,
    )  # fmt: skip
    assert interrupted and run.status == "interrupted" and done == ["whole step"]
    assert run.steady_after["ok"] is False
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_a_signal_held_inside_a_nested_hold_still_counts_outside() -> None:
    import os
    import signal

    from voketag_ops import interrupts

    with interrupts.Held(give_way_after=1) as outer:
        with interrupts.Held() as inner:  # a step that must not be cut (the pitr put-back)
            os.kill(os.getpid(), signal.SIGINT)
        assert inner.count == 1 and outer.count == 1
        with pytest.raises(KeyboardInterrupt):  # the second gives way, as promised
            os.kill(os.getpid(), signal.SIGINT)
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_an_answer_printed_inside_a_hold_keeps_signals_off(script_signals) -> None:
    import signal

    from voketag_ops import interrupts

    with interrupts.Held():
        interrupts.settle()  # what Output.result does
    assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_IGN


def test_a_signal_held_once_the_outcome_is_decided_stops_the_next_operation(script_signals) -> None:
    # `rotate due --run`: a Ctrl-C after one rotation ended waits for nothing more than the start
    # of the next one, which it stops; that one is then raised again.
    import os
    import signal

    from voketag_ops import interrupts

    interrupts.decided()
    os.kill(os.getpid(), signal.SIGINT)  # noted
    with pytest.raises(KeyboardInterrupt):
        interrupts.reopen()
    with pytest.raises(KeyboardInterrupt):
        os.kill(os.getpid(), signal.SIGINT)
    interrupts.reopen()  # nothing decided, nothing held: nothing more


def test_a_checkpoint_of_a_dead_run_shows_as_interrupted(tmp_path):
    import socket
    import subprocess
    import sys
    from types import SimpleNamespace

    from voketag_ops.workflows import drill

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()  # its pid names no process any more
    home = SimpleNamespace(home=tmp_path)
    for run_id, pid in (("cloud-dead", dead.pid), ("cloud-alive", os.getpid())):
        drill.save_journal(home, {  # type: ignore[arg-type]
            "run_id": run_id, "scenario": "pitr", "started_at": f"2026-11-26T0{len(run_id) % 9}:00:00Z",
            "status": "running", "details": {"owner": {"node": socket.gethostname(), "pid": pid}},
        })  # fmt: skip
    shown = {r["run_id"]: r["status"] for r in drill.history(home)["runs"]}  # type: ignore[arg-type]
    assert shown == {"cloud-dead": "interrupted", "cloud-alive": "running"}


def test_the_rows_a_pitr_drill_keeps_aside_are_private_whatever_the_umask(local_env, pg_database):
    # A drill killed outright leaves them in VOKE_HOME/dr: they were 0644 under umask 0022
    # (open()), beside a 0600 record, where everything else voke keeps is 0600.
    import contextlib
    import stat
    import uuid

    from voketag_ops.workflows import drill

    with local_env.primary().connect(pg_database) as conn:
        conn.execute("create schema ingest")
        conn.execute("create table ingest.tags (tag_id text primary key, batch_id bigint)")
        conn.execute("create table ingest.batches (batch_id bigint primary key)")  # 7 gone: no put-back
        conn.execute("insert into ingest.tags values ('T-1', 7), ('T-2', 8)")

    class Run(drill.RunFrame):
        env, run_id = local_env, f"pitr-test-{uuid.uuid4().hex[:8]}"

        def cleanup_step(self, name: str) -> Any:
            return contextlib.nullcontext()

    run = Run()
    umask = os.umask(0o022)
    try:
        drill._keep_rows_aside(run, {"batch_id": 7, "dbname": pg_database, "rows": 1})  # type: ignore[arg-type]
    finally:
        os.umask(umask)
    assert run.rows_record is not None
    record, doc = run.rows_record
    rows = record.with_name(doc["file"])
    assert rows.read_bytes() == b"T-1\t7\n"
    assert {p.name: stat.S_IMODE(p.stat().st_mode) for p in (rows, record)} == {
        rows.name: 0o600,
        record.name: 0o600,
    }
    run.run_cleanups()  # the copy's lock released, and both files removed
    assert not rows.exists() and not record.exists()


def test_a_file_that_is_no_journal_is_skipped_by_every_view_and_refused_by_report(
    tmp_path, voke, make_environ
):
    import json

    environ = make_environ(tmp_path / "h")
    drills = tmp_path / "h" / "drills"
    drills.mkdir(parents=True)
    for name, text in (("list", "[1]"), ("null", "null"), ("empty", "{}"), ("cut", '{"run_id": "x"')):
        (drills / f"{name}.json").write_text(text)
    made = {"run_id": "bad1", "scenario": "pitr", "status": "failed", "started_at": "2026-11-26T20:00:00Z"}
    (drills / "bad1.json").write_text(json.dumps(made))  # listed, but not reportable
    history = voke("drill", "history", "--json", environ=environ)
    assert history.exit_code == 0, history.stdout + history.stderr
    assert [r["run_id"] for r in history.json["result"]["runs"]] == ["bad1"]
    assert voke("dr", "status", "--json", environ=environ).exit_code == 0
    for fmt in ("md", "html"):
        report = voke("drill", "report", "bad1", "--format", fmt, "--json", environ=environ)
        assert report.exit_code == 1, report.stdout  # an input that is rejected
        assert "its journal cannot be reported (no targets)" in report.json["error"]["message"]
    assert voke("drill", "report", "bad1", "--format", "json", environ=environ).exit_code == 0  # as it is
    bare = made | {"run_id": "bare", "environment": "local", "mode": "local", "timeline": {}, "versions": {},
                   "targets": {"rto_target_seconds": 300, "rpo_target_seconds": 60},
                   "steps": [{"name": "x"}], "integrity": [{"rows": 1}]}  # fmt: skip
    (drills / "bare.json").write_text(json.dumps(bare))  # all a report needs, nothing else
    for fmt in ("md", "html"):
        shown = voke("drill", "report", "bare", "--format", fmt, environ=environ)
        assert shown.exit_code == 0 and "not measured" in shown.stdout, shown.stdout + shown.stderr


def test_a_journal_left_running_by_a_killed_drill_reads_interrupted_everywhere(tmp_path):
    import json
    import socket
    import subprocess
    from types import SimpleNamespace

    from voketag_ops.workflows import drill

    dead = subprocess.Popen(["true"])
    dead.wait()
    (tmp_path / "drills").mkdir()
    journal = {
        "run_id": "failover-x", "scenario": "failover", "status": "running", "started_at": "2026-11-26T20:22:06Z",
        "details": {"owner": {"node": socket.gethostname(), "pid": dead.pid}},
    }  # fmt: skip
    (tmp_path / "drills" / "failover-x.json").write_text(json.dumps(journal))
    home = SimpleNamespace(home=tmp_path)
    assert drill.load_journal(home, "failover-x")["status"] == "interrupted"  # drill report
    assert drill.last_result(home)["status"] == "interrupted"  # dr status's last_drill
    assert [r["status"] for r in drill.history(home)["runs"]] == ["interrupted"]


def _bytes_read() -> int:
    """What this process has read so far (read() and pread() alike), from /proc/self/io."""
    with open("/proc/self/io") as fh:
        return next(int(line.split()[1]) for line in fh if line.startswith("rchar:"))


def test_the_newest_journal_is_read_alone_and_history_keeps_only_its_rows(tmp_path, monkeypatch):
    # `dr status`, `drill report last` and `drill history` read and kept every journal
    # (10,000 drills: 3 s and 370 MB each): the newest is found by the start its file name
    # carries, and history keeps a row of each journal, not the journal.
    import json
    import tracemalloc
    from datetime import UTC, datetime, timedelta
    from types import SimpleNamespace

    from voketag_ops.core import drill as core
    from voketag_ops.workflows import drill

    home = SimpleNamespace(home=tmp_path)
    (tmp_path / "drills").mkdir()
    t0 = datetime(2026, 1, 1, tzinfo=UTC)
    for i in range(300):
        started = t0 + timedelta(minutes=50 * i, microseconds=i)
        scenario = ("pitr", "failover", "network")[i % 3]
        journal = {
            "run_id": f"{scenario}-{started:%Y%m%dT%H%M%SZ}-{i:04x}", "scenario": scenario,
            "status": "completed" if i % 4 else "failed", "started_at": started.isoformat().replace("+00:00", "Z"),
            "rto_seconds": None if i % 5 == 0 else 10 + i % 7, "rpo_seconds": 0.5,
            "targets": {"rto_target_seconds": 300}, "steps": [{"name": f"step {n}", "detail": "x" * 100} for n in range(80)],
        }  # fmt: skip
        if i in (7, 250):  # older journals under names with no start in them
            journal["run_id"] = f"hand-{i}"
        (tmp_path / "drills" / f"{journal['run_id']}.json").write_text(json.dumps(journal))
    (tmp_path / "drills" / "broken.json").write_text("[1]")
    journals = drill.load_journals(home)  # type: ignore[arg-type]
    size = sum(p.stat().st_size for p in (tmp_path / "drills").iterdir())

    before = _bytes_read()
    assert drill.last_result(home)["run_id"] == journals[-1]["run_id"]  # type: ignore[arg-type,index]
    assert drill.load_journal(home, "last") == journals[-1]  # type: ignore[arg-type]
    assert drill.load_journal(home, journals[100]["run_id"]) == journals[100]  # type: ignore[arg-type]
    assert drill.load_journal(home, "hand-250") == journals[250]  # type: ignore[arg-type]
    # the newest twice (each with the three files not named by their start), then the two named
    assert _bytes_read() - before < 12 * (size // 300) < size // 10

    held = []  # what is allocated as each journal is read (reading one costs a transient 64 MiB buffer)
    read = drill.read_record
    monkeypatch.setattr(
        drill,
        "read_record",
        lambda *a, **kw: held.append(tracemalloc.get_traced_memory()[0]) or read(*a, **kw),
    )
    tracemalloc.start()
    try:
        shown = drill.history(home, limit=5)  # type: ignore[arg-type]
    finally:
        tracemalloc.stop()
    assert [r["run_id"] for r in shown["runs"]] == [j["run_id"] for j in journals[-5:]]
    assert shown["trend"] == core.trend(journals) and shown["trend"]["pitr"]["runs"] == 100
    assert len(held) == 301 and max(held) < size // 4  # a row of each journal, not every journal
    pitr = drill.history(home, scenario="pitr", limit=2)  # type: ignore[arg-type]
    assert [r["run_id"] for r in pitr["runs"]] == [j["run_id"] for j in journals if j["scenario"] == "pitr"][
        -2:
    ]


def test_a_step_records_its_exit_code_and_the_commands_it_ran() -> None:
    from voketag_ops.adapters.local import dr
    from voketag_ops.adapters.local.postgres import record_command
    from voketag_ops.errors import PreconditionError

    steps = dr.Steps()
    with steps.run("copy"):
        record_command(["/usr/bin/cp", "-a", "from", "to"], 0, 0.25, b"")
    with pytest.raises(PreconditionError), steps.run("promote"):
        record_command(["/pg/bin/pg_ctl", "-D", "d", "promote"], 1, 0.1, "not running")
        raise PreconditionError("the standby is not running")
    with pytest.raises(KeyboardInterrupt), steps.run("wait"):
        raise KeyboardInterrupt
    record_command(["cp", "x", "y"], 0, 0.1, b"")  # outside a step: in no record
    copy, promote, wait = steps.as_list()
    assert (copy["exit_code"], promote["exit_code"], wait["exit_code"]) == (0, 5, 130)
    assert copy["commands"][0]["command"] == "cp -a from to" and promote["commands"][0]["exit_code"] == 1
    assert promote["commands"][0]["output_sha256"] == __import__("hashlib").sha256(b"not running").hexdigest()
    assert wait["commands"] == []


def test_a_password_in_a_command_is_masked_in_the_step_record() -> None:
    from voketag_ops.adapters.local import dr
    from voketag_ops.adapters.local.postgres import record_command

    steps = dr.Steps()
    with steps.run("rewind"):
        record_command(["pg_rewind", "--source-server", "host=h user=u password=s3cretpass1"], 0, 1.0, "")
    assert "s3cretpass1" not in str(steps.as_list())


def test_the_report_shows_exit_codes_commands_and_lsns_and_reads_older_journals() -> None:
    from voketag_ops.core.drill_report import _step_rows, markdown

    steps = [
        {"name": "copy", "ok": True, "duration_seconds": 1.5, "exit_code": 0,
         "commands": [{"command": "cp -a a b", "exit_code": 0}]},
        {"name": "old", "ok": False, "duration_seconds": 2.0},  # a journal from before the fields
    ]  # fmt: skip
    assert _step_rows(steps) == [("copy", "yes", 0, 1.5, "cp (0)"), ("old", "NO", None, 2.0, None)]
    cloud = {"name": "clone", "ok": True, "duration_seconds": 9.0, "exit_code": 0,
             "commands": [{"operation": "op-1", "status": "DONE"}]}  # fmt: skip
    assert _step_rows([cloud]) == [("clone", "yes", 0, 9.0, "op-1 (DONE)")]
    journal = {
        "run_id": "r", "scenario": "pitr", "environment": "local", "mode": "local", "status": "completed",
        "versions": {"voke": "0", "postgres": "18"}, "started_at": "2026-01-01T00:00:00Z",
        "finished_at": "2026-01-01T00:01:00Z", "rto_met": True, "rpo_met": True, "integrity_ok": True,
        "targets": {"rto_target_seconds": 300, "rpo_target_seconds": 60, "disruption": "d"},
        "timeline": {}, "phases": {}, "steps": steps, "steady_state": {},
        "integrity": [{"table": "t", "rows": 1, "checksum": "ab", "match": True, "lsn": "0/3000060"}],
    }  # fmt: skip
    text = markdown(journal)
    assert "| t | 1 | `ab` | 0/3000060 | yes |" in text and "| copy | yes | 0 | 1.5 | cp (0) |" in text


def test_drill_run_all_holds_the_lock_between_drills_and_reports_those_done_when_one_raises(
    voke, tmp_path, monkeypatch
):
    from voketag_ops import locks
    from voketag_ops.errors import PreconditionError
    from voketag_ops.workflows import drill

    lock, holders = tmp_path / "home" / "dr" / "dr.lock", []

    def one(settings: Any, env: Any, name: str, **_kw: Any) -> dict[str, Any]:
        holders.append(locks.held_by(lock))  # (as another process sees it)
        if name == "failover":  # a drill started elsewhere would have slipped in here
            raise PreconditionError("another DR operation is running (drill failover pid 1)")
        targets = {"rto_target_seconds": 300, "rpo_target_seconds": 60}
        return {"run_id": f"{name}-1", "scenario": name, "status": "completed", "targets": targets,
                "rto_seconds": 1.0, "rpo_seconds": 0.0, "integrity_ok": True, "breaches": []}  # fmt: skip

    monkeypatch.setattr(drill, "run_drill", one)
    result = voke("drill", "run", "all", "--yes", "--json")
    assert holders == [f"drill all pid {os.getpid()}"] * 2
    assert result.exit_code == 5 and "another DR operation" in result.json["error"]["message"]
    report = result.json["result"]  # the pitr drill that finished is not lost
    assert [j["run_id"] for j in report["runs"]] == ["pitr-1"] and report["status"] == "failed"
    assert report["not_run"] == ["failover", "failback", "network"]
    assert locks.held_by(lock) is None


@pytest.mark.parametrize("saved_first", [False, True])
def test_ctrl_c_between_two_drills_of_all_still_reports_those_that_ran(voke, monkeypatch, saved_first):
    from voketag_ops.workflows import drill

    def one(settings: Any, env: Any, name: str, saved: list[dict[str, Any]], **_kw: Any) -> dict[str, Any]:
        targets = {"rto_target_seconds": 300, "rpo_target_seconds": 60}
        journal = {"run_id": f"{name}-1", "scenario": name, "status": "completed", "targets": targets,
                   "rto_seconds": 1.0, "rpo_seconds": 0.0, "integrity_ok": True, "breaches": []}  # fmt: skip
        if name == "failover":  # Ctrl-C outside the drill's own frame: before it, or once saved
            if saved_first:
                saved.append(journal)
            raise KeyboardInterrupt
        saved.append(journal)
        return journal

    monkeypatch.setattr(drill, "run_drill", one)
    result = voke("drill", "run", "all", "--yes", "--json")
    assert result.exit_code == 130, result.stdout + result.stderr
    report, error = result.json["result"], result.json["error"]
    ran = ["pitr-1", "failover-1"] if saved_first else ["pitr-1"]
    assert [j["run_id"] for j in report["runs"]] == ran and report["status"] == "failed"
    assert report["not_run"] == ["failover", "failback", "network"][len(ran) - 1 :]
    assert error["message"] == f"interrupted {'after' if saved_first else 'before'} drill failover"
    assert error["hint"] == "their journals: voke drill history"


@pytest.mark.parametrize("stuck", [False, True])
def test_an_interrupted_single_drill_reports_its_journal_with_the_error(voke, monkeypatch, stuck):
    # as `all` does: the journal saved (status `interrupted`) is the `result` of the error envelope
    # (exit 130), and so it is when its clean-up needs a person (exit 7)
    from voketag_ops.errors import Interrupted, NeedsOperatorError
    from voketag_ops.workflows import drill

    journal = {"run_id": "network-1", "scenario": "network", "status": "interrupted",
               "targets": {"rto_target_seconds": 420, "rpo_target_seconds": 60},
               "rto_seconds": None, "rpo_seconds": None, "integrity_ok": None, "breaches": []}  # fmt: skip

    def one(settings: Any, env: Any, name: str, saved: list[dict[str, Any]], **_kw: Any) -> dict[str, Any]:
        saved.append(journal)
        error = NeedsOperatorError if stuck else Interrupted
        raise error("interrupted: drill network network-1 stopped after its clean-up (journal /j)", hint="h")

    monkeypatch.setattr(drill, "run_drill", one)
    result = voke("drill", "run", "network", "--yes", "--json")
    assert result.exit_code == (7 if stuck else 130), result.stdout + result.stderr
    assert result.json["ok"] is False and result.json["result"] == journal
    error = result.json["error"]
    assert error["type"] == ("NeedsOperatorError" if stuck else "Interrupted")
    assert error["message"].endswith("(journal /j)") and error["hint"] == "h"
    human = voke("drill", "run", "network", "--yes")
    assert "network   RTO – (target 420 s)" in human.stdout and "interrupted  run network-1" in human.stdout
    assert "error: interrupted: drill network network-1" in human.stderr


class _Clock:
    """A steady clock the waits below move: `time.sleep` advances it, nothing really sleeps."""

    def __init__(self) -> None:
        self.now = 0.0

    def monotonic(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


def test_the_after_check_gives_the_services_their_wait_from_when_the_servers_are_back(monkeypatch):
    # The services-only cut-off ran from the check's start: servers steady after 25 s left the
    # services no time at all (health_timeout 20), and the drill failed while they reconnected.
    from types import SimpleNamespace

    from voketag_ops.adapters.local import dr
    from voketag_ops.config import Settings
    from voketag_ops.core.dr_checks import Check
    from voketag_ops.workflows import drill

    clock = _Clock()
    monkeypatch.setattr(drill, "time", SimpleNamespace(monotonic=clock.monotonic, sleep=clock.sleep))
    monkeypatch.setattr(dr, "snapshot", lambda env, **kw: {"initialized": True, "checked_at": "t"})
    monkeypatch.setattr(
        drill, "judge", lambda snap, limits, now: [Check("replica_streaming", clock.now >= 25, "replica")]
    )
    monkeypatch.setattr(
        drill, "_services_check", lambda settings: Check(drill.SERVICES_CHECK, clock.now >= 40, "services")
    )
    base = Settings()
    settings = base.model_copy(update={"rotation": base.rotation.model_copy(update={"health_timeout": 20})})
    steady = drill.steady_state(settings, None, wait=60)  # type: ignore[arg-type]
    assert steady["ok"] is True and clock.now >= 40, (clock.now, steady["checks"])
    # ... and services still down health_timeout after the servers are back: given up then, not at 60 s
    monkeypatch.setattr(drill, "_services_check", lambda settings: Check(drill.SERVICES_CHECK, False, "down"))
    clock.now = 0.0
    steady = drill.steady_state(settings, None, wait=60)  # type: ignore[arg-type]
    assert steady["ok"] is False and 45 <= clock.now < 46, clock.now


def test_the_failover_drills_plan_reads_its_rpo_where_the_run_does(voke):
    # The plan said "RPO from the canary log" while the run reads the old leader's WAL
    # (`rpo_source` `wal`), the canary's log only when that WAL cannot be read.
    plan = voke("drill", "run", "failover", "--dry-run", "--json")
    assert plan.exit_code == 0, plan.stdout
    [rpo] = [step for step in plan.json["result"]["plan"]["failover"] if step.startswith("RPO")]
    assert rpo.startswith("RPO from the old leader's WAL (pg_waldump"), rpo


def test_a_discard_rerun_reads_the_audit_log_from_its_end_only_as_far_as_its_name(tmp_path):
    # `dr discard NAME` of an instance gone already read the whole audit log to find NAME's
    # restore or discard (50,000 events, 20 MB: 4-6 s, a dry run too): read from the end now,
    # up to the first event naming it.
    from datetime import UTC, datetime

    from voketag_ops.adapters.local.environment import LocalEnvironment
    from voketag_ops.config import LocalSettings, Settings
    from voketag_ops.core import audit as core
    from voketag_ops.workflows import dr as dr_flow

    settings = Settings(local=LocalSettings(home=tmp_path / "home"))
    env = LocalEnvironment(settings.local)
    lines, prev = [], core.ZERO
    for seq, (event_type, target) in enumerate(
        [("ingest.load", f"batch-{i}") for i in range(20_000)] + [("dr.discard", "before-incident")]
    ):
        entry = core.make_entry(
            seq=seq, prev_hash=prev, now=datetime(2026, 5, 1, tzinfo=UTC), event_type=event_type,
            actor="sre", env="local", target=target, result="success", duration_seconds=1.0,
            details={"pad": "x" * 200},
        )  # fmt: skip
        lines.append(entry.line())
        prev = entry.hash
    (tmp_path / "home" / "audit").mkdir(parents=True)
    log = tmp_path / "home" / "audit" / "audit.jsonl"
    log.write_bytes(b"".join(lines))
    size = log.stat().st_size

    dr_flow.discard(settings, env, name="before-incident", dry_run=True)  # the modules it imports
    before = _bytes_read()  # (the process's reads: a first call also reads the code it imports)
    plan = dr_flow.discard(settings, env, name="before-incident", dry_run=True)
    assert _bytes_read() - before < 200_000 < size  # its last block or two
    assert plan["plan"] == ["nothing: the restored instance before-incident is gone already"]
    assert dr_flow.discard(settings, env, name="before-incident", dry_run=False)["changed"] is False


@pytest.mark.parametrize("damage", ["genuine", "forged", "reserialised"])
def test_a_discard_rerun_trusts_only_events_that_link_to_the_logs_end(voke, tmp_path, damage):
    # A discard line appended by hand (well-formed JSON, but not linked to the entry before it, or
    # not stored as voke writes it) made the rerun exit 0 until someone ran `audit verify`.
    import json
    from datetime import UTC, datetime

    from voketag_ops.audit import AuditLog, record_event
    from voketag_ops.core import audit as core

    home = tmp_path / "home"
    for i in range(3):
        record_event(home, event_type="ingest.load", env="local", target=f"batch-{i}", result="success")
    log = AuditLog(home)
    if damage == "genuine":
        record_event(home, event_type="dr.discard", env="local", target="gone", result="success")
    elif damage == "forged":
        last = next(reversed(list(log.entries())))
        forged = core.make_entry(
            seq=last.seq + 1, prev_hash="f" * 64, now=datetime.now(UTC), event_type="dr.discard",
            actor="sre", env="local", target="gone", result="success", duration_seconds=1.0, details={},
        )  # fmt: skip
        with log.path.open("ab") as fh:
            fh.write(forged.line())
    else:  # the genuine line, read and written back by a JSON tool: the same entry, other bytes
        record_event(home, event_type="dr.discard", env="local", target="gone", result="success")
        *before, genuine = log.path.read_bytes().splitlines(keepends=True)
        log.path.write_bytes(b"".join(before) + json.dumps(json.loads(genuine)).encode() + b"\n")
    lines = len(log.path.read_bytes().splitlines())

    again = voke("dr", "discard", "gone", "--yes", "--json")
    if damage == "genuine":
        assert again.exit_code == 0 and again.json["result"]["changed"] is False, again.stdout + again.stderr
        assert "does not verify" not in again.stderr
        return
    assert again.exit_code == 2, again.stdout + again.stderr  # as for a name never restored
    assert again.json["error"]["message"].startswith("no restored instance named 'gone'")
    assert f"audit.jsonl:{lines} does not verify" in again.stderr, again.stderr
    assert "`voke audit verify` names the damage" in again.stderr


@pytest.mark.parametrize("finishes", [True, False])
def test_a_dr_step_cut_short_is_said_as_the_clean_up_left_it(finishes: bool) -> None:
    import contextlib

    from voketag_ops.errors import Interrupted
    from voketag_ops.workflows.drill import RunFrame

    pending = ["failover"]

    class Frame(RunFrame):
        status, steady_before, steady_after = "completed", None, None

        def cleanup_step(self, name: str) -> Any:
            return contextlib.nullcontext()

        def left_to_finish(self, cut: Interrupted) -> str | None:
            return "finish it with `voke dr failover --yes`" if pending else None

    run = Frame()
    if finishes:
        run.on_cleanup("finish the failover", pending.clear)
    cut = Interrupted(
        "interrupted: `voke dr failover` stopped part-way", hint="`voke dr failover --yes` resumes it"
    )
    interrupted = drive(
        run, "drill x", progress=lambda _m: None, before=lambda: STEADY,
        scenario=_raise(cut), after=lambda: STEADY, after_interrupt=True,
    )  # fmt: skip
    said = "; the clean-up finished it" if finishes else " (finish it with `voke dr failover --yes`)"
    assert interrupted and run.error == f"interrupted; clean-up ran: {cut.message}{said}"
    # a frame that cannot tell (RunFrame's own: the cloud drills') keeps what the step's hint said
    assert RunFrame.left_to_finish(run, cut) == cut.hint
