"""Backfill benchmark: read/build rate, publish rate, and the ETA's accuracy against a real drain.

Each figure against a baseline from the same run (docs/benchmarks.md, "Module notes").

    python bench/backfill.py [--clients 20000] [--eta-clients 30]"""

from __future__ import annotations

import argparse
import asyncio
import csv
import io
import os
import sys
import tempfile
import time
from collections import Counter
from datetime import datetime, timezone
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from confluent_kafka import Producer  # noqa: E402

from apro_sync.ops import backfill as backfill_mod  # noqa: E402
from foundations.config import Settings  # noqa: E402
from apro_sync.local_brokers import external_or_embedded  # noqa: E402
from foundations.kafka_admin import ensure_topics  # noqa: E402
from emulator.config import EmulatorConfig, LocationConfig  # noqa: E402
from emulator.server import ThreadedEmulator  # noqa: E402
from sinks.locations import load_locations  # noqa: E402
from sinks.provision import provision_all  # noqa: E402
from tests.ops.backfill_generator import generate  # noqa: E402
from tests.reliability.harness import StackConfig  # noqa: E402

LOCATION_ID = "benchBackfill00000001"
TOKEN = "pit-bench-backfill-0001"


def _settings(bootstrap: str, embedded: bool, work: Path, prefix: str, **extra: object) -> Settings:
    return Settings(kafka_bootstrap_servers=bootstrap, embedded_broker=embedded, topic_prefix=prefix,
                    topic_partitions=12, worker_id=f"{prefix}worker", state_dir=work / "state", _env_file=None,
                    **extra)


def bench_read(work: Path, clients: int) -> backfill_mod.Prepared:
    as_of = datetime.now(timezone.utc).replace(microsecond=0)
    paths, _truth = generate(work / "export", clients, seed=3, as_of=as_of)
    t0 = time.perf_counter()
    rows = 0
    for path in paths:
        with open(path, newline="") as handle:
            rows += sum(1 for _ in csv.reader(handle)) - 1
    baseline = time.perf_counter() - t0
    request = backfill_mod.BackfillRequest(*paths, as_of=as_of)
    t0 = time.perf_counter()
    prepared = backfill_mod.prepare(request, Settings(_env_file=None))
    elapsed = time.perf_counter() - t0
    events = sum(len(v) for v in prepared.by_client.values())
    print(f"(a) read + build: {clients} clients, {rows} rows -> {events} events in {elapsed:.1f} s = "
          f"{rows / elapsed:,.0f} rows/s; bare csv.reader {rows / baseline:,.0f} rows/s; "
          f"ratio {elapsed / baseline:.1f}x the bare read")
    return prepared


def bench_publish(prepared: backfill_mod.Prepared, bootstrap: str, embedded: bool, work: Path) -> None:
    events = prepared.events
    settings = _settings(bootstrap, embedded, work, "bfp.")
    ensure_topics(bootstrap, [settings.topics.raw], 12)
    request = backfill_mod.BackfillRequest(None, None, None, rate_share=0.0, checkpoint_dir=work / "ckpt")
    t0 = time.perf_counter()
    backfill_mod.publish(prepared, settings, request, target=lambda loc: loc or "x")
    elapsed = time.perf_counter() - t0
    base_settings = _settings(bootstrap, embedded, work, "bfq.")
    ensure_topics(bootstrap, [base_settings.topics.raw], 12)
    producer = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True, "acks": "all",
                         "linger.ms": 5, **({"batch.num.messages": 1} if embedded else {})})
    t0 = time.perf_counter()
    for e in events:
        while True:
            try:
                producer.produce(base_settings.topics.raw, value=e.body, key=e.client_id.encode())
                break
            except BufferError:
                producer.poll(0.1)
        producer.poll(0)
    assert producer.flush(120) == 0
    baseline = time.perf_counter() - t0
    print(f"(b) publish (unpaced, {'embedded broker' if embedded else 'Kafka'}): {len(events)} events in "
          f"{elapsed:.1f} s = {len(events) / elapsed:,.0f} events/s; bare producer {len(events) / baseline:,.0f} "
          f"events/s; ratio {elapsed / baseline:.2f}x")


