"""In-process fakes of the Google Cloud APIs voke uses, spoken to by the REAL client libraries.

One `http.server` answers the REST APIs (Secret Manager, Cloud SQL Admin v1beta4, Cloud
Run v2, Resource Manager v3, Service Usage v1, and an OAuth token endpoint for key
verification); one `grpc.server` with generic handlers answers the gRPC-only ones
(Cloud Monitoring v3, IAM Admin v1). Each fake keeps state the way the service does:
secret versions, etags and aliases; Cloud SQL users, backups and operations that go
PENDING -> RUNNING -> DONE over successive polls; Cloud Run revisions, traffic and
operations; service-account keys; time series.

Use `FakeGcp` (all of them) as a context manager; `environment()` returns the
`[environments.NAME]` table that points voke at it. Errors have the real wire shape
(`{"error": {"code", "message", "status"}}`; a FAILED_PRECONDITION is HTTP 400), so the
adapters' error translation is tested as it runs against Google.
"""

from __future__ import annotations

import base64
import functools
import json
import re
import threading
import uuid
from collections.abc import Callable, Mapping
from concurrent import futures
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs

HTTP_STATUS = {
    "INVALID_ARGUMENT": 400,
    "FAILED_PRECONDITION": 400,
    "OUT_OF_RANGE": 400,
    "UNAUTHENTICATED": 401,
    "PERMISSION_DENIED": 403,
    "NOT_FOUND": 404,
    "ALREADY_EXISTS": 409,
    "ABORTED": 409,
    "RESOURCE_EXHAUSTED": 429,
    "INTERNAL": 500,
    "UNAVAILABLE": 503,
    "DEADLINE_EXCEEDED": 504,
}


