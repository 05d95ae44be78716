"""`voke ingest`: load a factory batch all-or-nothing, seal it, list batches, prove a tag.

A load is one PostgreSQL transaction:

1. the file's size is checked (before it is read) and its SHA-256 computed;
2. ``pg_advisory_xact_lock`` serialises loads on the database, and a batch with the
   same file hash means ``duplicate`` (``batches.file_sha256`` is UNIQUE as well);
3. the file is validated while it streams (``core.ingest``) and the accepted rows go
   through ``COPY`` into a temporary staging table, leaf order = COPY order;
4. the rows move to ``ingest.tags`` in one ``INSERT ... SELECT ... ORDER BY tag_id``
   (sorted, so the primary-key index fills page by page); a tag_id already loaded
   trips the primary key, and the staging table says which rows did;
5. the batch row (root, chunk roots), the chunks' leaf hashes and new products are
   written, and the transaction commits.

Anything that goes wrong before the commit (a rejected row, the database going away,
Ctrl-C, ``kill -9``) leaves nothing behind: the transaction is rolled back by the
server. After the commit the root is requested as an anchor on the chain and the
load is recorded in the audit log.

psycopg is imported inside functions only, so the CLI starts without it.
"""

from __future__ import annotations

import csv
import hashlib
import io
import os
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from voketag_ops.core import ingest as core
from voketag_ops.core import merkle
from voketag_ops.errors import BackendError, InputError, PreconditionError, UsageError, VokeError

if TYPE_CHECKING:
    import psycopg

    from voketag_ops.config import IngestSettings

READ_CHUNK = 1 << 20
LEAF_FORMAT = "voke-tsv-v1"
# pg_advisory_xact_lock(classid, objid): "vok" and one id per purpose.
_LOCK_CLASS = 0x766F6B
_LOCK_LOAD = 1
_LOCK_MIGRATE = 2
_STAGING = "pg_temp.voke_ingest_staging"
_COLUMNS = ", ".join(core.CANONICAL_COLUMNS)
_REST = ", ".join(core.CANONICAL_COLUMNS[1:])  # all but tag_id

MIGRATIONS: list[tuple[int, str, str]] = [
    (
        1,
        "batches, tags, products, tag chunks",
        """
        CREATE TABLE ingest.batches (
            batch_id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
            file_sha256 text NOT NULL UNIQUE,
            file_name text NOT NULL,
            file_bytes bigint NOT NULL,
            partial boolean NOT NULL,
            rows_total integer NOT NULL,
            rows_loaded integer NOT NULL,
            rows_rejected integer NOT NULL,
            merkle_root bytea NOT NULL CHECK (length(merkle_root) = 32),
            chunk_size integer NOT NULL,
            chunk_roots bytea NOT NULL,
            leaf_format text NOT NULL,
            loaded_at timestamptz NOT NULL DEFAULT now(),
            loaded_by text NOT NULL,
            duration_seconds double precision NOT NULL,
            anchor_id text
        );
        -- No foreign key to batches: a per-row check would double the insert time, and
        -- tags are only ever written in the transaction that writes their batch.
        CREATE TABLE ingest.tags (
            tag_id text PRIMARY KEY,
            batch_id bigint NOT NULL,
            leaf_index integer NOT NULL,
            sku text NOT NULL,
            product_name text NOT NULL,
            factory_id text NOT NULL,
            manufactured_at timestamptz NOT NULL,
            lot text NOT NULL,
            color text NOT NULL,
            size text NOT NULL
        );
        CREATE TABLE ingest.products (
            sku text PRIMARY KEY,
            product_name text NOT NULL,
            first_batch bigint NOT NULL REFERENCES ingest.batches
        );
        CREATE TABLE ingest.tag_chunks (
            batch_id bigint NOT NULL REFERENCES ingest.batches,
            chunk_no integer NOT NULL,
            leaf_hashes bytea NOT NULL,
            PRIMARY KEY (batch_id, chunk_no)
        );
        ALTER TABLE ingest.tag_chunks ALTER COLUMN leaf_hashes SET STORAGE EXTERNAL;  -- hashes do not compress
        """,
    ),
]
SCHEMA_VERSION = MIGRATIONS[-1][0]


# -- reports -------------------------------------------------------------------------------


@dataclass
class LoadProgress:
    """Where a load is; handed to the progress callback."""

    phase: str  # hashing | validating | inserting | committing
    bytes_done: int
    bytes_total: int
    rows: int


