"""Coverage arithmetic that agrees with coverage.py to the digit. Pure: no I/O, stdlib only.

coverage.py's total is (covered statements + covered branch exits) / (statements +
branch exits), summed over files before one division, 100 when there is nothing to
cover (`coverage.results.Numbers`). It is displayed with Python's `round` on that
float, clamped so that only exact values show as 0 or 100 (`display_covered`), and the
`fail_under` gate compares the rounded value (`should_fail_under`). These functions
use the same float expressions on purpose: `Decimal` or `Fraction` would disagree
with coverage.py on values such as 3001/4000 (75.025 as a double is 75.02500000000000568,
which coverage.py shows as "75.03").
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from enum import StrEnum

from voketag_ops.core.text import counted

EXIT = -1  # destination of a branch exit that leaves the code object (coverage.py: any negative line)
UNKNOWN = 0  # destination of a missed branch exit whose target the input does not name
MODULE_LEVEL = "(module level)"


# -- numbers ---------------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Counts:
    """Integer coverage counts; add them across files, divide once (`percent`)."""

    statements: int = 0
    missing: int = 0
    branches: int = 0
    missing_branches: int = 0
    partial_branches: int = 0
    excluded: int = 0
    files: int = 0

    @property
    def covered(self) -> int:
        return self.statements - self.missing

    @property
    def covered_branches(self) -> int:
        return self.branches - self.missing_branches

    @property
    def numerator(self) -> int:
        return self.covered + self.covered_branches

    @property
    def denominator(self) -> int:
        return self.statements + self.branches

    @property
    def percent(self) -> float:
        """The unrounded total, exactly coverage.py's `Numbers.pc_covered`."""
        return percent(self.numerator, self.denominator)

    def __add__(self, other: Counts) -> Counts:
        return Counts(
            self.statements + other.statements,
            self.missing + other.missing,
            self.branches + other.branches,
            self.missing_branches + other.missing_branches,
            self.partial_branches + other.partial_branches,
            self.excluded + other.excluded,
            self.files + other.files,
        )


def total(counts: Iterable[Counts]) -> Counts:
    """The sum of COUNTS (integer sums; no averaging of percentages)."""
    acc = Counts()
    for item in counts:
        acc = acc + item
    return acc


def percent(numerator: int, denominator: int) -> float:
    """coverage.py's `Numbers._percent`: 100 when there is nothing to cover."""
    if denominator > 0:
        return (100.0 * numerator) / denominator
    return 100.0


def display_covered(pc: float, precision: int) -> str:
    """The string coverage.py prints for PC: never "0" or "100" unless exactly so."""
    if precision < 0:
        raise ValueError(f"precision={precision} is invalid: must not be negative")
    near0 = 1.0 / 10**precision
    if 0 < pc < near0:
        pc = near0
    elif (100.0 - near0) < pc < 100:
        pc = 100.0 - near0
    else:
        pc = round(pc, precision)
    return f"{pc:.{precision}f}"


def format_target(target: float) -> str:
    """A target as written: 80 -> "80", 80.25 -> "80.25"."""
    return f"{target:g}" if target != int(target) else str(int(target))


# -- the gate --------------------------------------------------------------------------------------
class Rule(StrEnum):
    """How a total is compared with a target."""

    COVERAGE = "coverage"  # coverage.py >= 7.17.1: rounded to max(precision, decimals of the target)
    COVERAGE_716 = "coverage-7.16"  # coverage.py <= 7.17.0: rounded to the precision
    STRICT = "strict"  # the unrounded value must reach the target


def check_target(target: float) -> None:
    """Raise ValueError unless 0 <= TARGET <= 100 (as coverage.py does)."""
    if not 0 <= target <= 100.0:
        raise ValueError(f"target {target} is invalid: must be between 0 and 100")


def gate_precision(target: float, precision: int, rule: Rule) -> int:
    """Decimals the comparison rounds to under RULE (coverage.py's `_fail_under_precision`)."""
    if rule is Rule.COVERAGE and target != int(target):
        exponent = Decimal(str(target)).as_tuple().exponent
        assert isinstance(exponent, int)
        return max(precision, -exponent)
    return precision


