"""The two brokers apro-sync runs locally (dev, tests, benchmarks): embedded Tansu or single-node Apache Kafka."""

from __future__ import annotations

from typing import Literal

from apro_sync.apache_kafka import ApacheKafka
from apro_sync.embedded_broker import EmbeddedBroker

BrokerKind = Literal["embedded", "kafka"]
LocalBroker = EmbeddedBroker | ApacheKafka


def local_broker(kind: BrokerKind) -> LocalBroker:
    """A not-yet-started broker (`with local_broker(kind) as broker:` starts and stops it)."""
    return ApacheKafka() if kind == "kafka" else EmbeddedBroker()
