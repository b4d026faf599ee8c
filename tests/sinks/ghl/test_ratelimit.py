"""RateLimiter, retry policy and error classification: pure logic with an injected clock (no wall clock)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import datetime, timedelta, timezone

import pytest
from prometheus_client import REGISTRY
from pydantic import SecretStr

from emulator import EmulatorConfig, RateLimitConfig
from emulator.server import EmulatorServer
from sinks.budget import SharedRateLimiter
from sinks.ghl.client import GhlClient
from sinks.ghl.errors import (
    GhlPermanentError,
    GhlRateLimited,
    GhlTransientError,
    error_for_status,
    safe_api_message,
)
from sinks.ghl.ratelimit import (
    DAY_S,
    EXHAUSTED_RECHECK_S,
    PriorityLock,
    RateLimiter,
    background_requests,
    daily_pace_interval,
    daily_used_ratio,
    seconds_left_in_day,
)
from sinks.ghl.retry import RetryPolicy
from tests.sinks.ghl.scripted_ghl import FakeTime


def limiter(fake: FakeTime, **kw: object) -> RateLimiter:
    return RateLimiter("rl-test", clock=fake.clock, sleep=fake.sleep, **kw)  # type: ignore[arg-type]


async def test_burst_window_waits_instead_of_exceeding() -> None:
    fake = FakeTime()
    rl = limiter(fake, burst=3, interval_s=10.0)
    for _ in range(3):
        await rl.acquire()
    assert fake.sleeps == [] and rl.burst_remaining == 0
    await rl.acquire()  # 4th must wait for the first to leave the 10 s window
    assert fake.sleeps == [pytest.approx(10.0)]


async def test_sliding_window_frees_slots_as_they_age() -> None:
    fake = FakeTime()
    rl = limiter(fake, burst=2, interval_s=10.0)
    await rl.acquire()
    fake.now += 6
    await rl.acquire()
    await rl.acquire()  # oldest was 6 s ago: wait 4 s
    assert fake.sleeps == [pytest.approx(4.0)]
    await rl.acquire()  # the one at t+6 leaves at t+16, now t+10 → 6 s
    assert fake.sleeps[-1] == pytest.approx(6.0)


async def test_live_requests_get_slots_before_waiting_background_ones() -> None:
    """A backfill's calls (background) wait without holding the limiter, so live calls overtake all of them."""
    fake = FakeTime()
    window_over = asyncio.Event()

    async def sleep(seconds: float) -> None:  # the first waiter sleeps until the test lets the window pass
        await window_over.wait()
        fake.now += seconds

    rl = RateLimiter("rl-prio", clock=fake.clock, sleep=sleep, burst=1, interval_s=10.0)
    await rl.acquire()  # the budget is spent: everyone after this waits for the window
    order: list[str] = []

    async def call(name: str, background: bool) -> None:
        with background_requests(background):
            await rl.acquire()
        order.append(name)

    tasks = [asyncio.ensure_future(call("h1", True)), asyncio.ensure_future(call("h2", True))]
    await asyncio.sleep(0)  # h1 and h2 sleep for the window, neither holding the lock
    tasks += [asyncio.ensure_future(call("l1", False)), asyncio.ensure_future(call("l2", False))]
    await asyncio.sleep(0)
    window_over.set()
    await asyncio.gather(*tasks)
    assert order == ["l1", "l2", "h1", "h2"]  # FIFO within each class, live first


async def test_background_calls_leave_the_live_reserve_free() -> None:
    """With 20 % of the window reserved, a backfill fills 8 of 10 slots and then waits; live calls take the other
    two at once, and the background ones resume as the window slides."""
    fake = FakeTime()
    rl = limiter(fake, burst=10, interval_s=10.0, live_reserve=0.2)
    assert rl.window_limit() == 10 and rl.window_limit(background=True) == 8
    with background_requests():
        for _ in range(8):
            await rl.acquire()
        assert fake.sleeps == [] and rl.wait_time(background=True) == pytest.approx(10.0)
    for _ in range(2):
        await rl.acquire()  # live: no wait although the backfill used its whole share
    assert fake.sleeps == [] and rl.burst_remaining == 0
    with background_requests():
        await rl.acquire()  # waits for the first background slot to leave the window, then takes it
    assert fake.sleeps == [pytest.approx(10.0)]


