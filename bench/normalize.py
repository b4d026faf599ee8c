"""Benchmark: the normalizing worker's throughput against a raw aiokafka consume of the same topic.

One run: start an embedded broker (or use --bootstrap), produce N realistic raw webhooks (variations of the
fixtures: many clients, ids, spellings), then
  1. baseline: a plain aiokafka consumer iterates every message of the raw topic from the beginning (`async for`,
     no decoding) — records/s; also reported: the same consume via `getmany` batches, which never touches each
     message in Python (an upper bound no per-record consumer can approach);
  2. the normalizing worker (`apro-sync worker` with the normalizer only) over the same topic — records/s from
     its first output to the moment normalized + skipped + dead-letter outputs reach N.
Prints both and the ratio (target >= 0.5).   Usage: python bench/normalize.py [--count 100000]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

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


def variations(count: int, clients: int, seed: int = 7) -> list[tuple[bytes, bytes]]:
    """(key, body) pairs: each fixture re-keyed to a random client with fresh ids and contact details."""
    rnd = random.Random(seed)
    bodies = [json.loads(p.read_text()) for p in sorted(FIXTURES.glob("*.json"))]
    out: list[tuple[bytes, bytes]] = []
    for i in range(count):
        body = json.loads(json.dumps(rnd.choice(bodies)))
        client_id = str(10_000 + rnd.randrange(clients))
        body_client = next((v for k, v in body.items() if k.lower() == "client"), None)
        for key in ("eventId", "EVENTID"):
            if key in body:
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
    headers = [("apro-received-at", b"2026-12-01T00:00:05+00:00"), ("content-type", b"application/json")]
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


def run_worker(settings: Settings, count: int, timeout_s: float, processes: int = 1) -> tuple[float, float]:
    """(seconds first output → last, seconds worker start → last). `processes` workers share the group."""
    env = {**os.environ, "KAFKA_BOOTSTRAP_SERVERS": settings.kafka_bootstrap_servers or "",
           "APRO_TOPIC_PREFIX": settings.topic_prefix, "APRO_TOPIC_PARTITIONS": str(settings.topic_partitions),
           "APRO_EMBEDDED_BROKER": "true" if settings.embedded_broker else "false",
           "APRO_WORKER_ID": settings.worker_id, "APRO_STATE_DIR": str(settings.state_dir),
           "APRO_METRICS_PORT": "0", "APRO_LOG_LEVEL": "WARNING"}
    topics = settings.topics
    outs = [topics.normalized, topics.skipped, topics.deadletter]
    consumer = Consumer({"bootstrap.servers": settings.kafka_bootstrap_servers, "group.id": f"bench-{uuid.uuid4()}",
                         "enable.auto.commit": False})
    consumer.assign([TopicPartition(t, p, 0) for t in outs for p in range(settings.topic_partitions)])
    started = time.perf_counter()
    log = open(Path(tempfile.gettempdir()) / "apro-bench-normalize-worker.log", "wb")
    procs = [subprocess.Popen([sys.executable, "-c", WORKER_CODE], cwd=REPO, env=env, stdout=log,
                              stderr=subprocess.STDOUT) for _ in range(processes)]
    first: float | None = None
    seen = 0
    try:
        while seen < count:
            if time.perf_counter() - started > timeout_s or any(p.poll() is not None for p in procs):
                raise RuntimeError(f"worker produced {seen}/{count} outputs (see {log.name})")
            for msg in consumer.consume(num_messages=5000, timeout=0.5):
                if msg.error():
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
    args = parser.parse_args()

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
        print("producing…", file=sys.stderr, flush=True)
        produce_s = produce(bootstrap, topics.raw, records)
        print("baseline consume…", file=sys.stderr, flush=True)
        base_s = asyncio.run(aiokafka_baseline(bootstrap, topics.raw, args.partitions, args.count, per_message=True))
        many_s = asyncio.run(aiokafka_baseline(bootstrap, topics.raw, args.partitions, args.count, per_message=False))
        print("normalizing worker…", file=sys.stderr, flush=True)
        work_s, total_s = run_worker(settings, args.count, args.timeout, args.processes)
        base_rate, many_rate, work_rate = args.count / base_s, args.count / many_s, args.count / work_s
        print(f"records: {args.count} ({args.clients} clients, {args.partitions} partitions, "
              f"{args.processes} worker process(es), "
              f"{('embedded Tansu' if not broker.persistent else 'Apache Kafka') if broker else bootstrap})")
        print(f"produce (confluent-kafka):        {args.count / produce_s:10.0f} rec/s")
        print(f"baseline raw consume (aiokafka, async for per message): {base_rate:10.0f} rec/s")
        print(f"raw consume (aiokafka getmany batches, for reference): {many_rate:10.0f} rec/s")
        print(f"normalizing worker:                                    {work_rate:10.0f} rec/s "
              f"(first output → last; {args.count / total_s:.0f} rec/s including worker start)")
        print(f"ratio worker/baseline (per-message consume):           {work_rate / base_rate:10.3f} (target >= 0.5)")
        print(f"ratio worker/getmany consume:                          {work_rate / many_rate:10.3f}")
    finally:
        if broker is not None:
            broker.stop()


if __name__ == "__main__":
    main()
