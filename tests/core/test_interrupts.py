"""interrupts.together: a Ctrl-C reaches the caller whichever thread the kernel gave it to."""

from __future__ import annotations

import signal
import threading
import time
from typing import Any

import pytest

from voketag_ops import interrupts


def test_a_signal_another_thread_took_interrupts_the_wait_for_the_calls():
    # The kernel gives a process's SIGINT to any thread not blocking it; Python's handler then
    # runs on the main thread only once that thread wakes. A wait without a timeout never did:
    # the caller heard of the Ctrl-C when the last call ended (a hung deploy: never; a CI hang).
    heard = threading.Event()
    waited_out: list[bool] = []

    def handler(signum: int, frame: Any) -> None:
        heard.set()
        raise KeyboardInterrupt

    def call() -> None:
        deadline = time.monotonic() + 30
        while signal.getsignal(signal.SIGINT) is not handler and time.monotonic() < deadline:
            time.sleep(0.001)  # until together's own hold (while it submits) is over
        signal.pthread_kill(threading.get_ident(), signal.SIGINT)  # this thread takes it
        waited_out.append(not heard.wait(30))  # bounded: a broken wait would hold it that long

    previous = signal.signal(signal.SIGINT, handler)
    try:
        with pytest.raises(KeyboardInterrupt):
            interrupts.together(call, [()])
    finally:
        signal.signal(signal.SIGINT, previous)
    assert waited_out == [False]  # the caller heard it while the call still ran


def test_the_next_operation_is_not_answered_for_with_the_outcome_before_it(script_signals):
    # `rotate due --run`: a signal that gives way once a rotation ended says how it ended; once
    # the next one begins (`reopen`), one that stops it names that one (its own answer), not
    # the one before.
    interrupts.decided()
    assert interrupts.message() == "interrupted"  # ended, how not known yet
    interrupts.decided("rotation R1 of s1 succeeded", "`voke rotate history` shows it")
    assert interrupts.message() == (
        "interrupted after rotation R1 of s1 succeeded; its report was not printed "
        "(`voke rotate history` shows it)"
    )
    interrupts.reopen()
    assert interrupts.outcome() == "" and interrupts.message() == "interrupted"


@pytest.mark.parametrize("then", ["the next operation", "a second signal"])
@pytest.mark.parametrize("sigint", ["handled", "ignored"])
def test_a_signal_within_a_hold_after_the_outcome_counts_there_whether_or_not_sigint_is_ignored(
    script_signals, sigint, then
):
    # A background job of a non-interactive shell (nohup, some CI runners) starts with SIGINT
    # ignored: the hold around a rotation's webhook (`_end`) found the `decided` one around it
    # through SIGINT's handler only, so a SIGTERM it noted was lost there. `rotate due --run`
    # started the next rotation and exited 0; a second SIGTERM was needed and answered bare.
    import os

    if sigint == "ignored":
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        interrupts.install()  # as the script starts with it ignored
    interrupts.decided("rotation R1 of s1 succeeded", "`voke rotate history` shows it")
    with interrupts.Held(give_way_after=1) as held:  # `_end`'s, around the webhook
        os.kill(os.getpid(), signal.SIGTERM)
    assert held.fired
    if then == "the next operation":
        with pytest.raises(interrupts.Terminated):  # `rotate due --run` stops before the next secret
            interrupts.reopen()
    else:
        with pytest.raises(interrupts.Terminated):  # gives way, saying what was decided
            os.kill(os.getpid(), signal.SIGTERM)
        assert interrupts.message() == (
            "terminated (SIGTERM) after rotation R1 of s1 succeeded; its report was not printed "
            "(`voke rotate history` shows it)"
        )
    ignored = signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    assert ignored == (sigint == "ignored")  # one the caller ignores stays ignored
