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
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Consumer, Producer, TopicPartition

from foundations.config import Settings
from foundations.formats import headers as header_names
from foundations.kafka_admin import ensure_topics
from sinks.agent import changelog_topic_name
from sinks.locations import load_locations
from sinks.provision import provision_all
from streams.plan import marks, state_codec
from tests.conftest import REPO
from tests.reliability import harness
from tests.streams.normalize.test_worker import produce, raw_record, worker_env

pytestmark = pytest.mark.integration

WORKER_CODE = "from foundations.config import load_settings\nfrom apro_sync.worker import run\nrun(load_settings())\n"


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
            "APRO_SINK_PAUSE_MAX_S": "2.0",
            "APRO_LOG_FORMAT": "console",
            "APRO_LOG_LEVEL": os.environ.get("APRO_TEST_WORKER_LOG_LEVEL", "WARNING"),
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

    def send(self, bodies: list[bytes], *, one_per_batch: bool = False) -> None:
        if not one_per_batch:
            produce(self.settings, [raw_record(b) for b in bodies])
            return
        # One record per produce batch: the embedded broker reports a short end offset after multi-record
        # batches, which tools reading up to the end offset (apro-sync replay) would trust.
        producer = Producer({"bootstrap.servers": self.settings.kafka_bootstrap_servers, "linger.ms": 0,
                             "batch.num.messages": 1})
        for key, value, headers in (raw_record(b) for b in bodies):
            producer.produce(self.settings.topics.raw, key=key, value=value, headers=list(headers.items()))
            producer.flush(15)
        assert producer.flush(15) == 0

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
    ghl = settings.model_copy(
        update={
            "ghl_base_url": ghl_emulator.base_url,
            "ghl_location_id": ghl_emulator.location_id,
            "ghl_token": __import__("pydantic").SecretStr(ghl_emulator.token),
        }
    )
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
            records.append((msg.key(), msg.value(), header_names.to_dict(msg.headers())))
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


JANE = "jane.doe@example.com"


def jane_sequence(fx: dict[str, bytes]) -> list[bytes]:
    """book → reschedule → cancel → rebook → invoice paid twice (same invoice) → retail invoice, for one client."""
    retail = json.loads(fx["invoice_paid_retail_only"])
    retail["client"] = json.loads(fx["invoice_paid"])["client"]
    retail["location"] = json.loads(fx["invoice_paid"])["location"]
    retail["eventId"] = "seq-7-retail"
    return [
        with_id(fx["appointment_created"], "seq-1-book"),
        with_id(fx["appointment_updated"], "seq-2-reschedule"),
        with_id(fx["appointment_cancelled"], "seq-3-cancel", occurredAt="2026-11-24T10:00:00Z",
                appointment__startDateTime="2026-12-03 14:00:00"),
        with_id(fx["appointment_created"], "seq-4-rebook", occurredAt="2026-11-25T10:00:00Z",
                appointment__appointmentId="A-77500", appointment__startDateTime="2026-12-03 14:00:00"),
        with_id(fx["invoice_paid"], "seq-5-paid", invoice__appointment__appointmentId="A-77500"),
        with_id(fx["invoice_paid"], "seq-6-paid-again", occurredAt="2026-12-03T22:15:00Z",
                invoice__appointment__appointmentId="A-77500"),
        json.dumps(retail).encode(),
    ]


SEQ_NOTES = ["seq-1-book", "seq-2-reschedule", "seq-3-cancel", "seq-4-rebook", "seq-5-paid", "seq-7-retail"]


def sequence_done(state: dict[str, Any]) -> bool:
    jane = contact_by_email(state, JANE)
    return jane is not None and any("apro-event: seq-7-retail" in n for n in notes_of(state, jane))


