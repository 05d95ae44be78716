"""Plumbing shared by the Google Cloud adapters: building clients, the timeout on every
call, tenacity retries on retryable errors only, and translating library errors.

Imported only when a cloud environment is used: every `google.*` import sits inside a
function here or in the adapter modules, so `voke --help` never pays 0.5-1.4 s for them.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any, TypeVar

from voketag_ops.core.times import iso
from voketag_ops.errors import (
    BackendError,
    ConfigError,
    EtagMismatchError,
    NotFoundError,
    PreconditionError,
    VokeError,
)
from voketag_ops.logs import get_logger
from voketag_ops.redact import redact

if TYPE_CHECKING:
    from voketag_ops.config import GcpEnvironment

log = get_logger(__name__)
T = TypeVar("T")
SCOPES = ("https://www.googleapis.com/auth/cloud-platform",)

# What a library error means to voke. Each adapter maps these kinds onto its own errors
# in its `translate` context manager (the one place it handles library errors).
NOT_FOUND, CONFLICT, PRECONDITION, INVALID, DENIED, UNAVAILABLE, FAILED = (
    "not_found",
    "conflict",
    "precondition",
    "invalid",
    "denied",
    "unavailable",
    "failed",
)


_STATUS_KINDS = {
    "NOT_FOUND": "not_found",
    "ALREADY_EXISTS": "conflict",
    "ABORTED": "conflict",
    "FAILED_PRECONDITION": "precondition",
    "INVALID_ARGUMENT": "invalid",
    "OUT_OF_RANGE": "invalid",
    "PERMISSION_DENIED": "denied",
    "UNAUTHENTICATED": "denied",
    "UNAVAILABLE": "unavailable",
    "RESOURCE_EXHAUSTED": "unavailable",
    "DEADLINE_EXCEEDED": "unavailable",
    "INTERNAL": "unavailable",
}


def status_name(exc: BaseException) -> str | None:
    """The google.rpc status name of an API error: gRPC carries it as the code; over REST
    it is only in the body (a FAILED_PRECONDITION arrives as HTTP 400, i.e. BadRequest)."""
    code = getattr(exc, "grpc_status_code", None)
    if code is not None:
        return str(getattr(code, "name", code))
    response = getattr(exc, "response", None)
    if response is not None:
        try:
            status = response.json().get("error", {}).get("status")
        except (ValueError, AttributeError):
            status = None
        if status:
            return str(status)
    return None


def classify(exc: BaseException) -> str | None:
    """The kind of a google-api-core / requests / google-auth error, None if it is none of them."""
    from google.api_core import exceptions as gexc

    if isinstance(exc, gexc.GoogleAPICallError) and (kind := _STATUS_KINDS.get(status_name(exc) or "")):
        return kind
    if isinstance(exc, gexc.NotFound):
        return NOT_FOUND
    if isinstance(exc, gexc.AlreadyExists | gexc.Aborted | gexc.Conflict):
        return CONFLICT
    if isinstance(exc, gexc.FailedPrecondition):
        return PRECONDITION
    if isinstance(exc, gexc.InvalidArgument | gexc.BadRequest | gexc.OutOfRange):
        return INVALID
    if isinstance(exc, gexc.PermissionDenied | gexc.Unauthenticated | gexc.Forbidden | gexc.Unauthorized):
        return DENIED
    if isinstance(exc, _retryable_types()):
        return UNAVAILABLE
    if isinstance(exc, gexc.GoogleAPIError) or _malformed(exc):
        return FAILED
    import google.auth.exceptions as auth_exc

    if isinstance(exc, auth_exc.GoogleAuthError):
        return DENIED
    import requests

    if isinstance(exc, requests.RequestException | ResponseLost):
        return UNAVAILABLE
    return None


class ResponseLost(Exception):
    """A call that is not safe to repeat went out but its answer never arrived whole (the
    connection dropped, the read timed out, the body was cut off or not JSON): the server may
    have made the change. `GcpContext.call` raises it; the cause is its __cause__."""

    def __init__(self, cause: BaseException) -> None:
        what = MALFORMED if _malformed(cause) else f"no complete answer ({type(cause).__name__})"
        super().__init__(f"{what}; the change may have been made")


MALFORMED = "malformed response from the API"


def _malformed(exc: BaseException) -> bool:
    """A 2xx answer the client could not read: a body cut off or not JSON, or a field of the
    wrong type (protobuf's ParseError, whose text quotes the body's values)."""
    from google.protobuf import json_format

    return isinstance(exc, json_format.ParseError)


def response_lost(exc: BaseException) -> bool:
    """Whether EXC leaves unknown if the request reached the server and took effect: anything
    but a connection that was never made (refused, unresolved, TLS or connect timeout) and an
    error the API itself answered; a deadline that passed (gRPC's own timeout) counts as lost."""
    import requests
    from google.api_core import exceptions as gexc
    from urllib3.exceptions import ConnectTimeoutError

    if _malformed(exc) or isinstance(exc, gexc.DeadlineExceeded):  # (gRPC: the client stopped waiting)
        return True
    if isinstance(exc, requests.ConnectTimeout | requests.exceptions.SSLError):
        return False
    if isinstance(exc, requests.ConnectionError):
        reason = getattr(exc.args[0] if exc.args else None, "reason", None)
        return not isinstance(reason, ConnectTimeoutError)  # NewConnectionError is one
    return isinstance(exc, requests.Timeout | requests.exceptions.ChunkedEncodingError)


def _retryable_types() -> tuple[type[BaseException], ...]:
    from google.api_core import exceptions as gexc

    return (
        gexc.ServiceUnavailable,
        gexc.TooManyRequests,
        gexc.ResourceExhausted,
        gexc.InternalServerError,
        gexc.BadGateway,
        gexc.GatewayTimeout,
        gexc.DeadlineExceeded,
        gexc.RetryError,
    )


def is_retryable(exc: BaseException, *, idempotent: bool) -> bool:
    """Retry only what cannot have changed anything twice: throttling and unavailability
    for any call; timeouts, 5xx and dropped connections only for idempotent calls."""
    from google.api_core import exceptions as gexc

    if isinstance(exc, gexc.TooManyRequests | gexc.ResourceExhausted | gexc.ServiceUnavailable):
        return True
    if not idempotent:
        return False
    if isinstance(exc, _retryable_types()):
        return True
    import requests

    return isinstance(
        exc, requests.ConnectionError | requests.Timeout | requests.exceptions.ChunkedEncodingError
    )


def message_of(exc: BaseException) -> str:
    """One line from a library error (its message never holds a payload: voke sends none in URLs),
    redacted before it is cut: a secret across the cut would keep its head."""
    if _malformed(exc):
        return MALFORMED  # the parser's text quotes the body
    response = getattr(exc, "response", None)
    if response is not None and getattr(response, "status_code", None) is not None:
        try:
            response.json()
        except ValueError:  # a proxy's or load balancer's HTML page: its first line says nothing
            reason = getattr(response, "reason", "") or ""
            return f"HTTP {response.status_code} {reason}".strip() + " (not a JSON error response)"
    if (lost := _connection_message(exc)) is not None:
        return lost  # requests' text is a repr of urllib3's exceptions, with the host and a socket
    text = getattr(exc, "message", None) or str(exc) or type(exc).__name__
    # api_core's REST errors start "METHOD URL: " (the URL with its query): the resource is in
    # voke's own message around this one
    text = _REQUEST_PREFIX.sub("", str(text).strip(), count=1)
    return redact(text).strip().splitlines()[0][:300]


_REQUEST_PREFIX = re.compile(r"^(?:GET|POST|PUT|PATCH|DELETE|HEAD|OPTIONS) \S+: ")


def _connection_message(exc: BaseException) -> str | None:
    """A connection that failed (requests', urllib3's) in a few words, None for anything else."""
    import requests
    import urllib3.exceptions

    if not isinstance(exc, requests.RequestException | urllib3.exceptions.HTTPError):
        return None
    if isinstance(exc, requests.ConnectTimeout) or (
        isinstance(exc, requests.ConnectionError)
        and isinstance(
            getattr(exc.args[0] if exc.args else None, "reason", None),
            urllib3.exceptions.NewConnectionError | urllib3.exceptions.ConnectTimeoutError,
        )
    ):
        return f"could not connect ({type(exc).__name__})"
    if isinstance(exc, requests.Timeout):
        return f"no answer in time ({type(exc).__name__})"
    return f"connection lost ({type(exc).__name__})"


DEFAULT_ERRORS: dict[str, type[VokeError]] = {
    NOT_FOUND: NotFoundError,
    CONFLICT: EtagMismatchError,
    PRECONDITION: PreconditionError,
    INVALID: BackendError,  # voke's own request, refused: nothing changed (exit 4)
    DENIED: BackendError,
    UNAVAILABLE: BackendError,
    FAILED: BackendError,
}


@contextmanager
def translating(resource: str, errors: Mapping[str, type[VokeError]]) -> Iterator[None]:
    """Turn a library error into the voke error ERRORS assigns to its kind."""
    try:
        yield
    except VokeError:
        raise
    except Exception as exc:
        kind = classify(exc)
        if kind is None:
            raise
        cls = errors.get(kind) or DEFAULT_ERRORS[kind]
        hint = None
        if kind == DENIED:
            hint = "check the credentials and roles: voke doctor"  # with_env adds --env NAME
        elif isinstance(exc, ResponseLost):
            hint = "its answer was lost: check whether it took effect before running it again"
        elif kind == UNAVAILABLE:
            hint = "the API could not be reached or was overloaded; nothing was changed by the failed call"
        raise cls(f"{resource}: {message_of(exc)}", hint=hint) from None


@dataclass
class GcpContext:
    """One cloud environment's connection settings, shared by its adapters."""

    project: str
    region: str = "us-central1"
    endpoints: Mapping[str, str] = field(default_factory=dict)
    anonymous: bool = False
    timeout: float = 30.0
    operation_timeout: float = 1800.0
    poll_interval: float = 5.0
    attempts: int = 4
    backoff: float = 1.0
    sleep: Callable[[float], None] = time.sleep
    _credentials: Any = field(default=None, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @classmethod
    def from_environment(cls, env: GcpEnvironment, **overrides: Any) -> GcpContext:
        values: dict[str, Any] = {
            "project": env.project,
            "region": env.region,
            "endpoints": dict(env.endpoints),
            "anonymous": env.credentials == "anonymous",
            "timeout": env.timeout,
            "operation_timeout": env.operation_timeout,
            "poll_interval": env.poll_interval,
        }
        values.update(overrides)
        return cls(**values)

    # -- clients ------------------------------------------------------------------------------
    def credentials(self) -> Any:
        """Anonymous (fakes, emulators) or Application Default Credentials, found once."""
        with self._lock:
            if self._credentials is None:
                if self.anonymous:
                    from google.auth.credentials import AnonymousCredentials

                    self._credentials = AnonymousCredentials()
                else:
                    import google.auth
                    import google.auth.exceptions

                    try:
                        self._credentials, _ = google.auth.default(scopes=list(SCOPES))
                    except google.auth.exceptions.DefaultCredentialsError as exc:
                        raise ConfigError(
                            f"no Google credentials: {message_of(exc)}",
                            hint="gcloud auth application-default login, or set GOOGLE_APPLICATION_CREDENTIALS",
                        ) from None
            return self._credentials

    def endpoint(self, api: str) -> str | None:
        """The configured base URL of API, None for Google's own. An API not in ENDPOINT_APIS is
        a bug: the configuration would refuse its key as unknown, so it could never be set."""
        from voketag_ops.adapters.gcp.catalog import ENDPOINT_APIS

        if api not in ENDPOINT_APIS:
            raise ValueError(f"{api!r} is not one of catalog.ENDPOINT_APIS")
        return self.endpoints.get(api)

    def rest_client(self, client_cls: Any, api: str) -> Any:
        """A GAPIC client over REST (Secret Manager, Cloud SQL v1beta4, Cloud Run, ...)."""
        from google.api_core.client_options import ClientOptions

        endpoint = self.endpoint(api)
        options = ClientOptions(api_endpoint=endpoint) if endpoint else None
        return client_cls(credentials=self.credentials(), transport="rest", client_options=options)

    def grpc_client(self, client_cls: Any, transport_cls: Any, api: str) -> Any:
        """A GAPIC client over gRPC (Monitoring, IAM). An http:// endpoint means an insecure
        channel (fakes); anything else a normal TLS channel to that address."""
        endpoint = self.endpoint(api)
        if endpoint and endpoint.startswith("http://"):
            import grpc

            channel = grpc.insecure_channel(endpoint.removeprefix("http://").rstrip("/"))
            return client_cls(transport=transport_cls(channel=channel))
        from google.api_core.client_options import ClientOptions

        options = ClientOptions(api_endpoint=endpoint.removeprefix("https://")) if endpoint else None
        return client_cls(credentials=self.credentials(), client_options=options)

    # -- calls --------------------------------------------------------------------------------------
    def call(self, fn: Callable[..., T], /, *args: Any, idempotent: bool = True, **kwargs: Any) -> T:
        """FN(*ARGS, **KWARGS, timeout=..., retry=None), retried with backoff on retryable errors.
        A call not IDEMPOTENT whose answer was lost raises ResponseLost: it may have taken effect.

        The library's own retry is switched off so there is exactly one retry policy."""
        from tenacity import Retrying, retry_if_exception, stop_after_attempt, wait_exponential

        kwargs.setdefault("timeout", self.timeout)
        kwargs.setdefault("retry", None)
        retrying = Retrying(
            stop=stop_after_attempt(self.attempts),
            wait=wait_exponential(multiplier=self.backoff, max=max(self.backoff, 30.0)),
            retry=retry_if_exception(lambda exc: is_retryable(exc, idempotent=idempotent)),
            sleep=self.sleep,
            reraise=True,
            before_sleep=lambda state: log.info(
                "retrying %s after %s",
                getattr(fn, "__name__", "call"),
                type(state.outcome.exception()).__name__ if state.outcome else "?",
            ),
        )
        try:
            return retrying(fn, *args, **kwargs)
        except Exception as exc:
            if not idempotent and response_lost(exc):
                raise ResponseLost(exc) from exc
            raise

    def deadline(self, seconds: float | None = None) -> float:
        return time.monotonic() + (self.operation_timeout if seconds is None else seconds)


def iso_of(value: Any) -> str | None:
    """A time from a Google API as voke writes times (a datetime, naive = UTC), None for
    none, and anything else (the API's own text) as it is."""
    if not value:
        return None
    return iso(value) if isinstance(value, datetime) else str(value)
