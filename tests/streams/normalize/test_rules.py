"""Individual normalization rules: kinds, skips, unreadable reasons, money, dates, contact info."""

from __future__ import annotations

import json
from datetime import date, datetime, timezone
from decimal import Decimal

import pytest

from foundations.formats.normalized import (
    AppointmentStatus,
    EventKind,
    NormalizedEvent,
    Skipped,
    SkipReason,
    Unreadable,
)
from streams.normalize.rules import normalize
from streams.normalize.values import FieldError, parse_calendar_date, parse_instant, parse_money, parse_phone, zone

PHX = zone("America/Phoenix")
CLIENT = {"clientId": "48213", "email": "a@example.com"}


def run(body: dict | bytes, **headers: str) -> NormalizedEvent | Skipped | Unreadable:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    return normalize(raw, headers)


@pytest.mark.parametrize(
    "spelling, status, kind, appt_status",
    [
        ("appointment.created", "Booked", EventKind.APPOINTMENT_BOOKED, AppointmentStatus.BOOKED),
        ("AppointmentCreated", None, EventKind.APPOINTMENT_BOOKED, AppointmentStatus.BOOKED),
        ("Appointment.Created", "Scheduled", EventKind.APPOINTMENT_BOOKED, AppointmentStatus.BOOKED),
        ("appointment_booked", "Confirmed", EventKind.APPOINTMENT_BOOKED, AppointmentStatus.BOOKED),
        ("appointment.canceled", None, EventKind.APPOINTMENT_CANCELLED, AppointmentStatus.CANCELLED),
        ("AppointmentNoShow", None, EventKind.APPOINTMENT_NO_SHOW, AppointmentStatus.NO_SHOW),
        ("appointment.no_show", None, EventKind.APPOINTMENT_NO_SHOW, AppointmentStatus.NO_SHOW),
        ("appointment.updated", "Booked", EventKind.APPOINTMENT_UPDATED, AppointmentStatus.BOOKED),
        ("appointment.rescheduled", None, EventKind.APPOINTMENT_UPDATED, AppointmentStatus.BOOKED),
        ("appointment.updated", "Canceled", EventKind.APPOINTMENT_CANCELLED, AppointmentStatus.CANCELLED),
        ("appointment.updated", "No Show", EventKind.APPOINTMENT_NO_SHOW, AppointmentStatus.NO_SHOW),
        ("appointment.deleted", None, EventKind.APPOINTMENT_DELETED, AppointmentStatus.DELETED),
    ],
)
def test_appointment_kinds(spelling: str, status: str | None, kind: EventKind, appt_status: AppointmentStatus) -> None:
    appt = {"appointmentId": 5, **({"status": status} if status else {})}
    result = run({"event": spelling, "client": CLIENT, "appointment": appt})
    assert isinstance(result, NormalizedEvent), result
    assert result.kind is kind and result.appointment.status is appt_status and result.appointment.id == "5"


def test_type_plus_action_and_resource_header() -> None:
    body = {"type": "appointment", "action": "cancelled", "client": CLIENT, "appointment": {"id": "9"}}
    assert run(body).kind is EventKind.APPOINTMENT_CANCELLED
    hinted = {"client": CLIENT, "appointment": {"id": "9", "status": "no_show"}}
    assert run(hinted, **{"apro-resource": "appointments"}).kind is EventKind.APPOINTMENT_NO_SHOW
    flat_client = {"clientId": 77, "firstName": "A", "phone": "480-555-0134"}
    result = run(flat_client, **{"apro-resource": "clients"})
    assert (
        result.kind is EventKind.CLIENT_UPSERTED and result.client.id == "77" and result.client.phone == "+14805550134"
    )


