"""Shared helpers for the GoHighLevel client tests (no tests here): a scripted GHL stand-in served over real
HTTP on loopback (aiohttp) that records every request, and a fake clock whose sleep advances time instantly."""

from __future__ import annotations

import asyncio
import json
from collections import defaultdict, deque
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
from aiohttp import web
from pydantic import SecretStr

from sinks.ghl.client import GhlClient
from sinks.ghl.ratelimit import RateLimiter
from sinks.ghl.retry import RetryPolicy

TOKEN = "pit-secret-token-DO-NOT-LEAK-0123456789"
LOCATION = "locTEST123"


class FakeTime:
    """Monotonic clock + sleep for injection: sleeping advances the clock, nothing really waits."""

    def __init__(self, start: float = 1000.0) -> None:
        self.now = start
        self.sleeps: list[float] = []

    def clock(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        if seconds > 0:  # tenacity sleeps 0 before a 429 retry (the limiter waits instead): not a wait
            self.sleeps.append(seconds)
        self.now += max(0.0, seconds)
        await asyncio.sleep(0)


@dataclass
class Reply:
    status: int = 200
    body: Any = field(default_factory=dict)
    headers: dict[str, str] = field(default_factory=dict)
    delay_s: float = 0.0  # > client timeout → the client times out


@dataclass
class Seen:
    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: Any


Responder = Callable[[Seen], Reply]


class LoopbackGhl:
    """Answers scripted replies per (method, path); the last reply of a script repeats. Unscripted → 404."""

    def __init__(self) -> None:
        self.scripts: dict[tuple[str, str], deque[Reply | Responder]] = defaultdict(deque)
        self.seen: list[Seen] = []
        self.base_url = ""

    def script(self, method: str, path: str, *replies: Reply | Responder) -> None:
        self.scripts[(method, path)].extend(replies)

    def calls(self, method: str, path: str) -> list[Seen]:
        return [s for s in self.seen if s.method == method and s.path == path]

    async def handle(self, request: web.Request) -> web.StreamResponse:
        raw = await request.read()
        seen = Seen(request.method, request.path, dict(request.query), dict(request.headers),
                    json.loads(raw) if raw else None)
        self.seen.append(seen)
        queue = self.scripts.get((request.method, request.path))
        if not queue:
            return web.json_response({"statusCode": 404, "message": "Not Found"}, status=404)
        item = queue.popleft() if len(queue) > 1 else queue[0]
        reply = item(seen) if callable(item) else item
        if reply.delay_s:
            await asyncio.sleep(reply.delay_s)
        return web.json_response(reply.body, status=reply.status, headers=reply.headers)


@pytest.fixture
async def ghl_loopback() -> AsyncIterator[LoopbackGhl]:
    fake = LoopbackGhl()
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", fake.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    fake.base_url = f"http://127.0.0.1:{port}"
    try:
        yield fake
    finally:
        await runner.cleanup()


def make_client(server: LoopbackGhl, fake_time: FakeTime, *, max_attempts: int = 4, timeout: float = 5.0,
                limiter: RateLimiter | None = None) -> GhlClient:
    limiter = limiter or RateLimiter(LOCATION, clock=fake_time.clock, sleep=fake_time.sleep)
    policy = RetryPolicy(max_attempts=max_attempts, base_s=0.5, cap_s=8.0, rand=lambda: 1.0)
    return GhlClient(server.base_url, SecretStr(TOKEN), LOCATION, limiter=limiter, timeout=timeout,
                     retry_policy=policy, sleep=fake_time.sleep)
