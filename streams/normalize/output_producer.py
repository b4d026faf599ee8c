"""A batching Kafka producer for the normalizer's output records (Kafka I/O only).

Faust's producer must send one record per request against the embedded broker; output topics go through
librdkafka instead. `write(records)` returns once the broker acknowledged every record (acks=all), and keys
are partitioned like Faust (murmur2) so the sink's co-partitioned table stays aligned."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Sequence
from typing import Any, NamedTuple

from confluent_kafka import KafkaError, KafkaException, Producer

from foundations.kafka_connection import KafkaConnection
from foundations.topics import producer_size_limits

DEFAULT_MAX_BODY_BYTES = 1024 * 1024


class OutputRecord(NamedTuple):
    topic: str
    key: bytes | None
    value: bytes
    headers: list[tuple[str, bytes]]


class DeliveryFailed(Exception):
    """At least one record of a batch was not acknowledged. The message names the Kafka error, never a value."""


class _Batch:
    """Counts one batch's delivery reports (librdkafka's poll thread) and wakes the awaiting coroutine once."""

    __slots__ = ("remaining", "error", "future", "loop")

    def __init__(self, count: int, loop: asyncio.AbstractEventLoop) -> None:
        self.remaining = count
        self.error: KafkaError | None = None
        self.loop = loop
        self.future: asyncio.Future[None] = loop.create_future()

    def delivered(self, err: KafkaError | None, _msg: Any) -> None:
        if err is not None and self.error is None:
            self.error = err
        self.remaining -= 1
        if self.remaining == 0:
            self.loop.call_soon_threadsafe(self._finish)

    def _finish(self) -> None:
        if self.future.done():
            return
        if self.error is not None:
            self.future.set_exception(DeliveryFailed(f"delivery failed: {self.error.name()}"))
        else:
            self.future.set_result(None)


def producer_config(
    bootstrap: KafkaConnection | str,
    *,
    linger_ms: float = 5.0,
    client_id: str = "apro-sync-normalize",
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """librdkafka settings: durable (acks=all, idempotent: no duplicates or reordering from its own retries),
    batched (linger), and Java-compatible key partitioning (the same partition as Faust/aiokafka for a key)."""
    config: dict[str, Any] = {
        **KafkaConnection.of(bootstrap).librdkafka(),
        "client.id": client_id,
        "acks": "all",
        "enable.idempotence": True,
        "linger.ms": linger_ms,
        "batch.num.messages": 10_000,
        "queue.buffering.max.messages": 200_000,
        "partitioner": "murmur2_random",
        # Bounded, so a producer that cannot deliver fails the batch and gets replaced (`reset`) instead of
        # waiting on a broker that forgot its producer id (an in-memory broker after a restart).
        "message.timeout.ms": 30_000,
        **producer_size_limits(max_body_bytes),
    }
    config.update(extra or {})
    return config


class OutputProducer:
    """One librdkafka producer plus a thread that serves its delivery reports. Start and use on one event loop."""

    def __init__(self, config: dict[str, Any]) -> None:
        self.config = config
        self._producer: Producer | None = None
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()

    @property
    def started(self) -> bool:
        return self._producer is not None

    def start(self) -> None:
        if self._producer is not None:
            return
        self._producer = Producer(self.config)
        self._stopping.clear()
        self._thread = threading.Thread(target=self._serve, name="normalize-output-producer", daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        producer = self._producer
        assert producer is not None
        while not self._stopping.is_set():
            producer.poll(0.05)

    async def write(self, records: Sequence[OutputRecord]) -> None:
        """Send `records` in order and wait until every one is acknowledged; raise DeliveryFailed otherwise."""
        if not records:
            return
        if self._producer is None:
            self.start()
        producer = self._producer
        assert producer is not None
        batch = _Batch(len(records), asyncio.get_running_loop())
        sent = 0
        try:
            for record in records:
                while True:
                    try:
                        producer.produce(record.topic, value=record.value, key=record.key,
                                         headers=record.headers, on_delivery=batch.delivered)
                        break
                    except BufferError:  # local queue full: let deliveries drain it
                        await asyncio.sleep(0.005)
                sent += 1
        except KafkaException as exc:
            # Records not handed to librdkafka never report; count them as failed so the batch still finishes.
            batch.error = batch.error or exc.args[0]
            unsent = len(records) - sent
            for _ in range(unsent):
                batch.delivered(exc.args[0], None)
        await batch.future

    async def reset(self) -> None:
        """Drop the current producer (its queued records are purged, their batch already failed) and start a
        fresh one on the next write. A fresh producer gets a new idempotent producer id: the way out when a
        broker lost the old id's state (librdkafka would otherwise bump the epoch and never deliver)."""
        producer = self._producer
        if producer is None:
            return
        producer.purge()
        await self.stop(timeout_s=1.0)

    async def stop(self, timeout_s: float = 10.0) -> None:
        """Flush what is queued (bounded), then stop the delivery thread."""
        producer, thread = self._producer, self._thread
        if producer is None:
            return
        await asyncio.get_running_loop().run_in_executor(None, producer.flush, timeout_s)
        self._stopping.set()
        if thread is not None:
            thread.join(timeout=2)
        self._producer = None
        self._thread = None


__all__ = ["DeliveryFailed", "OutputProducer", "OutputRecord", "producer_config"]
