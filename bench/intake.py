"""Intake: the producer (auth, parse, key, Kafka ack before 202) against a bare aiohttp JSON endpoint, both loaded
by wrk (required: no ratio from a Python load generator). Per server: throughput (closed loop), then latency at
half of that throughput (paced wrk). Then every accepted request must be on the raw topic once, or it exits non-zero.
Figures and method: docs/benchmarks.md, "Intake".

    python bench/intake.py [--connections 32] [--duration 10] [--broker embedded|kafka] [--no-access-log]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from apro_sync.processes import free_port, stop, wait_port  # noqa: E402

TOKEN = "bench-token-0123456789abcdef"
BODY_FILE = REPO / "examples" / "webhooks" / "client_created.json"
PATH = f"/webhooks/aestheticspro/{TOKEN}/clients"


# servers (run in child processes) ---------------------------------------------------------------------------

def serve_baseline(port: int) -> None:
    from aiohttp import web

    async def handle(request: web.Request) -> web.Response:
        json.loads(await request.read())
        return web.json_response({"status": "accepted"}, status=202)

    app = web.Application()
    app.router.add_post("/webhooks/aestheticspro/{token}/{resource}", handle)
    web.run_app(app, host="127.0.0.1", port=port, access_log=None, print=None)


def serve_producer(port: int, bootstrap: str, prefix: str, log: bool) -> None:
    from foundations.config import Settings
    from producer.server import run

    os.environ["APRO_LOG_LEVEL"] = "INFO" if log else "WARNING"
    if os.environ.get("BENCH_LINGER_MS"):
        import producer.publisher

        producer.publisher.DEFAULT_LINGER_MS = float(os.environ["BENCH_LINGER_MS"])
    run(Settings(kafka_bootstrap_servers=bootstrap, topic_prefix=prefix, webhook_tokens=TOKEN, http_port=port,
                 _env_file=None))


# load -----------------------------------------------------------------------------------------------------

# wrk's `done` hook prints one JSON line (after this marker) with the run's counts and latency percentiles (µs);
# `delay` (only when pacing) spaces each connection's requests by a random wait averaging PACE_MS.
_WRK_SCRIPT = """
wrk.method = "POST"
wrk.body = %(body)s
wrk.headers["Content-Type"] = "application/json"
%(pacing)s
function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    '%(marker)s{"requests": %%d, "duration_us": %%d, "non2xx": %%d, "connect": %%d, "read": %%d, "write": %%d, ' ..
    '"timeout": %%d, "p50_us": %%d, "p90_us": %%d, "p99_us": %%d, "p999_us": %%d, "max_us": %%d}\\n',
    summary.requests, summary.duration, e.status, e.connect, e.read, e.write, e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency:percentile(99.9), latency.max))
end
"""
_PACING = """
local pace_ms = %(pace_ms).3f
function delay()
  return math.floor(pace_ms * (0.5 + math.random()))
