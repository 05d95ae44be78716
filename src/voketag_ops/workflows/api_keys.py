"""Third-party API keys as Credential kinds for the rotation engine.

Three shapes, after how each provider lets a key change:
- Auth0 (`single-phase`): voke generates the client secret, stores it as `pending`,
  then sets it with the Management API (a known value, so a rerun re-applies the same
  one). The old secret stops working at once, so services are deployed right after.
- SendGrid and Google Maps (`additive`): the provider mints the key beside the old one,
  named after the rotation, and it is stored at once. A rerun finds what an earlier,
  killed run minted (Maps: adopts it; SendGrid cannot show a key twice: deletes it
  and mints again), so there is never more than one new key. The old key keeps working
  until `voke rotate cleanup` deletes it, a day after the new one became current.
- Stripe (`assisted`): Stripe has no API that creates secret keys. The operator rolls
  the key in the Dashboard and pastes the new one; voke verifies it with a real call
  before storing it.

Every key value read or made here is registered with `redact`; messages carry key
ids and names only.
"""

from __future__ import annotations

import json
import secrets
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Any

from voketag_ops import redact
from voketag_ops.config import ApiKeySettings, RotationSettings
from voketag_ops.errors import (
    AuthenticationError,
    ConfigError,
    EtagMismatchError,
    NotFoundError,
    PreconditionError,
    SecretError,
    UsageError,
    ValidationError,
)
from voketag_ops.workflows.credentials import MadeBeside

SECRET_FIELDS = ("api_key", "client_secret", "access_token", "token")


def _register(value: dict[str, Any] | None) -> None:
    for key in SECRET_FIELDS:
        if value and value.get(key):
            redact.register(str(value[key]))


def minted_name(rotation_id: str) -> str:
    """The provider-side name of the key a rotation mints (how a rerun finds it)."""
    return f"voke-{rotation_id}"


def maps_key_id(rotation_id: str) -> str:
    """A Google API key id ([a-z][a-z0-9-]{0,61}[a-z0-9]) derived from the rotation id."""
    return f"voke-{rotation_id.lower()}"


