"""`voke drill`: rehearse DR on the local environment and measure what was achieved.

Every drill checks the steady state, starts a canary writer (a row with a sequence
number every 100 ms, each acknowledged commit recorded), injects its fault, recovers
through the same workflows `voke dr` runs, verifies, cleans up (one writable leader
with a streaming standby is left behind, in the topology found at the start) and
checks the steady state again. The journal (JSON, VOKE_HOME/drills/RUN_ID.json) is
written even when the drill fails or is interrupted.
"""

from __future__ import annotations

import math
import os
import platform
import re
import socket
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager, suppress
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from voketag_ops import interrupts
from voketag_ops.clock import instant, measuring
from voketag_ops.core import drill as core
from voketag_ops.core.dr_checks import Check, judge, parse_iso
from voketag_ops.core.times import iso
from voketag_ops.errors import (
    BackendError,
    ExitCode,
    Interrupted,
    NeedsOperatorError,
    PreconditionError,
    UsageError,
    VokeError,
)
from voketag_ops.files import DamagedRecord, open_private, read_record, replace_json
from voketag_ops.logs import get_logger

if TYPE_CHECKING:
    from voketag_ops.adapters.local.dr import Canary
    from voketag_ops.adapters.local.environment import LocalEnvironment
    from voketag_ops.config import Settings

log = get_logger(__name__)
Progress = Callable[[str], None]
STEADY_CHECKS = ("unfinished_operation", "split_brain", "leader_writable", "replica_streaming", "archiving")
SERVICES_CHECK = "services_healthy"  # also steady: every service answers /health, as `env status` asks
CANARY_INTERVAL = 0.1  # between two canary writes, or a fifth of a shorter lead-in
LOCAL_CANARY_SECONDS = 1.0  # how long the canary writes before a local drill's fault, unless set
SEED_ROWS = 2000


def canary_seconds(settings: Settings, options: Mapping[str, Any], default: float) -> float:
    """How long a drill's canary writes before its fault: `--canary-seconds`, else
    `dr.canary_seconds`, else DEFAULT (the local and the cloud drills differ)."""
    given = options.get("canary_seconds")
    if given is None:
        given = settings.dr.canary_seconds
    return float(default if given is None else given)


def _quiet(_msg: str) -> None:
    return None


# -- journals -------------------------------------------------------------------------------------------
def journals_dir(env: LocalEnvironment) -> Path:
    return env.home / "drills"


def load_journals(env: LocalEnvironment) -> list[dict[str, Any]]:
    """Every journal under VOKE_HOME/drills, oldest first (unreadable files are skipped). One
    left `running` by a process that is gone reads `interrupted`, wherever it is shown. Every
    file read and kept: for the views that need them all (the cloud drills' sweep); the others
    read newest_journals, or keep what they show of each (history)."""
    return sorted(_each_journal(env), key=_started)


def _each_journal(env: LocalEnvironment) -> Iterator[dict[str, Any]]:
    """Every journal, in file name order, read one at a time."""
    for path in sorted(journals_dir(env).glob("*.json")):
        if (journal := _read_journal(path)) is not None:
            yield journal


def _read_journal(path: Path) -> dict[str, Any] | None:
    """The journal PATH holds, `interrupted` if left `running` by a process that is gone; None
    (with a warning) if it holds none."""
    from voketag_ops.workflows.cloud_drill import owner_gone

    try:
        journal: dict[str, Any] = read_record(path, _not_a_journal)
    except (OSError, DamagedRecord) as exc:
        log.warning("skipping drill journal %s: %s", path, exc)
        return None
    if journal.get("status") == "running" and owner_gone(journal):
        journal["status"] = "interrupted"
    return journal


def _started(journal: Mapping[str, Any]) -> str:
    return journal.get("started_at") or ""


# A journal's file is named by its run id, which carries the second the run started, in UTC
# (local: pitr-20261127T155236Z-e1ae, cloud: pitr-20261127t155236-e1ae).
_STAMPED = re.compile(r"-(\d{4})(\d\d)(\d\d)[Tt](\d\d)(\d\d)(\d\d)Z?-[0-9a-f]+$")


def newest_journals(env: LocalEnvironment) -> Iterator[dict[str, Any]]:
    """The journals newest first, in load_journals' order reversed, read only as far as the
    caller goes: files are read newest first by the start their name carries (the second of
    `started_at`, as voke names them), and a journal is handed out once no file still unread
    can have started after it. A file whose name carries no start (made by hand) is read at
    the outset."""
    stamped: list[tuple[str, Path]] = []
    ready: list[tuple[str, str, dict[str, Any]]] = []  # read, not yet handed out
    for path in journals_dir(env).glob("*.json"):
        if (m := _STAMPED.search(path.stem)) is not None:
            stamped.append(("{}-{}-{}T{}:{}:{}".format(*m.groups()), path))
        elif (journal := _read_journal(path)) is not None:
            ready.append((_started(journal), str(path), journal))
    stamped.sort(key=lambda item: item[0])  # oldest first: popped from the end
    while stamped or ready:
        best = max(ready, key=lambda item: item[:2], default=None)
        if best is not None and (not stamped or best[0][:19] > stamped[-1][0]):
            ready.remove(best)
            yield best[2]
            continue
        second = stamped[-1][0]  # read every file of the newest second not yet read
        while stamped and stamped[-1][0] == second:
            path = stamped.pop()[1]
            if (journal := _read_journal(path)) is not None:
                ready.append((_started(journal), str(path), journal))


def _not_a_journal(doc: Any) -> str | None:
    """What makes DOC no journal any voke wrote (a hand edit, another tool's file), or None.
    The fields every listing reads; older journals without later fields still count."""
    if not isinstance(doc, dict):
        return f"not an object ({type(doc).__name__})"
    for key in ("run_id", "scenario", "status", "started_at"):
        if not isinstance(doc.get(key), str):
            return f"no {key}"
    for key in ("rto_seconds", "rpo_seconds"):  # trends and reports do float arithmetic on them
        if doc.get(key) is not None and not _seconds(doc[key]):
            return f"{key} is not a number of seconds"
    return None


def _seconds(value: Any) -> bool:
    """Whether VALUE is a finite number, as float arithmetic takes it (a 4000-digit int is not)."""
    if not isinstance(value, int | float) or isinstance(value, bool):
        return False
    try:
        return math.isfinite(float(value))
    except OverflowError:
        return False


def report_problem(journal: dict[str, Any]) -> str | None:
    """What a report needs and JOURNAL lacks (a file edited or made by hand), or None."""
    targets = journal.get("targets")
    if not isinstance(targets, dict) or not all(
        _seconds(targets.get(k)) for k in ("rto_target_seconds", "rpo_target_seconds")
    ):
        return "no targets"
    for key in ("timeline", "versions"):
        if not isinstance(journal.get(key), dict):
            return f"no {key}"
    for key in ("environment", "mode"):
        if not isinstance(journal.get(key), str):
            return f"no {key}"
    return None


def load_journal(env: LocalEnvironment, run_id: str) -> dict[str, Any]:
    """The journal of RUN_ID (`last`, `latest`: the newest), read from the file it names; a
    journal saved under another name is looked for among all of them."""
    if run_id in ("last", "latest"):
        newest = next(newest_journals(env), None)
        if newest is None:
            raise UsageError("no drill has run yet; `voke drill run all --yes` runs them")
        return newest
    named = journals_dir(env) / f"{run_id}.json"
    if Path(run_id).name == run_id and "\0" not in run_id and named.is_file():
        journal = _read_journal(named)
        if journal is not None and journal.get("run_id") == run_id:
            return journal
    found = sorted((j for j in _each_journal(env) if j.get("run_id") == run_id), key=_started)
    if found:
        return found[0]
    raise UsageError(f"no drill run {run_id!r} (see `voke drill history`)")


def last_result(env: LocalEnvironment) -> dict[str, Any] | None:
    last = next(newest_journals(env), None)
    if last is None:
        return None
    keys = ("run_id", "scenario", "status", "finished_at", "rto_seconds", "rpo_seconds")
    return {k: last.get(k) for k in keys}


def save_journal(env: LocalEnvironment, journal: dict[str, Any]) -> Path:
    directory = journals_dir(env)
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    path = directory / f"{journal['run_id']}.json"
    replace_json(path, journal)
    return path


