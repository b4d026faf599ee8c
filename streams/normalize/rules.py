"""Raw AestheticsPro webhook → NormalizedEvent | Skipped | Unreadable. Pure: no I/O, no logging, never raises.

Strict fields (ids, money, appointment times) make an event Unreadable; lenient ones (email, phone, date of
birth) become None and are listed in `invalid_fields`. Events that may create a contact need an email or
phone. The full rule list: docs/sync-rules.md, "Module notes"; spellings: examples/webhooks/README.md."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Mapping
from datetime import date, datetime
from decimal import Decimal
from typing import Any
from zoneinfo import ZoneInfo

from foundations.formats import headers as header_names
from foundations.formats.normalized import (
    Address,
    Appointment,
    AppointmentStatus,
    Client,
    Consent,
    EventKind,
    Invoice,
    LineItem,
    Location,
    Membership,
    MembershipStatus,
    NormalizedEvent,
    Provider,
    Skipped,
    SkipReason,
    Unreadable,
)
from streams.normalize.event_kind import (
    Entity, appointment_kind, client_kind, invoice_kind, membership_kind, read_kind, squash,
)
from streams.normalize.fields import Fields
from streams.normalize.trusted import (
    new_address, new_appointment, new_client, new_event, new_invoice, new_line_item, new_membership, new_skipped,
    new_unreadable,
)
from streams.normalize.values import (
    FieldError,
    combine_date_time,
    parse_money,
    parse_calendar_date,
    parse_decimal,
    parse_email,
    parse_instant,
    parse_phone,
    parse_services,
    shared,
    split_list,
    truthy,
    zone,
)
from foundations.formats.raw import (
    CLIENT_BLOCK_KEYS,
    CLIENT_ID_KEYS,
    ENVELOPE_KEYS,
    PayloadError,
    Lookup,
    clean_text,
    client_and_location,
    find_location,
    id_issue,
    id_str,
    is_object,
    norm_key,
    parse_body,
    unwrap,
)

Result = NormalizedEvent | Skipped | Unreadable
_UTC = ZoneInfo("UTC")

KIND_KEYS = ("event", "eventType", "event_type", "eventName", "type", "webhookEvent", "topic", "trigger")
ACTION_KEYS = ("action", "eventAction", "operation", "change")
EVENT_ID_KEYS = ("eventId", "event_id", "webhookId", "webhookEventId", "deliveryId", "messageId", "notificationId")
OCCURRED_KEYS = ("occurredAt", "occurred_at", "timestamp", "eventTime", "eventDate", "sentAt", "createdAt",
                 "created", "dateCreated")
TEST_FLAG_KEYS = ("test", "isTest", "testPing", "ping", "isPing", "testMode")
APPOINTMENT_KEYS = ("appointment", "appt", "booking", "visit")
APPOINTMENT_ID_KEYS = ("appointmentId", "apptId", "bookingId", "visitId")
INVOICE_KEYS = ("invoice", "ticket", "sale")
INVOICE_ID_KEYS = ("invoiceId", "ticketId", "saleId")
START_KEYS = ("startDateTime", "start", "startTime", "startsAt", "startAt", "appointmentDateTime", "apptDateTime",
              "appointmentDate", "apptDate", "dateTime", "scheduledAt", "scheduledFor", "startDate", "date")
CLOCK_KEYS = ("startTime", "appointmentTime", "apptTime", "time")
END_KEYS = ("endDateTime", "end", "endTime", "endsAt", "endAt", "endDate")
PREVIOUS_START_KEYS = ("previousStartDateTime", "previousStart", "previousStartTime", "oldStartDateTime",
                       "oldStart", "originalStartDateTime", "originalStart", "rescheduledFrom", "previousDate")
RESOURCE_HINTS = {"clients": Entity.CLIENT, "client": Entity.CLIENT, "appointments": Entity.APPOINTMENT,
                  "appointment": Entity.APPOINTMENT, "invoices": Entity.INVOICE, "invoice": Entity.INVOICE,
                  "memberships": Entity.MEMBERSHIP, "membership": Entity.MEMBERSHIP}
MEMBERSHIP_KEYS = ("membership", "clientMembership", "subscription")
MEMBERSHIP_ID_KEYS = ("membershipId", "clientMembershipId", "subscriptionId")
MEMBERSHIP_NAME_KEYS = ("membershipName", "planName", "membershipType", "membershipPlan", "programName")
RENEWAL_KEYS = ("renewalDate", "nextRenewalDate", "renewsOn", "renewOn", "renewDate", "nextBillingDate",
                "nextBillDate", "nextChargeDate")
MEMBERSHIP_START_KEYS = ("membershipStartDate", "startDate", "startedOn", "activationDate", "beginDate")
MEMBERSHIP_END_KEYS = ("membershipEndDate", "endDate", "expirationDate", "expiresOn", "expiryDate", "expireDate",
                       "cancelDate", "cancelledDate", "cancellationDate", "endedOn")
_MEMBERSHIP_STATUS_BY_KIND = {
    EventKind.MEMBERSHIP_CREATED: MembershipStatus.ACTIVE, EventKind.MEMBERSHIP_RENEWED: MembershipStatus.ACTIVE,
    EventKind.MEMBERSHIP_CANCELLED: MembershipStatus.CANCELLED, EventKind.MEMBERSHIP_EXPIRED: MembershipStatus.EXPIRED,
}
# Marketing consent (examples/webhooks/README.md, "Marketing consent"), per channel, first source that says:
# 1. an opt-out flag (true = opted out), 2. an opt-in / allow flag (true = consents),
# 3. a preferences block (`marketing: {email: false}`: the value says "allowed"),
# 4. an opt-out block (`optOut: {sms: true}`: the value says "opted out"),
# 5. an all-channel do-not-contact flag (`doNotContact` / `dnd`: true = every channel opted out).
CONSENT_OPT_OUT_KEYS = {
    "email": ("emailOptOut", "optOutEmail", "emailOptedOut", "emailUnsubscribed", "unsubscribedEmail",
              "doNotEmail", "noEmail", "emailDnd", "dndEmail"),
    "sms": ("smsOptOut", "optOutSms", "textOptOut", "optOutText", "smsOptedOut", "smsUnsubscribed", "doNotText",
            "doNotSms", "noSms", "noText", "smsDnd", "dndSms"),
    "call": ("callOptOut", "optOutCall", "phoneOptOut", "optOutPhone", "callOptedOut", "doNotCall", "noCall",
             "noCalls", "callDnd", "dndCall"),
}
CONSENT_OPT_IN_KEYS = {
    "email": ("emailOptIn", "optInEmail", "allowEmail", "allowEmails", "emailMarketing", "marketingEmail",
              "marketingEmails", "acceptsEmail", "acceptsEmailMarketing", "emailConsent"),
    "sms": ("smsOptIn", "optInSms", "textOptIn", "optInText", "allowSms", "allowText", "allowTexts",
            "smsMarketing", "textMarketing", "marketingSms", "marketingText", "acceptsSms", "acceptsText",
            "smsConsent"),
    "call": ("callOptIn", "optInCall", "phoneOptIn", "allowCall", "allowCalls", "allowPhone", "callMarketing",
             "phoneMarketing", "marketingCall", "marketingCalls", "acceptsCalls", "callConsent"),
}
CONSENT_CHANNEL_KEYS = {"email": ("email", "emails", "mail"), "sms": ("sms", "text", "texts", "textMessage"),
                        "call": ("call", "calls", "phone", "voice", "phoneCall")}
CONSENT_BLOCK_KEYS = ("marketing", "marketingPreferences", "communicationPreferences", "contactPreferences",
                      "consent", "consents", "preferences", "optIn", "optIns")
OPT_OUT_BLOCK_KEYS = ("optOut", "optOuts", "optedOut", "unsubscribed")
DO_NOT_CONTACT_KEYS = ("doNotContact", "dnd", "doNotDisturb", "noMarketing")
_YES = frozenset({"true", "t", "1", "yes", "y", "on", "x"})
_NO = frozenset({"false", "f", "0", "no", "n", "off"})


def consent_flag(value: Any) -> bool | None:
    """A yes/no flag (true/false, "Y"/"N", "Yes"/"No", 1/0, "on"/"off"); None when absent. FieldError when it is
    something else (the message never quotes the value)."""
    if value is None:
        return None
    if isinstance(value, bool):
        return value
    if isinstance(value, (int, Decimal)) and not isinstance(value, bool):
        if value in (0, 1):
            return value == 1
        raise FieldError("flag is a number other than 0 or 1")
    if isinstance(value, str):
        word = value.strip().lower()
        if not word:
            return None
        if word in _YES:
            return True
        if word in _NO:
            return False
        raise FieldError("flag is not a yes/no word")
    raise FieldError("flag is not a boolean, number or word")


_NO_CONSENT = Consent()
_NO_LOCATION = Location()

PHONE_KEYS = ("mobilePhone", "cellPhone", "mobile", "cell", "mobileNumber", "cellNumber", "phone", "phoneNumber",
              "primaryPhone", "homePhone", "workPhone", "phone1", "phone2")
EMAIL_KEYS = ("email", "emailAddress", "primaryEmail", "email1", "mail")
DOB_KEYS = ("dateOfBirth", "dob", "birthDate", "birthday", "birthdate", "dateOfBirthday")
# Normalised spelling sets, so a block that has none of a feature's keys is passed over with one set operation.
_PHONE_NAMES_IN_ORDER = tuple(dict.fromkeys(norm_key(k) for k in PHONE_KEYS))
_PHONE_NAMES = frozenset(_PHONE_NAMES_IN_ORDER)
_CONSENT_NAMES = frozenset(norm_key(k) for k in (
    *(k for keys in CONSENT_OPT_OUT_KEYS.values() for k in keys),
    *(k for keys in CONSENT_OPT_IN_KEYS.values() for k in keys),
    *CONSENT_BLOCK_KEYS, *OPT_OUT_BLOCK_KEYS, *DO_NOT_CONTACT_KEYS))
_ADDRESS_NAMES = frozenset(norm_key(k) for k in (
    "address", "homeAddress", "mailingAddress", "line1", "address1", "street", "streetAddress", "addressLine1",
    "line2", "address2", "addressLine2", "suite", "city", "town", "state", "province", "region", "stateCode",
    "postalCode", "zip", "zipCode", "postcode", "postal", "country", "countryCode"))


# What the body's top level (the unwrapped envelope) may say, read in one pass.
_FLAT = Fields(
    event_id=EVENT_ID_KEYS, kind=KIND_KEYS, action=ACTION_KEYS, test=TEST_FLAG_KEYS, occurred=OCCURRED_KEYS,
    client=CLIENT_BLOCK_KEYS, appointment=APPOINTMENT_KEYS, appointment_id=APPOINTMENT_ID_KEYS, invoice=INVOICE_KEYS,
    invoice_id=INVOICE_ID_KEYS, membership=MEMBERSHIP_KEYS, membership_id=MEMBERSHIP_ID_KEYS,
    location=("location", "clinic", "site", "business"),
    location_id=("locationId", "location_id", "clinicId", "siteId"),
    location_name=("locationName", "clinicName", "siteName"), location_word=("location",),
    timezone=("locationTimezone", "locationTimeZone", "timezone", "timeZone"),
)

_APPOINTMENT = Fields(
    own_id=("id", *APPOINTMENT_ID_KEYS), appointment_id=APPOINTMENT_ID_KEYS,
    status=("status", "appointmentStatus", "apptStatus"),
    start=START_KEYS, clock=CLOCK_KEYS, end=END_KEYS, previous_start=PREVIOUS_START_KEYS,
    services=("services", "service", "serviceNames", "serviceName", "treatments", "treatment"),
    service_types=("serviceTypes", "serviceType", "serviceCategory", "serviceCategories"),
    cancel_reason=("cancelReason", "cancellationReason", "cancelledReason", "reason"),
    provider=("provider", "staff", "employee", "practitioner", "therapist", "providerName", "staffName"),
    provider_id=("providerId", "staffId", "employeeId"),
    client=CLIENT_BLOCK_KEYS, appointment=APPOINTMENT_KEYS,  # where the client's blocks may be (_client_blocks)
)

_SUBTOTAL = ("subtotal", "subTotal")
_TAX = ("tax", "taxTotal", "taxAmount", "totalTax")
_TOTAL = ("total", "grandTotal", "invoiceTotal", "totalAmount", "amount")
_PAID = ("amountPaid", "paidAmount", "paymentAmount", "amountPaid")
_REFUNDED = ("refundedAmount", "refundAmount", "amountRefunded", "refundTotal")
_ITEM_AMOUNT = ("amount", "total", "lineTotal", "price", "unitPrice")


def _money_groups(*names: str) -> dict[str, tuple[str, ...]]:
    """A group per amount name and one per its `…Cents` spelling, as `values.money_field` reads them."""
    return {group: (group,) for name in names for group in (name, name + "Cents")}


def _money_in(found: dict[str, Any], names: tuple[str, ...]) -> Decimal | None:
    """`values.money_field` over fields read with `_money_groups(*names)`."""
    for name in names:
        plain = found.get(name)
        if plain is not None:
            return parse_money(plain)
        in_cents = found.get(name + "Cents")
        if in_cents is not None:
            return parse_money(in_cents, cents=True)
    return None


_INVOICE = Fields(
    own_id=("id", *INVOICE_ID_KEYS), invoice_id=INVOICE_ID_KEYS, status=("status", "invoiceStatus", "paymentStatus"),
    invoice_date=("invoiceDate", "date", "invoiceDateTime", "createdDate"),
    paid_at=("paidDate", "paidAt", "paymentDate", "datePaid", "paidOn", "closedAt", "closedDate"),
    appointment=APPOINTMENT_KEYS, appointment_id=APPOINTMENT_ID_KEYS,
    number=("invoiceNumber", "number", "invoiceNo", "invoiceNum"),
    items=("items", "lineItems", "lines", "invoiceItems", "products"),
    client=CLIENT_BLOCK_KEYS,
    **_money_groups(*_SUBTOTAL, *_TAX, *_TOTAL, *_PAID, *_REFUNDED),
)
_LINE_ITEM = Fields(
    name=("name", "description", "itemName", "productName", "serviceName", "title"),
    quantity=("quantity", "qty", "count"), type=("type", "itemType", "category"), **_money_groups(*_ITEM_AMOUNT),
)

_CLIENT = Fields(
    id=("id", *CLIENT_ID_KEYS),
    email=EMAIL_KEYS, date_of_birth=DOB_KEYS, first_name=("firstName", "fname", "givenName", "first"),
    last_name=("lastName", "lname", "surname", "familyName", "last"), full_name=("fullName", "name", "clientName"),
    full_name_flat=("fullName", "clientName"),  # when the flat body is the only block
)

# Per channel: the groups of its opt-out flags, its opt-in flags and its name inside a preferences block.
_CONSENT_GROUPS = {channel: (f"{channel}_opt_out", f"{channel}_opt_in", f"{channel}_named")
                   for channel in CONSENT_CHANNEL_KEYS}
_CONSENT = Fields(
    **{_CONSENT_GROUPS[channel][0]: keys for channel, keys in CONSENT_OPT_OUT_KEYS.items()},
    **{_CONSENT_GROUPS[channel][1]: keys for channel, keys in CONSENT_OPT_IN_KEYS.items()},
    **{_CONSENT_GROUPS[channel][2]: keys for channel, keys in CONSENT_CHANNEL_KEYS.items()},
    preferences=CONSENT_BLOCK_KEYS, opt_outs=OPT_OUT_BLOCK_KEYS, do_not_contact=DO_NOT_CONTACT_KEYS,
)

_MEMBERSHIP = Fields(
    own_id=("id", *MEMBERSHIP_ID_KEYS), membership_id=MEMBERSHIP_ID_KEYS, status=("status", "membershipStatus"),
    name=MEMBERSHIP_NAME_KEYS, nested_name=(*MEMBERSHIP_NAME_KEYS, "name", "title", "plan"),
    start_date=MEMBERSHIP_START_KEYS, renewal_date=RENEWAL_KEYS, end_date=MEMBERSHIP_END_KEYS,
    cancel_reason=("cancelReason", "cancellationReason", "reason"),
)

_LOCATION = Fields(id=("id", "locationId"), name=("name", "locationName"),
                   timezone=("timezone", "timeZone", "tz", "tzName", "ianaTimezone"))


def _block(value: Any) -> Mapping[str, Any] | None:
    return value if is_object(value) else None


class Unread(Exception):
    """Raised inside normalize() for a strict rule; becomes Unreadable. `reason` names the field, never a value."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def normalize(
    raw: bytes,
    headers: Mapping[str, Any] | None = None,
    *,
    default_timezone: str = "America/Phoenix",
    default_region: str = "US",
) -> Result:
    """Read one raw webhook. Never raises: anything unexpected becomes Unreadable naming the exception type."""
    try:
        hdrs = _lower_headers(headers)
        return _Reader(bytes(raw), hdrs, default_timezone, default_region).read()
    except Exception as exc:  # noqa: BLE001 - the contract is "never raises"; the type name is not PHI
        try:
            event_id = body_hash(bytes(raw))
        except Exception:  # noqa: BLE001
            event_id = "unknown"
        return Unreadable(event_id=event_id, reason=f"internal error: {type(exc).__name__}")