def test_live_reserve_never_shuts_background_out() -> None:
    fake = FakeTime()
    assert limiter(fake, burst=1, live_reserve=0.9).window_limit(background=True) == 1
    assert SharedRateLimiter("x", share=0.5, live_reserve=0.2, clock=fake.clock).window_limit(background=True) == 40
    with pytest.raises(ValueError):
        limiter(fake, live_reserve=1.0)


async def test_priority_lock_survives_cancelled_waiters() -> None:
    lock = PriorityLock()
    await lock.acquire()
    waiter = asyncio.ensure_future(lock.acquire(background=True))
    live = asyncio.ensure_future(lock.acquire())
    await asyncio.sleep(0)
    assert lock.waiting() == (1, 1)
    live.cancel()
    await asyncio.gather(live, return_exceptions=True)
    lock.release()  # the cancelled live waiter is skipped: the background one gets the lock
    await asyncio.wait_for(waiter, 1)
    assert lock.locked() and lock.waiting() == (0, 0)
    lock.release()
    assert not lock.locked()


async def test_100_per_10s_default_never_exceeded() -> None:
    fake = FakeTime()
    rl = limiter(fake)
    times = []
    for _ in range(250):
        await rl.acquire()
        times.append(fake.now)
    for i in range(100, len(times)):
        assert times[i] - times[i - 100] >= 10.0 - 1e-9


async def test_daily_budget_waits_for_refill() -> None:
    fake = FakeTime()
    rl = limiter(fake, burst=1000, daily=2)
    await rl.acquire()
    await rl.acquire()
    await rl.acquire()
    assert fake.sleeps == [pytest.approx(DAY_S / 2)]


async def test_pause_holds_everyone_and_only_extends() -> None:
    fake = FakeTime()
    rl = limiter(fake)
    rl.pause(5)
    rl.pause(2)  # shorter: ignored
    assert rl.paused_for == pytest.approx(5)
    await asyncio.gather(rl.acquire(), rl.acquire(), rl.acquire())
    assert fake.sleeps == [pytest.approx(5)]  # the first waiter slept; the others found the pause over


async def test_headers_tighten_budget_and_set_gauges() -> None:
    fake = FakeTime()
    rl = limiter(fake)
    await rl.acquire()
    rl.observe({"x-ratelimit-remaining": "2", "x-ratelimit-max": "50", "x-ratelimit-interval-milliseconds": "5000",
                "x-ratelimit-daily-remaining": "10", "x-ratelimit-limit-daily": "100000"})
    assert (rl.burst, rl.interval_s, rl.daily) == (50, 5.0, 100000)
    assert rl.burst_remaining == 2 and rl.daily_remaining == 10
    assert REGISTRY.get_sample_value("apro_ghl_rate_budget_remaining", {"location": "rl-test", "window": "burst"}) == 2
    await rl.acquire()
    await rl.acquire()
    await rl.acquire()
    assert fake.sleeps == [pytest.approx(5.0)]


async def test_headers_never_loosen_local_count_and_garbage_is_ignored() -> None:
    fake = FakeTime()
    rl = limiter(fake, burst=5)
    for _ in range(4):
        await rl.acquire()
    rl.observe({"x-ratelimit-remaining": "100", "x-ratelimit-daily-remaining": "abc"})
    assert rl.burst_remaining == 1


def test_backoff_is_capped_full_jitter() -> None:
    top = RetryPolicy(base_s=0.5, cap_s=4.0, rand=lambda: 1.0)
    assert [top.backoff(n) for n in range(1, 7)] == [0.5, 1.0, 2.0, 4.0, 4.0, 4.0]
    assert RetryPolicy(rand=lambda: 0.0).backoff(3) == 0.0
    half = RetryPolicy(base_s=1.0, cap_s=30.0, rand=lambda: 0.5)
    assert half.backoff(4) == 4.0


