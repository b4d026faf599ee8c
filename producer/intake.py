"""Pure intake decisions: what key, headers and metric labels a webhook gets. No I/O, no logging (bodies are PHI)."""

from __future__ import annotations

import re
import secrets
from dataclasses import dataclass
from datetime import datetime, timezone

from apro_sync import headers as H
from streams.payload import PayloadError, find_client_id, find_location, parse_body

RESOURCES = frozenset({"clients", "appointments", "invoices"})
# Records without a client id (test pings, unknown shapes) all share one key so they stay ordered together.
FALLBACK_KEY = b"no-client"
UNKNOWN = "unknown"

_SANE_REQUEST_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:\-]{0,127}")
# A location id from the payload becomes a metric label: accept only short, id-like values.
_SANE_LABEL = re.compile(r"[A-Za-z0-9][A-Za-z0-9._\-]{0,63}")

__all__ = ["Inspection", "PayloadError", "inspect_body", "request_id_from", "metric_location", "raw_headers",
           "quarantine_headers", "received_at_now", "RESOURCES", "FALLBACK_KEY", "UNKNOWN"]


@dataclass(frozen=True, slots=True)
class Inspection:
    key: bytes  # Kafka record key: the AestheticsPro client id, or FALLBACK_KEY
    location: str | None  # payload location id, if any (never a name: names go nowhere near labels)


def inspect_body(raw: bytes, content_type: str | None) -> Inspection:
    """Parse just enough of the body to key it. Raises PayloadError (safe message) when it is unreadable."""
    body = parse_body(raw, content_type)
    client_id = find_client_id(body)
    location_id, _name = find_location(body)
    key = client_id.encode("utf-8") if client_id else FALLBACK_KEY
    return Inspection(key=key, location=location_id)


def request_id_from(header: str | None) -> str:
    """The sender's X-Request-ID when it looks like an id (bounded, no spaces or control chars), else 128 random bits (hex)."""
    if header and _SANE_REQUEST_ID.fullmatch(header):
        return header
    return secrets.token_hex(16)


def metric_location(token_location: str | None, payload_location: str | None) -> str:
    """Label value: the token-bound location wins, then the payload's location id, else "unknown"."""
    for value in (token_location, payload_location):
        if value and _SANE_LABEL.fullmatch(value):
            return value
    return UNKNOWN


def received_at_now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


def raw_headers(
    *, received_at: str, request_id: str, content_type: str, resource: str | None, token_location: str | None
) -> list[tuple[str, bytes]]:
    headers = [
        (H.RECEIVED_AT, received_at.encode()),
        (H.REQUEST_ID, request_id.encode()),
        (H.CONTENT_TYPE, content_type[:200].encode("utf-8", "replace")),  # sender-controlled: bounded
    ]
    if resource:
        headers.append((H.RESOURCE, resource.encode()))
    if token_location:
        headers.append((H.TOKEN_LOCATION, token_location.encode()))
    return headers


def quarantine_headers(
    *, reason: str, received_at: str, request_id: str, content_type: str, resource: str | None,
    token_location: str | None,
) -> list[tuple[str, bytes]]:
    headers = raw_headers(
        received_at=received_at, request_id=request_id, content_type=content_type, resource=resource,
        token_location=token_location,
    )
    headers.append((H.REASON, reason.encode("utf-8", "replace")))
    return headers
