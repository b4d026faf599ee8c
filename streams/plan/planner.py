"""The sync planner: (event, client state) → (new state, CRM ops, outcome). Pure and deterministic.

No I/O, no wall clock: time decisions use the event's own times, so replaying a topic gives the same plans.
Rules: docs/sync-rules.md; op model: foundations/formats/crm_commands.py; how a plan stays correct under
redelivery, replay and reordering: docs/sync-engine.md, "Module notes"."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date, datetime, time
from decimal import ROUND_HALF_UP, Decimal
from enum import StrEnum
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import BaseModel, ConfigDict

from foundations.formats import crm_fields
from foundations.formats.crm_commands import (
    MEMBER_TAG,
    PATIENT_TAG,
    AddNote,
    AddTags,
    ContactFields,
    CrmOp,
    EnrollWorkflow,
    OpKind,
    UpsertContact,
    UpsertOpportunity,
    event_marker,
    op_id_for,
)
from foundations.formats.normalized import AppointmentStatus, EventKind, Invoice, MembershipStatus, NormalizedEvent
from streams.plan.horizon import compact, is_late, record_applied, stamp_invoices
from streams.plan.state import (
    AppointmentRecord,
    ClientState,
    InvoiceRecord,
    MembershipRecord,
    NextVisit,
    OrderKey,
    PendingEffects,
    Register,
    order_key,
)

# The op classes a plan is built from (before each op gets its id).
_OpClass = type[UpsertContact] | type[AddNote] | type[UpsertOpportunity] | type[AddTags] | type[EnrollWorkflow]


class Outcome(StrEnum):
    APPLIED = "applied"
    DUPLICATE = "duplicate"  # this event was already applied: nothing to do
    STALE = "stale"  # older than what was already applied: nothing changes
    REPEATED_INVOICE = "repeated_invoice"  # an already-counted invoice paid again with the same amount: counted once
    NO_CONTACT = "no_contact"  # state updated, but no email, phone or known contact id to address the CRM with
    RESUMED = "resumed"  # a redriven/replayed dead-lettered event: its parked ops (not done) are run again


class PlanError(ValueError):
    """The event cannot be planned (e.g. an appointment event without an appointment). Message holds no PHI."""


class Plan(BaseModel):
    model_config = ConfigDict(frozen=True)

    new_state: ClientState
    ops: tuple[CrmOp, ...]
    outcome: Outcome


# Standard contact fields each flow writes (GoHighLevel names).
IDENTITY_FIELDS = ("firstName", "lastName", "email", "phone", "dateOfBirth")
ADDRESS_FIELDS = ("address1", "city", "state", "postalCode")
# Custom fields each flow writes (crm_fields keys), values taken from the state after the event.
APPOINTMENT_CUSTOM = (
    crm_fields.APRO_APPT_STATUS.key,
    crm_fields.APRO_APPT_DATE.key,
    crm_fields.APRO_APPT_ID.key,
    crm_fields.APRO_APPT_SERVICES.key,
    crm_fields.APRO_APPT_SERVICE_TYPE.key,
    crm_fields.APRO_PROVIDER.key,
    crm_fields.APRO_LOCATION.key,
    crm_fields.APRO_CLIENT_ID.key,
    crm_fields.APRO_DOB.key,
)
INVOICE_CUSTOM = (
    crm_fields.LAST_VISIT_DATE.key,
    crm_fields.LAST_VISIT_SERVICE.key,
    crm_fields.INVOICE_PAID_AMOUNT.key,
    crm_fields.APRO_APPT_STATUS.key,
    crm_fields.APRO_INVOICE_ID.key,
    crm_fields.APRO_LOCATION.key,
    crm_fields.APRO_CLIENT_ID.key,
    crm_fields.APRO_DOB.key,
)
CLIENT_CUSTOM = (crm_fields.APRO_CLIENT_ID.key, crm_fields.APRO_DOB.key)
MEMBERSHIP_GROUP = (
    crm_fields.APRO_MEMBERSHIP.key,
    crm_fields.APRO_MEMBERSHIP_STATUS.key,
    crm_fields.APRO_MEMBERSHIP_RENEWAL_DATE.key,
)
MEMBERSHIP_CUSTOM = (*MEMBERSHIP_GROUP, crm_fields.APRO_CLIENT_ID.key, crm_fields.APRO_DOB.key)
# Marketing consent registers (ClientState.consent): DND channel → one of these.
OPT_OUT, OPT_IN = "opt_out", "opt_in"
# Register groups written as one decision: an event writes all of a group (its non-empty values) or none of it.
ACTIVITY_GROUP = (  # the client's latest appointment/invoice activity, together with the stage register
    crm_fields.APRO_APPT_STATUS.key,
    crm_fields.APRO_APPT_ID.key,
    crm_fields.APRO_APPT_DATE.key,
    crm_fields.APRO_APPT_SERVICES.key,
    crm_fields.APRO_APPT_SERVICE_TYPE.key,
    crm_fields.APRO_PROVIDER.key,
    crm_fields.APRO_LOCATION.key,
)
INVOICE_GROUP = (crm_fields.INVOICE_PAID_AMOUNT.key, crm_fields.APRO_INVOICE_ID.key)
VISIT_GROUP = (crm_fields.LAST_VISIT_DATE.key, crm_fields.LAST_VISIT_SERVICE.key)
REVERSAL_CUSTOM = (crm_fields.APRO_CLIENT_ID.key,)

_STAGE_BY_KIND = {
    EventKind.APPOINTMENT_BOOKED: crm_fields.STAGE_BOOKED,
    EventKind.APPOINTMENT_CANCELLED: crm_fields.STAGE_CANCEL_NO_SHOW,
    EventKind.APPOINTMENT_NO_SHOW: crm_fields.STAGE_CANCEL_NO_SHOW,
}
_STATUS_BY_KIND = {
    EventKind.APPOINTMENT_BOOKED: AppointmentStatus.BOOKED,
    EventKind.APPOINTMENT_CANCELLED: AppointmentStatus.CANCELLED,
    EventKind.APPOINTMENT_NO_SHOW: AppointmentStatus.NO_SHOW,
    EventKind.APPOINTMENT_DELETED: AppointmentStatus.DELETED,
}
_NOTE_TITLE = {
    EventKind.APPOINTMENT_BOOKED: "AestheticsPro appointment booked",
    EventKind.APPOINTMENT_CANCELLED: "AestheticsPro appointment cancelled",
    EventKind.APPOINTMENT_NO_SHOW: "AestheticsPro appointment no-show",
    EventKind.APPOINTMENT_UPDATED: "AestheticsPro appointment updated",
    EventKind.APPOINTMENT_DELETED: "AestheticsPro appointment deleted",
    EventKind.MEMBERSHIP_CREATED: "AestheticsPro membership created",
    EventKind.MEMBERSHIP_RENEWED: "AestheticsPro membership renewed",
    EventKind.MEMBERSHIP_CANCELLED: "AestheticsPro membership cancelled",
    EventKind.MEMBERSHIP_EXPIRED: "AestheticsPro membership expired",
}


# ---------------------------------------------------------------- formatting


def format_money(amount: Decimal) -> str:
    """`$1,150.00`; negative amounts as `-$50.00`."""
    q = amount.quantize(Decimal("0.01"), rounding=ROUND_HALF_UP)
    return f"{'-' if q < 0 else ''}${abs(q):,.2f}"


def format_local(dt: datetime, zone: ZoneInfo) -> str:
    """`Tue Dec 1, 2026 10:30 AM MST` in the location's zone."""
    d = dt.astimezone(zone)
    return f"{d:%a %b} {d.day}, {d.year} {d.hour % 12 or 12}:{d:%M %p %Z}"


