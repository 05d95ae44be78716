"""workflows.ingest on the real local PostgreSQL: the stored hash is the hash of the bytes
loaded, and a connection lost during COMMIT is settled (loaded / exit 4 / exit 7).

The COMMIT cases put a small PostgreSQL-protocol proxy between the load and the server;
it cuts the connection at the one moment that matters: just before the COMMIT reaches
the server, or just after the server has committed and before its answer reaches the load.
"""

from __future__ import annotations

import hashlib
import os
import socket
import struct
import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict

from voketag_ops.config import IngestSettings
from voketag_ops.errors import BackendError, NeedsOperatorError
from voketag_ops.workflows import ingest as wf

pytestmark = pytest.mark.pg

NOW = datetime(2025, 6, 1, tzinfo=UTC)


@pytest.fixture
def db(local_env: Any, pg_database: str) -> str:
    return local_env.primary().conninfo(pg_database)


def load(db: str, path: Path, **kw: Any) -> wf.LoadReport:
    return wf.load_batch(db, path, settings=IngestSettings(), now=NOW, **kw)


def batches(db: str) -> list[tuple[int, str, int]]:
    with psycopg.connect(db) as conn:
        if conn.execute("select to_regclass('ingest.batches')").fetchone()[0] is None:
            return []
        return conn.execute(
            "select b.batch_id, b.file_sha256, (select count(*) from ingest.tags t where t.batch_id = b.batch_id)"
            " from ingest.batches b order by 1"
        ).fetchall()


def sample(tmp_path: Path, rows: int, seed: int = 1, name: str = "batch.csv") -> Path:
    path = tmp_path / name
    wf.make_sample(path, rows=rows, seed=seed)
    return path


# -- the hash is the hash of what was loaded -------------------------------------------------------


def test_a_file_replaced_mid_load_is_loaded_and_stored_as_the_bytes_read(db, tmp_path):
    path = sample(tmp_path, 30000)  # several 1 MiB reads
    original = hashlib.sha256(path.read_bytes()).hexdigest()
    other = sample(tmp_path, 100, seed=2, name="other.csv")

    def progress(p: wf.LoadProgress) -> None:
        if p.phase == "validating" and other.exists():
            os.replace(other, path)  # a new upload renamed over the file being loaded

    report = load(db, path, progress=progress)
    assert report.status == "loaded" and report.rows_loaded == 30000
    assert report.file_sha256 == original
    assert batches(db) == [(report.batch_id, original, 30000)]


def test_a_file_written_to_mid_load_is_rejected_and_nothing_is_written(db, tmp_path):
    path = sample(tmp_path, 30000)
    data = path.read_bytes()
    at = data.rfind(b"\n", 0, len(data) - 1) + 3  # a hex digit of the last row's tag_id: still valid
    wrote: list[bool] = []

    def progress(p: wf.LoadProgress) -> None:
        if p.phase == "validating" and not wrote:
            with path.open("r+b") as fh:  # the uploader is still writing: a byte near the end changes
                fh.seek(at)
                fh.write(b"7" if data[at : at + 1] != b"7" else b"8")
            wrote.append(True)

    report = load(db, path, progress=progress)
    assert report.status == "rejected" and not report.ok
    assert [(e["line"], e["code"]) for e in report.errors] == [(None, "file_changed")]
    assert (report.rows_total, report.rows_loaded, report.rows_rejected) == (30000, 0, 30000)
    assert batches(db) == []
    assert load(db, path).status == "loaded"  # complete now


