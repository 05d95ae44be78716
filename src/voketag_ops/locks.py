"""The DR lock: one disaster-recovery operation at a time per environment, across processes.

Local: VOKE_HOME/dr/dr.lock (failover, failback, restore, backup, prune, discard, fence, drills).
Cloud: VOKE_HOME/cloud/NAME/dr.lock (failover, failback, restore, drills), which serialises
those started from this machine; Cloud SQL itself refuses a second operation on an instance.

A DR operation holds it exclusive. A rotation (local or cloud) holds it shared, from its first
look at its secret's record until it has written its own (the record is what a failover refuses
on): two rotations go on side by side, a rotation and a DR operation never start together.
`voke dr backup` and `voke dr prune` hold it shared too (they move neither the leader nor the
services: a rotation goes on beside them, a failover, restore or drill, which read the archive,
does not), and VOKE_HOME/dr/backup.lock exclusive (one backup or prune at a time).

The cleanup lock, the same machinery: ENV_HOME/rotations/cleanup.lock, held by `voke rotate
cleanup` from its plan to its last change, so two at once never act on the same versions.
"""

from __future__ import annotations

import fcntl
import os
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, suppress
from pathlib import Path

from voketag_ops.errors import BackendError, PreconditionError

_HELD: dict[str, int] = {}  # lock path -> depth, so a drill can call the dr operations it wraps
_HELD_GUARD = threading.Lock()


def dr_lock(directory: Path, operation: str, *, shared: bool = False) -> AbstractContextManager[None]:
    """Hold DIRECTORY/dr.lock for OPERATION, or PreconditionError (exit 5) naming its holder.

    Re-entrant within a process: a drill holds it and runs `dr failover` inside. SHARED (a
    rotation starting): beside other shared holders, never beside an exclusive one.
    """
    return _held(directory / "dr.lock", operation, shared=shared, refused=LockHeld)


BACKUP = "dr backup"
PRUNE = "dr prune"


@contextmanager
def backup_lock(directory: Path, operation: str = BACKUP) -> Iterator[None]:
    """Hold DIRECTORY/backup.lock for OPERATION (BACKUP or PRUNE: one of them at a time), then
    DIRECTORY/dr.lock shared (no failover, failback, restore or drill beside it; rotations go
    on), or PreconditionError (exit 5) naming the holder."""
    # The DR lock unnamed: a refusal beside it names the backup from backup.lock, and a rotation's
    # name is never overwritten by one that outlives it (nor the backup's by a rotation).
    with (
        _held(directory / "backup.lock", operation, refused=LockHeld),
        _held(directory / "dr.lock", operation, shared=True, refused=LockHeld, named=False),
    ):
        yield


CLEANUP = "rotate cleanup"


def cleanup_lock(directory: Path) -> AbstractContextManager[None]:
    """Hold DIRECTORY/cleanup.lock for `voke rotate cleanup`, or PreconditionError (exit 5)
    naming the cleanup that holds it."""
    return _held(directory / "cleanup.lock", CLEANUP, refused=CleanupRunning)


def refuse_if_cleaning(directory: Path) -> None:
    """CleanupRunning (exit 5) while another process holds DIRECTORY/cleanup.lock (a dry run's
    check, holding nothing)."""
    if (holder := held_by(directory / "cleanup.lock")) is not None:
        raise CleanupRunning(holder)


