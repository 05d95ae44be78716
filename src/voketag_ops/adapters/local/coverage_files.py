"""Readers for coverage data: coverage.py's JSON report, Cobertura XML, and `.coverage` files.

Each reader turns one input into `FileCoverage` records keyed by a normalized path
(remapped with the configured `PathMap`, then made relative to the project root when
it lies under it), so inputs of different formats and from different machines line up.
The format is recognised from the content, not the file name. Every rejection is an
`InputError` (or `UsageError` for a path that does not exist) with a one-line message.

`.coverage` (SQLite) data holds only what ran: statements come from parsing the
sources, so it is read through coverage.py's own API (imported only here) with the
project's coverage configuration, in the project root, and needs the sources.
"""

from __future__ import annotations

import contextlib
import glob
import json
import os
import re
import shutil
import sqlite3
import tempfile
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import IO, Any

from voketag_ops.config import MAX_PRECISION
from voketag_ops.core.coverage import (
    EXIT,
    UNKNOWN,
    Counts,
    FileCoverage,
    PathMap,
    Region,
    is_absolute,
    normalize_path,
    relative_to,
)
from voketag_ops.errors import ConfigError, InputError, UsageError
from voketag_ops.redact import redact

JSON_FORMATS = (1, 2, 3)  # coverage.json `meta.format` (absent = 1); 3 added regions (coverage.py 7.6)
SQLITE_MAGIC = b"SQLite format 3\x00"
DATA_FILE_HINT = (
    "actions/upload-artifact >= 4.4 skips hidden files such as .coverage.*: "
    "set `include-hidden-files: true` on the upload step"
)


@dataclass(frozen=True)
class CoverageInput:
    """One input file (or one set of combined `.coverage` files) as read."""

    source: str  # what was given on the command line
    format: str  # "json" | "cobertura" | "coverage-data"
    tool_version: str | None  # the coverage.py version that wrote it, when known
    branch: bool  # measured branches
    files: tuple[FileCoverage, ...]
    warnings: tuple[str, ...] = ()  # coverage.py's own warnings while reading (a file it skipped)
    json_format: int | None = None  # coverage.json `meta.format` when the report states one


@dataclass(frozen=True)
class PathNormalizer:
    """Raw keys -> comparable paths: remap first, then relative to ROOT when under it."""

    root: str
    remap: PathMap = field(default_factory=PathMap)

    def __call__(self, raw: str) -> str:
        path = self.remap.apply(raw)
        if is_absolute(path):
            path = relative_to(path, self.root)
        return path


def read_inputs(
    paths: Sequence[Path], *, root: Path, remap: PathMap | None = None, regions: bool = False
) -> list[CoverageInput]:
    """Read every input; `.coverage` data files (given or found in a directory) are combined."""
    if not paths:
        raise UsageError("no coverage input given")
    norm = PathNormalizer(normalize_path(str(root.resolve())), remap or PathMap())
    inputs: list[CoverageInput] = []
    data_files: list[Path] = []
    for given in paths:
        path = given if given.is_absolute() else root / given
        if path.is_dir():
            found = sorted(p for p in path.iterdir() if p.is_file() and _is_data_file_name(p.name))
            if not found:
                raise InputError(
                    f"{given}: no coverage data files (.coverage, .coverage.*) here", hint=DATA_FILE_HINT
                )
            data_files.extend(found)
            continue
        if not path.exists():
            raise UsageError(f"{given}: no such file")
        label = str(given)
        # Opened once and sniffed from the same handle: a pipe (/dev/stdin, <(...), a FIFO) cannot
        # be opened a second time to be parsed.
        try:
            with path.open("rb") as fh:
                head = fh.read(64)
                stripped = head.lstrip(b"\xef\xbb\xbf \t\r\n")
                if head.startswith(SQLITE_MAGIC):
                    data_files.append(path)  # (coverage.py opens it by name)
                elif stripped.startswith((b"{", b"[")):
                    inputs.append(read_json(head, fh, norm, regions=regions, label=label))
                elif stripped.startswith(b"<"):
                    inputs.append(read_cobertura(head, fh, norm, label=label))
                elif not stripped:
                    raise InputError(
                        f"{given}: empty file; expected coverage.json, Cobertura XML or a .coverage file"
                    )
                else:
                    raise InputError(
                        f"{given}: not coverage data (expected coverage.json, Cobertura XML or a .coverage file)"
                    )
        except OSError as exc:
            raise InputError(f"{label}: cannot read: {exc.strerror}") from None
    if data_files:
        inputs.append(read_data_files(data_files, root, norm, regions=regions))
    return inputs


