"""Ports: the Protocols workflows depend on, and the frozen value types they exchange.

Adapters implement them: `adapters/local` (the embedded environment) and
`adapters/gcp` (Google Cloud). Value types are ours, never SDK types.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, Protocol, runtime_checkable

VersionState = Literal["enabled", "disabled", "destroyed"]


@dataclass(frozen=True)
class SecretVersion:
    """One immutable version of a secret (never carries the value)."""

    version: int
    state: VersionState
    created_at: str
    aliases: tuple[str, ...] = ()
    state_changed_at: str | None = None


@dataclass(frozen=True)
class SecretMeta:
    """A secret's metadata: versions, aliases, annotations and the etag for compare-and-swap."""

    name: str
    etag: str
    created_at: str
    versions: tuple[SecretVersion, ...]
    aliases: dict[str, int] = field(default_factory=dict)
    annotations: dict[str, str] = field(default_factory=dict)

    def version(self, number: int) -> SecretVersion | None:
        return next((v for v in self.versions if v.version == number), None)

    def alias(self, name: str) -> int | None:
        return self.aliases.get(name)


@runtime_checkable
class SecretStore(Protocol):
    """Where credential material lives. Implementations: LocalSecretStore, GcpSecretStore."""

    def list(self) -> list[SecretMeta]: ...

    def get(self, name: str) -> SecretMeta:
        """Raises NotFoundError when the secret does not exist."""
        ...

    def create(self, name: str) -> SecretMeta:
        """Create an empty secret (idempotent)."""
        ...

    def add_version(self, name: str, payload: bytes) -> SecretVersion: ...

    def access(self, name: str, version: int | str) -> bytes:
        """The value of a version number or alias; only enabled versions can be read."""
        ...

    def update(
        self,
        name: str,
        *,
        etag: str,
        aliases: dict[str, int | None] | None = None,
        annotations: dict[str, str | None] | None = None,
    ) -> SecretMeta:
        """Compare-and-swap: apply the changes only if ETAG is current (None removes a key).

        Raises EtagMismatchError when another writer got there first."""
        ...

    def set_state(self, name: str, version: int, state: VersionState) -> SecretVersion: ...


@dataclass(frozen=True)
class ServiceInfo:
    """A running service and the secret versions it is pinned to."""

    name: str
    url: str | None
    secret: str
    secret_version: int | None
    healthy: bool | None = None
    instance: str | None = None
    detail: dict[str, Any] = field(default_factory=dict)


@runtime_checkable
class ServiceRuntime(Protocol):
    """Where the consuming services run. Implementations: LocalServiceRuntime, CloudRunRuntime."""

    def services(self) -> list[ServiceInfo]: ...

    def deploy(self, service: str, secret: str, version: int) -> ServiceInfo:
        """Blue-green: start a new instance pinned to VERSION, wait until healthy, move
        traffic, stop the old one. Raises RestartError / HealthCheckError, leaving the old
        instance serving."""
        ...

    def health(self, service: str) -> bool:
        """A fresh health check of the instance that receives traffic."""
        ...


# -- the hash chain (issue 3) -------------------------------------------------------------

if TYPE_CHECKING:
    from collections.abc import Sequence

    from voketag_ops.core.chain import Anchor, Block, ChainState


@runtime_checkable
class ChainStore(Protocol):
    """Where the hash chain and its anchor requests live.

    Implementations: FileChainStore (one JSON document, also the export/import form);
    a PostgreSQL store on the local environment's database. Writers are optimistic:
    `commit` checks nothing changed underneath, so callers reload and retry.
    """

    def load(self) -> ChainState:
        """A consistent snapshot of every block and anchor. Raises ChainStoreError."""
        ...

    def commit(self, *, blocks: Sequence[Block] = (), anchors: Sequence[Anchor] = ()) -> None:
        """Atomically append BLOCKS (the first must link to the current head, at the next
        index) and upsert ANCHORS (each exactly one version ahead of the stored one, or
        version 1 and new). Raises StoreConflictError when another writer got there
        first and ChainStoreError when the store fails; either way nothing changed."""
        ...
