"""A named Google Cloud environment as the workflows see it: the GCP adapters behind the
ports (Secret Manager store, Cloud Run runtime, Cloud SQL target and recovery, Monitoring,
IAM keys), built on first use so that nothing imports google until a command needs it.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from functools import cached_property
from pathlib import Path
from typing import Any

from voketag_ops.config import GcpEnvironment, Settings
from voketag_ops.errors import NotFoundError
from voketag_ops.logs import get_logger
from voketag_ops.workflows.credentials import Credential
from voketag_ops.workflows.rotate import Progress, RotationEngine

log = get_logger(__name__)


def _quiet(_msg: str) -> None:
    return None


def env_home(settings: Settings, name: str | None = None) -> Path:
    """VOKE_HOME/cloud/NAME (default: the environment SETTINGS select): where this machine keeps
    a cloud environment's rotation history, drill journals and DR lock."""
    from voketag_ops.adapters.local.environment import resolve_home

    return resolve_home(settings.local.home) / "cloud" / (name or settings.env)


class CloudPlatform:
    """The adapters of one cloud environment (`[environments.NAME]`)."""

    def __init__(self, settings: Settings, name: str | None = None, **ctx_overrides: Any) -> None:
        from voketag_ops.adapters.gcp._common import GcpContext

        self.settings = settings
        self.name = name or settings.env
        self.env: GcpEnvironment = settings.environment(self.name)
        self.ctx = GcpContext.from_environment(self.env, **ctx_overrides)

    @property
    def voke_home(self) -> Path:
        """VOKE_HOME: its audit log holds every environment's events, each with its name."""
        from voketag_ops.adapters.local.environment import resolve_home

        return resolve_home(self.settings.local.home)

    @property
    def home(self) -> Path:
        """Where voke keeps this environment's rotation history on this machine."""
        return env_home(self.settings, self.name)

    def _reads(self, *, every_kind: bool) -> list[tuple[str, str]]:
        """(secret, service) for the services of this environment: the database logins and
        service-account keys (EVERY_KIND: API keys and the JWT keyring too)."""
        rotation = self.settings.rotation
        groups = [(u.secret, u.services) for u in rotation.db_users.values()]
        groups += [(k.secret, k.services) for k in rotation.sa_keys.values()]
        if every_kind:
            groups += [(k.secret, k.services) for k in rotation.api_keys.values()]
            groups.append((rotation.jwt.secret, rotation.jwt.services))
        return [(secret, s) for secret, services in groups for s in self.env.serving(services)]

    def consumers(self) -> dict[str, str]:
        """Cloud Run service -> the secret it reads (its database login or key), for status."""
        return {service: secret for secret, service in self._reads(every_kind=False)}

    def readers(self) -> dict[str, tuple[str, ...]]:
        """Secret -> the Cloud Run services of this environment that read it (all kinds)."""
        out: dict[str, tuple[str, ...]] = {}
        for secret, service in self._reads(every_kind=True):
            out[secret] = (*out.get(secret, ()), service)
        return out

    def store(self) -> Any:
        return self._store

    @cached_property
    def _store(self) -> Any:
        from voketag_ops.adapters.gcp.secrets import GcpSecretStore

        return GcpSecretStore(self.ctx, secret_ids=self.env.secrets)

    @cached_property
    def admin(self) -> Any:
        from voketag_ops.adapters.gcp.sql import CloudSqlAdmin

        return CloudSqlAdmin(self.ctx)

    def runtime(self) -> Any:
        from voketag_ops.adapters.gcp.run import CloudRunRuntime

        return CloudRunRuntime(
            self.ctx,
            self.consumers(),
            readers=self.readers(),
            secret_ids=self.env.secrets,
            health_path=self.env.health_path,
            health_timeout=self.settings.rotation.health_timeout,
        )

    def db_target(self) -> Any:
        from voketag_ops.adapters.gcp.sql import CloudSqlDbTarget

        return CloudSqlDbTarget(
            self.admin,
            self.current_primary,
            host=self.env.db_host,  # the home primary's address: used only while it is the primary
            port=self.env.db_port,
            home=self.env.instance,
            # the replica's own address (proxy, tunnel) once it is the recorded primary
            replica=self.env.replica,
            replica_host=self.env.replica_db_host,
            replica_port=self.env.replica_db_port,
            timeout=self.settings.rotation.db_timeout,
        )

    def current_primary(self) -> str:
        """The Cloud SQL primary voke recorded (the home `instance` until a failover); exit 5
        when the record and Cloud SQL disagree."""
        from voketag_ops.workflows import cloud_topology

        return cloud_topology.read(self.settings, self.recovery()).primary

    @cached_property
    def monitoring(self) -> Any:
        from voketag_ops.adapters.gcp.monitoring import CloudMonitoring

        return CloudMonitoring(self.ctx)

    def recovery(self) -> Any:
        from voketag_ops.adapters.gcp.sql import CloudSqlRecovery

        return CloudSqlRecovery(self.admin, self.env.instance, self.env.replica, self.monitoring)

    def keys(self) -> Any:
        from voketag_ops.adapters.gcp.iam import ServiceAccountKeys

        return ServiceAccountKeys(self.ctx)


