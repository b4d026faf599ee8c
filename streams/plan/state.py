"""Per-client sync state: one JSON-serializable record per AestheticsPro client id.

Applying events is idempotent and, where it matters, order-independent: last-writer-wins registers
(`Register`), an invoice ledger whose lifetime value depends only on the set of events seen
(`InvoiceRecord`), and an effects ledger (`PendingEffects`) so no op is repeated (docs/sync-engine.md)."""

from __future__ import annotations

from datetime import date, datetime
from decimal import Decimal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field

from foundations.formats.crm_commands import CrmOp
from foundations.formats.normalized import AppointmentStatus, MembershipStatus

ZERO = Decimal("0.00")
MAX_EVENT_IDS = 512  # recent event ids kept for plain duplicate detection (records below catch older replays)
MAX_FAILED = 64  # parked entries of dead-lettered events kept per client (oldest dropped: redrive no longer resumes)


OrderKey = tuple[datetime, int, str]


def order_key(at: datetime, seq: int | None, event_id: str) -> OrderKey:
    """The total order of a client's events: event time, then the raw record's partition offset (arrival order;
    -1 for events from before offsets were carried), then the event id (only left to tell such old events apart)."""
    return (at, -1 if seq is None else seq, event_id)


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class Register(_Model):
    """A last-writer-wins value: replaced only by a write with a greater `order_key`."""

    value: str
    at: AwareDatetime
    event_id: str
    seq: int | None = None  # raw offset of the writing event

    @property
    def key(self) -> OrderKey:
        return order_key(self.at, self.seq, self.event_id)

    def loses_to(self, key: OrderKey) -> bool:
        return key > self.key


class _LastEvent(_Model):
    """The event (time, raw offset, id) that last wrote a record: what `order_key` compares."""

    last_event_at: AwareDatetime
    last_event_id: str
    last_event_seq: int | None = None

    @property
    def last_key(self) -> OrderKey:
        return order_key(self.last_event_at, self.last_event_seq, self.last_event_id)


class AppointmentRecord(_LastEvent):
    id: str
    status: AppointmentStatus
    start: AwareDatetime | None = None
    services: tuple[str, ...] = ()
    service_types: tuple[str, ...] = ()
    provider: str | None = None
    location: str | None = None
    timezone: str | None = None


class InvoiceRecord(_Model):
    id: str
    number: str | None = None
    paid_amount: Decimal = ZERO  # amount of the latest (by `order_key`) paid event
    paid_event_at: AwareDatetime | None = None
    paid_event_id: str | None = None
    paid_event_seq: int | None = None
    refunds: dict[str, Decimal | None] = Field(default_factory=dict)  # refund event id → amount (None: full)
    voided: bool = False
    void_event_id: str | None = None  # the latest void event (by `order_key`)
    void_event_at: AwareDatetime | None = None
    void_event_seq: int | None = None
    last_event_at: AwareDatetime | None = None  # latest event applied to it (None: before bounded state; never folded)

    @property
    def paid_key(self) -> OrderKey | None:
        if self.paid_event_id is None or self.paid_event_at is None:
            return None
        return order_key(self.paid_event_at, self.paid_event_seq, self.paid_event_id)

    @property
    def void_key(self) -> OrderKey | None:
        if self.void_event_id is None or self.void_event_at is None:
            return None
        return order_key(self.void_event_at, self.void_event_seq, self.void_event_id)

    @property
    def refunded_amount(self) -> Decimal:
        return sum((self.paid_amount if amt is None else amt for amt in self.refunds.values()), ZERO)

    @property
    def net_amount(self) -> Decimal:
        """What this invoice contributes to lifetime value: never negative, zero once voided."""
        if self.voided:
            return ZERO
        return max(self.paid_amount - self.refunded_amount, ZERO)


class MembershipRecord(_LastEvent):
    """One membership of the client as its latest event (by `order_key`) left it."""

    id: str
    name: str | None = None
    status: MembershipStatus
    renewal_date: date | None = None


class NextVisit(_Model):
    appointment_id: str
    date: date  # local date at the appointment's location
    service: str


class CrmIds(_Model):
    contact_id: str | None = None
    opportunity_id: str | None = None


class PendingEffects(_Model):
    """The ops one applied event still owes the CRM; removed once all are done."""

    event_id: str
    location_label: str
    ops: tuple[CrmOp, ...]
    done: tuple[str, ...] = ()  # op ids the executor has completed
    parked_by: str | None = None  # in `ClientState.failed`: the dead-lettered event whose redrive resumes these

    @property
    def remaining(self) -> tuple[CrmOp, ...]:
        return tuple(op for op in self.ops if op.op_id not in self.done)


