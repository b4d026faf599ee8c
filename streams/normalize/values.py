"""Pure value parsers for webhook fields: instants, calendar dates, money, phones, emails, services.

Each parser takes whatever JSON / form value arrived and returns a clean Python value or None when the value is
absent. A value that is present but cannot be read raises `FieldError`, whose message names the rule that
failed and never quotes the value (values are PHI). Callers decide whether a bad value is fatal (ids, money,
appointment times) or only noted (email, phone, date of birth).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from datetime import date, datetime, timezone
from decimal import Decimal, InvalidOperation
from email.utils import parsedate_to_datetime
from functools import lru_cache
from typing import Any, TypeVar
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import phonenumbers
from email_validator import EmailNotValidError, validate_email

from foundations.formats.normalized import Service
from foundations.formats.raw import Lookup, clean_text, get, id_str, is_object
from streams.normalize.fields import Fields


class FieldError(ValueError):
    """A present value that breaks a parsing rule. The message is safe to log: it names the rule only."""


# --------------------------------------------------------------------------------------------- time zones


@lru_cache(maxsize=256)
def zone(name: str | None) -> ZoneInfo | None:
    """A ZoneInfo for an IANA name, or None when the name is missing or unknown."""
    if not name or not isinstance(name, str):
        return None
    try:
        return ZoneInfo(name.strip())
    except (ZoneInfoNotFoundError, ValueError, OSError):
        return None


# ------------------------------------------------------------------------------------------ dates & times

_EPOCH_RE = re.compile(r"-?\d{9,13}(\.\d+)?")
# US and ColdFusion shapes; ISO 8601 and `YYYY-MM-DD HH:MM:SS` go through datetime.fromisoformat.
_NAIVE_FORMATS = (
    "%m/%d/%Y %H:%M:%S",
    "%m/%d/%Y %H:%M",
    "%m/%d/%Y %I:%M:%S %p",
    "%m/%d/%Y %I:%M %p",
    "%m/%d/%Y %I:%M%p",
    "%m/%d/%Y",
    "%m-%d-%Y",
    "%B, %d %Y %H:%M:%S",  # ColdFusion: "December, 12 2026 09:00:00"
    "%B, %d %Y %H:%M",
    "%B, %d %Y",
    "%b, %d %Y %H:%M:%S",
    "%b, %d %Y",
    "%B %d, %Y %H:%M:%S",
    "%B %d, %Y %I:%M %p",
    "%B %d, %Y",
    "%b %d, %Y",
    "%Y/%m/%d %H:%M:%S",
    "%Y/%m/%d %H:%M",
    "%Y/%m/%d",
)
_MAX_TEXT = 64


def _epoch(value: Decimal | int | float) -> datetime:
    number = Decimal(str(value))
    if not number.is_finite():
        raise FieldError("epoch is not finite")
    # Epoch milliseconds are 13 digits today; seconds are 10. 1e11 s is the year 5138, so the cut is safe.
    if abs(number) >= Decimal(10) ** 11:
        number = number / 1000
    try:
        return datetime.fromtimestamp(float(number), tz=timezone.utc)
    except (OverflowError, OSError, ValueError):
        raise FieldError("epoch out of range") from None


def _parse_text(text: str) -> tuple[datetime, bool]:
    """Text → (datetime, date_only). The datetime is naive unless the text carried an offset."""
    text = text.strip()
    if len(text) > _MAX_TEXT:
        raise FieldError("date text too long")
    # Memoised by the raw text: the same dates recur (birthdays, a day's appointments, a client's repeats) and
    # the format search (strptime over many shapes) costs tens of µs. Pure, and datetimes are immutable.
    parsed = _parse_text_cached(text)
    if isinstance(parsed, str):
        raise FieldError(parsed)
    return parsed


@lru_cache(maxsize=8192)
def _parse_text_cached(text: str) -> tuple[datetime, bool] | str:
    """`_parse_text` that returns the FieldError message instead of raising (lru_cache keeps no exceptions)."""
    try:
        return _parse_text_uncached(text)
    except FieldError as exc:
        return str(exc)


def _parse_text_uncached(text: str) -> tuple[datetime, bool]:
    if _EPOCH_RE.fullmatch(text):
        return _epoch(Decimal(text)), False
    iso = text[:-1] + "+00:00" if text.endswith(("Z", "z")) else text
    try:
        parsed = datetime.fromisoformat(iso)
        return parsed, len(text) <= 10 and "T" not in text and ":" not in text
    except ValueError:
        pass
    compact = re.sub(r"\s+", " ", text)
    for fmt in _NAIVE_FORMATS:
        try:
            parsed = datetime.strptime(compact, fmt)
        except ValueError:
            continue
        return parsed, "%H" not in fmt and "%I" not in fmt
    try:  # RFC 2822 ("Tue, 01 Dec 2026 10:30:00 -0700"), seen from some HTTP-era senders
        return parsedate_to_datetime(text), False
    except (TypeError, ValueError, IndexError):
        pass
    raise FieldError("unrecognised date format")


def parse_instant(value: Any, tz: ZoneInfo) -> datetime | None:
    """Any accepted date/time shape → an aware UTC datetime. A naive value is local to `tz`."""
    if value is None or value == "":
        return None
    if isinstance(value, bool):
        raise FieldError("boolean is not a date")
    if isinstance(value, (int, Decimal, float)):
        return _epoch(value)
    if not isinstance(value, str):
        raise FieldError("date is not text or a number")
    parsed, _ = _parse_text(value)
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=tz)
    return parsed.astimezone(timezone.utc)


def parse_calendar_date(value: Any) -> date | None:
    """A calendar date (date of birth, invoice date) exactly as written: never shifted through a time zone.

    `1985-03-14T00:00:00-07:00` is 14 March whatever the zone; epoch numbers are read as UTC days.
    """
    if value is None or value == "":
        return None
    if isinstance(value, bool):
        raise FieldError("boolean is not a date")
    if isinstance(value, (int, Decimal, float)):
        return _epoch(value).date()
    if not isinstance(value, str):
        raise FieldError("date is not text or a number")
    parsed, _ = _parse_text(value)
    return parsed.date()


def combine_date_time(day: Any, clock: Any) -> Any:
    """Separate date and time fields (`apptDate` + `apptTime`) → one text value; otherwise `day` unchanged."""
    if isinstance(day, str) and isinstance(clock, str) and clock.strip():
        try:
            parsed, date_only = _parse_text(day)
        except FieldError:
            return day
        if date_only:
            return f"{parsed.date().isoformat()} {_clock(clock)}"
    return day


def _clock(text: str) -> str:
    text = text.strip()
    for fmt in ("%H:%M:%S", "%H:%M", "%I:%M %p", "%I:%M%p", "%I:%M:%S %p"):
        try:
            return datetime.strptime(text, fmt).time().isoformat()
        except ValueError:
            continue
    raise FieldError("unrecognised time format")


# ----------------------------------------------------------------------------------------------- money

_MONEY_RE = re.compile(r"-?\d+(\.\d+)?")
_MONEY_NOISE = re.compile(r"(?i)\s|\$|,|usd")
_CENT = Decimal("0.01")


def _canonical(amount: Decimal) -> Decimal:
    """Two decimal places when that is exact (1150 → 1150.00), otherwise the value untouched (never rounds)."""
    if not amount.is_finite():
        raise FieldError("amount is not finite")
    exponent = amount.as_tuple().exponent
    if isinstance(exponent, int) and exponent >= -2:
        return amount.quantize(_CENT)
    return amount


def parse_money(value: Any, *, cents: bool = False) -> Decimal | None:
    """Numbers, `"$1,150.00"`, `"(12.50)"`, or integer cents when `cents` → an exact Decimal."""
    if value is None or value == "":
        return None
    if isinstance(value, bool):
        raise FieldError("boolean is not an amount")
    if isinstance(value, int):
        amount = Decimal(value)
    elif isinstance(value, Decimal):
        amount = value
    elif isinstance(value, float):  # parse_body never yields floats; str() keeps the shortest exact repr
        amount = Decimal(str(value))
    elif isinstance(value, str):
        text = value.strip()
        if len(text) > _MAX_TEXT:
            raise FieldError("amount text too long")
        negative = text.startswith("(") and text.endswith(")")
        if negative:
            text = text[1:-1]
        text = _MONEY_NOISE.sub("", text)
        if text.startswith("-$"):
            text = "-" + text[2:]
        if not _MONEY_RE.fullmatch(text):
            raise FieldError("unrecognised amount format")
        amount = Decimal(text)
        if negative:
            amount = -amount
    else:
        raise FieldError("amount is not text or a number")
    if cents:
        if amount != amount.to_integral_value():
            raise FieldError("cents amount is not an integer")
        amount = Decimal(int(amount)) / 100
    try:
        return _canonical(amount)
    except InvalidOperation:
        raise FieldError("amount out of range") from None


def money_field(block: Any, *names: str, look: Lookup | None = None) -> Decimal | None:
    """First present amount under `names`, also trying each name's `…Cents` / `…_cents` spelling (in cents)."""
    lookup = look.get if look is not None else get
    for name in names:
        plain = lookup(block, name)
        if plain is not None:
            return parse_money(plain)
        in_cents = lookup(block, name + "Cents")
        if in_cents is not None:
            return parse_money(in_cents, cents=True)
    return None