def passes(pc: float, target: float, precision: int, rule: Rule = Rule.COVERAGE) -> bool:
    """True when the total PC meets TARGET: `not coverage.results.should_fail_under` for the
    coverage rules, `pc >= target` for STRICT. A target of 100 needs exactly 100 always."""
    check_target(target)
    if target == 100.0 and pc != 100.0:
        return False
    if rule is Rule.STRICT:
        return pc >= target
    return not round(pc, gate_precision(target, precision, rule)) < target


def shown_for_gate(pc: float, target: float, precision: int, rule: Rule) -> str:
    """The total as the comparison sees it (coverage.py's `format_fail_under_msg`)."""
    p = gate_precision(target, precision, rule)
    if rule is Rule.STRICT:
        return repr(pc)
    if target == 100.0 and pc != 100.0:
        return display_covered(pc, p)
    return f"{round(pc, p):.{p}f}"


def _smallest_passing(counts: Counts, limit: int, target: float, precision: int, rule: Rule) -> int | None:
    """Smallest k in [0, LIMIT] such that covering k more units passes; None if none does.

    Passing is monotone in k (the percent is a correctly rounded quotient, `round` is
    monotone), so a binary search finds the boundary.
    """
    num, den = counts.numerator, counts.denominator

    def ok(k: int) -> bool:
        return passes(percent(num + k, den), target, precision, rule)

    if ok(0):
        return 0
    if not ok(limit):
        return None
    lo, hi = 0, limit  # ok(lo) is False, ok(hi) is True
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if ok(mid):
            hi = mid
        else:
            lo = mid
    return hi


def lines_to_target(counts: Counts, target: float, precision: int, rule: Rule = Rule.COVERAGE) -> int | None:
    """The smallest number of currently missed statements whose coverage makes the gate
    pass; 0 when it passes already, None when covering every missed statement is not
    enough (the missed branch exits alone keep it below target)."""
    return _smallest_passing(counts, counts.missing, target, precision, rule)


def units_to_target(counts: Counts, target: float, precision: int, rule: Rule = Rule.COVERAGE) -> int | None:
    """Like `lines_to_target`, counting missed statements and missed branch exits alike."""
    return _smallest_passing(counts, counts.missing + counts.missing_branches, target, precision, rule)


# -- per-file data ---------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Region:
    """A function or class of a file (coverage.json format 3); NAME "" is module level."""

    name: str
    kind: str  # "function" | "class"
    start_line: int | None
    lines: frozenset[int]  # its statements


@dataclass(frozen=True, slots=True)
class FileCoverage:
    """What one input says about one source file.

    `branches` maps each branch line to (number of exits, destinations of the missed
    exits); destinations are line numbers, EXIT, or UNKNOWN when the input gives counts only.
    """

    path: str
    executed: frozenset[int]
    missing: frozenset[int]
    excluded: frozenset[int] = frozenset()
    branches: Mapping[int, tuple[int, tuple[int, ...]]] = field(default_factory=dict)
    regions: tuple[Region, ...] = ()
    has_branches: bool = False
    # The input's own counts where its line and arc lists do not reproduce them (coverage.json
    # of coverage.py <= 7.11: no arcs in format 1, arcs that disagree with the exit counts);
    # the lists then serve the gap lists and diff coverage only. None: the lists are exact.
    stated: Counts | None = None

    @property
    def statements(self) -> frozenset[int]:
        return self.executed | self.missing

    @property
    def counts(self) -> Counts:
        """The file's counts: as stated by the input when its lists fall short, else from the lists."""
        return self.stated if self.stated is not None else self.listed_counts

    @property
    def listed_counts(self) -> Counts:
        """The counts the line and arc lists give (coverage.py's `Numbers` for them)."""
        n_branches = n_missing_br = n_partial = 0
        for line, (exits, missed) in self.branches.items():
            n_branches += exits
            n_missing_br += len(missed)
            if line not in self.missing:
                n_partial += len(missed)
        return Counts(
            statements=len(self.executed) + len(self.missing),
            missing=len(self.missing),
            branches=n_branches,
            missing_branches=n_missing_br,
            partial_branches=n_partial,
            excluded=len(self.excluded),
            files=1,
        )

    def region_counts(self, region: Region) -> Counts:
        missing = region.lines & self.missing
        n_branches = n_missing_br = 0
        for line in region.lines:
            if line in self.branches:
                exits, missed = self.branches[line]
                n_branches += exits
                n_missing_br += len(missed)
        return Counts(len(region.lines), len(missing), n_branches, n_missing_br, files=1)


