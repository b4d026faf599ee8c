"""The normalization agent: raw webhook records → normalized | skipped | dead-letter topics (Kafka I/O only).

At least once: a batch's outputs are acknowledged by the broker before its input offsets are acked; replays
are caught by the bounded event-id dedupe. Outputs go through a batching producer (output_producer.py), in
input order per partition, so a client's events stay in order."""

from __future__ import annotations

import asyncio
import logging
import time
import weakref
from collections import defaultdict
from collections.abc import Iterable
from typing import Any

import faust
from faust.streams import _current_event  # the context var Faust routes table changelog writes by

from foundations import metrics, native
from foundations.config import Settings
from foundations.formats import deadletter
from foundations.formats import headers as header_names
from foundations.formats.normalized import NormalizedEvent, Skipped, Unreadable
from streams.normalize.dedupe import EventDeduper
from streams.normalize.output_producer import OutputProducer, OutputRecord, producer_config
from streams.normalize.rules import body_hash, normalize
from workarounds.consumer_control import SequenceGuard
from workarounds.rocksdb_store import table_store

log = logging.getLogger("apro_sync.normalize")

STAGE = "normalize"
BATCH_MAX = 1000
BATCH_WITHIN_S = 0.05
OUTPUT_LINGER_MS = 5.0
RETRY_MAX_S = 30.0


def raw_offset(message: Any, headers: dict[str, str], raw_topic: str) -> int | None:
    """The raw record's partition offset, the arrival order of a client's webhooks. A replay copy
    (`apro-sync replay`) carries its original's position in `apro-replayed-from`, so it ties like the original."""
    source = headers.get(header_names.REPLAYED_FROM, "")
    topic, _, rest = source.rpartition(":")  # "<topic>:<partition>:<offset>"
    topic, _, _partition = topic.rpartition(":")
    if topic == raw_topic and rest.isdigit():
        return int(rest)
    offset = getattr(message, "offset", None)
    return offset if isinstance(offset, int) and offset >= 0 else None


def _header_pairs(headers: dict[str, str], extra: Iterable[tuple[str, str | None]] = ()) -> list[tuple[str, bytes]]:
    merged = dict(headers)
    for name, value in extra:
        if value is not None:
            merged[name] = value
    return [(name, value.encode("utf-8")) for name, value in merged.items()]


_Output = OutputRecord


