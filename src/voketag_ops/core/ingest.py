"""Factory CSV batches: streaming validation, canonical rows and the batch's Merkle seal.

Pure: no I/O beyond the bytes it is fed, no clock (``now`` is a parameter), no
database. The workflow feeds the file in chunks and gets back, per chunk, the
accepted rows as canonical text (``copy_data``: the same in ``COPY ... FROM STDIN``
text format) with their lines, the rejected records with their reasons, and the leaf
hashes of every completed Merkle chunk.

Memory stays flat in the file size. The one map that grows is sku -> product name
(one entry per SKU: the product catalogue, not the rows). Duplicate tag_ids within
the file are found with a tag_id -> line map (about 90 bytes a row) only if
``detect_duplicates`` is on; the load turns it off and lets the primary key find them.

Speed: rows are validated a few hundred at a time, column by column (``_bulk``), with
one C-level call per check over all of them; a group with anything unusual in it (a
quote the strict reader dislikes, white space to trim beyond ASCII, a timestamp not
already canonical, a bad value of any kind) is validated row by row (``_careful``,
``_slow``), which is the reference for every rule and the only path that reports
problems. The property tests hold the two paths to the same results.

The file (see README, "voke ingest"):

- UTF-8, an optional BOM, ``\\n`` or ``\\r\\n`` line endings, RFC 4180 quoting.
- A header naming the required columns ``tag_id, sku, product_name, factory_id,
  manufactured_at`` in any order, optionally ``lot, color, size``; other columns
  are ignored with a warning.
- Records as RFC 4180 reads them: a quote left open at the end of a line goes on
  to the next lines until it closes, and nothing inside it is a record. A field may
  not hold a control character, a line break neither, so a record that spans lines
  is rejected whole (``control_character``, at its first line and the column of the
  field), which keeps one accepted record per physical line. A quote still open at
  the end of the file makes the rest of it one record, ``unterminated_quote``, and
  the file ``truncated``. Only lines with a quote are looked at for this
  (``_spanning_records``); a record open at the end of a piece waits for the next.
  The 1 MiB bound on a line bounds a whole record: one longer is skipped as it
  streams (``_skip_record``), never held.
- The header is line 1. A blank line is no record (RFC 4180 has none): a rejected row
  (``field_count``), never skipped; a blank first line means no header line.
- The last line must end with a line break (``require_final_newline``): an
  upload cut mid-row is otherwise indistinguishable from a complete file.

Canonical row (the Merkle leaf): the eight canonical columns, in the order of
``CANONICAL_COLUMNS``, trimmed, absent optional values as the empty string,
``manufactured_at`` as UTC ``YYYY-MM-DDTHH:MM:SS.ffffff+00:00``, joined with TAB
and encoded as UTF-8. Fields cannot contain TAB (a control character), so the
encoding is unambiguous. Leaves are in file order of the accepted rows.

Seal: the RFC 6962 root over the leaves, computed as the root over the roots of
aligned chunks of ``SEAL_CHUNK`` leaves (the same value, because the chunks are
perfect subtrees of the tree). Keeping each chunk's leaf hashes lets a proof be
built from one chunk plus the chunk roots instead of the whole batch.
"""

from __future__ import annotations

import calendar
import codecs
import csv
import hashlib
import random
import re
import unicodedata
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import suppress
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from itertools import compress, repeat
from operator import contains
from typing import IO, Any

from voketag_ops.core import merkle

__all__ = [
    "CANONICAL_COLUMNS",
    "OPTIONAL_COLUMNS",
    "REQUIRED_COLUMNS",
    "SEAL_CHUNK",
    "BatchValidator",
    "Chunk",
    "LeafSealer",
    "Problem",
    "Rejected",
    "Seal",
    "canonical_leaf",
    "canonical_timestamp",
    "check_size",
    "copy_text",
    "hash_chunk",
    "inclusion_proof",
    "seal_leaves",
    "write_sample",
]

REQUIRED_COLUMNS = ("tag_id", "sku", "product_name", "factory_id", "manufactured_at")
OPTIONAL_COLUMNS = ("lot", "color", "size")
CANONICAL_COLUMNS = REQUIRED_COLUMNS + OPTIONAL_COLUMNS
TAG_MAX = 64
SKU_MAX = 64
TEXT_MAX = 200
SEAL_CHUNK = 1024  # leaves per stored chunk; a power of two, so chunks are subtrees
MAX_LINE_BYTES = 1 << 20  # a valid row is a few KiB at most; longer lines are skipped, not buffered

_TAG_RE = re.compile(r"[A-Za-z0-9_-]{1,64}")
TAG_ID_RULE = "1-64 characters of A-Z, a-z, 0-9, '_' and '-'"


def is_tag_id(text: str) -> bool:
    """Whether TEXT could be a loaded tag_id (the rule every accepted row meets)."""
    return _TAG_RE.fullmatch(text) is not None


# C0 controls, DEL and C1 controls; a CR is allowed only as part of a CRLF line ending. Then
# the invisible characters that make a value look like another one ("SKU-42" + a zero-width
# space, a right-to-left override). ZWNJ and ZWJ (U+200C/D) stay: Persian, Indic scripts and
# emoji need them.
_INVISIBLE_RANGES = (
    (0x00AD, 0x00AD),  # soft hyphen
    (0x061C, 0x061C),  # Arabic letter mark
    (0x180E, 0x180E),  # Mongolian vowel separator
    (0x200B, 0x200B),  # zero-width space
    (0x200E, 0x200F),  # LRM, RLM
    (0x2028, 0x202E),  # line and paragraph separators, bidi embeddings and overrides
    (0x2060, 0x2064),  # word joiner, invisible operators
    (0x2066, 0x206F),  # bidi isolates, deprecated format characters
    (0xFEFF, 0xFEFF),  # a BOM past the file's start
    (0xFFF9, 0xFFFB),  # interlinear annotation characters
    (0xE0000, 0xE007F),  # tag characters
)
INVISIBLE = "".join(chr(c) for first, last in _INVISIBLE_RANGES for c in range(first, last + 1))
_CTRL_RE = re.compile(f"[\\x00-\\x09\\x0b-\\x1f\\x7f-\\x9f{INVISIBLE}]|\\r(?!\\n)")
_FIELD_CTRL_RE = re.compile(f"[\\x00-\\x1f\\x7f-\\x9f{INVISIBLE}]")


def _utf8_patterns(chars: str) -> tuple[tuple[bytes, re.Pattern[bytes]], ...]:
    """For each first byte of CHARS' UTF-8 forms, that byte and a pattern of those forms
    (E2 followed by 80 8B, 80 8E, ...: one alternative per shared prefix, its last byte a
    class). The byte leads the pattern, so a search skips to it, and a body without it
    (bytes.__contains__, far faster than any search) is not searched at all."""
    last_bytes: dict[bytes, list[int]] = {}
    for ch in chars:
        form = ch.encode()
        last_bytes.setdefault(form[:-1], []).append(form[-1])
    by_lead: dict[bytes, list[bytes]] = {}
    for prefix, lasts in last_bytes.items():
        byte_class = b"".join(re.escape(bytes([b])) for b in lasts)
        by_lead.setdefault(prefix[:1], []).append(re.escape(prefix[1:]) + b"[" + byte_class + b"]")
    return tuple(
        (lead, re.compile(re.escape(lead) + b"(?:" + b"|".join(alternatives) + b")"))
        for lead, alternatives in by_lead.items()
    )


# The byte-level pre-check for INVISIBLE (a BOM at the file's start is gone before it runs).
_INVISIBLE_UTF8 = _utf8_patterns(INVISIBLE)

