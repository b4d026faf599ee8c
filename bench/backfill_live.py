"""Live latency during a backfill: steady live webhooks through intake, without and then with a paced backfill
into the same GoHighLevel sub-account (the worst case: one rate budget); live p50/p99 and their ratio, in one run.
Method and figures: docs/benchmarks.md, "Backfill" (e).

    python bench/backfill_live.py [--rate 1.0] [--seconds 60] [--clients 400] [--share 0.5]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from apro_sync.embedded_broker import EmbeddedBroker  # noqa: E402
from apro_sync.ops import backfill as backfill_mod  # noqa: E402
from bench import sink as sink_bench  # noqa: E402
from foundations.config import Settings  # noqa: E402
from tests.ops.backfill_generator import generate  # noqa: E402

LIVE_LOCATION = sink_bench.LOAD_LOCATIONS[0]  # the backfill's rows carry the same AestheticsPro location
LIVE_CLIENTS = list(range(9000, 9010))  # phones (602) 555-9000.. stay clear of the generator's 555-0000..


@dataclass
class Phase:
    total: list[float]  # 202 → the event's audit note answered (s), sorted
    pickup: list[float]  # 202 → the first call for the event's contact: intake, normalizer, queueing, planning


def live_latencies(url: str, recorder: sink_bench.Recorder, bodies: sink_bench.Bodies, contacts: dict[int, str],
                   phase: str, rate: float, seconds: float) -> Phase:
    """Appointments of warmed clients at `rate`/s (one client at a time per 10: each finishes before its next)."""
    kinds = ["appointment"] * int(rate * seconds)
    evs = [bodies.make(k, LIVE_CLIENTS[i % len(LIVE_CLIENTS)], LIVE_LOCATION, phase) for i, k in enumerate(kinds)]
    accepted = sink_bench.post(url, evs, rate=rate)
    deadline = time.monotonic() + 600
    want = {e.event_id for e in evs}
    while time.monotonic() < deadline:
        calls = recorder.snapshot()
        done = {c.event: c.end for c in calls if c.event in want and c.status < 300}
        if len(done) == len(want):
            pickup = []
            for e in evs:
                contact = contacts[e.cid]
                pickup.append(min(c.start for c in calls if c.contact == contact and c.start >= accepted[e.event_id])
                              - accepted[e.event_id])
            return Phase(sorted(done[e] - accepted[e] for e in want), sorted(pickup))
        time.sleep(0.2)
    raise RuntimeError(f"{phase}: {len(want) - len(done)} live events not done within 600 s")


def ms(values: list[float], q: float) -> str:
    return f"{sink_bench.quantile(values, q) * 1000:.0f}"


def describe(phase: Phase) -> str:
    return (f"p50 {ms(phase.total, 0.5)} ms, p99 {ms(phase.total, 0.99)} ms, max {ms(phase.total, 1.0)} ms "
            f"({len(phase.total)} events); of which to the first call p50 {ms(phase.pickup, 0.5)} ms, p99 "
            f"{ms(phase.pickup, 0.99)} ms")


def run(bootstrap: str, embedded: bool, work: Path, *, rate: float, seconds: float, clients: int,
        share: float) -> None:
    emulator, recorder = sink_bench.start_emulator(1)
    path, token_env = sink_bench.locations_file(work, emulator, [LIVE_LOCATION])
    env = {"APRO_GHL_BASE_URL": emulator.base_url, "APRO_LOCATIONS_FILE": str(path), "APRO_GHL_TOKEN": "unused",
           **token_env}
    sink_bench.provision(env)
    stack = sink_bench.Stack(bootstrap, embedded, work / "stack", env)
    bodies = sink_bench.Bodies()
    try:
        stack.producer.start().wait_ready()
        stack.worker.start().wait_ready()
        url = stack.producer.webhook_url()
        warm = [bodies.make("appointment", cid, LIVE_LOCATION, "warm") for cid in LIVE_CLIENTS]
        sink_bench.post(url, warm)
        sink_bench.wait_done(recorder, bodies, warm, timeout_s=120)
        by_email = {c["email"]: c["id"] for c in emulator.state()["contacts"]}
        contacts = {cid: by_email[f"bench{cid}@example.com"] for cid in LIVE_CLIENTS}
        sink_bench.wait_window_clear(recorder)
        alone = live_latencies(url, recorder, bodies, contacts, "alone", rate, seconds)
        sink_bench.wait_window_clear(recorder)

        as_of = datetime.now(timezone.utc).replace(microsecond=0)
        paths, _truth = generate(work / "export", clients, seed=13, as_of=as_of, location=LIVE_LOCATION)
        saved = dict(os.environ)
        os.environ.update(env)  # the backfill resolves the GoHighLevel location the way the worker does
        try:
            settings = Settings(_env_file=None, kafka_bootstrap_servers=bootstrap, embedded_broker=embedded,
                                topic_prefix=stack.config.topic_prefix, state_dir=work / "state")
            request = backfill_mod.BackfillRequest(*paths, as_of=as_of, rate_share=share, checkpoint_dir=work / "ck")
            prepared = backfill_mod.prepare(request, settings)
            target = backfill_mod.ghl_target_of(settings)
        finally:
            os.environ.clear()
            os.environ.update(saved)
        budget = backfill_mod.budget_for(prepared.by_client, target, share)
        publisher = threading.Thread(target=backfill_mod.publish, args=(prepared, settings, request),
                                     kwargs={"target": target}, daemon=True)
        started = time.time()
        publisher.start()
        time.sleep(min(20.0, seconds / 3))  # the backfill's calls are flowing before the live load starts
        during = live_latencies(url, recorder, bodies, contacts, "during", rate, seconds)
        historical = sum(1 for c in recorder.snapshot() if c.start >= started and c.event is None)
        still = publisher.is_alive()
    finally:
        stack.stop()
        emulator.stop()
    print(f"(e) live latency during a backfill, one GoHighLevel sub-account (100 requests / 10 s), live "
          f"appointments at {rate:g}/s for {seconds:.0f} s, backfill of {clients} clients "
          f"({len(prepared.events)} events, ~{sum(budget.calls.values())} calls) paced at share {share:g}:")
    print(f"    without backfill: {describe(alone)}")
    print(f"    during backfill:  {describe(during)}; {historical} non-note calls meanwhile; backfill "
          f"{'still publishing' if still else 'published'} at the end")
    ratio = {q: sink_bench.quantile(during.total, q) / sink_bench.quantile(alone.total, q) for q in (0.5, 0.99)}
    print(f"    ratio during / without: p50 {ratio[0.5]:.2f}x, p99 {ratio[0.99]:.2f}x (issue 12: p99 <= 1.2x)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rate", type=float, default=1.0, help="live appointments per second (about 4 calls each)")
    ap.add_argument("--seconds", type=float, default=60.0, help="length of each live phase")
    ap.add_argument("--clients", type=int, default=400, help="clients in the backfill's export")
    ap.add_argument("--share", type=float, default=0.5, help="the backfill's --rate-share")
    args = ap.parse_args()
    broker = None
    bootstrap = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
    if not bootstrap:
        broker = EmbeddedBroker().start()
        bootstrap = broker.bootstrap
    print(f"backfill/live benchmark: load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores")
    try:
        with tempfile.TemporaryDirectory(prefix="bench-backfill-live-") as tmp:
            run(bootstrap, broker is not None, Path(tmp), rate=args.rate, seconds=args.seconds, clients=args.clients,
                share=args.share)
    finally:
        if broker is not None:
            broker.stop()


if __name__ == "__main__":
    main()
