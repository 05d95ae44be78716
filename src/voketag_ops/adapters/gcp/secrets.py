"""GcpSecretStore: the SecretStore port over Secret Manager (REST).

Shaped exactly like LocalSecretStore (the same contract suite runs against both):
numbered versions with states, `version_aliases` as voke's aliases, `annotations` for
rotation state, and UpdateSecret guarded by the secret's etag. Nothing reads `latest`
(it is the newest version even when that one is disabled). Destroying a version goes
through DestroySecretVersion, which Secret Manager delays when the secret has a
`version_destroy_ttl`; a version scheduled for destruction counts as destroyed here.

Secret Manager keeps no time of a version's last state change, which cleanup needs
("destroy 30 days after disabling"), so the adapter records it in the annotation
`voke-state-changed-at`.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from datetime import datetime, timezone
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
from voketag_ops.core.times import iso
from voketag_ops.errors import EtagMismatchError, NotFoundError, SecretError, UsageError
from voketag_ops.ports import SecretMeta, SecretVersion, VersionState

STATE_ANNOTATION = "voke-state-changed-at"
ANNOTATIONS_LIMIT = 16 * 1024
# What Secret Manager takes as a version alias (a version number is digits).
_ALIAS = re.compile(r"[A-Za-z][A-Za-z0-9_-]{0,62}")
_STATES: dict[int, VersionState] = {1: "enabled", 2: "disabled", 3: "destroyed"}


def _now() -> str:
    return iso(datetime.now(timezone.utc))


def _maps(secret: Any) -> tuple[dict[str, int], dict[str, str]]:
    """SECRET's version aliases and annotations, as plain dicts."""
    return (
        {str(k): int(v) for k, v in secret.version_aliases.items()},
        {str(k): str(v) for k, v in secret.annotations.items()},
    )