_HISTORY_KEYS = (
    "run_id",
    "scenario",
    "started_at",
    "status",
    "rto_seconds",
    "rpo_seconds",
    "lost_commits",
    "rto_met",
    "rpo_met",
    "lost_met",
    "rpo_source",
    "integrity_ok",
)


def history(env: LocalEnvironment, *, scenario: str | None = None, limit: int = 50) -> dict[str, Any]:
    """The newest LIMIT runs (of SCENARIO) and the trend per scenario. The trend counts every
    run (runs, passed, best and worst RTO), so every journal is read, but only its row is kept."""
    rows = [
        {k: j.get(k) for k in _HISTORY_KEYS}
        | {"rto_target_seconds": (j.get("targets") or {}).get("rto_target_seconds")}
        for j in _each_journal(env)
        if scenario is None or j.get("scenario") == scenario
    ]
    rows.sort(key=_started)
    return {"runs": rows[-limit:], "trend": core.trend(rows)}


# -- steady state -----------------------------------------------------------------------------------------
def steady_state(settings: Settings, env: LocalEnvironment, *, wait: float = 0.0) -> dict[str, Any]:
    """The checks a drill needs before it injects a fault (and after it cleans up); waits up to WAIT."""
    from voketag_ops.adapters.local import dr
    from voketag_ops.workflows.dr import thresholds

    limits = thresholds(settings)
    deadline = time.monotonic() + wait
    services_alone_since: float | None = None  # when the services became the only failing checks
    while True:
        snap = dr.snapshot(
            env, lag_wait=settings.dr.lag_probe_seconds, replica_expected=settings.local.replica
        )
        checks = [c for c in judge(snap, limits, now=dr.utcnow()) if c.name in STEADY_CHECKS]
        checks.append(_services_check(settings))
        ok = snap["initialized"] and all(c.ok for c in checks)
        # Services alone are waited for as a deploy waits for them (rotation.health_timeout): one
        # that died does not come back by waiting out the servers' longer bound.
        now = time.monotonic()
        if snap["initialized"] and all(c.ok for c in checks if c.name != SERVICES_CHECK):
            services_alone_since = services_alone_since or now
        else:
            services_alone_since = None
        services_given_up = (
            services_alone_since is not None
            and now - services_alone_since >= settings.rotation.health_timeout
        )
        if ok or now >= deadline or services_given_up:
            standby = snap.get("standby") or {}
            return {
                "ok": bool(ok),
                "checked_at": snap["checked_at"],
                "leader": (snap.get("leader") or {}).get("name"),
                "timeline": (snap.get("leader") or {}).get("timeline"),
                "lag_seconds": standby.get("lag_seconds"),
                # the research's pre-fault state: byte lag, archiving, backup age as well
                "lag_bytes": standby.get("lag_bytes"),
                "last_archived_at": (snap.get("archive") or {}).get("last_archived_at"),
                "backup_age_seconds": (snap.get("newest_backup") or {}).get("age_seconds"),
                "checks": [{"name": c.name, "ok": c.ok, "message": c.message} for c in checks],
            }
        time.sleep(0.5)


def unhealthy_services(settings: Settings) -> list[str]:
    """The services whose /health does not answer ok (a service not running among them), as
    `voke env status` judges them."""
    from voketag_ops.workflows.env import LocalPlatform

    return [s.name for s in LocalPlatform(settings).runtime().services(check=True) if not s.healthy]


def _services_check(settings: Settings) -> Check:
    down = unhealthy_services(settings)
    if down:
        return Check(
            SERVICES_CHECK,
            False,
            f"service(s) not healthy: {', '.join(down)} (`voke env status` shows them: `voke env up` "
            "starts a stopped one and restarts one that runs but does not answer)",
            value=down,
        )
    return Check(SERVICES_CHECK, True, "every service answers /health", value=[])


# -- one run ------------------------------------------------------------------------------------------------
class RunFrame:
    """What every drill run keeps, local or cloud: its timeline and the clean-ups it
    registered, run newest first, each to the end whatever the others did."""

    error: str | None

    def __init__(self) -> None:
        self.timeline: dict[str, datetime | None] = {k: None for k in core.TIMELINE_KEYS}
        self._cleanups: list[tuple[str, Callable[[], Any]]] = []
        self.error = None
        # True while a drill prepares its fault: an error then aborts the run (nothing was drilled)
        self.preparing = False
        self.cleanup_interrupted = False  # a Ctrl-C or SIGTERM came while cleaning up
        self.rows_record: tuple[Path, dict[str, Any]] | None = None  # the pitr drill's rows kept aside

    def mark(self, key: str, when: datetime | None = None) -> datetime:
        """Set the timeline's KEY to WHEN, or now on the run's steady clock (voketag_ops.clock:
        the durations between marks are monotonic ones, whatever the wall clock does)."""
        value = when or instant()
        self.timeline[key] = value
        return value

    def on_cleanup(self, name: str, action: Callable[[], Any]) -> None:
        self._cleanups.append((name, action))

    def cleanup_step(self, name: str) -> AbstractContextManager[Any]:
        """The recorded step one clean-up runs in."""
        raise NotImplementedError

    def left_to_finish(self, cut: Interrupted) -> str | None:
        """Once the clean-ups ran: what is left to finish of CUT, an operation of the drill that
        a Ctrl-C or SIGTERM stopped part-way, and how (None: nothing). Where the run cannot
        tell, what CUT's hint said."""
        return cut.hint

    def run_cleanups(self) -> None:
        """Each clean-up to its end: a first Ctrl-C or SIGTERM meanwhile is held (it marks
        the run interrupted); a second one stops the step it lands in, and the rest still run."""
        with interrupts.Held(give_way_after=1) as held:
            while self._cleanups:
                name, action = self._cleanups.pop()
                try:
                    with self.cleanup_step(name):
                        action()
                except KeyboardInterrupt:
                    self.cleanup_interrupted = True
                    log.warning("clean-up step %r interrupted; continuing with the rest", name)
                except Exception as exc:
                    log.warning("clean-up step %r failed: %s", name, getattr(exc, "message", exc))
        self.cleanup_interrupted = self.cleanup_interrupted or held.fired


