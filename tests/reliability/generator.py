"""A realistic, deterministic AestheticsPro webhook stream: many clients, several locations, every event kind.

`generate(seed, clients=..., events=...)` returns the same list for the same arguments. The stream contains:
client created/updated (JSON and form-encoded with bracket keys), appointment booked / rescheduled (a chain of
updates, each carrying the previous start) / cancelled / no-show / deleted, invoice paid (with and without an
appointment) / refunded, test pings, clients without email or phone, redeliveries (same body, same event id),
ColdFusion-style UPPERCASE payloads. Per client, events are in a plausible order (created first, appointments
before their invoice) because the producer keys by client id and the partition keeps that order.

Every patient value is synthetic and distinctive (invented syllable names, 555-01xx phones, example.* emails)
so a log scan for them cannot hit by accident: `GeneratedStream.phi_needles()` lists every raw and normalized
form (names, emails, phone raw + E.164, DOB raw + ISO, street addresses).

`expect` on each event is what the normalizer must do with it: "normalized", "skipped:<reason>" or
"duplicate" (a redelivery of an event already passed on). The crash tests compare the CRM state against
`GeneratedStream.final_state()`.
"""

from __future__ import annotations

import json
import random
import uuid
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from decimal import Decimal
from typing import Any
from urllib.parse import urlencode

LOCATIONS = (
    {"id": "3", "name": "Scottsdale", "timezone": "America/Phoenix"},
    {"id": "7", "name": "Tempe", "timezone": "America/Phoenix"},
    {"id": "11", "name": "Henderson", "timezone": "America/Los_Angeles"},
    {"id": "15", "name": "Boise", "timezone": "America/Boise"},
)
SERVICES = (
    ("S-4", "Botox - Forehead", "Injectables", Decimal("300.00")),
    ("S-9", "HydraFacial Signature", "Facials", Decimal("199.00")),
    ("S-21", "Laser Hair Removal - Underarm", "Laser", Decimal("150.00")),
    ("S-30", "Morpheus8 Face", "Skin Tightening", Decimal("850.00")),
    ("S-33", "Dermaplaning", "Facials", Decimal("95.00")),
    ("S-40", "Juvederm Lips", "Injectables", Decimal("650.00")),
)
PROVIDERS = (("P-12", "Dr. Maya Lee"), ("P-15", "Ava Chen, RN"), ("P-19", "Noor Patel, NP"))
_SYLLABLES = ("zor", "vel", "qui", "thra", "mox", "bel", "dri", "xan", "plu", "kev", "ryn", "sha", "yor", "fiz",
              "gwen", "lox", "tav", "ux", "jor", "quen")
_STREETS = ("Camelback", "Shea", "Indian School", "McDowell", "Thunderbird", "Cactus")


@dataclass
class Person:
    client_id: str
    first: str
    last: str
    email: str | None  # as sent (mixed case, padded); None = no email
    phone_raw: str | None
    phone_e164: str | None
    dob_raw: str | None
    dob_iso: str | None
    street: str | None
    location: dict[str, str]


@dataclass
class GeneratedEvent:
    seq: int
    body: bytes
    content_type: str
    client_id: str | None
    event_id: str
    kind: str  # the intended EventKind value, or "test" for pings
    expect: str  # normalized | skipped:<reason> | duplicate
    resource: str | None = None  # URL hint (clients | appointments | invoices) or None

    @property
    def request_id(self) -> str:
        return f"gen-{self.seq:06d}"


