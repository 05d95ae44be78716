"""`voke audit`: show with filters and pages, export (JSON, CSV), verify, checkpoint."""

from __future__ import annotations

import csv
import io
import json
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from voketag_ops.audit import AuditLog, record_event

T0 = datetime(2026, 5, 1, 2, 0, tzinfo=UTC)


@pytest.fixture
def home(tmp_path: Path) -> Path:
    home = tmp_path / "home"
    for i in range(12):
        record_event(
            home,
            event_type="rotate.db-password" if i % 3 else "dr.failover",
            env="local",
            target='=HYPERLINK("x")' if i == 4 else f"svc-{i % 2}",
            result="failure" if i == 5 else "success",
            duration_seconds=i * 0.5,
            details={"i": i},
            actor="sre",
            now=T0 + timedelta(hours=i),
        )
    return home


def test_show_filters_and_pages(voke, home: Path) -> None:
    page = voke("audit", "show", "--json").json["result"]
    assert page["total"] == 12 and len(page["entries"]) == 12 and page["skipped_lines"] == []
    rotate = voke("audit", "show", "--event-type", "rotate.*", "--limit", "3", "--offset", "2", "--json")
    result = rotate.json["result"]
    assert result["total"] == 8 and [e["seq"] for e in result["entries"]] == [4, 5, 7]
    window = voke(
        "audit", "show", "--since", "2026-05-01T05:00", "--until", "2026-05-01T08:00Z", "--json"
    ).json["result"]
    assert [e["seq"] for e in window["entries"]] == [3, 4, 5]
    failed = voke("audit", "show", "--result", "failure", "--target", "svc-*", "--json").json["result"]
    assert [e["seq"] for e in failed["entries"]] == [5]
    for written in (
        "rejected",
        "duplicate",
        "rolled_back",
        "unchanged",
        "failed",
        "aborted",
    ):  # results voke writes
        assert voke("audit", "show", "--result", written, "--json").exit_code == 0, written
    newest = voke("audit", "show", "--newest-first", "-n", "2", "--json").json["result"]
    assert [e["seq"] for e in newest["entries"]] == [11, 10]
    human = voke("audit", "show", "--limit", "2")
    assert human.exit_code == 0 and "rotate.db-password" in human.stdout and "1-2 of 12" in human.stdout


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["--since", "yesterday"], "--since"),
        # both forms named, not ages alone (as the duration options' "not a duration" did)
        (["--since", "bogus"], "--since: 'bogus' is neither ISO 8601 (2026-05-01T02:00Z) nor an age (24h"),
        (["--until", "5 days ago"], "--until: '5 days ago' is neither ISO 8601"),
        (["--result", "maybe"], "--result must be one of"),
        # a drill journal's statuses no audit event carries (a completed drill's event is `success`)
        (["--result", "completed"], "--result must be one of"),
        (["--result", "running"], "--result must be one of"),
        (["--limit", "0"], "--limit"),
        (["--since", "1000000d"], "longer than 3650 days"),
        (["--until", "99999999999d"], "longer than 3650 days"),
        (["--since", ""], "--since: empty; give ISO 8601"),  # was every entry, silently
        (["--until", " "], "--until: empty"),
        (["--since", "1h30"], "--since: '1h30': each part of a duration needs its unit (e.g. 1h30m)"),
        (["--since", "-"], "--since: empty duration (use e.g. 90s"),
        # A bare number: the year or seconds? (2026 was read as 2026 seconds ago.)
        (["--since", "2026"], "--since: '2026': a date (2026-01-01) or an age with its unit (2026s)"),
        (["--until", "-90"], "--until: '-90': a date (2026-01-01) or an age with its unit (-90s)"),
        (["--since", "1.5"], "an age with its unit (1.5s)"),
    ],
)
def test_show_bad_flags_are_usage_errors(voke, home: Path, args: list[str], fragment: str) -> None:
    result = voke("audit", "show", *args)
    assert result.exit_code == 2 and fragment in result.stderr and "Traceback" not in result.stderr


