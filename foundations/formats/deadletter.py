"""Dead-letter headers: the one place they are built (normalize, sync) and read (dlq tool, redrive).

The record value stays the original payload; these headers say which stage gave up, why, and where it came from.
"""

from __future__ import annotations

from datetime import datetime, timezone

from foundations.formats import headers as header_names

# Header names that describe a dead-lettering, not the webhook: dropped when a record is redriven.
DEADLETTER_HEADERS = frozenset({
    header_names.REASON, header_names.DLQ_STAGE, header_names.DLQ_EVENT_ID, header_names.DLQ_SOURCE_TOPIC,
    header_names.DLQ_SOURCE_PARTITION, header_names.DLQ_SOURCE_OFFSET, header_names.DLQ_AT,
    header_names.DLQ_LOCATION, header_names.DLQ_ATTEMPTS,
})


def build(*, stage: str, reason: str, event_id: str, source_topic: str, source_partition: int,
          source_offset: int, location: str) -> list[tuple[str, str]]:
    """The dead-letter headers a worker adds to the original record's headers (time of dead-lettering: now)."""
    return [
        (header_names.DLQ_STAGE, stage),
        (header_names.REASON, reason),
        (header_names.DLQ_EVENT_ID, event_id),
        (header_names.DLQ_SOURCE_TOPIC, source_topic),
        (header_names.DLQ_SOURCE_PARTITION, str(source_partition)),
        (header_names.DLQ_SOURCE_OFFSET, str(source_offset)),
        (header_names.DLQ_AT, datetime.now(timezone.utc).isoformat()),
        (header_names.DLQ_LOCATION, location),
    ]


def attempts(headers: dict[str, str]) -> int:
    """How often the record was redriven already (0 when absent or unreadable)."""
    try:
        return max(0, int(headers.get(header_names.DLQ_ATTEMPTS, "0")))
    except ValueError:
        return 0


def source(headers: dict[str, str]) -> tuple[str, int | None, int | None]:
    """(topic, partition, offset) the record was dead-lettered from; "" / None where the headers do not say."""
    return (headers.get(header_names.DLQ_SOURCE_TOPIC, ""), _int(headers.get(header_names.DLQ_SOURCE_PARTITION)),
            _int(headers.get(header_names.DLQ_SOURCE_OFFSET)))


def _int(text: str | None) -> int | None:
    try:
        return int(text or "x")
    except ValueError:
        return None
