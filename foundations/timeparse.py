"""Points in time typed by an operator (`replay --since/--until`). Pure: `now` is passed in.

Accepted: ISO 8601 (UTC without an offset), relative (`90s`, `2h`, `1h30m`, `1w`), epoch seconds or
milliseconds (13+ digits), and `now`."""

from __future__ import annotations

import re
from datetime import datetime, timedelta, timezone

from dateutil.parser import isoparse

_RELATIVE = re.compile(r"^(?:(\d+)w)?(?:(\d+)d)?(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?$")
_EPOCH = re.compile(r"^\d+(?:\.\d+)?$")
# 13+ digit integers are milliseconds: 1e12 s would be the year 33658.
_EPOCH_MS_MIN = 10**12

HELP = ("ISO 8601 (e.g. 2026-01-15T08:00:00-07:00; no offset = UTC), relative to now (30m, 2h, 1d, 1w, 1h30m), "
        "epoch seconds or milliseconds, or 'now'")


class TimeParseError(ValueError):
    """The text is not a time this module understands (the message quotes it: operator input, not PHI)."""


def parse_time(text: str, now: datetime) -> datetime:
    """Operator text → timezone-aware UTC datetime. `now` must be aware."""
    if now.tzinfo is None:
        raise ValueError("now must be timezone-aware")
    value = text.strip().lower()
    if not value:
        raise TimeParseError("empty time")
    if value == "now":
        return now.astimezone(timezone.utc)
    if _EPOCH.match(value):
        number = float(value)
        seconds = number / 1000 if number >= _EPOCH_MS_MIN else number
        try:
            return datetime.fromtimestamp(seconds, timezone.utc)
        except (OverflowError, OSError, ValueError):
            raise TimeParseError(f"epoch out of range: {text!r}") from None
    match = _RELATIVE.match(value)
    if match and any(match.groups()):
        weeks, days, hours, minutes, seconds = (int(g) if g else 0 for g in match.groups())
        delta = timedelta(weeks=weeks, days=days, hours=hours, minutes=minutes, seconds=seconds)
        return (now - delta).astimezone(timezone.utc)
    try:
        parsed = isoparse(text.strip())
    except (ValueError, OverflowError):
        raise TimeParseError(f"not a time: {text!r} (expected {HELP})") from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=timezone.utc)  # documented: naive = UTC
    return parsed.astimezone(timezone.utc)


def to_millis(moment: datetime) -> int:
    """Aware datetime → Kafka timestamp (epoch milliseconds)."""
    if moment.tzinfo is None:
        raise ValueError("moment must be timezone-aware")
    return int(moment.timestamp() * 1000)


def from_millis(millis: int) -> datetime:
    return datetime.fromtimestamp(millis / 1000, timezone.utc)
