"""Files voke writes for the user (`--out`, `--output`, `--rejects`): checked before any work
is done, written aside and renamed into place; files voke reads whole, bounded; voke's own
records (state, journals, DR records) replaced whole, and read back with one set of checks;
append-only logs read from their end."""

from __future__ import annotations

import errno
import fcntl
import json
import os
import pwd
import stat
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import IO, Any, TypeVar

from voketag_ops.errors import DISK_REFUSED, ConfigError, InputError, UsageError

T = TypeVar("T")


def working_directory(why: str, *, hint: str = "run voke from an existing directory") -> Path:
    """The current directory, for what WHY says is looked for from it; ConfigError (exit 3)
    when there is none: a cron job's or CI step's directory removed under it (a deploy that
    replaced a release directory). Nothing is guessed in its place: voke.toml, coverage's
    paths or a relative VOKE_HOME found from elsewhere would be another project's."""
    try:
        return Path.cwd()
    except OSError as exc:
        gone = "no longer exists" if exc.errno == errno.ENOENT else f"cannot be read ({exc.strerror})"
        raise ConfigError(f"the current directory {gone}: {why}", hint=hint) from None


def check_replaceable(path: Path, flag: str) -> None:
    """UsageError (exit 2) unless PATH is new or a regular file. voke writes such outputs
    beside them and renames them into place, which would put a regular file in place of a
    device (`/dev/null`, as root) or a pipe, and cannot replace a directory."""
    if str(path) == "-":  # it would be a file named "-"
        raise UsageError(f"{flag} -: name a file ('-' is not stdout here)")
    try:
        found = path.stat()
    except FileNotFoundError:
        return
    except OSError as exc:
        raise UsageError(f"{flag} {path}: {exc.strerror}") from None
    mode = found.st_mode
    if stat.S_ISREG(mode):
        for fd, stream in ((1, "stdout"), (2, "stderr")):
            if _is_open_as(path, found, fd):
                raise UsageError(f"{flag} {path}: is voke's own {stream}; name another file")
    if stat.S_ISDIR(mode):
        raise UsageError(f"{flag} {path}: is a directory; name a file")
    if not stat.S_ISREG(mode):
        raise UsageError(
            f"{flag} {path}: not a regular file (a device or a pipe would be replaced); name a file"
        )


def _is_open_as(path: Path, found: os.stat_result, fd: int) -> bool:
    """Whether PATH (FOUND, its stat) names the file FD is open on: `/dev/stdout` or
    `/proc/self/fd/1` with voke's stdout sent to a file is that file, and renamed over, the
    new file would take the place of the answer voke then writes there. Compared by path where
    /proc says what FD was opened as (another hard link of the file is another name, replaced
    alone), else by inode."""
    try:
        own = os.fstat(fd)
    except OSError:  # closed (`>&-`)
        return False
    if (own.st_dev, own.st_ino) != (found.st_dev, found.st_ino):
        return False
    try:
        opened = os.readlink(f"/proc/self/fd/{fd}")
    except OSError:  # no /proc: the inode decides
        return True
    return os.path.realpath(path) == os.path.realpath(opened)


def read_at_most(stream: IO[bytes], limit: int) -> bytes | None:
    """STREAM read to its end, or None if it holds more than LIMIT bytes: never more than
    LIMIT + 1 bytes are read, so a pipe or `/dev/zero` cannot fill memory. Read by the size a
    regular file says it has (then chunks), not LIMIT + 1 at once: `read(n)` sets aside n bytes
    first, 64 MiB for each 10 KB record (~55 us apiece, 0.5 s over 10,000 drill journals)."""
    try:
        want = os.fstat(stream.fileno()).st_size + 1  # + 1: a file that grew is read on
    except (OSError, ValueError, AttributeError):  # a stream with no descriptor
        want = 1 << 16
    chunks, total = [], 0
    while total <= limit:
        chunk = stream.read(min(max(want, 1 << 16), limit + 1 - total))
        if not chunk:
            break
        chunks.append(chunk)
        total += len(chunk)
        want = total  # doubling: few reads for a stream whose size was not known
    data = chunks[0] if len(chunks) == 1 else b"".join(chunks)
    return None if len(data) > limit else data