@dataclass
class LoadReport:
    """What `voke ingest load` did."""

    status: str  # loaded | duplicate | rejected | valid (dry run)
    file: str
    file_sha256: str
    file_bytes: int
    batch_id: int | None = None
    rows_total: int = 0
    rows_loaded: int = 0
    rows_rejected: int = 0
    merkle_root: str | None = None
    anchor: str = "none"  # pending | anchored | cancelled | failed | unavailable | none
    anchor_id: str | None = None
    errors: list[dict[str, Any]] = field(default_factory=list)
    error_count: int = 0
    warnings: list[str] = field(default_factory=list)
    partial: bool = False
    dry_run: bool = False
    rejects_file: str | None = None
    duration_seconds: float = 0.0
    rows_per_second: float = 0.0

    @property
    def ok(self) -> bool:
        return self.status in ("loaded", "duplicate", "valid")


class _Abort(Exception):
    """Roll the transaction back and return REPORT (rejected file, dry run, duplicate)."""

    def __init__(self, report: LoadReport) -> None:
        super().__init__(report.status)
        self.report = report


# -- connections and errors ------------------------------------------------------------------


def describe_target(conninfo: str) -> str:
    """host:port/dbname of CONNINFO, never its password."""
    from psycopg.conninfo import conninfo_to_dict

    try:
        parts = conninfo_to_dict(conninfo)
    except Exception:
        return "the database"
    host = str(parts.get("host") or "localhost")
    if host.startswith("/"):
        host = "local socket"
    port = parts.get("port")
    return f"{host}{':' + str(port) if port else ''}/{parts.get('dbname') or parts.get('user') or ''}"


def connect(conninfo: str) -> psycopg.Connection[Any]:
    """An autocommit connection; BackendError (exit 4) when it cannot be made."""
    import psycopg
    from psycopg.conninfo import conninfo_to_dict

    from voketag_ops.redact import register

    with suppress(Exception):
        password = conninfo_to_dict(conninfo).get("password")
        if password:
            register(str(password))
    try:
        return psycopg.connect(conninfo, autocommit=True, connect_timeout=10, application_name="voke ingest")
    except psycopg.Error as exc:
        raise BackendError(f"cannot connect to {describe_target(conninfo)}: {_first_line(exc)}") from None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    lines = [ln for ln in text.splitlines() if ln.strip()]
    return lines[-1].strip() if lines else type(exc).__name__


@contextmanager
def _db_errors(target: str, doing: str) -> Iterator[None]:
    """Translate psycopg errors into voke errors, in one place."""
    import psycopg
    from psycopg import errors as pgerr

    try:
        yield
    except (pgerr.LockNotAvailable, pgerr.QueryCanceled) as exc:
        raise PreconditionError(
            f"{target}: gave up waiting while {doing}: another load holds the ingest lock ({_first_line(exc)})",
            hint="retry when it has finished, or raise ingest.lock_timeout",
        ) from None
    except psycopg.OperationalError as exc:
        raise BackendError(
            f"{target}: the database connection failed while {doing}: {_first_line(exc)}; "
            "the transaction was rolled back and nothing was loaded",
            hint="rerun the same command once the database is back",
        ) from None
    except psycopg.Error as exc:
        raise BackendError(f"{target}: the database refused {doing}: {_first_line(exc)}") from None


# -- schema ------------------------------------------------------------------------------------


def ensure_schema(conn: psycopg.Connection[Any]) -> int:
    """Create or migrate the `ingest` schema; returns its version. Safe under concurrency."""
    row = conn.execute("SELECT to_regclass('ingest.schema_migrations') IS NOT NULL").fetchone()
    if row and row[0]:
        current = conn.execute("SELECT coalesce(max(version), 0) FROM ingest.schema_migrations").fetchone()
        if current and current[0] == SCHEMA_VERSION:
            return SCHEMA_VERSION
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s, %s)", (_LOCK_CLASS, _LOCK_MIGRATE))
        conn.execute("CREATE SCHEMA IF NOT EXISTS ingest")
        conn.execute(
            "CREATE TABLE IF NOT EXISTS ingest.schema_migrations ("
            " version integer PRIMARY KEY, name text NOT NULL,"
            " applied_at timestamptz NOT NULL DEFAULT now())"
        )
        applied = {r[0] for r in conn.execute("SELECT version FROM ingest.schema_migrations")}
        if applied and max(applied) > SCHEMA_VERSION:
            raise PreconditionError(
                f"the ingest schema is at version {max(applied)}, newer than this voke knows "
                f"({SCHEMA_VERSION}); upgrade voke"
            )
        for version, name, sql in MIGRATIONS:
            if version not in applied:
                conn.execute(sql)  # type: ignore[arg-type]
                conn.execute(
                    "INSERT INTO ingest.schema_migrations (version, name) VALUES (%s, %s)", (version, name)
                )
    return SCHEMA_VERSION


