"""Sync planner rules (docs/sync-rules.md): table-driven, pure, no I/O."""

from __future__ import annotations

import json
from datetime import date, datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import settings as hsettings
from hypothesis import strategies as st
from pydantic import TypeAdapter

from foundations.formats import crm_fields
from foundations.formats.crm_commands import (
    AddNote,
    AddTags,
    CrmOp,
    EnrollWorkflow,
    OpKind,
    UpsertContact,
    UpsertOpportunity,
)
from foundations.formats.normalized import (
    Address,
    Appointment,
    AppointmentStatus,
    Client,
    EventKind,
    Invoice,
    LineItem,
    Location,
    NormalizedEvent,
    Provider,
    Service,
)
from streams.normalize.rules import normalize
from streams.plan.planner import Outcome, Plan, PlanError, format_local, format_money, plan
from streams.plan.state import ClientState, mark_done, record_contact_id, record_opportunity_id

FIXTURES = Path(__file__).resolve().parents[3] / "examples" / "webhooks"
UTC = timezone.utc
PHX = Location(id="3", name="Scottsdale", timezone="America/Phoenix")  # UTC-7, no DST
NOW = datetime(2030, 1, 1, tzinfo=UTC)  # only a fallback; every event here has occurred_at
LABEL = "loc-main"
JANE = Client(id="48213", first_name="Jane", last_name="Doe", email="jane.doe@example.com", phone="+14805550134",
              date_of_birth=date(1985, 3, 14))


def t(day: int, hour: int = 12, minute: int = 0, month: int = 11) -> datetime:
    return datetime(2026, month, day, hour, minute, tzinfo=UTC)


def appt_event(eid: str, kind: EventKind, at: datetime, appt_id: str = "A1", start: datetime | None = None,
               services: tuple[tuple[str, str], ...] = (("Botox - Forehead", "Injectables"),),
               client: Client = JANE, **appt: object) -> NormalizedEvent:
    return NormalizedEvent(
        event_id=eid, kind=kind, occurred_at=at, location=PHX, client=client,
        appointment=Appointment(
            id=appt_id, start=start, provider=Provider(id="P-12", name="Dr. Maya Lee"),
            services=tuple(Service(name=n, service_type=s) for n, s in services), **appt,
        ),
    )


def booked(eid: str, at: datetime, appt_id: str = "A1", start: datetime | None = None, **kw: object) -> NormalizedEvent:
    return appt_event(eid, EventKind.APPOINTMENT_BOOKED, at, appt_id, start or t(1, 17, 30, month=12), **kw)


def invoice_event(eid: str, at: datetime, inv_id: str = "INV-1", amount: str = "1150.00",
                  kind: EventKind = EventKind.INVOICE_PAID, appt: Appointment | None = None,
                  items: tuple[LineItem, ...] = (), paid_at: datetime | None = None,
                  location: Location = PHX, client: Client = JANE) -> NormalizedEvent:
    return NormalizedEvent(
        event_id=eid, kind=kind, occurred_at=at, location=location, client=client,
        invoice=Invoice(id=inv_id, number=inv_id.removeprefix("INV-"), amount_paid=Decimal(amount), items=items,
                        appointment=appt, paid_at=paid_at),
    )


def run(events: list[NormalizedEvent], state: ClientState | None = None) -> tuple[ClientState | None, list[Plan]]:
    plans = []
    for ev in events:
        p = plan(ev, state, location_label=LABEL, now=NOW)
        plans.append(p)
        state = p.new_state
    return state, plans


def of(p: Plan, cls: type) -> list:
    return [op for op in p.ops if isinstance(op, cls)]


def contact(p: Plan) -> UpsertContact:
    (op,) = of(p, UpsertContact)
    return op


# ------------------------------------------------------------------ formatting


@pytest.mark.parametrize("amount, text", [
    ("1150", "$1,150.00"), ("1150.00", "$1,150.00"), ("96.5", "$96.50"), ("0", "$0.00"),
    ("1234567.891", "$1,234,567.89"), ("0.005", "$0.01"), ("-50", "-$50.00"),
])
def test_format_money(amount: str, text: str) -> None:
    assert format_money(Decimal(amount)) == text


def test_note_dates_are_local_to_the_location() -> None:
    from zoneinfo import ZoneInfo
    assert format_local(t(1, 17, 30, month=12), ZoneInfo("America/Phoenix")) == "Tue Dec 1, 2026 10:30 AM MST"
    assert format_local(t(1, 5, 5, month=12), ZoneInfo("America/New_York")) == "Tue Dec 1, 2026 12:05 AM EST"


# ------------------------------------------------------------------ per-kind rules (seed table)

APPT_TABLE = [
    # kind, APro Appt Status, stage
    (EventKind.APPOINTMENT_BOOKED, "Booked", crm_fields.STAGE_BOOKED),
    (EventKind.APPOINTMENT_CANCELLED, "Cancelled", crm_fields.STAGE_CANCEL_NO_SHOW),
    (EventKind.APPOINTMENT_NO_SHOW, "NoShow", crm_fields.STAGE_CANCEL_NO_SHOW),
]


