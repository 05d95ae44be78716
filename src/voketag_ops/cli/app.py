"""The root `voke` app and `run`, the one place where errors become exit codes."""

from __future__ import annotations

import contextlib
import functools
import io
import os
import sys
import traceback
from pathlib import Path
from typing import Annotated, Any, TextIO

import typer

from voketag_ops import __version__, interrupts
from voketag_ops.cli import (
    audit_cmd,
    chain_cmd,
    config_cmd,
    coverage_cmd,
    doctor_cmd,
    dr_cmd,
    drill_cmd,
    env_cmd,
    ingest_cmd,
    rotate_cmd,
    secrets_cmd,
)
from voketag_ops.cli._click import ClickAbort, ClickException, ClickUsageError, NoArgsIsHelpError
from voketag_ops.cli.argv import GLOBAL_FLAGS, command_words, guess_command
from voketag_ops.cli.common import AppContext, GlobalOptions
from voketag_ops.errors import (
    DISK_REFUSED,
    BackendError,
    ConfigError,
    Interrupted,
    UsageError,
    VokeError,
    refused_file,
)
from voketag_ops.output import Output
from voketag_ops.redact import redact, register_credentials_in

HELP_FLAGS = ("-h", "--help")  # every command's, as its context inherits the root's
app = typer.Typer(
    name="voke",
    help="Operations tool of the VokeTag platform: environments, rotation, DR, coverage, chain, audit.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    pretty_exceptions_show_locals=False,
    rich_markup_mode="rich",
    context_settings={"help_option_names": list(HELP_FLAGS)},
)
# A group is registered only once at least one of its commands works.
app.add_typer(env_cmd.app, name="env")
app.add_typer(dr_cmd.app, name="dr")
app.add_typer(drill_cmd.app, name="drill")
app.add_typer(rotate_cmd.app, name="rotate")
app.add_typer(secrets_cmd.app, name="secrets")
app.add_typer(config_cmd.app, name="config")
app.add_typer(coverage_cmd.app, name="coverage")
app.add_typer(chain_cmd.app, name="chain")
app.add_typer(audit_cmd.app, name="audit")
app.add_typer(ingest_cmd.app, name="ingest")
app.command("doctor")(doctor_cmd.doctor)


def _version(value: bool) -> None:
    if value:
        sys.stdout.write(f"voke {__version__}\n")
        raise typer.Exit(0)


@app.callback()
def root(
    ctx: typer.Context,
    json_: Annotated[bool, typer.Option("--json", help="Print one JSON document on stdout.")] = False,
    debug: Annotated[
        bool, typer.Option("--debug", help="Debug logs; tracebacks on internal errors.")
    ] = False,
    no_color: Annotated[bool, typer.Option("--no-color", help="No colour (also: NO_COLOR).")] = False,
    env: Annotated[
        str | None, typer.Option("--env", help="Environment to act on: local (default) or a named one.")
    ] = None,
    config: Annotated[
        str | None,
        typer.Option("--config", metavar="PATH", help="Configuration file (default: nearest voke.toml)."),
    ] = None,
    log_format: Annotated[
        str | None, typer.Option("--log-format", help="stderr log format: auto, human or json.")
    ] = None,
    log_level: Annotated[
        str | None, typer.Option("--log-level", help="stderr log level: debug, info, warning, error.")
    ] = None,
    version: Annotated[
        bool, typer.Option("--version", "-V", help="Print the version.", is_eager=True, callback=_version)
    ] = False,
) -> None:
    """voke: run the platform's operations the same way on a laptop and on Google Cloud.

    Global flags (--json, --debug, --env, ...) are accepted anywhere on the command line.
    """
    holder: _Holder = ctx.obj
    holder.app = AppContext(
        GlobalOptions(
            json=json_ or holder.output.json_mode,
            debug=debug,
            no_color=no_color,
            env=env,
            config=config,
            log_format=log_format,
            log_level=log_level,
        ),
        holder.output,
        environ=holder.environ,
        cwd=holder.cwd,
    )
    holder.output.json_mode = holder.app.options.json
    holder.output.no_color = holder.output.no_color or no_color
    ctx.obj = holder.app


class _Holder:
    """ctx.obj before the root callback has built the AppContext."""

    def __init__(self, output: Output, environ: dict[str, str] | None, cwd: Path | None) -> None:
        self.output = output
        self.environ = environ
        self.cwd = cwd
        self.app: AppContext | None = None


def hoist_global_flags(args: list[str]) -> list[str]:
    """Move global flags (wherever they appear, up to `--`) in front of the sub-command."""
    front: list[str] = []
    rest: list[str] = []
    i = 0
    while i < len(args):
        arg = args[i]
        if arg == "--":
            rest.extend(args[i:])
            break
        name = arg.split("=", 1)[0]
        if name in GLOBAL_FLAGS:
            front.append(arg)
            if GLOBAL_FLAGS[name] and "=" not in arg and i + 1 < len(args):
                front.append(args[i + 1])
                i += 1
        else:
            rest.append(arg)
        i += 1
    return front + rest


