"""A local producer + worker stack of real `apro-sync` processes on one broker and topic prefix, for the tests
and the benches; with the Prometheus scraping they use to read its metrics."""

from __future__ import annotations

import os
import sys
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families

from apro_sync.processes import ServiceProcess, free_port, http_ok
from foundations.config import Settings
from foundations.kafka_admin import ensure_topics
from foundations.topics import Topics

TOKEN = "rel-token-0123456789abcdefXYZ"  # unbound
LOC_TOKEN = "rel-loc7-token-0123456789abcdef"  # bound to location "7"
TOKENS_ENV = f"{TOKEN},{LOC_TOKEN}@7"
WEBHOOK_PATH = "/webhooks/aestheticspro"

# Environment variables a stack must not inherit from the developer's shell (they change what the process does).
_SCRUBBED_PREFIXES = ("APRO_", "KAFKA_")


class ProducerProcess(ServiceProcess):
    def __init__(self, *args: Any, http_port: int, **kwargs: Any) -> None:
        self.http_port = http_port
        self.base = f"http://127.0.0.1:{http_port}"
        super().__init__(*args, ready=lambda: http_ok(self.base + "/healthz"), **kwargs)

    def webhook_url(self, token: str = TOKEN, resource: str | None = None) -> str:
        return f"{self.base}{WEBHOOK_PATH}/{token}" + (f"/{resource}" if resource else "")

    @property
    def metrics_url(self) -> str:
        return self.base + "/metrics"


class WorkerProcess(ServiceProcess):
    """Ready = its /metrics port answers (the Faust app is built and its agents registered). Joining the group
    takes a few more seconds: wait for output records, not for readiness, before asserting on them."""

    def __init__(self, *args: Any, metrics_port: int, worker_id: str, **kwargs: Any) -> None:
        self.metrics_port = metrics_port
        self.worker_id = worker_id  # also the Faust app id, hence the consumer group id
        super().__init__(*args, ready=lambda: http_ok(self.metrics_url), **kwargs)

    @property
    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.metrics_port}/metrics"


@dataclass
class StackConfig:
    """What the producer and worker processes of one test share: broker, topic prefix, tokens, directories."""

    bootstrap: str
    work_dir: Path
    topic_prefix: str = field(default_factory=lambda: f"r{uuid.uuid4().hex[:10]}.")
    partitions: int = 2
    tokens_env: str = TOKENS_ENV
    embedded_broker: bool = True
    max_body_bytes: int | None = None
    produce_timeout_s: float | None = None
    retry_after_s: int | None = None
    log_level: str = "INFO"
    # For the sync stage (crash tests): APRO_GHL_BASE_URL / APRO_GHL_TOKEN / APRO_GHL_LOCATION_ID and the like.
    extra_env: dict[str, str] = field(default_factory=dict)

    @classmethod
    def for_broker(cls, bootstrap: str, work_dir: Path, **kwargs: Any) -> "StackConfig":
        return cls(bootstrap=bootstrap, work_dir=work_dir, **kwargs)

    @property
    def topics(self) -> Topics:
        return Topics.with_prefix(self.topic_prefix)

    def create_topics(self) -> None:
        """Create every topic up front with its production configs (Tansu is in memory: call again after a
        broker restart)."""
        settings = Settings(kafka_bootstrap_servers=self.bootstrap, topic_prefix=self.topic_prefix,
                            topic_partitions=self.partitions, worker_id=f"{self.topic_prefix}worker",
                            **({"max_body_bytes": self.max_body_bytes} if self.max_body_bytes else {}), _env_file=None)
        ensure_topics(self.bootstrap, settings.topic_specs())

    def env(self, **overrides: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(_SCRUBBED_PREFIXES)}
        env.update(
            KAFKA_BOOTSTRAP_SERVERS=self.bootstrap,
            APRO_TOPIC_PREFIX=self.topic_prefix,
            APRO_TOPIC_PARTITIONS=str(self.partitions),
            APRO_EMBEDDED_BROKER="true" if self.embedded_broker else "false",
            APRO_KAFKA_SESSION_TIMEOUT_S="2",  # crash tests: a killed worker's partitions move on quickly
            APRO_WEBHOOK_TOKENS=self.tokens_env,
            APRO_LOG_LEVEL=self.log_level,
            PYTHONUNBUFFERED="1",
        )
        for name, value in (("APRO_MAX_BODY_BYTES", self.max_body_bytes),
                            ("APRO_PRODUCE_TIMEOUT_S", self.produce_timeout_s),
                            ("APRO_RETRY_AFTER_S", self.retry_after_s)):
            if value is not None:
                env[name] = str(value)
        env.update(self.extra_env)
        env.update(overrides)
        return env

    def producer(self, name: str = "producer", http_port: int | None = None) -> ProducerProcess:
        port = http_port or free_port()
        cwd = self.work_dir / name
        cwd.mkdir(parents=True, exist_ok=True)
        return ProducerProcess(name, [sys.executable, "-m", "apro_sync.cli", "producer"],
                               self.env(APRO_HTTP_PORT=str(port), APRO_HTTP_HOST="127.0.0.1"),
                               self.work_dir / "logs", cwd, http_port=port, ready_timeout_s=30)

    def worker(self, name: str = "worker", worker_id: str | None = None, metrics_port: int | None = None,
               ) -> WorkerProcess:
        """A worker process. Two workers of one test share `worker_id` (same group) but not their name/state."""
        wid = worker_id or f"{self.topic_prefix}worker"
        port = metrics_port or free_port()
        cwd = self.work_dir / name
        cwd.mkdir(parents=True, exist_ok=True)
        env = self.env(APRO_WORKER_ID=wid, APRO_METRICS_PORT=str(port), APRO_STATE_DIR=str(cwd / "state"),
                       APRO_WORKER_WEB_PORT=str(free_port()))
        return WorkerProcess(name, [sys.executable, "-m", "apro_sync.cli", "worker"], env, self.work_dir / "logs",
                             cwd, metrics_port=port, worker_id=wid, ready_timeout_s=60)

    def log_files(self) -> list[Path]:
        return sorted((self.work_dir / "logs").glob("*.*"))


def scrape(url: str, timeout_s: float = 5.0) -> str:
    resp = httpx.get(url, timeout=timeout_s)
    resp.raise_for_status()
    return resp.text


def parse_metrics(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Prometheus text → {(sample name, sorted labels): value}."""
    out: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def metric_sum(samples: Mapping[tuple[str, tuple[tuple[str, str], ...]], float], name: str,
               **labels: str) -> float:
    """Sum of a sample over every label set that contains `labels`."""
    return sum(v for (n, lbls), v in samples.items()
               if n == name and all((k, val) in lbls for k, val in labels.items()))
