"""Hand each partition's records to an agent one after another, with no offset missing (pure logic, no I/O).

Why: faust-streaming 0.15.3 can drop a record between its consumer and an agent's stream (the stream skips
records it sees while flow control is suspended or from another consumer generation, around the seek to the
committed offsets at the end of a rebalance) and never delivers it again. Seen in tests: after a restart the
sink got offsets 0, 1, 3, 4... of a partition; offset 2 (a cancellation) was never synced, and the later
records ran ahead of it. Faust then commits past the hole, because its gap check is off by one
(`min(acked) - committed > 1`).

Our topics are written by idempotent, non-transactional producers and are not compacted, so their offsets are
contiguous: an offset jump inside one consumer generation means a record was dropped on the way. The agent
then rewinds the partition to the first missing offset and holds back the records that ran ahead until the
missing one comes. A hole the broker confirms (the log starts later, retention) is accepted. A single record that
does not come back after MAX_REWINDS rewinds is skipped alone, with a warning naming its offset; never the records
held back after it (a long-mode crash run showed an earlier version skipping hundreds of those).
"""

from __future__ import annotations

import enum
import time
from collections.abc import Callable, Hashable, Iterable
from dataclasses import dataclass

REWIND_PATIENCE_S = 10.0  # a rewind's records normally arrive within milliseconds; after this, rewind again
MAX_REWINDS = 3  # rewinds for one missing record before that single record is skipped (and logged)


class Verdict(enum.Enum):
    PROCESS = "process"  # the next record: hand it to the agent
    SEEN = "seen"  # delivered again (a rewind re-reads what ran ahead): already handed over, drop
    HELD = "held"  # ahead of a rewind in progress: drop, it comes again after the missing record
    REWIND = "rewind"  # a record is missing before this one: seek back to `expected`, drop this one
    HOLE = "hole"  # the broker says the missing offsets are gone (retention): accept and process this record


@dataclass
class _Position:
    generation: int
    expected: int  # next offset to hand over
    rewound_at: float | None = None  # clock time of the last rewind for `expected`
    rewinds: int = 0


@dataclass(frozen=True)
class Decision:
    verdict: Verdict
    expected: int  # the offset that should have come (REWIND/HOLE: first missing one)
    skipped: int | None = None  # a single record given up on after MAX_REWINDS rewinds (to be logged)

    @property
    def process(self) -> bool:
        return self.verdict in (Verdict.PROCESS, Verdict.HOLE)


class OffsetSequencer:
    """Per topic-partition position of what was handed to the agent, per consumer generation."""

    def __init__(self, clock: Callable[[], float] = time.monotonic, *, patience_s: float = REWIND_PATIENCE_S,
                 max_rewinds: int = MAX_REWINDS) -> None:
        self._clock = clock
        self._patience_s = patience_s
        self._max_rewinds = max_rewinds
        self._positions: dict[Hashable, _Position] = {}

    def check(self, tp: Hashable, offset: int, generation: int, committed: int | None) -> Decision:
        """Where `offset` stands. `committed` is the group's committed offset for `tp` (None if unknown or 0);
        it seeds the position at the first record of a generation, so a first record that went missing is
        noticed too."""
        pos = self._positions.get(tp)
        if pos is None or pos.generation != generation:
            start = committed if committed is not None and committed < offset else offset
            pos = self._positions[tp] = _Position(generation, start)
        if offset == pos.expected:
            pos.expected, pos.rewound_at, pos.rewinds = offset + 1, None, 0
            return Decision(Verdict.PROCESS, offset)
        if offset < pos.expected:
            return Decision(Verdict.SEEN, pos.expected)
        now = self._clock()
        if pos.rewound_at is not None and now - pos.rewound_at < self._patience_s:
            return Decision(Verdict.HELD, pos.expected)
        if pos.rewinds >= self._max_rewinds:
            # The one record at `expected` never came back. Skip exactly that one (the caller logs it loudly, by
            # offset, for a replay) and re-read from the next: the records after it were held back by us, not
            # lost, so skipping up to `offset` would drop them all (a long-mode crash run did exactly that).
            skipped = pos.expected
            pos.expected, pos.rewound_at, pos.rewinds = skipped + 1, None, 0
            decision = self.check(tp, offset, generation, committed)
            return Decision(decision.verdict, decision.expected, skipped)
        pos.rewinds += 1
        pos.rewound_at = now
        return Decision(Verdict.REWIND, pos.expected)

    def expected(self, tp: Hashable, generation: int) -> int | None:
        """The next offset `tp` waits for in `generation`, or None (forgotten, or another generation)."""
        pos = self._positions.get(tp)
        return pos.expected if pos is not None and pos.generation == generation else None

    def accept_hole(self, tp: Hashable, offset: int) -> Decision:
        """Offsets before `offset` are not in the log (the broker's log start is past them)."""
        pos = self._positions[tp]
        missing = pos.expected
        pos.expected, pos.rewound_at, pos.rewinds = offset + 1, None, 0
        return Decision(Verdict.HOLE, missing)

    def forget(self, tps: Iterable[Hashable] | None = None) -> None:
        """Partitions revoked (or all, on a rebalance): their next records start a new position."""
        if tps is None:
            self._positions.clear()
            return
        for tp in tps:
            self._positions.pop(tp, None)


__all__ = ["Decision", "MAX_REWINDS", "OffsetSequencer", "REWIND_PATIENCE_S", "Verdict"]
