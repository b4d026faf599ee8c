"""Broker outage: the intake answers 503 + Retry-After instead of 202, and recovers when the broker is back.

Uses its own broker of the session's kind (stopped and restarted here), never the session one.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator

import pytest

from apro_sync.apache_kafka import ApacheKafka
from apro_sync.embedded_broker import EmbeddedBroker
from foundations.config import Settings
from foundations.formats import headers as header_names
from tests.conftest import new_restartable_broker
from tests.producer.intake_support import TOKEN, create_intake_topics, headers_of, read_topic, running_intake

pytestmark = [pytest.mark.integration, pytest.mark.broker_restart]

JSON = {"Content-Type": "application/json"}


@pytest.fixture
def broker() -> Iterator[EmbeddedBroker | ApacheKafka]:
    with new_restartable_broker() as b:
        yield b


async def test_broker_down_means_503_then_recovery(broker: EmbeddedBroker | ApacheKafka) -> None:
    settings = Settings(
        kafka_bootstrap_servers=broker.bootstrap,
        topic_prefix=f"o{uuid.uuid4().hex[:8]}.",
        topic_partitions=2,
        webhook_tokens=TOKEN,
        produce_timeout_s=1.5,
        retry_after_s=7,
        _env_file=None,
    )
    async with running_intake(settings) as intake:
        async with intake.session.post(intake.url(), data=b'{"clientId": 1}', headers=JSON) as resp:
            assert resp.status == 202
        async with intake.session.get(intake.base + "/readyz") as resp:
            assert resp.status == 200

        broker.stop()
        async with intake.session.post(intake.url(), data=b'{"clientId": 2}', headers=JSON) as resp:
            assert resp.status == 503
            assert resp.headers["Retry-After"] == "7"
        # An unreadable body cannot be quarantined either: 503 (retry), not 400 (which would lose it).
        async with intake.session.post(intake.url(), data=b"garbage", headers={"Content-Type": "text/plain"}) as resp:
            assert resp.status == 503
        async with intake.session.get(intake.base + "/readyz") as resp:
            assert resp.status == 503
        async with intake.session.get(intake.base + "/healthz") as resp:
            assert resp.status == 200

        broker.start()
        if not broker.persistent:
            create_intake_topics(settings)  # Tansu is in memory: the restarted broker starts empty
        accepted_id = None
        deadline = time.monotonic() + 60
        while accepted_id is None and time.monotonic() < deadline:  # what a retrying sender does
            async with intake.session.post(intake.url(), data=b'{"clientId": 3}', headers=JSON) as resp:
                assert resp.status in (202, 503)
                if resp.status == 202:
                    accepted_id = (await resp.json())["requestId"]
        assert accepted_id is not None, "intake did not recover after the broker came back"
        async with intake.session.get(intake.base + "/readyz") as resp:
            assert resp.status == 200

    records = read_topic(broker.bootstrap, settings.topics.raw)
    assert accepted_id in {headers_of(m)[header_names.REQUEST_ID] for m in records}
    kept = {b"1"} if broker.persistent else set()  # Apache Kafka keeps the log across the restart
    assert kept <= {m.key() for m in records} <= kept | {b"2", b"3"}  # the 503'd one may land late (deduped later)
