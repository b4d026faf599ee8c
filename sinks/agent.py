"""The sync engine's I/O side: a Faust agent that executes the planner's CRM ops against GoHighLevel.

Per event: plan → write the state with its pending effects → run each op, marking it done → ack in offset
order (`PartitionAcker`). A paused location's events, or those past its bound, are parked instead (planned,
durable, acked) and drained once it answers; a client's events run in order on one lane (docs/sync-engine.md)."""

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
from pydantic import ValidationError

from foundations import metrics
from foundations.config import Settings
from foundations.formats import headers as header_names
from foundations.formats.crm_commands import CrmOp, OpKind
from foundations.formats.normalized import NormalizedEvent
from sinks import event_input
from sinks.budget import LocationBreaker
from sinks.client_state_store import ClientStateStore
from sinks.deadletter_writer import DeadLetterWriter
from sinks.drainer import Drainers
from sinks.errors import SyncError, UnreadableEvent
from sinks.executor import OpExecutor, ordered_pending
from sinks.failure_policy import AUTH_STATUSES, Action, Failure, FailurePolicy, classify, reason
from sinks.ghl.client import send_gate
from sinks.ghl.errors import GhlPermanentError, GhlTransientError
from sinks.ghl.ratelimit import background_requests
from sinks.lane_choice import lane_index
from sinks.lane_queue import Capacity, LaneQueue
from sinks.location_runtime import LocationRuntime
from sinks.parking import ParkStore
from sinks.locations import GhlTarget, Locations, load_locations
from sinks.oauth import OAuthManager
from sinks.provision import ResolvedIdsCache
from sinks.shadow import CURRENT_OP, Send
from streams.plan import marks
from streams.plan.planner import Outcome, plan
from streams.plan.state import ClientState, mark_done, park_failed
from workarounds.consumer_control import SequenceGuard, abandon
from workarounds.faust_patches import before_consumer_stops, on_rebalance_start
from workarounds.member_lease import lease_for
from workarounds.partition_acker import PartitionAcker
from workarounds.rocksdb_store import table_store

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
    bounded: bool = True  # holds a unit of its location's bound (not when queued past it behind its client)
    historical: bool = False  # a backfill's: also holds a unit of the location's share for backfills


@dataclass
class _Drain:
    """A parked client's pending ops to run, now that its location answers (no record: its events were acked)."""

    location: str  # GoHighLevel location id
    partition: int
    client_id: str
    generation: int
    finished: asyncio.Event = field(default_factory=asyncio.Event)
    attempts: int = 0
    failures: int = 0

    @property
    def client(self) -> bytes:
        return self.client_id.encode()  # the record key of the client's events: same lane


@dataclass
class _Planned:
    ev: NormalizedEvent
    rt: LocationRuntime
    location: str  # the bounded metric label
    partition: int
    client_id: str
    state: ClientState
    pending: list[CrmOp]
    done: marks.DoneMarks
    outcome: Outcome


@dataclass
class Lane:
    index: int
    group: LaneGroup
    queue: LaneQueue[_Item | _Drain] = field(default_factory=LaneQueue)
    task: asyncio.Task[None] | None = None
    current: asyncio.Task[None] | None = None
    current_item: _Item | _Drain | None = None
    clean: set[str] = field(default_factory=set)  # op ids planned here and never attempted: not in doubt