@pytest.mark.parametrize("kind, status, stage", APPT_TABLE)
def test_appointment_event_fields_note_stage_workflow(kind: EventKind, status: str, stage: str) -> None:
    ev = appt_event("e1", kind, t(20), start=t(1, 17, 30, month=12),
                    services=(("Botox - Forehead", "Injectables"), ("HydraFacial Signature", "Facials")))
    p = plan(ev, None, location_label=LABEL, now=NOW)
    assert p.outcome is Outcome.APPLIED
    assert [op.kind for op in p.ops] == [OpKind.UPSERT_CONTACT, OpKind.ADD_NOTE, OpKind.UPSERT_OPPORTUNITY,
                                         OpKind.ENROLL_WORKFLOW]
    c = contact(p)
    assert c.standard.to_body() == {"firstName": "Jane", "lastName": "Doe", "email": "jane.doe@example.com",
                                    "phone": "+14805550134", "dateOfBirth": "1985-03-14"}
    expected = {
        "apro_appt_status": status,
        "apro_appt_date": "2026-12-01",
        "apro_appt_id": "A1",
        "apro_appt_services": "Botox - Forehead, HydraFacial Signature",
        "apro_appt_service_type": "Injectables, Facials",
        "apro_provider": "Dr. Maya Lee",
        "apro_location": "Scottsdale",
        "apro_client_id": "48213",
        "apro_dob": "1985-03-14",
    }
    if kind is EventKind.APPOINTMENT_BOOKED:
        expected |= {"next_visit_date": "2026-12-01", "next_visit_service": "Botox - Forehead, HydraFacial Signature"}
    else:  # nothing else booked: the next visit is cleared
        expected |= {"next_visit_date": "", "next_visit_service": ""}
    assert c.custom == expected
    (note,) = of(p, AddNote)
    assert f"Status: {status}" in note.body
    assert "Date: Tue Dec 1, 2026 10:30 AM MST" in note.body
    assert "Services: Botox - Forehead, HydraFacial Signature" in note.body
    assert "Location: Scottsdale" in note.body
    assert note.body.endswith("\napro-event: e1") and note.marker == "apro-event: e1"
    (opp,) = of(p, UpsertOpportunity)
    assert (opp.pipeline, opp.stage, opp.status, opp.monetary_value, opp.name) == (
        crm_fields.PIPELINE_NAME, stage, "open", None, "Jane Doe")
    assert [w.workflow for w in of(p, EnrollWorkflow)] == [crm_fields.WORKFLOW_APPOINTMENTS_UPDATE]


def test_op_ids_are_stable_unique_and_carry_routing() -> None:
    ev = invoice_event("ev-9", t(3, 22, month=12))
    p1 = plan(ev, None, location_label=LABEL, now=NOW)
    p2 = plan(ev, None, location_label=LABEL, now=NOW + timedelta(days=3))
    assert [op.op_id for op in p1.ops] == [op.op_id for op in p2.ops]
    assert [op.op_id for op in p1.ops] == [
        "ev-9:upsert_contact:0", "ev-9:add_note:0", "ev-9:upsert_opportunity:0", "ev-9:add_tags:0",
        "ev-9:enroll_workflow:0", "ev-9:enroll_workflow:1",
    ]
    assert {(op.event_id, op.client_id, op.location_label) for op in p1.ops} == {("ev-9", "48213", LABEL)}


def test_invoice_paid_fields_note_won_value_and_workflows() -> None:
    appt = Appointment(id="A1", start=t(3, 21, month=12), services=(Service(name="Botox - Forehead"),))
    items = (LineItem(name="Botox - Forehead (20 units)", type="Service", amount=Decimal("300.00")),
             LineItem(name="Morpheus8 Face", type="Service", amount=Decimal("850.00")))
    s, _ = run([booked("b1", t(20), start=t(3, 21, month=12))])
    p = plan(invoice_event("p1", t(3, 22, 10, month=12), appt=appt, items=items, paid_at=t(3, 22, 9, month=12)),
             s, location_label=LABEL, now=NOW)
    c = contact(p)
    assert c.custom == {
        "last_visit_date": "2026-12-03", "last_visit_service": "Botox - Forehead (20 units), Morpheus8 Face",
        "invoice_paid_amount": Decimal("1150.00"), "apro_appt_status": "Completed", "apro_invoice_id": "INV-1",
        "apro_location": "Scottsdale", "apro_client_id": "48213", "apro_dob": "1985-03-14",
        "patient_lifetime_value": Decimal("1150.00"),
        # the paid visit was the next visit: it is now in the past and completed
        "next_visit_date": "", "next_visit_service": "",
    }
    (note,) = of(p, AddNote)
    for line in ("Amount: $1,150.00", "Services: Botox - Forehead (20 units), Morpheus8 Face", "Invoice number: 1",
                 "Paid: Thu Dec 3, 2026 3:09 PM MST", "Location: Scottsdale", "apro-event: p1"):
        assert line in note.body
    (opp,) = of(p, UpsertOpportunity)
    assert (opp.stage, opp.status, opp.monetary_value) == (crm_fields.STAGE_PATIENT, "won", Decimal("1150.00"))
    assert [op.tags for op in of(p, AddTags)] == [("apro-patient",)]
    assert [w.workflow for w in of(p, EnrollWorkflow)] == [
        crm_fields.WORKFLOW_INVOICE_PAID,
        crm_fields.WORKFLOW_BIRTHDAY,
    ]
    assert p.new_state.patient and p.new_state.appointments["A1"].status is AppointmentStatus.COMPLETED


def test_invoice_paid_without_prior_opportunity_creates_it_in_patient_stage() -> None:
    p = plan(invoice_event("p1", t(3)), None, location_label=LABEL, now=NOW)
    (opp,) = of(p, UpsertOpportunity)
    assert (opp.stage, opp.status, opp.monetary_value) == (crm_fields.STAGE_PATIENT, "won", Decimal("1150.00"))


def test_retail_only_invoice_last_visit_from_paid_date_in_location_zone() -> None:
    # paid 2026-12-05 22:30 in Phoenix = 2026-12-06 05:30 UTC: the local date is the 5th
    ev = invoice_event("r1", t(6, 6, month=12), inv_id="INV-20931", amount="96.5", paid_at=t(6, 5, 30, month=12),
                       items=(LineItem(name="SkinMedica TNS Advanced+ Serum", type="Retail", amount=Decimal("96.5")),
                              LineItem(name="Sunscreen SPF 50", type="Retail", amount=Decimal("0"))))
    p = plan(ev, None, location_label=LABEL, now=NOW)
    c = contact(p)
    assert c.custom["last_visit_date"] == "2026-12-05"
    assert c.custom["last_visit_service"] == "SkinMedica TNS Advanced+ Serum, Sunscreen SPF 50"
    assert c.custom["patient_lifetime_value"] == Decimal("96.50")
    assert "Amount: $96.50" in of(p, AddNote)[0].body


def test_client_upsert_is_demographic_only() -> None:
    client = JANE.model_copy(update={"address": Address(line1="7014 E Camelback Rd", city="Scottsdale", state="AZ",
                                                        postal_code="85251")})
    ev = NormalizedEvent(event_id="c1", kind=EventKind.CLIENT_UPSERTED, occurred_at=t(20), location=PHX, client=client)
    p = plan(ev, None, location_label=LABEL, now=NOW)
    assert [op.kind for op in p.ops] == [OpKind.UPSERT_CONTACT]
    c = contact(p)
    assert c.standard.to_body() == {
        "firstName": "Jane", "lastName": "Doe", "email": "jane.doe@example.com", "phone": "+14805550134",
        "address1": "7014 E Camelback Rd", "city": "Scottsdale", "state": "AZ", "postalCode": "85251",
        "dateOfBirth": "1985-03-14",
    }
    assert c.custom == {"apro_client_id": "48213", "apro_dob": "1985-03-14"}