def assert_sequence_end_state(state: dict[str, Any]) -> None:
    jane = contact_by_email(state, JANE)
    assert jane is not None
    f = fields(jane)
    assert Decimal(f["patient_lifetime_value"]) == Decimal("1246.50")  # 1150.00 once + 96.50
    assert f["apro_invoice_id"] == "INV-20931" and f["apro_appt_status"] == "Completed"
    assert f["last_visit_date"] == "2026-12-05" and f["last_visit_service"] == "SkinMedica TNS Advanced+ Serum"
    notes = notes_of(state, jane)
    markers = sorted(line.removeprefix("apro-event: ") for n in notes for line in n.splitlines()
                     if line.startswith("apro-event: "))
    assert markers == sorted(SEQ_NOTES), markers  # one note per applied event, none for the repeated invoice
    [opp] = opportunities_of(state, jane)
    assert stage_name(state, opp) == "Patient" and opp["status"] == "won"
    assert Decimal(str(opp["monetaryValue"])) == Decimal("1246.50")
    assert enrollments_of(state, jane) == {  # book, cancel, rebook; two first-paid invoices
        "APro Appointments Update": 3, "APro Invoice Paid": 2, "APro Birthday": 2}
    assert "apro-patient" in jane["tags"]


def test_sequence_exactly_once_under_redelivery(stack: Stack, fixture_bodies: dict[str, bytes]) -> None:
    sequence = jane_sequence(fixture_bodies)
    stack.send(sequence)
    stack.wait_for(sequence_done)
    state = stack.settle()
    assert_sequence_end_state(state)
    snapshot = stack.emulator.snapshot()

    # The same sequence delivered again (webhook retries): nothing changes.
    stack.send(sequence)
    stack.settle()
    assert stack.emulator.snapshot() == snapshot

    # A restart (same group, state rebuilt from the changelog) followed by more traffic: still unchanged.
    stack.stop()
    stack.start()
    stack.send(sequence + [with_id(fixture_bodies["appointment_noshow"], "after-restart-sentinel")])
    stack.wait_for(lambda s: any("apro-event: after-restart-sentinel" in n["body"] for n in s["notes"]))
    stack.settle()
    jane_now = [c for c in stack.emulator.snapshot()["contacts"] if JANE in json.dumps(c)]
    assert jane_now == [c for c in snapshot["contacts"] if JANE in json.dumps(c)]


def changelog_records(settings: Settings, until: Callable[[list[tuple[int, str, str | None]]], bool],
                      timeout_s: float = 60.0) -> list[tuple[int, str, str | None]]:
    """The client_state changelog as (partition, key, value) in each partition's order (JSON-decoded str)."""
    topic = changelog_topic_name(settings)
    consumer = Consumer({"bootstrap.servers": settings.kafka_bootstrap_servers, "group.id": f"{topic}-reader",
                         "enable.auto.commit": False, "auto.offset.reset": "earliest"})
    consumer.assign([TopicPartition(topic, p, 0) for p in range(settings.topic_partitions)])
    records: list[tuple[int, str, str | None]] = []
    deadline = time.monotonic() + timeout_s
    try:
        while not until(records) and time.monotonic() < deadline:
            msg = consumer.poll(0.2)
            if msg is None or msg.error():
                continue
            value = msg.value()
            records.append((msg.partition(), json.loads(msg.key()), None if value is None else json.loads(value)))
    finally:
        consumer.close()
    return records


def test_an_op_writes_a_small_done_mark_and_the_state_is_written_twice_per_event(
        stack: Stack, fixture_bodies: dict[str, bytes]) -> None:
    """docs/sync-engine.md "Done marks": the whole state at the plan and at the event's end, a record of tens of
    bytes per op in between, on the same partition; at rest the client has one key (the marks key cleared)."""
    sequence = jane_sequence(fixture_bodies)
    stack.send(sequence)
    stack.wait_for(sequence_done)
    stack.settle()
    client, done_key = "48213", marks.marks_key("48213")

    def at_rest(records: list[tuple[int, str, str | None]]) -> bool:
        states = [v for _, k, v in records if k == client and v is not None]
        last_mark = [v for _, k, v in records if k == done_key][-1:]
        last = state_codec.decode(states[-1]) if states else None
        return last is not None and "seq-7-retail" in last.applied_event_ids and not last.effects \
            and last_mark == [None]

    records = changelog_records(stack.settings, at_rest)
    assert at_rest(records)
    states = [v for _, k, v in records if k == client]
    done_marks = [v for _, k, v in records if k == done_key and v is not None]
    assert {p for p, k, _ in records if k in (client, done_key)} == {records[0][0]}  # one partition, in order
    assert len(states) <= 2 * len(sequence)  # was one per op (about 6 per event)
    assert len(done_marks) >= len(SEQ_NOTES)  # the events with ops (the repeated payment has none)
    assert all(len(value) < 256 for value in done_marks), [len(v) for v in done_marks]  # ~50; ~200 with new ids


