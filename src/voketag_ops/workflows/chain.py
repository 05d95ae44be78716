"""Use cases behind `voke chain`: Merkle roots and proofs over files, proof documents,
anchor requests, anchoring pending roots into the next block, chain validation.

Store access goes through the `ChainStore` port, opened by `open_chain_store` (the one
place that picks it: PostgreSQL on the local environment by default); transient store
failures and concurrent writers are retried with capped exponential backoff (tenacity).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, TypeVar

from voketag_ops.core import chain as ch
from voketag_ops.core import merkle
from voketag_ops.errors import BackendError, InputError, PreconditionError, UsageError, VokeError
from voketag_ops.ports import ChainStore

if TYPE_CHECKING:
    from voketag_ops.adapters.local.chain_store import FileChainStore
    from voketag_ops.adapters.local.environment import LocalEnvironment
    from voketag_ops.adapters.local.pg_chain_store import PgChainStore
    from voketag_ops.config import Settings

log = logging.getLogger("voke.chain")
T = TypeVar("T")


class MalformedProofError(UsageError):
    """A proof document is not one voke can read (exit 2, as `voke chain verify` documents)."""


# A proof document is a few KiB (64 hashes at most, an ingest row of ~2 KB as its leaf): more
# is no proof, and is refused before it fills memory (`chain verify /dev/zero`).
MAX_PROOF_BYTES = 1 << 20
# A leaf is one line, held whole while it is hashed: as for a batch file's lines, 1 MiB.
MAX_LEAF_LINE_BYTES = 1 << 20


# -- leaves from files ------------------------------------------------------------------


def read_leaves(stream: IO[bytes], *, hex_lines: bool, source: str) -> Iterator[bytes]:
    """The lines of STREAM without their line ending (LF or CRLF), as leaves.

    With HEX_LINES each line is the hex encoding of a leaf (an empty line is the empty
    leaf). Raises InputError naming the line and column of bad hex, or of a line longer than
    MAX_LEAF_LINE_BYTES (never read whole: `chain root /dev/zero` is refused, not an OOM).
    """
    number = 0
    while raw := stream.readline(MAX_LEAF_LINE_BYTES + 2):  # the line, a CR and an LF at most
        number += 1
        line = raw[:-1] if raw.endswith(b"\n") else raw
        if line.endswith(b"\r"):
            line = line[:-1]
        if len(line) > MAX_LEAF_LINE_BYTES:
            raise InputError(
                f"{source}:{number}:{MAX_LEAF_LINE_BYTES + 1}: line longer than {MAX_LEAF_LINE_BYTES:,} bytes"
            )
        if not hex_lines:
            yield line
            continue
        text = line.strip(b" \t")
        try:
            yield bytes.fromhex(text.decode("ascii"))
        except (UnicodeDecodeError, ValueError):
            column = _bad_hex_column(line)
            raise InputError(f"{source}:{number}:{column}: not a hex-encoded leaf") from None


def _bad_hex_column(line: bytes) -> int:
    """Where `bytes.fromhex` stops on LINE: a byte that is no hex digit, whitespace between
    the two digits of a byte (it may only separate bytes), or the end after an odd digit."""
    half = False  # one digit of a byte read, its second still to come
    for column, byte in enumerate(line, start=1):
        if byte in b" \t\n\r\x0b\x0c":
            if half:
                return column
        elif byte in b"0123456789abcdefABCDEF":
            half = not half
        else:
            return column
    return len(line) + 1


def tree_root(leaves: Iterable[bytes]) -> dict[str, Any]:
    """{"tree_size", "root"} streaming over LEAVES in O(log n) memory."""
    builder = merkle.MerkleBuilder().extend(leaves)
    return {"tree_size": builder.size, "root": builder.root().hex()}


def inclusion_document(leaves: Iterable[bytes], index: int) -> dict[str, Any]:
    """The inclusion proof document for leaf INDEX."""
    tree = merkle.MerkleTree.from_leaves(leaves)
    if not 0 <= index < tree.size:
        raise UsageError(f"--index {index} is out of range: the tree has {tree.size} leaves")
    return {
        "leaf_index": index,
        "tree_size": tree.size,
        "root": tree.root.hex(),
        "leaf_hash": tree.leaf_hash(index).hex(),
        "audit_path": [h.hex() for h in tree.inclusion_proof(index)],
    }


def consistency_document(leaves: Iterable[bytes], old_size: int) -> dict[str, Any]:
    """The consistency proof document from the first OLD_SIZE leaves to all of them."""
    tree = merkle.MerkleTree.from_leaves(leaves)
    if not 1 <= old_size <= tree.size:
        raise UsageError(f"--old-size {old_size} must be between 1 and the tree size ({tree.size})")
    return {
        "old_size": old_size,
        "new_size": tree.size,
        "old_root": tree.root_at(old_size).hex(),
        "new_root": tree.root.hex(),
        "proof": [h.hex() for h in tree.consistency_proof(old_size)],
    }


@dataclass(frozen=True)
class VerifyReport:
    """The verdict on a proof document."""

    valid: bool
    kind: str  # "inclusion" | "consistency"
    reason: str | None
    tree_size: int
    root: str
    leaf_index: int | None = None
    leaf_hash: str | None = None
    old_size: int | None = None
    old_root: str | None = None
    anchoring: Anchoring | None = None  # None: the root was not looked up on the chain


@dataclass(frozen=True)
class Anchoring:
    """Whether a proof's root is anchored on the chain for its tree size (`chain verify --anchored`)."""

    anchored: bool
    message: str
    block_index: int | None = None
    kind: str | None = None
    label: str | None = None


