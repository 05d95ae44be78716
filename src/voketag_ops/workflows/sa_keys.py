"""Google service-account keys as a Credential kind of the rotation engine.

Additive, like an API key the provider mints: IAM creates the new key beside the old
one (at most 10 per account), it is stored as `pending` at once and verified by
exchanging a signed JWT for a token. The old key keeps working until `voke rotate
cleanup` retires it: disable first, check that the current key still works, then delete
(re-enabled at once if the check fails). Keys are a liability wherever workload identity
or attached service accounts can be used instead, and voke says so on every rotation.
"""

from __future__ import annotations

import json
import time
from contextlib import suppress
from typing import Any

from voketag_ops import redact
from voketag_ops.config import SaKeySettings
from voketag_ops.errors import (
    AuthenticationError,
    ProviderRefusedError,
    RequestRefusedError,
    SecretError,
    ValidationError,
    VokeError,
)
from voketag_ops.logs import get_logger
from voketag_ops.workflows.credentials import MadeBeside

log = get_logger(__name__)
KEYLESS_HINT = (
    "service-account keys are long-lived secrets: prefer keyless auth (an attached service account on "
    "Cloud Run, workload identity federation elsewhere) and rotate keys only where that is impossible"
)


# What a rotation asked IAM for, in the secret's annotations (IAM keys carry no labels, so a
# key's maker is known only from this): {"rotation": ID, "before": key ids that existed before
# its first create, "asked": creates begun, "made": key ids IAM answered with}. Kept after the
# rotation ends, until the next one replaces it.
MADE_ANNOTATION = "voke-sa-key-made"


