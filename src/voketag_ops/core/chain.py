"""The platform's hash chain: blocks, proof of work, validation, and anchor requests.

Pure: no I/O, no clock of its own (callers pass ``now`` and a monotonic ``clock``).

Canonical block header (95 bytes, big-endian), hashed with SHA-256 to give the
block hash::

    offset size field
         0    4 magic        b"VKBL"
         4    1 version      1
         5    8 index        unsigned
        13    8 timestamp    signed, microseconds since 1970-01-01T00:00:00Z
        21   32 prev_hash    32 zero bytes for the genesis block (index 0)
        53   32 merkle_root  RFC 6962 root over the block's records (UTF-8 bytes)
        85    2 difficulty   required leading zero BITS of the block hash (0..256)
        87    8 nonce        unsigned
                 95 bytes in all

The nonce comes last so mining hashes the fixed 87-byte prefix once and only
updates a copy with each nonce. Records are text (canonical JSON for anchors);
they are not in the header, only their Merkle root is.
"""

from __future__ import annotations

import hashlib
import heapq
import hmac
import json
import struct
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any

from voketag_ops.core import merkle
from voketag_ops.errors import BackendError, InputError, PreconditionError, UsageError

MAGIC = b"VKBL"
VERSION = 1
ZERO_HASH = bytes(32)
MAX_DIFFICULTY = 256
MAX_NONCE = (1 << 64) - 1
DEFAULT_DIFFICULTY = 16  # ~65k attempts, about 0.1 s in CPython
_PREFIX = struct.Struct(">4sBQq32s32sH")
_NONCE = struct.Struct(">Q")
HEADER_SIZE = _PREFIX.size + _NONCE.size
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


class ChainStoreError(BackendError):
    """The chain store could not be reached or failed a read or write; nothing was changed."""


class StoreConflictError(PreconditionError):
    """Another writer changed the chain or an anchor since it was read."""


class AnchorStateError(PreconditionError):
    """The anchor is not in a state that allows this (e.g. cancelling an anchored root)."""


class ChainFormatError(InputError):
    """A block or anchor document is malformed."""


def read_json(
    text: str | bytes, source: str, error: Callable[[str], Exception], *, line: int | None = None
) -> Any:
    """TEXT parsed as JSON; anything it cannot be (malformed, nested too deeply, an integer
    of more digits than Python converts, bytes not UTF-8) is ERROR("SOURCE[:line[:column]]:
    not JSON: why"). LINE: TEXT is that line of SOURCE (JSON lines), which messages name."""
    where = source if line is None else f"{source}:{line}"
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        at = f"{source}:{exc.lineno}" if line is None else where
        raise error(f"{at}:{exc.colno}: not JSON: {exc.msg}") from None
    except RecursionError:
        raise error(f"{where}: not JSON: nested too deeply") from None
    except ValueError as exc:
        raise error(f"{where}: not JSON: {str(exc)[:120]}") from None


# -- encoding ---------------------------------------------------------------------------


def to_micros(ts: datetime) -> int:
    """Microseconds since the Unix epoch; TS must carry a timezone."""
    if ts.tzinfo is None:
        raise ValueError("timestamps must be timezone-aware (UTC)")
    delta = ts - _EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def from_micros(us: int) -> datetime:
    """The UTC datetime for microseconds since the Unix epoch."""
    return _EPOCH + timedelta(microseconds=us)


def header_prefix(
    index: int, timestamp: datetime, prev_hash: bytes, merkle_root: bytes, difficulty: int
) -> bytes:
    """The header without its nonce (the part mining hashes once)."""
    if not 0 <= index <= MAX_NONCE:
        raise ValueError("block index out of range")
    if len(prev_hash) != 32 or len(merkle_root) != 32:
        raise ValueError("prev_hash and merkle_root must be 32 bytes")
    if not 0 <= difficulty <= MAX_DIFFICULTY:
        raise ValueError(f"difficulty must be between 0 and {MAX_DIFFICULTY} bits")
    return _PREFIX.pack(MAGIC, VERSION, index, to_micros(timestamp), prev_hash, merkle_root, difficulty)


def encode_header(
    index: int, timestamp: datetime, prev_hash: bytes, merkle_root: bytes, difficulty: int, nonce: int
) -> bytes:
    """The canonical header bytes (see the module docstring)."""
    if not 0 <= nonce <= MAX_NONCE:
        raise ValueError("nonce out of range")
    return header_prefix(index, timestamp, prev_hash, merkle_root, difficulty) + _NONCE.pack(nonce)


