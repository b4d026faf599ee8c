"""Lane scheduling (sinks/lane_queue.py): live before historical without reordering a client; bounded capacity."""

from __future__ import annotations

import asyncio
import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sinks.lane_queue import Capacity, LaneQueue


def _drain(q: LaneQueue[tuple[str, int, bool]]) -> list[tuple[str, int, bool]]:
    out = []
    while len(q):
        out.append(q.get_nowait())
    return out


def test_live_goes_before_historical_of_other_clients() -> None:
    q: LaneQueue[str] = LaneQueue()
    q.put("a", "a-h1", historical=True)
    q.put("a", "a-h2", historical=True)
    q.put("b", "b-live", historical=False)
    assert [q.get_nowait() for _ in range(3)] == ["b-live", "a-h1", "a-h2"]


def test_a_clients_live_event_waits_behind_its_own_historical_ones() -> None:
    q: LaneQueue[str] = LaneQueue()
    q.put("a", "a-h1", historical=True)
    q.put("a", "a-live", historical=False)
    q.put("b", "b-live", historical=False)
    assert [q.get_nowait() for _ in range(3)] == ["b-live", "a-h1", "a-live"]
    q.put("a", "a-live2", historical=False)  # nothing of a's waits now: live again
    q.put("c", "c-h", historical=True)
    assert q.get_nowait() == "a-live2"


@given(st.lists(st.tuples(st.sampled_from("abcd"), st.booleans()), max_size=60), st.randoms(use_true_random=False))
def test_order_per_client_is_arrival_order_and_live_never_waits_for_others(
        puts: list[tuple[str, bool]], rnd: random.Random) -> None:
    q: LaneQueue[tuple[str, int, bool]] = LaneQueue()
    taken: list[tuple[str, int, bool]] = []
    for n, (client, historical) in enumerate(puts):
        q.put(client, (client, n, historical), historical=historical)
        if rnd.random() < 0.3 and len(q):
            taken.append(q.get_nowait())
    taken += _drain(q)
    assert sorted(taken, key=lambda t: t[1]) == [(c, n, h) for n, (c, h) in enumerate(puts)]  # nothing lost
    for client in "abcd":
        mine = [n for c, n, _ in taken if c == client]
        assert mine == sorted(mine)
    # Whenever a historical item was taken, no live item of a client without historical items waiting was left.
    q2: LaneQueue[tuple[str, int, bool]] = LaneQueue()
    for n, (client, historical) in enumerate(puts):
        q2.put(client, (client, n, historical), historical=historical)
    order = _drain(q2)
    first_historical = next((i for i, (_, _, h) in enumerate(order) if h), len(order))
    clients_with_historical = {c for c, h in puts if h}
    live_after = [client for client, _, historical in order[first_historical:] if not historical]
    assert set(live_after) <= clients_with_historical


def test_drain_empties_the_queue_in_get_order() -> None:
    q: LaneQueue[str] = LaneQueue()
    q.put("a", "h", historical=True)
    q.put("b", "l", historical=False)
    assert q.drain() == ["l", "h"]
    assert len(q) == 0
    q.put("a", "l2", historical=False)  # the historical count was reset with the drain
    assert q.get_nowait() == "l2"


async def test_get_waits_for_a_put() -> None:
    q: LaneQueue[str] = LaneQueue()
    getter = asyncio.ensure_future(q.get())
    await asyncio.sleep(0)
    assert not getter.done()
    q.put("a", "x", historical=False)
    assert await asyncio.wait_for(getter, 1) == "x"


async def test_capacity_blocks_at_its_limit_and_wakes_on_release() -> None:
    cap = Capacity(2)
    await cap.acquire()
    await cap.acquire()
    assert cap.full
    waiter = asyncio.ensure_future(cap.acquire())
    await asyncio.sleep(0)
    assert not waiter.done()
    cap.release()
    await asyncio.wait_for(waiter, 1)
    assert cap.used == 2
    cap.release(2)
    assert cap.used == 0
    with pytest.raises(ValueError):
        cap.release()
    with pytest.raises(ValueError):
        Capacity(0)
