"""Blocks, proof of work, chain validation and the anchor state machine (pure core)."""

from __future__ import annotations

import hashlib
import struct
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from itertools import count

import pytest

from voketag_ops.core import chain as ch
from voketag_ops.core import merkle
from voketag_ops.testing.imports import loaded_of

T0 = datetime(2026, 1, 1, 2, 0, 0, 123456, tzinfo=UTC)
DIFF = 8  # tests mine at low difficulty: ~256 attempts per block


def make_chain(n: int = 20, difficulty: int = DIFF) -> list[ch.Block]:
    blocks: list[ch.Block] = []
    prev = ch.ZERO_HASH
    for i in range(n):
        result = ch.mine(
            index=i,
            timestamp=T0 + timedelta(minutes=i),
            prev_hash=prev,
            records=[f"record {i}.{j}" for j in range(3)],
            difficulty=difficulty,
        )
        assert result.block is not None
        blocks.append(result.block)
        prev = result.block.hash
    return blocks


@pytest.fixture(scope="module")
def chain20() -> list[ch.Block]:
    return make_chain()


# -- encoding -------------------------------------------------------------------------


def test_canonical_header_layout_matches_the_documented_bytes() -> None:
    prev, root = bytes(range(32)), bytes(range(32, 64))
    header = ch.encode_header(7, T0, prev, root, 12, 0x0102030405060708)
    us = int((T0 - datetime(1970, 1, 1, tzinfo=UTC)).total_seconds()) * 1_000_000 + T0.microsecond
    manual = (
        b"VKBL"
        + bytes([1])
        + (7).to_bytes(8, "big")
        + us.to_bytes(8, "big", signed=True)
        + prev
        + root
        + (12).to_bytes(2, "big")
        + bytes([1, 2, 3, 4, 5, 6, 7, 8])
    )
    assert header == manual
    assert len(header) == ch.HEADER_SIZE == 95
    assert struct.unpack(">4sBQq32s32sHQ", header)[3] == us


def test_block_hash_is_sha256_of_the_header_and_pinned() -> None:
    block = ch.seal(index=0, timestamp=T0, prev_hash=ch.ZERO_HASH, records=["a", "b"], difficulty=0, nonce=42)
    assert block.hash == hashlib.sha256(block.header()).digest()
    assert block.merkle_root == merkle.root([b"a", b"b"])
    # A regression vector: changing the encoding changes this, and must bump VERSION.
    assert block.hash.hex() == "a18b9cede3275b98f59387682c5803c02459153703c1e16d2b94c82201155eb9"


def test_timestamps_must_be_aware_and_round_trip_in_microseconds() -> None:
    with pytest.raises(ValueError):
        ch.encode_header(0, datetime(2026, 1, 1), ch.ZERO_HASH, ch.ZERO_HASH, 0, 0)
    assert ch.from_micros(ch.to_micros(T0)) == T0
    early = datetime(1960, 5, 5, 0, 0, 0, 1, tzinfo=UTC)
    assert ch.from_micros(ch.to_micros(early)) == early


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        ({"index": -1}, "index"),
        ({"prev_hash": b"x"}, "32 bytes"),
        ({"difficulty": 257}, "difficulty"),
        ({"nonce": 1 << 64}, "nonce"),
    ],
)
def test_header_rejects_out_of_range_fields(kwargs: dict, fragment: str) -> None:
    args = {
        "index": 0,
        "timestamp": T0,
        "prev_hash": ch.ZERO_HASH,
        "merkle_root": ch.ZERO_HASH,
        "difficulty": 0,
        "nonce": 0,
    }
    args.update(kwargs)
    with pytest.raises(ValueError, match=fragment):
        ch.encode_header(**args)


# -- proof of work -------------------------------------------------------------------------


