"""Property tests: every allowed re-spelling of a fixture normalizes to the same event; nothing ever raises.

The variations follow examples/webhooks/README.md. Alternative spellings are computed here with the standard
library (not with the code under test); the reference result for each fixture is pinned by the golden tests.
"""

from __future__ import annotations

import json
import random
import re
from collections.abc import Callable
from datetime import datetime, timezone
from decimal import Decimal
from typing import Any
from urllib.parse import urlencode
from zoneinfo import ZoneInfo

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from foundations.formats.normalized import NormalizedEvent, Skipped, Unreadable
from streams.normalize.rules import normalize
from tests.conftest import FIXTURES

FIXTURE_BODIES = {p.stem: json.loads(p.read_text(), parse_float=Decimal) for p in sorted(FIXTURES.glob("*.json"))}
REFERENCE = {name: normalize(json.dumps(body, default=str).encode()) for name, body in FIXTURE_BODIES.items()}
MONEY_KEYS = {"subtotal", "tax", "total", "amountpaid", "amount"}
LOCAL_TIME_KEYS = {"startdatetime", "enddatetime", "previousstartdatetime", "paiddate", "apptdate"}
DOB_KEYS = {"dateofbirth", "birthdate"}
PHONE_KEYS = {"mobilephone", "cellphone"}
KIND_SPELLINGS = {
    "appointment.created": ["AppointmentCreated", "Appointment.Created", "appointment_booked", "APPOINTMENT_CREATED",
                            ("appointment", "created"), ("Appointment", "Booked")],
    "Appointment.Created": ["appointment.created", "appointmentBooked", ("appointment", "scheduled")],
    "appointment.cancelled": ["AppointmentCancelled", "appointment.canceled", "Appointment.Canceled",
                              ("appointment", "cancelled"), "appointment.updated"],
    "appointment.noshow": ["AppointmentNoShow", "appointment.no_show", "Appointment.No-Show",
                           ("appointment", "no show"), "appointment.updated"],
    "appointment.updated": ["AppointmentUpdated", "appointment_rescheduled", ("Appointment", "Updated")],
    "appointment.deleted": ["AppointmentDeleted", "appointment_removed", ("appointment", "deleted")],
    "client.created": ["ClientCreated", "client_updated", "Client.Updated", ("client", "created"), None],
    "client.updated": ["ClientUpdated", "client_created", ("Client", "Updated"), None],
    "invoice.paid": ["InvoicePaid", "Invoice.Paid", "invoice_paid", ("invoice", "paid"), None],
}
STATUS_SPELLINGS = {
    "booked": ["Booked", "BOOKED", "Scheduled", "Confirmed"],
    "scheduled": ["Booked", "scheduled", "Confirmed"],
    "cancelled": ["Cancelled", "Canceled", "CANCELLED", "canceled"],
    "noshow": ["No Show", "NoShow", "no_show", "NO-SHOW"],
    "paid": ["Paid", "PAID", "paid"],
}
MONTHS = ["January", "February", "March", "April", "May", "June", "July", "August", "September", "October",
          "November", "December"]


# ------------------------------------------------------------------------------------------ re-spelling


def words_of(key: str) -> list[str]:
    if key.isupper():
        return [key.lower()]  # UPPERCASE keys are already one word; keep them as they are
    spaced = re.sub(r"(?<=[a-z0-9])(?=[A-Z])", " ", key)
    return [w.lower() for w in re.split(r"[^A-Za-z0-9]+", spaced) if w]


STYLES: list[Callable[[list[str]], str]] = [
    lambda w: w[0] + "".join(x.title() for x in w[1:]),  # camelCase
    lambda w: "_".join(w),  # snake_case
    lambda w: "".join(x.title() for x in w),  # PascalCase
    lambda w: "".join(w).upper(),  # UPPERCASE
    lambda w: "_".join(w).upper(),  # SCREAMING_SNAKE
    lambda w: "-".join(w),  # kebab-case
]


def norm(key: str) -> str:
    return re.sub(r"[\s_\-.]+", "", key).lower()


