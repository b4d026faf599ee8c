"""GhlClient against the GoHighLevel emulator: a full write cycle, injected faults, API defects, rate limits."""

from __future__ import annotations

from datetime import date
from decimal import Decimal

import pytest
from pydantic import SecretStr

from emulator import EmulatorConfig, LocationConfig
from emulator.config import RateLimitConfig
from foundations.formats import crm_fields
from sinks.ghl.client import GhlClient
from sinks.ghl.errors import GhlPermanentError
from sinks.ghl.models import ContactInput, CustomFieldValue
from sinks.ghl.retry import RetryPolicy
from sinks.locations import GhlTarget
from sinks.provision import provision
from tests.ghl_emulator_fixture import LOCATION_1, TOKEN_1, GhlEmulatorHandle, ghl_emulator  # noqa: F401

pytestmark = pytest.mark.timeout(60)
FAST = RetryPolicy(max_attempts=4, base_s=0.01, cap_s=0.05)


def client_for(emu) -> GhlClient:
    return GhlClient(emu.base_url, SecretStr(TOKEN_1), LOCATION_1, retry_policy=FAST, timeout=2.0)


async def test_contact_note_opportunity_workflow_cycle(ghl_emulator) -> None:  # noqa: F811
    target = GhlTarget(ghl_location_id=LOCATION_1, token=SecretStr(TOKEN_1), label="one")
    async with client_for(ghl_emulator) as client:
        ids = (await provision(client, target)).ids.require()
        upsert = await client.upsert_contact(ContactInput(
            first_name="Pat", last_name="Doe", email="pat@example.com", phone="+14805550100", city="Mesa",
            postal_code="85201", date_of_birth=date(1990, 9, 25),
            custom_fields=(CustomFieldValue(id=ids.field_id("apro_client_id"), value="A-77"),
                           CustomFieldValue(id=ids.field_id("patient_lifetime_value"), value=Decimal("150")))))
        again = await client.upsert_contact({"email": "pat@example.com", "phone": "+14805550100"})
        assert upsert.new and not again.new and again.contact_id == upsert.contact_id
        cid = upsert.contact_id
        await client.add_tags(cid, ["apro"])
        await client.create_note(cid, "Appointment Booked")
        assert len(await client.list_notes(cid)) == 1
        opp = await client.create_opportunity(pipeline_id=ids.pipeline_id, stage_id=ids.stage_ids["booked"],
                                              contact_id=cid, name="Pat Doe")
        won = await client.update_opportunity(opp.id, stage_id=ids.stage_ids["patient"], status="won",
                                              monetary_value=Decimal("150.00"))
        assert won.status == "won" and won.monetary_value == Decimal("150")
        assert [o.id for o in await client.search_opportunities(cid, ids.pipeline_id)] == [opp.id]
        assert await client.add_contact_to_workflow(cid, ids.workflow_ids["invoice_paid"])
        stored = await client.get_contact_model(cid)
    assert stored.tags == ("apro",)
    (contact,) = ghl_emulator.state()["contacts"]
    assert contact["customFieldsByKey"]["contact.apro_client_id"] == "A-77"
    assert [e["workflowName"] for e in contact["enrollments"]] == [crm_fields.WORKFLOW_INVOICE_PAID]


async def test_created_then_422_is_recovered_without_duplicate(ghl_emulator) -> None:  # noqa: F811
    async with client_for(ghl_emulator) as client:
        pipeline = (await client.list_pipelines())[0]
        cid = (await client.upsert_contact({"email": "x@example.com"})).contact_id
        ghl_emulator.set_faults([{"kind": "created_then_422", "count": 1, "method": "POST", "path": "/opportunities/"}])
        opp = await client.create_opportunity(pipeline_id=pipeline.id, stage_id=pipeline.stages[0].id,
                                              contact_id=cid, name="X")
    assert opp.recovered
    assert len(ghl_emulator.state()["opportunities"]) == 1


async def test_transient_faults_are_retried(ghl_emulator) -> None:  # noqa: F811
    ghl_emulator.set_faults([{"kind": "status", "status": 503, "count": 2, "method": "POST",
                              "path": "/contacts/upsert"}])
    async with client_for(ghl_emulator) as client:
        result = await client.upsert_contact({"email": "y@example.com"})
    assert result.new
    assert len(ghl_emulator.state()["contacts"]) == 1


async def test_permanent_error_from_emulator_is_not_retried(ghl_emulator) -> None:  # noqa: F811
    async with client_for(ghl_emulator) as client:
        with pytest.raises(GhlPermanentError) as caught:
            await client.create_note("no-such-contact", "x")
    assert caught.value.status in (400, 404, 422)
    assert [r["path"] for r in ghl_emulator.requests()].count("/contacts/{contactId}/notes") == 1


async def test_split_match_phone_drop_is_flagged() -> None:
    config = EmulatorConfig(seed=3, locations=[LocationConfig(id=LOCATION_1, token=TOKEN_1)],
                            upsert_drops_phone_on_split_match=True)
    with GhlEmulatorHandle(config) as emu:
        async with client_for(emu) as client:
            await client.upsert_contact({"email": "a@example.com", "phone": "+14805550101"})
            await client.upsert_contact({"email": "b@example.com", "phone": "+14805550102"})
            same = await client.upsert_contact({"email": "a@example.com", "phone": "(480) 555-0101"})
            result = await client.upsert_contact({"email": "a@example.com", "phone": "+14805550102"})
    assert not same.phone_dropped
    assert result.phone_dropped


async def test_limiter_follows_emulator_headers_and_avoids_429() -> None:
    config = EmulatorConfig(seed=5, locations=[LocationConfig(id=LOCATION_1, token=TOKEN_1)],
                            rate_limit=RateLimitConfig(burst_max=4, interval_ms=200))
    with GhlEmulatorHandle(config) as emu:
        async with client_for(emu) as client:
            for _ in range(10):
                await client.list_workflows()
            assert client.limiter.burst == 4
        assert not emu.state()["rateLimited"]
