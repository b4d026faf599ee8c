"""OAuth access tokens for GoHighLevel locations installed through a Marketplace app.

`RefreshPolicy` (pure) says when to refresh; `TokenProvider` refreshes a location under a lease from the token
topic and persists GoHighLevel's answer before anything else (sinks/oauth_store.py); `OAuthAuth` plugs it into
httpx (refresh once on a 401, then the sink's usual 401 handling). docs/operations.md "OAuth locations".
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Callable, Generator
from dataclasses import dataclass, replace
from typing import Any

import httpx
from pydantic import SecretStr

from foundations import metrics
from foundations.config import Settings
from sinks.ghl.client import API_VERSION
from sinks.ghl.errors import GhlPermanentError, GhlTransientError, is_transient_status
from sinks.locations import GhlTarget, OAuthCredentials
from sinks.oauth_store import Lease, TokenStore, Tokens, adopt

log = logging.getLogger("apro_sync.oauth")

TOKEN_ENDPOINT = "POST /oauth/token"
LOCATION_TOKEN_ENDPOINT = "POST /oauth/locationToken"
MARGIN_S = 2.0  # a lease must outlast the token call by this much, else the call is not made


@dataclass(frozen=True)
class RefreshPolicy:
    """When a location's access token is refreshed: at `refresh_at` of its lifetime (GoHighLevel: ~24 h)."""

    refresh_at: float = 0.8
    expiry_skew_s: float = 1.0  # a token this close to its expiry is no longer sent

    def due_at(self, tokens: Tokens) -> float:
        return tokens.issued_at + (tokens.expires_at - tokens.issued_at) * self.refresh_at

    def due(self, tokens: Tokens, now: float) -> bool:
        return tokens.access_token is None or now >= self.due_at(tokens)

    def usable(self, tokens: Tokens, now: float) -> bool:
        return tokens.access_token is not None and now < tokens.expires_at - self.expiry_skew_s

    def may_replace(self, tokens: Tokens, now: float) -> bool:
        """After a 401: a token younger than a tenth of its life (at most a minute) is not replaced, so a 401 that
        is not about the token (a missing scope) cannot set off a refresh per request."""
        return now - tokens.issued_at >= min(60.0, (tokens.expires_at - tokens.issued_at) / 10)


def _json(response: httpx.Response) -> dict[str, Any]:
    try:
        body = response.json()
    except ValueError:
        return {}
    return body if isinstance(body, dict) else {}


class RefreshRejected(Exception):
    """GoHighLevel refused the refresh token (already used, revoked, app uninstalled)."""


class TokenEndpoint:
    """POST /oauth/token with grant_type=refresh_token (form body, as oauth.json specifies)."""

    def __init__(self, base_url: str, credentials: OAuthCredentials, timeout_s: float) -> None:
        self.base_url = base_url.rstrip("/")
        self.credentials = credentials
        self.timeout_s = timeout_s

    async def _post(self, endpoint: str, form: dict[str, str], headers: dict[str, str]) -> httpx.Response:
        try:
            async with httpx.AsyncClient(base_url=self.base_url, timeout=self.timeout_s) as http:
                return await http.post(endpoint.split(" ", 1)[1], data=form,
                                       headers={"Accept": "application/json", **headers})
        except httpx.TimeoutException:
            raise GhlTransientError(f"timeout calling {endpoint}", endpoint=endpoint) from None
        except httpx.TransportError as exc:
            raise GhlTransientError(f"connection error ({type(exc).__name__}) calling {endpoint}",
                                    endpoint=endpoint) from None

    async def location_token(self, company_token: str, company_id: str, location_id: str) -> dict[str, Any] | None:
        """POST /oauth/locationToken: a location token bought with the company token; None when GoHighLevel
        refuses the company token (401: refresh it)."""
        response = await self._post(LOCATION_TOKEN_ENDPOINT, {"companyId": company_id, "locationId": location_id},
                                    {"Authorization": f"Bearer {company_token}", "Version": API_VERSION})
        status = response.status_code
        if status == 401:
            return None
        if is_transient_status(status):
            raise GhlTransientError(f"HTTP {status} from {LOCATION_TOKEN_ENDPOINT}", status=status,
                                    endpoint=LOCATION_TOKEN_ENDPOINT)
        body = _json(response)
        if status != 200 or not body.get("access_token") or not isinstance(body.get("expires_in"), (int, float)):
            # 400: the app is not installed on the location (or not approved for it): an operator must act.
            raise GhlPermanentError(f"HTTP {status} from {LOCATION_TOKEN_ENDPOINT}: no location token (is the app "
                                    f"installed on location {location_id}?)", status=401,
                                    endpoint=LOCATION_TOKEN_ENDPOINT)
        return body

    async def refresh(self, refresh_token: str, user_type: str = "Location") -> dict[str, Any]:
        form = {"client_id": self.credentials.client_id,
                "client_secret": self.credentials.client_secret.get_secret_value(),
                "grant_type": "refresh_token", "refresh_token": refresh_token, "user_type": user_type}
        response = await self._post(TOKEN_ENDPOINT, form, {})
        status = response.status_code
        if is_transient_status(status):
            raise GhlTransientError(f"HTTP {status} from {TOKEN_ENDPOINT}", status=status, endpoint=TOKEN_ENDPOINT)
        if status in (400, 401):
            raise RefreshRejected(f"HTTP {status} from {TOKEN_ENDPOINT}")
        body = _json(response)
        if status != 200 or not body.get("access_token") \
                or not body.get("refresh_token") or not isinstance(body.get("expires_in"), (int, float)):
            raise GhlTransientError(f"HTTP {status} from {TOKEN_ENDPOINT} without a token pair", status=status,
                                    endpoint=TOKEN_ENDPOINT)
        return body


