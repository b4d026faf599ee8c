"""The normalization worker end to end through the real broker: raw records in, normalized/skipped/dead-letter out."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Consumer, Producer, TopicPartition

from apro_sync.processes import stop
from foundations.config import Settings
from foundations.formats import headers as header_names
from foundations.formats.raw import find_client_id, parse_body
from foundations.kafka_admin import ensure_topics
from tests.conftest import REPO

pytestmark = pytest.mark.integration

WORKER_CODE = (
    "from foundations.config import load_settings\n"
    "from streams.normalize.agent import register_normalizer\n"
    "from apro_sync.worker import run\n"
    "run(load_settings(), registrations=[register_normalizer])\n"
)


def worker_env(settings: Settings) -> dict[str, str]:
    return {
        **os.environ,
        "KAFKA_BOOTSTRAP_SERVERS": settings.kafka_bootstrap_servers or "",
        "APRO_TOPIC_PREFIX": settings.topic_prefix,
        "APRO_TOPIC_PARTITIONS": str(settings.topic_partitions),
        "APRO_EMBEDDED_BROKER": "true" if settings.embedded_broker else "false",
        "APRO_KAFKA_SESSION_TIMEOUT_S": "2",  # restarted workers rejoin quickly
        "APRO_WORKER_ID": settings.worker_id,
        "APRO_STATE_DIR": str(settings.state_dir),
        "APRO_METRICS_PORT": "0",
        "APRO_LOG_LEVEL": "WARNING",
    }


def start_worker(settings: Settings, log_path: Path) -> tuple[subprocess.Popen[bytes], Any]:
    log = open(log_path, "wb")
    proc = subprocess.Popen([sys.executable, "-c", WORKER_CODE], cwd=REPO, env=worker_env(settings), stdout=log,
                            stderr=subprocess.STDOUT)
    return proc, log


def stop_worker(proc: subprocess.Popen[bytes], log: Any) -> None:
    stop(proc, timeout_s=15)
    log.close()


def create_topics(settings: Settings) -> None:
    topics = settings.topics
    ensure_topics(settings.kafka_bootstrap_servers or "", [topics.raw, topics.normalized, topics.skipped,
                                                           topics.deadletter], settings.topic_partitions)


@pytest.fixture
def normalize_worker(settings: Settings, tmp_path: Path) -> Iterator[subprocess.Popen[bytes]]:
    """Only the normalizer (the sync stage has its own tests), as `apro-sync worker` runs it."""
    create_topics(settings)
    proc, log = start_worker(settings, tmp_path / "worker.log")
    yield proc
    stop_worker(proc, log)


def produce(settings: Settings, records: list[tuple[bytes, bytes, dict[str, str]]]) -> None:
    producer = Producer({"bootstrap.servers": settings.kafka_bootstrap_servers, "linger.ms": 0})
    for key, value, headers in records:
        producer.produce(settings.topics.raw, key=key, value=value, headers=list(headers.items()))
    assert producer.flush(15) == 0


class Outputs:
    """Reads the three output topics from the beginning (assigned partitions: no group join needed)."""

    def __init__(self, settings: Settings) -> None:
        topics = settings.topics
        self.names = {topics.normalized: "normalized", topics.skipped: "skipped", topics.deadletter: "deadletter"}
        self.consumer = Consumer({"bootstrap.servers": settings.kafka_bootstrap_servers,
                                  "group.id": f"{settings.topic_prefix}reader", "enable.auto.commit": False,
                                  "auto.offset.reset": "earliest"})
        self.consumer.assign([TopicPartition(t, p, 0) for t in self.names for p in range(settings.topic_partitions)])
        self.records: dict[str, list[tuple[bytes, bytes, dict[str, str]]]] = {n: [] for n in self.names.values()}

    def poll_until(self, done, timeout_s: float = 60.0) -> None:  # type: ignore[no-untyped-def]
        deadline = time.monotonic() + timeout_s
        while not done(self.records) and time.monotonic() < deadline:
            msg = self.consumer.poll(0.2)
            if msg is None or msg.error():
                continue
            self.records[self.names[msg.topic()]].append((msg.key(), msg.value(), header_names.to_dict(msg.headers())))

    def close(self) -> None:
        self.consumer.close()


def raw_record(body: bytes, received_at: str = "2026-12-01T00:00:05+00:00") -> tuple[bytes, bytes, dict[str, str]]:
    try:
        key = (find_client_id(parse_body(body)) or "").encode()
    except ValueError:
        key = b""
    return (
        key,
        body,
        {
            header_names.RECEIVED_AT: received_at,
            header_names.REQUEST_ID: "req-1",
            header_names.CONTENT_TYPE: "application/json",
        },
    )


def test_worker_normalizes_skips_dedupes_and_deadletters(settings: Settings, fixture_bodies: dict[str, bytes],
                                                         normalize_worker: subprocess.Popen[bytes]) -> None:
    records = [raw_record(body) for body in fixture_bodies.values()]
    records.append(raw_record(fixture_bodies["appointment_created"]))  # a duplicate delivery
    records.append(raw_record(b'{"event": "appointment.created", "client": '))  # unreadable
    produce(settings, records)

    expected_normalized = len(fixture_bodies) - 2
    outputs = Outputs(settings)
    try:
        outputs.poll_until(lambda r: len(r["normalized"]) >= expected_normalized and len(r["skipped"]) >= 2
                           and len(r["deadletter"]) >= 1)
        assert normalize_worker.poll() is None, "worker exited"
        # A later redelivery of an already passed event (dedupe table, not just the batch), then a sentinel.
        sentinel = json.loads(fixture_bodies["client_updated"])
        sentinel["eventId"] = "sentinel-1"
        produce(settings, [raw_record(fixture_bodies["invoice_paid"]), raw_record(json.dumps(sentinel).encode())])
        outputs.poll_until(lambda r: any(json.loads(v)["event_id"] == "sentinel-1" for _, v, _ in r["normalized"]))
    finally:
        outputs.close()

    normalized = [json.loads(v) for _, v, _ in outputs.records["normalized"]]
    ids = [e["event_id"] for e in normalized]
    fixture_ids = {name: json.loads(body).get("eventId") for name, body in fixture_bodies.items()}
    assert "sentinel-1" in ids
    assert len(ids) == len(set(ids)) == expected_normalized + 1, ids  # each event passed on exactly once
    for name in ("test_ping", "client_without_contact_info"):
        assert fixture_ids[name] not in ids
    # Keyed by client id; producer headers (received-at, request id) preserved.
    for key, value, headers in outputs.records["normalized"]:
        event = json.loads(value)
        assert key == event["client"]["id"].encode()
        assert (
            headers[header_names.RECEIVED_AT] == "2026-12-01T00:00:05+00:00"
            and headers[header_names.REQUEST_ID] == "req-1"
        )
        assert event["received_at"].startswith("2026-12-01T00:00:05")

    skipped = {json.loads(v)["reason"]: json.loads(v) for _, v, _ in outputs.records["skipped"]}
    assert len(outputs.records["skipped"]) == 2
    assert skipped["test_ping"]["event_id"] and skipped["no_email_or_phone"]["client_id"] == "48999"
    assert {h[header_names.REASON] for _, _, h in outputs.records["skipped"]} == {"test_ping", "no_email_or_phone"}

    assert len(outputs.records["deadletter"]) == 1
    key, value, headers = outputs.records["deadletter"][0]
    assert value == b'{"event": "appointment.created", "client": '  # the raw payload, unchanged
    assert headers[header_names.DLQ_STAGE] == "normalize" and headers[header_names.REASON].startswith("body:")
    assert headers[header_names.DLQ_SOURCE_TOPIC] == settings.topics.raw
    assert int(headers[header_names.DLQ_SOURCE_OFFSET]) >= 0 and int(headers[header_names.DLQ_SOURCE_PARTITION]) >= 0
    assert (
        headers[header_names.DLQ_EVENT_ID]
        and headers[header_names.DLQ_AT]
        and headers[header_names.DLQ_LOCATION] == "unknown"
    )
    assert headers[header_names.RECEIVED_AT] == "2026-12-01T00:00:05+00:00"


def _event(fixture_bodies: dict[str, bytes], event_id: str) -> bytes:
    body = json.loads(fixture_bodies["client_updated"])
    body["eventId"] = event_id
    return json.dumps(body).encode()


def test_dedupe_memory_survives_a_worker_restart(settings: Settings, fixture_bodies: dict[str, bytes],
                                                 tmp_path: Path) -> None:
    """Events passed on before a restart are still recognised after it: a redelivery is dropped, nothing lost."""
    create_topics(settings)
    first_batch = [raw_record(_event(fixture_bodies, f"before-{i}")) for i in range(30)]
    produce(settings, first_batch)
    outputs = Outputs(settings)
    try:
        proc, log = start_worker(settings, tmp_path / "worker-1.log")
        try:
            outputs.poll_until(lambda r: len(r["normalized"]) >= 30)
            assert len(outputs.records["normalized"]) == 30, "first worker did not pass every event on"
            time.sleep(1.0)  # let the dedupe changelog write follow the outputs (it is sent after they are acked)
        finally:
            stop_worker(proc, log)  # graceful stop: commits offsets, flushes the changelog

        # Redeliveries of already passed events (new offsets: only the recovered dedupe table can catch them).
        produce(settings, [raw_record(_event(fixture_bodies, f"before-{i}")) for i in (0, 7, 29)])
        produce(settings, [raw_record(_event(fixture_bodies, "after-restart"))])
        proc, log = start_worker(settings, tmp_path / "worker-2.log")
        try:
            outputs.poll_until(lambda r: any(json.loads(v)["event_id"] == "after-restart"
                                             for _, v, _ in r["normalized"]))
            outputs.poll_until(lambda r: False, timeout_s=1.0)  # a late duplicate would show up here
            assert proc.poll() is None, "worker exited"
        finally:
            stop_worker(proc, log)
    finally:
        outputs.close()
    ids = [json.loads(v)["event_id"] for _, v, _ in outputs.records["normalized"]]
    assert sorted(ids) == sorted([f"before-{i}" for i in range(30)] + ["after-restart"]), ids