@pytest.mark.parametrize("repeats", [False, True], ids=["unique", "with a repeated tag_id"])
def test_a_row_appended_mid_load_rejects_every_row_read(db, tmp_path, repeats):
    # The whole file is refused: rows_rejected counts every row read, as for `truncated`.
    path = sample(tmp_path, 30000)
    if repeats:  # the second pass, which finds where the repeats are, is the one checked
        with path.open("ab") as fh:
            fh.write(path.read_bytes().splitlines(keepends=True)[1])
    rows = 30000 + repeats
    appended: list[bool] = []

    def progress(p: wf.LoadProgress) -> None:
        if p.phase == "validating" and not appended:
            with path.open("ab") as fh:  # the uploader is still writing
                fh.write(b"TZZZ2,SKU-00710,Heritage Satchel,FAC-08,2024-11-30T23:41:28Z,,,\n")
            appended.append(True)

    report = load(db, path, progress=progress)
    assert [(e["line"], e["code"]) for e in report.errors] == [(None, "file_changed")]
    assert report.rows_total in (rows, rows + 1)  # the new row, if the pass got that far
    assert report.rows_rejected == report.rows_total and report.rows_loaded == 0
    assert batches(db) == []


# -- a connection lost during COMMIT -----------------------------------------------------------------


class CommitCutter:
    """A TCP proxy to the server's socket that cuts the load's connection at its COMMIT.

    MODE "before": the COMMIT never reaches the server. "after": the server commits, and the
    connection is cut before its answer gets back. REFUSE_AFTER: once cut, every new
    connection is refused (the database is unreachable)."""

    def __init__(self, unix_path: str, mode: str, refuse_after: bool = False) -> None:
        self.unix_path, self.mode, self.refuse_after = unix_path, mode, refuse_after
        self.cut = threading.Event()
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self._threads: list[threading.Thread] = []
        self._spawn(self._accept)

    def _spawn(self, target: Any, *args: Any) -> None:
        t = threading.Thread(target=target, args=args, daemon=True)
        t.start()
        self._threads.append(t)

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            if self.cut.is_set() and self.refuse_after:
                client.close()
                continue
            # One message per send: with Nagle each small one after the first waits for the
            # client's delayed ACK (~40 ms a statement, ~2 s a test).
            client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            server = socket.socket(socket.AF_UNIX)
            server.connect(self.unix_path)
            state = {"armed": False, "swallow": False}
            self._spawn(self._client_to_server, client, server, state)
            self._spawn(self._server_to_client, server, client, state)

    @staticmethod
    def _read(sock: socket.socket, n: int) -> bytes:
        data = b""
        while len(data) < n:
            part = sock.recv(n - len(data))
            if not part:
                raise OSError("closed")
            data += part
        return data

    def _message(self, sock: socket.socket, typed: bool = True) -> tuple[bytes, bytes]:
        kind = self._read(sock, 1) if typed else b""
        (length,) = struct.unpack("!I", head := self._read(sock, 4))
        return kind, head + self._read(sock, length - 4)

    def _close(self, *socks: socket.socket) -> None:
        for s in socks:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            s.close()

    def _client_to_server(self, client: socket.socket, server: socket.socket, state: dict[str, bool]) -> None:
        try:
            _, startup = self._message(client, typed=False)
            server.sendall(startup)
            while True:
                kind, body = self._message(client)
                if kind in (b"Q", b"P") and b"COPY ingest.tags" in body:
                    state["armed"] = True  # this session loads the batch: its COMMIT is the one
                if state["armed"] and kind == b"Q" and body[4:].startswith(b"COMMIT"):
                    if self.mode == "before":
                        self.cut.set()
                        self._close(client, server)
                        return
                    state["swallow"] = True
                server.sendall(kind + body)
        except OSError:
            self._close(client, server)

    def _server_to_client(self, server: socket.socket, client: socket.socket, state: dict[str, bool]) -> None:
        try:
            while True:
                kind, body = self._message(server)
                if state["swallow"]:
                    if kind == b"Z":  # the COMMIT is done on the server: now cut
                        self.cut.set()
                        self._close(client, server)
                        return
                    continue
                client.sendall(kind + body)
        except OSError:
            self._close(client, server)

    def close(self) -> None:
        self.listener.close()


