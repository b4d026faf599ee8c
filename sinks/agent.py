"""The sync engine's I/O side: a Faust agent that executes the planner's CRM ops against GoHighLevel.

Per event: plan → write the state with its pending effects → run each op, marking it done → ack in offset
order (`PartitionAcker`). Each GoHighLevel location has its own sequential lanes and bound, so a paused location
holds only its own clients; a client's events run in order on one lane (docs/sync-engine.md)."""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

import faust

from foundations import metrics
from foundations.config import Settings
from foundations.formats import headers as header_names
from foundations.formats.crm_commands import CrmOp, OpKind
from sinks import event_input
from sinks.budget import LocationBreaker
from sinks.deadletter_writer import DeadLetterWriter
from sinks.errors import SyncError, UnreadableEvent
from sinks.executor import OpExecutor, ordered_pending
from sinks.failure_policy import AUTH_STATUSES, Action, Failure, FailurePolicy, classify, reason
from sinks.ghl.errors import GhlPermanentError, GhlTransientError
from sinks.ghl.ratelimit import background_requests
from sinks.lane_choice import lane_index
from sinks.lane_queue import Capacity, LaneQueue
from sinks.location_runtime import LocationRuntime
from sinks.locations import GhlTarget, Locations, load_locations
from sinks.oauth import OAuthManager
from sinks.provision import ResolvedIdsCache
from sinks.shadow import CURRENT_OP, Send
from streams.plan import marks, state_codec
from streams.plan.planner import Outcome, plan
from streams.plan.state import ClientState, mark_done, park_failed
from workarounds.consumer_control import SequenceGuard, abandon
from workarounds.faust_patches import before_consumer_stops, on_rebalance_start
from workarounds.partition_acker import PartitionAcker
from workarounds.rocksdb_store import table_store, write_to_partition

log = logging.getLogger("apro_sync.sink")

STAGE = "sync"
TABLE_NAME = "client_state"
CHANGELOG_SERIALIZER = "json"  # what faust.Table uses for str keys/values; the changelog topic must match it


class Abandoned(Exception):
    """The lane must drop the event without acking it (partition revoked or worker stopping)."""


# ------------------------------------------------------------------------------------------------- engine


@dataclass
class _Item:
    event: faust.EventT
    generation: int
    client: bytes | str | None = None  # the record key: a client's items stay on one lane while any is held
    attempts: int = 0
    failures: int = 0
    probe: tuple[LocationBreaker, int] | None = None  # this attempt probes a paused location


@dataclass
class Lane:
    index: int
    group: LaneGroup
    queue: LaneQueue[_Item] = field(default_factory=LaneQueue)
    task: asyncio.Task[None] | None = None
    current: asyncio.Task[None] | None = None
    current_item: _Item | None = None
    clean: set[str] = field(default_factory=set)  # op ids planned here and never attempted: not in doubt


@dataclass
class LaneGroup:
    """The lanes of one GoHighLevel location ("" for events that name no configured location) and its bound.
    A backfill's events run on lanes of their own, so a live webhook never waits behind one in its lane."""

    location: str
    capacity: Capacity
    lanes: list[Lane] = field(default_factory=list)
    historical_lanes: list[Lane] = field(default_factory=list)


