"""The client_state table as the sink reads and writes it: a client's state with its done marks merged; the whole
state (marks folded in, the marks key cleared); one op's done mark; or any key of the table (the park index).
Every write goes to the given partition's changelog and local store (docs/sync-engine.md, "Done marks")."""

from __future__ import annotations

from typing import Any

from streams.plan import marks, state_codec
from streams.plan.state import ClientState
from workarounds.rocksdb_store import write_to_partition


class ClientStateStore:
    def __init__(self, table: Any) -> None:
        self.table = table  # a faust.Table of str keys and values

    def get(self, key: str) -> Any:
        return self.table.get(key)

    def write(self, partition: int, key: str, value: str | None) -> Any:
        """Write (None: delete) `key` on `partition`: the changelog record's send future (await for durability)."""
        if value is None:
            fut = self.table.send_changelog(partition, key, None, value_serializer="raw")
            self.table.data.pop(key, None)
            return fut
        fut = self.table.send_changelog(partition, key, value)
        with write_to_partition(partition):
            self.table.data[key] = value
        return fut

    def load(self, client_id: str) -> tuple[ClientState | None, marks.DoneMarks | None]:
        """The client's state with its done marks merged (streams/plan/marks.py), and the marks record (None when
        the client has no marks key): one read of each key per event."""
        raw_marks = self.table.get(marks.marks_key(client_id))
        done = None if raw_marks is None else marks.decode(raw_marks)
        raw = self.table.get(client_id)
        if raw is None:
            return None, done
        state = state_codec.decode(raw)
        return (state if done is None else marks.merge(state, done)), done

    def save(self, client_id: str, state: ClientState, partition: int) -> Any:
        """Write the whole state (its done marks folded in), then clear the marks key (a tombstone after it on the
        same partition). Returns the state record's send future. The tombstone is not awaited: it follows the
        state on the same partition, so any later record's ack covers it, and a lost one leaves only marks already
        folded (merging them again changes nothing)."""
        fut = self.write(partition, client_id, state_codec.encode(state))
        key = marks.marks_key(client_id)
        if self.table.data.get(key) is not None:
            self.write(partition, key, None)
        return fut

    def save_marks(self, client_id: str, done: marks.DoneMarks, partition: int) -> Any:
        """Write an op's done mark: the small marks record on the state's partition (not the whole state)."""
        return self.write(partition, marks.marks_key(client_id), marks.encode(done))


__all__ = ["ClientStateStore"]
