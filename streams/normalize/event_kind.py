"""Event kind and status words → what happened (pure).

AestheticsPro spells the same event many ways (`appointment.created`, `AppointmentCreated`, `Appointment.Created`,
`appointment_booked`, `type: appointment` + `action: cancelled`) and statuses likewise (Booked / Scheduled /
Confirmed, Cancelled / Canceled, No Show / NoShow / no_show). Everything is reduced to lower-case words first.
"""

from __future__ import annotations

import re
from collections.abc import Collection
from dataclasses import dataclass
from functools import lru_cache
from enum import StrEnum
from typing import TypeVar

from foundations.formats.normalized import AppointmentStatus, EventKind, MembershipStatus


class Entity(StrEnum):
    CLIENT = "client"
    APPOINTMENT = "appointment"
    INVOICE = "invoice"
    MEMBERSHIP = "membership"


_ENTITY_WORDS = {
    "client": Entity.CLIENT, "clients": Entity.CLIENT, "customer": Entity.CLIENT, "customers": Entity.CLIENT,
    "patient": Entity.CLIENT, "patients": Entity.CLIENT, "guest": Entity.CLIENT, "contact": Entity.CLIENT,
    "appointment": Entity.APPOINTMENT, "appointments": Entity.APPOINTMENT, "appt": Entity.APPOINTMENT,
    "appts": Entity.APPOINTMENT, "booking": Entity.APPOINTMENT, "bookings": Entity.APPOINTMENT,
    "invoice": Entity.INVOICE, "invoices": Entity.INVOICE, "payment": Entity.INVOICE, "sale": Entity.INVOICE,
    "ticket": Entity.INVOICE,
    "membership": Entity.MEMBERSHIP, "memberships": Entity.MEMBERSHIP, "clientmembership": Entity.MEMBERSHIP,
    "subscription": Entity.MEMBERSHIP, "subscriptions": Entity.MEMBERSHIP,
}
_TEST_WORDS = {"test", "ping", "testping", "webhooktest", "verification", "verify", "hello"}

# Status / action words, compared with separators removed ("No Show" → "noshow").
BOOKED_WORDS = {"booked", "book", "scheduled", "schedule", "confirmed", "confirm", "created", "create", "new",
                "added", "add", "pending", "requested"}
CANCELLED_WORDS = {"cancelled", "canceled", "cancel", "cancellation", "lateCancel".lower(), "latecancelled",
                   "latecanceled"}
NO_SHOW_WORDS = {"noshow", "noshowed", "noshown", "missed", "didnotshow", "dns"}
UPDATED_WORDS = {"updated", "update", "rescheduled", "reschedule", "changed", "modified", "edited", "moved",
                 "saved", "upserted"}
DELETED_WORDS = {"deleted", "delete", "removed", "remove", "destroyed"}
COMPLETED_WORDS = {"completed", "complete", "checkedout", "checkout", "finished", "closed"}
PAID_WORDS = {"paid", "pay", "payment", "paymentreceived", "closed", "completed", "settled"}
REFUNDED_WORDS = {"refunded", "refund", "partiallyrefunded", "refundissued"}
VOIDED_WORDS = {"voided", "void", "cancelled", "canceled"}
RENEWED_WORDS = {"renewed", "renew", "renewal", "autorenewed", "rebilled", "extended"}
EXPIRED_WORDS = {"expired", "expire", "expiration", "lapsed", "ended", "end", "terminated"}
MEMBERSHIP_CREATED_WORDS = {"created", "create", "new", "added", "add", "started", "start", "activated",
                            "enrolled", "joined", "purchased", "sold", "signup", "signedup"}
ACTIVE_WORDS = {"active", "current", "activated", "enrolled"}


def words(text: str) -> list[str]:
    """`AppointmentCreated` / `appointment.no_show` / `Appointment Created` → lower-case words."""
    spaced = re.sub(r"(?<=[a-z0-9])(?=[A-Z])", " ", text)
    return [w for w in re.split(r"[^A-Za-z0-9]+", spaced.lower()) if w]


_NOT_WORD = re.compile(r"[^a-z0-9]")


def squash(text: str | None) -> str:
    """`No Show` / `no_show` / `NoShow` → `noshow`."""
    return _NOT_WORD.sub("", (text or "").lower())


@dataclass(frozen=True)
class KindWords:
    entity: Entity | None
    action: str  # squashed action words ("created", "noshow"), "" when none
    is_test: bool


@lru_cache(maxsize=1024)
def read_kind(kind: str | None, action: str | None = None) -> KindWords:
    """Split an event kind (plus an optional separate action field) into entity and action.

    Memoised (pure, the result is frozen): a sender spells its few event kinds the same way every time."""
    all_words = words(kind or "") + words(action or "")
    entity = None
    rest: list[str] = []
    for word in all_words:
        if entity is None and word in _ENTITY_WORDS:
            entity = _ENTITY_WORDS[word]
        elif word not in _ENTITY_WORDS and word not in {"event", "webhook", "hook"}:
            rest.append(word)
    joined = "".join(rest)
    is_test = bool(_TEST_WORDS.intersection(all_words)) or joined in _TEST_WORDS
    return KindWords(entity, joined, is_test)


T = TypeVar("T")
_STATUS_CHANGE_WORDS = {"statuschanged", "status"}


def _first(word: str, table: tuple[tuple[Collection[str], T], ...]) -> T | None:
    """The answer of the first row whose words hold `word` (rows are in order of precedence)."""
    for row_words, answer in table:
        if word in row_words:
            return answer
    return None


