"""`voke coverage` use cases: coverage inputs + settings -> report objects.

Each public function is one command verb. They read inputs through the local adapters,
do the arithmetic in `core.coverage`, write the files the command is for (badge,
history, the GitHub step summary) and return a frozen report that the CLI renders or
prints as JSON. Nothing here prints.
"""

from __future__ import annotations

import fcntl
import itertools
import json
import os
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from voketag_ops.core import coverage as cov
from voketag_ops.core.coverage import Counts, FileCoverage, Rule, Score
from voketag_ops.core.text import counted
from voketag_ops.errors import ConfigError, InputError, UsageError
from voketag_ops.logs import get_logger

log = get_logger(__name__)

if TYPE_CHECKING:
    from voketag_ops.adapters.local.coverage_files import CoverageInput
    from voketag_ops.config import CoverageSettings

STEP_SUMMARY_LIMIT = 1024 * 1024  # GitHub drops a step summary larger than 1024k
ANNOTATION_LIMIT = 10  # GitHub shows at most 10 warning annotations per step
# `history show` without --last reads a history whole (every run is in the trend): 32 MiB is
# some 50,000 runs of three services and parses into some 300 MB; /dev/zero is refused. `history
# add`, --baseline-from and `show --last` read only the last runs, from the end, whatever its size.
HISTORY_LIMIT = 32 << 20
HISTORY_LINE_LIMIT = 1 << 20  # one run: some 7,000 services


# -- options and inputs ----------------------------------------------------------------------------
@dataclass(frozen=True)
class Options:
    """What command-line flags can change; None means "from the configuration"."""

    precision: int | None = None
    fail_under: float | None = None
    strict: bool = False
    rule: str | None = None  # "auto" or a Rule's value, as `coverage.rule` takes it
    services: tuple[str, ...] = ()
    remap: tuple[tuple[str, str], ...] = ()
    baseline_from: Path | None = None


def parse_mapping(text: str) -> tuple[str, str]:
    """ "FROM=TO" (TO may be empty) -> (FROM, TO)."""
    src, sep, dst = text.partition("=")
    if not sep or not src.strip():
        raise UsageError(f"--map {text!r}: expected FROM=TO, e.g. /app/src/=")
    return src.strip(), dst.strip()


@dataclass(frozen=True)
class InputInfo:
    """One input as read."""

    source: str
    format: str
    coverage_version: str | None
    branch: bool
    files: int


@dataclass
class _Loaded:
    inputs: list[InputInfo]
    files: dict[str, FileCoverage]
    precision: int
    rule: Rule
    branch: bool
    coverage_version: str | None
    warnings: list[str]  # coverage.py's, while reading the inputs (a file `ignore_errors` skipped)


def _version_tuple(version: str | None) -> tuple[int, ...] | None:
    if not version:
        return None
    m = re.match(r"(\d+)\.(\d+)(?:\.(\d+))?", version)
    return (int(m.group(1)), int(m.group(2)), int(m.group(3) or 0)) if m else None


def resolve_rule(setting: str, versions: Iterable[str | None]) -> Rule:
    """The gate rule: explicit, or (auto) the rule of the newest coverage.py that wrote an input."""
    if setting != "auto":
        return Rule(setting)
    known = [v for v in (_version_tuple(x) for x in versions) if v is not None]
    if known and max(known) < (7, 17, 1):  # 7.17.1 changelog: --fail-under at the target's decimals
        return Rule.COVERAGE_716
    return Rule.COVERAGE


def _load(
    settings: CoverageSettings, paths: Sequence[Path], root: Path, options: Options, *, regions: bool = False
) -> _Loaded:
    from voketag_ops.adapters.local.coverage_files import read_inputs

    remap = cov.PathMap(tuple(options.remap) + tuple(settings.remap.items()))
    inputs = read_inputs(list(paths), root=root, remap=remap, regions=regions)
    with_files = [i for i in inputs if i.files]
    kinds = {i.branch: i.source for i in with_files}
    if len(kinds) == 2:
        raise InputError(
            f"cannot combine {kinds[True]} (branch data) with {kinds[False]} (statement data only)",
            hint="measure every run with the same [run] branch setting",
        )
    _check_counting_rules(with_files)
    try:
        files = cov.combine(f for i in inputs for f in i.files)
    except cov.InexactMerge as exc:
        raise _inexact_merge(exc.path, inputs) from None
    if not files:  # as `coverage report` says; a total over nothing is no 100 %
        raise InputError(
            f"no data to report: {', '.join(i.source for i in inputs)} measure no file",
            hint="check that the tests ran under coverage and that `coverage json`/`xml` wrote this run",
        )
    precision = _precision(options.precision, settings, root)
    versions = [i.tool_version for i in inputs]
    if options.strict:
        rule = Rule.STRICT
    else:
        rule = resolve_rule(settings.rule if options.rule is None else options.rule, versions)
    known = sorted((v for v in versions if v), key=lambda v: _version_tuple(v) or (0,))
    return _Loaded(
        inputs=[InputInfo(i.source, i.format, i.tool_version, i.branch, len(i.files)) for i in inputs],
        files=files,
        precision=precision,
        rule=rule,
        branch=any(i.branch for i in with_files),
        coverage_version=known[-1] if known else None,
        warnings=list(dict.fromkeys(w for i in inputs for w in i.warnings)),
    )


def _check_counting_rules(inputs: Sequence[CoverageInput]) -> None:
    """Refuse INPUTS whose coverage.py versions can count differently: another major.minor
    (6.5 counts a `with` line as two branch exits, 7.x none; 7.6-7.11 list lines that are no
    statements), or another coverage.json `meta.format`; their union is no version's total, and
    no rule is theirs. Patch releases of one minor combine: a patch fixes one construct's count,
    not how counting works (the gate rule is the newest input's: `resolve_rule`)."""
    written = [i for i in inputs if i.tool_version]
    rules = {(_version_tuple(i.tool_version) or ())[:2] or i.tool_version for i in written}
    formats = {i.json_format for i in inputs if i.json_format is not None}
    if len(rules) < 2 and len(formats) < 2:
        return
    what = "coverage.py versions" if len(rules) > 1 else "coverage.json formats"

    def by(i: CoverageInput) -> str:
        fmt = f", format {i.json_format}" if len(formats) > 1 and i.json_format is not None else ""
        return f"{i.source} (coverage.py {i.tool_version or 'unknown'}{fmt})"

    named = ", ".join(by(i) for i in inputs if i.tool_version or i.json_format is not None)
    raise InputError(
        f"cannot combine reports of different {what}: {named}",
        hint="combine the runs' data with one coverage.py (`coverage combine`, then `coverage json`), "
        "or pass voke their .coverage files; reports of one coverage.py major.minor combine",
    )


