"""Writes tests/streams/normalize/data/normalize_differential.jsonl.gz: varied webhooks with the normalizer's
output for each.

The outputs were recorded from the normalizer before its speed rework (commit def14b4) and are the oracle of
tests/test_normalize_differential.py. Regenerate only on a deliberate behaviour change, and say so in the commit:
    python -m tests.streams.normalize.differential_cases
"""

from __future__ import annotations

import base64
import gzip
import json
import random
from decimal import Decimal
from pathlib import Path
from typing import Any
from urllib.parse import urlencode
from zoneinfo import ZoneInfo

CASES_FILE = Path(__file__).parent / "data" / "normalize_differential.jsonl.gz"
SEED = 15015
MAX_BODY = 20_000

# Every spelling group the normalizer reads (streams/normalize.py's key tables), planted with random values.
PLANTED_KEYS = (
    "event", "eventType", "type", "action", "eventId", "webhookId", "occurredAt", "timestamp", "createdAt", "test",
    "isTest", "appointment", "appt", "booking", "appointmentId", "apptId", "invoice", "ticket", "sale", "invoiceId",
    "startDateTime", "start", "startTime", "appointmentDate", "apptDate", "date", "time", "apptTime", "endDateTime",
    "end", "previousStartDateTime", "rescheduledFrom", "membership", "membershipId", "membershipName", "planName",
    "renewalDate", "nextBillingDate", "startDate", "endDate", "expirationDate", "cancelDate", "emailOptOut",
    "doNotEmail", "smsOptOut", "doNotText", "callOptOut", "doNotCall", "emailOptIn", "allowEmail", "smsOptIn",
    "allowSms", "callOptIn", "allowCalls", "marketing", "preferences", "optOut", "unsubscribed", "doNotContact",
    "dnd", "mobilePhone", "cellPhone", "phone", "homePhone", "email", "emailAddress", "dateOfBirth", "dob",
    "birthday", "firstName", "lastName", "fullName", "name", "address", "street", "city", "state", "zip",
    "postalCode", "country", "client", "customer", "patient", "clientId", "customerId", "location", "clinic",
    "locationId", "locationName", "timezone", "locationTimezone", "status", "appointmentStatus", "invoiceStatus",
    "subtotal", "tax", "total", "amountPaid", "totalCents", "amountPaidCents", "refundedAmount", "amount", "items",
    "lineItems", "quantity", "price", "provider", "staff", "providerName", "providerId", "services", "service",
    "serviceTypes", "serviceType", "cancelReason", "reason", "invoiceNumber", "invoiceDate", "paidDate", "paidAt",
    "data", "payload", "id", "uuid",
)
PLANT_VALUES: tuple[Any, ...] = (
    None, "", " ", True, False, 0, 1, -3, "yes", "N", "off", "maybe", "2026-12-01", "12/01/2026 10:30",
    "2026-12-01T10:30:00-07:00", "2026-12-01T17:30:00Z", "December, 01 2026 10:30:00", "10:30", "10:30 AM",
    1764610200, 1764610200000, "1764610200", "$1,150.00", "(12.50)", "12.5", "1e3", "abc", "48213", 48213,
    "48213.0", "x" * 130, "a\x00b", "Jane\nDoe", "jane@example.com", " JANE@Example.COM ", "not-an-email",
    "(480) 555-0134", "+1 480 555 0134", "555", "America/Denver", "Mars/Olympus", "Paid", "Cancelled", "No Show",
    "Booked", "refunded", "Botox, Filler", ["Botox", "Filler"], [{"name": "Botox", "serviceType": "Injectables"}],
    {"email": False, "sms": "Y"}, {"sms": True}, {"id": 7, "name": "Dr. A"}, {"firstName": "Ann", "lastName": "B"},
    {"timezone": "America/New_York", "id": "9", "name": "Mesa"}, [{"name": "Item", "qty": "2", "amount": "$5"}],
    Decimal("12.345"), Decimal("-0.00"), {"nested": {"deeper": [1, 2, {"x": None}]}}, [],
)
RESOURCES = ("", "clients", "appointments", "invoices", "memberships", "Clients ", "other")
ZONES = ("America/Phoenix", "America/Phoenix", "America/New_York", "UTC", "Not/AZone")
RECEIVED = ("2026-12-01T00:00:05+00:00", "2026-12-01T00:00:05Z", "garbage", "", "12/01/2026 00:00")


