"""Dead-lettering a sink record: its original bytes and headers plus the dead-letter headers (stage, PHI-free
reason, event id, source topic/partition/offset, location) on the dead-letter topic, send awaited, then counted."""

from __future__ import annotations

import logging
from typing import Any

from foundations import metrics
from foundations.formats import deadletter
from foundations.formats import headers as header_names
from sinks.failure_policy import reason_label

log = logging.getLogger("apro_sync.sink")


class DeadLetterWriter:
    def __init__(self, topic: Any, location_labels: metrics.LocationLabels, *, stage: str) -> None:
        self.topic = topic  # a faust.TopicT: `await topic.send(...)` gives the broker's ack future
        self.location_labels = location_labels
        self.stage = stage

    async def write(self, message: Any, value: bytes, reason: str, *, event_id: str, location: str) -> None:
        """Publish and await the broker's ack; raises on a Kafka failure (the caller keeps the event)."""
        headers = header_names.to_dict(message.headers)
        headers.update(deadletter.build(
            stage=self.stage, reason=reason, event_id=event_id or headers.get(header_names.DLQ_EVENT_ID, ""),
            source_topic=message.topic, source_partition=message.partition, source_offset=message.offset,
            location=location))
        key = message.key if isinstance(message.key, bytes) else None
        fut = await self.topic.send(key=key, value=value, headers=[(k, v.encode()) for k, v in headers.items()])
        await fut
        metrics.EVENTS_DEADLETTERED.labels(location=self.location_labels(location), stage=self.stage,
                                           reason=reason_label(reason)).inc()
        log.warning("sink: event %s dead-lettered: %s", event_id or "?", reason)

__all__ = ["DeadLetterWriter"]
