"""SequenceGuard with a real broker: records Faust dropped on the way are read from the log and handed over first,
in order, with their keys, values and headers; repeats are abandoned; a gap read across a revocation is dropped."""

from __future__ import annotations

import asyncio
from typing import Any

import faust
import pytest
from aiokafka.structs import ConsumerRecord
from confluent_kafka import Consumer, Producer, TopicPartition
from faust.types import TP
from faust.types.tuples import ConsumerMessage

from foundations import metrics
from foundations.kafka_admin import ensure_topics
from workarounds.consumer_control import GapReader, SequenceGuard
from workarounds.faust_patches import commit_no_gaps

pytestmark = pytest.mark.integration


def produce(bootstrap: str, topic: str, count: int) -> None:
    # linger: several records per batch, so gaps start and end inside batches
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 50, "log_level": 0})
    for i in range(count):
        producer.produce(topic, key=f"client-{i % 3}".encode(), value=f"body-{i}".encode(),
                         headers=[("x-apro-request-id", f"r-{i}".encode())])
    assert producer.flush(30) == 0


def commit(bootstrap: str, group: str, topic: str, offset: int) -> None:
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": group, "enable.auto.commit": False,
                         "log_level": 0})
    try:
        consumer.commit(offsets=[TopicPartition(topic, 0, offset)], asynchronous=False)
    finally:
        consumer.close()


def delivered(app: faust.App, topic: str, offset: int, generation: int = 1) -> faust.EventT:
    """An event as Faust's consumer would hand it to the agent."""
    tp = TP(topic, 0)
    message = ConsumerMessage(topic, 0, offset, 0.0, 0, [("x-apro-request-id", f"r-{offset}".encode())],
                              f"client-{offset % 3}".encode(), f"body-{offset}".encode(), None, tp=tp,
                              generation_id=generation)
    return faust.Event(app, message.key, message.value, message.headers, message)


def offsets(events: list[faust.EventT]) -> list[int]:
    return [e.message.offset for e in events]


def counter(agent: str, outcome: str) -> float:
    return metrics.STREAM_GAP_RECORDS.labels(agent, outcome)._value.get()  # noqa: SLF001


@pytest.fixture
def app(topic_prefix: str) -> faust.App:
    return faust.App(f"{topic_prefix}guard", broker="kafka://127.0.0.1:9", web_enabled=False)


def test_dropped_records_are_read_from_the_log_and_handed_over_first(
        kafka_bootstrap: str, topic_prefix: str, app: faust.App) -> None:
    topic = f"{topic_prefix}normalized"
    ensure_topics(kafka_bootstrap, [topic], partitions=1)
    produce(kafka_bootstrap, topic, 12)

    async def run() -> None:
        guard = SequenceGuard(app, "test-guard", GapReader(kafka_bootstrap, client_id="test-gaps"))
        before = counter("test-guard", "refetched")
        try:
            handed: list[faust.EventT] = []
            for offset in (0, 1, 2, 6):  # Faust dropped 3, 4 and 5
                handed += await guard.admit(delivered(app, topic, offset))
            assert offsets(handed) == [0, 1, 2, 3, 4, 5, 6]
            for event in handed[3:6]:  # the ones read from the log look like Faust's
                n = event.message.offset
                assert (event.key, event.value) == (f"client-{n % 3}".encode(), f"body-{n}".encode())
                assert dict(event.message.headers)["x-apro-request-id"] == f"r-{n}".encode()
                assert event.message.tp == TP(topic, 0) and event.message.generation_id == 1
                assert not event.message.acked
            repeat = delivered(app, topic, 4)  # Faust delivers a dropped one after all: a repeat
            assert await guard.admit(repeat) == [] and repeat.message.acked
            assert offsets(await guard.admit(delivered(app, topic, 7))) == [7]
            # A new generation with nothing committed starts at the log's start: a first record at 10 means
            # 0..9 never came (Faust seeks a fresh group to the earliest offset).
            assert offsets(await guard.admit(delivered(app, topic, 10, generation=2))) == list(range(11))
            assert counter("test-guard", "refetched") - before == 3 + 10
            # Once the group has committed, a new generation starts there (the broker's word: Faust loads its own
            # copy only after fetching has resumed).
            commit(kafka_bootstrap, app.conf.id, topic, 8)
            assert offsets(await guard.admit(delivered(app, topic, 10, generation=3))) == [8, 9, 10]
        finally:
            await guard.close()

    asyncio.run(run())


