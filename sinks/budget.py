"""Per-GoHighLevel-location shared budget and outage breaker for the sink.

Rate budget across workers (docs/sync-engine.md, "Rate budget"): events are partitioned by client, so every
worker may write to every GHL location. GoHighLevel reports the location's remaining burst budget on every answer
(X-RateLimit-Remaining / -Max / -Interval-Milliseconds); each worker's `RateLimiter` adopts that server view, so
requests made by the other workers count against ours too, and a 429 pauses the location for the whole worker.
`SharedRateLimiter` additionally caps this worker to `share` of the burst (APRO_GHL_RATE_SHARE, e.g. 1/N for N
workers) so that concurrent workers cannot all spend the same remaining budget at once.

`LocationBreaker`: consecutive transient failures (after the client's own retries) of any lane for a location
pause that location for every lane (capped exponential), so an outage costs one probe per pause, not a storm of
retries; the first success closes it. An outage never dead-letters an event.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable, Mapping

from apro_sync.metrics import GHL_LOCATION_PAUSED
from sinks.ghl.ratelimit import RateLimiter


class SharedRateLimiter(RateLimiter):
    """A `RateLimiter` that uses only `share` (0 < share <= 1) of the location's burst budget."""

    def __init__(self, location: str, *, share: float = 1.0, **kwargs: object) -> None:
        if not 0 < share <= 1:
            raise ValueError("share must be in (0, 1]")
        self.share = share
        super().__init__(location, **kwargs)  # type: ignore[arg-type]
        self._full_burst = self.burst
        self.burst = self._scaled()

    def _scaled(self) -> int:
        return max(1, math.floor(self._full_burst * self.share))

    def observe(self, headers: Mapping[str, str]) -> None:
        # Let the base class pad the window against the server's full-size view, then take our share of it.
        self.burst = self._full_burst
        super().observe(headers)
        self._full_burst = self.burst
        self.burst = self._scaled()


class LocationBreaker:
    """Pauses a GoHighLevel location after `threshold` consecutive transient failures (shared by all lanes)."""

    def __init__(self, label: str, *, threshold: int = 5, base_s: float = 5.0, max_s: float = 300.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.label = label
        self.threshold = max(1, threshold)
        self.base_s = base_s
        self.max_s = max_s
        self._clock = clock
        self.failures = 0
        self.trips = 0
        self.paused_until = 0.0
        GHL_LOCATION_PAUSED.labels(label).set(0)

    @property
    def paused_for(self) -> float:
        return max(0.0, self.paused_until - self._clock())

    def record_success(self) -> None:
        if self.failures or self.trips:
            GHL_LOCATION_PAUSED.labels(self.label).set(0)
        self.failures = 0
        self.trips = 0
        self.paused_until = 0.0

    def record_failure(self) -> float:
        """Count a transient failure; returns the pause (seconds) now in force (0 if none)."""
        self.failures += 1
        if self.failures >= self.threshold:
            pause = min(self.max_s, self.base_s * (2 ** self.trips))
            self.trips += 1
            self.failures = 0
            self.paused_until = max(self.paused_until, self._clock() + pause)
            GHL_LOCATION_PAUSED.labels(self.label).set(1)
        return self.paused_for

    async def wait_ready(self, stop: asyncio.Event | None = None) -> None:
        """Sleep while the location is paused (returns early when `stop` is set)."""
        while (delay := self.paused_for) > 0:
            if stop is None:
                await asyncio.sleep(delay)
                continue
            try:
                await asyncio.wait_for(stop.wait(), timeout=delay)
                return
            except asyncio.TimeoutError:
                pass


__all__ = ["LocationBreaker", "SharedRateLimiter"]