class TokenProvider:
    """The access token of one OAuth location in this worker. Refreshes when due (or after a 401): takes the
    location's lease in the token topic, calls GoHighLevel with the stored single-use refresh token, and writes
    the new pair (acks=all) before using it. Without a usable token it raises: 401-like when an operator must
    act (the sink then holds the location's events), transient otherwise."""

    def __init__(self, location: str, label: str, store: TokenStore, endpoint: TokenEndpoint, *, owner: str,
                 bootstrap: SecretStr | None, policy: RefreshPolicy, lease_s: float, subject: str | None = None,
                 user_type: str = "Location", clock: Callable[[], float] = time.time,
                 sleep: Callable[[float], Any] = asyncio.sleep) -> None:
        self.location = location  # the store key: a location id, or company:<id> for an agency install
        self.subject = subject or f"GoHighLevel location {location}"
        self.user_type = user_type
        self.label = label
        self.store = store
        self.endpoint = endpoint
        self.owner = owner
        self.bootstrap = bootstrap
        self.policy = policy
        self.lease_s = lease_s
        self.clock = clock
        self.sleep = sleep
        self._lock = asyncio.Lock()
        self._bootstrapped = False
        self._unpersisted: Tokens | None = None  # an answer the topic has not acknowledged yet
        self._reported_gen = -1
        for outcome in ("refreshed", "rejected", "failed", "adopted"):  # exported from the start at 0
            metrics.GHL_OAUTH_REFRESHES.labels(label, outcome)
        metrics.GHL_OAUTH_REJECTED.labels(label).set(0)

    def current(self) -> Tokens | None:
        stored = self.store.tokens(self.location)
        if self._unpersisted is not None and (stored is None or self._unpersisted.gen > stored.gen):
            return self._unpersisted
        return stored

    async def access_token(self) -> str:
        try:
            return await self._access_token()
        except (GhlPermanentError, GhlTransientError, asyncio.CancelledError):
            raise
        except Exception as exc:  # noqa: BLE001 - the token topic is unreachable: a transient condition
            tokens = self.current()
            if tokens is not None and self.policy.usable(tokens, self.clock()):
                log.warning("oauth: %s: token topic unavailable (%s); using the current "
                            "access token", self.subject, type(exc).__name__)
                return tokens.access_token  # type: ignore[return-value]
            raise GhlTransientError(f"{self.subject}: OAuth token topic unavailable "
                                    f"({type(exc).__name__})", endpoint=TOKEN_ENDPOINT) from None

    async def _access_token(self) -> str:
        await self.store.start()
        if not self._bootstrapped or self._unpersisted is not None:
            async with self._lock:
                await self._persist_pending()
                await self._adopt_bootstrap()
        tokens, now = self.current(), self.clock()
        if tokens is not None and not self.policy.due(tokens, now):
            return tokens.access_token  # type: ignore[return-value]
        if tokens is not None and self.policy.usable(tokens, now) and self._lock.locked():
            return tokens.access_token  # type: ignore[return-value]  # another lane is refreshing it
        await self._refresh()
        tokens, now = self.current(), self.clock()
        if tokens is not None and self.policy.usable(tokens, now):
            return tokens.access_token  # type: ignore[return-value]
        raise self._unavailable(tokens)

    async def after_unauthorized(self, failed: str) -> str | None:
        """A request with `failed` got a 401: a newer token if one exists or one refresh yields it, else None."""
        try:
            await self._refresh(failed=failed)
        except (GhlPermanentError, GhlTransientError):
            return None
        except Exception as exc:  # noqa: BLE001 - token topic unreachable: the 401 stands
            log.warning("oauth: %s: no refresh after a 401, token topic unavailable (%s)",
                        self.subject, type(exc).__name__)
            return None
        tokens = self.current()
        if tokens is not None and tokens.access_token != failed and self.policy.usable(tokens, self.clock()):
            return tokens.access_token
        return None

    def _unavailable(self, tokens: Tokens | None) -> Exception:
        where = self.subject
        if tokens is None:
            return GhlPermanentError(f"{where} has no stored OAuth tokens: set its install refresh token",
                                     status=401, endpoint=TOKEN_ENDPOINT)
        if tokens.rejected:
            return GhlPermanentError(f"{where}: GoHighLevel rejected the stored OAuth refresh token; "
                                     "reinstall the app", status=401, endpoint=TOKEN_ENDPOINT)
        return GhlTransientError(f"{where}: no usable OAuth access token yet", endpoint=TOKEN_ENDPOINT)

    async def _persist_pending(self) -> None:
        if self._unpersisted is None:
            return
        await self.store.write(self._unpersisted.to_dict())
        self._unpersisted = None

    async def _adopt_bootstrap(self) -> None:
        if self._bootstrapped:
            return
        await self.store.catch_up()
        if self.bootstrap is not None:
            record = adopt(self.store.tokens(self.location), self.location, self.bootstrap.get_secret_value(),
                           self.clock())
            if record is not None:
                await self.store.write(record.to_dict())
                metrics.GHL_OAUTH_REFRESHES.labels(self.label, "adopted").inc()
                log.info("oauth: %s: took over the install refresh token (generation %d)",
                         self.subject, record.gen)
        self._bootstrapped = True

    async def _refresh(self, failed: str | None = None) -> None:
        async with self._lock:
            await self._persist_pending()
            await self.store.catch_up()
            tokens, now = self.current(), self.clock()
            if tokens is None:
                return
            if failed is not None and (tokens.access_token != failed or not self.policy.may_replace(tokens, now)):
                return  # a newer token is already there, or this one is too young to blame
            if failed is None and not self.policy.due(tokens, now):
                return
            if tokens.rejected:
                self._report_rejected(tokens)
                return
            other = self.store.log.held_by_other(self.location, self.owner, now)
            if other is not None:
                if not self.policy.usable(tokens, now):
                    await self._wait_for(tokens.gen, other)
                return
            await self.store.write(Lease(self.location, tokens.gen, self.owner, now, now + self.lease_s).to_dict())
            now = self.clock()
            grant = self.store.log.granted(self.location, self.owner, tokens.gen, now)
            if grant is None:  # another worker's claim came first: use its result
                other = self.store.log.held_by_other(self.location, self.owner, now)
                if other is not None and not self.policy.usable(tokens, now):
                    await self._wait_for(tokens.gen, other)
                return
            if grant.until - now < self.endpoint.timeout_s + MARGIN_S:
                return  # the lease would end during the call: try again later
            sent_at = self.clock()
            try:
                answer = await self.endpoint.refresh(tokens.refresh_token, self.user_type)
            except RefreshRejected:
                rejected = replace(tokens, rejected=True)
                metrics.GHL_OAUTH_REFRESHES.labels(self.label, "rejected").inc()
                await self.store.write(rejected.to_dict())
                self._report_rejected(rejected)
                return
            except GhlTransientError as exc:
                metrics.GHL_OAUTH_REFRESHES.labels(self.label, "failed").inc()
                log.warning("oauth: %s: token refresh failed (%s); retried on the next call",
                            self.subject, exc.reason)
                return
            # GoHighLevel has spent the old refresh token: the new pair is written before anything else.
            new = Tokens(location=self.location, gen=tokens.gen + 1, refresh_token=str(answer["refresh_token"]),
                         access_token=str(answer["access_token"]), issued_at=sent_at,
                         expires_at=sent_at + float(answer["expires_in"]), adopted=tokens.adopted)
            self._unpersisted = new
            try:
                await self._persist_pending()
            except Exception as exc:  # noqa: BLE001 - kept in memory and written again before anything else
                log.error("oauth: %s: the new token pair is not persisted yet (%s); it is "
                          "used from memory and written again on every call until the topic takes it",
                          self.subject, type(exc).__name__)
            metrics.GHL_OAUTH_REFRESHES.labels(self.label, "refreshed").inc()
            metrics.GHL_OAUTH_REJECTED.labels(self.label).set(0)
            metrics.GHL_OAUTH_EXPIRY.labels(self.label).set(new.expires_at)
            log.info("oauth: %s: access token refreshed (generation %d, valid %.0fs)",
                     self.subject, new.gen, new.expires_at - sent_at)

    async def _wait_for(self, gen: int, lease: Lease) -> None:
        """Another worker is refreshing and our token is spent: wait for its result or its lease to end."""
        deadline = time.monotonic() + self.lease_s
        while self.clock() < lease.until and time.monotonic() < deadline:
            await self.sleep(0.25)
            await self.store.catch_up()
            current = self.current()
            if current is not None and current.gen > gen:
                return

    def _report_rejected(self, tokens: Tokens) -> None:
        metrics.GHL_OAUTH_REJECTED.labels(self.label).set(1)  # alert AproSyncGhlOAuthRefreshRejected
        if self._reported_gen == tokens.gen:
            return
        self._reported_gen = tokens.gen
        left = tokens.expires_at - self.clock()
        log.error("oauth: %s REJECTED its stored OAuth refresh token (generation %d): it was "
                  "already used (a refresh answer lost in a crash) or the app was uninstalled. Reinstall the app "
                  "and set the install's new refresh token (docs/operations.md, 'OAuth locations'); the "
                  "current access token %s", self.subject, tokens.gen,
                  f"stays valid for {left:.0f}s" if left > 0 else "has expired: the location's events are held")


