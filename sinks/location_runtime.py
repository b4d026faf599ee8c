"""One GoHighLevel location as a worker's lanes share it: its API clients on one rate limiter, its breaker and,
once resolved, its op executor (ids of pipelines, stages, workflows and custom fields)."""

from __future__ import annotations

import functools
import logging
from typing import Any

from foundations.config import Settings
from sinks.budget import LocationBreaker, SharedRateLimiter
from sinks.executor import OpExecutor
from sinks.ghl.client import GhlClient
from sinks.ghl.retry import RetryPolicy
from sinks.locations import GhlTarget
from sinks.oauth import OAuthManager
from sinks.provision import ResolvedIdsCache
from sinks.shadow import Send, ShadowGhlClient

log = logging.getLogger("apro_sync.sink")


class LocationRuntime:
    """Clients, resolved ids and breaker of one GoHighLevel location (shared by all lanes of this worker)."""

    def __init__(self, target: GhlTarget, settings: Settings, ids_cache: ResolvedIdsCache,
                 metrics_label: str | None = None, shadow_send: Send | None = None,
                 oauth: OAuthManager | None = None) -> None:
        self.target = target
        self.label = target.ghl_location_id
        limiter = SharedRateLimiter(metrics_label or target.label, share=settings.ghl_rate_share,
                                    daily_pace_from=settings.ghl_daily_pace_from,
                                    live_reserve=settings.ghl_live_reserve)
        # Shadow mode: writes are recorded to the shadow topic instead of sent (reads still go to GoHighLevel).
        client_class: Any = GhlClient
        if shadow_send is not None:
            client_class = functools.partial(ShadowGhlClient, send=shadow_send)
        auth = oauth.auth_for(target) if oauth is not None else None  # None: Private Integration Token
        self.client = client_class(settings.ghl_base_url, target.token, target.ghl_location_id, auth=auth,
                                   limiter=limiter, timeout=settings.ghl_timeout_s,
                                   max_retries=settings.ghl_max_retries, metrics_location=target.label)
        # Same limiter, no automatic retries: notes and enrollments retry in the executor, checking first.
        self.once = client_class(settings.ghl_base_url, target.token, target.ghl_location_id, auth=auth,
                                 limiter=limiter, timeout=settings.ghl_timeout_s,
                                 retry_policy=RetryPolicy(max_attempts=1), metrics_location=target.label)
        self.breaker = LocationBreaker(target.label, threshold=settings.sink_pause_after,
                                       base_s=settings.sink_pause_s, max_s=settings.sink_pause_max_s)
        self._ids_cache = ids_cache
        self._executor: OpExecutor | None = None

    async def executor(self) -> OpExecutor:
        """The location's one executor (its identity lock must be shared by every lane), made on first use."""
        if self._executor is None:
            ids = await self._ids_cache.get(self.client, self.target)
            if self._executor is not None:  # another lane made it while this one awaited the ids
                return self._executor
            for warning in ids.warnings:
                log.warning("sink: GoHighLevel location %s: %s", self.label, warning)
            if ids.missing:
                log.warning("sink: GoHighLevel location %s is missing %s; run `apro-sync provision`",
                            self.label, "; ".join(ids.missing))
            self._executor = OpExecutor(self.client, self.once, ids, self.label)
        return self._executor

    async def aclose(self) -> None:
        await self.client.aclose()
        await self.once.aclose()


__all__ = ["LocationRuntime"]
