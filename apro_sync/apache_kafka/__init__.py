"""A single-node Apache Kafka (KRaft broker + controller) for tests and benchmarks: the engine users deploy.

The broker's jars come from Maven Central through `pom.xml` (next to this file) into a cache folder outside the
work tree; the version there is the one docker-compose.yml runs. Java 17+ and Maven must be on the PATH.
"""

from __future__ import annotations

import base64
import fcntl
import os
import re
import shutil
import subprocess
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path

from apro_sync.processes import BrokerProcess, free_port
from foundations.topics import record_max_bytes

DEFAULT_MAX_BODY_BYTES = 1024 * 1024  # as docker-compose.yml: the broker takes any record the producer may send

POM = Path(__file__).resolve().parent / "pom.xml"
KAFKA_VERSION = re.search(r"<kafka\.version>([^<]+)</kafka\.version>", POM.read_text()).group(1)  # type: ignore[union-attr]

LOG4J2 = """\
status = warn
appender.file.type = File
appender.file.name = file
appender.file.fileName = {log}
appender.file.layout.type = PatternLayout
appender.file.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = WARN
rootLogger.appenderRef.file.ref = file
logger.kafka.name = kafka.server.KafkaRaftServer
logger.kafka.level = INFO
"""


def cache_dir() -> Path:
    """`APRO_KAFKA_CACHE`, else `$XDG_CACHE_HOME/apro-sync/kafka-<version>` (never inside the repository)."""
    override = os.environ.get("APRO_KAFKA_CACHE")
    if override:
        return Path(override)
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "apro-sync" / f"kafka-{KAFKA_VERSION}"


