"""FileChainStore: the document format, permissions, concurrent writers, import."""

from __future__ import annotations

import multiprocessing
import stat
from datetime import UTC, datetime
from pathlib import Path

import pytest

from voketag_ops.adapters.local.chain_store import FileChainStore, parse_document, render_document
from voketag_ops.core import chain as ch
from voketag_ops.core import merkle
from voketag_ops.workflows import chain as wf

T0 = datetime(2026, 3, 1, tzinfo=UTC)
NO_WAIT = wf.RetryPolicy(attempts=50, initial=0.001, maximum=0.01)


def _requester(path: str, worker: int, n: int) -> None:
    store = FileChainStore(Path(path))
    for i in range(n):
        root = merkle.root([f"w{worker}-{i}".encode()])
        wf.request_anchor(store, root=root, kind="batch", label=f"w{worker}-{i}", now=T0, retry=NO_WAIT)
        if i % 3 == 2:
            wf.run_anchors(store, now=T0, difficulty=4, retry=NO_WAIT)


def test_reading_a_chain_never_written_creates_nothing(tmp_path: Path) -> None:
    store = FileChainStore(tmp_path / "chain" / "chain.json")
    assert store.load() == ch.ChainState()
    assert not (tmp_path / "chain").exists()
    wf.request_anchor(store, root=merkle.root([b"a"]), kind="batch", label="a", now=T0)
    assert sorted(p.name for p in (tmp_path / "chain").iterdir()) == ["chain.json", "chain.json.lock"]
    store.lock_path.unlink()  # a chain.json put here by hand is read as it is, and still nothing is made
    assert len(store.load().anchors) == 1 and not store.lock_path.exists()


def test_concurrent_processes_lose_nothing(tmp_path: Path) -> None:
    path = tmp_path / "chain" / "chain.json"
    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=_requester, args=(str(path), w, 9)) for w in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    store = FileChainStore(path)
    wf.run_anchors(store, now=T0, difficulty=4)
    state = store.load()
    assert len(state.anchors) == 36
    assert all(a.state is ch.AnchorState.ANCHORED for a in state.anchors.values())
    assert wf.validate(store, min_difficulty=4).ok
    in_blocks = [r for b in state.blocks for r in b.records]
    assert len(in_blocks) == len(set(in_blocks)) == 36  # each root anchored exactly once


def test_permissions_and_round_trip(tmp_path: Path) -> None:
    store = FileChainStore(tmp_path / "home" / "chain" / "chain.json")
    wf.request_anchor(store, root=merkle.root([b"x"]), kind="batch", label="x", now=T0)
    wf.run_anchors(store, now=T0, difficulty=4)
    assert stat.S_IMODE(store.path.stat().st_mode) == 0o600
    assert stat.S_IMODE(store.path.parent.stat().st_mode) == 0o700
    state = store.load()
    assert parse_document(render_document(state), "x") == state


def test_a_write_the_disk_has_no_room_for_leaves_the_chain_and_no_temporary_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Its own copy of replace_json left chain.json.tmp behind on a full disk.
    import errno
    import os

    from voketag_ops import files

    store = FileChainStore(tmp_path / "chain" / "chain.json")
    wf.request_anchor(store, root=merkle.root([b"a"]), kind="batch", label="a", now=T0)
    before = store.path.read_bytes()

    def full_after_40_bytes(fd: int, data: bytes) -> None:
        os.write(fd, data[:40])
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(files, "write_all", full_after_40_bytes)
    with pytest.raises(ch.ChainStoreError, match="cannot write the chain store: No space left on device"):
        wf.request_anchor(store, root=merkle.root([b"b"]), kind="batch", label="b", now=T0, retry=NO_WAIT)
    assert store.path.read_bytes() == before
    assert sorted(p.name for p in store.path.parent.iterdir()) == ["chain.json", "chain.json.lock"]
    assert stat.S_IMODE(store.path.stat().st_mode) == 0o600


def test_empty_store_loads_as_an_empty_chain(tmp_path: Path) -> None:
    state = FileChainStore(tmp_path / "none.json").load()
    assert state.blocks == () and state.anchors == {}


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ('{"format": "voke-chain",\n "version": 1,\n "blocks": [}', r"chain\.json:3:13: not JSON"),
        ('{"format": "other"}', "not a voke chain document"),
        ('{"format": "voke-chain", "version": 9, "blocks": [], "anchors": []}', "version 9"),
        ('{"format": "voke-chain", "version": 1, "blocks": [{"index": 0}], "anchors": []}', r"blocks\[0\]"),
    ],
)
def test_corrupt_documents_name_the_place(tmp_path: Path, text: str, fragment: str) -> None:
    path = tmp_path / "chain.json"
    path.write_text(text)
    with pytest.raises(ch.ChainFormatError, match=fragment):
        FileChainStore(path).load()


def test_commit_checks_links_and_versions(tmp_path: Path) -> None:
    store = FileChainStore(tmp_path / "chain.json")
    block = ch.mine(index=1, timestamp=T0, prev_hash=ch.ZERO_HASH, records=[], difficulty=0).block
    assert block is not None
    with pytest.raises(ch.StoreConflictError, match="no longer extends"):
        store.commit(blocks=[block])
    anchor, _ = ch.request_anchor(None, root=merkle.root([b"a"]), kind="batch", label="a", now=T0)
    store.commit(anchors=[anchor])
    with pytest.raises(ch.StoreConflictError, match="changed by another run"):
        store.commit(anchors=[anchor])  # version 1 again: someone already wrote it


def test_import_extends_and_refuses_divergence(tmp_path: Path) -> None:
    source = FileChainStore(tmp_path / "a.json")
    for i in range(3):
        wf.request_anchor(source, root=merkle.root([bytes([i])]), kind="batch", label=str(i), now=T0)
        wf.run_anchors(source, now=T0, difficulty=4)
    exported = source.load()

    target = FileChainStore(tmp_path / "b.json")
    assert target.import_state(exported) == {"blocks_added": 3, "anchors_updated": 3}
    assert target.load() == exported
    assert target.import_state(exported)["blocks_added"] == 0

    other = FileChainStore(tmp_path / "c.json")
    wf.request_anchor(other, root=merkle.root([b"other"]), kind="batch", label="o", now=T0)
    wf.run_anchors(other, now=T0, difficulty=4)
    with pytest.raises(ch.StoreConflictError, match="diverge"):
        other.import_state(exported)
    assert len(other.load().blocks) == 1