def _dangling(args: list[str], own: dict[str, bool]) -> int | None:
    """Where an option that takes a value (a global one, or one of OWN, the command's: name ->
    takes a value) has none (before any `--`): it ends the command line, or a flag voke or the
    command accepts follows it (`--config --json` is no file named --json, `--label --dry-run`
    no label named --dry-run: taken as one, the dry run would be a real change). A value that
    only looks like a flag (`--limit -5`, `--out -`) is one."""
    known = GLOBAL_FLAGS | own
    for i, arg in enumerate(args):
        if arg == "--":
            return None
        if known.get(arg) and (i + 1 == len(args) or args[i + 1].split("=", 1)[0] in known):
            return i
    return None


def _named(args: list[str]) -> tuple[str, dict[str, bool]]:
    """The command path ARGS name as far as Click's tree has it (`voke chain anchor request`),
    and the flags that command accepts: name -> takes a value (help's too, which take none)."""
    command = _command()
    path = ["voke"]
    for word in command_words(args):
        sub = getattr(command, "commands", {}).get(word)
        if sub is None:
            break
        command, path = sub, [*path, word]
    flags = dict.fromkeys(HELP_FLAGS, False)
    for param in command.params if path[1:] else ():  # the root's own flags are the global ones
        if param.param_type_name == "option":
            for name in (*param.opts, *param.secondary_opts):
                flags[name] = not (param.is_flag or param.count)
    return " ".join(path), flags


def run(
    args: list[str],
    *,
    stdout: TextIO | None = None,
    stderr: TextIO | None = None,
    environ: dict[str, str] | None = None,
    cwd: Path | None = None,
) -> int:
    """Run one invocation and return its exit code; never raises (but SystemExit from Click)."""
    env_map = dict(os.environ) if environ is None else environ
    path, own = _named(args)
    dangling = _dangling(args, own)
    flag = None if dangling is None else args[dangling]
    args = hoist_global_flags(args if dangling is None else args[:dangling] + args[dangling + 1 :])
    for arg in args:  # a password in any argument (a URL given where a file was expected) is masked
        register_credentials_in(arg)
    # after `--`, words are arguments; `--json=true` is --json too (as hoisted), its value refused
    # by Click in the envelope it asked for
    flags = {arg.split("=", 1)[0] for arg in (args[: args.index("--")] if "--" in args else args)}
    json_mode = "--json" in flags or env_map.get("VOKE_OUTPUT", "").lower() == "json"
    output = Output(
        json_mode=json_mode,
        command=guess_command(args) or None,
        stdout=stdout,
        stderr=stderr,
        no_color="--no-color" in flags or bool(env_map.get("NO_COLOR")),  # no-color.org: set and not empty
    )
    debug = "--debug" in flags
    if flag is not None:  # hoisted, a global flag would take the sub-command's name for its value
        where = "voke" if flag in GLOBAL_FLAGS else path
        return output.error(UsageError(f"option {flag} requires a value", hint=f"see '{where} --help'"))
    chosen = env_map.get("VOKE_OUTPUT", "")
    if chosen.lower() not in ("", "json", "human"):  # a typo must not silently mean human output
        return output.error(ConfigError(f"VOKE_OUTPUT={chosen!r}: json or human"))
    # Reports go to output.stdout directly; what Typer prints itself (help, version) is held
    # back so that help for a bare group can go to stderr instead, behind one error.
    held = io.StringIO()
    with contextlib.redirect_stdout(held), contextlib.redirect_stderr(output.stderr):
        code = _invoke(args, output, debug, environ, cwd)
    interrupts.settle()  # the result is out
    try:
        if held.getvalue():
            if code == 2 and output.command_error == "missing command":
                if not output.json_mode:
                    output.stderr.write(held.getvalue())
            else:
                output.stdout.write(held.getvalue())
        output.stdout.flush()  # every answer is out by now, or its refusal is said
    except VokeError as exc:  # stdout refused it (a full disk)
        code = output.error(exc)
    return code


@functools.cache
def _command() -> Any:  # a Click Group (vendored by recent Typer, Click's own before)
    """The Click command Typer builds from `app`, once per process: building it reads every
    command's signature and type hints, which costs more than most commands take to run; a
    process that runs voke many times (a test session, a scheduler calling `run`) pays it once.
    Click keeps no state of an invocation in the command (that lives in its Context)."""
    return typer.main.get_command(app)


