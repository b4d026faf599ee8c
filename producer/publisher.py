"""Async publishing over confluent_kafka.Producer: `await publish(...)` returns only once the broker acked.

librdkafka batches and retries in its threads; delivery reports are polled on the event loop itself. When all
brokers are known down, `publish` fails at once (broker_unreachable). `message.max.bytes` fits every body the
HTTP layer accepts. Design and trade-offs: docs/reliability.md, "Module notes"."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import deque
from collections.abc import Mapping
from functools import partial
from typing import Any

from confluent_kafka import KafkaError, KafkaException, Message, Producer

from foundations.config import Settings
from foundations.kafka_connection import KafkaConnection
from foundations.metrics import PRODUCE_ERRORS
from foundations.topics import RECORD_OVERHEAD_BYTES, producer_size_limits

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
# Short: under load every webhook waits for its batch's linger plus the ack, and with a fixed number of senders
# that wait caps throughput (bench/intake.py, 32 connections: 2 ms → ~5.2k req/s, 1 ms → ~6.7k, 0.2–0.5 ms →
# ~8.5k; 0 sends one request per record and costs librdkafka and the broker more CPU for less).
DEFAULT_LINGER_MS = 0.5
# Loop-side polling period while acks are awaited: adds at most this much to a request's latency.
POLL_INTERVAL_S = 0.0005
IDLE_POLL_INTERVAL_S = 0.1
# Key (a client id, at most 128 characters), the apro-* headers (request id ≤ 128, content type ≤ 200, reason,
# timestamps: under 1 KiB in all) and record/batch framing (~100 bytes), with room to spare.
RECORD_HEADROOM_BYTES = (
    RECORD_OVERHEAD_BYTES  # the same headroom as the topics' max.message.bytes (foundations/topics.py)
)
BROKER_PROBE_INTERVAL_S = 0.5


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
        bootstrap: KafkaConnection | str,
        *,
        produce_timeout_s: float = 5.0,
        message_timeout_ms: int = DEFAULT_MESSAGE_TIMEOUT_MS,
        linger_ms: float | None = None,
        max_value_bytes: int | None = None,
        config: Mapping[str, Any] | None = None,
    ) -> None:
        self.produce_timeout_s = produce_timeout_s
        size_limit = {} if max_value_bytes is None else producer_size_limits(max_value_bytes)
        self._config: dict[str, Any] = {
            **KafkaConnection.of(bootstrap).librdkafka(),
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
            **size_limit,
            **(config or {}),
        }
        self._producer: Producer | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread: int | None = None
        self._tick_handle: asyncio.TimerHandle | None = None
        self._ticking_fast = False
        # (deadline on the loop clock, waiter), in deadline order: the timeout is the same for every record.
        self._pending: deque[tuple[float, asyncio.Future[tuple[int, int]]]] = deque()
        self._batch: list[_Delivery] = []  # delivery reports that fired on another thread, for the loop
        self._batch_lock = threading.Lock()
        self._fatal: KafkaError | None = None
        self._healing: asyncio.Future[None] | None = None
        self._last_replaced = float("-inf")
        self._heal_cooldown_s = max(5.0, 2 * produce_timeout_s)
        self.broker_down = False  # known unreachable: publish fails at once (see module doc)
        self._probing: asyncio.Task[None] | None = None

    @classmethod
    def from_settings(cls, settings: Settings, **kwargs: Any) -> "Publisher":
        if not settings.kafka_bootstrap_servers:
            raise ValueError("KAFKA_BOOTSTRAP_SERVERS is not set")
        kwargs.setdefault("max_value_bytes", settings.max_body_bytes)
        return cls(settings.kafka, produce_timeout_s=settings.produce_timeout_s, **kwargs)

    # lifecycle -----------------------------------------------------------------------------------------------

    async def start(self) -> None:
        if self._loop is not None:
            return
        self._loop = asyncio.get_running_loop()
        self._loop_thread = threading.get_ident()
        self._producer = Producer(self._config)
        self._schedule_tick(IDLE_POLL_INTERVAL_S)
        # Connect now (and let the idempotent producer get its id) so the first webhook is not the slow one.
        # A broker that is down is not an error here: /readyz reports it and librdkafka keeps reconnecting.
        await self.ready(timeout_s=min(5.0, self.produce_timeout_s))

    async def close(self, timeout_s: float = 10.0) -> int:
        """Stop polling, flush what is queued (up to `timeout_s`) and resolve the remaining waiters.

        Returns the number of records still undelivered.
        """
        loop, self._loop = self._loop, None
        if loop is None or self._producer is None:
            return 0
        if self._probing is not None:
            self._probing.cancel()
            self._probing = None
        if self._healing is not None:
            await asyncio.wait([self._healing], timeout=timeout_s)
        if self._tick_handle is not None:
            self._tick_handle.cancel()
            self._tick_handle = None
        producer = self._producer
        # flush polls on the executor thread: its delivery reports come back through the batch.
        left = await loop.run_in_executor(None, producer.flush, timeout_s)
        self._drain()
        while self._pending:  # not delivered within the flush: their senders get the timeout answer
            _deadline, fut = self._pending.popleft()
            _expire(fut)
        await asyncio.sleep(0)  # let the waiters resume
        return int(left)

    # publishing ----------------------------------------------------------------------------------------------

    async def publish(self, topic: str, key: bytes, value: bytes, headers: list[tuple[str, bytes]]) -> tuple[int, int]:
        """Write one record; return (partition, offset) once acked by all in-sync replicas.

        Raises PublishTimeout after `produce_timeout_s`, PublishFailed when librdkafka reports a failure.
        """
        if self.broker_down:
            PRODUCE_ERRORS.labels(topic, "broker_unreachable").inc()
            raise PublishFailed("broker_unreachable")
        producer = self._current_producer()
        loop = self._loop
        assert loop is not None
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
        self._pending.append((loop.time() + self.produce_timeout_s, fut))
        if not self._ticking_fast:
            self._schedule_tick(POLL_INTERVAL_S)
        try:
            return await fut
        except PublishTimeout:
            PRODUCE_ERRORS.labels(topic, "timeout").inc()
            self._after_timeout()
            raise

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

    def _schedule_tick(self, delay: float) -> None:
        if self._loop is None:
            return
        if self._tick_handle is not None:
            self._tick_handle.cancel()
        self._ticking_fast = delay <= POLL_INTERVAL_S
        self._tick_handle = self._loop.call_later(delay, self._tick)

    def _tick(self) -> None:
        """Serve delivery reports (resolving waiters right here, on the loop) and expire overdue waiters."""
        self._tick_handle = None
        producer = self._producer
        if producer is not None:
            producer.poll(0)
        pending = self._pending
        if pending:
            now = self._loop.time() if self._loop is not None else float("inf")
            while pending and (pending[0][1].done() or pending[0][0] <= now):
                _expire(pending.popleft()[1])
        self._schedule_tick(POLL_INTERVAL_S if pending else IDLE_POLL_INTERVAL_S)

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
        if err.code() == KafkaError._ALL_BROKERS_DOWN:
            self._call_on_loop(self._start_probe)
        if err.fatal():
            self._fatal = err
            log.error("Kafka producer fatal error: %s", err.name())
        elif err.code() not in (KafkaError._TRANSPORT, KafkaError._ALL_BROKERS_DOWN):
            log.warning("Kafka producer error: %s", err.name())

    def _call_on_loop(self, callback: Any) -> None:
        loop = self._loop
        if loop is None:
            return
        if threading.get_ident() == self._loop_thread:
            callback()
        else:
            try:
                loop.call_soon_threadsafe(callback)
            except RuntimeError:  # loop closed at shutdown
                pass

    def _start_probe(self) -> None:
        if self._probing is None and self._loop is not None:
            self._probing = self._loop.create_task(self._probe())

    async def _probe(self) -> None:
        """librdkafka says every broker is down: confirm with a metadata request (an idle connection closed by
        the broker also looks like that, and reconnects at once), then fail fast until a broker answers."""
        try:
            while self._loop is not None:
                if await self.ready(timeout_s=BROKER_PROBE_INTERVAL_S):
                    if self.broker_down:
                        log.warning("Kafka broker reachable again: accepting webhooks")
                    self.broker_down = False
                    return
                if not self.broker_down:
                    self.broker_down = True
                    log.warning("Kafka broker unreachable: answering 503 at once until it is back")
                await asyncio.sleep(BROKER_PROBE_INTERVAL_S)
        finally:
            self._probing = None

    def _on_delivery(self, fut: "asyncio.Future[tuple[int, int]]", err: KafkaError | None, msg: Message) -> None:
        if threading.get_ident() == self._loop_thread:  # the usual case: poll(0) in _tick
            _settle(fut, err, msg)
            return
        # flush at close or purge of a retired producer, on an executor thread: hand over to the loop.
        with self._batch_lock:
            first = not self._batch
            self._batch.append((fut, err, msg))
        loop = self._loop or fut.get_loop()
        if first:
            try:
                loop.call_soon_threadsafe(self._drain)
            except RuntimeError:  # loop already closed at shutdown: nobody is waiting any more
                pass

    def _drain(self) -> None:
        with self._batch_lock:
            batch, self._batch = self._batch, []
        for fut, err, msg in batch:
            _settle(fut, err, msg)


def _settle(fut: "asyncio.Future[tuple[int, int]]", err: KafkaError | None, msg: Message) -> None:
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
