"""`apro-sync replay`: time parsing and selection rules, then the real command against the real broker."""

from __future__ import annotations

import json
import time
from datetime import datetime, timedelta, timezone

import pytest
from confluent_kafka import Consumer, ConsumerGroupTopicPartitions, Producer, TopicPartition
from confluent_kafka.admin import AdminClient
from typer.testing import CliRunner

from apro_sync.cli import app
from apro_sync.ops.selection import (
    AFTER_UNTIL,
    BEFORE_SINCE,
    NO_LOCATION,
    OTHER_LOCATION,
    REPLAY_COPY,
    ReplayFilter,
    parse_record_id,
    record_id,
    replay_decision,
    replay_headers,
)
from foundations.config import Settings
from foundations.formats import headers as header_names
from foundations.kafka_admin import ensure_topics
from foundations.timeparse import TimeParseError, parse_time

NOW = datetime(2026, 1, 15, 12, 0, tzinfo=timezone.utc)
PHI = "Jane Q. Replaytest"


# --- pure -------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2026-01-15T08:00:00-07:00", datetime(2026, 1, 15, 15, 0, tzinfo=timezone.utc)),
        ("2026-01-15T08:00:00Z", datetime(2026, 1, 15, 8, 0, tzinfo=timezone.utc)),
        ("2026-01-15T08:00:00", datetime(2026, 1, 15, 8, 0, tzinfo=timezone.utc)),  # naive = UTC
        ("2026-01-15", datetime(2026, 1, 15, tzinfo=timezone.utc)),
        ("2h", NOW - timedelta(hours=2)),
        ("30m", NOW - timedelta(minutes=30)),
        ("1d", NOW - timedelta(days=1)),
        ("1w", NOW - timedelta(weeks=1)),
        ("1h30m", NOW - timedelta(minutes=90)),
        ("1768464000", datetime(2026, 1, 15, 8, 0, tzinfo=timezone.utc)),
        ("1768464000500", datetime(2026, 1, 15, 8, 0, 0, 500000, tzinfo=timezone.utc)),
        ("now", NOW),
    ],
)
def test_parse_time_forms(text: str, expected: datetime) -> None:
    parsed = parse_time(text, NOW)
    assert parsed == expected
    assert parsed.tzinfo is not None


@pytest.mark.parametrize("text", ["", "yesterday", "2h ago", "-5m", "2026-13-45"])
def test_parse_time_rejects_garbage(text: str) -> None:
    with pytest.raises(TimeParseError):
        parse_time(text, NOW)


def test_record_ids_round_trip_with_dotted_topics() -> None:
    rid = record_id("tabc.apro.webhooks.raw", 3, 42)
    assert parse_record_id(rid) == ("tabc.apro.webhooks.raw", 3, 42)
    for bad in ("raw:3", "raw:x:1", ":1:2", "raw:-1:2"):
        with pytest.raises(ValueError):
            parse_record_id(bad)


def test_replay_decision_rules() -> None:
    body = json.dumps({"location": {"id": "7", "name": "Scottsdale"}, "client": {"firstName": PHI}}).encode()
    assert replay_decision(ReplayFilter(), 10, {}, body) is None
    assert replay_decision(ReplayFilter(until_ms=9), 10, {}, body) == AFTER_UNTIL
    assert replay_decision(ReplayFilter(until_ms=10), 10, {}, body) is None
    assert replay_decision(ReplayFilter(since_ms=11), 10, {}, body) == BEFORE_SINCE
    assert replay_decision(ReplayFilter(since_ms=10, until_ms=10), 10, {}, body) is None
    assert replay_decision(ReplayFilter(location="7"), 10, {}, body) is None
    assert replay_decision(ReplayFilter(location="scottsdale"), 10, {}, body) is None
    assert replay_decision(ReplayFilter(location="8"), 10, {}, body) == OTHER_LOCATION
    # The token-bound location wins over the body.
    assert replay_decision(ReplayFilter(location="3"), 10, {header_names.TOKEN_LOCATION: "3"}, body) is None
    assert replay_decision(ReplayFilter(location="7"), 10, {header_names.TOKEN_LOCATION: "3"}, body) == OTHER_LOCATION
    assert replay_decision(ReplayFilter(location="7"), 10, {}, b"{not json") == NO_LOCATION
    assert replay_decision(ReplayFilter(), 10, {header_names.REPLAYED_FROM: "raw:0:1"}, body) == REPLAY_COPY


def test_replay_headers_keep_originals_and_mark_the_copy() -> None:
    original = [(header_names.RECEIVED_AT, b"2026-01-15T08:00:00+00:00"), (header_names.REPLAY, b"old"), ("x", b"1")]
    out = replay_headers(original, "raw:1:5")
    assert out == [
        (header_names.RECEIVED_AT, b"2026-01-15T08:00:00+00:00"),
        ("x", b"1"),
        (header_names.REPLAY, b"replay"),
        (header_names.REPLAYED_FROM, b"raw:1:5"),
    ]


