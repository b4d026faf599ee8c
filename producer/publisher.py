"""Async publishing over confluent_kafka.Producer: `await publish(...)` returns only once the broker acked.

librdkafka does the batching and retrying in its own threads; one poll thread of ours serves the delivery
reports and hands them to the event loop in batches (one `call_soon_threadsafe` per poll round, not per
message), which keeps the per-request cost low.

Delivery after a timeout: when the broker is down we answer 503 after `produce_timeout_s`, but librdkafka keeps
the message queued and retries it until `message.timeout.ms` (30 s by default here) expires. If the broker comes
back within that window the record is still written, *after* we told the sender to retry. That is by design:
the sender retries, and the normalizer drops the duplicate by event id. `message.timeout.ms` bounds how long such
orphans can pile up in memory while the broker stays down.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Mapping
from functools import partial
from typing import Any

from confluent_kafka import KafkaError, KafkaException, Message, Producer

from apro_sync.config import Settings
from apro_sync.metrics import PRODUCE_ERRORS

log = logging.getLogger("apro_sync.producer.publisher")


class _RepeatFilter(logging.Filter):
    """librdkafka repeats the same connect failure many times a second while the broker is down: keep one per
    message text every `window_s` seconds."""

    def __init__(self, window_s: float = 10.0) -> None:
        super().__init__()
        self.window_s = window_s
        self._seen: dict[str, float] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        text = record.getMessage()
        # Drop the "(after Nms in state X)" tail so otherwise-identical lines compare equal.
        text = text.split(" (after ", 1)[0]
        now = time.monotonic()
        if now - self._seen.get(text, float("-inf")) < self.window_s:
            return False
        if len(self._seen) > 1000:
            self._seen.clear()
        self._seen[text] = now
        return True


_librdkafka_log = logging.getLogger("librdkafka")
_librdkafka_log.addFilter(_RepeatFilter())

DEFAULT_MESSAGE_TIMEOUT_MS = 30_000
DEFAULT_LINGER_MS = 2.0


class PublishError(Exception):
    """A publish that was not confirmed. `reason` is a short, label-safe word (never payload data)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class PublishTimeout(PublishError):
    """No delivery report within the produce timeout (broker down or slow). The record may still land later."""


class PublishFailed(PublishError):
    """librdkafka reported the record as not delivered, or refused to queue it."""


_Delivery = tuple["asyncio.Future[tuple[int, int]]", KafkaError | None, Message]