def root_anchoring(store: ChainStore, root: str, tree_size: int, *, min_difficulty: int) -> Anchoring:
    """Whether ROOT (hex) is anchored, for a tree of TREE_SIZE leaves, in a chain that validates.

    The chain is validated first (`validate_state`, ROOT's anchor row against its block too):
    one that does not validate vouches for nothing, as in `audit verify`. Then the blocks'
    sealed records of ROOT judge it (`sealed_records`, as `audit verify`'s claims do), so a
    deleted row hides no anchor; the row only says why a root no block holds is not anchored
    (pending, cancelled, failed). One read of the blocks, streamed (`sealed_in_valid_chain`),
    and that row."""
    report, anchors, sealed = sealed_in_valid_chain(
        store, root, lambda r: r.root == root, ids=[root], min_difficulty=min_difficulty
    )
    if not report.ok:
        return Anchoring(False, untrusted_chain(report))
    short = f"root {root[:16]}…"
    if not sealed:
        anchor = anchors.get(root)
        if anchor is None:
            return Anchoring(False, f"{short} is not anchored: the chain has no anchor for it")
        return Anchoring(False, f"{short} is {anchor.state.value}, not anchored in a block")
    for record in sealed:
        if record.tree_size == tree_size:
            label = f" {record.label!r}" if record.label else ""
            return Anchoring(
                True,
                f"{short} is anchored in block {record.block_index} as {record.kind}{label}, "
                f"tree size {tree_size}",
                record.block_index,
                record.kind,
                record.label,
            )
    sized = [r for r in sealed if r.tree_size is not None]
    if sized:
        return Anchoring(
            False, f"{short} is anchored for a tree of {sized[0].tree_size}, not the proof's {tree_size}"
        )
    record = sealed[0]  # the proof's size is then bound to nothing (RFC 6962 proofs re-size)
    return Anchoring(
        False,
        f"{short} is anchored in block {record.block_index} without a tree size, so the proof's size "
        f"{tree_size} is bound to nothing (request anchors with --tree-size)",
        record.block_index,
        record.kind,
        record.label,
    )


def verify_document(text: str, *, source: str, leaf: bytes | None = None) -> VerifyReport:
    """Verify an inclusion or consistency proof document (as printed by prove/consistency).

    Raises MalformedProofError (exit 2) when the document cannot be read; an invalid
    proof is a report with valid=False. For inclusion, LEAF (when given) is hashed and
    must match the document's leaf_hash, if it has one.
    """
    doc = ch.read_json(text, source, MalformedProofError)
    if isinstance(doc, dict) and isinstance(doc.get("ok"), bool) and isinstance(doc.get("result"), dict):
        # The whole --json envelope as printed by prove/consistency, or by `ingest proof` when its
        # check failed (ok false, the proof still in `result`): verified here, invalid is exit 1.
        doc = doc["result"]
    if not isinstance(doc, dict):
        raise MalformedProofError(f"{source}: expected a JSON object")
    if "leaf_index" in doc or "audit_path" in doc:
        return _verify_inclusion_doc(doc, source, leaf)
    if "old_size" in doc or "proof" in doc:
        if leaf is not None:
            raise UsageError("--leaf/--leaf-hex apply to inclusion proofs, not consistency proofs")
        return _verify_consistency_doc(doc, source)
    raise MalformedProofError(
        f"{source}: neither an inclusion proof (leaf_index, audit_path) nor a consistency proof (old_size, proof)"
    )


def _field_int(doc: dict[str, Any], key: str, source: str) -> int:
    value = doc.get(key)
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise MalformedProofError(f"{source}: {key}: expected a non-negative integer")
    return value


