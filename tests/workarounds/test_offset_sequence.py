"""OffsetSequencer: records handed over strictly in offset order; records dropped on the way make a gap to read."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from workarounds.offset_sequence import OffsetSequencer, Verdict

TP = ("apro.events.normalized", 3)


def verdicts(seq: OffsetSequencer, offsets: list[int], generation: int = 1, committed: int | None = None) -> list[str]:
    return [seq.check(TP, o, generation, committed).verdict.value for o in offsets]


def test_contiguous_records_are_processed() -> None:
    assert verdicts(OffsetSequencer(), [0, 1, 2, 3]) == ["process"] * 4


def test_the_restart_seen_in_the_wild_is_a_gap_before_the_record() -> None:
    """Offsets 0, 1, 3, 4 arrived (2 dropped by Faust): 3 reveals the gap [2, 3); once 2 and 3 are handed over
    the sequence goes on at 4, and a late redelivery of 2 or 3 is a repeat."""
    seq = OffsetSequencer()
    assert verdicts(seq, [0, 1]) == ["process", "process"]
    decision = seq.check(TP, 3, 1, None)
    assert (decision.verdict, decision.expected) == (Verdict.GAP, 2)
    assert seq.expected(TP, 1) == 2  # a gap does not move the position by itself
    assert seq.handed_over(TP, 1, 3)
    assert verdicts(seq, [4, 2, 3, 5]) == ["process", "seen", "seen", "process"]


def test_first_record_after_the_committed_offset_missing_is_a_gap() -> None:
    seq = OffsetSequencer()
    decision = seq.check(TP, 7, 1, 5)  # group committed 5: records 5 and 6 never came
    assert (decision.verdict, decision.expected) == (Verdict.GAP, 5)


def test_without_a_committed_offset_the_first_record_starts_the_sequence() -> None:
    assert verdicts(OffsetSequencer(), [40, 41], committed=None) == ["process", "process"]


def test_a_committed_offset_past_the_record_does_not_seed_a_gap() -> None:
    assert verdicts(OffsetSequencer(), [3, 4], committed=9) == ["process", "process"]


def test_records_delivered_again_are_seen() -> None:
    seq = OffsetSequencer()
    assert verdicts(seq, [0, 1, 2, 1, 2, 3]) == ["process", "process", "process", "seen", "seen", "process"]


def test_a_new_generation_starts_over() -> None:
    """After a rebalance Faust seeks to the committed offset: records already handed over come again."""
    seq = OffsetSequencer()
    assert verdicts(seq, [0, 1, 2, 3], generation=1) == ["process"] * 4
    assert verdicts(seq, [2, 3, 4], generation=2, committed=2) == ["process"] * 3


def test_a_gap_read_across_a_rebalance_is_not_handed_over() -> None:
    """The partition was revoked (forgotten) or a new generation began while the gap was read: the reader must
    drop what it read, the new owner reads it."""
    seq = OffsetSequencer()
    verdicts(seq, [0])
    assert seq.check(TP, 5, 1, None).verdict is Verdict.GAP
    seq.forget([TP])
    assert not seq.handed_over(TP, 1, 5)
    assert verdicts(seq, [0], generation=2) == ["process"]
    assert not seq.handed_over(TP, 1, 5)
    assert seq.expected(TP, 2) == 1


def test_forget_drops_the_position() -> None:
    seq = OffsetSequencer()
    verdicts(seq, [0, 1, 2])
    seq.forget([TP])
    assert verdicts(seq, [1]) == ["process"]
    seq.forget()
    assert verdicts(seq, [0]) == ["process"]


def test_partitions_are_independent() -> None:
    seq = OffsetSequencer()
    other = ("apro.events.normalized", 4)
    assert seq.check(TP, 0, 1, None).verdict is Verdict.PROCESS
    assert seq.check(other, 100, 1, None).verdict is Verdict.PROCESS
    assert seq.check(other, 101, 1, None).verdict is Verdict.PROCESS
    assert seq.check(TP, 1, 1, None).verdict is Verdict.PROCESS


@settings(max_examples=300, deadline=None)
@given(n=st.integers(1, 60), drops=st.sets(st.integers(0, 59)), repeats=st.lists(st.integers(0, 59), max_size=20),
       committed=st.integers(0, 5))
def test_whatever_is_dropped_or_repeated_the_agent_gets_exactly_the_log(
        n: int, drops: set[int], repeats: list[int], committed: int) -> None:
    """A consumer that drops some records for good and delivers others again (redeliveries); the guard reads the
    gaps from the 'log'. The agent gets committed..n-1, each once, in order, as long as the last record arrives."""
    committed = min(committed, n - 1)
    seq = OffsetSequencer()
    deliveries = [o for o in range(committed, n) if o not in drops or o == n - 1]
    for r in repeats:  # a repeat of an offset already delivered, inserted after it
        if committed <= r < n and r in deliveries:
            deliveries.insert(deliveries.index(r) + 1, r)
    handled: list[int] = []
    for offset in deliveries:
        decision = seq.check(TP, offset, 1, committed)
        if decision.verdict is Verdict.PROCESS:
            handled.append(offset)
        elif decision.verdict is Verdict.GAP:
            handled.extend(range(decision.expected, offset))  # read from the log
            assert seq.handed_over(TP, 1, offset)
            handled.append(offset)
    assert handled == list(range(committed, n))
