"""Every field the normalizer knows in one object, read in one pass over the object's keys.

`Fields(name=spellings, ...)` maps each normalised spelling to the fields it may fill; `read(index)` walks the
object's normalised-key index once and keeps, per field, the value of its most preferred spelling that is not
empty: exactly what `Lookup.get(obj, *spellings)` answers, with one dict lookup per key of the object instead
of one per spelling (tests/streams/normalize/test_fields.py compares the two)."""

from __future__ import annotations

from typing import Any

from foundations.formats.raw import Lookup, spelled


class Fields:
    """A named set of spelling groups (each in order of preference)."""

    __slots__ = ("_table", "names")

    def __init__(self, **groups: tuple[str, ...]) -> None:
        self.names = tuple(groups)
        table: dict[str, list[tuple[str, int]]] = {}
        for field, spellings in groups.items():
            for rank, key in enumerate(spelled(spellings)):
                table.setdefault(key, []).append((field, rank))
        self._table = {key: tuple(hits) for key, hits in table.items()}

    def read(self, index: dict[str, Any]) -> dict[str, Any]:
        """Field → first non-empty value (not None, "", [] or {}) in its spellings' order; absent fields missing."""
        table = self._table
        found: dict[str, Any] = {}
        ranks: dict[str, int] = {}
        for key, value in index.items():
            hits = table.get(key)
            if hits is None or value is None or (not value and (value == "" or value == [] or value == {})):
                continue
            for field, rank in hits:
                if field not in ranks or rank < ranks[field]:
                    found[field] = value
                    ranks[field] = rank
        return found

    def read_object(self, obj: Any) -> dict[str, Any]:
        """`read` of an object's index, built here (an empty dict when `obj` is not an object)."""
        index = Lookup().index(obj)
        return {} if index is None else self.read(index)
