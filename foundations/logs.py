"""Structured logging: JSON lines on stderr, one pipeline for our code and for aiohttp/faust/librdkafka.

structlog renders and stdlib `logging` transports, so library loggers come out in the same shape. Every line
is redacted (webhook tokens), library loggers never go below INFO (at DEBUG they print patient data), and
library lines quoting record bytes have them withheld."""

from __future__ import annotations

import json as _json
import json.encoder as _json_encoder
import logging
import re
import sys
import time as _time
from datetime import datetime, timezone
from typing import Any

import structlog

# `/webhooks/aestheticspro/{token}` or `/webhooks/aestheticspro/{token}/{resource}`: the token is the segment
# right after the prefix. Anything up to the next `/`, `?`, `#`, whitespace or quote is treated as the token.
# A lookbehind (not a group) so the replacement is a literal: `\1***` costs a template expansion per match.
_WEBHOOK_TOKEN = re.compile(r"(?<=/webhooks/aestheticspro/)[^/?#\s\"']+", re.IGNORECASE)
REDACTED = "***"


def redact_path(path: str) -> str:
    """Replace the token segment of a webhook path (or any text containing one) with `***`."""
    # Fast path: most strings are not webhook URLs (and one cannot be without a slash).
    if "/" not in path or "aestheticspro" not in path.lower():
        return path
    return _WEBHOOK_TOKEN.sub(REDACTED, path)


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


class _StderrLogger:
    """structlog's final logger: one rendered line to the current `sys.stderr` (line-buffered, so flushed per line).

    Our own structlog lines skip the stdlib `logging` machinery entirely: three times cheaper per line, which
    matters on the webhook hot path (one access line per request).
    """

    __slots__ = ("name",)

    def __init__(self, name: str | None = None) -> None:
        self.name = name

    def msg(self, message: str) -> None:
        sys.stderr.write(message + "\n")

    log = debug = info = warn = warning = error = critical = exception = fatal = failure = err = msg


def _logger_factory(*args: Any) -> _StderrLogger:
    return _StderrLogger(str(args[0]) if args and args[0] is not None else None)


def _add_logger_name(logger: Any, _method: str, event_dict: dict[str, Any]) -> dict[str, Any]:
    name = getattr(logger, "name", None)
    if name and "logger" not in event_dict:
        event_dict["logger"] = name
    return event_dict


# Loggers of libraries that print record contents or requests at DEBUG (see the module doc).
LIBRARY_LOGGERS = ("faust", "aiokafka", "mode", "kafka", "httpx", "httpcore", "hpack", "confluent_kafka")
_RECORD_BYTES = re.compile(r"""\b(key|value|k|v)=b(['"]).*?(?<!\\)\2""", re.DOTALL)


class LibraryLogFilter(logging.Filter):
    """On our handler: drops library records below INFO and withholds quoted record bytes in the rest."""

    def filter(self, record: logging.LogRecord) -> bool:
        name = record.name
        if not name.startswith(LIBRARY_LOGGERS):
            return True
        if record.levelno < logging.INFO:
            return False
        try:
            text = record.getMessage()
        except Exception:  # noqa: BLE001 - a library's bad format string: drop its arguments, keep the line
            text = str(record.msg)
        if "=b" in text:
            record.msg, record.args = _RECORD_BYTES.sub(r"\1=<withheld>", text), ()
        return True


_HANDLER_MARK = "_apro_sync_handler"
# State of the last configure_logging call, read by the hot-path `log_line`.
_state: dict[str, Any] = {"level": logging.WARNING, "json": True}


def configure_logging(level: str | int = "INFO", json: bool = True) -> None:
    """Route structlog and stdlib logging to stderr as JSON lines (or console text with json=False).

    structlog loggers (`structlog.get_logger(name)` or `get_logger(name)`) render directly; stdlib loggers
    (aiohttp, faust, librdkafka via confluent-kafka's `logger`) go through a root handler with the same
    processors. Idempotent: calling it again replaces our handler instead of stacking a second one.
    """
    numeric = logging.getLevelName(level.upper()) if isinstance(level, str) else level
    if not isinstance(numeric, int):
        raise ValueError(f"unknown log level {level!r}")
    _state.update(level=numeric, json=json)

    timestamper = structlog.processors.TimeStamper(fmt="iso", utc=True)
    renderer: Any = structlog.processors.JSONRenderer() if json else structlog.dev.ConsoleRenderer(colors=False)
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[structlog.stdlib.add_log_level, structlog.stdlib.add_logger_name, timestamper],
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            structlog.processors.format_exc_info,
            _redact_processor,
            renderer,
        ],
    )
    handler = _StderrHandler()
    handler.setFormatter(formatter)
    handler.addFilter(LibraryLogFilter())
    setattr(handler, _HANDLER_MARK, True)

    root = logging.getLogger()
    for old in [h for h in root.handlers if getattr(h, _HANDLER_MARK, False)]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(numeric)
    # librdkafka repeats itself at INFO; keep it at WARNING unless debugging.
    # httpx logs every request URL at INFO. The GoHighLevel client keeps PHI out of URLs (bodies only), but a URL
    # still names GoHighLevel object ids: keep them out of the logs too.
    for name in ("httpx", "httpcore"):
        logging.getLogger(name).setLevel(max(numeric, logging.WARNING))
    logging.getLogger("librdkafka").setLevel(numeric if numeric <= logging.DEBUG else max(numeric, logging.WARNING))
    for name in LIBRARY_LOGGERS:  # no DEBUG records built at all (the handler filter is the guarantee)
        logging.getLogger(name).setLevel(max(numeric, logging.INFO))

    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            _add_logger_name,
            timestamper,
            structlog.processors.StackInfoRenderer(),
            structlog.processors.format_exc_info,
            _redact_processor,
            renderer,
        ],
        logger_factory=_logger_factory,
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        cache_logger_on_first_use=True,
    )


