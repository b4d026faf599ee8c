"""`apro-sync reconcile`: compare the sink's client state with GoHighLevel, and with `--fix` write it again.

The state is read from the `client_state` changelog to its true end (sinks/sink_agent.py names it); the
comparison is sinks/drift.py; repairs go through the normal executor and the location's rate limiter.
Output and logs carry field names, counts and location labels only (docs/operations.md "Reconcile").
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

from tqdm import tqdm

from foundations.config import Settings
from apro_sync.ops.kafka_io import OperatorError, admin, read_all, reader, require_topic
from foundations.metrics import GHL_REQUESTS
from sinks import drift
from sinks.budget import SharedRateLimiter
from sinks.errors import SyncError
from sinks.executor import STAGE_KEYS, OpExecutor
from sinks.ghl.client import GhlClient
from sinks.ghl.errors import GhlError, GhlPermanentError
from sinks.ghl.retry import RetryPolicy
from sinks.locations import GhlTarget, load_locations
from sinks.provision import ResolvedIds, resolve_ids
from sinks.agent import changelog_topic_name
from streams.plan import marks, state_codec
from streams.plan.state import ClientState

CONCURRENCY = 8  # clients compared (or repaired) at once per location; the rate limiter paces the calls
NOT_FOUND = (400, 404)


@dataclass
class LocationReport:
    label: str
    counts: drift.DriftCounts = field(default_factory=drift.DriftCounts)
    fixed_clients: int = 0
    failed_clients: int = 0  # GoHighLevel refused a read or a repair (reasons logged without PHI)
    calls: int = 0
    seconds: float = 0.0

    def lines(self, fix: bool) -> list[str]:
        c = self.counts
        out = [f"location {self.label}: {c.clients} client(s) compared, {c.skipped} skipped (effects pending or "
               f"no contact), {c.drifted_clients} with drift, {c.total} field(s) drifted"]
        out += [f"  {name}: {count}" for name, count in sorted(c.fields.items())]
        if fix:
            out.append(f"  fixed: {self.fixed_clients} client(s)")
        if self.failed_clients:
            out.append(f"  failed: {self.failed_clients} client(s) (see the log)")
        rate = c.clients / self.seconds if self.seconds > 0 else 0.0
        out.append(f"  {self.calls} GoHighLevel call(s), {self.seconds:.1f}s, {rate:.1f} clients/s")
        return out


def decode_changelog(records: Iterable[tuple[bytes | None, bytes | None]]) -> dict[str, ClientState]:
    """The latest state per client from changelog records (key and value JSON-encoded strings, as faust.Table
    writes them), with its done marks merged (streams/plan/marks.py); a tombstone removes the key."""
    values: dict[str, str] = {}
    for key, value in records:
        if key is None:
            continue
        name = json.loads(key)
        if value is None:
            values.pop(name, None)
        else:
            values[name] = json.loads(value)

    def state_of(client_id: str, raw: str) -> ClientState:
        done = values.get(marks.marks_key(client_id))
        state = state_codec.decode(raw)
        return state if done is None else marks.merge(state, marks.decode(done))

    return {cid: state_of(cid, raw) for cid, raw in values.items() if not marks.is_marks_key(cid)}


def read_states(settings: Settings) -> dict[str, ClientState]:
    bootstrap = settings.kafka if settings.kafka_bootstrap_servers else "localhost:9092"
    topic = changelog_topic_name(settings, shadow=False)  # reconcile compares the live state
    partitions = require_topic(admin(bootstrap), bootstrap, topic)
    consumer = reader(bootstrap)
    try:
        return decode_changelog((msg.key(), msg.value()) for msg in read_all(consumer, topic, partitions))
    finally:
        consumer.close()


def _calls(label: str) -> float:
    return sum(s.value for metric in GHL_REQUESTS.collect() for s in metric.samples
               if s.name.endswith("_total") and s.labels.get("location") == label)


class LocationReconciler:
    """Compares (and repairs) the clients of one GoHighLevel location with one rate limiter."""

    def __init__(self, settings: Settings, target: GhlTarget) -> None:
        self.target = target
        self.label = target.ghl_location_id
        limiter = SharedRateLimiter(target.label, share=settings.ghl_rate_share,
                                    daily_pace_from=settings.ghl_daily_pace_from)
        self.client = GhlClient(settings.ghl_base_url, target.token, target.ghl_location_id, limiter=limiter,
                                timeout=settings.ghl_timeout_s, max_retries=settings.ghl_max_retries,
                                metrics_location=target.label)
        self.once = GhlClient(settings.ghl_base_url, target.token, target.ghl_location_id, limiter=limiter,
                              timeout=settings.ghl_timeout_s, retry_policy=RetryPolicy(max_attempts=1),
                              metrics_location=target.label)
        self.ids: ResolvedIds | None = None
        self.executor: OpExecutor | None = None

    async def prepare(self) -> None:
        self.ids = await resolve_ids(self.client, self.target)
        self.executor = OpExecutor(self.client, self.once, self.ids, self.label)

    async def aclose(self) -> None:
        await self.client.aclose()
        await self.once.aclose()

    async def compare(self, state: ClientState) -> list[str]:
        assert self.ids is not None
        contact_id = state.crm[self.label].contact_id
        assert contact_id
        try:
            contact = await self.client.get_contact(contact_id)
        except GhlPermanentError as exc:
            if exc.status not in NOT_FOUND:
                raise
            contact = None
        want = drift.expected(state)
        opportunity = None
        if contact is not None and want.stage is not None:
            found = await self.client.search_opportunities(contact_id, self.ids.pipeline_id)
            if found:
                opportunity = found[0].model_dump(by_alias=True)
        field_keys = {fid: key for key, fid in self.ids.custom_fields.items()}
        stage_names = {self.ids.stage_ids[logical]: name for name, logical in STAGE_KEYS.items()
                       if logical in self.ids.stage_ids}
        return drift.drift(want, drift.observed(contact, opportunity, field_keys=field_keys, stage_names=stage_names))

    async def repair(self, state: ClientState, names: list[str], run_id: str) -> None:
        assert self.executor is not None
        for op in drift.repair_ops(state, self.label, names, run_id):
            state = await self.executor.execute(op, state)


async def reconcile_location(settings: Settings, target: GhlTarget, states: list[ClientState], *, fix: bool,
                             progress: Callable[[int], None], log: Callable[[str], None]) -> LocationReport:
    report = LocationReport(target.label)
    rec = LocationReconciler(settings, target)
    started, calls_before = time.monotonic(), _calls(target.label)
    run_id = uuid.uuid4().hex[:12]
    try:
        await rec.prepare()
        queue: asyncio.Queue[ClientState] = asyncio.Queue()
        for state in states:
            if drift.needs_comparison(state, rec.label):
                queue.put_nowait(state)
            else:
                report.counts.skipped += 1
                progress(1)

        async def work() -> None:
            while not queue.empty():
                state = queue.get_nowait()
                try:
                    names = await rec.compare(state)
                    report.counts.add(names)
                    if fix and names:
                        await rec.repair(state, names, run_id)
                        report.fixed_clients += 1
                except (GhlError, SyncError) as exc:  # reasons: status, endpoint template, ids; never PHI
                    report.failed_clients += 1
                    log(f"location {target.label}: a client could not be reconciled ({exc.reason})")
                progress(1)

        await asyncio.gather(*(work() for _ in range(CONCURRENCY)))
    finally:
        await rec.aclose()
    report.seconds = time.monotonic() - started
    report.calls = int(_calls(target.label) - calls_before)
    return report


def select_targets(settings: Settings, location: str | None) -> list[GhlTarget]:
    targets = load_locations(settings).targets()
    if location is None:
        return targets
    chosen = [t for t in targets if location in (t.label, t.ghl_location_id)]
    if not chosen:
        raise OperatorError(f"no configured GoHighLevel location {location!r}")
    return chosen


def clients_of(states: dict[str, ClientState], label: str) -> list[ClientState]:
    """The clients apro-sync has written (or owes writes) to the location, in client-id order."""
    return [s for _, s in sorted(states.items())
            if label in s.crm or any(e.location_label == label for e in (*s.effects, *s.failed))]


def run(settings: Settings, *, location: str | None, fix: bool, log: Callable[[str], None],
        show_progress: bool = True) -> list[LocationReport]:
    targets = select_targets(settings, location)
    states = read_states(settings)
    reports = []
    for target in targets:
        mine = clients_of(states, target.ghl_location_id)
        with tqdm(total=len(mine), desc=f"{'fix' if fix else 'check'} {target.label}", unit="client",
                  disable=not show_progress, leave=False) as bar:
            reports.append(asyncio.run(reconcile_location(settings, target, mine, fix=fix, progress=bar.update,
                                                          log=log)))
    return reports


def iter_lines(reports: list[LocationReport], fix: bool) -> Iterator[str]:
    for report in reports:
        yield from report.lines(fix)


__all__ = ["LocationReport", "clients_of", "decode_changelog", "iter_lines", "read_states", "reconcile_location",
           "run", "select_targets"]
