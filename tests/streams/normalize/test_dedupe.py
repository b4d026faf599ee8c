"""The bounded event-id memory: per partition, oldest chunks evicted first, rebuilt from the table after a restart."""

from __future__ import annotations

from typing import Any

from streams.normalize.dedupe import BoundedIds, EventDeduper


def test_bounded_ids_evicts_oldest_first() -> None:
    ids = BoundedIds(window=3)
    evicted = [ids.add(f"e{i}", i) for i in range(5)]
    assert evicted == [[], [], [], ["0"], ["1"]]
    assert list(ids) == ["e2", "e3", "e4"] and "e1" not in ids and len(ids) == 3
    assert ids.add("e3", 99) == []  # already known: no change of order


def test_bounded_ids_chunks_keep_at_least_the_window() -> None:
    ids = BoundedIds(window=4)
    assert ids.add_chunk("a", ids.new_ids(["1", "2", "3"])) == []
    assert ids.add_chunk("b", ids.new_ids(["3", "4", "5", "4"])) == []  # "3" already held, "4" once: 5 ids
    assert len(ids) == 5 and "1" in ids  # evicting "a" would leave 2 < 4
    assert ids.add_chunk("c", ids.new_ids(["6", "7"])) == ["a"]  # 7 ids; without "a" 4 remain
    assert list(ids) == ["4", "5", "6", "7"] and "1" not in ids and "3" not in ids


def test_deduper_is_per_partition_and_keeps_table_in_bound() -> None:
    table: dict[str, Any] = {}
    dedupe = EventDeduper(table, window=2)
    for event_id in ("a", "b", "c"):
        assert not dedupe.seen(event_id, 0)
        dedupe.remember(event_id, 0)
    dedupe.remember("a", 1)  # same id on another partition is a separate memory
    assert not dedupe.seen("a", 0) and dedupe.seen("b", 0) and dedupe.seen("c", 0) and dedupe.seen("a", 1)
    held = sorted((value[0], tuple(value[2])) for value in table.values())
    assert held == [(0, ("b",)), (0, ("c",)), (1, ("a",))]  # table holds only what is within bound


def test_remember_many_is_one_table_write_per_partition() -> None:
    writes: list[str] = []

    class Recording(dict):  # type: ignore[type-arg]
        def __setitem__(self, key: str, value: Any) -> None:
            writes.append(key)
            super().__setitem__(key, value)

    table = Recording()
    dedupe = EventDeduper(table, window=1000)
    dedupe.remember_many([f"e{i}" for i in range(500)] + ["e1"], 3)
    assert len(writes) == 1 and all(dedupe.seen(f"e{i}", 3) for i in range(500))
    dedupe.remember_many(["e1", "e2"], 3)  # nothing new: no write
    assert len(writes) == 1


def test_deduper_rebuilds_from_recovered_table() -> None:
    table: dict[str, Any] = {}
    first = EventDeduper(table, window=3)
    for event_id in ["x", "y", "z"]:
        first.remember(event_id, 2)
    restarted = EventDeduper(dict(table), window=2)  # a restart with a smaller window trims the oldest
    assert restarted.seen("z", 2) and restarted.seen("y", 2) and not restarted.seen("x", 2)
    assert all("x" not in value[2] for value in restarted.table.values())
    restarted.forget_partitions({2})
    assert restarted.seen("z", 2)  # read back again from the table


def test_deduper_reads_the_earlier_one_id_per_key_layout() -> None:
    table: dict[str, Any] = {"old-1": [0, 10], "old-2": [0, 20], "other": [1, 15]}
    dedupe = EventDeduper(table, window=2)
    assert dedupe.seen("old-1", 0) and dedupe.seen("old-2", 0) and not dedupe.seen("other", 0)
    dedupe.remember_many(["new"], 0)  # over the bound: the oldest legacy entry is deleted
    assert not dedupe.seen("old-1", 0) and "old-1" not in table and dedupe.seen("old-2", 0)
