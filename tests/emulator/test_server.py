"""Behaviour of the GoHighLevel emulator over real HTTP (auth, Version, validation, matching, rules, limits, faults)."""

from __future__ import annotations

import httpx
import pytest

from emulator import EmulatorConfig, EmulatorServer, RateLimitConfig


def _client(emu, location_id: str | None = None) -> httpx.Client:
    return httpx.Client(base_url=emu.base_url, headers=emu.headers(location_id), timeout=10)


def _upsert(c: httpx.Client, loc: str, **fields) -> httpx.Response:
    return c.post("/contacts/upsert", json={"locationId": loc, **fields})


def test_auth_and_version_enforced(ghl_emulator) -> None:
    url = f"{ghl_emulator.base_url}/workflows/"
    params = {"locationId": ghl_emulator.location_id}
    r = httpx.get(url, params=params, headers={"Version": "2021-07-28"})
    assert r.status_code == 401 and r.json()["error"] == "Unauthorized"
    r = httpx.get(url, params=params, headers={"Version": "2021-07-28", "Authorization": "Bearer wrong"})
    assert r.status_code == 401
    r = httpx.get(url, params=params, headers={"Authorization": f"Bearer {ghl_emulator.token}"})
    assert r.status_code == 400 and r.json()["statusCode"] == 400
    r = httpx.get(url, params=params, headers=ghl_emulator.headers())
    assert r.status_code == 200 and {w["name"] for w in r.json()["workflows"]} == {
        "APro Appointments Update", "APro Invoice Paid", "APro Birthday"}
    # another location's data with this location's token → 403
    other = ghl_emulator.location_ids[1]
    r = httpx.get(url, params={"locationId": other}, headers=ghl_emulator.headers())
    assert r.status_code == 403


def test_unknown_property_and_missing_required_rejected(ghl_emulator) -> None:
    loc = ghl_emulator.location_id
    with _client(ghl_emulator) as c:
        assert _upsert(c, loc, email="a@example.test").status_code == 200  # no tags: fine
        r = _upsert(c, loc, email="a@example.test", foo="bar")
        assert r.status_code == 422
        assert r.json() == {
            "statusCode": 422,
            "message": ["property foo should not exist"],
            "error": "Unprocessable Entity",
        }
        r = c.post("/contacts/upsert", json={"email": "b@example.test"})
        assert r.status_code == 422 and "locationId should not be empty" in r.json()["message"]
    assert len(ghl_emulator.state()["contacts"]) == 1


def test_duplicate_matching_email_case_insensitive_then_phone(ghl_emulator) -> None:
    loc = ghl_emulator.location_id
    with _client(ghl_emulator) as c:
        a = _upsert(c, loc, email="Ann@Example.test", phone="+1 555 010 0001", tags=["a", "b"]).json()
        assert a["new"] is True
        same = _upsert(c, loc, email="ann@example.TEST", firstName="Ann", tags=["c"]).json()
        assert same["new"] is False and same["contact"]["id"] == a["contact"]["id"]
        assert same["contact"]["tags"] == ["c"]  # tags in upsert replace all tags
        by_phone = _upsert(c, loc, phone="(555) 010-0001", lastName="Lee").json()
        assert by_phone["new"] is False and by_phone["contact"]["id"] == a["contact"]["id"]
        dup = c.get("/contacts/search/duplicate", params={"locationId": loc, "email": "ANN@example.test"}).json()
        assert dup["contact"]["id"] == a["contact"]["id"]
        none = c.get("/contacts/search/duplicate", params={"locationId": loc, "email": "nobody@example.test"}).json()
        assert none["contact"] is None
        # same email in another location is another contact
        other = ghl_emulator.location_ids[1]
        with _client(ghl_emulator, other) as c2:
            assert _upsert(c2, other, email="ann@example.test").json()["new"] is True
        cid = a["contact"]["id"]
        assert c.post(f"/contacts/{cid}/tags", json={"tags": ["VIP", "c"]}).json()["tags"] == ["c", "vip"]
        assert c.request("DELETE", f"/contacts/{cid}/tags", json={"tags": ["c"]}).json()["tags"] == ["vip"]
        got = c.get(f"/contacts/{cid}").json()["contact"]
        assert got["firstName"] == "Ann" and got["lastName"] == "Lee" and got["tags"] == ["vip"]
    assert len(ghl_emulator.state()["contacts"]) == 2


