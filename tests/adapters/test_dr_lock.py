"""The DR lock across processes: one operation at a time, and a read-only look at who holds
it (`dr status`, a load's wait) never turns an operation away."""

from __future__ import annotations

import multiprocessing
from pathlib import Path

import pytest

from voketag_ops.errors import PreconditionError
from voketag_ops.locks import dr_lock, held_by


def _probe(path: str, ready, stop) -> None:  # another voke's `dr status`, over and over
    ready.set()
    while not stop.is_set():
        held_by(Path(path) / "dr.lock")


def test_a_probe_never_turns_an_operation_away(tmp_path: Path) -> None:
    ctx = multiprocessing.get_context("spawn")
    ready, stop = ctx.Event(), ctx.Event()
    probes = [ctx.Process(target=_probe, args=(str(tmp_path), ready, stop)) for _ in range(2)]
    for p in probes:
        p.start()
    try:
        assert ready.wait(timeout=60)
        for _ in range(2000):
            with dr_lock(tmp_path, "dr backup"):
                pass
    finally:
        stop.set()
        for p in probes:
            p.join(timeout=30)


def test_a_holder_is_named_and_forgotten_once_it_lets_go(tmp_path: Path) -> None:
    ctx = multiprocessing.get_context("spawn")
    with dr_lock(tmp_path, "dr failover"):
        assert held_by(tmp_path / "dr.lock") is not None  # (another open file: this process's own look)
        other = ctx.Process(target=_take, args=(str(tmp_path),))
        other.start()
        other.join(timeout=30)
        assert other.exitcode == 5  # refused, naming the failover
    assert (tmp_path / "dr.lock").read_text() == ""
    assert held_by(tmp_path / "dr.lock") is None


def _take(path: str) -> None:
    try:
        with dr_lock(Path(path), "dr backup"):
            raise SystemExit(0)
    except PreconditionError as exc:
        raise SystemExit(5 if "dr failover pid" in exc.message else 1) from None


@pytest.fixture(autouse=True)
def _fresh(tmp_path: Path) -> None:
    (tmp_path / "dr.lock").unlink(missing_ok=True)


def test_rotations_share_the_lock_and_keep_dr_operations_out(tmp_path: Path) -> None:
    # A rotation holds it shared while it starts: a second rotation (another secret) goes on
    # beside it, a DR operation is refused naming it, and a look at it (`dr status`) sees no
    # DR operation running.
    ctx = multiprocessing.get_context("spawn")
    with dr_lock(tmp_path, "rotate db-app", shared=True):
        for shared, expected in ((False, 5), (True, 0)):
            other = ctx.Process(
                target=_take_as, args=(str(tmp_path), shared, "a rotation is starting (rotate db-app pid")
            )
            other.start()
            other.join(timeout=30)
            assert other.exitcode == expected, shared
        assert held_by(tmp_path / "dr.lock") is None
    assert (tmp_path / "dr.lock").read_text() == ""  # the last rotation to let go leaves no name
    with dr_lock(tmp_path, "dr failover"):
        other = ctx.Process(
            target=_take_as, args=(str(tmp_path), True, "another DR operation is running (dr failover pid")
        )
        other.start()
        other.join(timeout=30)
        assert other.exitcode == 5  # and no rotation starts during a DR operation


def _take_as(path: str, shared: bool, refusal: str) -> None:
    try:
        with dr_lock(Path(path), "rotate jwt-signing" if shared else "dr failover", shared=shared):
            raise SystemExit(0)
    except PreconditionError as exc:
        raise SystemExit(5 if exc.message.startswith(refusal) else 1) from None


@pytest.mark.parametrize("shared", [False, True])
def test_a_full_disk_leaves_the_lock_unnamed_but_held(tmp_path: Path, monkeypatch, shared) -> None:
    import errno
    import os

    from voketag_ops import locks

    def full(fd, data, offset):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(locks.os, "pwrite", full)
    with dr_lock(tmp_path, "env down", shared=shared):  # was a bare "No space left on device"
        fd = os.open(tmp_path / "dr.lock", os.O_RDWR)
        try:
            with pytest.raises(BlockingIOError):  # held all the same
                locks.fcntl.flock(fd, locks.fcntl.LOCK_EX | locks.fcntl.LOCK_NB)
        finally:
            os.close(fd)
