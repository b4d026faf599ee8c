"""Hostile input through the real producer and worker processes: nothing is a server error, nothing is lost.

CI mode posts 10,000 deterministic bodies (APRO_LONG=1: 50,000): broken JSON, huge numbers, deep nesting, wrong
types, unicode (RTL, NUL, lone surrogates, emoji), form bodies with bracket and duplicated keys, empty bodies,
mutated fixtures, wrong content types, oversized bodies. Then:
- the producer answered only 202 / 400 / 413 (never 5xx) while the broker was up;
- every 400 is in quarantine once, with a reason; every 202 is on the raw topic once;
- every accepted record ends up exactly once in normalized, skipped (with reason) or dead-letter (with reason,
  pointing back at its raw offset), except redeliveries of an event already passed on — matched by the
  producer's request id, which every output record carries, against an oracle that applies the pure
  normalizer and the agent's dedupe rule to the raw topic in offset order;
- the worker's group committed offsets reach the raw topic's end offsets (no stalled partition).
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from foundations.formats import headers as header_names
from foundations.formats.normalized import NormalizedEvent, Skipped, Unreadable
from streams.normalize.rules import normalize
from tests.conftest import FIXTURES
from tests.reliability.generator import generate
from tests.reliability.harness import (
    Post,
    Record,
    Stack,
    StackConfig,
    next_offsets,
    post_many,
    read_topic,
    scrape,
    start_stack,
    wait_committed_to_end,
    wait_until,
)

pytestmark = [pytest.mark.integration, pytest.mark.broker_neutral]

LONG = os.environ.get("APRO_LONG") == "1"
FUZZ_COUNT = 50_000 if LONG else 10_000
MAX_BODY = 256 * 1024
SEED = 20261201

JSON = "application/json"
FORM = "application/x-www-form-urlencoded"
WRONG_TYPES = (
    "text/plain",
    "application/xml",
    "multipart/form-data; boundary=x",
    None,
    "application/json; charset=latin-1",
    "application/x-www-form-urlencoded; charset=utf-8",
    "image/png",
    "application/vnd.api+json",
    "",
)
UNICODE = ("\u202eevil\u202c", "\u0000", "\u200f\u05e9\u05dc\u05d5\u05dd", "\U0001f489\U0001f3fd", "\ufeff", "\uffff",
           "e\u0301", "\u0630\u0644\u0643", "\u2028", "Z\u0336a\u0336")


# --------------------------------------------------------------------------------------------- the corpus


class Corpus:
    """Deterministic hostile bodies. Lone surrogates go only into names (ids and locations: see the bug tests)."""

    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)
        fixtures = [json.loads(p.read_bytes()) for p in sorted(FIXTURES.glob("*.json"))]
        generated = [json.loads(e.body) for e in generate(seed, clients=20, events=120).events
                     if e.content_type == JSON]
        self.valid: list[dict[str, Any]] = fixtures + generated
        self.n = 0

    def fresh_id(self) -> str:
        self.n += 1
        return f"fz-evt-{self.n:06d}-{self.rng.getrandbits(32):08x}"

    def pick(self) -> dict[str, Any]:
        body = json.loads(json.dumps(self.rng.choice(self.valid)))  # deep copy
        if self.rng.random() < 0.85:  # most webhooks carry their own id; the rest reuse one (redeliveries)
            for key in ("eventId", "EVENTID"):
                if key in body:
                    body[key] = self.fresh_id()
        return body

    def junk_value(self) -> Any:
        return self.rng.choice([
            None, True, False, 0, -1, 1.5, "", " ", [], {}, [1, 2], {"a": {"b": None}}, "null", "NaN",
            "9" * 200, -(10 ** 30), "2026-13-45", "not a date", "$-0.00", "1,2,3", self.rng.choice(UNICODE),
            {"id": {"id": 1}}, ["48213"], 1e308,
        ])

    def mutate(self, node: Any, depth: int = 0) -> Any:
        if isinstance(node, dict):
            out: dict[str, Any] = {}
            for key, value in node.items():
                roll = self.rng.random()
                if roll < 0.06:
                    continue  # drop the key
                if roll < 0.12:
                    out[key] = self.junk_value()
                elif roll < 0.16:
                    out[key.upper() if self.rng.random() < 0.5 else key.lower()] = value
                else:
                    out[key] = self.mutate(value, depth + 1)
            return out
        if isinstance(node, list):
            return [self.mutate(v, depth + 1) for v in node]
        return node

    # ----------------------------------------------------------------------------------- categories

    def broken_json(self) -> Post:
        text = json.dumps(self.pick())
        cut = self.rng.randrange(1, len(text))
        variants = [
            text[:cut],
            text[:cut] + "\x00" + text[cut:],
            text.replace('"', "'", 3),
            text[:-1] + ",}",
            text + "garbage",
            "{" * 5 + text,
            text.replace(":", "", 1),
            text.encode().hex(),
        ]
        body = self.rng.choice(variants).encode()
        if self.rng.random() < 0.2:
            body = body[:cut] + b"\xff\xfe" + body[cut:]  # invalid UTF-8
        return Post(body, JSON)

    def huge_numbers(self) -> Post:
        body = self.pick()
        client = body.get("client") if isinstance(body.get("client"), dict) else body
        choice = self.rng.randrange(6)
        raw: str
        if choice == 0:
            raw = json.dumps(body).replace('"clientId": "', '"clientId": 1e400, "x": "', 1)
        elif choice == 1:
            raw = json.dumps(body)[:-1] + ', "total": ' + "9" * 5000 + "}"  # int beyond the digit limit
        elif choice == 2:
            client["clientId"] = "1" + "0" * 5000  # as a string
            raw = json.dumps(body)
        elif choice == 3:
            body.setdefault("invoice", {})
            if isinstance(body["invoice"], dict):
                body["invoice"]["total"] = "1" + "0" * 5000
                body["invoice"]["invoiceId"] = "INV-HUGE"
            raw = json.dumps(body)
        elif choice == 4:
            raw = json.dumps(body)[:-1] + ', "amountPaid": -1e400, "tax": 1e-400}'
        else:
            raw = json.dumps(body)[:-1] + ', "total_cents": 123456789012345678901234567890}'
        return Post(raw.encode(), JSON)

    def deep(self) -> Post:
        depth = self.rng.choice([65, 66, 100, 500, 2000, 20000])
        kind = self.rng.randrange(3)
        if kind == 0:
            raw = '{"client": ' + '{"a": ' * depth + "1" + "}" * depth + "}"
        elif kind == 1:
            raw = '{"event": "client.created", "x": ' + "[" * depth + "]" * depth + "}"
        else:  # bracket nesting in a form body
            raw = "client" + "[a]" * depth + "=1&event=client.created"
            return Post(raw.encode(), FORM)
        return Post(raw.encode(), JSON)

    def wrong_types(self) -> Post:
        body = self.pick()
        choice = self.rng.randrange(8)
        client = body.get("client") if isinstance(body.get("client"), dict) else None
        if choice == 0 and client is not None:
            client["clientId"] = {"id": "48213"}
        elif choice == 1 and client is not None:
            client["clientId"] = ["48213", "1"]
        elif choice == 2:
            body["invoice"] = {"invoiceId": "INV-1", "status": "Paid", "total": True, "amountPaid": False}
        elif choice == 3:
            body["client"] = ["not", "an", "object"]
        elif choice == 4:
            body["event"] = {"kind": "appointment.created"}
        elif choice == 5:
            body["appointment"] = {"appointmentId": 5, "status": 3, "startDateTime": [2026, 12, 1], "services": 7}
        elif choice == 6:
            body["location"] = ["3", "7"]
        else:
            return Post(self.rng.choice([b"[]", b"[1,2]", b'"text"', b"42", b"null", b"true", b"[{}, {}]"]), JSON)
        return Post(json.dumps(body).encode(), JSON)

    def unicode(self) -> Post:
        body = self.pick()
        client = body.get("client") if isinstance(body.get("client"), dict) else body.setdefault("client", {})
        for field in ("firstName", "lastName", "email", "mobilePhone", "address"):
            if self.rng.random() < 0.5 and isinstance(client, dict):
                client[field] = self.rng.choice(UNICODE) + str(client.get(field) or "") + self.rng.choice(UNICODE)
        text = json.dumps(body, ensure_ascii=self.rng.random() < 0.5)
        if self.rng.random() < 0.3 and isinstance(client, dict) and "firstName" in client:
            # A lone surrogate escape in a name (valid JSON, not encodable as UTF-8).
            text = text.replace('"firstName": "', '"firstName": "\\ud83d', 1)
        return Post(text.encode("utf-8"), JSON)

    def form(self) -> Post:
        variants = [
            "event=client.created&client[clientId]=48213&client[email]=a@example.com&client[clientId]=99",
            "event=client.created&client[clientId]=1&client=flat",
            "client=flat&client[clientId]=2&event=appointment.created",
            "a[]=1&a[]=2&event=client.updated&clientId=3&email=x@example.com",
            "=&&=&event=x",
            "event=client.created&" + "&".join(f"f{i}=v" for i in range(2100)),
            "data=" + json.dumps(self.pick()),
            "payload={not json",
            "event=client.created&client[clientId]=%ZZ&client[email]=%00",
            "event=invoice.paid&invoice[invoiceId]=I1&invoice[total]=$1,0,0&clientId=7&phone=4805550100",
            "%E2%80%AE=%F0%9F%92%89&clientId=8&email=b@example.com&event=client.created",
            "event=client.created&clientId=9&email=c@example.com&clientId=10",
        ]
        return Post(self.rng.choice(variants).encode(), self.rng.choice([FORM, None, "text/plain"]))

    def empty(self) -> Post:
        return Post(self.rng.choice([b"", b" ", b"\n\t", b"{}", b"[]", b"null", b"\xef\xbb\xbf", b"\xef\xbb\xbf{}"]),
                    self.rng.choice([JSON, FORM, None]))

    def mutated(self) -> Post:
        body = self.mutate(self.pick())
        if self.rng.random() < 0.2:
            body = {"data": body, "id": self.fresh_id()}
        return Post(json.dumps(body).encode(), self.rng.choice([JSON, JSON, "application/json; charset=utf-8"]))

    def wrong_content_type(self) -> Post:
        post = self.rng.choice([self.mutated, self.broken_json, self.form])()
        return Post(post.body, self.rng.choice(WRONG_TYPES))

    def oversized(self) -> Post:
        body = json.dumps({**self.pick(), "notes": "x" * (MAX_BODY + self.rng.randrange(1, 50_000))})
        return Post(body.encode(), JSON)

    def bodies(self, count: int) -> list[Post]:
        weighted = [(self.broken_json, 12), (self.huge_numbers, 6), (self.deep, 5), (self.wrong_types, 10),
                    (self.unicode, 12), (self.form, 10), (self.empty, 4), (self.mutated, 30),
                    (self.wrong_content_type, 10), (self.oversized, 1)]
        makers = [m for m, w in weighted for _ in range(w)]
        posts: list[Post] = []
        for i in range(count):
            post = self.rng.choice(makers)()
            resource = self.rng.choice([None, None, None, "clients", "appointments", "invoices"])
            posts.append(Post(post.body, post.content_type, request_id=f"fz-{i:06d}", resource=resource))
        return posts


# --------------------------------------------------------------------------------------------- the oracle


def expected_outcomes(raw: list[Record]) -> dict[str, str]:
    """request id → normalized | skipped | deadletter | duplicate, applying the worker's rules in offset order.

    Mirrors streams/normalize/agent.py `Normalizer.route`: Unreadable → dead-letter; an event id already passed
    on in the same partition → duplicate (dropped); a result that cannot be serialized → dead-letter.
    """
    out: dict[str, str] = {}
    passed: set[tuple[int, str]] = set()
    for rec in sorted(raw, key=lambda r: (r.partition, r.offset)):
        assert rec.request_id and rec.value is not None
        result = normalize(rec.value, rec.headers)
        if isinstance(result, Unreadable):
            out[rec.request_id] = "deadletter"
            continue
        key = (rec.partition, result.event_id)
        if key in passed:
            out[rec.request_id] = "duplicate"
            continue
        try:
            result.model_dump_json().encode("utf-8")
            if isinstance(result, NormalizedEvent):
                result.client.id.encode()
            else:
                assert isinstance(result, Skipped)
                (result.client_id or result.event_id).encode()
        except Exception:  # noqa: BLE001 - the agent dead-letters these with "internal error: <type>"
            out[rec.request_id] = "deadletter"
            continue
        passed.add(key)
        out[rec.request_id] = "normalized" if isinstance(result, NormalizedEvent) else "skipped"
    return out


# --------------------------------------------------------------------------------------------- the test


@pytest.fixture
def stack(kafka_bootstrap: str, using_embedded_broker: bool, tmp_path: Path) -> Iterator[Stack]:
    config = StackConfig.for_broker(kafka_bootstrap, tmp_path, embedded_broker=using_embedded_broker,
                                    max_body_bytes=MAX_BODY, log_level="WARNING")
    yield from start_stack(config)


def test_corpus_is_deterministic() -> None:
    a, b = Corpus(SEED).bodies(300), Corpus(SEED).bodies(300)
    assert [p.body for p in a] == [p.body for p in b]
    assert [p.content_type for p in a] == [p.content_type for p in b]


def test_generator_expectations_match_the_normalizer() -> None:
    """The generator's `expect` (used by the crash tests) agrees with the pure normalizer, event by event."""
    stream = generate(11, clients=40, events=500)
    passed: set[str] = set()
    for event in stream.events:
        result = normalize(
            event.body, {header_names.CONTENT_TYPE: event.content_type, header_names.RESOURCE: event.resource or ""}
        )
        assert not isinstance(result, Unreadable), (event.seq, result.reason)
        got = ("duplicate" if result.event_id in passed else
               f"skipped:{result.reason.value}" if isinstance(result, Skipped) else "normalized")
        passed.add(result.event_id)
        assert (got, result.event_id) == (event.expect, event.event_id), event.seq
        if isinstance(result, NormalizedEvent):
            assert result.kind.value == event.kind and not result.invalid_fields, event.seq
    counts = stream.counts()
    assert counts["duplicate"] and counts["skipped:test_ping"] and counts["skipped:no_email_or_phone"]
    kinds = {e.kind for e in stream.events}
    assert {"client.upserted", "appointment.booked", "appointment.updated", "appointment.cancelled",
            "appointment.no_show", "appointment.deleted", "invoice.paid", "invoice.refunded", "test"} <= kinds


