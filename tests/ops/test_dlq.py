"""`apro-sync dlq list|redrive`: selection and header rules, then the real commands against the real broker."""

from __future__ import annotations

import json
import time

import pytest
from confluent_kafka import Consumer, Producer, TopicPartition
from typer.testing import CliRunner

from apro_sync.cli import app
from apro_sync.ops.selection import DlqEntry, dlq_entry, redrive_headers, redrive_target, select_for_redrive
from foundations.config import Settings
from foundations.formats import headers as header_names
from foundations.kafka_admin import ensure_topics

PHI_NAME = "Marisol Dlqtestperson"
PHI_EMAIL = "marisol.dlq@example.com"
PHI_PHONE = "+14805550199"


# --- pure -------------------------------------------------------------------------------------------------------


def _entry(rid: str, stage: str = "normalize", redriven: bool = False) -> DlqEntry:
    return DlqEntry(rid, stage, "r", "e", "loc", 0, "", "", redriven)


def test_select_for_redrive() -> None:
    entries = [_entry("d:0:0"), _entry("d:0:1", redriven=True), _entry("d:1:0", stage="sync")]
    chosen, skipped, missing = select_for_redrive(entries, ids=[], all_=True, stage=None, force=False)
    assert [e.id for e in chosen] == ["d:0:0", "d:1:0"] and skipped == {"already redriven": 1} and missing == []
    chosen, skipped, _ = select_for_redrive(entries, ids=[], all_=True, stage="sync", force=False)
    assert [e.id for e in chosen] == ["d:1:0"] and skipped["stage is not sync"] == 2
    chosen, _, missing = select_for_redrive(entries, ids=["d:0:1", "d:9:9"], all_=False, stage=None, force=True)
    assert [e.id for e in chosen] == ["d:0:1"] and missing == ["d:9:9"]


def test_redrive_headers_drop_dead_letter_headers_and_count_attempts() -> None:
    original = [
        (header_names.RECEIVED_AT, b"2026-01-15T08:00:00+00:00"),
        (header_names.REASON, b"boom"),
        (header_names.DLQ_STAGE, b"sync"),
        (header_names.DLQ_ATTEMPTS, b"2"),
        (header_names.DLQ_SOURCE_TOPIC, b"n"),
        (header_names.TOKEN_LOCATION, b"3"),
    ]
    assert redrive_headers(original, "d:0:5") == [
        (header_names.RECEIVED_AT, b"2026-01-15T08:00:00+00:00"),
        (header_names.TOKEN_LOCATION, b"3"),
        (header_names.DLQ_ATTEMPTS, b"3"),
        (header_names.REPLAY, b"redrive"),
        (header_names.REPLAYED_FROM, b"d:0:5"),
    ]
    assert (header_names.DLQ_ATTEMPTS, b"1") in redrive_headers([], "d:0:6")


def test_redrive_target_keeps_partition_when_it_exists() -> None:
    hdrs = {header_names.DLQ_SOURCE_TOPIC: "raw", header_names.DLQ_SOURCE_PARTITION: "2"}
    assert redrive_target(hdrs, "fallback", {"raw": 4}) == ("raw", 2)
    assert redrive_target(hdrs, "fallback", {"raw": 2}) == ("raw", None)  # partition gone: hash the key
    assert redrive_target({}, "fallback", {"fallback": 4}) == ("fallback", None)


def test_dlq_entry_for_quarantine_record() -> None:
    entry = dlq_entry(
        "q:0:0",
        {
            header_names.REASON: "body is not valid JSON (line 1)",
            header_names.RECEIVED_AT: "2026-01-15T08:00:00Z",
            header_names.TOKEN_LOCATION: "3",
        },
        0,
        default_stage="intake",
        redriven=False,
    )
    assert (entry.stage, entry.location, entry.at, entry.attempts) == ("intake", "3", "2026-01-15T08:00:00Z", 0)


# --- against the broker -----------------------------------------------------------------------------------------


def _env(settings: Settings) -> dict[str, str]:
    return {
        "KAFKA_BOOTSTRAP_SERVERS": settings.kafka_bootstrap_servers or "",
        "APRO_TOPIC_PREFIX": settings.topic_prefix,
        "APRO_WORKER_ID": settings.worker_id,
        "APRO_EMBEDDED_BROKER": "true" if settings.embedded_broker else "false",
    }


def _value(n: int) -> bytes:
    return json.dumps({"clientId": n, "firstName": PHI_NAME, "email": PHI_EMAIL, "phone": PHI_PHONE}).encode()