@pytest.mark.parametrize(
    ("text", "when"),
    [  # the forms every other time option takes: `dr restore --to -15m`, `--max-lag 90`, ...
        ("-15m", T0 - timedelta(minutes=15)),
        ("15m", T0 - timedelta(minutes=15)),
        ("1h30m", T0 - timedelta(minutes=90)),
        ("7D", T0 - timedelta(days=7)),
        ("1.5h", T0 - timedelta(minutes=90)),
        ("2026-05-01T01:00z", T0 - timedelta(hours=1)),
        ("2026-05-01T01:00", T0 - timedelta(hours=1)),  # zoneless: UTC
        ("20260501", datetime(2026, 5, 1, tzinfo=UTC)),  # a date, not 234 days
    ],
)
def test_since_and_until_take_the_forms_of_every_time_option(text: str, when: datetime) -> None:
    from voketag_ops.workflows.audit import parse_when

    assert parse_when(text, "--since", now=T0) == when


def test_a_relative_since_filters_against_now(voke, tmp_path: Path) -> None:
    home = tmp_path / "home"
    now = datetime.now(UTC)
    for hours in (3, 1):
        record_event(
            home,
            event_type="dr.backup",
            env="local",
            target="t",
            result="success",
            now=now - timedelta(hours=hours),
        )
    for since in ("-2h", "1h30m", "-90m"):
        shown = voke("audit", "show", "--since", since, "--json")
        assert shown.exit_code == 0 and shown.json["result"]["total"] == 1, (since, shown.stderr)


def test_export_json_and_csv(voke, home: Path, tmp_path: Path) -> None:
    data = json.loads(voke("audit", "export", "--format", "json").stdout)
    assert len(data) == 12 and data[0]["seq"] == 0 and "hash" in data[0]
    text = voke("audit", "export", "--format", "csv", "--event-type", "rotate.*").stdout
    rows = list(csv.DictReader(io.StringIO(text)))
    assert len(rows) == 8
    assert next(r for r in rows if r["seq"] == "4")["target"] == '\'=HYPERLINK("x")'
    out = tmp_path / "audit.csv"
    result = voke("audit", "export", "--format", "csv", "--output", str(out), "--json")
    assert result.exit_code == 0 and result.json["result"]["path"] == str(out)
    assert out.read_text().startswith("seq,timestamp,event_type")
    enveloped = voke("audit", "export", "--json").json["result"]
    assert len(enveloped["data"]) == 12
    assert voke("audit", "export", "--format", "xml").exit_code == 2


def test_export_names_the_lines_it_could_not_read(voke, home: Path, tmp_path: Path) -> None:
    log = AuditLog(home)
    lines = log.path.read_bytes().splitlines(keepends=True)
    lines[5] = b'{"broken\n'
    log.path.write_bytes(b"".join(lines))
    warning = "warning: skipped unreadable line(s): [6] (see `voke audit verify`)\n"
    plain = voke("audit", "export")
    assert plain.exit_code == 0 and len(json.loads(plain.stdout)) == 11 and plain.stderr == warning
    enveloped = voke("audit", "export", "--format", "csv", "--json")
    assert enveloped.json["result"]["skipped_lines"] == [6] and enveloped.stderr == warning
    written = voke("audit", "export", "--output", str(tmp_path / "audit.json"))
    assert written.exit_code == 0 and written.stderr == warning
    assert voke("audit", "export", "--event-type", "nothing", "--json").json["result"]["skipped_lines"] == [6]


def test_export_of_a_log_that_cannot_be_read_writes_nothing(voke, tmp_path: Path) -> None:
    (tmp_path / "home" / "audit" / "audit.jsonl").mkdir(parents=True)  # where the log should be
    for fmt in ("json", "csv"):
        failed = voke("audit", "export", "--format", fmt)
        assert failed.exit_code == 4 and failed.stdout == "", failed.stdout