class GcpSecretStore:
    """SecretStore over Secret Manager in one project."""

    def __init__(
        self,
        ctx: GcpContext,
        *,
        secret_ids: Mapping[str, str] | None = None,
        prefix: str = "",
        client: Any = None,
    ) -> None:
        self.ctx = ctx
        self.prefix = prefix  # several environments (or a test run) side by side in one project
        self.ids = dict(secret_ids or {})
        self.names = {v: k for k, v in self.ids.items()}
        self._client = client

    def secret_id(self, name: str) -> str:
        """The Secret Manager id of logical secret NAME."""
        return self.prefix + self.ids.get(name, name)

    def unreadable_hint(self, name: str, alias: str, version: int, state: str) -> str:
        """How an SRE makes ALIAS of NAME readable again: version VERSION is STATE."""
        where = f"--secret {self.secret_id(name)} --project {self.ctx.project}"
        if state == "disabled":
            return f"enable it: gcloud secrets versions enable {version} {where}"
        update = f"gcloud secrets update {self.secret_id(name)} --project {self.ctx.project}"
        drop = f" (or drop it: {update} --remove-version-aliases={alias})" if alias != "current" else ""
        return (
            f"its value is gone: point `{alias}` at a version that holds a working credential: "
            f"{update} --update-version-aliases={alias}=N{drop}"
        )

    def _logical(self, secret_id: str) -> str:
        short = secret_id.removeprefix(self.prefix)
        return self.names.get(short, short)

    # -- plumbing -----------------------------------------------------------------------------
    @property
    def client(self) -> Any:
        if self._client is None:
            from google.cloud import secretmanager_v1

            self._client = self.ctx.rest_client(secretmanager_v1.SecretManagerServiceClient, "secretmanager")
        return self._client

    def _path(self, name: str) -> str:
        return f"projects/{self.ctx.project}/secrets/{self.secret_id(name)}"

    @contextmanager
    def translate(self, name: str, *, precondition: type = SecretError) -> Iterator[None]:
        """The one place Secret Manager errors become voke errors."""
        errors = {
            NOT_FOUND: NotFoundError,
            CONFLICT: EtagMismatchError,
            PRECONDITION: precondition,
            INVALID: SecretError,  # a request voke built, refused (a version named by hand: `access`)
            DENIED: SecretError,
            UNAVAILABLE: SecretError,
            FAILED: SecretError,
        }
        with translating(f"secret {name!r}", errors):
            yield

    def _secret(self, name: str) -> Any:
        with self.translate(name):
            return self.ctx.call(self.client.get_secret, name=self._path(name))

    def _versions(self, name: str) -> list[Any]:
        with self.translate(name):
            return self.ctx.call(
                lambda **kw: list(self.client.list_secret_versions(parent=self._path(name), **kw))
            )

    def _meta(self, secret: Any, versions: list[Any]) -> SecretMeta:
        aliases, annotations = _maps(secret)
        changed = _json_map(annotations.get(STATE_ANNOTATION))
        by_version: dict[int, list[str]] = {}
        for alias, number in aliases.items():
            by_version.setdefault(number, []).append(alias)
        out = []
        for v in versions:
            number = int(v.name.rsplit("/", 1)[1])
            state = _STATES.get(int(v.state), "disabled")
            if v.scheduled_destroy_time:
                state = "destroyed"  # delayed destroy: unreadable, and never coming back in voke's eyes
            out.append(
                SecretVersion(
                    version=number,
                    state=state,
                    created_at=iso_of(v.create_time) or "",
                    aliases=tuple(sorted(by_version.get(number, []))),
                    state_changed_at=changed.get(str(number)) or iso_of(v.destroy_time),
                )
            )
        return SecretMeta(
            name=self._logical(secret.name.rsplit("/", 1)[1]),
            etag=secret.etag,
            created_at=iso_of(secret.create_time) or "",
            versions=tuple(sorted(out, key=lambda v: v.version)),
            aliases=aliases,
            annotations=annotations,
        )

    # -- SecretStore ------------------------------------------------------------------------------
    def list(self) -> list[SecretMeta]:
        parent = f"projects/{self.ctx.project}"
        with self.translate("*"):
            secrets = self.ctx.call(lambda **kw: list(self.client.list_secrets(parent=parent, **kw)))
        mine = [s for s in secrets if s.name.rsplit("/", 1)[1].startswith(self.prefix)]
        return [self._meta(s, self._versions(self._logical(s.name.rsplit("/", 1)[1]))) for s in mine]

    def get(self, name: str) -> SecretMeta:
        secret = self._secret(name)
        return self._meta(secret, self._versions(name))

    def exists(self, name: str) -> bool:
        try:
            self._secret(name)
        except NotFoundError:
            return False
        return True

    def create(self, name: str) -> SecretMeta:
        from google.api_core import exceptions as gexc

        secret_id = self.secret_id(name)
        try:
            with self.translate(name):
                try:
                    self.ctx.call(
                        self.client.create_secret,
                        parent=f"projects/{self.ctx.project}",
                        secret_id=secret_id,
                        secret={"replication": {"automatic": {}}},
                        idempotent=False,
                    )
                except gexc.AlreadyExists:
                    pass
        except EtagMismatchError:  # a 409 from a create that raced another
            pass
        return self.get(name)

    def add_version(self, name: str, payload: bytes) -> SecretVersion:
        with self.translate(name):
            made = self.ctx.call(
                self.client.add_secret_version,
                parent=self._path(name),
                payload={"data": payload},
                idempotent=False,
            )
        number = int(made.name.rsplit("/", 1)[1])
        return SecretVersion(version=number, state="enabled", created_at=iso_of(made.create_time) or _now())

    def access(self, name: str, version: int | str) -> bytes:
        ref = str(version)
        if ref == "latest":
            raise UsageError("voke never reads `latest`; name a version number or an alias")
        if not (ref.isdigit() or _ALIAS.fullmatch(ref)):  # (a 400 from the API would be exit 4)
            raise NotFoundError(f"secret {name!r} has no version or alias {ref!r}")
        # A disabled or destroyed version answers FAILED_PRECONDITION: to voke it is not there.
        with self.translate(name, precondition=NotFoundError):
            resp = self.ctx.call(self.client.access_secret_version, name=f"{self._path(name)}/versions/{ref}")
        value = bytes(resp.payload.data)
        redact.register_payload(value)
        return value

    def update(
        self,
        name: str,
        *,
        etag: str,
        aliases: dict[str, int | None] | None = None,
        annotations: dict[str, str | None] | None = None,
    ) -> SecretMeta:
        secret = self._secret(name)
        if secret.etag != etag:
            raise EtagMismatchError(f"secret {name!r} changed underneath (etag {etag} != {secret.etag})")
        new_aliases, new_annotations = _maps(secret)
        versions = None
        if aliases:
            versions = self._versions(name)
            usable = {
                int(v.name.rsplit("/", 1)[1])
                for v in versions
                if int(v.state) != 3 and not v.scheduled_destroy_time
            }
            for alias, number in aliases.items():
                if number is None:
                    new_aliases.pop(alias, None)
                elif number not in usable:
                    raise NotFoundError(f"secret {name!r} has no usable version {number} for alias {alias!r}")
                else:
                    new_aliases[alias] = number
        for key, value in (annotations or {}).items():
            if value is None:
                new_annotations.pop(key, None)
            else:
                new_annotations[key] = value
        if len(json.dumps(new_annotations)) > ANNOTATIONS_LIMIT:
            raise UsageError("annotations exceed 16 KiB")
        paths = [p for p, changed in (("version_aliases", aliases), ("annotations", annotations)) if changed]
        if paths:
            body = {
                "name": secret.name,
                "etag": etag,
                "version_aliases": new_aliases,
                "annotations": new_annotations,
            }
            from google.protobuf import field_mask_pb2

            try:
                with self.translate(name, precondition=EtagMismatchError):
                    secret = self.ctx.call(
                        self.client.update_secret,
                        secret=body,
                        update_mask=field_mask_pb2.FieldMask(paths=paths),
                    )
            except EtagMismatchError:
                # The retry after a lost answer meets this very write: done if the secret holds
                # exactly what was written (anything else is a real writer in between).
                secret = self._secret(name)
                if _maps(secret) != (new_aliases, new_annotations):
                    raise
        return self._meta(secret, versions if versions is not None else self._versions(name))

    def set_state(self, name: str, version: int, state: VersionState) -> SecretVersion:
        meta = self.get(name)
        current = meta.version(version)
        if current is None:
            raise NotFoundError(f"secret {name!r} has no version {version}")
        if current.state == "destroyed" and state != "destroyed":
            raise UsageError(f"secret {name!r} version {version} is destroyed and cannot be {state}")
        path = f"{self._path(name)}/versions/{version}"
        if current.state != state:
            if state == "destroyed":
                # Aliases never point at a destroyed version (as in the local store).
                self._record_state(name, version, drop_aliases=True)
            method = {
                "enabled": self.client.enable_secret_version,
                "disabled": self.client.disable_secret_version,
                "destroyed": self.client.destroy_secret_version,
            }[state]
            with self.translate(name, precondition=UsageError):
                self.ctx.call(method, request={"name": path})
            if state != "destroyed":
                self._record_state(name, version)
        return next(v for v in self.get(name).versions if v.version == version)

    def _record_state(self, name: str, version: int, *, drop_aliases: bool = False) -> None:
        """Remember when VERSION changed state (and drop its aliases); retried on lost races."""
        for _ in range(5):
            meta = self.get(name)
            changed = _json_map(meta.annotations.get(STATE_ANNOTATION))
            live = {str(v.version) for v in meta.versions if v.state != "destroyed"}
            changed = {k: v for k, v in changed.items() if k in live}
            changed[str(version)] = _now()
            aliases: dict[str, int | None] = (
                {a: None for a, n in meta.aliases.items() if n == version} if drop_aliases else {}
            )
            try:
                self.update(
                    name,
                    etag=meta.etag,
                    aliases=aliases or None,
                    annotations={
                        STATE_ANNOTATION: json.dumps(changed, sort_keys=True, separators=(",", ":"))
                    },
                )
                return
            except EtagMismatchError:
                continue
        raise SecretError(f"secret {name!r}: could not record the state change of version {version} (busy)")


def _json_map(raw: str | None) -> dict[str, str]:
    if not raw:
        return {}
    try:
        value = json.loads(raw)
    except ValueError:
        return {}
    return {str(k): str(v) for k, v in value.items()} if isinstance(value, dict) else {}