class DrillRun(RunFrame):
    """The state of one drill while it runs; `journal()` turns it into the journal document."""

    def __init__(
        self,
        settings: Settings,
        env: LocalEnvironment,
        scenario: str,
        progress: Progress,
        options: dict[str, Any],
    ) -> None:
        from voketag_ops.adapters.local import dr

        super().__init__()
        self.settings, self.env, self.scenario, self.progress, self.options = (
            settings,
            env,
            scenario,
            progress,
            options,
        )
        started = instant()
        self.run_id = f"{scenario}-{started:%Y%m%dT%H%M%SZ}-{uuid.uuid4().hex[:4]}"
        self.started_at = started
        self.t0 = time.monotonic()
        # The canary's lead-in: it writes this long before the fault (pitr: before the target,
        # then half as long before the fault), and half as long after the first write that counts.
        self.lead = canary_seconds(settings, options, LOCAL_CANARY_SECONDS)
        self.canary_interval = min(CANARY_INTERVAL, self.lead / 5)  # a few writes on each side
        self.preparing = True  # until the scenario's fault (or the failback's setup failover)
        self.steps = dr.Steps()
        self.cleanup_steps = dr.Steps()
        self.integrity: list[dict[str, Any]] = []
        self.details: dict[str, Any] = {}
        self.canary: Canary | None = None
        self.canary_summary: dict[str, Any] = {}
        self.rpo: float | None = None
        self.lost: int | None = None
        self.rpo_source: str | None = None  # where rpo and lost come from (core.JOURNAL_SCHEMA)
        self.steady_before: dict[str, Any] | None = None
        self.steady_after: dict[str, Any] | None = None
        self.status: str | None = None
        self.targets = core.targets_for(
            scenario,
            rto=settings.dr.rto_seconds,
            rto_regional=settings.dr.rto_regional_seconds,
            rto_network=settings.dr.rto_network_seconds,
            rpo=settings.dr.rpo_seconds,
            cloud=False,
            source="dr settings (voke config show)",
        )

    # helpers the scenarios use
    @contextmanager
    def step(self, name: str) -> Iterator[dict[str, Any]]:
        with self.steps.run(name, self.progress) as info:
            yield info

    def cleanup_step(self, name: str) -> AbstractContextManager[Any]:
        return self.cleanup_steps.run(name, self.progress)

    def left_to_finish(self, cut: Interrupted) -> str | None:
        """The unfinished operation the clean-ups left, as `dr status` names it: a failover or
        failback cut short that they finished is none, whatever CUT's hint said before them."""
        from voketag_ops.adapters.local import dr

        return dr.operation_notice(self.env)

    def start_canary(self, *, write_timeout: float = 1.0) -> Canary:
        from voketag_ops.adapters.local.dr import Canary

        self.canary = Canary(
            self.env.primary, self.run_id, interval=self.canary_interval, write_timeout=write_timeout
        ).start()
        self.on_cleanup("stop the canary writer", self.stop_canary)
        return self.canary

    def stop_canary(self) -> list[Any]:
        if self.canary is None:
            return []
        writes = self.canary.stop()
        failed = [w for w in writes if not w.ok]
        self.canary_summary.update(
            interval_seconds=self.canary_interval,
            lead_seconds=self.lead,
            writes=len(writes),
            acked_commits=sum(1 for w in writes if w.ok),
            failed_writes=len(failed),
            first_seq=writes[0].seq if writes else None,
            last_seq=writes[-1].seq if writes else None,
            errors=sorted({w.error for w in failed if w.error})[:5],
        )
        return writes

    def canary_writes(self) -> list[core.Write]:
        assert self.canary is not None
        return [core.Write(w.seq, w.sent_at, w.done_at, w.ok) for w in self.canary.snapshot()]

    def wait_first_write(self, after: datetime, *, timeout: float = 60) -> core.Write:
        from voketag_ops.adapters.local.dr import wait_until

        return wait_until(
            lambda: core.first_write_after(self.canary_writes(), after),
            "the canary's first acknowledged write after the fault",
            timeout=timeout,
        )

    def journal(self) -> dict[str, Any]:
        from voketag_ops import __version__

        rto = core.rto_seconds(self.timeline)
        interrupted = self.status == "interrupted"
        if self.status in ("aborted", "interrupted"):
            v = core.verdict(
                rto=rto,
                rpo=self.rpo,
                targets=self.targets,
                integrity=self.integrity,
                steady_after_ok=None,
                error=self.error,
                cut_short=True,
                lost=self.lost,
            )
            v["status"] = self.status
        else:
            v = core.verdict(
                rto=rto,
                rpo=self.rpo,
                targets=self.targets,
                integrity=self.integrity,
                steady_after_ok=(self.steady_after or {}).get("ok"),
                error=self.error,
                lost=self.lost,
            )
        state = self.env.state()
        finished = instant()
        return {
            "run_id": self.run_id,
            "scenario": self.scenario,
            "environment": "local",
            "mode": "local",
            "versions": {
                "voke": __version__,
                "postgres": state.pg_version if state else None,
                "python": platform.python_version(),
            },
            "platform": platform.platform(),
            "node": socket.gethostname(),
            "started_at": iso(self.started_at),
            "finished_at": iso(finished),
            "duration_seconds": round(time.monotonic() - self.t0, 3),
            "targets": {
                "rto_target_seconds": self.targets.rto_target_seconds,
                "rpo_target_seconds": self.targets.rpo_target_seconds,
                "lost_commits_target": self.targets.lost_commits_target,
                "disruption": self.targets.disruption,
                "source": self.targets.source,
            },
            "timeline": {k: iso(v) for k, v in self.timeline.items()},
            "phases": core.phases(self.timeline),
            "rto_seconds": rto,
            "rpo_seconds": self.rpo,
            "lost_commits": self.lost,
            "rpo_source": self.rpo_source,
            "canary": self.canary_summary,
            "integrity": self.integrity,
            "steps": self.steps.as_list(),
            "cleanup": self.cleanup_steps.as_list(),
            "steady_state": {"before": self.steady_before, "after": self.steady_after},
            "rto_met": v["rto_met"],
            "rpo_met": v["rpo_met"],
            "lost_met": v["lost_met"],
            "integrity_ok": v["integrity_ok"],
            "status": v["status"] if not interrupted else "interrupted",
            "breaches": v["breaches"],
            "error": self.error,
            "details": self.details,
        }


def _at(text: str | None) -> datetime | None:
    return parse_iso(text)


# -- shared pieces -------------------------------------------------------------------------------------------
def _seed_drill_data(run: DrillRun, rows: int = 1000) -> dict[str, Any]:
    """Deterministic rows written well before the fault; their checksum must survive recovery."""
    from psycopg import sql

    from voketag_ops.adapters.local import dr

    leader = run.env.primary()
    with leader.connect(dr.DR_DB) as conn:
        dr.ensure_schema(conn)
        conn.execute(
            "create table if not exists voke_dr.drill_data ("
            " run_id text not null, id int not null, payload text not null, primary key (run_id, id))"
        )
        # Rows of earlier runs whose clean-up failed (each run deletes only its own): no other
        # drill is running, as this one holds the DR lock.
        swept = {
            table: conn.execute(
                sql.SQL("delete from {} where run_id <> %s").format(sql.SQL(table)), (run.run_id,)
            ).rowcount
            for table in ("voke_dr.drill_data", "voke_dr.canary")
        }
        if any(swept.values()):
            run.details["rows_left_by_earlier_runs"] = swept
        conn.execute(
            "insert into voke_dr.drill_data select %s, g, md5(%s || g) from generate_series(1, %s) g",
            (run.run_id, run.run_id, rows),
        )
    where = sql.SQL("where run_id = {}").format(sql.Literal(run.run_id))
    run.on_cleanup("delete the drill's rows", lambda: _delete_drill_rows(run))
    return dr.table_checksum(leader, "voke_dr.drill_data", key="id", where=where)


def _delete_drill_rows(run: DrillRun) -> None:
    from voketag_ops.adapters.local import dr

    with run.env.primary().connect(dr.DR_DB) as conn:
        conn.execute("delete from voke_dr.drill_data where run_id = %s", (run.run_id,))
        conn.execute("delete from voke_dr.canary where run_id = %s", (run.run_id,))


def _drill_data_integrity(run: DrillRun, node: Any, before: dict[str, Any]) -> dict[str, Any]:
    from psycopg import sql

    from voketag_ops.adapters.local import dr

    where = sql.SQL("where run_id = {}").format(sql.Literal(run.run_id))
    after = dr.table_checksum(node, "voke_dr.drill_data", key="id", where=where)
    match = (after["rows"], after["checksum"]) == (before["rows"], before["checksum"])
    return {
        "table": "voke_dr.drill_data",
        "rows": after["rows"],
        "checksum": after["checksum"],
        "match": match,
        "expected_rows": before["rows"],
        "expected_checksum": before["checksum"],
        "node": node.name,
        "lsn": after["lsn"],
        "expected_lsn": before["lsn"],
        "detail": "rows written before the fault, checksummed before and after"
        if match
        else "checksum differs",
    }


def _canary_integrity(run: DrillRun, node: Any, rpo: dict[str, Any]) -> dict[str, Any]:
    """The canary rows on NODE: each one a write the canary attempted (lost ones count in RPO)."""
    from psycopg import sql

    from voketag_ops.adapters.local import dr

    where = sql.SQL("where run_id = {}").format(sql.Literal(run.run_id))
    summary = dr.table_checksum(node, "voke_dr.canary", key="seq", where=where)
    attempted = {w.seq for w in run.canary_writes()}
    recovered = set(dr.canary_rows(node, run.run_id))
    phantom = sorted(recovered - attempted)
    return {
        "table": "voke_dr.canary",
        "rows": summary["rows"],
        "checksum": summary["checksum"],
        "match": not phantom,
        "node": node.name,
        "lsn": summary["lsn"],
        "lost_acknowledged": rpo["lost_commits"],
        "detail": (
            f"{rpo['acked_commits']} acknowledged canary writes, {rpo['lost_commits']} of them lost"
            + (f", {len(phantom)} rows never written" if phantom else "")
        ),
    }


def _finish_canary_rpo(run: DrillRun, node: Any) -> dict[str, Any]:
    from voketag_ops.adapters.local import dr

    writes = run.canary_writes()
    recovered = dr.canary_rows(node, run.run_id)
    rpo = core.rpo_from_canary(writes, recovered)
    run.rpo, run.lost, run.rpo_source = rpo["rpo_seconds"], rpo["lost_commits"], "canary"
    run.canary_summary.update(
        lost_commits=rpo["lost_commits"],
        lost_seqs=rpo["lost_seqs"],
        last_acked_seq=rpo["last_acked_seq"],
        last_recovered_seq=rpo["last_recovered_seq"],
    )
    return rpo