def test_meets_difficulty_counts_leading_zero_bits() -> None:
    assert ch.meets_difficulty(b"\xff" * 32, 0)
    assert ch.meets_difficulty(bytes(32), 256)
    assert not ch.meets_difficulty(b"\x00" * 31 + b"\x01", 256)
    assert ch.meets_difficulty(b"\x00\x0f" + b"\xff" * 30, 12)
    assert not ch.meets_difficulty(b"\x00\x10" + b"\xff" * 30, 12)
    assert not ch.meets_difficulty(bytes(32), 257)


def test_mining_finds_a_hash_below_target_and_any_change_breaks_it() -> None:
    result = ch.mine(index=3, timestamp=T0, prev_hash=b"\x11" * 32, records=["x"], difficulty=12)
    block = result.block
    assert block is not None and result.stopped_by == "found"
    assert ch.meets_difficulty(block.hash, 12) and block.hash == block.computed_hash()
    assert result.attempts == block.nonce + 1
    variants = [
        replace(block, nonce=block.nonce + 1),
        replace(block, index=4),
        replace(block, timestamp=T0 + timedelta(microseconds=1)),
        replace(block, prev_hash=b"\x12" * 32),
        replace(block, merkle_root=merkle.root([b"y"])),
        replace(block, difficulty=13),
    ]
    for variant in variants:
        assert not ch.meets_difficulty(variant.computed_hash(), 12)
        assert ch.check_block(variant, None, variant.index) is not None


def test_mining_bounded_by_attempts() -> None:
    result = ch.mine(
        index=0, timestamp=T0, prev_hash=ch.ZERO_HASH, records=[], difficulty=200, max_attempts=500
    )
    assert result.block is None
    assert result.attempts == 500
    assert result.stopped_by == "attempts"


def test_mining_bounded_by_time_on_an_injected_clock() -> None:
    ticks = count()
    result = ch.mine(
        index=0,
        timestamp=T0,
        prev_hash=ch.ZERO_HASH,
        records=[],
        difficulty=200,
        time_limit=3.0,
        clock=lambda: float(next(ticks)),
    )
    assert result.block is None and result.stopped_by == "time"
    # The clock is read once at the start and once per 1024 attempts: the third read is t=3.
    assert result.attempts == 3 * 1024
    assert result.seconds == 4.0
    assert result.hash_rate == result.attempts / 4.0


def test_twenty_blocks_validate(chain20: list[ch.Block]) -> None:
    report = ch.validate_chain(chain20)
    assert report.ok and report.length == 20 and report.head == chain20[-1].hash.hex()
    assert report.bad_index is None
    assert ch.validate_chain([]).ok


# -- tampering, one kind at a time -----------------------------------------------------------


def first_problem(blocks: list[ch.Block], **kw: int) -> tuple[int | None, ch.Problem | None]:
    report = ch.validate_chain(blocks, **kw)
    assert not report.ok and report.message
    return report.bad_index, report.problem


def test_changed_record_is_a_merkle_mismatch_at_its_block(chain20: list[ch.Block]) -> None:
    blocks = list(chain20)
    blocks[10] = replace(blocks[10], records=("record 10.0", "TAMPERED", "record 10.2"))
    assert first_problem(blocks) == (10, ch.Problem.CHANGED_RECORD)
    blocks[10] = replace(chain20[10], records=chain20[10].records[:2])  # a record removed
    assert first_problem(blocks) == (10, ch.Problem.CHANGED_RECORD)


def test_resealed_block_breaks_the_next_link(chain20: list[ch.Block]) -> None:
    blocks = list(chain20)
    old = blocks[10]
    result = ch.mine(
        index=10, timestamp=old.timestamp, prev_hash=old.prev_hash, records=["forged"], difficulty=DIFF
    )
    assert result.block is not None
    blocks[10] = result.block
    assert first_problem(blocks) == (11, ch.Problem.BROKEN_LINK)


