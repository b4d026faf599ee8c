"""Per-location rate limits as GHL documents them: a burst window and a daily quota, reported on every answer."""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone

from emulator.config import RateLimitConfig


@dataclass
class Decision:
    allowed: bool
    headers: dict[str, str]
    retry_after_s: float = 0.0  # time until a burst slot frees up (for Retry-After when configured)


@dataclass
class _Bucket:
    hits: deque[float] = field(default_factory=deque)
    day: str = ""
    daily: int = 0


class RateLimiter:
    """Sliding burst window + UTC-day quota per location. Rejected requests do not consume quota."""

    def __init__(
        self,
        config: RateLimitConfig,
        monotonic: Callable[[], float] = time.monotonic,
        utcnow: Callable[[], datetime] = lambda: datetime.now(timezone.utc),
    ) -> None:
        self.config = config
        self.monotonic = monotonic
        self.utcnow = utcnow
        self.buckets: dict[str, _Bucket] = {}

    def reset(self) -> None:
        self.buckets.clear()

    def check(self, location_id: str) -> Decision:
        cfg = self.config
        b = self.buckets.setdefault(location_id, _Bucket())
        now = self.monotonic()
        window = cfg.interval_ms / 1000
        while b.hits and b.hits[0] <= now - window:
            b.hits.popleft()
        day = self.utcnow().date().isoformat()
        if b.day != day:
            b.day, b.daily = day, 0
        allowed = not cfg.enabled or (len(b.hits) < cfg.burst_max and b.daily < cfg.daily_max)
        if allowed:
            b.hits.append(now)
            b.daily += 1
        retry = 0.0
        if not allowed and b.hits and len(b.hits) >= cfg.burst_max:
            retry = max(0.0, b.hits[0] + window - now)
        headers = {
            "X-RateLimit-Limit-Daily": str(cfg.daily_max),
            "X-RateLimit-Daily-Remaining": str(max(cfg.daily_max - b.daily, 0)),
            "X-RateLimit-Interval-Milliseconds": str(cfg.interval_ms),
            "X-RateLimit-Max": str(cfg.burst_max),
            "X-RateLimit-Remaining": str(max(cfg.burst_max - len(b.hits), 0)),
        }
        return Decision(allowed, headers, retry)
