"""Pure decisions of the operator tools (`replay`, `dlq list|redrive`): which record to take, what to publish.

No Kafka I/O here (apro_sync/ops/kafka_io.py does that), so every rule is testable on plain values.
Nothing here reads a record value except `record_location`, which returns a location id/name only (not PHI).
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime

from foundations.formats import deadletter
from foundations.formats import headers as header_names
from foundations.timeparse import from_millis

STAGES = ("intake", "normalize", "sync")

HeaderList = list[tuple[str, bytes]]


# ------------------------------------------------------------------------------------------------ record ids

def record_id(topic: str, partition: int, offset: int) -> str:
    """`topic:partition:offset`: how the tools name a record (stable, not PHI)."""
    return f"{topic}:{partition}:{offset}"


def parse_record_id(text: str) -> tuple[str, int, int]:
    """Inverse of `record_id`. Topic names may contain dots, never colons (Kafka forbids them)."""
    parts = text.strip().rsplit(":", 2)
    if len(parts) != 3 or not parts[0]:
        raise ValueError(f"not a record id (topic:partition:offset): {text!r}")
    try:
        partition, offset = int(parts[1]), int(parts[2])
    except ValueError:
        raise ValueError(f"not a record id (topic:partition:offset): {text!r}") from None
    if partition < 0 or offset < 0:
        raise ValueError(f"not a record id (topic:partition:offset): {text!r}")
    return parts[0], partition, offset


def headers_list(raw: Sequence[tuple[str, bytes | str | None]] | None) -> HeaderList:
    """confluent-kafka's header list (None, str or bytes values) → [(name, bytes)], order and repeats kept."""
    out: HeaderList = []
    for name, value in raw or ():
        if value is None:
            continue
        out.append((name, value if isinstance(value, bytes) else str(value).encode("utf-8")))
    return out


# ------------------------------------------------------------------------------------------------ replay

@dataclass(frozen=True)
class ReplayFilter:
    """What `replay` keeps: record timestamp within [since_ms, until_ms] (inclusive), `location` by id or name.

    The offsets looked up by time already bound the scan; checking each record's own timestamp as well keeps
    the result exact when a lookup is coarse (the embedded broker answers offset 0 when no record matches).
    """

    since_ms: int | None = None
    until_ms: int | None = None
    location: str | None = None


# Reasons a scanned raw record is not republished (keys of the summary).
BEFORE_SINCE = "before --since"
AFTER_UNTIL = "after --until"
OTHER_LOCATION = "other location"
NO_LOCATION = "no location"
REPLAY_COPY = "already a replay copy"


def record_location(headers: dict[str, str], value: bytes | None) -> set[str]:
    """The record's location: the token-bound location header, else the payload's location id and name.

    The token binding is what the producer verified, so it wins when present (and spares parsing the body).
    """
    bound = headers.get(header_names.TOKEN_LOCATION)
    if bound:
        return {bound.strip().lower()}
    if not value:
        return set()
    from foundations.formats.raw import PayloadError, find_location, parse_body  # lazy: `--help` stays fast

    try:
        loc_id, name = find_location(parse_body(value, headers.get(header_names.CONTENT_TYPE)))
    except (PayloadError, RecursionError):
        return set()
    return {str(v).strip().lower() for v in (loc_id, name) if v}


def replay_decision(rule: ReplayFilter, timestamp_ms: int | None, headers: dict[str, str],
                    value: bytes | None) -> str | None:
    """None → republish; else the reason the record is left out.

    A record that is itself a replay copy is always left out: its original sits earlier in the topic, so it is
    either inside the range (and copied itself) or before `--since` (out of the range).
    """
    if header_names.REPLAYED_FROM in headers:
        return REPLAY_COPY
    if rule.since_ms is not None and timestamp_ms is not None and timestamp_ms < rule.since_ms:
        return BEFORE_SINCE
    if rule.until_ms is not None and timestamp_ms is not None and timestamp_ms > rule.until_ms:
        return AFTER_UNTIL
    if rule.location is not None:
        found = record_location(headers, value)
        if not found:
            return NO_LOCATION
        if rule.location.strip().lower() not in found:
            return OTHER_LOCATION
    return None


def replay_headers(original: HeaderList, source: str, mode: str = "replay") -> HeaderList:
    """Original headers (order kept) + the replay marker and where the copy comes from (never PHI)."""
    kept = [(k, v) for k, v in original if k.lower() not in (header_names.REPLAY, header_names.REPLAYED_FROM)]
    return kept + [(header_names.REPLAY, mode.encode()), (header_names.REPLAYED_FROM, source.encode())]


@dataclass
class PartitionRange:
    """Offsets [start, end) of one partition the tool reads."""

    partition: int
    start: int
    end: int

    @property
    def size(self) -> int:
        return max(0, self.end - self.start)