def _target(difficulty: int) -> bytes:
    """A digest meets DIFFICULTY iff it compares below this (equal-length bytes compare
    like big-endian integers; at difficulty 0 it is longer than any digest)."""
    if difficulty == 0:
        return b"\xff" * 33
    return (1 << (256 - difficulty)).to_bytes(32, "big")


def meets_difficulty(hash_: bytes, difficulty: int) -> bool:
    """True iff HASH_ has at least DIFFICULTY leading zero bits."""
    if not 0 <= difficulty <= MAX_DIFFICULTY:
        return False
    return int.from_bytes(hash_, "big") >> (256 - difficulty) == 0


def records_root(records: Iterable[str]) -> bytes:
    """The RFC 6962 root over the records' UTF-8 bytes."""
    return merkle.root(r.encode("utf-8") for r in records)


# -- blocks -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Block:
    """A sealed block. ``hash`` is what was stored; validation recomputes it."""

    index: int
    timestamp: datetime
    prev_hash: bytes
    merkle_root: bytes
    difficulty: int
    nonce: int
    hash: bytes
    records: tuple[str, ...] = ()

    def header(self) -> bytes:
        """The canonical header bytes."""
        return encode_header(
            self.index, self.timestamp, self.prev_hash, self.merkle_root, self.difficulty, self.nonce
        )

    def computed_hash(self) -> bytes:
        """SHA-256 of the canonical header."""
        return hashlib.sha256(self.header()).digest()

    def to_json(self) -> dict[str, object]:
        """The block's JSON form (hashes in hex, timestamp ISO 8601 UTC with microseconds)."""
        return {
            "index": self.index,
            "timestamp": iso_micros(self.timestamp),
            "prev_hash": self.prev_hash.hex(),
            "merkle_root": self.merkle_root.hex(),
            "difficulty": self.difficulty,
            "nonce": self.nonce,
            "hash": self.hash.hex(),
            "records": list(self.records),
        }

    @classmethod
    def from_json(cls, doc: object, where: str = "block") -> Block:
        """Parse the JSON form; raises ChainFormatError naming the bad field."""
        if not isinstance(doc, dict):
            raise ChainFormatError(f"{where}: expected an object")
        records = doc.get("records", [])
        if not isinstance(records, list) or not all(isinstance(r, str) for r in records):
            raise ChainFormatError(f"{where}.records: expected a list of strings")
        for i, record in enumerate(records):
            parse_text(record, f"{where}.records[{i}]")
        return cls(
            index=_uint(doc, "index", where),
            timestamp=parse_timestamp(doc.get("timestamp"), f"{where}.timestamp"),
            prev_hash=parse_hash(doc.get("prev_hash"), f"{where}.prev_hash"),
            merkle_root=parse_hash(doc.get("merkle_root"), f"{where}.merkle_root"),
            difficulty=_uint(doc, "difficulty", where, MAX_DIFFICULTY),
            nonce=_uint(doc, "nonce", where, MAX_NONCE),
            hash=parse_hash(doc.get("hash"), f"{where}.hash"),
            records=tuple(records),
        )


def iso_micros(ts: datetime) -> str:
    """ISO 8601 UTC with microseconds and a Z suffix (lossless for the header)."""
    return ts.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def parse_timestamp(value: object, where: str) -> datetime:
    """An ISO 8601 timestamp with a timezone; raises ChainFormatError."""
    if not isinstance(value, str):
        raise ChainFormatError(f"{where}: expected an ISO 8601 timestamp")
    try:
        ts = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise ChainFormatError(f"{where}: not an ISO 8601 timestamp: {value[:40]!r}") from None
    if ts.tzinfo is None:
        raise ChainFormatError(f"{where}: timestamp has no timezone")
    try:
        return ts.astimezone(UTC)
    except OverflowError:  # 0001-01-01T00:00+01:00 is in year 0 in UTC
        raise ChainFormatError(f"{where}: {value[:40]!r} is out of range in UTC") from None


def parse_text(value: object, where: str) -> str:
    """A string UTF-8 can carry (JSON's \\ud800 escapes a lone surrogate it cannot); raises
    ChainFormatError: records are hashed as UTF-8, and both stores write UTF-8."""
    if not isinstance(value, str):
        raise ChainFormatError(f"{where}: expected a string")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ChainFormatError(f"{where}: not UTF-8 text (a lone surrogate)") from None
    return value


