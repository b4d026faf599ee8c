"""Tolerant reading of AestheticsPro's CSV exports (clients, appointments, invoices) for `apro-sync backfill`.

Accepted columns and spellings: examples/exports/README.md. Headers match case-, space- and
separator-insensitively; values are parsed with the normalizer's helpers (streams/parsing.py). A row that cannot
be ordered or identified is rejected with its row number and column name (never its value).
"""

from __future__ import annotations

import codecs
import csv
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import date, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from streams.normalize.values import (
    FieldError,
    combine_date_time,
    parse_calendar_date,
    parse_email,
    parse_instant,
    parse_money,
    parse_phone,
)
from foundations.formats.raw import clean_text, id_issue, id_str, norm_key

MAX_FIELD_CHARS = 4096  # csv's own default limit is 128 KiB; an export cell is never near this
MAX_ROWS_PER_FILE = 20_000_000

# canonical column → accepted header spellings (compared after norm_key: case, spaces, `_`, `-`, `.` ignored)
CLIENT_COLUMNS: dict[str, tuple[str, ...]] = {
    "client_id": ("Client ID", "ClientID", "Client #", "Client No", "Client Number", "Patient ID", "ID"),
    "first_name": ("First Name", "FirstName", "First", "Given Name"),
    "last_name": ("Last Name", "LastName", "Last", "Surname"),
    "email": ("Email", "E-mail", "Email Address", "Primary Email"),
    "phone": ("Mobile Phone", "Cell Phone", "Mobile", "Cell", "Phone", "Phone Number", "Home Phone"),
    "date_of_birth": ("Date of Birth", "DOB", "Birth Date", "Birthdate", "Birthday"),
    "address": ("Address", "Address 1", "Address1", "Street", "Street Address"),
    "city": ("City", "Town"),
    "state": ("State", "Province", "Region"),
    "postal_code": ("Zip", "Zip Code", "Postal Code", "Postcode"),
    "location_id": ("Location ID", "LocationID", "Location #", "Clinic ID", "Home Location ID"),
    "location_name": ("Location", "Location Name", "Clinic", "Home Location"),
}
APPOINTMENT_COLUMNS: dict[str, tuple[str, ...]] = {
    "appointment_id": ("Appointment ID", "Appt ID", "AppointmentID", "ApptID", "Appointment #", "Booking ID"),
    "client_id": CLIENT_COLUMNS["client_id"][:-1],
    "start": ("Start", "Start Time", "Start Date Time", "Appointment Start", "Appointment Date Time", "Appt Date Time",
              "Date Time", "Scheduled For"),
    "date": ("Appointment Date", "Appt Date", "Date", "Start Date"),
    "time": ("Appointment Time", "Appt Time", "Time"),
    "status": ("Status", "Appointment Status", "Appt Status"),
    "services": ("Services", "Service", "Service Name", "Service Names", "Treatment", "Treatments"),
    "service_type": ("Service Type", "Service Types", "Category", "Service Category"),
    "provider": ("Provider", "Provider Name", "Staff", "Staff Name", "Employee"),
    "booked_at": ("Booked Date", "Booked On", "Date Booked", "Created Date", "Created", "Date Created"),
    "changed_at": ("Cancelled Date", "Canceled Date", "Status Date", "Last Modified", "Modified Date"),
    "location_id": CLIENT_COLUMNS["location_id"],
    "location_name": CLIENT_COLUMNS["location_name"],
}
INVOICE_COLUMNS: dict[str, tuple[str, ...]] = {
    "invoice_id": ("Invoice ID", "InvoiceID", "Invoice Key", "Ticket ID", "Sale ID"),
    "invoice_number": ("Invoice Number", "Invoice #", "Invoice No", "Invoice Num", "Number"),
    "client_id": CLIENT_COLUMNS["client_id"][:-1],
    "appointment_id": APPOINTMENT_COLUMNS["appointment_id"],
    "invoice_date": ("Invoice Date", "Date", "Sale Date"),
    "paid_at": ("Paid Date", "Date Paid", "Payment Date", "Paid On", "Paid At", "Closed Date"),
    "total": ("Total", "Invoice Total", "Grand Total", "Total Amount"),
    "amount_paid": ("Amount Paid", "Paid Amount", "Paid", "Payment Amount", "Payments"),
    "refunded": ("Refunded", "Refund Amount", "Refunded Amount", "Amount Refunded", "Refunds"),
    "status": ("Status", "Invoice Status", "Payment Status"),
    "items": ("Items", "Line Items", "Services", "Products", "Description"),
    "item_type": ("Item Type", "Type", "Category"),
    "changed_at": ("Refund Date", "Refunded Date", "Void Date", "Voided Date", "Status Date"),
    "location_id": CLIENT_COLUMNS["location_id"],
    "location_name": CLIENT_COLUMNS["location_name"],
}
REQUIRED = {"clients": ("client_id",), "appointments": ("appointment_id", "client_id"),
            "invoices": ("invoice_id", "client_id")}
