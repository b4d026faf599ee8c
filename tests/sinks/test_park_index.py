"""The park index (pure): its writes, applied to a table, always reload into the same index; parking a client that
is already parked writes one small key; corrupt values are refused without naming their content."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sinks.park_index import (
    ParkIndex,
    ParkIndexDecodeError,
    Write,
    decode_entry,
    decode_head,
    entry_key,
    head_key,
    head_range,
    is_park_key,
)
from streams.plan import marks

LOC = "GhlLoc01"


def apply(table: dict[str, str], writes: list[Write]) -> None:
    for key, value in writes:
        if value is None:
            table.pop(key, None)
        else:
            table[key] = value


def reload(table: dict[str, str], location: str, partition: int) -> ParkIndex:
    index = ParkIndex()
    head = table.get(head_key(location, partition))
    index.load(location, partition, head, {seq: table.get(entry_key(location, partition, seq))
                                           for seq in head_range(head)})
    return index


def snapshot(index: ParkIndex, location: str, partition: int) -> dict[str, dict[str, int] | None]:
    return {client: {e: index.offset_of(location, partition, client, e) or 0 for e in ("e1", "e2", "e3")}
            for _, client in index.clients(location)}


def test_parking_writes_an_entry_and_the_head_once_per_client() -> None:
    index = ParkIndex()
    index.load(LOC, 3, None)
    first = index.park(LOC, 3, "48213", "e1", 10)
    assert [k for k, _ in first] == [entry_key(LOC, 3, 0), head_key(LOC, 3)]
    again = index.park(LOC, 3, "48213", "e2", 11)
    assert [k for k, _ in again] == [entry_key(LOC, 3, 0)]  # the client's entry only
    assert index.park(LOC, 3, "48213", "e2", 11) == []  # a redelivery parks nothing new
    assert index.offset_of(LOC, 3, "48213", "e1") == 10 and index.count(LOC) == 1
    assert index.clients(LOC) == [(3, "48213")]


def test_unparking_deletes_the_entry_and_moves_the_head_past_drained_entries() -> None:
    table: dict[str, str] = {}
    index = ParkIndex()
    index.load(LOC, 0, None)
    for n, client in enumerate(("a1", "b2", "c3")):
        apply(table, index.park(LOC, 0, client, f"ev{n}", n))
    apply(table, index.unpark(LOC, 0, "b2"))
    assert decode_head(table[head_key(LOC, 0)]) == (0, 3)  # a1 still parked at 0
    apply(table, index.unpark(LOC, 0, "a1"))
    assert decode_head(table[head_key(LOC, 0)]) == (2, 3)
    assert sorted(k for k in table if k.startswith(head_key(LOC, 0) + marks.SEPARATOR)) == [entry_key(LOC, 0, 2)]
    assert index.unpark(LOC, 0, "a1") == []  # twice: nothing to write
    assert reload(table, LOC, 0).clients(LOC) == [(0, "c3")]


def test_the_index_of_unloaded_partitions_is_refused_and_dropped_partitions_are_forgotten() -> None:
    index = ParkIndex()
    with pytest.raises(KeyError):
        index.park(LOC, 1, "a1", "e1", 1)
    index.load(LOC, 1, None)
    index.load("Other", 2, None)
    index.park(LOC, 1, "a1", "e1", 1)
    index.park("Other", 2, "a1", "e1", 1)
    index.drop([1])
    assert not index.loaded(LOC, 1) and index.locations() == {"Other"}
    index.drop()
    assert index.locations() == set()


def test_keys_never_clash_with_client_or_marks_keys() -> None:
    key = entry_key(LOC, 0, 5)
    assert is_park_key(key) and is_park_key(head_key(LOC, 0))
    assert not marks.is_marks_key(key)
    assert not is_park_key("48213") and not is_park_key(marks.marks_key("48213"))


@pytest.mark.parametrize("value", ['{"lo": 3, "hi": 1}', "[]", "not json", '{"lo": -1, "hi": 2}', "x" * 300_000])
def test_a_corrupt_head_is_refused_without_its_content(value: str) -> None:
    with pytest.raises(ParkIndexDecodeError) as raised:
        decode_head(value)
    assert str(raised.value).startswith("park index") and value[:12] not in str(raised.value)


@pytest.mark.parametrize("value", ['{"client": "", "events": {}}', '{"client": "a", "events": {"e": -1}}',
                                   '{"client": "a\\u001fb", "events": {}}', '{"events": {}}', "1"])
def test_a_corrupt_entry_is_skipped_on_load(value: str) -> None:
    with pytest.raises(ParkIndexDecodeError):
        decode_entry(0, value)
    table = {head_key(LOC, 0): '{"lo":0,"hi":2}', entry_key(LOC, 0, 0): value,
             entry_key(LOC, 0, 1): '{"client":"b2","events":{"e1":7}}'}
    index = ParkIndex()
    assert index.load(LOC, 0, table[head_key(LOC, 0)], {0: value, 1: table[entry_key(LOC, 0, 1)]}) == 1
    assert index.clients(LOC) == [(0, "b2")]


OPS = st.lists(st.tuples(st.sampled_from(["park", "unpark", "forget"]), st.sampled_from(["a1", "b2", "c3", "d4"]),
                         st.sampled_from(["e1", "e2", "e3"]), st.integers(0, 50)), max_size=40)


@settings(max_examples=200, deadline=None)
@given(OPS)
def test_any_sequence_of_changes_reloads_into_the_same_index(ops: list[tuple[str, str, str, int]]) -> None:
    """What a worker that takes the partition over reads equals what the previous owner held."""
    table: dict[str, str] = {}
    index = ParkIndex()
    index.load(LOC, 4, None)
    for op, client, event, offset in ops:
        if op == "park":
            apply(table, index.park(LOC, 4, client, event, offset))
        elif op == "unpark":
            apply(table, index.unpark(LOC, 4, client))
        else:
            apply(table, index.forget_event(LOC, 4, client, event))
        again = reload(table, LOC, 4)
        assert snapshot(again, LOC, 4) == snapshot(index, LOC, 4)
        assert again.clients(LOC) == index.clients(LOC)  # oldest parked first, as before
    assert all(is_park_key(k) for k in table)
    live = len(index.clients(LOC))
    assert len(table) == (live + 1 if table else 0)  # one entry per parked client, plus the head