def parse_hash(value: object, where: str) -> bytes:
    """64 hex digits -> 32 bytes; raises ChainFormatError."""
    if not isinstance(value, str) or len(value) != 64:
        raise ChainFormatError(f"{where}: expected 64 hex digits")
    try:
        return bytes.fromhex(value)
    except ValueError:
        raise ChainFormatError(f"{where}: not hex") from None


def _uint(doc: dict, key: str, where: str, limit: int = MAX_NONCE) -> int:
    value = doc.get(key)
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= limit:
        raise ChainFormatError(f"{where}.{key}: expected an integer between 0 and {limit}")
    return value


# -- mining ------------------------------------------------------------------------------


@dataclass(frozen=True)
class MiningResult:
    """What a mining run produced. ``block`` is None when the bound ran out."""

    block: Block | None
    attempts: int
    seconds: float
    stopped_by: str  # "found" | "attempts" | "time" | "nonce-space"

    @property
    def hash_rate(self) -> float:
        """Attempts per second (0 when no time was measured)."""
        return self.attempts / self.seconds if self.seconds > 0 else 0.0


_CLOCK_EVERY = 1024  # attempts between clock reads


def mine(
    *,
    index: int,
    timestamp: datetime,
    prev_hash: bytes,
    records: Sequence[str],
    difficulty: int,
    max_attempts: int | None = None,
    time_limit: float | None = None,
    clock: Callable[[], float] = time.monotonic,
    start_nonce: int = 0,
) -> MiningResult:
    """Search nonces from START_NONCE until the hash has DIFFICULTY leading zero bits,
    or MAX_ATTEMPTS nonces were tried, or TIME_LIMIT seconds passed on CLOCK."""
    root = records_root(records)
    prefix = header_prefix(index, timestamp, prev_hash, root, difficulty)
    state = hashlib.sha256(prefix)
    limit = _target(difficulty)
    pack = _NONCE.pack
    started = clock()
    nonce = start_nonce
    end = MAX_NONCE + 1 if max_attempts is None else min(MAX_NONCE + 1, start_nonce + max_attempts)
    stopped_by = "attempts" if max_attempts is not None else "nonce-space"
    found: bytes | None = None
    while nonce < end:
        batch_end = min(end, nonce + _CLOCK_EVERY)
        cp = state.copy
        for n in range(nonce, batch_end):
            h = cp()
            h.update(pack(n))
            digest = h.digest()
            if digest < limit:
                found, nonce = digest, n
                break
        else:
            nonce = batch_end
            if time_limit is not None and clock() - started >= time_limit:
                stopped_by = "time"
                break
            continue
        break
    seconds = clock() - started
    if found is None:
        return MiningResult(None, nonce - start_nonce, seconds, stopped_by)
    block = Block(index, timestamp, prev_hash, root, difficulty, nonce, found, tuple(records))
    return MiningResult(block, nonce - start_nonce + 1, seconds, "found")


def seal(
    *, index: int, timestamp: datetime, prev_hash: bytes, records: Sequence[str], difficulty: int, nonce: int
) -> Block:
    """A block with the given nonce (whether or not it meets the difficulty)."""
    root = records_root(records)
    header = encode_header(index, timestamp, prev_hash, root, difficulty, nonce)
    return Block(
        index, timestamp, prev_hash, root, difficulty, nonce, hashlib.sha256(header).digest(), tuple(records)
    )


# -- validation --------------------------------------------------------------------------


class Problem(StrEnum):
    """Why a block is bad (the first failing check, in this order)."""

    WRONG_INDEX = "wrong_index"
    HASH_MISMATCH = "hash_mismatch"
    CHANGED_RECORD = "changed_record"
    GENESIS_PREV_HASH = "genesis_prev_hash"
    BROKEN_LINK = "broken_link"
    TIMESTAMP_BACKWARDS = "timestamp_backwards"
    INSUFFICIENT_WORK = "insufficient_work"


@dataclass(frozen=True)
class ChainReport:
    """The result of validating a chain: ok, or the first bad block and why."""

    ok: bool
    length: int
    head: str | None  # hex hash of the last block
    bad_index: int | None = None
    problem: Problem | None = None
    message: str | None = None


