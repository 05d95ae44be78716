"""The PostgreSQL side of `voke dr verify`: checksums over primary-key ranges computed
inside PostgreSQL (core/tablediff.py drives the descent).

Row hash: the first 64 bits of md5(row::text), portable across versions and platforms
(hashtextextended is faster but not guaranteed stable between releases). Both sessions
fix the settings that change a row's text (TimeZone, DateStyle, IntervalStyle,
extra_float_digits, bytea_output) and read from one REPEATABLE READ snapshot, so every
question is answered at the same logical point.

Errors reading a side are translated in one place (`reading`), naming the side: data that
PostgreSQL finds corrupt (SQLSTATE XX001 data_corrupted, XX002 index_corrupted) is `Unreadable`,
which `dr verify` reports as a difference (exit 1); any other server or connection error is
BackendError (exit 4).
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from voketag_ops.errors import BackendError, UsageError

if TYPE_CHECKING:
    import psycopg

    from voketag_ops.adapters.local.postgres import PgNode

Key = tuple[Any, ...]
# The row is named by an alias no column will have: a column named like the alias (`t`) would
# hide the whole row, and only that column would be hashed.
_ROW = "_voke_row"  # (the queries below name it too)
_ROW_HASH = f"('x' || left(md5({_ROW}::text), 16))::bit(64)::bigint"
_SESSION = (
    "set timezone = 'UTC'",
    "set datestyle = 'ISO, MDY'",
    "set intervalstyle = 'postgres'",
    "set extra_float_digits = 3",
    "set bytea_output = 'hex'",
    "set statement_timeout = 0",
)


class Unreadable(Exception):
    """PostgreSQL found SIDE's data corrupt while reading it (SQLSTATE XX001, XX002): not a
    failure of the run but its answer: that side cannot be read, so it is not the other."""

    def __init__(self, side: str, label: str, detail: str, sqlstate: str) -> None:
        super().__init__(f"the {label} could not be read: {detail}")
        self.side, self.label, self.detail, self.sqlstate = side, label, detail, sqlstate


@contextmanager
def reading(conn: psycopg.Connection[Any], side: str, label: str) -> Iterator[None]:
    """Errors of queries on CONN, the SIDE ("source" or "target") LABEL names ("target leader
    (primary on port 5433)"): corrupt data is Unreadable, any other database error BackendError."""
    import psycopg

    try:
        yield
    except (psycopg.errors.DataCorrupted, psycopg.errors.IndexCorrupted) as exc:
        raise Unreadable(side, label, _first_line(exc), exc.sqlstate or "") from None
    except psycopg.Error as exc:
        if conn.broken or conn.closed:
            raise BackendError(f"the {label} closed the connection: {_first_line(exc)}") from None
        raise BackendError(f"could not read the {label}: {_first_line(exc)}") from None


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0].strip() if lines else type(exc).__name__


@dataclass(frozen=True)
class TableInfo:
    schema: str
    name: str
    key_columns: tuple[str, ...]
    key_types: tuple[str, ...]

    @property
    def qualified(self) -> str:
        return f"{self.schema}.{self.name}"


@contextmanager
def snapshot(node: PgNode, dbname: str) -> Iterator[tuple[psycopg.Connection[Any], str]]:
    """A connection inside a read-only REPEATABLE READ transaction, and the LSN it reads at;
    closed at the end of the block (a connection lost meanwhile is BackendError naming NODE)."""
    with node.connect(dbname, timeout=10) as conn:
        for statement in _SESSION:
            conn.execute(statement)
        conn.execute("begin transaction isolation level repeatable read read only")
        row = conn.execute(
            "select case when pg_is_in_recovery() then pg_last_wal_replay_lsn() else pg_current_wal_lsn() end::text"
        ).fetchone()
        yield conn, str(row[0]) if row else ""


def list_tables(conn: psycopg.Connection[Any]) -> tuple[list[TableInfo], list[str]]:
    """User tables with a primary key, and the names of those without one."""
    rows = conn.execute(
        """
        select n.nspname, c.relname,
               (select array_agg(a.attname order by k.ord)
                  from unnest(i.indkey) with ordinality k(attnum, ord)
                  join pg_attribute a on a.attrelid = c.oid and a.attnum = k.attnum),
               (select array_agg(format_type(a.atttypid, a.atttypmod) order by k.ord)
                  from unnest(i.indkey) with ordinality k(attnum, ord)
                  join pg_attribute a on a.attrelid = c.oid and a.attnum = k.attnum)
          from pg_class c
          join pg_namespace n on n.oid = c.relnamespace
          left join pg_index i on i.indrelid = c.oid and i.indisprimary
         where c.relkind in ('r', 'p') and not c.relispartition
           and n.nspname not in ('pg_catalog', 'information_schema') and n.nspname not like 'pg\\_%'
         order by 1, 2
        """
    ).fetchall()
    with_key = [TableInfo(r[0], r[1], tuple(r[2]), tuple(r[3])) for r in rows if r[2]]
    without = [f"{r[0]}.{r[1]}" for r in rows if not r[2]]
    return with_key, without


