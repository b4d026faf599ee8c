"""What the agents need from Faust's consumer beyond a plain ack (faust-streaming 0.15.3 internals, here only).

- `abandon`: drop a delivered record without acking it, so the partition's next owner delivers it again.
- `SequenceGuard`: keep each partition's records in sequence; records Faust dropped are read from the broker
  by a `GapReader` and handed to the agent first (why: workarounds/offset_sequence.py)."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import faust
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from faust.types.tuples import ConsumerMessage

from foundations import metrics
from foundations.config import Settings
from foundations.kafka_connection import KafkaConnection
from workarounds.offset_sequence import OffsetSequencer, Verdict

log = logging.getLogger("apro_sync.consumer")

READ_RETRY_S = 0.5  # first retry of a gap read that failed (broker unreachable), doubling
READ_RETRY_MAX_S = 10.0
READ_TIMEOUT_S = 30.0  # one attempt at reading a gap


def abandon(app: faust.App, event: faust.EventT) -> None:
    """Forget a delivered record: Faust stops waiting for its ack (a rebalance waits for every delivered record)
    and a later ack of it (take_events acks every event of a batch) records nothing, so it is never committed."""
    message = event.message
    message.acked = True  # Consumer.ack() returns early for an acked message: its offset is never marked done
    try:
        app.consumer._unacked_messages.discard(message)  # noqa: SLF001
    except Exception:  # noqa: BLE001 - consumer not started: nothing waits for it
        pass


class GapReader:
    """Reads offsets [start, end) of one partition straight from the broker: its own consumer, no group, no
    commits, so Faust's consumer and its position are left alone."""

    def __init__(self, bootstrap: KafkaConnection | str, client_id: str) -> None:
        self.connection = KafkaConnection.of(bootstrap)
        self.client_id = client_id
        self._consumer: AIOKafkaConsumer | None = None
        self._admin: AIOKafkaAdminClient | None = None
        self._lock = asyncio.Lock()

    async def read(self, topic: str, partition: int, start: int, end: int,
                   timeout_s: float = READ_TIMEOUT_S) -> list[Any]:
        """The records of [start, end) still in the log, in order (fewer than asked only where retention removed
        some). Raises TimeoutError when the broker does not deliver them in time."""
        async with self._lock:
            consumer = await self._started()
            tp = TopicPartition(topic, partition)
            consumer.assign([tp])
            consumer.seek(tp, start)
            records: list[Any] = []
            deadline = time.monotonic() + timeout_s
            position = start
            while position < end:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{topic}[{partition}] {position}..{end - 1} not read in {timeout_s:.0f}s")
                batch = await consumer.getmany(tp, timeout_ms=500, max_records=end - position)
                for record in batch.get(tp, []):
                    if record.offset >= end:
                        return records
                    if record.offset >= position:
                        records.append(record)
                        position = record.offset + 1
            return records

    async def log_start(self, topic: str, partition: int) -> int:
        """The partition's first offset still in the log."""
        async with self._lock:
            consumer = await self._started()
            tp = TopicPartition(topic, partition)
            offsets = await asyncio.wait_for(consumer.beginning_offsets([tp]), READ_TIMEOUT_S)
            return int(offsets[tp])

    async def committed(self, group: str, topic: str, partition: int) -> int | None:
        """The group's committed offset for the partition according to the broker, None if it has none."""
        async with self._lock:
            if self._admin is None:
                admin = AIOKafkaAdminClient(**self.connection.aiokafka(), client_id=self.client_id)
                await admin.start()
                self._admin = admin
            tp = TopicPartition(topic, partition)
            offsets = await asyncio.wait_for(self._admin.list_consumer_group_offsets(group, partitions=[tp]),
                                             READ_TIMEOUT_S)
            found = offsets.get(tp)
            return found.offset if found is not None and found.offset >= 0 else None

    async def _started(self) -> AIOKafkaConsumer:
        if self._consumer is None:
            consumer = AIOKafkaConsumer(**self.connection.aiokafka(), client_id=self.client_id, group_id=None,
                                        enable_auto_commit=False, auto_offset_reset="earliest",
                                        fetch_max_wait_ms=50)
            await consumer.start()
            self._consumer = consumer
        return self._consumer

    async def close(self) -> None:
        consumer, self._consumer = self._consumer, None
        admin, self._admin = self._admin, None
        try:
            if consumer is not None:
                await consumer.stop()
            if admin is not None:
                await admin.close()
        except Exception as exc:  # noqa: BLE001 - shutting down
            log.debug("gap reader stop failed (%s)", type(exc).__name__)