def test_search_contacts_by_email_and_phone_in_the_body(ghl_emulator) -> None:
    loc, other = ghl_emulator.location_id, ghl_emulator.location_ids[1]

    def eq(field: str, value: str) -> dict:
        return {"field": field, "operator": "eq", "value": value}

    with _client(ghl_emulator) as c:
        def search(*filters: dict, status: int = 200, **extra) -> dict:
            r = c.post("/contacts/search", json={"locationId": loc, "pageLimit": 10, "filters": list(filters), **extra})
            assert r.status_code == status, r.text
            return r.json()

        def ids(answer: dict) -> list[str]:
            return [h["id"] for h in answer["contacts"]]

        a = _upsert(c, loc, email="Ann@Example.test", phone="+1 555 010 0001").json()["contact"]["id"]
        b = _upsert(c, loc, email="bob@example.test", phone="+1 555 010 0002").json()["contact"]["id"]
        with _client(ghl_emulator, other) as c2:
            _upsert(c2, other, email="ann@example.test")
        # email case-insensitive, phone compared in E.164 (as stored); the answer is {contacts, total}
        hit = search(eq("email", "ANN@example.test"))
        assert (ids(hit), hit["total"]) == ([a], 1)
        assert hit["contacts"][0]["email"] == "Ann@Example.test" and hit["contacts"][0]["customFields"] == []
        assert ids(search(eq("phone", "(555) 010-0002"))) == [b]
        assert search(eq("email", "nobody@example.test")) == {"contacts": [], "total": 0}
        # top-level filters are ANDed; a group ORs; hits oldest first; pageLimit/page paginate
        assert ids(search(eq("email", "ann@example.test"), eq("phone", "+15550100002"))) == []
        either = {"group": "OR", "filters": [eq("email", "bob@example.test"), eq("phone", "+15550100001")]}
        assert ids(search(either)) == [a, b]
        first = search(either, pageLimit=1)
        assert (ids(first), first["total"]) == ([a], 2)
        assert ids(search(either, pageLimit=1, page=2)) == [b]
        # validated against the documented body; what the emulator does not emulate is refused, not guessed
        assert "pageLimit should not be empty" in c.post("/contacts/search", json={"locationId": loc}).json()["message"]
        assert search(eq("email", "a@example.test"), status=422, bogus=1)["message"] == [
            "property bogus should not exist"
        ]
        assert search({"field": "email", "value": "x"}, status=422)["message"] == ["filters.0 is not a valid value"]
        assert search(eq("email", "x@example.test"), status=422, pageLimit=501)["statusCode"] == 422
        assert (
            "not supported"
            in search({"field": "email", "operator": "contains", "value": "ann"}, status=422)["message"][0]
        )
        assert "not supported" in search(eq("firstName", "Ann"), status=422)["message"][0]
        assert "not supported" in search(eq("email", "a@example.test"), status=422, query="ann")["message"][0]
        r = c.post("/contacts/search", json={"locationId": other, "pageLimit": 1, "filters": [eq("email", "a@x.test")]})
        assert r.status_code == 403
    logged = [r for r in ghl_emulator.requests() if r["path"] == "/contacts/search"]
    assert logged and all(r["target"] == "/contacts/search" for r in logged)  # the filters stay in the body


@pytest.mark.parametrize("drops_phone", [False, True])
def test_split_match_email_a_phone_b(ghl_emulator_config, drops_phone: bool) -> None:
    from emulator import ThreadedEmulator

    cfg = ghl_emulator_config.model_copy(update={"upsert_drops_phone_on_split_match": drops_phone})
    with ThreadedEmulator(cfg) as emu:
        loc = cfg.locations[0].id
        headers = {"Authorization": f"Bearer {cfg.locations[0].token}", "Version": "2021-07-28"}
        with httpx.Client(base_url=emu.base_url, headers=headers) as c:
            a = _upsert(c, loc, email="a@example.test", phone="+15550100011").json()["contact"]
            b = _upsert(c, loc, email="b@example.test", phone="+15550100022").json()["contact"]
            res = _upsert(c, loc, email="a@example.test", phone="+15550100022").json()
        assert res["new"] is False and res["contact"]["id"] == a["id"]
        assert res["contact"]["phone"] == ("+15550100011" if drops_phone else "+15550100022")
        assert {x["id"] for x in emu.state()["contacts"]} == {a["id"], b["id"]}


