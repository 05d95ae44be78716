"""workflows.ingest at its edges, on the real local PostgreSQL: where the rejected rows go,
inputs that are not files, dry runs that change nothing, Ctrl-C around the sending
thread and around the COMMIT, and a session whose time zone is not UTC."""

from __future__ import annotations

import errno
import os
import signal
import threading
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg.conninfo import make_conninfo

from voketag_ops.config import IngestSettings
from voketag_ops.errors import InputError, UsageError
from voketag_ops.workflows import ingest as wf

pytestmark = pytest.mark.pg

NOW = datetime(2025, 6, 1, tzinfo=UTC)
HEADER = "tag_id,sku,product_name,factory_id,manufactured_at\n"
GOOD = "T1,S1,Shoe,F1,2024-01-01T00:00:00Z\n"
BAD = "T2,S1,Shoe,F1,not a time\n"


@pytest.fixture
def db(local_env: Any, pg_database: str) -> str:
    return local_env.primary().conninfo(pg_database)


def load(db: str, path: Path, **kw: Any) -> wf.LoadReport:
    return wf.load_batch(db, path, settings=IngestSettings(), now=NOW, **kw)


def write(tmp_path: Path, text: str, name: str = "batch.csv") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8", newline="")
    return path


def batches(db: str) -> list[int]:
    with psycopg.connect(db) as conn:
        if conn.execute("select to_regclass('ingest.batches')").fetchone()[0] is None:  # type: ignore[index]
            return []
        return [r[0] for r in conn.execute("select batch_id from ingest.batches order by 1")]


def scratch_files(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.name.endswith((".partial", ".kept")))


# -- where the rejected rows go ---------------------------------------------------------------------


def test_a_rejects_target_that_is_a_directory_is_refused_before_loading(db, tmp_path):
    (tmp_path / "rejects").mkdir()
    with pytest.raises(UsageError, match="is a directory"):
        load(db, write(tmp_path, HEADER + GOOD + BAD), partial=True, rejects=tmp_path / "rejects")
    assert batches(db) == [] and scratch_files(tmp_path) == []


def test_a_rejects_target_voke_did_not_write_is_refused_without_force(db, tmp_path):
    precious = write(tmp_path, HEADER + GOOD, name="precious.csv")  # `--rejects` naming the wrong file
    batch = write(tmp_path, HEADER + GOOD + BAD)
    with pytest.raises(UsageError, match="is not a rejects file voke wrote; pass --force"):
        load(db, batch, partial=True, rejects=precious)
    assert precious.read_text() == HEADER + GOOD and batches(db) == []
    with pytest.raises(UsageError, match="--force applies only with --rejects"):
        load(db, batch, force=True)
    report = load(db, batch, partial=True, rejects=precious, force=True)
    assert report.status == "loaded" and precious.read_text().startswith("line,column,code,message,record")
    # A duplicate would deliver a left rejects file over it too: refused alike, before anything.
    precious.write_text("mine\n")
    with pytest.raises(UsageError, match="pass --force"):
        load(db, batch, partial=True, rejects=precious)
    assert precious.read_text() == "mine\n"


def test_a_rerun_replaces_its_own_rejects_file_and_an_empty_one(db, tmp_path):
    # A cron job reruns the same command with the same --rejects: voke's own file is replaced.
    rejects = tmp_path / "rejects.csv"
    rejects.write_bytes(b"")  # `mktemp`
    first = load(db, write(tmp_path, HEADER + GOOD + BAD), partial=True, rejects=rejects)
    assert first.status == "loaded" and rejects.read_text().count("bad_timestamp") == 1
    other = HEADER + GOOD.replace("T1", "T3") + BAD.replace("T2", "T4") + BAD.replace("T2", "T5")
    second = load(db, write(tmp_path, other, name="next.csv"), partial=True, rejects=rejects)
    assert second.status == "loaded" and rejects.read_text().count("bad_timestamp") == 2
    rejects.write_bytes(rejects.read_bytes().replace(b"\r\n", b"\n"))  # saved by another tool
    third = HEADER + GOOD.replace("T1", "T6") + BAD.replace("T2", "T7")
    assert (
        load(db, write(tmp_path, third, name="third.csv"), partial=True, rejects=rejects).status == "loaded"
    )
    assert scratch_files(tmp_path) == []


