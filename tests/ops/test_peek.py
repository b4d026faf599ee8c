"""`apro-sync peek` against the real broker: lists what a topic holds; keys and bodies only when asked."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from confluent_kafka import Producer

from apro_sync.ops.peek import Peeked, format_line
from foundations.config import Settings
from foundations.formats import headers as header_names
from foundations.kafka_admin import ensure_topics
from tests.conftest import REPO


def test_format_line_hides_key_and_body_unless_asked() -> None:
    record = Peeked(
        3,
        17,
        1_795_000_000_000,
        b"48213",
        b'{"firstName": "Jane"}',
        {header_names.REQUEST_ID: "r-1", header_names.RESOURCE: "clients", header_names.REASON: "body is empty"},
    )
    line = format_line(record, show_payload=False)
    assert line.startswith("3:17  2026-") and "request=r-1" in line and "resource=clients" in line
    assert "bytes=21" in line and "reason=body is empty" in line
    assert "48213" not in line and "Jane" not in line
    shown = format_line(record, show_payload=True)
    assert "key=48213" in shown and '"firstName": "Jane"' in shown


def test_peek_lists_the_raw_topic(settings: Settings) -> None:
    raw = settings.topics.raw
    ensure_topics(settings.kafka_bootstrap_servers or "", [raw], settings.topic_partitions)
    producer = Producer({"bootstrap.servers": settings.kafka_bootstrap_servers, "linger.ms": 0})
    for n in range(3):
        producer.produce(
            raw, json.dumps({"n": n}).encode(), b"k%d" % n, headers=[(header_names.REQUEST_ID, b"peek-%d" % n)]
        )
        producer.flush(10)
    env = {**os.environ, "KAFKA_BOOTSTRAP_SERVERS": settings.kafka_bootstrap_servers or "",
           "APRO_TOPIC_PREFIX": settings.topic_prefix, "APRO_WEBHOOK_TOKENS": "test-token-0123456789abcdef"}
    done = subprocess.run([sys.executable, "-m", "apro_sync.cli", "peek"], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.strip().splitlines()
    assert lines[-1] == f"3 record(s) in {raw}"
    assert sorted(line.split("request=")[1].split()[0] for line in lines[:-1]) == ["peek-0", "peek-1", "peek-2"]
    assert '"n"' not in done.stdout
    missing = subprocess.run([sys.executable, "-m", "apro_sync.cli", "peek", "no-such-topic"], cwd=REPO, env=env,
                             capture_output=True, text=True, timeout=60)
    assert missing.returncode == 1 and "does not exist" in missing.stderr
