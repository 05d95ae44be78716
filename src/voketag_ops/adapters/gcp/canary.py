"""The cloud drills' canary: rows with a sequence number and a timestamp written into a small
table of a Cloud SQL instance before the cut, and read back from the instance recovery
produced. voke logs in the way rotation's login test does (psycopg to the instance's
address, the JSON credential of a DB-password secret); the password never leaves the
connect call.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from voketag_ops.errors import ConnectivityError, DatabaseError, StepTimeoutError

TABLE = "voke_drill_canary"
_DDL = (
    f"create table if not exists {TABLE} (run_id text not null, seq integer not null, "
    "written_at timestamptz not null default clock_timestamp(), primary key (run_id, seq))"
)


def _now() -> datetime:
    return datetime.now(timezone.utc)


@dataclass(frozen=True)
class CanaryWrite:
    """One canary insert as the client saw it (its own autocommit transaction)."""

    seq: int
    sent_at: datetime
    done_at: datetime
    ok: bool


class CanaryDb:
    """Logs in to any instance of one environment with one credential."""

    def __init__(self, cred: Mapping[str, Any], *, port: int, timeout: float = 5.0) -> None:
        missing = [k for k in ("username", "password", "dbname") if not cred.get(k)]
        if missing:
            raise DatabaseError(f"the canary credential has no {', '.join(missing)}")
        self._cred = dict(cred)
        self.port = port
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
                port=self.port,
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

    def write(
        self,
        host: str,
        run_id: str,
        *,
        seconds: float,
        interval: float,
        sleep: Callable[[float], None] = time.sleep,
    ) -> list[CanaryWrite]:
        """Create the table if needed, then insert one row every INTERVAL for SECONDS."""
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
                sent = _now()
                try:
                    conn.execute(f"insert into {TABLE} (run_id, seq) values (%s, %s)", (run_id, seq))
                    ok = True
                except psycopg.Error:
                    ok = False
                writes.append(CanaryWrite(seq, sent, _now(), ok))
                if time.monotonic() >= end:
                    break
                sleep(interval)
        return writes

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
        commits); returns when it answered and the rows found."""
        deadline = time.monotonic() + timeout
        last = "no answer"
        while True:
            try:
                rows = self.read(host, run_id)
                if write_seq is not None:
                    with self.connect(host) as conn:
                        conn.execute(
                            f"insert into {TABLE} (run_id, seq) values (%s, %s)", (run_id, write_seq)
                        )
                return _now(), rows
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