def path_text(path: str | os.PathLike[str]) -> str:
    """PATH as a record (an audit event, a batch row, a report) holds it: its bytes read as
    UTF-8 when they are (a UTF-8 name given under a Latin-1 locale, which reads `ré` as `rÃ©`,
    or a C one, which reads it as lone surrogates), else as the locale reads them; a byte
    neither reads is written \\xNN (`core.audit.storable_text`). Opening a file takes PATH as
    it is: only its record is text."""
    from voketag_ops.core.audit import storable_text

    try:
        raw = os.fsencode(path)
    except UnicodeEncodeError:  # not a name the file system gave (text from voke.toml in a C locale)
        return storable_text(os.fspath(path))
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return storable_text(os.fsdecode(raw))


def read_limited(path: Path, limit: int, *, what: str, hint: str | None = None) -> bytes:
    """The bytes of PATH, a regular file of at most LIMIT bytes, read whole: InputError (exit 1)
    naming PATH otherwise (HINT with a file too large). FileNotFoundError is left to the
    caller, whose message says how to make the file."""
    try:
        return _read_regular(path, limit)
    except (NotADirectoryError, PermissionError) as exc:  # (a file where a directory should be)
        raise InputError(f"{path}: cannot read: {exc.strerror}") from None
    except _Unreadable as exc:
        if exc.too_large:
            raise InputError(
                f"{path}: larger than {limit:,} bytes, the most voke reads of a {what}", hint=hint
            ) from None
        if exc.not_regular:
            raise InputError(f"{path}: {exc}; name a {what} file") from None
        raise InputError(f"{path}: cannot read: {exc}") from None


class _Unreadable(Exception):
    def __init__(self, reason: str, *, not_regular: bool = False, too_large: bool = False) -> None:
        super().__init__(reason)
        self.not_regular, self.too_large = not_regular, too_large


def open_input(path: Path, *, what: str) -> int:
    """PATH, a regular file, open for reading (a descriptor the caller closes), for reading
    part of it (`lines_backwards`): InputError (exit 1) naming PATH otherwise, as
    `read_limited` says. FileNotFoundError is left to the caller."""
    try:
        return _open_regular(path)[0]
    except (NotADirectoryError, PermissionError) as exc:
        raise InputError(f"{path}: cannot read: {exc.strerror}") from None
    except _Unreadable as exc:
        if exc.not_regular:
            raise InputError(f"{path}: {exc}; name a {what} file") from None
        raise InputError(f"{path}: cannot read: {exc}") from None


def _read_regular(path: Path, limit: int) -> bytes:
    """The bytes of PATH if it is a regular file of at most LIMIT bytes (_Unreadable saying why
    not); a file growing while it is read is cut at LIMIT + 1 bytes and refused. The rest as
    _open_regular."""
    fd, st = _open_regular(path)
    try:
        if st.st_size > limit:
            raise _Unreadable(f"larger than {limit:,} bytes", too_large=True)
        with open(fd, "rb", closefd=False) as fh:
            data = read_at_most(fh, limit)
    except OSError as exc:
        raise _Unreadable(exc.strerror or str(exc)) from None
    finally:
        os.close(fd)
    if data is None:
        raise _Unreadable(f"larger than {limit:,} bytes", too_large=True)
    return data


