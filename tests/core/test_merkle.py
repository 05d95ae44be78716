"""The Merkle engine against RFC 6962's published vectors, an independent recursive
reference written straight from the RFC, and property tests."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from voketag_ops.core import merkle as m
from voketag_ops.testing.imports import loaded_of

# -- an independent reference: RFC 6962 §2.1, recursion as written ---------------------


def _h(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


def _k(n: int) -> int:
    """Largest power of two strictly below n."""
    k = 1
    while k * 2 < n:
        k *= 2
    return k


def ref_mth(d: list[bytes]) -> bytes:
    n = len(d)
    if n == 0:
        return _h(b"")
    if n == 1:
        return _h(b"\x00" + d[0])
    k = _k(n)
    return _h(b"\x01" + ref_mth(d[:k]) + ref_mth(d[k:]))


def ref_path(mi: int, d: list[bytes]) -> list[bytes]:
    n = len(d)
    if n <= 1:
        return []
    k = _k(n)
    if mi < k:
        return [*ref_path(mi, d[:k]), ref_mth(d[k:])]
    return [*ref_path(mi - k, d[k:]), ref_mth(d[:k])]


def ref_proof(mi: int, d: list[bytes]) -> list[bytes]:
    def subproof(mi: int, d: list[bytes], b: bool) -> list[bytes]:
        n = len(d)
        if mi == n:
            return [] if b else [ref_mth(d)]
        k = _k(n)
        if mi <= k:
            return [*subproof(mi, d[:k], b), ref_mth(d[k:])]
        return [*subproof(mi - k, d[k:], False), ref_mth(d[:k])]

    return subproof(mi, d, True)


def inclusion_shape(mi: int, n: int) -> str:
    """The root as a symbolic expression over the path (P0, P1, ...) and the leaf L,
    from the recursive definition: two (index, size) pairs with the same shape are
    indistinguishable to any RFC 9162 verifier (e.g. leaf 0 in trees of 3 and 4)."""
    counter = iter(range(10**6))

    def rec(mi: int, n: int) -> str:
        if n == 1:
            return "L"
        k = _k(n)
        inner = rec(mi, k) if mi < k else rec(mi - k, n - k)
        p = f"P{next(counter)}"
        return f"H({inner},{p})" if mi < k else f"H({p},{inner})"

    return rec(mi, n)


def consistency_shape(mi: int, n: int) -> tuple[str, str, int]:
    """(old root, new root, proof length) as symbolic expressions over the proof
    (P0, P1, ...) and the given old root O, from SUBPROOF's recursive definition."""
    counter = iter(range(10**6))

    def rec(mi: int, n: int, b: bool) -> tuple[str, str]:
        if mi == n:
            if b:
                return "O", "O"
            p = f"P{next(counter)}"
            return p, p
        k = _k(n)
        if mi <= k:
            old, new = rec(mi, k, b)
            p = f"P{next(counter)}"
            return old, f"H({new},{p})"
        old, new = rec(mi - k, n - k, False)
        p = f"P{next(counter)}"
        return f"H({p},{old})", f"H({p},{new})"

    old, new = rec(mi, n, True)
    return old, new, next(counter)


@contextmanager
def small_chunks(bits: int = 2) -> Iterator[None]:
    """Exercise the chunked build paths with tiny chunks."""
    saved = m.CHUNK_BITS, m.CHUNK
    m.CHUNK_BITS, m.CHUNK = bits, 1 << bits
    try:
        yield
    finally:
        m.CHUNK_BITS, m.CHUNK = saved


def hx(s: str) -> bytes:
    return bytes.fromhex(s)


# -- RFC 6962 vectors (transparency-dev/merkle testonly/constants.go, proof/verify_test.go;
#    the same inputs and roots as certificate-transparency's merkle_tree_test.cc) ----------

