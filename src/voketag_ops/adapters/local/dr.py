"""Disaster recovery on the local environment: the PostgreSQL side of `voke dr` and `voke drill`.

- heartbeat: one row on the leader (`voke_dr.heartbeat` in database `postgres`),
  bumped by every probe; lag in seconds is how long the replica takes to replay it,
  so an idle primary never looks lagged;
- the WAL archive: listing, timeline histories, gap checks from a base backup, the
  newest commit time reachable without crossing a gap (read with pg_waldump);
- base backups checked with pg_verifybackup;
- point-in-time restore into a new instance under pg/restores/NAME on a free port;
- fencing, promotion, failover, pg_rewind (or a fresh clone), planned switchover;
- a canary writer whose acknowledged commits measure RPO and the first write after a fault.

Files voke creates inside pg/ are handed to the server user (see take_base_backup).
Operations that can be interrupted record themselves in VOKE_HOME/dr/operation.json;
every step is idempotent, so re-running the command resumes it.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager, suppress
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from voketag_ops import interrupts
from voketag_ops.adapters.local.environment import (
    FAILOVER_RESUME,
    FROZEN,
    HOME_NODE,
    NODE_NAMES,
    PLATFORM_DB,
    SLOT_NAME,
    STANDBY_STREAMS,
    TIMELINE_SQL,
    BackupInfo,
    LocalEnvironment,
    node_trouble,
)
from voketag_ops.adapters.local.postgres import (
    PgNode,
    conf_quote,
    free_dead_shared_memory,
    frozen_pids,
    node_pids,
    parent_death_kills,
    pick_free_port,
    record_command,
    recording_commands,
    signal_each,
    tool_errors,
    tool_message,
)
from voketag_ops.clock import instant
from voketag_ops.core import wal
from voketag_ops.core.dr_checks import parse_iso
from voketag_ops.core.times import iso
from voketag_ops.errors import (
    BackendError,
    ConfigError,
    Interrupted,
    NeedsOperatorError,
    PreconditionError,
    RolledBackError,
    UsageError,
    exit_code_of,
    server_disk_full,
)
from voketag_ops.files import DamagedRecord, open_private, read_record, replace_json, tree_bytes
from voketag_ops.locks import BACKUP
from voketag_ops.logs import get_logger
from voketag_ops.redact import redact

if TYPE_CHECKING:
    import psycopg

log = get_logger(__name__)

Progress = Callable[[str], None]
DR_DB = "postgres"
RESTORE_NAME = re.compile(r"[a-z0-9][a-z0-9_-]{0,40}")  # fullmatch: `$` would let "x\n" through
_SCHEMA_SQL = (
    "create schema if not exists voke_dr",
    "create table if not exists voke_dr.heartbeat ("
    " id int primary key default 1 check (id = 1), seq bigint not null, written_at timestamptz not null)",
    "create table if not exists voke_dr.canary ("
    " run_id text not null, seq bigint not null, written_at timestamptz not null default clock_timestamp(),"
    " primary key (run_id, seq))",
)


def _noop(_msg: str) -> None:
    return None


def utcnow() -> datetime:
    return datetime.now(UTC)


def wait_until(predicate: Callable[[], Any], what: str, *, timeout: float, interval: float = 0.05) -> Any:
    """Poll PREDICATE until it returns something truthy; BackendError after TIMEOUT seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise BackendError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)


# -- files and locks -------------------------------------------------------------------------
def dr_dir(env: LocalEnvironment) -> Path:
    path = env.home / "dr"
    try:
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as exc:  # a home not writable, or in a place nothing can be made
        raise ConfigError(f"VOKE_HOME {env.home}: cannot make {path.name}/: {exc.strerror}") from None
    return path


def dr_lock(env: LocalEnvironment, operation: str, *, shared: bool = False) -> AbstractContextManager[None]:
    """One DR operation at a time across processes (failover, failback, restore, drills);
    SHARED: a rotation starting, beside other rotations and no DR operation (locks.py)."""
    from voketag_ops.locks import dr_lock as lock

    return lock(dr_dir(env), operation, shared=shared)


def backup_lock(env: LocalEnvironment, operation: str = BACKUP) -> AbstractContextManager[None]:
    """`voke dr backup`'s and `voke dr prune`'s hold (OPERATION): one backup or prune at a time,
    no DR operation beside it, rotations beside it (locks.py)."""
    from voketag_ops.locks import backup_lock as lock

    return lock(dr_dir(env), operation)


def unfinished_operation(env: LocalEnvironment) -> dict[str, Any] | None:
    """The interrupted operation recorded in VOKE_HOME/dr/operation.json, or None.

    A file that exists but cannot be read is not "none": the resume-first guard must hold.
    """
    path = env.home / "dr" / "operation.json"
    try:
        return dict(read_record(path, _not_an_object))
    except FileNotFoundError:
        return None
    except (NotADirectoryError, DamagedRecord):
        raise PreconditionError(
            f"{path} records an interrupted DR operation but cannot be read; inspect it, then remove it "
            "once the topology is known (voke dr status)"
        ) from None


def move_journal(env: LocalEnvironment) -> Path:
    """`voke env move-port`'s journal: written before its first change, removed after its last."""
    return env.home / "dr" / "move-port.json"


def interrupted_move(env: LocalEnvironment) -> dict[str, Any] | None:
    """The `env move-port` a kill or failure cut short (node, old_port, port), or None. One of a
    restored instance discarded since is over (its journal goes); one that cannot be read is
    PreconditionError, as an unreadable operation log is."""
    path = move_journal(env)
    try:
        doc = dict(read_record(path, _not_an_object))
        move = {"node": str(doc["node"]), "old_port": int(doc["old_port"]), "port": int(doc["port"])}
    except FileNotFoundError:
        return None
    except (NotADirectoryError, DamagedRecord, KeyError, TypeError, ValueError):
        raise PreconditionError(
            f"{path} records an interrupted `voke env move-port` but cannot be read; inspect it and "
            "`voke env status`, then remove it"
        ) from None
    if move["node"] not in NODE_NAMES and not (restores_dir(env) / f"{move['node']}.json").exists():
        path.unlink(missing_ok=True)
        return None
    return move


def _not_an_object(doc: Any) -> str | None:
    return None if isinstance(doc, dict) else f"not an object ({type(doc).__name__})"


def operation_to_report(env: LocalEnvironment) -> dict[str, Any] | None:
    """`unfinished_operation` for reports: an unreadable record is shown, not raised; rows a
    killed pitr drill took as its fault and never put back, and a restore whose voke died,
    count as one too, explained in a `note` (an operation log's `detail` holds its steps' records).
    Every one found is named: the first, then the others in its `also` (a killed pitr drill
    leaves its rows and its restored instance), each as the first is said."""
    from voketag_ops.locks import dr_work_elsewhere, holder_parts, is_env_holder

    try:
        op = unfinished_operation(env)
    except PreconditionError as exc:
        return {"operation": "unreadable", "resume": exc.message}
    holder = dr_work_elsewhere(env.home / "dr")
    # (`env up`/`down`/`destroy` hold it too, no DR operation; a move-port holding it is under way,
    # its journal written first)
    if holder is not None and not is_env_holder(holder):
        if op is not None:
            return dict(op, running=holder)  # under way, not interrupted
        operation, _pid = holder_parts(holder)  # a drill or restore records no operation log
        command = "voke " + (
            operation.replace("drill ", "drill run ", 1) if operation.startswith("drill ") else operation
        )
        return {"operation": operation, "command": command, "resume": None, "running": holder}
    found = [op] if op is not None else []
    if frozen := frozen_left(env):
        nodes = ", ".join(str(d["node"]) for d in frozen)
        found.append(
            {
                "operation": "drill network",
                "command": "voke drill run network",
                "resume": "voke env up",
                "note": f"the {nodes} is still frozen (SIGSTOP) by a network drill that was killed; "
                "`voke env up`, `voke env down` or the next drill resumes it first",
                "frozen": frozen,
            }
        )
    try:
        move = interrupted_move(env)
    except PreconditionError as exc:
        found.append({"operation": "unreadable", "resume": exc.message})
    else:
        if move is not None:
            found.append(
                {
                    "operation": "env move-port",
                    "command": f"voke env move-port {move['node']}",
                    "resume": f"voke env move-port {move['node']} --yes",
                    "note": f"{move['node']} was moving from port {move['old_port']} to {move['port']}",
                }
            )
    if left := drill_rows_left(env):
        batches = ", ".join(str(d.get("batch_id")) for d in left)
        found.append(
            {
                "operation": "drill pitr",
                "command": "voke drill run pitr",
                "resume": "voke drill run pitr --yes",
                "note": f"it first puts back the rows of batch {batches}, deleted as the fault of a pitr "
                "drill that was killed",
            }
        )
    if cut := [r["name"] for r in list_restores(env) if r.get("state") == "interrupted"]:
        found.append(
            {
                "operation": "restore",
                "command": "voke dr restore",
                "resume": f"voke dr discard {cut[0]} --yes",
                "note": f"its voke stopped before restored instance {', '.join(cut)} was verified",
            }
        )
    if holder is None and (orphan := env.orphan_backup()):  # backups run under the lock
        streaming = (
            f"; its pg_basebackup still streams WAL into it (walsender pid "
            f"{', '.join(map(str, orphan['walsender_pids']))} on the leader)"
            if orphan["walsender_pids"]
            else ""
        )
        found.append(
            {
                "operation": "backup",
                "command": "voke dr backup",
                "resume": "voke dr backup --yes",
                "note": f"its voke was killed: {', '.join(orphan['partial'])} ({orphan['size_bytes'] / 1e6:.0f} MB) is left{streaming}; "
                "the next backup ends that stream and removes the partial copy",
                "orphan_backup": orphan,
            }
        )
    if len(found) > 1:
        return dict(found[0], also=found[1:])
    return found[0] if found else None


def operation_notice(env: LocalEnvironment) -> str | None:
    """One line naming each unfinished operation `operation_to_report` finds, and how to finish it."""
    op = operation_to_report(env)
    if op is None:
        return None
    if op.get("running"):
        return f"a DR operation is running ({op['running']}); `voke dr status` shows where it is"
    return "; ".join(_notice(each) for each in (op, *op.get("also", ())))


def _notice(op: Mapping[str, Any]) -> str:
    if op.get("operation") == "unreadable":
        return str(op.get("resume"))
    command = op.get("command") or f"voke dr {op.get('operation')}"
    note = f" ({op['note']})" if op.get("note") else ""
    return f"an interrupted `{command}` is recorded; finish it with `{op.get('resume')}`{note}"


DRILL_ROWS = "drill-rows-*.json"  # a pitr drill's record of the rows it keeps aside (VOKE_HOME/dr)


def drill_rows_left(env: LocalEnvironment) -> list[dict[str, Any]]:
    """The records of rows a pitr drill kept aside before deleting them as its fault, whose
    drill is gone (kill -9, a power cut) without putting them back; each with its "record"
    path. The drill holds a lock on its copy of the rows while it runs: a copy locked is a
    drill under way (this process's included), whatever its pid has become."""
    out = []
    for record in sorted((env.home / "dr").glob(DRILL_ROWS)):
        try:
            doc = dict(read_record(record, _not_a_rows_record))
        except FileNotFoundError:  # put back meanwhile
            continue
        except (OSError, DamagedRecord) as exc:  # (written by a rename: damaged by hand only)
            log.warning("%s is left as it is, unreadable: %s", record, exc)
            continue
        if rows_in_use(record.with_name(doc["file"])):
            continue
        doc["record"] = str(record)
        out.append(doc)
    return out


def _not_a_rows_record(doc: Any) -> str | None:
    fields = {"run_id": str, "batch_id": int, "dbname": str, "rows": int, "file": str}
    if not isinstance(doc, dict) or any(type(doc.get(k)) is not t for k, t in fields.items()):
        return "not a record of a pitr drill's rows (run_id, batch_id, dbname, rows, file)"
    if Path(doc["file"]).name != doc["file"] or not doc["file"].startswith("drill-rows-"):
        return f"its rows file {doc['file']!r} is not a copy of this directory"
    return None


def rows_in_use(path: Path) -> bool:
    """Whether a live drill holds PATH (its copy of the rows it deleted); False if it is gone."""
    from voketag_ops.locks import held_by

    return held_by(path) is not None


def refuse_if_unfinished(env: LocalEnvironment, *, allow: str | None = None) -> dict[str, Any] | None:
    """PreconditionError (exit 5, naming the command that resumes it) while an interrupted DR
    operation other than ALLOW is recorded: the topology is half changed under it. Returns
    the record of an unfinished ALLOW, if any."""
    existing = unfinished_operation(env)
    if existing and existing.get("operation") != allow:
        refuse_unfinished(env, existing)
    return existing


def refuse_if_running(env: LocalEnvironment) -> None:
    """PreconditionError (exit 5) while another process holds the DR lock, as `dr_lock` refuses,
    or runs a backup (which holds it shared, as `dr_lock` refuses an exclusive hold beside it; a
    probe: it never waits for the lock, nor takes it)."""
    from voketag_ops.locks import LockHeld, dr_work_elsewhere

    holder = dr_work_elsewhere(env.home / "dr")
    if holder is not None:
        raise LockHeld(holder)


def refuse_if_busy(env: LocalEnvironment, *, allow: str | None = None) -> dict[str, Any] | None:
    """What a dry run checks where its command takes the DR lock and calls `refuse_if_unfinished`:
    `refuse_if_running`, then `refuse_if_unfinished(env, allow=ALLOW)`."""
    refuse_if_running(env)
    return refuse_if_unfinished(env, allow=allow)


def refuse_unfinished(env: LocalEnvironment, pending: dict[str, Any]) -> None:
    """PreconditionError for PENDING: running now (a drill's failback holds the DR lock), or
    interrupted and to be resumed with its command."""
    refuse_if_running(env)
    raise PreconditionError(
        f"an interrupted `voke dr {pending.get('operation')}` must be finished first: {pending.get('resume')}"
    )


class OperationLog:
    """VOKE_HOME/dr/operation.json: what an interruptible operation has done so far."""

    def __init__(self, env: LocalEnvironment, operation: str, resume: str) -> None:
        self.path = dr_dir(env) / "operation.json"
        self.operation = operation
        existing = refuse_if_unfinished(env, allow=operation)
        self.doc: dict[str, Any] = existing or {
            "operation": operation,
            "started_at": iso(utcnow()),
            "resume": resume,
            "done": [],
        }
        self.resumed = existing is not None
        self._save()

    def done(self, step: str) -> bool:
        return step in self.doc["done"]

    def mark(self, step: str, **detail: Any) -> None:
        if step not in self.doc["done"]:
            self.doc["done"].append(step)
        if detail:
            self.doc.setdefault("detail", {})[step] = detail
        self._save()

    def finish(self) -> None:
        self.path.unlink(missing_ok=True)

    def _save(self) -> None:
        replace_json(self.path, self.doc)  # the record of what was done must survive a crash


