"""Where every command's output goes: results on stdout, everything else on stderr.

`--json` (or VOKE_OUTPUT=json) prints exactly one JSON envelope on stdout:
``{"ok": true, "command": "env status", "result": {...}}`` or, on failure,
``{"ok": false, "command": ..., "error": {"type", "message", "exit_code"}}`` (a
check that answered "no" carries its `result` as well). On a terminal the same
report is rendered with rich; colour follows NO_COLOR and whether the stream is a TTY.
"""

from __future__ import annotations

import codecs
import dataclasses
import enum
import errno
import functools
import io
import itertools
import json
import os
import re
import sys
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import ExitStack, contextmanager
from datetime import date, datetime, time, timedelta
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, TextIO

from voketag_ops.core.times import iso
from voketag_ops.errors import ExitCode, UsageError, VokeError
from voketag_ops.redact import redact

if TYPE_CHECKING:
    from rich.console import Console, RenderableType
    from rich.table import Table
    from rich.text import Text

Renderer = Callable[["Console", Any], None]


NON_TERMINAL_WIDTH = 200  # columns of human output that is not on a terminal
MIN_TERMINAL_WIDTH = 20  # a terminal said to be narrower (COLUMNS=0) is taken to be...
DEFAULT_TERMINAL_WIDTH = 80  # ...as wide as one nothing says anything about


class Cancelled(VokeError):
    """The operator answered no at a confirmation prompt; nothing was changed."""

    exit_code = ExitCode.NO


def to_jsonable(obj: Any) -> Any:
    """Plain JSON types from reports: dataclasses, pydantic models, datetimes, paths, enums, and
    the database values a key may hold (uuid, numeric, bytea)."""
    if obj is None or isinstance(obj, bool | int | float | str):
        return obj
    if isinstance(obj, datetime):
        return iso(obj)
    if isinstance(obj, date):
        return obj.isoformat()
    if isinstance(obj, enum.Enum):
        return to_jsonable(obj.value)
    if isinstance(obj, time):
        return obj.isoformat()
    # Keys a table diff may list: a numeric keeps its digits; uuid, numeric, inet and cidr values
    # are known by their module, which is not imported at every start for this.
    if isinstance(obj, Path | timedelta) or type(obj).__module__ in ("uuid", "decimal", "ipaddress"):
        return str(obj)
    if isinstance(obj, bytes | bytearray | memoryview):  # a bytea key, as PostgreSQL writes it
        return "\\x" + bytes(obj).hex()
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_jsonable(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if hasattr(obj, "model_dump"):
        return to_jsonable(obj.model_dump(mode="json"))
    if isinstance(obj, Mapping):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple | set | frozenset):
        return [to_jsonable(v) for v in obj]
    raise TypeError(f"not JSON-serialisable: {type(obj).__name__}")


# What a terminal would act on instead of showing: C0 controls but tab, DEL, C1 controls (ESC [ 2 J
# clears the screen), and the bidi overrides and isolates that reorder a line. Line breaks too, as
# \\n and \\r: every caller prints one line (a message, a name), which a file named "a\\nb" split.
_UNSHOWABLE = {
    c: f"\\x{c:02x}" if c < 0x100 else f"\\u{c:04x}"
    for c in (*range(0x20), 0x7F, *range(0x80, 0xA0), *range(0x202A, 0x202F), *range(0x2066, 0x206A))
    if c != 0x09
} | {0x0A: "\\n", 0x0D: "\\r"}


def printable(text: str) -> str:
    """TEXT for a person's terminal, on one line: characters it would act on are written as
    escapes (a file named with ESC [ 2 J is shown as \\x1b[2J, not obeyed; a line break as \\n)."""
    return text.translate(_UNSHOWABLE)


def shown(text: str) -> str:
    """TEXT read from a file or the environment (a file name, an actor, a service name in a
    history) for rich markup: what a terminal would act on is escaped (``printable``), and so
    is markup (a file named "[red]x.csv" is shown as such)."""
    from rich.markup import escape

    return escape(printable(text))


# `voke SUBCOMMAND`, not `voke-pg`, `voke.toml`, `voke --env ...` or `voke env ...`.
_VOKE_COMMAND = re.compile(r"(?<![\w./-])voke (?!env )(?=[a-z])")


def name_env(text: str, env: str | None) -> str:
    """TEXT with `--env ENV` in every `voke ...` command it names (but `voke env`: local only);
    unchanged for the local environment (None or "local")."""
    if env is None or env == "local":
        return text
    return _VOKE_COMMAND.sub(f"voke --env {env} ", text)


