"""`voke ingest`: factory CSV batches: validate, load all-or-nothing, seal, prove.

Exit codes: 0 loaded, duplicate or (dry run) valid; 1 the file was rejected, or a
proof does not hold; 2 bad usage; 4 the database could not be reached or went away
(nothing was loaded); 5 another load held the lock for longer than ingest.lock_timeout;
6 the sealing process failed (nothing was loaded; it runs for files of 8 MiB or more on
hosts with more than two cores);
7 the connection failed (or Ctrl-C came twice) during the COMMIT and the database could
not tell whether the batch committed (`voke ingest batches` tells; rerunning is safe);
130 interrupted, nothing loaded.
"""

from __future__ import annotations

import os
import stat
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from voketag_ops.cli.common import MAX_LISTED, DryRun, Unasked, named_path, use
from voketag_ops.core.text import counted
from voketag_ops.output import print_table, printable

if TYPE_CHECKING:
    from rich.console import Console
    from rich.progress import Progress

    from voketag_ops.cli.common import AppContext
    from voketag_ops.output import Output
    from voketag_ops.workflows.ingest import LoadProgress, LoadReport, TagProof

app = typer.Typer(
    help="Factory CSV batches: validate and load all-or-nothing, sealed with a Merkle root; list the batches, "
    "a tag's proof; sample, migrate.",
    no_args_is_help=True,
)

Db = Annotated[
    str | None,
    typer.Option(
        "--db",
        metavar="URL",
        help="PostgreSQL URL or conninfo (default: the local environment's database; a load starts it on demand).",
    ),
]


def _tty(out: Output) -> bool:
    try:
        return bool(out.stderr.isatty()) and not out.json_mode
    except (AttributeError, ValueError):
        return False


def _home(env: AppContext) -> Path:
    from voketag_ops.adapters.local.environment import resolve_home

    return resolve_home(env.settings.local.home)


def _conninfo(env: AppContext, db: str | None, *, dry_run: bool, started: list[str]) -> str:
    """--db, or the local environment's database (started and created on demand: a load starts
    what `voke env up` would, a dry run only the servers it reads). Off a terminal the start
    says nothing but its warnings: the load's one summary line says it happened (STARTED)."""
    if db is not None:
        return _given_db(db)
    _refuse_cloud(env)
    from voketag_ops.workflows.env import ensure_local

    if _tty(env.out):
        with env.out.progress("checking the local environment") as update:
            local = ensure_local(env.settings, update, whole=not dry_run)
        return local.platform_database()

    def quietly(message: str) -> None:
        started.append(message)
        if message.startswith("warning:"):
            env.out.note(message)

    local = ensure_local(env.settings, quietly, whole=not dry_run)
    return local.platform_database()


def _read_conninfo(env: AppContext, db: str | None) -> str | None:
    """--db, or the local environment's database for a read, which never starts the
    environment nor creates the database: None when it does not exist (nothing loaded)."""
    if db is not None:
        return _given_db(db)
    _refuse_cloud(env)
    from voketag_ops.adapters.local.environment import PLATFORM_DB
    from voketag_ops.errors import BackendError

    local = env.local_environment()
    if not local.exists or not local.primary().running:
        from voketag_ops.locks import running_elsewhere

        # A failover or drill moves it: `_named_dr_operation`'s hint names which.
        if running_elsewhere(local.home / "dr") is not None:
            raise BackendError("the local environment's primary is down; nothing was read")
        raise BackendError(
            "the local environment is not running; `voke env up` starts it (reading batches "
            "and proofs never does)"
        )
    return local.database(PLATFORM_DB, create=False)


def _refuse_cloud(env: AppContext) -> None:
    """Without --db the database is the local environment's: with --env naming a cloud
    environment, exit 3 before anything starts (it loaded there, audited as that environment).
    A --db names its database itself, so any --env goes with it."""
    from voketag_ops.workflows.dr import require_local

    require_local(
        env.settings,
        hint="--db URL names the database to use (a Cloud SQL instance through the Cloud SQL Auth Proxy, say)",
    )


def _given_db(db: str) -> str:
    if not db.strip():  # an unset variable in `--db "$DATABASE_URL"` must not mean "local"
        from voketag_ops.errors import UsageError

        raise UsageError(
            "--db is empty; give a PostgreSQL URL or conninfo, or leave --db out for the local environment"
        )
    return db


