"""A Slack-compatible incoming webhook: POST {"text": ...} as JSON.

Notifications are best effort: a short timeout, and a failure is logged (without the
URL, which carries the webhook's token) and never raised. The text passes through
`redact` on the way out.
"""

from __future__ import annotations

import http.client
import json
import urllib.error
import urllib.request

from voketag_ops.logs import get_logger
from voketag_ops.redact import redact

log = get_logger(__name__)


def post_webhook(url: str, text: str, *, timeout: float = 3.0) -> bool:
    """Send TEXT; True when the webhook answered 2xx."""
    body = json.dumps({"text": redact(text)}).encode("utf-8")
    try:  # (the URL carries a token: no message here may quote it, a malformed one included)
        request = urllib.request.Request(
            url,
            data=body,
            method="POST",
            headers={"Content-Type": "application/json", "User-Agent": "voketag-ops"},
        )
        with urllib.request.urlopen(request, timeout=timeout) as resp:
            resp.read()
            return 200 <= resp.status < 300
    except urllib.error.HTTPError as exc:
        log.warning("rotation notification refused by the webhook (HTTP %s)", exc.code)
    except (OSError, ValueError, http.client.HTTPException) as exc:
        log.warning("rotation notification not sent (%s)", type(exc).__name__)
    return False
