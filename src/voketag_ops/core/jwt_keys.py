"""JWT signing keyring: keys, RFC 7638 `kid`s, JWS compact tokens and the keyring's
publish-before-sign transitions. Pure: time is passed in; randomness only in key
generation.

A keyring holds up to three keys: `next` (published in the JWKS, not yet signing),
`current` (signs) and `previous` (public part only, kept in the JWKS until tokens it
signed have expired). A rotation first publishes `next`; once verifiers have had
`verifier_refresh_seconds` to fetch the JWKS, a second rotation promotes it; an
emergency rotation replaces everything with a fresh key that signs at once.

A new key (published or emergency) is made with the algorithm asked for, which may differ
from the other keys' (an algorithm migration, publish-before-sign like any rotation): every
key carries its own `alg`, and signing, verifying, the JWKS and the kid go by it.
"""

from __future__ import annotations

import base64
import hashlib
import json
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Literal

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature, encode_dss_signature

from voketag_ops.core.rotation import parse_iso
from voketag_ops.core.times import iso

Algorithm = Literal["ES256", "RS256", "EdDSA"]
Action = Literal["publish", "promote", "wait", "emergency"]
KEYRING_TYPE = "voke-jwt-keyring"
CLOCK_SKEW = timedelta(seconds=60)  # verifiers' clocks may run this far apart


class TokenError(ValueError):
    """A token does not verify (unknown kid, bad signature, expired, malformed)."""


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64url_decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _int_b64(value: int, length: int | None = None) -> str:
    length = length or max(1, (value.bit_length() + 7) // 8)
    return b64url(value.to_bytes(length, "big"))


def _b64_int(text: str) -> int:
    return int.from_bytes(b64url_decode(text), "big")


# -- keys -----------------------------------------------------------------------------------
def _load_private(pem: str) -> Any:
    return serialization.load_pem_private_key(pem.encode("ascii"), password=None)


def public_jwk_of(private_key: Any) -> dict[str, str]:
    """The public JWK (RFC 7517) of a cryptography private key."""
    if isinstance(private_key, ec.EllipticCurvePrivateKey):
        numbers = private_key.public_key().public_numbers()
        return {"kty": "EC", "crv": "P-256", "x": _int_b64(numbers.x, 32), "y": _int_b64(numbers.y, 32)}
    if isinstance(private_key, rsa.RSAPrivateKey):
        pub = private_key.public_key().public_numbers()
        return {"kty": "RSA", "n": _int_b64(pub.n), "e": _int_b64(pub.e)}
    if isinstance(private_key, ed25519.Ed25519PrivateKey):
        raw = private_key.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )
        return {"kty": "OKP", "crv": "Ed25519", "x": b64url(raw)}
    raise ValueError(f"unsupported key type {type(private_key).__name__}")


REQUIRED_MEMBERS = {"EC": ("crv", "kty", "x", "y"), "RSA": ("e", "kty", "n"), "OKP": ("crv", "kty", "x")}


def thumbprint(jwk: dict[str, Any]) -> str:
    """RFC 7638 JWK thumbprint (SHA-256, base64url): the required members, sorted, no spaces."""
    members = {k: jwk[k] for k in REQUIRED_MEMBERS[jwk["kty"]]}
    canonical = json.dumps(members, separators=(",", ":"), sort_keys=True).encode("utf-8")
    return b64url(hashlib.sha256(canonical).digest())


def generate_key(algorithm: Algorithm, now: datetime) -> dict[str, Any]:
    """A fresh signing key: {kid, alg, private_key (PKCS#8 PEM), public_jwk, created_at}."""
    private: Any
    if algorithm == "ES256":
        private = ec.generate_private_key(ec.SECP256R1())
    elif algorithm == "RS256":
        private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    elif algorithm == "EdDSA":
        private = ed25519.Ed25519PrivateKey.generate()
    else:
        raise ValueError(f"unsupported algorithm {algorithm!r}")
    pem = private.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode("ascii")
    jwk = public_jwk_of(private)
    return {
        "kid": thumbprint(jwk),
        "alg": algorithm,
        "private_key": pem,
        "public_jwk": jwk,
        "created_at": iso(now),
    }


def check_key(key: dict[str, Any]) -> None:
    """Raise ValueError unless KEY's private key, public JWK and kid belong together."""
    jwk = public_jwk_of(_load_private(key["private_key"]))
    if jwk != key["public_jwk"]:
        raise ValueError(f"key {key['kid']}: the public JWK does not match the private key")
    if thumbprint(jwk) != key["kid"]:
        raise ValueError(f"key {key['kid']}: the kid is not the key's RFC 7638 thumbprint")


