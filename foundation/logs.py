"""structlog set-up: JSON lines for services, a console renderer for `wallet up`."""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import MutableMapping
from typing import Any

import structlog

REDACTED = "[redacted]"
# A field whose name contains one of these never reaches a log in clear.
_SECRET_NAMES = ("password", "secret", "token", "authorization", "api_key", "apikey", "credential")
# Secrets inside free text (an error message, a URL): a password in a URL, an API key.
_SECRET_PATTERNS = [
    (re.compile(r"(\b[a-z][a-z0-9+.-]*://[^:/@\s]+:)[^@\s]+@", re.IGNORECASE), rf"\1{REDACTED}@"),
    (re.compile(r"\b(dw_[0-9a-f]{16}_)[A-Za-z0-9_-]{43}"), rf"\1{REDACTED}"),
]


def redact(_: Any, __: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """structlog processor: blank secret fields and secrets in text, whoever logged them."""
    for name, value in event.items():
        if any(s in name.lower() for s in _SECRET_NAMES):
            event[name] = REDACTED
        elif isinstance(value, str):
            event[name] = redact_text(value)
    return event


def redact_text(text: str) -> str:
    for pattern, replacement in _SECRET_PATTERNS:
        text = pattern.sub(replacement, text)
    return text


def configure_logging(level: str = "info", fmt: str = "json") -> None:
    """Route structlog (and stdlib logging from libraries) to stderr in one format."""
    level_no = logging.getLevelNamesMapping()[level.upper()]
    renderer: structlog.typing.Processor
    if fmt == "console":
        renderer = structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
    else:
        renderer = structlog.processors.JSONRenderer()
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            redact,  # last before rendering: it sees the formatted exception text too
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(level_no),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=True,
    )
    # Libraries' stdlib logging (aiokafka's reconnects, asyncpg's pool) in the same format and
    # through the same redaction; WARNING and up only: their INFO is chatter.
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=[
                structlog.stdlib.add_logger_name,
                structlog.processors.add_log_level,
                structlog.processors.TimeStamper(fmt="iso", utc=True),
            ],
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                structlog.processors.format_exc_info,
                redact,
                renderer,
            ],
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(max(level_no, logging.WARNING))
