"""Webhook intake over HTTP: authenticate, bound, key, publish raw to Kafka, answer 202 only after the ack.

Routes
  POST /webhooks/aestheticspro/{token}[/{resource}]   resource ∈ clients | appointments | invoices
  GET  /healthz   process alive          GET /readyz   broker reachable (200) or not (503)
  GET  /metrics   Prometheus text format

Answers: 202 accepted (record acked) · 400 unreadable body (quarantined) · 401 bad token · 404 unknown resource ·
413 body too large · 503 Kafka did not confirm in time (Retry-After; the sender retries, nothing is lost).

Nothing from the body and never the token reaches a log line or a metric label: the access log redacts the
token segment of the path, and the per-request log line carries only ids, outcome, labels and latency.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import time
from functools import partial
from typing import Any

from aiohttp import web
from aiohttp.abc import AbstractAccessLogger
from aiohttp.web_request import BaseRequest
from aiohttp.web_response import StreamResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from apro_sync.config import Settings
from apro_sync.logs import configure_logging, get_logger, json_members, json_string, log_enabled, log_members, redact_path
from apro_sync.metrics import WEBHOOK_LATENCY, WEBHOOKS_RECEIVED
from apro_sync.kafka_admin import check_credentials
from producer.auth import check_token
from producer.intake import (
    RESOURCES,
    PayloadError,
    inspect_body,
    metric_location,
    quarantine_headers,
    raw_headers,
    received_at_now,
    request_id_from,
)
from producer.publisher import Publisher, PublishError

WEBHOOK_PREFIX = "/webhooks/aestheticspro"
# Request-scoped fields the access logger adds to its single line per request.
_LOG_KEY: web.RequestKey[str] = web.RequestKey("apro_log", str)  # pre-rendered JSON members (json_members)
_PROBES = frozenset({"/healthz", "/readyz", "/metrics"})

_access_stdlib = logging.getLogger("aiohttp.access")
log = get_logger("apro_sync.producer")


class RedactingAccessLogger(AbstractAccessLogger):
    """One structured line per request, with the webhook token replaced by `***` and no query string."""

    def log(self, request: BaseRequest, response: StreamResponse, time: float) -> None:
        path = request.path
        status = response.status
        if path in _PROBES and status < 500 and not log_enabled(logging.DEBUG):
            return  # probes every few seconds would drown the useful lines
        # Same line as log_line(..., method=, path=, status=, latency_ms=, **fields), rendered without a dict:
        # the request's own fields were rendered (redacted) by the handler, the rest is escaped here.
        members = (
            f'"method": {json_string(request.method)}, "path": {json_string(redact_path(path))}, '
            f'"status": {int(status)}, "latency_ms": {float(round(time * 1000, 2))!r}, '
        )
        log_members("apro_sync.producer.access", "request", members + (request.get(_LOG_KEY) or ""))

    @property
    def enabled(self) -> bool:
        return log_enabled(logging.INFO)


_JSON_TYPE = "application/json; charset=utf-8"  # what web.json_response sends


def _json_answer(status: int, body: bytes, request_id: str, extra: dict[str, str] | None = None) -> web.Response:
    headers = {"Content-Type": _JSON_TYPE, "X-Request-ID": request_id}
    if extra:
        headers.update(extra)
    return web.Response(body=body, status=status, headers=headers)


def _encode(body: dict[str, Any]) -> bytes:
    return json.dumps(body).encode()  # the same bytes web.json_response would send


# The 202 body is the same for every request but for the request id, which is id-like (hex, or a sender id that
# matched _SANE_REQUEST_ID: no quotes or backslashes), so it is spliced in without a JSON encoder.
_ACCEPTED_HEAD = b'{"status": "accepted", "requestId": "'
_ACCEPTED_TAIL = b'"}'


class _Metrics:
    """The two per-request metrics with their label children bound once (a `.labels()` lookup costs ~1 µs)."""

    _MAX_CHILDREN = 10_000  # label values are bounded upstream; this only caps our own cache

    def __init__(self) -> None:
        self._received: dict[tuple[str, str, str], Any] = {}
        self._latency: dict[str, Any] = {}

    def record(self, location: str, resource: str, outcome: str, seconds: float) -> None:
        key = (location, resource, outcome)
        counter = self._received.get(key)
        if counter is None:
            if len(self._received) >= self._MAX_CHILDREN:
                self._received.clear()
            counter = self._received[key] = WEBHOOKS_RECEIVED.labels(location, resource, outcome)
        counter.inc()
        latency = self._latency.get(outcome)
        if latency is None:
            latency = self._latency[outcome] = WEBHOOK_LATENCY.labels(outcome)
        latency.observe(seconds)


class WebhookHandler:
    """The POST handler; holds the settings and the shared publisher."""

    def __init__(self, settings: Settings, publisher: Publisher) -> None:
        self.settings = settings
        self.publisher = publisher
        self.topics = settings.topics
        self.raw_topic = settings.topics.raw
        self.max_body_bytes = settings.max_body_bytes
        self.tokens = list(settings.webhook_tokens)
        self.retry_after = str(settings.retry_after_s)
        self.metrics = _Metrics()
        self.too_large = _encode({"status": "too_large", "reason": f"body exceeds {settings.max_body_bytes} bytes"})
        self.unavailable = _encode({"status": "unavailable", "reason": "event log unavailable, retry later"})

    def _finish(
        self, request: web.Request, started: float, request_id: str, token_location: str | None, outcome: str,
        status: int, body: bytes, *, location: str | None = None, resource: str | None = None,
        headers: dict[str, str] | None = None, reason: str | None = None,
    ) -> web.Response:
        label_location = metric_location(token_location, location)
        label_resource = resource or "none"
        self.metrics.record(label_location, label_resource, outcome, time.perf_counter() - started)
        fields = {"request_id": request_id, "outcome": outcome, "resource": label_resource, "location": label_location}
        if reason:
            fields["reason"] = reason
        if log_enabled(logging.INFO):
            request[_LOG_KEY] = json_members(fields)
        return _json_answer(status, body, request_id, headers)

    async def handle(self, request: web.Request) -> web.Response:
        started = time.perf_counter()
        match_info = request.match_info
        resource_hint = match_info.get("resource")
        token = check_token(match_info.get("token"), self.tokens)
        request_id = request_id_from(request.headers.get("X-Request-ID"))
        token_location = token.location if token else None
        finish = partial(self._finish, request, started, request_id, token_location)

        if token is None:
            return finish("unauthorized", 401, _UNAUTHORIZED)
        if resource_hint is not None and resource_hint not in RESOURCES:
            # The URL segment is sender-controlled: never a label value.
            return finish("not_found", 404, _NOT_FOUND, resource="invalid")
        resource = resource_hint

        if request.content_length is not None and request.content_length > self.max_body_bytes:
            return finish("too_large", 413, self.too_large, resource=resource)
        try:
            raw = await request.read()  # client_max_size enforces the limit for chunked bodies too
        except web.HTTPRequestEntityTooLarge:
            return finish("too_large", 413, self.too_large, resource=resource)

        content_type = request.headers.get("Content-Type", "")
        received_at = received_at_now()
        try:
            inspection = inspect_body(raw, content_type)
        except PayloadError as exc:
            reason = str(exc)  # PayloadError messages never quote the body
            headers = quarantine_headers(
                reason=reason, received_at=received_at, request_id=request_id, content_type=content_type,
                resource=resource, token_location=token_location,
            )
            try:
                await self.publisher.publish(self.topics.quarantine, request_id.encode(), raw, headers)
            except PublishError as err:
                return self._unavailable(finish, resource, None, err)
            return finish("malformed", 400, _encode({"status": "rejected", "reason": reason, "requestId": request_id}),
                          resource=resource, reason=reason)

        headers = raw_headers(
            received_at=received_at, request_id=request_id, content_type=content_type, resource=resource,
            token_location=token_location,
        )
        try:
            await self.publisher.publish(self.raw_topic, inspection.key, raw, headers)
        except PublishError as err:
            return self._unavailable(finish, resource, inspection.location, err)
        return finish("accepted", 202, _ACCEPTED_HEAD + request_id.encode() + _ACCEPTED_TAIL,
                      resource=resource, location=inspection.location)

    def _unavailable(self, finish: Any, resource: str | None, location: str | None, err: PublishError) -> web.Response:
        return finish("unavailable", 503, self.unavailable, resource=resource, location=location,
                      headers={"Retry-After": self.retry_after}, reason=f"publish_{err.reason}")


_UNAUTHORIZED = _encode({"status": "unauthorized"})
_NOT_FOUND = _encode({"status": "not_found", "reason": "unknown resource"})


def create_app(settings: Settings, publisher: Publisher) -> web.Application:
    """The intake application. The caller owns the publisher's lifecycle (start before serving, close after)."""
    app = web.Application(client_max_size=settings.max_body_bytes)
    handler = WebhookHandler(settings, publisher)
    # The resource form first: it is what AestheticsPro is configured with, and resolution tries routes in order.
    app.router.add_post(WEBHOOK_PREFIX + "/{token}/{resource}", handler.handle)
    app.router.add_post(WEBHOOK_PREFIX + "/{token}", handler.handle)

    async def healthz(_request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def readyz(_request: web.Request) -> web.Response:
        if await publisher.ready():
            return web.json_response({"status": "ready"})
        return web.json_response({"status": "unavailable", "reason": "Kafka broker unreachable"}, status=503,
                                 headers={"Retry-After": str(settings.retry_after_s)})

    async def metrics(_request: web.Request) -> web.Response:
        return web.Response(body=generate_latest(), headers={"Content-Type": CONTENT_TYPE_LATEST})

    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics)
    return app


