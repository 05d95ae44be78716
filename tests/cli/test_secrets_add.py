"""`voke secrets add`: a value voke reads but does not rotate, stored as the new `current`
version; never printed, refused for the secrets voke rotates."""

from __future__ import annotations

import errno
import io
import json
import os
import subprocess
import sys

import pytest

from voketag_ops import files
from voketag_ops.adapters.local.secrets import LocalSecretStore

VALUE = '{"client_id": "mgmt-client", "client_secret": "Sup3r-s3cret-admin-value"}'


def voke_stdin(environ, *args, stdin: str | bytes = ""):
    return subprocess.run(
        [sys.executable, "-m", "voketag_ops", *args],
        input=stdin,
        capture_output=True,
        text=isinstance(stdin, str),
        env=environ,
        timeout=60,
    )


def test_add_stores_a_new_current_version_and_keeps_the_one_before_as_previous(voke, make_environ, tmp_path):
    environ = make_environ(tmp_path / "home")
    first = voke_stdin(environ, "secrets", "add", "auth0-management", "--yes", "--json", stdin=VALUE + "\n")
    assert first.returncode == 0, first.stderr
    assert json.loads(first.stdout)["result"] == {
        "name": "auth0-management", "created": True, "version": 1, "previous": None, "changed": True,
        "dry_run": False,
    }  # fmt: skip
    (tmp_path / "v2").write_text("  second-value-9f8e7d\n", encoding="utf-8")
    second = voke("secrets", "add", "auth0-management", "--from-file", str(tmp_path / "v2"), "--yes",
                  environ=environ)  # fmt: skip
    assert second.exit_code == 0 and "version 2 is current; version 1 is previous" in second.stdout
    assert voke("secrets", "access", "auth0-management", environ=environ).stdout == "second-value-9f8e7d"
    previous = voke("secrets", "access", "auth0-management", "--version", "previous", environ=environ)
    assert previous.stdout == VALUE
    events = voke("audit", "show", "--event-type", "secret.add", "--json", environ=environ)
    added = events.json["result"]["entries"]
    assert [e["details"]["version"] for e in added] == [1, 2] and all(e["result"] == "success" for e in added)
    for text in (first.stdout, first.stderr, second.stdout, second.stderr, events.stdout,
                 (tmp_path / "home" / "audit" / "audit.jsonl").read_text()):  # fmt: skip
        assert "Sup3r-s3cret-admin-value" not in text and "second-value-9f8e7d" not in text


def test_the_current_value_added_again_adds_no_version_unless_forced(voke, make_environ, tmp_path):
    # A rerun (a cron wrapper, a runbook step) made a version each time: "keep the last 3" lost
    # one, and the version before restarted its 24 h disable clock.
    environ = make_environ(tmp_path / "home")
    (tmp_path / "v").write_text(VALUE + "\n", encoding="utf-8")
    add = ("secrets", "add", "auth0-management", "--from-file", str(tmp_path / "v"), "--yes")
    assert voke(*add, environ=environ).exit_code == 0
    again = voke(*add, "--json", environ=environ)
    assert again.exit_code == 0, again.stdout + again.stderr
    assert again.json["result"] == {
        "name": "auth0-management", "created": False, "version": 1, "previous": None, "changed": False,
        "dry_run": False,
    }  # fmt: skip
    human = voke(*add, environ=environ)
    assert human.exit_code == 0 and "version 1 holds this value already and is current" in human.stdout
    forced = voke(*add, "--force", "--json", environ=environ)
    assert forced.exit_code == 0 and forced.json["result"]["version"] == 2
    assert forced.json["result"]["changed"] is True and forced.json["result"]["previous"] == 1
    rerun = voke(*add, "--json", environ=environ)  # the previous version stays previous
    assert (rerun.json["result"]["version"], rerun.json["result"]["previous"]) == (2, 1)
    LocalSecretStore(tmp_path / "home").set_state("auth0-management", 2, "disabled")
    revived = voke(*add, "--json", environ=environ)  # a disabled current one is no value to keep
    assert revived.exit_code == 0 and revived.json["result"]["version"] == 3, revived.stdout
    meta = LocalSecretStore(tmp_path / "home").get("auth0-management")
    assert [v.version for v in meta.versions] == [1, 2, 3]
    events = voke("audit", "show", "--event-type", "secret.add", "--json", environ=environ)
    added = events.json["result"]["entries"]
    assert [(e["result"], e["details"]["version"]) for e in added] == [
        ("success", 1), ("unchanged", 1), ("unchanged", 1), ("success", 2), ("unchanged", 2), ("success", 3),
    ]  # fmt: skip
    for text in (again.stdout, again.stderr, human.stdout, human.stderr, events.stdout,
                 (tmp_path / "home" / "audit" / "audit.jsonl").read_text()):  # fmt: skip
        assert "Sup3r-s3cret-admin-value" not in text


