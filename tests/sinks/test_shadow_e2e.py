"""Shadow mode end to end: a shadow worker sends GoHighLevel no write and records the calls it would make; the
same worker restarted live then leaves GoHighLevel exactly as an all-live run of the same webhooks does."""

from __future__ import annotations

import asyncio
import io
import json
import time
from collections import Counter
from pathlib import Path
from typing import Any, Iterator

import pytest
from pydantic import SecretStr

from foundations.config import Settings
from foundations.kafka_admin import ensure_topics
from apro_sync.ops.peek import Peeked, peek
from sinks.locations import load_locations
from sinks.provision import provision_all
from sinks.shadow import SHADOW_ID_PREFIX
from tests.sinks.test_e2e import Stack, with_id

pytestmark = pytest.mark.integration

FIXTURES = ("client_created", "appointment_created", "appointment_updated", "invoice_paid",
            "client_marketing_opt_out", "membership_created")


class ModeStack(Stack):
    mode = "live"

    def env(self) -> dict[str, str]:
        return {**super().env(), "APRO_SINK_MODE": self.mode}


def webhooks(fixture_bodies: dict[str, bytes]) -> list[bytes]:
    out = [with_id(fixture_bodies[name], f"fx-{name}") for name in FIXTURES]
    for i in range(8):
        client = {"clientId": f"S{i}", "firstName": f"F{i}", "lastName": "Shadow", "email": f"s{i}@example.com"}
        out.append(with_id(fixture_bodies["appointment_created"], f"appt-{i}", client=client,
                           appointment__appointmentId=f"SA-{i}"))
        if i % 2:
            out.append(with_id(fixture_bodies["invoice_paid"], f"inv-{i}", client=client,
                               invoice__invoiceId=f"SINV-{i}", invoice__appointment__appointmentId=f"SA-{i}"))
    return out


def prepare(settings: Settings, emulator: Any) -> None:
    names = settings.topics
    shadowed = settings.model_copy(update={"sink_mode": "shadow"}).topics
    ensure_topics(settings.kafka_bootstrap_servers or "", [names.raw, names.normalized, names.skipped,
                                                           names.deadletter, shadowed.normalized, shadowed.skipped,
                                                           shadowed.deadletter, shadowed.shadow],
                  settings.topic_partitions)
    ghl = settings.model_copy(update={"ghl_base_url": emulator.base_url, "ghl_location_id": emulator.location_id,
                                      "ghl_token": SecretStr(emulator.token)})
    out = io.StringIO()
    assert asyncio.run(provision_all(load_locations(ghl).targets(), ghl, dry_run=False, out=out)) == 0


def writes(emulator: Any) -> list[dict[str, Any]]:
    return [r for r in emulator.requests()
            if r["method"] != "GET" and r["path"] not in ("/contacts/search", "/locations/{locationId}/customFields")]


def shadow_records(settings: Settings) -> list[Peeked]:
    topic = settings.model_copy(update={"sink_mode": "shadow"}).topics.shadow
    return sorted(peek(settings.kafka_bootstrap_servers or "", topic), key=lambda r: (r.partition, r.offset))


def all_notes(state: dict[str, Any], markers: set[str]) -> bool:
    return markers <= {line for n in state["notes"] for line in n["body"].splitlines()}


def wait_stable(read: Any, quiet_s: float = 3.0, timeout_s: float = 120.0) -> Any:
    deadline, last, since = time.monotonic() + timeout_s, None, time.monotonic()
    while time.monotonic() < deadline:
        value = read()
        if value != last:
            last, since = value, time.monotonic()
        elif value and time.monotonic() - since >= quiet_s:
            return value
        time.sleep(0.5)
    raise AssertionError("never settled")


@pytest.fixture
def live_reference(settings: Settings, ghl_emulator: Any, tmp_path: Path,
                   fixture_bodies: dict[str, bytes]) -> Iterator[Any]:
    """Runs the webhooks all-live (own topics and group), returns the emulator snapshot and its write calls."""

    def run(markers: set[str]) -> tuple[dict[str, Any], Counter[tuple[str, str]]]:
        ghl_emulator.reset()
        ref = settings.model_copy(update={"topic_prefix": settings.topic_prefix + "ref.",
                                          "worker_id": settings.worker_id + "-ref"})
        prepare(ref, ghl_emulator)
        s = ModeStack(ref, ghl_emulator, tmp_path / "ref")
        (tmp_path / "ref").mkdir()
        s.send(webhooks(fixture_bodies))
        s.start()
        try:
            s.wait_for(lambda st: all_notes(st, markers))
            s.settle()
        finally:
            s.stop()
        return ghl_emulator.snapshot(), Counter((w["method"], w["path"]) for w in writes(ghl_emulator))

    yield run


def test_shadow_writes_nothing_then_live_ends_as_all_live(
        settings: Settings, ghl_emulator: Any, tmp_path: Path, fixture_bodies: dict[str, bytes],
        live_reference: Any) -> None:
    prepare(settings, ghl_emulator)
    writes_before = len(writes(ghl_emulator))
    stack = ModeStack(settings, ghl_emulator, tmp_path)
    stack.mode = "shadow"
    stack.send(webhooks(fixture_bodies))
    stack.start()
    try:
        records = wait_stable(lambda: shadow_records(settings))
    finally:
        stack.stop()
    assert len(writes(ghl_emulator)) == writes_before  # not one write reached GoHighLevel
    assert ghl_emulator.state()["contacts"] == []
    calls = [json.loads(r.value or b"") for r in records]
    assert all(r.headers["apro-shadow-op"] == c["opId"] and r.key == c["clientId"].encode()
               for r, c in zip(records, calls))
    notes = [c for c in calls if c["path"] == "/contacts/{contactId}/notes"]
    assert sorted(c["eventId"] for c in notes) == sorted(
        {c["eventId"] for c in calls if not c["eventId"].startswith("fx-client")})  # one note per event
    assert all(c["pathParams"]["contactId"].startswith(SHADOW_ID_PREFIX) for c in notes)
    markers = {f"apro-event: {c['eventId']}" for c in notes}
    assert len({c["opId"] for c in calls}) == len(calls)  # each op recorded once

    stack.mode = "live"  # switch: the same worker id, live
    stack.start()
    try:
        stack.wait_for(lambda st: all_notes(st, markers))
        stack.settle()
    finally:
        stack.stop()
    switched = ghl_emulator.snapshot()
    live_writes = Counter((w["method"], w["path"]) for w in writes(ghl_emulator)[writes_before:])
    assert Counter((c["method"], c["path"]) for c in calls) == live_writes  # shadow predicted every write

    reference, reference_writes = live_reference(markers)
    assert switched == reference  # notes, enrollments, fields, opportunities: as if live all along
    assert live_writes == reference_writes  # and no effect twice
