"""Intake throughput: the producer (auth, parse, key, Kafka ack before 202) against a bare aiohttp JSON endpoint.

Same request, connections and duration for both; prints both throughputs, the ratio and p50/p99 latency.

    python bench/intake.py [--connections 32] [--duration 10] [--python-load]"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
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

def wrk_load(url: str, connections: int, duration: int) -> dict[str, float]:
    body = BODY_FILE.read_text()
    script = Path(tempfile.gettempdir()) / f"apro-bench-{uuid.uuid4().hex[:6]}.lua"
    script.write_text(
        'wrk.method = "POST"\n'
        f"wrk.body = {json.dumps(body)}\n"
        'wrk.headers["Content-Type"] = "application/json"\n'
    )
    try:
        out = subprocess.run(
            ["wrk", "-t1", f"-c{connections}", f"-d{duration}s", "--latency", "-s", str(script), url],
            capture_output=True, text=True, check=True,
        ).stdout
    finally:
        script.unlink(missing_ok=True)
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    total = int(re.search(r"(\d+) requests in", out).group(1))
    bad = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    errors = re.search(r"Socket errors: (.*)", out)

    def pct(label: str) -> float:
        m = re.search(rf"\s{label}%\s+([\d.]+)(us|ms|s)", out)
        value, unit = float(m.group(1)), m.group(2)
        return value * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]

    return {"rps": rps, "total": total, "non2xx": int(bad.group(1)) if bad else 0,
            "socket_errors": errors.group(1) if errors else "", "p50_ms": pct("50"), "p99_ms": pct("99")}


async def _python_load(url: str, connections: int, duration: float) -> dict[str, float]:
    import aiohttp

    body = BODY_FILE.read_bytes()
    latencies: list[float] = []
    bad = 0
    stop_at = time.perf_counter() + duration

    async def worker(session: aiohttp.ClientSession) -> None:
        nonlocal bad
        while time.perf_counter() < stop_at:
            t0 = time.perf_counter()
            async with session.post(url, data=body, headers={"Content-Type": "application/json"}) as resp:
                await resp.read()
                if resp.status != 202:
                    bad += 1
            latencies.append(time.perf_counter() - t0)

    connector = aiohttp.TCPConnector(limit=connections)
    async with aiohttp.ClientSession(connector=connector) as session:
        started = time.perf_counter()
        await asyncio.gather(*(worker(session) for _ in range(connections)))
        elapsed = time.perf_counter() - started
    latencies.sort()
    return {"rps": len(latencies) / elapsed, "total": len(latencies), "non2xx": bad, "socket_errors": "",
            "p50_ms": latencies[len(latencies) // 2] * 1000, "p99_ms": latencies[int(len(latencies) * 0.99)] * 1000}


def python_load(url: str, connections: int, duration: int) -> dict[str, float]:
    """Runs the aiohttp load generator in its own process so it does not share a core's event loop with us."""
    out = subprocess.run(
        [sys.executable, __file__, "--load", url, "--connections", str(connections), "--duration", str(duration)],
        capture_output=True, text=True, check=True,
    ).stdout
    return json.loads(out.strip().splitlines()[-1])


# orchestration --------------------------------------------------------------------------------------------

def _spawn(*args: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, __file__, *args], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _record_count(bootstrap: str, topic: str) -> int:
    from confluent_kafka import Consumer, TopicPartition

    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"bench-{uuid.uuid4().hex}", "log_level": 0})
    try:
        parts = consumer.list_topics(topic, timeout=10).topics[topic].partitions
        return sum(consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1] for p in parts)
    finally:
        consumer.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--broker", choices=["embedded", "kafka"], default="embedded",
                        help="embedded Tansu (default) or single-node Apache Kafka (needs Java and Maven)")
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--duration", type=int, default=10)
    parser.add_argument("--partitions", type=int, default=4)
    parser.add_argument("--python-load", action="store_true", help="use the aiohttp load generator even if wrk exists")
    parser.add_argument("--no-access-log", action="store_true", help="run the producer at WARNING (no access log)")
    parser.add_argument("--serve", choices=["baseline", "producer"], help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--bootstrap", help=argparse.SUPPRESS)
    parser.add_argument("--prefix", help=argparse.SUPPRESS)
    parser.add_argument("--log", type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument("--load", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.serve == "baseline":
        return serve_baseline(args.port)
    if args.serve == "producer":
        return serve_producer(args.port, args.bootstrap, args.prefix, bool(args.log))
    if args.load:
        print(json.dumps(asyncio.run(_python_load(args.load, args.connections, args.duration))))
        return

    from apro_sync.local_brokers import local_broker
    from foundations.config import Settings
    from foundations.kafka_admin import ensure_topics

    load = python_load if args.python_load or not shutil.which("wrk") else wrk_load
    tool = "python-aiohttp" if load is python_load else "wrk"
    prefix = f"bench{uuid.uuid4().hex[:6]}."
    topics = Settings(topic_prefix=prefix, _env_file=None).topics
    results: dict[str, dict[str, float]] = {}
    with local_broker(args.broker) as broker:
        ensure_topics(broker.bootstrap, [topics.raw, topics.quarantine], args.partitions)
        for name in ("baseline", "producer"):
            port = free_port()
            extra = ["--bootstrap", broker.bootstrap, "--prefix", prefix, "--log", str(int(not args.no_access_log))]
            proc = _spawn("--serve", name, "--port", str(port), *(extra if name == "producer" else []))
            try:
                wait_port(port)
                url = f"http://127.0.0.1:{port}{PATH}"
                load(url, args.connections, 2)  # warm-up: connections, producer id, topic metadata
                results[name] = load(url, args.connections, args.duration)
            finally:
                stop(proc)
        written = _record_count(broker.bootstrap, topics.raw)

    base, prod = results["baseline"], results["producer"]
    ratio = prod["rps"] / base["rps"]
    print(f"broker: {args.broker}; load: {tool}, {args.connections} connections, {args.duration}s each, body {BODY_FILE.name} "
          f"({BODY_FILE.stat().st_size} B), {os.cpu_count()} CPUs, access log {'off' if args.no_access_log else 'on'}")
    for name, r in results.items():
        print(f"{name:9s} {r['rps']:9.0f} req/s  p50 {r['p50_ms']:6.2f} ms  p99 {r['p99_ms']:7.2f} ms  "
              f"requests {r['total']}  non-2xx {r['non2xx']} {r['socket_errors']}")
    print(f"ratio producer/baseline: {ratio:.2f} (target >= 0.60)")
    print(f"producer p50 {prod['p50_ms']:.2f} ms, p99 {prod['p99_ms']:.2f} ms; records on raw topic: {written}")


if __name__ == "__main__":
    main()