_NON_ASCII = re.compile(r"[^\x00-\x7f]")


def json_for(text: str, encoding: str | None) -> str:
    """TEXT, JSON, as a stream in ENCODING can take it: where that is not UTF-8 (a Latin-1
    locale, PYTHONIOENCODING=ascii) every other character escaped (\\u00e9), so that the
    document stays valid and lossless (human output writes a backslash escape for a character
    it lacks, which JSON would not read). Every JSON document voke writes to stdout or stderr
    goes through here, after redaction, which looks for secrets as they are, not as JSON
    escapes them."""
    if encoding is None or codecs.lookup(encoding).name == "utf-8":
        return text
    return _NON_ASCII.sub(lambda m: json.dumps(m.group())[1:-1], text)


def encodable(text: str, encoding: str) -> str:
    """TEXT with each character ENCODING lacks (an ASCII or Latin-1 stream) written as a
    backslash escape (\\xe9, \\u5de5), as the stream will take it."""
    try:
        text.encode(encoding)
    except UnicodeEncodeError:
        return text.encode(encoding, "backslashreplace").decode(encoding)
    return text


def print_table(console: Console, *tables: Table) -> None:
    """Print the first of TABLES (a table, then narrower variants of it) that fits CONSOLE's
    width with every word in it whole; when none does, the first as plain lines: each row's
    first cell, then one `header: value` line for each other value. Every table voke prints
    goes through here. rich fits a table to a narrow terminal by cutting cells (a port shown
    as `63…`, a node name as `pr…`, columns blanked at 20 columns), and the values a reader
    copies from a table (names, ports, ids, versions, statuses) must be there whole."""
    for table in tables:
        if table.collapse_padding:  # rich measures its first column one short of what it pads
            table.pad_edge = False
        if _fit_whole(console, table):
            console.print(table)
            return
    _print_as_lines(console, tables[0])


def _fit_whole(console: Console, table: Table) -> bool:
    """Whether TABLE fits CONSOLE's width with each column as wide as its longest word (its
    longest cell, for a `no_wrap` column); if it does only by narrowing, its columns are pinned
    to such widths, the room left going to the columns that need least to be on one line.
    rich's own narrowing takes no account of words, so it cuts them while others had room."""
    from rich.measure import Measurement

    wide = console.options.update_width(1 << 16)
    if Measurement.get(console, wide, table).maximum <= console.width:
        return True  # rich prints every column at its natural width
    needs: list[tuple[int, int]] = []
    for column in table.columns:
        sizes = [Measurement.get(console, wide, cell) for cell in (column.header, *column.cells)]
        most = max(size.maximum for size in sizes)
        needs.append((most if column.no_wrap else max(size.minimum for size in sizes), most))
    for column, (least, _) in zip(table.columns, needs, strict=True):
        column.width = least
    spare = console.width - Measurement.get(console, wide, table).maximum
    if spare < 0:
        return False
    for column, (least, most) in sorted(
        zip(table.columns, needs, strict=True), key=lambda c: c[1][1] - c[1][0]
    ):
        column.width = least + min(spare, most - least)
        spare -= column.width - least
    return True


def _print_as_lines(console: Console, table: Table) -> None:
    from rich.text import Text

    def text(cell: RenderableType) -> Text:
        if isinstance(cell, str):
            return console.render_str(cell)
        return cell if isinstance(cell, Text) else Text(str(cell))

    if table.title:
        console.print(table.title, style=table.title_style or "")
    columns = [(text(column.header), list(column.cells)) for column in table.columns]
    for index, row in enumerate(table.rows):
        console.print(text(columns[0][1][index]), style=row.style or "")
        for header, cells in columns[1:]:
            value = text(cells[index])
            if value.plain.strip():
                console.print(Text.assemble("  ", header, ": " if header.plain else "", value))


def _isatty(stream: IO[str] | _RedactingStream) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