_QUOTED_RE = re.compile(r'"(?:[^"]++|"")*+"')
_UNQUOTED_RE = re.compile(r"[^,]*+")
_FRACTION_RE = re.compile(r"[.,]\d{6}\d*[1-9]")  # a digit beyond microseconds that is not 0 (lost)
# ISO 8601 calendar date and time, extended (2024-05-01T08:30:00.25+02:00; a space for the T
# as in RFC 3339) or basic (20240501T083000Z), the zone last; as in RFC 3339 (5.6), the T and
# the Z may be lower case. Python's fromisoformat alone would also take week dates, any
# character as the separator and offsets with seconds (but no lower-case z).
# The zone is optional here so that a missing one gets a message of its own.
_TS_RE = re.compile(
    r"(?:[0-9]{4}-[0-9]{2}-[0-9]{2}[Tt ][0-9]{2}(?::[0-9]{2}(?::[0-9]{2}(?:[.,][0-9]+)?)?)?"
    r"|[0-9]{8}[Tt][0-9]{2}(?:[0-9]{2}(?:[0-9]{2}(?:[.,][0-9]+)?)?)?)"
    r"(?:[Zz]|[+-](?:[01][0-9]|2[0-3])(?::?[0-5][0-9])?)?"  # offset minutes 00-59: +05:75 is no offset
)
# ISO 8601 allows a leap second (23:59:60) and 24:00 (the day's end); Python's datetime and so
# voke's canonical leaf take neither: refused with a message of their own, not "not ISO 8601".
_LEAP_OR_24_RE = re.compile(
    r"(?P<date>[0-9]{4}-[0-9]{2}-[0-9]{2}(?=[Tt ])|[0-9]{8}(?=[Tt])).(?:24(?::?00(?::?00(?:[.,]0+)?)?)?"
    r"|(?:[01][0-9]|2[0-3]):?[0-5][0-9]:?60(?:[.,][0-9]+)?)(?:[Zz]|[+-])"
)


# Week dates (2024-W01-1, 2024W011) and ordinal dates (2024-001, 2024001) are ISO 8601 too, but
# not calendar dates: refused with a message of their own. Matched at the start, before the time.
_WEEK_OR_ORDINAL_RE = re.compile(r"[0-9]{4}(?:-?(?P<week>W)[0-9]{2}(?:-?[0-9])?|-?[0-9]{3})(?=[Tt ]|$)")
# The date of a value shaped as _TS_RE, to say why it is no day (2023-02-29) when it is none.
_DATE_RE = re.compile(r"(?P<year>[0-9]{4})-?(?P<month>[0-9]{2})-?(?P<day>[0-9]{2})")


def _no_such_day(value: str) -> str | None:
    """Why VALUE (shaped as _TS_RE) names no day, when its date is none (2023-02-29, 2024-04-31)."""
    found = _DATE_RE.match(value)
    assert found is not None
    year, month, day = int(found["year"]), int(found["month"]), int(found["day"])
    try:
        date(year, month, day)
    except ValueError:
        words = f"{found['year']}-{found['month']}-{found['day']} is not a day"
        if year >= 1 and 1 <= month <= 12 and day >= 1:
            days = calendar.monthrange(year, month)[1]
            return f"{words}: {calendar.month_name[month]} {found['year']} has {days} days"
        return f"{words} (months are 01-12, days start at 01, years at 0001)"
    return None


def _leap_second_or_24(value: str) -> bool:
    """Whether VALUE (shaped as _TS_RE) is a valid date with a leap second or 24:00 and a zone."""
    found = _LEAP_OR_24_RE.match(value)
    if found is None:
        return False
    day = found["date"]
    try:
        date.fromisoformat(day if "-" in day else f"{day[:4]}-{day[4:6]}-{day[6:]}")
    except ValueError:
        return False
    return True


_RFC_FIELD = r'(?:"(?:[^"]++|"")*+"|[^",]*+)'
# A record in bytes, by _tokenize's grammar: a field is quoted ('""' for a quote, line breaks
# included), then anything up to the next comma (a bad_quote), or unquoted. A match stops at the
# line break that ends the record, at the quote of a field that no quote closes, or at the end.
_FIELD_BYTES = rb'(?:"(?:[^"]++|"")*+"[^,\n]*+|[^",\n][^,\n]*+|)'
_RECORD_BYTES_RE = re.compile(_FIELD_BYTES + rb"(?:," + _FIELD_BYTES + rb")*+")
# The same grammar a piece at a time, for a record skipped without being held (``_skip_record``):
# inside a quoted field, up to a quote; outside one, unquoted fields up to a line break or the
# quote that opens a field.
_QUOTED_BYTES_RE = re.compile(rb'(?:[^"]++|"")*+')
_UNQUOTED_BYTES_RE = re.compile(rb'[^,\n]*+(?:,(?:[^",\n][^,\n]*+)?)*+')
_FIELD, _OUT, _QUOTED, _QUOTE = range(
    4
)  # at a field's start; in an unquoted one; in a quoted one; just after a quote in one
_RFC_LINE_RE = re.compile(f"{_RFC_FIELD}(?:,{_RFC_FIELD})*+")
# Byte-level pre-check for control characters: deleting every other byte leaves the C0
# controls (but LF and CR) and DEL; C1 controls are U+0080..U+009F, i.e. C2 80..C2 9F.
_NOT_C0 = bytes(b for b in range(256) if not ((b < 32 and b not in (10, 13)) or b == 127))
_C1_UTF8_RE = re.compile(rb"\xc2[\x80-\x9f]")
_BOM = b"\xef\xbb\xbf"
# The canonical timestamp YYYY-MM-DDTHH:MM:SS.ffffff+00:00: fixed characters and digit positions.
_TS_SHAPE = "dddd-dd-ddTdd:dd:dd.dddddd+00:00"  # d: an ASCII digit
_TS_LENGTH = len(_TS_SHAPE)
_TS_LITERALS = tuple((i, c) for i, c in enumerate(_TS_SHAPE) if c != "d")
_TAG_BYTES = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-"  # _TAG_RE's characters
_BULK_ROWS = 512  # rows validated together: small enough to stay in the CPU caches


@dataclass(frozen=True)
class Problem:
    """One reason a file or a record is rejected.

    LINE is the physical line (1-based; None for file-level problems; a record that spans
    lines: its first) and COLUMN the 1-based character column in that line where the
    offending field or byte starts.
    """

    line: int | None
    column: int | None
    code: str
    message: str

    def as_dict(self) -> dict[str, int | str | None]:
        return {"line": self.line, "column": self.column, "code": self.code, "message": self.message}


_REPORTED = Problem(None, None, "reported", "already reported for this line")


@dataclass(frozen=True)
class Rejected:
    """A rejected record: where, why, and its text (for --rejects)."""

    line: int
    problems: tuple[Problem, ...]
    record: str


@dataclass
class Chunk:
    """What one ``feed`` produced."""

    canonical: list[str] = field(default_factory=list)  # accepted rows as canonical text, in file order
    lines: list[int] = field(default_factory=list)  # the line of each accepted row
    rejected: list[Rejected] = field(default_factory=list)
    sealed: list[tuple[int, bytes]] = field(default_factory=list)  # (chunk number, its leaf hashes)
    rows: int = 0  # records seen in this piece

    @property
    def accepted(self) -> int:
        return len(self.canonical)

    @property
    def copy_data(self) -> bytes:
        """The accepted rows in ``COPY`` text format (columns of ``CANONICAL_COLUMNS``)."""
        if not self.canonical:
            return b""
        return copy_text(self.canonical).encode()


@dataclass(frozen=True)
class Seal:
    """The Merkle seal of a batch."""

    size: int
    root: bytes
    chunk_roots: tuple[bytes, ...]

    @classmethod
    def of_chunks(cls, size: int, chunk_roots: Sequence[bytes]) -> Seal:
        """The seal of SIZE leaves whose chunks (``SEAL_CHUNK`` leaves each) have CHUNK_ROOTS."""
        return cls(size, merkle.root_of_leaf_hashes(chunk_roots), tuple(chunk_roots))


def _character_problem(ch: str) -> tuple[str, str]:
    """The code and words for a character a field may not hold."""
    if ch > "\x9f":
        return "invisible_character", f"invisible character U+{ord(ch):04X} ({unicodedata.name(ch, '?')})"
    return "control_character", f"control character U+{ord(ch):04X}"


def copy_text(rows: Sequence[str]) -> str:
    """ROWS (canonical or further TAB-joined text) as ``COPY`` text format, one per line.

    Fields cannot hold control characters, so a backslash is the only character to escape.
    """
    data = "\n".join(rows) + "\n"
    return data.replace("\\", "\\\\") if "\\" in data else data


def check_size(size: int, limit: int) -> Problem | None:
    """A problem if SIZE bytes exceeds LIMIT (checked before the file is read)."""
    if size > limit:
        return Problem(
            None,
            None,
            "file_too_large",
            f"the file has {size:,} bytes, more than the limit of {limit:,} (ingest.max_file_bytes)",
        )
    return None


def canonical_timestamp(value: datetime) -> str:
    """The canonical text of an aware datetime: UTC, microseconds, ``+00:00``."""
    return value.astimezone(UTC).isoformat(timespec="microseconds")