class CloudRotationEngine(RotationEngine):
    """The rotation engine on a cloud environment: refuses services that read `latest`,
    and reports each rotation's result and the secret's age to Cloud Monitoring."""

    def __init__(self, *args: Any, platform: CloudPlatform, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.platform = platform

    def services_of(self, cred: Credential) -> tuple[str, ...]:
        """Those of CRED's services this environment runs (`[environments.NAME] services`)."""
        return self.platform.env.serving(cred.services)

    def rotate(self, name: str, *, dry_run: bool = False) -> Any:
        cred = self.credential(name)
        check = getattr(self.runtime, "check_pinned", None)
        try:
            meta = self.store.get(cred.secret)
        except NotFoundError:
            raise self.not_set_up(cred) from None
        raw = meta.annotations.get("voke-rotation")
        services = self.services_of(cred)
        if services and check is not None and not raw:  # a resumed rotation already passed it
            check(cred.secret, services)
        if getattr(cred, "kind", None) == "db-password" and not dry_run:
            _ = self.target.instance  # the recorded primary, or exit 5 before anything changes
        outcome = super().rotate(name, dry_run=dry_run)
        if not dry_run and outcome.report is not None:
            self._report_metrics(outcome.report)
        return outcome

    def resume(self, rotation_id: str | None = None) -> Any:
        outcome = super().resume(rotation_id)
        if outcome.report is not None:
            self._report_metrics(outcome.report)
        return outcome

    def _report_metrics(self, report: Any) -> None:
        from voketag_ops.adapters.gcp import catalog

        status = getattr(report, "status", None)
        if status not in ("succeeded", "rolled_back", "needs_attention"):
            return
        labels = {"secret": report.secret, "kind": report.kind, "status": status, "env": self.env_name}
        monitoring = self.platform.monitoring
        monitoring.write_quietly(catalog.ROTATION_RESULT, 1 if status == "succeeded" else 0, labels)
        if status == "succeeded":
            monitoring.write_quietly(
                catalog.ROTATION_AGE, 0.0, {"secret": report.secret, "env": self.env_name}
            )


def cloud_engine(
    settings: Settings,
    progress: Progress = _quiet,
    *,
    starting: Callable[[str], AbstractContextManager[None]] = lambda _secret: nullcontext(),
    **ctx_overrides: Any,
) -> CloudRotationEngine:
    """The rotation engine wired to the Google Cloud environment `settings.env`; STARTING: held
    while a rotation starts (`local_engine` takes the environment's DR lock shared)."""
    platform = CloudPlatform(settings, **ctx_overrides)
    credentials: list[Any] = []
    if settings.rotation.sa_keys:
        from voketag_ops.workflows.sa_keys import SaKey

        keys = platform.keys()
        credentials += [SaKey(n, s, keys, platform.store()) for n, s in settings.rotation.sa_keys.items()]
    progress(f"connecting to {platform.name} (project {platform.env.project})")
    return CloudRotationEngine(
        store=platform.store(),
        runtime=platform.runtime(),
        target=platform.db_target(),
        settings=settings.rotation,
        credentials=credentials,
        home=platform.home,
        audit_home=platform.voke_home,  # where cloud DR operations and drills write theirs
        env_name=platform.name,
        progress=progress,
        platform=platform,
        starting=starting,
    )


def cloud_environment(settings: Settings) -> GcpEnvironment | None:
    """The cloud environment `settings.env` names, or None on the local environment
    (ConfigError for a name that is not configured)."""
    if settings.env == "local":
        return None
    return settings.environment(settings.env)


def publish_coverage(settings: Settings, report: Any) -> int:
    """Write each service's coverage and the overall figure as voke's metric (label
    `service`; the total is `overall`) in one call. Best effort: a Monitoring failure is
    logged and 0 returned, never raised, so it can never fail a coverage gate."""
    from voketag_ops.adapters.gcp import catalog

    scores = [*report.services, report.totals]
    points = [
        (catalog.COVERAGE, float(score.percent), {"service": score.name, "env": settings.env})
        for score in scores
    ]
    try:
        CloudPlatform(settings).monitoring.write_many(points)
    except Exception as exc:  # best effort by design: the answer of the gate must not change
        log.warning(
            "coverage not written to Cloud Monitoring (%s): %s",
            settings.env,
            getattr(exc, "message", None) or type(exc).__name__,
        )
        return 0
    return len(points)