def _zone(name: str | None, default: ZoneInfo) -> ZoneInfo:
    if not name:
        return default
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        return default


def _join(items: list[str] | tuple[str, ...]) -> str:
    return ", ".join(i for i in items if i)


# ---------------------------------------------------------------- working copy


@dataclass
class _Work:
    """Mutable scratch copy of the state while one event is applied."""

    ev: NormalizedEvent
    prev: ClientState
    at: datetime
    zone: ZoneInfo
    default_zone: ZoneInfo
    appointments: dict[str, AppointmentRecord]
    invoices: dict[str, InvoiceRecord]
    contact: dict[str, Register]
    custom: dict[str, Register]
    stage: Register | None
    demographics_at: Register | None
    patient: bool
    consent: dict[str, Register] = field(default_factory=dict)
    memberships: dict[str, MembershipRecord] = field(default_factory=dict)
    next_visit: NextVisit | None = None
    next_visit_changed: bool = False
    ops: list[tuple[_OpClass, dict[str, Any]]] = field(default_factory=list)

    # registers -------------------------------------------------------
    @property
    def key(self) -> OrderKey:
        return order_key(self.at, self.ev.raw_offset, self.ev.event_id)

    def _register(self, value: str, at: datetime | None = None) -> Register:
        return Register(value=value, at=at or self.at, event_id=self.ev.event_id, seq=self.ev.raw_offset)

    def _put(self, regs: dict[str, Register], key: str, value: str | None, at: datetime | None = None) -> None:
        if value is None:
            return
        cur = regs.get(key)
        if cur is None or cur.loses_to(order_key(at or self.at, self.ev.raw_offset, self.ev.event_id)):
            regs[key] = self._register(value, at)

    def put_custom(self, key: str, value: str | None, at: datetime | None = None) -> None:
        self._put(self.custom, key, value, at)

    def is_latest(self, group: tuple[str, ...], *, stage: bool = False, at: datetime | None = None) -> bool:
        """Whether this event is newer than every event that wrote a register of `group` (and the stage)."""
        key = order_key(at or self.at, self.ev.raw_offset, self.ev.event_id)
        regs = [self.custom.get(k) for k in group] + ([self.stage] if stage else [])
        return all(r is None or r.loses_to(key) for r in regs)

    def write_group(self, values: dict[str, str | None], at: datetime | None = None) -> None:
        """Write a group decided by `is_latest` (values None keep their register: merge, never clear)."""
        for k, v in values.items():
            if v is not None:
                self.custom[k] = self._register(v, at)

    def set_stage(self, stage: str) -> None:
        self.stage = self._register(stage)

    def values(self) -> tuple[dict[str, str], dict[str, str], str | None, dict[str, str]]:
        """What the CRM shows of the registers (their values, not who wrote them)."""
        return ({k: r.value for k, r in self.contact.items()}, {k: r.value for k, r in self.custom.items()},
                self.stage.value if self.stage else None, {k: r.value for k, r in self.consent.items()})

    def put_demographics(self, *, address: bool) -> None:
        c = self.ev.client
        self._put(self.contact, "firstName", c.first_name)
        self._put(self.contact, "lastName", c.last_name)
        self._put(self.contact, "email", c.email)
        self._put(self.contact, "phone", c.phone)
        dob = c.date_of_birth.isoformat() if c.date_of_birth else None
        self._put(self.contact, "dateOfBirth", dob)
        self.put_custom(crm_fields.APRO_DOB.key, dob)
        self.put_custom(crm_fields.APRO_CLIENT_ID.key, c.id)
        if address and c.address is not None:
            a = c.address
            line = " ".join(p for p in (a.line1, a.line2) if p) or None
            self._put(self.contact, "address1", line)
            self._put(self.contact, "city", a.city)
            self._put(self.contact, "state", a.state)
            self._put(self.contact, "postalCode", a.postal_code)

    def put_consent(self) -> bool:
        """The event's marketing consent; True when a channel changed. Applied for every event before its flow,
        whatever the flow decides (a stale appointment event may still be the newest word on a channel)."""
        c = self.ev.client
        before = dict(self.consent)
        if c.consent is not None:
            # Per channel, last writer wins in event order: an older event never undoes a newer opt-out (nor a
            # newer opt-in), and a channel the event does not mention keeps its value.
            for channel, opted_out in (("Email", c.consent.email_opt_out), ("SMS", c.consent.sms_opt_out),
                                       ("Call", c.consent.call_opt_out)):
                if opted_out is not None:
                    self._put(self.consent, channel, OPT_OUT if opted_out else OPT_IN)
        return self.consent != before

    # derived values --------------------------------------------------
    def recompute_next_visit(self) -> None:
        """Earliest booked appointment after the client's clock (latest event time seen), never the wall clock."""
        ref = max(self.at, self.prev.clock) if self.prev.clock else self.at
        future = [a for a in self.appointments.values()
                  if a.status is AppointmentStatus.BOOKED and a.start is not None and a.start > ref]
        nxt = None
        if future:
            a = min(future, key=lambda r: (r.start, r.id))
            local = a.start.astimezone(_zone(a.timezone, self.default_zone))  # type: ignore[union-attr]
            nxt = NextVisit(appointment_id=a.id, date=local.date(), service=_join(a.services))
        self.next_visit = nxt
        self.next_visit_changed = nxt != self.prev.next_visit

    @property
    def lifetime_value(self) -> Decimal:
        return sum((inv.net_amount for inv in self.invoices.values()), self.prev.folded_value)

    def opportunity_name(self) -> str:
        parts = [self.contact[k].value for k in ("firstName", "lastName") if k in self.contact]
        return " ".join(parts) or f"AestheticsPro client {self.ev.client.id}"

    # op builders -----------------------------------------------------
    def op(self, cls: _OpClass, **kwargs: Any) -> None:
        self.ops.append((cls, kwargs))

    def upsert_contact(self, standard: tuple[str, ...], custom: tuple[str, ...], *, ltv: bool = False,
                       next_visit: bool = False) -> None:
        values: dict[str, Any] = {k: self.custom[k].value for k in custom if k in self.custom}
        if ltv:
            values[crm_fields.PATIENT_LIFETIME_VALUE.key] = self.lifetime_value
        if next_visit or self.next_visit_changed:
            nv = self.next_visit
            # "" clears the field in GoHighLevel when no future booking remains.
            values[crm_fields.NEXT_VISIT_DATE.key] = nv.date.isoformat() if nv else ""
            values[crm_fields.NEXT_VISIT_SERVICE.key] = nv.service if nv else ""
        std = ContactFields(**{k: self.contact[k].value for k in standard if k in self.contact})
        self.op(UpsertContact, standard=std, custom=values, dnd=dnd_of(self.consent))

    def note(self, lines: list[str | None]) -> None:
        body = "\n".join([*(line for line in lines if line), event_marker(self.ev.event_id)])
        self.op(AddNote, body=body)

    def opportunity(self, stage: str) -> None:
        self.op(UpsertOpportunity, stage=stage, status="won" if self.patient else "open",
                monetary_value=self.lifetime_value if self.patient else None, name=self.opportunity_name())


