"""Thin HTTP clients for the API-key providers `voke rotate api-key` talks to: Auth0
(Management API + token endpoint), SendGrid (v3 API keys), Stripe (v1), Google API
Keys (v2, long-running operations) and the Maps Geocoding API as the key's test call.

urllib only, a timeout on every call, and one place (`HttpClient.call`) that turns
transport errors and HTTP statuses into voke's RotationFailure kinds. Messages name
the provider, the method and the path (never a query string, header or body value),
so no key, secret or token can reach an error message.
"""

from __future__ import annotations

import http.client
import json
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from voketag_ops import redact
from voketag_ops.errors import (
    AuthenticationError,
    ConfigError,
    ConnectivityError,
    ProviderRefusedError,
    RequestRefusedError,
    RotationFailure,
    StepTimeoutError,
)

DEFAULT_TIMEOUT = 10.0
USER_AGENT = "voketag-ops (voke rotate)"


def answered(what: str, doc: Any, key: str, kind: type = str) -> Any:
    """DOC[KEY], of type KIND (text: not empty), from what WHAT answered; ProviderRefusedError
    (the provider answered something voke cannot use) when DOC is no JSON object (a proxy's HTML
    page) or lacks it, rather than a KeyError or TypeError on an unexpected 200."""
    value = doc.get(key) if isinstance(doc, dict) else None
    if not isinstance(value, kind) or value == "":
        raise ProviderRefusedError(
            f"{what} answered without {'a JSON object' if not isinstance(doc, dict) else key}"
        )
    return value


@dataclass(frozen=True)
class HttpResponse:
    """A status and the parsed JSON body (None when empty or not JSON), with what was asked
    (`provider: METHOD path`) for messages about it."""

    status: int
    body: Any
    what: str = ""

    def obj(self) -> dict[str, Any]:
        """The body as a JSON object; ProviderRefusedError when it is none."""
        if not isinstance(self.body, dict):
            raise ProviderRefusedError(f"{self.what} answered {self.status} without a JSON object")
        return self.body

    def field(self, key: str, kind: type = str) -> Any:
        """The body's KEY, of type KIND (`answered`)."""
        return answered(f"{self.what} ({self.status})", self.body, key, kind)


def _detail(body: Any) -> str:
    """A short, value-free reason from a provider's error body."""
    parts: list[str] = []
    if isinstance(body, dict):
        err = body.get("error")
        if isinstance(
            err, dict
        ):  # Google {"error": {"status", "message"}}, Stripe {"error": {"type", "code"}}
            parts += [str(err[k]) for k in ("status", "type", "code") if err.get(k)]
            if "status" in err and err.get("message"):
                parts.append(str(err["message"]))
        elif isinstance(err, str):  # Auth0 token endpoint {"error", "error_description"}, Management API
            parts.append(err)
            parts += [str(body[k]) for k in ("error_description", "errorCode", "message") if body.get(k)]
        errors = body.get("errors")  # SendGrid {"errors": [{"field", "message"}]}
        if isinstance(errors, list) and errors and isinstance(errors[0], dict):
            parts.append(str(errors[0].get("message", "")))
    text = redact.redact("; ".join(p for p in parts if p))[:200]  # cut after: a secret across the cut
    return f" ({text})" if text else ""