def _restore_original_topology(run: DrillRun, leader: str) -> None:
    """Clean-up: whatever happened, end with LEADER writable and the other node streaming from it."""
    from voketag_ops.adapters.local import dr
    from voketag_ops.workflows import dr as dr_flow

    env = run.env
    pending = dr.unfinished_operation(env) or {}
    if pending.get("operation") == "failover":
        dr_flow.failover(run.settings, env, dry_run=False, progress=run.progress)
    elif pending.get("operation") == "failback":  # the failback drill's own, with its flags (none)
        dr_flow.failback(run.settings, env, dry_run=False, progress=run.progress)
    state = env.require_state()
    current = env.node(state.leader, state)
    if not current.running and state.leader not in dr.fenced_nodes(env):
        env.up(run.progress)  # the fault stopped the leader and recovery never ran: start it again
    standby = env.node(state.follower, state)
    if state.leader == leader and dr.in_recovery(standby) is True:
        with suppress(VokeError):
            dr.wait_caught_up(env.primary(), standby, timeout=30)
            return
    dr_flow.failback(
        run.settings, env, dry_run=False, switch_back=state.leader != leader, progress=run.progress
    )


# -- scenarios ------------------------------------------------------------------------------------------------
def _pitr(run: DrillRun) -> None:
    from voketag_ops.adapters.local import dr
    from voketag_ops.workflows import dr as dr_flow

    env, settings = run.env, run.settings
    leader = env.primary()
    with run.step("seed: load a sample factory batch (voke ingest) and drill rows") as info:
        batch = _seed_batch(run)
        info.update({k: batch[k] for k in ("batch_id", "rows", "merkle_root")})
        data_before = _seed_drill_data(run)
    run.details["seed"] = {k: v for k, v in batch.items() if k != "conninfo"}
    run.start_canary()
    time.sleep(run.lead)
    target = dr.utcnow()
    run.details["target"] = iso(target)
    time.sleep(run.lead / 2)
    _keep_rows_aside(run, batch)
    run.preparing = False
    with run.step(f"fault: delete batch {batch['batch_id']}'s tags (the corrupting statement)") as info:
        with leader.connect(batch["dbname"]) as conn:
            before = instant()
            conn.execute("delete from ingest.tags where batch_id = %s", (batch["batch_id"],))
            run.mark("fault_injected_at", before)
            left = conn.execute(
                "select count(*) from ingest.tags where batch_id = %s", (batch["batch_id"],)
            ).fetchone()
        info["rows_left"] = left[0] if left else None
    run.mark("detected_at")
    time.sleep(run.lead * 0.3)
    run.stop_canary()
    name = f"drill-{run.run_id.rsplit('-', 1)[-1]}-{run.started_at:%H%M%S}"
    if (
        run.rows_record is not None
    ):  # a kill from here on leaves a restored instance: named for the next drill
        record, doc = run.rows_record
        doc.update(restore=name, keep_restore=bool(run.options.get("keep_restore")))
        replace_json(record, doc, indent=None)
    run.mark("recovery_started_at")
    with run.step("recover: voke dr restore --to TARGET into a new instance") as info:
        report = dr_flow.restore(
            settings, env, to=iso(target) or "", name=name, dry_run=False, progress=run.progress
        )
        info.update(
            name=name,
            port=report["port"],
            stop_point=report["stop_point"]["stopped"],
            backup=report["backup"]["label"],
        )
    if not run.options.get("keep_restore"):
        run.on_cleanup(
            f"discard the restored instance {name}",
            lambda: dr_flow.discard(settings, env, name=name, dry_run=False, by=f"drill {run.run_id}"),
        )
    run.on_cleanup(
        f"repair batch {batch['batch_id']} on the leader from the restored instance",
        lambda: _repair_batch(run, name, batch),
    )
    run.details["restore"] = {
        k: report[k] for k in ("name", "port", "target", "stop_point", "backup", "timings")
    }
    run.mark("recovered_at", _at(report["promoted_at"]))
    run.mark("first_write_ok_at", _at(report["first_write_at"]))
    _, restored = dr.get_restore(env, name)
    with run.step("verify: canary rows, the batch's rows and Merkle root, drill rows") as info:
        commit_times = dr.canary_rows(leader, run.run_id)
        check = core.pitr_canary_check(
            commit_times,
            dr.canary_rows(restored, run.run_id),
            target,
            last_restored_commit=_at(report["stop_point"].get("last_transaction_at")),
        )
        run.rpo, run.lost, run.rpo_source = check["rpo_seconds"], check["lost_commits"], check["rpo_from"]
        run.canary_summary.update(
            last_restored_commit_at=iso(check["last_restored_commit_at"]),
            rpo_from=check["rpo_from"],
            lost_commits=check["lost_commits"],
            committed_before_target=check["committed_before_target"],
            committed_after_target=check["committed_after_target"],
            present_after_target=check["present_after_target"],
        )
        run.integrity.append(
            {
                "table": "voke_dr.canary",
                "rows": check["restored"],
                "checksum": None,
                "match": check["ok"],
                "node": restored.name,
                "lsn": dr.wal_position(restored),
                "detail": f"{check['committed_before_target']} committed before the target, all restored; "
                f"{check['committed_after_target']} after, none restored"
                if check["ok"]
                else core.pitr_check_detail(check),
            }
        )
        run.integrity.append(_batch_integrity(restored, batch))
        run.integrity.append(_drill_data_integrity(run, restored, data_before))
        info["ok"] = all(i["match"] for i in run.integrity)
    run.mark("verified_at")


def _seed_batch(run: DrillRun) -> dict[str, Any]:
    """A sample factory batch through `voke ingest`: validated, loaded and sealed."""
    from voketag_ops.adapters.local.dr import utcnow
    from voketag_ops.workflows import ingest

    conninfo = run.env.platform_database()
    dbname = conninfo.rsplit("dbname=", 1)[-1].split()[0]
    seed = int(uuid.uuid4().int % 1_000_000)
    with tempfile.TemporaryDirectory(prefix="voke-drill-") as tmp:
        path = Path(tmp) / f"drill-{run.run_id}.csv"
        ingest.make_sample(path, rows=SEED_ROWS, seed=seed)
        report = ingest.load_batch(
            conninfo, path, settings=run.settings.ingest, now=utcnow(), audit_home=run.env.home
        )
    if report.status != "loaded" or report.batch_id is None:
        raise VokeError(f"seeding the drill failed: ingest {report.status} ({report.error_count} problems)")
    return {
        "batch_id": report.batch_id,
        "rows": report.rows_loaded,
        "merkle_root": report.merkle_root,
        "dbname": dbname,
        "conninfo": conninfo,
        "sample_seed": seed,
    }


def batch_root(node: Any, dbname: str, batch_id: int) -> dict[str, Any]:
    """Recompute a sealed batch's Merkle root from its rows on NODE; compare with the stored root."""
    from voketag_ops.core import ingest as ingest_core
    from voketag_ops.core.wal import WAL_POSITION_SQL

    cols = ingest_core.CANONICAL_COLUMNS
    with node.connect(dbname, timeout=10) as conn:
        rows = conn.execute(
            f"select {', '.join(cols)} from ingest.tags where batch_id = %s order by leaf_index", (batch_id,)
        ).fetchall()
        stored = conn.execute(
            "select merkle_root, " + WAL_POSITION_SQL + " from ingest.batches where batch_id = %s",
            (batch_id,),
        ).fetchone()
    seal, _ = ingest_core.seal_leaves(
        ingest_core.canonical_leaf(dict(zip(cols, row, strict=True))) for row in rows
    )
    return {
        "rows": len(rows),
        "root": seal.root.hex(),
        "stored_root": bytes(stored[0]).hex() if stored else None,
        "lsn": stored[1] if stored else None,
    }


def _batch_integrity(node: Any, batch: dict[str, Any]) -> dict[str, Any]:
    got = batch_root(node, batch["dbname"], batch["batch_id"])
    match = got["root"] == batch["merkle_root"] == got["stored_root"] and got["rows"] == batch["rows"]
    return {
        "table": f"ingest.tags (batch {batch['batch_id']})",
        "rows": got["rows"],
        "checksum": got["root"],
        "match": match,
        "node": node.name,
        "lsn": got["lsn"],
        "expected_rows": batch["rows"],
        "expected_checksum": batch["merkle_root"],
        "detail": "Merkle root recomputed from the restored rows equals the sealed root"
        if match
        else f"recomputed root {got['root'][:16]}… vs sealed {batch['merkle_root'][:16]}…",
    }


