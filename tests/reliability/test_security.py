"""Security of the real producer and worker processes: authentication, body limits, no PHI or secret in any
log line or metric, including the exception and dead-letter paths."""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from foundations.formats import headers as header_names
from tests.conftest import FIXTURES
from tests.reliability.generator import generate
from tests.reliability.harness import (
    LOC_TOKEN,
    TOKEN,
    WEBHOOK_PATH,
    Post,
    Stack,
    StackConfig,
    line_count,
    metric_sum,
    next_offsets,
    parse_metrics,
    post_many,
    raw_post,
    read_topic,
    scan_files,
    scan_text,
    scrape,
    start_stack,
    wait_committed_to_end,
    wait_until,
)

pytestmark = pytest.mark.integration

MAX_BODY = 64 * 1024
VALID = (FIXTURES / "appointment_created.json").read_bytes()


def _one_off(token: str, index: int) -> str:
    """Same length, one character different."""
    replacement = "A" if token[index] != "A" else "B"
    return token[:index] + replacement + token[index + 1:]


# Presented-but-wrong credentials are near-secrets too: none of them may be logged either.
WRONG_TOKENS = [
    "wrong-token-0123456789abcdef",
    _one_off(TOKEN, 0),
    _one_off(TOKEN, len(TOKEN) // 2),
    _one_off(TOKEN, len(TOKEN) - 1),
    TOKEN[:-1],
    TOKEN + "x",
    TOKEN.upper(),
    LOC_TOKEN[:-1] + TOKEN[-1:],
]


@pytest.fixture
def producer_only(kafka_bootstrap: str, using_embedded_broker: bool, tmp_path: Path) -> Iterator[Stack]:
    config = StackConfig.for_broker(kafka_bootstrap, tmp_path, embedded_broker=using_embedded_broker,
                                    max_body_bytes=MAX_BODY)
    yield from start_stack(config, with_worker=False)


def _assert_nothing_published(stack: Stack) -> None:
    topics = stack.config.topics
    for topic in (topics.raw, topics.quarantine):
        assert read_topic(stack.config.bootstrap, topic) == [], topic


@pytest.mark.broker_neutral
def test_authentication_and_limits_publish_nothing(producer_only: Stack) -> None:
    stack, producer = producer_only, producer_only.producer
    base = producer.base + WEBHOOK_PATH

    async def run() -> list[tuple[str, int]]:
        cases: list[tuple[str, str, bytes]] = [
            ("no token segment", base, VALID),
            ("empty token segment", base + "/", VALID),
            ("token in the query string", f"{base}?token={TOKEN}", VALID),
            ("token in the query string, resource path", f"{base}/clients?token={TOKEN}", VALID),
            ("garbage without a token", base + "/" + WRONG_TOKENS[0], b"{not json"),
            ("bearer header instead of the path", base, VALID),
        ]
        cases += [(f"wrong token #{i}", f"{base}/{tok}", VALID) for i, tok in enumerate(WRONG_TOKENS)]
        cases += [(f"wrong token #{i} with resource", f"{base}/{tok}/appointments", VALID)
                  for i, tok in enumerate(WRONG_TOKENS)]
        out = []
        for name, url, body in cases:
            headers = {"Content-Type": "application/json"}
            if name.startswith("bearer"):
                headers["Authorization"] = f"Bearer {TOKEN}"
            answer = (await post_many(url, [Post(body, None, extra_headers=tuple(headers.items()))]))[0]
            out.append((name, answer.status))
        return out

    results = asyncio.run(run())
    for name, status in results:
        assert status in (401, 404, 405), (name, status)
    assert Counter(s for _, s in results)[401] >= len(WRONG_TOKENS) * 2

    # Oversized bodies: declared too large, and chunked (no Content-Length) too large.
    path = f"{WEBHOOK_PATH}/{TOKEN}"
    big = b'{"client": {"clientId": "1"}, "pad": "' + b"x" * (MAX_BODY + 10) + b'"}'
    assert raw_post(producer.http_port, path, {"Content-Type": "application/json",
                                               "Content-Length": str(len(big))}, [big]) == 413
    assert raw_post(producer.http_port, path, {"Content-Type": "application/json",
                                               "Content-Length": str(MAX_BODY * 100)}, [b"{}"]) == 413

    def chunked(body: bytes, size: int = 8192) -> Iterator[bytes]:
        for i in range(0, len(body), size):
            part = body[i:i + size]
            yield f"{len(part):x}\r\n".encode() + part + b"\r\n"
        yield b"0\r\n\r\n"

    assert raw_post(producer.http_port, path, {"Content-Type": "application/json",
                                               "Transfer-Encoding": "chunked"}, chunked(big)) == 413
    assert raw_post(producer.http_port, f"{WEBHOOK_PATH}/{WRONG_TOKENS[1]}",
                    {"Content-Type": "application/json", "Transfer-Encoding": "chunked"}, chunked(big)) == 401
    _assert_nothing_published(stack)

    # Control: the same setup accepts the right token (so the checks above were not vacuous).
    ok = asyncio.run(post_many(producer.webhook_url(), [Post(VALID)]))[0]
    assert ok.status == 202
    samples = parse_metrics(scrape(producer.metrics_url))
    assert metric_sum(samples, "apro_webhooks_received_total", outcome="unauthorized") >= 2 * len(WRONG_TOKENS)
    assert metric_sum(samples, "apro_webhooks_received_total", outcome="too_large") >= 3

    producer.stop()  # flush its logs
    needles = [("token", TOKEN), ("token", LOC_TOKEN)] + [("wrong token", t) for t in WRONG_TOKENS]
    assert line_count(stack.config.log_files()) > 0
    hits = scan_files(stack.config.log_files(), needles)
    assert not hits, "secret in logs at: " + "; ".join(map(str, hits))


# ---------------------------------------------------------------------------------------------- PHI scan

FIXTURE_PHI = [
    ("first name", "Jane"), ("last name", "Doe"), ("last name", "Doe-Smith"), ("first name", "Lucia"),
    ("last name", "Moreno"), ("first name", "Omar"), ("last name", "Haddad"),
    ("email", "jane.doe@example.com"), ("email", "lucia.moreno@example.org"),
    ("phone raw", "(480) 555-0134"), ("phone raw", "480.555.0134"), ("phone raw", "+1 602 555 0188"),
    ("phone raw", "4805550199"), ("phone E.164", "+14805550134"), ("phone E.164", "+16025550188"),
    ("phone E.164", "+14805550199"), ("phone digits", "4805550134"), ("phone digits", "6025550188"),
    ("dob raw", "03/14/1985"), ("dob ISO", "1985-03-14"), ("dob raw", "July, 09 1992"), ("dob ISO", "1992-07-09"),
    ("dob ISO", "1990-07-02"), ("street", "7014 E Camelback Rd"), ("street", "15 W Main St"),
]


def _deadletter_bodies(stream_people: list, count: int) -> list[bytes]:  # type: ignore[type-arg]
    """Bodies full of PHI that the normalizer must dead-letter (strict fields unreadable, unserializable text,
    absurd numbers): the exception paths must not put any of it into a log line."""
    bodies = []
    for n, p in enumerate(stream_people[:count]):
        client = {"clientId": p.client_id, "firstName": p.first, "lastName": p.last, "email": (p.email or "").strip(),
                  "mobilePhone": p.phone_raw, "dateOfBirth": p.dob_raw, "address": p.street}
        variant = n % 4
        if variant == 0:  # unreadable appointment start, with PHI-looking text in it
            body = {"event": "appointment.created", "eventId": f"dl-{n}", "client": client,
                    "appointment": {"appointmentId": f"A-dl-{n}", "startDateTime": f"{p.first} {p.dob_raw}"}}
            raw = json.dumps(body)
        elif variant == 1:  # a lone surrogate next to the name: not valid Unicode, the producer quarantines it
            body = {"event": "client.created", "eventId": f"dl-{n}", "client": client}
            raw = json.dumps(body).replace(f'"firstName": "{p.first}', f'"firstName": "\\udc80{p.first}', 1)
        elif variant == 2:  # money that is not money (the invoice total is the patient's phone and name)
            body = {"event": "invoice.paid", "eventId": f"dl-{n}", "client": client,
                    "invoice": {"invoiceId": f"I-dl-{n}", "status": "Paid", "total": f"{p.phone_raw} {p.last}"}}
            raw = json.dumps(body)
        else:  # an id that is an object holding PHI
            body = {"event": "appointment.cancelled", "eventId": f"dl-{n}", "client": client,
                    "appointment": {"appointmentId": {"name": p.last, "email": p.email}, "status": "Cancelled"}}
            raw = json.dumps(body)
        bodies.append(raw.encode())
    return bodies


@pytest.fixture(params=["INFO", "DEBUG"])
def full_stack(kafka_bootstrap: str, using_embedded_broker: bool, tmp_path: Path,
               request: pytest.FixtureRequest) -> Iterator[Stack]:
    """With the sync stage (GoHighLevel emulator), and at DEBUG too: library loggers (faust, aiokafka, mode)
    print record contents there unless capped."""
    from tests.reliability.test_crash import ghl_env, start_emulator

    emulator = start_emulator()
    env = {k: v for k, v in ghl_env(emulator).items() if k != "APRO_LOG_LEVEL"}
    config = StackConfig.for_broker(kafka_bootstrap, tmp_path, embedded_broker=using_embedded_broker,
                                    max_body_bytes=MAX_BODY, log_level=request.param, extra_env=env)
    try:
        yield from start_stack(config)
    finally:
        emulator.stop()


def test_no_phi_or_secret_in_logs_or_metrics(full_stack: Stack) -> None:
    stack = full_stack
    stream = generate(424242, clients=60, events=400)
    posts: list[Post] = []
    for path in sorted(FIXTURES.glob("*.json")):
        posts.append(Post(path.read_bytes(), request_id=f"fix-{path.stem}"))
    for e in stream.events:
        posts.append(Post(e.body, e.content_type, request_id=e.request_id, resource=e.resource))
    for n, body in enumerate(_deadletter_bodies(stream.people, 40)):
        posts.append(Post(body, request_id=f"dl-{n:03d}"))
    # Unreadable at the producer (quarantined with a 400): PHI in broken JSON.
    for n, p in enumerate(stream.people[:20]):
        posts.append(Post(f'{{"client": {{"firstName": "{p.first}", "email": "{p.email}", '.encode(),
                          request_id=f"q-{n:03d}"))
    bound = [Post(p.body, p.content_type, f"loc-{p.request_id}", p.resource) for p in posts[:50]]

    async def send() -> list[int]:
        a = await post_many(stack.producer.webhook_url(), posts, concurrency=8)
        b = await post_many(stack.producer.webhook_url(LOC_TOKEN), bound, concurrency=8)
        return [x.status for x in a + b]

    statuses = Counter(asyncio.run(send()))
    assert set(statuses) <= {202, 400}, statuses
    assert statuses[400] >= 20

    topics = stack.config.topics
    bootstrap = stack.config.bootstrap
    raw = read_topic(bootstrap, topics.raw)
    assert len(raw) == statuses[202]
    def dead_letters() -> list:  # type: ignore[type-arg]
        return [r for r in read_topic(bootstrap, topics.deadletter) if (r.request_id or "").startswith("dl-")]

    # Every fourth exception-path body (n % 4 == 1) carries a lone surrogate: refused at intake (400, quarantined);
    # the other 30 reach the worker and are dead-lettered. Either way with a reason and no PHI in any log line.
    wait_until(lambda: len(dead_letters()) >= 30, 60, 1.0, "dead letters of the exception-path bodies")
    wait_committed_to_end(bootstrap, stack.worker.worker_id, topics.raw, timeout_s=60, ends=next_offsets(raw))
    dead = dead_letters()
    assert len(dead) == 30, len(dead)
    assert all(r.headers.get(header_names.REASON) for r in dead)
    refused = [r for r in read_topic(bootstrap, topics.quarantine) if (r.request_id or "").startswith("dl-")]
    assert sorted(r.request_id for r in refused) == [f"dl-{n:03d}" for n in range(40) if n % 4 == 1]
    assert all("surrogate" in r.headers.get(header_names.REASON, "") for r in refused)
    reasons = Counter(r.headers[header_names.REASON].split(":")[0] for r in dead)
    print(f"\nsecurity: statuses {dict(statuses)}, dead-letter reasons {dict(reasons)}")

    metrics = {
        "producer /metrics": scrape(stack.producer.metrics_url),
        "worker /metrics": scrape(stack.worker.metrics_url),
    }
    stack.worker.stop()
    stack.producer.stop()

    needles = stream.phi_needles() + FIXTURE_PHI + [("token", TOKEN), ("token", LOC_TOKEN)]
    # The needles are real: the bodies we sent and the normalized records carry them (in raw and normalized form).
    sent = "\n".join(p.body.decode("utf-8", "replace") for p in posts)
    sent += "\n".join((r.value or b"").decode("utf-8", "replace") for r in read_topic(bootstrap, topics.normalized))
    found = {h.needle_index for h in scan_text("sent", sent, needles)}
    phi_count = len(needles) - 2
    assert len(found) >= 0.9 * phi_count, (len(found), phi_count)
    files = stack.config.log_files()
    lines = line_count(files)
    hits = scan_files(files, needles)
    for source, text in metrics.items():
        hits += scan_text(source, text, needles)
    print(f"security: scanned {lines} log lines in {len(files)} files and both /metrics outputs "
          f"for {len(needles)} values: {len(hits)} hits")
    assert lines >= statuses[202] + statuses[400]  # one access line per request at least: the scan saw real logs
    assert not hits, "PHI or secret found at: " + "; ".join(map(str, hits[:50]))
