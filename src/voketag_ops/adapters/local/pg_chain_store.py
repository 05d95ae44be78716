"""PgChainStore: the chain and its anchors in PostgreSQL (the local environment's platform
database, `LocalEnvironment.platform_database()`), implementing the ChainStore port.

Two tables, created on first use:

- ``voke_chain_blocks``: one row per block; the timestamp as microseconds since the epoch
  (lossless for the canonical header), the nonce as numeric (it is unsigned 64-bit),
  records as ``text[]`` (order and bytes preserved).
- ``voke_chain_anchors``: one row per anchor (id = root hex), its JSON form and version.

Writers serialise on a transaction-scoped advisory lock and apply the same optimistic
checks as the file store (`check_commit` semantics), so concurrent `anchor run`s and
requests are safe across processes and machines.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Collection, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from voketag_ops.core import chain as ch

_LOCK_KEY = 0x766F6B65_63686E  # "vokechn": the advisory lock writers take
_SCHEMA = """
create table if not exists voke_chain_blocks (
    idx bigint primary key check (idx >= 0),
    ts_us bigint not null,
    prev_hash bytea not null,
    merkle_root bytea not null,
    difficulty integer not null,
    nonce numeric(20, 0) not null,
    hash bytea not null unique,
    records text[] not null
);
create table if not exists voke_chain_anchors (
    id text primary key,
    version integer not null,
    doc jsonb not null
);
"""


def _store_error(exc: Exception, hint: str | None = None) -> ch.ChainStoreError:
    """The ChainStoreError for a psycopg error: an OperationalError's first line (the server
    or the connection failed), otherwise its type only (a message may quote data); HINT its hint."""
    import psycopg

    if isinstance(exc, psycopg.OperationalError):
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        return ch.ChainStoreError(f"chain store (PostgreSQL): {first}", hint=hint)
    return ch.ChainStoreError(f"chain store (PostgreSQL) failed: {type(exc).__name__}", hint=hint)


class PgChainStore:
    """A ChainStore in PostgreSQL. CONNINFO is a libpq connection string; LOCATION says
    where that is for people (default: database, host and port from CONNINFO); HINT, asked when
    a connection or statement fails, what that error's hint says (the local environment's: the
    DR operation that took its server away, `locks.dr_operation_hint`)."""

    def __init__(
        self,
        conninfo: str,
        *,
        connect_timeout: int = 5,
        location: str | None = None,
        hint: Callable[[], str | None] = lambda: None,
    ) -> None:
        self.conninfo = conninfo
        self.connect_timeout = connect_timeout
        self._location = location
        self._hint = hint
        self._schema_ready = False

    @property
    def location(self) -> str:
        if self._location is None:
            from psycopg.conninfo import conninfo_to_dict

            try:
                parts = conninfo_to_dict(self.conninfo)
            except Exception:  # psycopg.ProgrammingError; never echo a conninfo (it may hold a password)
                return "PostgreSQL"
            where = ":".join(str(parts[k]) for k in ("host", "port") if parts.get(k))
            self._location = f"PostgreSQL database {parts.get('dbname', '?')}" + (
                f" at {where}" if where else ""
            )
        return self._location

    @contextmanager
    def _transaction(self, *, write: bool) -> Iterator[Any]:
        import psycopg

        try:
            with psycopg.connect(
                self.conninfo, connect_timeout=self.connect_timeout, autocommit=True
            ) as conn:
                if not self._schema_ready:
                    with conn.transaction():
                        conn.execute("select pg_advisory_xact_lock(%s)", (_LOCK_KEY,))
                        conn.execute(_SCHEMA)
                    self._schema_ready = True
                with conn.transaction():
                    if write:
                        conn.execute("select pg_advisory_xact_lock(%s)", (_LOCK_KEY,))
                    else:  # one consistent snapshot of blocks and anchors
                        conn.execute("set transaction isolation level repeatable read, read only")
                    yield conn
        except psycopg.Error as exc:
            raise _store_error(exc, self._hint()) from None

    @contextmanager
    def writers_held(self) -> Iterator[None]:
        """No writer commits while this is held: the advisory lock writers take, held by a
        session of its own once the writes under way have finished (they wait for it, and fail
        if the server stops meanwhile). `env destroy` holds it from its export until the servers
        are stopped, so a block written meanwhile is never deleted unseen. Never unlocked
        explicitly: the session's end releases it, and the server may be gone by then."""
        import psycopg

        with self._transaction(write=False):
            pass  # the schema first: making it takes the lock too, and this store's reads would wait
        try:
            conn = psycopg.connect(self.conninfo, connect_timeout=self.connect_timeout, autocommit=True)
        except psycopg.Error as exc:
            raise _store_error(exc, self._hint()) from None
        try:
            try:
                conn.execute("select pg_advisory_lock(%s)", (_LOCK_KEY,))
            except psycopg.Error as exc:
                raise _store_error(exc, self._hint()) from None
            yield
        finally:
            conn.close()

    def load(self, *, kind: str | None = None, ids: Collection[str] | None = None) -> ch.ChainState:
        with self.stream(kind=kind, ids=ids) as (anchors, blocks):
            return ch.ChainState(blocks=tuple(blocks), anchors=anchors)

    @contextmanager
    def stream(
        self, *, kind: str | None = None, ids: Collection[str] | None = None
    ) -> Iterator[tuple[dict[str, ch.Anchor], Iterator[ch.Block]]]:
        with self._transaction(write=False) as conn:
            yield self._anchors(conn, ids=ids, kind=kind), self._blocks(conn)

    def head(self) -> ch.Block | None:
        with self._transaction(write=False) as conn:
            return next(self._blocks(conn, "order by idx desc limit 1"), None)

    def anchors(
        self,
        ids: Collection[str] | None = None,
        *,
        kind: str | None = None,
        state: ch.AnchorState | None = None,
        prefix: str | None = None,
    ) -> dict[str, ch.Anchor]:
        with self._transaction(write=False) as conn:
            return self._anchors(conn, ids=ids, kind=kind, state=state, prefix=prefix)

    def anchor_page(self, *, state: ch.AnchorState | None = None, limit: int) -> ch.AnchorPage:
        """As the port says: the server sorts (a top-N sort, in bounded memory) and counts."""
        where, params = ("doc->>'state' = %s", [state.value]) if state is not None else ("true", [])
        with self._transaction(write=False) as conn:
            rows = conn.execute(
                "select id, doc from voke_chain_anchors where " + where + " order by"
                " (doc->>'requested_at')::timestamptz desc, id collate \"C\" desc limit %s",
                [*params, limit],
            )
            anchors = tuple(
                ch.Anchor.from_json(doc, f"voke_chain_anchors[{anchor_id[:16]}]") for anchor_id, doc in rows
            )
            counts = {s.value: 0 for s in ch.AnchorState}
            for name, count in conn.execute(
                "select doc->>'state', count(*) from voke_chain_anchors group by 1"
            ):
                if name in counts:  # (a row in no known state fails where it is read whole)
                    counts[name] = count
        return ch.AnchorPage(anchors=anchors, counts=counts)

    def commit(self, *, blocks: Sequence[ch.Block] = (), anchors: Sequence[ch.Anchor] = ()) -> None:
        with self._transaction(write=True) as conn:
            row = conn.execute("select idx, hash from voke_chain_blocks order by idx desc limit 1").fetchone()
            prev_index, prev_hash = (-1, ch.ZERO_HASH) if row is None else (row[0], bytes(row[1]))
            for block in blocks:
                if block.index != prev_index + 1 or block.prev_hash != prev_hash:
                    raise ch.StoreConflictError(
                        f"block {block.index} no longer extends the chain head (another run appended first)"
                    )
                prev_index, prev_hash = block.index, block.hash
            for anchor in anchors:
                found = conn.execute(
                    "select version from voke_chain_anchors where id = %s for update", (anchor.id,)
                ).fetchone()
                stored = 0 if found is None else found[0]
                if anchor.version != stored + 1:
                    raise ch.StoreConflictError(f"anchor {anchor.id[:16]} was changed by another run")
            for block in blocks:
                self._insert_block(conn, block)
            self._upsert_anchors(conn, anchors)

    def import_state(self, incoming: ch.ChainState) -> dict[str, int]:
        """Merge INCOMING (an exported document, already validated); see the ChainStore port."""
        with self._transaction(write=True) as conn:
            current = ch.ChainState(blocks=tuple(self._blocks(conn)), anchors=self._anchors(conn))
            _merged, added, changed = ch.merge_import(current, incoming)
            for block in added:
                self._insert_block(conn, block)
            self._upsert_anchors(conn, changed)
            return {"blocks_added": len(added), "anchors_updated": len(changed)}

    @staticmethod
    def _insert_block(conn: Any, block: ch.Block) -> None:
        conn.execute(
            "insert into voke_chain_blocks (idx, ts_us, prev_hash, merkle_root, difficulty, nonce, hash,"
            " records) values (%s, %s, %s, %s, %s, %s, %s, %s)",
            (
                block.index,
                ch.to_micros(block.timestamp),
                block.prev_hash,
                block.merkle_root,
                block.difficulty,
                block.nonce,
                block.hash,
                list(block.records),
            ),
        )

    @staticmethod
    def _upsert_anchors(conn: Any, anchors: Sequence[ch.Anchor]) -> None:
        for anchor in anchors:
            conn.execute(
                "insert into voke_chain_anchors (id, version, doc) values (%s, %s, %s::jsonb)"
                " on conflict (id) do update set version = excluded.version, doc = excluded.doc",
                (anchor.id, anchor.version, json.dumps(anchor.to_json())),
            )

    @staticmethod
    def _blocks(conn: Any, order: str = "order by idx") -> Iterator[ch.Block]:
        """The blocks, one at a time: a server-side cursor fetches them in batches (a client-side
        one would hold every row in memory before the first is read; a year's chain is 100k)."""
        with conn.cursor(name="voke_chain_blocks") as cursor:
            cursor.itersize = 1000
            cursor.execute(
                "select idx, ts_us, prev_hash, merkle_root, difficulty, nonce, hash, records"
                " from voke_chain_blocks " + order
            )
            for idx, ts_us, prev, root, difficulty, nonce, hash_, records in cursor:
                yield ch.Block(
                    index=idx,
                    timestamp=ch.from_micros(ts_us),
                    prev_hash=bytes(prev),
                    merkle_root=bytes(root),
                    difficulty=difficulty,
                    nonce=int(nonce),
                    hash=bytes(hash_),
                    records=tuple(records),
                )

    @staticmethod
    def _anchors(
        conn: Any,
        *,
        ids: Collection[str] | None = None,
        kind: str | None = None,
        state: ch.AnchorState | None = None,
        prefix: str | None = None,
    ) -> dict[str, ch.Anchor]:
        """The anchors (all, or those among IDS, of KIND, in STATE, with an id starting with
        PREFIX), filtered by the server: only the rows asked for are parsed."""
        where: list[str] = ["true"]
        params: list[object] = []
        if ids is not None:
            where.append("id = any(%s)")
            params.append(list(ids))
        if kind is not None:
            where.append("doc->>'kind' = %s")
            params.append(kind)
        if state is not None:
            where.append("doc->>'state' = %s")
            params.append(state.value)
        if prefix is not None:
            where.append("starts_with(id, %s)")  # (not LIKE: a prefix holds no wildcard)
            params.append(prefix)
        anchors = {}
        sql = "select id, doc from voke_chain_anchors where " + " and ".join(where)
        for anchor_id, doc in conn.execute(sql, params):
            anchors[anchor_id] = ch.Anchor.from_json(doc, f"voke_chain_anchors[{anchor_id[:16]}]")
        return anchors