def _is_data_file_name(name: str) -> bool:
    return name == ".coverage" or (name.startswith(".coverage.") and not name.endswith((".json", ".xml")))


# -- coverage.json ---------------------------------------------------------------------------------
def read_json(
    head: bytes, fh: IO[bytes], norm: PathNormalizer, *, regions: bool = False, label: str
) -> CoverageInput:
    """Read coverage.py's JSON report (formats 1-3): HEAD, already read, then the rest of FH."""
    try:
        doc = json.loads(head + fh.read())
    except json.JSONDecodeError as exc:
        raise InputError(
            f"{label}: not valid JSON: {exc.msg} (line {exc.lineno}, column {exc.colno})"
        ) from None
    except UnicodeDecodeError:
        raise InputError(f"{label}: not valid JSON: not UTF-8 text") from None
    except RecursionError:
        raise InputError(f"{label}: not valid JSON: nested too deeply") from None
    except ValueError as exc:  # an integer of more digits than Python converts
        raise InputError(f"{label}: not valid JSON: {_short(exc)}") from None
    except OSError as exc:
        raise InputError(f"{label}: cannot read: {exc.strerror}") from None
    return parse_json_report(doc, norm, regions=regions, label=label)


def parse_json_report(
    doc: Any, norm: PathNormalizer, *, regions: bool = False, label: str = "input"
) -> CoverageInput:
    """coverage.json already decoded."""
    if (
        not isinstance(doc, dict)
        or not isinstance(doc.get("meta"), dict)
        or not isinstance(doc.get("files"), dict)
    ):
        raise InputError(f"{label}: not a coverage.py JSON report (no 'meta' and 'files' objects)")
    meta = doc["meta"]
    fmt = meta.get("format", 1)
    if fmt not in JSON_FORMATS or isinstance(fmt, bool):
        raise InputError(
            f"{label}: coverage.json format {fmt!r} is not supported "
            f"(voke reads formats {JSON_FORMATS[0]}-{JSON_FORMATS[-1]}, written by coverage.py up to 7.17)"
        )
    version = meta.get("version")
    branch = bool(meta.get("branch_coverage", False))
    files = []
    try:
        for key, entry in doc["files"].items():
            files.append(_json_file(norm(key), entry, branch, regions))
    except (TypeError, ValueError, KeyError, AttributeError) as exc:
        raise InputError(f"{label}: malformed coverage.json: {_short(exc)}") from None
    return CoverageInput(
        label,
        "json",
        version if isinstance(version, str) else None,
        branch,
        tuple(files),
        json_format=meta.get("format"),
    )


def _short(exc: Exception) -> str:
    text = redact(str(exc)).splitlines()[0] if str(exc) else type(exc).__name__
    return text[:200]


def _ints(value: Any, what: str) -> frozenset[int]:
    if not isinstance(value, list) or not all(type(v) is int for v in value):
        raise ValueError(f"{what} must be a list of line numbers")
    return frozenset(value)


def _arcs(value: Any, what: str) -> list[tuple[int, int]]:
    """Branch arcs: [from, to] pairs of line numbers (to < 0 is an exit from the code object)."""
    if not isinstance(value, list) or not all(
        isinstance(pair, list) and len(pair) == 2 and all(type(n) is int for n in pair) for pair in value
    ):
        raise ValueError(f"{what} must be a list of [from, to] line-number pairs")
    return value


_SUMMARY_KEYS = ("num_statements", "missing_lines", "excluded_lines")
_BRANCH_SUMMARY_KEYS = ("num_branches", "missing_branches", "num_partial_branches")


