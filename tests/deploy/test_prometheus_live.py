"""A real Prometheus scraping a real apro-sync stack: every Grafana panel query returns data, the alert rules load
and evaluate, every scrape target is up.

Stack (all on loopback, free ports): the session's embedded broker, the GoHighLevel emulator (small rate limit,
a few injected faults: 429, 5xx, a 422 on a note, an opportunity created despite a 422), `apro-sync producer`,
a second producer instance cut off from Kafka (its webhooks time out: 503 + produce errors, the outage series),
`apro-sync worker`, `apro-sync lag-exporter`. Prometheus runs with the deploy config (same jobs, same rule file)
rewritten to those ports and a 1 s scrape interval.

A mix of webhooks (every fixture, a redelivery, a test ping, a client without contact info, an unreadable body,
a wrong token) gives every series family samples. Dashboard variables get Grafana's "All" values; the built-in
intervals are fixed (see RATE_INTERVAL). Each panel query then runs as a range query over the test's window, as
Grafana would, and must return at least one finite sample.
"""

from __future__ import annotations

import asyncio
import io
import json
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import SecretStr

from apro_sync.processes import free_port, http_ok
from emulator import EmulatorConfig, LocationConfig
from emulator.config import RateLimitConfig
from foundations.config import Settings
from sinks.locations import load_locations
from sinks.provision import provision_all
from tests.conftest import FIXTURES, REPO
from tests.deploy.prom_live_support import (
    PROMETHEUS,
    PanelQuery,
    PrometheusServer,
    grafana_vars,
    has_finite_value,
    live_config,
    panel_queries,
    rule_problems,
    substitute,
)
from tests.ghl_emulator_fixture import GhlEmulatorHandle
from tests.reliability import harness
from tests.sinks.test_e2e import write_requests

pytestmark = pytest.mark.integration
needs_prometheus = pytest.mark.skipif(PROMETHEUS is None,
                                      reason="prometheus binary not installed (Debian package `prometheus`)")

PROM_DIR = REPO / "deploy" / "prometheus"
DASHBOARD = REPO / "deploy" / "grafana" / "dashboards" / "apro-sync.json"
SCRAPE_INTERVAL = "1s"
# Grafana's $__rate_interval is max(4 x scrape interval, $__interval + scrape interval); 15 s covers a few 1 s
# scrapes with room for scheduling jitter on a busy 2-core machine, and keeps short bursts of traffic visible.
RATE_INTERVAL = "15s"
STEP = "1s"  # also $__interval
GHL_LOCATION = "PromLiveLocation0001"
GHL_TOKEN = "pit-prom-live-location-0001"


@dataclass
class Live:
    prometheus: PrometheusServer
    emulator: GhlEmulatorHandle
    started_at: float  # unix time, start of the window the range queries cover
    dashboard: dict[str, Any]
    worker_id: str
    logs: Path
    webhook_url: str  # the healthy producer's
    cli_env: dict[str, str]  # environment for `apro-sync <command>` against this stack


def _emulator_config() -> EmulatorConfig:
    # A small burst budget so the client's limiter and the budget gauge have something to do; the 429s come from
    # injected faults (the client paces itself by the rate headers, so it rarely runs into the limit on its own).
    return EmulatorConfig(seed=11, locations=[LocationConfig(id=GHL_LOCATION, name="Prom Live Spa", token=GHL_TOKEN)],
                          rate_limit=RateLimitConfig(burst_max=40, interval_ms=1000, daily_max=100_000))


FAULTS = [
    {"kind": "status", "status": 429, "retry_after_s": 0.2, "count": 2},
    {"kind": "status", "status": 422, "count": 1, "method": "POST", "path": "/contacts/{contactId}/notes"},
    {"kind": "created_then_422", "count": 1, "method": "POST", "path": "/opportunities/"},
    {"kind": "status", "status": 502, "probability": 0.05},
]


