"""The whole local environment: PostgreSQL (adapters/local/environment.py) plus the
application logins, their secret, and the local services that consume it."""

from __future__ import annotations

import time
from collections.abc import Callable
from contextlib import AbstractContextManager, ExitStack, nullcontext
from datetime import datetime, timezone
from typing import Any

from voketag_ops import redact
from voketag_ops.adapters.local.environment import LocalEnvironment, Progress, UpReport
from voketag_ops.config import Settings
from voketag_ops.core.rotation import LAST_ANNOTATION, generate_password
from voketag_ops.core.times import iso
from voketag_ops.errors import (
    BackendError,
    Interrupted,
    NeedsOperatorError,
    PreconditionError,
    RotationFailure,
    VokeError,
    refused_file,
)
from voketag_ops.logs import get_logger

log = get_logger(__name__)


def _quiet(_msg: str) -> None:
    return None


def ensure_local(settings: Settings, progress: Progress = _quiet, *, whole: bool = True) -> LocalEnvironment:
    """What commands that need the local environment call. WHOLE: all of `voke env up` (servers,
    credentials, services, its audit event) when any part is down, so `env up` is never a
    required first step; a part that will not start beyond the servers is a warning, not the
    command's failure (a load needs the database, not the services). Otherwise only the
    servers (what a dry run or a read of the chain needs)."""
    platform = LocalPlatform(settings)

    def servers() -> None:
        if not platform.env.is_running():
            with platform.no_dr_operation("env up (servers only)"):  # as `env up`: never under a failover
                progress("starting the local environment's servers")
                platform.env.up(progress)

    after_another_start(
        platform.env, (lambda: platform.ensure_up(progress, strict=False)) if whole else servers
    )
    return platform.env


def after_another_start(env: LocalEnvironment, start: Callable[[], None]) -> None:
    """START (which takes the DR lock to start what is down) once no other voke is starting,
    stopping or destroying the environment (`env up`, `env down`, `env destroy`, or a command
    starting it on demand, as two loads at once do): wait for it, bounded, rather than fail
    with exit 5 or use servers about to go, and again if another one took the lock first (two
    cron jobs starting a stopped environment together). A DR operation is not waited for."""
    from voketag_ops.locks import LockHeld, is_env_holder, running_elsewhere

    deadline = time.monotonic() + max(120.0, 3 * env.settings.start_timeout)
    while True:
        while (holder := running_elsewhere(env.home / "dr")) is not None and time.monotonic() < deadline:
            if not is_env_holder(holder):
                break
            time.sleep(0.2)
        try:
            start()
            return
        except LockHeld as exc:
            if not is_env_holder(exc.holder) or time.monotonic() >= deadline:
                raise


class PartWay:
    """A Ctrl-C or SIGTERM (exit 130) within the block, which leaves the environment half up,
    half down or half moved: the answer says `voke COMMAND` stopped part-way, what is ``left``
    (as the block last said it) and HINT, the way on, not a bare "interrupted"."""

    def __init__(self, command: str, left: str, *, hint: str) -> None:
        self.command, self.left, self.hint = command, left, hint

    @property
    def said(self) -> str:
        """What the answer says after what stopped it (a failure's message too)."""
        return f"`voke {self.command}` stopped part-way, {self.left}"

    def __enter__(self) -> PartWay:
        return self

    def __exit__(self, kind: type[BaseException] | None, *_: object) -> None:
        if kind is not None and issubclass(kind, KeyboardInterrupt):
            from voketag_ops import interrupts

            raise Interrupted(f"{interrupts.stopped_by()}: {self.said}", hint=self.hint) from None


