"""`voke ingest` end to end: exit codes, the JSON envelope, stderr, and every bad input
leaving the database unchanged."""

from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from typing import Any

import psycopg
import pytest

pytestmark = pytest.mark.pg

HEADER = "tag_id,sku,product_name,factory_id,manufactured_at\n"
GOOD = "T1,S1,Shoe,F1,2024-01-01T00:00:00Z\n"


@pytest.fixture
def db(local_env: Any, pg_database: str) -> str:
    return local_env.primary().conninfo(pg_database)


def tables(db: str) -> tuple[int, int]:
    with psycopg.connect(db) as conn:
        if conn.execute("select to_regclass('ingest.batches')").fetchone()[0] is None:
            return 0, 0
        return (
            conn.execute("select count(*) from ingest.batches").fetchone()[0],
            conn.execute("select count(*) from ingest.tags").fetchone()[0],
        )


# (id, file content, expected code, line, column); each is its own test.
BAD_INPUTS = [
    ("missing-header-column", b"tag_id,sku,product_name,manufactured_at\nT1,S1,Shoe,2024-01-01T00:00:00Z\n", "missing_column", 1, None),
    ("duplicated-header-column", b"tag_id,sku,sku,product_name,factory_id,manufactured_at\nT1,S1,S1,Shoe,F1,2024-01-01T00:00:00Z\n", "duplicate_column", 1, 12),
    ("wrong-field-count", (HEADER + "T1,S1,Shoe,F1\n").encode(), "field_count", 2, 14),
    ("unterminated-quote", (HEADER + 'T1,S1,"Shoe,F1,2024-01-01T00:00:00Z\n').encode(), "unterminated_quote", 2, 7),
    ("invalid-utf8", HEADER.encode() + b"T1,S1,Sh\xe9,F1,2024-01-01T00:00:00Z\n", "invalid_utf8", 2, 9),
    ("nul-byte", HEADER.encode() + b"T1,S1,Sh\x00e,F1,2024-01-01T00:00:00Z\n", "nul_byte", 2, 9),
    ("empty-file", b"", "empty_file", 1, None),
    ("only-blank-lines", b"\n\n\n", "missing_column", 1, None),
    ("blank-line-between-rows", (HEADER + GOOD + "\n" + "T2,S1,Shoe,F1,2024-01-01T00:00:00Z\n").encode(), "field_count", 3, 1),
    ("header-only", HEADER.encode(), "no_rows", 2, None),
    ("duplicate-tag-id", (HEADER + GOOD + GOOD).encode(), "duplicate_tag_id", 3, 1),
    ("sku-collision", (HEADER + GOOD + "T2,S1,Boot,F1,2024-01-01T00:00:00Z\n").encode(), "sku_collision", 3, 7),
    ("bad-timestamp", (HEADER + "T1,S1,Shoe,F1,01/02/2024\n").encode(), "bad_timestamp", 2, 15),
    ("future-timestamp", (HEADER + "T1,S1,Shoe,F1,2999-01-01T00:00:00Z\n").encode(), "future_timestamp", 2, 15),
    ("over-long-field", (HEADER + "T1,S1," + "x" * 201 + ",F1,2024-01-01T00:00:00Z\n").encode(), "too_long", 2, 7),
    ("empty-required-field", (HEADER + "T1,,Shoe,F1,2024-01-01T00:00:00Z\n").encode(), "empty_field", 2, 4),
    ("truncated-file", (HEADER + GOOD + "T2,S1,Sh").encode(), "truncated", 3, 9),
]  # fmt: skip


@pytest.mark.parametrize(
    ("content", "code", "line", "column"), [c[1:] for c in BAD_INPUTS], ids=[c[0] for c in BAD_INPUTS]
)
def test_bad_input_is_rejected_with_line_and_column_and_nothing_is_written(
    voke, db, tmp_path, content, code, line, column
):
    path = tmp_path / "batch.csv"
    path.write_bytes(content)
    before = tables(db)
    result = voke("ingest", "load", str(path), "--db", db, "--json")
    assert result.exit_code == 1, result.stderr
    doc = result.json
    assert doc["ok"] is False and doc["error"]["exit_code"] == 1
    report = doc["result"]
    assert report["status"] == "rejected" and report["batch_id"] is None and report["rows_loaded"] == 0
    first = report["errors"][0]
    assert (first["code"], first["line"], first["column"]) == (code, line, column)
    assert set(first) == {"line", "column", "code", "message"}
    assert report["error_count"] >= 1
    assert "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1  # one summary line off a terminal
    at = f"line {line}" + (f", column {column}" if column is not None else "") + ": "
    assert f"(first: {at}" in result.stderr  # a cron job keeping only stderr keeps the column
    assert tables(db) == before


def test_file_over_the_size_limit(voke, db, tmp_path, make_environ):
    path = tmp_path / "batch.csv"
    path.write_text(HEADER + GOOD)
    env = make_environ(tmp_path / "home", VOKE_INGEST__MAX_FILE_BYTES="20")
    result = voke("ingest", "load", str(path), "--db", db, "--json", environ=env)
    assert result.exit_code == 1
    assert result.json["result"]["errors"][0]["code"] == "file_too_large"
    assert result.json["result"]["file_sha256"] is None  # not read: unknown, as everywhere (was "")
    assert "Traceback" not in result.stderr
    assert tables(db) == (0, 0)


@pytest.mark.parametrize("width", [120, 100, 80, 60, 40])
def test_the_load_progress_bar_fits_the_terminal(width):
    """On an 80-column terminal the bar of a 30 MB file wrapped, `MB` alone on the next line.
    It fits down to 40 columns, dropping rows/s, then bytes, then rows as the terminal narrows."""
    from rich.console import Console

    from voketag_ops.cli.ingest_cmd import _load_progress

    console = Console(width=width, record=True, file=io.StringIO(), force_terminal=True)
    bar = _load_progress(console)
    task = bar.add_task("hashing", total=99_200_000, rows=0, rate="")  # widest values it shows
    bar.update(task, completed=35_000_000, description="committing", rows=9_999_999, rate="9,999,999/s")
    console.print(bar.get_renderable())
    [line] = console.export_text().splitlines()
    assert len(line) <= width
    assert line.startswith("committing ━") and "35%" in line
    if width >= 80:  # everything
        assert all(p in line for p in ("35.0/99.2 MB", "9,999,999 rows", "9,999,999/s", "-:--:--"))
    elif width >= 60:
        assert "9,999,999 rows" in line and "-:--:--" in line


def test_human_output_lists_the_problems(voke, db, tmp_path):
    path = tmp_path / "batch.csv"
    path.write_text(HEADER + "T1,S1,Shoe,F1,never\nT 2,S1,Shoe,F1,2024-01-01T00:00:00Z\n")
    result = voke("ingest", "load", str(path), "--db", db)
    assert result.exit_code == 1
    assert "line 2, column 15: bad_timestamp" in result.stdout
    assert "line 3, column 1: bad_tag_id" in result.stdout


def test_max_errors_caps_the_list_but_counts_everything(voke, db, tmp_path):
    path = tmp_path / "batch.csv"
    path.write_text(HEADER + "".join(f"T{i},S1,Shoe,F1,never\n" for i in range(7)))
    report = voke("ingest", "load", str(path), "--db", db, "--json", "--max-errors", "2").json["result"]
    assert len(report["errors"]) == 2 and report["error_count"] == 7 and report["rows_rejected"] == 7