class CompanyLocationTokens:
    """A location's access token bought with its agency's company token (an agency-level install). Location tokens
    have no refresh token: they live in memory and are bought again at `refresh_at` of their life or after a 401;
    only the company grant (a `TokenProvider` under `company:<id>`) is single-use and stored."""

    def __init__(self, location: str, company_id: str, company: TokenProvider, endpoint: TokenEndpoint,
                 policy: RefreshPolicy, clock: Callable[[], float] = time.time) -> None:
        self.location = location
        self.company_id = company_id
        self.company = company
        self.endpoint = endpoint
        self.policy = policy
        self.clock = clock
        self._tokens: Tokens | None = None
        self._lock = asyncio.Lock()

    async def access_token(self) -> str:
        tokens = self._tokens
        if tokens is not None and not self.policy.due(tokens, self.clock()):
            return tokens.access_token  # type: ignore[return-value]
        async with self._lock:
            tokens = self._tokens
            if tokens is None or self.policy.due(tokens, self.clock()):
                await self._buy()
            return self._tokens.access_token  # type: ignore[union-attr,return-value]

    async def after_unauthorized(self, failed: str) -> str | None:
        async with self._lock:
            if self._tokens is not None and self._tokens.access_token == failed \
                    and self.policy.may_replace(self._tokens, self.clock()):
                try:
                    await self._buy()
                except (GhlPermanentError, GhlTransientError):
                    return None
            tokens = self._tokens
        return tokens.access_token if tokens is not None and tokens.access_token != failed else None

    async def _buy(self) -> None:
        for _attempt in range(2):
            company_token = await self.company.access_token()
            sent_at = self.clock()
            answer = await self.endpoint.location_token(company_token, self.company_id, self.location)
            if answer is not None:
                self._tokens = Tokens(location=self.location, gen=0, refresh_token="",
                                      access_token=str(answer["access_token"]), issued_at=sent_at,
                                      expires_at=sent_at + float(answer["expires_in"]))
                return
            if await self.company.after_unauthorized(company_token) is None:
                break
        raise GhlTransientError(f"GoHighLevel location {self.location}: the company token was refused",
                                endpoint=LOCATION_TOKEN_ENDPOINT)


