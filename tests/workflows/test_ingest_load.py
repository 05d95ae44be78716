"""workflows.ingest on the real local PostgreSQL: atomic loads, idempotency, concurrency,
the database going away, kill -9, --partial, proofs of every loaded tag."""

from __future__ import annotations

import csv
import io
import os
import signal
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from voketag_ops.config import IngestSettings
from voketag_ops.core import ingest as core
from voketag_ops.core import merkle
from voketag_ops.errors import BackendError, UsageError
from voketag_ops.workflows import ingest as wf

pytestmark = pytest.mark.pg

NOW = datetime(2025, 6, 1, tzinfo=UTC)
SETTINGS = IngestSettings()
HEADER = "tag_id,sku,product_name,factory_id,manufactured_at,lot\n"


@pytest.fixture
def db(local_env: Any, pg_database: str) -> str:
    return local_env.primary().conninfo(pg_database)


def sample(tmp_path: Path, rows: int, seed: int = 1, name: str = "batch.csv") -> Path:
    path = tmp_path / name
    wf.make_sample(path, rows=rows, seed=seed)
    return path


def write(tmp_path: Path, text: str, name: str = "batch.csv") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8", newline="")
    return path


def load(db: str, path: Path, **kw: Any) -> wf.LoadReport:
    return wf.load_batch(db, path, settings=kw.pop("settings", SETTINGS), now=NOW, **kw)


def counts(db: str) -> tuple[int, int, int]:
    with psycopg.connect(db) as conn:
        if conn.execute("select to_regclass('ingest.batches')").fetchone()[0] is None:
            return 0, 0, 0
        return tuple(  # type: ignore[return-value]
            conn.execute(f"select count(*) from ingest.{t}").fetchone()[0]
            for t in ("batches", "tags", "products")
        )


def file_rows(path: Path) -> list[list[str]]:
    """The file's rows as canonical values, read independently with the csv module."""
    with path.open(encoding="utf-8-sig", newline="") as fh:
        reader = csv.DictReader(fh)
        out = []
        for rec in reader:
            values = [(rec.get(c) or "").strip() for c in core.CANONICAL_COLUMNS]
            values[4] = core.canonical_timestamp(datetime.fromisoformat(values[4]))
            out.append(values)
    return out


def _csv_line(values: list[str]) -> str:
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerow(values)
    return buf.getvalue()


def db_rows(db: str, batch_id: int) -> list[list[str]]:
    with psycopg.connect(db) as conn:
        rows = conn.execute(
            f"select {', '.join(core.CANONICAL_COLUMNS)} from ingest.tags where batch_id = %s order by leaf_index",
            (batch_id,),
        ).fetchall()
    return [[core.canonical_timestamp(v) if isinstance(v, datetime) else v for v in r] for r in rows]