end
"""
_MARKER = "APRO-BENCH-RESULT "


@dataclass
class LoadResult:
    requests: int  # responses wrk counted (any status)
    ok: int  # 2xx/3xx responses: the requests the server accepted, as the client saw it
    seconds: float
    errors: str  # socket errors (connect/read/write/timeout), empty when none
    p50_ms: float
    p90_ms: float
    p99_ms: float
    p999_ms: float
    max_ms: float

    @property
    def rps(self) -> float:
        return self.requests / self.seconds


def wrk_load(url: str, connections: int, duration: float, pace_ms: float | None = None) -> LoadResult:
    """One wrk run (one thread). `pace_ms`: each connection waits about this long between its requests."""
    pacing = _PACING % {"pace_ms": pace_ms} if pace_ms else ""
    script = Path(tempfile.gettempdir()) / f"apro-bench-{uuid.uuid4().hex[:6]}.lua"
    script.write_text(_WRK_SCRIPT % {"body": json.dumps(BODY_FILE.read_text()), "pacing": pacing, "marker": _MARKER})
    try:
        out = subprocess.run(["wrk", "-t1", f"-c{connections}", f"-d{duration:g}s", "-s", str(script), url],
                             capture_output=True, text=True, check=True, timeout=duration + 60).stdout
    finally:
        script.unlink(missing_ok=True)
    line = next((x for x in out.splitlines() if x.startswith(_MARKER)), None)
    if line is None:
        raise SystemExit(f"wrk printed no result line:\n{out}")
    r = json.loads(line[len(_MARKER):])
    errors = ", ".join(f"{k} {r[k]}" for k in ("connect", "read", "write", "timeout") if r[k])
    return LoadResult(r["requests"], r["requests"] - r["non2xx"], r["duration_us"] / 1e6, errors,
                      r["p50_us"] / 1000, r["p90_us"] / 1000, r["p99_us"] / 1000, r["p999_us"] / 1000,
                      r["max_us"] / 1000)


def half_load(url: str, connections: int, duration: float, max_rps: float) -> tuple[LoadResult, LoadResult, float]:
    """Latency at half of `max_rps`: wrk paced by a per-connection wait, calibrated by a 3 s run (a connection's
    cycle is its wait plus the answer time). Returns (calibration run, measured run, target rate)."""
    target = max_rps / 2
    pace_ms = connections / target * 1000
    probe = wrk_load(url, connections, 3, pace_ms)
    answer_ms = connections / probe.rps * 1000 - pace_ms  # the rest of a connection's cycle
    pace_ms = max(1.0, pace_ms - max(answer_ms, 0.0))
    return probe, wrk_load(url, connections, duration, pace_ms), target


# orchestration --------------------------------------------------------------------------------------------

def _spawn(*args: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, __file__, *args], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _raw_records(bootstrap: str, topic: str) -> tuple[int, int]:
    """(records, distinct request ids) on `topic`, read from the start to the true end (kafka_io.watermarks
    reads past the broker's reported high watermark, which the embedded broker under-reports)."""
    from confluent_kafka import TopicPartition

    from apro_sync.ops.kafka_io import reader, watermarks
    from foundations.formats import headers

    consumer = reader(bootstrap)
    try:
        partitions = len(consumer.list_topics(topic, timeout=10).topics[topic].partitions)
        ends = watermarks(consumer, topic, partitions)
        todo = {p: end for p, (low, end) in ends.items() if end > low}
        consumer.assign([TopicPartition(topic, p, ends[p][0]) for p in todo])
        count, ids = 0, set()
        idle_since = time.monotonic()
        while todo and time.monotonic() - idle_since < 30:
            for msg in consumer.consume(num_messages=1000, timeout=0.5):
                if msg.error() is not None or msg.partition() not in todo or msg.offset() >= todo[msg.partition()]:
                    continue
                idle_since = time.monotonic()
                count += 1
                ids.add(dict(msg.headers() or []).get(headers.REQUEST_ID))
                if msg.offset() + 1 >= todo[msg.partition()]:
                    del todo[msg.partition()]
        if todo:
            raise SystemExit(f"FAIL: could not read {topic} to its end (partitions {sorted(todo)} stalled)")
        return count, len(ids)
    finally:
        consumer.close()


def _accepted_by_intake(port: int) -> int:
    """The producer's own count of accepted webhooks (apro_webhooks_received_total{outcome="accepted"})."""
    from urllib.request import urlopen

    from prometheus_client.parser import text_string_to_metric_families

    with urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as resp:
        text = resp.read().decode()
    return int(sum(sample.value for family in text_string_to_metric_families(text) for sample in family.samples
                   if sample.name == "apro_webhooks_received_total" and sample.labels.get("outcome") == "accepted"))


@dataclass
class ServerRun:
    full: LoadResult  # closed loop, as fast as the server answers: its throughput
    half: LoadResult  # paced to half of that: its latency
    half_target: float
    ok_total: int  # 2xx wrk saw over every run against this server (warm-up and calibration included)
    intake_accepted: int | None = None  # the producer's own count


def record_problems(records: int, distinct: int, accepted: int | None, wrk_ok: int, in_flight: int) -> list[str]:
    """Why the raw topic does not hold every accepted request exactly once (empty: it does)."""
    problems = []
    if records != accepted:
        problems.append(f"{records} records on the raw topic but the intake accepted {accepted}")
    if distinct != records:
        problems.append(f"{records - distinct} duplicate records (same request id)")
    if records < wrk_ok:
        problems.append(f"wrk saw {wrk_ok} requests accepted but only {records} records are on the topic")
    if records - wrk_ok > in_flight:
        problems.append(f"{records - wrk_ok} records more than wrk saw accepted (at most the requests in flight when "
                        f"each run ended, {in_flight}, can be)")
    return problems


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--broker", choices=["embedded", "kafka"], default="embedded",
                        help="embedded Tansu (default) or single-node Apache Kafka (needs Java and Maven)")
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--duration", type=float, default=10)
    parser.add_argument("--partitions", type=int, default=4)
    parser.add_argument("--no-access-log", action="store_true", help="run the producer at WARNING (no access log)")
    parser.add_argument("--serve", choices=["baseline", "producer"], help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--bootstrap", help=argparse.SUPPRESS)
    parser.add_argument("--prefix", help=argparse.SUPPRESS)
    parser.add_argument("--log", type=int, default=1, help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.serve == "baseline":
        return serve_baseline(args.port)
    if args.serve == "producer":
        return serve_producer(args.port, args.bootstrap, args.prefix, bool(args.log))
    if not shutil.which("wrk"):
        # A Python load generator saturates before the baseline does and flatters the ratio: no ratio without wrk.
        raise SystemExit("wrk not found: install it (Debian/Ubuntu: apt-get install wrk); no ratio without it")

    from apro_sync.local_brokers import local_broker
    from foundations.config import Settings
    from foundations.kafka_admin import ensure_topics

    prefix = f"bench{uuid.uuid4().hex[:6]}."
    topics = Settings(topic_prefix=prefix, _env_file=None).topics
    runs: dict[str, ServerRun] = {}
    with local_broker(args.broker) as broker:
        ensure_topics(broker.bootstrap, [topics.raw, topics.quarantine], args.partitions)
        for name in ("baseline", "producer"):
            port = free_port()
            extra = ["--bootstrap", broker.bootstrap, "--prefix", prefix, "--log", str(int(not args.no_access_log))]
            proc = _spawn("--serve", name, "--port", str(port), *(extra if name == "producer" else []))
            try:
                wait_port(port)
                url = f"http://127.0.0.1:{port}{PATH}"
                results = [wrk_load(url, args.connections, 2)]  # warm-up: connections, producer id, topic metadata
                results.append(wrk_load(url, args.connections, args.duration))
                probe, half, target = half_load(url, args.connections, args.duration, results[-1].rps)
                results += [probe, half]
                runs[name] = ServerRun(results[1], half, target, sum(r.ok for r in results))
                if name == "producer":
                    runs[name].intake_accepted = _accepted_by_intake(port)
            finally:
                stop(proc)
        records, distinct = _raw_records(broker.bootstrap, topics.raw)

    base, prod = runs["baseline"], runs["producer"]
    print(f"broker: {args.broker}; load: wrk -t1, {args.connections} connections, {args.duration:g} s per run, body "
          f"{BODY_FILE.name} ({BODY_FILE.stat().st_size} B), {os.cpu_count()} CPUs, load average "
          f"{os.getloadavg()[0]:.2f}, access log {'off' if args.no_access_log else 'on'}")
    print("throughput (closed loop, every connection sends its next request on the answer):")
    for name, r in runs.items():
        f = r.full
        print(f"  {name:9s} {f.rps:9.0f} req/s  p50 {f.p50_ms:6.2f} ms  p99 {f.p99_ms:7.2f} ms  requests {f.requests}"
              f"  non-2xx {f.requests - f.ok}  {f.errors}")
    print(f"ratio producer/baseline: {prod.full.rps / base.full.rps:.2f} (target >= 0.60)")
    print("latency at half load (each server paced to half of its own throughput above):")
    for name, r in runs.items():
        h = r.half
        print(f"  {name:9s} {h.rps:9.0f} req/s ({h.rps / r.full.rps:.0%} of its max; target {r.half_target:.0f})  "
              f"p50 {h.p50_ms:6.2f} ms  p90 {h.p90_ms:6.2f} ms  p99 {h.p99_ms:7.2f} ms  p99.9 {h.p999_ms:7.2f} ms  "
              f"max {h.max_ms:7.2f} ms  non-2xx {h.requests - h.ok}  {h.errors}")
    print(f"  producer p99 / baseline p99 at half load: {prod.half.p99_ms / base.half.p99_ms:.2f}")
    accepted = prod.intake_accepted
    print(
        f"records on the raw topic: {records} ({distinct} distinct request ids); accepted by the intake (its metric): "
        f"{accepted}; 2xx seen by wrk: {prod.ok_total} (warm-up, throughput, calibration and half-load runs)"
    )
    problems = record_problems(records, distinct, accepted, prod.ok_total, in_flight=4 * args.connections)
    if problems:
        raise SystemExit("FAIL: " + "; ".join(problems))
    print(f"check: every accepted request is on the topic, once ({records - prod.ok_total} were answered after wrk "
          f"stopped counting at the end of a run)")


if __name__ == "__main__":
    main()
