"""The cloud drills' canary: rows with a sequence number and a timestamp written into a small
table of a Cloud SQL instance before the cut, and read back from the instance recovery
produced. voke logs in the way rotation's login test does (psycopg to the instance's
address, the JSON credential of a DB-password secret); the password never leaves the
connect call.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

from voketag_ops.clock import instant
from voketag_ops.core.wal import WAL_POSITION_SQL
from voketag_ops.errors import ConnectivityError, DatabaseError, StepTimeoutError

TABLE = "voke_drill_canary"
_DDL = (
    f"create table if not exists {TABLE} (run_id text not null, seq integer not null, "
    "written_at timestamptz not null default clock_timestamp(), primary key (run_id, seq))"
)


def _now() -> datetime:
    return instant()  # inside a drill: its steady clock (voketag_ops.clock)


def _first_line(exc: BaseException) -> str:
    """The error's class and the first line of its message (a server error such as
    `permission denied for table ...` or `no unique or exclusion constraint matching the ON
    CONFLICT specification`: it names no password; CanaryDb also redacts its own)."""
    line = (str(exc).strip().splitlines() or [""])[0]
    return f"{type(exc).__name__}: {line}" if line else type(exc).__name__


# the table the canary needs, for hints: ON CONFLICT needs its primary key
DDL_HINT = _DDL


_INSERT = (
    # ON CONFLICT: a retry of a write whose commit landed but whose answer was lost (a
    # promotion drops connections) is not a unique violation; the row is then read back.
    f"insert into {TABLE} (run_id, seq) values (%s, %s) on conflict (run_id, seq) do nothing "
    "returning written_at"
)
_READ_ONE = f"select written_at from {TABLE} where run_id = %s and seq = %s"


@dataclass(frozen=True)
class CanaryWrite:
    """One canary insert (its own autocommit transaction): client times around it, and the
    row's `written_at` (the server's clock_timestamp()) when it committed."""

    seq: int
    sent_at: datetime
    done_at: datetime
    ok: bool
    written_at: datetime | None = None
    error: str | None = None  # why it failed: the server's message, first line (no credential)


class CanaryDb:
    """Logs in to any instance of one environment with one credential."""

    def __init__(self, cred: Mapping[str, Any], *, port: int, timeout: float = 5.0) -> None:
        missing = [k for k in ("username", "password", "dbname") if not cred.get(k)]
        if missing:
            raise DatabaseError(f"the canary credential has no {', '.join(missing)}")
        self._cred = dict(cred)
        self.port = port
        self.ports: dict[str, int] = {}  # hosts reached on another port (a relay to the DR replica)
        self.timeout = timeout

    @property
    def username(self) -> str:
        return str(self._cred["username"])

    def connect(self, host: str) -> Any:
        """An autocommit psycopg connection to HOST; ConnectivityError (first line only) when it fails."""
        import psycopg

        try:
            return psycopg.connect(
                host=host,
                port=self.ports.get(host, self.port),
                user=self._cred["username"],
                password=self._cred["password"],
                dbname=self._cred["dbname"],
                connect_timeout=max(1, int(self.timeout)),
                application_name="voke-drill-canary",
                autocommit=True,
            )
        except psycopg.Error as exc:
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise ConnectivityError(f"cannot log in to the database at {host}:{self.port}: {first}") from None

    @staticmethod
    def insert(conn: Any, run_id: str, seq: int) -> CanaryWrite:
        """Insert RUN_ID's row SEQ on CONN, idempotently (a row an earlier attempt committed
        counts, with its own written_at)."""
        import psycopg

        sent = _now()
        try:
            row = conn.execute(_INSERT, (run_id, seq)).fetchone()
            if row is None:
                row = conn.execute(_READ_ONE, (run_id, seq)).fetchone()
        except psycopg.Error as exc:
            return CanaryWrite(seq, sent, _now(), False, error=_first_line(exc))
        return CanaryWrite(seq, sent, _now(), row is not None, row[0] if row else None)

    def write(
        self,
        host: str,
        run_id: str,
        *,
        seconds: float,
        interval: float,
        after: int = 0,
        sleep: Callable[[float], None] = time.sleep,
    ) -> tuple[list[CanaryWrite], datetime]:
        """Create the table if needed, insert one row every INTERVAL for SECONDS, then read the
        cut: the server's clock_timestamp() on the same connection, so every row written
        before it has committed and has written_at <= cut, on the server's clock (no client
        clock, no skew). Then insert AFTER more rows (written_at > cut), which a recovery to
        the cut must not contain. Returns the writes and the cut."""
        import psycopg

        writes: list[CanaryWrite] = []
        with self.connect(host) as conn:
            try:
                conn.execute(_DDL)
            except psycopg.Error as exc:
                raise DatabaseError(
                    f"cannot create {TABLE} as {self.username}: {type(exc).__name__}",
                    hint="give the canary's login CREATE on the schema (or create the table once as the owner)",
                ) from None
            end = time.monotonic() + seconds
            seq = 0
            while True:
                seq += 1
                writes.append(self.insert(conn, run_id, seq))
                if time.monotonic() >= end:
                    break
                sleep(interval)
            try:
                cut = conn.execute("select clock_timestamp()").fetchone()[0]
            except psycopg.Error as exc:
                raise DatabaseError(
                    f"cannot read the server clock at {host} after the canary: {type(exc).__name__}"
                ) from None
            for _ in range(after):
                seq += 1
                writes.append(self.insert(conn, run_id, seq))
        return [self._redacted(w) for w in writes], cut

    def _redacted(self, write: CanaryWrite) -> CanaryWrite:
        """WRITE with the credential's password (and user) masked in its error, should a
        server message ever echo it."""
        if not write.error:
            return write
        text = write.error
        for secret in {str(self._cred["password"])}:
            if secret:
                text = text.replace(secret, "***")
        return replace(write, error=text)

    def wal_position(self, host: str) -> str | None:
        """Where HOST's data stands (the WAL it has written, or replayed as a replica), for the
        drill journal's integrity record; None when it cannot be read."""
        try:
            with self.connect(host) as conn:
                row = conn.execute("select " + WAL_POSITION_SQL).fetchone()
        except Exception:  # best effort: the drill's answer does not depend on it
            return None
        return row[0] if row else None

    def read(self, host: str, run_id: str) -> dict[int, datetime]:
        """Sequence number -> written_at of RUN_ID's rows on HOST."""
        with self.connect(host) as conn:
            rows = conn.execute(
                f"select seq, written_at from {TABLE} where run_id = %s order by seq", (run_id,)
            ).fetchall()
        return {int(seq): at for seq, at in rows}

    def wait_answer(
        self,
        host: str,
        run_id: str,
        *,
        timeout: float,
        poll: float,
        write_seq: int | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> tuple[datetime, dict[int, datetime]]:
        """Poll HOST until the canary query answers (and, with WRITE_SEQ, a canary write
        commits: retried idempotently, so an attempt whose answer was lost still counts);
        returns when it answered and the rows found."""
        deadline = time.monotonic() + timeout
        last = "no answer"
        while True:
            try:
                rows = self.read(host, run_id)
                if write_seq is None:
                    return _now(), rows
                with self.connect(host) as conn:
                    if self.insert(conn, run_id, write_seq).ok:
                        return _now(), rows
                last = "the canary write did not commit"
            except (ConnectivityError, DatabaseError) as exc:
                last = exc.message
            except Exception as exc:  # psycopg errors of the query itself
                last = type(exc).__name__
            if time.monotonic() >= deadline:
                raise StepTimeoutError(f"the database at {host} did not answer the canary query: {last}")
            sleep(poll)

    def delete(self, host: str, run_id: str) -> int:
        """Remove RUN_ID's rows from HOST (the drill's clean-up of the production primary)."""
        with self.connect(host) as conn:
            cur = conn.execute(f"delete from {TABLE} where run_id = %s", (run_id,))
            return int(cur.rowcount or 0)