def dnd_of(consent: dict[str, Register]) -> dict[str, str]:
    """GoHighLevel DND status per channel AestheticsPro spoke about: opted out = "active" (do not disturb)."""
    return {channel: "active" if reg.value == OPT_OUT else "inactive" for channel, reg in sorted(consent.items())}


def current_membership(records: dict[str, MembershipRecord]) -> MembershipRecord | None:
    """The membership the CRM fields describe: the active one with the latest event, else the latest event's.

    A function of the records alone, so the fields do not depend on the order the events arrived in."""
    if not records:
        return None
    active = [r for r in records.values() if r.status is MembershipStatus.ACTIVE]
    return max(active or records.values(), key=lambda r: r.last_key)


# ---------------------------------------------------------------- flows


def _client(w: _Work) -> Outcome:
    wm = w.demographics_at
    if wm is not None and not wm.loses_to(w.key):
        return Outcome.STALE
    w.demographics_at = w._register("")  # noqa: SLF001 - the planner owns the working state
    w.put_demographics(address=True)
    # Demographic sync only: no note, no opportunity, no workflow (seed).
    w.upsert_contact(IDENTITY_FIELDS + ADDRESS_FIELDS, CLIENT_CUSTOM)
    return Outcome.APPLIED


def _seen_before(w: _Work, rec: AppointmentRecord | MembershipRecord | None) -> Outcome | None:
    """DUPLICATE when `rec` was last written by this very event, STALE when by a later one, else None."""
    if rec is None:
        return None
    if rec.last_event_id == w.ev.event_id:
        return Outcome.DUPLICATE
    return Outcome.STALE if w.key < rec.last_key else None