def test_client_update_older_than_last_applied_is_stale_and_newer_wins() -> None:
    new = JANE.model_copy(update={"last_name": "Doe-Smith"})
    s, plans = run([
        NormalizedEvent(event_id="c2", kind=EventKind.CLIENT_UPSERTED, occurred_at=t(21), location=PHX, client=new),
        NormalizedEvent(event_id="c1", kind=EventKind.CLIENT_UPSERTED, occurred_at=t(20), location=PHX, client=JANE),
    ])
    assert plans[1].outcome is Outcome.STALE and plans[1].ops == () and plans[1].new_state is plans[0].new_state
    # a later appointment event without a last name keeps the newest value
    p = plan(booked("b1", t(22), client=Client(id="48213", email="jane.doe@example.com")), s,
             location_label=LABEL, now=NOW)
    assert contact(p).standard.lastName == "Doe-Smith"
    assert of(p, UpsertOpportunity)[0].name == "Jane Doe-Smith"


# ------------------------------------------------------------------ status rules


@pytest.mark.parametrize("kind, stage", [(k, s) for k, _, s in APPT_TABLE])
def test_existing_patient_keeps_won_status_across_stages(kind: EventKind, stage: str) -> None:
    s, _ = run([invoice_event("p1", t(10)), invoice_event("p2", t(11), inv_id="INV-2", amount="50.25")])
    p = plan(appt_event("a1", kind, t(20), start=t(1, month=12)), s, location_label=LABEL, now=NOW)
    (opp,) = of(p, UpsertOpportunity)
    assert (opp.stage, opp.status, opp.monetary_value) == (stage, "won", Decimal("1200.25"))


def test_lead_stays_open_until_a_paid_invoice() -> None:
    s, plans = run([booked("b1", t(20)), appt_event("c1", EventKind.APPOINTMENT_CANCELLED, t(21)),
                    booked("b2", t(22), appt_id="A2"), invoice_event("p1", t(25))])
    assert [of(p, UpsertOpportunity)[0].status for p in plans] == ["open", "open", "open", "won"]


# ------------------------------------------------------------------ next visit (beyond the seed)


def test_next_visit_is_earliest_future_booking_and_moves_on_reschedule_cancel_delete() -> None:
    dec = lambda d, h=17: t(d, h, month=12)  # noqa: E731
    s, plans = run([
        booked("b1", t(20), appt_id="A1", start=dec(10)),
        booked("b2", t(20, 13), appt_id="A2", start=dec(5), services=(("Chemical Peel", "Facials"),)),
        # reschedule the later one even later: the next visit (A2) is untouched
        appt_event("u1", EventKind.APPOINTMENT_UPDATED, t(21), "A1", dec(12), previous_start=dec(10)),
        # reschedule the next visit after the other: the next visit becomes A1
        appt_event("u2", EventKind.APPOINTMENT_UPDATED, t(22), "A2", dec(15), services=(("Chemical Peel", "Facials"),)),
        appt_event("x1", EventKind.APPOINTMENT_CANCELLED, t(23), "A1", dec(12)),
        NormalizedEvent(event_id="d1", kind=EventKind.APPOINTMENT_DELETED, occurred_at=t(24), location=PHX,
                        client=Client(id="48213"), appointment=Appointment(id="A2")),
    ])
    nv = [(contact(p).custom.get("next_visit_date"), contact(p).custom.get("next_visit_service")) for p in plans]
    assert nv == [
        ("2026-12-10", "Botox - Forehead"),
        ("2026-12-05", "Chemical Peel"),
        ("2026-12-05", "Chemical Peel"),
        ("2026-12-12", "Botox - Forehead"),
        ("2026-12-15", "Chemical Peel"),
        ("", ""),
    ]
    assert "Previous date: Thu Dec 10, 2026 10:00 AM MST" in of(plans[2], AddNote)[0].body
    # updates and deletions: note and fields, no stage move, no workflow
    for p in (plans[2], plans[3], plans[5]):
        assert not of(p, UpsertOpportunity) and not of(p, EnrollWorkflow) and len(of(p, AddNote)) == 1
    deleted_note = of(plans[5], AddNote)[0].body
    assert deleted_note.startswith("AestheticsPro appointment deleted") and "Chemical Peel" in deleted_note
    # deleting A2 leaves the APro Appt fields alone: they describe A1 (the latest activity)...
    assert (contact(plans[5]).custom["apro_appt_id"], contact(plans[5]).custom["apro_appt_status"]) == (
        "A1",
        "Cancelled",
    )
    assert s is not None and s.next_visit is None
    # ...while deleting the appointment they describe marks it Deleted
    p = plan(NormalizedEvent(event_id="d2", kind=EventKind.APPOINTMENT_DELETED, occurred_at=t(25), location=PHX,
                             client=Client(id="48213"), appointment=Appointment(id="A1")), s,
             location_label=LABEL, now=NOW)
    assert (contact(p).custom["apro_appt_id"], contact(p).custom["apro_appt_status"]) == ("A1", "Deleted")


def test_future_is_relative_to_event_time_not_wall_clock() -> None:
    ev = booked("b1", t(20), start=t(1, 17, month=12))
    for now in (datetime(2020, 1, 1, tzinfo=UTC), datetime(2031, 1, 1, tzinfo=UTC)):
        assert contact(plan(ev, None, location_label=LABEL, now=now)).custom["next_visit_date"] == "2026-12-01"
    # a booking entered after the fact (start before the event time) is not a next visit
    late = booked("b2", t(3, month=12), start=t(1, 17, month=12))
    assert contact(plan(late, None, location_label=LABEL, now=NOW)).custom["next_visit_date"] == ""


# ------------------------------------------------------------------ stale, duplicate, late