def _keep_rows_aside(run: DrillRun, batch: dict[str, Any]) -> None:
    """Before the fault, a copy of the batch's rows (a few hundred KB), on disk in VOKE_HOME/dr
    with a record naming them: a drill stopped before its repair (Ctrl-C, SIGTERM, a failed
    restore) puts them back at clean-up rather than leaving the batch empty on the leader, and
    one killed outright (kill -9) leaves the record, which `dr check` reports and the next
    drill acts on first (``put_back_rows_left``). The copy stays locked while this drill
    lives: a record whose copy nobody holds is a killed drill's. The repair, registered
    later, runs first; rows already there are left as they are."""
    import fcntl

    from voketag_ops.adapters.local import dr

    batch_id = batch["batch_id"]
    directory = dr.dr_dir(run.env)
    rows = directory / f"drill-rows-{run.run_id}.copy"
    record = directory / f"drill-rows-{run.run_id}.json"
    held = open_private(rows)  # closed by the clean-up, which releases the lock
    fcntl.flock(held, fcntl.LOCK_EX)
    with (
        run.env.primary().connect(batch["dbname"]) as conn,
        conn.cursor().copy(
            "copy (select * from ingest.tags where batch_id = %s) to stdout", (batch_id,)
        ) as out,
    ):
        for data in out:
            held.write(data)
        held.flush()
        os.fsync(held.fileno())
    doc = {"run_id": run.run_id, "batch_id": batch_id, "dbname": batch["dbname"], "rows": batch["rows"]}
    doc["file"] = rows.name
    replace_json(record, doc, indent=None)  # last, and whole: a record always has its rows
    run.rows_record = (record, doc)

    def put_back() -> None:
        # Quick and the last copy of those rows: no signal cuts it short (one that comes
        # counts in run_cleanups' own hold, which marks the run interrupted).
        with interrupts.Held(), held:
            put = _put_back(run.env, doc | {"record": str(record)})
        if put:
            run.details["rows_put_back"] = put  # committed

    run.on_cleanup(f"put batch {batch_id}'s rows back on the leader unless repaired", put_back)


def _put_back(env: LocalEnvironment, doc: dict[str, Any]) -> int:
    """Put a record's rows back into ingest.tags unless its batch has rows (repaired, or never
    deleted) or is gone, and only those whose tag_id no later load has taken meanwhile; then
    remove the record and its rows. How many rows were put back."""
    import psycopg

    record = Path(doc["record"])
    rows = record.with_name(str(doc["file"]))
    put = 0
    try:
        with env.primary().connect(str(doc["dbname"])) as conn, conn.transaction():
            batch = (doc["batch_id"],)
            exists = conn.execute("select 1 from ingest.batches where batch_id = %s", batch).fetchone()
            count = conn.execute("select count(*) from ingest.tags where batch_id = %s", batch).fetchone()
            if exists and not (count and count[0]):
                conn.execute("create temporary table voke_rows_back (like ingest.tags) on commit drop")
                with open(rows, "rb") as kept, conn.cursor().copy("copy voke_rows_back from stdin") as into:
                    while data := kept.read(1 << 16):
                        into.write(data)
                put = conn.execute(
                    "insert into ingest.tags select * from voke_rows_back on conflict (tag_id) do nothing"
                ).rowcount
    except psycopg.Error as exc:
        detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise BackendError(f"putting back batch {doc['batch_id']}'s rows failed: {detail}") from None
    record.unlink(missing_ok=True)  # the record first: rows without one are never read
    rows.unlink(missing_ok=True)
    return max(put, 0)


def put_back_rows_left(
    settings: Settings, env: LocalEnvironment, scenario: str, progress: Progress = _quiet
) -> list[dict[str, Any]]:
    """The rows killed pitr drills deleted as their fault and never put back, put back (the
    next drill, SCENARIO, does this first, under the DR lock), their restored instances
    discarded (audited as `dr.discard`, `by` that drill: `voke dr discard NAME` run after it
    knows the name), and copies a drill killed before writing their record removed; what was
    done, for its journal (`restore`: the instance discarded, or null)."""
    from voketag_ops.adapters.local import dr
    from voketag_ops.workflows import dr as dr_flow

    done = []
    for doc in dr.drill_rows_left(env):
        progress(f"putting back batch {doc['batch_id']}'s rows (left by the killed drill {doc['run_id']})")
        put = _put_back(env, doc)  # fewer than its rows: tag_ids a later load took meanwhile
        name = doc.get("restore")
        discarded = None
        # its restored instance, started or half-made (none: killed before its restore made it)
        if name and not doc.get("keep_restore") and dr.find_restore(env, str(name)) is not None:
            with suppress(VokeError):
                by = f"drill {scenario}, cleaning up after the killed drill {doc['run_id']}"
                dr_flow.discard(settings, env, name=str(name), dry_run=False, by=by)
                discarded = str(name)
        done.append(
            {"run_id": doc["run_id"], "batch_id": doc["batch_id"], "rows": doc["rows"], "rows_put_back": put,
             "restore": discarded}
        )  # fmt: skip
    directory = env.home / "dr"
    for copy in directory.glob("drill-rows-*.copy"):
        if not copy.with_suffix(".json").exists() and not dr.rows_in_use(copy):
            copy.unlink(missing_ok=True)
    return done


def _repair_batch(run: DrillRun, name: str, batch: dict[str, Any]) -> None:
    """What an operator does after PITR: copy the lost rows back from the restored instance."""
    from voketag_ops.adapters.local import dr

    _, restored = dr.get_restore(run.env, name)
    leader = run.env.primary()
    with restored.connect(batch["dbname"]) as src, leader.connect(batch["dbname"]) as dst, dst.transaction():
        dst.execute("delete from ingest.tags where batch_id = %s", (batch["batch_id"],))
        with (
            src.cursor().copy(
                "copy (select * from ingest.tags where batch_id = %s) to stdout", (batch["batch_id"],)
            ) as out,
            dst.cursor().copy("copy ingest.tags from stdin") as into,
        ):
            for data in out:
                into.write(data)
    check = _batch_integrity(leader, batch)
    run.details["repair"] = {"rows": check["rows"], "root_matches": check["match"]}
    if not check["match"]:
        raise VokeError(f"the repaired batch on the leader does not match its seal: {check['detail']}")


def _failover(run: DrillRun) -> None:
    from voketag_ops.adapters.local import dr
    from voketag_ops.workflows import dr as dr_flow

    env, settings = run.env, run.settings
    original = env.require_state().leader
    with run.step("seed: drill rows written before the fault"):
        data_before = _seed_drill_data(run)
    run.start_canary()
    with run.step("check: the standby has replayed everything the leader wrote"):
        dr.wait_caught_up(env.primary(), env.standby(), timeout=30)
    time.sleep(run.lead)
    leader = env.primary()
    # Only now is the topology touched: a run aborted before this leaves it as it was.
    run.preparing = False
    run.on_cleanup(
        f"restore the topology ({original} leads, the other streams)",
        lambda: _restore_original_topology(run, original),
    )
    with run.step(f"fault: pg_ctl stop -m immediate on the leader ({leader.name})"):
        run.mark("fault_injected_at")
        leader.stop(mode="immediate")
    with run.step("detect: probe the leader until it stops answering"):
        run.mark("detected_at", dr.detect_down(leader, timeout=30))
    run.mark("recovery_started_at")
    with run.step("recover: voke dr failover") as info:
        report = dr_flow.failover(settings, env, dry_run=False, progress=run.progress)
        info.update(new_leader=report["new_leader"], steps=[s["name"] for s in report["steps"]])
    run.details["failover"] = report
    promoted = run.mark("recovered_at", _at(report["promoted_at"]))
    serving = run.mark("services_back_at", _at(report["services_back_at"]))
    # A write sent just after the fault mark can still commit on the old leader before the
    # immediate stop lands (CI saw first_write -0.31 s): the write that counts is the new
    # leader's, and the canary reaches it only after the promotion (voke records the leader then).
    # The canary follows the recorded leader at once, the services only once repointed: the RTO
    # ends with the first write sent once both are back (it measured 0.47 s, /health 503 to 1.02 s).
    first = run.wait_first_write(max(promoted, serving))
    run.mark("first_write_ok_at", first.done_at)
    time.sleep(run.lead / 2)
    run.stop_canary()
    new = env.primary()
    with run.step("verify: acknowledged commits and drill rows on the new leader") as info:
        rpo = _finish_canary_rpo(run, new)
        run.integrity.append(_canary_integrity(run, new, rpo))
        run.integrity.append(_drill_data_integrity(run, new, data_before))
    # Before the clean-up rewinds the old leader: every transaction its WAL holds past the
    # switch point was lost, the canary's (one every 100 ms) or not.
    with run.step(f"measure: commits in {leader.name}'s WAL past the switch point (pg_waldump)") as info:
        info.update(_lost_from_wal(run, leader, new, report))
    run.mark("verified_at")


