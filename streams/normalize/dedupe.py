"""Bounded de-duplication of webhook event ids, per source partition.

AestheticsPro retries and producer re-sends land on the same raw partition. Ids are stored in a Faust table
of chunks (one changelog record per batch and partition), at least `window` ids per partition; older
redeliveries pass again, so downstream effects stay idempotent per event id (docs/sync-engine.md)."""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Iterable, Iterator, MutableMapping
from typing import Any


class BoundedIds:
    """Pure memory of ids for one partition, in chunks evicted oldest first once more than `window` ids are held.

    `add_chunk` returns the keys of the chunks evicted to stay in bound (the caller deletes them from storage).
    """

    def __init__(self, window: int) -> None:
        if window < 1:
            raise ValueError("window must be at least 1")
        self.window = window
        self._chunks: OrderedDict[str, list[str]] = OrderedDict()
        self._where: dict[str, str] = {}  # event id → key of the chunk that holds it

    def __contains__(self, event_id: object) -> bool:
        return event_id in self._where

    def __len__(self) -> int:
        return len(self._where)

    def __iter__(self) -> Iterator[str]:
        for ids in self._chunks.values():
            yield from ids

    def new_ids(self, event_ids: Iterable[str]) -> list[str]:
        """`event_ids` not held yet, each once, in order."""
        out: list[str] = []
        fresh: set[str] = set()
        for event_id in event_ids:
            if event_id not in self._where and event_id not in fresh:
                fresh.add(event_id)
                out.append(event_id)
        return out

    def add_chunk(self, chunk_key: str, event_ids: list[str]) -> list[str]:
        """Hold `event_ids` (already filtered by `new_ids`) under `chunk_key`; returns evicted chunk keys."""
        if event_ids:
            self._chunks[chunk_key] = event_ids
            for event_id in event_ids:
                self._where[event_id] = chunk_key
        evicted: list[str] = []
        # Evict whole chunks while what remains still covers the window.
        while self._chunks:
            oldest_key, oldest = next(iter(self._chunks.items()))
            if len(self._where) - len(oldest) < self.window:
                break
            self._chunks.popitem(last=False)
            for event_id in oldest:
                if self._where.get(event_id) == oldest_key:
                    del self._where[event_id]
            evicted.append(oldest_key)
        return evicted

    def add(self, event_id: str, sequence: int) -> list[str]:
        """One id as its own chunk (keyed by `sequence`); returns evicted chunk keys."""
        return self.add_chunk(str(sequence), self.new_ids([event_id]))

    @classmethod
    def rebuilt(cls, window: int, chunks: list[tuple[int, str, list[str]]]) -> tuple["BoundedIds", list[str]]:
        """Rebuild from (sequence, chunk key, ids) read back from the table; also returns the keys over the bound."""
        ids = cls(window)
        evicted: list[str] = []
        for _sequence, key, event_ids in sorted(chunks, key=lambda chunk: chunk[0]):
            evicted.extend(ids.add_chunk(key, ids.new_ids(event_ids)))
        return ids, evicted


def _chunk_of(key: Any, value: Any, partition: int) -> tuple[int, str, list[str]] | None:
    """A table entry → (sequence, key, ids) when it belongs to `partition`, else None."""
    if not isinstance(value, (list, tuple)) or len(value) not in (2, 3) or value[0] != partition:
        return None
    if len(value) == 3:
        return int(value[1]), str(key), [str(i) for i in value[2]]
    return int(value[1]), str(key), [str(key)]  # the earlier layout: key = the event id


class EventDeduper:
    """Per-partition bounded memory of event ids over a (Faust table or plain dict) mapping.

    With a Faust table, `remember`/`remember_many` must run while an event of that partition is the current
    stream event (Faust routes the changelog write by it).
    """

    def __init__(self, table: MutableMapping[str, Any], window: int) -> None:
        self.table = table
        self.window = window
        self._partitions: dict[int, BoundedIds] = {}
        self._last_sequence = 0

    def _ids(self, partition: int) -> BoundedIds:
        ids = self._partitions.get(partition)
        if ids is None:
            # First event of this partition since start or a rebalance: read back what the table recovered.
            chunks = [c for c in (_chunk_of(k, v, partition) for k, v in list(self.table.items())) if c is not None]
            ids, over = BoundedIds.rebuilt(self.window, chunks)
            for key in over:
                self.table.pop(key, None)
            self._partitions[partition] = ids
        return ids

    def _sequence(self) -> int:
        # Wall-clock nanoseconds order chunks across restarts; strictly increasing within this process.
        self._last_sequence = max(self._last_sequence + 1, time.time_ns())
        return self._last_sequence

    def seen(self, event_id: str, partition: int) -> bool:
        return event_id in self._ids(partition)

    def remember_many(self, event_ids: Iterable[str], partition: int) -> None:
        """Remember ids of one partition with one table write (plus tombstones for evicted chunks)."""
        ids = self._ids(partition)
        fresh = ids.new_ids(event_ids)
        if not fresh:
            return
        sequence = self._sequence()
        key = f"{partition}:{sequence}"
        self.table[key] = [partition, sequence, fresh]
        for old in ids.add_chunk(key, fresh):
            self.table.pop(old, None)

    def remember(self, event_id: str, partition: int) -> None:
        self.remember_many([event_id], partition)

    def forget_partitions(self, partitions: set[int]) -> None:
        """Drop the in-memory order of revoked partitions (the table itself is managed by Faust)."""
        for partition in partitions:
            self._partitions.pop(partition, None)
