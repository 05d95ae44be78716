"""What every command shares: the invocation context, common option types, confirmation.

Global flags (--json, --debug, --env, --config, --log-format, --log-level, --no-color)
are accepted anywhere on the command line; `app.run` moves them in front of the
sub-command so Click parses them once, on the root.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import IO, TYPE_CHECKING, Annotated, Any, TextIO

import typer

from voketag_ops.output import Output

if TYPE_CHECKING:
    from rich.console import Console

    from voketag_ops.adapters.local.environment import LocalEnvironment
    from voketag_ops.config import LoadedConfig, Settings
    from voketag_ops.workflows.env import LocalPlatform

DryRun = Annotated[bool, typer.Option("--dry-run", help="Print the plan and change nothing.")]
Yes = Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")]


def render_plan(console: Console, report: dict[str, Any]) -> None:
    """A dry run's plan (``report["plan"]``, a list of steps) on a terminal."""
    console.print("[bold]dry run[/]: nothing will change")
    for step in report["plan"]:
        console.print(f"  • {step}", markup=False)


# Commands that change something but never ask (their change is additive or undone by another
# command) take --yes too, so a script or runbook can pass it to every changing command.
Unasked = Annotated[
    bool, typer.Option("--yes", "-y", help="Accepted as on every changing command; this one never asks.")
]
# The most rows a listing whose store pages it (`ingest batches`, `chain anchors`) takes in one
# --limit: the page is held and rendered whole; beyond it is an export's work (exit 2).
MAX_LISTED = 100_000
# `chain validate`, `audit verify`, `chain verify --anchored`: the work a block must show (default:
# chain.min_difficulty)
MinDifficulty = Annotated[
    int | None,
    typer.Option(
        "--min-difficulty",
        min=0,
        max=64,
        help="Leading zero bits every block hash must have (default: the chain.min_difficulty setting, 16).",
    ),
]


@dataclass(frozen=True)
class GlobalOptions:
    """The global flags as parsed on the root command."""

    json: bool = False
    debug: bool = False
    no_color: bool = False
    env: str | None = None
    config: str | None = None  # as given: an empty one is refused where the file is read
    log_format: str | None = None
    log_level: str | None = None


class AppContext:
    """Per-invocation state handed to commands as `ctx.obj`. Settings load lazily, so
    `--help` never pays for pydantic and `voke doctor` can report a broken config."""

    def __init__(
        self,
        options: GlobalOptions,
        output: Output,
        *,
        environ: dict[str, str] | None = None,
        cwd: Path | None = None,
    ) -> None:
        self.options = options
        self.out = output
        self.environ = dict(os.environ) if environ is None else environ
        self.cwd = cwd

    @cached_property
    def loaded(self) -> LoadedConfig:
        from voketag_ops.config import load_config

        overrides: dict[str, Any] = {
            "env": self.options.env,
            "log_format": self.options.log_format,
            "log_level": "debug" if self.options.debug else self.options.log_level,
        }
        config = self.options.config
        if config == "":  # as a Path it would be ".", the current directory
            # (refused here, where a missing file is: `--help` and `--version` win over both)
            from voketag_ops.errors import UsageError

            raise UsageError(
                "--config: empty: name a configuration file, or leave it out for the nearest voke.toml"
            )
        loaded = load_config(
            config_path=None if config is None else Path(config),
            environ=self.environ,
            overrides=overrides,
            cwd=self.cwd,
        )
        if loaded.settings.env != "local":
            self.out.command_env = loaded.settings.env
        from voketag_ops.logs import setup_logging

        setup_logging(fmt=loaded.settings.log_format, level=loaded.settings.log_level, stream=self.out.stderr)
        return loaded

    @cached_property
    def settings(self) -> Settings:
        """The settings of a command that acts. Every command but `config show` and `doctor`
        (which read `loaded`: they look at VOKE_HOME, never in it) comes here first, so this is
        where a VOKE_HOME another user owns is refused, once, before anything in it is opened."""
        from voketag_ops.adapters.local.environment import refuse_foreign_home, resolve_home
        from voketag_ops.errors import ConfigError

        settings = self.loaded.settings
        try:
            home = resolve_home(settings.local.home)
        except ConfigError:  # none can be named (no HOME): said by the command that uses it, if any
            return settings
        refuse_foreign_home(home)
        return settings

    @property
    def home(self) -> Path:
        """VOKE_HOME as configured (nothing is created or started)."""
        from voketag_ops.adapters.local.environment import resolve_home

        return resolve_home(self.settings.local.home)

    def audited(self, event_type: str, *, target: str, **details: Any) -> Any:
        """Context manager recording one audit event for a state-changing command."""
        from voketag_ops.audit import audited

        return audited(
            self.home, event_type=event_type, env=self.settings.env, target=target, details=details
        )

    def local_environment(self) -> LocalEnvironment:
        """The embedded environment described by the settings."""
        from voketag_ops.adapters.local.environment import LocalEnvironment

        return LocalEnvironment.from_settings(self.settings.local)

    def platform(self) -> LocalPlatform:
        """The local environment with its credentials and services."""
        from voketag_ops.workflows.env import LocalPlatform

        return LocalPlatform(self.settings)