def _stated(summary: Any, path: str, branch: bool) -> Counts | None:
    """A file's `summary`: coverage.py's own counts for it, what `coverage report` prints
    (None when the entry has none, or lacks one of them: its lists are then all there is)."""
    keys = _SUMMARY_KEYS + (_BRANCH_SUMMARY_KEYS if branch else ())
    if not isinstance(summary, dict) or not all(k in summary for k in keys):
        return None
    for key in keys:
        if type(summary[key]) is not int or summary[key] < 0:
            raise ValueError(f"{path}: summary.{key} must be a count")
    statements, missing, excluded = (summary[k] for k in _SUMMARY_KEYS)
    branches, missing_branches, partial = (summary[k] for k in _BRANCH_SUMMARY_KEYS) if branch else (0, 0, 0)
    if missing > statements or max(missing_branches, partial) > branches:
        raise ValueError(f"{path}: summary counts more missed than there are")
    return Counts(statements, missing, branches, missing_branches, partial, excluded, files=1)


def _json_file(path: str, entry: Any, branch: bool, want_regions: bool) -> FileCoverage:
    """One file of coverage.json. Its totals are its `summary` (coverage.py's own counts); the
    lists give the lines and exits for gap lists, diff coverage and combining. coverage.py up
    to 7.11 lists lines that are no statements among the executed ones (an excluded line that
    ran, line 1 of a module without statements), lists no arcs at all in format 1 (6.2) and
    arcs that disagree with its exit counts in 6.3-7.5 (a `with` line): where the lists still
    fall short of the summary, the file keeps the summary as its `stated` counts."""
    if not isinstance(entry, dict):
        raise ValueError(f"files[{path!r}] must be an object")
    excluded = _ints(entry.get("excluded_lines", []), f"{path}: excluded_lines")
    executed = _ints(entry.get("executed_lines", []), f"{path}: executed_lines") - excluded
    missing = _ints(entry.get("missing_lines", []), f"{path}: missing_lines")
    stated = _stated(entry.get("summary"), path, branch)
    if stated is not None and stated.covered == 0:
        executed = frozenset()  # none of its statements ran: what ran was no statement
    missing -= executed
    branches: dict[int, tuple[int, tuple[int, ...]]] = {}
    if branch:
        exits: dict[int, int] = {}
        missed: dict[int, list[int]] = {}
        for a, _b in _arcs(entry.get("executed_branches", []), f"{path}: executed_branches"):
            exits[a] = exits.get(a, 0) + 1
        for a, b in _arcs(entry.get("missing_branches", []), f"{path}: missing_branches"):
            exits[a] = exits.get(a, 0) + 1
            missed.setdefault(a, []).append(EXIT if b < 0 else b)
        branches = {line: (n, tuple(sorted(missed.get(line, ())))) for line, n in exits.items()}
    statements = executed | missing
    found: list[Region] = []
    if want_regions:
        for kind, plural in (("function", "functions"), ("class", "classes")):
            for name, reg in (entry.get(plural) or {}).items():
                lines = statements & (
                    _ints(reg.get("executed_lines", []), f"{path}: {name}")
                    | _ints(reg.get("missing_lines", []), f"{path}: {name}")
                )
                start = reg.get("start_line")
                if not lines and name:
                    continue
                found.append(
                    Region(
                        name, kind, start if type(start) is int else (min(lines) if lines else None), lines
                    )
                )
    listed = FileCoverage(path, executed, missing, excluded, branches, tuple(found), branch)
    if stated is None or _counted(stated) == _counted(listed.listed_counts):
        return listed
    return replace(listed, stated=stated)


def _counted(c: Counts) -> tuple[int, int, int, int, int]:
    return c.statements, c.missing, c.branches, c.missing_branches, c.partial_branches


# -- Cobertura XML ---------------------------------------------------------------------------------
_CONDITION = re.compile(r"\((\d+)/(\d+)\)")
_MAX_EXITS = 100_000  # branch exits of one line: far beyond any real switch, bounds the memory


class _Refused(Exception):
    pass


def _attribute_int(attrib: dict[str, str], name: str, default: str | None) -> int:
    value = attrib.get(name, default)
    if value is None:
        raise ValueError(f"<line> has no {name} attribute")
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"<line> {name} {value!r} is not an integer") from None


