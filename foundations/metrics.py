"""Every Prometheus metric apro-sync exports, defined once.

Labels identify a clinic location, an event kind, an endpoint or a reason: never a patient. `location` is a
configured AestheticsPro location (id or name: `LocationLabels`), "other" for any location the configuration
does not name, or "unknown" when the webhook names none. Label values never come from a payload unchecked: a
sender inventing location ids must not be able to add series.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from prometheus_client import Counter, Gauge, Histogram

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)

# Producer (webhook intake)
WEBHOOKS_RECEIVED = Counter(
    "apro_webhooks_received_total",
    "Webhook requests by outcome (accepted, unauthorized, not_found, too_large, timeout, malformed, unavailable).",
    ["location", "resource", "outcome"],
)
WEBHOOK_LATENCY = Histogram(
    "apro_webhook_request_seconds", "Webhook request latency, receipt to answer.", ["outcome"], buckets=LATENCY_BUCKETS
)
PRODUCE_ERRORS = Counter("apro_produce_errors_total", "Kafka publishes that failed or timed out.", ["topic", "reason"])

# Normalization
EVENTS_NORMALIZED = Counter(
    "apro_events_normalized_total", "Raw webhooks turned into typed events.", ["location", "kind"]
)
EVENTS_SKIPPED = Counter(
    "apro_events_skipped_total", "Webhooks deliberately not synced, by reason.", ["location", "reason"]
)
EVENTS_DUPLICATE = Counter("apro_events_duplicate_total", "Redelivered webhooks passed on only once.", ["location"])
EVENTS_DEADLETTERED = Counter(
    "apro_events_deadlettered_total",
    "Inputs sent to the dead-letter topic, by stage and reason.",
    ["location", "stage", "reason"],
)

# Sync to GoHighLevel
EVENTS_SYNCED = Counter("apro_events_synced_total", "Events whose CRM effects are all done.", ["location", "kind"])
GHL_REQUESTS = Counter(
    "apro_ghl_requests_total",
    "GoHighLevel API calls by endpoint and status class.",
    ["location", "endpoint", "status_class"],
)
GHL_LATENCY = Histogram(
    "apro_ghl_request_seconds", "GoHighLevel API call latency.", ["location", "endpoint"], buckets=LATENCY_BUCKETS
)
GHL_RETRIES = Counter(
    "apro_ghl_retries_total", "GoHighLevel calls retried after a transient failure.", ["location", "endpoint"]
)
GHL_RATE_LIMITED = Counter("apro_ghl_rate_limited_total", "429 answers from GoHighLevel.", ["location"])
GHL_RATE_REMAINING = Gauge(
    "apro_ghl_rate_budget_remaining",
    "Remaining GoHighLevel request budget (window = burst|daily).",
    ["location", "window"],
)
GHL_DAILY_BUDGET_USED = Gauge(
    "apro_ghl_daily_budget_used_ratio",
    "Share (0..1) of the GoHighLevel location's daily request limit used today, from its X-RateLimit-Daily-* "
    "headers (0 until the first answer of the day).",
    ["location"],
)
SYNC_E2E_LATENCY = Histogram(
    "apro_sync_e2e_seconds", "Webhook accepted → last CRM call done.", ["location"], buckets=LATENCY_BUCKETS
)
LAST_EVENT_TIME = Gauge(
    "apro_last_event_timestamp_seconds", "Unix time of the last event seen per location.", ["location"]
)
CONSUMER_LAG = Gauge("apro_consumer_lag", "End offset minus committed offset.", ["group", "topic", "partition"])
GHL_API_ANOMALIES = Counter(
    "apro_ghl_api_anomalies_total",
    "Known GoHighLevel API defects detected (kind = upsert_phone_dropped | opportunity_created_despite_error).",
    ["location", "kind"],
)
SYNC_IN_DOUBT = Counter(
    "apro_sync_in_doubt_ops_total",
    "Ops that may have reached GoHighLevel before a failure or crash, by how they were settled "
    "(found = already there, skipped; repeated = executed again, e.g. a workflow enrollment).",
    ["location", "op", "resolution"],
)
SYNC_OUTCOMES = Counter(
    "apro_sync_outcomes_total",
    "Planner outcomes per synced event (applied, duplicate, stale, ...).",
    ["location", "outcome"],
)
SYNC_IDENTITY_CONFLICTS = Counter(
    "apro_sync_identity_conflicts_total",
    "Events held (dead-lettered) because their contact upsert would have matched the GoHighLevel contact of "
    "another AestheticsPro client (shared phone or email) in a location that does not allow duplicate contacts.",
    ["location"],
)
GHL_LOCATION_PAUSED = Gauge(
    "apro_ghl_location_paused",
    "1 while the sink holds a GoHighLevel location paused after repeated failures.",
    ["location"],
)
STREAM_GAP_RECORDS = Counter(
    "apro_stream_gap_records_total",
    "Records Faust dropped on the way to an agent (workarounds/offset_sequence.py): refetched = read from the broker "
    "and handled in order; gone = no longer in the log (retention), never handled.",
    ["agent", "outcome"],
)


def location_label(value: str | None) -> str:
    """A location label value from payload text: printable and short, else "unknown".

    The exposition format needs valid UTF-8; one bad label value would fail every later scrape.
    """
    if value and len(value) <= 64 and value.isprintable():
        return value
    return "unknown"


OTHER = "other"
UNKNOWN = "unknown"


class LocationLabels:
    """`location` label values: a configured location as configured, anything else `other`, nothing `unknown`.

    Configured = token bindings (APRO_WEBHOOK_TOKENS `token@location`), APRO_GHL_LOCATION_ID and the `apro`
    ids/names of APRO_LOCATIONS_FILE (names match case-insensitively, as the locations file does). So the number
    of series per metric is bounded by the configuration, whatever the payloads say.
    """

    def __init__(self, known: Iterable[str]) -> None:
        self._exact = frozenset(k for k in known if location_label(k) == k)
        self._folded = {k.casefold(): k for k in self._exact}

    def __call__(self, value: str | None) -> str:
        if not value or value == UNKNOWN:  # Location.key says "unknown" when a webhook names no location
            return UNKNOWN
        if value in self._exact:
            return value
        return self._folded.get(value.casefold(), OTHER) if len(value) <= 64 else OTHER

    @property
    def known(self) -> frozenset[str]:
        return self._exact

    @classmethod
    def from_settings(cls, settings: Any) -> "LocationLabels":
        return cls(configured_locations(settings))


def configured_locations(settings: Any) -> set[str]:
    """Every location the configuration names (see LocationLabels)."""
    known = {t.location for t in settings.webhook_tokens if t.location}
    if settings.ghl_location_id:
        known.add(settings.ghl_location_id)
    if settings.locations_file:
        known.update(_locations_file_names(Path(settings.locations_file)))
    return known


def _locations_file_names(path: Path) -> set[str]:
    """The `apro` values of a locations file; nothing when it cannot be read (the sink reports that, loudly)."""
    try:
        text = path.read_text(encoding="utf-8")
        if path.suffix.lower() in (".yaml", ".yml"):
            import yaml

            data = yaml.safe_load(text) or {}
        else:
            data = json.loads(text)
    except Exception:  # noqa: BLE001 - labels only; the worker's own loader names the problem
        return set()
    names: set[str] = set()
    for entry in (data.get("locations") or []) if isinstance(data, dict) else []:
        apro = entry.get("apro") if isinstance(entry, dict) else None
        for value in apro if isinstance(apro, list) else [apro]:
            if isinstance(value, (str, int)) and not isinstance(value, bool) and str(value).strip():
                names.add(str(value).strip())
    return names

# OAuth (Marketplace-app locations: sinks/oauth.py)
GHL_OAUTH_REFRESHES = Counter(
    "apro_ghl_oauth_refreshes_total",
    "OAuth token events per GoHighLevel location (refreshed, rejected, failed, adopted).", ["location", "outcome"])
GHL_OAUTH_REJECTED = Gauge(
    "apro_ghl_oauth_refresh_rejected",
    "1 while GoHighLevel refuses the location's stored OAuth refresh token (reinstall the app), else 0.", ["location"])
GHL_OAUTH_EXPIRY = Gauge(
    "apro_ghl_oauth_access_expiry_timestamp_seconds", "When the location's current OAuth access token expires.",
    ["location"])
