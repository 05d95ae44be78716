"""`voke coverage`: per-service report, gate, gaps, diff coverage, badge and history.

Numbers are coverage.py's to the digit (see `core.coverage`). Commands parse flags, call
one workflow and render its report; the workflow module and everything it reads are
imported inside the commands so `voke --help` stays fast (coverage.py itself is imported
only to read `.coverage` files).
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from voketag_ops.cli.common import DryRun, Unasked, use, utf8_option
from voketag_ops.core.text import counted
from voketag_ops.output import print_table, printable, shown

if TYPE_CHECKING:
    from rich.console import Console

    from voketag_ops.cli.common import AppContext
    from voketag_ops.workflows.coverage import Options

app = typer.Typer(
    help="Per-service coverage that agrees with coverage.py: report, gate, gaps, diff, badge, history.",
    no_args_is_help=True,
)

history_app = typer.Typer(help="Record runs (add) and show the trend per service.", no_args_is_help=True)
app.add_typer(history_app, name="history")

Paths = Annotated[
    list[Path],
    typer.Argument(
        help="coverage.json, Cobertura XML, .coverage files, or directories of .coverage.* files "
        "(several are combined).",
        show_default=False,
    ),
]


def _precision(value: int | None) -> int | None:
    """--precision within config's limit, checked when given: importing the configuration (and
    pydantic) to build the option would slow every command's start."""
    from voketag_ops.config import MAX_PRECISION

    if value is not None and not 0 <= value <= MAX_PRECISION:
        raise typer.BadParameter(f"{value} is not in the range 0<=x<={MAX_PRECISION}.")
    return value


Precision = Annotated[
    int | None,
    typer.Option(
        "--precision", callback=_precision, help="Decimals shown (default: config, else coverage.py's)."
    ),
]
FailUnder = Annotated[
    float | None,
    typer.Option(
        "--fail-under", min=0, max=100, help="Target for every service and the total (default: configured)."
    ),
]
Strict = Annotated[
    bool, typer.Option("--strict", help="Compare the unrounded total (79.5 does not pass 80).")
]
RuleName = Annotated[
    str | None,
    typer.Option(
        "--rule",
        metavar="RULE",
        help="auto (the rule of the coverage.py that wrote the input), coverage (7.17.1: rounded to "
        "max(precision, target decimals)), coverage-7.16 or strict (default: coverage.rule, auto unless set).",
    ),
]
Services = Annotated[
    list[str] | None, typer.Option("--service", "-s", help="Only this service (repeatable).")
]
Maps = Annotated[
    list[str] | None,
    typer.Option(
        "--map",
        metavar="FROM=TO",
        help="Rewrite path prefix FROM to TO, before the configured coverage.remap (repeatable).",
    ),
]
BaselineFrom = Annotated[
    Path | None,
    typer.Option(
        "--baseline-from",
        help="History file whose last run is the baseline (deltas from its counts) instead of config.",
    ),
]
HistoryFile = Annotated[
    Path | None, typer.Option("--file", help="History file (default: coverage.history in config).")
]


def _root(env: AppContext) -> Path:
    """The project's directory: the current one, from which coverage data's paths are read."""
    from voketag_ops.files import working_directory

    return (
        Path(env.cwd)
        if env.cwd is not None
        else working_directory("coverage data's paths are relative to it")
    )


def _options(
    *,
    precision: int | None = None,
    fail_under: float | None = None,
    strict: bool = False,
    rule: str | None = None,
    service: list[str] | None = None,
    map_: list[str] | None = None,
    baseline_from: Path | None = None,
) -> Options:
    from voketag_ops.core.coverage import Rule
    from voketag_ops.errors import UsageError
    from voketag_ops.workflows.coverage import Options, parse_mapping

    choices = ("auto", *(r.value for r in Rule))  # as `coverage.rule` takes them
    parsed_rule = None
    if rule is not None:
        parsed_rule = rule.lower()
        if parsed_rule not in choices:
            raise UsageError(f"--rule {rule!r}: expected one of {', '.join(choices)}")
    return Options(
        precision=precision,
        fail_under=fail_under,
        strict=strict,
        rule=parsed_rule,
        services=tuple(service or ()),
        remap=tuple(parse_mapping(m) for m in map_ or ()),
        baseline_from=baseline_from,
    )


