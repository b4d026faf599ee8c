"""sinks/shadow.py without a broker: what is a read, the recorded call, the synthesized answers; the settings."""

from __future__ import annotations

import json
from datetime import datetime, timezone

import pytest

from foundations.config import Settings
from sinks import shadow


def test_reads_and_writes() -> None:
    assert shadow.is_read("GET", "/contacts/{contactId}/notes")
    assert shadow.is_read("POST", "/contacts/search")
    assert not shadow.is_read("POST", "/contacts/upsert")
    assert not shadow.is_read("PUT", "/opportunities/{id}")


def test_record_names_the_call_and_the_op_without_phi_in_headers() -> None:
    at = datetime(2026, 11, 30, tzinfo=timezone.utc)
    key, value, headers = shadow.record("loc1", "POST", "/contacts/{contactId}/notes", {"contactId": "c1"}, None,
                                   {"body": "Jane Doe paid"}, ("48213", "e1", "e1:add_note:0"), at)
    assert key == b"48213"
    data = json.loads(value)
    assert data["method"] == "POST" and data["path"] == "/contacts/{contactId}/notes"
    assert data["pathParams"] == {"contactId": "c1"} and data["body"] == {"body": "Jane Doe paid"}
    assert (data["locationId"], data["eventId"], data["opId"]) == ("loc1", "e1", "e1:add_note:0")
    header_text = b" ".join(v for _, v in headers)
    assert b"Jane" not in header_text
    described = shadow.describe({k: v.decode() for k, v in headers})
    assert described == ["call=POST /contacts/{contactId}/notes", "location=loc1", "op=e1:add_note:0"]
    assert shadow.describe({}) == []


def test_answers_give_stable_ids() -> None:
    body = {"email": "Jane@Example.com", "phone": "+14805550134", "locationId": "loc1"}
    first = shadow.answer("POST", "/contacts/upsert", {}, body, "loc1", None)
    again = shadow.answer("POST", "/contacts/upsert", {}, {**body, "email": "jane@example.com"}, "loc1", None)
    assert first["contact"]["id"] == again["contact"]["id"] and first["contact"]["id"].startswith("shadow-")
    assert first["contact"]["phone"] == "+14805550134"
    found = shadow.answer("POST", "/contacts/upsert", {}, body, "loc1", "realContact1")
    assert found["contact"]["id"] == "realContact1" and found["new"] is False
    opp = shadow.answer("POST", "/opportunities/", {}, {"contactId": "c1", "pipelineId": "p1"}, "loc1", None)
    assert opp["opportunity"]["id"].startswith("shadow-")
    assert shadow.answer("PUT", "/opportunities/{id}", {"id": "o1"}, {"status": "won"}, "loc1", None)[
        "opportunity"] == {"status": "won", "id": "o1"}


def test_reads_about_shadow_objects_are_answered_locally() -> None:
    sid = shadow.shadow_id("loc1", "contact", "x")
    assert shadow.read_of_shadow_object("/contacts/{contactId}/notes", {"contactId": sid}, {}) == {"notes": []}
    assert shadow.read_of_shadow_object("/opportunities/search", {}, {"contact_id": sid})["opportunities"] == []
    assert shadow.read_of_shadow_object("/contacts/{contactId}/notes", {"contactId": "real1"}, {}) is None


def test_sink_mode_setting() -> None:
    live = Settings(_env_file=None, topic_prefix="p.")
    shadow = Settings(_env_file=None, topic_prefix="p.", sink_mode="shadow")
    assert live.sink_mode == "live" and live.consumer_group == live.worker_id
    assert shadow.consumer_group == f"{live.worker_id}.shadow"
    assert shadow.topics.raw == live.topics.raw and shadow.topics.quarantine == live.topics.quarantine
    assert shadow.topics.normalized == live.topics.normalized + ".shadow"
    assert shadow.topics.shadow == live.topics.shadow == "p.apro.sink.shadow"
    assert live.topics.shadow in {spec.name for spec in live.topic_specs()}
    with pytest.raises(ValueError):
        Settings(_env_file=None, sink_mode="dry-run")
