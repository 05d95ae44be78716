"""`voke secrets add`: store a value voke reads but does not rotate (an admin credential for a
provider's API, say), as a new version that becomes `current`."""

from __future__ import annotations

import hmac
from collections.abc import Mapping
from typing import Any

from voketag_ops import redact
from voketag_ops.config import Settings
from voketag_ops.errors import EtagMismatchError, NotFoundError, PreconditionError, UsageError
from voketag_ops.ports import SECRET_NAME, SECRET_NAME_RULE

LOOKS = 3  # compare-and-swaps whose etag other writers moved, `current` unmoved, before exit 5
MAX_VALUE_BYTES = 65536  # Secret Manager's limit for one version's payload


def rotated_secrets(settings: Settings) -> dict[str, str]:
    """secret -> the configuration key whose credential voke rotates in it."""
    rotation = settings.rotation
    owners = {rotation.jwt.secret: "rotation.jwt"}
    owners |= {u.secret: f"rotation.db_users.{name}" for name, u in rotation.db_users.items()}
    owners |= {k.secret: f"rotation.api_keys.{name}" for name, k in rotation.api_keys.items()}
    owners |= {k.secret: f"rotation.sa_keys.{name}" for name, k in rotation.sa_keys.items()}
    return owners


def check_addable(settings: Settings, name: str, store: Any) -> None:
    """UsageError (exit 2) for a name no store takes, or a secret voke rotates: a version added
    by hand would bypass the rotation's protocol (its aliases, the services pinned to it). A
    secret is compared by what STORE reads under the name (Secret Manager maps logical names to
    ids: `prod-db-app` is `db-app` by another name)."""
    if not SECRET_NAME.fullmatch(name):
        raise UsageError(f"invalid secret name {name!r} ({SECRET_NAME_RULE})")
    resolve = getattr(store, "secret_id", lambda n: n)
    owners = {resolve(secret): owner for secret, owner in rotated_secrets(settings).items()}
    owner = owners.get(resolve(name))
    if owner is not None:
        hint = (
            f"store the key in use once with `voke rotate api-key {owner.rsplit('.', 1)[1]} --adopt`"
            if owner.startswith("rotation.api_keys.")
            else "rotate it with `voke rotate`"
        )
        raise UsageError(
            f"secret {name} holds the credential {owner} that voke rotates; not added", hint=hint
        )


def check_value(value: bytes) -> bytes:
    """VALUE without surrounding whitespace; UsageError when nothing is left or it is too big."""
    if len(value) > MAX_VALUE_BYTES:
        raise UsageError(f"the value is over {MAX_VALUE_BYTES:,} bytes (Secret Manager's limit)")
    value = value.strip()
    if not value:
        raise UsageError("no value given (on stdin, at the prompt, or with --from-file)")
    return value


def add_version(
    store: Any, name: str, value: bytes | None, *, dry_run: bool = False, force: bool = False
) -> dict[str, Any]:
    """Add VALUE as NAME's newest version and make it `current` (the one it replaces becomes
    `previous`), creating the secret if needed. A dry run (VALUE None) reads the store only.
    VALUE equal to the enabled `current` version's adds nothing (`changed` false) unless FORCE:
    a rerun would push an older version out of the kept ones and restart its disable clock."""
    try:
        meta = store.get(name)
    except NotFoundError:
        meta = None
    old = meta.aliases.get("current") if meta is not None else None
    report: dict[str, Any] = {
        "name": name, "created": meta is None, "version": None, "previous": old, "changed": False,
    }  # fmt: skip
    if dry_run or value is None:
        report["dry_run"] = True
        report["plan"] = [
            *([f"create secret {name}"] if meta is None else []),
            "add a version holding the value given and make it current"
            + (f" (version {old} becomes previous)" if old is not None else "")
            + (f", unless version {old} holds that value already" if old is not None and not force else ""),
        ]
        return report
    redact.register_payload(value)
    if meta is not None and old is not None and not force and _holds(store, meta, old, value):
        report.update(version=old, previous=meta.aliases.get("previous"), dry_run=False)
        return report
    if meta is not None and (missing := unreadable_alias(store, meta, {"current": KEPT})) is not None:
        # (refused before adding: the update naming it `previous` would be refused after, leaving
        # an enabled version no alias names, one more each rerun)
        raise missing
    if meta is None:
        store.create(name)
    version = store.add_version(name, value).version
    aliases: dict[str, int | None] = {"current": version}
    if old is not None:
        aliases["previous"] = old
    # Compare-and-swap against the `current` read above, not against whatever the store holds now:
    # a writer that moved it meanwhile (another `secrets add`) wins, and this version is disabled
    # rather than made current over a newer one (exit 5), unless the winner's holds this value
    # too (two adds of one value at once: this one changed nothing). An etag another writer
    # moved without moving `current` (its add, not yet current; its version disabled) is read
    # again: otherwise two adds at once could both lose, neither value current.
    lost = f"it kept changing: {LOOKS} looks"
    for _look in range(LOOKS):
        meta = store.get(name)
        if (now := meta.aliases.get("current")) != old:
            lost = f"version {now} became current meanwhile"
            break
        try:
            store.update(name, etag=meta.etag, aliases=aliases)
        except EtagMismatchError:
            continue  # the etag moved, `current` did not: look again
        report.update(version=version, changed=True, dry_run=False)
        return report
    store.set_state(name, version, "disabled")
    meta = store.get(name)
    if (winner := meta.aliases.get("current")) is not None and _holds(store, meta, winner, value):
        report.update(version=winner, previous=meta.aliases.get("previous"), dry_run=False)
        return report
    raise PreconditionError(
        f"secret {name} changed while its version {version} was being added ({lost}); "
        f"version {version} was disabled, not made current",
        hint=f"`voke secrets versions {name}` shows which is current; add the value again if it should be",
    ) from None


def _holds(store: Any, meta: Any, number: int, value: bytes) -> bool:
    """Whether NAME's version NUMBER is enabled and holds VALUE (compared in constant time;
    neither is ever shown)."""
    version = meta.version(number)
    if version is None or version.state != "enabled":
        return False
    return hmac.compare_digest(store.access(meta.name, str(number)), value)


# Secret Manager reads only enabled versions, and refuses an update whose aliases name a
# destroyed one (every alias is sent with each update): what each alias may be for a change to go on.
READABLE = ("enabled",)
KEPT = ("enabled", "disabled")


def unreadable_alias(
    store: Any, meta: Any, usable: Mapping[str, tuple[str, ...]] | None = None
) -> PreconditionError | None:
    """The refusal (exit 5) to go on when a version an alias names is in a state USABLE does
    not allow it (alias -> states; default: `current` enabled), naming the version, its state
    and how to make it usable; None when all are. Without it voke would act without the value
    (a login it cannot name) or stop halfway (a failover that promoted but cannot repoint)."""
    for alias, states in (usable or {"current": READABLE}).items():
        number = meta.aliases.get(alias)
        if number is None:
            continue
        version = meta.version(number)
        state = version.state if version is not None else "missing"
        if state not in states:
            return PreconditionError(
                f"secret {meta.name}: {alias} version {number} is {state.upper()}",
                hint=store.unreadable_hint(meta.name, alias, number, state),
            )
    return None
