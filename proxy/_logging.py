"""JSON-lines logging for the proxy process, with a redaction filter as the last line of defence.

One log record → one JSON object on one line: ``time`` (RFC 3339, UTC), ``level``, ``logger``,
``msg`` and every field passed through ``extra={...}``; exceptions add ``exc``. Code never logs
secrets on purpose; `RedactingFilter` replaces every known secret value (peer secret, OAuth2 client
secret, resolved secret references, URL passwords) with ``[REDACTED]`` in the message, the fields and
the traceback, in case one slips through an exception text or a third-party logger.
"""

from __future__ import annotations

import datetime
import json
import logging
import sys
from collections.abc import Iterable
from typing import Any, TextIO

REDACTED = "[REDACTED]"
_QUIET = ("aiohttp.access", "httpx", "httpcore", "botocore", "boto3", "urllib3", "kubernetes")

# Attributes every LogRecord has; anything else on a record came from `extra=` and is a field.
_STANDARD = frozenset(
    logging.LogRecord("", 0, "", 0, "", (), None).__dict__.keys()
    | {"message", "asctime", "taskName"}
)


class JsonFormatter(logging.Formatter):
    """Formats a record as one JSON object (no newlines inside: they are escaped)."""

    def format(self, record: logging.LogRecord) -> str:
        """One JSON line: time, level, logger, msg, extra fields, exception text."""
        out: dict[str, Any] = {
            "time": datetime.datetime.fromtimestamp(record.created, datetime.UTC).isoformat(
                timespec="milliseconds"
            ),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in record.__dict__.items():
            if key not in _STANDARD and not key.startswith("_"):
                out[key] = value
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            out["exc"] = record.exc_text
        return json.dumps(out, default=str, ensure_ascii=False)


class RedactingFilter(logging.Filter):
    """Replaces known secret values in a record's message, fields and exception text."""

    def __init__(self, secrets: Iterable[str]) -> None:
        super().__init__()
        # Longest first, so a secret that contains another is replaced whole. Very short values
        # would redact ordinary words and add nothing: a 1-3 character secret is no secret.
        self._secrets = sorted({s for s in secrets if len(s) >= 4}, key=len, reverse=True)

    def redact(self, text: str) -> str:
        """`text` with every known secret replaced."""
        for secret in self._secrets:
            if secret in text:
                text = text.replace(secret, REDACTED)
        return text

    def filter(self, record: logging.LogRecord) -> bool:
        """Rewrite the record in place; never drops it."""
        if not self._secrets:
            return True
        message = record.getMessage()
        record.msg, record.args = self.redact(message), ()
        if record.exc_info:
            record.exc_text = self.redact(logging.Formatter().formatException(record.exc_info))
            record.exc_info = None
        elif record.exc_text:
            record.exc_text = self.redact(record.exc_text)
        for key, value in list(record.__dict__.items()):
            if key in _STANDARD or key.startswith("_"):
                continue
            text = value if isinstance(value, str) else json.dumps(value, default=str)
            if self.redact(text) != text:
                setattr(record, key, REDACTED if not isinstance(value, str) else self.redact(text))
        return True


def configure_logging(
    *,
    debug: bool,
    secrets: Iterable[str] = (),
    stream: TextIO | None = None,
    quiet: Iterable[str] = (),
) -> logging.Handler:
    """Send every logger's records, as JSON lines, to `stream` (default stdout); return the handler.

    The redaction filter sits on the handler, so it also covers records from libraries. The
    loggers named in `quiet` stay at INFO when `debug` is on.
    """
    handler = logging.StreamHandler(stream or sys.stdout)
    handler.setFormatter(JsonFormatter())
    handler.addFilter(RedactingFilter(secrets))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(logging.DEBUG if debug else logging.INFO)
    # These libraries log one line per request at INFO and, at DEBUG, request and response
    # details (botocore logs secret values it fetched): they stay at WARNING even with DEBUG_LOG.
    for noisy in _QUIET:
        logging.getLogger(noisy).setLevel(logging.WARNING)
    for name in quiet:
        logging.getLogger(name).setLevel(logging.INFO)
    return handler
