"""Benchmark: a sink worker's memory after it recovered the client_state table of N realistic patients.

Each patient (one booking, one paid invoice) goes through the real planner with every op marked done; the state is
written to the changelog with the table's codec. A real `apro-sync worker` recovers it (VmRSS/VmHWM beside a
baseline worker over an empty changelog); with `--store rocksdb` it is then restarted on its local state.
Usage: python bench/memory.py [--patients N] [--store memory|rocksdb] [--broker embedded|kafka]
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import re
import sys
import tempfile
import time
from datetime import date, datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from aiokafka.partitioner import murmur2  # noqa: E402
from confluent_kafka import Producer  # noqa: E402
from faust.serializers import codecs  # noqa: E402

from apro_sync.local_brokers import local_broker  # noqa: E402
from apro_sync.local_stack import StackConfig, WorkerProcess  # noqa: E402
from apro_sync.processes import wait_until  # noqa: E402
from foundations.kafka_admin import ensure_topics  # noqa: E402
from foundations.topics import Topics, TopicSpec  # noqa: E402
from foundations.formats.crm_commands import UpsertContact, UpsertOpportunity  # noqa: E402
from foundations.formats.normalized import (  # noqa: E402
    Appointment,
    Client,
    EventKind,
    Invoice,
    LineItem,
    NormalizedEvent,
    Provider,
    Service,
)
from bench.state_growth import LOCATION, SERVICES  # noqa: E402  (the same clinic and price list)
from sinks.agent import CHANGELOG_SERIALIZER  # noqa: E402
from streams.plan import state_codec  # noqa: E402
from streams.plan.planner import plan  # noqa: E402
from streams.plan.state import ClientState, mark_done, record_contact_id, record_opportunity_id  # noqa: E402

UTC = timezone.utc
FIRST = ["Jane", "Maria", "Emily", "Sofia", "Olivia", "Ava", "Mia", "Chloe", "Grace", "Zoe"]
LAST = ["Doe", "Garcia", "Nguyen", "Smith", "Johnson", "Brown", "Martinez", "Lee", "Walker", "Hall"]
PARTITIONS = 12  # the worker's default (Settings.topic_partitions)
RECOVERED = "Worker ready"  # Faust's log line once the tables are recovered and the streams resumed


def patient_state(n: int) -> ClientState:
    """Patient `n`: booked, visited, paid; every op done, contact and opportunity ids recorded."""
    cid = str(100000 + n)
    first, last = FIRST[n % len(FIRST)], LAST[(n // len(FIRST)) % len(LAST)]
    client = Client(id=cid, first_name=first, last_name=f"{last}{n}", email=f"{first.lower()}.{n}@example.com",
                    phone=f"+1480{5550000 + n:07d}", date_of_birth=date(1960 + n % 40, 1 + n % 12, 1 + n % 28))
    name, kind, price = SERVICES[n % len(SERVICES)]
    booked = datetime(2026, 9, 1, 15, tzinfo=UTC) + timedelta(minutes=n)
    appt = Appointment(id=f"A{n}", start=booked + timedelta(days=10), services=(Service(name=name, service_type=kind),),
                       provider=Provider(id="P-12", name="Dr. Maya Lee"))
    inv = Invoice(id=f"INV-{n}", number=str(10000 + n), amount_paid=Decimal(price), appointment=appt,
                  items=(LineItem(name=name, type="Service", amount=Decimal(price)),), paid_at=appt.start)
    events = [NormalizedEvent(event_id=f"ev-{n}-b", kind=EventKind.APPOINTMENT_BOOKED, occurred_at=booked,
                              raw_offset=2 * n, location=LOCATION, client=client, appointment=appt),
              NormalizedEvent(event_id=f"ev-{n}-p", kind=EventKind.INVOICE_PAID, occurred_at=appt.start,
                              raw_offset=2 * n + 1, location=LOCATION, client=client, invoice=inv)]
    state: ClientState | None = None
    for ev in events:
        state = plan(ev, state, location_label="loc-main", now=ev.occurred_at or booked).new_state
        for op in state.pending_ops():
            if isinstance(op, UpsertContact) and "loc-main" not in state.crm:
                state = record_contact_id(state, "loc-main", f"ct{n:018d}")
            if isinstance(op, UpsertOpportunity):
                state = record_opportunity_id(state, "loc-main", f"op{n:018d}")
            state = mark_done(state, op.op_id)
    assert state is not None
    return state


def encoded_states(first: int, count: int) -> tuple[list[tuple[bytes, bytes, int]], float]:
    """Patients first..first+count-1 as (key, value, partition) changelog records; and the CPU seconds taken."""
    start = time.process_time()
    records = []
    for n in range(first, first + count):
        state = patient_state(n)
        key = codecs.dumps(CHANGELOG_SERIALIZER, state.client_id)
        value = codecs.dumps(CHANGELOG_SERIALIZER, state_codec.encode(state))
        records.append((key, value, (murmur2(state.client_id.encode()) & 0x7FFFFFFF) % PARTITIONS))
    return records, time.process_time() - start


def _encoded_chunk(bounds: tuple[int, int]) -> tuple[list[tuple[bytes, bytes, int]], float]:
    return encoded_states(*bounds)


def write_changelog(bootstrap: str, topic: str, patients: int, one_per_batch: bool) -> tuple[int, float]:
    """Every patient's state as the worker writes it (table codec, the event's partition); returns bytes, CPU s.
    The planner runs in one process per core; multi-record batches unless the broker is Tansu (`one_per_batch`)."""
    total, cpu = 0, 0.0
    chunk = 2_000
    bounds = [(first, min(chunk, patients - first)) for first in range(0, patients, chunk)]
    with multiprocessing.Pool(os.cpu_count() or 1) as pool:  # before the producer's threads exist
        producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 20, "compression.type": "none",
                             **({"batch.num.messages": 1} if one_per_batch else {"batch.size": 1 << 20})})
        for records, chunk_cpu in pool.imap(_encoded_chunk, bounds):
            cpu += chunk_cpu
            for key, value, partition in records:
                total += _produce(producer, topic, key, value, partition)
    if producer.flush(120):
        raise RuntimeError("changelog records not delivered")
    return total, cpu


def _produce(producer: Producer, topic: str, key: bytes, value: bytes, partition: int) -> int:
    while True:
        try:
            producer.produce(topic, key=key, value=value, partition=partition)
            break
        except BufferError:
            producer.poll(0.1)
    producer.poll(0)
    return len(key) + len(value)


def memory_kib(pid: int) -> dict[str, int]:
    text = Path(f"/proc/{pid}/status").read_text()
    return {m.group(1): int(m.group(2)) for m in re.finditer(r"^(VmRSS|VmHWM):\s+(\d+) kB", text, re.M)}


def measure(worker: WorkerProcess, timeout_s: float) -> tuple[dict[str, int], float]:
    """Start the worker, wait for Faust's recovery to complete, let RSS settle; returns memory and recovery s."""
    seen = {path: path.stat().st_size if path.exists() else 0 for path in worker.log_files}  # earlier starts
    started = time.monotonic()
    worker.start()
    assert worker.proc is not None

    def recovered() -> bool:
        if worker.proc is None or worker.proc.poll() is not None:
            raise RuntimeError(f"worker exited; see {worker.stderr_path}")
        return any(RECOVERED in _read_from(path, seen[path]) for path in worker.log_files if path.exists())

    wait_until(recovered, timeout_s, 0.5, "table recovery")
    took = time.monotonic() - started
    time.sleep(5)  # the stream consumer starts; memory settles
    mem = memory_kib(worker.proc.pid)
    worker.stop()
    return mem, took


