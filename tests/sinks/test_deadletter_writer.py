"""Dead-lettering a sink record (sinks/deadletter_writer.py): the original bytes and headers plus the dead-letter
headers, the broker's ack awaited, the count by bounded labels."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

import pytest
from prometheus_client import REGISTRY

from foundations import metrics
from foundations.formats import deadletter
from foundations.formats import headers as header_names
from sinks.deadletter_writer import DeadLetterWriter


class _Topic:
    """The part of faust.TopicT the writer uses: `send` returns a future the broker's ack resolves."""

    def __init__(self, fail: bool = False) -> None:
        self.sent: list[dict[str, Any]] = []
        self.fail = fail

    async def send(self, **record: Any) -> asyncio.Future[None]:
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        if self.fail:
            fut.set_exception(ConnectionError("broker down"))
        else:
            self.sent.append(record)
            fut.set_result(None)
        return fut


def _message(**overrides: Any) -> SimpleNamespace:
    fields: dict[str, Any] = dict(topic="apro.events.normalized", partition=3, offset=41, key=b"client-7",
                                  headers=[(header_names.RECEIVED_AT, b"2026-12-02T01:00:00+00:00")])
    fields.update(overrides)
    return SimpleNamespace(**fields)


def _count(location: str, reason: str) -> float:
    return REGISTRY.get_sample_value("apro_events_deadlettered_total",
                                     {"location": location, "stage": "sync", "reason": reason}) or 0.0


async def test_the_record_keeps_its_bytes_and_headers_and_says_why_and_where_from() -> None:
    topic = _Topic()
    writer = DeadLetterWriter(topic, metrics.LocationLabels(["downtown"]), stage="sync")
    before = _count("downtown", "HTTP 422 from POST /contacts/upsert")
    await writer.write(_message(), b'{"event_id": "e1"}', "HTTP 422 from POST /contacts/upsert: invalid email",
                       event_id="e1", location="downtown")
    [record] = topic.sent
    assert record["key"] == b"client-7" and record["value"] == b'{"event_id": "e1"}'
    headers = {k: v.decode() for k, v in record["headers"]}
    assert headers[header_names.RECEIVED_AT] == "2026-12-02T01:00:00+00:00"
    assert headers[header_names.DLQ_STAGE] == "sync"
    assert headers[header_names.REASON] == "HTTP 422 from POST /contacts/upsert: invalid email"
    assert headers[header_names.DLQ_EVENT_ID] == "e1"
    assert deadletter.source(headers) == ("apro.events.normalized", 3, 41)
    assert headers[header_names.DLQ_LOCATION] == "downtown"
    assert _count("downtown", "HTTP 422 from POST /contacts/upsert") == before + 1


async def test_an_unreadable_record_keeps_the_event_id_an_earlier_dead_letter_gave_it() -> None:
    topic = _Topic()
    writer = DeadLetterWriter(topic, metrics.LocationLabels([]), stage="sync")
    message = _message(key=None, headers=[(header_names.DLQ_EVENT_ID, b"e9")])
    await writer.write(message, b"\xff not json", "unreadable normalized event", event_id="", location="unknown")
    [record] = topic.sent
    assert record["key"] is None
    assert {k: v.decode() for k, v in record["headers"]}[header_names.DLQ_EVENT_ID] == "e9"


async def test_a_location_the_configuration_does_not_name_is_counted_as_other() -> None:
    writer = DeadLetterWriter(_Topic(), metrics.LocationLabels(["downtown"]), stage="sync")
    before = _count("other", "plan")
    await writer.write(_message(), b"{}", "plan: no appointment", event_id="e2", location="x" * 500)
    assert _count("other", "plan") == before + 1


async def test_a_failed_send_raises_and_counts_nothing() -> None:
    writer = DeadLetterWriter(_Topic(fail=True), metrics.LocationLabels(["downtown"]), stage="sync")
    before = _count("downtown", "HTTP 400 from POST /contacts/upsert")
    with pytest.raises(ConnectionError):
        await writer.write(_message(), b"{}", "HTTP 400 from POST /contacts/upsert", event_id="e3",
                           location="downtown")
    assert _count("downtown", "HTTP 400 from POST /contacts/upsert") == before