class Publisher:
    """One idempotent Kafka producer shared by every request of the process.

    Use: `await start()` once inside the event loop, `await publish(...)` per record, `await close()` at exit.
    """

    def __init__(
        self,
        bootstrap: str,
        *,
        produce_timeout_s: float = 5.0,
        message_timeout_ms: int = DEFAULT_MESSAGE_TIMEOUT_MS,
        linger_ms: float | None = None,
        config: Mapping[str, Any] | None = None,
    ) -> None:
        self.produce_timeout_s = produce_timeout_s
        self._config: dict[str, Any] = {
            "bootstrap.servers": bootstrap,
            "client.id": "apro-sync-producer",
            "enable.idempotence": True,
            "acks": "all",
            # A small linger lets concurrent webhooks share one produce request without adding visible latency.
            "linger.ms": DEFAULT_LINGER_MS if linger_ms is None else linger_ms,
            # Bounded life for queued records when the broker is down (see module doc).
            "message.timeout.ms": message_timeout_ms,
            # Reconnect quickly once the broker is back, so readiness and intake recover within a second or so.
            "reconnect.backoff.ms": 100,
            "reconnect.backoff.max.ms": 1000,
            "socket.connection.setup.timeout.ms": 5000,
            "logger": _librdkafka_log,
            "error_cb": self._on_error,
            **(config or {}),
        }
        self._producer: Producer | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._batch: list[_Delivery] = []  # filled by delivery callbacks, which run on the poll thread
        self._batch_lock = threading.Lock()
        self._fatal: KafkaError | None = None
        self._healing: asyncio.Future[None] | None = None
        self._last_replaced = float("-inf")
        self._heal_cooldown_s = max(5.0, 2 * produce_timeout_s)

    @classmethod
    def from_settings(cls, settings: Settings, **kwargs: Any) -> "Publisher":
        if not settings.kafka_bootstrap_servers:
            raise ValueError("KAFKA_BOOTSTRAP_SERVERS is not set")
        return cls(settings.kafka_bootstrap_servers, produce_timeout_s=settings.produce_timeout_s, **kwargs)

    # lifecycle -----------------------------------------------------------------------------------------------

    async def start(self) -> None:
        if self._thread is not None:
            return
        self._loop = asyncio.get_running_loop()
        self._producer = Producer(self._config)
        self._stop.clear()
        self._thread = threading.Thread(target=self._poll_forever, name="kafka-producer-poll", daemon=True)
        self._thread.start()
        # Connect now (and let the idempotent producer get its id) so the first webhook is not the slow one.
        # A broker that is down is not an error here: /readyz reports it and librdkafka keeps reconnecting.
        await self.ready(timeout_s=min(5.0, self.produce_timeout_s))

    async def close(self, timeout_s: float = 10.0) -> int:
        """Stop polling, flush what is queued (up to `timeout_s`) and resolve the remaining waiters.

        Returns the number of records still undelivered.
        """
        thread, self._thread = self._thread, None
        if thread is None or self._producer is None:
            return 0
        if self._healing is not None:
            await asyncio.wait([self._healing], timeout=timeout_s)
        self._stop.set()
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, thread.join)
        producer = self._producer
        left = await loop.run_in_executor(None, producer.flush, timeout_s)
        self._dispatch()
        await asyncio.sleep(0)  # let the resolutions scheduled by _dispatch run
        return int(left)

    # publishing ----------------------------------------------------------------------------------------------

    async def publish(self, topic: str, key: bytes, value: bytes, headers: list[tuple[str, bytes]]) -> tuple[int, int]:
        """Write one record; return (partition, offset) once acked by all in-sync replicas.

        Raises PublishTimeout after `produce_timeout_s`, PublishFailed when librdkafka reports a failure.
        """
        producer = self._current_producer()
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[tuple[int, int]] = loop.create_future()
        try:
            producer.produce(topic, value, key, headers=headers, on_delivery=partial(self._on_delivery, fut))
        except BufferError:
            PRODUCE_ERRORS.labels(topic, "queue_full").inc()
            raise PublishFailed("queue_full") from None
        except KafkaException as exc:
            reason = _reason(exc.args[0] if exc.args else None)
            PRODUCE_ERRORS.labels(topic, reason).inc()
            raise PublishFailed(reason) from None
        # A plain timer on the future (cheaper than asyncio.timeout, which reschedules a task cancellation).
        timer = loop.call_later(self.produce_timeout_s, _expire, fut)
        try:
            return await fut
        except PublishTimeout:
            PRODUCE_ERRORS.labels(topic, "timeout").inc()
            self._after_timeout()
            raise
        finally:
            timer.cancel()

    async def ready(self, timeout_s: float = 1.0) -> bool:
        """True when a broker answers a metadata request within `timeout_s`."""
        producer = self._producer
        if producer is None:
            return False

        def probe() -> bool:
            try:
                return bool(producer.list_topics(timeout=timeout_s).brokers)
            except KafkaException:
                return False

        return await asyncio.get_running_loop().run_in_executor(None, probe)

    # internals -----------------------------------------------------------------------------------------------

    def _current_producer(self) -> Producer:
        if self._producer is None or self._loop is None:
            raise RuntimeError("Publisher.start() was not awaited")
        if self._fatal is not None and self._healing is None:
            self._healing = asyncio.ensure_future(self._heal(check_broker=False))
        return self._producer

    def _after_timeout(self) -> None:
        now = time.monotonic()
        if self._healing is None and now - self._last_replaced >= self._heal_cooldown_s:
            self._healing = asyncio.ensure_future(self._heal(check_broker=True))

    async def _heal(self, check_broker: bool) -> None:
        """Replace a producer that cannot make progress with a fresh one.

        Two cases: a fatal error (idempotence state lost), or acks timing out while the broker answers metadata.
        The second one happens when a broker forgets producer ids (Tansu, in memory, after a restart): librdkafka
        then bumps its epoch forever and never delivers. A fresh producer gets a fresh id. The old one's queued
        records are purged; their senders already got a 503 (or get PublishFailed now) and retry.
        """
        try:
            if check_broker and not await self.ready():
                return  # broker down: librdkafka reconnects and retries on its own
            reason = _reason(self._fatal) if self._fatal is not None else "acks_timing_out"
            self._fatal = None
            loop = asyncio.get_running_loop()
            fresh = await loop.run_in_executor(None, Producer, self._config)
            old, self._producer = self._producer, fresh
            self._last_replaced = time.monotonic()
            log.warning("replaced the Kafka producer: %s", reason)
            if old is not None:
                await loop.run_in_executor(None, _retire, old)
        finally:
            self._healing = None

    def _on_error(self, err: KafkaError) -> None:
        if err.fatal():
            self._fatal = err
            log.error("Kafka producer fatal error: %s", err.name())
        elif err.code() not in (KafkaError._TRANSPORT, KafkaError._ALL_BROKERS_DOWN):
            log.warning("Kafka producer error: %s", err.name())

    def _on_delivery(self, fut: "asyncio.Future[tuple[int, int]]", err: KafkaError | None, msg: Message) -> None:
        with self._batch_lock:  # callbacks may also fire on an executor thread (flush, purge of a retired producer)
            self._batch.append((fut, err, msg))

    def _poll_forever(self) -> None:
        while not self._stop.is_set():
            producer = self._producer
            if producer is not None:
                producer.poll(0.05)
            self._dispatch()

    def _dispatch(self) -> None:
        if not self._batch or self._loop is None:
            return
        with self._batch_lock:
            batch, self._batch = self._batch, []
        try:
            self._loop.call_soon_threadsafe(_resolve, batch)
        except RuntimeError:  # loop already closed at shutdown: nobody is waiting any more
            pass


def _resolve(batch: list[_Delivery]) -> None:
    for fut, err, msg in batch:
        if err is not None:
            reason = _reason(err)
            PRODUCE_ERRORS.labels(msg.topic() or "unknown", reason).inc()
            if not fut.done():
                fut.set_exception(PublishFailed(reason))
        elif not fut.done():
            fut.set_result((msg.partition() or 0, msg.offset() or 0))


def _expire(fut: "asyncio.Future[tuple[int, int]]") -> None:
    if not fut.done():
        fut.set_exception(PublishTimeout("timeout"))


def _retire(producer: Producer) -> None:
    """Fail an abandoned producer's queued records (their callbacks fire into the batch) and let it go."""
    try:
        producer.purge()
        producer.flush(0)
    except KafkaException:
        pass


def _reason(err: object) -> str:
    if isinstance(err, KafkaError):
        return err.name().lower().lstrip("_")
    return "error"