def test_verify_ok_then_names_the_tampered_entry(voke, home: Path) -> None:
    ok = voke("audit", "verify", "--json")
    assert ok.exit_code == 0 and ok.json["result"]["entries"] == 12
    log = AuditLog(home)
    lines = log.path.read_bytes().splitlines(keepends=True)
    lines[7] = lines[7].replace(b'"result":"success"', b'"result":"failure"')
    log.path.write_bytes(b"".join(lines))
    bad = voke("audit", "verify", "--json")
    assert bad.exit_code == 1
    assert bad.json["result"]["first_bad_entry"] == 7 and bad.json["result"]["problem"] == "edited"
    assert "entry 7 was edited" in bad.json["error"]["message"]
    human = voke("audit", "verify")
    assert human.exit_code == 1 and "first bad entry 7" in human.stdout


def test_verify_names_a_line_stored_otherwise_than_voke_writes_it(voke, home: Path) -> None:
    assert voke("audit", "checkpoint", "--yes").exit_code == 0
    log = AuditLog(home)
    original = log.path.read_bytes()
    lines = original.splitlines(keepends=True)
    lines[6] = lines[6].replace(b'","', b'", "', 1)  # the same entry, inside the checkpointed range
    log.path.write_bytes(b"".join(lines))
    spaced = voke("audit", "verify", "--json").json["result"]
    assert (spaced["problem"], spaced["first_bad_entry"], spaced["line"]) == ("edited", 6, 7), spaced
    # With the checkpoints lost, only the chain of hashes: a key given twice, grep and a JSON
    # reader seeing different results, is caught too, and `audit show` does not pick one.
    log.checkpoints_path.unlink()
    lines = original.splitlines(keepends=True)
    lines[6] = b'{"result":"failure",' + lines[6][1:]
    log.path.write_bytes(b"".join(lines))
    bad = voke("audit", "verify", "--json")
    assert bad.exit_code == 1, bad.stdout
    result = bad.json["result"]
    assert (result["problem"], result["first_bad_entry"], result["line"]) == ("edited", 6, 7)
    assert 'line 7: not stored as voke writes it (key "result" appears twice)' in result["message"]
    shown = voke("audit", "show", "--json").json["result"]
    assert shown["skipped_lines"] == [7] and 6 not in [e["seq"] for e in shown["entries"]]


def test_checkpoint_dry_run_plans_the_repair_of_a_torn_last_line(voke, home: Path) -> None:
    log = AuditLog(home)
    whole = log.path.read_bytes()
    for cut, step in (
        (30, f"to {log.torn_dir} and record an audit.torn_write entry"),  # `head -c -30`: moved aside
        (1, "add the newline the last entry lost"),  # only the newline lost: kept
    ):
        log.path.write_bytes(whole[:-cut])
        listing = sorted(log.dir.rglob("*"))
        plan = voke("audit", "checkpoint", "--dry-run", "--json")
        assert plan.exit_code == 0, plan.stdout
        planned = plan.json["result"]
        assert step in planned["plan"][0] and planned["plan"][1].startswith(
            f"checkpoint the log at {planned['entries']}"
        )
        assert planned["torn_last_line"] == {
            "bytes": len(whole.splitlines()[-1]) + 1 - cut,
            "whole_entry": cut == 1,
        }
        assert step in voke("audit", "checkpoint", "--dry-run").stdout
        assert (
            log.path.read_bytes() == whole[:-cut] and sorted(log.dir.rglob("*")) == listing
        )  # nothing changed
        done = voke("audit", "checkpoint", "--yes", "--json")
        assert done.exit_code == 0 and done.json["result"]["checkpoint"]["size"] == planned["entries"]
        assert voke("audit", "verify").exit_code == 0
        log.checkpoints_path.unlink()
        whole = log.path.read_bytes()
    assert [e.event_type for e in log.entries()].count("audit.torn_write") == 1


