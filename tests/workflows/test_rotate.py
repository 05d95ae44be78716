"""`voke rotate` against the real local platform: the protocol, crash safety at every
step, rollbacks, drift, concurrency, cleanup, and no secret value anywhere in output."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from datetime import datetime, timedelta, timezone

import pytest

from voketag_ops.core.rotation import ANNOTATION, STEPS, RotationRecord
from voketag_ops.errors import DatabaseError, PreconditionError, ValidationError
from voketag_ops.workflows.rotate import FAULT_ENV, FAULT_EXIT_CODE, RotationEngine, process_host


def make_engine(platform, **kw):
    settings = platform.settings.rotation
    target = kw.pop("target", None) or platform.db_target()
    runtime = kw.pop("runtime", None) or platform.runtime()
    if kw:
        settings = settings.model_copy(update=kw)
    return RotationEngine(
        store=platform.store(),
        runtime=runtime,
        target=target,
        settings=settings,
        home=platform.env.home,
        sleep=lambda s: time.sleep(min(s, 0.05)),
    )


def cred(platform, version):
    return json.loads(platform.store().access("db-app", version))


def assert_consistent(platform):
    """The invariants after any rotation, crash or rollback: no lockout."""
    store, target = platform.store(), platform.db_target()
    meta = store.get("db-app")
    assert ANNOTATION not in meta.annotations, meta.annotations.get(ANNOTATION)
    assert "pending" not in meta.aliases
    current = meta.aliases["current"]
    assert target.can_login(cred(platform, current))
    if "previous" in meta.aliases:
        assert target.can_login(cred(platform, meta.aliases["previous"]))
    runtime = platform.runtime()
    deadline = time.monotonic() + 10
    while True:
        services = runtime.services(check=True)
        if all(s.healthy and s.secret_version == current for s in services) or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert [(s.name, s.secret_version, s.healthy) for s in services] == [
        (s.name, current, True) for s in services
    ]


def voke_proc(environ, *args, **extra_env):
    env = {**environ, **extra_env}
    return subprocess.run(
        [sys.executable, "-m", "voketag_ops", *args], capture_output=True, text=True, env=env, timeout=120
    )


def test_rotation_succeeds_and_both_credentials_keep_working(voke, platform, platform_environ):
    before = platform.store().get("db-app").aliases["current"]
    old = cred(platform, before)
    result = voke("rotate", "db-password", "--yes", "--json", environ=platform_environ)
    assert result.exit_code == 0, result.stdout + result.stderr
    report = result.json["result"]
    assert report["status"] == "succeeded" and report["secret"] == "db-app"
    assert report["previous_version"] == before and report["new_version"] > before
    assert [s["name"] for s in report["steps"]] == list(STEPS)
    assert all(s["status"] in ("done", "skipped") for s in report["steps"])
    new = cred(platform, report["new_version"])
    assert new["username"] != old["username"]  # alternating users
    assert len(new["password"]) == 32
    assert platform.db_target().can_login(old)  # the old credential keeps working
    assert_consistent(platform)


def test_objects_created_by_either_login_are_usable_by_both(platform):
    import psycopg

    meta = platform.store().get("db-app")
    a, b = cred(platform, meta.aliases["current"]), cred(platform, meta.aliases["previous"])

    def conn(c):
        return psycopg.connect(
            host=c["host"],
            port=c["port"],
            user=c["username"],
            password=c["password"],
            dbname=c["dbname"],
            autocommit=True,
        )

    with conn(a) as ca:
        ca.execute("create table if not exists rot_shared (id int)")
        ca.execute("insert into rot_shared values (1)")
    with conn(b) as cb:
        cb.execute("insert into rot_shared values (2)")
        assert cb.execute("select count(*) from rot_shared").fetchone()[0] >= 2


@pytest.mark.parametrize("step", STEPS)
def test_crash_after_each_step_then_resume_leaves_no_lockout(voke, platform, platform_environ, step):
    # the crash is the real process's (os._exit mid-step); the resume runs in-process, as any later voke
    crashed = voke_proc(platform_environ, "rotate", "db-password", "--yes", **{FAULT_ENV: step})
    assert crashed.returncode == FAULT_EXIT_CODE, crashed.stderr
    resumed = voke("rotate", "resume", "--yes", "--json", environ=platform_environ)
    assert resumed.exit_code == 0, resumed.stdout + resumed.stderr
    doc = resumed.json["result"]
    if step == "finish":
        assert doc == {"status": "nothing to do"}
    else:
        assert doc["status"] == "succeeded" and doc["resumed"] is True
        done = [s["name"] for s in doc["steps"]]
        assert done[: STEPS.index(step) + 1] == list(STEPS[: STEPS.index(step) + 1])
    assert_consistent(platform)


def test_sigkill_at_random_moments_then_resume(voke, platform, platform_environ):
    rng = random.Random(20261126)
    for _ in range(4):
        proc = subprocess.Popen(
            [sys.executable, "-m", "voketag_ops", "rotate", "db-password", "--yes"],
            env=platform_environ,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        time.sleep(rng.uniform(0.3, 1.6))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        resumed = voke("rotate", "resume", "--yes", "--json", environ=platform_environ)  # in-process
        assert resumed.exit_code == 0, resumed.stdout + resumed.stderr
        assert_consistent(platform)


def test_a_live_rotation_blocks_a_second_one(platform, platform_environ, voke):
    store = platform.store()
    sleeper = subprocess.Popen(["sleep", "60"])
    try:
        meta = store.get("db-app")
        record = {
            "id": "rot-test-live",
            "secret": "db-app",
            "kind": "db-password",
            "strategy": "alternating",
            "target": "app",
            "owner": f"{process_host()}:{sleeper.pid}",
            "lease_until": "2999-01-01T00:00:00Z",
            "started_at": "2026-01-01T00:00:00Z",
            "status": "in_progress",
            "step": "lock",
            "old_current": meta.aliases["current"],
            "old_previous": meta.aliases.get("previous"),
            "pending_version": None,
            "finished_at": None,
            "steps": [],
            "error": None,
        }
        store.update("db-app", etag=meta.etag, annotations={ANNOTATION: json.dumps(record)})
        versions = len(store.get("db-app").versions)
        result = voke("rotate", "db-password", "--yes", "--json", environ=platform_environ)
        assert result.exit_code == 5
        assert "rot-test-live" in result.json["error"]["message"]
        assert len(store.get("db-app").versions) == versions
    finally:
        sleeper.kill()
        sleeper.wait()
    # The owner is gone: its rotation is taken over and rolled back cleanly.
    result = voke("rotate", "rollback", "rot-test-live", "--yes", "--json", environ=platform_environ)
    assert result.exit_code == 0, result.stdout
    assert result.json["result"]["status"] == "rolled_back"
    assert_consistent(platform)


def test_a_dead_pid_in_another_container_with_the_same_host_name_is_judged_by_its_lease(platform):
    engine = make_engine(platform)
    dead = subprocess.Popen(["true"])
    dead.wait()
    record = RotationRecord(
        id="rot-x", secret="db-app", kind="db-password", target="app", strategy="alternating",
        owner=f"{os.uname().nodename}/other-boot/4026531836:{dead.pid}", lease_until="2999-01-01T00:00:00Z",
        started_at="2026-01-01T00:00:00Z",
    )  # fmt: skip
    assert engine._owner_alive(record)  # not our PID namespace: the pid says nothing, the lease holds
    record.owner = f"{process_host()}:{dead.pid}"
    assert not engine._owner_alive(record)  # ours, and gone


def test_a_record_without_a_rollback_reads_as_an_older_voke_wrote_it():
    record = RotationRecord(
        id="rot-x", secret="db-app", kind="db-password", target="app", strategy="alternating",
        owner="h:1", lease_until="2999-01-01T00:00:00Z", started_at="2026-01-01T00:00:00Z",
    )  # fmt: skip
    assert "rolling_back" not in json.loads(record.to_json())  # an older voke's reader takes no such key
    record.status, record.rolling_back = "rolling_back", "restore_aliases"
    assert RotationRecord.from_json(record.to_json()) == record


def test_the_webhook_names_the_environment_in_the_commands_it_gives():
    from voketag_ops.workflows.rotate import notification_text

    record = RotationRecord(
        id="rot-x", secret="db-app", kind="db-password", target="app", strategy="alternating",
        owner="h:1", lease_until="2999-01-01T00:00:00Z", started_at="2026-01-01T00:00:00Z",
        status="needs_attention", error={"kind": "SecretError", "step": "commit", "message": "refused"},
    )  # fmt: skip
    text = notification_text(record, "prod")  # pasted from chat, it must act on prod
    assert (
        "then: voke --env prod rotate resume rot-x --yes   or: voke --env prod rotate rollback rot-x" in text
    )
    assert "voke --env" not in notification_text(record, "local")
    record.status = "rolled_back"
    assert notification_text(record, "prod").endswith(
        "safe to retry: voke --env prod rotate db-password --user app --yes"
    )


def test_a_history_line_the_disk_has_no_room_for_is_cut_back_and_names_the_file(tmp_path, monkeypatch):
    # One os.write whose count went unchecked: on a full disk a torn line looked written, and the
    # next rotation's line was glued onto it (both records lost to `rotate history`).
    import errno

    from voketag_ops import files
    from voketag_ops.adapters.local.secrets import LocalSecretStore
    from voketag_ops.adapters.local.services import LocalServiceRuntime
    from voketag_ops.config import RotationSettings

    home = tmp_path / "home"
    engine = RotationEngine(
        store=LocalSecretStore(home), runtime=LocalServiceRuntime(home, {}), target=None,
        settings=RotationSettings(), home=home, sleep=lambda _s: None,
    )  # fmt: skip

    def record(rotation_id):
        return RotationRecord(
            id=rotation_id, secret="db-app", kind="db-password", target="app", strategy="alternating",
            owner="h:1", lease_until="2999-01-01T00:00:00Z", started_at="2026-01-01T00:00:00Z",
            status="succeeded", finished_at="2026-01-01T00:01:00Z",
        )  # fmt: skip

    engine._history(record("rot-1"))
    before = engine.history_file.read_bytes()

    def full_after_40_bytes(fd, data):
        os.write(fd, data[:40])
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    with monkeypatch.context() as full:
        full.setattr(files, "write_all", full_after_40_bytes)
        with pytest.raises(OSError, match="No space left on device") as failed:
            engine._history(record("rot-2"))
    assert failed.value.filename == str(engine.history_file)  # exit 4 naming it, at the top level
    assert engine.history_file.read_bytes() == before
    with engine.history_file.open("ab") as fh:  # a last line saved without its line break
        fh.write(before.rstrip(b"\n").replace(b"rot-1", b"rot-3"))
    engine._history(record("rot-4"))
    assert [r.id for r in engine.history()] == ["rot-4", "rot-3", "rot-1"]


def _bytes_read() -> int:
    """What this process has read so far (read() and pread() alike), from /proc/self/io."""
    with open("/proc/self/io") as fh:
        return next(int(line.split()[1]) for line in fh if line.startswith("rchar:"))


def test_the_history_is_read_from_its_end_only_as_far_as_needed(tmp_path, caplog):
    # `rotate status` and `rotate due` (a JWT's publication) and every lookup of a finished
    # rotation read the whole history, refused it above 64 MiB (exit 3) and found only the
    # newest 10,000: an append-only log is read backwards now, up to the first match.
    from voketag_ops.adapters.local.secrets import LocalSecretStore
    from voketag_ops.adapters.local.services import LocalServiceRuntime
    from voketag_ops.config import RotationSettings

    home = tmp_path / "home"
    engine = RotationEngine(
        store=LocalSecretStore(home), runtime=LocalServiceRuntime(home, {}), target=None,
        settings=RotationSettings(), home=home, sleep=lambda _s: None,
    )  # fmt: skip
    template = RotationRecord(
        id="rot-ID", secret="SECRET", kind="db-password", target="app", strategy="alternating",
        owner="h:1", lease_until="2999-01-01T00:00:00Z", started_at="2026-01-01T00:00:00Z",
        status="succeeded", finished_at="2026-01-01T00:01:00Z", pending_version=7,
    ).to_json()  # fmt: skip
    count = 12_000
    lines = [
        template.replace("rot-ID", f"rot-{i:05d}").replace("SECRET", "jwt" if i == 0 else "db-app")
        for i in range(count)
    ]
    lines[3] = "not a record"  # a hand edit, deep in the file
    lines[count - 3] = "[]"
    engine.history_file.parent.mkdir(parents=True)
    engine.history_file.write_text("\n".join(lines) + "\n" + lines[1][:30])  # and a torn last line
    size = engine.history_file.stat().st_size

    before = _bytes_read()
    newest = engine.history(limit=2)
    near_end = _bytes_read() - before
    assert [r.id for r in newest] == [f"rot-{i:05d}" for i in (count - 1, count - 2)]
    assert near_end < 200_000 < size  # its last block or two
    assert not caplog.records
    # a damaged line is skipped with the warning it had, numbered from the top
    assert [r.id for r in engine.history(limit=3)][-1] == f"rot-{count - 4:05d}"
    (warned,) = [r.getMessage() for r in caplog.records if "skipping" in r.getMessage()]
    assert warned.startswith(f"{engine.history_file}:{count - 2}: ")

    caplog.clear()
    assert engine._from_history("rot-00001") is not None  # beyond the newest 10,000
    assert engine.published_at("jwt", 7) is not None
    assert engine.published_at("jwt", 8) is None
    assert [r.getMessage().split(": ")[0] for r in caplog.records if "skipping" in r.getMessage()] == [
        f"{engine.history_file}:{count - 2}",
        f"{engine.history_file}:4",
        f"{engine.history_file}:{count - 2}",
        f"{engine.history_file}:4",
        f"{engine.history_file}:{count - 2}",
        f"{engine.history_file}:4",
    ]


@pytest.mark.parametrize(
    ("kind", "strategy", "target", "command"),
    [
        ("db-password", "alternating", "app", "voke rotate db-password --user app --yes"),
        ("api-key:sendgrid", "additive", "sendgrid", "voke rotate api-key sendgrid --yes"),
        ("api-key:stripe", "assisted", "stripe", "voke rotate api-key stripe --yes < new-key.txt"),
        ("jwt", "emergency", "jwt", "voke rotate jwt --emergency --yes"),
        ("sa-key", "additive", "ci", "voke rotate sa-key ci --yes"),
    ],
)
def test_a_rolled_back_rotation_is_retried_by_starting_its_kind_again(kind, strategy, target, command):
    from voketag_ops.workflows.rotate import retry_command

    record = RotationRecord(
        id="rot-x", secret="s", kind=kind, target=target, strategy=strategy, status="rolled_back",
        owner="h:1", lease_until="2999-01-01T00:00:00Z", started_at="2026-01-01T00:00:00Z",
    )  # fmt: skip
    assert retry_command(record) == command  # never `resume`: a rolled-back rotation has ended


def test_two_rotations_at_once_exactly_one_proceeds_at_a_time(platform, platform_environ):
    before = len(platform.store().get("db-app").versions)
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "voketag_ops", "rotate", "db-password", "--yes", "--json"],
            env=platform_environ,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    codes = [p.wait(timeout=120) for p in procs]
    assert sorted(codes) in ([0, 0], [0, 5]), [p.stderr.read() for p in procs]
    assert len(platform.store().get("db-app").versions) == before + codes.count(0)
    assert_consistent(platform)


def _take_dr_lock_elsewhere(lock_dir, operation, *, shared=False):
    """What another voke taking the DR lock for OPERATION (a failover: exclusive) gets: "held",
    or the refusal's message."""
    code = (
        "import sys; from pathlib import Path; from voketag_ops.errors import PreconditionError;"
        " from voketag_ops.locks import dr_lock\n"
        "try:\n"
        f"    with dr_lock(Path(sys.argv[1]), sys.argv[2]{', shared=True' if shared else ''}): print('held')\n"
        "except PreconditionError as exc: print(exc.message)"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, str(lock_dir), operation], capture_output=True, text=True
    )
    return done.stdout.strip() or done.stderr.strip()


