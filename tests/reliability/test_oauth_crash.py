"""OAuth locations end to end (real producer and worker processes, 4 s access tokens): a worker syncs through
several token lifetimes, and SIGKILLs around a refresh (before the call, after the new pair is persisted, after
GoHighLevel answered but before the answer arrived) end in the CRM state of a Private Integration Token run. The
last one is the window no design closes (docs/operations.md "OAuth locations"): the worker must name the location
loudly, hold its events (no dead letters) and resume after the operator reinstalls.
"""

from __future__ import annotations

import asyncio
import io
import os
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from confluent_kafka import Consumer, TopicPartition
from cryptography.fernet import Fernet
from pydantic import SecretStr

from foundations.config import Settings
from emulator.config import EmulatorConfig, OAuthConfig, RateLimitConfig
from emulator.server import EMU, ThreadedEmulator
from emulator.state import ApiError
from sinks.locations import load_locations
from sinks.provision import provision_all
from tests.reliability.generator import GeneratedStream, generate
from tests.reliability.harness import (
    TOKEN,
    StackConfig,
    WorkerProcess,
    next_offsets,
    read_topic,
    wait_committed_to_end,
    wait_until,
)
from tests.reliability.test_crash import (
    SINK_ENV,
    Run,
    assert_same_end_state,
    flagged_enrollments,
    gap_reads,
    post_in_client_order,
    settle,
)

pytestmark = [pytest.mark.integration, pytest.mark.timeout(1200)]

EVENTS = 300
CLIENTS = 30
SEED = 20261130
TTL_S = 4.0
CHUNKS = 5  # the stream is posted in chunks TTL_S apart, so the sync spans several token lifetimes
KEY = Fernet.generate_key().decode()
REJECTED = "REJECTED its stored OAuth refresh token"
DONE_TIMEOUT_S = 300


def start_emulator() -> ThreadedEmulator:
    emulator = ThreadedEmulator(EmulatorConfig(rate_limit=RateLimitConfig(burst_max=1_000_000, daily_max=10**9),
                                               oauth=OAuthConfig(access_token_ttl_s=TTL_S)))
    emulator.start()
    location = emulator.server.config.locations[0]
    settings = Settings(ghl_base_url=emulator.base_url, ghl_token=SecretStr(location.token),
                        ghl_location_id=location.id, webhook_tokens=TOKEN, _env_file=None)
    out = io.StringIO()
    assert asyncio.run(provision_all(load_locations(settings).targets(), settings, dry_run=False, out=out)) == 0, \
        out.getvalue()
    return emulator


def oauth_state(emulator: ThreadedEmulator) -> Any:
    return emulator.server.app[EMU].oauth


def install(emulator: ThreadedEmulator) -> str:
    """The operator's Marketplace install: a code, exchanged for the location's first refresh token."""
    app = emulator.config.oauth
    location = emulator.config.locations[0].id
    code = httpx.post(f"{emulator.base_url}/_emulator/oauth/authorize", json={"locationId": location}).json()["code"]
    answer = httpx.post(f"{emulator.base_url}/oauth/token", data={
        "client_id": app.client_id, "client_secret": app.client_secret, "grant_type": "authorization_code",
        "code": code, "user_type": "Location"})
    assert answer.status_code == 200, answer.text
    return answer.json()["refresh_token"]


def ghl_env(emulator: ThreadedEmulator, oauth: bool) -> dict[str, str]:
    location = emulator.config.locations[0]
    env = {"APRO_GHL_BASE_URL": emulator.base_url, "APRO_GHL_LOCATION_ID": location.id, **SINK_ENV}
    if not oauth:
        return {**env, "APRO_GHL_TOKEN": location.token}
    app = emulator.config.oauth
    return {**env, "APRO_GHL_OAUTH_CLIENT_ID": app.client_id, "APRO_GHL_OAUTH_CLIENT_SECRET": app.client_secret,
            "APRO_GHL_OAUTH_REFRESH_TOKEN": install(emulator), "APRO_OAUTH_TOKEN_KEYS": KEY,
            "APRO_OAUTH_REFRESH_AT": "0.5", "APRO_OAUTH_LEASE_S": "5"}