def _inexact_merge(path: str, inputs: Sequence[CoverageInput]) -> InputError:
    """The error for PATH, in several INPUTS, one of which states counts its lists do not give."""
    holding = [i for i in inputs if any(f.path == path for f in i.files)]
    short = next(i for i in holding if any(f.path == path and f.stated is not None for f in i.files))
    by = f" (coverage.py {short.tool_version})" if short.tool_version else ""
    named = ", ".join(dict.fromkeys(i.source for i in holding))
    return InputError(
        f"{path} is in several inputs ({named}), and {short.source}{by} gives counts for it that its line and "
        "branch lists do not reproduce, so voke cannot combine them exactly",
        hint="combine the runs with `coverage combine` first (or pass voke their .coverage files), "
        "or write coverage.json with coverage.py 7.13 or later",
    )


def _specs(settings: CoverageSettings, options: Options) -> list[cov.ServiceSpec]:
    if options.fail_under is not None:
        cov.check_target(options.fail_under)
    specs = []
    for name, svc in settings.services.items():
        target = options.fail_under if options.fail_under is not None else svc.target
        specs.append(
            cov.ServiceSpec(
                name=name,
                prefixes=settings.service_prefixes(name),
                target=settings.target if target is None else target,
                baseline=svc.baseline,
            )
        )
    unknown = [s for s in options.services if s not in settings.services]
    if unknown:
        known = ", ".join(settings.services) or "none configured"
        raise UsageError(f"unknown service {unknown[0]!r} (configured: {known})")
    return specs


MAP_CI_PATHS = "map CI paths with coverage.remap (or --map FROM=TO)"


def _sample(paths: Iterable[str]) -> str:
    """Up to three of PATHS, sorted, and how many more: "a.py, b.py, c.py and 4 more"."""
    ordered = sorted(paths)
    more = f" and {len(ordered) - 3} more" if len(ordered) > 3 else ""
    return ", ".join(ordered[:3]) + more


def _overall_target(settings: CoverageSettings, options: Options) -> float | None:
    """The total's target; none with --service, which judges those services alone (a monorepo's
    job per service): the total is shown, not judged."""
    if options.services:
        return None
    return options.fail_under if options.fail_under is not None else settings.target


def _grouped(
    loaded: _Loaded, specs: Sequence[cov.ServiceSpec], selected: Sequence[str], *, require: bool = True
) -> tuple[dict[str, list[FileCoverage]], list[FileCoverage], list[str]]:
    """Files per service (longest prefix wins), unassigned files, and warnings."""
    grouped, unassigned = cov.group_by_service(loaded.files.values(), specs)
    warnings = list(loaded.warnings)
    if unassigned:
        warnings.append(
            f"{counted(len(unassigned), 'file matches', 'files match')} no service "
            f"(counted in the total only): {_sample(f.path for f in unassigned)}"
        )
    if require:
        for spec in specs:
            if selected and spec.name not in selected:
                continue
            if not grouped[spec.name]:
                under = sorted(
                    f.path
                    for f in loaded.files.values()
                    if any(cov.prefix_matches(f.path, p) for p in spec.prefixes)
                )
                if under:  # all taken by services with longer prefixes
                    takers = list(dict.fromkeys(cov.assign(p, specs) or "" for p in under))
                    whose = (
                        "service {}, whose prefix is"
                        if len(takers) == 1
                        else "services {}, whose prefixes are"
                    )
                    raise ConfigError(
                        f"service {spec.name}: every file under its paths ({', '.join(spec.prefixes)}) goes to "
                        f"{whose.format(', '.join(takers))} longer (e.g. {under[0]!r})",
                        hint=f"set coverage.services.{spec.name}.paths to its own files, or pick services with --service",
                    )
                example = (
                    f"; unassigned files look like {sorted(f.path for f in unassigned)[0]!r}"
                    if unassigned
                    else ""
                )
                raise ConfigError(
                    f"service {spec.name}: no file in the coverage data matches its paths "
                    f"({', '.join(spec.prefixes)}){example}",
                    hint=f"set coverage.services.{spec.name}.paths, {MAP_CI_PATHS}, or pick services with --service",
                )
    return grouped, unassigned, warnings


# -- report and gate -------------------------------------------------------------------------------
@dataclass(frozen=True)
class CoverageReport:
    """`voke coverage report` / `gate`: every service and the total against its target."""

    inputs: tuple[InputInfo, ...]
    precision: int
    rule: str
    branch: bool
    totals: Score
    services: tuple[Score, ...]
    unassigned: Score | None
    passed: bool
    failures: tuple[str, ...]
    verdicts: tuple[str, ...]
    warnings: tuple[str, ...]
    baseline_from: str | None = None
    step_summary: str | None = None


def report(
    settings: CoverageSettings,
    paths: Sequence[Path],
    *,
    root: Path,
    options: Options = Options(),
    environ: Mapping[str, str] | None = None,
    title: str = "voke coverage report",
) -> CoverageReport:
    """Totals per service and overall, judged against the targets; writes the GitHub step
    summary when GITHUB_STEP_SUMMARY is set in ENVIRON."""
    settings = _project_target(settings, root)
    loaded = _load(settings, paths, root, options)
    specs = _specs(settings, options)
    grouped, unassigned, warnings = _grouped(loaded, specs, options.services)
    baselines, overall_baseline, baseline_from = _baselines(settings, specs, loaded, options, root)
    p, rule = loaded.precision, loaded.rule
    rows = []
    for spec in specs:
        if options.services and spec.name not in options.services:
            continue
        rows.append(
            cov.score(
                spec.name,
                cov.total(f.counts for f in grouped[spec.name]),
                target=spec.target,
                baseline=baselines.get(spec.name),
                precision=p,
                rule=rule,
            )
        )
    totals = cov.score(
        "overall",
        cov.total(f.counts for f in loaded.files.values()),
        target=_overall_target(settings, options),
        baseline=overall_baseline,
        precision=p,
        rule=rule,
    )
    extra = None
    if unassigned:
        extra = cov.score(
            cov.UNASSIGNED,
            cov.total(f.counts for f in unassigned),
            target=None,
            baseline=None,
            precision=p,
            rule=rule,
        )
    judged = [*rows, totals]
    failures = tuple(cov.verdict(s, p, rule) for s in judged if s.passed is False)
    result = CoverageReport(
        inputs=tuple(loaded.inputs),
        precision=p,
        rule=rule.value,
        branch=loaded.branch,
        totals=totals,
        services=tuple(rows),
        unassigned=extra,
        passed=not failures,
        failures=failures,
        verdicts=tuple(cov.verdict(s, p, rule) for s in judged),
        warnings=tuple(warnings),
        baseline_from=baseline_from,
    )
    written = write_step_summary(environ or {}, report_markdown(result, title))
    return replace(result, step_summary=written) if written else result


