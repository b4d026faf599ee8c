"""Webhook intake against the real embedded broker, served on a real loopback port."""

from __future__ import annotations

import asyncio
import json
import logging
from datetime import datetime

import pytest
import structlog

from foundations.config import Settings
from foundations.formats import headers as header_names
from foundations.logs import configure_logging
from producer.intake import FALLBACK_KEY
from tests.producer.intake_support import LOC3_TOKEN, TOKEN, headers_of, read_topic, running_intake

pytestmark = pytest.mark.integration

JSON = {"Content-Type": "application/json"}
# Client id each reference payload must be keyed by (read off the fixture files by hand).
EXPECTED_KEYS = {
    "appointment_cancelled": b"48213",
    "appointment_created": b"48213",
    "appointment_created_coldfusion_style": b"60012",
    "appointment_deleted": b"48213",
    "appointment_noshow": b"51877",
    "appointment_updated": b"48213",
    "client_created": b"48213",
    "client_updated": b"48213",
    "client_without_contact_info": b"48999",
    "invoice_paid": b"48213",
    "invoice_paid_retail_only": b"60012",
    "test_ping": FALLBACK_KEY,
    "client_marketing_opt_out": b"48213",
    "client_marketing_preferences_coldfusion_style": b"60012",
    "membership_created": b"48213",
    "membership_renewed": b"48213",
    "membership_cancelled": b"48213",
    "membership_expired": b"60012",
}


def raw_records(settings: Settings):
    return read_topic(settings.kafka_bootstrap_servers, settings.topics.raw)


def quarantined(settings: Settings):
    return read_topic(settings.kafka_bootstrap_servers, settings.topics.quarantine)


@pytest.mark.broker_neutral
async def test_bad_or_missing_token_is_refused_and_nothing_published(settings: Settings) -> None:
    body = b'{"event": "client.created", "clientId": 1}'
    async with running_intake(settings) as intake:
        for url, expected in [
            (intake.url("wrong-token-0123456789abcdef"), 401),
            (intake.url("wrong-token-0123456789abcdef", "clients"), 401),
            (intake.url(TOKEN[:-1]), 401),
            (intake.url(TOKEN + "x"), 401),
            (intake.base + "/webhooks/aestheticspro/", 404),
            (intake.base + "/webhooks/aestheticspro", 404),
            (intake.url(TOKEN, "patients"), 404),
        ]:
            async with intake.session.post(url, data=body, headers=JSON) as resp:
                assert resp.status == expected, url
    assert raw_records(settings) == []
    assert quarantined(settings) == []


@pytest.mark.broker_neutral
async def test_body_over_the_limit_is_413(settings: Settings) -> None:
    settings = settings.model_copy(update={"max_body_bytes": 4096})
    big = b'{"clientId": 1, "pad": "' + b"x" * 5000 + b'"}'

    async def chunked():  # no Content-Length: the limit is enforced while reading
        for i in range(0, len(big), 1000):
            yield big[i:i + 1000]

    async with running_intake(settings) as intake:
        async with intake.session.post(intake.url(), data=big, headers=JSON) as resp:
            assert resp.status == 413
        async with intake.session.post(intake.url(), data=chunked(), headers=JSON) as resp:
            assert resp.status == 413
        async with intake.session.post(intake.url(), data=b'{"clientId": 1}', headers=JSON) as resp:
            assert resp.status == 202
    assert [m.value() for m in raw_records(settings)] == [b'{"clientId": 1}']


@pytest.mark.broker_neutral
async def test_unreadable_body_is_400_and_quarantined_with_reason(settings: Settings) -> None:
    body = b"\x00\x01 this is not a webhook"
    async with running_intake(settings) as intake:
        async with intake.session.post(
            intake.url(TOKEN, "invoices"), data=body, headers={"Content-Type": "text/plain", "X-Request-ID": "q-1"}
        ) as resp:
            assert resp.status == 400
            answer = await resp.json()
        async with intake.session.post(intake.url(), data=b"[1, 2]", headers=JSON) as resp:
            assert resp.status == 400
    assert answer["requestId"] == "q-1" and answer["reason"]
    records = sorted(quarantined(settings), key=lambda m: m.timestamp()[1])
    assert [m.value() for m in records] == [body, b"[1, 2]"]
    first = headers_of(records[0])
    assert first[header_names.REASON] == answer["reason"]
    assert first[header_names.REQUEST_ID] == "q-1"
    assert first[header_names.CONTENT_TYPE] == "text/plain"
    assert first[header_names.RESOURCE] == "invoices"
    assert datetime.fromisoformat(first[header_names.RECEIVED_AT]).tzinfo is not None
    assert "not an object" in headers_of(records[1])[header_names.REASON]
    assert raw_records(settings) == []


async def test_accepted_webhook_is_one_unchanged_record_keyed_by_client(settings: Settings, fixture_bodies) -> None:
    body = fixture_bodies["client_created"]
    async with running_intake(settings) as intake:
        async with intake.session.post(
            intake.url(LOC3_TOKEN, "clients"), data=body,
            headers={"Content-Type": "application/json; charset=utf-8", "X-Request-ID": "req-abc.1"},
        ) as resp:
            assert resp.status == 202
            assert await resp.json() == {"status": "accepted", "requestId": "req-abc.1"}
    [record] = raw_records(settings)
    assert record.key() == b"48213"
    assert record.value() == body
    headers = headers_of(record)
    assert headers[header_names.REQUEST_ID] == "req-abc.1"
    assert headers[header_names.RESOURCE] == "clients"
    assert headers[header_names.CONTENT_TYPE] == "application/json; charset=utf-8"
    assert headers[header_names.TOKEN_LOCATION] == "3"
    assert datetime.fromisoformat(headers[header_names.RECEIVED_AT]).tzinfo is not None


