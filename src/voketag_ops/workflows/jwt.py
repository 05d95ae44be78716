"""The JWT signing keyring as a Credential, plus what its consumers need: the public
JWKS, signing with `current`, verifying against the JWKS.

`voke rotate jwt` runs the engine's eight steps on the keyring secret; what the new
keyring holds depends on where the keyring is (core/jwt_keys.py `decide`):
publish a `next` key; after `verifier_refresh_seconds` promote it (signing switches);
or, with `--emergency`, replace every key at once. The time a keyring version became
current (its publication) is the finish of the rotation that made it, from the
rotation history, so a waiting promotion survives any crash or restart; until that
rotation finishes, its commit (recorded in the rotation's record).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

from voketag_ops import redact
from voketag_ops.config import JwtSettings
from voketag_ops.core.rotation import ANNOTATION, EMERGENCY, LAST_ANNOTATION, RotationRecord
from voketag_ops.core.times import iso
from voketag_ops.errors import NotFoundError, PreconditionError, ValidationError
from voketag_ops.workflows.credentials import MadeBeside

NORMAL = "publish-before-sign"


def _register(keyring: dict[str, Any]) -> None:
    for slot in ("next", "current"):
        key = keyring.get(slot)
        if isinstance(key, dict) and key.get("private_key"):
            redact.register(key["private_key"])


class JwtKeyring(MadeBeside):
    """The signing keyring `rotation.jwt.secret` (next / current / previous)."""

    kind = "jwt"
    schedule = "jwt"

    def __init__(
        self,
        settings: JwtSettings,
        store: Any,
        *,
        now: Callable[[], datetime],
        became_current: Callable[[Any, int | None], datetime | None],
        name: str = "jwt",
    ) -> None:
        self.name = name
        self.settings = settings
        self.store = store
        self.secret = settings.secret
        self.services = tuple(settings.services)
        self.strategy = NORMAL
        self.now = now
        self.became_current = became_current  # RotationEngine.became_current

    @property
    def lifetime(self) -> timedelta:
        return timedelta(seconds=self.settings.max_token_lifetime_seconds)

    @property
    def refresh(self) -> timedelta:
        return timedelta(seconds=self.settings.verifier_refresh_seconds)

    # -- the keyring's state -----------------------------------------------------------------
    def keyring(self, value: dict[str, Any]) -> Any:
        from voketag_ops.core.jwt_keys import Keyring

        _register(value)
        try:
            return Keyring.from_dict(value)
        except (ValueError, KeyError, TypeError) as exc:
            raise ValidationError(f"{self.secret}: not a usable keyring ({exc})") from None

    def _state(self, meta: Any | None = None) -> tuple[Any, Any, datetime]:
        """(meta, keyring of `current`, when it became current)."""
        meta = meta or self.store.get(self.secret)
        version = meta.aliases.get("current")
        if version is None:
            raise ValidationError(
                f"{self.secret} has no current keyring", hint="create it with: voke rotate jwt --init --yes"
            )
        ring = self.keyring(json.loads(self.store.access(self.secret, version)))
        return meta, ring, self.became_current(meta, version) or self.now()

    def decision(self, meta: Any | None = None, *, emergency: bool = False) -> tuple[str, datetime, Any]:
        from voketag_ops.core.jwt_keys import decide

        _meta, ring, published = self._state(meta)
        action, at = decide(
            ring,
            published_at=published,
            now=self.now(),
            refresh=self.refresh,
            emergency=emergency,
            lifetime=self.lifetime,
        )
        return action, at, ring

    def due_at(self, meta: Any) -> datetime | None:
        """When a published `next` key may start signing (None when there is none)."""
        try:
            action, at, _ring = self.decision(meta)
        except (ValidationError, NotFoundError):
            return None
        return at if action in ("wait", "promote") else None

    def _mode(self, rotation_id: str) -> str:
        """The mode a rotation was started in (recorded in its lock), so a resume keeps it."""
        try:
            raw = self.store.get(self.secret).annotations.get(ANNOTATION)
        except NotFoundError:
            return self.strategy
        if raw:
            record = RotationRecord.from_json(raw)
            if record.id == rotation_id:
                return record.strategy
        return self.strategy

    # -- Credential ---------------------------------------------------------------------------------
    def precheck(self, meta: Any, *, dry_run: bool) -> None:
        action, at, ring = self.decision(meta, emergency=self.strategy == EMERGENCY)
        if action == "wait":
            raise PreconditionError(
                f"next key {ring.next['kid']} is published; signing switches to it at {iso(at)} "
                f"(after rotation.jwt.verifier_refresh_seconds, and once the previous key has left the JWKS)",
                hint="run `voke rotate jwt --yes` again then (or `voke rotate due --run --yes`); "
                "`--emergency` replaces every key now",
            )

    def plan(self, current: dict[str, Any] | None) -> list[str]:
        action, _at, ring = self.decision(emergency=self.strategy == EMERGENCY)
        algorithm = self.settings.algorithm  # what a new key is made with (publish, emergency)
        if action == "emergency":
            return [
                f"make a fresh {algorithm} key that signs at once; drop {', '.join(ring.kids())} from the keyring "
                "and the JWKS (tokens they signed stop verifying: forced logouts)",
                "nothing to set: verifiers read the JWKS",
                "check the keyring (kids are RFC 7638 thumbprints; a probe token signs and verifies)",
            ]
        if action == "promote":
            alg = ring.next["alg"]
            other = (
                f" (rotation.jwt.algorithm is {algorithm}: the next publish makes a {algorithm} key)"
                if alg != algorithm
                else ""
            )
            return [
                f"switch signing to the published {alg} next key {ring.next['kid']}{other}; keep "
                f"{ring.current['kid']} ({ring.current['alg']}) in the JWKS "
                f"for {self.settings.max_token_lifetime_seconds} s (max token lifetime)",
                "nothing to set: verifiers already have the key",
                "check the keyring (kids are RFC 7638 thumbprints; a probe token signs and verifies)",
            ]
        return [
            f"add a new {algorithm} next key beside {ring.current['kid']} ({ring.current['alg']}) and publish it in "
            f"the JWKS; signing stays on {ring.current['kid']} for at least "
            f"{self.settings.verifier_refresh_seconds} s",
            "nothing to set: verifiers read the JWKS",
            "check the keyring (kids are RFC 7638 thumbprints; a probe token signs and verifies)",
        ]

    def authenticates(self, value: dict[str, Any]) -> bool:
        try:
            self.keyring(value).check()
        except (ValidationError, ValueError):
            return False
        return True

    def create(self, rotation_id: str, current: dict[str, Any]) -> dict[str, Any]:
        from voketag_ops.core import jwt_keys

        emergency = self._mode(rotation_id) == EMERGENCY
        action, at, ring = self.decision(emergency=emergency)
        now = self.now()
        algorithm = self.settings.algorithm
        if action == "emergency":
            new = jwt_keys.emergency(now, algorithm=algorithm)
            key = new.current
        elif action == "promote":
            new = jwt_keys.promote(ring, now, self.lifetime)
            key = new.current
        elif action == "publish":
            _meta, _ring, became = self._state()
            new = jwt_keys.publish(
                ring, now, algorithm=algorithm, became_current_at=became, lifetime=self.lifetime
            )
            assert new.next is not None
            key = new.next
        else:
            raise ValidationError(f"next key {ring.next['kid']} may sign only from {iso(at)}")
        value = new.to_dict()
        value["kid"] = key["kid"]
        value["label"] = f"{key['alg']} key {key['kid']}"  # what the step detail names
        value["action"] = action
        _register(value)
        return value

    def apply(self, pending: dict[str, Any], current: dict[str, Any] | None) -> str:
        return f"{pending.get('action', 'publish')}: verifiers read the new JWKS from the keyring"


def bootstrap_keyring(store: Any, settings: JwtSettings, now: datetime) -> bool:
    """Create the keyring with one signing key when the secret has none (env up). True if created."""
    from voketag_ops.core.jwt_keys import new_keyring

    meta = store.create(settings.secret)
    if "current" in meta.aliases:
        return False
    value = new_keyring(settings.algorithm, now).to_dict()
    _register(value)
    version = store.add_version(settings.secret, json.dumps(value).encode()).version
    meta = store.get(settings.secret)
    summary = {"id": None, "status": "created", "finished_at": iso(now), "version": version, "kind": "jwt"}
    store.update(
        settings.secret,
        etag=meta.etag,
        aliases={"current": version},
        annotations={LAST_ANNOTATION: json.dumps(summary)},
    )
    return True


def init_keyring(engine: Any, *, dry_run: bool = False) -> dict[str, Any]:
    """`voke rotate jwt --init`: the keyring's first version (one signing key, `current`)
    where nothing created it yet (a cloud environment; `voke env up` does it locally).
    Idempotent: an existing keyring is reported and left alone."""
    import time

    cred = jwt_credential(engine)
    store = engine.store
    try:
        exists = "current" in store.get(cred.secret).aliases
    except NotFoundError:
        exists = False
    report: dict[str, Any] = {"dry_run": dry_run, "secret": cred.secret, "algorithm": cred.settings.algorithm}
    if exists:  # its own signing key's algorithm: rotation.jwt.algorithm may name the next one's
        return {**report, "status": "exists", "algorithm": cred._state()[1].algorithm}
    if dry_run:
        return {
            **report,
            "status": "planned",
            "plan": [f"create {cred.secret} with one {cred.settings.algorithm} signing key as `current`"],
        }
    t0 = time.monotonic()
    created = bootstrap_keyring(store, cred.settings, engine.now())
    version = store.get(cred.secret).aliases.get("current")
    from voketag_ops.audit import record_event

    record_event(
        engine.audit_home,
        event_type="rotation.init",
        env=engine.env_name,
        target=cred.secret,
        result="success" if created else "unchanged",
        duration_seconds=round(time.monotonic() - t0, 3),
        details={"kind": "jwt", "version": version},
    )
    return {**report, "status": "created" if created else "exists", "version": version}


def public_jwks(cred: JwtKeyring) -> dict[str, Any]:
    """The JWKS verifiers should trust now: next, current, previous until its tokens expire."""
    _meta, ring, became = cred._state()
    return ring.jwks(cred.now(), became_current_at=became, lifetime=cred.lifetime)


def sign_token(cred: JwtKeyring, claims: dict[str, Any]) -> str:
    """CLAIMS signed with the keyring's `current` key (never `next`)."""
    from voketag_ops.core.jwt_keys import sign

    _meta, ring, _became = cred._state()
    return sign(ring.current, claims)


def verify_token(cred: JwtKeyring, token: str) -> dict[str, Any]:
    """The claims of TOKEN if it verifies against the published JWKS (TokenError otherwise)."""
    from voketag_ops.core.jwt_keys import verify

    return verify(public_jwks(cred), token, cred.now())


def jwt_credential(engine: Any) -> JwtKeyring:
    cred = engine.credentials.get("jwt")
    if not isinstance(cred, JwtKeyring):
        from voketag_ops.errors import ConfigError

        raise ConfigError("the JWT keyring is not managed (rotation.jwt)")
    return cred


def rotate_jwt(engine: Any, *, emergency: bool = False, dry_run: bool = False) -> Any:
    """Publish a next key, promote a published one, or (EMERGENCY) replace every key now."""
    cred = jwt_credential(engine)
    engine.require_current(cred.secret, "no JWT keyring yet; create it first")
    cred.strategy = EMERGENCY if emergency else NORMAL
    return engine.rotate(cred.name, dry_run=dry_run)
