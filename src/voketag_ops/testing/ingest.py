"""What an attacker who can write the ingest database does, for the tests of tamper evidence."""

from __future__ import annotations

from typing import Any


def reseal(conn: Any, batch_id: int, tag: str, factory_id: str = "EVIL") -> bytes:
    """Rewrite TAG's factory_id in batch BATCH_ID on CONN (a psycopg connection, autocommit),
    then recompute the batch's leaf hashes, chunk roots and root as a load seals them, so
    every stored check of the batch agrees with the rewrite. Returns the new root."""
    from psycopg.rows import dict_row

    from voketag_ops.core import ingest as core

    conn.execute("update ingest.tags set factory_id = %s where tag_id = %s", (factory_id, tag))
    rows = conn.cursor(row_factory=dict_row).execute(
        "select * from ingest.tags where batch_id = %s order by leaf_index", (batch_id,)
    )
    seal, chunks = core.seal_leaves([core.canonical_leaf(r) for r in rows])
    for no, leaf_hashes in enumerate(chunks):
        conn.execute(
            "update ingest.tag_chunks set leaf_hashes = %s where batch_id = %s and chunk_no = %s",
            (leaf_hashes, batch_id, no),
        )
    conn.execute(
        "update ingest.batches set merkle_root = %s, chunk_roots = %s where batch_id = %s",
        (seal.root, b"".join(seal.chunk_roots), batch_id),
    )
    root: bytes = seal.root
    return root