class SyncEngine:
    def __init__(self, app: faust.App, settings: Settings, locations: Locations, table: Any,
                 deadletter: faust.TopicT, *, sleep: Callable[[float], Any] = asyncio.sleep,
                 shadow_send: Send | None = None) -> None:
        self.app = app
        self.shadow_send = shadow_send
        self.settings = settings
        self.locations = locations
        self.location_labels = metrics.LocationLabels.from_settings(settings)  # bounded `location` label values
        # GoHighLevel-side series are labelled by the configured target label (name or GHL location id) only.
        self.ghl_labels = metrics.LocationLabels(t.label for t in locations.targets())
        for target in locations.targets():  # exported from the start, before the first answer of the day
            metrics.GHL_DAILY_BUDGET_USED.labels(self.ghl_labels(target.label)).set(0)
        self.table = table
        self.deadletters = DeadLetterWriter(deadletter, self.location_labels, stage=STAGE)
        self.failure_policy = FailurePolicy(settings.sink_retry_base_s, settings.sink_retry_max_s)
        self.acker = PartitionAcker()
        self.sequence = SequenceGuard.for_agent(app, settings, "sync")
        self.generation = 0
        self._fence = asyncio.Event()
        self._ids_cache = ResolvedIdsCache()
        self._runtimes: dict[str, LocationRuntime] = {}
        self.oauth = OAuthManager(settings) if any(t.oauth for t in locations.targets()) else None
        if self.oauth is not None:
            _ = self.oauth.store  # fail at start without a valid APRO_OAUTH_TOKEN_KEYS
        self._groups: dict[str, LaneGroup] = {}
        self._window = Capacity(settings.sink_window)  # every event held, queued or in flight
        self._client_lanes: dict[bytes | str | None, tuple[Lane, int]] = {}  # client → its lane, items held there
        self._started = False
        self._sleep = sleep
        self._stopping = False

    # -- lifecycle -------------------------------------------------------------------------------------------
    def runtime(self, target: GhlTarget) -> LocationRuntime:
        rt = self._runtimes.get(target.ghl_location_id)
        if rt is None:
            rt = self._runtimes[target.ghl_location_id] = LocationRuntime(
                target, self.settings, self._ids_cache, self.ghl_labels(target.label), shadow_send=self.shadow_send,
                oauth=self.oauth)
        return rt

    def runtime_by_label(self, label: str) -> LocationRuntime:
        for target in self.locations.targets():
            if target.ghl_location_id == label:
                return self.runtime(target)
        raise SyncError("pending op for a GoHighLevel location no longer configured")

    def start(self) -> None:
        if self._started:
            return
        self._started = True
        self._fence = asyncio.Event()

    @property
    def lanes(self) -> list[Lane]:
        return [lane for group in self._groups.values() for lane in (*group.lanes, *group.historical_lanes)]

    def _group(self, location: str) -> LaneGroup:
        """The location's lanes, started on its first event (a location that sends nothing costs nothing)."""
        group = self._groups.get(location)
        if group is None:
            group = self._groups[location] = LaneGroup(location, Capacity(self.settings.sink_location_queue))
            live, historical = self.settings.sink_lanes, self.settings.sink_historical_lanes
            group.lanes = [Lane(i, group) for i in range(live)]
            group.historical_lanes = [Lane(live + i, group) for i in range(historical)]
            for lane in (*group.lanes, *group.historical_lanes):
                lane.task = asyncio.ensure_future(self._run_lane(lane))
        return group

    async def stop(self) -> None:
        self._stopping = True
        self.fence("stopping")
        lanes = self.lanes
        for lane in lanes:
            if lane.task is not None:
                lane.task.cancel()
        await asyncio.gather(*(lane.task for lane in lanes if lane.task), return_exceptions=True)
        self._groups.clear()
        self._started = False
        for rt in self._runtimes.values():
            await rt.aclose()
        self._runtimes.clear()
        if self.oauth is not None:
            await self.oauth.aclose()
        await self.sequence.close()

    def close_intake(self) -> None:
        """Worker stopping: abandon what is in flight and refuse (abandon) whatever the agent still submits."""
        self._stopping = True
        self.fence("stopping")

    def _route(self, event: faust.EventT) -> tuple[str, bool]:
        """The event's GoHighLevel location id ("" when it names none configured, or is unreadable: it will be
        dead-lettered by a lane of that group) and whether it is historical (a backfill's)."""
        try:
            ev = event_input.normalized(event)
        except UnreadableEvent:
            return "", False
        try:
            location = self.locations.resolve(ev.location).ghl_location_id
        except Exception:  # noqa: BLE001 - unknown location or bad configuration: the lane dead-letters it
            location = ""
        return location, ev.historical

    def _lane_for(self, client: bytes | str | None, location: str, historical: bool) -> Lane:
        """While a client has events held, its next ones join the same lane (order, and no two lanes on one
        client's state); otherwise the lane is chosen within the event's location and class (live or backfill)."""
        held = self._client_lanes.get(client)
        if held is not None:
            return held[0]
        group = self._group(location)
        lanes = group.historical_lanes if historical else group.lanes
        return lanes[lane_index(client, len(lanes))]

    async def submit(self, event: faust.EventT) -> None:
        """Called by the agent, in partition order. Waits only when the worker's window or the event's location is
        full (backpressure): a location that holds its events back fills its own share, not the others'."""
        if self._stopping:
            # The agent may still hand over buffered events after the stop fence. Processing one could ack it
            # past an abandoned earlier event of the same partition (and run a client's events out of order).
            abandon(self.app, event)
            return
        generation = self.generation
        # A repeat gives nothing; a record after ones Faust dropped on the way gives those (read from the broker)
        # first, so each client's events still reach its lane in order.
        for admitted in await self.sequence.admit(event):
            if self._stopping or self.generation != generation:
                abandon(self.app, admitted)  # fenced meanwhile: redelivered to the partition's next owner
                continue
            self.start()
            self.acker.track(admitted)
            location, historical = self._route(admitted)
            client = admitted.message.key
            lane = self._lane_for(client, location, historical)
            await self._window.acquire()
            if not await self._admit_to(lane, generation):
                continue  # fenced while waiting: the fence abandoned it
            lane, count = self._client_lanes.get(client, (lane, 0))
            self._client_lanes[client] = (lane, count + 1)
            lane.queue.put(client, _Item(admitted, generation, client), historical=historical)

    async def _admit_to(self, lane: Lane, generation: int) -> bool:
        """Take a unit of the lane's location bound (the window's is taken). False, with both given back, when a
        fence came meanwhile."""
        if self.generation == generation and not self._stopping:
            await lane.group.capacity.acquire()
            if self.generation == generation and not self._stopping:
                return True
            lane.group.capacity.release()
        self._window.release()
        return False

    def _release(self, lane: Lane, item: _Item) -> None:
        """An item left the sink (finished, dead-lettered, abandoned or dropped by a fence): give back its units."""
        self._window.release()
        lane.group.capacity.release()
        held = self._client_lanes.get(item.client)
        if held is not None:
            if held[1] <= 1:
                del self._client_lanes[item.client]
            else:
                self._client_lanes[item.client] = (held[0], held[1] - 1)

    def fence(self, why: str) -> None:
        """Rebalance or shutdown: every delivered event not yet done is abandoned (not acked, not committed).
        In-flight events stop at their next op boundary; after the grace period they are cancelled."""
        self.generation += 1
        old, self._fence = self._fence, asyncio.Event()
        old.set()
        abandoned = self.acker.clear()
        self.sequence.forget()
        for lane in self.lanes:
            for dropped in lane.queue.drain():
                self._release(lane, dropped)
            lane.clean.clear()
        for event in abandoned:
            abandon(self.app, event)
        if abandoned:
            log.info("sink: %s: %d unfinished event(s) left for redelivery", why, len(abandoned))
        generation = self.generation
        busy = [lane for lane in self.lanes if lane.current is not None and not lane.current.done()]
        if busy:
            asyncio.ensure_future(self._cancel_after_grace(busy, generation))

    async def _cancel_after_grace(self, lanes: list[Lane], generation: int) -> None:
        deadline = time.monotonic() + self.settings.sink_revoke_grace_s
        while time.monotonic() < deadline and any(
                lane.current is not None and not lane.current.done() and lane.current_item is not None
                and lane.current_item.generation < generation for lane in lanes):
            await asyncio.sleep(0.02)
        for lane in lanes:
            item = lane.current_item
            if lane.current is not None and not lane.current.done() and item is not None \
                    and item.generation < generation:
                lane.current.cancel()

    # -- lanes -----------------------------------------------------------------------------------------------
    async def _run_lane(self, lane: Lane) -> None:
        while True:
            item = await lane.queue.get()
            lane.current_item = item
            lane.current = asyncio.ensure_future(self._handle(lane, item))
            try:
                await lane.current
            except asyncio.CancelledError:
                task = asyncio.current_task()
                if task is not None and task.cancelling():
                    raise  # the lane itself is stopping
                abandon(self.app, item.event)  # cancelled by a fence: left for redelivery
            except Exception:  # noqa: BLE001 - _handle never raises; belt and braces
                log.exception("sink: lane %d crashed on an event; it will be redelivered", lane.index)
                abandon(self.app, item.event)
            finally:
                lane.current = None
                lane.current_item = None
                self._release(lane, item)

    def _check(self, item: _Item) -> None:
        if item.generation != self.generation:
            raise Abandoned()

    async def _wait(self, seconds: float, item: _Item, wake: asyncio.Event | None = None) -> None:
        """Sleep, but wake (and abandon) at once on a fence; also wake early when `wake` is set."""
        waits = [asyncio.ensure_future(self._fence.wait())]
        if wake is not None:
            waits.append(asyncio.ensure_future(wake.wait()))
        try:
            await asyncio.wait(waits, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for w in waits:
                w.cancel()
        self._check(item)

    async def _handle(self, lane: Lane, item: _Item) -> None:
        """Process one event until done, dead-lettered or abandoned. Never raises (except cancellation)."""
        try:
            while not await self._attempt(lane, item):
                pass
        except Abandoned:
            abandon(self.app, item.event)

    @staticmethod
    def _end_probe(item: _Item) -> None:
        """An attempt that probed a paused location and ended without a verdict (no GoHighLevel call,
        dead-lettered, abandoned) frees the probe slot for another lane."""
        if item.probe is not None:
            breaker, token = item.probe
            item.probe = None
            breaker.release_probe(token)

    async def _attempt(self, lane: Lane, item: _Item) -> bool:
        """One try at an event: True when it is finished (done or dead-lettered), False to try again."""
        try:
            return await self._attempt_once(lane, item)
        finally:
            self._end_probe(item)

    async def _attempt_once(self, lane: Lane, item: _Item) -> bool:
        try:
            self._check(item)
            await self._process(lane, item)
            self.acker.finish(item.event)
            return True
        except (Abandoned, asyncio.CancelledError):
            raise
        except Exception as exc:  # noqa: BLE001 - every failure gets its next step from the policy
            return await self._after_failure(item, exc)

    async def _after_failure(self, item: _Item, exc: Exception) -> bool:
        """Act on the failure policy's step (sinks/failure_policy.py). True when the event is finished."""
        failure = classify(exc)
        breaker = None
        if failure is Failure.TRANSIENT:
            item.failures += 1
            breaker = self._breaker_failure(item)
        elif failure is Failure.UNEXPECTED:  # a bug or a Kafka error: retried a few times, then dead-lettered
            item.attempts += 1
            log.error("sink: unexpected error (%s) on event %s (attempt %d)", type(exc).__name__,
                      event_input.event_id(item.event), item.attempts, exc_info=exc)
        step = self.failure_policy.after(exc, failures=item.failures, attempts=item.attempts,
                                         location_paused=breaker is not None and breaker.tripped,
                                         jitter=random.random())
        if step.action is Action.HOLD:
            # The location is paused: the next attempt waits in `wait_ready` for the pause and the probe (and
            # goes at once when the probe succeeds), not for this lane's own backoff.
            assert breaker is not None
            log.warning("sink: transient GoHighLevel failure (%s); event %s held while the location is paused "
                        "(%.1fs left, failure %d)", reason(exc), event_input.event_id(item.event),
                        breaker.paused_for, item.failures)
            self._check(item)
            return False
        if step.action is Action.RETRY:
            if failure is Failure.TRANSIENT:
                log.warning("sink: transient GoHighLevel failure (%s); event %s retried in %.1fs (failure %d)",
                            reason(exc), event_input.event_id(item.event), step.delay_s, item.failures)
            await self._wait(step.delay_s, item, breaker.closed_event if breaker is not None else None)
            return False
        if step.action is Action.CHECK_CREDENTIALS and isinstance(exc, GhlPermanentError):
            pause = await self._credentials_rejected(item, exc)
            if pause is not None:
                await self._wait(pause, item)  # held, not dead-lettered: the location is paused until a probe works
                return False
        return await self._deadletter_safely(item, step.reason)

    async def _credentials_rejected(self, item: _Item, exc: GhlPermanentError) -> float | None:
        """A 401/403: is it the location's credentials (bad or rotated token, missing scope) or this one
        request? A location-level read with the same token tells. Credentials → the location is paused (every
        lane; the gauge apro_ghl_location_paused says so) and the pause is returned; None → dead-letter."""
        try:
            rt = self.runtime(self.locations.resolve(event_input.normalized(item.event).location))
        except Exception:  # noqa: BLE001 - cannot tell: dead-letter as before
            return None
        try:
            await rt.client.list_custom_fields()
        except GhlPermanentError as probe:
            if probe.status not in AUTH_STATUSES:
                return None
        except GhlTransientError:  # cannot tell now: retry later
            return rt.breaker.record_failure(_probe_token(item, rt.breaker)) or self.settings.sink_retry_base_s
        else:
            rt.breaker.record_success()
            return None  # the token works for the location: this request alone was refused
        pause = rt.breaker.record_auth_failure(_probe_token(item, rt.breaker))
        # No secret here: the status, the endpoint template and the GoHighLevel location id only.
        log.warning("sink: GoHighLevel location %s rejects the configured credentials (%s); location paused "
                    "for %.1fs, events held (check the token and its scopes)", rt.label, exc.reason, pause)
        return pause

    def _breaker_failure(self, item: _Item) -> LocationBreaker | None:
        """Count a transient failure on the event's location breaker (once per probe while paused)."""
        try:
            target = self.locations.resolve(event_input.normalized(item.event).location)
        except Exception:  # noqa: BLE001
            return None
        breaker = self.runtime(target).breaker
        breaker.record_failure(_probe_token(item, breaker))
        return breaker

    async def _deadletter_safely(self, item: _Item, reason: str) -> bool:
        """Dead-letter and ack; on a Kafka failure keep the event (retry later). True when done."""
        try:
            await self._deadletter(item, reason)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001
            log.warning("sink: dead-letter write failed (%s); retrying", type(exc).__name__)
            await self._wait(self.settings.sink_retry_base_s, item)
            return False
        self.acker.finish(item.event)
        return True

    # -- one event -------------------------------------------------------------------------------------------
    def _load(self, client_id: str) -> tuple[ClientState | None, marks.DoneMarks | None]:
        """The client's state with its done marks merged (streams/plan/marks.py), and the marks record (None when
        the client has no marks key): one read of each key per event."""
        raw_marks = self.table.get(marks.marks_key(client_id))
        done = None if raw_marks is None else marks.decode(raw_marks)
        raw = self.table.get(client_id)
        if raw is None:
            return None, done
        state = state_codec.decode(raw)
        return (state if done is None else marks.merge(state, done)), done

    def _save(self, client_id: str, state: ClientState, partition: int) -> Any:
        """Write the whole state (its done marks folded in) to the table: local store + changelog record on the
        event's partition, then clear the marks key (a tombstone after it on the same partition). Returns the
        state record's send future (await for durability). The tombstone is not awaited: it follows the state on
        the same partition, so any later record's ack covers it, and a lost one leaves only marks already folded
        (merging them again changes nothing)."""
        value = state_codec.encode(state)
        fut = self.table.send_changelog(partition, client_id, value)
        with write_to_partition(partition):
            self.table.data[client_id] = value
        key = marks.marks_key(client_id)
        if self.table.data.get(key) is None:
            return fut
        self.table.send_changelog(partition, key, None, value_serializer="raw")
        self.table.data.pop(key, None)
        return fut

    def _save_marks(self, client_id: str, done: marks.DoneMarks, partition: int) -> Any:
        """Write an op's done mark: the small marks record on the state's partition (not the whole state)."""
        key = marks.marks_key(client_id)
        value = marks.encode(done)
        fut = self.table.send_changelog(partition, key, value)
        with write_to_partition(partition):
            self.table.data[key] = value
        return fut

    async def _process(self, lane: Lane, item: _Item) -> None:
        event = item.event
        ev = event_input.normalized(event)
        target = self.locations.resolve(ev.location)
        rt = self.runtime(target)
        token = await rt.breaker.wait_ready(self._fence)
        if token:
            item.probe = (rt.breaker, token)  # released by _attempt unless a verdict was recorded
        self._check(item)
        executor = await rt.executor()
        location = self.location_labels(ev.location.key)
        metrics.LAST_EVENT_TIME.labels(location=location).set(time.time())
        partition = event.message.partition
        client_id = ev.client.id
        state, stored_marks = self._load(client_id)
        now = datetime.fromtimestamp(event.message.timestamp or time.time(), timezone.utc)
        # An operator redrive / replay resumes the ops a dead letter of this event parked (docs/sync-engine.md).
        resume_failed = header_names.REPLAY in header_names.to_dict(event.message.headers)
        p = plan(ev, state, location_label=rt.label, now=now, default_timezone=self.settings.default_timezone,
                 resume_failed=resume_failed)
        done = stored_marks or marks.EMPTY  # ops done since the state was last written, until it is written
        if state is None or p.new_state != state:
            # Durable BEFORE any GoHighLevel call.
            await self._save(client_id, p.new_state, partition)
            done = marks.EMPTY
            if p.outcome is Outcome.RESUMED:
                log.info("sink: resuming %d op(s) of dead-lettered event %s", len(p.ops), ev.event_id)
            else:  # resumed ops were attempted before: in doubt
                lane.clean.update(op.op_id for op in p.ops)
        elif stored_marks is not None and not p.new_state.effects:
            # Done marks with nothing pending: left by a crash after an event's last write. Fold them (one key).
            await self._save(client_id, p.new_state, partition)
            done = marks.EMPTY
        if item.attempts == 0 and item.failures == 0:
            metrics.SYNC_OUTCOMES.labels(location, p.outcome.value).inc()
        state = p.new_state
        pending = ordered_pending(state)
        with background_requests(ev.historical):  # a backfill's calls yield the rate budget to live ones
            await self._run_ops(lane, item, rt, executor, client_id, state, pending, done, partition)
        if pending or p.outcome is Outcome.APPLIED:
            rt.breaker.record_success()
        if pending:
            metrics.EVENTS_SYNCED.labels(location=location, kind=ev.kind.value).inc()
            received = ev.received_at or event_input.received_header(event)
            if received is not None:
                metrics.SYNC_E2E_LATENCY.labels(location=location).observe(
                    max(0.0, time.time() - received.timestamp()))

    async def _run_ops(self, lane: Lane, item: _Item, rt: LocationRuntime, executor: OpExecutor, client_id: str,
                       state: ClientState, pending: list[CrmOp], done: marks.DoneMarks, partition: int) -> None:
        """Execute the event's pending ops in order, each one's done mark durable as it goes (docs/sync-engine.md)."""
        last_write = None
        for op in pending:
            self._check(item)  # stop at an op boundary on a fence
            op_rt = rt if op.location_label == rt.label else self.runtime_by_label(op.location_label)
            op_executor = executor if op_rt is rt else await op_rt.executor()
            in_doubt = op.op_id not in lane.clean
            lane.clean.discard(op.op_id)
            CURRENT_OP.set((client_id, op.event_id, op.op_id))  # names the op in shadow records
            before = state
            state = mark_done(await op_executor.execute(op, state, in_doubt=in_doubt), op.op_id)
            if op is pending[-1]:  # the event ends: the whole state, marks folded in (no marks key at rest)
                last_write = self._save(client_id, state, partition)
            else:  # durable like the whole state would be, a few dozen bytes
                done = marks.add(done, op, before, state)
                last_write = self._save_marks(client_id, done, partition)
            if op.kind is OpKind.ENROLL_WORKFLOW:
                await last_write  # shrink the one window the API cannot settle (docs/sync-engine.md)
            op_rt.breaker.record_success()
            if not any(e.event_id == op.event_id for e in state.effects):
                op_executor.forget(op.event_id)
        if last_write is not None:
            await last_write

    async def _deadletter(self, item: _Item, reason: str) -> None:
        event = item.event
        location = "unknown"
        event_id = ""
        try:
            ev = event_input.normalized(event)
            location, event_id = ev.location.key, ev.event_id
            # Park the remaining ops (not done, not applied) so the client's later events are not blocked behind
            # them and a redrive of this dead letter resumes exactly them.
            state, _ = self._load(ev.client.id)
            if state is not None and state.effects:
                await self._save(ev.client.id, park_failed(state, event_id), event.message.partition)
        except UnreadableEvent:
            pass
        raw = event.message.value if isinstance(event.message.value, bytes) else (event.value or b"")
        await self.deadletters.write(event.message, raw, reason, event_id=event_id, location=location)


# ------------------------------------------------------------------------------------------------- helpers


def _probe_token(item: _Item, breaker: LocationBreaker) -> int:
    """The attempt's probe token on `breaker` (0 when this attempt is not its probe)."""
    if item.probe is not None and item.probe[0] is breaker:
        return item.probe[1]
    return 0


# ------------------------------------------------------------------------------------------------- wiring


def changelog_topic_name(settings: Settings, *, shadow: bool | None = None) -> str:
    """The client_state changelog (named by the topic prefix); shadow mode keeps its state apart."""
    shadow = settings.sink_mode == "shadow" if shadow is None else shadow
    topics = settings.topics
    return topics.client_state_shadow_changelog if shadow else topics.client_state_changelog


def ghl_configured(settings: Settings) -> bool:
    return bool(settings.locations_file or settings.ghl_location_id)


def register_sink(app: faust.App, settings: Settings) -> None:
    """Declare the client_state table, the dead-letter topic and the sync agent on `app`.

    Without any GoHighLevel configuration (no APRO_LOCATIONS_FILE, no APRO_GHL_LOCATION_ID) the sink is disabled
    and the worker runs normalization only. A partial configuration (e.g. a location without a token) fails fast.
    """
    if not ghl_configured(settings):
        log.warning("sink disabled: no GoHighLevel configuration (set APRO_GHL_LOCATION_ID and APRO_GHL_TOKEN, "
                    "or APRO_LOCATIONS_FILE); the worker runs normalization only")
        return
    locations = load_locations(settings)
    names = settings.topics
    partitions = settings.topic_partitions
    normalized = app.topic(names.normalized, key_type=bytes, value_type=bytes, key_serializer="raw",
                           value_serializer="raw", partitions=partitions)
    deadletter = app.topic(names.deadletter, key_type=bytes, value_type=bytes, key_serializer="raw",
                           value_serializer="raw", partitions=partitions)
    # The changelog is named by the topic prefix, not by the app id, so a replay under a fresh consumer group
    # (a new APRO_WORKER_ID) keeps the same state: the planner then recognizes every replayed event.
    # The table serializes str keys and values as JSON (Faust's default for non-bytes types); a changelog topic
    # passed in explicitly must decode them the same way, or recovery rebuilds the table under the JSON text of
    # each key ('"48213"' instead of '48213') and every lookup after a restart or replay misses.
    changelog = app.topic(changelog_topic_name(settings), key_type=str, value_type=str,
                          key_serializer=CHANGELOG_SERIALIZER, value_serializer=CHANGELOG_SERIALIZER,
                          partitions=partitions, compacting=True, deleting=False, internal=True)
    table = app.Table(TABLE_NAME, default=None, partitions=partitions, key_type=str, value_type=str,
                      changelog_topic=changelog,
                      **table_store(TABLE_NAME, settings.state_store, settings.state_store_memory_mb),
                      help="Per AestheticsPro client: LTV ledger, appointments, CRM ids, effects ledger.")
    if (table.key_serializer, table.value_serializer) != (changelog.key_serializer, changelog.value_serializer):
        raise RuntimeError("client_state changelog serializers differ from the table's: recovery would lose state")
    shadow_send = None
    if settings.sink_mode == "shadow":
        shadow_topic = app.topic(names.shadow, key_type=bytes, value_type=bytes, key_serializer="raw",
                                 value_serializer="raw", partitions=partitions)

        async def shadow_send(key: bytes, value: bytes, headers: list[tuple[str, bytes]]) -> None:
            await (await shadow_topic.send(key=key, value=value, headers=headers))

        log.warning("sink in SHADOW mode: GoHighLevel writes are recorded to %s, not sent", names.shadow)
    engine = SyncEngine(app, settings, locations, table, deadletter, shadow_send=shadow_send)

    # Fence before Faust waits for in-flight events (wait_empty), i.e. at the very start of a rebalance.
    on_rebalance_start(app, lambda: engine.fence("rebalance"))
    before_consumer_stops(app, engine.close_intake)

    @app.on_partitions_revoked.connect
    async def _revoked(app: faust.App, revoked: set[Any], **kwargs: Any) -> None:  # noqa: ARG001
        engine.sequence.forget(revoked)
        if engine.acker.in_flight():
            engine.fence("partitions revoked")

    @app.agent(normalized, name="sync")
    async def sync_agent(stream: faust.StreamT) -> None:
        try:
            async for event in stream.noack().events():
                await engine.submit(event)
        finally:
            await engine.stop()

    app.sync_engine = engine  # type: ignore[attr-defined]  # for tests


__all__ = ["SyncEngine", "changelog_topic_name", "ghl_configured", "register_sink"]
