"""Kafka I/O for the operator tools: topic lookups, bounded reads of offset ranges, acknowledged writes.

Reads use `assign` with a throw-away group id and never commit, so they move no consumer group. Writes use an
idempotent producer (acks=all) and count a record as done only from its delivery report.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from confluent_kafka import Consumer, KafkaError, KafkaException, Message, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from apro_sync.ops.selection import HeaderList, PartitionRange
from foundations.kafka_connection import KafkaConnection
from foundations.topics import producer_size_limits
from workarounds.watermarks import true_ends

Bootstrap = KafkaConnection | str

TIMEOUT_S = 10.0
CONNECT_S = 5.0  # first metadata request: an unreachable broker is reported after this long
STALL_S = 30.0  # a read that makes no progress this long is an error, not a hang


class OperatorError(Exception):
    """A problem the operator can act on; the message is safe to print (no payload content)."""


def _base(bootstrap: Bootstrap) -> dict[str, Any]:
    # log_level 0: librdkafka's own connection chatter would bury our one clear error line.
    return {**KafkaConnection.of(bootstrap).librdkafka(), "log_level": 0, "socket.timeout.ms": int(TIMEOUT_S * 1000)}


def admin(bootstrap: Bootstrap) -> AdminClient:
    return AdminClient(_base(bootstrap))


def partition_counts(client: AdminClient, bootstrap: Bootstrap, topics: Sequence[str]) -> dict[str, int]:
    """Partitions per existing topic; raises OperatorError when the broker cannot be reached."""
    try:
        metadata = client.list_topics(timeout=CONNECT_S)
    except KafkaException as exc:
        raise OperatorError(f"cannot reach the Kafka broker at {bootstrap}: {exc.args[0]}") from None
    if not metadata.brokers:
        raise OperatorError(f"cannot reach the Kafka broker at {bootstrap}")
    counts: dict[str, int] = {}
    for topic in topics:
        meta = metadata.topics.get(topic)
        if meta is not None and meta.error is None and meta.partitions:
            counts[topic] = len(meta.partitions)
    return counts


def require_topic(client: AdminClient, bootstrap: Bootstrap, topic: str) -> int:
    count = partition_counts(client, bootstrap, [topic]).get(topic)
    if count is None:
        raise OperatorError(f"topic {topic} does not exist on {bootstrap} (check APRO_TOPIC_PREFIX)")
    return count


def ensure_compacted(client: AdminClient, topic: str, partitions: int = 1) -> None:
    """Create a compacted topic if missing (idempotent)."""
    if topic in client.list_topics(timeout=TIMEOUT_S).topics:
        return
    spec = NewTopic(topic, num_partitions=partitions, replication_factor=1, config={"cleanup.policy": "compact"})
    for name, future in client.create_topics([spec], operation_timeout=TIMEOUT_S).items():
        try:
            future.result()
        except KafkaException as exc:
            if "TOPIC_ALREADY_EXISTS" not in str(exc):
                raise OperatorError(f"could not create topic {name}: {exc.args[0]}") from None


def reader(bootstrap: Bootstrap) -> Consumer:
    """A consumer for `assign` reads: unique group id (never joined, never committed)."""
    return Consumer({
        **_base(bootstrap),
        "group.id": f"apro-sync-tool-{uuid.uuid4().hex[:12]}",
        "enable.auto.commit": False,
        "enable.auto.offset.store": False,
        "auto.offset.reset": "earliest",
        "enable.partition.eof": False,
    })


def watermarks(consumer: Consumer, topic: str, partitions: int) -> dict[int, tuple[int, int]]:
    """(first, end) offsets per partition, the end checked by reading past the broker's high watermark.

    Brokers that under-report the high watermark (the embedded Tansu broker after multi-record batches) would
    otherwise make a tool stop short of the newest records, count too few and redrive twice."""
    out: dict[int, tuple[int, int]] = {}
    for p in range(partitions):
        try:
            out[p] = consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=TIMEOUT_S)
        except KafkaException as exc:
            raise OperatorError(f"could not read the offsets of {topic}[{p}]: {exc.args[0]}") from None
    ends = true_ends(consumer, topic, {p: high for p, (_, high) in out.items()})
    return {p: (low, ends[p]) for p, (low, _) in out.items()}


def offsets_at(consumer: Consumer, topic: str, partitions: int, millis: int) -> dict[int, int | None]:
    """First offset per partition whose timestamp is >= `millis`; None when there is none (read to the end).

    On the embedded Tansu broker record timestamps are write times.
    """
    request = [TopicPartition(topic, p, millis) for p in range(partitions)]
    try:
        found = consumer.offsets_for_times(request, timeout=TIMEOUT_S)
    except KafkaException as exc:
        raise OperatorError(f"could not look up offsets by time on {topic}: {exc.args[0]}") from None
    out: dict[int, int | None] = {}
    for tp in found:
        if tp.error is not None:
            raise OperatorError(f"could not look up offsets by time on {topic}[{tp.partition}]: {tp.error}")
        out[tp.partition] = tp.offset if tp.offset >= 0 else None
    return out


def read_ranges(consumer: Consumer, topic: str, ranges: Sequence[PartitionRange],
                on_progress: Callable[[int], None] = lambda n: None) -> Iterator[Message]:
    """Every record of `topic` in the given [start, end) ranges, then stop (a snapshot, not a tail).

    `on_progress(n)` is told how many offsets were covered, including gaps (compaction, transaction markers),
    so a progress total of `sum(range sizes)` ends exactly at 100%.
    """
    todo = {r.partition: r for r in ranges if r.size > 0}
    if not todo:
        return
    consumer.assign([TopicPartition(topic, p, r.start) for p, r in todo.items()])
    covered = {p: r.start for p, r in todo.items()}
    last_progress = time.monotonic()
    try:
        while todo:
            batch = consumer.consume(num_messages=500, timeout=0.1)
            for msg in batch:
                err = msg.error()
                if err is not None:
                    if err.code() == KafkaError._PARTITION_EOF:
                        continue
                    raise OperatorError(f"reading {topic} failed: {err.str()}")
                p, offset = msg.partition(), msg.offset()
                r = todo.get(p)
                if r is None or offset >= r.end:
                    continue
                on_progress(offset + 1 - covered[p])
                covered[p] = offset + 1
                last_progress = time.monotonic()
                yield msg
                if offset + 1 >= r.end:
                    _finish(consumer, topic, todo, p)
            # A range may end in a gap with no record to report: check the position.
            for p in list(todo):
                pos = consumer.position([TopicPartition(topic, p)])[0].offset
                if pos >= todo[p].end:
                    on_progress(todo[p].end - covered[p])
                    covered[p] = todo[p].end
                    _finish(consumer, topic, todo, p)
            if todo and time.monotonic() - last_progress > STALL_S:
                raise OperatorError(f"reading {topic} made no progress for {STALL_S:.0f}s (broker unreachable?)")
    finally:
        consumer.unassign()


def _finish(consumer: Consumer, topic: str, todo: dict[int, PartitionRange], partition: int) -> None:
    todo.pop(partition, None)
    consumer.pause([TopicPartition(topic, partition)])  # stop fetching past the snapshot end


def read_all(consumer: Consumer, topic: str, partitions: int) -> Iterator[Message]:
    """Every record currently in `topic` (from the first retained offset to the end when the read starts)."""
    marks = watermarks(consumer, topic, partitions)
    ranges = [PartitionRange(p, low, high) for p, (low, high) in marks.items()]
    yield from read_ranges(consumer, topic, ranges)


class Writer:
    """Idempotent producer (acks=all): `send` queues, `flush` waits for every delivery report."""

    def __init__(self, bootstrap: Bootstrap, *, one_per_batch: bool = False, max_body_bytes: int = 1024 * 1024) -> None:
        # `one_per_batch` for the embedded Tansu broker, which reports a wrong end offset for multi-record batches.
        extra: dict[str, Any] = {"batch.num.messages": 1} if one_per_batch else {}
        self._producer = Producer({
            **extra,
            **_base(bootstrap),
            "enable.idempotence": True,
            "acks": "all",
            "linger.ms": 5,
            # Java/Faust-compatible key hashing for records without an explicit partition.
            "partitioner": "murmur2_random",
            "message.timeout.ms": int(TIMEOUT_S * 3 * 1000),
            **producer_size_limits(max_body_bytes),
        })
        self.delivered: list[tuple[Any, Message]] = []
        self.failed: list[tuple[Any, str]] = []

    def send(self, tag: Any, topic: str, key: bytes | None, value: bytes | None, headers: HeaderList,
             partition: int | None = None) -> None:
        def report(err: KafkaError | None, msg: Message) -> None:
            if err is not None:
                self.failed.append((tag, err.str()))
            else:
                self.delivered.append((tag, msg))

        kwargs: dict[str, Any] = {"key": key, "value": value, "headers": headers, "on_delivery": report}
        if partition is not None:
            kwargs["partition"] = partition
        while True:
            try:
                self._producer.produce(topic, **kwargs)
                break
            except BufferError:  # local queue full: let deliveries drain
                self._producer.poll(0.1)
        self._producer.poll(0)

    def flush(self) -> None:
        """Wait until every queued record is acknowledged or failed."""
        remaining = self._producer.flush(TIMEOUT_S * 3)
        if remaining:
            raise OperatorError(f"{remaining} records were not acknowledged by the broker in time")

    def take(self) -> tuple[list[tuple[Any, Message]], list[tuple[Any, str]]]:
        delivered, failed = self.delivered, self.failed
        self.delivered, self.failed = [], []
        return delivered, failed


__all__ = ["OperatorError", "Writer", "admin", "ensure_compacted", "offsets_at", "partition_counts",
           "read_all", "read_ranges", "reader", "require_topic", "watermarks"]
