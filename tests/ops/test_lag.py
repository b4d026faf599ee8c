"""Consumer-lag exporter: the arithmetic, then the real broker, then the real `apro-sync lag-exporter` process."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.request
import uuid

import pytest
from confluent_kafka import Consumer, Producer, TopicPartition
from prometheus_client import REGISTRY, generate_latest

from apro_sync.ops.lag import LagGauge, LagReader, PartitionLag, collect_once, compute_lags, partition_lag
from apro_sync.processes import free_port
from foundations.config import Settings
from foundations.kafka_admin import ensure_topics

# --- pure arithmetic -------------------------------------------------------------------------------------------


def test_partition_lag_is_end_minus_committed() -> None:
    assert partition_lag(end_offset=10, committed=4) == 6
    assert partition_lag(end_offset=10, committed=10) == 0


def test_partition_lag_without_commit_counts_retained_records() -> None:
    assert partition_lag(end_offset=10, committed=None) == 10
    assert partition_lag(end_offset=10, committed=-1001, start_offset=3) == 7  # OFFSET_INVALID from librdkafka


def test_partition_lag_never_negative() -> None:
    # End offset read a moment before the commit landed.
    assert partition_lag(end_offset=5, committed=7) == 0
    assert partition_lag(end_offset=-1, committed=None) == 0


def test_compute_lags_covers_every_partition_with_an_end_offset() -> None:
    lags = compute_lags(
        "g",
        committed={("b", 0): 2, ("a", 1): 9},
        end_offsets={("b", 0): 5, ("a", 1): 9, ("a", 0): 4},
        start_offsets={("a", 0): 1},
    )
    assert lags == [PartitionLag("g", "a", 0, 3), PartitionLag("g", "a", 1, 0), PartitionLag("g", "b", 0, 3)]


def _lag_samples(group: str) -> dict[tuple[str, str], float]:
    return {
        (s.labels["topic"], s.labels["partition"]): s.value
        for metric in REGISTRY.collect()
        if metric.name == "apro_consumer_lag"
        for s in metric.samples
        if s.labels["group"] == group
    }


def test_gauge_drops_partitions_no_longer_reported_for_that_group_only() -> None:
    g1, g2 = f"g-{uuid.uuid4().hex[:8]}", f"g-{uuid.uuid4().hex[:8]}"
    gauge = LagGauge()
    gauge.update([PartitionLag(g1, "t", 0, 5), PartitionLag(g1, "t", 1, 2), PartitionLag(g2, "t", 0, 1)], [g1, g2])
    gauge.update([PartitionLag(g1, "t", 0, 7)], [g1])
    assert _lag_samples(g1) == {("t", "0"): 7.0}
    assert _lag_samples(g2) == {("t", "0"): 1.0}


# --- against the broker -------------------------------------------------------------------------------------------

PER_PARTITION = {0: 7, 1: 4}  # records produced per partition
COMMITTED = {0: 3}  # offsets committed by the group (partition 1: never)


def _produce_and_commit(bootstrap: str, topic: str, group: str) -> None:
    ensure_topics(bootstrap, [topic], partitions=2)
    # One record per batch: the embedded broker reports a wrong end offset for multi-record batches.
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 0, "batch.num.messages": 1})
    for partition, count in PER_PARTITION.items():
        for i in range(count):
            producer.produce(topic, value=b"{}", key=str(i).encode(), partition=partition)
            producer.flush(10)
    assert producer.flush(10) == 0
    consumer = Consumer(
        {"bootstrap.servers": bootstrap, "group.id": group, "session.timeout.ms": 2000, "enable.auto.commit": False}
    )
    try:
        consumer.commit(offsets=[TopicPartition(topic, p, o) for p, o in COMMITTED.items()], asynchronous=False)
    finally:
        consumer.close()


@pytest.mark.integration
def test_reader_reports_end_minus_committed_per_partition(settings: Settings) -> None:
    assert settings.kafka_bootstrap_servers
    topic, group = settings.topics.raw, f"{settings.topic_prefix}lag"
    _produce_and_commit(settings.kafka_bootstrap_servers, topic, group)
    reader = LagReader(settings.kafka_bootstrap_servers)

    # Explicit topics: the never-committed partition counts everything retained.
    assert reader.read(group, [topic]) == [PartitionLag(group, topic, 0, 7 - 3), PartitionLag(group, topic, 1, 4)]
    # Default: only partitions the group has committed on.
    assert reader.read(group) == [PartitionLag(group, topic, 0, 4)]
    # Topics that do not exist are skipped, not an error.
    assert reader.read(group, [f"{settings.topic_prefix}missing"]) == []

    gauge = LagGauge()
    assert collect_once(reader, gauge, [group], [topic]) == 0
    assert _lag_samples(group) == {(topic, "0"): 4.0, (topic, "1"): 4.0}
    exposition = generate_latest(REGISTRY).decode()
    assert f'apro_consumer_lag{{group="{group}",partition="0",topic="{topic}"}} 4.0' in exposition


@pytest.mark.integration
def test_lag_exporter_command_serves_lag(settings: Settings) -> None:
    """The real `apro-sync lag-exporter` process, scraped over HTTP like Prometheus does."""
    assert settings.kafka_bootstrap_servers
    topic, group = settings.topics.raw, settings.worker_id  # default group = the worker's
    _produce_and_commit(settings.kafka_bootstrap_servers, topic, group)
    port = free_port()
    env = {**os.environ, "KAFKA_BOOTSTRAP_SERVERS": settings.kafka_bootstrap_servers, "APRO_WORKER_ID": group}
    proc = subprocess.Popen(
        [sys.executable, "-m", "apro_sync.cli", "lag-exporter", "--host", "127.0.0.1", "--port", str(port),
         "--interval", "1", "--topic", topic],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    wanted = [
        f'apro_consumer_lag{{group="{group}",partition="0",topic="{topic}"}} 4.0',
        f'apro_consumer_lag{{group="{group}",partition="1",topic="{topic}"}} 4.0',
    ]
    body = ""
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                pytest.fail(f"lag exporter exited: {proc.stderr.read().decode() if proc.stderr else ''}")
            try:
                body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2).read().decode()
            except OSError:
                body = ""
            if all(line in body for line in wanted):
                break
            time.sleep(0.2)
    finally:
        proc.terminate()
        proc.wait(10)
    for line in wanted:
        assert line in body


@pytest.mark.broker_restart
def test_reader_survives_a_broker_whose_coordinator_is_still_loading(tmp_path) -> None:
    """Right after start, Apache Kafka answers OffsetFetch with COORDINATOR_LOAD_IN_PROGRESS; confluent-kafka's
    AdminClient.list_consumer_group_offsets crashed the process (SIGSEGV) on that answer. The read runs in a
    child process so a crash shows as its exit code instead of killing the test session."""
    script = (
        "import sys\n"
        "from confluent_kafka import KafkaException\n"
        "from apro_sync.ops.lag import LagReader\n"
        "reader = LagReader(sys.argv[1])\n"
        "for i in range(20):\n"
        "    for args in ((f'fresh-{i}',), (f'fresh-t-{i}', ['apro.raw'])):\n"
        "        try:\n"
        "            reader.read(*args)\n"
        "        except KafkaException:\n"
        "            pass  # a clear, retryable error is fine; a crash is not\n"
        "reader.close()\n"
    )
    from tests.conftest import new_restartable_broker

    with new_restartable_broker() as broker:
        done = subprocess.run([sys.executable, "-c", script, broker.bootstrap], capture_output=True, timeout=300)
    assert done.returncode == 0, done.stderr.decode()[-2000:]
