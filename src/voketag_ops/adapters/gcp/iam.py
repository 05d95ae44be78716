"""Service-account keys through IAM Admin v1 (gRPC only: iam_admin_v1 has no REST transport).

A key file is verified the way a workload uses it: a JWT signed with the private key
is exchanged for an access token at the key file's `token_uri`.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from voketag_ops import redact
from voketag_ops.adapters.gcp._common import (
    CONFLICT,
    DENIED,
    FAILED,
    INVALID,
    NOT_FOUND,
    PRECONDITION,
    UNAVAILABLE,
    GcpContext,
    iso_of,
    translating,
)
from voketag_ops.errors import (
    AuthenticationError,
    BackendError,
    ConnectivityError,
    NotFoundError,
    RequestRefusedError,
    SecretError,
    ValidationError,
)

MAX_KEYS = 10  # IAM allows at most 10 user-managed keys per service account
USER_MANAGED = 1


@dataclass(frozen=True)
class KeyInfo:
    """One user-managed key of a service account (never its private part)."""

    key_id: str
    disabled: bool
    created_at: str | None


class ServiceAccountKeys:
    """IAM service-account key operations in one project."""

    def __init__(self, ctx: GcpContext, *, client: Any = None) -> None:
        self.ctx = ctx
        self._client = client

    @property
    def client(self) -> Any:
        if self._client is None:
            from google.cloud import iam_admin_v1
            from google.cloud.iam_admin_v1.services.iam.transports import IAMGrpcTransport

            self._client = self.ctx.grpc_client(iam_admin_v1.IAMClient, IAMGrpcTransport, "iam")
        return self._client

    @contextmanager
    def translate(self, what: str) -> Iterator[None]:
        """The one place IAM errors become voke errors."""
        errors = {
            NOT_FOUND: NotFoundError,
            CONFLICT: SecretError,
            PRECONDITION: ValidationError,  # e.g. the 10-key limit
            INVALID: RequestRefusedError,  # it made nothing (a bad request, a bad key type)
            DENIED: BackendError,
            UNAVAILABLE: SecretError,
            FAILED: SecretError,
        }
        with translating(what, errors):
            yield

    @staticmethod
    def _account(email: str) -> str:
        return f"projects/-/serviceAccounts/{email}"

    def _key(self, email: str, key_id: str) -> str:
        return f"projects/-/serviceAccounts/{email}/keys/{key_id}"

    def list(self, email: str) -> list[KeyInfo]:
        with self.translate(f"keys of {email}"):
            resp = self.ctx.call(
                self.client.list_service_account_keys,
                request={
                    "name": self._account(email).replace("projects/-", f"projects/{self.ctx.project}"),
                    "key_types": [USER_MANAGED],
                },
            )
        out = []
        for key in resp.keys:
            created = key.valid_after_time
            out.append(
                KeyInfo(
                    key_id=key.name.rsplit("/", 1)[1],
                    disabled=bool(key.disabled),
                    created_at=iso_of(created),
                )
            )
        return out

    def create(self, email: str) -> dict[str, Any]:
        """A new key beside the existing ones; returns the key file (JSON, as a dict)."""
        if len(self.list(email)) >= MAX_KEYS:
            raise ValidationError(
                f"{email} already has {MAX_KEYS} user-managed keys, the IAM limit; nothing was created",
                hint="voke rotate cleanup deletes superseded keys; or delete unused ones in IAM",
            )
        with self.translate(f"new key of {email}"):
            key = self.ctx.call(
                self.client.create_service_account_key,
                request={
                    "name": f"projects/{self.ctx.project}/serviceAccounts/{email}",
                    "private_key_type": 2,
                },
                idempotent=False,
            )
        data = bytes(key.private_key_data)
        try:
            key_file = json.loads(data)
        except ValueError:
            key_file = json.loads(base64.b64decode(data))
        redact.register(key_file.get("private_key", ""))
        return key_file

    def _change(self, method: str, email: str, key_id: str, what: str) -> None:
        with self.translate(f"{what} key {key_id} of {email}"):
            self.ctx.call(
                getattr(self.client, method),
                request={"name": f"projects/{self.ctx.project}/serviceAccounts/{email}/keys/{key_id}"},
            )

    def disable(self, email: str, key_id: str) -> None:
        self._change("disable_service_account_key", email, key_id, "disable")

    def enable(self, email: str, key_id: str) -> None:
        self._change("enable_service_account_key", email, key_id, "enable")

    def delete(self, email: str, key_id: str) -> bool:
        """Delete a key; False when it was already gone."""
        try:
            self._change("delete_service_account_key", email, key_id, "delete")
        except NotFoundError:
            return False
        return True

    def verify(self, key_file: dict[str, Any]) -> bool:
        """Exchange a JWT signed by the key for an access token: False when refused, a
        ConnectivityError when the token endpoint cannot be reached or answers only errors
        worth retrying."""
        import google.auth.exceptions
        import google.auth.transport.requests
        from google.oauth2 import service_account

        info = {k: v for k, v in key_file.items() if k != "rotation_id"}
        try:
            creds = service_account.Credentials.from_service_account_info(
                info, scopes=["https://www.googleapis.com/auth/cloud-platform"]
            )
            creds.refresh(google.auth.transport.requests.Request())
        except google.auth.exceptions.RefreshError as exc:
            # Only a definite refusal (invalid_grant: the key is disabled, deleted or not this
            # account's) says the key is bad; a 5xx or 429 the token endpoint kept answering
            # through google.auth's own retries says nothing about it.
            if exc.retryable:
                raise ConnectivityError(
                    f"the token endpoint {info.get('token_uri')} is unavailable (it kept answering an error "
                    "worth retrying); the key could not be checked"
                ) from None
            return False
        except google.auth.exceptions.TransportError as exc:
            raise ConnectivityError(f"cannot reach {info.get('token_uri')}: {type(exc).__name__}") from None
        except ValueError as exc:
            raise AuthenticationError(
                f"the key file of {info.get('client_email')} is unusable: {exc}"
            ) from None
        return bool(creds.token)
