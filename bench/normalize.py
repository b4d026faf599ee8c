"""Benchmark: normalize() per webhook, and the normalizing worker against a decode-and-forward Faust agent.

Produces N realistic raw webhooks (fixture variations), then measures in one run: normalize() per record (median,
p99) beside orjson.loads of the same bodies; a Faust agent that only decodes each record's JSON and forwards it
to the normalized topic (the baseline, run like the worker); the normalizing worker; plain aiokafka consumes.
Targets: normalize() median < 60 µs, worker/forwarder >= 0.5. Usage: python bench/normalize.py [--count N]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

from typing import Any

from confluent_kafka import Consumer, Producer, TopicPartition

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from apro_sync.local_brokers import local_broker  # noqa: E402
from apro_sync.processes import stop_all  # noqa: E402
from foundations.config import Settings  # noqa: E402
from foundations.kafka_admin import ensure_topics  # noqa: E402

FIXTURES = REPO / "examples" / "webhooks"
FIRST = ["Jane", "Omar", "Lucia", "Maya", "Ava", "Noah", "Liam", "Emma", "Zoe", "Ivan"]
LAST = ["Doe", "Haddad", "Moreno", "Lee", "Chen", "Smith", "Garcia", "Nguyen", "Patel", "Kim"]
WORKER_CODE = (
    "from foundations.config import load_settings\n"
    "from streams.normalize.agent import register_normalizer\n"
    "from apro_sync.worker import run\n"
    "run(load_settings(), registrations=[register_normalizer])\n"
)
FORWARDER_CODE = (
    "from foundations.config import load_settings\n"
    "from bench.normalize import register_forwarder\n"
    "from apro_sync.worker import run\n"
    "run(load_settings(), registrations=[register_forwarder])\n"
)
FORWARD_MARK = "bench-forwarded"
HEADERS = [("apro-received-at", b"2026-12-01T00:00:05+00:00"), ("content-type", b"application/json")]


def register_forwarder(app: Any, settings: Settings) -> None:
    """The baseline agent: decode each raw record's JSON and forward the record to the normalized topic. It
    runs like the normalize agent (same app, batches, librdkafka output producer, acks after the write)."""
    import orjson

    from streams.normalize.agent import BATCH_MAX, BATCH_WITHIN_S, OUTPUT_LINGER_MS
    from streams.normalize.output_producer import OutputProducer, OutputRecord, producer_config

    names = settings.topics
    raw_topic = app.topic(names.raw, key_type=bytes, value_type=bytes, key_serializer="raw",
                          value_serializer="raw", partitions=settings.topic_partitions)
    producer = OutputProducer(producer_config(settings.kafka, linger_ms=OUTPUT_LINGER_MS,
                                              client_id=f"{settings.worker_id}-forward",
                                              max_body_bytes=settings.max_body_bytes))

    @app.agent(raw_topic, name="forward")
    async def forward(stream: Any) -> None:
        producer.start()
        async for events in stream.take_events(BATCH_MAX, within=BATCH_WITHIN_S):
            records = []
            for event in events:
                message = event.message
                orjson.loads(message.value)
                headers = message.headers
                pairs = list(headers.items()) if isinstance(headers, dict) else list(headers or ())
                pairs.append((FORWARD_MARK, b"1"))
                records.append(OutputRecord(names.normalized, message.key, message.value, pairs))
            await producer.write(records)
            for event in events:
                event.ack()


def time_normalize(records: list[tuple[bytes, bytes]]) -> dict[str, float]:
    """normalize() of every record once, in order (caches fill as in a worker), each call timed beside orjson.loads
    and json.loads of the same body, so the figures compare across machines and load. Microseconds."""
    import orjson

    from streams.normalize.rules import normalize

    headers = {name: value.decode() for name, value in HEADERS}
    clock = time.perf_counter_ns
    spent: list[int] = []
    base: list[int] = []
    stdlib: list[int] = []
    for _key, body in records:
        started = clock()
        normalize(body, headers)
        middle = clock()
        orjson.loads(body)
        after = clock()
        json.loads(body)
        stdlib.append(clock() - after)
        spent.append(middle - started)
        base.append(after - middle)
    spent.sort()
    base.sort()
    cpu_started = time.process_time()  # CPU time per call, second pass (warm caches): load does not inflate it
    for _key, body in records:
        normalize(body, headers)
    cpu = (time.process_time() - cpu_started) / len(records) * 1e6
    return {"cpu": cpu, "median": statistics.median(spent) / 1e3, "p99": spent[int(len(spent) * 0.99)] / 1e3,
            "orjson": statistics.median(base) / 1e3, "orjson_p99": base[int(len(base) * 0.99)] / 1e3,
            "json": statistics.median(stdlib) / 1e3}


def variations(count: int, clients: int, seed: int = 7) -> list[tuple[bytes, bytes]]:
    """(key, body) pairs: each fixture re-keyed to a random client with fresh ids and contact details."""
    rnd = random.Random(seed)
    bodies = [json.loads(p.read_text()) for p in sorted(FIXTURES.glob("*.json"))]
    out: list[tuple[bytes, bytes]] = []
    for i in range(count):
        body = json.loads(json.dumps(rnd.choice(bodies)))
        client_id = str(10_000 + rnd.randrange(clients))
        body_client = next((v for k, v in body.items() if k.lower() == "client"), None)
        for key in body:  # every spelling (eventId, EVENTID, event_id): the worker drops repeated ids
            if key.replace("_", "").lower() == "eventid":
                body[key] = f"bench-{i}"
        if "message" in body:  # test pings carry no id: their id is the body hash, so make each body distinct
            body["message"] = f"{body['message']} #{i}"
        if isinstance(body_client, dict):
            for key in list(body_client):
                low = key.lower()
                if low == "clientid":
                    body_client[key] = int(client_id) if key.isupper() else client_id
                elif low == "firstname":
                    body_client[key] = rnd.choice(FIRST)
                elif low == "lastname":
                    body_client[key] = rnd.choice(LAST)
                elif low == "email" and body_client[key]:
                    body_client[key] = f" Client.{client_id}@Example.com "
                elif low in {"mobilephone", "cellphone"} and body_client[key]:
                    body_client[key] = f"(480) 555-{rnd.randrange(10000):04d}"
        out.append((client_id.encode(), json.dumps(body).encode()))
    return out


def produce(bootstrap: str, topic: str, records: list[tuple[bytes, bytes]]) -> float:
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 20, "batch.num.messages": 1000,
                         "queue.buffering.max.messages": 200_000})
    started = time.perf_counter()
    headers = HEADERS
    for key, value in records:
        while True:
            try:
                producer.produce(topic, key=key, value=value, headers=headers)
                break
            except BufferError:
                producer.poll(0.05)
        producer.poll(0)
    if producer.flush(120) != 0:
        raise RuntimeError("produce did not complete")
    return time.perf_counter() - started


async def aiokafka_baseline(bootstrap: str, topic: str, partitions: int, count: int, *, per_message: bool) -> float:
    """Seconds for a plain aiokafka consumer to read `count` records (no decoding, no processing)."""
    from aiokafka import AIOKafkaConsumer
    from aiokafka import TopicPartition as TP

    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, auto_offset_reset="earliest",
                                group_id=None)
    await consumer.start()
    try:
        consumer.assign([TP(topic, p) for p in range(partitions)])
        seen = 0
        started = time.perf_counter()
        if per_message:  # the baseline: iterate every message
            async for _msg in consumer:
                seen += 1
                if seen >= count:
                    break
        else:
            while seen < count:
                batch = await consumer.getmany(timeout_ms=1000, max_records=5000)
                seen += sum(len(msgs) for msgs in batch.values())
        return time.perf_counter() - started
    finally:
        await consumer.stop()


def run_worker(settings: Settings, count: int, timeout_s: float, processes: int = 1, *, code: str = WORKER_CODE,
               name: str = "worker") -> tuple[float, float]:
    """(seconds first output → last, seconds worker start → last) for `code` run as a worker in its own consumer
    group (`name`), counting its own outputs only. `processes` workers share the group."""
    env = {**os.environ, "KAFKA_BOOTSTRAP_SERVERS": settings.kafka_bootstrap_servers or "",
           "APRO_TOPIC_PREFIX": settings.topic_prefix, "APRO_TOPIC_PARTITIONS": str(settings.topic_partitions),
           "APRO_EMBEDDED_BROKER": "true" if settings.embedded_broker else "false",
           "APRO_WORKER_ID": f"{settings.worker_id}-{name}", "APRO_STATE_DIR": tempfile.mkdtemp(),
           "APRO_METRICS_PORT": "0", "APRO_LOG_LEVEL": "WARNING"}
    topics = settings.topics
    outs = [topics.normalized, topics.skipped, topics.deadletter]
    consumer = Consumer({"bootstrap.servers": settings.kafka_bootstrap_servers, "group.id": f"bench-{uuid.uuid4()}",
                         "enable.auto.commit": False})
    # Both runs write to the same topics: each counts only its own outputs (the forwarder marks its records).
    consumer.assign([TopicPartition(t, p, 0) for t in outs for p in range(settings.topic_partitions)])
    forwarded = name == "forward"
    started = time.perf_counter()
    log = open(Path(tempfile.gettempdir()) / f"apro-bench-normalize-{name}.log", "wb")
    procs = [subprocess.Popen([sys.executable, "-c", code], cwd=REPO, env=env, stdout=log,
                              stderr=subprocess.STDOUT) for _ in range(processes)]
    first: float | None = None
    seen = 0
    try:
        while seen < count:
            if time.perf_counter() - started > timeout_s or any(p.poll() is not None for p in procs):
                raise RuntimeError(f"worker produced {seen}/{count} outputs (see {log.name})")
            for msg in consumer.consume(num_messages=5000, timeout=0.5):
                if msg.error() or (FORWARD_MARK in dict(msg.headers() or ())) != forwarded:
                    continue
                seen += 1
                if first is None:
                    first = time.perf_counter()
        last = time.perf_counter()
    finally:
        stop_all(procs, timeout_s=15)
        consumer.close()
        log.close()
    assert first is not None
    return last - first, last - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--broker", choices=["embedded", "kafka"], default="embedded",
                        help="embedded Tansu (default) or single-node Apache Kafka (needs Java and Maven)")
    parser.add_argument("--count", type=int, default=100_000)
    parser.add_argument("--clients", type=int, default=20_000)
    parser.add_argument("--partitions", type=int, default=4)
    parser.add_argument("--bootstrap", default=os.environ.get("KAFKA_BOOTSTRAP_SERVERS"))
    parser.add_argument("--timeout", type=float, default=1800)
    parser.add_argument("--processes", type=int, default=1,
                        help="worker processes in one group (scaling by processes; the ratio stays per run)")
    parser.add_argument("--only-normalize", action="store_true",
                        help="normalize() per record only (no broker, no workers): for pure/compiled pairs")
    args = parser.parse_args()

    from foundations import native

    implementation = native.install()  # compiled, or why pure Python runs (APRO_PURE_PYTHON=1 forces it)
    print(f"normalizer: {'compiled (mypyc)' if implementation == 'compiled' else 'pure Python: ' + implementation}")
    if args.only_normalize:
        records = variations(args.count, args.clients)
        pure = time_normalize(records)
        print(f"normalize() per record ({args.count} records, load average {os.getloadavg()[0]:.1f}): median "
              f"{pure['median']:.1f} µs, p99 {pure['p99']:.1f} µs (target median < 60); orjson.loads median "
              f"{pure['orjson']:.1f} µs (ratio {pure['median'] / pure['orjson']:.1f}); "
              f"CPU per call {pure['cpu']:.1f} µs (process_time)")
        return

    broker = None
    bootstrap = args.bootstrap
    if not bootstrap:
        broker = local_broker(args.broker).start()
        bootstrap = broker.bootstrap
    prefix = f"bench{uuid.uuid4().hex[:8]}."
    settings = Settings(kafka_bootstrap_servers=bootstrap, topic_prefix=prefix, topic_partitions=args.partitions,
                        embedded_broker=broker is not None and not broker.persistent, worker_id=f"{prefix}worker",
                        state_dir=Path(tempfile.mkdtemp()), _env_file=None)
    try:
        topics = settings.topics
        ensure_topics(bootstrap, [topics.raw, topics.normalized, topics.skipped, topics.deadletter], args.partitions)
        records = variations(args.count, args.clients)
        print("normalize() per record…", file=sys.stderr, flush=True)
        pure = time_normalize(records)
        print("producing…", file=sys.stderr, flush=True)
        produce_s = produce(bootstrap, topics.raw, records)
        print("baseline consume…", file=sys.stderr, flush=True)
        base_s = asyncio.run(aiokafka_baseline(bootstrap, topics.raw, args.partitions, args.count, per_message=True))
        many_s = asyncio.run(aiokafka_baseline(bootstrap, topics.raw, args.partitions, args.count, per_message=False))
        print("decode-and-forward agent…", file=sys.stderr, flush=True)
        forward_s, _ = run_worker(settings, args.count, args.timeout, args.processes, code=FORWARDER_CODE,
                                  name="forward")
        print("normalizing worker…", file=sys.stderr, flush=True)
        work_s, total_s = run_worker(settings, args.count, args.timeout, args.processes)
        base_rate, many_rate, work_rate = args.count / base_s, args.count / many_s, args.count / work_s
        forward_rate = args.count / forward_s
        print(f"records: {args.count} ({args.clients} clients, {args.partitions} partitions, "
              f"{args.processes} worker process(es), "
              f"{('embedded Tansu' if not broker.persistent else 'Apache Kafka') if broker else bootstrap}; "
              f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs)")
        print(f"normalize() per record:            median {pure['median']:7.1f} µs, p99 {pure['p99']:7.1f} µs "
              f"(target median < 60)")
        print(f"normalize() CPU time per call:     {pure['cpu']:7.1f} µs (process_time, second pass, warm caches)")
        print(f"orjson.loads of the same bodies:   median {pure['orjson']:7.1f} µs, "
              f"p99 {pure['orjson_p99']:7.1f} µs; "
              f"json.loads median {pure['json']:.1f} µs")
        print(f"ratio normalize()/orjson.loads (medians): {pure['median'] / pure['orjson']:7.1f}; "
              f"normalize()/json.loads: {pure['median'] / pure['json']:.1f}")
        print(f"produce (confluent-kafka):        {args.count / produce_s:10.0f} rec/s")
        print(f"baseline: decode-and-forward Faust agent:              {forward_rate:10.0f} rec/s "
              "(first output → last)")
        print(f"normalizing worker:                                    {work_rate:10.0f} rec/s "
              f"(first output → last; {args.count / total_s:.0f} rec/s including worker start)")
        print(f"ratio worker/decode-and-forward agent:                 {work_rate / forward_rate:10.3f} "
              "(target >= 0.5)")
        print(f"raw consume (aiokafka, async for per message):         {base_rate:10.0f} rec/s; "
              f"ratio worker/it {work_rate / base_rate:.3f}")
        print(f"raw consume (aiokafka getmany batches, for reference): {many_rate:10.0f} rec/s; "
              f"ratio worker/it {work_rate / many_rate:.3f}")
    finally:
        if broker is not None:
            broker.stop()


if __name__ == "__main__":
    main()