# -- load ----------------------------------------------------------------------------------------


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        while data := fh.read(READ_CHUNK):
            h.update(data)
    return h.hexdigest()


Anchorer = Callable[[bytes, int, int], tuple[str, str | None]]  # (root, size, batch_id) -> (status, id)


def load_batch(
    conninfo: str,
    path: Path,
    *,
    settings: IngestSettings,
    now: datetime,
    audit_home: Path | None = None,
    env_name: str = "local",
    **options: Any,
) -> LoadReport:
    """Load PATH (see ``_load_batch``), recorded in the audit log under AUDIT_HOME if given."""
    if audit_home is None:
        return _load_batch(conninfo, path, settings=settings, now=now, **options)
    from voketag_ops.audit import audited

    details = {
        "file": str(path),
        "target": describe_target(conninfo),
        "partial": bool(options.get("partial")),
    }
    with audited(
        audit_home, event_type="ingest.load", env=env_name, target=path.name, details=details
    ) as event:
        report = _load_batch(conninfo, path, settings=settings, now=now, **options)
        event.details.update(
            status=report.status,
            batch_id=report.batch_id,
            file_sha256=report.file_sha256,
            rows_total=report.rows_total,
            rows_loaded=report.rows_loaded,
            rows_rejected=report.rows_rejected,
            merkle_root=report.merkle_root,
            anchor_id=report.anchor_id,
            error_count=report.error_count,
        )
        if report.status != "loaded":
            event.result = "dry-run" if report.dry_run else report.status
    return report


def chain_anchorer(home: Path, now: datetime) -> Anchorer:
    """Request batch roots as anchors on the local chain (kind ``ingest-batch``)."""
    from voketag_ops.adapters.local.chain_store import FileChainStore, default_chain_path
    from voketag_ops.workflows.chain import RetryPolicy, request_anchor

    store = FileChainStore(default_chain_path(home))

    def anchor(root: bytes, size: int, batch_id: int) -> tuple[str, str | None]:
        done = request_anchor(
            store,
            root=root,
            kind="ingest-batch",
            label=f"ingest batch {batch_id}",
            tree_size=size,
            now=now,
            retry=RetryPolicy(attempts=3, initial=0.05, maximum=0.2),
        )
        return str(done.anchor["state"]), str(done.anchor["id"])

    return anchor


def anchor_states(home: Path) -> dict[str, str]:
    """Anchor id -> state on the local chain (empty if there is no chain yet)."""
    from voketag_ops.adapters.local.chain_store import FileChainStore, default_chain_path

    path = default_chain_path(home)
    if not path.exists():
        return {}
    try:
        anchors = FileChainStore(path).load().anchors.values()
    except VokeError:
        return {}
    return {a.id: a.state.value for a in anchors}