COLUMNS = {"clients": CLIENT_COLUMNS, "appointments": APPOINTMENT_COLUMNS, "invoices": INVOICE_COLUMNS}

APPOINTMENT_STATUS_WORDS = {
    "booked": "booked", "scheduled": "booked", "confirmed": "booked", "pending": "booked", "checkedin": "booked",
    "arrived": "booked", "rescheduled": "booked", "new": "booked",
    "completed": "completed", "complete": "completed", "checkedout": "completed", "finished": "completed",
    "done": "completed", "closed": "completed",
    "cancelled": "cancelled", "canceled": "cancelled", "cancel": "cancelled", "latecancel": "cancelled",
    "latecancelled": "cancelled", "latecanceled": "cancelled",
    "noshow": "no_show", "noshowed": "no_show", "missed": "no_show",
    "deleted": "deleted", "removed": "deleted",
}
INVOICE_STATUS_WORDS = {
    "paid": "paid", "paidinfull": "paid", "closed": "paid", "complete": "paid", "completed": "paid",
    "refunded": "refunded", "partiallyrefunded": "refunded", "partialrefund": "refunded",
    "void": "voided", "voided": "voided", "cancelled": "voided", "canceled": "voided",
    "open": "open", "unpaid": "open", "partiallypaid": "open", "pending": "open", "draft": "open",
}


class ExportError(ValueError):
    """A file that cannot be read at all (missing required column, not CSV). Never quotes a value."""


@dataclass(frozen=True, slots=True)
class Reject:
    resource: str
    row: int  # 1-based data row (the header is row 0)
    column: str
    reason: str


@dataclass(frozen=True, slots=True)
class ClientRow:
    row: int
    client_id: str
    first_name: str | None
    last_name: str | None
    email: str | None
    phone: str | None
    date_of_birth: date | None
    address: str | None
    city: str | None
    state: str | None
    postal_code: str | None
    location_id: str | None
    location_name: str | None


@dataclass(frozen=True, slots=True)
class AppointmentRow:
    row: int
    appointment_id: str
    client_id: str
    start: datetime
    status: str  # booked | completed | cancelled | no_show | deleted
    services: str | None
    service_type: str | None
    provider: str | None
    booked_at: datetime | None
    changed_at: datetime | None
    location_id: str | None
    location_name: str | None


@dataclass(frozen=True, slots=True)
class InvoiceRow:
    row: int
    invoice_id: str
    invoice_number: str | None
    client_id: str
    appointment_id: str | None
    invoice_date: date | None
    paid_at: datetime | None
    amount_paid: Decimal
    refunded: Decimal
    status: str  # paid | refunded | voided | open
    items: str | None
    item_type: str | None
    changed_at: datetime | None
    location_id: str | None
    location_name: str | None


@dataclass
class Export:
    clients: list[ClientRow] = field(default_factory=list)
    appointments: list[AppointmentRow] = field(default_factory=list)
    invoices: list[InvoiceRow] = field(default_factory=list)
    rejects: list[Reject] = field(default_factory=list)
    lenient: dict[str, int] = field(default_factory=dict)  # "<resource>.<column>" → invalid values dropped


