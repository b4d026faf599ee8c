"""Per-location GoHighLevel request budget: 100 requests / 10 s (burst) and 200,000 / day.

One `RateLimiter` per location, shared by every coroutine: a sliding log for the burst, a token bucket for the
day, both tightened by the X-RateLimit-* headers; a 429 pauses the whole location. Time and sleep are
injectable. Daily pacing: docs/sync-engine.md, "Module notes"."""

from __future__ import annotations

import asyncio
import contextvars
import math
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterator, Mapping
from contextlib import contextmanager
from datetime import date, datetime, timedelta, timezone

from foundations.metrics import GHL_DAILY_BUDGET_USED, GHL_RATE_REMAINING

BURST_LIMIT = 100
BURST_INTERVAL_S = 10.0
DAILY_LIMIT = 200_000
DAY_S = 86_400.0

H_REMAINING = "x-ratelimit-remaining"
H_MAX = "x-ratelimit-max"
H_INTERVAL_MS = "x-ratelimit-interval-milliseconds"
H_DAILY_REMAINING = "x-ratelimit-daily-remaining"
H_DAILY_LIMIT = "x-ratelimit-limit-daily"

EXHAUSTED_RECHECK_S = 300.0  # daily budget used up: one request per this long finds out whether it was reset

Clock = Callable[[], float]
Sleep = Callable[[float], Awaitable[None]]
UtcNow = Callable[[], datetime]


# Requests made while this is True (a backfill's historical events) wait behind every live request for a slot.
BACKGROUND: contextvars.ContextVar[bool] = contextvars.ContextVar("ghl_background_request", default=False)


@contextmanager
def background_requests(background: bool = True) -> Iterator[None]:
    """Within this block the calls of the current task yield their turn at the rate limiter to live calls."""
    token = BACKGROUND.set(background)
    try:
        yield
    finally:
        BACKGROUND.reset(token)


class PriorityLock:
    """An asyncio lock whose waiters are served first-come within two classes: live before background."""

    def __init__(self) -> None:
        self._locked = False
        self._waiters: tuple[deque[asyncio.Future[None]], deque[asyncio.Future[None]]] = (deque(), deque())

    def locked(self) -> bool:
        return self._locked

    def waiting(self) -> tuple[int, int]:
        """(live, background) waiters, for tests and metrics."""
        return len(self._waiters[0]), len(self._waiters[1])

    async def acquire(self, background: bool = False) -> None:
        if not self._locked and not any(self._waiters):
            self._locked = True
            return
        queue = self._waiters[1 if background else 0]
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        queue.append(fut)
        try:
            await fut
        except asyncio.CancelledError:
            if fut.done() and not fut.cancelled():
                self.release()  # handed the lock just as it was cancelled: pass it on
            elif fut in queue:
                queue.remove(fut)
            raise

    def release(self) -> None:
        """Hand the lock to the first live waiter, else the first background one, else unlock."""
        for queue in self._waiters:
            while queue:
                fut = queue.popleft()
                if not fut.done():
                    fut.set_result(None)  # stays locked: ownership passes to that waiter
                    return
        self._locked = False


def _utcnow() -> datetime:
    return datetime.now(timezone.utc)


def seconds_left_in_day(now: datetime) -> float:
    """Seconds from `now` to the next UTC midnight (the daily budget's reset)."""
    now = now.astimezone(timezone.utc)
    midnight = datetime.combine(now.date() + timedelta(days=1), datetime.min.time(), tzinfo=timezone.utc)
    return max(0.0, (midnight - now).total_seconds())


def daily_used_ratio(remaining: int | None, limit: int) -> float:
    """Share of the daily limit used (0..1); 0 while the server's count is unknown."""
    if remaining is None or limit <= 0:
        return 0.0
    return min(1.0, max(0.0, (limit - remaining) / limit))


def daily_pace_interval(remaining: int, limit: int, seconds_left: float, pace_from: float,
                        share: float = 1.0) -> float:
    """Least seconds between this worker's requests: 0 below `pace_from` used; above it the remaining budget
    (this worker's `share` of it) spread over `seconds_left`; used up: `EXHAUSTED_RECHECK_S` (capped by the day)."""
    if daily_used_ratio(remaining, limit) < pace_from:
        return 0.0
    if remaining <= 0:
        return min(EXHAUSTED_RECHECK_S, max(seconds_left, 1.0))
    return seconds_left / max(remaining * share, 1e-9)