def _load_batch(
    conninfo: str,
    path: Path,
    *,
    settings: IngestSettings,
    now: datetime,
    partial: bool = False,
    rejects: Path | None = None,
    dry_run: bool = False,
    max_errors: int | None = None,
    actor: str = "voke",
    progress: Callable[[LoadProgress], None] | None = None,
    anchorer: Anchorer | None = None,
) -> LoadReport:
    """Validate PATH and load it as one batch (see the module docstring)."""
    if partial and rejects is None:
        raise UsageError("--partial needs --rejects FILE for the rows it leaves out")
    if rejects is not None and not partial:
        raise UsageError("--rejects applies only with --partial")
    max_errors = settings.max_errors if max_errors is None else max_errors
    started = time.monotonic()
    report_progress = progress or (lambda _p: None)
    try:
        size = path.stat().st_size
    except OSError as exc:
        raise InputError(f"{path}: cannot read: {exc.strerror}") from None
    base = LoadReport(status="rejected", file=str(path), file_sha256="", file_bytes=size, partial=partial)
    too_big = core.check_size(size, settings.max_file_bytes)
    if too_big is not None:
        base.errors, base.error_count = [too_big.as_dict()], 1
        return _finish(base, started)
    report_progress(LoadProgress("hashing", 0, size, 0))
    try:
        base.file_sha256 = file_sha256(path)
    except OSError as exc:
        raise InputError(f"{path}: cannot read: {exc.strerror}") from None

    target = describe_target(conninfo)
    conn = connect(conninfo)
    try:
        with _db_errors(target, "preparing the ingest schema"):
            ensure_schema(conn)
            existing = _find_batch(conn, base.file_sha256)
        if existing is not None:
            return _finish(_duplicate(base, existing, conn, anchorer, target), started)
        try:
            with _db_errors(target, "loading the batch"):
                conn.execute("SET temp_buffers = '256MB'")  # before the session's first temporary table
                with conn.transaction():
                    report = _load_in_transaction(
                        conn,
                        path,
                        base,
                        settings=settings,
                        now=now,
                        partial=partial,
                        rejects=rejects,
                        dry_run=dry_run,
                        max_errors=max_errors,
                        actor=actor,
                        progress=report_progress,
                        started=started,
                    )
        except _Abort as abort:
            report = abort.report
            if report.status == "duplicate":
                existing = _find_batch(conn, base.file_sha256)
                if existing is not None:
                    return _finish(_duplicate(base, existing, conn, anchorer, target), started)
            return _finish(report, started)
        if rejects is not None and report.rejects_file:
            os.replace(report.rejects_file, rejects)
            report.rejects_file = str(rejects)
        if anchorer is not None and report.batch_id is not None and report.merkle_root:
            _anchor(conn, report, anchorer, target)
        return _finish(report, started)
    finally:
        conn.close()


def _finish(report: LoadReport, started: float) -> LoadReport:
    report.duration_seconds = round(time.monotonic() - started, 3)
    if report.rows_loaded and report.duration_seconds > 0:
        report.rows_per_second = round(report.rows_loaded / report.duration_seconds, 1)
    return report


def _find_batch(conn: psycopg.Connection[Any], sha: str) -> dict[str, Any] | None:
    from psycopg.rows import dict_row

    with conn.cursor(row_factory=dict_row) as cur:
        return cur.execute(
            "SELECT batch_id, rows_total, rows_loaded, rows_rejected, merkle_root, anchor_id, partial"
            " FROM ingest.batches WHERE file_sha256 = %s",
            (sha,),
        ).fetchone()


def _duplicate(
    base: LoadReport,
    row: Mapping[str, Any],
    conn: psycopg.Connection[Any],
    anchorer: Anchorer | None,
    target: str,
) -> LoadReport:
    report = LoadReport(
        status="duplicate",
        file=base.file,
        file_sha256=base.file_sha256,
        file_bytes=base.file_bytes,
        batch_id=row["batch_id"],
        rows_total=row["rows_total"],
        rows_loaded=0,
        rows_rejected=0,
        merkle_root=bytes(row["merkle_root"]).hex(),
        anchor_id=row["anchor_id"],
        partial=row["partial"],
    )
    if anchorer is not None:
        # Also heals a batch whose anchor request failed after its commit: requests are deduplicated.
        report.rows_total = row["rows_total"]
        _anchor(conn, report, anchorer, target, size=row["rows_loaded"])
    return report


def _anchor(
    conn: psycopg.Connection[Any],
    report: LoadReport,
    anchorer: Anchorer,
    target: str,
    size: int | None = None,
) -> None:
    assert report.merkle_root is not None and report.batch_id is not None
    try:
        status, anchor_id = anchorer(
            bytes.fromhex(report.merkle_root),
            report.rows_loaded if size is None else size,
            report.batch_id,
        )
    except VokeError as exc:
        report.anchor = "unavailable"
        report.warnings.append(f"the batch root could not be sent for anchoring: {exc.message}")
        return
    report.anchor, report.anchor_id = status, anchor_id
    if anchor_id:
        with _db_errors(target, "recording the anchor"):
            conn.execute(
                "UPDATE ingest.batches SET anchor_id = %s WHERE batch_id = %s AND anchor_id IS DISTINCT FROM %s",
                (anchor_id, report.batch_id, anchor_id),
            )


