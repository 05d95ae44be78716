"""What a rotation rotates. The engine (workflows/rotate.py) runs the same eight steps
for every kind; a Credential supplies the kind-specific parts: making a new value,
applying it to its target, testing it, and undoing it.

Values are dicts (stored as JSON in the secret); they never leave this module or the
engine except towards their target.
"""

from __future__ import annotations

from typing import Any, Protocol

from voketag_ops import redact
from voketag_ops.config import DbUserSettings
from voketag_ops.core.rotation import generate_password
from voketag_ops.errors import ValidationError


class Credential(Protocol):
    """One managed credential."""

    name: str  # logical name: "app", "stripe", "jwt"
    kind: str  # "db-password", "api-key:stripe", "jwt"
    secret: str
    strategy: str
    services: tuple[str, ...]
    schedule: str  # key of RotationSchedule

    def plan(self, current: dict[str, Any] | None) -> list[str]:
        """Human lines for steps 2-4 (create, apply, test) of a dry run."""
        ...

    def authenticates(self, value: dict[str, Any]) -> bool:
        """A fresh login / API call with VALUE; ConnectivityError when unreachable."""
        ...

    def existing(self, rotation_id: str) -> dict[str, Any] | None:
        """A value this rotation already created at the provider but never stored (orphan)."""
        ...

    def create(self, rotation_id: str, current: dict[str, Any]) -> dict[str, Any]:
        """The new value (provider-minted keys are created here, beside the old one)."""
        ...

    def apply(self, pending: dict[str, Any], current: dict[str, Any] | None) -> str:
        """Make the target accept PENDING (no-op for keys the provider minted)."""
        ...

    def restore(
        self,
        scope: str,
        pending: dict[str, Any] | None,
        current: dict[str, Any] | None,
        previous: dict[str, Any] | None,
    ) -> None:
        """Undo `apply` (and provider-side creation) for a rollback of SCOPE."""
        ...


class MadeBeside:
    """Defaults for credentials whose new value is made beside the old one (a minted key, a
    keyring version): nothing to recover from an orphan, nothing outside to set back."""

    def existing(self, rotation_id: str) -> dict[str, Any] | None:
        return None

    def restore(
        self,
        scope: str,
        pending: dict[str, Any] | None,
        current: dict[str, Any] | None,
        previous: dict[str, Any] | None,
    ) -> None:
        return None


class DbPassword:
    """A database login. Alternating: the new password goes to the login `current` does
    not use, so the old credential keeps working until the next rotation."""

    kind = "db-password"
    schedule = "db_password"

    def __init__(self, name: str, user: DbUserSettings, target: Any, *, length: int = 32) -> None:
        self.name = name
        self.user = user
        self.target = target
        self.secret = user.secret
        self.strategy: str = user.strategy
        self.services = user.services
        self.length = length

    @property
    def drift_hint(self) -> str:
        """What a person does when no stored password logs in (the engine's drift check)."""
        return (
            f"find out who changed it, set the login's password back to the value `voke secrets access "
            f"{self.secret}` shows (ALTER ROLE ... PASSWORD), then rotate again"
        )

    @property
    def one_credential(self) -> bool:
        """Single user: the target holds one password, so a rollback restores it before redeploying."""
        return self.strategy == "single"

    def role_for(self, current: dict[str, Any] | None) -> str:
        username = (current or {}).get("username")
        if self.strategy == "single":
            return username or self.user.roles[0]
        first, second = self.user.roles
        if username == first:
            return second
        if username == second:
            return first
        raise ValidationError(f"the current login {username!r} is not one of {first}, {second}")

    def plan(self, current: dict[str, Any] | None) -> list[str]:
        role = self.role_for(current)
        return [
            f"create a new version of {self.secret} for role {role} (alias pending)",
            self.target.set_password_plan(role),
            f"log in as {role} with the new value",
        ]

    def authenticates(self, value: dict[str, Any]) -> bool:
        return bool(self.target.can_login(value))

    def existing(self, rotation_id: str) -> dict[str, Any] | None:
        return None  # the value is made here, stored before the target changes: no orphans

    def create(self, rotation_id: str, current: dict[str, Any]) -> dict[str, Any]:
        # The services' address and database stay as the current credential names them (a
        # failover repoints it; a cloud environment's database need not be `database`'s default):
        # voke's own way in (`db_host`, a proxy or tunnel) is for its login test alone.
        host, port = (current or {}).get("host"), (current or {}).get("port")
        if not host or not port:
            host, port = self.target.endpoint()
        password = generate_password(self.length)
        redact.register(password)
        return {
            "username": self.role_for(current),
            "password": password,
            "host": host,
            "port": port,
            "dbname": (current or {}).get("dbname") or self.user.database,
        }

    def apply(self, pending: dict[str, Any], current: dict[str, Any] | None) -> str:
        if self.strategy == "alternating" and current and pending["username"] == current.get("username"):
            raise ValidationError(
                f"refusing to change {pending['username']}: it is the login `current` uses (alternating users)"
            )
        self.target.set_password(pending["username"], pending["password"])
        return f"password of {pending['username']} set"

    def restore(
        self,
        scope: str,
        pending: dict[str, Any] | None,
        current: dict[str, Any] | None,
        previous: dict[str, Any] | None,
    ) -> None:
        if scope == "discard_pending" or pending is None:
            return
        # Give the changed login its last stored password back.
        if self.strategy == "single" and current is not None:
            self.target.set_password(current["username"], current["password"])
        elif previous is not None and previous["username"] == pending["username"]:
            self.target.set_password(previous["username"], previous["password"])