class ClientState(_Model):
    schema_version: int = 1
    client_id: str
    appointments: dict[str, AppointmentRecord] = Field(default_factory=dict)
    invoices: dict[str, InvoiceRecord] = Field(default_factory=dict)
    contact: dict[str, Register] = Field(default_factory=dict)  # GHL standard field name → register
    custom: dict[str, Register] = Field(default_factory=dict)  # crm_fields key → register
    stage: Register | None = None  # pipeline stage of the client's latest appointment/invoice activity
    demographics_at: Register | None = None  # watermark of client.upserted events (value unused)
    next_visit: NextVisit | None = None  # as last computed (and written)
    patient: bool = False  # has had a paid invoice: the opportunity is won from then on
    clock: AwareDatetime | None = None  # latest event time applied: "now" for next-visit decisions
    crm: dict[str, CrmIds] = Field(default_factory=dict)  # GHL location label → ids
    applied_event_ids: tuple[str, ...] = ()  # most recent last, bounded by MAX_EVENT_IDS and the lateness watermark
    applied_event_at: tuple[AwareDatetime | None, ...] = ()  # their event times (aligned; streams/plan/horizon.py)
    folded_value: Decimal = ZERO  # net of the invoices folded out of `invoices` (streams/plan/horizon.py)
    # compact() has dropped something (an appointment, an invoice, an event id): from then on a late event may be
    # about what was forgotten. Until then a late historical event is applied like any other (backfill after live).
    forgotten: bool = False
    effects: tuple[PendingEffects, ...] = ()  # FIFO: execute in this order
    # Ops of dead-lettered events, never done: parked (they do not block later events) until the dead letter is
    # redriven or the event replayed (`plan(..., resume_failed=True)`), which puts them back into `effects`.
    failed: tuple[PendingEffects, ...] = ()
    # Added for marketing consent and memberships (issue 12); state written before loads with them empty.
    consent: dict[str, Register] = Field(default_factory=dict)  # DND channel (Email|SMS|Call) → opt_out|opt_in
    memberships: dict[str, MembershipRecord] = Field(default_factory=dict)

    @property
    def lifetime_value(self) -> Decimal:
        return sum((inv.net_amount for inv in self.invoices.values()), self.folded_value)

    @property
    def last_visit(self) -> tuple[date, str] | None:
        d, s = self.custom.get("last_visit_date"), self.custom.get("last_visit_service")
        return (date.fromisoformat(d.value), s.value if s else "") if d else None

    def knows_event(self, event_id: str) -> bool:
        return (event_id in self.applied_event_ids or any(p.event_id == event_id for p in self.effects)
                or any(p.event_id == event_id for p in self.failed))

    def parked_for(self, event_id: str) -> tuple[PendingEffects, ...]:
        """Failed entries a redrive/replay of `event_id` resumes: its own and those parked with its dead letter."""
        return tuple(p for p in self.failed if event_id in (p.event_id, p.parked_by))

    def pending_ops(self) -> list[CrmOp]:
        """Every op not yet done, in execution order (oldest event first)."""
        return [op for entry in self.effects for op in entry.remaining]

    def to_json(self) -> bytes:
        """Absent fields are None (a third of the bytes of a typical record): every changelog write is smaller."""
        return self.model_dump_json(exclude_none=True).encode()

    @classmethod
    def from_json(cls, data: bytes | str) -> ClientState:
        return cls.model_validate_json(data)


def mark_done(state: ClientState, op_id: str) -> ClientState:
    """Record that the executor completed `op_id`; drop the event's entry when all its ops are done."""
    entries: list[PendingEffects] = []
    for entry in state.effects:
        if any(op.op_id == op_id for op in entry.ops) and op_id not in entry.done:
            entry = entry.model_copy(update={"done": (*entry.done, op_id)})
        if entry.remaining:
            entries.append(entry)
    return state.model_copy(update={"effects": tuple(entries)})


def park_failed(state: ClientState, event_id: str) -> ClientState:
    """The event `event_id` is dead-lettered: move every pending entry to `failed` (not done, not applied) so
    later events of the client run, and a redrive of `event_id` resumes exactly the ops not done. Entries of
    older events still pending at that point are parked with it (one of them may be what failed)."""
    if not state.effects:
        return state
    parked = tuple(e.model_copy(update={"parked_by": event_id}) for e in state.effects)
    failed = (*(f for f in state.failed if f.event_id not in {e.event_id for e in parked}), *parked)
    return state.model_copy(update={"effects": (), "failed": failed[-MAX_FAILED:]})


def _with_ids(state: ClientState, location_label: str, **ids: str) -> ClientState:
    crm = dict(state.crm)
    crm[location_label] = crm.get(location_label, CrmIds()).model_copy(update=ids)
    return state.model_copy(update={"crm": crm})


def record_contact_id(state: ClientState, location_label: str, contact_id: str) -> ClientState:
    return _with_ids(state, location_label, contact_id=contact_id)


def record_opportunity_id(state: ClientState, location_label: str, opportunity_id: str) -> ClientState:
    return _with_ids(state, location_label, opportunity_id=opportunity_id)


__all__ = [
    "AppointmentRecord",
    "ClientState",
    "CrmIds",
    "InvoiceRecord",
    "MAX_EVENT_IDS",
    "MAX_FAILED",
    "MembershipRecord",
    "NextVisit",
    "OrderKey",
    "PendingEffects",
    "Register",
    "mark_done",
    "order_key",
    "park_failed",
    "record_contact_id",
    "record_opportunity_id",
]
