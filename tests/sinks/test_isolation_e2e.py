"""One clinic's trouble never delays another (issue 16), end to end: four GoHighLevel sub-accounts, one answering
401 to everything and one 503, through a real broker and worker. The healthy clinics must sync while the faults
are on; once lifted, the troubled clinics' events sync exactly once and nothing is dead-lettered."""

from __future__ import annotations

import asyncio
import io
import json
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr

from emulator import EmulatorConfig, LocationConfig
from foundations.config import Settings
from foundations.formats.crm_commands import EVENT_MARKER_PREFIX
from foundations.kafka_admin import ensure_topics
from sinks.locations import load_locations
from sinks.provision import provision_all
from tests.ghl_emulator_fixture import GhlEmulatorHandle
from tests.sinks.test_e2e import Stack, read_topic

pytestmark = pytest.mark.integration

CLINICS = {  # AestheticsPro location id → (GoHighLevel sub-account, its fault while the test holds it)
    "21": ("IsoRevokedToken00001", {"kind": "status", "status": 401}),
    "22": ("IsoOutage00000000002", {"kind": "status", "status": 503}),
    "23": ("IsoHealthy0000000003", None),
    "24": ("IsoHealthy0000000004", None),
}
EVENTS_PER_CLINIC = 12


class MultiLocationStack(Stack):
    """The e2e stack with a locations file: one sub-account (and token) per AestheticsPro location."""

    def __init__(self, settings: Settings, emulator: Any, tmp_path: Path, locations_file: Path) -> None:
        super().__init__(settings, emulator, tmp_path)
        self.locations_file = locations_file

    def env(self) -> dict[str, str]:
        env = super().env()
        for key in ("APRO_GHL_TOKEN", "APRO_GHL_LOCATION_ID"):
            env.pop(key, None)
        env["APRO_LOCATIONS_FILE"] = str(self.locations_file)
        env.update(token_env(self.emulator))
        return env


def token_env(emulator: GhlEmulatorHandle) -> dict[str, str]:
    return {f"GHL_TOKEN_{apro}": emulator.tokens[ghl] for apro, (ghl, _) in CLINICS.items()}


@pytest.fixture
def emulator() -> Iterator[GhlEmulatorHandle]:
    config = EmulatorConfig(seed=11, locations=[
        LocationConfig(id=ghl, name=f"Clinic {apro}", token=f"pit-isolation-clinic-{apro}-000")
        for apro, (ghl, _) in CLINICS.items()])
    with GhlEmulatorHandle(config) as emu:
        yield emu


@pytest.fixture
def stack(settings: Settings, emulator: GhlEmulatorHandle, tmp_path: Path) -> Iterator[MultiLocationStack]:
    topics = settings.topics
    ensure_topics(settings.kafka_bootstrap_servers or "", [topics.raw, topics.normalized, topics.skipped,
                                                           topics.deadletter], settings.topic_partitions)
    locations_file = tmp_path / "locations.json"
    locations_file.write_text(json.dumps({"locations": [
        {"apro": apro, "ghl_location_id": ghl, "token_env": f"GHL_TOKEN_{apro}", "name": f"Clinic {apro}"}
        for apro, (ghl, _) in CLINICS.items()]}))
    ghl = settings.model_copy(update={"ghl_base_url": emulator.base_url, "locations_file": locations_file,
                                      "ghl_token": SecretStr("unused-fallback-token")})
    out = io.StringIO()
    targets = load_locations(ghl, env=token_env(emulator)).targets()
    assert asyncio.run(provision_all(targets, ghl, dry_run=False, out=out)) == 0, out.getvalue()
    s = MultiLocationStack(settings, emulator, tmp_path, locations_file)
    yield s
    s.stop()


def booking(template: bytes, apro_location: str, n: int) -> tuple[str, bytes]:
    """A booking at `apro_location` for a client of its own (ids, email and phone unique per clinic and n)."""
    body = json.loads(template)
    event_id = f"iso-{apro_location}-{n:03d}"
    body["eventId"] = event_id
    body["location"] = {"id": apro_location, "name": f"Clinic {apro_location}", "timezone": "America/Phoenix"}
    client = body["client"]
    client["clientId"] = f"{apro_location}{n:04d}"
    client["email"] = f"patient.{apro_location}.{n}@example.org"
    client["mobilePhone"] = f"(480) 555-{int(apro_location) % 10}{n:03d}"
    body["appointment"]["appointmentId"] = f"A-{apro_location}-{n}"
    return event_id, json.dumps(body).encode()


def synced(state: dict[str, Any]) -> Counter[str]:
    """Audit notes per event id: the note is each event's last op, so one note = the event fully synced."""
    counts: Counter[str] = Counter()
    for note in state["notes"]:
        for line in (note.get("body") or "").splitlines():
            if line.startswith(EVENT_MARKER_PREFIX):
                counts[line.removeprefix(EVENT_MARKER_PREFIX).strip()] += 1
    return counts


def test_healthy_clinics_sync_while_others_fail_and_the_others_catch_up_exactly_once(
        stack: MultiLocationStack, emulator: GhlEmulatorHandle, fixture_bodies: dict[str, bytes],
        settings: Settings) -> None:
    emulator.set_faults([{**fault, "probability": 1.0, "location": ghl}
                         for ghl, fault in CLINICS.values() if fault is not None])
    events: dict[str, list[str]] = {apro: [] for apro in CLINICS}
    bodies = []
    for n in range(EVENTS_PER_CLINIC):  # interleaved, as a chain's webhooks arrive
        for apro in CLINICS:
            event_id, body = booking(fixture_bodies["appointment_created"], apro, n)
            events[apro].append(event_id)
            bodies.append(body)
    stack.start()
    stack.send(bodies)
    healthy = [e for apro, (_, fault) in CLINICS.items() if fault is None for e in events[apro]]
    troubled = [e for apro, (_, fault) in CLINICS.items() if fault is not None for e in events[apro]]

    # While two clinics fail, every event of the healthy ones syncs (on a shared engine they wait behind them).
    state = stack.wait_for(lambda s: all(synced(s)[e] for e in healthy), timeout_s=120)
    assert not any(synced(state)[e] for e in troubled)

    emulator.set_faults([], replace=True)
    stack.wait_for(lambda s: all(synced(s)[e] for e in troubled), timeout_s=120)
    state = stack.settle()
    counts = synced(state)
    assert {e: counts[e] for e in healthy + troubled} == {e: 1 for e in healthy + troubled}
    dead = read_topic(settings, settings.topics.deadletter, until=lambda records: False, timeout_s=3)
    assert dead == []
