"""Async GoHighLevel API v2 client, one per location, authenticated by a Private Integration Token
or OAuth (an httpx auth, sinks/oauth.py).

Every call goes through the location's `RateLimiter`, is retried on transient errors (retry.py), counted by
endpoint template and turned into `GhlTransientError` / `GhlPermanentError`. Known API defects are handled
here (docs/sync-engine.md, "Module notes"). PHI never goes into a URL, only into JSON bodies."""

from __future__ import annotations

import asyncio
import email.utils
import re
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from datetime import date, datetime, timezone
from decimal import Decimal
from typing import Any
from urllib.parse import quote

import httpx
import structlog
from pydantic import SecretStr
from tenacity import RetryCallState

from foundations.metrics import GHL_API_ANOMALIES, GHL_LATENCY, GHL_RATE_LIMITED, GHL_REQUESTS, GHL_RETRIES
from sinks.ghl.errors import GhlError, GhlPermanentError, GhlRateLimited, GhlTransientError, error_for_status
from sinks.ghl.models import (
    Contact,
    ContactInput,
    CustomFieldDef,
    CustomFieldValue,
    Note,
    Opportunity,
    Pipeline,
    UpsertResult,
    Workflow,
    wire_value,
)
from sinks.ghl.ratelimit import RateLimiter
from sinks.ghl.retry import RetryPolicy

API_VERSION = "2021-07-28"
OPPORTUNITY_STATUSES = frozenset({"open", "won", "lost", "abandoned"})
# GoHighLevel's default duplicate-contact search sequence: an upsert matches by email first, then by phone.
CONTACT_MATCH_ORDER = ("email", "phone")
log = structlog.get_logger("sinks.ghl")

# UpsertContactDto / UpdateContactDto properties a caller may pass as a raw mapping. `tags` is deliberately
# absent (it overwrites all tags); `locationId` is set by the client.
CONTACT_WIRE_KEYS = frozenset(
    {
        "firstName",
        "lastName",
        "name",
        "email",
        "gender",
        "phone",
        "address1",
        "city",
        "state",
        "postalCode",
        "website",
        "timezone",
        "dnd",
        "dndSettings",
        "source",
        "dateOfBirth",
        "country",
        "companyName",
        "assignedTo",
        "customFields",
    }
)
UPDATE_ONLY_EXCLUDED = frozenset({"gender", "companyName"})  # not in UpdateContactDto


class TagsInContactWrite(ValueError):
    """`tags` in an upsert/update body would replace every tag on the contact; use add_tags instead."""


def _digits(value: str | None) -> str:
    return re.sub(r"\D", "", value or "")


def same_phone(sent: str | None, returned: str | None) -> bool:
    """Compare on the last 10 digits: GHL reformats numbers (E.164), so formatting differences don't count."""
    a, b = _digits(sent), _digits(returned)
    if not a:
        return True
    return bool(b) and a[-10:] == b[-10:]


def money_wire(value: Decimal) -> float:
    """JSON number for a monetary amount. Quantized to cents first; for |amount| < 1e13 the float's repr is
    exactly that decimal string (repr is the shortest round-tripping form), so the JSON text is the Decimal's."""
    cents = Decimal(value).quantize(Decimal("0.01"))
    if abs(cents) >= Decimal("1e13"):
        raise ValueError("monetary value out of range")
    return float(cents)