def test_custom_fields_and_dob(ghl_emulator) -> None:
    loc = ghl_emulator.location_id
    with _client(ghl_emulator) as c:
        r = c.post(f"/locations/{loc}/customFields", json={"name": "APro DOB", "dataType": "DATE", "model": "contact"})
        assert r.status_code == 201
        field = r.json()["customField"]
        assert field["fieldKey"] == "contact.apro_dob" and len(field["id"]) == 20
        assert (
            c.post(f"/locations/{loc}/customFields", json={"name": "apro dob", "dataType": "DATE"}).status_code == 400
        )
        assert c.post(f"/locations/{loc}/customFields", json={"name": "X", "dataType": "NOPE"}).status_code == 422
        # the v2 spec requires `id` on every customFields entry
        assert (
            _upsert(
                c, loc, email="dob@example.test", customFields=[{"key": "apro_dob", "field_value": "x"}]
            ).status_code
            == 422
        )
        res = _upsert(c, loc, email="dob@example.test", dateOfBirth="09/25/1990",
                      customFields=[{"id": field["id"], "field_value": "1990-09-25"}]).json()["contact"]
        assert res["dateOfBirth"] == "1990-09-25"
        assert res["customFields"] == [{"id": field["id"], "value": "1990-09-25"}]
    state = ghl_emulator.state()
    assert state["contacts"][0]["customFieldsByKey"] == {"contact.apro_dob": "1990-09-25"}
    assert [f["name"] for f in state["folders"] if f["locationId"] == loc] == ["Aesthetics Pro"]


def test_one_opportunity_per_contact_per_pipeline_and_workflow_reenrollment(ghl_emulator) -> None:
    loc = ghl_emulator.location_id
    with _client(ghl_emulator) as c:
        cid = _upsert(c, loc, email="opp@example.test").json()["contact"]["id"]
        pipeline = c.get("/opportunities/pipelines", params={"locationId": loc}).json()["pipelines"][0]
        body = {"pipelineId": pipeline["id"], "locationId": loc, "name": "P", "status": "open", "contactId": cid}
        first = c.post("/opportunities/", json=body)
        assert first.status_code == 201
        assert first.json()["opportunity"]["pipelineStageId"] == pipeline["stages"][0]["id"]
        second = c.post("/opportunities/", json={**body, "name": "again"})
        assert second.status_code == 400 and "duplicate" in second.json()["message"]
        bad_stage = c.put(f"/opportunities/{first.json()['opportunity']['id']}", json={"pipelineStageId": "nope"})
        assert bad_stage.status_code == 400
        wf = c.get("/workflows/", params={"locationId": loc}).json()["workflows"][0]
        for _ in range(2):
            assert (
                c.post(
                    f"/contacts/{cid}/workflow/{wf['id']}", json={"eventStartTime": "2026-01-01T10:00:00Z"}
                ).status_code
                == 200
            )
        assert c.post(f"/contacts/{cid}/workflow/unknown-workflow", json={}).status_code == 400
    state = ghl_emulator.state()
    assert len(state["opportunities"]) == 1
    assert state["enrollmentCounts"] == [{"contactId": cid, "workflowName": wf["name"], "count": 2}]


def _limited_config(base: EmulatorConfig, **rl) -> EmulatorConfig:
    return base.model_copy(update={"rate_limit": RateLimitConfig(**rl)})


async def test_rate_limit_429_with_headers_per_location(ghl_emulator_config) -> None:
    cfg = _limited_config(ghl_emulator_config, burst_max=3, interval_ms=60_000, daily_max=1000, retry_after_s=5)
    async with EmulatorServer(cfg) as emu:
        loc1, loc2 = cfg.locations
        async with httpx.AsyncClient(base_url=emu.base_url) as c:
            h1 = {"Authorization": f"Bearer {loc1.token}", "Version": "2021-07-28"}
            answers = [await c.get("/workflows/", params={"locationId": loc1.id}, headers=h1) for _ in range(4)]
            assert [r.status_code for r in answers] == [200, 200, 200, 429]
            assert [r.headers["X-RateLimit-Remaining"] for r in answers] == ["2", "1", "0", "0"]
            last = answers[-1]
            assert (
                last.headers["X-RateLimit-Max"] == "3" and last.headers["X-RateLimit-Interval-Milliseconds"] == "60000"
            )
            assert (
                last.headers["X-RateLimit-Limit-Daily"] == "1000"
                and last.headers["X-RateLimit-Daily-Remaining"] == "997"
            )
            assert last.headers["Retry-After"] == "5" and last.json()["statusCode"] == 429
            # the other location has its own budget
            h2 = {"Authorization": f"Bearer {loc2.token}", "Version": "2021-07-28"}
            assert (await c.get("/workflows/", params={"locationId": loc2.id}, headers=h2)).status_code == 200
        assert emu.state()["rateLimited"] == {loc1.id: 1}