def _appointment(w: _Work) -> Outcome:
    ev, appt = w.ev, w.ev.appointment
    if appt is None:
        raise PlanError(f"{ev.kind} event without an appointment block")
    rec = w.appointments.get(appt.id)
    if (seen := _seen_before(w, rec)) is not None:
        return seen
    status = _STATUS_BY_KIND.get(ev.kind) or appt.status or (rec.status if rec else AppointmentStatus.BOOKED)
    tzname = ev.location.timezone or (rec.timezone if rec else None)
    new = AppointmentRecord(
        id=appt.id,
        status=status,
        start=appt.start or (rec.start if rec else None),
        services=tuple(appt.service_names) or (rec.services if rec else ()),
        service_types=tuple(appt.service_types) or (rec.service_types if rec else ()),
        provider=(appt.provider.name if appt.provider else None) or (rec.provider if rec else None),
        location=ev.location.name or ev.location.id or (rec.location if rec else None),
        timezone=tzname,
        last_event_at=w.at,
        last_event_id=ev.event_id,
        last_event_seq=ev.raw_offset,
    )
    w.appointments[appt.id] = new
    zone = _zone(tzname, w.default_zone)
    w.put_demographics(address=False)

    # One decision for the activity fields, the stage move and the workflow: only the client's latest activity
    # (newer than every event that wrote any of them) moves them. A deletion only touches the APro Appt fields
    # when it deletes the appointment they describe.
    latest = w.is_latest(ACTIVITY_GROUP, stage=True)
    current_id = w.custom.get(crm_fields.APRO_APPT_ID.key)
    describes = ev.kind is not EventKind.APPOINTMENT_DELETED or (
        current_id is not None and current_id.value == appt.id)
    if latest and describes:
        w.write_group({
            crm_fields.APRO_APPT_STATUS.key: status.value,
            crm_fields.APRO_APPT_ID.key: appt.id,
            crm_fields.APRO_APPT_DATE.key: new.start.astimezone(zone).date().isoformat() if new.start else None,
            crm_fields.APRO_APPT_SERVICES.key: _join(new.services) or None,
            crm_fields.APRO_APPT_SERVICE_TYPE.key: _join(new.service_types) or None,
            crm_fields.APRO_PROVIDER.key: new.provider,
            crm_fields.APRO_LOCATION.key: new.location,
        })
    stage = _STAGE_BY_KIND.get(ev.kind)
    if (
        stage
        and ev.historical
        and w.patient
        and not (stage == crm_fields.STAGE_BOOKED and new.start and new.start > w.at)
    ):
        stage = None  # backfill: a patient's past booking or cancellation is no follow-up work (sync-rules.md)
    if stage and latest:
        w.set_stage(stage)
    w.recompute_next_visit()

    w.upsert_contact(IDENTITY_FIELDS, APPOINTMENT_CUSTOM, next_visit=True)
    previous = appt.previous_start or (rec.start if rec and rec.start != new.start else None)
    w.note([
        _NOTE_TITLE[ev.kind],
        f"Status: {status.value}",
        f"Date: {format_local(new.start, zone)}" if new.start else None,
        f"Previous date: {format_local(previous, zone)}"
        if ev.kind is EventKind.APPOINTMENT_UPDATED and previous else None,
        f"Services: {_join(new.services)}" if new.services else None,
        f"Service type: {_join(new.service_types)}" if new.service_types else None,
        f"Provider: {new.provider}" if new.provider else None,
        f"Location: {new.location}" if new.location else None,
        f"Appointment ID: {appt.id}",
        f"Reason: {appt.cancel_reason}" if appt.cancel_reason else None,
    ])
    # Pipeline and workflow follow only the client's latest activity: a late event (older than another
    # appointment's newer event) must not drag the opportunity back or re-route the workflow.
    if stage and latest:
        w.opportunity(stage)
        w.op(EnrollWorkflow, workflow=crm_fields.WORKFLOW_APPOINTMENTS_UPDATE)
    return Outcome.APPLIED


