"""Compare a table on two instances by hierarchical checksums over primary-key ranges
(the pg_comparator / data-diff method), descending only into ranges that differ.

Each side answers four questions about a key range [lo, hi) (None = unbounded), all
computed where the data lives: a (row count, 64-bit hash) summary; keys splitting the
range into about N parts; summaries of the parts between given keys; and, for a small
range, every key with its row hash. Row hashes are combined with XOR, so a summary is
independent of row order, and a primary key makes every row hash distinct.

Pure: sides are injected (a database adapter, or a dict in tests). The two sides are
asked concurrently, one thread each.
"""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

Key = tuple[Any, ...]
Summary = tuple[int, int]  # (rows, xor of row hashes)


@runtime_checkable
class Side(Protocol):
    """One instance's view of one table."""

    def count(self) -> int:
        """Rows in the table (cheap: no hashing)."""
        ...

    def split(self, lo: Key | None, hi: Key | None, rows: int, parts: int) -> list[Key]:
        """Keys strictly inside (lo, hi) cutting it (about ROWS rows) into about PARTS parts, ascending."""
        ...

    def sums(self, lo: Key | None, hi: Key | None, bounds: Sequence[Key]) -> list[Summary]:
        """Summaries of [lo, b1), [b1, b2), ..., [bk, hi): len(bounds) + 1 of them."""
        ...

    def rows(self, lo: Key | None, hi: Key | None) -> dict[Key, int]:
        """Every key in [lo, hi) with its row hash."""
        ...


@dataclass
class TableDiff:
    """What the comparison found for one table."""

    table: str
    source_rows: int = 0
    target_rows: int = 0
    equal: bool = True
    missing_in_target: list[Key] = field(default_factory=list)
    extra_in_target: list[Key] = field(default_factory=list)
    changed: list[Key] = field(default_factory=list)
    differences: int = 0  # all of them, even beyond the cap
    extra_ignored: int = 0  # keys on the target only, counted and not listed (source_keys_only)
    capped: bool = False
    ranges_compared: int = 0
    ranges_differing: int = 0
    rows_fetched: int = 0
    depth: int = 0


def diff_table(
    table: str,
    source: Side,
    target: Side,
    *,
    factor: int = 16,
    leaf_rows: int = 1000,
    cap: int = 100,
    source_keys_only: bool = False,
    pool: ThreadPoolExecutor | None = None,
) -> TableDiff:
    """Compare TABLE on SOURCE and TARGET; list up to CAP differing keys of each kind. With
    SOURCE_KEYS_ONLY, keys the target has beyond the source are counted, not differences."""
    own = pool is None
    pool = pool or ThreadPoolExecutor(max_workers=2, thread_name_prefix="voke-diff")
    try:
        return _diff(
            table,
            source,
            target,
            factor=factor,
            leaf_rows=leaf_rows,
            cap=cap,
            source_keys_only=source_keys_only,
            pool=pool,
        )
    finally:
        if own:
            pool.shutdown(wait=True)


def _both(pool: ThreadPoolExecutor, fn_a: Any, fn_b: Any, *args: Any) -> tuple[Any, Any]:
    """FN_A(*ARGS) and FN_B(*ARGS) at the same time (one per side). Both are waited for before
    either's error is raised (the source's first): the caller may use both sides again then."""
    fa, fb = pool.submit(fn_a, *args), pool.submit(fn_b, *args)
    wait((fa, fb))
    return fa.result(), fb.result()


def _diff(
    table: str,
    source: Side,
    target: Side,
    *,
    factor: int,
    leaf_rows: int,
    cap: int,
    source_keys_only: bool,
    pool: ThreadPoolExecutor,
) -> TableDiff:
    result = TableDiff(table)
    # No whole-table summary first: splitting at once costs one key scan more when the
    # tables are equal and saves a full hashing scan when they differ.
    s_rows, t_rows = _both(pool, source.count, target.count)
    result.source_rows, result.target_rows = s_rows, t_rows
    # (lo, hi, rows on the source, rows on the target, depth)
    work: list[tuple[Key | None, Key | None, int, int, int]] = [(None, None, s_rows, t_rows, 0)]
    while work:
        lo, hi, s_rows, t_rows, depth = work.pop()
        result.depth = max(result.depth, depth)
        if max(s_rows, t_rows) <= leaf_rows:
            _compare_rows(result, source, target, lo, hi, cap, source_keys_only, pool)
            result.ranges_compared += 1
            continue
        splitter, rows = (source, s_rows) if s_rows >= t_rows else (target, t_rows)
        # keys come back in the database's order (its collation), strictly inside the range
        bounds = list(dict.fromkeys(splitter.split(lo, hi, rows, factor)))
        if not bounds:
            _compare_rows(result, source, target, lo, hi, cap, source_keys_only, pool)
            result.ranges_compared += 1
            continue
        s_sums, t_sums = _both(pool, source.sums, target.sums, lo, hi, bounds)
        edges: list[Key | None] = [lo, *bounds, hi]
        result.ranges_compared += len(s_sums)
        for i in reversed(range(len(s_sums))):
            if s_sums[i] != t_sums[i]:
                result.ranges_differing += 1
                work.append((edges[i], edges[i + 1], s_sums[i][0], t_sums[i][0], depth + 1))
    result.equal = result.differences == 0
    for keys in (result.missing_in_target, result.extra_in_target, result.changed):
        try:
            keys.sort()
        except TypeError:  # keys of types Python cannot order; keep discovery order
            pass
    return result


def _compare_rows(
    result: TableDiff,
    source: Side,
    target: Side,
    lo: Key | None,
    hi: Key | None,
    cap: int,
    source_keys_only: bool,
    pool: ThreadPoolExecutor,
) -> None:
    a, b = _both(pool, source.rows, target.rows, lo, hi)
    result.rows_fetched += len(a) + len(b)
    for key in a.keys() - b.keys():
        _add(result, result.missing_in_target, key, cap)
    extra = b.keys() - a.keys()
    if source_keys_only:  # rows written to the target since (a live leader after a restore's point)
        result.extra_ignored += len(extra)
        extra = set()
    for key in extra:
        _add(result, result.extra_in_target, key, cap)
    for key in a.keys() & b.keys():
        if a[key] != b[key]:
            _add(result, result.changed, key, cap)


def _add(result: TableDiff, bucket: list[Key], key: Key, cap: int) -> None:
    result.differences += 1
    if len(bucket) < cap:
        bucket.append(key)
    else:
        result.capped = True
