"""Click's exception types, wherever this Typer keeps them (recent Typer vendors Click)."""

from typer import Abort as ClickAbort

try:
    from typer._click.exceptions import ClickException, NoArgsIsHelpError
    from typer._click.exceptions import UsageError as ClickUsageError
except ImportError:  # Typer releases that depend on Click
    from click.exceptions import ClickException, NoArgsIsHelpError  # type: ignore[no-redef]
    from click.exceptions import UsageError as ClickUsageError  # type: ignore[no-redef]

__all__ = ["ClickAbort", "ClickException", "ClickUsageError", "NoArgsIsHelpError"]
