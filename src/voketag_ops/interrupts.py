"""How voke is stopped: Ctrl-C, and SIGTERM and SIGHUP handled the same way (the `voke` script).

SIGTERM (a cancelled CI job, `timeout`, systemd or Cloud Run stopping the job) and SIGHUP
(the terminal or the ssh session closed) raise ``Terminated``, a KeyboardInterrupt, wherever
Ctrl-C would raise: the operation rolls back or records where to resume, and the exit is
130 (what is written to a terminal gone meanwhile goes nowhere: see output.py). Before the command has started (the
imports) there is nothing to clean up: a signal then ends voke at once with its one-line
error. Once the outcome is final (``decided``) a first signal waits, and the answer of a second
says what that outcome was; once the result is out (``settle``) signals are ignored: they would
only garble it.
Only the `voke` script (``install``) does any of this; tests that call voke in-process keep
Python's own handling.
"""

from __future__ import annotations

# The C module under `signal`: the same functions and numbers, without `signal`'s enums
# (~5 ms of every start, `voke --version` included).
import _signal as signal
import os
import sys

TYPE_CHECKING = False  # not typing's: `voke --version` imports this module, and typing costs ~8 ms
if TYPE_CHECKING:
    from collections.abc import Callable, Iterable
    from concurrent.futures import Future
    from types import FrameType
    from typing import Any, Self, TypeVar

    T = TypeVar("T")


class Terminated(KeyboardInterrupt):
    """SIGTERM or SIGHUP, raised where Ctrl-C would be: every clean-up Ctrl-C gets runs, and
    messages and audit events can tell them apart."""

    # The first such signal's name, set by the handler: a clean-up may turn the interrupt into
    # another exception.
    received = ""


# Signals that stop voke as SIGTERM does (a SIGINT is Ctrl-C), with the names answers give them.
_TERMINATING = {signal.SIGTERM: "SIGTERM", signal.SIGHUP: "SIGHUP"}


_installed = False
_command: str | None = None  # what the command line names (`dr failover`), for the early error
_started = False  # the command is running: a signal is raised, not an immediate exit
_settled = False  # the answer is out: signals stay ignored
_decided: Held | None = None  # the outcome is final: signals held until the answer is out
_outcome = ""  # what was decided and what is left (``decided``), for the answer of a signal after it


def install() -> None:
    """The `voke` script's handlers, from its entry point's first line (before it, Python's own
    start and the script's import of `voketag_ops.cli.main` are Python's). A signal the caller
    ignores stays ignored."""
    global _installed
    _installed = True
    if signal.getsignal(signal.SIGINT) != signal.SIG_IGN:
        signal.signal(signal.SIGINT, _on_signal)
    for signum in _TERMINATING:  # (`nohup` ignores SIGHUP: it stays ignored)
        if signal.getsignal(signum) == signal.SIG_DFL:
            signal.signal(signum, _on_signal)


def name(command: str | None) -> None:
    """COMMAND, the one the command line names, is the one the JSON error names if a signal
    comes before it starts (Typer has not resolved it yet; until this is said, none)."""
    global _command
    _command = command


def started() -> None:
    """The command runs now: from here on a signal is raised for its clean-ups."""
    global _started
    _started = True


def settle() -> None:
    """The result is out and the exit code decided: ignore signals from now on (in the
    `voke` script only)."""
    global _settled
    if _installed:
        _settled = True
        for signum in (signal.SIGINT, *_TERMINATING):
            signal.signal(signum, signal.SIG_IGN)


def decided(outcome: str = "", left: str = "") -> None:
    """The command's outcome is final (a rotation has ended): until the answer is out
    (``settle``) a Ctrl-C or SIGTERM is noted, not raised, as exit 130 would have an operator
    or a cron wrapper run it again. The second one is raised, so a step that hangs can still
    be stopped; its answer (``message``) says OUTCOME, what was decided, and LEFT, what is left
    to do, once they are known: given again, they replace what was given (nothing more). In
    the `voke` script only (as ``settle``)."""
    global _decided, _outcome
    if not _installed:
        return
    if _decided is None:
        _decided = Held(give_way_after=1)
        _decided.hold()
    if outcome:
        _outcome = f"{outcome}; its report was not printed ({left})" if left else outcome


def reopen() -> None:
    """Another operation of the same command begins (`rotate due --run`'s next rotation): what
    ``decided`` held is raised now, before it starts, and signals are raised again."""
    global _decided, _outcome
    held, _decided, _outcome = _decided, None, ""
    if held is not None:
        held.__exit__()
        if held.fired:
            raise interrupt()


def _received(signum: int) -> None:
    """Note SIGNUM: a SIGTERM or SIGHUP makes the interrupt a ``Terminated`` that names it."""
    if signum in _TERMINATING and not Terminated.received:
        Terminated.received = _TERMINATING[signum]


def _on_signal(signum: int, frame: FrameType | None) -> None:
    _received(signum)
    if not _started:  # still importing: nothing to undo, and no traceback to show
        message = stopped_by()
        if "--json" in sys.argv or os.environ.get("VOKE_OUTPUT", "").lower() == "json":
            import json

            doc = {
                "ok": False,
                "command": _command,
                "error": {"type": "Interrupted", "message": message, "exit_code": 130},
            }
            _write(1, json.dumps(doc) + "\n")
        else:
            _write(2, f"error: {message}\n")
        os._exit(130)
    raise interrupt()