def canonical_leaf(values: Mapping[str, object]) -> bytes:
    """The canonical row (Merkle leaf) of a row given by column name.

    ``manufactured_at`` may be an aware datetime or its canonical text; missing
    optional columns count as empty.
    """
    parts = []
    for name in CANONICAL_COLUMNS:
        value = values.get(name)
        if isinstance(value, datetime):
            value = canonical_timestamp(value)
        parts.append("" if value is None else str(value))
    return "\t".join(parts).encode()


def seal_leaves(leaves: Iterable[bytes]) -> tuple[Seal, list[bytes]]:
    """Seal raw leaves in order; returns the seal and each chunk's leaf hashes joined."""
    sealer = LeafSealer()
    chunks = [hashes for _number, hashes in sealer.add(leaves)]
    seal, last = sealer.finish()
    return seal, chunks + [hashes for _number, hashes in last]


class LeafSealer:
    """Seals leaves as they arrive, in order: each run of ``SEAL_CHUNK`` leaves becomes a
    chunk, handed out as (chunk number, its leaf hashes joined); ``finish`` seals the
    last, shorter chunk and returns the seal over all of them."""

    def __init__(self) -> None:
        self._leaves: list[bytes] = []
        self._roots: list[bytes] = []
        self.size = 0

    def add(self, leaves: Iterable[bytes]) -> list[tuple[int, bytes]]:
        """Take LEAVES; returns the chunks they completed."""
        buf = self._leaves
        buf.extend(leaves)
        if len(buf) < SEAL_CHUNK:
            return []
        full = len(buf) - len(buf) % SEAL_CHUNK
        done = [self._seal(buf[i : i + SEAL_CHUNK]) for i in range(0, full, SEAL_CHUNK)]
        del buf[:full]
        return done

    def finish(self) -> tuple[Seal, list[tuple[int, bytes]]]:
        """The seal, and the last chunk if it is not full (sealed now)."""
        last = [self._seal(self._leaves)] if self._leaves else []
        self._leaves = []
        return Seal.of_chunks(self.size, self._roots), last

    def _seal(self, leaves: list[bytes]) -> tuple[int, bytes]:
        hashes, root = hash_chunk(leaves)
        self._roots.append(root)
        self.size += len(leaves)
        return len(self._roots) - 1, hashes


# Copying a hash state that has absorbed the prefix beats hashing `prefix + data` (one
# allocation fewer); `or` chains the None-returning updates. Hashing is most of the seal's cost.
_LEAF_STATE = hashlib.sha256(b"\x00")
_NODE_STATE = hashlib.sha256(b"\x01")


def hash_chunk(
    leaves: Sequence[bytes], leaf: Any = _LEAF_STATE.copy, node: Any = _NODE_STATE.copy
) -> tuple[bytes, bytes]:
    """The joined leaf hashes of LEAVES (one chunk, at most ``SEAL_CHUNK``) and their root."""
    hashes = [(h := leaf()).update(data) or h.digest() for data in leaves]
    if len(hashes) != SEAL_CHUNK:
        return b"".join(hashes), merkle.root_of_leaf_hashes(hashes)
    level = hashes  # a perfect tree: pair up level by level
    while len(level) > 1:
        it = iter(level)
        level = [(h := node()).update(a) or h.update(b) or h.digest() for a, b in zip(it, it, strict=False)]
    return b"".join(hashes), level[0]


