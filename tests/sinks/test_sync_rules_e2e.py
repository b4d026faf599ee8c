"""The issue-14 regressions end to end (raw webhooks → broker → worker → GoHighLevel emulator), each with its
exact CRM end state: lifetime value independent of arrival order, same-second events, a shared phone."""

from __future__ import annotations

import json
from decimal import Decimal
from typing import Any
from urllib.parse import unquote_plus

import pytest

from foundations.formats import headers as header_names
from tests.sinks.test_e2e import (  # noqa: F401 - `stack` is the fixture
    Stack,
    contact_by_email,
    enrollments_of,
    fields,
    notes_of,
    opportunities_of,
    read_topic,
    stack,
    stage_name,
    with_id,
)

pytestmark = [pytest.mark.integration, pytest.mark.broker_neutral]


def markers(state: dict[str, Any], contact: dict[str, Any], prefix: str = "apro-event: ") -> list[str]:
    return sorted(line.removeprefix(prefix) for n in notes_of(state, contact) for line in n.splitlines()
                  if line.startswith(prefix))


def test_lifetime_value_does_not_depend_on_arrival_order(stack: Stack, fixture_bodies: dict[str, bytes]) -> None:
    """Invoice paid A 10:00 $100, its resend C 10:10 $100, and B 10:05 $50 delivered late: A, C, B gave 50.00."""
    paid = fixture_bodies["invoice_paid"]
    stack.send([
        with_id(paid, "ltv-A", occurredAt="2026-12-03T10:00:00Z", invoice__amountPaid="100.00"),
        with_id(paid, "ltv-C", occurredAt="2026-12-03T10:10:00Z", invoice__amountPaid="100.00"),
        with_id(paid, "ltv-B", occurredAt="2026-12-03T10:05:00Z", invoice__amountPaid="50.00"),
        with_id(fixture_bodies["appointment_cancelled"], "ltv-sentinel", occurredAt="2026-12-02T10:00:00Z",
                appointment__appointmentId="A-OTHER"),  # a later record of the client: the three are behind it
    ])
    stack.wait_for(lambda s: any("apro-event: ltv-sentinel" in n["body"] for n in s["notes"]))
    state = stack.settle()
    jane = contact_by_email(state, "jane.doe@example.com")
    assert jane is not None and len(state["contacts"]) == 1
    f = fields(jane)
    assert Decimal(f["patient_lifetime_value"]) == Decimal("100.00")
    assert Decimal(f["invoice_paid_amount"]) == Decimal("100.00") and f["apro_invoice_id"] == "INV-10442"
    assert f["apro_appt_status"] == "Completed" and f["last_visit_date"] == "2026-12-03"
    assert markers(state, jane) == ["ltv-A", "ltv-sentinel"]  # one note for the invoice: no resend, no stale
    (paid_note,) = [n for n in notes_of(state, jane) if "apro-event: ltv-A" in n]
    assert "Amount: $100.00" in paid_note and "Patient lifetime value: $100.00" in paid_note
    [opp] = opportunities_of(state, jane)
    assert (stage_name(state, opp), opp["status"], Decimal(str(opp["monetaryValue"]))) == (
        "Patient", "won", Decimal("100.00"))  # the older cancellation does not move it back
    assert enrollments_of(state, jane) == {"APro Invoice Paid": 1, "APro Birthday": 1}
    assert jane["tags"] == ["apro-patient"]


def test_a_booking_and_its_cancellation_in_the_same_second_follow_arrival(
        stack: Stack, fixture_bodies: dict[str, bytes]) -> None:
    """Same occurredAt, the cancellation's event id sorting first: it used to be half-applied."""
    same = "2026-11-22T18:30:00Z"
    stack.send([
        with_id(fixture_bodies["appointment_created"], "tie-b-book", occurredAt=same),
        with_id(fixture_bodies["appointment_cancelled"], "tie-a-cancel", occurredAt=same),
    ])
    stack.wait_for(lambda s: any("apro-event: tie-a-cancel" in n["body"] for n in s["notes"]))
    state = stack.settle()
    jane = contact_by_email(state, "jane.doe@example.com")
    assert jane is not None and len(state["contacts"]) == 1
    f = fields(jane)
    assert (f["apro_appt_status"], f["apro_appt_id"], f["apro_appt_date"]) == ("Cancelled", "A-77120", "2026-12-01")
    assert (f["next_visit_date"], f["next_visit_service"]) == ("", "")
    assert markers(state, jane) == ["tie-a-cancel", "tie-b-book"]
    (cancel_note,) = [n for n in notes_of(state, jane) if "apro-event: tie-a-cancel" in n]
    assert "Status: Cancelled" in cancel_note and "Reason: Client request" in cancel_note
    [opp] = opportunities_of(state, jane)
    assert (stage_name(state, opp), opp["status"]) == ("Cancel/No-Show", "open")
    assert enrollments_of(state, jane) == {"APro Appointments Update": 2}


