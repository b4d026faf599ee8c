"""The park index on the client_state table: loads the partitions this worker owns, makes each change durable on
its partition's changelog before the caller acks what it records, and exports the parked-clients gauge."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Sequence

from foundations import metrics
from sinks.client_state_store import ClientStateStore
from sinks.park_index import ParkIndex, ParkIndexDecodeError, Write, entry_key, head_key, head_range

log = logging.getLogger("apro_sync.sink")


class ParkStore:
    def __init__(self, store: ClientStateStore, gauge_label: Callable[[str], str]) -> None:
        self.store = store
        self.index = ParkIndex()
        self._gauge_label = gauge_label  # GoHighLevel location id → its bounded metric label

    def load(self, locations: Sequence[str], partitions: Iterable[int]) -> None:
        """Read the index of every (location, partition) not loaded yet from the table (after recovery)."""
        for partition in partitions:
            for location in locations:
                self.ensure_loaded(location, partition)
        for location in locations:
            self._gauge(location)

    def ensure_loaded(self, location: str, partition: int) -> None:
        if self.index.loaded(location, partition):
            return
        head = self.store.get(head_key(location, partition))
        try:
            seqs = head_range(head)
        except ParkIndexDecodeError as exc:
            log.error("sink: park index of GoHighLevel location %s, partition %d is unreadable (%s); its parked "
                      "clients sync with their next event", location, partition, exc)
            seqs, head = range(0), None
        read = {seq: self.store.get(entry_key(location, partition, seq)) for seq in seqs}
        unreadable = self.index.load(location, partition, head, read)
        if unreadable:
            log.error("sink: %d park index entries of GoHighLevel location %s, partition %d are unreadable; "
                      "those clients sync with their next event", unreadable, location, partition)

    def drop(self, partitions: Iterable[int] | None = None) -> None:
        self.index.drop(partitions)

    async def park(self, location: str, partition: int, client: str, event_id: str, offset: int) -> None:
        self.ensure_loaded(location, partition)
        await self._apply(self.index.park(location, partition, client, event_id, offset), partition)
        self._gauge(location)

    async def unpark(self, location: str, partition: int, client: str) -> None:
        await self._apply(self.index.unpark(location, partition, client), partition)
        self._gauge(location)

    async def forget_event(self, location: str, partition: int, client: str, event_id: str) -> None:
        await self._apply(self.index.forget_event(location, partition, client, event_id), partition)

    def parked_at(self, client: str, partition: int) -> list[str]:
        """The locations where `client` (of `partition`) is parked."""
        return [loc for loc in self.index.locations() if self.index.is_parked(loc, partition, client)]

    async def _apply(self, writes: list[Write], partition: int) -> None:
        """Write to the store and the changelog, in order on the partition; the last send's ack covers all."""
        last = None
        for key, value in writes:
            last = self.store.write(partition, key, value)
        if last is not None:
            await last

    def _gauge(self, location: str) -> None:
        metrics.SINK_PARKED_CLIENTS.labels(self._gauge_label(location)).set(self.index.count(location))


__all__ = ["ParkStore"]
