"""Topic definitions: the pure specs, then `apro-sync topics` against the broker (configs read back)."""

from __future__ import annotations

from confluent_kafka.admin import AdminClient, ConfigResource
from typer.testing import CliRunner

from apro_sync.cli import app
from foundations.config import Settings
from foundations.kafka_admin import check_topics, ensure_topics
from foundations.topics import DAY_MS, Topics, TopicSpec, record_max_bytes, topic_specs


def _specs(**overrides: object) -> dict[str, TopicSpec]:
    args: dict[str, object] = dict(topics=Topics(), app_id="apro-sync", partitions=12, replication=3, min_insync=2,
                                   raw_retention_days=14, quarantine_retention_days=30, deadletter_retention_days=60,
                                   max_body_bytes=1024 * 1024)
    args.update(overrides)
    return {s.name: s for s in topic_specs(**args)}  # type: ignore[arg-type]


def test_specs_carry_retention_compaction_replication_and_size() -> None:
    specs = _specs()
    raw = specs["apro.webhooks.raw"]
    assert (raw.partitions, raw.replication) == (12, 3)
    assert raw.config == {"cleanup.policy": "delete", "retention.ms": str(14 * DAY_MS), "min.insync.replicas": "2",
                          "max.message.bytes": str(record_max_bytes(1024 * 1024))}
    assert specs["apro.webhooks.quarantine"].config["retention.ms"] == str(30 * DAY_MS)
    assert specs["apro.deadletter"].config["retention.ms"] == str(60 * DAY_MS)
    for changelog in ("apro-sync-normalize-dedupe-changelog", "apro-sync-client_state-changelog",
                      "apro.deadletter.redriven", "apro.oauth-tokens"):
        assert specs[changelog].config["cleanup.policy"] == "compact"
        assert "retention.ms" not in specs[changelog].config
    assert set(Topics().all()) <= set(specs)
    assert specs["apro.oauth-tokens"].partitions == 1  # tokens and leases in one order (sinks/oauth_store.py)


def test_min_insync_never_exceeds_replication() -> None:
    assert _specs(replication=1, min_insync=2)["apro.webhooks.raw"].config["min.insync.replicas"] == "1"


def test_record_limit_covers_the_http_limit_plus_headers() -> None:
    assert record_max_bytes(1_000_000) > 1_000_000


def test_topics_command_creates_then_checks_configs(settings: Settings) -> None:
    env = {
        "KAFKA_BOOTSTRAP_SERVERS": settings.kafka_bootstrap_servers or "",
        "APRO_TOPIC_PREFIX": settings.topic_prefix,
        "APRO_WORKER_ID": settings.worker_id,
        "APRO_TOPIC_PARTITIONS": "3",
        "APRO_RAW_RETENTION_DAYS": "7",
    }
    result = CliRunner().invoke(app, ["topics"], env=env)
    assert result.exit_code == 0, result.output
    wanted = settings.model_copy(update={"topic_partitions": 3, "raw_retention_days": 7.0}).topic_specs()
    assert check_topics(settings.kafka, wanted) == []

    # Read back independently of check_topics.
    admin = AdminClient({"bootstrap.servers": settings.kafka_bootstrap_servers})
    raw = ConfigResource(ConfigResource.Type.TOPIC, settings.topics.raw)
    configs = admin.describe_configs([raw])[raw].result()
    assert configs["retention.ms"].value == str(7 * DAY_MS)
    assert configs["cleanup.policy"].value == "delete"
    changelog = ConfigResource(ConfigResource.Type.TOPIC, f"{settings.worker_id}-client_state-changelog")
    assert admin.describe_configs([changelog])[changelog].result()["cleanup.policy"].value == "compact"

    # A setting that no longer matches the existing topics is reported (exit 1), nothing is changed.
    drift = CliRunner().invoke(app, ["topics", "--check"], env={**env, "APRO_RAW_RETENTION_DAYS": "30"})
    assert drift.exit_code == 1
    assert f"MISMATCH {settings.topics.raw}: retention.ms is {7 * DAY_MS}, expected {30 * DAY_MS}" in drift.stderr


def test_check_reports_missing_topics_and_partition_counts(settings: Settings) -> None:
    spec = TopicSpec(f"{settings.topic_prefix}only", 2, 1, {"cleanup.policy": "delete"})
    assert [str(m) for m in check_topics(settings.kafka, [spec])] == [
        f"{spec.name}: topic is missing, expected present"
    ]
    ensure_topics(settings.kafka, [TopicSpec(spec.name, 1, 1, {"cleanup.policy": "delete"})])
    assert [m.setting for m in check_topics(settings.kafka, [spec])] == ["partitions"]


def test_producers_never_batch_beyond_the_topic_limit() -> None:
    """Apache Kafka refuses a whole batch larger than the topic's max.message.bytes (found by the security test on
    Kafka with a 64 KiB body limit: every normalizer batch failed). Every producer caps its batches at the limit."""
    from producer.publisher import Publisher
    from streams.normalize.output_producer import producer_config

    for body in (64 * 1024, 1024 * 1024):
        limit = record_max_bytes(body)
        configs = [producer_config("127.0.0.1:9", max_body_bytes=body),
                   Publisher("127.0.0.1:9", max_value_bytes=body)._config]
        for config in configs:
            assert config["batch.size"] <= limit and config["message.max.bytes"] <= limit, config.get("client.id")