def _lost_from_wal(run: DrillRun, old: Any, new: Any, report: Mapping[str, Any]) -> dict[str, Any]:
    """RPO and lost commits of a failover from OLD's WAL past the switch point (see
    dr.commits_past_switch); the canary's figures (already in RUN) stand, `rpo_source`
    `canary`, when that WAL cannot be read."""
    from voketag_ops.adapters.local import dr

    try:
        lost = dr.commits_past_switch(run.env, old, new)
    except VokeError as exc:
        run.details["lost_transactions"] = {"error": exc.message}
        log.warning("the lost commits come from the canary alone: %s", exc.message)
        return {"rpo_source": "canary", "error": exc.message}
    promoted: Mapping[str, Any] = next(
        (s for s in report.get("steps", []) if s["name"].startswith("promote ")), {}
    )
    kept = lost["last_replayed_commit_at"] or _at((promoted.get("detail") or {}).get("last_replayed_commit"))
    run.rpo = core.rpo_from_wal(lost["newest_lost_commit_at"], kept, lost["first_lost_commit_at"])
    run.lost, run.rpo_source = lost["commits"], "wal"
    doc = {
        **lost,
        "first_lost_commit_at": iso(lost["first_lost_commit_at"]),
        "newest_lost_commit_at": iso(lost["newest_lost_commit_at"]),
        "last_replayed_commit_at": iso(kept),
        "lost_canary_rows": run.canary_summary.get("lost_commits"),
    }
    run.details["lost_transactions"] = doc
    return {"rpo_source": "wal", "lost_commits": run.lost, "rpo_seconds": run.rpo, **doc}


def _failback(run: DrillRun) -> None:
    from voketag_ops.adapters.local import dr
    from voketag_ops.workflows import dr as dr_flow

    env, settings = run.env, run.settings
    original = env.require_state().leader
    with run.step("seed: drill rows"):
        data_before = _seed_drill_data(run)
    run.preparing = False  # the setup failover is this drill's disruption
    run.on_cleanup(
        f"restore the topology ({original} leads, the other streams)",
        lambda: _restore_original_topology(run, original),
    )
    with run.step("setup: fail over first (voke dr failover)") as info:
        report = dr_flow.failover(settings, env, dry_run=False, progress=run.progress)
        info["new_leader"] = report["new_leader"]
    run.start_canary()
    time.sleep(run.lead)
    started = instant()
    with run.step("recover: voke dr failback (rebuild, catch up, planned switchover)") as info:
        back = dr_flow.failback(settings, env, dry_run=False, progress=run.progress)
        info.update(method=back["rebuilt"].get("method"), leader=back["leader"])
    swap = back.get("switchover") or {}
    run.details["failback"] = {
        "rebuilt": back["rebuilt"],
        "started_at": iso(started),
        "duration_seconds": back["duration_seconds"],
        "write_pause_seconds": swap.get("write_pause_seconds"),
        "steps": back["steps"],
    }
    stopped = _at(swap.get("writes_stopped_at")) or started
    run.mark("fault_injected_at", stopped)  # the planned disruption: writes stop here
    run.mark("detected_at", stopped)
    run.mark("recovery_started_at", stopped)
    promoted = run.mark("recovered_at", _at(swap.get("promoted_at")) or stopped)
    serving = run.mark("services_back_at", _at(swap.get("services_back_at")) or promoted)
    # A write sent just after the stop began can still land on the old leader before it is
    # down (a fast shutdown lets a commit under way finish): the first write that counts is
    # the new leader's, so one sent after the promotion (it measured RTO 0.01 s, phases < 0),
    # and once the services are back on it too (as in the failover drill).
    first = run.wait_first_write(max(stopped, promoted, serving))
    run.mark("first_write_ok_at", first.done_at)
    time.sleep(run.lead / 2)
    run.stop_canary()
    leader, standby = env.primary(), env.standby()
    with run.step("verify: nothing lost; leader and standby hold the same rows") as info:
        rpo = _finish_canary_rpo(run, leader)
        run.integrity.append(_canary_integrity(run, leader, rpo))
        run.integrity.append(_drill_data_integrity(run, leader, data_before))
        dr.wait_caught_up(leader, standby, timeout=60)
        run.integrity.append(_same_on_standby(run, leader, standby))
        info.update(lost_commits=rpo["lost_commits"], leader=leader.name)
    run.mark("verified_at")


def _same_on_standby(run: DrillRun, leader: Any, standby: Any) -> dict[str, Any]:
    from psycopg import sql

    from voketag_ops.adapters.local import dr

    where = sql.SQL("where run_id = {}").format(sql.Literal(run.run_id))
    a = dr.table_checksum(leader, "voke_dr.canary", key="seq", where=where)
    b = dr.table_checksum(standby, "voke_dr.canary", key="seq", where=where)
    same = (a["rows"], a["checksum"]) == (b["rows"], b["checksum"])
    return {
        "table": "voke_dr.canary (leader vs standby)",
        "rows": a["rows"],
        "checksum": a["checksum"],
        "match": same,
        "node": f"{leader.name}/{standby.name}",
        "lsn": a["lsn"],
        "standby_lsn": b["lsn"],
        "detail": "standby identical to the leader"
        if same
        else f"standby has {b['rows']} rows, {b['checksum']}",
    }


def _network(run: DrillRun) -> None:
    from voketag_ops.adapters.local import dr

    env = run.env
    outage = run.options.get("outage_seconds")
    outage = float(run.settings.dr.network_outage_seconds if outage is None else outage)
    with run.step("seed: drill rows"):
        data_before = _seed_drill_data(run)
    run.start_canary(write_timeout=1.0)
    time.sleep(run.lead)
    leader = env.primary()
    run.preparing = False
    # Registered before the freeze: an interrupt (Ctrl-C, SIGTERM, a closed terminal's SIGHUP) that
    # lands once its record is written, mid-freeze or just after, must still thaw what it stopped.
    run.on_cleanup("thaw the leader (SIGCONT)", lambda: dr.thaw(env, leader.name))
    with run.step(f"fault: freeze the leader ({leader.name}) for {outage:g} s (SIGSTOP)") as info:
        run.mark("fault_injected_at")
        pids = dr.freeze_node(env, leader, by=run.run_id)
        info["pids"] = len(pids)
    with run.step("detect: probe the leader until it stops answering"):
        run.mark("detected_at", dr.detect_down(leader, timeout=30, probe_timeout=1.0))
    decision = (
        f"outage planned for {outage:g} s, below the network RTO of {run.targets.rto_target_seconds:g} s: "
        "wait for the network instead of failing over (a failover would split writes)"
    )
    run.details["decision"] = decision
    remaining = outage - (instant() - run.timeline["fault_injected_at"]).total_seconds()  # type: ignore[operator]
    if remaining > 0:
        time.sleep(remaining)
    with run.step("recover: the network returns (SIGCONT)"):
        run.mark("recovery_started_at")
        dr.thaw(env, leader.name)
    with run.step("reconnect: the leader answers a write again"):
        dr.wait_until(lambda: dr.probe_write(leader, timeout=2), "the leader to take writes", timeout=60)
        answered = instant()
    thawed: datetime = run.timeline["recovery_started_at"]  # type: ignore[assignment]
    # the canary's own write may be answered before voke's probe: the leader took writes then
    recovered = run.mark("recovered_at", min(answered, run.wait_first_write(thawed).done_at))
    # As in the failover drill, the platform is back once its services answer too: the RTO ends
    # with the first write sent once they do (a service that died meanwhile fails the drill here).
    timeout = run.settings.rotation.health_timeout
    services_down: str | None = None
    try:
        with run.step(f"services: every service answers /health again (at most {timeout:g} s)"):
            try:
                dr.wait_until(lambda: not unhealthy_services(run.settings), "the services", timeout=timeout)
            except BackendError:
                down = ", ".join(unhealthy_services(run.settings)) or "none now"
                raise BackendError(
                    f"service(s) not healthy {timeout:g} s after the leader answered again: {down}"
                ) from None
            serving = run.mark("services_back_at")
    except BackendError as exc:
        # No RTO (the platform is not back), but what the canary saw is still measured and
        # verified below; the drill fails with this as its error after that.
        services_down = exc.message
    else:
        run.mark("first_write_ok_at", run.wait_first_write(max(recovered, serving)).done_at)
    time.sleep(run.lead / 2)
    writes = run.stop_canary()
    fault = run.timeline["fault_injected_at"]
    assert fault is not None
    during = [w for w in writes if not w.ok and w.sent_at >= fault]
    run.details["service_errors"] = {
        "failed_writes": len(during),
        "first_error_at": iso(during[0].done_at) if during else None,
        "last_error_at": iso(during[-1].done_at) if during else None,
        "reconnect_seconds": core.seconds_between(thawed, recovered),
    }
    with run.step("verify: acknowledged commits and drill rows"):
        rpo = _finish_canary_rpo(run, leader)
        run.integrity.append(_canary_integrity(run, leader, rpo))
        run.integrity.append(_drill_data_integrity(run, leader, data_before))
    run.mark("verified_at")
    if services_down:
        raise BackendError(services_down)


