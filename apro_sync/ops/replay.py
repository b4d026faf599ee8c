"""`apro-sync replay`: process the raw webhooks of a time range again.

Republish (default, safe while workers run) copies the selected raw records back onto the raw topic; the sync
ledger keeps GoHighLevel effects exactly-once. `--reset-offsets` moves an idle consumer group back to `--since`.
Offsets are found by timestamp; nothing here prints a record value (docs/operations.md, "Module notes")."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import closing
from dataclasses import dataclass
from datetime import datetime

from confluent_kafka import ConsumerGroupState, ConsumerGroupTopicPartitions, KafkaException, TopicPartition
from tqdm import tqdm

from apro_sync.ops import kafka_io
from apro_sync.ops.selection import (
    PartitionRange,
    ReplayFilter,
    ScanSummary,
    check_range,
    headers_list,
    record_id,
    replay_decision,
    replay_headers,
)
from foundations.config import Settings
from foundations.formats import headers as header_names
from foundations.kafka_connection import KafkaConnection
from foundations.timeparse import to_millis

FLUSH_EVERY = 1000  # records between waits for delivery, so a failure stops the replay early

# A group in one of these states has members (the embedded broker does not list them): its next commit would
# overwrite a reset.
ACTIVE_STATES = frozenset({ConsumerGroupState.STABLE, ConsumerGroupState.PREPARING_REBALANCING,
                           ConsumerGroupState.COMPLETING_REBALANCING})

Confirm = Callable[[str], bool]
Echo = Callable[[str], None]


@dataclass(frozen=True)
class ReplayRequest:
    since: datetime
    until: datetime | None = None
    location: str | None = None
    dry_run: bool = False


def plan_ranges(consumer: kafka_io.Consumer, topic: str, partitions: int, since: datetime,
                until: datetime | None) -> list[PartitionRange]:
    """Per partition: [first offset at/after `since`, first offset after `until` or the current end)."""
    marks = kafka_io.watermarks(consumer, topic, partitions)
    starts = kafka_io.offsets_at(consumer, topic, partitions, to_millis(since))
    ends = kafka_io.offsets_at(consumer, topic, partitions, to_millis(until) + 1) if until is not None else {}
    ranges = []
    for p in range(partitions):
        low, high = marks[p]
        start = starts.get(p)
        start = high if start is None else _verified_start(consumer, topic, p, max(low, min(start, high)), high,
                                                           to_millis(since))
        # Lookups may undershoot (Tansu answers 0 where Kafka answers "none"), never overshoot: an end that is
        # not past the start is not trusted, and every record is checked against its own timestamp anyway.
        end = ends.get(p)
        end = end if end is not None and start < end <= high else high
        ranges.append(PartitionRange(p, start, end))
    return ranges


def _verified_start(
    consumer: kafka_io.Consumer, topic: str, partition: int, start: int, high: int, since_ms: int
) -> int:
    """The first offset from `start` whose record timestamp is >= `since_ms` (else `high`).

    Kafka's lookup is already that offset (one record read to confirm); the embedded broker answers 0 when no
    record matches, which this corrects by reading forward.
    """
    with closing(kafka_io.read_ranges(consumer, topic, [PartitionRange(partition, start, high)])) as records:
        for msg in records:
            ts_type, ts = msg.timestamp()
            if not ts_type or ts >= since_ms:
                return msg.offset()
    return high


def republish(settings: Settings, request: ReplayRequest, confirm: Confirm) -> ScanSummary:
    """Copy the selected raw records back onto the raw topic; returns the counts (raises kafka_io.OperatorError)."""
    check_range(request.since, request.until)
    bootstrap = _bootstrap(settings)
    topic = settings.topics.raw
    partitions = kafka_io.require_topic(kafka_io.admin(bootstrap), bootstrap, topic)
    consumer = kafka_io.reader(bootstrap)
    try:
        ranges = plan_ranges(consumer, topic, partitions, request.since, request.until)
        summary = ScanSummary(ranges=ranges)
        total = sum(r.size for r in ranges)
        if total == 0:
            return summary
        action = "count (dry run)" if request.dry_run else "republish"
        if not request.dry_run and not confirm(f"Scan {total} records of {topic} and {action} the selected ones?"):
            raise kafka_io.OperatorError("aborted: nothing was republished")
        rule = ReplayFilter(since_ms=to_millis(request.since),
                            until_ms=to_millis(request.until) if request.until else None, location=request.location)
        writer = None if request.dry_run else kafka_io.Writer(bootstrap, one_per_batch=settings.embedded_broker,
                                                       max_body_bytes=settings.max_body_bytes)
        with tqdm(total=total, unit="rec", desc="replay", file=_stderr(), leave=False) as bar:
            for msg in kafka_io.read_ranges(consumer, topic, ranges, on_progress=bar.update):
                summary.scanned += 1
                original = headers_list(msg.headers())
                ts_type, ts = msg.timestamp()
                reason = replay_decision(rule, ts if ts_type else None, header_names.to_dict(original), msg.value())
                if reason is not None:
                    summary.skipped[reason] += 1
                    continue
                if writer is None:
                    summary.published += 1
                    continue
                source = record_id(topic, msg.partition(), msg.offset())
                writer.send(source, topic, msg.key(), msg.value(), replay_headers(original, source),
                            partition=msg.partition())
                if summary.scanned % FLUSH_EVERY == 0:
                    summary.published += _settle(writer)
            if writer is not None:
                summary.published += _settle(writer)
        return summary
    finally:
        consumer.close()


def _settle(writer: kafka_io.Writer) -> int:
    writer.flush()
    delivered, failed = writer.take()
    if failed:
        raise kafka_io.OperatorError(f"{len(failed)} records could not be republished ({failed[0][1]}); "
                              f"{len(delivered)} were, re-run the replay (duplicates are harmless)")
    return len(delivered)


def group_activity(client: kafka_io.AdminClient, group: str) -> str | None:
    """Why `group` must not be reset now (its state and members), or None when it is empty / unknown."""
    try:
        desc = client.describe_consumer_groups([group], request_timeout=kafka_io.TIMEOUT_S)[group].result()
    except KafkaException as exc:
        if "GROUP_ID_NOT_FOUND" in str(exc):
            return None
        raise kafka_io.OperatorError(f"could not describe consumer group {group}: {exc.args[0]}") from None
    members = len(desc.members or [])
    if desc.state in ACTIVE_STATES or members:
        return f"consumer group {group} is active (state {desc.state.name}, {members or 'some'} member(s))"
    return None


def _refuse_if_active(client: kafka_io.AdminClient, group: str) -> None:
    active = group_activity(client, group)
    if active:
        raise kafka_io.OperatorError(f"{active}: stop the workers first, or replay without --reset-offsets")


def reset_offsets(settings: Settings, since: datetime, group: str, dry_run: bool, confirm: Confirm,
                  echo: Echo) -> list[tuple[int, int | None, int]]:
    """Move `group`'s committed offsets on the raw topic back to `since`. Returns (partition, old, new)."""
    bootstrap = _bootstrap(settings)
    topic = settings.topics.raw
    client = kafka_io.admin(bootstrap)
    partitions = kafka_io.require_topic(client, bootstrap, topic)
    _refuse_if_active(client, group)
    consumer = kafka_io.reader(bootstrap)
    try:
        ranges = plan_ranges(consumer, topic, partitions, since, None)
    finally:
        consumer.close()
    committed = _committed(client, group, topic, partitions)
    plan = [(r.partition, committed.get(r.partition), r.start) for r in ranges]
    for partition, old, new in plan:
        before = "none" if old is None else str(old)
        echo(f"  partition {partition}: committed {before} -> {new}")
    if dry_run:
        return plan
    if not confirm(f"Reset consumer group {group} on {topic} to {since.isoformat()}?"):
        raise kafka_io.OperatorError("aborted: offsets unchanged")
    # Checked again right before writing: a worker may have started while the operator read the plan.
    _refuse_if_active(client, group)
    request = ConsumerGroupTopicPartitions(group, [TopicPartition(topic, p, new) for p, _, new in plan])
    try:
        result = client.alter_consumer_group_offsets([request], request_timeout=kafka_io.TIMEOUT_S)[group].result()
    except KafkaException as exc:
        raise kafka_io.OperatorError(f"could not reset consumer group {group}: {exc.args[0]}") from None
    for tp in result.topic_partitions or []:
        if tp.error is not None:
            if "UNKNOWN_MEMBER_ID" in str(tp.error):  # the broker saw a member join after our check
                raise kafka_io.OperatorError(f"consumer group {group} is active: stop the workers first")
            raise kafka_io.OperatorError(f"could not reset {topic}[{tp.partition}] for {group}: {tp.error}")
    return plan


def _committed(client: kafka_io.AdminClient, group: str, topic: str, partitions: int) -> dict[int, int | None]:
    request = ConsumerGroupTopicPartitions(group, [TopicPartition(topic, p) for p in range(partitions)])
    try:
        result = client.list_consumer_group_offsets([request], request_timeout=kafka_io.TIMEOUT_S)[group].result()
    except KafkaException as exc:
        raise kafka_io.OperatorError(f"could not read the offsets of consumer group {group}: {exc.args[0]}") from None
    return {tp.partition: (tp.offset if tp.offset >= 0 else None) for tp in result.topic_partitions or []}


def _bootstrap(settings: Settings) -> KafkaConnection:
    if not settings.kafka_bootstrap_servers:
        raise kafka_io.OperatorError("no broker configured: set KAFKA_BOOTSTRAP_SERVERS")
    return settings.kafka


def _stderr():  # noqa: ANN202 - whatever sys.stderr is now (the CLI test runner swaps it)
    import sys

    return sys.stderr