def test_load_batches_proof_and_chain_verify(voke, db, tmp_path, platform_environ, pg_database):
    path = tmp_path / "batch.csv"
    assert (
        voke("ingest", "sample", "--rows", "1500", "--out", str(path), "--seed", "4", "--json").exit_code == 0
    )
    # The chain lives in the local environment's database: here the shared one, beside the batches.
    chain = dict(platform_environ, VOKE_CHAIN__DATABASE=pg_database)
    result = voke("ingest", "load", str(path), "--db", db, "--json", environ=chain)
    assert result.exit_code == 0, result.stdout + result.stderr
    report = result.json["result"]
    assert report["status"] == "loaded" and report["rows_loaded"] == 1500 and report["error_count"] == 0
    assert report["anchor"] == "pending" and report["anchor_id"] == report["merkle_root"]
    again = voke("ingest", "load", str(path), "--db", db, "--dry-run", "--json", environ=chain).json["result"]
    assert again["status"] == "duplicate" and (again["anchor"], again["anchor_id"]) == (
        "pending",
        report["anchor_id"],
    )  # looked up in the chain, not requested (it was "none")
    assert {
        "batch_id",
        "status",
        "rows_total",
        "rows_loaded",
        "rows_rejected",
        "merkle_root",
        "anchor",
        "errors",
    } <= set(report)
    assert len(result.stderr.strip().splitlines()) == 1 and "loaded" in result.stderr

    again = voke("ingest", "load", str(path), "--db", db, "--json")
    assert again.exit_code == 0 and again.json["result"]["status"] == "duplicate"
    assert again.json["result"]["batch_id"] == report["batch_id"]

    listed = voke("ingest", "batches", "--db", db, "--json", environ=chain).json["result"]["batches"]
    assert [b["batch_id"] for b in listed] == [report["batch_id"]]
    assert listed[0]["merkle_root"] == report["merkle_root"] and listed[0]["anchor"] == "pending"

    tag = path.read_text().splitlines()[1200].split(",")[0]
    proof = voke("ingest", "proof", tag, "--db", db, "--json")
    assert proof.exit_code == 0
    doc = proof.json["result"]
    assert (
        doc["valid"] and doc["intact"] and doc["root"] == report["merkle_root"] and doc["leaf_index"] == 1199
    )
    proof_file = tmp_path / "proof.json"
    proof_file.write_text(proof.stdout)
    verified = voke("chain", "verify", str(proof_file), "--leaf", doc["leaf"], "--json")
    assert verified.exit_code == 0, verified.stdout
    tampered = voke("chain", "verify", str(proof_file), "--leaf", doc["leaf"] + "x", "--json")
    assert tampered.exit_code == 1
    assert voke("chain", "verify", str(proof_file)).exit_code == 0  # the document's own leaf
    edited = json.loads(proof.stdout)
    edited["result"]["leaf"] = doc["leaf"].replace("\t", "\tX", 1)  # another row, same proof
    proof_file.write_text(json.dumps(edited))
    forged = voke("chain", "verify", str(proof_file), "--json")
    assert forged.exit_code == 1 and "does not hash to the document's leaf_hash" in forged.stdout

    missing = voke("ingest", "proof", "NOPE", "--db", db, "--json")
    assert missing.exit_code == 1 and missing.json["result"]["found"] is False


def test_audit_log_records_the_load(voke, db, tmp_path):
    path = tmp_path / "batch.csv"
    path.write_text(HEADER + GOOD)
    assert voke("ingest", "load", str(path), "--db", db, "--json").exit_code == 0
    shown = voke("audit", "show", "--json")
    assert shown.exit_code == 0, shown.stdout
    assert "ingest.load" in shown.stdout
    # as documented, and as a load's event written later by another (recovered) says it
    [event] = voke("audit", "show", "-e", "ingest.load", "--result", "loaded", "--json").json["result"][
        "entries"
    ]
    assert event["target"] == "batch.csv" and event["details"]["status"] == "loaded"


@pytest.mark.parametrize("when", ["right after the commit", "while the audit event is written"])
def test_a_ctrl_c_once_the_batch_is_committed_still_ends_loaded_and_audited(
    voke, db, tmp_path, monkeypatch, when
):
    import os
    import signal

    from voketag_ops import audit
    from voketag_ops.workflows import ingest as wf

    def interrupt_first(real: Any, skip: Callable[..., bool] = lambda *a, **kw: False) -> Any:
        def patched(*args: Any, **kw: Any) -> Any:
            if not skip(*args, **kw):
                os.kill(os.getpid(), signal.SIGINT)
            return real(*args, **kw)

        return patched

    if when == "right after the commit":
        monkeypatch.setattr(wf, "_deliver", interrupt_first(wf._deliver))
    else:
        other = lambda self, **kw: kw.get("event_type") != "ingest.load"  # noqa: E731
        monkeypatch.setattr(audit.AuditLog, "append", interrupt_first(audit.AuditLog.append, other))
    path = tmp_path / "batch.csv"
    path.write_text(HEADER + GOOD)
    result = voke("ingest", "load", str(path), "--db", db, "--json")
    assert result.exit_code == 0 and result.json["result"]["status"] == "loaded", result.stdout
    monkeypatch.undo()
    shown = voke("audit", "show", "-e", "ingest.load", "--json")
    event = shown.json["result"]["entries"][-1]
    assert event["result"] == "loaded" and event["details"]["batch_id"] == result.json["result"]["batch_id"]
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # put back


def test_partial_writes_rejects(voke, db, tmp_path):
    path = tmp_path / "batch.csv"
    path.write_text(HEADER + GOOD + "T2,S1,Shoe,F1,never\n" + '=HYPERLINK("http://x"),S1,Shoe,F1,never\n')
    rejects = tmp_path / "out" / "rejects.csv"
    rejects.parent.mkdir()
    result = voke("ingest", "load", str(path), "--db", db, "--partial", "--rejects", str(rejects), "--json")
    assert result.exit_code == 0
    report = result.json["result"]
    assert (report["status"], report["rows_loaded"], report["rows_rejected"]) == ("loaded", 1, 2)
    assert report["rejects_file"] == str(rejects)
    assert "bad_timestamp" in rejects.read_text()
    # a record a spreadsheet would run as a formula is escaped, as `audit export` escapes cells
    records = [row["record"] for row in csv.DictReader(rejects.open(newline=""))]
    assert records == ["T2,S1,Shoe,F1,never", '\'=HYPERLINK("http://x"),S1,Shoe,F1,never']


