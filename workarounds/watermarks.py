"""Read past a partition's reported high watermark: the embedded Tansu broker under-reports it (see README.md)."""

from __future__ import annotations

import time

from confluent_kafka import Consumer, TopicPartition

END_PROBE_IDLE_S = 0.5  # past the reported end, this long without a record means the end is real
ANCHOR_WAIT_S = 5.0  # how long to wait for the first fetch of every partition before trusting what was read


def true_ends(consumer: Consumer, topic: str, highs: dict[int, int]) -> dict[int, int]:
    """Read from each reported end until the broker has had nothing more for END_PROBE_IDLE_S.

    Each partition is read from its last reported record, so the idle clock starts only once every partition has
    answered a fetch: a slow first fetch (a loaded machine) must not pass for an empty one."""
    ends = dict(highs)
    waiting = {p for p, high in highs.items() if high > 0}  # an empty partition has no record to anchor on
    consumer.assign([TopicPartition(topic, p, max(0, high - 1)) for p, high in highs.items()])
    try:
        deadline = time.monotonic() + ANCHOR_WAIT_S
        idle_since = time.monotonic() if not waiting else None
        while True:
            now = time.monotonic()
            if idle_since is None and (not waiting or now > deadline):
                idle_since = now
            if idle_since is not None and now - idle_since >= END_PROBE_IDLE_S:
                break
            for msg in consumer.consume(num_messages=500, timeout=0.05):
                if msg.error() is not None:
                    continue
                waiting.discard(msg.partition())
                if msg.offset() + 1 > ends[msg.partition()]:
                    ends[msg.partition()] = msg.offset() + 1
                    if idle_since is not None:
                        idle_since = time.monotonic()
    finally:
        consumer.unassign()
    return ends