def body_hash(raw: bytes) -> str:
    """The stable event id of a body that carries none: a redelivery of the same bytes has the same id."""
    return hashlib.sha256(raw).hexdigest()


def _lower_headers(headers: Mapping[str, Any] | None) -> dict[str, str]:
    out: dict[str, str] = {}
    for name, value in (headers or {}).items():
        if value is None:
            continue
        out[str(name).lower()] = value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)
    return out


def _text(value: Any, limit: int = 500) -> str | None:
    if type(value) is str:
        text = clean_text(value).strip()  # no control characters reach the CRM
        return text[:limit] if text else None
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, (int, Decimal)):
        return id_str(value)
    if isinstance(value, str):
        text = clean_text(value).strip()  # no control characters reach the CRM
        return text[:limit] if text else None
    return None


def _first_found(reads: list[dict[str, Any]], name: str) -> Any:
    """`name`'s value in the first of `reads` (one per block, in precedence order) that has one."""
    for found in reads:
        value = found.get(name)
        if value is not None:
            return value
    return None


class _Reader:
    """One read of one body. Holds the parsed body, headers and the zone used for naive times."""

    def __init__(self, raw: bytes, headers: dict[str, str], default_timezone: str, region: str) -> None:
        self.raw = raw
        self.headers = headers
        self.region = region
        self.default_zone = zone(default_timezone) or _UTC
        self.invalid: list[str] = []
        self.event_id = ""  # set once the body is parsed; a body that does not parse is named by its hash
        self.location = _NO_LOCATION
        self.client_id: str | None = None
        self.client_issues: list[str] = []  # why a present client id is unusable (payload.id_issue)
        self.look = Lookup()  # every key lookup of this read: each object is indexed once
        self.top: dict[str, Any] = {}  # the top level's fields (_FLAT)
        self._fields: dict[tuple[int, int], tuple[Any, dict[str, Any]]] = {}  # (object, Fields) → (object, fields)
        self._blocks: list[Mapping[str, Any]] | None = None  # the client's blocks (_client_blocks), once found

    # ----------------------------------------------------------------------------------------- top level

    def read(self) -> Result:
        try:
            body = parse_body(self.raw, self.headers.get(header_names.CONTENT_TYPE))
        except PayloadError as exc:
            return self._unreadable(f"body: {exc}")
        self.body = body
        self.flat = unwrap(body)
        self.top = self._read(self.flat, _FLAT)
        self.event_id = self._event_id()
        try:
            direct = self._direct_client_id()
            if direct is None:
                self.client_id, *self._found_location = client_and_location(self.flat, self.look, self.client_issues)
            else:  # where almost every payload has it: the rest of the search is not needed
                self.client_id, self._found_location = direct, list(self._flat_location())
        except Exception:  # noqa: BLE001 - a malformed client block is handled below as a missing id
            self.client_id, self._found_location = None, list(find_location(body))
        self.location = self._location()
        self.zone = zone(self.location.timezone) or self.default_zone
        try:
            return self._read_event()
        except Unread as unread:  # not `exc`: mypyc types a name once per function (PayloadError above)
            return self._unreadable(unread.reason)

    def _read(self, obj: Any, fields: Fields) -> dict[str, Any]:
        """`fields.read` of `obj` once per read (an empty dict when `obj` is not an object)."""
        key = (id(obj), id(fields))
        entry = self._fields.get(key)
        if entry is not None and entry[0] is obj:  # the entry keeps `obj` alive: its id is not reused meanwhile
            return entry[1]
        index = self.look.index(obj)
        if index is None:
            return {}
        found = fields.read(index)
        self._fields[key] = (obj, found)
        return found

    def _unreadable(self, reason: str) -> Unreadable:
        return new_unreadable(event_id=self.event_id or body_hash(self.raw), reason=reason, location=self.location,
                          client_id=self.client_id)

    def _skip(self, reason: SkipReason, detail: str | None, source_kind: str | None) -> Skipped:
        return new_skipped(event_id=self.event_id, reason=reason, detail=detail, source_kind=source_kind,
                       location=self.location, client_id=self.client_id, received_at=self._received_at())

    def _event_id(self) -> str:
        found = id_str(self.top.get("event_id"))
        if found is None and any(norm_key(k) in ENVELOPE_KEYS for k in self.body):
            # An envelope's own `id` is the delivery id; a flat body's `id` could be the entity's.
            found = id_str(self.look.get(self.body, "id", "uuid"))
        return found or body_hash(self.raw)

    def _direct_client_id(self) -> str | None:
        """The id in the top-level client block, as `client_and_location` reads it first; None when not there."""
        block = _block(self.top.get("client"))
        return id_str(self._read(block, _CLIENT).get("id")) if block else None

    def _flat_location(self) -> tuple[str | None, str | None]:
        """`client_and_location`'s (location id, name), from the fields already read."""
        top = self.top
        block = _block(top.get("location"))
        found = self._read(block, _LOCATION) if block is not None else {}
        loc_id = id_str(found.get("id"))
        name = found.get("name")
        if loc_id is None:
            loc_id = id_str(top.get("location_id"))
        if name is None:
            name = top.get("location_name")
            if name is None and isinstance(top.get("location_word"), str):
                name = top.get("location_word")
        text = clean_text(str(name)).strip() if isinstance(name, (str, int)) and not isinstance(name, bool) else ""
        return loc_id, (text or None)

    def _location(self) -> Location:
        loc_id, name = self._found_location
        block = _block(self.top.get("location"))
        tz_name = _text(self._read(block, _LOCATION).get("timezone")) if block is not None else None
        if tz_name is None:
            tz_name = _text(self.top.get("timezone"))
        if zone(tz_name) is None:
            tz_name = None  # an unknown zone name is ignored: naive times fall back to the default zone
        if loc_id is None:
            loc_id = _text(self.headers.get(header_names.TOKEN_LOCATION), 128)
        return shared(Location, id=loc_id, name=name[:200] if name else None, timezone=tz_name)

    def _received_at(self) -> datetime | None:
        try:
            return parse_instant(self.headers.get(header_names.RECEIVED_AT), _UTC)
        except FieldError:
            return None

    def _source_kind(self) -> tuple[str | None, str | None]:
        kind = self.top.get("kind")
        action = self.top.get("action")
        kind_text = _text(kind, 100) if not is_object(kind) else None
        action_text = _text(action, 100) if not is_object(action) else None
        return kind_text, action_text

    # ------------------------------------------------------------------------------------------- dispatch

    def _read_event(self) -> Result:
        kind_text, action_text = self._source_kind()
        source_kind = ".".join(p for p in (kind_text, action_text) if p) or None
        words = read_kind(kind_text, action_text)
        top = self.top
        if words.is_test or truthy(top.get("test")):
            return self._skip(SkipReason.TEST_PING, "test or ping event", source_kind)
        if self.client_id is None and self.client_issues:
            # A client id is there but unusable (an object, 10,000 characters, a NUL): say so, never "test ping".
            return self._unreadable(f"client.id: {self.client_issues[0]}")
        appointment_block = _block(top.get("appointment"))
        invoice_block = _block(top.get("invoice"))
        has_client = _block(top.get("client")) is not None or self.client_id is not None
        has_appointment = appointment_block is not None or "appointment_id" in top
        has_invoice = invoice_block is not None or "invoice_id" in top
        membership_block = _block(top.get("membership"))
        has_membership = membership_block is not None or "membership_id" in top
        if not (has_client or has_appointment or has_invoice or has_membership):
            return self._skip(SkipReason.TEST_PING, "no client, appointment or invoice in body", source_kind)

        entity = words.entity
        if entity is None:
            entity = RESOURCE_HINTS.get((self.headers.get(header_names.RESOURCE) or "").strip().lower())
        if entity is None:
            entity = (Entity.INVOICE if has_invoice else Entity.APPOINTMENT if has_appointment
                      else Entity.MEMBERSHIP if has_membership else Entity.CLIENT)

        if entity is Entity.CLIENT:
            kind = client_kind(words.action)
            if kind is None:
                return self._skip(SkipReason.UNHANDLED_KIND, f"client action not handled: {words.action[:40]}",
                                  source_kind)
            return self._event(kind, source_kind)
        if entity is Entity.MEMBERSHIP:
            block = membership_block if membership_block is not None else self.flat
            kind = membership_kind(words.action, _text(self._read(block, _MEMBERSHIP).get("status")))
            if kind is None:
                return self._skip(SkipReason.UNHANDLED_KIND,
                                  f"membership action not handled: {words.action[:40] or 'status'}", source_kind)
            return self._event(kind, source_kind, membership=self._membership(block, kind))
        if entity is Entity.APPOINTMENT:
            block = appointment_block if appointment_block is not None else self.flat
            status_text = _text(self._read(block, _APPOINTMENT).get("status"))
            decided = appointment_kind(words.action, status_text)
            if decided is None:
                return self._skip(SkipReason.UNHANDLED_KIND,
                                  f"appointment action not handled: {words.action[:40] or 'status'}", source_kind)
            kind, status = decided
            appointment = self._appointment(block, status)
            return self._event(kind, source_kind, appointment=appointment)
        block = invoice_block if invoice_block is not None else self.flat
        kind = invoice_kind(words.action, _text(self._read(block, _INVOICE).get("status")))
        if kind is None:
            return self._skip(SkipReason.UNHANDLED_KIND,
                              f"invoice action not handled: {words.action[:40] or 'status'}", source_kind)
        return self._event(kind, source_kind, invoice=self._invoice(block, kind))

    def _event(self, kind: EventKind, source_kind: str | None, *, appointment: Appointment | None = None,
               invoice: Invoice | None = None, membership: Membership | None = None) -> Result:
        client = self._client()
        needs_contact = kind not in (EventKind.APPOINTMENT_DELETED, EventKind.INVOICE_REFUNDED,
                                     EventKind.INVOICE_VOIDED, EventKind.MEMBERSHIP_CANCELLED,
                                     EventKind.MEMBERSHIP_EXPIRED)
        if needs_contact and client.email is None and client.phone is None:
            return self._skip(SkipReason.NO_CONTACT_INFO, "client has no valid email or phone", source_kind)
        occurred_at = self._lenient_instant(self.top.get("occurred"), "occurred_at")
        return new_event(
            event_id=self.event_id,
            kind=kind,
            source_kind=source_kind,
            occurred_at=occurred_at,
            received_at=self._received_at(),
            location=self.location,
            client=client,
            appointment=appointment,
            invoice=invoice,
            membership=membership,
            invalid_fields=tuple(self.invalid),
            historical=header_names.BACKFILL in self.headers,
        )

    # ---------------------------------------------------------------------------------------------- client

    def _client_blocks(self) -> list[Mapping[str, Any]]:
        """Where client fields may be: `client`, `invoice.client`, `appointment.client`, then the flat body."""
        if self._blocks is not None:
            return self._blocks
        blocks: list[Mapping[str, Any]] = []
        self._blocks = blocks
        direct = _block(self.top.get("client"))
        if direct is not None:
            blocks.append(direct)
        for parent_field, parent_fields in (("invoice", _INVOICE), ("appointment", _APPOINTMENT)):
            parent = _block(self.top.get(parent_field))
            if parent is None:
                continue
            in_parent = self._read(parent, parent_fields)
            nested = _block(in_parent.get("client"))
            if nested is not None:
                blocks.append(nested)
            grand = _block(in_parent.get("appointment"))
            nested = _block(self._read(grand, _APPOINTMENT).get("client")) if grand is not None else None
            if nested is not None:
                blocks.append(nested)
        blocks.append(self.flat)
        return blocks

    def _client(self) -> Client:
        if self.client_id is None:
            raise Unread("client.id: missing")
        blocks = self._client_blocks()
        reads = [self._read(block, _CLIENT) for block in blocks]

        email_raw = _first_found(reads, "email")
        email = parse_email(email_raw)
        if email_raw not in (None, "") and email is None:
            self.invalid.append("client.email")
        phone = None
        phone_seen = False
        for block in blocks:
            index = self.look.index(block)
            if index is None or index.keys().isdisjoint(_PHONE_NAMES):
                continue
            for name in _PHONE_NAMES_IN_ORDER:  # each spelling on its own: the first valid number wins
                value = index.get(name)
                if value is None or value == "" or value == [] or value == {} or is_object(value):
                    continue
                phone_seen = True
                phone = parse_phone(value, self.region)
                if phone:
                    break
            if phone:
                break
        if phone_seen and phone is None:
            self.invalid.append("client.phone")
        dob = None
        dob_raw = _first_found(reads, "date_of_birth")
        try:
            dob = parse_calendar_date(dob_raw)
        except FieldError:
            self.invalid.append("client.date_of_birth")
        first = _text(_first_found(reads, "first_name"), 200)
        last = _text(_first_found(reads, "last_name"), 200)
        if first is None and last is None:
            full = _text(reads[0].get("full_name" if len(blocks) > 1 else "full_name_flat"), 200)
            if full:
                first, _, rest = full.partition(" ")
                last = rest.strip() or None
        consent = self._consent(blocks)
        return new_client(id=self.client_id, first_name=first, last_name=last, email=email, phone=phone,
                      date_of_birth=dob, address=self._address(blocks), consent=consent if consent.said else None)

    def _consent(self, blocks: list[Mapping[str, Any]]) -> Consent:
        """Opt-outs per channel from the client's blocks (order in CONSENT_OPT_OUT_KEYS' comment). An unreadable
        flag is lenient: the channel stays unsaid and `client.consent.<channel>` is listed as invalid."""
        blocks = [block for block in blocks if self.look.has_any(block, _CONSENT_NAMES)]
        if not blocks:  # most webhooks say nothing about marketing: skip the ~40 spellings per channel
            return _NO_CONSENT
        said: dict[str, bool | None] = {}
        for channel in ("email", "sms", "call"):
            said[channel] = None
            for opted_out, raw in self._consent_sources(blocks, channel):
                if raw is None or is_object(raw):
                    continue
                try:
                    value = consent_flag(raw)
                except FieldError:
                    self.invalid.append(f"client.consent.{channel}")
                    break
                if value is not None:
                    said[channel] = value if opted_out else not value
                    break
        return shared(Consent, email_opt_out=said["email"], sms_opt_out=said["sms"], call_opt_out=said["call"])

    def _consent_sources(self, blocks: list[Mapping[str, Any]], channel: str) -> Iterator[tuple[bool, Any]]:
        """(value means "opted out", value) in order of precedence."""
        opt_out, opt_in, named = _CONSENT_GROUPS[channel]
        for block in blocks:
            found = self._read(block, _CONSENT)
            yield True, found.get(opt_out)
            yield False, found.get(opt_in)
            prefs = _block(found.get("preferences"))
            if prefs is not None:
                in_prefs = self._read(prefs, _CONSENT)
                yield True, in_prefs.get(opt_out)
                yield False, in_prefs.get(opt_in)
                yield False, in_prefs.get(named)
            outs = _block(found.get("opt_outs"))
            if outs is not None:
                yield True, self._read(outs, _CONSENT).get(named)
            yield True, found.get("do_not_contact")

    def _address(self, blocks: list[Mapping[str, Any]]) -> Address | None:
        block = blocks[0]  # address fields only from the client's own block (a flat body is its own block)
        if not self.look.has_any(block, _ADDRESS_NAMES):
            return None
        nested = self.look.get_block(block, "address", "homeAddress", "mailingAddress")
        source = nested if nested is not None else block
        line1 = _text(self.look.get(source, "line1", "address1", "street", "streetAddress", "addressLine1"), 200)
        if line1 is None and nested is None:
            line1 = _text(self.look.get(block, "address", "address1", "street", "streetAddress", "addressLine1"), 200)
        fields = {
            "line1": line1,
            "line2": _text(self.look.get(source, "line2", "address2", "addressLine2", "suite"), 200),
            "city": _text(self.look.get(source, "city", "town"), 100) or _text(self.look.get(block, "city"), 100),
            "state": _text(self.look.get(source, "state", "province", "region", "stateCode"), 100)
            or _text(self.look.get(block, "state"), 100),
            "postal_code": _text(self.look.get(source, "postalCode", "zip", "zipCode", "postcode", "postal"), 20)
            or _text(self.look.get(block, "postalCode", "zip", "zipCode"), 20),
            "country": _text(self.look.get(source, "country", "countryCode"), 60),
        }
        return new_address(**fields) if any(fields.values()) else None

    # ----------------------------------------------------------------------------------------- appointment

    def _strict_instant(self, value: Any, field: str) -> datetime | None:
        try:
            return parse_instant(value, self.zone)
        except FieldError as exc:
            raise Unread(f"{field}: {exc}") from None

    def _lenient_instant(self, value: Any, field: str) -> datetime | None:
        try:
            return parse_instant(value, self.zone)
        except FieldError:
            self.invalid.append(field)
            return None

    def _appointment(self, block: Mapping[str, Any], status: AppointmentStatus | None,
                     fallback: Mapping[str, Any] | None = None, *, field: str = "appointment") -> Appointment:
        """An appointment from `block`; for invoice-level fields, `block` is the invoice and `fallback` the
        nested appointment block (first non-empty wins)."""
        reads = [self._read(b, _APPOINTMENT) for b in (block, fallback) if b is not None]

        own_id = reads[0].get("own_id") if block is not self.flat else None
        raw_id = own_id if own_id is not None else _first_found(reads, "appointment_id")
        appt_id = id_str(raw_id)
        if appt_id is None:
            raise Unread(f"{field}.id: {id_issue(raw_id) or 'missing'}")
        start_raw = combine_date_time(_first_found(reads, "start"), _first_found(reads, "clock"))
        start = self._strict_instant(start_raw, f"{field}.start")
        end = self._strict_instant(_first_found(reads, "end"), f"{field}.end")
        previous = self._lenient_instant(_first_found(reads, "previous_start"), f"{field}.previous_start")
        services = parse_services(_first_found(reads, "services"), _first_found(reads, "service_types"))
        return new_appointment(
            id=appt_id,
            status=status,
            start=start,
            end=end,
            previous_start=previous,
            provider=self._provider(reads),
            services=services,
            cancel_reason=_text(_first_found(reads, "cancel_reason"), 200),
        )

    def _provider(self, reads: list[dict[str, Any]]) -> Provider | None:
        raw = _first_found(reads, "provider")
        if is_object(raw):
            name = _text(self.look.get(raw, "name", "fullName", "displayName"), 200)
            if name is None:
                parts = [_text(self.look.get(raw, "firstName"), 100), _text(self.look.get(raw, "lastName"), 100)]
                name = " ".join(p for p in parts if p) or None
            provider = shared(Provider, id=id_str(self.look.get(raw, "id", "providerId", "staffId", "employeeId")),
                              name=name)
        else:
            provider = shared(Provider, id=id_str(_first_found(reads, "provider_id")), name=_text(raw, 200))
        return provider if provider.id or provider.name else None

    # ------------------------------------------------------------------------------------------ membership

    def _date(self, value: Any, field: str) -> date | None:
        try:
            return parse_calendar_date(value)
        except FieldError as exc:
            raise Unread(f"{field}: {exc}") from None

    def _membership(self, block: Mapping[str, Any], kind: EventKind) -> Membership:
        """A membership from its block (or the flat body). Id and dates are strict: a renewal date the CRM's
        reminders run on must be right or visibly dead-lettered, never guessed."""
        nested = block is not self.flat
        found = self._read(block, _MEMBERSHIP)
        own_id = found.get("own_id") if nested else None
        raw_id = own_id if own_id is not None else found.get("membership_id")
        if raw_id is None and nested:
            raw_id = self.top.get("membership_id")
        membership_id = id_str(raw_id)
        if membership_id is None:
            raise Unread(f"membership.id: {id_issue(raw_id) or 'missing'}")
        name = found.get("nested_name" if nested else "name")
        return new_membership(
            id=membership_id,
            name=(_text(name, 200) if not is_object(name)
                  else _text(self.look.get(name, "name", "title"), 200)),
            status=_MEMBERSHIP_STATUS_BY_KIND[kind],
            start_date=self._date(found.get("start_date"), "membership.start_date"),
            renewal_date=self._date(found.get("renewal_date"), "membership.renewal_date"),
            end_date=self._date(found.get("end_date"), "membership.end_date"),
            cancel_reason=_text(found.get("cancel_reason"), 200),
        )

    # --------------------------------------------------------------------------------------------- invoice

    def _money(self, found: dict[str, Any], field: str, *names: str) -> Decimal | None:
        try:
            return _money_in(found, names)
        except FieldError as exc:
            raise Unread(f"invoice.{field}: {exc}") from None

    def _invoice(self, block: Mapping[str, Any], kind: EventKind) -> Invoice:
        found = self._read(block, _INVOICE)
        own_id = found.get("own_id") if block is not self.flat else None
        raw_id = own_id if own_id is not None else found.get("invoice_id")
        invoice_id = id_str(raw_id)
        if invoice_id is None:
            raise Unread(f"invoice.id: {id_issue(raw_id) or 'missing'}")
        subtotal = self._money(found, "subtotal", *_SUBTOTAL)
        tax = self._money(found, "tax", *_TAX)
        total = self._money(found, "total", *_TOTAL)
        paid = self._money(found, "amount_paid", *_PAID)
        refunded = self._money(found, "refunded", *_REFUNDED)
        if kind is EventKind.INVOICE_PAID:
            amount = paid if paid is not None else total
            if amount is not None and amount < 0:
                raise Unread("invoice.amount_paid: negative on a paid invoice")
        else:
            amount = refunded if refunded is not None else total if total is not None else paid
            amount = abs(amount) if amount is not None else None
        if amount is None:
            raise Unread("invoice.amount: missing (no amountPaid, total or refund amount)")
        try:
            invoice_date = parse_calendar_date(found.get("invoice_date"))
        except FieldError as exc:
            raise Unread(f"invoice.invoice_date: {exc}") from None
        paid_at = self._strict_instant(found.get("paid_at"), "invoice.paid_at")
        nested = _block(found.get("appointment"))
        has_invoice_level = "appointment_id" in found
        appointment = None
        if nested is not None or has_invoice_level:
            # Invoice-level fields first (only the appointment-specific spellings), then the nested block.
            invoice_level = {k: v for k, v in block.items() if norm_key(k) in _INVOICE_LEVEL_APPT_KEYS}
            appointment = self._appointment(invoice_level, AppointmentStatus.COMPLETED, nested,
                                            field="invoice.appointment")
        return new_invoice(
            id=invoice_id,
            number=_text(found.get("number"), 64),
            status=_invoice_status(_text(found.get("status"), 64)),
            invoice_date=invoice_date,
            paid_at=paid_at,
            subtotal=subtotal,
            tax=tax,
            total=total,
            amount_paid=amount,
            items=self._items(found.get("items")),
            appointment=appointment,
        )

    def _items(self, listed: Any) -> tuple[LineItem, ...]:
        items: list[LineItem] = []
        for raw in split_list(listed):
            if is_object(raw):
                item = self._read(raw, _LINE_ITEM)
                name = _text(item.get("name"), 200)
                if not name:
                    continue
                try:
                    quantity = parse_decimal(item.get("quantity"))
                    amount = _money_in(item, _ITEM_AMOUNT)
                except FieldError as exc:
                    raise Unread(f"invoice.items: {exc}") from None
                items.append(new_line_item(name=name, type=_text(item.get("type"), 64),
                                           quantity=quantity if quantity is not None else Decimal(1),
                                           amount=amount if amount is not None else Decimal(0)))
            else:
                name = _text(raw, 200)
                if name:
                    items.append(new_line_item(name=name))
        return tuple(items)


_INVOICE_STATUSES = {
    "paid": "Paid",
    "paidinfull": "Paid",
    "refunded": "Refunded",
    "partiallyrefunded": "Partially Refunded",
    "void": "Voided",
    "voided": "Voided",
    "partiallypaid": "Partially Paid",
    "unpaid": "Unpaid",
    "open": "Open",
    "closed": "Closed",
}


def _invoice_status(text: str | None) -> str | None:
    """One spelling per invoice status (`PAID`, `paid` → `Paid`); unknown words are kept as sent."""
    return _INVOICE_STATUSES.get(squash(text), text) if text else None


_INVOICE_LEVEL_APPT_KEYS = {
    norm_key(k)
    for k in (*APPOINTMENT_ID_KEYS, "appointmentDate", "apptDate", "appointmentDateTime", "apptDateTime",
              "appointmentStart", "appointmentTime", "apptTime", "provider", "providerName", "providerId", "staff",
              "staffName", "services", "serviceNames", "serviceTypes", "serviceType")
}

__all__ = ["Result", "body_hash", "normalize", "date"]