@pytest.mark.broker_neutral
async def test_form_encoded_body_is_accepted_unchanged(settings: Settings) -> None:
    body = b"event=client.updated&client%5Bid%5D=777&client%5BfirstName%5D=Jane"
    async with running_intake(settings) as intake:
        async with intake.session.post(
            intake.url(), data=body, headers={"Content-Type": "application/x-www-form-urlencoded",
                                              "X-Request-ID": "has spaces so replaced"},
        ) as resp:
            assert resp.status == 202
            request_id = (await resp.json())["requestId"]
    assert request_id != "has spaces so replaced" and len(request_id) == 32
    [record] = raw_records(settings)
    assert (record.key(), record.value()) == (b"777", body)
    headers = headers_of(record)
    assert headers[header_names.REQUEST_ID] == request_id
    assert header_names.RESOURCE not in headers and header_names.TOKEN_LOCATION not in headers


@pytest.mark.broker_neutral
async def test_every_reference_payload_is_accepted_with_its_key(settings: Settings, fixture_bodies) -> None:
    assert set(fixture_bodies) == set(EXPECTED_KEYS), "a fixture was added: give it an expected key here"
    async with running_intake(settings) as intake:
        for name, body in fixture_bodies.items():
            async with intake.session.post(intake.url(), data=body, headers={**JSON, "X-Request-ID": name}) as resp:
                assert resp.status == 202, name
    by_request = {headers_of(m)[header_names.REQUEST_ID]: m for m in raw_records(settings)}
    assert set(by_request) == set(EXPECTED_KEYS)
    for name, record in by_request.items():
        assert record.key() == EXPECTED_KEYS[name], name
        assert record.value() == fixture_bodies[name], name


async def test_1000_concurrent_webhooks_give_1000_records(settings: Settings) -> None:
    ids = [f"burst-{i}" for i in range(1000)]
    async with running_intake(settings) as intake:
        async def post(request_id: str, client: int) -> int:
            body = json.dumps({"event": "client.updated", "clientId": client}).encode()
            async with intake.session.post(intake.url(), data=body, headers={**JSON, "X-Request-ID": request_id}) as r:
                return r.status

        statuses = await asyncio.gather(*(post(rid, i % 37) for i, rid in enumerate(ids)))
    assert statuses == [202] * 1000
    records = raw_records(settings)
    assert len(records) == 1000
    assert {headers_of(m)[header_names.REQUEST_ID] for m in records} == set(ids)
    for m in records:
        assert m.key() == str(json.loads(m.value())["clientId"]).encode()


@pytest.mark.broker_neutral
async def test_probes_and_metrics(settings: Settings) -> None:
    async with running_intake(settings) as intake:
        async with intake.session.post(intake.url(LOC3_TOKEN, "appointments"), data=b'{"clientId": 5}',
                                       headers=JSON) as resp:
            assert resp.status == 202
        async with intake.session.post(intake.url("nope-nope-nope-nope-nope"), data=b"{}", headers=JSON) as resp:
            assert resp.status == 401
        async with intake.session.get(intake.base + "/healthz") as resp:
            assert resp.status == 200
        async with intake.session.get(intake.base + "/readyz") as resp:
            assert resp.status == 200
        async with intake.session.get(intake.base + "/metrics") as resp:
            assert resp.status == 200
            text = await resp.text()
    assert 'apro_webhooks_received_total{location="3",outcome="accepted",resource="appointments"}' in text
    assert 'apro_webhooks_received_total{location="unknown",outcome="unauthorized",resource="none"}' in text
    assert 'apro_webhook_request_seconds_count{outcome="accepted"}' in text


@pytest.fixture
def restore_logging():
    """configure_logging changes process-wide state: put it back for the tests that follow."""
    root = logging.getLogger()
    handlers, level, config = list(root.handlers), root.level, structlog.get_config()
    yield
    root.handlers[:] = handlers
    root.setLevel(level)
    structlog.configure(**config)


@pytest.mark.broker_neutral
async def test_tokens_never_reach_the_logs(settings: Settings, capsys, caplog, restore_logging) -> None:
    configure_logging("DEBUG")
    wrong = "wrong-secret-0123456789abcdef"
    async with running_intake(settings) as intake:
        for url, body in [
            (intake.url(TOKEN, "clients"), b'{"clientId": 9, "email": "jane@example.com"}'),
            (intake.url(LOC3_TOKEN), b"not json at all"),
            (intake.url(TOKEN, "bogus"), b"{}"),
            (intake.url(wrong), b"{}"),
            (intake.url(TOKEN) + "?token=" + TOKEN, b"{}"),
        ]:
            async with intake.session.post(url, data=body, headers={"Content-Type": "text/plain"}) as resp:
                assert resp.status in (202, 400, 401, 404)
    captured = capsys.readouterr()
    logged = captured.err + captured.out + caplog.text
    assert "/webhooks/aestheticspro/***" in logged  # the access log did run
    for secret in (TOKEN, LOC3_TOKEN, wrong, "jane@example.com"):
        assert secret not in logged
    lines = [json.loads(line) for line in captured.err.splitlines() if line.startswith("{")]
    access = [line for line in lines if line.get("logger") == "apro_sync.producer.access"]
    assert {line["outcome"] for line in access} == {"accepted", "malformed", "not_found", "unauthorized"}
    assert all({"request_id", "status", "latency_ms", "location", "resource", "timestamp"} <= set(a) for a in access)
