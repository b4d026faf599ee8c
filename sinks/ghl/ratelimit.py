"""Per-location GoHighLevel request budget: 100 requests / 10 s (burst) and 200,000 / day.

GoHighLevel counts requests per app per location (sub-account), so there is one `RateLimiter` per GHL location,
shared by every coroutine that talks to it. The burst window is a sliding log of request times; the daily budget
is a token bucket refilling at daily/86400 per second. Both are tightened (never loosened beyond the configured
maximum) by the X-RateLimit-* headers of each response, which are the API's own view. A 429 pauses the whole
location, not just the request that got it. Time and sleep are injectable so tests never use the wall clock.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Awaitable, Callable, Mapping

from apro_sync.metrics import GHL_RATE_REMAINING

BURST_LIMIT = 100
BURST_INTERVAL_S = 10.0
DAILY_LIMIT = 200_000
DAY_S = 86_400.0

H_REMAINING = "x-ratelimit-remaining"
H_MAX = "x-ratelimit-max"
H_INTERVAL_MS = "x-ratelimit-interval-milliseconds"
H_DAILY_REMAINING = "x-ratelimit-daily-remaining"
H_DAILY_LIMIT = "x-ratelimit-limit-daily"

Clock = Callable[[], float]
Sleep = Callable[[float], Awaitable[None]]


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
    ) -> None:
        if burst < 1 or interval_s <= 0 or daily < 1:
            raise ValueError("rate limits must be positive")
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
        self._lock = asyncio.Lock()
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

    def _publish(self) -> None:
        GHL_RATE_REMAINING.labels(self.location, "burst").set(self.burst_remaining)
        GHL_RATE_REMAINING.labels(self.location, "daily").set(self.daily_remaining)

    def wait_time(self) -> float:
        """Seconds until one more request may go out (0 = now). Pure given the clock; used by `acquire`."""
        now = self._clock()
        self._expire(now)
        self._refill(now)
        waits = [self._paused_until - now]
        if len(self._sent) >= self.burst:
            # the oldest request that must leave the window before there is room for one more
            times = sorted(slot[0] for slot in self._sent)  # settled slots may be out of order
            waits.append(times[len(times) - self.burst] + self.interval_s - now)
        if self._daily_tokens < 1.0:
            waits.append((1.0 - self._daily_tokens) * DAY_S / self.daily)
        return max(0.0, *waits)

    # -- use ---------------------------------------------------------------------------------------------------
    async def acquire(self) -> list[float]:
        """Wait (never fail) until a request fits both budgets and no 429 pause is on, then take one slot.

        Returns the slot; pass it to `settle` when the answer (or error) arrives."""
        async with self._lock:  # FIFO: waiters are served in order, none overtakes a sleeping one
            while (delay := self.wait_time()) > 0:
                await self._sleep(delay)
            slot = [self._clock()]
            self._sent.append(slot)
            self._daily_tokens -= 1.0
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
        self._publish()