def test_partial_never_loads_text_inside_a_quoted_field_that_spans_lines(voke, db, tmp_path):
    # The reviewer's file: under RFC 4180, two records, TML1 (its name holds line breaks) and TML3.
    path = tmp_path / "ml.csv"
    path.write_text(
        HEADER + 'TML1,SML1,"Jacket, see note:\nTML2,SML2,Not a row,F,2024-01-01T00:00:00Z\nend of note",F,'
        "2024-01-01T00:00:00Z\nTML3,SML3,Boot,F,2024-01-01T00:00:00Z\n"
    )
    rejects = tmp_path / "ml.rej"
    result = voke("ingest", "load", str(path), "--db", db, "--partial", "--rejects", str(rejects), "--json")
    assert result.exit_code == 0, result.stderr
    report = result.json["result"]
    assert (report["rows_total"], report["rows_loaded"], report["rows_rejected"]) == (2, 1, 1)
    assert [(e["line"], e["column"], e["code"]) for e in report["errors"]] == [(2, 11, "control_character")]
    (rejected,) = csv.DictReader(rejects.open(newline=""))
    assert (
        rejected["line"] == "2"
        and rejected["record"].count("\n") == 2
        and "end of note" in rejected["record"]
    )
    assert voke("ingest", "proof", "TML2", "--db", db, "--json").json["result"]["found"] is False
    assert voke("ingest", "proof", "TML3", "--db", db, "--json").exit_code == 0


def test_partial_refuses_to_overwrite_a_file_voke_did_not_write(voke, db, tmp_path):
    path = tmp_path / "batch.csv"
    path.write_text(HEADER + GOOD + "T2,S1,Shoe,F1,never\n")
    precious = tmp_path / "precious.csv"
    precious.write_text(HEADER + GOOD)
    args = ("ingest", "load", str(path), "--db", db, "--partial", "--rejects", str(precious), "--json")
    result = voke(*args)
    assert result.exit_code == 2, result.stdout + result.stderr
    assert "is not a rejects file voke wrote; pass --force" in result.json["error"]["message"]
    assert precious.read_text() == HEADER + GOOD and tables(db) == (0, 0)
    result = voke(*args, "--force")
    assert result.exit_code == 0 and result.json["result"]["rejects_file"] == str(precious)
    assert "bad_timestamp" in precious.read_text()


def test_partial_refuses_a_cut_upload_as_a_whole(voke, db, tmp_path):
    path = tmp_path / "batch.csv"
    path.write_text(HEADER + GOOD + "T2,S1,Sh")  # cut mid-row: the head must not load as a batch
    rejects = tmp_path / "rejects.csv"
    result = voke("ingest", "load", str(path), "--db", db, "--partial", "--rejects", str(rejects), "--json")
    assert result.exit_code == 1, result.stdout
    report = result.json["result"]
    assert (report["status"], report["rows_loaded"]) == ("rejected", 0)
    assert report["errors"][0]["code"] == "truncated"
    assert tables(db) == (0, 0)


def test_dry_run_writes_nothing(voke, db, tmp_path):
    path = tmp_path / "batch.csv"
    path.write_text(HEADER + GOOD)
    result = voke("ingest", "load", str(path), "--db", db, "--dry-run", "--json")
    assert result.exit_code == 0 and result.json["result"]["status"] == "valid"
    assert tables(db) == (0, 0)


@pytest.mark.parametrize(
    "args",
    [
        ["ingest", "load", "missing.csv"],
        ["ingest", "load", "batch.csv", "--partial"],
        ["ingest", "load", "batch.csv", "--max-errors", "-1"],
        ["ingest", "sample", "--rows", "0", "--out", "x.csv"],
        ["ingest", "load", "batch.csv", "--db", "not a conninfo password=hunter22"],
    ],
    ids=["missing-file", "partial-without-rejects", "negative-max-errors", "zero-rows", "bad-db-string"],
)
def test_usage_errors_exit_2(voke, tmp_path, args):
    (tmp_path / "batch.csv").write_text(HEADER + GOOD)
    result = voke(*args, "--json")
    assert result.exit_code == 2, result.stdout + result.stderr
    assert result.json["error"]["exit_code"] == 2
    assert "hunter22" not in result.stdout + result.stderr


def test_unreachable_database_exits_4_without_the_password(voke, tmp_path):
    (tmp_path / "batch.csv").write_text(HEADER + GOOD)
    url = "postgresql://ops:s3cret-pass-word@127.0.0.1:1/voketag?connect_timeout=1"
    result = voke("ingest", "load", str(tmp_path / "batch.csv"), "--db", url, "--json")
    assert result.exit_code == 4
    assert "s3cret-pass-word" not in result.stdout + result.stderr


def test_no_piece_of_a_password_with_a_raw_at_sign_is_printed_or_audited(voke, tmp_path):
    # libpq splits the URL at the password's '@' and names the rest as the host in its error.
    (tmp_path / "batch.csv").write_text(HEADER + GOOD)
    url = "postgresql://app_a:Tx9#Lm@Qw8ZsTailLeak@127.0.0.1:1/voketag"
    result = voke("ingest", "load", str(tmp_path / "batch.csv"), "--db", url, "--json")
    misplaced = voke("ingest", "load", "postgresql://u:S3cretPW-unreach@127.0.0.1:1/db")  # no --db
    audit = voke("audit", "export", "--format", "json")
    for out in (result, misplaced, audit):
        text = out.stdout + out.stderr
        assert "Qw8ZsTailLeak" not in text and "S3cretPW-unreach" not in text


def test_a_password_libpq_would_cut_at_a_slash_is_refused_before_connecting_and_never_shown(voke, tmp_path):
    # libpq reads `S3cr3t` as the password, `Gr33nTeaPw` as the host and `x@...` as the
    # database name, and named that host in its error and psycopg's debug log.
    path = tmp_path / "a.csv"
    path.write_text(HEADER + GOOD)
    url = "postgresql://owner1:S3cr3t@Gr33nTeaPw/x@127.0.0.1:1/db1"
    commands = [["load", str(path)], ["load", str(path), "--dry-run"], ["migrate", "--yes"], ["batches"],
                ["proof", "T1"]]  # fmt: skip
    runs = [voke("ingest", *c, "--db", url, flag) for c in commands for flag in ("--json", "--debug")]
    for result in runs:
        assert result.exit_code == 2, result.stdout + result.stderr
        assert "percent-encode" in result.stdout + result.stderr
    audit = voke("audit", "show", "--json")
    assert audit.exit_code == 0 and audit.json["result"]["entries"]
    for result in [*runs, audit]:
        text = result.stdout + result.stderr
        assert "Gr33nTeaPw" not in text and "S3cr3t" not in text and "resolve host" not in text


def test_sample_is_reproducible_and_refuses_to_overwrite(voke, tmp_path):
    a, b = tmp_path / "a.csv", tmp_path / "b.csv"
    assert voke("ingest", "sample", "--rows", "50", "--seed", "9", "--out", str(a)).exit_code == 0
    assert voke("ingest", "sample", "--rows", "50", "--seed", "9", "--out", str(b)).exit_code == 0
    assert a.read_bytes() == b.read_bytes() and len(a.read_text().splitlines()) == 51
    assert voke("ingest", "sample", "--rows", "50", "--out", str(a)).exit_code == 2
    assert voke("ingest", "sample", "--rows", "5", "--out", str(a), "--force").exit_code == 0


def test_sample_to_stdout_is_the_same_csv_and_the_summary_goes_to_stderr(voke, tmp_path):
    assert (
        voke("ingest", "sample", "--rows", "40", "--seed", "3", "--out", str(tmp_path / "a.csv")).exit_code
        == 0
    )
    result = voke("ingest", "sample", "--rows", "40", "--seed", "3", "--out", "-")
    assert result.exit_code == 0
    assert result.stdout == (tmp_path / "a.csv").read_text()
    assert result.stderr.count("\n") == 1 and "40 rows" in result.stderr
    assert not (tmp_path / "-").exists()
    both = voke("ingest", "sample", "--rows", "40", "--out", "-", "--json")
    assert both.exit_code == 2 and both.json["error"]["type"] == "UsageError"
    assert not (tmp_path / "-").exists()


