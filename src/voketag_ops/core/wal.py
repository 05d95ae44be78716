"""WAL arithmetic for DR: LSNs, segment file names, timeline histories, archive gaps.

Pure functions over names and numbers; the adapter lists the archive and reads the
history files. A restore replays, for each segment after the base backup's start,
the file of the newest timeline on the target's history that had begun by then, so
that is the file the archive must hold (the old timeline's copy of the segment with
the switch point lacks everything written after the promotion). Every name and number
depends on the cluster's segment size, fixed at initdb, so each function takes it: no default
to fall back on silently.
"""

from __future__ import annotations

import re
from bisect import bisect_left
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, overload

# Where a node's data stands: the WAL it has written (a leader) or replayed (a standby). A
# comparison of two nodes' rows says at which LSN each was read.
WAL_POSITION_SQL = (
    "(case when pg_is_in_recovery() then pg_last_wal_replay_lsn() else pg_current_wal_lsn() end)::text"
)
SEGMENT_NAME = re.compile(r"^[0-9A-F]{24}$")
HISTORY_NAME = re.compile(r"^([0-9A-F]{8})\.history$")


# A commit record as pg_waldump describes it ("desc: COMMIT 2026-11-27 20:08:58.598712 UTC; ...",
# "desc: COMMIT_PREPARED 745: ..."), its time in the zone of TZ, which voke sets to UTC.
WALDUMP_COMMIT = re.compile(
    r"desc: COMMIT(?:_PREPARED \d+:)? (\d{4}-\d\d-\d\d \d\d:\d\d:\d\d(?:\.\d+)?) (UTC|[+-]\d\d)\b"
)
# How pg_waldump says it reached the end of the WAL there is: the next record is not there
# (zeros, a torn last record, an old page of a recycled segment), or nothing valid follows
# the start point at all.
WALDUMP_END = ("error in WAL record at ", "could not find a valid record after ")


def waldump_time(text: str, zone: str) -> datetime:
    """A time as pg_waldump prints it (TEXT, and ZONE: `UTC` or `+02`), in UTC."""
    return datetime.fromisoformat(text + ("+00:00" if zone == "UTC" else zone + ":00")).astimezone(UTC)


def commit_at(line: str) -> datetime | None:
    """The commit time of a pg_waldump output LINE describing a commit record, else None."""
    m = WALDUMP_COMMIT.search(line)
    return waldump_time(*m.groups()) if m else None


def parse_lsn(text: str) -> int:
    """'16/B374D848' -> integer byte position."""
    high, _, low = text.strip().partition("/")
    if not low:
        raise ValueError(f"not an LSN: {text!r}")
    return (int(high, 16) << 32) | int(low, 16)


def format_lsn(value: int) -> str:
    return f"{value >> 32:X}/{value & 0xFFFFFFFF:X}"


def segments_per_id(segment_size: int) -> int:
    return 0x100000000 // segment_size


def segment_name(timeline: int, segno: int, segment_size: int) -> str:
    per = segments_per_id(segment_size)
    return f"{timeline:08X}{segno // per:08X}{segno % per:08X}"


def parse_segment_name(name: str, segment_size: int) -> tuple[int, int]:
    """'000000020000000000000005' -> (timeline 2, segno 5)."""
    if not SEGMENT_NAME.match(name):
        raise ValueError(f"not a WAL segment name: {name!r}")
    return int(name[:8], 16), int(name[8:16], 16) * segments_per_id(segment_size) + int(name[16:], 16)


def segno_of(lsn: int, segment_size: int) -> int:
    return lsn // segment_size


@dataclass(frozen=True)
class TimelineSpan:
    """One timeline on a history path: it begins at BEGIN (an LSN) and ends at END (None: open)."""

    timeline: int
    begin: int
    end: int | None


def parse_history(text: str) -> list[tuple[int, int]]:
    """The (parent timeline, switch point LSN) lines of a `.history` file, oldest first."""
    entries: list[tuple[int, int]] = []
    for raw in text.splitlines():
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        fields = line.split()
        if len(fields) < 2:
            raise ValueError(f"malformed timeline history line: {raw!r}")
        entries.append((int(fields[0]), parse_lsn(fields[1])))
    return entries


def timeline_path(timeline: int, history: list[tuple[int, int]]) -> list[TimelineSpan]:
    """Every timeline leading to TIMELINE (from its history file), with where each began and ended."""
    spans: list[TimelineSpan] = []
    begin = 0
    for parent, switch in history:
        spans.append(TimelineSpan(parent, begin, switch))
        begin = switch
    spans.append(TimelineSpan(timeline, begin, None))
    return spans