def test_a_value_on_stdin_is_read_as_bytes_like_a_file(voke, make_environ, tmp_path, monkeypatch):
    # Not UTF-8: stored as given, without the trailing newline `echo` adds, as from --from-file.
    environ = make_environ(tmp_path / "home")
    done = voke_stdin(environ, "secrets", "add", "misc-y", "--yes", "--json", stdin=b"\xff\xfesecretvalue\n")
    assert done.returncode == 0, done.stderr
    monkeypatch.setattr(
        sys, "stdin", io.TextIOWrapper(io.BytesIO(b"\xfe\xffsecond-value\n"), encoding="utf-8")
    )
    assert voke("secrets", "add", "misc-y", "--yes", environ=environ).exit_code == 0  # in-process, too
    store = LocalSecretStore(tmp_path / "home")
    assert [store.access("misc-y", v) for v in ("previous", "current")] == [
        b"\xff\xfesecretvalue",
        b"\xfe\xffsecond-value",
    ]


def test_a_dry_run_reads_no_value_and_changes_nothing(voke, make_environ, tmp_path):
    environ = make_environ(tmp_path / "home")
    plan = voke("secrets", "add", "maps-admin", "--dry-run", "--json", environ=environ)
    assert plan.exit_code == 0 and plan.json["result"]["plan"][0] == "create secret maps-admin"
    assert voke("secrets", "list", "--json", environ=environ).json["result"]["secrets"] == []


def test_bad_input_is_a_usage_error_and_stores_nothing(voke, make_environ, tmp_path, monkeypatch):
    environ = make_environ(tmp_path / "home")
    # what the real stdin pipe (and no terminal) decides runs as a real process; names and files in-process
    piped = [
        (["empty"], " \n", "nothing pasted"),
        (["big"], "x" * 65537, "more than 65,536 bytes"),
        (["ask"], VALUE, "refusing without --yes"),
    ]
    for args, stdin, message in piped:
        yes = [] if args == ["ask"] else ["--yes"]
        done = voke_stdin(environ, "secrets", "add", *args, *yes, stdin=stdin)
        assert done.returncode == 2 and message in done.stderr, (args, done.stderr)
        assert "Traceback" not in done.stderr
    named = [
        (["db-app"], VALUE, "that voke rotates"),  # the rotation's own secret
        (["jwt-signing"], VALUE, "rotation.jwt"),
        (["bad name"], VALUE, "invalid secret name"),
        (["bad\n"], VALUE, "invalid secret name"),  # a line break after it too (`$` let it through)
        (["nofile", "--from-file", str(tmp_path / "missing")], "", "No such file"),
    ]
    for args, stdin, message in named:
        monkeypatch.setattr(sys, "stdin", io.StringIO(stdin))
        result = voke("secrets", "add", *args, "--yes", environ=environ)
        assert result.exit_code == 2 and message in result.stderr, (args, result.stderr)
        assert "Traceback" not in result.stderr
    assert voke("secrets", "list", "--json", environ=environ).json["result"]["secrets"] == []


def test_with_log_level_info_each_audit_event_is_a_log_record_too(make_environ, tmp_path):
    # The scheduled Cloud Run job's VOKE_HOME ends with the run: its platform log keeps the events.
    environ = make_environ(tmp_path / "home", VOKE_LOG_LEVEL="info")
    done = voke_stdin(environ, "secrets", "add", "maps-admin", "--yes", stdin=VALUE)
    assert done.returncode == 0, done.stderr
    records = [json.loads(line) for line in done.stderr.splitlines() if line.startswith("{")]
    (event,) = [r["audit"] for r in records if "audit" in r]
    assert event["event_type"] == "secret.add" and event["target"] == "maps-admin" and event["hash"]
    assert "Sup3r-s3cret-admin-value" not in done.stderr