class _CoberturaTarget:
    """Streaming ElementTree target: keeps only what coverage needs, builds no tree."""

    def __init__(self) -> None:
        self.stack: list[str] = []
        self.root_attrib: dict[str, str] | None = None
        self.sources: list[str] = []
        self._text: list[str] = []
        self.files: dict[str, dict[int, tuple[bool, tuple[int, int] | None, tuple[int, ...] | None]]] = {}
        self.current: dict[int, tuple[bool, tuple[int, int] | None, tuple[int, ...] | None]] | None = None
        self.any_branch = False
        self.filename = ""

    def doctype(self, name: str, system: str | None, pubid: str | None, internal: bool) -> None:
        raise _Refused("a DTD")

    def start(self, tag: str, attrib: dict[str, str]) -> None:
        if not self.stack:
            if tag != "coverage":
                raise _Refused(f"root <{tag}>")
            self.root_attrib = dict(attrib)
        elif tag == "source":
            self._text = []
        elif tag == "class" and self.stack[-1] == "classes":
            filename = attrib.get("filename")
            if not filename:
                raise ValueError("<class> without a filename attribute")
            self.current = self.files.setdefault(filename, {})
            self.filename = filename
        elif tag == "line" and self.current is not None and self.stack[-2:] == ["class", "lines"]:
            self._line(attrib)
        self.stack.append(tag)

    def _line(self, attrib: dict[str, str]) -> None:
        assert self.current is not None
        number = _attribute_int(attrib, "number", None)
        hit = _attribute_int(attrib, "hits", "0") > 0
        cond = None
        dests = None
        if attrib.get("branch") == "true" and "condition-coverage" in attrib:
            m = _CONDITION.search(attrib["condition-coverage"])
            if m:
                cond = (int(m.group(1)), int(m.group(2)))
                if not cond[0] <= cond[1] <= _MAX_EXITS:
                    raise ValueError(
                        f'<line number="{number}"> of {self.filename}: condition-coverage'
                        f" {attrib['condition-coverage']!r} is not"
                        f" taken <= exits <= {_MAX_EXITS:,}"
                    )
                self.any_branch = True
                if "missing-branches" in attrib:
                    try:
                        dests = tuple(
                            EXIT if d.strip() == "exit" else int(d)
                            for d in attrib["missing-branches"].split(",")
                            if d.strip()
                        )
                    except ValueError:
                        raise ValueError(
                            f"<line> missing-branches {attrib['missing-branches']!r} is not a list of line numbers"
                        ) from None
        old = self.current.get(number)
        if old is not None:  # the same line twice (several <class> for one file): covered if either says so
            hit = hit or old[0]
            if old[1] is not None and (cond is None or old[1][0] > cond[0]):
                cond, dests = old[1], old[2]
        self.current[number] = (hit, cond, dests)

    def end(self, tag: str) -> None:
        self.stack.pop()
        if tag == "source":
            text = "".join(self._text).strip()
            if text:
                self.sources.append(text)
        elif tag == "class":
            self.current = None

    def data(self, text: str) -> None:
        if self.stack and self.stack[-1] == "source":
            self._text.append(text)


def read_cobertura(head: bytes, fh: IO[bytes], norm: PathNormalizer, *, label: str) -> CoverageInput:
    """Read a Cobertura XML report, HEAD (already read) then the rest of FH; totals come from per-line hits and condition counts
    (the same integers as the root's lines-covered/lines-valid, never the rounded rates).
    DTDs are refused, so no entity can be declared or expanded. Expat drives the target
    itself, so an element voke cannot read is named with its line and column."""
    from xml.parsers import expat

    target = _CoberturaTarget()
    parser = expat.ParserCreate()

    def start(tag: str, attrib: dict[str, str]) -> None:
        try:
            target.start(tag, attrib)
        except ValueError as exc:  # where the element starts: expat has moved on once it is raised
            where = f"line {parser.CurrentLineNumber}, column {parser.CurrentColumnNumber + 1}"
            raise InputError(f"{label}: {where}: malformed Cobertura XML: {_short(exc)}") from None

    parser.StartElementHandler = start
    parser.EndElementHandler = target.end
    parser.CharacterDataHandler = target.data
    parser.StartDoctypeDeclHandler = target.doctype
    try:
        parser.Parse(head, False)
        while chunk := fh.read(1 << 20):
            parser.Parse(chunk, False)
        parser.Parse(b"", True)
    except _Refused as exc:
        what = str(exc)
        if what.startswith("root"):
            raise InputError(f"{label}: not a Cobertura XML report ({what}, expected <coverage>)") from None
        raise InputError(f"{label}: XML with {what} refused (DTDs and entities are not accepted)") from None
    except expat.ExpatError as exc:  # its own text counts columns from 0
        where = f"line {exc.lineno}, column {exc.offset + 1}"
        raise InputError(
            f"{label}: {where}: not well-formed XML: {expat.errors.messages[exc.code]}"
        ) from None
    except OSError as exc:
        raise InputError(f"{label}: cannot read: {exc.strerror}") from None
    attrib = target.root_attrib or {}
    if "line-rate" not in attrib and "lines-valid" not in attrib:
        raise InputError(f"{label}: not a Cobertura XML report (<coverage> has no line-rate or lines-valid)")
    branch = target.any_branch or attrib.get("branches-valid", "0") not in ("0", "")
    files = []
    for filename, lines in target.files.items():
        for joined in _join_source(filename, target.sources, norm, label, counted=bool(lines)):
            files.append(_cobertura_file(joined, lines, branch))
    return CoverageInput(label, "cobertura", attrib.get("version") or None, branch, tuple(files))


