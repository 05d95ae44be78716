"""A versioned secret store on disk, shaped like Secret Manager.

Each secret is one JSON document under VOKE_HOME/secrets (0700): numbered immutable
versions with states, aliases, annotations and an etag. Payloads are encrypted with
Fernet (AES-128-CBC + HMAC-SHA256) under a key file VOKE_HOME/secrets.key (0600).
Every read-modify-write holds an exclusive flock and replaces the file atomically,
so concurrent voke processes never lose an update, and `update` is a true
compare-and-swap on the etag.
"""

from __future__ import annotations

import fcntl
import json
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, get_args

from voketag_ops import redact
from voketag_ops.core.times import iso
from voketag_ops.errors import ConfigError, EtagMismatchError, NotFoundError, UsageError
from voketag_ops.files import DamagedRecord, create_once, read_record, replace_json
from voketag_ops.ports import SECRET_NAME, SECRET_NAME_RULE, SecretMeta, SecretVersion, VersionState


def _now() -> str:
    return iso(datetime.now(timezone.utc))


def _not_a_secret(doc: Any) -> str | None:
    """What makes DOC no secret this store wrote (a hand edit, a disk fault), or None."""
    if not isinstance(doc, dict):
        return f"not an object ({type(doc).__name__})"
    for key in ("name", "etag", "created_at"):
        if not isinstance(doc.get(key), str):
            return f"no {key}"
    if not doc["etag"].isdecimal():
        return "etag is not a number"
    for key in ("aliases", "annotations", "versions"):
        if not isinstance(doc.get(key), list if key == "versions" else dict):
            return f"no {key}"
    if any(not isinstance(n, int) or isinstance(n, bool) for n in doc["aliases"].values()):
        return "an alias names no version number"
    if any(not isinstance(v, str) for v in doc["annotations"].values()):
        return "an annotation is not text"
    for i, v in enumerate(doc["versions"]):
        if not (
            isinstance(v, dict)
            and isinstance(v.get("version"), int)
            and not isinstance(v["version"], bool)
            and v.get("state") in get_args(VersionState)
            and isinstance(v.get("created_at"), str)
            and isinstance(v.get("payload"), str)
            and isinstance(v.get("state_changed_at", ""), str)
        ):
            return f"versions[{i}] is not a version"
    return None


