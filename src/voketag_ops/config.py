"""Settings: defaults < voke.toml / [tool.voke] < VOKE_* environment < flags.

Every effective value remembers where it came from, so `voke config show` can say so
and a validation error can name both the key and the file. Named cloud environments
are kept raw and validated only when a command uses them (`Settings.environment`).
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import stat
import sys
import tomllib
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal, get_args

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from voketag_ops.core.addresses import plain_host, plain_port
from voketag_ops.core.chain import DEFAULT_DIFFICULTY
from voketag_ops.core.coverage import normalize_path
from voketag_ops.errors import ConfigError, UsageError
from voketag_ops.ports import SECRET_NAME, SECRET_NAME_RULE

DEFAULT_SERVICES = ("admin-service", "factory-service", "blockchain-service")
CONFIG_FILE = "voke.toml"
MAX_PRECISION = (
    10  # coverage decimals: [coverage] precision, --precision, coverage.py's own [report] precision
)

# Environment variables with a name of their own; any other key can be reached as
# VOKE_<SECTION>__<KEY> (e.g. VOKE_LOCAL__ARCHIVE_TIMEOUT=30).
ENV_VARS: dict[str, str] = {
    "VOKE_ENV": "env",
    "VOKE_HOME": "local.home",
    "VOKE_PG_BIN": "local.pg_bin",
    "VOKE_LOG_FORMAT": "log_format",
    "VOKE_LOG_LEVEL": "log_level",
}
# Read elsewhere (before configuration exists), listed here so the README has one source.
OTHER_ENV_VARS = {
    "VOKE_CONFIG": "path of the configuration file (instead of searching for voke.toml)",
    "VOKE_OUTPUT": "`json` makes every command print the JSON envelope, like --json (`human`: the default; anything else: exit 3)",
    "VOKE_ACTOR": "the `actor` of every audit event this process writes (default `user@host`), e.g. a CI job's name; self-declared, so not proof of who ran it",
    "VOKE_PORT_SHARE": "`I/N`: the local servers voke starts (nodes, restored instances, services) listen only on every Nth of the ports it picks from, from the Ith, so that N environments on one host (parallel CI jobs, test workers) never pick each other's ports; unset: all of them (`0/1`); a share keeping fewer than 20 of this host's ports, or anything else: exit 3",
}
PORT_SHARE_ENV = "VOKE_PORT_SHARE"
_PORT_SHARE = re.compile(r"(\d+)/(\d+)", re.ASCII)  # any size: too many for the ports is said later
PORT_SHARE_CAP = 1 << 16  # above every port: an I or N beyond it keeps the ports this one keeps


def port_share(value: str) -> tuple[int, int]:
    """VOKE_PORT_SHARE's `I/N` as (I, N); (0, 1), every port, for an empty VALUE. ConfigError
    for anything else (N of 0, I not below N). I and N of any size, compared as written and
    capped at PORT_SHARE_CAP (and one above it), keep the ports they would: none, or one of a
    span (`listen_ports` then refuses the share for too few ports); int() of thousands of
    digits would be an error of its own."""
    if not value:
        return 0, 1
    match = _PORT_SHARE.fullmatch(value.strip())
    index, count = (d.lstrip("0") for d in match.groups()) if match else ("", "")
    if match is None or (len(index), index) >= (len(count), count):
        raise ConfigError(
            f"{PORT_SHARE_ENV}={value!r}: I/N with 0 <= I < N, e.g. 0/2 and 1/2 for two environments"
        )
    cap = len(str(PORT_SHARE_CAP))  # digits enough to exceed it, few enough for int()
    return min(int(index[: cap + 1] or 0), PORT_SHARE_CAP), min(int(count[: cap + 1]), PORT_SHARE_CAP + 1)


# Keys whose values are secrets. Not `*_secret`: in voke's config those name a secret in the store.
_SECRET_KEY = re.compile(
    r"(password|passwd|token|key|credential|webhook|auth|client_secret|secret_value)s?$", re.I
)
_URL_PASSWORD = re.compile(r"(://[^/@\s:]*:)[^\s]*@")  # the password of scheme://user:password@host


# A cloud environment's name is also a Google Cloud label value (voke-env=NAME).
ENV_NAME = re.compile(r"[a-z][a-z0-9_-]{0,62}")


def _secret_name(value: str) -> str:
    """A secret named in the configuration, held to the stores' rule when the file is read: the
    store refused it only when a rotation reached it (exit 2, naming no key or file)."""
    if not SECRET_NAME.fullmatch(value):
        raise ValueError(f"not a secret name ({SECRET_NAME_RULE})")
    return value


SecretName = Annotated[str, AfterValidator(_secret_name)]
# An optional one left empty (`admin_secret = ""`, a CI template's blank variable) is unset, as it
# was read before secret names were checked here.
OptionalSecretName = Annotated[
    SecretName | None, BeforeValidator(lambda value: None if value == "" else value)
]


class _Model(BaseModel):
    # No inf or nan: `lock_timeout = inf` overflowed, and JSON output cannot carry them.
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False, validate_default=True)

    @field_validator("*", mode="before")
    @classmethod
    def _typed_as_written(cls, value: Any, info: ValidationInfo) -> Any:
        """`min_free_disk_mb = false` read as 0 switched the disk guard off, and `replica = "no"`
        was read as false: a TOML boolean is no number, and a TOML (or JSON) string is neither a
        number nor a boolean. A VOKE_* variable's text (`EnvText`) is still parsed as one."""
        if not isinstance(value, bool | str) or isinstance(value, EnvText) or info.field_name is None:
            return value
        kinds = set(get_args(cls.model_fields[info.field_name].annotation)) or {
            cls.model_fields[info.field_name].annotation
        }
        if isinstance(value, bool) and kinds & {int, float} and bool not in kinds:
            raise ValueError(f"expected a number, not {str(value).lower()}")
        if isinstance(value, str) and kinds & {int, float, bool} and str not in kinds:
            raise ValueError(f"expected {'a boolean' if bool in kinds else 'a number'}, not a string")
        return value


class EnvText(str):
    """The text of a VOKE_* variable: a number or boolean can only be written as text there, so it
    is parsed as one (a string in a file is refused for them: `_Model._typed_as_written`)."""

    __slots__ = ()


# What /bin/sh still reads inside double quotes, and how to name it in a message.
_SHELL_IN_QUOTES = (
    ('"', "a double quote"),
    ("$", "a dollar sign"),
    ("`", "a backquote"),
    ("\\\\", "two backslashes in a row"),
    ("\n", "a line break"),
)