def _field_hash(doc: dict[str, Any], key: str, source: str, *, optional: bool = False) -> bytes | None:
    value = doc.get(key)
    if value is None and optional:
        return None
    return _hex_hash(value, f"{key}", source)


def _hex_hash(value: object, where: str, source: str) -> bytes:
    if not isinstance(value, str):
        raise MalformedProofError(f"{source}: {where}: expected a hex string")
    try:
        raw = bytes.fromhex(value)
    except ValueError:
        raise MalformedProofError(f"{source}: {where}: not hex") from None
    if len(raw) != merkle.HASH_SIZE:
        raise MalformedProofError(f"{source}: {where}: a hash is 32 bytes (64 hex digits), got {len(raw)}")
    return raw


def _field_path(doc: dict[str, Any], key: str, source: str) -> list[bytes]:
    value = doc.get(key)
    if not isinstance(value, list):
        raise MalformedProofError(f"{source}: {key}: expected a list of hex hashes")
    return [_hex_hash(item, f"{key}[{i}]", source) for i, item in enumerate(value)]


def _verify_inclusion_doc(doc: dict[str, Any], source: str, leaf: bytes | None) -> VerifyReport:
    index = _field_int(doc, "leaf_index", source)
    size = _field_int(doc, "tree_size", source)
    root = _field_hash(doc, "root", source)
    path = _field_path(doc, "audit_path", source)
    if leaf is None and doc.get("leaf") is not None:  # its text, as `ingest proof` writes it: must match
        if not isinstance(doc["leaf"], str):
            raise MalformedProofError(f"{source}: leaf: expected the leaf's text (a string)")
        try:
            leaf = doc["leaf"].encode()
        except UnicodeEncodeError:
            raise MalformedProofError(f"{source}: leaf: not text UTF-8 can carry") from None
    stated = _field_hash(doc, "leaf_hash", source, optional=leaf is not None)
    assert root is not None
    if leaf is not None:
        lh = merkle.leaf_hash(leaf)
        if stated is not None and lh != stated:
            reason: str | None = "the leaf does not hash to the document's leaf_hash"
            return VerifyReport(
                False, "inclusion", reason, size, root.hex(), leaf_index=index, leaf_hash=lh.hex()
            )
    else:
        assert stated is not None
        lh = stated
    valid = merkle.verify_inclusion(lh, index, size, path, root)
    reason = None if valid else _inclusion_reason(index, size, path)
    return VerifyReport(valid, "inclusion", reason, size, root.hex(), leaf_index=index, leaf_hash=lh.hex())


def _inclusion_reason(index: int, size: int, path: list[bytes]) -> str:
    if index >= size:
        return f"leaf_index {index} is not below tree_size {size}"
    expected = merkle.inclusion_proof_length(index, size)
    if len(path) != expected:
        return f"audit_path has {len(path)} hashes; leaf {index} of {size} needs {expected}"
    return "the audit path does not lead to the root"


def _verify_consistency_doc(doc: dict[str, Any], source: str) -> VerifyReport:
    old_size = _field_int(doc, "old_size", source)
    new_size = _field_int(doc, "new_size", source)
    old_root = _field_hash(doc, "old_root", source)
    new_root = _field_hash(doc, "new_root", source)
    proof = _field_path(doc, "proof", source)
    assert old_root is not None and new_root is not None
    valid = merkle.verify_consistency(old_size, new_size, old_root, new_root, proof)
    reason = None
    if not valid:
        if old_size == 0 or old_size > new_size:
            reason = f"old_size must be between 1 and new_size ({new_size}), got {old_size}"
        elif len(proof) != merkle.consistency_proof_length(old_size, new_size):
            expected = merkle.consistency_proof_length(old_size, new_size)
            reason = f"proof has {len(proof)} hashes; {old_size} -> {new_size} needs {expected}"
        else:
            reason = "the proof does not lead to both roots"
    return VerifyReport(
        valid,
        kind="consistency",
        reason=reason,
        tree_size=new_size,
        root=new_root.hex(),
        old_size=old_size,
        old_root=old_root.hex(),
    )


# -- retries --------------------------------------------------------------------------------


@dataclass(frozen=True)
class RetryPolicy:
    """Capped exponential backoff for store errors and write conflicts."""

    attempts: int = 5
    initial: float = 1.0
    maximum: float = 30.0
    sleep: Callable[[float], None] = time.sleep
    store_errors: bool = True  # False: retry write conflicts only (an unreachable store fails at once)