@dataclass
class LaneGroup:
    """The lanes of one GoHighLevel location ("" for events that name no configured location) and its bound.
    A backfill's events run on lanes of their own, so a live webhook never waits behind one in its lane."""

    location: str
    capacity: Capacity
    historical_capacity: Capacity  # a backfill fills at most this share of `capacity`: live events keep the rest
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
        self.states = ClientStateStore(table)
        self.deadletters = DeadLetterWriter(deadletter, self.location_labels, stage=STAGE)
        self.failure_policy = FailurePolicy(settings.sink_retry_base_s, settings.sink_retry_max_s)
        self.acker = PartitionAcker()
        self.sequence = SequenceGuard.for_agent(app, settings, "sync")
        self.lease = lease_for(app.conf.id, settings.kafka_session_timeout_s)
        self._lease_logged = 0.0
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
        labels = {t.ghl_location_id: t.label for t in locations.targets()}
        self.parking = ParkStore(self.states, lambda location: self.ghl_labels(labels.get(location, location)))
        self._resumed_generation = -1
        self.drainers = Drainers(self, batch=settings.sink_historical_lanes, retry_base_s=settings.sink_retry_base_s,
                                 retry_max_s=settings.sink_retry_max_s)

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
            bound = self.settings.sink_location_queue
            group = self._groups[location] = LaneGroup(location, Capacity(bound), Capacity(max(1, bound // 2)))
            live, historical = self.settings.sink_lanes, self.settings.sink_historical_lanes
            group.lanes = [Lane(i, group) for i in range(live)]
            group.historical_lanes = [Lane(live + i, group) for i in range(historical)]
            for lane in (*group.lanes, *group.historical_lanes):
                lane.task = asyncio.ensure_future(self._run_lane(lane))
        return group

    async def stop(self) -> None:
        self._stopping = True
        self.fence("stopping")
        await self.drainers.stop()
        tasks = [lane.task for lane in self.lanes if lane.task is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
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
            self.resume_parked()  # once per generation: a no-op after the rebalance's own call
            self.acker.track(admitted)
            location, historical = self._route(admitted)
            client = admitted.message.key
            lane = self._lane_for(client, location, historical)
            # A location at its bound (slow, throttled, bursting, paused) must not stop the consumer: its event
            # is parked here, or, when its client has events held (order), queued past the bound (the worker's
            # window still bounds memory).
            group = lane.group
            over = bool(location) and (group.capacity.full or (historical and group.historical_capacity.full))
            if over and client not in self._client_lanes and await self._park_overflow(admitted, generation):
                continue
            item = _Item(admitted, generation, client, bounded=not (over and client in self._client_lanes),
                         historical=historical)
            await self._window.acquire()
            if not await self._admit_to(lane, item):
                continue  # fenced while waiting: the fence abandoned it
            lane, count = self._client_lanes.get(client, (lane, 0))
            self._client_lanes[client] = (lane, count + 1)
            lane.queue.put(client, item, historical=historical)

    async def _admit_to(self, lane: Lane, item: _Item) -> bool:
        """Take the item's units of the lane's location bounds (the window's is taken). False, with all given
        back, when a fence came meanwhile."""
        if self.generation == item.generation and not self._stopping:
            if not item.bounded:
                return True
            if item.historical:
                await lane.group.historical_capacity.acquire()
            await lane.group.capacity.acquire()
            if self.generation == item.generation and not self._stopping:
                return True
            lane.group.capacity.release()
            if item.historical:
                lane.group.historical_capacity.release()
        self._window.release()
        return False

    def _release(self, lane: Lane, item: _Item | _Drain) -> None:
        """An item left the sink (finished, dead-lettered, abandoned or dropped by a fence): give back its units
        (a drain holds none: the drainer bounds them)."""
        if isinstance(item, _Drain):
            item.finished.set()
        else:
            self._window.release()
            if item.bounded:
                lane.group.capacity.release()
                if item.historical:
                    lane.group.historical_capacity.release()
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
        self.parking.drop()  # the partitions may move: reloaded from the table once the rebalance completes
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
            lane.current = asyncio.ensure_future(
                self._drain(lane, item) if isinstance(item, _Drain) else self._handle(lane, item))
            try:
                await lane.current
            except asyncio.CancelledError:
                task = asyncio.current_task()
                if task is not None and task.cancelling():
                    raise  # the lane itself is stopping
                if isinstance(item, _Item):
                    abandon(self.app, item.event)  # cancelled by a fence: left for redelivery
            except Exception:  # noqa: BLE001 - _handle and _drain never raise; belt and braces
                log.exception("sink: lane %d crashed on an event; it will be redelivered", lane.index)
                if isinstance(item, _Item):
                    abandon(self.app, item.event)
            finally:
                lane.current = None
                lane.current_item = None
                self._release(lane, item)

    def _check(self, item: _Item | _Drain) -> None:
        if item.generation != self.generation:
            raise Abandoned()

    async def _hold_lease(self, item: _Item | _Drain) -> None:
        """Before a state write or a GoHighLevel call: this worker must still own the partition. A loop that
        stalled past the session timeout may have been evicted (its partitions handed over) without knowing it
        yet: wait until a heartbeat is answered (still a member) or the rebalance fences the item."""
        self._check(item)
        if self.lease.valid():
            return
        if time.monotonic() - self._lease_logged > 10.0:
            self._lease_logged = time.monotonic()
            log.warning("sink: no answered heartbeat for %.1fs (session timeout %.1fs): writes and GoHighLevel "
                        "calls wait until the group confirms this worker", self.lease.age,
                        self.lease.session_timeout_s)
        await self.lease.wait_valid(self._fence)
        self._check(item)

    async def _wait(self, seconds: float, item: _Item | _Drain, wake: asyncio.Event | None = None) -> None:
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

    async def _attempt(self, lane: Lane, item: _Item) -> bool:
        """One try at an event: True when it is finished (done, parked or dead-lettered), False to try again."""
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
            # The location is paused: its plan is durable, so the event is parked (acked) and its client drained
            # once a probe finds the location answering; the lane moves on.
            assert breaker is not None
            log.warning("sink: transient GoHighLevel failure (%s); event %s parked while the location is paused "
                        "(%.1fs left, failure %d)", reason(exc), event_input.event_id(item.event),
                        breaker.paused_for, item.failures)
            return await self._park_safely(item)
        if step.action is Action.RETRY:
            if failure is Failure.TRANSIENT:
                log.warning("sink: transient GoHighLevel failure (%s); event %s retried in %.1fs (failure %d)",
                            reason(exc), event_input.event_id(item.event), step.delay_s, item.failures)
            await self._wait(step.delay_s, item, breaker.closed_event if breaker is not None else None)
            return False
        if step.action is Action.CHECK_CREDENTIALS and isinstance(exc, GhlPermanentError):
            rt = self._runtime_of(item)
            pause = None if rt is None else await self._credentials_rejected(rt, exc)
            if pause is not None:  # not dead-lettered: parked (or held) until a probe finds the token working
                if rt is not None and rt.breaker.tripped:
                    return await self._park_safely(item)
                await self._wait(pause, item)
                return False
        return await self._deadletter_safely(item, step.reason)

    def _runtime_of(self, item: _Item) -> LocationRuntime | None:
        try:
            return self.runtime(self.locations.resolve(event_input.normalized(item.event).location))
        except Exception:  # noqa: BLE001 - unreadable or unknown location: no runtime
            return None

    async def _credentials_rejected(self, rt: LocationRuntime, exc: GhlPermanentError) -> float | None:
        """A 401/403: is it the location's credentials (bad or rotated token, missing scope) or this one
        request? A location-level read with the same token tells. Credentials → the location is paused (every
        lane; the gauge apro_ghl_location_paused says so) and the pause is returned; None → dead-letter."""
        try:
            await rt.client.list_custom_fields()
        except GhlPermanentError as probe:
            if probe.status not in AUTH_STATUSES:
                return None
        except GhlTransientError:  # cannot tell now: retry later
            return rt.breaker.record_failure() or self.settings.sink_retry_base_s
        else:
            rt.breaker.record_success()
            return None  # the token works for the location: this request alone was refused
        pause = rt.breaker.record_auth_failure()
        # No secret here: the status, the endpoint template and the GoHighLevel location id only.
        log.warning("sink: GoHighLevel location %s rejects the configured credentials (%s); location paused "
                    "for %.1fs, its events parked (check the token and its scopes)", rt.label, exc.reason, pause)
        return pause

    def _breaker_failure(self, item: _Item) -> LocationBreaker | None:
        """Count a transient failure on the event's location breaker (while paused, only probes count)."""
        rt = self._runtime_of(item)
        if rt is None:
            return None
        rt.breaker.record_failure()
        return rt.breaker

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
    async def _plan(self, item: _Item, clean: set[str] | None) -> _Planned:
        """Plan the event against its client's state and make the plan durable (no GoHighLevel call). Ops planned
        here and never attempted go to `clean` (not in doubt when run)."""
        event = item.event
        ev = event_input.normalized(event)
        rt = self.runtime(self.locations.resolve(ev.location))
        await self._hold_lease(item)
        location = self.location_labels(ev.location.key)
        metrics.LAST_EVENT_TIME.labels(location=location).set(time.time())
        partition = event.message.partition
        client_id = ev.client.id
        state, stored_marks = self.states.load(client_id)
        now = datetime.fromtimestamp(event.message.timestamp or time.time(), timezone.utc)
        # An operator redrive / replay resumes the ops a dead letter of this event parked (docs/sync-engine.md).
        resume_failed = header_names.REPLAY in header_names.to_dict(event.message.headers)
        p = plan(ev, state, location_label=rt.label, now=now, default_timezone=self.settings.default_timezone,
                 resume_failed=resume_failed)
        done = stored_marks or marks.EMPTY  # ops done since the state was last written, until it is written
        if state is None or p.new_state != state:
            # Durable BEFORE any GoHighLevel call.
            await self.states.save(client_id, p.new_state, partition)
            done = marks.EMPTY
            if p.outcome is Outcome.RESUMED:
                log.info("sink: resuming %d op(s) of dead-lettered event %s", len(p.ops), ev.event_id)
            elif clean is not None:  # resumed ops were attempted before: in doubt
                clean.update(op.op_id for op in p.ops)
        elif stored_marks is not None and not p.new_state.effects:
            # Done marks with nothing pending: left by a crash after an event's last write. Fold them (one key).
            await self.states.save(client_id, p.new_state, partition)
            done = marks.EMPTY
        if item.attempts == 0 and item.failures == 0:
            metrics.SYNC_OUTCOMES.labels(location, p.outcome.value).inc()
        return _Planned(ev, rt, location, partition, client_id, p.new_state, ordered_pending(p.new_state), done,
                        p.outcome)

    async def _process(self, lane: Lane, item: _Item) -> None:
        planned = await self._plan(item, lane.clean)
        rt, client_id, partition, pending = planned.rt, planned.client_id, planned.partition, planned.pending
        if pending and rt.breaker.tripped:
            # The location is paused: the plan is durable, so the client is parked and the event acked without
            # waiting; the location's drainer runs these ops once a probe finds it answering.
            lane.clean.difference_update(op.op_id for op in pending)
            await self._park(item, acked_by_caller=True)
            return
        executor = await rt.executor()
        # A backfill's calls yield the rate budget to live ones; every request checks the lease right before it goes.
        with background_requests(planned.ev.historical), send_gate(lambda: self._hold_lease(item)):
            await self._run_ops(lane, item, rt, executor, client_id, planned.state, pending, planned.done,
                                partition)
        if pending or planned.outcome is Outcome.APPLIED:
            rt.breaker.record_success()
        for parked_at in self.parking.parked_at(client_id, partition) if pending else ():
            await self.parking.unpark(parked_at, partition, client_id)  # its parked ops ran first, just now
        if pending:
            location = planned.location
            metrics.EVENTS_SYNCED.labels(location=location, kind=planned.ev.kind.value).inc()
            received = planned.ev.received_at or event_input.received_header(item.event)
            if received is not None:
                metrics.SYNC_E2E_LATENCY.labels(location=location).observe(
                    max(0.0, time.time() - received.timestamp()))

    async def _run_ops(self, lane: Lane, item: _Item | _Drain, rt: LocationRuntime, executor: OpExecutor,
                       client_id: str, state: ClientState, pending: list[CrmOp], done: marks.DoneMarks,
                       partition: int) -> None:
        """Execute the event's pending ops in order, each one's done mark durable as it goes (docs/sync-engine.md).
        The caller sets the send gate: the lease is checked again right before each request is sent."""
        last_write = None
        for op in pending:
            await self._hold_lease(item)  # stop at an op boundary on a fence
            op_rt = rt if op.location_label == rt.label else self.runtime_by_label(op.location_label)
            op_executor = executor if op_rt is rt else await op_rt.executor()
            in_doubt = op.op_id not in lane.clean
            lane.clean.discard(op.op_id)
            CURRENT_OP.set((client_id, op.event_id, op.op_id))  # names the op in shadow records
            before = state
            state = mark_done(await op_executor.execute(op, state, in_doubt=in_doubt), op.op_id)
            # A call answered after a stall: if this worker was evicted meanwhile, its done mark must not land
            # after the new owner's writes (recovery would read it back); the new owner settles the op in doubt.
            await self._hold_lease(item)
            if op is pending[-1]:  # the event ends: the whole state, marks folded in (no marks key at rest)
                last_write = self.states.save(client_id, state, partition)
            else:  # durable like the whole state would be, a few dozen bytes
                done = marks.add(done, op, before, state)
                last_write = self.states.save_marks(client_id, done, partition)
            if op.kind is OpKind.ENROLL_WORKFLOW:
                await last_write  # shrink the one window the API cannot settle (docs/sync-engine.md)
            op_rt.breaker.record_success()
            if not any(e.event_id == op.event_id for e in state.effects):
                op_executor.forget(op.event_id)
        if last_write is not None:
            await last_write

    # -- parking a paused location's clients (docs/sync-engine.md, "Parking") -----------------------------------
    async def _park(self, item: _Item, *, acked_by_caller: bool = False) -> bool:
        """Index the event's client as parked at its location (its ops are durable in its state), then ack the
        event: the committed offset may pass it. Returns True (finished)."""
        ev = event_input.normalized(item.event)
        location = self.locations.resolve(ev.location).ghl_location_id
        message = item.event.message
        await self._hold_lease(item)
        await self.parking.park(location, message.partition, ev.client.id, ev.event_id, message.offset)
        self._check(item)  # fenced meanwhile: redelivered, and parked again (the same entry)
        if not acked_by_caller:
            self.acker.finish(item.event)
        self.drainers.ensure(location, self.generation)
        return True

    async def _park_overflow(self, event: faust.EventT, generation: int) -> bool:
        """The event's location holds its bound (slow, throttled or bursting) and its client has nothing held:
        plan and park it here, so the consumer goes on to other locations' records. False: not parked (a Kafka
        error), the caller queues it as usual."""
        item = _Item(event, generation, event.message.key)
        try:
            planned = await self._plan(item, None)
            if planned.pending:
                await self._park(item, acked_by_caller=True)
            self._check(item)
        except Abandoned:
            abandon(self.app, event)
            return True
        except Exception as exc:  # noqa: BLE001 - the lane's policy deals with it (retry, dead-letter)
            log.warning("sink: could not park event %s past its location's bound (%s); queued instead",
                        event_input.event_id(event), type(exc).__name__)
            return False
        self.acker.finish(event)
        return True

    async def _park_safely(self, item: _Item) -> bool:
        """`_park` after a failed attempt; on a Kafka error the event stays in its lane and is tried again."""
        try:
            return await self._park(item)
        except (Abandoned, asyncio.CancelledError):
            raise
        except Exception as exc:  # noqa: BLE001
            log.warning("sink: parking event %s failed (%s); retrying", event_input.event_id(item.event),
                        type(exc).__name__)
            await self._wait(self.settings.sink_retry_base_s, item)
            return False

    def resume_parked(self) -> None:
        """After a rebalance's recovery (and, should that signal be missed, at the generation's first event): read
        the park index of the partitions now owned and drain it."""
        if self._resumed_generation == self.generation:
            return
        owned = self.owned_partitions()
        if not owned:
            return
        self._resumed_generation = self.generation
        self.parking.load([t.ghl_location_id for t in self.locations.targets()], owned)
        locations = self.parking.index.locations()
        if locations:
            log.warning("sink: %d parked client(s) of %d GoHighLevel location(s) in the partitions now owned; "
                        "draining them", sum(self.parking.index.count(loc) for loc in locations), len(locations))
        for location in locations:
            self.drainers.ensure(location, self.generation)

    # DrainHost (sinks/drainer.py)
    def current(self, generation: int) -> bool:
        return generation == self.generation and not self._stopping

    def fence_event(self) -> asyncio.Event:
        return self._fence

    def owned_partitions(self) -> set[int] | None:
        try:
            actives = self.app.assignor.assigned_actives()
        except Exception:  # noqa: BLE001 - no assignment yet (not started)
            return None
        return {tp.partition for tp in actives if tp.topic == self.settings.topics.normalized}

    def drain_client(self, location: str, partition: int, client_id: str, generation: int) -> asyncio.Event:
        """Queue a drain of the client on its lane (its lane while it has items held, else a backfill lane)."""
        drain = _Drain(location, partition, client_id, generation)
        lane = self._lane_for(drain.client, location, True)
        lane, count = self._client_lanes.get(drain.client, (lane, 0))
        self._client_lanes[drain.client] = (lane, count + 1)
        lane.queue.put(drain.client, drain, historical=True)
        return drain.finished

    async def _drain(self, lane: Lane, drain: _Drain) -> None:
        """Run a parked client's pending ops, then unpark it. Never raises (except cancellation)."""
        try:
            while not await self._drain_attempt(lane, drain):
                pass
        except Abandoned:
            pass

    async def _drain_attempt(self, lane: Lane, drain: _Drain) -> bool:
        rt = self.runtime_by_label(drain.location)
        pending: list[CrmOp] = []
        CURRENT_OP.set(None)  # names the failing op below; not one of an earlier attempt
        try:
            self._check(drain)
            if rt.breaker.tripped:
                return True  # paused again since it was queued: it stays parked for the next probe
            state, stored_marks = self.states.load(drain.client_id)
            pending = ordered_pending(state) if state is not None else []
            if state is not None and pending:
                executor = await rt.executor()
                with background_requests(True), send_gate(lambda: self._hold_lease(drain)):  # live calls first
                    await self._run_ops(lane, drain, rt, executor, drain.client_id, state, pending,
                                        stored_marks or marks.EMPTY, drain.partition)
                rt.breaker.record_success()
            await self._hold_lease(drain)
            await self.parking.unpark(drain.location, drain.partition, drain.client_id)
            return True
        except (Abandoned, asyncio.CancelledError):
            raise
        except Exception as exc:  # noqa: BLE001 - every failure gets its next step from the policy
            current = CURRENT_OP.get()
            failed_event = current[1] if current is not None and current[0] == drain.client_id else (
                pending[0].event_id if pending else None)
            return await self._after_drain_failure(drain, rt, exc, failed_event)

    async def _after_drain_failure(self, drain: _Drain, rt: LocationRuntime, exc: Exception,
                                   failed_event: str | None) -> bool:
        """The failure policy's step for a drained op. True when this drain ends (the client may stay parked)."""
        failure = classify(exc)
        if failure is Failure.TRANSIENT:
            drain.failures += 1
            rt.breaker.record_failure()
        elif failure is Failure.UNEXPECTED:
            drain.attempts += 1
            log.error("sink: unexpected error (%s) draining a parked client of GoHighLevel location %s (attempt "
                      "%d)", type(exc).__name__, rt.label, drain.attempts, exc_info=exc)
        step = self.failure_policy.after(exc, failures=drain.failures, attempts=drain.attempts,
                                         location_paused=rt.breaker.tripped, jitter=random.random())
        if step.action is Action.HOLD:
            return True  # paused again: the client stays parked until the next probe
        if step.action is Action.RETRY:
            await self._wait(step.delay_s, drain, rt.breaker.closed_event)
            return False
        if step.action is Action.CHECK_CREDENTIALS and isinstance(exc, GhlPermanentError):
            if await self._credentials_rejected(rt, exc) is not None:
                return True
        if failed_event is None:
            return True  # nothing pending failed (the index write did): the next pass tries again
        try:
            await self._deadletter_parked(drain, step.reason, failed_event)
        except asyncio.CancelledError:
            raise
        except Exception as exc2:  # noqa: BLE001 - Kafka: keep it parked, try again
            log.warning("sink: dead-letter write failed (%s); retrying", type(exc2).__name__)
            await self._wait(self.settings.sink_retry_base_s, drain)
        return False  # the client's other parked ops, if any, next

    async def _deadletter_parked(self, drain: _Drain, reason: str, event_id: str) -> None:
        """Dead-letter a parked event whose op failed for good: its record is read back from the input topic
        (its offset is in the park index), then its ops are parked as failed, so a redrive resumes them."""
        topic = self.settings.topics.normalized
        offset = self.parking.index.offset_of(drain.location, drain.partition, drain.client_id, event_id)
        records = [] if offset is None else await self.sequence.reader.read(topic, drain.partition, offset,
                                                                            offset + 1)
        message: Any = records[0] if records else _GoneRecord(topic, drain.partition, -1 if offset is None else
                                                               offset, drain.client)
        value = message.value if records and isinstance(message.value, bytes) else b""
        try:
            location = NormalizedEvent.model_validate_json(value).location.key
        except ValidationError:
            location = "unknown"
        await self.deadletters.write(message, value, reason, event_id=event_id, location=location)
        state, _ = self.states.load(drain.client_id)
        if state is not None and state.effects:
            await self.states.save(drain.client_id, park_failed(state, event_id), drain.partition)
        await self.parking.forget_event(drain.location, drain.partition, drain.client_id, event_id)

    async def _deadletter(self, item: _Item, reason: str) -> None:
        event = item.event
        location = "unknown"
        event_id = ""
        try:
            ev = event_input.normalized(event)
            location, event_id = ev.location.key, ev.event_id
            # Park the remaining ops (not done, not applied) so the client's later events are not blocked behind
            # them and a redrive of this dead letter resumes exactly them.
            state, _ = self.states.load(ev.client.id)
            if state is not None and state.effects:
                await self.states.save(ev.client.id, park_failed(state, event_id), event.message.partition)
        except UnreadableEvent:
            pass
        raw = event.message.value if isinstance(event.message.value, bytes) else (event.value or b"")
        await self.deadletters.write(event.message, raw, reason, event_id=event_id, location=location)


# ------------------------------------------------------------------------------------------------- helpers


@dataclass
class _GoneRecord:
    """Where a parked event's record was, when retention removed it before its dead letter could copy it."""

    topic: str
    partition: int
    offset: int
    key: bytes
    headers: list[tuple[str, bytes]] = field(default_factory=list)


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

    @app.on_rebalance_complete.connect
    async def _recovered(app: faust.App, **kwargs: Any) -> None:  # noqa: ARG001
        engine.resume_parked()

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