def header_map(resource: str, headers: list[str]) -> dict[str, int]:
    """canonical column → index in `headers`; the first header matching a spelling wins (earlier spellings first)."""
    spec = COLUMNS[resource]
    index = {}
    for i, name in enumerate(headers):
        index.setdefault(norm_key(name.strip().lstrip("\ufeff")), i)
    found: dict[str, int] = {}
    taken: set[int] = set()
    for column, spellings in spec.items():
        for spelling in (column, *spellings):
            i = index.get(norm_key(spelling))
            if i is not None and i not in taken:
                found[column] = i
                taken.add(i)
                break
    missing = [c for c in REQUIRED[resource] if c not in found]
    if missing:
        raise ExportError(f"{resource} export: no column for {', '.join(missing)} "
                          "(accepted spellings: examples/exports/README.md)")
    return found


class _Row:
    def __init__(self, resource: str, number: int, cells: list[str], columns: dict[str, int], export: Export) -> None:
        self.resource, self.number, self.cells, self.columns, self.export = resource, number, cells, columns, export

    def raw(self, column: str) -> str | None:
        i = self.columns.get(column)
        if i is None or i >= len(self.cells):
            return None
        text = clean_text(self.cells[i]).strip()
        return text or None

    def text(self, column: str, limit: int = 500) -> str | None:
        value = self.raw(column)
        return value[:limit] if value else None

    def ident(self, column: str) -> str:
        value = self.raw(column)
        found = id_str(value)
        if found is None:
            raise _Bad(column, id_issue(value) or "missing")
        return found

    def lenient(self, column: str, parse: Any) -> Any:
        value = self.raw(column)
        try:
            out = parse(value)
        except FieldError:
            out = None
        if value is not None and out is None:
            key = f"{self.resource}.{column}"
            self.export.lenient[key] = self.export.lenient.get(key, 0) + 1
        return out

    def instant(self, column: str, tz: ZoneInfo, value: Any = None) -> datetime | None:
        try:
            return parse_instant(self.raw(column) if value is None else value, tz)
        except FieldError as exc:
            raise _Bad(column, str(exc)) from None

    def money(self, column: str) -> Decimal | None:
        try:
            return parse_money(self.raw(column))
        except FieldError as exc:
            raise _Bad(column, str(exc)) from None


class _Bad(Exception):
    def __init__(self, column: str, reason: str) -> None:
        super().__init__(reason)
        self.column, self.reason = column, reason


def encoding_of(path: Path) -> str:
    """UTF-8 (with or without a byte-order mark) when the whole file decodes as such, else Windows-1252, which
    older Windows exports use (a name like `Zoë` must not become `Zo�`)."""
    decoder = codecs.getincrementaldecoder("utf-8")()
    with open(path, "rb") as handle:
        try:
            for chunk in iter(lambda: handle.read(1 << 20), b""):
                decoder.decode(chunk)
            decoder.decode(b"", final=True)
        except UnicodeDecodeError:
            return "cp1252"
    return "utf-8-sig"


def _rows(path: Path, resource: str, export: Export) -> Iterator[_Row]:
    csv.field_size_limit(MAX_FIELD_CHARS)
    with open(path, newline="", encoding=encoding_of(path), errors="replace") as handle:
        sample = handle.read(8192)
        handle.seek(0)
        try:
            dialect: Any = csv.Sniffer().sniff(sample, delimiters=",;\t|")
        except csv.Error:
            dialect = csv.excel
        reader = csv.reader(handle, dialect)
        try:
            headers = next(reader)
        except StopIteration:
            raise ExportError(f"{resource} export is empty") from None
        except csv.Error as exc:
            raise ExportError(f"{resource} export header: {exc}") from None
        columns = header_map(resource, headers)
        number = 0
        while True:
            number += 1
            try:
                cells = next(reader)
            except StopIteration:
                return
            except csv.Error:
                export.rejects.append(Reject(resource, number, "*",
                                             "malformed CSV row (field too long or bad quoting)"))
                continue
            if number > MAX_ROWS_PER_FILE:
                raise ExportError(f"{resource} export has more than {MAX_ROWS_PER_FILE} rows")
            if not any(c.strip() for c in cells):
                continue  # blank line
            yield _Row(resource, number, cells, columns, export)