class Normalizer:
    """Turns one batch of raw Faust events into output records, then writes them and updates the dedupe table."""

    def __init__(self, app: faust.App, settings: Settings, topics: dict[str, faust.TopicT], table: Any,
                 producer: OutputProducer | None = None) -> None:
        self.app = app
        self.settings = settings
        self.location_labels = metrics.LocationLabels.from_settings(settings)
        # Metric children by label values (bounded: locations are LocationLabels', kinds an enum): `labels()`
        # costs more than the increment, on every record.
        self._last_event_time: dict[str, Any] = {}
        self._normalized: dict[tuple[str, str], Any] = {}
        self.topics = topics
        self.names = {name: topic.get_topic_name() for name, topic in topics.items()}
        self.raw_topic = settings.topics.raw
        self.deduper = EventDeduper(table, settings.dedupe_window)
        self.sequence = SequenceGuard.for_agent(app, settings, "normalize")
        self.producer = producer or OutputProducer(producer_config(
            settings.kafka, linger_ms=OUTPUT_LINGER_MS, client_id=f"{settings.worker_id}-normalize",
            max_body_bytes=settings.max_body_bytes))
        self._declared = False

    async def start(self) -> None:
        """Create the output topics if missing (Faust declares only what it consumes), then the producer."""
        if not self._declared:
            for topic in self.topics.values():
                await topic.maybe_declare()
            self._declared = True
        self.producer.start()

    async def stop(self) -> None:
        await self.producer.stop()
        await self.sequence.close()

    async def admit(self, events: list[faust.EventT]) -> list[faust.EventT]:
        """The batch in strict offset order per partition: repeats dropped, records Faust lost on the way read
        from the broker and put in their place (a lost record would otherwise be committed past, unnormalized)."""
        admitted: list[faust.EventT] = []
        for event in events:
            admitted.extend(await self.sequence.admit(event))
        return admitted

    def route(self, event: faust.EventT, pending: set[tuple[int, str]]) -> tuple[_Output | None, str | None]:
        """One raw event → (output record or None for a duplicate, event id to remember). Never raises."""
        message = event.message
        raw = message.value if isinstance(message.value, bytes) else (event.value or b"")
        if isinstance(raw, str):
            raw = raw.encode("utf-8")
        headers = header_names.to_dict(message.headers)
        try:
            result = normalize(raw, headers, default_timezone=self.settings.default_timezone,
                               default_region=self.settings.default_phone_region)
        except Exception as exc:  # noqa: BLE001 - normalize never raises; belt and braces
            result = Unreadable(event_id=body_hash(raw), reason=f"internal error: {type(exc).__name__}")
        location = self.location_labels(result.location.key)  # bounded: configured locations, "other", "unknown"
        gauge = self._last_event_time.get(location)
        if gauge is None:
            gauge = self._last_event_time[location] = metrics.LAST_EVENT_TIME.labels(location=location)
        gauge.set(time.time())
        if isinstance(result, Unreadable):
            return self.deadletter(event, raw, headers, result.reason, result.event_id, location,
                                   metrics.location_label(result.location.key)), None
        key = (message.partition, result.event_id)
        # An operator replay (header_names.REPLAY) is a deliberate re-run: only the sync ledger dedupes it, not this
        # window.
        if key in pending or (
            header_names.REPLAY not in headers and self.deduper.seen(result.event_id, message.partition)
        ):
            metrics.EVENTS_DUPLICATE.labels(location=location).inc()
            return None, None
        pending.add(key)
        if isinstance(result, NormalizedEvent):
            result = result.model_copy(update={"raw_offset": raw_offset(message, headers, self.raw_topic)})
        value = result.model_dump_json().encode("utf-8")
        if isinstance(result, NormalizedEvent):
            counter = self._normalized.get((location, result.kind))
            if counter is None:
                counter = self._normalized[(location, result.kind)] = metrics.EVENTS_NORMALIZED.labels(
                    location=location, kind=result.kind.value)
            counter.inc()
            extra = [(header_names.DLQ_EVENT_ID, result.event_id)]
            return _Output(self.names["normalized"], result.client.id.encode(), value,
                           _header_pairs(headers, extra)), result.event_id
        assert isinstance(result, Skipped)
        metrics.EVENTS_SKIPPED.labels(location=location, reason=result.reason.value).inc()
        out_key = (result.client_id or result.event_id).encode()
        extra = [(header_names.REASON, result.reason.value), (header_names.DLQ_EVENT_ID, result.event_id)]
        return _Output(self.names["skipped"], out_key, value, _header_pairs(headers, extra)), result.event_id

    def deadletter(self, event: faust.EventT, raw: bytes, headers: dict[str, str], reason: str, event_id: str,
                   location: str, header_location: str | None = None) -> _Output:
        message = event.message
        metrics.EVENTS_DEADLETTERED.labels(location=location, stage=STAGE, reason=reason.split(":")[0][:60]).inc()
        extra = deadletter.build(stage=STAGE, reason=reason, event_id=event_id, source_topic=message.topic,
                                 source_partition=message.partition, source_offset=message.offset,
                                 location=header_location or location)  # the header keeps the payload's location
        return _Output(self.names["deadletter"], message.key if isinstance(message.key, bytes) else None, raw,
                       _header_pairs(headers, extra))

    async def write(self, outputs: list[_Output]) -> None:
        """Send all outputs in order and wait for the broker's acks; retry (blocking the batch) on failure."""
        delay = 0.5
        while True:
            try:
                if not self.producer.started:
                    await self.start()
                await self.producer.write(outputs)
                return
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - never lose a batch: resend (downstream dedupes by event id)
                log.warning("normalize: writing %d records failed (%s); retrying in %.1fs with a fresh producer",
                            len(outputs), type(exc).__name__, delay)
                await self.producer.reset()
                await asyncio.sleep(delay)
                delay = min(delay * 2, RETRY_MAX_S)

    async def process(self, events: list[faust.EventT]) -> None:
        outputs: list[_Output] = []
        remember: list[tuple[faust.EventT, str]] = []
        pending: set[tuple[int, str]] = set()
        for event in events:
            try:
                output, event_id = self.route(event, pending)
            except Exception as exc:  # noqa: BLE001 - dead-letter with the exception type, move on
                log.exception("normalize: routing failed (%s)", type(exc).__name__)
                raw = event.message.value if isinstance(event.message.value, bytes) else b""
                output = self.deadletter(event, raw, header_names.to_dict(event.message.headers),
                                         f"internal error: {type(exc).__name__}", body_hash(raw), "unknown")
                event_id = None
            if output is not None:
                outputs.append(output)
            if event_id is not None:
                remember.append((event, event_id))
        if outputs:
            await self.write(outputs)
        # Only after the outputs are durable: a crash before this line replays and re-sends, never drops.
        # One table write per partition of the batch (each changelog record is its own produce request).
        by_partition: dict[int, list[str]] = defaultdict(list)
        last_event: dict[int, faust.EventT] = {}
        for event, event_id in remember:
            by_partition[event.message.partition].append(event_id)
            last_event[event.message.partition] = event
        for partition, event_ids in by_partition.items():
            token = _current_event.set(weakref.ref(last_event[partition]))
            try:
                self.deduper.remember_many(event_ids, partition)
            except Exception as exc:  # noqa: BLE001 - a lost dedupe entry only risks a duplicate, never a loss
                log.warning("normalize: dedupe update failed (%s)", type(exc).__name__)
            finally:
                _current_event.reset(token)


