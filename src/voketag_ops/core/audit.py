"""The tamper-evident audit log's data model and verification (pure, no I/O).

One entry per line (JSON lines), each line the canonical JSON of the entry: keys sorted,
no spaces, UTF-8, ``\n`` ending. Verification holds every line to exactly those bytes: a line
that reads as the same entry but is stored otherwise (spaces, escapes, a CRLF ending,
a duplicate key, which a JSON reader resolves one way and grep another) was edited. An entry is::

    {"actor", "details", "duration_seconds", "env", "event_type", "hash", "prev_hash",
     "result", "seq", "target", "timestamp"}

``hash = SHA-256(canonical JSON of every other field)``, so each entry commits to
``prev_hash``, the hash of the entry before it (64 zeros for the first). ``seq`` is
the entry's position, so a deleted, duplicated or reordered entry is named at once.

Checkpoints record ``(size, root)`` with root the RFC 6962 Merkle root over the first
``size`` entry hashes (each 32-byte hash is one leaf). Checkpoints live outside the log
and are anchored on the chain, so cutting entries off the end is detected too.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from fnmatch import fnmatchcase
from typing import Any

from voketag_ops.core import merkle
from voketag_ops.redact import MASK, redact

ZERO = "0" * 64
_HASH = re.compile(r"[0-9a-f]{64}")
# Every result voke writes: the generic ones, then a rotation's, an ingest load's and a drill's (a
# drill that completed is `success`, one interrupted `interrupted`: its journal's other endings).
RESULTS = (
    "success",
    "failure",
    "dry-run",
    "cancelled",
    "interrupted",
    "unchanged",
    "started",
    "succeeded",
    "rolled_back",
    "needs_attention",
    "loaded",
    "duplicate",
    "rejected",
    "failed",
    "aborted",
)
FIELDS = (
    "seq",
    "timestamp",
    "event_type",
    "actor",
    "env",
    "target",
    "result",
    "duration_seconds",
    "details",
    "prev_hash",
    "hash",
)
_SECRET_KEY = re.compile(
    r"(password|passwd|secret|token|private[_-]?key|api[_-]?key|credential|authorization|cookie)s?$", re.I
)


def canonical(doc: Mapping[str, Any]) -> bytes:
    """Canonical JSON bytes: sorted keys, compact separators, UTF-8, no NaN."""
    return json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode(
        "utf-8"
    )


def iso_now(now: datetime) -> str:
    """ISO 8601 UTC with microseconds and a Z suffix."""
    if now.tzinfo is None:
        raise ValueError("audit timestamps must be timezone-aware")
    return now.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def sanitize(value: Any, key: str = "") -> Any:
    """DETAILS made safe to store: values under secret-looking keys become ***, every
    string passes through `redact`, and anything not JSON becomes its string form."""
    if key and _SECRET_KEY.search(key) and value not in (None, ""):
        return MASK
    if isinstance(value, Mapping):
        return {storable_text(str(k)): sanitize(v, str(k)) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [sanitize(v) for v in value]
    if value is None or isinstance(value, bool | int):
        return value
    if isinstance(value, float):
        return value if value == value and value not in (float("inf"), float("-inf")) else str(value)
    if isinstance(value, datetime):
        return iso_now(value) if value.tzinfo else value.isoformat()
    return storable_text(redact(str(value)))


def storable_text(text: str) -> str:
    """TEXT with lone surrogates (a file name that is not UTF-8 comes in as one per byte)
    written as \\xNN: UTF-8 cannot carry them, and the entry's hash is over UTF-8."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    return text


