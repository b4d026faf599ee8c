"""Lane scheduling for the sink, pure asyncio (no Kafka, no HTTP): bounded capacities and a lane's queue.

A lane's queue serves live events before historical ones (a backfill never delays a live webhook that reached
the lane), but never reorders one client's events. Capacities bound what the sink holds in memory: one for the
worker, one per GoHighLevel location, so a stuck location can only fill its own share."""

from __future__ import annotations

import asyncio
from collections import Counter, deque
from collections.abc import Hashable
from typing import Generic, TypeVar

T = TypeVar("T")


class Capacity:
    """A counting bound: `acquire` waits while `limit` units are taken; `release` gives units back."""

    def __init__(self, limit: int) -> None:
        if limit < 1:
            raise ValueError("a capacity needs a limit of at least 1")
        self.limit = limit
        self.used = 0
        self._freed = asyncio.Event()

    @property
    def full(self) -> bool:
        return self.used >= self.limit

    async def acquire(self) -> None:
        while self.used >= self.limit:
            self._freed.clear()
            await self._freed.wait()
        self.used += 1

    def release(self, n: int = 1) -> None:
        if n > self.used:
            raise ValueError("released more units than were acquired")
        self.used -= n
        if n:
            self._freed.set()


class LaneQueue(Generic[T]):
    """A lane's waiting items: live first, historical after, each client's items in the order they came.

    A live item of a client that still has historical items waiting queues behind them, so priority only ever
    moves one client's work ahead of another client's, never ahead of its own."""

    def __init__(self) -> None:
        self._live: deque[tuple[Hashable, T]] = deque()
        self._historical: deque[tuple[Hashable, T]] = deque()
        self._waiting_historical: Counter[Hashable] = Counter()  # client → its items in `_historical`
        self._ready = asyncio.Event()

    def __len__(self) -> int:
        return len(self._live) + len(self._historical)

    def put(self, client: Hashable, item: T, *, historical: bool) -> None:
        if historical or self._waiting_historical[client]:
            self._historical.append((client, item))
            self._waiting_historical[client] += 1
        else:
            self._live.append((client, item))
        self._ready.set()

    def get_nowait(self) -> T:
        """The next item (live first). Raises IndexError when empty."""
        if self._live:
            return self._live.popleft()[1]
        client, item = self._historical.popleft()
        self._waiting_historical[client] -= 1
        if not self._waiting_historical[client]:
            del self._waiting_historical[client]
        return item

    async def get(self) -> T:
        while not self:
            self._ready.clear()
            await self._ready.wait()
        return self.get_nowait()

    def drain(self) -> list[T]:
        """Remove and return every waiting item (in the order `get` would have given them)."""
        items = [item for _, item in self._live] + [item for _, item in self._historical]
        self._live.clear()
        self._historical.clear()
        self._waiting_historical.clear()
        return items


__all__ = ["Capacity", "LaneQueue"]