class FakeLog:
    """A GapReader stand-in: a log of offsets 0.. with nothing committed; `read` says what a gap read returns."""

    async def read(self, topic: str, partition: int, start: int, end: int) -> list[Any]:
        return [ConsumerRecord(topic, partition, o, 0, 0, b"k", b"v", None, 1, 1, []) for o in range(start, end)]

    async def committed(self, group: str, topic: str, partition: int) -> int | None:
        return None

    async def log_start(self, topic: str, partition: int) -> int:
        return 0

    async def close(self) -> None:
        pass


class RevokingReader(FakeLog):
    """Reads the gap, but the partition is revoked while it does."""

    def __init__(self, guard_ref: list[SequenceGuard]) -> None:
        self.guard_ref = guard_ref

    async def read(self, topic: str, partition: int, start: int, end: int) -> list[Any]:
        self.guard_ref[0].forget()
        return await super().read(topic, partition, start, end)


def test_a_gap_read_across_a_revocation_is_dropped(app: faust.App) -> None:
    async def run() -> None:
        ref: list[SequenceGuard] = []
        guard = SequenceGuard(app, "test-guard", RevokingReader(ref))  # type: ignore[arg-type]
        ref.append(guard)
        assert offsets(await guard.admit(delivered(app, "t", 0))) == [0]
        late = delivered(app, "t", 5)
        assert await guard.admit(late) == [] and late.message.acked  # abandoned: the next owner reads 1..5

    asyncio.run(run())


class LeakyLog(FakeLog):
    """Retention removed offsets 2 and 3 of the gap."""

    async def read(self, topic: str, partition: int, start: int, end: int) -> list[Any]:
        return [r for r in await super().read(topic, partition, start, end) if r.offset not in (2, 3)]


def test_records_no_longer_in_the_log_are_counted_as_gone_and_committed_past(app: faust.App) -> None:
    commit_no_gaps()
    app.topics._acking_topics.add("t")  # noqa: SLF001 - as an agent subscribing to "t" would

    async def run() -> None:
        guard = SequenceGuard(app, "test-guard", LeakyLog())  # type: ignore[arg-type]
        gone = counter("test-guard", "gone")
        first = await guard.admit(delivered(app, "t", 0))
        assert offsets(first) == [0]
        handed = await guard.admit(delivered(app, "t", 5))
        assert offsets(handed) == [1, 4, 5]
        assert counter("test-guard", "gone") - gone == 2
        for event in (*first, *handed):
            event.ack()
        assert app.consumer._new_offset(TP("t", 0)) == 6  # noqa: SLF001 - 2 and 3 are done: nothing to process

    asyncio.run(run())


def test_faust_never_commits_past_a_gap_before_its_records_are_acked(app: faust.App) -> None:
    """A jump in what Faust fetched (30, then 37) is a gap the guard reads; Faust must not count it as acked."""
    commit_no_gaps()
    app.topics._acking_topics.add("t")  # noqa: SLF001
    consumer, tp = app.consumer, TP("t", 0)

    async def run() -> list[int | None]:
        consumer._committed_offset[tp] = 30  # noqa: SLF001
        await consumer._add_gap(tp, 30, 37)  # noqa: SLF001 - what Faust's fetch loop calls on the jump
        commits = []
        for offset in (30, 31, 32):  # the guard hands 30..37 over in order; the agent finished three
            delivered(app, "t", offset).ack()
            commits.append(consumer._new_offset(tp))  # noqa: SLF001
            consumer._committed_offset[tp] = commits[-1] or consumer._committed_offset[tp]  # noqa: SLF001
        commits.append(consumer._new_offset(tp))  # noqa: SLF001
        return commits

    assert asyncio.run(run()) == [31, 32, 33, None]  # Faust's own gap fill would commit 38 here
