"""Broker housekeeping shared by the dev stack, the tests and the tools: readiness and topic creation."""

from __future__ import annotations

import time

from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient, NewTopic


def wait_for_broker(bootstrap: str, timeout_s: float = 30.0) -> None:
    """Block until the broker answers a metadata request, or raise TimeoutError."""
    admin = AdminClient({"bootstrap.servers": bootstrap, "socket.timeout.ms": 2000, "log_level": 0})
    deadline = time.monotonic() + timeout_s
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            metadata = admin.list_topics(timeout=2)
            if metadata.brokers:
                return
        except KafkaException as exc:
            last = exc
        time.sleep(0.1)
    raise TimeoutError(f"broker at {bootstrap} did not answer metadata within {timeout_s:.0f}s: {last}")


def ensure_topics(bootstrap: str, topics: list[str], partitions: int, replication: int = 1) -> None:
    """Create the topics that do not exist yet (idempotent)."""
    admin = AdminClient({"bootstrap.servers": bootstrap})
    existing = set(admin.list_topics(timeout=10).topics)
    missing = [NewTopic(t, num_partitions=partitions, replication_factor=replication) for t in topics if t not in existing]
    if not missing:
        return
    for topic, future in admin.create_topics(missing, operation_timeout=10).items():
        try:
            future.result()
        except KafkaException as exc:
            if "TOPIC_ALREADY_EXISTS" not in str(exc):
                raise RuntimeError(f"could not create topic {topic}: {exc}") from exc
