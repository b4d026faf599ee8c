"""Every request GhlClient sends conforms to the official GoHighLevel OpenAPI spec (apps/*.json).

Requests are captured by a real HTTP server on loopback, matched to their operation by method + path template,
then: the JSON body validates against the operation's requestBody schema ($refs resolved across files, including
../common/common-schemas.json); every property we send is declared in the schema (the spec rarely sets
additionalProperties: false, so validation alone would let typos through); query parameters are declared and the
required ones present; the Version header matches the operation's enum.
"""

from __future__ import annotations

import copy
import json
import re
from datetime import date, datetime, timezone
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from jsonschema import Draft7Validator
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT7

from emulator.spec import EMPTY_DTO, SEARCH_BODY_V2_DTO
from foundations.formats import crm_fields
from sinks.ghl.models import ContactInput, CustomFieldValue
from tests.sinks.ghl.scripted_ghl import FakeTime, LoopbackGhl, Reply, ghl_loopback, make_client  # noqa: F401

OPENAPI = Path(__file__).resolve().parents[3] / "emulator" / "openapi"
APPS = ("contacts", "opportunities", "locations", "workflows")
METHODS = ("get", "post", "put", "delete", "patch")


def _load() -> tuple[dict[str, dict], Registry]:
    docs = {name: json.loads((OPENAPI / "apps" / f"{name}.json").read_text()) for name in APPS}
    # Known spec defect: `dateOfBirth` is declared `type: object` although its description lists only string
    # formats ("YYYY-MM-DD", ...), its example is a string and the contact response declares it a string.
    # We send "YYYY-MM-DD"; the override is limited to this one property and the test checks the defect exists.
    for dto in ("UpsertContactDto", "UpdateContactDto"):
        prop = docs["contacts"]["components"]["schemas"][dto]["properties"]["dateOfBirth"]
        assert prop["type"] == "object" and "YYYY-MM-DD" in prop["description"], "spec changed: drop the override"
    patched = copy.deepcopy(docs)
    for dto in ("UpsertContactDto", "UpdateContactDto"):
        patched["contacts"]["components"]["schemas"][dto]["properties"]["dateOfBirth"] = {
            "type": "string", "pattern": r"^\d{4}-\d{2}-\d{2}$"}
    # Known spec defect: "Search Contacts" declares its body as an empty placeholder DTO (nothing could be sent);
    # checked against the body HighLevel documents for it, which the emulator validates too (spec.py).
    assert docs["contacts"]["components"]["schemas"]["SearchBodyV2DTO"] == EMPTY_DTO, "spec changed: drop the override"
    patched["contacts"]["components"]["schemas"]["SearchBodyV2DTO"] = copy.deepcopy(SEARCH_BODY_V2_DTO)
    resources = [(f"file://{OPENAPI}/apps/{name}.json", doc) for name, doc in patched.items()]
    resources.append((f"file://{OPENAPI}/common/common-schemas.json",
                      json.loads((OPENAPI / "common" / "common-schemas.json").read_text())))
    registry = Registry().with_resources(
        (uri, Resource.from_contents(doc, default_specification=DRAFT7)) for uri, doc in resources)
    return patched, registry


DOCS, REGISTRY = _load()


def _operations() -> list[tuple[str, re.Pattern[str], str, dict[str, Any]]]:
    ops = []
    for name, doc in DOCS.items():
        for path, item in doc["paths"].items():
            pattern = re.compile("^" + re.sub(r"\\\{[^}]+\\\}", "[^/]+", re.escape(path)) + "$")
            for method, op in item.items():
                if method in METHODS:
                    ops.append((method.upper(), pattern, name, op))
    # literal paths first (/contacts/upsert before /contacts/{contactId})
    return sorted(ops, key=lambda o: o[1].pattern.count("[^/]+"))


OPERATIONS = _operations()


def operation_for(method: str, path: str) -> tuple[str, dict[str, Any]]:
    for m, pattern, doc, op in OPERATIONS:
        if m == method and pattern.match(path):
            return doc, op
    raise AssertionError(f"{method} {path} is not an operation of the spec")


def _resolve(schema: dict[str, Any], base: str) -> tuple[dict[str, Any], str]:
    while "$ref" in schema:
        resolved = REGISTRY.resolver(base).lookup(schema["$ref"])
        schema, base = resolved.contents, resolved.resolver._base_uri
    return schema, base