def _under(root: Path, path: Path) -> Path:
    return path if path.is_absolute() else root / path


def _baselines(
    settings: CoverageSettings,
    specs: Sequence[cov.ServiceSpec],
    loaded: _Loaded,
    options: Options,
    root: Path,
) -> tuple[dict[str, float | None], float | None, str | None]:
    """Baseline percentages: configured, or computed from the counts of the last history entry."""
    if options.baseline_from is None:
        return {s.name: s.baseline for s in specs}, settings.baseline, None

    # The last run: the entries of its ref at the end of the file (one per service job when
    # each job records its own service), the newest first, read from the end up to the first
    # entry of another ref. Each service's baseline is its newest number there; the overall one
    # only comes from an entry of the whole repository.
    def enough(newest: list[dict[str, Any]]) -> bool:
        return bool(newest) and (not newest[0].get("ref") or newest[-1].get("ref") != newest[0]["ref"])

    path = _under(root, options.baseline_from)
    fd = _open_history(path)
    try:
        entries = [e for _, e in _tail_entries(path, fd, enough)]
    finally:
        os.close(fd)
    if not entries:
        raise InputError(f"{options.baseline_from}: the history is empty; nothing to compare with")
    last = entries[0]
    run = [last]
    if last.get("ref"):
        for entry in entries[1:]:
            if entry.get("ref") != last["ref"]:
                break
            run.append(entry)
    for entry in run:
        if bool(entry.get("branch")) != loaded.branch:
            now, then = ("branch", "statement-only") if loaded.branch else ("statement-only", "branch")
            raise InputError(
                f"cannot compare {now} coverage with the {then} baseline in {options.baseline_from} "
                f"(recorded {entry.get('at')}): branch exits change the denominator, so the delta would be meaningless",
                hint="measure both with the same [run] branch setting",
            )
    out: dict[str, float | None] = {}
    for spec in specs:
        found = next((e["services"][spec.name] for e in run if spec.name in (e.get("services") or {})), None)
        out[spec.name] = None if found is None else _counts(found).percent
    whole = next((e for e in run if not e.get("partial")), None)
    label = f"{options.baseline_from} @ {last.get('at')}" + (f" ({last['ref']})" if last.get("ref") else "")
    return out, None if whole is None else _counts(whole["totals"]).percent, label


# -- gaps ------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ServiceGaps:
    """One service's shortfall and its worst files and functions."""

    name: str
    display: str
    percent: float
    target: float | None
    passed: bool | None
    lines_needed: int | None
    units_needed: int | None
    missing: int
    missing_branches: int
    files: tuple[cov.FileGap, ...]
    functions: tuple[cov.FunctionGap, ...]


@dataclass(frozen=True)
class GapsReport:
    """`voke coverage gaps`."""

    precision: int
    rule: str
    regions: bool  # the input had function regions (coverage.json format 3)
    top: int
    totals: ServiceGaps
    services: tuple[ServiceGaps, ...]
    warnings: tuple[str, ...]


def gaps(
    settings: CoverageSettings,
    paths: Sequence[Path],
    *,
    root: Path,
    options: Options = Options(),
    top: int = 10,
) -> GapsReport:
    """The files and functions with the most missed code, and what each service still needs."""
    settings = _project_target(settings, root)
    loaded = _load(settings, paths, root, options, regions=True)
    specs = _specs(settings, options)
    grouped, unassigned, warnings = _grouped(loaded, specs, options.services)
    p, rule = loaded.precision, loaded.rule
    has_regions = any(f.regions for f in loaded.files.values())

    def one(
        name: str, files: list[FileCoverage], target: float | None, *, detail: bool = True
    ) -> ServiceGaps:
        s = cov.score(
            name, cov.total(f.counts for f in files), target=target, baseline=None, precision=p, rule=rule
        )
        return ServiceGaps(
            name=name,
            display=s.display,
            percent=s.percent,
            target=target,
            passed=s.passed,
            lines_needed=s.lines_needed,
            units_needed=s.units_needed,
            missing=s.missing,
            missing_branches=s.missing_branches,
            files=tuple(cov.file_gaps(files, name, p, top)) if detail else (),
            functions=tuple(cov.function_gaps(files, name, top)) if detail and has_regions else (),
        )

    rows = [
        one(s.name, grouped[s.name], s.target)
        for s in specs
        if not options.services or s.name in options.services
    ]
    if unassigned:
        rows.append(one(cov.UNASSIGNED, unassigned, None))
    totals = one("overall", list(loaded.files.values()), _overall_target(settings, options), detail=False)
    return GapsReport(p, rule.value, has_regions, top, totals, tuple(rows), tuple(warnings))


# -- diff coverage ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class DiffReport:
    """`voke coverage diff`: coverage of the lines changed since a git ref."""

    base: str | None
    changed_files: int
    changed_lines: int
    measured: int
    covered: int
    percent: float | None
    display: str
    target: float | None
    passed: bool
    files: tuple[cov.DiffFile, ...]
    annotations: int
    annotations_omitted: int
    precision: int
    rule: str
    warnings: tuple[str, ...] = ()
    step_summary: str | None = None