def _join_source(
    filename: str, sources: Sequence[str], norm: PathNormalizer, label: str, *, counted: bool
) -> tuple[str, ...]:
    """FILENAME (relative to one of the report's <source> entries) as comparable paths: one,
    but for a file that counts nothing (COUNTED false). With several sources it is the one
    under which the file exists here, each source remapped (--map, coverage.remap) and a
    relative one read from the project root; a report made elsewhere whose files cannot be
    found here is refused rather than given the first source (every file of a multi-service
    report would land in one service). A file with no <line> found under several sources (the
    empty __init__.py of each package of `source = a, b, c`, which coverage.py writes as one
    <class>) is each of them, as coverage.json lists them: nothing to place, nothing to refuse."""
    name = normalize_path(filename)
    if is_absolute(name) or not sources:
        return (norm(name),)
    # (two spellings of one source, `.` and `./`, are one place)
    joined = list(
        dict.fromkeys(norm(normalize_path(normalize_path(src).rstrip("/") + "/" + name)) for src in sources)
    )
    if len(joined) == 1:
        return (joined[0],)
    here = [p for p in joined if os.path.exists(p if is_absolute(p) else os.path.join(norm.root, p))]
    if len(here) > 1 and not counted:
        return tuple(here)
    if len(here) > 1:  # coverage.py keyed the file by its path under one source: which, it does not say
        raise InputError(
            f"{label}: {name} exists under {len(here)} of its <source> entries here ({', '.join(here)}): "
            "the report cannot say which one it measured (Cobertura names files under their source, "
            "whatever relative_files says); use `coverage json` (paths from the project root), "
            "`[run] source = .`, or one report per service"
        )
    if here:
        return (here[0],)
    raise InputError(
        f"{label}: {name} is under none of its {len(sources)} <source> entries here "
        f"({', '.join(sources)}): the report was made elsewhere; map those sources to this checkout "
        "with --map FROM=TO (or coverage.remap), or run where the sources are"
    )


def _cobertura_file(
    path: str, lines: dict[int, tuple[bool, tuple[int, int] | None, tuple[int, ...] | None]], branch: bool
) -> FileCoverage:
    executed = frozenset(n for n, (hit, _, _) in lines.items() if hit)
    missing = frozenset(n for n, (hit, _, _) in lines.items() if not hit)
    branches: dict[int, tuple[int, tuple[int, ...]]] = {}
    for n, (_, cond, dests) in lines.items():
        if cond is None:
            continue
        taken, exits = cond
        n_missed = exits - taken
        if dests is None or len(dests) != n_missed:
            dests = (UNKNOWN,) * n_missed  # counts only: merging keeps the smaller miss count
        branches[n] = (exits, tuple(sorted(dests)))
    return FileCoverage(path, executed, missing, frozenset(), branches, (), branch)