def patient(body: bytes, event_id: str, client_id: str, first: str, email: str, **changes: Any) -> bytes:
    data = json.loads(with_id(body, event_id, **changes))
    data["client"].update({"clientId": client_id, "firstName": first, "lastName": "Rivera", "email": email,
                           "mobilePhone": "(480) 555-0177", "dateOfBirth": "01/02/1990"})
    return json.dumps(data).encode()


def test_two_patients_sharing_a_phone_never_become_one_contact(stack: Stack, fixture_bodies: dict[str, bytes]) -> None:
    """Clients 74005 and 740005 share a phone; the location does not allow duplicate contacts (GoHighLevel's
    default). One contact's lifetime value used to go 150 → 10 → 160."""
    book, paid = fixture_bodies["appointment_created"], fixture_bodies["invoice_paid"]
    first = dict(client_id="74005", first="Ana", email="ana@example.com")
    second = dict(client_id="740005", first="Leo", email="leo@example.com")
    stack.send([patient(book, "id-1-book", **first),
                patient(paid, "id-1-paid", **first, invoice__amountPaid="150.00")])
    stack.wait_for(lambda s: any("apro-event: id-1-paid" in n["body"] for n in s["notes"]))
    stack.send([patient(book, "id-2-book", **second, appointment__appointmentId="A-88000"),
                patient(paid, "id-2-paid", **second, invoice__invoiceId="INV-88000", invoice__amountPaid="10.00")])
    dead = read_topic(stack.settings, stack.settings.topics.deadletter, lambda r: len(r) >= 2)
    stack.send([patient(paid, "id-1-paid-2", **first, occurredAt="2026-12-04T22:10:00Z",
                        invoice__invoiceId="INV-10443", invoice__amountPaid="10.00")])
    stack.wait_for(lambda s: any("apro-event: id-1-paid-2" in n["body"] for n in s["notes"]))
    state = stack.settle()

    assert len(state["contacts"]) == 1
    ana = state["contacts"][0]
    assert (ana["firstName"], ana["lastName"], ana["email"], ana["phone"], ana["dateOfBirth"]) == (
        "Ana", "Rivera", "ana@example.com", "+14805550177", "1990-01-02")
    f = fields(ana)
    assert f["apro_client_id"] == "74005" and Decimal(f["patient_lifetime_value"]) == Decimal("160.00")
    assert f["apro_invoice_id"] == "INV-10443"
    assert markers(state, ana) == ["id-1-book", "id-1-paid", "id-1-paid-2"]
    assert markers(state, ana, "apro-conflict: ") == ["740005"]  # staff told once, ids only
    (conflict,) = [n for n in notes_of(state, ana) if "apro-conflict: " in n]
    assert "AestheticsPro client 740005 has the same phone" in conflict
    assert "Leo" not in conflict and "leo@example.com" not in conflict and "555" not in conflict
    [opp] = opportunities_of(state, ana)
    assert (stage_name(state, opp), opp["status"], Decimal(str(opp["monetaryValue"]))) == (
        "Patient", "won", Decimal("160.00"))
    assert enrollments_of(state, ana) == {"APro Appointments Update": 1, "APro Invoice Paid": 2, "APro Birthday": 2}
    # The second patient's events are recorded as conflicts: dead letters with the reason (ids only).
    assert sorted(json.loads(v)["event_id"] for _, v, _ in dead) == ["id-2-book", "id-2-paid"]
    for key, _, headers in dead:
        assert key == b"740005" and headers[header_names.DLQ_STAGE] == "sync"
        assert headers[header_names.REASON] == (f"identity conflict: phone matches GoHighLevel contact {ana['id']} of "
                                     "AestheticsPro client 74005; location does not allow duplicate contacts")
    # The identity check searched by body: no request the sink made carried an email or a phone in its URL.
    requests = stack.emulator.requests()
    assert any(r["path"] == "/contacts/search" for r in requests)
    leaks = [
        r["target"]
        for r in requests
        if any(v in unquote_plus(r["target"]).lower() for v in ("ana@example.com", "leo@example.com", "4805550177"))
    ]
    assert leaks == []
