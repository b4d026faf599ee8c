"""The official GoHighLevel OpenAPI documents, loaded once: route templates and JSON-schema validation.

Unknown request properties are rejected, as HighLevel's API does; the few generator placeholders the real API
does not enforce are relaxed (docs/emulator.md, "Spec quirks"), and empty request DTOs get their documented
shape from `DOCUMENTED_REQUEST_SCHEMAS`."""

from __future__ import annotations

import copy
import json
import os
import re
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

from jsonschema import Draft7Validator

# Vendored official specs (package data; source and licence in openapi/SOURCE.md).
DEFAULT_SPEC_DIR = Path(os.environ.get("APRO_GHL_OPENAPI_DIR") or Path(__file__).resolve().parent / "openapi")
SPEC_FILES = ("contacts", "opportunities", "locations", "workflows", "oauth")
FORM = "application/x-www-form-urlencoded"
V2 = "2021-07-28"
V3 = "v3"
# Versions the emulated endpoints answer to: v2 (what apro-sync sends) and v3 (what the official SDK 3.x sends).
SUPPORTED_VERSIONS = (V2, "2021-04-15", V3)

# The spec's "Search Contacts" (POST /contacts/search) declares its body as `SearchBodyV2DTO: {type: object,
# properties: {}}`, a placeholder: with the request whitelist nothing could be sent. This is the body HighLevel
# documents for the operation (the documentation the operation's description links to, "Search Contacts"):
# locationId and pageLimit (at most 500) required; page or searchAfter; filters, each {field, operator, value}
# or a group {group: AND|OR, filters: [...]}, all combined with AND; sort; query.
_SEARCH_FILTER: dict[str, Any] = {
    "type": "object",
    "required": ["field", "operator"],
    "properties": {
        "field": {"type": "string"},
        "operator": {"type": "string",
                     "enum": ["eq", "not_eq", "contains", "not_contains", "exists", "not_exists", "range"]},
        "value": {"anyOf": [{"type": "string"}, {"type": "number"}, {"type": "boolean"},
                            {"type": "object", "properties": {"gte": {}, "gt": {}, "lte": {}, "lt": {}}}]},
    },
}
SEARCH_BODY_V2_DTO: dict[str, Any] = {
    "type": "object",
    "required": ["locationId", "pageLimit"],
    "properties": {
        "locationId": {"type": "string"},
        "page": {"type": "number"},
        "pageLimit": {"type": "number"},
        "searchAfter": {"type": "array", "items": {}},
        "filters": {"type": "array", "items": {"anyOf": [
            _SEARCH_FILTER,
            {"type": "object", "required": ["group", "filters"], "properties": {
                "group": {"type": "string", "enum": ["AND", "OR"]},
                "filters": {"type": "array", "items": _SEARCH_FILTER}}},
        ]}},
        "sort": {"type": "array", "items": {"type": "object", "required": ["field", "direction"], "properties": {
            "field": {"type": "string"}, "direction": {"type": "string", "enum": ["asc", "desc"]}}}},
        "query": {"type": "string"},
    },
}
EMPTY_DTO: dict[str, Any] = {"type": "object", "properties": {}}
DOCUMENTED_REQUEST_SCHEMAS: dict[str, dict[str, Any]] = {"SearchBodyV2DTO": SEARCH_BODY_V2_DTO}


def supplement_schemas(doc: dict[str, Any]) -> dict[str, Any]:
    """`doc` with each empty placeholder DTO named in DOCUMENTED_REQUEST_SCHEMAS replaced by its documented shape."""
    schemas = doc.get("components", {}).get("schemas", {})
    for name, schema in DOCUMENTED_REQUEST_SCHEMAS.items():
        if schemas.get(name) == EMPTY_DTO:
            schemas[name] = copy.deepcopy(schema)
    return doc


@dataclass
class Operation:
    method: str
    template: str  # OpenAPI path template, e.g. /contacts/{contactId}
    operation_id: str
    request_schema: dict[str, Any] | None
    request_required: bool
    responses: dict[str, dict[str, Any] | None] = field(default_factory=dict)
    params: list[dict[str, Any]] = field(default_factory=list)
    _req_validator: Draft7Validator | None = None

    def validate_body(self, body: Any) -> list[str]:
        """Return class-validator-style messages for everything wrong with `body` (empty when valid)."""
        if self.request_schema is None:
            return []
        if self._req_validator is None:
            self._req_validator = Draft7Validator(self.request_schema)
        return sorted({_message(e) for e in self._req_validator.iter_errors(body)})

    def response_errors(self, status: int, body: Any) -> list[str]:
        """Schema violations of a response body (used by conformance tests)."""
        schema = self.responses.get(str(status))
        if schema is None:
            return []
        return [
            f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in Draft7Validator(schema).iter_errors(body)
        ]


