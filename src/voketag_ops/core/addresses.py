"""Host names, IP addresses and ports as voke shows them in a report and accepts them in
configuration: one definition for `dr status`'s connection addresses and an API's base URL."""

from __future__ import annotations

import ipaddress
import re
from typing import Any

# A host name as DNS spells it: dot-separated labels of letters, digits and inner hyphens.
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_HOST_NAME = re.compile(rf"(?!.{{254}}){_LABEL}(?:\.{_LABEL})*\.?")


def plain_host(value: Any) -> str | None:
    """VALUE if it is a plain host name or IP address, the only host a report shows; None for
    anything else (a URI or DSN in `host` can carry the password, a null, a list)."""
    if not isinstance(value, str):
        return None
    try:
        ipaddress.ip_address(value)
    except ValueError:
        return value if _HOST_NAME.fullmatch(value) else None
    return value if "%" not in value else None  # (an IPv6 scope ID may hold anything)


def plain_port(value: Any) -> int | None:
    """VALUE if it is a TCP port number (1-65535), the only port a report shows; else None."""
    return value if type(value) is int and 1 <= value <= 65535 else None