class ApiError(Exception):
    """Raised by a fake handler: becomes the service's error document."""

    def __init__(self, status: str, message: str, reason: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.reason = reason  # the REST error's errors[].reason (Cloud SQL: operationInProgress, ...)


def ts(value: datetime | None = None) -> str:
    """A google.protobuf.Timestamp in JSON form."""
    value = value or datetime.now(timezone.utc)
    return value.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _parse_ts(value: Any) -> datetime | None:
    """An RFC 3339 timestamp of a JSON request (any number of fraction digits) as UTC."""
    if not value:
        return None
    m = re.fullmatch(r"(.+?T\d\d:\d\d:\d\d)(?:\.(\d+))?(Z|[+-]\d\d:\d\d)", str(value))
    if m is None:
        raise ApiError("INVALID_ARGUMENT", f"Invalid timestamp {value!r}.")
    frac = (m[2] or "0")[:6].ljust(6, "0")
    zone = "+00:00" if m[3] == "Z" else m[3]
    return datetime.fromisoformat(f"{m[1]}.{frac}{zone}").astimezone(timezone.utc)


def now() -> datetime:
    return datetime.now(timezone.utc)


@dataclass
class Request:
    """One REST request as a handler sees it."""

    method: str
    path: str
    query: dict[str, str]
    body: Any
    match: re.Match[str]
    headers: dict[str, str] = field(default_factory=dict)

    def __getitem__(self, key: int | str) -> str:
        return self.match[key]


Route = tuple[str, str, Callable[[Request], Any]]


@dataclass
class Fault:
    """A failure injected into the next matching calls."""

    method: str
    pattern: re.Pattern[str]
    status: str
    times: int
    after: int = 0  # matching calls let through first
    answer: str = "error"  # see FakeRestServer.fail


class FakeRestServer:
    """A threaded HTTP/1.1 server dispatching to (METHOD, path regex, handler) routes."""

    def __init__(self) -> None:
        self.routes: list[tuple[str, re.Pattern[str], Callable[[Request], Any]]] = []
        self.calls: list[tuple[str, str]] = []
        self.faults: list[Fault] = []
        self.lock = threading.RLock()
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # requests keeps connections alive
            # One buffered write per response, no Nagle: otherwise every call waits for a delayed ACK.
            wbufsize = 1 << 16
            disable_nagle_algorithm = True

            def log_message(self, *args: Any) -> None:
                return None

            def _any(self) -> None:
                path, _, raw_query = self.path.partition("?")
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                status, doc, ctype, answer = fake.dispatch(
                    self.command, path, raw_query, raw, dict(self.headers)
                )
                if answer in ("drop", "drop-after"):
                    self.close_connection = True  # no answer at all
                    return
                data = doc if isinstance(doc, bytes) else json.dumps(doc).encode()
                length = len(data)
                if answer == "cut":  # a consistent Content-Length: the body is just not whole JSON
                    data = data[: len(data) // 2]
                    length = len(data)
                elif answer == "short":  # the connection drops mid-body
                    data, self.close_connection = data[: len(data) // 2], True
                self.send_response(status)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(length))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _any

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.endpoint = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self._thread: threading.Thread | None = None

    def add(self, routes: list[Route]) -> None:
        for method, rx, fn in routes:
            self.routes.append((method, re.compile(rx), fn))

    def fail(
        self,
        method: str,
        path_regex: str,
        status: str = "UNAVAILABLE",
        times: int = 1,
        *,
        after: int = 0,
        answer: str = "error",
    ) -> None:
        """Make the next TIMES calls of METHOD on a path matching PATH_REGEX fail, once AFTER
        such calls have gone through. ANSWER says how: "error" (STATUS's error document),
        "html" (a proxy's HTML page with STATUS's HTTP code), "drop" (the connection closes
        before the call is handled); or the call is handled (its effect made) and then its
        answer is lost: "drop-after" (no answer), "short" (the connection drops mid-body),
        "cut" (HTTP 200 with half the body: not JSON)."""
        with self.lock:
            self.faults.append(Fault(method, re.compile(path_regex), status, times, after, answer))

    def dispatch(
        self, method: str, path: str, raw_query: str, raw: bytes, headers: dict[str, str]
    ) -> tuple[int, Any, str, str]:
        """(HTTP status, document, content type, how to answer: a Fault's `answer`)."""
        answer = "error"
        with self.lock:
            self.calls.append((method, path))
            for fault in self.faults:
                if fault.times > 0 and fault.method == method and fault.pattern.search(path):
                    if fault.after > 0:
                        fault.after -= 1
                        continue
                    fault.times -= 1
                    answer = fault.answer
                    if answer == "html":
                        code = 502
                        page = b"<!DOCTYPE html>\n<html><body><h1>Bad Gateway</h1></body></html>\n"
                        return code, page, "text/html; charset=UTF-8", answer
                    if answer in ("error", "drop"):
                        return (*_error(ApiError(fault.status, f"injected {fault.status}")), answer)
                    break
        return (*self._handle(method, path, raw_query, raw, headers), answer)

    def _handle(
        self, method: str, path: str, raw_query: str, raw: bytes, headers: dict[str, str]
    ) -> tuple[int, Any, str]:
        query = {k: v[-1] for k, v in parse_qs(raw_query, keep_blank_values=True).items()}
        ctype = headers.get("Content-Type", "")
        if "x-www-form-urlencoded" in ctype:
            body: Any = {k: v[-1] for k, v in parse_qs(raw.decode()).items()}
        else:
            try:
                body = json.loads(raw) if raw else None
            except ValueError:
                body = None
        for route_method, rx, fn in self.routes:
            m = rx.fullmatch(path)
            if m and route_method == method:
                try:
                    headers = {**headers, "X-Raw-Query": raw_query}
                    if getattr(fn, "unlocked", False):
                        out = fn(Request(method, path, query, body, m, headers))
                    else:
                        with self.lock:
                            out = fn(Request(method, path, query, body, m, headers))
                except ApiError as exc:
                    return _error(exc)
                except Exception as exc:  # a bug in a fake: answer like a server would, keep serving
                    return _error(ApiError("INTERNAL", f"fake failed: {type(exc).__name__}: {exc}"))
                if isinstance(out, tuple):  # (status, document)
                    return out[0], out[1], "application/json"
                return 200, out, "application/json"
        return _error(ApiError("NOT_FOUND", f"no route for {method} {path}"))

    def start(self) -> FakeRestServer:
        # stop() waits for the loop's next look at its shutdown flag: ~0.05 s a test at 0.05
        self._thread = threading.Thread(
            target=self.httpd.serve_forever, kwargs={"poll_interval": 0.005}, daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def _error(exc: ApiError) -> tuple[int, Any, str]:
    code = HTTP_STATUS.get(exc.status, 500)
    doc: dict[str, Any] = {"code": code, "message": exc.message, "status": exc.status}
    if exc.reason:
        doc["errors"] = [{"domain": "global", "reason": exc.reason, "message": exc.message}]
    return code, {"error": doc}, "application/json"


def _pick(body: dict[str, Any] | None, *names: str) -> Any:
    for name in names:
        if body and name in body:
            return body[name]
    return None


# -- Secret Manager ---------------------------------------------------------------------------------------
@dataclass
class _Version:
    number: int
    payload: bytes
    state: str = "ENABLED"
    create_time: str = field(default_factory=ts)
    destroy_time: str | None = None
    scheduled_destroy_time: str | None = None
    etag: str = field(default_factory=lambda: f'"{uuid.uuid4().hex[:14]}"')


@dataclass
class _Secret:
    name: str
    create_time: str = field(default_factory=ts)
    etag: str = field(default_factory=lambda: f'"{uuid.uuid4().hex[:14]}"')
    aliases: dict[str, int] = field(default_factory=dict)
    annotations: dict[str, str] = field(default_factory=dict)
    labels: dict[str, str] = field(default_factory=dict)
    destroy_ttl: str | None = None
    versions: list[_Version] = field(default_factory=list)

    def touch(self) -> None:
        self.etag = f'"{uuid.uuid4().hex[:14]}"'


ALIAS_RE = re.compile(r"[a-z][a-z0-9_-]{0,62}", re.I)


class FakeSecretManager:
    """Secret Manager v1 over REST: secrets, versions, states, aliases, annotations, etags."""

    def __init__(self, project: str) -> None:
        self.project = project
        self.secrets: dict[str, _Secret] = {}

    # -- helpers for tests ----------------------------------------------------------------------
    def payload(self, secret: str, version: int | str) -> bytes:
        """The stored value (as the service would serve it), for fakes that consume secrets."""
        s = self._secret(secret)
        return self._version(s, str(version)).payload

    def _secret(self, secret_id: str) -> _Secret:
        s = self.secrets.get(secret_id)
        if s is None:
            raise ApiError(
                "NOT_FOUND",
                f"Secret [projects/{self.project}/secrets/{secret_id}] not found or has no versions.",
            )
        return s

    def _version(self, s: _Secret, ref: str) -> _Version:
        if ref == "latest":
            if not s.versions:
                raise ApiError("NOT_FOUND", f"Secret [{s.name}] not found or has no versions.")
            return s.versions[-1]
        if ref.isdigit():
            number = int(ref)
        elif ref in s.aliases:
            number = s.aliases[ref]
        else:
            raise ApiError("NOT_FOUND", f"Secret Version [{s.name}/versions/{ref}] not found.")
        for v in s.versions:
            if v.number == number:
                return v
        raise ApiError("NOT_FOUND", f"Secret Version [{s.name}/versions/{ref}] not found.")

    def _secret_doc(self, s: _Secret) -> dict[str, Any]:
        doc: dict[str, Any] = {
            "name": f"projects/{self.project}/secrets/{s.name}",
            "replication": {"automatic": {}},
            "createTime": s.create_time,
            "etag": s.etag,
            "versionAliases": {k: str(v) for k, v in s.aliases.items()},
            "annotations": dict(s.annotations),
            "labels": dict(s.labels),
        }
        if s.destroy_ttl:
            doc["versionDestroyTtl"] = s.destroy_ttl
        return doc

    def _version_doc(self, s: _Secret, v: _Version) -> dict[str, Any]:
        doc: dict[str, Any] = {
            "name": f"projects/{self.project}/secrets/{s.name}/versions/{v.number}",
            "createTime": v.create_time,
            "state": v.state,
            "etag": v.etag,
            "replicationStatus": {"automatic": {}},
        }
        if v.destroy_time:
            doc["destroyTime"] = v.destroy_time
        if v.scheduled_destroy_time:
            doc["scheduledDestroyTime"] = v.scheduled_destroy_time
        return doc

    # -- handlers ----------------------------------------------------------------------------------
    def routes(self) -> list[Route]:
        p = r"/v1/projects/(?P<p>[^/]+)/secrets"
        return [
            ("POST", p, self.create),
            ("GET", p, self.list_secrets),
            ("GET", p + r"/(?P<s>[^/:]+)", self.get),
            ("PATCH", p + r"/(?P<s>[^/:]+)", self.patch),
            ("POST", p + r"/(?P<s>[^/:]+):addVersion", self.add_version),
            ("GET", p + r"/(?P<s>[^/:]+)/versions", self.list_versions),
            ("GET", p + r"/(?P<s>[^/:]+)/versions/(?P<v>[^/:]+)", self.get_version),
            ("GET", p + r"/(?P<s>[^/:]+)/versions/(?P<v>[^/:]+):access", self.access),
            (
                "POST",
                p + r"/(?P<s>[^/:]+)/versions/(?P<v>[^/:]+):(?P<op>enable|disable|destroy)",
                self.change_state,
            ),
        ]

    def create(self, r: Request) -> Any:
        secret_id = r.query.get("secretId") or r.query.get("secret_id") or ""
        if not re.fullmatch(r"[A-Za-z0-9_-]{1,255}", secret_id):
            raise ApiError("INVALID_ARGUMENT", f"invalid secret id {secret_id!r}")
        if secret_id in self.secrets:
            raise ApiError(
                "ALREADY_EXISTS", f"Secret [projects/{self.project}/secrets/{secret_id}] already exists."
            )
        body = r.body or {}
        s = _Secret(
            secret_id,
            labels=dict(body.get("labels") or {}),
            annotations=dict(body.get("annotations") or {}),
            destroy_ttl=_pick(body, "versionDestroyTtl", "version_destroy_ttl"),
        )
        self.secrets[secret_id] = s
        return self._secret_doc(s)

    def list_secrets(self, r: Request) -> Any:
        return {
            "secrets": [self._secret_doc(s) for s in self.secrets.values()],
            "totalSize": len(self.secrets),
        }

    def get(self, r: Request) -> Any:
        return self._secret_doc(self._secret(r["s"]))

    def patch(self, r: Request) -> Any:
        s = self._secret(r["s"])
        body = r.body or {}
        etag = body.get("etag")
        if etag and etag != s.etag:
            raise ApiError(
                "FAILED_PRECONDITION", f"The etag provided {etag} does not match the current etag {s.etag}."
            )
        mask = {
            m.strip() for m in (r.query.get("updateMask") or r.query.get("update_mask") or "").split(",") if m
        }
        if not mask:
            raise ApiError("INVALID_ARGUMENT", "update_mask is required")
        if mask & {"versionAliases", "version_aliases"}:
            aliases = {k: int(v) for k, v in (_pick(body, "versionAliases", "version_aliases") or {}).items()}
            if len(aliases) > 50:
                raise ApiError("INVALID_ARGUMENT", "a secret can have at most 50 aliases")
            for alias, number in aliases.items():
                if not ALIAS_RE.fullmatch(alias) or alias.lower() in ("latest", "new"):
                    raise ApiError("INVALID_ARGUMENT", f"invalid alias {alias!r}")
                v = next((v for v in s.versions if v.number == number), None)
                if v is None:
                    raise ApiError("NOT_FOUND", f"Secret Version [{s.name}/versions/{number}] not found.")
                if v.state == "DESTROYED" or v.scheduled_destroy_time:
                    raise ApiError(
                        "FAILED_PRECONDITION", f"cannot assign an alias to destroyed version {number}"
                    )
            s.aliases = aliases
        if mask & {"annotations"}:
            annotations = dict(body.get("annotations") or {})
            if len(json.dumps(annotations)) > 16 * 1024:
                raise ApiError("INVALID_ARGUMENT", "annotations exceed 16 KiB")
            for key in annotations:
                if not re.fullmatch(r"[a-z0-9]([a-z0-9_.-]{0,61}[a-z0-9])?", key):
                    raise ApiError("INVALID_ARGUMENT", f"invalid annotation key {key!r}")
            s.annotations = annotations
        if mask & {"labels"}:
            s.labels = dict(body.get("labels") or {})
        s.touch()
        return self._secret_doc(s)

    def add_version(self, r: Request) -> Any:
        s = self._secret(r["s"])
        data = base64.b64decode(((r.body or {}).get("payload") or {}).get("data") or "")
        if len(data) > 64 * 1024:
            raise ApiError("INVALID_ARGUMENT", "payload exceeds 64 KiB")
        v = _Version(len(s.versions) + 1, data)
        s.versions.append(v)  # the secret's etag does not change (as in Secret Manager)
        return self._version_doc(s, v)

    def list_versions(self, r: Request) -> Any:
        s = self._secret(r["s"])
        docs = [self._version_doc(s, v) for v in reversed(s.versions)]  # newest first, like the API
        return {"versions": docs, "totalSize": len(docs)}

    def get_version(self, r: Request) -> Any:
        s = self._secret(r["s"])
        return self._version_doc(s, self._version(s, r["v"]))

    def access(self, r: Request) -> Any:
        s = self._secret(r["s"])
        v = self._version(s, r["v"])
        if v.state != "ENABLED":
            raise ApiError(
                "FAILED_PRECONDITION", f"Secret Version [{s.name}/versions/{v.number}] is in {v.state} state."
            )
        return {
            "name": f"projects/{self.project}/secrets/{s.name}/versions/{v.number}",
            "payload": {"data": base64.b64encode(v.payload).decode()},
        }

    def change_state(self, r: Request) -> Any:
        s = self._secret(r["s"])
        v = self._version(s, r["v"])
        etag = (r.body or {}).get("etag")
        if etag and etag != v.etag:
            raise ApiError(
                "FAILED_PRECONDITION", f"The etag provided {etag} does not match the current etag {v.etag}."
            )
        op = r["op"]
        if v.state == "DESTROYED":
            raise ApiError(
                "FAILED_PRECONDITION", f"Secret Version [{s.name}/versions/{v.number}] is destroyed."
            )
        if op == "destroy":
            if v.number in s.aliases.values():
                raise ApiError("FAILED_PRECONDITION", f"version {v.number} has aliases; remove them first")
            if s.destroy_ttl:
                seconds = float(s.destroy_ttl.rstrip("s"))
                v.state = "DISABLED"
                v.scheduled_destroy_time = ts(now() + timedelta(seconds=seconds))
            else:
                v.state, v.payload, v.destroy_time = "DESTROYED", b"", ts()
        elif op == "enable":
            v.state, v.scheduled_destroy_time = "ENABLED", None
        else:
            v.state = "DISABLED"
        v.etag = f'"{uuid.uuid4().hex[:14]}"'
        return self._version_doc(s, v)


# -- Cloud Run ------------------------------------------------------------------------------------------------
TRAFFIC_TYPES = {
    1: "LATEST",
    2: "REVISION",
    "LATEST": "LATEST",
    "REVISION": "REVISION",
    "TRAFFIC_TARGET_ALLOCATION_TYPE_LATEST": "LATEST",
    "TRAFFIC_TARGET_ALLOCATION_TYPE_REVISION": "REVISION",
}


def unlocked(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Run this handler outside the server lock (it probes something slow)."""
    fn.unlocked = True  # type: ignore[attr-defined]
    return fn


def template_secret_refs(template: dict[str, Any]) -> list[tuple[str, str]]:
    """(secret, version) pairs a revision template reads (env secretKeyRef and secret volumes)."""
    out = []
    for container in template.get("containers") or []:
        for env in container.get("env") or []:
            ref = ((env.get("valueSource") or {}).get("secretKeyRef")) or {}
            if ref.get("secret"):
                out.append((ref["secret"].rsplit("/", 1)[-1], str(ref.get("version") or "latest")))
    for volume in template.get("volumes") or []:
        sec = volume.get("secret") or {}
        if sec.get("secret"):
            for item in sec.get("items") or [{"version": "latest"}]:
                out.append((sec["secret"].rsplit("/", 1)[-1], str(item.get("version") or "latest")))
    return out


def credential_login(payload: bytes) -> bool:
    """The default health probe of a fake revision: a fresh PostgreSQL login when the secret
    holds a database credential (JSON with username/password/host/port), else True."""
    try:
        cred = json.loads(payload)
    except ValueError:
        return True
    if not isinstance(cred, dict) or not {"username", "password", "host", "port"} <= cred.keys():
        return True
    import psycopg

    try:
        with psycopg.connect(
            host=cred["host"],
            port=int(cred["port"]),
            user=cred["username"],
            password=cred["password"],
            dbname=cred.get("dbname") or "postgres",
            connect_timeout=3,
        ) as conn:
            conn.execute("select 1")
        return True
    except psycopg.Error:
        return False


@dataclass
class _RunService:
    name: str
    template: dict[str, Any]
    traffic: list[dict[str, Any]]
    revisions: dict[str, dict[str, Any]] = field(default_factory=dict)
    order: list[str] = field(default_factory=list)
    generation: int = 1


class FakeCloudRun:
    """Cloud Run Admin v2 over REST: services, revisions, traffic, operations, health URLs.

    Each revision answers `GET <uri>/health` by reading the secret versions it is pinned
    to from the Secret Manager fake and passing them to PROBE (default: a real PostgreSQL
    login for database credentials), so an unusable version gives an unhealthy revision.
    """

    def __init__(
        self,
        project: str,
        region: str,
        secrets: FakeSecretManager,
        base_url: Callable[[], str],
        probe: Callable[[bytes], bool] = credential_login,
    ) -> None:
        self.project = project
        self.region = region
        self.secrets = secrets
        self.base_url = base_url
        self.probe = probe
        self.services: dict[str, _RunService] = {}
        self.operations: dict[str, dict[str, Any]] = {}
        self.op_polls = 1  # polls an operation answers "not done" before it is done
        self.unhealthy: set[tuple[str, str]] = set()  # (secret, version) that fail health (failure injection)
        self.unstartable: set[tuple[str, str]] = set()  # (secret, version) whose revisions never start
        self.health_calls: list[str] = []

    def _prefix(self) -> str:
        return f"projects/{self.project}/locations/{self.region}"

    def add_service(
        self,
        name: str,
        secret: str,
        version: int | str,
        *,
        env_var: str = "DB_CREDENTIALS",
        others: Mapping[str, int | str] | None = None,
    ) -> None:
        """Create a service with one ready revision reading SECRET at VERSION (and each of
        OTHERS, secret -> version, as a variable named after it)."""
        reads = {env_var: (secret, version)}
        reads.update({other.upper().replace("-", "_"): (other, v) for other, v in (others or {}).items()})
        template = {
            "containers": [
                {
                    "image": f"us-docker.pkg.dev/{self.project}/app/{name}:1",
                    "env": [
                        {"name": var, "valueSource": {"secretKeyRef": {"secret": sec, "version": str(ver)}}}
                        for var, (sec, ver) in reads.items()
                    ],
                }
            ],
        }
        svc = _RunService(name, template, [{"type": "LATEST", "percent": 100}])
        self._new_revision(svc, f"{name}-00001-abc")
        self.services[name] = svc

    def _new_revision(self, svc: _RunService, rev: str) -> None:
        tmpl = json.loads(json.dumps(svc.template))
        tmpl.pop("revision", None)
        svc.revisions[rev] = {"template": tmpl, "createTime": ts(), "generation": svc.generation}
        svc.order.append(rev)
        svc.template["revision"] = rev

    def _service(self, name: str) -> _RunService:
        svc = self.services.get(name)
        if svc is None:
            raise ApiError(
                "NOT_FOUND",
                f"Resource '{name}' of kind 'SERVICE' in region '{self.region}' in project "
                f"'{self.project}' does not exist.",
            )
        return svc

    def _resolve(self, svc: _RunService, target: dict[str, Any]) -> str:
        kind = TRAFFIC_TYPES.get(target.get("type", 2), "REVISION")
        return svc.order[-1] if kind == "LATEST" else target.get("revision", "")

    def serving(self, name: str) -> str:
        svc = self._service(name)
        best = max(svc.traffic, key=lambda t: t.get("percent", 0))
        return self._resolve(svc, best)

    def pinned(self, name: str, revision: str | None = None) -> list[tuple[str, str]]:
        svc = self._service(name)
        return template_secret_refs(svc.revisions[revision or self.serving(name)]["template"])

    def _uri(self, name: str) -> str:
        return f"{self.base_url()}/run/{name}"

    def _service_doc(self, svc: _RunService) -> dict[str, Any]:
        statuses = []
        for t in svc.traffic:
            # As Cloud Run answers: a target on LATEST keeps that type and names no revision.
            if TRAFFIC_TYPES.get(t.get("type", 2), "REVISION") == "LATEST":
                status = {"type": "TRAFFIC_TARGET_ALLOCATION_TYPE_LATEST", "percent": t.get("percent", 0)}
            else:
                status = {
                    "type": "TRAFFIC_TARGET_ALLOCATION_TYPE_REVISION",
                    "revision": self._resolve(svc, t),
                    "percent": t.get("percent", 0),
                }
            if t.get("tag"):
                status["tag"] = t["tag"]
                status["uri"] = f"{self._uri(svc.name)}/tag/{t['tag']}"
            statuses.append(status)
        prefix = f"{self._prefix()}/services/{svc.name}"
        return {
            "name": prefix,
            "uri": self._uri(svc.name),
            "generation": str(svc.generation),
            "observedGeneration": str(svc.generation),
            "template": json.loads(json.dumps(svc.template)),
            "traffic": [
                {
                    k: (
                        {
                            "LATEST": "TRAFFIC_TARGET_ALLOCATION_TYPE_LATEST",
                            "REVISION": "TRAFFIC_TARGET_ALLOCATION_TYPE_REVISION",
                        }[TRAFFIC_TYPES.get(v, "REVISION")]
                        if k == "type"
                        else v
                    )
                    for k, v in t.items()
                }
                for t in svc.traffic
            ],
            "trafficStatuses": statuses,
            "latestReadyRevision": f"{prefix}/revisions/{svc.order[-1]}",
            "latestCreatedRevision": f"{prefix}/revisions/{svc.order[-1]}",
            "terminalCondition": {"type": "Ready", "state": "CONDITION_SUCCEEDED"},
            "etag": f'"{svc.generation}"',
        }

    def _revision_doc(self, svc: _RunService, rev: str) -> dict[str, Any]:
        r = svc.revisions[rev]
        return {
            "name": f"{self._prefix()}/services/{svc.name}/revisions/{rev}",
            "service": svc.name,
            "generation": str(r["generation"]),
            "createTime": r["createTime"],
            "containers": r["template"].get("containers") or [],
            "volumes": r["template"].get("volumes") or [],
            "conditions": [
                {
                    "type": "Ready",
                    "state": "CONDITION_FAILED" if r.get("failed") else "CONDITION_SUCCEEDED",
                    "message": r.get("failed", ""),
                }
            ],
        }

    # -- handlers --------------------------------------------------------------------------------------
    def routes(self) -> list[Route]:
        p = r"/v2/projects/(?P<p>[^/]+)/locations/(?P<l>[^/]+)"
        return [
            ("GET", p + r"/services/(?P<s>[^/:]+)", self.get),
            ("PATCH", p + r"/services/(?P<s>[^/:]+)", self.patch),
            ("GET", p + r"/services/(?P<s>[^/:]+)/revisions", self.list_revisions),
            ("GET", p + r"/services/(?P<s>[^/:]+)/revisions/(?P<r>[^/:]+)", self.get_revision),
            ("GET", p + r"/operations/(?P<o>[^/:]+)", self.get_operation),
            ("GET", r"/run/(?P<s>[^/]+)(?:/tag/(?P<t>[^/]+))?/health", self.health),
        ]

    def get(self, r: Request) -> Any:
        return self._service_doc(self._service(r["s"]))

    def patch(self, r: Request) -> Any:
        svc = self._service(r["s"])
        body = r.body or {}
        template = body.get("template") or svc.template
        current = json.loads(json.dumps(svc.revisions[svc.order[-1]]["template"]))
        wanted = {k: v for k, v in template.items() if k != "revision"}
        name = template.get("revision") or ""
        if name and name in svc.revisions and svc.revisions[name]["template"] != wanted:
            raise ApiError(
                "ALREADY_EXISTS", f"Revision named '{name}' with different configuration already exists."
            )
        if name and name not in svc.revisions and not name.startswith(f"{svc.name}-"):
            raise ApiError("INVALID_ARGUMENT", f"revision name must start with '{svc.name}-'")
        # Cloud Run keeps any template it is sent (a failed revision's too); it makes a revision
        # only of a new name, or of an unnamed template that differs from the latest revision's.
        svc.template = json.loads(json.dumps(template))
        if (name and name not in svc.revisions) or (not name and wanted != current):
            svc.generation += 1
            name = name or f"{svc.name}-{svc.generation:05d}-{uuid.uuid4().hex[:3]}"
            problem = self._unusable_secret(template)
            if problem:  # the revision is created but never becomes ready; traffic stays where it was
                svc.revisions[name] = {
                    "template": wanted,
                    "createTime": ts(),
                    "generation": svc.generation,
                    "failed": problem,
                }
                op = f"{self._prefix()}/operations/{uuid.uuid4()}"
                self.operations[op] = {
                    "polls": self.op_polls,
                    "service": svc.name,
                    "error": f"Revision '{name}' is not ready and cannot serve traffic. {problem}",
                }
                return {"name": op, "done": False}
            self._new_revision(svc, name)
        traffic = body.get("traffic")
        if traffic is not None:
            targets = []
            for t in traffic:
                kind = TRAFFIC_TYPES.get(t.get("type", 0))
                if kind is None:
                    raise ApiError("INVALID_ARGUMENT", "traffic target type is required")
                entry: dict[str, Any] = {"type": kind, "percent": int(t.get("percent", 0))}
                if kind == "REVISION":
                    if t.get("revision") not in svc.revisions:
                        raise ApiError("INVALID_ARGUMENT", f"revision {t.get('revision')!r} does not exist")
                    entry["revision"] = t["revision"]
                if t.get("tag"):
                    entry["tag"] = t["tag"]
                targets.append(entry)
            if sum(int(t["percent"]) for t in targets) != 100:
                raise ApiError("INVALID_ARGUMENT", "traffic percentages must add up to 100")
            svc.traffic = targets
        op = f"{self._prefix()}/operations/{uuid.uuid4()}"
        self.operations[op] = {"polls": self.op_polls, "service": svc.name}
        return {
            "name": op,
            "done": False,
            "metadata": {
                "@type": "type.googleapis.com/google.cloud.run.v2.Service",
                "name": f"{self._prefix()}/services/{svc.name}",
            },
        }

    def _unusable_secret(self, template: dict[str, Any]) -> str | None:
        for secret, version in template_secret_refs(template):
            if (secret, version) in self.unstartable:
                return "The user-provided container failed to start and listen on the port."
            sec = self.secrets.secrets.get(secret)
            if sec is None:
                return f"Secret {secret} was not found."
            v = (
                sec.versions[-1]
                if version == "latest" and sec.versions
                else next((v for v in sec.versions if str(v.number) == version), None)
            )
            if v is None:
                return f"Secret {secret} version {version} was not found."
            if v.state != "ENABLED":
                return f"Secret {secret} version {version} is in {v.state} state."
        return None

    def list_revisions(self, r: Request) -> Any:
        svc = self._service(r["s"])
        return {"revisions": [self._revision_doc(svc, rev) for rev in reversed(svc.order)]}

    def get_revision(self, r: Request) -> Any:
        svc = self._service(r["s"])
        if r["r"] not in svc.revisions:
            raise ApiError("NOT_FOUND", f"Revision '{r['r']}' does not exist.")
        return self._revision_doc(svc, r["r"])

    def get_operation(self, r: Request) -> Any:
        name = f"projects/{r['p']}/locations/{r['l']}/operations/{r['o']}"
        op = self.operations.get(name)
        if op is None:
            raise ApiError("NOT_FOUND", f"operation {name} not found")
        if op["polls"] > 0:
            op["polls"] -= 1
            return {"name": name, "done": False}
        if op.get("error"):
            return {"name": name, "done": True, "error": {"code": 9, "message": op["error"]}}
        doc = self._service_doc(self.services[op["service"]])
        return {
            "name": name,
            "done": True,
            "response": {"@type": "type.googleapis.com/google.cloud.run.v2.Service", **doc},
        }

    @unlocked
    def health(self, r: Request) -> Any:
        svc = self._service(r["s"])
        if r["t"]:
            target = next((t for t in svc.traffic if t.get("tag") == r["t"]), None)
            if target is None:
                raise ApiError("NOT_FOUND", f"no tag {r['t']}")
            revision = self._resolve(svc, target)
        else:
            revision = self.serving(r["s"])
        self.health_calls.append(revision)
        for secret, version in template_secret_refs(svc.revisions[revision]["template"]):
            if (secret, version) in self.unhealthy:
                return 503, {"status": "unhealthy", "revision": revision}
            try:
                payload = self.secrets.payload(secret, version)
                sec = self.secrets.secrets[secret]
                v = next(v for v in sec.versions if str(v.number) == version or version == "latest")
                if version == "latest":
                    v = sec.versions[-1]
                if v.state != "ENABLED":
                    return 503, {
                        "status": "unhealthy",
                        "revision": revision,
                        "detail": "secret version not enabled",
                    }
            except (ApiError, StopIteration):
                return 503, {"status": "unhealthy", "revision": revision, "detail": "secret version missing"}
            if not self.probe(payload):
                return 503, {"status": "unhealthy", "revision": revision, "detail": "login failed"}
        return {"status": "ok", "revision": revision}


# -- Cloud SQL Admin v1beta4 ---------------------------------------------------------------------------------
class FakeCloudSql:
    """Cloud SQL Admin (v1beta4, REST): instances, users, backup runs, the recovery window,
    and operations that answer PENDING, then RUNNING, then DONE on successive polls (their
    effect lands at DONE, and a DONE operation can carry an error).

    `on_password(role, password)` is called when a users.update operation finishes: point
    it at a real PostgreSQL (tests use the local environment's primary) so that a
    rotation's login test is a real login.
    """

    def __init__(self, project: str, region: str) -> None:
        self.project = project
        self.region = region
        self.instances: dict[str, dict[str, Any]] = {}
        self.users: dict[tuple[str, str], str | None] = {}
        self.backups: dict[str, list[dict[str, Any]]] = {}
        self.backup_page_size = 100  # backupRuns.list pages (the API pages at maxResults)
        self.operations: dict[str, dict[str, Any]] = {}
        self.failures: dict[str, str] = {}  # operation type -> error message of its next run
        # instance -> how many more calls find it busy with an operation of Cloud SQL's own
        # (the backup after a create, maintenance): refused with 409 operationInProgress
        self.busy: dict[str, int] = {}
        self.on_password: Callable[[str, str], None] = lambda role, password: None
        # Data-path hooks (see PostgresInstances): a new instance NAME from SOURCE, a deletion,
        # a promotion (the replica catches up with its primary first).
        self.on_create: Callable[[str, str | None], None] = lambda name, source: None
        self.on_delete: Callable[[str], None] = lambda name: None
        self.on_promote: Callable[[str, str], None] = lambda replica, primary: None
        # a clone with pointInTime: the new instance NAME holds only what committed by then
        self.on_point_in_time: Callable[[str, datetime], None] = lambda name, when: None
        self.deleted: set[str] = set()  # Cloud SQL does not reuse a deleted instance's name for a while
        self.recovery_lag = timedelta(seconds=30)  # latestRecoveryTime trails now by this much
        self.polls_per_step = 1
        self.ended_before_seen = timedelta(0)  # endTime this long before the poll that sees DONE
        # the caller's IAM permissions on the project (None: all of them): a call needing another
        # is refused (403) as Cloud SQL refuses it, e.g. catalog.PROJECT_PERMISSIONS for the job
        self.granted: frozenset[str] | None = None

    def add_instance(
        self,
        name: str,
        *,
        region: str | None = None,
        replica_of: str | None = None,
        ip: str = "10.20.0.3",
        users: tuple[str, ...] = (),
        dr_replica: str | None = None,
        edition: str = "ENTERPRISE_PLUS",
        labels: dict[str, str] | None = None,
        pitr: bool = True,
    ) -> None:
        self.instances[name] = {
            "name": name,
            "region": region or self.region,
            "master": replica_of,
            "replicas": [],
            "settingsVersion": 1,
            "state": "RUNNABLE",
            "ip": ip,
            "dr_replica": dr_replica,
            "edition": edition,
            "labels": dict(labels or {}),
            "tier": "db-perf-optimized-N-4",
            "pitr": pitr,  # point-in-time recovery on
        }
        if replica_of:
            self.instances[replica_of]["replicas"].append(name)
        for user in users:
            self.users[(name, user)] = None
        self.backups.setdefault(name, [])

    def add_backup(self, instance: str, status: str, ended: datetime) -> None:
        runs = self.backups.setdefault(instance, [])
        runs.insert(
            0,
            {
                "id": str(1_700_000_000_000 + len(runs)),
                "status": status,
                "type": "AUTOMATED",
                "startTime": ts(ended - timedelta(minutes=4)),
                "endTime": ts(ended),
                "windowStartTime": ts(ended - timedelta(minutes=5)),
                "backupKind": "SNAPSHOT",
                "kind": "sql#backupRun",
                "instance": instance,
            },
        )

    def fail_next(self, operation_type: str, message: str) -> None:
        self.failures[operation_type] = message

    def _instance(self, name: str) -> dict[str, Any]:
        inst = self.instances.get(name)
        if inst is None:
            raise ApiError("NOT_FOUND", "The Cloud SQL instance does not exist.")
        return inst

    def _instance_doc(self, inst: dict[str, Any]) -> dict[str, Any]:
        doc: dict[str, Any] = {
            "kind": "sql#instance",
            "name": inst["name"],
            "project": self.project,
            "state": inst["state"],
            "databaseVersion": "POSTGRES_16",
            "region": inst["region"],
            "instanceType": "READ_REPLICA_INSTANCE" if inst["master"] else "CLOUD_SQL_INSTANCE",
            "connectionName": f"{self.project}:{inst['region']}:{inst['name']}",
            "ipAddresses": [{"type": "PRIVATE", "ipAddress": inst["ip"]}],
            "replicaNames": list(inst["replicas"]),
            "settings": {
                "settingsVersion": str(inst["settingsVersion"]),
                "tier": inst["tier"],
                "userLabels": dict(inst["labels"]),
                "availabilityType": "REGIONAL",
                "edition": inst["edition"],
                "backupConfiguration": {
                    "enabled": True,
                    "pointInTimeRecoveryEnabled": inst["pitr"],
                    "transactionLogRetentionDays": 7,
                    "startTime": "03:00",
                },
            },
        }
        if inst["master"]:
            doc["masterInstanceName"] = f"{self.project}:{inst['master']}"
        if inst.get("dr_replica"):
            doc["replicationCluster"] = {"failoverDrReplicaName": f"{self.project}:{inst['dr_replica']}"}
        return doc

    def _operation(self, kind: str, target: str, effect: Callable[[], None]) -> dict[str, Any]:
        busy = self.busy.get(target, 0) > 0
        if busy:
            self.busy[target] -= 1
        if busy or any(
            o["doc"]["targetId"] == target and o["doc"]["status"] != "DONE" for o in self.operations.values()
        ):
            # As Cloud SQL: one operation at a time per instance (HTTP 409)
            raise ApiError(
                "ABORTED",
                "Operation failed because another operation was already in progress.",
                reason="operationInProgress",
            )
        op_id = str(uuid.uuid4())
        doc = {
            "kind": "sql#operation",
            "name": op_id,
            "operationType": kind,
            "status": "PENDING",
            "targetId": target,
            "targetProject": self.project,
            "insertTime": ts(),
            "selfLink": f"https://sqladmin.googleapis.com/sql/v1beta4/projects/{self.project}/operations/{op_id}",
        }
        self.operations[op_id] = {
            "doc": doc,
            "effect": effect,
            "polls": 0,
            "error": self.failures.pop(kind, None),
        }
        return dict(doc)

    # -- handlers --------------------------------------------------------------------------------------
    def routes(self) -> list[Route]:
        p = r"/sql/v1beta4/projects/(?P<p>[^/]+)"
        i = p + r"/instances/(?P<i>[^/]+)"
        # each method with the IAM permission Cloud SQL checks for it (operations: instances.get)
        routes: list[tuple[str, str, str, Callable[[Request], Any]]] = [
            ("GET", p + "/instances", "instances.list", self.list_instances),
            ("POST", p + "/instances", "instances.create", self.insert),
            ("GET", i, "instances.get", lambda r: self._instance_doc(self._instance(r["i"]))),
            ("PATCH", i, "instances.update", self.patch),
            ("DELETE", i, "instances.delete", self.delete),
            ("GET", i + "/users", "users.list", self.list_users),
            ("PUT", i + "/users", "users.update", self.update_user),
            ("GET", i + "/backupRuns", "backupRuns.list", self.list_backups),
            ("GET", i + "/getLatestRecoveryTime", "instances.get", self.recovery_time),
            ("POST", i + "/clone", "instances.clone", self.clone),
            ("POST", i + "/promoteReplica", "instances.promoteReplica", self.promote),
            ("POST", i + "/switchover", "instances.failover", self.switchover),
            ("GET", p + r"/operations/(?P<o>[^/]+)", "instances.get", self.get_operation),
            ("GET", p + "/operations", "instances.get", self.list_operations),
        ]
        return [(method, rx, self._needs("cloudsql." + perm, fn)) for method, rx, perm, fn in routes]

    def _needs(self, permission: str, fn: Callable[[Request], Any]) -> Callable[[Request], Any]:
        @functools.wraps(fn)  # its name too: tests find a handler by it
        def checked(r: Request) -> Any:
            if self.granted is not None and permission not in self.granted:
                raise ApiError(
                    "PERMISSION_DENIED", "The client is not authorized to make this request.", "notAuthorized"
                )
            return fn(r)

        return checked

    def list_instances(self, r: Request) -> Any:
        return {
            "kind": "sql#instancesList",
            "items": [self._instance_doc(i) for i in self.instances.values()],
        }

    def patch(self, r: Request) -> Any:
        """Only `settings.userLabels` is applied, merged into the instance's labels as Cloud SQL
        does (a key left out stays; hashicorp/terraform-provider-google#8675)."""
        inst = self._instance(r["i"])
        settings = (r.body or {}).get("settings") or {}
        labels = settings.get("userLabels")
        for key, value in (labels or {}).items():
            if not re.fullmatch(r"[a-z][a-z0-9_-]{0,62}", key) or not re.fullmatch(
                r"[a-z0-9_-]{0,63}", value
            ):
                raise ApiError("INVALID_ARGUMENT", f"Invalid label {key}={value}.")

        def effect() -> None:
            if labels is not None:
                inst["labels"] = {**inst.get("labels", {}), **labels}
            inst["settingsVersion"] += 1

        return self._operation("UPDATE", r["i"], effect)

    def insert(self, r: Request) -> Any:
        """instances.insert: only read replicas (masterInstanceName) are supported."""
        body = r.body or {}
        name, master = body.get("name"), body.get("masterInstanceName")
        if not name:
            raise ApiError("INVALID_ARGUMENT", "name is required")
        if name in self.instances or name in self.deleted:
            raise ApiError("ALREADY_EXISTS", f"instance {name} already exists or was used recently")
        if not master:
            raise ApiError("INVALID_ARGUMENT", "the fake creates read replicas only (masterInstanceName)")
        source = self._instance(str(master).rsplit(":", 1)[-1])
        if source["master"]:
            raise ApiError("FAILED_PRECONDITION", "a replica of a replica is not supported")
        labels = ((body.get("settings") or {}).get("userLabels")) or {}
        region = body.get("region") or source["region"]

        def effect() -> None:
            self.add_instance(
                name, region=region, replica_of=source["name"], labels=labels, edition=source["edition"]
            )
            self.on_create(name, source["name"])

        return self._operation("CREATE_REPLICA", name, effect)

    def delete(self, r: Request) -> Any:
        inst = self._instance(r["i"])
        if inst["replicas"]:
            raise ApiError("FAILED_PRECONDITION", "The instance has read replicas; delete them first.")

        def effect() -> None:
            self.instances.pop(inst["name"], None)
            self.deleted.add(inst["name"])
            if inst["master"] in self.instances:
                self.instances[inst["master"]]["replicas"].remove(inst["name"])
            self.on_delete(inst["name"])

        return self._operation("DELETE", r["i"], effect)

    def list_users(self, r: Request) -> Any:
        self._instance(r["i"])
        return {
            "kind": "sql#usersList",
            "items": [
                {"kind": "sql#user", "name": u, "instance": i, "project": self.project}
                for (i, u) in self.users
                if i == r["i"]
            ],
        }

    def update_user(self, r: Request) -> Any:
        self._instance(r["i"])
        name = r.query.get("name") or ""
        if (r["i"], name) not in self.users:
            raise ApiError("NOT_FOUND", f"The user {name} does not exist on instance {r['i']}.")
        password = (r.body or {}).get("password")
        if not password:
            raise ApiError("INVALID_ARGUMENT", "password is required")

        def effect() -> None:
            self.users[(r["i"], name)] = password
            self.on_password(name, password)

        return self._operation("UPDATE_USER", r["i"], effect)

    def list_backups(self, r: Request) -> Any:
        """backupRuns.list, newest first, in pages of at most maxResults (and backup_page_size)."""
        self._instance(r["i"])
        runs = list(self.backups.get(r["i"], []))
        size = min(int(r.query.get("maxResults") or len(runs) or 1), self.backup_page_size)
        start = int(r.query.get("pageToken") or 0)
        doc: dict[str, Any] = {"kind": "sql#backupRunsList", "items": runs[start : start + size]}
        if start + size < len(runs):
            doc["nextPageToken"] = str(start + size)
        return doc

    def recovery_time(self, r: Request) -> Any:
        if self._instance(r["i"])["master"]:  # like Cloud SQL: a read replica has no PITR
            raise ApiError(
                "INVALID_ARGUMENT",
                "Invalid request: point-in-time recovery is not supported on a read replica.",
            )
        return {
            "kind": "sql#getLatestRecoveryTime",
            "latestRecoveryTime": ts(now() - self.recovery_lag),
            "earliestRecoveryTime": ts(now() - timedelta(days=7)),
        }

    def clone(self, r: Request) -> Any:
        self._instance(r["i"])
        ctx = (r.body or {}).get("cloneContext") or {}
        dest = ctx.get("destinationInstanceName")
        if not dest:
            raise ApiError("INVALID_ARGUMENT", "destinationInstanceName is required")
        if dest in self.instances or dest in self.deleted:
            raise ApiError("ALREADY_EXISTS", f"instance {dest} already exists or was used recently")
        source = r["i"]
        point = _parse_ts(ctx.get("pointInTime"))
        if point is not None and point > now() - self.recovery_lag:
            raise ApiError(
                "INVALID_ARGUMENT", "The requested point in time is after the latest recovery time."
            )

        def effect() -> None:
            # like Cloud SQL, a clone copies its source's settings, userLabels included
            self.add_instance(
                dest,
                ip="10.20.0.9",
                edition=self.instances[source]["edition"],
                labels=self.instances[source]["labels"],
            )
            self.on_create(dest, source)
            if point is not None:
                self.on_point_in_time(dest, point)

        return self._operation("CLONE", r["i"], effect)

    def _require_dr_replica(self, inst: dict[str, Any], what: str) -> None:
        primary = self.instances[inst["master"]]
        if primary["edition"] != "ENTERPRISE_PLUS" or primary.get("dr_replica") != inst["name"]:
            raise ApiError(
                "FAILED_PRECONDITION",
                f"{what} needs an Enterprise Plus primary whose DR replica is {inst['name']}.",
            )

    def promote(self, r: Request) -> Any:
        inst = self._instance(r["i"])
        if not inst["master"]:
            raise ApiError("FAILED_PRECONDITION", "The instance is not a read replica.")
        failover = r.query.get("failover") == "true"
        if failover:
            self._require_dr_replica(inst, "Replica failover")

        def effect() -> None:
            old = self.instances[inst["master"]]
            self.on_promote(inst["name"], old["name"])
            old["replicas"].remove(inst["name"])
            inst["master"] = None
            inst["settingsVersion"] += 1
            if failover:  # the old primary follows the promoted DR replica and becomes its DR replica
                old["master"], inst["replicas"] = inst["name"], [old["name"]]
                inst["dr_replica"], old["dr_replica"] = old["name"], None

        return self._operation("PROMOTE_REPLICA", r["i"], effect)

    def switchover(self, r: Request) -> Any:
        inst = self._instance(r["i"])
        if not inst["master"]:
            raise ApiError("FAILED_PRECONDITION", "switchover is called on the DR replica")
        self._require_dr_replica(inst, "Switchover")

        def effect() -> None:
            old = self.instances[inst["master"]]
            old["replicas"].remove(inst["name"])
            inst["master"], inst["replicas"] = None, [old["name"]]
            old["master"] = inst["name"]
            inst["dr_replica"], old["dr_replica"] = old["name"], None

        return self._operation("SWITCHOVER", r["i"], effect)

    def finish_pending(self) -> None:
        """What Cloud SQL does on its own, polled or not: every operation under way ends."""
        for op in self.operations.values():
            doc = op["doc"]
            if doc["status"] != "DONE":
                if op["error"]:
                    doc["error"] = {
                        "kind": "sql#operationErrors",
                        "errors": [{"code": "INTERNAL_ERROR", "message": op["error"]}],
                    }
                else:
                    op["effect"]()
                doc["status"], doc["endTime"] = "DONE", ts()

    def list_operations(self, r: Request) -> Any:
        """operations.list of one instance, newest first (by insertTime), in pages of maxResults."""
        instance = r.query.get("instance")
        if not instance:
            raise ApiError("INVALID_ARGUMENT", "Invalid request: instance is required.")
        docs = [o["doc"] for o in self.operations.values() if o["doc"]["targetId"] == instance]
        docs.sort(key=lambda d: d["insertTime"], reverse=True)
        size = int(r.query.get("maxResults") or len(docs) or 1)
        start = int(r.query.get("pageToken") or 0)
        page: dict[str, Any] = {
            "kind": "sql#operationsList",
            "items": [dict(d) for d in docs[start : start + size]],
        }
        if start + size < len(docs):
            page["nextPageToken"] = str(start + size)
        return page

    def get_operation(self, r: Request) -> Any:
        op = self.operations.get(r["o"])
        if op is None:
            raise ApiError("NOT_FOUND", f"The Cloud SQL operation {r['o']} does not exist.")
        doc = op["doc"]
        op["polls"] += 1
        if doc["status"] == "PENDING" and op["polls"] >= self.polls_per_step:
            doc["status"], doc["startTime"], op["polls"] = "RUNNING", ts(), 0
        elif doc["status"] == "RUNNING" and op["polls"] >= self.polls_per_step:
            if op["error"]:
                doc["error"] = {
                    "kind": "sql#operationErrors",
                    "errors": [
                        {"kind": "sql#operationError", "code": "INTERNAL_ERROR", "message": op["error"]}
                    ],
                }
            else:
                op["effect"]()
            doc["status"], doc["endTime"] = "DONE", ts(datetime.now(timezone.utc) - self.ended_before_seen)
        return dict(doc)


# -- Resource Manager v3 and Service Usage v1 (voke doctor) --------------------------------------------------------
class FakeProjects:
    """Resource Manager v3 projects.get / testIamPermissions and Service Usage v1
    services:batchGet, with the granted permissions and enabled APIs as plain sets."""

    def __init__(self, project: str) -> None:
        self.project = project
        self.granted: set[str] = set()
        self.enabled: set[str] = set()

    def grant_all(self) -> None:
        from voketag_ops.adapters.gcp import catalog

        self.granted = set(catalog.PERMISSIONS)
        self.enabled = set(catalog.REQUIRED_APIS)

    def routes(self) -> list[Route]:
        return [
            ("GET", r"/v3/projects/(?P<p>[^/:]+)", self.get),
            ("POST", r"/v3/projects/(?P<p>[^/:]+):testIamPermissions", self.test_permissions),
            ("GET", r"/v1/projects/(?P<p>[^/:]+)/services:batchGet", self.batch_get),
        ]

    def _check(self, project: str) -> None:
        if project != self.project:
            raise ApiError("PERMISSION_DENIED", f"Permission denied on resource project {project}.")

    def get(self, r: Request) -> Any:
        self._check(r["p"])
        return {
            "name": "projects/123456789012",
            "projectId": self.project,
            "state": "ACTIVE",
            "displayName": self.project,
            "parent": "organizations/1",
        }

    def test_permissions(self, r: Request) -> Any:
        self._check(r["p"])
        asked = (r.body or {}).get("permissions") or []
        return {"permissions": [p for p in asked if p in self.granted]}

    def batch_get(self, r: Request) -> Any:
        self._check(r["p"])
        names = parse_qs(r.headers.get("X-Raw-Query", "")).get("names") or []
        return {
            "services": [
                {
                    "name": n,
                    "parent": "projects/123456789012",
                    "state": "ENABLED" if n.rsplit("/", 1)[1] in self.enabled else "DISABLED",
                }
                for n in names
            ]
        }


# -- gRPC-only APIs: Monitoring v3 and IAM Admin v1 -------------------------------------------------------------
class GrpcAbort(Exception):
    """Raised by a gRPC fake handler: aborts the call with a status code."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def _unary(fn: Callable[[Any], Any], request_type: Any, response_type: Any) -> Any:
    import grpc

    def handler(request: Any, context: Any) -> Any:
        try:
            return fn(request)
        except GrpcAbort as exc:
            context.abort(getattr(grpc.StatusCode, exc.code), exc.message)

    serialize = getattr(response_type, "serialize", None) or response_type.SerializeToString
    return grpc.unary_unary_rpc_method_handler(
        handler, request_deserializer=request_type.deserialize, response_serializer=serialize
    )


_FILTER = re.compile(r'([\w.]+)\s*=\s*"([^"]*)"')


class FakeMonitoring:
    """Cloud Monitoring v3 MetricService over gRPC: CreateTimeSeries and ListTimeSeries
    (filters of `key = "value"` terms joined by AND)."""

    def __init__(self, project: str, sql: FakeCloudSql | None = None) -> None:
        self.project = project
        self.series: list[Any] = []
        self.refuse: str | None = None  # a gRPC status code every CreateTimeSeries fails with
        self.refuse_reads: str | None = None  # ... and every ListTimeSeries
        # As Cloud SQL does, every RUNNABLE replica reports its lag and every RUNNABLE primary its
        # archived WAL, unless a test adds its own points for them or turns this off (no data).
        self.sql = sql
        self.system_metrics = True

    def add_point(
        self,
        metric: str,
        value: float,
        *,
        resource: dict[str, str] | None = None,
        labels: dict[str, str] | None = None,
        at: datetime | None = None,
        integer: bool = False,
    ) -> None:
        from google.cloud import monitoring_v3

        when = (at or now()).timestamp()
        self.series.append(
            monitoring_v3.TimeSeries(
                metric={"type": metric, "labels": labels or {}},
                resource={"type": "cloudsql_database", "labels": resource or {}},
                points=[
                    {
                        "interval": {"end_time": {"seconds": int(when)}},
                        "value": {"int64_value": int(value)} if integer else {"double_value": float(value)},
                    }
                ],
            )
        )

    def written(self, metric: str) -> list[Any]:
        return [s for s in self.series if s.metric.type == metric]

    def _system_series(self, terms: dict[str, str], end: float) -> list[Any]:
        """What Cloud SQL itself would report for TERMS: a replica's lag (0.5 s), a primary's
        archived WAL segments (12 in the window)."""
        from google.cloud import monitoring_v3

        from voketag_ops.adapters.gcp import catalog

        if not (self.system_metrics and self.sql is not None):
            return []
        _, _, name = terms.get("resource.labels.database_id", "").partition(":")
        inst = self.sql.instances.get(name)
        if inst is None or inst["state"] != "RUNNABLE":
            return []
        metric = terms.get("metric.type")
        if metric == catalog.REPLICA_LAG and inst["master"]:
            value: dict[str, Any] = {"double_value": 0.5}
        elif metric == catalog.LOG_ARCHIVE_SUCCESSES and not inst["master"]:
            value = {"int64_value": 12}
        else:
            return []
        return [
            monitoring_v3.TimeSeries(
                metric={"type": metric},
                resource={"type": "cloudsql_database", "labels": {"database_id": f"{self.project}:{name}"}},
                points=[{"interval": {"end_time": {"seconds": int(end)}}, "value": value}],
            )
        ]

    def handlers(self) -> Any:
        import grpc
        from google.cloud import monitoring_v3
        from google.protobuf import empty_pb2

        def create(req: Any) -> Any:
            if self.refuse:
                raise GrpcAbort(self.refuse, f"injected {self.refuse}")
            for ts_ in req.time_series:
                if not ts_.metric.type.startswith(("custom.googleapis.com/", "workload.googleapis.com/")):
                    raise GrpcAbort("INVALID_ARGUMENT", f"cannot write {ts_.metric.type}")
                self.series.append(ts_)
            return empty_pb2.Empty()

        def list_(req: Any) -> Any:
            if self.refuse_reads:
                raise GrpcAbort(self.refuse_reads, f"injected {self.refuse_reads}")
            terms = dict(_FILTER.findall(req.filter))
            start, end = req.interval.start_time.timestamp(), req.interval.end_time.timestamp()
            out = []
            for ts_ in self.series:
                if terms.get("metric.type") not in (None, ts_.metric.type):
                    continue
                ok = all(
                    (ts_.resource.labels.get(k.removeprefix("resource.labels.")) == v)
                    if k.startswith("resource.labels.")
                    else (ts_.metric.labels.get(k.removeprefix("metric.labels.")) == v)
                    if k.startswith("metric.labels.")
                    else True
                    for k, v in terms.items()
                )
                points = [p for p in ts_.points if start <= p.interval.end_time.timestamp() <= end + 1]
                if ok and points:
                    out.append(
                        monitoring_v3.TimeSeries(metric=ts_.metric, resource=ts_.resource, points=points)
                    )
            if not out:
                out = self._system_series(terms, end)
            return monitoring_v3.ListTimeSeriesResponse(time_series=out)

        return grpc.method_handlers_generic_handler(
            "google.monitoring.v3.MetricService",
            {
                "CreateTimeSeries": _unary(create, monitoring_v3.CreateTimeSeriesRequest, empty_pb2.Empty),
                "ListTimeSeries": _unary(
                    list_, monitoring_v3.ListTimeSeriesRequest, monitoring_v3.ListTimeSeriesResponse
                ),
            },
        )


class FakeIam:
    """IAM Admin v1 service-account keys over gRPC (list, get, create with a real RSA key
    file, disable, enable, delete; at most 10 user-managed keys), plus the OAuth token
    endpoint (REST) that accepts a JWT signed by an enabled key: a real verification."""

    MAX_KEYS = 10

    def __init__(self, project: str, token_uri: Callable[[], str]) -> None:
        self.project = project
        self.token_uri = token_uri
        self.keys: dict[str, dict[str, Any]] = {}  # key name -> record
        self.tokens_issued = 0
        self.refuse_new_keys = False  # failure injection: keys created from now on never authenticate

    def add_account(self, email: str, *, keys: int = 0) -> list[dict[str, Any]]:
        """Make EMAIL known, with KEYS existing user-managed keys; returns their key files."""
        self.keys.setdefault(f"__account__{email}", {"account": email, "marker": True})
        return [self._create(email) for _ in range(keys)]

    def _accounts(self) -> set[str]:
        return {r["account"] for r in self.keys.values() if r.get("marker")}

    def _account_of(self, name: str) -> str:
        m = re.fullmatch(r"projects/[^/]+/serviceAccounts/([^/]+)(?:/keys/[^/]+)?", name)
        if not m or m[1] not in self._accounts():
            raise GrpcAbort("NOT_FOUND", f"Service account {name} does not exist.")
        return m[1]

    def user_keys(self, email: str) -> list[dict[str, Any]]:
        return [r for r in self.keys.values() if not r.get("marker") and r["account"] == email]

    def _create(self, email: str) -> dict[str, Any]:
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric import rsa

        if len(self.user_keys(email)) >= self.MAX_KEYS:
            raise GrpcAbort("FAILED_PRECONDITION", "Precondition check failed.")
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        key_id = uuid.uuid4().hex + uuid.uuid4().hex[:8]
        pem = key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        ).decode()
        name = f"projects/{self.project}/serviceAccounts/{email}/keys/{key_id}"
        key_file = {
            "type": "service_account",
            "project_id": self.project,
            "private_key_id": key_id,
            "private_key": pem,
            "client_email": email,
            "client_id": "1" * 21,
            "token_uri": self.token_uri(),
            "auth_uri": "https://accounts.google.com/o/oauth2/auth",
        }
        self.keys[name] = {
            "account": email,
            "name": name,
            "public": key.public_key(),
            "disabled": False,
            "created": now(),
            "key_file": key_file,
            "refused": self.refuse_new_keys,
        }
        return key_file

    def _doc(self, record: dict[str, Any], *, private: bytes = b"") -> Any:
        from google.cloud import iam_admin_v1

        return iam_admin_v1.ServiceAccountKey(
            name=record["name"],
            disabled=record["disabled"],
            key_type=1,
            private_key_type=2,
            key_algorithm=2,
            valid_after_time=record["created"],
            private_key_data=private,
        )

    def handlers(self) -> Any:
        import grpc
        from google.cloud import iam_admin_v1
        from google.protobuf import empty_pb2

        def key(name: str) -> dict[str, Any]:
            self._account_of(name)
            record = self.keys.get(name)
            if record is None:
                raise GrpcAbort("NOT_FOUND", f"Service account key {name} does not exist.")
            return record

        def list_(req: Any) -> Any:
            email = self._account_of(req.name)
            return iam_admin_v1.ListServiceAccountKeysResponse(
                keys=[self._doc(r) for r in self.user_keys(email)]
            )

        def create(req: Any) -> Any:
            email = self._account_of(req.name)
            key_file = self._create(email)
            record = self.keys[
                f"projects/{self.project}/serviceAccounts/{email}/keys/{key_file['private_key_id']}"
            ]
            return self._doc(record, private=json.dumps(key_file).encode())

        def get(req: Any) -> Any:
            return self._doc(key(req.name))

        def set_disabled(value: bool) -> Callable[[Any], Any]:
            def change(req: Any) -> Any:
                key(req.name)["disabled"] = value
                return empty_pb2.Empty()

            return change

        def delete(req: Any) -> Any:
            key(req.name)
            del self.keys[req.name]
            return empty_pb2.Empty()

        return grpc.method_handlers_generic_handler(
            "google.iam.admin.v1.IAM",
            {
                "ListServiceAccountKeys": _unary(
                    list_,
                    iam_admin_v1.ListServiceAccountKeysRequest,
                    iam_admin_v1.ListServiceAccountKeysResponse,
                ),
                "GetServiceAccountKey": _unary(
                    get, iam_admin_v1.GetServiceAccountKeyRequest, iam_admin_v1.ServiceAccountKey
                ),
                "CreateServiceAccountKey": _unary(
                    create, iam_admin_v1.CreateServiceAccountKeyRequest, iam_admin_v1.ServiceAccountKey
                ),
                "DisableServiceAccountKey": _unary(
                    set_disabled(True), iam_admin_v1.DisableServiceAccountKeyRequest, empty_pb2.Empty
                ),
                "EnableServiceAccountKey": _unary(
                    set_disabled(False), iam_admin_v1.EnableServiceAccountKeyRequest, empty_pb2.Empty
                ),
                "DeleteServiceAccountKey": _unary(
                    delete, iam_admin_v1.DeleteServiceAccountKeyRequest, empty_pb2.Empty
                ),
            },
        )

    def routes(self) -> list[Route]:
        return [("POST", r"/token", self.token)]

    def token(self, r: Request) -> Any:
        """OAuth 2.0 JWT-bearer grant: verify the assertion's RS256 signature with the key it names."""
        from cryptography.exceptions import InvalidSignature
        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives.asymmetric import padding

        bad = (400, {"error": "invalid_grant", "error_description": "Invalid JWT Signature."})
        assertion = (r.body or {}).get("assertion", "")
        try:
            head_b64, claims_b64, sig_b64 = assertion.split(".")
            header = json.loads(base64.urlsafe_b64decode(head_b64 + "=" * (-len(head_b64) % 4)))
            claims = json.loads(base64.urlsafe_b64decode(claims_b64 + "=" * (-len(claims_b64) % 4)))
            signature = base64.urlsafe_b64decode(sig_b64 + "=" * (-len(sig_b64) % 4))
        except ValueError:
            return bad
        record = self.keys.get(
            f"projects/{self.project}/serviceAccounts/{claims.get('iss')}/keys/{header.get('kid')}"
        )
        if record is None or record["disabled"] or record.get("refused"):
            return bad
        try:
            record["public"].verify(
                signature, f"{head_b64}.{claims_b64}".encode(), padding.PKCS1v15(), hashes.SHA256()
            )
        except InvalidSignature:
            return bad
        self.tokens_issued += 1
        return {"access_token": "ya29.fake-" + uuid.uuid4().hex, "expires_in": 3600, "token_type": "Bearer"}


# -- everything together -------------------------------------------------------------------------------------
class FakeGcp:
    """Every fake voke needs, on one REST server and one gRPC server."""

    def __init__(self, project: str = "voke-test", region: str = "us-central1") -> None:
        self.project = project
        self.region = region
        self.rest = FakeRestServer()
        self.secretmanager = FakeSecretManager(project)
        self.run = FakeCloudRun(project, region, self.secretmanager, lambda: self.rest.endpoint)
        self.sql = FakeCloudSql(project, region)
        self.monitoring = FakeMonitoring(project, self.sql)
        self.projects = FakeProjects(project)
        self.rest.add(self.projects.routes())
        self.iam = FakeIam(project, lambda: f"{self.rest.endpoint}/token")
        self.rest.add(self.iam.routes())
        self.rest.add(self.secretmanager.routes())
        self.rest.add(self.sql.routes())
        self.rest.add(self.run.routes())

    def __enter__(self) -> FakeGcp:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> FakeGcp:
        import grpc

        self.rest.start()
        self.grpc = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        self.grpc.add_generic_rpc_handlers((self.monitoring.handlers(), self.iam.handlers()))
        self.grpc_port = self.grpc.add_insecure_port("127.0.0.1:0")
        self.grpc.start()
        return self

    def stop(self) -> None:
        self.rest.stop()
        self.grpc.stop(None)

    @property
    def endpoints(self) -> dict[str, str]:
        rest = self.rest.endpoint
        grpc_url = f"http://127.0.0.1:{self.grpc_port}"
        return {
            "secretmanager": rest,
            "run": rest,
            "sqladmin": rest,
            "cloudresourcemanager": rest,
            "serviceusage": rest,
            "monitoring": grpc_url,
            "iam": grpc_url,
        }

    def environment(self, **extra: Any) -> dict[str, Any]:
        """The `[environments.NAME]` table that points voke at these fakes."""
        env: dict[str, Any] = {
            "kind": "gcp",
            "project": self.project,
            "region": self.region,
            "instance": "voke-db",
            "credentials": "anonymous",
            "endpoints": self.endpoints,
            "timeout": 10.0,
            # an operation here is DONE two polls after it starts (sql.polls_per_step): each poll
            # waited for is time a test waits, ~6 s a run of the cloud tests at 0.02
            "poll_interval": 0.005,
        }
        env.update(extra)
        return env

    def context(self, **overrides: Any) -> Any:
        """A GcpContext for these fakes (adapters built in tests)."""
        from voketag_ops.adapters.gcp._common import GcpContext

        values: dict[str, Any] = {
            "project": self.project,
            "region": self.region,
            "endpoints": self.endpoints,
            "anonymous": True,
            "timeout": 10.0,
            "poll_interval": 0.01,
            "backoff": 0.01,
        }
        values.update(overrides)
        return GcpContext(**values)


def environment_toml(name: str, env: dict[str, Any]) -> str:
    """ENV (e.g. FakeGcp.environment()) as the voke.toml table `[environments.NAME]`; None
    values are left out, dict values become sub-tables."""
    lines = [f"[environments.{name}]"]
    lines += [f"{k} = {json.dumps(v)}" for k, v in env.items() if v is not None and not isinstance(v, dict)]
    for key, table in env.items():
        if isinstance(table, dict) and table:
            lines.append(f"[environments.{name}.{key}]")
            lines += [f"{k} = {json.dumps(v)}" for k, v in table.items()]
    return "\n".join(lines) + "\n"
