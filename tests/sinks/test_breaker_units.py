"""LocationBreaker (sinks/budget.py): the counting, lost-probe and shutdown cases test_breaker_recovery.py and
test_executor.py leave out. An injected clock decides every pause; only the lost-probe wait sleeps (50 ms)."""

from __future__ import annotations

import asyncio

from sinks.budget import LocationBreaker


class Clock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def test_a_success_resets_the_count_below_the_threshold() -> None:
    b = LocationBreaker("count", threshold=3, base_s=5.0, max_s=20.0, clock=Clock())
    b.record_failure()
    b.record_failure()
    b.record_success()  # failures must be consecutive to trip
    assert b.record_failure() == 0.0 and b.record_failure() == 0.0
    assert not b.tripped
    assert b.record_failure() == 5.0
    assert b.tripped and b.trips == 1 and b.failures == 0


async def test_a_lost_probe_frees_its_slot_after_the_probe_timeout() -> None:
    clock = Clock()
    b = LocationBreaker("lost", threshold=1, base_s=5.0, max_s=20.0, probe_timeout_s=0.05, clock=clock)
    b.record_failure()
    clock.now += 5.0
    lost = await asyncio.wait_for(b.wait_ready(), 1)
    assert b.is_probe(lost)
    waiter = asyncio.ensure_future(b.wait_ready())
    await asyncio.sleep(0.1)  # longer than the timeout in real time, but the breaker's clock has not moved
    assert not waiter.done()
    clock.now += 0.05  # the probe never reported: its slot expires
    second = await asyncio.wait_for(waiter, 1)
    assert second and second != lost
    assert b.is_probe(second) and not b.is_probe(lost)
    assert b.record_failure(lost) == 0.0 and b.trips == 1  # the lost probe's late verdict changes nothing
    assert b.record_failure(second) == 10.0 and b.trips == 2


async def test_waiting_lanes_return_at_once_on_shutdown() -> None:
    clock = Clock()
    b = LocationBreaker("stop", threshold=1, base_s=60.0, max_s=60.0, clock=clock)
    b.record_auth_failure()
    stop = asyncio.Event()
    waiters = [asyncio.ensure_future(b.wait_ready(stop)) for _ in range(3)]
    await asyncio.sleep(0)
    assert not any(w.done() for w in waiters)  # paused for 60 s
    stop.set()
    assert await asyncio.wait_for(asyncio.gather(*waiters), 1) == [0, 0, 0]  # no probe token handed out
    assert b.tripped and b.auth_failed and b.paused_for == 60.0


async def test_a_released_probe_lets_the_next_lane_probe_at_once() -> None:
    clock = Clock()
    b = LocationBreaker("release", threshold=1, base_s=5.0, max_s=20.0, clock=clock)
    b.record_failure()
    clock.now += 5.0
    first = await asyncio.wait_for(b.wait_ready(), 1)
    waiter = asyncio.ensure_future(b.wait_ready())
    await asyncio.sleep(0)
    assert not waiter.done()
    b.release_probe(first)  # its event was dead-lettered without a GoHighLevel call: no verdict
    second = await asyncio.wait_for(waiter, 1)
    assert b.is_probe(second) and second != first
    assert b.trips == 1 and b.paused_for == 0.0