def test_the_rejects_file_cannot_be_the_batch_itself(db, tmp_path):
    path = write(tmp_path, HEADER + GOOD + BAD)
    with pytest.raises(UsageError, match="another file"):
        load(db, path, partial=True, rejects=tmp_path / "." / path.name)
    assert path.read_text() == HEADER + GOOD + BAD and batches(db) == []


def test_a_rename_failing_after_the_commit_keeps_the_rows_and_says_where(db, tmp_path, monkeypatch):
    real_replace = os.replace

    def failing(src: Any, dst: Any) -> None:
        if str(dst).endswith("rejects.csv"):
            raise PermissionError(13, "Permission denied")
        real_replace(src, dst)

    monkeypatch.setattr(wf.os, "replace", failing)
    report = load(db, write(tmp_path, HEADER + GOOD + BAD), partial=True, rejects=tmp_path / "rejects.csv")
    assert report.status == "loaded" and report.rows_loaded == 1
    assert report.rejects_file and Path(report.rejects_file).exists()
    assert any(report.rejects_file in w and "Permission denied" in w for w in report.warnings)
    assert scratch_files(tmp_path) == [Path(report.rejects_file).name]  # kept: the warning names it


def test_a_load_rejected_at_the_last_moment_leaves_no_scratch_file(db, tmp_path, monkeypatch):
    path = write(tmp_path, HEADER + GOOD + BAD)
    # The file is written to once the rows are loaded and the rejects file is finished.
    real_close = wf._RejectsWriter.close

    def close_then_touch(self: Any) -> str:
        os.utime(path, ns=(0, 0))
        return real_close(self)

    monkeypatch.setattr(wf._RejectsWriter, "close", close_then_touch)
    report = load(db, path, partial=True, rejects=tmp_path / "rejects.csv")
    assert [e["code"] for e in report.errors] == ["file_changed"]
    assert (report.rows_total, report.rows_loaded, report.rows_rejected) == (2, 0, 2)
    assert batches(db) == [] and scratch_files(tmp_path) == []
    assert not (tmp_path / "rejects.csv").exists()


def test_rows_that_cannot_be_flushed_to_a_full_disk_leave_no_scratch_file(tmp_path):
    # Closing the rejects file flushes its buffered rows: on a full disk that raised, and the
    # scratch file (megabytes of rows) was left, keeping the disk full.
    writer = wf._RejectsWriter(tmp_path / "rejects.csv")
    for name in ("_fh", "_late"):  # each with rows it cannot write (a write to /dev/full fails)
        if (real := getattr(writer, name)) is not None:
            real.close()
        full = open("/dev/full", "w")  # noqa: SIM115 - closed by discard
        full.write("1,tag_id,bad_tag,not a tag\n")
        setattr(writer, name, full)
    writer.discard()
    assert full.closed and scratch_files(tmp_path) == []


def test_rejected_rows_a_full_disk_has_no_room_for_name_the_rejects_file(tmp_path):
    # It said only "error: No space left on device" (exit 4), with no file to look at.
    writer = wf._RejectsWriter(tmp_path / "rejects.csv")
    assert writer._fh is not None
    writer._fh.close()
    writer._fh = open("/dev/full", "w")  # noqa: SIM115 - closed by close or discard
    writer._fh.write("1,tag_id,bad_tag,not a tag\n")
    with pytest.raises(OSError) as failed:
        writer.close()
    assert failed.value.errno == errno.ENOSPC and failed.value.filename == str(tmp_path / "rejects.csv")
    writer.discard()
    assert scratch_files(tmp_path) == []