def _open_regular(path: Path) -> tuple[int, os.stat_result]:
    """PATH open for reading, and its stat, if it is a regular file (_Unreadable saying why not).
    A device or a pipe has no size to check first (/dev/zero never ends): refused, and opened
    without blocking (a FIFO without a writer would wait for one). FileNotFoundError,
    NotADirectoryError and PermissionError propagate (no such file; another user's)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except (FileNotFoundError, NotADirectoryError, PermissionError):
        raise
    except OSError as exc:
        raise _Unreadable(exc.strerror or str(exc)) from None
    try:
        st = os.fstat(fd)
        if stat.S_ISDIR(st.st_mode):
            raise _Unreadable("a directory, not a file", not_regular=True)
        if not stat.S_ISREG(st.st_mode):
            raise _Unreadable(
                "not a regular file (a device or a pipe has no size to check first)", not_regular=True
            )
    except OSError as exc:
        os.close(fd)
        raise _Unreadable(exc.strerror or str(exc)) from None
    except _Unreadable:
        os.close(fd)
        raise
    return fd, st


# -- append-only logs, from their end ----------------------------------------------------------
TAIL_BLOCK = 64 * 1024


class LineTooLong(ValueError):
    """`lines_backwards` met a line longer than it was allowed to hold."""


def lines_backwards(
    fd: int, *, block: int = TAIL_BLOCK, longest: int | None = None, end: int | None = None
) -> Iterator[tuple[int, bytes]]:
    """The lines of the file open as FD from its end, each with its offset and without its line
    break: first whatever follows the last line break (b"" when the file ends with one; a torn
    write when not), then each line before it, newest first. Reads BLOCK bytes at a time
    backwards, only as far as the caller iterates: an append-only log of any size costs what
    its newest lines do. LineTooLong once a line grows past LONGEST bytes (a file with no line
    break is not read whole). END: read as if the file ended there (a size taken under a lock)."""
    pos = os.fstat(fd).st_size if end is None else end
    later: list[bytes] = []  # the end of the line being read, in blocks read after it (nearest first)
    held = 0  # bytes in LATER
    while pos > 0:
        step = min(block, pos)
        pos -= step
        chunk = os.pread(fd, step, pos)
        end = len(chunk)
        cut = chunk.rfind(b"\n", 0, end)
        while cut != -1:
            yield pos + cut + 1, b"".join([chunk[cut + 1 : end], *reversed(later)])
            later, held = [], 0
            end, cut = cut, chunk.rfind(b"\n", 0, cut)
        later.append(chunk[:end])
        held += end
        if longest is not None and held > longest:
            raise LineTooLong(f"a line longer than {longest:,} bytes")
    yield 0, b"".join(reversed(later))


def lines_forward(fd: int, start: int, end: int, *, block: int = TAIL_BLOCK) -> Iterator[tuple[int, bytes]]:
    """The lines of the file open as FD from offset START (a line's start) to END (where a line
    break ends: an offset `lines_backwards` gave), each with its offset and its line break, read
    BLOCK bytes at a time: what it holds is a block and the line under way, however far it goes."""
    pos = start
    partial: list[bytes] = []  # the start of the line under way, in the blocks read before this one
    while pos < end:
        chunk = os.pread(fd, min(block, end - pos), pos)
        if not chunk:
            break  # cut shorter meanwhile: what is left is no line
        begin, cut = 0, chunk.find(b"\n")
        while cut != -1:
            line = b"".join([*partial, chunk[begin : cut + 1]])
            yield pos + cut + 1 - len(line), line
            partial, begin, cut = [], cut + 1, chunk.find(b"\n", cut + 1)
        partial.append(chunk[begin:])
        pos += len(chunk)


class LineNumbers:
    """The line number (from 1) of the line at an offset of the file open as FD, by counting the
    line breaks before it: asked (for warnings) about offsets that only go down, as a file read
    backwards does, it reads each byte before the first one once, and nothing until asked."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.offset = 0
        self.number = 1

    def at(self, offset: int) -> int:
        if offset >= self.offset:
            self.number += self._breaks(self.offset, offset)
        else:
            self.number -= self._breaks(offset, self.offset)
        self.offset = offset
        return self.number

    def _breaks(self, start: int, end: int) -> int:
        count = 0
        while start < end:
            chunk = os.pread(self.fd, min(TAIL_BLOCK, end - start), start)
            if not chunk:
                break
            count += chunk.count(b"\n")
            start += len(chunk)
        return count


@contextmanager
def open_log(path: Path) -> Iterator[int]:
    """Voke's own append-only log PATH open for reading (lines_backwards reads it), refused as
    read_record_text refuses a record that is no regular file (DamagedRecord; another user's:
    `not_permitted`), but of any size. FileNotFoundError and NotADirectoryError propagate."""
    try:
        fd, _st = _open_regular(path)
    except PermissionError:
        raise not_permitted(path) from None
    except _Unreadable as exc:
        raise DamagedRecord(str(exc)) from None
    try:
        yield fd
    finally:
        os.close(fd)


