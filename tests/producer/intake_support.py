"""Helpers for the producer tests: run the intake on a loopback port, read topics back from the broker."""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

import aiohttp
from confluent_kafka import OFFSET_BEGINNING, Consumer, Message, TopicPartition

from foundations.config import Settings
from foundations.kafka_admin import ensure_topics
from producer.publisher import Publisher
from producer.server import start_server

TOKEN = "test-token-0123456789abcdef"
LOC3_TOKEN = "loc3-token-0123456789abcdef"  # bound to location "3" in the `settings` fixture


@dataclass
class Intake:
    base: str
    session: aiohttp.ClientSession
    settings: Settings
    publisher: Publisher

    def url(self, token: str = TOKEN, resource: str | None = None) -> str:
        path = f"/webhooks/aestheticspro/{token}" + (f"/{resource}" if resource else "")
        return self.base + path


def create_intake_topics(settings: Settings) -> None:
    assert settings.kafka_bootstrap_servers
    ensure_topics(settings.kafka_bootstrap_servers, [settings.topics.raw, settings.topics.quarantine],
                  settings.topic_partitions)


@asynccontextmanager
async def running_intake(settings: Settings, create_topics: bool = True) -> AsyncIterator[Intake]:
    if create_topics:
        create_intake_topics(settings)
    publisher = Publisher.from_settings(settings)
    await publisher.start()
    runner, port = await start_server(settings, publisher, host="127.0.0.1", port=0)
    try:
        async with aiohttp.ClientSession() as session:
            yield Intake(f"http://127.0.0.1:{port}", session, settings, publisher)
    finally:
        await runner.cleanup()
        await publisher.close(timeout_s=2)


def read_topic(bootstrap: str, topic: str, timeout_s: float = 20.0) -> list[Message]:
    """Every record of `topic`, read from the beginning up to the high watermark of each partition."""
    consumer = Consumer({
        "bootstrap.servers": bootstrap,
        "group.id": f"test-{uuid.uuid4().hex}",
        "enable.auto.commit": False,
        "session.timeout.ms": 2000,
        "log_level": 0,
    })
    try:
        partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
        ends: dict[int, int] = {}
        for p in partitions:
            _low, high = consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)
            if high > 0:
                ends[p] = high
        if not ends:
            return []
        consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in ends])
        records: list[Message] = []
        next_offset = {p: 0 for p in ends}
        deadline = time.monotonic() + timeout_s
        while any(next_offset[p] < ends[p] for p in ends):
            if time.monotonic() > deadline:
                raise TimeoutError(f"read {len(records)} records of {topic}, expected up to offsets {ends}")
            for msg in consumer.consume(500, timeout=0.5):
                if msg.error():
                    continue
                records.append(msg)
                next_offset[msg.partition()] = msg.offset() + 1
        return records
    finally:
        consumer.close()


def headers_of(msg: Message) -> dict[str, str]:
    from foundations.formats.headers import to_dict

    return to_dict(msg.headers())