def test_edited_header_field_is_a_hash_mismatch(chain20: list[ch.Block]) -> None:
    blocks = list(chain20)
    blocks[5] = replace(blocks[5], merkle_root=merkle.root([b"other"]))
    assert first_problem(blocks) == (5, ch.Problem.HASH_MISMATCH)
    blocks = list(chain20)
    blocks[6] = replace(blocks[6], hash=bytes(32))
    assert first_problem(blocks) == (6, ch.Problem.HASH_MISMATCH)


def test_insufficient_work(chain20: list[ch.Block]) -> None:
    nonce = next(n for n in range(1000) if not ch.meets_difficulty(_seal_like(chain20[3], n).hash, DIFF))
    blocks = list(chain20)
    blocks[3] = _seal_like(chain20[3], nonce)
    assert first_problem(blocks) == (3, ch.Problem.INSUFFICIENT_WORK)
    # A chain mined at a lower difficulty than required.
    assert first_problem(chain20, min_difficulty=DIFF + 1) == (0, ch.Problem.INSUFFICIENT_WORK)


def _seal_like(block: ch.Block, nonce: int, **changes: object) -> ch.Block:
    args = {
        "index": block.index,
        "timestamp": block.timestamp,
        "prev_hash": block.prev_hash,
        "records": block.records,
        "difficulty": block.difficulty,
        "nonce": nonce,
    }
    args.update(changes)
    return ch.seal(**args)  # type: ignore[arg-type]


def _remine_like(block: ch.Block, **changes: object) -> ch.Block:
    args = {
        "index": block.index,
        "timestamp": block.timestamp,
        "prev_hash": block.prev_hash,
        "records": block.records,
        "difficulty": block.difficulty,
    }
    args.update(changes)
    result = ch.mine(**args)  # type: ignore[arg-type]
    assert result.block is not None
    return result.block


def test_timestamp_going_backwards() -> None:
    blocks = make_chain(3)
    blocks[2] = _remine_like(blocks[2], timestamp=blocks[1].timestamp - timedelta(seconds=1))
    assert first_problem(blocks) == (2, ch.Problem.TIMESTAMP_BACKWARDS)
    # Equal timestamps are allowed (two anchor runs in the same microsecond).
    blocks = make_chain(3)
    blocks[2] = _remine_like(blocks[2], timestamp=blocks[1].timestamp)
    assert ch.validate_chain(blocks).ok


def test_wrong_index_and_genesis_prev_hash() -> None:
    blocks = make_chain(3)
    assert first_problem([blocks[0], blocks[2]]) == (1, ch.Problem.WRONG_INDEX)
    assert first_problem(blocks[1:]) == (0, ch.Problem.WRONG_INDEX)
    genesis = _remine_like(blocks[0], prev_hash=b"\x01" * 32)
    assert first_problem([genesis]) == (0, ch.Problem.GENESIS_PREV_HASH)
    assert first_problem([blocks[0], blocks[1], blocks[1]]) == (2, ch.Problem.WRONG_INDEX)


def test_reordered_blocks_are_reported_at_the_first_swap() -> None:
    blocks = make_chain(5)
    swapped = [blocks[0], blocks[2], blocks[1], blocks[3], blocks[4]]
    assert first_problem(swapped)[0] == 1


# -- JSON form --------------------------------------------------------------------------------


def test_block_json_round_trip(chain20: list[ch.Block]) -> None:
    for block in chain20[:3]:
        assert ch.Block.from_json(block.to_json()) == block


@pytest.mark.parametrize(
    ("field", "value", "fragment"),
    [
        ("index", -1, "block.index"),
        ("index", True, "block.index"),
        ("timestamp", "yesterday", "block.timestamp"),
        ("timestamp", "2026-01-01T00:00:00", "no timezone"),
        ("prev_hash", "00" * 31, "block.prev_hash"),
        ("hash", "zz" * 32, "block.hash: not hex"),
        ("difficulty", 300, "block.difficulty"),
        ("records", [1], "block.records"),
        ("records", ["ok", "\ud800"], r"block.records\[1\]: not UTF-8 text"),
        ("timestamp", "0001-01-01T00:00:00+01:00", "block.timestamp: .* out of range in UTC"),
        ("timestamp", "9999-12-31T23:59:59-01:00", "block.timestamp: .* out of range in UTC"),
    ],
)
def test_block_json_errors_name_the_field(
    chain20: list[ch.Block], field: str, value: object, fragment: str
) -> None:
    doc = chain20[0].to_json()
    doc[field] = value
    with pytest.raises(ch.ChainFormatError, match=fragment):
        ch.Block.from_json(doc)