@dataclass(frozen=True)
class AuditEntry:
    """One audit event, as stored."""

    seq: int
    timestamp: str
    event_type: str
    actor: str
    env: str
    target: str
    result: str
    duration_seconds: float | None
    details: dict[str, Any]
    prev_hash: str
    hash: str

    def body(self) -> dict[str, Any]:
        """Every field but ``hash``: what the hash covers."""
        return {
            "actor": self.actor,
            "details": self.details,
            "duration_seconds": self.duration_seconds,
            "env": self.env,
            "event_type": self.event_type,
            "prev_hash": self.prev_hash,
            "result": self.result,
            "seq": self.seq,
            "target": self.target,
            "timestamp": self.timestamp,
        }

    def computed_hash(self) -> str:
        return hashlib.sha256(canonical(self.body())).hexdigest()

    def to_json(self) -> dict[str, Any]:
        return {**self.body(), "hash": self.hash}

    def line_and_hash(self) -> tuple[bytes, str]:
        """(`line` without its newline, the hash the body has), from the one serialisation
        the hash needs: ``hash`` sorts just before ``prev_hash``, whose top-level key is the
        last ``,"prev_hash":"`` in the body (``details`` comes before it, and no string holds
        ``,"`` unescaped). EntryFormatError for an entry read with NaN or a number too large for
        a float (1e400): it has no canonical JSON."""
        try:
            body = canonical(self.body())
        except ValueError as exc:
            raise EntryFormatError(f"not canonical JSON ({str(exc)[:120]})") from None
        cut = body.rfind(b',"prev_hash":"')
        line = b'%s,"hash":"%s"%s' % (body[:cut], self.hash.encode(), body[cut:])
        return line, hashlib.sha256(body).hexdigest()

    def line(self) -> bytes:
        """The stored line, newline included."""
        return canonical(self.to_json()) + b"\n"

    @property
    def time(self) -> datetime:
        return datetime.fromisoformat(self.timestamp.replace("Z", "+00:00"))


def make_entry(
    *,
    seq: int,
    prev_hash: str,
    now: datetime,
    event_type: str,
    actor: str,
    env: str,
    target: str,
    result: str,
    duration_seconds: float | None,
    details: Mapping[str, Any] | None,
) -> AuditEntry:
    """A new entry, sanitized and hashed."""
    for name, value in (("event_type", event_type), ("actor", actor), ("env", env), ("target", target)):
        if not isinstance(value, str):
            raise TypeError(f"audit {name} must be a string")
    if not event_type:
        raise ValueError("audit event_type must not be empty")
    if duration_seconds is not None:
        duration_seconds = round(float(duration_seconds), 6)
    draft = AuditEntry(
        seq=seq,
        timestamp=iso_now(now),
        event_type=storable_text(event_type),
        actor=storable_text(redact(actor)),
        env=storable_text(env),
        target=storable_text(redact(target)),
        result=storable_text(result),
        duration_seconds=duration_seconds,
        details=sanitize(dict(details or {})),
        prev_hash=prev_hash,
        hash="",
    )
    return _with_hash(draft)


def _with_hash(entry: AuditEntry) -> AuditEntry:
    from dataclasses import replace

    return replace(entry, hash=entry.computed_hash())


class EntryFormatError(ValueError):
    """A line is not a well-formed audit entry."""


class NotCanonicalError(EntryFormatError):
    """A line that reads as an entry but is not stored as voke writes it (a key twice, spacing,
    escapes, a CRLF ending): its bytes were edited."""


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """An object, refused if it holds a key twice: JSON readers keep the last, grep sees the first."""
    doc = dict(pairs)
    if len(doc) != len(pairs):
        keys = [k for k, _ in pairs]
        twice = next(k for i, k in enumerate(keys) if k in keys[:i])
        raise NotCanonicalError(f"key {json.dumps(twice, ensure_ascii=False)} appears twice")
    return doc