def test_partial_with_not_one_valid_row_loads_nothing_but_says_why_for_every_row(db, tmp_path):
    rejects = tmp_path / "rejects.csv"
    text = HEADER + BAD + BAD.replace("T2", "T3") + "T4,S1,Shoe,F1,2999-01-01T00:00:00Z\n"
    dry = load(db, write(tmp_path, text), partial=True, rejects=rejects, dry_run=True)
    assert dry.status == "rejected" and not rejects.exists()
    report = load(db, write(tmp_path, text), partial=True, rejects=rejects)
    assert report.status == "rejected" and report.rows_loaded == 0 and batches(db) == []
    assert report.rejects_file == str(rejects) and scratch_files(tmp_path) == []
    lines = rejects.read_text().splitlines()
    assert len(lines) == 4 and [line.split(",")[0] for line in lines[1:]] == ["2", "3", "4"]


# -- inputs that are not regular files --------------------------------------------------------------


def test_a_pipe_is_refused_without_waiting_for_a_writer(db, tmp_path):
    fifo = tmp_path / "batch.csv"
    os.mkfifo(fifo)
    with pytest.raises(InputError, match="not a regular file"):
        load(db, fifo)
    assert batches(db) == []


def test_a_directory_is_refused(db, tmp_path):
    with pytest.raises(InputError, match="is a directory"):
        load(db, tmp_path)


# -- dry runs -----------------------------------------------------------------------------------------


def test_a_dry_run_on_a_fresh_database_creates_nothing_and_takes_no_batch_number(db, tmp_path):
    report = load(db, write(tmp_path, HEADER + GOOD), dry_run=True)
    assert report.status == "valid"
    with psycopg.connect(db) as conn:
        assert conn.execute("select to_regnamespace('ingest')").fetchone() == (None,)
    assert load(db, write(tmp_path, HEADER + GOOD)).batch_id == 1
    assert load(db, write(tmp_path, HEADER + GOOD.replace("T1", "T3"), "b.csv"), dry_run=True).dry_run
    assert load(db, write(tmp_path, HEADER + GOOD.replace("T1", "T4"), "c.csv")).batch_id == 2


def test_listing_and_proving_on_a_fresh_database_create_nothing(db):
    assert wf.list_batches(db) == []
    assert not wf.prove_tag(db, "T1").found
    with psycopg.connect(db) as conn:
        assert conn.execute("select to_regnamespace('ingest')").fetchone() == (None,)


# -- Ctrl-C -------------------------------------------------------------------------------------------


def test_ctrl_c_while_the_last_piece_is_sent_is_an_interrupt_not_a_database_error(db, tmp_path, monkeypatch):
    # Ctrl-C lands while the caller waits for the sending thread at the end: the thread must
    # have let go of the connection (its savepoint) before the transaction is rolled back.
    path = tmp_path / "batch.csv"
    wf.make_sample(path, rows=20000, seed=3)
    real_stop = wf._PieceWriter._stop

    def interrupted_stop(self: Any, sentinel: object, **kw: Any) -> None:
        if sentinel is self._END:
            put = self._queue.put

            # Ctrl-C as the last piece is handed over: the thread may be done before the
            # caller's first wait for it, so the signal cannot wait for a join.
            def put_then_ctrl_c(item: object, *args: Any, **kwargs: Any) -> None:
                put(item, *args, **kwargs)
                if item is self._END:
                    os.kill(os.getpid(), signal.SIGINT)

            self._queue.put = put_then_ctrl_c
        real_stop(self, sentinel, **kw)

    monkeypatch.setattr(wf._PieceWriter, "_stop", interrupted_stop)
    with pytest.raises(KeyboardInterrupt):
        load(db, path)
    assert batches(db) == []
    assert not [t for t in threading.enumerate() if t.name == "voke-ingest-stager"]