def named_path(name: str) -> Callable[[str], Path]:
    """A Typer ``parser`` for the path argument or option NAME: an empty value (an unset
    variable, `--rejects "$OUT"`) is exit 2 saying so, as `--db ""` is, where Path would
    read it as ".", the current directory, and the command would call that a directory."""
    from voketag_ops.errors import UsageError

    def parse(value: str) -> Path:
        if not value:
            raise UsageError(f"{name} is empty; name a file")
        return Path(value)

    return parse


def use(ctx: typer.Context) -> AppContext:
    """The AppContext of this invocation; also names the command in the JSON envelope."""
    app: AppContext = ctx.find_root().obj
    path = ctx.command_path.split()
    app.out.command = " ".join(path[1:])
    return app


def use_local(ctx: typer.Context) -> AppContext:
    """`use`, refused (exit 3) when --env names a cloud environment: for the commands that act
    on the local environment (its servers, its `voketag` database, the chain in it) and that
    would otherwise act on it there, audited under the cloud environment's name."""
    from voketag_ops.workflows.dr import require_local

    app = use(ctx)
    require_local(app.settings)
    return app


def stdin_bytes(stream: TextIO | None) -> IO[bytes]:
    """The bytes of STREAM, a text stdin: its buffer, or the text of a stream without one (a
    test's StringIO) encoded back. A closed stdin (`<&-`: sys.stdin is None) is empty, as
    `< /dev/null` is."""
    buffer: IO[bytes] | None = getattr(stream, "buffer", None)
    if buffer is None:
        import io

        return io.BytesIO(b"" if stream is None else stream.read().encode("utf-8", "surrogateescape"))
    return buffer


def read_pasted_bytes(env: AppContext, prompt: str, *, limit: int = 65536) -> bytes:
    """A value pasted by the operator, without surrounding whitespace (a trailing newline): at
    a prompt that does not echo, or on stdin, read as bytes as a file is (a value need not be
    UTF-8). Nothing, or more than LIMIT bytes, is a usage error."""
    from voketag_ops.errors import UsageError

    if env.out.interactive:
        from rich.prompt import Prompt

        value: bytes | None = Prompt.ask(prompt, password=True, console=env.out.err).encode(
            "utf-8", "surrogateescape"
        )
    else:
        from voketag_ops.files import read_at_most

        value = read_at_most(stdin_bytes(env.out.stdin), limit)
    if value is None or len(value) > limit:
        raise UsageError(f"{prompt}: more than {limit:,} bytes on stdin; nothing was stored")
    if not value.strip():
        raise UsageError(f"{prompt}: nothing pasted (give it on stdin: ... --yes < key.txt)")
    return value.strip()


def read_pasted(env: AppContext, prompt: str, *, limit: int = 65536) -> str:
    """`read_pasted_bytes` as text (a key sent to a provider): not UTF-8 is a usage error."""
    from voketag_ops.errors import UsageError

    try:
        return read_pasted_bytes(env, prompt, limit=limit).decode("utf-8").strip()
    except UnicodeDecodeError:
        raise UsageError(f"{prompt}: not UTF-8 text; nothing was stored") from None


def utf8_option(option: str, value: str) -> str:
    """VALUE of OPTION, text voke writes to a file; a byte that is not UTF-8 comes in from argv
    as a lone surrogate, which no UTF-8 file can hold: a usage error naming OPTION."""
    from voketag_ops.errors import UsageError

    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise UsageError(f"{option} must be UTF-8 text") from None
    return value
