"""FileChainStore: the chain and its anchors as one JSON document: the export/import form,
and the store when ``chain.store = "file"`` (the default store is PostgreSQL).

``<VOKE_HOME>/chain/chain.json`` (directory 0700, file 0600)::

    {"format": "voke-chain", "version": 1, "blocks": [Block.to_json()...],
     "anchors": [Anchor.to_json()...]}

Readers take a shared ``flock`` on ``chain.json.lock``, writers an exclusive one; a
write goes to a temporary file that is fsynced and renamed over the old one
(``files.replace_whole``), so a crash leaves either the old or the new document, never half
of one, and a failure (a full disk) no temporary file. Only writers create the directory
and the lock file: reading a chain never written creates nothing.
"""

from __future__ import annotations

import fcntl
import json
import os
from collections.abc import Collection, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import replace
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from voketag_ops.core import chain as ch
from voketag_ops.errors import NeedsOperatorError

if TYPE_CHECKING:
    from voketag_ops.ports import ChainStore

FORMAT = "voke-chain"
FORMAT_VERSION = 1


def default_chain_path(home: Path) -> Path:
    """Where the local chain lives under VOKE_HOME."""
    return home / "chain" / "chain.json"


def parse_document(text: str, source: str) -> ch.ChainState:
    """Parse a chain document; raises ChainFormatError naming line/column or field."""
    doc = ch.read_json(text, source, ch.ChainFormatError)
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise ch.ChainFormatError(f"{source}: not a voke chain document (format must be {FORMAT!r})")
    if doc.get("version") != FORMAT_VERSION:
        raise ch.ChainFormatError(f"{source}: unsupported chain document version {doc.get('version')!r}")
    blocks_raw, anchors_raw = doc.get("blocks"), doc.get("anchors")
    if not isinstance(blocks_raw, list) or not isinstance(anchors_raw, list):
        raise ch.ChainFormatError(f"{source}: blocks and anchors must be lists")
    blocks = tuple(ch.Block.from_json(b, f"{source}: blocks[{i}]") for i, b in enumerate(blocks_raw))
    anchors: dict[str, ch.Anchor] = {}
    for i, raw in enumerate(anchors_raw):
        anchor = ch.Anchor.from_json(raw, f"{source}: anchors[{i}]")
        if anchor.id in anchors:
            raise ch.ChainFormatError(f"{source}: anchors[{i}]: duplicate root {anchor.id}")
        anchors[anchor.id] = anchor
    return ch.ChainState(blocks=blocks, anchors=anchors)


def render_document(state: ch.ChainState) -> str:
    """The JSON document for STATE (stable key order, one block per line block)."""
    doc: dict[str, Any] = {
        "format": FORMAT,
        "version": FORMAT_VERSION,
        "blocks": [b.to_json() for b in state.blocks],
        "anchors": [
            a.to_json() for a in sorted(state.anchors.values(), key=lambda a: (a.requested_at, a.root))
        ],
    }
    return json.dumps(doc, indent=1, ensure_ascii=False) + "\n"