def _provision(emulator: GhlEmulatorHandle, bootstrap: str) -> None:
    """The custom fields the sink writes must exist (as in production, `apro-sync provision` runs first)."""
    ghl = Settings(kafka_bootstrap_servers=bootstrap, ghl_base_url=emulator.base_url, ghl_token=SecretStr(GHL_TOKEN),
                   ghl_location_id=GHL_LOCATION, _env_file=None)
    out = io.StringIO()
    assert asyncio.run(provision_all(load_locations(ghl).targets(), ghl, dry_run=False, out=out)) == 0, out.getvalue()


def _posts() -> tuple[list[harness.Post], list[harness.Post]]:
    """(posts for the healthy producer, posts with a wrong token). Every fixture once, one redelivered."""
    bodies = {p.stem: p.read_bytes() for p in sorted(FIXTURES.glob("*.json"))}
    assert {"test_ping", "client_without_contact_info", "appointment_created"} <= set(bodies)
    good = [harness.Post(body, request_id=f"prom-{name}") for name, body in bodies.items()]
    good.append(harness.Post(bodies["appointment_created"], request_id="prom-redelivery"))  # same event id: duplicate
    good.append(harness.Post(b"{not json", request_id="prom-malformed"))
    wrong = [harness.Post(bodies["client_created"], request_id="prom-wrong-token")]
    return good, wrong


# Series that must exist in Prometheus before the second wave (histograms whose rate must see an increase).
WAVE_SERIES = (
    'apro_webhook_request_seconds_count{{instance="{producer}"}}',
    "apro_sync_e2e_seconds_count",
    "apro_ghl_request_seconds_count",
)


def _second_wave() -> list[harness.Post]:
    """New events for clients the first wave created, each a real change (a new invoice, a later event time):
    a resend of the same facts is rightly a no-op (no GoHighLevel call, nothing to observe)."""
    posts = []
    for name in ("appointment_updated", "invoice_paid", "client_updated"):
        data = json.loads((FIXTURES / f"{name}.json").read_bytes())
        data["eventId"] = f"prom-wave2-{name}"
        data["occurredAt"] = "2026-12-30T12:00:00Z"
        if isinstance(data.get("invoice"), dict):
            data["invoice"]["invoiceId"] = "INV-prom-wave2"
        posts.append(harness.Post(json.dumps(data).encode(), request_id=f"prom-wave2-{name}"))
    return posts