class SequenceGuard:
    """Decides, per delivered record, what the agent handles now: nothing (a repeat), the record, or the records
    Faust dropped before it (read from the broker) followed by the record."""

    def __init__(self, app: faust.App, agent: str, reader: GapReader,
                 sequencer: OffsetSequencer | None = None) -> None:
        self.app = app
        self.agent = agent
        self.reader = reader
        self.sequencer = sequencer or OffsetSequencer()
        for outcome in ("refetched", "gone"):  # exported at 0 from the start: panels and alerts see the first one
            metrics.STREAM_GAP_RECORDS.labels(agent, outcome)

    async def admit(self, event: faust.EventT) -> list[faust.EventT]:
        """The events to handle now, in offset order. Events read from the broker are not Faust's: whoever
        handles them acks them (`event.ack()`) like any other. An event not returned was abandoned."""
        message = event.message
        tp = message.tp
        generation = message.generation_id or 0
        seed = None
        if message.offset > 0 and self.sequencer.expected(tp, generation) is None:
            seed = await self._start_of(tp)  # the first record of this partition in this generation
        decision = self.sequencer.check(tp, message.offset, generation, seed)
        if decision.verdict is Verdict.PROCESS:
            return [event]
        if decision.verdict is Verdict.SEEN:
            abandon(self.app, event)
            return []
        missing = await self._read_gap(tp, decision.expected, message.offset, generation)
        if missing is None or not self.sequencer.handed_over(tp, generation, message.offset):
            abandon(self.app, event)  # revoked meanwhile: the partition's next owner reads all of it
            return []
        return [*missing, event]

    @classmethod
    def for_agent(cls, app: faust.App, settings: Settings, agent: str) -> SequenceGuard:
        """The guard of one agent of a worker, with its own gap reader on the configured broker."""
        reader = GapReader(settings.kafka, client_id=f"{settings.worker_id}-{agent}-gaps")
        return cls(app, agent, reader)

    def forget(self, tps: Any = None) -> None:
        self.sequencer.forget(tps)

    async def close(self) -> None:
        await self.reader.close()

    async def _read_gap(self, tp: Any, start: int, end: int, generation: int) -> list[faust.EventT] | None:
        """The records [start, end) as events, or None if the partition was revoked before they could be read."""
        log.warning("%s: %s[%d] offsets %d..%d did not reach the agent; reading them from the broker",
                    self.agent, tp.topic, tp.partition, start, end - 1)
        delay = READ_RETRY_S
        while True:
            try:
                records = await self.reader.read(tp.topic, tp.partition, start, end)
                break
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - the broker is unreachable: nothing after the gap goes first
                log.warning("%s: reading %s[%d] %d..%d failed (%s); retrying in %.1fs", self.agent, tp.topic,
                            tp.partition, start, end - 1, type(exc).__name__, delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, READ_RETRY_MAX_S)
            if self.sequencer.expected(tp, generation) != start:
                return None
        gone = (end - start) - len(records)
        metrics.STREAM_GAP_RECORDS.labels(self.agent, "refetched").inc(len(records))
        if gone:
            metrics.STREAM_GAP_RECORDS.labels(self.agent, "gone").inc(gone)
            log.error("%s: %d of %s[%d] offsets %d..%d are no longer in the log (retention?); they were never "
                      "processed", self.agent, gone, tp.topic, tp.partition, start, end - 1)
            present = {record.offset for record in records}
            for offset in range(start, end):
                if offset not in present:
                    self._ack_gone(tp, offset, generation)
        return [self._event(tp, record, generation) for record in records]

    def _ack_gone(self, tp: Any, offset: int, generation: int) -> None:
        """An offset no longer in the log is done: Faust's commit may pass it (it never records gaps itself,
        workarounds/faust_patches.commit_no_gaps)."""
        message = ConsumerMessage(tp.topic, tp.partition, offset, None, None, [], None, None, None,  # type: ignore[arg-type]
                                  0, 0, tp, generation_id=generation)
        try:
            self.app.consumer.ack(message)
        except Exception as exc:  # noqa: BLE001 - no consumer (test_context): nothing commits
            log.debug("%s: could not ack gone offset (%s)", self.agent, type(exc).__name__)

    def _event(self, tp: Any, record: Any, generation: int) -> faust.EventT:
        timestamp = record.timestamp / 1000.0 if record.timestamp is not None else None
        message = ConsumerMessage(record.topic, record.partition, record.offset, timestamp,  # type: ignore[arg-type]
                                  record.timestamp_type, record.headers, record.key, record.value,
                                  record.checksum, record.serialized_key_size, record.serialized_value_size, tp,
                                  generation_id=generation)
        return faust.Event(self.app, record.key, record.value, record.headers, message)

    async def _start_of(self, tp: Any) -> int | None:
        """Where this generation's reading of `tp` should start: the group's committed offset (Faust's copy, else
        the broker's: Faust resumes fetching before it loads its copy), else the log's start (a group without a
        committed offset starts there: auto_offset_reset=earliest). None if the broker cannot say."""
        committed = self._committed(tp)
        if committed is not None:
            return committed
        try:
            committed = await self.reader.committed(self.app.conf.id, tp.topic, tp.partition)
            return committed if committed is not None else await self.reader.log_start(tp.topic, tp.partition)
        except Exception as exc:  # noqa: BLE001 - unknown: the first record delivered starts the sequence
            log.warning("%s: start of %s[%d] unknown (%s)", self.agent, tp.topic, tp.partition, type(exc).__name__)
            return None

    def _committed(self, tp: Any) -> int | None:
        try:
            committed = self.app.consumer._committed_offset.get(tp)  # noqa: SLF001 - kept up to date by Faust
        except Exception:  # noqa: BLE001 - no consumer (test_context): no seed
            return None
        return committed if isinstance(committed, int) and committed > 0 else None  # Faust keeps 0 as None


__all__ = ["GapReader", "SequenceGuard", "abandon"]