class LocalSettings(_Model):
    """The embedded `local` environment."""

    home: Path | None = Field(
        default=None, description="state directory (default: the user data directory for voke)"
    )
    pg_bin: Path | None = Field(
        default=None, description="directory with initdb, pg_ctl, postgres... (default: embedded wheel)"
    )
    system_user: str = Field(
        default="voke-pg", description="unprivileged OS user that runs PostgreSQL when voke runs as root"
    )
    archive_timeout: int = Field(
        default=60, ge=1, le=3600, description="seconds before a partly filled WAL segment is archived"
    )
    wal_segment_mb: int = Field(
        default=1,
        ge=1,
        le=1024,
        description="WAL segment size of a new cluster in MB, a power of two (an existing cluster keeps its own)",
    )
    start_timeout: int = Field(default=60, ge=5, le=3600, description="seconds to wait for a server to start")
    min_free_disk_mb: int = Field(default=256, ge=0, description="refuse `env up` below this much free disk")
    replica: bool = Field(default=True, description="run a streaming replica beside the primary")
    service_drain_seconds: float = Field(
        default=3.0,
        ge=0,
        le=600,
        description="seconds a replaced local service instance keeps answering, as Cloud Run drains an old revision",
    )

    @field_validator("home", "pg_bin", mode="before")
    @classmethod
    def _not_empty(cls, value: Any) -> Any:
        # An empty VOKE_HOME would be the current directory: `env destroy` would act there.
        if isinstance(value, str) and not value.strip():
            raise ValueError("empty: name a directory, or leave it unset for the default")
        return value

    @field_validator("home", "pg_bin")
    @classmethod
    def _expand(cls, value: Path | None) -> Path | None:
        if value is None:
            return None
        # pg_ctl starts the server through /bin/sh with these paths in double quotes, where
        # these are still the shell's: the start failed, naming a log file never written.
        shell = [name for text, name in _SHELL_IN_QUOTES if text in str(value)]
        if shell:
            raise ValueError(
                f"must not contain {', '.join(shell)}: pg_ctl hands the path to /bin/sh in double quotes"
            )
        return Path(os.path.expanduser(str(value)))

    @field_validator("wal_segment_mb")
    @classmethod
    def _power_of_two(cls, value: int) -> int:
        # (initdb --wal-segsize takes nothing else)
        if value & (value - 1):
            raise ValueError("must be a power of two (1, 2, 4, ... 1024)")
        return value

    @field_validator("system_user")
    @classmethod
    def _user_name(cls, value: str) -> str:
        if not re.fullmatch(r"[a-z_][a-z0-9_-]{0,31}", value):
            raise ValueError("must be a valid system user name ([a-z_][a-z0-9_-]*, at most 32 characters)")
        return value


def _endpoint_api(value: str) -> str:
    """An `endpoints` key: an API voke calls, by the name its adapter asks for (a misspelt one
    was ignored, and its calls went to Google's own endpoint)."""
    from voketag_ops.adapters.gcp.catalog import ENDPOINT_APIS

    if value not in ENDPOINT_APIS:
        raise ValueError(f"unknown key: not one of the APIs ({', '.join(ENDPOINT_APIS)})")
    return value


# scheme://HOST[:PORT], an IPv6 address in brackets; one / after it at most
_BASE_URL = re.compile(r"(https?)://(\[[^\]]*\]|[^\[\]/:@?#\s]*)(?::([0-9]*))?/?")


def _endpoint_url(value: str) -> str:
    """An `endpoints` value: http(s)://HOST[:PORT], as the REST clients take it for a base URL
    (a path would be put before each call's own) and the gRPC ones, without the scheme, for
    the HOST:PORT they connect to; a trailing / is dropped. The value itself is never echoed
    (it could carry a user's password)."""
    found = _BASE_URL.fullmatch(value)
    if found is None:
        raise ValueError(
            "must be http://HOST[:PORT] or https://HOST[:PORT], with no user, path, query or fragment"
        )
    host, port = found.group(2), found.group(3)
    bracketed = host.startswith("[")
    bare = host.strip("[]")
    if plain_host(bare) is None or bracketed != (":" in bare):
        raise ValueError(
            f"host {host!r} is not a host name or IP address (an IPv6 address goes in brackets)"
            if host
            else "no host"
        )
    if port is not None and not (0 < len(port) <= 5 and plain_port(int(port))):
        raise ValueError(f"port {port!r} is not a port number (1..65535)")
    return value.removesuffix("/")


class GcpEnvironment(_Model):
    """A named Google Cloud environment (`[environments.NAME]`, kind = "gcp")."""

    kind: Literal["gcp"] = "gcp"
    project: str = Field(min_length=1, description="Google Cloud project id")
    region: str = Field(default="us-central1", description="primary region")
    dr_region: str = Field(default="us-east1", description="region of the cross-region replica")
    instance: str = Field(min_length=1, description="Cloud SQL primary instance name")
    replica: str | None = Field(default=None, description="Cloud SQL cross-region replica name")
    services: tuple[str, ...] = Field(default=DEFAULT_SERVICES, description="Cloud Run services")
    secrets: dict[SecretName, SecretName] = Field(
        default_factory=dict, description="logical name -> Secret Manager id"
    )
    credentials: Literal["adc", "anonymous"] = Field(
        default="adc",
        description="adc: Application Default Credentials; anonymous: only for fakes and emulators",
    )
    endpoints: dict[
        Annotated[str, AfterValidator(_endpoint_api)], Annotated[str, AfterValidator(_endpoint_url)]
    ] = Field(
        default_factory=dict,
        description="API (catalog.ENDPOINT_APIS) -> base URL http(s)://HOST[:PORT]; http:// means plain "
        "HTTP / an insecure gRPC channel (fakes, emulators)",
    )
    db_host: str | None = Field(
        default=None, description="address voke logs in to for tests (default: the instance's private IP)"
    )
    db_port: int = Field(default=5432, ge=1, le=65535, description="PostgreSQL port at db_host")
    replica_db_host: str | None = Field(
        default=None,
        description="address voke logs in to for tests while the recorded primary is `replica` (after "
        "a failover; e.g. a Cloud SQL Auth Proxy or tunnel to it; default: its private IP)",
    )
    replica_db_port: int = Field(
        default=5432, ge=1, le=65535, description="PostgreSQL port at replica_db_host"
    )
    canary_secret: OptionalSecretName = Field(
        default=None,
        description="secret (JSON username, password, dbname) the cloud drills' canary logs in with "
        "(default: the first rotation.db_users secret)",
    )
    health_path: str = Field(
        default="/health", description="path of each Cloud Run service's health endpoint"
    )
    timeout: float = Field(default=30.0, gt=0, le=600, description="seconds each API call may take")
    operation_timeout: float = Field(
        default=1800.0, gt=0, description="seconds to wait for a Cloud SQL / Cloud Run operation to finish"
    )
    poll_interval: float = Field(default=5.0, gt=0, le=60, description="seconds between operation polls")

    def serving(self, services: Iterable[str]) -> tuple[str, ...]:
        """Those of SERVICES this environment runs, in their order: a credential's services
        default to the platform's, which an environment may run only some of."""
        return tuple(s for s in services if s in self.services)