def _int_header(headers: Mapping[str, str], name: str) -> int | None:
    value = headers.get(name)
    if value is None:
        return None
    try:
        number = int(float(str(value).strip()))
    except ValueError:
        return None
    return number if number >= 0 else None


class RateLimiter:
    def __init__(
        self,
        location: str,
        *,
        burst: int = BURST_LIMIT,
        interval_s: float = BURST_INTERVAL_S,
        daily: int = DAILY_LIMIT,
        clock: Clock = time.monotonic,
        sleep: Sleep = asyncio.sleep,
        utcnow: UtcNow = _utcnow,
        daily_pace_from: float | None = None,
        live_reserve: float = 0.0,
    ) -> None:
        if burst < 1 or interval_s <= 0 or daily < 1:
            raise ValueError("rate limits must be positive")
        if not 0 <= live_reserve < 1:
            raise ValueError("live_reserve must be in [0, 1)")
        self.live_reserve = live_reserve
        if daily_pace_from is not None and not 0 < daily_pace_from <= 1:
            raise ValueError("daily_pace_from must be in (0, 1]")
        self.location = location
        self.burst = burst
        self.interval_s = interval_s
        self.daily = daily
        self._clock = clock
        self._sleep = sleep
        # Requests inside the burst window, as one-element lists so `settle` can move a request's time to when
        # its answer arrived: the server counts a request when it receives it, which is after we sent it, so
        # counting from our send time would let us exceed the server's window by the network latency.
        self._sent: deque[list[float]] = deque()
        self._daily_tokens = float(daily)
        self._daily_at = clock()
        self._paused_until = 0.0
        self._lock = PriorityLock()
        self._background_turn = asyncio.Lock()
        self._utcnow = utcnow
        self.daily_pace_from = daily_pace_from
        # The server's daily count (X-RateLimit-Daily-Remaining, minus what we sent since) and its UTC day.
        self._server_remaining: int | None = None
        self._server_day: date | None = None
        self._last_sent: float | None = None
        self._publish()

    # -- state -------------------------------------------------------------------------------------------------
    def _expire(self, now: float) -> None:
        if any(slot[0] <= now - self.interval_s for slot in self._sent):
            self._sent = deque(slot for slot in self._sent if slot[0] > now - self.interval_s)

    def _refill(self, now: float) -> None:
        elapsed = max(0.0, now - self._daily_at)
        self._daily_tokens = min(float(self.daily), self._daily_tokens + elapsed * self.daily / DAY_S)
        self._daily_at = now

    @property
    def burst_remaining(self) -> int:
        now = self._clock()
        self._expire(now)
        return max(0, self.burst - len(self._sent))

    @property
    def daily_remaining(self) -> int:
        self._refill(self._clock())
        return int(self._daily_tokens)

    @property
    def paused_for(self) -> float:
        """Seconds left of a 429 pause (0 when not paused)."""
        return max(0.0, self._paused_until - self._clock())

    def _pace_share(self) -> float:
        """This worker's share of the location's budget (1 here; `SharedRateLimiter` overrides)."""
        return 1.0

    def _roll_day(self) -> None:
        """A new UTC day: the server's count from yesterday no longer applies."""
        if self._server_day is not None and self._utcnow().date() != self._server_day:
            self._server_remaining = None
            self._server_day = None

    @property
    def daily_used_ratio(self) -> float:
        """Share of the location's daily limit used today, per the server's headers (0 until one arrives)."""
        self._roll_day()
        return daily_used_ratio(self._server_remaining, self.daily)

    def daily_pace_wait(self, now: float) -> float:
        """Seconds to hold the next request to spread the rest of the daily budget (0: not pacing)."""
        self._roll_day()
        if self.daily_pace_from is None or self._server_remaining is None or self._last_sent is None:
            return 0.0
        interval = daily_pace_interval(self._server_remaining, self.daily, seconds_left_in_day(self._utcnow()),
                                       self.daily_pace_from, self._pace_share())
        return self._last_sent + interval - now if interval > 0 else 0.0

    def _publish(self) -> None:
        GHL_RATE_REMAINING.labels(self.location, "burst").set(self.burst_remaining)
        GHL_RATE_REMAINING.labels(self.location, "daily").set(self.daily_remaining)
        GHL_DAILY_BUDGET_USED.labels(self.location).set(self.daily_used_ratio)

    def window_limit(self, background: bool = False) -> int:
        """Requests allowed in the burst window: all of it for live calls, less the live reserve for background."""
        if not background or not self.live_reserve:
            return self.burst
        return max(1, math.floor(self.burst * (1.0 - self.live_reserve)))

    def wait_time(self, background: bool = False) -> float:
        """Seconds until one more request may go out (0 = now). Pure given the clock; used by `acquire`."""
        now = self._clock()
        self._expire(now)
        self._refill(now)
        waits = [self._paused_until - now, self.daily_pace_wait(now)]
        limit = self.window_limit(background)
        if len(self._sent) >= limit:
            # the oldest request that must leave the window before there is room for one more
            times = sorted(slot[0] for slot in self._sent)  # settled slots may be out of order
            waits.append(times[len(times) - limit] + self.interval_s - now)
        if self._daily_tokens < 1.0:
            waits.append((1.0 - self._daily_tokens) * DAY_S / self.daily)
        return max(0.0, *waits)

    # -- use ---------------------------------------------------------------------------------------------------
    async def acquire(self) -> list[float]:
        """Wait (never fail) until a request fits both budgets and no 429 pause is on, then take one slot.

        Returns the slot; pass it to `settle` when the answer (or error) arrives."""
        # FIFO within a class: a live waiter sleeps holding the lock, so no live call overtakes it. Background calls
        # take their own turn first and sleep without the lock, so a live call never queues behind one; they take a
        # slot only within their smaller limit (the live reserve).
        if not BACKGROUND.get():
            await self._lock.acquire()
            try:
                while (delay := self.wait_time()) > 0:
                    await self._sleep(delay)
                return self._take()
            finally:
                self._lock.release()
        async with self._background_turn:
            while True:
                await self._lock.acquire(background=True)
                try:
                    if (delay := self.wait_time(background=True)) <= 0:
                        return self._take()
                finally:
                    self._lock.release()
                await self._sleep(delay)

    def _take(self) -> list[float]:
        slot = [self._clock()]
        self._sent.append(slot)
        self._daily_tokens -= 1.0
        self._last_sent = slot[0]
        if self._server_remaining is not None:
            self._server_remaining = max(0, self._server_remaining - 1)
        self._publish()
        return slot

    def settle(self, slot: list[float]) -> None:
        """The request of `slot` is answered: count it from now, which is never earlier than the server did."""
        slot[0] = max(slot[0], self._clock())

    def pause(self, seconds: float) -> None:
        """Hold every request to this location for `seconds` (after a 429). Extends, never shortens, a pause."""
        self._paused_until = max(self._paused_until, self._clock() + max(0.0, seconds))

    def observe(self, headers: Mapping[str, str]) -> None:
        """Adopt the API's view of the budget from X-RateLimit-* headers (case-insensitive mapping expected)."""
        now = self._clock()
        self._expire(now)
        self._refill(now)
        limit = _int_header(headers, H_MAX)
        if limit:
            self.burst = limit
        interval_ms = _int_header(headers, H_INTERVAL_MS)
        if interval_ms:
            self.interval_s = interval_ms / 1000.0
        remaining = _int_header(headers, H_REMAINING)
        if remaining is not None:
            # The server has seen more requests than we counted (other clients of the same app, restarts):
            # pad the window with "now" entries so our remaining never exceeds the server's.
            missing = (self.burst - len(self._sent)) - remaining
            for _ in range(max(0, missing)):
                self._sent.append([now])
        daily_limit = _int_header(headers, H_DAILY_LIMIT)
        if daily_limit:
            self.daily = daily_limit
        daily_remaining = _int_header(headers, H_DAILY_REMAINING)
        if daily_remaining is not None:
            self._daily_tokens = min(self._daily_tokens, float(daily_remaining))
            self._server_remaining = min(daily_remaining, self.daily)
            self._server_day = self._utcnow().date()
        self._publish()
