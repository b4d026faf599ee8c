"""Bounded client state (streams/plan/horizon.py): the same CRM writes and lifetime value as the whole history."""

from __future__ import annotations

from datetime import date, datetime, timedelta, timezone
from decimal import Decimal

from hypothesis import given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from foundations.formats.normalized import (
    Appointment,
    Client,
    EventKind,
    Invoice,
    LineItem,
    Location,
    NormalizedEvent,
    Provider,
    Service,
)
from streams.plan.horizon import INVOICE_HORIZON, LATE_HORIZON, compact
from streams.plan.planner import Outcome, Plan, plan
from streams.plan.state import ClientState, mark_done

UTC = timezone.utc
LOC = Location(id="3", name="Scottsdale", timezone="America/Phoenix")
JANE = Client(id="48213", first_name="Jane", last_name="Doe", email="jane.doe@example.com", phone="+14805550134",
              date_of_birth=date(1985, 3, 14))
LABEL = "loc-main"
T0 = datetime(2024, 1, 8, 16, tzinfo=UTC)
MAX_DELAY = timedelta(days=10)  # how late the generated deliveries are (well inside LATE_HORIZON)


def _appt(visit: int, start: datetime, service: str) -> Appointment:
    return Appointment(id=f"A{visit}", start=start, provider=Provider(id="P-12", name="Dr. Maya Lee"),
                       services=(Service(name=service, service_type="Injectables"),))


def _event(kind: EventKind, at: datetime, **blocks: object) -> NormalizedEvent:
    return NormalizedEvent(event_id="pending", kind=kind, occurred_at=at, location=LOC, client=JANE, **blocks)


