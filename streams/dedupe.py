"""Bounded de-duplication of webhook event ids, per source partition.

AestheticsPro retries a webhook it thinks failed, and the producer may publish a record twice (a timeout after
the broker wrote it). Both land on the same raw partition (the key is the client id), so duplicates are caught
per partition.

Storage: a Faust table keyed by event id, value `[partition, sequence]`, so the memory survives restarts and
rebalances (the table is rebuilt from its changelog). Bound: at most `window` ids per partition; when a partition
goes past it the oldest id is deleted (a changelog tombstone keeps the changelog compacted to the same bound).

Trade-off of the bound: memory and recovery time grow with `window` (ids are ~40 bytes; 100k ids per partition
is a few MB and a few seconds of changelog replay). A redelivery older than the last `window` events of its
partition is not recognised and is passed on again, so downstream effects must stay idempotent per event id
(the sync engine's ledger is). With the default 100k and a clinic's traffic (hundreds of webhooks a day per
partition) that horizon is months, far beyond AestheticsPro's retry period.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Iterator, MutableMapping
from typing import Any


class BoundedIds:
    """Pure LRU-by-insertion memory of ids for one partition. `add` returns the ids evicted to stay in bound."""

    def __init__(self, window: int) -> None:
        if window < 1:
            raise ValueError("window must be at least 1")
        self.window = window
        self._order: OrderedDict[str, int] = OrderedDict()

    def __contains__(self, event_id: object) -> bool:
        return event_id in self._order

    def __len__(self) -> int:
        return len(self._order)

    def __iter__(self) -> Iterator[str]:
        return iter(self._order)

    def add(self, event_id: str, sequence: int) -> list[str]:
        if event_id in self._order:
            return []
        self._order[event_id] = sequence
        evicted: list[str] = []
        while len(self._order) > self.window:
            oldest, _ = self._order.popitem(last=False)
            evicted.append(oldest)
        return evicted

    @classmethod
    def rebuilt(cls, window: int, entries: list[tuple[str, int]]) -> tuple["BoundedIds", list[str]]:
        """Rebuild from (id, sequence) pairs read back from the table; also returns the ids over the bound."""
        ids = cls(window)
        evicted: list[str] = []
        for event_id, sequence in sorted(entries, key=lambda pair: pair[1]):
            evicted.extend(ids.add(event_id, sequence))
        return ids, evicted


class EventDeduper:
    """Per-partition bounded memory of event ids over a (Faust table or plain dict) mapping.

    `table` maps event id → [partition, sequence]. With a Faust table, `remember`/eviction must run while the
    event of that partition is the current stream event (Faust routes the changelog write by it).
    """

    def __init__(self, table: MutableMapping[str, Any], window: int) -> None:
        self.table = table
        self.window = window
        self._partitions: dict[int, BoundedIds] = {}

    def _ids(self, partition: int) -> BoundedIds:
        ids = self._partitions.get(partition)
        if ids is None:
            # First event of this partition since start or a rebalance: read back what the table recovered.
            entries = []
            for event_id, value in list(self.table.items()):
                if isinstance(value, (list, tuple)) and len(value) == 2 and value[0] == partition:
                    entries.append((str(event_id), int(value[1])))
            ids, over = BoundedIds.rebuilt(self.window, entries)
            for event_id in over:
                self.table.pop(event_id, None)
            self._partitions[partition] = ids
        return ids

    def seen(self, event_id: str, partition: int) -> bool:
        return event_id in self._ids(partition)

    def remember(self, event_id: str, partition: int) -> None:
        ids = self._ids(partition)
        if event_id in ids:
            return
        sequence = time.time_ns()  # monotonic enough across restarts to order the rebuild
        self.table[event_id] = [partition, sequence]
        for old in ids.add(event_id, sequence):
            self.table.pop(old, None)

    def forget_partitions(self, partitions: set[int]) -> None:
        """Drop the in-memory order of revoked partitions (the table itself is managed by Faust)."""
        for partition in partitions:
            self._partitions.pop(partition, None)
