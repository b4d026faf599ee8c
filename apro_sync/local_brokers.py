"""The two brokers apro-sync runs locally (dev, tests, benchmarks): embedded Tansu or single-node Apache Kafka."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from typing import Literal

from apro_sync.apache_kafka import ApacheKafka
from apro_sync.embedded_broker import EmbeddedBroker

BrokerKind = Literal["embedded", "kafka"]
LocalBroker = EmbeddedBroker | ApacheKafka


def local_broker(kind: BrokerKind) -> LocalBroker:
    """A not-yet-started broker (`with local_broker(kind) as broker:` starts and stops it)."""
    return ApacheKafka() if kind == "kafka" else EmbeddedBroker()


@contextlib.contextmanager
def external_or_embedded() -> Iterator[tuple[str, bool]]:
    """(bootstrap, embedded) for a benchmark: KAFKA_BOOTSTRAP_SERVERS when set, else an embedded broker that lives
    as long as the block."""
    bootstrap = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
    if bootstrap:
        yield bootstrap, False
        return
    broker = EmbeddedBroker().start()
    try:
        yield broker.bootstrap, True
    finally:
        broker.stop()