def _chown_to_server(env: LocalEnvironment, path: Path) -> None:
    """PATH, a directory voke just made in the server user's, given to that user: a link put in
    its place meanwhile is given instead, never the link's target."""
    if (owner := env.server_user(env.require_state()).owner) is not None:
        os.chown(path, *owner, follow_symlinks=False)


# -- nodes -------------------------------------------------------------------------------------
def query_one(node: PgNode, sql: str, params: tuple[Any, ...] = (), *, timeout: float = 3) -> Any:
    import psycopg

    try:
        with node.connect(DR_DB, timeout=timeout) as conn:
            return conn.execute(sql, params).fetchone()
    except psycopg.OperationalError as exc:  # connected, then the server went away (a restore that stops)
        # A full disk is the server's answer (DiskFull is an OperationalError), not a lost connection.
        if full := server_disk_full(exc):
            raise BackendError(f"the {node.name} on port {node.port} refused the query: {full}") from None
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise BackendError(f"the {node.name} on port {node.port} closed the connection: {first}") from None


def in_recovery(node: PgNode) -> bool | None:
    """True on a standby, False on a writable primary, None when unreachable."""
    if not node.running:
        return None
    try:
        return bool(query_one(node, "select pg_is_in_recovery()")[0])
    except BackendError:
        return None


def ensure_schema(conn: psycopg.Connection[Any]) -> None:
    import psycopg

    for statement in _SCHEMA_SQL:
        # another session may create the same object concurrently
        with suppress(psycopg.errors.UniqueViolation, psycopg.errors.DuplicateObject):
            conn.execute(statement)


def kill_node(node: PgNode, *, timeout: float = 30) -> bool:
    """SIGKILL a postmaster and its children (works on a frozen server too)."""
    pids = node_pids(node)
    if not pids:
        return False
    signal_each(pids, signal.SIGKILL)
    wait_until(lambda: not node.running, f"{node.name} to die", timeout=timeout)
    return True


def _start_time(pid: int) -> int | None:
    """When PID started (/proc/PID/stat field 22, clock ticks since boot), None if it is gone:
    a pid the kernel gave to another process since reads differently."""
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19])
    except (OSError, IndexError, ValueError):
        return None


def freeze_node(env: LocalEnvironment, node: PgNode, *, by: str) -> list[int]:
    """SIGSTOP a server and every process of it: it stops answering, as behind a partition; BY:
    the drill run that does it.

    Its pids (with their start times) are recorded first in VOKE_HOME/dr/frozen-NODE.json: a
    drill killed outright (kill -9) leaves the node frozen, which `dr check` then names and
    `env up`, `env down`, `env destroy` and the next drill undo first (``thaw_left``)."""
    pids = node_pids(node)
    if not pids:
        raise PreconditionError(f"{node.name} is not running")
    doc = {
        "node": node.name,
        "by": by,
        "frozen_at": iso(utcnow()),
        "pids": [{"pid": p, "start": _start_time(p)} for p in pids],
    }
    replace_json(dr_dir(env) / f"frozen-{node.name}.json", doc)  # before the first SIGSTOP
    signal_each(pids, signal.SIGSTOP)
    return pids


def thaw(env: LocalEnvironment, node: str) -> list[int]:
    """SIGCONT every process `freeze_node` froze on NODE that is still the same process (its
    start time as recorded: a reused pid is left alone), then forget the record; the pids resumed."""
    marker = env.home / "dr" / f"frozen-{node}.json"
    try:
        recorded = [(p["pid"], p["start"]) for p in read_record(marker, _not_a_freeze)["pids"]]
    except FileNotFoundError:
        return []
    except (NotADirectoryError, DamagedRecord):  # (written by a rename: damaged by hand only)
        recorded = []
    resumed = []
    for pid, start in recorded:
        if start is not None and _start_time(pid) == start:
            with suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)
                resumed.append(pid)
    marker.unlink(missing_ok=True)
    return resumed


def _not_a_freeze(doc: Any) -> str | None:
    pids = doc.get("pids") if isinstance(doc, dict) else None
    if not isinstance(pids, list) or not all(
        isinstance(p, dict) and type(p.get("pid")) is int and type(p.get("start")) in (int, type(None))
        for p in pids
    ):
        return "not a record of frozen processes (pids with their start times)"
    return None


def frozen_left(env: LocalEnvironment) -> list[dict[str, Any]]:
    """The records of nodes a drill froze and did not resume, while no other voke holds the DR
    lock (a drill under way holds it the whole time: its freeze is not left behind)."""
    from voketag_ops.locks import running_elsewhere

    directory = env.home / "dr"
    if running_elsewhere(directory) is not None:
        return []
    out = []
    for record in sorted(directory.glob(FROZEN)):
        try:
            doc = dict(read_record(record, _not_a_freeze))
        except (OSError, DamagedRecord):
            doc = {}
        doc.setdefault("node", record.stem.removeprefix("frozen-"))
        out.append(doc)
    return out


def thaw_left(env: LocalEnvironment, progress: Progress = _noop) -> list[dict[str, Any]]:
    """Resume the nodes killed drills left frozen (`frozen_left`); what was resumed."""
    done = []
    for doc in frozen_left(env):
        node = str(doc["node"])
        progress(
            f"resuming the {node} (SIGCONT), left frozen by the killed drill {doc.get('by') or ''}".rstrip()
        )
        done.append({"node": node, "by": doc.get("by"), "resumed_pids": thaw(env, node)})
    return done


def current_timeline(node: PgNode) -> int | None:
    """The timeline a node writes (primary) or receives (standby)."""
    try:
        row = query_one(node, f"select {TIMELINE_SQL}")
    except BackendError:
        return None
    return int(row[0]) if row and row[0] is not None else None


def probe_write(node: PgNode, *, timeout: float = 3) -> bool:
    """A write only a primary can do: assigning a transaction id."""
    try:
        query_one(node, "select txid_current()", timeout=timeout)
        return True
    except BackendError:
        return False
    except Exception as exc:  # psycopg errors: read-only, shutting down
        log.debug("write probe on %s failed: %s", node.name, exc)
        return False


# -- heartbeat and lag --------------------------------------------------------------------------
def write_heartbeat(leader: PgNode) -> tuple[int, datetime]:
    """Bump the heartbeat on LEADER: (seq, written_at). BackendError when it cannot be reached;
    a psycopg.Error when, reached, it refuses the write (`write_refused` says why: a full disk)."""
    with leader.connect(DR_DB, timeout=3) as conn:
        ensure_schema(conn)
        row = conn.execute(
            "insert into voke_dr.heartbeat (id, seq, written_at) values (1, 1, clock_timestamp()) "
            "on conflict (id) do update set seq = voke_dr.heartbeat.seq + 1, written_at = clock_timestamp() "
            "returning seq, written_at"
        ).fetchone()
    assert row is not None
    return int(row[0]), row[1]


def write_refused(exc: Exception) -> str:
    """Why a server refused a write, from its error EXC: a full disk named as such (with the
    server's message), otherwise the message's first line."""
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return server_disk_full(exc) or first


def probe_heartbeat(leader: PgNode) -> dict[str, Any]:
    """Write a heartbeat on LEADER, the status's proof that it takes writes: `heartbeat_seq` and
    `heartbeat_at`, or `heartbeat_error` saying why the write was refused (its disk full: a
    primary that cannot write is not writable, whatever its role). Nothing when it cannot be
    reached (its role says so)."""
    import psycopg

    try:
        seq, written_at = write_heartbeat(leader)
    except BackendError:
        return {}
    except psycopg.Error as exc:  # reached, and the write refused
        return {"heartbeat_error": write_refused(exc)}
    return {"heartbeat_seq": seq, "heartbeat_at": written_at}


def probe_lag(leader: PgNode, standby: PgNode, *, wait: float) -> dict[str, Any]:
    """Byte lag from pg_stat_replication; seconds = how long the standby takes to replay a fresh heartbeat.

    If it does not replay it within WAIT, the lag is the age of the newest transaction
    it has replayed (the primary had the heartbeat to send, so it is at least WAIT). The
    heartbeat is written whether the standby runs or not (`probe_heartbeat`): a leader that
    refuses it (its disk full) leaves the lag unknown and says why in `heartbeat_error`. No
    psycopg error gets out: a probe that fails is an answer, not a crash.
    """
    import psycopg

    result: dict[str, Any] = {
        "lag_bytes": None,
        "lag_seconds": None,
        "streaming": False,
        "heartbeat_seq": None,
        "heartbeat_replayed": None,
    }
    try:
        row = query_one(
            leader,
            "select pg_wal_lsn_diff(pg_current_wal_lsn(), replay_lsn)::bigint, state "
            f"from pg_stat_replication where {STANDBY_STREAMS} "
            "order by backend_start desc limit 1",
        )
    except (BackendError, psycopg.Error):
        return result
    if row is not None:
        result["lag_bytes"] = int(row[0] or 0)
        result["streaming"] = row[1] == "streaming"
    beat = probe_heartbeat(leader)
    if "heartbeat_error" in beat:
        result["heartbeat_error"] = beat["heartbeat_error"]
    if not standby.running:
        result["answering"] = False
        return result
    if "heartbeat_seq" not in beat:
        return result
    seq, written_at = beat["heartbeat_seq"], beat["heartbeat_at"]
    result["heartbeat_seq"] = seq
    deadline = time.monotonic() + wait
    try:
        with standby.connect(DR_DB, timeout=3) as conn:
            while True:
                replayed = _standby_heartbeat(conn)
                if replayed is not None and replayed[0] >= seq:
                    result["lag_seconds"] = round(max(0.0, (utcnow() - written_at).total_seconds()), 3)
                    result["heartbeat_replayed"] = True
                    return result
                if time.monotonic() >= deadline:
                    break
                time.sleep(0.02)
            last = conn.execute("select pg_last_xact_replay_timestamp()").fetchone()
    except (BackendError, psycopg.Error):  # frozen or gone: the leader may list it as streaming a while yet
        result["answering"] = False
        return result
    result["heartbeat_replayed"] = False
    if not result["streaming"]:  # not replaying the leader's WAL (a promoted node, say): no lag to tell
        return result
    newest = max(
        [t for t in (last[0] if last else None, replayed[1] if replayed else None) if t is not None],
        default=None,
    )
    age = (utcnow() - newest).total_seconds() if newest else wait
    result["lag_seconds"] = round(max(age, wait), 3)
    return result


def _standby_heartbeat(conn: psycopg.Connection[Any]) -> tuple[int, datetime] | None:
    import psycopg

    try:
        row = conn.execute("select seq, written_at from voke_dr.heartbeat where id = 1").fetchone()
    except psycopg.errors.UndefinedTable:
        return None
    except psycopg.Error as exc:  # e.g. replay conflicts
        log.debug("heartbeat read failed: %s", exc)
        return None
    return (int(row[0]), row[1]) if row else None


# -- the WAL archive --------------------------------------------------------------------------------
@dataclass(frozen=True)
class LeaderWal:
    """What the leader says about its WAL (None fields when it is unreachable; the segment size is
    then the one the environment's clusters were created with)."""

    reachable: bool
    segment_size: int
    timeline: int | None = None
    current_segno: int | None = None
    current_lsn: str | None = None
    pending: tuple[str, ...] = ()
    oldest_pending_seconds: float | None = None


def leader_wal(env: LocalEnvironment, leader: PgNode | None) -> LeaderWal:
    import psycopg

    def down() -> LeaderWal:  # (the size the clusters were made with: no server to ask)
        return LeaderWal(False, env.require_state().wal_segment_size)

    if leader is None or not leader.running:
        return down()
    try:
        with leader.connect(DR_DB, timeout=3) as conn:
            row = conn.execute(
                "select pg_is_in_recovery(), (select setting from pg_settings where name = 'wal_segment_size')"
            ).fetchone()
            assert row is not None
            if row[0]:
                return down()
            seg_size = int(row[1])
            name, lsn = conn.execute(
                "select pg_walfile_name(pg_current_wal_lsn()), pg_current_wal_lsn()::text"
            ).fetchone()  # type: ignore[misc]
            pend = conn.execute(
                "select name, extract(epoch from now() - modification)::float8 "
                "from pg_ls_archive_statusdir() where name like '%.ready' order by modification"
            ).fetchall()
    except (BackendError, psycopg.Error):  # (connected, then the server went away or refused)
        return down()
    # The segment being written holds the write position: at a segment boundary (right after a
    # switch) pg_walfile_name() names the one before up to PostgreSQL 16, which would leave the
    # finished segment (a seal's heartbeat) out of every window; only its timeline is taken.
    tli = wal.parse_segment_name(name, seg_size)[0]
    segno = wal.segno_of(wal.parse_lsn(lsn), seg_size)
    pending = tuple(p[0].removesuffix(".ready") for p in pend)
    return LeaderWal(
        True,
        seg_size,
        timeline=tli,
        current_segno=segno,
        current_lsn=lsn,
        pending=pending,
        oldest_pending_seconds=round(float(pend[0][1]), 3) if pend else None,
    )


def archived_names(env: LocalEnvironment, segment_size: int | None = None) -> set[str]:
    """The names in the WAL archive; with SEGMENT_SIZE, less the segments of another size
    (`damaged_segments`): recovery would stop at one, so for gaps and windows it is missing."""
    sizes = _archive_sizes(env)
    damaged = damaged_segments(sizes, segment_size) if segment_size else {}
    return {name for name in sizes if name not in damaged}


def damaged_segments(sizes: dict[str, int], segment_size: int) -> dict[str, int]:
    """The archived segments (name -> bytes) whose size is not SEGMENT_SIZE: cut short or padded
    by something other than voke's archive_command, which copies to a temporary name and renames."""
    return {n: size for n, size in sizes.items() if wal.SEGMENT_NAME.match(n) and size != segment_size}


def _archive_sizes(env: LocalEnvironment) -> dict[str, int]:
    sizes = {}
    try:
        with os.scandir(env.archive_dir) as entries:
            for entry in entries:
                with suppress(FileNotFoundError):  # removed meanwhile (a quarantine, a discard)
                    sizes[entry.name] = entry.stat().st_size
    except FileNotFoundError:
        pass
    return sizes


def history_of(env: LocalEnvironment, timeline: int, names: set[str] | None = None) -> list[tuple[int, int]]:
    if timeline <= 1:
        return []
    path = env.archive_dir / f"{timeline:08X}.history"
    try:
        return wal.parse_history(path.read_text())
    except FileNotFoundError:
        raise BackendError(f"timeline {timeline} has no history file in the archive ({path})") from None


