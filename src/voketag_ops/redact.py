"""Defence in depth for secrets: every secret value voke handles is registered here,
and everything voke writes to stdout, stderr or a log passes through `redact`.

Code must still never put a secret into a message; this catches the mistake that
slips through (a library error quoting a connection string, say).
"""

from __future__ import annotations

import threading

_lock = threading.Lock()
_values: set[str] = set()
MASK = "***"
_MIN_LEN = 6  # shorter strings would mask ordinary words


def register(value: str | bytes) -> None:
    """Remember VALUE as secret so it is masked wherever it would be printed."""
    text = value.decode("utf-8", "replace") if isinstance(value, bytes) else value
    if len(text) >= _MIN_LEN:
        with _lock:
            _values.add(text)


def register_credentials_in(text: str) -> None:
    """Register the password of any `scheme://user:password@host` URL and any `password=...`
    keyword in TEXT (a command-line argument, a --db value), and each '@'- or ':'-separated
    piece of it: a password with a raw '@' is split by URL parsers, which then quote a piece
    of it as a host name in their errors."""
    scheme = text.find("://")
    if scheme >= 0 and "@" in text[scheme:]:
        userinfo = text[scheme + 3 : text.rindex("@")]
        if ":" in userinfo:  # a user name alone is no secret (masking it masked "ingest load")
            register(userinfo)
            password = userinfo.split(":", 1)[1]
            register(password)
            for piece in password.replace(":", "@").split("@"):
                register(piece)
    start = text.find("password=")
    if start >= 0:
        value = text[start + len("password=") :].split(" ", 1)[0].strip("'\"")
        register(value)


_SECRET_FIELDS = {"password", "secret", "token", "access_token", "private_key", "api_key", "key", "value"}


def register_payload(value: bytes) -> None:
    """Register a stored secret value and, when it is a JSON object, each secret-looking field
    (a bare password quoted in a message is masked too)."""
    register(value)
    try:
        import json

        doc = json.loads(value)
    except (ValueError, UnicodeDecodeError):
        return
    if isinstance(doc, dict):
        for name, field in doc.items():
            lowered = name.lower()
            if isinstance(field, str) and (
                lowered in _SECRET_FIELDS or lowered.endswith(("_secret", "password", "_token"))
            ):
                register(field)


def redact(text: str) -> str:
    """TEXT with every registered secret value replaced by ***."""
    if not _values:
        return text
    with _lock:
        values = sorted(_values, key=len, reverse=True)
    for value in values:
        if value in text:
            text = text.replace(value, MASK)
    return text


def clear() -> None:
    """Forget every registered value (tests)."""
    with _lock:
        _values.clear()
