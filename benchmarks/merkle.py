"""Merkle engine speed and memory, as ratios against baselines measured in the same run.

- Root over N leaves (default 1,000,000 random 32-byte leaves) with the streaming builder
  (`merkle.root`) and with the full tree kept for proofs (`MerkleTree.from_leaves`),
  against (a) a bare `hashlib.sha256` loop computing the same 2N-1 hashes over inputs of
  the same sizes (N x 33 bytes, N-1 x 65 bytes, built beforehand and not timed) -- the
  limit in CPython -- and (b) pymerkle, if installed (the nox `bench` session installs it).
- Inclusion and consistency proofs on the built tree: time per proof, and per verification.
- Peak memory (tracemalloc) of the incremental builder at growing N: it should stay flat.

Goals (issue 3): root within 1.3x of the bare loop; at least 10x faster than pymerkle;
proofs under 1 ms each on a 1M-leaf tree; flat builder memory. Prints figures; asserts
nothing. BENCH_N and BENCH_RUNS override the size and the repetitions.
"""

from __future__ import annotations

import gc
import hashlib
import os
import random
import statistics
import time
import tracemalloc
from collections.abc import Callable, Iterator
from functools import partial
from typing import Any

from voketag_ops.core import merkle

N = int(os.environ.get("BENCH_N", "1000000"))
RUNS = int(os.environ.get("BENCH_RUNS", "5"))
PROOFS = 10_000


def timed(fn: Callable[[], Any], runs: int = RUNS) -> tuple[float, float, Any]:
    """(best, median) seconds over RUNS calls, and the last result."""
    times = []
    result = None
    for _ in range(runs):
        gc.collect()
        t0 = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - t0)
    return min(times), statistics.median(times), result


def interleaved(fns: dict[str, Callable[[], Any]], runs: int = RUNS) -> dict[str, list[float]]:
    """Seconds per call of each function, the functions taking turns in every round, so a
    noisy neighbour slows the baseline and the contender alike."""
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(runs):
        for name, fn in fns.items():
            gc.collect()
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    return times


def bare_loop(leaf_inputs: list[bytes], node_inputs: list[bytes]) -> None:
    sha = hashlib.sha256
    for b in leaf_inputs:
        sha(b).digest()
    for b in node_inputs:
        sha(b).digest()


def inputs_for_baseline(leaves: list[bytes]) -> tuple[list[bytes], list[bytes]]:
    """The 33-byte leaf inputs and 65-byte node inputs a tree over LEAVES hashes (built untimed)."""
    return [b"\x00" + d for d in leaves], [
        b"\x01" + leaves[i] + leaves[i ^ 1] for i in range(len(leaves) - 1)
    ]


def row(
    label: str, best: float, median: float, base: tuple[float, float] | None = None, note: str = ""
) -> None:
    ratio = f"  ratio {best / base[0]:5.2f}x best, {median / base[1]:5.2f}x median" if base else ""
    print(f"merkle: {label:44} best {best:8.3f} s  median {median:8.3f} s{ratio}{note}")