def test_fuzz_producer_and_worker(stack: Stack) -> None:
    started = time.monotonic()
    posts = Corpus(SEED).bodies(FUZZ_COUNT)
    answers = asyncio.run(post_many(stack.producer.webhook_url(), posts, concurrency=16))
    post_s = time.monotonic() - started

    statuses = Counter(a.status for a in answers)
    print(f"\nfuzz: {len(posts)} bodies posted in {post_s:.1f}s, statuses {dict(sorted(statuses.items()))}")
    assert set(statuses) <= {202, 400, 413}, {a.index: a.status for a in answers if a.status not in (202, 400, 413)}
    for answer in answers:  # the producer echoes the sender's request id
        assert answer.request_id == posts[answer.index].request_id
    accepted = {a.request_id for a in answers if a.status == 202}
    rejected = {a.request_id for a in answers if a.status == 400}
    assert statuses[413] and accepted and rejected

    topics = stack.config.topics
    bootstrap = stack.config.bootstrap
    raw = read_topic(bootstrap, topics.raw)
    quarantine = read_topic(bootstrap, topics.quarantine)
    assert sorted(r.request_id for r in raw) == sorted(accepted)  # each 202 once, nothing else
    assert sorted(r.request_id for r in quarantine) == sorted(rejected)  # each 400 once, with its reason
    assert all(r.headers.get(header_names.REASON) for r in quarantine)

    expected = expected_outcomes(raw)
    outcome_counts = Counter(expected.values())
    print(f"fuzz: expected outcomes {dict(outcome_counts)}")
    want_out = len(accepted) - outcome_counts["duplicate"]

    def outputs() -> dict[str, list[Record]] | None:
        got = {name: read_topic(bootstrap, getattr(topics, name)) for name in ("normalized", "skipped", "deadletter")}
        return got if sum(len(v) for v in got.values()) >= want_out else None

    got = wait_until(outputs, 120, 1.0, "every accepted record processed")
    assert stack.worker.alive, "worker exited"
    actual: dict[str, str] = {}
    duplicated: list[str] = []
    for name, records in got.items():
        for rec in records:
            assert rec.request_id in accepted, (name, rec.request_id)
            if rec.request_id in actual:
                duplicated.append(rec.request_id)
            actual[rec.request_id] = name
            if name in ("skipped", "deadletter"):
                assert rec.headers.get(header_names.REASON), (name, rec.request_id)
            if name == "deadletter":
                assert rec.headers[header_names.DLQ_STAGE] == "normalize"
                assert rec.headers[header_names.DLQ_SOURCE_TOPIC] == topics.raw
    assert not duplicated, f"{len(duplicated)} records came out twice"
    want = {rid: outcome for rid, outcome in expected.items() if outcome != "duplicate"}
    mismatched = {rid: (want.get(rid), actual.get(rid)) for rid in set(want) | set(actual)
                  if want.get(rid) != actual.get(rid)}
    assert not mismatched, dict(list(mismatched.items())[:20])
    # A dead letter points back at its raw record.
    raw_at = {(r.partition, r.offset): r.request_id for r in raw}
    for rec in got["deadletter"]:
        source = (int(rec.headers[header_names.DLQ_SOURCE_PARTITION]), int(rec.headers[header_names.DLQ_SOURCE_OFFSET]))
        assert raw_at[source] == rec.request_id

    committed = wait_committed_to_end(bootstrap, stack.worker.worker_id, topics.raw, timeout_s=60,
                                      ends=next_offsets(raw))
    total_s = time.monotonic() - started
    print(f"fuzz: outputs {dict((k, len(v)) for k, v in got.items())}, committed {committed}, "
          f"total {total_s:.1f}s")

    # Both processes still serve their metrics after the hostile input.
    assert "apro_webhooks_received_total" in scrape(stack.producer.metrics_url)
    worker_metrics = scrape(stack.worker.metrics_url)
    locations = {line.split('location="', 1)[1].split('"', 1)[0]
                 for line in worker_metrics.splitlines() if line.startswith("apro_last_event_timestamp_seconds{")}
    print(f"fuzz: distinct worker location labels after the run: {len(locations)}")