# -- tokens ---------------------------------------------------------------------------------
def sign(key: dict[str, Any], claims: dict[str, Any]) -> str:
    """A JWS compact token of CLAIMS signed with KEY, its header naming KEY's kid."""
    header = {"alg": key["alg"], "typ": "JWT", "kid": key["kid"]}
    signing_input = (
        b64url(json.dumps(header, separators=(",", ":")).encode())
        + "."
        + b64url(json.dumps(claims, separators=(",", ":")).encode())
    ).encode("ascii")
    private = _load_private(key["private_key"])
    if key["alg"] == "ES256":
        r, s = decode_dss_signature(private.sign(signing_input, ec.ECDSA(hashes.SHA256())))
        signature = r.to_bytes(32, "big") + s.to_bytes(32, "big")
    elif key["alg"] == "RS256":
        signature = private.sign(signing_input, padding.PKCS1v15(), hashes.SHA256())
    else:
        signature = private.sign(signing_input)
    return signing_input.decode("ascii") + "." + b64url(signature)


def _public_key(jwk: dict[str, Any]) -> Any:
    if jwk["kty"] == "EC":
        return ec.EllipticCurvePublicNumbers(
            _b64_int(jwk["x"]), _b64_int(jwk["y"]), ec.SECP256R1()
        ).public_key()
    if jwk["kty"] == "RSA":
        return rsa.RSAPublicNumbers(_b64_int(jwk["e"]), _b64_int(jwk["n"])).public_key()
    if jwk["kty"] == "OKP":
        return ed25519.Ed25519PublicKey.from_public_bytes(b64url_decode(jwk["x"]))
    raise TokenError(f"unsupported key type {jwk['kty']}")


def verify(jwks: dict[str, Any], token: str, now: datetime) -> dict[str, Any]:
    """The claims of TOKEN if a key of JWKS (by kid) signed it and it has not expired."""
    try:
        head_b64, claims_b64, sig_b64 = token.split(".")
        header = json.loads(b64url_decode(head_b64))
        claims = json.loads(b64url_decode(claims_b64))
        signature = b64url_decode(sig_b64)
    except ValueError:
        raise TokenError("malformed token") from None
    jwk = next((k for k in jwks.get("keys", []) if k.get("kid") == header.get("kid")), None)
    if jwk is None:
        raise TokenError(f"unknown kid {header.get('kid')!r}")
    if header.get("alg") != jwk.get("alg"):
        raise TokenError("algorithm does not match the key")
    public = _public_key(jwk)
    signing_input = f"{head_b64}.{claims_b64}".encode("ascii")
    try:
        if jwk["alg"] == "ES256":
            if len(signature) != 64:
                raise TokenError("bad signature")
            der = encode_dss_signature(
                int.from_bytes(signature[:32], "big"), int.from_bytes(signature[32:], "big")
            )
            public.verify(der, signing_input, ec.ECDSA(hashes.SHA256()))
        elif jwk["alg"] == "RS256":
            public.verify(signature, signing_input, padding.PKCS1v15(), hashes.SHA256())
        else:
            public.verify(signature, signing_input)
    except InvalidSignature:
        raise TokenError("bad signature") from None
    exp = claims.get("exp")
    if exp is not None and now.timestamp() >= float(exp) + CLOCK_SKEW.total_seconds():
        raise TokenError("token expired")
    return claims