def test_rate_limit_pause_prefers_retry_after_and_clamps() -> None:
    policy = RetryPolicy(base_s=1.0, max_retry_after_s=60, rand=lambda: 1.0)
    assert policy.rate_limit_pause(GhlRateLimited("x", retry_after=12), 1) == 12
    assert policy.rate_limit_pause(GhlRateLimited("x", retry_after=3600), 1) == 60
    assert policy.rate_limit_pause(GhlRateLimited("x"), 3) == 4.0


async def test_retrying_only_transient_with_fake_sleep() -> None:
    fake = FakeTime()
    policy = RetryPolicy(max_attempts=4, base_s=1.0, rand=lambda: 1.0)
    calls = 0

    async def flaky() -> str:
        nonlocal calls
        calls += 1
        if calls < 3:
            raise GhlTransientError("HTTP 503 from GET /x")
        return "ok"

    result = None
    async for attempt in policy.retrying(sleep=fake.sleep):
        with attempt:
            result = await flaky()
    assert result == "ok" and calls == 3 and fake.sleeps == [1.0, 2.0]

    calls = 0

    async def broken() -> None:
        nonlocal calls
        calls += 1
        raise GhlPermanentError("HTTP 400 from GET /x")

    with pytest.raises(GhlPermanentError):
        async for attempt in policy.retrying(sleep=fake.sleep):
            with attempt:
                await broken()
    assert calls == 1


@pytest.mark.parametrize(("status", "kind"), [
    (429, GhlRateLimited), (500, GhlTransientError), (502, GhlTransientError), (503, GhlTransientError),
    (408, GhlTransientError), (400, GhlPermanentError), (401, GhlPermanentError), (403, GhlPermanentError),
    (404, GhlPermanentError), (409, GhlPermanentError), (422, GhlPermanentError),
])
def test_status_classification(status: int, kind: type) -> None:
    error = error_for_status(status, "POST /contacts/upsert", {"message": "nope"})
    assert type(error) is kind
    assert str(error) == f"HTTP {status} from POST /contacts/upsert: nope"


@pytest.mark.parametrize("message", [
    "jane@example.com already exists", "Phone +1 480 555 0100 invalid", "Invalid value Jane", ["bad", "Jane Roe"],
])
def test_api_messages_that_could_carry_phi_are_dropped(message: object) -> None:
    assert safe_api_message({"message": message}, {"firstName": "Jane", "lastName": "Roe"}) is None


def test_safe_api_messages_are_kept_and_truncated() -> None:
    assert safe_api_message({"message": ["locationId must be a string", "x"]}, {}) == "locationId must be a string; x"
    assert len(safe_api_message({"message": "a" * 500}) or "") == 160
    assert safe_api_message("not a dict") is None and safe_api_message({"message": ""}) is None


# ---------------------------------------------------------------- daily budget (issue 16, item 6)

NOON = datetime(2026, 11, 20, 12, 0, tzinfo=timezone.utc)


def _utc(fake: FakeTime, at: datetime = NOON) -> Callable[[], datetime]:
    start = fake.now
    return lambda: at + timedelta(seconds=fake.now - start)


def _used(location: str) -> float | None:
    return REGISTRY.get_sample_value("apro_ghl_daily_budget_used_ratio", {"location": location})


def test_daily_pace_interval_spreads_the_rest_over_the_day() -> None:
    assert seconds_left_in_day(NOON) == 43_200
    assert seconds_left_in_day(datetime(2026, 11, 20, 23, 59, 59, tzinfo=timezone.utc)) == 1
    assert daily_used_ratio(None, 200_000) == 0 and daily_used_ratio(40_000, 200_000) == pytest.approx(0.8)
    assert daily_pace_interval(100_000, 200_000, 43_200, 0.8) == 0  # half used: full speed
    assert daily_pace_interval(40_000, 200_000, 43_200, 0.8) == pytest.approx(43_200 / 40_000)  # 80 %: spread
    assert daily_pace_interval(40_000, 200_000, 43_200, 0.8, share=0.5) == pytest.approx(43_200 / 20_000)
    assert daily_pace_interval(0, 200_000, 43_200, 0.8) == EXHAUSTED_RECHECK_S  # used up: recheck, don't hammer
    assert daily_pace_interval(0, 200_000, 10, 0.8) == 10


