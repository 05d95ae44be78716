"""The rotation webhook: a malformed URL (it carries a token) is a warning that never quotes it."""

from __future__ import annotations

import logging

from voketag_ops.adapters.webhook import post_webhook


def test_a_malformed_webhook_url_is_a_quiet_failure(caplog):
    url = "hooks.example.com/services/T0/B0/WebHookS3cretTok"  # no scheme
    with caplog.at_level(logging.WARNING):
        assert post_webhook(url, "rotation failed") is False
    assert "WebHookS3cretTok" not in caplog.text and "not sent" in caplog.text