def test_ctrl_c_reaches_a_load_whose_server_is_stalled(db, tmp_path, monkeypatch):
    # Another session holds ingest.tags: the first COPY waits. Ctrl-C cancels it rather than
    # waiting for the lock to go.
    path = tmp_path / "batch.csv"
    wf.make_sample(path, rows=50000, seed=4)
    setup = wf.connect(db)
    wf.ensure_schema(setup)
    setup.close()
    holder = psycopg.connect(db)
    holder.execute("lock table ingest.tags in access exclusive mode")
    real_cancel = psycopg.Connection.cancel_safe

    def cancel_and_ctrl_c_again(self: Any, *args: Any, **kw: Any) -> None:
        os.kill(os.getpid(), signal.SIGINT)  # the impatient second Ctrl-C lands during the cancel
        real_cancel(self, *args, **kw)

    monkeypatch.setattr(psycopg.Connection, "cancel_safe", cancel_and_ctrl_c_again)

    def progress(p: wf.LoadProgress) -> None:
        if p.phase == "validating" and p.rows > 25000:  # the first piece is waiting for the lock
            raise KeyboardInterrupt

    try:
        with pytest.raises(KeyboardInterrupt):
            load(db, path, progress=progress)
        # The interrupt did not wait for the lock: it is still held, in the same transaction.
        assert (
            holder.execute(
                "select count(*) from pg_locks where pid = pg_backend_pid() and mode = 'AccessExclusiveLock'"
            ).fetchone()[0]
            >= 1
        )  # type: ignore[index]
    finally:
        holder.close()
    assert not [t for t in threading.enumerate() if t.name == "voke-ingest-stager"]
    assert batches(db) == []


def _interrupt_the_commit(db: str, monkeypatch: pytest.MonkeyPatch, *, after: bool) -> None:
    """Ctrl-C as the load's COMMIT goes out: AFTER the server committed, or before it did.
    (The schema is made first: its own transaction is not the one to cut.)"""
    conn = wf.connect(db)
    wf.ensure_schema(conn)
    conn.close()
    real_exit = psycopg.Transaction.__exit__

    def exit_then_interrupt(self: Any, *exc: Any) -> Any:
        if self.savepoint_name or exc[0] is not None:  # only the load's own, outermost one
            return real_exit(self, *exc)
        if after:
            real_exit(self, *exc)
        raise KeyboardInterrupt

    monkeypatch.setattr(psycopg.Transaction, "__exit__", exit_then_interrupt)


def test_ctrl_c_once_the_server_committed_reports_loaded_and_names_the_rejects(db, tmp_path, monkeypatch):
    _interrupt_the_commit(db, monkeypatch, after=True)
    rejects = tmp_path / "rejects.csv"
    report = load(db, write(tmp_path, HEADER + GOOD + BAD), partial=True, rejects=rejects)
    assert report.status == "loaded" and batches(db) == [report.batch_id]
    assert rejects.exists() and scratch_files(tmp_path) == []
    assert report.anchor == "unavailable" and any("chain anchor run" in w for w in report.warnings)


def test_ctrl_c_before_the_server_committed_is_an_interrupt_and_nothing_is_loaded(db, tmp_path, monkeypatch):
    _interrupt_the_commit(db, monkeypatch, after=False)
    rejects = tmp_path / "rejects.csv"
    with pytest.raises(KeyboardInterrupt):
        load(db, write(tmp_path, HEADER + GOOD + BAD), partial=True, rejects=rejects)
    monkeypatch.undo()
    assert batches(db) == [] and not rejects.exists() and scratch_files(tmp_path) == []


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_ctrl_c_while_the_rejects_file_is_renamed_is_held(db, tmp_path, monkeypatch, signum, script_signals):
    real_replace = os.replace

    rejects = tmp_path / "rejects.csv"

    def interrupted_replace(src: Any, dst: Any) -> None:
        if Path(dst) == rejects:  # the rename after the COMMIT, not the one before it
            os.kill(os.getpid(), signum)
        real_replace(src, dst)

    monkeypatch.setattr(wf.os, "replace", interrupted_replace)
    script_handlers = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    report = load(db, write(tmp_path, HEADER + GOOD + BAD), partial=True, rejects=rejects)
    assert report.status == "loaded" and rejects.exists() and scratch_files(tmp_path) == []
    assert any("chain anchor run" in w for w in report.warnings)
    assert {s: signal.getsignal(s) for s in script_handlers} == script_handlers  # put back


