"""Conformance: the official GoHighLevel SDK talks to the emulator, and every answer matches the OpenAPI schemas."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from emulator.spec import V3, load_spec

highlevel = pytest.importorskip("highlevel")
from highlevel.services.contacts.models.contacts import (  # noqa: E402
    ContactsByIdSuccessfulResponseDtoV3,
    ContactsWorkflowSuccessfulResponseDto,
    CreateWorkflowDto,
    GetCreateUpdateNoteSuccessfulResponseDto,
    GetNotesListSuccessfulResponseDto,
    NotesDTO,
    UpsertContactDtoV3,
    UpsertContactsSuccessfulResponseDtoV3,
)
from highlevel.services.locations.models.locations import CustomFieldsListSuccessfulResponseDto  # noqa: E402
from highlevel.services.opportunities.models.opportunities import (  # noqa: E402
    GetPipelinesSuccessfulResponseDto,
    GetPostOpportunitySuccessfulResponseDto,
    SearchSuccessfulResponseDto,
)
from highlevel.services.workflows.models.workflows import GetWorkflowSuccessfulResponseDto  # noqa: E402


def _sdk(emu) -> Any:
    ghl = highlevel.HighLevel(private_integration_token=emu.token)
    ghl.http_client.base_url = emu.base_url  # the SDK's services share this client
    return ghl


def _g(obj: Any, key: str) -> Any:
    """SDK models type some nested objects as Any (left as dicts): read either form."""
    return obj[key] if isinstance(obj, dict) else getattr(obj, key)


def _body(model: Any) -> dict[str, Any]:
    return model.model_dump(exclude_none=True)


async def test_official_sdk_round_trip(ghl_emulator) -> None:
    ghl = _sdk(ghl_emulator)
    loc = ghl_emulator.location_id
    try:
        fields = CustomFieldsListSuccessfulResponseDto.model_validate(
            await ghl.locations.get_custom_fields(loc, model="contact")
        )
        assert fields.customFields == []
        raw = await ghl.opportunities.get_pipelines(loc)
        # The SDK model copies the spec's generator placeholder `stages: array of array`; GHL (and the emulator)
        # answer stage objects {id, name, position}, so the stages are checked separately.
        stages = {s["name"]: s["id"] for s in raw["pipelines"][0]["stages"]}
        assert list(stages) == ["New Lead", "Booked", "Cancel/No-Show", "Patient"]
        pipelines = GetPipelinesSuccessfulResponseDto.model_validate(
            {"pipelines": [{**p, "stages": []} for p in raw["pipelines"]]}
        )
        pipeline = pipelines.pipelines[0]
        assert _g(pipeline, "name") == "Lead to Patient"
        workflows = GetWorkflowSuccessfulResponseDto.model_validate(await ghl.workflows.get_workflow(loc))
        birthday = next(w for w in workflows.workflows if _g(w, "name") == "APro Birthday")

        upsert = UpsertContactDtoV3(locationId=loc, firstName="Test", lastName="Patient", email="sdk@example.test",
                                    phone="+15550100001", tags=["apro"])
        res = UpsertContactsSuccessfulResponseDtoV3.model_validate(await ghl.contacts.upsert_contact(_body(upsert)))
        assert res.new is True
        contact_id = res.contact["id"]
        again = UpsertContactsSuccessfulResponseDtoV3.model_validate(await ghl.contacts.upsert_contact(_body(upsert)))
        assert again.new is False and again.contact["id"] == contact_id

        got = ContactsByIdSuccessfulResponseDtoV3.model_validate(await ghl.contacts.get_contact(contact_id))
        assert got.contact["email"] == "sdk@example.test" and got.contact["tags"] == ["apro"]

        note = GetCreateUpdateNoteSuccessfulResponseDto.model_validate(
            await ghl.contacts.create_note(contact_id, _body(NotesDTO(body="Synthetic note")))
        )
        assert _g(note.note, "body") == "Synthetic note"
        notes = GetNotesListSuccessfulResponseDto.model_validate(await ghl.contacts.get_all_notes(contact_id))
        assert [_g(n, "body") for n in notes.notes] == ["Synthetic note"]

        created = GetPostOpportunitySuccessfulResponseDto.model_validate(await ghl.opportunities.create_opportunity({
            "pipelineId": _g(pipeline, "id"), "locationId": loc, "name": "Test Patient", "status": "open",
            "contactId": contact_id, "pipelineStageId": stages["Booked"],
        }))
        opp_id = _g(created.opportunity, "id")
        found = SearchSuccessfulResponseDto.model_validate(
            await ghl.opportunities.search_opportunity(loc, contact_id=contact_id, pipeline_id=_g(pipeline, "id"))
        )
        assert [_g(o, "id") for o in found.opportunities] == [opp_id]
        updated = GetPostOpportunitySuccessfulResponseDto.model_validate(
            await ghl.opportunities.update_opportunity(
                opp_id, {"pipelineStageId": stages["Patient"], "monetaryValue": 350}
            )
        )
        assert _g(updated.opportunity, "pipelineStageId") == stages["Patient"]
        assert _g(updated.opportunity, "monetaryValue") == 350

        enrolled = ContactsWorkflowSuccessfulResponseDto.model_validate(
            await ghl.contacts.add_contact_to_workflow(contact_id, _g(birthday, "id"), _body(CreateWorkflowDto()))
        )
        assert _g(enrolled, "succeded") is True
    finally:
        await ghl.http_client.aclose()
    state = ghl_emulator.state()
    assert [(e["contactId"], e["workflowName"]) for e in state["enrollments"]] == [(contact_id, "APro Birthday")]
    assert {r["path"] for r in ghl_emulator.requests()} >= {
        "/contacts/upsert",
        "/opportunities/",
        "/opportunities/{id}",
    }


def _check(emu, method: str, template: str, path: str, *, version: str = "2021-07-28", **kw: Any) -> dict[str, Any]:
    """Send one request and validate the answer against the operation's response schema for that status."""
    headers = {"Authorization": f"Bearer {emu.token}", "Version": version}
    r = httpx.request(method, emu.base_url + path, headers=headers, timeout=10, **kw)
    op = load_spec(version=version).get(method, template)
    assert op is not None
    assert str(r.status_code) in op.responses, (method, template, r.status_code, r.text)
    assert op.response_errors(r.status_code, r.json()) == [], (method, template, r.text)
    return r.json()


