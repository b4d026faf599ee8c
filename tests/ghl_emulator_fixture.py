"""Pytest plugin: a GoHighLevel emulator per test (thread-run, own loop, so sync and async tests can use it).

    def test_x(ghl_emulator):  # also .base_url .token .location_id .state() .snapshot()
        ghl_emulator.set_faults([{"kind": "status", "status": 503, "count": 1}])

Customize the config by overriding the `ghl_emulator_config` fixture in a test module.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from emulator import EmulatorConfig, LocationConfig, ThreadedEmulator

TOKEN_1 = "pit-test-location-one-0001"
TOKEN_2 = "pit-test-location-two-0002"
LOCATION_1 = "TestLocation00000001"
LOCATION_2 = "TestLocation00000002"


class GhlEmulatorHandle(ThreadedEmulator):
    """ThreadedEmulator plus the ids a test needs."""

    @property
    def token(self) -> str:
        return self.config.locations[0].token

    @property
    def location_id(self) -> str:
        return self.config.locations[0].id

    @property
    def tokens(self) -> dict[str, str]:
        """location id → Private Integration Token."""
        return {loc.id: loc.token for loc in self.config.locations}

    @property
    def location_ids(self) -> list[str]:
        return [loc.id for loc in self.config.locations]

    def headers(self, location_id: str | None = None) -> dict[str, str]:
        token = self.tokens[location_id] if location_id else self.token
        return {"Authorization": f"Bearer {token}", "Version": "2021-07-28"}


@pytest.fixture
def ghl_emulator_config() -> EmulatorConfig:
    return EmulatorConfig(
        seed=7,
        locations=[LocationConfig(id=LOCATION_1, name="Test Spa One", token=TOKEN_1),
                   LocationConfig(id=LOCATION_2, name="Test Spa Two", token=TOKEN_2)],
    )


@pytest.fixture
def ghl_emulator(ghl_emulator_config: EmulatorConfig) -> Iterator[GhlEmulatorHandle]:
    with GhlEmulatorHandle(ghl_emulator_config) as emu:
        yield emu