async def start_server(
    settings: Settings, publisher: Publisher, host: str | None = None, port: int | None = None
) -> tuple[web.AppRunner, int]:
    """Serve `create_app` on host:port (port 0 → a free one). Returns the runner (call `cleanup()`) and the port."""
    runner = web.AppRunner(
        create_app(settings, publisher), access_log_class=RedactingAccessLogger, access_log=_access_stdlib,
        handle_signals=False,
    )
    await runner.setup()
    site = web.TCPSite(runner, host or settings.http_host, settings.http_port if port is None else port, backlog=1024)
    await site.start()
    bound = runner.addresses[0][1]
    return runner, int(bound)


async def serve(settings: Settings, stop: asyncio.Event | None = None) -> None:
    """Run the producer until `stop` is set (or SIGINT/SIGTERM), then drain: stop accepting, flush Kafka."""
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        try:
            loop.add_signal_handler(sig, stop.set)
        except (NotImplementedError, RuntimeError):  # not the main thread (e.g. embedded in `apro-sync dev`)
            pass
    publisher = Publisher.from_settings(settings)
    await publisher.start()
    runner, port = await start_server(settings, publisher)
    log.info("producer listening", host=settings.http_host, port=port, raw_topic=settings.topics.raw,
             tokens=len(settings.webhook_tokens))
    if not settings.webhook_tokens:
        log.warning("no webhook tokens configured (APRO_WEBHOOK_TOKENS): every webhook will be refused")
    try:
        await stop.wait()
    finally:
        log.info("producer stopping")
        await runner.cleanup()
        left = await publisher.close()
        if left:
            log.warning("records not confirmed at shutdown", count=left)


def run(settings: Settings) -> None:
    """Entry point for `apro-sync producer`."""
    configure_logging(level=os.environ.get("APRO_LOG_LEVEL", "INFO"), json=os.environ.get("APRO_LOG_JSON", "1") != "0")
    check_credentials(settings.kafka)
    asyncio.run(serve(settings))