def bench_eta(bootstrap: str, embedded: bool, work: Path, clients: int, share: float) -> None:
    emulator = ThreadedEmulator(EmulatorConfig(locations=[LocationConfig(id=LOCATION_ID, token=TOKEN)],
                                               max_request_log=1_000_000)).start()
    env = {"APRO_GHL_BASE_URL": emulator.base_url, "APRO_GHL_TOKEN": TOKEN, "APRO_GHL_LOCATION_ID": LOCATION_ID,
           "APRO_LOG_FORMAT": "console"}
    config = StackConfig.for_broker(bootstrap, work / "stack", embedded_broker=embedded, partitions=12,
                                    extra_env=env, log_level="WARNING")
    config.create_topics()
    settings = _settings(bootstrap, embedded, work, config.topic_prefix, ghl_base_url=emulator.base_url,
                         ghl_token=TOKEN, ghl_location_id=LOCATION_ID)
    out = io.StringIO()
    assert asyncio.run(provision_all(load_locations(settings).targets(), settings, dry_run=False, out=out)) == 0
    time.sleep(10.5)  # provisioning's calls leave the 10 s window before the worker starts
    worker = config.worker().start().wait_ready()
    try:
        as_of = datetime.now(timezone.utc).replace(microsecond=0)
        paths, _truth = generate(work / "eta-export", clients, seed=5, as_of=as_of)
        request = backfill_mod.BackfillRequest(*paths, as_of=as_of, rate_share=share, checkpoint_dir=work / "eta")
        prepared = backfill_mod.prepare(request, settings)
        target = backfill_mod.ghl_target_of(settings)
        budget = backfill_mod.budget_for(prepared.by_client, target, share, ceiling=1.0 - settings.ghl_live_reserve)
        exact = backfill_mod.dry_run(prepared, settings, target)[LOCATION_ID].calls
        time.sleep(10.5)  # the worker's start-up calls leave the window too
        started = time.time()
        backfill_mod.publish(prepared, settings, request, target=target)
        published = time.time()
        last, count, quiet = started, 0, time.monotonic()
        while time.monotonic() - quiet < 15:
            calls = [r for r in emulator.requests() if r["at"] >= started]
            if len(calls) != count:
                count, quiet = len(calls), time.monotonic()
                last = max(r["at"] for r in calls)
            time.sleep(0.5)
        drained = last - started
        predicted = budget.eta_s()
        print(f"(c) ETA at 100 requests / 10 s, {clients} clients, {len(prepared.events)} events, "
              f"{f'paced at share {share:g}' if share else 'unpaced (the worker paces itself)'}: "
              f"predicted {predicted:.0f} s ({sum(budget.calls.values())} calls estimated; dry run {exact}), "
              f"measured {drained:.0f} s to the last call ({count} calls; publishing took {published - started:.0f} "
              f"s); measured / predicted {drained / predicted:.2f}, calls measured / estimated "
              f"{count / sum(budget.calls.values()):.2f}, measured / dry run {count / exact:.2f}")
        endpoints = Counter(f"{r['method']} {r['path']}" for r in emulator.requests() if r["at"] >= started)
        print("    calls by endpoint: " + ", ".join(f"{k} {v}" for k, v in endpoints.most_common()))
    finally:
        worker.stop()
        emulator.stop()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--clients", type=int, default=20_000, help="export size for (a) and (b)")
    ap.add_argument("--eta-clients", type=int, default=30, help="export size for (c) (~20 calls each at 10/s)")
    ap.add_argument("--eta-share", type=float, default=1.0, help="--rate-share for (c); 0 = unpaced")
    ap.add_argument("--only", choices=["read", "publish", "eta"])
    args = ap.parse_args()
    print(f"backfill benchmark: load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores "
          "(other jobs may be running)")
    with external_or_embedded() as (bootstrap, embedded), tempfile.TemporaryDirectory(prefix="bench-backfill-") as tmp:
        work = Path(tmp)
        if args.only in (None, "read", "publish"):
            prepared = bench_read(work, args.clients)
            if args.only in (None, "publish"):
                bench_publish(prepared, bootstrap, embedded, work)
        if args.only in (None, "eta"):
            bench_eta(bootstrap, embedded, work, args.eta_clients, args.eta_share)


if __name__ == "__main__":
    main()