class CoverageService(_Model):
    """One service of `voke coverage` (`[coverage.services.NAME]`)."""

    paths: tuple[str, ...] = Field(
        default=(),
        description="path prefixes of its files after remapping (default: NAME/, NAME_WITH_UNDERSCORES/, "
        "services/NAME/, src/NAME_WITH_UNDERSCORES/); the longest matching prefix wins, and no two services "
        "may give the same one",
    )
    target: float | None = Field(default=None, ge=0, le=100, description="percent (default: coverage.target)")
    baseline: float | None = Field(
        default=None, ge=0, le=100, description="percent the trend is compared with"
    )


class CoverageSettings(_Model):
    """`voke coverage` (`[coverage]` in voke.toml, `[tool.voke.coverage]` in pyproject.toml)."""

    target: float = Field(
        default=80.0,
        ge=0,
        le=100,
        description="overall target, and each service's default (unset: coverage.py's [report] fail_under, else 80)",
    )
    baseline: float | None = Field(default=68.0, ge=0, le=100, description="overall baseline (percent)")
    services: dict[str, CoverageService] = Field(
        default_factory=lambda: {
            "admin-service": CoverageService(baseline=70.0),
            "factory-service": CoverageService(baseline=65.0),
            "blockchain-service": CoverageService(baseline=60.0),
        },
        description="services by name; a table here replaces the default three",
    )
    remap: dict[str, str] = Field(
        default_factory=dict,
        description="path prefix -> replacement, applied in order before matching (like coverage.py [paths]); "
        '`*` matches one path segment, e.g. "/home/runner/work/*/*/" = ""',
    )
    precision: int | None = Field(
        default=None,
        ge=0,
        le=MAX_PRECISION,
        description="decimals shown (default: coverage.py's [report] precision, else 0)",
    )
    rule: Literal["auto", "coverage", "coverage-7.16", "strict"] = Field(
        default="auto",
        description="gate rule: coverage (7.17.1: rounded to max(precision, target decimals)), coverage-7.16 "
        "(rounded to precision), strict (unrounded); auto follows the coverage.py version of the input",
    )
    history: Path = Field(
        default=Path(".voke/coverage-history.jsonl"), description="history file of `voke coverage history`"
    )
    _problem: ConfigError | None = PrivateAttr(default=None)

    @field_validator("history")
    @classmethod
    def _expand(cls, value: Path) -> Path:
        return Path(os.path.expanduser(str(value)))

    def service_prefixes(self, name: str) -> tuple[str, ...]:
        """Service NAME's path prefixes: its `paths`, else where a service of that name lives."""
        return self.services[name].paths or default_prefixes(name)

    def check(self) -> None:
        """Raise what `load_config` found wrong with these settings (two services giving one
        prefix): only `voke coverage` reads them, so no other command is refused for it."""
        if self._problem is not None:
            raise self._problem

    def shared_prefix(self) -> tuple[str, str, str, str] | None:
        """(service, its prefix, an earlier service, that one's prefix) for the first prefix two
        services both give (a trailing / aside), else None: the longest matching prefix picks a
        file's service, and two as long as each other leave it to the order of the tables."""
        seen: dict[str, tuple[str, str]] = {}
        for name in self.services:
            for prefix in self.service_prefixes(name):
                first, its = seen.setdefault(normalize_path(prefix).rstrip("/"), (name, prefix))
                if first != name:
                    return name, prefix, first, its
        return None


def default_prefixes(name: str) -> tuple[str, ...]:
    """Where a coverage service's files live when its `paths` are not configured."""
    under = name.replace("-", "_")
    return tuple(dict.fromkeys((f"{name}/", f"{under}/", f"services/{name}/", f"src/{under}/")))


class DrSettings(_Model):
    """`voke dr` and `voke drill` targets and thresholds (`[dr]`; PRODUCT.md's numbers)."""

    rto_seconds: float = Field(default=300, gt=0, description="recovery time objective (default scenario)")
    rto_regional_seconds: float = Field(
        default=600, gt=0, description="RTO for a regional failure (the cloud failover drill)"
    )
    rto_network_seconds: float = Field(default=420, gt=0, description="RTO for a network outage")
    rto_partial_seconds: float = Field(
        default=180, gt=0, description="RTO for partial degradation (its runbook; no drill)"
    )
    rpo_seconds: float = Field(default=60, ge=0, description="recovery point objective")
    max_backup_age_hours: float = Field(
        default=24, gt=0, description="`dr check` fails when the newest backup is older"
    )
    max_lag_seconds: float = Field(
        default=60, gt=0, description="`dr check` fails when replication lags more"
    )
    min_pitr_window_hours: float = Field(
        default=0,
        ge=0,
        description="`dr check` fails when the recoverable window is shorter (the platform keeps 7 days: 168)",
    )
    pitr_retention_days: float = Field(
        default=7,
        gt=0,
        le=3650,
        description="the platform's PITR retention: `voke dr prune` keeps the local environment restorable this far back",
    )
    prune_after_backup: bool = Field(
        default=True,
        description="`voke dr backup` prunes what the retention no longer needs, as Cloud SQL does",
    )
    archive_grace_seconds: float = Field(
        default=60,
        ge=0,
        description="a WAL segment may wait archive_timeout plus this before archiving is stale",
    )
    lag_probe_seconds: float = Field(
        default=2, gt=0, le=60, description="how long a heartbeat probe waits for the replica to replay it"
    )
    network_outage_seconds: float = Field(
        default=5,
        gt=0,
        le=3600,
        description="how long the network drill freezes the primary (as --outage, at most 1 h)",
    )
    canary_seconds: float | None = Field(
        default=None,
        ge=0.1,  # shorter, a pitr drill's canary may commit nothing on one side of its target
        le=600,
        description="how long a drill's canary writes before its fault (as --canary-seconds; "
        "unset: 1 s on the local environment, 5 s on a cloud one)",
    )
    runbooks_dir: Path | None = Field(
        default=None, description="directory of the DR runbooks (default: the runbooks voke ships with)"
    )