LEAVES = [
    hx(""),
    hx("00"),
    hx("10"),
    hx("2021"),
    hx("3031"),
    hx("40414243"),
    hx("5051525354555657"),
    hx("606162636465666768696a6b6c6d6e6f"),
]
ROOTS = [
    hx("e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"),
    hx("6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d"),
    hx("fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125"),
    hx("aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77"),
    hx("d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7"),
    hx("4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4"),
    hx("76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef"),
    hx("ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c"),
    hx("5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328"),
]
NODE_HASHES = [
    [
        hx("6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d"),
        hx("96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7"),
        hx("0298d122906dcfc10892cb53a73992fc5b9f493ea4c9badb27b791b4127a7fe7"),
        hx("07506a85fd9dd2f120eb694f86011e5bb4662e5c415a62917033d4a9624487e7"),
        hx("bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b"),
        hx("4271a26be0d8a84f0bd54c8c302e7cb3a3b5d1fa6780a40bcce2873477dab658"),
        hx("b08693ec2e721597130641e8211e7eedccb4c26413963eee6c1e2ed16ffb1a5f"),
        hx("46f6ffadd3d06a09ff3c5860d2755c8b9819db7df44251788c7d8e3180de8eb1"),
    ],
    [
        hx("fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125"),
        hx("5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e"),
        hx("0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a"),
        hx("ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0"),
    ],
    [
        hx("d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7"),
        hx("6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4"),
    ],
    [hx("5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328")],
]
# (leaf index, tree size, audit path)
INCLUSION_VECTORS = [
    (0, 1, []),
    (
        0,
        8,
        [
            hx("96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7"),
            hx("5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e"),
            hx("6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4"),
        ],
    ),
    (
        5,
        8,
        [
            hx("bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b"),
            hx("ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0"),
            hx("d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7"),
        ],
    ),
    (2, 3, [hx("fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125")]),
    (
        1,
        5,
        [
            hx("6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d"),
            hx("5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e"),
            hx("bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b"),
        ],
    ),
]
# (old size, new size, proof)
CONSISTENCY_VECTORS = [
    (1, 1, []),
    (
        1,
        8,
        [
            hx("96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7"),
            hx("5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e"),
            hx("6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4"),
        ],
    ),
    (
        6,
        8,
        [
            hx("0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a"),
            hx("ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0"),
            hx("d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7"),
        ],
    ),
    (
        2,
        5,
        [
            hx("5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e"),
            hx("bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b"),
        ],
    ),
    (
        6,
        7,
        [
            hx("0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a"),
            hx("b08693ec2e721597130641e8211e7eedccb4c26413963eee6c1e2ed16ffb1a5f"),
            hx("d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7"),
        ],
    ),
]
SOME_HASH = hx("abacaba000000000000000000000000000000000000000000060061e00123456")
EMPTY = hx("e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855")

# Structural vectors (transparency-dev/merkle proof/proof_test.go), as leaf ranges
# [lo, hi) whose MTH forms each proof entry; upstream's "rehash" nodes are ranges that
# are not perfect subtrees.
INCLUSION_RANGES = {
    (0, 7): [(1, 2), (2, 4), (4, 7)],
    (2, 7): [(3, 4), (0, 2), (4, 7)],
    (4, 7): [(5, 6), (6, 7), (0, 4)],
    (6, 7): [(4, 6), (0, 4)],
    (3, 5): [(2, 3), (0, 2), (4, 5)],
    (3, 6): [(2, 3), (0, 2), (4, 6)],
    (4, 6): [(5, 6), (0, 4)],
    (10, 15): [(11, 12), (8, 10), (12, 15), (0, 8)],
    (24, 31): [(25, 26), (26, 28), (28, 31), (16, 24), (0, 16)],
    (81, 95): [(80, 81), (82, 84), (84, 88), (88, 95), (64, 80), (0, 64)],
}
CONSISTENCY_RANGES = {
    (1, 2): [(1, 2)],
    (1, 4): [(1, 2), (2, 4)],
    (1, 6): [(1, 2), (2, 4), (4, 6)],
    (2, 3): [(2, 3)],
    (2, 8): [(2, 4), (4, 8)],
    (3, 7): [(2, 3), (3, 4), (0, 2), (4, 7)],
    (4, 7): [(4, 7)],
    (5, 7): [(4, 5), (5, 6), (6, 7), (0, 4)],
    (6, 7): [(4, 6), (6, 7), (0, 4)],
    (7, 8): [(6, 7), (7, 8), (4, 6), (0, 4)],
    (10, 15): [(8, 10), (10, 12), (12, 15), (0, 8)],
    (24, 31): [(16, 24), (24, 31), (0, 16)],
    (81, 95): [(80, 81), (81, 82), (82, 84), (84, 88), (88, 95), (64, 80), (0, 64)],
}