@contextmanager
def _progress_bar(out: Output, total: int) -> Iterator[Callable[[LoadProgress], None]]:
    """A rich progress bar (bytes, rows, rows/s, ETA) on a terminal; nothing otherwise."""
    if not _tty(out):
        yield lambda _p: None
        return
    with _load_progress(out.err) as bar:
        task = bar.add_task("hashing", total=max(total, 1), rows=0, rate="")
        t0 = time.monotonic()

        def update(p: LoadProgress) -> None:
            elapsed = time.monotonic() - t0
            rate = f"{p.rows / elapsed:,.0f}/s" if p.rows and elapsed > 0 else ""
            bar.update(task, completed=p.bytes_done, description=p.phase, rows=p.rows, rate=rate)

        yield update


# The load bar's parts beside the bar itself, in the order shown, with the width each one
# takes (room for 100 MB, 9,999,999 rows and rows/s, 9 hours). On a narrower terminal they go
# in _DROPPED's order until the bar has _BAR_MIN columns, so the line never wraps.
_PARTS = {"phase": 10, "percent": 4, "bytes": 14, "rows": 14, "rate": 11, "eta": 7}
_DROPPED = ("rate", "bytes", "rows", "eta", "percent")
_BAR_MIN, _BAR_MAX = 10, 40


def _fitting_parts(width: int) -> tuple[list[str], int]:
    """The parts shown on a terminal WIDTH columns wide, and the bar's width."""
    shown = list(_PARTS)
    for dropped in (None, *_DROPPED):
        if dropped is not None:
            shown.remove(dropped)
        bar = width - sum(_PARTS[p] for p in shown) - len(shown)  # one space between parts
        if bar >= _BAR_MIN:
            break
    return shown, max(1, min(bar, _BAR_MAX))


def _load_progress(console: Console) -> Progress:
    """The load's progress display, its columns fitted to CONSOLE's width."""
    from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn
    from rich.table import Column

    shown, bar = _fitting_parts(console.width)

    def sized(part: str) -> Column:
        return Column(width=_PARTS[part], no_wrap=True, justify="left" if part == "phase" else "right")

    make = {
        "phase": lambda: TextColumn("{task.description}", table_column=sized("phase")),
        "percent": lambda: TextColumn("{task.percentage:.0f}%", table_column=sized("percent")),
        "bytes": lambda: DownloadColumn(table_column=sized("bytes")),
        "rows": lambda: TextColumn("{task.fields[rows]:,} rows", table_column=sized("rows")),
        "rate": lambda: TextColumn("{task.fields[rate]}", table_column=sized("rate")),
        "eta": lambda: TimeRemainingColumn(table_column=sized("eta")),
    }
    columns = [make[shown[0]](), BarColumn(bar_width=bar), *(make[p]() for p in shown[1:])]
    return Progress(*columns, console=console, transient=True)


def _batch_file(value: str) -> Path:
    """FILE: named, there, readable and no directory, or exit 2 before the local environment is
    started (a pipe or device is the load's to refuse: exit 1, as a file it cannot load)."""
    from voketag_ops.errors import UsageError

    path = named_path("FILE")(value)
    try:
        is_dir = stat.S_ISDIR(path.stat().st_mode)
    except OSError as exc:
        raise UsageError(f"FILE {value}: {exc.strerror}") from None
    if is_dir:
        raise UsageError(f"FILE {value}: is a directory; name the batch file")
    if not os.access(path, os.R_OK):
        raise UsageError(f"FILE {value}: not readable")
    return path


