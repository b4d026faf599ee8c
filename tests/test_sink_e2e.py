"""The sync engine end to end: raw webhooks → real broker → `apro-sync worker` (normalize + sync) → GoHighLevel
emulator. Checks the CRM end state, exactly-once effects under redelivery and replay, dead-lettering and faults."""

from __future__ import annotations

import asyncio
import io
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Consumer, TopicPartition

from apro_sync import headers as H
from apro_sync.config import Settings
from apro_sync.kafka_admin import ensure_topics
from sinks.locations import load_locations
from sinks.provision import provision_all
from tests.conftest import REPO
from tests.test_normalize_worker import produce, raw_record, worker_env

pytestmark = pytest.mark.integration

WORKER_CODE = "from apro_sync.config import load_settings\nfrom streams.worker import run\nrun(load_settings())\n"


class Stack:
    """A worker subprocess (all registered agents) wired to the broker of `settings` and the emulator."""

    def __init__(self, settings: Settings, emulator: Any, tmp_path: Path) -> None:
        self.settings = settings
        self.emulator = emulator
        self.tmp_path = tmp_path
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0
        self.group = settings.worker_id

    def env(self) -> dict[str, str]:
        return {
            **worker_env(self.settings),
            "APRO_WORKER_ID": self.group,
            "APRO_GHL_BASE_URL": self.emulator.base_url,
            "APRO_GHL_TOKEN": self.emulator.token,
            "APRO_GHL_LOCATION_ID": self.emulator.location_id,
            "APRO_SINK_LANES": "8",
            "APRO_SINK_RETRY_BASE_S": "0.2",
            "APRO_SINK_RETRY_MAX_S": "1.0",
            "APRO_SINK_PAUSE_S": "0.5",
            "APRO_LOG_FORMAT": "console",
        }

    def start(self, group: str | None = None) -> None:
        if group:
            self.group = group
        self.starts += 1
        log = open(self.tmp_path / f"worker{self.starts}.log", "wb")
        self.proc = subprocess.Popen([sys.executable, "-c", WORKER_CODE], cwd=REPO, env=self.env(), stdout=log,
                                     stderr=subprocess.STDOUT)

    def stop(self, kill: bool = False) -> None:
        if self.proc is None:
            return
        if kill:
            self.proc.kill()
        else:
            self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.proc = None

    def log_text(self) -> str:
        return "\n".join((self.tmp_path / f"worker{i}.log").read_text(errors="replace")
                         for i in range(1, self.starts + 1))

    def send(self, bodies: list[bytes]) -> None:
        produce(self.settings, [raw_record(b) for b in bodies])

    def wait_for(self, check: Callable[[dict[str, Any]], bool], timeout_s: float = 90.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout_s
        state: dict[str, Any] = {}
        while time.monotonic() < deadline:
            assert self.proc is None or self.proc.poll() is None, "worker exited:\n" + self.log_text()[-4000:]
            state = self.emulator.state()
            if check(state):
                return state
            time.sleep(0.25)
        raise AssertionError("condition not reached; worker log tail:\n" + self.log_text()[-4000:])

    def settle(self, quiet_s: float = 2.0, timeout_s: float = 60.0) -> dict[str, Any]:
        """Wait until the emulator saw no new request for `quiet_s` (the worker is idle)."""
        deadline = time.monotonic() + timeout_s
        last = None
        since = time.monotonic()
        while time.monotonic() < deadline:
            count = sum(c["count"] for c in self.emulator.state()["requestCounts"])
            if count != last:
                last, since = count, time.monotonic()
            elif time.monotonic() - since >= quiet_s:
                return self.emulator.state()
            time.sleep(0.2)
        raise AssertionError("worker never went idle")


@pytest.fixture
def stack(settings: Settings, ghl_emulator: Any, tmp_path: Path) -> Iterator[Stack]:
    topics = settings.topics
    ensure_topics(settings.kafka_bootstrap_servers or "", [topics.raw, topics.normalized, topics.skipped,
                                                           topics.deadletter], settings.topic_partitions)
    ghl = settings.model_copy(update={"ghl_base_url": ghl_emulator.base_url, "ghl_location_id": ghl_emulator.location_id,
                                      "ghl_token": __import__("pydantic").SecretStr(ghl_emulator.token)})
    out = io.StringIO()
    assert asyncio.run(provision_all(load_locations(ghl).targets(), ghl, dry_run=False, out=out)) == 0, out.getvalue()
    s = Stack(settings, ghl_emulator, tmp_path)
    s.start()
    yield s
    s.stop()


# ------------------------------------------------------------------------------------------------ helpers


def contact_by_email(state: dict[str, Any], email: str) -> dict[str, Any] | None:
    return next((c for c in state["contacts"] if (c.get("email") or "").lower() == email), None)


def contact_by_phone(state: dict[str, Any], phone: str) -> dict[str, Any] | None:
    return next((c for c in state["contacts"] if c.get("phone") == phone), None)


def fields(contact: dict[str, Any]) -> dict[str, Any]:
    return {k.removeprefix("contact."): v for k, v in (contact.get("customFieldsByKey") or {}).items()}


def notes_of(state: dict[str, Any], contact: dict[str, Any]) -> list[str]:
    return [n["body"] for n in state["notes"] if n.get("contactId") == contact["id"]]


def enrollments_of(state: dict[str, Any], contact: dict[str, Any]) -> dict[str, int]:
    return {e["workflowName"]: e["count"] for e in state["enrollmentCounts"] if e["contactId"] == contact["id"]}


def opportunities_of(state: dict[str, Any], contact: dict[str, Any]) -> list[dict[str, Any]]:
    return [o for o in state["opportunities"] if o.get("contactId") == contact["id"]]


def stage_name(state: dict[str, Any], opp: dict[str, Any]) -> str:
    for p in state["pipelines"]:
        for s in p["stages"]:
            if s["id"] == opp["pipelineStageId"]:
                return s["name"]
    raise AssertionError("unknown stage")


def with_id(body: bytes, event_id: str, **changes: Any) -> bytes:
    data = json.loads(body)
    data["eventId"] = event_id
    for path, value in changes.items():
        node = data
        parts = path.split("__")
        for part in parts[:-1]:
            node = node[part]
        node[parts[-1]] = value
    return json.dumps(data).encode()


def read_topic(settings: Settings, topic: str, until: Callable[[list[Any]], bool],
               timeout_s: float = 60.0) -> list[tuple[bytes, bytes, dict[str, str]]]:
    consumer = Consumer({"bootstrap.servers": settings.kafka_bootstrap_servers, "group.id": f"{topic}-reader",
                         "enable.auto.commit": False, "auto.offset.reset": "earliest"})
    consumer.assign([TopicPartition(topic, p, 0) for p in range(settings.topic_partitions)])
    records: list[tuple[bytes, bytes, dict[str, str]]] = []
    deadline = time.monotonic() + timeout_s
    try:
        while not until(records) and time.monotonic() < deadline:
            msg = consumer.poll(0.2)
            if msg is None or msg.error():
                continue
            records.append((msg.key(), msg.value(), H.to_dict(msg.headers())))
    finally:
        consumer.close()
    return records


# ------------------------------------------------------------------------------------------------ tests


def test_booking_is_synced(stack: Stack, fixture_bodies: dict[str, bytes]) -> None:
    stack.send([fixture_bodies["appointment_created"]])
    state = stack.wait_for(lambda s: any(s["notes"]) and any(s["enrollmentCounts"]))
    state = stack.settle()
    jane = contact_by_email(state, "jane.doe@example.com")
    assert jane is not None
    f = fields(jane)
    assert f["apro_appt_status"] == "Booked" and f["apro_appt_id"] == "A-77120"
    assert f["apro_appt_date"] == "2026-12-01" and f["apro_client_id"] == "48213"
    assert f["apro_appt_services"] == "Botox - Forehead, HydraFacial Signature"
    assert f["next_visit_date"] == "2026-12-01"
    notes = notes_of(state, jane)
    assert len(notes) == 1 and "apro-event: 9c2f7e10-1a3b-4d5e-8f60-7a8b9c0d1e03" in notes[0]
    [opp] = opportunities_of(state, jane)
    assert stage_name(state, opp) == "Booked" and opp["status"] == "open"
    assert enrollments_of(state, jane) == {"APro Appointments Update": 1}