class Output:
    """One per invocation; commands hand it reports, the top level hands it errors."""

    def __init__(
        self,
        *,
        json_mode: bool = False,
        command: str | None = None,
        stdout: TextIO | None = None,
        stderr: TextIO | None = None,
        no_color: bool = False,
        stdin: TextIO | None = None,
    ) -> None:
        self.json_mode = json_mode
        self.command = command  # None (JSON null) until a command is named: bare `voke --json`
        self.stdout: TextIO = _ReaderMayGo(stdout or sys.stdout, "stdout")  # type: ignore[assignment]
        self.stderr: TextIO = _ReaderMayGo(stderr or sys.stderr, "stderr")  # type: ignore[assignment]
        self.stdin = stdin or sys.stdin
        self.no_color = no_color or bool(os.environ.get("NO_COLOR"))  # no-color.org: set and not empty
        # The named cloud environment the command ran against: the `voke ...` commands its
        # errors and notes name carry `--env NAME`, so that pasted elsewhere they act on it.
        self.command_env: str | None = None
        self._out_console: Console | None = None
        self._err_console: Console | None = None
        self.emitted = False
        self.exit_code = int(ExitCode.OK)
        self.command_error: str | None = None  # set by the top level for a bare group
        self.streaming = False  # a --json envelope is being written chunk by chunk (stream_result)

    # -- consoles -------------------------------------------------------------
    def _console(self, stream: TextIO | _RedactingStream) -> Console:
        console = _console_class()(
            file=stream,  # type: ignore[arg-type]
            no_color=self.no_color,
            highlight=False,
            soft_wrap=not _isatty(stream),
            emoji=False,
        )
        if not _isatty(stream):  # (not console.is_terminal: FORCE_COLOR, set by CI systems, makes that true)
            # A pipe or a CI log has no width to fit: rich would squeeze tables into 80 columns
            # and cut the ids and paths a reader copies from them (`rotate rollback ID`).
            console.width = max(console.width, NON_TERMINAL_WIDTH)
        elif console.width < MIN_TERMINAL_WIDTH:
            # COLUMNS=0 (or a width no line fits in): rich would print nothing, errors included.
            console.width = DEFAULT_TERMINAL_WIDTH
        return console

    @property
    def out(self) -> Console:
        if self._out_console is None:
            self._out_console = self._console(_RedactingStream(self.stdout))
        return self._out_console

    @property
    def err(self) -> Console:
        if self._err_console is None:
            self._err_console = self._console(_RedactingStream(self.stderr))
        return self._err_console

    @property
    def interactive(self) -> bool:
        """True when a person is at a terminal (stdin and stderr are TTYs)."""
        return _isatty(self.stdin) and _isatty(self.stderr) and os.environ.get("CI", "") == ""

    # -- results ----------------------------------------------------------------
    def result(
        self,
        payload: Any,
        *,
        ok: bool = True,
        render: Renderer | None = None,
        failure: str | None = None,
        error: VokeError | None = None,
    ) -> int:
        """Print a report. ok=False means "it ran and the answer is no" (exit 1).

        FAILURE is the one-line summary used as the error message when ok is False.
        ERROR, when given, is an operation failure that still has a report to show
        (a rotation rolled back: exit 6); its exit code and message win.
        """
        data = to_jsonable(payload)
        if error is not None:
            ok, failure = False, error.message
        if self.json_mode:
            doc: dict[str, Any] = {"ok": ok, "command": self.command, "result": data}
            if not ok:
                doc["error"] = {
                    "type": error.type_name if error else "CheckFailed",
                    "message": redact(self.with_env(failure or "check failed")),
                    "exit_code": int(error.exit_code if error else ExitCode.NO),
                }
                if error is not None and error.hint:
                    doc["error"]["hint"] = redact(self.with_env(error.hint))
            self._emit_json(doc)
        else:
            if render is not None:
                render(self.out, payload)
            else:
                text = json.dumps(data, indent=2, ensure_ascii=False)
                if _isatty(self.stdout) and self.json_text(text) == text:
                    self.out.print_json(text)  # coloured
                else:
                    self.write_json(text + "\n")
            if error is not None:
                self.note(f"error: {error.message}")
                if error.hint:
                    self.note(f"hint: {error.hint}")
            elif not ok and failure:
                from rich.markup import escape

                self.err.print(f"[red]✗[/] {escape(printable(failure))}", markup=True)
        self.settled()
        self.exit_code = int(error.exit_code if error else (ExitCode.OK if ok else ExitCode.NO))
        return self.exit_code

    def stream_result(
        self,
        head: Mapping[str, Any],
        key: str,
        chunks: Iterable[str],
        tail: Callable[[], Mapping[str, Any]],
    ) -> int:
        """`result` in --json mode of a report with one value too large to hold (an export):
        the envelope is written as the value's CHUNKS come (JSON text on one line, each chunk
        whole entries, so that redaction sees every secret whole), the fields of HEAD before
        it under KEY, those of TAIL after it (what is known only once CHUNKS are through). The
        first chunk is taken before anything is written: a source that cannot be read fails
        with nothing on stdout."""
        pieces = iter(chunks)
        first = next(pieces, "")
        opening = json.dumps(
            {"ok": True, "command": self.command, "result": to_jsonable(head)}, ensure_ascii=False
        )
        self.streaming = True  # from here, a failure cannot take back what stdout has: stderr says it
        self.stdout.write(self.json_text(redact(f"{opening[:-2]}{', ' if head else ''}{json.dumps(key)}: ")))
        for chunk in itertools.chain([first], pieces):
            self.stdout.write(self.json_text(redact(chunk)))
        self.streaming = False
        closing = json.dumps(to_jsonable(tail()), ensure_ascii=False)[1:]
        self.write_json((", " if closing != "}" else "") + closing + "}\n")
        self.settled()
        self.exit_code = int(ExitCode.OK)
        return self.exit_code

    def with_env(self, text: str) -> str:
        """TEXT with `--env NAME` in every `voke ...` command it names (but `voke env`: local only)."""
        return name_env(text, self.command_env)

    def error(self, exc: VokeError) -> int:
        """Report a VokeError and return its exit code."""
        message = redact(self.with_env(exc.message))
        hint = self.with_env(exc.hint) if exc.hint else exc.hint
        # (Cut mid-stream, stdout holds a cut envelope: a second document after it would not
        # make it whole, so the error goes to stderr alone, as without --json.)
        if self.json_mode and not self.stdout.failed and not self.streaming:  # type: ignore[attr-defined]
            error: dict[str, Any] = {
                "type": exc.type_name,
                "message": message,
                "exit_code": int(exc.exit_code),
            }
            if hint:
                error["hint"] = redact(hint)
            try:
                self._emit_json({"ok": False, "command": self.command, "error": error})
            except VokeError as refused:  # stdout refused the envelope (a full disk): that is the answer
                return self.error(refused)
        else:  # on stderr: human output, or JSON whose stdout was refused (a full disk)
            self.note(f"error: {message}")
            if hint:
                self.note(f"hint: {hint}")
        self.settled()
        return int(exc.exit_code)

    def settled(self) -> None:
        """The command's answer is out: in the `voke` script a signal from now on is ignored,
        as it could only add a second, contradicting answer."""
        from voketag_ops import interrupts

        self.emitted = True
        interrupts.settle()

    def _emit_json(self, doc: Mapping[str, Any]) -> None:
        self.write_json(json.dumps(doc, ensure_ascii=False, sort_keys=False) + "\n")

    def json_text(self, text: str) -> str:
        """TEXT, JSON, as stdout can take it (see `json_for`)."""
        return json_for(text, getattr(self.stdout, "encoding", None))

    def write_json(self, text: str) -> None:
        """Write TEXT, a JSON document, to stdout: secrets masked, then escaped as stdout can
        take it."""
        self.stdout.write(self.json_text(redact(text)))
        self.stdout.flush()

    # -- stderr chatter -----------------------------------------------------------
    def note(self, message: str) -> None:
        """A one-line message for the operator on stderr (secrets masked).

        Without a terminal it is written as is: rich would add nothing to plain text, and
        importing it is ~40 ms of every cron or CI run that only says one line."""
        message = printable(self.with_env(message))
        if not _isatty(self.stderr):
            self.stderr.write(redact(message) + "\n")
            self.stderr.flush()
            return
        self.err.print(message, markup=False, highlight=False)

    @contextmanager
    def progress(self, message: str, *, when_started: bool = False) -> Iterator[Callable[[str], None]]:
        """Show MESSAGE while work runs: a spinner on a terminal, one line otherwise.

        Yields a function that updates the message. WHEN_STARTED: nothing is shown before its
        first update, which the work makes once it starts (checked, not a dry run): a refusal
        or a plan is not announced as work under way.
        """
        if when_started:
            with ExitStack() as stack:
                shown: list[Callable[[str], None]] = []

                def update(text: str) -> None:
                    if not shown:
                        shown.append(stack.enter_context(self.progress(message)))
                    shown[0](text)

                yield update
            return
        if _isatty(self.stderr) and not self.json_mode:
            with self.err.status(message) as status:
                yield lambda text: status.update(text)
        else:
            self.note(message)
            yield lambda text: None

    @contextmanager
    def steps(self, message: str) -> Iterator[Callable[[str], None]]:
        """Like `progress`, but without a terminal only the steps reported through the yielded
        function are written (a line each), not MESSAGE: a run with nothing to do (a cron job
        finding everything up) says nothing on stderr."""
        if _isatty(self.stderr) and not self.json_mode:
            with self.progress(message) as update:
                yield update
        else:
            yield self.note

    def confirm(self, question: str, *, yes: bool) -> None:
        """Ask before a destructive change; without a TTY a missing --yes is a usage error."""
        if yes:
            return
        if not self.interactive:
            raise UsageError(f"{question.rstrip('?')}: refusing without --yes (no terminal to ask)")
        from rich.prompt import Confirm

        if not Confirm.ask(question, console=self.err, default=False):
            raise Cancelled("cancelled; nothing was changed")