def newest_timeline(env: LocalEnvironment, names: set[str]) -> int:
    tlis = [int(m.group(1), 16) for n in names if (m := wal.HISTORY_NAME.match(n))]
    tlis += [int(n[:8], 16) for n in names if wal.SEGMENT_NAME.match(n)]
    return max(tlis, default=1)


def gaps_from(env: LocalEnvironment, backup: BackupInfo, lw: LeaderWal) -> wal.ArchiveGaps | None:
    """Archive gaps between BACKUP and now on the current timeline; None if BACKUP is on another branch."""
    names = archived_names(env, lw.segment_size)
    tli = lw.timeline or newest_timeline(env, names)
    found = gaps_from_each(env, [backup], lw, wal.ArchiveIndex.of(names, lw.segment_size), timeline=tli)
    return found[0][1] if found else None


def gaps_from_each(
    env: LocalEnvironment,
    backups: list[BackupInfo],
    lw: LeaderWal,
    archive: wal.ArchiveIndex,
    *,
    timeline: int,
    end_segno: int | None = None,
) -> list[tuple[BackupInfo, wal.ArchiveGaps]]:
    """Each of BACKUPS on TIMELINE's history (those of another branch left out, order kept) with
    its archive gaps up to now, or to END_SEGNO; the archive is walked once for all of them."""
    path = wal.timeline_path(timeline, history_of(env, timeline))
    on_path = [(b, wal.parse_lsn(b.start_lsn)) for b in backups if _on_path(b, path)]  # (backup, start LSN)
    current = end_segno + 1 if end_segno is not None else lw.current_segno if lw.reachable else None
    gaps = wal.find_gaps_each(
        path=path,
        start_segnos=[wal.segno_of(start, lw.segment_size) for _, start in on_path],
        archived=archive,
        current_segno=current,
        pending=lw.pending,
        segment_size=lw.segment_size,
    )
    return [(b, g) for (b, _), g in zip(on_path, gaps, strict=True)]


def _on_path(backup: BackupInfo, path: Sequence[wal.TimelineSpan]) -> bool:
    """Whether BACKUP started on PATH, a timeline's history (`wal.timeline_path`)."""
    start = wal.parse_lsn(backup.start_lsn)
    return any(
        s.timeline == backup.timeline and s.begin <= start and (s.end is None or start < s.end) for s in path
    )


_COMMIT_SEARCH_SEGMENTS = 64  # segments searched back for the newest archived commit (each a pg_waldump)
_COMMIT = re.compile(r"desc: (?:COMMIT|ABORT) (\d{4}-\d\d-\d\d \d\d:\d\d:\d\d(?:\.\d+)?) (UTC|[+-]\d\d)")


def last_commit_time(env: LocalEnvironment, segments: Sequence[str]) -> datetime | None:
    """The newest commit (or abort) timestamp in the last of SEGMENTS that has one (newest last)."""
    state = env.require_state()
    runner = env._runner(state)
    for name in reversed(segments):
        if not (env.archive_dir / name).exists():
            return None
        result = runner.run("pg_waldump", ["-p", str(env.archive_dir), name, name], check=False, timeout=60)
        stamps = _COMMIT.findall(result.stdout)
        if stamps:
            return wal.waldump_time(*stamps[-1])
    return None


def unreadable_wal(
    env: LocalEnvironment, segments: Sequence[str], segment_size: int
) -> dict[str, Any] | None:
    """The first of SEGMENTS (a recovery's path through the archive, oldest first) holding a record
    pg_waldump cannot read (a bad CRC, a broken prev-link), with its error; None when all read.

    Names alone pass a segment whose contents a restore then stops at ("recovery ended before
    configured recovery target was reached"). One pg_waldump -q per timeline: it reads every
    record and checks its CRC, as replay does.
    """
    state = env.require_state()
    runner = env._runner(state)
    for run in wal.timeline_runs(segments):
        result = runner.run(
            "pg_waldump", ["-q", "-p", str(env.archive_dir), run[0], run[-1]], check=False, timeout=3600
        )
        if result.returncode == 0:
            continue
        lines = tool_errors(result.stderr)
        error = lines[0] if lines else (result.stderr.strip() or f"pg_waldump exited {result.returncode}")
        return {"segment": wal.segment_of_error(error, run, segment_size), "error": error}
    return None


@dataclass(frozen=True)
class Range:
    """A recoverable range: any instant in [earliest, latest) restores from BACKUP (the oldest
    of the backups whose WAL reaches it; NEWEST_BACKUP the newest), replaying no further than
    LAST_SEGMENT, the last before MISSING, the lost segment that ends it. An earlier range
    (`Window.earlier`) is cut off from the window by that gap; its LATEST is the newest commit
    before it (a restore stops at the first commit after its target)."""

    earliest: datetime
    latest: datetime
    backup: str
    newest_backup: str
    last_segment: str | None
    missing: str | None

    def as_dict(self) -> dict[str, Any]:
        return {
            "earliest": iso(self.earliest),
            "latest": iso(self.latest),
            "seconds": round((self.latest - self.earliest).total_seconds(), 3),
            "backup": self.backup,
            "newest_backup": self.newest_backup,
            "missing": self.missing,
        }

    def describe(self) -> str:
        lost = f"; {self.missing} lost after it" if self.missing else ""
        return f"{iso(self.earliest)} .. {iso(self.latest)} (from {self.backup}{lost})"


@dataclass(frozen=True)
class Window:
    """The recoverable window: any instant in [earliest, latest) can be restored.

    LATEST is now while the leader is up and its archive has no gap (a restore first
    commits a heartbeat and switches WAL); LATEST_ARCHIVED is the newest commit in the
    archive alone, which is what is left if the leader's disk is lost right now. EARLIER
    are the ranges older backups still restore up to an archive gap, oldest first.
    """

    earliest: datetime | None
    latest: datetime | None
    latest_archived: datetime | None
    earliest_backup: str | None
    newest_backup: str | None
    gaps: wal.ArchiveGaps | None
    timeline: int | None
    live: bool = False
    gaps_backup: str | None = None  # the backup GAPS were measured from (else newest_backup)
    earlier: tuple[Range, ...] = ()

    @property
    def seconds(self) -> float | None:
        if self.earliest is None or self.latest is None or self.latest <= self.earliest:
            return None
        return round((self.latest - self.earliest).total_seconds(), 3)

    def as_dict(self) -> dict[str, Any]:
        behind = None
        if self.live and self.latest and self.latest_archived:
            behind = round(max(0.0, (self.latest - self.latest_archived).total_seconds()), 3)
        return {
            "earliest": iso(self.earliest),
            "latest": iso(self.latest),
            "seconds": self.seconds,
            "latest_archived": iso(self.latest_archived),
            "archive_behind_seconds": behind,
            "live": self.live,
            "earliest_backup": self.earliest_backup,
            "newest_backup": self.newest_backup,
            "timeline": self.timeline,
        }

    def ranges(self) -> list[dict[str, Any]]:
        """Every recoverable range, oldest first: the earlier ones, then this window (when any)."""
        found = list(self.earlier)
        if self.seconds is not None:
            assert self.earliest and self.latest and self.earliest_backup and self.newest_backup
            last = self.gaps.last_contiguous if self.gaps else None
            missing = self.gaps.missing[0] if self.gaps and self.gaps.missing and not self.live else None
            found.append(
                Range(self.earliest, self.latest, self.earliest_backup, self.newest_backup, last, missing)
            )
        return [r.as_dict() for r in found]


def recoverable_window(
    env: LocalEnvironment,
    lw: LeaderWal,
    backups: list[BackupInfo] | None = None,
    *,
    now: datetime | None = None,
) -> Window:
    """Oldest backup with a gap-free chain .. now (leader up) or the newest archived commit; the
    older backups cut off from it by a gap give the earlier ranges (`Window.earlier`)."""
    backups = env.backups() if backups is None else backups
    names = archived_names(env, lw.segment_size)
    archive = wal.ArchiveIndex.of(names, lw.segment_size)  # parsed once for every backup below
    tli = lw.timeline or newest_timeline(env, names)
    usable = gaps_from_each(env, backups, lw, archive, timeline=tli)
    if not usable:
        return Window(None, None, None, None, None, None, tli)
    newest, newest_gaps = usable[-1]
    # The newest backup whose own WAL reached the archive: one taken while archiving failed has
    # none there, and an older one still restores up to the newest archived commit.
    ref, ref_gaps = next(((b, g) for b, g in reversed(usable) if g.last_contiguous is not None), usable[-1])
    latest_archived = None
    if ref_gaps.last_contiguous is not None:
        latest_archived = last_commit_time(env, ref_gaps.contiguous_tail)
        if latest_archived is None:
            # No commit since (a backup taken just before the leader was lost): the newest one is
            # further back, reachable from an older backup.
            tail = set(ref_gaps.contiguous_tail)
            near_end = usable[0][1].reachable[-(_COMMIT_SEARCH_SEGMENTS + len(tail)) :]
            older = [n for n in near_end if n not in tail][-_COMMIT_SEARCH_SEGMENTS:]
            latest_archived = last_commit_time(env, older)
    latest: datetime | None
    gaps, gaps_backup = newest_gaps, newest  # what bounds the window (and a restore's replay)
    if lw.reachable and newest_gaps.ok:
        live = True
        latest = now or utcnow()
        judged = usable
    else:
        live = False
        latest = latest_archived
        if ref_gaps.last_contiguous is None:
            return Window(None, None, None, None, newest.label, newest_gaps, tli)
        gaps, gaps_backup = ref_gaps, ref
        last_segno = wal.parse_segment_name(ref_gaps.last_contiguous, lw.segment_size)[1]
        judged = gaps_from_each(env, [b for b, _ in usable], lw, archive, timeline=tli, end_segno=last_segno)
    chain = [b for b, g in judged if g.ok]
    earliest_backup = chain[0] if chain else newest
    return Window(
        earliest=parse_iso(earliest_backup.finished_at),
        latest=latest,
        latest_archived=latest_archived,
        earliest_backup=earliest_backup.label,
        newest_backup=newest.label,
        gaps=gaps,
        timeline=tli,
        live=live,
        gaps_backup=gaps_backup.label,
        earlier=earlier_ranges(env, [(b, g) for b, g in judged if not g.ok]),
    )


def earlier_ranges(
    env: LocalEnvironment, cut_off: list[tuple[BackupInfo, wal.ArchiveGaps]]
) -> tuple[Range, ...]:
    """What the backups in CUT_OFF (oldest first, each with a gap before the window) still restore.

    Those whose WAL reaches the same last segment before a gap form one range, from the oldest's
    finish to the newest commit archived before the gap; PostgreSQL replays such a backup up to a
    target there without reading past the gap. One `pg_waldump` per range (usually one segment).
    """
    groups: dict[str, list[tuple[BackupInfo, wal.ArchiveGaps]]] = {}
    for backup, gaps in cut_off:
        if gaps.last_contiguous is not None:  # (its own first segment is lost: it restores nothing)
            groups.setdefault(gaps.last_contiguous, []).append((backup, gaps))
    ranges = []
    for last, members in groups.items():
        (oldest, gaps), newest = members[0], members[-1][0]
        earliest = parse_iso(oldest.finished_at)
        latest = last_commit_time(env, gaps.reachable[-_COMMIT_SEARCH_SEGMENTS:])
        if earliest is not None and latest is not None and earliest < latest:
            missing = gaps.missing[0] if gaps.missing else None
            ranges.append(Range(earliest, latest, oldest.label, newest.label, last, missing))
    return tuple(ranges)


def seal_archive(env: LocalEnvironment, leader: PgNode, *, timeout: float = 60) -> datetime:
    """Commit a heartbeat, switch WAL and wait until that segment is archived.

    Afterwards every instant before the heartbeat's commit is reachable from the archive
    alone (a restore stops at the first commit after its target, so one must exist).
    """
    import psycopg

    try:
        _, committed_at = write_heartbeat(leader)
    except psycopg.Error as exc:
        raise BackendError(
            f"the {leader.name} refused the heartbeat that seals the WAL archive: {write_refused(exc)}"
        ) from None
    name, lsn, seg_size, _ = query_one(
        leader,
        "select pg_walfile_name(pg_current_wal_lsn()), pg_current_wal_lsn()::text, "
        "(select setting::bigint from pg_settings where name = 'wal_segment_size'), pg_switch_wal()",
    )
    # The segment holding the heartbeat's last byte; pg_walfile_name() is one off at a segment
    # boundary, backwards up to PostgreSQL 16 and forwards from 17 (not archived until more WAL).
    tli = wal.parse_segment_name(name, seg_size)[0]
    name = wal.segment_name(tli, wal.segno_of(wal.parse_lsn(lsn) - 1, seg_size), seg_size)
    wait_until(
        lambda: (env.archive_dir / name).exists(), f"WAL segment {name} to be archived", timeout=timeout
    )
    return committed_at


# -- status ----------------------------------------------------------------------------------------
# What `dr check` says to run about a node that does not run while a failover is cut short past
# its fence (`node_trouble` says FAILOVER_RESUME): `env up` refuses to start anything until then.
FINISH_FAILOVER = f"finish the failover with `{FAILOVER_RESUME}`"


def leader_trouble(
    node: dict[str, Any], *, fenced: set[str], pending: Mapping[str, Any] | None, standby: bool
) -> tuple[str, str]:
    """What `dr check` says of the leader NODE (as `node_status` reports it) that does not run,
    and what to run: `doctor`'s words (`node_trouble`: a frozen one's pids and `kill -CONT`),
    its bare commands told as steps. One `voke env up` brings back may, with a STANDBY, be
    failed over from instead, as the regional-failure runbook decides (not a stopped one,
    SIGSTOP: the network-outage runbook waits for it)."""
    said, fix = node_trouble("primary", node, fenced=fenced, pending=pending)
    if fix == FAILOVER_RESUME:
        return said, FINISH_FAILOVER
    if fix == "voke env up":
        return said, "bring it back with `voke env up`" + (
            f", or, if it cannot be brought back within the RTO, fail over with `{FAILOVER_RESUME}` "
            "(`voke dr runbook show regional-failure`)"
            if standby
            else ""
        )
    return said, fix  # (a frozen one's resume_hint)