SCENARIO_RUNNERS: dict[str, Callable[[DrillRun], None]] = {
    "pitr": _pitr,
    "failover": _failover,
    "failback": _failback,
    "network": _network,
}
PLANS = {
    "pitr": [
        "check the steady state",
        "load a sample factory batch with voke ingest (sealed Merkle root) and drill rows",
        "start the canary writer (a row every 100 ms)",
        "pick the target T, then delete the batch's tags (the corruption)",
        "voke dr restore --to T into a new instance; measure RTO to its first write",
        "verify canary rows (all before T, none after), the batch's Merkle root, drill rows",
        "repair the batch on the leader from the restored instance; discard it",
    ],
    "failover": [
        "check the steady state; seed drill rows; start the canary writer",
        "pg_ctl stop -m immediate on the leader; detect it",
        "voke dr failover (fence, promote, repoint, verify); measure RTO to the canary's first write "
        "once the services are back",
        "RPO from the old leader's WAL (pg_waldump past the switch point): every commit lost, "
        "the canary's or any client's, and the span they cover (the canary's log if that WAL "
        "cannot be read)",
        "clean up: voke dr failback (pg_rewind, catch up, switch back)",
    ],
    "failback": [
        "check the steady state; voke dr failover (setup)",
        "start the canary writer; voke dr failback: rebuild, catch up, planned switchover",
        "RTO = write pause of the switchover, to the first write once the services are back; "
        "verify nothing lost and the standby matches the leader",
    ],
    "network": [
        "check the steady state; seed drill rows; start the canary writer",
        "SIGSTOP the leader for dr.network_outage_seconds; detect it; wait (no failover)",
        "SIGCONT; measure reconnection and the canary's failed writes; verify nothing lost",
    ],
}


PROMOTING = ("failover", "failback")  # the drills that promote the standby


def refuse_without_standby(
    settings: Settings, env: LocalEnvironment, scenario: str, *, started: bool
) -> None:
    """PreconditionError (exit 5) before drill SCENARIO changes anything when it promotes the
    standby (failover, failback, all) and there is none to promote, as `dr failover` refuses:
    no replica configured (`local.replica` false), or the follower not running as a standby,
    with the hint `doctor` gives for it (frozen, fenced, not a standby, writable). Not STARTED
    yet (a dry run, or before the run's `env up`), a follower that `env up` would start as a
    standby is left to the run, which checks again once STARTED."""
    from voketag_ops.adapters.local.environment import node_status, node_trouble, starts_as_standby

    if scenario not in (*PROMOTING, "all"):
        return
    what = "the failover and failback drills need" if scenario == "all" else f"drill {scenario} needs"
    hint = "`voke drill run pitr` and `voke drill run network` need none" if scenario == "all" else None
    if not settings.local.replica:
        raise PreconditionError(
            f"{what} a standby to promote: no replica is configured (local.replica is false); "
            "nothing to promote",
            hint="set local.replica = true (or VOKE_LOCAL__REPLICA=true) and run `voke env up`"
            + (f"; {hint}" if hint else ""),
        )
    state = env.state()
    if state is None:  # the run's `env up` creates the replica
        return
    standby, fenced = node_status(env.node(state.follower, state)), env.fenced()
    if standby["running"] and standby["role"] == "replica":
        return
    if not started and starts_as_standby(standby, fenced=fenced):
        return
    from voketag_ops.adapters.local.dr import operation_to_report

    said, fix = node_trouble("replica", standby, fenced=fenced, pending=operation_to_report(env))
    raise PreconditionError(
        f"{what} a standby to promote: the standby {standby['name']} is not running as a standby; "
        f"nothing to promote ({said}; `voke dr status` shows the topology)",
        hint=fix + (f"; {hint}" if hint else ""),
    )


def unsteady(steady: Mapping[str, Any]) -> str | None:
    """Why the steady state STEADY, checked before a drill, does not hold (None: it does): the
    error of the run it aborts, and of a dry run that would be."""
    if steady["ok"]:
        return None
    failed = [c["message"] for c in steady["checks"] if not c["ok"]]
    return "steady state before the drill: " + "; ".join(failed)


def drive(
    run: Any,
    label: str,
    *,
    progress: Progress,
    before: Callable[[], dict[str, Any]],
    scenario: Callable[[], None],
    after: Callable[[], dict[str, Any]],
    after_interrupt: bool,
) -> bool:
    """The frame every drill runs in, local or cloud: the steady state BEFORE (an unsteady
    system is not drilled: status `aborted`, as a run whose SCENARIO fails while
    `run.preparing`, before its fault), the SCENARIO, the run's clean-ups whatever
    happened (an error, a bug, Ctrl-C), then the steady state AFTER (also after Ctrl-C when
    AFTER_INTERRUPT). Failures land in run.status / run.error for the journal. Returns True
    when interrupted (the caller saves the journal, then re-raises)."""
    interrupted = False
    cut: Interrupted | None = None  # a DR step the interrupt stopped part-way
    try:
        progress(f"{label}: checking the steady state")
        run.steady_before = before()
        why = unsteady(run.steady_before)
        if why is not None:
            run.status = "aborted"
            run.error = why
        else:
            scenario()
    except (KeyboardInterrupt, Interrupted) as exc:  # (a DR step turns it into Interrupted, exit 130)
        interrupted = True
        run.status = "interrupted"
        run.error = f"{interrupts.stopped_by()}; clean-up ran"
        cut = exc if isinstance(exc, Interrupted) else None
    except VokeError as exc:
        run.error = f"{exc.type_name}: {exc.message}"
        if run.preparing:  # before its fault: nothing was drilled, so nothing to judge
            run.status = "aborted"
            run.error = f"before the fault: {run.error}"
    except Exception as exc:  # a bug mid-drill: still clean up and keep the journal
        log.exception("%s failed unexpectedly", label)
        run.error = f"internal error ({type(exc).__name__}): {exc}"
    finally:
        run.run_cleanups()
        if cut is not None:  # its hint said what to finish before the clean-up, which may have
            left = run.left_to_finish(cut)  # finished it: the journal tells what is left now
            run.error += f": {cut.message}" + (
                f" ({left})" if left else "; the clean-up finished it" if cut.hint else ""
            )
        if run.cleanup_interrupted and not interrupted:  # stopped all the same: say so, exit 130
            interrupted = True
            run.status = "interrupted"
            run.error = "interrupted during the clean-up (see its steps)"
        if run.status != "aborted" and (after_interrupt or not interrupted):
            try:
                run.steady_after = after()
            except KeyboardInterrupt:  # the final check cut short: the run reads as interrupted
                interrupted = True
                run.status = "interrupted"
                run.error = run.error or "interrupted during the final steady-state check"
                run.steady_after = {
                    "ok": False,
                    "checks": [{"name": "steady", "ok": False, "message": "interrupted"}],
                }
            except Exception as exc:  # a check that cannot run is a failed check, never a crash
                message = exc.message if isinstance(exc, VokeError) else f"{type(exc).__name__}: {exc}"
                run.steady_after = {
                    "ok": False,
                    "checks": [{"name": "steady", "ok": False, "message": message}],
                }
    return interrupted