# --- against the broker -----------------------------------------------------------------------------------------


def _env(settings: Settings) -> dict[str, str]:
    return {
        "KAFKA_BOOTSTRAP_SERVERS": settings.kafka_bootstrap_servers or "",
        "APRO_TOPIC_PREFIX": settings.topic_prefix,
        "APRO_WORKER_ID": settings.worker_id,
        "APRO_EMBEDDED_BROKER": "true" if settings.embedded_broker else "false",
    }


def _body(n: int, location: str | None) -> bytes:
    body: dict[str, object] = {"event": "client.updated", "clientId": n, "firstName": PHI, "lastName": f"Doe{n}"}
    if location:
        body["location"] = {"id": location, "name": f"Clinic {location}"}
    return json.dumps(body).encode()


def _produce(settings: Settings, batch: list[tuple[int, str | None]]) -> None:
    # One record per batch: Tansu reports a wrong end offset for multi-record batches.
    producer = Producer({"bootstrap.servers": settings.kafka_bootstrap_servers, "partitioner": "murmur2_random",
                         "batch.num.messages": 1})
    for n, location in batch:
        producer.produce(
            settings.topics.raw,
            key=str(n).encode(),
            value=_body(n, location),
            headers=[
                (header_names.RECEIVED_AT, b"2026-01-15T08:00:00+00:00"),
                (header_names.REQUEST_ID, f"req-{n}".encode()),
            ],
        )
    assert producer.flush(10) == 0


def _read_raw(settings: Settings) -> list[tuple[int, int, bytes, bytes, dict[str, str]]]:
    """Every record of the raw topic (partition, offset, key, value, headers), read independently of the tool."""
    consumer = Consumer({"bootstrap.servers": settings.kafka_bootstrap_servers, "group.id": "unused",
                         "enable.auto.commit": False})
    out = []
    try:
        wanted = {}
        for p in range(settings.topic_partitions):
            low, high = consumer.get_watermark_offsets(TopicPartition(settings.topics.raw, p), timeout=10)
            if high > low:
                wanted[p] = (low, high)
        consumer.assign([TopicPartition(settings.topics.raw, p, low) for p, (low, _) in wanted.items()])
        deadline = time.monotonic() + 15
        total = sum(high - low for low, high in wanted.values())
        while len(out) < total and time.monotonic() < deadline:
            for msg in consumer.consume(100, timeout=0.5):
                if msg.error() or msg.offset() >= wanted[msg.partition()][1]:
                    continue
                out.append((msg.partition(), msg.offset(), msg.key(), msg.value(), header_names.to_dict(msg.headers())))
        assert len(out) == total
    finally:
        consumer.close()
    return out


def _gap() -> datetime:
    """A point strictly between two batches by broker write time (which has millisecond resolution)."""
    time.sleep(0.6)
    mark = datetime.now(timezone.utc)
    time.sleep(0.6)
    return mark


@pytest.fixture
def raw_batches(settings: Settings) -> tuple[Settings, datetime, datetime]:
    """Batch A, gap (t1), batch B, gap (t2), batch C on the raw topic."""
    ensure_topics(settings.kafka_bootstrap_servers or "", settings.topics.all(), settings.topic_partitions)
    _produce(settings, [(n, "7") for n in range(1, 5)])  # A
    t1 = _gap()
    _produce(settings, [(10, "7"), (11, "8"), (12, None), (13, "7")])  # B
    t2 = _gap()
    _produce(settings, [(20, "7"), (21, "8"), (22, "7")])  # C
    return settings, t1, t2


def _copies(settings: Settings) -> list[tuple[int, int, bytes, bytes, dict[str, str]]]:
    return [r for r in _read_raw(settings) if header_names.REPLAYED_FROM in r[4]]