def with_retries(policy: RetryPolicy, fn: Callable[[], T], retried: list[str] | None = None) -> T:
    """Call FN, retrying StoreConflictError (and ChainStoreError, if the policy says so) per
    POLICY; re-raises the last."""
    from tenacity import Retrying, retry_if_exception_type, stop_after_attempt, wait_exponential

    def note(state: Any) -> None:
        exc = state.outcome.exception()
        message = f"{type(exc).__name__}: {exc}"
        # Another run's write meanwhile is expected (concurrent loads anchor at once): not a warning.
        level = logging.INFO if isinstance(exc, ch.StoreConflictError) else logging.WARNING
        log.log(level, "chain store: %s; retrying in %.1f s", message, state.next_action.sleep)
        if retried is not None:
            retried.append(message)

    retrying = Retrying(
        stop=stop_after_attempt(policy.attempts),
        wait=wait_exponential(multiplier=policy.initial, min=policy.initial, max=policy.maximum),
        retry=retry_if_exception_type(
            (ch.ChainStoreError, ch.StoreConflictError) if policy.store_errors else ch.StoreConflictError
        ),
        sleep=policy.sleep,
        before_sleep=note,
        reraise=True,
    )
    return retrying(fn)


# -- anchors ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class AnchorRequestReport:
    """What `request` did: created, existing (deduplicated) or reopened."""

    outcome: str
    anchor: dict[str, Any]


def request_anchor(
    store: ChainStore,
    *,
    root: bytes,
    kind: str,
    label: str,
    now: datetime,
    tree_size: int | None = None,
    retry: RetryPolicy = RetryPolicy(),
) -> AnchorRequestReport:
    """Ask for ROOT to be anchored in the next block (the same root twice is one anchor)."""

    def attempt() -> AnchorRequestReport:
        anchor, outcome = ch.request_anchor(
            store.anchors([root.hex()]).get(root.hex()),
            root=root,
            kind=kind,
            label=label,
            now=now,
            tree_size=tree_size,
        )
        if outcome != "existing":
            store.commit(anchors=[anchor])
        return AnchorRequestReport(outcome, anchor.to_json())

    return with_retries(retry, attempt)


def unseen_requests(
    store: ChainStore, requests: Iterable[tuple[bytes, str, str, int | None]]
) -> list[tuple[bytes, str, str, int | None]]:
    """Those REQUESTS whose root the store has never seen in any state (one per root)."""
    wanted = list(requests)
    known = store.anchors({request[0].hex() for request in wanted})
    out: dict[str, tuple[bytes, str, str, int | None]] = {}
    for request in wanted:
        key = request[0].hex()
        if key not in known and key not in out:
            out[key] = request
    return list(out.values())


def request_missing_anchors(
    store: ChainStore,
    requests: Iterable[tuple[bytes, str, str, int | None]],
    *,
    now: datetime,
    retry: RetryPolicy = RetryPolicy(),
) -> list[str]:
    """Request anchors, in one commit, for those (root, kind, label, tree size) the store
    has never seen in any state (a cancelled or failed one stays so); returns their ids.
    How queued audit checkpoints catch up after the store was unreachable, wiped or rolled back."""
    wanted = list(requests)

    def attempt() -> list[str]:
        new: dict[str, ch.Anchor] = {}
        for root, kind, label, size in unseen_requests(store, wanted):
            anchor, _ = ch.request_anchor(None, root=root, kind=kind, label=label, now=now, tree_size=size)
            new[anchor.id] = anchor
        if new:
            store.commit(anchors=list(new.values()))
        return list(new)

    return with_retries(retry, attempt)


def cancel_anchor(
    store: ChainStore, anchor_id: str, *, now: datetime, retry: RetryPolicy = RetryPolicy()
) -> dict[str, Any]:
    """Cancel a pending anchor (by id or an unambiguous prefix of at least 8 hex digits)."""

    def attempt() -> dict[str, Any]:
        anchor = find_anchor(store, anchor_id)
        cancelled = ch.cancel_anchor(anchor, now=now)
        if cancelled is not anchor:
            store.commit(anchors=[cancelled])
        return cancelled.to_json()

    return with_retries(retry, attempt)


def find_anchor(store: ChainStore, anchor_id: str) -> ch.Anchor:
    """The anchor whose id is ANCHOR_ID, or starts with it (at least 8 hex digits; an ambiguous
    prefix is a UsageError), looked up by the store: no block and no other anchor is read."""
    prefix = ch.anchor_prefix(anchor_id)
    return ch.only_anchor(store.anchors(prefix=prefix).values(), prefix)


def list_anchors(store: ChainStore, *, state: str | None = None, limit: int = 50) -> dict[str, Any]:
    """The LIMIT most recently requested anchors (in STATE when given), newest first, with
    `total` (how many are in STATE, or at all: more exist when it exceeds the page), the count
    in each state and the chain's length (from its head: no other block is read)."""
    wanted = None if state is None else ch.AnchorState(state)
    page = store.anchor_page(state=wanted, limit=limit)
    head = store.head()
    return {
        "anchors": [a.to_json() for a in page.anchors],
        "total": sum(page.counts.values()) if wanted is None else page.counts[wanted.value],
        "limit": limit,
        "counts": page.counts,
        "chain_length": 0 if head is None else head.index + 1,
    }