def snapshot(env: LocalEnvironment, *, lag_wait: float, replica_expected: bool = True) -> dict[str, Any]:
    """Everything `dr status` shows and `dr check` judges. Never starts or stops anything."""
    base = env.status()
    report: dict[str, Any] = {
        "environment": "local",
        "home": str(env.home),
        "initialized": base["initialized"],
        "checked_at": iso(utcnow()),
    }
    if not base["initialized"]:
        report.update(
            leader=None,
            standby=None,
            split_brain=False,
            writable_nodes=[],
            archive=None,
            newest_backup=None,
            backups=0,
            recoverable_window=None,
            recoverable_ranges=[],
            archive_gaps=None,
            unfinished_operation=operation_to_report(env),
        )
        return report
    state = env.require_state()
    leader_node, standby_node = env.node(state.leader, state), env.node(state.follower, state)
    # (`pid` with `running` false and an `error`: a process that does not answer, frozen or cut off)
    keys = ("name", "role", "running", "port", "timeline", "pid", "error")
    leader_info = {k: base["primary"].get(k) for k in keys}
    standby_info = {k: base["replica"].get(k) for k in keys}
    writable = [info["name"] for info in (base["primary"], base["replica"]) if info["role"] == "primary"]
    # a stopped standby without standby.signal would start writable: `dr check` says to rebuild it
    standby_info["standby_signal"] = (standby_node.data_dir / "standby.signal").exists()
    fenced, pending = env.fenced(), operation_to_report(env)
    if not base["primary"]["running"]:  # `dr check` says of it what `doctor` says, and what to run
        leader_info["trouble"], leader_info["remedy"] = leader_trouble(
            base["primary"], fenced=fenced, pending=pending, standby=replica_expected
        )
    if not base["replica"]["running"]:  # and of a standby a failover cut short past its fence left down
        _, fix = node_trouble("replica", base["replica"], fenced=fenced, pending=pending)
        if fix == FAILOVER_RESUME:  # not `voke env up` (it refuses) nor a failback (it waits)
            standby_info["remedy"] = FINISH_FAILOVER
    report["leader"] = leader_info
    report["standby"] = standby_info
    report["writable_nodes"] = writable
    report["split_brain"] = len(writable) > 1
    if report["split_brain"]:
        report["split_brain_detail"] = {
            info["name"]: {"timeline": info["timeline"], "port": info["port"]}
            for info in (leader_info, standby_info)
            if info["role"] == "primary"
        }
    lw = leader_wal(env, leader_node if leader_info["role"] == "primary" else None)
    refused = None  # why a leader refused the heartbeat (a full disk): `dr check` fails it
    if lw.reachable and replica_expected:
        standby_info.update(probe_lag(leader_node, standby_node, wait=lag_wait))
        refused = standby_info.pop("heartbeat_error", None)
    else:
        standby_info.update(lag_bytes=None, lag_seconds=None, streaming=False)
        if lw.reachable:
            refused = probe_heartbeat(leader_node).get("heartbeat_error")
    leader_info["write_error"] = refused
    archive = dict(base.get("archive") or {"dir": str(env.archive_dir), "failing": None})
    archive["pending"] = list(lw.pending)
    archive["oldest_pending_seconds"] = lw.oldest_pending_seconds
    archive["current_wal"] = (
        wal.segment_name(lw.timeline, lw.current_segno, lw.segment_size)
        if lw.current_segno is not None and lw.timeline
        else None
    )
    report["archive"] = archive
    backups = env.backups()
    newest = backups[-1] if backups else None
    report["backups"] = len(backups)
    report["newest_backup"] = None
    if newest is not None:
        finished = parse_iso(newest.finished_at)
        report["newest_backup"] = {
            "label": newest.label,
            "finished_at": newest.finished_at,
            "age_seconds": round((utcnow() - finished).total_seconds(), 3) if finished else None,
            "size_bytes": newest.size_bytes,
            "timeline": newest.timeline,
        }
    window = recoverable_window(env, lw, backups)
    report["recoverable_window"] = window.as_dict()
    report["recoverable_ranges"] = window.ranges()
    report["archive_gaps"] = (
        {
            "from_backup": window.gaps_backup or window.newest_backup,
            "missing": window.gaps.missing,
            "pending": window.gaps.pending,
            "last_contiguous": window.gaps.last_contiguous,
            "damaged": [
                {"segment": name, "bytes": size}
                for name, size in sorted(damaged_segments(_archive_sizes(env), lw.segment_size).items())
                if name in window.gaps.missing
            ],
        }
        if window.gaps is not None
        else None
    )
    report["restores"] = [r["name"] for r in list_restores(env)]
    report["unfinished_operation"] = pending
    return report


# -- backups ---------------------------------------------------------------------------------------
def find_backup(env: LocalEnvironment, label: str | None) -> BackupInfo:
    backups = env.backups()
    if not backups:
        raise PreconditionError("there is no base backup; take one with `voke dr backup`")
    if label is None:
        return backups[-1]
    for backup in backups:
        if backup.label == label:
            return backup
    raise UsageError(f"no backup labelled {label!r} (have: {', '.join(b.label for b in backups)})")


def run_verifybackup(env: LocalEnvironment, backup: BackupInfo) -> dict[str, Any]:
    """pg_verifybackup on BACKUP: every file against the manifest's checksums, and its own WAL."""
    state = env.require_state()
    proc = env._runner(state).run(
        "pg_verifybackup", ["-i", "voke-backup.json", backup.path], check=False, timeout=3600
    )
    problems = [
        tool_message(line)
        for line in (proc.stderr + proc.stdout).splitlines()
        if line.strip() and "successfully verified" not in line
    ]
    return {"ok": proc.returncode == 0, "exit_code": proc.returncode, "problems": problems[:50]}


def verify_backup(env: LocalEnvironment, backup: BackupInfo) -> dict[str, Any]:
    """pg_verifybackup (manifest checksums, WAL inside the backup), then the archive from the backup's
    start to now: gaps along the timeline history, and every record read by pg_waldump."""
    t0 = time.monotonic()
    checked = run_verifybackup(env, backup)
    leader = env.primary()
    lw = leader_wal(env, leader)
    gaps = gaps_from(env, backup, lw)
    verified = bool(checked["ok"])
    result: dict[str, Any] = {
        "backup": backup.label,
        "path": backup.path,
        "finished_at": backup.finished_at,
        "timeline": backup.timeline,
        "start_wal": backup.start_wal,
        "pg_verifybackup": checked,
        "archive": None,
        "duration_seconds": 0.0,
    }
    if gaps is None:
        result["archive"] = {
            "ok": False,
            "missing": [],
            "message": "backup is not on the current timeline's history",
        }
    else:
        latest = None
        unreadable = unreadable_wal(env, gaps.reachable, lw.segment_size)
        if unreadable is not None:  # replay stops at its bad record: what comes before it is reachable
            upto = gaps.reachable.index(unreadable["segment"]) + 1
            latest = last_commit_time(env, gaps.reachable[max(0, upto - 8) : upto])
        elif gaps.missing and gaps.last_contiguous:
            latest = last_commit_time(env, gaps.contiguous_tail)
        result["archive"] = {
            "ok": gaps.ok and unreadable is None,
            "from": gaps.start,
            "to": gaps.end,
            "expected_segments": gaps.expected,
            "missing": gaps.missing,
            "pending": gaps.pending,
            "last_contiguous": gaps.last_contiguous,
            "unreadable": unreadable,
            "latest_reachable": iso(latest),
        }
    result["ok"] = verified and bool(result["archive"]["ok"])
    result["duration_seconds"] = round(time.monotonic() - t0, 3)
    return result


# -- retention ---------------------------------------------------------------------------------------
_PRUNED = ".pruned-"  # a backup being removed: renamed out of `backups()` first, then deleted
# What the archive's floor applies to: segments, partial segments, backup history files (not the
# timeline history files, which every later timeline's recovery reads).
_PRUNABLE_WAL = re.compile(r"^[0-9A-F]{24}(?:\.partial|\.[0-9A-F]{8}\.backup)?$")


@dataclass(frozen=True)
class PrunePlan:
    """What `dr prune` removes. Backups: those older than the newest one finished before CUTOFF
    on the current timeline's history that pg_verifybackup passes, which reaches back to the
    cutoff and is kept with all newer ones. Archived WAL: segments, partial segments and backup history files below
    WAL_FLOOR, the first segment the oldest kept backup needs, compared without the timeline as
    pg_archivecleanup does (no kept backup reads a segment before its own start, on any timeline)."""

    cutoff: datetime
    keep: list[BackupInfo]
    remove: list[BackupInfo]
    wal_floor: str | None  # None: the archive is left as it is (no backup, or one without its start)
    floor_backup: str | None  # the kept backup whose start is the floor
    segments: dict[str, int]  # archived file -> bytes
    leftovers: dict[Path, int]  # what an interrupted prune renamed aside and did not delete -> bytes
    warnings: list[str]

    @property
    def freed_bytes(self) -> int:
        return (
            sum(b.size_bytes for b in self.remove)
            + sum(self.segments.values())
            + sum(self.leftovers.values())
        )

    def as_dict(self) -> dict[str, Any]:
        """The plan, under the keys of `Pruned.as_dict` for what it would remove."""
        return {
            "cutoff": iso(self.cutoff),
            "kept_backups": [b.label for b in self.keep],
            "wal_floor": self.wal_floor,
            "floor_backup": self.floor_backup,
            "leftovers": [{"path": str(p), "size_bytes": size} for p, size in self.leftovers.items()],
            "warnings": self.warnings,
            "removed_backups": backup_summaries(self.remove),
            **_wal_summary(self.segments),
            "freed_bytes": self.freed_bytes,
            "failures": [],  # (a plan removes nothing, so nothing failed to go)
        }


def plan_keys() -> list[str]:
    """The keys of a plan's report (a prune that failed before its plan reports them empty)."""
    return list(PrunePlan(utcnow(), [], [], None, None, {}, {}, []).as_dict())


@dataclass
class Pruned:
    """What a prune removed, filled in as it goes: a prune cut short or failing reports what it did."""

    backups: list[BackupInfo] = field(default_factory=list)
    segments: dict[str, int] = field(default_factory=dict)  # archived file -> bytes
    leftover_bytes: int = 0
    failures: list[str] = field(default_factory=list)  # "path: why"

    @property
    def freed_bytes(self) -> int:
        return sum(b.size_bytes for b in self.backups) + sum(self.segments.values()) + self.leftover_bytes

    def as_dict(self) -> dict[str, Any]:
        return {
            "removed_backups": backup_summaries(self.backups),
            **_wal_summary(self.segments),
            "freed_bytes": self.freed_bytes,
            "failures": self.failures,
        }


def _wal_summary(segments: Mapping[str, int]) -> dict[str, Any]:
    names = sorted(segments, key=lambda n: n[8:])
    return {
        "removed_segments": len(names),
        "removed_segment_bytes": sum(segments.values()),
        "oldest_removed_segment": names[0] if names else None,
        "newest_removed_segment": names[-1] if names else None,
    }


def backup_summaries(backups: Sequence[BackupInfo]) -> list[dict[str, Any]]:
    return [{"label": b.label, "finished_at": b.finished_at, "size_bytes": b.size_bytes} for b in backups]


def plan_prune(env: LocalEnvironment, retention_days: float, *, now: datetime) -> PrunePlan:
    """The prune that keeps RETENTION_DAYS restorable (`PrunePlan`); reads, removes nothing."""
    env.require_state()
    backups = env.backups()
    cutoff = now - timedelta(days=retention_days)
    warnings: list[str] = []
    older = []
    for backup in backups:
        finished = parse_iso(backup.finished_at) or now  # (`backups()` lists only those with one)
        if finished > now:
            warnings.append(
                f"backup {backup.label} finished after now ({backup.finished_at}: a clock step?); kept"
            )
        elif finished < cutoff:
            older.append(backup)
    sizes = _archive_sizes(env)
    try:
        tli = newest_timeline(env, set(sizes))
        path = wal.timeline_path(tli, history_of(env, tli))
    except (BackendError, ValueError) as exc:  # a history file missing or damaged
        warnings.append(f"no backup pruned: which one reaches back to the cutoff is unknown ({exc})")
        path = []
    remove = older[: _base_index(env, older, path, warnings)]
    keep = [b for b in backups if b not in remove]
    odd = next((b for b in keep if not wal.SEGMENT_NAME.match(b.start_wal)), None)
    floor = min(keep, key=lambda b: b.start_wal[8:], default=None) if odd is None else None
    if odd is not None:
        warnings.append(f"archive kept whole: backup {odd.label} does not record its first WAL segment")
    segments = {}
    if floor is not None:
        segments = {
            name: size
            for name, size in sizes.items()
            if _PRUNABLE_WAL.match(name) and name[8:24] < floor.start_wal[8:]
        }
    aside = sorted(env.backups_dir.glob(_PRUNED + "*")) if env.backups_dir.is_dir() else []
    leftovers = {p: tree_bytes(p) for p in aside}
    return PrunePlan(
        cutoff,
        keep,
        remove,
        floor.start_wal if floor else None,
        floor.label if floor else None,
        segments,
        leftovers,
        warnings,
    )


def _base_index(
    env: LocalEnvironment, older: list[BackupInfo], path: Sequence[wal.TimelineSpan], warnings: list[str]
) -> int:
    """The index in OLDER (finished before the cutoff, oldest first) of the backup that reaches back
    to the cutoff: the newest on PATH that pg_verifybackup passes, as a restore picks its backup
    (one failing is passed over for an older one, which must then stay). 0 when none is."""
    for i in range(len(older) - 1, 0, -1):  # (index 0 removes nothing: not verified)
        if not _on_path(older[i], path):
            continue
        checked = run_verifybackup(env, older[i])
        if checked["ok"]:
            return i
        problem = checked["problems"][0] if checked["problems"] else f"exit {checked['exit_code']}"
        warnings.append(
            f"backup {older[i].label} fails pg_verifybackup ({problem}): kept, with the older ones a restore falls back on"
        )
    return 0


def prune(env: LocalEnvironment, plan: PrunePlan, done: Pruned, progress: Progress = _noop) -> None:
    """Carry out PLAN under `backup_lock`, recording in DONE what goes as it goes (an interrupted
    prune's audit event names it) and what cannot (`failures`: the next prune retries). Each
    backup is renamed out of the listing, then deleted; the archive is cleaned only once every
    backup to remove has left the listing, so no listed backup is ever left without its WAL."""

    def delete(tree: Path) -> bool:
        shutil.rmtree(tree, ignore_errors=True)
        if tree.exists():
            done.failures.append(f"{tree}: could not be deleted")
        return not tree.exists()

    for path, size in plan.leftovers.items():
        if delete(path):
            done.leftover_bytes += size
    still_listed = False
    for backup in plan.remove:
        progress(f"removing backup {backup.label}")
        aside = env.backups_dir / f"{_PRUNED}{backup.label}"
        try:
            (env.backups_dir / backup.label).rename(aside)
        except FileNotFoundError:  # gone meanwhile
            continue
        except OSError as exc:
            done.failures.append(f"{env.backups_dir / backup.label}: {exc.strerror}")
            still_listed = True
            continue
        done.backups.append(backup)  # out of the listing: no longer a backup
        delete(aside)
    if still_listed:
        return  # a backup that should have gone is still listed: its WAL stays with it
    if plan.segments:
        progress(f"removing {len(plan.segments)} archived WAL files before {plan.wal_floor}")
    for name, size in sorted(plan.segments.items()):
        try:
            (env.archive_dir / name).unlink()
        except FileNotFoundError:
            continue
        except OSError as exc:
            done.failures.append(f"{env.archive_dir / name}: {exc.strerror}")
            continue
        done.segments[name] = size