class SaKey(MadeBeside):
    """One managed service-account key (`[rotation.sa_keys.NAME]`)."""

    kind = "sa-key"
    schedule = "sa_key"
    strategy = "additive"

    def __init__(self, name: str, settings: SaKeySettings, keys: Any, store: Any) -> None:
        self.name = name
        self.settings = settings
        self.keys = keys
        self.store = store
        self.secret = settings.secret
        self.services = tuple(settings.services)
        self.account = settings.service_account
        # rotation id -> the keys its last rerun or rollback left alive, unable to tell them from
        # another consumer's (`_clear_leftovers`): the engine puts them in its record and report.
        self.unclaimed: dict[str, list[dict[str, str]]] = {}

    def precheck(self, meta: Any, *, dry_run: bool) -> None:
        """Before the lock: warn about keys, and refuse when IAM's 10-key limit is reached."""
        from voketag_ops.adapters.gcp.iam import MAX_KEYS
        from voketag_ops.errors import PreconditionError

        log.warning("%s", KEYLESS_HINT)
        if len(self.keys.list(self.account)) >= MAX_KEYS:
            raise PreconditionError(
                f"{self.account} has {MAX_KEYS} user-managed keys, the IAM limit; nothing was changed",
                hint="voke rotate cleanup --yes deletes superseded keys, or delete unused keys in IAM",
            )

    @property
    def drift_hint(self) -> str:
        """What a person does when no stored key gets a token (the engine's drift check): the
        key cannot be set back, only enabled again if it was disabled."""
        secret_id = getattr(self.store, "secret_id", lambda name: name)(self.secret)
        return (
            f"`gcloud iam service-accounts keys list --iam-account {self.account}` shows whether the stored "
            f"key (`private_key_id` in `voke secrets access {self.secret}`) was disabled: enable it "
            f"(`gcloud iam service-accounts keys enable KEY_ID --iam-account {self.account}`), then rotate "
            "again; a deleted key cannot come back: drop the secret's aliases (`gcloud secrets update "
            f"{secret_id} --remove-version-aliases=current,previous`), then `voke rotate sa-key {self.name} "
            "--init --yes` stores a new key, and redeploy its services"
        )

    def plan(self, current: dict[str, Any] | None) -> list[str]:
        old = (current or {}).get("private_key_id", "?")
        return [
            f"create a new key of {self.account} beside key {old[:12]} (IAM allows 10) and store the key file "
            f"as a new version of {self.secret} (alias pending)",
            "nothing to set: IAM made the key",
            "exchange a JWT signed by the new key for an access token",
            f"afterwards: `voke rotate cleanup` disables key {old[:12]}, checks the new key, then deletes the old one",
            f"note: {KEYLESS_HINT}",
        ]

    def authenticates(self, value: dict[str, Any]) -> bool:
        redact.register(str(value.get("private_key", "")))
        return bool(self.keys.verify(value))

    def _stored_ids(self) -> set[str]:
        ids = set()
        meta = self.store.get(self.secret)
        for v in meta.versions:
            if v.state != "enabled":
                continue
            try:
                ids.add(json.loads(self.store.access(self.secret, v.version)).get("private_key_id"))
            except (ValueError, SecretError):
                continue
        return ids

    def _made(self, rotation_id: str) -> dict[str, Any] | None:
        """What ROTATION_ID recorded of its creates (MADE_ANNOTATION), or None: none recorded, or
        not readable (a hand edit), when nothing is deleted."""
        raw = self.store.get(self.secret).annotations.get(MADE_ANNOTATION)
        try:
            made = json.loads(raw) if raw else None
        except ValueError:
            return None
        if (
            not isinstance(made, dict)
            or made.get("rotation") != rotation_id
            or not isinstance(made.get("asked"), int)
            or not all(isinstance(made.get(k), list) for k in ("before", "made"))
        ):
            return None
        return made

    def _note(self, made: dict[str, Any]) -> None:
        meta = self.store.get(self.secret)
        text = json.dumps(made, separators=(",", ":"), sort_keys=True)
        self.store.update(self.secret, etag=meta.etag, annotations={MADE_ANNOTATION: text})

    def _clear_leftovers(self, made: dict[str, Any] | None, keep: set[str]) -> None:
        """Delete the keys this rotation made (MADE) that KEEP lacks. A create whose answer was
        lost made a key no record names, which IAM cannot tell from one another consumer of the
        account made meanwhile: such keys are named for a person (a warning, and `unclaimed`,
        which the engine puts in its report and audit event), never deleted."""
        from voketag_ops.adapters.gcp.iam import MAX_KEYS

        if made is None:
            return
        live = {k.key_id for k in self.keys.list(self.account)}
        for key_id in made["made"]:
            if key_id in live and key_id not in keep:
                log.info("deleting key %s of %s made by rotation %s", key_id, self.account, made["rotation"])
                self.keys.delete(self.account, key_id)
        unsure = sorted(live - set(made["before"]) - set(made["made"]) - keep)
        if made["asked"] <= len(made["made"]):
            unsure = []  # every create was answered: a new key no record names is another's
        self.unclaimed[made["rotation"]] = [
            {"key_id": key_id, "account": self.account, "command": self._delete_command(key_id)}
            for key_id in unsure
        ]
        if unsure:
            log.warning(
                "rotation %s asked IAM for a key of %s and lost the answer; voke cannot tell whether it made "
                "key(s) %s (new since it began) or another consumer did, and deleted none: if nothing uses "
                "them, delete them (`%s`), since IAM allows %d keys per account",
                made["rotation"],
                self.account,
                ", ".join(unsure),
                self._delete_command("KEY_ID"),
                MAX_KEYS,
            )

    def _delete_command(self, key_id: str) -> str:
        return f"gcloud iam service-accounts keys delete {key_id} --iam-account {self.account}"

    def create(self, rotation_id: str, current: dict[str, Any]) -> dict[str, Any]:
        made = self._made(rotation_id)
        if made is not None:  # a rerun: what an earlier run made and never stored goes first
            self._clear_leftovers(made, keep=self._stored_ids())
        else:
            before = sorted(k.key_id for k in self.keys.list(self.account))
            made = {"rotation": rotation_id, "before": before, "asked": 0, "made": []}
        made["asked"] += 1
        self._note(made)  # before IAM is asked: a rerun or rollback knows what to look for
        try:
            key_file = self.keys.create(self.account)
        except ValidationError as exc:
            if not isinstance(exc, RequestRefusedError) and isinstance(exc, ProviderRefusedError):
                raise  # an answer voke could not read: a key may exist
            made["asked"] -= 1  # refused outright (a bad request, the 10-key limit): IAM made nothing
            with suppress(VokeError):
                self._note(made)
            raise
        try:
            redact.register(str(key_file.get("private_key", "")))
            made["made"].append(key_file["private_key_id"])
            self._note(made)
        except BaseException:
            # Unrecorded, it would be a key nobody holds that no rerun or rollback may delete.
            with suppress(Exception):
                self.keys.delete(self.account, key_file["private_key_id"])
            raise
        return key_file

    def apply(self, pending: dict[str, Any], current: dict[str, Any] | None) -> str:
        return f"nothing to set: IAM made key {pending.get('private_key_id', '?')[:12]} beside the old one"

    def discard(self, pending: dict[str, Any] | None, rotation_id: str) -> None:
        """A rollback, once nothing uses it: delete the keys this rotation made (never another
        consumer's key of the account, nor one it cannot tell from such a key)."""
        current = self._current_id()
        if pending and pending.get("private_key_id") and pending["private_key_id"] != current:
            self.keys.delete(self.account, pending["private_key_id"])
        self._clear_leftovers(self._made(rotation_id), keep={current} if current else set())

    def _current_id(self) -> str | None:
        try:
            return json.loads(self.store.access(self.secret, "current")).get("private_key_id")
        except (ValueError, SecretError):
            return None

    def retire(self, value: dict[str, Any], *, dry_run: bool = False) -> str:
        """Disable the superseded key, prove the current key still works, then delete it."""
        key_id = value.get("private_key_id")
        if not key_id:
            return "no key id stored; nothing to delete"
        if key_id == self._current_id():
            return f"key {key_id[:12]} is current; kept"
        if dry_run:
            return f"disable, then delete key {key_id[:12]} of {self.account}"
        self.keys.disable(self.account, key_id)
        current = json.loads(self.store.access(self.secret, "current"))
        if not self.keys.verify(current):
            self.keys.enable(self.account, key_id)
            raise AuthenticationError(
                f"the current key of {self.account} does not work; re-enabled key {key_id[:12]} and kept it"
            )
        gone = not self.keys.delete(self.account, key_id)
        return f"key {key_id[:12]} of {self.account} {'was already deleted' if gone else 'disabled, then deleted'}"


