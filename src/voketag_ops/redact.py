"""Defence in depth for secrets: every secret value voke handles is registered here,
and everything voke writes to stdout, stderr or a log passes through `redact`.

Code must still never put a secret into a message; this catches the mistake that
slips through (a library error quoting a connection string, say).
"""

from __future__ import annotations

import re
import threading

_lock = threading.Lock()
_values: set[str] = set()
MASK = "***"
_MIN_LEN = 6  # shorter strings would mask ordinary words


def register(value: str | bytes) -> None:
    """Remember VALUE as secret so it is masked wherever it would be printed."""
    text = value.decode("utf-8", "replace") if isinstance(value, bytes) else value
    if len(text) >= _MIN_LEN:
        _remember(text)


def register_credentials_in(text: str) -> None:
    """Register the password of any `scheme://user:password@host` URL and any conninfo
    `password = value` keyword in TEXT (a command-line argument, a --db value)."""
    _register_url_password(text)
    for match in _PASSWORD_KEYWORD.finditer(text):
        group = next(g for g in ("quoted", "dquoted", "bare") if match.group(g) is not None)
        begin, end = match.span(group)
        _remember_known(text, begin, end)  # as the user wrote it (as an error quoting the argument shows it)
        if end - begin < _MIN_LEN:  # too short alone: with its keyword, as the argument shows it
            _remember(text[match.start() : match.end()])
        unescaped = _UNESCAPE.sub(r"\1", text[begin:end])  # as libpq reads it
        if len(unescaped) >= _MIN_LEN:
            _remember(unescaped)
        if group == "bare" and "&" in text[begin:end]:  # a URL query: `?password=...&sslmode=...`
            _remember_known(text, begin, text.index("&", begin))


# libpq's `keyword = value`: spaces around '='; a value in single quotes (\' and \\ escaped) that
# may hold spaces, or else up to the next space. Also `?password=` in a URL's query, and a
# double-quoted value (a shell user's habit). An unterminated quote runs to the end.
_PASSWORD_KEYWORD = re.compile(
    r"password\s*=\s*(?:'(?P<quoted>(?:[^'\\]|\\.)*)'?|\"(?P<dquoted>[^\"]*)\"?|(?P<bare>(?:[^\s\\]|\\.)+))"
)
_UNESCAPE = re.compile(r"\\(.)")


def _register_url_password(text: str) -> None:
    """Register the password of a `scheme://user:password@host` URL in TEXT: everything between
    `user:` and the last '@' (a raw '@' in a password ends the userinfo at the last one for most
    parsers, at the first for libpq, which then names the rest as the host in its errors), and
    each '@'- or ':'-separated piece of it, and each head and tail at such a separator; and each
    long enough piece between any URL delimiters."""
    scheme = text.find("://")
    at = text.rfind("@", scheme + 3) if scheme >= 0 else -1
    colon = text.find(":", scheme + 3, at) if at >= 0 else -1
    if colon < 0:  # a user name alone is no secret (masking it masked "ingest load")
        return
    first = colon + 1  # the password is text[first:at]
    _remember_known(text, scheme + 3, at)
    _remember_known(text, first, at)
    cuts = [first - 1] + [i for i in range(first, at) if text[i] in "@:"] + [at]
    for i, cut in enumerate(cuts[1:-1], 1):
        _remember_known(text, first, cut)  # a parser that ends the password here
        _remember_known(text, cut + 1, at)  # and names the rest as a host or a port
        _remember_known(text, cuts[i - 1] + 1, cut)
    _remember_known(text, cuts[-2] + 1, at)
    # libpq may also end a host or database name at '/', '?' or '#' inside the password (and
    # psycopg logs its reading): each such piece too, but only one long enough alone; beside
    # these separators a short one would mask ordinary paths ("/x") and queries.
    for piece in re.split(r"[@:/?#]", text[first:at]):
        if len(piece) >= _MIN_LEN:
            _remember(piece)


def _remember_known(text: str, begin: int, end: int) -> None:
    """Register text[BEGIN:END], known to be (part of) a password: alone when it is long enough
    not to mask ordinary words, else only with a URL separator ('@' or ':') beside it, as a
    parser quoting the URL shows it (a bare "x9" would mask every "x9" in the output, a "1"
    would break a --json document, and "voke " or '"ok' would mask ordinary text too)."""
    if end - begin >= _MIN_LEN:
        _remember(text[begin:end])
    elif end > begin:
        if begin > 0 and text[begin - 1] in _URL_SEPARATORS:
            _remember(text[begin - 1 : end])
        if end < len(text) and text[end] in _URL_SEPARATORS:
            _remember(text[begin : end + 1])


_URL_SEPARATORS = "@:"


def _remember(text: str | None) -> None:
    """TEXT, and TEXT as a quoting shows it: repr() (Click's error for a file argument) and a
    JSON string double its backslashes and escape its quotes."""
    if text:
        import json

        forms = {text, text.replace("\\", "\\\\"), json.dumps(text, ensure_ascii=False)[1:-1]}
        forms.add(repr(text)[1:-1])
        with _lock:
            _values.update(f for f in forms if f)


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
