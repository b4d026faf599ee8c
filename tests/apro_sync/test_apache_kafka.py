"""The local Apache Kafka's cluster ids: Kafka's command line must read them as values."""

from __future__ import annotations

import base64
import uuid

import pytest

from apro_sync import apache_kafka


def test_a_cluster_id_never_starts_with_a_dash(monkeypatch: pytest.MonkeyPatch) -> None:
    # 0xF8 encodes to "-" first in URL-safe base64: about 1 draw in 64, and `kafka-storage format -t -…` then fails
    # with "expected one argument" (a red CI run on 2026-12-01).
    dashed = uuid.UUID(bytes=bytes([0xF8]) + bytes(15))
    plain = uuid.UUID(bytes=bytes([0x10]) + bytes(15))
    assert base64.urlsafe_b64encode(dashed.bytes).decode().startswith("-")
    draws = iter([dashed, dashed, plain])
    monkeypatch.setattr(apache_kafka.uuid, "uuid4", lambda: next(draws))
    cluster_id = apache_kafka.new_cluster_id()
    assert cluster_id == base64.urlsafe_b64encode(plain.bytes).decode().rstrip("=")
    assert len(cluster_id) == 22


def test_cluster_ids_are_random_and_well_formed() -> None:
    ids = {apache_kafka.new_cluster_id() for _ in range(2000)}
    assert len(ids) == 2000
    assert not any(i.startswith("-") for i in ids)
    assert all(len(i) == 22 and len(base64.urlsafe_b64decode(i + "==")) == 16 for i in ids)