@app.command("load")
def load(
    ctx: typer.Context,
    file: Annotated[Path, typer.Argument(parser=_batch_file, metavar="FILE", help="The batch CSV file.")],
    partial: Annotated[
        bool, typer.Option("--partial", help="Load the valid rows; write the rejected ones to --rejects.")
    ] = False,
    rejects: Annotated[
        Path | None,
        typer.Option(
            "--rejects",
            parser=named_path("--rejects"),
            metavar="FILE",
            help="With --partial: CSV of rejected rows and reasons.",
        ),
    ] = None,
    force: Annotated[
        bool,
        typer.Option(
            "--force", help="Overwrite the --rejects FILE even if it is not a rejects file voke wrote."
        ),
    ] = False,
    max_errors: Annotated[
        int | None,
        typer.Option(
            "--max-errors",
            min=0,
            max=1_000_000,
            help="Problems to list, at most 1,000,000 (default: ingest.max_errors, 100).",
        ),
    ] = None,
    db: Db = None,
    dry_run: DryRun = False,
    yes: Unasked = False,
) -> None:
    """Validate FILE and load it as one batch, all-or-nothing, sealed with a Merkle root."""
    from voketag_ops.workflows import ingest as wf
    from voketag_ops.workflows.chain import anchor_states, chain_anchorer

    env = use(ctx)
    now = datetime.now(UTC)
    settings = env.settings.ingest
    if partial and rejects is None:
        from voketag_ops.errors import UsageError

        raise UsageError("--partial needs --rejects FILE for the rows it leaves out")
    started: list[str] = []  # what starting the local environment said, off a terminal
    home = _home(env)
    # Once the batch is committed, a Ctrl-C or SIGTERM no longer stops the load short of
    # its audit event and its result: it is loaded, and says so.
    # From the first connection on, which a leader stopped since ensure_local looked can refuse.
    with _named_dr_operation(db, home), wf.AfterCommit() as after_commit:
        conninfo = _conninfo(env, db, dry_run=dry_run, started=started)
        with _progress_bar(env.out, file.stat().st_size) as progress:
            report = wf.load_batch(
                conninfo,
                file,
                settings=settings,
                now=now,
                audit_home=home,
                env_name=env.settings.env,
                after_commit=after_commit,
                partial=partial,
                rejects=rejects,
                force=force,
                dry_run=dry_run,
                max_errors=max_errors,
                actor=_actor(),
                progress=progress,
                anchorer=None if dry_run else chain_anchorer(home, now),
                anchor_states=anchor_states(home) if dry_run else None,  # looked up, never requested
                local=db is None,
            )
        summary = _summary(report) + ("; the local environment was started first" if started else "")
        if not _tty(env.out) and (report.ok or env.out.json_mode):
            env.out.note(summary)  # a rejected file's summary is the failure line, printed once
        env.out.result(report, ok=report.ok, render=_render_load, failure=summary.removeprefix("ingest: "))


def _named_dr_operation(db: str | None, home: Path) -> AbstractContextManager[None]:
    """A local command that could not reach, or lost, its database while a DR operation (a
    failover drill, say) held the DR lock says so in its hint: it is not a DR operation and
    does not wait for one, but the operator should know why the primary went away and when to
    run it again. A --db names a database of its own: nothing to say."""
    from voketag_ops.locks import naming_dr_operation

    return nullcontext() if db is not None else naming_dr_operation(home)


def _actor() -> str:
    from voketag_ops.audit import default_actor

    return default_actor()


def _summary(r: LoadReport) -> str:
    name = printable(Path(r.file).name)  # a file name may hold ESC sequences
    if r.dry_run and r.status != "valid":
        return "ingest: dry run: " + _summary(replace(r, dry_run=False)).removeprefix("ingest: ")
    if r.status == "loaded":
        return (
            f"ingest: loaded {name} as batch {r.batch_id}: {counted(r.rows_loaded, 'row')}"
            + (f", {r.rows_rejected:,} rejected" if r.rows_rejected else "")
            + f" in {r.duration_seconds:.1f} s ({r.rows_per_second:,.0f} rows/s), root {r.merkle_root}, "
            f"anchor {r.anchor}"
        )
    if r.status == "duplicate":
        return f"ingest: {name} was already loaded as batch {r.batch_id}; nothing written"
    if r.status == "valid":
        return f"ingest: dry run: {name} is valid ({r.rows_loaded:,} rows would load); nothing written"
    first = r.errors[0] if r.errors else None
    where = ""
    if first:
        at = f"line {first['line']}" if first["line"] is not None else ""
        at += f", column {first['column']}" if at and first["column"] is not None else ""
        where = f" (first: {at + ': ' if at else ''}{first['message']})"
    rejects = f"; the reasons for every row are in {r.rejects_file}" if r.rejects_file else ""
    return f"ingest: rejected {name}: {r.error_count} problem(s){where}; nothing loaded{rejects}"


