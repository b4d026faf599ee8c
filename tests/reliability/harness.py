"""Reusable process and broker helpers for the reliability tests (fuzz, security, outage, crash).

Everything runs on loopback, every wait is bounded, every process started here is stopped by the same object
that started it (context managers), never by name.

    stack = StackConfig.for_broker(bootstrap, tmp_path)
    stack.create_topics()
    with stack.producer() as producer, stack.worker() as worker:
        statuses = asyncio.run(post_many(producer.webhook_url(), bodies))
        records = read_topic(stack.bootstrap, stack.topics.normalized)
        worker.kill(); worker.start(); worker.wait_ready()     # crash + restart, same worker id / group

The processes are the real entry points (`python -m apro_sync.cli producer|worker`); their stdout and stderr go
to files under the test's directory so a test can scan them (PHI, secrets) after the run.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
import httpx
from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition
from prometheus_client.parser import text_string_to_metric_families

from foundations.formats import headers as header_names
from apro_sync.embedded_broker import free_port
from foundations.config import Settings
from foundations.kafka_admin import ensure_topics
from foundations.topics import Topics

T = TypeVar("T")

TOKEN = "rel-token-0123456789abcdefXYZ"  # unbound
LOC_TOKEN = "rel-loc7-token-0123456789abcdef"  # bound to location "7"
TOKENS_ENV = f"{TOKEN},{LOC_TOKEN}@7"
WEBHOOK_PATH = "/webhooks/aestheticspro"

# Environment variables a test must not inherit from the developer's shell (they change what the process does).
_SCRUBBED_PREFIXES = ("APRO_", "KAFKA_")


def wait_until(predicate: Callable[[], T], timeout_s: float, interval_s: float = 0.2, what: str = "condition") -> T:
    """Poll `predicate` until it returns a truthy value (returned) or raise TimeoutError after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise TimeoutError(f"{what} not reached within {timeout_s:.0f}s")
        time.sleep(interval_s)


# ------------------------------------------------------------------------------------------------ processes