def test_no_dr_operation_starts_while_a_rotation_starts(platform, platform_environ, voke, monkeypatch):
    # A failover looks for a rotation's record once, under the DR lock. A rotation probed the
    # lock (holding nothing), then planned and logged in (the drift check) before writing its
    # record: a failover in between found no record and fenced the leader under it (found by a
    # review: exit 7, "the database system is shutting down"). It holds the lock shared meanwhile.
    lock_dir = platform.env.home / "dr"
    during, real = {}, RotationEngine._drift_check

    def drift_check(self, credential, meta):  # between the rotation's look and its record
        during["failover"] = _take_dr_lock_elsewhere(lock_dir, "dr failover")
        during["rotation"] = _take_dr_lock_elsewhere(lock_dir, "rotate jwt-signing", shared=True)
        return real(self, credential, meta)

    monkeypatch.setattr(RotationEngine, "_drift_check", drift_check)
    result = voke("rotate", "db-password", "--yes", "--json", environ=platform_environ)
    assert result.exit_code == 0, result.stdout
    assert during["failover"].startswith("a rotation is starting (rotate "), during
    assert during["rotation"] == "held"  # rotations of two secrets still run side by side
    assert _take_dr_lock_elsewhere(lock_dir, "dr failover") == "held"  # let go once the record was written
    assert_consistent(platform)