_LEVEL_NAMES = {n: logging.getLevelName(n).lower() for n in (10, 20, 30, 40, 50)}


def _line_encoder() -> Any:
    """json.dumps(fields, default=str), minus the ~2 µs of building a C encoder on every call: built once.

    No circular-reference markers (log fields are flat values), so one encoder serves every thread.
    """
    c_make_encoder = getattr(_json_encoder, "c_make_encoder", None)
    if c_make_encoder is None:
        return _json.JSONEncoder(default=str).encode
    encoder = c_make_encoder(None, str, _json_encoder.encode_basestring_ascii, None, ": ", ", ", False, False, True)
    return lambda fields: "".join(encoder(fields, 0))


_encode_line = _line_encoder()
_stamp_second: tuple[int, str] = (-1, "")


def _utc_timestamp() -> str:
    """`2026-11-20T15:58:02.123456Z`, as structlog's TimeStamper(fmt="iso", utc=True); the date part is
    formatted once per second."""
    global _stamp_second
    sec, ns = divmod(_time.time_ns(), 1_000_000_000)
    cached, text = _stamp_second
    if sec != cached:
        text = datetime.fromtimestamp(sec, timezone.utc).isoformat()[:-6]  # drop "+00:00"
        _stamp_second = (sec, text)
    return f"{text}.{ns // 1000:06d}Z"


def log_line(name: str, event: str, level: int = logging.INFO, **fields: Any) -> None:
    """One structured line with the same shape as a structlog JSON line, for per-request hot paths.

    The generic processor chain costs tens of microseconds per line; this inlines the same steps (level filter,
    redaction, ISO UTC timestamp, JSON) for flat fields. With console output it defers to structlog.
    """
    log_fields(name, event, fields, level)


def log_fields(name: str, event: str, fields: dict[str, Any], level: int = logging.INFO) -> None:
    """`log_line` with the fields as a dict, which it takes over (adds to and redacts in place): no kwargs copy."""
    if level < _state["level"]:
        return
    if not _state["json"]:
        structlog.get_logger(name).log(level, event, **fields)
        return
    for key, value in fields.items():
        if isinstance(value, str):
            fields[key] = redact_path(value)
    fields["event"] = redact_path(event)
    fields["level"] = _LEVEL_NAMES.get(level) or logging.getLevelName(level).lower()
    fields["logger"] = name
    fields["timestamp"] = _utc_timestamp()
    sys.stderr.write(_encode_line(fields) + "\n")


json_string = _json_encoder.encode_basestring_ascii  # a str as JSON text, exactly as json.dumps writes it
_TAILS: dict[tuple[str, str, int], str] = {}


def json_members(fields: dict[str, Any]) -> str:
    """Flat fields as JSON object members (`"k": v, ` each), redacted, exactly as `log_line` renders them.

    For hot paths: render what is known early (once), then write the line with `log_members`.
    """
    if all(type(k) is str and type(v) is str for k, v in fields.items()):  # the usual case, without an encoder
        return "".join([f"{json_string(k)}: {json_string(redact_path(v))}, " for k, v in fields.items()])
    text = _encode_line({k: redact_path(v) if isinstance(v, str) else v for k, v in fields.items()})
    return text[1:-1] + ", " if len(text) > 2 else ""


def log_members(name: str, event: str, members: str, level: int = logging.INFO) -> None:
    """The line `log_line(name, event, **fields)` writes, from `members` = `json_members(fields)` (or members
    rendered the same way: redacted, JSON-escaped). The access log's per-request cost, mostly rendering, is
    ~3x lower this way than building and encoding a dict per line."""
    if level < _state["level"]:
        return
    if not _state["json"]:
        fields = _json.loads("{" + members.rstrip().rstrip(",") + "}")
        structlog.get_logger(name).log(level, event, **fields)
        return
    tail = _TAILS.get((name, event, level))
    if tail is None:
        level_name = _LEVEL_NAMES.get(level) or logging.getLevelName(level).lower()
        tail = (f'"event": {json_string(redact_path(event))}, "level": {json_string(level_name)}, '
                f'"logger": {json_string(name)}, "timestamp": "')
        if len(_TAILS) < 1000:
            _TAILS[(name, event, level)] = tail
    sys.stderr.write("{" + members + tail + _utc_timestamp() + '"}\n')


def log_enabled(level: int = logging.INFO) -> bool:
    return level >= _state["level"]


def get_logger(name: str) -> Any:
    return structlog.get_logger(name)