def _render_load(console: Console, r: LoadReport) -> None:
    console.print(_summary(r).removeprefix("ingest: "), markup=False, highlight=False)
    for warning in r.warnings:
        console.print(f"  warning: {warning}", markup=False, highlight=False)
    for e in r.errors:
        where = f"line {e['line']}" if e["line"] is not None else "file"
        if e["column"] is not None:
            where += f", column {e['column']}"
        console.print(f"  {where}: {e['code']}: {e['message']}", markup=False, highlight=False)
    if r.error_count > len(r.errors):
        console.print(f"  ... and {r.error_count - len(r.errors)} more", markup=False, highlight=False)
    if r.rejects_file:
        console.print(f"  rejected rows written to {r.rejects_file}", markup=False, highlight=False)


@app.command("migrate")
def migrate(
    ctx: typer.Context,
    grant: Annotated[
        list[str] | None,
        typer.Option(
            "--grant",
            metavar="ROLE",
            help="A role that loads, lists and proves without altering tables (repeatable).",
        ),
    ] = None,
    db: Db = None,
    dry_run: DryRun = False,
    yes: Unasked = False,
) -> None:
    """Create the ingest schema, or bring it to this voke's version, now (a load does it first)."""
    from voketag_ops.workflows import ingest as wf

    env = use(ctx)
    with _named_dr_operation(db, _home(env)):
        report = wf.migrate_schema(
            _conninfo(env, db, dry_run=dry_run, started=[]),
            settings=env.settings.ingest,
            dry_run=dry_run,
            audit_home=_home(env),
            env_name=env.settings.env,
            grant=grant or [],
            local=db is None,
        )
    env.out.result(report, render=_render_migrate)


def _render_migrate(console: Console, r: dict[str, Any]) -> None:
    was = "no ingest schema" if r["from_version"] is None else f"version {r['from_version']}"
    if r["granted"]:
        verb = "would grant" if r["dry_run"] else "granted"
        console.print(
            f"{r['target']}: {verb} loading to {', '.join(r['granted'])}", markup=False, highlight=False
        )
    if not r["applied"]:
        said = "" if r["granted"] else "; nothing changed"
        console.print(f"{r['target']}: the ingest schema is at version {r['to_version']}{said}", markup=False)
        return
    verb = "would apply" if r["dry_run"] else "applied"
    console.print(
        f"{r['target']}: {was} -> version {r['to_version']}; {verb}:", markup=False, highlight=False
    )
    for m in r["applied"]:
        console.print(f"  {m['version']}: {m['name']}", markup=False, highlight=False)


@app.command("batches")
def batches(
    ctx: typer.Context,
    limit: Annotated[
        int,
        typer.Option(
            "--limit", min=1, max=MAX_LISTED, help=f"How many batches, newest first (at most {MAX_LISTED:,})."
        ),
    ] = 50,
    db: Db = None,
) -> None:
    """List the loaded batches, newest first."""
    from voketag_ops.workflows import ingest as wf
    from voketag_ops.workflows.chain import anchor_states

    env = use(ctx)
    with _named_dr_operation(db, _home(env)):
        conninfo = _read_conninfo(env, db)
        rows = (
            []
            if conninfo is None
            else wf.list_batches(conninfo, limit=limit, anchor_states=anchor_states(_home(env)))
        )
    for row in rows:
        if row["anchor_mismatch"]:
            env.out.note(f"warning: {row['anchor_mismatch']}")
    env.out.result({"batches": rows}, render=_render_batches)


def _render_batches(console: Console, report: dict[str, Any]) -> None:
    from rich.markup import escape
    from rich.table import Table

    if not report["batches"]:
        console.print("no batches loaded yet")
        return
    table = Table(title="batches", title_justify="left")
    for col in ("batch", "loaded at", "file", "rows", "rejected", "root", "anchor"):
        table.add_column(col)
    for b in report["batches"]:
        table.add_row(
            str(b["batch_id"]),
            b["loaded_at"].astimezone(UTC).strftime("%Y-%m-%d %H:%M:%SZ"),
            escape(printable(b["file_name"])),  # a file may be named "[red]x.csv", or with ESC [ 2 J
            f"{b['rows_loaded']:,}",
            f"{b['rows_rejected']:,}",
            b["merkle_root"][:16] + "…",
            b["anchor"],
        )
    print_table(console, table)