def test_checkpoint_then_truncation_is_caught(voke, home: Path) -> None:
    # HOME has no local environment: the checkpoint is written, its anchor queued, and no
    # environment is started for it.
    plan = voke("audit", "checkpoint", "--dry-run", "--json")
    assert plan.exit_code == 0, plan.stdout
    assert plan.json["result"]["plan"][0] == "checkpoint the log at 12 entries (12 since the last checkpoint)"
    assert plan.json["result"]["entries"] == 12  # a count, not the log itself
    assert (
        not AuditLog(home).checkpoints_path.exists()
        and len(AuditLog(home).path.read_bytes().splitlines()) == 12
    )
    result = voke("audit", "checkpoint", "--yes", "--json")
    assert result.exit_code == 0 and result.json["result"]["checkpoint"]["size"] == 12
    assert result.json["result"]["anchoring_queued"] is True
    event = list(AuditLog(home).entries())[-1]  # the checkpoint is audited; the next one covers it
    assert event.event_type == "audit.checkpoint" and event.details["checkpoint"]["size"] == 12
    for _ in range(2):  # a cron job with nothing new: the checkpoint is kept, nothing recorded
        again = voke("audit", "checkpoint", "--yes", "--json")
        assert again.exit_code == 0 and again.json["result"]["checkpoint"]["size"] == 12
    assert len(list(AuditLog(home).entries())) == 13 and len(AuditLog(home).checkpoints()) == 1
    kept = voke("audit", "checkpoint", "--dry-run", "--json").json["result"]["plan"][0]
    assert kept == "no new entries since the checkpoint at 12: keep it"
    assert "anchoring queued until the chain is reachable" in result.json["result"]["message"]
    assert not (home / "state.json").exists()
    unchecked = voke("audit", "verify")
    assert unchecked.exit_code == 0 and "anchors not checked: the chain is in PostgreSQL" in unchecked.stdout
    log = AuditLog(home)
    lines = log.path.read_bytes().splitlines(keepends=True)
    log.path.write_bytes(b"".join(lines[:10]))  # (of 13)
    bad = voke("audit", "verify", "--json")
    assert bad.exit_code == 1 and bad.json["result"]["problem"] == "truncated"
    assert bad.json["result"]["first_bad_entry"] == 10


def test_a_damaged_line_stops_a_checkpoint_with_exit_5(voke, home: Path) -> None:
    assert voke("audit", "checkpoint", "--yes").exit_code == 0
    log = AuditLog(home)
    record_event(home, event_type="dr.check", env="local", target="x", result="success", now=T0)
    lines = log.path.read_bytes().splitlines(keepends=True)
    log.path.write_bytes(b"".join([*lines[:-2], b'{"broken\n', lines[-1]]))  # after the checkpoint
    planned = voke("audit", "checkpoint", "--dry-run", "--json")  # the plan refuses as the run does
    damaged = voke("audit", "checkpoint", "--yes", "--json")
    for refused in (planned, damaged):
        assert refused.exit_code == 5, refused.stdout
        assert (
            f"cannot checkpoint the audit log: {log.path}:{len(lines) - 1}: not JSON"
            in (refused.json["error"]["message"])
        )
        assert "voke audit verify" in refused.json["error"]["hint"]
    with log.checkpoints_path.open("ab") as fh:
        fh.write(b"junk\n")
    for args in (["--dry-run"], ["--yes"]):
        refused = voke("audit", "checkpoint", *args, "--json")
        assert (
            refused.exit_code == 5 and "checkpoints.jsonl:2:1: not JSON" in refused.json["error"]["message"]
        )


def test_a_log_cut_below_its_last_checkpoint_is_refused_a_checkpoint_with_exit_5(voke, home: Path) -> None:
    assert voke("audit", "checkpoint", "--yes").exit_code == 0  # covers the 12 entries
    log = AuditLog(home)
    log.path.write_bytes(b"".join(log.path.read_bytes().splitlines(keepends=True)[:9]))
    checkpoints = log.checkpoints_path.read_bytes()
    planned = voke("audit", "checkpoint", "--dry-run", "--json")  # the plan refuses as the run does
    assert len(list(log.entries())) == 9  # the dry run wrote nothing
    refused = voke("audit", "checkpoint", "--yes", "--json")
    for answer in (planned, refused):
        assert answer.exit_code == 5, answer.stdout
        assert (
            "the log has 9 entries, the last checkpoint covers 12: entries from 9 on were cut off"
            in answer.json["error"]["message"]
        )
        assert "voke audit verify" in answer.json["error"]["hint"]
    assert log.checkpoints_path.read_bytes() == checkpoints  # no checkpoint contradicting the last
    event = list(log.entries())[-1]  # refused, on record as every refusal (appends go on, linked)
    assert (event.event_type, event.result) == ("audit.checkpoint", "failure")
    for _ in range(5):  # appended past where the checkpoint says its entries end: still no checkpoint
        record_event(home, event_type="dr.check", env="local", target="x", result="success", now=T0)
    again = voke("audit", "checkpoint", "--yes", "--json")
    assert (
        again.exit_code == 5
        and "the log has 15 entries, the last checkpoint covers 12: entry 11 is not"
        in (again.json["error"]["message"])
    )
    assert log.checkpoints_path.read_bytes() == checkpoints
    assert voke("audit", "verify").exit_code == 1


