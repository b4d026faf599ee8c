"""Live latency during a backfill: steady live webhooks through intake before, during and after a paced backfill
(the CLI) into the same GoHighLevel sub-account (the worst case: one rate budget), then during an unpaced one.
Method and figures: docs/benchmarks.md, "Backfill" (e).

    python bench/backfill_live.py [--rate 1.0] [--seconds 90] [--clients 400] [--share 0.5] [--unpaced-seconds 30]
"""

from __future__ import annotations

import argparse
import os
import sys
import subprocess
import tempfile
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from apro_sync.local_brokers import external_or_embedded  # noqa: E402
from bench import sink as sink_bench  # noqa: E402
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


def start_backfill(stack: sink_bench.Stack, work: Path, name: str, clients: int, seed: int,
                   share: float) -> subprocess.Popen[bytes]:
    """`apro-sync backfill` as an operator runs it: its own process, the workers' settings."""
    as_of = datetime.now(timezone.utc).replace(microsecond=0)
    paths, _truth = generate(work / name, clients, seed=seed, as_of=as_of, location=LIVE_LOCATION)
    args = [sys.executable, "-m", "apro_sync.cli", "backfill", "--clients", str(paths[0]), "--appointments",
            str(paths[1]), "--invoices", str(paths[2]), "--as-of", as_of.isoformat(), "--rate-share", str(share),
            "--checkpoint-dir", str(work / f"{name}-checkpoint")]
    log = open(work / f"{name}.log", "wb")
    return subprocess.Popen(args, cwd=REPO, env=stack.config.env(APRO_STATE_DIR=str(work / "state")), stdout=log,
                            stderr=subprocess.STDOUT)


def stop(proc: subprocess.Popen[bytes]) -> bool:
    """Stop a backfill; True when it was still publishing."""
    running = proc.poll() is None
    if running:
        proc.kill()
    proc.wait()
    return running


def run(bootstrap: str, embedded: bool, work: Path, *, rate: float, seconds: float, clients: int,
        share: float, unpaced_seconds: float) -> None:
    emulator, recorder = sink_bench.start_emulator(1)
    path, token_env = sink_bench.locations_file(work, emulator, [LIVE_LOCATION])
    env = {"APRO_GHL_BASE_URL": emulator.base_url, "APRO_LOCATIONS_FILE": str(path), "APRO_GHL_TOKEN": "unused",
           **token_env}
    sink_bench.provision(env)
    stack = sink_bench.Stack(bootstrap, embedded, work / "stack", env)
    bodies = sink_bench.Bodies()
    phases: dict[str, Phase] = {}
    notes: dict[str, str] = {}
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
        phases["before"] = live_latencies(url, recorder, bodies, contacts, "before", rate, seconds)

        backfill = start_backfill(stack, work, "paced", clients, 13, share)
        started = time.time()
        time.sleep(20.0)  # reading the export; its first calls are flowing before the live load starts
        phases["paced"] = live_latencies(url, recorder, bodies, contacts, "paced", rate, seconds)
        calls = sum(1 for c in recorder.snapshot() if c.start >= started and c.event is None)
        notes["paced"] = (f"{calls} historical calls in {time.time() - started:.0f} s; the backfill was "
                          f"{'still publishing' if stop(backfill) else 'done'} (stopped after the phase)")
        sink_bench.wait_window_clear(recorder)
        phases["after"] = live_latencies(url, recorder, bodies, contacts, "after", rate, seconds)

        if unpaced_seconds:
            backfill = start_backfill(stack, work, "unpaced", clients, 17, 0.0)
            started = time.time()
            time.sleep(20.0)
            phases["unpaced"] = live_latencies(url, recorder, bodies, contacts, "unpaced", rate, unpaced_seconds)
            calls = sum(1 for c in recorder.snapshot() if c.start >= started and c.event is None)
            notes["unpaced"] = (f"{calls} historical calls in {time.time() - started:.0f} s; "
                                f"{'still publishing' if stop(backfill) else 'published'} at the end")
    finally:
        stack.stop()
        emulator.stop()
    print(f"(e) live latency during a backfill, one GoHighLevel sub-account (100 requests / 10 s): live "
          f"appointments at {rate:g}/s ({seconds:.0f} s a phase), backfill of {clients} clients from the CLI at "
          f"--rate-share {share:g}; 202 -> the event's note answered:")
    for name, phase in phases.items():
        extra = f"; {notes[name]}" if name in notes else ""
        print(f"    {name:8} {describe(phase)}{extra}")
    for q in (0.5, 0.99):
        base = max(sink_bench.quantile(phases[n].total, q) for n in ("before", "after"))
        ratios = ", ".join(f"{n} {sink_bench.quantile(phases[n].total, q) / base:.2f}x" for n in phases
                           if n not in ("before", "after"))
        print(f"    ratio p{q * 100:g} against the worse of before/after: {ratios}")
    print("    (issue 12: p99 during a backfill <= 1.2x)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rate", type=float, default=1.0, help="live appointments per second (about 4 calls each)")
    ap.add_argument("--seconds", type=float, default=90.0, help="length of each live phase")
    ap.add_argument("--clients", type=int, default=400, help="clients in the backfill's export")
    ap.add_argument("--share", type=float, default=0.5, help="the backfill's --rate-share")
    ap.add_argument("--unpaced-seconds", type=float, default=30.0, help="a last phase with --rate-share 0 (0: skip)")
    args = ap.parse_args()
    print(f"backfill/live benchmark: load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores")
    with external_or_embedded() as (bootstrap, embedded), \
            tempfile.TemporaryDirectory(prefix="bench-backfill-live-") as tmp:
        run(bootstrap, embedded, Path(tmp), rate=args.rate, seconds=args.seconds, clients=args.clients,
            share=args.share, unpaced_seconds=args.unpaced_seconds)


if __name__ == "__main__":
    main()