class ApiKeyCredential(MadeBeside, ABC):
    """What every API-key kind shares: settings, the secret, the admin credential."""

    provider = ""
    strategy = ""
    schedule = "api_key"
    default_endpoint = ""
    required_options: tuple[str, ...] = ()

    def __init__(
        self,
        name: str,
        settings: ApiKeySettings,
        store: Any,
        *,
        timeout: float = 10.0,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.name = name
        self.settings = settings
        self.store = store
        self.secret = settings.secret
        self.services = tuple(settings.services)
        self.kind = f"api-key:{settings.provider}"
        self.timeout = timeout
        self.sleep = sleep

    # -- configuration -----------------------------------------------------------------------
    @property
    def endpoint(self) -> str:
        return self.settings.endpoint or self.default_endpoint

    def option(self, key: str, default: str | None = None) -> str:
        value = self.settings.options.get(key, default)
        if not value:
            raise ValidationError(f"rotation.api_keys.{self.name}.options.{key} is not set")
        return value

    def validate(self) -> None:
        """Raise ConfigError when the configuration cannot work (checked before the lock)."""
        for key in self.required_options:
            if not self.settings.options.get(key):
                raise ConfigError(
                    f"rotation.api_keys.{self.name}.options.{key} is required for {self.provider}"
                )
        if not self.endpoint:
            raise ConfigError(f"rotation.api_keys.{self.name}.endpoint is required for {self.provider}")
        if self.settings.admin_secret:
            try:
                meta = self.store.get(self.settings.admin_secret)
            except NotFoundError:
                raise ConfigError(
                    f"rotation.api_keys.{self.name}.admin_secret: secret {self.settings.admin_secret!r} does not exist"
                ) from None
            if "current" not in meta.aliases:
                raise ConfigError(f"admin secret {self.settings.admin_secret!r} has no current version")

    def precheck(self, meta: Any, *, dry_run: bool) -> None:
        """Before the lock: the configuration is usable."""
        self.validate()

    # -- stored values ----------------------------------------------------------------------------
    def _read(self, secret: str) -> dict[str, Any]:
        raw = self.store.access(secret, "current")
        try:
            value = json.loads(raw)
        except ValueError:
            value = None
        if not isinstance(value, dict):  # a bare key pasted into the secret
            value = {"api_key": raw.decode("utf-8").strip()}
        _register(value)
        return value

    def admin(self) -> dict[str, Any] | None:
        """The admin secret's current value, when one is configured."""
        return self._read(self.settings.admin_secret) if self.settings.admin_secret else None

    def current(self) -> dict[str, Any]:
        return self._read(self.secret)

    # -- Credential defaults ------------------------------------------------------------------------

    def apply(self, pending: dict[str, Any], current: dict[str, Any] | None) -> str:
        return f"nothing to set: {self.provider} made the new key beside the old one"

    @abstractmethod
    def plan(self, current: dict[str, Any] | None) -> list[str]:
        """Human lines for the create / apply / test steps of a dry run."""

    @abstractmethod
    def authenticates(self, value: dict[str, Any]) -> bool:
        """A real call to the provider with VALUE."""

    @abstractmethod
    def create(self, rotation_id: str, current: dict[str, Any]) -> dict[str, Any]:
        """The new value (made by voke, minted by the provider, or pasted)."""

    @abstractmethod
    def adopt_value(self, raw: str) -> dict[str, Any]:
        """The stored form of RAW, the key in use today, verified with a real call."""


# -- Stripe -------------------------------------------------------------------------------------------
class StripeKey(ApiKeyCredential):
    """Assisted: the operator pastes the new key (rolled in the Dashboard); voke verifies and stores it."""

    provider = "stripe"
    strategy = "assisted"
    default_endpoint = "https://api.stripe.com"
    # The Dashboard may have expired the old key the moment it rolled it; the pasted key is
    # verified before it is stored, so the engine need not find a working stored key first.
    operator_supplies_value = True

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._new_key: str | None = None
        # True when the command reads the new key from the operator (`rotate api-key`; its dry
        # run reads none, and plans the paste). `rotate due --run` reads none: its dry run is
        # refused as its run is, not reported `planned`.
        self.operator_pastes = False

    def client(self) -> Any:
        from voketag_ops.adapters.providers import StripeClient

        return StripeClient(self.endpoint, timeout=self.timeout)

    def supply(self, key: str) -> None:
        """The new key the operator pasted for this run."""
        key = key.strip()
        if key:
            redact.register(key)
        self._new_key = key or None

    @staticmethod
    def _check_format(key: str) -> None:
        if not key.startswith(("sk_", "rk_")) or any(c.isspace() for c in key) or len(key) < 20:
            raise UsageError("that is not a Stripe secret key (sk_...) or restricted key (rk_...)")

    def precheck(self, meta: Any, *, dry_run: bool) -> None:
        self.validate()
        if dry_run and self.operator_pastes:
            return
        if self._new_key is None:
            raise PreconditionError(
                "Stripe has no API that creates keys: roll the key in the Stripe Dashboard, then paste the new one",
                hint=f"voke rotate api-key {self.name} --yes < new-key.txt   (or run it at a terminal to be asked)",
            )
        self._check_format(self._new_key)
        current = self.current()
        if current.get("api_key") == self._new_key:
            raise UsageError("the pasted key is the current key; paste the new one")
        if not self.client().key_works(self._new_key):
            raise AuthenticationError(
                "stripe: the pasted key is rejected (GET /v1/balance); nothing was changed"
            )

    def plan(self, current: dict[str, Any] | None) -> list[str]:
        return [
            "read the new key pasted by the operator (Stripe has no API that creates keys)",
            f"verify it with GET /v1/balance, then store it as a new version of {self.secret} (alias pending)",
            "nothing to set at Stripe: the Dashboard made the key",
            "GET /v1/balance with the new key",
            "afterwards: let the old key expire in the Stripe Dashboard (Stripe has no API for it)",
        ]

    def authenticates(self, value: dict[str, Any]) -> bool:
        _register(value)
        return bool(self.client().key_works(value["api_key"]))

    def create(self, rotation_id: str, current: dict[str, Any]) -> dict[str, Any]:
        key = self._new_key
        if key is None:
            raise SecretError(
                "the new Stripe key was pasted to a run that ended before storing it; rotate again and paste it"
            )
        if not self.client().key_works(key):
            raise AuthenticationError("stripe: the new key is rejected (GET /v1/balance)")
        return {"api_key": key}

    def adopt_value(self, raw: str) -> dict[str, Any]:
        self._check_format(raw)
        redact.register(raw)
        if not self.client().key_works(raw):
            raise AuthenticationError("stripe: the key is rejected (GET /v1/balance); nothing was stored")
        return {"api_key": raw}


# -- Auth0 ----------------------------------------------------------------------------------------------
class Auth0Secret(ApiKeyCredential):
    """Single-phase: a client secret voke generates and sets with the Management API."""

    provider = "auth0"
    strategy = "single-phase"
    one_credential = True  # the target holds one secret: a rollback restores it before redeploying
    required_options = ("client_id", "audience")

    @property
    def endpoint(self) -> str:
        if self.settings.endpoint:
            return self.settings.endpoint
        domain = self.settings.options.get("domain")
        return f"https://{domain}" if domain else ""

    def validate(self) -> None:
        super().validate()
        if not self.settings.admin_secret:
            raise ConfigError(
                f"rotation.api_keys.{self.name}.admin_secret is required for auth0: a secret holding a Management "
                'API client ({"client_id": ..., "client_secret": ...}) with the update:client_keys scope'
            )

    def client(self) -> Any:
        from voketag_ops.adapters.providers import Auth0Client

        return Auth0Client(self.endpoint, timeout=self.timeout)

    def management_token(self) -> str:
        admin = self.admin() or {}
        token = admin.get("access_token") or admin.get("token")
        if token:
            return str(token)
        if not admin.get("client_id") or not admin.get("client_secret"):
            raise ValidationError(
                f"admin secret {self.settings.admin_secret!r} holds neither a token nor a client"
            )
        client = self.client()
        token = client.token(admin["client_id"], admin["client_secret"], client.management_audience())
        if token is None:
            raise AuthenticationError("auth0: the Management API client in the admin secret is rejected")
        return token

    def plan(self, current: dict[str, Any] | None) -> list[str]:
        client_id = self.option("client_id")
        return [
            f"generate a new client secret for Auth0 application {client_id} and store it as a new version of "
            f"{self.secret} (alias pending) before Auth0 changes",
            f"PATCH /api/v2/clients/{client_id} with it (single-phase: the old secret stops working at once)",
            "get a token with the new secret (client_credentials); Auth0 may take up to 30 s to accept it",
        ]

    def authenticates(self, value: dict[str, Any]) -> bool:
        _register(value)
        return (
            self.client().token(value["client_id"], value["client_secret"], self.option("audience"))
            is not None
        )

    def create(self, rotation_id: str, current: dict[str, Any]) -> dict[str, Any]:
        value = {"client_id": self.option("client_id"), "client_secret": secrets.token_urlsafe(48)}
        _register(value)
        return value

    def apply(self, pending: dict[str, Any], current: dict[str, Any] | None) -> str:
        self.client().set_client_secret(
            self.management_token(), pending["client_id"], pending["client_secret"]
        )
        return f"client secret of Auth0 application {pending['client_id']} set"

    def restore(
        self,
        scope: str,
        pending: dict[str, Any] | None,
        current: dict[str, Any] | None,
        previous: dict[str, Any] | None,
    ) -> None:
        if scope == "discard_pending" or pending is None:
            return
        if current is None:
            raise SecretError(f"{self.secret}: the current version cannot be read to set it back in Auth0")
        if self.authenticates(current):
            return
        self.client().set_client_secret(
            self.management_token(), current["client_id"], current["client_secret"]
        )

    def adopt_value(self, raw: str) -> dict[str, Any]:
        value = {"client_id": self.option("client_id"), "client_secret": raw}
        _register(value)
        if not self.authenticates(value):
            raise AuthenticationError(
                "auth0: the client secret is rejected (POST /oauth/token); nothing was stored"
            )
        return value


# -- SendGrid ---------------------------------------------------------------------------------------------
class SendGridKey(ApiKeyCredential):
    """Additive: SendGrid mints the new key (same scopes) beside the old one."""

    provider = "sendgrid"
    strategy = "additive"
    default_endpoint = "https://api.sendgrid.com"

    def client(self) -> Any:
        from voketag_ops.adapters.providers import SendGridClient

        return SendGridClient(self.endpoint, timeout=self.timeout)

    def admin_key(self) -> str:
        """The key that manages keys: the admin secret's, or else the current key itself."""
        admin = self.admin()
        value = admin if admin is not None else self.current()
        if not value.get("api_key"):
            raise ValidationError(
                f"no SendGrid key to manage keys with in {self.settings.admin_secret or self.secret}"
            )
        return str(value["api_key"])

    def plan(self, current: dict[str, Any] | None) -> list[str]:
        old = (current or {}).get("key_id", "?")
        return [
            f"mint a SendGrid key named voke-<rotation id> beside key {old} (same scopes) and store it as a new "
            f"version of {self.secret} (alias pending); the old key keeps working",
            "nothing to set: SendGrid made the key",
            "GET /v3/scopes with the new key",
            f"afterwards: `voke rotate cleanup` deletes key {old} once the new key has been current for "
            "rotation.disable_after_hours",
        ]

    def authenticates(self, value: dict[str, Any]) -> bool:
        _register(value)
        return self.client().scopes(value["api_key"]) is not None

    def _delete_orphans(self, client: Any, admin: str, rotation_id: str) -> int:
        name = minted_name(rotation_id)
        orphans = [k for k in client.list_keys(admin) if k.get("name") == name]
        for key in orphans:
            client.delete_key(admin, key["api_key_id"])
        return len(orphans)

    def create(self, rotation_id: str, current: dict[str, Any]) -> dict[str, Any]:
        client, admin = self.client(), self.admin_key()
        # SendGrid shows a key's value only when minting it: a key an earlier, killed run
        # minted but never stored is unusable, so it goes before the new one is made.
        self._delete_orphans(client, admin, rotation_id)
        if self.settings.options.get("scopes"):
            scopes = [s.strip() for s in self.settings.options["scopes"].split(",") if s.strip()]
        else:
            info = client.get_key(admin, current["key_id"]) if current.get("key_id") else None
            scopes = list((info or {}).get("scopes") or [])
            if not scopes:
                raise ValidationError(
                    f"cannot read the scopes of SendGrid key {current.get('key_id')}; "
                    f"set rotation.api_keys.{self.name}.options.scopes"
                )
        made = client.create_key(admin, minted_name(rotation_id), scopes)
        value = {"api_key": made["api_key"], "key_id": made["api_key_id"], "key_name": made.get("name")}
        _register(value)
        return value

    def discard(self, pending: dict[str, Any] | None, rotation_id: str) -> None:
        """A rollback, once nothing uses it: delete what this rotation minted."""
        client, admin = self.client(), self.admin_key()
        current_id = self.current().get("key_id")
        if pending and pending.get("key_id") and pending["key_id"] != current_id:
            client.delete_key(admin, pending["key_id"])
        self._delete_orphans(client, admin, rotation_id)

    def retire(self, value: dict[str, Any], *, dry_run: bool = False) -> str:
        """Delete a superseded key (cleanup)."""
        key_id = value.get("key_id")
        if not key_id:
            return "no SendGrid key id stored; nothing to delete"
        if key_id == self.current().get("key_id"):
            return f"SendGrid key {key_id} is current; kept"
        if not dry_run:
            gone = not self.client().delete_key(self.admin_key(), key_id)
            return f"SendGrid key {key_id} {'was already deleted' if gone else 'deleted'}"
        return f"delete SendGrid key {key_id}"

    def adopt_value(self, raw: str) -> dict[str, Any]:
        parts = raw.split(".")
        if len(parts) != 3 or parts[0] != "SG":
            raise UsageError("that is not a SendGrid API key (SG.<id>.<secret>)")
        redact.register(raw)
        client = self.client()
        if client.scopes(raw) is None:
            raise AuthenticationError("sendgrid: the key is rejected (GET /v3/scopes); nothing was stored")
        admin = self.admin()
        info = client.get_key(str(admin["api_key"]) if admin else raw, parts[1]) or {}
        return {"api_key": raw, "key_id": parts[1], "key_name": info.get("name")}


# -- Google Maps --------------------------------------------------------------------------------------------
class MapsKey(ApiKeyCredential):
    """Additive: the API Keys API mints a key with a rotation-derived id beside the old one."""

    provider = "maps"
    strategy = "additive"
    default_endpoint = "https://apikeys.googleapis.com"
    required_options = ("project",)

    def client(self) -> Any:
        from voketag_ops.adapters.providers import GoogleApiKeysClient

        return GoogleApiKeysClient(self.endpoint, timeout=self.timeout, sleep=self.sleep)

    def maps(self) -> Any:
        from voketag_ops.adapters.providers import MapsClient

        return MapsClient(
            self.settings.options.get("maps_endpoint") or "https://maps.googleapis.com", timeout=self.timeout
        )

    def token(self) -> str:
        from voketag_ops.adapters.providers import google_access_token

        return google_access_token(self.admin())

    def key_name(self, rotation_id: str) -> str:
        return self.client().key_name(self.option("project"), maps_key_id(rotation_id))

    def plan(self, current: dict[str, Any] | None) -> list[str]:
        old = (current or {}).get("key_id", "?")
        return [
            f"create key voke-<rotation id> in project {self.option('project')} (API Keys API, same restrictions as "
            f"{old}) and store it as a new version of {self.secret} (alias pending); the old key keeps working",
            "nothing to set: Google made the key",
            "a Geocoding API call with the new key",
            f"afterwards: `voke rotate cleanup` deletes key {old} once the new key has been current for "
            "rotation.disable_after_hours",
        ]

    def authenticates(self, value: dict[str, Any]) -> bool:
        _register(value)
        return bool(self.maps().key_works(value["api_key"], referer=self.settings.options.get("referer")))

    def _value(self, client: Any, token: str, key: dict[str, Any]) -> dict[str, Any]:
        name = key["name"]
        key_string = key.get("keyString") or client.key_string(token, name)
        value = {"api_key": key_string, "key_id": name.rsplit("/", 1)[-1], "key_name": name}
        _register(value)
        return value

    def existing(self, rotation_id: str) -> dict[str, Any] | None:
        """A key an earlier, killed run created: Google shows its value again, so adopt it."""
        client, token = self.client(), self.token()
        key = client.get_key(token, self.key_name(rotation_id))
        if key is None or key.get("deleteTime"):
            return None
        return self._value(client, token, key)

    def create(self, rotation_id: str, current: dict[str, Any]) -> dict[str, Any]:
        client, token = self.client(), self.token()
        # The new key takes the old key's restrictions: an old key that cannot be read would
        # make an unrestricted key, usable from anywhere for any API, so none is made.
        old = client.get_key(token, current["key_name"]) if current.get("key_name") else None
        if old is None:
            raise ValidationError(
                f"cannot read the restrictions of Google key {current.get('key_id') or '(no key name stored)'}; "
                "no key was made (it would be unrestricted)"
            )
        made = client.create_key(
            token,
            self.option("project"),
            maps_key_id(rotation_id),
            f"voke {rotation_id} ({self.name})",
            old.get("restrictions"),
        )
        if made is None:  # the id exists: an earlier run's create finished after it died
            deadline = time.monotonic() + 60
            while (made := client.get_key(token, self.key_name(rotation_id))) is None:
                if time.monotonic() > deadline:
                    raise ValidationError(
                        f"apikeys: key {maps_key_id(rotation_id)} exists but cannot be read"
                    )
                self.sleep(0.5)
        return self._value(client, token, made)

    def discard(self, pending: dict[str, Any] | None, rotation_id: str) -> None:
        client, token = self.client(), self.token()
        current_name = self.current().get("key_name")
        names = {self.key_name(rotation_id)}
        if pending and pending.get("key_name"):
            names.add(pending["key_name"])
        for name in sorted(names - {current_name}):
            client.delete_key(token, name)

    def retire(self, value: dict[str, Any], *, dry_run: bool = False) -> str:
        name = value.get("key_name")
        if not name:
            return "no Google key name stored; nothing to delete"
        if name == self.current().get("key_name"):
            return f"Google key {value.get('key_id')} is current; kept"
        if not dry_run:
            gone = not self.client().delete_key(self.token(), name)
            return f"Google key {value.get('key_id')} {'was already deleted' if gone else 'deleted'}"
        return f"delete Google key {value.get('key_id')} (undeletable for 30 days)"

    def adopt_value(self, raw: str) -> dict[str, Any]:
        redact.register(raw)
        client, token = self.client(), self.token()
        name = client.lookup(token, raw)
        if not name:
            raise AuthenticationError("apikeys: no key with that value in this project; nothing was stored")
        if not self.maps().key_works(raw, referer=self.settings.options.get("referer")):
            raise AuthenticationError("maps: the key is rejected by the Geocoding API; nothing was stored")
        return {"api_key": raw, "key_id": name.rsplit("/", 1)[-1], "key_name": name}


KINDS: dict[str, type[ApiKeyCredential]] = {
    "stripe": StripeKey,
    "auth0": Auth0Secret,
    "sendgrid": SendGridKey,
    "maps": MapsKey,
}


def api_key_credentials(
    settings: RotationSettings, store: Any, *, local: bool, sleep: Callable[[float], None] = time.sleep
) -> list[ApiKeyCredential]:
    """The managed API keys of SETTINGS as Credentials."""
    out = []
    for name, key in settings.api_keys.items():
        if local and key.services:
            raise ConfigError(
                f"rotation.api_keys.{name}.services: the local services read only their database secret; "
                "leave it empty for the local environment"
            )
        out.append(KINDS[key.provider](name, key, store, sleep=sleep))
    return out


# -- workflows ----------------------------------------------------------------------------------------------------
def _providers() -> tuple[str, ...]:
    """The providers `[rotation.api_keys.NAME]` accepts (its `provider` field's choices)."""
    from typing import get_args

    from voketag_ops.config import ApiKeySettings

    return get_args(ApiKeySettings.model_fields["provider"].annotation)


def api_credential(engine: Any, name: str) -> ApiKeyCredential:
    """The API key NAME of rotation.api_keys (ConfigError, exit 3, when none is configured)."""
    cred = engine.credentials.get(name)
    if not isinstance(cred, ApiKeyCredential):
        known = ", ".join(sorted(engine.settings.api_keys)) or "none"
        raise ConfigError(
            f"no API key named {name!r} in rotation.api_keys (configured: {known})",
            hint=f"add [rotation.api_keys.{name}] with provider (one of {', '.join(_providers())}) and "
            'secret = "..." to voke.toml',
        )
    return cred


def rotate_api_key(engine: Any, name: str, *, new_key: str | None = None, dry_run: bool = False) -> Any:
    """Rotate the API key NAME (rotation.api_keys.NAME); NEW_KEY for assisted kinds (Stripe)."""
    cred = api_credential(engine, name)
    engine.require_current(cred.secret, f"no current {cred.provider} key yet; adopt the key in use first")
    if isinstance(cred, StripeKey):
        cred.operator_pastes = True
    if new_key is not None:
        if not isinstance(cred, StripeKey):
            raise UsageError(f"{cred.provider} keys are made by voke, not pasted")
        _check_pasted(new_key.strip(), cred.provider)
        cred.supply(new_key)
    return engine.rotate(name, dry_run=dry_run)


def _check_pasted(raw: str, provider: str) -> None:
    """Every provider's keys and secrets are printable ASCII without spaces; anything else is
    a slip of the paste (a copy from a web page can carry an invisible character), said
    without echoing the key."""
    if not (raw.isascii() and raw.isprintable()) or any(c.isspace() for c in raw):
        raise UsageError(
            f"that is not a {provider} key: it holds white space or a character beyond printable "
            "ASCII (a copy from a web page can carry an invisible one); paste it again"
        )


def adopt_api_key(engine: Any, name: str, raw: str, *, dry_run: bool = False) -> dict[str, Any]:
    """Store the key in use today as the first `current` version (verified with a real call)."""
    from voketag_ops.core.rotation import LAST_ANNOTATION
    from voketag_ops.core.times import iso

    cred = api_credential(engine, name)
    cred.validate()
    store = engine.store
    try:
        adopted = "current" in store.get(cred.secret).aliases
    except NotFoundError:
        adopted = False
    if adopted:
        raise PreconditionError(
            f"secret {cred.secret} already holds a current {cred.provider} key; rotate it instead",
            hint=f"voke rotate api-key {name} --yes",
        )
    raw = raw.strip()
    if not raw and not dry_run:
        raise UsageError("no key given (paste it on stdin)")
    if raw:
        _check_pasted(raw, cred.provider)
    report = {
        "name": name,
        "secret": cred.secret,
        "kind": cred.kind,
        "status": "planned" if dry_run else "adopted",
        "version": None,
        "key_id": None,
    }
    if dry_run:
        return report
    t0 = time.monotonic()
    value = cred.adopt_value(raw)
    store.create(cred.secret)
    version = store.add_version(cred.secret, json.dumps(value).encode()).version
    meta = store.get(cred.secret)
    if "current" in meta.aliases:
        raise PreconditionError(f"another voke adopted a key into {cred.secret} at the same moment")
    summary = {
        "id": None,
        "status": "created",
        "finished_at": iso(engine.now()),
        "version": version,
        "kind": cred.kind,
    }
    try:
        store.update(
            cred.secret,
            etag=meta.etag,
            aliases={"current": version},
            annotations={LAST_ANNOTATION: json.dumps(summary)},
        )
    except EtagMismatchError:
        raise PreconditionError(
            f"another voke changed {cred.secret} at the same moment; nothing adopted"
        ) from None
    from voketag_ops.audit import record_event

    record_event(
        engine.audit_home,
        event_type="rotation.adopt",
        env=engine.env_name,
        target=cred.secret,
        result="success",
        duration_seconds=round(time.monotonic() - t0, 3),
        details={"kind": cred.kind, "version": version, "key_id": value.get("key_id")},
    )
    report.update(version=version, key_id=value.get("key_id"))
    return report


def needs_pasted_key(settings: RotationSettings, name: str) -> bool:
    """True when rotating NAME needs the operator to paste the new key (Stripe)."""
    key = settings.api_keys.get(name)
    return key is not None and getattr(KINDS[key.provider], "operator_supplies_value", False)