def parse_entry(line: bytes, *, keys_once: bool = True) -> AuditEntry:
    """Parse one line (without its newline); raises EntryFormatError saying what is wrong
    (NotCanonicalError for a key given twice, unless not KEYS_ONCE: for `verify_lines`, which
    holds each line to the bytes voke writes, never a key twice, and needs no second check)."""
    try:
        doc = json.loads(line, object_pairs_hook=_unique_keys if keys_once else None)
    except NotCanonicalError:
        raise
    except (UnicodeDecodeError, ValueError) as exc:  # (and an integer too long to convert)
        raise EntryFormatError(f"not JSON ({str(exc)[:120]})") from None
    except RecursionError:
        raise EntryFormatError("not JSON (nested too deeply)") from None
    if not isinstance(doc, dict):
        raise EntryFormatError("not a JSON object")
    if b"\\u" in line:  # only an escape can make a lone surrogate, which has no UTF-8 to hash
        try:
            canonical(doc)
        except (UnicodeEncodeError, ValueError) as exc:
            raise EntryFormatError(f"not canonical JSON ({str(exc)[:120]})") from None
    missing = [f for f in FIELDS if f not in doc]
    extra = sorted(set(doc) - set(FIELDS))
    if missing or extra:
        raise EntryFormatError(
            "fields " + (f"missing: {', '.join(missing)}" if missing else f"unexpected: {', '.join(extra)}")
        )
    seq = doc["seq"]
    if isinstance(seq, bool) or not isinstance(seq, int) or seq < 0:
        raise EntryFormatError("seq must be a non-negative integer")
    for key in ("timestamp", "event_type", "actor", "env", "target", "result", "prev_hash", "hash"):
        if not isinstance(doc[key], str):
            raise EntryFormatError(f"{key} must be a string")
    for key in ("prev_hash", "hash"):
        if not _HASH.fullmatch(doc[key]):
            raise EntryFormatError(f"{key} must be 64 lowercase hex digits")
    try:  # read back by --since/--until: any ISO 8601 time with its offset, as voke writes them
        stamp = datetime.fromisoformat(doc["timestamp"].replace("Z", "+00:00"))
    except ValueError:
        raise EntryFormatError("timestamp must be an ISO 8601 time") from None
    if stamp.tzinfo is None:
        raise EntryFormatError("timestamp must say its offset (Z)")
    duration = doc["duration_seconds"]
    if duration is not None and (isinstance(duration, bool) or not isinstance(duration, int | float)):
        raise EntryFormatError("duration_seconds must be a number or null")
    if not isinstance(doc["details"], dict):
        raise EntryFormatError("details must be an object")
    return AuditEntry(**{f: doc[f] for f in FIELDS})


# -- checkpoints ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Checkpoint:
    """The log's first SIZE entries have Merkle root ROOT; LAST_HASH is entry SIZE-1's hash.

    ``offset`` (end of entry SIZE-1 in the file) and ``stack`` (the Merkle builder's
    state) let the next checkpoint be computed without rereading the whole log.
    """

    size: int
    root: str
    last_hash: str
    timestamp: str
    offset: int = 0
    stack: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {
            "size": self.size,
            "root": self.root,
            "last_hash": self.last_hash,
            "timestamp": self.timestamp,
            "offset": self.offset,
            "stack": list(self.stack),
        }

    @classmethod
    def from_json(cls, doc: object) -> Checkpoint:
        """Parse a stored checkpoint; raises EntryFormatError saying which field is wrong."""
        if not isinstance(doc, dict):
            raise EntryFormatError("not a JSON object")
        size, offset, stack = doc.get("size"), doc.get("offset"), doc.get("stack")
        if isinstance(size, bool) or not isinstance(size, int) or size < 1:
            raise EntryFormatError("size must be a positive integer")
        if isinstance(offset, bool) or not isinstance(offset, int) or offset < 0:
            raise EntryFormatError("offset must be a non-negative integer")
        for key in ("root", "last_hash"):
            if not isinstance(doc.get(key), str) or not _HASH.fullmatch(doc[key]):
                raise EntryFormatError(f"{key} must be 64 lowercase hex digits")
        if not isinstance(doc.get("timestamp"), str):
            raise EntryFormatError("timestamp must be a string")
        # The builder's state, from which the next checkpoint is computed: one subtree root per bit of size.
        if (
            not isinstance(stack, list)
            or len(stack) != size.bit_count()
            or not all(isinstance(h, str) and _HASH.fullmatch(h) for h in stack)
        ):
            raise EntryFormatError(
                f"stack must be {size.bit_count()} hashes (one per bit of its size {size})"
            )
        return cls(size, doc["root"], doc["last_hash"], doc["timestamp"], offset, tuple(stack))

    def builder(self) -> merkle.MerkleBuilder:
        """The Merkle builder as it was at this checkpoint."""
        return merkle.MerkleBuilder.from_state(self.size, [bytes.fromhex(h) for h in self.stack])