class InexactMerge(ValueError):
    """PATH is in two reports, one of whose counts its own lists do not reproduce: their union
    cannot be counted exactly (which exits of a line with no arcs listed ran, in which report?)."""

    def __init__(self, path: str) -> None:
        super().__init__(f"{path}: its counts cannot be combined exactly")
        self.path = path


def merge_files(a: FileCoverage, b: FileCoverage) -> FileCoverage:
    """Two reports of the same file combined, like `coverage combine`: a line or branch
    exit is covered when either report covered it. InexactMerge when either report states
    counts its lists do not reproduce (unless both say the same)."""
    if a.stated is not None or b.stated is not None:
        if a == b:  # the same report twice
            return a
        raise InexactMerge(a.path)
    statements = a.statements | b.statements
    executed = a.executed | b.executed
    branches: dict[int, tuple[int, tuple[int, ...]]] = dict(a.branches)
    for line, (exits_b, missed_b) in b.branches.items():
        if line in branches:
            exits_a, missed_a = branches[line]
            # A missed exit stays missed only if both reports missed it (multiset: two
            # exits to EXIT stay two); the total is the larger of the two views.
            both = Counter(missed_a) & Counter(missed_b)
            branches[line] = (max(exits_a, exits_b), tuple(sorted(both.elements())))
        else:
            branches[line] = (exits_b, missed_b)
    regions = {(r.kind, r.name): r for r in a.regions}
    for r in b.regions:
        key = (r.kind, r.name)
        regions[key] = (
            r if key not in regions else Region(r.name, r.kind, r.start_line, regions[key].lines | r.lines)
        )
    return FileCoverage(
        path=a.path,
        executed=frozenset(executed),
        missing=frozenset(statements - executed),
        excluded=(a.excluded | b.excluded) - statements,
        branches=branches,
        regions=tuple(regions.values()),
        has_branches=a.has_branches or b.has_branches,
    )


def combine(files: Iterable[FileCoverage]) -> dict[str, FileCoverage]:
    """Files by path, merging repeated paths (several inputs measuring the same file)."""
    out: dict[str, FileCoverage] = {}
    for f in files:
        out[f.path] = merge_files(out[f.path], f) if f.path in out else f
    return out


def line_ranges(statements: Iterable[int], lines: Iterable[int]) -> list[tuple[int, int]]:
    """LINES as (first, last) runs, a run continuing over non-statement lines (as
    coverage.py's "Missing" column does): statements 1..5, lines {2,3,5} -> (2,3), (5,5)."""
    wanted = set(lines)
    runs: list[tuple[int, int]] = []
    start = end = None
    for line in sorted(statements):
        if line in wanted:
            if start is None:
                start = line
            end = line
        elif start is not None:
            assert end is not None
            runs.append((start, end))
            start = end = None
    if start is not None:
        assert end is not None
        runs.append((start, end))
    return runs


def format_ranges(runs: Sequence[tuple[int, int]]) -> str:
    """ "5, 8-11, 18" from runs."""
    return ", ".join(str(a) if a == b else f"{a}-{b}" for a, b in runs)


def missing_arcs(f: FileCoverage, lines: frozenset[int] | None = None) -> str:
    """The missed branch exits `coverage report -m` lists for F (from LINES only, when given),
    in its notation and order ("34->36, 40->exit"; coverage.py's `format_lines`): those from a
    line that ran to a line that is no missed statement (the others show as missed lines). An
    exit whose destination the input does not name (Cobertura without `missing-branches`)
    cannot be written."""
    arcs = [
        (line, f"{line}->{dest if dest > 0 else 'exit'}")
        for line, (_, missed) in f.branches.items()
        if line not in f.missing and (lines is None or line in lines)
        for dest in missed
        if dest != UNKNOWN and dest not in f.missing
    ]
    return ", ".join(text for _, text in sorted(arcs))


# -- paths -----------------------------------------------------------------------------------------
_DRIVE = re.compile(r"^[A-Za-z]:/")


