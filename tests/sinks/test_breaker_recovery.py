"""LocationBreaker recovery (sinks/budget.py, docs/sync-engine.md "Recovery after an outage").

Pure: the breaker runs on an injected clock; nothing sleeps. The outage simulations advance the clock by the
pause in force and by the duration of each probe call.
"""

from __future__ import annotations

import asyncio

import pytest

from foundations.config import Settings
from sinks.budget import LocationBreaker

RESUME_WITHIN_S = 30.0


class Clock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def _defaults(clock: Clock, label: str) -> LocationBreaker:
    s = Settings(_env_file=None)
    return LocationBreaker(label, threshold=s.sink_pause_after, base_s=s.sink_pause_s, max_s=s.sink_pause_max_s,
                           clock=clock)


def test_concurrent_failures_pause_once() -> None:
    clock = Clock()
    b = LocationBreaker("conc", threshold=5, base_s=5.0, max_s=20.0, clock=clock)
    pauses = [b.record_failure() for _ in range(32)]  # 32 lanes fail within the same instant
    assert pauses[:4] == [0.0] * 4  # below the threshold
    assert set(pauses[4:]) == {5.0}  # the trip they cause is the only one: no 10, 20, 40 … within a second
    assert b.trips == 1 and b.paused_for == 5.0
    clock.now += 3.0
    assert b.record_auth_failure() == 2.0  # a lane's 401 while paused does not lengthen the pause either
    assert b.trips == 1


def test_failures_of_non_probes_and_stale_probes_do_not_grow_the_pause() -> None:
    async def scenario() -> None:
        clock = Clock()
        b = LocationBreaker("stale", threshold=1, base_s=5.0, max_s=20.0, clock=clock)
        b.record_failure()
        clock.now += 5.0
        probe = await asyncio.wait_for(b.wait_ready(), 1)
        assert probe and b.is_probe(probe)
        assert b.record_failure(0) == 0.0  # a lane in flight since before the trip: ignored
        assert b.record_failure(probe + 1) == 0.0  # not the probe: ignored
        assert b.trips == 1
        assert b.record_failure(probe) == 10.0  # the probe failed: pause again, doubled
        assert b.record_failure(probe) == 10.0  # its token is spent: a second report changes nothing
        assert b.trips == 2

    asyncio.run(scenario())


def test_probe_schedule_doubles_per_failed_probe_up_to_the_cap() -> None:
    async def scenario() -> None:
        clock = Clock()
        b = LocationBreaker("sched", threshold=1, base_s=5.0, max_s=20.0, clock=clock)
        schedule = [b.record_failure()]
        for _ in range(6):
            clock.now += b.paused_for
            token = await asyncio.wait_for(b.wait_ready(), 1)
            assert token
            for _ in range(8):
                b.record_failure()  # lanes without the probe token fail meanwhile: no effect
            schedule.append(b.record_failure(token))
        assert schedule == [5.0, 10.0, 20.0, 20.0, 20.0, 20.0, 20.0]
        assert [b.pause_for_trip(k) for k in range(4)] == [5.0, 10.0, 20.0, 20.0]

    asyncio.run(scenario())


def test_successful_probe_closes_at_once_and_wakes_every_waiter() -> None:
    async def scenario() -> None:
        clock = Clock()
        b = LocationBreaker("close", threshold=1, base_s=5.0, max_s=20.0, clock=clock)
        b.record_failure()
        closed = b.closed_event
        clock.now += 5.0
        probe = await asyncio.wait_for(b.wait_ready(), 1)
        waiters = [asyncio.ensure_future(b.wait_ready()) for _ in range(4)]
        await asyncio.sleep(0)
        assert not any(w.done() for w in waiters) and not closed.is_set()  # one probe at a time
        b.record_success()
        assert closed.is_set() and not b.tripped and b.paused_for == 0
        assert await asyncio.wait_for(asyncio.gather(*waiters), 1) == [0, 0, 0, 0]  # all go, none probes
        assert b.closed_event is not closed  # a fresh event for the next outage
        assert probe

    asyncio.run(scenario())


async def _outage(b: LocationBreaker, clock: Clock, *, duration_s: float, lanes: int = 32,
                  probe_call_s: float = 1.0) -> float:
    """Simulate an outage of `duration_s` starting now; returns how long after recovery sync resumed.

    Every lane fails at once when the outage starts; then only probes reach GoHighLevel, each taking
    `probe_call_s` (the client's retries) before its verdict."""
    recovered_at = clock.now + duration_s
    for _ in range(lanes):
        b.record_failure()
    while True:
        clock.now += b.paused_for
        token = await asyncio.wait_for(b.wait_ready(), 1)
        assert token, "a tripped breaker lets one probe through once the pause is over"
        started = clock.now
        clock.now += probe_call_s
        if started + probe_call_s <= recovered_at:  # the probe's last attempt still failed
            b.record_failure(token)
            for _ in range(lanes - 1):
                b.record_failure()
            continue
        b.record_success()
        return max(0.0, clock.now - recovered_at)


@pytest.mark.parametrize("duration_s", [2.0, 10.0, 600.0])
def test_short_and_10_minute_outages_resume_within_30s_of_recovery(duration_s: float) -> None:
    async def scenario() -> None:
        clock = Clock()
        b = _defaults(clock, f"outage-{duration_s:g}")
        resumed_after = await _outage(b, clock, duration_s=duration_s)
        assert resumed_after <= RESUME_WITHIN_S
        assert not b.tripped
        # the breaker is fresh for the next outage: a short one pauses for the base pause again
        assert await _outage(b, clock, duration_s=1.0) <= b.base_s + 1.0

    asyncio.run(scenario())


def test_every_outage_length_up_to_10_minutes_resumes_within_the_cap() -> None:
    """Sweep outage lengths (0.7 s steps to 10 min): resume ≤ sink_pause_max_s + one probe call ≤ 30 s."""
    async def scenario() -> None:
        clock = Clock()
        worst = 0.0
        for step in range(0, 858):
            b = _defaults(clock, "sweep")
            worst = max(worst, await _outage(b, clock, duration_s=step * 0.7, probe_call_s=1.0))
        settings = Settings(_env_file=None)
        assert worst <= settings.sink_pause_max_s + 1.0 <= RESUME_WITHIN_S

    asyncio.run(scenario())