def test_stale_appointment_event_never_regresses() -> None:
    s, _ = run([booked("b1", t(20)), appt_event("x1", EventKind.APPOINTMENT_CANCELLED, t(22))])
    # the booking confirmation older than the cancellation arrives late (different event id)
    p = plan(booked("b0", t(21)), s, location_label=LABEL, now=NOW)
    assert p.outcome is Outcome.STALE and p.ops == () and p.new_state is s
    assert s.appointments["A1"].status is AppointmentStatus.CANCELLED


@pytest.mark.parametrize("event", [
    booked("b1", t(20)), invoice_event("p1", t(21)),
    NormalizedEvent(event_id="c1", kind=EventKind.CLIENT_UPSERTED, occurred_at=t(20), client=JANE),
    invoice_event("r1", t(22), kind=EventKind.INVOICE_REFUNDED, amount="10"),
])
def test_duplicate_event_id_gives_no_ops(event: NormalizedEvent) -> None:
    first = plan(event, None, location_label=LABEL, now=NOW)
    assert first.ops
    again = plan(event, first.new_state, location_label=LABEL, now=NOW)
    assert again.outcome is Outcome.DUPLICATE and again.ops == () and again.new_state is first.new_state


def test_late_event_for_an_older_appointment_reasserts_current_fields_without_moving_pipeline() -> None:
    s, _ = run([booked("b1", t(20), appt_id="A1", start=t(1, 17, month=12)),
                booked("b2", t(22), appt_id="A2", start=t(8, 17, month=12))])
    # A1's cancellation happened before A2 was booked but arrives after it
    p = plan(appt_event("x1", EventKind.APPOINTMENT_CANCELLED, t(21), "A1", t(1, 17, month=12)), s,
             location_label=LABEL, now=NOW)
    assert p.outcome is Outcome.APPLIED
    c = contact(p)
    assert (c.custom["apro_appt_id"], c.custom["apro_appt_status"]) == ("A2", "Booked")
    assert c.custom["next_visit_date"] == "2026-12-08"
    assert len(of(p, AddNote)) == 1 and not of(p, UpsertOpportunity) and not of(p, EnrollWorkflow)
    assert p.new_state.appointments["A1"].status is AppointmentStatus.CANCELLED
    assert p.new_state.stage is not None and p.new_state.stage.value == crm_fields.STAGE_BOOKED


# ------------------------------------------------------------------ the full story, replay, LTV


def story() -> list[NormalizedEvent]:
    a1 = Appointment(id="A1", start=t(3, 21, month=12), services=(Service(name="Botox - Forehead"),))
    return [
        booked("e1-book", t(20), "A1", t(1, 17, 30, month=12)),
        appt_event("e2-resched", EventKind.APPOINTMENT_UPDATED, t(21), "A1", t(3, 21, month=12),
                   previous_start=t(1, 17, 30, month=12)),
        appt_event("e3-cancel", EventKind.APPOINTMENT_CANCELLED, t(22), "A1", t(3, 21, month=12)),
        booked("e4-rebook", t(23), "A1", t(3, 21, month=12)),
        invoice_event("e5-paid", t(3, 22, month=12), "INV-10442", "1150.00", appt=a1),
        invoice_event("e6-paid-again", t(3, 22, 5, month=12), "INV-10442", "1150.00", appt=a1),
        invoice_event("e7-retail", t(6, 17, month=12), "INV-20931", "96.50", paid_at=t(6, 17, 38, month=12),
                      items=(LineItem(name="SkinMedica TNS Advanced+ Serum", type="Retail", amount=Decimal("96.5")),)),
    ]


def test_story_book_reschedule_cancel_rebook_paid_twice_retail() -> None:
    s, plans = run(story())
    assert [p.outcome for p in plans] == [Outcome.APPLIED] * 5 + [Outcome.REPEATED_INVOICE, Outcome.APPLIED]
    stages = [[o.stage for o in of(p, UpsertOpportunity)] for p in plans]
    assert stages == [
        [crm_fields.STAGE_BOOKED],
        [],
        [crm_fields.STAGE_CANCEL_NO_SHOW],
        [crm_fields.STAGE_BOOKED],
        [crm_fields.STAGE_PATIENT],
        [],
        [crm_fields.STAGE_PATIENT],
    ]
    nv = [contact(p).custom.get("next_visit_date") for p in plans[:5]]
    assert nv == ["2026-12-01", "2026-12-03", "", "2026-12-03", ""]
    assert plans[5].ops == ()  # same invoice paid again: counted once, no second note or enrollment
    assert contact(plans[6]).custom["patient_lifetime_value"] == Decimal("1246.50")
    assert contact(plans[6]).custom["last_visit_date"] == "2026-12-06"
    # a second invoice is a new paid invoice: it enrolls again
    assert [w.workflow for w in of(plans[6], EnrollWorkflow)] == [
        crm_fields.WORKFLOW_INVOICE_PAID,
        crm_fields.WORKFLOW_BIRTHDAY,
    ]
    assert s is not None and s.lifetime_value == Decimal("1246.50") and s.patient
    assert [e.event_id for e in s.effects] == ["e1-book", "e2-resched", "e3-cancel", "e4-rebook", "e5-paid",
                                               "e7-retail"]


def test_replaying_the_whole_story_against_the_final_state_gives_no_ops() -> None:
    s, _ = run(story())
    # also after a restart (JSON round trip) and with the recent-id window forgotten: records catch replays
    restored = ClientState.from_json(s.to_json())
    forgotten = restored.model_copy(update={"applied_event_ids": (), "effects": ()})
    for base in (s, restored, forgotten):
        final, plans = run(story(), base)
        assert all(p.ops == () for p in plans), [p.outcome for p in plans]
        assert final.lifetime_value == Decimal("1246.50")


