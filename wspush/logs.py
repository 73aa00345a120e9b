"""Log lines: text or JSON, and what is worth a line at all.

At the default level wspush logs its start-up settings, state changes (Redis
subscription up or down, draining) and refusals, and nothing per message or per
accepted connection. Refusals are per connection, so a storm of them (a client retrying
a bad token in a loop) is summarised: one line per reason at most every
`REFUSAL_LOG_INTERVAL` seconds, saying how many were not shown.
"""

from __future__ import annotations

import json
import logging
import time
from contextvars import ContextVar
from typing import Any

from wspush.settings import Settings

logger = logging.getLogger("wspush")

REFUSAL_LOG_INTERVAL = 10.0
# Attributes every LogRecord has; anything else was passed with `extra=` and is data.
_STANDARD_ATTRIBUTES = frozenset(vars(logging.makeLogRecord({}))) | {"message", "asctime"}


class JSONFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, and any `extra` fields."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S") + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD_ATTRIBUTES and not key.startswith("_"):
                entry[key] = value
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


JSONFormatter.converter = time.gmtime

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def configure_logging(level: str, log_format: str = "text") -> None:
    """Log wspush's lines to stderr unless the host application already routes them."""
    root = logging.getLogger()
    if not root.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(
            JSONFormatter() if log_format == "json" else logging.Formatter(TEXT_FORMAT)
        )
        root.addHandler(handler)
    logging.getLogger("wspush").setLevel(level.upper())
    # uvicorn logs every WebSocket open and close at INFO: one line per connection is
    # noise for a push relay, so its loggers stay at WARNING unless debugging.
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logging.getLogger(name).setLevel(uvicorn_log_level(level).upper())


# Set in a connection's task when the app leaves its exchange unfinished on purpose: a
# WebSocket refused with an HTTP response, an SSE client cut for not reading.
ON_PURPOSE: ContextVar[bool] = ContextVar("wspush_unfinished_on_purpose", default=False)
UNFINISHED = frozenset(
    {
        "ASGI callable returned without completing handshake.",
        "ASGI callable returned without completing response.",
    }
)


class OnPurposeFilter(logging.Filter):
    """Drop the ERROR uvicorn logs when the app returns with an exchange unfinished, where
    wspush did that on purpose: a WebSocket refused with a denial response (complete,
    though uvicorn's stock protocols do not count it so), an SSE client cut over plain
    ASGI for not reading. wspush logs each of those itself; neither is a server error.

    The line comes from the connection's task right after the app returns, so the flag
    the app set in that task says whether this was such a case.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.msg in UNFINISHED and ON_PURPOSE.get())


def quiet_unfinished_on_purpose() -> None:
    """Install `OnPurposeFilter` on uvicorn's error logger, once per process."""
    server_logger = logging.getLogger("uvicorn.error")
    if not any(isinstance(f, OnPurposeFilter) for f in server_logger.filters):
        server_logger.addFilter(OnPurposeFilter())


def uvicorn_log_level(level: str) -> str:
    return "debug" if level == "debug" else "warning"


def log_settings(settings: Settings) -> None:
    """The effective settings, secrets redacted: one line, `name=value` pairs (and, in
    JSON, a `settings` object)."""
    shown = settings.describe()
    pairs = " ".join(f"{name}={value!r}" for name, value in shown.items())
    logger.info("wspush started: %s", pairs, extra={"settings": shown})


class RefusalLog:
    """Refusal lines, at most one per reason every `interval` seconds."""

    def __init__(self, interval: float = REFUSAL_LOG_INTERVAL) -> None:
        self.interval = interval
        self._last: dict[str, float] = {}  # reason -> when its last line was written
        self._hidden: dict[str, int] = {}  # reason -> refusals not logged since

    def refused(self, reason: str, message: str, *args: object, detail: str = "") -> None:
        """Log a refusal for `reason` (the `refusal` field); with a `detail` (one of a
        fixed set of texts, such as why a token is refused), each detail gets its own
        line every interval."""
        now = time.monotonic()
        key = f"{reason}: {detail}" if detail else reason
        last = self._last.get(key)
        if last is not None and now - last < self.interval:
            self._hidden[key] = self._hidden.get(key, 0) + 1
            return
        self._last[key] = now
        hidden = self._hidden.pop(key, 0)
        if hidden:
            message += " (and %d more refused for this reason in the last %.0f s)"
            args = (*args, hidden, now - last if last is not None else 0.0)
        logger.info(message, *args, extra={"refusal": reason})