def test_ctrl_c_again_while_the_commit_is_being_settled_is_exit_7_and_keeps_the_rejects(
    db, tmp_path, monkeypatch
):
    from voketag_ops.errors import NeedsOperatorError

    _interrupt_the_commit(db, monkeypatch, after=True)

    def impatient(*args: Any, **kw: Any) -> Any:
        raise KeyboardInterrupt  # the second Ctrl-C, while the outcome is looked up

    monkeypatch.setattr(wf, "_commit_outcome", impatient)
    rejects = tmp_path / "rejects.csv"
    with pytest.raises(NeedsOperatorError) as info:
        load(db, write(tmp_path, HEADER + GOOD + BAD), partial=True, rejects=rejects)
    assert info.value.exit_code == 7 and "ingest batches" in info.value.message
    kept = scratch_files(tmp_path)
    assert len(kept) == 1 and kept[0] in (info.value.hint or "")  # the rows left out are not lost


_KILLED_BEFORE_THE_RENAME = """
import os, sys
from datetime import UTC, datetime
from pathlib import Path
from voketag_ops.config import IngestSettings
from voketag_ops.workflows import ingest as wf

def killed(self, target):
    os._exit(9)  # as kill -9: no finally, no clean-up

wf._RejectsWriter.move_to = killed
wf.load_batch(sys.argv[1], Path(sys.argv[2]), settings=IngestSettings(), partial=True,
              rejects=Path(sys.argv[3]), now=datetime(2025, 6, 1, tzinfo=UTC))
"""


def _load_killed_before_the_rename(db: str, batch: Path, rejects: Path) -> None:
    import subprocess
    import sys

    done = subprocess.run(
        [sys.executable, "-c", _KILLED_BEFORE_THE_RENAME, db, str(batch), str(rejects)], timeout=120
    )
    assert done.returncode == 9


def hidden(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.name.startswith("."))


def test_a_voke_killed_between_the_commit_and_the_rejects_rename_leaves_them_to_the_rerun(db, tmp_path):
    batch = write(tmp_path, HEADER + GOOD + BAD)
    rejects = tmp_path / "rejects.csv"
    _load_killed_before_the_rename(db, batch, rejects)
    assert len(batches(db)) == 1 and not rejects.exists()  # committed, its rejects not named yet
    report = load(db, batch, partial=True, rejects=rejects)
    assert report.status == "duplicate" and report.rejects_file == str(rejects)
    assert any(str(rejects) in w for w in report.warnings)
    lines = rejects.read_text(encoding="utf-8").splitlines()
    assert lines[0] == "line,column,code,message,record" and lines[1].startswith("3,15,bad_timestamp,")
    assert hidden(tmp_path) == []
    again = load(db, batch, partial=True, rejects=rejects)  # delivered once; the next rerun is plain
    assert again.status == "duplicate" and again.rejects_file is None and again.warnings == []


def test_a_duplicate_with_a_new_rejects_path_says_where_the_rejected_rows_went(db, tmp_path):
    batch = write(tmp_path, HEADER + GOOD + BAD)
    first = load(db, batch, partial=True, rejects=tmp_path / "first.csv")
    assert first.status == "loaded" and first.rows_rejected == 1
    rejects = tmp_path / "second.csv"
    again = load(db, batch, partial=True, rejects=rejects)
    assert again.status == "duplicate" and again.rejects_file is None and not rejects.exists()
    (warning,) = again.warnings
    assert f"already loaded as batch {first.batch_id}" in warning and "1 rejected row(s)" in warning
    assert "written by that load" in warning and f"nothing was written to {rejects}" in warning


