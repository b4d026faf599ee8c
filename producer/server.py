"""Webhook intake over HTTP: authenticate, bound, key, publish raw to Kafka, answer 202 only after the ack.

Routes: POST /webhooks/aestheticspro/{token}[/{resource}], GET /healthz, /readyz, /metrics. Answers 202, 400
(quarantined), 401, 404, 408, 413 or 503 (nothing lost; the sender retries). Slow or malformed clients are
bounded by timeouts. No body content and never the token reach logs or metric labels (docs/reliability.md)."""

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
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.web_request import BaseRequest
from aiohttp.web_response import StreamResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from foundations.config import Settings
from foundations.kafka_admin import check_credentials
from foundations.logs import (
    configure_logging,
    get_logger,
    json_members,
    json_string,
    log_enabled,
    log_members,
    redact_path,
)
from foundations.metrics import WEBHOOK_LATENCY, WEBHOOKS_RECEIVED, configured_locations
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
CLIENT_ERROR_LOG_WINDOW_S = 60.0
# Publish failures that are the body's size, not the broker's health: 413, never 503 (the retry cannot succeed).
_TOO_LARGE_REASONS = frozenset({"msg_size_too_large", "record_list_too_large"})


class ClientErrorLogFilter(logging.Filter):
    """On `aiohttp.server`: a request the client got wrong (HttpProcessingError: oversized header line, bad
    method, garbage) becomes one WARNING line naming the error class and status, without traceback and without
    the exception's message (it quotes the client's bytes); per error class at most one line per `window_s`,
    carrying how many were not logged since. Unauthenticated senders cannot flood the log."""

    def __init__(self, window_s: float = CLIENT_ERROR_LOG_WINDOW_S) -> None:
        super().__init__()
        self.window_s = window_s
        self._last: dict[str, tuple[float, int]] = {}  # reason → (time of the last line, suppressed since)

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if not isinstance(exc, HttpProcessingError):
            return True
        reason = type(exc).__name__
        now = time.monotonic()
        last, suppressed = self._last.get(reason, (float("-inf"), 0))
        if now - last < self.window_s:
            self._last[reason] = (last, suppressed + 1)
            return False
        if len(self._last) > 100:  # error classes are few; only a bound
            self._last.clear()
        self._last[reason] = (now, 0)
        record.msg = "client error: request refused (%s, status %s; %d more since the last such line)"
        record.args = (reason, getattr(exc, "code", 400), suppressed)
        record.exc_info = None
        record.exc_text = None
        if record.levelno > logging.WARNING:
            record.levelno, record.levelname = logging.WARNING, "WARNING"
        return True


_server_log = logging.getLogger("aiohttp.server")
if not any(isinstance(f, ClientErrorLogFilter) for f in _server_log.filters):
    _server_log.addFilter(ClientErrorLogFilter())


class RedactingAccessLogger(AbstractAccessLogger):
    """One structured line per request, with the webhook token replaced by `***` and no query string."""

    def log(self, request: BaseRequest, response: StreamResponse, time: float) -> None:
        path = request.path
        status = response.status
        if request.method == "UNKNOWN":
            return  # a request aiohttp could not parse: ClientErrorLogFilter logs those, rate-limited
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
        self.body_timeout_s = settings.http_body_timeout_s
        self.tokens = list(settings.webhook_tokens)
        self.known_locations = frozenset(configured_locations(settings))
        self.retry_after = str(settings.retry_after_s)
        self.metrics = _Metrics()
        self.too_large = _encode({"status": "too_large", "reason": f"body exceeds {settings.max_body_bytes} bytes"})
        self.too_slow = _encode({"status": "timeout", "reason": f"body not received within {self.body_timeout_s:g} s"})
        self._unavailable_bodies: dict[str, bytes] = {}

    def _finish(
        self, request: web.Request, started: float, request_id: str, token_location: str | None, outcome: str,
        status: int, body: bytes, *, location: str | None = None, resource: str | None = None,
        headers: dict[str, str] | None = None, reason: str | None = None,
    ) -> web.Response:
        label_location = metric_location(token_location, location, self.known_locations)
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
            async with asyncio.timeout(self.body_timeout_s):  # a body trickled byte by byte must not hold us
                raw = await request.read()  # client_max_size enforces the limit for chunked bodies too
        except web.HTTPRequestEntityTooLarge:
            return finish("too_large", 413, self.too_large, resource=resource)
        except TimeoutError:
            answer = finish("timeout", 408, self.too_slow, resource=resource, reason="body_timeout")
            answer.force_close()
            return answer

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
        if err.reason in _TOO_LARGE_REASONS:  # the broker's limit, below ours: retrying cannot help
            return finish("too_large", 413, self.too_large, resource=resource, location=location,
                          reason=f"publish_{err.reason}")
        body = self._unavailable_bodies.get(err.reason)
        if body is None:  # reasons are a few librdkafka error names
            body = _encode({"status": "unavailable", "reason": "event log unavailable, retry later",
                            "detail": err.reason})
            if len(self._unavailable_bodies) < 100:
                self._unavailable_bodies[err.reason] = body
        return finish("unavailable", 503, body, resource=resource, location=location,
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
        if not publisher.broker_down and await publisher.ready():
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
        handle_signals=False, keepalive_timeout=settings.http_keepalive_timeout_s,
    )
    await runner.setup()
    assert runner.server is not None
    _limit_header_time(runner.server, settings.http_header_timeout_s)
    site = web.TCPSite(runner, host or settings.http_host, settings.http_port if port is None else port, backlog=1024)
    await site.start()
    bound = runner.addresses[0][1]
    return runner, int(bound)


def _limit_header_time(server: web.Server, timeout_s: float) -> None:
    """Close a connection that has not delivered a complete request head `timeout_s` after connecting.

    aiohttp has no header timeout of its own. Its keep-alive timer covers a connection that stays silent and
    the next request on a kept-alive one (partial data does not reset it), but not the first request's
    head: this does, with one timer per connection.
    """
    loop = asyncio.get_running_loop()
    connection_made = server.connection_made

    def on_connection(handler: Any, transport: Any) -> None:
        connection_made(handler, transport)
        loop.call_later(timeout_s, _close_if_no_request, handler)

    server.connection_made = on_connection  # type: ignore[method-assign]


def _close_if_no_request(handler: Any) -> None:
    transport = handler.transport
    # aiohttp counts request heads it parsed (`_request_count`); 0 = not one complete head yet. The
    # reliability test (tests/reliability/test_hostile.py) fails if a release renames it.
    if transport is not None and not transport.is_closing() and getattr(handler, "_request_count", 1) == 0:
        handler.force_close()


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
