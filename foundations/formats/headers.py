"""Kafka record header names. Header values are never PHI (no names, emails, phones, DOB, addresses)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

# Set by the producer on every raw webhook record.
RECEIVED_AT = "apro-received-at"  # ISO 8601 UTC, when the producer accepted the webhook
RESOURCE = "apro-resource"  # URL hint: clients | appointments | invoices (absent when the URL gave none)
REQUEST_ID = "apro-request-id"
CONTENT_TYPE = "content-type"
TOKEN_LOCATION = "apro-token-location"  # location the webhook token is bound to, if any

# Quarantine (producer) and dead-letter (workers) records. The record value is the original payload,
# unchanged, so a redrive publishes it back to `DLQ_SOURCE_TOPIC` as is.
REASON = "apro-reason"
DLQ_STAGE = "apro-dlq-stage"  # intake | normalize | sync
DLQ_EVENT_ID = "apro-dlq-event-id"
DLQ_SOURCE_TOPIC = "apro-dlq-source-topic"
DLQ_SOURCE_PARTITION = "apro-dlq-source-partition"
DLQ_SOURCE_OFFSET = "apro-dlq-source-offset"
DLQ_AT = "apro-dlq-at"
DLQ_LOCATION = "apro-dlq-location"
DLQ_ATTEMPTS = "apro-dlq-attempts"

# Set by the operator tools (`apro-sync replay`, `apro-sync dlq redrive`) on records they publish again.
REPLAY = "apro-replay"  # replay | redrive: the normalizer passes the record on even if its event id was seen
REPLAYED_FROM = "apro-replayed-from"  # "<topic>:<partition>:<offset>" of the record this one copies
# Set by `apro-sync backfill`: the record is a historical event from an export (no live-only effects).
BACKFILL = "apro-backfill"


def to_dict(
    headers: Iterable[tuple[str, bytes | str | None]] | Mapping[str, bytes | str | None] | None,
) -> dict[str, str]:
    """Kafka headers (list of pairs or mapping, bytes or str values) → {name: str}; the last value wins."""
    if not headers:
        return {}
    pairs = headers.items() if isinstance(headers, Mapping) else headers
    out: dict[str, str] = {}
    for name, value in pairs:
        if value is None:
            continue
        out[str(name).lower()] = value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)
    return out
