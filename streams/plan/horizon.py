"""Bounded per-client state: what a client's state forgets, and the lateness rule that keeps replays exact.

Appointments and invoices past their horizon leave the state (an invoice's net folds into `folded_value`);
an appointment or invoice event older than the lateness watermark is stale, so nothing forgotten comes back
or counts twice. Rules: docs/sync-engine.md, "Bounded state"."""

from __future__ import annotations

from datetime import datetime, timedelta

from foundations.formats.normalized import EventKind
from streams.plan.state import MAX_EVENT_IDS, ClientState, InvoiceRecord

# An appointment or invoice event more than this older than the client's newest event is stale.
LATE_HORIZON = timedelta(days=30)
# An invoice untouched for this long (card refunds are normally possible for about 120-180 days) is folded.
INVOICE_HORIZON = timedelta(days=180)

_LATE_KINDS = frozenset({
    EventKind.APPOINTMENT_BOOKED, EventKind.APPOINTMENT_CANCELLED, EventKind.APPOINTMENT_NO_SHOW,
    EventKind.APPOINTMENT_UPDATED, EventKind.APPOINTMENT_DELETED,
    EventKind.INVOICE_PAID, EventKind.INVOICE_REFUNDED, EventKind.INVOICE_VOIDED,
})


def watermark(state: ClientState) -> datetime | None:
    """Appointment and invoice events before this instant are stale (derived from the monotonic clock)."""
    return state.clock - LATE_HORIZON if state.clock is not None else None


def is_late(kind: EventKind, at: datetime, state: ClientState, *, historical: bool = False) -> bool:
    """Whether an event of `kind` at `at` is older than the client's lateness watermark. A historical (backfill)
    event is late only once the state has forgotten something: before that, nothing it is about can be missing,
    so a backfill run after the client's live events counts in full (and compaction waits for a live event)."""
    wm = watermark(state)
    return kind in _LATE_KINDS and wm is not None and at < wm and (state.forgotten or not historical)


def stamp_invoices(before: dict[str, InvoiceRecord], after: dict[str, InvoiceRecord],
                   at: datetime) -> dict[str, InvoiceRecord]:
    """Record `at` as the latest event time of every invoice the event changed (what folding is decided by)."""
    out = dict(after)
    for inv_id, rec in after.items():
        if before.get(inv_id) != rec and (rec.last_event_at is None or at > rec.last_event_at):
            out[inv_id] = rec.model_copy(update={"last_event_at": at})
    return out


def record_applied(state: ClientState, event_id: str, at: datetime) -> tuple[tuple[str, ...],
                                                                              tuple[datetime | None, ...]]:
    """The applied-event window with `event_id` appended, its times kept aligned (unknown for older states)."""
    ids, times = state.applied_event_ids, state.applied_event_at
    if len(times) != len(ids):
        times = (None,) * len(ids)
    return (*ids, event_id)[-MAX_EVENT_IDS:], (*times, at)[-MAX_EVENT_IDS:]


def compact(state: ClientState) -> ClientState:
    """Forget what the horizon says can no longer change the CRM (a function of the state alone).

    - appointments whose last event and start are both before the watermark (never the next visit: that starts
      after the clock);
    - invoices whose latest event is more than INVOICE_HORIZON before the clock: their net amount is added to
      `folded_value`, so the lifetime value is unchanged;
    - applied event ids older than the watermark (their replays are stale).
    """
    wm = watermark(state)
    if wm is None or state.clock is None:
        return state
    fold_before = state.clock - INVOICE_HORIZON
    appointments = {k: a for k, a in state.appointments.items()
                    if a.last_event_at >= wm or (a.start is not None and a.start >= wm)}
    folded = state.folded_value
    invoices: dict[str, InvoiceRecord] = {}
    for inv_id, rec in state.invoices.items():
        if rec.last_event_at is not None and rec.last_event_at < fold_before:
            folded += rec.net_amount
        else:
            invoices[inv_id] = rec
    ids, times = state.applied_event_ids, state.applied_event_at
    if len(times) == len(ids):
        kept = [(i, t) for i, t in zip(ids, times, strict=True) if t is None or t >= wm]
        ids, times = tuple(i for i, _ in kept), tuple(t for _, t in kept)
    if (len(appointments) == len(state.appointments) and len(invoices) == len(state.invoices)
            and ids == state.applied_event_ids):
        return state
    return state.model_copy(update={"appointments": appointments, "invoices": invoices, "folded_value": folded,
                                    "applied_event_ids": ids, "applied_event_at": times, "forgotten": True})


__all__ = ["INVOICE_HORIZON", "LATE_HORIZON", "compact", "is_late", "record_applied", "stamp_invoices", "watermark"]
