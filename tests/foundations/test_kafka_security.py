"""Managed-Kafka security against real Apache Kafka with a SASL_SSL listener: a SCRAM user made with Kafka's own
storage tool, a CA and broker certificate made here. The producer, the worker, the lag exporter and the tools all
connect with the same settings; a wrong password is a clear error that names the setting, never the secret.

Runs in the Apache Kafka pass of CI (`APRO_TEST_BROKER=kafka`): it needs Java and Maven for its own broker.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import ipaddress
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from apro_sync.apache_kafka import ApacheKafka, SaslSslListener
from apro_sync.ops.lag import LagReader
from foundations.config import Settings
from foundations.kafka_admin import check_topics, ensure_topics, wait_for_broker
from foundations.kafka_connection import KafkaAuthError
from tests.conftest import FIXTURES, broker_kind
from tests.reliability.harness import Post, StackConfig, post_many, read_topic, wait_until
from tests.reliability.test_crash import ghl_env, start_emulator

pytestmark = [
    pytest.mark.broker_restart,
    pytest.mark.skipif(broker_kind() != "kafka", reason="needs its own Apache Kafka (APRO_TEST_BROKER=kafka)"),
]

USER, PASSWORD = "apro-sync", "scram-Pa55word-for-tests"
WRONG = "not-the-Pa55word-at-all"


def _cert(
    subject: str,
    issuer_key: ec.EllipticCurvePrivateKey,
    issuer: x509.Name | None,
    key: ec.EllipticCurvePrivateKey,
    *,
    ca: bool,
) -> x509.Certificate:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
    now = dt.datetime.now(dt.timezone.utc)
    builder = (x509.CertificateBuilder().subject_name(name).issuer_name(issuer or name).public_key(key.public_key())
               .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(minutes=5))
               .not_valid_after(now + dt.timedelta(days=1))
               .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
    if not ca:
        builder = builder.add_extension(x509.SubjectAlternativeName(
            [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


def _pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


@pytest.fixture(scope="module")
def secure_kafka(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ApacheKafka, Path]]:
    work = tmp_path_factory.mktemp("tls")
    ca_key, broker_key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca = _cert("apro-sync test CA", ca_key, None, ca_key, ca=True)
    broker = _cert("localhost", ca_key, ca.subject, broker_key, ca=False)
    (work / "ca.pem").write_bytes(_pem(ca))
    (work / "broker-chain.pem").write_bytes(_pem(broker) + _pem(ca))
    (work / "broker-key.pem").write_bytes(broker_key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    listener = SaslSslListener(key_pem=work / "broker-key.pem", cert_chain_pem=work / "broker-chain.pem",
                               users=((USER, PASSWORD),))
    with ApacheKafka(sasl_ssl=listener) as kafka:
        yield kafka, work / "ca.pem"


def _security_env(
    kafka: ApacheKafka, ca: Path, password: str = PASSWORD, mechanism: str = "SCRAM-SHA-512"
) -> dict[str, str]:
    return {"KAFKA_BOOTSTRAP_SERVERS": kafka.sasl_ssl_bootstrap, "APRO_KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
            "APRO_KAFKA_SASL_MECHANISM": mechanism, "APRO_KAFKA_SASL_USERNAME": USER,
            "APRO_KAFKA_SASL_PASSWORD": password, "APRO_KAFKA_SSL_CA_FILE": str(ca)}


def _settings(env: dict[str, str], **overrides: object) -> Settings:
    old = dict(os.environ)
    os.environ.update(env)
    try:
        return Settings(_env_file=None, **overrides)  # type: ignore[arg-type]
    finally:
        os.environ.clear()
        os.environ.update(old)


@pytest.mark.parametrize("mechanism", ["SCRAM-SHA-256", "SCRAM-SHA-512"])
def test_tools_connect_with_scram_over_tls(secure_kafka: tuple[ApacheKafka, Path], mechanism: str,
                                           tmp_path: Path) -> None:
    kafka, ca = secure_kafka
    env = _security_env(kafka, ca, mechanism=mechanism)
    settings = _settings(env, topic_prefix=f"sec{mechanism[-3:]}.", topic_partitions=2)
    wait_for_broker(settings.kafka, 30)
    ensure_topics(settings.kafka, settings.topic_specs())
    assert check_topics(settings.kafka, settings.topic_specs()) == []
    cli = subprocess.run([sys.executable, "-m", "apro_sync.cli", "peek", "raw"], capture_output=True, text=True,
                         env={**os.environ, **env, "APRO_TOPIC_PREFIX": settings.topic_prefix}, timeout=120)
    assert cli.returncode == 0, cli.stderr[-2000:]
    assert "0 record(s)" in cli.stdout


def test_wrong_password_names_the_setting_never_the_secret(secure_kafka: tuple[ApacheKafka, Path]) -> None:
    kafka, ca = secure_kafka
    env = _security_env(kafka, ca, password=WRONG)
    with pytest.raises(KafkaAuthError) as raised:
        wait_for_broker(_settings(env).kafka, 30)
    assert "APRO_KAFKA_SASL_PASSWORD" in str(raised.value) and WRONG not in str(raised.value)
    for command in (["producer"], ["worker"], ["peek", "raw"], ["topics"]):
        done = subprocess.run([sys.executable, "-m", "apro_sync.cli", *command], capture_output=True, text=True,
                              env={**os.environ, **env, "APRO_HTTP_PORT": "0", "APRO_METRICS_PORT": "0"}, timeout=120)
        output = done.stdout + done.stderr
        assert done.returncode != 0, command
        assert "APRO_KAFKA_SASL_PASSWORD" in output, (command, output[-1500:])
        assert WRONG not in output and "Traceback" not in output, command


def test_whole_path_over_sasl_ssl(secure_kafka: tuple[ApacheKafka, Path], tmp_path: Path) -> None:
    """Webhook → producer → raw → worker (normalize + sink) → GoHighLevel emulator, every hop over SASL_SSL."""
    kafka, ca = secure_kafka
    env = _security_env(kafka, ca)
    emulator = start_emulator()
    try:
        config = StackConfig.for_broker(kafka.sasl_ssl_bootstrap, tmp_path, embedded_broker=False,
                                        extra_env={**env, **ghl_env(emulator)})
        settings = _settings(env, topic_prefix=config.topic_prefix, topic_partitions=config.partitions,
                             worker_id=f"{config.topic_prefix}worker")
        ensure_topics(settings.kafka, settings.topic_specs())
        body = (FIXTURES / "appointment_created.json").read_bytes()
        with config.producer() as producer, config.worker() as worker:
            answers = asyncio.run(post_many(producer.webhook_url(), [Post(body)]))
            assert [a.status for a in answers] == [202]
            wait_until(
                lambda: len(emulator.state()["notes"]) >= 1, 120, 0.5, "the booking's note written over SASL_SSL"
            )
            assert worker.alive and producer.alive
            lags = LagReader(settings.kafka).read(settings.worker_id, [settings.topics.raw])  # the lag exporter's read
            assert len(lags) == settings.topic_partitions
        contacts = emulator.state()["contacts"]
        assert len(contacts) == 1
    finally:
        emulator.stop()
    # Read back over the plaintext listener of the same broker: the raw record is there once, keyed by client.
    records = read_topic(kafka.bootstrap, config.topics.raw)
    assert [r.key for r in records] == [b"48213"]