# -- writing aside ---------------------------------------------------------------------------
_SCRATCH = ".partial"
_KEPT = ".kept"
_HELD: set[str] = set()  # the scratch files this process holds


def _umask_mode() -> int:
    """0o666 less the umask: what open() would have created (mkstemp makes 0o600)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return 0o666 & ~mask


class Scratch:
    """A file written beside TARGET (``.NAME.XXXXXXXX.partial``) and renamed over it only once
    complete, so TARGET is never half-written.

    The scratch file is locked (``flock``) while this object holds it. A killed voke leaves
    its scratch file unlocked; the next writer of the same TARGET removes such leftovers at
    once, whatever their age. One kept on purpose (``keep``: a message names it) is renamed
    ``.kept`` and never swept."""

    def __init__(self, target: Path, flag: str, *, private: bool = False) -> None:
        if target.is_symlink():  # written through the link, as an open() would, not over it
            target = Path(os.path.realpath(target))
        self.target = target
        directory = target.parent if str(target.parent) else Path(".")
        prefix = f".{target.name}."
        _sweep(directory, prefix)
        while True:
            try:
                fd, path = tempfile.mkstemp(prefix=prefix, suffix=_SCRATCH, dir=directory)
            except OSError as exc:
                raise write_failure(exc, flag, target, "cannot write there") from None
            _HELD.add(path)
            fcntl.flock(fd, fcntl.LOCK_EX)
            # Between its creation and this lock the file was unlocked: another writer's sweep may
            # have taken it for a leftover and removed it (holding its lock, so this one waited).
            if _names(path, fd):
                break
            _HELD.discard(path)
            os.close(fd)
        self.path = path
        self._fd: int | None = fd
        os.fchmod(fd, 0o600 if private else _umask_mode())

    def open(self, mode: str = "wb", **kwargs: Any) -> IO[Any]:
        """The scratch file, open for writing from its start (closing it keeps the lock)."""
        assert self._fd is not None, "settled"
        return open(self.path, mode, **kwargs)

    def replace(self) -> str:
        """Rename the scratch file over the target; its path. OSError if that fails (the scratch
        file is still held: ``keep`` or ``discard`` it)."""
        os.replace(self.path, self.target)
        self._release()
        return str(self.target)

    def rename(self, path: Path) -> None:
        """Hold the content under PATH instead (beside the target, a name the sweep leaves alone),
        still locked; ``replace``, ``keep`` and ``discard`` then act on PATH."""
        os.replace(self.path, path)
        _HELD.discard(self.path)
        self.path = str(path)
        _HELD.add(self.path)

    def take(self, other: Scratch) -> None:
        """OTHER's content becomes this scratch file's (a rewritten copy renamed over it)."""
        os.replace(other.path, self.path)
        self._release()
        self._fd, other._fd = other._fd, None
        _HELD.discard(other.path)
        _HELD.add(self.path)

    def keep(self) -> str:
        """Leave the content where it is, out of the sweep's way (``.kept``); its path."""
        kept = self.path.removesuffix(_SCRATCH) + _KEPT
        with suppress(OSError):
            os.replace(self.path, kept)
            self.path = kept
        self._release()
        return self.path

    def discard(self) -> None:
        """Remove the scratch file unless it was renamed or kept."""
        if self._fd is not None:
            with suppress(FileNotFoundError):
                os.unlink(self.path)
            self._release()

    def _release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
            _HELD.discard(self.path)

    def __enter__(self) -> Scratch:
        return self

    def __exit__(self, *exc: object) -> None:
        self.discard()


def _sweep(directory: Path, prefix: str) -> None:
    """Remove the scratch files of PREFIX in DIRECTORY that nobody holds (a killed voke's)."""
    length = len(prefix) + 8 + len(_SCRATCH)  # mkstemp's names have 8 random characters
    try:
        names = [n for n in os.listdir(directory) if len(n) == length and n.startswith(prefix)]
    except OSError:
        return
    for name in names:
        # (this process's own are skipped by name: on NFS, flock is per process, not per file)
        if name.endswith(_SCRATCH) and str(directory / name) not in _HELD:
            with suppress(OSError):
                _remove_if_unheld(directory / name)