def test_outputs_that_are_not_regular_files_are_refused_before_anything_is_written(voke, db, tmp_path):
    import os
    import stat

    fifo = tmp_path / "pipe"  # stands for a device: replaced, /dev/null would become a file
    os.mkfifo(fifo)
    (tmp_path / "batch.csv").write_text(HEADER + GOOD + "bad,row\n")
    partial = voke(
        "ingest", "load", str(tmp_path / "batch.csv"), "--db", db, "--partial", "--rejects", str(fifo)
    )
    out = voke("ingest", "sample", "--rows", "5", "--out", str(fifo), "--force")
    for result in (partial, out):
        assert result.exit_code == 2 and "not a regular file" in result.stderr
    assert stat.S_ISFIFO(fifo.stat().st_mode) and tables(db) == (0, 0)


def test_sample_to_a_full_stdout_is_a_clear_error(tmp_path):
    with open("/dev/full", "wb") as full:
        done = subprocess.run(
            [sys.executable, "-m", "voketag_ops", "ingest", "sample", "--rows", "10", "--out", "-"],
            stdout=full, stderr=subprocess.PIPE, text=True, cwd=tmp_path,
            env={**os.environ, "VOKE_HOME": str(tmp_path / "home")},
        )  # fmt: skip
    assert (
        done.returncode == 4
        and done.stderr.strip() == "error: cannot write to stdout: No space left on device"
    )


