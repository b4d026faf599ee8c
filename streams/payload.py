"""Tolerant reading of AestheticsPro webhook bodies, shared by the producer (for the Kafka key) and the normalizer.

AestheticsPro's payloads vary (../shared/fixtures/README.md): key spellings (camelCase, snake_case, PascalCase,
UPPERCASE), envelopes (`data` / `payload`), JSON or form bodies, ids as numbers or strings. Everything here is
pure and never logs: bodies are PHI.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from decimal import Decimal
from typing import Any
from urllib.parse import parse_qsl

_SEPARATORS = re.compile(r"[\s_\-.]+")
ENVELOPE_KEYS = ("data", "payload", "body", "record")
ENTITY_KEYS = ("client", "appointment", "invoice")
CLIENT_ID_KEYS = ("clientId", "client_id", "clientNumber", "customerId", "patientId", "guestId")
CLIENT_BLOCK_KEYS = ("client", "customer", "patient", "guest")
MAX_DEPTH = 64


class PayloadError(ValueError):
    """A body that is not a readable webhook. The message is safe to log (it never quotes the body)."""


def norm_key(key: object) -> str:
    """`clientId`, `client_id`, `CLIENTID`, `Client-Id` → `clientid`."""
    return _SEPARATORS.sub("", str(key)).lower()


def get(obj: Any, *names: str) -> Any:
    """First non-empty value under any of `names`, comparing keys case- and separator-insensitively."""
    if not isinstance(obj, Mapping):
        return None
    wanted = [norm_key(n) for n in names]
    index: dict[str, Any] = {}
    for key, value in obj.items():
        index.setdefault(norm_key(key), value)
    for name in wanted:
        value = index.get(name)
        if value is not None and value != "" and value != [] and value != {}:
            return value
    return None


def get_block(obj: Any, *names: str) -> Mapping[str, Any] | None:
    value = get(obj, *names)
    return value if isinstance(value, Mapping) else None


def _check_depth(value: Any, depth: int = 0) -> None:
    if depth > MAX_DEPTH:
        raise PayloadError(f"body nests deeper than {MAX_DEPTH} levels")
    if isinstance(value, Mapping):
        for v in value.values():
            _check_depth(v, depth + 1)
    elif isinstance(value, list):
        for v in value:
            _check_depth(v, depth + 1)


def _parse_json(raw: bytes) -> Any:
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise PayloadError("body is not valid UTF-8") from None
    try:
        # Exact decimals: a float would already have lost cents before we see them.
        return json.loads(text, parse_float=Decimal)
    except RecursionError:
        raise PayloadError(f"body nests deeper than {MAX_DEPTH} levels") from None
    except ValueError as exc:
        raise PayloadError(f"body is not valid JSON (line {getattr(exc, 'lineno', '?')})") from None


def _set_bracketed(target: dict[str, Any], key: str, value: str) -> None:
    """`client[firstName]=Jane` → {"client": {"firstName": "Jane"}} (PHP/ColdFusion-style form fields)."""
    parts = re.findall(r"[^\[\]]+", key)
    if not parts:
        return
    node = target
    for part in parts[:-1]:
        child = node.get(part)
        if not isinstance(child, dict):
            child = {}
            node[part] = child
        node = child
    node.setdefault(parts[-1], value)


def _parse_form(raw: bytes) -> dict[str, Any]:
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise PayloadError("form body is not valid UTF-8") from None
    try:
        pairs = parse_qsl(text, keep_blank_values=True, strict_parsing=True, max_num_fields=2000)
    except ValueError:
        raise PayloadError("body is not valid form encoding") from None
    if not pairs:
        raise PayloadError("form body has no fields")
    form: dict[str, Any] = {}
    for key, value in pairs:
        _set_bracketed(form, key, value)
    # Some senders post the JSON document as one form field.
    for name in ENVELOPE_KEYS:
        inner = form.get(name)
        if isinstance(inner, str) and inner.lstrip().startswith("{"):
            decoded = _parse_json(inner.encode())
            if isinstance(decoded, dict):
                return {**{k: v for k, v in form.items() if k != name}, name: decoded}
    return form


def parse_body(raw: bytes, content_type: str | None = None) -> dict[str, Any]:
    """Raw webhook bytes → a JSON object. Raises PayloadError for anything that is neither JSON nor a form."""
    if not raw or not raw.strip():
        raise PayloadError("body is empty")
    ctype = (content_type or "").split(";")[0].strip().lower()
    if ctype == "application/x-www-form-urlencoded":
        body: Any = _parse_form(raw)
    elif ctype.endswith("json") or raw.lstrip()[:1] in (b"{", b"["):
        body = _parse_json(raw)
    else:
        body = _parse_form(raw) if b"=" in raw else None
        if body is None:
            raise PayloadError("body is neither JSON nor form-encoded")
    if isinstance(body, list) and len(body) == 1 and isinstance(body[0], dict):
        body = body[0]
    if not isinstance(body, dict):
        raise PayloadError(f"body is a JSON {type(body).__name__}, not an object")
    _check_depth(body)
    return body


def unwrap(body: Mapping[str, Any]) -> dict[str, Any]:
    """Flatten a `data`/`payload` envelope: inner fields win, envelope fields (event kind, ids) fill the gaps."""
    merged: dict[str, Any] = dict(body)
    for _ in range(3):  # envelopes may nest (payload.data)
        inner = None
        for key, value in merged.items():
            if norm_key(key) in ENVELOPE_KEYS and isinstance(value, Mapping):
                inner = key
                break
        if inner is None:
            return merged
        nested = merged.pop(inner)
        present = {norm_key(k) for k in nested}
        merged = {**{k: v for k, v in merged.items() if norm_key(k) not in present}, **nested}
    return merged


def id_str(value: Any) -> str | None:
    """Ids arrive as strings or numbers (`48213`, `"48213"`, `48213.0`): one canonical string."""
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, (int,)):
        return str(value)
    if isinstance(value, (float, Decimal)):
        try:
            if value == int(value):
                return str(int(value))
        except (OverflowError, ValueError):
            return None
        return str(value)
    if isinstance(value, str):
        text = value.strip()
        if not text or len(text) > 128:
            return None
        if re.fullmatch(r"\d+\.0+", text):
            text = text.split(".")[0]
        return text
    return None


def _client_blocks(body: Mapping[str, Any]) -> Iterable[Mapping[str, Any]]:
    block = get_block(body, *CLIENT_BLOCK_KEYS)
    if block:
        yield block
    for entity in ("invoice", "appointment"):
        parent = get_block(body, entity)
        if parent:
            nested = get_block(parent, *CLIENT_BLOCK_KEYS)
            if nested:
                yield nested
            grand = get_block(parent, "appointment")
            if grand:
                nested = get_block(grand, *CLIENT_BLOCK_KEYS)
                if nested:
                    yield nested


def find_client_id(body: Mapping[str, Any]) -> str | None:
    """The AestheticsPro client id wherever the payload puts it; None when there is none (e.g. a test ping)."""
    flat = unwrap(body)
    for block in _client_blocks(flat):
        found = id_str(get(block, "id", *CLIENT_ID_KEYS))
        if found:
            return found
    found = id_str(get(flat, *CLIENT_ID_KEYS))
    if found:
        return found
    for entity in ("invoice", "appointment"):
        found = id_str(get(get_block(flat, entity), *CLIENT_ID_KEYS))
        if found:
            return found
    return None


def find_location(body: Mapping[str, Any]) -> tuple[str | None, str | None]:
    """(location id, location name) from a `location` block or flat `locationId` / `locationName` fields."""
    flat = unwrap(body)
    block = get_block(flat, "location", "clinic", "site", "business")
    loc_id = id_str(get(block, "id", "locationId")) if block else None
    name = get(block, "name", "locationName") if block else None
    if loc_id is None:
        loc_id = id_str(get(flat, "locationId", "location_id", "clinicId", "siteId"))
    if name is None:
        raw_name = get(flat, "locationName", "clinicName", "siteName")
        if raw_name is None and isinstance(get(flat, "location"), str):
            raw_name = get(flat, "location")
        name = raw_name
    return loc_id, (str(name).strip() if isinstance(name, (str, int)) and str(name).strip() else None)