def end_offset(bootstrap: str, topic: str) -> int:
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "oauth-crash-probe", "enable.auto.commit": False})
    try:
        return consumer.get_watermark_offsets(TopicPartition(topic, 0), timeout=5.0)[1]
    finally:
        consumer.close()


class Killer:
    """The emulator's token hook: SIGKILLs the worker at one point around the `nth` refresh request."""

    def __init__(self, point: str, worker: WorkerProcess, bootstrap: str, topic: str, nth: int = 3) -> None:
        self.point, self.worker, self.bootstrap, self.topic, self.nth = point, worker, bootstrap, topic, nth
        self.seen = 0
        self.killed = threading.Event()

    def __call__(self, phase: str, grant_type: str) -> None:
        if grant_type != "refresh_token" or self.killed.is_set():
            return
        if phase == "received":
            self.seen += 1
        if self.seen != self.nth:
            return
        if self.point == "before_call" and phase == "received":
            self.worker.kill()
            self.killed.set()
            raise ApiError(503, "Service Unavailable")  # the token is not spent
        if self.point == "after_answer" and phase == "answered":
            self.worker.kill()  # the token is spent, its successor never reaches the worker
            self.killed.set()
        if self.point == "after_persist" and phase == "answered":
            before = end_offset(self.bootstrap, self.topic)
            threading.Thread(target=self._kill_after_write, args=(before,), daemon=True).start()

    def _kill_after_write(self, before: int) -> None:
        wait_until(lambda: end_offset(self.bootstrap, self.topic) > before, 30, 0.005, "the persisted token pair")
        self.worker.kill()
        self.killed.set()