def normalize_path(path: str) -> str:
    """Forward slashes, no "./" prefix, no doubled slashes (Windows keys become comparable)."""
    p = path.replace("\\", "/")
    while "//" in p[1:]:
        p = p[0] + p[1:].replace("//", "/")
    while p.startswith("./"):
        p = p[2:]
    return p


def is_absolute(path: str) -> bool:
    return path.startswith("/") or bool(_DRIVE.match(path))


@dataclass(frozen=True)
class PathMap:
    """Prefix rewrites applied in order, first match wins, like coverage.py's `[paths]`.

    A pattern is a path prefix; `*` matches within one path segment, so
    "/home/runner/work/*/*/" maps any GitHub checkout. "/app/src/" -> "" makes
    "/app/src/admin_service/a.py" into "admin_service/a.py".
    """

    rules: tuple[tuple[str, str], ...] = ()
    _compiled: tuple[tuple[re.Pattern[str], str], ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        compiled = []
        for pattern, replacement in self.rules:
            pat = normalize_path(pattern)
            if pat and not pat.endswith("/"):
                pat += "/"  # a prefix names a directory: "/app/src" must not match "/app/srcx/"
            regex = "".join("[^/]*" if ch == "*" else re.escape(ch) for ch in pat)
            repl = normalize_path(replacement)
            if repl and not repl.endswith("/"):
                repl += "/"
            compiled.append((re.compile(regex), repl))
        object.__setattr__(self, "_compiled", tuple(compiled))

    def apply(self, path: str) -> str:
        p = normalize_path(path)
        for regex, repl in self._compiled:
            m = regex.match(p)
            if m:
                return repl + p[m.end() :]
        return p


def relative_to(path: str, root: str) -> str:
    """PATH relative to ROOT when it lies under it (both normalized), else PATH."""
    root = normalize_path(root).rstrip("/") + "/"
    return path[len(root) :] if path.startswith(root) else path


# -- services --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ServiceSpec:
    """A service: the path prefixes of its files, its target and optional baseline (percent)."""

    name: str
    prefixes: tuple[str, ...]
    target: float
    baseline: float | None = None


UNASSIGNED = "unassigned"


def prefix_matches(path: str, prefix: str) -> bool:
    prefix = normalize_path(prefix)
    if prefix.endswith("/"):
        return path.startswith(prefix)
    return path == prefix or path.startswith(prefix + "/")


def assign(path: str, services: Sequence[ServiceSpec]) -> str | None:
    """The service whose longest prefix matches PATH; None when none does."""
    best: tuple[int, str] | None = None
    for spec in services:
        for prefix in spec.prefixes:
            if prefix_matches(path, prefix):
                length = len(normalize_path(prefix).rstrip("/"))
                if best is None or length > best[0]:
                    best = (length, spec.name)
    return None if best is None else best[1]


def group_by_service(
    files: Iterable[FileCoverage], services: Sequence[ServiceSpec]
) -> tuple[dict[str, list[FileCoverage]], list[FileCoverage]]:
    """(files per service name, in SERVICES order; files that match no service)."""
    grouped: dict[str, list[FileCoverage]] = {s.name: [] for s in services}
    unassigned: list[FileCoverage] = []
    for f in files:
        name = assign(f.path, services)
        (grouped[name] if name is not None else unassigned).append(f)
    return grouped, unassigned


# -- scores ----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Score:
    """One row of a report: a service or the overall total, judged against its target."""

    name: str
    files: int
    statements: int
    covered: int
    missing: int
    branches: int
    covered_branches: int
    missing_branches: int
    partial_branches: int
    percent: float  # unrounded
    display: str  # as coverage.py prints it at the report's precision
    target: float | None
    baseline: float | None
    delta: float | None  # percent - baseline, unrounded
    passed: bool | None  # under the rule in force; None when there is no target
    passed_strict: bool | None  # unrounded comparison
    by_rounding: bool  # passes only because the rule rounds
    lines_needed: int | None  # missed statements to cover to pass; None if statements cannot do it
    units_needed: int | None  # missed statements or branch exits to cover to pass


def score(
    name: str,
    counts: Counts,
    *,
    target: float | None,
    baseline: float | None,
    precision: int,
    rule: Rule,
) -> Score:
    """Judge COUNTS against TARGET under RULE."""
    pc = counts.percent
    if target is None:
        passed = strict = None
        lines = units = None
    else:
        passed = passes(pc, target, precision, rule)
        strict = passes(pc, target, precision, Rule.STRICT)
        lines = lines_to_target(counts, target, precision, rule)
        units = units_to_target(counts, target, precision, rule)
    return Score(
        name=name,
        files=counts.files,
        statements=counts.statements,
        covered=counts.covered,
        missing=counts.missing,
        branches=counts.branches,
        covered_branches=counts.covered_branches,
        missing_branches=counts.missing_branches,
        partial_branches=counts.partial_branches,
        percent=pc,
        display=display_covered(pc, precision),
        target=target,
        baseline=baseline,
        delta=None if baseline is None else pc - baseline,
        passed=passed,
        passed_strict=strict,
        by_rounding=bool(passed and not strict),
        lines_needed=lines,
        units_needed=units,
    )


def exact_text(percent: float, target: float) -> str:
    """PERCENT with the decimals (2 at least) it takes to land on its own side of TARGET:
    79.999 against 80 is "79.999", never "80.00"."""
    for decimals in range(2, 16):
        text = f"{percent:.{decimals}f}"
        if (float(text) < target) == (percent < target) and (float(text) == target) == (percent == target):
            return text
    return repr(percent)


def why_below(percent: float, target: float, display: str, precision: int, rule: Rule) -> str:
    """Why PERCENT (shown as DISPLAY) fails TARGET, in the numbers the comparison used: never
    "80% < 80" (79.6 shown rounded, compared exactly or at the target's decimals)."""
    tgt = format_target(target)
    shown = shown_for_gate(percent, target, precision, rule)
    if rule is Rule.STRICT:
        return f"exact {exact_text(percent, target)}% < {tgt} (strict)"
    if target == 100.0:
        return f"{shown}% is not exactly 100"
    exact = f" (exact {exact_text(percent, target)}%)" if shown != display else ""
    return f"{shown}% < {tgt}{exact}"


def units_to_cover(missing: int, units_needed: int) -> str:
    """What a total that statements alone cannot lift to its target needs: every one of its
    MISSING statements and the rest of UNITS_NEEDED in branch exits (only those when no
    statement is missed)."""
    exits = counted(units_needed - missing, "branch exit")
    return f"cover all {counted(missing, 'missed statement')} and {exits}" if missing else f"cover {exits}"


def verdict(s: Score, precision: int, rule: Rule) -> str:
    """One line saying whether S passed, and why in the borderline cases."""
    if s.target is None:
        return f"{s.name}: {s.display}% (no target)"
    tgt = format_target(s.target)
    if s.passed and s.by_rounding:
        return (
            f"{s.name}: {s.display}% passes {tgt} by rounding (exact {exact_text(s.percent, s.target)}%; "
            f"--strict would fail it)"
        )
    if s.passed:
        return f"{s.name}: {s.display}% meets target {tgt}"
    why = why_below(s.percent, s.target, s.display, precision, rule)
    if s.lines_needed is not None:
        need = f"cover {counted(s.lines_needed, 'more statement')}"
    elif s.units_needed is not None:
        need = units_to_cover(s.missing, s.units_needed)
    else:  # pragma: no cover - every target <= 100 is reachable by covering everything
        need = "unreachable"
    return f"{s.name}: {s.display}% fails target {tgt}: {why}; {need}"


@dataclass(frozen=True)
class FileGap:
    """A file with missed code, for the gap list."""

    path: str
    service: str
    missing: int
    missing_branches: int
    percent: float
    display: str
    missing_lines: str  # "5, 8-11"
    missing_arcs: str  # "34->36, 40->exit": the missed exits `coverage report -m` lists beside the lines


@dataclass(frozen=True)
class FunctionGap:
    """A function or class with missed code (coverage.json format 3 regions)."""

    path: str
    service: str
    name: str
    kind: str
    start_line: int | None
    missing: int
    missing_branches: int
    statements: int
    missing_arcs: str  # as in FileGap


def file_gaps(files: Iterable[FileCoverage], service: str, precision: int, top: int) -> list[FileGap]:
    """The TOP files with the most missed statements (then branch exits), worst first."""
    rows = []
    for f in files:
        c = f.counts
        if c.missing == 0 and c.missing_branches == 0:
            continue
        rows.append((c, f))
    rows.sort(key=lambda cf: (-cf[0].missing, -cf[0].missing_branches, cf[1].path))
    return [
        FileGap(
            path=f.path,
            service=service,
            missing=c.missing,
            missing_branches=c.missing_branches,
            percent=c.percent,
            display=display_covered(c.percent, precision),
            missing_lines=format_ranges(line_ranges(f.statements, f.missing)),
            missing_arcs=missing_arcs(f),
        )
        for c, f in rows[:top]
    ]


def function_gaps(files: Iterable[FileCoverage], service: str, top: int) -> list[FunctionGap]:
    """The TOP functions ranked by missed statements + missed branch exits."""
    rows = []
    for f in files:
        for region in f.regions:
            if region.kind != "function":
                continue
            c = f.region_counts(region)
            if c.missing + c.missing_branches == 0:
                continue
            rows.append(
                FunctionGap(
                    path=f.path,
                    service=service,
                    name=region.name or MODULE_LEVEL,
                    kind=region.kind,
                    start_line=region.start_line,
                    missing=c.missing,
                    missing_branches=c.missing_branches,
                    statements=c.statements,
                    missing_arcs=missing_arcs(f, region.lines),
                )
            )
    rows.sort(
        key=lambda g: (-(g.missing + g.missing_branches), -g.missing, g.path, g.start_line or 0, g.name)
    )
    return rows[:top]


# -- diff coverage ---------------------------------------------------------------------------------
_HUNK = re.compile(r"^@@ -(\d+)(?:,(\d+))? \+(\d+)(?:,(\d+))? @@")
_HUNK_DIGITS = 10  # a line number or count of ten digits is over a billion lines already
_ONE_CHARACTER_PREFIX = re.compile(r"[a-z0-9]/")
# git's C-style quoting of a path (quote_c_style): these escapes, and \ooo for every other byte
_GIT_ESCAPES = {"a": 7, "b": 8, "t": 9, "n": 10, "v": 11, "f": 12, "r": 13, '"': 34, "\\": 92}
_OCTAL = re.compile(r"[0-3][0-7]{2}")


class DiffError(ValueError):
    """A unified diff that cannot be read: what is wrong, on which LINE and at which COLUMN (1-based)."""

    def __init__(self, message: str, line: int, column: int) -> None:
        super().__init__(message)
        self.line = line
        self.column = column


def _unquote(quoted: str, line: int, column: int) -> str:
    """A path as git quotes it ("b/sp\\303\\251cial.py", QUOTED starting at COLUMN), unquoted."""
    out = bytearray()
    i = 1
    while i < len(quoted):
        c = quoted[i]
        if c == '"':
            if quoted[i + 1 :]:
                raise DiffError("text after a quoted path", line, column + i + 1)
            return out.decode("utf-8", "replace")
        if c != "\\":
            out += c.encode("utf-8", "replace")
            i += 1
            continue
        escape = quoted[i + 1 : i + 2]
        if escape in _GIT_ESCAPES:
            out.append(_GIT_ESCAPES[escape])
            i += 2
        elif _OCTAL.match(quoted, i + 1):
            out.append(int(quoted[i + 1 : i + 4], 8))
            i += 4
        else:
            raise DiffError(
                f"a quoted path's escape {quoted[i : i + 4]} is not one git writes", line, column + i
            )
    raise DiffError("a quoted path without its closing quote", line, column)


def _prefix_of(path: str) -> str | None:
    return path[:2] if _ONE_CHARACTER_PREFIX.match(path) else None


def parse_unified_diff(text: str) -> dict[str, set[int]]:
    """Lines added or changed in the new version of each file of a unified diff.

    A hunk's lines are counted off against its header, so an added line that itself reads
    "+++ x" or "diff ..." (a "++ x" or "-- x" in the file) is never taken for a file header.
    DiffError for a quoted path git would not write, a hunk header's number of over ten digits,
    or a hunk with fewer lines than its header counts (cut off, or edited), as `git apply` refuses it."""
    changed: dict[str, set[int]] = {}
    current: set[int] | None = None
    # A git diff's paths carry one-character prefixes, different on the two sides (a/ b/; i/ w/,
    # c/ w/ with diff.mnemonicPrefix); with --no-prefix both sides read the same (s/app.py twice,
    # a directory named s): the new side's is dropped only when the old side's differs.
    old_prefix: str | None = None
    line_no = 0
    old_left = new_left = 0  # lines of the current hunk still to come
    hunk_at = 0  # the line of its header
    # Lines end at "\n" alone: str.splitlines() also splits at a form feed, \x1c-\x1e, \x85 or
    # U+2028 inside a line (PEP 8 allows form feeds), which shifted every later line of the hunk.
    parts = text.split("\n")
    end = len(parts)  # the last part follows the last "\n": "" when the text ends with one
    for number, raw in enumerate((line.removesuffix("\r") for line in parts), 1):
        if old_left > 0 or new_left > 0:
            tag = raw[:1]
            if number == end and not raw:
                break  # the end of the input, no line
            if tag == "+":
                if not new_left:
                    raise _hunk_over(hunk_at, "new", number)
                if current is not None:
                    current.add(line_no)
                line_no += 1
                new_left -= 1
            elif tag == "-":
                if not old_left:
                    raise _hunk_over(hunk_at, "old", number)
                old_left -= 1
            elif tag in (" ", ""):  # a context line (an empty one, as GNU diff and `git apply` allow)
                if not old_left or not new_left:
                    raise _hunk_over(hunk_at, "new" if old_left else "old", number)
                line_no += 1
                old_left -= 1
                new_left -= 1
            elif tag != "\\":  # "\ No newline at end of file" (or its translation) counts for neither side
                raise DiffError(
                    f"{_hunk_short(hunk_at, old_left, new_left)}: this line is not a hunk line "
                    "(' ', '+', '-' or '\\' first)",
                    number,
                    1,
                )
            continue
        if raw.startswith("diff --git "):  # (its old path also stands for a new file's /dev/null)
            old_prefix = _prefix_of(raw[11:].lstrip('"'))
            continue
        if raw.startswith("--- "):
            source = raw[4:].split("\t", 1)[0].lstrip('"')
            if source != "/dev/null":
                old_prefix = _prefix_of(source)
            continue
        if raw.startswith("+++ "):
            target = raw[4:].split("\t", 1)[0]
            if target == "/dev/null":
                current = None
                continue
            if target.startswith('"'):
                target = _unquote(target, number, 5)
            if old_prefix is not None and _prefix_of(target) not in (None, old_prefix):
                target = target[2:]
            current = changed.setdefault(normalize_path(target), set())
            continue
        m = _HUNK.match(raw)
        if m:
            for group in range(1, 5):
                if len(m.group(group) or "") > _HUNK_DIGITS:
                    raise DiffError(
                        f"a hunk header's number of over {_HUNK_DIGITS} digits", number, m.start(group) + 1
                    )
            old_left = 1 if m.group(2) is None else int(m.group(2))
            line_no = int(m.group(3))
            new_left = 1 if m.group(4) is None else int(m.group(4))
            hunk_at = number
    if old_left > 0 or new_left > 0:
        raise DiffError(
            f"{_hunk_short(hunk_at, old_left, new_left)} at the end of the input (cut off?)",
            end,
            len(parts[-1]) + 1,
        )
    return {path: lines for path, lines in changed.items() if lines}


def _hunk_short(header: int, old_left: int, new_left: int) -> str:
    """What a hunk cut short lacks: "the hunk of line 3 is 1 old and 2 new lines short of its header"."""
    lines = "line" if new_left == 1 else "lines"
    return f"the hunk of line {header} is {old_left} old and {new_left} new {lines} short of its header"


def _hunk_over(header: int, side: str, line: int) -> DiffError:
    return DiffError(f"the hunk of line {header} has more {side} lines than its header counts", line, 1)


@dataclass(frozen=True)
class DiffFile:
    """Changed lines of one file that the coverage data measures."""

    path: str
    measured: int
    covered: int
    uncovered_lines: tuple[int, ...]
    uncovered_ranges: tuple[tuple[int, int], ...]
    display: str


@dataclass(frozen=True)
class DiffCoverage:
    """Coverage of the changed lines; `percent` is None ("n/a") when nothing measurable changed."""

    files: tuple[DiffFile, ...]
    changed_files: int
    changed_lines: int
    measured: int
    covered: int
    percent: float | None
    display: str


def diff_coverage(
    changed: Mapping[str, set[int]], files: Mapping[str, FileCoverage], precision: int
) -> DiffCoverage:
    """Coverage of CHANGED lines. Lines that are not statements in the report (comments,
    files not measured) are not counted, as in diff-cover."""
    out: list[DiffFile] = []
    measured = covered = 0
    for path in sorted(changed):
        fc = files.get(path)
        if fc is None:
            continue
        lines = changed[path]
        statements = fc.statements
        hit = lines & fc.executed
        miss = lines & fc.missing
        n = len(hit) + len(miss)
        if n == 0:
            continue
        measured += n
        covered += len(hit)
        out.append(
            DiffFile(
                path=path,
                measured=n,
                covered=len(hit),
                uncovered_lines=tuple(sorted(miss)),
                uncovered_ranges=tuple(line_ranges(statements, miss)),
                display=display_covered(percent(len(hit), n), precision),
            )
        )
    pc = percent(covered, measured) if measured else None
    return DiffCoverage(
        files=tuple(out),
        changed_files=len(changed),
        changed_lines=sum(len(v) for v in changed.values()),
        measured=measured,
        covered=covered,
        percent=pc,
        display="n/a" if pc is None else display_covered(pc, precision),
    )


# -- badge colours ---------------------------------------------------------------------------------
DEFAULT_BANDS: tuple[tuple[float, str], ...] = (
    (90.0, "#4c1"),  # brightgreen
    (80.0, "#97ca00"),  # green
    (70.0, "#a4a61d"),  # yellowgreen
    (60.0, "#dfb317"),  # yellow
    (50.0, "#fe7d37"),  # orange
    (0.0, "#e05d44"),  # red
)
NAMED_COLORS = {
    "brightgreen": "#4c1",
    "green": "#97ca00",
    "yellowgreen": "#a4a61d",
    "yellow": "#dfb317",
    "orange": "#fe7d37",
    "red": "#e05d44",
    "blue": "#007ec6",
    "lightgrey": "#9f9f9f",
}


def band_color(pc: float, bands: Sequence[tuple[float, str]] = DEFAULT_BANDS) -> str:
    """The colour of the first band (highest minimum first) whose minimum PC reaches."""
    for minimum, color in sorted(bands, key=lambda b: -b[0]):
        if pc >= minimum:
            return NAMED_COLORS.get(color, color)
    return NAMED_COLORS["lightgrey"]


def parse_bands(text: str) -> tuple[tuple[float, str], ...]:
    """ "90:brightgreen,80:#97ca00,0:red" -> bands. Raises ValueError on bad input."""
    bands = []
    for part in text.split(","):
        minimum, sep, color = part.strip().partition(":")
        if not sep:
            raise ValueError(f"bad colour band {part.strip()!r}: expected MIN:COLOUR")
        value = float(minimum)
        check_target(value)
        color = color.strip()
        if color not in NAMED_COLORS and not re.fullmatch(r"#[0-9a-fA-F]{3}(?:[0-9a-fA-F]{3})?", color):
            raise ValueError(f"bad colour {color!r}: a name ({', '.join(NAMED_COLORS)}) or #rgb/#rrggbb")
        bands.append((value, color))
    return tuple(bands)


# -- sparkline -------------------------------------------------------------------------------------
_TICKS = "▁▂▃▄▅▆▇█"


def sparkline(values: Sequence[float], lo: float | None = None, hi: float | None = None) -> str:
    """A one-line chart of VALUES scaled between LO and HI (default: their min and max)."""
    if not values:
        return ""
    lo = min(values) if lo is None else lo
    hi = max(values) if hi is None else hi
    if hi <= lo:
        return _TICKS[len(_TICKS) // 2] * len(values)
    step = (hi - lo) / (len(_TICKS) - 1)
    return "".join(_TICKS[max(0, min(len(_TICKS) - 1, round((v - lo) / step)))] for v in values)
