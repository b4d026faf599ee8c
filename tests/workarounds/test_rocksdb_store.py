"""workarounds/rocksdb_store.py on real RocksDB databases (no broker): options capped, writes routed to the partition
the sink names, reads found in whichever partition holds the key; and the Faust defaults it replaces."""

from __future__ import annotations

from pathlib import Path

import faust
from faust.stores import rocksdb as faust_rocksdb
from pydantic import SecretStr

from foundations.config import Settings
from sinks.agent import TABLE_NAME, register_sink
from workarounds.faust_app import build_app
from workarounds.rocksdb_store import (
    MAX_WRITE_BUFFER_NUMBER,
    WRITE_BUFFER_SIZE,
    RoutedRocksDBStore,
    write_to_partition,
)


def sink_app(tmp_path: Path, store: str) -> faust.App:
    settings = Settings(kafka_bootstrap_servers="127.0.0.1:9", ghl_base_url="http://127.0.0.1:9",
                        ghl_token=SecretStr("unit-token-0123456789abcdef"), ghl_location_id="loc",
                        state_dir=tmp_path / "state", state_store=store, topic_partitions=4, _env_file=None)
    app = build_app(settings, app_id="rocksdb-unit")
    register_sink(app, settings)
    return app


def test_faust_still_gives_each_partition_database_a_2_gib_cache_and_64_mib_buffers() -> None:
    assert faust_rocksdb.DEFAULT_BLOCK_CACHE_SIZE == 2 * 1024**3
    assert (faust_rocksdb.DEFAULT_WRITE_BUFFER_SIZE, faust_rocksdb.DEFAULT_MAX_WRITE_BUFFER_NUMBER) == (64 << 20, 3)


def test_memory_is_the_default_store(tmp_path: Path) -> None:
    app = sink_app(tmp_path, "memory")
    assert not isinstance(app.tables[TABLE_NAME].data, RoutedRocksDBStore)


def test_writes_go_to_the_named_partition_and_reads_find_them_without_an_event(tmp_path: Path) -> None:
    table = sink_app(tmp_path, "rocksdb").tables[TABLE_NAME]
    store = table.data
    assert isinstance(store, RoutedRocksDBStore)
    options = store.rocksdb_options
    assert (options.write_buffer_size, options.max_write_buffer_number) == (WRITE_BUFFER_SIZE,
                                                                            MAX_WRITE_BUFFER_NUMBER)
    for partition in range(4):  # what Faust does when the partitions are assigned
        store._db_for_partition(partition)
    with write_to_partition(2):
        table.data["48213"] = "state-a"
    with write_to_partition(3):
        table.data["48214"] = "state-b"
    assert store._dbs[2].get(store._encode_key("48213")) is not None
    assert store._dbs[3].get(store._encode_key("48213")) is None
    store._key_index.clear()  # as after a restart: found through the bloom filters
    assert (table.get("48213"), table.get("48214"), table.get("nobody")) == ("state-a", "state-b", None)
    assert "48214" in table.data and "nobody" not in table.data