def _membership(w: _Work) -> Outcome:
    ev, m = w.ev, w.ev.membership
    if m is None:
        raise PlanError(f"{ev.kind} event without a membership block")
    rec = w.memberships.get(m.id)
    if (seen := _seen_before(w, rec)) is not None:
        return seen  # an older event of this membership: nothing, not even a note
    active = m.status is MembershipStatus.ACTIVE
    # An active membership keeps its known renewal date when the event omits one; an ended one has none.
    renewal = (m.renewal_date or (rec.renewal_date if rec else None)) if active else None
    new = MembershipRecord(id=m.id, name=m.name or (rec.name if rec else None), status=m.status,
                           renewal_date=renewal, last_event_at=w.at, last_event_id=ev.event_id,
                           last_event_seq=ev.raw_offset)
    w.memberships[m.id] = new
    w.put_demographics(address=False)
    cur = current_membership(w.memberships)
    assert cur is not None
    for key, value in (
        (crm_fields.APRO_MEMBERSHIP.key, cur.name or ""),
        (crm_fields.APRO_MEMBERSHIP_STATUS.key, cur.status.value),
        (crm_fields.APRO_MEMBERSHIP_RENEWAL_DATE.key, cur.renewal_date.isoformat() if cur.renewal_date else ""),
    ):
        w.custom[key] = Register(value=value, at=cur.last_event_at, event_id=cur.last_event_id,
                                 seq=cur.last_event_seq)
    w.upsert_contact(IDENTITY_FIELDS, MEMBERSHIP_CUSTOM)
    location = ev.location.name or ev.location.id
    w.note([
        _NOTE_TITLE[ev.kind],
        f"Membership: {new.name}" if new.name else None,
        f"Status: {new.status.value}",
        f"Renewal date: {new.renewal_date.isoformat()}" if new.renewal_date else None,
        f"Start date: {m.start_date.isoformat()}" if m.start_date else None,
        f"End date: {m.end_date.isoformat()}" if m.end_date and not active else None,
        f"Reason: {m.cancel_reason}" if m.cancel_reason and not active else None,
        f"Location: {location}" if location else None,
        f"Membership ID: {m.id}",
    ])
    if active:  # additive and idempotent; never removed (docs/sync-rules.md, "Memberships")
        w.op(AddTags, tags=(MEMBER_TAG,))
    return Outcome.APPLIED


def _visit(w: _Work) -> tuple[datetime, date, str]:
    """Last visit instant, local date and service of a paid invoice (invoice-level fields first)."""
    inv = w.ev.invoice
    assert inv is not None
    appt = inv.appointment
    if appt is not None and appt.start is not None:
        at = appt.start
    elif inv.paid_at is not None:
        at = inv.paid_at
    elif inv.invoice_date is not None:  # noon local: orders it against other visits without shifting the date
        at = datetime.combine(inv.invoice_date, time(12), w.zone)
    else:
        at = w.at
    local = at.astimezone(w.zone).date()
    services = [i.name for i in inv.items if (i.type or "").lower() == "service"]
    if not services and appt is not None:
        services = appt.service_names
    if not services:
        services = [i.name for i in inv.items]
    return at, local, _join(services)


def _paid_registers(w: _Work, inv: Invoice) -> None:
    """The fields a paid event writes, each group as one decision (the visit group by visit time)."""
    ev = w.ev
    visit_at, visit_date, visit_service = _visit(w)
    if w.is_latest(VISIT_GROUP, at=visit_at):
        w.write_group(
            {crm_fields.LAST_VISIT_DATE.key: visit_date.isoformat(), crm_fields.LAST_VISIT_SERVICE.key: visit_service},
            at=visit_at,
        )
    if w.is_latest(INVOICE_GROUP):
        w.write_group(
            {crm_fields.INVOICE_PAID_AMOUNT.key: str(inv.amount_paid), crm_fields.APRO_INVOICE_ID.key: inv.id}
        )
    # The visit completes the client's latest activity only if nothing newer (a booking, a cancellation) moved on.
    if w.is_latest(ACTIVITY_GROUP, stage=True):
        w.write_group({crm_fields.APRO_APPT_STATUS.key: AppointmentStatus.COMPLETED.value,
                       crm_fields.APRO_LOCATION.key: ev.location.name or ev.location.id})
        w.set_stage(crm_fields.STAGE_PATIENT)