def next_checkpoint(
    previous: Checkpoint | None, new_hashes: Sequence[str], *, offset: int, now: datetime
) -> Checkpoint:
    """The checkpoint after appending NEW_HASHES (entry hashes, hex) to PREVIOUS's state."""
    builder = merkle.MerkleBuilder() if previous is None else previous.builder()
    for h in new_hashes:
        builder.append(bytes.fromhex(h))
    size, stack = builder.state
    last = new_hashes[-1] if new_hashes else (previous.last_hash if previous else ZERO)
    return Checkpoint(
        size=size,
        root=builder.root().hex(),
        last_hash=last,
        timestamp=iso_now(now),
        offset=offset,
        stack=tuple(h.hex() for h in stack),
    )


# -- verification ------------------------------------------------------------------------------


class Problem(StrEnum):
    """Why the log does not verify (the first problem found, walking from the start)."""

    CORRUPT_LINE = "corrupt_line"
    TORN_TAIL = "torn_tail"
    SEQUENCE = "sequence"  # deleted, inserted or reordered entry
    BROKEN_LINK = "broken_link"  # an entry changed and re-hashed, or its link rewritten
    EDITED = "edited"  # content no longer matches the entry's own hash
    CHECKPOINT_MISMATCH = "checkpoint_mismatch"  # entries rewritten consistently
    TRUNCATED = "truncated"  # fewer entries than a checkpoint or anchor covers
    UNTRUSTED_CHAIN = "untrusted_chain"  # the chain does not validate: none of its claims count


@dataclass(frozen=True)
class Claim:
    """Something outside the log that says what its first SIZE entries hash to."""

    size: int
    root: str
    source: str  # "checkpoint" | "anchor <id>"
    last_hash: str | None = None
    stack: tuple[str, ...] = ()  # a checkpoint's builder state (the next checkpoint starts from it)
    offset: int | None = None  # a checkpoint's: where its entries end in the file


@dataclass(frozen=True)
class VerifyReport:
    """The verdict on a whole log."""

    ok: bool
    entries: int
    head_hash: str
    checkpoints_checked: int = 0
    anchors_checked: int = 0
    last_checkpoint_size: int = 0
    torn_writes_recorded: int = 0
    first_bad_entry: int | None = None
    problem: Problem | None = None
    message: str | None = None
    line: int | None = None
    anchors_unchecked: str | None = None  # why the chain's anchors could not be read, if so
    checkpoints_without_anchor: int = 0  # local checkpoints the chain has no anchor for (yet)


@dataclass
class _Walker:
    claims: dict[int, list[Claim]]
    builder: merkle.MerkleBuilder = field(default_factory=merkle.MerkleBuilder)
    prev_hash: str = ZERO
    count: int = 0
    offset: int = 0  # bytes of the lines walked
    torn_writes: int = 0
    checked: list[Claim] = field(default_factory=list)
    last_checked_size: int = 0