@dataclass(frozen=True)
class AnchorRunReport:
    """What one `anchor run` did."""

    ok: bool
    outcome: str  # "anchored" | "nothing-pending" | "mining-bound-reached" | "dry-run"
    pending: int
    block: dict[str, Any] | None = None
    anchored: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    attempts: int = 0
    seconds: float = 0.0
    hash_rate: float = 0.0
    difficulty: int = 0
    retries: list[str] = field(default_factory=list)
    message: str = ""
    # Ingest batches whose anchor is of another root or tree size (`ingest.BatchAnchorCheck`):
    # never requested; any makes the run's answer no (exit 1).
    mismatched_batches: list[dict[str, Any]] = field(default_factory=list)
    # The block of the least work the run saw (index, bits): the first of the fewest bits when it
    # validated the chain (something to anchor), else the head; None for an empty chain.
    lightest_found: tuple[int, int] | None = None


def run_anchors(
    store: ChainStore,
    *,
    now: datetime,
    difficulty: int = ch.DEFAULT_DIFFICULTY,
    max_attempts: int | None = None,
    time_limit: float | None = 60.0,
    clock: Callable[[], float] = time.monotonic,
    max_anchor_attempts: int = ch.DEFAULT_MAX_ATTEMPTS,
    dry_run: bool = False,
    also: int = 0,
    retry: RetryPolicy = RetryPolicy(),
    mining: Callable[[], None] | None = None,
) -> AnchorRunReport:
    """Anchor every pending root into one new block (mined at DIFFICULTY bits). A DRY_RUN
    counts ALSO more: the roots a real run requests first (``unseen_requests``).

    Safe to re-run (cron): with nothing pending it does nothing. When the mining bound is
    reached first, each pending anchor's attempt count rises and, after
    MAX_ANCHOR_ATTEMPTS, it becomes ``failed``. Store errors and conflicts are retried.
    MINING is called as the mining starts (something to anchor, the chain validated).
    """
    retried: list[str] = []
    found: list[ch.Block | None] = [None]
    lightest: list[tuple[int, int] | None] = [None]

    def attempt() -> AnchorRunReport:
        # Read apart, not one snapshot: the commit's checks refuse a head or an anchor that
        # changed since (another run anchored meanwhile), and the attempt is retried.
        pending = ch.ChainState(anchors=store.anchors(state=ch.AnchorState.PENDING)).pending()
        head = found[0] = store.head()
        count = len(pending) + (also if dry_run else 0)
        if not count:
            return AnchorRunReport(
                True, "nothing-pending", 0, difficulty=difficulty, message="nothing to anchor"
            )
        lightest[0] = refuse_invalid_chain(store)
        index = 0 if head is None else head.index + 1
        if dry_run:
            first = f" ({also} requested first: audit checkpoints or ingest batches the chain never saw)"
            return AnchorRunReport(
                True,
                "dry-run",
                count,
                difficulty=difficulty,
                message=f"would anchor {count} root(s) into block {index}" + (first if also else ""),
            )
        if mining is not None:
            mining()
        # A block never goes back in time, even if this machine's clock does.
        timestamp = now if head is None or now >= head.timestamp else head.timestamp
        result = ch.mine(
            index=index,
            timestamp=timestamp,
            prev_hash=ch.ZERO_HASH if head is None else head.hash,
            records=ch.anchor_block_records(pending),
            difficulty=difficulty,
            max_attempts=max_attempts,
            time_limit=time_limit,
            clock=clock,
        )
        stats = dict(
            attempts=result.attempts,
            seconds=result.seconds,
            hash_rate=result.hash_rate,
            difficulty=difficulty,
        )
        if result.block is None:
            error = (
                f"no nonce found within the mining bound ({result.stopped_by}, {result.attempts} attempts)"
            )
            updated = [
                ch.mark_attempt_failed(a, error=error, now=now, max_attempts=max_anchor_attempts)
                for a in pending
            ]
            store.commit(anchors=updated)
            failed = [a.id for a in updated if a.state is ch.AnchorState.FAILED]
            return AnchorRunReport(
                False,
                "mining-bound-reached",
                len(pending),
                failed=failed,
                message=error,
                **stats,  # type: ignore[arg-type]
            )
        block = result.block
        anchored = [ch.mark_anchored(a, block_index=block.index, now=now) for a in pending]
        store.commit(blocks=[block], anchors=anchored)
        return AnchorRunReport(
            True,
            "anchored",
            len(pending),
            block=block.to_json(),
            anchored=[a.id for a in anchored],
            message=f"anchored {len(anchored)} root(s) in block {block.index}",
            **stats,  # type: ignore[arg-type]
        )

    report = with_retries(retry, attempt, retried)
    head = found[0]
    light = lightest[0] or (None if head is None else (head.index, head.difficulty))
    return replace(report, retries=retried, lightest_found=light)