class DbUserSettings(_Model):
    """A managed database login (`[rotation.db_users.NAME]`)."""

    secret: SecretName = Field(
        default="db-app", description="secret holding the credential (JSON: username, password, host...)"
    )
    strategy: Literal["alternating", "single"] = Field(
        default="alternating", description="alternating: two login roles in one owner role; single: one role"
    )
    roles: tuple[str, ...] = Field(
        default=("app_a", "app_b"),
        min_length=1,
        max_length=2,
        description="the login roles: two distinct ones for alternating; single needs one (of two, uses the first)",
    )
    owner: str = Field(default="app_owner", description="NOLOGIN role that owns the objects both logins use")
    database: str = Field(default="voketag", description="database the credential is for")
    services: tuple[str, ...] = Field(default=DEFAULT_SERVICES, description="services that read this secret")

    @field_validator("roles")
    @classmethod
    def _roles_fit_the_strategy(cls, roles: tuple[str, ...], info: ValidationInfo) -> tuple[str, ...]:
        if info.data.get("strategy") == "alternating" and (len(roles) != 2 or roles[0] == roles[1]):
            raise ValueError("the alternating strategy needs two distinct login roles")
        return roles


class RotationSchedule(_Model):
    """When each kind of credential is due (cron, UTC)."""

    db_password: str = Field(default="0 2 1 * *", description="DB passwords: monthly, 1st, 02:00")
    api_key: str = Field(default="0 2 1 1,4,7,10 *", description="API keys: quarterly")
    sa_key: str = Field(default="0 2 1 1,4,7,10 *", description="service-account keys: quarterly")
    jwt: str = Field(default="0 2 1 1 *", description="JWT signing keys: yearly")

    @field_validator("db_password", "api_key", "sa_key", "jwt")
    @classmethod
    def _cron(cls, value: str) -> str:
        from voketag_ops.core.rotation import validate_cron

        validate_cron(value)
        return value


class ApiKeySettings(_Model):
    """A third-party API key (`[rotation.api_keys.NAME]`, NAME = stripe | auth0 | maps | sendgrid)."""

    provider: Literal["stripe", "auth0", "maps", "sendgrid"] = Field(description="the provider's API shape")
    secret: SecretName = Field(description="secret holding the key (JSON)")
    endpoint: str | None = Field(default=None, description="provider API base URL (default: the provider's)")
    admin_secret: OptionalSecretName = Field(
        default=None, description="secret holding the credential voke uses to call the provider's admin API"
    )
    options: dict[str, str] = Field(
        default_factory=dict, description="provider specifics: auth0 client_id/domain, maps project, ..."
    )
    services: tuple[str, ...] = Field(default=(), description="services that read this secret")


class JwtSettings(_Model):
    """The JWT signing keyring (`[rotation.jwt]`)."""

    secret: SecretName = Field(
        default="jwt-signing", description="secret holding the keyring (next/current/previous)"
    )
    algorithm: Literal["ES256", "RS256", "EdDSA"] = Field(default="ES256", description="signing algorithm")
    max_token_lifetime_seconds: int = Field(default=3600, ge=60, description="the old key stays this long")
    verifier_refresh_seconds: int = Field(default=300, ge=0, description="publish this long before signing")
    services: tuple[str, ...] = Field(default=(), description="services that sign or verify with the keyring")


class SaKeySettings(_Model):
    """A Google service-account key (`[rotation.sa_keys.NAME]`; cloud environments only)."""

    service_account: str = Field(min_length=3, description="the service account's email")
    secret: SecretName = Field(description="secret holding the key file (JSON)")
    services: tuple[str, ...] = Field(default=(), description="services that read this secret")


class RotationSettings(_Model):
    """`voke rotate` (`[rotation]`)."""

    db_users: dict[str, DbUserSettings] = Field(
        default_factory=lambda: {"app": DbUserSettings()}, description="managed database logins by name"
    )
    schedule: RotationSchedule = Field(default_factory=RotationSchedule)
    api_keys: dict[str, ApiKeySettings] = Field(default_factory=dict, description="managed API keys by name")
    sa_keys: dict[str, SaKeySettings] = Field(
        default_factory=dict, description="managed service-account keys by name (`voke rotate sa-key NAME`)"
    )
    jwt: JwtSettings = Field(default_factory=JwtSettings, description="the JWT signing keyring")
    notify_webhook: str | None = Field(
        default=None,
        description="Slack-compatible webhook told of each rotation's outcome (no secret values)",
    )
    password_length: int = Field(default=32, ge=16, le=128, description="generated DB password length")
    test_attempts: int = Field(default=3, ge=1, le=20, description="tries of the test step")
    test_interval: float = Field(default=5.0, ge=0, le=300, description="seconds between test tries")
    lease_seconds: int = Field(
        default=600,
        ge=10,
        description="how long a rotation's lock lease lasts (renewed while a step runs)",
    )
    db_timeout: float = Field(
        default=30.0,
        gt=0,
        le=3600,
        description="seconds a database statement of a rotation (ALTER ROLE, a login's probe) may wait, "
        "on a lock too, before voke gives it up",
    )
    health_timeout: float = Field(
        default=20.0, ge=1, description="seconds for a new service instance to be healthy"
    )
    keep_versions: int = Field(default=3, ge=1, description="newest enabled versions cleanup never touches")
    disable_after_hours: float = Field(default=24, ge=0, description="disable superseded versions after this")
    destroy_after_days: float = Field(default=30, ge=0, description="destroy disabled versions after this")
    _problem: ConfigError | None = PrivateAttr(default=None)

    def check_local(self) -> None:
        """Raise what `load_config` found wrong for the local platform (a service two logins
        name): only what runs the local platform reads it, so a file whose cloud services read
        several secrets still serves its cloud environments and `voke coverage` or `config show`."""
        if self._problem is not None:
            raise self._problem


class IngestSettings(_Model):
    """`voke ingest` (`[ingest]` in voke.toml)."""

    max_file_bytes: int = Field(
        default=100_000_000,
        ge=1,
        description="largest batch file accepted, in bytes (checked before reading it)",
    )
    max_errors: int = Field(
        default=100,
        ge=0,
        le=1_000_000,
        description="problems listed per rejected file, at most 1,000,000 (all are counted)",
    )
    require_final_newline: bool = Field(
        default=True, description="reject a last row without a line break (an upload cut mid-row)"
    )
    lock_timeout: float = Field(
        default=600.0,
        ge=0,
        le=86_400,
        description="seconds a load waits for another load of the same database (at most a day)",
    )


class ChainSettings(_Model):
    """Where the hash chain and its anchors live (`[chain]`)."""

    store: Literal["postgres", "file"] = Field(
        default="postgres",
        description="postgres: the local environment's database (started on demand); "
        "file: VOKE_HOME/chain/chain.json",
    )
    database: str = Field(
        default="voketag",
        min_length=1,
        max_length=63,
        description="database on the local leader that holds the chain (store = postgres)",
    )
    max_import_bytes: int = Field(
        default=250_000_000,
        ge=1,
        description="largest document `chain import` reads, in bytes (~300,000 anchored roots)",
    )
    min_difficulty: int = Field(
        default=DEFAULT_DIFFICULTY,
        ge=0,
        le=64,
        description="leading zero bits every block hash must have for `chain validate`, `audit verify` and "
        "`chain import`; `chain anchor run` mines at this by default and refuses less",
    )