def parse_fixture_time(text: str) -> datetime:
    for fmt in ("%Y-%m-%d %H:%M:%S", "%m/%d/%Y %H:%M", "%m/%d/%Y", "%B, %d %Y %H:%M:%S", "%Y-%m-%d"):
        try:
            return datetime.strptime(text, fmt)
        except ValueError:
            pass
    return datetime.fromisoformat(text)


def respell_local_time(text: str, tz: ZoneInfo, rnd: random.Random) -> Any:
    moment = parse_fixture_time(text)
    aware = moment if moment.tzinfo else moment.replace(tzinfo=tz)
    local = aware.astimezone(tz).replace(tzinfo=None)
    utc = aware.astimezone(timezone.utc)
    choices = [
        local.isoformat(),
        local.strftime("%Y-%m-%d %H:%M:%S"),
        local.strftime("%m/%d/%Y %H:%M"),
        f"{MONTHS[local.month - 1]}, {local.day:02d} {local.year} {local.strftime('%H:%M:%S')}",
        aware.astimezone(tz).isoformat(),
        utc.strftime("%Y-%m-%dT%H:%M:%SZ"),
        int(utc.timestamp()),
        int(utc.timestamp()) * 1000,
        str(int(utc.timestamp())),
    ]
    return rnd.choice(choices)


def respell_dob(text: str, rnd: random.Random) -> str:
    day = parse_fixture_time(text).date()
    return rnd.choice(
        [
            day.isoformat(),
            day.strftime("%m/%d/%Y"),
            f"{MONTHS[day.month - 1]}, {day.day:02d} {day.year} 00:00:00",
            f"{day.isoformat()}T00:00:00-07:00",
            f"{day.isoformat()}T00:00:00Z",
        ]
    )


def respell_money(value: Any, rnd: random.Random) -> tuple[str, Any]:
    """(key suffix, value): `$1,234.50`, `1234.5`, a JSON number, or integer cents under `…Cents`."""
    amount = Decimal(str(value).replace("$", "").replace(",", ""))
    choice = rnd.randrange(5)
    if choice == 0:
        return "", f"${amount:,.2f}"
    if choice == 1:
        return "", f"{amount:,.2f}"
    if choice == 2:
        return "", amount
    if choice == 3:
        return "Cents", int(amount * 100)
    return "", str(amount)


def respell_phone(text: str, rnd: random.Random) -> Any:
    digits = re.sub(r"\D", "", text)[-10:]
    a, b, c = digits[:3], digits[3:6], digits[6:]
    return rnd.choice([f"({a}) {b}-{c}", f"{a}-{b}-{c}", f"{a}.{b}.{c}", f"+1 {a} {b} {c}", f"1{digits}",
                       f"+1{digits}", digits, int(digits), f" {a} {b} {c} "])


