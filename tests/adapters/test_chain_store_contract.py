"""One contract for every ChainStore: the JSON file and PostgreSQL (the shared local env)."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from voketag_ops.adapters.local.chain_store import FileChainStore
from voketag_ops.core import chain as ch
from voketag_ops.core import merkle
from voketag_ops.ports import ChainStore
from voketag_ops.workflows import chain as wf

T0 = datetime(2026, 6, 1, 2, 0, 0, 654321, tzinfo=UTC)
NO_WAIT = wf.RetryPolicy(attempts=30, initial=0.001, maximum=0.01)


@pytest.fixture(params=["file", pytest.param("postgres", marks=pytest.mark.pg)])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> ChainStore:
    if request.param == "file":
        return FileChainStore(tmp_path / "chain.json")
    from voketag_ops.adapters.local.pg_chain_store import PgChainStore

    local_env: Any = request.getfixturevalue("local_env")
    database: str = request.getfixturevalue("pg_database")
    return PgChainStore(local_env.primary().conninfo(database))


def test_is_a_chain_store(store: ChainStore) -> None:
    assert isinstance(store, ChainStore)
    assert store.load() == ch.ChainState()


def test_blocks_and_anchors_round_trip_exactly(store: ChainStore) -> None:
    anchor, _ = ch.request_anchor(
        None, root=merkle.root([b"a"]), kind="batch", label="ü-1", now=T0, tree_size=1
    )
    store.commit(anchors=[anchor])
    genesis = ch.seal(
        index=0,
        timestamp=T0,
        prev_hash=ch.ZERO_HASH,
        records=[anchor.record(), "ünïcode ✓", ""],
        difficulty=0,
        nonce=ch.MAX_NONCE,
    )
    anchored = ch.mark_anchored(anchor, block_index=0, now=T0 + timedelta(microseconds=1))
    store.commit(blocks=[genesis], anchors=[anchored])
    state = store.load()
    assert state.blocks == (genesis,)
    assert state.anchors == {anchored.id: anchored}
    assert ch.validate_chain(state.blocks).ok


def test_head_and_anchor_lookups_read_only_what_they_name(store: ChainStore) -> None:
    assert store.head() is None and store.anchors(["00" * 32]) == {}
    made = {
        name: ch.request_anchor(None, root=merkle.root([name.encode()]), kind=kind, label=name, now=T0)[0]
        for name, kind in [("a", "batch"), ("b", "audit-checkpoint"), ("c", "batch")]
    }
    store.commit(anchors=list(made.values()))
    a, b, c = made["a"], made["b"], made["c"]
    block = ch.seal(
        index=0, timestamp=T0, prev_hash=ch.ZERO_HASH, records=[a.record()], difficulty=0, nonce=1
    )
    anchored = ch.mark_anchored(a, block_index=0, now=T0)
    store.commit(blocks=[block], anchors=[anchored])
    assert store.head() == block
    assert store.anchors([c.id, "ff" * 32]) == {c.id: c}  # an unknown id is simply absent
    assert store.anchors([]) == {}
    assert store.anchors() == {a.id: anchored, b.id: b, c.id: c}
    assert store.anchors(state=ch.AnchorState.PENDING) == {b.id: b, c.id: c}
    assert store.anchors(kind="batch") == {a.id: anchored, c.id: c}
    assert store.anchors([a.id, b.id], kind="batch", state=ch.AnchorState.ANCHORED) == {a.id: anchored}
    assert store.load(kind="audit-checkpoint") == ch.ChainState(blocks=(block,), anchors={b.id: b})
    assert store.load(ids=[c.id, "00" * 32]) == ch.ChainState(blocks=(block,), anchors={c.id: c})
    assert store.load(kind="batch", ids=[b.id]) == ch.ChainState(blocks=(block,))
    second = ch.seal(index=1, timestamp=T0, prev_hash=block.hash, records=[], difficulty=0, nonce=2)
    store.commit(blocks=[second])
    assert store.head() == second


def test_conflicts_are_detected(store: ChainStore) -> None:
    first = ch.mine(index=0, timestamp=T0, prev_hash=ch.ZERO_HASH, records=["x"], difficulty=4).block
    rival = ch.mine(index=0, timestamp=T0, prev_hash=ch.ZERO_HASH, records=["y"], difficulty=4).block
    assert first is not None and rival is not None
    store.commit(blocks=[first])
    with pytest.raises(ch.StoreConflictError):
        store.commit(blocks=[rival])
    skipping = ch.mine(index=2, timestamp=T0, prev_hash=first.hash, records=[], difficulty=4).block
    assert skipping is not None
    with pytest.raises(ch.StoreConflictError):
        store.commit(blocks=[skipping])
    anchor, _ = ch.request_anchor(None, root=merkle.root([b"a"]), kind="batch", label="a", now=T0)
    store.commit(anchors=[anchor])
    with pytest.raises(ch.StoreConflictError):
        store.commit(anchors=[anchor])
    # A failed commit changes nothing, not even its valid parts.
    second = ch.mine(index=1, timestamp=T0, prev_hash=first.hash, records=["z"], difficulty=4).block
    assert second is not None
    with pytest.raises(ch.StoreConflictError):
        store.commit(blocks=[second], anchors=[anchor])
    assert len(store.load().blocks) == 1


def test_concurrent_writers(store: ChainStore) -> None:
    errors: list[BaseException] = []

    def worker(w: int) -> None:
        try:
            for i in range(6):
                root = merkle.root([f"{w}-{i}".encode()])
                wf.request_anchor(store, root=root, kind="batch", label=f"{w}-{i}", now=T0, retry=NO_WAIT)
                if i % 2:
                    wf.run_anchors(store, now=T0, difficulty=4, retry=NO_WAIT)
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(w,)) for w in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors
    wf.run_anchors(store, now=T0, difficulty=4, retry=NO_WAIT)
    state = store.load()
    assert len(state.anchors) == 18 and not state.pending()
    assert wf.validate(store, min_difficulty=4).ok
    records = [r for b in state.blocks for r in b.records]
    assert len(records) == len(set(records)) == 18


def test_import_extends_a_prefix_takes_an_older_copy_as_nothing_new_and_refuses_a_divergent_chain(
    store: ChainStore, tmp_path: Path
) -> None:
    assert store.location  # something a person can read, for audit targets
    source = FileChainStore(tmp_path / "source.json")
    wf.request_anchor(source, root=merkle.root([b"a"]), kind="batch", label="a", now=T0)
    wf.run_anchors(source, now=T0, difficulty=4)
    first = source.load()
    assert store.import_state(first) == {"blocks_added": 1, "anchors_updated": 1}
    wf.request_anchor(source, root=merkle.root([b"b"]), kind="batch", label="b", now=T0)
    wf.run_anchors(source, now=T0, difficulty=4)
    wf.request_anchor(source, root=merkle.root([b"c"]), kind="batch", label="c", now=T0)
    # A local anchor the export does not know stays; a newer version of a shared one wins.
    wf.request_anchor(store, root=merkle.root([b"local"]), kind="batch", label="local", now=T0)
    longer = source.load()
    assert store.import_state(longer) == {"blocks_added": 1, "anchors_updated": 2}
    state = store.load()
    assert state.blocks == longer.blocks
    assert {a.label: a.state.value for a in state.anchors.values()} == {
        "a": "anchored",
        "b": "anchored",
        "c": "pending",
        "local": "pending",
    }
    assert store.import_state(longer) == {"blocks_added": 0, "anchors_updated": 0}  # idempotent

    rival = FileChainStore(tmp_path / "rival.json")
    wf.request_anchor(rival, root=merkle.root([b"r"]), kind="batch", label="r", now=T0)
    wf.run_anchors(rival, now=T0, difficulty=4)
    wf.run_anchors(rival, now=T0, difficulty=4)
    with pytest.raises(ch.StoreConflictError):
        store.import_state(rival.load())
    # an older copy of this chain (a backup taken before): nothing to add, not "they diverge"
    assert store.import_state(first) == {"blocks_added": 0, "anchors_updated": 0}
    assert store.load() == state


def test_an_import_never_unanchors_a_sealed_root_and_refuses_a_contradiction(
    store: ChainStore, tmp_path: Path
) -> None:
    home_a, home_b = FileChainStore(tmp_path / "a.json"), FileChainStore(tmp_path / "b.json")
    wf.request_anchor(home_a, root=merkle.root([b"x"]), kind="batch", label="x", now=T0)
    wf.run_anchors(home_a, now=T0, difficulty=4)
    home_b.import_state(home_a.load())
    z = merkle.root([b"z"])
    wf.request_anchor(home_a, root=z, kind="batch", label="z", now=T0)
    wf.run_anchors(home_a, now=T0, difficulty=4)  # z in block 1, version 2
    wf.request_anchor(home_b, root=z, kind="batch", label="z", now=T0)
    wf.cancel_anchor(home_b, z.hex(), now=T0)
    wf.request_anchor(home_b, root=z, kind="batch", label="z", now=T0)  # pending, version 3

    # This store holds A's blocks but not its anchors (rows lost): B's pending z contradicts block 1.
    assert store.import_state(ch.ChainState(blocks=home_a.load().blocks)) == {
        "blocks_added": 2,
        "anchors_updated": 0,
    }
    before = store.load()
    with pytest.raises(ch.StoreConflictError, match=r"block 1 holds it already\); nothing was imported"):
        store.import_state(home_b.load())
    assert store.load() == before
    assert store.import_state(home_a.load()) == {"blocks_added": 0, "anchors_updated": 2}
    assert store.import_state(home_b.load()) == {"blocks_added": 0, "anchors_updated": 0}
    assert store.load().anchors[z.hex()].state is ch.AnchorState.ANCHORED
    assert wf.validate(store, min_difficulty=4).ok


@pytest.mark.pg
def test_unreachable_postgres_is_a_store_error(tmp_path: Path) -> None:
    from voketag_ops.adapters.local.pg_chain_store import PgChainStore

    store = PgChainStore(f"host={tmp_path} port=1 dbname=nope user=nobody", connect_timeout=1)
    with pytest.raises(ch.ChainStoreError) as info:
        store.load()
    assert info.value.exit_code == 4


class _NoWholeReads:
    """The store, but reading it whole fails: what a listing must not need."""

    def __init__(self, store: ChainStore) -> None:
        self._store = store

    def __getattr__(self, name: str) -> Any:
        if name == "load":
            raise AssertionError("read the whole chain")
        return getattr(self._store, name)


def test_an_anchor_listing_is_the_newest_page_of_its_state_and_never_reads_the_chain_whole(
    store: ChainStore,
) -> None:
    def requested(name: str, at: datetime) -> ch.Anchor:
        return ch.request_anchor(None, root=merkle.root([name.encode()]), kind="batch", label=name, now=at)[0]

    # Requested over three days, two at the same instant (the larger root first), made in another order.
    made = [
        requested(n, T0 + timedelta(days=d)) for n, d in [("b", 1), ("a", 0), ("d", 2), ("c", 1), ("e", 2)]
    ]
    store.commit(anchors=made)
    by_name = {a.label: a for a in made}
    block = ch.seal(
        index=0, timestamp=T0, prev_hash=ch.ZERO_HASH, records=[by_name["c"].record()], difficulty=0, nonce=1
    )
    anchored = ch.mark_anchored(by_name["c"], block_index=0, now=T0)
    cancelled = ch.cancel_anchor(by_name["e"], now=T0)
    store.commit(blocks=[block], anchors=[anchored, cancelled])
    newest = [a.label for a in sorted(made, key=lambda a: (a.requested_at, a.root), reverse=True)]
    assert newest[:2] == sorted(["d", "e"], key=lambda n: by_name[n].root, reverse=True)

    page = store.anchor_page(limit=3)
    assert [a.label for a in page.anchors] == newest[:3]
    assert page.counts == {"pending": 3, "anchored": 1, "cancelled": 1, "failed": 0}
    assert [a.label for a in store.anchor_page(limit=50).anchors] == newest
    pending = store.anchor_page(state=ch.AnchorState.PENDING, limit=2)
    assert [a.label for a in pending.anchors] == [n for n in newest if n in "abd"][:2]
    assert pending.anchors[0] == by_name["d"]  # parsed whole
    assert store.anchor_page(state=ch.AnchorState.FAILED, limit=5).anchors == ()
    assert store.anchor_page(state=ch.AnchorState.ANCHORED, limit=5).anchors == (anchored,)

    listing = wf.list_anchors(_NoWholeReads(store), state="pending", limit=1)  # type: ignore[arg-type]
    assert [a["label"] for a in listing["anchors"]] == ["d"]
    assert (listing["total"], listing["limit"], listing["chain_length"]) == (3, 1, 1)  # more exist: 3 > 1
    every = wf.list_anchors(_NoWholeReads(store))  # type: ignore[arg-type]
    assert [a["label"] for a in every["anchors"]] == newest and every["total"] == 5 and every["limit"] == 50


def test_a_stream_is_the_snapshot_load_reads_with_its_blocks_one_at_a_time(store: ChainStore) -> None:
    with store.stream() as (anchors, blocks):
        assert anchors == {} and list(blocks) == []
    made = [
        ch.request_anchor(None, root=merkle.root([n]), kind="batch", label="x", now=T0)[0]
        for n in (b"a", b"b")
    ]
    store.commit(anchors=made)
    prev, chain = ch.ZERO_HASH, []
    for i in range(1500):  # more than one batch of a server-side cursor
        chain.append(ch.seal(index=i, timestamp=T0, prev_hash=prev, records=[str(i)], difficulty=0, nonce=i))
        prev = chain[-1].hash
    store.commit(blocks=chain)
    with store.stream(ids=[made[1].id]) as (anchors, blocks):
        assert anchors == {made[1].id: made[1]}
        assert next(blocks) == chain[0]  # before the rest is read
        assert list(blocks) == chain[1:]
    assert store.head() == chain[-1]
    assert store.load(ids=[made[1].id]) == ch.ChainState(blocks=tuple(chain), anchors=anchors)
    assert wf.validate(store, min_difficulty=0) == ch.ChainReport(True, 1500, chain[-1].hash.hex())


def test_an_id_prefix_finds_the_anchors_it_starts_and_no_other(store: ChainStore) -> None:
    made = [
        ch.request_anchor(None, root=bytes.fromhex(head) + bytes([i]) * 28, kind="batch", label=head, now=T0)[
            0
        ]
        for i, head in enumerate(["abcdef01", "abcdef01", "abcdef02"])
    ]
    store.commit(anchors=made)
    assert store.anchors(prefix="abcdef01") == {a.id: a for a in made[:2]}
    assert store.anchors(prefix=made[1].id[:10]) == {made[1].id: made[1]}
    assert store.anchors(prefix="abcdef", state=ch.AnchorState.ANCHORED) == {}
    assert store.anchors(prefix="0123abcd") == {}
    with pytest.raises(ch.UsageError, match=r"ambiguous \(2 anchors\)"):
        wf.find_anchor(_NoWholeReads(store), "abcdef01")  # type: ignore[arg-type]
    assert wf.find_anchor(_NoWholeReads(store), "ABCDEF02") == made[2]  # type: ignore[arg-type]
