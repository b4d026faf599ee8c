"""Typed, normalized events: the contract between the normalizer, the state tables and the sync planner.

Everything here is already clean: ids are strings, emails trimmed and lower-cased, phones E.164, money
`Decimal`, instants timezone-aware, a date of birth a plain `date`. Models are immutable and round-trip
through JSON exactly (Decimal is serialized as a string), which is how they travel on Kafka.
"""

from __future__ import annotations

from datetime import date, datetime
from decimal import Decimal
from enum import StrEnum

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class EventKind(StrEnum):
    CLIENT_UPSERTED = "client.upserted"
    APPOINTMENT_BOOKED = "appointment.booked"
    APPOINTMENT_CANCELLED = "appointment.cancelled"
    APPOINTMENT_NO_SHOW = "appointment.no_show"
    APPOINTMENT_UPDATED = "appointment.updated"  # a reschedule or other change to a booked appointment
    APPOINTMENT_DELETED = "appointment.deleted"
    INVOICE_PAID = "invoice.paid"
    INVOICE_REFUNDED = "invoice.refunded"
    INVOICE_VOIDED = "invoice.voided"
    MEMBERSHIP_CREATED = "membership.created"
    MEMBERSHIP_RENEWED = "membership.renewed"
    MEMBERSHIP_CANCELLED = "membership.cancelled"
    MEMBERSHIP_EXPIRED = "membership.expired"


MEMBERSHIP_KINDS = frozenset({EventKind.MEMBERSHIP_CREATED, EventKind.MEMBERSHIP_RENEWED,
                              EventKind.MEMBERSHIP_CANCELLED, EventKind.MEMBERSHIP_EXPIRED})


class MembershipStatus(StrEnum):
    """The APro Membership Status values the CRM sees."""

    ACTIVE = "Active"
    CANCELLED = "Cancelled"
    EXPIRED = "Expired"


class AppointmentStatus(StrEnum):
    """The APro Appt Status values the CRM sees (seed spelling)."""

    BOOKED = "Booked"
    CANCELLED = "Cancelled"
    NO_SHOW = "NoShow"
    COMPLETED = "Completed"
    DELETED = "Deleted"


class SkipReason(StrEnum):
    TEST_PING = "test_ping"
    NO_CONTACT_INFO = "no_email_or_phone"
    UNHANDLED_KIND = "unhandled_event_kind"


class Location(_Model):
    id: str | None = None
    name: str | None = None
    timezone: str | None = None

    @property
    def key(self) -> str:
        """Stable label for metrics and routing: the id, else the name, else "unknown"."""
        return self.id or self.name or "unknown"


class Address(_Model):
    line1: str | None = None
    line2: str | None = None
    city: str | None = None
    state: str | None = None
    postal_code: str | None = None
    country: str | None = None


class Consent(_Model):
    """Marketing opt-outs per channel: True = opted out, False = opted in (consents), None = not said.

    Every event may carry them (in the client block); an absent flag never changes a channel."""

    email_opt_out: bool | None = None
    sms_opt_out: bool | None = None
    call_opt_out: bool | None = None

    @property
    def said(self) -> bool:
        return any(v is not None for v in (self.email_opt_out, self.sms_opt_out, self.call_opt_out))


class Client(_Model):
    id: str
    first_name: str | None = None
    last_name: str | None = None
    email: str | None = None  # trimmed, lower-cased, validated
    phone: str | None = None  # E.164
    date_of_birth: date | None = None
    address: Address | None = None
    consent: Consent | None = None  # None: the event said nothing about marketing preferences


class Provider(_Model):
    id: str | None = None
    name: str | None = None


class Service(_Model):
    id: str | None = None
    name: str
    service_type: str | None = None


class Appointment(_Model):
    id: str
    status: AppointmentStatus | None = None
    start: AwareDatetime | None = None
    end: AwareDatetime | None = None
    previous_start: AwareDatetime | None = None
    provider: Provider | None = None
    services: tuple[Service, ...] = ()
    cancel_reason: str | None = None

    @property
    def service_names(self) -> list[str]:
        return [s.name for s in self.services]

    @property
    def service_types(self) -> list[str]:
        seen: list[str] = []
        for s in self.services:
            if s.service_type and s.service_type not in seen:
                seen.append(s.service_type)
        return seen


class LineItem(_Model):
    name: str
    type: str | None = None  # Service, Retail, Package, ...
    quantity: Decimal = Decimal(1)
    amount: Decimal = Decimal(0)


class Invoice(_Model):
    id: str
    number: str | None = None
    status: str | None = None
    invoice_date: date | None = None
    paid_at: AwareDatetime | None = None
    subtotal: Decimal | None = None
    tax: Decimal | None = None
    total: Decimal | None = None
    amount_paid: Decimal = Field(description="Amount this event moves lifetime value by (positive for paid).")
    items: tuple[LineItem, ...] = ()
    appointment: Appointment | None = None  # None for a retail-only invoice

    @property
    def is_retail_only(self) -> bool:
        return self.appointment is None


class Membership(_Model):
    id: str
    name: str | None = None
    status: MembershipStatus
    start_date: date | None = None
    renewal_date: date | None = None  # a calendar date: never shifted through a time zone
    end_date: date | None = None
    cancel_reason: str | None = None


class NormalizedEvent(_Model):
    event_id: str  # from the payload, else a stable hash of the raw body
    kind: EventKind
    source_kind: str | None = None  # the payload's own spelling, for the audit trail
    occurred_at: AwareDatetime | None = None
    received_at: AwareDatetime | None = None  # when the producer accepted the webhook
    location: Location = Location()
    client: Client
    appointment: Appointment | None = None
    invoice: Invoice | None = None
    membership: Membership | None = None
    # Names (never values) of fields that were present but invalid and were dropped, e.g. "client.email".
    invalid_fields: tuple[str, ...] = ()
    # Offset of the raw webhook record in its partition (a client's records share one partition): the arrival
    # order that breaks ties between equal event times. Set by the normalize agent; None in events written
    # before it existed (they order before any event with an offset at the same time).
    raw_offset: int | None = Field(default=None, ge=0)
    # From `apro-sync backfill` (header apro-backfill): no notes, no workflows, no stage move away from Patient.
    historical: bool = False

    @property
    def partition_key(self) -> str:
        return self.client.id


class Skipped(_Model):
    """A webhook deliberately not synced: counted, and recorded on the skipped topic."""

    event_id: str
    reason: SkipReason
    detail: str | None = None  # never PHI
    source_kind: str | None = None
    location: Location = Location()
    client_id: str | None = None
    received_at: AwareDatetime | None = None


class Unreadable(_Model):
    """A webhook the normalizer could not read: goes to the dead-letter topic with the raw payload."""

    event_id: str
    reason: str  # never PHI: names the field/rule that failed, not its value
    location: Location = Location()
    client_id: str | None = None


NormalizeResult = NormalizedEvent | Skipped | Unreadable

__all__ = [
    "Address",
    "Appointment",
    "AppointmentStatus",
    "Client",
    "Consent",
    "EventKind",
    "Invoice",
    "LineItem",
    "Location",
    "MEMBERSHIP_KINDS",
    "Membership",
    "MembershipStatus",
    "NormalizeResult",
    "NormalizedEvent",
    "Provider",
    "Service",
    "SkipReason",
    "Skipped",
    "Unreadable",
    "date",
    "datetime",
]