# -- hashing -----------------------------------------------------------------------------


def test_hasher_vectors() -> None:
    assert m.EMPTY_ROOT == EMPTY
    assert m.leaf_hash(b"") == hx("6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d")
    assert m.leaf_hash(b"L123456") == hx("395aa064aa4c29f7010acfe3f25db9485bbd4b91897b6ad7ad547639252b4d56")
    assert m.node_hash(b"N123", b"N456") == hx(
        "aa217fe888e47007fa15edab33c2b492a722cb106c64667fc2b044444de66bbb"
    )


@pytest.mark.parametrize("n", range(9))
def test_roots_by_size(n: int) -> None:
    leaves = LEAVES[:n]
    assert ref_mth(leaves) == ROOTS[n]
    assert m.root(leaves) == ROOTS[n]
    assert m.MerkleTree.from_leaves(leaves).root == ROOTS[n]
    assert m.MerkleTree.from_leaves(LEAVES).root_at(n) == ROOTS[n]
    assert m.root_of_leaf_hashes([m.leaf_hash(x) for x in leaves]) == ROOTS[n]
    with small_chunks(1):
        assert m.root(leaves) == ROOTS[n]
        assert m.MerkleTree.from_leaves(leaves).root == ROOTS[n]


def test_builder_roots_at_every_size() -> None:
    builder = m.MerkleBuilder()
    assert builder.root() == ROOTS[0]
    for n, leaf in enumerate(LEAVES, start=1):
        assert builder.append(leaf) == n - 1
        assert builder.size == n
        assert builder.root() == ROOTS[n]
        assert len(builder.state[1]) == n.bit_count()


def test_node_hashes_by_level() -> None:
    for level, hashes in enumerate(NODE_HASHES):
        for j, want in enumerate(hashes):
            span = LEAVES[j << level : (j + 1) << level]
            assert m.MerkleTree.from_leaves(span).root == want


@pytest.mark.parametrize(("index", "size", "path"), INCLUSION_VECTORS)
def test_inclusion_vectors(index: int, size: int, path: list[bytes]) -> None:
    tree = m.MerkleTree.from_leaves(LEAVES)
    assert tree.inclusion_proof(index, size) == path
    assert m.MerkleTree.from_leaves(LEAVES[:size]).inclusion_proof(index) == path
    assert ref_path(index, LEAVES[:size]) == path
    lh = m.leaf_hash(LEAVES[index])
    assert m.verify_inclusion(lh, index, size, path, ROOTS[size])
    assert m.verify_leaf(LEAVES[index], index, size, path, ROOTS[size])
    assert m.root_from_inclusion_proof(lh, index, size, path) == ROOTS[size]