def diff(
    settings: CoverageSettings,
    paths: Sequence[Path],
    *,
    root: Path,
    base: str | None,
    diff_file: Path | None = None,
    options: Options = Options(),
    environ: Mapping[str, str] | None = None,
    annotations: bool | None = None,
    emit: Callable[[str], None] | None = None,
) -> DiffReport:
    """Diff coverage against BASE (or the unified diff in DIFF_FILE). With ANNOTATIONS (default:
    in GitHub Actions), EMIT receives `::warning` lines for uncovered changed ranges, capped at
    GitHub's per-step limit with one `::notice` saying how many were left out."""
    settings = _project_target(settings, root)
    from voketag_ops.adapters.local.git_diff import changed_lines, read_diff_file, work_tree_prefix

    environ = environ or {}
    if annotations is None:
        annotations = environ.get("GITHUB_ACTIONS") == "true"
    annotate = emit if annotations else None

    if (base is None) == (diff_file is None):
        raise UsageError("give exactly one of --base REF or --diff-file FILE")
    if options.fail_under is not None:
        cov.check_target(options.fail_under)
    loaded = _load(settings, paths, root, options)
    to_repo = ""  # what makes a matched path repository-relative, as GitHub's annotations want it
    placed: dict[str, str] = {}  # a key of the data -> its path as the diff names it
    if diff_file is not None:
        changed = read_diff_file(_under(root, diff_file))
        placed = {k: k for k in loaded.files if not cov.is_absolute(k)}  # a diff's paths are relative
        # `git diff > x.diff` names paths from the repository's top, also when run from the
        # project's subdirectory; `git diff --relative` from the project. Whichever names more.
        if prefix := work_tree_prefix(root):
            from_top = {k: prefix + k for k in placed}
            if len(changed.keys() & set(from_top.values())) > len(changed.keys() & placed.keys()):
                placed = from_top
            else:
                to_repo = prefix
    else:
        assert base is not None
        found = changed_lines(root, base)
        changed = found.lines
        top = cov.normalize_path(str(found.toplevel.resolve()))
        for key in loaded.files:
            repo_key = cov.relative_to(key, top) if cov.is_absolute(key) else found.prefix + key
            if not cov.is_absolute(repo_key):
                placed[key] = repo_key
    by_repo = {placed[k]: fc for k, fc in loaded.files.items() if k in placed}
    outside = [k for k in loaded.files if k not in placed]
    # A relative path is no proof of lying here: data written in a monorepo's sub-project and
    # read from the top names `admin_service/a.py` for `platform/admin_service/a.py`. A file
    # is placed if it is here or the diff names it (one the data's checkout has and this lacks).
    absent = [k for k, at in placed.items() if at not in changed and not (root / k).exists()]
    warnings = list(loaded.warnings)
    if changed and (outside or absent):
        # Data from another checkout (CI's absolute paths, no --map) judged no line: `n/a`, a pass.
        where = "repository" if diff_file is None else "project"
        if len(outside) + len(absent) == len(loaded.files):
            raise ConfigError(
                f"no file of the coverage data lies in the {where} (none is there or named by the diff), "
                "so no changed line can be judged: " + _sample(outside + absent),
                hint=f"run voke where the data's relative paths start, or {MAP_CI_PATHS}"
                if absent
                else MAP_CI_PATHS,
            )
        if outside:
            warnings.append(
                f"not judged: {counted(len(outside), 'file')} of the coverage data outside "
                f"the {where} ({MAP_CI_PATHS} if they are its): {_sample(outside)}"
            )
        if absent:
            warnings.append(
                f"not judged: {counted(len(absent), 'file')} of the coverage data not found in the {where} "
                f"(deleted since, or measured where paths differ: {MAP_CI_PATHS} if they are its): "
                + _sample(absent)
            )
    result = cov.diff_coverage(changed, by_repo, loaded.precision)
    target = options.fail_under
    passed = (
        True
        if target is None or result.percent is None
        else cov.passes(result.percent, target, loaded.precision, loaded.rule)
    )
    if changed and result.percent is None:
        warnings.append("no changed line is measured by the coverage data (n/a): nothing to judge")
    ranges = [(f.path, a, b) for f in result.files for a, b in f.uncovered_ranges]
    shown = ranges[:ANNOTATION_LIMIT] if annotate is not None else []
    if annotate is not None:
        for path, a, b in shown:
            annotate(github_annotation(to_repo + path, a, b))
        if len(ranges) > len(shown):
            annotate(
                f"::notice title=voke coverage diff::{len(ranges) - len(shown)} more uncovered changed "
                f"range{'s' if len(ranges) - len(shown) != 1 else ''} not annotated (GitHub shows at most "
                f"{ANNOTATION_LIMIT} warnings per step)"
                + ("; see the job summary" if (environ or {}).get("GITHUB_STEP_SUMMARY") else "")
            )
    report_ = DiffReport(
        base=base,
        changed_files=result.changed_files,
        changed_lines=result.changed_lines,
        measured=result.measured,
        covered=result.covered,
        percent=result.percent,
        display=result.display,
        target=target,
        passed=passed,
        files=result.files,
        annotations=len(shown),
        annotations_omitted=len(ranges) - len(shown) if annotate is not None else 0,
        precision=loaded.precision,
        rule=loaded.rule.value,
        warnings=tuple(warnings),
    )
    written = write_step_summary(environ, diff_markdown(report_))
    return replace(report_, step_summary=written) if written else report_


def _escape_property(value: str) -> str:
    return (
        value.replace("%", "%25")
        .replace("\r", "%0D")
        .replace("\n", "%0A")
        .replace(":", "%3A")
        .replace(",", "%2C")
    )


def _escape_data(value: str) -> str:
    return value.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")


def github_annotation(path: str, first: int, last: int) -> str:
    """A `::warning` workflow command for uncovered changed lines FIRST..LAST of PATH."""
    what = f"Line {first} is" if first == last else f"Lines {first}-{last} are"
    return (
        f"::warning file={_escape_property(path)},line={first},endLine={last},"
        f"title={_escape_property('Uncovered change')}::{_escape_data(what + ' changed but not covered by tests')}"
    )


# -- badge -----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class BadgeReport:
    """`voke coverage badge`."""

    out: str
    label: str
    value: str
    color: str
    percent: float
    service: str | None
    bytes: int


def badge(
    settings: CoverageSettings,
    paths: Sequence[Path],
    *,
    root: Path,
    out: Path,
    service: str | None = None,
    label: str = "coverage",
    bands: Sequence[tuple[float, str]] = cov.DEFAULT_BANDS,
    options: Options = Options(),
) -> BadgeReport:
    """Write an offline SVG badge of the total (or of SERVICE) to OUT."""
    settings = _project_target(settings, root)
    from voketag_ops.core.coverage_svg import badge as svg_badge

    selected = (service,) if service else ()
    options = replace(options, services=selected)
    loaded = _load(settings, paths, root, options)
    if service is not None:
        specs = _specs(settings, options)
        grouped, _, _ = _grouped(loaded, specs, selected)
        counts = cov.total(f.counts for f in grouped[service])
    else:
        counts = cov.total(f.counts for f in loaded.files.values())
    pc = counts.percent
    shown = cov.display_covered(pc, loaded.precision)
    value = shown + "%"
    color = cov.band_color(float(shown), bands)  # the band of the number it reads (79.6 shows 80)
    text = svg_badge(label, value, color)
    _write_atomic(_under(root, out), text)
    return BadgeReport(str(out), label, value, color, pc, service, len(text.encode()))


def _write_atomic(path: Path, text: str) -> None:
    from voketag_ops.files import check_replaceable, write_failure, write_output

    check_replaceable(path, "--out")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:  # a read-only or full disk is exit 4 as for the file itself, not a usage error
        raise write_failure(exc, "--out", path, "cannot write") from None
    write_output(path, "--out", lambda fh: fh.write(text.encode()))


# -- history ---------------------------------------------------------------------------------------
_COUNT_KEYS = ("statements", "missing", "branches", "missing_branches", "partial_branches", "files")


def _counts_dict(c: Counts) -> dict[str, int]:
    return {k: getattr(c, k) for k in _COUNT_KEYS}