@pytest.fixture
def cutter(local_env: Any, pg_database: str) -> Iterator[Any]:
    made: list[CommitCutter] = []

    def make(mode: str, refuse_after: bool = False) -> tuple[CommitCutter, str]:
        primary = local_env.primary()
        proxy = CommitCutter(f"{primary.socket_dir}/.s.PGSQL.{primary.port}", mode, refuse_after)
        made.append(proxy)
        user = conninfo_to_dict(primary.conninfo(pg_database))["user"]
        conninfo = f"host=127.0.0.1 port={proxy.port} user={user} dbname={pg_database} sslmode=disable gssencmode=disable"
        return proxy, conninfo

    yield make
    for proxy in made:
        proxy.close()


def test_connection_lost_before_the_commit_landed_is_exit_4_and_nothing_changed(db, tmp_path, cutter):
    proxy, via = cutter("before")
    path = sample(tmp_path, 2000)
    with pytest.raises(BackendError) as info:
        load(via, path)
    assert proxy.cut.is_set()
    assert info.value.exit_code == 4
    assert "not committed" in info.value.message and "nothing was changed" in info.value.message
    assert batches(db) == []
    assert load(db, path).status == "loaded"


def test_a_rolled_back_load_whose_number_another_run_took_reports_duplicate(
    db, tmp_path, cutter, monkeypatch
):
    # This load's COMMIT never landed; another run loaded the same file meanwhile. The batch
    # found under the file's hash is the other run's (told apart by number and loaded_at, since
    # numbers follow the table), so this one is a duplicate, never a second "loaded".
    proxy, via = cutter("before")
    path = sample(tmp_path, 2000)
    real_outcome = wf._commit_outcome
    other: list[wf.LoadReport] = []

    def another_run_meanwhile(*args: Any, **kwargs: Any) -> Any:
        other.append(load(db, path))
        return real_outcome(*args, **kwargs)

    monkeypatch.setattr(wf, "_commit_outcome", another_run_meanwhile)
    report = load(via, path)
    assert proxy.cut.is_set()
    assert other[0].status == "loaded" and other[0].batch_id == report.batch_id
    assert report.status == "duplicate" and report.loaded_at == other[0].loaded_at
    assert not any("found the batch committed" in w for w in report.warnings)
    assert batches(db) == [(other[0].batch_id, report.file_sha256, 2000)]


def test_connection_lost_after_the_server_committed_reports_loaded(db, tmp_path, cutter):
    proxy, via = cutter("after")
    path = sample(tmp_path, 2000)
    report = load(via, path)
    assert proxy.cut.is_set()
    assert report.status == "loaded" and report.rows_loaded == 2000
    assert any("found the batch committed" in w for w in report.warnings)
    assert batches(db) == [(report.batch_id, report.file_sha256, 2000)]
    assert load(db, path).status == "duplicate"


def test_connection_lost_during_commit_with_the_database_unreachable_is_exit_7(
    db, tmp_path, cutter, monkeypatch
):
    monkeypatch.setattr(wf, "COMMIT_CHECK_DELAY", 0.05)
    proxy, via = cutter("after", refuse_after=True)
    path = sample(tmp_path, 2000)
    with pytest.raises(NeedsOperatorError) as info:
        load(via, path)
    assert proxy.cut.is_set()
    assert info.value.exit_code == 7
    assert "voke ingest batches" in info.value.message and "\n" not in info.value.message
    assert "duplicate" in (info.value.hint or "")
    # It had in fact committed: the check the message asks for, and a rerun, say so.
    assert [b[2] for b in batches(db)] == [2000]
    assert load(db, path).status == "duplicate"


def test_the_cli_reports_an_unsettled_commit_as_exit_7_on_one_line(voke, db, tmp_path, cutter, monkeypatch):
    monkeypatch.setattr(wf, "COMMIT_CHECK_DELAY", 0.05)
    _, via = cutter("after", refuse_after=True)
    path = sample(tmp_path, 500)
    result = voke("ingest", "load", str(path), "--db", via, "--json")
    assert result.exit_code == 7, result.stdout + result.stderr
    error = result.json["error"]
    assert error["exit_code"] == 7 and "voke ingest batches" in error["message"]
    assert "\n" not in error["message"] and "Traceback" not in result.stderr
