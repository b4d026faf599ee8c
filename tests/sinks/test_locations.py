"""Locations file → GhlTarget resolution, defaults, and errors that name the entry but never a token."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import SecretStr

from foundations.config import Settings
from foundations.formats import crm_fields
from foundations.formats.normalized import Location
from sinks.locations import LocationsError, Ref, UnknownLocation, load_locations, parse_locations

REPO = Path(__file__).resolve().parents[2]
ENV = {"GHL_TOKEN_MAIN": "pit-main-secret-1", "GHL_TOKEN_SCOTTSDALE": "pit-scottsdale-secret-2",
       "GHL_TOKEN_MESA": "pit-mesa-secret-3"}


def settings(**kw: object) -> Settings:
    return Settings(_env_file=None, **kw)  # type: ignore[arg-type]


def test_no_file_means_one_sub_account_for_every_location() -> None:
    locs = load_locations(settings(ghl_location_id="LOC1", ghl_token="pit-single"), env={})
    a = locs.resolve(Location(id="3", name="Scottsdale"))
    b = locs.resolve(location_name="Anywhere")
    assert a is b and a.ghl_location_id == "LOC1" and a.token.get_secret_value() == "pit-single"
    assert a.pipeline == Ref(name=crm_fields.PIPELINE_NAME)
    assert a.stages.cancel_no_show.name == crm_fields.STAGE_CANCEL_NO_SHOW
    assert a.workflows.birthday.name == crm_fields.WORKFLOW_BIRTHDAY
    assert [t.ghl_location_id for t in locs.targets()] == ["LOC1"]


def test_no_file_and_no_location_id_is_a_clear_error() -> None:
    with pytest.raises(LocationsError, match="APRO_GHL_LOCATION_ID"):
        load_locations(settings(), env={})


def test_example_file_resolves_by_id_name_and_default() -> None:
    s = settings(locations_file=REPO / "docs" / "locations.example.yaml")
    locs = load_locations(s, env=ENV)
    by_id = locs.resolve(Location(id="3"))
    by_name = locs.resolve(Location(id="99", name="  scottsdale "))
    assert by_id is by_name and by_id.ghl_location_id == "i2SpAtBVHSVea1sL6oah"
    assert by_id.token.get_secret_value() == "pit-scottsdale-secret-2" and by_id.label == "Scottsdale"
    assert by_id.workflows.birthday == Ref(id="78559bb3-b920-461e-b010-7b2a2816d2a9")
    assert locs.resolve(location_name="MESA").token.get_secret_value() == "pit-mesa-secret-3"
    assert locs.resolve(Location(id="7", name="Tempe")).ghl_location_id == "ve9EPM428h8vShlRW1KT"
    assert locs.resolve(None).label == "Main sub-account"
    assert len(locs.targets()) == 3
    assert "secret" not in repr(by_id)


def test_json_file_and_fallback_to_settings_token(tmp_path: Path) -> None:
    path = tmp_path / "locations.json"
    path.write_text('{"locations": [{"apro": 5, "ghl_location_id": "G5"}]}')
    locs = load_locations(settings(locations_file=path, ghl_token="pit-fallback"), env={})
    assert locs.resolve(location_id="5").token.get_secret_value() == "pit-fallback"
    with pytest.raises(UnknownLocation, match="no `default`"):
        locs.resolve(location_id="6")


@pytest.mark.parametrize(("data", "expected"), [
    ({"locations": [{"apro": "1", "ghl_location_id": "G", "token": "pit-inline-secret"}]},
     "locations[0]: Value error, tokens do not belong"),
    ({"locations": [{"apro": "1", "ghl_location_id": "G", "token_env": "MISSING_VAR"}]},
     "locations[0].token_env: environment variable MISSING_VAR is not set"),
    ({"locations": [{"apro": "1", "ghl_location_id": "G", "token_env": "GHL_TOKEN_MESA"},
                    {"apro": ["x", "1"], "ghl_location_id": "H", "token_env": "GHL_TOKEN_MESA"}]},
     "locations[1].apro: '1' is already mapped by locations[0]"),
    ({"default": {"ghl_location_id": "G", "token_env": "GHL_TOKEN_MESA", "pipeline": {"id": "p", "name": "n"}}},
     "default.pipeline: Value error, give exactly one of `id` or `name`"),
    ({"locations": [{"ghl_location_id": "G", "token_env": "GHL_TOKEN_MESA"}]}, "locations[0].apro: Field required"),
    ({"default": {"ghl_location_id": "G", "token_env": "GHL_TOKEN_MESA", "stages": {"bookd": "Booked"}}},
     "default.stages.bookd: Extra inputs are not permitted"),
    ({}, "neither `locations` nor a `default`"),
])
def test_bad_entries_are_named_and_no_token_leaks(data: dict, expected: str) -> None:
    with pytest.raises(LocationsError) as caught:
        parse_locations(data, settings(), env=ENV)
    assert expected in str(caught.value)
    for secret in list(ENV.values()) + ["pit-inline-secret"]:
        assert secret not in str(caught.value)


def test_unreadable_yaml_names_the_line_not_the_content(tmp_path: Path) -> None:
    path = tmp_path / "l.yaml"
    path.write_text("default:\n  ghl_location_id: [unclosed\n  token_env: X\n")
    with pytest.raises(LocationsError, match=r"not valid yaml \(line \d+\)"):
        load_locations(settings(locations_file=path), env={})


def test_settings_token_is_secret() -> None:
    locs = load_locations(settings(ghl_location_id="L", ghl_token=SecretStr("pit-zzz")), env={})
    assert "pit-zzz" not in repr(locs.resolve(None))
