"""Shadow mode (`APRO_SINK_MODE=shadow`): GoHighLevel writes are recorded to a Kafka topic instead of sent.

Reads (GET, contact search) still go to GoHighLevel: they change nothing and let the executor take the same
decisions as live (an existing contact is found and updated, not created). Objects a write would create get
a deterministic `shadow-…` id. Why and how live mode takes over: docs/operations.md "Shadow mode".
"""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Awaitable, Callable, Mapping
from contextvars import ContextVar
from datetime import datetime, timezone
from typing import Any

from sinks.ghl.client import GhlClient

SHADOW_ID_PREFIX = "shadow-"
# Headers of a shadow record (no PHI: method, path template, location, ids).
METHOD = "apro-shadow-method"
PATH = "apro-shadow-path"
LOCATION = "apro-shadow-location"
OP_ID = "apro-shadow-op"
READS = frozenset({"POST /contacts/search"})  # POSTs that only read
# (client id, event id, op id) of the op being executed: set by the sink per lane task.
CURRENT_OP: ContextVar[tuple[str, str, str] | None] = ContextVar("apro_shadow_op", default=None)
# The contact the task's last duplicate search found: the id the upsert that follows it would get.
_FOUND: ContextVar[str | None] = ContextVar("apro_shadow_found", default=None)

Send = Callable[[bytes, bytes, list[tuple[str, bytes]]], Awaitable[None]]


def is_read(method: str, template: str) -> bool:
    return method == "GET" or f"{method} {template}" in READS


def shadow_id(*parts: str) -> str:
    return SHADOW_ID_PREFIX + hashlib.sha256("|".join(parts).encode()).hexdigest()[:20]


def record(location_id: str, method: str, template: str, path_params: Mapping[str, str] | None,
           params: Mapping[str, Any] | None, body: Any, op: tuple[str, str, str] | None,
           at: datetime) -> tuple[bytes, bytes, list[tuple[str, bytes]]]:
    """(key, value, headers) of one recorded call. Key = the AestheticsPro client id (per-client order)."""
    client_id, event_id, op_id = op or ("", "", "")
    value = {
        "method": method, "path": template, "pathParams": dict(path_params or {}),
        "query": {k: v for k, v in (params or {}).items() if v is not None}, "locationId": location_id,
        "body": body, "clientId": client_id, "eventId": event_id, "opId": op_id, "recordedAt": at.isoformat(),
    }
    headers = [(METHOD, method.encode()), (PATH, template.encode()), (LOCATION, location_id.encode()),
               (OP_ID, op_id.encode())]
    return client_id.encode(), json.dumps(value, default=str, sort_keys=True).encode(), headers


def answer(method: str, template: str,  # noqa: ARG001 - same signature as the recorded call
           path_params: Mapping[str, str], body: Any, location_id: str,
           found_contact: str | None) -> dict[str, Any]:
    """What GoHighLevel would answer a write, as far as the executor reads it."""
    body = body if isinstance(body, dict) else {}
    if template == "/contacts/upsert" or template == "/contacts/":
        key = str(body.get("email") or "").lower() or str(body.get("phone") or "")
        contact_id = found_contact or shadow_id(location_id, "contact", key)
        return {"contact": {"id": contact_id, "email": body.get("email"), "phone": body.get("phone")},
                "new": found_contact is None}
    if template == "/contacts/{contactId}":
        return {"succeded": True, "contact": {"id": path_params.get("contactId")}}
    if template == "/contacts/{contactId}/tags":
        return {"tags": list(body.get("tags") or [])}
    if template == "/contacts/{contactId}/notes":
        return {"note": {"id": SHADOW_ID_PREFIX + uuid.uuid4().hex[:20], "body": body.get("body", "")}}
    if template == "/opportunities/":
        opp_id = shadow_id(location_id, "opportunity", str(body.get("contactId")), str(body.get("pipelineId")))
        return {"opportunity": {**body, "id": opp_id}}
    if template == "/opportunities/{id}":
        return {"opportunity": {**body, "id": path_params.get("id")}}
    return {"succeded": True}


def read_of_shadow_object(template: str, path_params: Mapping[str, str], params: Mapping[str, Any]) -> dict | None:
    """A read about an object only the shadow run created: answered here (GoHighLevel would not know it)."""
    ids = [str(v) for v in (*path_params.values(), *(params or {}).values()) if v is not None]
    if not any(i.startswith(SHADOW_ID_PREFIX) for i in ids):
        return None
    if template.endswith("/notes"):
        return {"notes": []}
    if template == "/opportunities/search":
        return {"opportunities": [], "meta": {"total": 0}}
    if template == "/contacts/{contactId}":
        return {"contact": {"id": path_params.get("contactId")}}
    return {}


class ShadowGhlClient(GhlClient):
    """A GhlClient whose writes go to the shadow topic (awaited: durable before the op counts as done)."""

    def __init__(self, *args: Any, send: Send, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._send = send

    async def find_duplicate(self, email: str | None, phone: str | None) -> dict[str, Any] | None:
        found = await super().find_duplicate(email, phone)
        _FOUND.set(str(found["id"]) if found else None)
        return found

    async def _send_once(self, method: str, template: str, path_params: Mapping[str, str] | None = None, *,
                         params: Mapping[str, Any] | None = None, body: Any = None) -> Any:
        path_params = dict(path_params or {})
        if is_read(method, template):
            local = read_of_shadow_object(template, path_params, params or {})
            if local is not None:
                return local
            return await super()._send_once(method, template, path_params, params=params, body=body)
        key, value, headers = record(self.location_id, method, template, path_params, params, body,
                                     CURRENT_OP.get(), datetime.now(timezone.utc))
        await self._send(key, value, headers)
        found = None
        if template == "/contacts/upsert":
            found = _FOUND.get()
            _FOUND.set(None)
        return answer(method, template, path_params, body, self.location_id, found)


def describe(headers: Mapping[str, str]) -> list[str]:
    """`peek` columns of a shadow record (no PHI)."""
    if METHOD not in headers:
        return []
    return [f"call={headers[METHOD]} {headers.get(PATH, '')}", f"location={headers.get(LOCATION, '-')}",
            f"op={headers.get(OP_ID) or '-'}"]


__all__ = ["CURRENT_OP", "SHADOW_ID_PREFIX", "ShadowGhlClient", "answer", "describe", "is_read", "record",
           "shadow_id"]