def _load_in_transaction(
    conn: psycopg.Connection[Any],
    path: Path,
    report: LoadReport,
    *,
    settings: IngestSettings,
    now: datetime,
    partial: bool,
    rejects: Path | None,
    dry_run: bool,
    max_errors: int,
    actor: str,
    progress: Callable[[LoadProgress], None],
    started: float,
) -> LoadReport:
    lock_ms = int(settings.lock_timeout * 1000)
    conn.execute(f"SET LOCAL lock_timeout = {lock_ms}")
    conn.execute("SET LOCAL work_mem = '128MB'")
    conn.execute("SELECT pg_advisory_xact_lock(%s, %s)", (_LOCK_CLASS, _LOCK_LOAD))
    conn.execute("SET LOCAL lock_timeout = 0")
    if _find_batch(conn, report.file_sha256) is not None:
        report.status = "duplicate"
        raise _Abort(report)  # loaded by a concurrent run while we waited for the lock
    known = dict(conn.execute("SELECT sku, product_name FROM ingest.products").fetchall())
    conn.execute(
        f"CREATE TEMPORARY TABLE {_STAGING.split('.')[1]} ("
        " leaf_index integer GENERATED BY DEFAULT AS IDENTITY (MINVALUE 0 START WITH 0),"
        " tag_id text NOT NULL, sku text NOT NULL, product_name text NOT NULL, factory_id text NOT NULL,"
        " manufactured_at timestamptz NOT NULL, lot text NOT NULL, color text NOT NULL, size text NOT NULL"
        ") ON COMMIT DROP"
    )
    validator = core.BatchValidator(
        now=now,
        known_products=known,
        max_errors=max_errors,
        require_final_newline=settings.require_final_newline,
        keep_rejected=partial,
    )
    # spool: the leaf hashes of the sealed chunks, 32 bytes each, until the batch id exists
    rejects_out = _RejectsWriter(rejects) if rejects is not None else None
    try:
        with conn.cursor() as cur, path.open("rb") as fh, tempfile.TemporaryFile() as spool:
            with cur.copy(f"COPY {_STAGING} ({_COLUMNS}) FROM STDIN") as copy:
                done = 0
                while True:
                    data = fh.read(READ_CHUNK)
                    piece = validator.feed(data) if data else validator.finish()
                    done += len(data)
                    if piece.copy_data and (partial or validator.ok):
                        copy.write(piece.copy_data)
                    for _number, hashes in piece.sealed:
                        spool.write(hashes)
                    if rejects_out is not None and piece.rejected:
                        rejects_out.write(piece.rejected)
                    progress(LoadProgress("validating", done, report.file_bytes, validator.rows_total))
                    if not data:
                        break
            report.rows_total = validator.rows_total
            report.warnings.extend(validator.warnings)
            report.errors = [p.as_dict() for p in validator.problems]
            report.error_count = validator.error_count
            report.rows_rejected = validator.rows_rejected
            if validator.fatal or (not partial and not validator.ok):
                report.rows_rejected = validator.rows_rejected if not validator.fatal else report.rows_total
                raise _Abort(report)
            seal = validator.seal
            if seal.size == 0:
                report.rows_rejected = report.rows_total
                raise _Abort(report)
            progress(LoadProgress("inserting", done, report.file_bytes, validator.rows_total))
            batch_id = _insert_batch(conn, report, seal, actor, time.monotonic() - started)
            conflicts = _insert_tags(conn, batch_id)
            if conflicts:
                seal = _handle_conflicts(
                    conn, report, validator, batch_id, partial, max_errors, rejects_out, spool
                )
            _insert_chunks(conn, cur, batch_id, spool)
            conn.execute(
                "INSERT INTO ingest.products (sku, product_name, first_batch)"
                f" SELECT sku, min(product_name), %s FROM {_STAGING} GROUP BY sku"
                " ON CONFLICT (sku) DO NOTHING",
                (batch_id,),
            )
            report.batch_id = batch_id
            report.rows_loaded = seal.size
            report.merkle_root = seal.root.hex()
            report.status = "loaded"
            if dry_run:
                report.status, report.dry_run, report.batch_id = "valid", True, None
                raise _Abort(report)
            if rejects_out is not None:
                report.rejects_file = rejects_out.close()
            progress(LoadProgress("committing", done, report.file_bytes, validator.rows_total))
        return report
    finally:
        if rejects_out is not None:
            rejects_out.discard()


