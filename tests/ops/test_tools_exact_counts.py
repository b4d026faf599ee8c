"""The operator tools count exactly on any broker: records written in multi-record batches (which make the
embedded broker under-report its high watermark) are all seen by peek, dlq list/redrive and replay --dry-run,
and a second `dlq redrive --all` sends nothing."""

from __future__ import annotations

import json
import re
import time
from datetime import datetime, timedelta, timezone

from confluent_kafka import Producer
from typer.testing import CliRunner

from apro_sync.cli import app
from foundations.config import Settings
from foundations.formats import headers as header_names
from foundations.kafka_admin import ensure_topics
from tests.reliability.harness import read_topic

BATCH = 10


def _env(settings: Settings) -> dict[str, str]:
    # A tool as an operator runs it: nothing says which broker this is (no APRO_EMBEDDED_BROKER).
    return {
        "KAFKA_BOOTSTRAP_SERVERS": settings.kafka_bootstrap_servers or "",
        "APRO_TOPIC_PREFIX": settings.topic_prefix,
        "APRO_WORKER_ID": settings.worker_id,
        "APRO_EMBEDDED_BROKER": "false",
    }


def _produce_batch(settings: Settings, topic: str, records: list[tuple[bytes, bytes, list[tuple[str, bytes]]]]) -> None:
    """All records in one produce request to partition 0 (a long linger and one flush)."""
    producer = Producer({"bootstrap.servers": settings.kafka_bootstrap_servers, "linger.ms": 1000,
                         "batch.num.messages": 10_000, "enable.idempotence": True})
    for key, value, headers in records:
        producer.produce(topic, key=key, value=value, headers=headers, partition=0)
    assert producer.flush(15) == 0


def _dead_letter_headers(n: int, settings: Settings) -> list[tuple[str, bytes]]:
    return [
        (header_names.RECEIVED_AT, b"2026-01-15T08:00:00+00:00"),
        (header_names.REQUEST_ID, f"req-{n}".encode()),
        (header_names.DLQ_STAGE, b"normalize"),
        (header_names.REASON, b"email: not an address"),
        (header_names.DLQ_EVENT_ID, f"evt-{n}".encode()),
        (header_names.DLQ_SOURCE_TOPIC, settings.topics.raw.encode()),
        (header_names.DLQ_SOURCE_PARTITION, b"1"),
        (header_names.DLQ_SOURCE_OFFSET, str(n).encode()),
        (header_names.DLQ_AT, b"2026-01-15T08:00:01+00:00"),
    ]


def test_peek_counts_every_record_of_a_batch(settings: Settings) -> None:
    ensure_topics(settings.kafka_bootstrap_servers or "", settings.topics.all(), settings.topic_partitions)
    _produce_batch(settings, settings.topics.normalized,
                   [(str(n).encode(), json.dumps({"n": n}).encode(), []) for n in range(BATCH)])
    result = CliRunner().invoke(app, ["peek", "normalized"], env=_env(settings))
    assert result.exit_code == 0, result.output
    assert f"{BATCH} record(s)" in result.stdout


def test_dlq_redrive_all_once_then_nothing(settings: Settings) -> None:
    ensure_topics(settings.kafka_bootstrap_servers or "", settings.topics.all(), settings.topic_partitions)
    _produce_batch(settings, settings.topics.deadletter,
                   [(str(n).encode(), json.dumps({"clientId": n}).encode(), _dead_letter_headers(n, settings))
                    for n in range(3)])
    runner, env = CliRunner(), _env(settings)

    listed = runner.invoke(app, ["dlq", "list", "--json"], env=env)
    assert listed.exit_code == 0, listed.output
    assert [row["redriven"] for row in json.loads(listed.stdout)] == [False] * 3

    first = runner.invoke(app, ["dlq", "redrive", "--all", "--yes"], env=env)
    assert first.exit_code == 0, first.output
    assert "records redriven: 3" in first.stdout

    listed = runner.invoke(app, ["dlq", "list", "--json"], env=env)
    assert [row["redriven"] for row in json.loads(listed.stdout)] == [True] * 3

    second = runner.invoke(app, ["dlq", "redrive", "--all", "--yes"], env=env)
    assert second.exit_code == 0, second.output
    assert "records redriven: 0" in second.stdout
    assert len(read_topic(settings.kafka_bootstrap_servers or "", settings.topics.raw)) == 3


def test_replay_dry_run_counts_every_record_of_a_batch(settings: Settings) -> None:
    ensure_topics(settings.kafka_bootstrap_servers or "", settings.topics.all(), settings.topic_partitions)
    since = datetime.now(timezone.utc) - timedelta(seconds=5)
    time.sleep(0.01)
    _produce_batch(
        settings,
        settings.topics.raw,
        [
            (
                str(n).encode(),
                json.dumps({"clientId": n}).encode(),
                [(header_names.RECEIVED_AT, datetime.now(timezone.utc).isoformat().encode())],
            )
            for n in range(BATCH)
        ],
    )
    result = CliRunner().invoke(app, ["replay", "--since", since.isoformat(), "--dry-run"], env=_env(settings))
    assert result.exit_code == 0, result.output
    assert re.search(rf"records would be republished: {BATCH}\b", result.stdout), result.stdout
