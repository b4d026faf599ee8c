"""The normalizer's batching output producer against the real broker: durable writes, Faust's key partitioning."""

from __future__ import annotations

import asyncio
import time

import pytest
from aiokafka.partitioner import DefaultPartitioner
from confluent_kafka import Consumer, TopicPartition

from foundations.config import Settings
from foundations.kafka_admin import ensure_topics
from streams.normalize.output_producer import DeliveryFailed, OutputProducer, OutputRecord, producer_config

pytestmark = pytest.mark.integration


def read_all(settings: Settings, topic: str, count: int, timeout_s: float = 30.0) -> list[tuple[int, bytes, bytes]]:
    consumer = Consumer({"bootstrap.servers": settings.kafka_bootstrap_servers, "group.id": f"{topic}-reader",
                         "enable.auto.commit": False})
    consumer.assign([TopicPartition(topic, p, 0) for p in range(settings.topic_partitions)])
    out: list[tuple[int, bytes, bytes]] = []
    deadline = time.monotonic() + timeout_s
    try:
        while len(out) < count and time.monotonic() < deadline:
            for msg in consumer.consume(num_messages=1000, timeout=0.2):
                if not msg.error():
                    out.append((msg.partition(), msg.key(), msg.value()))
    finally:
        consumer.close()
    return out


def test_output_producer_writes_in_order_on_faust_partitions(settings: Settings) -> None:
    topic = f"{settings.topic_prefix}out"
    ensure_topics(settings.kafka_bootstrap_servers or "", [topic], settings.topic_partitions)
    keys = [str(10_000 + i).encode() for i in range(200)]
    records = [OutputRecord(topic, key, b"%d" % n, [("h", b"v")]) for n, key in enumerate(keys * 3)]

    async def main() -> None:
        producer = OutputProducer(producer_config(settings.kafka_bootstrap_servers or ""))
        try:
            await producer.write(records)  # returns only once every record is acknowledged
        finally:
            await producer.stop()

    asyncio.run(main())
    got = read_all(settings, topic, len(records))
    assert len(got) == len(records)
    # The partition aiokafka (Faust's producer) would choose for each key: Java murmur2 of the key.
    faust_partitioner = DefaultPartitioner()
    parts = list(range(settings.topic_partitions))
    for partition, key, _ in got:
        assert partition == faust_partitioner(key, parts, parts), key
    assert len({p for p, _, _ in got}) == settings.topic_partitions  # the keys really spread
    # Per-key order kept (idempotent producer: retries cannot reorder).
    for key in keys[:20]:
        values = [int(v) for _, k, v in got if k == key]
        assert values == sorted(values) and len(values) == 3


def test_failed_batch_raises_and_reset_gives_a_working_producer(settings: Settings) -> None:
    """A batch with a record the producer refuses fails as a whole with DeliveryFailed (the records around it
    are still accounted for, nothing hangs), and after `reset` the next write goes through a fresh producer."""
    topic = f"{settings.topic_prefix}out-reset"
    ensure_topics(settings.kafka_bootstrap_servers or "", [topic], settings.topic_partitions)

    async def main() -> None:
        producer = OutputProducer(producer_config(settings.kafka_bootstrap_servers or "",
                                                  extra={"message.max.bytes": 10_000}))
        try:
            with pytest.raises(DeliveryFailed):
                await producer.write([OutputRecord(topic, b"k", b"x" * 20_000, [])])
            await producer.reset()
            assert not producer.started
            await producer.write([OutputRecord(topic, b"k", b"after-reset", [])])
            assert producer.started
        finally:
            await producer.stop()

    asyncio.run(main())
    assert [v for _p, _k, v in read_all(settings, topic, 1)] == [b"after-reset"]