def test_invoice_refund_and_void_amounts_are_positive_and_need_no_contact() -> None:
    refund = {"event": "invoice.refunded", "clientId": "1", "invoice": {"id": "I1", "total": "$200.00",
                                                                         "refundedAmount": "-50.00"}}
    result = run(refund)
    assert result.kind is EventKind.INVOICE_REFUNDED and result.invoice.amount_paid == Decimal("50.00")
    void = {"event": "InvoiceVoided", "clientId": "1", "invoice": {"id": "I1", "totalCents": 20000}}
    result = run(void)
    assert result.kind is EventKind.INVOICE_VOIDED and result.invoice.amount_paid == Decimal("200.00")


def test_paid_invoice_prefers_amount_paid_then_total() -> None:
    base = {"event": "invoice.paid", "client": CLIENT}
    assert run(
        {**base, "invoice": {"id": 1, "total": "10", "amount_paid_cents": "950"}}
    ).invoice.amount_paid == Decimal("9.50")
    assert run({**base, "invoice": {"id": 1, "total": "1,234.56"}}).invoice.amount_paid == Decimal("1234.56")


@pytest.mark.parametrize(
    "body, reason",
    [
        (b"{not json", "body"),
        (b"[1, 2]", "body"),
        (b"", "body"),
        (json.dumps({"event": "appointment.created", "client": {"email": "a@example.com"},
                     "appointment": {"id": "1"}}).encode(), "client.id"),
        (json.dumps({"event": "appointment.created", "client": CLIENT, "appointment": {"status": "Booked"}}).encode(),
         "appointment.id"),
        (json.dumps({"event": "invoice.paid", "client": CLIENT, "invoice": {"total": "1.00"}}).encode(), "invoice.id"),
        (json.dumps({"event": "invoice.paid", "client": CLIENT, "invoice": {"id": "I"}}).encode(), "invoice.amount"),
        (json.dumps({"event": "invoice.paid", "client": CLIENT, "invoice": {"id": "I", "total": "ten"}}).encode(),
         "invoice.total"),
        (json.dumps({"event": "appointment.created", "client": CLIENT,
                     "appointment": {"id": "1", "start": "someday"}}).encode(), "appointment.start"),
    ],
)
def test_unreadable_names_the_field_never_the_value(body: bytes, reason: str) -> None:
    result = normalize(body)
    assert isinstance(result, Unreadable), result
    assert result.reason.startswith(reason), result.reason
    assert "someday" not in result.reason and "ten" not in result.reason.split(":")[-1]


@pytest.mark.parametrize("where", ["client id", "location", "first name"])
def test_lone_surrogate_escape_is_unreadable_not_a_crash(where: str) -> None:
    lone = chr(0xD800)  # json.dumps (ASCII-only) writes it as the escape `\ud800`, as a careless encoder would
    client = {"clientId": lone if where == "client id" else "5", "email": "a@example.com",
              "firstName": f"A{lone}b" if where == "first name" else "Ann"}
    raw = json.dumps({"event": "client.created", "client": client,
                      "location": {"id": lone if where == "location" else "L1"}}).encode()
    result = normalize(raw)
    assert isinstance(result, Unreadable), result
    assert "surrogate" in result.reason
    result.model_dump_json()
    # A surrogate pair is a real character (an emoji escaped by an ASCII-only encoder): readable.
    ok = normalize(b'{"event": "client.created", "client": {"clientId": "5", "email": "a@example.com", '
                   b'"firstName": "\\ud83d\\ude00"}}')
    assert isinstance(ok, NormalizedEvent) and ok.client.first_name == "\U0001F600"


def test_skips() -> None:
    assert run({"event": "webhook.test"}).reason is SkipReason.TEST_PING
    assert run({"event": "client.created", "test": "true", "client": CLIENT}).reason is SkipReason.TEST_PING
    assert run({"hello": "world"}).reason is SkipReason.TEST_PING
    assert run({"event": "appointment.checked_in", "client": CLIENT, "appointment": {"id": 1}}).reason is \
        SkipReason.UNHANDLED_KIND
    no_contact = {"event": "appointment.created", "client": {"clientId": 3, "email": "not-an-email"},
                  "appointment": {"id": 1}}
    result = run(no_contact)
    assert result.reason is SkipReason.NO_CONTACT_INFO and result.client_id == "3"
    assert "not-an-email" not in result.model_dump_json()


