"""Faust's RocksDB table store (rocksdict) with a memory cap and explicit partition routing (`APRO_STATE_STORE`).

faust-streaming 0.15.3 gives each partition database a 2 GiB block cache and 3 x 64 MiB write buffers, and routes
reads and writes by the *current event's* partition, which the sink's lanes do not carry. README.md here.
"""

from __future__ import annotations

import contextvars
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from faust import stores
from faust.stores import rocksdb as faust_rocksdb

SCHEME = "aprorocksdb"  # the store URL scheme registered for tables on this store

# Where the next `table.data[key] = value` goes: the sink knows the changelog partition, its lanes' context does not.
_write_partition: contextvars.ContextVar[int | None] = contextvars.ContextVar("apro_write_partition", default=None)

_shared: dict[int, tuple[Any, Any]] = {}  # memory cap (bytes) -> (block cache, write buffer manager), per process

MAX_OPEN_FILES = 256  # per partition database (Faust's default: 90 % of the process limit, each)
WRITE_BUFFER_SIZE = 8 * 1024 * 1024
MAX_WRITE_BUFFER_NUMBER = 2


def _cache_and_buffers(memory_bytes: int) -> tuple[Any, Any]:
    """One block cache for every table and partition, with the memtables charged to it: one cap for RocksDB."""
    if memory_bytes not in _shared:
        import rocksdict

        cache = rocksdict.Cache(memory_bytes)
        manager = rocksdict.WriteBufferManager.new_write_buffer_manager_with_cache(memory_bytes // 2, False, cache)
        _shared[memory_bytes] = (cache, manager)
    return _shared[memory_bytes]


class CappedOptions(faust_rocksdb.RocksDBOptions):
    """Faust's options, built on the process-wide cache and write buffer manager instead of per-database ones."""

    def __init__(self, *, memory_bytes: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.memory_bytes = memory_bytes

    def as_options(self) -> Any:
        import rocksdict

        cache, manager = _cache_and_buffers(self.memory_bytes)
        options = rocksdict.Options(raw_mode=True)
        options.create_if_missing(True)
        options.set_max_open_files(self.max_open_files)
        options.set_write_buffer_size(self.write_buffer_size)
        options.set_max_write_buffer_number(self.max_write_buffer_number)
        options.set_target_file_size_base(self.target_file_size_base)
        options.set_write_buffer_manager(manager)
        table = rocksdict.BlockBasedOptions()
        table.set_bloom_filter(self.bloom_filter_size, block_based=True)
        table.set_block_cache(cache)
        table.set_index_type(rocksdict.BlockBasedIndexType.binary_search())
        options.set_block_based_table_factory(table)
        return options


class RoutedRocksDBStore(faust_rocksdb.Store):
    """Reads find a key in whichever partition database holds it (bloom filters, then Faust's key index); writes go
    to the partition given by `write_to_partition` (else, as in Faust, the current event's)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        options = dict(kwargs.get("options") or {})
        memory_bytes = int(options.pop("memory_bytes", 128 * 1024 * 1024))
        kwargs["options"] = options
        super().__init__(*args, **kwargs)
        if not self.use_rocksdict:
            raise RuntimeError("the RocksDB state store needs rocksdict (pip install rocksdict)")
        self.rocksdb_options = CappedOptions(memory_bytes=memory_bytes, use_rocksdict=True, **self.options)

    def _set(self, key: bytes, value: bytes | None) -> None:
        partition = _write_partition.get()
        if partition is None:
            super()._set(key, value)
            return
        self._key_index[key] = partition
        self._db_for_partition(partition).put(key, value)

    def _get(self, key: bytes) -> bytes | None:
        found = self._get_bucket_for_key(key)
        return None if found is None else found.value

    def _contains(self, key: bytes) -> bool:
        return self._get_bucket_for_key(key) is not None


def register() -> None:
    """Make `aprorocksdb://` a Faust store URL (idempotent)."""
    stores.STORES.aliases[SCHEME] = f"{__name__}:RoutedRocksDBStore"


def table_store(name: str, state_store: str, memory_mb: int) -> dict[str, Any]:
    """The `app.Table(name, ...)` keyword arguments choosing the configured store (none for the memory store).
    The URL names the table: a bare `scheme://` is a false yarl URL, so Faust would use the app's store."""
    if state_store == "memory":
        return {}
    register()
    return {"store": f"{SCHEME}:{name}", "options": {
        "memory_bytes": memory_mb * 1024 * 1024, "max_open_files": MAX_OPEN_FILES,
        "write_buffer_size": WRITE_BUFFER_SIZE, "max_write_buffer_number": MAX_WRITE_BUFFER_NUMBER}}


@contextmanager
def write_to_partition(partition: int) -> Iterator[None]:
    """Table writes in this block go to `partition`'s database (the changelog partition of the same record)."""
    token = _write_partition.set(partition)
    try:
        yield
    finally:
        _write_partition.reset(token)
