"""`apro-sync backfill` end to end: generated export → CLI (a real subprocess, SIGKILLed mid-run and resumed) →
raw topic → worker (normalize + sync) → GoHighLevel emulator. Lifetime value, last and next visit must match the
export; a second run must change nothing. CI size: 300 clients; `APRO_LONG=1`: 10,000; `APRO_BACKFILL_CLIENTS=N`
sets another size (docs/benchmarks.md, "Backfill")."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path
from collections.abc import Iterator
from typing import Any

import pytest
from confluent_kafka import Consumer, TopicPartition

from emulator import EmulatorConfig, LocationConfig, RateLimitConfig
from tests.ops.backfill_generator import generate
from tests.conftest import REPO
from tests.ghl_emulator_fixture import LOCATION_1, TOKEN_1
from tests.sinks.test_e2e import Stack, fields, stack  # noqa: F401 - `stack` is a fixture

CLIENTS = int(os.environ.get("APRO_BACKFILL_CLIENTS") or (10_000 if os.environ.get("APRO_LONG") == "1" else 300))
pytestmark = [pytest.mark.integration, pytest.mark.timeout(600 + CLIENTS * 2)]
CLI = [sys.executable, "-c", "from apro_sync.cli import main; main()", "backfill"]


@pytest.fixture
def ghl_emulator_config() -> EmulatorConfig:
    # A budget the emulator can serve on a shared CI machine (GoHighLevel's 100 / 10 s would take hours); the
    # worker adopts it from the X-RateLimit headers like it adopts GoHighLevel's.
    return EmulatorConfig(seed=7, locations=[LocationConfig(id=LOCATION_1, name="Test Spa One", token=TOKEN_1)],
                          rate_limit=RateLimitConfig(burst_max=5000, interval_ms=1000, daily_max=10_000_000))


_STARTED: list[subprocess.Popen[bytes]] = []


@pytest.fixture(autouse=True)
def _stop_backfills() -> Iterator[None]:
    yield
    while _STARTED:  # a failed test must not leave a publisher running against the next test's broker
        proc = _STARTED.pop()
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def _backfill(stack: Stack, paths: tuple[Path, Path, Path], checkpoints: Path, *extra: str) -> subprocess.Popen[bytes]:
    args = [*CLI, "--clients", str(paths[0]), "--appointments", str(paths[1]), "--invoices", str(paths[2]),
            "--checkpoint-dir", str(checkpoints), *extra]
    log = open(checkpoints.parent / f"backfill-{checkpoints.name}-{time.monotonic_ns()}.log", "wb")
    proc = subprocess.Popen(args, cwd=REPO, env=stack.env(), stdout=log, stderr=subprocess.STDOUT)
    _STARTED.append(proc)
    return proc


def _published(checkpoints: Path) -> tuple[int, int]:
    for path in checkpoints.glob("backfill-*.json"):
        try:
            data = json.loads(path.read_text())
        except ValueError:
            continue
        return data["published"], data["total"]
    return 0, 0


def _by_email(state: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {(c.get("email") or "").lower(): c for c in state["contacts"]}


def _converged(state: dict[str, Any], truth: dict[str, dict[str, Any]]) -> bool:
    contacts = _by_email(state)
    for expected in truth.values():
        contact = contacts.get(expected["email"])
        if contact is None:
            return False
        f = fields(contact)
        if Decimal(str(f.get("patient_lifetime_value") or "0")) != expected["ltv"]:
            return False
        if (f.get("next_visit_date") or "") != expected["next_visit"]:
            return False
    return True


def _requests(state: dict[str, Any]) -> Counter[str]:
    return Counter({c["endpoint"]: c["count"] for c in state["requestCounts"]})


def _wait_converged(stack: Stack, truth: dict[str, dict[str, Any]], timeout_s: float) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        assert stack.proc is not None and stack.proc.poll() is None, "worker exited:\n" + stack.log_text()[-4000:]
        state = stack.emulator.state()
        if _converged(state, truth):
            return stack.settle(quiet_s=3.0, timeout_s=120)
        time.sleep(2.0)
    raise AssertionError("backfill never converged; worker log tail:\n" + stack.log_text()[-4000:])


def _wait_raw_consumed(stack: Stack, timeout_s: float = 300) -> None:
    """Until the worker group's committed offsets on the raw topic reach the end of every partition."""
    settings = stack.settings
    consumer = Consumer({"bootstrap.servers": settings.kafka_bootstrap_servers, "group.id": stack.group,
                         "enable.auto.commit": False})
    try:
        parts = [TopicPartition(settings.topics.raw, p) for p in range(settings.topic_partitions)]
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            committed = consumer.committed(parts, timeout=10)
            ends = [consumer.get_watermark_offsets(tp, timeout=10)[1] for tp in parts]
            if all(c.offset >= end for c, end in zip(committed, ends)):
                return
            time.sleep(1.0)
    finally:
        consumer.close()
    raise AssertionError("the worker did not consume the raw topic:\n" + stack.log_text()[-4000:])


