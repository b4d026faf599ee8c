"""Read past a partition's reported high watermark: the embedded Tansu broker under-reports it (see README.md)."""

from __future__ import annotations

import time

from confluent_kafka import Consumer, TopicPartition

END_PROBE_IDLE_S = 0.5  # past the reported end, this long without a record means the end is real


def true_ends(consumer: Consumer, topic: str, highs: dict[int, int]) -> dict[int, int]:
    """Read from each reported end until the broker has had nothing more for END_PROBE_IDLE_S."""
    ends = dict(highs)
    consumer.assign([TopicPartition(topic, p, high) for p, high in highs.items()])
    try:
        idle_since = time.monotonic()
        while time.monotonic() - idle_since < END_PROBE_IDLE_S:
            for msg in consumer.consume(num_messages=500, timeout=0.05):
                if msg.error() is None and msg.offset() + 1 > ends[msg.partition()]:
                    ends[msg.partition()] = msg.offset() + 1
                    idle_since = time.monotonic()
    finally:
        consumer.unassign()
    return ends
