"""Isolation benchmark (issue 16): do healthy clinics keep their latency while others are in trouble?

20 sub-accounts at ~50 ms per call; all-healthy phases alternate with phases where one answers 401, one 503 and
one gets 10x its load. Prints the healthy clinics' p50/p99 ratio per pair and the troubled ones' recovery.
Run: python bench/isolation.py [--pairs 3] [--rate 10] [--seconds 30]. Method: docs/benchmarks.md "Isolation".
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from apro_sync.local_brokers import external_or_embedded  # noqa: E402
from apro_sync.local_stack import parse_metrics, scrape  # noqa: E402
from bench import sink as sink_bench  # noqa: E402
from emulator import LatencyConfig  # noqa: E402

CLINICS = [str(n) for n in range(201, 221)]  # AestheticsPro location ids, one sub-account each
REVOKED, OUTAGE, BURST = CLINICS[0], CLINICS[1], CLINICS[2]
CLIENTS_PER_CLINIC = 10
BURST_FACTOR = 10


def offered(bodies: sink_bench.Bodies, clients: dict[str, list[int]], rate: float, seconds: float, phase: str,
            troubled: bool, rng: random.Random) -> list[sink_bench.Ev]:
    """Bookings at `rate` events/s spread evenly over the clinics (the burst clinic at 10x in troubled phases),
    in a shuffled order, each for a random client of its clinic."""
    slots: list[str] = []
    for clinic in CLINICS:
        share = rate * seconds / len(CLINICS) * (BURST_FACTOR if troubled and clinic == BURST else 1)
        slots += [clinic] * round(share)
    rng.shuffle(slots)
    return [bodies.make("appointment", rng.choice(clients[clinic]), clinic, phase) for clinic in slots]


def latencies(recorder: sink_bench.Recorder, accepted: dict[str, float], evs: list[sink_bench.Ev],
              clinics: set[str]) -> list[float]:
    """202 → the event's audit note answered (its last call), for the events of `clinics`."""
    note_at = {c.event: c.end for c in recorder.snapshot() if c.event and c.status < 300}
    return [note_at[e.event_id] - accepted[e.event_id] for e in evs if e.location in clinics]


def deadlettered(metrics_url: str) -> float:
    return sum(v for (name, _), v in parse_metrics(scrape(metrics_url)).items()
               if name == "apro_events_deadlettered_total")


def wait_notes(recorder: sink_bench.Recorder, evs: list[sink_bench.Ev], timeout_s: float) -> None:
    """Until every event of `evs` had its audit note (its last call) answered."""
    want = {e.event_id for e in evs}
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if want <= {c.event for c in recorder.snapshot() if c.event and c.status < 300}:
            return
        time.sleep(0.1)
    raise RuntimeError(f"{len(evs)} events were not all synced within {timeout_s:.0f}s")