# Counts are divided as floats (coverage.py's expressions): a float holds every whole number
# below 2**53 exactly, and a larger one would be off, or (past 1e308) not convertible at all.
MAX_COUNT = 2**53 - 1


class _CountTooLarge(ValueError):
    pass


def _check_counts(d: Any) -> None:
    """Counts as history entries record them: every count a whole number, none larger than its whole."""
    if not isinstance(d, dict):
        raise ValueError("counts must be an object")
    for key in _COUNT_KEYS:
        if key not in d:
            raise ValueError(f"counts have no {key}")
        if type(d[key]) is not int or d[key] < 0:
            raise ValueError(f"{key} must be a whole number >= 0")
        if d[key] > MAX_COUNT:
            raise _CountTooLarge(f"{key} must be at most 2**53 - 1 ({MAX_COUNT:,})")
    if d["missing"] > d["statements"] or max(d["missing_branches"], d["partial_branches"]) > d["branches"]:
        raise ValueError("more missing than measured")


# `at` as `history add` writes it (core.times.iso): UTC with a Z suffix, seconds, maybe a fraction
_HISTORY_AT = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]{1,6})?Z")


def _check_entry(entry: Any) -> None:
    """ENTRY as `history add` writes it: `at`, `ref`, `coverage_version`, `branch`, `totals` and
    `services` (and `partial` when made with --service). Without `at` and the counts, any JSON
    object with `totals` (a coverage.py JSON report, one line) would pass for a run."""
    if not isinstance(entry, dict):
        raise ValueError("not a JSON object")
    at = entry.get("at")
    try:
        if not isinstance(at, str) or not _HISTORY_AT.fullmatch(at):
            raise ValueError
        datetime.fromisoformat(at[:-1])  # a month 13 or a 25th hour
    except ValueError:
        raise ValueError("at must be an ISO 8601 UTC time such as 2026-01-01T00:00:00Z") from None
    for key in ("ref", "coverage_version"):
        if key not in entry or not isinstance(entry[key], str | None):
            raise ValueError(f"{key} must be a string or null")
    if not isinstance(entry.get("branch"), bool):
        raise ValueError("branch must be true or false")
    if not isinstance(entry.get("partial", True), bool):
        raise ValueError("partial must be true or false")
    if not isinstance(entry.get("services"), dict):
        raise ValueError("services must be an object")
    _check_counts(entry.get("totals"))
    for counts in entry["services"].values():
        _check_counts(counts)


def _is_coverage_report(doc: Any) -> bool:
    """DOC looks like a `coverage json` report: meta (version or format), files and totals."""
    meta = doc.get("meta") if isinstance(doc, dict) else None
    return (
        isinstance(meta, dict)
        and ("version" in meta or "format" in meta)
        and isinstance(doc.get("files"), dict)
        and "totals" in doc
    )


def _counts(d: Mapping[str, Any]) -> Counts:
    return Counts(**{k: d[k] for k in _COUNT_KEYS})


def read_history(path: Path) -> list[dict[str, Any]]:
    """The entries of a history file (JSON lines), oldest first: all of them (`history show`
    without --last), so read whole and bounded by HISTORY_LIMIT. What needs only its last runs
    reads them from the end (`_tail_entries`), whatever its size."""
    import shlex

    from voketag_ops.files import read_limited

    q = shlex.quote(str(path))
    try:
        data = read_limited(
            path,
            HISTORY_LIMIT,
            what="coverage history",
            hint=f"show its newest runs: --last 1000; or keep them: tail -n 10000 {q} > {q}.new && mv {q}.new {q}",
        )
    except FileNotFoundError:
        raise _no_history(path) from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InputError(f"{path}: cannot read: {exc}") from None
    entries: list[dict[str, Any]] = []
    for number, line in enumerate(text.splitlines(), 1):
        try:
            entry = _entry(line)
        except _NotAnEntry as exc:
            if not entries and _is_coverage_report(_whole_json(text)):  # `coverage json --pretty-print`
                raise _a_coverage_report(path) from None
            raise exc.error(path, number) from None
        if entry is not None:
            entries.append(entry)
    return entries


def _no_history(path: Path) -> UsageError:
    return UsageError(
        f"{path}: no such history file", hint="record a run first: voke coverage history add PATH"
    )


class _NotAnEntry(Exception):
    """A history line that is not an entry as `history add` writes it."""

    def __init__(self, reason: str, column: int | None = None, *, report: bool = False) -> None:
        super().__init__(reason)
        self.reason, self.column, self.report = reason, column, report

    def error(self, path: Path, number: int) -> InputError:
        """The error naming PATH:NUMBER (and the column, when known)."""
        if self.report:
            return _a_coverage_report(path)
        where = f"{path}:{number}" + ("" if self.column is None else f":{self.column}")
        return InputError(f"{where}: not a voke coverage history entry ({self.reason})")


def _entry(line: str) -> dict[str, Any] | None:
    """LINE of a history as its entry, None when blank; _NotAnEntry saying why it is not one."""
    if not line.strip():
        return None
    try:
        entry = json.loads(line)
    except json.JSONDecodeError as exc:
        raise _NotAnEntry(f"not JSON: {exc.msg}", exc.colno) from None
    except (ValueError, RecursionError) as exc:  # too deep, too many digits
        raise _NotAnEntry(f"not JSON: {_first(exc)}") from None
    if _is_coverage_report(entry):
        raise _NotAnEntry("a coverage.py JSON report", report=True)
    try:
        _check_entry(entry)
    except _CountTooLarge as exc:
        raise _NotAnEntry(_first(exc), _column_of_large_count(line)) from None
    except (ValueError, TypeError, OverflowError) as exc:
        raise _NotAnEntry(_first(exc)) from None
    return entry


def _open_history(path: Path) -> int:
    """History PATH open for reading from its end (a regular file: as read_history refuses)."""
    from voketag_ops.files import open_input

    try:
        return open_input(path, what="coverage history")
    except FileNotFoundError:
        raise _no_history(path) from None