def test_on_secret_manager_a_rotated_secret_is_refused_by_its_id_too(
    voke, make_environ, tmp_path, monkeypatch
):
    from voketag_ops.testing.gcp_fakes import FakeGcp, environment_toml

    with FakeGcp() as fake:
        env = fake.environment(secrets={"db-app": "prod-db-app"})
        (tmp_path / "voke.toml").write_text(environment_toml("prod", env))
        environ = make_environ(tmp_path / "home", VOKE_CONFIG=str(tmp_path / "voke.toml"), VOKE_ENV="prod")
        for name in ("db-app", "prod-db-app"):  # its logical name and its Secret Manager id
            monkeypatch.setattr(sys, "stdin", io.StringIO(VALUE))
            refused = voke("secrets", "add", name, "--yes", environ=environ)
            assert refused.exit_code == 2 and "rotation.db_users.app" in refused.stderr, refused.stderr
        monkeypatch.setattr(sys, "stdin", io.StringIO(VALUE))
        added = voke("secrets", "add", "auth0-management", "--yes", "--json", environ=environ)
        assert added.exit_code == 0, added.stderr
        assert added.json["result"]["version"] == 1
        shown = voke("secrets", "access", "auth0-management", environ=environ)
        assert shown.stdout == VALUE


def test_on_secret_manager_the_current_value_added_again_adds_no_version(voke, make_environ, tmp_path):
    from voketag_ops.testing.gcp_fakes import FakeGcp, environment_toml

    with FakeGcp() as fake:
        (tmp_path / "voke.toml").write_text(environment_toml("prod", fake.environment()))
        environ = make_environ(tmp_path / "home", VOKE_CONFIG=str(tmp_path / "voke.toml"), VOKE_ENV="prod")
        (tmp_path / "v").write_text(VALUE)
        add = ("secrets", "add", "auth0-management", "--from-file", str(tmp_path / "v"), "--yes", "--json")
        assert voke(*add, environ=environ).json["result"]["version"] == 1
        again = voke(*add, environ=environ)
        assert again.exit_code == 0, again.stdout + again.stderr
        assert (again.json["result"]["version"], again.json["result"]["changed"]) == (1, False)
        forced = voke(*add, "--force", environ=environ)
        assert (forced.json["result"]["version"], forced.json["result"]["changed"]) == (2, True)
        (tmp_path / "v").write_text("another-value-7c8d9e")
        other = voke(*add, environ=environ)
        assert (other.json["result"]["version"], other.json["result"]["previous"]) == (3, 2)
        versions = voke("secrets", "versions", "auth0-management", "--json", environ=environ)
        assert [v["version"] for v in versions.json["result"]["versions"]] == [1, 2, 3]
        assert "Sup3r-s3cret-admin-value" not in again.stdout + again.stderr


def test_ctrl_c_among_the_writes_is_held_until_the_version_is_current(
    voke, make_environ, tmp_path, monkeypatch
):
    import os
    import signal

    from voketag_ops.adapters.local.secrets import LocalSecretStore

    real = LocalSecretStore.add_version

    def interrupted(self, name, payload):
        os.kill(os.getpid(), signal.SIGINT)  # after the secret was created, before its version
        return real(self, name, payload)

    monkeypatch.setattr(LocalSecretStore, "add_version", interrupted)
    environ = make_environ(tmp_path / "home")
    (tmp_path / "v").write_text(VALUE)
    done = voke(
        "secrets", "add", "maps-admin", "--from-file", str(tmp_path / "v"), "--yes", "--json", environ=environ
    )
    assert done.exit_code == 0, done.stdout + done.stderr  # not 130 with the secret half made
    assert done.json["result"]["version"] == 1 and "stored all the same" in done.json["result"]["warnings"][0]
    listed = voke("secrets", "list", "--json", environ=environ).json["result"]["secrets"]
    assert [(s["name"], s["current_version"]) for s in listed] == [("maps-admin", 1)]
    (event,) = voke("audit", "show", "--event-type", "secret.add", "--json", environ=environ).json["result"][
        "entries"
    ]
    assert event["result"] == "success"