def _write(fd: int, text: str) -> None:
    try:
        os.write(fd, text.encode())
    except OSError:  # no reader, or the terminal hung up: the exit code still says it
        pass


class Held:
    """Within the block, Ctrl-C, SIGTERM and SIGHUP are noted (``fired``) instead of raised: for
    steps that must not be cut in two, such as renaming a file into place or putting rows
    back. Off the main thread nothing changes. An ignored signal (a background job) stays
    ignored, and a SIGTERM or SIGHUP left at its default (not the `voke` script) still ends the
    process. With GIVE_WAY_AFTER, the signal after that many is raised after all, so a step
    that hangs can still be stopped. ``hold`` starts holding later than the block's start
    (START=False)."""

    def __init__(self, *, give_way_after: int | None = None, start: bool = True) -> None:
        self.count = 0  # signals noted
        self._give_way_after = give_way_after
        self._start = start
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> Self:
        if self._start:
            self.hold()
        return self

    def hold(self) -> None:
        """Hold from now on (again: nothing more)."""
        import threading

        if self._previous or _settled or threading.current_thread() is not threading.main_thread():
            return
        for signum in (signal.SIGINT, *_TERMINATING):
            current = signal.getsignal(signum)
            if current == signal.SIG_IGN or (signum in _TERMINATING and not callable(current)):
                continue
            self._previous[signum] = signal.signal(signum, self._note)

    def __exit__(self, *exc: object) -> None:
        if not _settled:  # (the answer came out within the block: signals stay off)
            # A SIGINT handler set from C reads as None: Python's own is the default.
            for signum, previous in self._previous.items():
                signal.signal(signum, previous if previous is not None else signal.default_int_handler)
        # Held inside another hold: what we noted counts there too. That hold is found through
        # any signal held, not SIGINT's alone: one the caller ignores (a background job) is not.
        handlers = (getattr(previous, "__self__", None) for previous in self._previous.values())
        outer = next((held for held in handlers if isinstance(held, Held)), None)
        if outer is not None:
            outer.count += self.count
        self._previous.clear()

    @property
    def fired(self) -> bool:
        return self.count > 0

    def _note(self, signum: int, frame: FrameType | None) -> None:
        self.count += 1
        _received(signum)
        if self._give_way_after is not None and self.count > self._give_way_after:
            raise interrupt()


def together(fn: Callable[..., T], calls: Iterable[tuple[Any, ...]]) -> list[Future[T]]:
    """FN(*ARGS) for each ARGS of CALLS, all at once, each in a thread of its own: their futures,
    once every call has ended. A thread is not interrupted: on Ctrl-C, SIGTERM or SIGHUP the calls
    not started yet are cancelled and the running ones waited for before the interrupt goes on,
    or they would change things after the caller reported them. One more signal meanwhile is
    held; the one after gives way (a call that hangs)."""
    from concurrent.futures import ThreadPoolExecutor

    calls = list(calls)
    pool = ThreadPoolExecutor(max_workers=max(1, len(calls)))
    futures: list[Future[T]] = []
    try:
        # A signal raised amid a submit would lose that call's future (its thread then not
        # waited for): noted until all are in.
        with Held() as held:
            futures = [pool.submit(fn, *args) for args in calls]
        if held.fired:
            raise interrupt()
        wait_all(futures)
    except KeyboardInterrupt:
        # The futures waited for, not the threads: on Python 3.11 a join cut by a signal takes
        # its thread for ended though it runs on, and the next join returns at once.
        with Held(give_way_after=1):
            for future in futures:
                future.cancel()
            wait_all(futures)
        raise
    finally:
        pool.shutdown(wait=False)
    return futures


def wait_all(futures: Iterable[Future[Any]]) -> None:
    """Wait until every one of FUTURES has ended, a slice at a time: a signal the kernel gave
    another thread (a Ctrl-C is any thread's to take) only marks Python's handler due, and a
    wait without a timeout is not woken for it, so the caller would hear of it only when the
    last call ended (a hung deploy: never)."""
    from concurrent.futures import wait

    futures = list(futures)
    while wait(futures, timeout=0.1).not_done:
        pass


def stopped_by() -> str:
    """What stopped the command, as its answers say it: the first SIGTERM or SIGHUP once one
    came, else Ctrl-C."""
    return f"terminated ({Terminated.received})" if Terminated.received else "interrupted"


def outcome() -> str:
    """What was decided and what is left, as ``decided`` was last told ("" until then, and
    outside the `voke` script): a clean-up that finds it has nothing left to undo."""
    return _outcome


def message() -> str:
    """The answer of a command a signal stopped: what stopped it (``stopped_by``) and, when the
    signal gave way once its outcome was decided, what that outcome was and what is left
    (``outcome``), not a bare "interrupted" an operator would take for a run to do again."""
    return f"{stopped_by()} after {_outcome}" if _outcome else stopped_by()


def interrupt() -> KeyboardInterrupt:
    """The exception a signal becomes: Terminated once a SIGTERM or SIGHUP came, else
    KeyboardInterrupt."""
    return Terminated() if Terminated.received else KeyboardInterrupt()
