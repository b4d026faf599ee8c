"""The emulator seeds a fresh location with what the sync expects to find there, from its own configuration."""

from emulator.config import (
    DEFAULT_FOLDERS,
    DEFAULT_PIPELINE,
    DEFAULT_STAGES,
    DEFAULT_WORKFLOWS,
    EmulatorConfig,
    LocationConfig,
)
from emulator.state import Store
from foundations.formats import crm_fields


def test_defaults_name_what_the_sync_looks_up():
    assert DEFAULT_PIPELINE == crm_fields.PIPELINE_NAME
    assert set(DEFAULT_STAGES) == {crm_fields.STAGE_NEW_LEAD, crm_fields.STAGE_BOOKED,
                                   crm_fields.STAGE_CANCEL_NO_SHOW, crm_fields.STAGE_PATIENT}
    assert set(DEFAULT_WORKFLOWS) == {crm_fields.WORKFLOW_APPOINTMENTS_UPDATE, crm_fields.WORKFLOW_INVOICE_PAID,
                                      crm_fields.WORKFLOW_BIRTHDAY}
    assert crm_fields.APRO_FOLDER_NAME in DEFAULT_FOLDERS


def test_a_location_without_seed_settings_gets_the_defaults():
    location = LocationConfig(id="loc-seed", token="pit-seed")
    assert [p.name for p in location.pipelines] == [DEFAULT_PIPELINE]
    assert [s.name for s in location.pipelines[0].stages] == list(DEFAULT_STAGES)
    assert [w.name for w in location.workflows] == list(DEFAULT_WORKFLOWS)
    assert location.folders == list(DEFAULT_FOLDERS)
    Store(EmulatorConfig(locations=[location]))  # the store accepts the seed as it stands
