"""The normalized event a sink record carries, parsed once per record (the result is cached on the Faust event)."""

from __future__ import annotations

from datetime import datetime, timezone

import faust
from pydantic import ValidationError

from foundations.formats import headers as header_names
from foundations.formats.normalized import NormalizedEvent
from sinks.errors import UnreadableEvent


def normalized(event: faust.EventT) -> NormalizedEvent:
    """The record's event; `UnreadableEvent` when it does not parse (it is dead-lettered)."""
    cached = getattr(event, "_apro_parsed", None)
    if cached is not None:
        return cached
    raw = event.message.value if isinstance(event.message.value, bytes) else event.value
    try:
        parsed = NormalizedEvent.model_validate_json(raw or b"")
    except ValidationError:
        raise UnreadableEvent("unreadable normalized event") from None
    try:
        event._apro_parsed = parsed  # type: ignore[attr-defined]  # noqa: SLF001 - cache on the event
    except AttributeError:
        pass
    return parsed


def event_id(event: faust.EventT) -> str:
    """The event id for logs ("?" when the record does not parse)."""
    try:
        return normalized(event).event_id
    except UnreadableEvent:
        return "?"


def received_header(event: faust.EventT) -> datetime | None:
    """When the intake accepted the webhook (header), for events whose body does not say."""
    value = header_names.to_dict(event.message.headers).get(header_names.RECEIVED_AT)
    if not value:
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=timezone.utc)


__all__ = ["event_id", "normalized", "received_header"]