# --------------------------------------------------------------------------------------------- lone surrogates
# Two bugs this fuzzing found (a lone `\ud800` escape made the producer answer 500 and broke every later worker
# scrape through a metric label); pinned here as regressions.


@pytest.fixture
def producer_only(kafka_bootstrap: str, using_embedded_broker: bool, tmp_path: Path) -> Iterator[Stack]:
    config = StackConfig.for_broker(kafka_bootstrap, tmp_path, embedded_broker=using_embedded_broker)
    yield from start_stack(config, with_worker=False)


def test_lone_surrogate_in_client_id_is_not_a_server_error(producer_only: Stack) -> None:
    body = b'{"event": "client.created", "client": {"clientId": "\\ud800", "email": "a@example.com"}}'
    answer = asyncio.run(post_many(producer_only.producer.webhook_url(), [Post(body, request_id="sur-1")]))[0]
    assert answer.status == 400  # not valid Unicode: quarantined with the reason


def test_lone_surrogate_in_location_keeps_worker_metrics_up(stack: Stack) -> None:
    """The producer now refuses such a body, but a raw record from elsewhere (an older producer, a redrive) must
    still end dead-lettered with the worker's metrics intact."""
    from confluent_kafka import Producer

    body = b'{"event": "client.created", "eventId": "sur-2", "location": {"id": "\\ud800"}, ' \
           b'"client": {"clientId": "5", "email": "a@example.com"}}'
    topics = stack.config.topics
    producer = Producer({"bootstrap.servers": stack.config.bootstrap, "log_level": 0})
    producer.produce(topics.raw, body, b"5", headers=[("apro-request-id", b"sur-2")])
    assert producer.flush(30) == 0
    letters = wait_until(lambda: [r for r in read_topic(stack.config.bootstrap, topics.deadletter)
                                  if r.value == body], 60, 0.5, "the dead letter")
    assert "surrogate" in letters[0].headers.get("apro-reason", "")
    scrape(stack.worker.metrics_url)  # raises on HTTP 500
