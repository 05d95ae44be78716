"""Anchoring on a real FileChainStore, with failure-injecting wrappers; proof documents."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from voketag_ops.adapters.local.chain_store import FileChainStore
from voketag_ops.core import chain as ch
from voketag_ops.core import merkle
from voketag_ops.errors import InputError, PreconditionError, UsageError
from voketag_ops.ports import ChainStore
from voketag_ops.testing.chain import OneBlockAtATime
from voketag_ops.workflows import chain as wf

T0 = datetime(2026, 3, 1, 2, 0, tzinfo=UTC)
DIFF = 8


def root_of(name: str) -> bytes:
    return merkle.root([name.encode()])


@dataclass
class Sleeps:
    calls: list[float] = field(default_factory=list)

    def __call__(self, seconds: float) -> None:
        self.calls.append(seconds)


@dataclass
class FlakyStore:
    """Wraps a store; the next FAIL_LOADS loads and FAIL_COMMITS commits raise ChainStoreError."""

    inner: ChainStore
    fail_loads: int = 0
    fail_commits: int = 0
    commits: int = 0

    def _read(self) -> None:
        if self.fail_loads:
            self.fail_loads -= 1
            raise ch.ChainStoreError("store unreachable (injected)")

    def load(self, **kw: Any) -> ch.ChainState:
        self._read()
        return self.inner.load(**kw)

    def head(self) -> ch.Block | None:
        self._read()
        return self.inner.head()

    def anchors(self, *args: Any, **kw: Any) -> dict[str, ch.Anchor]:
        self._read()
        return self.inner.anchors(*args, **kw)

    def stream(self, **kw: Any) -> AbstractContextManager[tuple[dict[str, ch.Anchor], Iterator[ch.Block]]]:
        self._read()
        return self.inner.stream(**kw)

    def commit(self, **kw: object) -> None:
        if self.fail_commits:
            self.fail_commits -= 1
            raise ch.ChainStoreError("write failed (injected)")
        self.commits += 1
        self.inner.commit(**kw)  # type: ignore[arg-type]


@dataclass
class RacingStore:
    """Before the first commit, another writer anchors a root of its own."""

    inner: FileChainStore
    raced: bool = False

    def load(self, **kw: Any) -> ch.ChainState:
        return self.inner.load(**kw)

    def head(self) -> ch.Block | None:
        return self.inner.head()

    def anchors(self, *args: Any, **kw: Any) -> dict[str, ch.Anchor]:
        return self.inner.anchors(*args, **kw)

    def stream(self, **kw: Any) -> AbstractContextManager[tuple[dict[str, ch.Anchor], Iterator[ch.Block]]]:
        return self.inner.stream(**kw)

    def commit(self, **kw: object) -> None:
        if not self.raced and kw.get("blocks"):
            self.raced = True
            wf.request_anchor(self.inner, root=root_of("rival"), kind="batch", label="rival", now=T0)
            wf.run_anchors(self.inner, now=T0, difficulty=DIFF)
        self.inner.commit(**kw)  # type: ignore[arg-type]


@pytest.fixture
def store(tmp_path: Path) -> FileChainStore:
    return FileChainStore(tmp_path / "chain" / "chain.json")


def fast(sleeps: Sleeps | None = None, attempts: int = 5) -> wf.RetryPolicy:
    return wf.RetryPolicy(attempts=attempts, sleep=sleeps or Sleeps())


def test_store_satisfies_the_port(store: FileChainStore) -> None:
    assert isinstance(store, ChainStore)


def test_request_run_and_rerun(store: FileChainStore) -> None:
    first = wf.request_anchor(store, root=root_of("b1"), kind="batch", label="b1", now=T0)
    assert first.outcome == "created"
    assert (
        wf.request_anchor(store, root=root_of("b1"), kind="batch", label="b1", now=T0).outcome == "existing"
    )
    wf.request_anchor(store, root=root_of("b2"), kind="batch", label="b2", now=T0)

    report = wf.run_anchors(store, now=T0 + timedelta(minutes=1), difficulty=DIFF)
    assert report.ok and report.outcome == "anchored"
    assert report.block is not None and report.block["index"] == 0
    assert sorted(report.anchored) == sorted([root_of("b1").hex(), root_of("b2").hex()])
    assert report.attempts >= 1 and report.difficulty == DIFF

    again = wf.run_anchors(store, now=T0 + timedelta(minutes=2), difficulty=DIFF)
    assert again.ok and again.outcome == "nothing-pending"

    wf.request_anchor(store, root=root_of("b3"), kind="batch", label="b3", now=T0)
    third = wf.run_anchors(store, now=T0 + timedelta(minutes=3), difficulty=DIFF)
    assert third.block is not None and third.block["index"] == 1

    state = store.load()
    assert len(state.blocks) == 2 and state.blocks[1].prev_hash == state.blocks[0].hash
    assert wf.validate(store, min_difficulty=DIFF).ok
    listing = wf.list_anchors(store)
    assert listing["counts"]["anchored"] == 3 and listing["chain_length"] == 2
    assert sorted(a["block_index"] for a in listing["anchors"]) == [0, 0, 1]
    assert wf.list_anchors(store, state="pending")["anchors"] == []


def test_block_timestamp_never_goes_back(store: FileChainStore) -> None:
    wf.request_anchor(store, root=root_of("a"), kind="batch", label="a", now=T0)
    wf.run_anchors(store, now=T0, difficulty=DIFF)
    wf.request_anchor(store, root=root_of("b"), kind="batch", label="b", now=T0)
    report = wf.run_anchors(store, now=T0 - timedelta(hours=1), difficulty=DIFF)  # clock went back
    assert report.ok and wf.validate(store, min_difficulty=DIFF).ok


def test_dry_run_changes_nothing(store: FileChainStore) -> None:
    wf.request_anchor(store, root=root_of("a"), kind="batch", label="a", now=T0)
    report = wf.run_anchors(store, now=T0, difficulty=DIFF, dry_run=True)
    assert report.outcome == "dry-run" and report.pending == 1 and "block 0" in report.message
    assert store.load().blocks == ()


def test_store_errors_are_retried_with_backoff(store: FileChainStore) -> None:
    wf.request_anchor(store, root=root_of("a"), kind="batch", label="a", now=T0)
    sleeps = Sleeps()
    flaky = FlakyStore(store, fail_loads=1, fail_commits=1)
    report = wf.run_anchors(flaky, now=T0, difficulty=DIFF, retry=fast(sleeps))
    assert report.ok and report.outcome == "anchored"
    assert sleeps.calls == [1.0, 2.0]
    assert len(report.retries) == 2 and "injected" in report.retries[0]
    assert len(store.load().blocks) == 1


def test_store_errors_past_the_limit_raise_backend_error_and_change_nothing(store: FileChainStore) -> None:
    wf.request_anchor(store, root=root_of("a"), kind="batch", label="a", now=T0)
    sleeps = Sleeps()
    flaky = FlakyStore(store, fail_commits=99)
    with pytest.raises(ch.ChainStoreError) as info:
        wf.run_anchors(flaky, now=T0, difficulty=DIFF, retry=fast(sleeps, attempts=4))
    assert info.value.exit_code == 4
    assert sleeps.calls == [1.0, 2.0, 4.0]
    state = store.load()
    assert state.blocks == () and state.pending()[0].attempts == 0


def test_backoff_is_capped() -> None:
    sleeps = Sleeps()
    policy = wf.RetryPolicy(attempts=8, initial=1.0, maximum=5.0, sleep=sleeps)

    def always() -> None:
        raise ch.StoreConflictError("conflict")

    with pytest.raises(ch.StoreConflictError):
        wf.with_retries(policy, always)
    assert sleeps.calls == [1.0, 2.0, 4.0, 5.0, 5.0, 5.0, 5.0]


def test_a_concurrent_writer_causes_a_conflict_and_a_clean_retry(store: FileChainStore) -> None:
    wf.request_anchor(store, root=root_of("mine"), kind="batch", label="mine", now=T0)
    racing = RacingStore(store)
    report = wf.run_anchors(racing, now=T0, difficulty=DIFF, retry=fast())
    assert report.ok and report.retries and "StoreConflictError" in report.retries[0]
    state = store.load()
    # The rival's run anchored both pending roots in block 0; our retry found nothing left.
    assert len(state.blocks) == 1 and not state.pending()
    assert wf.validate(store, min_difficulty=DIFF).ok


def test_cancel_pending_and_refuse_anchored(store: FileChainStore) -> None:
    wf.request_anchor(store, root=root_of("a"), kind="batch", label="a", now=T0)
    wf.request_anchor(store, root=root_of("b"), kind="batch", label="b", now=T0)
    cancelled = wf.cancel_anchor(store, root_of("a").hex()[:10], now=T0)
    assert cancelled["state"] == "cancelled"
    report = wf.run_anchors(store, now=T0, difficulty=DIFF)
    assert report.anchored == [root_of("b").hex()]
    with pytest.raises(ch.AnchorStateError) as info:
        wf.cancel_anchor(store, root_of("b").hex(), now=T0)
    assert info.value.exit_code == 5
    with pytest.raises(ch.AnchorNotFoundError):
        wf.cancel_anchor(store, "0" * 64, now=T0)
    # Requesting a cancelled root again reopens it.
    assert wf.request_anchor(store, root=root_of("a"), kind="batch", label="a", now=T0).outcome == "reopened"


def test_cancel_finds_the_anchor_by_its_id_prefix_without_reading_the_chain(store: FileChainStore) -> None:
    near = [bytes.fromhex("abcdef01") + bytes([i]) * 28 for i in (1, 2)]  # one 8-digit prefix, two roots
    for i, root in enumerate(near):
        wf.request_anchor(store, root=root, kind="batch", label=f"n{i}", now=T0)
    narrow = NoWholeReads(store)
    with pytest.raises(UsageError, match="ambiguous"):
        wf.cancel_anchor(narrow, "abcdef01", now=T0)
    assert wf.find_anchor(narrow, "ABCDEF0102").label == "n1"
    assert wf.cancel_anchor(narrow, near[0].hex()[:10], now=T0)["state"] == "cancelled"
    with pytest.raises(ch.AnchorNotFoundError):
        wf.find_anchor(narrow, "abcdef0103")


def test_mining_bound_counts_attempts_then_fails(store: FileChainStore) -> None:
    wf.request_anchor(store, root=root_of("a"), kind="batch", label="a", now=T0)
    for attempt in range(1, 4):
        report = wf.run_anchors(
            store, now=T0, difficulty=200, max_attempts=50, time_limit=None, max_anchor_attempts=3
        )
        assert not report.ok and report.outcome == "mining-bound-reached" and report.attempts == 50
        anchor = store.load().anchors[root_of("a").hex()]
        assert anchor.attempts == attempt
    assert anchor.state is ch.AnchorState.FAILED and report.failed == [anchor.id]
    assert wf.run_anchors(store, now=T0, difficulty=DIFF).outcome == "nothing-pending"


@pytest.mark.parametrize("dry_run", [False, True])
def test_a_run_refuses_to_mine_onto_a_chain_that_does_not_validate(
    store: FileChainStore, dry_run: bool
) -> None:
    for i in range(3):
        wf.request_anchor(store, root=root_of(f"r{i}"), kind="batch", label=f"r{i}", now=T0)
        wf.run_anchors(store, now=T0 + timedelta(minutes=i), difficulty=DIFF)
    doc = json.loads(store.path.read_text())
    doc["blocks"][1]["nonce"] += 1  # block 1's header no longer hashes to its stored hash
    store.path.write_text(json.dumps(doc))
    wf.request_anchor(store, root=root_of("z"), kind="batch", label="z", now=T0)
    before = store.path.read_bytes()
    with pytest.raises(PreconditionError, match=r"chain invalid at block 1 \(stored hash") as info:
        wf.run_anchors(store, now=T0 + timedelta(minutes=5), difficulty=DIFF, dry_run=dry_run)
    assert info.value.exit_code == 5 and "voke chain validate" in (info.value.hint or "")
    assert store.path.read_bytes() == before  # no block mined, the anchor still pending
    assert store.load().anchors[root_of("z").hex()].state is ch.AnchorState.PENDING


def test_validate_catches_an_anchor_missing_from_its_block(store: FileChainStore) -> None:
    wf.request_anchor(store, root=root_of("a"), kind="batch", label="a", now=T0)
    wf.run_anchors(store, now=T0, difficulty=DIFF)
    doc = json.loads(store.path.read_text())
    doc["anchors"][0]["label"] = "edited"
    store.path.write_text(json.dumps(doc))
    report = wf.validate(store, min_difficulty=DIFF)
    assert not report.ok and report.problem is ch.Problem.CHANGED_RECORD and report.bad_index == 0


def test_validate_reports_tampering_in_the_file(store: FileChainStore) -> None:
    for i in range(3):
        wf.request_anchor(store, root=root_of(f"r{i}"), kind="batch", label=f"r{i}", now=T0)
        wf.run_anchors(store, now=T0 + timedelta(minutes=i), difficulty=DIFF)
    doc = json.loads(store.path.read_text())
    doc["blocks"][1]["records"][0] = doc["blocks"][1]["records"][0].replace("r1", "rX")
    store.path.write_text(json.dumps(doc))
    report = wf.validate(store, min_difficulty=DIFF)
    assert (report.bad_index, report.problem) == (1, ch.Problem.CHANGED_RECORD)


# -- proof documents --------------------------------------------------------------------------


def test_read_leaves_strips_lf_and_crlf_and_decodes_hex() -> None:
    text = io.BytesIO(b"alpha\r\nbeta\n\ngamma")
    assert list(wf.read_leaves(text, hex_lines=False, source="f")) == [b"alpha", b"beta", b"", b"gamma"]
    hexed = io.BytesIO(b"00ff\n\nABCD\r\n")
    assert list(wf.read_leaves(hexed, hex_lines=True, source="f")) == [b"\x00\xff", b"", b"\xab\xcd"]


@pytest.mark.parametrize(
    ("data", "where"),
    [
        (b"00\n0g\n", "f:2:2"),
        (b"abc\n", "f:1:4"),
        (b"zz", "f:1:1"),
        (b"ab c d\n", "f:1:5"),  # the space splits the byte "cd" (it may only separate bytes)
        (b"  ab cd e\n", "f:1:10"),  # an odd digit at the end
        (b"ab\xffcd\n", "f:1:3"),
    ],
)
def test_bad_hex_names_line_and_column(data: bytes, where: str) -> None:
    assert list(wf.read_leaves(io.BytesIO(b" ab cd\t\n"), hex_lines=True, source="f")) == [b"\xab\xcd"]
    with pytest.raises(InputError, match=f"^{where}: "):
        list(wf.read_leaves(io.BytesIO(data), hex_lines=True, source="f"))


LEAVES = [f"tag-{i}".encode() for i in range(11)]


def test_inclusion_document_verifies_and_rejects_tampering() -> None:
    doc = wf.inclusion_document(LEAVES, 6)
    assert set(doc) == {"leaf_index", "tree_size", "root", "leaf_hash", "audit_path"}
    assert doc["root"] == wf.tree_root(LEAVES)["root"]
    assert wf.verify_document(json.dumps(doc), source="p").valid
    assert wf.verify_document(json.dumps(doc), source="p", leaf=b"tag-6").valid
    wrong_leaf = wf.verify_document(json.dumps(doc), source="p", leaf=b"tag-7")
    assert not wrong_leaf.valid and "leaf_hash" in (wrong_leaf.reason or "")
    bad = dict(doc, leaf_index=5)
    assert not wf.verify_document(json.dumps(bad), source="p").valid
    short = dict(doc, audit_path=doc["audit_path"][:-1])
    report = wf.verify_document(json.dumps(short), source="p")
    assert not report.valid and "needs 4" in (report.reason or "")
    envelope = {"ok": True, "command": "chain prove", "result": doc}
    assert wf.verify_document(json.dumps(envelope), source="p").valid
    # `ingest proof` of a tampered row: ok false, the proof in `result`: invalid (exit 1), not malformed
    failed = {"ok": False, "command": "ingest proof", "result": bad, "error": {"exit_code": 1}}
    assert not wf.verify_document(json.dumps(failed), source="p").valid
    with pytest.raises(UsageError):
        wf.inclusion_document(LEAVES, 11)


def test_consistency_document_verifies_and_rejects_tampering() -> None:
    doc = wf.consistency_document(LEAVES, 4)
    assert doc["old_root"] == wf.tree_root(LEAVES[:4])["root"]
    assert wf.verify_document(json.dumps(doc), source="p").valid
    flipped = dict(doc, old_root=doc["new_root"])
    assert not wf.verify_document(json.dumps(flipped), source="p").valid
    zero = dict(doc, old_size=0)
    assert "old_size" in (wf.verify_document(json.dumps(zero), source="p").reason or "")
    with pytest.raises(UsageError):
        wf.consistency_document(LEAVES, 0)
    with pytest.raises(UsageError):
        wf.verify_document(json.dumps(doc), source="p", leaf=b"x")


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ('{"leaf_index": 1,', "p:1:18: not JSON"),
        ("[]", "expected a JSON object"),
        ('{"foo": 1}', "neither an inclusion proof"),
        ('{"leaf_index": -1, "tree_size": 2, "root": "", "audit_path": []}', "leaf_index"),
        ('{"leaf_index": 0, "tree_size": 2, "root": "00", "audit_path": []}', "root: a hash is 32 bytes"),
        ('{"leaf_index": 0, "tree_size": 2, "root": "' + "0" * 64 + '", "audit_path": "x"}', "audit_path"),
        (
            '{"leaf_index": 0, "tree_size": 2, "root": "' + "0" * 64 + '", "audit_path": ["zz"]}',
            r"audit_path\[0\]: not hex",
        ),
        ('{"old_size": 1, "new_size": 2, "old_root": 5}', "old_root"),
    ],
)
def test_malformed_documents_are_usage_errors(text: str, fragment: str) -> None:
    with pytest.raises(wf.MalformedProofError, match=fragment) as info:
        wf.verify_document(text, source="p")
    assert info.value.exit_code == 2


def test_request_missing_anchors_requests_only_unseen_roots(store: FileChainStore) -> None:
    wf.request_anchor(store, root=root_of("cancelled"), kind="audit-checkpoint", label="c", now=T0)
    wf.cancel_anchor(store, root_of("cancelled").hex(), now=T0)
    wants = [
        (root_of(x), "audit-checkpoint", f"audit@{i}", i)
        for i, x in enumerate(["cancelled", "a", "b", "a"], 1)
    ]
    assert wf.request_missing_anchors(store, wants, now=T0) == [root_of("a").hex(), root_of("b").hex()]
    state = store.load()
    assert (
        state.anchors[root_of("cancelled").hex()].state is ch.AnchorState.CANCELLED
    )  # an operator's call stays
    assert state.anchors[root_of("a").hex()].label == "audit@2"
    assert wf.request_missing_anchors(store, wants, now=T0) == []  # idempotent: nothing committed


@dataclass
class NoWholeReads:
    """Wraps a store; reading the whole chain fails the test (lookups of a few must not)."""

    inner: FileChainStore

    def load(self, **kw: Any) -> ch.ChainState:
        raise AssertionError("the whole chain was read")

    def head(self) -> ch.Block | None:
        return self.inner.head()

    def anchors(self, *args: Any, **kw: Any) -> dict[str, ch.Anchor]:
        if not args and not kw:
            raise AssertionError("every anchor was read")
        return self.inner.anchors(*args, **kw)

    def stream(self, **kw: Any) -> AbstractContextManager[tuple[dict[str, ch.Anchor], Iterator[ch.Block]]]:
        if kw.get("ids") is None and kw.get("kind") is None:
            raise AssertionError("every anchor was read")
        return self.inner.stream(**kw)

    def commit(self, **kw: Any) -> None:
        self.inner.commit(**kw)


def test_requests_and_runs_read_only_the_anchors_they_need(store: FileChainStore) -> None:
    narrow = NoWholeReads(store)
    assert wf.request_anchor(narrow, root=root_of("a"), kind="batch", label="a", now=T0).outcome == "created"
    assert wf.request_anchor(narrow, root=root_of("a"), kind="batch", label="a", now=T0).outcome == "existing"
    requests = [(root_of("a"), "batch", "a", None), (root_of("b"), "batch", "b", None)]
    assert wf.request_missing_anchors(narrow, requests, now=T0) == [root_of("b").hex()]
    report = wf.run_anchors(narrow, now=T0, difficulty=DIFF)
    assert report.outcome == "anchored" and report.pending == 2
    wf.request_anchor(narrow, root=root_of("c"), kind="batch", label="c", now=T0)
    again = wf.run_anchors(narrow, now=T0, difficulty=DIFF)
    assert again.block is not None and again.block["index"] == 1
    assert wf.validate(store, min_difficulty=DIFF).ok


def test_anchoring_and_validation_judge_the_blocks_as_they_stream_and_keep_none(
    store: FileChainStore,
) -> None:
    blocks, anchors, prev = [], [], ch.ZERO_HASH
    for i in range(40):
        anchor, _ = ch.request_anchor(
            None, root=root_of(f"b{i}"), kind="batch", label=f"b{i}", now=T0, tree_size=i + 1
        )
        block = ch.seal(
            index=i, timestamp=T0, prev_hash=prev, records=[anchor.record()], difficulty=0, nonce=0
        )
        blocks.append(block)
        anchors.append(ch.mark_anchored(anchor, block_index=i, now=T0))
        prev = block.hash
    store.commit(anchors=[replace(a, version=1) for a in anchors])
    store.commit(blocks=blocks)

    streamed = OneBlockAtATime(store)
    found = wf.root_anchoring(streamed, root_of("b30").hex(), 31, min_difficulty=0)
    assert (found.anchored, found.block_index) == (True, 30)
    assert streamed.most_alive == 2  # the block judged and the one before it
    assert not wf.root_anchoring(streamed, root_of("b30").hex(), 7, min_difficulty=0).anchored

    streamed = OneBlockAtATime(store)
    assert wf.validate(streamed, min_difficulty=0) == ch.ChainReport(True, 40, blocks[-1].hash.hex())
    assert streamed.most_alive == 2
    # The first bad block is named, and the rest still counted (length and head are the chain's).
    light = wf.validate(streamed, min_difficulty=1)
    assert (light.bad_index, light.length, light.head) == (0, 40, blocks[-1].hash.hex())
    assert light.message and "`--min-difficulty 0` or that setting accepts them" in light.message
    assert streamed.most_alive == 2