def _warn(env: AppContext, warnings: Any) -> None:
    for line in warnings:
        env.out.note(f"warning: {line}")


def _cloud(env: AppContext) -> bool:
    """Whether --env names a cloud environment (checked before any work: an unknown name exits 3)."""
    if env.settings.env == "local":
        return False
    env.settings.environment(env.settings.env)
    return True


def _publish(env: AppContext, cloud: bool, result: Any) -> None:
    """On a cloud environment, coverage per service goes to Cloud Monitoring (best effort)."""
    if not cloud:
        return
    from voketag_ops.workflows.cloud import publish_coverage

    written = publish_coverage(env.settings, result)
    if written:
        env.out.note(f"wrote coverage of {written - 1} service(s) and overall to Cloud Monitoring")


@app.command("report")
def report(
    ctx: typer.Context,
    paths: Paths,
    precision: Precision = None,
    fail_under: FailUnder = None,
    strict: Strict = False,
    rule: RuleName = None,
    service: Services = None,
    map_: Maps = None,
    baseline_from: BaselineFrom = None,
) -> None:
    """Coverage per service and overall against target and baseline (exit 0 either way)."""
    from voketag_ops.workflows import coverage as wf

    env = use(ctx)
    options = _options(
        precision=precision, fail_under=fail_under, strict=strict, rule=rule, service=service, map_=map_,
        baseline_from=baseline_from,
    )  # fmt: skip
    cloud = _cloud(env)
    result = wf.report(env.settings.coverage, paths, root=_root(env), options=options, environ=env.environ)
    _warn(env, result.warnings)
    _publish(env, cloud, result)
    env.out.result(result, render=_render_report)


@app.command("gate")
def gate(
    ctx: typer.Context,
    paths: Paths,
    fail_under: FailUnder = None,
    strict: Strict = False,
    rule: RuleName = None,
    precision: Precision = None,
    service: Services = None,
    map_: Maps = None,
    baseline_from: BaselineFrom = None,
) -> None:
    """Exit 1 when any service or the total is below its target, one line per failure."""
    from voketag_ops.workflows import coverage as wf

    env = use(ctx)
    options = _options(
        precision=precision, fail_under=fail_under, strict=strict, rule=rule, service=service, map_=map_,
        baseline_from=baseline_from,
    )  # fmt: skip
    cloud = _cloud(env)
    result = wf.report(
        env.settings.coverage,
        paths,
        root=_root(env),
        options=options,
        environ=env.environ,
        title="voke coverage gate",
    )
    _warn(env, result.warnings)
    _publish(env, cloud, result)
    failing = [s.name for s in (*result.services, result.totals) if s.passed is False]
    env.out.result(
        result,
        ok=result.passed,
        render=_render_gate,
        failure=f"coverage gate failed: {', '.join(failing)} below target",
    )


@app.command("gaps")
def gaps(
    ctx: typer.Context,
    paths: Paths,
    top: Annotated[int, typer.Option("--top", min=1, help="Files and functions listed per service.")] = 10,
    fail_under: FailUnder = None,
    strict: Strict = False,
    rule: RuleName = None,
    precision: Precision = None,
    service: Services = None,
    map_: Maps = None,
) -> None:
    """Files and functions with the most missed code; statements each service still needs.

    Functions are listed when the input has regions (coverage.json from coverage.py 7.6+).
    """
    from voketag_ops.workflows import coverage as wf

    env = use(ctx)
    options = _options(
        precision=precision, fail_under=fail_under, strict=strict, rule=rule, service=service, map_=map_
    )
    result = wf.gaps(env.settings.coverage, paths, root=_root(env), options=options, top=top)
    _warn(env, result.warnings)
    env.out.result(result, render=_render_gaps)


