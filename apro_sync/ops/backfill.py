"""`apro-sync backfill`: publish an AestheticsPro export as historical events onto the raw topic.

Resumable: a checkpoint (events acknowledged so far, per export fingerprint) is written atomically after every
acknowledged flush; a re-run skips that many events of the same deterministic order, and any event sent twice
carries the same event id (dropped by the normalizer's dedupe or planned `duplicate`). Design: docs/operations.md.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from confluent_kafka import Producer
from tqdm import tqdm

from foundations.formats import headers as header_names
from apro_sync.ops.backfill_events import CALLS, FIRST_EVENT_EXTRA_CALLS, EventBuilder, HistoricalEvent
from apro_sync.ops.backfill_exports import Export, read_export
from foundations.config import Settings
from foundations.kafka_connection import KafkaConnection
from foundations.topics import producer_size_limits

FLUSH_EVERY = 500  # events between acknowledged flushes (and checkpoints)
GHL_BURST = 100  # GoHighLevel: 100 requests per 10 s per location (docs/sync-engine.md)
GHL_INTERVAL_S = 10.0
GHL_DAILY = 200_000  # requests per day per location (GoHighLevel's documented daily limit)
DAY_S = 86_400.0


class BackfillError(Exception):
    """An operator-facing failure (no value of the export in it)."""


@dataclass
class BackfillRequest:
    clients: Path | None
    appointments: Path | None
    invoices: Path | None
    location: str | None = None
    dry_run: bool = False
    as_of: datetime | None = None
    rate_share: float = 0.5  # share of each location's GoHighLevel budget the backfill may plan for (0: no pacing)
    checkpoint_dir: Path | None = None
    budget_per_10s: int = GHL_BURST  # requests per 10 s per GoHighLevel location (another value for an emulator)
    daily_limit: int = GHL_DAILY  # requests per day per GoHighLevel location


@dataclass
class Prepared:
    export: Export
    by_client: dict[str, list[HistoricalEvent]]
    builder: EventBuilder
    fingerprint: str

    @property
    def events(self) -> list[HistoricalEvent]:
        return [e for events in self.by_client.values() for e in events]


def fingerprint(paths: list[Path | None], location: str | None) -> str:
    digest = hashlib.sha256()
    for path in paths:
        digest.update(b"\0" if path is None else b"\1")
        if path is not None:
            with open(path, "rb") as handle:
                for chunk in iter(lambda: handle.read(1 << 20), b""):
                    digest.update(chunk)
    digest.update((location or "").encode())
    return digest.hexdigest()[:24]


def prepare(request: BackfillRequest, settings: Settings) -> Prepared:
    tz = ZoneInfo(settings.default_timezone)
    export = read_export(request.clients, request.appointments, request.invoices, tz=tz,
                         region=settings.default_phone_region)
    as_of = request.as_of or datetime.now(timezone.utc)
    builder = EventBuilder(export, as_of=as_of, tz=tz, location=request.location)
    by_client = builder.by_client()
    fp = fingerprint([request.clients, request.appointments, request.invoices], request.location)
    return Prepared(export, by_client, builder, fp)


# ---------------------------------------------------------------------------------------------- checkpoint


class Checkpoint:
    """`published` = events of this export acknowledged by the broker, in publishing order. Atomic replace."""

    def __init__(self, directory: Path, fp: str) -> None:
        self.path = directory / f"backfill-{fp}.json"
        self.fingerprint = fp

    def load(self) -> int:
        try:
            data = json.loads(self.path.read_text())
        except FileNotFoundError:
            return 0
        except (OSError, ValueError) as exc:
            raise BackfillError(f"checkpoint {self.path} unreadable ({type(exc).__name__}): delete it to start over")
        if data.get("fingerprint") != self.fingerprint:
            raise BackfillError(f"checkpoint {self.path} belongs to another export")
        return int(data.get("published", 0))

    def save(self, published: int, total: int) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        with open(tmp, "w") as handle:
            json.dump({"fingerprint": self.fingerprint, "published": published, "total": total,
                       "at": datetime.now(timezone.utc).isoformat()}, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, self.path)
        dir_fd = os.open(self.path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


# ------------------------------------------------------------------------------------------ budget, pacing


def ghl_target_of(settings: Settings) -> Callable[[str | None], str]:
    """AestheticsPro location id → the GoHighLevel location whose rate budget its events spend."""
    try:
        from sinks.locations import load_locations

        locations = load_locations(settings)
    except Exception:  # noqa: BLE001 - no GoHighLevel configured here: one budget per AestheticsPro location
        return lambda loc: loc or "default"

    def target(loc: str | None) -> str:
        try:
            return locations.resolve(location_id=loc).ghl_location_id
        except Exception:  # noqa: BLE001 - unknown location: its events will be dead-lettered by the sink
            return loc or "unknown"

    return target


@dataclass
class Budget:
    """Per GoHighLevel location: the calls the backfill will cost and the rate it plans for."""

    share: float  # of each location's 100 requests / 10 s; 0 = not paced (the ETA then assumes `ceiling` of it)
    calls: dict[str, int] = field(default_factory=Counter)
    burst: int = GHL_BURST
    daily: int = GHL_DAILY
    # Of the burst, the most the worker lets a backfill's calls use: 1 - APRO_GHL_LIVE_RESERVE. Pacing faster than
    # the worker drains would only queue, and an ETA at the whole budget would be early.
    ceiling: float = 1.0

    @property
    def effective_share(self) -> float:
        return self.share if self.share > 0 else 1.0

    @property
    def rate_per_s(self) -> float:
        return self.burst / GHL_INTERVAL_S * min(self.effective_share, self.ceiling)

    @property
    def per_day(self) -> int:
        """Calls the backfill may spend per location and UTC day (the rest is live traffic's)."""
        return max(1, int(self.daily * self.effective_share))

    @property
    def pace_per_s(self) -> float:
        return self.rate_per_s if self.share > 0 else 0.0

    def eta_for(self, calls: int) -> float:
        """At the burst rate until a day's share is spent, then the next UTC day (an approximation: it assumes the
        run starts at midnight; GoHighLevel's daily limit, not the 10 s burst, decides large backfills)."""
        days, rest = divmod(max(calls, 0), self.per_day)
        return days * DAY_S + rest / self.rate_per_s if days else rest / self.rate_per_s

    def eta_s(self) -> float:
        """Locations drain in parallel: the slowest one decides."""
        return self.eta_for(max(self.calls.values(), default=0))


def budget_for(by_client: dict[str, list[HistoricalEvent]], target: Callable[[str | None], str],
               share: float, burst: int = GHL_BURST, daily: int = GHL_DAILY, ceiling: float = 1.0) -> Budget:
    calls: Counter[str] = Counter()
    for events in by_client.values():
        for i, e in enumerate(events):
            calls[target(e.location_id)] += CALLS[e.kind] + (FIRST_EVENT_EXTRA_CALLS if i == 0 else 0)
    return Budget(share=share, calls=calls, burst=burst, daily=daily, ceiling=ceiling)


def format_duration(seconds: float) -> str:
    seconds = int(round(seconds))
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days}d{hours:02d}h{minutes:02d}m"
    if hours:
        return f"{hours}h{minutes:02d}m"
    return f"{minutes}m{secs:02d}s"