def test_a_version_made_current_by_another_writer_meanwhile_is_not_overwritten(
    voke, make_environ, tmp_path, monkeypatch
):
    from voketag_ops.adapters.local.secrets import LocalSecretStore
    from voketag_ops.workflows.secrets import add_version

    environ = make_environ(tmp_path / "home")
    monkeypatch.setattr(sys, "stdin", io.StringIO("first-value-1a2b3c"))
    assert voke("secrets", "add", "maps-admin", "--yes", environ=environ).exit_code == 0
    real = LocalSecretStore.add_version

    def raced(self, name, payload):
        monkeypatch.setattr(LocalSecretStore, "add_version", real)
        mine = real(self, name, payload)  # version 2
        add_version(self, name, b"other-writer-value")  # another `secrets add` makes version 3 current
        return mine

    monkeypatch.setattr(LocalSecretStore, "add_version", raced)
    (tmp_path / "v").write_text("losing-value-4d5e6f")
    lost = voke("secrets", "add", "maps-admin", "--from-file", str(tmp_path / "v"), "--yes", "--json",
                environ=environ)  # fmt: skip
    assert lost.exit_code == 5, lost.stdout + lost.stderr
    assert "version 2 was disabled, not made current" in lost.json["error"]["message"]
    meta = LocalSecretStore(tmp_path / "home").get("maps-admin")
    assert meta.aliases == {"current": 3, "previous": 1}
    assert {v.version: v.state for v in meta.versions} == {1: "enabled", 2: "disabled", 3: "enabled"}