# -- point-in-time restore ---------------------------------------------------------------------------
def restores_dir(env: LocalEnvironment) -> Path:
    return env.pg_dir / "restores"


def restore_node(env: LocalEnvironment, name: str, port: int) -> PgNode:
    state = env.require_state()
    return PgNode(
        name=f"restore {name}",
        data_dir=restores_dir(env) / name,
        port=port,
        socket_dir=Path(state.socket_dir),
        log_file=env.logs_dir / f"restore-{name}.log",
        runner=env._runner(state),
    )


def _read_meta(meta: Path) -> dict[str, Any]:
    """A restore's record; one that cannot be read (an older voke killed while writing it)
    still names its instance, which can be listed and discarded."""
    try:
        doc = dict(json.loads(meta.read_text()))
        int(doc["port"])
        return doc
    except (ValueError, TypeError, KeyError):
        return {"name": meta.stem, "port": 0, "state": "unreadable record"}


def restore_ports(env: LocalEnvironment) -> list[int]:
    """The ports the restored instances' records name (a stopped one starts on its own again)."""
    base = restores_dir(env)
    if not base.is_dir():
        return []
    ports = []
    for meta in base.glob("*.json"):
        with suppress(OSError):
            ports.append(int(_read_meta(meta)["port"]))
    return [p for p in ports if p]


def list_restores(env: LocalEnvironment) -> list[dict[str, Any]]:
    """Every restored instance. One still `copying` or `recovering` whose voke does not hold the
    DR lock (restores run under it) lost its voke before it was verified: `interrupted`, with
    how to remove it."""
    from voketag_ops.locks import held_by, holder_parts

    found: list[dict[str, Any]] = []
    base = restores_dir(env)
    if not base.is_dir():
        return found
    holder = held_by(env.home / "dr" / "dr.lock")  # (a read: creates no directory; our own hold too)
    held_pid = holder_parts(holder)[1] if holder is not None else None
    for meta in sorted(base.glob("*.json")):
        try:
            doc = _read_meta(meta)
        except OSError:
            continue
        node = restore_node(env, doc["name"], int(doc["port"]))
        doc["running"] = node.running
        # (a record without a pid, an older voke's, is taken as the lock holder's)
        own = holder is not None and (doc.get("pid") is None or held_pid == doc["pid"])
        if doc.get("state") in ("copying", "recovering") and not own:
            doc["state"] = "interrupted"
            doc["note"] = (
                "the voke restoring it stopped before it was verified; "
                f"`voke dr discard {doc['name']} --yes` removes it"
            )
        elif doc.get("state") == "discarding":
            doc["note"] = (
                f"its discard was cut short; `voke dr discard {doc['name']} --yes` removes what is left"
            )
        elif doc.get("state") == "running" and not doc["running"]:  # `env down`, a reboot
            doc["state"] = "stopped"
            doc["note"] = "`voke env up` starts it again"
        found.append(doc)
    return found


def check_restore_name(name: str, *, hint: str | None = None) -> None:
    """A restore's name becomes a path under pg/restores: "../../secrets/db-app" would discard
    the credential store; a node's name (`dr verify` reads it as the node) is never one."""
    if not RESTORE_NAME.fullmatch(name):
        raise UsageError(f"restore name {name!r} must match [a-z0-9][a-z0-9_-]* (at most 41 characters)")
    if name in ("leader", "standby", *NODE_NAMES):
        raise UsageError(f"restore name {name!r} names a node of the environment", hint=hint)


def find_restore(env: LocalEnvironment, name: str) -> tuple[dict[str, Any], PgNode] | None:
    """NAME's record and node; None when no restored instance has that name (UsageError for a
    name no restore can have)."""
    check_restore_name(name)
    try:
        doc = _read_meta(restores_dir(env) / f"{name}.json")
    except FileNotFoundError:
        return None
    return doc, restore_node(env, name, int(doc["port"]))


def no_such_restore(env: LocalEnvironment, name: str) -> UsageError:
    known = ", ".join(r["name"] for r in list_restores(env)) or "none"
    return UsageError(f"no restored instance named {name!r} (have: {known})")


def get_restore(env: LocalEnvironment, name: str) -> tuple[dict[str, Any], PgNode]:
    found = find_restore(env, name)
    if found is None:
        raise no_such_restore(env, name)
    return found


def discard_restore(env: LocalEnvironment, name: str) -> dict[str, Any]:
    doc, node = get_restore(env, name)
    # Marked first: a discard killed mid-delete left a record that said "stopped, `env up` starts
    # it" over a half-deleted directory; the record goes last.
    replace_json(restores_dir(env) / f"{name}.json", dict(doc, state="discarding"))
    stopped = node.stop(mode="immediate") if node.running else False
    free_dead_shared_memory(node.data_dir)  # one killed, or crashed, left them
    shutil.rmtree(node.data_dir, ignore_errors=True)
    shutil.rmtree(restores_dir(env) / f".{name}.partial", ignore_errors=True)  # a copy cut short
    (restores_dir(env) / f"{name}.json").unlink(missing_ok=True)
    for log_file in (node.log_file, node.log_file.with_name(node.log_file.name + ".1")):
        log_file.unlink(missing_ok=True)  # (a drill's journal keeps its story)
    return {"name": name, "stopped": stopped, "removed": str(node.data_dir), "changed": True}


@dataclass
class RestorePlan:
    """What a restore will use, decided before anything is copied."""

    target: datetime
    name: str
    backup: BackupInfo
    window: Window
    sealed_at: datetime | None
    skipped: list[dict[str, Any]] = field(default_factory=list)  # newer backups pg_verifybackup failed


def plan_restore(
    env: LocalEnvironment,
    target: datetime,
    name: str,
    *,
    seal: bool,
    now: datetime,
    progress: Progress = _noop,
) -> RestorePlan:
    """Pick the base backup and check TARGET lies in the recoverable window (before copying anything).

    PROGRESS hears of the seal and of each pg_verifybackup, which may take a while, once the
    request passed the checks that refuse it."""
    check_restore_name(name, hint="pick another --name")
    if (restores_dir(env) / name).exists() or (restores_dir(env) / f"{name}.json").exists():
        raise PreconditionError(
            f"a restored instance named {name!r} exists; discard it with "
            f"`voke dr discard {name} --yes` or pick another --name"
        )
    if target > now:
        raise PreconditionError(f"target {iso(target)} is in the future (now {iso(now)})")
    leader = env.primary()
    backups = env.backups()
    if not backups:
        raise PreconditionError("there is no base backup to restore from; take one with `voke dr backup`")
    lw = leader_wal(env, leader)
    window = recoverable_window(env, lw, backups)
    sealed_at = None
    # Sealed only when the archive does not already hold a commit after the target: with the
    # archiver failing (the corruption runbook's case when the archive disk is the problem) a
    # seal would wait in vain for WAL the restore does not need.
    covered = window.latest_archived is not None and target < window.latest_archived
    if seal and not covered and in_recovery(leader) is False:
        progress("switching WAL so the archive covers the target")
        sealed_at = seal_archive(env, leader)
        lw = leader_wal(env, leader)
        window = recoverable_window(env, lw, backups)
    # After sealing, the archive alone must reach the target; a dry run may count on the seal.
    bound = window.latest if (sealed_at is None and window.live) else window.latest_archived
    if window.earliest is None or bound is None:
        raise PreconditionError("nothing is recoverable: no usable base backup with archived WAL after it")
    # A target before an archive gap restores from a backup older than the gap, replaying no
    # further than the segment before it (a newer backup taken since does not reach back there).
    earlier = next((r for r in window.earlier if r.earliest <= target < r.latest), None)
    if earlier is None:
        _refuse_outside(target, window, bound)
    names = archived_names(env, lw.segment_size)
    assert window.gaps is not None
    last = earlier.last_segment if earlier else window.gaps.last_contiguous
    live = window.live and earlier is None
    last_segno = wal.parse_segment_name(last, lw.segment_size)[1] if last and not live else None
    candidates = [b for b in backups if (parse_iso(b.finished_at) or now) <= target]
    found = gaps_from_each(
        env,
        candidates,
        lw,
        wal.ArchiveIndex.of(names, lw.segment_size),
        timeline=window.timeline or newest_timeline(env, names),
        end_segno=last_segno,
    )
    skipped: list[dict[str, Any]] = []
    for backup, g in reversed(found):
        if not g.ok:
            continue
        # Checked before anything is copied: a bad page found by the restored server is a copy
        # and a recovery wasted, then an exit 6 no retry mends.
        progress(f"checking base backup {backup.label} (pg_verifybackup)")
        checked = run_verifybackup(env, backup)
        if checked["ok"]:
            # A full disk mid-copy is a copy wasted: refused before, as `env up` is (exit 4).
            env._check_disk(
                env.pg_dir,
                needed_bytes=backup.size_bytes,
                what=f"a copy of base backup {backup.label} ({backup.size_bytes / 1e6:.0f} MB)",
            )
            return RestorePlan(target, name, backup, window, sealed_at, skipped)
        skipped.append({"label": backup.label, "problems": checked["problems"][:3]})
    if skipped:
        bad = skipped[0]
        raise PreconditionError(
            f"no intact base backup finished before {iso(target)} reaches it: pg_verifybackup fails "
            f"{', '.join(s['label'] for s in skipped)} ({bad['problems'][0] if bad['problems'] else 'exit != 0'})",
            hint="take a new backup with `voke dr backup --yes` for later targets; "
            f"`voke dr verify-backup --label {bad['label']}` shows every problem",
        )
    span = (
        f"recoverable range {earlier.describe()}"
        if earlier
        else f"recoverable window {iso(window.earliest)} .. {iso(bound)}"
    )
    raise PreconditionError(
        f"no base backup finished before {iso(target)} reaches it without a WAL gap ({span})"
    )


def _refuse_outside(target: datetime, window: Window, bound: datetime) -> None:
    """Refuse TARGET unless it lies in WINDOW, [earliest, BOUND), naming every recoverable range."""
    assert window.earliest is not None
    span = f"recoverable window {iso(window.earliest)} .. {iso(bound)}"
    ranges = ""
    if window.earlier:
        current = f"{iso(window.earliest)} .. {iso(bound)} (from {window.earliest_backup})"
        ranges = f"; recoverable ranges: {', '.join([*(r.describe() for r in window.earlier), current])}"
    if target < window.earliest:
        before = [r for r in window.earlier if r.latest <= target]
        if before:  # between two ranges: in WAL after a lost segment, before the next backup
            raise PreconditionError(
                f"target {iso(target)} lies after the archive lost {before[-1].missing} and before the "
                f"next usable backup finished (the WAL between them is lost){ranges}"
            )
        if window.earlier:
            raise PreconditionError(f"target {iso(target)} is before the oldest recoverable range{ranges}")
        raise PreconditionError(
            f"target {iso(target)} is before the {span} (oldest usable backup "
            f"{window.earliest_backup} finished at {iso(window.earliest)})"
        )
    if target >= bound:
        why = ""
        if window.gaps is not None and window.gaps.missing:
            why = f"; the archive misses {window.gaps.missing[0]} after {window.gaps.last_contiguous}"
        raise PreconditionError(
            f"target {iso(target)} is not before the newest recoverable commit: {span}{why}{ranges}"
        )


_STOP = re.compile(
    r"recovery stopping (before|after) (commit|abort) of transaction (\d+), time ([0-9:. +-]+)"
)
_REDO_DONE = re.compile(r"redo done at ([0-9A-F]+/[0-9A-F]+)")
_LAST_TX = re.compile(r"last completed transaction was at log time ([0-9:. +-]+)")
_NEW_TLI = re.compile(r"selected new timeline ID: (\d+)")
_RESTORED = re.compile(r'restored log file "([0-9A-F]{24})" from archive')
_NOT_REACHED = "recovery ended before configured recovery target was reached"


def _pg_time(text: str) -> str | None:
    try:
        value = datetime.fromisoformat(text.strip())
    except ValueError:
        return None
    return iso(value)


def parse_recovery_log(text: str) -> dict[str, Any]:
    """The stop point and the WAL used, from the restored server's log."""
    stop = _STOP.search(text)
    redo = _REDO_DONE.search(text)
    last = _LAST_TX.search(text)
    tli = _NEW_TLI.search(text)
    files = _RESTORED.findall(text)
    return {
        "stopped": f"{stop.group(1)} {stop.group(2)} of transaction {stop.group(3)}" if stop else None,
        "stop_xid": int(stop.group(3)) if stop else None,
        "stop_time": _pg_time(stop.group(4)) if stop else None,
        "redo_done_lsn": redo.group(1) if redo else None,
        "last_transaction_at": _pg_time(last.group(1)) if last else None,
        "new_timeline": int(tli.group(1)) if tli else None,
        "wal_first": files[0] if files else None,
        "wal_last": files[-1] if files else None,
        "wal_files": len(files),
        "target_not_reached": _NOT_REACHED in text,
    }


