"""The audit log on disk, and the small API every state-changing command calls.

    from voketag_ops.audit import audited, record_event

    with audited(home, event_type="rotate.db-password", env="local", target="app_user",
                 details={"from_version": 3}) as event:
        ...                                   # the operation
        event.details["to_version"] = 4       # add details as you learn them
        # leaving the block records result "success" (or "failure" with the error
        # type, if it raised) and the duration

Files under ``<VOKE_HOME>/audit/`` (directory 0700, files 0600):

- ``audit.jsonl``: one canonical JSON entry per line (see ``core/audit.py``). Every
  append holds an exclusive ``flock`` on the file, reads the last entry to link to,
  writes the line whole (a write a full disk cuts short is cut back off) and fsyncs,
  so concurrent voke processes never interleave or lose entries.
- ``checkpoints.jsonl``: every ``CHECKPOINT_EVERY`` entries, ``(size, Merkle root)``;
  each checkpoint is also requested as an anchor on the chain (kind
  ``audit-checkpoint``), so a log cut short below it is detected even if this file
  is cut too. This file is also the queue of anchor requests: an append never starts
  the local environment and never fails because the chain is unreachable (during
  `env down`/`destroy`, a failover); every later anchoring attempt requests the
  checkpoints the chain has not seen (`anchor_checkpoints`). Derived data: an append whose
  checkpoint the disk refuses stands (a warning names the file); the next checkpoint covers it.
- ``torn/``: if a process died mid-write (kill -9), the next append (or checkpoint) moves the
  incomplete last line here and records an ``audit.torn_write`` entry before its own;
  until then `voke audit verify` reports the torn line. Nothing is glued onto it.
"""

from __future__ import annotations

import fcntl
import getpass
import hashlib
import itertools
import json
import logging
import os
import socket
import time
from collections.abc import Callable, Collection, Hashable, Iterable, Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from voketag_ops import files, interrupts
from voketag_ops.core import audit as core
from voketag_ops.core.chain import DEFAULT_DIFFICULTY, read_json
from voketag_ops.errors import DISK_REFUSED, BackendError, NeedsOperatorError, VokeError
from voketag_ops.redact import redact

if TYPE_CHECKING:
    from voketag_ops.core.chain import Anchor, ChainState, SealedRecord
    from voketag_ops.ports import ChainStore

log = logging.getLogger("voke.audit")

CHECKPOINT_EVERY = 100
CHECKPOINT_KIND = "audit-checkpoint"  # the kind of the chain anchors that checkpoints are
Key = TypeVar("Key", bound=Hashable)


class LogCutError(core.EntryFormatError):
    """The log no longer holds the entries its last checkpoint covers (cut below it): no
    checkpoint is written on it (`voke audit checkpoint` refuses, exit 5; an append skips its own)."""


class AuditWriteError(BackendError):
    """The audit log could not be written; `disk_refused` if its file system refused the write (full,
    over quota, read-only) rather than the log being at fault."""

    def __init__(self, message: str, *, disk_refused: bool = False) -> None:
        super().__init__(message)
        self.disk_refused = disk_refused


# What the hint of an event that could not be written asks first: the log is at fault, or its disk.
FIX_THE_LOG = "fix the audit log (see `voke audit verify`)"
FREE_SPACE = "free space on (or make writable) the file system of VOKE_HOME"


def audit_dir(home: Path) -> Path:
    return home / "audit"


def default_actor() -> str:
    """``user@host`` of this process (VOKE_ACTOR overrides, e.g. for CI job names)."""
    override = os.environ.get("VOKE_ACTOR")
    if override:
        return override
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = f"uid{os.getuid()}"
    return f"{user}@{socket.gethostname()}"


def _utcnow() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True)
class _Tail:
    last: bytes | None  # the last complete line, without its newline
    fragment: bytes  # bytes after the last newline (a torn write), usually empty
    fragment_offset: int  # where the fragment starts (= end of the last complete line)


def _read_tail(fd: int) -> _Tail:
    """The last complete line and any torn fragment after it, reading backwards."""
    lines = files.lines_backwards(fd)
    fragment_offset, fragment = next(lines)
    last = next(lines, None)
    return _Tail(None if last is None else last[1], fragment, fragment_offset)


@contextmanager
def _reading(path: Path, what: str) -> Iterator[None]:
    """Reading PATH, its errors as AuditWriteError `PATH: cannot read WHAT: why` (FileNotFoundError
    propagates: there is nothing to read)."""
    try:
        yield
    except FileNotFoundError:
        raise
    except (NotADirectoryError, files.DamagedRecord) as exc:
        raise AuditWriteError(f"{path}: cannot read{what}: {exc}") from None
    except OSError as exc:
        raise AuditWriteError(f"{path}: cannot read{what}: {exc.strerror}") from None