def check_block(
    block: Block, prev: Block | None, position: int, *, min_difficulty: int = 0
) -> ChainReport | None:
    """The first problem of BLOCK at POSITION after PREV, or None."""

    def bad(problem: Problem, message: str) -> ChainReport:
        return ChainReport(False, position, None, position, problem, f"block {position}: {message}")

    if block.index != position:
        return bad(Problem.WRONG_INDEX, f"index is {block.index}, expected {position}")
    try:
        computed = block.computed_hash()
    except ValueError as exc:
        return bad(Problem.HASH_MISMATCH, f"header cannot be encoded: {exc}")
    if not hmac.compare_digest(computed, block.hash):
        return bad(
            Problem.HASH_MISMATCH, "stored hash does not match the header (a header field was changed)"
        )
    if not hmac.compare_digest(records_root(block.records), block.merkle_root):
        return bad(
            Problem.CHANGED_RECORD,
            "records do not hash to the block's Merkle root (a record was changed, added or removed)",
        )
    if prev is None:
        if block.prev_hash != ZERO_HASH:
            return bad(Problem.GENESIS_PREV_HASH, "genesis block's previous hash is not zero")
    else:
        if not hmac.compare_digest(block.prev_hash, prev.hash):
            return bad(Problem.BROKEN_LINK, f"previous hash does not match block {position - 1}'s hash")
        if block.timestamp < prev.timestamp:
            return bad(Problem.TIMESTAMP_BACKWARDS, f"timestamp is earlier than block {position - 1}'s")
    if block.difficulty < min_difficulty:
        return bad(
            Problem.INSUFFICIENT_WORK, f"difficulty {block.difficulty} is below the required {min_difficulty}"
        )
    if not meets_difficulty(block.hash, block.difficulty):
        return bad(Problem.INSUFFICIENT_WORK, f"hash has fewer than {block.difficulty} leading zero bits")
    return None


def validate_chain(blocks: Iterable[Block], *, min_difficulty: int = 0) -> ChainReport:
    """Walk the whole chain; report the first bad block and why. BLOCKS are read once, oldest
    first, and only the previous one is kept: a stream from the store will do."""
    prev: Block | None = None
    problem: ChainReport | None = None
    length = 0
    for position, block in enumerate(blocks):
        if problem is None:
            problem = check_block(block, prev, position, min_difficulty=min_difficulty)
        prev, length = block, position + 1  # past a bad block, only counted: the report says the length
    head = None if prev is None else prev.hash.hex()
    if problem is not None:
        return replace(problem, length=length, head=head)
    return ChainReport(True, length, head)


# -- anchors -------------------------------------------------------------------------------


class AnchorState(StrEnum):
    """pending -> anchored | cancelled | failed; a cancelled or failed root can be requested again."""

    PENDING = "pending"
    ANCHORED = "anchored"
    CANCELLED = "cancelled"
    FAILED = "failed"


DEFAULT_MAX_ATTEMPTS = 5