def write_requests(state: dict[str, Any]) -> int:
    """How many state-changing requests (POST/PUT/DELETE) the emulator has answered so far."""
    return sum(c["count"] for c in state["requestCounts"] if not c["endpoint"].startswith("GET "))


def wait_caught_up(stack: Stack, normalized_records: int, timeout_s: float = 60.0) -> None:
    """Wait until the normalized topic holds `normalized_records` records and the worker's group has committed
    both the raw and the normalized topic to their ends: every event was normalized, synced and acked."""
    bootstrap = stack.settings.kafka_bootstrap_servers or ""
    topics = stack.settings.topics
    got = harness.wait_for_records(bootstrap, [topics.normalized],
                              lambda r: len(r[topics.normalized]) >= normalized_records, timeout_s)
    assert len(got[topics.normalized]) == normalized_records
    harness.wait_committed_to_end(bootstrap, stack.group, topics.raw, timeout_s,
                             ends=harness.next_offsets(harness.read_topic(bootstrap, topics.raw)))
    harness.wait_committed_to_end(bootstrap, stack.group, topics.normalized, timeout_s,
                             ends=harness.next_offsets(got[topics.normalized]))


def test_full_replay_under_fresh_group_changes_nothing(stack: Stack, fixture_bodies: dict[str, bytes]) -> None:
    sequence = jane_sequence(fixture_bodies)
    stack.send(sequence)
    stack.wait_for(sequence_done)
    state = stack.settle()
    assert_sequence_end_state(state)
    snapshot = stack.emulator.snapshot()
    writes = write_requests(state)
    # A full replay of the raw topic from the start: a fresh consumer group (fresh normalizer dedupe, so every
    # event is normalized and synced again; the sink reads the normalized topic from the start) with the same
    # client_state changelog, rebuilt before the first event is processed.
    stack.stop()
    stack.start(group=f"{stack.settings.topic_prefix}replay")
    wait_caught_up(stack, normalized_records=2 * len(sequence))
    state = stack.settle()
    assert write_requests(state) == writes  # not a single effect repeated
    assert stack.emulator.snapshot() == snapshot  # byte-for-byte: no new note, same lifetime value
    assert "dead-lettered" not in stack.log_text()


def test_replay_command_changes_nothing(stack: Stack, fixture_bodies: dict[str, bytes]) -> None:
    """`apro-sync replay --since <before the sequence>` (republish mode, workers running): every raw record is
    normalized and synced again, and GoHighLevel is left exactly as it was."""
    since = datetime.now(timezone.utc) - timedelta(seconds=5)
    sequence = jane_sequence(fixture_bodies)
    stack.send(sequence, one_per_batch=True)
    stack.wait_for(sequence_done)
    state = stack.settle()
    snapshot = stack.emulator.snapshot()
    writes = write_requests(state)
    env = {**stack.env(), "APRO_LOG_LEVEL": "WARNING"}
    done = subprocess.run([sys.executable, "-m", "apro_sync.cli", "replay", "--since", since.isoformat(), "--yes"],
                          cwd=REPO, env=env, capture_output=True, timeout=120)
    assert done.returncode == 0, done.stdout.decode() + done.stderr.decode()
    # The replayed records passed the normalizer's dedupe (a second normalized copy of each event) ...
    wait_caught_up(stack, normalized_records=2 * len(sequence))
    state = stack.settle()
    # ... and the sync ledger recognized every one of them.
    assert write_requests(state) == writes
    assert stack.emulator.snapshot() == snapshot


