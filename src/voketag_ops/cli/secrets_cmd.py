"""`voke secrets`: the versioned secret store (values only through `access`)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from voketag_ops.cli.common import DryRun, Yes, read_pasted_bytes, use
from voketag_ops.output import print_table

if TYPE_CHECKING:
    from rich.console import Console

app = typer.Typer(
    help="List secrets and versions; `add` stores a value voke does not rotate; `access` prints one value "
    "(operators only).",
    no_args_is_help=True,
)


def _store(env: Any) -> Any:
    from voketag_ops.workflows.env import LocalPlatform

    if env.settings.env != "local":  # a Google Cloud environment: Secret Manager
        from voketag_ops.workflows.cloud import CloudPlatform

        return CloudPlatform(env.settings).store()
    platform = LocalPlatform(env.settings)
    return platform.store()


@contextmanager
def _named(name: str) -> Iterator[None]:
    """A secret or version the operator named that does not exist is a usage error (exit 2)."""
    from voketag_ops.errors import NotFoundError, UsageError

    try:
        yield
    except NotFoundError as exc:
        raise UsageError(
            exc.message, hint="`voke secrets list` and `voke secrets versions NAME` list them"
        ) from None


def _versions(meta: Any) -> list[dict[str, Any]]:
    return [
        {
            "version": v.version,
            "state": v.state,
            "aliases": list(v.aliases),
            "created_at": v.created_at,
            "state_changed_at": v.state_changed_at,
        }
        for v in meta.versions
    ]


@app.command("list")
def list_(ctx: typer.Context) -> None:
    """Every secret with its current version and versions (never values)."""
    env = use(ctx)
    secrets_out = [
        {"name": m.name, "current_version": m.aliases.get("current"), "versions": _versions(m)}
        for m in _store(env).list()
    ]
    env.out.result({"secrets": secrets_out}, render=_render_list)


@app.command("versions")
def versions(ctx: typer.Context, name: Annotated[str, typer.Argument(help="Secret name.")]) -> None:
    """A secret's versions: state, aliases, creation time."""
    env = use(ctx)
    with _named(name):
        meta = _store(env).get(name)
    env.out.result(
        {"name": meta.name, "etag": meta.etag, "aliases": meta.aliases, "versions": _versions(meta)},
        render=_render_versions,
    )


@app.command("access")
def access(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="Secret name.")],
    version: Annotated[str, typer.Option("--version", help="Version number or alias.")] = "current",
) -> None:
    """Print the raw value and nothing else (the one command that shows a secret)."""
    from voketag_ops.audit import audited

    env = use(ctx)
    store = _store(env)
    # A refused or failed access is on record too: who asked for which secret matters either way.
    with (
        audited(
            env.local_environment().home,
            event_type="secret.access",
            env=env.settings.env,
            target=name,
            details={"version": version},
        ),
        _named(name),
    ):
        value = store.access(name, version)
    env.out.stdout.write_bytes(value)  # type: ignore[attr-defined]
    env.out.settled()
    if env.out.stdout.isatty():  # the value has no line break of its own: the prompt's on the next line
        env.out.stderr.write("\n")


@app.command("add")
def add(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="Secret name (created if it does not exist).")],
    from_file: Annotated[
        Path | None,
        typer.Option(
            "--from-file", help="Read the value from this file (else stdin, or a prompt that does not echo)."
        ),
    ] = None,
    force: Annotated[
        bool,
        typer.Option("--force", help="Add a new version even if the value equals the current version's."),
    ] = False,
    dry_run: DryRun = False,
    yes: Yes = False,
) -> None:
    """Store a value voke reads but does not rotate (a provider's admin credential) as NAME's new
    `current` version; the version it replaces becomes `previous`. The value of the current
    version again adds nothing (safe to re-run) unless --force. Never printed."""
    from voketag_ops.workflows import secrets as wf

    env = use(ctx)
    store = _store(env)
    if dry_run:
        wf.check_addable(env.settings, name, store)
        env.out.result(wf.add_version(store, name, None, dry_run=True, force=force), render=_render_add)
        return
    from voketag_ops import interrupts
    from voketag_ops.errors import VokeError

    # A refused add (a secret voke rotates, a bad name or value) is a `failure` event; the
    # real reason comes before any question. Three writes (secret, version, alias): a first
    # Ctrl-C or SIGTERM among them is held until they are done, so the answer and the audit
    # event say what the store holds; a second one is raised (a backend that hangs).
    try:
        wf.check_addable(env.settings, name, store)
    except VokeError:
        with env.audited("secret.add", target=name):
            raise
    env.out.confirm(f"Add a new current version to secret {name}?", yes=yes)
    with env.audited("secret.add", target=name) as event:
        value = wf.check_value(_read_value(env, name, from_file))
        with interrupts.Held(give_way_after=1) as held:
            report = wf.add_version(store, name, value, force=force)
            event.details.update(
                version=report["version"], previous=report["previous"], created=report["created"]
            )
            if not report["changed"]:
                event.result = "unchanged"
    if held.fired:
        report["warnings"] = ["interrupted while the version was being stored: it was stored all the same"]
    env.out.result(report, render=_render_add)


def _read_value(env: Any, name: str, from_file: Path | None) -> bytes:
    from voketag_ops.errors import UsageError
    from voketag_ops.workflows.secrets import MAX_VALUE_BYTES

    if from_file is None:
        return read_pasted_bytes(env, f"Value of {name}", limit=MAX_VALUE_BYTES)
    try:
        with open(from_file, "rb") as fh:
            return fh.read(MAX_VALUE_BYTES + 1)
    except OSError as exc:
        raise UsageError(f"--from-file {from_file}: {exc.strerror}") from None


def _render_add(console: Console, report: dict[str, Any]) -> None:
    if report.get("dry_run"):
        console.print("dry run: would " + "; ".join(report["plan"]), markup=False)
        return
    for warning in report.get("warnings") or []:
        console.print(f"warning: {warning}", markup=False)
    if not report["changed"]:
        console.print(
            f"{report['name']}: version {report['version']} holds this value already and is current; "
            "nothing added (--force adds it anyway)",
            markup=False,
        )
        return
    made = " (created)" if report["created"] else ""
    was = f"; version {report['previous']} is previous" if report["previous"] is not None else ""
    console.print(f"{report['name']}{made}: version {report['version']} is current{was}", markup=False)


def _render_list(console: Console, report: dict[str, Any]) -> None:
    if not report["secrets"]:
        console.print("no secrets")
    for s in report["secrets"]:
        console.print(f"{s['name']}: current {s['current_version']}, {len(s['versions'])} version(s)")


def _render_versions(console: Console, report: dict[str, Any]) -> None:
    from rich.table import Table

    table = Table(title=report["name"], title_justify="left")
    for col in ("version", "state", "aliases", "created"):
        table.add_column(col)
    for v in report["versions"]:
        table.add_row(str(v["version"]), v["state"], ", ".join(v["aliases"]), v["created_at"])
    print_table(console, table)