def _plant(rnd: random.Random, body: dict[str, Any], styles: list[Any], words_of: Any) -> dict[str, Any]:
    """Random extra keys (any spelling style, sometimes duplicating a present key's normal form), at random places."""
    targets = [body] + [v for v in body.values() if isinstance(v, dict)]
    for _ in range(rnd.randrange(1, 6)):
        target = rnd.choice(targets)
        key = rnd.choice(PLANTED_KEYS)
        spelled = rnd.choice(styles)(words_of(key)) if rnd.random() < 0.7 else key
        value = rnd.choice(PLANT_VALUES)
        if rnd.random() < 0.5:
            target[spelled] = value
        else:  # in front: it now precedes the object's other spellings of the same name
            items = list(target.items())
            target.clear()
            target[spelled] = value
            target.update((k, v) for k, v in items if k != spelled)
    return body


def _cases() -> list[tuple[bytes, dict[str, str], dict[str, str]]]:
    from bench.normalize import variations
    from tests.conftest import FIXTURES
    from tests.reliability.generator import generate
    from tests.reliability.test_fuzz import Corpus
    from tests.test_normalize_properties import STYLES, Respeller, words_of

    rnd = random.Random(SEED)
    fixtures = [json.loads(p.read_text(), parse_float=Decimal) for p in sorted(FIXTURES.glob("*.json"))]
    out: list[tuple[bytes, dict[str, str], dict[str, str]]] = []

    def headers(ctype: str | None = "application/json") -> dict[str, str]:
        hdrs = {"apro-received-at": rnd.choice(RECEIVED)}
        if ctype is not None:
            hdrs["content-type"] = ctype
        resource = rnd.choice(RESOURCES)
        if resource:
            hdrs["apro-resource"] = resource
        if rnd.random() < 0.2:
            hdrs["apro-token-location"] = rnd.choice(["3", "loc-9", " 11 "])
        return hdrs

    def kwargs() -> dict[str, str]:
        return {"default_timezone": rnd.choice(ZONES), "default_region": rnd.choice(["US", "US", "CA", "GB"])}

    for _key, body in variations(400, 300, seed=SEED):  # the bench's records
        out.append((body, {"apro-received-at": RECEIVED[0], "content-type": "application/json"}, {}))
    for fixture in fixtures * 30:  # re-spelled fixtures (keys, dates, money, phones), some with planted keys
        tz = ZoneInfo(rnd.choice(ZONES[:4]))
        body = Respeller(rnd, tz).obj(json.loads(json.dumps(fixture, default=str), parse_float=Decimal))
        if rnd.random() < 0.6:
            body = _plant(rnd, body, STYLES, words_of)
        if rnd.random() < 0.15:
            body = {"data": body, "id": f"env-{rnd.randrange(10**6)}"}
        if rnd.random() < 0.1:
            flat = {k: v for k, v in body.items() if not isinstance(v, (dict, list))}
            out.append((urlencode(flat).encode(), headers("application/x-www-form-urlencoded"), kwargs()))
        else:
            out.append((json.dumps(body, default=str).encode(), headers(), kwargs()))
    for event in generate(SEED, clients=30, events=300).events:  # a realistic stream, JSON and form bodies
        out.append((event.body, headers(event.content_type), kwargs()))
    for post in Corpus(SEED).bodies(900):  # hostile bodies (the fuzz test's corpus)
        if len(post.body) <= MAX_BODY:
            out.append((post.body, headers(post.content_type), kwargs()))
    return out


def record(raw: bytes, hdrs: dict[str, str], kw: dict[str, str]) -> dict[str, Any]:
    """One case as stored: the input and the normalizer's result (type name and JSON dump)."""
    from streams.normalize.rules import normalize

    result = normalize(raw, hdrs, **kw)
    return {"raw": base64.b64encode(raw).decode(), "headers": hdrs, "kwargs": kw, "type": type(result).__name__,
            "out": result.model_dump(mode="json")}


def main() -> None:
    CASES_FILE.parent.mkdir(exist_ok=True)
    with gzip.open(CASES_FILE, "wt", encoding="utf-8") as out:
        for raw, hdrs, kw in _cases():
            out.write(json.dumps(record(raw, hdrs, kw), sort_keys=True) + "\n")


if __name__ == "__main__":
    main()