def restore(
    env: LocalEnvironment, plan: RestorePlan, *, progress: Progress = _noop, timeout: float = 600
) -> dict[str, Any]:
    """Copy the backup into pg/restores/NAME, recover to the target, promote, check it takes writes.

    Anything that fails (or Ctrl-C) stops the new server and removes its directory.
    """
    import psycopg

    t0 = time.monotonic()
    started_at = utcnow()
    base = restores_dir(env)
    if not base.exists():
        base.mkdir(mode=0o700)
        _chown_to_server(env, base)
    state = env.require_state()
    taken = {int(p) for p in state.ports.values()} | {int(r["port"]) for r in list_restores(env)}
    port = pick_free_port(avoid=sorted(taken))
    node = restore_node(env, plan.name, port)
    scratch = base / f".{plan.name}.partial"
    meta = base / f"{plan.name}.json"
    # Restores run under the DR lock: any scratch copy is a killed voke's (whatever its name).
    for killed in base.glob(".*.partial"):
        shutil.rmtree(killed, ignore_errors=True)
    node.rotate_log()  # (as its start would: after it, the offset is the new log's)
    log_offset = node.log_file.stat().st_size if node.log_file.exists() else 0
    timings: dict[str, float] = {}
    record = {
        "name": plan.name,
        "port": port,
        "target": iso(plan.target),
        "backup": plan.backup.label,
        "created_at": iso(started_at),
        "data_dir": str(node.data_dir),
        "state": "copying",
        "pid": os.getpid(),  # whose restore it is: `list_restores` tells a killed one by it
    }
    try:
        # Recorded before anything is copied: a kill at any point leaves a restore that is listed
        # (interrupted) and that `dr discard` removes, scratch copy included.
        replace_json(meta, record)
        progress(f"copying base backup {plan.backup.label}")
        t = time.monotonic()
        copy = subprocess.run(  # dies with voke (kill -9): it would go on filling a scratch copy nobody reads
            ["cp", "-a", plan.backup.path, str(scratch)],
            check=False,
            capture_output=True,
            preexec_fn=parent_death_kills() if sys.platform == "linux" else None,
        )
        record_command(copy.args, copy.returncode, time.monotonic() - t, copy.stdout + copy.stderr)
        if copy.returncode != 0:  # a disk filled since the check, an unreadable file: removed below
            lines = copy.stderr.decode(errors="replace").strip().splitlines() or [f"exit {copy.returncode}"]
            raise BackendError(
                f"copying base backup {plan.backup.label} into {base} failed: {lines[-1]}; "
                "the partial copy was removed"
            )
        for leftover in ("voke-backup.json", "backup_manifest", "postmaster.pid", "standby.signal"):
            (scratch / leftover).unlink(missing_ok=True)
        scratch.rename(node.data_dir)
        timings["copy_seconds"] = round(time.monotonic() - t, 3)
        settings = env._common_settings(node)
        settings.update(
            archive_mode="off",
            restore_command=env.restore_command(),
            recovery_target_time=plan.target.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S.%f+00"),
            recovery_target_action="promote",
            # the leader's timeline the window was judged on, not whatever history file is newest
            # in the archive (a standby promoted beside the leader archives one of its own)
            recovery_target_timeline=str(plan.window.timeline) if plan.window.timeline else "latest",
            recovery_target_inclusive=True,
        )
        node.write_config(settings, env._hba())
        signal_file = node.data_dir / "recovery.signal"
        open_private(signal_file, owner=node.runner.user.owner).close()
        replace_json(meta, dict(record, state="recovering"))
        progress(f"recovering to {iso(plan.target)} on port {port}")
        t = time.monotonic()
        with suppress(BackendError):  # a failed start is judged from the log below
            node.start(timeout=timeout)
        try:
            promoted = _wait_promoted(node, timeout=timeout, log_offset=log_offset)
        except psycopg.Error as exc:  # DataCorrupted: the server is up, a page it reads is not
            raise RolledBackError(
                f"the restored instance cannot be read: {_short_error(exc)} (base backup "
                f"{plan.backup.label}; `voke dr verify-backup --label {plan.backup.label}` checks it); "
                "it was removed"
            ) from None
        promoted_at = instant()  # out of recovery: the write probe comes next (first_write_at)
        timings["recovery_seconds"] = round(time.monotonic() - t, 3)
        recovery = parse_recovery_log(node.log_tail(log_offset, limit=1_000_000))
        if not promoted:
            tail = node.log_tail(log_offset)
            if recovery["target_not_reached"]:
                raise RolledBackError(
                    f"PostgreSQL ended recovery before the target {iso(plan.target)}: "
                    f"{_NOT_REACHED} (log: {node.log_file}); the restored instance was removed"
                )
            raise RolledBackError(
                f"the restored instance did not come up: {_fatal_line(tail)} (log: {node.log_file}); it was removed"
            )
        write_ok = probe_write(node)
        if not write_ok:
            raise RolledBackError("the restored instance is up but does not take writes; it was removed")
        first_write_at = instant()
    except BaseException:
        # Stopping the server waits for it to die: a Ctrl-C or SIGTERM meanwhile is held, or the
        # instance outlived its record's removal; the one after gives way, naming the discard.
        try:
            with interrupts.Held(give_way_after=1):
                with suppress(Exception):
                    kill_node(node) if node.running else None
                free_dead_shared_memory(node.data_dir)
                shutil.rmtree(node.data_dir, ignore_errors=True)
                shutil.rmtree(scratch, ignore_errors=True)
                meta.unlink(missing_ok=True)
        except KeyboardInterrupt:
            raise Interrupted(
                f"{interrupts.stopped_by()} while restore {plan.name} was being removed; what is left of it is "
                "listed by `voke dr restores`",
                hint=f"voke dr discard {plan.name} --yes",
            ) from None
        raise
    doc = json.loads(meta.read_text())
    doc.update(state="running", recovery=recovery)
    replace_json(meta, doc)
    return {
        "name": plan.name,
        "target": iso(plan.target),
        "port": port,
        "conninfo": node.conninfo(PLATFORM_DB),  # where the platform's data is
        "data_dir": str(node.data_dir),
        "backup": {
            "label": plan.backup.label,
            "finished_at": plan.backup.finished_at,
            "timeline": plan.backup.timeline,
            "start_wal": plan.backup.start_wal,
        },
        "window": plan.window.as_dict(),
        "skipped_backups": plan.skipped,
        "sealed_at": iso(plan.sealed_at),
        "stop_point": recovery,
        "writable": True,
        "started_at": iso(started_at),
        "promoted_at": iso(promoted_at),
        "first_write_at": iso(first_write_at),
        "timings": timings,
        "duration_seconds": round(time.monotonic() - t0, 3),
        "log": str(node.log_file),
    }


def _fatal_line(tail: str) -> str:
    lines = [ln for ln in tail.splitlines() if "FATAL" in ln or "PANIC" in ln]
    return (lines[-1] if lines else (tail.strip().splitlines() or ["no log output"])[-1]).strip()


def _wait_promoted(node: PgNode, *, timeout: float, log_offset: int) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not node.running:
            # pg_ctl may still be starting it; give the pid file a moment, then trust the log
            tail = node.log_tail(log_offset, limit=20000)
            if "FATAL" in tail or "PANIC" in tail or "database system is shut down" in tail:
                return False
        else:
            state = in_recovery(node)
            if state is False:
                return True
        time.sleep(0.05)
    return False


# -- fencing, promotion, failover ---------------------------------------------------------------------
def fence_node(env: LocalEnvironment, node: PgNode, *, reason: str) -> dict[str, Any]:
    """Make NODE stop accepting writes and stay down: a clean stop if it answers, SIGKILL otherwise.

    It is not given standby.signal, so `voke env up` refuses to start it until `dr failback`
    rebuilds it as a standby of the leader. Its marker is written first: a fence cut short
    still keeps the node down and reads as fenced, and running it again finishes it.
    """
    marker = dr_dir(env) / f"fenced-{node.name}.json"
    doc = {"node": node.name, "fenced_at": iso(utcnow()), "reason": reason, "how": "stopping"}
    replace_json(marker, doc)
    how = stop_or_kill(node)  # a frozen server must not wake up writable either
    replace_json(marker, dict(doc, how=how))
    return {"node": node.name, "how": how, "fenced_at": doc["fenced_at"]}


def stop_or_kill(node: PgNode, *, timeout: float = 10) -> str:
    """Stop NODE for good, whatever state it is in: SIGKILL when it is frozen (SIGSTOP, a
    debugger: it cannot shut down, and a stop would wait for it in vain), a fast stop of
    TIMEOUT seconds otherwise and SIGKILL when that fails. For a node that is thrown away or
    kept down (fence, a standby rebuilt), never one whose data must be shut down cleanly. How."""
    if node.pid() is None:
        return "already stopped"
    if frozen_pids(node):
        kill_node(node)
        return "killed (frozen)"
    how = "stopped (fast)"
    try:
        node.stop(mode="fast", timeout=timeout)
    except BackendError:
        how = "killed"
    if node.running:
        kill_node(node)
        how = "killed"
    return how


def quarantine_foreign_timelines(env: LocalEnvironment, leader: PgNode) -> list[str]:
    """Move out of the shared archive the WAL and history of timelines that are neither the
    writable LEADER's nor its ancestors' (a standby promoted beside it: split brain). Left in,
    a standby's recovery (target timeline `latest`) and a point-in-time restore follow the
    newest history file there, the rogue's, and fail; a clone cannot start either. They are
    moved, not deleted, to pg/archive-quarantine/STAMP/. Nothing when the leader cannot tell."""
    if in_recovery(leader) is not False:
        return []
    timeline = current_timeline(leader)
    if timeline is None:
        return []
    try:
        ours = {timeline, *(parent for parent, _switch in history_of(env, timeline))}
    except BackendError as exc:  # its history is not archived yet (or the archiver fails): cannot tell
        log.warning("archive left as it is: %s", exc.message)
        return []
    foreign = sorted(
        name
        for name in archived_names(env)
        if (wal.HISTORY_NAME.match(name) or wal.SEGMENT_NAME.match(name[:24]))
        and int(name[:8], 16) not in ours
    )
    if not foreign:
        return []
    aside = env.pg_dir / "archive-quarantine" / utcnow().strftime("%Y%m%dT%H%M%S%fZ")
    aside.mkdir(parents=True, exist_ok=True)
    for name in foreign:
        (env.archive_dir / name).rename(aside / name)
    log.warning(
        "moved %d archived file(s) of timelines off %s's history to %s", len(foreign), leader.name, aside
    )
    return foreign


def fenced_nodes(env: LocalEnvironment) -> list[str]:
    return sorted(p.stem.removeprefix("fenced-") for p in (env.home / "dr").glob("fenced-*.json"))


def settle_archive_status(env: LocalEnvironment, node: PgNode) -> list[str]:
    """Mark as archived the files NODE would archive again although the archive holds them already.

    A standby inherits `.ready` files from its clone (pg_basebackup's streamed copy of a
    segment, which may differ from the complete one the leader archived). Once promoted,
    its archiver would retry them against `test ! -f` forever and archive nothing newer.
    The archive's copy came from the node that led at the time, so it wins. Call this
    while NODE is still in recovery, before its archiver starts.
    """
    settled = []
    wal_dir = node.data_dir / "pg_wal"
    status_dir = wal_dir / "archive_status"
    for ready in sorted(status_dir.glob("*.ready")):
        name = ready.name.removesuffix(".ready")
        if (env.archive_dir / name).is_file():
            try:
                ready.rename(status_dir / f"{name}.done")
            except FileNotFoundError:  # the archiver (promoted already) marked it done meanwhile
                continue
            settled.append(name)
    # A segment with no status file at all gets a `.ready` at the next checkpoint once
    # the node leads; if the archive has it, say it is done now.
    for path in sorted(wal_dir.iterdir()):
        name = path.name
        if not path.is_file() or not (wal.SEGMENT_NAME.match(name) or wal.HISTORY_NAME.match(name)):
            continue
        if (status_dir / f"{name}.ready").exists() or (status_dir / f"{name}.done").exists():
            continue
        if (env.archive_dir / name).is_file():
            done = status_dir / f"{name}.done"
            open_private(done, owner=node.runner.user.owner).close()
            settled.append(name)
    return settled


def start_stopped(env: LocalEnvironment, node: PgNode, steps: Steps, progress: Progress = _noop) -> None:
    """Start NODE, the node a resumed failover or switchover promotes, when whatever cut the run
    short stopped it (a reboot, kill -9, a full disk): a standby still, safe to start, or promoted
    by the interrupted run (no standby.signal), once the old leader is fenced or stopped. Waiting
    on it down would never end."""
    if node.running:
        return
    name = (
        f"start {node.name} (promoted by the interrupted run)"
        if _promoted(node)
        else f"start {node.name} as a standby"
    )
    with steps.run(name, progress):
        node.start(timeout=env.settings.start_timeout)


def promote(node: PgNode, *, timeout: float = 60) -> float:
    """pg_promote and wait until it takes writes; returns seconds taken."""
    t0 = time.monotonic()
    if in_recovery(node) is True:
        query_one(node, f"select pg_promote(true, {int(timeout)})", timeout=timeout + 5)
    wait_until(lambda: in_recovery(node) is False, f"{node.name} to leave recovery", timeout=timeout)
    return round(time.monotonic() - t0, 3)


def ensure_slot(node: PgNode) -> None:
    query_one(
        node,
        "select pg_create_physical_replication_slot(%s, true) "
        "where not exists (select 1 from pg_replication_slots where slot_name = %s)",
        (SLOT_NAME, SLOT_NAME),
    )


def drop_slot_if_idle(node: PgNode) -> None:
    with suppress(Exception):
        query_one(
            node,
            "select pg_drop_replication_slot(slot_name) from pg_replication_slots "
            "where slot_name = %s and not active",
            (SLOT_NAME,),
        )


@dataclass
class Step:
    """One step of a DR operation, for reports and drill journals: the exit code it would end
    voke with (0 when it succeeded) and the external commands it ran."""

    name: str
    ok: bool
    duration_seconds: float
    detail: dict[str, Any] = field(default_factory=dict)
    started_at: str | None = None
    exit_code: int = 0
    commands: list[dict[str, Any]] = field(default_factory=list)


class Steps(list[Step]):
    @contextmanager
    def run(self, name: str, progress: Progress = _noop, **detail: Any) -> Iterator[dict[str, Any]]:
        progress(name)
        started = utcnow()
        t0 = time.monotonic()
        info: dict[str, Any] = dict(detail)
        with recording_commands() as commands:
            try:
                yield info
            except BaseException as exc:
                info.setdefault("error", getattr(exc, "message", None) or type(exc).__name__)
                took = round(time.monotonic() - t0, 3)
                self.append(Step(name, False, took, info, iso(started), exit_code_of(exc), commands))
                raise
        self.append(Step(name, True, round(time.monotonic() - t0, 3), info, iso(started), 0, commands))

    def as_list(self) -> list[dict[str, Any]]:
        return [asdict(s) for s in self]


Repoint = Callable[[PgNode], dict[str, Any]]
# What a promoted standby had replayed: a failover's report and audit event name it (None: not known).
REPLAYED = ("replayed_lsn", "last_replayed_commit")


def no_services(_leader: PgNode) -> dict[str, Any]:
    return {"repointed": [], "redeployed": [], "note": "no services to repoint"}


def refuse_failover_without_standby(
    env: LocalEnvironment, state: Any, pending: dict[str, Any] | None
) -> None:
    """PreconditionError (exit 5) when a new failover has no standby to promote (a resumed one
    may have promoted it already); its dry run asks the same."""
    if pending is None or pending.get("operation") != "failover":
        standby = env.node(state.follower, state)
        if in_recovery(standby) is not True:
            raise PreconditionError(
                f"the standby {standby.name} is not running as a standby; nothing to promote "
                f"(`voke dr status` shows the topology)"
            )


