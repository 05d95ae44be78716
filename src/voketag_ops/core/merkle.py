"""RFC 6962 / RFC 9162 (section 2.1) Merkle trees over SHA-256: roots, inclusion and
consistency proofs, their verification, and an O(log n) incremental builder.

Pure and standard-library only. Hashes are raw 32-byte ``bytes``:

- ``leaf_hash(d) = SHA-256(0x00 || d)`` and ``node_hash(l, r) = SHA-256(0x01 || l || r)``
  (domain separation defeats the second-preimage attack that passes an inner node
  off as a leaf);
- the tree over n > 1 leaves splits at ``k``, the largest power of two below n; an
  unpaired last node is carried up unchanged, never duplicated (CVE-2012-2459);
- the empty tree's root is ``SHA-256()``.

Verification functions never raise: a proof that is malformed in any way (wrong
types, a hash that is not 32 bytes, index >= size, too many or too few nodes) is
simply not valid. They bind the proof to the leaf index and the tree size.

Speed: hashing dominates, so the hot loops are list comprehensions over copies of a
prefixed ``hashlib.sha256`` state, and leaves are processed in aligned chunks of
``CHUNK`` so the working set stays in cache (see benchmarks/merkle.py).

A tree size is bound only as far as it changes the shape of the path: leaf 0 of a
3-leaf tree and leaf 0 of a 4-leaf tree have the same path shape, so no RFC 9162
verifier can tell those sizes apart. Publish and anchor (size, root) together.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable, Sequence
from itertools import islice
from typing import Any

__all__ = [
    "CHUNK",
    "EMPTY_ROOT",
    "HASH_SIZE",
    "MerkleBuilder",
    "MerkleTree",
    "consistency_proof_length",
    "inclusion_proof_length",
    "leaf_hash",
    "node_hash",
    "root",
    "root_from_inclusion_proof",
    "root_of_leaf_hashes",
    "verify_consistency",
    "verify_inclusion",
    "verify_leaf",
]

HASH_SIZE = 32
EMPTY_ROOT = hashlib.sha256(b"").digest()
_LEAF = b"\x00"
_NODE = b"\x01"
_sha256 = hashlib.sha256

CHUNK_BITS = 10
CHUNK = 1 << CHUNK_BITS  # leaves hashed per batch; a perfect, aligned subtree


def leaf_hash(data: bytes) -> bytes:
    """SHA-256(0x00 || data)."""
    return _sha256(_LEAF + data).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    """SHA-256(0x01 || left || right)."""
    return _sha256(_NODE + left + right).digest()


# -- batch hashing (the hot path) ---------------------------------------------------


# hashlib.sha256(prefix).copy() + update() is measurably faster than building
# `prefix + a + b` (one allocation fewer per hash); `or` chains the None-returning updates.
_LEAF_STATE = _sha256(_LEAF)
_NODE_STATE = _sha256(_NODE)


def _hash_leaves(chunk: Sequence[bytes], cp: Any = _LEAF_STATE.copy) -> list[bytes]:
    return [(h := cp()).update(d) or h.digest() for d in chunk]


def _next_level(level: list[bytes], cp: Any = _NODE_STATE.copy) -> list[bytes]:
    it = iter(level)
    parents = [(h := cp()).update(a) or h.update(b) or h.digest() for a, b in zip(it, it, strict=False)]
    if len(level) & 1:
        parents.append(level[-1])  # carried up unchanged, never duplicated
    return parents


def _fold(level: list[bytes]) -> bytes:
    """The root over LEVEL, a level of the tree (carry semantics)."""
    if not level:
        return EMPTY_ROOT
    while len(level) > 1:
        level = _next_level(level)
    return level[0]


def _check_hashes(hashes: Sequence[bytes]) -> None:
    for h in hashes:
        if not isinstance(h, bytes | bytearray) or len(h) != HASH_SIZE:
            raise ValueError(f"a leaf hash must be {HASH_SIZE} bytes")


def root(leaves: Iterable[bytes]) -> bytes:
    """The Merkle tree hash (MTH) of LEAVES (raw leaf data), streaming, O(log n) memory."""
    return MerkleBuilder().extend(leaves).root()


def root_of_leaf_hashes(hashes: Iterable[bytes]) -> bytes:
    """The root of the tree whose leaf hashes are HASHES (already ``leaf_hash``-ed)."""
    return MerkleBuilder().extend_leaf_hashes(hashes).root()


# -- incremental builder --------------------------------------------------------------


class MerkleBuilder:
    """Append leaves one at a time (or in bulk); the root is available at every size.

    State is the stack of roots of the perfect subtrees that make up the tree so far,
    one per set bit of ``size`` (largest first): O(log n) hashes of memory.
    """

    __slots__ = ("_size", "_stack")

    def __init__(self) -> None:
        self._size = 0
        self._stack: list[bytes] = []

    @classmethod
    def from_state(cls, size: int, stack: Sequence[bytes]) -> MerkleBuilder:
        """Resume from ``(size, stack)`` as given by :attr:`state`."""
        if not isinstance(size, int) or size < 0 or len(stack) != size.bit_count():
            raise ValueError("builder state does not match its size")
        _check_hashes(stack)
        builder = cls()
        builder._size = size
        builder._stack = [bytes(h) for h in stack]
        return builder

    @property
    def size(self) -> int:
        """Number of leaves appended so far."""
        return self._size

    @property
    def state(self) -> tuple[int, tuple[bytes, ...]]:
        """``(size, subtree roots)``: everything needed to resume, O(log n) hashes."""
        return self._size, tuple(self._stack)

    def append(self, data: bytes) -> int:
        """Append one leaf (raw data); returns its index."""
        return self._push(_sha256(_LEAF + data).digest(), 0)

    def append_leaf_hash(self, hash_: bytes) -> int:
        """Append one leaf given by its leaf hash; returns its index."""
        _check_hashes((hash_,))
        return self._push(bytes(hash_), 0)

    def _push(self, subtree: bytes, height: int) -> int:
        """Push the root of a perfect subtree of 2**HEIGHT leaves starting at ``size``."""
        index = self._size
        stack = self._stack
        s = index >> height  # index is a multiple of 2**height
        while s & 1:
            subtree = _sha256(_NODE + stack.pop() + subtree).digest()
            s >>= 1
        stack.append(subtree)
        self._size = index + (1 << height)
        return index

    def extend(self, leaves: Iterable[bytes]) -> MerkleBuilder:
        """Append many leaves (raw data); hashes whole aligned chunks at once."""
        return self._extend(leaves, hashed=False)

    def extend_leaf_hashes(self, hashes: Iterable[bytes]) -> MerkleBuilder:
        """Append many leaves given by their leaf hashes."""
        return self._extend(hashes, hashed=True)

    def _extend(self, items: Iterable[bytes], *, hashed: bool) -> MerkleBuilder:
        it = iter(items)
        one = self.append_leaf_hash if hashed else self.append
        # Single appends until the size is a multiple of CHUNK, then whole chunks.
        misaligned = -self._size % CHUNK
        for item in islice(it, misaligned):
            one(item)
        while True:
            chunk = list(islice(it, CHUNK))
            if len(chunk) < CHUNK:
                for item in chunk:
                    one(item)
                return self
            if hashed:
                _check_hashes(chunk)
                level = [bytes(h) for h in chunk]
            else:
                level = _hash_leaves(chunk)
            self._push(_fold(level), CHUNK_BITS)

    def root(self) -> bytes:
        """The root of the tree over everything appended so far."""
        stack = self._stack
        if not stack:
            return EMPTY_ROOT
        acc = stack[-1]
        for left in reversed(stack[:-1]):
            acc = _sha256(_NODE + left + acc).digest()
        return acc


# -- a whole tree, for proofs ---------------------------------------------------------


class MerkleTree:
    """An immutable tree with every level kept (2n hashes), for proofs at any size <= n.

    Level h holds node j = MTH(D[j*2^h : min((j+1)*2^h, n)]) for j < ceil(n / 2^h),
    stored as one contiguous ``bytes`` per level (32 bytes per node).
    """

    __slots__ = ("_levels", "_size")

    def __init__(self, levels: list[bytes], size: int) -> None:
        self._levels = levels
        self._size = size

    @classmethod
    def from_leaves(cls, leaves: Iterable[bytes]) -> MerkleTree:
        """Build from raw leaf data."""
        return cls._build(leaves, hashed=False)

    @classmethod
    def from_leaf_hashes(cls, hashes: Iterable[bytes]) -> MerkleTree:
        """Build from leaf hashes (each 32 bytes)."""
        return cls._build(hashes, hashed=True)

    @classmethod
    def _build(cls, items: Iterable[bytes], *, hashed: bool) -> MerkleTree:
        # Chunks of CHUNK leaves are aligned perfect subtrees: build their lower levels
        # chunk by chunk (cache-friendly), then the levels above from the chunk roots.
        parts: list[list[bytes]] = [[] for _ in range(CHUNK_BITS)]
        tops: list[bytes] = []
        size = 0
        it = iter(items)
        join = b"".join
        while True:
            chunk = list(islice(it, CHUNK))
            if not chunk:
                break
            size += len(chunk)
            if hashed:
                _check_hashes(chunk)
                level = [bytes(h) for h in chunk]
            else:
                level = _hash_leaves(chunk)
            for h in range(CHUNK_BITS):
                parts[h].append(join(level))
                if len(level) > 1:
                    level = _next_level(level)
            tops.append(level[0])
            if len(chunk) < CHUNK:
                break
        if size == 0:
            return cls([], 0)
        levels = [join(p) for p in parts]
        level = tops
        levels.append(join(level))
        while len(level) > 1:
            level = _next_level(level)
            levels.append(join(level))
        height = (size - 1).bit_length()  # levels 0..height; above that the root repeats
        return cls(levels[: height + 1], size)

    @property
    def size(self) -> int:
        """Number of leaves."""
        return self._size

    @property
    def root(self) -> bytes:
        """The root of the whole tree."""
        return self._levels[-1][:HASH_SIZE] if self._size else EMPTY_ROOT

    def leaf_hash(self, index: int) -> bytes:
        """The leaf hash at INDEX."""
        self._check_index(index, self._size, "leaf index")
        return self._levels[0][HASH_SIZE * index : HASH_SIZE * (index + 1)]

    def root_at(self, size: int) -> bytes:
        """The root of the tree's first SIZE leaves (0 <= size <= self.size)."""
        self._check_index(size, self._size + 1, "tree size")
        return self._mth(0, size)

    def inclusion_proof(self, index: int, size: int | None = None) -> list[bytes]:
        """The audit path for leaf INDEX in the tree of the first SIZE leaves (default: all)."""
        size = self._size if size is None else size
        self._check_index(size, self._size + 1, "tree size")
        self._check_index(index, size, "leaf index")
        path: list[bytes] = []
        lo, hi, m = 0, size, index
        # PATH(m, D[lo:hi]) = PATH(...sub-range...) + [MTH(other half)]; collect top-down.
        while hi - lo > 1:
            k = 1 << ((hi - lo - 1).bit_length() - 1)
            if m < lo + k:
                path.append(self._mth(lo + k, hi))
                hi = lo + k
            else:
                path.append(self._mth(lo, lo + k))
                lo += k
        path.reverse()
        return path

    def consistency_proof(self, old_size: int, new_size: int | None = None) -> list[bytes]:
        """The proof that the first OLD_SIZE leaves are a prefix of the first NEW_SIZE.

        0 < old_size <= new_size <= self.size; the proof is empty when the sizes are equal.
        """
        new_size = self._size if new_size is None else new_size
        self._check_index(new_size, self._size + 1, "new tree size")
        if not isinstance(old_size, int) or not 0 < old_size <= new_size:
            raise ValueError(f"old tree size must be between 1 and {new_size}, got {old_size!r}")
        proof: list[bytes] = []
        # SUBPROOF(m, D[lo:hi], b), unrolled; entries are produced top-down.
        lo, hi, m, complete = 0, new_size, old_size, True
        while m != hi - lo:
            k = 1 << ((hi - lo - 1).bit_length() - 1)
            if m <= k:
                proof.append(self._mth(lo + k, hi))
                hi = lo + k
            else:
                proof.append(self._mth(lo, lo + k))
                lo += k
                m -= k
                complete = False
        if not complete:
            proof.append(self._mth(lo, hi))
        proof.reverse()
        return proof

    def _node(self, height: int, j: int) -> bytes:
        return self._levels[height][HASH_SIZE * j : HASH_SIZE * (j + 1)]

    def _mth(self, lo: int, hi: int) -> bytes:
        """MTH(D[lo:hi]) from the stored levels; O(log n) hashes for ranges that end
        inside a partial subtree, a lookup otherwise."""
        n = hi - lo
        if n <= 0:
            return EMPTY_ROOT
        height = (n - 1).bit_length()  # smallest h with 2**h >= n
        if lo & ((1 << height) - 1) == 0 and (n == 1 << height or hi == self._size):
            return self._node(height, lo >> height)
        k = 1 << (height - 1)
        return node_hash(self._mth(lo, lo + k), self._mth(lo + k, hi))

    @staticmethod
    def _check_index(value: int, bound: int, what: str) -> None:
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < bound:
            raise ValueError(f"{what} must be between 0 and {bound - 1}, got {value!r}")


