"""Export rows → historical webhook bodies, in per-client time order, with deterministic event ids.

Each body has the shape of a live webhook (examples/webhooks/), so the normalizer and planner treat it like one;
the `apro-backfill` header marks it historical (docs/sync-rules.md, "Historical events (backfill)"). The event id
is a hash of the row's own fields: the same row gives the same id on every run.
"""

from __future__ import annotations

import hashlib
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field, fields
from datetime import datetime, time, timedelta
from decimal import Decimal
from typing import Any
from zoneinfo import ZoneInfo

import orjson

from apro_sync.ops.backfill_exports import AppointmentRow, ClientRow, Export, InvoiceRow

# Ordering of events with the same time: the client first, then bookings, payments, reversals.
_RANK = {"client": 0, "appointment": 1, "paid": 2, "reversal": 3}
_APPOINTMENT_EVENT = {"booked": "appointment.booked", "completed": "appointment.booked",
                      "cancelled": "appointment.cancelled", "no_show": "appointment.no_show",
                      "deleted": "appointment.deleted"}
# GoHighLevel calls a historical event costs (docs/benchmarks.md "(a) Which calls"; no note and no enrollment for
# historical events): contact write and opportunity write (a patient's past appointment: the contact only; the
# patient tag once per client). An estimate for the ETA; `--dry-run` counts exactly. A client's first event adds the
# contact searches (email, phone: the collision check) and the opportunity search.
CALLS = {"client": 1, "appointment": 2, "paid": 2, "reversal": 2}
FIRST_EVENT_EXTRA_CALLS = 3


@dataclass(frozen=True, slots=True)
class HistoricalEvent:
    """One event; its JSON body is built when asked for (a 1,000,000-row export would not fit in memory)."""

    client_id: str
    at: datetime
    rank: int
    event_id: str
    kind: str  # client | appointment | paid | reversal
    location_id: str | None
    row: Any = field(repr=False, compare=False)
    builder: "EventBuilder" = field(repr=False, compare=False)
    payload: bytes | None = field(default=None, repr=False, compare=False)

    @property
    def body(self) -> bytes:
        return self.payload if self.payload is not None else self.builder.body_of(self)

    @property
    def sort_key(self) -> tuple[datetime, int, str]:
        return (self.at, self.rank, self.event_id)


_FIELD_NAMES: dict[type, tuple[str, ...]] = {}


def _event_id(resource: str, row: Any, suffix: str = "") -> str:
    names = _FIELD_NAMES.get(type(row))
    if names is None:
        names = _FIELD_NAMES[type(row)] = tuple(f.name for f in fields(row) if f.name != "row")
    values = {name: getattr(row, name) for name in names}
    digest = hashlib.sha256(orjson.dumps([resource, suffix, values], default=str, option=orjson.OPT_SORT_KEYS))
    return f"backfill-{resource[:4]}-{digest.hexdigest()[:32]}{suffix}"


def _iso(dt: datetime) -> str:
    return dt.isoformat()


def _client_block(client_id: str, row: ClientRow | None) -> dict[str, Any]:
    block: dict[str, Any] = {"id": client_id}
    if row is None:
        return block
    for key, value in (("firstName", row.first_name), ("lastName", row.last_name), ("email", row.email),
                       ("phone", row.phone), ("address1", row.address), ("city", row.city), ("state", row.state),
                       ("postalCode", row.postal_code)):
        if value:
            block[key] = value
    if row.date_of_birth:
        block["dateOfBirth"] = row.date_of_birth.isoformat()
    return block