def _invoice_paid(w: _Work) -> Outcome:
    ev, inv = w.ev, w.ev.invoice
    if inv is None:
        raise PlanError("invoice event without an invoice block")
    rec = w.invoices.get(inv.id) or InvoiceRecord(id=inv.id, number=inv.number)
    if rec.paid_event_id == ev.event_id:
        return Outcome.DUPLICATE
    paid_key = rec.paid_key
    first = paid_key is None
    newest = first or w.key > paid_key  # type: ignore[operator]
    latest_paid = {"paid_event_at": w.at, "paid_event_id": ev.event_id, "paid_event_seq": ev.raw_offset}
    if not first and inv.amount_paid == rec.paid_amount:
        # A resend: counted once, no note or enrollment. The ledger's latest paid event still moves to it when it
        # is newer (the ledger is a function of the set of events seen, not of their order), and so do the
        # fields it would write: a newer resend re-asserts them (an upsert and the opportunity, if they changed).
        if not newest:
            return Outcome.REPEATED_INVOICE
        w.invoices[inv.id] = rec.model_copy(update=latest_paid)
        before = w.values()
        w.put_demographics(address=False)
        _paid_registers(w, inv)
        w.recompute_next_visit()
        if w.values() != before or w.next_visit_changed:
            w.upsert_contact(IDENTITY_FIELDS, INVOICE_CUSTOM, ltv=True)
            w.opportunity(w.stage.value if w.stage else crm_fields.STAGE_PATIENT)
        return Outcome.REPEATED_INVOICE
    if not newest:
        return Outcome.STALE  # an older amount: the newer paid event already decided this invoice
    # A void does not stop a paid event from counting as the visit: the invoice still contributes 0 (void is
    # terminal), whatever the order the two arrive in.
    w.invoices[inv.id] = rec.model_copy(update={"number": inv.number or rec.number, "paid_amount": inv.amount_paid,
                                                **latest_paid})
    w.patient = True

    if inv.appointment is not None:  # the visit happened: its appointment is completed
        a = inv.appointment
        arec = w.appointments.get(a.id)
        if arec is None or w.key > arec.last_key:
            w.appointments[a.id] = AppointmentRecord(
                id=a.id, status=AppointmentStatus.COMPLETED,
                start=a.start or (arec.start if arec else None),
                services=tuple(a.service_names) or (arec.services if arec else ()),
                service_types=tuple(a.service_types) or (arec.service_types if arec else ()),
                provider=(a.provider.name if a.provider else None) or (arec.provider if arec else None),
                location=ev.location.name or ev.location.id or (arec.location if arec else None),
                timezone=ev.location.timezone or (arec.timezone if arec else None),
                last_event_at=w.at, last_event_id=ev.event_id, last_event_seq=ev.raw_offset,
            )

    w.put_demographics(address=False)
    _paid_registers(w, inv)
    w.recompute_next_visit()

    ltv = w.lifetime_value
    w.upsert_contact(IDENTITY_FIELDS, INVOICE_CUSTOM, ltv=True)
    items = [i.name for i in inv.items] or (inv.appointment.service_names if inv.appointment else [])
    w.note([
        "AestheticsPro invoice paid" if first else "AestheticsPro invoice paid (amount corrected)",
        f"Amount: {format_money(inv.amount_paid)}",
        f"Services: {_join(items)}" if items else None,
        f"Invoice number: {inv.number or inv.id}",
        f"Paid: {format_local(inv.paid_at, w.zone)}" if inv.paid_at else (
            f"Invoice date: {inv.invoice_date.isoformat()}" if inv.invoice_date else None),
        f"Location: {ev.location.name or ev.location.id}" if (ev.location.name or ev.location.id) else None,
        f"Patient lifetime value: {format_money(ltv)}",
    ])
    # The stage register says Patient unless a newer booking/cancellation already moved on; status stays won.
    w.opportunity(w.stage.value if w.stage else crm_fields.STAGE_PATIENT)
    if first:
        w.op(AddTags, tags=(PATIENT_TAG,))
        w.op(EnrollWorkflow, workflow=crm_fields.WORKFLOW_INVOICE_PAID)
        w.op(EnrollWorkflow, workflow=crm_fields.WORKFLOW_BIRTHDAY)
    return Outcome.APPLIED