class ServiceProcess:
    """One `apro-sync <command>` child process with its output captured to `<log_dir>/<name>.{out,err}`.

    `start()` appends to the same files, so the logs of every incarnation (after `kill()`/`restart()`) stay
    available for the PHI scan.
    """

    def __init__(self, name: str, argv: Sequence[str], env: Mapping[str, str], log_dir: Path, cwd: Path,
                 ready: Callable[[], bool], ready_timeout_s: float = 60.0) -> None:
        self.name = name
        self.argv = list(argv)
        self.env = dict(env)
        self.log_dir = log_dir
        self.cwd = cwd
        self._ready = ready
        self.ready_timeout_s = ready_timeout_s
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0
        log_dir.mkdir(parents=True, exist_ok=True)

    @property
    def stdout_path(self) -> Path:
        return self.log_dir / f"{self.name}.out"

    @property
    def stderr_path(self) -> Path:
        return self.log_dir / f"{self.name}.err"

    @property
    def log_files(self) -> list[Path]:
        return [self.stdout_path, self.stderr_path]

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self) -> "ServiceProcess":
        if self.alive:
            raise RuntimeError(f"{self.name} already running")
        with open(self.stdout_path, "ab") as out, open(self.stderr_path, "ab") as err:
            self.proc = subprocess.Popen(self.argv, env=self.env, cwd=self.cwd, stdout=out, stderr=err,
                                         stdin=subprocess.DEVNULL, start_new_session=True)
        self.starts += 1
        return self

    def wait_ready(self, timeout_s: float | None = None) -> "ServiceProcess":
        def check() -> bool:
            if not self.alive:
                raise RuntimeError(f"{self.name} exited with {self.returncode} before it was ready; "
                                   f"see {self.stderr_path}")
            return self._ready()

        wait_until(check, timeout_s or self.ready_timeout_s, 0.1, f"{self.name} ready")
        return self

    @property
    def returncode(self) -> int | None:
        return None if self.proc is None else self.proc.poll()

    def kill(self) -> None:
        """SIGKILL: a crash, no shutdown code runs."""
        if self.alive:
            assert self.proc is not None
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=10)

    def stop(self, timeout_s: float = 15.0) -> int | None:
        """SIGTERM (graceful), SIGKILL after `timeout_s`. Returns the exit code."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        return self.proc.returncode

    def restart(self, *, crash: bool = True) -> "ServiceProcess":
        self.kill() if crash else self.stop()
        return self.start().wait_ready()

    def __enter__(self) -> "ServiceProcess":
        if not self.alive:
            self.start()
        return self.wait_ready()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class ProducerProcess(ServiceProcess):
    def __init__(self, *args: Any, http_port: int, **kwargs: Any) -> None:
        self.http_port = http_port
        self.base = f"http://127.0.0.1:{http_port}"
        super().__init__(*args, ready=lambda: _http_ok(self.base + "/healthz"), **kwargs)

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
        super().__init__(*args, ready=lambda: _http_ok(self.metrics_url), **kwargs)

    @property
    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.metrics_port}/metrics"


def _http_ok(url: str) -> bool:
    try:
        return httpx.get(url, timeout=1.0).status_code == 200
    except httpx.HTTPError:
        return False


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


# ------------------------------------------------------------------------------------------------ HTTP


@dataclass(frozen=True)
class Answer:
    index: int
    status: int
    request_id: str | None
    retry_after: str | None
    body: bytes


@dataclass(frozen=True)
class Post:
    body: bytes
    content_type: str | None = "application/json"
    request_id: str | None = None
    resource: str | None = None
    extra_headers: tuple[tuple[str, str], ...] = ()


async def post_many(base_url: str, posts: Sequence[Post], concurrency: int = 16,
                    timeout_s: float = 30.0) -> list[Answer]:
    """POST every body to `base_url[/resource]` with at most `concurrency` in flight; answers in input order.

    A connection error or timeout becomes status 0 (a test asserting on statuses then fails clearly).
    """
    sem = asyncio.Semaphore(concurrency)
    timeout = aiohttp.ClientTimeout(total=timeout_s)
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(timeout=timeout, connector=connector) as session:
        async def one(i: int, post: Post) -> Answer:
            headers = dict(post.extra_headers)
            if post.content_type is not None:
                headers["Content-Type"] = post.content_type
            if post.request_id:
                headers["X-Request-ID"] = post.request_id
            url = base_url + (f"/{post.resource}" if post.resource else "")
            async with sem:
                try:
                    async with session.post(url, data=post.body, headers=headers) as resp:
                        body = await resp.read()
                        return Answer(i, resp.status, resp.headers.get("X-Request-ID"),
                                      resp.headers.get("Retry-After"), body)
                except (aiohttp.ClientError, asyncio.TimeoutError):
                    return Answer(i, 0, None, None, b"")

        return list(await asyncio.gather(*(one(i, p) for i, p in enumerate(posts))))


def raw_post(port: int, path: str, headers: Mapping[str, str], chunks: Iterable[bytes],
             timeout_s: float = 10.0) -> int:
    """POST over a plain socket (exact control of Content-Length / chunking); returns the status code.

    The server may answer (413) and close before the whole body is sent: a send error is ignored and the
    answer read anyway. 0 when no status line came back.
    """
    import socket

    with socket.create_connection(("127.0.0.1", port), timeout=timeout_s) as sock:
        head = f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n"
        head += "".join(f"{k}: {v}\r\n" for k, v in headers.items()) + "\r\n"
        try:
            sock.sendall(head.encode("latin-1"))
            for chunk in chunks:
                sock.sendall(chunk)
        except OSError:
            pass
        data = b""
        try:
            while b"\r\n" not in data:
                part = sock.recv(4096)
                if not part:
                    break
                data += part
        except OSError:
            pass
    match = re.match(rb"HTTP/1\.[01] (\d{3})", data)
    return int(match.group(1)) if match else 0


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


# ------------------------------------------------------------------------------------------------ Kafka


@dataclass(frozen=True)
class Record:
    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: dict[str, str]

    @property
    def request_id(self) -> str | None:
        return self.headers.get(header_names.REQUEST_ID)


def _reader(bootstrap: str) -> Consumer:
    return Consumer({"bootstrap.servers": bootstrap, "group.id": f"rel-reader-{uuid.uuid4().hex}",
                     "enable.auto.commit": False, "session.timeout.ms": 2000, "log_level": 0})


def end_offsets(bootstrap: str, topic: str, timeout_s: float = 10.0) -> dict[int, int]:
    """High watermark per partition ({} when the topic does not exist)."""
    consumer = _reader(bootstrap)
    try:
        meta = consumer.list_topics(topic, timeout=timeout_s).topics.get(topic)
        if meta is None or meta.error is not None:
            return {}
        return {p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=timeout_s)[1]
                for p in sorted(meta.partitions)}
    finally:
        consumer.close()


def read_topic(bootstrap: str, topic: str, timeout_s: float = 30.0, drain_idle_s: float = 0.5) -> list[Record]:
    """Every record of `topic` from the beginning (assign, no group join).

    Reads up to the high watermarks, then on until nothing new arrives for `drain_idle_s`: the embedded Tansu
    broker reports a high watermark a few records short after multi-record produce batches (the records are
    there and fetchable), so the watermark alone is not "the end" there.
    """
    meta_ends = end_offsets(bootstrap, topic)
    if not meta_ends:
        return []
    ends = {p: high for p, high in meta_ends.items() if high > 0}
    consumer = _reader(bootstrap)
    try:
        consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in meta_ends])
        records: list[Record] = []
        next_offset = {p: 0 for p in meta_ends}
        deadline = time.monotonic() + timeout_s
        idle_since = time.monotonic()
        while True:
            reached = all(next_offset[p] >= ends[p] for p in ends)
            if reached and time.monotonic() - idle_since >= drain_idle_s:
                break
            if time.monotonic() > deadline:
                raise TimeoutError(f"read {len(records)} records of {topic}, expected offsets up to {ends}")
            batch = consumer.consume(1000, timeout=0.1 if reached else 0.5)
            for msg in batch:
                if msg.error():
                    continue
                records.append(Record(topic, msg.partition(), msg.offset(), msg.key(), msg.value(),
                                      header_names.to_dict(msg.headers())))
                next_offset[msg.partition()] = msg.offset() + 1
            if any(not m.error() for m in batch):
                idle_since = time.monotonic()
        records.sort(key=lambda r: (r.partition, r.offset))
        return records
    finally:
        consumer.close()


def next_offsets(records: Iterable[Record]) -> dict[int, int]:
    """Per partition, the offset after the last record read: the true end when the watermark lags (Tansu)."""
    out: dict[int, int] = {}
    for rec in records:
        out[rec.partition] = max(out.get(rec.partition, 0), rec.offset + 1)
    return out


def committed_offsets(bootstrap: str, group: str, topic: str, partitions: Iterable[int],
                      timeout_s: float = 10.0) -> dict[int, int]:
    """The group's committed offset per partition (-1001 when none). Reads only; never joins the group."""
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": group, "enable.auto.commit": False,
                         "log_level": 0})
    try:
        got = consumer.committed([TopicPartition(topic, p) for p in partitions], timeout=timeout_s)
        return {tp.partition: tp.offset for tp in got}
    finally:
        consumer.close()