@dataclass(frozen=True)
class Anchor:
    """A request to anchor ROOT on the chain. Its id is the root in hex (one anchor per root).

    ``version`` increases with every change so stores can detect a concurrent writer.
    """

    root: bytes
    kind: str
    label: str
    requested_at: datetime
    updated_at: datetime
    state: AnchorState = AnchorState.PENDING
    tree_size: int | None = None
    block_index: int | None = None
    attempts: int = 0
    last_error: str | None = None
    version: int = 1
    history: tuple[tuple[str, str], ...] = field(default=())  # (ISO time, event)

    @property
    def id(self) -> str:
        return self.root.hex()

    def record(self) -> str:
        """The block record that anchors this root: canonical JSON (sorted keys, compact)."""
        doc = {"kind": self.kind, "label": self.label, "root": self.root.hex(), "tree_size": self.tree_size}
        return json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=False)

    def to_json(self) -> dict[str, object]:
        return {
            "id": self.id,
            "root": self.root.hex(),
            "kind": self.kind,
            "label": self.label,
            "tree_size": self.tree_size,
            "state": self.state.value,
            "block_index": self.block_index,
            "attempts": self.attempts,
            "last_error": self.last_error,
            "requested_at": iso_micros(self.requested_at),
            "updated_at": iso_micros(self.updated_at),
            "version": self.version,
            "history": [list(h) for h in self.history],
        }

    @classmethod
    def from_json(cls, doc: object, where: str = "anchor") -> Anchor:
        if not isinstance(doc, dict):
            raise ChainFormatError(f"{where}: expected an object")
        try:
            state = AnchorState(str(doc.get("state")))
        except ValueError:
            raise ChainFormatError(f"{where}.state: unknown state {doc.get('state')!r}") from None
        tree_size = doc.get("tree_size")
        block_index = doc.get("block_index")
        last_error = doc.get("last_error")
        history = doc.get("history", [])
        if tree_size is not None:
            tree_size = _uint(doc, "tree_size", where)
        if block_index is not None:
            block_index = _uint(doc, "block_index", where)
        if last_error is not None:
            last_error = parse_text(last_error, f"{where}.last_error")
        if not isinstance(history, list) or not all(
            isinstance(h, list) and len(h) == 2 and all(isinstance(x, str) for x in h) for h in history
        ):
            raise ChainFormatError(f"{where}.history: expected a list of [time, event] pairs")
        for i, pair in enumerate(history):
            for text in pair:
                parse_text(text, f"{where}.history[{i}]")
        return cls(
            root=parse_hash(doc.get("root"), f"{where}.root"),
            kind=parse_text(doc.get("kind"), f"{where}.kind"),
            label=parse_text(doc.get("label"), f"{where}.label"),
            requested_at=parse_timestamp(doc.get("requested_at"), f"{where}.requested_at"),
            updated_at=parse_timestamp(doc.get("updated_at"), f"{where}.updated_at"),
            state=state,
            tree_size=tree_size,
            block_index=block_index,
            attempts=_uint(doc, "attempts", where),
            last_error=last_error,
            version=_uint(doc, "version", where),
            history=tuple((h[0], h[1]) for h in history),
        )


def _moved(anchor: Anchor, now: datetime, event: str, **changes: object) -> Anchor:
    history = (*anchor.history, (iso_micros(now), event))
    return replace(anchor, updated_at=now, version=anchor.version + 1, history=history, **changes)  # type: ignore[arg-type]


def request_anchor(
    existing: Anchor | None,
    *,
    root: bytes,
    kind: str,
    label: str,
    now: datetime,
    tree_size: int | None = None,
) -> tuple[Anchor, str]:
    """Record a request to anchor ROOT. Returns (anchor, outcome) with outcome
    ``created``, ``existing`` (pending or anchored already: the same root is one anchor)
    or ``reopened`` (a cancelled or failed request made pending again)."""
    if len(root) != 32:
        raise ValueError("an anchored root must be 32 bytes")
    if tree_size is not None and not 1 <= tree_size <= MAX_NONCE:  # what the store's reader takes back
        raise ValueError(f"tree size must be between 1 and {MAX_NONCE}")
    if existing is None:
        anchor = Anchor(
            root=bytes(root),
            kind=kind,
            label=label,
            requested_at=now,
            updated_at=now,
            tree_size=tree_size,
            history=((iso_micros(now), "requested"),),
        )
        return anchor, "created"
    if existing.root != root:
        raise ValueError("existing anchor is for another root")
    if existing.state in (AnchorState.PENDING, AnchorState.ANCHORED):
        return existing, "existing"
    return (
        _moved(existing, now, "reopened", state=AnchorState.PENDING, attempts=0, last_error=None),
        "reopened",
    )


def cancel_anchor(anchor: Anchor, *, now: datetime) -> Anchor:
    """Cancel a pending anchor; anything else is an AnchorStateError."""
    if anchor.state is AnchorState.CANCELLED:
        return anchor
    if anchor.state is not AnchorState.PENDING:
        where = f" in block {anchor.block_index}" if anchor.block_index is not None else ""
        raise AnchorStateError(
            f"anchor {anchor.id[:16]} is {anchor.state.value}{where}; only pending anchors can be cancelled"
        )
    return _moved(anchor, now, "cancelled", state=AnchorState.CANCELLED)


def mark_anchored(anchor: Anchor, *, block_index: int, now: datetime) -> Anchor:
    """The anchor's record is in block BLOCK_INDEX."""
    if anchor.state is not AnchorState.PENDING:
        raise AnchorStateError(f"anchor {anchor.id[:16]} is {anchor.state.value}, not pending")
    return _moved(
        anchor, now, f"anchored in block {block_index}", state=AnchorState.ANCHORED, block_index=block_index
    )