def _tail_entries(
    path: Path, fd: int, enough: Callable[[list[dict[str, Any]]], bool]
) -> list[tuple[int, dict[str, Any]]]:
    """The entries at the end of history PATH (open as FD), the newest first, each with the
    offset of its line, read backwards until ENOUGH (of those entries) holds: a CI job's add or
    baseline needs the last run, not years of them, so the history has no size limit there. The
    lines read are checked as read_history checks them, named FILE:LINE (the lines before one
    that is not an entry counted only then); those before the part read are not read at all."""
    from voketag_ops.files import LineTooLong, lines_backwards

    got: list[tuple[int, dict[str, Any]]] = []
    size = os.fstat(fd).st_size
    try:
        for offset, raw in lines_backwards(fd, longest=HISTORY_LINE_LIMIT):
            if offset == size:  # (the nothing after the last line break)
                continue
            if enough([e for _, e in got]):
                break
            ended = offset + len(raw) < size  # a line break after it
            try:
                text = (raw + b"\n" if ended else raw).decode("utf-8")
            except UnicodeDecodeError as exc:
                raise InputError(f"{path}: cannot read: {_decode_error(exc, offset)}") from None
            lines = text.splitlines()  # as read_history splits (\r, \x85, \u2028 and more too)
            for index in range(len(lines) - 1, -1, -1):
                try:
                    entry = _entry(lines[index])
                except _NotAnEntry as exc:
                    if not got and not any(_entry_or_none(line) for line in lines[index + 1 :]):
                        _refuse_a_coverage_report(path, size)
                    raise exc.error(path, _lines_before(fd, offset) + 1 + index) from None
                if entry is not None:
                    got.append((offset, entry))
    except LineTooLong as exc:
        raise InputError(f"{path}: {exc} at its end: not a voke coverage history") from None
    return got


def _entry_or_none(line: str) -> dict[str, Any] | None:
    try:
        return _entry(line)
    except _NotAnEntry:
        return None


def _refuse_a_coverage_report(path: Path, size: int) -> None:
    """_a_coverage_report if PATH (SIZE bytes) is a coverage.py JSON report, pretty-printed:
    its last line is no entry, and read_history names the whole file for what it is."""
    if size > HISTORY_LIMIT:
        return
    from voketag_ops.files import read_limited

    try:
        text = read_limited(path, HISTORY_LIMIT, what="coverage history").decode("utf-8")
    except (InputError, OSError, UnicodeDecodeError):
        return
    if _is_coverage_report(_whole_json(text)):
        raise _a_coverage_report(path)


def _decode_error(exc: UnicodeDecodeError, offset: int) -> str:
    """EXC, raised decoding a line that starts at OFFSET, as decoding the whole file says it."""
    start, end = offset + exc.start, offset + exc.end
    if exc.end - exc.start == 1:
        return f"'{exc.encoding}' codec can't decode byte 0x{exc.object[exc.start]:02x} in position {start}: {exc.reason}"
    return f"'{exc.encoding}' codec can't decode bytes in position {start}-{end - 1}: {exc.reason}"


def _lines_before(fd: int, end: int, *, blank: bool = True) -> int:
    """How many lines of the file open as FD start before byte END (the start of a line), split
    as read_history splits them; not counting blank ones unless BLANK. Read forward in blocks,
    never parsed: a line number for an error, the number of runs for `history add`."""
    count, pos, rest = 0, 0, b""
    while pos < end:
        block = os.pread(fd, min(1 << 20, end - pos), pos)
        if not block:
            break  # (cut short meanwhile)
        pos += len(block)
        data = rest + block
        cut = data.rfind(b"\n") + 1 if pos < end else len(data)
        lines = data[:cut].decode("utf-8", "surrogateescape").splitlines()
        rest = data[cut:]
        count += len(lines) if blank else sum(1 for line in lines if line.strip())
    return count


# A JSON string, or a number; an entry's only numbers are its counts
_JSON_TOKEN = re.compile(r'"(?:[^"\\]|\\.)*"|-?[0-9]+(?:\.[0-9]+)?(?:[eE][-+]?[0-9]+)?')


def _column_of_large_count(line: str) -> int:
    """Where in LINE (valid JSON) the first whole number over MAX_COUNT starts (1-based)."""
    for m in _JSON_TOKEN.finditer(line):
        token = m.group()
        if token.isdigit() and (len(token) > 16 or int(token) > MAX_COUNT):
            return m.start() + 1
    return 1  # (not reached: the entry held one)


def _whole_json(text: str) -> Any:
    try:
        return json.loads(text)
    except (ValueError, RecursionError):
        return None


def _a_coverage_report(path: Path) -> InputError:
    return InputError(
        f"{path}: a coverage.py JSON report, not a voke coverage history file",
        hint=f"record the report with: voke coverage history add {path.name}; "
        "--file names the JSON-lines history it appends to",
    )


def _project_target(settings: CoverageSettings, root: Path) -> CoverageSettings:
    """SETTINGS with the overall target (and each service's default) from coverage.py's own
    [report] fail_under when voke's configuration sets no `coverage.target`: a project that
    gates at 95 with `coverage report` is not let through at 80 by voke. First of all, what
    `load_config` found wrong with the services (exit 3), before any file is read."""
    settings.check()
    if "target" in settings.model_fields_set:
        return settings
    from voketag_ops.adapters.local.coverage_files import coverage_fail_under

    fail_under = coverage_fail_under(root)
    return settings if fail_under is None else settings.model_copy(update={"target": fail_under})


def _precision(given: int | None, settings: CoverageSettings, root: Path) -> int:
    """Decimals shown and judged: the flag, else [coverage] precision, else coverage.py's own
    [report] precision for a run in ROOT, else 0 (as `coverage report`)."""
    from voketag_ops.adapters.local.coverage_files import coverage_precision

    for precision in (given, settings.precision):
        if precision is not None:
            return max(precision, 0)
    return coverage_precision(root) or 0


def _first(exc: Exception) -> str:
    from voketag_ops.redact import redact

    return redact(str(exc)).splitlines()[0][:120] if str(exc) else type(exc).__name__


@dataclass(frozen=True)
class HistoryAdd:
    """`voke coverage history add`: the entry appended (or that would be, with --dry-run)."""

    file: str
    dry_run: bool
    entry: dict[str, Any]
    entries: int  # in the file afterwards
    precision: int  # decimals the overall percentage is shown with, as `coverage report` shows it
    replaced: bool = False  # a rerun for the same --ref took the place of that run's entry


def history_add(
    settings: CoverageSettings,
    paths: Sequence[Path],
    *,
    root: Path,
    now: datetime,
    file: Path | None = None,
    ref: str | None = None,
    dry_run: bool = False,
    options: Options = Options(),
) -> HistoryAdd:
    """Append this run's counts (per service and overall) to the history file. A rerun for the
    --ref and services of the last entry (a CI job run again on the same commit) replaces that
    entry: two entries of one run would make the change since the previous commit read +0."""
    settings.check()
    loaded = _load(settings, paths, root, options)
    specs = _specs(settings, options)
    grouped, unassigned, _ = _grouped(loaded, specs, options.services, require=False)
    if options.services:
        # One job per service: the data of a job measuring with `source = .` lists the other
        # services' files too, unrun (0 %); recording them would stand for those services' numbers.
        grouped = {name: files for name, files in grouped.items() if name in options.services}
        unassigned = []
    services = {
        name: _counts_dict(cov.total(f.counts for f in files)) for name, files in grouped.items() if files
    }
    if unassigned:
        services[cov.UNASSIGNED] = _counts_dict(cov.total(f.counts for f in unassigned))
    from voketag_ops.core.times import iso

    measured = [f for files in grouped.values() for f in files] + unassigned
    entry = {
        "at": iso(now),
        "ref": ref,
        "coverage_version": loaded.coverage_version,
        "branch": loaded.branch,
        "totals": _counts_dict(cov.total(f.counts for f in measured)),
        "services": services,
    }
    if options.services:  # its totals are the selected services', not the repository's
        entry["partial"] = True
    path = _history_path(settings, root, file)
    from voketag_ops.files import check_replaceable

    check_replaceable(path, "--file")  # appended to: a directory or /dev/null would lose the run
    fd = _open_history(path) if path.exists() else None
    try:
        return _add(path, fd, entry, ref, set(services), dry_run, loaded.precision)
    finally:
        if fd is not None:
            os.close(fd)