class LocalPlatform:
    """The local environment as the platform sees it."""

    def __init__(self, settings: Settings) -> None:
        settings.rotation.check_local()  # a service two logins name: it reads one credential here
        self.settings = settings
        self.env = LocalEnvironment.from_settings(settings.local)

    # -- parts --------------------------------------------------------------------------
    def consumers(self) -> dict[str, str]:
        """service -> the secret it reads."""
        out: dict[str, str] = {}
        for user in self.settings.rotation.db_users.values():
            for service in user.services:
                out[service] = user.secret
        return out

    def store(self) -> Any:
        from voketag_ops.adapters.local.secrets import LocalSecretStore

        return LocalSecretStore(self.env.home)

    def runtime(self) -> Any:
        from voketag_ops.adapters.local.services import LocalServiceRuntime

        return LocalServiceRuntime(
            self.env.home,
            self.consumers(),
            start_timeout=self.settings.rotation.health_timeout,
            drain_seconds=self.settings.local.service_drain_seconds,
            reserved_ports=self.env.reserved_ports,
        )

    def db_target(self) -> Any:
        from voketag_ops.adapters.local.dbusers import LocalDbTarget

        return LocalDbTarget(self.env, timeout=self.settings.rotation.db_timeout)

    # -- lifecycle ------------------------------------------------------------------------
    def _audited(self, event_type: str) -> Any:
        from voketag_ops.audit import audited
        from voketag_ops.files import path_text

        return audited(self.env.home, event_type=event_type, env="local", target=path_text(self.env.home))

    def up(self, progress: Progress = _quiet, *, strict: bool = True) -> UpReport:
        # One `up` at a time across the whole sequence: two commands starting the environment on
        # demand would otherwise both make credentials and both start services. Never under a
        # running DR operation (exit 5): it would start a node a failover just fenced, or the
        # leader a failback's switchover just stopped (split brain).
        from voketag_ops.adapters.local.dr import interrupted_move

        with self._audited("env.up") as event, self.no_dr_operation("env up"), self.env.lock():
            if (move := interrupted_move(self.env)) is not None:  # the services would look elsewhere
                raise PreconditionError(
                    f"an interrupted `voke env move-port {move['node']}` (port {move['old_port']} to "
                    f"{move['port']}) must be finished first: voke env move-port {move['node']} --yes"
                )
            report = self._up(progress, strict=strict)
            event.details.update(
                started=report.started, created=report.created, services=report.services_started
            )
            if report.services_restarted:
                event.details["services_restarted"] = report.services_restarted
            if report.search_granted:  # directories not all voke's, changed for the server user
                event.details["search_granted"] = report.search_granted
            if report.already_running:
                event.result = "unchanged"
        return report

    def _up(self, progress: Progress, *, strict: bool = True) -> UpReport:
        t0 = time.monotonic()
        with PartWay(  # (Ctrl-C, SIGTERM: exit 130) half up: running it again finishes it
            "env up",
            "while the servers were being started: some may run",
            hint="`voke env up` finishes it; `voke env down` stops what runs",
        ) as cut:
            report = self.env.up(progress)
            cut.left = "the servers run, the local services may not all be started"
            # A primary made just now knows none of the stored passwords: secrets left by a destroy
            # that was cut short (kill -9) describe a cluster that is gone, so they are made anew.
            fresh = "primary" in report.created
            try:
                created = self.bootstrap_credentials(progress, fresh_cluster=fresh)
                report.created.extend(created)
                runtime = self.runtime()
                versions = {
                    u.secret: self.store().get(u.secret).aliases["current"]
                    for u in self.settings.rotation.db_users.values()
                }
                if any(s.instance is None for s in runtime.services(check=False)):
                    progress("starting the local services")
                if hung := runtime.not_answering():
                    progress(f"restarting {', '.join(hung)}: running, but not answering /health")
                # (`hung` maps each service to its instance: one that answers again is left serving)
                started = runtime.ensure_started(versions, repin=fresh, replace=hung)
                report.services_restarted = [name for name in started if name in hung]
                report.services_started = [name for name in started if name not in hung]
            except VokeError as exc:
                if strict:
                    raise
                created = []
                log.warning("the servers are up, but not the rest of `voke env up`: %s", exc.message)
                progress(f"warning: {exc.message} (`voke env up` says more)")
        from voketag_ops.adapters.local.dr import operation_notice

        if notice := operation_notice(self.env):  # (one the servers could start beside)
            report.warnings.append(notice)
        report.already_running = (
            report.already_running
            and not created
            and not report.services_started
            and not report.services_restarted
        )
        report.duration_seconds = round(time.monotonic() - t0, 3)
        return report

    def ensure_up(self, progress: Progress = _quiet, *, strict: bool = True) -> None:
        """Start whatever is not running (commands that need the environment call this)."""
        if self.env.is_running():
            if all(s.instance is not None for s in self.runtime().services(check=False)):
                return
            from voketag_ops.locks import busy_with, running_elsewhere

            if not strict and (holder := running_elsewhere(self.env.home / "dr")) is not None:
                # The servers are up, which is what the command needs; `env up` would refuse.
                progress(f"warning: the local services were not started: {busy_with(holder)} ({holder})")
                return
        progress("starting the local environment (voke env up)")
        self.up(progress, strict=strict)

    def bootstrap_credentials(self, progress: Progress = _quiet, *, fresh_cluster: bool = False) -> list[str]:
        """Application roles and their first secret versions (idempotent; FRESH_CLUSTER: new
        versions even where a secret has some, as none of them logs in to a new cluster).

        Alternating users get two versions: `previous` for the second login and `current`
        for the first, so both stored credentials work from the start.
        """
        import json

        created = []
        store, target = self.store(), self.db_target()
        host, port = target.endpoint()
        for user in self.settings.rotation.db_users.values():
            roles = user.roles if user.strategy == "alternating" else user.roles[:1]
            target.ensure_roles(owner=user.owner, roles=tuple(roles), database=user.database)
            meta = store.create(user.secret)
            if "current" in meta.aliases and not fresh_cluster:
                continue
            progress(f"creating credentials for {', '.join(roles)} in secret {user.secret}")
            versions = []
            for role in reversed(roles):  # previous first, current last
                password = generate_password(self.settings.rotation.password_length)
                redact.register(password)
                target.set_password(role, password)
                payload = {
                    "username": role,
                    "password": password,
                    "host": host,
                    "port": port,
                    "dbname": user.database,
                }
                versions.append(store.add_version(user.secret, json.dumps(payload).encode()).version)
            aliases: dict[str, int | None] = {"current": versions[-1]}
            if len(versions) > 1:
                aliases["previous"] = versions[0]
            meta = store.get(user.secret)
            store.update(
                user.secret,
                etag=meta.etag,
                aliases=aliases,
                annotations={
                    LAST_ANNOTATION: json.dumps({"id": None, "status": "created", "finished_at": iso_now()})
                },
            )
            created.append(f"secret {user.secret}")
        from voketag_ops.workflows.jwt import bootstrap_keyring

        jwt = self.settings.rotation.jwt
        if bootstrap_keyring(store, jwt, datetime.now(timezone.utc)):
            progress(f"created the JWT signing keyring in secret {jwt.secret}")
            created.append(f"secret {jwt.secret}")
        return created

    def status(self) -> dict[str, Any]:
        report = self.env.status()
        services = []
        if report["initialized"]:
            self._measure_lag(report)
            for info in self.runtime().services(check=True):
                services.append(
                    {
                        "name": info.name,
                        "url": info.url,
                        "secret": info.secret,
                        "secret_version": info.secret_version,
                        "healthy": bool(info.healthy),
                        "instance": info.instance,
                    }
                )
            report["healthy"] = bool(report["healthy"] and services and all(s["healthy"] for s in services))
        report["services"] = services
        return report

    def _measure_lag(self, report: dict[str, Any]) -> None:
        """The standby's lag in REPORT as `dr status` and `dr check` measure it (a heartbeat written
        on the leader, timed until the standby replays it; not replayed within
        dr.lag_probe_seconds, the age of what it last replayed), not pg_stat_replication's
        replay_lag, the standby's last report, which stands still while its replay is paused
        and so under-reported the lag `dr check` failed on."""
        from voketag_ops.adapters.local.dr import probe_lag

        leader, standby = report["primary"], report["replica"]
        if not (self.settings.local.replica and leader["role"] == "primary" and standby["running"]):
            return  # (no standby to time, or one that does not answer: env.status says what it knows)
        state = self.env.require_state()
        lag = probe_lag(
            self.env.node(state.leader, state),
            self.env.node(state.follower, state),
            wait=self.settings.dr.lag_probe_seconds,
        )
        if "heartbeat_error" in lag:  # a read-only or full leader: its own last figure stands, and why
            standby["lag_error"] = f"the leader refused the lag heartbeat: {lag['heartbeat_error']}"
            return
        standby["lag_seconds"] = lag["lag_seconds"]
        if lag["lag_bytes"] is not None:
            standby["lag_bytes"] = lag["lag_bytes"]

    def down(self, progress: Progress = _quiet) -> dict[str, Any]:
        # Not beside a concurrent `up`, nor under a running DR operation or drill (exit 5): a
        # drill stopped mid-way cannot put back the rows it took as its fault.
        with self._audited("env.down") as event, self.no_dr_operation("env down"), self.env.lock():
            self.refuse_while_rotating("stopping")
            self.env.ready_to_stop(progress)  # a server that cannot stop refuses before the services go
            with PartWay(  # (Ctrl-C, SIGTERM: exit 130) half down: either way out works
                "env down",
                "while the local services were being stopped: some may still run",
                hint="`voke env down` stops what still runs; `voke env up` starts everything again",
            ) as cut:
                services = self.runtime().stop_all() if self.env.exists else []
                if services:
                    progress("stopped the local services")
                cut.left = "the local services are stopped, the servers may still run"
                report = self.env.down(progress)
            report["stopped"] = services + report["stopped"]
            event.details["stopped"] = report["stopped"]
        return report

    def plan_move(self, node: str, port: int | None = None, *, dry_run: bool = False) -> dict[str, Any]:
        """`env move-port`'s checks and plan, changing nothing (its dry run). After a move of NODE
        was cut short, PORT None is the port it recorded, so running it again finishes it; a
        move of another node is refused until then (exit 5). Otherwise PORT None is a free port
        the run picks when it runs: a DRY_RUN names none (`port` None, `port_chosen_at_run`),
        as the one it checked may be taken or another picked by then."""
        from voketag_ops.adapters.local.dr import interrupted_move
        from voketag_ops.workflows.dr import refuse_if_rotating_locally

        recorded = interrupted_move(self.env)
        if recorded is not None and recorded["node"] != node:
            raise PreconditionError(
                f"an interrupted `voke env move-port {recorded['node']}` must be finished first: "
                f"voke env move-port {recorded['node']} --yes"
            )
        if recorded is not None and port is None:  # finishing it: on the port it recorded
            plan = self.env.plan_move(node, recorded["port"], recorded=True)
        else:
            plan = self.env.plan_move(node, port)
        if recorded is not None:  # the port it moves from: the cut run recorded the new one already
            plan["old_port"] = recorded["old_port"]
        if plan["leader"]:
            # its pending version names the old port; its resume or rollback would log in there
            refuse_if_rotating_locally(self.settings)
        picked = port is None and recorded is None
        if dry_run:
            plan["port_chosen_at_run"] = picked
            if picked:
                plan["port"] = None
        return plan

    def move_port(self, node: str, port: int | None = None) -> dict[str, Any]:
        """Move stopped NODE (or a restored instance) to PORT or a free port: the standby follows a
        moved leader, and the services' connection secret gets versions naming it, the services
        stopped and repinned to them (they start with the leader at the next `voke env up`). Not
        under a running DR operation (exit 5) nor an unfinished rotation of its secret when it
        leads; an unfinished DR operation stays to be resumed on the new port. A journal names a
        move cut short, which running it again finishes (a backend or redeploy failure in the
        repoint: exit 7 saying so; the audit event names the versions made however it ends)."""
        from voketag_ops.adapters.local.dr import move_journal, operation_notice
        from voketag_ops.files import replace_json
        from voketag_ops.workflows.dr import AuditedRepoint

        with (
            self._audited("env.move_port") as event,
            self.no_dr_operation("env move-port"),
            self.env.lock(),
        ):
            event.details["node"] = node
            plan = self.plan_move(node, port)
            event.details.update(old_port=plan["old_port"], port=plan["port"])
            finish = f"`voke env move-port {node} --yes` finishes the move"
            replace_json(
                move_journal(self.env), {"node": node, "old_port": plan["old_port"], "port": plan["port"]}
            )
            # (Ctrl-C, SIGTERM: exit 130) the journal names the move to finish
            with PartWay(
                f"env move-port {node}", f"{node} recorded on port {plan['port']}", hint=finish
            ) as cut:
                report = self.env.apply_move(plan)
                report["services"] = None
                if report["leader"]:
                    # (its versions on record however it ends: a failed redeploy's most of all)
                    repoint = AuditedRepoint(event.details, self.settings, self.env)
                    try:
                        leader = self.env.node(node)  # running: a move cut short is being finished
                        report["services"] = repoint(leader, redeploy=leader.running)
                    except (
                        BackendError,
                        RotationFailure,
                        OSError,
                    ) as exc:  # not "nothing was changed" (exit 4)
                        said = refused_file(exc) if isinstance(exc, OSError) else exc.message
                        if said is None:  # (any other OSError: a bug, exit 70)
                            raise
                        raise NeedsOperatorError(f"{cut.said}: {said}", hint=finish) from exc
                    except VokeError as exc:
                        exc.hint = finish
                        raise
                event.details["standby_repointed"] = report["standby_repointed"]
                move_journal(self.env).unlink()
            services = report["services"] or {}
            report["changed"] = bool(
                report["port"] != report["old_port"]
                or report["standby_repointed"]
                or services.get("repointed")
                or services.get("stale")  # (redeployed or stopped)
            )
            fenced = node in self.env.fenced()  # `env up` leaves it down: the failback rebuilds it
            report["next"] = operation_notice(self.env) or (
                "`voke dr failback --yes` brings it back" if fenced else "`voke env up` starts it"
            )
        return report

    def destroy(self, progress: Progress = _quiet, *, discard_chain: bool = False) -> dict[str, Any]:
        import shutil

        # The export's hold on chain writers (ExitStack) lasts until the servers are stopped.
        with (
            self._audited("env.destroy") as event,
            self.no_dr_operation("env destroy"),
            self.env.lock(),
            ExitStack() as held,
        ):
            self.refuse_while_rotating("destroying")
            kept = self._keep_chain(progress, held, discard=discard_chain)  # before anything is stopped
            if (self.env.home / "services").exists():  # (the runtime would make it, to be removed)
                self.runtime().stop_all()
            report = self.env.destroy(progress)
            report["chain"] = kept
            event.details["chain"] = kept
            for path in (
                self.env.home / "services",
                self.env.home / "secrets",
                self.env.home / "secrets.key",
            ):
                if path.exists():
                    shutil.rmtree(path) if path.is_dir() else path.unlink()
                    report["removed"].append(str(path))
            event.details["removed"] = report["removed"]
        return report

    def refuse_while_rotating(self, doing: str) -> None:
        """Exit 5 naming a rotation a live voke is running here (`env down`, `env destroy` and
        their dry runs; DOING: "stopping" or "destroying"): its restart, test and rollback need
        the servers, the services and the secret store. Checked under the DR lock, which a
        rotation holds (shared) until its record is written; one that stopped for a person, or
        whose voke is gone or whose lease expired, does not refuse (resumed after `env up`)."""
        from voketag_ops.workflows.rotate import refuse_while_rotating

        rotation = self.settings.rotation
        secrets = [u.secret for u in rotation.db_users.values()]
        secrets += [k.secret for k in rotation.api_keys.values()] + [rotation.jwt.secret]
        refuse_while_rotating(
            self.store(), secrets, why=f"{doing} the environment now would fail it and its rollback"
        )

    def no_dr_operation(self, operation: str) -> AbstractContextManager[None]:
        """The DR lock, held while the servers are stopped (exit 5 while a DR operation runs)."""
        from voketag_ops.adapters.local.dr import dr_lock

        return dr_lock(self.env, operation) if self.env.home.is_dir() else nullcontext()

    def _keep_chain(self, progress: Progress, held: ExitStack, *, discard: bool) -> str:
        """The chain outlives the environment, as the audit log does: before the databases
        go, its PostgreSQL copy is exported to VOKE_HOME/chain/chain.json, which the first
        chain use after the next `env up` moves back in (workflows/chain.py migration). A
        stopped environment is started for it. When the export fails nothing is deleted
        (PreconditionError). DISCARD: no export, the chain goes with the databases.

        HELD keeps chain writers out from before the export's read until it is closed (after
        the servers stop): a block another voke commits meanwhile would be in neither copy.
        The env.lock destroy holds keeps the migration from moving the export back in meanwhile."""
        from voketag_ops.adapters.local.chain_store import FileChainStore, default_chain_path

        if self.settings.chain.store != "postgres":
            return "kept (file store)"
        if discard:
            waiting = default_chain_path(self.env.home)  # an earlier destroy's export, not moved back yet
            if not waiting.exists():
                return "discarded (--discard-chain)"
            aside = waiting.with_name(f"{waiting.name}.discarded-{datetime.now(timezone.utc):%Y%m%dT%H%M%SZ}")
            waiting.rename(aside)  # else the next chain use would move it back in
            progress(f"the chain export waiting in {waiting} was set aside as {aside}")
            return f"discarded (--discard-chain); the export waiting to be moved back set aside as {aside}"
        if not self.env.exists:
            return "empty"
        from voketag_ops.adapters.local.pg_chain_store import PgChainStore
        from voketag_ops.errors import PreconditionError
        from voketag_ops.workflows.chain import open_chain_store

        path = default_chain_path(self.env.home)
        try:
            store = open_chain_store(self.env.home, settings=self.settings, start=progress)
            assert isinstance(store, PgChainStore)  # (chain.store = "postgres")
            held.enter_context(store.writers_held())
            state = store.load()
            if not state.blocks and not state.anchors:
                return "empty"
            FileChainStore(path).import_state(state)
        except VokeError as exc:
            raise PreconditionError(
                f"the chain could not be exported before destroy ({exc.message}); nothing was deleted",
                hint="fix that and rerun, or: voke env destroy --yes --discard-chain (the chain goes too)",
            ) from None
        progress(f"chain exported to {path} (moved back into PostgreSQL on first use)")
        return f"exported to {path}"


def iso_now() -> str:
    from datetime import datetime, timezone

    return iso(datetime.now(timezone.utc))