def mark_attempt_failed(
    anchor: Anchor, *, error: str, now: datetime, max_attempts: int = DEFAULT_MAX_ATTEMPTS
) -> Anchor:
    """One anchoring attempt failed; after MAX_ATTEMPTS the anchor is ``failed``."""
    if anchor.state is not AnchorState.PENDING:
        return anchor
    attempts = anchor.attempts + 1
    state = AnchorState.FAILED if attempts >= max_attempts else AnchorState.PENDING
    event = f"attempt {attempts} failed: {error}" + ("; giving up" if state is AnchorState.FAILED else "")
    return _moved(anchor, now, event, state=state, attempts=attempts, last_error=error)


def anchor_block_records(anchors: Sequence[Anchor]) -> list[str]:
    """The records of a block anchoring ANCHORS, in a stable order (by request time, then root)."""
    ordered = sorted(anchors, key=lambda a: (a.requested_at, a.root))
    return [a.record() for a in ordered]


@dataclass(frozen=True)
class SealedRecord:
    """An anchor record as a block holds it (`Anchor.record`): what the chain says was anchored,
    whatever the anchors table says since (a row edited or deleted leaves the block as it was)."""

    block_index: int
    kind: str
    label: str
    root: str  # as the record spells it (64 characters; hex when voke wrote it)
    tree_size: int | None


def sealed_records(blocks: Iterable[Block], *, spelling: str) -> Iterator[SealedRecord]:
    """The anchor records in BLOCKS that may hold SPELLING (a kind or a root): a record that
    cannot spell it, unescaped or escaped, is not parsed (a year's chain is 100k records);
    callers compare the fields. Records that are no anchor record are skipped (the chain's own
    validation judges blocks)."""
    for block in blocks:
        for record in block.records:
            if spelling not in record and "\\" not in record:
                continue
            try:
                doc = json.loads(record)
            except (ValueError, RecursionError):
                continue
            if not isinstance(doc, dict):
                continue
            kind, label, root, size = doc.get("kind"), doc.get("label"), doc.get("root"), doc.get("tree_size")
            if not isinstance(kind, str) or not isinstance(root, str) or len(root) != 64:
                continue
            if size is not None and type(size) is not int:
                continue
            yield SealedRecord(block.index, kind, label if isinstance(label, str) else "", root, size)


@dataclass(frozen=True)
class ChainState:
    """A consistent snapshot of a chain store: its blocks and its anchors (by id)."""

    blocks: tuple[Block, ...] = ()
    anchors: dict[str, Anchor] = field(default_factory=dict)

    @property
    def head(self) -> Block | None:
        return self.blocks[-1] if self.blocks else None

    def pending(self) -> list[Anchor]:
        return sorted(
            (a for a in self.anchors.values() if a.state is AnchorState.PENDING),
            key=lambda a: (a.requested_at, a.root),
        )


def anchor_prefix(anchor_id: str) -> str:
    """ANCHOR_ID (an anchor's id, its root in hex, or at least 8 of its leading digits) in the
    case ids are stored in; UsageError when it is not one."""
    prefix = anchor_id.lower()
    if len(prefix) < 8 or any(c not in "0123456789abcdef" for c in prefix):
        raise UsageError("an anchor id is at least 8 hex digits of its root")
    return prefix


def only_anchor(matches: Iterable[Anchor], prefix: str) -> Anchor:
    """The one anchor of MATCHES (those whose id starts with PREFIX): AnchorNotFoundError when
    there is none, UsageError when PREFIX is ambiguous."""
    found = list(matches)
    if not found:
        raise AnchorNotFoundError(f"no anchor with id {prefix}")
    if len(found) > 1:
        raise UsageError(f"anchor id {prefix} is ambiguous ({len(found)} anchors); give more digits")
    return found[0]


@dataclass(frozen=True)
class AnchorPage:
    """A page of an anchor listing: the newest anchors asked for, newest request first
    (`newest_anchors`), and how many the store holds in each state (every state, 0 included)."""

    anchors: tuple[Anchor, ...]
    counts: dict[str, int]


def newest_anchors(anchors: Iterable[Anchor], limit: int) -> tuple[Anchor, ...]:
    """The LIMIT most recently requested of ANCHORS, newest first (ties: the larger root first),
    in O(LIMIT) memory however many there are."""
    return tuple(heapq.nlargest(limit, anchors, key=lambda a: (a.requested_at, a.root)))


def state_counts(anchors: Iterable[Anchor]) -> dict[str, int]:
    """How many of ANCHORS are in each state (every state, 0 included)."""
    counts = {s.value: 0 for s in AnchorState}
    for anchor in anchors:
        counts[anchor.state.value] += 1
    return counts