def failover(
    env: LocalEnvironment,
    *,
    progress: Progress = _noop,
    reason: str = "voke dr failover",
    promote_timeout: float = 60,
    repoint: Repoint = no_services,
    promoted: Callable[[dict[str, Any]], None] = lambda _replayed: None,
) -> dict[str, Any]:
    """Fence the leader, promote the standby, make it the leader, repoint services, verify a write.

    What the standby had replayed when it was promoted (`replayed_lsn`, `last_replayed_commit`:
    the data-loss boundary) goes to PROMOTED as soon as it is promoted, and into the report; the
    operation log keeps it for a resume past the promotion (one an older voke cut short: None).
    Interrupted, it leaves VOKE_HOME/dr/operation.json; running it again resumes.
    """
    t0 = time.monotonic()
    steps = Steps()
    state = env.require_state()
    refuse_failover_without_standby(env, state, unfinished_operation(env))
    oplog = OperationLog(env, "failover", FAILOVER_RESUME)
    if oplog.resumed and "old_leader" in oplog.doc:
        old_name, new_name = oplog.doc["old_leader"], oplog.doc["new_leader"]
    else:
        old_name, new_name = state.leader, state.follower
        oplog.doc.update(old_leader=old_name, new_leader=new_name)
        oplog.mark("planned")
    old, new = env.node(old_name, state), env.node(new_name, state)
    detail: dict[str, Any] = {"old_leader": old_name, "new_leader": new_name, "resumed": oplog.resumed}
    if not oplog.done("fenced"):
        with steps.run(f"fence {old.name}", progress) as info:
            info.update(fence_node(env, old, reason=reason))
        oplog.mark("fenced")
    elif old.running:  # started again since the interrupted run fenced it: two primaries otherwise
        with steps.run(f"fence {old.name} again (it was started after the fence)", progress) as info:
            info.update(fence_node(env, old, reason=reason))
            log.warning(
                "%s was running again when the failover resumed; writes it took since it was fenced "
                "are not on %s",
                old.name,
                new.name,
            )
    # A host crash (or a full disk) stopped the node to promote, or the one promoted: every step
    # from here needs it answering, and nothing else would start it (`env up` refuses until then).
    start_stopped(env, new, steps, progress)
    if not oplog.done("promoted"):
        with steps.run(f"promote {new.name}", progress) as info:
            standby_lsn = query_one(
                new, "select pg_last_wal_replay_lsn()::text, pg_last_xact_replay_timestamp()"
            )
            info["replayed_lsn"], info["last_replayed_commit"] = standby_lsn[0], iso(standby_lsn[1])
            info["settled_archive_status"] = settle_archive_status(env, new)
            info["seconds"] = promote(new, timeout=promote_timeout)
            info["settled_archive_status"] += settle_archive_status(env, new)
            info["timeline"] = current_timeline(new)
        oplog.mark("promoted", **{key: info[key] for key in REPLAYED})
    replayed = {key: (oplog.doc.get("detail") or {}).get("promoted", {}).get(key) for key in REPLAYED}
    detail.update(replayed)
    promoted(replayed)
    promoted_at = instant()
    if not oplog.done("leader"):
        with steps.run(f"record {new.name} as the leader", progress):
            env.set_leader(new.name)
            ensure_slot(new)
        oplog.mark("leader")
    if not oplog.done("services"):
        with steps.run("repoint services", progress) as info:
            info.update(repoint(new))  # (each redeployed service is healthy when this returns)
        oplog.mark("services")
    services_back_at = instant()
    with steps.run("verify a write on the new leader", progress) as info:
        if not probe_write(new):
            raise NeedsOperatorError(
                f"{new.name} was promoted but does not take writes; check its log {new.log_file}"
            )
        write_heartbeat(new)
        info["ok"] = True
    first_write_at = instant()
    oplog.finish()
    detail.update(
        steps=steps.as_list(),
        promoted_at=iso(promoted_at),
        services_back_at=iso(services_back_at),
        first_write_at=iso(first_write_at),
        duration_seconds=round(time.monotonic() - t0, 3),
        next=f"`voke dr failback --yes` rebuilds {old_name} as a standby of {new_name} and switches back",
    )
    return detail


def commits_past_switch(env: LocalEnvironment, old: PgNode, new: PgNode) -> dict[str, Any]:
    """The transactions a failover from OLD to NEW lost: the commit records in OLD's WAL (its
    pg_wal, read while it is down and before it is rewound or rebuilt) past the point where
    NEW's timeline forked from OLD's, the switch point NEW's `.history` file names. Every
    commit, the canary's or anyone's, acknowledged or not yet: a commit is acknowledged only
    once its record is flushed, so each acknowledged one lost is among them (a torn last
    record never committed, and is not counted). pg_waldump reads them (Transaction records
    only), streamed. BackendError when the WAL past the switch point cannot be read (no
    history file, no pg_wal, its segment missing, any other pg_waldump error)."""
    timeline = current_timeline(new)
    if timeline is None or timeline < 2:
        raise BackendError(f"{new.name} is on no timeline of its own (timeline {timeline})")
    name = f"{timeline:08X}.history"
    for where in (new.data_dir / "pg_wal", env.archive_dir):
        try:
            history = wal.parse_history((where / name).read_text())
            break
        except (OSError, ValueError):
            continue
    else:
        raise BackendError(f"no readable timeline history {name} in {new.name}'s pg_wal or the archive")
    if not history:
        raise BackendError(f"timeline history {name} names no switch point")
    parent, switch = history[-1]
    row = query_one(new, "select setting::bigint from pg_settings where name = 'wal_segment_size'")
    segment = wal.segment_name(parent, wal.segno_of(switch, int(row[0])), int(row[0]))
    wal_dir = old.data_dir / "pg_wal"
    if not (wal_dir / segment).is_file():
        raise BackendError(
            f"{old.name}'s WAL segment {segment}, which holds the switch point, is not in {wal_dir}"
        )
    found: dict[str, Any] = {"commits": 0, "first": None, "newest": None}

    def commit(line: str) -> None:
        at = wal.commit_at(line)
        if at is not None:
            found["commits"] += 1
            found["first"] = found["first"] or at
            found["newest"] = max(found["newest"] or at, at)

    state = env.require_state()
    result = env._runner(state).run(
        "pg_waldump",
        ["-p", str(wal_dir), "-t", str(parent), "-s", wal.format_lsn(switch), "-r", "Transaction"],
        check=False,
        timeout=3600,
        each_line=commit,
    )
    errors = tool_errors(result.stderr)
    end = errors[0] if errors else None
    if result.returncode != 0 and not (end and end.startswith(wal.WALDUMP_END)):
        raise BackendError(
            f"pg_waldump could not read {old.name}'s WAL past {wal.format_lsn(switch)}: "
            + (end or result.stderr.strip() or f"exit {result.returncode}")
        )
    # Static once recovery ended (until NEW restarts): the last commit the promotion kept.
    replayed = query_one(new, "select pg_last_xact_replay_timestamp()")
    return {
        "old_leader": old.name,
        "old_timeline": parent,
        "new_timeline": timeline,
        "switch_lsn": wal.format_lsn(switch),
        "commits": found["commits"],
        "first_lost_commit_at": found["first"],
        "newest_lost_commit_at": found["newest"],
        "last_replayed_commit_at": replayed[0] if replayed else None,
        "wal_end": end,
    }


def write_standby_config(env: LocalEnvironment, node: PgNode, upstream: PgNode) -> None:
    """standby.signal plus primary_conninfo naming UPSTREAM, and voke's replica settings."""
    state = env.require_state()
    env._configure_replica(node, state)
    auto = node.data_dir / "postgresql.auto.conf"
    conninfo = upstream.conninfo(application_name=node.name)  # (dbname: ignored by streaming)
    with open_private(auto, owner=node.runner.user.owner) as fh:
        fh.write(
            b"# Written by voke dr: this node streams from the leader.\n"
            + f"primary_conninfo = {conf_quote(conninfo)}\n".encode()
            + f"restore_command = {conf_quote(env.restore_command())}\n".encode()
        )
    signal_file = node.data_dir / "standby.signal"
    open_private(signal_file, owner=node.runner.user.owner).close()


def rebuild_standby(
    env: LocalEnvironment,
    node: PgNode,
    leader: PgNode,
    *,
    progress: Progress = _noop,
    force_clone: bool = False,
) -> dict[str, Any]:
    """Make NODE a streaming standby of LEADER: pg_rewind, or a fresh clone when rewind fails
    or a rewind of NODE was cut short before (its marker is still there: pg_rewind leaves a
    data directory it did not finish unusable, so a resume clones)."""
    info: dict[str, Any] = {"method": None}
    # Its data is rewound or replaced: a node that does not stop (frozen, hung) is killed, as a
    # fence kills it, rather than the rebuild giving up after pg_ctl's fast and immediate waits.
    if (stopped := stop_or_kill(node)) != "already stopped":
        info["stopped"] = stopped
    ensure_slot(leader)
    rewound = False
    rewinding = node.data_dir.with_name(node.data_dir.name + ".rewinding")
    if rewinding.exists():
        force_clone = True
        info["earlier_rewind_unfinished"] = True
    if not force_clone and node.initialized:
        progress(f"rewinding {node.name} to the leader's timeline (pg_rewind)")
        # pg_rewind reads the source's timeline from its control file, which a promotion
        # updates only at the next checkpoint; without one it may say "no rewind required".
        with leader.connect(DR_DB, timeout=10) as conn:
            conn.execute("checkpoint")
        # pg_rewind may need WAL the target recycled; let it fetch it from the archive.
        settings = env._common_settings(node)
        settings["restore_command"] = env.restore_command()
        node.write_config(settings, env._hba())
        t = time.monotonic()
        open_private(rewinding).close()  # removed once the data directory is whole again
        # A killed node's postmaster.pid whose pid is another live process's now (a reboot) makes
        # pg_rewind's single-user recovery refuse the directory, as it makes a start refuse it.
        node.clear_stale_lock()
        proc = node.runner.run(
            "pg_rewind",
            [
                "--target-pgdata",
                str(node.data_dir),
                "--source-server",
                leader.conninfo("postgres"),
                "--restore-target-wal",
                "--progress",
            ],
            check=False,
            timeout=3600,
        )
        info["rewind_seconds"] = round(time.monotonic() - t, 3)
        info["rewind_exit_code"] = proc.returncode
        if proc.returncode == 0:
            rewound = True
            info["method"] = "pg_rewind"
            rewinding.unlink(missing_ok=True)
        else:
            lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
            info["rewind_error"] = lines[-1] if lines else f"exit {proc.returncode}"
            log.warning("pg_rewind failed (%s); cloning afresh", info["rewind_error"])
    if not rewound:
        progress(f"cloning {node.name} afresh from the leader (pg_basebackup)")
        t = time.monotonic()
        aside = node.data_dir.with_name(node.data_dir.name + ".old")
        if node.data_dir.exists():
            shutil.rmtree(aside, ignore_errors=True)
            node.data_dir.rename(aside)
            try:
                env._clone_replica(leader, node)
            except BaseException:
                if not node.data_dir.exists():
                    aside.rename(node.data_dir)
                raise
        else:
            env._clone_replica(leader, node)
        free_dead_shared_memory(aside)  # a fenced node was killed: nothing starts there again
        shutil.rmtree(aside, ignore_errors=True)  # (also one a killed run moved aside: the resume's)
        info["clone_seconds"] = round(time.monotonic() - t, 3)
        info["method"] = "clone"
        rewinding.unlink(missing_ok=True)
    (node.data_dir / "backup_label.old").unlink(missing_ok=True)
    write_standby_config(env, node, leader)
    node.start(timeout=env.settings.start_timeout)
    drop_slot_if_idle(node)
    return info


def wait_caught_up(leader: PgNode, standby: PgNode, *, timeout: float) -> dict[str, Any]:
    """Wait until STANDBY streams and has replayed everything LEADER had written when we started."""
    t0 = time.monotonic()
    target = query_one(leader, "select pg_current_wal_lsn()::text")[0]
    _refuse_paused_replay(standby)  # it would never catch up: say why now, not after TIMEOUT

    def caught_up() -> bool:
        try:
            row = query_one(standby, "select pg_last_wal_replay_lsn() >= %s::pg_lsn", (target,))
        except BackendError:
            return False
        return bool(row and row[0])

    try:
        wait_until(caught_up, f"{standby.name} to replay up to {target}", timeout=timeout)
    except BackendError:
        _refuse_paused_replay(standby)  # paused while we waited
        raise

    def streaming() -> bool:
        row = query_one(
            leader,
            f"select count(*) from pg_stat_replication where state = 'streaming' and {STANDBY_STREAMS}",
        )
        return bool(row and row[0])

    wait_until(streaming, f"{standby.name} to stream from {leader.name}", timeout=timeout)
    row = query_one(
        leader,
        "select coalesce(max(pg_wal_lsn_diff(pg_current_wal_lsn(), replay_lsn)), 0)::bigint "
        f"from pg_stat_replication where {STANDBY_STREAMS}",
    )
    return {"caught_up_to": target, "lag_bytes": int(row[0]), "seconds": round(time.monotonic() - t0, 3)}


def _refuse_paused_replay(standby: PgNode) -> None:
    """PreconditionError (exit 5) when STANDBY's WAL replay is paused (pg_wal_replay_pause)."""
    with suppress(BackendError):  # one that does not answer is waited for as before
        row = query_one(
            standby, "select case when pg_is_in_recovery() then pg_is_wal_replay_paused() else false end"
        )
        if row and row[0]:
            raise PreconditionError(
                f"WAL replay on {standby.name} is paused (pg_wal_replay_pause): it cannot catch up",
                hint=f"resume it on {standby.name}: select pg_wal_replay_resume()",
            )


