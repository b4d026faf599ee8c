"""The Faust application: one factory so the worker, the tests and the tools build it the same way."""

from __future__ import annotations

import faust

from foundations.config import Settings
from workarounds.faust_patches import commit_no_gaps


def build_app(settings: Settings, *, app_id: str | None = None) -> faust.App:
    """A Faust app wired to the configured broker. Agents are attached by `apro_sync.worker.register_agents`.

    `settings.embedded_broker` switches on what the in-memory Tansu broker needs: one record per producer batch
    (it reports a wrong end offset for multi-record batches, which would lose the newest table updates on
    recovery) and a short fetch wait. docs/reliability.md measures each on Apache Kafka.
    """
    if not settings.kafka_bootstrap_servers:
        raise ValueError("KAFKA_BOOTSTRAP_SERVERS is not set")
    commit_no_gaps()  # every agent reads through a SequenceGuard, which handles the gaps itself
    extra: dict[str, object] = {
        # How fast a crashed worker's partitions move to the others (Faust's default is 60 s).
        "broker_session_timeout": settings.kafka_session_timeout_s,
        "broker_heartbeat_interval": settings.kafka_session_timeout_s / 4,
        "broker_rebalance_timeout": max(settings.kafka_session_timeout_s, 2.0),
    }
    if settings.embedded_broker:
        extra.update(producer_max_batch_size=1)
    if settings.embedded_broker:
        _short_fetch_wait_for_embedded_broker()
    return faust.App(
        app_id or settings.consumer_group,
        broker=[f"kafka://{server}" for server in settings.kafka_bootstrap_servers.split(",")],
        broker_credentials=settings.kafka.faust_credentials(),
        store="memory://",  # the default; APRO_STATE_STORE=rocksdb sets each table's own (rocksdb_store.py)
        topic_partitions=settings.topic_partitions,
        topic_replication_factor=settings.topic_replication,
        topic_allow_declare=True,
        web_enabled=False,
        datadir=str(settings.state_dir),
        consumer_auto_offset_reset="earliest",
        stream_wait_empty=True,
        **extra,
    )


EMBEDDED_FETCH_MAX_WAIT_MS = 50


def _short_fetch_wait_for_embedded_broker() -> None:
    """faust-streaming 0.15.3 creates its consumer with a hard-coded `fetch_max_wait_ms=1500`. Apache Kafka answers
    a fetch as soon as a record arrives (fetch.min.bytes=1), but the embedded Tansu broker holds it for the whole
    wait, which put ~1.3 s on every webhook's way through the two topics (bench/sink.py). For the embedded broker
    only, the consumer class Faust instantiates gets a short wait instead."""
    from faust.transport.drivers import aiokafka as driver

    original = driver.aiokafka.AIOKafkaConsumer
    if getattr(original, "_apro_short_wait", False):
        return

    class ShortWaitConsumer(original):  # type: ignore[misc, valid-type]
        _apro_short_wait = True

        def __init__(self, *args: object, **kwargs: object) -> None:
            if "group_id" in kwargs:  # the stream consumer (not Faust's reply/client consumer)
                kwargs["fetch_max_wait_ms"] = EMBEDDED_FETCH_MAX_WAIT_MS
            super().__init__(*args, **kwargs)

    driver.aiokafka.AIOKafkaConsumer = ShortWaitConsumer