class AnchorNotFoundError(UsageError):
    """No anchor has that id."""


class SealedAnchors:
    """Which blocks hold the records of ANCHORS, learnt from the blocks one at a time (`see`,
    oldest first), so that a stream need not be kept; `disagreement` then judges them."""

    def __init__(self, anchors: Iterable[Anchor]) -> None:
        self._anchors = sorted(anchors, key=lambda a: (a.requested_at, a.root))
        self._holders: dict[str, list[int]] = {a.record(): [] for a in self._anchors}
        self._seen = 0

    def see(self, block: Block) -> None:
        """Note BLOCK, the next one of the chain."""
        for record in block.records:
            held = self._holders.get(record)
            if held is not None:
                held.append(self._seen)
        self._seen += 1

    def disagreement(self) -> tuple[int | None, str] | None:
        """The first anchor the blocks seen contradict, as (block index, what): one marked
        anchored in a block that does not hold it, or one not anchored whose record a block
        holds already (it would be anchored twice). None when they agree."""
        for anchor in self._anchors:
            index, held = anchor.block_index, self._holders[anchor.record()]
            if anchor.state is AnchorState.ANCHORED:
                if index not in held:
                    return (
                        index,
                        f"anchor {anchor.id[:16]} is marked anchored in block {index}, but that block does not hold it",
                    )
            elif held:
                at = held[-1]
                return at, f"anchor {anchor.id[:16]} is {anchor.state.value}, but block {at} holds it already"
        return None


def anchor_disagreement(blocks: Iterable[Block], anchors: Iterable[Anchor]) -> tuple[int | None, str] | None:
    """The first anchor BLOCKS contradict (`SealedAnchors.disagreement`), None when they agree."""
    check = SealedAnchors(anchors)
    for block in blocks:
        check.see(block)
    return check.disagreement()


def blocks_to_import(ours: Sequence[bytes], incoming: Sequence[Block]) -> list[Block]:
    """The blocks of INCOMING that extend the local chain (whose block hashes are OURS): none
    for an older copy of it (a prefix, a backup taken before); StoreConflictError when they
    differ where both have blocks."""
    both = min(len(ours), len(incoming))
    if list(ours[:both]) != [b.hash for b in incoming[:both]]:
        raise StoreConflictError(
            "the imported chain does not extend the local chain (they diverge); nothing was imported"
        )
    return list(incoming[len(ours) :])


def merge_import(current: ChainState, incoming: ChainState) -> tuple[ChainState, list[Block], list[Anchor]]:
    """INCOMING (an exported document, already validated) merged into CURRENT: (the merged
    state, the blocks it adds, the anchors it adds or changes).

    The blocks are `blocks_to_import`'s. Of two versions of an anchor, one sealed (anchored in
    a block the merged chain holds) wins over one that is not, whatever their versions: a
    block is never un-anchored by a request made elsewhere meanwhile; a sealed one taken over
    a higher version gets the version after it, so a writer holding the old one conflicts.
    Otherwise the higher version wins. StoreConflictError, nothing merged, when the chains
    diverge or the merged anchors still contradict the merged blocks (`anchor_disagreement`).
    """
    added = blocks_to_import([b.hash for b in current.blocks], incoming.blocks)
    blocks = (*current.blocks, *added)

    def sealed(anchor: Anchor) -> bool:
        index = anchor.block_index
        return (
            anchor.state is AnchorState.ANCHORED
            and index is not None
            and 0 <= index < len(blocks)
            and anchor.record() in blocks[index].records
        )

    anchors = dict(current.anchors)
    changed: list[Anchor] = []
    for theirs in incoming.anchors.values():
        ours = anchors.get(theirs.id)
        if ours is not None:
            if theirs == ours or (sealed(ours) and not sealed(theirs)):
                continue
            if sealed(theirs) and not sealed(ours):
                theirs = replace(theirs, version=max(theirs.version, ours.version + 1))
            elif theirs.version <= ours.version:
                continue
        anchors[theirs.id] = theirs
        changed.append(theirs)
    if (problem := anchor_disagreement(blocks, anchors.values())) is not None:
        raise StoreConflictError(
            f"once merged, the anchors would contradict the blocks ({problem[1]}); nothing was imported"
        )
    return ChainState(blocks=blocks, anchors=anchors), added, changed