def test_the_rejects_of_a_load_that_never_committed_are_not_delivered(db, tmp_path):
    # A load that rolled back may have had the same batch number as the one that committed
    # later; its transaction time was not the same.
    batch = write(tmp_path, HEADER + GOOD + BAD)
    rejects = tmp_path / "rejects.csv"
    report = load(db, batch, partial=True, rejects=tmp_path / "first.csv")
    assert report.status == "loaded" and report.batch_id is not None
    stale = wf.LoadReport(status="loaded", file="", file_sha256=report.file_sha256, file_bytes=0,
                          batch_id=report.batch_id, loaded_at="2020-01-01T00:00:00.000001Z")  # fmt: skip
    left = wf._pending_rejects_path(rejects, stale)
    left.write_text("line,column,code,message,record\n99,1,stale,stale,x\n", encoding="utf-8")
    again = load(db, batch, partial=True, rejects=rejects)
    assert again.status == "duplicate" and again.rejects_file is None and not rejects.exists()
    assert left.exists()  # not this batch's: left alone


def test_the_left_rejects_are_delivered_from_a_directory_that_cannot_be_listed(db, tmp_path, monkeypatch):
    batch = write(tmp_path, HEADER + GOOD + BAD)
    rejects = tmp_path / "rejects.csv"
    _load_killed_before_the_rename(db, batch, rejects)

    def unlistable(path: Any = ".") -> list[str]:
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(wf.os, "listdir", unlistable)  # a write-only directory (mode 0333)
    report = load(db, batch, partial=True, rejects=rejects)
    assert report.status == "duplicate" and report.rejects_file == str(rejects) and rejects.exists()


def test_a_load_with_ctrl_c_ignored_is_not_interrupted(db, tmp_path, monkeypatch):
    # A background job (`voke ingest load ... &` from a script) starts with SIGINT ignored.
    path = tmp_path / "batch.csv"
    wf.make_sample(path, rows=20000, seed=5)
    real_stop = wf._PieceWriter._stop

    def ctrl_c_while_stopping(self: Any, sentinel: object, **kw: Any) -> None:
        os.kill(os.getpid(), signal.SIGINT)
        real_stop(self, sentinel, **kw)

    monkeypatch.setattr(wf._PieceWriter, "_stop", ctrl_c_while_stopping)
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        report = load(db, path)
    finally:
        signal.signal(signal.SIGINT, previous)
    assert report.status == "loaded" and report.rows_loaded == 20000


def test_a_dry_run_making_the_schema_does_not_hold_a_load_past_its_lock_timeout(db, tmp_path):
    from voketag_ops.errors import PreconditionError

    inside, done = threading.Event(), threading.Event()

    def slow(p: wf.LoadProgress) -> None:
        if p.phase == "validating":
            inside.set()
            done.wait(30)

    dry = threading.Thread(
        target=lambda: load(db, write(tmp_path, HEADER + GOOD, "dry.csv"), dry_run=True, progress=slow),
        daemon=True,
    )
    dry.start()
    try:
        assert inside.wait(30)
        with pytest.raises(PreconditionError):
            wf.load_batch(
                db, write(tmp_path, HEADER + GOOD), settings=IngestSettings(lock_timeout=0.2), now=NOW
            )
    finally:
        done.set()
        dry.join(30)
    assert load(db, write(tmp_path, HEADER + GOOD)).status == "loaded"


# -- the session's time zone ----------------------------------------------------------------------


def test_a_year_one_time_proves_whatever_the_session_time_zone(db, tmp_path):
    west = make_conninfo(db, options="-c timezone=America/New_York")
    report = load(west, write(tmp_path, HEADER + "Y1,SY,Old,F1,0001-01-01T00:00:00Z\n"))
    assert report.status == "loaded"
    proof = wf.prove_tag(west, "Y1")
    assert proof.found and proof.valid and proof.intact