def _corrupt_inclusion(index: int, size: int, path: list[bytes], root: bytes, lh: bytes):
    """transparency-dev's corruptInclusionProof probes: each must be rejected."""
    probes = [
        (index - 1, size, root, lh, path),
        (index + 1, size, root, lh, path),
        (index ^ 2, size, root, lh, path),
        (index, size * 2, root, lh, path),
        (index, size // 2, root, lh, path),
        (index, size, root, b"WrongLeaf", path),
        (index, size, EMPTY, lh, path),
        (index, size, SOME_HASH, lh, path),
        (index, size, root, lh, [*path, b""]),
        (index, size, root, lh, [*path, root]),
        (index, size, root, lh, [b"", *path]),
        (index, size, root, lh, [root, *path]),
    ]
    for i in range(len(path)):
        wrong = list(path)
        wrong[i] = bytes([wrong[i][0] ^ 8]) + wrong[i][1:]
        probes.append((index, size, root, lh, wrong))
    if path:
        probes.append((index, size, root, lh, path[:-1]))
    if len(path) > 1:
        probes.append((index, size, root, lh, [path[0], SOME_HASH, *path[1:]]))
    return probes


@pytest.mark.parametrize(("index", "size", "path"), INCLUSION_VECTORS[1:])
def test_inclusion_vectors_reject_corruptions(index: int, size: int, path: list[bytes]) -> None:
    lh = m.leaf_hash(LEAVES[index])
    for i, s, root, leaf, proof in _corrupt_inclusion(index, size, path, ROOTS[size], lh):
        assert not m.verify_inclusion(leaf, i, s, proof, root), (i, s, proof)


def test_inclusion_single_entry() -> None:
    h = m.leaf_hash(b"data")
    assert m.verify_inclusion(h, 0, 1, [], h)
    assert not m.verify_inclusion(b"", 0, 1, [], h)
    assert not m.verify_inclusion(h, 0, 1, [], b"")
    assert not m.verify_inclusion(b"", 0, 1, [], b"")


@pytest.mark.parametrize(("index", "size"), [(0, 0), (0, 1), (1, 0), (2, 1)])
def test_inclusion_degenerate_sizes(index: int, size: int) -> None:
    assert not m.verify_inclusion(SOME_HASH, index, size, [], b"")
    assert not m.verify_inclusion(b"", index, size, [], EMPTY)
    assert not m.verify_inclusion(SOME_HASH, index, size, [], EMPTY)


@pytest.mark.parametrize(("old", "new", "proof"), CONSISTENCY_VECTORS)
def test_consistency_vectors(old: int, new: int, proof: list[bytes]) -> None:
    tree = m.MerkleTree.from_leaves(LEAVES)
    assert tree.consistency_proof(old, new) == proof
    assert ref_proof(old, LEAVES[:new]) == proof
    assert m.verify_consistency(old, new, ROOTS[old], ROOTS[new], proof)


def _corrupt_consistency(old: int, new: int, r1: bytes, r2: bytes, proof: list[bytes]):
    """transparency-dev's corruptConsistencyProof probes: each must be rejected."""
    probes = [
        (old - 1, new, r1, r2, proof),
        (old + 1, new, r1, r2, proof),
        (old ^ 2, new, r1, r2, proof),
        (old, new * 2, r1, r2, proof),
        (old, new // 2, r1, r2, proof),
        (old, new, b"WrongRoot", r2, proof),
        (old, new, r1, b"WrongRoot", proof),
        (old, new, r2, r1, proof),
        (old, new, r1, r2, []),
        (old, new, r1, r2, [*proof, b""]),
        (old, new, r1, r2, [*proof, r1]),
        (old, new, r1, r2, [*proof, r2]),
        (old, new, r1, r2, [b"", *proof]),
        (old, new, r1, r2, [r1, *proof]),
        (old, new, r1, r2, [r2, *proof]),
        (old, new, r1, r2, [proof[0], *proof]),
        (old, new, r1, r2, proof[:-1]),
    ]
    for i in range(len(proof)):
        wrong = list(proof)
        wrong[i] = bytes([wrong[i][0] ^ 16]) + wrong[i][1:]
        probes.append((old, new, r1, r2, wrong))
    return probes


@pytest.mark.parametrize(("old", "new", "proof"), CONSISTENCY_VECTORS[1:])
def test_consistency_vectors_reject_corruptions(old: int, new: int, proof: list[bytes]) -> None:
    for s1, s2, r1, r2, p in _corrupt_consistency(old, new, ROOTS[old], ROOTS[new], proof):
        assert not m.verify_consistency(s1, s2, r1, r2, p), (s1, s2, p)


@pytest.mark.parametrize(
    ("old", "new", "r1", "r2", "proof", "ok"),
    [
        (0, 0, b"don't care 1", b"don't care 2", [], False),
        (1, 1, b"don't care 1", b"don't care 2", [], False),
        # Our policy (and upstream's current testdata): a size-0 old tree proves nothing.
        (0, 0, EMPTY, EMPTY, [], False),
        (0, 1, EMPTY, ROOTS[1], [], False),
        (1, 1, ROOTS[1], ROOTS[1], [], True),
        (1, 0, ROOTS[1], EMPTY, [], False),
        (2, 1, ROOTS[2], ROOTS[1], [], False),
        (1, 2, ROOTS[1], ROOTS[2], [], False),
        (0, 0, EMPTY, SOME_HASH, [], False),
        (1, 1, EMPTY, SOME_HASH, [], False),
        (0, 0, EMPTY, EMPTY, [EMPTY], False),
        (0, 1, EMPTY, EMPTY, [EMPTY], False),
        (1, 1, EMPTY, EMPTY, [EMPTY], False),
    ],
)
def test_consistency_edges(old: int, new: int, r1: bytes, r2: bytes, proof: list[bytes], ok: bool) -> None:
    assert m.verify_consistency(old, new, r1, r2, proof) is ok


def test_structural_inclusion_vectors() -> None:
    leaves = [os.urandom(8) for _ in range(95)]
    tree = m.MerkleTree.from_leaves(leaves)
    for (index, size), ranges in INCLUSION_RANGES.items():
        want = [ref_mth(leaves[lo:hi]) for lo, hi in ranges]
        assert tree.inclusion_proof(index, size) == want, (index, size)


def test_structural_consistency_vectors() -> None:
    leaves = [os.urandom(8) for _ in range(95)]
    tree = m.MerkleTree.from_leaves(leaves)
    for (old, new), ranges in CONSISTENCY_RANGES.items():
        want = [ref_mth(leaves[lo:hi]) for lo, hi in ranges]
        assert tree.consistency_proof(old, new) == want, (old, new)


def test_all_pairs_sizes_1_to_8_match_reference() -> None:
    tree = m.MerkleTree.from_leaves(LEAVES)
    for n in range(1, 9):
        for i in range(n):
            path = tree.inclusion_proof(i, n)
            assert path == ref_path(i, LEAVES[:n])
            assert len(path) == m.inclusion_proof_length(i, n)
            assert m.verify_leaf(LEAVES[i], i, n, path, ROOTS[n])
        for old in range(1, n + 1):
            proof = tree.consistency_proof(old, n)
            assert proof == ref_proof(old, LEAVES[:n])
            assert len(proof) == m.consistency_proof_length(old, n)
            assert m.verify_consistency(old, n, ROOTS[old], ROOTS[n], proof)


# -- pitfalls ------------------------------------------------------------------------------


def test_odd_leaf_is_not_duplicated_cve_2012_2459() -> None:
    a, b, c, d, e, f = (bytes([x]) * 4 for x in range(6))
    assert m.root([a, b, c]) != m.root([a, b, c, c])
    assert m.root([a, b, c, d, e, f]) != m.root([a, b, c, d, e, f, e, f])
    # Bitcoin's duplicating rule would give these equal; RFC 6962 carries c up unchanged.
    assert m.root([a, b, c]) == m.node_hash(m.node_hash(m.leaf_hash(a), m.leaf_hash(b)), m.leaf_hash(c))


def test_second_preimage_inner_node_as_leaf_is_rejected() -> None:
    leaves = [b"a", b"b", b"c", b"d"]
    tree = m.MerkleTree.from_leaves(leaves)
    ha, hb = tree.leaf_hash(0), tree.leaf_hash(1)
    forged_leaf = ha + hb  # the preimage of node(ha, hb) without its 0x01 prefix
    shortened = tree.inclusion_proof(0)[1:]
    assert not m.verify_leaf(forged_leaf, 0, 2, shortened, tree.root)
    assert not m.verify_leaf(forged_leaf, 0, 4, shortened, tree.root)
    assert m.leaf_hash(forged_leaf) != m.node_hash(ha, hb)
    # Nor is the root itself a leaf with an empty proof when n > 1.
    for n in (2, 3, 4):
        assert not m.verify_inclusion(tree.root, 0, n, [], tree.root)


def test_verification_never_raises_on_garbage() -> None:
    lh, root = m.leaf_hash(b"x"), m.leaf_hash(b"x")
    garbage = [None, "00" * 32, 1.5, -1, True, 2**200, [], [b"x"], [None], object(), b"\x00" * 33]
    for g in garbage:
        assert not m.verify_inclusion(g, 0, 1, [], root)  # type: ignore[arg-type]
        assert not m.verify_inclusion(lh, g, 1, [], root)  # type: ignore[arg-type]
        assert not m.verify_inclusion(lh, 0, g, [], root)  # type: ignore[arg-type]
        assert not m.verify_inclusion(lh, 0, 2, g, root)  # type: ignore[arg-type]
        assert not m.verify_inclusion(lh, 0, 1, [], g)  # type: ignore[arg-type]
        assert not m.verify_leaf(g, 0, 1, [], root)  # type: ignore[arg-type]
        assert not m.verify_consistency(g, 2, root, root, [root])  # type: ignore[arg-type]
        assert not m.verify_consistency(1, g, root, root, [root])  # type: ignore[arg-type]
        assert not m.verify_consistency(1, 2, g, root, [root])  # type: ignore[arg-type]
        assert not m.verify_consistency(1, 2, root, g, [root])  # type: ignore[arg-type]
        assert not m.verify_consistency(1, 2, root, root, g)  # type: ignore[arg-type]
    assert m.root_from_inclusion_proof(lh, 0, 2, [b"\x00" * 31]) is None


def test_bad_arguments_to_generators_raise_value_error() -> None:
    tree = m.MerkleTree.from_leaves(LEAVES[:5])
    for call in (
        lambda: tree.inclusion_proof(5),
        lambda: tree.inclusion_proof(-1),
        lambda: tree.inclusion_proof(0, 6),
        lambda: tree.inclusion_proof(3, 3),
        lambda: tree.consistency_proof(0),
        lambda: tree.consistency_proof(4, 3),
        lambda: tree.consistency_proof(1, 6),
        lambda: tree.root_at(6),
        lambda: tree.leaf_hash(5),
        lambda: m.MerkleTree.from_leaf_hashes([b"short"]),
        lambda: m.MerkleBuilder().append_leaf_hash(b"\x00" * 31),
        lambda: m.MerkleBuilder.from_state(3, [EMPTY]),
        lambda: m.inclusion_proof_length(3, 3),
        lambda: m.consistency_proof_length(0, 3),
    ):
        with pytest.raises(ValueError):
            call()
    assert m.MerkleTree.from_leaves([]).root == EMPTY
    assert m.MerkleTree.from_leaves([]).size == 0


def test_builder_state_round_trip() -> None:
    leaves = [os.urandom(4) for _ in range(37)]
    builder = m.MerkleBuilder().extend(leaves[:20])
    resumed = m.MerkleBuilder.from_state(*builder.state)
    resumed.extend(leaves[20:])
    assert resumed.root() == ref_mth(leaves)


@pytest.mark.parametrize("n", [m.CHUNK - 1, m.CHUNK, m.CHUNK + 1, 2 * m.CHUNK + 3, 5000])
def test_real_chunk_boundaries(n: int) -> None:
    leaves = [i.to_bytes(4, "big") for i in range(n)]
    want = ref_mth(leaves)
    assert m.root(leaves) == want
    assert m.root(iter(leaves)) == want
    assert m.root_of_leaf_hashes(m.leaf_hash(x) for x in leaves) == want
    tree = m.MerkleTree.from_leaves(leaves)
    assert tree.root == want
    assert m.MerkleTree.from_leaf_hashes([m.leaf_hash(x) for x in leaves]).root == want
    # A builder that starts misaligned must agree as well.
    builder = m.MerkleBuilder()
    builder.append(leaves[0])
    assert builder.extend(leaves[1:]).root() == want
    for i in (0, n // 3, n - 1):
        assert m.verify_leaf(leaves[i], i, n, tree.inclusion_proof(i), want)
    for old in (1, n // 2, n - 1):
        assert tree.consistency_proof(old) == ref_proof(old, leaves)


def test_core_imports_stdlib_only() -> None:
    assert loaded_of("import voketag_ops.core.merkle", "typer", "rich", "psycopg", "google", "pydantic") == []


# -- properties ------------------------------------------------------------------------

PROPS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
leaf_lists = st.lists(st.binary(max_size=12), min_size=1, max_size=300)


@PROPS
@given(leaves=leaf_lists, chunk_bits=st.sampled_from([1, 2, 3, 10]))
def test_every_inclusion_proof_verifies(leaves: list[bytes], chunk_bits: int) -> None:
    n = len(leaves)
    with small_chunks(chunk_bits):
        tree = m.MerkleTree.from_leaves(leaves)
        root = m.root(leaves)
    assert root == tree.root == ref_mth(leaves)
    bound = (n - 1).bit_length()
    for i in range(n):
        path = tree.inclusion_proof(i)
        assert len(path) <= bound
        assert len(path) == m.inclusion_proof_length(i, n)
        assert m.verify_leaf(leaves[i], i, n, path, root)


@PROPS
@given(leaves=st.lists(st.binary(max_size=4), min_size=1, max_size=64))
def test_every_consistency_proof_verifies(leaves: list[bytes]) -> None:
    n = len(leaves)
    tree = m.MerkleTree.from_leaves(leaves)
    roots = [ref_mth(leaves[:k]) for k in range(n + 1)]
    for new in range(1, n + 1):
        assert tree.root_at(new) == roots[new]
        for old in range(1, new + 1):
            proof = tree.consistency_proof(old, new)
            assert m.verify_consistency(old, new, roots[old], roots[new], proof), (old, new)


@settings(max_examples=40, deadline=None)
@given(leaves=st.lists(st.binary(max_size=6), min_size=1, max_size=200), data=st.data())
def test_inclusion_proofs_at_older_sizes(leaves: list[bytes], data: st.DataObject) -> None:
    tree = m.MerkleTree.from_leaves(leaves)
    size = data.draw(st.integers(1, len(leaves)))
    index = data.draw(st.integers(0, size - 1))
    path = tree.inclusion_proof(index, size)
    assert path == ref_path(index, leaves[:size])
    assert m.verify_leaf(leaves[index], index, size, path, ref_mth(leaves[:size]))


def _flip(value: bytes, pos: int, mask: int) -> bytes:
    pos %= len(value)
    return value[:pos] + bytes([value[pos] ^ mask]) + value[pos + 1 :]


def _flip_int(value: int, pos: int, mask: int) -> int:
    raw = value.to_bytes(8, "big")
    return int.from_bytes(_flip(raw, pos, mask), "big")


@settings(max_examples=200, deadline=None)
@given(
    # Distinct leaves: with equal leaves, equal subtrees make a proof for leaf i a valid proof
    # for the same bytes at a mirrored index too (the proof is right; the test would not be).
    leaves=st.lists(st.binary(min_size=1, max_size=8), min_size=1, max_size=300, unique=True),
    data=st.data(),
    what=st.sampled_from(["leaf", "proof", "index", "size", "root"]),
    pos=st.integers(0, 63),
    mask=st.integers(1, 255),
)
def test_any_single_byte_change_breaks_an_inclusion_proof(
    leaves: list[bytes], data: st.DataObject, what: str, pos: int, mask: int
) -> None:
    n = len(leaves)
    tree = m.MerkleTree.from_leaves(leaves)
    index = data.draw(st.integers(0, n - 1))
    leaf, path, size, root = leaves[index], tree.inclusion_proof(index), n, tree.root
    assert m.verify_leaf(leaf, index, size, path, root)
    if what == "leaf":
        leaf = _flip(leaf, pos, mask)
    elif what == "proof":
        assume(path)
        j = data.draw(st.integers(0, len(path) - 1))
        path = [*path[:j], _flip(path[j], pos, mask), *path[j + 1 :]]
    elif what == "root":
        root = _flip(root, pos, mask)
    elif what == "index":
        new_index = _flip_int(index, pos, mask)
        # Same size, another index: never the same path shape.
        assert new_index >= size or inclusion_shape(new_index, size) != inclusion_shape(index, size)
        index = new_index
    else:
        new_size = _flip_int(size, pos, mask)
        # A size is bound exactly as far as it changes the path's shape: leaf 0 of 3 and
        # leaf 0 of 4 have the same shape, so no RFC 9162 verifier can tell them apart
        # (which is why root and size are always published together).
        same = index < new_size and inclusion_shape(index, new_size) == inclusion_shape(index, size)
        assert m.verify_leaf(leaf, index, new_size, path, root) is same
        return
    assert not m.verify_leaf(leaf, index, size, path, root)


@settings(max_examples=200, deadline=None)
@given(
    leaves=st.lists(st.binary(max_size=4), min_size=2, max_size=200),
    data=st.data(),
    what=st.sampled_from(["proof", "old_size", "new_size", "old_root", "new_root"]),
    pos=st.integers(0, 63),
    mask=st.integers(1, 255),
)
def test_any_single_byte_change_breaks_a_consistency_proof(
    leaves: list[bytes], data: st.DataObject, what: str, pos: int, mask: int
) -> None:
    n = len(leaves)
    tree = m.MerkleTree.from_leaves(leaves)
    old = data.draw(st.integers(1, n - 1))
    proof, r1, r2 = tree.consistency_proof(old), tree.root_at(old), tree.root
    assert m.verify_consistency(old, n, r1, r2, proof)
    new = n
    if what == "proof":
        j = data.draw(st.integers(0, len(proof) - 1))
        proof = [*proof[:j], _flip(proof[j], pos, mask), *proof[j + 1 :]]
    elif what == "old_root":
        r1 = _flip(r1, pos, mask)
    elif what == "new_root":
        r2 = _flip(r2, pos, mask)
    else:
        s1 = _flip_int(old, pos, mask) if what == "old_size" else old
        s2 = _flip_int(n, pos, mask) if what == "new_size" else n
        # Accepted only when the symbolic shape of both roots is unchanged.
        same = 0 < s1 < s2 and consistency_shape(s1, s2) == consistency_shape(old, n)
        assert m.verify_consistency(s1, s2, r1, r2, proof) is same
        return
    assert not m.verify_consistency(old, new, r1, r2, proof)


@PROPS
@given(leaves=st.lists(st.binary(max_size=8), min_size=1, max_size=100), data=st.data())
def test_tampering_changes_the_root_and_breaks_old_proofs(leaves: list[bytes], data: st.DataObject) -> None:
    n = len(leaves)
    tree = m.MerkleTree.from_leaves(leaves)
    i = data.draw(st.integers(0, n - 1))
    tampered = list(leaves)
    tampered[i] = tampered[i] + b"!"
    assert m.root(tampered) != tree.root
    if n > 1:
        j = data.draw(st.integers(0, n - 1))
        swapped = list(leaves)
        swapped[i], swapped[j] = swapped[j], swapped[i]
        assume(swapped != leaves)
        new_root = m.root(swapped)
        assert new_root != tree.root
        assert not m.verify_leaf(leaves[i], i, n, tree.inclusion_proof(i), new_root)