def _insert_batch(
    conn: psycopg.Connection[Any], report: LoadReport, seal: core.Seal, actor: str, elapsed: float
) -> int:
    row = conn.execute(
        "INSERT INTO ingest.batches (file_sha256, file_name, file_bytes, partial, rows_total, rows_loaded,"
        " rows_rejected, merkle_root, chunk_size, chunk_roots, leaf_format, loaded_by, duration_seconds)"
        " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s) RETURNING batch_id",
        (
            report.file_sha256,
            Path(report.file).name,
            report.file_bytes,
            report.partial,
            report.rows_total,
            seal.size,
            report.rows_total - seal.size,
            seal.root,
            core.SEAL_CHUNK,
            b"".join(seal.chunk_roots),
            LEAF_FORMAT,
            actor,
            round(elapsed, 3),
        ),
    ).fetchone()
    assert row is not None
    return int(row[0])


def _insert_tags(conn: psycopg.Connection[Any], batch_id: int) -> bool:
    """Move the staged rows into ingest.tags; True if some tag_id was already loaded."""
    from psycopg import errors as pgerr

    try:
        with conn.transaction():  # a savepoint: a conflict leaves the staging table usable
            conn.execute(
                f"INSERT INTO ingest.tags (tag_id, batch_id, leaf_index, {_REST})"
                f" SELECT tag_id, %s, leaf_index, {_REST} FROM {_STAGING}"
                " ORDER BY tag_id",
                (batch_id,),
            )
    except pgerr.UniqueViolation:
        return True
    return False


def _handle_conflicts(
    conn: psycopg.Connection[Any],
    report: LoadReport,
    validator: core.BatchValidator,
    batch_id: int,
    partial: bool,
    max_errors: int,
    rejects_out: _RejectsWriter | None,
    spool: IO[bytes],
) -> core.Seal:
    """Rows whose tag_id an earlier batch holds: reject the file, or (--partial) drop
    them, renumber the leaves and re-seal."""
    conflict_sql = (
        f"SELECT s.leaf_index, s.tag_id, t.batch_id, {', '.join('s.' + c for c in core.CANONICAL_COLUMNS)}"
        f" FROM {_STAGING} s JOIN ingest.tags t USING (tag_id)"
    )
    if not partial:
        count_row = conn.execute(f"SELECT count(*) FROM ({conflict_sql}) c").fetchone()
        rows = conn.execute(f"{conflict_sql} ORDER BY s.leaf_index LIMIT %s", (max_errors,)).fetchall()
        _add_conflicts(report, validator, rows, max_errors)
        report.error_count += int(count_row[0]) if count_row else len(rows)
        report.rows_rejected = report.error_count
        raise _Abort(report)
    rows = conn.execute(
        f"DELETE FROM {_STAGING} s USING ingest.tags t WHERE s.tag_id = t.tag_id"
        f" RETURNING s.leaf_index, s.tag_id, t.batch_id, {', '.join('s.' + c for c in core.CANONICAL_COLUMNS)}"
    ).fetchall()
    rows.sort(key=lambda r: r[0])
    _add_conflicts(report, validator, rows, max_errors)
    report.error_count += len(rows)
    report.rows_rejected += len(rows)
    if rejects_out is not None:
        rejects_out.write(
            core.Rejected(
                validator.line_of(r[1]) or 0,
                (_conflict_problem(validator, r),),
                _csv_record(_canonical_values(r[3:])),
            )
            for r in rows
        )
    # Renumber the leaves densely in file order and seal again from the staged rows.
    conn.execute(
        f"UPDATE {_STAGING} s SET leaf_index = n.rn FROM"
        f" (SELECT leaf_index AS old, row_number() OVER (ORDER BY leaf_index) - 1 AS rn FROM {_STAGING}) n"
        " WHERE s.leaf_index = n.old"
    )
    query = f"COPY (SELECT {_COLUMNS} FROM {_STAGING} ORDER BY leaf_index) TO STDOUT"
    with conn.cursor() as cur, cur.copy(query) as copy:
        copy.set_types(["timestamptz" if c == "manufactured_at" else "text" for c in core.CANONICAL_COLUMNS])
        seal, chunks = core.seal_leaves("\t".join(_canonical_values(row)).encode() for row in copy.rows())
    if seal.size == 0:
        raise _Abort(report)
    spool.seek(0)
    spool.truncate()
    for hashes in chunks:
        spool.write(hashes)
    conn.execute(
        "UPDATE ingest.batches SET rows_loaded = %s, rows_rejected = %s, merkle_root = %s, chunk_roots = %s"
        " WHERE batch_id = %s",
        (seal.size, report.rows_total - seal.size, seal.root, b"".join(seal.chunk_roots), batch_id),
    )
    if _insert_tags(conn, batch_id):  # cannot happen under the load lock; be loud if it does
        raise BackendError("tag_ids conflicted twice during one load; nothing was loaded")
    return seal


