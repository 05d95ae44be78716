"""Ports: the Protocols workflows depend on, and the frozen value types they exchange.

Adapters implement them: `adapters/local` (the embedded environment) and
`adapters/gcp` (Google Cloud). Value types are ours, never SDK types.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol, runtime_checkable

# -- the hash chain (issue 3) -------------------------------------------------------------

if TYPE_CHECKING:
    from collections.abc import Sequence

    from voketag_ops.core.chain import Anchor, Block, ChainState


@runtime_checkable
class ChainStore(Protocol):
    """Where the hash chain and its anchor requests live.

    Implementations: FileChainStore (one JSON document, also the export/import form);
    a PostgreSQL store on the local environment's database. Writers are optimistic:
    `commit` checks nothing changed underneath, so callers reload and retry.
    """

    def load(self) -> ChainState:
        """A consistent snapshot of every block and anchor. Raises ChainStoreError."""
        ...

    def commit(self, *, blocks: Sequence[Block] = (), anchors: Sequence[Anchor] = ()) -> None:
        """Atomically append BLOCKS (the first must link to the current head, at the next
        index) and upsert ANCHORS (each exactly one version ahead of the stored one, or
        version 1 and new). Raises StoreConflictError when another writer got there
        first and ChainStoreError when the store fails; either way nothing changed."""
        ...