class Pacer:
    """Token bucket per GoHighLevel location: events are published no faster than their calls fit the share of the
    budget, so the backlog in front of live webhooks stays short (docs/operations.md, "Backfill"). With `per_day`,
    a location that spent its daily share waits for the next UTC day (counted by this process only)."""

    def __init__(self, rate_per_s: float, sleep: Callable[[float], None] = time.sleep,
                 clock: Callable[[], float] = time.monotonic, per_day: int | None = None,
                 wall: Callable[[], float] = time.time) -> None:
        self.rate = rate_per_s
        self.sleep, self.clock, self.wall = sleep, clock, wall
        self.per_day = per_day
        self._next: dict[str, float] = {}
        self._day: dict[str, tuple[int, int]] = {}  # location → (UTC day number, calls counted that day)

    def take(self, location: str, calls: int) -> None:
        if self.rate <= 0:
            return
        if self.per_day is not None:
            day, spent = self._day.get(location, (int(self.wall() // DAY_S), 0))
            if spent + calls > self.per_day and spent:
                self.sleep(max(0.0, (day + 1) * DAY_S - self.wall()))
                day, spent = int(self.wall() // DAY_S), 0
            self._day[location] = (day, spent + calls)
        now = self.clock()
        start = max(self._next.get(location, now), now - GHL_INTERVAL_S)  # at most one window of saved-up credit
        self._next[location] = start + calls / self.rate
        if start > now:
            self.sleep(start - now)


# ------------------------------------------------------------------------------------------------ dry run


@dataclass
class DryRunCounts:
    events: int = 0
    contacts_created: int = 0
    contacts_updated: int = 0
    opportunities_created: int = 0
    opportunities_updated: int = 0
    notes: int = 0
    tags: int = 0
    enrollments: int = 0
    calls: int = 0
    no_contact: int = 0
    skipped: int = 0
    unreadable: int = 0

    def line(self) -> str:
        return (f"{self.events} events: contacts {self.contacts_created} created / {self.contacts_updated} updates, "
                f"opportunities {self.opportunities_created} created / {self.opportunities_updated} updates, "
                f"notes {self.notes}, tags {self.tags}, workflow enrollments {self.enrollments}; "
                f"~{self.calls} GoHighLevel calls; not synced: {self.no_contact} without email/phone, "
                f"{self.skipped} skipped, {self.unreadable} unreadable")


def dry_run(prepared: Prepared, settings: Settings, target: Callable[[str | None], str]) -> dict[str, DryRunCounts]:
    """Run the real normalizer and planner over the events from an empty state, per GoHighLevel location."""
    from foundations.formats.crm_commands import AddNote, AddTags, EnrollWorkflow, UpsertContact, UpsertOpportunity
    from foundations.formats.normalized import NormalizedEvent, Skipped
    from streams.normalize.rules import normalize
    from streams.plan.planner import Outcome, plan

    counts: dict[str, DryRunCounts] = defaultdict(DryRunCounts)
    headers = {header_names.BACKFILL: "1", header_names.CONTENT_TYPE: "application/json"}
    for events in prepared.by_client.values():
        state = None
        contact, opportunity = False, False
        for offset, event in enumerate(events):
            label = target(event.location_id)
            c = counts[label]
            c.events += 1
            result = normalize(event.body, headers, default_timezone=settings.default_timezone,
                               default_region=settings.default_phone_region)
            if isinstance(result, Skipped):
                c.skipped += 1
                continue
            if not isinstance(result, NormalizedEvent):
                c.unreadable += 1
                continue
            result = result.model_copy(update={"raw_offset": offset})
            planned = plan(result, state, location_label=label, now=event.at,
                           default_timezone=settings.default_timezone)
            state = planned.new_state
            if planned.outcome is Outcome.NO_CONTACT:
                c.no_contact += 1
            for op in planned.ops:
                if isinstance(op, UpsertContact):
                    c.contacts_updated += contact
                    c.contacts_created += not contact
                    if not contact:  # the collision check searches by email, then by phone (sync-rules.md)
                        c.calls += bool(op.standard.email) + bool(op.standard.phone)
                    contact = True
                    c.calls += 1
                elif isinstance(op, UpsertOpportunity):
                    c.opportunities_updated += opportunity
                    c.opportunities_created += not opportunity
                    c.calls += 1 if opportunity else 2  # a first write searches before creating
                    opportunity = True
                elif isinstance(op, AddNote):
                    c.notes += 1
                    c.calls += 1
                elif isinstance(op, AddTags):
                    c.tags += 1
                    c.calls += 1
                elif isinstance(op, EnrollWorkflow):
                    c.enrollments += 1
                    c.calls += 1
    return dict(counts)


# ---------------------------------------------------------------------------------------------- publishing


def _producer(settings: Settings) -> Producer:
    config: dict[str, Any] = {
        **KafkaConnection.of(settings.kafka).librdkafka(),
        "client.id": "apro-sync-backfill",
        "enable.idempotence": True,
        "acks": "all",
        "linger.ms": 5,
        # The intake producer's partitioner (librdkafka's default), so a client's backfill and live records share a
        # partition and stay in order.
        "partitioner": "consistent_random",
        "message.timeout.ms": 60_000,
        **producer_size_limits(settings.max_body_bytes),
    }
    if settings.embedded_broker:
        config["batch.num.messages"] = 1  # Tansu reports a wrong end offset for multi-record batches
    return Producer(config)


def _flush(producer: Producer, failed: list[str]) -> None:
    left = producer.flush(60)
    if left or failed:
        reason = failed[0] if failed else f"{left} records not acknowledged in time"
        raise BackfillError(f"publishing stopped: {reason}; re-run the same command to resume")


@dataclass
class PublishSummary:
    total: int
    skipped_by_checkpoint: int
    published: int


def publish(prepared: Prepared, settings: Settings, request: BackfillRequest, pacer: Pacer | None = None,
            target: Callable[[str | None], str] | None = None) -> PublishSummary:
    """Publish the events not yet checkpointed; checkpoint after every acknowledged flush."""
    if not settings.kafka_bootstrap_servers:
        raise BackfillError("no broker configured: set KAFKA_BOOTSTRAP_SERVERS")
    target = target or ghl_target_of(settings)
    events = prepared.events
    checkpoint = Checkpoint(request.checkpoint_dir or settings.state_dir, prepared.fingerprint)
    done = checkpoint.load()
    budget = budget_for(prepared.by_client, target, request.rate_share, request.budget_per_10s, request.daily_limit,
                        1.0 - settings.ghl_live_reserve)
    pacer = pacer or Pacer(budget.pace_per_s, per_day=budget.per_day)
    first_of_client = {id(evs[0]) for evs in prepared.by_client.values() if evs}
    producer = _producer(settings)
    failed: list[str] = []

    def report(err: Any, _msg: Any) -> None:
        if err is not None:
            failed.append(err.name() if hasattr(err, "name") else "error")

    topic = settings.topics.raw
    request_id = f"backfill-{prepared.fingerprint[:12]}"
    remaining: Counter[str] = Counter(budget.calls)
    for e in events[:done]:
        remaining[target(e.location_id)] -= CALLS[e.kind] + (FIRST_EVENT_EXTRA_CALLS if id(e) in first_of_client else 0)
    published = 0
    with tqdm(total=len(events), initial=done, unit="ev", desc="backfill", file=_stderr(), mininterval=0.5) as bar:
        for index in range(done, len(events)):
            event = events[index]
            label = target(event.location_id)
            calls = CALLS[event.kind] + (FIRST_EVENT_EXTRA_CALLS if id(event) in first_of_client else 0)
            pacer.take(label, calls)
            headers = [(header_names.BACKFILL, b"1"), (header_names.CONTENT_TYPE, b"application/json"),
                       (header_names.REQUEST_ID, request_id.encode()),
                       (header_names.RECEIVED_AT, datetime.now(timezone.utc).isoformat().encode())]
            while True:
                try:
                    producer.produce(topic, value=event.body, key=event.client_id.encode(), headers=headers,
                                     on_delivery=report)
                    break
                except BufferError:
                    producer.poll(0.1)
            producer.poll(0)
            remaining[label] -= calls
            published += 1
            if (index + 1) % FLUSH_EVERY == 0 or index + 1 == len(events):
                _flush(producer, failed)
                checkpoint.save(index + 1, len(events))
                bar.update(index + 1 - bar.n)
                eta = budget.eta_for(max(remaining.values(), default=0))
                bar.set_postfix_str(f"GoHighLevel ETA {format_duration(eta)}", refresh=False)
    return PublishSummary(total=len(events), skipped_by_checkpoint=done, published=published)


def _stderr():  # noqa: ANN202 - whatever sys.stderr is now (the CLI test runner swaps it)
    import sys

    return sys.stderr


def summary_lines(prepared: Prepared, budget: Budget) -> list[str]:
    export = prepared.export
    lines = [f"export {prepared.fingerprint}: {len(export.clients)} clients, {len(export.appointments)} appointments, "
             f"{len(export.invoices)} invoices read; {len(export.rejects)} rows rejected; "
             f"{prepared.builder.unpaid_invoices} unpaid invoices and {prepared.builder.filtered_out} rows of other "
             f"locations left out; {sum(len(v) for v in prepared.by_client.values())} events for "
             f"{len(prepared.by_client)} clients"]
    for reject in export.rejects[:20]:
        lines.append(f"  rejected {reject.resource} row {reject.row}: {reject.column}: {reject.reason}")
    if len(export.rejects) > 20:
        lines.append(f"  ... and {len(export.rejects) - 20} more rejected rows")
    for key, n in sorted(export.lenient.items()):
        lines.append(f"  {n} invalid {key} values dropped")
    for label, calls in sorted(budget.calls.items()):
        lines.append(f"  GoHighLevel location {label}: ~{calls} calls at {budget.rate_per_s:g} calls/s, at most "
                     f"{budget.per_day} a day ≈ {format_duration(budget.eta_for(calls))}")
    lines.append(f"ETA (the slowest location, calls ÷ its rate budget share): {format_duration(budget.eta_s())}")
    return lines


__all__ = ["BackfillError", "BackfillRequest", "Checkpoint", "DryRunCounts", "Pacer", "Prepared", "budget_for",
           "dry_run", "fingerprint", "ghl_target_of", "prepare", "publish", "summary_lines"]