def test_two_adds_of_one_value_at_once_make_it_current_once_and_both_succeed(tmp_path, monkeypatch):
    # Found by review: both could exit 5 with both new versions disabled, `current` still the old
    # value: each one's add moved the etag the other's compare-and-swap had read.
    import threading

    from voketag_ops.workflows.secrets import add_version

    home = tmp_path / "home"
    add_version(LocalSecretStore(home), "maps-admin", b"old-value-1a2b3c")
    real, both_added = LocalSecretStore.add_version, threading.Barrier(2, timeout=60)

    def add_then_wait(self, name, payload):
        mine = real(self, name, payload)
        both_added.wait()  # neither makes its version current before the other has added its own
        return mine

    monkeypatch.setattr(LocalSecretStore, "add_version", add_then_wait)
    reports: list = []
    errors: list = []

    def add() -> None:
        try:
            reports.append(add_version(LocalSecretStore(home), "maps-admin", b"new-value-4d5e6f"))
        except Exception as exc:  # (asserted below)
            errors.append(exc)

    threads = [threading.Thread(target=add) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors, errors  # exit 0 both
    meta = LocalSecretStore(home).get("maps-admin")
    won = meta.aliases["current"]
    assert won in (2, 3) and meta.aliases["previous"] == 1
    assert sorted((r["version"], r["changed"]) for r in reports) == [(won, False), (won, True)]
    assert {v.version: v.state for v in meta.versions} == {1: "enabled", won: "enabled", 5 - won: "disabled"}
    assert LocalSecretStore(home).access("maps-admin", "current") == b"new-value-4d5e6f"


def test_an_etag_moved_without_moving_current_is_read_again_not_a_loss(tmp_path, monkeypatch):
    # Another writer's add, not yet current, moved the etag this add's compare-and-swap read:
    # it was exit 5 (and the other writer's swap, meeting this one's disabled version, too).
    from voketag_ops.workflows.secrets import add_version

    home = tmp_path / "home"
    add_version(LocalSecretStore(home), "maps-admin", b"old-value-1a2b3c")
    real = LocalSecretStore.update

    def another_add_first(self, name, **kwargs):
        monkeypatch.setattr(LocalSecretStore, "update", real)
        LocalSecretStore.add_version(self, name, b"other-writer-value")  # version 3, not current
        return real(self, name, **kwargs)

    monkeypatch.setattr(LocalSecretStore, "update", another_add_first)
    report = add_version(LocalSecretStore(home), "maps-admin", b"new-value-4d5e6f")
    assert (report["version"], report["changed"]) == (2, True)
    assert LocalSecretStore(home).get("maps-admin").aliases == {"current": 2, "previous": 1}


def test_a_current_naming_a_missing_version_is_refused_before_anything_is_added(voke, make_environ, tmp_path):
    # It was exit 4 after adding a version no alias named: an enabled orphan, one more each rerun.
    environ = make_environ(tmp_path / "home")
    (tmp_path / "v").write_text("first-value-1a2b3c")
    add = ("secrets", "add", "maps-admin", "--from-file", str(tmp_path / "v"), "--yes", "--json")
    assert voke(*add, environ=environ).exit_code == 0
    path = tmp_path / "home" / "secrets" / "maps-admin.json"
    doc = json.loads(path.read_text())
    doc["aliases"]["current"] = 9  # a hand edit
    path.write_text(json.dumps(doc))
    (tmp_path / "v").write_text("second-value-4d5e6f")
    for _rerun in range(2):
        refused = voke(*add, environ=environ)
        assert refused.exit_code == 5, refused.stdout + refused.stderr
        error = refused.json["error"]
        assert error["message"] == "secret maps-admin: current version 9 is MISSING"
        assert error["hint"].startswith("its value is gone: point `current`"), error
        assert [v.version for v in LocalSecretStore(tmp_path / "home").get("maps-admin").versions] == [1]


def _full_after(count: int, *, writing: str = ""):
    """files.write_all on a disk with COUNT bytes left for a file whose name holds WRITING:
    writes them, then ENOSPC (other files are written)."""
    real = files.write_all

    def write_all(fd: int, data: bytes) -> None:
        if writing not in os.path.basename(os.readlink(f"/proc/self/fd/{fd}")):
            return real(fd, data)
        os.write(fd, data[:count])
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    return write_all


def test_a_disk_full_while_the_key_is_written_leaves_no_key_and_the_next_add_works(
    voke, make_environ, tmp_path, monkeypatch
):
    # It used to leave secrets.key empty: every later secret command failed with "not a valid
    # key file" (exit 3), however much space was freed.
    home = tmp_path / "home"
    environ = make_environ(home)
    (tmp_path / "value").write_text("sendgrid-admin-value\n", encoding="utf-8")
    add = ("secrets", "add", "sendgrid_admin", "--from-file", str(tmp_path / "value"), "--yes")
    with monkeypatch.context() as full:
        full.setattr(files, "write_all", _full_after(10, writing=".secrets.key."))
        failed = voke(*add, environ=environ)
    assert failed.exit_code == 4 and "No space left on device" in failed.stderr
    assert not [p.name for p in home.iterdir() if "secrets.key" in p.name]  # nor its temp file
    assert voke(*add, environ=environ).exit_code == 0
    assert voke("secrets", "access", "sendgrid_admin", environ=environ).stdout == "sendgrid-admin-value"


def test_an_empty_key_file_left_by_an_older_voke_is_replaced(tmp_path):
    store = LocalSecretStore(tmp_path / "home")
    store.home.mkdir()
    store.key_file.touch(mode=0o600)
    store.create("misc-x")
    store.add_version("misc-x", b"value-1")
    assert len(store.key_file.read_bytes()) == 44  # a Fernet key
    assert LocalSecretStore(store.home).access("misc-x", "1") == b"value-1"
    assert sorted(p.name for p in store.home.iterdir()) == ["secrets", "secrets.key"]


def test_of_two_voke_creating_the_key_at_once_both_use_the_first_ones(tmp_path, monkeypatch):
    from cryptography.fernet import Fernet

    store, other = LocalSecretStore(tmp_path / "home"), Fernet.generate_key()
    store.home.mkdir()
    write_all = files.write_all

    def another_voke_first(fd: int, data: bytes) -> None:
        write_all(fd, data)
        store.key_file.write_bytes(other)  # another voke linked its key meanwhile
        store.key_file.chmod(0o600)

    monkeypatch.setattr(files, "write_all", another_voke_first)
    store.create("misc-x")
    store.add_version("misc-x", b"value-1")
    assert store.key_file.read_bytes() == other
    assert sorted(p.name for p in store.home.iterdir()) == ["secrets", "secrets.key"]


def test_a_secret_rewrite_the_disk_has_no_room_for_leaves_it_and_no_temporary_file(tmp_path, monkeypatch):
    # The secret's document is replaced whole through files.replace_json, as voke's other records
    # are: a full disk left an empty .NAME.json.tmp beside it.
    store = LocalSecretStore(tmp_path / "home")
    store.create("misc-x")
    store.add_version("misc-x", b"value-1")
    before = (store.dir / "misc-x.json").read_bytes()
    monkeypatch.setattr(files, "write_all", _full_after(0))
    with pytest.raises(OSError, match="No space left on device"):
        store.add_version("misc-x", b"value-2")
    assert (store.dir / "misc-x.json").read_bytes() == before
    assert sorted(p.name for p in store.dir.iterdir()) == [".misc-x.lock", "misc-x.json"]


def test_a_full_disk_is_exit_4_naming_the_file_that_did_not_fit(voke, make_environ, tmp_path, monkeypatch):
    # It said only "error: No space left on device", with no file to look at.
    home = tmp_path / "home"
    environ = make_environ(home)
    (tmp_path / "value").write_text("sendgrid-admin-value\n", encoding="utf-8")
    add = ("secrets", "add", "sendgrid_admin", "--from-file", str(tmp_path / "value"), "--yes")
    for writing, named in (
        (".secrets.key.", home / "secrets.key"),
        (".sendgrid_admin.json", home / "secrets" / "sendgrid_admin.json"),
    ):
        with monkeypatch.context() as full:
            full.setattr(files, "write_all", _full_after(0, writing=writing))
            failed = voke(*add, environ=environ)
        assert failed.exit_code == 4 and f"error: No space left on device: {named}\n" in failed.stderr


@pytest.mark.parametrize("refusal", [errno.EPERM, errno.EOPNOTSUPP, errno.ENOSYS], ids=errno.errorcode.get)
def test_a_file_system_without_hard_links_gets_the_key_created_in_place(
    voke, make_environ, tmp_path, monkeypatch, refusal
):
    # vfat, exFAT and some shared folders refuse link(): every secrets command failed, exit 3
    # "permission denied on .../.secrets.key.XXXX.tmp (... is yours: check its mode)".
    home = tmp_path / "home"
    environ = make_environ(home)
    (tmp_path / "value").write_text("sendgrid-admin-value\n", encoding="utf-8")
    add = ("secrets", "add", "sendgrid_admin", "--from-file", str(tmp_path / "value"), "--yes")

    def no_hard_links(src, dst, *args, **kwargs):
        raise OSError(refusal, os.strerror(refusal), src, None, dst)

    monkeypatch.setattr(os, "link", no_hard_links)
    real = files.write_all

    def full_for_the_key(fd: int, data: bytes) -> None:  # the temporary file fits, the key not
        if os.path.basename(os.readlink(f"/proc/self/fd/{fd}")) != "secrets.key":
            return real(fd, data)
        os.write(fd, data[:10])
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    with monkeypatch.context() as full:
        full.setattr(files, "write_all", full_for_the_key)
        failed = voke(*add, environ=environ)
    assert failed.exit_code == 4 and f"No space left on device: {home / 'secrets.key'}\n" in failed.stderr
    assert not [p.name for p in home.iterdir() if "secrets.key" in p.name]
    added = voke(*add, environ=environ)
    assert added.exit_code == 0, added.stderr
    assert (home / "secrets.key").stat().st_mode & 0o777 == 0o600
    assert sorted(p.name for p in home.iterdir() if "secrets.key" in p.name) == ["secrets.key"]
    assert voke("secrets", "access", "sendgrid_admin", environ=environ).stdout == "sendgrid-admin-value"


def test_a_refused_call_on_a_file_of_this_users_home_names_it_without_advice(
    voke, make_environ, tmp_path, monkeypatch
):
    # Every PermissionError was "another user's file": one on a temporary file already removed
    # said "(... is yours: check its mode)" of a file that no longer existed.
    home = tmp_path / "home"
    environ = make_environ(home)
    (tmp_path / "value").write_text("sendgrid-admin-value\n", encoding="utf-8")

    def refused(src, dst, *args, **kwargs):
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), src, None, dst)

    monkeypatch.setattr(os, "link", refused)
    failed = voke("secrets", "add", "sendgrid_admin", "--from-file", str(tmp_path / "value"), "--yes",
                  environ=environ)  # fmt: skip
    assert failed.exit_code == 3, failed.stderr
    (error,) = [line for line in failed.stderr.splitlines() if line.startswith("error:")]
    assert error.startswith("error: Permission denied: ") and error.endswith(f" -> {home / 'secrets.key'}")
    assert "check its mode" not in failed.stderr and "Traceback" not in failed.stderr
