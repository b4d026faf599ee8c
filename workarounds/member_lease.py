"""A worker's lease on its partitions: the broker keeps a group member only while it heartbeats within the session
timeout. A worker whose event loop stalls past it may have been evicted, its partitions given to another worker,
and learns so only at its next heartbeat; until then it must make no GoHighLevel call (docs/reliability.md)."""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Callable
from typing import Any

from aiokafka.consumer.group_coordinator import GroupCoordinator

VALID_SHARE = 0.8  # of the session timeout: a lease this old may already have expired at the broker (clock drift)
POLL_S = 0.05  # heartbeats run on the consumer's own thread: waiters poll rather than share an event across loops


class MemberLease:
    """When this member's last heartbeat was sent that the broker answered: valid for a share of the session
    timeout from then. Unknown (no heartbeat yet: not in a group) counts as valid. Renewed from the consumer's
    thread, read from the worker's loop (one float, assigned whole)."""

    def __init__(self, session_timeout_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        if session_timeout_s <= 0:
            raise ValueError("session timeout must be positive")
        self.session_timeout_s = session_timeout_s
        self._clock = clock
        self.renewed_at: float | None = None

    @property
    def age(self) -> float:
        return 0.0 if self.renewed_at is None else self._clock() - self.renewed_at

    def valid(self) -> bool:
        return self.age < self.session_timeout_s * VALID_SHARE

    def renew(self, sent_at: float) -> None:
        """A heartbeat sent at `sent_at` was answered: the broker's session timer restarted no earlier."""
        renewed_at = self.renewed_at
        if renewed_at is None or sent_at > renewed_at:
            self.renewed_at = sent_at

    async def wait_valid(self, stop: asyncio.Event) -> bool:
        """Wait until the lease is valid again (True) or `stop` is set (False)."""
        while not self.valid():
            if stop.is_set():
                return False
            try:
                await asyncio.wait_for(stop.wait(), POLL_S)
            except asyncio.TimeoutError:
                pass
        return True


_LEASES: dict[str, MemberLease] = {}


def lease_for(group_id: str, session_timeout_s: float) -> MemberLease:
    """This process's lease for `group_id`, renewed by every answered heartbeat of its consumer (patch installed)."""
    install()
    lease = _LEASES.get(group_id)
    if lease is None or lease.session_timeout_s != session_timeout_s:
        lease = _LEASES[group_id] = MemberLease(session_timeout_s)
    return lease


def install() -> None:
    """Wrap aiokafka's heartbeat so an answered heartbeat renews its group's lease (idempotent)."""
    original = GroupCoordinator._do_heartbeat  # noqa: SLF001
    if getattr(original, "apro_lease", False):
        return

    @functools.wraps(original)
    async def _do_heartbeat(self: Any) -> bool:
        sent_at = time.monotonic()
        ok = await original(self)
        lease = _LEASES.get(self.group_id) if ok else None
        if lease is not None:
            lease.renew(sent_at)
        return bool(ok)

    _do_heartbeat.apro_lease = True  # type: ignore[attr-defined]
    GroupCoordinator._do_heartbeat = _do_heartbeat  # type: ignore[method-assign]  # noqa: SLF001


__all__ = ["MemberLease", "install", "lease_for"]