def _invoice_reversal(w: _Work) -> Outcome:
    ev, inv = w.ev, w.ev.invoice
    if inv is None:
        raise PlanError("invoice event without an invoice block")
    rec = w.invoices.get(inv.id) or InvoiceRecord(id=inv.id, number=inv.number)
    if ev.kind is EventKind.INVOICE_REFUNDED:
        if ev.event_id in rec.refunds:
            return Outcome.DUPLICATE
        amount = abs(inv.amount_paid)
        refunds = {**rec.refunds, ev.event_id: amount if amount else None}  # no amount: a full refund
        rec = rec.model_copy(update={"refunds": refunds, "number": inv.number or rec.number})
        title, detail = (
            "AestheticsPro invoice refunded",
            f"Refund: {format_money(amount)}" if amount else "Refund: full",
        )
    else:
        latest_void = {"void_event_id": ev.event_id, "void_event_at": w.at, "void_event_seq": ev.raw_offset}
        if rec.voided:
            if rec.void_event_id == ev.event_id:
                return Outcome.DUPLICATE
            void_key = rec.void_key
            if void_key is None or w.key > void_key:  # the record names the latest void, whatever the order
                w.invoices[inv.id] = rec.model_copy(update=latest_void)
                before = w.values()
                w.put_demographics(address=False)  # as the newest void, its demographics count (as a paid resend)
                if w.values() != before:
                    w.upsert_contact(IDENTITY_FIELDS, REVERSAL_CUSTOM, ltv=True)
            return Outcome.REPEATED_INVOICE
        rec = rec.model_copy(update={"voided": True, "number": inv.number or rec.number, **latest_void})
        title, detail = "AestheticsPro invoice voided", None
    w.invoices[inv.id] = rec
    w.put_demographics(address=False)

    ltv = w.lifetime_value
    w.upsert_contact(IDENTITY_FIELDS, REVERSAL_CUSTOM, ltv=True)
    w.note([
        title,
        detail,
        f"Invoice number: {inv.number or rec.number or inv.id}",
        f"Location: {ev.location.name or ev.location.id}" if (ev.location.name or ev.location.id) else None,
        f"Patient lifetime value: {format_money(ltv)}",
    ])
    if w.stage is not None:  # only an opportunity we already manage gets its value updated; stage unchanged
        w.opportunity(w.stage.value)
    return Outcome.APPLIED


_FLOWS = {
    EventKind.CLIENT_UPSERTED: _client,
    EventKind.APPOINTMENT_BOOKED: _appointment,
    EventKind.APPOINTMENT_CANCELLED: _appointment,
    EventKind.APPOINTMENT_NO_SHOW: _appointment,
    EventKind.APPOINTMENT_UPDATED: _appointment,
    EventKind.APPOINTMENT_DELETED: _appointment,
    EventKind.INVOICE_PAID: _invoice_paid,
    EventKind.INVOICE_REFUNDED: _invoice_reversal,
    EventKind.INVOICE_VOIDED: _invoice_reversal,
    EventKind.MEMBERSHIP_CREATED: _membership,
    EventKind.MEMBERSHIP_RENEWED: _membership,
    EventKind.MEMBERSHIP_CANCELLED: _membership,
    EventKind.MEMBERSHIP_EXPIRED: _membership,
}


# ---------------------------------------------------------------- entry point


def event_time(event: NormalizedEvent, now: datetime) -> datetime:
    """The instant an event is ordered by: occurred_at, else received_at, else `now` (supplied by the caller)."""
    return event.occurred_at or event.received_at or now


def plan(
    event: NormalizedEvent,
    state: ClientState | None,
    *,
    location_label: str,
    now: datetime,
    default_timezone: str = "UTC",
    resume_failed: bool = False,
    bounded: bool = True,
) -> Plan:
    """Apply `event` to the client's state and say what the CRM (GoHighLevel location `location_label`) needs.

    `now` is only a fallback event time for events without occurred_at and received_at; pass the Kafka record
    timestamp, not the wall clock, to keep replays deterministic. `default_timezone` is the zone for locations
    whose payload names none (the worker passes Settings.default_timezone). `resume_failed`: the record is an
    operator redrive or replay, so the ops a dead letter of this event parked are resumed (`resume`).
    `bounded=False` keeps the whole history (no lateness rule, nothing forgotten): the reference model in tests.
    """
    if now.tzinfo is None:
        raise PlanError("now must be timezone-aware")
    if state is not None and state.client_id != event.client.id:
        raise PlanError("state belongs to another client")
    st = state or ClientState(client_id=event.client.id)
    if resume_failed and st.parked_for(event.event_id):
        return resume(st, event.event_id)
    if st.knows_event(event.event_id):
        return Plan(new_state=st, ops=(), outcome=Outcome.DUPLICATE)

    default_zone = _zone(default_timezone, ZoneInfo("UTC"))
    w = _Work(
        ev=event, prev=st, at=event_time(event, now), zone=_zone(event.location.timezone, default_zone),
        default_zone=default_zone, appointments=dict(st.appointments), invoices=dict(st.invoices),
        contact=dict(st.contact), custom=dict(st.custom), stage=st.stage, demographics_at=st.demographics_at,
        patient=st.patient, consent=dict(st.consent), memberships=dict(st.memberships), next_visit=st.next_visit,
    )
    consent_changed = w.put_consent()
    # Older than the lateness watermark: what it is about may have been forgotten (streams/plan/horizon.py).
    late = bounded and is_late(event.kind, w.at, st, historical=event.historical)
    outcome = Outcome.STALE if late else _FLOWS[event.kind](w)
    if consent_changed and outcome is not Outcome.DUPLICATE and not any(cls is UpsertContact for cls, _ in w.ops):
        # Stale for what it is about (or a resend), yet the newest word on a consent channel: only that is
        # written (the upsert carries the current registers, no note, no pipeline move).
        w.upsert_contact(IDENTITY_FIELDS, CLIENT_CUSTOM)
        w.ops.insert(0, w.ops.pop())
        if outcome is Outcome.STALE:
            outcome = Outcome.APPLIED
    if outcome in (Outcome.DUPLICATE, Outcome.STALE):
        return Plan(new_state=st, ops=(), outcome=outcome)
    if event.historical:  # backfill: no audit note per past event, no automation for the past, one patient tag
        w.ops = [(cls, kwargs) for cls, kwargs in w.ops
                 if cls not in (AddNote, EnrollWorkflow) and not (st.patient and kwargs.get("tags") == (PATIENT_TAG,))]

    ops: tuple[CrmOp, ...] = ()
    if outcome is Outcome.APPLIED or (outcome is Outcome.REPEATED_INVOICE and w.ops):
        crm_ids = st.crm.get(location_label)
        reachable = "email" in w.contact or "phone" in w.contact or (crm_ids is not None and crm_ids.contact_id)
        if reachable:
            ops = _materialize(w, location_label)
        elif outcome is Outcome.APPLIED:
            outcome = Outcome.NO_CONTACT
    effects = st.effects
    if ops:
        effects = (*effects, PendingEffects(event_id=event.event_id, location_label=location_label, ops=ops))
    applied_ids, applied_at = record_applied(st, event.event_id, w.at)
    new_state = st.model_copy(update={
        "appointments": w.appointments, "invoices": stamp_invoices(st.invoices, w.invoices, w.at),
        "contact": w.contact, "custom": w.custom,
        "stage": w.stage, "demographics_at": w.demographics_at, "patient": w.patient,
        "next_visit": w.next_visit,
        "consent": w.consent, "memberships": w.memberships,
        "clock": max(w.at, st.clock) if st.clock else w.at,
        "applied_event_ids": applied_ids, "applied_event_at": applied_at,
        "effects": effects,
    })
    # A backfill replays a client's past in order: its state is compacted by the next live event, not between.
    compacted = compact(new_state) if bounded and not event.historical else new_state
    return Plan(new_state=compacted, ops=ops, outcome=outcome)