# -- verification (never raises) ------------------------------------------------------


def _is_size(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _is_hash(value: object) -> bool:
    return isinstance(value, bytes | bytearray) and len(value) == HASH_SIZE


def _is_path(proof: object) -> bool:
    return isinstance(proof, list | tuple) and all(_is_hash(p) for p in proof)


def inclusion_proof_length(index: int, size: int) -> int:
    """How many hashes the audit path of INDEX in a tree of SIZE leaves has."""
    if not 0 <= index < size:
        raise ValueError("index must be below size")
    inner = (index ^ (size - 1)).bit_length()  # levels where the path runs inside perfect subtrees
    border = (index >> inner).bit_count()  # levels above them where a left sibling exists
    return inner + border


def consistency_proof_length(old_size: int, new_size: int) -> int:
    """How many hashes the consistency proof from OLD_SIZE to NEW_SIZE has."""
    if not 0 < old_size <= new_size:
        raise ValueError("sizes must satisfy 0 < old_size <= new_size")
    if old_size == new_size:
        return 0
    # The old tree's last perfect subtree sits at LEVEL; prove its inclusion at that level,
    # plus the subtree itself unless the old tree is that one subtree (a power of two).
    level = (old_size & -old_size).bit_length() - 1
    index = (old_size - 1) >> level
    return inclusion_proof_length(index, ((new_size - 1) >> level) + 1) + (1 if index else 0)


def root_from_inclusion_proof(
    leaf_hash_: bytes, index: int, size: int, proof: Sequence[bytes]
) -> bytes | None:
    """The root implied by an audit path (RFC 9162 §2.1.3.2), or None if it is malformed."""
    if not (_is_hash(leaf_hash_) and _is_size(index) and _is_size(size) and _is_path(proof)):
        return None
    if index >= size:
        return None
    fn, sn = index, size - 1
    r = bytes(leaf_hash_)
    s, p = _sha256, _NODE
    for sibling in proof:
        if sn == 0:
            return None  # more nodes than the tree has levels
        if fn & 1 or fn == sn:
            r = s(p + sibling + r).digest()
            while not fn & 1 and fn:
                fn >>= 1
                sn >>= 1
        else:
            r = s(p + r + sibling).digest()
        fn >>= 1
        sn >>= 1
    if sn != 0:
        return None  # too few nodes
    return r


def verify_inclusion(leaf_hash_: bytes, index: int, size: int, proof: Sequence[bytes], root_: bytes) -> bool:
    """True iff PROOF shows the leaf with hash LEAF_HASH_ at INDEX in the tree of SIZE with ROOT_."""
    computed = root_from_inclusion_proof(leaf_hash_, index, size, proof)
    return computed is not None and _is_hash(root_) and hmac.compare_digest(computed, bytes(root_))


def verify_leaf(leaf: bytes, index: int, size: int, proof: Sequence[bytes], root_: bytes) -> bool:
    """Like :func:`verify_inclusion`, but hashes the leaf itself instead of trusting a hash."""
    if not isinstance(leaf, bytes | bytearray | memoryview):
        return False
    return verify_inclusion(leaf_hash(bytes(leaf)), index, size, proof, root_)


def verify_consistency(
    old_size: int, new_size: int, old_root: bytes, new_root: bytes, proof: Sequence[bytes]
) -> bool:
    """True iff PROOF shows the tree of OLD_SIZE with OLD_ROOT is a prefix of the tree of
    NEW_SIZE with NEW_ROOT (RFC 9162 §2.1.4.2).

    Policy at the edges: old_size 0 is rejected (an empty tree proves nothing and the
    upstream test data rejects it); equal sizes need an empty proof and equal roots.
    """
    if not (_is_size(old_size) and _is_size(new_size) and _is_hash(old_root) and _is_hash(new_root)):
        return False
    if not _is_path(proof) or old_size == 0 or old_size > new_size:
        return False
    if old_size == new_size:
        return not proof and hmac.compare_digest(bytes(old_root), bytes(new_root))
    if not proof:
        return False
    path = [bytes(h) for h in proof]
    if old_size & (old_size - 1) == 0:
        path.insert(0, bytes(old_root))
    fn, sn = old_size - 1, new_size - 1
    while fn & 1:
        fn >>= 1
        sn >>= 1
    fr = sr = path[0]
    s, p = _sha256, _NODE
    for c in path[1:]:
        if sn == 0:
            return False
        if fn & 1 or fn == sn:
            fr = s(p + c + fr).digest()
            sr = s(p + c + sr).digest()
            while not fn & 1 and fn:
                fn >>= 1
                sn >>= 1
        else:
            sr = s(p + sr + c).digest()
        fn >>= 1
        sn >>= 1
    return sn == 0 and hmac.compare_digest(fr, bytes(old_root)) and hmac.compare_digest(sr, bytes(new_root))