def refuse_invalid_chain(store: ChainStore) -> tuple[int, int] | None:
    """PreconditionError (exit 5) naming the first bad block when STORE's blocks do not validate
    (`core.chain.validate_chain`, streamed: memory holds one block): a block mined onto them
    would anchor roots that `chain verify --anchored` and `audit verify` never trust. The blocks
    alone, read with no anchor (a run reads only the pending ones); the work each block claims,
    not chain.min_difficulty: the first block of the fewest bits (index, bits) is returned, for
    `anchor run` to warn about one below the setting, anywhere in the chain (None: no block)."""
    lightest: list[tuple[int, int]] = []

    def watched(blocks: Iterable[ch.Block]) -> Iterator[ch.Block]:
        for block in blocks:
            if not lightest or block.difficulty < lightest[0][1]:
                lightest[:] = [(block.index, block.difficulty)]
            yield block

    with store.stream(ids=()) as (_anchors, blocks):
        report = ch.validate_chain(watched(blocks))
    if not report.ok:
        why = (report.message or "").removeprefix(f"block {report.bad_index}: ")
        raise PreconditionError(
            f"chain invalid at block {report.bad_index} ({why}): refusing to mine a block onto it "
            "(its anchors would not be trusted); nothing was anchored",
            hint="`voke chain validate` names the problem",
        )
    return lightest[0] if lightest else None


def plan_import(open_store: Callable[[], ChainStore], incoming: ch.ChainState) -> dict[str, int]:
    """What importing INCOMING into the store OPEN_STORE opens (read-only) would add, refused
    as the import would be (`core.chain.merge_import`); a chain not created yet is empty."""
    _merged, added, changed = ch.merge_import(open_store().load(), incoming)
    return {"blocks_added": len(added), "anchors_updated": len(changed)}


def validate(store: ChainStore, *, min_difficulty: int = ch.DEFAULT_DIFFICULTY) -> ch.ChainReport:
    """Validate the whole stored chain, streamed, and check every anchored anchor is in its block."""
    with store.stream() as (anchors, blocks):
        return validate_state(blocks, anchors, min_difficulty=min_difficulty)


def validate_state(
    blocks: Iterable[ch.Block], anchors: Mapping[str, ch.Anchor], *, min_difficulty: int
) -> ch.ChainReport:
    """BLOCKS validated (each with at least MIN_DIFFICULTY bits of work), then ANCHORS checked
    against them (`anchor_disagreement`): what `chain validate` runs, and what `audit verify`
    runs on the chain it loads before it trusts a claim from it. BLOCKS are read once, in
    order, and none is kept: a stream from the store (`ChainStore.stream`) will do."""
    check = ch.SealedAnchors(anchors.values())
    light: list[tuple[int, int]] = []  # (position, bits) of the first block below MIN_DIFFICULTY

    def seen() -> Iterator[ch.Block]:
        for position, block in enumerate(blocks):
            check.see(block)
            if not light and block.difficulty < min_difficulty:
                light.append((position, block.difficulty))
            yield block

    report = ch.validate_chain(seen(), min_difficulty=min_difficulty)
    if not report.ok:
        if report.problem is ch.Problem.INSUFFICIENT_WORK and light and light[0][0] == report.bad_index:
            # Mined below the required work on purpose (`anchor run --difficulty`, or the setting raised
            # since): the operator who knows says so; an attacker's cheap re-mine is what this catches.
            message = (
                f"{report.message} (chain.min_difficulty; if blocks were mined with fewer bits on purpose, "
                f"`--min-difficulty {light[0][1]}` or that setting accepts them)"
            )
            report = replace(report, message=message)
        return report
    problem = check.disagreement()
    if problem is not None:
        index, message = problem
        return ch.ChainReport(False, report.length, report.head, index, ch.Problem.CHANGED_RECORD, message)
    return report