def qualified_name(name: str) -> str:
    """A --table as schema.table (public when no schema is given)."""
    return name if "." in name else f"public.{name}"


def resolve_tables(available: list[TableInfo], wanted: Sequence[str]) -> list[TableInfo]:
    by_name = {t.qualified: t for t in available}
    chosen = []
    for name in wanted:
        qualified = qualified_name(name)
        if qualified not in by_name:
            raise UsageError(f"no table {name!r} with a primary key on the source")
        chosen.append(by_name[qualified])
    return chosen


class PgSide:
    """core.tablediff.Side for one table over one snapshot connection, the SIDE ("source" or
    "target") LABEL names; its queries fail as `reading` translates."""

    def __init__(self, conn: psycopg.Connection[Any], table: TableInfo, *, side: str, label: str) -> None:
        from psycopg import sql

        self.conn = conn
        self.table = table
        self.side, self.label = side, label
        self.queries = 0
        self._sql = sql
        self._t = sql.Identifier(table.schema, table.name)
        self._k = sql.SQL(", ").join(sql.Identifier(c) for c in table.key_columns)
        self._n = len(table.key_columns)
        self._hash = sql.SQL(_ROW_HASH)

    def _range(self, lo: Key | None, hi: Key | None) -> tuple[Any, list[Any]]:
        sql = self._sql
        ph = sql.SQL(", ").join(sql.Placeholder() for _ in range(self._n))
        parts: list[Any] = []
        params: list[Any] = []
        if lo is not None:
            parts.append(sql.SQL("({}) >= ({})").format(self._k, ph))
            params.extend(lo)
        if hi is not None:
            parts.append(sql.SQL("({}) < ({})").format(self._k, ph))
            params.extend(hi)
        where = sql.SQL("where ") + sql.SQL(" and ").join(parts) if parts else sql.SQL("")
        return where, params

    def _run(self, query: Any, params: Sequence[Any]) -> list[tuple[Any, ...]]:
        self.queries += 1
        with reading(self.conn, self.side, self.label):
            return self.conn.execute(query, params).fetchall()

    def split(self, lo: Key | None, hi: Key | None, rows: int, parts: int) -> list[Key]:
        step = max(2, math.ceil(rows / max(1, parts)))
        where, params = self._range(lo, hi)
        query = self._sql.SQL(
            "select {k} from (select {k}, row_number() over (order by {k}) rn from {t} _voke_row {w}) s "
            "where mod(rn, {step}) = 1 and rn > 1 order by {k}"
        ).format(k=self._k, t=self._t, w=where, step=self._sql.Literal(step))
        return [tuple(r) for r in self._run(query, params)]

    def count(self) -> int:
        query = self._sql.SQL("select count(*) from {t}").format(t=self._t)
        return int(self._run(query, [])[0][0])

    def sums(self, lo: Key | None, hi: Key | None, bounds: Sequence[Key]) -> list[tuple[int, int]]:
        # One aggregate per range, each an index range scan: cheaper than grouping every
        # row by its bucket (which hashes and aggregates the whole range at once).
        sql = self._sql
        edges: list[Key | None] = [lo, *bounds, hi]
        parts, params = [], []
        for i in range(len(edges) - 1):
            where, p = self._range(edges[i], edges[i + 1])
            parts.append(
                sql.SQL("select {i}, count(*), coalesce(bit_xor({h}), 0) from {t} _voke_row {w}").format(
                    i=sql.Literal(i), h=self._hash, t=self._t, w=where
                )
            )
            params.extend(p)
        out = [(0, 0)] * (len(edges) - 1)
        for i, count, digest in self._run(sql.SQL(" union all ").join(parts), params):
            out[int(i)] = (int(count), int(digest))
        return out

    def rows(self, lo: Key | None, hi: Key | None) -> dict[Key, int]:
        where, params = self._range(lo, hi)
        query = self._sql.SQL("select {k}, {h} from {t} _voke_row {w}").format(
            k=self._k, h=self._hash, t=self._t, w=where
        )
        return {tuple(r[: self._n]): int(r[self._n]) for r in self._run(query, params)}
