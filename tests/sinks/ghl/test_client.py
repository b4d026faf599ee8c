"""GhlClient against a real HTTP server on loopback: headers, retries, error classes, API-defect handling."""

from __future__ import annotations

import socket
from datetime import date, datetime, timedelta, timezone
from decimal import Decimal

import pytest
from prometheus_client import REGISTRY
from pydantic import SecretStr, ValidationError

from sinks.ghl.client import GhlClient, TagsInContactWrite, parse_retry_after, same_phone
from sinks.ghl.errors import GhlPermanentError, GhlRateLimited, GhlTransientError
from sinks.ghl.models import ContactInput, CustomFieldValue
from sinks.ghl.ratelimit import RateLimiter
from tests.sinks.ghl.scripted_ghl import LOCATION, TOKEN, FakeTime, LoopbackGhl, Reply, ghl_loopback, make_client  # noqa: F401

UPSERT = "/contacts/upsert"
CONTACT = {"id": "c1", "phone": "+14805550100", "email": "pat@example.com"}
UPSERT_OK = Reply(200, {"new": True, "contact": CONTACT})
OPP = {"id": "o1", "name": "Lead", "pipelineId": "p1", "pipelineStageId": "s1", "status": "open",
       "contactId": "c1", "monetaryValue": 120.5}