visits = st.lists(st.tuples(
    st.integers(min_value=3, max_value=60),  # days to the next booking
    st.sampled_from(["paid", "paid", "paid", "cancelled", "no_show", "rescheduled_paid"]),
    st.sampled_from([None, None, None, "partial", "full", "void"]),  # a later reversal of the invoice
    st.integers(min_value=1, max_value=120),  # its delay in days (refunds happen within the invoice horizon)
    st.sampled_from(["Botox - Forehead", "HydraFacial", "Chemical Peel"]),
    st.sampled_from(["420.00", "199.00", "150.50"]),
), min_size=1, max_size=40)
delays = st.lists(st.integers(min_value=0, max_value=int(MAX_DELAY.total_seconds() // 3600)), min_size=200,
                  max_size=200)


def history(spec: list[tuple[int, str, str | None, int, str, str]], delay_hours: list[int]) -> list[NormalizedEvent]:
    """A client's events in delivery order: each delivered up to MAX_DELAY after it happened."""
    events: list[NormalizedEvent] = []
    at = T0
    for visit, (gap, course, reversal, reversal_days, service, price) in enumerate(spec):
        start = at + timedelta(days=7)
        appt = _appt(visit, start, service)
        events.append(_event(EventKind.APPOINTMENT_BOOKED, at, appointment=appt))
        if course.startswith("rescheduled"):
            moved = appt.model_copy(update={"start": start + timedelta(days=2), "previous_start": start})
            events.append(_event(EventKind.APPOINTMENT_UPDATED, at + timedelta(days=1), appointment=moved))
            appt = moved.model_copy(update={"previous_start": None})
        assert appt.start is not None
        if course in ("cancelled", "no_show"):
            kind = EventKind.APPOINTMENT_CANCELLED if course == "cancelled" else EventKind.APPOINTMENT_NO_SHOW
            events.append(_event(kind, at + timedelta(days=3), appointment=appt))
        else:
            inv = Invoice(id=f"INV-{visit}", number=str(100 + visit), amount_paid=Decimal(price), appointment=appt,
                          paid_at=appt.start, items=(LineItem(name=service, type="Service", amount=Decimal(price)),))
            events.append(_event(EventKind.INVOICE_PAID, appt.start, invoice=inv))
            if reversal is not None:
                kind = EventKind.INVOICE_VOIDED if reversal == "void" else EventKind.INVOICE_REFUNDED
                amount = Decimal("0") if reversal != "partial" else Decimal("50.00")
                events.append(_event(kind, appt.start + timedelta(days=reversal_days),
                                     invoice=inv.model_copy(update={"amount_paid": amount, "appointment": None})))
        at += timedelta(days=gap)
    delivered = sorted(((ev.occurred_at + timedelta(hours=delay_hours[i % len(delay_hours)]), i, ev)  # type: ignore[operator]
                        for i, ev in enumerate(events)), key=lambda row: row[:2])
    return [ev.model_copy(update={"event_id": f"ev-{i}", "raw_offset": offset})
            for offset, (_, i, ev) in enumerate(delivered)]


def run(events: list[NormalizedEvent], state: ClientState | None = None, *,
        bounded: bool = True) -> tuple[ClientState | None, list[Plan]]:
    """Plan each event and complete its ops, as the sink does (the effects ledger drains)."""
    plans = []
    for ev in events:
        p = plan(ev, state, location_label=LABEL, now=ev.occurred_at or T0, bounded=bounded)
        plans.append(p)
        state = p.new_state
        for op in p.ops:
            state = mark_done(state, op.op_id)
        stored = ClientState.from_json(state.to_json())  # what the table holds
        assert stored == state
        state = stored
    return state, plans


def crm_view(state: ClientState | None) -> tuple[object, ...]:
    """What the CRM is told of the client's state: registers' values, stage, next visit, value, patient."""
    assert state is not None
    return ({k: r.value for k, r in state.contact.items()}, {k: r.value for k, r in state.custom.items()},
            state.stage.value if state.stage else None, state.next_visit, state.lifetime_value, state.patient,
            state.clock)


@hsettings(max_examples=60, deadline=None)
@given(visits, delays)
def test_bounded_state_plans_what_the_whole_history_plans(spec: list, delay_hours: list[int]) -> None:
    events = history(spec, delay_hours)
    bounded, bounded_plans = run(events)
    whole, whole_plans = run(events, bounded=False)
    assert [p.ops for p in bounded_plans] == [p.ops for p in whole_plans]
    assert [p.outcome for p in bounded_plans] == [p.outcome for p in whole_plans]
    assert crm_view(bounded) == crm_view(whole)
    assert bounded is not None and whole is not None
    assert bounded.lifetime_value == whole.lifetime_value  # exact to the cent, however much was folded


@hsettings(max_examples=60, deadline=None)
@given(visits, delays, st.data())
def test_redelivery_and_replay_change_nothing(spec: list, delay_hours: list[int], data: st.DataObject) -> None:
    events = history(spec, delay_hours)
    final, plans = run(events)
    # A crash: the events from the last committed offset `j` up to `k` are delivered again, then the rest.
    k = data.draw(st.integers(min_value=0, max_value=len(events)))
    j = data.draw(st.integers(min_value=0, max_value=k))
    head, _ = run(events[:k])
    again, replans = run(events[j:], head)
    assert again == final
    assert all(not p.ops for p in replans[:k - j])
    assert [p.ops for p in replans[k - j:]] == [p.ops for p in plans[k:]]
    # A whole replay (a new consumer group over the same topic): nothing planned, nothing changed.
    replayed, replay_plans = run(events, final)
    assert replayed == final
    assert all(not p.ops for p in replay_plans)


def test_a_long_history_keeps_a_bounded_state() -> None:
    spec = [(28, "paid", "partial" if i % 10 == 0 else None, 30, "HydraFacial", "199.00") for i in range(400)]
    events = history(spec, [0])
    final, _ = run(events)
    whole, _ = run(events, bounded=False)
    assert final is not None and whole is not None
    assert final.lifetime_value == whole.lifetime_value == Decimal("199.00") * 400 - Decimal("50.00") * 40
    assert len(final.appointments) <= 2 and len(final.invoices) <= 8 and len(final.applied_event_ids) <= 4
    assert len(final.to_json()) * 20 < len(whole.to_json())


def test_an_event_older_than_the_watermark_does_not_come_back() -> None:
    events = history([(28, "paid", None, 1, "HydraFacial", "199.00")] * 12, [0])
    final, _ = run(events)
    assert final is not None and final.clock is not None
    old_paid = next(ev for ev in events if ev.kind is EventKind.INVOICE_PAID)
    assert old_paid.invoice is not None and old_paid.invoice.id not in final.invoices  # folded
    assert final.clock - old_paid.occurred_at > INVOICE_HORIZON  # type: ignore[operator]
    # Redelivered under a new event id (a re-sent webhook): older than the watermark, so stale, not counted again.
    resent = old_paid.model_copy(update={"event_id": "resent", "raw_offset": 10_000})
    p = plan(resent, final, location_label=LABEL, now=final.clock)
    assert (p.outcome, p.ops, p.new_state) == (Outcome.STALE, (), final)
    # The same for an appointment pruned from the state: a late cancellation does not resurrect it.
    old_booking = events[0]
    assert old_booking.appointment is not None and old_booking.appointment.id not in final.appointments
    late = old_booking.model_copy(update={"event_id": "late", "kind": EventKind.APPOINTMENT_CANCELLED,
                                          "occurred_at": final.clock - LATE_HORIZON - timedelta(seconds=1)})
    p = plan(late, final, location_label=LABEL, now=final.clock)
    assert (p.outcome, p.ops, p.new_state) == (Outcome.STALE, (), final)


def test_a_refund_of_a_recent_invoice_counts_but_not_of_a_folded_one() -> None:
    events = history([(28, "paid", None, 1, "HydraFacial", "199.00")] * 12, [0])
    final, _ = run(events)
    assert final is not None and final.clock is not None
    ltv = final.lifetime_value

    def refund(inv_id: str) -> Plan:
        inv = Invoice(id=inv_id, amount_paid=Decimal("0"))
        ev = _event(EventKind.INVOICE_REFUNDED, final.clock, invoice=inv).model_copy(  # type: ignore[arg-type]
            update={"event_id": f"refund-{inv_id}", "raw_offset": 10_000})
        return plan(ev, final, location_label=LABEL, now=final.clock)  # type: ignore[arg-type]

    assert refund("INV-11").new_state.lifetime_value == ltv - Decimal("199.00")  # a full refund, still in the ledger
    # INV-0 was folded (untouched for more than INVOICE_HORIZON): its refund is recorded but does not change the value.
    assert refund("INV-0").new_state.lifetime_value == ltv


def test_a_state_written_before_bounded_state_loads_and_keeps_its_value() -> None:
    events = history([(28, "paid", "partial", 10, "HydraFacial", "199.00")] * 3, [0])
    final, _ = run(events, bounded=False)
    assert final is not None
    old = final.model_dump(mode="json", exclude={"applied_event_at", "folded_value"})
    for record in old["invoices"].values():
        del record["last_event_at"]
    loaded = ClientState.model_validate(old)
    assert loaded.lifetime_value == final.lifetime_value
    # Invoices without a recorded last event time are never folded; appointments are pruned by their own times.
    later = loaded.model_copy(update={"clock": loaded.clock + INVOICE_HORIZON * 2})  # type: ignore[operator]
    assert compact(later).invoices == loaded.invoices and not compact(later).appointments


def _historical(events: list[NormalizedEvent], prefix: str) -> list[NormalizedEvent]:
    return [ev.model_copy(update={"event_id": f"{prefix}-{ev.event_id}", "historical": True}) for ev in events]


def test_a_backfill_after_live_events_counts_the_whole_past() -> None:
    # Two years of visits, exported and backfilled after the client's live events of this month.
    past = history([(28, "paid", "partial" if i % 5 == 0 else None, 20, "HydraFacial", "199.00")
                    for i in range(26)], [0])
    live_at = T0 + timedelta(days=28 * 27)
    live = []
    for i in range(2):
        appt = _appt(100 + i, live_at + timedelta(days=i), "Chemical Peel")
        inv = Invoice(id=f"INV-L{i}", amount_paid=Decimal("150.50"), appointment=appt, paid_at=appt.start)
        live.append(_event(EventKind.INVOICE_PAID, live_at + timedelta(days=i), invoice=inv).model_copy(
            update={"event_id": f"live-{i}", "raw_offset": 100 + i}))
    state, _ = run(live)
    assert state is not None and not state.forgotten
    backfilled, plans = run(_historical(past, "bf"), state)
    assert backfilled is not None
    assert all(p.outcome is not Outcome.STALE for p in plans)
    expected = Decimal("199.00") * 26 - Decimal("50.00") * 6 + Decimal("150.50") * 2
    assert backfilled.lifetime_value == expected
    # Running the backfill again changes nothing; the next live event compacts, and the value stays exact.
    again, replans = run(_historical(past, "bf"), backfilled)
    assert again == backfilled and all(not p.ops for p in replans)
    nxt = live[-1].model_copy(update={"event_id": "live-next", "raw_offset": 999,
                                      "occurred_at": live_at + timedelta(days=9)})
    final, _ = run([nxt], backfilled)
    assert final is not None and final.forgotten and final.lifetime_value == expected
    assert len(final.invoices) < len(backfilled.invoices)
    # Once something was forgotten, a late historical event is stale rather than possibly counted twice.
    resent, plans = run(_historical(past[:3], "bf2"), final)
    assert resent == final and all(p.outcome is Outcome.STALE for p in plans)
