"""Read a consumer group's committed offsets without confluent-kafka's AdminClient (see README.md)."""

from __future__ import annotations

from collections.abc import Sequence

from confluent_kafka import Consumer, KafkaException, TopicPartition


class CommittedOffsets:
    """Committed offsets through one idle `Consumer` per group (it never subscribes, so never joins the group).

    `AdminClient.list_consumer_group_offsets` crashes the process (SIGSEGV, confluent-kafka 2.15.1 and 2.16.1)
    when a freshly started Apache Kafka answers COORDINATOR_LOAD_IN_PROGRESS."""

    def __init__(self, librdkafka_config: dict[str, object], timeout_s: float) -> None:
        self._config = librdkafka_config
        self._timeout_s = timeout_s
        self._consumers: dict[str, Consumer] = {}

    def read(self, group: str, partitions: Sequence[tuple[str, int]]) -> dict[tuple[str, int], int | None]:
        """Next offset the group will read per partition; None where it never committed."""
        if not partitions:
            return {}
        if group not in self._consumers:
            self._consumers[group] = Consumer(
                {**self._config, "group.id": group, "enable.auto.commit": False, "log_level": 0})
        got = self._consumers[group].committed([TopicPartition(t, p) for t, p in partitions],
                                               timeout=self._timeout_s)
        offsets: dict[tuple[str, int], int | None] = {}
        for tp in got:
            if tp.error is not None:
                raise KafkaException(tp.error)
            offsets[(tp.topic, tp.partition)] = tp.offset if tp.offset >= 0 else None
        return offsets

    def close(self) -> None:
        for consumer in self._consumers.values():
            consumer.close()
        self._consumers.clear()
