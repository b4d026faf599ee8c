"""Retry policy for GoHighLevel calls: tenacity, transient errors only, capped exponential backoff, full jitter.

A 429 does not wait here: the client pauses the location's `RateLimiter` (every request to that location waits,
not only this one), so the retry itself waits 0 and the limiter does the waiting. After the last attempt the
transient error is re-raised: the sink decides to pause and redeliver, never to dead-letter it.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from tenacity import AsyncRetrying, RetryCallState, retry_if_exception_type, stop_after_attempt

from sinks.ghl.errors import GhlRateLimited, GhlTransientError

Sleep = Callable[[float], Awaitable[None]]


@dataclass(frozen=True)
class RetryPolicy:
    max_attempts: int = 5
    base_s: float = 0.5
    cap_s: float = 30.0
    # Retry-After values above this are clamped: a sink pause handles longer outages better than one request.
    max_retry_after_s: float = 120.0
    rand: Callable[[], float] = field(default=random.random, compare=False)

    def backoff(self, attempt: int) -> float:
        """Full jitter: uniform in [0, min(cap, base * 2**(attempt-1))] for the `attempt`-th failure (1-based)."""
        ceiling = min(self.cap_s, self.base_s * (2 ** max(0, attempt - 1)))
        return self.rand() * ceiling

    def rate_limit_pause(self, error: GhlRateLimited, attempt: int) -> float:
        """How long a 429 pauses the location: Retry-After when given, else jittered exponential backoff."""
        if error.retry_after is not None:
            return min(max(0.0, error.retry_after), self.max_retry_after_s)
        return self.backoff(attempt)

    def wait_for(self, state: RetryCallState) -> float:
        error = state.outcome.exception() if state.outcome else None
        if isinstance(error, GhlRateLimited):
            return 0.0  # the limiter pause (set by the client) makes everybody wait; see module doc
        return self.backoff(state.attempt_number)

    def retrying(self, *, sleep: Sleep = asyncio.sleep,
                 before_sleep: Callable[[RetryCallState], None] | None = None) -> AsyncRetrying:
        return AsyncRetrying(
            stop=stop_after_attempt(max(1, self.max_attempts)),
            wait=self.wait_for,
            retry=retry_if_exception_type(GhlTransientError),
            sleep=sleep,
            before_sleep=before_sleep,
            reraise=True,
        )
