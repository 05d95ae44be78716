"""Logging to stderr: human lines on a terminal, JSON lines otherwise (or --log-format json).

Every record passes through `redact` so a registered secret can never reach a log.
"""

from __future__ import annotations

import json
import logging
import sys
import threading
import warnings
from datetime import UTC, datetime
from typing import TextIO

from voketag_ops.output import json_for
from voketag_ops.redact import redact

LOGGER_NAME = "voke"


class _JsonFormatter(logging.Formatter):
    def __init__(self, encoding: str | None) -> None:
        super().__init__()
        self.encoding = encoding  # the stream's: a line is escaped as it can take it

    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, object] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat().replace("+00:00", "Z"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": redact(record.getMessage()),
        }
        if record.exc_info and record.levelno >= logging.ERROR:
            doc["exc_type"] = record.exc_info[0].__name__ if record.exc_info[0] else None
        audit = getattr(record, "audit", None)  # an audit entry (sanitized, no secret values)
        if audit is not None:
            doc["audit"] = audit
        return json_for(redact(json.dumps(doc, ensure_ascii=False)), self.encoding)


class _HumanFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return redact(f"voke: {record.levelname.lower()}: {record.getMessage()}")


def setup_logging(*, fmt: str = "auto", level: str = "warning", stream: TextIO | None = None) -> None:
    """Configure the `voke` logger once per invocation (idempotent)."""
    stream = stream or sys.stderr
    if fmt == "auto":
        try:
            fmt = "human" if stream.isatty() else "json"
        except (AttributeError, ValueError):
            fmt = "json"
    handler = logging.StreamHandler(stream)
    handler.setFormatter(
        _JsonFormatter(getattr(stream, "encoding", None)) if fmt == "json" else _HumanFormatter()
    )
    # psycopg's own warnings (e.g. an error ignored in a rollback after Ctrl-C) would reach
    # stderr through logging's last resort: raw, in no format of ours and not redacted. They
    # are mostly errors it ignored while another one, which voke reports, was on its way (a
    # lost connection mid-COPY), or a cancel that failed after Ctrl-C: shown from --log-level
    # info down, so a failed command off a terminal stays one line.
    wanted = getattr(logging, level.upper())
    for name, threshold in (
        (LOGGER_NAME, wanted),
        ("psycopg", wanted if wanted < logging.WARNING else max(wanted, logging.ERROR)),
    ):
        logger = logging.getLogger(name)
        for old in list(logger.handlers):
            logger.removeHandler(old)
        logger.addHandler(handler)
        logger.setLevel(threshold)
        logger.propagate = False


class _ToVoke(logging.Handler):
    """logging's last resort (a record of a logger with no handler anywhere: another library's):
    handled by the `voke` logger's handlers, so redacted and in the run's format."""

    def __init__(self, fallback: logging.Handler | None) -> None:
        super().__init__(logging.WARNING)
        self.fallback = fallback

    def emit(self, record: logging.LogRecord) -> None:
        handlers = logging.getLogger(LOGGER_NAME).handlers
        for handler in handlers or ([self.fallback] if self.fallback else []):
            if record.levelno >= handler.level:
                handler.handle(record)


def route_strays() -> None:
    """For the `voke` process (not for tests, whose runner owns these hooks): what else reaches
    stderr goes through the `voke` logger, redacted: another library's record with no handler
    (logging's last resort wrote it raw), a Python warning, and an exception that ends a
    background thread (the default hook printed its traceback, which could quote a connection
    string), as one line."""
    logging.lastResort = _ToVoke(logging.lastResort)

    def show_warning(
        message: Warning | str,
        category: type[Warning],
        filename: str,
        lineno: int,
        file: TextIO | None = None,
        line: str | None = None,
    ) -> None:
        logging.getLogger(f"{LOGGER_NAME}.warnings").warning(
            "%s: %s (%s:%s)", category.__name__, message, filename, lineno
        )

    def thread_failed(args: threading.ExceptHookArgs) -> None:
        if args.exc_type is SystemExit:
            return
        name = args.thread.name if args.thread is not None else "a thread"
        logging.getLogger(f"{LOGGER_NAME}.threads").error(
            "%s stopped on an error: %s: %s", name, args.exc_type.__name__, args.exc_value
        )

    warnings.showwarning = show_warning
    threading.excepthook = thread_failed


def get_logger(name: str) -> logging.Logger:
    """A child of the `voke` logger (pass __name__)."""
    short = name.removeprefix("voketag_ops.")
    return logging.getLogger(f"{LOGGER_NAME}.{short}")
