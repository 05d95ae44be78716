"""The chain's default store across the local environment's life: started on demand by
`voke chain`, never by the audit log; checkpoints queued while it is down or destroyed
catch up at the next anchoring, and `voke audit verify` never fails for lack of anchors."""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from voketag_ops.core import merkle

pytestmark = pytest.mark.pg


def test_down_destroy_and_catch_up(voke, make_environ, tmp_path: Path) -> None:
    home = tmp_path / "home"
    environ = make_environ(home, VOKE_LOCAL__REPLICA="false", VOKE_CHAIN__MIN_DIFFICULTY="4")

    def run(*args: str):  # returns conftest Result
        return voke(*args, environ=environ)

    def verify() -> dict:
        result = run("audit", "verify", "--json")
        assert result.exit_code == 0, result.stdout + result.stderr
        return result.json["result"]

    try:
        dry = run("chain", "anchor", "run", "--dry-run", "--json")  # a dry run starts nothing
        assert dry.exit_code == 4 and "not running" in dry.json["error"]["message"], dry.stdout
        assert not (home / "pg").exists()
        requested = run("chain", "anchor", "request", merkle.root([b"one"]).hex())
        assert requested.exit_code == 0 and "starting the local environment" in requested.stderr
        # a command that changes the chain starts all of `env up` (services too), as others do
        assert len(run("audit", "show", "-e", "env.up", "--json").json["result"]["entries"]) == 1
        assert run("chain", "anchor", "run", "--difficulty", "4").exit_code == 0
        first = run("audit", "checkpoint", "--json").json["result"]
        assert first["anchoring_queued"] is False and first["anchors_requested"] == 1
        assert verify()["anchors_checked"] == 1

        # A batch whose anchor request the chain lost (an asynchronous failover) is requested
        # again by the next `chain anchor run`.
        sample = tmp_path / "batch.csv"
        assert run("ingest", "sample", "--rows", "20", "--out", str(sample)).exit_code == 0
        loaded = run("ingest", "load", str(sample), "--json").json["result"]
        assert loaded["anchor"] == "pending"
        _forget_anchor(home, loaded["anchor_id"], unrecorded=True)  # nor the batch row its id
        planned = run("chain", "anchor", "run", "--dry-run", "--json").json["result"]
        assert "1 requested first" in planned["message"]  # the batch, which the real run requests
        lost = run("chain", "anchor", "run", "--difficulty", "4", "--json")
        assert lost.exit_code == 0 and lost.json["result"]["outcome"] == "anchored"
        assert lost.json["result"]["pending"] == planned["pending"]  # the dry run counted as it runs
        batches = run("ingest", "batches", "--json").json["result"]["batches"]
        assert [b["anchor"] for b in batches] == ["anchored"]
        events = run("audit", "show", "-e", "chain.anchor.run", "--json").json["result"]["entries"]
        assert events[-1]["details"]["ingest_batches_requested"] == 1

        # A batch rewritten in the database, its seal recomputed, is no lost anchor: its root is
        # reported (exit 1), never requested, until the batch is restored.
        with _resealed(home, loaded["batch_id"]) as forged:
            resealed = run("chain", "anchor", "run", "--difficulty", "4", "--json")
            assert resealed.exit_code == 1, resealed.stdout + resealed.stderr
            (mismatch,) = resealed.json["result"]["mismatched_batches"]
            assert (mismatch["root"], mismatch["anchor_id"]) == (forged, loaded["merkle_root"])
            assert f"warning: batch {loaded['batch_id']}: its root {forged}" in resealed.stderr
            assert forged not in {
                a["id"] for a in run("chain", "anchors", "--json").json["result"]["anchors"]
            }
            assert run("chain", "anchor", "run", "--dry-run", "--json").exit_code == 1
        assert run("chain", "anchor", "run", "--dry-run", "--json").exit_code == 0  # restored

        # Down: audit appends (env.down itself, a checkpoint) work and start nothing.
        assert run("env", "down").exit_code == 0
        queued = run("audit", "checkpoint", "--json")
        assert queued.exit_code == 0 and queued.json["result"]["anchoring_queued"] is True
        assert not (home / "pg" / "primary" / "postmaster.pid").exists()
        down = verify()
        assert down["anchors_unchecked"] and down["checkpoints_checked"] == 2

        # The next anchoring starts the environment and takes the queued checkpoint along.
        caught_up = run("chain", "anchor", "run", "--difficulty", "4", "--json")
        assert caught_up.exit_code == 0 and caught_up.json["result"]["outcome"] == "anchored"
        up = verify()
        assert up["anchors_checked"] == 2 and up["checkpoints_without_anchor"] == 0

        # Destroy wipes the databases but exports the chain first; the audit log stays and verifies.
        destroyed = run("env", "destroy", "--yes", "--json")
        assert destroyed.exit_code == 0 and destroyed.json["result"]["chain"].startswith("exported to")
        assert (home / "chain" / "chain.json").exists()
        gone = verify()  # read from the exported file, with nothing running
        assert gone["anchors_checked"] == 2 and not gone["anchors_unchecked"]
        events = run("audit", "show", "-e", "chain.anchor.run", "--json").json["result"]["entries"]
        assert [e["details"]["audit_checkpoints_requested"] for e in events] == [0, 0, 0, 1]
        # The next chain use starts a new environment and moves the exported chain back in.
        anchors = run("chain", "anchors", "--json")
        assert anchors.exit_code == 0, anchors.stdout + anchors.stderr
        assert len(anchors.json["result"]["anchors"]) == 4  # the root, the batch, both checkpoints
        assert verify()["anchors_checked"] == 2

        # Destroying a stopped environment starts it to export the chain; an export that
        # fails deletes nothing (exit 5) and names --discard-chain.
        assert run("env", "down").exit_code == 0
        (home / "chain" / "chain.json").write_text("{not json")  # a migration that cannot run
        refused = run("env", "destroy", "--yes", "--json")
        assert refused.exit_code == 5 and "--discard-chain" in refused.stdout, refused.stdout
        assert (home / "pg").is_dir()
        (home / "chain" / "chain.json").unlink()
        exported = run("env", "destroy", "--yes", "--json")
        assert exported.exit_code == 0 and exported.json["result"]["chain"].startswith("exported to")
        assert '"anchors"' in (home / "chain" / "chain.json").read_text()
        # Discarding the chain also sets aside an export still waiting to be moved back in.
        discarded = run("env", "destroy", "--yes", "--discard-chain", "--json")
        assert discarded.exit_code == 0 and "set aside as" in discarded.json["result"]["chain"]
        assert not (home / "chain" / "chain.json").exists()
    finally:
        voke("env", "destroy", "--yes", environ=environ)


