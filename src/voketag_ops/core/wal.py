"""WAL arithmetic for DR: LSNs, segment file names, timeline histories, archive gaps.

Pure functions over names and numbers; the adapter lists the archive and reads the
history files. A restore replays, for each segment after the base backup's start,
the file of the newest timeline on the target's history that had begun by then, so
that is the file the archive must hold (the old timeline's copy of the segment with
the switch point lacks everything written after the promotion).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

# Where a node's data stands: the WAL it has written (a leader) or replayed (a standby). A
# comparison of two nodes' rows says at which LSN each was read.
WAL_POSITION_SQL = (
    "(case when pg_is_in_recovery() then pg_last_wal_replay_lsn() else pg_current_wal_lsn() end)::text"
)
DEFAULT_SEGMENT_SIZE = 16 * 1024 * 1024
SEGMENT_NAME = re.compile(r"^[0-9A-F]{24}$")
HISTORY_NAME = re.compile(r"^([0-9A-F]{8})\.history$")


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


def segment_name(timeline: int, segno: int, segment_size: int = DEFAULT_SEGMENT_SIZE) -> str:
    per = segments_per_id(segment_size)
    return f"{timeline:08X}{segno // per:08X}{segno % per:08X}"


def parse_segment_name(name: str, segment_size: int = DEFAULT_SEGMENT_SIZE) -> tuple[int, int]:
    """'000000020000000000000005' -> (timeline 2, segno 5)."""
    if not SEGMENT_NAME.match(name):
        raise ValueError(f"not a WAL segment name: {name!r}")
    return int(name[:8], 16), int(name[8:16], 16) * segments_per_id(segment_size) + int(name[16:], 16)


def segno_of(lsn: int, segment_size: int = DEFAULT_SEGMENT_SIZE) -> int:
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


def expected_segments(
    path: list[TimelineSpan],
    start_segno: int,
    end_segno: int,
    segment_size: int = DEFAULT_SEGMENT_SIZE,
) -> list[str]:
    """File names a recovery from START_SEGNO through END_SEGNO (inclusive) reads along PATH."""
    names: list[str] = []
    for segno in range(start_segno, end_segno + 1):
        tli = path[0].timeline
        for span in path:
            if segno_of(span.begin, segment_size) <= segno:
                tli = span.timeline
        names.append(segment_name(tli, segno, segment_size))
    return names


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
    reachable: tuple[str, ...] = ()  # every segment reachable without crossing a gap, oldest first

    @property
    def ok(self) -> bool:
        return not self.missing


def find_gaps(
    *,
    path: list[TimelineSpan],
    start_segno: int,
    archived: Iterable[str],
    current_segno: int | None = None,
    pending: Iterable[str] = (),
    segment_size: int = DEFAULT_SEGMENT_SIZE,
) -> ArchiveGaps:
    """Gaps between a backup's start segment and now.

    CURRENT_SEGNO is the segment the leader is writing (not archivable yet); without a
    reachable leader the newest archived segment on the path is the end.
    """
    have = set(archived)
    waiting = set(pending)
    on_path = [
        parse_segment_name(name, segment_size)[1]
        for name in have
        if SEGMENT_NAME.match(name)
        and parse_segment_name(name, segment_size)[0] in {s.timeline for s in path}
    ]
    end_segno = current_segno - 1 if current_segno is not None else max(on_path, default=start_segno - 1)
    names = expected_segments(path, start_segno, end_segno, segment_size) if end_segno >= start_segno else []
    missing = [n for n in names if n not in have and n not in waiting]
    still_pending = [n for n in names if n not in have and n in waiting]
    last_contiguous = None
    reachable = 0
    for name in names:
        if name not in have:
            break
        last_contiguous = name
        reachable += 1
    return ArchiveGaps(
        start=expected_segments(path, start_segno, start_segno, segment_size)[0],
        end=names[-1] if names else None,
        expected=len(names),
        missing=missing,
        pending=still_pending,
        last_contiguous=last_contiguous,
        contiguous_tail=tuple(names[max(0, reachable - 8) : reachable]),
        reachable=tuple(names[:reachable]),
    )


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


def segment_of_error(error: str, run: list[str], segment_size: int = DEFAULT_SEGMENT_SIZE) -> str:
    """The segment of RUN a pg_waldump ERROR points at: its last LSN ("error in WAL record at A:
    incorrect resource manager data checksum in record at B" is about B); RUN's first without one."""
    lsns = _LSN_TEXT.findall(error)
    if lsns:
        name = segment_name(int(run[0][:8], 16), segno_of(parse_lsn(lsns[-1]), segment_size), segment_size)
        if name in run:
            return name
    return run[0]