def test_permanent_error_is_deadlettered_and_later_events_continue(stack: Stack,
                                                                   fixture_bodies: dict[str, bytes]) -> None:
    stack.emulator.set_faults([{"kind": "status", "status": 422, "count": 1, "method": "POST",
                                "path": "/contacts/{contactId}/notes"}])
    stack.send([with_id(fixture_bodies["appointment_created"], "dlq-1-book")])
    records = read_topic(stack.settings, stack.settings.topics.deadletter, lambda r: len(r) >= 1)
    assert len(records) == 1
    key, value, headers = records[0]
    assert key == b"48213" and json.loads(value)["event_id"] == "dlq-1-book"
    assert headers[header_names.DLQ_STAGE] == "sync" and headers[header_names.REASON].startswith(
        "HTTP 422 from POST /contacts/"
    )
    assert headers[header_names.DLQ_EVENT_ID] == "dlq-1-book" and headers[header_names.DLQ_LOCATION] == "3"
    assert (
        headers[header_names.DLQ_SOURCE_TOPIC] == stack.settings.topics.normalized
        and int(headers[header_names.DLQ_SOURCE_OFFSET]) >= 0
    )
    # The client's next event is synced normally.
    stack.send([with_id(fixture_bodies["appointment_cancelled"], "dlq-2-cancel", occurredAt="2026-11-30T10:00:00Z")])
    state = stack.wait_for(lambda s: any("apro-event: dlq-2-cancel" in n["body"] for n in s["notes"]))
    jane = contact_by_email(state, JANE)
    assert jane is not None and fields(jane)["apro_appt_status"] == "Cancelled"
    assert not any("apro-event: dlq-1-book" in n for n in notes_of(state, jane))


def run_cli(stack: Stack, *args: str) -> str:
    done = subprocess.run([sys.executable, "-m", "apro_sync.cli", *args], cwd=REPO,
                          env={**stack.env(), "APRO_LOG_LEVEL": "WARNING"}, capture_output=True, timeout=120)
    assert done.returncode == 0, done.stdout.decode() + done.stderr.decode()
    return done.stdout.decode()


def test_redriven_sync_dead_letter_resumes_exactly_the_ops_not_done(stack: Stack,
                                                                    fixture_bodies: dict[str, bytes]) -> None:
    """422 on the audit note → dead letter (contact, opportunity and enrollment already done) → the client's
    next event runs → the fault is gone → `apro-sync dlq redrive` → exactly the missing note, nothing repeated."""
    stack.emulator.set_faults([{"kind": "status", "status": 422, "count": 1, "method": "POST",
                                "path": "/contacts/{contactId}/notes"}])
    stack.send([with_id(fixture_bodies["appointment_created"], "redrive-1-book")])
    dead = read_topic(stack.settings, stack.settings.topics.deadletter, lambda r: len(r) >= 1)
    assert [json.loads(v)["event_id"] for _, v, _ in dead] == ["redrive-1-book"]
    stack.send([with_id(fixture_bodies["appointment_cancelled"], "redrive-2-cancel",
                        occurredAt="2026-11-30T10:00:00Z")])
    stack.wait_for(lambda s: any("apro-event: redrive-2-cancel" in n["body"] for n in s["notes"]))
    before = stack.settle()
    jane = contact_by_email(before, JANE)
    assert jane is not None and not any("apro-event: redrive-1-book" in n for n in notes_of(before, jane))
    enrolled = enrollments_of(before, jane)
    assert enrolled == {"APro Appointments Update": 2}  # book's enrollment ran before its note failed
    writes = write_requests(before)

    out = run_cli(stack, "dlq", "redrive", "--all", "--stage", "sync", "--yes")
    assert "1" in out
    state = stack.wait_for(lambda s: any("apro-event: redrive-1-book" in n["body"] for n in s["notes"]))
    state = stack.settle()
    jane = contact_by_email(state, JANE)
    assert jane is not None
    markers = [line for n in notes_of(state, jane) for line in n.splitlines() if line.startswith("apro-event: ")]
    assert sorted(markers) == ["apro-event: redrive-1-book", "apro-event: redrive-2-cancel"]
    assert enrollments_of(state, jane) == enrolled  # not enrolled again
    assert len(opportunities_of(state, jane)) == 1
    assert fields(jane)["apro_appt_status"] == "Cancelled"  # the newer event's values were not dragged back
    assert write_requests(state) == writes + 1  # the note and nothing else
    dead = read_topic(stack.settings, stack.settings.topics.deadletter, lambda r: len(r) >= 2, timeout_s=3)
    assert len(dead) == 1  # not dead-lettered again


