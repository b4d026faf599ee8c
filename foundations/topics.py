"""Kafka topics: their names, and the configs production needs (one source for apro-sync, compose and tests)."""

from __future__ import annotations

from dataclasses import dataclass, field

DAY_MS = 24 * 3600 * 1000
RECORD_OVERHEAD_BYTES = 64 * 1024  # key, headers and batch framing on top of a webhook body
SHADOW_SUFFIX = ".shadow"  # shadow mode's derived topics, consumer group and state (docs/operations.md)


@dataclass(frozen=True)
class Topics:
    raw: str = "apro.webhooks.raw"
    quarantine: str = "apro.webhooks.quarantine"
    normalized: str = "apro.events.normalized"
    skipped: str = "apro.events.skipped"
    deadletter: str = "apro.deadletter"
    oauth_tokens: str = "apro.oauth-tokens"  # encrypted OAuth tokens per GoHighLevel location (sinks/oauth_store.py)
    shadow: str = "apro.sink.shadow"  # GoHighLevel calls recorded in shadow mode (APRO_SINK_MODE=shadow)

    def all(self) -> list[str]:
        return [self.raw, self.quarantine, self.normalized, self.skipped, self.deadletter, self.oauth_tokens]

    def shadowed(self) -> "Topics":
        """Shadow mode's topics: the same intake (raw, quarantine), its own derived topics."""
        return Topics(raw=self.raw, quarantine=self.quarantine, normalized=self.normalized + SHADOW_SUFFIX,
                      skipped=self.skipped + SHADOW_SUFFIX, deadletter=self.deadletter + SHADOW_SUFFIX,
                      shadow=self.shadow, oauth_tokens=self.oauth_tokens)  # one token topic: shadow shares live's

    @classmethod
    def with_prefix(cls, prefix: str) -> "Topics":
        """Topics under another prefix (tests use one prefix per test to stay isolated)."""
        base = cls()
        return cls(**{k: f"{prefix}{v}" for k, v in base.__dict__.items()})


@dataclass(frozen=True)
class TopicSpec:
    name: str
    partitions: int
    replication: int
    config: dict[str, str] = field(default_factory=dict)


def record_max_bytes(max_body_bytes: int) -> int:
    """The largest record apro-sync writes: a webhook body at the HTTP limit plus key and headers."""
    return max_body_bytes + RECORD_OVERHEAD_BYTES


def producer_size_limits(max_body_bytes: int) -> dict[str, int]:
    """librdkafka limits for every producer writing our topics: no record and no batch larger than a topic's
    `max.message.bytes` (Apache Kafka refuses the whole batch otherwise; librdkafka batches up to 1 MB by default)."""
    limit = record_max_bytes(max_body_bytes)
    return {"message.max.bytes": limit, "batch.size": limit}


def topic_specs(*, topics: Topics, app_id: str, partitions: int, replication: int, min_insync: int,
                raw_retention_days: float, quarantine_retention_days: float, deadletter_retention_days: float,
                max_body_bytes: int) -> list[TopicSpec]:
    """Every topic apro-sync uses, with explicit configs.

    Raw webhooks are kept for the replay window; the derived topics as long (a replay re-derives them). Quarantine
    and dead letters hold what needs a person, so they get their own, longer retention. Faust's table changelogs
    and the dead-letter redrive markers are compacted: the latest value per key is the state."""
    common = {"min.insync.replicas": str(min(min_insync, replication)),
              "max.message.bytes": str(record_max_bytes(max_body_bytes))}

    def spec(
        name: str, *, retention_days: float | None = None, compact: bool = False, parts: int = partitions
    ) -> TopicSpec:
        config = dict(common)
        if compact:
            config["cleanup.policy"] = "compact"
        else:
            config["cleanup.policy"] = "delete"
            config["retention.ms"] = str(int(round((retention_days or 0) * DAY_MS)))
        return TopicSpec(name, parts, replication, config)

    return [
        spec(topics.raw, retention_days=raw_retention_days),
        spec(topics.quarantine, retention_days=quarantine_retention_days),
        spec(topics.normalized, retention_days=raw_retention_days),
        spec(topics.skipped, retention_days=raw_retention_days),
        spec(topics.deadletter, retention_days=deadletter_retention_days),
        spec(topics.shadow, retention_days=raw_retention_days),
        spec(f"{topics.deadletter}.redriven", compact=True, parts=1),
        spec(topics.oauth_tokens, compact=True, parts=1),  # one partition: one order for tokens and leases
        spec(f"{app_id}-normalize-dedupe-changelog", compact=True),
        spec(f"{app_id}-client_state-changelog", compact=True),
    ]