def test_backfill_matches_export_resumes_after_sigkill_and_repeats_as_a_no_op(stack: Stack, tmp_path: Path) -> None:
    as_of = datetime.now(timezone.utc).replace(microsecond=0)
    paths, truth = generate(tmp_path / "export", CLIENTS, seed=11, as_of=as_of, location="3")
    checkpoints = tmp_path / "checkpoints"

    # 1. A paced run (about 10 s of publishing at this budget), SIGKILLed a third of the way in.
    budget = str(max(100, CLIENTS * 20))
    first = _backfill(stack, paths, checkpoints, "--as-of", as_of.isoformat(), "--budget", budget,
                      "--daily-limit", "10000000")
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        published, total = _published(checkpoints)
        if total and published >= total // 3:
            break
        assert first.poll() is None, "backfill ended before it could be killed"
        time.sleep(0.05)
    first.send_signal(signal.SIGKILL)
    first.wait()
    published, total = _published(checkpoints)
    assert 0 < published < total, (published, total)  # really killed mid-run

    # 2. The same command resumes from the checkpoint (unpaced) and finishes.
    resumed = _backfill(stack, paths, checkpoints, "--as-of", as_of.isoformat(), "--rate-share", "0")
    assert resumed.wait(timeout=600 + CLIENTS) == 0
    assert _published(checkpoints) == (total, total)

    state = _wait_converged(stack, truth, timeout_s=300 + CLIENTS)
    contacts = _by_email(state)
    assert len(state["contacts"]) == len(truth)
    for client_id, expected in truth.items():
        f = fields(contacts[expected["email"]])
        assert f["apro_client_id"] == client_id
        assert Decimal(str(f.get("patient_lifetime_value") or "0")) == expected["ltv"]
        assert (f.get("last_visit_date") or "") == expected["last_visit"]
        assert (f.get("next_visit_date") or "") == expected["next_visit"]
    # No duplicate effect, and nothing live-only for the past: one opportunity per contact, no notes, no workflow
    # enrollments, the patient tag once per patient.
    assert Counter(o["contactId"] for o in state["opportunities"]) == Counter({c["id"]: 1 for c in state["contacts"]})
    assert state["notes"] == [] and state["enrollmentCounts"] == []
    patients = sum(1 for t in truth.values() if t["patient"])
    assert sum(n for ep, n in _requests(state).items() if ep.endswith("/tags")) == patients

    # 3. A second run (fresh checkpoint, later export time: same rows, same event ids) changes nothing.
    before = _requests(state)
    again = _backfill(stack, paths, tmp_path / "checkpoints-again", "--as-of",
                      (as_of + timedelta(hours=1)).isoformat(), "--rate-share", "0")
    assert again.wait(timeout=600 + CLIENTS) == 0
    assert _published(tmp_path / "checkpoints-again") == (total, total)
    _wait_raw_consumed(stack)  # the worker has read every record of the second run
    after = stack.settle(quiet_s=3.0, timeout_s=120)
    assert _requests(after) == before