class Respeller:
    def __init__(self, rnd: random.Random, tz: ZoneInfo) -> None:
        self.rnd = rnd
        self.tz = tz
        self.style = rnd.choice(STYLES + [None])  # None: a different style per key
        self.dropped_service_ids = False

    def key(self, key: str) -> str:
        style = self.style or self.rnd.choice(STYLES)
        return style(words_of(key))

    def value(self, key: str, value: Any) -> tuple[str, Any]:
        k = norm(key)
        if isinstance(value, dict):
            return key, self.obj(value)
        if k == "services":
            return key, self.services(value)
        if isinstance(value, list):
            return key, [self.obj(v) if isinstance(v, dict) else v for v in value]
        if value is None or value == "":
            return key, value
        if k in MONEY_KEYS:
            suffix, new = respell_money(value, self.rnd)
            return key + suffix, new
        if k in LOCAL_TIME_KEYS:
            return key, respell_local_time(value, self.tz, self.rnd)
        if k in DOB_KEYS:
            return key, respell_dob(value, self.rnd)
        if k in PHONE_KEYS:
            return key, respell_phone(value, self.rnd)
        if k == "email":
            return key, " " * self.rnd.randrange(3) + "".join(
                ch.upper() if self.rnd.random() < 0.5 else ch for ch in value) + " " * self.rnd.randrange(3)
        if k == "status" and norm(value) in STATUS_SPELLINGS:
            return key, self.rnd.choice(STATUS_SPELLINGS[norm(value)])
        if k.endswith("id") and k not in {"eventid"} and isinstance(value, (str, int)) and str(value).isdigit():
            return key, self.rnd.choice([int(value), str(value), f" {value} "])
        return key, value

    def services(self, value: Any) -> Any:
        if isinstance(value, str):
            names = [s.strip() for s in value.split(",")]
            return self.rnd.choice([names, value, [{"name": n} for n in names]])
        if self.rnd.random() < 0.5:
            return [self.obj(v) for v in value]
        # Objects → names, with the types given alongside (services lose their ids then).
        self.dropped_service_ids = True
        names = [s["name"] for s in value]
        types = [s.get("serviceType") for s in value]
        return {"names": names, "types": types}

    def obj(self, body: dict[str, Any]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key, value in body.items():
            new_key, new_value = self.value(key, value)
            if isinstance(new_value, dict) and set(new_value) == {"names", "types"}:
                out[self.key(new_key)] = self.rnd.choice([new_value["names"], ", ".join(new_value["names"])])
                types = new_value["types"]
                if len(set(types)) == 1 and self.rnd.random() < 0.5:
                    out[self.key("serviceType")] = types[0]
                else:
                    out[self.key("serviceTypes")] = self.rnd.choice([types, ", ".join(types)])
                continue
            out[self.key(new_key) if not key.isupper() else new_key] = new_value
        return out


def form_fields(prefix: str, value: Any, out: list[tuple[str, str]]) -> bool:
    """Bracketed form fields (`client[firstName]=Jane`); False when the value needs JSON (lists of objects)."""
    if isinstance(value, dict):
        return all(form_fields(f"{prefix}[{k}]" if prefix else k, v, out) for k, v in value.items())
    if isinstance(value, list):
        if any(isinstance(v, (dict, list)) for v in value):
            return False
        out.append((prefix, ", ".join(str(v) for v in value)))
        return True
    if value is not None:
        out.append((prefix, str(value)))
    return True


def envelope(body: dict[str, Any], kind_key: str | None, rnd: random.Random) -> dict[str, Any]:
    choice = rnd.randrange(4)
    if choice == 0 or kind_key is None:
        return body
    wrapper = rnd.choice(["data", "payload", "Data", "PAYLOAD"])
    if choice == 1:
        return {wrapper: body}
    inner = {k: v for k, v in body.items() if k != kind_key}
    return {kind_key: body[kind_key], wrapper: inner}


def respell(name: str, rnd: random.Random) -> tuple[bytes, dict[str, str], bool]:
    body = json.loads(json.dumps(FIXTURE_BODIES[name], default=str), parse_float=Decimal)
    tz = ZoneInfo(body.get("location", {}).get("timezone") or "America/Phoenix") if isinstance(
        body.get("location"), dict) else ZoneInfo("America/Phoenix")
    headers: dict[str, str] = {}
    kind_key = next((k for k in body if norm(k) in {"event", "eventtype"}), None)
    if kind_key is not None:
        spelling = rnd.choice(KIND_SPELLINGS.get(body[kind_key], [body[kind_key]]) + [body[kind_key]])
        if spelling is None:  # the event is implied by the webhook URL (and the status, where there is one)
            del body[kind_key]
            headers["apro-resource"] = {"c": "clients", "i": "invoices", "a": "appointments"}[name[0]]
            kind_key = None
        elif isinstance(spelling, tuple):
            del body[kind_key]
            body["type"], body["action"] = spelling
            kind_key = None
        else:
            body[kind_key] = spelling
    speller = Respeller(rnd, tz)
    body = speller.obj(body)
    body = envelope(body, next((k for k in body if norm(k) in {"event", "eventtype"}), None), rnd)
    if rnd.random() < 0.25:
        pairs: list[tuple[str, str]] = []
        if form_fields("", body, pairs):
            raw = urlencode(pairs).encode()
        else:
            raw = urlencode({"payload": json.dumps(body, default=str)}).encode()
        headers["content-type"] = "application/x-www-form-urlencoded"
        return raw, headers, speller.dropped_service_ids
    return json.dumps(body, default=str).encode(), headers, speller.dropped_service_ids


def canonical(result: Any, drop_service_ids: bool) -> dict[str, Any]:
    data = result.model_dump(mode="json", exclude={"source_kind"})
    if drop_service_ids:
        for appt in (data.get("appointment"), (data.get("invoice") or {}).get("appointment")):
            for service in (appt or {}).get("services", []):
                service["id"] = None
    return data


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(name=st.sampled_from(sorted(FIXTURE_BODIES)), rnd=st.randoms(use_true_random=False))
def test_respelled_fixture_gives_the_same_event(name: str, rnd: random.Random) -> None:
    if name == "test_ping":  # its event id is the body hash, which any re-spelling changes
        return
    raw, headers, dropped = respell(name, rnd)
    result = normalize(raw, headers)
    assert type(result) is type(REFERENCE[name]), (raw, getattr(result, "reason", None))
    assert canonical(result, dropped) == canonical(REFERENCE[name], dropped), raw


def test_reference_results_are_events() -> None:
    assert sum(isinstance(r, NormalizedEvent) for r in REFERENCE.values()) == len(REFERENCE) - 2


# ---------------------------------------------------------------------------------------- never raises

# Text includes lone surrogates (json.dumps escapes them as `\ud800`): the fuzz run found they broke output.
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True)
    | st.text(st.characters(exclude_categories=()), max_size=20)
    | st.decimals(allow_nan=False, allow_infinity=False),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(
        st.sampled_from(["event", "client", "appointment", "invoice", "id", "clientId", "email", "phone", "total",
                         "amountPaidCents", "start", "services", "status", "location", "timezone", "data", "dob",
                         "items", "type", "action"]) | st.text(max_size=8), children, max_size=6),
    max_leaves=30,
)