def _destroy_paused_after_export(environ: dict[str, str], home: Path) -> Any:
    """`env destroy` in a thread, held where a reviewer's `voke env destroy & voke chain
    validate` met it: the chain exported to chain.json, the databases not deleted yet. Returns
    (thread, exported, release, outcome): set RELEASE to let it go on."""
    from voketag_ops.config import load_config
    from voketag_ops.workflows.env import LocalPlatform

    platform = LocalPlatform(load_config(environ=environ, cwd=home.parent).settings)
    exported, release = threading.Event(), threading.Event()
    outcome: list[Any] = []

    def progress(message: str) -> None:
        if message.startswith("chain exported to"):
            exported.set()
            release.wait()

    def destroy() -> None:
        try:
            outcome.append(platform.destroy(progress))
        except BaseException as exc:  # (reported by the test, not lost in the thread)
            outcome.append(exc)
            exported.set()

    thread = threading.Thread(target=destroy, daemon=True)
    thread.start()
    exported.wait()
    return thread, exported, release, outcome


def _open_fds(path: Path) -> int:
    """How many of this process's file descriptors are open on PATH."""
    count = 0
    for fd in Path("/proc/self/fd").iterdir():
        with contextlib.suppress(OSError):
            count += os.readlink(fd) == str(path)
    return count


def test_a_chain_use_during_destroy_waits_and_loses_nothing(voke, make_environ, tmp_path: Path) -> None:
    """A chain command between destroy's export and its deletion moved the export into the
    databases destroy then deleted (the chain was gone). Now it waits for the destroy (env.lock)
    and moves the export into the environment it then starts."""
    home = tmp_path / "home"
    environ = make_environ(home, VOKE_LOCAL__REPLICA="false", VOKE_CHAIN__MIN_DIFFICULTY="4")
    try:
        requested = voke("chain", "anchor", "request", merkle.root([b"kept"]).hex(), environ=environ)
        assert requested.exit_code == 0
        assert voke("chain", "anchor", "run", "--difficulty", "4", environ=environ).exit_code == 0
        thread, _exported, release, outcome = _destroy_paused_after_export(environ, home)
        assert not outcome, outcome
        assert (home / "chain" / "chain.json").exists()

        def release_when_waiting() -> None:  # the command waits on env.lock beside destroy's hold
            while not release.is_set() and _open_fds(home / "env.lock") < 2:
                time.sleep(0.05)
            release.set()

        watcher = threading.Thread(target=release_when_waiting, daemon=True)
        watcher.start()
        try:
            during = voke("chain", "validate", "--json", environ=environ)
        finally:
            release.set()
            watcher.join()
            thread.join()
        assert isinstance(outcome[0], dict), outcome
        assert outcome[0]["chain"].startswith("exported to")
        assert during.exit_code == 0, during.stdout + during.stderr
        assert during.json["result"]["length"] == 1
        after = voke("chain", "validate", "--json", environ=environ)
        assert after.exit_code == 0 and after.json["result"]["length"] == 1, after.stdout + after.stderr
    finally:
        voke("env", "destroy", "--yes", "--discard-chain", environ=environ)