def _timeline_at(path: Sequence[TimelineSpan], segno: int, segment_size: int) -> int:
    """The timeline whose file a recovery along PATH reads for SEGNO: the newest begun by then."""
    tli = path[0].timeline
    for span in path:
        if segno_of(span.begin, segment_size) <= segno:
            tli = span.timeline
    return tli


def _pieces(
    path: Sequence[TimelineSpan], first: int, last: int, segment_size: int
) -> list[tuple[range, int]]:
    """FIRST..LAST (inclusive) cut where the timeline read changes: (segment numbers, timeline)."""
    cuts = sorted({first} | {b for s in path if first < (b := segno_of(s.begin, segment_size)) <= last})
    return [
        (range(lo, hi), _timeline_at(path, lo, segment_size))
        for lo, hi in zip(cuts, [*cuts[1:], last + 1], strict=True)
    ]


def expected_segments(
    path: list[TimelineSpan],
    start_segno: int,
    end_segno: int,
    segment_size: int,
) -> list[str]:
    """File names a recovery from START_SEGNO through END_SEGNO (inclusive) reads along PATH."""
    return [
        segment_name(tli, segno, segment_size)
        for segnos, tli in _pieces(path, start_segno, end_segno, segment_size)
        for segno in segnos
    ]


@dataclass(frozen=True)
class ArchiveIndex:
    """An archive listing parsed once: which segment numbers it holds on each timeline.

    A window is judged from every base backup (hundreds of them, over tens of thousands of
    segments); they all read this one index instead of parsing the names again each.
    """

    segment_size: int
    held: dict[int, frozenset[int]]  # timeline -> numbers of the segments whose file is archived
    newest: dict[int, int]  # timeline -> the highest number of any segment name on it

    @classmethod
    def of(cls, names: Iterable[str], segment_size: int) -> ArchiveIndex:
        per = segments_per_id(segment_size)
        held: dict[int, set[int]] = {}
        newest: dict[int, int] = {}
        for name in names:
            if not SEGMENT_NAME.match(name):
                continue
            tli, segno = parse_segment_name(name, segment_size)
            newest[tli] = max(segno, newest.get(tli, segno))
            # only a name as PostgreSQL spells it is the file a recovery asks for
            if len(name) == 24 and int(name[16:], 16) < per:
                held.setdefault(tli, set()).add(segno)
        return cls(segment_size, {tli: frozenset(nos) for tli, nos in held.items()}, newest)


@dataclass(frozen=True)
class SegmentRun(Sequence[str]):
    """LENGTH consecutive segment names from START_SEGNO along PATH, made when read: a window's
    backups each reach thousands of segments, and callers read a few of them."""

    path: tuple[TimelineSpan, ...]
    start_segno: int
    length: int
    segment_size: int

    def __len__(self) -> int:
        return self.length

    @overload
    def __getitem__(self, index: int) -> str: ...

    @overload
    def __getitem__(self, index: slice) -> tuple[str, ...]: ...

    def __getitem__(self, index: int | slice) -> str | tuple[str, ...]:
        if isinstance(index, slice):
            return tuple(self._name(i) for i in range(self.length)[index])
        return self._name(range(self.length)[index])  # (IndexError when out of range)

    def _name(self, i: int) -> str:
        segno = self.start_segno + i
        return segment_name(_timeline_at(self.path, segno, self.segment_size), segno, self.segment_size)

    def __iter__(self) -> Iterator[str]:
        if self.length:
            last = self.start_segno + self.length - 1
            for segnos, tli in _pieces(self.path, self.start_segno, last, self.segment_size):
                yield from (segment_name(tli, segno, self.segment_size) for segno in segnos)

    def index(self, value: Any, start: int = 0, stop: int | None = None) -> int:
        i = -1
        if isinstance(value, str) and SEGMENT_NAME.match(value):
            i = parse_segment_name(value, self.segment_size)[1] - self.start_segno
        if not (0 <= i < self.length and i in range(self.length)[start:stop] and self._name(i) == value):
            raise ValueError(f"{value!r} is not in the run")
        return i

    def __contains__(self, value: object) -> bool:
        try:
            self.index(value)
        except ValueError:
            return False
        return True


@dataclass(frozen=True)
class ArchiveGaps:
    """What a recovery from a base backup would find missing in the archive."""

    start: str  # first segment needed (the backup's start)
    end: str | None  # last segment expected (None: nothing expected yet)
    expected: int
    missing: list[str]
    pending: list[str]  # not archived yet but still waiting on the server (not a gap)
    last_contiguous: str | None  # last segment reachable without crossing a gap
    contiguous_tail: tuple[str, ...] = ()  # the last few reachable segments, oldest first
    reachable: Sequence[str] = ()  # every segment reachable without crossing a gap, oldest first

    @property
    def ok(self) -> bool:
        return not self.missing