@dataclass
class GeneratedStream:
    seed: int
    people: list[Person]
    events: list[GeneratedEvent]
    # Final expected facts per client id (for the CRM-side checks of the crash tests).
    paid_total: dict[str, Decimal] = field(default_factory=dict)
    appointments: dict[str, dict[str, Any]] = field(default_factory=dict)  # appointment id → last known state

    def phi_needles(self) -> list[tuple[str, str]]:
        """(label, value) for every patient value the stream carries, in each form it may take downstream."""
        out: list[tuple[str, str]] = []
        for p in self.people:
            out += [("first name", p.first), ("last name", p.last)]
            if p.email:
                out.append(("email", p.email.strip()))
            if p.phone_raw:
                out += [("phone raw", p.phone_raw), ("phone E.164", p.phone_e164 or ""),
                        ("phone digits", (p.phone_e164 or "")[2:])]
            if p.dob_raw:
                out += [("dob raw", p.dob_raw), ("dob ISO", p.dob_iso or "")]
            if p.street:
                out.append(("street", p.street))
        return [(label, value) for label, value in out if value]

    def counts(self) -> dict[str, int]:
        tally: dict[str, int] = {}
        for e in self.events:
            tally[e.expect] = tally.get(e.expect, 0) + 1
        return tally


def _name(rng: random.Random, parts: int) -> str:
    return "".join(rng.choice(_SYLLABLES) for _ in range(parts)).capitalize()


def _person(rng: random.Random, n: int) -> Person:
    first = _name(rng, 3) + "a"
    last = _name(rng, 3) + "ix"
    client_id = str(70000 + n)
    location = rng.choice(LOCATIONS)
    has_email = rng.random() > 0.1
    has_phone = rng.random() > 0.15
    if n % 25 == 24:  # a walk-in without contact info: skipped with a reason
        has_email = has_phone = False
    email = f" {first}.{last}{n}@Example.com " if has_email else None
    area = rng.choice(("480", "602", "623", "702", "208"))
    line = f"01{n % 100:02d}"
    phone_style = rng.randrange(4)
    phone_raw = (f"({area}) 555-{line}", f"{area}.555.{line}", f"+1 {area} 555 {line}", f"{area}555{line}")[phone_style]
    dob = date(1950, 1, 1) + timedelta(days=rng.randrange(365 * 54))
    dob_raw = dob.strftime("%m/%d/%Y") if rng.random() < 0.5 else dob.isoformat()
    street = f"{1000 + rng.randrange(8999)} E {first}{rng.choice(_STREETS)} Rd"
    return Person(client_id, first, last, email, phone_raw if has_phone else None,
                  f"+1{area}555{line}" if has_phone else None, dob_raw, dob.isoformat(), street, location)


def _client_block(p: Person) -> dict[str, Any]:
    block: dict[str, Any] = {"clientId": p.client_id, "firstName": p.first, "lastName": p.last,
                             "email": p.email or "", "mobilePhone": p.phone_raw, "dateOfBirth": p.dob_raw}
    return block


def _envelope(kind: str, event_id: str, occurred: datetime, p: Person) -> dict[str, Any]:
    return {"event": kind, "eventId": event_id, "occurredAt": occurred.strftime("%Y-%m-%dT%H:%M:%SZ"),
            "location": dict(p.location)}


def _json(body: dict[str, Any]) -> bytes:
    return json.dumps(body).encode()


def _form(body: dict[str, Any]) -> bytes:
    """Flatten one level of nesting into PHP-style bracket keys (`client[firstName]=...`)."""
    pairs: list[tuple[str, str]] = []
    for key, value in body.items():
        if isinstance(value, dict):
            pairs += [(f"{key}[{k}]", "" if v is None else str(v)) for k, v in value.items()]
        else:
            pairs.append((key, "" if value is None else str(value)))
    return urlencode(pairs).encode()