def sealed_in_valid_chain(
    store: ChainStore,
    spelling: str,
    wanted: Callable[[ch.SealedRecord], bool],
    *,
    kind: str | None = None,
    ids: Collection[str] | None = None,
    min_difficulty: int,
) -> tuple[ch.ChainReport, dict[str, ch.Anchor], list[ch.SealedRecord]]:
    """One read of STORE, its blocks streamed: the chain judged by `validate_state` (against
    the anchors of KIND, among IDS, that the store returns with them), those anchors, and the
    anchor records its blocks seal that may hold SPELLING (`sealed_records`) and WANTED keeps.
    Each block is judged and let go, so memory holds the records kept, not the chain:
    `chain verify --anchored` and `audit verify` read what they trust this way."""
    sealed: list[ch.SealedRecord] = []

    def noting(blocks: Iterable[ch.Block]) -> Iterator[ch.Block]:
        for block in blocks:
            sealed.extend(r for r in ch.sealed_records([block], spelling=spelling) if wanted(r))
            yield block

    with store.stream(kind=kind, ids=ids) as (anchors, blocks):
        report = validate_state(noting(blocks), anchors, min_difficulty=min_difficulty)
    return report, anchors, sealed


def untrusted_chain(report: ch.ChainReport) -> str:
    """Why a chain that failed REPORT (`validate_state`) vouches for nothing, in the words
    `chain verify --anchored` and `audit verify` both use."""
    why = (report.message or "").removeprefix(f"block {report.bad_index}: ")
    return f"chain invalid at block {report.bad_index}: its anchors are not trusted ({why})"


# -- the store every command uses --------------------------------------------------------


class ChainUnavailableError(ch.ChainStoreError):
    """The chain's database cannot be reached without starting the local environment (exit 4)."""


def open_chain_store(
    home: Path,
    *,
    settings: Settings | None = None,
    start: Callable[[str], None] | None = None,
    readonly: bool = False,
    whole: bool = False,
) -> ChainStore:
    """The chain store of VOKE_HOME HOME: the one place that picks it, for `voke chain`,
    ingest batch anchors and audit checkpoint anchors alike.

    ``chain.store = "postgres"`` (the default): database ``chain.database`` on the local
    environment's leader (after a failover, the promoted node). With START (a progress
    callback) the environment is started if it is not running, as commands that need it
    do; without it, ChainUnavailableError when the leader is not running: the audit log
    and ingest never start the environment. ``chain.store = "file"``:
    ``VOKE_HOME/chain/chain.json``. A chain.json from before PostgreSQL was the default is
    migrated into it on first use (once, audited, the file kept as a backup).

    SETTINGS default to those this process loaded for HOME (`config.settings_loaded_for`).
    WHOLE: a command that changes the chain starts all of `voke env up`, not only the servers.
    READONLY (verify, listings, dry runs): never start the environment, create the database
    or migrate a chain.json (which is read where it is); ChainUnavailableError instead. A chain
    database not made yet is an empty chain then (a `FileChainStore` with no file), as it is to
    a command that makes it: every read-only command answers as on a chain with nothing in it.
    """
    from voketag_ops.adapters.local.chain_store import FileChainStore, default_chain_path
    from voketag_ops.adapters.local.environment import LocalEnvironment, resolve_home
    from voketag_ops.config import Settings, settings_loaded_for

    settings = settings or settings_loaded_for(home) or Settings()
    if settings.chain.store == "file" or (readonly and default_chain_path(home).exists()):
        return FileChainStore(default_chain_path(home))  # (read-only: a chain not migrated yet)
    local = settings.local
    if resolve_home(local.home) != home:
        local = local.model_copy(update={"home": home})
    database = settings.chain.database
    waiting = FileChainStore(default_chain_path(home))
    for _ in range(2):  # again when a destroy removed the environment while a migration waited
        env = LocalEnvironment.from_settings(local)
        if start is not None and not readonly:
            from voketag_ops.workflows.env import ensure_local

            # WHOLE (a command that changes the chain): all of `env up`, as every changing command
            # starts it; otherwise the servers only (a read, or `env destroy` exporting the chain)
            env = ensure_local(settings.model_copy(update={"local": local}), start, whole=whole)
        elif not _leader_running(env):
            raise ChainUnavailableError(
                f"the chain is in PostgreSQL (database {database}) and the local environment is not "
                "running; `voke env up` starts it"
            )
        if readonly or not waiting.path.exists():  # the common case: one stat
            # (read-only, no database: `waiting` is no file either, so it reads as an empty chain)
            return _pg_chain_store(env, database, readonly=readonly, started=start is not None) or waiting
        with _env_settled(env, wait=start is not None):
            if _leader_running(env):
                store = _pg_chain_store(env, database, readonly=False, started=start is not None)
                assert store is not None  # (made on first use)
                _migrate_file_chain(waiting, store, home=home, env_name=settings.env)
                return store
        if start is None:  # (a destroy or `env down` finished while the lock was taken)
            raise ChainUnavailableError("the local environment stopped before the chain export moved back in")
    raise PreconditionError(
        f"the local environment was destroyed twice while the chain export in {waiting.path} waited "
        "to move back in; rerun the command"
    )


