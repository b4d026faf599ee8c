"""`apro-sync dlq list|redrive`: inspect and republish dead-letter (and quarantine) records.

Records are named `topic:partition:offset`. Listing shows headers only, never the value (PHI). Redrive
republishes the value to its source topic and records a marker in the compacted `<dead-letter topic>.redriven`
topic, so no store outside Kafka is needed (details: docs/operations.md, "Module notes")."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone

from tqdm import tqdm

from apro_sync.ops import kafka_io
from apro_sync.ops.selection import (
    DlqEntry,
    dlq_entry,
    headers_list,
    marker_value,
    record_id,
    redrive_headers,
    redrive_target,
    select_for_redrive,
)
from foundations.config import Settings
from foundations.formats import headers as header_names
from foundations.kafka_connection import KafkaConnection

Confirm = Callable[[str], bool]


def source_topic(settings: Settings, quarantine: bool) -> str:
    return settings.topics.quarantine if quarantine else settings.topics.deadletter


def marker_topic(topic: str) -> str:
    return f"{topic}.redriven"


@dataclass
class _Record:
    entry: DlqEntry
    key: bytes | None
    value: bytes | None
    headers: list[tuple[str, bytes]]


@dataclass
class RedriveSummary:
    selected: int = 0
    redriven: int = 0
    skipped: dict[str, int] = field(default_factory=dict)
    targets: dict[str, int] = field(default_factory=dict)

    def lines(self, dry_run: bool) -> list[str]:
        verb = "would be redriven" if dry_run else "redriven"
        out = [f"records selected: {self.selected}", f"records {verb}: {self.redriven}"]
        out += [f"left out ({reason}): {count}" for reason, count in sorted(self.skipped.items())]
        out += [f"  to {topic}: {count}" for topic, count in sorted(self.targets.items())]
        return out


def _bootstrap(settings: Settings) -> KafkaConnection:
    if not settings.kafka_bootstrap_servers:
        raise kafka_io.OperatorError("no broker configured: set KAFKA_BOOTSTRAP_SERVERS")
    return settings.kafka


def _redriven_ids(
    consumer: kafka_io.Consumer, client: kafka_io.AdminClient, bootstrap: KafkaConnection, topic: str
) -> set[str]:
    """Record ids with a redrive marker (latest marker per key wins; a tombstone clears it)."""
    markers = marker_topic(topic)
    count = kafka_io.partition_counts(client, bootstrap, [markers]).get(markers)
    if count is None:
        return set()
    done: set[str] = set()
    for msg in kafka_io.read_all(consumer, markers, count):
        key = (msg.key() or b"").decode("utf-8", "replace")
        if msg.value() is None:
            done.discard(key)
        else:
            done.add(key)
    return done


def _read(settings: Settings, quarantine: bool, with_values: bool) -> list[_Record]:
    bootstrap = _bootstrap(settings)
    topic = source_topic(settings, quarantine)
    client = kafka_io.admin(bootstrap)
    partitions = kafka_io.require_topic(client, bootstrap, topic)
    consumer = kafka_io.reader(bootstrap)
    try:
        redriven = _redriven_ids(consumer, client, bootstrap, topic)
        records = []
        for msg in kafka_io.read_all(consumer, topic, partitions):
            rid = record_id(topic, msg.partition(), msg.offset())
            hdrs = headers_list(msg.headers())
            ts_type, ts = msg.timestamp()
            entry = dlq_entry(rid, header_names.to_dict(hdrs), ts if ts_type else None,
                              default_stage="intake" if quarantine else "unknown", redriven=rid in redriven)
            # Values stay in memory only when a redrive needs them; `list` drops them right here.
            records.append(_Record(entry, msg.key(), msg.value() if with_values else None, hdrs))
        return records
    finally:
        consumer.close()


def list_entries(settings: Settings, *, quarantine: bool = False, stage: str | None = None,
                 limit: int | None = None, include_redriven: bool = True) -> list[DlqEntry]:
    """Dead-letter entries, oldest first per partition, headers only."""
    entries = [r.entry for r in _read(settings, quarantine, with_values=False)]
    if stage is not None:
        entries = [e for e in entries if e.stage == stage]
    if not include_redriven:
        entries = [e for e in entries if not e.redriven]
    return entries[:limit] if limit is not None else entries


def format_table(entries: Sequence[DlqEntry]) -> str:
    header = ("ID", "STAGE", "REASON", "EVENT", "LOCATION", "ATTEMPTS", "AT", "STATUS")
    rows = [header] + [
        (e.id, e.stage, _short(e.reason, 60), e.event_id or "-", e.location or "-", str(e.attempts), e.at or "-",
         "redriven" if e.redriven else "pending")
        for e in entries
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    return "\n".join("  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row)).rstrip() for row in rows)


def format_json(entries: Sequence[DlqEntry]) -> str:
    return json.dumps([e.as_dict() for e in entries], indent=2)


def _short(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


def redrive(settings: Settings, *, ids: Sequence[str] = (), all_: bool = False, stage: str | None = None,
            quarantine: bool = False, force: bool = False, dry_run: bool = False,
            confirm: Confirm = lambda _: True) -> RedriveSummary:
    """Republish the selected records to their source topic; marks each one redriven once acknowledged."""
    if not ids and not all_:
        raise kafka_io.OperatorError("choose the records: --id ID (repeatable) or --all")
    if ids and all_:
        raise kafka_io.OperatorError("use either --id or --all, not both")
    bootstrap = _bootstrap(settings)
    topic = source_topic(settings, quarantine)
    records = _read(settings, quarantine, with_values=True)
    by_id = {r.entry.id: r for r in records}
    chosen, skipped, missing = select_for_redrive((r.entry for r in records), ids=ids, all_=all_, stage=stage,
                                                  force=force)
    if missing:
        raise kafka_io.OperatorError(f"no such record in {topic}: {', '.join(missing)} (see `apro-sync dlq list`)")
    summary = RedriveSummary(selected=len(chosen), skipped=dict(skipped))
    client = kafka_io.admin(bootstrap)
    plan = []
    sources = {
        header_names.to_dict(by_id[e.id].headers).get(header_names.DLQ_SOURCE_TOPIC) or settings.topics.raw
        for e in chosen
    }
    counts = kafka_io.partition_counts(client, bootstrap, sorted(sources))
    for entry in chosen:
        record = by_id[entry.id]
        target, partition = redrive_target(header_names.to_dict(record.headers), settings.topics.raw, counts)
        if target not in counts:
            raise kafka_io.OperatorError(f"{entry.id}: source topic {target} does not exist")
        plan.append((record, target, partition))
        summary.targets[target] = summary.targets.get(target, 0) + 1
    if dry_run or not plan:
        summary.redriven = len(plan) if dry_run else 0
        return summary
    if not confirm(f"Redrive {len(plan)} records from {topic}?"):
        raise kafka_io.OperatorError("aborted: nothing was redriven")
    markers = marker_topic(topic)
    kafka_io.ensure_compacted(client, markers)
    writer = kafka_io.Writer(bootstrap, one_per_batch=settings.embedded_broker, max_body_bytes=settings.max_body_bytes)
    with tqdm(total=len(plan), unit="rec", desc="redrive", file=_stderr(), leave=False) as bar:
        for start in range(0, len(plan), 500):
            chunk = plan[start:start + 500]
            for record, target, partition in chunk:
                writer.send(record, target, record.key, record.value, redrive_headers(record.headers, record.entry.id),
                            partition=partition)
            writer.flush()
            delivered, failed = writer.take()
            # Markers only for acknowledged records: a failed one stays pending and is retried by the next --all.
            now = datetime.now(timezone.utc)
            for record, msg in delivered:
                where = record_id(msg.topic(), msg.partition(), msg.offset())
                writer.send(record.entry.id, markers, record.entry.id.encode(),
                            marker_value(where, record.entry.attempts + 1, now), [])
            writer.flush()
            marked, marker_failed = writer.take()
            summary.redriven += len(delivered)
            bar.update(len(chunk))
            if failed or marker_failed:
                problem = (failed or marker_failed)[0][1]
                raise kafka_io.OperatorError(f"{len(failed)} records could not be republished and {len(marker_failed)} "
                                      f"could not be marked ({problem}); {summary.redriven} were redriven, "
                                      "run the redrive again")
            del marked
    return summary


def _stderr():  # noqa: ANN202 - whatever sys.stderr is now (the CLI test runner swaps it)
    import sys

    return sys.stderr
