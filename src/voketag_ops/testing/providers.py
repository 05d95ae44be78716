"""Fake API-key providers and a webhook receiver, shipped with the package (like httpx's
MockTransport) so tests, benchmarks and operators can run voke against them.

`FakeProviders` is one local HTTP server (a thread) that speaks the API shapes voke
rotates API keys through: Stripe v1, Auth0 (token endpoint + Management API),
SendGrid v3, Google API Keys v2 (long-running operations) and the Maps Geocoding API
— the same paths, JSON bodies, Bearer auth and error bodies/status codes. It keeps
state (which keys exist, which ones authenticate) and can inject failures.
`WebhookReceiver` records what a Slack-compatible webhook was sent.
"""

from __future__ import annotations

import json
import re
import secrets
import string
import threading
import urllib.parse
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

Reply = tuple[int, Any]  # (status, JSON body or None)
FULL_SENDGRID_SCOPES = ("mail.send", "api_keys.create", "api_keys.read", "api_keys.update", "api_keys.delete")
KEY_ID_RE = re.compile(r"^[a-z]([a-z0-9-]{0,61}[a-z0-9])?$")


# The IAM permission of each API Keys method the fake serves
# (https://cloud.google.com/api-keys/docs/access-control; keys.lookupKey's from its reference page).
_APIKEYS_PERMISSIONS = (
    ("GET", re.compile(r"/v2/operations/[^/]+"), "serviceusage.operations.get"),
    ("GET", re.compile(r"/v2/keys:lookupKey"), "apikeys.keys.lookup"),
    ("POST", re.compile(r"/v2/projects/[^/]+/locations/global/keys"), "apikeys.keys.create"),
    (
        "GET",
        re.compile(r"/v2/projects/[^/]+/locations/global/keys/[^/]+/keyString"),
        "apikeys.keys.getKeyString",
    ),
    ("GET", re.compile(r"/v2/projects/[^/]+/locations/global/keys/[^/]+"), "apikeys.keys.get"),
    ("DELETE", re.compile(r"/v2/projects/[^/]+/locations/global/keys/[^/]+"), "apikeys.keys.delete"),
)


def _apikeys_permission(method: str, path: str) -> str | None:
    """The permission the API Keys call METHOD PATH needs (None: no method the fake serves)."""
    return next((p for m, route, p in _APIKEYS_PERMISSIONS if m == method and route.fullmatch(path)), None)


def _token(n: int, alphabet: str = string.ascii_letters + string.digits) -> str:
    return "".join(secrets.choice(alphabet) for _ in range(n))


@dataclass
class Fault:
    """Answer STATUS to the next TIMES requests matching METHOD and PATH (a regex).

    status 0 closes the connection without an answer. after=True performs the
    request first, then loses the reply (the provider changed, the client never knew).
    MESSAGE is the error body's message.
    """

    method: str
    path: str
    status: int = 503
    times: int = 1
    after: bool = False
    message: str = "injected fault"


@dataclass
class Seen:
    """One request the fake received."""

    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: Any
    status: int = 0