class FileChainStore:
    """A ChainStore in one JSON file, safe for concurrent voke processes."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.lock_path = path.with_name(path.name + ".lock")

    @property
    def location(self) -> str:
        return str(self.path)

    @contextmanager
    def _locked(self, *, exclusive: bool) -> Iterator[None]:
        fd = self._open_lock(exclusive=exclusive)
        if fd is None:  # no writer ever locked here, so there is none to wait for
            yield
            return
        try:
            fcntl.flock(fd, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
            yield
        finally:
            os.close(fd)  # closing releases the lock

    def _open_lock(self, *, exclusive: bool) -> int | None:
        """The lock file, opened. A writer creates it and the directory; a reader creates
        nothing (reading must change nothing) and gets None when there is none: a chain.json
        without it was put there whole, as every write is a rename."""
        try:
            if not exclusive:
                return os.open(self.lock_path, os.O_RDONLY)
            self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            return os.open(self.lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as exc:
            if not exclusive and isinstance(exc, FileNotFoundError):
                return None
            raise ch.ChainStoreError(
                f"{self.path.parent}: cannot open the chain store: {exc.strerror}"
            ) from None

    def _read(self) -> ch.ChainState:
        try:
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return ch.ChainState()
        except (OSError, UnicodeDecodeError) as exc:
            raise ch.ChainStoreError(f"{self.path}: cannot read the chain store: {exc}") from None
        return parse_document(text, str(self.path))

    def _write(self, state: ch.ChainState) -> None:
        from voketag_ops.files import replace_whole

        try:
            replace_whole(self.path, render_document(state).encode())
        except OSError as exc:
            raise ch.ChainStoreError(f"{self.path}: cannot write the chain store: {exc.strerror}") from None

    def load(self, *, kind: str | None = None, ids: Collection[str] | None = None) -> ch.ChainState:
        with self._locked(exclusive=False):
            state = self._read()
        if kind is None and ids is None:
            return state
        wanted = None if ids is None else set(ids)
        return replace(
            state,
            anchors={
                key: a
                for key, a in state.anchors.items()
                if (kind is None or a.kind == kind) and (wanted is None or key in wanted)
            },
        )

    @contextmanager
    def stream(
        self, *, kind: str | None = None, ids: Collection[str] | None = None
    ) -> Iterator[tuple[dict[str, ch.Anchor], Iterator[ch.Block]]]:
        """As the port says; one document, so it is read whole first."""
        state = self.load(kind=kind, ids=ids)
        yield state.anchors, iter(state.blocks)

    def head(self) -> ch.Block | None:
        return self.load().head

    def anchors(
        self,
        ids: Collection[str] | None = None,
        *,
        kind: str | None = None,
        state: ch.AnchorState | None = None,
        prefix: str | None = None,
    ) -> dict[str, ch.Anchor]:
        """As the port says; one document, so it is read whole and filtered here."""
        return {
            key: a
            for key, a in self.load(kind=kind, ids=ids).anchors.items()
            if (state is None or a.state is state) and (prefix is None or key.startswith(prefix))
        }

    def anchor_page(self, *, state: ch.AnchorState | None = None, limit: int) -> ch.AnchorPage:
        """As the port says; one document, so it is read whole and picked from here."""
        anchors = self.load().anchors.values()
        return ch.AnchorPage(
            anchors=ch.newest_anchors((a for a in anchors if state is None or a.state is state), limit),
            counts=ch.state_counts(anchors),
        )

    def commit(self, *, blocks: Sequence[ch.Block] = (), anchors: Sequence[ch.Anchor] = ()) -> None:
        with self._locked(exclusive=True):
            current = self._read()
            check_commit(current, blocks, anchors)
            merged = dict(current.anchors)
            merged.update({a.id: a for a in anchors})
            self._write(ch.ChainState(blocks=(*current.blocks, *blocks), anchors=merged))

    def import_state(self, incoming: ch.ChainState) -> dict[str, int]:
        """Merge INCOMING (an exported document, already validated) into the store, as
        `core.chain.merge_import` says; StoreConflictError, nothing changed, when it refuses."""
        with self._locked(exclusive=True):
            merged, added, changed = ch.merge_import(self._read(), incoming)
            self._write(merged)
            return {"blocks_added": len(added), "anchors_updated": len(changed)}

    def move_into(self, target: ChainStore, *, now: datetime) -> dict[str, Any] | None:
        """Migrate this file's chain into TARGET once: import it (TARGET's chain must be a
        prefix of it), then rename the file to ``chain.json.migrated-<UTC time>`` (kept as a
        backup). None when there is no file. Concurrent callers migrate once (the file lock).

        Raises NeedsOperatorError, changing nothing, when the file does not validate or
        the two chains diverge; ChainStoreError when TARGET fails.
        """
        if not self.path.exists():
            return None
        with self._locked(exclusive=True):
            if not self.path.exists():
                return None  # another process migrated it while we waited
            state = self._read()
            report = ch.validate_chain(state.blocks)
            if not report.ok:
                raise NeedsOperatorError(
                    f"{self.path}: the chain file does not validate ({report.message}); nothing was "
                    'migrated. Move it aside to use the PostgreSQL store, or set chain.store = "file"'
                )
            try:
                counts = target.import_state(state)
            except ch.StoreConflictError as exc:
                raise NeedsOperatorError(
                    f"{self.path}: the chain file does not merge into the chain in {target.location} "
                    f"({exc.message}). Keep one: move the file aside (`voke chain export` shows the "
                    'other), or set chain.store = "file"'
                ) from None
            backup = self.path.with_name(f"{self.path.name}.migrated-{now.strftime('%Y%m%dT%H%M%SZ')}")
            try:
                os.replace(self.path, backup)
            except OSError as exc:
                raise ch.ChainStoreError(
                    f"{self.path}: migrated, but cannot rename it to {backup.name}: {exc.strerror}"
                ) from None
        return {
            "from": str(self.path),
            "to": target.location,
            "backup": str(backup),
            "blocks": len(state.blocks),
            "anchors": len(state.anchors),
            **counts,
        }


def check_commit(current: ch.ChainState, blocks: Sequence[ch.Block], anchors: Sequence[ch.Anchor]) -> None:
    """The optimistic-concurrency checks every ChainStore applies before a commit."""
    prev = current.head
    for block in blocks:
        expected_index = 0 if prev is None else prev.index + 1
        expected_prev = ch.ZERO_HASH if prev is None else prev.hash
        if block.index != expected_index or block.prev_hash != expected_prev:
            raise ch.StoreConflictError(
                f"block {block.index} no longer extends the chain head (another run appended first)"
            )
        prev = block
    for anchor in anchors:
        stored = current.anchors.get(anchor.id)
        stored_version = 0 if stored is None else stored.version
        if anchor.version != stored_version + 1:
            raise ch.StoreConflictError(f"anchor {anchor.id[:16]} was changed by another run")