def test_refund_and_void_reduce_lifetime_value_without_enrollments() -> None:
    s, plans = run([
        booked("b1", t(20)),
        invoice_event("p1", t(21), "INV-1", "1150.00"),
        invoice_event("p2", t(22), "INV-2", "200.10"),
        invoice_event("r1", t(23), "INV-1", "150.00", kind=EventKind.INVOICE_REFUNDED),
        invoice_event("r1", t(23), "INV-1", "150.00", kind=EventKind.INVOICE_REFUNDED),  # redelivered
        invoice_event("v1", t(24), "INV-2", "200.10", kind=EventKind.INVOICE_VOIDED),
        invoice_event("v2", t(24, 1), "INV-2", "200.10", kind=EventKind.INVOICE_VOIDED),  # voided again
    ])
    assert [p.outcome for p in plans][3:] == [Outcome.APPLIED, Outcome.DUPLICATE, Outcome.APPLIED,
                                              Outcome.REPEATED_INVOICE]
    for p, ltv in ((plans[3], "1200.10"), (plans[5], "1000.00")):
        assert contact(p).custom == {"apro_client_id": "48213", "patient_lifetime_value": Decimal(ltv)}
        (opp,) = of(p, UpsertOpportunity)
        assert (opp.stage, opp.status, opp.monetary_value) == (crm_fields.STAGE_PATIENT, "won", Decimal(ltv))
        assert not of(p, EnrollWorkflow) and not of(p, AddTags)
        assert f"Patient lifetime value: {format_money(Decimal(ltv))}" in of(p, AddNote)[0].body
    assert "Refund: $150.00" in of(plans[3], AddNote)[0].body
    assert s is not None and s.lifetime_value == Decimal("1000.00") and s.patient  # won stays won


def test_ltv_is_exact_decimal() -> None:
    events = [invoice_event(f"p{i}", t(1) + timedelta(minutes=i), f"INV-{i}", "0.10") for i in range(30)]
    s, _ = run(events)
    assert s is not None and s.lifetime_value == Decimal("3.00")
    assert sum(0.1 for _ in range(30)) != 3.0  # the float version would be wrong


def test_corrected_amount_for_a_counted_invoice_replaces_it_without_new_enrollment() -> None:
    s, plans = run([invoice_event("p1", t(21), amount="100.00"), invoice_event("p2", t(22), amount="120.00"),
                    invoice_event("p0", t(20), amount="90.00")])
    assert [p.outcome for p in plans] == [Outcome.APPLIED, Outcome.APPLIED, Outcome.STALE]
    assert contact(plans[1]).custom["patient_lifetime_value"] == Decimal("120.00")
    assert not of(plans[1], EnrollWorkflow)
    assert s is not None and s.lifetime_value == Decimal("120.00")


INVOICES = ["INV-A", "INV-B", "INV-C"]
# Few amounts and few distinct times: resends with the same amount and ties in event time are common.
ledger_event = st.tuples(
    st.sampled_from([EventKind.INVOICE_PAID] * 3 + [EventKind.INVOICE_REFUNDED, EventKind.INVOICE_VOIDED]),
    st.sampled_from(INVOICES), st.sampled_from([0, 5_000, 10_000, 12_345]), st.integers(0, 3),
)
# Fixed seeds: the same examples on every run (CI included), no example database to make a run depend on the last.
PROPERTY = hsettings(max_examples=300, deadline=None, derandomize=True, database=None)


def with_offset(ev: NormalizedEvent, offset: int) -> NormalizedEvent:
    return ev.model_copy(update={"raw_offset": offset})


def ledger_events(spec: list[tuple[EventKind, str, int, int]]) -> list[NormalizedEvent]:
    """One event per spec entry; its raw offset is its index (the order Kafka received them in)."""
    return [with_offset(invoice_event(f"ev{i}", t(1) + timedelta(minutes=minute), inv, str(Decimal(cents) / 100),
                                      kind=kind), i)
            for i, (kind, inv, cents, minute) in enumerate(spec)]


def expected_ltv(spec: list[tuple[EventKind, str, int, int]]) -> Decimal:
    """Independent oracle: per invoice, the amount of the latest paid event (by time, then raw offset) minus the
    distinct refunds (an amount of 0 refunds everything), floored at 0; 0 when voided."""
    total = Decimal("0")
    for inv in INVOICES:
        mine = [(i, s) for i, s in enumerate(spec) if s[1] == inv]
        if any(s[0] is EventKind.INVOICE_VOIDED for _, s in mine):
            continue
        paid = [(s[3], i, Decimal(s[2]) / 100) for i, s in mine if s[0] is EventKind.INVOICE_PAID]
        paid_amount = max(paid)[2] if paid else Decimal("0")
        refunded = sum(((Decimal(s[2]) / 100) or paid_amount for _, s in mine if s[0] is EventKind.INVOICE_REFUNDED),
                       Decimal("0"))
        total += max(paid_amount - refunded, Decimal("0"))
    return total


def outcome_view(s: ClientState | None) -> dict:
    """Everything the CRM is written from, without the per-event bookkeeping (ledger of effects, recent ids)."""
    assert s is not None
    return {"invoices": s.invoices, "appointments": s.appointments, "contact": s.contact, "custom": s.custom,
            "stage": s.stage, "patient": s.patient, "next_visit": s.next_visit, "clock": s.clock,
            "ltv": s.lifetime_value}


def deliveries(events: list[NormalizedEvent], data: st.DataObject) -> list[NormalizedEvent]:
    """Each event delivered 1-3 times, in any order."""
    copies = data.draw(st.lists(st.integers(1, 3), min_size=len(events), max_size=len(events)), label="copies")
    return data.draw(st.permutations([ev for ev, n in zip(events, copies) for _ in range(n)]), label="order")


def assert_effects_once(plans: list[Plan]) -> None:
    ids = [p.ops[0].event_id for p in plans if p.ops and p.outcome is Outcome.APPLIED]
    assert len(ids) == len(set(ids))


@PROPERTY
@given(spec=st.lists(ledger_event, min_size=1, max_size=7), data=st.data())
def test_any_permutation_of_duplicates_yields_the_same_lifetime_value(spec: list, data: st.DataObject) -> None:
    events = ledger_events(spec)
    reference, _ = run(events)  # the order Kafka received them in
    assert reference is not None and reference.lifetime_value == expected_ltv(spec)
    for _ in range(2):
        final, plans = run(deliveries(events, data))
        assert final is not None and final.lifetime_value == expected_ltv(spec)
        # The whole ledger (latest paid event, refunds, latest void) and every field the CRM is written from
        # are a function of the set of events, not of their arrival order.
        assert outcome_view(final) == outcome_view(reference)
        assert_effects_once(plans)


# The example, found by the property test: A 10:00 $100, C 10:10 $100 (a resend), B 10:05 $50 (late).
A_100 = with_offset(invoice_event("A", t(1, 10), amount="100.00"), 0)
C_100 = with_offset(invoice_event("C", t(1, 10, 10), amount="100.00"), 1)
B_50 = with_offset(invoice_event("B", t(1, 10, 5), amount="50.00"), 2)