def test_no_rotation_starts_under_a_dr_operation_begun_after_its_first_look(
    platform, platform_environ, voke, monkeypatch, held_by_another_voke
):
    # A drill that took the DR lock after the rotation's probe (while the environment was
    # checked) ran with the rotation inside it: both exited 0.
    from contextlib import ExitStack

    from voketag_ops.workflows.env import LocalPlatform

    store = platform.store()
    versions = len(store.get("db-app").versions)
    with ExitStack() as drill:
        real = LocalPlatform.ensure_up

        def ensure_up(self, *args, **kwargs):
            real(self, *args, **kwargs)
            drill.enter_context(
                held_by_another_voke(platform.env.home / "dr" / "dr.lock", "drill failover pid 1")
            )

        monkeypatch.setattr(LocalPlatform, "ensure_up", ensure_up)
        result = voke("rotate", "db-password", "--yes", "--json", environ=platform_environ)
    assert result.exit_code == 5, result.stdout
    assert result.json["error"]["message"].startswith(
        "another DR operation is running (drill failover pid 1)"
    )
    assert len(store.get("db-app").versions) == versions
    assert_consistent(platform)


@pytest.mark.parametrize("command", ["backup", "prune"])
def test_a_rotation_runs_beside_a_backup_or_prune_and_a_failover_or_backup_does_not(
    platform, platform_environ, voke, monkeypatch, command
):
    # A backup, then a prune, held the DR lock exclusive: a rotation started during one (a daily
    # backup and its prune beside a 02:00 rotation) was refused, exit 5, though neither moves the
    # leader or the services, and one started during a rotation went on. Each holds the DR lock
    # shared (and backup.lock: one backup or prune at a time).
    from voketag_ops.adapters.local import dr
    from voketag_ops.adapters.local.environment import LocalEnvironment

    owner, name = (LocalEnvironment, "take_base_backup") if command == "backup" else (dr, "prune")
    lock_dir = platform.env.home / "dr"
    during, real = {}, getattr(owner, name)

    def while_it_holds_its_locks(*args, **kwargs):
        during["rotation"] = voke_proc(platform_environ, "rotate", "db-password", "--yes", "--json")
        during["failover"] = _take_dr_lock_elsewhere(lock_dir, "dr failover")  # its race kept out
        during["backup"] = voke_proc(platform_environ, "dr", "backup", "--yes", "--json")
        return real(*args, **kwargs)

    monkeypatch.setattr(owner, name, while_it_holds_its_locks)
    versions = len(platform.store().get("db-app").versions)
    result = voke("dr", command, "--yes", "--json", environ=platform_environ)
    assert result.exit_code == 0, result.stdout
    assert during["rotation"].returncode == 0, during["rotation"].stdout + during["rotation"].stderr
    assert len(platform.store().get("db-app").versions) == versions + 1
    assert during["failover"].startswith(f"a {command} is running (dr {command} pid "), during
    refused = during["backup"]  # one backup or prune at a time
    assert refused.returncode == 5, refused.stdout + refused.stderr
    assert f"(dr {command} pid " in json.loads(refused.stdout)["error"]["message"], refused.stdout
    assert _take_dr_lock_elsewhere(lock_dir, "dr failover") == "held"  # let go with it
    assert_consistent(platform)


def test_a_dr_operation_refused_by_a_running_rotation_says_to_wait_for_it(platform, platform_environ, voke):
    # It said the rotation was unfinished and to resume it (which `resume` refuses while its voke runs).
    from voketag_ops.workflows.rotate import refuse_if_rotating

    store = platform.store()
    sleeper = subprocess.Popen(["sleep", "60"])
    try:
        _record(store, "db-app", "rot-test-running", sleeper.pid)
        meta = store.get("db-app")
        record = json.loads(meta.annotations[ANNOTATION])
        record["lease_until"] = "2999-01-01T00:00:00Z"
        store.update("db-app", etag=meta.etag, annotations={ANNOTATION: json.dumps(record)})
        refused = voke("dr", "failover", "--dry-run", "--json", environ=platform_environ)
        assert refused.exit_code == 5, refused.stdout
        error = refused.json["error"]
        assert error["message"].startswith(
            f"rotation rot-test-running of db-app is running (owner {process_host()}:{sleeper.pid}, "
            "lease until 2999-01-01T00:00:00Z)"
        ), error
        assert "resume" not in error["hint"] and "rollback" not in error["hint"], error
    finally:
        sleeper.kill()
        sleeper.wait()
    with pytest.raises(PreconditionError, match="is unfinished") as gone:  # its voke is gone: resume it
        refuse_if_rotating(store, ["db-app"], resume="voke rotate resume")
    assert "voke rotate resume --yes (or rollback)" in (gone.value.hint or "")
    done = voke("rotate", "rollback", "rot-test-running", "--yes", "--json", environ=platform_environ)
    assert done.exit_code == 0, done.stdout
    assert_consistent(platform)


def _lease_forever(store, secret):
    meta = store.get(secret)
    record = json.loads(meta.annotations[ANNOTATION])
    record["lease_until"] = "2999-01-01T00:00:00Z"
    store.update(secret, etag=meta.etag, annotations={ANNOTATION: json.dumps(record)})


def test_env_down_and_destroy_wait_for_a_running_rotation(platform, platform_environ, voke):
    # They took only the DR lock, which a rotation holds until its record is written: `env down`
    # stopped everything under a running rotation, whose rollback then failed too (exit 7, and
    # every `rotate due --run` after it). Only a live rotation refuses them.
    store = platform.store()
    sleeper = subprocess.Popen(["sleep", "60"])
    try:
        _record(store, "db-app", "rot-test-env", sleeper.pid)
        _lease_forever(store, "db-app")
        running = f"rotation rot-test-env of db-app is running (owner {process_host()}:{sleeper.pid}, "
        for args in (
            ["down", "--dry-run"],
            ["down", "--yes"],
            ["destroy", "--dry-run"],
            ["destroy", "--yes"],
        ):
            refused = voke("env", *args, "--json", environ=platform_environ)
            assert refused.exit_code == 5, (args, refused.stdout)
            error = refused.json["error"]
            assert error["message"].startswith(running + "lease until 2999-01-01T00:00:00Z)"), error
            assert "`voke rotate status`" in error["hint"], error
        assert platform.env.is_running()
        assert all(s.healthy for s in platform.runtime().services(check=True))
    finally:
        sleeper.kill()
        sleeper.wait()
        if not platform.env.is_running():  # (without the refusal) for the tests after this one
            platform.up()
    # Its voke is gone: nothing runs it, so nothing waits for it (it is resumed after `env up`).
    for command in ("down", "destroy"):
        planned = voke("env", command, "--dry-run", "--json", environ=platform_environ)
        assert planned.exit_code == 0, planned.stdout
    done = voke("rotate", "rollback", "rot-test-env", "--yes", "--json", environ=platform_environ)
    assert done.exit_code == 0, done.stdout
    _record(store, "db-app", "rot-test-env-attention", os.getpid(), status="needs_attention")
    try:
        _lease_forever(store, "db-app")  # (a person's to judge, not running)
        planned = voke("env", "down", "--dry-run", "--json", environ=platform_environ)
        assert planned.exit_code == 0, planned.stdout
    finally:
        done = voke(
            "rotate", "rollback", "rot-test-env-attention", "--yes", "--json", environ=platform_environ
        )
    assert done.exit_code == 0, done.stdout
    assert_consistent(platform)


class RejectingTarget:
    """The real target, except that the pending login is refused (failure injection)."""

    def __init__(self, real, reject_user):
        self.real, self.reject_user = real, reject_user

    def __getattr__(self, name):
        return getattr(self.real, name)

    def can_login(self, c, **kw):
        if c.get("rotation_id") and c["username"] == self.reject_user:
            return False
        return self.real.can_login(c, **kw)