def undeclared(value: Any, schema: dict[str, Any], base: str, where: str = "") -> list[str]:
    """Paths of properties we send that the schema does not declare (walking $ref, anyOf/oneOf, arrays)."""
    schema, base = _resolve(schema, base)
    branches = schema.get("anyOf") or schema.get("oneOf")
    if branches:
        for branch in branches:
            b, b_base = _resolve(branch, base)
            if Draft7Validator(b, registry=REGISTRY, _resolver=REGISTRY.resolver(b_base)).is_valid(value):
                return undeclared(value, b, b_base, where)
        return [f"{where}: matches no branch"]
    if isinstance(value, dict):
        props = schema.get("properties", {})
        out = [f"{where}.{k}" for k in value if k not in props]
        for k, v in value.items():
            if k in props:
                out += undeclared(v, props[k], base, f"{where}.{k}")
        return out
    if isinstance(value, list) and "items" in schema:
        return [p for i, v in enumerate(value) for p in undeclared(v, schema["items"], base, f"{where}[{i}]")]
    return []


def check(seen: Any) -> str:
    doc, op = operation_for(seen.method, seen.path)
    base = f"file://{OPENAPI}/apps/{doc}.json"
    params = op.get("parameters", [])
    version = next(p for p in params if p["name"] == "Version" and p["in"] == "header")
    assert seen.headers["Version"] in version["schema"]["enum"]
    declared_query = {p["name"] for p in params if p["in"] == "query"}
    assert set(seen.query) <= declared_query, (op["operationId"], set(seen.query) - declared_query)
    required = {p["name"] for p in params if p["in"] == "query" and p.get("required")}
    assert required <= set(seen.query), (op["operationId"], required - set(seen.query))
    body_schema = op.get("requestBody", {}).get("content", {}).get("application/json", {}).get("schema")
    if seen.body is not None:
        assert body_schema is not None, f"{op['operationId']} takes no JSON body"
        validator = Draft7Validator(body_schema, registry=REGISTRY, _resolver=REGISTRY.resolver(base))
        errors = [f"{list(e.absolute_path)}: {e.message}" for e in validator.iter_errors(seen.body)]
        assert not errors, (op["operationId"], errors)
        assert undeclared(seen.body, body_schema, base) == [], op["operationId"]
    else:
        assert not op.get("requestBody", {}).get("required"), f"{op['operationId']} needs a body"
    return op["operationId"]


OPP = {"id": "o1", "pipelineId": "p1", "pipelineStageId": "s1", "status": "open", "contactId": "c1"}