def _canonical_values(row: Any) -> list[str]:
    values = []
    for value in row:
        if isinstance(value, datetime):
            values.append(core.canonical_timestamp(value))
        elif value is None:
            values.append("")
        else:
            values.append(str(value))
    return values


def _conflict_problem(validator: core.BatchValidator, row: Any) -> core.Problem:
    return core.Problem(
        validator.line_of(row[1]),
        None,
        "tag_already_loaded",
        f"tag_id {row[1]!r} was already loaded in batch {row[2]}",
    )


def _add_conflicts(
    report: LoadReport, validator: core.BatchValidator, rows: list[Any], max_errors: int
) -> None:
    for row in rows:
        if len(report.errors) >= max_errors:
            break
        report.errors.append(_conflict_problem(validator, row).as_dict())
    report.errors.sort(key=lambda e: (e["line"] is None, e["line"] or 0))


def _insert_chunks(conn: psycopg.Connection[Any], cur: Any, batch_id: int, spool: IO[bytes]) -> None:
    size = 32 * core.SEAL_CHUNK
    spool.seek(0)
    with cur.copy("COPY ingest.tag_chunks (batch_id, chunk_no, leaf_hashes) FROM STDIN") as copy:
        number = 0
        while True:
            hashes = spool.read(size)
            if not hashes:
                break
            copy.write(f"{batch_id}\t{number}\t\\\\x{hashes.hex()}\n")
            number += 1


def _csv_record(values: list[str]) -> str:
    buf = io.StringIO()
    csv.writer(buf, lineterminator="").writerow(values)
    return buf.getvalue()