@pytest.mark.parametrize("order", [[A_100, B_50, C_100], [A_100, C_100, B_50], [C_100, A_100, B_50],
                                   [B_50, A_100, C_100], [B_50, C_100, A_100], [C_100, B_50, A_100]],
                         ids=lambda o: "".join(e.event_id for e in o))
def test_regression_resend_after_a_late_different_amount(order: list[NormalizedEvent]) -> None:
    s, plans = run(order)
    assert s is not None and s.lifetime_value == Decimal("100.00")
    rec = s.invoices["INV-1"]
    assert (rec.paid_amount, rec.paid_event_id, rec.paid_event_at) == (Decimal("100.00"), "C", t(1, 10, 10))
    assert s.custom[crm_fields.INVOICE_PAID_AMOUNT.key].value == "100.00"
    # one note and one set of enrollments for the invoice, whichever paid event came first
    assert sum(len(of(p, EnrollWorkflow)) for p in plans) == 2 and sum(len(of(p, AddTags)) for p in plans) == 1


def test_regression_resend_after_a_void_and_voids_in_any_order() -> None:
    paid = with_offset(invoice_event("p", t(2), amount="80.00"), 0)
    void1 = with_offset(invoice_event("v1", t(3), amount="80.00", kind=EventKind.INVOICE_VOIDED), 1)
    void2 = with_offset(invoice_event("v2", t(4), amount="80.00", kind=EventKind.INVOICE_VOIDED), 2)
    views = []
    for order in ([paid, void1, void2], [void2, void1, paid], [void1, paid, void2]):
        s, _ = run(order)
        assert s is not None and s.lifetime_value == Decimal("0.00") and s.patient  # the visit happened
        assert s.invoices["INV-1"].void_event_id == "v2"
        views.append(outcome_view(s))
    assert views[0] == views[1] == views[2]


# ------------------------------------------------------------------ ties follow arrival (raw offset)

TIE_KINDS = [EventKind.APPOINTMENT_BOOKED, EventKind.APPOINTMENT_CANCELLED, EventKind.APPOINTMENT_NO_SHOW,
             EventKind.APPOINTMENT_UPDATED, EventKind.APPOINTMENT_DELETED, EventKind.INVOICE_PAID]
tie_event = st.tuples(st.sampled_from(TIE_KINDS), st.sampled_from(["A1", "A2"]), st.integers(0, 1),
                      st.integers(2, 9))


def tie_events(spec: list[tuple[EventKind, str, int, int]], ids: list[int]) -> list[NormalizedEvent]:
    """Events within the same second or one apart (AestheticsPro's resolution); event ids in an order unrelated
    to the offsets, so only the offsets can tell ties apart. Every event carries its appointment's full data."""
    out = []
    for i, (kind, appt_id, second, day) in enumerate(spec):
        at, start, eid = t(20) + timedelta(seconds=second), t(day, 17, month=12), f"id{ids[i]:02d}"
        if kind is EventKind.INVOICE_PAID:
            ev = invoice_event(eid, at, inv_id=f"INV-{appt_id}", amount="100.00",
                               appt=Appointment(id=appt_id, start=start, services=(Service(name="Peel"),)))
        else:
            ev = appt_event(eid, kind, at, appt_id, start, status=AppointmentStatus.BOOKED
                            if kind is EventKind.APPOINTMENT_UPDATED else None)
        out.append(with_offset(ev, i))
    return out


def assert_one_decision(ev: NormalizedEvent, p: Plan) -> None:
    """No event is partly applied: fields, stage, opportunity and enrollment all follow it, or none does."""
    if p.outcome is not Outcome.APPLIED or ev.kind not in (
            EventKind.APPOINTMENT_BOOKED, EventKind.APPOINTMENT_CANCELLED, EventKind.APPOINTMENT_NO_SHOW):
        return
    st_ = p.new_state
    status = st_.custom[crm_fields.APRO_APPT_STATUS.key]
    decided = [status.event_id == ev.event_id, st_.stage is not None and st_.stage.event_id == ev.event_id,
               bool(of(p, UpsertOpportunity)), bool(of(p, EnrollWorkflow))]
    assert len(set(decided)) == 1, (ev.event_id, decided)
    assert contact(p).custom[crm_fields.APRO_APPT_STATUS.key] == status.value and len(of(p, AddNote)) == 1


def anonymous(view: dict, events: list[NormalizedEvent]) -> str:
    """The outcome with every event id replaced by the event's raw offset (to compare runs with other ids)."""
    text = json.dumps({k: v.model_dump(mode="json") if hasattr(v, "model_dump") else
                       {kk: vv.model_dump(mode="json") for kk, vv in v.items()} if isinstance(v, dict) else str(v)
                       for k, v in view.items()}, sort_keys=True)
    for ev in events:
        text = text.replace(f'"{ev.event_id}"', f'"#{ev.raw_offset}"')
    return text


def redelivered(events: list[NormalizedEvent], data: st.DataObject) -> list[NormalizedEvent]:
    """Kafka order (offsets) with redeliveries: each event again 0-2 times, anywhere after its first delivery."""
    out = list(events)
    for ev in events:
        for _ in range(data.draw(st.integers(0, 2), label="redeliveries")):
            first = out.index(ev)
            out.insert(data.draw(st.integers(first + 1, len(out)), label="at"), ev)
    return out


@PROPERTY
@given(spec=st.lists(tie_event, min_size=1, max_size=7), data=st.data())
def test_ties_follow_arrival_whatever_the_event_ids(spec: list, data: st.DataObject) -> None:
    """Equal event times are ordered by raw offset only: the same arrivals with other event ids (which sort
    differently) give the same outcome, redeliveries change nothing, and no plan is ever partly applied, even
    when a replay delivers the events in any order."""
    n = len(spec)
    events = tie_events(spec, data.draw(st.permutations(list(range(n))), label="ids"))
    reference, plans = run(events)
    for ev, p in zip(events, plans):
        assert_one_decision(ev, p)
    relabelled = tie_events(spec, data.draw(st.permutations(list(range(n))), label="other ids"))
    again, _ = run(relabelled)
    assert anonymous(outcome_view(again), relabelled) == anonymous(outcome_view(reference), events)
    final, plans = run(redelivered(events, data))
    assert outcome_view(final) == outcome_view(reference)
    assert_effects_once(plans)
    scrambled = deliveries(events, data)
    final, plans = run(scrambled)
    for ev, p in zip(scrambled, plans):
        assert_one_decision(ev, p)
    assert_effects_once(plans)