@app.command("diff")
def diff(
    ctx: typer.Context,
    paths: Paths,
    base: Annotated[
        str | None,
        typer.Option("--base", help="Git ref to diff against (merge base; working tree included)."),
    ] = None,
    diff_file: Annotated[
        Path | None, typer.Option("--diff-file", help="Read a unified diff from this file instead of git.")
    ] = None,
    fail_under: Annotated[
        float | None,
        typer.Option("--fail-under", min=0, max=100, help="Exit 1 when diff coverage is below this."),
    ] = None,
    strict: Strict = False,
    rule: RuleName = None,
    precision: Precision = None,
    map_: Maps = None,
    annotations: Annotated[
        bool | None,
        typer.Option(
            "--annotations/--no-annotations",
            help="GitHub ::warning lines on stderr for uncovered changes (default: in GitHub Actions).",
        ),
    ] = None,
) -> None:
    """Coverage of the lines changed since --base, uncovered changed lines per file."""
    from voketag_ops.workflows import coverage as wf

    env = use(ctx)
    options = _options(precision=precision, fail_under=fail_under, strict=strict, rule=rule, map_=map_)

    def emit(line: str) -> None:
        env.out.stderr.write(line + "\n")

    result = wf.diff(
        env.settings.coverage,
        paths,
        root=_root(env),
        base=base,
        diff_file=diff_file,
        options=options,
        environ=env.environ,
        annotations=annotations,
        emit=emit,
    )
    _warn(env, result.warnings)
    env.out.result(
        result,
        ok=result.passed,
        render=_render_diff,
        failure=_diff_failure(result) if not result.passed else None,
    )


def _diff_failure(result: Any) -> str:
    from voketag_ops.core import coverage as cov

    assert result.percent is not None and result.target is not None  # (n/a always passes)
    why = cov.why_below(
        result.percent, result.target, result.display, result.precision, cov.Rule(result.rule)
    )
    return f"diff coverage {why}"


@app.command("badge")
def badge(
    ctx: typer.Context,
    paths: Paths,
    out: Annotated[Path, typer.Option("--out", help="SVG file to write.", show_default=False)],
    service: Annotated[str | None, typer.Option("--service", "-s", help="Badge of one service.")] = None,
    label: Annotated[str, typer.Option("--label", help="Left-hand text.")] = "coverage",
    colors: Annotated[
        str | None,
        typer.Option(
            "--colors",
            metavar="MIN:COLOUR,...",
            help="Colour bands, e.g. 90:brightgreen,80:green,60:yellow,0:red (default: shields-like).",
        ),
    ] = None,
    precision: Precision = None,
    map_: Maps = None,
) -> None:
    """Write a deterministic SVG badge, made offline (no network)."""
    from voketag_ops.core.coverage import DEFAULT_BANDS, parse_bands
    from voketag_ops.errors import UsageError
    from voketag_ops.workflows import coverage as wf

    env = use(ctx)
    try:
        bands = parse_bands(colors) if colors else DEFAULT_BANDS
    except ValueError as exc:
        raise UsageError(f"--colors: {exc}") from None
    result = wf.badge(
        env.settings.coverage,
        paths,
        root=_root(env),
        out=out,
        service=service,
        label=utf8_option("--label", label),
        bands=bands,
        options=_options(precision=precision, map_=map_),
    )
    env.out.result(
        result,
        render=lambda c, r: c.print(f"wrote {r.out}: {r.label} {r.value} ({r.color})", markup=False),
    )


@history_app.command("add")
def history_add(
    ctx: typer.Context,
    paths: Paths,
    file: HistoryFile = None,
    ref: Annotated[
        str | None, typer.Option("--ref", help="Commit or label of this run (default: $GITHUB_SHA).")
    ] = None,
    service: Services = None,
    map_: Maps = None,
    dry_run: DryRun = False,
    yes: Unasked = False,
) -> None:
    """Append this run's counts per service and overall to the history file."""
    from voketag_ops.files import path_text
    from voketag_ops.workflows import coverage as wf

    env = use(ctx)
    with env.audited(
        "coverage.history_add", target=path_text(file or env.settings.coverage.history)
    ) as event:
        result = wf.history_add(
            env.settings.coverage,
            paths,
            root=_root(env),
            now=datetime.now(UTC),
            file=file,
            ref=_ref(ref, env.environ.get("GITHUB_SHA")),
            dry_run=dry_run,
            options=_options(service=service, map_=map_),
        )
        if dry_run:
            event.result = "dry-run"
    env.out.result(result, render=_render_history_add)


def _ref(option: str | None, github_sha: str | None) -> str | None:
    """The ref `history add` writes: --ref, else $GITHUB_SHA; either must be UTF-8 text, which
    the history file can hold (exit 2 naming where it came from)."""
    if option:
        return utf8_option("--ref", option)
    return utf8_option("$GITHUB_SHA (the default of --ref)", github_sha) if github_sha else None