@functools.cache
def _console_class() -> type[Console]:
    """rich's Console, but text is made `encodable` for the stream before rich measures it:
    written as escapes only afterwards (by `_ReaderMayGo`), a name in a table cell was wider
    than the column rich gave it, and the columns after it went out of line. (Console is
    made here, not at import: rich costs ~40 ms that a command printing one note goes without.)"""
    from rich.console import Console

    class EncodableConsole(Console):
        def render_str(self, text: str, **options: Any) -> Text:
            return super().render_str(encodable(text, self.encoding), **options)

    return EncodableConsole


class _ReaderMayGo:
    """stdout or stderr, where a reader that went away (`voke dr status | head -1`) or a
    stream closed from the start (`>&-`) is no error: the rest goes to /dev/null, quietly,
    and the command ends as it would have. A stdout the system refuses (a full disk:
    `> /dev/full`) goes the same way, but the answer did not get out: `failed`, and a
    BackendError (exit 4) that the top level says on stderr; a refused stderr leaves nowhere
    to say anything. A character the stream's encoding lacks (an ASCII or Latin-1 locale) is
    written as a backslash escape. Everything else is the stream's own."""

    def __init__(self, stream: TextIO | None, name: str = "stdout") -> None:
        self.wrapped = stream
        self.name = name
        self.failed = False

    def write(self, text: str) -> int:
        if self.wrapped is not None:
            with self._refusals():
                try:
                    return self.wrapped.write(text)
                except UnicodeEncodeError:  # nothing was written: TextIOWrapper encodes it all first
                    return self.wrapped.write(encodable(text, self.wrapped.encoding))
        return len(text)

    def flush(self) -> None:
        if self.wrapped is not None:
            with self._refusals():
                self.wrapped.flush()

    def isatty(self) -> bool:
        return self.wrapped is not None and _isatty(self.wrapped)

    @property
    def gone(self) -> bool:
        """Nothing written from now on reaches anyone: the reader went away, or was never there."""
        return self.wrapped is None

    def write_bytes(self, data: bytes) -> None:
        """DATA as is (through the binary buffer when there is one), then flushed."""
        if self.wrapped is None:
            return
        buffer = getattr(self.wrapped, "buffer", None)
        with self._refusals():
            if buffer is not None:
                buffer.write(data)
                buffer.flush()
            else:
                self.wrapped.write(data.decode("utf-8", "replace"))
                self.wrapped.flush()

    def __getattr__(self, name: str) -> Any:
        wrapped = self.__dict__.get("wrapped")  # (not set yet while copy or pickle builds one)
        if wrapped is None:
            raise AttributeError(name)
        return getattr(wrapped, name)

    @contextmanager
    def _refusals(self) -> Iterator[None]:
        try:
            yield
        except OSError as exc:
            self.refused(exc)

    def refused(self, exc: OSError) -> None:
        """EXC came of writing to the stream: from now on it takes nothing. A gone reader is
        no error, nor is a terminal that hung up once voke got its SIGHUP (the exit, 130,
        says what stopped it); on stdout anything else (a full disk, a quota) is."""
        from voketag_ops import interrupts

        self._gone()
        hung_up = exc.errno == errno.EIO and interrupts.Terminated.received == "SIGHUP"
        if self.name == "stdout" and not isinstance(exc, BrokenPipeError) and not hung_up:
            from voketag_ops.errors import BackendError

            self.failed = True
            raise BackendError(f"cannot write to {self.name}: {exc.strerror or exc}") from None

    def _gone(self) -> None:
        # Point the descriptor at /dev/null too, so the interpreter's last flush stays quiet.
        stream, self.wrapped = self.wrapped, None
        try:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, stream.fileno())  # type: ignore[union-attr]
            os.close(devnull)
        except (OSError, ValueError, AttributeError, io.UnsupportedOperation):
            pass  # not a descriptor (a test's buffer)


class _RedactingStream:
    """A text stream wrapper that masks registered secrets on the way out."""

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream

    def write(self, text: str) -> int:
        return self._stream.write(redact(text))

    def flush(self) -> None:
        self._stream.flush()

    def isatty(self) -> bool:
        return _isatty(self._stream)

    def fileno(self) -> int:
        return self._stream.fileno()

    @property
    def encoding(self) -> str:
        return getattr(self._stream, "encoding", "utf-8") or "utf-8"
