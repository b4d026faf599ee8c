"""Broker outage with the real producer and worker processes: 503 + Retry-After while the broker is down, then
both recover by themselves (no restart) once it is back.

Uses its own broker of the session's kind on a fixed port (stopped and started here). Apache Kafka keeps its
log; the in-memory Tansu broker restarts empty, so there the test re-creates the topics and writes the raw
records of before the outage back at their offsets (docs/reliability.md, "Outage on the embedded broker").

A post answered 503 during the outage may still be written once the broker is back (producer/publisher.py,
"Delivery after a timeout": librdkafka keeps it queued for `message.timeout.ms`). Apache Kafka comes back with its
log and the producer's id, so those copies land on the raw topic before the later posts of the same events, are
normalized first, and the later posts are dropped as duplicates by event id. So an event counts as passed on
under the request id of any of its posts. (On the in-memory broker those copies are lost with its restart.)
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from apro_sync.apache_kafka import ApacheKafka
from apro_sync.embedded_broker import EmbeddedBroker
from foundations.kafka_admin import ensure_topics
from tests.conftest import new_restartable_broker
from tests.reliability.generator import generate
from tests.reliability.harness import (
    Post,
    Stack,
    StackConfig,
    post_many,
    read_topic,
    restore_records,
    start_stack,
    wait_until,
)

pytestmark = [pytest.mark.integration, pytest.mark.broker_restart]

RETRY_AFTER = 7


@pytest.fixture
def broker() -> Iterator[EmbeddedBroker | ApacheKafka]:
    with new_restartable_broker() as b:
        yield b


@pytest.fixture
def stack(broker: EmbeddedBroker | ApacheKafka, tmp_path: Path) -> Iterator[Stack]:
    config = StackConfig.for_broker(
        broker.bootstrap,
        tmp_path,
        embedded_broker=not broker.persistent,
        produce_timeout_s=1.5,
        retry_after_s=RETRY_AFTER,
        log_level="INFO",
    )
    yield from start_stack(config)


def _posts(events: list, prefix: str) -> list[Post]:  # type: ignore[type-arg]
    return [Post(e.body, e.content_type, request_id=f"{prefix}-{e.seq:05d}", resource=e.resource) for e in events]


def _passed_on(stack: Stack, request_ids: set[str]) -> set[str]:
    topics = stack.config.topics
    seen: set[str] = set()
    for topic in (topics.normalized, topics.skipped):
        seen |= {r.request_id for r in read_topic(stack.config.bootstrap, topic) if r.request_id in request_ids}
    return seen


def _events_passed_on(stack: Stack, copies: dict[str, int]) -> set[int]:
    """The events (by seq) passed on under the request id of any of their posts (`copies`: request id → seq)."""
    return {copies[request_id] for request_id in _passed_on(stack, set(copies))}


def test_broker_outage_503_then_both_recover(broker: EmbeddedBroker | ApacheKafka, stack: Stack) -> None:
    stream = generate(99, clients=10, events=120)
    # Only events the normalizer passes on (no redeliveries: after the restart, dedupe state is gone with the broker).
    events = [e for e in stream.events if e.expect != "duplicate"]
    before, after = events[:40], events[40:80]
    producer, worker = stack.producer, stack.worker

    answers = asyncio.run(post_many(producer.webhook_url(), _posts(before, "pre")))
    assert {a.status for a in answers} == {202}
    before_ids = {a.request_id for a in answers if a.request_id}
    wait_until(lambda: _passed_on(stack, before_ids) == before_ids, 60, 1.0, "events before the outage normalized")

    raw_before = read_topic(broker.bootstrap, stack.config.topics.raw)

    # ---- outage
    broker.stop()
    t0 = time.monotonic()
    down = asyncio.run(post_many(producer.webhook_url(), _posts(after[:5], "down"), concurrency=5))
    down_s = time.monotonic() - t0
    assert {a.status for a in down} == {503}, [a.status for a in down]
    assert all(a.retry_after == str(RETRY_AFTER) for a in down)
    garbage = asyncio.run(post_many(producer.webhook_url(), [Post(b"{broken", request_id="down-garbage")]))[0]
    assert garbage.status == 503  # cannot quarantine either: retry, never a 400 that would lose the body
    import httpx

    assert httpx.get(producer.base + "/readyz", timeout=5).status_code == 503
    assert httpx.get(producer.base + "/healthz", timeout=5).status_code == 200
    time.sleep(3)  # let the worker notice (heartbeats, fetches and commits fail) before the broker returns
    assert producer.alive and worker.alive, "a process exited during the outage"

    # ---- recovery: same port; an in-memory broker comes back empty: re-create what Apache Kafka still has
    broker.start()
    t_back = time.monotonic()
    if not broker.persistent:
        stack.config.create_topics()
        wid = worker.worker_id
        ensure_topics(broker.bootstrap, [f"{wid}-normalize-dedupe-changelog", f"{wid}-__assignor-__leader"],
                      stack.config.partitions)
        restore_records(broker.bootstrap, raw_before)

    first_202: float | None = None
    retry_statuses: list[int] = []
    deadline = time.monotonic() + 60
    while first_202 is None and time.monotonic() < deadline:  # what AestheticsPro's retries do
        answer = asyncio.run(post_many(producer.webhook_url(), _posts(after[:1], "retry")))[0]
        retry_statuses.append(answer.status)
        if answer.status == 202:
            first_202 = time.monotonic() - t_back
        else:
            assert answer.status == 503, answer.status
            time.sleep(0.5)
    assert first_202 is not None, f"producer did not recover by itself: {retry_statuses[-10:]}"
    assert httpx.get(producer.base + "/readyz", timeout=5).status_code == 200

    answers = asyncio.run(post_many(producer.webhook_url(), _posts(after[1:], "post")))
    assert {a.status for a in answers} == {202}
    assert {a.request_id for a in answers} == {f"post-{e.seq:05d}" for e in after[1:]}
    # Every event posted after the outage (and the one retried until the first 202), under any of its posts'
    # request ids: a 503'd "down" copy written after the restart is passed on instead of the later post.
    copies = {f"{prefix}-{e.seq:05d}": e.seq for e in after for prefix in ("down", "retry", "post")}
    expected = {e.seq for e in after}
    try:
        wait_until(lambda: _events_passed_on(stack, copies) == expected, 120, 1.0,
                   "events after the outage normalized")
    finally:
        recovered_s = time.monotonic() - t_back
        as_down = _passed_on(stack, {f"down-{e.seq:05d}" for e in after[:5]})
        print(f"\noutage: {len(down)} posts during the outage → 503 in {down_s:.1f}s (produce_timeout_s=1.5); "
              f"first 202 {first_202:.1f}s after the broker restart ({len(retry_statuses)} tries); all "
              f"{len(expected)} events since normalized {recovered_s:.1f}s after the restart "
              f"({len(as_down)} as their 503'd copy written after the restart); "
              f"worker restarts: {worker.starts - 1}")
    assert worker.alive and worker.starts == 1, "the worker recovered by restarting, not by itself"
    assert producer.alive and producer.starts == 1