@pytest.mark.broker_neutral
def test_rejected_credentials_pause_the_location_and_the_backlog_drains_once_fixed(
        stack: Stack, fixture_bodies: dict[str, bytes]) -> None:
    """Every call answered 401 (bad or rotated token): the location is paused and probed with backoff, nothing
    is dead-lettered; once GoHighLevel accepts the credentials again the held events are synced."""
    stack.emulator.set_faults([{"kind": "status", "status": 401, "count": 100000}])
    stack.send(jane_sequence(fixture_bodies))
    deadline = time.monotonic() + 60
    while "rejects the configured credentials" not in stack.log_text():
        assert time.monotonic() < deadline, stack.log_text()[-3000:]
        time.sleep(0.2)
    time.sleep(3.0)  # paused: a few probes (0.5s doubling), not a request storm, and no dead letter
    rejected = sum(stack.emulator.state()["faultsInjected"].values())
    assert rejected < 40, rejected
    stack.emulator.set_faults([], replace=True)  # the token works again
    stack.wait_for(sequence_done, timeout_s=90)
    state = stack.settle()
    assert_sequence_end_state(state)
    assert read_topic(stack.settings, stack.settings.topics.deadletter, lambda r: len(r) >= 1, timeout_s=3) == []
    log_text = stack.log_text()
    assert stack.emulator.token not in log_text
    assert "accepts the credentials again" in log_text


def test_shutdown_while_ghl_is_down_then_restart_ends_in_the_fault_free_state(
        stack: Stack, fixture_bodies: dict[str, bytes]) -> None:
    """The fence path: the worker is stopped while every GoHighLevel call fails with 503 (events in flight,
    location paused), then restarted (same group) against a healthy GoHighLevel. This test found Faust dropping
    a record around the restart's seek (about 1 run in 4, see docs/sync-engine.md, SequenceGuard)."""
    stack.emulator.set_faults([{"kind": "status", "status": 503, "count": 100000}])
    stack.send(jane_sequence(fixture_bodies))
    deadline = time.monotonic() + 60
    while sum(stack.emulator.state()["faultsInjected"].values()) < 3:
        assert time.monotonic() < deadline, stack.log_text()[-3000:]
        time.sleep(0.2)
    stack.stop()  # SIGTERM: fence, in-flight events abandoned (neither acked nor committed)
    stack.emulator.set_faults([], replace=True)
    stack.start()
    stack.wait_for(sequence_done, timeout_s=90)
    state = stack.settle()
    assert_sequence_end_state(state)
    assert read_topic(stack.settings, stack.settings.topics.deadletter, lambda r: len(r) >= 1, timeout_s=3) == []


@pytest.mark.broker_neutral
def test_transient_faults_end_in_the_fault_free_state(stack: Stack, fixture_bodies: dict[str, bytes]) -> None:
    stack.emulator.set_faults([
        {"kind": "status", "status": 429, "retry_after_s": 1, "count": 3},
        {"kind": "status", "status": 500, "count": 4, "method": "POST", "path": "/contacts/{contactId}/notes"},
        {"kind": "status", "status": 503, "count": 12, "method": "POST",
         "path": "/contacts/{contactId}/workflow/{workflowId}"},
        {"kind": "status", "status": 502, "probability": 0.1},
    ], seed=3)
    stack.send(jane_sequence(fixture_bodies))
    stack.wait_for(sequence_done, timeout_s=150)
    state = stack.settle(quiet_s=3.0, timeout_s=120)
    assert sum(state["faultsInjected"].values()) >= 19
    assert_sequence_end_state(state)