async def test_every_request_body_conforms_to_the_spec(ghl_loopback: LoopbackGhl) -> None:
    s = ghl_loopback
    s.script("POST", "/contacts/upsert", Reply(200, {"new": True, "contact": {"id": "c1", "phone": "+14805550100"}}))
    s.script("GET", "/contacts/c1", Reply(200, {"contact": {"id": "c1"}}))
    s.script("PUT", "/contacts/c1", Reply(200, {"succeded": True, "contact": {"id": "c1"}}))
    s.script("POST", "/contacts/c1/tags", Reply(201, {"tags": ["apro"]}))
    s.script("POST", "/contacts/c1/notes", Reply(201, {"note": {"id": "n1", "body": "b"}}))
    s.script("GET", "/contacts/c1/notes", Reply(200, {"notes": []}))
    s.script("POST", "/contacts/c1/workflow/w1", Reply(200, {"succeded": True}))
    s.script("GET", "/opportunities/search", Reply(200, {"opportunities": [OPP]}))
    s.script("POST", "/opportunities/", Reply(201, {"opportunity": OPP}))
    s.script("PUT", "/opportunities/o1", Reply(200, {"opportunity": OPP}))
    s.script("GET", "/opportunities/pipelines", Reply(200, {"pipelines": []}))
    s.script("GET", "/locations/locTEST123/customFields", Reply(200, {"customFields": []}))
    s.script("POST", "/locations/locTEST123/customFields", Reply(201, {"customField": {"id": "f", "name": "n"}}))
    s.script("GET", "/workflows/", Reply(200, {"workflows": []}))
    s.script("POST", "/contacts/search", Reply(200, {"contacts": [], "total": 0}),
             Reply(200, {"contacts": [{"id": "c1"}], "total": 1}))
    s.script("GET", "/locations/locTEST123", Reply(200, {"location": {"settings": {"allowDuplicateContact": True}}}))

    full = ContactInput(
        first_name="Pat", last_name="Doe", email="pat@example.com", phone="+14805550100", address1="1 Main St",
        city="Scottsdale", state="AZ", postal_code="85251", country="US", date_of_birth=date(1990, 9, 25),
        timezone="America/Phoenix", source="AestheticsPro",
        custom_fields=(CustomFieldValue(id="f1", value="A-1", key="apro_client_id"),
                       CustomFieldValue(id="f2", value=date(2026, 3, 4)),
                       CustomFieldValue(id="f3", value=Decimal("1234.5")), CustomFieldValue(id="f4", value=7)))
    async with make_client(s, FakeTime()) as client:
        await client.upsert_contact(full)
        await client.upsert_contact({"email": "x@example.com", "dateOfBirth": date(2000, 1, 2),
                                     "customFields": [{"id": "f1", "field_value": "v"}]})
        await client.upsert_contact({"email": "x@example.com"}, create_new_if_duplicate_allowed=True)
        assert (await client.find_duplicate("x@example.com", "+14805550100")) == {"id": "c1"}  # by phone
        assert await client.allows_duplicate_contacts()
        await client.get_contact("c1")
        await client.update_contact("c1", full)
        await client.add_tags("c1", ["apro", "patient"])
        await client.create_note("c1", "Appointment Booked: Botox on 2026-03-04 at Scottsdale")
        await client.list_notes("c1")
        await client.add_contact_to_workflow("c1", "w1")
        await client.add_contact_to_workflow("c1", "w1", datetime(2026, 3, 4, 9, 30, tzinfo=timezone.utc))
        await client.search_opportunities("c1", "p1")
        await client.create_opportunity(pipeline_id="p1", stage_id="s1", contact_id="c1", name="Pat Doe",
                                        status="open", monetary_value=Decimal("99.90"))
        await client.update_opportunity("o1", stage_id="s2", status="won", monetary_value=Decimal("1500"),
                                        name="Pat Doe", pipeline_id="p1")
        await client.list_pipelines()
        await client.list_custom_fields()
        for spec in crm_fields.ALL_FIELDS:
            await client.create_custom_field(spec.name, spec.data_type.value)
        await client.list_workflows()

    operations = {check(seen) for seen in s.seen}
    assert operations == {
        "upsert-contact", "get-contact", "update-contact", "add-tags", "create-note", "get-all-notes",
        "add-contact-to-workflow", "search-opportunity", "create-opportunity", "update-opportunity", "get-pipelines",
        "get-custom-fields", "create-custom-field", "get-workflow", "search-contacts-advanced", "get-location",
    }
    searches = [c.body["filters"] for c in s.calls("POST", "/contacts/search")]
    assert searches == [[{"field": "email", "operator": "eq", "value": "x@example.com"}],
                        [{"field": "phone", "operator": "eq", "value": "+14805550100"}]]
    for seen in s.seen:  # PHI only in bodies: no email or phone in any URL
        assert not {"x@example.com", "pat@example.com", "+14805550100"} & set(seen.query.values()), seen.path
    money = s.calls("POST", "/opportunities/")[0].body["monetaryValue"]
    assert money == 99.9 and isinstance(money, float)


def test_checker_rejects_undeclared_and_invalid_bodies() -> None:
    from tests.sinks.ghl.scripted_ghl import Seen

    ok = Seen("POST", "/contacts/c1/notes", {}, {"Version": "2021-07-28"}, {"body": "x"})
    assert check(ok) == "create-note"
    with pytest.raises(AssertionError):
        check(Seen("POST", "/contacts/c1/notes", {}, {"Version": "2021-07-28"}, {"body": "x", "text": "y"}))
    with pytest.raises(AssertionError):
        check(Seen("POST", "/contacts/c1/notes", {}, {"Version": "2021-07-28"}, {"title": "no body"}))
    with pytest.raises(AssertionError):
        check(Seen("POST", "/contacts/upsert", {}, {"Version": "2021-07-28"},
                   {"locationId": "l", "customFields": [{"id": "f", "value": "wrong key"}]}))
    with pytest.raises(AssertionError):
        check(Seen("GET", "/opportunities/search", {"contactId": "c"}, {"Version": "2021-07-28"}, None))
    search = {"locationId": "l", "pageLimit": 1, "filters": [{"field": "phone", "operator": "eq", "value": "+1"}]}
    assert check(Seen("POST", "/contacts/search", {}, {"Version": "2021-07-28"}, search)) == "search-contacts-advanced"
    with pytest.raises(AssertionError):  # a filter needs an operator
        check(Seen("POST", "/contacts/search", {}, {"Version": "2021-07-28"},
                   {**search, "filters": [{"field": "phone", "value": "+1"}]}))
    with pytest.raises(AssertionError):  # pageLimit is required
        check(Seen("POST", "/contacts/search", {}, {"Version": "2021-07-28"}, {"locationId": "l"}))