class _Builder:
    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)
        self.events: list[GeneratedEvent] = []
        self.clock = datetime(2026, 11, 1, 15, 0, 0)
        self.paid_total: dict[str, Decimal] = {}
        self.appointments: dict[str, dict[str, Any]] = {}
        self.open_appts: dict[str, list[dict[str, Any]]] = {}
        self.created: set[str] = set()
        self.passed: list[GeneratedEvent] = []  # candidates for a redelivery

    def uuid(self) -> str:
        return str(uuid.UUID(int=self.rng.getrandbits(128), version=4))

    def tick(self) -> datetime:
        self.clock += timedelta(minutes=self.rng.randrange(1, 90))
        return self.clock

    def add(self, body: bytes, ctype: str, p: Person | None, event_id: str, kind: str, expect: str,
            resource: str | None = None) -> GeneratedEvent:
        event = GeneratedEvent(len(self.events), body, ctype, p.client_id if p else None, event_id, kind, expect,
                               resource)
        self.events.append(event)
        if expect == "normalized" or expect.startswith("skipped"):
            self.passed.append(event)
        return event

    @staticmethod
    def contact(p: Person) -> bool:
        return bool(p.email or p.phone_raw)

    def client_event(self, p: Person) -> None:
        kind = "client.updated" if p.client_id in self.created else "client.created"
        self.created.add(p.client_id)
        body = {**_envelope(kind, self.uuid(), self.tick(), p),
                "client": {**_client_block(p), "address": p.street, "city": p.location["name"], "state": "AZ",
                           "zip": "85251"}}
        expect = "normalized" if self.contact(p) else "skipped:no_email_or_phone"
        if self.rng.random() < 0.2:  # form-encoded variant
            body["location"] = p.location["id"]
            body["locationName"] = p.location["name"]
            self.add(_form(body), "application/x-www-form-urlencoded", p, body["eventId"], "client.upserted",
                     expect, "clients")
        else:
            self.add(_json(body), "application/json", p, body["eventId"], "client.upserted", expect)

    def appointment_booked(self, p: Person) -> None:
        appt_id = f"A-{80000 + len(self.appointments)}"
        start = self.tick() + timedelta(days=self.rng.randrange(1, 30))
        service = self.rng.choice(SERVICES)
        provider = self.rng.choice(PROVIDERS)
        appt = {"appointmentId": appt_id, "status": "Booked", "startDateTime": start.strftime("%Y-%m-%d %H:%M:%S"),
                "provider": {"id": provider[0], "name": provider[1]},
                "services": [{"serviceId": service[0], "name": service[1], "serviceType": service[2]}]}
        self.appointments[appt_id] = {"client_id": p.client_id, "status": "Booked", "start": appt["startDateTime"],
                                      "service": service}
        self.open_appts.setdefault(p.client_id, []).append(appt)
        expect = "normalized" if self.contact(p) else "skipped:no_email_or_phone"
        if self.rng.random() < 0.1:  # ColdFusion style
            body = {"EVENTTYPE": "Appointment.Created", "EVENTID": self.uuid(), "LOCATIONID": int(p.location["id"]),
                    "LOCATIONNAME": p.location["name"],
                    "CLIENT": {"CLIENTID": int(p.client_id), "FIRSTNAME": p.first, "LASTNAME": p.last,
                               "EMAIL": p.email or "", "CELLPHONE": p.phone_raw or ""},
                    "APPOINTMENT": {"APPOINTMENTID": appt_id, "STATUS": "Scheduled",
                                    "APPTDATE": start.strftime("%B, %d %Y %H:%M:%S"),
                                    "PROVIDERNAME": provider[1], "SERVICES": service[1], "SERVICETYPE": service[2]}}
            self.add(_json(body), "application/json", p, body["EVENTID"], "appointment.booked", expect)
            return
        body = {**_envelope("appointment.created", self.uuid(), self.tick(), p), "client": _client_block(p),
                "appointment": appt}
        self.add(_json(body), "application/json", p, body["eventId"], "appointment.booked", expect)

    def appointment_change(self, p: Person) -> None:
        appts = self.open_appts.get(p.client_id)
        if not appts:
            return self.appointment_booked(p)
        appt = self.rng.choice(appts)
        roll = self.rng.random()
        client = _client_block(p)
        if roll < 0.55:  # reschedule: a chain of updates, each carrying the previous start
            previous = appt["startDateTime"]
            new_start = datetime.strptime(previous, "%Y-%m-%d %H:%M:%S") + timedelta(days=self.rng.randrange(1, 5),
                                                                                   hours=1)
            appt = {**appt, "startDateTime": new_start.strftime("%Y-%m-%d %H:%M:%S"), "previousStartDateTime": previous}
            appts[appts.index(next(a for a in appts if a["appointmentId"] == appt["appointmentId"]))] = appt
            self.appointments[appt["appointmentId"]]["start"] = appt["startDateTime"]
            kind, event_kind, status = "appointment.updated", "appointment.updated", "Booked"
        elif roll < 0.75:
            kind, event_kind, status = "appointment.cancelled", "appointment.cancelled", "Cancelled"
        elif roll < 0.9:
            kind, event_kind, status = "appointment.noshow", "appointment.no_show", "No Show"
        else:
            kind, event_kind, status = "appointment.deleted", "appointment.deleted", "Deleted"
            client = {"clientId": p.client_id}
        body = {**_envelope(kind, self.uuid(), self.tick(), p), "client": client,
                "appointment": {**appt, "status": status} if status != "Deleted" else
                {"appointmentId": appt["appointmentId"]}}
        if status != "Booked":
            appts.remove(next(a for a in appts if a["appointmentId"] == appt["appointmentId"]))
        self.appointments[appt["appointmentId"]]["status"] = status
        needs_contact = event_kind != "appointment.deleted"
        expect = "normalized" if (self.contact(p) or not needs_contact) else "skipped:no_email_or_phone"
        self.add(_json(body), "application/json", p, body["eventId"], event_kind, expect)

    def invoice(self, p: Person, refund: bool = False) -> None:
        service = self.rng.choice(SERVICES)
        invoice_id = f"INV-{30000 + len(self.events)}"
        paid = self.tick()
        amount = service[3] + Decimal(self.rng.randrange(0, 100))
        invoice: dict[str, Any] = {"invoiceId": invoice_id, "invoiceNumber": invoice_id[4:],
                                   "status": "Refunded" if refund else "Paid",
                                   "paidDate": paid.strftime("%m/%d/%Y %H:%M"), "total": f"${amount:,.2f}",
                                   "items": [{"name": service[1], "type": "Service", "quantity": 1,
                                              "amount": f"{amount:.2f}"}]}
        appts = self.open_appts.get(p.client_id)
        if appts and not refund:
            invoice["appointment"] = {"appointmentId": appts[0]["appointmentId"],
                                      "startDateTime": appts[0]["startDateTime"]}
        kind = "invoice.refunded" if refund else "invoice.paid"
        body = {**_envelope(kind, self.uuid(), paid, p), "client": _client_block(p), "invoice": invoice}
        expect = "normalized" if (self.contact(p) or refund) else "skipped:no_email_or_phone"
        if expect == "normalized":
            delta = -amount if refund else amount
            self.paid_total[p.client_id] = self.paid_total.get(p.client_id, Decimal(0)) + delta
        self.add(_json(body), "application/json", p, body["eventId"], kind, expect)

    def ping(self) -> None:
        body = {"event": "test", "message": "This is a test webhook from AestheticsPro.",
                "occurredAt": self.tick().strftime("%Y-%m-%dT%H:%M:%SZ"), "eventId": self.uuid()}
        self.add(_json(body), "application/json", None, body["eventId"], "test", "skipped:test_ping")

    def redelivery(self) -> None:
        if not self.passed:
            return
        original = self.rng.choice(self.passed)
        self.events.append(GeneratedEvent(len(self.events), original.body, original.content_type,
                                          original.client_id, original.event_id, original.kind, "duplicate",
                                          original.resource))


def generate(seed: int = 7, *, clients: int = 40, events: int = 400) -> GeneratedStream:
    """A deterministic stream of about `events` webhooks over `clients` patients (same seed → same bytes)."""
    b = _Builder(seed)
    people = [_person(b.rng, n) for n in range(clients)]
    for p in people:  # every client is created before anything else happens to them
        b.client_event(p)
    while len(b.events) < events:
        roll = b.rng.random()
        p = b.rng.choice(people)
        if roll < 0.10:
            b.client_event(p)
        elif roll < 0.35:
            b.appointment_booked(p)
        elif roll < 0.60:
            b.appointment_change(p)
        elif roll < 0.80:
            b.invoice(p)
        elif roll < 0.83:
            b.invoice(p, refund=True)
        elif roll < 0.88:
            b.ping()
        else:
            b.redelivery()
    return GeneratedStream(seed, people, b.events, b.paid_total, b.appointments)