def _dead_letter(settings: Settings, n: int, stage: str, source: str, partition: int, offset: int,
                 attempts: int | None = None) -> None:
    headers = [
        (header_names.RECEIVED_AT, b"2026-01-15T08:00:00+00:00"),
        (header_names.REQUEST_ID, f"req-{n}".encode()),
        (header_names.DLQ_STAGE, stage.encode()),
        (header_names.REASON, b"email: not an address" if stage == "normalize" else b"ghl 422: contact rejected"),
        (header_names.DLQ_EVENT_ID, f"evt-{n}".encode()),
        (header_names.DLQ_SOURCE_TOPIC, source.encode()),
        (header_names.DLQ_SOURCE_PARTITION, str(partition).encode()),
        (header_names.DLQ_SOURCE_OFFSET, str(offset).encode()),
        (header_names.DLQ_AT, b"2026-01-15T08:00:01+00:00"),
        (header_names.DLQ_LOCATION, b"7"),
    ]
    if attempts is not None:
        headers.append((header_names.DLQ_ATTEMPTS, str(attempts).encode()))
    producer = Producer({"bootstrap.servers": settings.kafka_bootstrap_servers, "batch.num.messages": 1})
    producer.produce(settings.topics.deadletter, key=str(n).encode(), value=_value(n), headers=headers, partition=0)
    assert producer.flush(10) == 0


def _read(settings: Settings, topic: str) -> list[tuple[int, bytes, bytes, dict[str, str]]]:
    """Every record of `topic` (partition, key, value, headers), read independently of the tool."""
    consumer = Consumer({"bootstrap.servers": settings.kafka_bootstrap_servers, "group.id": "unused",
                         "enable.auto.commit": False})
    out = []
    try:
        wanted = {}
        for p in range(settings.topic_partitions):
            low, high = consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)
            if high > low:
                wanted[p] = (low, high)
        consumer.assign([TopicPartition(topic, p, low) for p, (low, _) in wanted.items()])
        total = sum(high - low for low, high in wanted.values())
        deadline = time.monotonic() + 15
        while len(out) < total and time.monotonic() < deadline:
            for msg in consumer.consume(100, timeout=0.2):
                if msg.error() or msg.offset() >= wanted[msg.partition()][1]:
                    continue
                out.append((msg.partition(), msg.key(), msg.value(), header_names.to_dict(msg.headers())))
        assert len(out) == total
    finally:
        consumer.close()
    return out


@pytest.fixture
def dead_letters(settings: Settings) -> Settings:
    ensure_topics(settings.kafka_bootstrap_servers or "", settings.topics.all(), settings.topic_partitions)
    _dead_letter(settings, 1, "normalize", settings.topics.raw, 2, 40)
    _dead_letter(settings, 2, "sync", settings.topics.normalized, 1, 17, attempts=1)
    _dead_letter(settings, 3, "normalize", settings.topics.raw, 3, 41)
    return settings


def _list(runner: CliRunner, settings: Settings, *args: str) -> list[dict[str, object]]:
    result = runner.invoke(app, ["dlq", "list", "--json", *args], env=_env(settings))
    assert result.exit_code == 0, result.output
    for secret in (PHI_NAME, PHI_EMAIL, PHI_PHONE, "Marisol"):
        assert secret not in result.output
    return json.loads(result.stdout)


def test_dlq_list_shows_headers_never_payloads(dead_letters: Settings) -> None:
    settings = dead_letters
    runner = CliRunner()
    dlq = settings.topics.deadletter
    rows = _list(runner, settings)
    assert [r["id"] for r in rows] == [f"{dlq}:0:0", f"{dlq}:0:1", f"{dlq}:0:2"]
    first, second = rows[0], rows[1]
    assert first == {"id": f"{dlq}:0:0", "stage": "normalize", "reason": "email: not an address",
                     "event_id": "evt-1", "location": "7", "attempts": 0, "at": "2026-01-15T08:00:01+00:00",
                     "source": f"{settings.topics.raw}:2:40", "redriven": False}
    assert (second["stage"], second["attempts"], second["source"]) == ("sync", 1, f"{settings.topics.normalized}:1:17")

    assert [r["event_id"] for r in _list(runner, settings, "--stage", "sync")] == ["evt-2"]
    assert len(_list(runner, settings, "--limit", "2")) == 2

    table = runner.invoke(app, ["dlq", "list"], env=_env(settings))
    assert table.exit_code == 0, table.output
    assert f"{dlq}:0:1" in table.stdout and "ghl 422: contact rejected" in table.stdout
    for secret in (PHI_NAME, PHI_EMAIL, PHI_PHONE):
        assert secret not in table.output

    bad = runner.invoke(app, ["dlq", "list", "--stage", "nope"], env=_env(settings))
    assert bad.exit_code == 2