@contextmanager
def _held(
    lock_file: Path,
    operation: str,
    *,
    shared: bool = False,
    refused: Callable[[str], PreconditionError],
    named: bool = True,
) -> Iterator[None]:
    """Hold LOCK_FILE (made private, with its directory) for OPERATION; REFUSED(holder) is raised
    when another process holds it. NAMED False: a shared hold that leaves the holder's name as it is."""
    lock_file.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    path = str(lock_file)
    with _HELD_GUARD:
        if _HELD.get(path):  # (held exclusive: a shared hold inside it is held already)
            _HELD[path] += 1
            nested = True
        else:
            nested = False
    if nested:
        try:
            yield
        finally:
            with _HELD_GUARD:
                _HELD[path] -= 1
        return
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    if shared:
        try:
            _take(fd, shared=True, refused=refused)
            # The whole name in one write: of two rotations starting together, a refusal names
            # the last to start (never a mix of both names).
            if named:
                _name_holder(fd, f"{operation} pid {os.getpid()}".encode()[:_NAMED].ljust(_NAMED))
            try:
                yield
            finally:
                _let_go_shared(fd)
        finally:
            os.close(fd)
        return
    try:
        _take(fd, refused=refused, backup=lock_file.parent / "backup.lock")
        os.ftruncate(fd, 0)
        _name_holder(fd, f"{operation} pid {os.getpid()}".encode())
        with _HELD_GUARD:
            _HELD[path] = 1
        try:
            yield
        finally:
            with _HELD_GUARD:
                _HELD.pop(path, None)
            os.ftruncate(fd, 0)  # (still held) a later refusal must not name a holder long gone
    finally:
        os.close(fd)


ENV_LIFECYCLE = frozenset({"env up", "env up (servers only)", "env down", "env destroy"})
"""The DR lock's holders that start, stop or destroy the environment (as workflows/env.py names
them; a command starting it on demand holds it as `env up` or `env up (servers only)`)."""


def is_env_holder(holder: str) -> bool:
    """Whether HOLDER starts, stops or destroys the environment (`ENV_LIFECYCLE`): waited for by
    a command starting it, not a DR operation. `env move-port` is not one: it rewrites a node's
    port, the standby's conninfo and the services' secret, as a DR operation does, and is refused
    beside, never waited for."""
    return holder_parts(holder)[0] in ENV_LIFECYCLE


def busy_with(holder: str) -> str:
    """What HOLDER of the DR lock is doing, for every message naming it: an `env` command
    starting, stopping or destroying the environment, or a DR operation."""
    if is_env_holder(holder):
        return "another voke is starting, stopping or destroying the environment"
    return "another DR operation is running"


def dr_operation_hint(home: Path) -> str | None:
    """The hint of a command that could not reach, or lost, the local environment's database
    while another voke's DR operation (a failover fencing the leader, say) holds HOME's DR lock:
    which one, and to rerun once it ends; None while none does."""
    holder = running_elsewhere(home / "dr")
    return None if holder is None else f"{busy_with(holder)} ({holder}): rerun the same command once it ends"


@contextmanager
def naming_dr_operation(home: Path) -> Iterator[None]:
    """A BackendError raised inside gets `dr_operation_hint(HOME)` as its hint while a DR
    operation runs: whether the leader went away before the first connection or mid-way, the
    operator learns why and when to run the command again (exit 4 all the same: see
    docs/decisions.md)."""
    try:
        yield
    except BackendError as exc:
        if (hint := dr_operation_hint(home)) is not None:
            exc.hint = hint
        raise


class LockHeld(PreconditionError):
    """The DR lock is held by HOLDER ("OPERATION pid N", as `dr_lock` names it)."""

    def __init__(self, holder: str) -> None:
        super().__init__(f"{busy_with(holder)} ({holder}); wait for it to finish")
        self.holder = holder


LockHeld.type_name = PreconditionError.type_name  # (what `--json` has always called it)


class CleanupRunning(PreconditionError):
    """Another `voke rotate cleanup` holds the cleanup lock: HOLDER ("rotate cleanup pid N")."""

    def __init__(self, holder: str) -> None:
        super().__init__(
            f"another `voke rotate cleanup` is running ({holder}); nothing was changed",
            hint="wait for it to finish (it does what this one would), then run this again if needed",
        )
        self.holder = holder


CleanupRunning.type_name = PreconditionError.type_name

_PROBE_GRACE = 0.5  # seconds: `held_by` holds a shared lock for microseconds; an operation for good
_NAMED = 200  # bytes of the lock file that name its holder


def _name_holder(fd: int, name: bytes) -> None:
    """Write NAME, which a refusal quotes, into the held lock FD. A full disk leaves it unnamed
    (a refusal then says "another voke process"): the lock holds all the same, and what the
    operation itself writes says what is full (`env down` writes nothing and still works)."""
    with suppress(OSError):
        os.pwrite(fd, name, 0)