class EventBuilder:
    """Builds every client's events; `location` is the id for rows that carry none (and the filter)."""

    def __init__(self, export: Export, *, as_of: datetime, tz: ZoneInfo, location: str | None = None) -> None:
        self.export = export
        self.as_of = as_of
        self.tz = tz
        self.location = location
        self.clients = {c.client_id: c for c in export.clients}
        self.appointments = {a.appointment_id: a for a in export.appointments}
        self.filtered_out = 0  # rows of another location than --location
        self.unpaid_invoices = 0

    def _location(self, row_location: str | None, row_name: str | None,
                  client: ClientRow | None) -> dict[str, Any] | None:
        loc_id = row_location or (client.location_id if client else None) or self.location
        name = row_name or (client.location_name if client else None)
        if self.location is not None and loc_id is not None and loc_id != self.location:
            return None
        out: dict[str, Any] = {"timezone": self.tz.key}
        if loc_id:
            out["id"] = loc_id
        if name:
            out["name"] = name
        return out

    def _event(self, row: Any, client_id: str, at: datetime, kind: str, event_id: str, location: dict[str, Any],
               build: bool, body: Any) -> HistoricalEvent:
        """`body` is a function returning (event name, blocks); called only when `build`."""
        payload = None
        if build:
            name, blocks = body()
            payload = self._body(event_id, name, at, client_id, location, **blocks)
        return HistoricalEvent(client_id, at, _RANK[kind], event_id, kind, location.get("id"), row, self, payload)

    def body_of(self, event: HistoricalEvent) -> bytes:
        """The JSON body of an event built earlier (rebuilt from its row: the same bytes every time)."""
        if event.kind == "client":
            built = [self.client_event(event.row, build=True)]
        elif event.kind == "appointment":
            built = [self.appointment_event(event.row, build=True)]
        else:
            built = self.invoice_events(event.row, build=True)
        for candidate in built:
            if candidate is not None and candidate.event_id == event.event_id and candidate.payload is not None:
                return candidate.payload
        raise LookupError("event not rebuilt from its row")

    def _body(self, event_id: str, kind: str, at: datetime, client_id: str, location: dict[str, Any],
              **blocks: Any) -> bytes:
        body = {"eventId": event_id, "event": kind, "occurredAt": _iso(at), "source": "backfill",
                "location": location, "client": _client_block(client_id, self.clients.get(client_id)), **blocks}
        return orjson.dumps(body)

    def _cap(self, at: datetime) -> datetime:
        return min(at, self.as_of)

    def client_event(self, row: ClientRow, build: bool = False) -> HistoricalEvent | None:
        location = self._location(row.location_id, row.location_name, row)
        if location is None:
            self.filtered_out += not build
            return None
        # A client row says what the client looks like at export time.
        return self._event(row, row.client_id, self.as_of, "client", _event_id("clients", row), location, build,
                           lambda: ("client.updated", {}))

    def _appointment_block(self, row: AppointmentRow, status: str) -> dict[str, Any]:
        block: dict[str, Any] = {"appointmentId": row.appointment_id, "status": status,
                                 "startDateTime": _iso(row.start)}
        if row.services:
            block["services"] = row.services
        if row.service_type:
            block["serviceType"] = row.service_type
        if row.provider:
            block["provider"] = row.provider
        return block

    def appointment_event(self, row: AppointmentRow, build: bool = False) -> HistoricalEvent | None:
        client = self.clients.get(row.client_id)
        location = self._location(row.location_id, row.location_name, client)
        if location is None:
            self.filtered_out += not build
            return None
        kind = _APPOINTMENT_EVENT[row.status]
        if row.status in ("booked", "completed"):
            at = self._cap(row.booked_at or row.start)
        else:
            at = self._cap(row.changed_at or row.start)
        status = {"completed": "Booked", "booked": "Booked", "cancelled": "Cancelled", "no_show": "No Show",
                  "deleted": "Deleted"}[row.status]
        return self._event(row, row.client_id, at, "appointment", _event_id("appointments", row), location, build,
                           lambda: (kind, {"appointment": self._appointment_block(row, status)}))

    def invoice_events(self, row: InvoiceRow, build: bool = False) -> list[HistoricalEvent]:
        client = self.clients.get(row.client_id)
        location = self._location(row.location_id, row.location_name, client)
        if location is None:
            self.filtered_out += not build
            return []
        if row.status == "open":
            self.unpaid_invoices += not build
            return []
        if row.paid_at is not None:
            paid_at = row.paid_at
        else:
            assert row.invoice_date is not None  # the reader rejects a paid invoice with neither
            paid_at = datetime.combine(row.invoice_date, time(12), self.tz)
        paid_at = self._cap(paid_at)
        events = [self._event(row, row.client_id, paid_at, "paid", _event_id("invoices", row, ":paid"), location,
                              build, lambda: ("invoice.paid", {"invoice": self._paid_block(row, paid_at)}))]
        if row.status in ("refunded", "voided"):
            at = max(self._cap(row.changed_at or paid_at + timedelta(seconds=1)), paid_at)
            kind = "invoice.refunded" if row.status == "refunded" else "invoice.voided"
            events.append(self._event(row, row.client_id, at, "reversal", _event_id("invoices", row, f":{row.status}"),
                                      location, build, lambda: (kind, {"invoice": self._reversal_block(row)})))
        return events

    def _paid_block(self, row: InvoiceRow, paid_at: datetime) -> dict[str, Any]:
        invoice: dict[str, Any] = {"id": row.invoice_id, "status": "Paid", "amountPaid": str(row.amount_paid),
                                   "paidDate": _iso(paid_at)}
        if row.invoice_number:
            invoice["invoiceNumber"] = row.invoice_number
        if row.invoice_date:
            invoice["invoiceDate"] = row.invoice_date.isoformat()
        if row.items:
            invoice["items"] = [{"name": name.strip(), "type": row.item_type or "Service"}
                                for name in row.items.split(",") if name.strip()]
        if row.appointment_id:
            appt = self.appointments.get(row.appointment_id)
            invoice["appointment"] = (self._appointment_block(appt, "Completed") if appt is not None
                                      else {"appointmentId": row.appointment_id})
        return invoice

    @staticmethod
    def _reversal_block(row: InvoiceRow) -> dict[str, Any]:
        reversal: dict[str, Any] = {"id": row.invoice_id, "status": row.status.capitalize()}
        if row.status == "refunded":  # no refunded amount in the export: a full refund
            reversal["refundAmount"] = str(min(row.refunded, row.amount_paid) if row.refunded else row.amount_paid)
        else:
            reversal["total"] = str(row.amount_paid)
        if row.invoice_number:
            reversal["invoiceNumber"] = row.invoice_number
        return reversal

    def by_client(self) -> dict[str, list[HistoricalEvent]]:
        """Every client's events in time order (client ids in a stable order)."""
        out: dict[str, list[HistoricalEvent]] = defaultdict(list)
        for c in self.export.clients:
            if (ev := self.client_event(c)) is not None:
                out[c.client_id].append(ev)
        for a in self.export.appointments:
            if (ev := self.appointment_event(a)) is not None:
                out[a.client_id].append(ev)
        for i in self.export.invoices:
            out[i.client_id].extend(self.invoice_events(i))
        for events in out.values():
            events.sort(key=lambda e: e.sort_key)
        return {cid: out[cid] for cid in sorted(out)}


def ordered(by_client: dict[str, list[HistoricalEvent]]) -> Iterator[HistoricalEvent]:
    """The publishing order: client by client, each client's events by time. Deterministic for one export."""
    for events in by_client.values():
        yield from events


def expected_lifetime_value(export: Export) -> dict[str, Decimal]:
    """What each client's Patient Lifetime Value must be after the backfill (the export's own sum)."""
    out: dict[str, Decimal] = defaultdict(lambda: Decimal("0.00"))
    for inv in export.invoices:
        if inv.status == "paid":
            out[inv.client_id] += inv.amount_paid
        elif inv.status == "refunded" and inv.refunded:
            out[inv.client_id] += max(inv.amount_paid - inv.refunded, Decimal("0.00"))
        else:
            out[inv.client_id] += Decimal("0.00")
    return dict(out)


__all__ = ["CALLS", "EventBuilder", "HistoricalEvent", "expected_lifetime_value", "ordered"]
