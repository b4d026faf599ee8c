"""`apro-sync peek`: what records a topic holds, for a quick look at a dev stack (kcat's job, but Debian's kcat
cannot talk to the embedded Tansu broker). Prints non-PHI metadata; keys (client ids) and bodies only on request."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from datetime import datetime, timezone
from typing import NamedTuple

from apro_sync.ops.kafka_io import admin, read_all, reader, require_topic
from foundations.formats import headers as header_names
from foundations.kafka_connection import KafkaConnection
from sinks.shadow import describe as describe_shadow


class Peeked(NamedTuple):
    partition: int
    offset: int
    timestamp_ms: int
    key: bytes | None
    value: bytes | None
    headers: dict[str, str]


def format_line(record: Peeked, show_payload: bool) -> str:
    """One line per record: where it is, when it was written, its request id and size; key and body only with
    `show_payload` (they are patient data)."""
    at = datetime.fromtimestamp(record.timestamp_ms / 1000, timezone.utc).isoformat(timespec="milliseconds")
    parts = [f"{record.partition}:{record.offset}", at,
             f"request={record.headers.get(header_names.REQUEST_ID, '-')}",
             f"resource={record.headers.get(header_names.RESOURCE, '-')}",
             f"bytes={len(record.value or b'')}"]
    if header_names.REASON in record.headers:
        parts.append(f"reason={record.headers[header_names.REASON]}")
    parts.extend(describe_shadow(record.headers))  # a GoHighLevel call recorded in shadow mode
    if show_payload:
        parts.append(f"key={(record.key or b'').decode('utf-8', 'replace')}")
        parts.append((record.value or b"").decode("utf-8", "replace"))
    return "  ".join(parts)


def peek(bootstrap: KafkaConnection | str, topic: str) -> Iterable[Peeked]:
    """Every record currently in `topic`, partition by partition (no consumer group, nothing committed)."""
    partitions = require_topic(admin(bootstrap), bootstrap, topic)
    consumer = reader(bootstrap)
    try:
        for msg in read_all(consumer, topic, partitions):
            yield Peeked(msg.partition(), msg.offset(), msg.timestamp()[1], msg.key(), msg.value(),
                         header_names.to_dict(msg.headers()))
    finally:
        consumer.close()


def run(bootstrap: KafkaConnection | str, topic: str, show_payload: bool, echo: Callable[[str], None]) -> int:
    count = 0
    for record in sorted(peek(bootstrap, topic), key=lambda r: (r.partition, r.offset)):
        echo(format_line(record, show_payload))
        count += 1
    echo(f"{count} record(s) in {topic}")
    return count
