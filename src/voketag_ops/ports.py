"""Ports: the Protocols workflows depend on, and the frozen value types they exchange.

Adapters implement them: `adapters/local` (the embedded environment) and
`adapters/gcp` (Google Cloud). Value types are ours, never SDK types.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any, Literal, Protocol, runtime_checkable

VersionState = Literal["enabled", "disabled", "destroyed"]
# A secret's name (fullmatch): Secret Manager's secret ids; the local store's file names too. Here,
# not in config: a local service imports the store at its start and needs no pydantic for it.
SECRET_NAME = re.compile(r"[A-Za-z0-9_-]{1,255}")
SECRET_NAME_RULE = "1-255 letters, digits, - and _"


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

    def unreadable_hint(self, name: str, alias: str, version: int, state: str) -> str:
        """How a person makes ALIAS of NAME readable again: its version VERSION is STATE."""
        ...


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

    def services(self, *, check: bool = True) -> list[ServiceInfo]:
        """The configured services and the versions they serve; CHECK: probe their health too."""
        ...

    def deploy(self, service: str, secret: str, version: int) -> ServiceInfo:
        """Blue-green: start a new instance pinned to VERSION, wait until healthy, move
        traffic, stop the old one. Raises RestartError / HealthCheckError, leaving the old
        instance serving."""
        ...

    def health(self, service: str) -> bool:
        """A fresh health check of the instance that receives traffic."""
        ...

    def serving_version(self, service: str, secret: str) -> int | None:
        """The version of SECRET the instance receiving SERVICE's traffic is pinned to (None:
        nothing serving, it does not read SECRET, or it reads `latest`)."""
        ...

    def deploy_many(self, targets: dict[str, tuple[str, int]]) -> list[ServiceInfo]:
        """`deploy` for several services {service: (secret, version)} in parallel; raises the
        first failure once all have finished."""
        ...

    def stop_orphans(self) -> list[str]:
        """Stop what a deploy whose voke died (SIGKILL) had started and not yet moved traffic
        to, so nothing is left reading a version a rollback then disables. The instances or
        revisions stopped."""
        ...

    def pinned_versions(self, secret: str) -> set[int]:
        """Versions of SECRET anything deployed may read (serving, draining, tagged): cleanup
        never disables these."""
        ...

    def live_versions(self, secret: str) -> set[int]:
        """Versions of SECRET an instance taking or finishing requests reads (serving, or
        draining after traffic moved off it)."""
        ...

    def live_pins(self, service: str, secret: str) -> dict[str, int | str | None]:
        """Each instance (revision) of SERVICE taking or finishing requests -> the version of
        SECRET it reads: a number, "latest" (resolved when the instance started), or None (it
        reads no one version of SECRET)."""
        ...


# -- managed-database recovery (Cloud SQL; issue 8) ---------------------------------------------
@dataclass(frozen=True)
class DbInstanceInfo:
    """A managed database instance as DR sees it."""

    name: str
    state: str  # RUNNABLE, SUSPENDED, MAINTENANCE, FAILED, ...
    role: Literal["primary", "replica"]
    region: str | None = None
    primary: str | None = None  # the instance a replica replicates from
    replicas: tuple[str, ...] = ()
    pitr_enabled: bool = False
    retention_days: int | None = None
    ip_address: str | None = None
    dr_replica: str | None = None  # the designated DR replica (Enterprise Plus)
    edition: str | None = None
    availability: str | None = None  # ZONAL | REGIONAL (HA)


@dataclass(frozen=True)
class BackupInfo:
    """One backup run; only status SUCCESSFUL counts as a backup."""

    id: str
    status: str
    kind: str
    started_at: str | None
    finished_at: str | None


@dataclass(frozen=True)
class RecoveryWindow:
    """The times a point-in-time restore can reach (ISO 8601 UTC)."""

    earliest: str | None
    latest: str | None


@dataclass(frozen=True)
class DbOperationInfo:
    """A database operation: finished (DONE, as the mutating calls return them) or, listed
    by `pending_operations`, still PENDING or RUNNING."""

    name: str
    kind: str  # CLONE, PROMOTE_REPLICA, FAILOVER, SWITCHOVER, UPDATE_USER, ...
    target: str
    status: str
    started_at: str | None
    finished_at: str | None


@dataclass(frozen=True)
class ReplicationInfo:
    """Replication health from the monitoring backend (None: no recent sample)."""

    replica: str
    lag_seconds: float | None
    lag_bytes: int | None
    archive_failures: int | None  # None: neither archived nor failed segments on record (unknown)
    inactive: bool = False  # the replica reports replication inactive (Cloud SQL: a negative lag)


@runtime_checkable
class DatabaseRecovery(Protocol):
    """DR operations on a managed PostgreSQL. Implementation: CloudSqlRecovery (adapters/gcp).

    Every mutating call waits until its operation is DONE and raises BackendError when
    the operation finished with an error; it returns the finished operation."""

    def instance(self, name: str | None = None) -> DbInstanceInfo: ...

    def backups(self, instance: str | None = None) -> list[BackupInfo]: ...

    def newest_backup(self, instance: str | None = None) -> BackupInfo | None:
        """The newest SUCCESSFUL backup (failed, running or skipped runs never count)."""
        ...

    def recovery_window(self, instance: str | None = None) -> RecoveryWindow: ...

    def replication(self, replica: str | None = None) -> ReplicationInfo: ...

    def clone_to_point_in_time(
        self, point_in_time: str, destination: str, instance: str | None = None
    ) -> DbOperationInfo:
        """PITR into a NEW instance DESTINATION (never over the source)."""
        ...

    def promote_replica(self, replica: str | None = None, *, failover: bool = False) -> DbOperationInfo: ...

    def switchover(self, replica: str | None = None) -> DbOperationInfo:
        """Planned swap: the DR replica becomes primary, the primary its replica."""
        ...


# -- time ----------------------------------------------------------------------------------
@runtime_checkable
class Clock(Protocol):
    """Time as voke reads it. Implementations: clock.SystemClock, clock.SteadyClock (a run's)."""

    def now(self) -> datetime:
        """The wall time, in UTC: what people read."""
        ...

    def monotonic(self) -> float:
        """Seconds on a clock that never steps: what durations are measured on."""
        ...


# -- the hash chain (issue 3) -------------------------------------------------------------

if TYPE_CHECKING:
    from collections.abc import Collection, Iterator, Sequence
    from contextlib import AbstractContextManager

    from voketag_ops.core.chain import Anchor, AnchorPage, AnchorState, Block, ChainState


@runtime_checkable
class ChainStore(Protocol):
    """Where the hash chain and its anchor requests live.

    Implementations: PgChainStore (the default: the local environment's database) and
    FileChainStore (one JSON document, also the export/import form). Writers are
    optimistic: `commit` checks nothing changed underneath, so callers reload and retry.
    """

    @property
    def location(self) -> str:
        """Where the chain lives, for people and audit targets (never a password)."""
        ...

    def load(self, *, kind: str | None = None, ids: Collection[str] | None = None) -> ChainState:
        """A consistent snapshot of every block and anchor (of KIND only, among IDS only, when
        given: the others are never read). Raises ChainStoreError."""
        ...

    def stream(
        self, *, kind: str | None = None, ids: Collection[str] | None = None
    ) -> AbstractContextManager[tuple[dict[str, Anchor], Iterator[Block]]]:
        """As `load` (one snapshot), but the blocks come one at a time, oldest first, while the
        context is open: a reader that keeps none holds none. Raises ChainStoreError."""
        ...

    def head(self) -> Block | None:
        """The last block (None: no block yet), read alone. Raises ChainStoreError."""
        ...

    def anchors(
        self,
        ids: Collection[str] | None = None,
        *,
        kind: str | None = None,
        state: AnchorState | None = None,
        prefix: str | None = None,
    ) -> dict[str, Anchor]:
        """The stored anchors (by id) among IDS (None: every id), of KIND, in STATE and with an
        id starting with PREFIX (lowercase hex) when given, read alone: a lookup of a few never
        reads the rest. Raises ChainStoreError."""
        ...

    def anchor_page(self, *, state: AnchorState | None = None, limit: int) -> AnchorPage:
        """The LIMIT most recently requested anchors (in STATE when given), newest first (ties:
        the larger root first), and the count in each state; only those LIMIT are parsed.
        Raises ChainStoreError."""
        ...

    def commit(self, *, blocks: Sequence[Block] = (), anchors: Sequence[Anchor] = ()) -> None:
        """Atomically append BLOCKS (the first must link to the current head, at the next
        index) and upsert ANCHORS (each exactly one version ahead of the stored one, or
        version 1 and new). Raises StoreConflictError when another writer got there
        first and ChainStoreError when the store fails; either way nothing changed."""
        ...

    def import_state(self, incoming: ChainState) -> dict[str, int]:
        """Merge INCOMING (an exported document, already validated) as
        `core.chain.merge_import` does, under the write lock: one chain a prefix of the other,
        an anchor its block seals stays anchored, the merged anchors agree with the merged
        blocks (StoreConflictError otherwise, nothing changed).
        Returns {"blocks_added", "anchors_updated"}."""
        ...
