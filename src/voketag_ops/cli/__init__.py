"""The `voke` command line: one Typer sub-app per file, each command thin."""