def _remove_if_unheld(path: Path) -> None:
    """Remove PATH if no live writer locks it: its writer was killed (a writer that has created
    it but not locked it yet sees it gone once it has the lock, and makes another)."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # BlockingIOError: its writer is alive
        if _names(str(path), fd):
            os.unlink(path)
    finally:
        os.close(fd)


def _names(path: str, fd: int) -> bool:
    """Whether PATH is still the file open as FD."""
    try:
        st = os.stat(path, follow_symlinks=False)
    except FileNotFoundError:
        return False
    held = os.fstat(fd)
    return (st.st_dev, st.st_ino) == (held.st_dev, held.st_ino)


def write_all(fd: int, data: bytes) -> None:
    """DATA written to FD whole (one os.write may take less) and synced: how voke writes the
    bytes of its own records (tests make the disk full here)."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]
    os.fsync(fd)


def append_whole(fd: int, data: bytes) -> None:
    """DATA appended to the file open as FD (O_APPEND) whole or not at all: a write that fails
    part-way (a full disk) is cut back off, so it leaves no torn last line for the next reader
    to trip over. The caller holds the file's lock, or has no concurrent writer."""
    size = os.fstat(fd).st_size
    try:
        write_all(fd, data)
    except OSError:
        with suppress(OSError):
            os.ftruncate(fd, size)
        raise


def append_line(fd: int, line: bytes) -> None:
    """LINE (ending in a line break) appended whole to the append-only log open as FD (O_APPEND,
    its lock held), after a line break of its own when the last line was saved without one, so
    that line stays whole and LINE starts a line of its own."""
    size = os.fstat(fd).st_size
    if size and os.pread(fd, 1, size - 1) != b"\n":
        line = b"\n" + line
    append_whole(fd, line)


def create_once(path: Path, data: bytes) -> None:
    """PATH holding DATA, unless it already holds something (then left alone): DATA is written
    beside it (0600), synced and linked into place, so no reader ever sees PATH empty or
    half-written and, of two concurrent creators, the second finds the first's. An empty PATH
    (an older voke created it in place, then found the disk full) counts as never written and
    is replaced. A failure (OSError) leaves no file of its own behind. A file system without
    hard links (vfat, exFAT, some shared folders) has PATH created exclusively and written in
    place instead."""
    try:
        if os.stat(path).st_size:
            return
    except FileNotFoundError:
        pass
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        try:
            write_all(fd, data)
        finally:
            os.close(fd)
        try:
            os.link(tmp, path)
        except FileExistsError:
            _replace_if_empty(path, tmp)
        except OSError as exc:
            if exc.errno not in _NO_HARD_LINKS:
                raise
            _create_in_place(path, data, tmp)
        _sync_directory(path.parent)
    except OSError as exc:
        raise named(exc, path) from None
    finally:
        with suppress(FileNotFoundError):
            os.unlink(tmp)


_NO_HARD_LINKS = frozenset({errno.EPERM, errno.EOPNOTSUPP, errno.ENOSYS})  # what link() says there