def run(bootstrap: str, embedded: bool, work: Path, *, pairs: int, rate: float, seconds: float,
        latency: LatencyConfig) -> None:
    emulator, recorder = sink_bench.start_emulator(len(CLINICS))
    path, token_env = sink_bench.locations_file(work, emulator, CLINICS)
    ghl_of = {apro: loc.id for apro, loc in zip(CLINICS, emulator.server.config.locations, strict=True)}
    env = {"APRO_GHL_BASE_URL": emulator.base_url, "APRO_LOCATIONS_FILE": str(path), "APRO_GHL_TOKEN": "unused",
           **token_env}
    sink_bench.provision(env)
    emulator.set_faults(latency=latency)
    stack = sink_bench.Stack(bootstrap, embedded, work / "stack", env)
    bodies = sink_bench.Bodies()
    rng = random.Random(16)
    healthy = set(CLINICS) - {REVOKED, OUTAGE, BURST}
    rows: list[tuple[str, int, float, float]] = []
    recovery: list[str] = []
    try:
        stack.producer.start().wait_ready()
        stack.worker.start().wait_ready()
        url = stack.producer.webhook_url()
        clients = {clinic: [int(clinic) * 1000 + n for n in range(CLIENTS_PER_CLINIC)] for clinic in CLINICS}
        warm = [bodies.make("appointment", cid, clinic, "warm") for clinic in CLINICS for cid in clients[clinic]]
        sink_bench.post(url, warm)
        sink_bench.wait_done(recorder, bodies, warm, timeout_s=300)
        for pair in range(1, pairs + 1):
            for troubled in (False, True):
                sink_bench.wait_window_clear(recorder)
                phase = f"{'troubled' if troubled else 'healthy'}-{pair}"
                if troubled:
                    emulator.set_faults([{"kind": "status", "status": 401, "probability": 1.0,
                                          "location": ghl_of[REVOKED]},
                                         {"kind": "status", "status": 503, "probability": 1.0,
                                          "location": ghl_of[OUTAGE]}])
                evs = offered(bodies, clients, rate, seconds, phase, troubled, rng)
                dead_before = deadlettered(stack.worker.metrics_url)
                accepted = sink_bench.post(url, evs, rate=len(evs) / seconds)
                # The healthy clinics' events first; the troubled ones' only after the faults are lifted.
                wait_notes(recorder, [e for e in evs if e.location in healthy], timeout_s=600)
                lat = latencies(recorder, accepted, evs, healthy)
                rows.append((phase, len(lat), sink_bench.quantile(lat, 0.5), sink_bench.quantile(lat, 0.99)))
                if troubled:
                    held = {c.event for c in recorder.snapshot() if c.event and c.status < 300}
                    synced_during = sum(1 for e in evs if e.location in (REVOKED, OUTAGE) and e.event_id in held)
                    lifted = time.time()
                    emulator.set_faults(rules=[], replace=True)
                    sink_bench.wait_done(recorder, bodies, evs, timeout_s=600)
                    notes = Counter(c.event for c in recorder.snapshot() if c.event and c.status < 300)
                    bad = [e for e in evs if e.location in (REVOKED, OUTAGE)]
                    last = max(c.end for c in recorder.snapshot() if c.event in {e.event_id for e in bad})
                    recovery.append(
                        f"{phase}: 401/503 clinics' events synced while their faults were on: {synced_during} of "
                        f"{len(bad)}; all synced {last - lifted:.1f} s after the faults were lifted; missing "
                        f"{sum(1 for e in evs if notes[e.event_id] == 0)}, duplicated "
                        f"{sum(1 for e in evs if notes[e.event_id] > 1)}, dead-lettered "
                        f"{deadlettered(stack.worker.metrics_url) - dead_before:.0f}")
    finally:
        stack.stop()
        emulator.stop()
    print(f"isolation benchmark: {len(CLINICS)} sub-accounts, {rate:g} events/s for {seconds:g} s per phase, "
          f"calls {sink_bench.describe_latency(latency)}; load average {os.getloadavg()[0]:.2f} on "
          f"{os.cpu_count()} cores")
    print(f"{'phase':<14} {'events':>7} {'p50 s':>8} {'p99 s':>8}   (the 17 healthy clinics, 202 -> audit note)")
    for phase, n, p50, p99 in rows:
        print(f"{phase:<14} {n:>7} {p50:>8.3f} {p99:>8.3f}")
    for i in range(0, len(rows) - 1, 2):
        (_, _, h50, h99), (phase, _, t50, t99) = rows[i], rows[i + 1]
        print(f"HEADLINE {phase}: healthy clinics' p50 {t50 / h50:.2f}x, p99 {t99 / h99:.2f}x the all-healthy "
              f"run of the same pair (target <= 1.2x)")
    for line in recovery:
        print(line)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pairs", type=int, default=3, help="healthy/troubled pairs, alternating")
    ap.add_argument("--rate", type=float, default=10.0, help="events per second over all clinics (nominal)")
    ap.add_argument("--seconds", type=float, default=30.0, help="length of each phase's offer")
    ap.add_argument("--call-p50-ms", type=float, default=50.0, help="emulated GoHighLevel call time, median")
    ap.add_argument("--call-p99-ms", type=float, default=50.0, help="... 99th percentile (equal: constant)")
    args = ap.parse_args()
    latency = LatencyConfig(p50_ms=args.call_p50_ms, p99_ms=args.call_p99_ms)
    with external_or_embedded() as (bootstrap, embedded), \
            tempfile.TemporaryDirectory(prefix="apro-bench-isolation-") as tmp:
        run(bootstrap, embedded, Path(tmp), pairs=args.pairs, rate=args.rate, seconds=args.seconds, latency=latency)


if __name__ == "__main__":
    main()