@history_app.command("show")
def history_show(
    ctx: typer.Context,
    file: HistoryFile = None,
    last: Annotated[int | None, typer.Option("--last", min=1, help="Only the last N runs.")] = None,
    out: Annotated[Path | None, typer.Option("--out", help="Also write an SVG chart here.")] = None,
    precision: Precision = None,
) -> None:
    """The trend per service against target and baseline, with a sparkline (and an SVG chart)."""
    from voketag_ops.workflows import coverage as wf

    env = use(ctx)
    result = wf.history_show(
        env.settings.coverage, root=_root(env), file=file, last=last, out=out, precision=precision
    )
    env.out.result(result, render=_render_history_show)


# -- rendering ---------------------------------------------------------------------------------------


def _pct(value: float | None, precision: int, *, sign: bool = False) -> str:
    if value is None:
        return ""
    return f"{round(value, precision):{'+' if sign else ''}.{precision}f}"


def _target(value: float | None) -> str:
    from voketag_ops.core.coverage import format_target

    return "" if value is None else format_target(value)


def _status(s: Any) -> str:
    if s.passed is None:
        return ""
    if s.passed and s.by_rounding:
        return "[yellow]pass (rounded)[/]"
    return "[green]pass[/]" if s.passed else "[red]FAIL[/]"


def _render_report(console: Console, r: Any) -> None:
    from rich import box
    from rich.table import Table

    p = r.precision
    rows = [*r.services, *([r.unassigned] if r.unassigned else []), r.totals]

    def build(with_baseline: bool) -> Table:
        table = Table(
            title="coverage by service", title_justify="left", box=box.SIMPLE_HEAD, collapse_padding=True
        )
        table.add_column("service")
        for col in ("files", "stmts", "miss", *(("branch", "brmiss") if r.branch else ())):
            table.add_column(col, justify="right")
        table.add_column("cover", justify="right")
        for col in ("target", *(("baseline", "Δ") if with_baseline else ())):
            table.add_column(col, justify="right")
        table.add_column("")
        for s in rows:
            style = "bold" if s is r.totals else ("dim" if s is r.unassigned else None)
            branches = (str(s.branches), str(s.missing_branches)) if r.branch else ()
            baseline = (_pct(s.baseline, p), _pct(s.delta, p, sign=True)) if with_baseline else ()
            table.add_row(
                shown(s.name),
                str(s.files),
                str(s.statements),
                str(s.missing),
                *branches,
                f"{s.display}%",
                _target(s.target),
                *baseline,
                _status(s),
                style=style,
            )
        return table

    # Baseline and Δ give way first on a narrow terminal; below that, one value a line.
    print_table(console, build(with_baseline=True), build(with_baseline=False))
    for s in (*r.services, r.totals):
        if s.passed is False or s.by_rounding:
            from voketag_ops.core.coverage import Rule, verdict

            console.print(printable(verdict(s, p, Rule(r.rule))), markup=False)
    baseline = f"; baseline from {shown(r.baseline_from)}" if r.baseline_from else ""
    console.print(f"[dim]rule {r.rule}, precision {p}{baseline}[/]")


def _render_gate(console: Console, r: Any) -> None:
    for line in r.verdicts:
        console.print(printable(line), markup=False)
    console.print(f"[dim]rule {r.rule}, precision {r.precision}[/]")


def _render_gaps(console: Console, r: Any) -> None:
    from rich.table import Table

    from voketag_ops.core.coverage import units_to_cover

    def need(g: Any) -> str:
        if g.target is None:
            return "no target"
        if g.passed:
            return f"meets {_target(g.target)}"
        if g.lines_needed is not None:
            return f"cover {counted(g.lines_needed, 'more statement')} to reach {_target(g.target)}"
        return units_to_cover(g.missing, g.units_needed)

    for g in (*r.services, r.totals):
        console.print(f"[bold]{shown(g.name)}[/] {g.display}%: {need(g)}")
        if g.files:
            table = Table(show_edge=False, box=None, padding=(0, 1))
            arcs = any(f.missing_arcs for f in g.files)  # the column only where it has something to show
            for col in (
                "file",
                "miss",
                "brmiss",
                "cover",
                "missing lines",
                *(["missing branches"] if arcs else []),
            ):
                table.add_column(col, justify="right" if col in ("miss", "brmiss", "cover") else "left")
            for f in g.files:
                row = [
                    shown(f.path),
                    str(f.missing),
                    str(f.missing_branches),
                    f"{f.display}%",
                    f.missing_lines,
                ]
                table.add_row(*row, *([f.missing_arcs] if arcs else []))
            print_table(console, table)
        if g.functions:
            table = Table(show_edge=False, box=None, padding=(0, 1))
            arcs = any(fn.missing_arcs for fn in g.functions)
            for col in ("function", "where", "miss", "brmiss", *(["missing branches"] if arcs else [])):
                table.add_column(col, justify="right" if col in ("miss", "brmiss") else "left")
            for fn in g.functions:
                where = f"{fn.path}:{fn.start_line}" if fn.start_line else fn.path
                row = [shown(fn.name), shown(where), str(fn.missing), str(fn.missing_branches)]
                table.add_row(*row, *([fn.missing_arcs] if arcs else []))
            print_table(console, table)
        console.print()
    if not r.regions:
        console.print(
            "[dim]no function regions in the input (coverage.json from coverage.py >= 7.6 has them)[/]"
        )


