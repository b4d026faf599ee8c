"""One drainer per GoHighLevel location with parked clients: it waits out the location's pause, probes it with one
location-level read per pause, and once the location answers hands each parked client of an owned partition to the
engine to drain, a few at a time (docs/sync-engine.md, "Parking")."""

from __future__ import annotations

import asyncio
import logging
from typing import Protocol

from sinks.failure_policy import AUTH_STATUSES
from sinks.ghl.errors import GhlPermanentError, GhlTransientError
from sinks.location_runtime import LocationRuntime
from sinks.parking import ParkStore

log = logging.getLogger("apro_sync.sink")


class DrainHost(Protocol):
    """What a drainer needs of the sync engine."""

    parking: ParkStore

    def current(self, generation: int) -> bool:
        """Whether `generation` is still the engine's (no fence since, not stopping)."""

    def fence_event(self) -> asyncio.Event:
        """Set at the next fence."""

    def owned_partitions(self) -> set[int] | None:
        """The input partitions this worker owns (None: unknown)."""

    def runtime_by_label(self, label: str) -> LocationRuntime: ...

    def drain_client(self, location: str, partition: int, client_id: str, generation: int) -> asyncio.Event:
        """Queue a drain of the client on its lane; the event is set when the drain has left the lane."""


class Drainers:
    def __init__(self, host: DrainHost, *, batch: int, retry_base_s: float, retry_max_s: float) -> None:
        self.host = host
        self.batch = max(1, batch)
        self.retry_base_s = retry_base_s
        self.retry_max_s = retry_max_s
        self._tasks: dict[str, asyncio.Task[None]] = {}

    def ensure(self, location: str, generation: int) -> None:
        """A drainer for `location` runs (started unless one does)."""
        task = self._tasks.get(location)
        if (task is None or task.done()) and self.host.current(generation):
            self._tasks[location] = asyncio.ensure_future(self._run(location, generation))

    async def stop(self) -> None:
        tasks = list(self._tasks.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._tasks.clear()

    async def _run(self, location: str, generation: int) -> None:
        host = self.host
        rt = host.runtime_by_label(location)
        while host.current(generation) and host.parking.index.count(location):
            try:
                token = await rt.breaker.wait_ready(host.fence_event())
                if not host.current(generation):
                    return
                if (token and not await self.probe(rt, token)) or rt.breaker.tripped:
                    continue
                await self._pass(location, generation, rt)
                if host.parking.index.count(location) and not rt.breaker.tripped:
                    await self._sleep(self.retry_base_s)  # some drains failed: again, shortly
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - keep draining; never lose the drainer to one error
                log.error("sink: draining GoHighLevel location %s failed (%s); retrying", location,
                          type(exc).__name__, exc_info=exc)
                await self._sleep(self.retry_max_s)

    async def probe(self, rt: LocationRuntime, token: int) -> bool:
        """One location-level read as the paused location's probe: True when it answers (breaker closed)."""
        try:
            await rt.client.list_custom_fields()
        except GhlPermanentError as exc:
            if exc.status in AUTH_STATUSES:
                pause = rt.breaker.record_auth_failure(token)
                log.warning("sink: GoHighLevel location %s still rejects the credentials (%s); %d client(s) "
                            "parked, next probe in %.1fs", rt.label, exc.reason,
                            self.host.parking.index.count(rt.label), pause)
                return False
        except GhlTransientError:
            rt.breaker.record_failure(token)
            return False
        except BaseException:
            rt.breaker.release_probe(token)
            raise
        rt.breaker.record_success()
        return True

    async def _pass(self, location: str, generation: int, rt: LocationRuntime) -> None:
        """Drain every parked client of `location` in owned partitions, `batch` at a time, oldest parked first."""
        host = self.host
        owned = host.owned_partitions()
        waiting: list[asyncio.Event] = []
        for partition, client_id in host.parking.index.clients(location):
            if rt.breaker.tripped or not host.current(generation):
                break
            if owned is not None and partition not in owned:
                continue
            waiting.append(host.drain_client(location, partition, client_id, generation))
            if len(waiting) >= self.batch:
                await asyncio.gather(*(finished.wait() for finished in waiting))
                waiting = []
        await asyncio.gather(*(finished.wait() for finished in waiting))

    async def _sleep(self, seconds: float) -> None:
        try:
            await asyncio.wait_for(self.host.fence_event().wait(), seconds)
        except asyncio.TimeoutError:
            pass


__all__ = ["DrainHost", "Drainers"]
