"""Faults the tests put on the local environment's PostgreSQL servers
(`voketag_ops.adapters.local`, imported when used)."""

from __future__ import annotations

import os
import signal
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from voketag_ops.adapters.local.postgres import PgNode


@contextmanager
def frozen(node: PgNode, *, timeout: float = 30) -> Iterator[list[int]]:
    """NODE's processes (postmaster and children) stopped with SIGSTOP while the block runs, as
    an operator's `kill -STOP` or a debugger leaves them: no drill's record, so `voke env up`
    leaves them stopped. Yields their pids, postmaster first, once each is stopped (or has
    exited); resumes them (SIGCONT) when the block ends, raising or not, passing over those
    that have exited meanwhile."""
    from voketag_ops.adapters.local.dr import wait_until
    from voketag_ops.adapters.local.postgres import node_pids, process_state, signal_each

    pids = node_pids(node)
    if not pids:
        raise AssertionError(f"the {node.name} is not running: nothing to freeze")
    try:
        signal_each(pids, signal.SIGSTOP)
        # the stop lands asynchronously; a child that exited meanwhile stays a zombie (Z) or is gone
        wait_until(
            lambda: all(process_state(p) in ("T", "Z", None) for p in pids),
            f"{node.name} to stop",
            timeout=timeout,
        )
        yield pids
    finally:
        signal_each(pids, signal.SIGCONT)


@contextmanager
def killed_with_its_pid_reused(node: PgNode, *, timeout: float = 30) -> Iterator[subprocess.Popen[bytes]]:
    """NODE's postmaster killed (kill -9) and its postmaster.pid left naming another live process
    of the server user, as after a reboot that gave the pid away. Yields that process (a `sleep`)
    once every process of the killed server has exited (none holds its shared memory); kills it
    when the block ends, raising or not."""
    from voketag_ops.adapters.local.dr import wait_until
    from voketag_ops.adapters.local.postgres import node_pids, process_state

    pids = node_pids(node)
    if not pids:
        raise AssertionError(f"the {node.name} is not running: nothing to kill")
    owner = node.runner.user.owner  # None: the server runs as we do
    uid, gid = owner or (None, None)
    lock = node.data_dir / "postmaster.pid"
    with subprocess.Popen(
        ["sleep", "900"], user=uid, group=gid, extra_groups=None if owner is None else []
    ) as squatter:
        try:
            os.kill(pids[0], signal.SIGKILL)
            wait_until(
                lambda: all(process_state(p) in ("Z", None) for p in pids),
                f"{node.name}'s processes to exit",
                timeout=timeout,
            )
            lines = lock.read_text().splitlines()
            lock.write_text("\n".join([str(squatter.pid), *lines[1:]]) + "\n")  # its pid, reused
            yield squatter
        finally:
            squatter.kill()
