"""OAuth (Marketplace-app) locations in the locations file and in single sub-account mode; Private Integration
tokens unchanged beside them; errors name the entry and the variable, never a secret."""

from __future__ import annotations

import pytest

from foundations.config import Settings
from sinks.locations import LocationsError, load_locations, parse_locations


def settings(**kw: object) -> Settings:
    return Settings(_env_file=None, **kw)  # type: ignore[arg-type]


APP = {"ghl_oauth_client_id": "app-client-id", "ghl_oauth_client_secret": "app-client-secret-xyz"}


def test_oauth_entry_beside_a_private_integration_token() -> None:
    data = {"locations": [
        {"apro": "1", "ghl_location_id": "PIT1", "token_env": "PIT_ONE"},
        {"apro": "2", "ghl_location_id": "OAUTH2", "oauth": {"refresh_token_env": "INSTALL_TWO"}},
        {"apro": "3", "ghl_location_id": "OAUTH3", "oauth": {"client_id_env": "OTHER_ID",
                                                             "client_secret_env": "OTHER_SECRET"}},
    ]}
    env = {"PIT_ONE": "pit-one-secret", "INSTALL_TWO": "install-refresh-2", "OTHER_ID": "other-app",
           "OTHER_SECRET": "other-secret-abc"}
    locs = parse_locations(data, settings(**APP), env)
    pit, two, three = (locs.resolve(location_id=i) for i in "123")
    assert pit.token is not None and pit.token.get_secret_value() == "pit-one-secret" and pit.oauth is None
    assert two.token is None and two.oauth is not None
    assert (
        two.oauth.client_id == "app-client-id" and two.oauth.client_secret.get_secret_value() == "app-client-secret-xyz"
    )
    assert two.oauth.bootstrap is not None and two.oauth.bootstrap.get_secret_value() == "install-refresh-2"
    assert three.oauth is not None and three.oauth.client_id == "other-app" and three.oauth.bootstrap is None
    for target in (two, three):
        assert "secret" not in repr(target) and "secret" not in repr(target.oauth)


def test_oauth_errors_name_the_entry_and_variable_only() -> None:
    data = {"locations": [{"apro": "2", "ghl_location_id": "OAUTH2", "oauth": {"refresh_token_env": "INSTALL"}}]}
    with pytest.raises(LocationsError, match=r"locations\[0\]\.oauth: APRO_GHL_OAUTH_CLIENT_ID is not set"):
        parse_locations(data, settings(), {"INSTALL": "x"})
    data = {"locations": [{"apro": "2", "ghl_location_id": "O", "oauth": {"client_secret_env": "MISSING_SECRET"}}]}
    with pytest.raises(LocationsError, match="MISSING_SECRET is not set"):
        parse_locations(data, settings(**APP), {})
    both = {"locations": [{"apro": "2", "ghl_location_id": "O", "token_env": "T", "oauth": {}}]}
    with pytest.raises(LocationsError, match="either `token_env`"):
        parse_locations(both, settings(**APP), {"T": "pit"})


def test_single_sub_account_mode_uses_oauth_when_the_app_is_set_and_no_token() -> None:
    oauth = load_locations(settings(ghl_location_id="LOC1", ghl_oauth_refresh_token="install-1", **APP), env={})
    target = oauth.resolve(location_id="anything")
    assert target.token is None and target.oauth is not None
    assert target.oauth.bootstrap is not None and target.oauth.bootstrap.get_secret_value() == "install-1"
    pit = load_locations(settings(ghl_location_id="LOC1", ghl_token="pit-single", **APP), env={})
    assert pit.resolve(location_id="x").oauth is None  # a Private Integration Token wins: unchanged behaviour


def test_company_install_needs_its_company_id() -> None:
    data = {"locations": [{"apro": "2", "ghl_location_id": "L2", "oauth": {"user_type": "Company"}}]}
    with pytest.raises(LocationsError, match="needs `company_id`"):
        parse_locations(data, settings(**APP), {})
    data["locations"][0]["oauth"]["company_id"] = "AGENCY1"  # type: ignore[index]
    target = parse_locations(data, settings(**APP), {}).resolve(location_id="2")
    assert target.oauth is not None and (target.oauth.user_type, target.oauth.company_id) == ("Company", "AGENCY1")
    single = load_locations(settings(ghl_location_id="L1", ghl_oauth_company_id="AGENCY1", **APP), env={})
    assert single.resolve(location_id="x").oauth.user_type == "Company"  # type: ignore[union-attr]
