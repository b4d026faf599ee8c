"""OffsetSequencer: records handed over strictly in offset order; a dropped record means a rewind."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from streams.offset_sequence import MAX_REWINDS, REWIND_PATIENCE_S, OffsetSequencer, Verdict

TP = ("apro.events.normalized", 3)


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def verdicts(seq: OffsetSequencer, offsets: list[int], generation: int = 1, committed: int | None = None) -> list[str]:
    return [seq.check(TP, o, generation, committed).verdict.value for o in offsets]


def test_contiguous_records_are_processed() -> None:
    assert verdicts(OffsetSequencer(), [0, 1, 2, 3]) == ["process"] * 4


def test_the_restart_seen_in_the_wild_rewinds_then_takes_the_missing_record_first() -> None:
    """Offsets 0, 1, 3, 4 arrived (2 dropped by Faust): 3 triggers a rewind to 2, 4 is held back, then the
    re-read brings 2, 3, 4 in order."""
    seq = OffsetSequencer(Clock())
    assert verdicts(seq, [0, 1]) == ["process", "process"]
    decision = seq.check(TP, 3, 1, None)
    assert (decision.verdict, decision.expected) == (Verdict.REWIND, 2)
    assert verdicts(seq, [4, 5]) == ["held", "held"]
    assert (seq.expected(TP, 1), seq.expected(TP, 2)) == (2, None)  # what a re-seek would target, per generation
    assert verdicts(seq, [2, 3, 4, 5, 6]) == ["process"] * 5


def test_first_record_after_the_committed_offset_missing_is_noticed() -> None:
    seq = OffsetSequencer(Clock())
    decision = seq.check(TP, 7, 1, 5)  # group committed 5: records 5 and 6 never came
    assert (decision.verdict, decision.expected) == (Verdict.REWIND, 5)
    assert verdicts(seq, [5, 6, 7]) == ["process"] * 3


def test_without_a_committed_offset_the_first_record_starts_the_sequence() -> None:
    assert verdicts(OffsetSequencer(), [40, 41], committed=None) == ["process", "process"]


def test_records_delivered_again_are_seen() -> None:
    seq = OffsetSequencer()
    assert verdicts(seq, [0, 1, 2, 1, 2, 3]) == ["process", "process", "process", "seen", "seen", "process"]


def test_a_new_generation_starts_over() -> None:
    """After a rebalance Faust seeks to the committed offset: records already handed over come again."""
    seq = OffsetSequencer()
    assert verdicts(seq, [0, 1, 2, 3], generation=1) == ["process"] * 4
    assert verdicts(seq, [2, 3, 4], generation=2, committed=2) == ["process"] * 3


def test_forget_drops_the_position() -> None:
    seq = OffsetSequencer()
    verdicts(seq, [0, 1, 2])
    seq.forget([TP])
    assert verdicts(seq, [1]) == ["process"]
    seq.forget()
    assert verdicts(seq, [0]) == ["process"]


def test_a_record_that_never_comes_back_is_skipped_alone_not_what_was_held_after_it() -> None:
    """Records after the missing one were held back by the guard, not lost: after MAX_REWINDS rewinds only the
    missing record is given up (and reported), and the partition is re-read from the next one. An earlier
    version skipped everything up to the newest arrival: hundreds of events in a long-mode crash run."""
    clock = Clock()
    seq = OffsetSequencer(clock)
    verdicts(seq, [0])
    for _ in range(MAX_REWINDS):
        assert seq.check(TP, 5, 1, None).verdict is Verdict.REWIND  # waiting for 1
        assert seq.check(TP, 6, 1, None).verdict is Verdict.HELD
        clock.now += REWIND_PATIENCE_S + 1
    decision = seq.check(TP, 5, 1, None)
    assert (decision.skipped, decision.verdict, decision.expected) == (1, Verdict.REWIND, 2)  # re-read from 2
    assert verdicts(seq, [2, 3, 4, 5]) == ["process"] * 4


def test_accept_hole_when_the_broker_confirms_it() -> None:
    seq = OffsetSequencer()
    verdicts(seq, [0])
    assert seq.check(TP, 9, 1, None).verdict is Verdict.REWIND
    decision = seq.accept_hole(TP, 9)
    assert (decision.verdict, decision.expected) == (Verdict.HOLE, 1)
    assert verdicts(seq, [10]) == ["process"]


def test_partitions_are_independent() -> None:
    seq = OffsetSequencer()
    other = ("apro.events.normalized", 4)
    assert seq.check(TP, 0, 1, None).process and seq.check(other, 100, 1, None).process
    assert seq.check(other, 101, 1, None).process and seq.check(TP, 1, 1, None).process


@settings(max_examples=200, deadline=None)
@given(n=st.integers(2, 40), drops=st.sets(st.integers(1, 38)), data=st.data())
def test_whatever_is_dropped_the_processed_order_is_exactly_the_log(n: int, drops: set[int], data: st.DataObject) -> None:
    """Simulate a consumer that drops records on first delivery and re-reads from the offset it is told to
    seek to: the processed sequence is 0..n-1, each once, in order. (The first record seeds the position and
    the last one is never dropped: a drop is noticed when a later record arrives.)"""
    clock = Clock()
    seq = OffsetSequencer(clock)
    dropped_once = {d for d in drops if d < n - 1}
    position, processed, steps = 0, [], 0
    while position < n and steps < 10 * n + 100:
        steps += 1
        offset = position
        position += 1
        if offset in dropped_once:
            dropped_once.discard(offset)
            continue
        decision = seq.check(TP, offset, 1, None)
        if decision.process:
            processed.append(offset)
        elif decision.verdict is Verdict.REWIND:
            position = decision.expected
            clock.now += data.draw(st.sampled_from([0.0, 0.001]))
    assert processed == list(range(n))