class LocalSecretStore:
    """SecretStore over files in VOKE_HOME/secrets."""

    def __init__(self, home: Path) -> None:
        self.home = home
        self.dir = home / "secrets"
        self.key_file = home / "secrets.key"
        self._fernet: Any = None

    # -- plumbing -------------------------------------------------------------------
    def _cipher(self) -> Any:
        if self._fernet is None:
            from cryptography.fernet import Fernet

            self.home.mkdir(mode=0o700, parents=True, exist_ok=True)
            create_once(self.key_file, Fernet.generate_key())
            mode = self.key_file.stat().st_mode & 0o777
            if mode & 0o077:
                raise ConfigError(f"{self.key_file} is readable by others (mode {mode:o}); chmod 600 it")
            try:
                self._fernet = Fernet(self.key_file.read_bytes().strip())
            except ValueError:
                raise ConfigError(f"{self.key_file} is not a valid key file") from None
        return self._fernet

    def _path(self, name: str) -> Path:
        if not SECRET_NAME.fullmatch(name):
            raise UsageError(f"invalid secret name {name!r} ({SECRET_NAME_RULE})")
        return self.dir / f"{name}.json"

    def unreadable_hint(self, name: str, alias: str, version: int, state: str) -> str:
        """How an SRE makes ALIAS of NAME readable again: version VERSION is STATE (the local
        store is voke's own files: no command changes a version's state by hand)."""
        if state == "disabled":
            return f'enable it: set version {version}\'s "state" back to "enabled" in {self._path(name)}'
        return (
            f'its value is gone: point `{alias}` ("aliases" in {self._path(name)}) at a version '
            "that holds a working credential"
        )

    @contextmanager
    def _locked(self, name: str) -> Iterator[Path]:
        path = self._path(name)
        try:
            self.dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        except (FileExistsError, NotADirectoryError):
            raise self._not_a_directory() from None
        fd = os.open(self.dir / f".{name}.lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield path
        finally:
            os.close(fd)

    def _read(self, path: Path, name: str) -> dict[str, Any]:
        try:
            doc: dict[str, Any] = read_record(path, _not_a_secret)
        except FileNotFoundError:
            raise NotFoundError(f"secret {name!r} not found") from None
        except NotADirectoryError:
            raise self._not_a_directory() from None
        except DamagedRecord as exc:
            raise ConfigError(f"{path} is damaged: {exc}") from None
        return doc

    def _not_a_directory(self) -> ConfigError:
        return ConfigError(f"VOKE_HOME {self.home} (or its secrets/) exists and is not a directory")

    @staticmethod
    def _write(path: Path, doc: dict[str, Any]) -> None:
        replace_json(path, doc, indent=1)

    def _mutate(self, name: str, change: Callable[[dict[str, Any]], Any]) -> tuple[dict[str, Any], Any]:
        with self._locked(name) as path:
            doc = self._read(path, name)
            out = change(doc)
            doc["etag"] = str(int(doc["etag"]) + 1)
            self._write(path, doc)
            return doc, out

    @staticmethod
    def _meta(doc: dict[str, Any]) -> SecretMeta:
        aliases = {k: int(v) for k, v in doc["aliases"].items()}
        by_version: dict[int, list[str]] = {}
        for alias, number in aliases.items():
            by_version.setdefault(number, []).append(alias)
        versions = tuple(
            SecretVersion(
                version=v["version"],
                state=v["state"],
                created_at=v["created_at"],
                aliases=tuple(sorted(by_version.get(v["version"], []))),
                state_changed_at=v.get("state_changed_at"),
            )
            for v in doc["versions"]
        )
        return SecretMeta(
            name=doc["name"],
            etag=doc["etag"],
            created_at=doc["created_at"],
            versions=versions,
            aliases=aliases,
            annotations=dict(doc["annotations"]),
        )

    # -- SecretStore ---------------------------------------------------------------------
    def list(self) -> list[SecretMeta]:
        if not self.dir.is_dir():
            return []
        return [self.get(p.stem) for p in sorted(self.dir.glob("*.json")) if not p.name.startswith(".")]

    def get(self, name: str) -> SecretMeta:
        return self._meta(self._read(self._path(name), name))

    def exists(self, name: str) -> bool:
        return self._path(name).is_file()

    def create(self, name: str) -> SecretMeta:
        with self._locked(name) as path:
            if not path.exists():
                self._write(
                    path,
                    {
                        "name": name,
                        "etag": "1",
                        "created_at": _now(),
                        "aliases": {},
                        "annotations": {},
                        "versions": [],
                    },
                )
            return self._meta(self._read(path, name))

    def add_version(self, name: str, payload: bytes) -> SecretVersion:
        token = self._cipher().encrypt(payload).decode("ascii")

        def change(doc: dict[str, Any]) -> int:
            number = max((v["version"] for v in doc["versions"]), default=0) + 1
            doc["versions"].append(
                {"version": number, "state": "enabled", "created_at": _now(), "payload": token}
            )
            return number

        doc, number = self._mutate(name, change)
        return next(v for v in self._meta(doc).versions if v.version == number)

    def access(self, name: str, version: int | str) -> bytes:
        doc = self._read(self._path(name), name)
        number = self._resolve(doc, version)
        entry = next((v for v in doc["versions"] if v["version"] == number), None)
        if entry is None:
            raise NotFoundError(f"secret {name!r} has no version {version}")
        if entry["state"] != "enabled":
            raise NotFoundError(f"secret {name!r} version {number} is {entry['state']}")
        from cryptography.fernet import InvalidToken

        try:
            value = self._cipher().decrypt(entry["payload"].encode("ascii"))
        except InvalidToken:
            raise ConfigError(
                f"secret {name!r} version {number} cannot be decrypted with {self.key_file}"
            ) from None
        redact.register_payload(value)
        return value

    @staticmethod
    def _resolve(doc: dict[str, Any], version: int | str) -> int:
        if isinstance(version, int):
            return version
        if version.isdigit():
            return int(version)
        if version == "latest":
            # Secret Manager's `latest` is the newest version even when disabled; voke never reads it.
            raise UsageError("voke never reads `latest`; name a version number or an alias")
        if version not in doc["aliases"]:
            raise NotFoundError(f"secret {doc['name']!r} has no alias {version!r}")
        return int(doc["aliases"][version])

    def update(
        self,
        name: str,
        *,
        etag: str,
        aliases: dict[str, int | None] | None = None,
        annotations: dict[str, str | None] | None = None,
    ) -> SecretMeta:
        def change(doc: dict[str, Any]) -> None:
            if doc["etag"] != etag:
                raise EtagMismatchError(f"secret {name!r} changed underneath (etag {etag} != {doc['etag']})")
            numbers = {v["version"]: v for v in doc["versions"]}
            for alias, number in (aliases or {}).items():
                if number is None:
                    doc["aliases"].pop(alias, None)
                elif number not in numbers or numbers[number]["state"] == "destroyed":
                    raise NotFoundError(f"secret {name!r} has no usable version {number} for alias {alias!r}")
                else:
                    doc["aliases"][alias] = number
            for key, value in (annotations or {}).items():
                if value is None:
                    doc["annotations"].pop(key, None)
                else:
                    doc["annotations"][key] = value
            if len(json.dumps(doc["annotations"])) > 16 * 1024:
                raise UsageError("annotations exceed 16 KiB")

        doc, _ = self._mutate(name, change)
        return self._meta(doc)

    def set_state(self, name: str, version: int, state: VersionState) -> SecretVersion:
        def change(doc: dict[str, Any]) -> None:
            entry = next((v for v in doc["versions"] if v["version"] == version), None)
            if entry is None:
                raise NotFoundError(f"secret {name!r} has no version {version}")
            if entry["state"] == "destroyed" and state != "destroyed":
                raise UsageError(f"secret {name!r} version {version} is destroyed and cannot be {state}")
            if entry["state"] != state:
                entry["state"] = state
                entry["state_changed_at"] = _now()
            if state == "destroyed":
                entry["payload"] = ""
                for alias in [a for a, n in doc["aliases"].items() if n == version]:
                    del doc["aliases"][alias]

        doc, _ = self._mutate(name, change)
        return next(v for v in self._meta(doc).versions if v.version == version)
