"""CloudRunRuntime: the ServiceRuntime port over Cloud Run Admin v2 (REST).

A deploy is blue-green with Cloud Run's own parts: a new revision whose template pins
every reference to the secret to an explicit version number, created with a traffic
tag and 0 % of the traffic; its tag URL is health-checked; only then does one update
move 100 % of the traffic to it. When the health check fails the traffic never moved.
A rerun (resume) or a rollback reuses a ready revision already pinned to the wanted
version instead of making another, so rolling back is moving traffic back to the
previous revision. A service that reads the secret as `latest` is refused: Cloud Run
resolves `latest` at instance start, so such a service would pick up a version before
it is tested, and a rollback could not pin it back.
"""

from __future__ import annotations

import secrets as pysecrets
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

from voketag_ops import interrupts
from voketag_ops.adapters.gcp._common import (
    CONFLICT,
    DENIED,
    FAILED,
    INVALID,
    NOT_FOUND,
    PRECONDITION,
    UNAVAILABLE,
    GcpContext,
    translating,
)
from voketag_ops.errors import (
    BackendError,
    HealthCheckError,
    NotFoundError,
    PreconditionError,
    RestartError,
    StepTimeoutError,
    VokeError,
)
from voketag_ops.logs import get_logger
from voketag_ops.ports import ServiceInfo

log = get_logger(__name__)
REVISION = 2  # TrafficTargetAllocationType.TRAFFIC_TARGET_ALLOCATION_TYPE_REVISION
CONDITION_SUCCEEDED = 4  # Condition.State.CONDITION_SUCCEEDED


def _short(name: str) -> str:
    return name.rsplit("/", 1)[-1]


def secret_refs(template: Any, secret_names: set[str]) -> list[str]:
    """The versions (as written: "7" or "latest") at which TEMPLATE reads any of SECRET_NAMES."""
    found = []
    for container in template.containers:
        for env in container.env:
            ref = env.value_source.secret_key_ref if env.value_source else None
            if ref and ref.secret and _short(ref.secret) in secret_names:
                found.append(ref.version or "latest")
    for volume in template.volumes:
        if volume.secret and volume.secret.secret and _short(volume.secret.secret) in secret_names:
            items = list(volume.secret.items) or [None]
            found += [(item.version if item is not None else "") or "latest" for item in items]
    return found


def pin(template: Any, secret_names: set[str], version: int) -> int:
    """Point every reference to the secret in TEMPLATE at VERSION; how many there were."""
    count = 0
    for container in template.containers:
        for env in container.env:
            ref = env.value_source.secret_key_ref if env.value_source else None
            if ref and ref.secret and _short(ref.secret) in secret_names:
                ref.version = str(version)
                count += 1
    for volume in template.volumes:
        if volume.secret and volume.secret.secret and _short(volume.secret.secret) in secret_names:
            if not volume.secret.items:
                from google.cloud import run_v2

                volume.secret.items.append(
                    run_v2.VersionToPath(path=_short(volume.secret.secret), version="latest")
                )
            for item in volume.secret.items:
                item.version = str(version)
                count += 1
    return count


def _runs(revision: Any, secret_names: set[str]) -> list[Any]:
    """What REVISION runs (its containers and volumes, as dicts), whatever version of
    SECRET_NAMES it reads."""
    copy = type(revision).deserialize(type(revision).serialize(revision))
    pin(copy, secret_names, 0)
    return [type(c).to_dict(c) for c in copy.containers] + [type(v).to_dict(v) for v in copy.volumes]


def http_ok(url: str, *, timeout: float, token: str | None = None) -> bool:
    """GET URL on a new connection; True on a 2xx answer."""
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"} if token else {})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as resp:
            return 200 <= resp.status < 300
    except (urllib.error.URLError, OSError, ValueError):
        return False


