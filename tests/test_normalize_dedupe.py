"""The bounded event-id memory: per partition, oldest evicted first, rebuilt from the table after a restart."""

from __future__ import annotations

from streams.dedupe import BoundedIds, EventDeduper


def test_bounded_ids_evicts_oldest_first() -> None:
    ids = BoundedIds(window=3)
    evicted = [ids.add(f"e{i}", i) for i in range(5)]
    assert evicted == [[], [], [], ["e0"], ["e1"]]
    assert list(ids) == ["e2", "e3", "e4"] and "e1" not in ids and len(ids) == 3
    assert ids.add("e3", 99) == []  # already known: no change of order


def test_deduper_is_per_partition_and_keeps_table_in_bound() -> None:
    table: dict[str, list[int]] = {}
    dedupe = EventDeduper(table, window=2)
    for event_id in ("a", "b", "c"):
        assert not dedupe.seen(event_id, 0)
        dedupe.remember(event_id, 0)
    dedupe.remember("a", 1)  # same id on another partition is a separate memory
    assert not dedupe.seen("a", 0) and dedupe.seen("b", 0) and dedupe.seen("c", 0) and dedupe.seen("a", 1)
    assert set(table) == {"a", "b", "c"} and table["a"][0] == 1  # table holds only what is within bound


def test_deduper_rebuilds_from_recovered_table() -> None:
    table: dict[str, list[int]] = {}
    first = EventDeduper(table, window=3)
    for i, event_id in enumerate(["x", "y", "z"]):
        first.remember(event_id, 2)
    restarted = EventDeduper(dict(table), window=2)  # a restart with a smaller window trims the oldest
    assert restarted.seen("z", 2) and restarted.seen("y", 2) and not restarted.seen("x", 2)
    assert "x" not in restarted.table
    restarted.forget_partitions({2})
    assert restarted.seen("z", 2)  # read back again from the table