def _render_diff(console: Console, r: Any) -> None:
    from rich.table import Table

    from voketag_ops.core.coverage import format_ranges

    total = r.display if r.percent is None else f"{r.display}%"
    against = f" vs {r.base}" if r.base else ""
    console.print(
        f"diff coverage{against}: [bold]{total}[/] ({r.covered} of {r.measured} measured changed lines covered; "
        f"{counted(r.changed_lines, 'changed line')} in {counted(r.changed_files, 'file')})"
    )
    uncovered = [f for f in r.files if f.uncovered_lines]
    if uncovered:
        table = Table(show_edge=False, box=None, padding=(0, 1))
        for col in ("file", "measured", "cover", "uncovered lines"):
            table.add_column(col, justify="right" if col in ("measured", "cover") else "left")
        for f in uncovered:
            table.add_row(shown(f.path), str(f.measured), f"{f.display}%", format_ranges(f.uncovered_ranges))
        print_table(console, table)
    if r.target is not None:
        console.print(("[green]pass[/]" if r.passed else "[red]FAIL[/]") + f" against {_target(r.target)}")


def _render_history_add(console: Console, r: Any) -> None:
    e = r.entry
    from voketag_ops.core.coverage import UNASSIGNED, Counts, display_covered

    pc = Counts(**{k: e["totals"][k] for k in e["totals"]}).percent
    # the configured services measured; files matching none are a bucket of their own, no service
    n = len([name for name in e["services"] if name != UNASSIGNED])
    services = f"{n} service{'s' if n != 1 else ''}{' (+ unassigned)' if UNASSIGNED in e['services'] else ''}"
    verb = (
        ("would replace" if r.dry_run else "replaced")
        if r.replaced
        else ("would append" if r.dry_run else "appended")
    )
    console.print(
        printable(
            f"{verb} run {e['at']}{' (' + e['ref'] + ')' if e.get('ref') else ''}"
            f"{' (the last entry had the same --ref)' if r.replaced else ''}: overall "
            f"{display_covered(pc, r.precision)}%, {services} -> {r.file} "
            f"({r.entries} run{'s' if r.entries != 1 else ''})"
        ),
        markup=False,
    )


def _render_history_show(console: Console, r: Any) -> None:
    from rich.table import Table

    if not r.entries:
        console.print(f"no runs recorded in {shown(r.file)}")
        return
    p = r.precision
    from rich import box

    table = Table(
        title=f"coverage trend ({r.entries} runs, {shown(r.file)})",
        title_justify="left",
        box=box.SIMPLE_HEAD,
    )
    for col in ("series", "trend", "latest", "Δ prev", "Δ first", "target", "baseline", ""):
        table.add_column(col, justify="left" if col in ("series", "trend", "") else "right")
    for t in r.series:
        status = "" if t.passed is None else ("[green]pass[/]" if t.passed else "[red]below[/]")
        table.add_row(
            shown(t.name),
            t.sparkline,
            f"{t.latest_display}%" if t.latest_display else "",
            _pct(t.change, p, sign=True),
            _pct(t.since_first, p, sign=True),
            _target(t.target),
            _pct(t.baseline, p),
            status,
            style="bold" if t.name == "overall" else None,
        )
    print_table(console, table)
    for note in r.notes:
        console.print(f"note: {note}", markup=False)
    if r.chart:
        console.print(f"chart: {r.chart}", markup=False)