def test_dlq_redrive_by_id_then_all(dead_letters: Settings) -> None:
    settings = dead_letters
    runner = CliRunner()
    env = _env(settings)
    dlq = settings.topics.deadletter
    first = f"{dlq}:0:0"

    result = runner.invoke(app, ["dlq", "redrive", "--id", first, "--yes"], env=env)
    assert result.exit_code == 0, result.output
    assert "records redriven: 1" in result.stdout
    raw = _read(settings, settings.topics.raw)
    assert len(raw) == 1
    partition, key, value, hdrs = raw[0]
    assert (partition, key, value) == (2, b"1", _value(1))  # exact value, same key, source partition
    assert hdrs == {
        header_names.RECEIVED_AT: "2026-01-15T08:00:00+00:00",
        header_names.REQUEST_ID: "req-1",
        header_names.DLQ_ATTEMPTS: "1",
        header_names.REPLAY: "redrive",
        header_names.REPLAYED_FROM: first,
    }
    rows = {r["id"]: r for r in _list(runner, settings)}
    assert rows[first]["redriven"] is True
    assert [r["redriven"] for r in rows.values()] == [True, False, False]

    # Asked again by id: refused as already redriven unless --force.
    again = runner.invoke(app, ["dlq", "redrive", "--id", first, "--yes"], env=env)
    assert again.exit_code == 0 and "records redriven: 0" in again.stdout and "already redriven" in again.stdout

    result = runner.invoke(app, ["dlq", "redrive", "--all", "--yes"], env=env)
    assert result.exit_code == 0, result.output
    assert "records redriven: 2" in result.stdout and "left out (already redriven): 1" in result.stdout
    assert len(_read(settings, settings.topics.raw)) == 2
    normalized = _read(settings, settings.topics.normalized)
    assert [(p, k, v, h[header_names.DLQ_ATTEMPTS]) for p, k, v, h in normalized] == [(1, b"2", _value(2), "2")]
    assert all(r["redriven"] for r in _list(runner, settings))
    assert _list(runner, settings, "--pending") == []

    result = runner.invoke(app, ["dlq", "redrive", "--all", "--yes"], env=env)
    assert result.exit_code == 0 and "records redriven: 0" in result.stdout
    assert len(_read(settings, settings.topics.raw)) == 2

    unknown = runner.invoke(app, ["dlq", "redrive", "--id", f"{dlq}:0:99", "--yes"], env=env)
    assert unknown.exit_code == 1 and "no such record" in unknown.stderr
    neither = runner.invoke(app, ["dlq", "redrive", "--yes"], env=env)
    assert neither.exit_code == 1 and "--all" in neither.stderr


def test_quarantine_list_and_redrive_to_raw(settings: Settings) -> None:
    """Producer quarantine records (REASON only, no source topic) list as stage intake and redrive to the raw topic."""
    ensure_topics(settings.kafka_bootstrap_servers or "", settings.topics.all(), settings.topic_partitions)
    body = b'{"firstName": "' + PHI_NAME.encode() + b'", '  # truncated JSON, as AestheticsPro sometimes sends
    producer = Producer({"bootstrap.servers": settings.kafka_bootstrap_servers, "batch.num.messages": 1})
    producer.produce(
        settings.topics.quarantine,
        key=b"req-9",
        value=body,
        partition=1,
        headers=[
            (header_names.RECEIVED_AT, b"2026-01-15T08:00:00+00:00"),
            (header_names.TOKEN_LOCATION, b"3"),
            (header_names.REASON, b"body is not valid JSON (line 1)"),
        ],
    )
    assert producer.flush(10) == 0
    runner = CliRunner()
    rows = _list(runner, settings, "--quarantine")
    rid = f"{settings.topics.quarantine}:1:0"
    assert [(r["id"], r["stage"], r["reason"], r["location"]) for r in rows] == [
        (rid, "intake", "body is not valid JSON (line 1)", "3")]
    assert _list(runner, settings) == []  # the dead-letter topic is a different list

    result = runner.invoke(app, ["dlq", "redrive", "--quarantine", "--all", "--yes"], env=_env(settings))
    assert result.exit_code == 0, result.output
    assert "records redriven: 1" in result.stdout
    [(_, key, value, hdrs)] = _read(settings, settings.topics.raw)
    assert (key, value, hdrs[header_names.REPLAYED_FROM], hdrs[header_names.TOKEN_LOCATION]) == (
        b"req-9",
        body,
        rid,
        "3",
    )
    assert header_names.REASON not in hdrs
    assert [r["redriven"] for r in _list(runner, settings, "--quarantine")] == [True]