def test_failed_test_step_rolls_back_and_next_run_starts_clean(platform):
    store = platform.store()
    meta = store.get("db-app")
    partner = cred(platform, meta.aliases["previous"])["username"]
    engine = make_engine(platform, target=RejectingTarget(platform.db_target(), partner), test_attempts=2)
    outcome = engine.rotate_db_password("app")
    assert outcome.error is not None and outcome.error.exit_code == 6
    assert outcome.report.status == "rolled_back"
    assert [s.status for s in outcome.report.steps if s.name == "test"] == ["failed"]
    after = store.get("db-app")
    assert after.aliases["current"] == meta.aliases["current"]
    assert after.version(outcome.report.new_version).state == "disabled"
    assert_consistent(platform)
    with pytest.raises(PreconditionError, match="already ended \\(rolled_back\\); nothing to resume"):
        make_engine(platform).resume(outcome.report.rotation_id)  # not a finished rotation: exit 5
    done = make_engine(platform).rotate_db_password("app")
    assert done.error is None
    assert make_engine(platform).resume(done.report.rotation_id).report.status == "succeeded"  # a no-op
    # The dry runs of resume and rollback refuse an ended rotation as the commands do (exit 5).
    ended = [
        (outcome.report.rotation_id, "resume", "rolled_back"),
        (outcome.report.rotation_id, "rollback", "rolled_back"),
        (done.report.rotation_id, "rollback", "succeeded"),
    ]
    for rotation_id, action, status in ended:
        engine = make_engine(platform)
        with pytest.raises(PreconditionError, match=f"already ended \\({status}\\)"):
            engine.plan_unfinished(rotation_id, action=action)
        with pytest.raises(PreconditionError, match=f"already ended \\({status}\\)"):
            getattr(engine, action)(rotation_id)
    plan = make_engine(platform).plan_unfinished(done.report.rotation_id, action="resume")
    assert plan["plan"] == ["nothing unfinished: nothing to do"]  # as its resume: a no-op


class UnhealthyRuntime:
    """The real runtime, but services report unhealthy on a given version."""

    def __init__(self, real, bad_version):
        self.real, self.bad_version = real, bad_version

    def __getattr__(self, name):
        return getattr(self.real, name)

    def health(self, service):
        info = next(s for s in self.real.services(check=False) if s.name == service)
        return info.secret_version != self.bad_version and self.real.health(service)


def test_failed_health_after_deploy_rolls_services_back(platform, monkeypatch):
    from voketag_ops.workflows.credentials import DbPassword

    store = platform.store()
    meta = store.get("db-app")
    next_version = max(v.version for v in meta.versions) + 1
    engine = make_engine(
        platform, runtime=UnhealthyRuntime(platform.runtime(), next_version), health_timeout=1.0
    )
    failures, stop = [], threading.Event()
    # The login goes back only once no instance reads the new version, draining ones included:
    # they still answer requests sent before the move, and would fail them (503s).
    pinned_at_restore, real_restore = [], DbPassword.restore

    def restore(self, *args, **kwargs):
        pinned_at_restore.append(platform.runtime().pinned_versions("db-app"))
        return real_restore(self, *args, **kwargs)

    monkeypatch.setattr(DbPassword, "restore", restore)

    def probe():  # the real services must keep working while the rollback moves them back
        from voketag_ops.adapters.local.services import http_health

        runtime = platform.runtime()
        while not stop.is_set():
            for service in ("admin-service", "factory-service", "blockchain-service"):
                url = runtime.url(service)
                ok, body = http_health(url) if url else (False, {"error": "no route"})
                if not ok:
                    failures.append((service, body))

    thread = threading.Thread(target=probe)
    thread.start()
    try:
        outcome = engine.rotate_db_password("app")
    finally:
        stop.set()
        thread.join()
    assert outcome.error is not None and outcome.error.exit_code == 6, outcome
    assert failures == []
    assert pinned_at_restore and all(next_version not in p for p in pinned_at_restore), pinned_at_restore
    assert outcome.report.new_version == next_version
    assert store.get("db-app").aliases["current"] == meta.aliases["current"]
    assert_consistent(platform)


def test_drift_no_stored_credential_logs_in_changes_nothing(platform, voke, platform_environ):
    target, store = platform.db_target(), platform.store()
    meta = store.get("db-app")
    for role in ("app_a", "app_b"):
        target.set_password(role, "Drifted-Value-123456789!")
    try:
        result = voke("rotate", "db-password", "--yes", "--json", environ=platform_environ)
        assert result.exit_code == 7
        assert "no stored credential" in result.json["error"]["message"]
        assert store.get("db-app").versions == meta.versions
        assert ANNOTATION not in store.get("db-app").annotations
    finally:  # give both logins their stored passwords back
        cur, prev = cred(platform, meta.aliases["current"]), cred(platform, meta.aliases["previous"])
        target.set_password(prev["username"], prev["password"])
        target.set_password(cur["username"], cur["password"])
    assert_consistent(platform)


def test_roles_that_do_not_hold_the_current_login_stop_before_the_lock(platform):
    users = dict(platform.settings.rotation.db_users)
    users["app"] = users["app"].model_copy(update={"roles": ("app_c", "app_d")})
    engine = make_engine(platform, db_users=users)
    meta = platform.store().get("db-app")
    for dry_run in (True, False):  # the same answer, and nothing left to roll back
        with pytest.raises(ValidationError, match="is not one of app_c, app_d"):
            engine.rotate_db_password("app", dry_run=dry_run)
    after = platform.store().get("db-app")
    assert ANNOTATION not in after.annotations and after.versions == meta.versions
    assert_consistent(platform)


def test_single_user_strategy(platform):
    from voketag_ops.config import DbUserSettings
    from voketag_ops.workflows.env import LocalPlatform

    users = dict(platform.settings.rotation.db_users)
    users["solo"] = DbUserSettings(
        secret="db-solo",
        strategy="single",
        roles=("solo_user",),  # single: one login
        owner="solo_owner",
        services=(),
    )
    settings = platform.settings.model_copy(
        update={"rotation": platform.settings.rotation.model_copy(update={"db_users": users})}
    )
    solo = LocalPlatform(settings)
    solo.bootstrap_credentials()
    engine = RotationEngine(
        store=solo.store(),
        runtime=solo.runtime(),
        target=solo.db_target(),
        settings=settings.rotation,
        home=solo.env.home,
    )
    old = json.loads(solo.store().access("db-solo", "current"))
    outcome = engine.rotate_db_password("solo")
    assert outcome.error is None and outcome.report.strategy == "single"
    new = json.loads(solo.store().access("db-solo", "current"))
    assert new["username"] == old["username"] == "solo_user"
    assert solo.db_target().can_login(new) and not solo.db_target().can_login(old)


def test_cleanup_keeps_current_previous_pinned_and_newest(platform):
    store = platform.store()
    for _ in range(2):  # make sure there are more than 3 versions
        assert make_engine(platform).rotate_db_password("app").error is None
    meta = store.get("db-app")
    # Old instances drain for a few seconds after a blue-green restart and stay pinned
    # (protected) meanwhile; wait them out so both cleanup runs see the same pins.
    runtime, deadline = platform.runtime(), time.monotonic() + 30
    while runtime.pinned_versions("db-app") != {meta.aliases["current"]} and time.monotonic() < deadline:
        time.sleep(0.2)
    later = datetime.now(timezone.utc) + timedelta(days=2)
    engine = make_engine(platform)
    engine.now = lambda: later
    plan = engine.cleanup(dry_run=True)
    plan["actions"] = [a for a in plan["actions"] if a.secret == "db-app"]  # other managed secrets too
    assert plan["actions"], "expected superseded versions to disable"
    assert store.get("db-app").versions == meta.versions  # dry run changed nothing
    protected = set(meta.aliases.values()) | runtime.pinned_versions("db-app")
    newest = {v.version for v in sorted(meta.versions, key=lambda v: v.version)[-3:]}
    for action in plan["actions"]:
        assert action.version not in protected | newest and action.action == "disable"
    assert all(engine._still_unprotected(a) for a in plan["actions"])
    moved = plan["actions"][0].__class__("db-app", meta.aliases["current"], "disable", "")
    assert not engine._still_unprotected(moved)  # an alias names it now: re-checked before acting
    engine.cleanup(dry_run=False)
    states = {v.version: v.state for v in store.get("db-app").versions}
    assert all(states[a.version] == "disabled" for a in plan["actions"])
    from voketag_ops.audit import AuditLog

    event = [e for e in AuditLog(platform.env.home).entries() if e.event_type == "rotation.cleanup"][-1]
    assert event.result == "success" and isinstance(event.duration_seconds, float)
    assert event.details["done"] == len(event.details["actions"]) >= len(plan["actions"])
    engine.now = lambda: later + timedelta(days=31)
    destroyed = [a for a in engine.cleanup(dry_run=False)["actions"] if a.secret == "db-app"]
    assert destroyed and all(a.action == "destroy" for a in destroyed)
    assert_consistent(platform)


class StateWrittenThenCtrlC:
    """The real store, but Ctrl-C comes as its CUT-th state change returns: the change landed."""

    def __init__(self, real, cut):
        self.real, self.cut = real, cut

    def __getattr__(self, name):
        return getattr(self.real, name)

    def set_state(self, secret, version, state):
        self.real.set_state(secret, version, state)
        self.cut -= 1
        if not self.cut:
            raise KeyboardInterrupt