@settings(max_examples=200, deadline=None)
@given(
    raw=st.binary(max_size=300), ctype=st.sampled_from([None, "application/json", "application/x-www-form-urlencoded"])
)
def test_arbitrary_bytes_never_raise(raw: bytes, ctype: str | None) -> None:
    result = normalize(raw, {"content-type": ctype} if ctype else None)
    assert isinstance(result, (NormalizedEvent, Skipped, Unreadable))


@settings(max_examples=200, deadline=None)
@given(body=json_values, resource=st.sampled_from(["", "clients", "appointments", "invoices"]))
def test_arbitrary_json_never_raises(body: Any, resource: str) -> None:
    raw = json.dumps(body, default=str).encode()
    result = normalize(raw, {"apro-resource": resource, "apro-received-at": "garbage"})
    assert isinstance(result, (NormalizedEvent, Skipped, Unreadable))
    result.model_dump_json()  # whatever comes out can be written to a topic
    if isinstance(result, Unreadable):
        assert not result.reason.startswith("internal error"), result.reason


@settings(max_examples=200, deadline=None)
@given(name=st.sampled_from(sorted(FIXTURE_BODIES)), path_pick=st.randoms(use_true_random=False), junk=json_values)
def test_fixture_with_a_junk_field_never_raises(name: str, path_pick: random.Random, junk: Any) -> None:
    body = json.loads(json.dumps(FIXTURE_BODIES[name], default=str))
    node = body
    while True:  # walk to a random object and replace one of its fields with junk
        key = path_pick.choice(list(node))
        if isinstance(node[key], dict) and path_pick.random() < 0.6:
            node = node[key]
            continue
        node[key] = junk
        break
    result = normalize(json.dumps(body, default=str).encode())
    assert isinstance(result, (NormalizedEvent, Skipped, Unreadable))
    result.model_dump_json()  # whatever comes out can be written to a topic
    if isinstance(result, Unreadable):
        assert not result.reason.startswith("internal error"), result.reason