def test_invalid_email_is_dropped_and_counted_by_name() -> None:
    body = {"event": "client.updated", "client": {"id": 4, "email": "bad@@x", "phone": "+44 20 7946 0958"}}
    result = run(body)
    assert result.client.email is None and result.client.phone == "+442079460958"
    assert result.invalid_fields == ("client.email",)
    assert "bad@@x" not in result.model_dump_json()


def test_envelope_id_and_location_fallbacks() -> None:
    body = {"id": "evt-1", "data": {"event": "client.created", "client": CLIENT}}
    result = run(body, **{"apro-token-location": "9"})
    assert result.event_id == "evt-1" and result.location.id == "9"
    flat = {"event": "client.created", "clientId": 5, "id": 5, "email": "x@example.com"}
    assert len(run(flat).event_id) == 64  # a flat body's `id` is the client's, so the body hash is used


def test_timezone_of_location_and_default() -> None:
    appt = {"id": 1, "start": "2026-07-01 09:00:00"}
    ny = run({"event": "appointment.booked", "client": CLIENT, "appointment": appt,
              "location": {"id": 1, "timezone": "America/New_York"}})
    assert ny.appointment.start == datetime(2026, 7, 1, 13, 0, tzinfo=timezone.utc)
    default = normalize(json.dumps({"event": "appointment.booked", "client": CLIENT, "appointment": appt}).encode(),
                        default_timezone="Europe/London")
    assert default.appointment.start == datetime(2026, 7, 1, 8, 0, tzinfo=timezone.utc)


@pytest.mark.parametrize(
    "text, expected",
    [
        ("2026-12-01T10:30:00-07:00", datetime(2026, 12, 1, 17, 30, tzinfo=timezone.utc)),
        ("2026-12-01T17:30:00Z", datetime(2026, 12, 1, 17, 30, tzinfo=timezone.utc)),
        ("2026-12-01 10:30:00", datetime(2026, 12, 1, 17, 30, tzinfo=timezone.utc)),
        ("12/01/2026 10:30", datetime(2026, 12, 1, 17, 30, tzinfo=timezone.utc)),
        ("12/01/2026", datetime(2026, 12, 1, 7, 0, tzinfo=timezone.utc)),
        ("December, 01 2026 10:30:00", datetime(2026, 12, 1, 17, 30, tzinfo=timezone.utc)),
        (1796146200, datetime(2026, 12, 1, 17, 30, tzinfo=timezone.utc)),
        (1796146200000, datetime(2026, 12, 1, 17, 30, tzinfo=timezone.utc)),
        ("1796146200", datetime(2026, 12, 1, 17, 30, tzinfo=timezone.utc)),
    ],
)
def test_instants(text: object, expected: datetime) -> None:
    assert parse_instant(text, PHX) == expected


def test_dob_is_never_shifted() -> None:
    for text in ("03/14/1985", "1985-03-14", "1985-03-14T00:00:00-07:00", "1985-03-14T23:30:00+14:00",
                 "March, 14 1985 00:00:00"):
        assert parse_calendar_date(text) == date(1985, 3, 14), text


def test_money_and_phone() -> None:
    assert parse_money("$1,150.00") == Decimal("1150.00")
    assert parse_money("(12.5)") == Decimal("-12.50")
    assert parse_money(115000, cents=True) == Decimal("1150.00")
    assert parse_money(Decimal("0.105")) == Decimal("0.105")  # never rounded
    with pytest.raises(FieldError):
        parse_money("12 dollars")
    with pytest.raises(FieldError):
        parse_money("1050.5", cents=True)
    assert parse_phone("1-480-555-0134") == "+14805550134"
    assert parse_phone("555-0134") is None
