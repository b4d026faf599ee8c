"""`apro-sync provision` and resolve_ids against the GoHighLevel emulator (real HTTP, spec-validated)."""

from __future__ import annotations

import io

import pytest
from pydantic import SecretStr

from emulator import EmulatorConfig, LocationConfig
from emulator.config import CustomFieldConfig, PipelineConfig, StageConfig, WorkflowConfig
from foundations.config import Settings
from foundations.formats import crm_fields
from sinks.ghl.client import GhlClient
from sinks.locations import GhlTarget, Ref
from sinks.provision import FOLDER_NOTE, ProvisioningIncomplete, ResolvedIdsCache, provision, resolve_ids, run
from tests.ghl_emulator_fixture import LOCATION_1, LOCATION_2, TOKEN_1, TOKEN_2, ghl_emulator  # noqa: F401

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def ghl_emulator_config() -> EmulatorConfig:
    # Location 2 lacks the birthday workflow, has a draft invoice workflow and a stage under another spelling.
    return EmulatorConfig(seed=7, locations=[
        LocationConfig(id=LOCATION_1, name="One", token=TOKEN_1),
        LocationConfig(
            id=LOCATION_2, name="Two", token=TOKEN_2,
            workflows=[WorkflowConfig(name=crm_fields.WORKFLOW_APPOINTMENTS_UPDATE),
                       WorkflowConfig(name=crm_fields.WORKFLOW_INVOICE_PAID, status="draft")],
            pipelines=[PipelineConfig(stages=[StageConfig(name="New Lead"), StageConfig(name="Booked"),
                                              StageConfig(name="Cancel / No-Show")])],
            custom_fields=[CustomFieldConfig(name="APro Client ID", data_type="TEXT")],
        ),
    ])


def target(location: str, token: str) -> GhlTarget:
    return GhlTarget(ghl_location_id=location, token=SecretStr(token), label=location)


async def test_provision_twice_creates_fields_once(ghl_emulator) -> None:  # noqa: F811
    t = target(LOCATION_1, TOKEN_1)
    async with GhlClient(ghl_emulator.base_url, t.token, LOCATION_1) as client:
        first = await provision(client, t)
        second = await provision(client, t)
        ids = await resolve_ids(client, t)
    assert sorted(first.created) == sorted(f.name for f in crm_fields.ALL_FIELDS)
    assert first.ok and FOLDER_NOTE in first.notes
    assert second.created == [] and second.ok
    assert {r.status for r in second.rows} == {"present", "ok"}
    assert ids.require() is ids and set(ids.custom_fields) == set(crm_fields.BY_KEY)
    assert set(ids.stage_ids) == {"new_lead", "booked", "cancel_no_show", "patient"}
    assert set(ids.workflow_ids) == {"appointments_update", "invoice_paid", "birthday"}
    stored = [f for f in ghl_emulator.state()["customFields"] if f["locationId"] == LOCATION_1]
    assert len(stored) == len(crm_fields.ALL_FIELDS)  # no duplicates from the second run
    by_name = {f.name: f for f in await _fields(ghl_emulator.base_url)}
    assert by_name["APro DOB"].data_type == "DATE"
    assert by_name["Patient Lifetime Value"].data_type == "MONETORY"


async def _fields(base_url: str):
    async with GhlClient(base_url, SecretStr(TOKEN_1), LOCATION_1) as client:
        return await client.list_custom_fields()


async def test_missing_workflow_and_stage_are_reported(ghl_emulator) -> None:  # noqa: F811
    t = target(LOCATION_2, TOKEN_2)
    async with GhlClient(ghl_emulator.base_url, t.token, LOCATION_2) as client:
        dry = await provision(client, t, dry_run=True)
        assert "APro Client ID" not in [r.name for r in dry.rows if r.status == "would create"]
        assert len([r for r in dry.rows if r.status == "would create"]) == len(crm_fields.ALL_FIELDS) - 1
        report = await provision(client, t)
        ids = await resolve_ids(client, t)
    missing = {(r.kind, r.name) for r in report.rows if r.status == "missing"}
    assert missing == {("workflow", repr(crm_fields.WORKFLOW_BIRTHDAY)), ("stage", repr(crm_fields.STAGE_PATIENT))}
    assert not report.ok and "APro Client ID" not in report.created
    draft = next(r for r in report.rows if r.name == repr(crm_fields.WORKFLOW_INVOICE_PAID))
    assert draft.status == "warning" and "not published" in draft.detail
    assert ids.stage_ids["cancel_no_show"]  # "Cancel / No-Show" matches "Cancel/No-Show"
    with pytest.raises(ProvisioningIncomplete, match="APro Birthday"):
        ids.require()
    text = report.render()
    assert "missing" in text and "RESULT: 2 item(s) need attention" in text and TOKEN_2 not in text


async def test_resolve_by_id_and_cache(ghl_emulator) -> None:  # noqa: F811
    t = target(LOCATION_1, TOKEN_1)
    async with GhlClient(ghl_emulator.base_url, t.token, LOCATION_1) as client:
        pipelines = await client.list_pipelines()
        workflows = await client.list_workflows()
        by_id = GhlTarget(ghl_location_id=LOCATION_1, token=t.token, label="x", pipeline=Ref(id=pipelines[0].id),
                          workflows=t.workflows.model_copy(update={"birthday": Ref(id=workflows[-1].id)}))
        cache = ResolvedIdsCache()
        ids = await cache.get(client, by_id)
        assert await cache.get(client, by_id) is ids
        cache.invalidate(LOCATION_1)
        assert await cache.get(client, by_id) is not ids
    assert ids.pipeline_id == pipelines[0].id and ids.workflow_ids["birthday"] == workflows[-1].id
    assert "custom field" in ids.missing[0]  # nothing provisioned in this test


def test_run_cli_entry_exit_codes(ghl_emulator, tmp_path, monkeypatch, capsys) -> None:  # noqa: F811
    monkeypatch.setenv("T_ONE", TOKEN_1)
    monkeypatch.setenv("T_TWO", TOKEN_2)
    path = tmp_path / "locations.yaml"
    path.write_text(f"default: {{ghl_location_id: {LOCATION_1}, token_env: T_ONE}}\n"
                    f"locations:\n  - {{apro: '2', ghl_location_id: {LOCATION_2}, token_env: T_TWO}}\n")
    settings = Settings(_env_file=None, ghl_base_url=ghl_emulator.base_url, locations_file=path)
    out = io.StringIO()
    assert run(settings, dry_run=True, out=out) == 1  # dry run: fields missing everywhere
    out = io.StringIO()
    assert run(settings, out=out) == 1  # location two still lacks a workflow and a stage
    text = out.getvalue()
    assert LOCATION_1 in text and LOCATION_2 in text and TOKEN_1 not in text and TOKEN_2 not in text
    single = Settings(_env_file=None, ghl_base_url=ghl_emulator.base_url, ghl_location_id=LOCATION_1,
                      ghl_token=TOKEN_1)
    assert run(single, out=io.StringIO()) == 0
    assert run(Settings(_env_file=None), out=io.StringIO()) == 2
    assert "APRO_GHL_LOCATION_ID" in capsys.readouterr().err