def register_normalizer(app: faust.App, settings: Settings) -> None:
    """Declare the normalization topics, the dedupe table and the agent on `app`."""
    names = settings.topics
    partitions = settings.topic_partitions
    raw_topic = app.topic(names.raw, key_type=bytes, value_type=bytes, key_serializer="raw", value_serializer="raw",
                          partitions=partitions)
    topics = {
        name: app.topic(getattr(names, name), key_type=bytes, value_type=bytes, key_serializer="raw",
                        value_serializer="raw", partitions=partitions)
        for name in ("normalized", "skipped", "deadletter")
    }
    table = app.Table("normalize-dedupe", default=None, partitions=partitions, key_type=str,
                      **table_store("normalize-dedupe", settings.state_store, settings.state_store_memory_mb),
                      help="Event ids already passed on, bounded per partition (APRO_DEDUPE_WINDOW).")
    normalizer = Normalizer(app, settings, topics, table)
    implementation = native.install()  # pip hides the build's warning: say here which normalizer runs
    log.info("normalize: %s", "compiled normalizer (mypyc)" if implementation == "compiled"
             else f"pure Python normalizer ({implementation})")

    @app.on_before_shutdown.connect
    async def _close(app: faust.App, **kwargs: Any) -> None:  # noqa: ARG001
        await normalizer.stop()

    @app.on_partitions_revoked.connect
    async def _forget(app: faust.App, revoked: set[Any], **kwargs: Any) -> None:  # noqa: ARG001
        normalizer.deduper.forget_partitions({tp.partition for tp in revoked if tp.topic == names.raw})
        normalizer.sequence.forget(revoked)

    @app.agent(raw_topic, name="normalize")
    async def normalize_agent(stream: faust.StreamT) -> None:
        async for events in stream.take_events(BATCH_MAX, within=BATCH_WITHIN_S):
            batch = await normalizer.admit(list(events))
            try:
                await normalizer.process(batch)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - Faust would ack the batch anyway: dead-letter it instead
                log.exception("normalize: batch failed (%s)", type(exc).__name__)
                await normalizer.write(
                    [
                        normalizer.deadletter(
                            e,
                            e.message.value if isinstance(e.message.value, bytes) else b"",
                            header_names.to_dict(e.message.headers),
                            f"internal error: {type(exc).__name__}",
                            body_hash(e.message.value if isinstance(e.message.value, bytes) else b""),
                            "unknown",
                        )
                        for e in batch
                    ]
                )
            for event in batch:  # Faust acks the events it delivered; the ones read from the broker are ours
                event.ack()

    app.normalizer = normalizer  # type: ignore[attr-defined]  # for tests and the benchmark


__all__ = ["Normalizer", "register_normalizer"]
