"""A chain store double that shows whether a reader holds the chain (`OneBlockAtATime`)."""

from __future__ import annotations

import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from voketag_ops.core import chain as ch
from voketag_ops.ports import ChainStore


@dataclass
class OneBlockAtATime:
    """Wraps a store; its blocks stream as fresh objects, and the most of them alive at once is
    counted (a reader that keeps them raises it); reading every block at once (`load`) fails.
    Any other call goes to the store."""

    inner: ChainStore
    most_alive: int = 0

    def load(self, **kw: Any) -> ch.ChainState:
        raise AssertionError("every block was held at once")

    @contextmanager
    def stream(self, **kw: Any) -> Iterator[tuple[dict[str, ch.Anchor], Iterator[ch.Block]]]:
        alive: weakref.WeakSet[ch.Block] = weakref.WeakSet()
        with self.inner.stream(**kw) as (anchors, stored):

            def blocks() -> Iterator[ch.Block]:
                for block in stored:
                    fresh = ch.Block.from_json(block.to_json())
                    alive.add(fresh)
                    self.most_alive = max(self.most_alive, len(alive))
                    yield fresh

            yield anchors, blocks()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)