class Settings(_Model):
    """Effective configuration."""

    # Where each key of the named environments came from (set by load_config), for their errors.
    _environment_sources: dict[str, str] = PrivateAttr(default_factory=dict)

    env: str = Field(default="local", description="environment commands act on (`local` or a named one)")
    log_format: Literal["auto", "human", "json"] = Field(
        default="auto", description="stderr log format; auto = human on a terminal, JSON lines otherwise"
    )
    log_level: Literal["debug", "info", "warning", "error"] = Field(
        default="warning", description="stderr log level"
    )
    services: tuple[str, ...] = Field(
        default=DEFAULT_SERVICES,
        description="the platform's services: the default of rotation.db_users.NAME.services and "
        "environments.NAME.services",
    )
    local: LocalSettings = Field(default_factory=LocalSettings)
    coverage: CoverageSettings = Field(default_factory=CoverageSettings)
    ingest: IngestSettings = Field(default_factory=IngestSettings)
    chain: ChainSettings = Field(default_factory=ChainSettings)
    dr: DrSettings = Field(default_factory=DrSettings)
    rotation: RotationSettings = Field(default_factory=RotationSettings)
    environments: dict[str, dict[str, Any]] = Field(
        default_factory=dict, description="named cloud environments, validated when used"
    )

    @model_validator(mode="after")
    def _platform_services(self) -> Settings:
        """A database login that names no services of its own is read by the platform's."""
        users = {
            name: user
            if "services" in user.model_fields_set
            else user.model_copy(update={"services": self.services})
            for name, user in self.rotation.db_users.items()
        }
        if users != self.rotation.db_users:  # (frozen: replaced, not changed)
            object.__setattr__(self, "rotation", self.rotation.model_copy(update={"db_users": users}))
        return self

    @field_validator("environments")
    @classmethod
    def _environment_names(cls, value: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
        # the name is written as a Cloud SQL label value (voke-env=NAME) and a metric label:
        # GCP allows lowercase letters, digits, - and _ (<= 63); a lowercase letter first
        # keeps it valid as a label key too
        for name in value:
            if not ENV_NAME.fullmatch(name):
                raise ValueError(
                    f"[environments.{name}]: an environment name is used as a Google Cloud label: "
                    "a lowercase letter, then lowercase letters, digits, - or _, at most 63 characters"
                )
        return value

    def environment(self, name: str) -> GcpEnvironment:
        """Validate and return the named cloud environment."""
        if name == "local":
            raise ConfigError("`local` is the embedded environment, not a cloud one")
        raw = self.environments.get(name)
        if raw is None:
            known = ", ".join(sorted(["local", *self.environments])) or "local"
            raise ConfigError(f"unknown environment {name!r} (known: {known})")
        try:
            return GcpEnvironment.model_validate({"services": self.services, **raw})
        except ValidationError as exc:
            key, msg = _first_error(exc)
            dotted = f"environments.{name}.{key}"
            source = self._environment_source(name, dotted)
            at = _position(Path(source), dotted, msg) if source.endswith(".toml") else ""
            raise ConfigError(f"{source}: {dotted}: {msg}{at}") from None

    def _environment_source(self, name: str, dotted: str) -> str:
        """Where DOTTED, a key of environment NAME, came from, or the table holding it (a table
        has a source of its own when it has no keys: `_merge`); a key it lacks is blamed on where
        the environment came from, that of its first key."""
        table, key = f"environments.{name}", dotted
        prefix = table + "."
        while key == table or key.startswith(prefix):
            if key in self._environment_sources:
                return self._environment_sources[key]
            key = key.rpartition(".")[0]
        return next(
            (v for k, v in self._environment_sources.items() if k.startswith(prefix)), "configuration"
        )


@dataclass(frozen=True)
class LoadedConfig:
    """Settings plus where each value came from."""

    settings: Settings
    sources: dict[str, str] = field(default_factory=dict)  # dotted key -> "default" | file | env var | flag
    file: Path | None = None

    def source_of(self, key: str) -> str:
        while key:
            if key in self.sources:
                return self.sources[key]
            key = key.rpartition(".")[0]
        return "default"


# Paths a configuration file may give; a relative one is relative to the file, so one voke.toml
# names one environment from whatever directory voke runs in (it followed the working directory).
FILE_RELATIVE_PATHS = (
    ("local", "home"),
    ("local", "pg_bin"),
    ("coverage", "history"),
    ("dr", "runbooks_dir"),
)


def _anchor_paths(data: dict[str, Any], base: Path) -> None:
    for section, key in FILE_RELATIVE_PATHS:
        table = data.get(section)
        value = table.get(key) if isinstance(table, dict) else None
        if isinstance(value, str) and value and not value.startswith("~") and not Path(value).is_absolute():
            table[key] = str(base.absolute() / value)  # type: ignore[index]


def find_config_file(start: Path) -> Path | None:
    """The nearest voke.toml, or pyproject.toml with a [tool.voke] table, from START upwards."""
    for directory in (start, *start.parents):
        candidate = directory / CONFIG_FILE
        if os.path.lexists(candidate):  # the nearest one, usable or not: a parent's is not used instead
            _check_config_file(candidate, hint=_NEAREST_HINT)
            return candidate
        pyproject = directory / "pyproject.toml"
        if pyproject.is_file():
            try:
                tool = _read_toml(pyproject).get("tool")
            except ConfigError:
                # Unreadable: ours only if it has a [tool.voke] table, whose error must not pass unseen.
                with contextlib.suppress(OSError):
                    if _TOOL_VOKE.search(pyproject.read_bytes()):
                        raise
                continue
            if isinstance(tool, dict) and "voke" in tool:
                return pyproject
    return None


_TOOL_VOKE = re.compile(rb"^[ \t]*\[+[ \t]*tool[ \t]*\.[ \t]*voke\b", re.M)


def load_config(
    *,
    config_path: Path | None = None,
    environ: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
    cwd: Path | None = None,
) -> LoadedConfig:
    """Layer the sources and validate. Raises ConfigError naming key and source."""
    environ = os.environ if environ is None else environ
    from voketag_ops.adapters.local.postgres import listen_ports

    # A share that is no I/N, or keeps too few of this host's ports: refused before a command starts a server
    listen_ports(environ.get(PORT_SHARE_ENV, ""))
    if config_path is None and environ.get("VOKE_CONFIG") == "":  # as a Path it would be "."
        raise ConfigError(
            "VOKE_CONFIG is empty: name a configuration file, or unset it for the nearest voke.toml"
        )
    explicit = config_path or (Path(environ["VOKE_CONFIG"]) if environ.get("VOKE_CONFIG") else None)
    if explicit is not None:
        _check_config_file(explicit)
        path: Path | None = explicit
    else:
        from voketag_ops.files import working_directory

        hint = "run voke from an existing directory, or pass --config FILE (or set VOKE_CONFIG)"
        path = find_config_file(cwd or working_directory("voke.toml is looked for from it", hint=hint))

    merged: dict[str, Any] = {}
    sources: dict[str, str] = {}
    if path is not None:
        data = _read_toml(path)
        if path.name == "pyproject.toml":
            tool = data.get("tool", {})
            table = tool.get("voke", {}) if isinstance(tool, dict) else None
            if not isinstance(table, dict):
                raise ConfigError(f"{path}: [tool.voke] must be a table")
            data = table
        if (deep := _too_deep(data)) is not None:
            raise ConfigError(f"{path}: {deep}: {_TOO_DEEP}{_position(path, deep, _TOO_DEEP)}")
        _anchor_paths(data, path.parent)
        _merge(merged, data, sources, str(path))

    env_layer: dict[str, Any] = {}
    env_sources: dict[str, str] = {}
    given: dict[tuple[str, ...], tuple[Any, str]] = {}  # key -> the value a variable gives, and its name
    for name, value in environ.items():
        if not name.startswith("VOKE_"):
            continue
        key = ENV_VARS.get(name)
        if key is None and "__" in name:
            key = name[len("VOKE_") :].lower().replace("__", ".")
        if key is None:
            continue
        if value.lstrip().startswith(("[", "{")) and _takes_collection(key):  # written as JSON
            try:
                value = json.loads(value)
            except ValueError as exc:
                raise ConfigError(f"env {name}: a list or table must be JSON ({exc})") from None
            except RecursionError:
                raise ConfigError(f"env {name}: {_TOO_DEEP}") from None
        if _too_deep(value, key.count(".")) is not None:
            raise ConfigError(f"env {name}: {_TOO_DEEP}")
        if isinstance(value, str):
            value = EnvText(value)
        # Key by key: a table given as JSON and one of its keys given by another variable are
        # merged, whichever comes first in os.environ
        for parts, leaf in _leaves(tuple(key.split(".")), value):
            if parts in given and not _same_value(given[parts][0], leaf):
                # VOKE_HOME and VOKE_LOCAL__HOME: the later in os.environ won, an order nobody sets on purpose
                one, other = sorted((given[parts][1], name), key=lambda n: (n not in ENV_VARS, n))
                raise ConfigError(
                    f"env {one} and env {other}: both set {'.'.join(parts)}, to different values",
                    hint="unset one of them, or give both the same value",
                )
            given[parts] = leaf, name
            try:
                _set_at(env_layer, parts, leaf)
            except TypeError:
                raise ConfigError(
                    f"env {name}: sets {key}, under a key another VOKE_ variable gives a value"
                ) from None
            env_sources[".".join(parts)] = f"env {name}"
    _merge(merged, env_layer, sources, None, env_sources)

    flag_layer: dict[str, Any] = {}
    for key, value in (overrides or {}).items():
        if value is not None:
            _set_at(flag_layer, tuple(key.split(".")), value)
            sources[key] = "flag"
    _merge(merged, flag_layer, sources, "flag")

    try:
        settings = Settings.model_validate(merged)
    except ValidationError as exc:
        key, msg = _first_error(exc)
        where = LoadedConfig(Settings(), sources).source_of(key)
        # A whole table refused (environments), or a key missing from one: where its keys came from.
        if where == "default":
            bad = (
                [n for n in merged.get(key) or {} if not ENV_NAME.fullmatch(n)]
                if key == "environments"
                else []
            )
            table = _table_of(key, msg)
            prefixes = tuple(f"{key}.{n}." for n in bad) or (f"{table}.",)
            # (a table of no keys, `[environments.NAME]`, has a source of its own: `_merge`)
            where = next((v for k, v in sources.items() if f"{k}.".startswith(prefixes)), where)
        if where == "flag":  # a bad flag value is a usage error (exit 2), as any bad flag is
            raise UsageError(f"--{key.replace('_', '-')}: {msg}") from None
        at = _position(path, key, msg) if path is not None and where == str(path) else ""
        raise ConfigError(f"{where}: {key}: {msg}{at}") from None
    if settings.env != "local" and settings.env not in settings.environments:
        # Every command, not only the cloud ones: an ingest or env command would otherwise act
        # on the local environment and audit it under the name given.
        known = ", ".join(sorted(["local", *settings.environments]))
        where = LoadedConfig(settings, sources).source_of("env")
        at = _position(path, "env", "") if path is not None and where == str(path) else ""
        raise ConfigError(f"{where}: env: unknown environment {settings.env!r} (known: {known}){at}")
    if read_twice := _service_reading_two_logins(settings):  # raised by the local platform (`check_local`)
        settings.rotation._problem = _service_reading_two_logins_error(read_twice, settings, sources, path)
    if shared := settings.coverage.shared_prefix():  # raised by `voke coverage` alone (`check`)
        settings.coverage._problem = _shared_prefix_error(shared, settings.coverage, sources, path)
    if "services" in sources:  # a login that names no services of its own has the platform's
        for name, user in settings.rotation.db_users.items():
            key = f"rotation.db_users.{name}.services"
            if key not in sources and user.services == settings.services:
                sources[key] = f"services ({sources['services']})"
    loaded = LoadedConfig(settings=settings, sources=sources, file=path)
    settings._environment_sources.update((k, v) for k, v in sources.items() if k.startswith("environments."))
    _LOADED.pop(settings.local.home, None)
    _LOADED[settings.local.home] = settings
    return loaded


def _shared_prefix_error(
    shared: tuple[str, str, str, str], coverage: CoverageSettings, sources: dict[str, str], path: Path | None
) -> ConfigError:
    """Two coverage services giving one prefix, blamed on the later one's `paths` (or its table,
    when it has the default ones) where they were set, with the line and column in a file."""
    name, prefix, first, its = shared
    table = f"coverage.services.{name}"
    key = f"{table}.paths" if coverage.services[name].paths else table
    where, at = _blamed(key, table, sources, path)
    whose = "" if key.endswith(".paths") else "its default "
    spelled = "" if its == prefix else f" ({its!r})"
    return ConfigError(
        f"{where}: {key}: {whose}prefix {prefix!r} is also service {first}'s{spelled}: a file under it "
        f"would belong to both services {first} and {name}{at}",
        hint="give each prefix to one service (a longer one, a subdirectory's, takes its files from a "
        "shorter one: the longest matching prefix wins)",
    )


def _blamed(key: str, table: str, sources: dict[str, str], path: Path | None) -> tuple[str, str]:
    """Where KEY was set (else the first key of TABLE that was, else the file), and its place
    "(at line L, column C)" when that is the file PATH."""
    where = sources.get(key) or next(
        (v for k, v in sources.items() if k.startswith(table + ".")), str(path) if path else "configuration"
    )
    return where, _position(path, key, "") if path is not None and where == str(path) else ""


def _service_reading_two_logins(settings: Settings) -> tuple[str, str, str] | None:
    """(login, service, an earlier login) for the first service two `rotation.db_users` logins
    both name, else None: a local service reads one database credential (LocalPlatform.consumers),
    and would keep the later login's alone."""
    seen: dict[str, str] = {}
    for name, user in settings.rotation.db_users.items():
        for service in user.services:
            first = seen.setdefault(service, name)
            if first != name:
                return name, service, first
    return None


def _service_reading_two_logins_error(
    read_twice: tuple[str, str, str], settings: Settings, sources: dict[str, str], path: Path | None
) -> ConfigError:
    """Two logins naming one service, blamed on the later one's `services` (or its table, when it
    has the platform's) where they were set, with the line and column in a file."""
    name, service, first = read_twice
    table = f"rotation.db_users.{name}"
    key = f"{table}.services" if f"{table}.services" in sources else table
    where, at = _blamed(key, table, sources, path)
    whose = "" if key.endswith(".services") else "no services named, so the platform's: "
    secret = settings.rotation.db_users[first].secret
    return ConfigError(
        f"{where}: {key}: {whose}service {service!r} already reads login {first}'s secret {secret!r}, "
        f"and a local service reads one database credential{at}",
        hint="give each service one login in the local environment (a cloud environment's services "
        "may read several: run with --env NAME)",
    )


# The settings each configured VOKE_HOME was last loaded with in this process, newest last.
_LOADED: dict[Path | None, Settings] = {}


def settings_loaded_for(home: Path) -> Settings | None:
    """The settings this process last loaded for VOKE_HOME HOME, if any: for code that is
    handed only a home (the audit log anchoring its checkpoints, ingest's anchor requests)."""
    from voketag_ops.adapters.local.environment import resolve_home

    for configured, settings in reversed(_LOADED.items()):
        with contextlib.suppress(ConfigError):  # a default home that cannot be named is not HOME
            if resolve_home(configured) == home:
                return settings
    return None


def effective_items(loaded: LoadedConfig) -> list[tuple[str, Any, str]]:
    """(dotted key, value with secrets redacted, source) for every effective leaf value."""
    rows: list[tuple[str, Any, str]] = []

    def walk(prefix: str, value: Any) -> None:
        if isinstance(value, dict) and value:
            for k, v in value.items():
                walk(f"{prefix}.{k}" if prefix else str(k), v)
            return
        leaf = prefix.rpartition(".")[2]
        # A schedule's keys name credentials but hold cron times; an empty value hides nothing.
        secret = value not in (None, "", [], {}) and not prefix.startswith("rotation.schedule.")
        shown = "***" if (secret and _SECRET_KEY.search(leaf)) else value
        if isinstance(shown, str) and shown != "***":
            shown = _URL_PASSWORD.sub(r"\1***@", shown)
        rows.append((prefix, shown, loaded.source_of(prefix)))

    walk("", loaded.settings.model_dump(mode="json"))
    return rows


_NEAREST_HINT = (
    "voke reads the nearest voke.toml from the current directory upwards: make this one a file, "
    "remove it, or pass --config FILE"
)


def _check_config_file(path: Path, *, hint: str | None = None) -> None:
    """ConfigError unless PATH (`--config`, VOKE_CONFIG, the nearest voke.toml) is a regular
    file, saying what it is instead (looked at, not opened: opening a pipe would wait for a writer)."""
    try:
        mode = path.stat().st_mode
    except (FileNotFoundError, NotADirectoryError):
        if path.is_symlink():
            raise ConfigError(f"configuration file {path}: a symlink to nothing", hint=hint) from None
        raise ConfigError(f"configuration file not found: {path}", hint=hint) from None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise ConfigError(f"configuration file {path}: a symlink loop", hint=hint) from None
        raise ConfigError(f"configuration file {path}: cannot read: {exc.strerror}", hint=hint) from None
    if stat.S_ISDIR(mode):
        raise ConfigError(
            f"configuration file {path}: is a directory; name a voke.toml or pyproject.toml", hint=hint
        )
    if not stat.S_ISREG(mode):
        raise ConfigError(f"configuration file {path}: not a regular file (a pipe or a device)", hint=hint)


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as fh:
            return tomllib.load(fh)
    except tomllib.TOMLDecodeError as exc:
        # tomllib messages already carry "(at line L, column C)".
        raise ConfigError(f"{path}: invalid TOML: {exc}") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: invalid TOML: not UTF-8 (byte {exc.start})") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror}") from None
    except RecursionError:  # tomllib parses nested arrays and inline tables recursively
        raise ConfigError(f"{path}: invalid TOML: {_TOO_DEEP}") from None
    except ValueError as exc:  # an integer of more digits than Python converts (4300)
        at = _long_integer(path)
        where = f" (at line {at[0]}, column {at[1]})" if at else ""
        raise ConfigError(f"{path}: invalid TOML: {str(exc).split(';')[0]}{where}") from None