def test_an_interrupted_cleanup_counts_the_change_that_landed(platform, tmp_path):
    # Found by an interrupt sweep: `done` was set before each change, so a Ctrl-C as the store
    # wrote one audited it as not done (one fewer than the versions changed).
    from voketag_ops.adapters.local.secrets import LocalSecretStore
    from voketag_ops.audit import AuditLog
    from voketag_ops.core.rotation import CleanupAction

    store = LocalSecretStore(tmp_path / "home")  # (a secret of its own, kept out of the shared store)
    secret = "cleanup-cut"
    store.create(secret)
    for _ in range(3):
        store.add_version(secret, b"{}")
    engine = make_engine(platform)
    engine.store = StateWrittenThenCtrlC(store, cut=2)
    actions = [CleanupAction(secret, v, "disable", "") for v in (1, 2, 3)]
    with pytest.raises(KeyboardInterrupt):
        engine._clean(actions)
    assert [v.state for v in store.get(secret).versions] == ["disabled", "disabled", "enabled"]
    event = [e for e in AuditLog(platform.env.home).entries() if e.event_type == "rotation.cleanup"][-1]
    assert (event.result, event.details["done"]) == ("interrupted", 2)


def test_a_second_cleanup_at_once_is_refused_naming_the_first(
    platform, platform_environ, voke, held_by_another_voke
):
    # Two at once both acted on, reported and audited the same versions (two `rotation.cleanup`
    # events claiming the same disables and destroys).
    from voketag_ops.audit import AuditLog

    log = AuditLog(platform.env.home)
    before = len(list(log.entries()))
    states = {v.version: v.state for v in platform.store().get("db-app").versions}
    with held_by_another_voke(platform.env.home / "rotations" / "cleanup.lock", "rotate cleanup pid 1"):
        for args in (["--dry-run"], ["--yes"]):
            refused = voke("rotate", "cleanup", *args, "--json", environ=platform_environ)
            assert refused.exit_code == 5, (args, refused.stdout)
            assert refused.json["error"]["message"] == (
                "another `voke rotate cleanup` is running (rotate cleanup pid 1); nothing was changed"
            ), refused.json
    (event,) = list(log.entries())[before:]  # the run's refusal; the dry run writes none
    assert (event.event_type, event.result) == ("rotation.cleanup", "failure")
    assert "rotate cleanup pid 1" in event.details["error"]["message"]
    assert {v.version: v.state for v in platform.store().get("db-app").versions} == states
    done = voke("rotate", "cleanup", "--yes", "--json", environ=platform_environ)  # let go: it runs
    assert done.exit_code == 0, done.stdout


def test_due_by_schedule_and_due_run(platform, voke, platform_environ):
    engine = make_engine(platform)
    assert engine.due() == []
    engine.now = lambda: datetime.now(timezone.utc) + timedelta(days=40)
    assert "db-app" in [d["name"] for d in engine.due()]  # (the yearly JWT keyring may be due too)
    result = voke("rotate", "due", "--json", environ=platform_environ)
    assert result.exit_code == 0 and result.json["result"]["due"] == []


def test_due_run_finishes_a_rotation_whose_voke_died(platform, voke, platform_environ):
    # A crashed cron run: the next `rotate due --run` finishes it; nothing was due by then, so
    # it used to say "nothing is due" and exit 0 with the rotation stuck until the next month.
    crashed = voke_proc(platform_environ, "rotate", "db-password", "--yes", **{FAULT_ENV: "set_target"})
    assert crashed.returncode == FAULT_EXIT_CODE, crashed.stderr
    listed = voke("rotate", "due", "--json", environ=platform_environ).json["result"]
    assert [u["secret"] for u in listed["unfinished"]] == ["db-app"]
    plan = voke("rotate", "due", "--run", "--dry-run", environ=platform_environ)  # the cron job's plan
    assert plan.exit_code == 0, plan.stderr
    assert "dry run: rotation plan for db-app (alternating); nothing will change" in plan.stdout
    assert "finish the unfinished rotation" in plan.stdout and "  • run finish" in plan.stdout
    assert voke("rotate", "due", "--json", environ=platform_environ).json["result"] == listed  # unchanged
    done = voke("rotate", "due", "--run", "--yes", "--json", environ=platform_environ)
    assert done.exit_code == 0, done.stdout
    (report,) = done.json["result"]["rotations"]
    assert report["status"] == "succeeded" and report["resumed"] is True
    assert voke("rotate", "status", "--json", environ=platform_environ).json["result"]["in_progress"] == []


def test_ctrl_c_in_due_run_starts_no_further_rotation(platform, voke, platform_environ, monkeypatch):
    # One Ctrl-C means stop: the next due secret was rotated all the same (the Interrupted of
    # the first was taken for one secret's failure).
    from voketag_ops.errors import Interrupted

    started: list[str] = []

    def rotate(self, name, **_kw):
        started.append(name)
        raise Interrupted(f"rotation of {name} interrupted during deploy", hint="voke rotate resume X --yes")

    monkeypatch.setattr(RotationEngine, "due", lambda self: [{"name": "db-app"}, {"name": "jwt-signing"}])
    monkeypatch.setattr(RotationEngine, "name_of", lambda self, secret: secret)
    monkeypatch.setattr(RotationEngine, "rotate", rotate)
    run = voke("rotate", "due", "--run", "--yes", "--json", environ=platform_environ)
    assert run.exit_code == 130, run.stdout
    assert started == ["db-app"]  # jwt-signing was not started
    assert run.json["error"]["message"] == "rotation of db-app interrupted during deploy"
    [report] = run.json["result"]["rotations"]
    assert (report["secret"], report["status"]) == ("db-app", "not_started")


def _record(store, secret, rotation_id, owner_pid, status="in_progress", step="set_target"):
    meta = store.get(secret)
    record = {
        "id": rotation_id, "secret": secret, "kind": "db-password", "strategy": "alternating",
        "target": "app", "owner": f"{process_host()}:{owner_pid}", "lease_until": "2000-01-01T00:00:00Z",
        "started_at": "2026-01-01T00:00:00Z", "status": status, "step": step,
        "old_current": meta.aliases["current"], "old_previous": meta.aliases.get("previous"),
        "pending_version": None, "finished_at": None, "steps": [], "error": None,
    }  # fmt: skip
    store.update(secret, etag=meta.etag, annotations={ANNOTATION: json.dumps(record)})


def _dead_pid():
    dead = subprocess.Popen(["true"])
    dead.wait()
    return dead.pid


def test_due_run_leaves_a_rotation_that_needs_a_person_to_one(platform, voke, platform_environ):
    # needs_attention: a step failed in a way only a person can judge (PRODUCT.md: stop and ask).
    store = platform.store()
    _record(store, "db-app", "rot-test-attention", _dead_pid(), status="needs_attention")
    try:
        listed = voke("rotate", "due", "--json", environ=platform_environ).json["result"]
        assert listed["unfinished"] == []
        assert [r["rotation_id"] for r in listed["needs_attention"]] == ["rot-test-attention"]
        text = voke("rotate", "due", environ=platform_environ).stdout
        assert "needs attention: rot-test-attention of db-app" in text
        run = voke("rotate", "due", "--run", "--yes", "--json", environ=platform_environ)
        assert run.exit_code == 7, run.stdout
        assert "rot-test-attention" in run.json["error"]["message"]
        left = json.loads(store.get("db-app").annotations[ANNOTATION])
        assert left["status"] == "needs_attention" and left["steps"] == []  # not resumed
    finally:
        done = voke("rotate", "rollback", "rot-test-attention", "--yes", "--json", environ=platform_environ)
    assert done.exit_code == 0, done.stdout
    assert_consistent(platform)


def test_resume_without_an_id_takes_the_rotation_no_voke_runs(platform):
    store = platform.store()
    first, second = sorted(m.name for m in store.list())[:2]  # listed in name order
    sleeper = subprocess.Popen(["sleep", "60"])
    try:
        _record(store, first, "rot-test-live", sleeper.pid)
        store_meta = store.get(first)
        record = json.loads(store_meta.annotations[ANNOTATION])
        record["lease_until"] = "2999-01-01T00:00:00Z"
        store.update(first, etag=store_meta.etag, annotations={ANNOTATION: json.dumps(record)})
        _record(store, second, "rot-test-crashed", _dead_pid())
        engine = make_engine(platform)
        assert [r.id for r in engine.unfinished()] == ["rot-test-live", "rot-test-crashed"]
        plan = engine.plan_unfinished(None, action="resume")
        assert plan["plan"][0].startswith("take over rot-test-crashed"), plan
    finally:
        sleeper.kill()
        sleeper.wait()
        for name in (first, second):
            meta = store.get(name)
            store.update(name, etag=meta.etag, annotations={ANNOTATION: None})