async def test_daily_headers_set_the_used_gauge_and_the_day_rolls_over() -> None:
    fake = FakeTime()
    rl = RateLimiter("rl-daily-gauge", clock=fake.clock, sleep=fake.sleep, utcnow=_utc(fake))
    assert _used("rl-daily-gauge") == 0  # exported before the first answer
    await rl.acquire()
    rl.observe({"x-ratelimit-daily-remaining": "50000", "x-ratelimit-limit-daily": "200000"})
    assert rl.daily_used_ratio == pytest.approx(0.75) and _used("rl-daily-gauge") == pytest.approx(0.75)
    await rl.acquire()  # counted locally until the next answer
    assert _used("rl-daily-gauge") == pytest.approx(150_001 / 200_000)
    assert fake.sleeps == []  # no pacing unless asked for
    fake.now += 12 * 3600  # past UTC midnight: yesterday's count is void
    await rl.acquire()
    assert _used("rl-daily-gauge") == 0


async def test_executor_slows_down_above_the_threshold_and_spreads_the_rest() -> None:
    fake = FakeTime()
    rl = RateLimiter("rl-daily-pace", clock=fake.clock, sleep=fake.sleep, utcnow=_utc(fake), daily_pace_from=0.8)
    await rl.acquire()
    rl.observe({"x-ratelimit-daily-remaining": "100001", "x-ratelimit-limit-daily": "200000"})
    for _ in range(3):
        await rl.acquire()
    assert fake.sleeps == []  # below 80 %: full speed
    rl.observe({"x-ratelimit-daily-remaining": "40000", "x-ratelimit-limit-daily": "200000"})
    await rl.acquire()
    assert fake.sleeps == [pytest.approx(43_200 / 40_000, rel=1e-3)]  # 40,000 left over 12 h
    rl.observe({"x-ratelimit-daily-remaining": "10", "x-ratelimit-limit-daily": "200000"})
    await rl.acquire()
    assert fake.sleeps[-1] == pytest.approx((43_200 - fake.sleeps[0]) / 10, rel=1e-3)
    # never more than the remaining budget before the day ends
    sent_before_midnight = 0
    while fake.now - 1000.0 < 43_200 and sent_before_midnight < 100:
        await rl.acquire()
        sent_before_midnight += fake.now - 1000.0 < 43_200
    assert sent_before_midnight <= 10


async def test_shared_limiter_paces_its_share() -> None:
    fake = FakeTime()
    rl = SharedRateLimiter("rl-daily-share", share=0.25, clock=fake.clock, sleep=fake.sleep, utcnow=_utc(fake),
                           daily_pace_from=0.8)
    await rl.acquire()
    rl.observe({"x-ratelimit-daily-remaining": "20000", "x-ratelimit-limit-daily": "200000"})
    await rl.acquire()
    assert fake.sleeps == [pytest.approx(43_200 / 5_000, rel=1e-3)]


async def test_daily_budget_from_the_emulator_headers(ghl_emulator_config: EmulatorConfig) -> None:
    """The emulator sends GoHighLevel's documented X-RateLimit-*-Daily headers: the gauge follows them and the
    limiter starts spreading the rest once half the (small) daily limit is used."""
    cfg = ghl_emulator_config.model_copy(update={"rate_limit": RateLimitConfig(burst_max=100, daily_max=10)})
    loc = cfg.locations[0]
    fake = FakeTime()
    async with EmulatorServer(cfg) as emu:
        rl = RateLimiter("rl-emulator", clock=fake.clock, sleep=fake.sleep, utcnow=_utc(fake), daily_pace_from=0.5)
        client = GhlClient(emu.base_url, SecretStr(loc.token), loc.id, limiter=rl, sleep=fake.sleep,
                           metrics_location="rl-emulator")
        try:
            used = []
            for _ in range(6):
                await client.list_workflows()
                used.append(_used("rl-emulator"))
        finally:
            await client.aclose()
    assert used == pytest.approx([0.1, 0.2, 0.3, 0.4, 0.5, 0.6])
    assert rl.daily == 10 and rl.daily_remaining <= 4
    # calls 1-5 at full speed; the 6th waited for its share of what is left of the day (5 left)
    assert len(fake.sleeps) == 1 and fake.sleeps[0] == pytest.approx(43_200 / 5, rel=1e-3)