def verify_lines(lines: Iterable[bytes], claims: Iterable[Claim] = (), *, tail: bool = False) -> VerifyReport:
    """Verify the log given as raw LINES (each with its newline, except a torn last one)
    against CLAIMS (checkpoints and anchors). Names the first bad entry. TAIL: LINES are the
    log's end from some entry on (`AuditLog.find_newest` walks from the line before an entry it
    found): the first line is that entry, held to its own hash (what the next links to), not to
    its bytes or link (the lines before it, which the walk does not see, are judged there)."""
    by_size: dict[int, list[Claim]] = {}
    for claim in claims:
        by_size.setdefault(claim.size, []).append(claim)
    walker = _Walker(by_size)

    def fail(problem: Problem, entry: int, message: str, line: int | None = None) -> VerifyReport:
        return _report(walker, ok=False, problem=problem, entry=entry, message=message, line=line)

    for number, raw in enumerate(lines, start=1):
        position = walker.count
        terminated = raw.endswith(b"\n")
        body = raw[:-1] if terminated else raw
        try:
            entry = parse_entry(body, keys_once=False)
            stored, computed = entry.line_and_hash()
            if stored != body and not (tail and number == 1):
                raise NotCanonicalError(f"not stored as voke writes it ({_not_canonical(body)})")
        except EntryFormatError as exc:
            if not terminated:
                return fail(
                    Problem.TORN_TAIL,
                    position,
                    f"line {number} is an incomplete write ({len(body)} bytes, {exc}); "
                    f"the {position} entries before it verify",
                    number,
                )
            if isinstance(exc, NotCanonicalError):  # the stored bytes were edited, whatever they read as
                return fail(
                    Problem.EDITED, position, f"entry {position} was edited: line {number}: {exc}", number
                )
            return fail(Problem.CORRUPT_LINE, position, f"line {number}: {exc}", number)
        if tail and number == 1:
            walker.count = position = entry.seq
            walker.prev_hash = entry.prev_hash
        if entry.seq != position:
            if entry.seq < position:
                return fail(
                    Problem.SEQUENCE,
                    entry.seq,
                    f"line {number} repeats entry {entry.seq}: an entry was inserted or duplicated at {entry.seq}",
                    number,
                )
            return fail(
                Problem.SEQUENCE,
                position,
                f"line {number} holds entry {entry.seq} where entry {position} belongs: "
                f"entry {position} was deleted or moved",
                number,
            )
        if computed != entry.hash:
            return fail(
                Problem.EDITED,
                position,
                f"entry {position} was edited: it no longer matches its hash",
                number,
            )
        if entry.prev_hash != walker.prev_hash:
            bad = max(position - 1, 0)
            what = (
                "the first entry does not start from the zero hash"
                if position == 0
                else f"entry {position - 1} was changed and re-hashed (entry {position} no longer links to it)"
            )
            return fail(Problem.BROKEN_LINK, bad, what, number)
        if not terminated:  # the next entry whole, only its newline lost: still a write cut short
            return fail(
                Problem.TORN_TAIL,
                position,
                f"line {number} is entry {position} whole but lost its newline (an incomplete write); "
                f"the {position} entries before it verify; the next append or `voke audit checkpoint` adds it",
                number,
            )
        walker.prev_hash = entry.hash
        walker.builder.append(bytes.fromhex(entry.hash))
        walker.count += 1
        walker.offset += len(raw)
        if entry.event_type == "audit.torn_write":
            walker.torn_writes += 1
        mismatch = _check_claims(walker)
        if mismatch is not None:
            return fail(Problem.CHECKPOINT_MISMATCH, *mismatch)
    if by_size:
        top = max(by_size)
        if top > walker.count:
            source = by_size[top][0].source
            return fail(
                Problem.TRUNCATED,
                walker.count,
                f"the log has {walker.count} entries but the {source} covers {top}: entries from "
                f"{walker.count} on were cut off",
            )
    return _report(walker, ok=True)


def _not_canonical(line: bytes) -> str:
    """How LINE, which reads as an entry, differs from the canonical JSON of it."""
    if line.endswith(b"\r"):
        return "a CRLF line ending"
    try:
        json.loads(line, object_pairs_hook=_unique_keys)
    except NotCanonicalError as exc:
        return str(exc)
    return "its spacing, escapes or key order changed"


