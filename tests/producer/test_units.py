"""Pure pieces of the intake: token check, path redaction, request ids, keys and labels."""

from __future__ import annotations

import pytest
from pydantic import SecretStr

from foundations.config import WebhookToken
from foundations.formats import headers as header_names
from foundations.logs import redact_path
from producer.auth import check_token
from producer.intake import (
    FALLBACK_KEY,
    PayloadError,
    inspect_body,
    metric_location,
    quarantine_headers,
    raw_headers,
    request_id_from,
)

TOKENS = [
    WebhookToken(SecretStr("first-token-0123456789")),
    WebhookToken(SecretStr("second-token-0123456789"), "3"),
]


def test_check_token_matches_exactly() -> None:
    assert check_token("first-token-0123456789", TOKENS) is TOKENS[0]
    assert check_token("second-token-0123456789", TOKENS) is TOKENS[1]
    for bad in (None, "", "first-token-012345678", "first-token-01234567890", "FIRST-TOKEN-0123456789", "é"):
        assert check_token(bad, TOKENS) is None
    assert check_token("first-token-0123456789", []) is None


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("/webhooks/aestheticspro/s3cr3t-token", "/webhooks/aestheticspro/***"),
        ("/webhooks/aestheticspro/s3cr3t-token/clients", "/webhooks/aestheticspro/***/clients"),
        ("/webhooks/aestheticspro/s3cr3t?x=1", "/webhooks/aestheticspro/***?x=1"),
        (
            "POST http://h/WEBHOOKS/AestheticsPro/s3cr3t/invoices HTTP/1.1",
            "POST http://h/WEBHOOKS/AestheticsPro/***/invoices HTTP/1.1",
        ),
        ("/healthz", "/healthz"),
        ("/webhooks/aestheticspro/", "/webhooks/aestheticspro/"),
    ],
)
def test_redact_path(path: str, expected: str) -> None:
    assert redact_path(path) == expected


def test_request_id_kept_only_when_sane() -> None:
    assert request_id_from("abc-123_x.y:z") == "abc-123_x.y:z"
    for bad in (None, "", "has space", "x" * 129, "new\nline", "-leading-dash", "<script>"):
        generated = request_id_from(bad)
        assert generated != bad and len(generated) == 32
    assert request_id_from(None) != request_id_from(None)


def test_metric_location_prefers_token_then_configured_payload_location() -> None:
    known = {"3", "7"}
    assert metric_location("3", "7", known) == "3"
    assert metric_location(None, "7", known) == "7"
    assert metric_location(None, None, known) == "unknown"
    assert metric_location(None, "8", known) == "other"  # not configured: one series for all of them
    assert metric_location(None, "Jane Doe's clinic", known) == "other"  # never a label
    assert metric_location(None, "9" * 100, known | {"9" * 100}) == "other"


def test_inspect_body_keys_by_client_or_fallback() -> None:
    assert inspect_body(b'{"data": {"client": {"id": 48213.0}, "locationId": 3}}', "application/json").key == b"48213"
    assert inspect_body(b"clientId=9&locationId=4", "application/x-www-form-urlencoded").location == "4"
    ping = inspect_body(b'{"event": "test"}', "application/json")
    assert ping.key == FALLBACK_KEY == inspect_body(b'{"event": "test"}', None).key
    with pytest.raises(PayloadError):
        inspect_body(b"\xff\xfe", "application/json")
    with pytest.raises(PayloadError):
        inspect_body(b"   ", "application/json")


def test_headers() -> None:
    raw = dict(raw_headers(received_at="2026-01-01T00:00:00+00:00", request_id="r1", content_type="application/json",
                           resource=None, token_location=None))
    assert raw == {
        header_names.RECEIVED_AT: b"2026-01-01T00:00:00+00:00",
        header_names.REQUEST_ID: b"r1",
        header_names.CONTENT_TYPE: b"application/json",
    }
    q = dict(quarantine_headers(reason="body is empty", received_at="t", request_id="r2", content_type="x" * 500,
                                resource="clients", token_location="3"))
    assert (
        q[header_names.REASON] == b"body is empty"
        and q[header_names.RESOURCE] == b"clients"
        and q[header_names.TOKEN_LOCATION] == b"3"
    )
    assert len(q[header_names.CONTENT_TYPE]) == 200
