"""Which clients have effects parked for a paused GoHighLevel location, per changelog partition (pure).

The index lives in the client_state table: a head key per (location, partition) with the range of entry numbers,
and one entry key per parked client (its parked events' source offsets). Parking a new client writes two small
keys, so writes grow with parked clients, not with the index. Layout: docs/sync-engine.md, "Parking"."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from streams.plan.marks import SEPARATOR

PREFIX = SEPARATOR + "park" + SEPARATOR  # never a client id (no control characters) nor a marks key
MAX_VALUE_BYTES = 256 * 1024  # an entry holds one client's parked events; a corrupt value stops here
MAX_EVENTS_PER_ENTRY = 4096

Write = tuple[str, str | None]  # (table key, value; None deletes the key)


class ParkIndexDecodeError(ValueError):
    """A park-index value that is no head or entry (the message names the problem, never the content)."""


def head_key(location: str, partition: int) -> str:
    return f"{PREFIX}{location}{SEPARATOR}{partition}"


def entry_key(location: str, partition: int, seq: int) -> str:
    return f"{head_key(location, partition)}{SEPARATOR}{seq}"


def is_park_key(key: str) -> bool:
    return key.startswith(PREFIX)


@dataclass
class Entry:
    seq: int
    client: str
    events: dict[str, int] = field(default_factory=dict)  # event id → offset of its record on the input topic


@dataclass
class _Partition:
    lo: int = 0  # no entry below lo is live
    hi: int = 0  # the next entry's number
    entries: dict[str, Entry] = field(default_factory=dict)  # client → entry

    def head(self) -> str:
        return json.dumps({"lo": self.lo, "hi": self.hi}, separators=(",", ":"))


def decode_head(value: str | bytes | None) -> tuple[int, int]:
    """The (lo, hi) range of a head value; (0, 0) for none."""
    if value is None:
        return 0, 0
    data = _json(value)
    lo, hi = (data.get("lo"), data.get("hi")) if isinstance(data, dict) else (None, None)
    if not (isinstance(lo, int) and isinstance(hi, int) and 0 <= lo <= hi):
        raise ParkIndexDecodeError("park index head: no valid range")
    return lo, hi


def encode_entry(entry: Entry) -> str:
    return json.dumps({"client": entry.client, "events": entry.events}, separators=(",", ":"), sort_keys=True)


def decode_entry(seq: int, value: str | bytes) -> Entry:
    data = _json(value)
    client = data.get("client") if isinstance(data, dict) else None
    events = data.get("events") if isinstance(data, dict) else None
    if not isinstance(client, str) or not client or SEPARATOR in client or not isinstance(events, dict) \
            or len(events) > MAX_EVENTS_PER_ENTRY \
            or not all(isinstance(k, str) and isinstance(v, int) and v >= 0 for k, v in events.items()):
        raise ParkIndexDecodeError("park index entry: not a client with its events' offsets")
    return Entry(seq, client, dict(events))


def _json(value: str | bytes) -> object:
    if len(value) > MAX_VALUE_BYTES:
        raise ParkIndexDecodeError("park index value too large")
    try:
        return json.loads(value)
    except (ValueError, UnicodeDecodeError):
        raise ParkIndexDecodeError("park index value is not JSON") from None


class ParkIndex:
    """The parked clients of the partitions this worker owns, and the table writes that keep them durable.

    Every method that changes the index returns the writes to make; the caller makes them durable before it acks
    what they record. A lost removal only drains a client twice (the second finds nothing pending)."""

    def __init__(self) -> None:
        self._parts: dict[tuple[str, int], _Partition] = {}

    # -- loading ---------------------------------------------------------------------------------------------
    def loaded(self, location: str, partition: int) -> bool:
        return (location, partition) in self._parts

    def load(self, location: str, partition: int, head: str | bytes | None,
             read: Mapping[int, str | bytes | None] | None = None) -> int:
        """Take (location, partition) from its head value and its entries' values (`read`: seq → value, for
        every seq in the head's range; missing or None: drained). Returns how many entries were unreadable
        (skipped: those clients' effects run with their next event). A corrupt head raises."""
        lo, hi = decode_head(head)
        part = _Partition(lo, hi)
        unreadable = 0
        for seq in range(lo, hi):
            value = (read or {}).get(seq)
            if value is None:
                continue
            try:
                entry = decode_entry(seq, value)
            except ParkIndexDecodeError:
                unreadable += 1
                continue
            part.entries[entry.client] = entry
        self._parts[(location, partition)] = part
        return unreadable

    def drop(self, partitions: Iterable[int] | None = None) -> None:
        """Forget partitions no longer owned (all when None); their next owner loads them from the table."""
        if partitions is None:
            self._parts.clear()
            return
        gone = set(partitions)
        for key in [k for k in self._parts if k[1] in gone]:
            del self._parts[key]

    # -- changes ---------------------------------------------------------------------------------------------
    def park(self, location: str, partition: int, client: str, event_id: str, offset: int) -> list[Write]:
        part = self._part(location, partition)
        entry = part.entries.get(client)
        writes: list[Write] = []
        if entry is None:
            entry = part.entries[client] = Entry(part.hi, client)
            part.hi += 1
            writes.append((head_key(location, partition), part.head()))
        elif entry.events.get(event_id) == offset:
            return []
        if len(entry.events) >= MAX_EVENTS_PER_ENTRY and event_id not in entry.events:
            entry.events.pop(min(entry.events, key=entry.events.__getitem__))  # oldest offset: read back by id
        entry.events[event_id] = offset
        writes.insert(0, (entry_key(location, partition, entry.seq), encode_entry(entry)))
        return writes

    def unpark(self, location: str, partition: int, client: str) -> list[Write]:
        part = self._parts.get((location, partition))
        entry = None if part is None else part.entries.pop(client, None)
        if part is None or entry is None:
            return []
        writes: list[Write] = [(entry_key(location, partition, entry.seq), None)]
        lo = min((e.seq for e in part.entries.values()), default=part.hi)
        if lo != part.lo:
            part.lo = lo
            writes.append((head_key(location, partition), part.head()))
        return writes

    def forget_event(self, location: str, partition: int, client: str, event_id: str) -> list[Write]:
        """The parked event was dead-lettered: its offset is no longer needed (the client stays parked)."""
        part = self._parts.get((location, partition))
        entry = None if part is None else part.entries.get(client)
        if part is None or entry is None or entry.events.pop(event_id, None) is None:
            return []
        return [(entry_key(location, partition, entry.seq), encode_entry(entry))]

    # -- queries ---------------------------------------------------------------------------------------------
    def is_parked(self, location: str, partition: int, client: str) -> bool:
        part = self._parts.get((location, partition))
        return part is not None and client in part.entries

    def offset_of(self, location: str, partition: int, client: str, event_id: str) -> int | None:
        part = self._parts.get((location, partition))
        entry = None if part is None else part.entries.get(client)
        return None if entry is None else entry.events.get(event_id)

    def clients(self, location: str) -> list[tuple[int, str]]:
        """(partition, client) of every parked client of `location`, oldest parked first per partition."""
        found = [(entry.seq, partition, entry.client) for (loc, partition), part in self._parts.items()
                 if loc == location for entry in part.entries.values()]
        return [(partition, client) for _, partition, client in sorted(found)]

    def count(self, location: str) -> int:
        return sum(len(part.entries) for (loc, _), part in self._parts.items() if loc == location)

    def locations(self) -> set[str]:
        return {loc for (loc, _), part in self._parts.items() if part.entries}

    def _part(self, location: str, partition: int) -> _Partition:
        part = self._parts.get((location, partition))
        if part is None:
            raise KeyError("park index partition not loaded")
        return part


def head_range(head: str | bytes | None) -> range:
    """The entry numbers to read for a head value."""
    lo, hi = decode_head(head)
    return range(lo, hi)


__all__ = ["Entry", "ParkIndex", "ParkIndexDecodeError", "Write", "decode_entry", "decode_head", "encode_entry",
           "entry_key", "head_key", "head_range", "is_park_key"]