async def test_daily_limit(ghl_emulator_config) -> None:
    cfg = _limited_config(ghl_emulator_config, burst_max=100, daily_max=2)
    async with EmulatorServer(cfg) as emu:
        loc = cfg.locations[0]
        h = {"Authorization": f"Bearer {loc.token}", "Version": "2021-07-28"}
        async with httpx.AsyncClient(base_url=emu.base_url, headers=h) as c:
            answers = [await c.get("/workflows/", params={"locationId": loc.id}) for _ in range(3)]
        assert [r.status_code for r in answers] == [200, 200, 429]
        assert answers[-1].headers["X-RateLimit-Daily-Remaining"] == "0" and "Retry-After" not in answers[-1].headers


def test_fault_schedule_statuses_and_retry_after(ghl_emulator) -> None:
    loc = ghl_emulator.location_id
    ghl_emulator.set_faults([
        {"kind": "status", "status": 429, "retry_after_s": 2, "count": 1},
        {"kind": "status", "status": 502, "count": 1, "path": "/workflows/"},
    ])
    with _client(ghl_emulator) as c:
        r1 = c.get("/workflows/", params={"locationId": loc})
        r2 = c.get("/workflows/", params={"locationId": loc})
        r3 = c.get("/workflows/", params={"locationId": loc})
    assert (r1.status_code, r1.headers["Retry-After"], r1.headers["X-RateLimit-Max"]) == (429, "2", "100")
    assert r2.status_code == 502 and "Retry-After" not in r2.headers
    assert r3.status_code == 200
    assert ghl_emulator.state()["faultsInjected"] == {"status:429": 1, "status:502": 1}


async def test_fault_rules_can_target_one_location(ghl_emulator_config) -> None:
    """One sub-account answers 401 and another 503 while a third is healthy (issue 16's isolation scenarios)."""
    async with EmulatorServer(ghl_emulator_config) as emu:
        locations = list(ghl_emulator_config.locations)
        assert len(locations) >= 2
        bad = locations[0]
        emu.set_faults([{"kind": "status", "status": 401, "probability": 1.0, "location": bad.id}])
        async with httpx.AsyncClient(base_url=emu.base_url) as c:
            answers = {}
            for loc in locations[:2]:
                h = {"Authorization": f"Bearer {loc.token}", "Version": "2021-07-28"}
                answers[loc.id] = [(await c.get("/workflows/", params={"locationId": loc.id}, headers=h)).status_code
                                   for _ in range(3)]
        assert answers[bad.id] == [401, 401, 401]
        assert answers[locations[1].id] == [200, 200, 200]
        assert emu.state()["faultsInjected"] == {"status:401": 3}


def test_fault_probability_is_reproducible_with_seed(ghl_emulator) -> None:
    loc = ghl_emulator.location_id

    def run() -> list[int]:
        ghl_emulator.set_faults([{"kind": "status", "status": 503, "probability": 0.5}], replace=True, seed=42)
        with _client(ghl_emulator) as c:
            return [c.get("/workflows/", params={"locationId": loc}).status_code for _ in range(20)]

    first, second = run(), run()
    assert first == second and {200, 503} == set(first)


def test_timeout_fault_drops_the_connection(ghl_emulator) -> None:
    ghl_emulator.set_faults([{"kind": "timeout", "hold_s": 1.0, "count": 1}])
    with httpx.Client(base_url=ghl_emulator.base_url, headers=ghl_emulator.headers(), timeout=0.3) as c:
        with pytest.raises(httpx.TimeoutException):
            c.get("/workflows/", params={"locationId": ghl_emulator.location_id})
    with _client(ghl_emulator) as c:
        assert c.get("/workflows/", params={"locationId": ghl_emulator.location_id}).status_code == 200


def test_created_then_422_defect(ghl_emulator) -> None:
    loc = ghl_emulator.location_id
    ghl_emulator.set_faults([{"kind": "created_then_422", "count": 1, "method": "POST", "path": "/opportunities/"}])
    with _client(ghl_emulator) as c:
        cid = _upsert(c, loc, email="d@example.test").json()["contact"]["id"]
        pid = c.get("/opportunities/pipelines", params={"locationId": loc}).json()["pipelines"][0]["id"]
        body = {"pipelineId": pid, "locationId": loc, "name": "P", "status": "open", "contactId": cid}
        assert c.post("/opportunities/", json=body).status_code == 422
        found = c.get("/opportunities/search", params={"location_id": loc, "contact_id": cid}).json()
    assert found["meta"]["total"] == 1  # created despite the 422: the client must search before retrying


