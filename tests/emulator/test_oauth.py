"""The emulator's OAuth endpoints: every answer checked against oauth.json, single-use grants, expiring tokens."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from emulator.config import EmulatorConfig
from emulator.server import EmulatorServer
from emulator.spec import V2, V3, load_spec

SPEC = load_spec(version=V2)
SPEC_V3 = load_spec(version=V3)
VERSION = {"Version": V2}


class FakeClock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def conforms(response: httpx.Response, template: str, method: str = "POST", spec: Any = SPEC) -> dict[str, Any]:
    body = response.json()
    operation = spec.get(method, template)
    assert operation is not None and str(response.status_code) in operation.responses, response.status_code
    assert operation.response_errors(response.status_code, body) == [], body
    return body


@pytest.fixture
async def emu():
    async with EmulatorServer(EmulatorConfig()) as server:
        server.emulator.oauth.clock = FakeClock()
        yield server


def app_form(emu: EmulatorServer, **extra: str) -> dict[str, str]:
    app = emu.config.oauth
    return {"client_id": app.client_id, "client_secret": app.client_secret, **extra}


async def install(http: httpx.AsyncClient, user_type: str = "Location", location_id: str | None = None) -> str:
    answer = await http.post("/_emulator/oauth/authorize", json={"userType": user_type, "locationId": location_id})
    assert answer.status_code == 200
    return answer.json()["code"]


async def api_status(http: httpx.AsyncClient, token: str, location_id: str) -> int:
    answer = await http.get(f"/locations/{location_id}/customFields",
                            headers={"Authorization": f"Bearer {token}", **VERSION})
    return answer.status_code


async def test_code_and_refresh_grants_are_single_use_and_tokens_expire(emu: EmulatorServer) -> None:
    location = emu.config.locations[0].id
    clock = emu.emulator.oauth.clock
    async with httpx.AsyncClient(base_url=emu.base_url) as http:
        code = await install(http)
        first = await http.post("/oauth/token", data=app_form(emu, grant_type="authorization_code", code=code,
                                                              user_type="Location"))
        assert first.status_code == 200
        tokens = conforms(first, "/oauth/token")
        assert tokens["userType"] == "Location" and tokens["locationId"] == location
        assert tokens["expires_in"] == 86399 and tokens["token_type"] == "Bearer"
        assert await api_status(http, tokens["access_token"], location) == 200

        again = await http.post("/oauth/token", data=app_form(emu, grant_type="authorization_code", code=code))
        assert again.status_code == 400
        conforms(again, "/oauth/token")

        refreshed = await http.post("/oauth/token", data=app_form(
            emu, grant_type="refresh_token", refresh_token=tokens["refresh_token"], user_type="Location"))
        assert refreshed.status_code == 200
        new = conforms(refreshed, "/oauth/token")
        assert new["refresh_token"] != tokens["refresh_token"] and new["access_token"] != tokens["access_token"]

        reused = await http.post("/oauth/token", data=app_form(
            emu, grant_type="refresh_token", refresh_token=tokens["refresh_token"], user_type="Location"))
        assert reused.status_code == 400
        assert conforms(reused, "/oauth/token")["message"] == "Invalid grant: refresh token is invalid"
        assert emu.emulator.oauth.counts["refresh_rejected_reused"] == 1

        # The previous access token lives until its own expiry; every token dies at its expiry.
        assert await api_status(http, tokens["access_token"], location) == 200
        clock.now += 86398
        assert await api_status(http, new["access_token"], location) == 200
        clock.now += 2
        for token in (tokens["access_token"], new["access_token"]):
            assert await api_status(http, token, location) == 401
        expired = await http.get(f"/locations/{location}/customFields",
                                 headers={"Authorization": f"Bearer {new['access_token']}", **VERSION})
        conforms(expired, "/locations/{locationId}/customFields", "GET")
        # The refresh token outlives the access token.
        late = await http.post("/oauth/token", data=app_form(
            emu, grant_type="refresh_token", refresh_token=new["refresh_token"]))
        assert late.status_code == 200
        assert await api_status(http, late.json()["access_token"], location) == 200


async def test_token_requests_are_validated_against_the_spec(emu: EmulatorServer) -> None:
    async with httpx.AsyncClient(base_url=emu.base_url) as http:
        code = await install(http)
        missing = await http.post("/oauth/token", data={"client_id": emu.config.oauth.client_id,
                                                        "grant_type": "authorization_code", "code": code})
        assert missing.status_code == 422
        assert "client_secret should not be empty" in conforms(missing, "/oauth/token")["message"]
        extra = await http.post("/oauth/token", data=app_form(emu, grant_type="authorization_code", code=code,
                                                              scope="everything"))
        assert extra.status_code == 422 and "property scope should not exist" in extra.json()["message"]
        bad_type = await http.post("/oauth/token", data=app_form(emu, grant_type="password", code=code))
        assert bad_type.status_code == 422
        wrong_secret = await http.post("/oauth/token", data={**app_form(emu, grant_type="authorization_code",
                                                                        code=code), "client_secret": "nope"})
        assert wrong_secret.status_code == 401
        conforms(wrong_secret, "/oauth/token")
        no_token = await http.post("/oauth/token", data=app_form(emu, grant_type="refresh_token"))
        assert no_token.status_code == 422
        # The failed requests did not spend the code.
        ok = await http.post("/oauth/token", data=app_form(emu, grant_type="authorization_code", code=code))
        assert ok.status_code == 200


async def test_company_token_buys_location_tokens(emu: EmulatorServer) -> None:
    location = emu.config.locations[0].id
    company_id = emu.config.oauth.company_id
    clock = emu.emulator.oauth.clock
    async with httpx.AsyncClient(base_url=emu.base_url) as http:
        code = await install(http, "Company")
        answer = await http.post("/oauth/token", data=app_form(emu, grant_type="authorization_code", code=code,
                                                               user_type="Company"))
        company = conforms(answer, "/oauth/token")
        assert company["userType"] == "Company" and "locationId" not in company
        assert company["approvedLocations"] == [location]
        # A company token is not a location token.
        assert await api_status(http, company["access_token"], location) == 401
        auth = {"Authorization": f"Bearer {company['access_token']}"}

        form = {"companyId": company_id, "locationId": location}
        no_version = await http.post("/oauth/locationToken", data=form, headers=auth)
        assert no_version.status_code == 400
        bought = await http.post("/oauth/locationToken", data=form, headers={**auth, **VERSION})
        assert bought.status_code == 200
        token = conforms(bought, "/oauth/locationToken")
        assert token["locationId"] == location and "refresh_token" not in token
        assert await api_status(http, token["access_token"], location) == 200
        v3 = await http.post("/oauth/location-token", data=form, headers={**auth, "Version": V3})
        assert v3.status_code == 200
        conforms(v3, "/oauth/location-token", spec=SPEC_V3)

        unknown = await http.post("/oauth/locationToken", data={**form, "locationId": "nope"},
                                  headers={**auth, **VERSION})
        assert unknown.status_code == 400
        invalid = await http.post("/oauth/locationToken", data={"locationId": location}, headers={**auth, **VERSION})
        assert invalid.status_code == 422
        conforms(invalid, "/oauth/locationToken")
        with_location_token = await http.post("/oauth/locationToken", data=form, headers={
            "Authorization": f"Bearer {token['access_token']}", **VERSION})
        assert with_location_token.status_code == 401
        conforms(with_location_token, "/oauth/locationToken")

        installed = await http.get("/oauth/installedLocations", params={
            "companyId": company_id, "appId": emu.config.oauth.app_id}, headers={**auth, **VERSION})
        assert installed.status_code == 200
        listed = conforms(installed, "/oauth/installedLocations", "GET")
        assert [loc["_id"] for loc in listed["locations"]] == [location]

        clock.now += 86399
        expired = await http.post("/oauth/locationToken", data=form, headers={**auth, **VERSION})
        assert expired.status_code == 401
        assert await api_status(http, token["access_token"], location) == 401