def inclusion_proof(
    leaf_index: int, size: int, chunk_hashes: bytes, chunk_roots: Sequence[bytes]
) -> list[bytes]:
    """The RFC 6962 audit path of LEAF_INDEX in a sealed batch of SIZE leaves.

    CHUNK_HASHES are the joined leaf hashes of the leaf's chunk, CHUNK_ROOTS the roots
    of every chunk. The path inside the chunk (a perfect or final subtree) followed by
    the chunk's path among the chunk roots is the path in the whole tree.
    """
    if not 0 <= leaf_index < size:
        raise ValueError("leaf index out of range")
    chunk_no, offset = divmod(leaf_index, SEAL_CHUNK)
    hashes = [chunk_hashes[i : i + 32] for i in range(0, len(chunk_hashes), 32)]
    expected = min(SEAL_CHUNK, size - chunk_no * SEAL_CHUNK)
    if len(hashes) != expected or len(chunk_roots) != -(-size // SEAL_CHUNK):
        raise ValueError("stored chunk does not match the batch size")
    inner = merkle.MerkleTree.from_leaf_hashes(hashes).inclusion_proof(offset)
    outer = merkle.MerkleTree.from_leaf_hashes(list(chunk_roots)).inclusion_proof(chunk_no)
    return inner + outer


@dataclass
class _Header:
    line: int
    names: list[str]
    index: dict[str, int]  # canonical column -> field position
    width: int

    def __post_init__(self) -> None:
        self.required = tuple(self.index[c] for c in REQUIRED_COLUMNS)
        self.positions = tuple(self.index.get(c) for c in CANONICAL_COLUMNS)  # None: absent
        self.in_order = self.width == len(CANONICAL_COLUMNS) and self.positions == tuple(range(self.width))


def sku_collision_message(sku: str, name: str, other: str, where: str) -> str:
    """`SKU 'S' is named 'A' here but 'B' on WHERE`; names that differ only in their Unicode
    normalization (NFC from one system, NFD from another) look the same, so that is said and
    their code points shown (names are compared as stored, code point by code point)."""
    import unicodedata

    message = f"SKU {sku!r} is named {name!r} here but {other!r} on {where}"
    if unicodedata.normalize("NFC", name) == unicodedata.normalize("NFC", other):
        message += f" (they differ only in Unicode normalization: {name!a} vs {other!a})"
    return message


class BatchValidator:
    """Streaming validator for one batch file.

    Feed it bytes in any chunking (``feed``), then call ``finish``. Each call returns a
    ``Chunk``; the attributes below hold the running totals and the capped problem list.
    Rows are validated independently, so one bad row never hides the next one; in
    all-or-nothing mode the caller simply discards the accepted rows when
    ``error_count`` is non-zero. With ``detect_duplicates=False`` a repeated tag_id is
    accepted like any other row: the caller must detect it (the load: the primary key).
    With ``check_skus=False`` no product name is compared (nor remembered): the caller
    decides the SKU collisions together with the repeated tag_ids (the load's second pass).
    """

    def __init__(
        self,
        *,
        now: datetime,
        known_products: Mapping[str, str] | None = None,
        max_errors: int = 100,
        require_final_newline: bool = True,
        keep_rejected: bool = False,
        detect_duplicates: bool = True,
        check_skus: bool = True,
        seal: bool = True,
    ) -> None:
        if now.tzinfo is None:
            raise ValueError("now must be timezone-aware")
        self.now = now
        self.detect_duplicates = detect_duplicates
        self.known_products = dict(known_products or {})
        self.max_errors = max_errors
        self.require_final_newline = require_final_newline
        self.keep_rejected = keep_rejected
        self.header: _Header | None = None
        self.problems: list[Problem] = []
        self.warnings: list[str] = []
        self.error_count = 0
        self.rows_total = 0
        self.rows_accepted = 0
        self.rows_rejected = 0
        self.bytes_fed = 0
        self.fatal = False  # a file-level problem: no row can be accepted
        self._seen: dict[str, int] = {}  # tag_id -> first line (only with detect_duplicates)
        # every SKU met so far -> its name; SKUs new in this file -> the line that named them first
        self._sku_name: dict[str, str] = dict(self.known_products) if check_skus else _NoMemory()
        self._sku_line: dict[str, int] = {} if check_skus else _NoMemory()
        self._now_text = canonical_timestamp(now)
        self._pending: list[bytes] = []
        self._pending_bytes = 0
        self._skip: int | None = None  # skipping an over-long record: where it stands (_FIELD ...)
        self._started = False
        self._bom = False  # the file began with a UTF-8 BOM (stripped)
        self._line = 0  # physical lines consumed
        # None: the caller seals the accepted rows (``Chunk.canonical``) itself.
        self._sealer: LeafSealer | None = LeafSealer() if seal else None
        self._seal: Seal | None = None
        self._finished = False

    # -- public -------------------------------------------------------------------------
    @property
    def ok(self) -> bool:
        return self.error_count == 0 and not self.fatal

    def feed(self, data: bytes) -> Chunk:
        """Validate the complete records in DATA (plus what was left over last time)."""
        if self._finished:
            raise RuntimeError("feed after finish")
        self.bytes_fed += len(data)
        out = Chunk()
        while True:
            if self._skip is not None:  # the rest of an over-long record
                self._skip, end = _skip_record(data, self._skip)
                self._line += data.count(b"\n", 0, len(data) if end is None else end - 1)
                if end is None:
                    return out
                self._skip = None
                data = data[end:]
            if b"\n" not in data and self._started:
                self._pending.append(data)  # joined once the line ends: no quadratic copying
                self._pending_bytes += len(data)
                if self._pending_bytes > MAX_LINE_BYTES:
                    _append(out, self._too_long())
                return out
            if self._pending and self._pending_bytes + data.find(b"\n") > MAX_LINE_BYTES:
                _append(out, self._too_long())  # the record goes on past the limit in DATA: skip it there
                continue
            break
        data = b"".join((*self._pending, data)) if self._pending else data
        self._pending, self._pending_bytes = [], 0
        if not self._started:
            if len(data) < len(_BOM) and _BOM.startswith(data):
                self._pending, self._pending_bytes = [data], len(data)
                return out
            self._started = True
            if data.startswith(_BOM):
                data, self._bom = data[len(_BOM) :], True
        cut = data.rfind(b"\n")
        if cut < 0:
            if data:
                self._pending, self._pending_bytes = [data], len(data)
            return out
        body, rest = data[: cut + 1], data[cut + 1 :]
        spans: list[tuple[int, int, int]] = []
        if b'"' in body:
            spans, open_at = _spanning_records(body)
            if open_at is not None:  # a quoted field goes on past BODY: its record waits for the rest
                body, rest = body[:open_at], body[open_at:] + rest
        if rest:
            self._pending, self._pending_bytes = [rest], len(rest)
        if body:
            chunk = self._process(body, final=False, spans=spans)
            if out.rows:  # a record skipped as too long came first
                chunk.rows += out.rows
                chunk.rejected[:0] = out.rejected
            out = chunk
        if self._pending_bytes > MAX_LINE_BYTES:
            _append(out, self._too_long())
        return out

    def _too_long(self) -> Chunk:
        """Report the record being accumulated as too long and skip to its end (memory stays flat)."""
        lineno = self._line + 1
        held = b"".join(self._pending)
        self._pending, self._pending_bytes = [], 0
        breaks = held.count(b"\n")  # inside its quoted fields: a record that spans lines
        self._line = lineno + breaks
        self._skip, _ = _skip_record(held, _FIELD)  # where it stands: its end is found by what follows
        return self._reject_too_long(lineno, breaks, held[:200].decode("utf-8", "replace"))

    def _reject_too_long(self, lineno: int, breaks: int, head: str) -> Chunk:
        """Reject the record from line LINENO, with BREAKS line breaks in it, as too long; HEAD: its start."""
        what = (
            f"line {lineno} is"
            if not breaks
            else f"the record from line {lineno} (a quoted field spans lines) is"
        )
        problem = Problem(
            lineno,
            1,
            "line_too_long",
            f"{what} longer than {MAX_LINE_BYTES:,} bytes; it was skipped",
        )
        chunk = Chunk()
        if self.header is None:
            self._fatal(problem)
            return chunk
        self.rows_total += 1
        self.rows_rejected += 1
        chunk.rows = 1
        self._record(problem)
        if self.keep_rejected:
            chunk.rejected.append(Rejected(lineno, (problem,), head))
        return chunk

    def finish(self) -> Chunk:
        """Validate what is left (a last line without a line break) and close the seal."""
        if self._finished:
            raise RuntimeError("finish called twice")
        self._started = True
        rest = b"".join(self._pending)
        self._pending, self._pending_bytes = [], 0
        if self._skip is not None:
            rest = b""  # the over-long last record is already reported
            if self.require_final_newline and self.header is not None:  # ... but it is cut, too
                cut = _TRUNCATED_QUOTED if self._skip in (_QUOTED, _QUOTE) else _TRUNCATED
                self._fatal(Problem(self._line, None, "truncated", cut))
        if rest.startswith(_BOM) and self._line == 0:
            rest, self._bom = rest[len(_BOM) :], True
        chunk = Chunk()
        if rest:
            spans, open_at = _spanning_records(rest) if b'"' in rest else ([], None)
            if open_at is not None:  # the file ends inside a quoted field: the rest is its record
                first = rest.count(b"\n", 0, open_at)
                breaks = rest.count(b"\n", open_at, len(rest) - rest.endswith(b"\n"))
                spans.append((first, first + breaks, len(rest) - open_at))
            chunk = self._process(rest, final=True, spans=spans)
        self._finished = True
        if self.header is None and not self.fatal and self._line:
            self._fatal(Problem(1, None, "missing_column", "no header line: the file has only blank lines"))
        elif self.header is None and not self.fatal:
            empty = "holds only a byte-order mark" if self._bom else "is empty"
            self._fatal(Problem(1, None, "empty_file", f"the file {empty}: a header line is required"))
        elif self.header is not None and self.rows_total == 0 and not self.fatal:
            self._fatal(Problem(self.header.line + 1, None, "no_rows", "the file has a header but no rows"))
        if self._sealer is not None:
            self._seal, last = self._sealer.finish()
            chunk.sealed.extend(last)
        return chunk

    def new_products(self) -> dict[str, str]:
        """SKU -> product name for the SKUs this file introduced (not known before) in accepted rows."""
        return {sku: self._sku_name[sku] for sku in self._sku_line}

    def line_of(self, tag_id: str) -> int | None:
        """The line where TAG_ID first appeared in the file (None if it did not)."""
        return self._seen.get(tag_id)

    def field_column(self, line: str, name: str) -> int | None:
        """The 1-based column where field NAME starts in LINE, a record of this file."""
        if self.header is None or name not in self.header.index:
            return None
        fields, _ = _tokenize(line, 0)
        position = self.header.index[name]
        return fields[position][1] if position < len(fields) else None

    @property
    def seal(self) -> Seal:
        """The seal over the accepted rows (after ``finish``)."""
        if not self._finished:
            raise RuntimeError("seal before finish")
        if self._seal is None:
            raise RuntimeError("sealing is off: the caller seals the rows")
        return self._seal

    # -- processing -------------------------------------------------------------------------
    def _process(self, body: bytes, *, final: bool, spans: Sequence[tuple[int, int, int]] = ()) -> Chunk:
        """Validate BODY, whole lines (the file's last may lack its line break when FINAL); SPANS:
        the records in it that span lines, as (first, last) line indexes and their size in bytes."""
        first_line = self._line + 1
        line_problems: dict[int, list[Problem]] = {}
        if b"\x00" in body:
            self._scan_nul(body, first_line, line_problems)
        try:
            text = body.decode("utf-8")
        except UnicodeDecodeError:
            text = self._decode_lossy(body, first_line, line_problems)
        flagged: set[int] = set(line_problems)
        crlf = "\r" in text
        stray_cr = crlf and body.count(b"\r") != body.count(b"\r\n")
        if (
            body.translate(None, _NOT_C0)
            or (b"\xc2" in body and _C1_UTF8_RE.search(body))
            or stray_cr
            or any(lead in body and pattern.search(body) for lead, pattern in _INVISIBLE_UTF8)
        ):
            # Rare: find the lines; the slow path says which field and column.
            line, pos = first_line, 0
            for m in _CTRL_RE.finditer(text):
                line += text.count("\n", pos, m.start())
                pos = m.start()
                flagged.add(line)
        if crlf and not stray_cr:
            text = text.replace("\r\n", "\n")  # every CR ends a line: drop them all at once
            crlf = False
        lines = text.split("\n")
        if not final or body.endswith(b"\n"):  # (at the end: a quoted field never closed)
            lines.pop()  # body ends with a line break: the last piece is empty
        chunk = Chunk()
        self._run(lines, first_line, final, flagged, line_problems, chunk, crlf, spans)
        return chunk

    def _scan_nul(self, body: bytes, first_line: int, out: dict[int, list[Problem]]) -> None:
        pos = body.find(b"\x00")
        while pos >= 0:
            line, column = _locate(body, pos, first_line)
            out.setdefault(line, []).append(Problem(line, column, "nul_byte", "NUL byte"))
            nxt = body.find(b"\n", pos)
            pos = -1 if nxt < 0 else body.find(b"\x00", nxt)  # one report per line

    def _decode_lossy(self, body: bytes, first_line: int, out: dict[int, list[Problem]]) -> str:
        view = memoryview(body)
        pos = 0
        while pos < len(body):
            try:
                codecs.utf_8_decode(view[pos:], "strict", True)
                break
            except UnicodeDecodeError as exc:
                at = pos + exc.start
                line, column = _locate(body, at, first_line)
                out.setdefault(line, []).append(
                    Problem(line, column, "invalid_utf8", f"invalid UTF-8 (byte 0x{body[at]:02x})")
                )
                nxt = body.find(b"\n", at)  # one report per line
                pos = len(body) if nxt < 0 else nxt + 1
        return body.decode("utf-8", "replace")

    def _run(
        self,
        lines: list[str],
        first_line: int,
        final: bool,
        flagged: set[int],
        line_problems: dict[int, list[Problem]],
        chunk: Chunk,
        crlf: bool,
        spans: Sequence[tuple[int, int, int]] = (),
    ) -> None:
        last = first_line + len(lines) - 1
        if final and self.require_final_newline:
            flagged.add(last)  # a last line without a line break goes to the slow path
        # A CR ends a line only before an LF. A last line without one keeps its CR when a last
        # line may lack a break (a control character there); otherwise it is `truncated` alone.
        keeps_cr = last if final and not self.require_final_newline else None
        spanning = {first: end for first, end, _ in spans}  # first line -> last line (indexes)
        skip = 0
        while self.header is None and skip < len(lines) and not self.fatal:
            lineno = first_line + skip
            if skip in spanning:
                line = self._joined(lines, skip, spanning[skip], first_line, crlf, keeps_cr)
                skip = spanning[skip] + 1
            else:
                raw = lines[skip]
                line = raw[:-1] if crlf and raw[-1:] == "\r" and lineno != keeps_cr else raw
                skip += 1
            if not line:
                continue  # a file of only blank lines has no header (``finish`` says so)
            if lineno > 1:  # the header is the first line; a blank line is no record (RFC 4180)
                self._fatal(
                    Problem(
                        1,
                        None,
                        "missing_column",
                        "no header line: line 1 is blank (the header must be the first line; "
                        f"line {lineno} is the first with text)",
                    )
                )
            else:
                self.header = self._read_header(lineno, line, line_problems.get(lineno))
        if not self.fatal and self.header is not None and skip < len(lines):
            careful_last = last if final else None
            ends = [(skip, len(lines))]  # runs of one-line records, between those that span lines
            sizes = {first: size for first, _, size in spans}
            for first, end, _ in spans:
                if first >= skip:
                    ends[-1:] = [(ends[-1][0], first), (end + 1, len(lines))]
            for run_start, run_end in ends:
                for start in range(run_start, run_end, _BULK_ROWS):
                    part = lines[start : min(start + _BULK_ROWS, run_end)]
                    if crlf or not self._bulk(part, first_line + start, flagged, chunk):
                        self._careful(
                            part,
                            first_line + start,
                            careful_last,
                            flagged,
                            line_problems,
                            chunk,
                            crlf,
                            keeps_cr,
                        )
                if run_end < len(lines):  # the record that spans lines from RUN_END
                    end = spanning[run_end]
                    record = self._joined(lines, run_end, end, first_line, crlf, keeps_cr)
                    lineno = first_line + run_end
                    if sizes[run_end] > MAX_LINE_BYTES:  # as if it had come in smaller pieces
                        head = record.encode()[:200].decode("utf-8", "replace")
                        _append(chunk, self._reject_too_long(lineno, end - run_end, head))
                        if final and end == len(lines) - 1 and self.require_final_newline:
                            quoted = any(p.code == "unterminated_quote" for p in _tokenize(record, lineno)[1])
                            cut = _TRUNCATED_QUOTED if quoted else _TRUNCATED
                            self._fatal(Problem(first_line + end, None, "truncated", cut))
                        continue
                    pre = [p for i in range(lineno, first_line + end + 1) for p in line_problems.get(i, ())]
                    self.rows_total += 1
                    chunk.rows += 1
                    values = self._slow(lineno, record, pre, final and end == len(lines) - 1, chunk)
                    if values is not None:  # (its line break is in a field: never)
                        self._emit(["\t".join(values)], [lineno], chunk)
        self._line = last

    @staticmethod
    def _joined(
        lines: list[str], first: int, last: int, first_line: int, crlf: bool, keeps_cr: int | None
    ) -> str:
        """Lines FIRST to LAST (indexes), one record, as one text: line breaks as LF, as in a field."""
        return "\n".join(
            raw[:-1] if crlf and raw[-1:] == "\r" and first_line + i != keeps_cr else raw
            for i, raw in enumerate(lines[first : last + 1], start=first)
        )

    def _bulk(self, lines: list[str], first_line: int, flagged: set[int], chunk: Chunk) -> bool:
        """Validate a few hundred rows column by column; False (and nothing changed) if any of
        them needs a closer look, and then ``_careful`` takes them row by row.

        Each check is the bulk form of one in ``_careful``/``_slow`` and errs on the safe side:
        rows are taken here only if each would pass there with the same canonical text
        (tests/core/test_ingest_properties.py holds the two paths equal).
        """
        header = self.header
        assert header is not None
        n = len(lines)
        if (flagged and not flagged.isdisjoint(range(first_line, first_line + n))) or "" in lines:
            return False
        # Each row as its fields joined by TAB (a control character, so in no field), then
        # all the fields of all the rows in one list, a NUL (in no field either) between
        # rows: column I is fields[I::width + 1] if every row has WIDTH fields.
        rows = list(map(str.replace, lines, repeat(","), repeat("\t")))
        quoted = list(compress(range(n), map(contains, lines, repeat('"'))))
        if quoted:
            # One strict reader for all of them. A record spanning lines shows as fewer
            # records; a quote left in any field (escaped "" or stray) is left to _careful.
            try:
                parsed = list(csv.reader([lines[i] for i in quoted], strict=True))
            except csv.Error:
                return False
            if len(parsed) != len(quoted) or '"' in "".join(map("".join, parsed)):
                return False
            for i, values in zip(quoted, parsed, strict=True):
                rows[i] = "\t".join(values)
        width = header.width
        fields = "\t\x00\t".join(rows).split("\t")
        step = width + 1
        if len(fields) != n * step - 1 or fields[width::step] != ["\x00"] * (n - 1):
            return False  # some row has another number of fields
        blank = [""] * n
        columns = [blank if p is None else fields[p::step] for p in header.positions]
        canonical = rows if header.in_order else list(map("\t".join, zip(*columns, strict=True)))
        tabbed = "\t".join(canonical)
        if (
            not tabbed.isascii()
            or tabbed.rfind(" \t") >= 0
            or tabbed.rfind("\t ") >= 0
            or tabbed[:1] == " "
            or tabbed[-1:] == " "
        ):
            # Some field may have white space to trim (beyond ASCII, only strip() can tell).
            fields = list(map(str.strip, fields))
            columns = [blank if p is None else fields[p::step] for p in header.positions]
            canonical = list(map("\t".join, zip(*columns, strict=True)))
        tags, skus, names, factories, times = columns[:5]
        if not (
            all(tags)
            and all(skus)
            and all(names)
            and all(factories)
            and max(map(len, tags)) <= TAG_MAX
            and max(map(len, skus)) <= SKU_MAX
            and (
                max(map(len, canonical)) <= TEXT_MAX  # a row this short bounds every field
                or all(max(map(len, columns[i])) <= TEXT_MAX for i in range(2, len(columns)) if i != 4)
            )
            and not "".join(tags).encode().translate(None, _TAG_BYTES)
            and self._canonical_times(times)
        ):
            return False
        known = list(map(self._sku_name.get, skus))
        new: dict[str, int] = {}  # SKUs these rows introduce -> index of the first
        if known != names:  # some SKU is new here, or named differently (rare once a file is under way)
            named: dict[str, str] = {}
            for i, (sku, name, before) in enumerate(zip(skus, names, known, strict=True)):
                if before is None:
                    before = named.setdefault(sku, name)
                    new.setdefault(sku, i)
                if before != name:
                    return False  # a SKU collision
        if self.detect_duplicates and (len(set(tags)) != n or not self._seen.keys().isdisjoint(tags)):
            return False
        # Accepted: register.
        numbers = range(first_line, first_line + n)
        if self.detect_duplicates:
            self._seen.update(zip(tags, numbers, strict=True))
        for sku, i in new.items():
            self._sku_name[sku] = names[i]
            self._sku_line[sku] = first_line + i
        self.rows_total += n
        chunk.rows += n
        self._emit(canonical, list(numbers), chunk)
        return True

    def _canonical_times(self, times: list[str]) -> bool:
        """True if every value is a valid timestamp already in canonical form (UTC,
        microseconds) and none is in the future."""
        n = len(times)
        if set(map(len, times)) != {_TS_LENGTH}:
            return False
        joined = "".join(times)
        if not joined.isascii():
            return False
        for pos, char in _TS_LITERALS:
            if joined[pos::_TS_LENGTH] != char * n:
                return False
        try:
            list(map(datetime.fromisoformat, times))  # digits and ranges (the shape is fixed above)
        except ValueError:
            return False
        return max(times) <= self._now_text  # canonical texts compare like the times they denote

    def _careful(
        self,
        lines: list[str],
        first_line: int,
        last: int | None,
        flagged: set[int],
        line_problems: dict[int, list[Problem]],
        chunk: Chunk,
        crlf: bool,
        keeps_cr: int | None = None,
    ) -> None:
        """Validate row by row: the reference for every rule. LAST is the file's last line
        when this piece ends the file (a row there may be truncated), else None; line KEEPS_CR
        keeps a trailing CR (it is not before an LF)."""
        header = self.header
        assert header is not None
        out: list[str] = []
        out_lines: list[int] = []
        lineno = first_line - 1
        # Hot loop: locals only. Any doubt sends the record to _slow, the single
        # source of truth for problems and their columns.
        dedupe = self.detect_duplicates
        seen = self._seen
        sku_name = self._sku_name
        sku_line = self._sku_line
        now = self.now
        fromiso = datetime.fromisoformat
        ts_shape = _TS_RE.fullmatch
        tag_match = _TAG_RE.fullmatch
        frac = _FRACTION_RE.search
        rfc_line = _RFC_LINE_RE.fullmatch
        csv_reader = csv.reader
        width = header.width
        i_tag, i_sku, i_name, i_fac, i_ts = header.required
        i_lot, i_color, i_size = (header.index.get(c) for c in OPTIONAL_COLUMNS)
        rows = 0
        for raw in lines:
            lineno += 1
            line = raw[:-1] if crlf and raw[-1:] == "\r" and lineno != keeps_cr else raw
            rows += 1  # a blank line too: _slow rejects it
            values: tuple[str, ...] | None = None
            fields = None
            if flagged and lineno in flagged:
                pass
            elif '"' in line:
                if rfc_line(line) is not None:
                    with suppress(csv.Error):  # a field over csv's size limit: _slow reports it
                        fields = next(csv_reader((line,)))
            else:
                fields = line.split(",")
            if fields is not None and len(fields) == width:
                tag = fields[i_tag].strip()
                sku = fields[i_sku].strip()
                name = fields[i_name].strip()
                fac = fields[i_fac].strip()
                ts = fields[i_ts].strip()
                lot = fields[i_lot].strip() if i_lot is not None else ""
                color = fields[i_color].strip() if i_color is not None else ""
                size = fields[i_size].strip() if i_size is not None else ""
                known = None
                good = (
                    tag_match(tag) is not None
                    and not (dedupe and tag in seen)
                    and 0 < len(sku) <= SKU_MAX
                    and 0 < len(name) <= TEXT_MAX
                    and 0 < len(fac) <= TEXT_MAX
                    and len(lot) <= TEXT_MAX
                    and len(color) <= TEXT_MAX
                    and len(size) <= TEXT_MAX
                )
                if good:
                    known = sku_name.get(sku)
                    good = known is None or known == name
                if good:
                    try:
                        dt = fromiso(ts) if ts_shape(ts) is not None else None
                    except ValueError:
                        dt = None
                    if dt is None or dt.tzinfo is None or dt > now:
                        good = False
                    elif not (len(ts) == 32 and ts[19] == "." and ts[10] == "T" and ts.endswith("+00:00")):
                        if frac(ts):
                            good = False
                        try:
                            ts = dt.astimezone(UTC).isoformat(timespec="microseconds")
                        except OverflowError:
                            good = False
                if good:
                    if dedupe:
                        seen[tag] = lineno
                    if known is None:
                        sku_name[sku] = name
                        sku_line[sku] = lineno
                    values = (tag, sku, name, fac, ts, lot, color, size)
            if values is None:
                values = self._slow(lineno, line, line_problems.get(lineno, ()), lineno == last, chunk)
            if values is None:
                continue
            out.append("\t".join(values))
            out_lines.append(lineno)
        self.rows_total += rows
        chunk.rows += rows
        self._emit(out, out_lines, chunk)

    def _emit(self, rows: list[str], lines: list[int], chunk: Chunk) -> None:
        """Hand out accepted canonical ROWS (from LINES) and seal every completed chunk of leaves."""
        self.rows_accepted += len(rows)
        chunk.canonical.extend(rows)
        chunk.lines.extend(lines)
        if self._sealer is not None:
            chunk.sealed.extend(self._sealer.add(map(str.encode, rows)))

    # -- header ---------------------------------------------------------------------------------
    def _read_header(self, lineno: int, line: str, pre: list[Problem] | None) -> _Header | None:
        problems = list(pre or ())
        fields, structural = _tokenize(line, lineno)
        problems.extend(structural)
        names: list[str] = []
        written: list[str] = []  # as in the file, for messages
        index: dict[str, int] = {}
        for pos, (value, column) in enumerate(fields):
            name = value.strip().lower()
            names.append(name)
            written.append(value.strip())
            m = _FIELD_CTRL_RE.search(value)
            if m is not None and value[m.start()] != "\x00":  # NUL: reported for the whole line
                quoted = line[column - 1 : column] == '"'
                at = m.start() + (1 + value.count('"', 0, m.start()) if quoted else 0)
                code, what = _character_problem(value[m.start()])
                problems.append(Problem(lineno, column + at, code, f"header: {what} is not allowed"))
            if name in CANONICAL_COLUMNS:
                if name in index:
                    problems.append(
                        Problem(
                            lineno,
                            column,
                            "duplicate_column",
                            f"column {name!r} appears twice in the header (first at field {index[name] + 1})",
                        )
                    )
                else:
                    index[name] = pos
        missing = [c for c in REQUIRED_COLUMNS if c not in index]
        if missing:
            problems.append(
                Problem(
                    lineno,
                    None,
                    "missing_column",
                    f"the header lacks required column(s): {', '.join(missing)}"
                    + (f" (found: {_some_names([n for n in written if n]) or 'nothing'})" if names else ""),
                )
            )
        # each named once: a column written twice is ignored twice, but warned about once
        unknown = list(
            dict.fromkeys(w for n, w in zip(names, written, strict=True) if n not in CANONICAL_COLUMNS)
        )
        if unknown:
            self.warnings.append(f"ignoring unknown column(s): {_some_names(unknown)}")
        if problems:
            for p in problems:
                self._fatal(p)
            return None
        return _Header(lineno, names, index, len(fields))

    def _fatal(self, problem: Problem) -> None:
        self.fatal = True
        self._record(problem)

    def _record(self, problem: Problem) -> None:
        self.error_count += 1
        if len(self.problems) < self.max_errors:
            self.problems.append(problem)

    # -- the slow path ------------------------------------------------------------------------
    def _slow(
        self, lineno: int, line: str, pre: Sequence[Problem], truncated: bool, chunk: Chunk
    ) -> tuple[str, ...] | None:
        """Validate one record field by field, with columns; register and return its values."""
        header = self.header
        assert header is not None
        problems: list[Problem] = list(pre)
        fields, structural = _tokenize(line, lineno)
        problems.extend(structural)
        unterminated = next((p for p in structural if p.code == "unterminated_quote"), None)
        # A quote open at the file's end: whatever the last byte, the record was cut.
        truncated = (truncated or unterminated is not None) and self.require_final_newline
        if truncated:
            # The file's problem, not the row's: with --partial too nothing loads, or the head of a
            # cut upload would be sealed as a batch and the whole file never load after it.
            self.fatal = True
            if unterminated is not None:
                problems.append(Problem(lineno, unterminated.column, "truncated", _TRUNCATED_QUOTED))
            else:
                problems.append(Problem(lineno, len(line) + 1, "truncated", _TRUNCATED))
        values: dict[str, str] = {}
        if not line:  # RFC 4180 has no blank records; in a factory's file it is a hand edit
            if not truncated:  # (a lone CR cut off at the end is `truncated` alone)
                problems.append(
                    Problem(
                        lineno,
                        1,
                        "field_count",
                        f"blank line: a row has {header.width} fields; remove the line",
                    )
                )
        elif unterminated is not None:
            pass  # the open quote swallowed the rest of the file: counting fields says nothing
        elif "\n" in line:
            # RFC 4180 reads the lines as one record, its line breaks inside a quoted field: a control
            # character, so the record is rejected whole, at its first line; its other fields say nothing.
            broken, at = next((i, c) for i, (value, c) in enumerate(fields) if "\n" in value)
            what = header.names[broken] if broken < header.width else f"field {broken + 1}"
            problems.append(
                Problem(
                    lineno,
                    at,
                    "control_character",
                    f"{what}: line break inside a quoted field, which runs on to line "
                    f"{lineno + line.count(chr(10))}; a field may not hold one",
                )
            )
        elif len(fields) != header.width:
            # A stray CR or other control character splits or joins fields as a person reads
            # them: name it where it is, or the count is all the row says.
            m = _FIELD_CTRL_RE.search(line)
            if m is not None and line[m.start()] != "\x00":  # NUL: reported for the whole line
                code, what = _character_problem(line[m.start()])
                problems.append(Problem(lineno, m.start() + 1, code, f"{what} is not allowed"))
            if len(fields) > header.width:
                column = fields[header.width][1]
                detail = f"{len(fields)} fields, the header has {header.width}"
            else:
                column = len(line) + 1
                detail = f"{len(fields)} field(s), the header has {header.width}"
            problems.append(Problem(lineno, column, "field_count", f"wrong number of fields: {detail}"))
        else:
            for name in CANONICAL_COLUMNS:
                pos = header.index.get(name)
                if pos is None:
                    values[name] = ""
                    continue
                raw, column = fields[pos]
                value, problem = self._check_field(
                    name, raw, lineno, column, quoted=line[column - 1 : column] == '"'
                )
                if problem is None:
                    values[name] = value
                elif problem is not _REPORTED:
                    problems.append(problem)
            # A name is compared only for a row that passes its own checks: the load's second
            # pass, which decides names with the repeated tag_ids, sees only those rows.
            own_ok = not problems
            tag = values.get("tag_id")
            if tag is not None and self.detect_duplicates:
                first = self._seen.get(tag)
                if first is not None:
                    problems.append(
                        Problem(
                            lineno,
                            fields[header.index["tag_id"]][1],
                            "duplicate_tag_id",
                            f"duplicate tag_id {tag!r} (first on line {first})",
                        )
                    )
            sku, pname = values.get("sku"), values.get("product_name")
            if own_ok and sku is not None and pname is not None:
                known_name = self._sku_name.get(sku)
                if known_name is not None and known_name != pname:
                    first_line = self._sku_line.get(sku)
                    where = f"line {first_line}" if first_line is not None else "the products already loaded"
                    problems.append(
                        Problem(
                            lineno,
                            fields[header.index["product_name"]][1],
                            "sku_collision",
                            sku_collision_message(sku, pname, known_name, where),
                        )
                    )
        if problems:
            self.rows_rejected += 1
            for p in problems:
                self._record(p)
            if self.keep_rejected:
                chunk.rejected.append(Rejected(lineno, tuple(problems), line))
            return None
        # Only an accepted row claims its tag_id and names its SKU (as on the fast paths): a
        # rejected one, say with a bad timestamp or a mangled name, makes no later row a repeat.
        if self.detect_duplicates:
            self._seen[values["tag_id"]] = lineno
        sku = values["sku"]
        if sku not in self._sku_name:
            self._sku_name[sku] = values["product_name"]
            self._sku_line[sku] = lineno
        return tuple(values[c] for c in CANONICAL_COLUMNS)

    def _check_field(
        self, name: str, raw: str, lineno: int, column: int, *, quoted: bool = False
    ) -> tuple[str, Problem | None]:
        m = _FIELD_CTRL_RE.search(raw)
        if m is not None:
            at = m.start()
            ch = raw[at]
            if ch == "\x00":
                return raw, _REPORTED  # the byte scan has reported it for the whole line
            if quoted:  # past the opening quote, and each quote before it was written twice
                at += 1 + raw.count('"', 0, at)
            code, what = _character_problem(ch)
            return raw, Problem(lineno, column + at, code, f"{name}: {what} is not allowed")
        value = raw.strip()
        if not value:
            if name in REQUIRED_COLUMNS:
                return value, Problem(lineno, column, "empty_field", f"{name} is empty")
            return value, None
        limit = TAG_MAX if name == "tag_id" else SKU_MAX if name == "sku" else TEXT_MAX
        if len(value) > limit:
            return value, Problem(
                lineno, column, "too_long", f"{name} has {len(value)} characters, more than {limit}"
            )
        if name == "tag_id" and _TAG_RE.fullmatch(value) is None:
            return value, Problem(
                lineno,
                column,
                "bad_tag_id",
                f"tag_id {value!r} may contain only letters, digits, '_' and '-'",
            )
        if name == "manufactured_at":
            return self._check_timestamp(value, lineno, column)
        return value, None

    def _check_timestamp(self, value: str, lineno: int, column: int) -> tuple[str, Problem | None]:
        shaped = _TS_RE.fullmatch(value) is not None
        try:
            if not shaped:
                raise ValueError(value)
            # fromisoformat takes no lower-case z: as upper case, the row and leaf are that form's
            dt = datetime.fromisoformat(value.upper())
        except ValueError:
            if shaped and _leap_second_or_24(value):
                return value, Problem(
                    lineno,
                    column,
                    "bad_timestamp",
                    f"manufactured_at {value!r}: a leap second or 24:00 is not supported; "
                    "write 23:59:59.999999 or the next day's 00:00",
                )
            if shaped and (no_day := _no_such_day(value)) is not None:
                return value, Problem(lineno, column, "bad_timestamp", f"manufactured_at {value!r}: {no_day}")
            if (other := _WEEK_OR_ORDINAL_RE.match(value)) is not None:
                kind = "a week" if other["week"] else "an ordinal"
                return value, Problem(
                    lineno,
                    column,
                    "bad_timestamp",
                    f"manufactured_at {value!r} is {kind} date: week and ordinal dates are not accepted; "
                    "use a calendar date such as 2024-05-01T08:30:00Z",
                )
            return value, Problem(
                lineno,
                column,
                "bad_timestamp",
                f"manufactured_at {value!r} is not an ISO 8601 date and time such as 2024-05-01T08:30:00Z",
            )
        if dt.tzinfo is None:
            return value, Problem(
                lineno,
                column,
                "bad_timestamp",
                f"manufactured_at {value!r} has no time zone (add Z or an offset such as +02:00)",
            )
        if _FRACTION_RE.search(value):
            return value, Problem(
                lineno,
                column,
                "bad_timestamp",
                f"manufactured_at {value!r} is more precise than microseconds",
            )
        try:
            canonical = canonical_timestamp(dt)
        except OverflowError:
            return value, Problem(
                lineno, column, "bad_timestamp", f"manufactured_at {value!r} is out of range"
            )
        if dt > self.now:
            return value, Problem(
                lineno,
                column,
                "future_timestamp",
                f"manufactured_at {value!r} is in the future (now is {canonical_timestamp(self.now)})",
            )
        return canonical, None


class _NoMemory(dict[Any, Any]):
    """A map that keeps nothing: with it, every SKU reads as new and none is remembered."""

    def get(self, key: Any, default: Any = None) -> Any:
        return default

    def __contains__(self, key: object) -> bool:
        return False

    def __setitem__(self, key: Any, value: Any) -> None:
        pass


def _locate(body: bytes, pos: int, first_line: int) -> tuple[int, int]:
    """(line, 1-based character column) of byte offset POS in BODY."""
    start = body.rfind(b"\n", 0, pos) + 1
    line = first_line + body.count(b"\n", 0, start)
    column = len(body[start:pos].decode("utf-8", "replace")) + 1
    return line, column


_TRUNCATED = (
    "the file ends in the middle of a row (no line break after the last row); was the upload cut short?"
)
_TRUNCATED_QUOTED = "the file ends inside a quoted field (no quote closes it); was the upload cut short?"


def _append(chunk: Chunk, more: Chunk) -> None:
    """Add what MORE (a later piece of the same feed) produced to CHUNK."""
    chunk.canonical.extend(more.canonical)
    chunk.lines.extend(more.lines)
    chunk.rejected.extend(more.rejected)
    chunk.sealed.extend(more.sealed)
    chunk.rows += more.rows


def _spanning_records(body: bytes) -> tuple[list[tuple[int, int, int]], int | None]:
    """The records of BODY (whole lines, or the file's end) that span lines, as (first, last)
    line indexes and size in bytes, and where one still open at BODY's end (a quote no quote
    closes) starts.

    Only the lines with a quote are read: a line without one is a record of its own."""
    spans: list[tuple[int, int, int]] = []
    line = counted = 0
    pos = body.find(b'"')
    while pos >= 0:
        start = body.rfind(b"\n", 0, pos) + 1
        match = _RECORD_BYTES_RE.match(body, start)
        assert match is not None  # (every field may be empty)
        end = match.end()
        if end < len(body) and body[end] == 0x22:
            return spans, start
        breaks = body.count(b"\n", start, end)
        if breaks:
            line += body.count(b"\n", counted, start)
            counted = start
            spans.append((line, line + breaks, end - start))
        pos = body.find(b'"', end)
    return spans, None


def _skip_record(data: bytes, state: int) -> tuple[int, int | None]:
    """Read DATA, more of a record being skipped, from STATE: (its state at DATA's end, None), or
    (_FIELD, the offset just past the line break that ends it). Holds nothing, whatever the record."""
    pos, n = 0, len(data)
    while pos < n:
        if state == _QUOTED:
            match = _QUOTED_BYTES_RE.match(data, pos)
            assert match is not None
            pos = match.end()
            if pos < n:
                pos, state = pos + 1, _QUOTE  # a closing quote, or the first of two
        elif state == _QUOTE:
            if data[pos] == 0x22:
                pos, state = pos + 1, _QUOTED
            else:
                state = _OUT
        elif state == _FIELD and data[pos] == 0x22:
            pos, state = pos + 1, _QUOTED
        else:
            match = _UNQUOTED_BYTES_RE.match(data, pos)
            assert match is not None
            pos = match.end()
            if pos == n:
                state = _FIELD if data[n - 1] == 0x2C else _OUT
            elif data[pos] == 0x0A:
                return _FIELD, pos + 1
            else:  # the quote that opens a field
                pos, state = pos + 1, _QUOTED
    return state, None


_NAMES_SHOWN = 10  # a header error quotes this many column names at most ...
_NAME_SHOWN = 40  # ... each cut to this many characters: a header may be one 1 MiB field


def _some_names(names: Sequence[str]) -> str:
    """NAMES quoted for a one-line message: the first few, each cut short, then how many more."""
    shown = [repr(n if len(n) <= _NAME_SHOWN else n[:_NAME_SHOWN] + "...") for n in names[:_NAMES_SHOWN]]
    more = len(names) - len(shown)
    return ", ".join(shown) + (f", ... and {more} more" if more else "")


def _tokenize(line: str, lineno: int) -> tuple[list[tuple[str, int]], list[Problem]]:
    """Split one physical line by RFC 4180; fields as (value, 1-based column)."""
    fields: list[tuple[str, int]] = []
    problems: list[Problem] = []
    n = len(line)
    pos = 0
    while True:
        if pos < n and line[pos] == '"':
            m = _QUOTED_RE.match(line, pos)
            if m is None:
                problems.append(
                    Problem(
                        lineno,
                        pos + 1,
                        "unterminated_quote",
                        "quoted field is never closed: the file ends inside it",
                    )
                )
                fields.append((line[pos + 1 :].replace('""', '"'), pos + 1))
                return fields, problems
            value = m.group()[1:-1].replace('""', '"')
            end = m.end()
            if end < n and line[end] != ",":
                problems.append(
                    Problem(
                        lineno,
                        end + 1,
                        "bad_quote",
                        "unexpected character after a closing quote (expected ',')",
                    )
                )
                comma = line.find(",", end)
                value += line[end : n if comma < 0 else comma]
                end = n if comma < 0 else comma
        else:
            m = _UNQUOTED_RE.match(line, pos)
            assert m is not None
            value = m.group()
            end = m.end()
            q = value.find('"')
            if q >= 0:
                problems.append(
                    Problem(
                        lineno,
                        pos + q + 1,
                        "bad_quote",
                        "quote inside an unquoted field (quote the whole field and double the quote)",
                    )
                )
        fields.append((value, pos + 1))
        if end >= n:
            return fields, problems
        pos = end + 1


# -- sample batches -------------------------------------------------------------------

_ADJECTIVES = (
    "Classic", "Urban", "Trail", "Coastal", "Alpine", "Studio", "Heritage", "Nordic",
    "Summit", "Metro", "Harbor", "Canyon", "Prairie", "Atlas", "Pioneer", "Vista",
)  # fmt: skip
_NOUNS = (
    "Runner", "Jacket", "Backpack", "Tote", "Sneaker", "Parka", "Boot", "Hoodie",
    "Cap", "Duffel", "Vest", "Loafer", "Satchel", "Scarf", "Glove", "Sandal",
)  # fmt: skip
_COLORS = ("black", "white", "navy", "olive", "red", "grey", "sand", "teal")
_SIZES = ("XS", "S", "M", "L", "XL", "36", "38", "40", "42", "44")
SAMPLE_HEADER = "tag_id,sku,product_name,factory_id,manufactured_at,lot,color,size\n"
SAMPLE_SKUS = 1000
SAMPLE_FACTORIES = 20
_SAMPLE_START = datetime(2024, 1, 1, tzinfo=UTC)
_SAMPLE_SPAN = 366 * 86400


def sample_product_name(sku_number: int) -> str:
    """The product name of sample SKU number N: fixed, so samples never collide.

    Several SKUs share a name (variants of one product), as in a real catalogue; one SKU
    never has two.
    """
    a = _ADJECTIVES[sku_number % len(_ADJECTIVES)]
    n = _NOUNS[(sku_number // len(_ADJECTIVES)) % len(_NOUNS)]
    return f"{a} {n}"


def sample_rows(rows: int, seed: int) -> Iterator[str]:
    """Lines (with line breaks) of a realistic batch: header, then ROWS rows, from SEED.

    Tag ids are distinct within a sample (and, with 48 random bits, across seeds in
    practice); every SKU always has the same product name; times lie in 2024 (UTC);
    every tenth product name has a comma and so is quoted.
    """
    rng = random.Random(f"voke-sample:{seed}:{rows}")  # other sizes, other tags
    yield SAMPLE_HEADER
    # Distinct without remembering them: row i's tag is a keyed permutation of i over the 48-bit
    # tag space (a Feistel network is one whatever its round function), so memory stays flat.
    keys = [rng.getrandbits(24) for _ in range(4)]

    def tag_of(i: int) -> int:
        left, right = i >> 24, i & 0xFFFFFF
        for key in keys:
            left, right = right, left ^ ((((right ^ key) * 0x9E3779B1) >> 11) & 0xFFFFFF)
        return (left << 24) | right

    tags = map(tag_of, range(rows))
    names = [sample_product_name(i) for i in range(SAMPLE_SKUS)]
    names = [f'"{n}, limited"' if i % 10 == 9 else n for i, n in enumerate(names)]
    rand = rng.random
    randrange = rng.randrange
    for tag in tags:
        s = randrange(SAMPLE_SKUS)
        fac = randrange(1, SAMPLE_FACTORIES + 1)
        ts = _SAMPLE_START + timedelta(microseconds=int(rand() * _SAMPLE_SPAN * 1_000_000))
        color = _COLORS[s % len(_COLORS)] if s % 3 else ""
        size = _SIZES[randrange(len(_SIZES))]
        yield (
            f"T{tag:012X},SKU-{s:05d},{names[s]},FAC-{fac:02d},"
            f"{ts.isoformat(timespec='microseconds')},L{ts:%y%m%d}-{fac:02d}{randrange(1000):03d},"
            f"{color},{size}\n"
        )


def write_sample(out: IO[bytes], rows: int, seed: int) -> int:
    """Write a sample batch to OUT (binary); returns the number of bytes written."""
    written = 0
    buf: list[str] = []
    for line in sample_rows(rows, seed):
        buf.append(line)
        if len(buf) >= 8192:
            data = "".join(buf).encode()
            out.write(data)
            written += len(data)
            buf = []
    data = "".join(buf).encode()
    out.write(data)
    return written + len(data)