def test_a_checkpoint_the_disk_has_no_room_for_is_exit_4_naming_its_file(
    voke, home: Path, monkeypatch
) -> None:
    # A bare "No space left on device", naming no file.
    import errno
    import os

    from voketag_ops import files

    assert voke("audit", "checkpoint", "--yes").exit_code == 0
    record_event(home, event_type="dr.check", env="local", target="x", result="success", now=T0)
    path = AuditLog(home).checkpoints_path
    before, listing = path.read_bytes(), sorted(os.listdir(path.parent))

    def full(fd: int, data: bytes) -> None:
        os.write(fd, data[:10])
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(files, "write_all", full)
    refused = voke("audit", "checkpoint", "--yes", "--json")
    assert refused.exit_code == 4, refused.stdout
    assert refused.json["error"]["message"] == f"No space left on device: {path}"
    assert path.read_bytes() == before and sorted(os.listdir(path.parent)) == listing  # nothing left behind
    monkeypatch.undo()
    assert voke("audit", "verify").exit_code == 0


@pytest.mark.parametrize(
    ("old", "new"),
    [
        (b',"stack":[', b',"_":['),
        (b'"size":12,', b'"size":Infinity,'),
        (b'"offset":', b'"offset":1e400,"_":'),
    ],
)
def test_a_damaged_checkpoint_line_fails_verify_and_stops_a_checkpoint(
    voke, home: Path, old: bytes, new: bytes
) -> None:
    assert voke("audit", "checkpoint", "--yes").exit_code == 0
    path = AuditLog(home).checkpoints_path
    assert old in path.read_bytes()
    path.write_bytes(path.read_bytes().replace(old, new))
    verify = voke("audit", "verify", "--json")
    assert verify.exit_code == 1 and verify.json["result"]["problem"] == "corrupt_line"
    assert f"{path}:1: " in verify.json["result"]["message"]
    for args in (["--dry-run"], ["--yes"]):
        refused = voke("audit", "checkpoint", *args, "--json")
        assert refused.exit_code == 5 and f"{path}:1: " in refused.json["error"]["message"], refused.stdout


def test_an_entry_whose_time_cannot_be_read_is_skipped_by_time_filters(voke, home: Path) -> None:
    log = AuditLog(home)
    lines = log.path.read_bytes().splitlines(keepends=True)
    lines[5] = lines[5].replace(b'"timestamp":"2026-05-01T07:00:00', b'"timestamp":"not a time')
    assert b"not a time" in lines[5]
    log.path.write_bytes(b"".join(lines))
    shown = voke("audit", "show", "--since", "2026-05-01T05:00Z", "--json")
    assert shown.exit_code == 0 and shown.json["result"]["skipped_lines"] == [6]
    assert voke("audit", "export", "--until", "2026-05-01T09:00Z").exit_code == 0
    assert voke("audit", "verify").exit_code == 1