# -- anchors -----------------------------------------------------------------------------------

ROOT = merkle.root([b"batch-1"])


def test_request_dedupes_the_same_root() -> None:
    anchor, outcome = ch.request_anchor(None, root=ROOT, kind="batch", label="b1", now=T0)
    assert outcome == "created" and anchor.state is ch.AnchorState.PENDING and anchor.id == ROOT.hex()
    again, outcome = ch.request_anchor(anchor, root=ROOT, kind="batch", label="other", now=T0)
    assert outcome == "existing" and again is anchor
    anchored = ch.mark_anchored(anchor, block_index=4, now=T0)
    again, outcome = ch.request_anchor(anchored, root=ROOT, kind="batch", label="b1", now=T0)
    assert outcome == "existing" and again.block_index == 4
    with pytest.raises(ValueError):
        ch.request_anchor(None, root=b"short", kind="batch", label="b1", now=T0)
    for size in (0, ch.MAX_NONCE + 1):  # a size the store could not read back breaks every later read
        with pytest.raises(ValueError, match="tree size"):
            ch.request_anchor(None, root=ROOT, kind="batch", label="b1", now=T0, tree_size=size)


def test_cancel_only_while_pending() -> None:
    anchor, _ = ch.request_anchor(None, root=ROOT, kind="batch", label="b1", now=T0)
    cancelled = ch.cancel_anchor(anchor, now=T0)
    assert cancelled.state is ch.AnchorState.CANCELLED and cancelled.version == anchor.version + 1
    assert ch.cancel_anchor(cancelled, now=T0) is cancelled  # idempotent
    anchored = ch.mark_anchored(anchor, block_index=0, now=T0)
    with pytest.raises(ch.AnchorStateError, match="anchored in block 0"):
        ch.cancel_anchor(anchored, now=T0)
    with pytest.raises(ch.AnchorStateError):
        ch.mark_anchored(cancelled, block_index=1, now=T0)
    reopened, outcome = ch.request_anchor(cancelled, root=ROOT, kind="batch", label="b1", now=T0)
    assert outcome == "reopened" and reopened.state is ch.AnchorState.PENDING


def test_attempts_then_failed() -> None:
    anchor, _ = ch.request_anchor(None, root=ROOT, kind="batch", label="b1", now=T0)
    for attempt in range(1, 4):
        anchor = ch.mark_attempt_failed(anchor, error="boom", now=T0, max_attempts=3)
        assert anchor.attempts == attempt
    assert anchor.state is ch.AnchorState.FAILED and anchor.last_error == "boom"
    assert ch.mark_attempt_failed(anchor, error="again", now=T0) is anchor
    reopened, outcome = ch.request_anchor(anchor, root=ROOT, kind="batch", label="b1", now=T0)
    assert outcome == "reopened" and reopened.attempts == 0 and reopened.last_error is None


def test_anchor_record_is_canonical_and_json_round_trips() -> None:
    anchor, _ = ch.request_anchor(
        None, root=ROOT, kind="audit-checkpoint", label="audit@10", now=T0, tree_size=10
    )
    assert anchor.record() == (
        '{"kind":"audit-checkpoint","label":"audit@10","root":"' + ROOT.hex() + '","tree_size":10}'
    )
    assert ch.Anchor.from_json(anchor.to_json()) == anchor
    doc = anchor.to_json()
    doc["state"] = "confirmed"
    with pytest.raises(ch.ChainFormatError, match=r"anchor\.state"):
        ch.Anchor.from_json(doc)
    for key, value, fragment in (
        ("label", "bad\udcff", r"anchor\.label: not UTF-8 text"),
        ("kind", "\ud800", r"anchor\.kind: not UTF-8 text"),
        ("last_error", "\ud800", r"anchor\.last_error: not UTF-8 text"),
        ("history", [["t", "\ud800"]], r"anchor\.history\[0\]: not UTF-8 text"),
        ("requested_at", "0001-01-01T00:00:00+01:00", r"anchor\.requested_at: .* out of range in UTC"),
    ):
        with pytest.raises(ch.ChainFormatError, match=fragment):
            ch.Anchor.from_json({**anchor.to_json(), key: value})