def ensure_jars() -> Path:
    """Fetch the broker's jars once (Maven, `dependency:copy-dependencies`); return the folder holding them."""
    root = cache_dir()
    libs = root / "libs"
    marker = libs / f"kafka_2.13-{KAFKA_VERSION}.jar"
    if marker.exists():
        return libs
    root.mkdir(parents=True, exist_ok=True)
    with open(root / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # parallel test sessions fetch once
        if marker.exists():
            return libs
        if not shutil.which("mvn") or not shutil.which("java"):
            raise RuntimeError("Apache Kafka for the tests needs Java 17+ and Maven on the PATH")
        staging = root / "libs.partial"
        shutil.rmtree(staging, ignore_errors=True)
        subprocess.run(
            ["mvn", "-q", "-B", "-f", str(POM), "dependency:copy-dependencies",
             f"-DoutputDirectory={staging}", "-DincludeScope=runtime"],
            check=True,
        )
        shutil.rmtree(libs, ignore_errors=True)
        staging.rename(libs)
    return libs


@dataclass(frozen=True)
class SaslSslListener:
    """An extra SASL_SSL listener: PEM key + certificate chain for the broker, and SCRAM users made at format."""

    key_pem: Path
    cert_chain_pem: Path
    users: tuple[tuple[str, str], ...]  # (name, password), created for SCRAM-SHA-256 and SCRAM-SHA-512
    port: int = 0



def new_cluster_id() -> str:
    """A random cluster id as Kafka writes one: never starting with "-", which its command line would read as a flag
    (Kafka's own Uuid.randomUuid() rejects those the same way)."""
    while True:
        cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not cluster_id.startswith("-"):
            return cluster_id

class ApacheKafka(BrokerProcess):
    """Format, start, wait for and stop one KRaft node; `stop()` then `start()` keeps its data and ports."""

    persistent = True

    def __init__(self, *, sasl_ssl: SaslSslListener | None = None,
                 message_max_bytes: int | None = record_max_bytes(DEFAULT_MAX_BODY_BYTES),
                 heap_mb: int = 512, workdir: Path | None = None) -> None:
        super().__init__()
        self.controller_port = free_port()
        self.sasl_ssl = sasl_ssl
        self.sasl_port = (sasl_ssl.port or free_port()) if sasl_ssl else 0
        self.message_max_bytes = message_max_bytes
        self.heap_mb = heap_mb
        self.workdir = workdir or Path(tempfile.mkdtemp(prefix="apro-sync-kafka-"))
        self.log_path = self.workdir / "broker.log"
        self._formatted = False

    @property
    def sasl_ssl_bootstrap(self) -> str:
        return f"localhost:{self.sasl_port}"

    def _properties(self) -> str:
        listeners = [f"PLAINTEXT://127.0.0.1:{self.port}", f"CONTROLLER://127.0.0.1:{self.controller_port}"]
        advertised = [f"PLAINTEXT://127.0.0.1:{self.port}"]
        protocols = ["PLAINTEXT:PLAINTEXT", "CONTROLLER:PLAINTEXT"]
        lines = [
            "process.roles=broker,controller",
            "node.id=1",
            f"controller.quorum.voters=1@127.0.0.1:{self.controller_port}",
            "controller.listener.names=CONTROLLER",
            "inter.broker.listener.name=PLAINTEXT",
            f"log.dirs={self.workdir / 'data'}",
            "offsets.topic.replication.factor=1",
            "offsets.topic.num.partitions=12",
            "transaction.state.log.replication.factor=1",
            "transaction.state.log.min.isr=1",
            "share.coordinator.state.topic.replication.factor=1",
            "share.coordinator.state.topic.min.isr=1",
            "group.initial.rebalance.delay.ms=0",
            "group.min.session.timeout.ms=500",  # tests use short sessions so crashed members leave quickly
            "auto.create.topics.enable=false",
            "log.flush.interval.messages=9223372036854775807",
            "num.network.threads=2",
            "num.io.threads=2",
        ]
        if self.message_max_bytes:
            lines += [f"message.max.bytes={self.message_max_bytes}",
                      f"replica.fetch.max.bytes={max(self.message_max_bytes, 1048576)}"]
        if self.sasl_ssl:
            listeners.append(f"SASL_SSL://localhost:{self.sasl_port}")
            advertised.append(f"SASL_SSL://localhost:{self.sasl_port}")
            protocols.append("SASL_SSL:SASL_SSL")
            scram = "org.apache.kafka.common.security.scram.ScramLoginModule required;"
            lines += [
                "sasl.enabled.mechanisms=SCRAM-SHA-256,SCRAM-SHA-512",
                f"listener.name.sasl_ssl.scram-sha-256.sasl.jaas.config={scram}",
                f"listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config={scram}",
                "listener.name.sasl_ssl.ssl.keystore.type=PEM",
                f"listener.name.sasl_ssl.ssl.keystore.certificate.chain={_pem_property(self.sasl_ssl.cert_chain_pem)}",
                f"listener.name.sasl_ssl.ssl.keystore.key={_pem_property(self.sasl_ssl.key_pem)}",
            ]
        lines += [f"listeners={','.join(listeners)}", f"advertised.listeners={','.join(advertised)}",
                  f"listener.security.protocol.map={','.join(protocols)}"]
        return "\n".join(lines) + "\n"

    def _java(self, main: str, *args: str, heap_mb: int = 256) -> list[str]:
        libs = ensure_jars()
        tuning = [] if main == "kafka.Kafka" else ["-XX:+UseSerialGC", "-XX:TieredStopAtLevel=1"]  # short-lived tools
        return ["java", f"-Xmx{heap_mb}m", *tuning, f"-Dlog4j2.configurationFile={self.workdir / 'log4j2.properties'}",
                "-cp", f"{libs}/*", main, *args]

    def _format(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        (self.workdir / "server.properties").write_text(self._properties())
        (self.workdir / "log4j2.properties").write_text(LOG4J2.format(log=self.log_path))
        args = ["format", "-t", new_cluster_id(), "-c", str(self.workdir / "server.properties")]
        for name, password in self.sasl_ssl.users if self.sasl_ssl else ():
            for mechanism in ("SCRAM-SHA-256", "SCRAM-SHA-512"):
                args += ["--add-scram", f"{mechanism}=[name={name},password={password}]"]
        done = subprocess.run(self._java("kafka.tools.StorageTool", *args), capture_output=True, text=True)
        if done.returncode != 0:
            raise RuntimeError(f"formatting Kafka storage failed: {done.stdout[-2000:]}{done.stderr[-2000:]}")
        self._formatted = True

    def start(self, timeout_s: float = 90.0) -> "ApacheKafka":
        if not self._formatted:
            self._format()
        self._launch(self._java("kafka.Kafka", str(self.workdir / "server.properties"), heap_mb=self.heap_mb),
                     self.workdir / "stdout.log", ready_timeout_s=timeout_s)
        return self

    def stop(self, timeout_s: float = 30.0) -> None:
        """A controlled shutdown (SIGTERM by PID), SIGKILL if it takes longer than `timeout_s`."""
        self._terminate(timeout_s)

    def cleanup(self) -> None:
        self.stop()
        shutil.rmtree(self.workdir, ignore_errors=True)

    def __exit__(self, *exc: object) -> None:
        self.cleanup()


def _pem_property(path: Path) -> str:
    """A PEM file as one properties value (newlines escaped), as Kafka's PEM keystore settings take it."""
    return path.read_text().strip().replace("\n", "\\n")