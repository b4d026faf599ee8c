"""GoHighLevel API errors: transient (retry, then pause the sink) or permanent (dead-letter the event).

A reason ends up in logs and dead-letter headers, so it carries only the status, the endpoint template and,
when it echoes nothing from the request, GoHighLevel's own message, cut to 160 characters."""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any

_MAX_MESSAGE = 160
_EMAIL = re.compile(r"[^\s@]+@[^\s@]+")
_DIGITS = re.compile(r"\d[\d\s().+-]{5,}\d")  # phone numbers, dates of birth, ids typed as numbers


class GhlError(Exception):
    """Base class. `reason` is safe to log: status, endpoint template and a sanitised API message only."""

    def __init__(self, reason: str, *, status: int | None = None, endpoint: str | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.status = status
        self.endpoint = endpoint


class GhlTransientError(GhlError):
    """429, 5xx, 408, timeouts and connection errors: worth retrying; after the last attempt the sink pauses."""


class GhlRateLimited(GhlTransientError):
    """429 Too Many Requests. `retry_after` (seconds) when the API sent a Retry-After header."""

    def __init__(self, reason: str, *, status: int | None = 429, endpoint: str | None = None,
                 retry_after: float | None = None) -> None:
        super().__init__(reason, status=status, endpoint=endpoint)
        self.retry_after = retry_after


class GhlPermanentError(GhlError):
    """400, 401, 403, 404, 422 and other 4xx: retrying cannot help; the event goes to the dead-letter topic."""


def is_transient_status(status: int) -> bool:
    return status == 429 or status == 408 or status >= 500


def _strings(value: Any) -> Iterable[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, Mapping):
        for item in value.values():
            yield from _strings(item)
    elif isinstance(value, (list, tuple)):
        for item in value:
            yield from _strings(item)
    elif value is not None and not isinstance(value, bool):
        yield str(value)


def safe_api_message(payload: Any, request_body: Any = None) -> str | None:
    """GHL's `message` (a string or a list of strings) if it cannot carry PHI from the request, else None."""
    if not isinstance(payload, Mapping):
        return None
    raw = payload.get("message")
    if isinstance(raw, list):
        raw = "; ".join(str(item) for item in raw if isinstance(item, (str, int)))
    if not isinstance(raw, str) or not raw.strip():
        return None
    message = " ".join(raw.split())
    lowered = message.lower()
    for sent in _strings(request_body):
        sent = sent.strip().lower()
        if len(sent) >= 3 and sent in lowered:
            return None
    if _EMAIL.search(message) or _DIGITS.search(message):
        return None
    return message[:_MAX_MESSAGE]


def reason_for(status: int, endpoint: str, payload: Any = None, request_body: Any = None) -> str:
    message = safe_api_message(payload, request_body)
    base = f"HTTP {status} from {endpoint}"
    return f"{base}: {message}" if message else base


def error_for_status(status: int, endpoint: str, payload: Any = None, request_body: Any = None,
                     retry_after: float | None = None) -> GhlError:
    reason = reason_for(status, endpoint, payload, request_body)
    if status == 429:
        return GhlRateLimited(reason, status=status, endpoint=endpoint, retry_after=retry_after)
    if is_transient_status(status):
        return GhlTransientError(reason, status=status, endpoint=endpoint)
    return GhlPermanentError(reason, status=status, endpoint=endpoint)
