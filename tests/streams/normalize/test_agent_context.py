"""The normalize agent under Faust's `test_context`: routing, dedupe and dead-lettering without a broker.

`test_context` replaces the agent's Kafka input with an in-memory channel. The agent's one other piece of Kafka
I/O is its batching output producer (librdkafka, outside Faust), replaced here by a recorder with the same
`write` contract. The same agent against the real broker is tested in test_normalize_worker.py.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence
from pathlib import Path

from prometheus_client import REGISTRY

from foundations.config import Settings
from foundations.formats import headers as header_names
from foundations.formats.normalized import NormalizedEvent, Skipped, Unreadable
from streams.normalize.agent import register_normalizer
from streams.normalize.output_producer import OutputRecord
from streams.normalize.rules import normalize
from tests.conftest import FIXTURES
from workarounds.faust_app import build_app


class RecordingOutput:
    """Stands in for OutputProducer: `write` returns once the records are 'durable' (here: recorded)."""

    def __init__(self) -> None:
        self.records: list[OutputRecord] = []
        self.started = False

    def start(self) -> None:
        self.started = True

    async def stop(self) -> None:
        self.started = False

    async def reset(self) -> None:
        pass

    async def write(self, records: Sequence[OutputRecord]) -> None:
        self.records.extend(records)


def run_agent(
    tmp_path: Path, messages: list[tuple[bytes, bytes, dict[str, bytes]]]
) -> tuple[Settings, list[OutputRecord]]:
    settings = Settings(kafka_bootstrap_servers="127.0.0.1:9", topic_prefix="ctx.", topic_partitions=1,
                        worker_id="ctx-worker", state_dir=tmp_path / "state",
                        webhook_tokens="test-token-0123456789abcdef@3", _env_file=None)  # location 3: a label
    app = build_app(settings)
    register_normalizer(app, settings)
    output = RecordingOutput()
    app.normalizer.producer = output  # type: ignore[attr-defined]
    app.normalizer._declared = True  # type: ignore[attr-defined]  # topics live in no broker here

    async def drive() -> None:
        app.finalize()
        app.flow_control.resume()
        async with app.agents["normalize"].test_context() as agent:
            for key, value, headers in messages:
                await agent.put(value=value, key=key, headers=headers)
            for _ in range(200):  # the agent batches (take_events within a short window): wait for its writes
                if len(output.records) >= expected_outputs(messages):
                    break
                await asyncio.sleep(0.02)
            await asyncio.sleep(0.2)  # and nothing more arrives

    asyncio.run(drive())
    return settings, output.records


def expected_outputs(messages: list[tuple[bytes, bytes, dict[str, bytes]]]) -> int:
    ids = set()
    count = 0
    for _key, value, _headers in messages:
        result = normalize(value)
        if isinstance(result, Unreadable) or result.event_id not in ids:
            count += 1
        ids.add(result.event_id)
    return count


def counter(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def test_every_fixture_is_routed_by_the_pure_normalizer(tmp_path: Path) -> None:
    bodies = {p.stem: p.read_bytes() for p in sorted(FIXTURES.glob("*.json"))}
    messages = [(b"k", body, {header_names.RECEIVED_AT: b"2026-11-20T15:58:02.123+00:00"}) for body in bodies.values()]
    settings, records = run_agent(tmp_path, messages)
    topics = settings.topics
    assert len(records) == len(bodies)
    offsets = []
    for (name, body), record in zip(bodies.items(), records):  # one partition: outputs keep input order
        result = normalize(body, {header_names.RECEIVED_AT: "2026-11-20T15:58:02.123+00:00"})
        if isinstance(result, NormalizedEvent):
            assert record.topic == topics.normalized, name
            assert record.key == result.client.id.encode(), name
            value = json.loads(record.value)
            offsets.append(value.pop("raw_offset"))  # the raw record's offset: the only field added
            assert value == json.loads(result.model_dump_json(exclude={"raw_offset"})), name
        elif isinstance(result, Skipped):
            assert record.topic == topics.skipped, name
            assert dict(record.headers)[header_names.REASON] == result.reason.value.encode(), name
        else:
            assert record.topic == topics.deadletter, name
    # Arrival order: the offsets of the raw records, increasing in input order.
    assert all(isinstance(o, int) for o in offsets) and offsets == sorted(set(offsets)), offsets


def test_a_replay_copy_carries_its_original_raw_offset(tmp_path: Path) -> None:
    booked = (FIXTURES / "appointment_created.json").read_bytes()
    again = json.dumps({**json.loads(booked), "eventId": "ctx-redriven"}).encode()
    settings = Settings(topic_prefix="ctx.", _env_file=None)
    origin = f"{settings.topics.raw}:0:4711".encode()
    other = b"ctx.apro.deadletter:0:12"  # a redrive names the dead letter, not a raw record: its own offset counts
    _, records = run_agent(
        tmp_path,
        [
            (b"k", booked, {header_names.REPLAY: b"replay", header_names.REPLAYED_FROM: origin}),
            (b"k", again, {header_names.REPLAY: b"redrive", header_names.REPLAYED_FROM: other}),
        ],
    )
    first, second = (json.loads(r.value)["raw_offset"] for r in records)
    assert first == 4711 and second != 4711 and second >= 0


def test_duplicates_pass_once_and_unreadable_bodies_are_dead_lettered(tmp_path: Path) -> None:
    booked = (FIXTURES / "appointment_created.json").read_bytes()
    event = normalize(booked)
    assert isinstance(event, NormalizedEvent)
    ping = json.dumps({"event": "webhook.test", "eventId": "ctx-ping"}).encode()
    broken = b'{"event": "appointment.created", "client": '
    location = event.location.key
    duplicates_before = counter("apro_events_duplicate_total", location=location)
    pings_before = counter("apro_events_skipped_total", location="unknown", reason="test_ping")

    settings, records = run_agent(tmp_path, [(b"k", booked, {}), (b"k", booked, {}), (b"k", ping, {}),
                                             (b"k", broken, {}), (b"k", booked, {})])
    topics = settings.topics
    assert [r.topic for r in records] == [topics.normalized, topics.skipped, topics.deadletter]
    letter = dict(records[2].headers)
    assert records[2].value == broken  # the raw payload, unchanged, for a redrive
    assert letter[header_names.DLQ_STAGE] == b"normalize" and letter[header_names.REASON].startswith(b"body")
    assert letter[header_names.DLQ_SOURCE_TOPIC] == topics.raw.encode()
    assert counter("apro_events_duplicate_total", location=location) - duplicates_before == 2
    assert counter("apro_events_skipped_total", location="unknown", reason="test_ping") - pings_before == 1
