"""Acks a partition's events in offset order: works around Faust's gap check (see README.md)."""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

import faust


class PartitionAcker:
    """Acks each partition's events strictly in offset order, and only once they are finished.

    Faust (faust-streaming 0.15.3, transport/consumer.py `_new_offset`) commits the end of the first contiguous
    run of acked offsets, but its gap check compares the lowest acked offset with the committed offset using
    `> 1` and skips the check when the committed offset is 0/None: an unacked event sitting exactly at the
    committed position would be committed past if a later event were acked first. Acking in offset order means
    Faust only ever sees contiguous acks, so that can never happen.
    """

    def __init__(self) -> None:
        self._pending: dict[Any, OrderedDict[int, list[Any]]] = {}  # tp → offset → [event, finished]

    def track(self, event: faust.EventT) -> None:
        msg = event.message
        self._pending.setdefault(msg.tp, OrderedDict())[msg.offset] = [event, False]

    def finish(self, event: faust.EventT) -> None:
        msg = event.message
        entries = self._pending.get(msg.tp)
        if entries is None or msg.offset not in entries or entries[msg.offset][0] is not event:
            return  # abandoned (revoked) meanwhile: never ack it
        entries[msg.offset][1] = True
        while entries:
            offset, (ev, finished) = next(iter(entries.items()))
            if not finished:
                break
            entries.popitem(last=False)
            ev.ack()
        if msg.offset in entries:  # waits behind an unfinished event: keep only what its ack needs
            event.value = None
            msg.value = None

    def in_flight(self) -> int:
        return sum(len(v) for v in self._pending.values())

    def clear(self) -> list[faust.EventT]:
        """Forget every tracked event (rebalance); returns them so the caller can abandon them."""
        events = [ev for entries in self._pending.values() for ev, _ in entries.values()]
        self._pending.clear()
        return events
