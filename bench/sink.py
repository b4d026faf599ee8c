"""Sink benchmark, real producer and worker processes against the emulator (12 sub-accounts, lognormal call times):
(a) calls per event / minimum, cold and steady side by side; (b) latency at 20 events/s over 10 sub-accounts;
(c) budget used draining a backlog into one sub-account; (d) one sub-account offered twice its rate limit.
Every figure against a baseline from the same run; method, options and figures: docs/benchmarks.md, "Sink".

    python bench/sink.py [--quick] [--only load|budget|limit] [--call-p50-ms 50 --call-p99-ms 250 | --call-ms 50]
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import io
import json
import math
import os
import random
import re
import statistics
import sys
import tempfile
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import aiohttp  # noqa: E402
from aiohttp import web  # noqa: E402
from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition  # noqa: E402

from apro_sync.local_brokers import external_or_embedded  # noqa: E402
from apro_sync.local_stack import TOKEN, StackConfig, parse_metrics, scrape  # noqa: E402
from emulator.config import EmulatorConfig, LatencyConfig, LocationConfig  # noqa: E402
from emulator.server import ThreadedEmulator  # noqa: E402
from foundations.config import Settings  # noqa: E402
from sinks.locations import load_locations  # noqa: E402
from sinks.provision import provision_all  # noqa: E402

FIXTURES = REPO / "examples" / "webhooks"
MINIMUM = {"client": 1, "appointment": 4, "invoice": 5}
MIX = (("client", 0.3), ("appointment", 0.5), ("invoice", 0.2))
MARKER = "apro-event: "
CONTACT_WRITES = {"PUT /contacts/{contactId}", "POST /contacts/upsert"}  # the first op of every event
SEARCH = "POST /contacts/search"  # duplicate search (email, then phone) right before a new contact's upsert
LOAD_LOCATIONS = [str(n) for n in range(101, 111)]  # AestheticsPro location ids of (a)/(b), one sub-account each
BACKLOG_LOCATION = "999"  # (c): its own sub-account, untouched by (a)/(b)
LIMIT_LOCATION = "998"  # (d): its own sub-account, offered more than its rate limit allows
BURST = 100  # GoHighLevel: 100 requests / 10 s per location (the emulator's default)
WINDOW_S = 10.0


# ------------------------------------------------------------------------------------------------ events


@dataclass(frozen=True)
class Ev:
    event_id: str
    kind: str
    cid: int
    location: str
    phase: str
    body: bytes


class Bodies:
    """Webhook bodies built from the sample fixtures: distinct clients, fresh appointment/invoice ids."""

    def __init__(self) -> None:
        self.fx = {p.stem: json.loads(p.read_text()) for p in FIXTURES.glob("*.json")}
        self.n = 0
        self.t0 = datetime(2026, 12, 1, 9, 0, tzinfo=timezone.utc)
        self.by_cid: dict[int, list[Ev]] = defaultdict(list)  # every event of a client, in posting order
        self.by_id: dict[str, Ev] = {}
        self.cid_by_search: dict[str, int] = {}  # email, or the phone's last 10 digits → client

    def cid_of_search(self, value: str) -> int | None:
        """The client a duplicate search was for, from its filter value (email or phone in any format)."""
        digits = re.sub(r"\D", "", value)
        return self.cid_by_search.get(value.lower()) or (self.cid_by_search.get(digits[-10:]) if digits else None)

    def make(self, kind: str, cid: int, location: str, phase: str) -> Ev:
        self.n += 1
        if kind == "client":
            body = json.loads(json.dumps(self.fx["client_updated"]))
        elif kind == "appointment":
            body = json.loads(json.dumps(self.fx["appointment_created"]))
            body["appointment"]["appointmentId"] = f"A-bench-{self.n}"
            body["appointment"]["startDateTime"] = (self.t0 + timedelta(days=30, minutes=self.n)).strftime(
                "%Y-%m-%d %H:%M:%S")
        else:
            body = json.loads(json.dumps(self.fx["invoice_paid"]))
            body["invoice"]["invoiceId"] = f"I-bench-{self.n}"
            body["invoice"]["invoiceNumber"] = f"B{self.n}"
        body["eventId"] = f"bench-{kind}-{self.n}"
        body["occurredAt"] = (self.t0 + timedelta(seconds=self.n)).isoformat()
        client = dict(body["client"])
        for key in ("clientId", "id"):
            if key in client:
                client[key] = str(cid)
        client["email"] = f"bench{cid}@example.com"
        client["mobilePhone"] = f"(602) 555-{cid % 10_000:04d}"
        body["client"] = client
        self.cid_by_search[client["email"]] = cid
        self.cid_by_search[re.sub(r"\D", "", client["mobilePhone"])[-10:]] = cid
        body["location"] = {"id": location, "name": f"Bench {location}"}
        ev = Ev(body["eventId"], kind, cid, location, phase, json.dumps(body).encode())
        self.by_cid[cid].append(ev)
        self.by_id[ev.event_id] = ev
        return ev


def mixed_kinds(count: int, seed: int) -> list[str]:
    """`count` kinds in the standard mix proportions, shuffled (seeded)."""
    kinds = [kind for kind, share in MIX for _ in range(round(count * share))]
    while len(kinds) < count:
        kinds.append("appointment")
    random.Random(seed).shuffle(kinds)
    return kinds[:count]


# ------------------------------------------------------------------------------------------------ emulator


@dataclass
class Call:
    """One GoHighLevel request as the emulator served it (recorded by a middleware of this benchmark)."""

    endpoint: str  # "PUT /contacts/{contactId}"
    start: float  # time.time() on arrival
    end: float  # time.time() when the emulator's answer was ready (after its injected latency)
    status: int
    location: str  # GoHighLevel location id (from the token)
    contact: str | None = None
    opportunity: str | None = None
    event: str | None = None  # the note's `apro-event:` marker
    search_value: str | None = None  # a duplicate search's filter value (the bench's synthetic email or phone)


class Recorder:
    """An aiohttp middleware on the emulator app: per request, the endpoint template, the object ids it touches
    (contact, opportunity, the note's event marker) and arrival/answer times. The emulator's own request log
    keeps only the template and arrival time, which cannot say which event a `PUT /contacts/{id}` belongs to."""

    def __init__(self, tokens: dict[str, str]) -> None:
        self.tokens = tokens  # token → GoHighLevel location id
        self.calls: list[Call] = []
        self._lock = threading.Lock()

    def snapshot(self) -> list[Call]:
        with self._lock:
            return list(self.calls)

    @web.middleware
    async def middleware(self, request: web.Request, handler: Any) -> web.StreamResponse:
        start = time.time()
        resp = await handler(request)
        end = time.time()
        resource = request.match_info.route.resource
        template = resource.canonical if resource is not None else request.path
        if template.startswith("/_emulator"):
            return resp
        auth = request.headers.get("Authorization", "")
        call = Call(f"{request.method} {template}", start, end, resp.status, self.tokens.get(auth[7:].strip(), "?"))
        m = request.match_info
        call.contact = m.get("contactId") or request.query.get("contact_id")
        if template.startswith("/opportunities/{id}"):
            call.opportunity = m.get("id")
        if call.endpoint in (
            "POST /contacts/upsert",
            "POST /opportunities/",
            "POST /contacts/{contactId}/notes",
            SEARCH,
        ):
            try:
                sent = json.loads(await request.read() or b"{}")
                answer = json.loads(getattr(resp, "body", b"") or b"{}")
            except ValueError:
                sent, answer = {}, {}
            if call.endpoint == "POST /contacts/upsert":
                call.contact = (answer.get("contact") or {}).get("id")
            elif call.endpoint == "POST /opportunities/":
                call.contact = sent.get("contactId")
                call.opportunity = (answer.get("opportunity") or {}).get("id")
            elif call.endpoint == SEARCH:
                values = [f.get("value") for f in sent.get("filters") or [] if isinstance(f, dict)]
                call.search_value = next((str(v) for v in values if v), None)
            elif MARKER in (sent.get("body") or ""):
                call.event = sent["body"].split(MARKER, 1)[1].split()[0]
        with self._lock:
            self.calls.append(call)
        return resp


def start_emulator(count: int) -> tuple[ThreadedEmulator, Recorder]:
    config = EmulatorConfig(
        locations=[LocationConfig(id=f"benchLoc{n:02d}xxxxxxxxxx", token=f"pit-bench-{n:02d}") for n in range(count)],
        max_request_log=1_000_000,
    )
    emulator = ThreadedEmulator(config)
    recorder = Recorder({loc.token: loc.id for loc in config.locations})
    emulator.server.app.middlewares.append(recorder.middleware)  # before start: the app is frozen then
    return emulator.start(), recorder


def locations_file(work: Path, emulator: ThreadedEmulator, apro_ids: list[str]) -> tuple[Path, dict[str, str]]:
    """One GoHighLevel sub-account per AestheticsPro location; tokens in env variables (no secrets in the file)."""
    env: dict[str, str] = {}
    lines = ["locations:"]
    for apro, loc in zip(apro_ids, emulator.server.config.locations, strict=True):
        var = f"BENCH_GHL_TOKEN_{apro}"
        env[var] = loc.token
        lines += [f"  - apro: [\"{apro}\"]", f"    ghl_location_id: {loc.id}", f"    token_env: {var}",
                  f"    name: Bench {apro}"]
    path = work / "locations.yaml"
    path.write_text("\n".join(lines) + "\n")
    return path, env


def provision(env: dict[str, str]) -> None:
    """`apro-sync provision` for every configured sub-account (settings read from `env`, as the worker will)."""
    saved = dict(os.environ)
    os.environ.update(env)
    try:
        settings = Settings(_env_file=None, webhook_tokens=TOKEN)
        out = io.StringIO()
        code = asyncio.run(provision_all(load_locations(settings).targets(), settings, dry_run=False, out=out))
        if code != 0:
            raise RuntimeError(out.getvalue())
    finally:
        os.environ.clear()
        os.environ.update(saved)


# ------------------------------------------------------------------------------------------------ posting


async def _post(url: str, evs: Sequence[Ev], rate: float | None, concurrency: int) -> dict[str, float]:
    """POST each event; returns event id → time.time() of its 202. With `rate`: open loop, evenly paced; else in
    sequential batches of `concurrency` (callers put distinct clients in a batch, so a client's events stay in
    order). Any answer other than 202 aborts the benchmark."""
    accepted: dict[str, float] = {}
    connector = aiohttp.TCPConnector(limit=64)
    async with aiohttp.ClientSession(connector=connector) as session:
        async def one(ev: Ev) -> None:
            async with session.post(url, data=ev.body, headers={"Content-Type": "application/json"}) as resp:
                await resp.read()
                if resp.status != 202:
                    raise RuntimeError(f"producer answered {resp.status} to {ev.event_id}")
                accepted[ev.event_id] = time.time()

        if rate is None:
            for i in range(0, len(evs), concurrency):
                await asyncio.gather(*(one(e) for e in evs[i:i + concurrency]))
        else:
            start = time.monotonic()
            tasks = []
            for i, ev in enumerate(evs):
                delay = start + i / rate - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
                tasks.append(asyncio.ensure_future(one(ev)))
            await asyncio.gather(*tasks)
    return accepted


def post(url: str, evs: Sequence[Ev], rate: float | None = None, concurrency: int = 8) -> dict[str, float]:
    return asyncio.run(_post(url, evs, rate, concurrency))


def wait_done(recorder: Recorder, bodies: Bodies, evs: Sequence[Ev], timeout_s: float, quiet_s: float = 0.5) -> None:
    """Until every event of `evs` had its last call answered, then `quiet_s` without any new call. The last call
    of an appointment/invoice event is its audit note; a client event has one call, its contact write, and every
    event posted so far starts with exactly one contact write."""
    notes = {e.event_id for e in evs if e.kind != "client"}
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        calls = recorder.snapshot()
        seen = {c.event for c in calls if c.event and c.status < 300}
        writes = sum(1 for c in calls if c.endpoint in CONTACT_WRITES and c.status < 300)
        if notes <= seen and writes >= len(bodies.by_id) and time.time() - max(c.end for c in calls) >= quiet_s:
            return
        time.sleep(0.1)
    raise RuntimeError(f"the worker did not finish {len(evs)} events within {timeout_s:.0f}s")


def wait_window_clear(recorder: Recorder) -> None:
    """Sleep until the last call is older than the 10 s window: the next phase starts with a full budget."""
    calls = recorder.snapshot()
    if calls:
        time.sleep(max(0.0, max(c.end for c in calls) + WINDOW_S + 0.2 - time.time()))


# ------------------------------------------------------------------------------------------------ stack


class Stack:
    """`apro-sync producer` and `apro-sync worker` processes (apro_sync/local_stack.py), one topic prefix."""

    def __init__(self, bootstrap: str, embedded: bool, work: Path, env: dict[str, str]) -> None:
        self.config = StackConfig.for_broker(bootstrap, work, embedded_broker=embedded, partitions=12,
                                            extra_env={**env, "APRO_LOG_FORMAT": "console"}, log_level="WARNING")
        self.config.create_topics()
        self.producer = self.config.producer()
        self.worker = self.config.worker()

    def stop(self) -> None:
        self.worker.stop()
        self.producer.stop()


# ------------------------------------------------------------------------------------------------ analysis (pure)


def quantile(values: Sequence[float], q: float) -> float:
    """Nearest-rank quantile of `values` (unsorted is fine)."""
    xs = sorted(values)
    return xs[max(0, min(len(xs) - 1, math.ceil(q * len(xs)) - 1))]


@dataclass
class Attribution:
    per_event: dict[str, list[Call]] = field(default_factory=dict)
    setup: list[Call] = field(default_factory=list)  # calls of no contact (id resolution at worker start)
    unattributed: list[Call] = field(default_factory=list)
    mismatched: int = 0  # segments whose note names another event than expected


def attribute(calls: Iterable[Call], bodies: Bodies, contact_cid: dict[str, int], opp_contact: dict[str, str],
              ) -> Attribution:
    """Assign every call to its event. A client's events run strictly one after the other (one lane per client),
    each starts with its contact write (for a new contact: the duplicate searches, then the upsert; a search is
    matched to its client by the email or phone it searches for) and (appointment/invoice) ends with its audit
    note, so a client's calls in arrival order, cut where an event starts, are its events' calls in posting order."""
    out = Attribution()
    by_cid: dict[int, list[Call]] = defaultdict(list)
    for c in calls:
        contact = c.contact or opp_contact.get(c.opportunity or "")
        searched = bodies.cid_of_search(c.search_value) if c.search_value else None
        if searched is not None:
            by_cid[searched].append(c)
            continue
        if contact is None:
            (out.setup if c.endpoint.startswith(("GET /locations", "GET /opportunities/pipelines", "GET /workflows"))
             else out.unattributed).append(c)
            continue
        cid = contact_cid.get(contact)
        if cid is None:
            out.unattributed.append(c)
            continue
        by_cid[cid].append(c)
    for cid, cs in by_cid.items():
        cs.sort(key=lambda c: c.start)
        segments: list[list[Call]] = []
        for c in cs:
            # An event starts with its contact write, or with the duplicate searches just before it.
            after_search = bool(segments) and segments[-1][-1].endpoint == SEARCH
            if not segments or (c.endpoint in CONTACT_WRITES or c.endpoint == SEARCH) and not after_search:
                segments.append([])
            segments[-1].append(c)
        events = bodies.by_cid.get(cid, [])
        for ev, seg in zip(events, segments, strict=False):
            marked = {c.event for c in seg if c.event}
            if marked and marked != {ev.event_id}:
                out.mismatched += 1
            out.per_event[ev.event_id] = seg
        for seg in segments[len(events):]:
            out.unattributed.extend(seg)
    return out


def windows(times: Sequence[float], start: float, end: float, step: float = 0.1) -> list[int]:
    """Request counts of the sliding windows [t, t + 10 s) for t from `start` to `end - 10 s` every `step`."""
    xs = sorted(times)
    out = []
    t = start
    while t + WINDOW_S <= end + 1e-9:
        out.append(bisect.bisect_left(xs, t + WINDOW_S) - bisect.bisect_left(xs, t))
        t += step
    return out


def max_window(times: Sequence[float]) -> int:
    xs = sorted(times)
    best, lo = 0, 0
    for hi, t in enumerate(xs):
        while xs[lo] <= t - WINDOW_S:
            lo += 1
        best = max(best, hi - lo + 1)
    return best


def histogram_quantile(buckets: dict[float, float], q: float) -> float:
    """Prometheus-style quantile from cumulative bucket counts {upper bound: count}, linear within a bucket."""
    bounds = sorted(buckets)
    total = buckets[bounds[-1]]
    if total <= 0:
        return float("nan")
    rank = q * total
    prev_bound, prev_count = 0.0, 0.0
    for b in bounds:
        if buckets[b] >= rank:
            if math.isinf(b):
                return prev_bound
            span = buckets[b] - prev_count
            return prev_bound + (b - prev_bound) * ((rank - prev_count) / span if span else 1.0)
        prev_bound, prev_count = b, buckets[b]
    return prev_bound


def e2e_buckets(metrics_url: str) -> dict[float, float]:
    samples = parse_metrics(scrape(metrics_url))
    out: dict[float, float] = defaultdict(float)
    for (name, labels), value in samples.items():
        if name == "apro_sync_e2e_seconds_bucket":
            out[float(dict(labels)["le"])] += value
    return dict(out)


@dataclass(frozen=True)
class Normalized:
    received: datetime
    written: float  # the normalized record's Kafka timestamp (s)


def read_normalized(bootstrap: str, topic: str, want: set[str], timeout_s: float = 60.0) -> dict[str, Normalized]:
    """event id → (received_at, normalized record timestamp) for the `want` events, read from the beginning."""
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"bench-sink-{time.time_ns()}",
                         "enable.auto.commit": False, "log_level": 0})
    out: dict[str, Normalized] = {}
    try:
        meta = consumer.list_topics(topic, timeout=10).topics[topic]
        consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in meta.partitions])
        deadline = time.monotonic() + timeout_s
        while not want <= out.keys() and time.monotonic() < deadline:
            for msg in consumer.consume(1000, timeout=0.5):
                if msg.error():
                    continue
                data = json.loads(msg.value())
                eid, received = data.get("event_id"), data.get("received_at")
                if eid in want and received:
                    out[eid] = Normalized(datetime.fromisoformat(received), msg.timestamp()[1] / 1000)
    finally:
        consumer.close()
    return out


# ------------------------------------------------------------------------------------------------ parts


def run_budget(stack: Stack, emulator: ThreadedEmulator, recorder: Recorder, bodies: Bodies, count: int,
               latency: str) -> dict[str, Any]:
    """(c): post a backlog for one location with the worker stopped, then start the worker to drain it."""
    loc_id = emulator.config.locations[len(LOAD_LOCATIONS)].id
    backlog = [bodies.make("appointment", 50_000 + i, BACKLOG_LOCATION, "backlog") for i in range(count)]
    post(stack.producer.webhook_url(), backlog, concurrency=16)
    wait_window_clear(recorder)  # `apro-sync provision`'s calls out of the window: the drain starts with 100
    started = time.time()
    stack.worker.start().wait_ready()
    return {"loc_id": loc_id, "backlog": backlog, "worker_started": started, "latency": latency}


def report_budget(emu_log: list[dict[str, Any]], info: dict[str, Any], timeline: bool = False) -> None:
    """(c) from the emulator's own request log (arrival times as its rate limiter counted them, statuses)."""
    log = [r for r in emu_log if r.get("locationId") == info["loc_id"] and r["at"] >= info["worker_started"]]
    accepted = sorted(r["at"] for r in log if r.get("status") != 429)
    limited = sum(1 for r in log if r.get("status") == 429)
    if len(accepted) < 2:
        print("(c) no requests logged")
        return
    first, last = accepted[0], accepted[-1]
    span = last - first
    # Backlog left for certain until the last booking's first call (each booking is a new contact: one upsert);
    # windows ending after it may be short of work, not of budget.
    last_start = max(r["at"] for r in log if r["path"] == "/contacts/upsert" and r.get("status") != 429)
    drain = windows(accepted, first, last_start)
    print(f"(c) budget while draining a backlog: {len(info['backlog'])} bookings for one location (new clients, "
          f"5 calls each), one sub-account, limit {BURST} requests / 10 s, {info['latency']}")
    print(f"    {len(accepted)} calls answered in {span:.1f} s (first to last call) = "
          f"{len(accepted) / span * WINDOW_S:.1f} per 10 s")
    if drain:
        print(f"    sliding 10 s windows while bookings were still waiting ({len(drain)} windows, every 0.1 s over "
              f"{last_start - WINDOW_S - first:.1f} s): mean {statistics.mean(drain):.1f}, min {min(drain)}, "
              f"max {max(drain)} → budget used {statistics.mean(drain) / BURST:.1%} (target ≥ 95 %)")
    else:
        print("    the backlog drained within one window: too short to measure; use a larger --backlog")
    print(f"    429s: {limited} of {len(log)} requests = {limited / len(log):.2%} (target < 1 %)")
    per_endpoint = Counter(f"{r['method']} {r['path']}" for r in log if r.get("status") != 429)
    print(f"    calls per booking: {len(accepted) / len(info['backlog']):.2f} (" + ", ".join(
        f"{n / len(info['backlog']):.2f} {k}" for k, n in per_endpoint.most_common()) + ")")
    if timeline:
        per_s = Counter(int(t - first) for t in accepted)
        print("    calls per second from the first call: " + " ".join(str(per_s[i]) for i in range(int(span) + 1)))


def run_limit(url: str, emulator: ThreadedEmulator, recorder: Recorder, bodies: Bodies, rate: float,
              seconds: float, clients: int = 20) -> dict[str, Any]:
    """(d): the standard mix for `clients` known clients of ONE location (one sub-account), offered at `rate`
    events/s, above what its 100 requests / 10 s allow: the worker can only go as fast as the limit."""
    cids = list(range(2000, 2000 + clients))
    cold = [bodies.make(k, cid, LIMIT_LOCATION, "limit-cold") for k, cid in zip(mixed_kinds(clients, 3), cids,
                                                                                   strict=True)]
    post(url, cold)
    wait_done(recorder, bodies, cold, timeout_s=120)
    warm = [bodies.make("appointment", e.cid, LIMIT_LOCATION, "limit-warm") for e in cold if e.kind == "client"]
    post(url, warm)
    wait_done(recorder, bodies, warm, timeout_s=120)
    wait_window_clear(recorder)
    started = time.time()
    evs = [bodies.make(k, cids[i % clients], LIMIT_LOCATION, "limit")
           for i, k in enumerate(mixed_kinds(int(rate * seconds), 4))]
    post(url, evs, rate=rate)
    wait_done(recorder, bodies, evs, timeout_s=len(evs) * 5 / (BURST / WINDOW_S) + 120)
    return {"loc_id": emulator.config.locations[len(LOAD_LOCATIONS) + 1].id, "events": evs, "started": started,
            "rate": rate, "seconds": seconds}


def report_limit(att: Attribution, info: dict[str, Any], calls: list[Call]) -> None:
    """(d): events/s and calls/s achieved while work was waiting, over whole 10 s windows from the first call,
    against the limit (100 calls / 10 s, so 10 / (calls per event) events/s)."""
    evs = info["events"]
    done = [e for e in evs if e.event_id in att.per_event]
    mine = sorted((c for c in calls if c.location == info["loc_id"] and c.start >= info["started"]),
                  key=lambda c: c.start)
    answered = [c for c in mine if c.status != 429]
    print(f"(d) rate limit binding, one location → one sub-account: {len(done)}/{len(evs)} events attributed, "
          f"standard mix over 20 known clients, {info['rate']:g} events/s offered for {info['seconds']:g} s")
    if not done or not answered:
        print("    no calls recorded")
        return
    per_event = sum(len(att.per_event[e.event_id]) for e in done) / len(done)
    t0 = answered[0].start
    busy_until = max(att.per_event[e.event_id][0].start for e in done)  # events waited until the last one began
    k = int((busy_until - t0) // WINDOW_S)
    limit_calls = BURST / WINDOW_S
    limit_events = limit_calls / per_event
    print(
        f"    offered {info['rate']:g} events/s × {per_event:.2f} calls/event = "
        f"{info['rate'] * per_event:.1f} calls/s, "
        f"limit {limit_calls:g} calls/s = {limit_events:.2f} events/s at this mix"
    )
    if k < 1:
        print("    the events were done within one 10 s window: too short to measure; use a larger --limit-seconds")
        return
    t1 = t0 + k * WINDOW_S
    n_calls = sum(1 for c in answered if t0 <= c.start < t1)
    n_events = sum(1 for e in done if t0 <= max(c.end for c in att.per_event[e.event_id]) < t1)
    # events in flight at a window's edge: count each call as its share of its own event
    shares = sum(sum(1 for c in cs if t0 <= c.start < t1 and c.status != 429) / len(cs)
                 for cs in (att.per_event[e.event_id] for e in done))
    span = k * WINDOW_S
    print(f"    achieved over {k} whole 10 s windows from the first call ({span:.0f} s, work waiting throughout): "
          f"{n_calls / span:.2f} calls/s vs limit {limit_calls:g} = {n_calls / span / limit_calls:.1%}; "
          f"events {shares / span:.2f}/s (in-flight events counted by their share of calls) vs limit "
          f"{limit_events:.2f} = {shares / span / limit_events:.1%}; events completed {n_events / span:.2f}/s = "
          f"{n_events / span / limit_events:.1%}")
    print(f"    429s: {len(mine) - len(answered)} of {len(mine)} requests; busiest sliding 10 s window "
          f"{max_window([c.start for c in answered])} / {BURST}")


def phase_ratio(att: Attribution, bodies: Bodies, phase: str) -> tuple[int, int]:
    """(calls, theoretical minimum) over the attributed events of `phase`."""
    done = [e for e in bodies.by_id.values() if e.phase == phase and e.event_id in att.per_event]
    return sum(len(att.per_event[e.event_id]) for e in done), sum(MINIMUM[e.kind] for e in done)


def report_calls(att: Attribution, bodies: Bodies, phases: Sequence[tuple[str, str]]) -> None:
    """(a) calls per event against the theoretical minimum, per phase and kind, with the extra calls named."""
    first_invoice_seen: set[int] = set()
    extra_tag_redundant = Counter()  # phase → tag calls on a client that was already a patient
    for cid, evs in bodies.by_cid.items():
        for ev in evs:
            if ev.kind != "invoice":
                continue
            if cid in first_invoice_seen:
                calls = att.per_event.get(ev.event_id, [])
                extra_tag_redundant[ev.phase] += sum(
                    1 for c in calls if c.endpoint == "POST /contacts/{contactId}/tags"
                )
            first_invoice_seen.add(cid)
    for phase, title in phases:
        evs = [e for e in bodies.by_id.values() if e.phase == phase]
        done = [e for e in evs if e.event_id in att.per_event]
        if not evs:
            continue
        kinds = Counter(e.kind for e in done)
        total = sum(len(att.per_event[e.event_id]) for e in done)
        minimum = sum(MINIMUM[e.kind] for e in done)
        print(f"(a) {title}: {len(done)}/{len(evs)} events attributed {dict(sorted(kinds.items()))}")
        for kind in ("client", "appointment", "invoice"):
            ke = [e for e in done if e.kind == kind]
            if not ke:
                continue
            n = sum(len(att.per_event[e.event_id]) for e in ke)
            endpoints = Counter(c.endpoint for e in ke for c in att.per_event[e.event_id])
            listing = ", ".join(f"{v / len(ke):.2f} {k}" for k, v in sorted(endpoints.items(), key=lambda kv: -kv[1]))
            print(f"      {kind:11s} {n / len(ke):.2f} calls/event (minimum {MINIMUM[kind]}): {listing}")
        if minimum:
            print(f"    {total} calls / theoretical minimum {minimum} = {total / minimum:.3f}  (target 1.00)")
            redundant = extra_tag_redundant[phase]
            if redundant:
                print(f"    of which {redundant} `POST /contacts/{{id}}/tags` for clients already tagged as patients "
                      f"by an earlier invoice; without them {(total - redundant) / minimum:.3f}")
    print(f"    setup calls (id resolution per location at worker start): "
          f"{dict(Counter(c.endpoint for c in att.setup))}; unattributed: {len(att.unattributed)} "
          f"{dict(Counter(f'{c.endpoint} {c.status}' for c in att.unattributed))}; "
          f"attribution mismatches: {att.mismatched}")


@dataclass(frozen=True)
class Sample:
    ev: Ev
    received: float  # received-at (the producer's stamp when it took the webhook)
    normalized: float  # the normalized record's timestamp
    first: float  # arrival of the event's first GoHighLevel call at the emulator
    last: float  # answer of its last call
    calls: list[Call]

    @property
    def latency(self) -> float:
        return self.last - self.received


def report_latency(att: Attribution, bodies: Bodies, normalized: dict[str, Normalized], accepted: dict[str, float],
                   calls: list[Call], rate: float, seconds: float, latency: str, hist: dict[float, float]) -> None:
    evs = [e for e in bodies.by_id.values() if e.phase == "steady"]
    rows: list[Sample] = []
    for e in evs:
        seg, norm = att.per_event.get(e.event_id), normalized.get(e.event_id)
        if seg and norm is not None:
            rows.append(Sample(e, norm.received.timestamp(), norm.written, seg[0].start, max(c.end for c in seg), seg))
    if not rows:
        print("(b) no latency samples")
        return
    ms = 1000
    per_call = [c.end - c.start for r in rows for c in r.calls]
    base_call = statistics.median(per_call)
    lat = [r.latency for r in rows]
    print(f"(b) latency accepted (received-at) → last GoHighLevel call answered: {len(rows)}/{len(evs)} events, "
          f"{rate:.0f}/s offered for {seconds:.0f} s, 10 locations each with its own sub-account (locations file), "
          f"{latency}")
    print(f"    all kinds: p50 {quantile(lat, .5) * ms:.0f} ms, p99 {quantile(lat, .99) * ms:.0f} ms, "
          f"max {max(lat) * ms:.0f} ms  (targets p50 < 300 ms, p99 < 1000 ms)")
    print(f"    baseline: the emulator's measured time per call, p50 {base_call * ms:.1f} ms, "
          f"p99 {quantile(per_call, .99) * ms:.1f} ms, mean {statistics.mean(per_call) * ms:.1f} ms; per kind, the "
          f"sum of its minimum number of calls drawn from these measured times (20,000 seeded resamples)")
    for kind in ("client", "appointment", "invoice"):
        kr = [r for r in rows if r.ev.kind == kind]
        if not kr:
            continue
        kl = [r.latency for r in kr]
        made = statistics.mean(len(r.calls) for r in kr)
        b50, b99 = resampled_sum_quantiles(per_call, MINIMUM[kind], (.5, .99))
        print(
            f"      {kind:11s} n={len(kl):4d}  p50 {quantile(kl, 0.5) * ms:4.0f} ms  "
            f"p99 {quantile(kl, 0.99) * ms:4.0f} ms"
            f"   baseline ({MINIMUM[kind]} calls) p50 {b50 * ms:3.0f} ms, p99 {b99 * ms:4.0f} ms → "
            f"p50 / baseline {quantile(kl, 0.5) / b50:.2f}, p99 / baseline {quantile(kl, 0.99) / b99:.2f}"
            f"   (calls made {made:.2f})"
        )
    stages = {
        "accepted → normalized record written": [r.normalized - r.received for r in rows],
        "normalized → first GoHighLevel call": [r.first - r.normalized for r in rows],
        "first call → last call answered": [r.last - r.first for r in rows],
        "  of which inside the calls": [sum(c.end - c.start for c in r.calls) for r in rows],
        "  between two calls of one event": [b.start - a.end for r in rows for a, b in zip(r.calls, r.calls[1:])],
    }
    print("    where the time goes:")
    for name, values in stages.items():
        if values:
            print(
                f"      {name:38s} p50 {quantile(values, 0.5) * ms:5.0f} ms   p99 {quantile(values, 0.99) * ms:5.0f} ms"
            )
    acks = [accepted[r.ev.event_id] - r.received for r in rows if r.ev.event_id in accepted]
    if acks:
        print(f"      (received-at → 202 seen by the load generator: p50 {quantile(acks, .5) * ms:.0f} ms)")
    if hist:
        print(f"    the worker's apro_sync_e2e_seconds over the same events (bucket-interpolated; observed after the "
              f"final state write): p50 ≈ {histogram_quantile(hist, .5) * ms:.0f} ms, "
              f"p99 ≈ {histogram_quantile(hist, .99) * ms:.0f} ms")
    t0, t1 = min(r.received for r in rows), max(r.last for r in rows)
    per_loc = defaultdict(list)
    for c in calls:
        if t0 <= c.start <= t1:
            per_loc[c.location].append(c.start)
    busiest = max((max_window(ts) for ts in per_loc.values()), default=0)
    limited = sum(1 for c in calls if t0 <= c.start <= t1 and c.status == 429)
    print(f"    rate budget during (b): busiest 10 s window of any location {busiest} / {BURST} requests, "
          f"{limited} × 429")


def resampled_sum_quantiles(per_call: Sequence[float], k: int, qs: Sequence[float], n: int = 20_000,
                            seed: int = 5) -> list[float]:
    """Quantiles of the sum of `k` calls drawn (with replacement, seeded) from the measured call times: the time an
    event of `k` sequential calls would take with no other cost."""
    rng = random.Random(seed)
    sums = [sum(rng.choices(per_call, k=k)) for _ in range(n)]
    return [quantile(sums, q) for q in qs]


def diff_buckets(after: dict[float, float], before: dict[float, float]) -> dict[float, float]:
    return {b: after.get(b, 0.0) - before.get(b, 0.0) for b in after}


# ------------------------------------------------------------------------------------------------ main


def describe_latency(latency: LatencyConfig) -> str:
    if latency.p99_ms == latency.p50_ms:
        return f"{latency.p50_ms:g} ms per emulated call (constant)"
    return (f"emulated call latency lognormal p50 {latency.p50_ms:g} ms, p99 {latency.p99_ms:g} ms "
            f"(cap {latency.max_ms:g} ms, seed {latency.seed})")


def run(bootstrap: str, embedded: bool, work: Path, *, quick: bool, only: str | None, rate: float,
        seconds: float, latency: LatencyConfig, backlog: int, limit_rate: float, limit_seconds: float,
        timeline: bool = False) -> None:
    latency_text = describe_latency(latency)
    apro_ids = [*LOAD_LOCATIONS, BACKLOG_LOCATION, LIMIT_LOCATION]
    emulator, recorder = start_emulator(len(apro_ids))
    path, token_env = locations_file(work, emulator, apro_ids)
    env = {"APRO_GHL_BASE_URL": emulator.base_url, "APRO_LOCATIONS_FILE": str(path), "APRO_GHL_TOKEN": "unused",
           **token_env}
    t_start = time.monotonic()
    provision(env)
    emulator.set_faults(latency=latency)  # every call from here on draws its time at the emulator
    stack = Stack(bootstrap, embedded, work / "stack", env)
    bodies = Bodies()
    try:
        stack.producer.start().wait_ready()
        url = stack.producer.webhook_url()
        budget = None
        if only in (None, "budget"):
            budget = run_budget(stack, emulator, recorder, bodies, backlog, latency_text)
            worker_started = budget["worker_started"]
            wait_done(recorder, bodies, budget["backlog"], timeout_s=backlog * 5 / 8 + 120)
        else:
            worker_started = time.time()
            stack.worker.start().wait_ready()
        if only in (None, "load"):
            # Cold: each client's first event (10 clients per location, kinds in the standard mix).
            clients = list(range(1000, 1000 + 10 * len(LOAD_LOCATIONS)))
            loc_of = {cid: LOAD_LOCATIONS[i % len(LOAD_LOCATIONS)] for i, cid in enumerate(clients)}
            cold = [bodies.make(k, cid, loc_of[cid], "cold") for k, cid in zip(mixed_kinds(len(clients), 1), clients,
                                                                               strict=True)]
            post(url, cold)
            wait_done(recorder, bodies, cold, timeout_s=120)
            # Steady state needs an opportunity per contact: a booking for the clients that only have a contact.
            warm = [bodies.make("appointment", e.cid, e.location, "warm") for e in cold if e.kind == "client"]
            post(url, warm)
            wait_done(recorder, bodies, warm, timeout_s=120)
            wait_window_clear(recorder)
            before = e2e_buckets(stack.worker.metrics_url)
            steady = [bodies.make(k, clients[i % len(clients)], loc_of[clients[i % len(clients)]], "steady")
                      for i, k in enumerate(mixed_kinds(int(rate * seconds), 2))]
            accepted = post(url, steady, rate=rate)
            wait_done(recorder, bodies, steady, timeout_s=180)
            hist = diff_buckets(e2e_buckets(stack.worker.metrics_url), before)
        limit = None
        if only in (None, "limit"):
            limit = run_limit(url, emulator, recorder, bodies, limit_rate, limit_seconds)
        elapsed = time.monotonic() - t_start
    finally:
        stack.stop()
    calls = [c for c in recorder.snapshot() if c.start >= worker_started]  # not `apro-sync provision`'s
    state = emulator.state()
    emu_log = emulator.requests()
    emulator.stop()

    print(f"sink benchmark ({'quick' if quick else 'default'} mode): {elapsed:.0f} s of runs, load average "
          f"{os.getloadavg()[0]:.2f} on {os.cpu_count()} cores (other jobs may be running)")
    own = Counter(f"{r['method']} {r['path']}" for r in emu_log if r["at"] >= worker_started)
    print(f"GoHighLevel calls since the worker started: {len(calls)} recorded per request, "
          f"{sum(own.values())} in the emulator's own request log "
          f"({'same' if own == Counter(c.endpoint for c in calls) else 'DIFFERENT'} counts per endpoint)")
    contact_cid = {c["id"]: int(m.group(1)) for c in state["contacts"]
                   if (m := re.fullmatch(r"bench(\d+)@example\.com", c.get("email") or ""))}
    opp_contact = {o["id"]: o["contactId"] for o in state["opportunities"]}
    att = attribute(calls, bodies, contact_cid, opp_contact)
    if only in (None, "load"):
        (cold_calls, cold_min), (steady_calls, steady_min) = (phase_ratio(att, bodies, p) for p in ("cold", "steady"))
        if cold_min and steady_min:
            print(f"HEADLINE (a) GoHighLevel calls per event / theoretical minimum (target 1.00): "
                  f"cold, first sync (new contacts) {cold_calls / cold_min:.3f} ({cold_calls}/{cold_min})  |  "
                  f"steady (contact and opportunity known) {steady_calls / steady_min:.3f} "
                  f"({steady_calls}/{steady_min})")
    if budget is not None:
        report_budget(emu_log, budget, timeline)
    if only in (None, "load"):
        report_calls(att, bodies, [("cold", "cold, each client's first event (new contact)"),
                                   ("warm", "known contact, first booking (its first opportunity)"),
                                   ("steady", "steady state = the events of (b) (contact and opportunity known)")])
        normalized = read_normalized(bootstrap, stack.config.topics.normalized,
                                     {e.event_id for e in bodies.by_id.values() if e.phase == "steady"})
        report_latency(att, bodies, normalized, accepted, calls, rate, seconds, latency_text, hist)
    if limit is not None:
        report_limit(att, limit, calls)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="short runs (about 70 s instead of about 3 minutes)")
    ap.add_argument("--only", choices=["load", "budget", "limit"], help="load = (a) and (b); budget = (c); limit = (d)")
    ap.add_argument("--rate", type=float, default=20.0, help="events per second offered in (b)")
    ap.add_argument("--seconds", type=float, help="duration of (b) (default 60, quick 15)")
    ap.add_argument("--call-p50-ms", type=float, default=50.0, help="emulated GoHighLevel call time, median")
    ap.add_argument("--call-p99-ms", type=float, default=250.0, help="emulated GoHighLevel call time, 99th percentile")
    ap.add_argument("--call-ms", type=float, help="a constant emulated call time instead (the old benchmark: 50)")
    ap.add_argument("--latency-seed", type=int, default=0, help="seed of the emulated call times")
    ap.add_argument("--limit-rate", type=float, default=6.0, help="events/s offered to one sub-account in (d)")
    ap.add_argument("--limit-seconds", type=float, help="duration of (d)'s offer (default 30, quick 10)")
    ap.add_argument("--backlog", type=int, help="bookings in the backlog of (c) (default 200, quick 60)")
    ap.add_argument("--timeline", action="store_true", help="print (c)'s calls per second")
    args = ap.parse_args()
    seconds = args.seconds or (15.0 if args.quick else 60.0)
    backlog = args.backlog or (60 if args.quick else 200)
    limit_seconds = args.limit_seconds or (10.0 if args.quick else 30.0)
    p50, p99 = (args.call_ms, args.call_ms) if args.call_ms else (args.call_p50_ms, args.call_p99_ms)
    latency = LatencyConfig(p50_ms=p50, p99_ms=p99, seed=args.latency_seed)
    with external_or_embedded() as (bootstrap, embedded), tempfile.TemporaryDirectory(prefix="bench-sink-") as tmp:
        run(bootstrap, embedded, Path(tmp), quick=args.quick, only=args.only, rate=args.rate, seconds=seconds,
            latency=latency, backlog=backlog, limit_rate=args.limit_rate, limit_seconds=limit_seconds,
            timeline=args.timeline)


if __name__ == "__main__":
    main()