class HttpClient:
    """JSON over HTTP(S) to one provider's base URL."""

    def __init__(self, base_url: str, *, provider: str, timeout: float = DEFAULT_TIMEOUT) -> None:
        self.base_url = base_url.rstrip("/")
        self.provider = provider
        self.timeout = timeout

    def call(
        self,
        method: str,
        path: str,
        *,
        token: str | None = None,
        json_body: Any = None,
        form: dict[str, str] | None = None,
        query: dict[str, str] | None = None,
        headers: dict[str, str] | None = None,
        accept: Iterable[int] = (),
    ) -> HttpResponse:
        """One request. 2xx and the statuses in ACCEPT are returned; the rest raise."""
        url = self.base_url + path
        if query:
            url += "?" + urllib.parse.urlencode(query)
        data = None
        all_headers = {"Accept": "application/json", "User-Agent": USER_AGENT, **(headers or {})}
        if json_body is not None:
            data = json.dumps(json_body).encode("utf-8")
            all_headers["Content-Type"] = "application/json"
        elif form is not None:
            data = urllib.parse.urlencode(form).encode("ascii")
            all_headers["Content-Type"] = "application/x-www-form-urlencoded"
        if token is not None:
            all_headers["Authorization"] = f"Bearer {token}"
        request = urllib.request.Request(url, data=data, headers=all_headers, method=method)
        what = f"{self.provider}: {method} {path}"
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as resp:
                status, raw = resp.status, resp.read()
        except urllib.error.HTTPError as exc:
            status, raw = exc.code, exc.read()
        except TimeoutError:
            raise StepTimeoutError(f"{what}: no answer within {self.timeout:g} s") from None
        except urllib.error.URLError as exc:
            reason = exc.reason
            if isinstance(reason, TimeoutError):
                raise StepTimeoutError(f"{what}: no answer within {self.timeout:g} s") from None
            host = urllib.parse.urlsplit(self.base_url).netloc
            raise ConnectivityError(f"{what}: cannot reach {host} ({type(reason).__name__})") from None
        except (OSError, http.client.HTTPException) as exc:
            raise ConnectivityError(f"{what}: connection failed ({type(exc).__name__})") from None
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            body = None
        if 200 <= status < 300 or status in accept:
            return HttpResponse(status, body, what)
        raise self._error(what, status, body)

    @staticmethod
    def _error(what: str, status: int, body: Any) -> RotationFailure:
        message = f"{what} answered {status}{_detail(body)}"
        if status in (401, 403):
            return AuthenticationError(message)
        if status == 408:
            return StepTimeoutError(message)
        if status == 429 or status >= 500:
            return ConnectivityError(message)
        return RequestRefusedError(message)


# -- Auth0 -------------------------------------------------------------------------------------
class Auth0Client:
    """Auth0's token endpoint and Management API (clients)."""

    def __init__(self, base_url: str, *, timeout: float = DEFAULT_TIMEOUT) -> None:
        self.http = HttpClient(base_url, provider="auth0", timeout=timeout)
        self.base_url = self.http.base_url

    def token(self, client_id: str, client_secret: str, audience: str) -> str | None:
        """An access token by the client-credentials grant; None when Auth0 rejects the client."""
        resp = self.http.call(
            "POST",
            "/oauth/token",
            json_body={
                "grant_type": "client_credentials",
                "client_id": client_id,
                "client_secret": client_secret,
                "audience": audience,
            },
            accept=(401, 403),
        )
        if resp.status in (401, 403) or not isinstance(resp.body, dict) or not resp.body.get("access_token"):
            return None
        token = str(resp.body["access_token"])
        redact.register(token)
        return token

    def management_audience(self) -> str:
        return f"{self.base_url}/api/v2/"

    def set_client_secret(self, management_token: str, client_id: str, secret: str) -> None:
        """PATCH /api/v2/clients/{id} with a known client_secret (needs update:client_keys)."""
        self.http.call(
            "PATCH",
            f"/api/v2/clients/{urllib.parse.quote(client_id, safe='')}",
            token=management_token,
            json_body={"client_secret": secret},
        )


