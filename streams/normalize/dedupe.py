"""Bounded de-duplication of webhook event ids, per source partition.

AestheticsPro retries a webhook it thinks failed, and the producer may publish a record twice (a timeout after
the broker wrote it). Both land on the same raw partition (the key is the client id), so duplicates are caught
per partition.

Storage: a Faust table of *chunks*: key `<partition>:<sequence>`, value `[partition, sequence, [event ids]]`, one
chunk per processed batch and partition. The memory survives restarts and rebalances (the table is rebuilt from
its changelog), and costs one changelog record per batch and partition instead of one per event (each changelog
record is its own produce request against the embedded broker). Bound: at least `window` and at most
`window + one chunk` ids per partition; when a partition goes past it its oldest chunks are deleted (changelog
tombstones keep the compacted changelog to the same bound).

Trade-off of the bound: memory and recovery time grow with `window` (ids are ~40 bytes; 100k ids per partition
is a few MB and well under a second of changelog replay, as chunks). A redelivery older than the last `window`
events of its partition is not recognised and is passed on again, so downstream effects must stay idempotent per
event id (the sync engine's ledger is). With the default 100k and a clinic's traffic (hundreds of webhooks a day
per partition) that horizon is months, far beyond AestheticsPro's retry period.

Entries of the earlier one-id-per-key layout (key = event id, value `[partition, sequence]`) are read back as
one-id chunks, so an upgrade keeps its memory.
"""

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
