"""Per-GoHighLevel-location shared budget and outage breaker for the sink.

`SharedRateLimiter` caps this worker to `share` of the location's burst budget so concurrent workers cannot
spend the same remainder. `LocationBreaker` pauses a location for every lane after consecutive transient
failures, with a capped pause, so an outage costs one probe per pause (docs/sync-engine.md, "Rate budget ownership")."""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable, Mapping

from foundations.metrics import GHL_LOCATION_PAUSED
from sinks.ghl.ratelimit import RateLimiter

log = logging.getLogger("apro_sync.sink")


class SharedRateLimiter(RateLimiter):
    """A `RateLimiter` that uses only `share` (0 < share <= 1) of the location's burst budget."""

    def __init__(self, location: str, *, share: float = 1.0, **kwargs: object) -> None:
        if not 0 < share <= 1:
            raise ValueError("share must be in (0, 1]")
        self.share = share
        super().__init__(location, **kwargs)  # type: ignore[arg-type]
        self._full_burst = self.burst
        self.burst = self._scaled()

    def _pace_share(self) -> float:
        return self.share

    def _scaled(self) -> int:
        return max(1, math.floor(self._full_burst * self.share))

    def observe(self, headers: Mapping[str, str]) -> None:
        # Let the base class pad the window against the server's full-size view, then take our share of it.
        self.burst = self._full_burst
        super().observe(headers)
        self._full_burst = self.burst
        self.burst = self._scaled()


class LocationBreaker:
    """Pauses a GoHighLevel location for every lane of this worker (shared by all lanes).

    - Outage: `threshold` consecutive transient failures pause it for `base_s`.
    - Credentials: a 401/403 the sink has confirmed as location-wide (bad or rotated token, missing scope) pauses
      it at once (`record_auth_failure`); events are held, never dead-lettered.
    While tripped, an expired pause lets ONE caller through as the probe (half-open): its success closes the
    breaker for everyone at once, its failure pauses again for twice as long, capped at `max_s`. Failures of
    calls that are not the probe (lanes already in flight when it tripped) do not lengthen the pause: the pause
    schedule is base_s * 2**k after k failed probes, capped. A probe that never reports (its event was
    abandoned) frees the slot after `probe_timeout_s`, or at once through `release_probe`.
    """

    def __init__(self, label: str, *, threshold: int = 5, base_s: float = 5.0, max_s: float = 20.0,
                 probe_timeout_s: float = 30.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.label = label
        self.threshold = max(1, threshold)
        self.base_s = base_s
        self.max_s = max_s
        self.probe_timeout_s = probe_timeout_s
        self._clock = clock
        self.failures = 0
        self.trips = 0
        self.auth_failed = False
        self.paused_until = 0.0
        self._probe_until = 0.0
        self._probe_holder = 0  # token of the caller currently probing (0: none)
        self._tokens = 0
        self._changed = asyncio.Event()
        self._closed = asyncio.Event()  # set (and replaced) each time the breaker closes after a trip
        GHL_LOCATION_PAUSED.labels(label).set(0)

    @property
    def paused_for(self) -> float:
        return max(0.0, self.paused_until - self._clock())

    @property
    def tripped(self) -> bool:
        """Paused at least once since the last success: calls go through one probe at a time."""
        return self.trips > 0 or self.auth_failed

    def _notify(self) -> None:
        self._probe_until = 0.0
        self._probe_holder = 0
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()

    @property
    def closed_event(self) -> asyncio.Event:
        """Set when the breaker next closes after a trip: lanes backing off wake on it (fast recovery)."""
        return self._closed

    def is_probe(self, token: int) -> bool:
        """True when `token` is the probe currently allowed through."""
        return bool(token) and token == self._probe_holder

    def pause_for_trip(self, trip: int) -> float:
        """The pause of the `trip`-th trip since the last success (0-based): base_s doubling, capped at max_s."""
        return min(self.max_s, self.base_s * (2.0 ** min(trip, 32)))

    def _trip(self) -> float:
        pause = self.pause_for_trip(self.trips)
        self.trips += 1
        self.failures = 0
        self.paused_until = max(self.paused_until, self._clock() + pause)
        GHL_LOCATION_PAUSED.labels(self.label).set(1)
        self._notify()
        return pause

    def record_success(self) -> None:
        if self.auth_failed:
            log.warning("sink: GoHighLevel location %s accepts the credentials again; resuming", self.label)
        if self.failures or self.tripped:
            GHL_LOCATION_PAUSED.labels(self.label).set(0)
        was_tripped = self.tripped
        self.failures = 0
        self.trips = 0
        self.auth_failed = False
        self.paused_until = 0.0
        if was_tripped:
            self._notify()
            closed, self._closed = self._closed, asyncio.Event()
            closed.set()

    def record_failure(self, token: int = 0) -> float:
        """Count a transient failure (`token`: the caller's probe token, 0 if none); returns the pause in force.

        While tripped only the probe's failure pauses again: concurrent failures of calls sent before the trip
        (or by a stale probe) count once, as the trip they already caused."""
        if self.tripped:
            if self.is_probe(token):
                self._trip()
            return self.paused_for
        self.failures += 1
        if self.failures >= self.threshold:
            self._trip()
        return self.paused_for

    def record_auth_failure(self, token: int = 0) -> float:
        """GoHighLevel rejected the location's credentials (401/403 location-wide): pause; returns the pause.

        Like `record_failure`, once paused only the probe's rejection lengthens the pause."""
        if self.tripped and not self.is_probe(token):
            self.auth_failed = True
            return self.paused_for
        self.auth_failed = True
        return self._trip()

    def release_probe(self, token: int) -> None:
        """The probe `token` ended without a verdict (no GoHighLevel call, dead-lettered, abandoned): let the
        next caller probe. A no-op once any verdict was recorded or another caller holds the slot."""
        if token and token == self._probe_holder:
            self._notify()

    async def wait_ready(self, stop: asyncio.Event | None = None) -> int:
        """Sleep while the location is paused, then (if tripped) until this caller may be the probe. Returns a
        probe token (non-zero) when the caller is the probe: it must end with record_success / record_failure /
        record_auth_failure or `release_probe(token)`. Returns 0 at once when `stop` is set."""
        while True:
            if stop is not None and stop.is_set():
                return 0
            delay = self.paused_for
            if delay <= 0:
                if not self.tripped:
                    return 0
                now = self._clock()
                if now >= self._probe_until:  # no probe in flight (or it was lost): this caller probes
                    self._tokens += 1
                    self._probe_holder = self._tokens
                    self._probe_until = now + self.probe_timeout_s
                    return self._probe_holder
                delay = self._probe_until - now
            waits = [asyncio.ensure_future(self._changed.wait())]
            if stop is not None:
                waits.append(asyncio.ensure_future(stop.wait()))
            try:
                await asyncio.wait(waits, timeout=delay, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for w in waits:
                    w.cancel()


__all__ = ["LocationBreaker", "SharedRateLimiter"]