def find_gaps(
    *,
    path: list[TimelineSpan],
    start_segno: int,
    archived: Iterable[str] | ArchiveIndex,
    current_segno: int | None = None,
    pending: Iterable[str] = (),
    segment_size: int,
) -> ArchiveGaps:
    """Gaps between a backup's start segment and now.

    CURRENT_SEGNO is the segment the leader is writing (not archivable yet); without a
    reachable leader the newest archived segment on the path is the end.
    """
    return find_gaps_each(
        path=path,
        start_segnos=[start_segno],
        archived=archived,
        current_segno=current_segno,
        pending=pending,
        segment_size=segment_size,
    )[0]


def find_gaps_each(
    *,
    path: list[TimelineSpan],
    start_segnos: Sequence[int],
    archived: Iterable[str] | ArchiveIndex,
    current_segno: int | None = None,
    pending: Iterable[str] = (),
    segment_size: int,
) -> list[ArchiveGaps]:
    """`find_gaps` from each of START_SEGNOS (one per base backup), in that order.

    The holes along PATH are found once, from the oldest start to the end; each backup's gaps
    are then the holes after its start (a bisection), so the cost grows with the segments
    plus the backups, not with their product.
    """
    index = archived if isinstance(archived, ArchiveIndex) else ArchiveIndex.of(archived, segment_size)
    if index.segment_size != segment_size:
        raise ValueError(f"archive indexed for {index.segment_size}-byte segments, not {segment_size}")
    waiting = set(pending)
    if current_segno is not None:
        end: int | None = current_segno - 1
    else:
        end = max((index.newest[s.timeline] for s in path if s.timeline in index.newest), default=None)
    holes: list[int] = []  # not archived (missing or pending), ascending
    missing: tuple[list[int], list[str]] = ([], [])
    still_pending: tuple[list[int], list[str]] = ([], [])
    if start_segnos and end is not None:
        for segnos, tli in _pieces(path, min(start_segnos), end, segment_size):
            held = index.held.get(tli, frozenset())
            for segno in segnos:
                if segno not in held:
                    holes.append(segno)
                    name = segment_name(tli, segno, segment_size)
                    nos, names = still_pending if name in waiting else missing
                    nos.append(segno)
                    names.append(name)

    def name_at(segno: int) -> str:
        return segment_name(_timeline_at(path, segno, segment_size), segno, segment_size)

    def after(start: int, found: tuple[list[int], list[str]]) -> list[str]:
        return found[1][bisect_left(found[0], start) :]

    run_path = tuple(path)
    result = []
    for start in start_segnos:
        if end is None or end < start:
            result.append(
                ArchiveGaps(
                    name_at(start), None, 0, [], [], None, (), SegmentRun(run_path, start, 0, segment_size)
                )
            )
            continue
        at = bisect_left(holes, start)
        stop = holes[at] if at < len(holes) else end + 1  # the first segment a recovery lacks
        result.append(
            ArchiveGaps(
                start=name_at(start),
                end=name_at(end),
                expected=end - start + 1,
                missing=after(start, missing),
                pending=after(start, still_pending),
                last_contiguous=name_at(stop - 1) if stop > start else None,
                contiguous_tail=tuple(name_at(n) for n in range(max(start, stop - 8), stop)),
                reachable=SegmentRun(run_path, start, stop - start, segment_size),
            )
        )
    return result


def timeline_runs(names: Iterable[str]) -> list[list[str]]:
    """Consecutive segment names (oldest first) split where the timeline changes: pg_waldump
    reads one timeline per call."""
    runs: list[list[str]] = []
    for name in names:
        if runs and runs[-1][-1][:8] == name[:8]:
            runs[-1].append(name)
        else:
            runs.append([name])
    return runs


_LSN_TEXT = re.compile(r"\b[0-9A-F]{1,8}/[0-9A-F]{1,8}\b")


def segment_of_error(error: str, run: list[str], segment_size: int) -> str:
    """The segment of RUN a pg_waldump ERROR points at: its last LSN ("error in WAL record at A:
    incorrect resource manager data checksum in record at B" is about B); RUN's first without one."""
    lsns = _LSN_TEXT.findall(error)
    if lsns:
        name = segment_name(int(run[0][:8], 16), segno_of(parse_lsn(lsns[-1]), segment_size), segment_size)
        if name in run:
            return name
    return run[0]