# -- the keyring ------------------------------------------------------------------------------
@dataclass(frozen=True)
class Keyring:
    """next / current / previous. `previous` has no private key, only its public JWK.
    ALGORITHM is that of `current` (the signing key); `next` and `previous` may have another."""

    algorithm: Algorithm
    current: dict[str, Any]
    next: dict[str, Any] | None = None
    previous: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "type": KEYRING_TYPE,
            "algorithm": self.algorithm,
            "next": self.next,
            "current": self.current,
            "previous": self.previous,
        }

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> Keyring:
        if raw.get("type") != KEYRING_TYPE or not isinstance(raw.get("current"), dict):
            raise ValueError("not a voke JWT keyring")
        return cls(raw["algorithm"], raw["current"], raw.get("next"), raw.get("previous"))

    def kids(self) -> list[str]:
        return [k["kid"] for k in (self.next, self.current, self.previous) if k]

    def check(self) -> None:
        """Raise ValueError unless every key is consistent and the signing keys sign and verify."""
        probe = {"sub": "voke-keyring-check", "exp": 2**31}
        for key in (self.current, self.next):
            if key is None:
                continue
            check_key(key)
            token = sign(key, probe)
            try:
                verify(
                    {"keys": [dict(key["public_jwk"], kid=key["kid"], alg=key["alg"])]},
                    token,
                    parse_iso(key["created_at"]),
                )
            except TokenError as exc:
                raise ValueError(f"key {key['kid']}: a probe token does not verify ({exc})") from None
        if self.previous is not None and thumbprint(self.previous["public_jwk"]) != self.previous["kid"]:
            raise ValueError(f"previous key {self.previous['kid']}: the kid is not its thumbprint")

    def previous_until(
        self, became_current_at: datetime | None = None, lifetime: timedelta | None = None
    ) -> datetime | None:
        """When `previous` leaves the JWKS: its stored expiry, or later if the current key
        became current later than planned (a resumed rotation)."""
        if self.previous is None:
            return None
        until = parse_iso(self.previous["expires_at"])
        if became_current_at is not None and lifetime is not None:
            until = max(until, became_current_at + lifetime + CLOCK_SKEW)
        return until

    def jwks(
        self, now: datetime, *, became_current_at: datetime | None = None, lifetime: timedelta | None = None
    ) -> dict[str, Any]:
        """The public JWKS: next, current, and previous until its tokens have expired."""
        keys = []
        for key in (self.current, self.next):
            if key is not None:
                keys.append({**key["public_jwk"], "kid": key["kid"], "alg": key["alg"], "use": "sig"})
        until = self.previous_until(became_current_at, lifetime)
        if self.previous is not None and until is not None and now < until:
            prev = self.previous
            keys.append({**prev["public_jwk"], "kid": prev["kid"], "alg": prev["alg"], "use": "sig"})
        return {"keys": keys}


def new_keyring(algorithm: Algorithm, now: datetime) -> Keyring:
    key = generate_key(algorithm, now)
    key["signing_since"] = iso(now)
    return Keyring(algorithm, key)


def decide(
    ring: Keyring,
    *,
    published_at: datetime,
    now: datetime,
    refresh: timedelta,
    emergency: bool = False,
    lifetime: timedelta | None = None,
) -> tuple[Action, datetime]:
    """What a rotation of RING does now, and from when.

    publish: add `next`. promote: `next` has been published for REFRESH (and the old
    `previous` has left the JWKS, so dropping it logs nobody out). wait: not yet; the
    datetime says when. emergency: a fresh key signs at once. PUBLISHED_AT is when RING became
    current; with LIFETIME, `previous` is kept as long as `jwks` keeps it (a resumed promotion
    made it current later than its stored expiry assumes).
    """
    if emergency:
        return "emergency", now
    if ring.next is None:
        return "publish", now
    ready = published_at + refresh
    until = ring.previous_until(published_at, lifetime)
    if until is not None:
        ready = max(ready, until)
    action: Action = "promote" if now >= ready else "wait"
    if ready.microsecond:  # shown in whole seconds, rounded up: never earlier than the wait
        ready = ready.replace(microsecond=0) + timedelta(seconds=1)
    return action, ready


def publish(
    ring: Keyring,
    now: datetime,
    *,
    algorithm: Algorithm,
    became_current_at: datetime | None = None,
    lifetime: timedelta | None = None,
) -> Keyring:
    """A new ALGORITHM `next` beside `current` (of whatever algorithm); a `previous` whose
    tokens have all expired is dropped (by the same reckoning as `jwks`: BECAME_CURRENT_AT and
    LIFETIME extend its stored expiry)."""
    previous = ring.previous
    until = ring.previous_until(became_current_at, lifetime)
    if previous is not None and until is not None and now >= until:
        previous = None
    return Keyring(ring.algorithm, ring.current, generate_key(algorithm, now), previous)


def promote(ring: Keyring, now: datetime, lifetime: timedelta) -> Keyring:
    """`next` signs; the old `current` keeps only its public part, for LIFETIME (+ skew)."""
    if ring.next is None:
        raise ValueError("no next key to promote")
    old = ring.current
    previous = {
        "kid": old["kid"],
        "alg": old["alg"],
        "public_jwk": old["public_jwk"],
        "expires_at": iso(now + lifetime + CLOCK_SKEW),
    }
    return Keyring(ring.next["alg"], {**ring.next, "signing_since": iso(now)}, None, previous)


def emergency(now: datetime, *, algorithm: Algorithm) -> Keyring:
    """The keyring that replaces a compromised one: a fresh ALGORITHM key (the configured one,
    not the old ring's) that signs at once, and no other key (forced logouts)."""
    return new_keyring(algorithm, now)