# -- .coverage data files ------------------------------------------------------------------------
def read_data_files(
    data_files: Sequence[Path], root: Path, norm: PathNormalizer, *, regions: bool = False
) -> CoverageInput:
    """Read (and combine, when several) `.coverage` data files with coverage.py itself.

    Runs in ROOT so that the project's coverage configuration ([run], [report], [paths])
    and its relative paths apply, as they would for `coverage report` there. One data file
    given alone is read as `coverage report --data-file=FILE` reads it: with the data files
    named FILE.* beside it combined in when coverage.py is 7.14 or later (its reporting
    commands do so since then, and delete them; voke combines into a temporary copy and
    leaves every file as it was).
    """
    try:
        import coverage
        from coverage.exceptions import CoverageException, CoverageWarning, DataError, NoDataError, NoSource
    except ImportError:
        raise ConfigError(
            "reading .coverage files needs coverage.py, which is not installed",
            hint="pip install coverage, or pass coverage.json (`coverage json`) instead",
        ) from None

    siblings = _siblings(data_files[0]) if len(data_files) == 1 and _report_combines(coverage) else []
    label = ", ".join(str(p) for p in (*data_files, *siblings))
    _check_combinable(data_files, coverage, siblings=siblings)
    with (
        tempfile.TemporaryDirectory(prefix="voke-coverage-") as tmp,
        _chdir(root),
        warnings.catch_warnings(record=True) as warned,  # said in the error, not as raw Python warnings
    ):
        warnings.simplefilter("always")
        try:
            combined = os.path.join(tmp, ".coverage")
            if len(data_files) == 1 and data_files[0].name == ".coverage" and not siblings:
                cov = coverage.Coverage(data_file=str(data_files[0]), config_file=True)
                cov.load()
            elif len(data_files) == 1 and data_files[0].name == ".coverage":
                shutil.copyfile(data_files[0], combined)  # coverage.py would combine into the file itself
                cov = coverage.Coverage(data_file=combined, config_file=True)
                cov.load()
            else:
                cov = coverage.Coverage(data_file=combined, config_file=True)
                cov.combine([str(p) for p in data_files], strict=True, keep=True)
            if siblings:  # as `coverage report` does: not strict (an unreadable one is a warning)
                cov.combine([str(p) for p in siblings], strict=False, keep=True)
            out = os.path.join(tmp, "coverage.json")
            # ignore_errors as the project's [report] says (a measured file since deleted is then
            # skipped with a warning, as `coverage report` skips it)
            cov.json_report(outfile=out)
        except NoSource as exc:
            raise InputError(
                f"{label}: the sources are missing: {_short(exc)}",
                hint="read .coverage where it was measured (same paths), map them with [paths] in the "
                "coverage config, pass coverage.json made with `coverage json` there, or set "
                "[report] ignore_errors = True to skip such files as `coverage report` then does",
            ) from None
        except NoDataError as exc:
            said = "; ".join(dict.fromkeys(str(w.message) for w in warned))
            raise InputError(
                f"{label}: no coverage data: {_short(exc)}" + (f" ({said})" if said else ""),
                hint=DATA_FILE_HINT,
            ) from None
        except (DataError, CoverageException) as exc:
            raise InputError(f"{label}: cannot read coverage data: {_short(exc)}") from None
        except Exception as exc:  # sqlite3 errors and the like from a damaged file
            if type(exc).__module__.startswith(("sqlite3", "coverage")):
                raise InputError(f"{label}: cannot read coverage data: {_short(exc)}") from None
            raise
        with open(out, "rb") as fh:
            report = read_json(b"", fh, norm, regions=regions, label=label)
    told = tuple(
        dict.fromkeys(_coverage_warning(w.message) for w in warned if issubclass(w.category, CoverageWarning))
    )
    return CoverageInput(label, "coverage-data", coverage.__version__, report.branch, report.files, told)


def _report_combines(coverage: Any) -> bool:
    """Whether this coverage.py's reporting commands (`report`, `json`, `xml`...) combine the
    data files beside the data file first: since 7.14 (`Coverage.load` then `combine`)."""
    return tuple(getattr(coverage, "version_info", (0,))[:2]) >= (7, 14)


def _siblings(data_file: Path) -> list[Path]:
    """The data files coverage.py's reporting commands combine into DATA_FILE: those named
    DATA_FILE.* in its directory (`coverage.data.combinable_files`), but SQLite journals; here
    only regular files that are coverage.py's SQLite databases (a `.coverage.json` report beside
    it is no data)."""
    found = []
    for name in sorted(glob.glob(glob.escape(str(data_file)) + ".*")):
        path = Path(name)
        if path.name.endswith("-journal") or not path.is_file():
            continue
        try:
            with path.open("rb") as fh:
                if fh.read(len(SQLITE_MAGIC)) != SQLITE_MAGIC:
                    continue
        except OSError:
            continue
        if _not_coverage_data(path) is None:
            found.append(path)
    return found