@pytest.mark.parametrize("cancel_id", ["a-cancel", "z-cancel"])  # sorts before / after the booking's id
def test_regression_booking_and_cancellation_in_the_same_second(cancel_id: str) -> None:
    same = t(20, 15, 30)
    book = with_offset(booked("m-book", same), 10)
    cancel = with_offset(appt_event(cancel_id, EventKind.APPOINTMENT_CANCELLED, same, start=t(1, 17, 30, month=12)), 11)
    s, (_, p) = run([book, cancel])
    assert p.outcome is Outcome.APPLIED
    c = contact(p)
    assert c.custom["apro_appt_status"] == "Cancelled"
    assert (c.custom["next_visit_date"], c.custom["next_visit_service"]) == ("", "")
    (opp,) = of(p, UpsertOpportunity)
    assert opp.stage == crm_fields.STAGE_CANCEL_NO_SHOW
    assert [w.workflow for w in of(p, EnrollWorkflow)] == [crm_fields.WORKFLOW_APPOINTMENTS_UPDATE]
    assert "Status: Cancelled" in of(p, AddNote)[0].body
    assert s is not None and s.stage is not None and s.stage.value == crm_fields.STAGE_CANCEL_NO_SHOW
    assert s.appointments["A1"].status is AppointmentStatus.CANCELLED
    # Redelivered in the other order (a replay): the booking is older by offset, hence stale, not half-applied.
    s2, (_, p2) = run([cancel, book])
    assert p2.outcome is Outcome.STALE and p2.ops == () and outcome_view(s2) == outcome_view(s)


def test_events_without_an_offset_stay_readable_and_order_before_offsets() -> None:
    legacy = NormalizedEvent.model_validate_json(booked("old", t(20)).model_dump_json(exclude={"raw_offset"}))
    assert legacy.raw_offset is None
    state = ClientState.model_validate_json(run([legacy])[0].to_json())  # type: ignore[union-attr]
    cancel = with_offset(
        appt_event("0-cancel", EventKind.APPOINTMENT_CANCELLED, t(20), start=t(1, 17, 30, month=12)), 0
    )
    p = plan(cancel, state, location_label=LABEL, now=NOW)
    assert p.outcome is Outcome.APPLIED and of(p, EnrollWorkflow)


# ------------------------------------------------------------------ effects ledger and op model


def test_effects_ledger_tracks_completion_and_survives_restart() -> None:
    s, plans = run([booked("b1", t(20)), invoice_event("p1", t(21))])
    assert s is not None
    pending = s.pending_ops()
    assert [op.op_id for op in pending] == [op.op_id for p in plans for op in p.ops]
    s = record_contact_id(s, LABEL, "ghl-contact-1")
    s = mark_done(s, pending[0].op_id)
    s = mark_done(s, pending[0].op_id)  # marking twice is harmless
    restored = ClientState.from_json(s.to_json())
    assert restored == s and restored.crm[LABEL].contact_id == "ghl-contact-1"
    assert [op.op_id for op in restored.pending_ops()] == [op.op_id for op in pending[1:]]
    for op in pending[1:4]:
        restored = mark_done(restored, op.op_id)
    assert [e.event_id for e in restored.effects] == ["p1"]  # b1 fully done: dropped
    restored = record_opportunity_id(restored, LABEL, "ghl-opp-1")
    assert restored.crm[LABEL].opportunity_id == "ghl-opp-1" and restored.crm[LABEL].contact_id == "ghl-contact-1"
    # the event stays known after its entry is gone: redelivery plans nothing
    assert plan(booked("b1", t(20)), restored, location_label=LABEL, now=NOW).ops == ()


def test_ops_round_trip_through_json_with_decimal_money() -> None:
    _, plans = run([invoice_event("p1", t(21), amount="1150.10")])
    adapter = TypeAdapter(tuple[CrmOp, ...])
    back = adapter.validate_json(adapter.dump_json(plans[0].ops))
    assert back == plans[0].ops
    assert isinstance(back[0].custom["patient_lifetime_value"], Decimal)  # type: ignore[union-attr]


@pytest.mark.parametrize("custom, ok", [
    ({"patient_lifetime_value": Decimal("1.10")}, True),
    ({"patient_lifetime_value": "1.10"}, True),
    ({"patient_lifetime_value": 1.1}, False),  # float money rejected
    ({"apro_appt_date": "2026-12-01"}, True),
    ({"no_such_field": "x"}, False),
])
def test_upsert_contact_custom_values_are_typed_by_catalog(custom: dict, ok: bool) -> None:
    make = lambda: UpsertContact(op_id="e:upsert_contact:0", event_id="e", client_id="1", location_label=LABEL,  # noqa: E731
                                 custom=custom)
    if ok:
        assert all(isinstance(v, Decimal) == (k == "patient_lifetime_value") for k, v in make().custom.items())
    else:
        with pytest.raises(ValueError):
            make()


def test_phi_stays_out_of_op_reprs() -> None:
    _, plans = run([booked("b1", t(20))])
    note, opp = of(plans[0], AddNote)[0], of(plans[0], UpsertOpportunity)[0]
    assert "Jane" in opp.name and "Dr. Maya Lee" in note.body
    assert "Jane" not in repr(opp) and "Maya" not in repr(note)


def test_no_contact_identity_means_state_only() -> None:
    ev = NormalizedEvent(event_id="d1", kind=EventKind.APPOINTMENT_DELETED, occurred_at=t(24), location=PHX,
                         client=Client(id="777"), appointment=Appointment(id="A9"))
    p = plan(ev, None, location_label=LABEL, now=NOW)
    assert p.outcome is Outcome.NO_CONTACT and p.ops == () and "A9" in p.new_state.appointments
    # with a known contact id the deletion can be written to the CRM
    s = record_contact_id(ClientState(client_id="777"), LABEL, "ghl-1")
    assert plan(ev, s, location_label=LABEL, now=NOW).outcome is Outcome.APPLIED


