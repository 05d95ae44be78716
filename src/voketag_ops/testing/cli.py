"""Check documented `voke` commands against the real CLI without running them."""

from __future__ import annotations

import re
import shlex
from typing import Any

FENCE = re.compile(r"^```bash\n(.*?)^```", re.M | re.S)


def voke_commands(markdown: str, *, label: str = "") -> list[tuple[str, list[str]]]:
    """Every `voke ...` command in MARKDOWN's bash blocks, split at && || ; and pipes."""
    found = []
    for block in FENCE.findall(markdown):
        for line in block.replace("\\\n", " ").splitlines():
            for words in _commands(line):
                if words and (words[0] == "voke" or words[0].endswith("/voke")):
                    found.append((f"{label}{' '.join(words)}", words[1:]))
    return found


INLINE = re.compile(r"`(voke [^`\n]+)`")


def inline_voke_commands(markdown: str, *, label: str = "") -> list[tuple[str, list[str]]]:
    """Every `voke ...` command quoted inline in MARKDOWN's prose (outside bash blocks) that
    is more than a group's name or a placeholder (`voke ...`)."""
    from voketag_ops.cli.app import app

    groups = {g.name for g in app.registered_groups}
    found = []
    for span in INLINE.findall(FENCE.sub("", markdown)):
        for words in _commands(span):
            args = words[1:]
            if words[0] != "voke" or not args or "..." in args or (len(args) == 1 and args[0] in groups):
                continue
            found.append((f"{label}`{' '.join(words)}`", args))
    return found


def check_values(ctx: Any) -> None:
    """Run voke's own parsers over the option values the commands parse themselves (durations,
    points in time), as the command would; raises ValueError naming the option."""
    from datetime import UTC, datetime

    from voketag_ops.core.dr_checks import parse_duration, parse_point_in_time
    from voketag_ops.errors import VokeError
    from voketag_ops.workflows.audit import parse_when

    now = datetime.now(UTC)
    parsers: dict[str, Any] = {
        "max_backup_age": parse_duration,
        "max_lag": parse_duration,
        "min_pitr_window": parse_duration,
        "outage": parse_duration,
        "to": lambda v: parse_point_in_time(v, now=now),
        "since": lambda v: parse_when(v, "--since", now=now),
        "until": lambda v: parse_when(v, "--until", now=now),
    }
    for name, value in ctx.params.items():
        if name in parsers and isinstance(value, str):
            try:
                parsers[name](value)
            except (ValueError, VokeError) as exc:
                raise ValueError(f"--{name.replace('_', '-')}: {getattr(exc, 'message', exc)}") from None


def _commands(line: str) -> list[list[str]]:
    """LINE split into simple commands at && || ; | (quote-aware, comments dropped)."""
    lex = shlex.shlex(line, posix=True, punctuation_chars=";&|<>")
    lex.whitespace_split = True
    lex.commenters = "#"
    commands: list[list[str]] = [[]]
    redirect = False
    for token in lex:
        if redirect:  # the file name after < or >
            redirect = False
        elif token in ("&&", "||", ";", "|", "&"):
            commands.append([])
        elif token in ("<", ">", ">>", ">&", "<<"):
            redirect = True
        else:
            commands[-1].append(token)
    return [c for c in commands if c]


def parse(args: list[str]) -> Any:
    """Resolve sub-commands and parse every option and argument, as Click would before invoking."""
    from voketag_ops.cli.app import _command, hoist_global_flags

    command = _command()  # built once per process, as `run` does
    ctx = command.make_context("voke", hoist_global_flags(args), resilient_parsing=False)
    while hasattr(ctx.command, "resolve_command"):  # a group (Click's or Typer's)
        rest = [*ctx._protected_args, *ctx.args]
        assert rest, f"{ctx.command_path} needs a sub-command"
        name, sub, remaining = ctx.command.resolve_command(ctx, rest)
        assert sub is not None, f"unknown command {rest[0]!r} under {ctx.command_path}"
        ctx = sub.make_context(name, remaining, parent=ctx, resilient_parsing=False)
    return ctx