def switchover(
    env: LocalEnvironment,
    *,
    to: str,
    progress: Progress = _noop,
    timeout: float = 120,
    repoint: Repoint = no_services,
    oplog: OperationLog | None = None,
) -> dict[str, Any]:
    """Planned: stop the leader cleanly, let the standby TO replay its last WAL, promote it, and
    make the old leader its standby. Nothing acknowledged is lost; writes pause for the duration.

    With OPLOG it records `switchover_started` (before the leader stops) and `switched` (once
    TO leads), and a rerun after an interruption anywhere continues from there. The roles come
    from TO, never from the recorded leader, which the promotion flips part-way.
    """
    steps = Steps()
    state = env.require_state()
    done = oplog.done if oplog is not None else (lambda _step: False)
    standby = env.node(to, state)
    leader = env.node(next(n for n in NODE_NAMES if n != to), state)
    writes_stopped_at = instant()
    promoted_at = first_write_at = None
    diverged = False  # the old leader ran as a primary after TO's promotion: rebuilt, not followed
    if not done("switched"):
        promoted_before = done("switchover_started") and _promoted(standby)
        # Interrupted between the promotion and `switched`. An old leader running again
        # (started by hand meanwhile) is a second primary: stopped, and rebuilt below.
        if promoted_before and leader.running:
            with steps.run(f"stop {leader.name} again (it was started after the promotion)", progress):
                leader.stop(mode="fast", timeout=timeout)
                log.warning(
                    "%s was running again when the switchover resumed; writes it took since "
                    "%s was promoted are not on %s",
                    leader.name,
                    standby.name,
                    standby.name,
                )
            diverged = True
            if oplog is not None:  # (so a resume of this resume rebuilds it too)
                oplog.mark("old_leader_diverged")
        start_stopped(env, standby, steps, progress)  # (a reboot) waiting on it down would never end
        if not promoted_before:
            # A resume whose leader runs again (`env up` after the kill) waits for the standby to
            # stream from it again too: a standby not yet reconnected never gets the shutdown
            # checkpoint, which is not archived, and the wait below would time out.
            if not done("switchover_started") or leader.running:
                with steps.run(f"check {standby.name} is caught up", progress) as info:
                    info.update(wait_caught_up(leader, standby, timeout=timeout))
            if not done("switchover_started"):
                writes_stopped_at = instant()
                if oplog is not None:
                    oplog.mark("switchover_started", writes_stopped_at=iso(writes_stopped_at), to=to)
            with steps.run(f"stop {leader.name} cleanly", progress) as info:
                if leader.running:
                    leader.stop(mode="fast", timeout=timeout)
                checkpoint = _checkpoint_lsn(leader)
                info["shutdown_checkpoint"] = checkpoint
            with steps.run(f"wait for {standby.name} to replay the shutdown checkpoint", progress) as info:
                wait_until(
                    lambda: bool(
                        query_one(standby, "select pg_last_wal_replay_lsn() >= %s::pg_lsn", (checkpoint,))[0]
                    ),
                    f"{standby.name} to replay {checkpoint}",
                    timeout=timeout,
                )
                info["replayed"] = checkpoint
        with steps.run(f"promote {standby.name}", progress) as info:
            if promoted_before:
                info["method"] = "promoted by the interrupted run"
            else:
                info["settled_archive_status"] = settle_archive_status(env, standby)
                info["seconds"] = promote(standby, timeout=timeout)
                promoted_at = instant()
                info["settled_archive_status"] += settle_archive_status(env, standby)
            env.set_leader(standby.name)  # (a resume cut short from here on finds it promoted)
            ensure_slot(standby)
            info["timeline"] = current_timeline(standby)
        if oplog is not None:
            oplog.mark("switched")
    with steps.run("verify a write on the new leader", progress):
        if not probe_write(standby):
            raise NeedsOperatorError(
                f"{standby.name} was promoted but does not take writes ({standby.log_file})"
            )
    first_write_at = instant()
    # Before the old leader is restarted (or rebuilt) as a standby: the services were down
    # from the stop until now, and need only the new leader.
    with steps.run("repoint services", progress) as info:
        info.update(repoint(standby))  # (each redeployed service is healthy when this returns)
    services_back_at = instant()
    with steps.run(f"start {leader.name} as a standby of {standby.name}", progress) as info:
        if in_recovery(leader) is True and streams_from(standby, leader):
            info["method"] = "already streaming"
        else:
            if leader.running:
                leader.stop(mode="fast", timeout=timeout)
            diverged = diverged or done("old_leader_diverged")
            if not diverged:
                try:
                    write_standby_config(env, leader, standby)
                    leader.start(timeout=env.settings.start_timeout)
                    info.update(wait_caught_up(standby, leader, timeout=timeout))
                    info["method"] = "follow"
                except BackendError:  # also one that cannot start: it ran on as a primary meanwhile
                    diverged = True
            if diverged:
                info.update(rebuild_standby(env, leader, standby, progress=progress))
                info.update(wait_caught_up(standby, leader, timeout=timeout))
        drop_slot_if_idle(leader)
    return {
        "leader": standby.name,
        "standby": leader.name,
        "writes_stopped_at": iso(writes_stopped_at),
        "promoted_at": iso(promoted_at),
        "first_write_at": iso(first_write_at),
        "services_back_at": iso(services_back_at),
        "write_pause_seconds": round((first_write_at - writes_stopped_at).total_seconds(), 3)
        if promoted_at
        else None,
        "steps": steps.as_list(),
    }


def _promoted(node: PgNode) -> bool:
    """Whether NODE left recovery: it answers as a primary or, not answering, has no
    standby.signal (which PostgreSQL removes when it promotes)."""
    role = in_recovery(node)
    if role is not None:
        return not role
    return node.initialized and not (node.data_dir / "standby.signal").exists()


def _checkpoint_lsn(node: PgNode) -> str:
    proc = node.runner.run("pg_controldata", [str(node.data_dir)], timeout=30)
    for line in proc.stdout.splitlines():
        if line.startswith("Latest checkpoint location:"):
            return line.split(":", 1)[1].strip()
    raise BackendError(f"pg_controldata gave no checkpoint location for {node.data_dir}")


def refuse_failback_without_leader(leader: PgNode, old: PgNode) -> bool | None:
    """PreconditionError (exit 5) when a failback cannot start: the leader is not a writable
    primary, or OLD is writable beside it (split brain: fence it first). Returns OLD's role
    (`in_recovery`). Its dry run asks the same."""
    if in_recovery(leader) is not False:
        raise PreconditionError(
            f"the leader {leader.name} is not a writable primary; nothing to fail back to"
        )
    old_role = in_recovery(old)
    if old_role is False:
        raise PreconditionError(
            f"split brain: {old.name} is writable beside the leader {leader.name}; "
            f"fence it first with `voke dr fence {old.name} --yes`"
        )
    return old_role


def failback(
    env: LocalEnvironment,
    *,
    progress: Progress = _noop,
    force_clone: bool = False,
    switch_back: bool = True,
    timeout: float = 300,
    repoint: Repoint = no_services,
) -> dict[str, Any]:
    """Rebuild the fenced former leader as a standby of the current one, wait for it to catch up,
    and (SWITCH_BACK) switch over so it leads again: only when it is the home node (`primary`),
    so a rerun, or a failback of a node fenced beside the home leader, never moves the leader
    away from home. FORCE_CLONE rebuilds even a streaming standby (one too far behind to catch
    up). Interrupted, a rerun of the resume command (with the same flags) resumes it."""
    t0 = time.monotonic()
    steps = Steps()
    state = env.require_state()
    leader, old = env.node(state.leader, state), env.node(state.follower, state)
    resume = f"voke dr failback{' --clone' if force_clone else ''}{'' if switch_back else ' --no-switch-back'} --yes"
    pending = refuse_if_unfinished(env, allow="failback")
    mid_switchover = bool(pending) and "switchover_started" in (pending or {}).get("done", [])
    rebuilt: dict[str, Any] = {"method": "already a streaming standby"}
    if mid_switchover:
        oplog = OperationLog(env, "failback", "voke dr failback --yes")  # the switchover is under way
        rebuilt = dict((oplog.doc.get("detail") or {}).get("rebuilt") or rebuilt)
    else:
        old_role = refuse_failback_without_leader(leader, old)
        oplog = OperationLog(env, "failback", resume)
        streaming_now = old_role is True and streams_from(leader, old)
        if (force_clone or not streaming_now) and not oplog.done("rebuilt"):
            with steps.run(f"rebuild {old.name} as a standby of {leader.name}", progress) as info:
                if quarantined := quarantine_foreign_timelines(env, leader):  # fenced by an older voke
                    info["quarantined"] = quarantined
                rebuilt = rebuild_standby(env, old, leader, progress=progress, force_clone=force_clone)
                info.update(rebuilt)
        oplog.mark("rebuilt", **rebuilt)
        (env.home / "dr" / f"fenced-{old.name}.json").unlink(missing_ok=True)
        with steps.run(f"wait for {old.name} to catch up", progress) as info:
            info.update(wait_caught_up(leader, old, timeout=timeout))
        oplog.mark("caught_up")
    result: dict[str, Any] = {"rebuilt": rebuilt, "switched_back": False, "resumed": oplog.resumed}
    if (switch_back and old.name == HOME_NODE) or mid_switchover:
        swap = switchover(env, to=HOME_NODE, progress=progress, timeout=timeout, repoint=repoint, oplog=oplog)
        steps.extend(Step(**s) for s in swap.pop("steps"))
        result.update(switchover=swap, switched_back=True)
    oplog.finish()
    final = env.require_state()
    result.update(
        leader=final.leader,
        standby=final.follower,
        steps=steps.as_list(),
        duration_seconds=round(time.monotonic() - t0, 3),
    )
    return result


def streams_from(leader: PgNode, standby: PgNode) -> bool:
    try:
        row = query_one(
            leader,
            f"select count(*) from pg_stat_replication where state = 'streaming' and {STANDBY_STREAMS}",
        )
    except BackendError:
        return False
    return bool(row and row[0])


def table_checksum(
    node: PgNode, table: str, *, key: str, dbname: str = DR_DB, where: Any = None
) -> dict[str, Any]:
    """Row count and a checksum over TABLE's rows in KEY order, computed inside PostgreSQL.

    TABLE and KEY are identifiers voke chose; WHERE is a psycopg `sql.Composable` or None.
    """
    from psycopg import sql

    query = sql.SQL(
        "select count(*), coalesce(md5(string_agg(md5(_voke_row::text), '' order by {key})), md5('')), "
        + wal.WAL_POSITION_SQL
        + " from {table} _voke_row {where}"
    ).format(key=sql.SQL(key), table=sql.SQL(table), where=where if where is not None else sql.SQL(""))
    with node.connect(dbname, timeout=10) as conn:
        count, digest, lsn = conn.execute(query).fetchone()  # type: ignore[misc]
    return {"rows": int(count), "checksum": digest, "lsn": lsn}


def wal_position(node: PgNode, dbname: str = DR_DB) -> str | None:
    """NODE's wal.WAL_POSITION_SQL."""
    with node.connect(dbname, timeout=10) as conn:
        row = conn.execute("select " + wal.WAL_POSITION_SQL).fetchone()
    return row[0] if row else None


# -- canary writer ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class CanaryWrite:
    """One canary attempt: acknowledged (ok) or not."""

    seq: int
    sent_at: datetime
    done_at: datetime
    ok: bool
    node: str | None
    error: str | None = None


class Canary:
    """Writes (run_id, seq) to the leader every INTERVAL seconds on its own thread, reconnecting to
    whichever node RESOLVE names, and records every acknowledged commit.

    A write that takes longer than WRITE_TIMEOUT is cut off by shutting the socket down:
    a frozen server keeps TCP alive, so only the client can give up.
    """

    def __init__(
        self,
        resolve: Callable[[], PgNode],
        run_id: str,
        *,
        interval: float = 0.1,
        write_timeout: float = 1.0,
    ) -> None:
        self.resolve = resolve
        self.run_id = run_id
        self.interval = interval
        self.write_timeout = write_timeout
        self.writes: list[CanaryWrite] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._seq = 0
        self._lock = threading.Lock()

    def prepare(self) -> None:
        with self.resolve().connect(DR_DB) as conn:
            ensure_schema(conn)

    def start(self) -> Canary:
        self.prepare()
        self._thread = threading.Thread(target=self._loop, name="voke-canary", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> list[CanaryWrite]:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
        return self.snapshot()

    def snapshot(self) -> list[CanaryWrite]:
        with self._lock:
            return list(self.writes)

    def acked(self) -> list[CanaryWrite]:
        return [w for w in self.snapshot() if w.ok]

    def first_ok_after(self, when: datetime) -> CanaryWrite | None:
        return next((w for w in self.snapshot() if w.ok and w.sent_at >= when), None)

    def _loop(self) -> None:
        conn = None
        node_name = None
        next_tick = time.monotonic()
        while not self._stop.is_set():
            self._seq += 1
            seq = self._seq
            sent = instant()
            try:
                if conn is None:
                    node = self.resolve()
                    node_name = node.name
                    conn = _connect_with_deadline(node, self.write_timeout)
                _execute_with_deadline(
                    conn,
                    "insert into voke_dr.canary (run_id, seq) values (%s, %s)",
                    (self.run_id, seq),
                    self.write_timeout,
                )
                record = CanaryWrite(seq, sent, instant(), True, node_name)
            except Exception as exc:
                record = CanaryWrite(seq, sent, instant(), False, node_name, _short_error(exc))
                if conn is not None:
                    with suppress(Exception):
                        conn.close()
                conn = None
            with self._lock:
                self.writes.append(record)
            next_tick += self.interval
            delay = next_tick - time.monotonic()
            if delay > 0:
                self._stop.wait(delay)
            else:
                next_tick = time.monotonic()
        if conn is not None:
            with suppress(Exception):
                conn.close()


def _short_error(exc: BaseException) -> str:
    text = redact(getattr(exc, "message", None) or str(exc) or type(exc).__name__)
    return f"{type(exc).__name__}: {text.strip().splitlines()[0][:160] if text.strip() else ''}"


def _connect_with_deadline(node: PgNode, timeout: float) -> psycopg.Connection[Any]:
    import psycopg

    node.check_socket_dir()
    return psycopg.connect(
        host=str(node.socket_dir),
        port=node.port,
        user="postgres",
        dbname=DR_DB,
        connect_timeout=max(2, int(timeout + 0.999)),
        autocommit=True,
        application_name="voke-canary",
    )


def _execute_with_deadline(
    conn: psycopg.Connection[Any], sql: str, params: tuple[Any, ...], timeout: float
) -> None:
    fd = conn.pgconn.socket
    timer = threading.Timer(timeout, _shutdown_fd, args=(fd,))
    timer.start()
    try:
        conn.execute(sql, params)
    finally:
        timer.cancel()


def _shutdown_fd(fd: int) -> None:
    with suppress(OSError):
        dup = socket.socket(fileno=os.dup(fd))
        try:
            dup.shutdown(socket.SHUT_RDWR)
        finally:
            dup.close()


def canary_rows(node: PgNode, run_id: str, *, timeout: float = 10) -> dict[int, datetime]:
    """seq -> commit time (pg_xact_commit_timestamp) of the canary rows NODE holds for RUN_ID."""
    with node.connect(DR_DB, timeout=timeout) as conn:
        rows = conn.execute(
            "select seq, coalesce(pg_xact_commit_timestamp(xmin), written_at) from voke_dr.canary "
            "where run_id = %s",
            (run_id,),
        ).fetchall()
    return {int(seq): ts for seq, ts in rows}


def detect_down(
    node: PgNode, *, timeout: float, interval: float = 0.1, probe_timeout: float = 1.0
) -> datetime:
    """Probe NODE until it stops answering; returns when that was first seen."""
    import psycopg

    def failed() -> bool:
        try:
            conn = _connect_with_deadline(node, probe_timeout)
        except psycopg.Error:
            return True
        try:
            _execute_with_deadline(conn, "select 1", (), probe_timeout)
            return False
        except psycopg.Error:
            return True
        finally:
            with suppress(Exception):
                conn.close()

    wait_until(failed, f"{node.name} to stop answering", timeout=timeout, interval=interval)
    return instant()