def test_sample_to_a_reader_that_goes_away_stops_quietly(tmp_path):
    # `voke ingest sample --out - | head -1`: no more rows made for nobody, no "wrote N rows".
    proc = subprocess.Popen(
        [sys.executable, "-m", "voketag_ops", "ingest", "sample", "--rows", "100000", "--out", "-"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=tmp_path,
        env={**os.environ, "VOKE_HOME": str(tmp_path / "home")},
    )  # fmt: skip
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.close()  # gone before the first row is written
    assert (proc.wait(timeout=60), proc.stderr.read()) == (0, b"")


def test_local_environment_is_the_default_target(voke, local_env, tmp_path, make_environ):
    path = tmp_path / "batch.csv"
    path.write_text(HEADER + "LOCAL-" + GOOD)
    env = make_environ(local_env.home)
    result = voke("ingest", "load", str(path), "--json", environ=env)
    assert result.exit_code == 0, result.stdout + result.stderr
    assert result.json["result"]["status"] in ("loaded", "duplicate")


def test_cli_start_up_does_not_import_psycopg():
    code = "import sys, voketag_ops.cli.app; sys.exit(1 if 'psycopg' in sys.modules else 0)"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


def test_help_lists_the_ingest_commands(voke):
    out = voke("ingest", "--help").stdout
    for command in ("load", "migrate", "batches", "proof", "sample"):
        assert command in out


def test_database_going_away_mid_load_exits_4_and_a_rerun_loads(voke, db, pg_database, tmp_path, monkeypatch):
    from contextlib import contextmanager

    from voketag_ops.cli import ingest_cmd

    path = tmp_path / "batch.csv"
    assert voke("ingest", "sample", "--rows", "30000", "--out", str(path)).exit_code == 0

    @contextmanager
    def killer(out, total):
        def progress(p):
            if p.phase == "validating":
                with psycopg.connect(db, autocommit=True) as admin:
                    admin.execute(
                        "select pg_terminate_backend(pid) from pg_stat_activity"
                        " where datname = %s and application_name = 'voke ingest'",
                        (pg_database,),
                    )

        yield progress

    monkeypatch.setattr(ingest_cmd, "_progress_bar", killer)
    result = voke("ingest", "load", str(path), "--db", db, "--json")
    assert result.exit_code == 4, result.stdout
    assert result.json["error"]["type"] == "BackendError"
    assert "Traceback" not in result.stderr
    assert tables(db) == (0, 0)
    monkeypatch.undo()
    rerun = voke("ingest", "load", str(path), "--db", db, "--json")
    assert rerun.exit_code == 0 and rerun.json["result"]["rows_loaded"] == 30000


def test_a_server_that_takes_no_data_fails_the_load_over_a_unix_socket_too(
    voke, db, pg_database, tmp_path, monkeypatch
):
    import os
    import signal
    from contextlib import contextmanager

    from psycopg.conninfo import conninfo_to_dict, make_conninfo

    from voketag_ops.cli import ingest_cmd

    assert conninfo_to_dict(db)["host"].startswith("/")  # the kernel's TCP timeout cannot help here
    path = tmp_path / "batch.csv"
    assert voke("ingest", "sample", "--rows", "100000", "--out", str(path)).exit_code == 0
    stopped: list[int] = []

    @contextmanager
    def stopper(out, total):
        def progress(p):
            if p.phase == "validating" and not stopped:  # its disk hangs, say
                with psycopg.connect(db, autocommit=True) as admin:
                    (pid,) = admin.execute(
                        "select pid from pg_stat_activity where datname = %s and application_name = 'voke ingest'",
                        (pg_database,),
                    ).fetchone()
                os.kill(pid, signal.SIGSTOP)
                stopped.append(pid)

        yield progress

    monkeypatch.setattr(ingest_cmd, "_progress_bar", stopper)
    try:
        result = voke("ingest", "load", str(path), "--db", make_conninfo(db, tcp_user_timeout=2000), "--json")
    finally:
        for pid in stopped:
            os.kill(pid, signal.SIGCONT)
    assert stopped and result.exit_code == 4, result.stdout
    assert "the server took no data for 2 s" in result.json["error"]["message"]
    assert tables(db) == (0, 0)
    monkeypatch.undo()
    rerun = voke("ingest", "load", str(path), "--db", db, "--json")
    assert rerun.exit_code == 0 and rerun.json["result"]["rows_loaded"] == 100000


def test_a_slow_server_that_keeps_taking_rows_is_not_taken_for_a_stalled_one(voke, db, tmp_path):
    from psycopg.conninfo import make_conninfo

    first = tmp_path / "first.csv"
    first.write_text(HEADER + GOOD)
    assert voke("ingest", "load", str(first), "--db", db).exit_code == 0  # the schema
    with psycopg.connect(db, autocommit=True) as admin:  # ~0.06 ms a row: the load takes > 3 s
        admin.execute(
            "create function ingest.slow() returns trigger language plpgsql as"
            " $$ begin perform sum(i) from generate_series(1, 1000) i; return new; end $$"
        )
        admin.execute(
            "create trigger slow before insert on ingest.tags for each row execute function ingest.slow()"
        )
    path = tmp_path / "batch.csv"
    assert voke("ingest", "sample", "--rows", "60000", "--seed", "7", "--out", str(path)).exit_code == 0
    # the server reads a 128 kB COPY message at a time: ~0.08 s here, far from the 3 s a stall
    # takes even on a host loaded many times over (at 4x that a message, one went past 3 s once
    # on a host running four suites at a time)
    result = voke("ingest", "load", str(path), "--db", make_conninfo(db, tcp_user_timeout=3000), "--json")
    assert result.exit_code == 0, result.stdout
    assert result.json["result"]["rows_loaded"] == 60000


def test_reads_never_start_the_local_environment(voke, tmp_path):
    for args in (("ingest", "batches"), ("ingest", "proof", "T1")):
        result = voke(*args, "--json")
        assert result.exit_code == 4 and "not running" in result.json["error"]["message"], result.stdout
    assert not (tmp_path / "home" / "pg").exists()


def test_an_empty_db_is_a_usage_error_never_the_local_environment(voke, tmp_path):
    path = tmp_path / "batch.csv"
    path.write_text(HEADER + GOOD)
    for args in (("ingest", "load", str(path), "--db", ""), ("ingest", "batches", "--db", " ")):
        result = voke(*args, "--json")
        assert result.exit_code == 2 and "--db is empty" in result.json["error"]["message"]
    assert not (tmp_path / "home" / "pg").exists()


def test_an_empty_path_is_a_usage_error_saying_so_not_the_current_directory(voke, tmp_path):
    # Path("") is ".": an unset variable in `load "$BATCH"` was "file '' is a directory".
    path = tmp_path / "batch.csv"
    path.write_text(HEADER + GOOD)
    for args, name in (
        (("ingest", "load", ""), "FILE"),
        (("ingest", "load", str(path), "--partial", "--rejects", ""), "--rejects"),
        (("ingest", "sample", "--rows", "5", "--out", ""), "--out"),
    ):
        result = voke(*args, "--json")
        assert result.exit_code == 2, result.stdout
        assert result.json["error"]["message"] == f"{name} is empty; name a file"
    assert not (tmp_path / "home" / "pg").exists()  # refused before the environment is started


def test_a_batch_file_that_is_not_there_or_a_directory_is_a_usage_error(voke, tmp_path):
    for given, says in (
        (tmp_path / "missing.csv", "No such file or directory"),
        (tmp_path, "is a directory"),
    ):
        result = voke("ingest", "load", str(given), "--json")
        assert result.exit_code == 2 and says in result.json["error"]["message"], result.stdout
    assert not (tmp_path / "home" / "pg").exists()


def test_batches_limit_is_bounded(voke):
    assert voke("ingest", "batches", "--limit", "9223372036854775808").exit_code == 2


def test_a_rejected_file_is_one_line_on_stderr_without_a_terminal(voke, db, tmp_path):
    path = tmp_path / "batch.csv"
    path.write_text(HEADER + "T1,S1,Shoe,F1,never\n")
    result = voke("ingest", "load", str(path), "--db", db)
    assert result.exit_code == 1
    assert len(result.stderr.splitlines()) == 1 and "line 2" in result.stderr, result.stderr


def test_dry_runs_that_reject_or_find_a_duplicate_are_marked_and_audited_as_dry_runs(voke, db, tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text(HEADER + "T1,S1,Shoe,F1,never\n")
    good = tmp_path / "good.csv"
    good.write_text(HEADER + GOOD)
    assert voke("ingest", "load", str(good), "--db", db).exit_code == 0
    for path, status, code in ((bad, "rejected", 1), (good, "duplicate", 0)):
        result = voke("ingest", "load", str(path), "--db", db, "--dry-run", "--json")
        assert result.exit_code == code and result.json["result"]["status"] == status
        assert result.json["result"]["dry_run"] is True
        event = voke("audit", "show", "-e", "ingest.load", "--json").json["result"]["entries"][-1]
        assert event["result"] == "dry-run" and event["details"]["status"] == status
        assert event["details"]["dry_run"] is True


def test_a_standby_answers_duplicate_and_refuses_a_load_with_exit_5(
    voke, db, local_env, pg_database, tmp_path
):
    import time

    good = tmp_path / "good.csv"
    good.write_text(HEADER + GOOD)
    loaded = voke("ingest", "load", str(good), "--db", db, "--json").json["result"]
    standby = local_env.standby().conninfo(pg_database)
    for _ in range(400):  # replayed there: the database, then the batch
        try:
            with psycopg.connect(standby) as conn:
                made = conn.execute("select to_regclass('ingest.batches')").fetchone()[0] is not None
                if made and conn.execute("select count(*) from ingest.batches").fetchone()[0]:
                    break
        except psycopg.OperationalError:
            pass
        time.sleep(0.05)
    again = voke("ingest", "load", str(good), "--db", standby, "--json")
    assert again.exit_code == 0, again.stdout
    assert (
        again.json["result"]["status"] == "duplicate"
        and again.json["result"]["batch_id"] == loaded["batch_id"]
    )
    other = tmp_path / "other.csv"
    other.write_text(HEADER + GOOD.replace("T1", "T2"))
    refused = voke("ingest", "load", str(other), "--db", standby, "--json")
    assert refused.exit_code == 5 and "read-only (a standby in recovery)" in refused.json["error"]["message"]


def test_the_target_named_is_the_server_reached_when_libpq_variables_fill_in(voke, db, tmp_path, monkeypatch):
    from psycopg.conninfo import conninfo_to_dict

    parts = conninfo_to_dict(db)
    monkeypatch.setenv("PGHOST", str(parts["host"]))
    monkeypatch.setenv("PGPORT", str(parts["port"]))
    monkeypatch.setenv("PGDATABASE", str(parts["dbname"]))
    monkeypatch.setenv("PGUSER", str(parts.get("user") or "postgres"))
    path = tmp_path / "batch.csv"
    path.write_text(HEADER + GOOD)
    result = voke("ingest", "load", str(path), "--db", "postgresql://", "--json")
    assert result.exit_code == 0, result.stdout
    expected = f"local socket:{parts['port']}/{parts['dbname']}"
    assert result.json["result"]["target"] == expected
    event = voke("audit", "show", "-e", "ingest.load", "--json").json["result"]["entries"][-1]
    assert event["details"]["target"] == expected


def test_a_signal_once_the_load_result_is_out_changes_nothing(db, tmp_path, make_environ):
    # In the `voke` script, signals are off from the printed result to the exit.
    path = tmp_path / "batch.csv"
    path.write_text(HEADER + GOOD)
    code = (
        "import os, signal, sys\n"
        "from voketag_ops import interrupts\n"
        "from voketag_ops.cli.main import main\n"
        "from voketag_ops.workflows import ingest as wf\n"
        "real = wf.AfterCommit.__exit__\n"
        "def exit_then_signal(self, *exc):\n"
        "    real(self, *exc)\n"
        "    os.kill(os.getpid(), signal.SIGTERM)\n"
        "wf.AfterCommit.__exit__ = exit_then_signal\n"
        "interrupts.install()\n"
        f"sys.exit(main(['ingest', 'load', {str(path)!r}, '--db', {db!r}, '--json']))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], env=make_environ(tmp_path / "home"), capture_output=True, text=True
    )
    assert done.returncode == 0, done.stdout + done.stderr
    docs = done.stdout.strip().splitlines()
    assert len(docs) == 1 and '"status": "loaded"' in docs[0]


def test_a_rejected_load_takes_no_batch_number(voke, db, tmp_path):
    # A sequence does not roll back: nextval() made every rejected load a gap in the numbers.
    (tmp_path / "bad.csv").write_text(HEADER + GOOD + GOOD)
    (tmp_path / "one.csv").write_text(HEADER + GOOD)
    (tmp_path / "two.csv").write_text(HEADER + "T2,S1,Shoe,F1,2024-01-01T00:00:00Z\n")
    ids = []
    for name in ("bad.csv", "one.csv", "bad.csv", "two.csv"):
        done = voke("ingest", "load", str(tmp_path / name), "--db", db, "--json")
        ids.append(done.json["result"]["batch_id"])
    assert ids == [None, 1, None, 2]


def test_a_file_name_that_is_not_utf8_loads_and_is_listed_as_its_bytes(voke, db, tmp_path):
    path = tmp_path / "caf\udce9.csv"  # b"caf\xe9.csv", Latin-1 from a factory host
    path.write_text(HEADER + GOOD)
    done = voke("ingest", "load", str(path), "--db", db, "--json")
    assert done.exit_code == 0, done.stdout
    assert done.json["result"]["file"].endswith("caf\\xe9.csv")
    listed = voke("ingest", "batches", "--db", db, "--json")
    assert listed.json["result"]["batches"][0]["file_name"] == "caf\\xe9.csv"


def test_batches_shows_a_file_name_as_written_not_as_markup(voke, db, tmp_path):
    path = tmp_path / "[red]loud.csv"
    path.write_text(HEADER + GOOD)
    assert voke("ingest", "load", str(path), "--db", db).exit_code == 0
    assert "[red]loud.csv" in voke("ingest", "batches", "--db", db).stdout


def test_a_file_name_with_terminal_escapes_is_shown_not_obeyed(voke, db, tmp_path):
    path = tmp_path / "evil\x1b[2J\x1b[31mRED\u202e.csv"
    path.write_text(HEADER + GOOD)
    loaded = voke("ingest", "load", str(path), "--db", db)
    assert loaded.exit_code == 0, loaded.stderr
    tag = GOOD.split(",")[0]
    for out in (loaded.stdout + loaded.stderr, voke("ingest", "batches", "--db", db).stdout,
                voke("ingest", "proof", tag, "--db", db).stdout):  # fmt: skip
        assert "\x1b" not in out and "\u202e" not in out, out
        assert "evil\\x1b[2J\\x1b[31mRED\\u202e.csv" in out


def test_a_file_name_with_a_line_break_keeps_the_summary_on_one_line(voke, tmp_path, make_environ):
    path = tmp_path / "bad\nname\r.csv"
    path.write_text(HEADER + GOOD)
    env = make_environ(tmp_path / "home", VOKE_INGEST__MAX_FILE_BYTES="1")  # refused before connecting
    for args in ([], ["--dry-run"]):
        rejected = voke("ingest", "load", str(path), "--db", "postgresql://127.0.0.1:1/x", *args, environ=env)
        assert rejected.exit_code == 1, rejected.stderr
        summary = rejected.stdout.splitlines()[0]
        assert "rejected bad\\nname\\r.csv: 1 problem(s)" in summary and summary.endswith("nothing loaded")
        assert rejected.stderr.count("\n") == 1 and "bad\\nname\\r.csv: 1 problem(s)" in rejected.stderr


@pytest.mark.parametrize("tag", ["\udcff", "has space", "x" * 65])
def test_proof_of_what_cannot_be_a_tag_id_is_a_usage_error(voke, tag):
    done = voke("ingest", "proof", tag, "--json")
    assert done.exit_code == 2, done.stdout
    assert "is not a tag_id" in done.json["error"]["message"]


def test_sample_into_a_directory_says_so_not_pass_force(voke, tmp_path):
    done = voke("ingest", "sample", "--rows", "10", "--out", str(tmp_path), "--json")
    assert done.exit_code == 2 and "is a directory" in done.json["error"]["message"]


def test_a_tag_id_that_starts_with_a_dash_is_named_after_double_dash(voke):
    bare = voke("ingest", "proof", "-A1", "--json")
    assert bare.exit_code == 2 and "goes after `--`" in bare.json["error"]["hint"]
    after = voke("ingest", "proof", "--json", "--", "-A1")
    assert after.exit_code in (1, 4), after.stdout  # looked up (not loaded, or no environment)
    assert "is not a tag_id" not in after.stdout


def test_a_user_name_without_a_password_in_db_is_no_secret(voke, tmp_path):
    # Only a password is masked: a bare user name ("ingest") masked "ingest load" everywhere.
    path = tmp_path / "batch.csv"
    path.write_text(HEADER + GOOD)
    done = voke("ingest", "load", str(path), "--db", "postgresql://ingest@127.0.0.1:1/voketag", "--json")
    assert done.exit_code == 4 and done.json["command"] == "ingest load", done.stdout
    assert "***" not in done.stdout


def test_proof_of_a_resealed_or_damaged_batch_exits_1(voke, db, tmp_path, platform_environ, pg_database):
    from voketag_ops.testing.ingest import reseal

    path = tmp_path / "batch.csv"
    assert voke("ingest", "sample", "--rows", "1500", "--out", str(path)).exit_code == 0
    chain = dict(platform_environ, VOKE_CHAIN__DATABASE=pg_database)  # the chain beside the batches
    root = voke("ingest", "load", str(path), "--db", db, "--json", environ=chain).json["result"][
        "merkle_root"
    ]
    tag = path.read_text().splitlines()[1101].split(",")[0]
    # The database rewritten: a row changed, its batch's leaf hashes, chunk roots and root recomputed.
    with psycopg.connect(db, autocommit=True) as conn:
        forged = reseal(conn, 1, tag)
    proof = voke("ingest", "proof", tag, "--db", db, "--json", environ=chain)
    assert proof.exit_code == 1 and proof.json["result"]["anchor"] == "mismatch", proof.stdout
    message = proof.json["error"]["message"]
    assert forged.hex() in message and root in message
    human = voke("ingest", "proof", tag, "--db", db, environ=chain)
    # the proof itself holds (JSON: valid, intact): the terminal says what fails, the anchor
    assert human.exit_code == 1 and human.stdout.splitlines()[-1] == "anchor mismatch", human.stdout
    assert "NOT valid" not in human.stdout
    listed = voke("ingest", "batches", "--db", db, "--json", environ=chain)
    assert listed.exit_code == 0 and listed.json["result"]["batches"][0]["anchor"] == "mismatch"
    assert "warning: batch" in listed.stderr

    with psycopg.connect(db, autocommit=True) as conn:
        conn.execute("update ingest.batches set chunk_size = 0")  # was a division by zero, exit 4
    damaged = voke("ingest", "proof", tag, "--db", db, "--json", environ=chain)
    assert damaged.exit_code == 1, damaged.stdout
    assert damaged.json["error"]["message"].endswith("seal is damaged: chunk_size is 0, not 1024")


def test_proof_of_a_row_that_cannot_be_sealed_exits_1_naming_it(voke, db, tmp_path):
    path = tmp_path / "batch.csv"
    assert voke("ingest", "sample", "--rows", "20", "--out", str(path)).exit_code == 0
    assert voke("ingest", "load", str(path), "--db", db).exit_code == 0
    tag, other = (line.split(",")[0] for line in path.read_text().splitlines()[1:3])
    with psycopg.connect(db, autocommit=True) as conn:
        conn.execute("update ingest.tags set manufactured_at = 'infinity' where tag_id = %s", (tag,))
        conn.execute("update ingest.tags set batch_id = 99 where tag_id = %s", (other,))
    timeless = voke("ingest", "proof", tag, "--db", db, "--json")  # was exit 4, a conversion error
    assert timeless.exit_code == 1 and timeless.json["result"]["found"], timeless.stdout
    assert "manufactured_at 'infinity'" in timeless.json["result"]["damaged"]
    assert timeless.json["error"]["message"].startswith(f"tag {tag!r}: its stored manufactured_at")
    orphan = voke("ingest", "proof", other, "--db", db)  # was "has not been loaded"
    assert orphan.exit_code == 1 and "None" not in orphan.stdout, orphan.stdout
    assert f"tag {other!r}: batch 99's row is missing" in orphan.stderr


def test_a_read_only_db_is_refused_with_a_hint_at_its_own_primary_not_the_local_environment(
    voke, db, pg_database, local_env, tmp_path
):
    with psycopg.connect(local_env.primary().conninfo("postgres"), autocommit=True) as conn:
        conn.execute(f'ALTER DATABASE "{pg_database}" SET default_transaction_read_only = on')
    good = tmp_path / "good.csv"
    good.write_text(HEADER + GOOD)
    for args in (["load", str(good)], ["migrate", "--yes"]):
        refused = voke("ingest", *args, "--db", db, "--json")
        assert refused.exit_code == 5 and "read-only" in refused.json["error"]["message"], refused.stdout
        assert (
            refused.json["error"]["hint"] == "point --db at the primary (a writable server) of that database"
        )


@pytest.mark.parametrize(
    "setup",
    [
        "CREATE TABLE ingest.batches (id serial primary key, note text)",
        "CREATE TABLE ingest.schema_migrations (id serial primary key, note text)",
        "CREATE TABLE ingest.schema_migrations (version integer PRIMARY KEY, name text NOT NULL);"
        "CREATE TABLE ingest.tags (tag text)",  # voke's record, but a table before the migration making it
    ],
    ids=["own-tables", "other-schema-migrations", "table-without-its-migration"],
)
def test_an_ingest_schema_of_another_application_is_refused_alike_by_every_command(voke, db, tmp_path, setup):
    """It was "no ingest schema -> would apply 1..4", then "relation batches already exists"
    (exit 4), "no batches loaded yet", or a raw `column "version" does not exist`."""
    with psycopg.connect(db, autocommit=True) as conn:
        conn.execute("CREATE SCHEMA ingest")
        conn.execute(setup)
    good = tmp_path / "good.csv"
    good.write_text(HEADER + GOOD)
    commands = [["load", str(good), "--dry-run"], ["load", str(good)], ["migrate", "--dry-run"],
                ["migrate", "--yes"], ["batches"], ["proof", "T1"]]  # fmt: skip
    answers = set()
    for args in commands:
        refused = voke("ingest", *args, "--db", db, "--json")
        assert refused.exit_code == 5, (args, refused.stdout)
        answers.add(refused.json["error"]["message"])
    (answer,) = answers
    assert "`ingest` schema belongs to something else" in answer and "nothing was changed" in answer
    with psycopg.connect(db) as conn:
        names = conn.execute(
            "SELECT relname FROM pg_class WHERE relnamespace = 'ingest'::regnamespace AND relkind = 'r'"
        ).fetchall()
    assert {n for (n,) in names} <= {"batches", "schema_migrations", "tags"} and len(names) == setup.count(
        "CREATE"
    )


def test_migrate_brings_an_older_schema_up_now_and_dry_runs_work_again(
    voke, db, local_env, pg_database, tmp_path
):
    """A CI job that checks factory files with `load --dry-run` was refused (exit 5) after an
    upgrade until some real load migrated the schema; `ingest migrate` does it as a step of its
    own (by a role that may alter the tables, say)."""
    good = tmp_path / "good.csv"
    good.write_text(HEADER + GOOD)
    assert voke("ingest", "load", str(good), "--db", db).exit_code == 0
    with psycopg.connect(db, autocommit=True) as conn:  # as a voke knowing migrations 1-3 left it
        conn.execute("DROP TABLE ingest.identity; DELETE FROM ingest.schema_migrations WHERE version > 3")
    other = tmp_path / "other.csv"
    other.write_text(HEADER + GOOD.replace("T1", "T2"))
    refused = voke("ingest", "load", str(other), "--db", db, "--dry-run", "--json")
    assert refused.exit_code == 5 and "voke ingest migrate --yes" in refused.json["error"]["hint"]
    standby = local_env.standby().conninfo(pg_database)
    for _ in range(400):  # the standby replays the downgrade: its dry run is refused as the run would be
        try:
            with psycopg.connect(standby) as conn:
                if conn.execute("select max(version) from ingest.schema_migrations").fetchone()[0] == 3:
                    break
        except psycopg.Error:  # not even the database or the schema replayed yet
            pass
        time.sleep(0.05)
    on_standby = voke("ingest", "migrate", "--db", standby, "--dry-run", "--json")
    assert (
        on_standby.exit_code == 5
        and "read-only (a standby in recovery)" in on_standby.json["error"]["message"]
    )
    plan = voke("ingest", "migrate", "--db", db, "--dry-run", "--json")
    assert plan.exit_code == 0, plan.stdout + plan.stderr
    assert plan.json["result"]["from_version"] == 3 and plan.json["result"]["changed"] is False
    assert [m["version"] for m in plan.json["result"]["applied"]] == [4]
    with psycopg.connect(db) as conn:
        assert conn.execute("select max(version) from ingest.schema_migrations").fetchone()[0] == 3
    done = voke("ingest", "migrate", "--db", db, "--yes", "--json")
    assert done.exit_code == 0 and done.json["result"]["changed"] is True
    assert [m["version"] for m in done.json["result"]["applied"]] == [4]
    again = voke("ingest", "migrate", "--db", db, "--yes")
    assert again.exit_code == 0 and "at version 4; nothing changed" in again.stdout, again.stdout
    checked = voke("ingest", "load", str(other), "--db", db, "--dry-run", "--json")
    assert checked.exit_code == 0 and checked.json["result"]["status"] == "valid"
    events = voke("audit", "show", "-e", "ingest.migrate", "--json").json["result"]["entries"]
    assert [(e["result"], e["details"]["from_version"]) for e in events[-2:]] == [
        ("success", 3),
        ("unchanged", 4),
    ]


def test_a_permission_hint_names_the_schema_owner_or_the_create_on_the_database_missing(
    voke, local_env, tmp_path
):
    """The hint said "a role that owns the database runs `migrate`", which then failed too when
    another role owned the schema; and a role that may not create the schema was told only
    PostgreSQL's "permission denied for database"."""
    from psycopg.conninfo import make_conninfo

    suffix = uuid.uuid4().hex[:8]
    owner, keeper, loader = (f"ingest_{who}_{suffix}" for who in ("owner", "keeper", "loader"))
    dbname, bare = f"owners_{suffix}", f"bare_{suffix}"
    admin = local_env.primary().conninfo("postgres")
    with psycopg.connect(admin, autocommit=True) as conn:
        for role in (owner, keeper, loader):
            conn.execute(f"CREATE ROLE {role} LOGIN")
        for name in (dbname, bare):
            conn.execute(f"CREATE DATABASE {name} OWNER {owner}")
            conn.execute(f"REVOKE CREATE, TEMPORARY ON DATABASE {name} FROM PUBLIC")
    base = local_env.primary().conninfo(dbname)
    with psycopg.connect(base, autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA ingest AUTHORIZATION {keeper}")
    as_owner, as_keeper, as_loader = (make_conninfo(base, user=r) for r in (owner, keeper, loader))
    try:
        good = tmp_path / "good.csv"
        good.write_text(HEADER + GOOD)
        assert voke("ingest", "migrate", "--db", as_keeper, "--yes").exit_code == 0
        refused = voke("ingest", "load", str(good), "--db", as_loader, "--json")
        assert refused.exit_code == 4, refused.stdout
        hint = refused.json["error"]["hint"]
        assert (
            f"the ingest schema's owner ({keeper}) runs `voke ingest migrate --yes --grant {loader}`" in hint
        )
        by_owner = voke("ingest", "migrate", "--db", as_owner, "--grant", loader, "--yes", "--json")
        assert by_owner.exit_code == 4 and "permission denied for schema ingest" in by_owner.stdout
        assert f"run it as the ingest schema's owner ({keeper})" in by_owner.json["error"]["hint"]
        assert "nothing was changed" in by_owner.json["error"]["message"]
        fresh = voke("ingest", "load", str(good), "--db", make_conninfo(as_loader, dbname=bare), "--json")
        assert fresh.exit_code == 4, fresh.stdout
        assert f"({loader} lacks CREATE on database {bare}" in fresh.json["error"]["message"]
        hint = fresh.json["error"]["hint"]
        assert f"the database's owner ({owner}) runs" in hint
        assert f"GRANT CREATE ON DATABASE {bare} TO {loader}" in hint
    finally:
        with psycopg.connect(admin, autocommit=True) as conn:
            for name in (dbname, bare):
                conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
            for role in (loader, keeper, owner):
                conn.execute(f"DROP ROLE IF EXISTS {role}")


def test_migrate_grants_a_loading_role_what_loads_need_and_no_more(voke, local_env, tmp_path):
    """A role that may not alter tables (least privilege) loads once `ingest migrate --grant`
    has run as the schema's owner; before, its first load was "permission denied"."""
    from psycopg.conninfo import make_conninfo

    suffix = uuid.uuid4().hex[:8]
    owner, loader, stranger, other = (
        f"ingest_{who}_{suffix}" for who in ("owner", "loader", "stranger", "other")
    )
    dbname = f"grants_{suffix}"
    admin = local_env.primary().conninfo("postgres")
    with psycopg.connect(admin, autocommit=True) as conn:
        for role in (owner, loader, stranger, other):
            conn.execute(f"CREATE ROLE {role} LOGIN")
        conn.execute(f"CREATE DATABASE {dbname} OWNER {owner}")
        conn.execute(f"REVOKE TEMPORARY ON DATABASE {dbname} FROM PUBLIC")  # hardened
    base = local_env.primary().conninfo(dbname)  # (the local socket admits any role)
    as_owner, as_loader = make_conninfo(base, user=owner), make_conninfo(base, user=loader)
    try:
        good = tmp_path / "good.csv"
        good.write_text(HEADER + GOOD)
        # No schema yet, and the loader may not create one: even a dry run says who can (it said
        # only "the database refused loading the batch: permission denied for database ...")
        for flags in (["--dry-run"], []):
            early = voke("ingest", "load", str(good), "--db", as_loader, *flags, "--json")
            assert early.exit_code == 4, early.stdout
            assert f"permission denied for database {dbname}" in early.json["error"]["message"]
            assert f"`voke ingest migrate --yes --grant {loader}`" in early.json["error"]["hint"]
        assert voke("ingest", "migrate", "--db", as_owner, "--yes").exit_code == 0
        refused = voke("ingest", "load", str(good), "--db", as_loader, "--json")
        assert refused.exit_code == 4 and "permission denied" in refused.json["error"]["message"]
        assert f"--grant {loader}" in refused.json["error"]["hint"]
        unknown = voke(
            "ingest", "migrate", "--db", as_owner, "--grant", "no_such_role_here", "--yes", "--json"
        )
        assert unknown.exit_code == 2 and "no_such_role_here" in unknown.json["error"]["message"]
        granted = voke("ingest", "migrate", "--db", as_owner, "--grant", loader, "--yes", "--json")
        assert granted.exit_code == 0 and granted.json["result"]["granted"] == [loader], granted.stdout
        loaded = voke("ingest", "load", str(good), "--db", as_loader, "--json")
        assert loaded.exit_code == 0 and loaded.json["result"]["status"] == "loaded", loaded.stdout
        assert (
            voke("ingest", "load", str(good), "--db", as_loader, "--json").json["result"]["status"]
            == "duplicate"
        )
        assert voke("ingest", "proof", "T1", "--db", as_loader).exit_code == 0
        repeats = tmp_path / "repeats.csv"  # judged in temporary tables
        repeats.write_text(HEADER + GOOD.replace("T1", "T7") * 2)
        judged = voke("ingest", "load", str(repeats), "--db", as_loader, "--json")
        assert judged.exit_code == 1 and judged.json["result"]["errors"][0]["code"] == "duplicate_tag_id"
        for statement in (  # the rows it loads; not the tables, sealed rows, nor the schema's version
            "DROP TABLE ingest.tags",
            "UPDATE ingest.tags SET sku = 'X'",
            "UPDATE ingest.identity SET database_id = 'x'",
            "INSERT INTO ingest.schema_migrations VALUES (99, 'x')",
        ):
            with psycopg.connect(as_loader) as conn, pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute(statement)
        again = voke("ingest", "migrate", "--db", as_owner, "--grant", loader, "--yes", "--json")
        assert again.exit_code == 0 and again.json["result"]["granted"] == [], again.stdout
        assert again.json["result"]["changed"] is False
        with psycopg.connect(as_owner, autocommit=True) as conn:  # one privilege of several gone
            conn.execute(f"REVOKE INSERT ON ingest.tags FROM {loader}")
        mended = voke("ingest", "migrate", "--db", as_owner, "--grant", loader, "--yes", "--json")
        assert mended.json["result"]["granted"] == [loader], mended.stdout
        # PostgreSQL only warns when a role without the grant option grants: refused, nothing changed
        as_stranger = make_conninfo(base, user=stranger)
        with psycopg.connect(as_owner, autocommit=True) as conn:  # it may read, not hand on
            conn.execute(f"GRANT USAGE ON SCHEMA ingest TO {stranger}")
            conn.execute(f"GRANT SELECT ON ALL TABLES IN SCHEMA ingest TO {stranger}")
        cannot = voke("ingest", "migrate", "--db", as_stranger, "--grant", other, "--yes", "--json")
        assert cannot.exit_code == 5 and "may not grant" in cannot.json["error"]["message"], cannot.stdout
        with psycopg.connect(as_owner) as conn:
            assert not conn.execute(
                "SELECT has_schema_privilege(%s, 'ingest', 'USAGE')", (other,)
            ).fetchone()[0]
    finally:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f"DROP DATABASE IF EXISTS {dbname} WITH (FORCE)")
            for role in (loader, stranger, other, owner):
                conn.execute(f"DROP ROLE IF EXISTS {role}")
