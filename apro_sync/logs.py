"""Structured logging: JSON lines on stderr, one pipeline for our code and for aiohttp/faust/librdkafka.

structlog renders; the stdlib `logging` module is the transport, so third-party loggers (which only know
stdlib logging) come out in the same JSON shape. Every line passes through `_redact_processor`, which blanks
the webhook token wherever a webhook URL appears, so a secret cannot leak through a library's message.
"""

from __future__ import annotations

import logging
import re
import sys
from typing import Any

import structlog

# `/webhooks/aestheticspro/{token}` or `/webhooks/aestheticspro/{token}/{resource}`: the token is the segment
# right after the prefix. Anything up to the next `/`, `?`, `#`, whitespace or quote is treated as the token.
_WEBHOOK_TOKEN = re.compile(r"(/webhooks/aestheticspro/)[^/?#\s\"']+", re.IGNORECASE)
REDACTED = "***"


def redact_path(path: str) -> str:
    """Replace the token segment of a webhook path (or any text containing one) with `***`."""
    if "aestheticspro" not in path.lower():  # fast path: most strings are not webhook URLs
        return path
    return _WEBHOOK_TOKEN.sub(r"\1" + REDACTED, path)


def _redact_processor(_logger: Any, _method: str, event_dict: dict[str, Any]) -> dict[str, Any]:
    for key, value in event_dict.items():
        if isinstance(value, str):
            event_dict[key] = redact_path(value)
    return event_dict


class _StderrHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes to whatever `sys.stderr` is at emit time (so test capture and redirected stderr both work)."""

    def __init__(self) -> None:
        logging.Handler.__init__(self)

    @property
    def stream(self) -> Any:  # type: ignore[override]
        return sys.stderr

    @stream.setter
    def stream(self, _value: Any) -> None:  # StreamHandler.setStream assigns; we always follow sys.stderr
        pass


_HANDLER_MARK = "_apro_sync_handler"


def configure_logging(level: str | int = "INFO", json: bool = True) -> None:
    """Route structlog and stdlib logging to stderr as JSON lines (or console text with json=False).

    Idempotent: calling it again replaces our handler instead of stacking a second one.
    """
    numeric = logging.getLevelName(level.upper()) if isinstance(level, str) else level
    if not isinstance(numeric, int):
        raise ValueError(f"unknown log level {level!r}")

    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    renderer: Any = structlog.processors.JSONRenderer() if json else structlog.dev.ConsoleRenderer(colors=False)
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=shared,
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            structlog.processors.format_exc_info,
            _redact_processor,
            renderer,
        ],
    )
    handler = _StderrHandler()
    handler.setFormatter(formatter)
    setattr(handler, _HANDLER_MARK, True)

    root = logging.getLogger()
    for old in [h for h in root.handlers if getattr(h, _HANDLER_MARK, False)]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(numeric)
    # aiohttp's access logger is ours (producer.server.RedactingAccessLogger); keep chatty libraries at WARNING
    # unless debugging.
    for noisy in ("librdkafka", "aiokafka", "kafka"):
        logging.getLogger(noisy).setLevel(max(numeric, logging.WARNING) if numeric > logging.DEBUG else numeric)

    structlog.configure(
        processors=[
            structlog.stdlib.filter_by_level,
            *shared,
            structlog.processors.StackInfoRenderer(),
            _redact_processor,  # here too, so in-process consumers of the records (tests, other handlers) see it
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )


def get_logger(name: str) -> Any:
    return structlog.stdlib.get_logger(name)