def _take(
    fd: int, *, shared: bool = False, refused: Callable[[str], PreconditionError], backup: Path | None = None
) -> None:
    """FD's exclusive lock (SHARED: its shared lock), or REFUSED(holder), a PreconditionError;
    held shared (the DR lock), a PreconditionError naming the holder of BACKUP or a rotation.
    A refusal is retried for a moment: `dr status` and others probe the lock by taking it
    shared, and an operation started at that instant was refused, naming itself or a holder
    long gone (and a shared holder letting go takes it exclusive for as long)."""
    if flock_within(fd, _PROBE_GRACE, interval=0.02, shared=shared):
        return
    holder = os.pread(fd, _NAMED, 0).decode("utf-8", "replace").strip() or "another voke process"
    # Held shared: rotations starting, a backup or prune (only the DR lock is ever held shared).
    if not shared and refused is LockHeld and flock_within(fd, 0, interval=0, shared=True):
        fcntl.flock(fd, fcntl.LOCK_UN)
        if backup is not None and (backing_up := held_by(backup)) is not None:
            what = "prune" if backing_up.startswith(PRUNE) else "backup"
            raise PreconditionError(
                f"a {what} is running ({backing_up}); nothing was changed",
                hint=f"wait for the {what} to finish, then run this again",
            )
        raise PreconditionError(
            f"a rotation is starting ({holder}); nothing was changed",
            hint="wait for the rotation to finish (`voke rotate status` shows it), then run this again",
        )
    raise refused(holder)


def _let_go_shared(fd: int) -> None:
    """End a shared hold of FD; the last holder to let go leaves no name behind. (Taking it
    exclusive gives up the shared lock whether or not it is granted.)"""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return  # another rotation (or a probe) holds it; a refusal may name this one until it lets go
    os.ftruncate(fd, 0)


def flock_within(fd: int, seconds: float, *, interval: float, shared: bool = False) -> bool:
    """Take FD's exclusive flock (SHARED: its shared one), trying every INTERVAL for up to
    SECONDS; whether it was taken."""
    deadline = time.monotonic() + seconds
    mode = fcntl.LOCK_SH if shared else fcntl.LOCK_EX
    while True:
        try:
            fcntl.flock(fd, mode | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            if time.monotonic() >= deadline:
                return False
            time.sleep(interval)


def holder_parts(holder: str) -> tuple[str, int | None]:
    """(operation, pid) of a holder as `dr_lock` writes it ("OPERATION pid N")."""
    operation, _, pid = holder.rpartition(" pid ")
    return (operation, int(pid)) if operation and pid.isdigit() else (holder, None)


def running_elsewhere(directory: Path, lock: str = "dr.lock") -> str | None:
    """Who holds DIRECTORY/LOCK (exclusive) if another process does (its operation and pid), else
    None: an operation recorded as unfinished while its holder runs is under way, not interrupted.
    A backup holds the DR lock shared and is not seen (`backup_lock`): LOCK "backup.lock" sees it."""
    path = str(directory / lock)
    with _HELD_GUARD:
        if _HELD.get(path):
            return None  # this process holds it
    return held_by(Path(path))


def dr_work_elsewhere(directory: Path) -> str | None:
    """Who runs a DR operation (DIRECTORY/dr.lock, exclusive) or a backup (DIRECTORY/backup.lock:
    it holds the DR lock shared) if another process does, else None."""
    return running_elsewhere(directory) or running_elsewhere(directory, "backup.lock")


def held_by(path: Path) -> str | None:
    """What PATH says of its holder if another open file holds an exclusive flock on it ("another
    voke process" when it says nothing), None when nobody does (or it does not exist). A shared
    hold (a rotation starting) is not seen: it is no DR operation."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return os.pread(fd, _NAMED, 0).decode("utf-8", "replace").strip() or "another voke process"
    finally:
        os.close(fd)
    return None
