"""Behaviour of the GoHighLevel emulator over real HTTP (auth, Version, validation, matching, rules, limits, faults)."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from sinks.emulator import EmulatorConfig, EmulatorServer, FaultsConfig, LocationConfig, RateLimitConfig
from sinks.emulator.config import FaultRule


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
        assert r.json() == {"statusCode": 422, "message": ["property foo should not exist"], "error": "Unprocessable Entity"}
        r = c.post("/contacts/upsert", json={"email": "b@example.test"})
        assert r.status_code == 422 and "locationId should not be empty" in r.json()["message"]
    assert len(ghl_emulator.state()["contacts"]) == 1