def _not_coverage_data(path: Path) -> str | None:
    """Why PATH is a file coverage.py would write its tables into when asked to read it (an
    empty file, another SQLite database), or None. Read through SQLite's read-only, immutable
    URI: opened read-write, a database also rolls back a journal beside it. Anything else
    coverage.py reads or refuses by itself, naming it."""
    try:
        if path.stat().st_size == 0:
            return "empty file, not coverage data"
        with path.open("rb") as fh:
            if fh.read(len(SQLITE_MAGIC)) != SQLITE_MAGIC:
                return None
        db = sqlite3.connect(path.resolve().as_uri() + "?mode=ro&immutable=1", uri=True)
        try:
            db.execute("select version from coverage_schema").fetchone()
        finally:
            db.close()
    except sqlite3.OperationalError as exc:
        if "no such table" in str(exc):
            return "an SQLite database without coverage.py's tables, not coverage data"
    except (OSError, sqlite3.Error):
        pass
    return None


def _coverage_warning(message: Warning | str) -> str:
    """coverage.py's warning without its pointer to the documentation, first line only."""
    text = redact(str(message)).splitlines()[0] if str(message) else type(message).__name__
    return re.sub(r"; see https?://\S+$", "", text)[:300]


def _check_combinable(data_files: Sequence[Path], coverage: Any, *, siblings: Sequence[Path] = ()) -> None:
    """Name a file coverage.py cannot read (combining would only warn about it, and then say
    there is no data), and both files when branch data meets statement data (coverage.py
    names only one). An unreadable sibling is left to coverage.py, which skips it with a
    warning when it reports."""
    for path in data_files:  # checked before coverage.py opens it: it would write into it
        if why := _not_coverage_data(path):
            raise InputError(f"{path}: {why}", hint="delete it, or move it out of the way")
    kinds: dict[bool, Path] = {}
    for path in (*data_files, *siblings):
        data = coverage.CoverageData(basename=str(path))
        try:
            data.read()
            if not data.measured_files():
                continue
            kinds.setdefault(data.has_arcs(), path)
        except Exception as exc:
            if path in siblings:
                continue
            raise InputError(f"{path}: cannot read coverage data: {_short(exc)}") from None
    if len(kinds) == 2:
        raise InputError(
            f"cannot combine {kinds[True]} (branch data) with {kinds[False]} (statement data only)",
            hint="measure every run with the same [run] branch setting",
        )


@contextlib.contextmanager
def _chdir(path: Path) -> Iterator[None]:
    old = os.getcwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(old)


# -- coverage.py's own configuration ------------------------------------------------------------
def coverage_precision(root: Path) -> int | None:
    """`[report] precision` as coverage.py itself reads it for a run in ROOT (None without
    coverage.py). Asked of coverage.py, not re-implemented: which file it reads (COVERAGE_RCFILE,
    .coveragerc, .coveragerc.toml, setup.cfg, tox.ini, pyproject.toml), which sections count
    there and which file ends the search have changed between its versions."""
    value, where = _coverage_option(root, "report:precision")
    if type(value) is not int:
        return None
    if not 0 <= value <= MAX_PRECISION:
        raise ConfigError(f"{where}: [report] precision = {value} is outside 0..{MAX_PRECISION}")
    return value


def coverage_fail_under(root: Path) -> float | None:
    """`[report] fail_under` as coverage.py reads it for a run in ROOT; None when it sets none
    (coverage.py's 0 means no gate)."""
    value, where = _coverage_option(root, "report:fail_under")
    if type(value) not in (int, float) or value == 0:
        return None
    if not 0 < value <= 100:
        raise ConfigError(f"{where}: [report] fail_under = {value} is not a percentage")
    return float(value)


def _coverage_option(root: Path, name: str) -> tuple[Any, str]:
    """The option NAME as coverage.py reads it in ROOT, and where it read it (for a message)."""
    try:
        import coverage
        from coverage.exceptions import CoverageException
    except ImportError:
        return None, ""
    with _chdir(root), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # its own complaints about unknown options
        try:
            cov = coverage.Coverage(config_file=True)
            value = cov.get_option(name)
        except CoverageException as exc:
            raise ConfigError(f"coverage.py's configuration in {root}: {exc}") from None
    read = getattr(cov.config, "config_files_read", None) or []
    return value, f"coverage.py's configuration ({', '.join(map(str, read)) or root})"