def _file_mode() -> int:
    """0o666 less the umask: what open() would have created (mkstemp makes 0o600)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return 0o666 & ~mask


class _RejectsWriter:
    """The --rejects file, written aside and renamed into place only after the commit."""

    HEADER = ("line", "column", "code", "message", "record")

    def __init__(self, target: Path) -> None:
        directory = target.parent if str(target.parent) else Path(".")
        try:
            fd, name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".partial", dir=directory)
        except OSError as exc:
            raise UsageError(f"--rejects {target}: cannot write there: {exc.strerror}") from None
        self.path = name
        os.fchmod(fd, _file_mode())
        self._fh: IO[str] | None = os.fdopen(fd, "w", newline="", encoding="utf-8")
        self._writer = csv.writer(self._fh)
        self._writer.writerow(self.HEADER)

    def write(self, rejected: Any) -> None:
        for r in rejected:
            first = r.problems[0]
            self._writer.writerow(
                (r.line, first.column or "", ";".join(p.code for p in r.problems),
                 "; ".join(p.message for p in r.problems), r.record)
            )  # fmt: skip

    def close(self) -> str:
        if self._fh is not None:
            self._fh.close()
            self._fh = None
        return self.path

    def discard(self) -> None:
        """Remove the scratch file unless it was closed for the rename."""
        if self._fh is not None:
            self._fh.close()
            self._fh = None
            with suppress(FileNotFoundError):
                os.unlink(self.path)


# -- batches and proofs -----------------------------------------------------------------------


def list_batches(
    conninfo: str, *, limit: int = 50, anchor_states: Mapping[str, str] | None = None
) -> list[dict[str, Any]]:
    """The newest LIMIT batches, newest first."""
    from psycopg.rows import dict_row

    target = describe_target(conninfo)
    conn = connect(conninfo)
    try:
        with _db_errors(target, "listing batches"):
            ensure_schema(conn)
            with conn.cursor(row_factory=dict_row) as cur:
                rows = cur.execute(
                    "SELECT batch_id, loaded_at, file_name, file_sha256, rows_total, rows_loaded, rows_rejected,"
                    " partial, merkle_root, anchor_id, loaded_by, duration_seconds"
                    " FROM ingest.batches ORDER BY batch_id DESC LIMIT %s",
                    (limit,),
                ).fetchall()
    finally:
        conn.close()
    for row in rows:
        row["merkle_root"] = bytes(row["merkle_root"]).hex()
        anchor_id = row["anchor_id"]
        row["anchor"] = (anchor_states or {}).get(anchor_id, "unknown") if anchor_id else "none"
    return rows


@dataclass
class TagProof:
    """The inclusion proof of one tag's canonical row in its batch root.

    The fields leaf_index, tree_size, root, leaf_hash and audit_path form the inclusion
    document `voke chain verify` reads; `leaf` is the canonical row (pass it as --leaf).
    """

    tag_id: str
    found: bool
    batch_id: int | None = None
    leaf_index: int | None = None
    tree_size: int | None = None
    root: str | None = None
    leaf_hash: str | None = None
    audit_path: list[str] = field(default_factory=list)
    leaf: str | None = None
    valid: bool = False
    intact: bool = False  # the stored row still hashes to the sealed leaf
    anchor_id: str | None = None
    anchor: str = "none"
    file_name: str | None = None
    loaded_at: datetime | None = None


def prove_tag(conninfo: str, tag_id: str, *, anchor_states: Mapping[str, str] | None = None) -> TagProof:
    """Build and check the proof that TAG_ID's row belongs to its batch's sealed root."""
    from psycopg.rows import dict_row

    target = describe_target(conninfo)
    conn = connect(conninfo)
    try:
        with _db_errors(target, "reading the tag"):
            ensure_schema(conn)
            with conn.cursor(row_factory=dict_row) as cur:
                row = cur.execute(
                    f"SELECT t.batch_id, t.leaf_index, {', '.join('t.' + c for c in core.CANONICAL_COLUMNS)},"
                    " b.rows_loaded, b.merkle_root, b.chunk_roots, b.chunk_size, b.anchor_id, b.file_name,"
                    " b.loaded_at, c.leaf_hashes"
                    " FROM ingest.tags t JOIN ingest.batches b USING (batch_id)"
                    " LEFT JOIN ingest.tag_chunks c ON c.batch_id = t.batch_id AND c.chunk_no = t.leaf_index / b.chunk_size"
                    " WHERE t.tag_id = %s",
                    (tag_id,),
                ).fetchone()
    finally:
        conn.close()
    if row is None:
        return TagProof(tag_id=tag_id, found=False)
    size = int(row["rows_loaded"])
    index = int(row["leaf_index"])
    root = bytes(row["merkle_root"])
    blob = bytes(row["chunk_roots"])
    if row["chunk_size"] != core.SEAL_CHUNK or row["leaf_hashes"] is None:
        raise BackendError(f"{target}: batch {row['batch_id']} has no usable sealed chunks")
    chunk_roots = [blob[i : i + 32] for i in range(0, len(blob), 32)]
    leaf = core.canonical_leaf(row)
    lh = merkle.leaf_hash(leaf)
    hashes = bytes(row["leaf_hashes"])
    offset = index % core.SEAL_CHUNK
    try:
        path = core.inclusion_proof(index, size, hashes, chunk_roots)
    except ValueError as exc:
        raise BackendError(
            f"{target}: the sealed chunks of batch {row['batch_id']} are damaged: {exc}"
        ) from None
    anchor_id = row["anchor_id"]
    return TagProof(
        tag_id=tag_id,
        found=True,
        batch_id=row["batch_id"],
        leaf_index=index,
        tree_size=size,
        root=root.hex(),
        leaf_hash=lh.hex(),
        audit_path=[p.hex() for p in path],
        leaf=leaf.decode(),
        valid=merkle.verify_inclusion(lh, index, size, path, root),
        intact=hashes[offset * 32 : offset * 32 + 32] == lh,
        anchor_id=anchor_id,
        anchor=(anchor_states or {}).get(anchor_id, "unknown") if anchor_id else "none",
        file_name=row["file_name"],
        loaded_at=row["loaded_at"],
    )


# -- sample -------------------------------------------------------------------------------------


def make_sample(path: Path, *, rows: int, seed: int, force: bool = False) -> dict[str, Any]:
    """Write a realistic batch of ROWS rows to PATH (atomically)."""
    if rows < 1:
        raise UsageError("--rows must be at least 1")
    if rows > 16**12 // 2:
        raise UsageError("--rows is too large")
    if path.exists() and not force:
        raise UsageError(f"{path} exists; pass --force to overwrite it")
    directory = path.parent if str(path.parent) else Path(".")
    try:
        fd, scratch = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".partial", dir=directory)
    except OSError as exc:
        raise UsageError(f"{path}: cannot write there: {exc.strerror}") from None
    try:
        os.fchmod(fd, _file_mode())
        with os.fdopen(fd, "wb") as fh:
            written = core.write_sample(fh, rows, seed)
        os.replace(scratch, path)
    except BaseException:
        with suppress(FileNotFoundError):
            os.unlink(scratch)
        raise
    return {"path": str(path), "rows": rows, "seed": seed, "bytes": written}
