"""GoHighLevel's OAuth 2.0 endpoints (openapi/apps/oauth.json), validated against the spec like every other route.

Codes and refresh tokens are single use (a used one answers 400, as GoHighLevel does); access tokens expire
after `OAuthConfig.access_token_ttl_s`; a company token buys location tokens at /oauth/locationToken. An install
(the Marketplace redirect) is `POST /_emulator/oauth/authorize`, which hands out an authorization code.
"""

from __future__ import annotations

import secrets
import time
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from emulator.config import EmulatorConfig
from emulator.errors import error_body
from emulator.spec import SUPPORTED_VERSIONS, V2, V3, Spec
from emulator.state import ApiError

LOCATION = "Location"
COMPANY = "Company"
MAX_LIVE_TOKENS = 100_000  # expired access tokens are pruned beyond this many
INVALID_GRANT = "Invalid grant: refresh token is invalid"
# v2 paths (oauth.json) and their v3 spellings (apps/v3/oauth-v3.json; the official SDK 3.x calls these).
PATHS = {"token": ("/oauth/token",), "location_token": ("/oauth/locationToken", "/oauth/location-token"),
         "installed": ("/oauth/installedLocations", "/oauth/installed-locations")}
V2_TEMPLATE = {path: paths[0] for paths in PATHS.values() for path in paths}


@dataclass(frozen=True)
class Grant:
    """Whom a token speaks for: a location (sub-account) or a company (agency)."""

    user_type: str
    company_id: str
    location_id: str | None = None


@dataclass
class Issued:
    grant: Grant
    expires_at: float
    used: bool = False


class OAuthState:
    """Issued codes and tokens. `on_token(phase, grant_type)` (tests only) runs when a token request arrives
    (`received`) and after a grant was spent and the new tokens issued, before the answer is sent (`answered`)."""

    def __init__(self, config: EmulatorConfig, clock: Callable[[], float] = time.time) -> None:
        self.config = config
        self.clock = clock
        self.on_token: Callable[[str, str], None] | None = None
        self.reset()

    def reset(self) -> None:
        self.codes: dict[str, Issued] = {}
        self.access: dict[str, Issued] = {}
        self.refresh: dict[str, Issued] = {}
        self.counts: Counter[str] = Counter()

    @property
    def ttl(self) -> float:
        return self.config.oauth.access_token_ttl_s

    def _location_ids(self) -> list[str]:
        return [loc.id for loc in self.config.locations]

    # -- the install ------------------------------------------------------------------------------------------
    def authorize(self, user_type: str = LOCATION, location_id: str | None = None) -> str:
        """What the Marketplace install redirect carries: a single-use authorization code."""
        company = self.config.oauth.company_id
        if user_type == LOCATION:
            location_id = location_id or self._location_ids()[0]
            if location_id not in self._location_ids():
                raise ApiError(400, "Location not found")
            grant = Grant(LOCATION, company, location_id)
        elif user_type == COMPANY:
            grant = Grant(COMPANY, company)
        else:
            raise ApiError(422, ["user_type must be one of the following values: Company, Location"])
        code = secrets.token_hex(20)
        self.codes[code] = Issued(grant, self.clock() + self.config.oauth.code_ttl_s)
        return code

    # -- tokens -----------------------------------------------------------------------------------------------
    def _issue(self, grant: Grant, *, refresh: bool) -> dict[str, Any]:
        now = self.clock()
        if len(self.access) > MAX_LIVE_TOKENS:
            self.access = {k: v for k, v in self.access.items() if v.expires_at > now}
        access = secrets.token_hex(24)
        self.access[access] = Issued(grant, now + self.ttl)
        ttl = self.ttl
        body: dict[str, Any] = {"access_token": access, "token_type": "Bearer",
                                "expires_in": int(ttl) if float(ttl).is_integer() else ttl,
                                "scope": self.config.oauth.scope, "userType": grant.user_type,
                                "companyId": grant.company_id, "userId": "emuUser0000000000001"}
        if refresh:
            token = secrets.token_hex(24)
            self.refresh[token] = Issued(grant, now + 365 * 86400)
            body["refresh_token"] = token
            body["isBulkInstallation"] = False
        if grant.location_id:
            body["locationId"] = grant.location_id
        else:
            body["approvedLocations"] = self._location_ids()
            body["installToFutureLocations"] = True
            body["approveAllLocations"] = True
        return body

    def _spend(self, table: dict[str, Issued], value: str | None, what: str) -> Grant:
        issued = table.get(value or "")
        if issued is None or issued.used or issued.expires_at <= self.clock():
            self.counts[f"{what}_rejected" + ("_reused" if issued is not None and issued.used else "")] += 1
            raise ApiError(400, INVALID_GRANT if what == "refresh" else "Invalid grant: authorization code is invalid")
        issued.used = True
        return issued.grant

    def token(self, form: Mapping[str, str]) -> dict[str, Any]:
        """POST /oauth/token (form already validated against GetAccessCodebodyDto)."""
        app = self.config.oauth
        grant_type = form.get("grant_type", "")
        if self.on_token:
            self.on_token("received", grant_type)
        if not (secrets.compare_digest(form.get("client_id", ""), app.client_id)
                and secrets.compare_digest(form.get("client_secret", ""), app.client_secret)):
            self.counts["client_rejected"] += 1
            raise ApiError(401, "Invalid client: client credentials are invalid")
        if grant_type == "authorization_code":
            if not form.get("code"):
                raise ApiError(422, ["code should not be empty"])
            grant = self._spend(self.codes, form["code"], "code")
        elif grant_type == "refresh_token":
            if not form.get("refresh_token"):
                raise ApiError(422, ["refresh_token should not be empty"])
            grant = self._spend(self.refresh, form["refresh_token"], "refresh")
        else:
            raise ApiError(400, "Unsupported grant type")
        wanted = form.get("user_type")
        if wanted and wanted != grant.user_type:
            raise ApiError(400, f"Invalid user_type: the grant was issued for {grant.user_type}")
        self.counts[grant_type] += 1
        body = self._issue(grant, refresh=True)
        if self.on_token:
            self.on_token("answered", grant_type)
        return body

    def bearer(self, token: str | None, user_type: str) -> Grant | None:
        """The grant of a live access token of `user_type`, else None (unknown, expired or another type)."""
        issued = self.access.get(token or "")
        if issued is None or issued.grant.user_type != user_type:
            return None
        if issued.expires_at <= self.clock():
            self.counts["access_expired"] += 1
            return None
        return issued.grant

    def location_for(self, token: str | None) -> str | None:
        """The location a live location access token is bound to (API middleware), else None."""
        grant = self.bearer(token, LOCATION)
        return grant.location_id if grant else None

    def location_token(self, token: str | None, form: Mapping[str, str]) -> dict[str, Any]:
        """POST /oauth/locationToken: a company token buys a location token (no refresh token: buy another)."""
        company = self.bearer(token, COMPANY)
        if company is None:
            raise ApiError(401, "Invalid token: access token is invalid")
        if form.get("companyId") != company.company_id:
            raise ApiError(400, "The token does not belong to this company")
        if form.get("locationId") not in self._location_ids():
            raise ApiError(400, "Location not found or app not installed")
        self.counts["location_token"] += 1
        body = self._issue(Grant(LOCATION, company.company_id, form["locationId"]), refresh=False)
        for key in ("companyId", "userType", "isBulkInstallation"):
            body.pop(key, None)
        body["appId"] = self.config.oauth.app_id
        return body

    def installed_locations(self, token: str | None, query: Mapping[str, str]) -> dict[str, Any]:
        """GET /oauth/installedLocations?companyId&appId (company token)."""
        company = self.bearer(token, COMPANY)
        if company is None:
            raise ApiError(401, "Invalid token: access token is invalid")
        if not query.get("companyId") or not query.get("appId"):
            raise ApiError(422, ["companyId should not be empty" if not query.get("companyId")
                                 else "appId should not be empty"])
        if query["companyId"] != company.company_id:
            raise ApiError(400, "The token does not belong to this company")
        locations = [{"_id": loc.id, "name": loc.name, "address": "", "isInstalled": True}
                     for loc in self.config.locations if not query.get("locationId") or loc.id == query["locationId"]]
        return {"locations": locations, "count": len(locations), "installToFutureLocations": True}