def read_clients(path: Path, export: Export, region: str = "US") -> None:
    for r in _rows(path, "clients", export):
        try:
            export.clients.append(ClientRow(
                row=r.number, client_id=r.ident("client_id"), first_name=r.text("first_name", 200),
                last_name=r.text("last_name", 200), email=r.lenient("email", parse_email),
                phone=r.lenient("phone", lambda v: parse_phone(v, region)),
                date_of_birth=r.lenient("date_of_birth", parse_calendar_date),
                address=r.text("address", 200), city=r.text("city", 100), state=r.text("state", 100),
                postal_code=r.text("postal_code", 20), location_id=r.text("location_id", 128),
                location_name=r.text("location_name", 200)))
        except _Bad as bad:
            export.rejects.append(Reject("clients", r.number, bad.column, bad.reason))


def _word(table: dict[str, str], text: str | None) -> str | None:
    return table.get(norm_key(text)) if text else None


def read_appointments(path: Path, export: Export, tz: ZoneInfo) -> None:
    for r in _rows(path, "appointments", export):
        try:
            start = r.instant("start", tz) if r.raw("start") else None
            if start is None:
                day, clock = r.raw("date"), r.raw("time")
                start = r.instant("date", tz, combine_date_time(day, clock)) if day else None
            if start is None:
                raise _Bad("start", "missing")
            status = _word(APPOINTMENT_STATUS_WORDS, r.raw("status")) if r.raw("status") else "booked"
            if status is None:
                raise _Bad("status", "unknown appointment status")
            export.appointments.append(AppointmentRow(
                row=r.number, appointment_id=r.ident("appointment_id"), client_id=r.ident("client_id"), start=start,
                status=status, services=r.text("services"), service_type=r.text("service_type", 200),
                provider=r.text("provider", 200), booked_at=r.instant("booked_at", tz),
                changed_at=r.instant("changed_at", tz), location_id=r.text("location_id", 128),
                location_name=r.text("location_name", 200)))
        except _Bad as bad:
            export.rejects.append(Reject("appointments", r.number, bad.column, bad.reason))


def read_invoices(path: Path, export: Export, tz: ZoneInfo) -> None:
    for r in _rows(path, "invoices", export):
        try:
            status = _word(INVOICE_STATUS_WORDS, r.raw("status")) if r.raw("status") else "paid"
            if status is None:
                raise _Bad("status", "unknown invoice status")
            paid = r.money("amount_paid")
            total = r.money("total")
            amount = paid if paid is not None else total
            if amount is None and status != "open":
                raise _Bad("amount_paid", "missing (no Amount Paid or Total)")
            if amount is not None and amount < 0:
                raise _Bad("amount_paid", "negative")
            refunded = r.money("refunded") or Decimal("0.00")
            try:
                invoice_date = parse_calendar_date(r.raw("invoice_date"))
            except FieldError as exc:
                raise _Bad("invoice_date", str(exc)) from None
            paid_at = r.instant("paid_at", tz)
            if paid_at is None and invoice_date is None and status != "open":
                raise _Bad("paid_at", "missing (no Paid Date or Invoice Date)")
            appointment_id = r.raw("appointment_id")
            export.invoices.append(InvoiceRow(
                row=r.number, invoice_id=r.ident("invoice_id"), invoice_number=r.text("invoice_number", 64),
                client_id=r.ident("client_id"),
                appointment_id=r.ident("appointment_id") if appointment_id else None,
                invoice_date=invoice_date, paid_at=paid_at, amount_paid=amount or Decimal("0.00"),
                refunded=abs(refunded), status=status, items=r.text("items"), item_type=r.text("item_type", 64),
                changed_at=r.instant("changed_at", tz), location_id=r.text("location_id", 128),
                location_name=r.text("location_name", 200)))
        except _Bad as bad:
            export.rejects.append(Reject("invoices", r.number, bad.column, bad.reason))


def read_export(clients: Path | None, appointments: Path | None, invoices: Path | None, *, tz: ZoneInfo,
                region: str = "US") -> Export:
    export = Export()
    if clients is not None:
        read_clients(clients, export, region)
    if appointments is not None:
        read_appointments(appointments, export, tz)
    if invoices is not None:
        read_invoices(invoices, export, tz)
    return export


__all__ = ["AppointmentRow", "ClientRow", "Export", "ExportError", "InvoiceRow", "Reject", "header_map",
           "read_export"]