class CloudRunRuntime:
    """ServiceRuntime for the Cloud Run services of one environment."""

    def __init__(
        self,
        ctx: GcpContext,
        consumers: Mapping[str, str],
        *,
        readers: Mapping[str, Sequence[str]] | None = None,
        secret_ids: Mapping[str, str] | None = None,
        health_path: str = "/health",
        health_timeout: float = 60.0,
        client: Any = None,
        revisions_client: Any = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.ctx = ctx
        self.consumers = dict(consumers)  # service -> the (database) secret it reads, for status
        # secret -> every service reading it (API keys and keyrings too: a service reads several)
        self.readers: dict[str, set[str]] = {k: set(v) for k, v in (readers or {}).items()}
        for service, secret in self.consumers.items():
            self.readers.setdefault(secret, set()).add(service)
        self.secret_ids = dict(secret_ids or {})
        self.health_path = health_path
        self.health_timeout = health_timeout
        self._client = client
        self._revisions = revisions_client
        self.sleep = sleep

    # -- plumbing --------------------------------------------------------------------------------
    @property
    def client(self) -> Any:
        if self._client is None:
            from google.cloud import run_v2

            self._client = self.ctx.rest_client(run_v2.ServicesClient, "run")
        return self._client

    @property
    def revisions(self) -> Any:
        if self._revisions is None:
            from google.cloud import run_v2

            self._revisions = self.ctx.rest_client(run_v2.RevisionsClient, "run")
        return self._revisions

    def _name(self, service: str) -> str:
        return f"projects/{self.ctx.project}/locations/{self.ctx.region}/services/{service}"

    def _secret_names(self, secret: str) -> set[str]:
        return {secret, self.secret_ids.get(secret, secret)}

    @contextmanager
    def translate(self, service: str, *, failure: type = BackendError) -> Iterator[None]:
        """The one place Cloud Run errors become voke errors (FAILURE for refused changes)."""
        errors = {
            NOT_FOUND: NotFoundError,
            CONFLICT: failure,
            PRECONDITION: failure,
            INVALID: failure,
            DENIED: BackendError,
            UNAVAILABLE: BackendError if failure is BackendError else failure,
            FAILED: failure,
        }
        with translating(f"Cloud Run service {service}", errors):
            yield

    def _service(self, service: str) -> Any:
        with self.translate(service):
            return self.ctx.call(self.client.get_service, name=self._name(service))

    def _revision(self, service: str, revision: str) -> Any:
        with self.translate(service):
            return self.ctx.call(
                self.revisions.get_revision, name=f"{self._name(service)}/revisions/{_short(revision)}"
            )

    def _all_revisions(self, service: str) -> list[Any]:
        with self.translate(service):
            return self.ctx.call(
                lambda **kw: list(self.revisions.list_revisions(parent=self._name(service), **kw))
            )

    @staticmethod
    def _serving(svc: Any) -> str | None:
        """The revision receiving the most traffic (100 % outside a deploy)."""
        best = max(
            (t for t in svc.traffic_statuses if t.percent > 0 and t.revision),
            key=lambda t: t.percent,
            default=None,
        )
        if best is not None:
            return _short(best.revision)
        return _short(svc.latest_ready_revision) if svc.latest_ready_revision else None

    def _pinned(self, revision: Any, secret: str) -> int | str | None:
        """The version REVISION reads SECRET at: a number, "latest", or None (does not read it)."""
        refs = set(secret_refs(revision, self._secret_names(secret)))
        if not refs:
            return None
        if "latest" in refs or len(refs) > 1:
            return "latest" if "latest" in refs else None
        value = refs.pop()
        return int(value) if value.isdigit() else "latest"

    def _wait(self, operation: Any, service: str, what: str) -> Any:
        from google.api_core.future.polling import DEFAULT_POLLING

        polling = DEFAULT_POLLING.with_delay(
            initial=self.ctx.poll_interval, maximum=max(self.ctx.poll_interval, 10.0)
        )
        try:
            with self.translate(service, failure=RestartError):
                return operation.result(timeout=self.ctx.operation_timeout, polling=polling)
        except TimeoutError:
            raise StepTimeoutError(
                f"{service}: {what} did not finish within {self.ctx.operation_timeout:g} s"
            ) from None
        except Exception as exc:
            from google.api_core import exceptions as gexc

            if isinstance(exc, gexc.GoogleAPICallError):
                raise RestartError(f"{service}: {what} failed: {exc.message}") from None
            if "timed out" in str(exc).lower():
                raise StepTimeoutError(
                    f"{service}: {what} did not finish within {self.ctx.operation_timeout:g} s"
                ) from None
            raise

    def _update(self, svc: Any, service: str, what: str) -> Any:
        with self.translate(service, failure=RestartError):
            operation = self.ctx.call(self.client.update_service, service=svc, idempotent=False)
        return self._wait(operation, service, what)

    def _id_token(self, audience: str) -> str | None:
        if self.ctx.anonymous:
            return None
        try:
            import google.auth.transport.requests
            import google.oauth2.id_token

            return google.oauth2.id_token.fetch_id_token(google.auth.transport.requests.Request(), audience)
        except Exception as exc:  # user credentials cannot mint ID tokens: try without
            log.debug("no ID token for %s: %s", audience, type(exc).__name__)
            return None

    def _healthy_url(self, url: str, *, wait: float) -> bool:
        deadline = time.monotonic() + wait
        token = self._id_token(url.removesuffix(self.health_path))
        while True:
            if http_ok(url, timeout=min(self.ctx.timeout, 10.0), token=token):
                return True
            if time.monotonic() >= deadline:
                return False
            self.sleep(min(1.0, self.ctx.poll_interval))

    # -- ServiceRuntime ---------------------------------------------------------------------------
    def services(self, *, check: bool = True) -> list[ServiceInfo]:
        out = []
        for name, secret in self.consumers.items():
            svc = self._service(name)
            serving = self._serving(svc)
            version: int | str | None = None
            if serving:
                version = self._pinned(self._revision(name, serving), secret)
            url = f"{svc.uri.rstrip('/')}{self.health_path}" if svc.uri else None
            healthy = None
            if check:
                healthy = url is not None and self._healthy_url(url, wait=0)
            out.append(
                ServiceInfo(
                    name=name,
                    url=url,
                    secret=secret,
                    secret_version=version if isinstance(version, int) else None,
                    healthy=healthy,
                    instance=serving,
                    detail={"reads_latest": version == "latest", "generation": int(svc.generation)},
                )
            )
        return out

    def url(self, service: str) -> str | None:
        svc = self._service(service)
        return f"{svc.uri.rstrip('/')}{self.health_path}" if svc.uri else None

    def health(self, service: str) -> bool:
        url = self.url(service)
        return url is not None and self._healthy_url(url, wait=0)

    def serving_version(self, service: str, secret: str) -> int | None:
        serving = self._serving(self._service(service))
        version = self._pinned(self._revision(service, serving), secret) if serving else None
        return version if isinstance(version, int) else None

    def stop_orphans(self) -> list[str]:
        """Nothing to stop: the revision a killed deploy created has a tag and no traffic, which
        `live_versions` does not count; Cloud Run scales it down on its own."""
        return []

    def pinned_versions(self, secret: str) -> set[int]:
        """Versions any revision with traffic or a tag reads: cleanup never disables these."""
        return self._versions_read(secret, tagged=True)

    def live_versions(self, secret: str) -> set[int]:
        """Versions the revisions with traffic read (Cloud Run lets requests under way finish
        on a revision traffic moved off; nothing waits on it)."""
        return self._versions_read(secret, tagged=False)

    def live_pins(self, service: str, secret: str) -> dict[str, int | str | None]:
        """Each revision of SERVICE with traffic -> the version it reads SECRET at (`_pinned`)."""
        return self._read_by(service, secret, tagged=False)

    def _read_by(self, service: str, secret: str, *, tagged: bool) -> dict[str, int | str | None]:
        svc = self._service(service)
        # A target on LATEST names no revision in its status: it is the latest ready one.
        live = {
            _short(t.revision or svc.latest_ready_revision)
            for t in svc.traffic_statuses
            if (t.revision or svc.latest_ready_revision) and (t.percent > 0 or (tagged and t.tag))
        }
        return {
            revision: self._pinned(self._revision(service, revision), secret) for revision in sorted(live)
        }

    def _versions_read(self, secret: str, *, tagged: bool) -> set[int]:
        return {
            version
            for name in sorted(self.readers.get(secret, ()))
            for version in self._read_by(name, secret, tagged=tagged).values()
            if isinstance(version, int)
        }

    def check_pinned(self, secret: str, services: tuple[str, ...]) -> None:
        """Refuse (exit 5) when a service reads SECRET as `latest`: nothing is changed."""
        loose = []
        for name in services:
            svc = self._service(name)
            refs = secret_refs(svc.template, self._secret_names(secret))
            if not refs:
                raise PreconditionError(
                    f"Cloud Run service {name} does not read secret {secret}; nothing was changed"
                )
            if "latest" in refs:
                loose.append(name)
        if loose:
            raise PreconditionError(
                f"{', '.join(loose)} read{'s' if len(loose) == 1 else ''} secret {secret} as `latest`; "
                "rotation needs services pinned to version numbers; nothing was changed",
                hint="deploy each service once with the secret at the `current` version number "
                "(gcloud run services update SERVICE --update-secrets=VAR=SECRET:N)",
            )

    def deploy(self, service: str, secret: str, version: int) -> ServiceInfo:
        from google.cloud import run_v2

        svc = self._service(service)
        names = self._secret_names(secret)
        serving = self._serving(svc)
        if serving and self._pinned(self._revision(service, serving), secret) == version:
            url = f"{svc.uri.rstrip('/')}{self.health_path}"
            if self._healthy_url(url, wait=0):
                self._template_to_serving(service, serving)  # a rollback's: the template too
                return self._info(service, secret, version, serving, url)
        tag = f"voke-v{version}"
        # Not the service's template: a failed deploy (a rolled-back rotation of another secret
        # this service reads) leaves that pointing at a version since disabled, and every later
        # revision built from it would fail too.
        current = self._revision(service, serving) if serving else None
        target = self._ready_revision(service, secret, version, exclude=serving, like=current)
        reused = target is not None
        if target is None:  # a new revision: the serving one's containers, the secret pinned to VERSION
            if current is not None:
                svc.template.containers = list(current.containers)
                svc.template.volumes = list(current.volumes)
            if not pin(svc.template, names, version):
                raise RestartError(f"{service}: its template does not read secret {secret}")
            target = f"{service}-v{version}-{pysecrets.token_hex(3)}"
            svc.template.revision = target
        # 1. the new revision (or the reused one) gets a tag and no traffic
        traffic = [t for t in svc.traffic if t.percent > 0 and t.tag != tag]
        for t in traffic:
            if t.type_ != REVISION:  # "latest ready" would follow the new revision at once
                t.type_, t.revision = REVISION, serving or t.revision
        traffic.append(run_v2.TrafficTarget(type_=REVISION, revision=target, percent=0, tag=tag))
        svc.traffic = traffic
        try:
            updated = self._update(svc, service, f"creating revision {target}")
            # 2. health on the tag URL, before any traffic
            tag_url = next((t.uri for t in updated.traffic_statuses if t.tag == tag and t.uri), None)
            if not tag_url:
                raise RestartError(f"{service}: revision {target} has no URL for tag {tag}")
            if not self._healthy_url(f"{tag_url.rstrip('/')}{self.health_path}", wait=self.health_timeout):
                raise HealthCheckError(
                    f"{service}: revision {target} pinned to version {version} is not healthy; traffic stayed on {serving}"
                )
        except (RestartError, HealthCheckError):
            self._template_to_serving(service, serving)
            raise
        # 3. all traffic to it in one update
        updated.traffic = [run_v2.TrafficTarget(type_=REVISION, revision=target, percent=100)]
        final = self._update(updated, service, f"moving traffic to {target}")
        if reused:  # an older revision serves again (a rollback's): the template follows it
            self._template_to_serving(service, target)
        return self._info(service, secret, version, target, f"{final.uri.rstrip('/')}{self.health_path}")

    def _template_to_serving(self, service: str, serving: str | None) -> None:
        """Point the service's template back at what the serving revision runs (traffic stays):
        Cloud Run keeps a failed revision's template, and a deploy built on it (`gcloud run
        deploy --image ...`) would read the version a rollback disables. Best effort: logged."""
        if not serving:
            return
        try:
            svc = self._service(service)
            current = self._revision(service, serving)
            same = [type(c).to_dict(c) for c in svc.template.containers] == [
                type(c).to_dict(c) for c in current.containers
            ] and [type(v).to_dict(v) for v in svc.template.volumes] == [
                type(v).to_dict(v) for v in current.volumes
            ]
            if same:
                return
            svc.template.containers = list(current.containers)
            svc.template.volumes = list(current.volumes)
            svc.template.revision = ""  # a new name: Cloud Run refuses a taken one with another template
            self._update(svc, service, f"pointing its template back at {serving}")
        except VokeError as exc:
            log.warning(
                "%s: the template still differs from the serving revision %s: %s",
                service,
                serving,
                exc.message,
            )

    def _ready_revision(
        self, service: str, secret: str, version: int, *, exclude: str | None, like: Any
    ) -> str | None:
        """The newest ready revision already pinned to VERSION (a rerun's, or the previous one)
        that runs what LIKE (the serving revision) runs but for SECRET's version: an older one
        would also take back the versions of the other secrets it reads, and its image."""
        names = self._secret_names(secret)
        wanted = _runs(like, names) if like is not None else None
        for revision in sorted(self._all_revisions(service), key=lambda r: r.create_time, reverse=True):
            name = _short(revision.name)
            if name == exclude or self._pinned(revision, secret) != version:
                continue
            if wanted is not None and _runs(revision, names) != wanted:
                continue
            ready = any(
                c.type_ == "Ready" and int(c.state) == CONDITION_SUCCEEDED for c in revision.conditions
            )
            if ready:
                return name
        return None

    def deploy_many(self, targets: dict[str, tuple[str, int]]) -> list[ServiceInfo]:
        """Deploy several services in parallel; raises the first failure after all finished. An
        interrupt waits for the deploys under way (``interrupts.together``): what serves
        afterwards is what the caller reports."""
        futures = interrupts.together(self.deploy, [(n, s, v) for n, (s, v) in targets.items()])
        results, errors = [], []
        for future in futures:
            try:
                results.append(future.result())
            except Exception as exc:
                errors.append(exc)
        if errors:
            raise errors[0]
        return results

    def _info(self, service: str, secret: str, version: int, revision: str, url: str) -> ServiceInfo:
        return ServiceInfo(
            name=service, url=url, secret=secret, secret_version=version, healthy=True, instance=revision
        )