def resume(state: ClientState, event_id: str) -> Plan:
    """Move the entries parked by `event_id`'s dead letter back to the end of the pending effects.

    Only the ops not done are run again. Contact and opportunity ops are refreshed from the current state:
    later events of the client may have run since, and re-sending the values captured when the dead-lettered
    event was planned would drag newer fields back (ops stay absolute: they carry the current truth).
    """
    parked = state.parked_for(event_id)
    entries = tuple(e.model_copy(update={"parked_by": None, "ops": tuple(_refresh(op, state) for op in e.ops)})
                    for e in parked)
    new_state = state.model_copy(update={
        "failed": tuple(f for f in state.failed if f not in parked),
        "effects": (*state.effects, *entries),
    })
    ops = tuple(op for e in entries for op in e.remaining)
    return Plan(new_state=new_state, ops=ops, outcome=Outcome.RESUMED)


def _refresh(op: CrmOp, st: ClientState) -> CrmOp:
    """The op with the client's current values for the fields it writes (same op id, same fields)."""
    if isinstance(op, UpsertContact):
        standard = {k: st.contact[k].value if k in st.contact else v for k, v in op.standard.to_body().items()}
        custom: dict[str, Any] = {}
        for key, value in op.custom.items():
            if key == crm_fields.PATIENT_LIFETIME_VALUE.key:
                custom[key] = st.lifetime_value
            elif key == crm_fields.NEXT_VISIT_DATE.key:
                custom[key] = st.next_visit.date.isoformat() if st.next_visit else ""
            elif key == crm_fields.NEXT_VISIT_SERVICE.key:
                custom[key] = st.next_visit.service if st.next_visit else ""
            else:
                custom[key] = st.custom[key].value if key in st.custom else value
        current = dnd_of(st.consent)
        dnd = {channel: current.get(channel, status) for channel, status in op.dnd.items()}
        return op.model_copy(update={"standard": ContactFields(**standard), "custom": custom, "dnd": dnd})
    if isinstance(op, UpsertOpportunity):
        return op.model_copy(update={
            "stage": st.stage.value if st.stage else op.stage, "status": "won" if st.patient else "open",
            "monetary_value": st.lifetime_value if st.patient else op.monetary_value,
        })
    return op


def _materialize(w: _Work, location_label: str) -> tuple[CrmOp, ...]:
    """Give every op its stable id: event id, kind, ordinal within the kind."""
    counts: dict[OpKind, int] = {}
    out: list[CrmOp] = []
    for cls, kwargs in w.ops:
        kind: OpKind = cls.model_fields["kind"].default
        n = counts.get(kind, 0)
        counts[kind] = n + 1
        out.append(cls(op_id=op_id_for(w.ev.event_id, kind, n), event_id=w.ev.event_id, client_id=w.ev.client.id,
                       location_label=location_label, **kwargs))
    return tuple(out)


__all__ = ["Outcome", "Plan", "PlanError", "event_time", "format_local", "format_money", "plan", "resume"]