@pytest.fixture(scope="module")
def live(kafka_bootstrap: str, using_embedded_broker: bool, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    work = tmp_path_factory.mktemp("prom-live")
    dashboard = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    started: list[harness.ServiceProcess] = []
    prometheus: PrometheusServer | None = None
    with GhlEmulatorHandle(_emulator_config()) as emulator:
        try:
            _provision(emulator, kafka_bootstrap)
            emulator.set_faults(FAULTS, seed=5)
            config = harness.StackConfig.for_broker(
                kafka_bootstrap, work, partitions=2, embedded_broker=using_embedded_broker, log_level="WARNING",
                # Location 3 (the fixtures') is configured, so it is a label value; any other would be "other".
                tokens_env=harness.TOKENS_ENV + ",prom-live-loc3-token-0123456789@3",
                extra_env={"APRO_GHL_BASE_URL": emulator.base_url, "APRO_GHL_TOKEN": GHL_TOKEN,
                           "APRO_GHL_LOCATION_ID": GHL_LOCATION, "APRO_SINK_LANES": "4",
                           "APRO_SINK_RETRY_BASE_S": "0.2", "APRO_SINK_RETRY_MAX_S": "1.0",
                           "APRO_SINK_PAUSE_S": "0.5", "APRO_SINK_PAUSE_MAX_S": "2.0"})
            config.create_topics()
            producer = config.producer()
            worker = config.worker()
            # Same job as the healthy producer, but its broker address answers nothing: a Kafka outage as one
            # producer instance sees it (503 after the produce timeout, apro_produce_errors_total).
            cut_port = free_port()
            cut_off = harness.ProducerProcess(
                "producer-cut-off", [sys.executable, "-m", "apro_sync.cli", "producer"],
                config.env(KAFKA_BOOTSTRAP_SERVERS=f"127.0.0.1:{free_port()}", APRO_HTTP_PORT=str(cut_port),
                           APRO_HTTP_HOST="127.0.0.1", APRO_PRODUCE_TIMEOUT_S="0.5"),
                work / "logs", work, http_port=cut_port, ready_timeout_s=30)
            lag_port = free_port()
            lag = harness.ServiceProcess(
                "lag-exporter", [sys.executable, "-m", "apro_sync.cli", "lag-exporter", "--host", "127.0.0.1",
                                 "--port", str(lag_port), "--interval", "1", "--group", worker.worker_id],
                config.env(), work / "logs", work, ready=lambda: http_ok(f"http://127.0.0.1:{lag_port}/metrics"))
            for proc in (worker, producer, cut_off, lag):  # the worker is slowest to come up: first
                proc.start()
                started.append(proc)

            prom_port = free_port()
            base = yaml.safe_load((PROM_DIR / "prometheus.yml").read_text(encoding="utf-8"))
            prom_config = live_config(base, PROM_DIR, {
                "apro-sync-producer": [f"127.0.0.1:{producer.http_port}", f"127.0.0.1:{cut_port}"],
                "apro-sync-worker": [f"127.0.0.1:{worker.metrics_port}"],
                "apro-sync-lag": [f"127.0.0.1:{lag_port}"],
                "prometheus": [f"127.0.0.1:{prom_port}"],
            }, SCRAPE_INTERVAL)
            started_at = time.time()
            prometheus = PrometheusServer(prom_config, work / "prometheus", prom_port).start()
            for proc in started:
                proc.wait_ready()

            good, wrong = _posts()
            answers = asyncio.run(harness.post_many(producer.webhook_url(), good, concurrency=4))
            answers += asyncio.run(harness.post_many(producer.webhook_url("wrong-token-0123456789abcdef"), wrong))
            outage = asyncio.run(harness.post_many(cut_off.webhook_url(), good[:2]))
            statuses = sorted({a.status for a in answers})
            assert statuses == [202, 400, 401], statuses
            assert {a.status for a in outage} == {503}, [a.status for a in outage]
            # A labelled series is born on its first observation, and rate() cannot see the step from "no series"
            # to its first value: after one burst a histogram's rate stays 0 and its quantiles NaN. Traffic in
            # production is continuous; here a second wave, once Prometheus holds the series, stands in for it.
            # (The healthy producer's own series: the cut-off producer's would satisfy a bare name.)
            wave_series = [m.format(producer=f"127.0.0.1:{producer.http_port}") for m in WAVE_SERIES]
            harness.wait_until(lambda: all(prometheus.query(m) for m in wave_series), 90, 0.5,  # type: ignore[union-attr]
                          "first wave scraped")
            second = asyncio.run(harness.post_many(producer.webhook_url(), _second_wave(), concurrency=4))
            assert {a.status for a in second} == {202}, [a.status for a in second]
            yield Live(prometheus, emulator, started_at, dashboard, worker.worker_id, work / "logs",
                       producer.webhook_url(), config.env(APRO_WORKER_ID=worker.worker_id))
        finally:
            if prometheus is not None:
                prometheus.stop()
            for proc in reversed(started):
                proc.stop()


def _missing(live: Live, queries: list[tuple[PanelQuery, str]]) -> list[str]:
    end = time.time()
    missing = []
    for q, expr in queries:
        if not has_finite_value(live.prometheus.query_range(expr, live.started_at, end, STEP)):
            missing.append(f"{q.panel!r} ({q.ref_id}): {expr}")
    return missing


@needs_prometheus
def test_every_panel_query_returns_data(live: Live) -> None:
    values = grafana_vars(live.dashboard, rate_interval=RATE_INTERVAL, interval=STEP, range_="5m")
    queries = [(q, substitute(q.expr, values)) for q in panel_queries(live.dashboard)]
    assert len(queries) >= 15, "dashboard lost its panels?"
    # Bounded polling: the worker joins its group, syncs through the injected faults, commits; the lag exporter
    # reads the commits; Prometheus scrapes every second.
    deadline = time.monotonic() + 75
    missing = _missing(live, queries)
    while missing and time.monotonic() < deadline:
        time.sleep(1.0)
        missing = _missing(live, queries)
    assert not missing, (
        "panel queries without data:\n  " + "\n  ".join(missing)
        + f"\nemulator faults injected: {live.emulator.state()['faultsInjected']}"
        + f"\nlogs in {live.logs}")


@needs_prometheus
def test_location_variable_lists_the_locations(live: Live) -> None:
    """The $location variable's query (label_values(apro_events_normalized_total, location)) has values."""
    [var] = [v for v in live.dashboard["templating"]["list"] if v["name"] == "location"]
    metric = var["definition"].removeprefix("label_values(").split(",")[0].strip()
    values = harness.wait_until(lambda: live.prometheus.api("label/location/values", **{"match[]": metric}), 60,
                           0.5, "location label values")
    assert "3" in values, values  # the fixtures' AestheticsPro location id


@needs_prometheus
def test_every_target_is_up(live: Live) -> None:
    def all_up() -> list[dict[str, Any]] | None:
        targets = live.prometheus.targets()
        return targets if targets and all(t["health"] == "up" for t in targets) else None

    try:
        targets = harness.wait_until(all_up, 30, 0.5, "every target up")
    except TimeoutError:
        raise AssertionError([(t["labels"]["job"], t["scrapeUrl"], t["health"], t["lastError"])
                              for t in live.prometheus.targets()]) from None
    jobs = {t["labels"]["job"] for t in targets}
    assert jobs == {"apro-sync-producer", "apro-sync-worker", "apro-sync-lag", "prometheus"}


@needs_prometheus
def test_alert_rules_load_and_evaluate(live: Live) -> None:
    deployed = yaml.safe_load((PROM_DIR / "alerts.yml").read_text(encoding="utf-8"))
    expected = {r.get("alert") or r.get("record") for g in deployed["groups"] for r in g["rules"]}

    def evaluated() -> list[dict[str, Any]] | None:
        groups = live.prometheus.rule_groups()
        # Groups on the global (1 s) interval must have evaluated every rule; a group with its own long interval
        # (the once-a-minute clock) may not have had its first evaluation yet ("unknown", never "err").
        fast = [r for g in groups if g["interval"] <= 5 for r in g["rules"]]
        return groups if fast and all(r.get("health") == "ok" or r.get("lastError") for r in fast) else None

    groups = harness.wait_until(evaluated, 30, 0.5, "every rule evaluated once")
    loaded = {r["name"] for g in groups for r in g["rules"]}
    assert loaded == expected
    assert rule_problems(groups) == []


def _total(live: Live, expr: str) -> float:
    result = live.prometheus.query(f"sum({expr})")
    return float(result[0]["value"][1]) if result else 0.0


def _outage_clients(n: int) -> list[bytes]:
    """`n` bookings of new clients (ids, e-mails and phones of their own, no real person): each writes a contact,
    a note (with its `apro-event:` line), an opportunity and a workflow enrollment."""
    base = json.loads((FIXTURES / "appointment_created.json").read_bytes())
    bodies = []
    for i in range(n):
        data = json.loads(json.dumps(base))
        data["eventId"] = f"prom-outage-{i}"
        data["client"].update(clientId=f"990{i}", email=f"outage.client{i}@example.com",
                              mobilePhone=f"(480) 555-01{50 + i}")
        data["appointment"]["appointmentId"] = f"A-990{i}"
        bodies.append(json.dumps(data).encode())
    return bodies


@needs_prometheus
def test_replay_after_a_ghl_outage_is_visible_and_changes_nothing(live: Live) -> None:
    """docs/operations.md "Replay after an outage", watched through Prometheus: GoHighLevel answers 503 to
    everything while webhooks arrive (the 5xx series grows, nothing is dead-lettered), it recovers and the held
    events are synced, then `apro-sync replay --since <outage start>` republishes them: the sync engine counts
    each replayed event as a duplicate, the consumer lag drains back to 0, and GoHighLevel gets no new write."""
    prom = live.prometheus
    group_lag = f'apro_consumer_lag{{group="{live.worker_id}"}}'
    # Start from a settled stack: no fault left over, everything of the earlier waves synced and committed.
    live.emulator.set_faults([], replace=True)
    harness.wait_until(
        lambda: prom.query(group_lag) and _total(live, group_lag) == 0, 60, 0.5, "lag 0 before the outage"
    )
    dead_before = _total(live, "apro_events_deadlettered_total")
    server_errors = _total(live, 'apro_ghl_requests_total{status_class="5xx"}')
    since = datetime.now(timezone.utc) - timedelta(seconds=1)

    live.emulator.set_faults([{"kind": "status", "status": 503, "count": 100_000}])
    bodies = _outage_clients(3)
    # One at a time: each webhook its own produce batch (the embedded broker under-reports end offsets after
    # multi-record batches, and replay reads up to the end offsets).
    answers = asyncio.run(harness.post_many(live.webhook_url, [harness.Post(b) for b in bodies], concurrency=1))
    assert [a.status for a in answers] == [202] * len(bodies)
    harness.wait_until(
        lambda: _total(live, 'apro_ghl_requests_total{status_class="5xx"}') >= server_errors + 3,
        60,
        0.5,
        "the outage visible as GoHighLevel 5xx answers",
    )
    live.emulator.set_faults([], replace=True)  # GoHighLevel is back

    def synced() -> bool:
        notes = " ".join(n["body"] for n in live.emulator.state()["notes"])
        return all(f"apro-event: prom-outage-{i}" in notes for i in range(len(bodies)))

    harness.wait_until(synced, 90, 0.5, "the held events synced once GoHighLevel is back")
    harness.wait_until(lambda: _total(live, group_lag) == 0, 60, 0.5, "lag 0 after the outage")
    writes = write_requests(live.emulator.state())
    duplicates = _total(live, 'apro_sync_outcomes_total{outcome="duplicate"}')

    done = subprocess.run([sys.executable, "-m", "apro_sync.cli", "replay", "--since", since.isoformat(), "--yes"],
                          cwd=REPO, env=live.cli_env, capture_output=True, timeout=120)
    assert done.returncode == 0, done.stdout.decode()[-2000:] + done.stderr.decode()[-2000:]
    harness.wait_until(
        lambda: _total(live, 'apro_sync_outcomes_total{outcome="duplicate"}') >= duplicates + len(bodies),
        60,
        0.5,
        "every replayed event recognised as already applied",
    )
    harness.wait_until(lambda: _total(live, group_lag) == 0, 60, 0.5, "lag drained after the replay")
    assert write_requests(live.emulator.state()) == writes  # not a single GoHighLevel effect repeated
    assert _total(live, "apro_events_deadlettered_total") == dead_before


# ------------------------------------------------------------------------------------------------ helpers (pure)


def test_live_config_keeps_jobs_and_rules_and_rewrites_targets() -> None:
    base = yaml.safe_load((PROM_DIR / "prometheus.yml").read_text(encoding="utf-8"))
    targets = {sc["job_name"]: [f"127.0.0.1:{9000 + i}"] for i, sc in enumerate(base["scrape_configs"])}
    config = live_config(base, PROM_DIR, targets, "1s")
    assert [sc["job_name"] for sc in config["scrape_configs"]] == list(targets)
    assert [sc["static_configs"] for sc in config["scrape_configs"]] == [[{"targets": t}] for t in targets.values()]
    assert config["rule_files"] == [str((PROM_DIR / f).resolve()) for f in base["rule_files"]]
    assert config["global"]["scrape_interval"] == "1s" and config["global"]["external_labels"]
    with pytest.raises(ValueError):
        live_config(base, PROM_DIR, dict(list(targets.items())[1:]))  # a job without live targets


def test_substitute_and_finite_values() -> None:
    values = {"location": ".*", "__rate_interval": "15s"}
    assert substitute('rate(x{location=~"$location"}[$__rate_interval])', values) == 'rate(x{location=~".*"}[15s])'
    assert substitute('x{l=~"${location:regex}"}[[location]]', values) == 'x{l=~".*"}.*'
    with pytest.raises(KeyError):
        substitute("x[$__range]", values)
    assert not has_finite_value([]) and not has_finite_value([{"values": [[1, "NaN"], [2, "NaN"]]}])
    assert has_finite_value([{"values": [[1, "NaN"], [2, "0"]]}]) and has_finite_value([{"value": [1, "3"]}])