@dataclass(frozen=True)
class TornTail:
    """Bytes after the log's last newline, as the next write deals with them."""

    length: int
    whole: bool  # the next entry, only its newline lost: the newline is added (else moved to torn/)


@dataclass(frozen=True)
class AnchorOutcome:
    """What an attempt to anchor the log's checkpoints did."""

    requested: int = 0  # new anchor requests on the chain
    queued: bool = False  # the chain was not reachable; the checkpoints wait in checkpoints.jsonl
    reason: str | None = None


@dataclass
class _Found(Generic[Key]):
    """An entry `find_newest` found for KEY, at OFFSET, the line before it at BEFORE (None: none)."""

    key: Key
    entry: core.AuditEntry
    offset: int
    before: int | None = None


class AuditLog:
    """The append-only log of one VOKE_HOME."""

    def __init__(
        self,
        home: Path,
        *,
        checkpoint_every: int = CHECKPOINT_EVERY,
        chain: Callable[[], ChainStore] | None = None,
    ) -> None:
        self.home = home
        self.dir = audit_dir(home)
        self.path = self.dir / "audit.jsonl"
        self.checkpoints_path = self.dir / "checkpoints.jsonl"
        self.torn_dir = self.dir / "torn"
        self.checkpoint_every = checkpoint_every
        self._chain = chain

    def _chain_store(self, *, readonly: bool = False) -> ChainStore:
        """HOME's chain store, opened without starting the environment (ChainUnavailableError);
        READONLY (verify) also creates and migrates nothing."""
        if self._chain is not None:
            return self._chain()
        from voketag_ops.workflows.chain import open_chain_store

        return open_chain_store(self.home, readonly=readonly)

    # -- writing ------------------------------------------------------------------------
    def _ensure_dir(self) -> None:
        self.dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        if os.stat(self.dir).st_mode & 0o077:
            os.chmod(self.dir, 0o700)

    @contextmanager
    def _locked(self) -> Iterator[int]:
        try:
            self._ensure_dir()
            fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o600)
        except OSError as exc:
            raise AuditWriteError(
                f"{self.path}: cannot open the audit log: {exc.strerror}",
                disk_refused=exc.errno in DISK_REFUSED,
            ) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield fd
        finally:
            os.close(fd)

    def append(
        self,
        *,
        event_type: str,
        actor: str,
        env: str,
        target: str,
        result: str,
        duration_seconds: float | None,
        details: Mapping[str, Any] | None = None,
        now: datetime | None = None,
    ) -> core.AuditEntry:
        """Append one event; returns the stored entry."""
        now = now or _utcnow()
        with self._locked() as fd:
            try:
                prev = self._repair_tail(fd, now)
                entry = core.make_entry(
                    seq=0 if prev is None else prev.seq + 1,
                    prev_hash=core.ZERO if prev is None else prev.hash,
                    now=now,
                    event_type=event_type,
                    actor=actor,
                    env=env,
                    target=target,
                    result=result,
                    duration_seconds=duration_seconds,
                    details=details,
                )
                self._write(fd, entry.line())
            except OSError as exc:
                raise AuditWriteError(
                    f"{self.path}: cannot append to the audit log: {exc.strerror}",
                    disk_refused=exc.errno in DISK_REFUSED,
                ) from None
            # The entry is appended: its checkpoint, derived data, never fails it (an error then
            # had the command report an event it wrote as lost, and record it again). The next
            # one covers what this one would have: nothing goes uncovered, only later.
            checkpoint = None
            if (entry.seq + 1) % self.checkpoint_every == 0:
                try:
                    checkpoint = self._checkpoint(fd, now)
                except core.EntryFormatError as exc:
                    log.warning("audit checkpoint skipped: %s (run `voke audit verify`)", exc)
                except OSError as exc:
                    log.warning(
                        "audit checkpoint skipped: %s: %s (the next, or `voke audit checkpoint --yes`, writes it)",
                        exc.filename,
                        exc.strerror,
                    )
        # Also a log record (--log-level info): where VOKE_HOME does not outlive the run, the
        # scheduled Cloud Run job's, the platform's log keeps the event (as JSON off a terminal).
        if log.isEnabledFor(logging.INFO):
            log.info(
                "audit: %s %s %s",
                entry.event_type,
                entry.target,
                entry.result,
                extra={"audit": entry.to_json()},
            )
        if checkpoint is not None:
            self.anchor_checkpoints(now=now)
        return entry

    @staticmethod
    def _write(fd: int, data: bytes) -> None:
        # Whole or not at all (the lock is held): a full disk leaves no torn line, which
        # `verify` would report and the next append move aside as if a writer had been killed.
        files.append_whole(fd, data)

    def _judge_tail(self, tail: _Tail) -> tuple[core.AuditEntry | None, core.AuditEntry | None]:
        """(the last complete entry, TAIL's fragment if it is the next entry whole): what
        `_repair_tail` does, decided without changing anything."""
        prev = None
        if tail.last is not None:
            try:
                prev = core.parse_entry(tail.last)
            except core.EntryFormatError:
                raise NeedsOperatorError(
                    f"{self.path}: the last complete line is not a valid entry; "
                    "run `voke audit verify` and restore the log before writing to it"
                ) from None
        if not tail.fragment:
            return prev, None
        # A write was interrupted. A fragment that is the next entry whole, as voke writes it,
        # only lost its newline; anything else is moved aside and the loss recorded.
        try:
            candidate = core.parse_entry(tail.fragment)
            stored, computed = candidate.line_and_hash()
        except core.EntryFormatError:
            return prev, None
        whole = (
            stored == tail.fragment
            and computed == candidate.hash
            and candidate.seq == (0 if prev is None else prev.seq + 1)
            and candidate.prev_hash == (core.ZERO if prev is None else prev.hash)
        )
        return prev, candidate if whole else None

    def _repair_tail(self, fd: int, now: datetime) -> core.AuditEntry | None:
        """The last entry to link to, after dealing with a torn last line (lock held)."""
        tail = _read_tail(fd)
        prev, whole = self._judge_tail(tail)
        if not tail.fragment:
            return prev
        if whole is not None:
            self._write(fd, b"\n")
            return whole
        self.torn_dir.mkdir(mode=0o700, exist_ok=True)
        digest = hashlib.sha256(tail.fragment).hexdigest()
        aside = self.torn_dir / f"{now.strftime('%Y%m%dT%H%M%S%fZ')}-offset{tail.fragment_offset}.partial"
        side_fd = os.open(aside, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            self._write(side_fd, tail.fragment)
        finally:
            os.close(side_fd)
        os.ftruncate(fd, tail.fragment_offset)
        os.fsync(fd)
        log.warning("audit log: moved a torn last line (%d bytes) to %s", len(tail.fragment), aside)
        record = core.make_entry(
            seq=0 if prev is None else prev.seq + 1,
            prev_hash=core.ZERO if prev is None else prev.hash,
            now=now,
            event_type="audit.torn_write",
            actor=default_actor(),
            env="-",
            target=str(self.path),
            result="failure",
            duration_seconds=None,
            details={
                "offset": tail.fragment_offset,
                "length": len(tail.fragment),
                "sha256": digest,
                "moved_to": str(aside),
            },
        )
        self._write(fd, record.line())
        return record

    # -- checkpoints ----------------------------------------------------------------------
    def checkpoints(self) -> list[core.Checkpoint]:
        """The stored checkpoints. A torn last line there is ignored: checkpoints are derived
        data, cross-checked against the log and the chain."""
        try:
            raw = self.checkpoints_path.read_bytes()
        except FileNotFoundError:
            return []
        except OSError as exc:
            raise AuditWriteError(f"{self.checkpoints_path}: cannot read: {exc.strerror}") from None
        lines = raw.split(b"\n")
        lines.pop()  # after the last newline: empty, or a torn write
        return [self._checkpoint_line(line, number) for number, line in enumerate(lines, start=1)]

    def last_checkpoint(self) -> core.Checkpoint | None:
        """The newest stored checkpoint (the next starts from it), the file read from its end."""
        return next(self._checkpoints_newest_first(), None)

    def _checkpoint_line(self, line: bytes, number: int) -> core.Checkpoint:
        """The checkpoint LINE (line NUMBER of the file) holds; EntryFormatError naming it if none."""
        doc = read_json(line, str(self.checkpoints_path), core.EntryFormatError, line=number)
        try:
            return core.Checkpoint.from_json(doc)
        except core.EntryFormatError as exc:
            raise core.EntryFormatError(
                f"{self.checkpoints_path}:{number}: not a checkpoint: {exc}"
            ) from None

    def checkpoint(self, *, now: datetime | None = None) -> tuple[core.Checkpoint | None, AnchorOutcome]:
        """Write a checkpoint for the log as it is now (None for an empty log), and request
        anchors for it and any checkpoint still waiting for one. OSError naming the checkpoints
        file if it cannot be written (a full disk: exit 4), left as it was."""
        now = now or _utcnow()
        with self._locked() as fd:
            self._refuse_cut(fd, self.last_checkpoint())  # before the repair: a cut log is left as it is
            self._repair_tail(fd, now)
            cp = self._checkpoint(fd, now)
        return cp, self.anchor_checkpoints(now=now)

    def since_checkpoint(self) -> tuple[core.Checkpoint | None, list[core.AuditEntry], TornTail | None]:
        """The last checkpoint, the entries after it and any torn last line, as `checkpoint`
        reads them after repairing that line (a damaged entry raises EntryFormatError naming its
        line): what a dry run plans from. A whole entry that only lost its newline is listed."""
        try:
            fd = os.open(self.path, os.O_RDONLY)
        except FileNotFoundError:
            return self.last_checkpoint(), [], None
        except OSError as exc:
            raise AuditWriteError(f"{self.path}: cannot read the audit log: {exc.strerror}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_SH)  # a line being appended is not taken for a torn one
            tail = _read_tail(fd)
            _prev, whole = self._judge_tail(tail)
            previous, entries, _end = self._since_checkpoint(fd)
        finally:
            os.close(fd)
        if not tail.fragment:
            return previous, entries, None
        return (
            previous,
            entries + ([] if whole is None else [whole]),
            TornTail(len(tail.fragment), whole is not None),
        )

    def _since_checkpoint(self, fd: int) -> tuple[core.Checkpoint | None, list[core.AuditEntry], int]:
        previous = self.last_checkpoint()
        self._refuse_cut(fd, previous)
        end = os.fstat(fd).st_size
        start = previous.offset if previous is not None else 0
        data = os.pread(fd, end - start, start) if end > start else b""
        lines = data.split(b"\n")
        lines.pop()  # after the last newline: empty, or a torn write (repaired first by a checkpoint)
        entries = []
        for index, line in enumerate(lines):
            if not line:
                continue
            try:
                entries.append(core.parse_entry(line))
            except core.EntryFormatError as exc:
                number = (os.pread(fd, start, 0).count(b"\n") if start else 0) + index + 1
                raise core.EntryFormatError(f"{self.path}:{number}: {exc}") from None
        return previous, entries, end

    def _refuse_cut(self, fd: int, previous: core.Checkpoint | None) -> None:
        """LogCutError unless the log's line ending at PREVIOUS's offset is its last entry (seq
        and hash): a checkpoint of a log cut below it (or cut and appended to since) would
        contradict it, and the one anchored on the chain, for good. Reads that one line."""
        if previous is None:
            return
        end = _read_tail(fd).fragment_offset  # where its complete lines end
        if previous.offset <= end:
            lines = files.lines_backwards(fd, end=previous.offset)
            _offset, after = next(lines)  # b"": the offset ends a line
            last = next(lines, None)
            try:
                entry = None if after or last is None else core.parse_entry(last[1])
            except core.EntryFormatError:
                entry = None
            if entry is not None and (entry.seq, entry.hash) == (previous.size - 1, previous.last_hash):
                return
        count = files.LineNumbers(fd).at(end) - 1
        if count < previous.size:
            what = f"entries from {count} on were cut off"
        else:
            what = f"entry {previous.size - 1} is not the one it ends with: the log was cut and appended to, or rewritten"
        raise LogCutError(
            f"{self.path}: the log has {count} entries, the last checkpoint covers {previous.size}: {what}"
        )

    def _checkpoint(self, fd: int, now: datetime) -> core.Checkpoint | None:
        previous, entries, end = self._since_checkpoint(fd)
        if previous is None and not entries:
            return None
        if previous is not None and all(e.event_type == CHECKPOINT_EVENT for e in entries):
            # Nothing new but the records of checkpointing: a checkpoint of those would only
            # beget another record, one more each cron run.
            return previous
        cp = core.next_checkpoint(previous, [e.hash for e in entries], offset=end, now=now)
        try:
            cp_fd = os.open(self.checkpoints_path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o600)
            try:
                size = os.fstat(cp_fd).st_size
                if size and os.pread(cp_fd, 1, size - 1) != b"\n":  # a torn last checkpoint (a crash,
                    # a full disk): derived data, dropped, or the new line would be glued onto it for good
                    keep = os.pread(cp_fd, size, 0).rfind(b"\n") + 1
                    os.ftruncate(cp_fd, keep)
                    log.warning("audit checkpoints: dropped a torn last line (%d bytes)", size - keep)
                self._write(
                    cp_fd, json.dumps(cp.to_json(), sort_keys=True, separators=(",", ":")).encode() + b"\n"
                )
            finally:
                os.close(cp_fd)
        except OSError as exc:  # a write() names no file: a full disk is exit 4 naming this one
            raise files.named(exc, self.checkpoints_path) from None
        return cp

    def checkpoint_requests(self, store: ChainStore) -> list[tuple[bytes, str, str, int]]:
        """(root, kind, label, size), as anchors are requested, of the local checkpoints after the
        newest one STORE has seen (in any state), oldest first: read from the checkpoints file's
        end and looked up in batches that double, so that a lookup costs what the newest
        checkpoints do however many there are (one the chain has lost anchors them all again)."""
        newest = self._checkpoints_newest_first()
        unseen: list[core.Checkpoint] = []
        size = 2  # the newest, and the one before it the chain has seen, as a rule
        while batch := list(itertools.islice(newest, size)):
            known = store.anchors({cp.root for cp in batch})
            for cp in batch:
                if cp.root in known:
                    batch = []
                    break
                unseen.append(cp)
            if not batch:
                break
            size *= 2
        return [
            (bytes.fromhex(cp.root), CHECKPOINT_KIND, f"audit@{cp.size}", cp.size) for cp in reversed(unseen)
        ]

    def _checkpoints_newest_first(self) -> Iterator[core.Checkpoint]:
        """The stored checkpoints, newest first, read from the file's end as far as the caller goes
        (a torn last line is ignored, as `checkpoints` ignores it)."""
        try:
            with _reading(self.checkpoints_path, ""), files.open_log(self.checkpoints_path) as fd:
                numbers = files.LineNumbers(fd)
                lines = files.lines_backwards(fd)
                next(lines)  # after the last newline: empty, or a torn write
                for offset, line in lines:
                    yield self._checkpoint_line(line, numbers.at(offset))
        except FileNotFoundError:
            return

    def anchor_checkpoints(self, *, now: datetime | None = None) -> AnchorOutcome:
        """Request an anchor for every local checkpoint the chain has not seen: the newest
        and any queued while the chain was unreachable, wiped (`env destroy`) or rolled back.

        Never raises and never starts the environment: an unreachable chain leaves them
        queued in the checkpoints file for the next attempt (logged, not an error).
        """
        from voketag_ops.workflows.chain import ChainUnavailableError, RetryPolicy, request_missing_anchors

        try:
            store = self._chain_store()
            requests = self.checkpoint_requests(store)
            if not requests:
                return AnchorOutcome()
            requested = request_missing_anchors(
                store,
                requests,
                now=now or _utcnow(),
                retry=RetryPolicy(attempts=3, initial=0.05, maximum=0.2, store_errors=False),
            )
        except ChainUnavailableError as exc:
            log.info("audit checkpoints queued for anchoring: %s", exc.message)
            return AnchorOutcome(queued=True, reason=exc.message)
        except (VokeError, core.EntryFormatError) as exc:
            message = getattr(exc, "message", str(exc))
            log.warning("audit checkpoints not anchored (queued for the next attempt): %s", message)
            return AnchorOutcome(queued=True, reason=message)
        return AnchorOutcome(requested=len(requested))

    # -- reading ----------------------------------------------------------------------------
    def raw_lines(self) -> Iterator[bytes]:
        """Every line as stored, newline included (a torn last line has none)."""
        try:
            fh = open(self.path, "rb")  # noqa: SIM115 - closed below, generator
        except FileNotFoundError:
            return
        except OSError as exc:
            raise AuditWriteError(f"{self.path}: cannot read the audit log: {exc.strerror}") from None
        with fh:
            # The end is read under a shared lock, so a writer's line under way is not taken for
            # a torn one; the lines before it never change, and are read without holding writers up.
            fcntl.flock(fh.fileno(), fcntl.LOCK_SH)
            try:
                remaining = os.fstat(fh.fileno()).st_size
            finally:
                fcntl.flock(fh.fileno(), fcntl.LOCK_UN)
            for line in fh if remaining else ():
                if len(line) >= remaining:
                    yield line[:remaining]
                    return
                remaining -= len(line)
                yield line

    def entries(
        self,
        skipped: list[int] | None = None,
        *,
        newest_first: bool = False,
        since: datetime | None = None,
    ) -> Iterator[core.AuditEntry]:
        """Parsed entries, oldest first, or NEWEST_FIRST read from the log's end only as far as the
        caller goes (a page costs what the newest events do, however long the log). Unparseable
        lines are skipped, their line numbers to SKIPPED as they are passed over (newest first
        too). SINCE: only those after the newest entry stamped before it, which is found reading
        back from the end: the log is appended in time order, so the lines before it are never
        read (an entry there stamped later, written before the clock was set back, is not listed).
        A torn last write is read as the last line, as it stands."""
        try:
            with _reading(self.path, " the audit log"), files.open_log(self.path) as fd:
                # The end is taken under a shared lock, so a writer's line under way is not taken for
                # a torn one; the lines before it never change, and are read without holding writers up.
                fcntl.flock(fd, fcntl.LOCK_SH)
                try:
                    tail = _read_tail(fd)
                finally:
                    fcntl.flock(fd, fcntl.LOCK_UN)
                numbers = files.LineNumbers(fd)  # counted only for a line that is skipped
                backwards = self._parsed(fd, tail, numbers, skipped if newest_first else None)
                if newest_first:
                    for _offset, _raw, entry in backwards:
                        if since is not None and entry.time < since:
                            return
                        yield entry
                    return
                start = 0
                if since is not None:  # from the line after the newest entry stamped before SINCE
                    older = ((o, r) for o, r, entry in backwards if entry.time < since)
                    offset, raw = next(older, (-1, b""))
                    start = min(offset + len(raw) + 1, tail.fragment_offset)
                lines = files.lines_forward(fd, start, tail.fragment_offset)
                torn = [(tail.fragment_offset, tail.fragment)] if tail.fragment else []
                for offset, raw in itertools.chain(lines, torn):
                    found = self._entry(raw.rstrip(b"\n"), offset, numbers, skipped)
                    if found is not None:
                        yield found
        except FileNotFoundError:
            return

    def _parsed(
        self, fd: int, tail: _Tail, numbers: files.LineNumbers, skipped: list[int] | None
    ) -> Iterator[tuple[int, bytes, core.AuditEntry]]:
        """(offset, line, entry) of each line that parses, newest first from TAIL (its torn
        fragment first, if any), as far as the caller goes."""
        lines = files.lines_backwards(fd, end=tail.fragment_offset)
        next(lines)  # b"": END is where a line break ends
        torn = [(tail.fragment_offset, tail.fragment)] if tail.fragment else []
        for offset, raw in itertools.chain(torn, lines):
            entry = self._entry(raw, offset, numbers, skipped)
            if entry is not None:
                yield offset, raw, entry

    @staticmethod
    def _entry(
        raw: bytes, offset: int, numbers: files.LineNumbers, skipped: list[int] | None
    ) -> core.AuditEntry | None:
        """The entry the line at OFFSET holds, or None, its number then added to SKIPPED."""
        try:
            return core.parse_entry(raw)
        except core.EntryFormatError:
            if skipped is not None:
                skipped.append(numbers.at(offset))
            return None

    def find_newest(
        self, wanted: Collection[Key], key: Callable[[core.AuditEntry], Key | None]
    ) -> dict[Key, core.AuditEntry]:
        """For each of WANTED, the newest entry KEY maps to it (an entry KEY maps to None, or
        that fails to parse, is passed over). Read from the log's end, only as far as the oldest
        of them and the line before it (a lookup costs what the newest events do, however long
        the log); then each one found counts only if the entries from the line before it to the
        log's end link hash by hash, each stored as voke writes it (that line: to its own hash,
        or, the file's first line, the log's first entry), read forward from there once for all
        of them: a line appended or edited by hand is not trusted, nor is anything before it, nor
        the entry right after it (which links to it). Such an entry is left out, with a warning
        naming the line and the last one left out. This checks the links alone,
        not the checkpoints and anchors only `voke audit verify` checks: an entry rewritten with
        every later hash recomputed passes. A torn last write is no entry yet (the next append
        deals with it)."""
        if not wanted:
            return {}
        try:
            with _reading(self.path, " the audit log"), files.open_log(self.path) as fd:
                end, found = self._newest(fd, set(wanted), key)
                return self._linked(fd, end, found)
        except FileNotFoundError:
            return {}

    @staticmethod
    def _newest(
        fd: int, pending: set[Key], key: Callable[[core.AuditEntry], Key | None]
    ) -> tuple[int, list[_Found[Key]]]:
        """Where the log's last line break ends, and the newest entry of each key in PENDING (newest
        first), each with the offset of the line before it: parsed only, as far back as they go."""
        lines = files.lines_backwards(fd)
        end, _torn = next(lines)  # after the last line break: b"", or a torn write
        found: list[_Found[Key]] = []
        for offset, raw in lines:
            if found and found[-1].before is None:
                found[-1].before = offset
            if not pending:
                break
            try:
                entry = core.parse_entry(raw)
            except core.EntryFormatError:
                continue  # not trusted anyway: the walk from a match older than it names it
            name = key(entry)
            try:
                if name is None or name not in pending:
                    continue
            except TypeError:  # unhashable: a value edited by hand (a list) names no key
                continue
            pending.discard(name)
            found.append(_Found(name, entry, offset))
        return end, found

    def _linked(self, fd: int, end: int, found: list[_Found[Key]]) -> dict[Key, core.AuditEntry]:
        """The entries of FOUND the log links from to END, checked with verify's own walk
        (core.verify_lines, tail: from some entry on) from the line before the oldest one. A walk
        that fails at a line drops the ones at or before it (a warning names it), and the ones
        after it are walked again from the line before the oldest of them: one walk for all of them
        when the log is whole, none when nothing was found."""
        left = sorted(found, key=lambda f: f.offset)
        damaged: dict[int, tuple[object, int]] = {}  # offset of a line that fails -> problem, last dropped
        while left:
            start = left[0].before or 0  # the file's first line is held to the log's first entry
            report = core.verify_lines(
                (raw for _offset, raw in files.lines_forward(fd, start, end)), tail=start > 0
            )
            if report.ok:
                break
            number = report.line or 1  # (always given without claims)
            [(bad, _raw)] = itertools.islice(files.lines_forward(fd, start, end), number - 1, number)
            # the one whose walk starts there, where a walk from further back failed for its link or
            # bytes, is held to its hash alone there: walked again, unless the line failed that too
            kept = [f for f in left if f.offset > bad and not (bad == start and f is left[0])]
            dropped = max((f.offset for f in left if f not in kept), default=bad)
            _problem, before = damaged.get(bad, (report.problem, bad))
            damaged[bad] = (report.problem, max(before, dropped))
            left = kept
        numbers = files.LineNumbers(fd)
        for bad, (problem, last) in sorted(damaged.items()):
            log.warning(
                "%s:%d does not verify (%s): the audit events up to line %d are not trusted; "
                "`voke audit verify` names the damage",
                self.path,
                numbers.at(bad),
                problem,
                numbers.at(max(last, bad)),
            )
        return {f.key: f.entry for f in left}

    def verify(self, *, min_difficulty: int = DEFAULT_DIFFICULTY) -> core.VerifyReport:
        """Walk the whole log against its checkpoints and the chain's anchors of them.

        Anchors that cannot be read (the environment is down or gone) are reported as not
        checked, never as a failure; an anchor missing from the chain (wiped by `env
        destroy`, rolled back) is not a failure either: only one that contradicts the log is.
        The chain read is validated first as `chain validate` does (each block with at least
        MIN_DIFFICULTY bits of work, its anchors agreeing with its blocks): one that does not
        validate contributes no claim, and the report fails naming its first bad block.
        """
        try:
            checkpoints = self.checkpoints()
        except core.EntryFormatError as exc:
            return core.VerifyReport(False, 0, core.ZERO, problem=core.Problem.CORRUPT_LINE, message=str(exc))
        claims = [
            core.Claim(cp.size, cp.root, "checkpoint", cp.last_hash, cp.stack, cp.offset)
            for cp in checkpoints
        ]
        unchecked: str | None = None
        untrusted: str | None = None
        without_anchor = 0
        from voketag_ops.workflows.chain import sealed_in_valid_chain, untrusted_chain

        try:  # the blocks streamed: memory holds the checkpoint records, not a year's chain
            chain, anchors, sealed = sealed_in_valid_chain(
                self._chain_store(readonly=True),
                CHECKPOINT_KIND,
                lambda r: r.kind == CHECKPOINT_KIND,
                kind=CHECKPOINT_KIND,  # all it claims
                min_difficulty=min_difficulty,
            )
        except VokeError as exc:
            unchecked = exc.message
        else:
            if not chain.ok:
                untrusted = f"{untrusted_chain(chain)}; `voke chain validate` names the problem"
            else:
                chain_claims, anchored = checkpoint_claims(anchors.values(), sealed)
                claims += chain_claims
                without_anchor = sum(1 for cp in checkpoints if cp.root not in anchored)
        report = core.verify_lines(self.raw_lines(), claims)
        if untrusted is not None and report.ok:  # a problem of the log itself is named first
            report = replace(report, ok=False, problem=core.Problem.UNTRUSTED_CHAIN, message=untrusted)
        return replace(report, anchors_unchecked=unchecked, checkpoints_without_anchor=without_anchor)

    def contradiction(self, state: ChainState) -> str | None:
        """What in STATE's audit checkpoints contradicts this log (None: nothing does)."""
        from voketag_ops.core.chain import sealed_records

        sealed = sealed_records(state.blocks, spelling=CHECKPOINT_KIND)
        claims, _anchored = checkpoint_claims(state.anchors.values(), sealed)
        if not claims:
            return None
        report = core.verify_lines(self.raw_lines(), claims)
        return None if report.ok else report.message


def checkpoint_claims(
    anchors: Iterable[Anchor], sealed: Iterable[SealedRecord]
) -> tuple[list[core.Claim], set[str]]:
    """What a chain says the audit log hashes to: its audit-checkpoint ANCHORS, and the records
    of them SEALED in its blocks (`sealed_records`: a block keeps its records when the anchors
    table loses a row), with the roots that count as anchored (cancelled or failed requests do
    not)."""
    from voketag_ops.core.chain import AnchorState

    claims: list[core.Claim] = []
    anchored: set[str] = set()
    seen: set[tuple[int, str]] = set()
    for a in anchors:
        if a.kind == CHECKPOINT_KIND and a.tree_size:
            claims.append(core.Claim(a.tree_size, a.root.hex(), f"anchor {a.id[:16]}"))
            seen.add((a.tree_size, a.root.hex()))
            if a.state in (AnchorState.PENDING, AnchorState.ANCHORED):
                anchored.add(a.root.hex())
    for record in sealed:
        if record.kind != CHECKPOINT_KIND or record.tree_size is None or record.tree_size < 1:
            continue
        anchored.add(record.root)
        if (record.tree_size, record.root) not in seen:
            seen.add((record.tree_size, record.root))
            claims.append(core.Claim(record.tree_size, record.root, f"block {record.block_index} record"))
    return claims, anchored


# -- the API commands call ---------------------------------------------------------------------


def record_event(
    home: Path,
    *,
    event_type: str,
    env: str,
    target: str,
    result: str,
    duration_seconds: float | None = None,
    details: Mapping[str, Any] | None = None,
    actor: str | None = None,
    now: datetime | None = None,
) -> core.AuditEntry:
    """Append one event to HOME's audit log (details are sanitized; no secret values)."""
    return AuditLog(home).append(
        event_type=event_type,
        actor=actor or default_actor(),
        env=env,
        target=target,
        result=result,
        duration_seconds=duration_seconds,
        details=details,
        now=now,
    )


CHECKPOINT_EVENT = "audit.checkpoint"  # `voke audit checkpoint`'s own event


@dataclass
class AuditedEvent:
    """Handed to the body of `audited`: add details; set ``result`` for e.g. "dry-run", or
    ``skip`` when the event is already on record (written by another process), or ``target``
    when the body names it (opened before the checks that work it out)."""

    details: dict[str, Any] = field(default_factory=dict)
    result: str | None = None
    entry: core.AuditEntry | None = None
    skip: bool = False
    target: str | None = None


@contextmanager
def audited(
    home: Path,
    *,
    event_type: str,
    env: str,
    target: str,
    details: Mapping[str, Any] | None = None,
    actor: str | None = None,
    clock: Callable[[], float] = time.monotonic,
    now: Callable[[], datetime] = _utcnow,
) -> Iterator[AuditedEvent]:
    """Time the block and record it: success, or failure with the error's type and message
    (interrupted for Ctrl-C). The original exception always propagates. If the event
    cannot be written after a successful operation, NeedsOperatorError says so."""
    event = AuditedEvent(details=dict(details or {}))
    started = clock()
    try:
        yield event
    except BaseException as exc:
        if event.skip:  # on record already (written by the operation itself)
            raise
        # (Interrupted: a Ctrl-C or SIGTERM already turned into its answer, exit 130)
        interrupted = isinstance(exc, KeyboardInterrupt) or getattr(exc, "exit_code", None) == 130
        if isinstance(exc, KeyboardInterrupt) and not str(exc):  # a bare signal: as the command's answer says
            signal = interrupts.stopped_by()
            error = {"type": "Interrupted", "message": signal}
        else:
            message = redact(getattr(exc, "message", str(exc)))[:500]  # cut after: a secret across the cut
            error = {"type": getattr(exc, "type_name", type(exc).__name__), "message": message}
        event.details["error"] = error
        target = event.target or target
        try:
            event.entry = record_event(
                home,
                event_type=event_type,
                env=env,
                target=target,
                result="interrupted" if interrupted else "failure",
                duration_seconds=clock() - started,
                details=event.details,
                actor=actor,
                now=now(),
            )
        except VokeError as audit_exc:
            log.error("could not write the audit event for %s: %s", event_type, audit_exc.message)
        raise
    if event.skip:
        return
    target = event.target or target
    try:
        event.entry = record_event(
            home,
            event_type=event_type,
            env=env,
            target=target,
            result=event.result or "success",
            duration_seconds=clock() - started,
            details=event.details,
            actor=actor,
            now=now(),
        )
    except VokeError as exc:
        fix = FREE_SPACE if isinstance(exc, AuditWriteError) and exc.disk_refused else FIX_THE_LOG
        raise NeedsOperatorError(
            f"{event_type} on {target} succeeded, but its audit event could not be written: {exc.message}",
            hint=f"{fix}, then record what happened",
        ) from None


def audited_unless(dry_run: bool, home: Path, **kwargs: Any) -> AbstractContextManager[AuditedEvent]:
    """`audited` (KWARGS as there) for a real run, entered before its checks so that a refusal is
    a `failure` event too; for a DRY_RUN that writes no event, an event written nowhere."""
    return nullcontext(AuditedEvent()) if dry_run else audited(home, **kwargs)