@dataclass
class ScanSummary:
    """Counts for the closing report of `replay` and `dlq redrive`."""

    scanned: int = 0
    published: int = 0
    skipped: Counter[str] = field(default_factory=Counter)
    ranges: list[PartitionRange] = field(default_factory=list)

    def lines(self, verb: str, dry_run: bool) -> list[str]:
        done = f"would be {verb}" if dry_run else verb
        out = [f"records scanned: {self.scanned}", f"records {done}: {self.published}"]
        for reason, count in sorted(self.skipped.items()):
            out.append(f"left out ({reason}): {count}")
        for r in self.ranges:
            span = f"offsets {r.start}..{r.end - 1}" if r.size else "nothing in range"
            out.append(f"  partition {r.partition}: {span} ({r.size} records)")
        return out


def check_range(since: datetime, until: datetime | None) -> None:
    if until is not None and since > until:
        raise ValueError(f"--since ({since.isoformat()}) is after --until ({until.isoformat()})")


# ------------------------------------------------------------------------------------------------ dead letters

@dataclass(frozen=True)
class DlqEntry:
    """One dead-letter (or quarantine) record as the operator sees it: headers only, never the value."""

    id: str
    stage: str
    reason: str
    event_id: str
    location: str
    attempts: int
    at: str
    source: str
    redriven: bool = False

    def as_dict(self) -> dict[str, object]:
        return {"id": self.id, "stage": self.stage, "reason": self.reason, "event_id": self.event_id,
                "location": self.location, "attempts": self.attempts, "at": self.at, "source": self.source,
                "redriven": self.redriven}


def dlq_entry(rid: str, headers: dict[str, str], timestamp_ms: int | None, *, default_stage: str,
              redriven: bool) -> DlqEntry:
    """Build the listing row. Quarantine records carry only REASON (and the raw headers): stage = intake."""
    at = headers.get(header_names.DLQ_AT) or headers.get(header_names.RECEIVED_AT) or (
        from_millis(timestamp_ms).isoformat() if timestamp_ms is not None and timestamp_ms >= 0 else "")
    source, partition, offset = deadletter.source(headers)
    if source and partition is not None and offset is not None:
        source = record_id(source, partition, offset)
    return DlqEntry(
        id=rid,
        stage=headers.get(header_names.DLQ_STAGE) or default_stage,
        reason=headers.get(header_names.REASON, ""),
        event_id=headers.get(header_names.DLQ_EVENT_ID, ""),
        location=headers.get(header_names.DLQ_LOCATION) or headers.get(header_names.TOKEN_LOCATION) or "",
        attempts=deadletter.attempts(headers),
        at=at,
        source=source,
        redriven=redriven,
    )


def redrive_target(
    headers: dict[str, str], fallback_topic: str, partitions_of: dict[str, int]
) -> tuple[str, int | None]:
    """(topic, partition or None = by key) a dead-letter record goes back to.

    The source partition is kept when the topic still has it, so the client's records stay on one partition
    whatever partitioner the original writer used; records without a source (quarantine) go to `fallback_topic`.
    """
    source_topic, partition, _ = deadletter.source(headers)
    topic = source_topic or fallback_topic
    count = partitions_of.get(topic)
    if partition is not None and (count is None or partition < 0 or partition >= count):
        partition = None
    return topic, partition


def redrive_headers(original: HeaderList, rid: str) -> HeaderList:
    """Original headers minus the dead-letter ones, attempts + 1, and the redrive marker."""
    attempts = deadletter.attempts(dict((k.lower(), v.decode("utf-8", "replace")) for k, v in original))
    kept = [
        (k, v)
        for k, v in original
        if k.lower() not in deadletter.DEADLETTER_HEADERS
        and k.lower() not in (header_names.REPLAY, header_names.REPLAYED_FROM)
    ]
    return kept + [(header_names.DLQ_ATTEMPTS, str(attempts + 1).encode()), (header_names.REPLAY, b"redrive"),
                   (header_names.REPLAYED_FROM, rid.encode())]


def select_for_redrive(entries: Iterable[DlqEntry], *, ids: Sequence[str], all_: bool, stage: str | None,
                       force: bool) -> tuple[list[DlqEntry], Counter[str], list[str]]:
    """(entries to redrive, left-out counts by reason, requested ids not found)."""
    wanted = set(ids)
    chosen: list[DlqEntry] = []
    skipped: Counter[str] = Counter()
    seen: set[str] = set()
    for entry in entries:
        if wanted and entry.id not in wanted:
            continue
        if not wanted and not all_:
            continue
        seen.add(entry.id)
        if stage is not None and entry.stage != stage:
            skipped[f"stage is not {stage}"] += 1
        elif entry.redriven and not force:
            skipped["already redriven"] += 1
        else:
            chosen.append(entry)
    missing = sorted(wanted - seen)
    return chosen, skipped, missing


def marker_value(target: str, attempts: int, at: datetime) -> bytes:
    """Value of a redrive marker (compacted topic keyed by the dead-letter record id). No PHI."""
    return json.dumps({"redriven_to": target, "attempts": attempts, "at": at.isoformat()}).encode()