_APPOINTMENT_STATUSES = (
    (CANCELLED_WORDS, AppointmentStatus.CANCELLED),
    (NO_SHOW_WORDS, AppointmentStatus.NO_SHOW),
    (DELETED_WORDS, AppointmentStatus.DELETED),
    (COMPLETED_WORDS, AppointmentStatus.COMPLETED),
    (BOOKED_WORDS | {"rescheduled", "checkedin", "arrived", "inprogress"}, AppointmentStatus.BOOKED),
)
_APPOINTMENT_ACTIONS = (
    (CANCELLED_WORDS, (EventKind.APPOINTMENT_CANCELLED, AppointmentStatus.CANCELLED)),
    (NO_SHOW_WORDS, (EventKind.APPOINTMENT_NO_SHOW, AppointmentStatus.NO_SHOW)),
    (DELETED_WORDS, (EventKind.APPOINTMENT_DELETED, AppointmentStatus.DELETED)),
    (BOOKED_WORDS, (EventKind.APPOINTMENT_BOOKED, AppointmentStatus.BOOKED)),
)
# An update whose status says one of these is that change (the status word itself names it).
_APPOINTMENT_BY_STATUS = {
    AppointmentStatus.CANCELLED: EventKind.APPOINTMENT_CANCELLED,
    AppointmentStatus.NO_SHOW: EventKind.APPOINTMENT_NO_SHOW,
    AppointmentStatus.DELETED: EventKind.APPOINTMENT_DELETED,
}
_INVOICE_ACTIONS = (
    (REFUNDED_WORDS, EventKind.INVOICE_REFUNDED),
    ({"voided", "void"}, EventKind.INVOICE_VOIDED),
    (PAID_WORDS, EventKind.INVOICE_PAID),
)
_INVOICE_STATUSES = (
    (REFUNDED_WORDS, EventKind.INVOICE_REFUNDED),
    (VOIDED_WORDS, EventKind.INVOICE_VOIDED),
    ({"paid", "paidinfull", "closed", "completed", "settled"}, EventKind.INVOICE_PAID),
)
_MEMBERSHIP_STATUSES = (
    (ACTIVE_WORDS, MembershipStatus.ACTIVE),
    (CANCELLED_WORDS, MembershipStatus.CANCELLED),
    (EXPIRED_WORDS, MembershipStatus.EXPIRED),
)
_MEMBERSHIP_ACTIONS = (
    (RENEWED_WORDS, EventKind.MEMBERSHIP_RENEWED),
    (CANCELLED_WORDS, EventKind.MEMBERSHIP_CANCELLED),
    (EXPIRED_WORDS, EventKind.MEMBERSHIP_EXPIRED),
    (MEMBERSHIP_CREATED_WORDS, EventKind.MEMBERSHIP_CREATED),
)
_MEMBERSHIP_BY_STATUS = {
    MembershipStatus.CANCELLED: EventKind.MEMBERSHIP_CANCELLED,
    MembershipStatus.EXPIRED: EventKind.MEMBERSHIP_EXPIRED,
}


def _decided_by_status(action: str) -> bool:
    """An update, a status change or no action at all: the status decides what happened."""
    return not action or action in UPDATED_WORDS or action in _STATUS_CHANGE_WORDS


def appointment_status(status: str | None) -> AppointmentStatus | None:
    word = squash(status)
    return _first(word, _APPOINTMENT_STATUSES) if word else None


def appointment_kind(action: str, status: str | None) -> tuple[EventKind, AppointmentStatus] | None:
    """(kind, status on the Appointment), or None for an appointment event we do not act on.

    An update (reschedule) whose status says cancelled / no-show is that change; a missing action (the URL said
    "appointments" and nothing else) is decided by the status, and with no status at all it is an update.
    """
    decided = _first(action, _APPOINTMENT_ACTIONS)
    if decided is not None or not _decided_by_status(action):
        return decided
    said = appointment_status(status)
    if said in _APPOINTMENT_BY_STATUS:
        return _APPOINTMENT_BY_STATUS[said], said
    if said is AppointmentStatus.COMPLETED:
        return None  # completion is signalled by the paid invoice, not the appointment
    if not action and said is AppointmentStatus.BOOKED:
        return EventKind.APPOINTMENT_BOOKED, AppointmentStatus.BOOKED
    return EventKind.APPOINTMENT_UPDATED, AppointmentStatus.BOOKED


def invoice_kind(action: str, status: str | None) -> EventKind | None:
    """Paid / refunded / voided; created or updated invoices (or no action) are decided by their status.

    The lifetime-value ledger must therefore be idempotent per invoice id (an `invoice.updated` with status Paid
    after `invoice.paid` is the same payment).
    """
    decided = _first(action, _INVOICE_ACTIONS)
    if decided is None and (not action or action in BOOKED_WORDS or action in UPDATED_WORDS):
        return _first(squash(status), _INVOICE_STATUSES)
    return decided


def membership_status(status: str | None) -> MembershipStatus | None:
    """`Active` / `CANCELED` / `lapsed` → the APro Membership Status; None when unknown or absent."""
    return _first(squash(status), _MEMBERSHIP_STATUSES)


def membership_kind(action: str, status: str | None) -> EventKind | None:
    """Created / renewed / cancelled / expired; an update (or no action) is decided by a cancelled or expired
    status only: an active membership's update says nothing we could name (skipped as unhandled)."""
    decided = _first(action, _MEMBERSHIP_ACTIONS)
    if decided is None and _decided_by_status(action):
        return _MEMBERSHIP_BY_STATUS.get(membership_status(status))  # type: ignore[arg-type]
    return decided


def client_kind(action: str) -> EventKind | None:
    if not action or action in BOOKED_WORDS or action in UPDATED_WORDS:
        return EventKind.CLIENT_UPSERTED
    return None