def run_oauth_stack(work_dir: Path, bootstrap: str, embedded: bool, stream: GeneratedStream,
                    emulator: ThreadedEmulator, *, oauth: bool, kill_point: str | None = None,
                    reference: dict[str, Any] | None = None) -> tuple[Run, StackConfig]:
    config = StackConfig.for_broker(bootstrap, work_dir, embedded_broker=embedded, partitions=4,
                                    extra_env=ghl_env(emulator, oauth),
                                    log_level=os.environ.get("APRO_CRASH_LOG_LEVEL", "WARNING"))
    config.create_topics()
    producer = config.producer()
    worker = config.worker(name="worker-0", worker_id=f"{config.topic_prefix}group")
    killer = Killer(kill_point, worker, bootstrap, config.topics.oauth_tokens) if kill_point else None
    if killer is not None:
        oauth_state(emulator).on_token = killer
    started = time.monotonic()
    try:
        producer.start()
        worker.start()
        producer.wait_ready()
        worker.wait_ready()
        statuses: dict[int, int] = {}
        size = -(-len(stream.events) // CHUNKS)
        for n in range(CHUNKS):
            chunk = stream.events[n * size:(n + 1) * size]
            for status, count in asyncio.run(post_in_client_order(producer.webhook_url(), chunk)).items():
                statuses[status] = statuses.get(status, 0) + count
            time.sleep(TTL_S)  # let the tokens age: the next chunk needs a refreshed one
        assert set(statuses) <= {202, 400}, statuses
        if killer is not None:
            wait_until(killer.killed.is_set, DONE_TIMEOUT_S, 0.1, f"the kill {kill_point}")
            oauth_state(emulator).on_token = None
            wait_until(lambda: not worker.alive, 10, 0.05, "the worker's death")
            worker.start().wait_ready()
            if kill_point == "after_answer":
                # The stored refresh token is spent: the worker says so; the operator reinstalls the app.
                wait_until(lambda: REJECTED in worker.stderr_path.read_text(errors="replace"), 60, 0.5,
                           "the operator error")
                worker.stop()
                worker.env["APRO_GHL_OAUTH_REFRESH_TOKEN"] = install(emulator)
                worker.start().wait_ready()
        topics, group = config.topics, f"{config.topic_prefix}group"
        for topic in (topics.raw, topics.normalized):
            left = DONE_TIMEOUT_S - (time.monotonic() - started)
            wait_committed_to_end(bootstrap, group, topic, timeout_s=max(left, 30),
                                  ends=next_offsets(read_topic(bootstrap, topic)))
        if reference is not None:
            try:
                wait_until(lambda: emulator.snapshot() == reference, 30, 1.0, "the reference end state")
            except TimeoutError:
                pass  # the assertion shows what differs
        snapshot = settle(emulator)
        run = Run(snapshot, Counter(statuses), time.monotonic() - started,
                  sum(len(c["notes"]) for c in snapshot["contacts"]), flagged_enrollments(work_dir / "logs"),
                  gap_reads(work_dir / "logs"))
        return run, config
    finally:
        oauth_state(emulator).on_token = None
        worker.stop()
        producer.stop()


@pytest.fixture(scope="module")
def stream() -> GeneratedStream:
    return generate(SEED, clients=CLIENTS, events=EVENTS)


@pytest.fixture(scope="module")
def reference(kafka_bootstrap: str, using_embedded_broker: bool, stream: GeneratedStream,
              tmp_path_factory: pytest.TempPathFactory) -> Iterator[Run]:
    emulator = start_emulator()
    try:
        run, _ = run_oauth_stack(tmp_path_factory.mktemp("pit"), kafka_bootstrap, using_embedded_broker, stream,
                                 emulator, oauth=False)
        assert run.notes > EVENTS // 4, run.notes
        yield run
    finally:
        emulator.stop()


def assert_clean(config: StackConfig, emulator: ThreadedEmulator, secrets: list[str]) -> None:
    """No dead letters, no token in any log."""
    assert read_topic(config.bootstrap, config.topics.deadletter) == []
    logs = "".join(path.read_text(errors="replace") for path in config.log_files())
    for secret in secrets:
        assert secret not in logs


def refresh_tokens_issued(emulator: ThreadedEmulator) -> list[str]:
    return list(oauth_state(emulator).refresh) + list(oauth_state(emulator).access)


def test_oauth_location_syncs_through_several_token_expiries(
        kafka_bootstrap: str, using_embedded_broker: bool, stream: GeneratedStream, reference: Run,
        tmp_path: Path) -> None:
    emulator = start_emulator()
    try:
        run, config = run_oauth_stack(tmp_path, kafka_bootstrap, using_embedded_broker, stream, emulator, oauth=True,
                                      reference=reference.snapshot)
        counts = dict(oauth_state(emulator).counts)
        assert_clean(config, emulator, refresh_tokens_issued(emulator))
        unauthorized = sum(n for (_, status), n in emulator.server.store.status_counts.items() if status == 401)
    finally:
        emulator.stop()
    assert unauthorized == 0  # refreshed ahead of expiry: no call ever went out with an expired token
    print(f"\noauth/e2e: {counts.get('refresh_token', 0)} refreshes of a {TTL_S:.0f}s token, {run.notes} notes, "
          f"{run.seconds:.0f}s")
    # Chunks are posted TTL_S apart and a token is refreshed at 80 % of TTL_S, so each chunk needed a newer token
    # than the one before: the install's code exchange gave the first, refreshes the others (more when slower).
    assert counts.get("authorization_code", 0) + counts.get("refresh_token", 0) >= CHUNKS
    assert counts.get("refresh_rejected", 0) == counts.get("refresh_rejected_reused", 0) == 0
    assert_same_end_state(run, reference, stream)


@pytest.mark.parametrize("point", ["before_call", "after_persist", "after_answer"])
def test_worker_killed_around_a_refresh_keeps_access_and_effects_exact(
        point: str, kafka_bootstrap: str, using_embedded_broker: bool, stream: GeneratedStream, reference: Run,
        tmp_path: Path) -> None:
    emulator = start_emulator()
    try:
        run, config = run_oauth_stack(tmp_path, kafka_bootstrap, using_embedded_broker, stream, emulator, oauth=True,
                                      kill_point=point, reference=reference.snapshot)
        counts = dict(oauth_state(emulator).counts)
        assert_clean(config, emulator, refresh_tokens_issued(emulator))
        logs = "".join(p.read_text(errors="replace") for p in config.log_files())
    finally:
        emulator.stop()
    print(f"\noauth/crash {point}: {counts}, {run.notes} notes, {run.seconds:.0f}s")
    location = emulator.config.locations[0].id
    if point == "after_answer":
        assert counts.get("refresh_rejected_reused", 0) >= 1
        assert any(REJECTED in line and location in line for line in logs.splitlines())
    else:
        assert counts.get("refresh_rejected_reused", 0) == 0 and REJECTED not in logs
    assert_same_end_state(run, reference, stream)