def test_plan_errors() -> None:
    with pytest.raises(PlanError):
        plan(booked("b1", t(20)), ClientState(client_id="other"), location_label=LABEL, now=NOW)
    no_block = NormalizedEvent(event_id="x", kind=EventKind.APPOINTMENT_BOOKED, occurred_at=t(20), client=JANE)
    with pytest.raises(PlanError):
        plan(no_block, None, location_label=LABEL, now=NOW)


# ------------------------------------------------------------------ the webhook fixtures, end to end


def normalized(name: str) -> NormalizedEvent:
    ev = normalize((FIXTURES / f"{name}.json").read_bytes())
    assert isinstance(ev, NormalizedEvent), ev
    return ev


def test_fixture_webhooks_plan_as_the_seed_describes() -> None:
    s, plans = run([normalized(n) for n in ("client_created", "client_updated", "appointment_created",
                                             "appointment_updated", "invoice_paid")])
    created, updated, booking, resched, paid = plans
    assert [op.kind for op in created.ops] == [OpKind.UPSERT_CONTACT]
    assert contact(updated).standard.lastName == "Doe-Smith" and contact(updated).standard.city == "Mesa"
    assert contact(booking).custom["next_visit_date"] == "2026-12-01"
    assert "Date: Tue Dec 1, 2026 10:30 AM MST" in of(booking, AddNote)[0].body
    assert contact(resched).custom["next_visit_date"] == "2026-12-03"
    assert contact(paid).custom["patient_lifetime_value"] == Decimal("1150.00")
    assert "Amount: $1,150.00" in of(paid, AddNote)[0].body and "Invoice number: 10442" in of(paid, AddNote)[0].body
    # the fixture cancellation (occurred before the reschedule of the same appointment) is stale
    assert plan(normalized("appointment_cancelled"), s, location_label=LABEL, now=NOW).outcome is Outcome.STALE
    retail = plan(normalized("invoice_paid_retail_only"), None, location_label=LABEL, now=NOW,
                  default_timezone="America/Phoenix")
    assert contact(retail).custom["last_visit_date"] == "2026-12-05"
    assert contact(retail).custom["last_visit_service"] == "SkinMedica TNS Advanced+ Serum"
    noshow = plan(normalized("appointment_noshow"), None, location_label=LABEL, now=NOW)
    assert contact(noshow).custom["apro_appt_status"] == "NoShow" and contact(noshow).standard.email is None


# ---------------------------------------------------------------- dead-lettered events: park and resume


def test_dead_lettered_event_is_parked_and_a_redrive_resumes_only_the_ops_not_done() -> None:
    from streams.plan.state import park_failed

    state, (p1,) = run([booked("b1", t(20))])
    assert state is not None
    contact_op = contact(p1)
    state = mark_done(state, contact_op.op_id)
    state = park_failed(state, "b1")  # e.g. a 422 on the opportunity: dead-lettered
    assert state.effects == () and [e.event_id for e in state.failed] == ["b1"]
    # A later event of the client runs unblocked, and changes the next visit and the appointment fields.
    state, (p2,) = run([booked("b2", t(21), appt_id="A2", start=t(28, 16))], state)
    assert state is not None and [e.event_id for e in state.effects] == ["b2"]
    for op in p2.ops:
        state = mark_done(state, op.op_id)
    # Not a redrive (a plain redelivery): nothing.
    again = plan(booked("b1", t(20)), state, location_label=LABEL, now=NOW)
    assert again.outcome is Outcome.DUPLICATE and again.ops == ()
    # The redrive: exactly b1's remaining ops (no contact upsert: done), parked entry back in the ledger.
    redriven = plan(booked("b1", t(20)), state, location_label=LABEL, now=NOW, resume_failed=True)
    assert redriven.outcome is Outcome.RESUMED
    assert [op.op_id for op in redriven.ops] == [op.op_id for op in p1.ops if op.op_id != contact_op.op_id]
    assert redriven.new_state.failed == ()
    assert [e.event_id for e in redriven.new_state.effects] == ["b1"]
    # Refreshed from the current state: the opportunity follows the latest stage register (b2), not b1's copy.
    (opp,) = of(redriven, UpsertOpportunity)
    assert opp.stage == redriven.new_state.stage.value  # type: ignore[union-attr]
    # Once resumed, a second redrive finds nothing parked.
    once_more = plan(booked("b1", t(20)), redriven.new_state, location_label=LABEL, now=NOW, resume_failed=True)
    assert once_more.outcome is Outcome.DUPLICATE and once_more.ops == ()


def test_resumed_contact_op_carries_current_values_not_the_parked_ones() -> None:
    from streams.plan.state import park_failed

    state, (p1,) = run([invoice_event("i1", t(20), amount="100.00")])
    assert state is not None
    state = park_failed(state, "i1")  # the contact upsert itself failed
    state, _ = run([invoice_event("i2", t(21), inv_id="INV-2", amount="50.00")], state)
    assert state is not None
    state = ClientState.model_validate_json(state.to_json())  # survives the changelog round trip
    redriven = plan(invoice_event("i1", t(20), amount="100.00"), state, location_label=LABEL, now=NOW,
                    resume_failed=True)
    assert redriven.outcome is Outcome.RESUMED
    assert contact(p1).custom[crm_fields.PATIENT_LIFETIME_VALUE.key] == Decimal("100.00")
    assert contact(redriven).custom[crm_fields.PATIENT_LIFETIME_VALUE.key] == Decimal("150.00")
    assert contact(redriven).custom[crm_fields.APRO_INVOICE_ID.key] == "INV-2"  # the newer invoice's register
    assert contact(redriven).op_id == contact(p1).op_id
    (opp,) = of(redriven, UpsertOpportunity)
    assert opp.monetary_value == Decimal("150.00") and opp.status == "won"
    assert len(of(redriven, AddNote)) == 1 and len(of(redriven, EnrollWorkflow)) == 2


def test_parking_keeps_a_bounded_history() -> None:
    from streams.plan.state import MAX_FAILED, park_failed

    state: ClientState | None = None
    for i in range(MAX_FAILED + 3):
        state, _ = run([booked(f"b{i}", t(1) + timedelta(hours=i), appt_id=f"A{i}")], state)
        assert state is not None
        state = park_failed(state, f"b{i}")
    assert state is not None and len(state.failed) == MAX_FAILED
    assert state.failed[0].event_id == "b3" and state.parked_for("b0") == ()