def wait_committed_to_end(bootstrap: str, group: str, topic: str, timeout_s: float = 60.0,
                          ends: Mapping[int, int] | None = None) -> dict[int, int]:
    """Wait until the group's committed offsets reach the end offsets on every non-empty partition.

    `ends` defaults to the high watermarks; pass `next_offsets(read_topic(...))` on Tansu, whose watermarks lag.
    """
    ends = dict(ends) if ends is not None else end_offsets(bootstrap, topic)
    for p, high in end_offsets(bootstrap, topic).items():
        ends[p] = max(ends.get(p, 0), high)

    def caught_up() -> dict[int, int] | None:
        committed = committed_offsets(bootstrap, group, topic, ends)
        behind = {p: (committed.get(p), end) for p, end in ends.items() if end > 0 and committed.get(p, -1) < end}
        return None if behind else committed or {-1: -1}

    try:
        return wait_until(caught_up, timeout_s, 0.5, f"group {group} committed to the end of {topic}")
    except TimeoutError:
        committed = committed_offsets(bootstrap, group, topic, ends)
        raise TimeoutError(f"group {group} on {topic}: committed {committed}, end offsets {ends}") from None


def wait_for_records(bootstrap: str, topics: Sequence[str], done: Callable[[dict[str, list[Record]]], bool],
                     timeout_s: float = 60.0) -> dict[str, list[Record]]:
    """Re-read `topics` until `done(records_by_topic)` holds; the last read is returned either way on success."""
    last: dict[str, list[Record]] = {}

    def check() -> bool:
        nonlocal last
        last = {t: read_topic(bootstrap, t) for t in topics}
        return done(last)

    wait_until(check, timeout_s, 0.5, f"records on {', '.join(topics)}")
    return last


