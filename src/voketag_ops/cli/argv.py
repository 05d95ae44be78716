"""The command line as read before Click parses it: `app.run`, and a signal while voke is
still importing (the `voke` script), which must not wait for Typer to name the command."""

from __future__ import annotations

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


def guess_command(args: list[str]) -> str:
    """The command ARGS name (`dr failover`) before Click has resolved it: the first two words
    that are neither a flag nor a global flag's value; "" when there are none."""
    words: list[str] = []
    skip = False
    for arg in args:
        if skip:
            skip = False
            continue
        if arg.startswith("-"):
            skip = GLOBAL_FLAGS.get(arg, False)
            continue
        words.append(arg)
        if len(words) == 2:
            break
    return " ".join(words)
