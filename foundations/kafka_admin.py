"""Broker housekeeping shared by the dev stack, the tests and the tools: readiness, topic creation and checks."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import AdminClient, ConfigResource, NewTopic

from foundations.kafka_connection import KafkaAuthError, KafkaConnection
from foundations.topics import TopicSpec

if TYPE_CHECKING:
    from foundations.config import Settings

Bootstrap = KafkaConnection | str


def _admin(bootstrap: Bootstrap, errors: list[KafkaError] | None = None, **extra: object) -> AdminClient:
    config = {**KafkaConnection.of(bootstrap).librdkafka(), **extra}
    if errors is not None:
        config["error_cb"] = errors.append
    return AdminClient(config)


def wait_for_broker(bootstrap: Bootstrap, timeout_s: float = 30.0) -> None:
    """Block until the broker answers a metadata request; raise KafkaAuthError at once on refused credentials,
    TimeoutError when it never answers."""
    connection = KafkaConnection.of(bootstrap)
    errors: list[KafkaError] = []
    admin = _admin(connection, errors, **{"socket.timeout.ms": 2000, "log_level": 0})
    deadline = time.monotonic() + timeout_s
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            metadata = admin.list_topics(timeout=2)
            if metadata.brokers:
                return
        except KafkaException as exc:
            last = exc
            errors.append(exc.args[0])
        admin.poll(0)  # serves error_cb: an authentication failure arrives there, not as the exception
        for error in errors:
            problem = connection.auth_error(error.str())
            if problem is not None:
                raise problem
        errors.clear()
        time.sleep(0.1)
    raise TimeoutError(f"broker at {connection} did not answer metadata within {timeout_s:.0f}s: {last}")


def check_credentials(connection: KafkaConnection, timeout_s: float = 15.0) -> None:
    """At start, with TLS or SASL configured: raise ConfigError when the broker refuses the credentials (a broker
    that is merely unreachable is tolerated: the processes wait and retry as they do without security)."""
    from foundations.config import ConfigError

    if not (connection.uses_ssl or connection.uses_sasl):
        return
    try:
        wait_for_broker(connection, timeout_s)
    except KafkaAuthError as exc:
        raise ConfigError(str(exc)) from None
    except TimeoutError:
        return


def prepare_topics(settings: "Settings") -> list[Mismatch]:
    """Create missing topics with their production configs; return how existing ones differ (never fails)."""
    specs = settings.topic_specs()
    ensure_topics(settings.kafka, specs)
    return check_topics(settings.kafka, specs)


def ensure_topics(bootstrap: Bootstrap, topics: Sequence[str | TopicSpec], partitions: int = 1,
                  replication: int = 1) -> None:
    """Create the topics that do not exist yet (idempotent). Names get `partitions`/`replication` and broker
    defaults; `TopicSpec`s carry their own partitions, replication and configs."""
    specs = [t if isinstance(t, TopicSpec) else TopicSpec(t, partitions, replication) for t in topics]
    admin = _admin(bootstrap)
    existing = set(admin.list_topics(timeout=10).topics)
    missing = [NewTopic(s.name, num_partitions=s.partitions, replication_factor=s.replication, config=s.config)
               for s in specs if s.name not in existing]
    if not missing:
        return
    for topic, future in admin.create_topics(missing, operation_timeout=10).items():
        try:
            future.result()
        except KafkaException as exc:
            if "TOPIC_ALREADY_EXISTS" not in str(exc):
                raise RuntimeError(f"could not create topic {topic}: {exc}") from exc
    _wait_listed(admin, {t.topic: t.num_partitions for t in missing})


def _wait_listed(admin: AdminClient, partitions: dict[str, int], timeout_s: float = 15.0) -> None:
    """Apache Kafka answers a create once its controller has the topic; the broker's metadata follows a moment
    later. Wait (bounded) until every created topic is listed with its partitions and their leaders, so a check or
    a client started right after sees it. On timeout, return: whatever uses the topic next reports it."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        listed = admin.list_topics(timeout=10).topics
        if all((meta := listed.get(name)) is not None and meta.error is None and len(meta.partitions) == count
               and all(p.leader >= 0 for p in meta.partitions.values()) for name, count in partitions.items()):
            return
        time.sleep(0.1)


@dataclass(frozen=True)
class Mismatch:
    topic: str
    setting: str
    expected: str
    actual: str

    def __str__(self) -> str:
        return f"{self.topic}: {self.setting} is {self.actual}, expected {self.expected}"


def check_topics(bootstrap: Bootstrap, specs: Sequence[TopicSpec]) -> list[Mismatch]:
    """Compare existing topics with their specs: missing topics, partitions, replication and every config."""
    admin = _admin(bootstrap)
    metadata = admin.list_topics(timeout=10)
    problems: list[Mismatch] = []
    present = []
    for spec in specs:
        meta = metadata.topics.get(spec.name)
        if meta is None or meta.error is not None:
            problems.append(Mismatch(spec.name, "topic", "present", "missing"))
            continue
        present.append(spec)
        if len(meta.partitions) != spec.partitions:
            problems.append(Mismatch(spec.name, "partitions", str(spec.partitions), str(len(meta.partitions))))
        replicas = min((len(p.replicas) for p in meta.partitions.values()), default=0)
        if replicas != spec.replication:
            problems.append(Mismatch(spec.name, "replication", str(spec.replication), str(replicas)))
    if not present:
        return problems
    by_name = {s.name: s for s in present}
    resources = [ConfigResource(ConfigResource.Type.TOPIC, s.name) for s in present]
    for resource, future in admin.describe_configs(resources, request_timeout=10).items():
        spec = by_name[resource.name]
        actual = {name: entry.value for name, entry in future.result().items()}
        for name, expected in spec.config.items():
            if actual.get(name) != expected:
                problems.append(Mismatch(spec.name, name, expected, str(actual.get(name))))
    return problems
