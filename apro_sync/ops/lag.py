"""Consumer-lag exporter: end offset minus committed offset per consumer group and topic-partition.

A stalled worker reports nothing, so a separate process asks the broker and publishes
`apro_consumer_lag{group, topic, partition}`. Arithmetic (`partition_lag`, `compute_lags`) is pure;
`LagReader` does the broker I/O; `run` serves it."""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import structlog
from confluent_kafka import KafkaException, TopicPartition
from confluent_kafka.admin import AdminClient, OffsetSpec

from foundations.config import Settings
from foundations.kafka_connection import KafkaConnection
from foundations.metrics import CONSUMER_LAG
from workarounds.group_offsets import CommittedOffsets

log = structlog.get_logger(__name__)

# (topic, partition)
TP = tuple[str, int]


@dataclass(frozen=True)
class PartitionLag:
    group: str
    topic: str
    partition: int
    lag: int


def partition_lag(end_offset: int, committed: int | None, start_offset: int = 0) -> int:
    """Records the group still has to read in one partition.

    `committed` is the next offset the group will read (Kafka convention), or None / negative when the group
    has never committed there: then everything still retained (end - start) is unread. Never negative: the
    committed offset and the end offset are read at slightly different moments.
    """
    if end_offset < 0:
        return 0
    if committed is None or committed < 0:
        return max(0, end_offset - max(0, start_offset))
    return max(0, end_offset - committed)


def compute_lags(
    group: str,
    committed: Mapping[TP, int | None],
    end_offsets: Mapping[TP, int],
    start_offsets: Mapping[TP, int] | None = None,
) -> list[PartitionLag]:
    """Lag for every partition whose end offset is known, sorted by topic then partition."""
    starts = start_offsets or {}
    return [
        PartitionLag(
            group,
            topic,
            partition,
            partition_lag(end, committed.get((topic, partition)), starts.get((topic, partition), 0)),
        )
        for (topic, partition), end in sorted(end_offsets.items())
    ]


class LagReader:
    """Reads end offsets with one AdminClient, committed offsets through `workarounds.group_offsets`."""

    def __init__(self, bootstrap: KafkaConnection | str, timeout_s: float = 10.0) -> None:
        connection = KafkaConnection.of(bootstrap)
        self._admin = AdminClient({**connection.librdkafka(), "log_level": 0})
        self._committed = CommittedOffsets(connection.librdkafka(), timeout_s)
        self._timeout_s = timeout_s

    def partitions(self, topics: Iterable[str] | None = None) -> list[TP]:
        """Every partition of the given topics that exist (missing topics are skipped, not an error);
        `None` means every non-internal topic of the cluster."""
        metadata = self._admin.list_topics(timeout=self._timeout_s)
        names = [t for t in metadata.topics if not t.startswith("__")] if topics is None else topics
        found: list[TP] = []
        for topic in names:
            meta = metadata.topics.get(topic)
            if meta is None or meta.error is not None:
                continue
            found.extend((topic, p) for p in meta.partitions)
        return sorted(found)

    def committed(self, group: str, partitions: Sequence[TP] | None = None) -> dict[TP, int | None]:
        """The group's committed offsets; `partitions=None` gives every partition it has committed on."""
        if partitions is not None:
            return self._committed.read(group, list(partitions))
        offsets = self._committed.read(group, self.partitions())
        return {tp: offset for tp, offset in offsets.items() if offset is not None}

    def close(self) -> None:
        self._committed.close()

    def offsets(self, partitions: Iterable[TP], spec: OffsetSpec) -> dict[TP, int]:
        request = {TopicPartition(t, p): spec for t, p in partitions}
        if not request:
            return {}
        futures = self._admin.list_offsets(request, request_timeout=self._timeout_s)
        return {(tp.topic, tp.partition): future.result().offset for tp, future in futures.items()}

    def read(self, group: str, topics: Sequence[str] = ()) -> list[PartitionLag]:
        """Lag of one group. With `topics`, every partition of them (uncommitted ones count from the start);
        without, the partitions the group has committed offsets on."""
        if topics:
            wanted = self.partitions(topics)
            if not wanted:
                return []
            committed = self.committed(group, wanted)
        else:
            committed = self.committed(group)
            wanted = sorted(committed)
        uncommitted = [tp for tp in wanted if committed.get(tp) is None]
        return compute_lags(
            group,
            committed,
            self.offsets(wanted, OffsetSpec.latest()),
            self.offsets(uncommitted, OffsetSpec.earliest()),
        )


class LagGauge:
    """Writes lags into `apro_consumer_lag`, dropping series for partitions that are no longer reported."""

    def __init__(self) -> None:
        self._series: set[tuple[str, str, str]] = set()

    def update(self, lags: Iterable[PartitionLag], groups: Iterable[str]) -> None:
        """Replace the series of `groups` (only those: a group whose read failed keeps its last values)."""
        refreshed = set(groups)
        current: set[tuple[str, str, str]] = set()
        for lag in lags:
            labels = (lag.group, lag.topic, str(lag.partition))
            CONSUMER_LAG.labels(*labels).set(lag.lag)
            current.add(labels)
        for labels in {s for s in self._series if s[0] in refreshed} - current:
            CONSUMER_LAG.remove(*labels)
        self._series = {s for s in self._series if s[0] not in refreshed} | current


def collect_once(reader: LagReader, gauge: LagGauge, groups: Sequence[str], topics: Sequence[str]) -> int:
    """One scrape of every group; returns how many groups failed (logged, never raised)."""
    failures = 0
    for group in groups:
        try:
            gauge.update(reader.read(group, topics), [group])
        except KafkaException as exc:
            failures += 1
            log.warning("lag_read_failed", group=group, error=str(exc))
    return failures


def run(
    settings: Settings,
    *,
    groups: Sequence[str] = (),
    topics: Sequence[str] = (),
    host: str = "0.0.0.0",
    port: int = 9308,
    interval_s: float = 15.0,
) -> None:
    """Serve /metrics on host:port and refresh the lag gauges every `interval_s` seconds, forever."""
    from prometheus_client import start_http_server

    if not settings.kafka_bootstrap_servers:
        raise SystemExit("KAFKA_BOOTSTRAP_SERVERS is not set")
    groups = list(groups) or [settings.worker_id]
    reader, gauge = LagReader(settings.kafka), LagGauge()
    start_http_server(port, addr=host)
    log.info("lag_exporter_started", host=host, port=port, groups=groups, topics=list(topics), interval_s=interval_s)
    while True:
        started = time.monotonic()
        collect_once(reader, gauge, groups, topics)
        time.sleep(max(0.0, interval_s - (time.monotonic() - started)))