def test_an_anchor_id_prefix_is_8_hex_digits_and_names_one_anchor() -> None:
    a, _ = ch.request_anchor(None, root=ROOT, kind="batch", label="b1", now=T0)
    b, _ = ch.request_anchor(None, root=ROOT[:4] + bytes(28), kind="batch", label="b2", now=T0)
    prefix = ch.anchor_prefix(ROOT.hex()[:8].upper())
    assert prefix == ROOT.hex()[:8]
    assert ch.only_anchor([a], prefix) is a
    with pytest.raises(ch.AnchorNotFoundError):
        ch.only_anchor([], prefix)
    with pytest.raises(ch.UsageError, match=r"is ambiguous \(2 anchors\); give more digits"):
        ch.only_anchor([a, b], prefix)
    for bad in ("abc", "abcdefgx"):
        with pytest.raises(ch.UsageError):
            ch.anchor_prefix(bad)


def test_an_import_never_unanchors_a_sealed_root_and_refuses_what_still_contradicts() -> None:
    """Home A anchored Z in block 1; home B, with only block 0, requested, cancelled and requested Z
    again (pending, a higher version). Whichever home imports the other's export, Z stays anchored."""
    genesis = ch.seal(index=0, timestamp=T0, prev_hash=ch.ZERO_HASH, records=[], difficulty=0, nonce=0)
    z, _ = ch.request_anchor(None, root=ROOT, kind="batch", label="z", now=T0)
    block1 = ch.seal(
        index=1, timestamp=T0, prev_hash=genesis.hash, records=[z.record()], difficulty=0, nonce=0
    )
    anchored = ch.mark_anchored(z, block_index=1, now=T0)
    home_a = ch.ChainState(blocks=(genesis, block1), anchors={z.id: anchored})
    reopened, _ = ch.request_anchor(ch.cancel_anchor(z, now=T0), root=ROOT, kind="batch", label="z", now=T0)
    home_b = ch.ChainState(blocks=(genesis,), anchors={z.id: reopened})
    assert reopened.version > anchored.version

    assert ch.merge_import(home_a, home_b) == (home_a, [], [])  # A imports B's export: nothing changes
    merged, added, changed = ch.merge_import(home_b, home_a)  # B imports A's
    assert added == [block1] and merged.anchors[z.id].state is ch.AnchorState.ANCHORED
    # taken over a higher version, it gets the next one: a writer holding version 3 conflicts
    assert changed == [merged.anchors[z.id]] and merged.anchors[z.id].version == reopened.version + 1
    assert ch.anchor_disagreement(merged.blocks, merged.anchors.values()) is None
    assert ch.merge_import(merged, home_a)[2] == []  # idempotent

    # Block 1 holds Z but this home's anchors lost its row: a pending Z coming in is refused.
    lost_row = ch.ChainState(blocks=(genesis, block1))
    with pytest.raises(ch.StoreConflictError, match=r"block 1 holds it already\); nothing was imported"):
        ch.merge_import(lost_row, home_b)


def test_core_modules_import_no_cli_or_backend_libraries() -> None:
    imports = "import voketag_ops.core.chain, voketag_ops.core.audit, voketag_ops.core.merkle"
    assert loaded_of(imports, "typer", "rich", "psycopg", "google", "pydantic", "tenacity") == []