def parse_decimal(value: Any) -> Decimal | None:
    """A plain quantity (line-item quantity): exact Decimal, no currency handling."""
    if value is None or value == "" or isinstance(value, bool):
        return None
    try:
        amount = Decimal(str(value).strip().replace(",", ""))
    except InvalidOperation:
        raise FieldError("unrecognised number format") from None
    if not amount.is_finite():
        raise FieldError("number is not finite")
    return amount


# ------------------------------------------------------------------------------------- phones & emails


def parse_phone(value: Any, region: str = "US") -> str | None:
    """Any common US or international format → E.164; None when absent or not a valid number."""
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, (int, Decimal)):
        value = str(int(value)) if value == int(value) else str(value)
    if not isinstance(value, str):
        return None
    text = value.strip()
    if not text or len(text) > _MAX_TEXT:
        return None
    return _phone(text, region)


# A US number in one of the usual shapes (`(480) 555-0134`, `480.555.0134`, `+1 480 555 0134`): its digits are what
# phonenumbers.parse would find, so only the validity check asks the library (tests/test_parsing_phone.py).
_US_PHONE = re.compile(r"(?:\+?1[ .-]?)?\(?([2-9]\d\d)\)?[ .-]?([2-9]\d\d)[ .-]?(\d{4})")


def _valid_nanp(number: phonenumbers.PhoneNumber) -> bool:
    """`phonenumbers.is_valid_number` for a +1 number, US first: a number valid for the US is valid (the library
    would find the US region first), and the full check (every +1 region) runs only for the rest. Same answers,
    half the cost for the common case (tests/streams/normalize/test_values_phone.py)."""
    return phonenumbers.is_valid_number_for_region(number, "US") or phonenumbers.is_valid_number(number)