class _HttpServer:
    """A ThreadingHTTPServer on 127.0.0.1 in a daemon thread, calling HANDLE per request."""

    def __init__(self, handle: Callable[[str, str, dict[str, str], bytes], Reply | None]) -> None:
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:  # quiet
                return None

            def _serve(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                headers = {k.lower(): v for k, v in self.headers.items()}
                reply = outer.handle(self.command, self.path, headers, raw)
                if reply is None:  # drop the connection without answering
                    self.close_connection = True
                    return
                status, body = reply
                data = b"" if body is None else json.dumps(body).encode()
                self.send_response(status)
                if data:
                    self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = do_PATCH = do_DELETE = do_PUT = _serve

        self.handle = handle
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        # close() waits for the loop's next look at its shutdown flag: ~0.05 s a test at 0.05
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.005,), daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class FakeProviders:
    """Stripe, Auth0, SendGrid, Google API Keys and Maps on one local port, with state."""

    def __init__(self, *, google_project: str = "voketag-test", operation_polls: int = 1) -> None:
        self.lock = threading.RLock()
        self.faults: list[Fault] = []
        self.requests: list[Seen] = []
        # Stripe
        self.stripe_keys: set[str] = set()
        # Auth0: client_id -> secret; tokens -> (client_id, audience)
        self.auth0_clients: dict[str, str] = {}
        self.auth0_tokens: dict[str, tuple[str, str]] = {}
        self.auth0_admin_id = "mgmt" + _token(16)
        self.auth0_admin_secret = _token(48)
        self.auth0_clients[self.auth0_admin_id] = self.auth0_admin_secret
        self.auth0_audiences = {"https://api.voketag.test/"}
        self.auth0_propagation = 0  # token calls with a freshly set secret that still fail
        self._auth0_settling: dict[str, int] = {}
        # SendGrid: api_key_id -> {name, scopes, key}
        self.sendgrid_keys: dict[str, dict[str, Any]] = {}
        self.sendgrid_limit = 100
        self.sendgrid_minted_keys_work = (
            True  # False: keys minted through the API are refused (never propagate)
        )
        # Google
        self.google_project = google_project
        # token -> the IAM permissions its holder has on the project (None: all of them)
        self.google_tokens: dict[str, frozenset[str] | None] = {}
        self.google_keys: dict[str, dict[str, Any]] = {}  # resource name -> key
        self.operations: dict[str, dict[str, Any]] = {}
        self.operation_polls = operation_polls
        self._server: _HttpServer | None = None

    # -- lifecycle ----------------------------------------------------------------------------
    def start(self) -> FakeProviders:
        self._server = _HttpServer(self._handle)
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None

    def __enter__(self) -> FakeProviders:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def url(self) -> str:
        assert self._server is not None, "start() the fake first"
        return self._server.url

    # -- knobs and seeds -------------------------------------------------------------------------
    def fail(
        self,
        method: str,
        path: str,
        status: int = 503,
        *,
        times: int = 1,
        after: bool = False,
        message: str = "injected fault",
    ) -> None:
        with self.lock:
            self.faults.append(Fault(method, path, status, times, after, message))

    def add_stripe_key(self, mode: str = "test") -> str:
        key = f"sk_{mode}_51{_token(96)}"
        with self.lock:
            self.stripe_keys.add(key)
        return key

    def revoke_stripe_key(self, key: str) -> None:
        with self.lock:
            self.stripe_keys.discard(key)

    def add_auth0_client(self, client_id: str | None = None) -> tuple[str, str]:
        client_id = client_id or _token(32)
        secret = _token(64, string.ascii_letters + string.digits + "-_")
        with self.lock:
            self.auth0_clients[client_id] = secret
        return client_id, secret

    def add_sendgrid_key(
        self, name: str = "production", scopes: tuple[str, ...] = FULL_SENDGRID_SCOPES
    ) -> tuple[str, str]:
        """(key, api_key_id) of a new key."""
        with self.lock:
            return self._mint_sendgrid(name, list(scopes))

    def google_token(self, permissions: Iterable[str] | None = None) -> str:
        """A Google access token; with PERMISSIONS, its holder has those alone and any other
        API Keys call is refused (403) as Google refuses it."""
        token = "ya29." + _token(80)
        with self.lock:
            self.google_tokens[token] = None if permissions is None else frozenset(permissions)
        return token

    def add_google_key(self, key_id: str, *, restrictions: dict[str, Any] | None = None) -> tuple[str, str]:
        """(keyString, resource name) of a new Maps key."""
        with self.lock:
            key = self._make_google_key(self.google_project, key_id, key_id, restrictions)
        return key["keyString"], key["name"]

    # -- views -------------------------------------------------------------------------------------
    def live_sendgrid_keys(self) -> dict[str, str]:
        """api_key_id -> name of every key that exists."""
        with self.lock:
            return {k: v["name"] for k, v in self.sendgrid_keys.items()}

    def live_google_keys(self) -> dict[str, str]:
        """resource name -> displayName of every key not deleted."""
        with self.lock:
            return {n: k["displayName"] for n, k in self.google_keys.items() if not k.get("deleteTime")}

    def calls(self, method: str | None = None, path: str | None = None) -> list[Seen]:
        with self.lock:
            return [
                r
                for r in self.requests
                if (method is None or r.method == method) and (path is None or re.search(path, r.path))
            ]

    # -- dispatch ------------------------------------------------------------------------------------
    def _handle(self, method: str, target: str, headers: dict[str, str], raw: bytes) -> Reply | None:
        split = urllib.parse.urlsplit(target)
        path = split.path
        query = dict(urllib.parse.parse_qsl(split.query))
        body: Any = None
        if raw:
            if headers.get("content-type", "").startswith("application/x-www-form-urlencoded"):
                body = dict(urllib.parse.parse_qsl(raw.decode()))
            else:
                try:
                    body = json.loads(raw)
                except ValueError:
                    body = raw.decode(errors="replace")
        seen = Seen(method, path, query, headers, body)
        with self.lock:
            self.requests.append(seen)
            fault = next(
                (f for f in self.faults if f.times > 0 and f.method == method and re.search(f.path, path)),
                None,
            )
            if fault is not None:
                fault.times -= 1
            if fault is not None and not fault.after:
                seen.status = fault.status
                return (
                    None
                    if fault.status == 0
                    else (fault.status, self._error(path, fault.status, fault.message))
                )
            auth = headers.get("authorization", "")
            token = auth[7:] if auth.lower().startswith("bearer ") else None
            status, reply = self._route(method, path, query, body, token, headers)
            if fault is not None:  # performed, but the answer is lost
                seen.status = fault.status
                return (
                    None
                    if fault.status == 0
                    else (fault.status, self._error(path, fault.status, fault.message))
                )
            seen.status = status
            return status, reply

    def _route(
        self,
        method: str,
        path: str,
        query: dict[str, str],
        body: Any,
        token: str | None,
        headers: dict[str, str],
    ) -> Reply:
        if path == "/v1/balance" and method == "GET":
            return self._stripe_balance(token)
        if path == "/oauth/token" and method == "POST":
            return self._auth0_token(body or {})
        if m := re.fullmatch(r"/api/v2/clients/([^/]+)", path):
            return self._auth0_client(method, urllib.parse.unquote(m.group(1)), body or {}, token)
        if path.startswith("/v3/"):
            return self._sendgrid(method, path, body or {}, token)
        if path.startswith("/v2/"):
            return self._google(method, path, query, body or {}, token)
        if path == "/maps/api/geocode/json" and method == "GET":
            return self._geocode(query, headers)
        return 404, {"error": {"code": 404, "message": f"no route {method} {path}", "status": "NOT_FOUND"}}

    @staticmethod
    def _error(path: str, status: int, message: str) -> Any:
        """An error body in the shape of the provider that owns PATH."""
        if path.startswith("/v1/"):
            return {"error": {"type": "api_error", "message": message}}
        if path.startswith("/v3/"):
            return {"errors": [{"field": None, "message": message}]}
        if path.startswith(("/oauth/", "/api/v2/")):
            return {"statusCode": status, "error": "Service Unavailable", "message": message}
        names = {
            400: "INVALID_ARGUMENT",
            401: "UNAUTHENTICATED",
            403: "PERMISSION_DENIED",
            404: "NOT_FOUND",
            409: "ALREADY_EXISTS",
            429: "RESOURCE_EXHAUSTED",
            500: "INTERNAL",
            503: "UNAVAILABLE",
        }
        return {"error": {"code": status, "message": message, "status": names.get(status, "UNKNOWN")}}

    # -- Stripe ---------------------------------------------------------------------------------------
    def _stripe_balance(self, token: str | None) -> Reply:
        if token is None:
            return 401, {
                "error": {"type": "invalid_request_error", "message": "You did not provide an API key."}
            }
        if token not in self.stripe_keys:
            masked = token[:8] + "*" * 4 + token[-4:] if len(token) > 12 else "****"
            return 401, {
                "error": {"type": "invalid_request_error", "message": f"Invalid API Key provided: {masked}"}
            }
        return 200, {
            "object": "balance",
            "available": [{"amount": 0, "currency": "usd"}],
            "livemode": False,
            "pending": [{"amount": 0, "currency": "usd"}],
        }

    # -- Auth0 -----------------------------------------------------------------------------------------
    def _auth0_token(self, body: dict[str, Any]) -> Reply:
        if body.get("grant_type") != "client_credentials":
            return 403, {"error": "unsupported_grant_type", "error_description": "Unsupported grant type"}
        client_id, secret, audience = body.get("client_id"), body.get("client_secret"), body.get("audience")
        if client_id not in self.auth0_clients or self.auth0_clients[client_id] != secret:
            return 401, {"error": "access_denied", "error_description": "Unauthorized"}
        if self._auth0_settling.get(client_id, 0) > 0:  # a new secret is not accepted everywhere yet
            self._auth0_settling[client_id] -= 1
            return 401, {"error": "access_denied", "error_description": "Unauthorized"}
        management = f"{self.url}/api/v2/"
        allowed = audience in self.auth0_audiences or (
            audience == management and client_id == self.auth0_admin_id
        )
        if not allowed:
            return 403, {
                "error": "access_denied",
                "error_description": f'Client is not authorized to access "{audience}".',
            }
        token = "eyJ" + _token(120)
        self.auth0_tokens[token] = (str(client_id), str(audience))
        return 200, {"access_token": token, "token_type": "Bearer", "expires_in": 86400}

    def _auth0_client(self, method: str, client_id: str, body: dict[str, Any], token: str | None) -> Reply:
        holder = self.auth0_tokens.get(token or "")
        if holder is None or holder[1] != f"{self.url}/api/v2/":
            return 401, {"statusCode": 401, "error": "Unauthorized", "message": "Invalid token"}
        if client_id not in self.auth0_clients:
            return 404, {
                "statusCode": 404,
                "error": "Not Found",
                "message": "The client does not exist",
                "errorCode": "inexistent_client",
            }
        if method == "GET":
            return 200, {
                "client_id": client_id,
                "name": client_id,
                "client_secret": self.auth0_clients[client_id],
            }
        if method != "PATCH":
            return 405, {"statusCode": 405, "error": "Method Not Allowed", "message": method}
        if "client_secret" in body:
            secret = body["client_secret"]
            if not isinstance(secret, str) or len(secret) < 32:
                return 400, {
                    "statusCode": 400,
                    "error": "Bad Request",
                    "message": "Payload validation error: 'String is too short' on property client_secret",
                    "errorCode": "invalid_body",
                }
            self.auth0_clients[client_id] = secret  # single-phase: the old secret stops working now
            self._auth0_settling[client_id] = self.auth0_propagation
        return 200, {
            "client_id": client_id,
            "name": client_id,
            "client_secret": self.auth0_clients[client_id],
        }

    # -- SendGrid ---------------------------------------------------------------------------------------
    def _mint_sendgrid(self, name: str, scopes: list[str]) -> tuple[str, str]:
        key_id = _token(22, string.ascii_letters + string.digits + "-_")
        key = f"SG.{key_id}.{_token(43, string.ascii_letters + string.digits + '-_')}"
        self.sendgrid_keys[key_id] = {"name": name, "scopes": list(scopes), "key": key}
        return key, key_id

    def _sendgrid(self, method: str, path: str, body: dict[str, Any], token: str | None) -> Reply:
        caller = next((k for k in self.sendgrid_keys.values() if k["key"] == token), None)
        if caller is None:
            return 401, {"errors": [{"field": None, "message": "authorization required"}]}
        forbidden = (403, {"errors": [{"field": None, "message": "access forbidden"}]})
        if path == "/v3/scopes" and method == "GET":
            if caller.get("minted") and not self.sendgrid_minted_keys_work:
                return 401, {"errors": [{"field": None, "message": "authorization required"}]}
            return 200, {"scopes": caller["scopes"]}
        if path == "/v3/api_keys":
            if method == "GET":
                if "api_keys.read" not in caller["scopes"]:
                    return forbidden
                return 200, {
                    "result": [{"name": v["name"], "api_key_id": k} for k, v in self.sendgrid_keys.items()]
                }
            if method == "POST":
                if "api_keys.create" not in caller["scopes"]:
                    return forbidden
                if not body.get("name"):
                    return 400, {"errors": [{"field": "name", "message": "missing required argument"}]}
                if len(self.sendgrid_keys) >= self.sendgrid_limit:
                    return 403, {
                        "errors": [{"field": None, "message": "Cannot create more than 100 API Keys"}]
                    }
                scopes = list(body.get("scopes") or caller["scopes"])
                if not set(scopes) <= set(caller["scopes"]):
                    return 403, {
                        "errors": [{"field": "scopes", "message": "cannot grant scopes you do not have"}]
                    }
                key, key_id = self._mint_sendgrid(body["name"], scopes)
                self.sendgrid_keys[key_id]["minted"] = True
                return 201, {"api_key": key, "api_key_id": key_id, "name": body["name"], "scopes": scopes}
        if m := re.fullmatch(r"/v3/api_keys/([^/]+)", path):
            key_id = urllib.parse.unquote(m.group(1))
            need = {"GET": "api_keys.read", "DELETE": "api_keys.delete"}.get(method, "api_keys.update")
            if need not in caller["scopes"]:
                return forbidden
            if key_id not in self.sendgrid_keys:
                return 404, {"errors": [{"field": None, "message": "unable to find API Key"}]}
            if method == "GET":
                info = self.sendgrid_keys[key_id]
                return 200, {"api_key_id": key_id, "name": info["name"], "scopes": info["scopes"]}
            if method == "DELETE":
                del self.sendgrid_keys[key_id]
                return 204, None
        return 404, {"errors": [{"field": None, "message": "not found"}]}

    # -- Google API Keys + Maps --------------------------------------------------------------------------
    def _make_google_key(
        self, project: str, key_id: str, display: str, restrictions: dict[str, Any] | None
    ) -> dict[str, Any]:
        name = f"projects/{project}/locations/global/keys/{key_id}"
        key = {
            "name": name,
            "uid": secrets.token_hex(16),
            "displayName": display,
            "keyString": "AIza" + _token(35, string.ascii_letters + string.digits + "-_"),
            "createTime": "2026-01-01T00:00:00Z",
            "restrictions": restrictions or {},
            "etag": secrets.token_hex(8),
        }
        self.google_keys[name] = key
        return key

    def _operation(self, response: dict[str, Any], done: bool) -> dict[str, Any]:
        name = f"operations/akmf.p7-{secrets.token_hex(12)}"
        op = {
            "name": name,
            "response": {"@type": "type.googleapis.com/google.api.apikeys.v2.Key", **response},
            "polls_left": 0 if done else self.operation_polls,
        }
        self.operations[name] = op
        return self._op_view(op)

    @staticmethod
    def _op_view(op: dict[str, Any]) -> dict[str, Any]:
        if op["polls_left"] > 0:
            return {"name": op["name"], "metadata": {"@type": "type.googleapis.com/google.protobuf.Empty"}}
        return {"name": op["name"], "done": True, "response": op["response"]}

    def _google(
        self, method: str, path: str, query: dict[str, str], body: dict[str, Any], token: str | None
    ) -> Reply:
        def err(status: int, message: str) -> Reply:
            return status, self._error(path, status, message)

        if token not in self.google_tokens:
            return err(401, "Request had invalid authentication credentials.")
        held = self.google_tokens[token]
        needed = _apikeys_permission(method, path)
        if held is not None and needed is not None and needed not in held:
            return err(403, f"Permission '{needed}' denied on resource (or it may not exist).")
        if m := re.fullmatch(r"/v2/(operations/[^/]+)", path):
            op = self.operations.get(m.group(1))
            if op is None:
                return err(404, "Operation not found")
            if op["polls_left"] > 0:
                op["polls_left"] -= 1
            return 200, self._op_view(op)
        if path == "/v2/keys:lookupKey" and method == "GET":
            key = next(
                (
                    k
                    for k in self.google_keys.values()
                    if k["keyString"] == query.get("keyString") and not k.get("deleteTime")
                ),
                None,
            )
            if key is None:
                return err(404, "API key not found")
            return 200, {"parent": key["name"].rsplit("/keys/", 1)[0], "name": key["name"]}
        if (m := re.fullmatch(r"/v2/projects/([^/]+)/locations/global/keys", path)) and method == "POST":
            key_id = query.get("keyId") or "k" + secrets.token_hex(8)
            if not KEY_ID_RE.fullmatch(key_id):
                return err(400, f"Invalid keyId {key_id}")
            name = f"projects/{m.group(1)}/locations/global/keys/{key_id}"
            if name in self.google_keys:
                return err(409, f"Key with id {key_id} already exists")
            key = self._make_google_key(
                m.group(1), key_id, body.get("displayName", ""), body.get("restrictions")
            )
            return 200, self._operation(dict(key), done=False)
        if m := re.fullmatch(r"/v2/(projects/[^/]+/locations/global/keys/[^/]+?)(/keyString)?", path):
            key = self.google_keys.get(m.group(1))
            if key is None:
                return err(404, "API key not found")
            if m.group(2):
                if key.get("deleteTime"):
                    return err(404, "API key not found")
                return 200, {"keyString": key["keyString"]}
            if method == "GET":
                return 200, {k: v for k, v in key.items() if k != "keyString"}
            if method == "DELETE":
                if key.get("deleteTime"):
                    return err(404, "API key not found")
                key["deleteTime"] = "2026-01-02T00:00:00Z"
                return 200, self._operation({k: v for k, v in key.items() if k != "keyString"}, done=True)
        return err(404, f"no route {method} {path}")

    def _geocode(self, query: dict[str, str], headers: dict[str, str]) -> Reply:
        key = next(
            (
                k
                for k in self.google_keys.values()
                if k["keyString"] == query.get("key") and not k.get("deleteTime")
            ),
            None,
        )
        denied = {
            "error_message": "The provided API key is invalid. ",
            "results": [],
            "status": "REQUEST_DENIED",
        }
        if key is None:
            return 200, denied
        referrers = (key.get("restrictions") or {}).get("browserKeyRestrictions", {}).get("allowedReferrers")
        if referrers and not any(headers.get("referer", "").startswith(r.rstrip("*")) for r in referrers):
            return 200, {
                **denied,
                "error_message": "API keys with referer restrictions cannot be used with this API.",
            }
        return 200, {
            "results": [
                {
                    "formatted_address": "Mountain View, CA, USA",
                    "geometry": {"location": {"lat": 37.3861, "lng": -122.0839}},
                }
            ],
            "status": "OK",
        }


@dataclass
class WebhookReceiver:
    """A Slack-compatible incoming webhook that records every JSON body it is sent."""

    status: int = 200
    bodies: list[Any] = field(default_factory=list)
    raw: list[bytes] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._server: _HttpServer | None = None

    def start(self) -> WebhookReceiver:
        def handle(method: str, path: str, headers: dict[str, str], raw: bytes) -> Reply:
            self.raw.append(raw)
            try:
                self.bodies.append(json.loads(raw))
            except ValueError:
                self.bodies.append(None)
            return self.status, None if self.status < 300 else {"ok": False}

        self._server = _HttpServer(handle)
        return self

    @property
    def url(self) -> str:
        assert self._server is not None
        return self._server.url + "/services/T000/B000/XXXXXXXXXXXXXXXX"

    def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None

    def __enter__(self) -> WebhookReceiver:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