def _invoke(
    args: list[str], output: Output, debug: bool, environ: dict[str, str] | None, cwd: Path | None
) -> int:
    command = _command()
    holder = _Holder(output, environ, cwd)
    interrupts.started()  # from here a signal is the command's to handle (before: exit at once)
    try:
        rv = command.main(
            args=args,
            prog_name="voke",
            standalone_mode=False,
            obj=holder,
        )
        if rv == 130:  # Typer turns Ctrl-C inside a command into Exit(130)
            return output.error(_interrupted())
        if isinstance(rv, int) and rv != 0:  # typer.Exit(code)
            return rv
        return output.exit_code
    except VokeError as exc:
        if debug:
            _print_traceback(output.stderr)
        return output.error(exc)
    except ClickUsageError as exc:
        if _missing_command(exc, args):  # `voke rotate` alone: its help on stderr, one error, exit 2
            path = exc.ctx.command_path if exc.ctx is not None else "voke"
            output.command = " ".join(path.split()[1:]) or None
            output.command_error = "missing command"
            if exc.ctx is not None and not isinstance(exc, NoArgsIsHelpError) and not output.json_mode:
                exc.ctx.get_help()  # Typer prints it (held, then sent to stderr), as for `voke rotate`
            return output.error(UsageError("missing command", hint=f"see '{path} --help'"))
        return _usage_error(output, exc)
    except ClickException as exc:
        return output.error(VokeError(_one_line(exc.format_message())))
    except (ClickAbort, KeyboardInterrupt):
        return output.error(_interrupted())
    except ImportError as exc:  # a missing module, or `from google.cloud import x` without x
        if (exc.name or "").partition(".")[0] not in _GCP_MODULES:
            return _internal_error(output, exc, debug)
        # `pip install voketag-ops` alone: a Google Cloud environment needs the gcp extra.
        return output.error(
            ConfigError(
                f"Google Cloud environments need the Google Cloud client libraries ({exc.name} is incomplete or not installed)",
                hint="pip install 'voketag-ops[gcp]'",
            )
        )
    except OSError as exc:
        if isinstance(exc, PermissionError) and exc.filename:
            return output.error(_not_permitted(exc, _home_in_use(holder)))
        if exc.errno not in DISK_REFUSED:
            return _internal_error(output, exc, debug)
        # A full or read-only file system is the machine's state, not a bug: exit 4, one line.
        return output.error(
            BackendError(
                refused_file(exc) or str(exc.strerror),
                hint="free space on (or make writable) that file system, then run the command again",
            )
        )
    except Exception as exc:  # a bug: one line, traceback only with --debug
        return _internal_error(output, exc, debug)


def _home_in_use(holder: _Holder) -> Path | None:
    """The VOKE_HOME the command acted on, if it got that far (its settings loaded)."""
    if holder.app is None or "settings" not in vars(holder.app):
        return None
    from voketag_ops.adapters.local.environment import resolve_home

    try:
        return resolve_home(holder.app.settings.local.home)
    except ConfigError:  # none can be named: the refused file is in none
        return None


def _not_permitted(exc: PermissionError, home: Path | None) -> ConfigError:
    """EXC (EACCES, EPERM) as one line, exit 3: voke's own file in HOME that another user's voke
    left (it, or a directory on the way in HOME, is theirs) names that owner (`files.not_permitted`);
    anything else names the file(s) the refused call was on, as the file system said it."""
    from voketag_ops.files import not_permitted

    path = Path(os.path.abspath(os.fsdecode(exc.filename)))
    if home is not None and (path == home or home in path.parents):
        for where in (path, *path.parents):
            with contextlib.suppress(OSError):
                if where.stat().st_uid != os.geteuid():
                    return not_permitted(path)
            if where == home:
                break
    names = os.fsdecode(exc.filename)
    if exc.filename2:
        names += f" -> {os.fsdecode(exc.filename2)}"
    return ConfigError(f"{exc.strerror}: {redact(names)}")


_GCP_MODULES = frozenset({"google", "grpc", "proto", "googleapiclient"})  # what the gcp extra installs


def _internal_error(output: Output, exc: BaseException, debug: bool) -> int:
    if debug:
        _print_traceback(output.stderr)
    first_line = redact(str(exc)).splitlines()[0] if str(exc) else ""
    err = VokeError(
        f"internal error ({type(exc).__name__}){': ' + first_line if first_line else ''}",
        hint=None if debug else "run again with --debug for the traceback",
    )
    return output.error(err)


def _interrupted() -> Interrupted:
    return Interrupted(interrupts.message())


def _missing_command(exc: ClickUsageError, args: list[str]) -> bool:
    """EXC says a group was given no command: `voke rotate` (Click's NoArgsIsHelpError), or
    `voke --json` (global flags alone, hoisted before any word: the root's "Missing command.")."""
    if isinstance(exc, NoArgsIsHelpError):
        return True
    # not a bad option's or parameter's subclass; no word at all, so no unknown command's
    return type(exc) is ClickUsageError and next(command_words(args), None) is None


def _usage_error(output: Output, exc: ClickUsageError) -> int:
    ctx = getattr(exc, "ctx", None)
    hint = None
    if ctx is not None:
        output.command = " ".join(ctx.command_path.split()[1:]) or output.command
        hint = f"see '{ctx.command_path} --help'"
        name = getattr(exc, "option_name", None)
        if isinstance(name, str) and not name.startswith("--"):  # `voke ingest proof -A1`: a tag_id
            hint += f"; an argument that starts with '-' goes after `--` ({ctx.command_path} -- {name}...)"
    return output.error(UsageError(_one_line(exc.format_message()), hint=hint))


def _one_line(message: str) -> str:
    """Click's message on one line: its choice lists come one per tab-indented line."""
    return " ".join(part.strip() for part in message.splitlines() if part.strip())


def _print_traceback(stream: TextIO) -> None:
    stream.write(redact(traceback.format_exc()))