def main() -> None:
    rng = random.Random(6962)
    leaves = [rng.randbytes(32) for _ in range(N)]
    print(f"merkle: {N:,} leaves of 32 bytes, {2 * N - 1:,} SHA-256 calls per root, best/median of {RUNS}")

    leaf_inputs, node_inputs = inputs_for_baseline(leaves)
    times = interleaved(
        {
            "base": partial(bare_loop, leaf_inputs, node_inputs),
            "root": lambda: merkle.root(leaves),
            "tree": lambda: merkle.MerkleTree.from_leaves(leaves),
        }
    )
    del leaf_inputs, node_inputs
    base = (min(times["base"]), statistics.median(times["base"]))
    per_call = base[0] / (2 * N - 1) * 1e9
    row("(a) bare hashlib.sha256 loop, 2N-1 hashes", *base, note=f"  ({per_call:.0f} ns/hash)")
    for key, label in (
        ("root", "merkle.root (streaming builder)"),
        ("tree", "MerkleTree.from_leaves (levels kept)"),
    ):
        ratios = [t / b for t, b in zip(times[key], times["base"], strict=True)]
        row(
            label,
            min(times[key]),
            statistics.median(times[key]),
            base,
            note=f"; per-round ratio median {statistics.median(ratios):.2f}x",
        )
    ours_root = min(times["root"])
    root = merkle.root(leaves)
    tree = merkle.MerkleTree.from_leaves(leaves)

    try:
        import pymerkle
    except ImportError:
        pymerkle = None
        print("merkle: (b) pymerkle not installed; `nox -s bench` installs it")
    if pymerkle is not None:

        def build_pymerkle() -> Any:
            t = pymerkle.InmemoryTree(algorithm="sha256")
            for d in leaves:
                t.append_entry(d)
            t.get_root()
            return t

        p_best, p_median, ptree = timed(build_pymerkle, runs=1)
        same = ptree.get_root() == root
        row("(b) pymerkle 7 InmemoryTree append + root", p_best, p_median, base)
        print(f"merkle: merkle.root is {p_best / ours_root:5.1f}x faster than pymerkle (same root: {same})")

    # -- proofs on the built tree ------------------------------------------------------------
    indices = [rng.randrange(N) for _ in range(PROOFS)]
    t0 = time.perf_counter()
    paths = [tree.inclusion_proof(i) for i in indices]
    inclusion = (time.perf_counter() - t0) / PROOFS
    old_sizes = [rng.randrange(1, N) for _ in range(PROOFS)]
    t0 = time.perf_counter()
    for m in old_sizes:
        tree.consistency_proof(m)
    consistency = (time.perf_counter() - t0) / PROOFS
    hashes = [tree.leaf_hash(i) for i in indices]
    t0 = time.perf_counter()
    ok = all(
        merkle.verify_inclusion(h, i, N, p, root) for h, i, p in zip(hashes, indices, paths, strict=True)
    )
    verify = (time.perf_counter() - t0) / PROOFS
    t0 = time.perf_counter()
    for i in indices[:1000]:
        tree.inclusion_proof(i % (N - 7), N - 7)
    at_older_size = (time.perf_counter() - t0) / 1000
    print(
        f"merkle: inclusion proof {inclusion * 1e6:7.1f} us, at an older size {at_older_size * 1e6:7.1f} us, "
        f"consistency proof {consistency * 1e6:7.1f} us, verify {verify * 1e6:6.1f} us "
        f"(all valid: {ok}; {len(paths[0])} hashes per path; goal < 1000 us)"
    )
    if pymerkle is not None:
        sample = indices[:1000]
        t0 = time.perf_counter()
        for i in sample:
            ptree.prove_inclusion(i + 1)
        p_incl = (time.perf_counter() - t0) / len(sample)
        print(f"merkle: pymerkle prove_inclusion {p_incl * 1e6:7.1f} us ({p_incl / inclusion:4.1f}x ours)")
        del ptree
    del tree, paths

    # -- memory of the incremental builder -----------------------------------------------------
    def generated(n: int) -> Iterator[bytes]:
        for i in range(n):
            yield i.to_bytes(32, "big")

    sizes = [10**3, 10**4, 10**5, 10**6] if N >= 10**6 else [10**3, 10**4, N]
    peaks = []
    for n in sizes:
        gc.collect()
        tracemalloc.start()
        merkle.MerkleBuilder().extend(generated(n)).root()
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        peaks.append(peak)
        print(f"merkle: builder peak memory at n = {n:>9,}: {peak / 1024:8.1f} KiB")
    print(
        f"merkle: builder peak grows {peaks[-1] / peaks[1]:.2f}x from n = {sizes[1]:,} to {sizes[-1]:,} "
        f"(below {merkle.CHUNK:,} leaves no chunk buffer is filled yet)"
    )
    gc.collect()
    tracemalloc.start()
    merkle.MerkleTree.from_leaves(generated(sizes[-1]))
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    print(f"merkle: (for contrast) full tree at n = {sizes[-1]:,}: peak {peak / 2**20:.1f} MiB")


if __name__ == "__main__":
    main()