@lru_cache(maxsize=16384)
def _phone(text: str, region: str) -> str | None:
    # Memoised: the same clients' numbers recur, and phonenumbers costs ~40 µs a parse. Pure.
    plain = _US_PHONE.fullmatch(text) if region == "US" else None
    if plain is not None:
        digits = "".join(plain.groups())
        number = phonenumbers.PhoneNumber(country_code=1, national_number=int(digits))
        return f"+1{digits}" if _valid_nanp(number) else None
    try:
        number = phonenumbers.parse(text, region)
    except phonenumbers.NumberParseException:
        return None
    if not phonenumbers.is_valid_number(number):
        return None
    return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)


def parse_email(value: Any) -> str | None:
    """Trimmed, lower-cased, syntax-checked address (no DNS lookups); None when absent or invalid."""
    if not isinstance(value, str):
        return None
    text = value.strip()
    if not text or len(text) > 320:
        return None
    if len(text) <= 254 and _PLAIN_EMAIL.fullmatch(text) and "--" not in text and text.index("@") <= 64:
        return text.lower()  # what email-validator answers for a plain address (tests/test_parsing_email.py)
    return _email(text)


# Plain ASCII addresses, for which email-validator's answer is the address lower-cased: dot-atom local part of
# letters, digits, `_+-`; host labels of letters, digits and inner hyphens (no `--`, so no IDNA `xn--` labels);
# a common top-level domain (never a special-use name such as .test or .local). Anything else asks the library.
_PLAIN_EMAIL = re.compile(
    r"[A-Za-z0-9_+-]+(?:\.[A-Za-z0-9_+-]+)*@(?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)+"
    r"(?i:com|net|org|edu|gov|us|io|co|info|biz|me|ca|uk|mx)"
)