def assert_every_proof_verifies(db: str, batch_id: int) -> int:
    """Prove every tag of the batch from the stored chunks, against the stored root."""
    with psycopg.connect(db) as conn:
        size, root, blob = conn.execute(
            "select rows_loaded, merkle_root, chunk_roots from ingest.batches where batch_id = %s",
            (batch_id,),
        ).fetchone()
        chunks = dict(
            conn.execute(
                "select chunk_no, leaf_hashes from ingest.tag_chunks where batch_id = %s", (batch_id,)
            )
        )
        rows = conn.execute(
            f"select leaf_index, {', '.join(core.CANONICAL_COLUMNS)} from ingest.tags where batch_id = %s",
            (batch_id,),
        ).fetchall()
    chunk_roots = [bytes(blob[i : i + 32]) for i in range(0, len(blob), 32)]
    assert sorted(r[0] for r in rows) == list(range(size))
    for leaf_index, *values in rows:
        leaf = core.canonical_leaf(dict(zip(core.CANONICAL_COLUMNS, values, strict=True)))
        path = core.inclusion_proof(
            leaf_index, size, bytes(chunks[leaf_index // core.SEAL_CHUNK]), chunk_roots
        )
        assert merkle.verify_leaf(leaf, leaf_index, size, path, bytes(root))
    return len(rows)


# -- the good path ------------------------------------------------------------------------------


def test_load_round_trips_the_file_and_every_tag_proves(db, tmp_path):
    path = sample(tmp_path, 2500)  # three sealed chunks
    report = load(db, path)
    assert report.status == "loaded" and report.ok
    assert (report.rows_total, report.rows_loaded, report.rows_rejected) == (2500, 2500, 0)
    assert db_rows(db, report.batch_id) == file_rows(path)
    assert assert_every_proof_verifies(db, report.batch_id) == 2500
    leaves = ["\t".join(r).encode() for r in file_rows(path)]
    assert report.merkle_root == merkle.root(leaves).hex()
    tag = file_rows(path)[1234][0]
    proof = wf.prove_tag(db, tag)
    assert proof.found and proof.valid and proof.intact
    assert (proof.leaf_index, proof.tree_size, proof.root) == (1234, 2500, report.merkle_root)
    assert proof.leaf == leaves[1234].decode()


@st.composite
def _small_batch(draw: st.DrawFn) -> str:
    prefix = uuid.uuid4().hex[:8]
    n = draw(st.integers(min_value=1, max_value=12))
    chars = st.characters(blacklist_categories=("Cc", "Cs"), blacklist_characters=core.INVISIBLE)
    text = st.text(alphabet=chars, min_size=1, max_size=30)
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator=draw(st.sampled_from(["\n", "\r\n"])))
    w.writerow(["manufactured_at", "tag_id", "product_name", "sku", "factory_id", "lot"])
    for i in range(n):
        sku = f"{prefix}-{draw(st.integers(0, 2))}"
        name = f"name of {sku}"
        when = draw(st.datetimes(min_value=datetime(2000, 1, 1), max_value=datetime(2025, 1, 1)))
        tz = timezone(timedelta(minutes=draw(st.integers(-600, 600))))
        w.writerow(
            [
                when.replace(tzinfo=tz).isoformat(),
                f"{prefix}_{i}",
                name,
                sku,
                draw(text.filter(str.strip)),
                draw(text),
            ]
        )
    return buf.getvalue()


@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(_small_batch())
def test_property_accepted_files_round_trip_through_the_database(db, tmp_path, text):
    path = write(tmp_path, text, name=f"{uuid.uuid4().hex}.csv")
    report = load(db, path)
    assert report.status == "loaded", report.errors
    assert db_rows(db, report.batch_id) == file_rows(path)
    assert_every_proof_verifies(db, report.batch_id)


def test_same_file_again_is_a_duplicate_and_writes_nothing(db, tmp_path):
    path = sample(tmp_path, 50)
    first = load(db, path)
    before = counts(db)
    again = load(db, path)
    assert again.status == "duplicate" and again.ok
    assert again.batch_id == first.batch_id and again.merkle_root == first.merkle_root
    assert counts(db) == before


def test_schema_is_created_once_and_versioned(db):
    conn = wf.connect(db)
    try:
        assert wf.ensure_schema(conn) == wf.SCHEMA_VERSION
        assert wf.ensure_schema(conn) == wf.SCHEMA_VERSION
        rows = conn.execute("select version from ingest.schema_migrations").fetchall()
    finally:
        conn.close()
    assert rows == [(v,) for v, _name, _sql in wf.MIGRATIONS]


def test_a_rejected_first_load_leaves_no_schema_behind(db, tmp_path):
    # The schema is made inside the load's transaction: "bad input leaves the database unchanged"
    # holds for a fresh database too (it used to keep `ingest` and its four migrations).
    row = "T1,S1,Shoe,F1,2024-01-01T00:00:00Z,L1\n"
    report = load(db, write(tmp_path, HEADER + row + row))
    assert report.status == "rejected" and [e["code"] for e in report.errors] == ["duplicate_tag_id"]
    with psycopg.connect(db) as conn:
        assert conn.execute("select to_regnamespace('ingest')").fetchone() == (None,)
    assert load(db, write(tmp_path, HEADER + row, name="good.csv")).status == "loaded"


def _key_collations(db: str) -> set[tuple[str, str, str | None]]:
    with psycopg.connect(db) as conn:
        return set(
            conn.execute(
                "select table_name, column_name, collation_name from information_schema.columns"
                " where table_schema = 'ingest' and column_name in ('tag_id', 'sku')"
            ).fetchall()
        )


def test_a_version_1_schema_is_migrated_with_its_batches(db, tmp_path):
    first = load(db, sample(tmp_path, 40, seed=1, name="one.csv"))
    assert first.status == "loaded"
    with psycopg.connect(db, autocommit=True) as conn:  # back to what a voke knowing migration 1 made
        conn.execute(
            'ALTER TABLE ingest.tags ALTER COLUMN tag_id TYPE text COLLATE "default",'
            ' ALTER COLUMN sku TYPE text COLLATE "default";'
            ' ALTER TABLE ingest.products ALTER COLUMN sku TYPE text COLLATE "default";'
            " ALTER TABLE ingest.batches DROP COLUMN audited; DROP TABLE ingest.identity;"
            " DELETE FROM ingest.schema_migrations WHERE version > 1"
        )
    assert ("tags", "tag_id", None) in _key_collations(db)
    from voketag_ops.errors import PreconditionError

    with pytest.raises(PreconditionError, match="a dry run changes nothing, so it cannot migrate"):
        load(db, sample(tmp_path, 10, seed=7, name="dry.csv"), dry_run=True)
    assert ("tags", "tag_id", None) in _key_collations(db)  # untouched
    repeat = write(tmp_path, HEADER + "".join(_csv_line(r[:6]) for r in file_rows(tmp_path / "one.csv")[:1]))
    again = load(db, repeat)  # migrates in its transaction, finds the tag loaded under version 1
    assert again.status == "rejected" and [e["code"] for e in again.errors] == ["tag_already_loaded"]
    # ... and a rejected file leaves the schema as it was: its migration is rolled back with it
    assert ("tags", "tag_id", None) in _key_collations(db)
    with psycopg.connect(db) as conn:
        assert conn.execute("select max(version) from ingest.schema_migrations").fetchone() == (1,)
    assert load(db, tmp_path / "one.csv").status == "duplicate"  # not rejected: migrated, as a load is
    assert ("tags", "tag_id", "C") in _key_collations(db)
    second = load(db, sample(tmp_path, 40, seed=2, name="two.csv"))
    assert second.status == "loaded"
    assert _key_collations(db) == {("tags", "tag_id", "C"), ("tags", "sku", "C"), ("products", "sku", "C")}
    for report, name in ((first, "one.csv"), (second, "two.csv")):
        tag = file_rows(tmp_path / name)[5][0]
        proof = wf.prove_tag(db, tag)
        assert proof.found and proof.batch_id == report.batch_id


@pytest.fixture
def db_in_a_language_collation(local_env: Any, database_with: Any) -> Iterator[str]:
    """A database whose default collation is not "C" (libc C.utf8 compares with strcoll)."""
    with database_with("template template0 locale 'C.utf8'") as name:
        yield local_env.primary().conninfo(name)


def test_keys_compare_bytewise_whatever_the_database_collation(db_in_a_language_collation, tmp_path):
    db = db_in_a_language_collation
    first = load(db, sample(tmp_path, 30, seed=1, name="one.csv"))
    rows = file_rows(tmp_path / "one.csv")
    # A repeat in the file and one loaded before: the staging table is joined with the keys.
    text = HEADER + "".join(_csv_line(r[:6]) for r in [rows[3], *file_rows(sample(tmp_path, 3, seed=9))])
    text += _csv_line(file_rows(tmp_path / "batch.csv")[0][:6])
    partial = load(db, write(tmp_path, text, name="mixed.csv"), partial=True, rejects=tmp_path / "bad.csv")
    assert first.status == "loaded" and partial.status == "loaded"
    assert sorted(e["code"] for e in partial.errors) == ["duplicate_tag_id", "tag_already_loaded"]
    assert partial.rows_loaded == 3
    assert _key_collations(db) == {("tags", "tag_id", "C"), ("tags", "sku", "C"), ("products", "sku", "C")}


def test_dry_run_validates_everything_and_writes_nothing(db, tmp_path):
    report = load(db, sample(tmp_path, 30), dry_run=True)
    assert report.status == "valid" and report.dry_run and report.batch_id is None
    assert report.rows_loaded == 30 and report.merkle_root
    assert counts(db)[:2] == (0, 0)


# -- all or nothing -------------------------------------------------------------------------------


def test_one_bad_row_rejects_the_batch_and_nothing_is_written(db, tmp_path):
    text = HEADER + "T1,S1,Shoe,F1,2024-01-01T00:00:00Z,L\nT2,S1,Shoe,F1,not a time,L\n"
    report = load(db, write(tmp_path, text))
    assert report.status == "rejected" and not report.ok
    assert report.errors == [
        {"line": 3, "column": 15, "code": "bad_timestamp", "message": report.errors[0]["message"]}
    ]
    assert counts(db) == (0, 0, 0)


def test_a_tag_loaded_by_an_earlier_batch_rejects_the_file(db, tmp_path):
    load(db, write(tmp_path, HEADER + "T1,S1,Shoe,F1,2024-01-01T00:00:00Z,L\n", "a.csv"))
    before = counts(db)
    report = load(
        db,
        write(
            tmp_path,
            HEADER + "T9,S1,Shoe,F1,2024-01-01T00:00:00Z,L\nT1,S1,Shoe,F1,2024-01-01T00:00:00Z,L\n",
            "b.csv",
        ),
    )
    assert report.status == "rejected"
    assert [(e["line"], e["code"]) for e in report.errors] == [(3, "tag_already_loaded")]
    assert "batch 1" in report.errors[0]["message"]
    assert counts(db) == before


def test_sku_collision_with_products_in_the_database(db, tmp_path):
    load(db, write(tmp_path, HEADER + "T1,S1,Shoe,F1,2024-01-01T00:00:00Z,L\n", "a.csv"))
    report = load(db, write(tmp_path, HEADER + "T2,S1,Boot,F1,2024-01-01T00:00:00Z,L\n", "b.csv"))
    assert [(e["line"], e["code"]) for e in report.errors] == [(2, "sku_collision")]
    assert counts(db)[0] == 1


def test_file_over_the_limit_is_rejected_before_it_is_read(db, tmp_path, monkeypatch):
    path = sample(tmp_path, 20)
    monkeypatch.setattr(wf, "file_sha256", lambda p: pytest.fail("the file was read"))
    report = load(db, path, settings=IngestSettings(max_file_bytes=100))
    assert report.status == "rejected" and report.errors[0]["code"] == "file_too_large"
    assert counts(db) == (0, 0, 0)


def test_the_default_limit_is_100_mb_in_bytes(db, tmp_path, monkeypatch):
    path = tmp_path / "big.csv"
    with path.open("wb") as fh:  # sparse: the size is all the check looks at
        fh.truncate(100_000_001)
    monkeypatch.setattr(wf, "file_sha256", lambda p: pytest.fail("the file was read"))
    report = load(db, path)
    assert report.status == "rejected" and report.errors[0]["code"] == "file_too_large"
    assert "100,000,001 bytes, more than the limit of 100,000,000" in report.errors[0]["message"]
    assert counts(db) == (0, 0, 0)


# -- partial -------------------------------------------------------------------------------------


def test_partial_loads_the_good_rows_and_writes_the_rejects(db, tmp_path):
    text = (
        HEADER
        + "T1,S1,Shoe,F1,2024-01-01T00:00:00Z,L\n"
        + "T2,S1,Boot,F1,2024-01-01T00:00:00Z,L\n"  # sku collision
        + "T3,S2,Hat,F1,2024-01-01T00:00:00Z,L\n"
        + 'T4,S2,"Hat,\nT9,S9,Not a row,F1,2024-01-01T00:00:00Z,L\n",F1,2024-01-01T00:00:00Z,L\n'  # 3 lines
        + "T5,S3,Cap,F1,2024-01-01T00:00:00Z,L\n"
    )
    rejects = tmp_path / "rejects.csv"
    report = load(db, write(tmp_path, text), partial=True, rejects=rejects)
    assert report.status == "loaded"
    assert (report.rows_total, report.rows_loaded, report.rows_rejected) == (5, 3, 2)
    assert {e["code"] for e in report.errors} == {"sku_collision", "control_character"}
    assert [r[0] for r in db_rows(db, report.batch_id)] == ["T1", "T3", "T5"]  # T9 is text in T4's quotes
    assert_every_proof_verifies(db, report.batch_id)
    with rejects.open(newline="") as fh:
        rows = list(csv.reader(fh))
    assert rows[0] == ["line", "column", "code", "message", "record"]
    assert [(r[0], r[1], r[2]) for r in rows[1:]] == [
        ("3", "7", "sku_collision"),
        ("5", "7", "control_character"),
    ]
    assert rows[2][4] == 'T4,S2,"Hat,\nT9,S9,Not a row,F1,2024-01-01T00:00:00Z,L\n",F1,2024-01-01T00:00:00Z,L'
    assert wf.prove_tag(db, "T5").found and not wf.prove_tag(db, "T9").found
    assert not list(tmp_path.glob(".rejects.csv.*"))
    # Loaded again: a duplicate's counts are the first batch's, as are its id, root and `partial`
    # (they were 5, 0, 0: the first batch's total beside this run's nothing)
    again = load(db, tmp_path / "batch.csv")
    assert again.status == "duplicate" and again.partial and again.batch_id == report.batch_id
    assert (again.rows_total, again.rows_loaded, again.rows_rejected) == (5, 3, 2)
    assert again.rows_per_second == 0


def test_partial_drops_tags_already_loaded_and_reseals(db, tmp_path):
    first = load(db, sample(tmp_path, 40, seed=3, name="a.csv"))
    old = file_rows(tmp_path / "a.csv")
    new_rows = [f"N{i},SKU-X{i},Thing {i},F1,2024-01-01T00:00:00Z,L\n" for i in range(1100)]
    mixed = new_rows[:500] + [_csv_line(r[:6]) for r in old[:7]] + new_rows[500:]
    rejects = tmp_path / "rejects.csv"
    report = load(db, write(tmp_path, HEADER + "".join(mixed), "b.csv"), partial=True, rejects=rejects)
    assert report.status == "loaded", report.errors
    assert (report.rows_loaded, report.rows_rejected) == (1100, 7)
    assert [e["code"] for e in report.errors] == ["tag_already_loaded"] * 7
    assert report.errors[0]["line"] == 502 and f"batch {first.batch_id}" in report.errors[0]["message"]
    assert [r[0] for r in db_rows(db, report.batch_id)] == [f"N{i}" for i in range(1100)]
    assert assert_every_proof_verifies(db, report.batch_id) == 1100
    assert (
        report.merkle_root
        == merkle.root(
            f"N{i}\tSKU-X{i}\tThing {i}\tF1\t2024-01-01T00:00:00.000000+00:00\tL\t\t".encode()
            for i in range(1100)
        ).hex()
    )
    assert len(rejects.read_text().splitlines()) == 8


def test_duplicates_in_the_file_are_found_by_the_primary_key_with_line_and_column(db, tmp_path):
    # tag_id is the second column, and the repeats are far apart (different pieces).
    rows = [f"S{i % 7},T{i},Thing {i % 7},F1,2024-01-01T00:00:00Z\n" for i in range(40000)]
    rows[30000] = "S3,T17,Thing 3,F1,2024-01-01T00:00:00Z\n"
    rows[39999] = "S3,  T5,Thing 3,F1,2024-01-01T00:00:00Z\n"
    path = write(tmp_path, "sku,tag_id,product_name,factory_id,manufactured_at\n" + "".join(rows))
    report = load(db, path)
    assert report.status == "rejected" and report.error_count == 2 and report.rows_rejected == 2
    assert [(e["line"], e["column"], e["code"]) for e in report.errors] == [
        (30002, 4, "duplicate_tag_id"),
        (40001, 4, "duplicate_tag_id"),
    ]
    assert "first on line 19" in report.errors[0]["message"]
    assert counts(db) == (0, 0, 0)


def test_partial_rejects_file_is_in_line_order_with_repeats_among_bad_rows(db, tmp_path):
    # Repeated tag_ids are found after the file is read; the rejects file still reads in line order.
    load(db, write(tmp_path, HEADER + "OLD1,S1,Shoe,F1,2024-01-01T00:00:00Z,L\n", "a.csv"))
    text = (
        HEADER
        + "X1,S1,Shoe,F1,not a time,L\n"
        + "OLD1,S1,Shoe,F1,2024-01-01T00:00:00Z,L\n"  # loaded by batch 1
        + "X2,S1,Shoe,F1,,L\n"
        + "N1,S1,Shoe,F1,2024-01-01T00:00:00Z,L\n"
        + "N1,S1,Shoe,F1,2024-02-01T00:00:00Z,L2\n"  # duplicate of line 5
        + "X3,S1,Shoe,F1,2999-01-01T00:00:00Z,L\n"
    )
    rejects = tmp_path / "rejects.csv"
    report = load(db, write(tmp_path, text, "b.csv"), partial=True, rejects=rejects)
    assert report.status == "loaded" and (report.rows_loaded, report.rows_rejected) == (1, 5)
    with rejects.open(newline="") as fh:
        rejected = list(csv.reader(fh))
    assert rejected[0] == ["line", "column", "code", "message", "record"]
    assert [r[0] for r in rejected[1:]] == ["2", "3", "4", "6", "7"]
    assert [r[2] for r in rejected[1:]][1::2] == ["tag_already_loaded", "duplicate_tag_id"]
    assert rejected[2][4] == "OLD1,S1,Shoe,F1,2024-01-01T00:00:00Z,L"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.csv", "b.csv", "rejects.csv"]


def test_a_row_rejected_for_its_tag_id_names_no_sku(db, tmp_path):
    # Repeats are found after the SKU names were read; the rows they reject still claim nothing.
    load(db, write(tmp_path, HEADER + "R1,OLD,Old,F1,2024-01-01T00:00:00Z,L\n", "a.csv"))
    text = (
        HEADER
        + "R1,NEWSKU,Alpha,F1,2024-01-01T00:00:00Z,L\n"  # loaded before
        + "E1,NEWSKU,Beta,F1,2024-01-01T00:00:00Z,L\n"  # so NEWSKU is Beta
        + "X1,SA,Alpha,F1,2024-01-01T00:00:00Z,L\n"
        + "X1,SB,Beta,F1,2024-01-01T00:00:00Z,L\n"  # repeats line 4: SB stays unnamed
        + "X2,SB,Gamma,F1,2024-01-01T00:00:00Z,L\n"
        + "X3,SB,Delta,F1,2024-01-01T00:00:00Z,L\n"  # a real collision, with line 6
        + "X3,NEWSKU,Beta,F1,2024-01-01T00:00:00Z,L\n"  # X3's line 7 was rejected: fine
    )
    # All-or-nothing, the file is rejected for these three rows, none a collision with a rejected row.
    rejected = load(db, write(tmp_path, text, "b.csv"))
    assert rejected.status == "rejected" and rejected.rows_loaded == 0
    assert [(e["line"], e["code"]) for e in rejected.errors] == [
        (2, "tag_already_loaded"),
        (5, "duplicate_tag_id"),
        (7, "sku_collision"),
    ]
    rejects = tmp_path / "rejects.csv"
    report = load(db, tmp_path / "b.csv", partial=True, rejects=rejects)
    assert report.status == "loaded", report.errors
    assert [(e["line"], e["column"], e["code"]) for e in report.errors] == [
        (2, 1, "tag_already_loaded"),
        (5, 1, "duplicate_tag_id"),
        (7, 7, "sku_collision"),
    ]
    assert "'Gamma' on line 6" in report.errors[2]["message"]
    assert [r[0] for r in db_rows(db, report.batch_id)] == ["E1", "X1", "X2", "X3"]
    assert assert_every_proof_verifies(db, report.batch_id) == 4
    with psycopg.connect(db) as conn:
        products = dict(conn.execute("SELECT sku, product_name FROM ingest.products").fetchall())
    assert products == {"OLD": "Old", "NEWSKU": "Beta", "SA": "Alpha", "SB": "Gamma"}
    with rejects.open(newline="") as fh:
        assert [r[0] for r in list(csv.reader(fh))[1:]] == ["2", "5", "7"]


def test_a_rows_problems_do_not_depend_on_whether_another_row_repeats_a_tag_id(db, tmp_path):
    # With a repeated tag_id anywhere, a second pass decides; it must list what the first would.
    load(db, write(tmp_path, HEADER + "L1,S1,Alpha,F1,2024-01-01T00:00:00Z,L\n", "a.csv"))
    rows = [
        "R1,S10,Ten,F1,2024-01-01T00:00:00Z,L\n",
        "R1,S1,Eleven,F1,2024-01-01T00:00:00Z,L\n",  # a collision (and a repeat)
        "A2,S1,Beta,F1,bad,L\n",  # its own problem (and a name that clashes)
        "R3,S10,Ten,F1,bad,L\n",
        "A4,S12,Twelve,F1,2024-01-01T00:00:00Z,L\n",
    ]  # no tag_id that the primary key would stop: the first pass alone decides
    plain = load(db, write(tmp_path, HEADER + "".join(rows), "b.csv"), dry_run=True)
    repeated = rows + ["Z9,S10,Ten,F1,2024-01-01T00:00:00Z,L\n"] * 2
    second = load(db, write(tmp_path, HEADER + "".join(repeated), "c.csv"), dry_run=True)
    listed = [(e["line"], e["column"], e["code"]) for e in plain.errors]
    assert [(e["line"], e["column"], e["code"]) for e in second.errors if e["line"] <= 6] == listed
    assert listed == [
        (3, 7, "sku_collision"),
        (4, 15, "bad_timestamp"),
        (5, 15, "bad_timestamp"),
    ]
    assert second.error_count == plain.error_count + 1  # and the repeat itself


def test_partial_drops_duplicates_and_tags_already_loaded_and_every_proof_verifies(db, tmp_path):
    load(db, write(tmp_path, HEADER + "OLD1,S1,Shoe,F1,2024-01-01T00:00:00Z,L\n", "a.csv"))
    text = (
        HEADER
        + "N1,S1,Shoe,F1,2024-01-01T00:00:00Z,L\n"
        + "OLD1,S1,Shoe,F1,2024-01-01T00:00:00Z,L\n"  # loaded by batch 1
        + "N2,S2,Hat,F1,2024-01-01T00:00:00Z,L\n"
        + "N1,S1,Shoe,F1,2024-02-01T00:00:00Z,L2\n"  # duplicate of line 2
        + "OLD1,S1,Shoe,F1,2024-03-01T00:00:00Z,L3\n"  # loaded too (line 3 claims nothing)
        + "N3,S3,Cap,F1,2024-01-01T00:00:00Z,L\n"
    )
    rejects = tmp_path / "rejects.csv"
    report = load(db, write(tmp_path, text, "b.csv"), partial=True, rejects=rejects)
    assert report.status == "loaded", report.errors
    assert (report.rows_total, report.rows_loaded, report.rows_rejected) == (6, 3, 3)
    assert [(e["line"], e["code"]) for e in report.errors] == [
        (3, "tag_already_loaded"),
        (5, "duplicate_tag_id"),
        (6, "tag_already_loaded"),
    ]
    assert [r[0] for r in db_rows(db, report.batch_id)] == ["N1", "N2", "N3"]
    assert assert_every_proof_verifies(db, report.batch_id) == 3
    with rejects.open(newline="") as fh:
        rejected = list(csv.reader(fh))[1:]
    assert [(r[0], r[2]) for r in rejected] == [
        ("3", "tag_already_loaded"),
        ("5", "duplicate_tag_id"),
        ("6", "tag_already_loaded"),
    ]
    assert rejected[1][4] == "N1,S1,Shoe,F1,2024-02-01T00:00:00Z,L2"
    with psycopg.connect(db) as conn:
        products = dict(conn.execute("select sku, product_name from ingest.products").fetchall())
    assert products == {"S1": "Shoe", "S2": "Hat", "S3": "Cap"}


def test_partial_without_conflicts_records_only_the_products_of_loaded_rows(db, tmp_path):
    text = HEADER + "T1,S1,Shoe,F1,2024-01-01T00:00:00Z,L\n" + "T2,S2,Hat,F1,not a time,L\n"
    report = load(db, write(tmp_path, text), partial=True, rejects=tmp_path / "rejects.csv")
    assert (report.status, report.rows_loaded) == ("loaded", 1)
    with psycopg.connect(db) as conn:
        assert conn.execute("select sku from ingest.products").fetchall() == [("S1",)]


def test_partial_needs_a_rejects_file(db, tmp_path):
    with pytest.raises(UsageError):
        load(db, sample(tmp_path, 5), partial=True)


# -- concurrency and failures ------------------------------------------------------------------------


def test_two_loads_of_the_same_file_at_once_load_it_once(db, tmp_path):
    path = sample(tmp_path, 20000)
    barrier = threading.Barrier(2)
    results: list[Any] = []

    def run() -> None:
        barrier.wait()
        try:
            results.append(load(db, path).status)
        except Exception as exc:  # pragma: no cover - reported by the assert below
            results.append(exc)

    threads = [threading.Thread(target=run) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results) == ["duplicate", "loaded"]
    assert counts(db)[:2] == (1, 20000)


def test_two_loads_of_different_files_into_a_fresh_database_at_once_both_load(db, tmp_path):
    # Both make the schema in their own transaction: one waits on the migration lock for the
    # other's whole load, then finds the schema made and loads after it.
    paths = [sample(tmp_path, 5000, seed=seed, name=f"{seed}.csv") for seed in (1, 2)]
    barrier = threading.Barrier(2)
    results: list[Any] = []

    def run(path: Path) -> None:
        barrier.wait()
        try:
            results.append(load(db, path).status)
        except Exception as exc:  # pragma: no cover - reported by the assert below
            results.append(exc)

    threads = [threading.Thread(target=run, args=(p,)) for p in paths]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == ["loaded", "loaded"]
    assert counts(db)[:2] == (2, 10000)


def test_the_database_going_away_mid_load_rolls_back_and_a_rerun_loads(db, tmp_path, pg_database):
    path = sample(tmp_path, 30000)  # several 1 MiB chunks: the kill lands mid-COPY
    killed: list[int] = []

    def progress(p: wf.LoadProgress) -> None:
        if p.phase == "validating" and not killed:
            with psycopg.connect(db, autocommit=True) as admin:
                killed.extend(
                    r[0]
                    for r in admin.execute(
                        "select pg_terminate_backend(pid) from pg_stat_activity"
                        " where datname = %s and application_name = 'voke ingest'",
                        (pg_database,),
                    )
                )

    with pytest.raises(BackendError) as info:
        load(db, path, progress=progress)
    assert killed == [True]
    assert info.value.exit_code == 4
    assert "rolled back" in info.value.message
    assert counts(db)[:2] == (0, 0)
    report = load(db, path)
    assert report.status == "loaded" and report.rows_loaded == 30000


_DISK_FULL = 'could not extend file "base/5/16443": No space left on device'
_RAISE_DISK_FULL = (  # the server's own error path for a full disk (SQLSTATE 53100), no disk filled
    f"raise exception using errcode = 'disk_full', message = '{_DISK_FULL}', hint = 'Check free disk space.'"
)


@pytest.mark.parametrize(
    ("where", "table"),
    [("loading the batch", "batches"), ("loading the batch", "tags"), ("preparing the ingest schema", None)],
)
def test_a_database_server_out_of_disk_space_is_named_and_nothing_is_written(db, tmp_path, where, table):
    # It said "the database connection failed while loading the batch: could not extend file
    # ...", hint "rerun the same command once the database is back": DiskFull is an OperationalError.
    with psycopg.connect(db, autocommit=True) as admin:
        if table:  # the batch's row, or its tags (COPYed by a writer thread)
            load(db, sample(tmp_path, 10, seed=1, name="first.csv"))
            admin.execute(
                f"create function ingest.t_full() returns trigger language plpgsql as $$ begin {_RAISE_DISK_FULL}; end $$"
            )
            admin.execute(
                f"create trigger t_full before insert on ingest.{table} for each row execute function ingest.t_full()"
            )
        else:  # the schema's first CREATE
            admin.execute(
                f"create function t_full() returns event_trigger language plpgsql as $$ begin {_RAISE_DISK_FULL}; end $$"
            )
            admin.execute("create event trigger t_full on ddl_command_start execute function t_full()")
    before = counts(db)
    with pytest.raises(BackendError) as info:
        load(db, sample(tmp_path, 10, seed=2))
    assert info.value.exit_code == 4
    assert info.value.message.endswith(
        f"the database server is out of disk space ({_DISK_FULL}) while {where}; "
        "the transaction was rolled back and nothing was written"
    ), info.value.message
    assert info.value.hint == "free space on the database server's disk, then rerun the same command"
    assert counts(db) == before


def _signal_mid_copy(
    db: str, pg_database: str, env: dict[str, str], args: list[str], signum: int
) -> tuple[int, str]:
    """Runs `voke ingest load ARGS` as a user does, sends SIGNUM once its rows are being
    COPYed, and waits for its session to be gone; returns the exit code and stderr."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "voketag_ops", "ingest", "load", *args, "--db", db],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        with psycopg.connect(db, autocommit=True) as admin:
            copying = False
            while proc.poll() is None and not copying:
                row = admin.execute(
                    "select count(*) from pg_stat_activity where datname = %s and application_name = 'voke ingest'"
                    " and query like 'COPY %%'",
                    (pg_database,),
                ).fetchone()
                copying = bool(row and row[0])
            assert copying, "the load finished before the signal could be sent"
            os.kill(proc.pid, signum)
            _, stderr = proc.communicate()
            # The server notices the closed socket and rolls the transaction back.
            while admin.execute(
                "select count(*) from pg_stat_activity where datname = %s and application_name = 'voke ingest'",
                (pg_database,),
            ).fetchone()[0]:
                pass
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return proc.returncode, stderr


def test_kill_9_mid_load_leaves_no_partial_batch(db, tmp_path, pg_database, make_environ):
    path = sample(tmp_path, 60000)
    code, _ = _signal_mid_copy(db, pg_database, make_environ(tmp_path / "home"), [str(path)], signal.SIGKILL)
    assert code == -signal.SIGKILL
    assert counts(db)[:2] == (0, 0)
    assert [p.name for p in tmp_path.rglob(".*")] == []  # no scratch file of any kind either
    report = load(db, path)
    assert report.status == "loaded" and report.rows_loaded == 60000


def test_the_rejects_scratch_of_a_load_killed_mid_load_goes_with_the_next_load(
    db, tmp_path, pg_database, make_environ
):
    # kill -9 leaves the scratch file the rejected rows were written to; the next load naming
    # that file removes it at once (nobody holds its lock), not only once it is some seconds old.
    path = sample(tmp_path, 60000)
    out = tmp_path / "out"
    out.mkdir()
    rejects = out / "rejects.csv"
    args = [str(path), "--partial", "--rejects", str(rejects)]
    code, _ = _signal_mid_copy(db, pg_database, make_environ(tmp_path / "home"), args, signal.SIGKILL)
    assert code == -signal.SIGKILL
    (left,) = out.iterdir()
    assert left.name.startswith(".rejects.csv.") and left.name.endswith(".partial")
    report = load(db, path, partial=True, rejects=rejects)
    assert report.status == "loaded" and report.rows_loaded == 60000
    assert [p.name for p in out.iterdir()] == ["rejects.csv"]


def test_sigterm_mid_load_is_an_interrupt(db, tmp_path, pg_database, make_environ):
    # A cancelled CI job or `timeout` sends SIGTERM: rolled back like Ctrl-C, exit 130, one line.
    path = sample(tmp_path, 60000)
    rejects = tmp_path / "rejects.csv"
    args = [str(path), "--partial", "--rejects", str(rejects)]
    code, stderr = _signal_mid_copy(db, pg_database, make_environ(tmp_path / "home"), args, signal.SIGTERM)
    assert code == 130
    assert "terminated (SIGTERM)" in stderr and "Traceback" not in stderr and len(stderr.splitlines()) == 1
    assert counts(db)[:2] == (0, 0)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([path.name, "home"])  # no rejects scratch
    report = load(db, path)
    assert report.status == "loaded" and report.rows_loaded == 60000


def test_unreachable_database_is_a_backend_error(tmp_path):
    with pytest.raises(BackendError) as info:
        load(
            "host=127.0.0.1 port=1 dbname=x user=x password=hunter2secret connect_timeout=1",
            sample(tmp_path, 3),
        )
    assert info.value.exit_code == 4
    assert "hunter2secret" not in info.value.message


# -- proofs ----------------------------------------------------------------------------------------


def test_a_tampered_row_no_longer_proves(db, tmp_path):
    path = sample(tmp_path, 10)
    load(db, path)
    tag = file_rows(path)[4][0]
    with psycopg.connect(db, autocommit=True) as conn:
        conn.execute("update ingest.tags set lot = lot || 'x' where tag_id = %s", (tag,))
    proof = wf.prove_tag(db, tag)
    assert proof.found and not proof.intact and not proof.valid


def test_a_lower_case_t_and_z_load_and_prove_as_the_upper_case_form(db, tmp_path):
    # RFC 3339 (5.6) allows them: stored and sealed as the upper-case form is, so proofs hold.
    rows = [("TL1", "2024-05-01t08:30:00.25z"), ("TL2", "20240501t083000Z"), ("TL3", "2024-05-01 08:30z")]
    path = write(tmp_path, HEADER + "".join(f"{tag},S1,Shoe,F1,{ts},L1\n" for tag, ts in rows))
    report = load(db, path)
    assert report.status == "loaded" and report.rows_loaded == 3
    leaves = [
        core.canonical_leaf(
            {"tag_id": tag, "sku": "S1", "product_name": "Shoe", "factory_id": "F1", "lot": "L1",
             "manufactured_at": datetime.fromisoformat(ts.upper())}
        )
        for tag, ts in rows
    ]  # fmt: skip
    assert report.merkle_root == merkle.root(leaves).hex()
    with psycopg.connect(db) as conn:
        stored = conn.execute("select manufactured_at from ingest.tags order by tag_id").fetchall()
    assert stored == [
        (datetime(2024, 5, 1, 8, 30, 0, 250000, tzinfo=UTC),),
        *[(datetime(2024, 5, 1, 8, 30, tzinfo=UTC),)] * 2,
    ]
    for i, (tag, _ts) in enumerate(rows):
        proof = wf.prove_tag(db, tag)
        assert proof.valid and proof.intact and proof.leaf == leaves[i].decode()


def test_unknown_tag_is_not_found(db):
    assert not wf.prove_tag(db, "nope").found


def test_ctrl_c_mid_load_rolls_back_and_stops_the_stager(db, tmp_path):
    path = sample(tmp_path, 30000)

    def progress(p: wf.LoadProgress) -> None:
        if p.phase == "validating":
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        load(db, path, progress=progress)
    assert not [t for t in threading.enumerate() if t.name == "voke-ingest-stager"]
    assert counts(db)[:2] == (0, 0)
    assert load(db, path).status == "loaded"


def test_a_load_leaves_the_interpreter_as_it_found_it(db, tmp_path):
    # The load shortens the GIL switch interval while it streams; loaded, rejected or
    # interrupted, it puts it back, and its sending thread is gone.
    before = sys.getswitchinterval()
    path = sample(tmp_path, 3000)

    def interrupt(p: wf.LoadProgress) -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        load(db, path, progress=interrupt)
    assert load(db, path).status == "loaded"
    assert load(db, write(tmp_path, HEADER + "T1,S1,Shoe,F1,soon,L\n", "bad.csv")).status == "rejected"
    assert sys.getswitchinterval() == before
    assert not [t for t in threading.enumerate() if t.name == "voke-ingest-stager"]


def test_a_load_waiting_past_the_lock_timeout_gives_up_with_exit_5(db, tmp_path):
    from voketag_ops.errors import PreconditionError

    path = sample(tmp_path, 5)
    wf.connect(db).close()
    with psycopg.connect(db) as holder:  # another load in progress holds the ingest lock
        holder.execute("select pg_advisory_xact_lock(%s, %s)", (wf._LOCK_CLASS, wf._LOCK_LOAD))
        with pytest.raises(PreconditionError) as info:
            load(db, path, settings=IngestSettings(lock_timeout=0.2))
    assert info.value.exit_code == 5
    assert counts(db)[:2] == (0, 0)


# -- sealing in a child process (large files) ---------------------------------------------------------


def test_sealing_in_a_child_process_gives_the_same_root_and_every_proof_verifies(db, tmp_path, monkeypatch):
    monkeypatch.setattr(wf, "SEAL_IN_CHILD", True)  # whatever the cores
    monkeypatch.setattr(wf, "SEAL_IN_CHILD_BYTES", 0)  # every file, not only large ones
    path = sample(tmp_path, 2500)  # two full chunks and a partial one
    assert (
        load(db, path, dry_run=True).merkle_root
        == merkle.root("\t".join(r).encode() for r in file_rows(path)).hex()
    )
    report = load(db, path)
    assert report.status == "loaded" and report.rows_loaded == 2500
    assert report.merkle_root == merkle.root("\t".join(r).encode() for r in file_rows(path)).hex()
    assert assert_every_proof_verifies(db, report.batch_id) == 2500


def test_ctrl_c_mid_load_stops_the_sealing_process(db, tmp_path, monkeypatch):
    monkeypatch.setattr(wf, "SEAL_IN_CHILD", True)
    monkeypatch.setattr(wf, "SEAL_IN_CHILD_BYTES", 0)
    started: list[Any] = []

    class Recorded(wf._SealWorker):
        def __init__(self) -> None:
            super().__init__()
            started.append(self.proc)

    monkeypatch.setattr(wf, "_SealWorker", Recorded)
    path = sample(tmp_path, 30000)

    def progress(p: wf.LoadProgress) -> None:
        if p.phase == "validating" and p.rows > 10000:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        load(db, path, progress=progress)
    assert len(started) == 1 and started[0].returncode is not None  # stopped and reaped
    assert not [t for t in threading.enumerate() if t.name.startswith("voke-ingest-")]
    assert counts(db)[:2] == (0, 0)


@pytest.mark.parametrize("forged", [False, True])
def test_a_batch_whose_audit_event_was_lost_gets_it_from_the_next_load(db, tmp_path, monkeypatch, forged):
    # FORGED: an `ingest.load` line for it appended by hand (not linked to the entry before it)
    # made the next load take the event as written and mark the batch audited.
    from voketag_ops import audit
    from voketag_ops.core import audit as au
    from voketag_ops.core.times import iso
    from voketag_ops.errors import NeedsOperatorError

    home = tmp_path / "home"
    real_append = audit.AuditLog.append
    monkeypatch.setattr(
        audit.AuditLog,
        "append",
        lambda *a, **k: (_ for _ in ()).throw(audit.AuditWriteError("disk full", disk_refused=True)),
    )
    with pytest.raises(NeedsOperatorError, match="audit event could not be written") as info:
        load(db, sample(tmp_path, 20, seed=1, name="one.csv"), audit_home=home)
    assert (info.value.hint or "").startswith(f"{audit.FREE_SPACE}; the next load")  # the log is whole
    monkeypatch.setattr(audit.AuditLog, "append", real_append)
    with psycopg.connect(db) as conn:
        assert conn.execute("select batch_id, audited from ingest.batches").fetchall() == [(1, False)]

    def loaded_events():
        return [e for e in audit.AuditLog(home).entries() if e.event_type == "ingest.load"]

    # While another load is between its commit and its audit event (it holds the shared lock),
    # unmarked batches may be that load's own: a load leaves them alone.
    with psycopg.connect(db, autocommit=True) as other:
        other.execute("select pg_advisory_lock_shared(%s, %s)", (wf._LOCK_CLASS, wf._LOCK_AUDIT))
        two = load(db, sample(tmp_path, 20, seed=2, name="two.csv"), audit_home=home)
        assert [e.details["batch_id"] for e in loaded_events()] == [two.batch_id]
    if forged:
        with psycopg.connect(db) as conn:
            [(loaded_at,)] = conn.execute(
                "select loaded_at from ingest.batches where batch_id = 1"
            ).fetchall()
        log = audit.AuditLog(home)
        line = au.make_entry(
            seq=list(log.entries())[-1].seq + 1, prev_hash="f" * 64, now=NOW, event_type="ingest.load",
            actor="sre", env="local", target="one.csv", result="loaded", duration_seconds=1.0,
            details={"batch_id": 1, "loaded_at": iso(loaded_at)},
        ).line()  # fmt: skip
        with log.path.open("ab") as fh:
            fh.write(line)
    three = load(db, sample(tmp_path, 20, seed=3, name="three.csv"), audit_home=home)
    events = loaded_events()
    assert [(e.details["batch_id"], e.details.get("recovered", False)) for e in events] == [
        (two.batch_id, False), *([(1, False)] if forged else []), (three.batch_id, False), (1, True),
    ]  # fmt: skip
    recovered = events[-1]
    assert recovered.result == "loaded" and recovered.target == "one.csv"
    assert recovered.details["rows_loaded"] == 20 and len(recovered.details["merkle_root"]) == 64
    with psycopg.connect(db) as conn:
        assert conn.execute("select count(*) from ingest.batches where not audited").fetchone()[0] == 0
    load(db, sample(tmp_path, 20, seed=4, name="four.csv"), audit_home=home)
    assert len(loaded_events()) == 4 + forged  # each event once


def test_a_batch_whose_audited_mark_was_lost_after_its_event_gets_no_second_event(db, tmp_path):
    # A failover (or a crash) between the event and the mark keeps the batch and loses the
    # mark; the event is in the log: the next load marks the batch and writes nothing more.
    home = tmp_path / "home"
    one = load(db, sample(tmp_path, 20, seed=1, name="one.csv"), audit_home=home)
    with psycopg.connect(db) as conn:
        conn.execute("update ingest.batches set audited = false where batch_id = %s", (one.batch_id,))
    load(db, sample(tmp_path, 20, seed=2, name="two.csv"), audit_home=home)
    assert _load_events(home) == [(one.batch_id, False), (one.batch_id + 1, False)]
    with psycopg.connect(db) as conn:
        assert conn.execute("select count(*) from ingest.batches where not audited").fetchone()[0] == 0


def test_the_next_load_settles_every_missed_batch_with_one_read_of_the_audit_log(db, tmp_path, monkeypatch):
    # Each missed batch was looked up in the audit log with a pass of its own (three missed
    # batches in a 100,000-event log: ~28 s of CPU): one lookup settles them all now, each batch
    # whose event is there marked, the others given a recovered event.
    from voketag_ops import audit
    from voketag_ops.errors import NeedsOperatorError

    home = tmp_path / "home"
    real_append = audit.AuditLog.append
    refused = audit.AuditWriteError("disk full", disk_refused=True)
    monkeypatch.setattr(audit.AuditLog, "append", lambda *a, **k: (_ for _ in ()).throw(refused))
    for seed in (1, 2):
        with pytest.raises(NeedsOperatorError, match="audit event could not be written"):
            load(db, sample(tmp_path, 20, seed=seed, name=f"lost-{seed}.csv"), audit_home=home)
    monkeypatch.setattr(audit.AuditLog, "append", real_append)
    with psycopg.connect(db, autocommit=True) as other:  # another load under way: left alone
        other.execute("select pg_advisory_lock_shared(%s, %s)", (wf._LOCK_CLASS, wf._LOCK_AUDIT))
        written = load(db, sample(tmp_path, 20, seed=3, name="written.csv"), audit_home=home)
    with psycopg.connect(db) as conn:  # its voke killed between its event and its mark
        conn.execute("update ingest.batches set audited = false where batch_id = %s", (written.batch_id,))
    lookups: list[tuple[Any, ...]] = []
    find_newest = audit.AuditLog.find_newest

    def counted(self, *args):
        lookups.append(args)
        return find_newest(self, *args)

    monkeypatch.setattr(audit.AuditLog, "find_newest", counted)
    last = load(db, sample(tmp_path, 20, seed=4, name="last.csv"), audit_home=home)
    assert len(lookups) == 1  # (one pass over the log: tests/adapters/test_audit_log.py)
    assert {batch for batch, _loaded_at in lookups[0][0]} == {1, 2, written.batch_id}
    assert _load_events(home) == [(written.batch_id, False), (last.batch_id, False), (1, True), (2, True)]
    with psycopg.connect(db) as conn:
        assert conn.execute("select count(*) from ingest.batches where not audited").fetchone()[0] == 0


def test_another_databases_event_for_the_same_batch_id_does_not_stand_for_this_one(db, tmp_path):
    # Batch ids start at 1 in every database, and the audit log outlives `env destroy`: the same
    # file loaded into a fresh database is batch 1 again, and its own event is still owed.
    home = tmp_path / "home"
    one = sample(tmp_path, 20, seed=1, name="one.csv")
    load(db, one, audit_home=home)
    with psycopg.connect(db) as conn:  # the database made anew
        conn.execute(
            "truncate ingest.tags, ingest.tag_chunks, ingest.products, ingest.batches restart identity"
        )
    assert load(db, one).batch_id == 1
    with psycopg.connect(db) as conn:  # its voke killed between its commit and its event
        conn.execute("update ingest.batches set audited = false where batch_id = 1")
    load(db, sample(tmp_path, 20, seed=2, name="two.csv"), audit_home=home)
    assert _load_events(home) == [(1, False), (2, False), (1, True)]


def _load_events(home: Path) -> list[tuple[int, bool]]:
    from voketag_ops import audit

    return [
        (e.details["batch_id"], bool(e.details.get("recovered")))
        for e in audit.AuditLog(home).entries()
        if e.event_type == "ingest.load" and e.details.get("status") == "loaded"
    ]


def test_a_batch_recovered_while_its_commit_was_settled_gets_one_event(db, tmp_path, monkeypatch):
    from psycopg import Transaction

    home, first, second = (
        tmp_path / "home",
        sample(tmp_path, 30, seed=1, name="a.csv"),
        sample(tmp_path, 30, seed=2, name="b.csv"),
    )
    real_exit, real_outcome, real_load = Transaction.__exit__, wf._commit_outcome, wf._load_in_transaction
    armed = {"on": False}

    def loaded_then_armed(*a, **k):
        report = real_load(*a, **k)
        armed["on"] = True
        return report

    def commit_then_ctrl_c(self, *a):  # the COMMIT goes through, then Ctrl-C arrives
        done = real_exit(self, *a)
        if armed["on"] and a[0] is None:
            armed["on"] = False
            raise KeyboardInterrupt
        return done

    def another_load_meanwhile(*a, **k):  # while the first load settles its commit on a new session
        monkeypatch.setattr(Transaction, "__exit__", real_exit)
        monkeypatch.setattr(wf, "_load_in_transaction", real_load)
        assert load(db, second, audit_home=home).status == "loaded"  # and recovers the first batch
        return real_outcome(*a, **k)

    monkeypatch.setattr(wf, "_load_in_transaction", loaded_then_armed)
    monkeypatch.setattr(Transaction, "__exit__", commit_then_ctrl_c)
    monkeypatch.setattr(wf, "_commit_outcome", another_load_meanwhile)
    report = load(db, first, audit_home=home)
    assert report.status == "loaded" and any("while committing" in w for w in report.warnings)
    assert sorted(_load_events(home)) == [(1, True), (2, False)]  # once, not twice


def test_rerunning_the_file_after_its_audit_event_failed_writes_the_event(db, tmp_path, monkeypatch):
    from voketag_ops import audit
    from voketag_ops.errors import NeedsOperatorError

    home, path = tmp_path / "home", sample(tmp_path, 20, seed=5)
    real_append = audit.AuditLog.append

    def full_disk(*a, **k):
        raise audit.AuditWriteError("disk full")

    monkeypatch.setattr(audit.AuditLog, "append", full_disk)
    with pytest.raises(NeedsOperatorError) as err:
        load(db, path, audit_home=home)
    assert "this one again, writes the missing event" in (err.value.hint or "")
    monkeypatch.setattr(audit.AuditLog, "append", real_append)
    again = load(db, path, audit_home=home)  # what an operator does after exit 7
    assert again.status == "duplicate"
    assert _load_events(home) == [(again.batch_id, True)]


# -- a batch rewritten whole, its seal recomputed: its anchor tells ---------------------------------


def _chain(tmp_path: Path) -> tuple[Any, wf.Anchorer, wf.AnchorStates]:
    """A real file chain store, the load's anchorer on it, and its anchor lookup."""
    from voketag_ops.adapters.local.chain_store import FileChainStore
    from voketag_ops.workflows import chain

    store = FileChainStore(tmp_path / "chain" / "chain.json")

    def anchorer(root: bytes, size: int, label: str) -> tuple[str, str | None]:
        done = chain.request_anchor(
            store, root=root, kind="ingest-batch", label=label, tree_size=size, now=NOW
        )
        return str(done.anchor["state"]), str(done.anchor["id"])

    def states(ids: Any) -> dict[str, tuple[str, int | None]]:
        return {a.id: (a.state.value, a.tree_size) for a in store.anchors(ids).values()}

    return store, anchorer, states


def _reseal(db: str, batch_id: int, tag: str, *, forget_anchor: bool = False) -> str:
    """What an attacker who can write the database does (`testing.ingest.reseal`); FORGET_ANCHOR
    clears the batch's recorded anchor too. Returns the new root."""
    from voketag_ops.testing.ingest import reseal

    with psycopg.connect(db, autocommit=True) as conn:
        root = reseal(conn, batch_id, tag, "EVIL-FACTORY")
        if forget_anchor:
            conn.execute("update ingest.batches set anchor_id = null where batch_id = %s", (batch_id,))
    return root.hex()


def test_a_resealed_batch_is_an_anchor_mismatch_and_its_root_is_never_requested(db, tmp_path):
    from voketag_ops.workflows import chain

    store, anchorer, states = _chain(tmp_path)
    path = sample(tmp_path, 1500)
    report = load(db, path, anchorer=anchorer)
    assert report.anchor == "pending" and report.anchor_id == report.merkle_root
    assert chain.run_anchors(store, now=NOW, difficulty=1).outcome == "anchored"
    tag = file_rows(path)[1100][0]
    assert wf.prove_tag(db, tag, anchor_states=states).anchor == "anchored"
    assert wf.batch_anchor_requests(db, store) == wf.BatchAnchorCheck()  # nothing lost, nothing wrong

    forged = _reseal(db, report.batch_id, tag)
    proof = wf.prove_tag(db, tag, anchor_states=states)
    assert proof.valid and proof.intact  # the seal was recomputed: only the anchor can tell
    assert proof.anchor == "mismatch" and proof.anchor_id == report.merkle_root
    assert forged in proof.anchor_mismatch and report.merkle_root in proof.anchor_mismatch
    (listed,) = wf.list_batches(db, anchor_states=states)
    assert listed["anchor"] == "mismatch" and listed["anchor_mismatch"] == proof.anchor_mismatch
    check = wf.batch_anchor_requests(db, store)
    assert check.requests == [] and [m["batch_id"] for m in check.mismatches] == [report.batch_id]
    assert check.mismatches[0]["root"] == forged and check.mismatches[0]["anchor_id"] == report.merkle_root
    # Loading the file again (a duplicate) requests no anchor of the rewritten batch either.
    again = load(db, path, anchorer=anchorer)
    assert again.anchor == "mismatch" and again.warnings == [proof.anchor_mismatch]
    assert forged not in store.anchors()

    # The anchor id cleared too: the chain's anchor of the batch's label has another root.
    _reseal(db, report.batch_id, tag, forget_anchor=True)
    check = wf.batch_anchor_requests(db, store)
    assert check.requests == [] and check.mismatches[0]["anchor_id"] == report.merkle_root
    assert "'ingest batch" in check.mismatches[0]["message"]


def test_a_batch_whose_anchor_was_lost_is_still_requested_and_one_of_another_size_is_not(db, tmp_path):
    from voketag_ops.workflows.chain import ChainUnavailableError

    store, anchorer, states = _chain(tmp_path)
    first = load(db, sample(tmp_path, 20, name="a.csv"), anchorer=anchorer)

    def down(root: bytes, size: int, label: str) -> tuple[str, str | None]:
        raise ChainUnavailableError("the chain is down")

    lost = load(db, sample(tmp_path, 30, seed=2, name="b.csv"), anchorer=down)
    assert lost.anchor == "unavailable" and lost.anchor_id is None
    check = wf.batch_anchor_requests(db, store)
    assert check.mismatches == []
    label = wf.batch_label(lost.batch_id, database_id(db))
    assert label == f"ingest batch {lost.batch_id} of database {database_id(db)[:12]}"
    assert check.requests == [(bytes.fromhex(lost.merkle_root), "ingest-batch", label, 30)]

    with psycopg.connect(db, autocommit=True) as conn:
        conn.execute("update ingest.batches set rows_loaded = 19 where batch_id = %s", (first.batch_id,))
    check = wf.batch_anchor_requests(db, store)
    assert [m["batch_id"] for m in check.mismatches] == [first.batch_id]
    assert "tree of 20 leaves" in check.mismatches[0]["message"]
    assert [r[2] for r in check.requests] == [label]
    assert wf.list_batches(db, anchor_states=states)[-1]["anchor"] == "mismatch"


def database_id(db: str) -> str:
    with psycopg.connect(db) as conn:
        return wf.database_id(conn)


def test_a_new_databases_batch_is_not_held_against_the_anchor_of_an_old_ones_batch_of_its_number(
    db, tmp_path, local_env, database_with
):
    # Found by review: after `env destroy` (the chain kept), batch numbers start again; the pitr
    # drill's unanchored batch 1 was held against the old database's `ingest batch 1`: a false
    # "rewritten" mismatch, exit 1 on every `chain anchor run`.
    store, anchorer, _states = _chain(tmp_path)
    first = load(db, sample(tmp_path, 20, name="a.csv"), anchorer=anchorer)
    with database_with() as name:
        other = local_env.primary().conninfo(name)
        again = load(other, sample(tmp_path, 30, seed=5, name="b.csv"))  # no anchor requested
        assert again.batch_id == first.batch_id and database_id(other) != database_id(db)
        check = wf.batch_anchor_requests(other, store)
        assert check.mismatches == []
        assert check.requests == [
            (
                bytes.fromhex(again.merkle_root),
                "ingest-batch",
                wf.batch_label(again.batch_id, database_id(other)),
                30,
            )
        ]
    # and within one database the label still holds a rewritten batch whose anchor id was cleared
    _reseal(db, first.batch_id, file_rows(tmp_path / "a.csv")[3][0], forget_anchor=True)
    assert [m["batch_id"] for m in wf.batch_anchor_requests(db, store).mismatches] == [first.batch_id]


def test_a_root_anchored_by_hand_for_another_size_is_a_mismatch_to_anchor_run_as_to_the_listing(db, tmp_path):
    # `chain anchor run` read only ingest-batch anchors: a batch's root anchored (kind batch) for
    # 7 leaves was a mismatch to `ingest batches` and `proof` but not to the run, which mined it.
    from voketag_ops.workflows import chain

    store, _, states = _chain(tmp_path)
    path = sample(tmp_path, 20)
    root = load(db, path, dry_run=True).merkle_root
    assert root is not None
    chain.request_anchor(store, root=bytes.fromhex(root), kind="batch", label="manual", tree_size=7, now=NOW)
    loaded = load(db, path)  # no anchorer: the chain is not asked at load time
    assert wf.list_batches(db, anchor_states=states)[0]["anchor"] == "mismatch"
    check = wf.batch_anchor_requests(db, store)
    assert check.requests == [] and [m["batch_id"] for m in check.mismatches] == [loaded.batch_id]
    assert "tree of 7 leaves" in check.mismatches[0]["message"]


def test_a_forged_root_anchored_by_hand_never_stands_for_the_batchs_anchor(db, tmp_path):
    # A rewritten batch (anchor id cleared) whose forged root was then requested by hand with the
    # default kind had a state, so anchor run skipped its label check and mined the forgery.
    from voketag_ops.workflows import chain

    store, anchorer, _ = _chain(tmp_path)
    path = sample(tmp_path, 30)
    report = load(db, path, anchorer=anchorer)
    assert chain.run_anchors(store, now=NOW, difficulty=1).outcome == "anchored"
    forged = _reseal(db, report.batch_id, file_rows(path)[3][0], forget_anchor=True)
    chain.request_anchor(store, root=bytes.fromhex(forged), kind="batch", label="x", tree_size=30, now=NOW)
    check = wf.batch_anchor_requests(db, store)
    assert check.requests == [] and [m["batch_id"] for m in check.mismatches] == [report.batch_id]
    assert check.mismatches[0]["anchor_id"] == report.merkle_root


# -- damaged seal data: a failed proof, not a backend failure ---------------------------------------

DAMAGE = {
    "chunk-roots-cut": ("update ingest.batches set chunk_roots = substring(chunk_roots from 1 for 63)", "chunk_roots"),
    "chunk-root-duplicated": (
        "update ingest.batches set chunk_roots = chunk_roots || substring(chunk_roots from length(chunk_roots) - 31)",
        "does not match the batch size",
    ),
    "chunk-deleted": ("delete from ingest.tag_chunks where chunk_no = 1", "tag_chunks has no chunk 1"),
    "rows-loaded-changed": ("update ingest.batches set rows_loaded = rows_loaded + 1", "rows_loaded 1501"),
    "leaf-index-negative": ("update ingest.tags set leaf_index = -1 where leaf_index = 1100", "leaf_index -1"),
    "leaf-index-huge": (
        "update ingest.tags set leaf_index = 2000000000 where leaf_index = 1100",
        "leaf_index 2000000000",
    ),
    "chunk-size-zero": ("update ingest.batches set chunk_size = 0", "chunk_size is 0"),
}  # fmt: skip


def _proof_after(db: str, tmp_path: Path, sql: str) -> tuple[Any, Any]:
    """(load report, proof of the tag at leaf 1100) of a 1500-row batch once SQL damaged it."""
    path = sample(tmp_path, 1500)
    report = load(db, path)
    with psycopg.connect(db, autocommit=True) as conn:
        conn.execute(sql)
    return report, wf.prove_tag(db, file_rows(path)[1100][0])


@pytest.mark.parametrize(("sql", "named"), DAMAGE.values(), ids=DAMAGE.keys())
def test_damaged_seal_data_is_a_failed_proof_naming_what_is_damaged(db, tmp_path, sql, named):
    report, proof = _proof_after(db, tmp_path, sql)
    assert proof.found and not proof.valid and not proof.intact
    assert proof.damaged is not None and named in proof.damaged, proof.damaged
    assert proof.damaged.startswith(f"batch {report.batch_id}'s seal is damaged")


ROW_DAMAGE = {
    "time-infinity": ("update ingest.tags set manufactured_at = 'infinity' where leaf_index = 1100", "'infinity'"),
    "time-bc": (
        "update ingest.tags set manufactured_at = '0044-03-15 12:00:00+00 BC' where leaf_index = 1100",
        "'0044-03-15 12:00:00+00 BC'",
    ),
    "time-after-9999": (
        "update ingest.tags set manufactured_at = '10000-01-01 00:00:00+00' where leaf_index = 1100",
        "'10000-01-01 00:00:00+00'",
    ),
    # tags.batch_id has no foreign key (docs/decisions.md): a tag can outlive its batch's row.
    "batch-row-missing": ("update ingest.tags set batch_id = 99 where leaf_index = 1100", "batch 99's row is missing"),
}  # fmt: skip


@pytest.mark.parametrize(("sql", "named"), ROW_DAMAGE.values(), ids=ROW_DAMAGE.keys())
def test_a_stored_row_that_cannot_be_a_sealed_leaf_is_a_failed_proof(db, tmp_path, sql, named):
    """Was exit 4 (a time psycopg cannot convert) or "not loaded" (an inner join to batches)."""
    _report, proof = _proof_after(db, tmp_path, sql)
    assert proof.found and not proof.valid and not proof.intact and proof.leaf_index == 1100
    assert proof.damaged is not None and named in proof.damaged, proof.damaged


def test_a_time_at_the_edge_of_the_years_a_load_writes_still_proves(db, tmp_path):
    path = write(
        tmp_path,
        "tag_id,sku,product_name,factory_id,manufactured_at\n"
        "EDGE-1,SKU-1,Widget,F1,0001-01-01T00:00:00Z\n"
        "EDGE-2,SKU-1,Widget,F1,2024-05-01T08:30:00.123456Z\n",
    )
    load(db, path)
    for tag in ("EDGE-1", "EDGE-2"):
        proof = wf.prove_tag(db, tag)
        assert proof.valid and proof.intact and proof.damaged is None, proof