# -- SendGrid ----------------------------------------------------------------------------------
class SendGridClient:
    """SendGrid v3: API keys (create, list, get, delete) and /v3/scopes as the key's test."""

    def __init__(self, base_url: str, *, timeout: float = DEFAULT_TIMEOUT) -> None:
        self.http = HttpClient(base_url, provider="sendgrid", timeout=timeout)

    def scopes(self, key: str) -> list[str] | None:
        """The scopes of KEY (a real authenticated call); None when SendGrid rejects it."""
        resp = self.http.call("GET", "/v3/scopes", token=key, accept=(401, 403))
        if resp.status in (401, 403):
            return None
        return [str(scope) for scope in resp.field("scopes", list)]

    def list_keys(self, admin_key: str) -> list[dict[str, Any]]:
        resp = self.http.call("GET", "/v3/api_keys", token=admin_key, query={"limit": "100"})
        keys = resp.field("result", list)
        if not all(isinstance(key, dict) for key in keys):
            raise ProviderRefusedError(f"{resp.what} answered a result that is not a list of keys")
        return keys

    def get_key(self, admin_key: str, key_id: str) -> dict[str, Any] | None:
        resp = self.http.call(
            "GET", f"/v3/api_keys/{urllib.parse.quote(key_id, safe='')}", token=admin_key, accept=(404,)
        )
        if resp.status == 404:
            return None
        body = resp.obj()
        if isinstance(body.get("result"), list):  # some API versions wrap it
            body = body["result"][0] if body["result"] else {}
        if not isinstance(body, dict):
            raise ProviderRefusedError(f"{resp.what} answered a result that is not a key")
        return dict(body)

    def create_key(self, admin_key: str, name: str, scopes: list[str]) -> dict[str, Any]:
        """POST /v3/api_keys: {api_key, api_key_id, name, scopes}; the value is shown only here."""
        resp = self.http.call(
            "POST", "/v3/api_keys", token=admin_key, json_body={"name": name, "scopes": scopes}
        )
        redact.register(resp.field("api_key"))
        resp.field("api_key_id")
        return dict(resp.obj())

    def delete_key(self, admin_key: str, key_id: str) -> bool:
        """DELETE /v3/api_keys/{id}; False when it was already gone."""
        resp = self.http.call(
            "DELETE", f"/v3/api_keys/{urllib.parse.quote(key_id, safe='')}", token=admin_key, accept=(404,)
        )
        return resp.status != 404


# -- Stripe ------------------------------------------------------------------------------------
class StripeClient:
    """Stripe v1: GET /v1/balance proves a secret or restricted key works."""

    def __init__(self, base_url: str, *, timeout: float = DEFAULT_TIMEOUT) -> None:
        self.http = HttpClient(base_url, provider="stripe", timeout=timeout)

    def key_works(self, key: str) -> bool:
        resp = self.http.call("GET", "/v1/balance", token=key, accept=(401, 403))
        return resp.status == 200