@lru_cache(maxsize=16384)
def _email(text: str) -> str | None:
    # Memoised: the same clients' addresses recur, and email-validator costs ~70 µs a check. Pure.
    try:
        checked = validate_email(text, check_deliverability=False)
    except (EmailNotValidError, UnicodeError, ValueError):
        return None
    return checked.normalized.lower()


# -------------------------------------------------------------------------------------------- services

_SERVICE_NAME_KEYS = ("name", "serviceName", "service", "title", "description", "treatment")
_SERVICE_ID_KEYS = ("id", "serviceId", "code")
_SERVICE_TYPE_KEYS = ("serviceType", "type", "category", "serviceCategory", "serviceTypeName")


def split_list(value: Any) -> list[Any]:
    """A list stays a list; `"A, B"` → ["A", "B"]; a scalar → [scalar]; None → []."""
    if value is None:
        return []
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    if isinstance(value, Sequence):
        return list(value)
    return [value]


def _text(value: Any) -> str | None:
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, (int, Decimal)):
        return id_str(value)
    if isinstance(value, str):
        return clean_text(value).strip() or None
    if is_object(value):
        return _text(get(value, "name", "title", "value"))
    return None


_SHARED: dict[tuple[Any, ...], Any] = {}
_SHARED_MAX = 4096  # distinct clinics, providers and services are few; the bound only matters against hostile input
ModelT = TypeVar("ModelT")


def shared(model: Callable[..., ModelT], **fields: Any) -> ModelT:
    """`model(**fields)` built once per distinct value: a clinic, a provider or a service repeats across events,
    and building an immutable model costs as much as reading its block."""
    key = (model, *fields.items())
    found = _SHARED.get(key)
    if found is None:
        if len(_SHARED) >= _SHARED_MAX:
            _SHARED.clear()
        found = _SHARED[key] = model(**fields)
    return found

_SERVICE = Fields(name=_SERVICE_NAME_KEYS, id=_SERVICE_ID_KEYS, type=_SERVICE_TYPE_KEYS)


def parse_services(services: Any, service_types: Any = None) -> tuple[Service, ...]:
    """Services as objects, strings or one comma-separated string; types likewise, or one type for all."""
    types = [_text(t) for t in split_list(service_types)]
    out: list[Service] = []
    for index, item in enumerate(split_list(services)):
        if is_object(item):
            found = _SERVICE.read_object(item)
            name = _text(found.get("name"))
            sid = id_str(found.get("id"))
            stype = _text(found.get("type"))
        else:
            name, sid, stype = _text(item), None, None
        if not name:
            continue
        if stype is None and types:
            stype = types[0] if len(types) == 1 else (types[index] if index < len(types) else None)
        out.append(shared(Service, id=sid, name=name, service_type=stype))
    return tuple(out)


def truthy(value: Any) -> bool:
    """A boolean-ish flag as JSON or form fields send it (true, "true", "1", "yes", 1)."""
    if isinstance(value, bool):
        return value
    if isinstance(value, (int, Decimal)):
        return value == 1
    if isinstance(value, str):
        return value.strip().lower() in {"true", "1", "yes", "y", "on"}
    return False


__all__ = [
    "FieldError", "combine_date_time", "money_field", "parse_calendar_date", "parse_decimal", "parse_email",
    "parse_instant", "parse_money", "parse_phone", "parse_services", "shared", "split_list", "truthy", "zone",
]