def _check_claims(walker: _Walker) -> tuple[int, str] | None:
    claims = walker.claims.get(walker.count)
    if not claims:
        return None
    root = walker.builder.root().hex()
    for claim in claims:
        if (
            claim.stack
            and claim.root == root
            and claim.stack != tuple(h.hex() for h in walker.builder.state[1])
        ):
            return (
                walker.count,
                f"the {claim.source} at size {claim.size} matches the log, but its saved builder state "
                "does not: the checkpoints file was changed (the next checkpoint would be wrong)",
            )
        if claim.offset is not None and claim.root == root and claim.offset != walker.offset:
            return (
                walker.count,
                f"the {claim.source} at size {claim.size} matches the log, but says its entries end at "
                f"byte {claim.offset}, not {walker.offset}: the checkpoints file was changed (the next "
                "checkpoint would read the log from the wrong place)",
            )
        if claim.root != root or (claim.last_hash is not None and claim.last_hash != walker.prev_hash):
            since = walker.last_checked_size
            return (
                since,
                f"entries {since}..{walker.count - 1} do not match the {claim.source} at size "
                f"{claim.size}: they were rewritten",
            )
        walker.checked.append(claim)
    walker.last_checked_size = walker.count
    return None


def _report(
    walker: _Walker,
    *,
    ok: bool,
    problem: Problem | None = None,
    entry: int | None = None,
    message: str | None = None,
    line: int | None = None,
) -> VerifyReport:
    return VerifyReport(
        ok=ok,
        entries=walker.count,
        head_hash=walker.prev_hash,
        checkpoints_checked=sum(1 for c in walker.checked if c.source == "checkpoint"),
        anchors_checked=sum(1 for c in walker.checked if c.source.startswith("anchor")),
        last_checkpoint_size=max((c.size for cs in walker.claims.values() for c in cs), default=0),
        torn_writes_recorded=walker.torn_writes,
        first_bad_entry=entry,
        problem=problem,
        message=message,
        line=line,
    )


# -- reading: filters, pages, export ---------------------------------------------------------------


@dataclass(frozen=True)
class Filter:
    """What `voke audit show/export` selects. EVENT_TYPE and TARGET accept shell globs; ENV
    is one environment's events (an entry that names none is the local environment's)."""

    since: datetime | None = None
    until: datetime | None = None
    event_type: str | None = None
    target: str | None = None
    result: str | None = None
    env: str | None = None

    def matches(self, entry: AuditEntry) -> bool:
        if self.env is not None and (entry.env or "local") != self.env:
            return False
        if self.event_type and not fnmatchcase(entry.event_type, self.event_type):
            return False
        if self.target and not fnmatchcase(entry.target, self.target):
            return False
        if self.result and entry.result != self.result:
            return False
        if self.since or self.until:
            when = entry.time
            if self.since and when < self.since:
                return False
            if self.until and when >= self.until:
                return False
        return True


def select(
    entries: Iterable[AuditEntry], flt: Filter, *, limit: int | None, offset: int = 0, count: bool = True
) -> tuple[list[AuditEntry], int, bool]:
    """(the page of matching entries, how many matched, whether that is all of them). COUNT:
    ENTRIES are read to their end to count every match; else no further than the first match
    after a full page (how many matched up to it, at least one more than the page shows)."""
    page: list[AuditEntry] = []
    total = 0
    for entry in entries:
        if not flt.matches(entry):
            continue
        if total >= offset and (limit is None or len(page) < limit):
            page.append(entry)
        elif total >= offset and not count:
            return page, total + 1, False
        total += 1
    return page, total, True


_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def csv_cell(value: Any) -> str:
    """A CSV cell that a spreadsheet will not evaluate (OWASP CSV injection)."""
    if value is None:
        text = ""
    elif isinstance(value, str):
        text = value
    elif isinstance(value, dict | list):
        text = json.dumps(value, sort_keys=True, ensure_ascii=False)
    else:
        text = str(value)
    if text.startswith(_FORMULA_START):
        return "'" + text
    return text


def to_csv(entries: Iterable[AuditEntry]) -> Iterator[str]:
    """CSV text, header first, one row per entry (yielded in chunks)."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(FIELDS)
    for entry in entries:
        doc = entry.to_json()
        writer.writerow([csv_cell(doc[f]) for f in FIELDS])
        if buf.tell() > 64 * 1024:
            yield buf.getvalue()
            buf.seek(0)
            buf.truncate()
    yield buf.getvalue()
