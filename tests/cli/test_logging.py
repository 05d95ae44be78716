"""stderr logging: JSON lines when not a terminal (or --log-format json), secrets masked."""

from __future__ import annotations

import io
import json

from voketag_ops import redact
from voketag_ops.logs import get_logger, setup_logging


def test_json_lines_when_not_a_tty_and_secrets_masked():
    stream = io.StringIO()
    setup_logging(fmt="auto", level="info", stream=stream)
    redact.register("hunter2-secret")
    get_logger("voketag_ops.test").info("connecting with %s", "hunter2-secret")
    line = json.loads(stream.getvalue().splitlines()[-1])
    assert line["level"] == "info" and line["logger"] == "voke.test"
    assert line["msg"] == "connecting with ***" and line["ts"].endswith("Z")


def test_human_format_and_level_filter():
    stream = io.StringIO()
    setup_logging(fmt="human", level="warning", stream=stream)
    log = get_logger("voketag_ops.x")
    log.info("hidden")
    log.warning("shown")
    assert stream.getvalue() == "voke: warning: shown\n"


def test_log_flags_reach_the_logger(voke):
    result = voke("config", "show", "--log-format", "json", "--log-level", "debug", "--json")
    assert result.exit_code == 0
    shown = result.json["result"]["settings"]
    assert shown["log_format"] == {"value": "json", "source": "flag"}
    assert shown["log_level"] == {"value": "debug", "source": "flag"}


def test_psycopg_warnings_go_through_the_same_handler_redacted():
    import logging

    stream = io.StringIO()
    setup_logging(fmt="json", level="info", stream=stream)
    redact.register("hunter2-secret")
    logging.getLogger("psycopg").warning("error ignored in rollback: password hunter2-secret")
    line = json.loads(stream.getvalue().splitlines()[-1])
    assert line["logger"] == "psycopg" and line["msg"] == "error ignored in rollback: password ***"


def test_psycopg_warnings_are_not_shown_at_the_default_level():
    """They are errors psycopg ignored while voke reports the one that caused them (a lost
    connection mid-COPY): off a terminal, a failed command is one line."""
    import logging

    stream = io.StringIO()
    setup_logging(fmt="json", level="warning", stream=stream)
    logging.getLogger("psycopg").warning(
        "error ignored terminating <psycopg.Copy [BAD]>: the connection is lost"
    )
    logging.getLogger("psycopg").error("an error of its own")
    assert [json.loads(x)["msg"] for x in stream.getvalue().splitlines()] == ["an error of its own"]


def test_a_warning_a_thread_error_and_another_librarys_record_are_redacted_lines(tmp_path):
    """What the voke process routes through its logger besides its own records (`route_strays`,
    installed by the console script, not in-process where the test runner owns the hooks)."""
    import subprocess
    import sys

    secret = "s3cret-Value-9f8e7d"
    script = f"""
import logging, threading, warnings
from voketag_ops import redact
from voketag_ops.logs import route_strays, setup_logging
route_strays()
setup_logging(fmt="human", level="warning")
redact.register({secret!r})
warnings.warn("connecting to postgresql://u:{secret}@db/x")
def boom():
    raise RuntimeError("password={secret}")
t = threading.Thread(target=boom, name="copy")
t.start(); t.join()
logging.getLogger("some.library").warning("retrying with %s", {secret!r})
logging.getLogger("some.library").info("not shown at warning")
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert secret not in done.stderr + done.stdout
    lines = done.stderr.splitlines()
    assert lines == [
        "voke: warning: UserWarning: connecting to postgresql://u:***@db/x (<string>:8)",
        "voke: error: copy stopped on an error: RuntimeError: password=***",
        "voke: warning: retrying with ***",
    ], done.stderr


def test_a_long_piece_of_a_url_password_between_slashes_is_masked_a_short_one_is_not():
    # Defence behind `ingest`'s refusal of such a URL: psycopg logs the host libpq read.
    redact.register_credentials_in("postgresql://owner1:S3cr3t@Gr33nTeaPw/x@127.0.0.1:1/db1")
    text = "failed to resolve host 'Gr33nTeaPw' for /x/db1"
    assert redact.redact(text) == "failed to resolve host '***' for /x/db1"