def _leader_running(env: LocalEnvironment) -> bool:
    return env.exists and env.primary().running


@contextmanager
def _env_settled(env: LocalEnvironment, *, wait: bool) -> Iterator[None]:
    """ENV's env.lock, which `env up`, `env down` and `env destroy` hold throughout: a chain
    export is moved back in only into an environment no destroy is deleting (destroy exports
    it, then deletes the databases, under that lock). WAIT (a command that starts the
    environment): as long as `env.lock` says, then the caller checks what is left; otherwise
    (the audit log, an ingest anchor) no wait at all but ChainUnavailableError, as for a stopped
    environment: the audit log holds its own lock meanwhile, and its anchors catch up later."""
    from voketag_ops.adapters.local.chain_store import default_chain_path
    from voketag_ops.locks import running_elsewhere

    with ExitStack() as stack:
        try:
            stack.enter_context(env.lock() if wait else env.lock(timeout=0))
        except PreconditionError:
            if wait:
                raise
            holder = running_elsewhere(env.home / "dr") or "another voke process"
            raise ChainUnavailableError(
                f"the local environment is being changed ({holder}); the chain export waiting in "
                f"{default_chain_path(env.home)} moves back in on its next use"
            ) from None
        yield


def _pg_chain_store(
    env: LocalEnvironment, database: str, *, readonly: bool, started: bool
) -> PgChainStore | None:
    """The PostgreSQL chain store in database DATABASE on ENV's leader (created on first use
    unless READONLY: None when it does not exist). A leader a failover stops since it was found
    running, before the open or any later connection of the store, fails naming that DR
    operation in the hint (`locks.dr_operation_hint`), whichever command uses the store."""
    from voketag_ops.adapters.local.pg_chain_store import PgChainStore
    from voketag_ops.locks import dr_operation_hint

    try:
        conninfo = env.database(database, create=not readonly)  # created on first use
    except BackendError as exc:
        raise ch.ChainStoreError(
            f"chain store (PostgreSQL): {exc.message}", hint=dr_operation_hint(env.home)
        ) from None
    if conninfo is None:
        return None
    leader = env.primary()
    return PgChainStore(
        conninfo,
        connect_timeout=5 if started else 2,
        location=f"PostgreSQL database {database} on the local {leader.name} (port {leader.port})",
        hint=lambda: dr_operation_hint(env.home),
    )


def _migrate_file_chain(source: FileChainStore, target: ChainStore, *, home: Path, env_name: str) -> None:
    """Move SOURCE (an export `env destroy` left) into TARGET; the caller holds env.lock."""
    from voketag_ops.audit import record_event

    report = source.move_into(target, now=datetime.now(UTC))
    if report is None:
        return
    log.warning(
        "moved the chain (%d blocks, %d anchors) from %s into %s; the file is kept as %s",
        report["blocks"],
        report["anchors"],
        report["from"],
        report["to"],
        report["backup"],
    )
    record_event(
        home,
        event_type="chain.migrate",
        env=env_name,
        target=target.location,
        result="success",
        details=report,
    )


def chain_anchorer(home: Path, now: datetime) -> Callable[[bytes, int, str], tuple[str, str | None]]:
    """Request ingest batch roots as anchors (kind ``ingest-batch``):
    (root, tree size, label) -> (anchor state, anchor id).

    The store is opened at the first request and never starts the environment: a load into
    another database (`--db`) with the environment down reports the anchor unavailable, and
    loading the same file again later requests it."""
    stores: list[ChainStore] = []

    def anchor(root: bytes, size: int, label: str) -> tuple[str, str | None]:
        if not stores:
            stores.append(open_chain_store(home))
        done = request_anchor(
            stores[0],
            root=root,
            kind="ingest-batch",
            label=label,
            tree_size=size,
            now=now,
            retry=RetryPolicy(attempts=3, initial=0.05, maximum=0.2),
        )
        return str(done.anchor["state"]), str(done.anchor["id"])

    return anchor


def anchor_states(home: Path) -> Callable[[Collection[str]], dict[str, tuple[str, int | None]]]:
    """A lookup of anchor ids -> {id: (state, tree size)} of those the chain knows (empty when
    the chain cannot be read: listings still work); it reads those anchors only, never the
    whole chain."""

    def lookup(ids: Collection[str]) -> dict[str, tuple[str, int | None]]:
        try:
            anchors = open_chain_store(home, readonly=True).anchors(ids).values()
        except VokeError:
            return {}
        return {a.id: (a.state.value, a.tree_size) for a in anchors}

    return lookup