def journal_event(event: Any, journal: Mapping[str, Any], **details: Any) -> None:
    """A drill's audit event says how its journal ended: status, RTO, RPO (and DETAILS)."""
    event.details.update(
        status=journal["status"],
        rto_seconds=journal["rto_seconds"],
        rpo_seconds=journal["rpo_seconds"],
        **details,
    )
    event.result = "success" if journal["status"] == "completed" else journal["status"]


def run_drill(
    settings: Settings,
    env: LocalEnvironment,
    scenario: str,
    *,
    progress: Progress = _quiet,
    options: dict[str, Any] | None = None,
    saved: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """Run one drill end to end; returns its journal (also saved, and appended to SAVED). Ctrl-C
    cleans up, saves the journal as `interrupted` and raises Interrupted naming it."""
    from voketag_ops.adapters.local import dr
    from voketag_ops.audit import audited
    from voketag_ops.workflows.dr import require_local

    require_local(settings)
    if scenario not in SCENARIO_RUNNERS:
        raise UsageError(f"unknown drill {scenario!r} (one of {', '.join(core.SCENARIOS)}, all)")
    from voketag_ops.workflows.env import ensure_local

    interrupted = False
    # On record from the first check: a refusal (exit 5) is a `failure` event too.
    with audited(env.home, event_type=f"drill.{scenario}", env="local", target=scenario) as event:
        if env.exists:
            dr.refuse_if_unfinished(env)  # exit 5 naming the resume, before anything starts
        refuse_without_standby(settings, env, scenario, started=False)  # (before env up starts it)
        ensure_local(settings, progress)
        with (
            dr.dr_lock(env, f"drill {scenario}"),
            measuring(),  # the run's timeline, canary and DR reports on one steady clock
        ):
            dr.refuse_if_unfinished(env)  # (again, under the lock: a failover killed meanwhile)
            if scenario in PROMOTING:  # refused before the fault, not after it
                from voketag_ops.workflows.dr import refuse_if_rotating_locally

                refuse_if_rotating_locally(settings)
                refuse_without_standby(settings, env, scenario, started=True)
            thawed = dr.thaw_left(env, progress)  # a node a killed network drill left frozen, first
            # before the steady state, which counts them
            left = put_back_rows_left(settings, env, scenario, progress)
            run = DrillRun(settings, env, scenario, progress, options or {})
            event.details["run_id"] = run.run_id
            if thawed:
                run.details["frozen_by_killed_drills"] = thawed
            if left:
                run.details["rows_left_by_killed_drills"] = left
            try:
                interrupted = drive(
                    run,
                    f"drill {scenario}",
                    progress=progress,
                    before=lambda: steady_state(settings, env, wait=30),
                    scenario=lambda: SCENARIO_RUNNERS[scenario](run),
                    # After a Ctrl-C, look without waiting: the user wants out.
                    after=lambda: steady_state(settings, env, wait=0 if run.status == "interrupted" else 60),
                    after_interrupt=True,
                )
            finally:
                journal = run.journal()
                path = save_journal(env, journal)
                if saved is not None:
                    saved.append(journal)
            journal_event(event, journal)
    signal = interrupts.stopped_by()
    stuck = next((s for s in run.cleanup_steps if s.exit_code == ExitCode.NEEDS_OPERATOR), None)
    if stuck is not None:  # exit 7 (after Ctrl-C too): the topology needs a person, which 130 hides
        notice = dr.operation_notice(env)
        raise NeedsOperatorError(
            (f"{signal}: " if interrupted else "")
            + f"drill {scenario} {journal['run_id']} could not clean up: {stuck.name}: "
            + f"{stuck.detail.get('error')} (journal {path})",
            hint=(f"{notice}; " if notice else "") + f"its journal: voke drill report {journal['run_id']}",
        )
    if interrupted:  # exit 130, naming the journal saved as `interrupted`
        notice = dr.operation_notice(env)  # a failover or failback the drill ran, cut short
        finish = f"; {notice}" if notice else ""
        raise Interrupted(
            f"{signal}: drill {scenario} {journal['run_id']} stopped after its clean-up (journal {path})",
            hint=f"its journal: voke drill report {journal['run_id']}{finish}",
        )
    return journal


@dataclass(frozen=True)
class RunOutcome:
    """What `run` reports, and the error that ended it (None: every scenario ran)."""

    report: dict[str, Any]
    error: VokeError | None = None


def run(
    settings: Settings,
    env: LocalEnvironment,
    scenario: str,
    *,
    dry_run: bool = False,
    progress: Progress = _quiet,
    options: dict[str, Any] | None = None,
) -> RunOutcome:
    """`voke drill run SCENARIO|all`: one journal, or {"runs": [...]} for all. A drill that
    raises once its journal was saved (Ctrl-C, a clean-up that needs a person) ends the run: the
    journal saved (for `all`: the journals saved, an interrupted drill's among them), with its
    error. A dry run is refused as the run would be before it starts (exit 5), and changes
    nothing."""
    from voketag_ops.workflows.dr import require_local

    require_local(settings)
    scenarios = list(core.SCENARIOS) if scenario == "all" else [scenario]
    for name in scenarios:
        if name not in SCENARIO_RUNNERS:
            raise UsageError(f"unknown drill {name!r} (one of {', '.join(core.SCENARIOS)}, all)")
    from contextlib import ExitStack

    from voketag_ops.adapters.local import dr
    from voketag_ops.audit import audited

    if dry_run:
        if env.exists:  # refused as the run is: another DR operation running, or one to resume,
            dr.refuse_if_busy(env)  # and a failover or failback while a rotation is unfinished
            if set(PROMOTING) & set(scenarios):
                from voketag_ops.workflows.dr import refuse_if_rotating_locally

                refuse_if_rotating_locally(settings)
        refuse_without_standby(settings, env, scenario, started=False)  # and without a standby
        return RunOutcome({"dry_run": True, "plan": {name: PLANS[name] for name in scenarios}})

    journals: list[dict[str, Any]] = []
    # Held once around every scenario (re-entrant: each run_drill takes it again inside), so
    # nothing slips in between them; refused (another DR operation holds it, or `all` has no
    # standby for its failover and failback: refused before pitr runs, not after it), the drill
    # is on record as a `failure` event, as run_drill's own refusals are.
    with ExitStack() as held:
        try:
            held.enter_context(dr.dr_lock(env, f"drill {scenario}"))
            if scenario == "all":
                refuse_without_standby(settings, env, scenario, started=False)
        except VokeError:
            with audited(env.home, event_type=f"drill.{scenario}", env="local", target=scenario):
                raise
        for name in scenarios:
            saved: list[dict[str, Any]] = []
            try:
                journals.append(
                    run_drill(settings, env, name, progress=progress, options=options, saved=saved)
                )
            except (VokeError, KeyboardInterrupt) as caught:  # (Ctrl-C between two drills: not turned yet)
                journals.extend(saved)  # an interrupted drill's, saved before it raised
                if not journals:
                    raise
                # the drills that ran (to the end, or interrupted) are reported with the error
                # (exit 130, or 7); the rest did not run
                exc = caught if isinstance(caught, VokeError) else between_drills(name, saved)
                if scenario != "all":
                    return RunOutcome(journals[0], exc)
                return RunOutcome(_all_report(journals, not_run=scenarios[len(journals) :]), exc)
    if scenario != "all":
        return RunOutcome(journals[0])
    return RunOutcome(_all_report(journals, not_run=[]))


def between_drills(name: str, saved: list[dict[str, Any]]) -> Interrupted:
    """Ctrl-C (or SIGTERM) outside a drill's own frame: before NAME started, or once its journal
    was SAVED; the drills that ran are reported all the same."""
    signal = interrupts.stopped_by()
    where = f"after drill {name}" if saved else f"before drill {name}"
    return Interrupted(f"{signal} {where}", hint="their journals: voke drill history")


def _all_report(journals: list[dict[str, Any]], *, not_run: list[str]) -> dict[str, Any]:
    return {
        "runs": journals,
        "status": "completed"
        if not not_run and all(j["status"] == "completed" for j in journals)
        else "failed",
        "not_run": not_run,
    }
