"""The command line as read before Click parses it: `app.run`, and a signal while voke is
still importing (the `voke` script), which must not wait for Typer to name the command."""

from __future__ import annotations

from collections.abc import Iterator
from itertools import islice

# Flags every command accepts; value = whether the flag takes a value.
GLOBAL_FLAGS: dict[str, bool] = {
    "--json": False,
    "--debug": False,
    "--no-color": False,
    "--env": True,
    "--config": True,
    "--log-format": True,
    "--log-level": True,
}


def command_words(args: list[str]) -> Iterator[str]:
    """ARGS' words, in order, that are neither a flag nor a global flag's value (up to `--`):
    the command's name first, then its arguments (or a command option's value)."""
    skip = False
    for arg in args:
        if arg == "--":
            return
        if skip:
            skip = False
            continue
        if arg.startswith("-"):
            skip = GLOBAL_FLAGS.get(arg, False)
            continue
        yield arg


# The groups inside a group (`voke chain anchor ...`): their commands are three words. Kept
# here, not read from the Typer app, which is not imported yet; a test holds it to the app.
NESTED_GROUPS: dict[str, frozenset[str]] = {
    "chain": frozenset({"anchor"}),
    "coverage": frozenset({"history"}),
    "dr": frozenset({"runbook"}),
}


def guess_command(args: list[str]) -> str:
    """The command ARGS name (`dr failover`, `chain anchor run`) before Click has resolved it:
    its first words that are neither a flag nor a global flag's value, three under a nested
    group, else two; "" when there are none."""
    words = list(islice(command_words(args), 3))
    if len(words) < 3 or words[1] not in NESTED_GROUPS.get(words[0], ()):
        words = words[:2]
    return " ".join(words)