@app.command("proof")
def proof(
    ctx: typer.Context,
    tag_id: Annotated[str, typer.Argument(metavar="TAG_ID", help="The tag to prove.")],
    db: Db = None,
) -> None:
    """Print the inclusion proof of TAG_ID's canonical row in its batch root
    (check it with `voke chain verify`)."""
    from voketag_ops.core.audit import storable_text
    from voketag_ops.core.ingest import TAG_ID_RULE, is_tag_id
    from voketag_ops.errors import UsageError
    from voketag_ops.workflows import ingest as wf
    from voketag_ops.workflows.chain import anchor_states

    env = use(ctx)
    if not is_tag_id(tag_id):  # no loaded row can have it (and it may not even be UTF-8)
        raise UsageError(f"TAG_ID {storable_text(tag_id)!r} is not a tag_id: {TAG_ID_RULE}")
    with _named_dr_operation(db, _home(env)):
        conninfo = _read_conninfo(env, db)
        result = (
            wf.TagProof(tag_id=tag_id, found=False)
            if conninfo is None
            else wf.prove_tag(conninfo, tag_id, anchor_states=anchor_states(_home(env)))
        )
    if not result.found:
        failure = f"tag {tag_id!r} has not been loaded"
    elif result.damaged:
        failure = f"tag {tag_id!r}: {result.damaged}"
    elif not result.intact:
        failure = (
            f"tag {tag_id!r}: the stored row no longer matches the leaf sealed in batch {result.batch_id}"
        )
    elif not result.valid:
        failure = f"tag {tag_id!r}: the proof does not verify against batch {result.batch_id}'s root"
    elif result.anchor_mismatch:  # a batch rewritten whole, its seal too: its anchor says so
        failure = f"tag {tag_id!r}: {result.anchor_mismatch}"
    else:
        failure = None
    env.out.result(result, ok=failure is None, render=_render_proof, failure=failure)


def _render_proof(console: Console, p: TagProof) -> None:
    if not p.found or p.tree_size is None:  # no proof to show (a damaged row): the failure says why
        return
    console.print(
        f"tag {p.tag_id}: leaf {p.leaf_index} of {p.tree_size} in batch {p.batch_id} ({printable(p.file_name or '')}), "
        f"anchor {p.anchor}",
        markup=False,
        highlight=False,
    )
    console.print(f"root      {p.root}", markup=False, highlight=False)
    console.print(f"leaf hash {p.leaf_hash}", markup=False, highlight=False)
    for i, h in enumerate(p.audit_path):
        console.print(f"path[{i:2}]  {h}", markup=False, highlight=False)
    # A proof that holds against a root the anchor contradicts is no failed proof: say which it is.
    verdict = ("anchor mismatch" if p.anchor_mismatch else "valid") if p.valid and p.intact else "NOT valid"
    console.print(verdict, markup=False, highlight=False)


@app.command("sample")
def sample(
    ctx: typer.Context,
    out: Annotated[
        Path,
        typer.Option(
            "--out",
            parser=named_path("--out"),
            metavar="FILE",
            help="Where to write the batch CSV ('-': stdout).",
        ),
    ],
    rows: Annotated[int, typer.Option("--rows", min=1, help="Number of rows.")] = 1000,
    seed: Annotated[int, typer.Option("--seed", help="Random seed (same seed, same file).")] = 0,
    force: Annotated[bool, typer.Option("--force", help="Overwrite FILE if it exists.")] = False,
) -> None:
    """Write a realistic batch (for drills, benchmarks and demos)."""
    from voketag_ops.workflows import ingest as wf

    env = use(ctx)
    if str(out) == "-":
        # The CSV is the answer: no result document, the summary line goes to stderr.
        if env.out.json_mode:
            from voketag_ops.errors import UsageError

            raise UsageError("--out - writes the CSV to stdout, where --json would put its document")
        report = wf.write_sample_to(env.out.stdout, rows=rows, seed=seed)
        env.out.settled()
        if report is not None:  # None: the reader went away, which is no error, and nothing was "wrote"
            env.out.note(f"wrote {report['rows']:,} rows ({report['bytes']:,} bytes) to stdout (seed {seed})")
        return
    report = wf.make_sample(out, rows=rows, seed=seed, force=force)
    env.out.result(
        report,
        render=lambda c, r: c.print(
            f"wrote {r['rows']:,} rows ({r['bytes']:,} bytes) to {r['path']} (seed {r['seed']})",
            markup=False,
            highlight=False,
        ),
    )