def _message(err: Any) -> str:
    # Shapes like class-validator: "property foo should not exist", "locationId should not be empty" ...
    path = ".".join(str(p) for p in err.absolute_path)
    if err.validator == "additionalProperties":
        extra = sorted(set(err.instance) - set(err.schema.get("properties", {})))
        prefix = f"{path}." if path else ""
        return "; ".join(f"property {prefix}{name} should not exist" for name in extra)
    if err.validator == "required":
        missing = re.findall(r"'([^']+)' is a required property", err.message)
        name = (f"{path}." if path else "") + (missing[0] if missing else "")
        return f"{name} should not be empty"
    if err.validator == "type":
        expected = err.validator_value if isinstance(err.validator_value, str) else err.validator_value[0]
        return f"{path or 'body'} must be a {expected}"
    if err.validator == "enum":
        return f"{path} must be one of the following values: {', '.join(map(str, err.validator_value))}"
    if err.validator == "anyOf":
        return f"{path} is not a valid value"
    return f"{path or 'body'} {err.message}"


def _normalize(schema: Any, *, request: bool) -> Any:
    """OpenAPI 3.0 → JSON Schema, plus the request whitelist (additionalProperties: false)."""
    if isinstance(schema, list):
        return [_normalize(s, request=request) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: _normalize(v, request=request) for k, v in schema.items() if k not in ("example", "description")}
    out.pop("discriminator", None)
    # The generator writes `type: object` for `any`-typed DTO fields (e.g. dateOfBirth, numeric field_value,
    # whose examples are strings/numbers); the API accepts scalars there.
    if out.get("type") == "object" and "properties" not in out and not isinstance(schema.get("example", {}), dict):
        out.pop("type")
    # `items: {type: array}` without its own items is the generator's placeholder for an untyped array element.
    if out.get("type") == "array" and out.get("items") == {"type": "array"}:
        out["items"] = {}
    if out.pop("nullable", False):
        if "type" in out:
            out["type"] = [out["type"], "null"]
        if "enum" in out:
            out["enum"] = [*out["enum"], None]
    if request and out.get("type") == "object" and "properties" in out:
        out.setdefault("additionalProperties", False)
    return out


class _Resolver:
    def __init__(self, spec_dir: Path) -> None:
        self.spec_dir = spec_dir
        self.docs: dict[Path, dict[str, Any]] = {}

    def doc(self, path: Path) -> dict[str, Any]:
        path = path.resolve()
        if path not in self.docs:
            if not path.exists() and path.parent.name == "common" and "v3" not in path.parts:
                # Upstream v3 files point at ../common from apps/v3, which is apps/v3/common in this snapshot.
                path = self.spec_dir / "apps" / "v3" / "common" / path.name
            self.docs[path] = supplement_schemas(json.loads(path.read_text()))
        return self.docs[path]

    def inline(self, schema: Any, base: Path, depth: int = 0) -> Any:
        if depth > 40:
            return {}
        if isinstance(schema, list):
            return [self.inline(s, base, depth + 1) for s in schema]
        if not isinstance(schema, dict):
            return schema
        if "$ref" in schema:
            ref = schema["$ref"]
            file_part, _, pointer = ref.partition("#")
            target_base = (base.parent / file_part).resolve() if file_part else base
            if file_part and not target_base.exists():
                target_base = self.spec_dir / "apps" / "v3" / "common" / target_base.name
            node: Any = self.doc(target_base)
            for part in pointer.strip("/").split("/"):
                if part:
                    node = node[part]
            return self.inline(node, target_base, depth + 1)
        return {k: self.inline(v, base, depth + 1) for k, v in schema.items()}


class Spec:
    """All emulated operations for one API version family (v2 or v3)."""

    def __init__(self, spec_dir: Path = DEFAULT_SPEC_DIR, version: str = V2) -> None:
        self.version = version
        resolver = _Resolver(spec_dir)
        self.operations: dict[tuple[str, str], Operation] = {}
        folder = spec_dir / "apps" / ("v3" if version == V3 else "")
        for name in SPEC_FILES:
            path = folder / (f"{name}-v3.json" if version == V3 else f"{name}.json")
            doc = resolver.doc(path)
            for template, ops in doc["paths"].items():
                for method, op in ops.items():
                    if method == "parameters":
                        continue
                    rb = op.get("requestBody") or {}
                    content = rb.get("content", {})
                    # JSON bodies; the OAuth endpoints take form bodies (every value a string).
                    rb_schema = (content.get("application/json") or content.get(FORM) or {}).get("schema")
                    responses = {}
                    for status, resp in op.get("responses", {}).items():
                        s = (resp or {}).get("content", {}).get("application/json", {}).get("schema")
                        responses[status] = _normalize(resolver.inline(s, path), request=False) if s else None
                    self.operations[(method.upper(), template)] = Operation(
                        method=method.upper(),
                        template=template,
                        operation_id=op.get("operationId", ""),
                        request_schema=_normalize(resolver.inline(rb_schema, path), request=True)
                        if rb_schema
                        else None,
                        request_required=bool(rb.get("required")),
                        responses=responses,
                        params=[resolver.inline(p, path) for p in op.get("parameters", [])],
                    )

    def get(self, method: str, template: str) -> Operation | None:
        return self.operations.get((method.upper(), template))

    def template_for(self, method: str, template: str) -> Operation:
        op = self.get(method, template)
        if op is None:
            raise KeyError(f"{method} {template} is not in the {self.version} spec")
        return op


@lru_cache(maxsize=4)
def load_spec(spec_dir: str = str(DEFAULT_SPEC_DIR), version: str = V2) -> Spec:
    return Spec(Path(spec_dir), V3 if version == V3 else V2)