def test_replay_republishes_exactly_the_range_and_location(raw_batches: tuple[Settings, datetime, datetime]) -> None:
    settings, t1, t2 = raw_batches
    runner = CliRunner()
    env = _env(settings)

    dry = runner.invoke(app, ["replay", "--since", t1.isoformat(), "--until", t2.isoformat(), "--dry-run"], env=env)
    assert dry.exit_code == 0, dry.output
    assert "records would be republished: 4" in dry.stdout
    assert _copies(settings) == []

    result = runner.invoke(app, ["replay", "--since", t1.isoformat(), "--until", t2.isoformat(), "--yes"], env=env)
    assert result.exit_code == 0, result.output
    assert "records republished: 4" in result.stdout
    assert PHI not in result.output
    before = {(p, o): (k, v, h) for p, o, k, v, h in _read_raw(settings) if header_names.REPLAYED_FROM not in h}
    copies = _copies(settings)
    assert sorted(int(k) for _, _, k, _, _ in copies) == [10, 11, 12, 13]
    for partition, _, key, value, hdrs in copies:
        topic, src_partition, src_offset = parse_record_id(hdrs[header_names.REPLAYED_FROM])
        assert topic == settings.topics.raw and src_partition == partition
        orig_key, orig_value, orig_headers = before[(src_partition, src_offset)]
        assert (key, value) == (orig_key, orig_value)
        assert hdrs[header_names.REPLAY] == "replay"
        assert {
            k: v for k, v in hdrs.items() if k not in (header_names.REPLAY, header_names.REPLAYED_FROM)
        } == orig_headers

    # Since t2, location 7 only: C's two location-7 records; the copies made above are not copied again.
    result = runner.invoke(app, ["replay", "--since", t2.isoformat(), "--location", "7", "--yes"], env=env)
    assert result.exit_code == 0, result.output
    assert "records republished: 2" in result.stdout, result.stdout
    assert "left out (other location): 1" in result.stdout
    assert "left out (already a replay copy): 4" in result.stdout
    assert sorted(int(k) for _, _, k, _, _ in _copies(settings)) == [10, 11, 12, 13, 20, 22]


def test_replay_clear_errors(settings: Settings) -> None:
    runner = CliRunner()
    env = _env(settings)
    missing = runner.invoke(app, ["replay", "--since", "1h", "--yes"], env=env)  # topics not created
    assert missing.exit_code == 1
    assert "does not exist" in missing.stderr
    backwards = runner.invoke(app, ["replay", "--since", "1h", "--until", "2h"], env=env)
    assert backwards.exit_code == 2
    assert "is after --until" in backwards.output
    garbage = runner.invoke(app, ["replay", "--since", "last tuesday"], env=env)
    assert garbage.exit_code == 2
    assert "not a time" in garbage.output
    unreachable = runner.invoke(app, ["replay", "--since", "1h", "--yes"],
                                env={**env, "KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:1"})
    assert unreachable.exit_code == 1
    assert "cannot reach the Kafka broker" in unreachable.stderr


def _committed(settings: Settings, group: str) -> dict[int, int]:
    admin = AdminClient({"bootstrap.servers": settings.kafka_bootstrap_servers})
    request = ConsumerGroupTopicPartitions(group, [TopicPartition(settings.topics.raw, p)
                                                   for p in range(settings.topic_partitions)])
    result = admin.list_consumer_group_offsets([request], request_timeout=10)[group].result()
    return {tp.partition: tp.offset for tp in result.topic_partitions}


def test_reset_offsets_refuses_with_active_members_then_rewinds(
        raw_batches: tuple[Settings, datetime, datetime]) -> None:
    settings, t1, _ = raw_batches
    runner = CliRunner()
    env = _env(settings)
    worker = Consumer({"bootstrap.servers": settings.kafka_bootstrap_servers, "group.id": settings.worker_id,
                       "session.timeout.ms": 2000, "heartbeat.interval.ms": 500, "auto.offset.reset": "latest",
                       "enable.auto.commit": False})
    worker.subscribe([settings.topics.raw])
    deadline = time.monotonic() + 20
    while not worker.assignment() and time.monotonic() < deadline:
        worker.poll(0.2)
    assert worker.assignment(), "the stand-in worker never joined its group"
    try:
        refused = runner.invoke(app, ["replay", "--since", t1.isoformat(), "--reset-offsets", "--yes"], env=env)
        assert refused.exit_code == 1
        assert "stop the workers first" in refused.stderr
    finally:
        worker.close()

    # Expected: per partition, the first offset of batch B.
    records = _read_raw(settings)
    first_b: dict[int, int] = {}
    ends: dict[int, int] = {}
    for partition, offset, key, _, _ in records:
        ends[partition] = max(ends.get(partition, 0), offset + 1)
        if int(key) >= 10:
            first_b[partition] = min(first_b.get(partition, offset), offset)
    expected = {p: first_b.get(p, ends.get(p, 0)) for p in range(settings.topic_partitions)}

    deadline = time.monotonic() + 20
    while True:  # the group empties once the broker processed the leave
        result = runner.invoke(app, ["replay", "--since", t1.isoformat(), "--reset-offsets", "--yes"], env=env)
        if result.exit_code == 0 or time.monotonic() > deadline:
            break
        time.sleep(0.3)
    assert result.exit_code == 0, result.output
    assert _committed(settings, settings.worker_id) == expected

    # --until/--location are refused in this mode rather than silently ignored.
    mixed = runner.invoke(app, ["replay", "--since", t1.isoformat(), "--location", "7", "--reset-offsets", "--yes"],
                          env=env)
    assert mixed.exit_code == 1
    assert "--location" in mixed.stderr