# -- Google API Keys + Maps ----------------------------------------------------------------------
class GoogleApiKeysClient:
    """API Keys API v2 (projects/{p}/locations/global/keys), with its long-running operations."""

    def __init__(
        self,
        base_url: str,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        sleep: Callable[[float], None] = time.sleep,
        operation_timeout: float = 120.0,
    ) -> None:
        self.http = HttpClient(base_url, provider="apikeys", timeout=timeout)
        self.sleep = sleep
        self.operation_timeout = operation_timeout

    @staticmethod
    def key_name(project: str, key_id: str) -> str:
        return f"projects/{project}/locations/global/keys/{key_id}"

    def get_key(self, token: str, name: str) -> dict[str, Any] | None:
        resp = self.http.call("GET", f"/v2/{name}", token=token, accept=(404,))
        if resp.status == 404:
            return None
        resp.field("name")
        return dict(resp.obj())

    def key_string(self, token: str, name: str) -> str:
        resp = self.http.call("GET", f"/v2/{name}/keyString", token=token)
        value = str(resp.field("keyString"))
        redact.register(value)
        return value

    def lookup(self, token: str, key_string: str) -> str | None:
        """The resource name of the key with KEY_STRING (keys:lookupKey); None when unknown."""
        resp = self.http.call(
            "GET", "/v2/keys:lookupKey", token=token, query={"keyString": key_string}, accept=(404,)
        )
        return None if resp.status == 404 else str(resp.field("name"))

    def create_key(
        self, token: str, project: str, key_id: str, display_name: str, restrictions: dict[str, Any] | None
    ) -> dict[str, Any] | None:
        """Create KEY_ID and wait for the operation; None when a key with that id exists already."""
        body: dict[str, Any] = {"displayName": display_name}
        if restrictions:
            body["restrictions"] = restrictions
        resp = self.http.call(
            "POST",
            f"/v2/projects/{project}/locations/global/keys",
            token=token,
            query={"keyId": key_id},
            json_body=body,
            accept=(409,),
        )
        if resp.status == 409:
            return None
        key = self.wait(token, resp)
        answered(f"{resp.what}: its operation", key, "name")
        return key

    def delete_key(self, token: str, name: str) -> bool:
        """Delete (Google keeps it undeletable for 30 days); False when it was already gone."""
        resp = self.http.call("DELETE", f"/v2/{name}", token=token, accept=(404,))
        if resp.status == 404:
            return False
        self.wait(token, resp)
        return True

    def wait(self, token: str, resp: HttpResponse) -> dict[str, Any]:
        """Poll the long-running operation RESP answered until done; its `response`."""
        deadline = time.monotonic() + self.operation_timeout
        delay = 0.2
        operation = resp.obj()
        while not operation.get("done"):
            name = resp.field("name")
            if time.monotonic() > deadline:
                raise StepTimeoutError(
                    f"apikeys: operation {name} not done after {self.operation_timeout:g} s"
                )
            self.sleep(delay)
            delay = min(delay * 2, 2.0)
            resp = self.http.call("GET", f"/v2/{name}", token=token)
            operation = resp.obj()
        if operation.get("error"):
            err = operation["error"] if isinstance(operation["error"], dict) else {}
            raise ProviderRefusedError(
                f"apikeys: operation {operation.get('name')} failed ({err.get('code')}: "
                f"{redact.redact(str(err.get('message', '')))[:200]})"
            )
        if "response" not in operation:
            return {}
        return dict(resp.field("response", dict))


class MapsClient:
    """The Maps Geocoding API, used as a Maps key's real test call."""

    def __init__(self, base_url: str, *, timeout: float = DEFAULT_TIMEOUT) -> None:
        self.http = HttpClient(base_url, provider="maps", timeout=timeout)

    def key_works(self, key: str, *, referer: str | None = None) -> bool:
        headers = {"Referer": referer} if referer else None
        resp = self.http.call(
            "GET",
            "/maps/api/geocode/json",
            query={"address": "Mountain View, CA", "key": key},
            headers=headers,
            accept=(400, 403),
        )
        status = (resp.body or {}).get("status") if isinstance(resp.body, dict) else None
        if status in ("OK", "ZERO_RESULTS"):
            return True
        if status in ("REQUEST_DENIED", None) or resp.status in (400, 403):
            return False
        raise ConnectivityError(f"maps: GET /maps/api/geocode/json answered {status}")


def google_access_token(admin: dict[str, Any] | None) -> str:
    """A Google OAuth access token: from the admin secret, or Application Default Credentials."""
    if admin is not None:
        token = admin.get("access_token") or admin.get("token")
        if not token:
            raise ConfigError('the Google admin secret must hold {"access_token": ...}')
        redact.register(str(token))
        return str(token)
    try:
        import google.auth
        import google.auth.transport.requests
    except ImportError:
        raise ConfigError(
            "no admin_secret for the Maps key and google-auth is not installed (pip install 'voketag-ops[gcp]')"
        ) from None
    try:
        credentials, _project = google.auth.default(scopes=["https://www.googleapis.com/auth/cloud-platform"])
        credentials.refresh(google.auth.transport.requests.Request())
    except Exception as exc:  # google.auth raises several unrelated types
        raise AuthenticationError(
            f"Application Default Credentials unusable ({type(exc).__name__})"
        ) from None
    redact.register(credentials.token)
    return str(credentials.token)