@pytest.mark.parametrize(
    "conninfo",
    [
        "postgresql://u:hunter2secret@127.0.0.1:notaport/db",
        "postgresql://u:hunter2secret@localhost:notaport/db",  # looked up before libpq checks the port
        "host=127.0.0.1 sslmode=bogus password=hunter2secret",
        "host=127.0.0.1 ssl_min_protocol_version=bogus password=hunter2secret",
        "host=a,b port=1,2,3 password=hunter2secret",
        # A raw '/' in the password: libpq reads 'hunter2' as the port and the rest as the database.
        "postgresql://u:hunter2secret/x@127.0.0.1:5432/db",
    ],
)
def test_a_malformed_db_setting_is_a_usage_error_that_echoes_nothing(tmp_path, conninfo):
    with pytest.raises(UsageError) as info:
        load(conninfo, write(tmp_path, HEADER + GOOD))
    assert info.value.exit_code == 2 and "hunter2" not in info.value.message
    assert "hunter2" not in wf.describe_target(conninfo)  # what errors and audit events name


def test_ctrl_c_while_the_root_is_sent_for_anchoring_reports_the_batch_loaded(db, tmp_path):
    def anchorer(root: bytes, size: int, batch_id: int) -> tuple[str, str | None]:
        raise KeyboardInterrupt

    report = load(db, write(tmp_path, HEADER + GOOD), anchorer=anchorer)
    assert report.status == "loaded" and batches(db) == [report.batch_id]
    assert report.anchor == "unavailable" and any("chain anchor run" in w for w in report.warnings)


def test_once_committed_one_ctrl_c_is_held_and_a_second_gives_way(db, tmp_path):
    calls: list[int] = []

    def anchorer(root: bytes, size: int, batch_id: int) -> tuple[str, str | None]:
        calls.append(batch_id)
        os.kill(os.getpid(), signal.SIGINT)  # held: the anchoring goes on
        if len(calls) == 1:
            return "pending", "a1"
        os.kill(os.getpid(), signal.SIGINT)  # a second one: a hanging step can be stopped
        raise AssertionError("not reached")

    first = load(db, write(tmp_path, HEADER + GOOD), anchorer=anchorer)
    assert first.status == "loaded" and first.anchor == "pending" and first.warnings == []
    second = load(db, write(tmp_path, HEADER + GOOD.replace("T1", "T7"), "b.csv"), anchorer=anchorer)
    assert second.status == "loaded" and second.anchor == "unavailable"
    assert any("chain anchor run" in w for w in second.warnings)
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


# -- text encodings -----------------------------------------------------------------------------------


def test_a_client_encoding_of_the_users_does_not_garble_what_is_sealed(db, tmp_path, monkeypatch):
    monkeypatch.setenv("PGCLIENTENCODING", "LATIN1")  # or client_encoding= in --db
    name = "Chaussure d’été 😀"
    path = write(tmp_path, HEADER + f"E1,S1,{name},Fé,2024-01-01T00:00:00Z\n")
    report = load(db + " client_encoding=LATIN1", path)
    assert report.status == "loaded"
    monkeypatch.delenv("PGCLIENTENCODING")
    with psycopg.connect(db) as conn:
        stored = conn.execute("select product_name, factory_id from ingest.tags").fetchone()
    assert stored == (name, "Fé")
    proof = wf.prove_tag(db, "E1")
    assert proof.found and proof.intact


@pytest.mark.parametrize("encoding", ["LATIN1", "SQL_ASCII"])
def test_a_database_that_does_not_store_utf8_is_refused_before_anything_is_written(
    database_with, local_env, tmp_path, encoding
):
    from voketag_ops.errors import PreconditionError

    with database_with(f"encoding '{encoding}' locale 'C' template template0") as name:
        target = local_env.primary().conninfo(name)
        with pytest.raises(PreconditionError, match=f"encoded {encoding}: ingest needs a UTF8 database"):
            load(target, write(tmp_path, HEADER + GOOD))
        with psycopg.connect(target) as conn:
            assert conn.execute("select to_regnamespace('ingest')").fetchone() == (None,)
