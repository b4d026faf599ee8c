"""Settings from the environment (and `.env`), validated once at start.

Every setting is `APRO_<NAME>`; the broker also honours the conventional `KAFKA_BOOTSTRAP_SERVERS`.
Secrets are `SecretStr`, so they never show up in a repr, a log line or a validation error.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import AliasChoices, Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict
from typing_extensions import Annotated

from foundations.kafka_connection import KafkaConnection, SaslMechanism, SecurityProtocol
from foundations.topics import SHADOW_SUFFIX, Topics, TopicSpec, topic_specs


@dataclass(frozen=True)
class WebhookToken:
    """A shared secret that AestheticsPro puts in the webhook URL, optionally bound to one location."""

    secret: SecretStr
    location: str | None = None


class ConfigError(SystemExit):
    """Raised at start when a setting is invalid; the message names the setting, never its value."""


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="APRO_", env_file=".env", env_file_encoding="utf-8", extra="ignore", populate_by_name=True
    )

    # Kafka
    kafka_bootstrap_servers: str | None = Field(
        default=None, validation_alias=AliasChoices("KAFKA_BOOTSTRAP_SERVERS", "APRO_KAFKA_BOOTSTRAP_SERVERS")
    )
    topic_prefix: str = ""
    topic_partitions: int = Field(default=12, ge=1, le=1000)
    topic_replication: int = Field(default=1, ge=1, le=5)
    topic_min_insync_replicas: int = Field(default=1, ge=1, le=5)
    raw_retention_days: float = Field(default=14, gt=0)  # the replay window: `apro-sync replay` reaches this far back
    quarantine_retention_days: float = Field(default=30, gt=0)
    deadletter_retention_days: float = Field(default=30, gt=0)
    # Managed Kafka (Confluent Cloud, MSK, Aiven, Redpanda Cloud): TLS and SASL, the same for every client.
    kafka_security_protocol: SecurityProtocol = "PLAINTEXT"
    kafka_sasl_mechanism: SaslMechanism | None = None
    kafka_sasl_username: str | None = None
    kafka_sasl_password: SecretStr | None = None
    kafka_ssl_ca_file: Path | None = None
    kafka_ssl_cert_file: Path | None = None
    kafka_ssl_key_file: Path | None = None
    kafka_ssl_key_password: SecretStr | None = None
    # Consumer-group session: a crashed worker's partitions move to the others after this long.
    kafka_session_timeout_s: float = Field(default=10.0, ge=1.0, le=300.0)
    # Set by `apro-sync dev` and the tests: tune Faust for the in-memory Tansu broker (see workarounds/faust_app.py).
    embedded_broker: bool = False

    # Producer (webhook intake)
    http_host: str = "127.0.0.1"
    http_port: int = Field(default=8080, ge=0, le=65535)
    webhook_tokens: Annotated[list[WebhookToken], NoDecode] = Field(default_factory=list)
    # The one size limit: bodies above it get 413 at HTTP. The Kafka producer's `message.max.bytes` is derived from
    # it (plus RECORD_HEADROOM_BYTES for key, headers and framing: producer/publisher.py), and the broker's
    # message.max.bytes must be at least that sum (docker-compose.yml KAFKA_MESSAGE_MAX_BYTES, docs/operations.md).
    max_body_bytes: int = Field(default=1024 * 1024, ge=1024, le=64 * 1024 * 1024)
    # Slow and idle clients (producer/server.py): the request line and headers must arrive within
    # http_header_timeout_s of connecting, the body within http_body_timeout_s of the headers (else 408), and an
    # idle keep-alive connection (or a half-sent next request) is closed after http_keepalive_timeout_s.
    http_header_timeout_s: float = Field(default=10.0, gt=0, le=300)
    http_body_timeout_s: float = Field(default=30.0, gt=0, le=600)
    http_keepalive_timeout_s: float = Field(default=15.0, gt=0, le=3600)
    produce_timeout_s: float = Field(default=5.0, gt=0)
    retry_after_s: int = Field(default=5, ge=1)

    # Normalization
    default_timezone: str = "America/Phoenix"
    default_phone_region: str = "US"
    dedupe_window: int = Field(default=100_000, ge=100)

    # Worker (Faust)
    worker_id: str = "apro-sync"
    worker_web_port: int = Field(default=6066, ge=0, le=65535)
    state_dir: Path = Path("./.apro-sync-state")
    # Where the tables live: memory (rebuilt from the whole changelog at each start) or rocksdb (on disk under
    # state_dir, recovered locally: only the changelog tail is read at a restart). RocksDB's block cache and write
    # buffers share one cap, state_store_memory_mb (workarounds/rocksdb_store.py, docs/operations.md).
    state_store: Literal["memory", "rocksdb"] = "memory"
    state_store_memory_mb: int = Field(default=128, ge=16, le=65536)
    metrics_port: int = Field(default=9108, ge=0, le=65535)
    metrics_host: str = "127.0.0.1"  # the worker's /metrics bind address (compose: the container's network name)

    # GoHighLevel
    ghl_base_url: str = "https://services.leadconnectorhq.com"
    ghl_token: SecretStr | None = None
    ghl_location_id: str | None = None
    locations_file: Path | None = None
    ghl_timeout_s: float = Field(default=15.0, gt=0)
    ghl_max_retries: int = Field(default=5, ge=1, le=20)  # attempts per GHL call before the sink backs off
    ghl_rate_share: float = Field(default=1.0, gt=0, le=1)  # this worker's share of each location's burst budget
    # Share of that burst budget a backfill's (historical) calls leave to live ones, so a live webhook finds a
    # slot at once even while a backfill runs flat out (docs/sync-engine.md, "Backfill beside live traffic").
    ghl_live_reserve: float = Field(default=0.2, ge=0, lt=1)
    # Once this share of a location's daily limit is used, the sink spreads the rest over the rest of the UTC day
    # (sinks/ghl/ratelimit.py, docs/operations.md#aprosyncghldailybudgethigh).
    ghl_daily_pace_from: float = Field(default=0.8, gt=0, le=1)
    # OAuth (Marketplace-app installs; sinks/oauth.py, docs/operations.md "OAuth locations"). The client id and
    # secret of the app; the install's first refresh token (single sub-account mode; the locations file names
    # one variable per location); Fernet keys encrypting the stored tokens (comma list: the first encrypts).
    ghl_oauth_client_id: str | None = None
    ghl_oauth_client_secret: SecretStr | None = None
    ghl_oauth_refresh_token: SecretStr | None = None
    ghl_oauth_company_id: str | None = None  # set: the refresh token is an agency (Company) install's
    oauth_token_keys: SecretStr | None = None
    oauth_refresh_at: float = Field(default=0.8, gt=0, lt=1)  # refresh at this fraction of the token's lifetime
    oauth_lease_s: float = Field(default=60.0, gt=0)  # one worker refreshes a location for at most this long

    # Sync engine (sinks/agent.py, docs/sync-engine.md)
    sink_lanes: int = Field(default=32, ge=1, le=1024)  # clients progressing concurrently per GoHighLevel location
    # Lanes of their own for a backfill's events, per location: historical work never occupies a live lane.
    sink_historical_lanes: int = Field(default=4, ge=1, le=1024)
    # Events the sink holds (queued or in flight) per location, and in all: a paused or throttled location fills
    # only its own share; the consumer waits when either bound is reached (docs/sync-engine.md, "Isolation").
    sink_location_queue: int = Field(default=1024, ge=1)
    sink_window: int = Field(default=8192, ge=1)
    sink_retry_base_s: float = Field(default=1.0, gt=0)  # lane backoff after a transient failure (capped exp.)
    sink_retry_max_s: float = Field(default=60.0, gt=0)
    sink_pause_after: int = Field(default=5, ge=1)  # consecutive transient failures that pause a location
    sink_pause_s: float = Field(default=5.0, gt=0)  # first pause; doubles per failed probe up to sink_pause_max_s
    # Longest pause between probes of a location in an outage: sync resumes at most this long (plus one
    # GoHighLevel call) after GoHighLevel answers again, whatever the outage's length (docs/sync-engine.md).
    sink_pause_max_s: float = Field(default=20.0, gt=0)
    sink_revoke_grace_s: float = Field(default=1.0, ge=0)  # on rebalance: let in-flight ops finish this long
    # live: write to GoHighLevel. shadow: a parallel pipeline on the same raw topic (own consumer group, derived
    # topics and state) that records the GoHighLevel writes to the shadow topic instead (docs/operations.md).
    sink_mode: Literal["live", "shadow"] = "live"

    @field_validator("webhook_tokens", mode="before")
    @classmethod
    def _parse_tokens(cls, value: object) -> list[WebhookToken]:
        """Accept `tok1,tok2@3` (token, optionally `@location`) or a JSON list of {token, location}."""
        if value in (None, ""):
            return []
        if isinstance(value, list):
            items = value
        elif isinstance(value, str) and value.lstrip().startswith("["):
            items = json.loads(value)
        elif isinstance(value, str):
            items = [part.strip() for part in value.split(",") if part.strip()]
        else:
            raise ValueError("expected a comma-separated list or a JSON list")
        tokens: list[WebhookToken] = []
        for item in items:
            if isinstance(item, WebhookToken):
                tokens.append(item)
                continue
            if isinstance(item, dict):
                secret, location = item.get("token"), item.get("location")
            else:
                secret, _, location = str(item).partition("@")
            if not secret or len(str(secret)) < 16:
                raise ValueError("each webhook token must be at least 16 characters")
            tokens.append(WebhookToken(SecretStr(str(secret)), str(location) if location else None))
        return tokens

    @field_validator("default_timezone")
    @classmethod
    def _known_zone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError("not an IANA time zone name") from None
        return value

    @model_validator(mode="after")
    def _kafka_security_complete(self) -> "Settings":
        if self.kafka_security_protocol in ("SASL_PLAINTEXT", "SASL_SSL"):
            if not (self.kafka_sasl_mechanism and self.kafka_sasl_username and self.kafka_sasl_password):
                raise ValueError(
                    "SASL needs APRO_KAFKA_SASL_MECHANISM, APRO_KAFKA_SASL_USERNAME and APRO_KAFKA_SASL_PASSWORD"
                )
        if bool(self.kafka_ssl_cert_file) != bool(self.kafka_ssl_key_file):
            raise ValueError("APRO_KAFKA_SSL_CERT_FILE and APRO_KAFKA_SSL_KEY_FILE go together")
        for name in ("kafka_ssl_ca_file", "kafka_ssl_cert_file", "kafka_ssl_key_file"):
            path = getattr(self, name)
            if path is not None and not Path(path).is_file():
                raise ValueError(f"APRO_{name.upper()} is not a readable file")
        return self

    @property
    def kafka(self) -> KafkaConnection:
        """How every Kafka client connects (bootstrap servers, TLS, SASL)."""
        if not self.kafka_bootstrap_servers:
            raise ConfigError("KAFKA_BOOTSTRAP_SERVERS is not set")
        return KafkaConnection(
            bootstrap=self.kafka_bootstrap_servers, security_protocol=self.kafka_security_protocol,
            sasl_mechanism=self.kafka_sasl_mechanism, sasl_username=self.kafka_sasl_username,
            sasl_password=self.kafka_sasl_password, ssl_ca_file=self.kafka_ssl_ca_file,
            ssl_cert_file=self.kafka_ssl_cert_file, ssl_key_file=self.kafka_ssl_key_file,
            ssl_key_password=self.kafka_ssl_key_password)

    @property
    def topics(self) -> Topics:
        topics = Topics.with_prefix(self.topic_prefix) if self.topic_prefix else Topics()
        return topics.shadowed() if self.sink_mode == "shadow" else topics

    @property
    def consumer_group(self) -> str:
        """The workers' Faust app id and consumer group: shadow workers never move the live group's offsets."""
        return f"{self.worker_id}{SHADOW_SUFFIX}" if self.sink_mode == "shadow" else self.worker_id

    def topic_specs(self) -> list[TopicSpec]:
        """Every topic with the configs production needs (retention, compaction, replication, size)."""
        return topic_specs(
            topics=self.topics, app_id=self.consumer_group, partitions=self.topic_partitions,
            replication=self.topic_replication, min_insync=self.topic_min_insync_replicas,
            raw_retention_days=self.raw_retention_days, quarantine_retention_days=self.quarantine_retention_days,
            deadletter_retention_days=self.deadletter_retention_days, max_body_bytes=self.max_body_bytes)


# Variables read outside Settings (logging is configured before settings load; the rest are for tests and tools).
PROCESS_VARIABLES = {
    "APRO_LOG_LEVEL": "log level of every process (INFO)",
    "APRO_LOG_FORMAT": "worker logs: json (default) or console",
    "APRO_LOG_JSON": "producer logs: 1 = JSON (default), 0 = console",
    "APRO_GHL_OPENAPI_DIR": "the emulator's OpenAPI folder (default: the vendored copy)",
    "APRO_KAFKA_CACHE": "where the tests keep Apache Kafka's jars (default ~/.cache/apro-sync/kafka-<version>)",
    "APRO_TEST_BROKER": "tests: embedded (default), kafka or docker",
    "APRO_LONG": "tests: 1 = the long reliability mode",
    "APRO_CRASH_LOG_LEVEL": "tests: the crash tests' worker log level",
    "APRO_TEST_WORKER_LOG_LEVEL": "tests: the end-to-end tests' worker log level",
}


def env_name(field: str) -> str:
    return "KAFKA_BOOTSTRAP_SERVERS" if field == "kafka_bootstrap_servers" else f"APRO_{field.upper()}"


def unknown_variables(environ: Mapping[str, str]) -> list[str]:
    """`APRO_*` variables that no setting reads: usually a typo that would otherwise be silently ignored."""
    known = {f"APRO_{name.upper()}" for name in Settings.model_fields} | set(PROCESS_VARIABLES)
    return sorted(name for name in environ if name.startswith("APRO_") and name not in known)


def load_settings(**overrides: object) -> Settings:
    """Build settings, turning a validation error into a message that names the bad setting only."""
    for name in unknown_variables(os.environ):
        print(f"warning: {name} is not an apro-sync setting and is ignored (see `apro-sync config`)", file=sys.stderr)
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        problems = []
        for err in exc.errors(include_input=False, include_url=False):
            name = "_".join(str(p) for p in err["loc"] if isinstance(p, str)).upper()
            problems.append(f"  APRO_{name}: {err['msg']}" if name else f"  {err['msg'].removeprefix('Value error, ')}")
        raise ConfigError("invalid configuration:\n" + "\n".join(problems)) from None