# ------------------------------------------------------------------------------------------------ log scan


@dataclass(frozen=True)
class Hit:
    """Where a forbidden value was found. Never holds the value itself (the report must not leak it either)."""

    source: str
    line: int
    needle_index: int
    label: str

    def __str__(self) -> str:
        return f"{self.source}:{self.line}: {self.label} #{self.needle_index}"


def _needle_pattern(value: str) -> re.Pattern[str]:
    """Case-insensitive; a needle that starts/ends with a word character must start/end at a word boundary, so
    a short surname does not hit inside an ordinary word."""
    head = r"\b" if re.match(r"\w", value) else ""
    tail = r"\b" if re.search(r"\w$", value) else ""
    return re.compile(head + re.escape(value) + tail, re.IGNORECASE)


def scan_text(source: str, text: str, needles: Sequence[tuple[str, str]]) -> list[Hit]:
    """Case-insensitive search of every (label, value) needle in `text`, line by line."""
    patterns = [(i, label, _needle_pattern(value)) for i, (label, value) in enumerate(needles) if value]
    hits: list[Hit] = []
    for n, line in enumerate(text.splitlines(), 1):
        for i, label, pattern in patterns:
            if pattern.search(line):
                hits.append(Hit(source, n, i, label))
    return hits


def scan_files(paths: Iterable[Path], needles: Sequence[tuple[str, str]]) -> list[Hit]:
    hits: list[Hit] = []
    for path in paths:
        if path.exists():
            hits.extend(scan_text(str(path), path.read_text("utf-8", errors="replace"), needles))
    return hits


def line_count(paths: Iterable[Path]) -> int:
    return sum(len(p.read_text("utf-8", errors="replace").splitlines()) for p in paths if p.exists())


@dataclass
class Stack:
    """A producer and a worker of one StackConfig, started together (context manager)."""

    config: StackConfig
    producer: ProducerProcess
    worker: WorkerProcess

    def close(self) -> None:
        self.worker.stop()
        self.producer.stop()


def start_stack(config: StackConfig, with_worker: bool = True) -> Iterator[Stack]:
    """Generator for a pytest fixture: topics, producer, worker (started in parallel), stopped afterwards."""
    config.create_topics()
    producer = config.producer()
    worker = config.worker()
    try:
        producer.start()
        if with_worker:
            worker.start()
        producer.wait_ready()
        if with_worker:
            worker.wait_ready()
        yield Stack(config, producer, worker)
    finally:
        worker.stop()
        producer.stop()


def restore_records(bootstrap: str, records: Sequence[Record], timeout_s: float = 30.0) -> None:
    """Write `records` back to their topic and partition, in offset order, and check they got the same offsets.

    For the in-memory broker: after a restart it is empty, while a real Kafka would still hold the log. Restoring
    the log keeps the workers' in-memory positions (and any offsets they commit) meaningful.
    """
    from confluent_kafka import Producer

    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 0, "acks": "all",
                         "max.in.flight.requests.per.connection": 1, "log_level": 0})
    landed: dict[tuple[str, int, int], int] = {}

    def on_delivery(err: Any, msg: Any, expected: int) -> None:
        if err is None:
            landed[(msg.topic(), msg.partition(), expected)] = msg.offset()

    for rec in sorted(records, key=lambda r: (r.topic, r.partition, r.offset)):
        producer.produce(rec.topic, rec.value, rec.key, partition=rec.partition, headers=list(rec.headers.items()),
                         on_delivery=lambda err, msg, o=rec.offset: on_delivery(err, msg, o))
        producer.flush(timeout_s)  # one at a time: contiguous offsets, single-record batches
    wrong = {k: v for k, v in landed.items() if k[2] != v}
    if len(landed) != len(records) or wrong:
        raise RuntimeError(f"restored {len(landed)}/{len(records)} records, offsets moved: {list(wrong.items())[:5]}")