def test_latency_fault_is_applied(ghl_emulator) -> None:
    ghl_emulator.set_faults([{"kind": "latency", "latency_ms": 200, "count": 1}])
    with httpx.Client(base_url=ghl_emulator.base_url, headers=ghl_emulator.headers(), timeout=0.05) as c:
        with pytest.raises(httpx.TimeoutException):  # the held answer outlasts a 50 ms client timeout
            c.get("/workflows/", params={"locationId": ghl_emulator.location_id})


def _scenario(c: httpx.Client, loc: str, order: list[int]) -> None:
    pid = c.get("/opportunities/pipelines", params={"locationId": loc}).json()["pipelines"][0]
    wf = c.get("/workflows/", params={"locationId": loc}).json()["workflows"][1]
    for i in order:
        cid = _upsert(c, loc, email=f"p{i}@example.test", firstName=f"P{i}", tags=[f"t{i}"]).json()["contact"]["id"]
        c.post(f"/contacts/{cid}/notes", json={"body": f"note {i}"})
        c.post("/opportunities/", json={"pipelineId": pid["id"], "locationId": loc, "name": f"P{i}", "status": "open",
                                        "contactId": cid, "pipelineStageId": pid["stages"][i % 4]["id"]})
        c.post(f"/contacts/{cid}/workflow/{wf['id']}", json={})


def test_snapshot_is_deterministic_across_runs_and_orders(ghl_emulator) -> None:
    with _client(ghl_emulator) as c:
        _scenario(c, ghl_emulator.location_id, [1, 2, 3])
        first = ghl_emulator.snapshot()
        c.post("/_emulator/reset")
        assert ghl_emulator.state()["contacts"] == []
        _scenario(c, ghl_emulator.location_id, [3, 1, 2])
        second = ghl_emulator.snapshot()
        assert first == second
        _upsert(c, ghl_emulator.location_id, email="p1@example.test", tags=["changed"])
        assert ghl_emulator.snapshot() != first
        assert c.get("/_emulator/snapshot").json() == ghl_emulator.snapshot()


def test_inspection_api_over_http(ghl_emulator) -> None:
    loc = ghl_emulator.location_id
    with _client(ghl_emulator) as c:
        _upsert(c, loc, email="i@example.test")
        _upsert(c, loc, email="i@example.test", foo=1)
        faults = c.post("/_emulator/faults", json={"rules": [{"kind": "status", "status": 500, "count": 2}]}).json()
        assert faults["rules"][0]["remaining"] == 2
        assert c.get("/workflows/", params={"locationId": loc}).status_code == 500
        log = c.get("/_emulator/requests").json()["requests"]
        state = c.get("/_emulator/state").json()
    assert [(e["method"], e["path"], e["status"]) for e in log] == [
        ("POST", "/contacts/upsert", 200), ("POST", "/contacts/upsert", 422), ("GET", "/workflows/", 500)]
    assert log[0]["body"] == {"locationId": loc, "email": "i@example.test"}
    assert {"locationId": loc, "endpoint": "POST /contacts/upsert", "count": 2} in state["requestCounts"]


def test_yaml_config_and_ids(tmp_path) -> None:
    from emulator import load_config
    from emulator.ids import ID_RE

    path = tmp_path / "emu.yaml"
    path.write_text(
        "seed: 3\nlocations:\n  - id: YamlLocation00000001\n    token: pit-yaml\n"
        "    custom_fields:\n      - {name: APro Client ID, folder: Aesthetics Pro}\n"
        "rate_limit: {burst_max: 5}\n"
    )
    cfg = load_config(path)
    assert cfg.rate_limit.burst_max == 5 and cfg.locations[0].pipelines[0].name == "Lead to Patient"
    from emulator.state import Store

    a, b = Store(cfg), Store(cfg)
    assert [f["id"] for f in a.custom_fields.values()] == [f["id"] for f in b.custom_fields.values()]
    field = next(iter(a.custom_fields.values()))
    assert ID_RE.match(field["id"]) and field["fieldKey"] == "contact.apro_client_id" and field["parentId"]
    assert list(a.pipelines) == list(b.pipelines) and all(ID_RE.match(p) for p in a.pipelines)