def test_rotation_under_load_probe_has_zero_failed_requests(platform):
    runtime = platform.runtime()
    failures, requests = [], [0]
    stop = threading.Event()

    def probe():
        from voketag_ops.adapters.local.services import http_health

        while not stop.is_set():
            for service in ("admin-service", "factory-service", "blockchain-service"):
                url = runtime.url(service)
                ok, body = http_health(url) if url else (False, {"error": "no route"})
                requests[0] += 1
                if not ok:
                    failures.append((service, body))

    thread = threading.Thread(target=probe)
    thread.start()
    try:
        outcome = make_engine(platform).rotate_db_password("app")
        time.sleep(0.3)
    finally:
        stop.set()
        thread.join()
    assert outcome.error is None
    assert requests[0] > 10 and failures == []


def test_no_secret_value_reaches_output_logs_audit_or_state(platform, voke, platform_environ):
    outputs = []
    for args in (
        ("rotate", "db-password", "--yes", "--json"),
        ("rotate", "status", "--json"),
        ("rotate", "history", "--json"),
        ("secrets", "list", "--json"),
        ("secrets", "versions", "db-app"),
        ("env", "status", "--json"),
        ("rotate", "db-password", "--dry-run"),
        ("config", "show"),
    ):
        result = voke(*args, environ={**platform_environ, "VOKE_LOG_LEVEL": "debug"})
        outputs.append(result.stdout + result.stderr)
    store = platform.store()
    values = [
        cred(platform, v.version)["password"] for v in store.get("db-app").versions if v.state == "enabled"
    ]
    assert len(values) >= 2
    home = platform.env.home
    files = [
        p
        for p in home.rglob("*")
        if p.is_file() and p.suffix in (".jsonl", ".json", ".log") and "secrets" not in p.parts
    ]
    files += list((home / "pg" / "logs").glob("*.log"))
    blobs = outputs + [p.read_text(errors="replace") for p in files]
    for value in values:
        for blob in blobs:
            assert value not in blob


def test_secrets_access_prints_the_raw_value_only(platform, platform_environ):
    proc = voke_proc(platform_environ, "secrets", "access", "db-app", "--version", "current")
    assert proc.returncode == 0
    assert json.loads(proc.stdout) == cred(platform, "current")
    assert proc.stderr == ""


def test_cli_guards(voke, platform, platform_environ):
    assert voke("rotate", "db-password", environ=platform_environ).exit_code == 2  # no --yes, no TTY
    assert voke("rotate", "db-password", "--user", "nobody", "--yes", environ=platform_environ).exit_code == 2
    jwt = voke(
        "rotate", "db-password", "--user", "jwt", "--yes", environ=platform_environ
    )  # managed, not a login
    assert jwt.exit_code == 2 and "unknown database login 'jwt' (managed: app)" in jwt.stderr
    assert (
        voke("rotate", "db-password", "--strategy", "weird", "--yes", environ=platform_environ).exit_code == 2
    )
    missing = voke("rotate", "rollback", "rot-nope", "--yes", environ=platform_environ)
    assert missing.exit_code == 2 and "no rotation rot-nope" in missing.stderr
    plan = voke("rotate", "db-password", "--dry-run", "--json", environ=platform_environ)
    assert plan.exit_code == 0 and plan.json["result"]["dry_run"] is True and plan.json["result"]["plan"]
    assert any(line.startswith("ALTER ROLE ") for line in plan.json["result"]["plan"])  # the local target's
    for args in (("access", "nope"), ("access", "db-app", "--version", "999"), ("versions", "nope")):
        typo = voke("secrets", *args, environ=platform_environ)  # a name the operator typed: usage
        assert typo.exit_code == 2 and "voke secrets list" in typo.stderr, (args, typo.stderr)
    from voketag_ops.audit import AuditLog

    asked = [
        (e.target, e.result) for e in AuditLog(platform.env.home).entries() if e.event_type == "secret.access"
    ]
    assert asked[-2:] == [("nope", "failure"), ("db-app", "failure")]  # asked for, even if refused


def test_due_run_without_yes_is_refused_before_the_environment_starts(
    voke, make_environ, tmp_path, monkeypatch
):
    # A usage error changes nothing: it used to start PostgreSQL and the services first.
    from voketag_ops.workflows.env import LocalPlatform

    def started(*_a, **_k):
        raise AssertionError("the environment was started")

    monkeypatch.setattr(LocalPlatform, "ensure_up", started)
    refused = voke("rotate", "due", "--run", environ=make_environ(tmp_path / "home"))  # no --yes, no TTY
    assert refused.exit_code == 2 and "refusing without --yes" in refused.stderr, refused.stderr


class ApplyThenTimeout:
    """The real target, but the password change reports a timeout after it took effect."""

    def __init__(self, real):
        self.real, self.failed = real, False

    def __getattr__(self, name):
        return getattr(self.real, name)

    def set_password(self, role, password):
        from voketag_ops.errors import StepTimeoutError

        self.real.set_password(role, password)
        if not self.failed:  # the first answer is lost; the rollback's call gets through
            self.failed = True
            raise StepTimeoutError(f"ALTER ROLE {role}: no answer")


def test_a_set_target_that_took_effect_before_failing_is_undone(platform):
    store = platform.store()
    before = store.get("db-app")
    engine = make_engine(platform, target=ApplyThenTimeout(platform.db_target()))
    outcome = engine.rotate_db_password("app")
    assert outcome.error is not None and outcome.error.exit_code == 6
    rollback = next(s for s in outcome.report.steps if s.name == "rollback")
    assert rollback.detail == "restore_target"
    assert store.get("db-app").aliases == before.aliases
    assert_consistent(platform)  # previous logs in again: its password was set back


def test_rollback_of_a_run_killed_inside_set_target(platform, platform_environ, voke):
    crashed = voke_proc(platform_environ, "rotate", "db-password", "--yes", **{FAULT_ENV: "create_pending"})
    assert crashed.returncode == FAULT_EXIT_CODE
    store = platform.store()
    pending = cred(platform, "pending")
    platform.db_target().set_password(pending["username"], pending["password"])  # ALTER ran, then the kill
    rotation_id = json.loads(store.get("db-app").annotations[ANNOTATION])["id"]
    result = voke("rotate", "rollback", rotation_id, "--yes", "--json", environ=platform_environ)
    assert result.exit_code == 0, result.stdout
    assert result.json["result"]["status"] == "rolled_back"
    assert_consistent(platform)


def test_a_commit_that_happened_but_was_not_recorded_is_rolled_back(platform, platform_environ, voke):
    crashed = voke_proc(platform_environ, "rotate", "db-password", "--yes", **{FAULT_ENV: "test"})
    assert crashed.returncode == FAULT_EXIT_CODE
    store = platform.store()
    meta = store.get("db-app")
    record = json.loads(meta.annotations[ANNOTATION])
    # The alias move reached the store, its reply was lost (a retried CAS on a flaky network).
    store.update(
        "db-app",
        etag=meta.etag,
        aliases={"current": record["pending_version"], "previous": record["old_current"], "pending": None},
    )
    result = voke("rotate", "rollback", record["id"], "--yes", "--json", environ=platform_environ)
    assert result.exit_code == 0, result.stdout
    after = store.get("db-app")
    assert after.aliases["current"] == record["old_current"]
    assert_consistent(platform)


# `voke rotate db-password` killed in its deploy step once the new instances are started and
# before traffic moves to them (deterministic where a SIGKILL would be timed).
KILLED_IN_DEPLOY = """
import os, sys
from voketag_ops.adapters.local.services import LocalServiceRuntime
LocalServiceRuntime._wait_healthy = lambda self, inst: os._exit(9)
from voketag_ops.cli.main import entry
sys.argv = ["voke", "rotate", "db-password", "--yes"]
entry()
"""