def _add(
    path: Path,
    fd: int | None,
    entry: dict[str, Any],
    ref: str | None,
    services: set[str],
    dry_run: bool,
    precision: int,
) -> HistoryAdd:
    """ENTRY appended to history PATH (open as FD; None: there is none yet), or in place of the
    same run's entry."""

    # The same run again: same ref and same services (one job recording each service's data
    # in turn, all under one $GITHUB_SHA, appends: replacing would drop the others' numbers).
    # The entries of this ref at the end of the file (one per service job) are searched for
    # this job's: with three jobs, the one that wrote last was the only one ever replaced. Only
    # they are read, from the end (and the last entry, checked, without a ref).
    def enough(newest: list[dict[str, Any]]) -> bool:
        return bool(newest) and (
            not ref or newest[-1].get("ref") != ref or set(newest[-1].get("services") or {}) == services
        )

    tail = [] if fd is None else _tail_entries(path, fd, enough)  # the newest first
    same = None
    if ref:
        for index, (_, e) in enumerate(tail):
            if e.get("ref") != ref:
                break
            if set(e.get("services") or {}) == services:
                same = index
                break
    # the runs before the part read are counted, not parsed
    existing = len(tail) + (_lines_before(fd, tail[-1][0], blank=False) if fd is not None and tail else 0)
    replaced = same is not None
    line = json.dumps(entry, sort_keys=True) + "\n"
    if not dry_run:
        from voketag_ops.files import append_line, write_failure, write_output

        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise write_failure(exc, "--file", path, "cannot write") from None
        if fd is not None and same is not None:
            # the lines before the replaced entry copied as they are, those after it rewritten
            at, source = tail[same][0], fd
            rows = [
                line if index == same else json.dumps(e, sort_keys=True) + "\n"
                for index, (offset, e) in reversed(list(enumerate(tail)))
                if offset >= at
            ]
            write_output(path, "--file", lambda fh: _copy_then(source, at, fh, "".join(rows).encode()))
        else:
            try:
                fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o666)
                try:
                    # Several CI jobs append to one file: a full disk's cut-back must not erase
                    # a line another job appended after this one measured the size.
                    fcntl.flock(fd, fcntl.LOCK_EX)
                    append_line(fd, line.encode())  # a full disk leaves no torn line behind
                finally:
                    os.close(fd)
            except OSError as exc:
                raise write_failure(exc, "--file", path, "cannot write") from None
    entries = existing + (0 if dry_run or replaced else 1)
    return HistoryAdd(str(path), dry_run, entry, entries, precision, replaced)


def _copy_then(fd: int, end: int, fh: IO[bytes], data: bytes) -> None:
    """The first END bytes of the file open as FD written to FH, then DATA."""
    pos = 0
    while pos < end:
        block = os.pread(fd, min(1 << 20, end - pos), pos)
        if not block:
            raise OSError(f"cut short at byte {pos} while rewritten")
        fh.write(block)
        pos += len(block)
    fh.write(data)


def _history_path(settings: CoverageSettings, root: Path, file: Path | None) -> Path:
    return _under(root, file or settings.history)


@dataclass(frozen=True)
class Point:
    """One run of one series."""

    at: str
    ref: str | None
    percent: float | None
    display: str | None
    branch: bool


@dataclass(frozen=True)
class Trend:
    """One series (a service or the total) over the recorded runs."""

    name: str
    points: tuple[Point, ...]
    sparkline: str
    latest: float | None
    latest_display: str | None
    change: float | None  # latest - previous comparable run
    since_first: float | None  # latest - first comparable run
    target: float | None
    baseline: float | None
    passed: bool | None


@dataclass(frozen=True)
class HistoryShow:
    """`voke coverage history show`."""

    file: str
    entries: int
    precision: int
    series: tuple[Trend, ...]
    notes: tuple[str, ...]
    chart: str | None = None


def history_show(
    settings: CoverageSettings,
    *,
    root: Path,
    file: Path | None = None,
    last: int | None = None,
    out: Path | None = None,
    precision: int | None = None,
) -> HistoryShow:
    """The trend per service against target and baseline; an SVG chart written to OUT."""
    settings = _project_target(settings, root)
    from voketag_ops.core.coverage_svg import Series, chart

    path = _history_path(settings, root, file)
    if last is None:
        entries = read_history(path)
    else:  # the last runs only, read from the end: no size limit
        fd = _open_history(path)
        try:
            tail = _tail_entries(path, fd, lambda newest: len(newest) >= last)
        finally:
            os.close(fd)
        entries = [e for _, e in reversed(tail)][-last:] if last > 0 else []
    p = _precision(precision, settings, root)
    recorded = {name for e in entries for name in e.get("services") or {}}
    # configured services in their configured order, then any others recorded (sorted)
    names = ["overall", *(n for n in settings.services if n in recorded)]
    names += sorted(recorded - set(names))
    rule = resolve_rule(settings.rule, [e.get("coverage_version") for e in entries])
    notes = []
    for prev, cur in itertools.pairwise(entries):
        if bool(prev.get("branch")) != bool(cur.get("branch")):
            notes.append(
                f"branch measurement {'started' if cur.get('branch') else 'stopped'} at {cur.get('at')}: "
                "changes across that run are not comparable and are not computed"
            )
    trends = []
    for name in names:
        svc = settings.services.get(name)
        target: float | None
        baseline: float | None
        if name == "overall":
            target, baseline = settings.target, settings.baseline
        elif svc is not None:
            target = svc.target if svc.target is not None else settings.target
            baseline = svc.baseline
        else:
            target = baseline = None
        pts = []
        for e in entries:
            # a per-service job's entry has that service's totals: no point of the overall trend
            raw = (
                (None if e.get("partial") else e["totals"])
                if name == "overall"
                else (e.get("services") or {}).get(name)
            )
            pc = None if raw is None else _counts(raw).percent
            pts.append(
                Point(
                    e["at"],
                    e.get("ref"),
                    pc,
                    None if pc is None else cov.display_covered(pc, p),
                    bool(e.get("branch")),
                )
            )
        comparable = _comparable_tail(pts)
        values = [pt.percent for pt in pts if pt.percent is not None]
        latest = comparable[-1].percent if comparable else None
        trends.append(
            Trend(
                name=name,
                points=tuple(pts),
                sparkline=cov.sparkline(values),
                latest=latest,
                latest_display=comparable[-1].display if comparable else None,
                change=_delta(comparable[-1], comparable[-2]) if len(comparable) > 1 else None,
                since_first=_delta(comparable[-1], comparable[0]) if len(comparable) > 1 else None,
                target=target,
                baseline=baseline,
                passed=None if latest is None or target is None else cov.passes(latest, target, p, rule),
            )
        )
    written = None
    if out is not None:
        labels = [str(e.get("at", ""))[:10] for e in entries]
        svg = chart(
            [
                Series(
                    t.name,
                    [pt.percent for pt in t.points],
                    t.target,
                    t.baseline,
                    next((pt.display for pt in reversed(t.points) if pt.display is not None), None),
                )
                for t in trends
            ],
            labels,
            title=f"coverage, {len(entries)} run{'s' if len(entries) != 1 else ''}",
        )
        _write_atomic(_under(root, out), svg)
        written = str(out)
    return HistoryShow(str(path), len(entries), p, tuple(trends), tuple(notes), written)