@pytest.mark.parametrize("version", ["2021-07-28", V3])
def test_responses_match_openapi_schemas(ghl_emulator, version: str) -> None:
    emu, loc = ghl_emulator, ghl_emulator.location_id
    c = lambda *a, **k: _check(emu, *a, version=version, **k)  # noqa: E731
    field = c("POST", "/locations/{locationId}/customFields", f"/locations/{loc}/customFields",
              json={"name": "APro Client ID", "dataType": "TEXT", "model": "contact"})["customField"]
    assert field["fieldKey"] == "contact.apro_client_id"
    c("GET", "/locations/{locationId}/customFields", f"/locations/{loc}/customFields", params={"model": "contact"})
    c("GET", "/locations/{locationId}/customFields/{id}", f"/locations/{loc}/customFields/{field['id']}")
    contact = c("POST", "/contacts/upsert", "/contacts/upsert", json={
        "locationId": loc, "email": "schema@example.test", "phone": "+15550100002", "dateOfBirth": "1990-09-25",
        "customFields": [{"id": field["id"], ("fieldValue" if version == V3 else "field_value"): "C-1"}],
    })["contact"]
    assert contact["customFields"] == [{"id": field["id"], "value": "C-1"}]
    cid = contact["id"]
    found = c("POST", "/contacts/search", "/contacts/search", json={  # the spec declares no 200 schema
        "locationId": loc, "pageLimit": 1, "filters": [{"field": "phone", "operator": "eq", "value": "+15550100002"}]})
    assert ([h["id"] for h in found["contacts"]], found["total"]) == ([cid], 1)
    c("GET", "/contacts/{contactId}", f"/contacts/{cid}")
    c("PUT", "/contacts/{contactId}", f"/contacts/{cid}", json={"firstName": "Schema"})
    c("POST", "/contacts/{contactId}/tags", f"/contacts/{cid}/tags", json={"tags": ["one", "two"]})
    c("DELETE", "/contacts/{contactId}/tags", f"/contacts/{cid}/tags", json={"tags": ["one"]})
    c("POST", "/contacts/{contactId}/notes", f"/contacts/{cid}/notes", json={"body": "n"})
    c("GET", "/contacts/{contactId}/notes", f"/contacts/{cid}/notes")
    pipeline = c("GET", "/opportunities/pipelines", "/opportunities/pipelines", params={"locationId": loc})[
        "pipelines"
    ][0]
    opp = c(
        "POST",
        "/opportunities/",
        "/opportunities/",
        json={"pipelineId": pipeline["id"], "locationId": loc, "name": "x", "status": "open", "contactId": cid},
    )["opportunity"]
    dup = c("POST", "/opportunities/", "/opportunities/", json={
        "pipelineId": pipeline["id"], "locationId": loc, "name": "x", "status": "open", "contactId": cid})
    assert dup["statusCode"] == 400 and "duplicate" in dup["message"]
    params = {"locationId": loc, "contactId": cid} if version == V3 else {"location_id": loc, "contact_id": cid}
    assert c("GET", "/opportunities/search", "/opportunities/search", params=params)["meta"]["total"] == 1
    c("PUT", "/opportunities/{id}", f"/opportunities/{opp['id']}", json={"status": "won", "monetaryValue": 12.5})
    c("PUT", "/opportunities/{id}/status", f"/opportunities/{opp['id']}/status", json={"status": "open"})
    c("GET", "/opportunities/{id}", f"/opportunities/{opp['id']}")
    wf = c("GET", "/workflows/", "/workflows/", params={"locationId": loc})["workflows"][0]
    c("POST", "/contacts/{contactId}/workflow/{workflowId}", f"/contacts/{cid}/workflow/{wf['id']}", json={})
    c("POST", "/contacts/upsert", "/contacts/upsert", json={"locationId": loc, "bogus": 1})  # 422 shape
    r = httpx.get(emu.base_url + "/workflows/", params={"locationId": loc}, headers={"Version": version})
    assert r.status_code == 401
    assert load_spec(version=version).get("GET", "/workflows/").response_errors(401, r.json()) == []