def _read_from(path: Path, offset: int) -> str:
    with open(path, "rb") as log_file:
        log_file.seek(offset)
        return log_file.read().decode(errors="replace")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--patients", type=int, default=100_000)
    parser.add_argument("--store", choices=("memory", "rocksdb"), default="memory", help="APRO_STATE_STORE")
    parser.add_argument("--broker", choices=("embedded", "kafka"), default="embedded",
                        help="without KAFKA_BOOTSTRAP_SERVERS: the local broker to start (Tansu or Apache Kafka)")
    parser.add_argument("--timeout", type=float, default=1800.0, help="seconds allowed for the recovery")
    args = parser.parse_args()
    broker = None
    bootstrap = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
    if not bootstrap:
        broker = local_broker(args.broker).start()
        bootstrap = broker.bootstrap
    embedded = broker is not None and args.broker == "embedded"
    env = {"APRO_GHL_BASE_URL": "http://127.0.0.1:9", "APRO_GHL_TOKEN": "bench-token-0123456789abcdef",
           "APRO_GHL_LOCATION_ID": "bench-location", "APRO_LOG_FORMAT": "console", "APRO_STATE_STORE": args.store}
    results: dict[str, tuple[dict[str, int], float, int]] = {}
    try:
        with tempfile.TemporaryDirectory(prefix="bench-memory-") as tmp:
            for label, patients in (("baseline", 0), ("loaded", args.patients)):
                stack = StackConfig(bootstrap=bootstrap, work_dir=Path(tmp) / label, partitions=PARTITIONS,
                                    embedded_broker=embedded, extra_env=env)
                stack.create_topics()
                written, cpu = 0, 0.0
                changelog = Topics.with_prefix(stack.topic_prefix).client_state_changelog
                ensure_topics(bootstrap, [TopicSpec(changelog, PARTITIONS, 1, {"cleanup.policy": "compact"})])
                if patients:
                    start = time.monotonic()
                    written, cpu = write_changelog(bootstrap, changelog, patients, one_per_batch=embedded)
                    print(f"wrote {patients:,} states ({written:,} bytes) in {time.monotonic() - start:.0f} s "
                          f"(planner CPU {cpu:.0f} s)", flush=True)
                worker = stack.worker(label)
                runs = [label] + (["restarted"] if args.store == "rocksdb" and patients else [])
                for run in runs:  # the same worker (and state directory) again: recovered locally
                    mem, took = measure(worker, args.timeout)
                    results[run] = (mem, took, written)
                    print(f"{run}: VmRSS {mem['VmRSS'] / 1024:.0f} MiB, VmHWM {mem['VmHWM'] / 1024:.0f} MiB, "
                          f"ready+recovered in {took:.1f} s; state dir {_du(worker.cwd / 'state') / 2**20:.0f} MiB",
                          flush=True)
                if broker is not None and broker.pid is not None:
                    print(f"  broker VmRSS {memory_kib(broker.pid)['VmRSS'] / 1024:.0f} MiB", flush=True)
    finally:
        if broker is not None:
            broker.stop()
    (base, _, _), (loaded, took, written) = results["baseline"], results["loaded"]
    delta = (loaded["VmRSS"] - base["VmRSS"]) * 1024
    print(f"\npatients {args.patients:,}; store {args.store}; load average {os.getloadavg()[0]:.2f}")
    print(f"  RSS {loaded['VmRSS'] / 1024:.0f} MiB (peak {loaded['VmHWM'] / 1024:.0f} MiB), baseline "
          f"{base['VmRSS'] / 1024:.0f} MiB, RSS - baseline {delta / 2**20:.0f} MiB; recovery {took:.1f} s")
    print(f"  bytes per patient: {delta / max(args.patients, 1):,.0f} in RSS, {written / max(args.patients, 1):,.0f}"
          f" in the changelog ({written / 2**20:.1f} MiB); RSS / changelog {delta / max(written, 1):.2f}x")
    if "restarted" in results:
        again, restart_s, _ = results["restarted"]
        print(f"  restarted on its local state: RSS {again['VmRSS'] / 1024:.0f} MiB (peak {again['VmHWM'] / 1024:.0f}"
              f" MiB), start to 'Worker ready' {restart_s:.1f} s; restart / baseline start "
              f"{restart_s / results['baseline'][1]:.1f}x")
    print(f"  targets: <= 300 MB (= {300e6 / 2**20:.0f} MiB) RSS at 100k patients on the memory store; <= 600 MB "
          f"(= {600e6 / 2**20:.0f} MiB) at 1M on RocksDB, restart <= 30 s")


def _du(path: Path) -> int:
    return sum(file.stat().st_size for file in path.rglob("*") if file.is_file())


if __name__ == "__main__":
    main()
