"""PartitionAcker (workarounds/partition_acker.py) on Faust's own consumer bookkeeping.

The events are real Faust events whose ack goes through a real (never started) Faust consumer, so each test reads
what Faust would commit (`Consumer._new_offset`), not a stand-in's record of calls.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import faust
import pytest
from faust.types import TP
from faust.types.tuples import ConsumerMessage

from workarounds.partition_acker import PartitionAcker

TOPIC = "acker-events"


@pytest.fixture
async def app() -> AsyncIterator[faust.App]:
    app = faust.App("apro-acker-test", broker="kafka://127.0.0.1:1", store="memory://")
    app.topics.add(app.topic(TOPIC, acks=True))
    await app.topics._update_indices()  # what a started app does: acks are enabled for the subscribed topic
    yield app


def _event(app: faust.App, partition: int, offset: int) -> faust.EventT:
    message = ConsumerMessage(TOPIC, partition, offset, 0.0, 0, None, b"k", b"v", None)
    message.incref()  # one stream holds it, as the conductor does on delivery
    return faust.Event(app, b"k", b"v", None, message)


def _acked(app: faust.App, partition: int) -> list[int]:
    return list(app.consumer._acked[TP(TOPIC, partition)])


def _commit_point(app: faust.App, partition: int, committed: int | None) -> int | None:
    """The offset Faust would commit next for the partition, its last commit being `committed`."""
    tp = TP(TOPIC, partition)
    app.consumer._committed_offset[tp] = committed
    return app.consumer._new_offset(tp)


async def test_in_order_completions_are_acked_at_once(app: faust.App) -> None:
    acker = PartitionAcker()
    events = [_event(app, 0, offset) for offset in (0, 1, 2)]
    for event in events:
        acker.track(event)
    assert acker.in_flight() == 3
    acker.finish(events[0])
    assert _acked(app, 0) == [0]
    acker.finish(events[1])
    acker.finish(events[2])
    assert _acked(app, 0) == [0, 1, 2]
    assert acker.in_flight() == 0
    assert _commit_point(app, 0, None) == 3


async def test_out_of_order_completions_wait_for_the_oldest(app: faust.App) -> None:
    acker = PartitionAcker()
    events = {offset: _event(app, 0, offset) for offset in range(5, 10)}
    for event in events.values():
        acker.track(event)
    for offset in (9, 7, 6):
        acker.finish(events[offset])
    assert _acked(app, 0) == []  # offset 5 is still running: nothing may reach Faust
    assert not any(event.message.acked for event in events.values())
    assert _commit_point(app, 0, 5) is None
    acker.finish(events[5])  # 5, 6 and 7 are now contiguous; 8 still runs
    assert _acked(app, 0) == [5, 6, 7]
    assert _commit_point(app, 0, 5) == 8
    assert acker.in_flight() == 2
    acker.finish(events[8])
    assert _acked(app, 0) == [8, 9]
    assert _commit_point(app, 0, 8) == 10


async def test_faust_alone_commits_past_an_unfinished_event_at_the_committed_offset(app: faust.App) -> None:
    """The failure the acker exists for, on the same consumer: acked directly, Faust skips offset 5."""
    early = _event(app, 3, 6)
    _event(app, 3, 5)  # delivered, still running, never acked
    early.ack()
    assert _commit_point(app, 3, 5) == 7  # past the unfinished offset 5

    acker = PartitionAcker()
    running, done = _event(app, 1, 5), _event(app, 1, 6)
    acker.track(running)
    acker.track(done)
    acker.finish(done)
    assert _commit_point(app, 1, 5) is None


async def test_offset_gaps_do_not_stall_the_partition(app: faust.App) -> None:
    """Compaction and transaction markers leave holes in the offsets: the acker orders by what it tracked."""
    acker = PartitionAcker()
    events = {offset: _event(app, 0, offset) for offset in (10, 12, 15)}
    for event in events.values():
        acker.track(event)
    acker.finish(events[15])
    acker.finish(events[12])
    assert _acked(app, 0) == []
    acker.finish(events[10])
    assert _acked(app, 0) == [10, 12, 15]
    assert acker.in_flight() == 0


async def test_partitions_are_ordered_independently(app: faust.App) -> None:
    acker = PartitionAcker()
    slow, after_slow = _event(app, 0, 0), _event(app, 0, 1)
    other = [_event(app, 1, offset) for offset in (0, 1)]
    for event in (slow, after_slow, *other):
        acker.track(event)
    acker.finish(after_slow)
    acker.finish(other[1])
    acker.finish(other[0])
    assert _acked(app, 1) == [0, 1]
    assert _acked(app, 0) == []
    assert acker.in_flight() == 2


async def test_finishing_twice_or_untracked_acks_nothing_more(app: faust.App) -> None:
    acker = PartitionAcker()
    first, second = _event(app, 0, 0), _event(app, 0, 1)
    acker.track(first)
    acker.track(second)
    acker.finish(second)
    acker.finish(second)
    assert acker.in_flight() == 2
    acker.finish(_event(app, 0, 7))  # never tracked
    acker.finish(_event(app, 2, 0))  # partition never seen
    assert _acked(app, 0) == [] and _acked(app, 2) == []
    acker.finish(first)
    assert _acked(app, 0) == [0, 1]


async def test_revocation_abandons_every_tracked_event(app: faust.App) -> None:
    acker = PartitionAcker()
    running, finished_early = _event(app, 0, 0), _event(app, 0, 1)
    on_other = _event(app, 1, 4)
    for event in (running, finished_early, on_other):
        acker.track(event)
    acker.finish(finished_early)  # waits behind offset 0
    abandoned = acker.clear()
    assert set(abandoned) == {running, finished_early, on_other}
    assert acker.in_flight() == 0
    acker.finish(running)  # the lane finishes after the rebalance: too late, the next owner redelivers it
    acker.finish(on_other)
    assert _acked(app, 0) == [] and _acked(app, 1) == []
    assert not running.message.acked


async def test_a_stale_event_never_acks_its_redelivered_offset(app: faust.App) -> None:
    """After a revoke and re-assign the same offset is delivered again as a new event: only that one may ack it."""
    acker = PartitionAcker()
    stale = _event(app, 0, 3)
    acker.track(stale)
    acker.clear()
    redelivered = _event(app, 0, 3)
    acker.track(redelivered)
    acker.finish(stale)
    assert _acked(app, 0) == [] and acker.in_flight() == 1
    acker.finish(redelivered)
    assert _acked(app, 0) == [3]


async def test_events_waiting_behind_an_unfinished_one_drop_their_payload(app: faust.App) -> None:
    """A stuck event (a paused location) can hold many finished ones behind it: they keep only what acking needs."""
    acker = PartitionAcker()
    events = [_event(app, 0, offset) for offset in range(3)]
    for ev in events:
        acker.track(ev)
    acker.finish(events[1])
    acker.finish(events[2])
    assert events[1].value is None and events[1].message.value is None
    assert events[0].message.value == b"v"  # the unfinished one is untouched
    acker.finish(events[0])
    assert _acked(app, 0) == [0, 1, 2]