def metric(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def contact() -> ContactInput:
    return ContactInput(first_name="Pat", last_name="Doe", email="pat@example.com", phone="+14805550100",
                        address1="1 Main St", city="Scottsdale", state="AZ", postal_code="85251",
                        date_of_birth=date(1990, 9, 25),
                        custom_fields=(CustomFieldValue(id="cf1", value="42"),
                                       CustomFieldValue(id="cf2", value=Decimal("10.5")),
                                       CustomFieldValue(id="cf3", value=date(2026, 1, 2))))


async def test_upsert_sends_headers_and_flat_body(ghl_loopback: LoopbackGhl) -> None:
    ghl_loopback.script("POST", UPSERT, UPSERT_OK)
    async with make_client(ghl_loopback, FakeTime()) as client:
        result = await client.upsert_contact(contact())
    assert result.contact_id == "c1" and result.new and not result.phone_dropped
    (seen,) = ghl_loopback.calls("POST", UPSERT)
    assert seen.headers["Authorization"] == f"Bearer {TOKEN}"
    assert seen.headers["Version"] == "2021-07-28"
    assert seen.headers["Accept"] == "application/json"
    assert seen.body["locationId"] == LOCATION
    assert seen.body["dateOfBirth"] == "1990-09-25"
    assert seen.body["postalCode"] == "85251" and seen.body["address1"] == "1 Main St"
    assert seen.body["customFields"] == [{"id": "cf1", "field_value": "42"}, {"id": "cf2", "field_value": "10.50"},
                                         {"id": "cf3", "field_value": "2026-01-02"}]
    assert "tags" not in seen.body


async def test_tags_are_refused_before_any_request(ghl_loopback: LoopbackGhl) -> None:
    async with make_client(ghl_loopback, FakeTime()) as client:
        with pytest.raises(TagsInContactWrite):
            await client.upsert_contact({"email": "x@example.com", "tags": ["a"]})
        with pytest.raises(TagsInContactWrite):
            await client.update_contact("c1", {"tags": ["a"]})
    with pytest.raises(ValidationError):
        ContactInput(email="x@example.com", tags=["a"])  # type: ignore[call-arg]
    assert ghl_loopback.seen == []


async def test_429_with_retry_after_pauses_location_then_succeeds(ghl_loopback: LoopbackGhl) -> None:
    ghl_loopback.script("POST", UPSERT, Reply(429, {"message": "Too many requests"}, {"Retry-After": "3"}), UPSERT_OK)
    before = metric("apro_ghl_rate_limited_total", location=LOCATION)
    fake = FakeTime()
    async with make_client(ghl_loopback, fake) as client:
        result = await client.upsert_contact(contact())
    assert result.contact_id == "c1"
    assert len(ghl_loopback.calls("POST", UPSERT)) == 2
    assert fake.sleeps == [3.0]  # the limiter's pause, honouring Retry-After; the retry itself waits 0
    assert metric("apro_ghl_rate_limited_total", location=LOCATION) == before + 1


async def test_429_without_retry_after_uses_jittered_backoff(ghl_loopback: LoopbackGhl) -> None:
    ghl_loopback.script("GET", "/workflows/", Reply(429, {}), Reply(429, {}), Reply(200, {"workflows": []}))
    fake = FakeTime()
    async with make_client(ghl_loopback, fake) as client:
        assert await client.list_workflows() == []
    assert fake.sleeps == [0.5, 1.0]  # base 0.5 * 2**(n-1), jitter fixed at 1.0 in make_client
    assert len(ghl_loopback.calls("GET", "/workflows/")) == 3


async def test_429_pauses_every_request_of_the_location(ghl_loopback: LoopbackGhl) -> None:
    ghl_loopback.script("POST", UPSERT, Reply(429, {}, {"Retry-After": "7"}))
    ghl_loopback.script("GET", "/workflows/", Reply(200, {"workflows": [{"id": "w1", "name": "APro Birthday"}]}))
    fake = FakeTime()
    async with make_client(ghl_loopback, fake, max_attempts=1) as client:
        with pytest.raises(GhlRateLimited) as caught:
            await client.upsert_contact(contact())
        assert caught.value.retry_after == 7.0
        assert client.limiter.paused_for == pytest.approx(7.0)
        workflows = await client.list_workflows()  # another endpoint waits out the same pause
    assert [w.name for w in workflows] == ["APro Birthday"]
    assert fake.sleeps == [7.0]


async def test_500_is_retried_then_succeeds(ghl_loopback: LoopbackGhl) -> None:
    ghl_loopback.script("GET", "/contacts/c1", Reply(500, {"message": "boom"}), Reply(502, {}),
                        Reply(200, {"contact": CONTACT}))
    before = metric("apro_ghl_retries_total", location=LOCATION, endpoint="GET /contacts/{contactId}")
    fake = FakeTime()
    async with make_client(ghl_loopback, fake) as client:
        got = await client.get_contact("c1")
    assert got["id"] == "c1"
    assert fake.sleeps == [0.5, 1.0]
    assert metric("apro_ghl_retries_total", location=LOCATION, endpoint="GET /contacts/{contactId}") == before + 2
    assert metric("apro_ghl_requests_total", location=LOCATION, endpoint="GET /contacts/{contactId}",
                  status_class="5xx") >= 2


async def test_transient_errors_exhaust_attempts_then_raise_transient(ghl_loopback: LoopbackGhl) -> None:
    ghl_loopback.script("GET", "/workflows/", Reply(503, {}))
    fake = FakeTime()
    async with make_client(ghl_loopback, fake, max_attempts=3) as client:
        with pytest.raises(GhlTransientError) as caught:
            await client.list_workflows()
    assert caught.value.status == 503 and caught.value.endpoint == "GET /workflows/"
    assert len(ghl_loopback.calls("GET", "/workflows/")) == 3
    assert fake.sleeps == [0.5, 1.0]


@pytest.mark.parametrize("status", [400, 401, 403, 404, 422])
async def test_4xx_is_permanent_and_not_retried(ghl_loopback: LoopbackGhl, status: int) -> None:
    ghl_loopback.script("POST", UPSERT, Reply(status, {"statusCode": status, "message": ["phone must be valid"]}))
    async with make_client(ghl_loopback, FakeTime()) as client:
        with pytest.raises(GhlPermanentError) as caught:
            await client.upsert_contact(contact())
    assert len(ghl_loopback.calls("POST", UPSERT)) == 1
    assert caught.value.status == status
    assert str(caught.value) == f"HTTP {status} from POST /contacts/upsert: phone must be valid"
    assert TOKEN not in str(caught.value)


async def test_error_reason_never_echoes_request_values(ghl_loopback: LoopbackGhl) -> None:
    ghl_loopback.script("POST", UPSERT, Reply(422, {"message": ["pat@example.com is already used by Pat Doe"]}))
    async with make_client(ghl_loopback, FakeTime()) as client:
        with pytest.raises(GhlPermanentError) as caught:
            await client.upsert_contact(contact())
    assert str(caught.value) == "HTTP 422 from POST /contacts/upsert"


async def test_timeout_is_transient(ghl_loopback: LoopbackGhl) -> None:
    ghl_loopback.script("GET", "/workflows/", Reply(200, {"workflows": []}, delay_s=1.0))
    async with make_client(ghl_loopback, FakeTime(), max_attempts=1, timeout=0.1) as client:
        with pytest.raises(GhlTransientError) as caught:
            await client.list_workflows()
    assert str(caught.value) == "timeout calling GET /workflows/"


async def test_connection_refused_is_transient() -> None:
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = LoopbackGhl()
    server.base_url = f"http://127.0.0.1:{port}"
    async with make_client(server, FakeTime(), max_attempts=2) as client:
        with pytest.raises(GhlTransientError) as caught:
            await client.get_contact("c1")
    assert "connection error" in str(caught.value) and str(port) not in str(caught.value)


async def test_create_opportunity_422_but_created_is_found_not_duplicated(ghl_loopback: LoopbackGhl) -> None:
    ghl_loopback.script("POST", "/opportunities/", Reply(422, {"message": ["Unprocessable Entity"]}))
    ghl_loopback.script("GET", "/opportunities/search", Reply(200, {"opportunities": [OPP]}))
    before = metric("apro_ghl_api_anomalies_total", location=LOCATION, kind="opportunity_created_despite_error")
    async with make_client(ghl_loopback, FakeTime()) as client:
        opp = await client.create_opportunity(pipeline_id="p1", stage_id="s1", contact_id="c1", name="Lead",
                                              monetary_value=Decimal("120.50"))
    assert opp.id == "o1" and opp.recovered and opp.monetary_value == Decimal("120.5")
    assert len(ghl_loopback.calls("POST", "/opportunities/")) == 1
    (search,) = ghl_loopback.calls("GET", "/opportunities/search")
    assert search.query == {"location_id": LOCATION, "contact_id": "c1", "pipeline_id": "p1", "limit": "100"}
    assert metric("apro_ghl_api_anomalies_total", location=LOCATION,
                  kind="opportunity_created_despite_error") == before + 1


async def test_create_opportunity_422_not_created_is_permanent(ghl_loopback: LoopbackGhl) -> None:
    ghl_loopback.script("POST", "/opportunities/", Reply(422, {"message": ["pipelineStageId is invalid"]}))
    ghl_loopback.script("GET", "/opportunities/search", Reply(200, {"opportunities": []}))
    async with make_client(ghl_loopback, FakeTime()) as client:
        with pytest.raises(GhlPermanentError):
            await client.create_opportunity(pipeline_id="p1", stage_id="s1", contact_id="c1", name="Lead")
    assert len(ghl_loopback.calls("POST", "/opportunities/")) == 1


async def test_create_opportunity_5xx_searches_before_retrying(ghl_loopback: LoopbackGhl) -> None:
    ghl_loopback.script("POST", "/opportunities/", Reply(500, {}))
    ghl_loopback.script("GET", "/opportunities/search", Reply(200, {"opportunities": [OPP]}))
    async with make_client(ghl_loopback, FakeTime()) as client:
        opp = await client.create_opportunity(pipeline_id="p1", stage_id="s1", contact_id="c1", name="Lead")
    assert opp.recovered and opp.id == "o1"
    assert [s.method for s in ghl_loopback.seen] == ["POST", "GET"]


async def test_create_opportunity_5xx_not_created_retries_create(ghl_loopback: LoopbackGhl) -> None:
    ghl_loopback.script("POST", "/opportunities/", Reply(504, {}), Reply(201, {"opportunity": OPP}))
    ghl_loopback.script("GET", "/opportunities/search", Reply(200, {"opportunities": []}))
    async with make_client(ghl_loopback, FakeTime()) as client:
        opp = await client.create_opportunity(pipeline_id="p1", stage_id="s1", contact_id="c1", name="Lead",
                                              status="won")
    assert opp.id == "o1" and not opp.recovered
    assert [s.method for s in ghl_loopback.seen] == ["POST", "GET", "POST"]
    assert ghl_loopback.calls("POST", "/opportunities/")[0].body["status"] == "won"


async def test_upsert_detects_dropped_phone(ghl_loopback: LoopbackGhl) -> None:
    other = dict(CONTACT, phone="+16025550199")
    ghl_loopback.script("POST", UPSERT, Reply(200, {"new": False, "contact": other}))
    before = metric("apro_ghl_api_anomalies_total", location=LOCATION, kind="upsert_phone_dropped")
    async with make_client(ghl_loopback, FakeTime()) as client:
        result = await client.upsert_contact(contact())
    assert result.phone_dropped and not result.new
    assert metric("apro_ghl_api_anomalies_total", location=LOCATION, kind="upsert_phone_dropped") == before + 1


def _search_reply(hits_by_field: dict[str, list[dict]]):  # type: ignore[no-untyped-def]
    def reply(seen):  # type: ignore[no-untyped-def]
        (f,) = seen.body["filters"]
        hits = hits_by_field.get(f["field"], [])
        return Reply(200, {"contacts": hits, "total": len(hits)})
    return reply


@pytest.mark.parametrize(("order", "hits", "fields_searched", "found"), [
    (("email", "phone"), {"email": [{"id": "a"}], "phone": [{"id": "b"}]}, ["email"], "a"),
    (("email", "phone"), {"phone": [{"id": "b"}, {"id": "c"}]}, ["email", "phone"], "b"),
    (("phone", "email"), {"email": [{"id": "a"}], "phone": [{"id": "b"}]}, ["phone"], "b"),
    (("email", "phone"), {}, ["email", "phone"], None),
])
async def test_find_duplicate_searches_in_the_match_order_by_body_only(
        ghl_loopback: LoopbackGhl, order: tuple[str, ...], hits: dict, fields_searched: list[str],
        found: str | None) -> None:
    ghl_loopback.script("POST", "/contacts/search", _search_reply(hits))
    client = make_client(ghl_loopback, FakeTime())
    client.contact_match_order = order
    async with client:
        result = await client.find_duplicate("pat@example.com", "+14805550100")
    assert (result or {}).get("id") == found
    searches = ghl_loopback.calls("POST", "/contacts/search")
    values = {"email": "pat@example.com", "phone": "+14805550100"}
    assert [s.body for s in searches] == [
        {"locationId": LOCATION, "pageLimit": 1, "filters": [{"field": f, "operator": "eq", "value": values[f]}]}
        for f in fields_searched]
    assert all(s.query == {} for s in searches)  # PHI never in the URL


async def test_find_duplicate_searches_only_the_fields_given(ghl_loopback: LoopbackGhl) -> None:
    ghl_loopback.script("POST", "/contacts/search", _search_reply({}))
    async with make_client(ghl_loopback, FakeTime()) as client:
        assert await client.find_duplicate(None, "+14805550100") is None
        assert await client.find_duplicate("", None) is None
    assert [s.body["filters"][0]["field"] for s in ghl_loopback.seen] == ["phone"]


def test_contact_match_order_is_checked() -> None:
    for bad in ((), ("email", "email"), ("email", "name")):
        with pytest.raises(ValueError):
            GhlClient("http://127.0.0.1:9", SecretStr(TOKEN), LOCATION, contact_match_order=bad)


def test_phone_comparison_ignores_formatting() -> None:
    assert same_phone("(480) 555-0100", "+14805550100")
    assert same_phone(None, "+14805550100")
    assert not same_phone("+14805550100", None)
    assert not same_phone("+14805550100", "+14805550101")


async def test_rate_limit_headers_throttle_next_request(ghl_loopback: LoopbackGhl) -> None:
    headers = {"X-RateLimit-Remaining": "0", "X-RateLimit-Max": "100", "X-RateLimit-Interval-Milliseconds": "10000",
               "X-RateLimit-Daily-Remaining": "5000", "X-RateLimit-Limit-Daily": "200000"}
    ghl_loopback.script("GET", "/workflows/", Reply(200, {"workflows": []}, headers))
    fake = FakeTime()
    async with make_client(ghl_loopback, fake) as client:
        await client.list_workflows()
        assert client.limiter.burst_remaining == 0
        assert metric("apro_ghl_rate_budget_remaining", location=LOCATION, window="daily") == 5000
        await client.list_workflows()
    assert fake.sleeps == [pytest.approx(10.0)]


async def test_notes_tags_workflow_and_opportunity_update(ghl_loopback: LoopbackGhl) -> None:
    ghl_loopback.script("POST", "/contacts/c1/notes", Reply(201, {"note": {"id": "n1", "body": "x"}}))
    ghl_loopback.script("GET", "/contacts/c1/notes", Reply(200, {"notes": [{"id": "n1", "body": "x"}]}))
    ghl_loopback.script("POST", "/contacts/c1/tags", Reply(201, {"tags": ["apro"]}))
    ghl_loopback.script("POST", "/contacts/c1/workflow/w1", Reply(200, {"succeded": True}))
    ghl_loopback.script("PUT", "/opportunities/o1", Reply(200, {"opportunity": dict(OPP, status="won")}))
    start = datetime(2026, 1, 2, 15, 0, tzinfo=timezone.utc)
    async with make_client(ghl_loopback, FakeTime()) as client:
        assert (await client.create_note("c1", "Appointment booked")).id == "n1"
        assert [n.id for n in await client.list_notes("c1")] == ["n1"]
        assert await client.add_tags("c1", ["apro", "apro"]) == ["apro"]
        assert await client.add_contact_to_workflow("c1", "w1", start)
        opp = await client.update_opportunity("o1", stage_id="s2", status="won", monetary_value=Decimal("300"))
    assert opp.status == "won"
    assert ghl_loopback.calls("POST", "/contacts/c1/tags")[0].body == {"tags": ["apro"]}
    assert ghl_loopback.calls("POST", "/contacts/c1/workflow/w1")[0].body == {"eventStartTime": start.isoformat()}
    assert ghl_loopback.calls("PUT", "/opportunities/o1")[0].body == {
        "pipelineStageId": "s2", "status": "won", "monetaryValue": 300}


def test_retry_after_http_date() -> None:
    now = datetime(2026, 1, 2, 12, 0, 0, tzinfo=timezone.utc)
    later = (now + timedelta(seconds=30)).strftime("%a, %d %b %Y %H:%M:%S GMT")
    assert parse_retry_after(later, now=lambda: now) == 30.0
    assert parse_retry_after("4") == 4.0
    assert parse_retry_after("soon") is None and parse_retry_after(None) is None


def test_client_repr_hides_token() -> None:
    server = LoopbackGhl()
    server.base_url = "http://127.0.0.1:9"
    client = make_client(server, FakeTime(), limiter=RateLimiter("x"))
    assert TOKEN not in repr(client)