def _create_in_place(path: Path, data: bytes, tmp: str) -> None:
    """PATH created (O_EXCL, 0600) and DATA written to it, where TMP cannot be linked into
    place; removed again if the write fails. PATH already there: as `create_once` does. It is
    written under its lock, so that another creator finding it still empty waits, then keeps it."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        _replace_if_empty(path, tmp)
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        write_all(fd, data)
    except BaseException:
        with suppress(OSError):
            os.unlink(path)  # before the lock is let go
        raise
    finally:
        os.close(fd)


def _replace_if_empty(path: Path, tmp: str) -> None:
    """Rename TMP over PATH if PATH is still empty: under PATH's lock, so that of two writers
    that both found it empty only the first replaces it (the second then finds the first's)."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        if os.fstat(fd).st_size == 0 and _names(str(path), fd):
            os.replace(tmp, path)
    finally:
        os.close(fd)


def _sync_directory(directory: Path | int) -> None:
    """A rename or link in DIRECTORY (a path, or a descriptor `_walk` opened) made to survive a
    power cut."""
    if isinstance(directory, int):
        fd = os.open(".", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=directory)
    else:
        fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def open_private(path: Path, *, owner: tuple[int, int] | None = None) -> IO[bytes]:
    """Voke's own file PATH created (or emptied) and open for writing, 0600 whatever the umask,
    as every file voke keeps: a file written in place (a drill's copy of rows, a server's signal
    file), where `replace_whole` would not do. OWNER (uid, gid) is given the file (root writing
    in the server user's data directory). A link at PATH is replaced, never written through,
    as `_created_in` says."""
    with _directory_of(path) as directory:
        fd = _created_in(directory, path.name)
    try:
        os.fchmod(fd, 0o600)  # whatever the umask took away, or an older file's mode
        if owner is not None:
            os.fchown(fd, *owner)
        return open(fd, "wb")
    except BaseException:
        os.close(fd)
        raise


def read_own(path: Path, *, limit: int) -> bytes:
    """The bytes of PATH, a regular file of at most LIMIT bytes in a directory the server user
    writes (a server's postgresql.conf, a data directory's PG_VERSION), reached as `_walk`
    reaches directories: through no link another user owns, or root would copy whatever file
    the server user linked there into one that user reads. OSError otherwise (EINVAL: not a
    regular file, never read, so a pipe cannot hang voke; EFBIG: larger than LIMIT); the
    message holds none of its content."""
    for _ in range(_MAX_LINKS):
        with _directory_of(path) as directory:
            found = os.stat(path.name, dir_fd=directory, follow_symlinks=False)
            if stat.S_ISLNK(found.st_mode):  # a permitted link: its target reached the same way
                _check_link(found, path)
                path = path.parent / os.readlink(path.name, dir_fd=directory)
                continue
            fd = os.open(
                path.name, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOFOLLOW, dir_fd=directory
            )
        with open(fd, "rb") as fh:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise OSError(errno.EINVAL, "not a regular file", str(path))
            data = read_at_most(fh, limit)
        if data is None:
            raise OSError(errno.EFBIG, f"larger than {limit:,} bytes", str(path))
        return data
    raise OSError(errno.ELOOP, os.strerror(errno.ELOOP), str(path))


# -- writing where the server user can write ---------------------------------------------------
# Run as root, voke writes in directories the PostgreSQL user owns (VOKE_HOME/pg and all below):
# any name there may be a link that user planted, so nothing is opened, chowned or replaced
# through one (a link at a file's name is replaced; a directory reached through another user's
# link is refused).
_DIRECTORY = getattr(os, "O_PATH", os.O_RDONLY) | os.O_DIRECTORY | os.O_CLOEXEC


@contextmanager
def _directory_of(path: Path) -> Iterator[int]:
    """PATH's directory open (a descriptor to name PATH by), as `_walk` reaches it."""
    fd = _walk(path.parent)
    try:
        yield fd
    finally:
        os.close(fd)


_MAX_LINKS = 40  # links followed on the way to one path, as the kernel's limit


def _walk(directory: Path, *, euid: int | None = None) -> int:
    """DIRECTORY open, reached from / one name at a time. Run as root (EUID, default this
    process's), through no symbolic link that root does not own: the server user could swap a
    data directory for a link to /etc. A link root made (/tmp -> /private/tmp, a moved home) is
    followed, its target reached the same way (its own links checked too), at most
    `_MAX_LINKS` of them (ELOOP). Another user's voke follows every link, as the kernel would."""
    fd = os.open("/", _DIRECTORY)
    parts = list(directory.absolute().parts[1:])
    links = 0
    try:
        while parts:
            part = parts.pop(0)
            found = os.stat(part, dir_fd=fd, follow_symlinks=False)
            if stat.S_ISLNK(found.st_mode):
                _check_link(found, directory, euid=euid)
                links += 1
                if links > _MAX_LINKS:
                    raise OSError(errno.ELOOP, os.strerror(errno.ELOOP), str(directory))
                target = os.readlink(part, dir_fd=fd)
                if target.startswith("/"):
                    os.close(fd)
                    fd = os.open("/", _DIRECTORY)
                parts[:0] = [p for p in target.split("/") if p]
                continue
            # O_NOFOLLOW: a link put in place of the directory since it was looked at is refused
            step = os.open(part, _DIRECTORY | os.O_NOFOLLOW, dir_fd=fd)
            os.close(fd)
            fd = step
    except BaseException:
        os.close(fd)
        raise
    return fd


def _check_link(found: os.stat_result, path: Path, *, euid: int | None = None) -> None:
    """ConfigError (exit 3) if FOUND, met on the way to PATH, is a link root does not own while
    voke runs as root (EUID, default this process's): only then do the server user's links
    reach files no one else may touch. Another user's voke follows links, as it always has (a
    VOKE_HOME reached through a link a third user made)."""
    if (os.geteuid() if euid is None else euid) != 0:
        return
    if stat.S_ISLNK(found.st_mode) and found.st_uid != 0:
        raise ConfigError(
            f"{path} is reached through a symbolic link {user_named(found.st_uid)} owns; voke run as "
            "root follows no link another user could have put there",
            hint="remove the link, then run the command again",
        )


def _created_in(directory: int, name: str) -> int:
    """NAME in DIRECTORY open for writing and empty: voke's file (a regular file with no other
    name) is emptied in place; anything else there (a symbolic or hard link to another file, a
    pipe) loses the name, never its target's content, mode or owner, and a new file (0600) takes
    it."""
    try:
        fd = os.open(
            name,
            os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC,
            0o600,
            dir_fd=directory,
        )
    except OSError as exc:
        if exc.errno not in (errno.ELOOP, errno.ENXIO):  # a link; a pipe nobody reads
            raise
    else:
        found = os.fstat(fd)
        if stat.S_ISREG(found.st_mode) and found.st_nlink == 1:
            os.set_blocking(fd, True)
            os.ftruncate(fd, 0)
            return fd
        os.close(fd)
    os.unlink(name, dir_fd=directory)  # the name only: a link's target is untouched
    return os.open(
        name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600, dir_fd=directory
    )


def replace_json(path: Path, doc: Any, *, indent: int | None = 2) -> None:
    """Voke's own record PATH (state, journals, DR records) replaced whole by DOC, as
    `replace_whole` does."""
    replace_whole(path, json.dumps(doc, indent=indent).encode())


def replace_whole(path: Path, data: bytes, *, owner: tuple[int, int] | None = None) -> None:
    """Voke's own file PATH replaced whole by DATA: written beside it (0600), synced, renamed
    over it, so a crash or kill never leaves half of one. A failure (a full disk) leaves the
    old file and no temporary file, and names PATH. OWNER (uid, gid) is given the file before
    it takes PATH's place (a server's configuration, which root writes for the server user)."""
    tmp = f".{path.name}.tmp"
    try:
        directory = _walk(path.parent)
    except OSError as exc:
        raise named(exc, path) from None
    try:
        try:
            fd = _created_in(directory, tmp)
            try:
                os.fchmod(fd, 0o600)  # whatever the umask took away
                if owner is not None:
                    os.fchown(fd, *owner)
                write_all(fd, data)
            finally:
                os.close(fd)
            os.replace(tmp, path.name, src_dir_fd=directory, dst_dir_fd=directory)
        except BaseException as exc:
            with suppress(OSError):
                os.unlink(tmp, dir_fd=directory)
            if isinstance(exc, OSError):
                raise named(exc, path) from None
            raise
        # the rename itself survives a power cut
        _sync_directory(directory)
    finally:
        os.close(directory)


def named(exc: OSError, path: Path) -> OSError:
    """EXC naming PATH if it names no file (a write() names none): a full disk is reported with
    the file voke could not write (exit 4), not as a bare "No space left on device"."""
    return exc if exc.filename else OSError(exc.errno, exc.strerror, str(path))


# -- voke's own files that belong to another user ---------------------------------------------
def account(uid: int) -> str | None:
    """The name of UID's account, if it has one."""
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return None


def user_named(uid: int) -> str:
    """UID as `uid N (NAME)`, or `uid N` when no account has it."""
    name = account(uid)
    return f"uid {uid} ({name})" if name else f"uid {uid}"


def nearest_owner(path: Path) -> tuple[Path, int] | None:
    """PATH, or its nearest parent this user can see, with its owner's uid (None: none can be)."""
    for where in (path, *path.parents):
        with suppress(OSError):
            return where, where.stat().st_uid
    return None


def not_permitted(path: Path) -> ConfigError:
    """The error (exit 3, one line) for voke's own file PATH, in this user's VOKE_HOME, that
    this user may not read or write (EACCES, EPERM): another user's voke (root's) left it, or
    the directory it is in, there. Names PATH and that owner; the hint gives it back."""
    found = nearest_owner(path)
    if found is None:
        return ConfigError(f"permission denied on {path}")
    where, owner = found
    whose = "it" if where == path else str(where)
    if owner == os.geteuid():
        return ConfigError(f"permission denied on {path} ({whose} is yours: check its mode)")
    me = account(os.geteuid()) or str(os.geteuid())
    return ConfigError(
        f"permission denied on {path}: {whose} is owned by {user_named(owner)}, not by you",
        hint=f"give it back to you (as root): chown -R {me} {where}",
    )


# -- reading voke's own records back ------------------------------------------------------------
RECORD_LIMIT = 64 * 1024 * 1024  # far above any record voke writes; what a damaged one may cost


class DamagedRecord(ValueError):
    """One of voke's own records exists but cannot be read as one (a hand edit, a disk
    fault): the message says what is wrong with it, not which file (the caller names it)."""


def read_record_text(path: Path, *, limit: int = RECORD_LIMIT) -> str:
    """The text of voke's own record PATH. FileNotFoundError and NotADirectoryError propagate
    (there is no such record); another user's (EACCES) is `not_permitted` (it is not damaged);
    anything else that makes it unreadable (a directory, a device, an I/O error, more than LIMIT
    bytes, not UTF-8) is a DamagedRecord saying which."""
    try:
        data = _read_regular(path, limit)
    except PermissionError:
        raise not_permitted(path) from None
    except _Unreadable as exc:
        raise DamagedRecord(str(exc)) from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise DamagedRecord(f"not UTF-8 (byte {exc.start})") from None


def parse_record(text: str) -> Any:
    """TEXT, one record or one line of a JSON Lines record, as JSON; DamagedRecord if it is
    not JSON or nests too deep for the parser (json raises RecursionError there)."""
    try:
        return json.loads(text)
    except RecursionError:
        raise DamagedRecord("nested too deeply to read") from None
    except ValueError as exc:
        raise DamagedRecord(f"not JSON: {exc}") from None


def read_record(path: Path, problem: Callable[[Any], str | None], *, limit: int = RECORD_LIMIT) -> Any:
    """Voke's own JSON record PATH, checked by PROBLEM (what makes the document no such record,
    or None) before any caller indexes into it. FileNotFoundError and NotADirectoryError
    propagate; anything else wrong with it is a DamagedRecord saying what."""
    doc = parse_record(read_record_text(path, limit=limit))
    if (found := problem(doc)) is not None:
        raise DamagedRecord(found)
    return doc


def write_output(target: Path, flag: str, write: Callable[[IO[bytes]], T], *, private: bool = False) -> T:
    """Write an output file the user named (FLAG TARGET) through WRITE, all or nothing: it
    must be new or a regular file, it is written beside and renamed into place, and a failure
    leaves the old file as it was (exit 2 naming it; a full or read-only disk, exit 4)."""
    check_replaceable(target, flag)
    with Scratch(target, flag, private=private) as scratch:
        try:
            with scratch.open("wb") as fh:
                result = write(fh)
            scratch.replace()
        except OSError as exc:
            raise write_failure(exc, flag, target, "cannot write") from None
    return result


def write_failure(exc: OSError, flag: str, target: Path, doing: str) -> Exception:
    """A full or read-only disk stays an OSError, now naming TARGET (a write() names no file;
    the top level makes it exit 4); anything else is a usage error (exit 2)."""
    if exc.errno in DISK_REFUSED:
        return OSError(exc.errno, exc.strerror, str(target))
    return UsageError(f"{flag} {target}: {doing}: {exc.strerror}")


def tree_bytes(path: Path) -> int:
    """The bytes of the files under PATH (a file vanishing meanwhile counts nothing)."""
    total = 0
    for item in path.rglob("*"):
        with suppress(FileNotFoundError):
            if item.is_file():
                total += item.stat().st_size
    return total
