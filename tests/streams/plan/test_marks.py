"""Done marks (streams/plan/marks.py): a state plus its marks is the state `mark_done` gives, after any crash."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from foundations.formats.crm_commands import CrmOp, UpsertContact, UpsertOpportunity
from foundations.formats.normalized import NormalizedEvent
from streams.plan import marks, state_codec
from streams.plan.planner import plan
from streams.plan.state import ClientState, CrmIds, mark_done, record_contact_id, record_opportunity_id
from tests.streams.plan.test_horizon import LABEL, T0, delays, history, visits

CLIENT = "48213"
Record = tuple[str, str | None]  # a changelog record: key, value (None: tombstone)


def execute(op: CrmOp, state: ClientState) -> ClientState:
    """What the executor records: a contact id on the first upsert, an opportunity id on the first upsert."""
    ids = state.crm.get(op.location_label, CrmIds())
    if isinstance(op, UpsertContact) and ids.contact_id is None:
        return record_contact_id(state, op.location_label, f"contact-{op.event_id}")
    if isinstance(op, UpsertOpportunity) and ids.opportunity_id is None:
        return record_opportunity_id(state, op.location_label, f"opp-{op.event_id}")
    return state


def recover(changelog: list[Record]) -> dict[str, str]:
    """The table a worker rebuilds from the changelog: last value per key, tombstones delete."""
    table: dict[str, str] = {}
    for key, value in changelog:
        if value is None:
            table.pop(key, None)
        else:
            table[key] = value
    return table


def load(table: dict[str, str]) -> ClientState | None:
    raw = table.get(CLIENT)
    if raw is None:
        return None
    done = table.get(marks.marks_key(CLIENT))
    return marks.merge(state_codec.decode(raw), marks.EMPTY if done is None else marks.decode(done))


class Crash(Exception):
    """The worker died: the record being written never reached the broker."""


class Sink:
    """The write path of sinks/agent.py (`_process`, `_save`, `_save_marks`) over a changelog list."""

    def __init__(self, limit: int | None = None) -> None:
        self.changelog: list[Record] = []
        self.table: dict[str, str] = {}
        self.truth: list[ClientState] = []  # the in-memory state once each record is durable
        self.executed: list[str] = []  # op ids in the order GoHighLevel saw them
        self.marked_at: dict[str, int] = {}  # op id → index of the record that made its done mark durable
        self.limit = limit  # the worker dies writing record number `limit` (0-based)

    def _write(self, key: str, value: str | None, state: ClientState, done: tuple[str, ...] = ()) -> None:
        if self.limit is not None and len(self.changelog) >= self.limit:
            raise Crash()
        for op_id in done:
            self.marked_at.setdefault(op_id, len(self.changelog))
        self.changelog.append((key, value))
        if value is None:
            self.table.pop(key, None)
        else:
            self.table[key] = value
        self.truth.append(state)

    def save(self, state: ClientState, done: tuple[str, ...] = ()) -> None:
        self._write(CLIENT, state_codec.encode(state), state, done)
        if marks.marks_key(CLIENT) in self.table:
            self._write(marks.marks_key(CLIENT), None, state)

    def process(self, ev: NormalizedEvent) -> None:
        state = load(self.table)
        p = plan(ev, state, location_label=LABEL, now=ev.occurred_at or T0)
        if state is None or p.new_state != state:
            self.save(p.new_state)
        elif marks.marks_key(CLIENT) in self.table and not p.new_state.effects:
            self.save(p.new_state)
        state = p.new_state
        pending = state.pending_ops()
        stored = self.table.get(marks.marks_key(CLIENT))
        done = marks.EMPTY if stored is None else marks.decode(stored)
        for op in pending:
            before = state
            self.executed.append(op.op_id)
            state = mark_done(execute(op, state), op.op_id)
            if op is pending[-1]:
                self.save(state, (op.op_id,))
            else:
                done = marks.add(done, op, before, state)
                self._write(marks.marks_key(CLIENT), marks.encode(done), state, (op.op_id,))


def fault_free(events: list[NormalizedEvent]) -> Sink:
    sink = Sink()
    for ev in events:
        sink.process(ev)
    return sink


@hsettings(max_examples=60, deadline=None)
@given(visits, delays)
def test_every_changelog_prefix_recovers_the_state_mark_done_gives(spec: list, delay_hours: list[int]) -> None:
    sink = fault_free(history(spec, delay_hours))
    for end in range(1, len(sink.changelog) + 1):
        assert load(recover(sink.changelog[:end])) == sink.truth[end - 1]
    assert marks.marks_key(CLIENT) not in recover(sink.changelog)  # at rest: one key per client


@hsettings(max_examples=80, deadline=None)
@given(visits, delays, st.data())
def test_after_a_crash_exactly_the_unmarked_ops_are_pending(spec: list, delay_hours: list[int],
                                                            data: st.DataObject) -> None:
    events = history(spec, delay_hours)
    reference = fault_free(events)
    # The worker dies writing changelog record `cut` (an op may have run, its mark lost); the next owner rebuilds
    # the table from the records before it and gets the events again from a committed offset. Crashing twice
    # (the second time right after recovery) must not matter either.
    crashed = Sink(limit=data.draw(st.integers(min_value=0, max_value=len(reference.changelog))))
    crashed_at = len(events) - 1
    for i, ev in enumerate(events):
        try:
            crashed.process(ev)
        except Crash:
            crashed_at = i
            break
    in_flight = [op_id for op_id in crashed.executed if op_id not in crashed.marked_at]
    assert len(in_flight) <= 1
    resumed = Sink()
    resumed.changelog = list(crashed.changelog)
    resumed.table = recover(resumed.changelog)
    recovered = load(resumed.table)
    if recovered is not None:
        pending = {op.op_id for op in recovered.pending_ops()}
        assert not pending & set(crashed.marked_at)  # a durable mark is never lost
        assert set(in_flight) <= pending  # the op in flight is in doubt: it runs again, checked first
    committed = data.draw(st.integers(min_value=0, max_value=crashed_at))
    for ev in events[committed:]:
        resumed.process(ev)
    assert load(resumed.table) == load(recover(reference.changelog))
    assert marks.marks_key(CLIENT) not in recover(resumed.changelog)
    everything = crashed.executed + resumed.executed
    assert set(everything) == set(reference.executed)
    assert sorted(op_id for op_id in set(everything) if everything.count(op_id) > 1) == sorted(in_flight)


@given(st.data())
@hsettings(max_examples=40, deadline=None)
def test_merging_again_changes_nothing(data: st.DataObject) -> None:
    events = history([(30, "paid", None, 1, "HydraFacial", "199.00")], [0] * 200)
    state = plan(events[0], None, location_label=LABEL, now=T0).new_state
    ops = state.pending_ops()
    chosen = data.draw(st.lists(st.sampled_from(ops), unique_by=lambda op: op.op_id))
    done, expected = marks.EMPTY, state
    for op in chosen:
        before = expected
        expected = mark_done(execute(op, expected), op.op_id)
        done = marks.add(done, op, before, expected)
    assert marks.merge(state, done) == expected
    assert marks.merge(marks.merge(state, done), done) == expected  # a stale marks record is harmless
    assert marks.decode(marks.encode(done)) == done


def test_a_done_mark_is_a_few_dozen_bytes() -> None:
    events = history([(30, "paid", None, 1, "HydraFacial", "199.00")], [0] * 200)
    state = plan(events[0], None, location_label=LABEL, now=T0).new_state
    op = state.pending_ops()[0]
    after = mark_done(execute(op, state), op.op_id)
    value = marks.encode(marks.add(marks.EMPTY, op, state, after))
    assert len(value) < 120 < len(state_codec.encode(after))
    assert marks.merge(state, marks.decode(value)) == after


def test_keys_never_clash_with_a_client_id() -> None:
    key = marks.marks_key("48213")
    assert key != "48213" and marks.is_marks_key(key) and marks.client_of(key) == "48213"
    assert not marks.is_marks_key("48213") and not marks.is_marks_key("48213done")
    with pytest.raises(ValueError, match="control character"):
        marks.marks_key("48213" + marks.SUFFIX)


@pytest.mark.parametrize("value", ["", '{"done": {}}', "d1:{", "d1:[]", 'd1:{"done": 3}', 'd1:{"other": 1}',
                                   "d1:" + "x" * (marks.MAX_MARKS_BYTES + 1)])
def test_a_bad_marks_value_is_refused_without_its_content(value: str) -> None:
    with pytest.raises(marks.MarksDecodeError) as caught:
        marks.decode(value)
    assert "done" not in str(caught.value).replace("done marks", "")


def test_an_op_id_not_under_its_event_is_refused() -> None:
    events = history([(30, "paid", None, 1, "HydraFacial", "199.00")], [0] * 200)
    state = plan(events[0], None, location_label=LABEL, now=T0).new_state
    op = state.pending_ops()[0]
    stray = op.model_copy(update={"op_id": f"other:{op.op_id}"})
    with pytest.raises(ValueError, match="event id"):
        marks.add(marks.EMPTY, stray, state, state)