class OAuthAuth(httpx.Auth):
    """Bearer token from a `TokenProvider`; on a 401 one refresh and one retry (never a loop)."""

    requires_request_body = True

    def __init__(self, provider: TokenProvider | CompanyLocationTokens) -> None:
        self.provider = provider

    def sync_auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        raise RuntimeError("OAuthAuth works with httpx.AsyncClient only")
        yield request  # pragma: no cover

    async def async_auth_flow(self, request: httpx.Request):  # type: ignore[override]
        token = await self.provider.access_token()
        request.headers["Authorization"] = f"Bearer {token}"
        response = yield request
        if response.status_code == 401:
            newer = await self.provider.after_unauthorized(token)
            if newer is not None:
                request.headers["Authorization"] = f"Bearer {newer}"
                yield request


class OAuthManager:
    """One token store and one provider per OAuth location, for this process."""

    def __init__(self, settings: Settings, *, clock: Callable[[], float] = time.time) -> None:
        self.settings = settings
        self.owner = f"{settings.worker_id}:{uuid.uuid4().hex[:12]}"
        self.clock = clock
        self._store: TokenStore | None = None
        self._providers: dict[str, TokenProvider] = {}  # by store key
        self._buyers: dict[str, CompanyLocationTokens] = {}  # by location, for Company installs

    @property
    def store(self) -> TokenStore:
        if self._store is None:
            self._store = TokenStore(self.settings.kafka, self.settings.topics.oauth_tokens,
                                     self.settings.oauth_token_keys, client_id=f"{self.settings.worker_id}-oauth")
        return self._store

    def _stored(self, key: str, label: str, credentials: OAuthCredentials, subject: str) -> TokenProvider:
        found = self._providers.get(key)
        if found is None:
            endpoint = TokenEndpoint(self.settings.ghl_base_url, credentials, self.settings.ghl_timeout_s)
            found = self._providers[key] = TokenProvider(
                key, label, self.store, endpoint, owner=self.owner, bootstrap=credentials.bootstrap,
                policy=RefreshPolicy(self.settings.oauth_refresh_at), lease_s=self.settings.oauth_lease_s,
                subject=subject, user_type=credentials.user_type, clock=self.clock)
        return found

    def provider(self, target: GhlTarget) -> TokenProvider | CompanyLocationTokens:
        """A Location install's stored grant, or for a Company install the location-token buyer over the
        company's stored grant (one per company, shared by its locations)."""
        credentials = target.oauth
        if credentials is None:
            raise ValueError("not an OAuth location")
        location = target.ghl_location_id
        if credentials.user_type != "Company":
            return self._stored(location, target.label, credentials, f"GoHighLevel location {location}")
        company_id = credentials.company_id or ""
        key = f"company:{company_id}"
        company = self._stored(key, key, credentials, f"GoHighLevel company {company_id}")
        found = self._buyers.get(location)
        if found is None:
            endpoint = TokenEndpoint(self.settings.ghl_base_url, credentials, self.settings.ghl_timeout_s)
            found = self._buyers[location] = CompanyLocationTokens(
                location, company_id, company, endpoint, RefreshPolicy(self.settings.oauth_refresh_at), self.clock)
        return found

    def auth_for(self, target: GhlTarget) -> OAuthAuth | None:
        """httpx auth for an OAuth location; None for a Private Integration Token."""
        return OAuthAuth(self.provider(target)) if target.oauth is not None else None

    async def aclose(self) -> None:
        if self._store is not None:
            await self._store.close()