def test_an_env_given_lists_only_its_events_and_none_given_lists_all(
    voke, make_environ, home: Path, tmp_path: Path
) -> None:
    """One log holds every environment's events: --env NAME (or VOKE_ENV) lists NAME's, an
    event that names no environment being the local one's; without it, local is only the
    default, and every event is listed. Verify covers the whole chain either way."""
    for i, env in enumerate(("prod", "", "prod")):
        record_event(
            home,
            event_type="rotation.start",
            env=env,
            target="jwt",
            result="started",
            duration_seconds=None,
            details={},
            actor="sre",
            now=T0 + timedelta(days=1, hours=i),
        )
    (tmp_path / "voke.toml").write_text('[environments.prod]\nkind = "gcp"\nproject = "p"\ninstance = "db"\n')

    def seqs(*args: str, **environ: str) -> list[int]:
        shown = voke(*args, "--json", environ=make_environ(home, **environ))
        assert shown.exit_code == 0, shown.stdout + shown.stderr
        return [e["seq"] for e in shown.json["result"]["entries"]]

    assert seqs("audit", "show", "-n", "100") == list(range(15))
    assert seqs("--env", "prod", "audit", "show") == [12, 14]
    assert seqs("audit", "show", "--env", "prod", "-e", "rotation.*") == [12, 14]
    assert seqs("audit", "show", VOKE_ENV="prod") == [12, 14]
    assert seqs("audit", "show", "--env", "local", "-n", "100") == [*range(12), 13]
    shown = voke("audit", "show", "--env", "prod", environ=make_environ(home)).stdout
    assert "1-2 of 2 matching in env prod" in shown
    exported = voke("audit", "export", "--env", "prod", environ=make_environ(home))
    assert [e["seq"] for e in json.loads(exported.stdout)] == [12, 14]
    everything = json.loads(voke("audit", "export", environ=make_environ(home)).stdout)
    assert len(everything) == 15
    verified = voke("audit", "verify", "--env", "prod", "--json", environ=make_environ(home))
    assert verified.exit_code == 0 and verified.json["result"]["entries"] == 15


def test_env_down_without_an_environment_is_audited_and_starts_nothing(voke, home: Path) -> None:
    assert voke("env", "down").exit_code == 0
    assert not (home / "state.json").exists()
    events = voke("audit", "show", "--event-type", "env.down", "--json").json["result"]["entries"]
    assert [e["result"] for e in events] == ["success"]
    assert voke("audit", "verify").exit_code == 0


@pytest.fixture
def new_database_name(local_env) -> Iterator[str]:
    """A database name nobody created yet (dropped after the test if voke created it)."""
    name = f"t_{uuid.uuid4().hex[:12]}"
    yield name
    with local_env.primary().connect() as conn:
        conn.execute(f'drop database if exists "{name}" with (force)')


@pytest.mark.pg
def test_checkpoint_is_anchored_in_the_default_store(voke, platform_environ, new_database_name) -> None:
    # The chain's database is created on first use, by the audit log too.
    environ = dict(platform_environ, VOKE_CHAIN__DATABASE=new_database_name)
    result = voke("audit", "checkpoint", "--json", environ=environ)
    assert result.exit_code == 0 and result.json["result"]["anchoring_queued"] is False
    size = result.json["result"]["checkpoint"]["size"]
    anchors = voke("chain", "anchors", "--json", environ=environ).json["result"]["anchors"]
    assert f"audit@{size}" in [a["label"] for a in anchors]
    verify = voke("audit", "verify", "--json", environ=environ)
    assert verify.exit_code == 0
    verified = verify.json["result"]
    assert verified["anchors_checked"] >= 1 and verified["anchors_unchecked"] is None
    assert verified["checkpoints_without_anchor"] == 0


def test_empty_log(voke) -> None:
    assert voke("audit", "show", "--json").json["result"]["total"] == 0
    assert voke("audit", "verify").exit_code == 0
    assert voke("audit", "checkpoint", "--json").json["result"]["checkpoint"] is None


def test_show_escapes_what_a_terminal_would_obey_in_a_file_name_or_an_actor(voke, tmp_path: Path) -> None:
    # A factory's uploaded file name or a CI job's VOKE_ACTOR must not drive the on-call's terminal.
    home = tmp_path / "home"
    record_event(
        home,
        event_type="ingest.load",
        env="local",
        target="esc\x1b[31mRED[bold].csv",
        result="success",
        duration_seconds=0.1,
        details={},
        actor="ci\x1b]0;pwned\x07X\nY",
        now=T0,
    )
    out = voke("audit", "show").stdout
    assert "\x1b" not in out and "\x07" not in out, out
    assert "esc\\x1b[31mRED[bold].csv" in out and "ci\\x1b]0;pwned\\x07X\\nY" in out