def test_a_chain_write_during_destroy_fails_rather_than_vanish(voke, make_environ, tmp_path: Path) -> None:
    """A writer that opened the chain before destroy and commits after its export committed a
    block (here an anchor) to databases destroy then deleted, and said it succeeded. Destroy now
    keeps writers out from its export to the servers' stop: the commit fails, and says so."""
    from datetime import UTC, datetime

    import psycopg

    from voketag_ops.config import load_config
    from voketag_ops.core import chain as ch
    from voketag_ops.workflows.chain import open_chain_store

    home = tmp_path / "home"
    environ = make_environ(home, VOKE_LOCAL__REPLICA="false")
    try:
        requested = voke("chain", "anchor", "request", merkle.root([b"kept"]).hex(), environ=environ)
        assert requested.exit_code == 0
        settings = load_config(environ=environ, cwd=tmp_path).settings
        store = open_chain_store(home, settings=settings)
        conninfo = store.conninfo  # type: ignore[attr-defined]
        late, _ = ch.request_anchor(
            None, root=merkle.root([b"late"]), kind="manual", label="late", now=datetime.now(UTC)
        )
        thread, _exported, release, outcome = _destroy_paused_after_export(environ, home)
        written: list[Any] = []

        def write() -> None:
            try:
                store.commit(anchors=[late])
                written.append("committed")
            except ch.ChainStoreError as exc:
                written.append(exc)

        writer = threading.Thread(target=write, daemon=True)
        writer.start()
        try:
            with psycopg.connect(conninfo, autocommit=True) as conn:
                waiting = "select count(*) from pg_locks where locktype = 'advisory' and not granted"
                while writer.is_alive() and conn.execute(waiting).fetchone() == (0,):
                    time.sleep(0.05)
        finally:
            release.set()
            writer.join()
            thread.join()
        assert isinstance(outcome[0], dict), outcome
        assert written and isinstance(written[0], ch.ChainStoreError), written
        exported = (home / "chain" / "chain.json").read_text()
        assert merkle.root([b"kept"]).hex() in exported and late.id not in exported
    finally:
        voke("env", "destroy", "--yes", "--discard-chain", environ=environ)


@contextlib.contextmanager
def _resealed(home: Path, batch_id: int) -> Iterator[str]:
    """Batch BATCH_ID of HOME's database with one row rewritten and its leaf hashes, chunk
    roots and root recomputed (yields the new root), then restored."""
    import psycopg

    from voketag_ops.adapters.local.environment import LocalEnvironment
    from voketag_ops.config import LocalSettings
    from voketag_ops.testing.ingest import reseal

    env = LocalEnvironment.from_settings(LocalSettings(home=home))
    with psycopg.connect(env.platform_database(), autocommit=True) as conn:
        where = ("where batch_id = %s", (batch_id,))
        saved = conn.execute(
            "select merkle_root, chunk_roots from ingest.batches " + where[0], where[1]
        ).fetchone()
        chunks = conn.execute(
            "select chunk_no, leaf_hashes from ingest.tag_chunks " + where[0], where[1]
        ).fetchall()
        (tag, factory) = conn.execute(
            "select tag_id, factory_id from ingest.tags " + where[0] + " limit 1", where[1]
        ).fetchone()
        root = reseal(conn, batch_id, tag)
        try:
            yield root.hex()
        finally:
            conn.execute("update ingest.tags set factory_id = %s where tag_id = %s", (factory, tag))
            for no, leaf_hashes in chunks:
                conn.execute(
                    "update ingest.tag_chunks set leaf_hashes = %s where batch_id = %s and chunk_no = %s",
                    (leaf_hashes, batch_id, no),
                )
            conn.execute(
                "update ingest.batches set merkle_root = %s, chunk_roots = %s " + where[0], (*saved, batch_id)
            )


def _forget_anchor(home: Path, anchor_id: str, *, unrecorded: bool = False) -> None:
    """What an asynchronous failover can do: the batch row survives, its anchor request not
    (UNRECORDED: nor the anchor id on the batch row, as when the chain was down at the load)."""
    import psycopg

    from voketag_ops.adapters.local.environment import LocalEnvironment
    from voketag_ops.config import LocalSettings

    env = LocalEnvironment.from_settings(LocalSettings(home=home))
    with psycopg.connect(env.platform_database(), autocommit=True) as conn:
        assert conn.execute("delete from voke_chain_anchors where id = %s", (anchor_id,)).rowcount == 1
        if unrecorded:
            conn.execute("update ingest.batches set anchor_id = null")
