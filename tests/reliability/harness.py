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
import re
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

from apro_sync.local_stack import (  # noqa: F401 - the tests import these from here
    LOC_TOKEN,
    TOKEN,
    TOKENS_ENV,
    WEBHOOK_PATH,
    ProducerProcess,
    StackConfig,
    WorkerProcess,
    metric_sum,
    parse_metrics,
    scrape,
)
from apro_sync.processes import ServiceProcess, free_port, wait_until  # noqa: F401
from foundations.formats import headers as header_names


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
