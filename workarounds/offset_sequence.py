"""Hand each partition's records to an agent one after another, with no offset missing (pure logic, no I/O).

Why: faust-streaming 0.15.3 can drop a record between its consumer and an agent and commit past the hole.
Our topics have contiguous offsets, so a jump means a dropped record: the agent reads the missing offsets from
the broker first (workarounds/consumer_control.py). The incidents: docs/reliability.md, "Module notes"."""

from __future__ import annotations

import enum
from collections.abc import Hashable, Iterable
from dataclasses import dataclass


class Verdict(enum.Enum):
    PROCESS = "process"  # the next record: hand it to the agent
    SEEN = "seen"  # already handed over (Faust delivered it again): drop it
    GAP = "gap"  # offsets [expected, offset) never reached the agent: read them first, then this record


@dataclass
class _Position:
    generation: int
    expected: int  # next offset to hand over


@dataclass(frozen=True)
class Decision:
    verdict: Verdict
    expected: int  # the next offset due (GAP: the first missing one)


class OffsetSequencer:
    """Per topic-partition position of what was handed to the agent, per consumer generation."""

    def __init__(self) -> None:
        self._positions: dict[Hashable, _Position] = {}

    def check(self, tp: Hashable, offset: int, generation: int, committed: int | None) -> Decision:
        """Where `offset` stands. `committed` is the group's committed offset for `tp` (None if unknown or 0);
        it seeds the position at the first record of a generation, so a first record that went missing is
        noticed too. A GAP does not move the position: call `handed_over` once the gap and the record are
        handed to the agent."""
        pos = self._positions.get(tp)
        if pos is None or pos.generation != generation:
            start = committed if committed is not None and committed < offset else offset
            pos = self._positions[tp] = _Position(generation, start)
        if offset == pos.expected:
            pos.expected = offset + 1
            return Decision(Verdict.PROCESS, offset)
        if offset < pos.expected:
            return Decision(Verdict.SEEN, pos.expected)
        return Decision(Verdict.GAP, pos.expected)

    def handed_over(self, tp: Hashable, generation: int, offset: int) -> bool:
        """Everything up to `offset` was handed over (after a gap was read). False when `tp` was forgotten or a
        new generation started meanwhile: the caller must then drop what it read (the new owner reads it)."""
        pos = self._positions.get(tp)
        if pos is None or pos.generation != generation:
            return False
        pos.expected = max(pos.expected, offset + 1)
        return True

    def expected(self, tp: Hashable, generation: int) -> int | None:
        """The next offset `tp` waits for in `generation`, or None (forgotten, or another generation)."""
        pos = self._positions.get(tp)
        return pos.expected if pos is not None and pos.generation == generation else None

    def forget(self, tps: Iterable[Hashable] | None = None) -> None:
        """Partitions revoked (or all, on a rebalance): their next records start a new position."""
        if tps is None:
            self._positions.clear()
            return
        for tp in tps:
            self._positions.pop(tp, None)


__all__ = ["Decision", "OffsetSequencer", "Verdict"]