def parse_retry_after(value: str | None, now: Callable[[], datetime] | None = None) -> float | None:
    """Retry-After as delta-seconds or an HTTP date; None when absent or unreadable."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    current = now() if now else datetime.now(timezone.utc)
    return max(0.0, (when - current).total_seconds())


def _contact_body(fields: ContactInput | Mapping[str, Any], *, allowed: frozenset[str]) -> dict[str, Any]:
    if isinstance(fields, ContactInput):
        body = fields.to_wire()
    else:
        if "tags" in fields:
            raise TagsInContactWrite("refusing to send `tags` in a contact write: it replaces all tags; use add_tags")
        unknown = sorted(set(fields) - allowed)
        if unknown:
            raise ValueError(f"unknown contact fields: {', '.join(unknown)}")
        body = {}
        for key, value in fields.items():
            if value is None:
                continue
            if key == "dateOfBirth" and isinstance(value, date):
                value = value.isoformat()
            elif key == "customFields":
                value = [_custom_field_wire(item) for item in value]
            body[key] = value
    if "tags" in body:
        raise TagsInContactWrite("refusing to send `tags` in a contact write: it replaces all tags; use add_tags")
    return body


def _custom_field_wire(item: CustomFieldValue | Mapping[str, Any]) -> dict[str, Any]:
    if isinstance(item, CustomFieldValue):
        return item.to_wire()
    unknown = set(item) - {"id", "key", "field_value"}
    if unknown or "id" not in item:
        raise ValueError("a custom field value needs `id` and may have `key`, `field_value` only")
    out = {k: item[k] for k in ("id", "key") if item.get(k)}
    out["field_value"] = wire_value(item.get("field_value", ""))
    return out


class GhlClient:
    def __init__(
        self,
        base_url: str,
        token: SecretStr | None,
        location_id: str,
        *,
        auth: httpx.Auth | None = None,
        limiter: RateLimiter | None = None,
        timeout: float = 15.0,
        max_retries: int = 5,
        retry_policy: RetryPolicy | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        metrics_location: str | None = None,
        clock: Callable[[], float] = time.perf_counter,
        contact_match_order: Sequence[str] = CONTACT_MATCH_ORDER,
    ) -> None:
        if not location_id:
            raise ValueError("a GoHighLevel location id is required")
        if (token is None) == (auth is None):
            raise ValueError("give a Private Integration Token or an OAuth auth, not both")
        if not contact_match_order or len(set(contact_match_order)) != len(contact_match_order) \
                or not set(contact_match_order) <= set(CONTACT_MATCH_ORDER):
            raise ValueError("contact_match_order: email and/or phone, each at most once")
        # The location's duplicate-contact search sequence (not readable through the API; GoHighLevel's default).
        self.contact_match_order = tuple(contact_match_order)
        self.location_id = location_id
        self.label = metrics_location or location_id  # metric label: a clinic, never a patient
        self.limiter = limiter or RateLimiter(self.label)
        self.policy = retry_policy or RetryPolicy(max_attempts=max_retries)
        self._sleep = sleep
        self._clock = clock
        self._consecutive_429 = 0
        self._http = httpx.AsyncClient(
            base_url=base_url.rstrip("/"),
            timeout=httpx.Timeout(timeout),
            headers={
                **({"Authorization": f"Bearer {token.get_secret_value()}"} if token is not None else {}),
                "Version": API_VERSION,
                "Accept": "application/json",
            },
            auth=auth,
            follow_redirects=False,
        )

    def __repr__(self) -> str:  # never the token
        return f"GhlClient(location_id={self.location_id!r})"

    async def __aenter__(self) -> GhlClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    # -- transport -----------------------------------------------------------------------------------------------
    async def _send_once(self, method: str, template: str, path_params: Mapping[str, str] | None = None, *,
                         params: Mapping[str, Any] | None = None, body: Any = None) -> Any:
        endpoint = f"{method} {template}"
        path = template.format(**{k: quote(str(v), safe="") for k, v in (path_params or {}).items()})
        slot = await self.limiter.acquire()
        started = self._clock()
        try:
            response = await self._http.request(
                method, path, params={k: v for k, v in (params or {}).items() if v is not None} or None,
                json=body if body is not None else None,
            )
        except httpx.TimeoutException:
            GHL_REQUESTS.labels(self.label, endpoint, "timeout").inc()
            raise GhlTransientError(f"timeout calling {endpoint}", endpoint=endpoint) from None
        except httpx.TransportError as exc:  # the exception text can hold the URL: keep only its type
            GHL_REQUESTS.labels(self.label, endpoint, "connection").inc()
            raise GhlTransientError(f"connection error ({type(exc).__name__}) calling {endpoint}",
                                    endpoint=endpoint) from None
        finally:
            self.limiter.settle(slot)
            GHL_LATENCY.labels(self.label, endpoint).observe(max(0.0, self._clock() - started))
        self.limiter.observe(response.headers)
        status = response.status_code
        GHL_REQUESTS.labels(self.label, endpoint, f"{status // 100}xx").inc()
        try:
            payload = response.json() if response.content else None
        except ValueError:
            payload = None
        if 200 <= status < 300:
            self._consecutive_429 = 0
            return payload if payload is not None else {}
        error = error_for_status(status, endpoint, payload, body,
                                 retry_after=parse_retry_after(response.headers.get("retry-after")))
        if isinstance(error, GhlRateLimited):
            self._consecutive_429 += 1
            GHL_RATE_LIMITED.labels(self.label).inc()
            pause = self.policy.rate_limit_pause(error, self._consecutive_429)
            self.limiter.pause(pause)
            log.warning("ghl.rate_limited", location=self.label, endpoint=endpoint, pause_s=round(pause, 3))
        raise error

    def _before_sleep(self, endpoint: str) -> Callable[[RetryCallState], None]:
        def hook(state: RetryCallState) -> None:
            GHL_RETRIES.labels(self.label, endpoint).inc()
            exc = state.outcome.exception() if state.outcome else None
            log.info("ghl.retry", location=self.label, endpoint=endpoint, attempt=state.attempt_number,
                     reason=getattr(exc, "reason", type(exc).__name__))
        return hook

    async def _retrying(self, endpoint: str, call: Callable[[int], Awaitable[Any]]) -> Any:
        """Run `call(attempt_number)` under the retry policy; re-raise the last transient error when exhausted."""
        result: Any = None
        async for attempt in self.policy.retrying(sleep=self._sleep, before_sleep=self._before_sleep(endpoint)):
            with attempt:
                result = await call(attempt.retry_state.attempt_number)
        return result

    async def _call(self, method: str, template: str, path_params: Mapping[str, str] | None = None, *,
                    params: Mapping[str, Any] | None = None, body: Any = None) -> Any:
        return await self._retrying(
            f"{method} {template}",
            lambda _attempt: self._send_once(method, template, path_params, params=params, body=body),
        )

    # -- contacts ------------------------------------------------------------------------------------------------
    async def upsert_contact(self, fields: ContactInput | Mapping[str, Any], *,
                             create_new_if_duplicate_allowed: bool = False) -> UpsertResult:
        """POST /contacts/upsert. Never sends `tags`. Flags (and counts) a phone GHL silently dropped.

        `create_new_if_duplicate_allowed`: where the location allows duplicate contacts, create a new contact
        without matching an existing one (ignored by GoHighLevel where it does not)."""
        body = _contact_body(fields, allowed=CONTACT_WIRE_KEYS)
        body["locationId"] = self.location_id
        if create_new_if_duplicate_allowed:
            body["createNewIfDuplicateAllowed"] = True
        payload = await self._call("POST", "/contacts/upsert", body=body)
        contact = payload.get("contact") or {}
        contact_id = contact.get("id")
        if not contact_id:
            raise GhlPermanentError("HTTP 200 from POST /contacts/upsert without a contact id",
                                    status=200, endpoint="POST /contacts/upsert")
        dropped = not same_phone(body.get("phone"), contact.get("phone"))
        if dropped:
            GHL_API_ANOMALIES.labels(self.label, "upsert_phone_dropped").inc()
            log.warning("ghl.upsert.phone_dropped", location=self.label, contact_id=contact_id,
                        hint="the e-mail matched a contact whose phone differs; phone not applied")
        return UpsertResult(contact_id=contact_id, new=bool(payload.get("new")), phone_dropped=dropped,
                            contact=contact)

    async def find_duplicate(self, email: str | None, phone: str | None) -> dict[str, Any] | None:
        """The contact an upsert with this email/phone would resolve to, or None.

        Mirrors GoHighLevel's duplicate matching: POST /contacts/search with `{field} eq {value}` for the first
        field of the location's search sequence (`contact_match_order`; GoHighLevel's default: email, then
        phone), then for the second; the first hit wins. The email and phone travel in the JSON body only, never
        in the URL (PHI: GoHighLevel's and proxies' access logs keep URLs; hence not GET
        /contacts/search/duplicate, which takes them as query parameters). GoHighLevel documents that its search
        index may show a new or changed contact only after a few seconds (docs/sync-rules.md, "Collisions").
        The raw contact dict is PHI: never log it."""
        values = {"email": email or None, "phone": phone or None}
        for field in self.contact_match_order:
            value = values[field]
            if value is None:
                continue
            payload = await self._call("POST", "/contacts/search", body={
                "locationId": self.location_id, "pageLimit": 1,
                "filters": [{"field": field, "operator": "eq", "value": value}],
            })
            for contact in payload.get("contacts") or []:
                if isinstance(contact, Mapping) and contact.get("id"):
                    return dict(contact)
        return None

    async def allows_duplicate_contacts(self) -> bool:
        """GET /locations/{locationId} → settings.allowDuplicateContact (the location's "Allow Duplicate Contact")."""
        payload = await self._call("GET", "/locations/{locationId}", {"locationId": self.location_id})
        settings = (payload.get("location") or {}).get("settings") or {}
        return settings.get("allowDuplicateContact") is True

    async def get_contact(self, contact_id: str) -> dict[str, Any]:
        """GET /contacts/{contactId} → the raw contact dict (PHI: never log it)."""
        payload = await self._call("GET", "/contacts/{contactId}", {"contactId": contact_id})
        return payload.get("contact") or {}

    async def update_contact(self, contact_id: str, fields: ContactInput | Mapping[str, Any]) -> dict[str, Any]:
        """PUT /contacts/{contactId}. Never sends `tags`. Returns the raw contact dict."""
        body = _contact_body(fields, allowed=CONTACT_WIRE_KEYS - UPDATE_ONLY_EXCLUDED)
        payload = await self._call("PUT", "/contacts/{contactId}", {"contactId": contact_id}, body=body)
        return payload.get("contact") or {}

    async def add_tags(self, contact_id: str, tags: Iterable[str]) -> list[str]:
        """POST /contacts/{contactId}/tags: adds, never removes. Returns the tags GHL reports."""
        wanted = [t for t in dict.fromkeys(str(t).strip() for t in tags) if t]
        if not wanted:
            return []
        payload = await self._call("POST", "/contacts/{contactId}/tags", {"contactId": contact_id},
                                   body={"tags": wanted})
        return list(payload.get("tags") or [])

    async def create_note(self, contact_id: str, body: str) -> Note:
        """POST /contacts/{contactId}/notes."""
        if not body:
            raise ValueError("a note needs a body")
        payload = await self._call("POST", "/contacts/{contactId}/notes", {"contactId": contact_id},
                                   body={"body": body})
        return Note.model_validate(payload.get("note") or {})

    async def list_notes(self, contact_id: str) -> list[Note]:
        """GET /contacts/{contactId}/notes."""
        payload = await self._call("GET", "/contacts/{contactId}/notes", {"contactId": contact_id})
        return [Note.model_validate(n) for n in payload.get("notes") or [] if isinstance(n, Mapping)]

    async def add_contact_to_workflow(self, contact_id: str, workflow_id: str,
                                      event_start_time: datetime | None = None) -> bool:
        """POST /contacts/{contactId}/workflow/{workflowId}. Returns GHL's `succeded` flag (spec spelling)."""
        body: dict[str, Any] = {}
        if event_start_time is not None:
            if event_start_time.tzinfo is None:
                raise ValueError("eventStartTime must be timezone-aware")
            body["eventStartTime"] = event_start_time.isoformat()
        payload = await self._call("POST", "/contacts/{contactId}/workflow/{workflowId}",
                                   {"contactId": contact_id, "workflowId": workflow_id}, body=body)
        return bool(payload.get("succeded", payload.get("succeeded", True)))

    # -- opportunities -------------------------------------------------------------------------------------------
    async def _search_once(self, contact_id: str, pipeline_id: str | None) -> list[Opportunity]:
        payload = await self._send_once("GET", "/opportunities/search", params={
            "location_id": self.location_id, "contact_id": contact_id, "pipeline_id": pipeline_id, "limit": 100,
        })
        return [Opportunity.model_validate(o) for o in payload.get("opportunities") or [] if isinstance(o, Mapping)]

    async def search_opportunities(self, contact_id: str, pipeline_id: str | None = None) -> list[Opportunity]:
        """GET /opportunities/search?location_id&contact_id&pipeline_id (the contact's opportunities)."""
        return await self._retrying("GET /opportunities/search",
                                    lambda _a: self._search_once(contact_id, pipeline_id))

    async def create_opportunity(self, *, pipeline_id: str, stage_id: str, contact_id: str, name: str,
                                 status: str = "open", monetary_value: Decimal | None = None) -> Opportunity:
        """POST /opportunities/. Safe to retry: after an ambiguous failure (5xx, timeout) the next attempt first
        searches the contact's opportunities in the pipeline and returns one found (`recovered=True`); after a
        422 it searches once and raises the 422 only if nothing was created."""
        if status not in OPPORTUNITY_STATUSES:
            raise ValueError(f"unknown opportunity status {status!r}")
        body: dict[str, Any] = {
            "pipelineId": pipeline_id, "locationId": self.location_id, "name": name,
            "pipelineStageId": stage_id, "status": status, "contactId": contact_id,
        }
        if monetary_value is not None:
            body["monetaryValue"] = money_wire(monetary_value)

        async def recovered() -> Opportunity | None:
            found = await self._search_once(contact_id, pipeline_id)
            if not found:
                return None
            GHL_API_ANOMALIES.labels(self.label, "opportunity_created_despite_error").inc()
            log.warning("ghl.opportunity.recovered", location=self.label, opportunity_id=found[0].id)
            return found[0].model_copy(update={"recovered": True})

        async def attempt(number: int) -> Opportunity:
            if number > 1 and (found := await recovered()) is not None:
                return found
            try:
                payload = await self._send_once("POST", "/opportunities/", body=body)
            except GhlPermanentError as exc:
                if exc.status == 422:
                    try:
                        found = await recovered()
                    except GhlError:
                        found = None
                    if found is not None:
                        return found
                raise
            return Opportunity.model_validate(payload.get("opportunity") or {})

        return await self._retrying("POST /opportunities/", attempt)

    async def update_opportunity(self, opportunity_id: str, *, stage_id: str | None = None,
                                 status: str | None = None, monetary_value: Decimal | None = None,
                                 name: str | None = None, pipeline_id: str | None = None) -> Opportunity:
        """PUT /opportunities/{id}: only the given fields change."""
        if status is not None and status not in OPPORTUNITY_STATUSES:
            raise ValueError(f"unknown opportunity status {status!r}")
        body: dict[str, Any] = {}
        if pipeline_id:
            body["pipelineId"] = pipeline_id
        if stage_id:
            body["pipelineStageId"] = stage_id
        if status:
            body["status"] = status
        if monetary_value is not None:
            body["monetaryValue"] = money_wire(monetary_value)
        if name:
            body["name"] = name
        if not body:
            raise ValueError("nothing to update")
        payload = await self._call("PUT", "/opportunities/{id}", {"id": opportunity_id}, body=body)
        return Opportunity.model_validate(payload.get("opportunity") or {"id": opportunity_id})

    async def list_pipelines(self) -> list[Pipeline]:
        """GET /opportunities/pipelines?locationId."""
        payload = await self._call("GET", "/opportunities/pipelines", params={"locationId": self.location_id})
        return [Pipeline.model_validate(p) for p in payload.get("pipelines") or [] if isinstance(p, Mapping)]

    # -- location setup ------------------------------------------------------------------------------------------
    async def list_custom_fields(self, model: str = "contact") -> list[CustomFieldDef]:
        """GET /locations/{locationId}/customFields?model=contact."""
        payload = await self._call("GET", "/locations/{locationId}/customFields", {"locationId": self.location_id},
                                   params={"model": model})
        return [CustomFieldDef.model_validate(f) for f in payload.get("customFields") or [] if isinstance(f, Mapping)]

    async def create_custom_field(self, name: str, data_type: str, model: str = "contact") -> CustomFieldDef:
        """POST /locations/{locationId}/customFields {name, dataType, model}. (No folder: the API has no parentId.)"""
        payload = await self._call("POST", "/locations/{locationId}/customFields", {"locationId": self.location_id},
                                   body={"name": name, "dataType": str(data_type), "model": model})
        return CustomFieldDef.model_validate(payload.get("customField") or payload)

    async def list_workflows(self) -> list[Workflow]:
        """GET /workflows/?locationId."""
        payload = await self._call("GET", "/workflows/", params={"locationId": self.location_id})
        return [Workflow.model_validate(w) for w in payload.get("workflows") or [] if isinstance(w, Mapping)]

    async def get_contact_model(self, contact_id: str) -> Contact:
        """GET /contacts/{contactId} parsed to the few fields the sink reads (id, phone, email, tags)."""
        return Contact.model_validate(await self.get_contact(contact_id))
