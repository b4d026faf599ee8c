"""Pure intake decisions: what key, headers and metric labels a webhook gets. No I/O, no logging (bodies are PHI)."""

from __future__ import annotations

import re
import secrets
import time
from collections.abc import Container
from datetime import datetime, timezone
from typing import Any, NamedTuple

import orjson

from foundations.formats import headers as header_names
from foundations.formats.raw import MAX_DEPTH, PayloadError, check_nesting, find_client_and_location, parse_body

RESOURCES = frozenset({"clients", "appointments", "invoices"})
# Records without a client id (test pings, unknown shapes) all share one key so they stay ordered together.
FALLBACK_KEY = b"no-client"
UNKNOWN = "unknown"
OTHER = "other"

_SANE_REQUEST_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:\-]{0,127}")
# A location id from the payload becomes a metric label: accept only short, id-like values.
_SANE_LABEL = re.compile(r"[A-Za-z0-9][A-Za-z0-9._\-]{0,63}")

__all__ = ["Inspection", "PayloadError", "inspect_body", "request_id_from", "metric_location", "raw_headers",
           "quarantine_headers", "received_at_now", "RESOURCES", "FALLBACK_KEY", "UNKNOWN", "OTHER"]


class Inspection(NamedTuple):  # a NamedTuple: built per request, and cheaper to build than a frozen dataclass
    key: bytes  # Kafka record key: the AestheticsPro client id, or FALLBACK_KEY
    location: str | None  # payload location id, if any (never a name: names go nowhere near labels)


def inspect_body(raw: bytes, content_type: str | None) -> Inspection:
    """Parse just enough of the body to key it. Raises PayloadError (safe message) when it is unreadable."""
    body = _fast_json(raw, content_type)
    if body is None:
        body = parse_body(raw, content_type)
    client_id, location_id, _name = find_client_and_location(body)
    key = client_id.encode("utf-8") if client_id else FALLBACK_KEY
    return Inspection(key=key, location=location_id)


def _fast_json(raw: bytes, content_type: str | None) -> dict[str, Any] | None:
    """orjson's reading of a JSON-object body when it is certainly what `parse_body` would return, else None.

    orjson is ~4x faster than the stdlib parser but has no Decimal floats and turns integers beyond 64 bits
    into floats; a float can change an id's canonical string (`48213.50` vs `48213.5`). So any float, any
    orjson error (NaN, lone surrogates, a BOM, invalid UTF-8), form content types, non-object bodies and deep
    nesting all go to `parse_body` (the normalizer's exact parser), which decides and words the error.
    A body nested deeper than MAX_DEPTH is refused (PayloadError) before orjson sees it: C parsers recurse.
    """
    if raw[:1] != b"{":
        return None
    if content_type and content_type.split(";")[0].strip().lower() == "application/x-www-form-urlencoded":
        return None
    check_nesting(raw)
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None
    return body if type(body) is dict and _plain(body, 0) else None


def _plain(value: dict[str, Any] | list[Any], depth: int) -> bool:
    """No float anywhere and comfortably within MAX_DEPTH (deeper bodies get parse_body's exact check)."""
    if depth >= MAX_DEPTH:
        return False
    for child in value.values() if type(value) is dict else value:
        kind = type(child)
        if kind is float:
            return False
        if (kind is dict or kind is list) and not _plain(child, depth + 1):
            return False
    return True


def request_id_from(header: str | None) -> str:
    """The sender's X-Request-ID when it looks like an id (bounded, no spaces or control chars), else 128 random
    bits (hex)."""
    if header and _SANE_REQUEST_ID.fullmatch(header):
        return header
    return secrets.token_hex(16)


def metric_location(token_location: str | None, payload_location: str | None, known: Container[str]) -> str:
    """Label value: the token-bound location wins, then the payload's location id if the configuration names it
    (`known`), "other" for any other id (a sender must not be able to add series), else "unknown"."""
    if token_location and _SANE_LABEL.fullmatch(token_location):
        return token_location
    if payload_location:
        return payload_location if payload_location in known and _SANE_LABEL.fullmatch(payload_location) else OTHER
    return UNKNOWN


_second: tuple[int, str] = (-1, "")  # (unix second, its ISO text): formatting a datetime per request costs ~1 µs


def received_at_now() -> str:
    """Now in UTC as ISO 8601 with milliseconds, e.g. `2026-11-20T15:58:02.123+00:00`."""
    global _second
    sec, ns = divmod(time.time_ns(), 1_000_000_000)
    cached_sec, text = _second
    if sec != cached_sec:
        text = datetime.fromtimestamp(sec, timezone.utc).isoformat()[:-6]  # drop "+00:00"
        _second = (sec, text)
    return f"{text}.{ns // 1_000_000:03d}+00:00"


def raw_headers(
    *, received_at: str, request_id: str, content_type: str, resource: str | None, token_location: str | None
) -> list[tuple[str, bytes]]:
    headers = [
        (header_names.RECEIVED_AT, received_at.encode()),
        (header_names.REQUEST_ID, request_id.encode()),
        (header_names.CONTENT_TYPE, content_type[:200].encode("utf-8", "replace")),  # sender-controlled: bounded
    ]
    if resource:
        headers.append((header_names.RESOURCE, resource.encode()))
    if token_location:
        headers.append((header_names.TOKEN_LOCATION, token_location.encode()))
    return headers


def quarantine_headers(
    *, reason: str, received_at: str, request_id: str, content_type: str, resource: str | None,
    token_location: str | None,
) -> list[tuple[str, bytes]]:
    headers = raw_headers(
        received_at=received_at, request_id=request_id, content_type=content_type, resource=resource,
        token_location=token_location,
    )
    headers.append((header_names.REASON, reason.encode("utf-8", "replace")))
    return headers