def _comparable_tail(points: Sequence[Point]) -> list[Point]:
    """The measured points since the last change of branch measurement (deltas stay within it)."""
    measured = [pt for pt in points if pt.percent is not None]
    if not measured:
        return []
    flag = measured[-1].branch
    tail: list[Point] = []
    for pt in reversed(measured):
        if pt.branch != flag:
            break
        tail.append(pt)
    return list(reversed(tail))


def _delta(a: Point, b: Point) -> float | None:
    return None if a.percent is None or b.percent is None else a.percent - b.percent


# -- GitHub step summary ---------------------------------------------------------------------------
def write_step_summary(environ: Mapping[str, str], markdown: _Markdown) -> str | None:
    """Append MARKDOWN to $GITHUB_STEP_SUMMARY (when set), within GitHub's 1 MiB limit."""
    target = environ.get("GITHUB_STEP_SUMMARY")
    if not target:
        return None
    path = Path(target)
    try:
        used = path.stat().st_size if path.exists() else 0
        text = markdown.fit(STEP_SUMMARY_LIMIT - used)
        if text:
            with path.open("a", encoding="utf-8") as fh:
                fh.write(text)
    except OSError as exc:  # the runner's file, not a flag: the gate's own verdict stands
        log.warning("GITHUB_STEP_SUMMARY %s: cannot write: %s; no step summary", path, exc.strerror)
        return None
    return str(path) if text else None


@dataclass
class _Markdown:
    """A heading, rows that may be cut to fit, and a footer."""

    head: list[str] = field(default_factory=list)
    rows: list[str] = field(default_factory=list)
    tail: list[str] = field(default_factory=list)

    def fit(self, budget: int) -> str:
        def size(lines: Iterable[str]) -> int:
            return sum(len(line.encode()) + 1 for line in lines)

        fixed = size(self.head) + size(self.tail) + 1
        if fixed + 200 > budget:
            return ""
        rows, used = [], fixed
        for i, row in enumerate(self.rows):
            need = len(row.encode()) + 1
            if used + need + 200 > budget:
                rows.append(
                    f"| … {len(self.rows) - i} more rows not shown (GitHub limits a step summary to 1 MiB) |"
                )
                break
            rows.append(row)
            used += need
        return "\n".join([*self.head, *rows, *self.tail]) + "\n\n"


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _pct(value: float | None, precision: int, *, sign: bool = False) -> str:
    if value is None:
        return "–"
    shown = f"{round(value, precision):{'+' if sign else ''}.{precision}f}"
    return shown + "%"


def _status(s: Score) -> str:
    if s.passed is None:
        return "–"
    if s.passed and s.by_rounding:
        return f"✅ pass (by rounding; exact {cov.exact_text(s.percent, s.target or 0)}%)"
    return "✅ pass" if s.passed else "❌ fail"


def report_markdown(r: CoverageReport, title: str) -> _Markdown:
    """The step-summary view of a report."""
    p = r.precision
    md = _Markdown()
    md.head = [
        f"### {title}: {'✅ passed' if r.passed else '❌ failed'}",
        "",
        "| service | coverage | target | Δ baseline | status |",
        "|:--|--:|--:|--:|:--|",
    ]
    for s in [*r.services, r.totals]:
        name = f"**{s.name}**" if s is r.totals else _cell(s.name)
        target = "–" if s.target is None else cov.format_target(s.target) + "%"
        md.rows.append(f"| {name} | {s.display}% | {target} | {_pct(s.delta, p, sign=True)} | {_status(s)} |")
    if r.unassigned is not None:
        md.rows.append(
            f"| {cov.UNASSIGNED} ({r.unassigned.files} files) | {r.unassigned.display}% | – | – | – |"
        )
    tail = [""]
    tail += [f"- {_cell(line)}" for line in r.failures]
    tail += [f"- ⚠️ {_cell(w)}" for w in r.warnings]
    inputs = ", ".join(f"{i.source} ({i.format}{', branch' if i.branch else ''})" for i in r.inputs)
    tail.append("")
    tail.append(f"<sub>rule: {r.rule} · precision {p} · inputs: {_cell(inputs)}</sub>")
    md.tail = tail
    return md


def diff_markdown(r: DiffReport) -> _Markdown:
    """The step-summary view of diff coverage."""
    verdict = "✅ passed" if r.passed else "❌ failed"
    target = "" if r.target is None else f" (target {cov.format_target(r.target)}%)"
    shown = r.display if r.percent is None else r.display + "%"
    md = _Markdown()
    md.head = [
        f"### voke coverage diff{'' if r.base is None else f' vs `{r.base}`'}: {shown}{target} {verdict}",
        "",
        f"{r.covered} of {r.measured} measured changed lines covered "
        f"({counted(r.changed_lines, 'changed line')} in {counted(r.changed_files, 'file')}).",
        "",
        "| file | changed & measured | covered | uncovered lines |",
        "|:--|--:|--:|:--|",
    ]
    for f in r.files:
        md.rows.append(
            f"| {_cell(f.path)} | {f.measured} | {f.display}% | {cov.format_ranges(f.uncovered_ranges) or '–'} |"
        )
    md.tail = [f"\n- ⚠️ {_cell(w)}" for w in r.warnings]
    return md