def test_a_rollback_after_a_kill_in_deploy_stops_the_instances_it_left_starting(
    platform, platform_environ, voke
):
    from voketag_ops.adapters.local.services import _alive

    killed = subprocess.run(
        [sys.executable, "-c", KILLED_IN_DEPLOY],
        env=platform_environ,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert killed.returncode == 9, killed.stderr
    record = json.loads(platform.store().get("db-app").annotations[ANNOTATION])
    new = record["pending_version"]
    registry = json.loads((platform.env.home / "services" / "registry.json").read_text())
    home = platform.env.home
    orphans = [
        (i["pid"], i["instance"])
        for e in registry["services"].values()
        for i in e["others"]
        if i["role"] == "starting"
    ]
    assert orphans and all(_alive(pid, home, name) for pid, name in orphans)
    assert new in platform.runtime().live_versions("db-app")  # what the rollback would wait on
    result = voke("rotate", "rollback", record["id"], "--yes", "--json", environ=platform_environ)
    assert result.exit_code == 0, result.stdout + result.stderr
    assert "still draining" not in result.stderr  # nothing was waited out
    assert not any(_alive(pid, home, name) for pid, name in orphans)
    assert new not in platform.runtime().live_versions("db-app")
    assert_consistent(platform)


class InterruptedRedeploy:
    """The real runtime, but the rollback's redeploy is cut short by Ctrl-C (or SIGTERM)."""

    def __init__(self, real):
        self.real = real

    def __getattr__(self, name):
        return getattr(self.real, name)

    def deploy_many(self, targets):
        raise KeyboardInterrupt


def test_an_interrupted_rollback_is_finished_never_resumed_forward(platform, platform_environ, voke):
    from voketag_ops.errors import Interrupted

    crashed = voke_proc(platform_environ, "rotate", "db-password", "--yes", **{FAULT_ENV: "deploy"})
    assert crashed.returncode == FAULT_EXIT_CODE  # the services are on the new version
    store = platform.store()
    record = json.loads(store.get("db-app").annotations[ANNOTATION])
    engine = make_engine(platform, runtime=InterruptedRedeploy(platform.runtime()))
    with pytest.raises(Interrupted) as caught:  # the aliases are back, the services not yet
        engine.rollback(record["id"])
    assert f"voke rotate rollback {record['id']} --yes" in (caught.value.hint or "")
    assert store.get("db-app").aliases["current"] == record["old_current"]
    status = voke("rotate", "status", "--json", environ=platform_environ).json["result"]
    assert [(r["rotation_id"], r["status"]) for r in status["in_progress"]] == [
        (record["id"], "rolling_back")
    ]
    plan = voke("rotate", "resume", "--dry-run", "--json", environ=platform_environ).json["result"]
    assert plan["plan"][0] == f"finish the rollback begun on {record['id']}"
    resumed = voke("rotate", "resume", "--yes", "--json", environ=platform_environ)  # or a cron `due --run`
    assert resumed.exit_code == 6, resumed.stdout  # rolled back: safe to retry
    assert resumed.json["result"]["status"] == "rolled_back"
    assert store.get("db-app").aliases["current"] == record["old_current"]
    assert_consistent(platform)  # services on the version that is current, and no lockout
    assert voke("rotate", "db-password", "--yes", environ=platform_environ).exit_code == 0
    assert_consistent(platform)


class CutRecordWrite:
    """The real store, but Ctrl-C comes while it writes a rotation's first record: after the
    write landed (LANDED), before it did, or before it did and the store then cannot be read."""

    def __init__(self, real, *, landed, readable=True):
        self.real, self.landed, self.readable, self.cut = real, landed, readable, False

    def __getattr__(self, name):
        return getattr(self.real, name)

    def get(self, secret):
        if self.cut and not self.readable:
            from voketag_ops.errors import ConnectivityError

            raise ConnectivityError("store unreachable")
        return self.real.get(secret)

    def update(self, secret, **kw):
        if self.cut or ANNOTATION not in kw.get("annotations", {}):
            return self.real.update(secret, **kw)
        self.cut = True
        if self.landed:
            self.real.update(secret, **kw)
        raise KeyboardInterrupt


@pytest.mark.parametrize("landed", [True, False, None], ids=["landed", "not-landed", "unknown"])
def test_ctrl_c_while_the_store_writes_the_first_record_says_whether_it_landed(
    platform, platform_environ, voke, landed
):
    from voketag_ops.errors import Interrupted

    engine = make_engine(platform)
    engine.store = store = CutRecordWrite(engine.store, landed=bool(landed), readable=landed is not None)
    before = platform.store().get("db-app")
    with pytest.raises((Interrupted, KeyboardInterrupt)) as caught:
        engine.rotate_db_password("app")
    after = platform.store().get("db-app")
    raw = after.annotations.get(ANNOTATION)
    if landed:  # recorded: named, to resume or roll back, with its lease given up
        rotation_id = json.loads(raw)["id"]
        assert caught.type is Interrupted and rotation_id in caught.value.message
        assert f"voke rotate resume {rotation_id} --yes" in (caught.value.hint or "")
        assert voke("rotate", "resume", "--yes", environ=platform_environ).exit_code == 0
    elif landed is False:  # nothing recorded: a plain interrupt, and nothing to resume
        assert caught.type is KeyboardInterrupt and raw is None and after.aliases == before.aliases
    else:  # the store cannot say: the rotation is named, with the way to find out
        assert caught.type is Interrupted and "whether it was is unknown" in caught.value.message
        assert "voke rotate status" in (caught.value.hint or "")
    assert store.cut
    assert_consistent(platform)


class AnotherWriterFirst:
    """The real store, but another writer (WRITE) changes the secret just before each of the
    first TIMES writes of a rotation's first record, as `rotate cleanup` or another rotation may."""

    def __init__(self, real, write, times=1):
        self.real, self.write, self.times = real, write, times

    def __getattr__(self, name):
        return getattr(self.real, name)

    def update(self, secret, **kw):
        raw = (kw.get("annotations") or {}).get(ANNOTATION)
        if self.times and raw and json.loads(raw)["step"] == "lock":
            self.times -= 1
            self.write(self.real, secret)
        return self.real.update(secret, **kw)


def _cleanup_writes(store, secret):  # a no-op state change: a new etag, as cleanup's set_state makes
    store.set_state(secret, store.get(secret).aliases["current"], "enabled")


@pytest.mark.parametrize("writer", ["cleanup", "cleanup-always", "rotation"])
def test_a_rotation_whose_record_write_loses_the_race_says_to_whom(platform, platform_environ, voke, writer):
    # It always said "another rotation started at the same moment", even when the other writer was
    # `rotate cleanup` (no rotation ran), and never named the one that did.
    engine, store = make_engine(platform), platform.store()
    before = store.get("db-app")
    sleeper = subprocess.Popen(["sleep", "60"])

    def rotation_writes(real, secret):
        _record(real, secret, "rot-test-other", sleeper.pid, step="lock")
        _lease_forever(real, secret)

    write = rotation_writes if writer == "rotation" else _cleanup_writes
    engine.store = AnotherWriterFirst(engine.store, write, times=99 if writer == "cleanup-always" else 1)
    try:
        if writer == "cleanup":  # nothing of the rotation was written: it looks again and goes on
            outcome = engine.rotate_db_password("app")
            assert outcome.error is None and outcome.report.status == "succeeded"
            assert outcome.report.previous_version == before.aliases["current"]
        else:
            with pytest.raises(PreconditionError) as refused:
                engine.rotate_db_password("app")
            if writer == "rotation":
                assert refused.value.message.startswith(
                    f"rotation rot-test-other of db-app is running (owner {process_host()}:{sleeper.pid}, "
                ), refused.value.message
            else:
                assert refused.value.message.startswith("db-app kept changing while this rotation started")
                assert "another rotation" not in refused.value.message
            assert len(store.get("db-app").versions) == len(before.versions)  # nothing was changed
    finally:
        sleeper.kill()
        sleeper.wait()
    if writer == "rotation":
        done = voke("rotate", "rollback", "rot-test-other", "--yes", "--json", environ=platform_environ)
        assert done.exit_code == 0, done.stdout
    assert_consistent(platform)


def test_resume_and_rollback_dry_runs_show_the_plan_and_change_nothing(platform, platform_environ, voke):
    crashed = voke_proc(platform_environ, "rotate", "db-password", "--yes", **{FAULT_ENV: "set_target"})
    assert crashed.returncode == FAULT_EXIT_CODE
    store = platform.store()
    before = store.get("db-app")
    rotation_id = json.loads(before.annotations[ANNOTATION])["id"]
    plan = voke("rotate", "rollback", rotation_id, "--dry-run", "--json", environ=platform_environ)
    assert plan.exit_code == 0, plan.stdout
    assert plan.json["result"]["scope"] == "restore_target" and plan.json["result"]["in_flight"] == "test"
    resume = voke("rotate", "resume", "--dry-run", "--json", environ=platform_environ)
    assert resume.json["result"]["plan"][-1] == "run finish"
    assert store.get("db-app") == before  # nothing changed
    assert voke("rotate", "resume", "--yes", environ=platform_environ).exit_code == 0
    assert_consistent(platform)


def test_a_new_db_password_keeps_the_database_its_current_credential_names():
    # A cloud environment's credential names its own database (voketag_prod): a rotation wrote
    # `rotation.db_users.NAME.database` (voketag) into the new version, whose login test failed.
    from voketag_ops.config import DbUserSettings
    from voketag_ops.workflows.credentials import DbPassword

    credential = DbPassword("app", DbUserSettings(), target=None)
    current = {
        "username": "app_a",
        "password": "x",
        "host": "10.0.0.5",
        "port": 5432,
        "dbname": "voketag_prod",
    }
    made = credential.create("r1", current)
    assert (made["username"], made["host"], made["port"], made["dbname"]) == (
        "app_b",
        "10.0.0.5",
        5432,
        "voketag_prod",
    )
    assert (
        credential.create("r2", {**current, "dbname": ""})["dbname"] == "voketag"
    )  # none named: the setting


def test_an_alter_role_behind_another_sessions_open_transaction_gives_up_and_rolls_back(platform):
    from voketag_ops.adapters.local.dbusers import LocalDbTarget

    store = platform.store()
    before = store.get("db-app")
    holder = platform.env.primary().connect()
    # Without a limit the rotation waited for this session; it lets go on its own after 20 s.
    holder.execute("set idle_in_transaction_session_timeout = '20s'")
    holder.execute("begin")
    for role in ("app_a", "app_b"):
        holder.execute(f"alter role {role} connection limit -1")
    try:
        engine = make_engine(platform, target=LocalDbTarget(platform.env, timeout=0.5))
        outcome = engine.rotate_db_password("app")
    finally:
        holder.close()
    assert outcome.error is not None and outcome.error.exit_code == 6, outcome.error
    failed = next(s for s in outcome.report.steps if s.status == "failed")
    assert failed.name == "set_target" and failed.detail.startswith("TimeoutError: "), failed
    assert "rotation.db_timeout" in failed.detail
    rollback = next(s for s in outcome.report.steps if s.name == "rollback")
    assert rollback.detail == "discard_pending"  # the ALTER was cancelled: nothing to set back
    assert store.get("db-app").aliases == before.aliases
    assert_consistent(platform)


def test_an_alter_role_behind_another_sessions_transaction_that_ends_in_time_goes_through(platform):
    # review: the other session committed within rotation.db_timeout, and PostgreSQL refused the
    # waiting ALTER ROLE ("tuple concurrently updated"): the rotation failed and rolled back (exit 6).
    import threading

    from voketag_ops.adapters.local.dbusers import LocalDbTarget

    holder = platform.env.primary().connect()
    holder.execute("begin")
    for role in ("app_a", "app_b"):
        holder.execute(f"alter role {role} connection limit -1")
    ends = threading.Timer(2.0, holder.commit)  # while the rotation's ALTER waits behind it
    ends.start()
    try:
        outcome = make_engine(platform, target=LocalDbTarget(platform.env, timeout=20)).rotate_db_password(
            "app"
        )
    finally:
        ends.join()
        holder.close()
    assert outcome.error is None, outcome.error
    assert_consistent(platform)


def test_an_alter_role_the_database_refuses_changes_nothing_and_rolls_back_cleanly(platform):
    # review: the next login's role renamed by hand: the ALTER ROLE failed inside PostgreSQL (so
    # nothing changed), yet the rollback tried to set that role's password back: exit 7, and the
    # rotation could be neither rerun nor rolled back until the rename was undone.
    import json

    from voketag_ops.adapters.local.dbusers import LocalDbTarget

    store = platform.store()
    before = store.get("db-app")
    current = json.loads(store.access("db-app", before.aliases["current"]))["username"]
    other = "app_b" if current == "app_a" else "app_a"
    with platform.env.primary().connect() as admin:
        admin.execute(f"alter role {other} rename to {other}_renamed")
        try:
            outcome = make_engine(platform, target=LocalDbTarget(platform.env)).rotate_db_password("app")
        finally:
            admin.execute(f"alter role {other}_renamed rename to {other}")
    assert outcome.error is not None and outcome.error.exit_code == 6, outcome.error
    assert f'role "{other}" does not exist' in outcome.error.message
    rollback = next(s for s in outcome.report.steps if s.name == "rollback")
    assert rollback.detail == "discard_pending"  # nothing to set back
    assert store.get("db-app").aliases == before.aliases
    assert_consistent(platform)


class LeaseOutlivingTarget:
    """The real target, but setting a password takes longer than the lease (a fake clock moved
    past it), while another voke asks whether the rotation is running."""

    def __init__(self, real, clock, lease, other):
        self.real, self.clock, self.lease, self.other = real, clock, lease, other
        self.seen = []

    def __getattr__(self, name):
        return getattr(self.real, name)

    def set_password(self, role, password):
        self.clock[0] += timedelta(seconds=self.lease + 1)
        for _ in range(300):  # until a renewal of the lease is seen (every third of it), or 30 s
            running = [r["running"] for r in self.other.status()["in_progress"]]
            self.seen.append(running)
            if running == [True]:
                break
            time.sleep(0.1)
        self.real.set_password(role, password)


def test_a_step_that_outlasts_the_lease_keeps_its_rotation_running(platform):
    clock = [datetime.now(timezone.utc)]
    other = make_engine(platform)
    other.now = lambda: clock[0]
    target = LeaseOutlivingTarget(platform.db_target(), clock, 10, other)
    engine = make_engine(platform, target=target, lease_seconds=10)
    engine.now = lambda: clock[0]
    outcome = engine.rotate_db_password("app")
    assert outcome.error is None, outcome.error
    assert target.seen[-1] == [True], target.seen  # never "not running" for long while its voke lives
    assert_consistent(platform)


class DeployKillsTheOldInstances:
    """The real runtime, but the rotation's deploy fails after every instance of SERVICE (old and
    new) was killed: its rollback finds that service on the old version and dead."""

    def __init__(self, real, home, service):
        self.real, self.home, self.service = real, home, service
        self.calls = 0

    def __getattr__(self, name):
        return getattr(self.real, name)

    def deploy_many(self, targets):
        from voketag_ops.errors import RestartError

        self.calls += 1
        if self.calls > 1:
            return self.real.deploy_many(targets)
        registry = json.loads((self.home / "services" / "registry.json").read_text())
        entry = registry["services"][self.service]
        for inst in [entry.get("active"), *entry.get("others", [])]:
            if inst:
                try:
                    os.kill(inst["pid"], signal.SIGKILL)
                except ProcessLookupError:
                    pass
        raise RestartError(
            f"{self.service}: the new instance pinned to version {targets[self.service][1]} exited at start"
        )


def test_a_rollback_leaves_every_consumer_healthy_on_the_old_version(platform):
    store = platform.store()
    before = store.get("db-app")
    runtime = DeployKillsTheOldInstances(platform.runtime(), platform.env.home, "admin-service")
    try:
        outcome = make_engine(platform, runtime=runtime).rotate_db_password("app")
        assert outcome.error is not None and outcome.error.exit_code == 6, outcome.error
        assert "RestartError" in outcome.error.message
        assert store.get("db-app").aliases == before.aliases
        admin = next(s for s in platform.runtime().services(check=True) if s.name == "admin-service")
        assert (admin.secret_version, admin.healthy) == (before.aliases["current"], True)
        assert_consistent(platform)
    finally:  # (failing: the next tests find the service started again)
        platform.runtime().ensure_started({"db-app": before.aliases["current"]})


class RenewalLandsFirst:
    """The real store, but a renewal of the lease (a `_lease_kept` thread whose join a second
    Ctrl-C cut short) lands between the release's read and its write, once."""

    def __init__(self, real):
        self.real, self.renewed = real, False

    def __getattr__(self, name):
        return getattr(self.real, name)

    def update(self, secret, *, etag=None, **changes):
        if not self.renewed and ANNOTATION in changes.get("annotations", {}):
            self.renewed = True
            meta = self.real.get(secret)
            record = json.loads(meta.annotations[ANNOTATION])
            record["lease_until"] = "2999-01-01T00:00:00Z"
            self.real.update(secret, etag=meta.etag, annotations={ANNOTATION: json.dumps(record)})
        return self.real.update(secret, etag=etag, **changes)


def test_a_released_lease_stays_released_when_a_renewal_lands_first(platform):
    store = platform.store()
    _record(store, "db-app", "rot-test-release", os.getpid())
    engine = make_engine(platform)
    engine.store = RenewalLandsFirst(store)
    record = RotationRecord.from_json(store.get("db-app").annotations[ANNOTATION])
    try:
        engine._release(record)
        assert engine.store.renewed
        stored = RotationRecord.from_json(store.get("db-app").annotations[ANNOTATION])
        assert stored.lease_until == record.lease_until != "2999-01-01T00:00:00Z"  # given up, not renewed
    finally:
        meta = store.get("db-app")
        store.update("db-app", etag=meta.etag, annotations={ANNOTATION: None})


def test_a_password_change_that_fails_leaves_no_verifier_in_the_server_log(platform):
    # The verifier is what PostgreSQL keeps secret (pg_authid): a failing ALTER ROLE's text,
    # which the server logs by default, must not carry it.
    log = platform.env.primary().log_file
    offset = log.stat().st_size
    with pytest.raises(DatabaseError, match="cannot set the password of no_such_role"):
        platform.db_target().set_password("no_such_role", "Some-Value-123456789-abcdefghijk!")
    written = log.read_bytes()[offset:]
    assert b"no_such_role" in written  # the failure was logged...
    assert b"SCRAM-SHA-256$" not in written  # ...without the statement that carries the verifier