def _sa_credential(engine: Any, name: str) -> SaKey:
    from voketag_ops.errors import ValidationError

    cred = engine.credential(name)
    if not isinstance(cred, SaKey):
        raise ValidationError(f"{name!r} is not a service-account key (rotation.sa_keys)")
    return cred


def rotate_sa_key(engine: Any, name: str, *, dry_run: bool = False) -> Any:
    """`voke rotate sa-key NAME`: the rotation protocol for one managed key, once `--init`
    stored the first."""
    cred = _sa_credential(engine, name)
    engine.require_current(cred.secret, f"no current key of {cred.account} yet; create it first")
    return engine.rotate(name, dry_run=dry_run)


def init_sa_key(engine: Any, name: str, *, dry_run: bool = False) -> dict[str, Any]:
    """`voke rotate sa-key NAME --init`: the first version of the secret (a new key, verified,
    stored as `current`), for a key voke has not managed yet. Refuses when one exists."""
    from voketag_ops.errors import AuthenticationError, NotFoundError, PreconditionError

    cred = _sa_credential(engine, name)
    store = engine.store
    try:
        exists = "current" in store.get(cred.secret).aliases
    except NotFoundError:
        exists = False
    if exists:
        raise PreconditionError(
            f"secret {cred.secret} already has a current key; use `voke rotate sa-key {name}`"
        )
    if dry_run:
        return {
            "dry_run": True,
            "secret": cred.secret,
            "plan": [
                f"create a key of {cred.account}, verify it, store it as version 1 of {cred.secret} (current)"
            ],
        }
    t0 = time.monotonic()
    cred.precheck(None, dry_run=False)  # before anything is made: at the key limit, nothing changes
    store.create(cred.secret)
    key_file = cred.keys.create(cred.account)
    stored: int | None = None
    try:
        if not cred.keys.verify(key_file):
            raise AuthenticationError(f"the new key of {cred.account} does not authenticate; deleted it")
        version = stored = store.add_version(cred.secret, json.dumps(key_file).encode()).version
        meta = store.get(cred.secret)
        store.update(cred.secret, etag=meta.etag, aliases={"current": version})
    except BaseException:
        # Whatever failed (the check, Secret Manager, Ctrl-C), a live key nobody holds must not
        # be left behind: it counts against IAM's 10 keys and no rotation or cleanup knows of it.
        with suppress(Exception):
            cred.keys.delete(cred.account, key_file["private_key_id"])
        if stored is not None:
            with suppress(Exception):
                store.set_state(cred.secret, stored, "disabled")
        raise
    from voketag_ops.audit import record_event

    record_event(
        engine.audit_home,
        event_type="rotation.init",
        env=engine.env_name,
        target=cred.secret,
        result="success",
        duration_seconds=round(time.monotonic() - t0, 3),
        details={"kind": "sa-key", "version": version, "key_id": key_file["private_key_id"][:12]},
    )
    return {
        "dry_run": False,
        "secret": cred.secret,
        "version": version,
        "account": cred.account,
        "key_id": key_file["private_key_id"][:12],
        "note": KEYLESS_HINT,
    }