# Tables and lists within each other: voke's own settings go 5 deep (rotation.api_keys.NAME.options.KEY).
MAX_DEPTH = 32
_TOO_DEEP = f"nested more than {MAX_DEPTH} tables or lists deep"
_INTEGER = re.compile(r"(?<![\w.])[+-]?[0-9][0-9_]*")


def _too_deep(value: Any, depth: int = 0) -> str | None:
    """The dotted key of the first table or list in VALUE (itself DEPTH deep) nested more than
    MAX_DEPTH deep, or None. Walked without recursion: merging and validating recurse."""
    stack: list[tuple[Any, str, int]] = [(value, "", depth)]
    while stack:
        item, key, level = stack.pop()
        if isinstance(item, dict | list) and level >= MAX_DEPTH:
            return key or "(top level)"
        if isinstance(item, dict):
            stack.extend((v, f"{key}.{k}" if key else str(k), level + 1) for k, v in item.items())
        elif isinstance(item, list):
            stack.extend((v, key, level + 1) for v in item)
    return None


def _long_integer(path: Path) -> tuple[int, int] | None:
    """Line and column of the first integer in PATH longer than Python converts, or None."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return None
    limit = sys.get_int_max_str_digits()
    for found in _INTEGER.finditer(text):
        if limit and sum(c.isdigit() for c in found.group()) > limit:
            line = text.count("\n", 0, found.start()) + 1
            return line, found.start() - (text.rfind("\n", 0, found.start()) + 1) + 1
    return None


def _merge(
    target: dict[str, Any],
    layer: Mapping[str, Any],
    sources: dict[str, str],
    source: str | None,
    per_key: Mapping[str, str] | None = None,
    prefix: str = "",
) -> None:
    for key, value in layer.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, Mapping):
            if key in target and not isinstance(target[key], dict):
                # A later layer sets keys under it: the earlier value (`ingest = 5`) is no table.
                where = sources.get(dotted, "default")
                kind = {bool: "a boolean", int: "a number", float: "a number", str: "a string"}.get(
                    type(target[key]), "a list"
                )  # (not the value itself: it may be a secret)
                raise ConfigError(f"{where}: {dotted}: expected a table, got {kind}")
            target.setdefault(key, {})
            _merge(target[key], value, sources, source, per_key, dotted + ".")
            if not target[key]:  # a table of no keys (`[environments.qa]`): its errors name where it is
                sources[dotted] = _source_for(dotted, source, per_key)
            continue
        target[key] = value
        sources[dotted] = _source_for(dotted, source, per_key)


def _takes_collection(dotted: str) -> bool:
    """Whether the setting at DOTTED is a list or a table (a string that starts with [ or {
    is then JSON); False for a plain value, or a key the model does not know (it says so)."""
    import types
    import typing

    def unwrapped(kind: Any) -> Any:  # X | None -> X
        while typing.get_origin(kind) in (typing.Union, types.UnionType):
            kind = next((a for a in typing.get_args(kind) if a is not type(None)), None)
        return kind

    kind: Any = Settings
    for part in dotted.split("."):
        kind = unwrapped(kind)
        if isinstance(kind, type) and issubclass(kind, BaseModel):
            field = kind.model_fields.get(part)
            if field is None:
                return False
            kind = field.annotation
        elif typing.get_origin(kind) is dict:
            kind = typing.get_args(kind)[1]
        else:
            return False
    kind = unwrapped(kind)
    return typing.get_origin(kind) in (list, tuple, dict, set) or (
        isinstance(kind, type) and issubclass(kind, BaseModel)
    )


def _source_for(dotted: str, source: str | None, per_key: Mapping[str, str] | None) -> str:
    """The source of DOTTED: its own entry in PER_KEY (every key a VOKE_* variable sets, each
    of a table it gives as JSON too), else SOURCE."""
    return (per_key or {}).get(dotted) or source or "default"


def _set_at(target: dict[str, Any], path: tuple[str, ...], value: Any) -> None:
    """Set the key at PATH in TARGET; TypeError if a key on the way already holds a value, or
    keys are already set under it (an empty table adds none)."""
    *parents, leaf = path
    node = target
    for part in parents:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise TypeError(part)
    if isinstance(node.get(leaf), dict):
        if value == {}:
            return
        raise TypeError(leaf)
    node[leaf] = value


def _leaves(path: tuple[str, ...], value: Any) -> Iterator[tuple[tuple[str, ...], Any]]:
    """(path, value) of every key VALUE, the value at PATH, sets: its own, or those of a table
    (an empty one sets itself). A path, not a dotted key: a key may hold a dot (`coverage.remap`)."""
    if isinstance(value, dict) and value:
        for key, item in value.items():
            yield from _leaves((*path, key), item)
    else:
        yield path, value


def _same_value(one: Any, other: Any) -> bool:
    """Whether two VOKE_* variables give one key the same value, as the settings will read them:
    a variable's text `5432` is the number a JSON table gives as 5432, but not the JSON string
    "5432" (never a number: `_Model._typed_as_written`); a text that is no JSON number, boolean or
    null is read as itself."""

    def read(value: Any) -> Any:
        if isinstance(value, EnvText):
            with contextlib.suppress(ValueError, RecursionError):
                parsed = json.loads(value)
                if not isinstance(parsed, str):
                    return parsed
            return str(value)
        return value

    first, second = read(one), read(other)
    return type(first) is type(second) and first == second


_TABLE = re.compile(r"^\s*\[\[?\s*([^\]]+?)\s*\]\]?\s*(#.*)?$")
_KEY = re.compile(r"^\s*([A-Za-z0-9_.\-\"' ]+?)\s*=\s*")


def _locate_key(path: Path, key: str, *, value: bool = True) -> tuple[int, int] | None:
    """Line and column (1-based) of KEY's VALUE (else the key itself) in the TOML file PATH,
    for the forms people write (`[table]` then `key = value`, or dotted keys); None when it
    cannot be told."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError):
        return None
    prefix = "tool.voke." if path.name == "pyproject.toml" else ""
    wanted = prefix + key
    table = ""
    for number, line in enumerate(lines, start=1):
        if header := _TABLE.match(line):
            table = header.group(1).replace('"', "").replace("'", "").replace(" ", "")
            if table == wanted:  # a whole table refused (an environment)
                return number, line.index("[") + 1
            continue
        if found := _KEY.match(line):
            name = found.group(1).replace('"', "").replace("'", "").replace(" ", "")
            full = f"{table}.{name}" if table else name
            if full == wanted or wanted.startswith(full + "."):
                # a key of an inline table on this line (`endpoints = { run = "..." }`): its own place
                inner = re.compile(rf"[{{,]\s*((['\"]?){re.escape(wanted[len(full) + 1 :])}\2)\s*=\s*")
                if full != wanted and (within := inner.search(line, found.end())):
                    return number, (within.end() if value else within.start(1)) + 1
                return number, (found.end() if value else len(line) - len(line.lstrip())) + 1
    return None


def _position(path: Path, key: str, msg: str) -> str:
    """The "(at line L, column C)" suffix for KEY in PATH (its value; the key itself when unknown;
    the table that lacks it when it is required), or ""."""
    at = _locate_key(path, key, value=not msg.startswith("unknown key"))
    if at is None and msg == _MISSING:
        at = _locate_key(path, _table_of(key, msg), value=False)
    return f" (at line {at[0]}, column {at[1]})" if at else ""


_MISSING = "Field required"  # pydantic's message for a required key not given


def _table_of(key: str, msg: str) -> str:
    """The table to blame for KEY's error MSG: the one KEY is missing from, else KEY itself."""
    return (key.rpartition(".")[0] or key) if msg == _MISSING else key


def _first_error(exc: ValidationError) -> tuple[str, str]:
    err = exc.errors()[0]
    key = ".".join(str(part) for part in err["loc"] if part != "[key]")  # (a table's key refused)
    msg = "unknown key" if err["type"] == "extra_forbidden" else err["msg"]
    return key, msg.removeprefix("Value error, ")  # pydantic's wording around our own ValueError