# ------------------------------------------------------------------------------------------------- HTTP

OAUTH: web.AppKey[OAuthState] = web.AppKey("oauth", OAuthState)
SPECS: web.AppKey[dict[str, Spec]] = web.AppKey("oauth_specs", dict)


def _error(status: int, message: str | list[str]) -> web.Response:
    return web.json_response(error_body(status, message), status=status)


def _bearer(request: web.Request) -> str | None:
    auth = request.headers.get("Authorization", "")
    return auth[7:].strip() if auth.lower().startswith("bearer ") else None


async def _form(request: web.Request) -> dict[str, str] | None:
    """The form (or, where v3 allows it, JSON) body as a flat dict of strings; None when unreadable."""
    if request.content_type == "application/json":
        try:
            data = await request.json()
        except ValueError:
            return None
        return {str(k): v for k, v in data.items()} if isinstance(data, dict) else None
    posted = await request.post()
    return {key: str(posted.getone(key)) for key in posted.keys()}


def _version(request: web.Request) -> str:
    return V3 if request.path in (PATHS["location_token"][1], PATHS["installed"][1]) else V2


async def _handle(request: web.Request, name: str) -> web.Response:
    state = request.app[OAUTH]
    spec = request.app[SPECS]["v3" if _version(request) == V3 else "v2"]
    template = request.path if spec.get(request.method, request.path) else V2_TEMPLATE[request.path]
    if name != "token":  # /oauth/token takes no Version header; the others require one
        version = request.headers.get("Version")
        if not version:
            return _error(400, "Version header was not found")
        if version not in SUPPORTED_VERSIONS:
            return _error(400, "Invalid version header")
    try:
        if name == "installed":
            return web.json_response(state.installed_locations(_bearer(request), request.query))
        form = await _form(request)
        if form is None:
            return _error(400, "Unexpected token in body")
        operation = spec.get(request.method, template)
        errors = operation.validate_body(form) if operation is not None else []
        if errors:
            return _error(422, errors)
        if name == "token":
            return web.json_response(state.token(form))
        return web.json_response(state.location_token(_bearer(request), form))
    except ApiError as exc:
        return _error(exc.status, exc.message)


async def _authorize(request: web.Request) -> web.Response:
    data = await request.json() if request.can_read_body else {}
    try:
        code = request.app[OAUTH].authorize(data.get("userType", LOCATION), data.get("locationId"))
    except ApiError as exc:
        return _error(exc.status, exc.message)
    return web.json_response({"code": code})


async def _counts(request: web.Request) -> web.Response:
    return web.json_response(dict(request.app[OAUTH].counts))


def add_routes(app: web.Application, state: OAuthState, specs: dict[str, Spec]) -> None:
    app[OAUTH] = state
    app[SPECS] = specs
    for name, paths in PATHS.items():
        method = "GET" if name == "installed" else "POST"
        for path in paths:
            async def view(request: web.Request, _name: str = name) -> web.Response:
                return await _handle(request, _name)

            app.router.add_route(method, path, view)
    app.router.add_post("/_emulator/oauth/authorize", _authorize)
    app.router.add_get("/_emulator/oauth", _counts)
